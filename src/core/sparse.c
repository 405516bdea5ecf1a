/*
 * sparse.c - sparse tensors (torch._utils._rebuild_sparse_tensor): their
 * parts checked against the layout, their indices against the shape, and
 * the dense array written on request.
 */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>

const char *ckpt_layout_name(ckpt_layout layout)
{
    switch (layout) {
    case CKPT_LAYOUT_STRIDED: return "strided";
    case CKPT_LAYOUT_SPARSE_COO: return "sparse_coo";
    case CKPT_LAYOUT_SPARSE_CSR: return "sparse_csr";
    case CKPT_LAYOUT_SPARSE_CSC: return "sparse_csc";
    case CKPT_LAYOUT_SPARSE_BSR: return "sparse_bsr";
    case CKPT_LAYOUT_SPARSE_BSC: return "sparse_bsc";
    }
    return "unknown";
}

const ckpt_tensor *ckpt_tensor_sparse_part(const ckpt_tensor *t, unsigned i)
{
    if (!t || t->layout == CKPT_LAYOUT_STRIDED || i >= 3)
        return NULL;
    return t->parts[i];
}

static bool is_index_dtype(ckpt_dtype d) { return d == CKPT_DTYPE_INT64 || d == CKPT_DTYPE_INT32; }

static bool compressed(const ckpt_tensor *t) { return t->layout != CKPT_LAYOUT_SPARSE_COO; }

ckpt_status ckpt__sparse_validate(ckpt_tensor *t, const char *record, uint64_t offset,
                                  ckpt_error *err)
{
    const char *lname = ckpt_layout_name((ckpt_layout)t->layout);
    ckpt_tensor *values = compressed(t) ? t->parts[2] : t->parts[1];
    for (int i = 0; i < (compressed(t) ? 3 : 2); i++) {
        if (!t->parts[i] || t->parts[i]->layout != CKPT_LAYOUT_STRIDED)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: part %d is not a strided tensor", lname, i);
    }
    if (values->ndim < 1)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "%s tensor: values must have a dimension for nnz", lname);
    uint64_t nnz = (uint64_t)values->shape[0];
    uint32_t dense_dims = values->ndim - 1;
    uint32_t block_dims = 0;
    if (t->layout == CKPT_LAYOUT_SPARSE_BSR || t->layout == CKPT_LAYOUT_SPARSE_BSC) {
        block_dims = 2; /* values [nnz, block_rows, block_cols, dense...] */
        if (values->ndim < 3)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: values must be [nnz, block rows, block columns, ...]",
                              lname);
        dense_dims -= 2;
    }
    if (!compressed(t)) {
        const ckpt_tensor *idx = t->parts[0];
        if (idx->dtype != CKPT_DTYPE_INT64 || idx->ndim != 2 || (uint64_t)idx->shape[1] != nnz)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "sparse_coo tensor: indices must be int64 [sparse_dim, nnz=%llu]",
                              (unsigned long long)nnz);
        if ((uint64_t)idx->shape[0] + dense_dims != t->ndim)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "sparse_coo tensor: %lld sparse + %u dense dimensions, size has %u",
                              (long long)idx->shape[0], dense_dims, t->ndim);
    } else {
        const ckpt_tensor *cidx = t->parts[0], *pidx = t->parts[1];
        if (!is_index_dtype(cidx->dtype) || cidx->dtype != pidx->dtype || cidx->ndim != 1 ||
            pidx->ndim != 1 || (uint64_t)pidx->shape[0] != nnz)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: indices must be 1-D int32/int64, %llu plain indices",
                              lname, (unsigned long long)nnz);
        if (t->ndim != 2 + dense_dims)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: size must have 2 + %u dimensions (batches are not read)",
                              lname, dense_dims);
        int64_t major = t->layout == CKPT_LAYOUT_SPARSE_CSR || t->layout == CKPT_LAYOUT_SPARSE_BSR
                            ? t->shape[0] : t->shape[1];
        if (block_dims) {
            int64_t blk = t->layout == CKPT_LAYOUT_SPARSE_BSR ? values->shape[1] : values->shape[2];
            int64_t minor = t->layout == CKPT_LAYOUT_SPARSE_BSR ? t->shape[1] : t->shape[0];
            int64_t mblk = t->layout == CKPT_LAYOUT_SPARSE_BSR ? values->shape[2]
                                                              : values->shape[1];
            if (blk <= 0 || major % blk != 0 || mblk <= 0 || minor % mblk != 0)
                return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                                  "%s tensor: blocks do not tile the size", lname);
            major /= blk;
        }
        if (cidx->shape[0] != major + 1)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: compressed indices have %lld entries, expected %lld",
                              lname, (long long)cidx->shape[0], (long long)(major + 1));
    }
    for (uint32_t d = 0; d < dense_dims; d++) {
        if (values->shape[1 + block_dims + d] != t->shape[t->ndim - dense_dims + d])
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "%s tensor: values' dense dimension %u does not match the size",
                              lname, d);
    }
    if (values->dtype != t->dtype)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "%s tensor: dtype differs from its values' dtype", lname);
    return CKPT_OK;
}

/* A part as a contiguous array (a malloc'd copy). */
static ckpt_status part_copy(ckpt_file *f, const ckpt_tensor *p, void **out, ckpt_error *err)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(p, &ti);
    /* the limits first (a part may repeat its storage; its storage may be
     * a deflated record), then the copy is allocated */
    const void *data;
    *out = NULL;
    CKPT_RETURN_IF_ERROR(ckpt_file_check_output(f, ti.nbytes, "sparse tensor part", err));
    CKPT_RETURN_IF_ERROR(ckpt_tensor_data(f, p, &data, NULL, err));
    *out = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
    if (!*out)
        return ckpt__nomem(err);
    ckpt_status st = ckpt_tensor_copy(f, p, *out, (size_t)ti.nbytes, err);
    if (st != CKPT_OK) {
        free(*out);
        *out = NULL;
    }
    return st;
}

/* Indices as int64, whatever their stored width. */
static ckpt_status index_copy(ckpt_file *f, const ckpt_tensor *p, int64_t **out, ckpt_error *err)
{
    void *raw;
    CKPT_RETURN_IF_ERROR(part_copy(f, p, &raw, err));
    if (p->dtype == CKPT_DTYPE_INT64) {
        *out = raw;
        return CKPT_OK;
    }
    int64_t *wide = malloc(p->numel ? (size_t)p->numel * sizeof(int64_t) : 1);
    if (!wide) {
        free(raw);
        return ckpt__nomem(err);
    }
    for (uint64_t i = 0; i < p->numel; i++)
        wide[i] = ((const int32_t *)raw)[i];
    free(raw);
    *out = wide;
    return CKPT_OK;
}

typedef struct sparse_view {
    int64_t *idx;        /* COO: [sparse_dim][nnz]; compressed: compressed indices */
    int64_t *plain;      /* compressed: plain indices */
    uint64_t nnz;
    uint64_t sparse_dim;
} sparse_view;

static void view_free(sparse_view *v)
{
    free(v->idx);
    free(v->plain);
}

static ckpt_status load_indices(ckpt_file *f, const ckpt_tensor *t, sparse_view *v,
                                ckpt_error *err)
{
    memset(v, 0, sizeof(*v));
    const ckpt_tensor *values = compressed(t) ? t->parts[2] : t->parts[1];
    v->nnz = (uint64_t)values->shape[0];
    CKPT_RETURN_IF_ERROR(index_copy(f, t->parts[0], &v->idx, err));
    if (!compressed(t)) {
        v->sparse_dim = (uint64_t)t->parts[0]->shape[0];
        return CKPT_OK;
    }
    v->sparse_dim = 2;
    ckpt_status st = index_copy(f, t->parts[1], &v->plain, err);
    if (st != CKPT_OK)
        view_free(v);
    return st;
}

/*
 * Fails naming where index element (i0, i1) of part p lies: the record of
 * its storage and the byte offset in it (the file offset too, when the
 * storage is stored plainly), so a bad index can be found in the file.
 */
static ckpt_status index_fail(ckpt_error *err, const ckpt_tensor *p, uint64_t i0, uint64_t i1,
                              const char *fmt, ...) CKPT_PRINTF(5, 6);

static ckpt_status index_fail(ckpt_error *err, const ckpt_tensor *p, uint64_t i0, uint64_t i1,
                              const char *fmt, ...)
{
    const ckpt__storage *s = p->storage;
    const ckpt__storage *root = s && s->base ? s->base : s;
    /* the index was read through this very view: its position cannot overflow */
    uint64_t elem = (uint64_t)p->storage_offset + i0 * (uint64_t)p->stride[0];
    if (p->ndim > 1)
        elem += i1 * (uint64_t)p->stride[1];
    uint64_t offset = s ? s->base_offset + elem * ckpt_dtype_size(p->dtype) : CKPT_NO_OFFSET;
    va_list ap;
    va_start(ap, fmt);
    ckpt_status st = ckpt__vfail(err, CKPT_ERR_FORMAT, root && root->record ? root->record : "",
                                 offset, fmt, ap);
    va_end(ap);
    if (root)
        ckpt__error_set_file_base(err, root->file_offset);
    return st;
}

/* The size plain indices of a compressed layout must stay under (in blocks
 * for BSR/BSC). */
static int64_t minor_size(const ckpt_tensor *t)
{
    bool row_major = t->layout == CKPT_LAYOUT_SPARSE_CSR || t->layout == CKPT_LAYOUT_SPARSE_BSR;
    const ckpt_tensor *values = t->parts[2];
    int64_t minor = row_major ? t->shape[1] : t->shape[0];
    if (t->layout == CKPT_LAYOUT_SPARSE_BSR)
        minor /= values->shape[2];   /* > 0: ckpt__sparse_validate */
    else if (t->layout == CKPT_LAYOUT_SPARSE_BSC)
        minor /= values->shape[1];
    return minor;
}

void ckpt__index_check_init(ckpt__index_check *c, const ckpt_tensor *t, unsigned part)
{
    memset(c, 0, sizeof(*c));
    c->t = t;
    c->part = part;
    c->decrease_at = UINT64_MAX;
    if (compressed(t)) {
        c->minor = minor_size(t);
        c->nnz = (uint64_t)t->parts[2]->shape[0];
    }
}

unsigned ckpt__index_parts(const ckpt_tensor *t)
{
    return t->layout == CKPT_LAYOUT_STRIDED ? 0 : compressed(t) ? 2 : 1;
}

/* The rules, one index at a time, in the part's row-major order. */
static ckpt_status check_index(ckpt__index_check *c, int64_t i, ckpt_error *err)
{
    const ckpt_tensor *t = c->t;
    const char *lname = ckpt_layout_name((ckpt_layout)t->layout);
    uint64_t j = c->count++;
    if (!compressed(t)) {
        /* indices [sparse_dim, nnz]: there is an element, so nnz > 0 */
        uint64_t nnz = (uint64_t)t->parts[0]->shape[1];
        uint64_t d = j / nnz, k = j % nnz;
        if (i < 0 || i >= t->shape[d])
            return index_fail(err, t->parts[0], d, k,
                              "sparse_coo tensor: index %lld of element %llu is out of "
                              "bounds for dimension %llu of size %lld",
                              (long long)i, (unsigned long long)k, (unsigned long long)d,
                              (long long)t->shape[d]);
        return CKPT_OK;
    }
    if (c->part == 0) {
        /* compressed indices: judged at the end, in the order 0, nnz, monotony */
        if (j == 0)
            c->first = i;
        else if (i < c->prev && c->decrease_at == UINT64_MAX)
            c->decrease_at = j;
        c->prev = i;
        return CKPT_OK;
    }
    if (i < 0 || i >= c->minor)
        return index_fail(err, t->parts[1], j, 0,
                          "%s tensor: plain index %lld of element %llu is out of bounds (%lld)",
                          lname, (long long)i, (unsigned long long)j, (long long)c->minor);
    return CKPT_OK;
}

ckpt_status ckpt__index_check_values(ckpt__index_check *c, const int64_t *v, size_t n,
                                     ckpt_error *err)
{
    for (size_t k = 0; k < n; k++)
        CKPT_RETURN_IF_ERROR(check_index(c, v[k], err));
    return CKPT_OK;
}

static int64_t load_index(const uint8_t *p, size_t size, bool swap)
{
    if (size == 8) {
        uint64_t u;
        memcpy(&u, p, 8);
        if (swap)
            u = __builtin_bswap64(u);
        return (int64_t)u;
    }
    uint32_t u;
    memcpy(&u, p, 4);
    if (swap)
        u = __builtin_bswap32(u);
    return (int32_t)u;
}

ckpt_status ckpt__index_check_bytes(ckpt__index_check *c, const uint8_t *p, size_t n, bool swap,
                                    ckpt_error *err)
{
    size_t es = ckpt_dtype_size(c->t->parts[c->part]->dtype); /* 4 or 8: validated */
    while (n) {
        if (c->partial_len || n < es) {
            /* an index split between two pieces */
            size_t take = es - c->partial_len < n ? es - c->partial_len : n;
            memcpy(c->partial + c->partial_len, p, take);
            c->partial_len += take;
            p += take;
            n -= take;
            if (c->partial_len < es)
                break;
            c->partial_len = 0;
            CKPT_RETURN_IF_ERROR(check_index(c, load_index(c->partial, es, swap), err));
            continue;
        }
        size_t whole = n / es * es;
        for (size_t k = 0; k < whole; k += es)
            CKPT_RETURN_IF_ERROR(check_index(c, load_index(p + k, es, swap), err));
        p += whole;
        n -= whole;
    }
    return CKPT_OK;
}

ckpt_status ckpt__index_check_end(ckpt__index_check *c, ckpt_error *err)
{
    const ckpt_tensor *t = c->t;
    if (!compressed(t) || c->part != 0)
        return CKPT_OK;
    const char *lname = ckpt_layout_name((ckpt_layout)t->layout);
    uint64_t n = c->count; /* the part's entries: major + 1 >= 1 */
    if (n == 0 || c->first != 0 || (uint64_t)c->prev != c->nnz)
        return index_fail(err, t->parts[0], c->first != 0 || n == 0 ? 0 : n - 1, 0,
                          "%s tensor: compressed indices must run from 0 to nnz (%lld to %lld, "
                          "nnz %llu)", lname, (long long)c->first, (long long)c->prev,
                          (unsigned long long)c->nnz);
    if (c->decrease_at != UINT64_MAX)
        return index_fail(err, t->parts[0], c->decrease_at, 0,
                          "%s tensor: compressed indices decrease at %llu", lname,
                          (unsigned long long)(c->decrease_at - 1));
    return CKPT_OK;
}

static ckpt_status check_indices(const ckpt_tensor *t, const sparse_view *v, ckpt_error *err)
{
    ckpt__index_check c;
    ckpt__index_check_init(&c, t, 0);
    uint64_t n0 = compressed(t) ? (uint64_t)t->parts[0]->shape[0] : v->sparse_dim * v->nnz;
    CKPT_RETURN_IF_ERROR(ckpt__index_check_values(&c, v->idx, (size_t)n0, err));
    CKPT_RETURN_IF_ERROR(ckpt__index_check_end(&c, err));
    if (!compressed(t))
        return CKPT_OK;
    ckpt__index_check_init(&c, t, 1);
    CKPT_RETURN_IF_ERROR(ckpt__index_check_values(&c, v->plain, (size_t)v->nnz, err));
    return ckpt__index_check_end(&c, err);
}

ckpt_status ckpt__index_check_part(ckpt__index_check *c, ckpt_error *err)
{
    const ckpt_tensor *p = c->t->parts[c->part];
    uint64_t nbytes = ckpt__tensor_nbytes(p);
    enum { PIECE = 65536 }; /* a multiple of every index size */
    uint8_t *buf = malloc(PIECE);
    if (!buf)
        return ckpt__nomem(err);
    ckpt_status st = CKPT_OK;
    for (uint64_t off = 0; off < nbytes && st == CKPT_OK;) {
        size_t len = nbytes - off < PIECE ? (size_t)(nbytes - off) : PIECE;
        const uint8_t *q;
        st = ckpt__tensor_read(p, off, len, buf, &q, err);
        if (st == CKPT_OK)
            st = ckpt__index_check_bytes(c, q, len, false, err); /* native order once read */
        off += len;
    }
    free(buf);
    return st == CKPT_OK ? ckpt__index_check_end(c, err) : st;
}

ckpt_status ckpt__sparse_check(ckpt_file *f, const ckpt_tensor *t, ckpt_error *err)
{
    (void)f; /* parts read their storages through their own files */
    for (unsigned i = 0; i < ckpt__index_parts(t); i++) {
        ckpt__index_check c;
        ckpt__index_check_init(&c, t, i);
        CKPT_RETURN_IF_ERROR(ckpt__index_check_part(&c, err));
    }
    return CKPT_OK;
}

/* dst[i] += src[i] for one element of dtype d; false when d has no sum here. */
static bool add_into(uint8_t *dst, const uint8_t *src, ckpt_dtype d)
{
#define ADD(T)                                                       \
    do {                                                             \
        T a_, b_;                                                    \
        memcpy(&a_, dst, sizeof(T));                                 \
        memcpy(&b_, src, sizeof(T));                                 \
        a_ = (T)(a_ + b_);                                           \
        memcpy(dst, &a_, sizeof(T));                                 \
    } while (0)
    switch (d) {
    case CKPT_DTYPE_FLOAT32: ADD(float); return true;
    case CKPT_DTYPE_FLOAT64: ADD(double); return true;
    case CKPT_DTYPE_COMPLEX64: ADD(float); dst += 4; src += 4; ADD(float); return true;
    case CKPT_DTYPE_COMPLEX128: ADD(double); dst += 8; src += 8; ADD(double); return true;
    case CKPT_DTYPE_INT64: ADD(int64_t); return true;
    case CKPT_DTYPE_INT32: ADD(int32_t); return true;
    case CKPT_DTYPE_INT16: ADD(int16_t); return true;
    case CKPT_DTYPE_INT8: ADD(int8_t); return true;
    case CKPT_DTYPE_UINT8: ADD(uint8_t); return true;
    case CKPT_DTYPE_BOOL: *dst = (uint8_t)(*dst || *src); return true;
    default: return false;
    }
#undef ADD
}

ckpt_status ckpt__sparse_to_dense(ckpt_file *f, const ckpt_tensor *t, uint8_t *dst,
                                  ckpt_error *err)
{
    const char *lname = ckpt_layout_name((ckpt_layout)t->layout);
    if (t->layout == CKPT_LAYOUT_SPARSE_BSR || t->layout == CKPT_LAYOUT_SPARSE_BSC)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "%s tensor: dense copies of block layouts are not supported "
                          "(read its parts)", lname);
    size_t esize = ckpt_dtype_size(t->dtype);
    if (esize == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "%s tensor of a sub-byte dtype", lname);
    sparse_view v;
    CKPT_RETURN_IF_ERROR(load_indices(f, t, &v, err));
    uint8_t *vals = NULL, *seen = NULL;
    ckpt_status st = check_indices(t, &v, err);
    const ckpt_tensor *values = compressed(t) ? t->parts[2] : t->parts[1];
    if (st == CKPT_OK)
        st = part_copy(f, values, (void **)&vals, err);
    if (st != CKPT_OK)
        goto out;
    /* each specified element covers a block of the dense dimensions */
    uint64_t block = 1, cells = 1;
    for (uint32_t d = (uint32_t)v.sparse_dim; d < t->ndim; d++)
        block *= (uint64_t)t->shape[d];
    for (uint32_t d = 0; d < v.sparse_dim; d++)
        cells *= (uint64_t)t->shape[d];
    size_t block_bytes = (size_t)(block * esize);
    memset(dst, 0, (size_t)(cells * block_bytes));
    seen = calloc((size_t)(cells / 8 + 1), 1);
    if (!seen) {
        st = ckpt__nomem(err);
        goto out;
    }
    uint64_t row = 0;
    for (uint64_t k = 0; k < v.nnz; k++) {
        uint64_t cell = 0;
        if (!compressed(t)) {
            for (uint64_t d = 0; d < v.sparse_dim; d++)
                cell = cell * (uint64_t)t->shape[d] + (uint64_t)v.idx[d * v.nnz + k];
        } else {
            while ((uint64_t)v.idx[row + 1] <= k)
                row++;
            uint64_t major = row, minor = (uint64_t)v.plain[k];
            cell = t->layout == CKPT_LAYOUT_SPARSE_CSR ? major * (uint64_t)t->shape[1] + minor
                                                       : minor * (uint64_t)t->shape[1] + major;
        }
        uint8_t *out = dst + cell * block_bytes;
        const uint8_t *in = vals + k * block_bytes;
        if (!(seen[cell / 8] & (1u << (cell % 8)))) {
            seen[cell / 8] |= (uint8_t)(1u << (cell % 8));
            memcpy(out, in, block_bytes);
            continue;
        }
        /* an uncoalesced duplicate: torch's to_dense sums them */
        for (uint64_t e = 0; e < block; e++) {
            if (!add_into(out + e * esize, in + e * esize, t->dtype)) {
                st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                                "%s tensor: duplicate %s entries cannot be summed here",
                                lname, ckpt_dtype_name(t->dtype));
                goto out;
            }
        }
    }
out:
    free(seen);
    free(vals);
    view_free(&v);
    return st;
}
