/*
 * pickle_read.c - a data-only pickle interpreter.
 *
 * Every opcode of protocols 0-5 is understood, but nothing is ever imported
 * or called: GLOBAL resolves against a closed table of names (the
 * weights-only allow-list of torch.load), and REDUCE/NEWOBJ/INST/OBJ/BUILD
 * apply those few names by their data meaning (an OrderedDict is filled, a
 * tensor view is described). Anything else is refused with the name and the
 * byte offset of the opcode that asked for it.
 *
 * Hostile input is the normal case here. All reads go through one cursor
 * that checks lengths first; stack, marks, memo and the value tree are
 * bounded by ckpt_limits; work that a small pickle could multiply (copying
 * a memoized container again and again, hashing huge keys) is charged
 * against a budget proportional to the pickle's size. Nothing recurses on
 * values without a bound: memo references can make the tree cyclic.
 */
#include "internal.h"
#include "pickle.h"

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* ======================================================================
 * Opcodes
 * ====================================================================== */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2',
    OP_FLOAT = 'F', OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L',
    OP_BININT2 = 'M', OP_NONE = 'N', OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R',
    OP_STRING = 'S', OP_BINSTRING = 'T', OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V',
    OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_GLOBAL = 'c', OP_DICT = 'd',
    OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h', OP_INST = 'i',
    OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't',
    OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    /* protocol 2 */
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84,
    OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b,
    /* protocol 3 */
    OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C',
    /* protocol 4 */
    OP_SHORT_BINUNICODE = 0x8c, OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e,
    OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90, OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92,
    OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    /* protocol 5 */
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98
};

static const char *op_name(uint8_t op)
{
    switch (op) {
    case OP_MARK: return "MARK";
    case OP_STOP: return "STOP";
    case OP_POP: return "POP";
    case OP_POP_MARK: return "POP_MARK";
    case OP_DUP: return "DUP";
    case OP_FLOAT: return "FLOAT";
    case OP_INT: return "INT";
    case OP_BININT: return "BININT";
    case OP_BININT1: return "BININT1";
    case OP_LONG: return "LONG";
    case OP_BININT2: return "BININT2";
    case OP_NONE: return "NONE";
    case OP_PERSID: return "PERSID";
    case OP_BINPERSID: return "BINPERSID";
    case OP_REDUCE: return "REDUCE";
    case OP_STRING: return "STRING";
    case OP_BINSTRING: return "BINSTRING";
    case OP_SHORT_BINSTRING: return "SHORT_BINSTRING";
    case OP_UNICODE: return "UNICODE";
    case OP_BINUNICODE: return "BINUNICODE";
    case OP_APPEND: return "APPEND";
    case OP_BUILD: return "BUILD";
    case OP_GLOBAL: return "GLOBAL";
    case OP_DICT: return "DICT";
    case OP_EMPTY_DICT: return "EMPTY_DICT";
    case OP_APPENDS: return "APPENDS";
    case OP_GET: return "GET";
    case OP_BINGET: return "BINGET";
    case OP_INST: return "INST";
    case OP_LONG_BINGET: return "LONG_BINGET";
    case OP_LIST: return "LIST";
    case OP_EMPTY_LIST: return "EMPTY_LIST";
    case OP_OBJ: return "OBJ";
    case OP_PUT: return "PUT";
    case OP_BINPUT: return "BINPUT";
    case OP_LONG_BINPUT: return "LONG_BINPUT";
    case OP_SETITEM: return "SETITEM";
    case OP_TUPLE: return "TUPLE";
    case OP_EMPTY_TUPLE: return "EMPTY_TUPLE";
    case OP_SETITEMS: return "SETITEMS";
    case OP_BINFLOAT: return "BINFLOAT";
    case OP_PROTO: return "PROTO";
    case OP_NEWOBJ: return "NEWOBJ";
    case OP_EXT1: return "EXT1";
    case OP_EXT2: return "EXT2";
    case OP_EXT4: return "EXT4";
    case OP_TUPLE1: return "TUPLE1";
    case OP_TUPLE2: return "TUPLE2";
    case OP_TUPLE3: return "TUPLE3";
    case OP_NEWTRUE: return "NEWTRUE";
    case OP_NEWFALSE: return "NEWFALSE";
    case OP_LONG1: return "LONG1";
    case OP_LONG4: return "LONG4";
    case OP_BINBYTES: return "BINBYTES";
    case OP_SHORT_BINBYTES: return "SHORT_BINBYTES";
    case OP_SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case OP_BINUNICODE8: return "BINUNICODE8";
    case OP_BINBYTES8: return "BINBYTES8";
    case OP_EMPTY_SET: return "EMPTY_SET";
    case OP_ADDITEMS: return "ADDITEMS";
    case OP_FROZENSET: return "FROZENSET";
    case OP_NEWOBJ_EX: return "NEWOBJ_EX";
    case OP_STACK_GLOBAL: return "STACK_GLOBAL";
    case OP_MEMOIZE: return "MEMOIZE";
    case OP_FRAME: return "FRAME";
    case OP_BYTEARRAY8: return "BYTEARRAY8";
    case OP_NEXT_BUFFER: return "NEXT_BUFFER";
    case OP_READONLY_BUFFER: return "READONLY_BUFFER";
    }
    return "unknown opcode";
}

/* ======================================================================
 * The allow-list
 * ====================================================================== */

typedef struct global_def {
    const char *module;
    const char *name;
    const char *full;       /* "module.name": the CKPT_GLOBAL text */
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

    G("torch._utils", "_rebuild_tensor", CKPT__G_REBUILD_TENSOR),
    G("torch._utils", "_rebuild_tensor_v2", CKPT__G_REBUILD_TENSOR_V2),
    G("torch._utils", "_rebuild_tensor_v3", CKPT__G_REBUILD_TENSOR_V3),
    G("torch._utils", "_rebuild_parameter", CKPT__G_REBUILD_PARAMETER),
    G("torch._utils", "_rebuild_parameter_with_state", CKPT__G_REBUILD_PARAMETER_WITH_STATE),
    G("torch._utils", "_rebuild_meta_tensor_no_storage", CKPT__G_REBUILD_META_TENSOR_NO_STORAGE),
    G("torch._utils", "_rebuild_qtensor", CKPT__G_REBUILD_QTENSOR),
    G("torch._utils", "_rebuild_sparse_tensor", CKPT__G_REBUILD_SPARSE_TENSOR),
    G("torch._utils", "_rebuild_wrapper_subclass", CKPT__G_REBUILD_WRAPPER_SUBCLASS),
    G("torch._utils", "_rebuild_device_tensor_from_numpy",
      CKPT__G_REBUILD_DEVICE_TENSOR_FROM_NUMPY),
    G("torch._utils", "_rebuild_device_tensor_from_cpu_tensor",
      CKPT__G_REBUILD_DEVICE_TENSOR_FROM_CPU_TENSOR),
    G("torch._utils", "_rebuild_nested_tensor", CKPT__G_REBUILD_NESTED_TENSOR),
    G("torch._tensor", "_rebuild_from_type_v2", CKPT__G_REBUILD_FROM_TYPE_V2),

    D("float64", CKPT_FLOAT64), D("double", CKPT_FLOAT64),
    D("float32", CKPT_FLOAT32), D("float", CKPT_FLOAT32),
    D("float16", CKPT_FLOAT16), D("half", CKPT_FLOAT16),
    D("bfloat16", CKPT_BFLOAT16),
    D("complex128", CKPT_COMPLEX128), D("cdouble", CKPT_COMPLEX128),
    D("complex64", CKPT_COMPLEX64), D("cfloat", CKPT_COMPLEX64),
    D("complex32", CKPT_COMPLEX32), D("chalf", CKPT_COMPLEX32),
    D("int64", CKPT_INT64), D("long", CKPT_INT64),
    D("int32", CKPT_INT32), D("int", CKPT_INT32),
    D("int16", CKPT_INT16), D("short", CKPT_INT16),
    D("int8", CKPT_INT8),
    D("uint8", CKPT_UINT8), D("uint16", CKPT_UINT16),
    D("uint32", CKPT_UINT32), D("uint64", CKPT_UINT64),
    D("bool", CKPT_BOOL),
    D("float8_e5m2", CKPT_FLOAT8_E5M2), D("float8_e4m3fn", CKPT_FLOAT8_E4M3FN),
    D("float8_e5m2fnuz", CKPT_FLOAT8_E5M2FNUZ), D("float8_e4m3fnuz", CKPT_FLOAT8_E4M3FNUZ),
    D("float8_e8m0fnu", CKPT_FLOAT8_E8M0FNU),
    D("qint8", CKPT_QINT8), D("quint8", CKPT_QUINT8), D("qint32", CKPT_QINT32),
    D("quint4x2", CKPT_QUINT4X2), D("quint2x4", CKPT_QUINT2X4),
    D("bits8", CKPT_BITS8), D("bits16", CKPT_BITS16), D("bits1x8", CKPT_BITS1X8),
    D("bits2x4", CKPT_BITS2X4), D("bits4x2", CKPT_BITS4X2),
    D("float4_e2m1fn_x2", CKPT_FLOAT4_E2M1FN_X2),

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
};

#undef G
#undef D
#undef S

static const global_def *find_global(const char *module, size_t mlen, const char *name, size_t nlen)
{
    for (size_t i = 0; i < sizeof(GLOBALS) / sizeof(GLOBALS[0]); i++) {
        const global_def *g = &GLOBALS[i];
        if (g->module_len == mlen && g->name_len == nlen && memcmp(g->module, module, mlen) == 0 &&
            memcmp(g->name, name, nlen) == 0)
            return g;
    }
    return NULL;
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
           (id >= CKPT__G_REBUILD_TENSOR && id <= CKPT__G_REBUILD_FROM_TYPE_V2);
}

static bool is_constant_id(uint32_t id)
{
    return id >= CKPT__G_PER_TENSOR_AFFINE && id <= CKPT__G_MKLDNN;
}

/* ======================================================================
 * The machine
 * ====================================================================== */

#define SMALL_INT_MIN (-1)
#define SMALL_INT_MAX 256
#define MAX_REBUILD_NESTING 4   /* _rebuild_from_type_v2 applying itself */
#define MAX_FLOAT_TEXT 1024
#define MAX_DECIMAL_DIGITS 4300 /* CPython's int_max_str_digits default */

typedef struct vm {
    ckpt__pickle_ctx *ctx;
    ckpt__arena *arena;
    const ckpt_limits *limits;
    ckpt_error *err;

    const uint8_t *data;
    size_t size;          /* bytes given */
    size_t end;           /* bytes we may read: min(size, max_pickle_bytes) */
    size_t pos;
    size_t op_pos;        /* offset of the opcode being run, for errors */
    uint8_t op;

    ckpt_value **stack;
    size_t sp, stack_cap;
    size_t *marks;        /* stack heights at each MARK */
    size_t nmarks, marks_cap;

    ckpt_value **memo;    /* dense: memo[i] or NULL, i < max_memo_entries */
    size_t memo_cap, memo_count;

    uint64_t work, work_limit;

    ckpt_value *none, *yes, *no, *empty_tuple;
    ckpt_value *small_ints[SMALL_INT_MAX - SMALL_INT_MIN + 1];
} vm;

/* ---- errors ------------------------------------------------------------ */

static ckpt_status fail(vm *m, ckpt_status st, const char *fmt, ...) CKPT_PRINTF(3, 4);

static ckpt_status fail(vm *m, ckpt_status st, const char *fmt, ...)
{
    char msg[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return ckpt__fail(m->err, st, m->ctx->record, m->op_pos, "%s: %s", op_name(m->op), msg);
}

/* A kind for messages; internal kinds included. */
static const char *kind_desc(const ckpt_value *v)
{
    if (!v)
        return "nothing";
    if (v->kind == CKPT__KIND_STORAGE)
        return "storage";
    return ckpt_kind_name((ckpt_kind)v->kind);
}

/* Copies text from the file into buf for a message: printable ASCII as is,
 * anything else as \xNN, cut with "..." when too long. */
static const char *printable(char *buf, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= cap) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
            buf[o++] = (char)c;
        } else {
            static const char hex[] = "0123456789abcdef";
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[c >> 4];
            buf[o++] = hex[c & 15];
        }
    }
    buf[o] = '\0';
    return buf;
}

/* An allocation failed: a hit of max_value_bytes, or real out-of-memory. */
static ckpt_status oom(vm *m, uint64_t wanted)
{
    size_t w = wanted > SIZE_MAX ? SIZE_MAX : (size_t)wanted;
    if (ckpt__arena_over_limit(m->arena, w))
        return fail(m, CKPT_ERR_LIMIT, "the values exceed max_value_bytes (%llu bytes)",
                    (unsigned long long)m->arena->limit);
    return fail(m, CKPT_ERR_NOMEM, "out of memory");
}

/* Work that a few bytes of pickle can multiply is charged here. */
static ckpt_status charge(vm *m, uint64_t units)
{
    if (units > m->work_limit - m->work || m->work + units > m->work_limit) {
        m->work = m->work_limit;
        return fail(m, CKPT_ERR_LIMIT,
                    "the pickle asks for too much work (copying or hashing more than %llu "
                    "units for %zu bytes of pickle)",
                    (unsigned long long)m->work_limit, m->end);
    }
    m->work += units;
    return CKPT_OK;
}

/* ---- cursor ------------------------------------------------------------ */

/* The reader wanted n more bytes than there are. Past max_pickle_bytes that
 * is a limit, else a truncated or lying pickle. */
static ckpt_status truncated(vm *m, uint64_t n, bool is_length)
{
    size_t left = m->end - m->pos;
    if (m->size > m->end && n <= (uint64_t)(m->size - m->pos))
        return fail(m, CKPT_ERR_LIMIT, "the pickle is larger than max_pickle_bytes (%llu)",
                    (unsigned long long)m->limits->max_pickle_bytes);
    if (is_length)
        return fail(m, CKPT_ERR_FORMAT, "length %llu runs past the end of the pickle (%zu bytes left)",
                    (unsigned long long)n, left);
    return fail(m, CKPT_ERR_FORMAT, "argument needs %llu bytes but only %zu are left (truncated pickle)",
                (unsigned long long)n, left);
}

/* Fixed-size argument of the opcode. */
static ckpt_status read_arg(vm *m, size_t n, const uint8_t **p)
{
    if (CKPT_UNLIKELY(n > m->end - m->pos))
        return truncated(m, n, false);
    *p = m->data + m->pos;
    m->pos += n;
    return CKPT_OK;
}

/* Payload whose length the pickle declared. */
static ckpt_status read_payload(vm *m, uint64_t n, const uint8_t **p)
{
    if (CKPT_UNLIKELY(n > (uint64_t)(m->end - m->pos)))
        return truncated(m, n, true);
    *p = m->data + m->pos;
    m->pos += (size_t)n;
    return CKPT_OK;
}

/* Text argument up to '\n' (excluded). */
static ckpt_status read_line(vm *m, const char **p, size_t *len)
{
    const uint8_t *s = m->data + m->pos;
    const uint8_t *nl = memchr(s, '\n', m->end - m->pos);
    if (!nl) {
        if (m->size > m->end)
            return fail(m, CKPT_ERR_LIMIT, "the pickle is larger than max_pickle_bytes (%llu)",
                        (unsigned long long)m->limits->max_pickle_bytes);
        return fail(m, CKPT_ERR_FORMAT, "text argument has no newline (truncated pickle)");
    }
    *p = (const char *)s;
    *len = (size_t)(nl - s);
    m->pos += *len + 1;
    return CKPT_OK;
}

static ckpt_status read_u8(vm *m, uint32_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 1, &p));
    *out = p[0];
    return CKPT_OK;
}

static ckpt_status read_u32(vm *m, uint32_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 4, &p));
    *out = ckpt__le32(p);
    return CKPT_OK;
}

static ckpt_status read_u64(vm *m, uint64_t *out)
{
    const uint8_t *p = NULL;
    CKPT_RETURN_IF_ERROR(read_arg(m, 8, &p));
    *out = ckpt__le64(p);
    return CKPT_OK;
}

/* ---- stack, marks, memo ------------------------------------------------ */

static size_t fence(const vm *m)
{
    return m->nmarks ? m->marks[m->nmarks - 1] : 0;
}

static ckpt_status check_depth(vm *m)
{
    if (m->sp + m->nmarks >= m->limits->max_stack_depth)
        return fail(m, CKPT_ERR_LIMIT, "stack depth exceeds max_stack_depth (%llu)",
                    (unsigned long long)m->limits->max_stack_depth);
    return CKPT_OK;
}

static ckpt_status push(vm *m, ckpt_value *v)
{
    CKPT_RETURN_IF_ERROR(check_depth(m));
    if (m->sp == m->stack_cap) {
        size_t cap = m->stack_cap ? m->stack_cap * 2 : 64;
        if (cap > SIZE_MAX / sizeof(*m->stack))
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        ckpt_value **s = realloc(m->stack, cap * sizeof(*s));
        if (!s)
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        m->stack = s;
        m->stack_cap = cap;
    }
    m->stack[m->sp++] = v;
    return CKPT_OK;
}

/* The stack must hold n items above the innermost mark. */
static ckpt_status need_items(vm *m, size_t n)
{
    size_t avail = m->sp - fence(m);
    if (CKPT_UNLIKELY(avail < n)) {
        if (m->nmarks)
            return fail(m, CKPT_ERR_FORMAT, "needs %zu stack item%s above the MARK, %zu there",
                        n, n == 1 ? "" : "s", avail);
        return fail(m, CKPT_ERR_FORMAT, "needs %zu stack item%s, %zu there (stack underflow)",
                    n, n == 1 ? "" : "s", avail);
    }
    return CKPT_OK;
}

static ckpt_value *pop(vm *m)
{
    return m->stack[--m->sp]; /* callers checked need_items */
}

static ckpt_status push_mark(vm *m)
{
    CKPT_RETURN_IF_ERROR(check_depth(m));
    if (m->nmarks == m->marks_cap) {
        size_t cap = m->marks_cap ? m->marks_cap * 2 : 16;
        if (cap > SIZE_MAX / sizeof(*m->marks))
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        size_t *p = realloc(m->marks, cap * sizeof(*p));
        if (!p)
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        m->marks = p;
        m->marks_cap = cap;
    }
    m->marks[m->nmarks++] = m->sp;
    return CKPT_OK;
}

static ckpt_status pop_mark(vm *m, size_t *mark)
{
    if (m->nmarks == 0)
        return fail(m, CKPT_ERR_FORMAT, "no MARK on the stack");
    *mark = m->marks[--m->nmarks];
    return CKPT_OK;
}

/* For APPENDS/SETITEMS/ADDITEMS: pops the mark; the container sits just
 * below it and must itself be above the enclosing mark. */
static ckpt_status pop_mark_with_target(vm *m, size_t *mark, ckpt_value **target)
{
    CKPT_RETURN_IF_ERROR(pop_mark(m, mark));
    if (*mark <= fence(m))
        return fail(m, CKPT_ERR_FORMAT, "no container below the MARK");
    *target = m->stack[*mark - 1];
    return CKPT_OK;
}

static ckpt_status memo_put(vm *m, uint64_t idx, ckpt_value *v)
{
    if (idx >= m->limits->max_memo_entries)
        return fail(m, CKPT_ERR_LIMIT, "memo index %llu exceeds max_memo_entries (%llu)",
                    (unsigned long long)idx, (unsigned long long)m->limits->max_memo_entries);
    if (idx >= m->memo_cap) {
        uint64_t cap = m->memo_cap ? (uint64_t)m->memo_cap * 2 : 64;
        if (cap < idx + 1)
            cap = idx + 1;
        if (cap > m->limits->max_memo_entries)
            cap = m->limits->max_memo_entries;
        if (cap > SIZE_MAX / sizeof(*m->memo))
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        ckpt_value **p = realloc(m->memo, (size_t)cap * sizeof(*p));
        if (!p)
            return fail(m, CKPT_ERR_NOMEM, "out of memory");
        memset(p + m->memo_cap, 0, ((size_t)cap - m->memo_cap) * sizeof(*p));
        m->memo = p;
        m->memo_cap = (size_t)cap;
    }
    if (!m->memo[idx])
        m->memo_count++;
    m->memo[idx] = v;
    return CKPT_OK;
}

static ckpt_status memo_get(vm *m, uint64_t idx, ckpt_value **out)
{
    if (idx >= m->memo_cap || !m->memo[idx])
        return fail(m, CKPT_ERR_FORMAT, "memo key %llu was never stored", (unsigned long long)idx);
    *out = m->memo[idx];
    return CKPT_OK;
}

/* ---- values ------------------------------------------------------------ */

static ckpt_status new_value(vm *m, int kind, ckpt_value **out)
{
    *out = ckpt__value_new(m->arena, kind);
    return *out ? CKPT_OK : oom(m, sizeof(ckpt_value));
}

static ckpt_status new_str(vm *m, int kind, const void *s, size_t n, ckpt_value **out)
{
    *out = ckpt__value_str(m->arena, kind, s, n);
    return *out ? CKPT_OK : oom(m, (uint64_t)n + 1 + 2 * sizeof(ckpt_value));
}

static ckpt_status alloc_bytes(vm *m, size_t n, void **out)
{
    *out = ckpt__arena_alloc(m->arena, n);
    return *out ? CKPT_OK : oom(m, n);
}

/* A STR/BYTES value over a buffer already in the arena (NUL-terminated). */
static ckpt_status wrap_str(vm *m, int kind, char *buf, size_t n, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(new_value(m, kind, out));
    (*out)->u.s.ptr = buf;
    (*out)->u.s.len = n;
    return CKPT_OK;
}

/* None, booleans and small ints are immutable: one value each per pickle. */
static ckpt_status cached(vm *m, ckpt_value **slot, int kind, ckpt_value **out)
{
    if (!*slot)
        CKPT_RETURN_IF_ERROR(new_value(m, kind, slot));
    *out = *slot;
    return CKPT_OK;
}

static ckpt_status new_none(vm *m, ckpt_value **out)
{
    return cached(m, &m->none, CKPT_NONE, out);
}

static ckpt_status new_bool(vm *m, bool b, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(cached(m, b ? &m->yes : &m->no, CKPT_BOOLEAN, out));
    (*out)->u.b = b;
    return CKPT_OK;
}

static ckpt_status new_int(vm *m, int64_t i, ckpt_value **out)
{
    if (i >= SMALL_INT_MIN && i <= SMALL_INT_MAX) {
        CKPT_RETURN_IF_ERROR(cached(m, &m->small_ints[i - SMALL_INT_MIN], CKPT_INT, out));
        (*out)->u.i = i;
        return CKPT_OK;
    }
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_INT, out));
    (*out)->u.i = i;
    return CKPT_OK;
}

static ckpt_status new_float(vm *m, double f, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_FLOAT, out));
    (*out)->u.f = f;
    return CKPT_OK;
}

static ckpt_status check_len(vm *m, uint64_t n)
{
    if (n > m->limits->max_container_len)
        return fail(m, CKPT_ERR_LIMIT, "container of %llu items exceeds max_container_len (%llu)",
                    (unsigned long long)n, (unsigned long long)m->limits->max_container_len);
    return CKPT_OK;
}

/* A LIST/TUPLE/SET/SIZE holding a copy of items[0..n). */
static ckpt_status new_seq(vm *m, int kind, ckpt_value *const *items, size_t n, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_len(m, n));
    if (kind == CKPT_TUPLE && n == 0 && m->empty_tuple) {
        *out = m->empty_tuple;
        return CKPT_OK;
    }
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(new_value(m, kind, &v));
    if (n) {
        if (n > SIZE_MAX / sizeof(ckpt_value *))
            return oom(m, UINT64_MAX);
        void *arr;
        CKPT_RETURN_IF_ERROR(alloc_bytes(m, n * sizeof(ckpt_value *), &arr));
        memcpy(arr, items, n * sizeof(ckpt_value *));
        v->u.seq.items = arr;
        v->u.seq.len = v->u.seq.cap = n;
    }
    if (kind == CKPT_TUPLE && n == 0)
        m->empty_tuple = v;
    *out = v;
    return CKPT_OK;
}

static ckpt_status seq_add(vm *m, ckpt_value *seq, ckpt_value *item)
{
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)seq->u.seq.len + 1));
    if (!ckpt__seq_append(m->arena, seq, item))
        return oom(m, (uint64_t)(seq->u.seq.cap ? seq->u.seq.cap : 2) * 2 * sizeof(ckpt_value *));
    return CKPT_OK;
}

static ckpt_status dict_put(vm *m, ckpt_value *d, ckpt_value *k, ckpt_value *v)
{
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)d->u.dict.len + 1));
    /* Hashing k and comparing it: with an index about twice, else once
     * per entry scanned. Bounded, so no overflow. */
    uint64_t cost = ckpt__key_cost(k);
    CKPT_RETURN_IF_ERROR(charge(m, cost * (d->u.dict.index_cap ? 2 : 1 + d->u.dict.len)));
    if (!ckpt__dict_set(m->arena, d, k, v)) {
        uint64_t cap = d->u.dict.cap ? d->u.dict.cap : 2;
        return oom(m, cap * 4 * sizeof(ckpt_value *) + ((uint64_t)d->u.dict.len + 1) * 16);
    }
    return CKPT_OK;
}

static bool is_dict(const ckpt_value *v)
{
    return v && (v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT);
}

static bool is_intlike(const ckpt_value *v)
{
    return v && (v->kind == CKPT_INT || v->kind == CKPT_BOOLEAN);
}

static int64_t int_of(const ckpt_value *v)
{
    return v->kind == CKPT_BOOLEAN ? (v->u.b ? 1 : 0) : v->u.i;
}

static bool str_is(const ckpt_value *v, const char *s)
{
    size_t n = strlen(s);
    return v && v->kind == CKPT_STR && v->u.s.len == n && memcmp(v->u.s.ptr, s, n) == 0;
}

/* ======================================================================
 * Text: UTF-8, escapes, numbers
 * ====================================================================== */

/* Offset of the first invalid byte, or n. allow_surrogates mirrors
 * CPython's "surrogatepass", which the pickler uses for str. */
static size_t utf8_check(const uint8_t *s, size_t n, bool allow_surrogates)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed && !allow_surrogates)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return i;
        }
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return i;
        }
        i += len;
    }
    return n;
}

static size_t put_utf8(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | (cp >> 6));
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) { /* surrogates too: as CPython's surrogatepass */
        o[0] = (uint8_t)(0xe0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Decodes one code point of (surrogatepass) UTF-8; false when invalid. */
static bool get_utf8(const uint8_t *s, size_t n, size_t *i, uint32_t *cp)
{
    size_t len = utf8_check(s + *i, n - *i < 4 ? n - *i : 4, true);
    uint8_t c = s[*i];
    if (len == 0)
        return false;
    if (c < 0x80) {
        *cp = c;
        *i += 1;
    } else if (c < 0xe0) {
        *cp = ((uint32_t)(c & 0x1f) << 6) | (s[*i + 1] & 0x3f);
        *i += 2;
    } else if (c < 0xf0) {
        *cp = ((uint32_t)(c & 0x0f) << 12) | ((uint32_t)(s[*i + 1] & 0x3f) << 6) |
              (s[*i + 2] & 0x3f);
        *i += 3;
    } else {
        *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[*i + 1] & 0x3f) << 12) |
              ((uint32_t)(s[*i + 2] & 0x3f) << 6) | (s[*i + 3] & 0x3f);
        *i += 4;
    }
    return true;
}

/* A py2 str: kept when it is UTF-8, else read as latin-1 (every byte is a
 * code point) and re-encoded. */
static ckpt_status py2_str(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (utf8_check(s, n, false) == n)
        return new_str(m, CKPT_STR, s, n, out);
    if (n > (SIZE_MAX - 1) / 2)
        return oom(m, UINT64_MAX);
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, 2 * n + 1, (void **)&buf));
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += put_utf8(buf + o, s[i]);
    buf[o] = 0;
    return wrap_str(m, CKPT_STR, (char *)buf, o, out);
}

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* UNICODE: raw-unicode-escape. \uXXXX and \UXXXXXXXX are code points, a
 * backslash before anything else is literal (and keeps its follower
 * literal), every other byte is a latin-1 code point. */
static ckpt_status decode_raw_unicode_escape(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (n > (SIZE_MAX - 1) / 2)
        return oom(m, UINT64_MAX);
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, 2 * n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i++];
        if (c != '\\' || i == n) {
            o += put_utf8(buf + o, c);
            continue;
        }
        uint8_t e = s[i++];
        int digits = e == 'u' ? 4 : e == 'U' ? 8 : 0;
        if (!digits) {
            buf[o++] = '\\';
            o += put_utf8(buf + o, e);
            continue;
        }
        uint32_t cp = 0;
        for (int k = 0; k < digits; k++) {
            int h = i < n ? hex_value(s[i]) : -1;
            if (h < 0)
                return fail(m, CKPT_ERR_FORMAT, "truncated \\%c escape at byte %zu of the text",
                            (char)e, i);
            cp = (cp << 4) | (uint32_t)h;
            i++;
        }
        if (cp > 0x10ffff)
            return fail(m, CKPT_ERR_FORMAT, "\\U%08x is not a code point", (unsigned)cp);
        o += put_utf8(buf + o, cp);
    }
    buf[o] = 0;
    return wrap_str(m, CKPT_STR, (char *)buf, o, out);
}

/* STRING: a Python-quoted literal with backslash escapes (as
 * PyBytes_DecodeEscape reads it), then a py2 str. */
static ckpt_status decode_string_literal(vm *m, const uint8_t *s, size_t n, ckpt_value **out)
{
    if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
        return fail(m, CKPT_ERR_FORMAT, "the argument must be quoted");
    s++;
    n -= 2;
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i++];
        if (c != '\\') {
            buf[o++] = c;
            continue;
        }
        if (i == n)
            return fail(m, CKPT_ERR_FORMAT, "trailing \\ in the string");
        c = s[i++];
        switch (c) {
        case '\n': break;
        case '\\': buf[o++] = '\\'; break;
        case '\'': buf[o++] = '\''; break;
        case '"': buf[o++] = '"'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 't': buf[o++] = '\t'; break;
        case 'n': buf[o++] = '\n'; break;
        case 'r': buf[o++] = '\r'; break;
        case 'v': buf[o++] = '\v'; break;
        case 'a': buf[o++] = '\a'; break;
        case 'x': {
            int h1 = i < n ? hex_value(s[i]) : -1;
            int h2 = i + 1 < n ? hex_value(s[i + 1]) : -1;
            if (h1 < 0 || h2 < 0)
                return fail(m, CKPT_ERR_FORMAT, "invalid \\x escape at byte %zu of the string", i - 2);
            buf[o++] = (uint8_t)(h1 * 16 + h2);
            i += 2;
            break;
        }
        default:
            if (c >= '0' && c <= '7') {
                unsigned v = c - '0';
                for (int k = 0; k < 2 && i < n && s[i] >= '0' && s[i] <= '7'; k++)
                    v = v * 8 + (s[i++] - '0');
                buf[o++] = (uint8_t)v; /* \777 wraps, as in CPython */
            } else {
                buf[o++] = '\\'; /* unknown escapes stay as written */
                buf[o++] = c;
            }
            break;
        }
    }
    return py2_str(m, buf, o, out);
}

/* Two's complement little-endian bytes: an INT when they fit int64, else a
 * BIGINT holding the shortest such bytes (so equal numbers compare equal). */
static ckpt_status make_long(vm *m, const uint8_t *b, size_t n, ckpt_value **out)
{
    while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) ||
                     (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
        n--;
    if (n == 0)
        return new_int(m, 0, out);
    if (n <= 8) {
        uint64_t u = (b[n - 1] & 0x80) ? UINT64_MAX : 0;
        for (size_t i = n; i-- > 0;)
            u = (u << 8) | b[i];
        return new_int(m, (int64_t)u, out);
    }
    return new_str(m, CKPT_BIGINT, b, n, out);
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* INT/LONG text: [spaces] [sign] digits [L] [spaces], decimal. Python reads
 * them with int(), so any size is allowed up to CPython's digit limit. */
static ckpt_status parse_decimal(vm *m, const char *s, size_t n, bool allow_l, ckpt_value **out)
{
    while (n && is_space(s[n - 1]))
        n--;
    if (allow_l && n && s[n - 1] == 'L')
        n--;
    while (n && is_space(*s)) {
        s++;
        n--;
    }
    bool neg = false;
    if (n && (*s == '+' || *s == '-')) {
        neg = *s == '-';
        s++;
        n--;
    }
    if (n == 0)
        return fail(m, CKPT_ERR_FORMAT, "invalid integer literal");
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return fail(m, CKPT_ERR_FORMAT, "invalid integer literal");
    }
    while (n > 1 && *s == '0') {
        s++;
        n--;
    }
    if (n > MAX_DECIMAL_DIGITS)
        return fail(m, CKPT_ERR_LIMIT, "integer literal of %zu digits exceeds the limit of %d",
                    n, MAX_DECIMAL_DIGITS);
    uint64_t mag = 0;
    bool big = false;
    for (size_t i = 0; i < n && !big; i++) {
        if (mag > (UINT64_MAX - 9) / 10)
            big = true;
        else
            mag = mag * 10 + (uint64_t)(s[i] - '0');
    }
    if (!big && mag <= (uint64_t)INT64_MAX)
        return new_int(m, neg ? -(int64_t)mag : (int64_t)mag, out);
    if (!big && neg && mag == (uint64_t)INT64_MAX + 1)
        return new_int(m, INT64_MIN, out);

    /* Schoolbook base 10^9 -> 2^32; cheap up to the digit limit. */
    enum { LIMBS = MAX_DECIMAL_DIGITS / 9 + 2 };
    uint32_t limbs[LIMBS];
    size_t nl = 0;
    size_t first = n % 9 ? n % 9 : 9;
    for (size_t i = 0; i < n;) {
        size_t k = i == 0 ? first : 9;
        uint32_t chunk = 0, mul = 1;
        for (size_t j = 0; j < k; j++) {
            chunk = chunk * 10 + (uint32_t)(s[i + j] - '0');
            mul *= 10;
        }
        i += k;
        uint64_t carry = chunk;
        for (size_t j = 0; j < nl; j++) {
            uint64_t t = (uint64_t)limbs[j] * mul + carry;
            limbs[j] = (uint32_t)t;
            carry = t >> 32;
        }
        if (carry)
            limbs[nl++] = (uint32_t)carry;
    }
    uint8_t bytes[LIMBS * 4 + 1];
    size_t nb = nl * 4 + 1;
    for (size_t j = 0; j < nl; j++) {
        for (int k = 0; k < 4; k++)
            bytes[j * 4 + (size_t)k] = (uint8_t)(limbs[j] >> (8 * k));
    }
    bytes[nb - 1] = 0;
    if (neg) {
        unsigned carry = 1;
        for (size_t j = 0; j < nb; j++) {
            unsigned t = (uint8_t)~bytes[j] + carry;
            bytes[j] = (uint8_t)t;
            carry = t >> 8;
        }
    }
    return make_long(m, bytes, nb, out);
}

/* Unsigned decimal for memo keys; false when not one. Saturates. */
static bool parse_index(const char *s, size_t n, uint64_t *out)
{
    while (n && is_space(s[n - 1]))
        n--;
    while (n && is_space(*s)) {
        s++;
        n--;
    }
    if (n && *s == '+') {
        s++;
        n--;
    }
    if (n == 0)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        unsigned d = (unsigned)(s[i] - '0');
        v = v > (UINT64_MAX - d) / 10 ? UINT64_MAX : v * 10 + d;
    }
    *out = v;
    return true;
}

static bool ascii_ieq(const char *a, size_t n, const char *b)
{
    size_t bn = strlen(b);
    if (n != bn)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != b[i])
            return false;
    }
    return true;
}

/* FLOAT text, as repr() writes it: [sign] digits [. digits] [e [sign]
 * digits], inf, nan. Checked here, converted by strtod in the C locale's
 * spelling whatever the host's locale is. */
static ckpt_status parse_float(vm *m, const char *s, size_t n, ckpt_value **out)
{
    if (n == 0 || n >= MAX_FLOAT_TEXT)
        return fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    size_t i = 0;
    bool neg = false;
    if (s[i] == '+' || s[i] == '-')
        neg = s[i++] == '-';
    if (ascii_ieq(s + i, n - i, "inf") || ascii_ieq(s + i, n - i, "infinity"))
        return new_float(m, neg ? -INFINITY : INFINITY, out);
    if (ascii_ieq(s + i, n - i, "nan"))
        return new_float(m, neg ? -NAN : NAN, out);
    size_t digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        digits++;
    }
    size_t dot = SIZE_MAX;
    if (i < n && s[i] == '.') {
        dot = i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            digits++;
        }
    }
    if (digits == 0)
        return fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t exp_digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            exp_digits++;
        }
        if (exp_digits == 0)
            return fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    }
    if (i != n)
        return fail(m, CKPT_ERR_FORMAT, "invalid float literal");

    char buf[MAX_FLOAT_TEXT + 16];
    const char *point = localeconv()->decimal_point;
    size_t plen = point ? strlen(point) : 0;
    if (plen == 0 || plen > 8) {
        point = ".";
        plen = 1;
    }
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        if (k == dot) {
            memcpy(buf + o, point, plen);
            o += plen;
        } else {
            buf[o++] = s[k];
        }
    }
    buf[o] = '\0';
    char *endp;
    double d = strtod(buf, &endp);
    if (endp != buf + o)
        return fail(m, CKPT_ERR_FORMAT, "invalid float literal");
    if (isinf(d))
        return fail(m, CKPT_ERR_FORMAT, "float literal out of range");
    return new_float(m, d, out);
}

/* ======================================================================
 * Globals
 * ====================================================================== */

static ckpt_status resolve_global(vm *m, const char *module, size_t mlen, const char *name,
                                  size_t nlen, ckpt_value **out)
{
    /* Python 2 pickles name the builtins module __builtin__ (the pickler's
     * fix_imports writes it too); it is the same module. */
    if (mlen == 11 && memcmp(module, "__builtin__", 11) == 0) {
        module = "builtins";
        mlen = 8;
    }
    const global_def *g = find_global(module, mlen, name, nlen);
    if (!g) {
        char mb[128], nb[128];
        /* sys, os, posix and nt are never in the table: they are refused
         * like any other module, whatever the name. */
        return fail(m, CKPT_ERR_UNSAFE,
                    "global '%s.%s' is not allowed (not in the weights-only allow-list)",
                    printable(mb, sizeof(mb), module, mlen), printable(nb, sizeof(nb), name, nlen));
    }
    ckpt_value *v;
    if (g->dtype != CKPT_DTYPE_INVALID) {
        CKPT_RETURN_IF_ERROR(new_value(m, CKPT_DTYPE, &v));
        v->u.dtype = (ckpt_dtype)g->dtype;
    } else {
        CKPT_RETURN_IF_ERROR(new_value(m, CKPT_GLOBAL, &v));
        v->global_id = g->id;
        v->u.s.ptr = g->full; /* static text: no copy needed */
        v->u.s.len = strlen(g->full);
    }
    *out = v;
    return CKPT_OK;
}

/* GLOBAL and INST: "module\nname\n". */
static ckpt_status read_global(vm *m, ckpt_value **out)
{
    const char *module, *name;
    size_t mlen, nlen;
    CKPT_RETURN_IF_ERROR(read_line(m, &module, &mlen));
    CKPT_RETURN_IF_ERROR(read_line(m, &name, &nlen));
    if (utf8_check((const uint8_t *)module, mlen, false) != mlen ||
        utf8_check((const uint8_t *)name, nlen, false) != nlen)
        return fail(m, CKPT_ERR_FORMAT, "module or name is not valid UTF-8");
    return resolve_global(m, module, mlen, name, nlen, out);
}

/* ======================================================================
 * Calls: REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ
 * ====================================================================== */

typedef struct call {
    const ckpt_value *fn;     /* a CKPT_GLOBAL */
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
        return fail(m, CKPT_ERR_FORMAT, "%s takes %zu argument%s, %zu given", c->name, lo,
                    lo == 1 ? "" : "s", c->nargs);
    return fail(m, CKPT_ERR_FORMAT, "%s takes %zu to %zu arguments, %zu given", c->name, lo, hi,
                c->nargs);
}

static ckpt_status bad_arg(vm *m, const call *c, size_t i, const char *what, const char *expected)
{
    return fail(m, CKPT_ERR_FORMAT, "%s: argument %zu (%s) must be %s, not %s", c->name, i + 1,
                what, expected, kind_desc(c->args[i]));
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
    if (!v || (v->kind != CKPT_TUPLE && v->kind != CKPT_SIZE && v->kind != CKPT_LIST))
        return bad_arg(m, c, i, what, "a tuple of ints");
    if (v->u.seq.len > m->limits->max_ndim)
        return fail(m, CKPT_ERR_LIMIT, "%s: %s has %zu dimensions (max_ndim is %llu)", c->name,
                    what, v->u.seq.len, (unsigned long long)m->limits->max_ndim);
    size_t n = v->u.seq.len;
    int64_t *d;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, (n ? n : 1) * sizeof(int64_t), (void **)&d));
    for (size_t k = 0; k < n; k++) {
        if (!is_intlike(v->u.seq.items[k]))
            return fail(m, CKPT_ERR_FORMAT, "%s: %s item %zu must be an int, not %s", c->name,
                        what, k, kind_desc(v->u.seq.items[k]));
        d[k] = int_of(v->u.seq.items[k]);
    }
    *ndim = (uint32_t)n;
    *dims = d;
    return CKPT_OK;
}

static ckpt_status new_tensor_value(vm *m, ckpt_tensor *t, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_TENSOR, out));
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
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, sizeof(*t), (void **)&t));
    uint32_t ndim, sdim;
    if (meta) {
        if (!c->args[0] || c->args[0]->kind != CKPT_DTYPE)
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
            if (!c->args[6] || c->args[6]->kind != CKPT_DTYPE)
                return bad_arg(m, c, 6, "dtype", "a dtype");
            t->dtype = c->args[6]->u.dtype;
        }
    }
    if (ndim != sdim)
        return fail(m, CKPT_ERR_FORMAT, "%s: size has %u dimensions but stride has %u", c->name,
                    (unsigned)ndim, (unsigned)sdim);
    t->ndim = ndim;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, m->limits, m->ctx->record, m->op_pos, m->err));
    return new_tensor_value(m, t, out);
}

/* A new tensor value: a copy of src marked as a Parameter. */
static ckpt_status make_parameter(vm *m, const ckpt_value *src, bool requires_grad,
                                  ckpt_value *state, ckpt_value **out)
{
    ckpt_tensor *t;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, sizeof(*t), (void **)&t));
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
        if (id == CKPT__G_REBUILD_PARAMETER_WITH_STATE && c->args[3]->kind != CKPT_NONE)
            state = c->args[3];
    }
    if (!c->args[0] || c->args[0]->kind != CKPT_TENSOR)
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
    if (!func || func->kind != CKPT_GLOBAL)
        return bad_arg(m, c, 0, "func", "an allowed function");
    if (!type || type->kind != CKPT_GLOBAL ||
        (type->global_id != CKPT__G_TENSOR && type->global_id != CKPT__G_PARAMETER))
        return bad_arg(m, c, 1, "new_type", "torch.Tensor or torch.nn.parameter.Parameter");
    if (!args || args->kind != CKPT_TUPLE)
        return bad_arg(m, c, 2, "args", "a tuple");
    if (c->depth >= MAX_REBUILD_NESTING)
        return fail(m, CKPT_ERR_FORMAT, "%s is nested more than %d deep", c->name,
                    MAX_REBUILD_NESTING);
    call inner = {
        .fn = func, .name = func->u.s.ptr, .args = args->u.seq.items, .nargs = args->u.seq.len,
        .is_new = false, .depth = c->depth + 1,
    };
    ckpt_value *r;
    CKPT_RETURN_IF_ERROR(eval_call(m, &inner, &r));
    if (r->kind != CKPT_TENSOR)
        return fail(m, CKPT_ERR_FORMAT, "%s: %s returned a %s, not a tensor", c->name,
                    inner.name, kind_desc(r));
    if (type->global_id == CKPT__G_PARAMETER && !r->u.tensor.t->is_parameter)
        CKPT_RETURN_IF_ERROR(make_parameter(m, r, r->u.tensor.t->requires_grad, NULL, &r));
    /* r is always a value made by this call: setting its state is safe */
    if (state && state->kind != CKPT_NONE)
        r->u.tensor.state = state;
    *out = r;
    return CKPT_OK;
}

/* OrderedDict(pairs or mapping), Counter(mapping or iterable). */
static ckpt_status call_dict(vm *m, const call *c, ckpt_value **out)
{
    bool counter = c->fn->global_id == CKPT__G_COUNTER;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(new_value(m, counter ? CKPT_DICT : CKPT_ORDERED_DICT, &d));
    *out = d;
    if (c->is_new) /* dict.__new__ ignores its arguments */
        return CKPT_OK;
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    if (c->nargs == 0)
        return CKPT_OK;
    const ckpt_value *src = c->args[0];
    if (is_dict(src)) {
        for (size_t i = 0; i < src->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(dict_put(m, d, src->u.dict.keys[i], src->u.dict.vals[i]));
        return CKPT_OK;
    }
    if (!src || (src->kind != CKPT_LIST && src->kind != CKPT_TUPLE))
        return bad_arg(m, c, 0, "items", counter ? "a dict or a list" : "a dict or a list of pairs");
    for (size_t i = 0; i < src->u.seq.len; i++) {
        ckpt_value *item = src->u.seq.items[i];
        if (counter) {
            ckpt_value *old = ckpt__dict_lookup(d, item), *n;
            CKPT_RETURN_IF_ERROR(charge(m, ckpt__key_cost(item)));
            CKPT_RETURN_IF_ERROR(new_int(m, old && old->kind == CKPT_INT ? old->u.i + 1 : 1, &n));
            CKPT_RETURN_IF_ERROR(dict_put(m, d, item, n));
            continue;
        }
        if (!item || (item->kind != CKPT_LIST && item->kind != CKPT_TUPLE) || item->u.seq.len != 2)
            return fail(m, CKPT_ERR_FORMAT, "%s: item %zu is a %s, not a (key, value) pair",
                        c->name, i, kind_desc(item));
        CKPT_RETURN_IF_ERROR(dict_put(m, d, item->u.seq.items[0], item->u.seq.items[1]));
    }
    return CKPT_OK;
}

static bool is_latin1_name(const ckpt_value *v)
{
    static const char *const names[] = {"latin1", "latin-1", "latin_1", "iso-8859-1",
                                        "iso8859-1", "iso_8859_1", "l1"};
    if (!v || v->kind != CKPT_STR)
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
    CKPT_RETURN_IF_ERROR(charge(m, n));
    uint8_t *buf;
    CKPT_RETURN_IF_ERROR(alloc_bytes(m, n + 1, (void **)&buf));
    size_t o = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        if (!get_utf8(p, n, &i, &cp))
            return fail(m, CKPT_ERR_FORMAT, "%s: the text is not valid UTF-8", c->name);
        if (cp > 0xff)
            return fail(m, CKPT_ERR_FORMAT, "%s: U+%04X cannot be encoded in latin-1", c->name,
                        (unsigned)cp);
        buf[o++] = (uint8_t)cp;
    }
    buf[o] = 0;
    return wrap_str(m, CKPT_BYTES, (char *)buf, o, out);
}

/* _codecs.encode(str, 'latin1'[, 'strict']) */
static ckpt_status call_codecs_encode(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 2, 3));
    if (c->args[0]->kind != CKPT_STR)
        return bad_arg(m, c, 0, "obj", "a str");
    if (!is_latin1_name(c->args[1])) {
        char nb[64];
        if (c->args[1]->kind != CKPT_STR)
            return bad_arg(m, c, 1, "encoding", "a str");
        return fail(m, CKPT_ERR_FORMAT, "%s: encoding '%s' is not supported (only latin-1)",
                    c->name, printable(nb, sizeof(nb), c->args[1]->u.s.ptr, c->args[1]->u.s.len));
    }
    if (c->nargs == 3 && !str_is(c->args[2], "strict"))
        return bad_arg(m, c, 2, "errors", "'strict'");
    return encode_latin1(m, c, c->args[0], out);
}

/* bytes()/bytearray(): (), (bytes), (list of ints), (str, 'latin-1'). */
static ckpt_status call_bytes(vm *m, const call *c, ckpt_value **out)
{
    if (c->is_new && c->fn->global_id == CKPT__G_BYTEARRAY) /* filled by __init__ */
        return new_str(m, CKPT_BYTES, "", 0, out);
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 3));
    if (c->nargs == 0)
        return new_str(m, CKPT_BYTES, "", 0, out);
    const ckpt_value *src = c->args[0];
    if (c->nargs >= 2) {
        if (src->kind != CKPT_STR)
            return bad_arg(m, c, 0, "source", "a str when an encoding is given");
        call enc = *c;
        enc.nargs = 2;
        if (c->nargs == 3 && !str_is(c->args[2], "strict"))
            return bad_arg(m, c, 2, "errors", "'strict'");
        CKPT_RETURN_IF_ERROR(call_codecs_encode(m, &enc, out));
        return CKPT_OK;
    }
    if (src->kind == CKPT_BYTES) {
        CKPT_RETURN_IF_ERROR(charge(m, src->u.s.len));
        return new_str(m, CKPT_BYTES, src->u.s.ptr, src->u.s.len, out);
    }
    if (src->kind == CKPT_LIST || src->kind == CKPT_TUPLE) {
        size_t n = src->u.seq.len;
        CKPT_RETURN_IF_ERROR(charge(m, n));
        uint8_t *buf;
        CKPT_RETURN_IF_ERROR(alloc_bytes(m, n + 1, (void **)&buf));
        for (size_t i = 0; i < n; i++) {
            const ckpt_value *x = src->u.seq.items[i];
            if (!is_intlike(x) || int_of(x) < 0 || int_of(x) > 255)
                return fail(m, CKPT_ERR_FORMAT, "%s: item %zu must be an int in range(256)",
                            c->name, i);
            buf[i] = (uint8_t)int_of(x);
        }
        buf[n] = 0;
        return wrap_str(m, CKPT_BYTES, (char *)buf, n, out);
    }
    return bad_arg(m, c, 0, "source", "bytes or a list of ints");
}

/* set(iterable), frozenset(iterable). Items are kept as given: pickles of
 * sets never repeat an item. */
static ckpt_status call_set(vm *m, const call *c, ckpt_value **out)
{
    if (c->is_new && c->fn->global_id == CKPT__G_SET) /* filled by __init__ */
        return new_seq(m, CKPT_SET, NULL, 0, out);
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    if (c->nargs == 0)
        return new_seq(m, CKPT_SET, NULL, 0, out);
    const ckpt_value *src = c->args[0];
    if (!src || (src->kind != CKPT_LIST && src->kind != CKPT_TUPLE && src->kind != CKPT_SET))
        return bad_arg(m, c, 0, "iterable", "a list, tuple or set");
    CKPT_RETURN_IF_ERROR(charge(m, src->u.seq.len));
    return new_seq(m, CKPT_SET, src->u.seq.items, src->u.seq.len, out);
}

static bool as_complex(const ckpt_value *v, double *re, double *im)
{
    if (!v)
        return false;
    switch (v->kind) {
    case CKPT_BOOLEAN:
    case CKPT_INT: *re = (double)int_of(v); *im = 0.0; return true;
    case CKPT_FLOAT: *re = v->u.f; *im = 0.0; return true;
    case CKPT_COMPLEX: *re = v->u.c.re; *im = v->u.c.im; return true;
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
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_COMPLEX, out));
    /* complex(a, b) is a + b*1j, also when a and b are complex */
    (*out)->u.c.re = re - im2;
    (*out)->u.c.im = im + re2;
    return CKPT_OK;
}

/* torch.Size([ints]) */
static ckpt_status call_size(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 0, 1));
    if (c->nargs == 0)
        return new_seq(m, CKPT_SIZE, NULL, 0, out);
    const ckpt_value *src = c->args[0];
    if (!src || (src->kind != CKPT_TUPLE && src->kind != CKPT_LIST && src->kind != CKPT_SIZE))
        return bad_arg(m, c, 0, "sizes", "a tuple of ints");
    CKPT_RETURN_IF_ERROR(charge(m, src->u.seq.len));
    CKPT_RETURN_IF_ERROR(new_seq(m, CKPT_SIZE, src->u.seq.items, src->u.seq.len, out));
    ckpt_value *v = *out;
    for (size_t i = 0; i < v->u.seq.len; i++) {
        ckpt_value *x = v->u.seq.items[i];
        if (!is_intlike(x))
            return fail(m, CKPT_ERR_FORMAT, "%s: item %zu must be an int, not %s", c->name, i,
                        kind_desc(x));
        if (x->kind == CKPT_BOOLEAN) /* a Size holds ints */
            CKPT_RETURN_IF_ERROR(new_int(m, int_of(x), &v->u.seq.items[i]));
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
    if (type->kind != CKPT_STR)
        return bad_arg(m, c, 0, "type", "a str");
    const char *s = type->u.s.ptr;
    size_t n = type->u.s.len;
    const char *colon = memchr(s, ':', n);
    size_t tlen = colon ? (size_t)(colon - s) : n;
    int64_t index = -1;
    if (!device_type_ok(s, tlen))
        return fail(m, CKPT_ERR_FORMAT, "%s: invalid device string", c->name);
    if (colon) {
        uint64_t idx;
        size_t dn = n - tlen - 1;
        if (c->nargs == 2)
            return fail(m, CKPT_ERR_FORMAT, "%s: the type has an index and an index is passed too",
                        c->name);
        if (dn == 0 || dn > 9 || !parse_index(colon + 1, dn, &idx) || colon[1] == '+' ||
            is_space(colon[1]) || is_space(s[n - 1]))
            return fail(m, CKPT_ERR_FORMAT, "%s: invalid device string", c->name);
        index = (int64_t)idx;
    }
    if (c->nargs == 2 && c->args[1]->kind != CKPT_NONE) {
        if (c->args[1]->kind != CKPT_INT || c->args[1]->u.i < 0 || c->args[1]->u.i > INT32_MAX)
            return bad_arg(m, c, 1, "index", "a non-negative int");
        index = c->args[1]->u.i;
    }
    char buf[64];
    int len = index >= 0 ? snprintf(buf, sizeof(buf), "%.*s:%lld", (int)tlen, s, (long long)index)
                         : snprintf(buf, sizeof(buf), "%.*s", (int)tlen, s);
    return new_str(m, CKPT_DEVICE, buf, (size_t)len, out);
}

/* torch.serialization._get_layout('torch.strided') */
static ckpt_status call_get_layout(vm *m, const call *c, ckpt_value **out)
{
    CKPT_RETURN_IF_ERROR(check_nargs(m, c, 1, 1));
    const ckpt_value *name = c->args[0];
    if (name->kind != CKPT_STR)
        return bad_arg(m, c, 0, "name", "a str");
    for (uint32_t id = CKPT__G_STRIDED; id <= CKPT__G_MKLDNN; id++) {
        const global_def *g = find_global_by_id(id);
        if (g && str_is(name, g->full)) {
            CKPT_RETURN_IF_ERROR(new_value(m, CKPT_GLOBAL, out));
            (*out)->global_id = id;
            (*out)->u.s.ptr = g->full;
            (*out)->u.s.len = strlen(g->full);
            return CKPT_OK;
        }
    }
    char nb[64];
    return fail(m, CKPT_ERR_FORMAT, "%s: unknown layout '%s'", c->name,
                printable(nb, sizeof(nb), name->u.s.ptr, name->u.s.len));
}

static ckpt_status eval_call(vm *m, const call *c, ckpt_value **out)
{
    uint32_t id = c->fn->global_id;
    if (is_constant_id(id))
        return fail(m, CKPT_ERR_FORMAT, "%s is not callable", c->name);
    if (c->is_new && is_function_id(id))
        return fail(m, CKPT_ERR_FORMAT, "%s is a function, not a class", c->name);
    for (size_t i = 0; i < c->nargs; i++) {
        if (!c->args[i])
            return fail(m, CKPT_ERR_FORMAT, "%s: argument %zu is missing", c->name, i + 1);
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
    case CKPT__G_REBUILD_QTENSOR:
        return fail(m, CKPT_ERR_UNSUPPORTED, "quantized tensors are not supported (%s)", c->name);
    case CKPT__G_REBUILD_SPARSE_TENSOR:
        return fail(m, CKPT_ERR_UNSUPPORTED, "sparse tensors are not supported (%s)", c->name);
    case CKPT__G_REBUILD_WRAPPER_SUBCLASS:
        return fail(m, CKPT_ERR_UNSUPPORTED, "wrapper-subclass tensors are not supported (%s)",
                    c->name);
    case CKPT__G_REBUILD_DEVICE_TENSOR_FROM_NUMPY:
    case CKPT__G_REBUILD_DEVICE_TENSOR_FROM_CPU_TENSOR:
        return fail(m, CKPT_ERR_UNSUPPORTED, "device tensors are not supported (%s)", c->name);
    case CKPT__G_REBUILD_NESTED_TENSOR:
        return fail(m, CKPT_ERR_UNSUPPORTED, "nested tensors are not supported (%s)", c->name);
    case CKPT__G_TENSOR:
        return fail(m, CKPT_ERR_UNSUPPORTED, "constructing %s directly is not supported", c->name);
    default:
        if (id >= CKPT__G_STORAGE_FIRST_ && id <= CKPT__G_STORAGE_LAST_)
            return fail(m, CKPT_ERR_UNSUPPORTED, "constructing %s directly is not supported",
                        c->name);
        return fail(m, CKPT_ERR_FORMAT, "%s is not callable", c->name);
    }
}

/* Applies a stack value to arguments. Only allowed globals can be called;
 * anything else was refused when it was named, or is plain data. */
static ckpt_status apply(vm *m, const ckpt_value *fn, ckpt_value *const *args, size_t nargs,
                         bool is_new, ckpt_value **out)
{
    if (!fn || fn->kind != CKPT_GLOBAL) {
        if (fn && fn->kind == CKPT_DTYPE)
            return fail(m, CKPT_ERR_FORMAT, "torch.%s is not callable", ckpt_dtype_name(fn->u.dtype));
        return fail(m, CKPT_ERR_FORMAT, "a %s is not callable", kind_desc(fn));
    }
    call c = {
        .fn = fn, .name = fn->u.s.ptr, .args = args, .nargs = nargs, .is_new = is_new, .depth = 0,
    };
    return eval_call(m, &c, out);
}

/* ======================================================================
 * BUILD
 * ====================================================================== */

static ckpt_status op_build(vm *m)
{
    CKPT_RETURN_IF_ERROR(need_items(m, 2));
    ckpt_value *state = pop(m);
    ckpt_value *inst = m->stack[m->sp - 1];
    if (inst->kind == CKPT_TENSOR) {
        if (state->kind != CKPT_NONE)
            inst->u.tensor.state = state;
        return CKPT_OK;
    }
    if (!is_dict(inst))
        return fail(m, CKPT_ERR_FORMAT, "BUILD on a %s is not allowed", kind_desc(inst));
    /* Object attributes: a dict, or (dict, slots) with either part None. */
    ckpt_value *parts[2] = {NULL, NULL};
    if (is_dict(state)) {
        parts[0] = state;
    } else if (state->kind == CKPT_TUPLE && state->u.seq.len == 2) {
        for (int i = 0; i < 2; i++) {
            ckpt_value *p = state->u.seq.items[i];
            if (p && p->kind != CKPT_NONE && !is_dict(p))
                return fail(m, CKPT_ERR_FORMAT, "the state of a %s must be a dict", kind_desc(inst));
            parts[i] = p && p->kind != CKPT_NONE ? p : NULL;
        }
    } else if (state->kind != CKPT_NONE) {
        return fail(m, CKPT_ERR_FORMAT, "the state of a %s must be a dict, not a %s",
                    kind_desc(inst), kind_desc(state));
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
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_DICT, &merged));
    const ckpt_value *old = inst->u.dict.state;
    if (old) {
        for (size_t i = 0; i < old->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(dict_put(m, merged, old->u.dict.keys[i], old->u.dict.vals[i]));
    }
    for (int p = 0; p < 2; p++) {
        if (!parts[p])
            continue;
        for (size_t i = 0; i < parts[p]->u.dict.len; i++)
            CKPT_RETURN_IF_ERROR(
                dict_put(m, merged, parts[p]->u.dict.keys[i], parts[p]->u.dict.vals[i]));
    }
    inst->u.dict.state = merged;
    return CKPT_OK;
}

/* ======================================================================
 * The loop
 * ====================================================================== */

static ckpt_status persistent(vm *m, ckpt_value *pid)
{
    ckpt__pickle_ctx *ctx = m->ctx;
    if (!ctx->persistent_load)
        return fail(m, CKPT_ERR_FORMAT, "persistent id in a plain pickle");
    ckpt_value *v = NULL;
    ckpt_status st = ctx->persistent_load(ctx->user, ctx, pid, m->op_pos, &v, m->err);
    if (st != CKPT_OK)
        return st;
    if (!v)
        return fail(m, CKPT_ERR_FORMAT, "persistent id resolved to nothing");
    return push(m, v);
}

/* Pushes a fresh container made of the items above the last mark. */
static ckpt_status collect_marked(vm *m, int kind)
{
    size_t mark = 0;
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    CKPT_RETURN_IF_ERROR(new_seq(m, kind, m->stack + mark, m->sp - mark, &v));
    m->sp = mark;
    return push(m, v);
}

static ckpt_status collect_tuple(vm *m, size_t n)
{
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(need_items(m, n));
    CKPT_RETURN_IF_ERROR(new_seq(m, CKPT_TUPLE, m->stack + m->sp - n, n, &v));
    m->sp -= n;
    return push(m, v);
}

static ckpt_status op_dict(vm *m)
{
    size_t mark = 0;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    if ((m->sp - mark) % 2)
        return fail(m, CKPT_ERR_FORMAT, "odd number of items (%zu)", m->sp - mark);
    CKPT_RETURN_IF_ERROR(new_value(m, CKPT_DICT, &d));
    for (size_t i = mark; i < m->sp; i += 2)
        CKPT_RETURN_IF_ERROR(dict_put(m, d, m->stack[i], m->stack[i + 1]));
    m->sp = mark;
    return push(m, d);
}

static ckpt_status op_appends(vm *m)
{
    size_t mark = 0;
    ckpt_value *list;
    CKPT_RETURN_IF_ERROR(pop_mark_with_target(m, &mark, &list));
    if (list->kind != CKPT_LIST)
        return fail(m, CKPT_ERR_FORMAT, "APPENDS on a %s is not allowed (only on lists)",
                    kind_desc(list));
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)list->u.seq.len + (m->sp - mark)));
    for (size_t i = mark; i < m->sp; i++)
        CKPT_RETURN_IF_ERROR(seq_add(m, list, m->stack[i]));
    m->sp = mark;
    return CKPT_OK;
}

static ckpt_status op_setitems(vm *m)
{
    size_t mark = 0;
    ckpt_value *d;
    CKPT_RETURN_IF_ERROR(pop_mark_with_target(m, &mark, &d));
    if (!is_dict(d))
        return fail(m, CKPT_ERR_FORMAT, "SETITEMS on a %s is not allowed (only on dicts)",
                    kind_desc(d));
    if ((m->sp - mark) % 2)
        return fail(m, CKPT_ERR_FORMAT, "odd number of items (%zu)", m->sp - mark);
    for (size_t i = mark; i < m->sp; i += 2)
        CKPT_RETURN_IF_ERROR(dict_put(m, d, m->stack[i], m->stack[i + 1]));
    m->sp = mark;
    return CKPT_OK;
}

static ckpt_status op_additems(vm *m)
{
    size_t mark = 0;
    ckpt_value *set;
    CKPT_RETURN_IF_ERROR(pop_mark_with_target(m, &mark, &set));
    if (set->kind != CKPT_SET)
        return fail(m, CKPT_ERR_FORMAT, "ADDITEMS on a %s is not allowed (only on sets)",
                    kind_desc(set));
    CKPT_RETURN_IF_ERROR(check_len(m, (uint64_t)set->u.seq.len + (m->sp - mark)));
    for (size_t i = mark; i < m->sp; i++)
        CKPT_RETURN_IF_ERROR(seq_add(m, set, m->stack[i]));
    m->sp = mark;
    return CKPT_OK;
}

static ckpt_status op_stack_global(vm *m)
{
    CKPT_RETURN_IF_ERROR(need_items(m, 2));
    ckpt_value *name = pop(m);
    ckpt_value *module = pop(m);
    if (module->kind != CKPT_STR || name->kind != CKPT_STR)
        return fail(m, CKPT_ERR_FORMAT, "module and name must be str, not %s and %s",
                    kind_desc(module), kind_desc(name));
    ckpt_value *v;
    CKPT_RETURN_IF_ERROR(resolve_global(m, module->u.s.ptr, module->u.s.len, name->u.s.ptr,
                                        name->u.s.len, &v));
    return push(m, v);
}

static ckpt_status op_inst(vm *m)
{
    ckpt_value *cls, *v;
    size_t mark = 0;
    /* the global first: an unsafe name is the finding that matters */
    CKPT_RETURN_IF_ERROR(read_global(m, &cls));
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    CKPT_RETURN_IF_ERROR(apply(m, cls, m->stack + mark, m->sp - mark, false, &v));
    m->sp = mark;
    return push(m, v);
}

static ckpt_status op_obj(vm *m)
{
    ckpt_value *v;
    size_t mark = 0;
    CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
    if (m->sp == mark)
        return fail(m, CKPT_ERR_FORMAT, "no class above the MARK");
    CKPT_RETURN_IF_ERROR(apply(m, m->stack[mark], m->stack + mark + 1, m->sp - mark - 1, false, &v));
    m->sp = mark;
    return push(m, v);
}

static ckpt_status op_reduce(vm *m)
{
    CKPT_RETURN_IF_ERROR(need_items(m, 2));
    ckpt_value *args = m->stack[m->sp - 1], *fn = m->stack[m->sp - 2], *v;
    if (args->kind != CKPT_TUPLE)
        return fail(m, CKPT_ERR_FORMAT, "the arguments must be a tuple, not a %s", kind_desc(args));
    CKPT_RETURN_IF_ERROR(apply(m, fn, args->u.seq.items, args->u.seq.len, false, &v));
    m->sp -= 2;
    return push(m, v);
}

static ckpt_status op_newobj(vm *m, bool ex)
{
    CKPT_RETURN_IF_ERROR(need_items(m, ex ? 3 : 2));
    ckpt_value *kwargs = ex ? pop(m) : NULL;
    ckpt_value *args = pop(m), *cls = pop(m), *v;
    if (args->kind != CKPT_TUPLE)
        return fail(m, CKPT_ERR_FORMAT, "the arguments must be a tuple, not a %s", kind_desc(args));
    if (kwargs && !is_dict(kwargs))
        return fail(m, CKPT_ERR_FORMAT, "the keyword arguments must be a dict, not a %s",
                    kind_desc(kwargs));
    if (kwargs && kwargs->u.dict.len)
        return fail(m, CKPT_ERR_UNSUPPORTED, "keyword arguments are not supported");
    CKPT_RETURN_IF_ERROR(apply(m, cls, args->u.seq.items, args->u.seq.len, true, &v));
    return push(m, v);
}

static ckpt_status run(vm *m, ckpt_value **result)
{
    const uint8_t *p = NULL;
    const char *line;
    size_t len;
    uint32_t u32;
    uint64_t u64;
    ckpt_value *v;

    for (;;) {
        if (CKPT_UNLIKELY(m->pos >= m->end)) {
            m->op_pos = m->pos;
            if (m->size > m->end)
                return ckpt__fail(m->err, CKPT_ERR_LIMIT, m->ctx->record, m->pos,
                                  "the pickle is larger than max_pickle_bytes (%llu)",
                                  (unsigned long long)m->limits->max_pickle_bytes);
            return ckpt__fail(m->err, CKPT_ERR_FORMAT, m->ctx->record, m->pos,
                              "the pickle ends without a STOP opcode (truncated)");
        }
        m->op_pos = m->pos;
        m->op = m->data[m->pos++];
        switch (m->op) {
        /* ---- framing and control ---- */
        case OP_PROTO:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            if (u32 > 5)
                return fail(m, CKPT_ERR_UNSUPPORTED, "pickle protocol %u is not supported",
                            (unsigned)u32);
            m->ctx->protocol = (int)u32;
            break;
        case OP_FRAME:
            /* Only a buffering hint: opcodes may cross frames, and a frame
             * may claim more than there is (CPython's C unpickler stops
             * there, its Python one reads on). Every opcode checks its own
             * bounds, so nothing depends on it; stopping here would only
             * hide what follows from a scan. */
            CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            break;
        case OP_STOP:
            if (m->sp <= fence(m))
                return fail(m, CKPT_ERR_FORMAT, "the stack is empty");
            *result = m->stack[m->sp - 1];
            return CKPT_OK;
        case OP_MARK:
            CKPT_RETURN_IF_ERROR(push_mark(m));
            break;
        case OP_POP:
            if (m->nmarks && m->marks[m->nmarks - 1] == m->sp) {
                m->nmarks--; /* POP right after MARK drops the mark, as CPython */
            } else {
                CKPT_RETURN_IF_ERROR(need_items(m, 1));
                m->sp--;
            }
            break;
        case OP_POP_MARK: {
            size_t mark = 0;
            CKPT_RETURN_IF_ERROR(pop_mark(m, &mark));
            m->sp = mark;
            break;
        }
        case OP_DUP:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(push(m, m->stack[m->sp - 1]));
            break;

        /* ---- constants and numbers ---- */
        case OP_NONE:
            CKPT_RETURN_IF_ERROR(new_none(m, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_NEWTRUE:
        case OP_NEWFALSE:
            CKPT_RETURN_IF_ERROR(new_bool(m, m->op == OP_NEWTRUE, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_INT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (len == 2 && line[0] == '0' && (line[1] == '0' || line[1] == '1'))
                CKPT_RETURN_IF_ERROR(new_bool(m, line[1] == '1', &v));
            else
                CKPT_RETURN_IF_ERROR(parse_decimal(m, line, len, false, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(parse_decimal(m, line, len, true, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT:
            CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(new_int(m, (int32_t)u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT1:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            CKPT_RETURN_IF_ERROR(new_int(m, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BININT2:
            CKPT_RETURN_IF_ERROR(read_arg(m, 2, &p));
            CKPT_RETURN_IF_ERROR(new_int(m, ckpt__le16(p), &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG1:
            CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(make_long(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_LONG4:
            CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            if ((int32_t)u32 < 0)
                return fail(m, CKPT_ERR_FORMAT, "negative byte count %d", (int)(int32_t)u32);
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(make_long(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_FLOAT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(parse_float(m, line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINFLOAT: {
            CKPT_RETURN_IF_ERROR(read_arg(m, 8, &p));
            uint64_t bits = 0;
            double d;
            for (int i = 0; i < 8; i++)
                bits = (bits << 8) | p[i];
            memcpy(&d, &bits, sizeof(d));
            CKPT_RETURN_IF_ERROR(new_float(m, d, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        }

        /* ---- text and bytes ---- */
        case OP_STRING:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(decode_string_literal(m, (const uint8_t *)line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINSTRING:
        case OP_SHORT_BINSTRING:
            if (m->op == OP_BINSTRING) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                if ((int32_t)u32 < 0)
                    return fail(m, CKPT_ERR_FORMAT, "negative byte count %d", (int)(int32_t)u32);
            } else {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u32, &p));
            CKPT_RETURN_IF_ERROR(py2_str(m, p, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_UNICODE:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            CKPT_RETURN_IF_ERROR(decode_raw_unicode_escape(m, (const uint8_t *)line, len, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINUNICODE:
        case OP_SHORT_BINUNICODE:
        case OP_BINUNICODE8: {
            if (m->op == OP_BINUNICODE) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                u64 = u32;
            } else if (m->op == OP_SHORT_BINUNICODE) {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
                u64 = u32;
            } else {
                CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u64, &p));
            size_t bad = utf8_check(p, (size_t)u64, true);
            if (bad != (size_t)u64)
                return fail(m, CKPT_ERR_FORMAT, "invalid UTF-8 at byte %zu of the text", bad);
            CKPT_RETURN_IF_ERROR(new_str(m, CKPT_STR, p, (size_t)u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        }
        case OP_BINBYTES:
        case OP_SHORT_BINBYTES:
        case OP_BINBYTES8:
        case OP_BYTEARRAY8:
            if (m->op == OP_BINBYTES) {
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
                u64 = u32;
            } else if (m->op == OP_SHORT_BINBYTES) {
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
                u64 = u32;
            } else {
                CKPT_RETURN_IF_ERROR(read_u64(m, &u64));
            }
            CKPT_RETURN_IF_ERROR(read_payload(m, u64, &p));
            CKPT_RETURN_IF_ERROR(new_str(m, CKPT_BYTES, p, (size_t)u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;

        /* ---- containers ---- */
        case OP_EMPTY_LIST:
        case OP_EMPTY_DICT:
        case OP_EMPTY_SET:
            CKPT_RETURN_IF_ERROR(new_value(m, m->op == OP_EMPTY_LIST ? CKPT_LIST :
                                              m->op == OP_EMPTY_DICT ? CKPT_DICT : CKPT_SET, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_EMPTY_TUPLE:
            CKPT_RETURN_IF_ERROR(collect_tuple(m, 0));
            break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3:
            CKPT_RETURN_IF_ERROR(collect_tuple(m, (size_t)(m->op - OP_TUPLE1 + 1)));
            break;
        case OP_TUPLE:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_TUPLE));
            break;
        case OP_LIST:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_LIST));
            break;
        case OP_FROZENSET:
            CKPT_RETURN_IF_ERROR(collect_marked(m, CKPT_SET));
            break;
        case OP_DICT:
            CKPT_RETURN_IF_ERROR(op_dict(m));
            break;
        case OP_APPEND: {
            CKPT_RETURN_IF_ERROR(need_items(m, 2));
            ckpt_value *item = pop(m), *list = m->stack[m->sp - 1];
            if (list->kind != CKPT_LIST)
                return fail(m, CKPT_ERR_FORMAT, "APPEND on a %s is not allowed (only on lists)",
                            kind_desc(list));
            CKPT_RETURN_IF_ERROR(seq_add(m, list, item));
            break;
        }
        case OP_APPENDS:
            CKPT_RETURN_IF_ERROR(op_appends(m));
            break;
        case OP_SETITEM: {
            CKPT_RETURN_IF_ERROR(need_items(m, 3));
            ckpt_value *val = pop(m), *key = pop(m), *d = m->stack[m->sp - 1];
            if (!is_dict(d))
                return fail(m, CKPT_ERR_FORMAT, "SETITEM on a %s is not allowed (only on dicts)",
                            kind_desc(d));
            CKPT_RETURN_IF_ERROR(dict_put(m, d, key, val));
            break;
        }
        case OP_SETITEMS:
            CKPT_RETURN_IF_ERROR(op_setitems(m));
            break;
        case OP_ADDITEMS:
            CKPT_RETURN_IF_ERROR(op_additems(m));
            break;

        /* ---- memo ---- */
        case OP_PUT:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (!parse_index(line, len, &u64))
                return fail(m, CKPT_ERR_FORMAT, "invalid memo key");
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, u64, m->stack[m->sp - 1]));
            break;
        case OP_BINPUT:
        case OP_LONG_BINPUT:
            if (m->op == OP_BINPUT)
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            else
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, u32, m->stack[m->sp - 1]));
            break;
        case OP_MEMOIZE:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(memo_put(m, m->memo_count, m->stack[m->sp - 1]));
            break;
        case OP_GET:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            if (!parse_index(line, len, &u64))
                return fail(m, CKPT_ERR_FORMAT, "invalid memo key");
            CKPT_RETURN_IF_ERROR(memo_get(m, u64, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_BINGET:
        case OP_LONG_BINGET:
            if (m->op == OP_BINGET)
                CKPT_RETURN_IF_ERROR(read_u8(m, &u32));
            else
                CKPT_RETURN_IF_ERROR(read_u32(m, &u32));
            CKPT_RETURN_IF_ERROR(memo_get(m, u32, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;

        /* ---- globals and calls ---- */
        case OP_GLOBAL:
            CKPT_RETURN_IF_ERROR(read_global(m, &v));
            CKPT_RETURN_IF_ERROR(push(m, v));
            break;
        case OP_STACK_GLOBAL:
            CKPT_RETURN_IF_ERROR(op_stack_global(m));
            break;
        case OP_REDUCE:
            CKPT_RETURN_IF_ERROR(op_reduce(m));
            break;
        case OP_NEWOBJ:
        case OP_NEWOBJ_EX:
            CKPT_RETURN_IF_ERROR(op_newobj(m, m->op == OP_NEWOBJ_EX));
            break;
        case OP_INST:
            CKPT_RETURN_IF_ERROR(op_inst(m));
            break;
        case OP_OBJ:
            CKPT_RETURN_IF_ERROR(op_obj(m));
            break;
        case OP_BUILD:
            CKPT_RETURN_IF_ERROR(op_build(m));
            break;

        /* ---- persistent ids ---- */
        case OP_PERSID:
            CKPT_RETURN_IF_ERROR(read_line(m, &line, &len));
            for (size_t i = 0; i < len; i++) {
                if ((unsigned char)line[i] >= 0x80)
                    return fail(m, CKPT_ERR_FORMAT, "persistent id is not ASCII");
            }
            CKPT_RETURN_IF_ERROR(new_str(m, CKPT_STR, line, len, &v));
            CKPT_RETURN_IF_ERROR(persistent(m, v));
            break;
        case OP_BINPERSID:
            CKPT_RETURN_IF_ERROR(need_items(m, 1));
            CKPT_RETURN_IF_ERROR(persistent(m, pop(m)));
            break;

        /* ---- refused ---- */
        case OP_EXT1:
        case OP_EXT2:
        case OP_EXT4:
            return fail(m, CKPT_ERR_UNSUPPORTED,
                        "the extension registry (copyreg) is not supported");
        case OP_NEXT_BUFFER:
        case OP_READONLY_BUFFER:
            return fail(m, CKPT_ERR_UNSUPPORTED, "out-of-band buffers are not supported");
        default:
            return ckpt__fail(m->err, CKPT_ERR_FORMAT, m->ctx->record, m->op_pos,
                              "unknown opcode 0x%02x", m->op);
        }
    }
}

ckpt_status ckpt__unpickle(ckpt__pickle_ctx *ctx, const uint8_t *data, size_t size,
                           size_t *consumed, ckpt_value **out, ckpt_error *err)
{
    if (consumed)
        *consumed = 0;
    if (out)
        *out = NULL;
    if (!ctx || !ctx->arena || !out || (!data && size))
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, ctx ? ctx->record : "", CKPT_NO_OFFSET,
                          "ckpt__unpickle: NULL argument");
    ctx->protocol = -1;

    ckpt_limits defaults;
    const ckpt_limits *limits = ctx->limits;
    if (!limits || limits->struct_size == 0) {
        ckpt_limits_default(&defaults);
        limits = &defaults;
    }
    vm m;
    memset(&m, 0, sizeof(m));
    m.ctx = ctx;
    m.arena = ctx->arena;
    m.limits = limits;
    m.err = err;
    m.data = data ? data : (const uint8_t *)"";
    m.size = size;
    m.end = (uint64_t)size > limits->max_pickle_bytes ? (size_t)limits->max_pickle_bytes : size;
    /* Generous: a real pickle does a few units per byte. */
    m.work_limit = (uint64_t)m.end * 64 + ((uint64_t)1 << 30);

    ckpt_value *result = NULL;
    ckpt_status st;
    /* never NULL: stack + mark is computed even when the stack is empty */
    m.stack_cap = 64;
    m.stack = malloc(m.stack_cap * sizeof(*m.stack));
    if (!m.stack)
        st = ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, 0, "out of memory");
    else
        st = run(&m, &result);
    if (st == CKPT_OK) {
        *out = result;
        if (consumed)
            *consumed = m.pos;
    }
    free(m.stack);
    free(m.marks);
    free(m.memo);
    return st;
}
