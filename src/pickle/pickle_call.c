/*
 * pickle_call.c - the weights-only allow-list and what its names mean.
 *
 * GLOBAL and friends resolve (module, name) against a closed table; nothing
 * outside it is ever accepted, whatever the opcode (in the inert mode of
 * scans and permissive reads such a name becomes an inert value whose calls
 * only record their arguments: it is still never called). REDUCE, NEWOBJ,
 * NEWOBJ_EX, INST, OBJ and BUILD then apply those few names by their data
 * meaning: an OrderedDict is filled, a tensor view is described and checked
 * against its storage, bytes are encoded. Wrong arguments are format errors
 * naming the callable and the argument; known but unsupported things
 * (quantized, sparse, nested tensors) are CKPT_ERR_UNSUPPORTED.
 */
#include "pickle_vm.h"

#include <stdlib.h>

/* ======================================================================
 * The allow-list
 * ====================================================================== */

typedef struct global_def {
    const char *module;
    const char *name;
    const char *full;       /* "module.name": the CKPT_KIND_GLOBAL text */
    uint8_t module_len, name_len;
    uint8_t id;             /* enum ckpt__global_id */
    uint8_t dtype;          /* ckpt_dtype for dtypes, else 0 */
} global_def;

#define G(mod, nm, gid) {mod, nm, mod "." nm, sizeof(mod) - 1, sizeof(nm) - 1, gid, 0}
#define D(nm, dt) {"torch", nm, "torch." nm, 5, sizeof(nm) - 1, CKPT__G_UNKNOWN, dt}
#define S(nm, gid) G("torch", nm, gid), G("torch.cuda", nm, gid)

static const global_def GLOBALS[] = {
    G("collections", "OrderedDict", CKPT__G_ORDERED_DICT),
    G("collections", "Counter", CKPT__G_COUNTER),
    G("torch.nn.parameter", "Parameter", CKPT__G_PARAMETER),
    G("torch", "Tensor", CKPT__G_TENSOR),
    G("torch", "Size", CKPT__G_SIZE),
    G("torch", "device", CKPT__G_DEVICE),
    G("torch.serialization", "_get_layout", CKPT__G_GET_LAYOUT),
    G("_codecs", "encode", CKPT__G_CODECS_ENCODE),
    G("builtins", "bytearray", CKPT__G_BYTEARRAY),
    G("builtins", "bytes", CKPT__G_BYTES),
    G("builtins", "set", CKPT__G_SET),
    G("builtins", "frozenset", CKPT__G_FROZENSET),
    G("builtins", "complex", CKPT__G_COMPLEX),
    /* torch.__version__ as saved by training scripts: a str subclass with no
     * state. torch >= 2.6 wants it allowed by hand; it is inert data. */
    G("torch.torch_version", "TorchVersion", CKPT__G_TORCH_VERSION),

    G("torch._utils", "_rebuild_tensor", CKPT__G_REBUILD_TENSOR),
    G("torch._utils", "_rebuild_tensor_v2", CKPT__G_REBUILD_TENSOR_V2),
    G("torch._utils", "_rebuild_tensor_v3", CKPT__G_REBUILD_TENSOR_V3),
    G("torch._utils", "_rebuild_parameter", CKPT__G_REBUILD_PARAMETER),
    G("torch._utils", "_rebuild_parameter_with_state", CKPT__G_REBUILD_PARAMETER_WITH_STATE),
    G("torch._utils", "_rebuild_meta_tensor_no_storage", CKPT__G_REBUILD_META_TENSOR_NO_STORAGE),
    G("torch._utils", "_rebuild_qtensor", CKPT__G_REBUILD_QTENSOR),
    G("torch._utils", "_rebuild_sparse_tensor", CKPT__G_REBUILD_SPARSE_TENSOR),
    G("torch._utils", "_rebuild_sparse_csr_tensor", CKPT__G_REBUILD_SPARSE_CSR_TENSOR),
    G("torch._utils", "_rebuild_wrapper_subclass", CKPT__G_REBUILD_WRAPPER_SUBCLASS),
    G("torch._utils", "_rebuild_device_tensor_from_numpy",
      CKPT__G_REBUILD_DEVICE_TENSOR_FROM_NUMPY),
    G("torch._utils", "_rebuild_device_tensor_from_cpu_tensor",
      CKPT__G_REBUILD_DEVICE_TENSOR_FROM_CPU_TENSOR),
    G("torch._utils", "_rebuild_nested_tensor", CKPT__G_REBUILD_NESTED_TENSOR),
    G("torch._tensor", "_rebuild_from_type_v2", CKPT__G_REBUILD_FROM_TYPE_V2),

    D("float64", CKPT_DTYPE_FLOAT64), D("double", CKPT_DTYPE_FLOAT64),
    D("float32", CKPT_DTYPE_FLOAT32), D("float", CKPT_DTYPE_FLOAT32),
    D("float16", CKPT_DTYPE_FLOAT16), D("half", CKPT_DTYPE_FLOAT16),
    D("bfloat16", CKPT_DTYPE_BFLOAT16),
    D("complex128", CKPT_DTYPE_COMPLEX128), D("cdouble", CKPT_DTYPE_COMPLEX128),
    D("complex64", CKPT_DTYPE_COMPLEX64), D("cfloat", CKPT_DTYPE_COMPLEX64),
    D("complex32", CKPT_DTYPE_COMPLEX32), D("chalf", CKPT_DTYPE_COMPLEX32),
    D("int64", CKPT_DTYPE_INT64), D("long", CKPT_DTYPE_INT64),
    D("int32", CKPT_DTYPE_INT32), D("int", CKPT_DTYPE_INT32),
    D("int16", CKPT_DTYPE_INT16), D("short", CKPT_DTYPE_INT16),
    D("int8", CKPT_DTYPE_INT8),
    D("uint8", CKPT_DTYPE_UINT8), D("uint16", CKPT_DTYPE_UINT16),
    D("uint32", CKPT_DTYPE_UINT32), D("uint64", CKPT_DTYPE_UINT64),
    D("bool", CKPT_DTYPE_BOOL),
    D("float8_e5m2", CKPT_DTYPE_FLOAT8_E5M2), D("float8_e4m3fn", CKPT_DTYPE_FLOAT8_E4M3FN),
    D("float8_e5m2fnuz", CKPT_DTYPE_FLOAT8_E5M2FNUZ), D("float8_e4m3fnuz", CKPT_DTYPE_FLOAT8_E4M3FNUZ),
    D("float8_e8m0fnu", CKPT_DTYPE_FLOAT8_E8M0FNU),
    D("qint8", CKPT_DTYPE_QINT8), D("quint8", CKPT_DTYPE_QUINT8), D("qint32", CKPT_DTYPE_QINT32),
    D("quint4x2", CKPT_DTYPE_QUINT4X2), D("quint2x4", CKPT_DTYPE_QUINT2X4),
    D("bits8", CKPT_DTYPE_BITS8), D("bits16", CKPT_DTYPE_BITS16), D("bits1x8", CKPT_DTYPE_BITS1X8),
    D("bits2x4", CKPT_DTYPE_BITS2X4), D("bits4x2", CKPT_DTYPE_BITS4X2),
    D("float4_e2m1fn_x2", CKPT_DTYPE_FLOAT4_E2M1FN_X2),

    /* the legacy tensor types (torch._tensor_classes) are on torch's list */
    S("DoubleTensor", CKPT__G_TENSOR_TYPE),
    S("FloatTensor", CKPT__G_TENSOR_TYPE),
    S("HalfTensor", CKPT__G_TENSOR_TYPE),
    S("BFloat16Tensor", CKPT__G_TENSOR_TYPE),
    S("LongTensor", CKPT__G_TENSOR_TYPE),
    S("IntTensor", CKPT__G_TENSOR_TYPE),
    S("ShortTensor", CKPT__G_TENSOR_TYPE),
    S("CharTensor", CKPT__G_TENSOR_TYPE),
    S("ByteTensor", CKPT__G_TENSOR_TYPE),
    S("BoolTensor", CKPT__G_TENSOR_TYPE),
    S("DoubleStorage", CKPT__G_DOUBLE_STORAGE),
    S("FloatStorage", CKPT__G_FLOAT_STORAGE),
    S("HalfStorage", CKPT__G_HALF_STORAGE),
    S("BFloat16Storage", CKPT__G_BFLOAT16_STORAGE),
    S("LongStorage", CKPT__G_LONG_STORAGE),
    S("IntStorage", CKPT__G_INT_STORAGE),
    S("ShortStorage", CKPT__G_SHORT_STORAGE),
    S("CharStorage", CKPT__G_CHAR_STORAGE),
    S("ByteStorage", CKPT__G_BYTE_STORAGE),
    S("BoolStorage", CKPT__G_BOOL_STORAGE),
    S("ComplexDoubleStorage", CKPT__G_COMPLEX_DOUBLE_STORAGE),
    S("ComplexFloatStorage", CKPT__G_COMPLEX_FLOAT_STORAGE),
    S("QInt8Storage", CKPT__G_QINT8_STORAGE),
    S("QInt32Storage", CKPT__G_QINT32_STORAGE),
    S("QUInt8Storage", CKPT__G_QUINT8_STORAGE),
    S("QUInt4x2Storage", CKPT__G_QUINT4X2_STORAGE),
    S("QUInt2x4Storage", CKPT__G_QUINT2X4_STORAGE),
    G("torch", "UntypedStorage", CKPT__G_UNTYPED_STORAGE),
    G("torch.storage", "UntypedStorage", CKPT__G_UNTYPED_STORAGE),

    G("torch", "per_tensor_affine", CKPT__G_PER_TENSOR_AFFINE),
    G("torch", "per_channel_affine", CKPT__G_PER_CHANNEL_AFFINE),
    G("torch", "per_tensor_symmetric", CKPT__G_PER_TENSOR_SYMMETRIC),
    G("torch", "per_channel_symmetric", CKPT__G_PER_CHANNEL_SYMMETRIC),
    G("torch", "per_channel_affine_float_qparams", CKPT__G_PER_CHANNEL_AFFINE_FLOAT_QPARAMS),
    G("torch", "strided", CKPT__G_STRIDED),
    G("torch", "sparse_coo", CKPT__G_SPARSE_COO),
    G("torch", "sparse_csr", CKPT__G_SPARSE_CSR),
    G("torch", "sparse_csc", CKPT__G_SPARSE_CSC),
    G("torch", "sparse_bsr", CKPT__G_SPARSE_BSR),
    G("torch", "sparse_bsc", CKPT__G_SPARSE_BSC),
    G("torch", "_mkldnn", CKPT__G_MKLDNN),

    /* numpy: read only with CKPT__PICKLE_NUMPY (pickle_numpy.c) */
    G("numpy.core.multiarray", "_reconstruct", CKPT__G_NUMPY_RECONSTRUCT),
    G("numpy._core.multiarray", "_reconstruct", CKPT__G_NUMPY_RECONSTRUCT),
    G("numpy", "ndarray", CKPT__G_NUMPY_NDARRAY),
    G("numpy", "dtype", CKPT__G_NUMPY_DTYPE),
    G("numpy.core.multiarray", "scalar", CKPT__G_NUMPY_SCALAR),
    G("numpy._core.multiarray", "scalar", CKPT__G_NUMPY_SCALAR),
    G("numpy.core.numeric", "_frombuffer", CKPT__G_NUMPY_FROMBUFFER),
    G("numpy._core.numeric", "_frombuffer", CKPT__G_NUMPY_FROMBUFFER),
};

/* The helpers a TorchScript pickle names (CKPT__PICKLE_TORCHSCRIPT only:
 * torch.load's allow-list has none of them). Each returns its first
 * argument; build_tensor_from_id needs a table the archive does not hold. */
static const global_def JIT_GLOBALS[] = {
    G("torch.jit._pickle", "build_intlist", CKPT__G_JIT_BUILD_INTLIST),
    G("torch.jit._pickle", "build_doublelist", CKPT__G_JIT_BUILD_DOUBLELIST),
    G("torch.jit._pickle", "build_boollist", CKPT__G_JIT_BUILD_BOOLLIST),
    G("torch.jit._pickle", "build_tensorlist", CKPT__G_JIT_BUILD_TENSORLIST),
    G("torch.jit._pickle", "restore_type_tag", CKPT__G_JIT_RESTORE_TYPE_TAG),
    /* the storage of complex32 tensors, which only TorchScript writes */
    S("ComplexHalfStorage", CKPT__G_COMPLEX_HALF_STORAGE),
};

#undef G
#undef D
#undef S

static const global_def *find_in(const global_def *table, size_t count, const char *module,
                                 size_t mlen, const char *name, size_t nlen)
{
    for (size_t i = 0; i < count; i++) {
        const global_def *g = &table[i];
        if (g->module_len == mlen && g->name_len == nlen && memcmp(g->module, module, mlen) == 0 &&
            memcmp(g->name, name, nlen) == 0)
            return g;
    }
    return NULL;
}

static const global_def *find_global(const char *module, size_t mlen, const char *name, size_t nlen)
{
    return find_in(GLOBALS, sizeof(GLOBALS) / sizeof(GLOBALS[0]), module, mlen, name, nlen);
}

/* A TorchScript class: module __torch__ or __torch__.<...>. */
static bool is_torchscript_module(const char *module, size_t mlen)
{
    return (mlen == 9 || (mlen > 10 && module[9] == '.')) && memcmp(module, "__torch__", 9) == 0;
}

static bool has_text_prefix(const char *s, size_t n, const char *p)
{
    size_t pn = strlen(p);
    return n >= pn && memcmp(s, p, pn) == 0;
}

static const global_def *find_global_by_id(uint32_t id)
{
    for (size_t i = 0; i < sizeof(GLOBALS) / sizeof(GLOBALS[0]); i++) {
        if (GLOBALS[i].id == id && GLOBALS[i].dtype == 0)
            return &GLOBALS[i];
    }
    return NULL;
}

static bool is_function_id(uint32_t id)
{
    return id == CKPT__G_GET_LAYOUT || id == CKPT__G_CODECS_ENCODE ||
           (id >= CKPT__G_REBUILD_TENSOR && id <= CKPT__G_REBUILD_FROM_TYPE_V2) ||
           (id >= CKPT__G_JIT_BUILD_INTLIST && id <= CKPT__G_JIT_RESTORE_TYPE_TAG);
}

static bool is_constant_id(uint32_t id)
{
    return id >= CKPT__G_PER_TENSOR_AFFINE && id <= CKPT__G_MKLDNN;
}

/* ======================================================================
 * Globals
 * ====================================================================== */

/* A global outside the table, kept as an inert GLOBAL: its text is
 * "module.name" as written (module mapped like the table's lookup). */
static ckpt_status inert_global(vm *m, const char *module, size_t mlen, const char *name,
                                size_t nlen, ckpt_value **out)
{
    char *text;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, mlen + nlen + 2, (void **)&text));
    memcpy(text, module, mlen);
    text[mlen] = '.';
    memcpy(text + mlen + 1, name, nlen);
    text[mlen + 1 + nlen] = '\0';
    CKPT_RETURN_IF_ERROR(ckpt__vm_wrap(m, CKPT_KIND_GLOBAL, text, mlen + 1 + nlen, out));
    (*out)->global_id = CKPT__G_UNKNOWN;
    return CKPT_OK;
}

ckpt_status ckpt__vm_resolve_global(vm *m, const char *module, size_t mlen, const char *name,
                                           size_t nlen, ckpt_value **out)
{
    const char *written = module;
    size_t written_len = mlen;
    /* Python 2 pickles name the builtins module __builtin__ (the pickler's
     * fix_imports writes it too); it is the same module. */
    if (mlen == 11 && memcmp(module, "__builtin__", 11) == 0) {
        module = "builtins";
        mlen = 8;
    }
    const global_def *g = find_global(module, mlen, name, nlen);
    bool torchscript = (m->ctx->flags & CKPT__PICKLE_TORCHSCRIPT) != 0;
    if (!g && torchscript)
        g = find_in(JIT_GLOBALS, sizeof(JIT_GLOBALS) / sizeof(JIT_GLOBALS[0]), module, mlen, name,
                    nlen);
    if (g && g->id >= CKPT__G_NUMPY_RECONSTRUCT && g->id <= CKPT__G_NUMPY_FROMBUFFER &&
        !(m->ctx->flags & CKPT__PICKLE_NUMPY))
        g = NULL;
    ckpt_value *v;
    if (!g && torchscript && is_torchscript_module(module, mlen)) {
        char mb[128], nb[128];
        /* torchbind objects are made by their C++ __setstate__ */
        if (has_text_prefix(module, mlen, "__torch__.torch.classes"))
            return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                                 "class '%s.%s' is a torchbind class: torch.jit.load builds it "
                                 "by running its __setstate__, so it is not data",
                                 ckpt__quote(mb, sizeof(mb), module, mlen, true),
                                 ckpt__quote(nb, sizeof(nb), name, nlen, true));
        CKPT_RETURN_IF_ERROR(inert_global(m, module, mlen, name, nlen, &v));
    } else if (!g) {
        if (!(m->ctx->flags & CKPT__PICKLE_INERT)) {
            char mb[128], nb[128];
            /* sys, os, posix and nt are never in the table: they are refused
             * like any other module, whatever the name. */
            return ckpt__vm_fail(m, CKPT_ERR_UNSAFE,
                                 "global '%s.%s' is not allowed (not in the weights-only "
                                 "allow-list)",
                                 ckpt__quote(mb, sizeof(mb), module, mlen, true),
                                 ckpt__quote(nb, sizeof(nb), name, nlen, true));
        }
        CKPT_RETURN_IF_ERROR(inert_global(m, module, mlen, name, nlen, &v));
    } else if (g->dtype != CKPT_DTYPE_INVALID) {
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_DTYPE, &v));
        v->u.dtype = (ckpt_dtype)g->dtype;
    } else {
        CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_GLOBAL, &v));
        v->global_id = g->id;
        v->u.s.ptr = g->full; /* static text: no copy needed */
        v->u.s.len = strlen(g->full);
    }
    if (m->ctx->on_global)
        CKPT_RETURN_IF_ERROR(m->ctx->on_global(m->ctx->user, written, written_len, name, nlen, v,
                                               m->op_pos));
    *out = v;
    return CKPT_OK;
}

/* ======================================================================
 * Calls: REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ
 * ====================================================================== */

#define MAX_REBUILD_NESTING 4   /* _rebuild_from_type_v2 applying itself */

typedef struct call {
    const ckpt_value *fn;     /* a CKPT_KIND_GLOBAL */
    const char *name;         /* its "module.name" */
    ckpt_value *const *args;
    size_t nargs;
    bool is_new;              /* cls.__new__(cls, *args) rather than cls(*args) */
    unsigned depth;           /* _rebuild_from_type_v2 nesting */
} call;

static ckpt_status eval_call(vm *m, const call *c, ckpt_value **out);

static ckpt_status check_nargs(vm *m, const call *c, size_t lo, size_t hi)
{
    if (c->nargs >= lo && c->nargs <= hi)
        return CKPT_OK;
    if (lo == hi)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s takes %zu argument%s, %zu given", c->name, lo,
                             lo == 1 ? "" : "s", c->nargs);
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s takes %zu to %zu arguments, %zu given", c->name,
                         lo, hi, c->nargs);
}

static ckpt_status bad_arg(vm *m, const call *c, size_t i, const char *what, const char *expected)
{
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: argument %zu (%s) must be %s, not %s", c->name,
                         i + 1, what, expected, kind_desc(c->args[i]));
}

static ckpt_status arg_bool(vm *m, const call *c, size_t i, const char *what, bool *out)
{
    if (!is_intlike(c->args[i]))
        return bad_arg(m, c, i, what, "a bool");
    *out = int_of(c->args[i]) != 0;
    return CKPT_OK;
}

/* size/stride: a tuple, torch.Size or list of ints. */
static ckpt_status arg_dims(vm *m, const call *c, size_t i, const char *what, uint32_t *ndim,
                            int64_t **dims)
{
    const ckpt_value *v = c->args[i];
    if (!v || (v->kind != CKPT_KIND_TUPLE && v->kind != CKPT_KIND_SIZE && v->kind != CKPT_KIND_LIST))
        return bad_arg(m, c, i, what, "a tuple of ints");
    if (v->u.seq.len > m->limits->max_ndim)
        return ckpt__vm_fail(m, CKPT_ERR_LIMIT, "%s: %s has %zu dimensions (max_ndim is %llu)",
                             c->name, what, v->u.seq.len, (unsigned long long)m->limits->max_ndim);
    size_t n = v->u.seq.len;
    int64_t *d;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (n ? n : 1) * sizeof(int64_t), (void **)&d));
    for (size_t k = 0; k < n; k++) {
        if (!is_intlike(v->u.seq.items[k]))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: %s item %zu must be an int, not %s",
                                 c->name, what, k, kind_desc(v->u.seq.items[k]));
        d[k] = int_of(v->u.seq.items[k]);
    }
    *ndim = (uint32_t)n;
    *dims = d;
    return CKPT_OK;
}

static ckpt_status new_tensor_value(vm *m, ckpt_tensor *t, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_TENSOR, out));
    (*out)->u.tensor.t = t;
    return CKPT_OK;
}

/* _rebuild_tensor(storage, offset, size, stride)
 * _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
 * _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, metadata])
 * _rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad) */
static ckpt_status call_rebuild_tensor(vm *m, const call *c, ckpt_value **out)
{
    uint32_t id = c->fn->global_id;
    bool meta = id == CKPT__G_REBUILD_META_TENSOR_NO_STORAGE;
    if (id == CKPT__G_REBUILD_TENSOR)
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 4, 4));
    else if (id == CKPT__G_REBUILD_TENSOR_V2)
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 6, 7));
    else if (id == CKPT__G_REBUILD_TENSOR_V3)
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 7, 8));
    else
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 4, 4));

    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*t), (void **)&t));
    uint32_t ndim, sdim;
    if (meta) {
        if (!c->args[0] || c->args[0]->kind != CKPT_KIND_DTYPE)
            return bad_arg(m, c, 0, "dtype", "a dtype");
        t->dtype = c->args[0]->u.dtype;
        CKPT_RETURN_IF_ERROR(arg_dims(m, c, 1, "size", &ndim, &t->shape));
        CKPT_RETURN_IF_ERROR(arg_dims(m, c, 2, "stride", &sdim, &t->stride));
        CKPT_RETURN_IF_ERROR(arg_bool(m, c, 3, "requires_grad", &t->requires_grad));
    } else {
        const ckpt_value *sv = c->args[0];
        if (!sv || sv->kind != CKPT__KIND_STORAGE || !sv->u.storage)
            return bad_arg(m, c, 0, "storage", "a storage");
        t->storage = sv->u.storage;
        t->dtype = t->storage->dtype;
        if (!is_intlike(c->args[1]))
            return bad_arg(m, c, 1, "storage_offset", "an int");
        t->storage_offset = int_of(c->args[1]);
        CKPT_RETURN_IF_ERROR(arg_dims(m, c, 2, "size", &ndim, &t->shape));
        CKPT_RETURN_IF_ERROR(arg_dims(m, c, 3, "stride", &sdim, &t->stride));
        if (id != CKPT__G_REBUILD_TENSOR)
            CKPT_RETURN_IF_ERROR(arg_bool(m, c, 4, "requires_grad", &t->requires_grad));
        /* backward hooks (5) are dropped, as torch does since 1.x: functions
         * could not be in them anyway. Metadata (conj/neg bits) too. */
        if (id == CKPT__G_REBUILD_TENSOR_V3) {
            if (!c->args[6] || c->args[6]->kind != CKPT_KIND_DTYPE)
                return bad_arg(m, c, 6, "dtype", "a dtype");
            t->dtype = c->args[6]->u.dtype;
        }
    }
    if (ndim != sdim)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: size has %u dimensions but stride has %u",
                             c->name, (unsigned)ndim, (unsigned)sdim);
    t->ndim = ndim;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, m->limits, m->ctx->record, m->op_pos, m->err));
    return new_tensor_value(m, t, out);
}

/* A new tensor value: a copy of src marked as a Parameter. */
static ckpt_status make_parameter(vm *m, const ckpt_value *src, bool requires_grad,
                                  ckpt_value *state, ckpt_value **out)
{
    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*t), (void **)&t));
    *t = *src->u.tensor.t;
    t->is_parameter = true;
    t->requires_grad = requires_grad;
    CKPT_RETURN_IF_ERROR(new_tensor_value(m, t, out));
    (*out)->u.tensor.state = state ? state : src->u.tensor.state;
    return CKPT_OK;
}

/* _rebuild_parameter(data, requires_grad, hooks)
 * _rebuild_parameter_with_state(data, requires_grad, hooks, state)
 * Parameter(data[, requires_grad=True]) */
static ckpt_status call_parameter(vm *m, const call *c, ckpt_value **out)
{
    uint32_t id = c->fn->global_id;
    bool requires_grad = true;
    ckpt_value *state = NULL;
    if (id == CKPT__G_PARAMETER) {
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 2));
        if (c->nargs == 2)
            CKPT_RETURN_IF_ERROR(arg_bool(m, c, 1, "requires_grad", &requires_grad));
    } else {
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, id == CKPT__G_REBUILD_PARAMETER ? 3 : 4,
                                         id == CKPT__G_REBUILD_PARAMETER ? 3 : 4));
        CKPT_RETURN_IF_ERROR(arg_bool(m, c, 1, "requires_grad", &requires_grad));
        if (id == CKPT__G_REBUILD_PARAMETER_WITH_STATE && c->args[3]->kind != CKPT_KIND_NONE)
            state = c->args[3];
    }
    if (!c->args[0] || c->args[0]->kind != CKPT_KIND_TENSOR)
        return bad_arg(m, c, 0, "data", "a tensor");
    return make_parameter(m, c->args[0], requires_grad, state, out);
}

/* _rebuild_from_type_v2(func, new_type, args, state): func(*args), then
 * the result takes new_type and state. */
static ckpt_status call_from_type(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 4, 4));
    const ckpt_value *func = c->args[0], *type = c->args[1], *args = c->args[2];
    ckpt_value *state = c->args[3];
    if (!func || func->kind != CKPT_KIND_GLOBAL)
        return bad_arg(m, c, 0, "func", "an allowed function");
    /* a tensor subclass outside the allow-list (INERT) reads as the tensor
     * it wraps, its state kept */
    bool inert_subclass = type && type->kind == CKPT_KIND_GLOBAL &&
                          type->global_id == CKPT__G_UNKNOWN &&
                          (m->ctx->flags & CKPT__PICKLE_INERT);
    if (!type || type->kind != CKPT_KIND_GLOBAL ||
        (type->global_id != CKPT__G_TENSOR && type->global_id != CKPT__G_PARAMETER &&
         !inert_subclass))
        return bad_arg(m, c, 1, "new_type", "torch.Tensor or torch.nn.parameter.Parameter");
    if (!args || args->kind != CKPT_KIND_TUPLE)
        return bad_arg(m, c, 2, "args", "a tuple");
    if (c->depth >= MAX_REBUILD_NESTING)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s is nested more than %d deep", c->name,
                             MAX_REBUILD_NESTING);
    call inner = {
        .fn = func, .name = func->u.s.ptr, .args = args->u.seq.items, .nargs = args->u.seq.len,
        .is_new = false, .depth = c->depth + 1,
    };
    ckpt_value *r;
    CKPT_RETURN_IF_ERROR(eval_call(m, &inner, &r));
    if (r->kind != CKPT_KIND_TENSOR)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: %s returned a %s, not a tensor", c->name,
                             inner.name, kind_desc(r));
    if (type->global_id == CKPT__G_PARAMETER && !r->u.tensor.t->is_parameter)
        CKPT_RETURN_IF_ERROR(make_parameter(m, r, r->u.tensor.t->requires_grad, NULL, &r));
    /* r is always a value made by this call: setting its state is safe */
    if (state && state->kind != CKPT_KIND_NONE)
        r->u.tensor.state = state;
    *out = r;
    return CKPT_OK;
}

/* _rebuild_qtensor(storage, offset, size, stride, quantizer_params,
 * requires_grad, hooks): the integer tensor of a quantized storage type;
 * quantizer_params (qscheme, scale, zero_point) or (qscheme, scales,
 * zero_points, axis) become the tensor's state. */
static ckpt_status call_rebuild_qtensor(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 7, 7));
    const ckpt_value *q = c->args[4];
    if (!q || q->kind != CKPT_KIND_TUPLE || q->u.seq.len < 3 || !q->u.seq.items[0] ||
        q->u.seq.items[0]->kind != CKPT_KIND_GLOBAL || !is_constant_id(q->u.seq.items[0]->global_id) ||
        q->u.seq.items[0]->global_id > CKPT__G_PER_CHANNEL_AFFINE_FLOAT_QPARAMS)
        return bad_arg(m, c, 4, "quantizer_params", "a (qscheme, ...) tuple");
    const ckpt_value *sv = c->args[0];
    if (!sv || sv->kind != CKPT__KIND_STORAGE || !sv->u.storage)
        return bad_arg(m, c, 0, "storage", "a storage");
    ckpt_dtype d = sv->u.storage->dtype;
    if (d != CKPT_DTYPE_QINT8 && d != CKPT_DTYPE_QUINT8 && d != CKPT_DTYPE_QINT32 && d != CKPT_DTYPE_QUINT4X2 &&
        d != CKPT_DTYPE_QUINT2X4)
        return bad_arg(m, c, 0, "storage", "a quantized storage");
    /* the tensor part is _rebuild_tensor_v2's */
    ckpt_value *args6[6] = {c->args[0], c->args[1], c->args[2], c->args[3], c->args[5], c->args[6]};
    call v2 = *c;
    v2.args = args6;
    v2.nargs = 6;
    static const ckpt_value v2_fn = {.kind = CKPT_KIND_GLOBAL, .global_id = CKPT__G_REBUILD_TENSOR_V2};
    v2.fn = &v2_fn;
    CKPT_RETURN_IF_ERROR(call_rebuild_tensor(m, &v2, out));
    (*out)->u.tensor.state = c->args[4];
    return CKPT_OK;
}

/* _rebuild_sparse_tensor(layout, data), _rebuild_sparse_csr_tensor(layout, data):
 * data is (indices, values, size[, is_coalesced]) for sparse_coo and
 * (compressed_indices, plain_indices, values, size) for the compressed
 * layouts. The parts are tensors already built from storages. */
static ckpt_status call_rebuild_sparse(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 2, 2));
    const ckpt_value *layout = c->args[0], *data = c->args[1];
    if (layout->kind != CKPT_KIND_GLOBAL)
        return bad_arg(m, c, 0, "layout", "a torch layout");
    uint8_t lay;
    switch (layout->global_id) {
    case CKPT__G_SPARSE_COO: lay = CKPT_LAYOUT_SPARSE_COO; break;
    case CKPT__G_SPARSE_CSR: lay = CKPT_LAYOUT_SPARSE_CSR; break;
    case CKPT__G_SPARSE_CSC: lay = CKPT_LAYOUT_SPARSE_CSC; break;
    case CKPT__G_SPARSE_BSR: lay = CKPT_LAYOUT_SPARSE_BSR; break;
    case CKPT__G_SPARSE_BSC: lay = CKPT_LAYOUT_SPARSE_BSC; break;
    default: return bad_arg(m, c, 0, "layout", "a sparse layout");
    }
    size_t nparts = lay == CKPT_LAYOUT_SPARSE_COO ? 2 : 3;
    if (data->kind != CKPT_KIND_TUPLE || data->u.seq.len < nparts + 1 ||
        data->u.seq.len > nparts + (lay == CKPT_LAYOUT_SPARSE_COO ? 2 : 1))
        return bad_arg(m, c, 1, "data", lay == CKPT_LAYOUT_SPARSE_COO
                                            ? "(indices, values, size[, is_coalesced])"
                                            : "(compressed_indices, plain_indices, values, size)");
    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, sizeof(*t), (void **)&t));
    for (size_t i = 0; i < nparts; i++) {
        const ckpt_value *p = data->u.seq.items[i];
        if (!p || p->kind != CKPT_KIND_TENSOR)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: part %zu of the data is a %s, not a tensor",
                                 c->name, i, kind_desc(p));
        t->parts[i] = p->u.tensor.t;
    }
    call dims = *c;
    dims.args = data->u.seq.items;
    dims.nargs = data->u.seq.len;
    uint32_t ndim;
    CKPT_RETURN_IF_ERROR(arg_dims(m, &dims, nparts, "size", &ndim, &t->shape));
    int64_t *stride;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, (ndim ? ndim : 1) * sizeof(int64_t), (void **)&stride));
    int64_t acc = 1;
    for (uint32_t d = ndim; d-- > 0;) {
        stride[d] = acc;
        if (t->shape[d] > 0 && acc <= INT64_MAX / t->shape[d])
            acc *= t->shape[d];
    }
    t->ndim = ndim;
    t->stride = stride;
    t->layout = lay;
    t->dtype = t->parts[nparts - 1]->dtype;
    CKPT_RETURN_IF_ERROR(ckpt__sparse_validate(t, m->ctx->record, m->op_pos, m->err));
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, m->limits, m->ctx->record, m->op_pos, m->err));
    return new_tensor_value(m, t, out);
}

/* TorchVersion('1.13.0'): the text. */
static ckpt_status call_torch_version(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 1));
    if (c->args[0]->kind != CKPT_KIND_STR)
        return bad_arg(m, c, 0, "version", "a str");
    *out = c->args[0];
    return CKPT_OK;
}

/* OrderedDict(pairs or mapping), Counter(mapping or iterable). */
static ckpt_status call_dict(vm *m, const call *c, ckpt_value **out)
{
    bool counter = c->fn->global_id == CKPT__G_COUNTER;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, counter ? CKPT_KIND_DICT : CKPT_KIND_ORDERED_DICT, &d));
    *out = d;
    if (c->is_new) /* dict.__new__ ignores its arguments */
        return CKPT_OK;
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    if (c->nargs == 0)
        return CKPT_OK;
    const ckpt_value *src = c->args[0];
    if (is_dict(src)) {
        for (size_t i = 0; i < src->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, src->u.dict.keys[i], src->u.dict.vals[i]));
        return CKPT_OK;
    }
    if (!src || (src->kind != CKPT_KIND_LIST && src->kind != CKPT_KIND_TUPLE))
        return bad_arg(m, c, 0, "items",
                       counter ? "a dict or a list" : "a dict or a list of pairs");
    for (size_t i = 0; i < src->u.seq.len; i++) {
        ckpt_value *item = src->u.seq.items[i];
        if (counter) {
            ckpt_value *old = ckpt__dict_lookup(d, item), *n;
            CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, ckpt__key_cost(item)));
            CKPT_RETURN_IF_ERROR(ckpt__vm_int(m, old && old->kind == CKPT_KIND_INT ? old->u.i + 1 : 1,
                                              &n));
            CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, item, n));
            continue;
        }
        if (!item || (item->kind != CKPT_KIND_LIST && item->kind != CKPT_KIND_TUPLE) || item->u.seq.len != 2)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "%s: item %zu is a %s, not a (key, value) pair",
                                 c->name, i, kind_desc(item));
        CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, d, item->u.seq.items[0], item->u.seq.items[1]));
    }
    return CKPT_OK;
}

static bool is_latin1_name(const ckpt_value *v)
{
    static const char *const names[] = {"latin1", "latin-1", "latin_1", "iso-8859-1",
                                        "iso8859-1", "iso_8859_1", "l1"};
    if (!v || v->kind != CKPT_KIND_STR)
        return false;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (ascii_ieq(v->u.s.ptr, v->u.s.len, names[i]))
            return true;
    }
    return false;
}

/* str.encode('latin-1'): every code point must be below 256. */
static ckpt_status encode_latin1(vm *m, const call *c, const ckpt_value *s, ckpt_value **out)
{
    const uint8_t *p = (const uint8_t *)s->u.s.ptr;
    size_t n = s->u.s.len;
    CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, n));
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        if (!get_utf8(p, n, &i, &cp))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: the text is not valid UTF-8", c->name);
        if (cp > 0xff)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: U+%04X cannot be encoded in latin-1",
                                 c->name, (unsigned)cp);
        buf[o++] = (uint8_t)cp;
    }
    buf[o] = 0;
    return ckpt__vm_wrap(m, CKPT_KIND_BYTES, (char *)buf, o, out);
}

/* _codecs.encode(str, 'latin1'[, 'strict']) */
static ckpt_status call_codecs_encode(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 2, 3));
    if (c->args[0]->kind != CKPT_KIND_STR)
        return bad_arg(m, c, 0, "obj", "a str");
    if (!is_latin1_name(c->args[1])) {
        char nb[64];
        if (c->args[1]->kind != CKPT_KIND_STR)
            return bad_arg(m, c, 1, "encoding", "a str");
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                             "%s: encoding '%s' is not supported (only latin-1)",
                             c->name, ckpt__quote(nb, sizeof(nb), c->args[1]->u.s.ptr,
                                                  c->args[1]->u.s.len, true));
    }
    if (c->nargs == 3 && !str_is(c->args[2], "strict"))
        return bad_arg(m, c, 2, "errors", "'strict'");
    return encode_latin1(m, c, c->args[0], out);
}

/* bytes()/bytearray(): (), (bytes), (list of ints), (str, 'latin-1'). */
static ckpt_status call_bytes(vm *m, const call *c, ckpt_value **out)
{
    if (c->is_new && c->fn->global_id == CKPT__G_BYTEARRAY) /* filled by __init__ */
        return ckpt__vm_str(m, CKPT_KIND_BYTES, "", 0, out);
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 3));
    if (c->nargs == 0)
        return ckpt__vm_str(m, CKPT_KIND_BYTES, "", 0, out);
    const ckpt_value *src = c->args[0];
    if (c->nargs >= 2) {
        if (src->kind != CKPT_KIND_STR)
            return bad_arg(m, c, 0, "source", "a str when an encoding is given");
        call enc = *c;
        enc.nargs = 2;
        if (c->nargs == 3 && !str_is(c->args[2], "strict"))
            return bad_arg(m, c, 2, "errors", "'strict'");
        CKPT_RETURN_IF_ERROR(call_codecs_encode(m, &enc, out));
        return CKPT_OK;
    }
    if (src->kind == CKPT_KIND_BYTES) {
        CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, src->u.s.len));
        return ckpt__vm_str(m, CKPT_KIND_BYTES, src->u.s.ptr, src->u.s.len, out);
    }
    if (src->kind == CKPT_KIND_LIST || src->kind == CKPT_KIND_TUPLE) {
        size_t n = src->u.seq.len;
        CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, n));
        uint8_t *buf;
        CKPT_RETURN_IF_ERROR(ckpt__vm_alloc(m, n + 1, (void **)&buf));
        for (size_t i = 0; i < n; i++) {
            const ckpt_value *x = src->u.seq.items[i];
            if (!is_intlike(x) || int_of(x) < 0 || int_of(x) > 255)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                     "%s: item %zu must be an int in range(256)",
                                     c->name, i);
            buf[i] = (uint8_t)int_of(x);
        }
        buf[n] = 0;
        return ckpt__vm_wrap(m, CKPT_KIND_BYTES, (char *)buf, n, out);
    }
    return bad_arg(m, c, 0, "source", "bytes or a list of ints");
}

/* set(iterable), frozenset(iterable). Items are kept as given: pickles of
 * sets never repeat an item. A frozenset is marked: Python shows it as
 * frozenset({...}) and it can be a dict key. */
static ckpt_status call_set(vm *m, const call *c, ckpt_value **out)
{
    bool frozen = c->fn->global_id == CKPT__G_FROZENSET;
    if (c->is_new && !frozen) /* filled by __init__ */
        return ckpt__vm_seq(m, CKPT_KIND_SET, NULL, 0, out);
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    const ckpt_value *src = c->nargs ? c->args[0] : NULL;
    if (c->nargs &&
        (!src || (src->kind != CKPT_KIND_LIST && src->kind != CKPT_KIND_TUPLE && src->kind != CKPT_KIND_SET)))
        return bad_arg(m, c, 0, "iterable", "a list, tuple or set");
    if (src)
        CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, src->u.seq.len));
    CKPT_RETURN_IF_ERROR(ckpt__vm_seq(m, CKPT_KIND_SET, src ? src->u.seq.items : NULL,
                                      src ? src->u.seq.len : 0, out));
    if (frozen)
        (*out)->flags |= CKPT__VF_FROZEN;
    return CKPT_OK;
}

static bool as_complex(const ckpt_value *v, double *re, double *im)
{
    if (!v)
        return false;
    switch (v->kind) {
    case CKPT_KIND_BOOL:
    case CKPT_KIND_INT: *re = (double)int_of(v); *im = 0.0; return true;
    case CKPT_KIND_FLOAT: *re = v->u.f; *im = 0.0; return true;
    case CKPT_KIND_COMPLEX: *re = v->u.c.re; *im = v->u.c.im; return true;
    default: return false;
    }
}

/* complex([real[, imag]]) */
static ckpt_status call_complex(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 2));
    double re = 0.0, im = 0.0, re2 = 0.0, im2 = 0.0;
    if (c->nargs >= 1 && !as_complex(c->args[0], &re, &im))
        return bad_arg(m, c, 0, "real", "a number");
    if (c->nargs == 2 && !as_complex(c->args[1], &re2, &im2))
        return bad_arg(m, c, 1, "imag", "a number");
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_COMPLEX, out));
    /* complex(a, b) is a + b*1j, also when a and b are complex; as in
     * CPython, parts that are not complex are taken as they are, so the
     * sign of a zero survives (complex(1.0, -0.0) is (1-0j)) */
    bool a_complex = c->nargs >= 1 && c->args[0]->kind == CKPT_KIND_COMPLEX;
    bool b_complex = c->nargs == 2 && c->args[1]->kind == CKPT_KIND_COMPLEX;
    (*out)->u.c.re = b_complex ? re - im2 : re;
    (*out)->u.c.im = a_complex && c->nargs == 2 ? im + re2 : (c->nargs == 2 ? re2 : im);
    return CKPT_OK;
}

/* torch.Size([ints]) */
static ckpt_status call_size(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    if (c->nargs == 0)
        return ckpt__vm_seq(m, CKPT_KIND_SIZE, NULL, 0, out);
    const ckpt_value *src = c->args[0];
    if (!src || (src->kind != CKPT_KIND_TUPLE && src->kind != CKPT_KIND_LIST && src->kind != CKPT_KIND_SIZE))
        return bad_arg(m, c, 0, "sizes", "a tuple of ints");
    CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, src->u.seq.len));
    CKPT_RETURN_IF_ERROR(ckpt__vm_seq(m, CKPT_KIND_SIZE, src->u.seq.items, src->u.seq.len, out));
    ckpt_value *v = *out;
    for (size_t i = 0; i < v->u.seq.len; i++) {
        ckpt_value *x = v->u.seq.items[i];
        if (!is_intlike(x))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: item %zu must be an int, not %s", c->name,
                                 i, kind_desc(x));
        if (x->kind == CKPT_KIND_BOOL) /* a Size holds ints */
            CKPT_RETURN_IF_ERROR(ckpt__vm_int(m, int_of(x), &v->u.seq.items[i]));
    }
    return CKPT_OK;
}

static bool device_type_ok(const char *s, size_t n)
{
    if (n == 0 || n > 32)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
                  (i > 0 && ch >= '0' && ch <= '9');
        if (!ok)
            return false;
    }
    return true;
}

/* torch.device('cuda:0'), torch.device('cuda', 0), torch.device('cpu') */
static ckpt_status call_device(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 2));
    const ckpt_value *type = c->args[0];
    if (type->kind != CKPT_KIND_STR)
        return bad_arg(m, c, 0, "type", "a str");
    const char *s = type->u.s.ptr;
    size_t n = type->u.s.len;
    const char *colon = memchr(s, ':', n);
    size_t tlen = colon ? (size_t)(colon - s) : n;
    int64_t index = -1;
    if (!device_type_ok(s, tlen))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: invalid device string", c->name);
    if (colon) {
        uint64_t idx;
        size_t dn = n - tlen - 1;
        if (c->nargs == 2)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "%s: the type has an index and an index is passed too",
                                 c->name);
        if (dn == 0 || dn > 9 || !parse_index(colon + 1, dn, &idx) || colon[1] == '+' ||
            is_space(colon[1]) || is_space(s[n - 1]))
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: invalid device string", c->name);
        index = (int64_t)idx;
    }
    if (c->nargs == 2 && c->args[1]->kind != CKPT_KIND_NONE) {
        if (c->args[1]->kind != CKPT_KIND_INT || c->args[1]->u.i < 0 || c->args[1]->u.i > INT32_MAX)
            return bad_arg(m, c, 1, "index", "a non-negative int");
        index = c->args[1]->u.i;
    }
    char buf[64];
    int len = index >= 0 ? snprintf(buf, sizeof(buf), "%.*s:%lld", (int)tlen, s, (long long)index)
                         : snprintf(buf, sizeof(buf), "%.*s", (int)tlen, s);
    return ckpt__vm_str(m, CKPT_KIND_DEVICE, buf, (size_t)len, out);
}

/* torch.serialization._get_layout('torch.strided') */
static ckpt_status call_get_layout(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 1));
    const ckpt_value *name = c->args[0];
    if (name->kind != CKPT_KIND_STR)
        return bad_arg(m, c, 0, "name", "a str");
    for (uint32_t id = CKPT__G_STRIDED; id <= CKPT__G_MKLDNN; id++) {
        const global_def *g = find_global_by_id(id);
        if (g && str_is(name, g->full)) {
            CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_GLOBAL, out));
            (*out)->global_id = id;
            (*out)->u.s.ptr = g->full;
            (*out)->u.s.len = strlen(g->full);
            return CKPT_OK;
        }
    }
    char nb[64];
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: unknown layout '%s'", c->name,
                         ckpt__quote(nb, sizeof(nb), name->u.s.ptr, name->u.s.len, true));
}

/* torch.jit._pickle.build_intlist(list) and its kin: the list itself, its
 * items checked; restore_type_tag(value, type_text): the value. */
static ckpt_status call_jit_helper(vm *m, const call *c, ckpt_value **out)
{
    uint32_t id = c->fn->global_id;
    if (id == CKPT__G_JIT_RESTORE_TYPE_TAG) {
        CKPT_RETURN_IF_ERROR(check_nargs(m, c, 2, 2));
        if (c->args[1]->kind != CKPT_KIND_STR)
            return bad_arg(m, c, 1, "type", "a str");
        *out = c->args[0];
        return CKPT_OK;
    }
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 1));
    ckpt_value *list = c->args[0];
    if (list->kind != CKPT_KIND_LIST)
        return bad_arg(m, c, 0, "items", "a list");
    int want = id == CKPT__G_JIT_BUILD_INTLIST      ? CKPT_KIND_INT
               : id == CKPT__G_JIT_BUILD_DOUBLELIST ? CKPT_KIND_FLOAT
               : id == CKPT__G_JIT_BUILD_BOOLLIST   ? CKPT_KIND_BOOL
                                                    : CKPT_KIND_TENSOR;
    CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, list->u.seq.len));
    for (size_t i = 0; i < list->u.seq.len; i++) {
        const ckpt_value *x = list->u.seq.items[i];
        if (!x || x->kind != want)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: item %zu must be a %s, not %s",
                                 c->name, i, ckpt_kind_name((ckpt_kind)want), kind_desc(x));
    }
    *out = list;
    return CKPT_OK;
}

static ckpt_status eval_call(vm *m, const call *c, ckpt_value **out)
{
    uint32_t id = c->fn->global_id;
    if (is_constant_id(id))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s is not callable", c->name);
    if (c->is_new && is_function_id(id))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s is a function, not a class", c->name);
    for (size_t i = 0; i < c->nargs; i++) {
        if (!c->args[i])
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s: argument %zu is missing", c->name, i + 1);
    }
    switch (id) {
    case CKPT__G_ORDERED_DICT:
    case CKPT__G_COUNTER: return call_dict(m, c, out);
    case CKPT__G_PARAMETER:
    case CKPT__G_REBUILD_PARAMETER:
    case CKPT__G_REBUILD_PARAMETER_WITH_STATE: return call_parameter(m, c, out);
    case CKPT__G_SIZE: return call_size(m, c, out);
    case CKPT__G_DEVICE: return call_device(m, c, out);
    case CKPT__G_GET_LAYOUT: return call_get_layout(m, c, out);
    case CKPT__G_CODECS_ENCODE: return call_codecs_encode(m, c, out);
    case CKPT__G_BYTEARRAY:
    case CKPT__G_BYTES: return call_bytes(m, c, out);
    case CKPT__G_SET:
    case CKPT__G_FROZENSET: return call_set(m, c, out);
    case CKPT__G_COMPLEX: return call_complex(m, c, out);
    case CKPT__G_REBUILD_TENSOR:
    case CKPT__G_REBUILD_TENSOR_V2:
    case CKPT__G_REBUILD_TENSOR_V3:
    case CKPT__G_REBUILD_META_TENSOR_NO_STORAGE: return call_rebuild_tensor(m, c, out);
    case CKPT__G_REBUILD_FROM_TYPE_V2: return call_from_type(m, c, out);
    case CKPT__G_REBUILD_QTENSOR: return call_rebuild_qtensor(m, c, out);
    case CKPT__G_TORCH_VERSION: return call_torch_version(m, c, out);
    case CKPT__G_REBUILD_SPARSE_TENSOR:
    case CKPT__G_REBUILD_SPARSE_CSR_TENSOR: return call_rebuild_sparse(m, c, out);
    case CKPT__G_REBUILD_WRAPPER_SUBCLASS:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                             "wrapper-subclass tensors are not supported (%s)",
                             c->name);
    case CKPT__G_REBUILD_DEVICE_TENSOR_FROM_NUMPY:
    case CKPT__G_REBUILD_DEVICE_TENSOR_FROM_CPU_TENSOR:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "device tensors are not supported (%s)",
                             c->name);
    case CKPT__G_REBUILD_NESTED_TENSOR:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "nested tensors are not supported (%s)",
                             c->name);
    case CKPT__G_JIT_BUILD_INTLIST:
    case CKPT__G_JIT_BUILD_DOUBLELIST:
    case CKPT__G_JIT_BUILD_BOOLLIST:
    case CKPT__G_JIT_BUILD_TENSORLIST:
    case CKPT__G_JIT_RESTORE_TYPE_TAG: return call_jit_helper(m, c, out);
    case CKPT__G_NUMPY_RECONSTRUCT: return ckpt__numpy_call_reconstruct(m, c->args, c->nargs, out);
    case CKPT__G_NUMPY_DTYPE: return ckpt__numpy_call_dtype(m, c->fn, c->args, c->nargs, out);
    case CKPT__G_NUMPY_SCALAR: return ckpt__numpy_call_scalar(m, c->args, c->nargs, out);
    case CKPT__G_NUMPY_FROMBUFFER: return ckpt__numpy_call_frombuffer(m, c->args, c->nargs, out);
    case CKPT__G_TENSOR:
    case CKPT__G_TENSOR_TYPE:
    case CKPT__G_NUMPY_NDARRAY:
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "constructing %s directly is not supported",
                             c->name);
    default:
        if (id >= CKPT__G_STORAGE_FIRST_ && id <= CKPT__G_STORAGE_LAST_)
            return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                                 "constructing %s directly is not supported",
                                 c->name);
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "%s is not callable", c->name);
    }
}

/* ======================================================================
 * Inert objects (CKPT__PICKLE_INERT) and scan reports
 * ====================================================================== */

/* Tells the scanner what is done with a value a global became. An OBJECT
 * stands for its class: calling it calls what calling the class returned. */
ckpt_status ckpt__vm_report_use(vm *m, const ckpt_value *v, unsigned use)
{
    if (!m->ctx->on_use || !v)
        return CKPT_OK;
    for (int i = 0; i < 64 && v && v->kind == CKPT_KIND_OBJECT; i++) {
        v = v->u.obj.cls;
        if (use != CKPT_SCAN_USE_BUILD && use != CKPT_SCAN_USE_ITEMS)
            use = CKPT_SCAN_USE_RESULT_CALLED;
    }
    if (!v || v->kind != CKPT_KIND_GLOBAL)
        return CKPT_OK;
    return m->ctx->on_use(m->ctx->user, v, use, m->op_pos);
}

/* fn(*args, **kwargs) kept as data: an OBJECT. args_value is the pickle's
 * own tuple when it gave one (shared, not copied). */
static ckpt_status make_object(vm *m, const ckpt_value *fn, ckpt_value *args_value,
                               ckpt_value *const *args, size_t nargs, ckpt_value *kwargs,
                               ckpt_value **out)
{
    ckpt_value *o;
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_OBJECT, &o));
    o->u.obj.cls = (ckpt_value *)(uintptr_t)fn;
    if (args_value && args_value->kind == CKPT_KIND_TUPLE) {
        o->u.obj.args = args_value;
    } else {
        CKPT_RETURN_IF_ERROR(ckpt__vm_charge(m, nargs));
        CKPT_RETURN_IF_ERROR(ckpt__vm_seq(m, CKPT_KIND_TUPLE, args, nargs, &o->u.obj.args));
    }
    if (kwargs && is_dict(kwargs) && kwargs->u.dict.len)
        o->u.obj.kwargs = kwargs;
    *out = o;
    return CKPT_OK;
}

static bool is_listed_global(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_GLOBAL && v->global_id != CKPT__G_UNKNOWN;
}

/* A class a TorchScript pickle names (CKPT__PICKLE_TORCHSCRIPT): an inert
 * GLOBAL "__torch__...". */
static bool is_torchscript_class(const vm *m, const ckpt_value *v)
{
    return (m->ctx->flags & CKPT__PICKLE_TORCHSCRIPT) && v && v->kind == CKPT_KIND_GLOBAL &&
           v->global_id == CKPT__G_UNKNOWN && has_text_prefix(v->u.s.ptr, v->u.s.len, "__torch__.");
}

/* Applies a stack value to arguments. Only allowed globals are evaluated,
 * by their data meaning; anything else was refused when it was named, is
 * plain data, or (INERT) becomes an object that only remembers the call. */
ckpt_status ckpt__vm_apply(vm *m, const ckpt_value *fn, ckpt_value *args_value,
                           ckpt_value *const *args, size_t nargs, ckpt_value *kwargs,
                           unsigned use, ckpt_value **out)
{
    unsigned flags = m->ctx->flags;
    bool is_new = (use & (CKPT_SCAN_USE_NEWOBJ | CKPT_SCAN_USE_NEWOBJ_EX)) != 0;
    CKPT_RETURN_IF_ERROR(ckpt__vm_report_use(m, fn, use));
    if (m->ctx->on_call && fn && fn->kind == CKPT_KIND_GLOBAL)
        CKPT_RETURN_IF_ERROR(m->ctx->on_call(m->ctx->user, fn, args, nargs, kwargs));
    bool has_kwargs = kwargs && is_dict(kwargs) && kwargs->u.dict.len;
    if (is_torchscript_class(m, fn) && !(flags & CKPT__PICKLE_NO_FAIL)) {
        /* the pickler writes cls.__new__(cls); BUILD gives the attributes */
        if (use != CKPT_SCAN_USE_NEWOBJ || nargs != 0 || has_kwargs)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "TorchScript class '%s' is called with arguments or not by "
                                 "NEWOBJ: TorchScript makes its objects by NEWOBJ with no "
                                 "arguments", fn->u.s.ptr);
        return make_object(m, fn, args_value, args, nargs, kwargs, out);
    }
    if (is_listed_global(fn)) {
        ckpt_status st;
        if (has_kwargs) {
            st = ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "keyword arguments are not supported");
        } else {
            call c = {
                .fn = fn, .name = fn->u.s.ptr, .args = args, .nargs = nargs, .is_new = is_new,
                .depth = 0,
            };
            st = eval_call(m, &c, out);
        }
        if (st == CKPT_OK || !(flags & CKPT__PICKLE_NO_FAIL) || st == CKPT_ERR_LIMIT ||
            st == CKPT_ERR_NOMEM)
            return st;
        return make_object(m, fn, args_value, args, nargs, kwargs, out);
    }
    bool inert_callee = fn && (fn->kind == CKPT_KIND_GLOBAL || fn->kind == CKPT_KIND_OBJECT);
    if ((inert_callee && (flags & CKPT__PICKLE_INERT)) || (flags & CKPT__PICKLE_NO_FAIL))
        return make_object(m, fn, args_value, args, nargs, kwargs, out);
    if (fn && fn->kind == CKPT_KIND_DTYPE)
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "torch.%s is not callable",
                             ckpt_dtype_name(fn->u.dtype));
    if (has_kwargs)
        return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED, "keyword arguments are not supported");
    return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "a %s is not callable", kind_desc(fn));
}

/* ======================================================================
 * BUILD
 * ====================================================================== */

/* Object attributes as Python's BUILD sets them without __setstate__: a
 * dict, or (dict, slots) with either part None, merged over old (a DICT or
 * NULL) into a new dict in *out; *out is old when there is nothing to set.
 * Any other state is a format error (inert objects keep it as it is). */
static ckpt_status merge_state(vm *m, const char *what, ckpt_value *old, ckpt_value *state,
                               ckpt_value **out)
{
    ckpt_value *parts[2] = {NULL, NULL};
    *out = old;
    if (is_dict(state)) {
        parts[0] = state;
    } else if (state->kind == CKPT_KIND_TUPLE && state->u.seq.len == 2) {
        for (int i = 0; i < 2; i++) {
            ckpt_value *p = state->u.seq.items[i];
            if (p && p->kind != CKPT_KIND_NONE && !is_dict(p))
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the state of a %s must be a dict",
                                     what);
            parts[i] = p && p->kind != CKPT_KIND_NONE ? p : NULL;
        }
    } else if (state->kind != CKPT_KIND_NONE) {
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "the state of a %s must be a dict, not a %s",
                             what, kind_desc(state));
    }
    for (int i = 0; i < 2; i++) {
        if (parts[i] && parts[i]->u.dict.len == 0)
            parts[i] = NULL;
    }
    if (!parts[0] && !parts[1])
        return CKPT_OK; /* nothing to set, as in Python */
    /* Python copies the attributes in (inst.__dict__.update): the state dict
     * itself may still change through the memo, so merge into a copy. */
    ckpt_value *merged;
    CKPT_RETURN_IF_ERROR(ckpt__vm_value(m, CKPT_KIND_DICT, &merged));
    if (old && is_dict(old)) {
        for (size_t i = 0; i < old->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(ckpt__vm_dict_put(m, merged, old->u.dict.keys[i],
                                                   old->u.dict.vals[i]));
    }
    for (int p = 0; p < 2; p++) {
        if (!parts[p])
            continue;
        for (size_t i = 0; i < parts[p]->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(
                ckpt__vm_dict_put(m, merged, parts[p]->u.dict.keys[i], parts[p]->u.dict.vals[i]));
    }
    *out = merged;
    return CKPT_OK;
}

ckpt_status ckpt__vm_build(vm *m, ckpt_value *inst, ckpt_value *state)
{
    unsigned flags = m->ctx->flags;
    CKPT_RETURN_IF_ERROR(ckpt__vm_report_use(m, inst, CKPT_SCAN_USE_BUILD));
    if (ckpt__numpy_unbuilt(inst))
        return ckpt__numpy_build(m, inst, state);
    if (ckpt__numpy_built(inst))
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "BUILD on a numpy array that is built already");
    if (inst->kind == CKPT_KIND_TENSOR) {
        if (state->kind != CKPT_KIND_NONE)
            inst->u.tensor.state = state;
        return CKPT_OK;
    }
    if (inst->kind == CKPT_KIND_OBJECT && is_torchscript_class(m, inst->u.obj.cls) &&
        !(flags & CKPT__PICKLE_NO_FAIL)) {
        /* TorchScript writes an object's attributes as a dict of names; any
         * other state is what its __getstate__ returned, for a __setstate__
         * that torch.jit.load runs */
        if (inst->u.obj.state)
            return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                 "TorchScript object of class '%s' is built twice",
                                 inst->u.obj.cls->u.s.ptr);
        if (state->kind != CKPT_KIND_DICT)
            return ckpt__vm_fail(m, CKPT_ERR_UNSUPPORTED,
                                 "class '%s' has a __setstate__ (its state is a %s, not a dict "
                                 "of attributes): torch.jit.load runs it, so it is not data",
                                 inst->u.obj.cls->u.s.ptr, kind_desc(state));
        for (size_t i = 0; i < state->u.dict.len; i++) {
            if (state->u.dict.keys[i]->kind != CKPT_KIND_STR)
                return ckpt__vm_fail(m, CKPT_ERR_FORMAT,
                                     "class '%s': attribute name %zu is a %s, not a str",
                                     inst->u.obj.cls->u.s.ptr, i,
                                     kind_desc(state->u.dict.keys[i]));
        }
        /* copied, as torch sets each attribute: the dict may change later */
        return merge_state(m, "object", NULL, state, &inst->u.obj.state);
    }
    if (inst->kind == CKPT_KIND_OBJECT) {
        /* __setstate__ may take anything: a dict (or (dict, slots)) is
         * merged as Python's default does, anything else kept as given */
        ckpt_value *old = inst->u.obj.state;
        if (is_dict(state) || (state->kind == CKPT_KIND_TUPLE && state->u.seq.len == 2)) {
            ckpt_value *merged;
            ckpt_status st = merge_state(m, "object", old, state, &merged);
            if (st == CKPT_OK) {
                inst->u.obj.state = merged;
                return CKPT_OK;
            }
            if (st == CKPT_ERR_LIMIT || st == CKPT_ERR_NOMEM)
                return st;
        }
        if (state->kind != CKPT_KIND_NONE)
            inst->u.obj.state = state;
        return CKPT_OK;
    }
    if (inst->kind != CKPT_KIND_ORDERED_DICT) {
        /* torch builds only tensors, Parameters and OrderedDicts: state set
         * on a plain dict would be lost by every writer, so refuse it too */
        bool inert_class = inst->kind == CKPT_KIND_GLOBAL && inst->global_id == CKPT__G_UNKNOWN &&
                           (flags & CKPT__PICKLE_INERT);
        if (inert_class || (flags & CKPT__PICKLE_NO_FAIL))
            return CKPT_OK; /* nothing is ever set on a class or module */
        return ckpt__vm_fail(m, CKPT_ERR_FORMAT, "BUILD on %s is not allowed", kind_desc(inst));
    }
    ckpt_value *merged;
    ckpt_status st = merge_state(m, kind_desc(inst), inst->u.dict.state, state, &merged);
    if (st != CKPT_OK) {
        if ((flags & CKPT__PICKLE_NO_FAIL) && st != CKPT_ERR_LIMIT && st != CKPT_ERR_NOMEM)
            return CKPT_OK;
        return st;
    }
    inst->u.dict.state = merged;
    return CKPT_OK;
}
