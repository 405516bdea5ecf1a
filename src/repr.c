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
 * is false): the assigned ones of categories Cc, Cf, Cs, Co, Zl, Zp and Zs
 * (Unicode 14). Unassigned code points are shown as they are. */
static const uint32_t NOT_PRINTABLE[][2] = {
    {0x7f, 0xa0}, {0xad, 0xad}, {0x600, 0x605}, {0x61c, 0x61c}, {0x6dd, 0x6dd},
    {0x70f, 0x70f}, {0x890, 0x891}, {0x8e2, 0x8e2}, {0x1680, 0x1680}, {0x180e, 0x180e},
    {0x2000, 0x200f}, {0x2028, 0x202f}, {0x205f, 0x2064}, {0x2066, 0x206f},
    {0x3000, 0x3000}, {0xd800, 0xf8ff}, {0xfeff, 0xfeff}, {0xfff9, 0xfffb},
    {0x110bd, 0x110bd}, {0x110cd, 0x110cd}, {0x13430, 0x13438}, {0x1bca0, 0x1bca3},
    {0x1d173, 0x1d17a}, {0xe0001, 0xe0001}, {0xe0020, 0xe007f}, {0xf0000, 0xffffd},
    {0x100000, 0x10fffd},
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
    {CKPT_LIST, "[", "]", NULL},
    {CKPT_TUPLE, "(", ")", NULL},
    {CKPT_SET, "{", "}", "set()"},
    {CKPT_DICT, "{", "}", NULL},
    {CKPT_ORDERED_DICT, "OrderedDict([", "])", "OrderedDict()"},
    {CKPT_SIZE, "torch.Size([", "])", NULL},
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
    bool dict = v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT;
    size_t len = dict ? v->u.dict.len : v->u.seq.len;
    if (len == 0 && CONTAINERS[k].empty) {
        put_str(o, CONTAINERS[k].empty);
        return;
    }
    bool elide = depth >= REPR_MAX_DEPTH;
    for (size_t i = 0; i < depth && !elide; i++)
        elide = c->path[i] == v;
    if (elide && v->kind == CKPT_ORDERED_DICT) {
        put_str(o, "...");
        return;
    }
    put_str(o, CONTAINERS[k].open);
    if (elide) {
        put_str(o, "...");
    } else {
        c->path[depth] = v;
        if (dict)
            put_entries(c, v, depth, v->kind == CKPT_ORDERED_DICT);
        else
            put_items(c, v, depth);
        if (v->kind == CKPT_TUPLE && len == 1)
            put_chr(o, ',');
    }
    put_str(o, CONTAINERS[k].close);
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
    case CKPT_NONE: put_str(o, "None"); return;
    case CKPT_BOOLEAN: put_str(o, v->u.b ? "True" : "False"); return;
    case CKPT_INT: put_int(o, v->u.i); return;
    case CKPT_BIGINT: put_bigint(o, (const uint8_t *)v->u.s.ptr, v->u.s.len); return;
    case CKPT_FLOAT: put_float(o, v->u.f, 0); return;
    case CKPT_COMPLEX:
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
    case CKPT_STR: put_quoted(o, v->u.s.ptr, v->u.s.len, false); return;
    case CKPT_BYTES: put_quoted(o, v->u.s.ptr, v->u.s.len, true); return;
    case CKPT_DEVICE: put_device(o, v->u.s.ptr, v->u.s.len); return;
    case CKPT_DTYPE:
        put_str(o, "torch.");
        put_str(o, ckpt_dtype_name(v->u.dtype));
        return;
    case CKPT_GLOBAL: put(o, v->u.s.ptr, v->u.s.len); return;
    case CKPT_OBJECT: {
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
    case CKPT_TENSOR: put_tensor(o, v->u.tensor.t); return;
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
    switch (k ? k->kind : CKPT_NONE) {
    case CKPT_STR:
    case CKPT_DEVICE:
    case CKPT_GLOBAL:
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
