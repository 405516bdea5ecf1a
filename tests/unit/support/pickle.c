/* pickle.c - pickles built opcode by opcode. */
#include "support.h"

#include <string.h>

void pk_proto(buf *b, unsigned version)
{
    b_u8(b, 0x80);
    b_u8(b, version);
}

void pk_stop(buf *b) { b_u8(b, '.'); }

void pk_int(buf *b, int64_t v)
{
    if (v >= 0 && v < 256) {
        b_u8(b, 'K');
        b_u8(b, (unsigned)v);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        b_u8(b, 'J');
        b_le(b, (uint64_t)(uint32_t)(int32_t)v, 4);
    } else {
        b_u8(b, 0x8a); /* LONG1: 8 bytes, two's complement */
        b_u8(b, 8);
        b_le(b, (uint64_t)v, 8);
    }
}

void pk_uint(buf *b, uint64_t v)
{
    if (v <= INT64_MAX) {
        pk_int(b, (int64_t)v);
        return;
    }
    b_u8(b, 0x8a);
    b_u8(b, 9);
    b_le(b, v, 8);
    b_u8(b, 0);
}

void pk_unicode(buf *b, const char *s)
{
    b_u8(b, 'X');
    b_le(b, strlen(s), 4);
    b_str(b, s);
}

void pk_global(buf *b, const char *module, const char *name)
{
    b_u8(b, 'c');
    b_str(b, module);
    b_u8(b, '\n');
    b_str(b, name);
    b_u8(b, '\n');
}

void pk_int_tuple(buf *b, const int64_t *v, int n)
{
    b_u8(b, '(');
    for (int i = 0; i < n; i++)
        pk_int(b, v[i]);
    b_u8(b, 't');
}

void pk_frame(buf *b, uint64_t n)
{
    b_u8(b, 0x95);
    b_le(b, n, 8);
}

void pk_tensor(buf *b, const char *storage_class, const char *key, int64_t storage_numel,
               int64_t offset, const int64_t *shape, const int64_t *stride, int ndim)
{
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    b_u8(b, '(');
    b_u8(b, '(');
    pk_unicode(b, "storage");
    pk_global(b, "torch", storage_class);
    pk_unicode(b, key);
    pk_unicode(b, "cpu");
    pk_int(b, storage_numel);
    b_u8(b, 't');
    b_u8(b, 'Q'); /* BINPERSID */
    pk_int(b, offset);
    pk_int_tuple(b, shape, ndim);
    pk_int_tuple(b, stride, ndim);
    b_u8(b, 0x89); /* NEWFALSE */
    pk_global(b, "collections", "OrderedDict");
    b_u8(b, ')');
    b_u8(b, 'R');
    b_u8(b, 't');
    b_u8(b, 'R');
}

buf pk_one_tensor(const char *name, const char *storage_class, int64_t storage_numel,
                  int64_t offset, const int64_t *shape, const int64_t *stride, int ndim)
{
    buf b = {0};
    pk_proto(&b, 2);
    b_u8(&b, '}');
    pk_unicode(&b, name);
    pk_tensor(&b, storage_class, "0", storage_numel, offset, shape, stride, ndim);
    b_u8(&b, 's');
    pk_stop(&b);
    return b;
}
