/*
 * region.c - boxes of tensors: any box of a strided tensor copied out
 * row-major, and the chunked tensors of DCP checkpoints, whose bytes are
 * assembled from the chunks that overlap what is asked for.
 *
 * A chunked tensor keeps its chunks sorted by their offsets; the chunks
 * that may overlap a box are those starting in dimension 0 between the
 * box's start minus the largest chunk extent there and the box's end: two
 * binary searches, then a test per candidate, never every chunk against
 * every box.
 */
#include "core.h"

#include <stdlib.h>

/* The storage bytes of a tensor: the map of its file where the record is
 * stored plainly (any alignment: only memcpy reads them), else its resolved
 * bytes. *p gets the tensor's first element. */
static ckpt_status tensor_base(const ckpt_tensor *t, const uint8_t **p, ckpt_error *err)
{
    ckpt__storage *s = t->storage;
    ckpt__storage *root = s->base ? s->base : s;
    const ckpt_file *f = root->owner;
    uint64_t first = (uint64_t)t->storage_offset * ckpt_dtype_size(t->dtype);
    if (f && !root->resolved && !root->big_endian && !root->chunked && root->record_index >= 0 &&
        f->has_zip && (size_t)root->record_index < f->zip.count) {
        const ckpt__zip_entry *e = &f->zip.entries[root->record_index];
        uint64_t end;
        if (e->method == 0 && ckpt__add_u64(s->base_offset, s->nbytes, &end) &&
            end <= e->size && ckpt__add_u64(e->data_offset, end, &end) && end <= f->map_size) {
            *p = f->map + e->data_offset + s->base_offset + first;
            return CKPT_OK;
        }
    }
    const uint8_t *data;
    CKPT_RETURN_IF_ERROR(ckpt__storage_read(s, 0, (size_t)s->nbytes, NULL, &data, err));
    *p = data + first;
    return CKPT_OK;
}

/*
 * Copies the box [slo, slo + n) of the strided tensor src into the array
 * dst of shape dshape (row-major), at dlo. nd dimensions; esz bytes each.
 */
static ckpt_status copy_box(const ckpt_tensor *src, const uint64_t *slo, const uint64_t *n,
                            uint8_t *dst, const uint64_t *dshape, const uint64_t *dlo,
                            uint32_t nd, size_t esz, ckpt_error *err)
{
    for (uint32_t d = 0; d < nd; d++)
        if (n[d] == 0)
            return CKPT_OK;
    const uint8_t *base;
    CKPT_RETURN_IF_ERROR(tensor_base(src, &base, err));
    if (nd == 0) {
        memcpy(dst, base, esz);
        return CKPT_OK;
    }
    /* row-major strides of dst, in elements */
    uint64_t dstride[64];
    dstride[nd - 1] = 1;
    for (uint32_t d = nd - 1; d > 0; d--)
        dstride[d - 1] = dstride[d] * dshape[d];
    uint64_t idx[64] = {0};
    uint64_t run = n[nd - 1];
    int64_t inner_stride = src->stride[nd - 1];
    for (;;) {
        uint64_t so = 0, doff = 0;
        for (uint32_t d = 0; d < nd; d++) {
            so += (slo[d] + idx[d]) * (uint64_t)src->stride[d];
            doff += (dlo[d] + idx[d]) * dstride[d];
        }
        const uint8_t *p = base + so * esz;
        uint8_t *o = dst + doff * esz;
        if (inner_stride == 1) {
            memcpy(o, p, (size_t)(run * esz));
        } else {
            for (uint64_t k = 0; k < run; k++)
                memcpy(o + k * esz, p + k * (uint64_t)inner_stride * esz, esz);
        }
        int32_t d = (int32_t)nd - 2;
        for (; d >= 0; d--) {
            if (++idx[d] < n[d])
                break;
            idx[d] = 0;
        }
        if (d < 0)
            return CKPT_OK;
    }
}

static ckpt_status chunk_src(ckpt_file *f, const ckpt__chunked *ct, ckpt__chunk *c,
                             ckpt_error *err)
{
    if (c->src)
        return CKPT_OK;
    if (!f || !f->open_chunk)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, ct->name, CKPT_NO_OFFSET,
                          "the chunks of this tensor cannot be opened");
    return f->open_chunk(f, ct, c, err);
}

/* First chunk whose offsets[0] >= key. */
static size_t lower_bound0(const ckpt__chunked *ct, int64_t key)
{
    size_t lo = 0, hi = ct->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ct->chunks[mid].offsets[0] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static ckpt_status chunked_box(ckpt_file *f, ckpt__chunked *ct, const uint64_t *lo,
                               const uint64_t *n, uint8_t *dst, ckpt_error *err)
{
    uint32_t nd = ct->ndim;
    size_t esz = ckpt_dtype_size(ct->dtype);
    size_t first = 0, end = ct->count;
    if (nd > 0) {
        if (n[0] == 0)
            return CKPT_OK;
        /* chunks are at most max_extent0 long in dimension 0 */
        int64_t from = (int64_t)lo[0] - ct->max_extent0 + 1;
        first = lower_bound0(ct, from);
        end = lower_bound0(ct, (int64_t)(lo[0] + n[0]));
    }
    uint64_t slo[64], dlo[64], m[64];
    for (size_t i = first; i < end; i++) {
        ckpt__chunk *c = &ct->chunks[i];
        bool overlaps = true;
        for (uint32_t d = 0; d < nd && overlaps; d++) {
            uint64_t a = (uint64_t)c->offsets[d], b = a + (uint64_t)c->sizes[d];
            uint64_t x = lo[d] > a ? lo[d] : a;
            uint64_t y = lo[d] + n[d] < b ? lo[d] + n[d] : b;
            if (x >= y) {
                overlaps = false;
                break;
            }
            slo[d] = x - a;
            dlo[d] = x - lo[d];
            m[d] = y - x;
        }
        if (!overlaps)
            continue;
        CKPT_RETURN_IF_ERROR(chunk_src(f, ct, c, err));
        ckpt_status st = copy_box(c->src, slo, m, dst, n, dlo, nd, esz, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, ct->name);
            return st;
        }
    }
    return CKPT_OK;
}

ckpt_status ckpt__tensor_region(ckpt_file *f, const ckpt_tensor *t, const uint64_t *lo,
                                const uint64_t *n, uint8_t *dst, ckpt_error *err)
{
    if (t->layout != CKPT_LAYOUT_STRIDED)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a %s tensor has no strided regions",
                          ckpt_layout_name((ckpt_layout)t->layout));
    size_t esz = ckpt_dtype_size(t->dtype);
    if (esz == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "regions of %s tensors (less than a byte per element) are not "
                          "supported", ckpt_dtype_name(t->dtype));
    if (t->ndim > 64)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET, "too many dimensions");
    if (!t->storage)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a meta tensor has no bytes");
    if (t->storage->chunked)
        return chunked_box(f, t->storage->chunked, lo, n, dst, err);
    uint64_t zero[64] = {0};
    return copy_box(t, lo, n, dst, n, zero, t->ndim, esz, err);
}

/* ---- row-major byte ranges of a chunked tensor -------------------------- */

typedef struct range_walk {
    ckpt_file *f;
    const ckpt_tensor *t;       /* a view with the chunked tensor's shape */
    uint8_t *out;               /* where the next box goes */
    size_t esz;
    uint64_t lo[64], n[64];
} range_walk;

/* Elements [a, b) of dimensions d.. (inner: elements per index of d) with
 * lo[0..d) fixed: as boxes, each contiguous in row-major order. */
static ckpt_status range_rec(range_walk *w, uint32_t d, uint64_t a, uint64_t b, ckpt_error *err)
{
    uint32_t nd = w->t->ndim;
    if (a >= b)
        return CKPT_OK;
    uint64_t inner = 1;
    for (uint32_t k = d + 1; k < nd; k++)
        inner *= (uint64_t)w->t->shape[k];
    uint64_t i0 = a / inner, i_last = (b - 1) / inner;
    if (a % inner != 0 || b - a < inner) {
        /* a partial index of d first */
        w->lo[d] = i0;
        w->n[d] = 1;
        uint64_t stop = i0 == i_last ? b - i0 * inner : inner;
        CKPT_RETURN_IF_ERROR(range_rec(w, d + 1, a % inner, stop, err));
        a = (i0 + 1) * inner;
        if (a >= b)
            return CKPT_OK;
    }
    uint64_t full = (b - a) / inner;
    if (full) {
        w->lo[d] = a / inner;
        w->n[d] = full;
        for (uint32_t k = d + 1; k < nd; k++) {
            w->lo[k] = 0;
            w->n[k] = (uint64_t)w->t->shape[k];
        }
        CKPT_RETURN_IF_ERROR(ckpt__tensor_region(w->f, w->t, w->lo, w->n, w->out, err));
        w->out += full * inner * w->esz;
        a += full * inner;
    }
    if (a < b) {
        w->lo[d] = a / inner;
        w->n[d] = 1;
        CKPT_RETURN_IF_ERROR(range_rec(w, d + 1, 0, b - a, err));
    }
    return CKPT_OK;
}

/* The chunked storage's tensor: contiguous, its shape. */
static void chunked_view(ckpt__storage *s, ckpt_tensor *t)
{
    memset(t, 0, sizeof(*t));
    t->dtype = s->chunked->dtype;
    t->ndim = s->chunked->ndim;
    t->shape = (int64_t *)(uintptr_t)s->chunked->shape;
    t->storage = s;
    t->layout = CKPT_LAYOUT_STRIDED;
}

ckpt_status ckpt__chunked_read(ckpt__storage *s, uint64_t off, size_t len, uint8_t *buf,
                               ckpt_error *err)
{
    ckpt_tensor t;
    chunked_view(s, &t);
    range_walk w = {.f = s->owner, .t = &t, .out = buf, .esz = ckpt_dtype_size(t.dtype)};
    if (w.esz == 0 || off % w.esz || len % w.esz)
        return CKPT_INVALID_ARG(err, "chunked reads must cover whole elements");
    if (t.ndim > 64)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET, "too many dimensions");
    if (len == 0)
        return CKPT_OK;
    if (t.ndim == 0)
        return ckpt__tensor_region(w.f, &t, w.lo, w.n, buf, err);
    return range_rec(&w, 0, off / w.esz, (off + len) / w.esz, err);
}

ckpt_status ckpt__chunked_resolve(ckpt__storage *s, ckpt_error *err)
{
    if (s->resolved)
        return CKPT_OK;
    void *p = NULL;
    if (posix_memalign(&p, 64, s->nbytes ? (size_t)s->nbytes : 1) != 0)
        return ckpt__fail(err, CKPT_ERR_NOMEM, s->chunked->name, CKPT_NO_OFFSET,
                          "out of memory assembling %llu bytes",
                          (unsigned long long)s->nbytes);
    ckpt_status st = ckpt__chunked_read(s, 0, (size_t)s->nbytes, p, err);
    if (st != CKPT_OK) {
        free(p);
        return st;
    }
    s->owned = p;
    s->data = p;
    s->resolved = true;
    return CKPT_OK;
}

ckpt_status ckpt__chunks_open_all(ckpt_file *f, ckpt_error *err)
{
    for (size_t i = 0; i < f->storage_count; i++) {
        ckpt__chunked *ct = f->storages[i]->chunked;
        for (size_t k = 0; ct && k < ct->count; k++)
            CKPT_RETURN_IF_ERROR(chunk_src(f, ct, &ct->chunks[k], err));
    }
    return CKPT_OK;
}

/* ---- public ------------------------------------------------------------- */

size_t ckpt_tensor_chunk_count(const ckpt_tensor *t)
{
    return t && t->storage && t->storage->chunked ? t->storage->chunked->count : 0;
}

bool ckpt_tensor_chunk(const ckpt_tensor *t, size_t i, ckpt_chunk_info *info)
{
    if (i >= ckpt_tensor_chunk_count(t))
        return false;
    const ckpt__chunked *ct = t->storage->chunked;
    const ckpt__chunk *c = &ct->chunks[i];
    const ckpt_file *f = t->storage->owner;
    ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
    ci.ndim = ct->ndim;
    ci.offsets = c->offsets;
    ci.sizes = c->sizes;
    ci.file = f && c->file < f->dcp_file_count ? f->dcp_files[c->file].name : NULL;
    ci.file_offset = c->offset;
    ci.length = c->length;
    return ckpt__struct_out(info, &ci, sizeof(ci));
}

ckpt_status ckpt_tensor_read_region(ckpt_file *f, const ckpt_tensor *t, const int64_t *offsets,
                                    const int64_t *sizes, void *dst, size_t dst_size,
                                    ckpt_error *err)
{
    if (!f || !t || (t->ndim && (!offsets || !sizes)) || (!dst && dst_size))
        return CKPT_INVALID_ARG(err, "NULL argument");
    if (t->ndim > 64)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET, "too many dimensions");
    uint64_t lo[64], n[64], count = 1;
    for (uint32_t d = 0; d < t->ndim; d++) {
        uint64_t end;
        if (offsets[d] < 0 || sizes[d] < 0 ||
            !ckpt__add_u64((uint64_t)offsets[d], (uint64_t)sizes[d], &end) ||
            end > (uint64_t)t->shape[d])
            return CKPT_INVALID_ARG(err,
                                    "the box [%lld, +%lld) of dimension %u is outside the "
                                    "tensor's size %lld there",
                                    (long long)offsets[d], (long long)sizes[d], d,
                                    (long long)t->shape[d]);
        lo[d] = (uint64_t)offsets[d];
        n[d] = (uint64_t)sizes[d];
        count *= n[d]; /* at most the tensor's numel: no overflow */
    }
    size_t esz = ckpt_dtype_size(t->dtype);
    if (esz == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "regions of %s tensors (less than a byte per element) are not "
                          "supported", ckpt_dtype_name(t->dtype));
    uint64_t nbytes = count * esz;
    if (dst_size < nbytes)
        return CKPT_INVALID_ARG(err, "destination holds %zu bytes, the region needs %llu",
                                dst_size, (unsigned long long)nbytes);
    if (nbytes > CKPT__OUTPUT_SLACK)
        CKPT_RETURN_IF_ERROR(ckpt_file_check_output(f, nbytes, NULL, err));
    if (count == 0)
        return CKPT_OK;
    return ckpt__tensor_region(f, t, lo, n, dst, err);
}

ckpt_status ckpt_dcp_load_shard(ckpt_file *f, const ckpt_region *regions, size_t count,
                                ckpt_error *err)
{
    if (!f || (!regions && count))
        return CKPT_INVALID_ARG(err, "NULL argument");
    for (size_t i = 0; i < count; i++) {
        const ckpt_region *r = &regions[i];
        if (!r->name)
            return CKPT_INVALID_ARG(err, "region %zu has no tensor name", i);
        const ckpt_tensor *t = ckpt_file_find_tensor(f, r->name);
        if (!t)
            return ckpt__fail(err, CKPT_ERR_NOT_FOUND, r->name, CKPT_NO_OFFSET,
                              "no tensor of this name in the checkpoint");
        ckpt_status st = ckpt_tensor_read_region(f, t, r->offsets, r->sizes, r->dst,
                                                 r->dst_size, err);
        if (st != CKPT_OK) {
            if (err && !err->record[0])
                ckpt__error_prefix_record(err, r->name);
            return st;
        }
    }
    return CKPT_OK;
}
