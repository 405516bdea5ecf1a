/*
 * tensor.c - tensor views: validation against their storage, data access,
 * strided copies, byte swapping.
 */
#include "core.h"

#include <stdlib.h>
#include <string.h>

static uint64_t storage_nbytes(const ckpt__storage *s) { return s ? s->nbytes : 0; }

ckpt_status ckpt__tensor_validate(ckpt_tensor *t, const ckpt_limits *limits,
                                  const char *record, uint64_t offset, ckpt_error *err)
{
    const char *name = ckpt_dtype_name(t->dtype);
    unsigned bits = ckpt_dtype_bits(t->dtype);
    if (bits == 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "tensor has an invalid dtype");
    if (limits && t->ndim > limits->max_ndim)
        return ckpt__fail(err, CKPT_ERR_LIMIT, record, offset,
                          "tensor has %u dimensions (limit %llu)", t->ndim,
                          (unsigned long long)limits->max_ndim);
    if (t->storage_offset < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "negative storage offset %lld", (long long)t->storage_offset);
    uint64_t numel = 1, max_index = 0;
    for (uint32_t i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "negative size %lld in dimension %u", (long long)t->shape[i], i);
        if (t->stride[i] < 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "negative stride %lld in dimension %u", (long long)t->stride[i], i);
        if (!ckpt__mul_u64(numel, (uint64_t)t->shape[i], &numel))
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "tensor shape overflows (dimension %u)", i);
    }
    /* bytes of the whole tensor must be representable */
    uint64_t nbits;
    if (!ckpt__mul_u64(numel, bits, &nbits))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "tensor byte size overflows");
    t->numel = numel;
    if (numel == 0 || !t->storage)
        return CKPT_OK;
    for (uint32_t i = 0; i < t->ndim; i++) {
        uint64_t span;
        if (!ckpt__mul_u64((uint64_t)(t->shape[i] - 1), (uint64_t)t->stride[i], &span) ||
            !ckpt__add_u64(max_index, span, &max_index))
            return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                              "tensor extent overflows (dimension %u)", i);
    }
    uint64_t last, need_bits, need;
    if (!ckpt__add_u64(max_index, (uint64_t)t->storage_offset, &last) ||
        !ckpt__add_u64(last, 1, &last) || !ckpt__mul_u64(last, bits, &need_bits))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "tensor extent overflows");
    need = need_bits / 8 + (need_bits % 8 != 0);
    if (bits % 8 != 0 && !(t->storage_offset == 0 && ckpt__tensor_is_contiguous(t)))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, offset,
                          "%s tensor must be contiguous", name);
    if (need > storage_nbytes(t->storage))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "%s tensor view needs %llu bytes but its storage '%s' has %llu",
                          name, (unsigned long long)need,
                          t->storage->key ? t->storage->key : "?",
                          (unsigned long long)storage_nbytes(t->storage));
    return CKPT_OK;
}

bool ckpt__tensor_is_contiguous(const ckpt_tensor *t)
{
    int64_t expected = 1;
    for (uint32_t i = t->ndim; i-- > 0;) {
        if (t->shape[i] == 1)
            continue;
        if (t->shape[i] == 0)
            return true;
        if (t->stride[i] != expected)
            return false;
        expected *= t->shape[i];
    }
    return true;
}

uint64_t ckpt__tensor_nbytes(const ckpt_tensor *t)
{
    /* numel x bits cannot overflow: ckpt__tensor_validate checked it */
    uint64_t nbits = t->numel * ckpt_dtype_bits(t->dtype);
    return nbits / 8 + (nbits % 8 != 0);
}

void ckpt__byteswap(uint8_t *p, uint64_t n, ckpt_dtype dtype)
{
    size_t size = ckpt_dtype_size(dtype);
    if (dtype == CKPT_DTYPE_COMPLEX128 || dtype == CKPT_DTYPE_COMPLEX64 || dtype == CKPT_DTYPE_COMPLEX32) {
        size /= 2;
        n *= 2;
    }
    if (size <= 1)
        return;
    for (uint64_t i = 0; i < n; i++, p += size) {
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            uint8_t tmp = p[a];
            p[a] = p[b];
            p[b] = tmp;
        }
    }
}

static void tensor_info(const ckpt_tensor *t, ckpt_tensor_info *info)
{
    memset(info, 0, sizeof(*info));
    info->storage_file_offset = CKPT_NO_OFFSET;
    if (!t)
        return;
    info->dtype = t->dtype;
    info->ndim = t->ndim;
    info->shape = t->shape;
    info->stride = t->stride;
    info->storage_offset = t->storage_offset;
    info->numel = t->numel;
    info->nbytes = ckpt__tensor_nbytes(t);
    info->requires_grad = t->requires_grad;
    info->is_parameter = t->is_parameter;
    info->is_contiguous = ckpt__tensor_is_contiguous(t);
    info->layout = (ckpt_layout)t->layout;
    const ckpt__storage *s = t->storage;
    if (t->layout != CKPT_LAYOUT_STRIDED) {
        /* describe where the values are */
        const ckpt_tensor *values = t->parts[t->layout == CKPT_LAYOUT_SPARSE_COO ? 1 : 2];
        info->nnz = values->ndim ? (uint64_t)values->shape[0] : 0;
        s = values->storage;
        info->is_contiguous = false;
    }
    info->has_storage = t->storage != NULL;
    if (s) {
        const ckpt__storage *root = s->base ? s->base : s;
        info->storage_key = s->key;
        info->location = s->location;
        info->record = root->record;
        info->storage_nbytes = s->nbytes;
        info->big_endian = root->big_endian;
        info->storage_index = s->index;
        if (root->file_offset != CKPT_NO_OFFSET)
            info->storage_file_offset = root->file_offset + s->base_offset;
    } else {
        info->location = "meta";
    }
}

void ckpt_tensor_get_info(const ckpt_tensor *t, ckpt_tensor_info *info)
{
    ckpt_tensor_info full = {.struct_size = sizeof(full)};
    tensor_info(t, &full);
    ckpt__struct_out(info, &full, sizeof(full));
}

static bool is_sparse(const ckpt_tensor *t) { return t->layout != CKPT_LAYOUT_STRIDED; }

ckpt_status ckpt_tensor_data(ckpt_file *f, const ckpt_tensor *t, const void **data,
                             bool *zero_copy, ckpt_error *err)
{
    if (zero_copy)
        *zero_copy = false;
    if (!f || !t || !data)
        return CKPT_INVALID_ARG(err, "NULL argument");
    *data = NULL;
    if (is_sparse(t))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a %s tensor has no strided data: read its parts, or copy it dense",
                          ckpt_layout_name((ckpt_layout)t->layout));
    ckpt__storage *s = t->storage;
    if (!s || s->nbytes == 0)
        return CKPT_OK;
    ckpt__storage *root = s->base ? s->base : s;
    CKPT_RETURN_IF_ERROR(ckpt__storage_resolve(f, root, err));
    uint64_t off = s->base_offset + (uint64_t)t->storage_offset * ckpt_dtype_bits(t->dtype) / 8;
    *data = root->data + off;
    if (zero_copy)
        *zero_copy = root->owned == NULL;
    return CKPT_OK;
}

ckpt_status ckpt_tensor_copy(ckpt_file *f, const ckpt_tensor *t, void *dst, size_t dst_size,
                             ckpt_error *err)
{
    if (!f || !t || (!dst && dst_size))
        return CKPT_INVALID_ARG(err, "NULL argument");
    uint64_t nbytes = ckpt__tensor_nbytes(t);
    if (nbytes > CKPT__OUTPUT_SLACK &&
        ckpt_file_check_output(f, nbytes, NULL, err) != CKPT_OK) {
        /* the file's name for it, looked up only now */
        const char *name = ckpt__file_tensor_name(f, t);
        return ckpt_file_check_output(f, nbytes, name, err);
    }
    return ckpt__tensor_copy(f, t, dst, dst_size, err);
}

/*
 * Bytes stored plainly in a file held open are read with pread straight
 * into the destination rather than copied from the map: from a cold file
 * the kernel's read-ahead streams them (faults on the map wait for each
 * read-around), and a warm one costs the same copy without page faults.
 * Returns how many bytes it put at dst (0: not stored so, or a small
 * copy); the caller copies the rest from the map, as it would have, after
 * a read error. A file that shrank faults there, as a map always did.
 */
#define PREAD_COPY_MIN ((size_t)64 << 10)

static size_t copy_by_pread(const ckpt__storage *s, const uint8_t *src, uint8_t *dst, size_t n)
{
    const ckpt__storage *root = s->base ? s->base : s;
    const ckpt_file *file = root->owner;
    if (n < PREAD_COPY_MIN || !file || !file->has_fd || !file->mapped || root->owned ||
        root->file_offset == CKPT_NO_OFFSET || root->data != file->map + root->file_offset ||
        src < file->map || src > file->map + file->map_size ||
        n > file->map_size - (uint64_t)(src - file->map))
        return 0;
    size_t done;
    (void)ckpt__pread_full(file->fd, dst, n, (uint64_t)(src - file->map), &done);
    return done;
}

ckpt_status ckpt__tensor_copy(ckpt_file *f, const ckpt_tensor *t, void *dst, size_t dst_size,
                              ckpt_error *err)
{
    if (!f || !t || (!dst && dst_size))
        return CKPT_INVALID_ARG(err, "NULL argument");
    uint64_t nbytes = ckpt__tensor_nbytes(t);
    if (dst_size < nbytes)
        return CKPT_INVALID_ARG(err,
                                "destination holds %zu bytes, tensor needs %llu", dst_size,
                                (unsigned long long)nbytes);
    if (nbytes == 0)
        return CKPT_OK;
    if (is_sparse(t))
        return ckpt__sparse_to_dense(f, t, dst, err);
    if (!t->storage)
        return CKPT_INVALID_ARG(err, "meta tensor has no data");
    if (t->storage->chunked && !t->storage->resolved)
        return ckpt__chunked_read(t->storage, 0, (size_t)nbytes, dst, err); /* straight in */
    const void *src_v;
    CKPT_RETURN_IF_ERROR(ckpt_tensor_data(f, t, &src_v, NULL, err));
    const uint8_t *src = src_v;
    uint8_t *out = dst;
    if (ckpt__tensor_is_contiguous(t)) {
        size_t done = copy_by_pread(t->storage, src, out, (size_t)nbytes);
        memcpy(out + done, src + done, (size_t)nbytes - done);
        return CKPT_OK;
    }
    /* Strided: copy runs of the innermost dimension, walking an index. */
    size_t esize = ckpt_dtype_size(t->dtype);
    uint32_t nd = t->ndim;
    uint64_t idx[64] = {0};
    if (nd > 64)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET, "too many dimensions");
    int64_t inner = t->shape[nd - 1], inner_stride = t->stride[nd - 1];
    uint64_t rows = t->numel / (uint64_t)inner;
    for (uint64_t r = 0; r < rows; r++) {
        uint64_t base = 0;
        for (uint32_t d = 0; d + 1 < nd; d++)
            base += idx[d] * (uint64_t)t->stride[d];
        const uint8_t *p = src + base * esize;
        if (inner_stride == 1) {
            memcpy(out, p, (size_t)inner * esize);
            out += (size_t)inner * esize;
        } else {
            for (int64_t k = 0; k < inner; k++) {
                memcpy(out, p + (uint64_t)k * (uint64_t)inner_stride * esize, esize);
                out += esize;
            }
        }
        for (uint32_t d = nd - 1; d-- > 0;) {
            if (++idx[d] < (uint64_t)t->shape[d])
                break;
            idx[d] = 0;
        }
    }
    return CKPT_OK;
}
