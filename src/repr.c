/*
 * repr.c - Python's text of values: repr() of a plain value, str() of a
 * dict key, the shortest text of a double that reads back as itself, and
 * the decimal text of an int of any size.
 *
 * Tensor names (dict keys), safetensors metadata and the ckpt tool all show
 * values through these, so a value reads the same everywhere. Every writer
 * here works like snprintf: it writes what fits (NUL included) and returns
 * the length the whole text needs.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Containers nested deeper show as [...]: Python would stop with a
 * RecursionError long before a checkpoint's real depth matters. */
#define REPR_MAX_DEPTH 100
/* Text past this is cut with "...": a container shared through the pickle
 * memo can repeat 2^depth times, so the text of a small file has no other
 * bound. */
#define REPR_MAX_LEN ((size_t)64 << 20)
/* A dict key's text in a tensor name is cut sooner: names are walked once
 * per path, and a key is a few words, not a document. */
#define KEY_MAX_LEN ((size_t)1024)
/* Python's str() of an int refuses more digits than this
 * (sys.int_info.default_max_str_digits); those ints show in hex. */
#define INT_MAX_STR_DIGITS 4300

/* ---- the output: a caller's buffer, counting what does not fit --------- */

typedef struct out {
    char *buf;
    size_t cap;       /* bytes of buf, the NUL included; 0: only count */
    size_t len;       /* the whole text's length so far */
    size_t limit;     /* REPR_MAX_LEN or KEY_MAX_LEN */
    bool cut;         /* limit reached: the rest is dropped */
} out;

static void put_raw(out *o, const char *s, size_t n)
{
    if (o->len + 1 < o->cap) {
        size_t room = o->cap - 1 - o->len;
        memcpy(o->buf + o->len, s, n < room ? n : room);
    }
    o->len += n;
}

static void put(out *o, const char *s, size_t n)
{
    if (o->cut)
        return;
    if (n > o->limit - o->len) {
        put_raw(o, s, o->limit - o->len);
        put_raw(o, "...", 3);
        o->cut = true;
        return;
    }
    put_raw(o, s, n);
}

static void put_str(out *o, const char *s) { put(o, s, strlen(s)); }
static void put_chr(out *o, char c) { put(o, &c, 1); }

static void put_int(out *o, long long v)
{
    char tmp[24];
    put(o, tmp, (size_t)snprintf(tmp, sizeof(tmp), "%lld", v));
}

/* NUL-terminates what was written; returns the whole length. */
static size_t out_end(out *o)
{
    if (o->cap)
        o->buf[o->len < o->cap ? o->len : o->cap - 1] = 0;
    return o->len;
}

/* ---- floats ---------------------------------------------------------------- */

/* "D.DDDe+XX" (from %e) into its digits and decimal exponent. */
static size_t split_sci(const char *sci, char digits[24], int *exp)
{
    size_t nd = 0;
    const char *q = sci;
    for (; *q && *q != 'e'; q++) {
        if (*q >= '0' && *q <= '9' && nd < 23)
            digits[nd++] = *q;
    }
    digits[nd] = 0;
    *exp = *q == 'e' ? atoi(q + 1) : 0;
    return nd;
}

/* The digits one unit up in their last place: 0.199 -> 0.200, 9.99 -> 10.0. */
static void next_digits(char *digits, size_t nd, int *exp)
{
    size_t i = nd;
    while (i > 0 && digits[i - 1] == '9')
        digits[--i] = '0';
    if (i > 0) {
        digits[i - 1]++;
    } else {
        digits[0] = '1';
        (*exp)++;
    }
}

/* The double nearest D.DDD x 10^exp. */
static double digits_value(const char *digits, size_t nd, int exp)
{
    char text[48];
    snprintf(text, sizeof(text), "0.%.*se%d", (int)nd, digits, exp + 1);
    return strtod(text, NULL);
}

static void put_float(out *o, double d, unsigned flags)
{
    if (isnan(d)) {
        /* Python shows no sign on a NaN */
        put_str(o, flags & CKPT__FLOAT_SIGN ? "+nan" : "nan");
        return;
    }
    if (signbit(d))
        put_chr(o, '-');
    else if (flags & CKPT__FLOAT_SIGN)
        put_chr(o, '+');
    d = fabs(d);
    if (isinf(d)) {
        put_str(o, "inf");
        return;
    }
    /* the fewest significant digits that read back as d (17 always do) */
    char digits[24];
    size_t nd = 0;
    int exp = 0;
    for (int prec = 0; prec <= 16; prec++) {
        char sci[40];
        snprintf(sci, sizeof(sci), "%.*e", prec, d);
        nd = split_sci(sci, digits, &exp);
        if (strtod(sci, NULL) == d)
            break;
        /* at a power of two the gap below d is half the gap above: the
         * digits one unit above the nearest ones may read back when the
         * nearest do not */
        next_digits(digits, nd, &exp);
        if (digits_value(digits, nd, exp) == d)
            break;
    }
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    /* fixed notation when -4 <= exp < 16, else D.DDDe+XX */
    if (exp < -4 || exp >= 16) {
        put(o, digits, 1);
        if (nd > 1) {
            put_chr(o, '.');
            put(o, digits + 1, nd - 1);
        }
        /* e+16, e-05: two digits at least */
        put_str(o, exp < 0 ? (exp > -10 ? "e-0" : "e-") : (exp < 10 ? "e+0" : "e+"));
        put_int(o, exp < 0 ? -exp : exp);
    } else if (exp < 0) {
        put_str(o, "0.");
        for (int i = 0; i < -exp - 1; i++)
            put_chr(o, '0');
        put(o, digits, nd);
    } else {
        size_t ip = (size_t)exp + 1;
        put(o, digits, nd < ip ? nd : ip);
        for (size_t i = nd; i < ip; i++)
            put_chr(o, '0');
        if (nd > ip) {
            put_chr(o, '.');
            put(o, digits + ip, nd - ip);
        } else if (!(flags & CKPT__FLOAT_NO_DOT0)) {
            put_str(o, ".0");
        }
    }
}

size_t ckpt__float_repr(double d, unsigned flags, char *buf, size_t cap)
{
    out o = {.buf = buf, .cap = buf ? cap : 0, .limit = REPR_MAX_LEN};
    put_float(&o, d, flags);
    return out_end(&o);
}

/* ---- ints of any size ------------------------------------------------------ */

/* The fewest of the n bytes (little-endian two's complement) that hold the
 * same value: a hostile file may pad a small int with a million bytes. */
static size_t bigint_trim(const uint8_t *p, size_t n)
{
    while (n > 1 && ((p[n - 1] == 0x00 && !(p[n - 2] & 0x80)) ||
                     (p[n - 1] == 0xff && (p[n - 2] & 0x80))))
        n--;
    return n;
}

/* Byte i of the magnitude of the n-byte int p (negative when its top bit is
 * set): -x = ~x + 1, where the +1 carries through the low zero bytes up to
 * the first non-zero one (index nz). */
static uint8_t magnitude_byte(const uint8_t *p, size_t n, size_t nz, size_t i)
{
    if (!(p[n - 1] & 0x80))
        return p[i];
    if (i < nz)
        return 0;
    return (uint8_t)(i == nz ? -(unsigned)p[i] : ~(unsigned)p[i]);
}

static size_t first_nonzero(const uint8_t *p, size_t n)
{
    size_t nz = 0;
    while (nz < n && p[nz] == 0)
        nz++;
    return nz;
}

/* hex(): [-]0x and the magnitude's digits, lowercase. */
static void put_bigint_hex(out *o, const uint8_t *p, size_t n)
{
    static const char HEX[] = "0123456789abcdef";
    n = bigint_trim(p, n);
    bool neg = n && (p[n - 1] & 0x80);
    put_str(o, neg ? "-0x" : "0x");
    size_t nz = first_nonzero(p, n);
    bool lead = true;
    for (size_t i = n; i-- > 0 && !o->cut;) {
        uint8_t b = magnitude_byte(p, n, nz, i);
        char two[2] = {HEX[b >> 4], HEX[b & 15]};
        size_t skip = lead ? (b == 0 ? 2 : b < 16) : 0;
        if (skip < 2) {
            put(o, two + skip, 2 - skip);
            lead = false;
        }
    }
    if (lead)
        put_chr(o, '0');
}

char *ckpt__bigint_decimal(const uint8_t *p, size_t n, size_t *len)
{
    n = bigint_trim(p, n);
    bool neg = n && (p[n - 1] & 0x80);
    size_t nz = first_nonzero(p, n);
    /* 32-bit limbs of the magnitude, then its base 10^9 digits: 8n bits
     * make at most 2.41n + 1 decimal digits, n / 3 + 2 groups of nine */
    size_t nlimbs = n / 4 + 1, ngroups = n / 3 + 2, words, text;
    if (__builtin_add_overflow(nlimbs, ngroups, &words) ||
        __builtin_mul_overflow(ngroups, (size_t)9, &text) ||
        __builtin_add_overflow(text, (size_t)2, &text))
        return NULL;
    uint32_t *limbs = calloc(words, sizeof(uint32_t));
    char *s = malloc(text);
    if (!limbs || !s) {
        free(limbs);
        free(s);
        return NULL;
    }
    uint32_t *groups = limbs + nlimbs;
    for (size_t i = 0; i < n; i++)
        limbs[i / 4] |= (uint32_t)magnitude_byte(p, n, nz, i) << (8 * (i % 4));
    size_t top = nlimbs, g = 0;
    do {
        while (top && limbs[top - 1] == 0)
            top--;
        uint64_t rem = 0;
        for (size_t i = top; i-- > 0;) {
            uint64_t cur = (rem << 32) | limbs[i];
            limbs[i] = (uint32_t)(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        groups[g++] = (uint32_t)rem;
        while (top && limbs[top - 1] == 0)
            top--;
    } while (top);
    size_t k = (size_t)snprintf(s, text, "%s%u", neg ? "-" : "", (unsigned)groups[g - 1]);
    while (--g > 0)
        k += (size_t)snprintf(s + k, text - k, "%09u", (unsigned)groups[g - 1]);
    free(limbs);
    if (len)
        *len = k;
    return s;
}

/* str(int) for the digits Python shows, hex() for the longer ones (and
 * when memory is short). */
static void put_bigint(out *o, const uint8_t *p, size_t n)
{
    /* 1800 bytes: about 4335 digits, so every int Python shows in decimal */
    size_t m = bigint_trim(p, n);
    if (m <= 1800) {
        size_t len;
        char *dec = ckpt__bigint_decimal(p, m, &len);
        if (dec && len - (dec[0] == '-') <= INT_MAX_STR_DIGITS) {
            put(o, dec, len);
            free(dec);
            return;
        }
        free(dec);
    }
    put_bigint_hex(o, p, m);
}

/* ---- text and bytes ------------------------------------------------------ */

long ckpt__utf8_next(const unsigned char *s, size_t n, size_t *used)
{
    *used = 1;
    unsigned c = s[0];
    if (c < 0x80)
        return (long)c;
    size_t len;
    unsigned long cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return -1;
    }
    if (n < len)
        return -1;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return -1;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff)
        return -1;
    *used = len;
    return (long)cp;
}

bool ckpt__utf8_valid(const char *s, size_t n, bool allow_nul)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        if (p[i] >= 0x80) {
            size_t used;
            long cp = ckpt__utf8_next(p + i, n - i, &used);
            if (cp < 0 || (cp >= 0xd800 && cp <= 0xdfff))
                return false;
            i += used;
        } else if (p[i] == 0 && !allow_nul) {
            return false;
        } else {
            i++;
        }
    }
    return true;
}

/* Code points outside ASCII that Python's repr escapes (str.isprintable()
 * is false): categories Cc, Cf, Cs, Co, Cn (unassigned), Zl, Zp, and Zs but
 * the space, as Python 3.11 (Unicode 14.0) assigns them. Made by
 * scripts/gen_not_printable.py. */
static const uint32_t NOT_PRINTABLE[][2] = {
    /* Python 3.11, Unicode 14.0.0: 700 ranges */
    {0x7f, 0xa0}, {0xad, 0xad}, {0x378, 0x379}, {0x380, 0x383}, {0x38b, 0x38b}, {0x38d, 0x38d},
    {0x3a2, 0x3a2}, {0x530, 0x530}, {0x557, 0x558}, {0x58b, 0x58c}, {0x590, 0x590}, {0x5c8, 0x5cf},
    {0x5eb, 0x5ee}, {0x5f5, 0x605}, {0x61c, 0x61c}, {0x6dd, 0x6dd}, {0x70e, 0x70f}, {0x74b, 0x74c},
    {0x7b2, 0x7bf}, {0x7fb, 0x7fc}, {0x82e, 0x82f}, {0x83f, 0x83f}, {0x85c, 0x85d}, {0x85f, 0x85f},
    {0x86b, 0x86f}, {0x88f, 0x897}, {0x8e2, 0x8e2}, {0x984, 0x984}, {0x98d, 0x98e}, {0x991, 0x992},
    {0x9a9, 0x9a9}, {0x9b1, 0x9b1}, {0x9b3, 0x9b5}, {0x9ba, 0x9bb}, {0x9c5, 0x9c6}, {0x9c9, 0x9ca},
    {0x9cf, 0x9d6}, {0x9d8, 0x9db}, {0x9de, 0x9de}, {0x9e4, 0x9e5}, {0x9ff, 0xa00}, {0xa04, 0xa04},
    {0xa0b, 0xa0e}, {0xa11, 0xa12}, {0xa29, 0xa29}, {0xa31, 0xa31}, {0xa34, 0xa34}, {0xa37, 0xa37},
    {0xa3a, 0xa3b}, {0xa3d, 0xa3d}, {0xa43, 0xa46}, {0xa49, 0xa4a}, {0xa4e, 0xa50}, {0xa52, 0xa58},
    {0xa5d, 0xa5d}, {0xa5f, 0xa65}, {0xa77, 0xa80}, {0xa84, 0xa84}, {0xa8e, 0xa8e}, {0xa92, 0xa92},
    {0xaa9, 0xaa9}, {0xab1, 0xab1}, {0xab4, 0xab4}, {0xaba, 0xabb}, {0xac6, 0xac6}, {0xaca, 0xaca},
    {0xace, 0xacf}, {0xad1, 0xadf}, {0xae4, 0xae5}, {0xaf2, 0xaf8}, {0xb00, 0xb00}, {0xb04, 0xb04},
    {0xb0d, 0xb0e}, {0xb11, 0xb12}, {0xb29, 0xb29}, {0xb31, 0xb31}, {0xb34, 0xb34}, {0xb3a, 0xb3b},
    {0xb45, 0xb46}, {0xb49, 0xb4a}, {0xb4e, 0xb54}, {0xb58, 0xb5b}, {0xb5e, 0xb5e}, {0xb64, 0xb65},
    {0xb78, 0xb81}, {0xb84, 0xb84}, {0xb8b, 0xb8d}, {0xb91, 0xb91}, {0xb96, 0xb98}, {0xb9b, 0xb9b},
    {0xb9d, 0xb9d}, {0xba0, 0xba2}, {0xba5, 0xba7}, {0xbab, 0xbad}, {0xbba, 0xbbd}, {0xbc3, 0xbc5},
    {0xbc9, 0xbc9}, {0xbce, 0xbcf}, {0xbd1, 0xbd6}, {0xbd8, 0xbe5}, {0xbfb, 0xbff}, {0xc0d, 0xc0d},
    {0xc11, 0xc11}, {0xc29, 0xc29}, {0xc3a, 0xc3b}, {0xc45, 0xc45}, {0xc49, 0xc49}, {0xc4e, 0xc54},
    {0xc57, 0xc57}, {0xc5b, 0xc5c}, {0xc5e, 0xc5f}, {0xc64, 0xc65}, {0xc70, 0xc76}, {0xc8d, 0xc8d},
    {0xc91, 0xc91}, {0xca9, 0xca9}, {0xcb4, 0xcb4}, {0xcba, 0xcbb}, {0xcc5, 0xcc5}, {0xcc9, 0xcc9},
    {0xcce, 0xcd4}, {0xcd7, 0xcdc}, {0xcdf, 0xcdf}, {0xce4, 0xce5}, {0xcf0, 0xcf0}, {0xcf3, 0xcff},
    {0xd0d, 0xd0d}, {0xd11, 0xd11}, {0xd45, 0xd45}, {0xd49, 0xd49}, {0xd50, 0xd53}, {0xd64, 0xd65},
    {0xd80, 0xd80}, {0xd84, 0xd84}, {0xd97, 0xd99}, {0xdb2, 0xdb2}, {0xdbc, 0xdbc}, {0xdbe, 0xdbf},
    {0xdc7, 0xdc9}, {0xdcb, 0xdce}, {0xdd5, 0xdd5}, {0xdd7, 0xdd7}, {0xde0, 0xde5}, {0xdf0, 0xdf1},
    {0xdf5, 0xe00}, {0xe3b, 0xe3e}, {0xe5c, 0xe80}, {0xe83, 0xe83}, {0xe85, 0xe85}, {0xe8b, 0xe8b},
    {0xea4, 0xea4}, {0xea6, 0xea6}, {0xebe, 0xebf}, {0xec5, 0xec5}, {0xec7, 0xec7}, {0xece, 0xecf},
    {0xeda, 0xedb}, {0xee0, 0xeff}, {0xf48, 0xf48}, {0xf6d, 0xf70}, {0xf98, 0xf98}, {0xfbd, 0xfbd},
    {0xfcd, 0xfcd}, {0xfdb, 0xfff}, {0x10c6, 0x10c6}, {0x10c8, 0x10cc}, {0x10ce, 0x10cf},
    {0x1249, 0x1249}, {0x124e, 0x124f}, {0x1257, 0x1257}, {0x1259, 0x1259}, {0x125e, 0x125f},
    {0x1289, 0x1289}, {0x128e, 0x128f}, {0x12b1, 0x12b1}, {0x12b6, 0x12b7}, {0x12bf, 0x12bf},
    {0x12c1, 0x12c1}, {0x12c6, 0x12c7}, {0x12d7, 0x12d7}, {0x1311, 0x1311}, {0x1316, 0x1317},
    {0x135b, 0x135c}, {0x137d, 0x137f}, {0x139a, 0x139f}, {0x13f6, 0x13f7}, {0x13fe, 0x13ff},
    {0x1680, 0x1680}, {0x169d, 0x169f}, {0x16f9, 0x16ff}, {0x1716, 0x171e}, {0x1737, 0x173f},
    {0x1754, 0x175f}, {0x176d, 0x176d}, {0x1771, 0x1771}, {0x1774, 0x177f}, {0x17de, 0x17df},
    {0x17ea, 0x17ef}, {0x17fa, 0x17ff}, {0x180e, 0x180e}, {0x181a, 0x181f}, {0x1879, 0x187f},
    {0x18ab, 0x18af}, {0x18f6, 0x18ff}, {0x191f, 0x191f}, {0x192c, 0x192f}, {0x193c, 0x193f},
    {0x1941, 0x1943}, {0x196e, 0x196f}, {0x1975, 0x197f}, {0x19ac, 0x19af}, {0x19ca, 0x19cf},
    {0x19db, 0x19dd}, {0x1a1c, 0x1a1d}, {0x1a5f, 0x1a5f}, {0x1a7d, 0x1a7e}, {0x1a8a, 0x1a8f},
    {0x1a9a, 0x1a9f}, {0x1aae, 0x1aaf}, {0x1acf, 0x1aff}, {0x1b4d, 0x1b4f}, {0x1b7f, 0x1b7f},
    {0x1bf4, 0x1bfb}, {0x1c38, 0x1c3a}, {0x1c4a, 0x1c4c}, {0x1c89, 0x1c8f}, {0x1cbb, 0x1cbc},
    {0x1cc8, 0x1ccf}, {0x1cfb, 0x1cff}, {0x1f16, 0x1f17}, {0x1f1e, 0x1f1f}, {0x1f46, 0x1f47},
    {0x1f4e, 0x1f4f}, {0x1f58, 0x1f58}, {0x1f5a, 0x1f5a}, {0x1f5c, 0x1f5c}, {0x1f5e, 0x1f5e},
    {0x1f7e, 0x1f7f}, {0x1fb5, 0x1fb5}, {0x1fc5, 0x1fc5}, {0x1fd4, 0x1fd5}, {0x1fdc, 0x1fdc},
    {0x1ff0, 0x1ff1}, {0x1ff5, 0x1ff5}, {0x1fff, 0x200f}, {0x2028, 0x202f}, {0x205f, 0x206f},
    {0x2072, 0x2073}, {0x208f, 0x208f}, {0x209d, 0x209f}, {0x20c1, 0x20cf}, {0x20f1, 0x20ff},
    {0x218c, 0x218f}, {0x2427, 0x243f}, {0x244b, 0x245f}, {0x2b74, 0x2b75}, {0x2b96, 0x2b96},
    {0x2cf4, 0x2cf8}, {0x2d26, 0x2d26}, {0x2d28, 0x2d2c}, {0x2d2e, 0x2d2f}, {0x2d68, 0x2d6e},
    {0x2d71, 0x2d7e}, {0x2d97, 0x2d9f}, {0x2da7, 0x2da7}, {0x2daf, 0x2daf}, {0x2db7, 0x2db7},
    {0x2dbf, 0x2dbf}, {0x2dc7, 0x2dc7}, {0x2dcf, 0x2dcf}, {0x2dd7, 0x2dd7}, {0x2ddf, 0x2ddf},
    {0x2e5e, 0x2e7f}, {0x2e9a, 0x2e9a}, {0x2ef4, 0x2eff}, {0x2fd6, 0x2fef}, {0x2ffc, 0x3000},
    {0x3040, 0x3040}, {0x3097, 0x3098}, {0x3100, 0x3104}, {0x3130, 0x3130}, {0x318f, 0x318f},
    {0x31e4, 0x31ef}, {0x321f, 0x321f}, {0xa48d, 0xa48f}, {0xa4c7, 0xa4cf}, {0xa62c, 0xa63f},
    {0xa6f8, 0xa6ff}, {0xa7cb, 0xa7cf}, {0xa7d2, 0xa7d2}, {0xa7d4, 0xa7d4}, {0xa7da, 0xa7f1},
    {0xa82d, 0xa82f}, {0xa83a, 0xa83f}, {0xa878, 0xa87f}, {0xa8c6, 0xa8cd}, {0xa8da, 0xa8df},
    {0xa954, 0xa95e}, {0xa97d, 0xa97f}, {0xa9ce, 0xa9ce}, {0xa9da, 0xa9dd}, {0xa9ff, 0xa9ff},
    {0xaa37, 0xaa3f}, {0xaa4e, 0xaa4f}, {0xaa5a, 0xaa5b}, {0xaac3, 0xaada}, {0xaaf7, 0xab00},
    {0xab07, 0xab08}, {0xab0f, 0xab10}, {0xab17, 0xab1f}, {0xab27, 0xab27}, {0xab2f, 0xab2f},
    {0xab6c, 0xab6f}, {0xabee, 0xabef}, {0xabfa, 0xabff}, {0xd7a4, 0xd7af}, {0xd7c7, 0xd7ca},
    {0xd7fc, 0xf8ff}, {0xfa6e, 0xfa6f}, {0xfada, 0xfaff}, {0xfb07, 0xfb12}, {0xfb18, 0xfb1c},
    {0xfb37, 0xfb37}, {0xfb3d, 0xfb3d}, {0xfb3f, 0xfb3f}, {0xfb42, 0xfb42}, {0xfb45, 0xfb45},
    {0xfbc3, 0xfbd2}, {0xfd90, 0xfd91}, {0xfdc8, 0xfdce}, {0xfdd0, 0xfdef}, {0xfe1a, 0xfe1f},
    {0xfe53, 0xfe53}, {0xfe67, 0xfe67}, {0xfe6c, 0xfe6f}, {0xfe75, 0xfe75}, {0xfefd, 0xff00},
    {0xffbf, 0xffc1}, {0xffc8, 0xffc9}, {0xffd0, 0xffd1}, {0xffd8, 0xffd9}, {0xffdd, 0xffdf},
    {0xffe7, 0xffe7}, {0xffef, 0xfffb}, {0xfffe, 0xffff}, {0x1000c, 0x1000c}, {0x10027, 0x10027},
    {0x1003b, 0x1003b}, {0x1003e, 0x1003e}, {0x1004e, 0x1004f}, {0x1005e, 0x1007f},
    {0x100fb, 0x100ff}, {0x10103, 0x10106}, {0x10134, 0x10136}, {0x1018f, 0x1018f},
    {0x1019d, 0x1019f}, {0x101a1, 0x101cf}, {0x101fe, 0x1027f}, {0x1029d, 0x1029f},
    {0x102d1, 0x102df}, {0x102fc, 0x102ff}, {0x10324, 0x1032c}, {0x1034b, 0x1034f},
    {0x1037b, 0x1037f}, {0x1039e, 0x1039e}, {0x103c4, 0x103c7}, {0x103d6, 0x103ff},
    {0x1049e, 0x1049f}, {0x104aa, 0x104af}, {0x104d4, 0x104d7}, {0x104fc, 0x104ff},
    {0x10528, 0x1052f}, {0x10564, 0x1056e}, {0x1057b, 0x1057b}, {0x1058b, 0x1058b},
    {0x10593, 0x10593}, {0x10596, 0x10596}, {0x105a2, 0x105a2}, {0x105b2, 0x105b2},
    {0x105ba, 0x105ba}, {0x105bd, 0x105ff}, {0x10737, 0x1073f}, {0x10756, 0x1075f},
    {0x10768, 0x1077f}, {0x10786, 0x10786}, {0x107b1, 0x107b1}, {0x107bb, 0x107ff},
    {0x10806, 0x10807}, {0x10809, 0x10809}, {0x10836, 0x10836}, {0x10839, 0x1083b},
    {0x1083d, 0x1083e}, {0x10856, 0x10856}, {0x1089f, 0x108a6}, {0x108b0, 0x108df},
    {0x108f3, 0x108f3}, {0x108f6, 0x108fa}, {0x1091c, 0x1091e}, {0x1093a, 0x1093e},
    {0x10940, 0x1097f}, {0x109b8, 0x109bb}, {0x109d0, 0x109d1}, {0x10a04, 0x10a04},
    {0x10a07, 0x10a0b}, {0x10a14, 0x10a14}, {0x10a18, 0x10a18}, {0x10a36, 0x10a37},
    {0x10a3b, 0x10a3e}, {0x10a49, 0x10a4f}, {0x10a59, 0x10a5f}, {0x10aa0, 0x10abf},
    {0x10ae7, 0x10aea}, {0x10af7, 0x10aff}, {0x10b36, 0x10b38}, {0x10b56, 0x10b57},
    {0x10b73, 0x10b77}, {0x10b92, 0x10b98}, {0x10b9d, 0x10ba8}, {0x10bb0, 0x10bff},
    {0x10c49, 0x10c7f}, {0x10cb3, 0x10cbf}, {0x10cf3, 0x10cf9}, {0x10d28, 0x10d2f},
    {0x10d3a, 0x10e5f}, {0x10e7f, 0x10e7f}, {0x10eaa, 0x10eaa}, {0x10eae, 0x10eaf},
    {0x10eb2, 0x10eff}, {0x10f28, 0x10f2f}, {0x10f5a, 0x10f6f}, {0x10f8a, 0x10faf},
    {0x10fcc, 0x10fdf}, {0x10ff7, 0x10fff}, {0x1104e, 0x11051}, {0x11076, 0x1107e},
    {0x110bd, 0x110bd}, {0x110c3, 0x110cf}, {0x110e9, 0x110ef}, {0x110fa, 0x110ff},
    {0x11135, 0x11135}, {0x11148, 0x1114f}, {0x11177, 0x1117f}, {0x111e0, 0x111e0},
    {0x111f5, 0x111ff}, {0x11212, 0x11212}, {0x1123f, 0x1127f}, {0x11287, 0x11287},
    {0x11289, 0x11289}, {0x1128e, 0x1128e}, {0x1129e, 0x1129e}, {0x112aa, 0x112af},
    {0x112eb, 0x112ef}, {0x112fa, 0x112ff}, {0x11304, 0x11304}, {0x1130d, 0x1130e},
    {0x11311, 0x11312}, {0x11329, 0x11329}, {0x11331, 0x11331}, {0x11334, 0x11334},
    {0x1133a, 0x1133a}, {0x11345, 0x11346}, {0x11349, 0x1134a}, {0x1134e, 0x1134f},
    {0x11351, 0x11356}, {0x11358, 0x1135c}, {0x11364, 0x11365}, {0x1136d, 0x1136f},
    {0x11375, 0x113ff}, {0x1145c, 0x1145c}, {0x11462, 0x1147f}, {0x114c8, 0x114cf},
    {0x114da, 0x1157f}, {0x115b6, 0x115b7}, {0x115de, 0x115ff}, {0x11645, 0x1164f},
    {0x1165a, 0x1165f}, {0x1166d, 0x1167f}, {0x116ba, 0x116bf}, {0x116ca, 0x116ff},
    {0x1171b, 0x1171c}, {0x1172c, 0x1172f}, {0x11747, 0x117ff}, {0x1183c, 0x1189f},
    {0x118f3, 0x118fe}, {0x11907, 0x11908}, {0x1190a, 0x1190b}, {0x11914, 0x11914},
    {0x11917, 0x11917}, {0x11936, 0x11936}, {0x11939, 0x1193a}, {0x11947, 0x1194f},
    {0x1195a, 0x1199f}, {0x119a8, 0x119a9}, {0x119d8, 0x119d9}, {0x119e5, 0x119ff},
    {0x11a48, 0x11a4f}, {0x11aa3, 0x11aaf}, {0x11af9, 0x11bff}, {0x11c09, 0x11c09},
    {0x11c37, 0x11c37}, {0x11c46, 0x11c4f}, {0x11c6d, 0x11c6f}, {0x11c90, 0x11c91},
    {0x11ca8, 0x11ca8}, {0x11cb7, 0x11cff}, {0x11d07, 0x11d07}, {0x11d0a, 0x11d0a},
    {0x11d37, 0x11d39}, {0x11d3b, 0x11d3b}, {0x11d3e, 0x11d3e}, {0x11d48, 0x11d4f},
    {0x11d5a, 0x11d5f}, {0x11d66, 0x11d66}, {0x11d69, 0x11d69}, {0x11d8f, 0x11d8f},
    {0x11d92, 0x11d92}, {0x11d99, 0x11d9f}, {0x11daa, 0x11edf}, {0x11ef9, 0x11faf},
    {0x11fb1, 0x11fbf}, {0x11ff2, 0x11ffe}, {0x1239a, 0x123ff}, {0x1246f, 0x1246f},
    {0x12475, 0x1247f}, {0x12544, 0x12f8f}, {0x12ff3, 0x12fff}, {0x1342f, 0x143ff},
    {0x14647, 0x167ff}, {0x16a39, 0x16a3f}, {0x16a5f, 0x16a5f}, {0x16a6a, 0x16a6d},
    {0x16abf, 0x16abf}, {0x16aca, 0x16acf}, {0x16aee, 0x16aef}, {0x16af6, 0x16aff},
    {0x16b46, 0x16b4f}, {0x16b5a, 0x16b5a}, {0x16b62, 0x16b62}, {0x16b78, 0x16b7c},
    {0x16b90, 0x16e3f}, {0x16e9b, 0x16eff}, {0x16f4b, 0x16f4e}, {0x16f88, 0x16f8e},
    {0x16fa0, 0x16fdf}, {0x16fe5, 0x16fef}, {0x16ff2, 0x16fff}, {0x187f8, 0x187ff},
    {0x18cd6, 0x18cff}, {0x18d09, 0x1afef}, {0x1aff4, 0x1aff4}, {0x1affc, 0x1affc},
    {0x1afff, 0x1afff}, {0x1b123, 0x1b14f}, {0x1b153, 0x1b163}, {0x1b168, 0x1b16f},
    {0x1b2fc, 0x1bbff}, {0x1bc6b, 0x1bc6f}, {0x1bc7d, 0x1bc7f}, {0x1bc89, 0x1bc8f},
    {0x1bc9a, 0x1bc9b}, {0x1bca0, 0x1ceff}, {0x1cf2e, 0x1cf2f}, {0x1cf47, 0x1cf4f},
    {0x1cfc4, 0x1cfff}, {0x1d0f6, 0x1d0ff}, {0x1d127, 0x1d128}, {0x1d173, 0x1d17a},
    {0x1d1eb, 0x1d1ff}, {0x1d246, 0x1d2df}, {0x1d2f4, 0x1d2ff}, {0x1d357, 0x1d35f},
    {0x1d379, 0x1d3ff}, {0x1d455, 0x1d455}, {0x1d49d, 0x1d49d}, {0x1d4a0, 0x1d4a1},
    {0x1d4a3, 0x1d4a4}, {0x1d4a7, 0x1d4a8}, {0x1d4ad, 0x1d4ad}, {0x1d4ba, 0x1d4ba},
    {0x1d4bc, 0x1d4bc}, {0x1d4c4, 0x1d4c4}, {0x1d506, 0x1d506}, {0x1d50b, 0x1d50c},
    {0x1d515, 0x1d515}, {0x1d51d, 0x1d51d}, {0x1d53a, 0x1d53a}, {0x1d53f, 0x1d53f},
    {0x1d545, 0x1d545}, {0x1d547, 0x1d549}, {0x1d551, 0x1d551}, {0x1d6a6, 0x1d6a7},
    {0x1d7cc, 0x1d7cd}, {0x1da8c, 0x1da9a}, {0x1daa0, 0x1daa0}, {0x1dab0, 0x1deff},
    {0x1df1f, 0x1dfff}, {0x1e007, 0x1e007}, {0x1e019, 0x1e01a}, {0x1e022, 0x1e022},
    {0x1e025, 0x1e025}, {0x1e02b, 0x1e0ff}, {0x1e12d, 0x1e12f}, {0x1e13e, 0x1e13f},
    {0x1e14a, 0x1e14d}, {0x1e150, 0x1e28f}, {0x1e2af, 0x1e2bf}, {0x1e2fa, 0x1e2fe},
    {0x1e300, 0x1e7df}, {0x1e7e7, 0x1e7e7}, {0x1e7ec, 0x1e7ec}, {0x1e7ef, 0x1e7ef},
    {0x1e7ff, 0x1e7ff}, {0x1e8c5, 0x1e8c6}, {0x1e8d7, 0x1e8ff}, {0x1e94c, 0x1e94f},
    {0x1e95a, 0x1e95d}, {0x1e960, 0x1ec70}, {0x1ecb5, 0x1ed00}, {0x1ed3e, 0x1edff},
    {0x1ee04, 0x1ee04}, {0x1ee20, 0x1ee20}, {0x1ee23, 0x1ee23}, {0x1ee25, 0x1ee26},
    {0x1ee28, 0x1ee28}, {0x1ee33, 0x1ee33}, {0x1ee38, 0x1ee38}, {0x1ee3a, 0x1ee3a},
    {0x1ee3c, 0x1ee41}, {0x1ee43, 0x1ee46}, {0x1ee48, 0x1ee48}, {0x1ee4a, 0x1ee4a},
    {0x1ee4c, 0x1ee4c}, {0x1ee50, 0x1ee50}, {0x1ee53, 0x1ee53}, {0x1ee55, 0x1ee56},
    {0x1ee58, 0x1ee58}, {0x1ee5a, 0x1ee5a}, {0x1ee5c, 0x1ee5c}, {0x1ee5e, 0x1ee5e},
    {0x1ee60, 0x1ee60}, {0x1ee63, 0x1ee63}, {0x1ee65, 0x1ee66}, {0x1ee6b, 0x1ee6b},
    {0x1ee73, 0x1ee73}, {0x1ee78, 0x1ee78}, {0x1ee7d, 0x1ee7d}, {0x1ee7f, 0x1ee7f},
    {0x1ee8a, 0x1ee8a}, {0x1ee9c, 0x1eea0}, {0x1eea4, 0x1eea4}, {0x1eeaa, 0x1eeaa},
    {0x1eebc, 0x1eeef}, {0x1eef2, 0x1efff}, {0x1f02c, 0x1f02f}, {0x1f094, 0x1f09f},
    {0x1f0af, 0x1f0b0}, {0x1f0c0, 0x1f0c0}, {0x1f0d0, 0x1f0d0}, {0x1f0f6, 0x1f0ff},
    {0x1f1ae, 0x1f1e5}, {0x1f203, 0x1f20f}, {0x1f23c, 0x1f23f}, {0x1f249, 0x1f24f},
    {0x1f252, 0x1f25f}, {0x1f266, 0x1f2ff}, {0x1f6d8, 0x1f6dc}, {0x1f6ed, 0x1f6ef},
    {0x1f6fd, 0x1f6ff}, {0x1f774, 0x1f77f}, {0x1f7d9, 0x1f7df}, {0x1f7ec, 0x1f7ef},
    {0x1f7f1, 0x1f7ff}, {0x1f80c, 0x1f80f}, {0x1f848, 0x1f84f}, {0x1f85a, 0x1f85f},
    {0x1f888, 0x1f88f}, {0x1f8ae, 0x1f8af}, {0x1f8b2, 0x1f8ff}, {0x1fa54, 0x1fa5f},
    {0x1fa6e, 0x1fa6f}, {0x1fa75, 0x1fa77}, {0x1fa7d, 0x1fa7f}, {0x1fa87, 0x1fa8f},
    {0x1faad, 0x1faaf}, {0x1fabb, 0x1fabf}, {0x1fac6, 0x1facf}, {0x1fada, 0x1fadf},
    {0x1fae8, 0x1faef}, {0x1faf7, 0x1faff}, {0x1fb93, 0x1fb93}, {0x1fbcb, 0x1fbef},
    {0x1fbfa, 0x1ffff}, {0x2a6e0, 0x2a6ff}, {0x2b739, 0x2b73f}, {0x2b81e, 0x2b81f},
    {0x2cea2, 0x2ceaf}, {0x2ebe1, 0x2f7ff}, {0x2fa1e, 0x2ffff}, {0x3134b, 0xe00ff},
    {0xe01f0, 0x10ffff},
};

static bool printable(unsigned long cp)
{
    size_t lo = 0, hi = sizeof(NOT_PRINTABLE) / sizeof(NOT_PRINTABLE[0]);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < NOT_PRINTABLE[mid][0])
            hi = mid;
        else if (cp > NOT_PRINTABLE[mid][1])
            lo = mid + 1;
        else
            return false;
    }
    return true;
}

/* Python's choice of quotes: ' unless the text holds ' and no ". */
static char quote_for(const char *s, size_t n)
{
    return memchr(s, '\'', n) && !memchr(s, '"', n) ? '"' : '\'';
}

/* The escape of one character of str or bytes into esc; 0 when it stands
 * as it is. cp < 0: a byte that is not UTF-8 (shown as \xNN). */
static int escape(long cp, unsigned byte, char quote, bool bytes, char esc[12])
{
    if (cp == quote || cp == '\\')
        return snprintf(esc, 12, "\\%c", (char)cp);
    switch (cp) {
    case '\t': return snprintf(esc, 12, "\\t");
    case '\n': return snprintf(esc, 12, "\\n");
    case '\r': return snprintf(esc, 12, "\\r");
    default: break;
    }
    if (cp < 0)
        return snprintf(esc, 12, "\\x%02x", byte);
    if (cp < 0x20 || cp == 0x7f || (bytes && cp > 0x7f))
        return snprintf(esc, 12, "\\x%02x", (unsigned)cp);
    if (cp < 0x7f || printable((unsigned long)cp))
        return 0;
    if (cp <= 0xff)
        return snprintf(esc, 12, "\\x%02x", (unsigned)cp);
    if (cp <= 0xffff)
        return snprintf(esc, 12, "\\u%04x", (unsigned)cp);
    return snprintf(esc, 12, "\\U%08x", (unsigned)cp);
}

/* repr() of text (UTF-8) or of bytes: b'...'. */
static void put_quoted(out *o, const char *s, size_t n, bool bytes)
{
    const unsigned char *p = (const unsigned char *)s;
    char quote = quote_for(s, n);
    if (bytes)
        put_chr(o, 'b');
    put_chr(o, quote);
    size_t run = 0; /* bytes from run on stand as they are */
    for (size_t i = 0; i < n && !o->cut;) {
        size_t used = 1;
        long cp = bytes ? (long)p[i] : ckpt__utf8_next(p + i, n - i, &used);
        char esc[12];
        int elen = escape(cp, p[i], quote, bytes, esc);
        if (elen > 0) {
            put(o, s + run, i - run);
            put(o, esc, (size_t)elen);
            run = i + used;
        }
        i += used;
    }
    put(o, s + run, n - run);
    put_chr(o, quote);
}

/* ---- values ------------------------------------------------------------------ */

typedef struct repr_ctx {
    out *o;
    const ckpt_value *path[REPR_MAX_DEPTH]; /* containers being shown (cycles) */
} repr_ctx;

static void put_repr(repr_ctx *c, const ckpt_value *v, size_t depth);

/* torch.device's repr: device(type='cuda', index=0) from "cuda:0". */
static void put_device(out *o, const char *s, size_t n)
{
    const char *colon = memchr(s, ':', n);
    size_t tlen = colon ? (size_t)(colon - s) : n;
    bool index = colon && tlen + 1 < n;
    for (size_t i = tlen + 1; index && i < n; i++)
        index = s[i] >= '0' && s[i] <= '9';
    if (!index)
        tlen = n;
    put_str(o, "device(type=");
    put_quoted(o, s, tlen, false);
    if (index) {
        put_str(o, ", index=");
        put(o, s + tlen + 1, n - tlen - 1);
    }
    put_chr(o, ')');
}

static void put_tensor(out *o, const ckpt_tensor *t)
{
    put_str(o, "tensor(dtype=");
    put_str(o, ckpt_dtype_name(t ? t->dtype : CKPT_DTYPE_INVALID));
    put_str(o, ", shape=[");
    for (uint32_t i = 0; t && i < t->ndim; i++) {
        if (i)
            put_str(o, ", ");
        put_int(o, t->shape[i]);
    }
    put_str(o, "])");
}

static void put_items(repr_ctx *c, const ckpt_value *v, size_t depth)
{
    for (size_t i = 0; i < v->u.seq.len && !c->o->cut; i++) {
        if (i)
            put_str(c->o, ", ");
        put_repr(c, v->u.seq.items[i], depth + 1);
    }
}

/* {k: v, ...} of a DICT, or [(k, v), ...] of an ORDERED_DICT. */
static void put_entries(repr_ctx *c, const ckpt_value *v, size_t depth, bool pairs)
{
    for (size_t i = 0; i < v->u.dict.len && !c->o->cut; i++) {
        if (i)
            put_str(c->o, ", ");
        if (pairs)
            put_chr(c->o, '(');
        put_repr(c, v->u.dict.keys[i], depth + 1);
        put_str(c->o, pairs ? ", " : ": ");
        put_repr(c, v->u.dict.vals[i], depth + 1);
        if (pairs)
            put_chr(c->o, ')');
    }
}

/* How each container opens and closes, and what it shows when empty. */
static const struct {
    uint16_t kind;
    const char *open, *close, *empty;
} CONTAINERS[] = {
    {CKPT_KIND_LIST, "[", "]", NULL},
    {CKPT_KIND_TUPLE, "(", ")", NULL},
    {CKPT_KIND_SET, "{", "}", "set()"},
    {CKPT_KIND_DICT, "{", "}", NULL},
    {CKPT_KIND_ORDERED_DICT, "OrderedDict([", "])", "OrderedDict()"},
    {CKPT_KIND_SIZE, "torch.Size([", "])", NULL},
};

/* A container's repr; one it is already inside of (a cycle), or one past
 * the depth bound, shows as Python shows a recursive one: [...], and a
 * recursive OrderedDict as "...". */
static void put_container(repr_ctx *c, const ckpt_value *v, size_t depth)
{
    out *o = c->o;
    size_t k = 0, n = sizeof(CONTAINERS) / sizeof(CONTAINERS[0]);
    while (k < n && CONTAINERS[k].kind != v->kind)
        k++;
    if (k == n) {
        put_str(o, "<?>");
        return;
    }
    bool dict = v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT;
    size_t len = dict ? v->u.dict.len : v->u.seq.len;
    /* frozenset({1, 2}), frozenset(); a set is {1, 2}, set() */
    bool frozen = v->kind == CKPT_KIND_SET && (v->flags & CKPT__VF_FROZEN);
    if (len == 0 && frozen) {
        put_str(o, "frozenset()");
        return;
    }
    if (len == 0 && CONTAINERS[k].empty) {
        put_str(o, CONTAINERS[k].empty);
        return;
    }
    bool elide = depth >= REPR_MAX_DEPTH;
    for (size_t i = 0; i < depth && !elide; i++)
        elide = c->path[i] == v;
    if (elide && v->kind == CKPT_KIND_ORDERED_DICT) {
        put_str(o, "...");
        return;
    }
    if (frozen)
        put_str(o, "frozenset(");
    put_str(o, CONTAINERS[k].open);
    if (elide) {
        put_str(o, "...");
    } else {
        c->path[depth] = v;
        if (dict)
            put_entries(c, v, depth, v->kind == CKPT_KIND_ORDERED_DICT);
        else
            put_items(c, v, depth);
        if (v->kind == CKPT_KIND_TUPLE && len == 1)
            put_chr(o, ',');
    }
    put_str(o, CONTAINERS[k].close);
    if (frozen)
        put_chr(o, ')');
}

static void put_repr(repr_ctx *c, const ckpt_value *v, size_t depth)
{
    out *o = c->o;
    if (o->cut)
        return;
    if (!v) {
        put_str(o, "None");
        return;
    }
    switch (v->kind) {
    case CKPT_KIND_NONE: put_str(o, "None"); return;
    case CKPT_KIND_BOOL: put_str(o, v->u.b ? "True" : "False"); return;
    case CKPT_KIND_INT: put_int(o, v->u.i); return;
    case CKPT_KIND_BIGINT: put_bigint(o, (const uint8_t *)v->u.s.ptr, v->u.s.len); return;
    case CKPT_KIND_FLOAT: put_float(o, v->u.f, 0); return;
    case CKPT_KIND_COMPLEX:
        /* (1+2j); a real part of +0 is left out: 2j */
        if (v->u.c.re == 0 && !signbit(v->u.c.re)) {
            put_float(o, v->u.c.im, CKPT__FLOAT_NO_DOT0);
            put_chr(o, 'j');
            return;
        }
        put_chr(o, '(');
        put_float(o, v->u.c.re, CKPT__FLOAT_NO_DOT0);
        put_float(o, v->u.c.im, CKPT__FLOAT_NO_DOT0 | CKPT__FLOAT_SIGN);
        put_str(o, "j)");
        return;
    case CKPT_KIND_STR: put_quoted(o, v->u.s.ptr, v->u.s.len, false); return;
    case CKPT_KIND_BYTES: put_quoted(o, v->u.s.ptr, v->u.s.len, true); return;
    case CKPT_KIND_DEVICE: put_device(o, v->u.s.ptr, v->u.s.len); return;
    case CKPT_KIND_DTYPE:
        put_str(o, "torch.");
        put_str(o, ckpt_dtype_name(v->u.dtype));
        return;
    case CKPT_KIND_GLOBAL: put(o, v->u.s.ptr, v->u.s.len); return;
    case CKPT_KIND_OBJECT: {
        size_t len;
        const char *cls = ckpt_value_str(v, &len);
        put_chr(o, '<');
        if (cls) {
            put(o, cls, len);
            put_chr(o, ' ');
        }
        put_str(o, "object>");
        return;
    }
    case CKPT_KIND_TENSOR: put_tensor(o, v->u.tensor.t); return;
    case CKPT__KIND_STORAGE: put_str(o, "<storage>"); return;
    default: put_container(c, v, depth); return;
    }
}

size_t ckpt_value_repr(const ckpt_value *v, char *buf, size_t size)
{
    out o = {.buf = buf, .cap = buf ? size : 0, .limit = REPR_MAX_LEN};
    repr_ctx c;
    c.o = &o;
    put_repr(&c, v, 0);
    return out_end(&o);
}

/* ---- dict keys ------------------------------------------------------------------ */

size_t ckpt__key_text(const ckpt_value *k, char *buf, size_t cap)
{
    out o = {.buf = buf, .cap = buf ? cap : 0, .limit = KEY_MAX_LEN};
    /* str() differs from repr() for text (no quotes) and devices ("cuda:0");
     * a global shows its name */
    switch (k ? k->kind : CKPT_KIND_NONE) {
    case CKPT_KIND_STR:
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL:
        put(&o, k->u.s.ptr, k->u.s.len);
        break;
    default: {
        repr_ctx c;
        c.o = &o;
        put_repr(&c, k, 0);
        break;
    }
    }
    return out_end(&o);
}

size_t ckpt_value_key_text(const ckpt_value *key, char *buf, size_t size)
{
    if (!buf || size == 0)
        return 0;
    buf[0] = 0;
    if (!key)
        return 0;
    size_t n = ckpt__key_text(key, buf, size);
    return n < size ? n : size - 1;
}
