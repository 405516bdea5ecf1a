/*
 * stream.c - tensor and storage bytes for writers, a chunk at a time.
 *
 * Writers never hold a tensor whole: they ask for [off, off+len) of a
 * storage or of a tensor's row-major bytes and get either a pointer into
 * memory that already holds them (the file's map, the caller's buffer:
 * zero-copy) or the bytes produced into their chunk buffer (casts, strided
 * gathers).
 */
#include "core.h"

#include <stdlib.h>

static ckpt_status range_check(uint64_t off, size_t len, uint64_t size, const char *what,
                               ckpt_error *err)
{
    uint64_t end;
    if (!ckpt__add_u64(off, len, &end) || end > size)
        return CKPT_INVALID_ARG(err,
                                "bytes [%llu, +%zu) are outside the %s's %llu bytes",
                                (unsigned long long)off, len, what, (unsigned long long)size);
    return CKPT_OK;
}

/* Elements of a cast: read the source's row-major bytes and convert them.
 * A contiguous source whose bytes are in memory converts straight from
 * them; any other is read in pieces so that the scratch memory stays small. */
static ckpt_status cast_read(const ckpt__storage *s, uint64_t off, size_t len, uint8_t *buf,
                             ckpt_error *err)
{
    const ckpt_tensor *src = s->cast_src;
    size_t dsz = ckpt_dtype_size(s->dtype), ssz = ckpt_dtype_size(src->dtype);
    if (dsz == 0 || ssz == 0 || off % dsz || len % dsz)
        return CKPT_INVALID_ARG(err, "cast reads must cover whole elements");
    uint64_t first = off / dsz, count = len / dsz;
    if (ckpt__tensor_is_contiguous(src) && !src->storage->cast_src && !src->storage->chunked) {
        const uint8_t *p;
        CKPT_RETURN_IF_ERROR(
            ckpt__tensor_read(src, first * ssz, (size_t)count * ssz, NULL, &p, err));
        return ckpt_convert_dtype(s->dtype, buf, src->dtype, p, (size_t)count);
    }
    enum { PIECE = 16384 }; /* elements per conversion step */
    uint8_t *scratch = malloc(PIECE * ssz);
    if (!scratch)
        return ckpt__nomem(err);
    ckpt_status st = CKPT_OK;
    for (uint64_t done = 0; done < count && st == CKPT_OK;) {
        size_t n = count - done < PIECE ? (size_t)(count - done) : PIECE;
        const uint8_t *p;
        st = ckpt__tensor_read(src, (first + done) * ssz, n * ssz, scratch, &p, err);
        if (st == CKPT_OK)
            st = ckpt_convert_dtype(s->dtype, buf + done * dsz, src->dtype, p, n);
        done += n;
    }
    free(scratch);
    return st;
}

ckpt_status ckpt__storage_read(ckpt__storage *s, uint64_t off, size_t len, uint8_t *buf,
                               const uint8_t **out, ckpt_error *err)
{
    *out = NULL;
    CKPT_RETURN_IF_ERROR(range_check(off, len, s->nbytes, "storage", err));
    if (len == 0) {
        *out = buf;
        return CKPT_OK;
    }
    if (s->cast_src) {
        CKPT_RETURN_IF_ERROR(cast_read(s, off, len, buf, err));
        *out = buf;
        return CKPT_OK;
    }
    ckpt__storage *root = s->base ? s->base : s;
    if (root->chunked && !root->resolved && buf) {
        CKPT_RETURN_IF_ERROR(ckpt__chunked_read(root, s->base_offset + off, len, buf, err));
        *out = buf;
        return CKPT_OK;
    }
    if (root->owner)
        CKPT_RETURN_IF_ERROR(ckpt__storage_resolve(root->owner, root, err));
    if (!root->data)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, s->record ? s->record : "", CKPT_NO_OFFSET,
                          "storage has no bytes");
    *out = root->data + s->base_offset + off;
    return CKPT_OK;
}

/* Copies run elements of esz bytes, step bytes apart from p, to o back to
 * back; the common sizes get copies of a fixed size (single loads). */
static void gather(uint8_t *o, const uint8_t *p, uint64_t run, uint64_t step, size_t esz)
{
#define GATHER(n)                                                                   \
    for (uint64_t k = 0; k < run; k++)                                              \
        memcpy(o + k * (n), p + k * step, (n));                                     \
    break
    switch (esz) {
    case 1: GATHER(1);
    case 2: GATHER(2);
    case 4: GATHER(4);
    case 8: GATHER(8);
    case 16: GATHER(16);
    default: GATHER(esz);
    }
#undef GATHER
}

/* Byte offset of the tensor's first element inside its storage. */
static uint64_t first_byte(const ckpt_tensor *t)
{
    return (uint64_t)t->storage_offset * ckpt_dtype_bits(t->dtype) / 8;
}

ckpt_status ckpt__tensor_read(const ckpt_tensor *t, uint64_t off, size_t len, uint8_t *buf,
                              const uint8_t **out, ckpt_error *err)
{
    *out = NULL;
    if (t->layout != CKPT_LAYOUT_STRIDED)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a %s tensor has no strided bytes",
                          ckpt_layout_name((ckpt_layout)t->layout));
    uint64_t nbytes = ckpt__tensor_nbytes(t);
    CKPT_RETURN_IF_ERROR(range_check(off, len, nbytes, "tensor", err));
    if (len == 0) {
        *out = buf;
        return CKPT_OK;
    }
    if (!t->storage)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a meta tensor has no bytes");
    if (ckpt__tensor_is_contiguous(t))
        return ckpt__storage_read(t->storage, first_byte(t) + off, len, buf, out, err);

    /* Strided: gather whole elements in row-major order. */
    size_t esz = ckpt_dtype_size(t->dtype);
    if (esz == 0 || off % esz || len % esz)
        return CKPT_INVALID_ARG(err, "strided reads must cover whole elements");
    if (t->storage->cast_src)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a strided view of a cast has no bytes");
    const uint8_t *base;
    CKPT_RETURN_IF_ERROR(ckpt__storage_read(t->storage, 0, (size_t)t->storage->nbytes, NULL,
                                            &base, err));
    base += first_byte(t);
    uint32_t nd = t->ndim;
    if (nd > 64)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET, "too many dimensions");
    /* The multi-index of the first element asked for. */
    uint64_t idx[64];
    uint64_t e = off / esz, count = len / esz;
    for (uint32_t d = nd; d-- > 0;) {
        idx[d] = e % (uint64_t)t->shape[d];
        e /= (uint64_t)t->shape[d];
    }
    uint8_t *o = buf;
    uint64_t inner = (uint64_t)t->shape[nd - 1];
    int64_t inner_stride = t->stride[nd - 1];
    while (count) {
        uint64_t pos = 0;
        for (uint32_t d = 0; d < nd; d++)
            pos += idx[d] * (uint64_t)t->stride[d];
        uint64_t run = inner - idx[nd - 1];
        if (run > count)
            run = count;
        const uint8_t *p = base + pos * esz;
        if (inner_stride == 1)
            memcpy(o, p, (size_t)run * esz);
        else
            gather(o, p, run, (uint64_t)inner_stride * esz, esz);
        o += run * esz;
        count -= run;
        idx[nd - 1] += run;
        for (uint32_t d = nd - 1; d > 0 && idx[d] >= (uint64_t)t->shape[d]; d--) {
            idx[d] = 0;
            idx[d - 1]++;
        }
    }
    *out = buf;
    return CKPT_OK;
}

bool ckpt__storage_file_range(const ckpt__storage *s, const uint8_t *p, size_t len, int *fd,
                              uint64_t *off)
{
    if (!s || !p || len == 0)
        return false;
    const ckpt__storage *root = s->base ? s->base : s;
    const ckpt_file *f = root->owner;
    /* a cast produces its bytes into a buffer; a copy (big-endian,
     * misaligned, inflated) holds other bytes than the file */
    if (!f || !f->has_fd || !f->mapped || s->cast_src || root->owned)
        return false;
    uintptr_t a = (uintptr_t)p, lo = (uintptr_t)f->map;
    if (a < lo || a - lo > f->map_size || len > f->map_size - (a - lo))
        return false;
    *fd = f->fd;
    *off = (uint64_t)(a - lo);
    return true;
}
