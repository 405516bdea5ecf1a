/*
 * numpy.c - numpy's array files: .npy (one array) and .npz (a zip of .npy
 * members, stored or deflated) opened as checkpoints.
 *
 * An .npy file is the magic \x93NUMPY, a version (1.0: a u16 header
 * length; 2.0 and 3.0: u32; 3.0's header is UTF-8), then a header that is
 * a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape':
 * (3, 4), } padded with spaces and a newline, then the raw elements. The
 * header is parsed here by a strict grammar of just those literals (numpy
 * reads it with ast.literal_eval; nothing is ever evaluated). An .npy is one
 * tensor named "tensor"; an .npz one tensor per member, named by the
 * member's name without ".npy". Object arrays hold a pickle (numpy's
 * allow_pickle) and are refused by name. Stored data is read in place (a
 * copy only when misaligned or big-endian); a deflated member is inflated.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- the header ---------------------------------------------------------- */

typedef struct hdr_parser {
    const char *p, *end;
    const char *record;
    uint64_t base;              /* offset of p's start in the record, for errors */
    const char *start;
    ckpt_error *err;
} hdr_parser;

static ckpt_status hdr_fail(hdr_parser *h, const char *what)
{
    return ckpt__fail(h->err, CKPT_ERR_FORMAT, h->record, h->base + (uint64_t)(h->p - h->start),
                      "numpy header: %s", what);
}

static void skip_ws(hdr_parser *h)
{
    while (h->p < h->end && (*h->p == ' ' || *h->p == '\t' || *h->p == '\n' || *h->p == '\r'))
        h->p++;
}

static bool eat(hdr_parser *h, char c)
{
    skip_ws(h);
    if (h->p < h->end && *h->p == c) {
        h->p++;
        return true;
    }
    return false;
}

/* A quoted string without escapes. */
static ckpt_status parse_str(hdr_parser *h, const char **s, size_t *n)
{
    skip_ws(h);
    if (h->p >= h->end || (*h->p != '\'' && *h->p != '"'))
        return hdr_fail(h, "expected a quoted string");
    char q = *h->p++;
    const char *b = h->p;
    while (h->p < h->end && *h->p != q) {
        if (*h->p == '\\' || *h->p == '\n')
            return hdr_fail(h, "escapes and line breaks are not allowed in strings");
        h->p++;
    }
    if (h->p >= h->end)
        return hdr_fail(h, "unterminated string");
    *s = b;
    *n = (size_t)(h->p - b);
    h->p++;
    return CKPT_OK;
}

static bool eat_word(hdr_parser *h, const char *w)
{
    skip_ws(h);
    size_t n = strlen(w);
    if ((size_t)(h->end - h->p) >= n && memcmp(h->p, w, n) == 0) {
        const char *after = h->p + n;
        if (after < h->end && ((*after >= 'a' && *after <= 'z') || (*after >= 'A' && *after <= 'Z') ||
                               (*after >= '0' && *after <= '9') || *after == '_'))
            return false;
        h->p = after;
        return true;
    }
    return false;
}

/* (d0, d1, ...): non-negative decimal ints (a Python 2 'L' suffix allowed). */
static ckpt_status parse_shape(hdr_parser *h, const ckpt_limits *limits, ckpt__arena *arena,
                               ckpt__npy_info *out)
{
    if (!eat(h, '('))
        return hdr_fail(h, "'shape' must be a tuple");
    int64_t dims[64];
    size_t n = 0;
    bool need_comma = false;
    for (;;) {
        skip_ws(h);
        if (eat(h, ')'))
            break;
        if (need_comma)
            return hdr_fail(h, "expected ',' or ')' in 'shape'");
        if (h->p >= h->end || *h->p < '0' || *h->p > '9')
            return hdr_fail(h, "'shape' items must be non-negative integers");
        if (*h->p == '0' && h->p + 1 < h->end && h->p[1] >= '0' && h->p[1] <= '9')
            return hdr_fail(h, "leading zeros are not allowed in integers");
        uint64_t v = 0;
        while (h->p < h->end && *h->p >= '0' && *h->p <= '9') {
            if (v > ((uint64_t)INT64_MAX - 9) / 10)
                return hdr_fail(h, "a 'shape' item is too large");
            v = v * 10 + (uint64_t)(*h->p++ - '0');
        }
        if (h->p < h->end && (*h->p == 'L' || *h->p == 'l'))
            h->p++;
        if (n >= limits->max_ndim || n >= sizeof(dims) / sizeof(dims[0]))
            return ckpt__fail(h->err, CKPT_ERR_LIMIT, h->record, CKPT_NO_OFFSET,
                              "numpy header: 'shape' has more than %llu dimensions (max_ndim)",
                              (unsigned long long)(limits->max_ndim < 64 ? limits->max_ndim : 64));
        dims[n++] = (int64_t)v;
        need_comma = true;
        if (eat(h, ','))
            need_comma = false;
        else if (n == 1 && h->p < h->end && *h->p == ')')
            return hdr_fail(h, "a one-item 'shape' needs a trailing comma: (n,)");
    }
    out->ndim = (uint32_t)n;
    out->shape = ckpt__arena_alloc(arena, (n ? n : 1) * sizeof(int64_t));
    if (!out->shape)
        return ckpt__nomem(h->err);
    memcpy(out->shape, dims, n * sizeof(int64_t));
    return CKPT_OK;
}

ckpt_status ckpt__npy_header(const uint8_t *data, uint64_t size, const ckpt_limits *limits,
                             ckpt__arena *arena, const char *record, ckpt__npy_info *out,
                             ckpt_error *err)
{
    memset(out, 0, sizeof(*out));
    if (size < 10 || memcmp(data, "\x93NUMPY", 6) != 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, 0,
                          "not a numpy array file (no \\x93NUMPY magic)");
    uint8_t major = data[6], minor = data[7];
    uint64_t hlen, start;
    if (major == 1 && minor == 0) {
        hlen = (uint64_t)data[8] | ((uint64_t)data[9] << 8);
        start = 10;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (size < 12)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, 8,
                              "numpy header length runs past the end");
        hlen = ckpt__le32(data + 8);
        start = 12;
    } else {
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, 6,
                          "numpy file format version %u.%u is not supported (1.0, 2.0, 3.0 are)",
                          major, minor);
    }
    if (hlen > size - start)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, 8,
                          "numpy header of %llu bytes runs past the end (%llu bytes)",
                          (unsigned long long)hlen, (unsigned long long)size);
    if (hlen > 1u << 20)
        return ckpt__fail(err, CKPT_ERR_LIMIT, record, 8, "numpy header of %llu bytes is too long",
                          (unsigned long long)hlen);
    out->data_offset = start + hlen;
    hdr_parser h = {(const char *)data + start, (const char *)data + start + hlen, record, start,
                    (const char *)data + start, err};
    if (!eat(&h, '{'))
        return hdr_fail(&h, "expected a dict '{'");
    bool seen[3] = {false, false, false};
    const char *descr = NULL;
    size_t descr_len = 0;
    bool need_comma = false;
    for (;;) {
        if (eat(&h, '}'))
            break;
        if (need_comma)
            return hdr_fail(&h, "expected ',' or '}'");
        const char *k;
        size_t kn;
        CKPT_RETURN_IF_ERROR(parse_str(&h, &k, &kn));
        if (!eat(&h, ':'))
            return hdr_fail(&h, "expected ':'");
        int key = (kn == 5 && memcmp(k, "descr", 5) == 0)            ? 0
                  : (kn == 13 && memcmp(k, "fortran_order", 13) == 0) ? 1
                  : (kn == 5 && memcmp(k, "shape", 5) == 0)           ? 2
                                                                      : -1;
        if (key < 0)
            return hdr_fail(&h, "unknown key (only 'descr', 'fortran_order', 'shape')");
        if (seen[key])
            return hdr_fail(&h, "a key is given twice");
        seen[key] = true;
        if (key == 0) {
            skip_ws(&h);
            if (h.p < h.end && *h.p == '[')
                return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, CKPT_NO_OFFSET,
                                  "structured numpy arrays (a list 'descr') are not supported");
            CKPT_RETURN_IF_ERROR(parse_str(&h, &descr, &descr_len));
        } else if (key == 1) {
            if (eat_word(&h, "True"))
                out->fortran = true;
            else if (!eat_word(&h, "False"))
                return hdr_fail(&h, "'fortran_order' must be True or False");
        } else {
            CKPT_RETURN_IF_ERROR(parse_shape(&h, limits, arena, out));
        }
        need_comma = !eat(&h, ',');
    }
    skip_ws(&h);
    if (h.p != h.end)
        return hdr_fail(&h, "bytes after the header dict");
    if (!seen[0] || !seen[1] || !seen[2])
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, start,
                          "numpy header lacks '%s'",
                          !seen[0] ? "descr" : !seen[1] ? "fortran_order" : "shape");
    char q[40];
    const char *qd = ckpt__quote(q, sizeof(q), descr, descr_len, true);
    switch (ckpt__numpy_descr(descr, descr_len, '|', &out->dtype, &out->big_endian)) {
    case CKPT__NUMPY_OK: break;
    case CKPT__NUMPY_OBJECT:
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, start,
                          "numpy object array (dtype '%s'): its data is a pickle that "
                          "numpy.load(allow_pickle=True) runs; not read",
                          qd);
    case CKPT__NUMPY_UNSUPPORTED:
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, start,
                          "numpy dtype '%s' has no torch dtype (strings, dates, records and long "
                          "doubles are not supported)",
                          qd);
    case CKPT__NUMPY_BAD:
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, start, "'%s' is not a numpy dtype", qd);
    }
    uint64_t numel = 1;
    for (uint32_t i = 0; i < out->ndim; i++) {
        if (!ckpt__mul_u64(numel, (uint64_t)out->shape[i], &numel))
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, start,
                              "numpy header: the shape's element count overflows");
    }
    if (!ckpt__mul_u64(numel, ckpt_dtype_size(out->dtype), &out->nbytes))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, start,
                          "numpy header: the array's byte count overflows");
    if (out->nbytes > size - out->data_offset)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, out->data_offset,
                          "numpy array of %llu bytes runs past the end (%llu bytes there)",
                          (unsigned long long)out->nbytes,
                          (unsigned long long)(size - out->data_offset));
    return CKPT_OK;
}

/* ---- tensors ------------------------------------------------------------- */

/* A tensor over s: strides (in elements) of a C or Fortran ordered array. */
static ckpt_status array_tensor(ckpt_file *f, const ckpt__npy_info *info, ckpt__storage *s,
                                ckpt_tensor **out, ckpt_error *err)
{
    ckpt_tensor *t = ckpt__arena_alloc(&f->arena, sizeof(*t));
    int64_t *stride = ckpt__arena_alloc(&f->arena, (info->ndim ? info->ndim : 1) * sizeof(int64_t));
    if (!t || !stride)
        return ckpt__nomem(err);
    uint64_t step = 1;
    for (uint32_t i = 0; i < info->ndim; i++) {
        uint32_t k = info->fortran ? i : info->ndim - 1 - i;
        stride[k] = (int64_t)step;
        if (info->shape[k] > 1 && (!ckpt__mul_u64(step, (uint64_t)info->shape[k], &step) ||
                                   step > (uint64_t)INT64_MAX))
            return ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                              "numpy header: the shape's strides overflow");
    }
    t->dtype = info->dtype;
    t->ndim = info->ndim;
    t->shape = info->shape;
    t->stride = stride;
    t->storage = s;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, s->record, CKPT_NO_OFFSET, err));
    *out = t;
    return CKPT_OK;
}

static ckpt__storage *new_storage(ckpt_file *f, const ckpt__npy_info *info, const char *record)
{
    ckpt__storage *s = ckpt__arena_alloc(&f->arena, sizeof(*s));
    char key[24];
    int n = snprintf(key, sizeof(key), "%zu", f->storage_count);
    if (!s || !(s->key = ckpt__arena_strdup(&f->arena, key, (size_t)n)))
        return NULL;
    s->location = "cpu";
    s->dtype = info->dtype;
    s->nbytes = info->nbytes;
    s->record = record;
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    s->big_endian = info->big_endian;
    return s;
}

/* root[name] = tensor */
static ckpt_status put_tensor(ckpt_file *f, const char *name, size_t len, ckpt_tensor *t,
                              ckpt_error *err)
{
    ckpt_value *k = ckpt__value_str(&f->arena, CKPT_KIND_STR, name, len);
    ckpt_value *v = ckpt__value_new(&f->arena, CKPT_KIND_TENSOR);
    if (!k || !v)
        return ckpt__nomem(err);
    v->u.tensor.t = t;
    if (ckpt__dict_lookup(f->root, k))
        return ckpt__fail(err, CKPT_ERR_FORMAT, name, CKPT_NO_OFFSET,
                          "two members of the archive have the name '%.*s'", (int)len, name);
    if (!ckpt__dict_set(&f->arena, f->root, k, v))
        return ckpt__nomem(err);
    return CKPT_OK;
}

static ckpt_status new_root(ckpt_file *f, ckpt_error *err)
{
    f->root = ckpt__value_new(&f->arena, CKPT_KIND_DICT);
    return f->root ? CKPT_OK : ckpt__nomem(err);
}

ckpt_status ckpt__open_npy(ckpt_file *f, ckpt_error *err)
{
    ckpt__npy_info info;
    CKPT_RETURN_IF_ERROR(
        ckpt__npy_header(f->map, f->map_size, &f->opts.limits, &f->arena, "npy", &info, err));
    CKPT_RETURN_IF_ERROR(new_root(f, err));
    ckpt__storage *s = new_storage(f, &info, "npy");
    if (!s)
        return ckpt__nomem(err);
    s->file_offset = info.data_offset; /* read in place: storage_resolve copies if it must */
    CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, s, err));
    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(array_tensor(f, &info, s, &t, err));
    return put_tensor(f, "tensor", 6, t, err);
}

bool ckpt__npz_detect(const ckpt__zip *z)
{
    if (z->count == 0)
        return false;
    for (size_t i = 0; i < z->count; i++) {
        const ckpt__zip_entry *e = &z->entries[i];
        if (e->name_len < 5 || memcmp(e->name + e->name_len - 4, ".npy", 4) != 0)
            return false;
    }
    return true;
}

ckpt_status ckpt__open_npz(ckpt_file *f, ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(new_root(f, err));
    for (size_t i = 0; i < f->zip.count; i++) {
        const ckpt__zip_entry *e = &f->zip.entries[i];
        uint64_t total;
        if (e->method != 0 && (!ckpt__add_u64(f->inflated_total, e->size, &total) ||
                               total > f->opts.limits.max_total_inflated_bytes))
            return ckpt__fail(err, CKPT_ERR_LIMIT, e->name, CKPT_NO_OFFSET,
                              "inflating this member would hold %llu bytes of deflated members "
                              "at once (limit max_total_inflated_bytes %llu)",
                              (unsigned long long)(f->inflated_total + e->size),
                              (unsigned long long)f->opts.limits.max_total_inflated_bytes);
        const uint8_t *data;
        uint8_t *owned = NULL;
        CKPT_RETURN_IF_ERROR(ckpt__zip_read(&f->zip, i, &f->opts.limits, &data, &owned, err));
        ckpt__npy_info info;
        ckpt_status st =
            ckpt__npy_header(data, e->size, &f->opts.limits, &f->arena, e->name, &info, err);
        ckpt__storage *s = st == CKPT_OK ? new_storage(f, &info, e->name) : NULL;
        if (st == CKPT_OK && !s)
            st = ckpt__nomem(err);
        if (st == CKPT_OK)
            st = ckpt__file_add_storage(f, s, err);
        if (st != CKPT_OK) {
            free(owned);
            if (e->method == 0)
                ckpt__error_set_file_base(err, e->data_offset);
            return st;
        }
        if (!owned) {
            s->file_offset = e->data_offset + info.data_offset; /* in place */
        } else {
            /* the inflated member becomes the storage's bytes: moved to the
             * (aligned) start of the buffer when misaligned, swapped */
            f->inflated_total += e->size;
            uint8_t *p = owned + info.data_offset;
            size_t align = ckpt_dtype_size(info.dtype) > 16 ? 16 : ckpt_dtype_size(info.dtype);
            if ((uintptr_t)p % align != 0) {
                memmove(owned, p, (size_t)info.nbytes);
                p = owned;
            }
            if (info.big_endian)
                ckpt__byteswap(p, info.nbytes / ckpt_dtype_size(info.dtype), info.dtype);
            s->owned = owned;
            s->data = p;
            s->resolved = true;
            s->big_endian = false;
        }
        ckpt_tensor *t;
        CKPT_RETURN_IF_ERROR(array_tensor(f, &info, s, &t, err));
        CKPT_RETURN_IF_ERROR(put_tensor(f, e->name, e->name_len - 4, t, err));
    }
    return CKPT_OK;
}
