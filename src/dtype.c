/*
 * dtype.c - the dtype table: names, sizes, safetensors names.
 */
#include "internal.h"

typedef struct dtype_desc {
    const char *name;
    const char *st_name;   /* safetensors, NULL when it has none */
    unsigned bits;
    bool floating;
} dtype_desc;

static const dtype_desc DTYPES[CKPT_DTYPE_COUNT_] = {
    [CKPT_DTYPE_INVALID] = {"invalid", NULL, 0, false},
    [CKPT_DTYPE_FLOAT64] = {"float64", "F64", 64, true},
    [CKPT_DTYPE_FLOAT32] = {"float32", "F32", 32, true},
    [CKPT_DTYPE_FLOAT16] = {"float16", "F16", 16, true},
    [CKPT_DTYPE_BFLOAT16] = {"bfloat16", "BF16", 16, true},
    [CKPT_DTYPE_COMPLEX128] = {"complex128", NULL, 128, false},
    [CKPT_DTYPE_COMPLEX64] = {"complex64", "C64", 64, false},
    [CKPT_DTYPE_COMPLEX32] = {"complex32", NULL, 32, false},
    [CKPT_DTYPE_INT64] = {"int64", "I64", 64, false},
    [CKPT_DTYPE_INT32] = {"int32", "I32", 32, false},
    [CKPT_DTYPE_INT16] = {"int16", "I16", 16, false},
    [CKPT_DTYPE_INT8] = {"int8", "I8", 8, false},
    [CKPT_DTYPE_UINT64] = {"uint64", "U64", 64, false},
    [CKPT_DTYPE_UINT32] = {"uint32", "U32", 32, false},
    [CKPT_DTYPE_UINT16] = {"uint16", "U16", 16, false},
    [CKPT_DTYPE_UINT8] = {"uint8", "U8", 8, false},
    [CKPT_DTYPE_BOOL] = {"bool", "BOOL", 8, false},
    [CKPT_DTYPE_FLOAT8_E5M2] = {"float8_e5m2", "F8_E5M2", 8, true},
    [CKPT_DTYPE_FLOAT8_E4M3FN] = {"float8_e4m3fn", "F8_E4M3", 8, true},
    [CKPT_DTYPE_FLOAT8_E5M2FNUZ] = {"float8_e5m2fnuz", NULL, 8, true},
    [CKPT_DTYPE_FLOAT8_E4M3FNUZ] = {"float8_e4m3fnuz", NULL, 8, true},
    [CKPT_DTYPE_FLOAT8_E8M0FNU] = {"float8_e8m0fnu", "F8_E8M0", 8, true},
    [CKPT_DTYPE_QINT8] = {"qint8", NULL, 8, false},
    [CKPT_DTYPE_QUINT8] = {"quint8", NULL, 8, false},
    [CKPT_DTYPE_QINT32] = {"qint32", NULL, 32, false},
    [CKPT_DTYPE_QUINT4X2] = {"quint4x2", NULL, 4, false},
    [CKPT_DTYPE_QUINT2X4] = {"quint2x4", NULL, 2, false},
    [CKPT_DTYPE_BITS8] = {"bits8", NULL, 8, false},
    [CKPT_DTYPE_BITS16] = {"bits16", NULL, 16, false},
    [CKPT_DTYPE_BITS1X8] = {"bits1x8", NULL, 8, false},
    [CKPT_DTYPE_BITS2X4] = {"bits2x4", NULL, 8, false},
    [CKPT_DTYPE_BITS4X2] = {"bits4x2", NULL, 8, false},
    [CKPT_DTYPE_FLOAT4_E2M1FN_X2] = {"float4_e2m1fn_x2", NULL, 8, true},
    [CKPT_DTYPE_FLOAT4_E2M1] = {"float4_e2m1", "F4", 4, true},
    [CKPT_DTYPE_FLOAT6_E2M3] = {"float6_e2m3", "F6_E2M3", 6, true},
    [CKPT_DTYPE_FLOAT6_E3M2] = {"float6_e3m2", "F6_E3M2", 6, true},
};

static const dtype_desc *desc(ckpt_dtype d)
{
    if ((unsigned)d >= CKPT_DTYPE_COUNT_)
        return &DTYPES[CKPT_DTYPE_INVALID];
    return &DTYPES[d];
}

const char *ckpt_dtype_name(ckpt_dtype dtype) { return desc(dtype)->name; }
unsigned ckpt_dtype_bits(ckpt_dtype dtype) { return desc(dtype)->bits; }
const char *ckpt_dtype_safetensors_name(ckpt_dtype dtype) { return desc(dtype)->st_name; }
bool ckpt_dtype_is_floating(ckpt_dtype dtype) { return desc(dtype)->floating; }

size_t ckpt_dtype_size(ckpt_dtype dtype)
{
    unsigned bits = desc(dtype)->bits;
    return bits % 8 ? 0 : bits / 8;
}

ckpt_dtype ckpt_dtype_from_name(const char *name)
{
    if (!name)
        return CKPT_DTYPE_INVALID;
    if (strncmp(name, "torch.", 6) == 0)
        name += 6;
    for (int d = 1; d < CKPT_DTYPE_COUNT_; d++) {
        if (strcmp(DTYPES[d].name, name) == 0)
            return (ckpt_dtype)d;
    }
    for (int d = 1; d < CKPT_DTYPE_COUNT_; d++) {
        if (DTYPES[d].st_name && strcmp(DTYPES[d].st_name, name) == 0)
            return (ckpt_dtype)d;
    }
    static const struct { const char *alias; ckpt_dtype d; } ALIASES[] = {
        {"double", CKPT_DTYPE_FLOAT64}, {"float", CKPT_DTYPE_FLOAT32}, {"half", CKPT_DTYPE_FLOAT16},
        {"cdouble", CKPT_DTYPE_COMPLEX128}, {"cfloat", CKPT_DTYPE_COMPLEX64},
        {"chalf", CKPT_DTYPE_COMPLEX32},
        {"long", CKPT_DTYPE_INT64}, {"int", CKPT_DTYPE_INT32}, {"short", CKPT_DTYPE_INT16},
    };
    for (size_t i = 0; i < sizeof(ALIASES) / sizeof(ALIASES[0]); i++) {
        if (strcmp(ALIASES[i].alias, name) == 0)
            return ALIASES[i].d;
    }
    return CKPT_DTYPE_INVALID;
}
