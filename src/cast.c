/*
 * cast.c - conversions between the floating dtypes checkpoints use:
 * float64, float32, float16 and bfloat16.
 *
 * Narrowing rounds to nearest, ties to even, exactly as PyTorch's .to(dtype)
 * does: float64 -> float16/bfloat16 rounds to float32 first, then to the
 * narrow type (PyTorch's Half and BFloat16 are built from a float), so the
 * files ckpt converts hold the bits torch would have written.
 * NaN stays NaN (quiet, sign and top payload bits kept), infinities stay
 * infinite, subnormals are produced and read exactly.
 */
#include "internal.h"


static float bits_f32(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

static uint32_t f32_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) /* inf, NaN */
        return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp != 0)
        return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    /* zero and subnormals: mant x 2^-24, exact in float32 */
    float v = (float)mant * 0x1p-24f;
    return sign ? -v : v;
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) /* >= 65520 (and inf) rounds to inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax >= 0x38800000u) { /* normal in float16: rebias, round */
        uint32_t r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    /* subnormal or zero: q = value / 2^-24, rounded to even */
    uint32_t exp = ax >> 23;
    if (exp < 102) /* below 2^-25: rounds to zero */
        return sign;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp; /* 14 ..  24 */
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

static float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static uint16_t f32_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it quiet */
        return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fffu + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}

ckpt_status ckpt_convert_dtype(ckpt_dtype to, void *dst, ckpt_dtype from, const void *src,
                               size_t count)
{
    if (count && (!dst || !src))
        return CKPT_ERR_INVALID_ARG;
    if (to == from) {
        size_t esz = ckpt_dtype_size(to);
        if (esz == 0)
            return CKPT_ERR_TYPE;
        if (count > SIZE_MAX / esz)
            return CKPT_ERR_INVALID_ARG;
        if (count)
            memmove(dst, src, count * esz);
        return CKPT_OK;
    }
    if (!ckpt__dtype_castable(to) || !ckpt__dtype_castable(from))
        return CKPT_ERR_TYPE;
    const uint8_t *s = src;
    uint8_t *o = dst;
    for (size_t i = 0; i < count; i++) {
        /* load: exact into float32, or keep the double */
        double d = 0;
        float f = 0;
        bool wide = false;
        switch (from) {
        case CKPT_DTYPE_FLOAT64:
            memcpy(&d, s + i * 8, 8);
            wide = true;
            break;
        case CKPT_DTYPE_FLOAT32:
            memcpy(&f, s + i * 4, 4);
            break;
        case CKPT_DTYPE_FLOAT16: {
            uint16_t h;
            memcpy(&h, s + i * 2, 2);
            f = f16_to_f32(h);
            break;
        }
        default: { /* bfloat16 */
            uint16_t h;
            memcpy(&h, s + i * 2, 2);
            f = bf16_to_f32(h);
            break;
        }
        }
        switch (to) {
        case CKPT_DTYPE_FLOAT64: {
            double v = wide ? d : (double)f;
            memcpy(o + i * 8, &v, 8);
            break;
        }
        case CKPT_DTYPE_FLOAT32: {
            float v = wide ? (float)d : f;
            memcpy(o + i * 4, &v, 4);
            break;
        }
        case CKPT_DTYPE_FLOAT16: {
            uint16_t h = f32_to_f16(wide ? (float)d : f);
            memcpy(o + i * 2, &h, 2);
            break;
        }
        default: {
            uint16_t h = f32_to_bf16(wide ? (float)d : f);
            memcpy(o + i * 2, &h, 2);
            break;
        }
        }
    }
    return CKPT_OK;
}
