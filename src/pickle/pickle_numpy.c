/*
 * pickle_numpy.c - numpy arrays, dtypes and scalars inside pickles, read as
 * data (with CKPT__PICKLE_NUMPY); numpy's type strings for the .npy reader.
 *
 * numpy pickles an array as _reconstruct(ndarray, (0,), b'b') (an empty
 * int8 array) followed by BUILD (version, shape, dtype, is_fortran, data);
 * a dtype as numpy.dtype('f8', False, True) followed by BUILD (version,
 * byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]);
 * a scalar as scalar(dtype, bytes); protocol 5 arrays as
 * _frombuffer(bytearray, dtype, shape, order). Nothing is called: the
 * calls become tensors and numbers here. Object arrays (whose items are
 * pickled Python objects), strings, structured and subarray dtypes are
 * refused by name.
 */
#include "pickle_vm.h"

#include <stdio.h>

/* Storage keys that mark the tensors made here (compared by address). */
static const char UNBUILT_KEY[] = "numpy (not yet built)";
static const char BUILT_KEY[] = "numpy";

ckpt__numpy_type ckpt__numpy_descr(const char *s, size_t n, char order, ckpt_dtype *dtype,
                                   bool *big_endian)
{
    *dtype = CKPT_DTYPE_INVALID;
    *big_endian = false;
    if (n && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '=')) {
        order = s[0];
        s++;
        n--;
    }
    if (n == 0)
        return CKPT__NUMPY_BAD;
    char kind = s[0];
    uint64_t size = 0;
    for (size_t i = 1; i < n; i++) {
        if (s[i] < '0' || s[i] > '9' || size > 100000)
            return CKPT__NUMPY_BAD;
        size = size * 10 + (uint64_t)(s[i] - '0');
    }
    if (kind == 'O')
        return n == 1 || size == 8 || size == 4 ? CKPT__NUMPY_OBJECT : CKPT__NUMPY_BAD;
    if (n == 1)
        return strchr("SUVaMm", kind) ? CKPT__NUMPY_UNSUPPORTED : CKPT__NUMPY_BAD;
    ckpt_dtype d = CKPT_DTYPE_INVALID;
    switch (kind) {
    case 'b':
        d = size == 1 ? CKPT_DTYPE_BOOL : CKPT_DTYPE_INVALID;
        break;
    case 'i':
        d = size == 1   ? CKPT_DTYPE_INT8
            : size == 2 ? CKPT_DTYPE_INT16
            : size == 4 ? CKPT_DTYPE_INT32
            : size == 8 ? CKPT_DTYPE_INT64
                        : CKPT_DTYPE_INVALID;
        break;
    case 'u':
        d = size == 1   ? CKPT_DTYPE_UINT8
            : size == 2 ? CKPT_DTYPE_UINT16
            : size == 4 ? CKPT_DTYPE_UINT32
            : size == 8 ? CKPT_DTYPE_UINT64
                        : CKPT_DTYPE_INVALID;
        break;
    case 'f':
        d = size == 2   ? CKPT_DTYPE_FLOAT16
            : size == 4 ? CKPT_DTYPE_FLOAT32
            : size == 8 ? CKPT_DTYPE_FLOAT64
                        : CKPT_DTYPE_INVALID;
        break;
    case 'c':
        d = size == 8 ? CKPT_DTYPE_COMPLEX64 : size == 16 ? CKPT_DTYPE_COMPLEX128 : CKPT_DTYPE_INVALID;
        break;
    case 'S': case 'U': case 'V': case 'a': case 'M': case 'm':
        return CKPT__NUMPY_UNSUPPORTED;
    default:
        return CKPT__NUMPY_BAD;
    }
    if (d == CKPT_DTYPE_INVALID)
        return CKPT__NUMPY_UNSUPPORTED; /* f16 (long double), c32, i16, ... */
    if (ckpt_dtype_size(d) > 1) {
        if (order == '>')
            *big_endian = true;
        else if (order != '<' && order != '=')
            return CKPT__NUMPY_BAD; /* '|' only for one-byte types */
    }
    *dtype = d;
    return CKPT__NUMPY_OK;
}

/* ---- values --------------------------------------------------------- */

static bool is_global(const ckpt_value *v, uint32_t id)
{
    return v && v->kind == CKPT_KIND_GLOBAL && v->global_id == id;
}

/* A numpy.dtype OBJECT (made by ckpt__numpy_call_dtype): its type string. */
static const ckpt_value *dtype_text(const ckpt_value *v)
{
    if (!v || v->kind != CKPT_KIND_OBJECT || !is_global(v->u.obj.cls, CKPT__G_NUMPY_DTYPE) ||
        !v->u.obj.args || v->u.obj.args->kind != CKPT_KIND_TUPLE || v->u.obj.args->u.seq.len < 1 ||
        !v->u.obj.args->u.seq.items[0] || v->u.obj.args->u.seq.items[0]->kind != CKPT_KIND_STR)
        return NULL;
    return v->u.obj.args->u.seq.items[0];
}

/* numpy.dtype(obj, align, copy): an OBJECT keeping its arguments, whose
 * BUILD (an object's) keeps the state; read by dtype_of. */
ckpt_status ckpt__numpy_call_dtype(vm *m, const ckpt_value *fn, ckpt_value *const *args,
                                   size_t nargs, ckpt_value **out)
{
    if (nargs < 1 || nargs > 3 || !args[0] || args[0]->kind != CKPT_KIND_STR)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "numpy.dtype takes a type string and up to two flags");
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_OBJECT, out));
    (*out)->u.obj.cls = (ckpt_value *)(uintptr_t)fn;
    return ckpt__vm_seq(m, CKPT_KIND_TUPLE, args, nargs, &(*out)->u.obj.args);
}

/* The dtype of a numpy.dtype OBJECT with its BUILD state. */
static ckpt_status dtype_of(vm *m, const char *what, const ckpt_value *v, ckpt_dtype *dtype,
                            bool *big_endian)
{
    const ckpt_value *s = dtype_text(v);
    if (!s)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the dtype must be a numpy.dtype, not %s",
                             what, kind_desc(v));
    char order = '|';
    const ckpt_value *st = v->u.obj.state;
    if (st) {
        /* (version, byteorder, subarray, names, fields, elsize, alignment,
         * flags[, metadata]) */
        if (st->kind != CKPT_KIND_TUPLE || st->u.seq.len < 8 || st->u.seq.len > 9 ||
            !st->u.seq.items[1] || st->u.seq.items[1]->kind != CKPT_KIND_STR ||
            st->u.seq.items[1]->u.s.len != 1)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "%s: the numpy.dtype state must be (version, byteorder, ...)",
                                 what);
        for (int i = 2; i <= 4; i++) {
            const ckpt_value *p = st->u.seq.items[i];
            if (p && p->kind != CKPT_KIND_NONE)
                return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                                     "%s: structured and subarray numpy dtypes are not supported",
                                     what);
        }
        order = st->u.seq.items[1]->u.s.ptr[0];
    }
    char buf[40];
    ckpt__numpy_type r = ckpt__numpy_descr(s->u.s.ptr, s->u.s.len, order, dtype, big_endian);
    const char *q = ckpt__quote(buf, sizeof(buf), s->u.s.ptr, s->u.s.len, true);
    switch (r) {
    case CKPT__NUMPY_OK: return CKPT_OK;
    case CKPT__NUMPY_OBJECT:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                             "%s: numpy object arrays (dtype '%s') are not supported: their "
                             "items are pickled Python objects",
                             what, q);
    case CKPT__NUMPY_UNSUPPORTED:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                             "%s: numpy dtype '%s' has no torch dtype (strings, dates, records "
                             "and long doubles are not supported)",
                             what, q);
    case CKPT__NUMPY_BAD: break;
    }
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: '%s' (byte order '%c') is not a numpy dtype",
                         what, q, order);
}

/* A tensor over data[0..n): shape, C or Fortran order; the bytes are
 * aliased when aligned and little-endian, else copied (and swapped). */
static ckpt_status make_array(vm *m, const char *what, ckpt_tensor *t, const ckpt_value *shape,
                              ckpt_dtype dtype, bool big_endian, bool fortran,
                              const ckpt_value *data)
{
    if (!shape || (shape->kind != CKPT_KIND_TUPLE && shape->kind != CKPT_KIND_LIST))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the shape must be a tuple, not %s", what,
                             kind_desc(shape));
    size_t nd = shape->u.seq.len;
    if (nd > m->limits->max_ndim)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "%s: the shape has %zu dimensions (max_ndim is %llu)",
                             what, nd, (unsigned long long)m->limits->max_ndim);
    if (!data || data->kind != CKPT_KIND_BYTES)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the array data must be bytes, not %s", what,
                             kind_desc(data));
    int64_t *dims, *strides;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (nd ? nd : 1) * sizeof(int64_t), (void **)&dims));
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (nd ? nd : 1) * sizeof(int64_t), (void **)&strides));
    uint64_t numel = 1;
    for (size_t k = 0; k < nd; k++) {
        const ckpt_value *d = shape->u.seq.items[k];
        if (!d || d->kind != CKPT_KIND_INT || d->u.i < 0)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "%s: shape item %zu must be an int >= 0, not %s", what, k,
                                 kind_desc(d));
        dims[k] = d->u.i;
        if (!ckpt__mul_u64(numel, (uint64_t)d->u.i, &numel))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the shape's element count overflows",
                                 what);
    }
    uint64_t nbytes;
    if (!ckpt__mul_u64(numel, ckpt_dtype_size(dtype), &nbytes) || nbytes != data->u.s.len)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "%s: %zu bytes of data for %llu %s elements (numpy refuses "
                             "the size mismatch)",
                             what, data->u.s.len, (unsigned long long)numel,
                             ckpt_dtype_name(dtype));
    /* strides in elements, numpy's (dimensions of 0 count as 1) */
    uint64_t step = 1;
    for (size_t i = 0; i < nd; i++) {
        size_t k = fortran ? i : nd - 1 - i;
        strides[k] = (int64_t)step;
        if (dims[k] > 1 && (!ckpt__mul_u64(step, (uint64_t)dims[k], &step) ||
                            step > (uint64_t)INT64_MAX))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the shape's strides overflow", what);
    }
    ckpt__storage *s;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*s), (void **)&s));
    const uint8_t *bytes = (const uint8_t *)data->u.s.ptr;
    size_t align = ckpt_dtype_size(dtype) > 16 ? 16 : ckpt_dtype_size(dtype);
    if (nbytes && (big_endian || (uintptr_t)bytes % align != 0)) {
        uint8_t *copy;
        CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, nbytes / 64));
        CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (size_t)nbytes, (void **)&copy));
        memcpy(copy, bytes, (size_t)nbytes);
        if (big_endian)
            ckpt__byteswap(copy, numel, dtype);
        bytes = copy;
    }
    s->key = BUILT_KEY;
    s->location = "cpu";
    s->dtype = dtype;
    s->nbytes = nbytes;
    s->record = m->ctx->record;
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    s->data = bytes;
    s->resolved = true;
    if (m->ctx->file)
        CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(m->ctx->file, s, m->err));
    t->dtype = dtype;
    t->ndim = (uint32_t)nd;
    t->shape = dims;
    t->stride = strides;
    t->storage_offset = 0;
    t->storage = s;
    t->requires_grad = false;
    t->is_parameter = false;
    return ckpt__tensor_validate(t, m->limits, m->ctx->record, m->op_pos, m->err);
}

static ckpt_status new_tensor(vm *m, ckpt_tensor *t, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_TENSOR, out));
    (*out)->u.tensor.t = t;
    return CKPT_OK;
}

/* _reconstruct(ndarray, (0,), b'b'): numpy's empty int8 array, which the
 * BUILD that follows fills. */
ckpt_status ckpt__numpy_call_reconstruct(vm *m, ckpt_value *const *args, size_t nargs,
                                         ckpt_value **out)
{
    if (nargs != 3 || !is_global(args[0], CKPT__G_NUMPY_NDARRAY))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "numpy _reconstruct takes (numpy.ndarray, shape, typecode)");
    static const uint8_t nothing[16];
    ckpt__storage *s;
    ckpt_tensor *t;
    int64_t *dims;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*s), (void **)&s));
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*t), (void **)&t));
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, 2 * sizeof(int64_t), (void **)&dims));
    dims[1] = 1;
    s->key = UNBUILT_KEY;
    s->location = "cpu";
    s->dtype = CKPT_DTYPE_INT8;
    s->record = m->ctx->record;
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    s->data = nothing;
    s->resolved = true;
    t->dtype = CKPT_DTYPE_INT8;
    t->ndim = 1;
    t->shape = dims;
    t->stride = dims + 1;
    t->storage = s;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, m->limits, m->ctx->record, m->op_pos, m->err));
    return new_tensor(m, t, out);
}

bool ckpt__numpy_unbuilt(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_TENSOR && v->u.tensor.t->storage &&
           v->u.tensor.t->storage->key == UNBUILT_KEY;
}

bool ckpt__numpy_built(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_TENSOR && v->u.tensor.t->storage &&
           v->u.tensor.t->storage->key == BUILT_KEY;
}

/* BUILD of an array: (version, shape, dtype, is_fortran, data), or the
 * version-less (shape, dtype, is_fortran, data) of old numpy. */
ckpt_status ckpt__numpy_build(vm *m, ckpt_value *inst, const ckpt_value *state)
{
    const char *what = "numpy array state";
    if (!state || state->kind != CKPT_KIND_TUPLE || state->u.seq.len < 4 ||
        state->u.seq.len > 5)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "%s must be (version, shape, dtype, is_fortran, data), not %s", what,
                             kind_desc(state));
    ckpt_value *const *it = state->u.seq.items;
    if (state->u.seq.len == 5) {
        if (!it[0] || it[0]->kind != CKPT_KIND_INT || it[0]->u.i != 1)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: version must be 1", what);
        it++;
    }
    ckpt_dtype dtype;
    bool big_endian;
    CKPT_RETURN_IF_ERROR(dtype_of(m, what, it[1], &dtype, &big_endian));
    if (!is_intlike(it[2]))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: is_fortran must be a bool, not %s", what,
                             kind_desc(it[2]));
    return make_array(m, what, inst->u.tensor.t, it[0], dtype, big_endian, int_of(it[2]) != 0,
                      it[3]);
}

/* _frombuffer(buf, dtype, shape, order): protocol 5's contiguous arrays. */
ckpt_status ckpt__numpy_call_frombuffer(vm *m, ckpt_value *const *args, size_t nargs,
                                        ckpt_value **out)
{
    const char *what = "numpy _frombuffer";
    if (nargs != 4)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s takes 4 arguments, %zu given", what, nargs);
    ckpt_dtype dtype;
    bool big_endian;
    CKPT_RETURN_IF_ERROR(dtype_of(m, what, args[1], &dtype, &big_endian));
    const ckpt_value *order = args[3];
    if (!str_is(order, "C") && !str_is(order, "F"))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: order must be 'C' or 'F'", what);
    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*t), (void **)&t));
    CKPT_RETURN_IF_ERROR(
        make_array(m, what, t, args[2], dtype, big_endian, str_is(order, "F"), args[0]));
    return new_tensor(m, t, out);
}

/* A numpy.str_ ('U': UCS-4 code points) or numpy.bytes_ ('S') scalar as
 * the str or bytes .item() gives: trailing NULs dropped. *done is false
 * when the dtype is neither. */
static ckpt_status text_scalar(vm *m, const ckpt_value *dt, const ckpt_value *b, bool *done,
                               ckpt_value **out)
{
    *done = false;
    const ckpt_value *s = dtype_text(dt);
    if (!s)
        return CKPT_OK;
    const char *p = s->u.s.ptr;
    size_t n = s->u.s.len;
    char order = '|';
    if (n && strchr("<>|=", p[0])) {
        order = p[0];
        p++;
        n--;
    }
    if (n == 0 || (p[0] != 'U' && p[0] != 'S'))
        return CKPT_OK;
    const ckpt_value *st = dt->u.obj.state;
    if (st && st->kind == CKPT_KIND_TUPLE && st->u.seq.len >= 2 && st->u.seq.items[1] &&
        st->u.seq.items[1]->kind == CKPT_KIND_STR && st->u.seq.items[1]->u.s.len == 1)
        order = st->u.seq.items[1]->u.s.ptr[0];
    *done = true;
    if (!b || b->kind != CKPT_KIND_BYTES)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "numpy scalar: the value must be bytes, not %s",
                             kind_desc(b));
    const uint8_t *q = (const uint8_t *)b->u.s.ptr;
    size_t len = b->u.s.len;
    if (p[0] == 'S') {
        while (len && q[len - 1] == 0)
            len--;
        return ckpt__vm_str(m, CKPT_KIND_BYTES, q, len, out);
    }
    if (len % 4 != 0)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "numpy scalar: %zu bytes are not whole UCS-4 characters", len);
    size_t chars = len / 4;
    uint32_t *cp;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (chars ? chars : 1) * sizeof(uint32_t), (void **)&cp));
    for (size_t i = 0; i < chars; i++) {
        const uint8_t *c = q + 4 * i;
        cp[i] = order == '>' ? ((uint32_t)c[0] << 24) | ((uint32_t)c[1] << 16) |
                                   ((uint32_t)c[2] << 8) | c[3]
                             : ((uint32_t)c[3] << 24) | ((uint32_t)c[2] << 16) |
                                   ((uint32_t)c[1] << 8) | c[0];
    }
    while (chars && cp[chars - 1] == 0)
        chars--;
    char *utf8;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, chars * 4 + 1, (void **)&utf8));
    size_t k = 0;
    for (size_t i = 0; i < chars; i++) {
        uint32_t c = cp[i];
        if (c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "numpy scalar: character %zu (U+%X) is not a Unicode scalar", i,
                                 (unsigned)c);
        if (c < 0x80) {
            utf8[k++] = (char)c;
        } else if (c < 0x800) {
            utf8[k++] = (char)(0xc0 | (c >> 6));
            utf8[k++] = (char)(0x80 | (c & 0x3f));
        } else if (c < 0x10000) {
            utf8[k++] = (char)(0xe0 | (c >> 12));
            utf8[k++] = (char)(0x80 | ((c >> 6) & 0x3f));
            utf8[k++] = (char)(0x80 | (c & 0x3f));
        } else {
            utf8[k++] = (char)(0xf0 | (c >> 18));
            utf8[k++] = (char)(0x80 | ((c >> 12) & 0x3f));
            utf8[k++] = (char)(0x80 | ((c >> 6) & 0x3f));
            utf8[k++] = (char)(0x80 | (c & 0x3f));
        }
    }
    utf8[k] = '\0';
    return ckpt__vm_wrap(m, CKPT_KIND_STR, utf8, k, out);
}

/* scalar(dtype, bytes): a number (a str or bytes for numpy's text types). */
ckpt_status ckpt__numpy_call_scalar(vm *m, ckpt_value *const *args, size_t nargs,
                                    ckpt_value **out)
{
    const char *what = "numpy scalar";
    if (nargs != 2)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s takes 2 arguments, %zu given", what, nargs);
    bool done;
    CKPT_RETURN_IF_ERROR(text_scalar(m, args[0], args[1], &done, out));
    if (done)
        return CKPT_OK;
    ckpt_dtype dtype;
    bool big_endian;
    CKPT_RETURN_IF_ERROR(dtype_of(m, what, args[0], &dtype, &big_endian));
    const ckpt_value *b = args[1];
    size_t esz = ckpt_dtype_size(dtype);
    if (!b || b->kind != CKPT_KIND_BYTES || b->u.s.len != esz)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the value must be %zu bytes, not %s", what,
                             esz, kind_desc(b));
    uint8_t raw[16];
    memcpy(raw, b->u.s.ptr, esz);
    if (big_endian)
        ckpt__byteswap(raw, 1, dtype);
    switch (dtype) {
    case CKPT_DTYPE_BOOL:
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_BOOL, out));
        (*out)->u.b = raw[0] != 0;
        return CKPT_OK;
    case CKPT_DTYPE_FLOAT16:
    case CKPT_DTYPE_FLOAT32:
    case CKPT_DTYPE_FLOAT64: {
        double d;
        (void)ckpt_convert_dtype(CKPT_DTYPE_FLOAT64, &d, dtype, raw, 1);
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_FLOAT, out));
        (*out)->u.f = d;
        return CKPT_OK;
    }
    case CKPT_DTYPE_COMPLEX64:
    case CKPT_DTYPE_COMPLEX128: {
        double re, im;
        if (dtype == CKPT_DTYPE_COMPLEX64) {
            float f[2];
            memcpy(f, raw, 8);
            re = f[0];
            im = f[1];
        } else {
            memcpy(&re, raw, 8);
            memcpy(&im, raw + 8, 8);
        }
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_COMPLEX, out));
        (*out)->u.c.re = re;
        (*out)->u.c.im = im;
        return CKPT_OK;
    }
    default: break;
    }
    /* integers: sign- or zero-extended little-endian bytes */
    bool is_signed = dtype == CKPT_DTYPE_INT8 || dtype == CKPT_DTYPE_INT16 ||
                     dtype == CKPT_DTYPE_INT32 || dtype == CKPT_DTYPE_INT64;
    uint64_t u = 0;
    for (size_t i = 0; i < esz; i++)
        u |= (uint64_t)raw[i] << (8 * i);
    if (is_signed && esz < 8 && (raw[esz - 1] & 0x80))
        u |= ~(uint64_t)0 << (8 * esz);
    if (!is_signed && u > (uint64_t)INT64_MAX) {
        uint8_t big[9];
        for (int i = 0; i < 8; i++)
            big[i] = (uint8_t)(u >> (8 * i));
        big[8] = 0;
        return ckpt__vm_str(m, CKPT_KIND_BIGINT, big, sizeof(big), out);
    }
    return ckpt__vm_int(m, (int64_t)u, out);
}
