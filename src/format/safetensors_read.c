/*
 * safetensors_read.c - the safetensors format: an 8-byte header length, a
 * JSON header, then a buffer the tensors tile exactly.
 *
 * The reference reader's rules, plus: duplicate JSON keys and NUL bytes in
 * names are refused (readers that disagree on them see different models).
 *
 * The header is read by a streaming (SAX) parser, yajl, straight into the
 * entries below: memory is what the entries hold, never a tree of the whole
 * header (a 100 MB header of tiny tensors made a DOM of 2 GB). What a DOM
 * parser did for free is done here, so that the header means one thing:
 *   - the whole header is strict UTF-8 (no overlong forms, no surrogates,
 *     nothing past U+10FFFF), and \v and \f, which yajl takes for white
 *     space, are refused as JSON does;
 *   - \u escapes: \u0000 (a NUL in a name) and a lone or mismatched
 *     surrogate are refused, before yajl decodes anything;
 *   - no object, at any depth (tensor entries, __metadata__, unknown
 *     fields), holds a key twice (a hash set per open object);
 *   - integers fit in 64 bits signed, reals are finite, nesting stops at
 *     HEADER_MAX_DEPTH.
 * A broken rule of JSON stops the parse at once with the byte offset. A
 * broken rule of the format (a field of the wrong type, an unknown dtype)
 * is kept, the rest is still checked as JSON, and the first such problem
 * in header order is reported at the end: a header is first valid JSON,
 * then a valid safetensors header, as when it was read whole.
 */
#include "format.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <yajl/yajl_parse.h>

#define HEADER_RECORD "safetensors header"
/* Nesting of JSON containers (a header needs 3: the header, an entry, its
 * shape); the bound the JSON reader used before. */
#define HEADER_MAX_DEPTH 2048
/* Objects up to this many keys are checked for duplicates by comparing;
 * larger ones get a hash index. */
#define KEYS_SCAN_MAX 8

/* A tensor of the header, made as its entry ends; sorted by its bytes at
 * the end. Its storage's index holds its place in the header (to break
 * ties) until the storage joins the file. */
typedef struct st_entry {
    ckpt_value *key;           /* its name, the key of the root dict */
    ckpt_value *value;         /* the tensor */
    uint64_t offset;           /* of its name in the header */
} st_entry;

static int cmp_entry(const void *a, const void *b)
{
    const ckpt__storage *x = ((const st_entry *)a)->value->u.tensor.t->storage;
    const ckpt__storage *y = ((const st_entry *)b)->value->u.tensor.t->storage;
    if (x->file_offset != y->file_offset)
        return x->file_offset < y->file_offset ? -1 : 1;
    if (x->nbytes != y->nbytes)
        return x->nbytes < y->nbytes ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* ---- the text: UTF-8 and escapes, before yajl reads it ---------------- */

static int hex4(const uint8_t *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the UTF-8 sequence at p[0..left), or 0 when it is not strict
 * UTF-8 (RFC 3629). */
static size_t utf8_len(const uint8_t *p, uint64_t left)
{
    uint8_t c = p[0];
    size_t len;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4;
    else
        return 0;
    if (left < len)
        return 0;
    uint32_t cp = c & (0x3Fu >> (len - 1));
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[k] & 0x3Fu);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

/* Checks what yajl lets pass (see the top comment). Strings are followed as
 * JSON delimits them; in a text that is not JSON, yajl names the problem. */
static ckpt_status check_text(const uint8_t *t, uint64_t n, ckpt_error *err)
{
    bool in_string = false;
    for (uint64_t i = 0; i < n;) {
        uint8_t c = t[i];
        if (c >= 0x80) {
            size_t len = utf8_len(t + i, n - i);
            if (!len)
                return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, i,
                                  "invalid JSON: the header is not UTF-8 (byte 0x%02x)", c);
            i += len;
            continue;
        }
        if (c == '\v' || c == '\f')
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, i,
                              "invalid JSON: control character 0x%02x", c);
        if (!in_string) {
            in_string = c == '"';
            i++;
            continue;
        }
        if (c == '"') {
            in_string = false;
            i++;
            continue;
        }
        if (c != '\\') {
            i++;
            continue;
        }
        if (i + 1 < n && t[i + 1] != 'u') {
            i += 2;
            continue;
        }
        int cp = i + 6 <= n ? hex4(t + i + 2) : -1;
        if (cp < 0) {
            i++; /* yajl names a broken escape */
            continue;
        }
        if (cp == 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, i,
                              "invalid JSON: \\u0000 (a NUL byte) in a string");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, i,
                              "invalid JSON: \\u%04X is a low surrogate with no high one before it",
                              (unsigned)cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            int lo = i + 12 <= n && t[i + 6] == '\\' && t[i + 7] == 'u' ? hex4(t + i + 8) : -1;
            if (lo < 0xDC00 || lo > 0xDFFF)
                return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, i,
                                  "invalid JSON: \\u%04X is a high surrogate with no low one "
                                  "after it", (unsigned)cp);
            i += 12;
            continue;
        }
        i += 6;
    }
    return CKPT_OK;
}

/* ---- keys of one open object: duplicates ------------------------------ */

typedef struct key_ref {
    const char *p;               /* in the header text, or a copy (escaped keys) */
    size_t len;
    uint64_t hash;               /* set once the object has an index */
} key_ref;

typedef struct keyset {
    key_ref *keys;
    size_t count, cap;
    uint32_t *index;             /* slot -> key + 1; past KEYS_SCAN_MAX keys */
    size_t index_cap;
} keyset;

/* ---- the parse -------------------------------------------------------- */

enum level_kind {
    LV_ROOT,                     /* the header object */
    LV_ENTRY,                    /* a tensor's object */
    LV_META,                     /* __metadata__ */
    LV_SHAPE,                    /* an entry's shape */
    LV_OFFSETS,                  /* an entry's data_offsets */
    LV_SKIP,                     /* anything else: checked as JSON only */
};

enum field {
    F_NONE,
    F_TENSOR,                    /* root: a tensor entry */
    F_METADATA,                  /* root: __metadata__ */
    F_DTYPE,
    F_SHAPE,
    F_OFFSETS,
};

typedef struct level {
    uint8_t kind;                /* enum level_kind */
    uint8_t field;               /* objects: what the current key names */
    bool object;
    keyset keys;                 /* objects */
} level;

/* The entry being read (entries sit at one depth: one at a time). */
typedef struct entry_state {
    ckpt_value *key;
    const char *name;
    uint64_t offset;
    bool dtype_string, shape_array, offsets_array;
    ckpt_dtype dtype;
    char dtype_text[72];         /* for the message */
    size_t ndim;                 /* elements of shape (stored: up to max_ndim) */
    size_t shape_bad;            /* first element that is no integer >= 0, or SIZE_MAX */
    size_t noffsets;
    bool offsets_bad;
    uint64_t off[2];
} entry_state;

typedef struct scratch_block {
    struct scratch_block *next;
    size_t used, cap;
    char data[];
} scratch_block;

typedef struct hdr_parser {
    ckpt_file *f;
    yajl_handle y;
    const uint8_t *text;
    uint64_t len;
    bool finishing;              /* in yajl_complete_parse: offsets are past the text */

    level *levels;
    size_t depth, levels_cap;    /* levels[0 .. depth) are open */
    bool root_seen;

    ckpt_status fatal;           /* stops the parse (a callback returns 0) */
    ckpt_error ferr;
    ckpt_status pending;         /* the first broken rule of the format */
    ckpt_error perr;

    entry_state e;
    int64_t *dims;
    size_t dims_cap;
    st_entry *entries;
    size_t ne, entries_cap;
    ckpt_value *meta;
    ckpt_value *meta_key;        /* __metadata__: the key whose value comes next */
    uint64_t value_offset;       /* of the key whose value comes next */

    scratch_block *scratch;      /* copies of escaped keys */
} hdr_parser;

/* Where the last token ends in the text. */
static uint64_t consumed(const hdr_parser *p)
{
    return p->finishing ? p->len : (uint64_t)yajl_get_bytes_consumed(p->y);
}

/* Offset of the opening quote of the string token just read (s, its
 * decoded bytes: in the text unless it had escapes). */
static uint64_t string_offset(const hdr_parser *p, const unsigned char *s)
{
    if (s >= p->text && s < p->text + p->len)
        return (uint64_t)(s - p->text) - 1;
    uint64_t end = consumed(p);
    if (end == 0 || end > p->len)
        return CKPT_NO_OFFSET;
    /* back from the closing quote to the first quote not escaped */
    for (uint64_t j = end - 1; j-- > 0;) {
        if (p->text[j] != '"')
            continue;
        uint64_t k = 0;
        while (k < j && p->text[j - 1 - k] == '\\')
            k++;
        if (k % 2 == 0)
            return j;
    }
    return CKPT_NO_OFFSET;
}

#define FAIL(p, status, offset, ...)                                                       \
    ((p)->fatal = ckpt__fail(&(p)->ferr, (status), HEADER_RECORD, (offset), __VA_ARGS__), 0)

static int nomem(hdr_parser *p, size_t more)
{
    if (ckpt__arena_over_limit(&p->f->arena, more))
        return FAIL(p, CKPT_ERR_LIMIT, CKPT_NO_OFFSET,
                    "the header's values pass max_value_bytes (%llu)",
                    (unsigned long long)p->f->opts.limits.max_value_bytes);
    p->fatal = ckpt__nomem(&p->ferr);
    return 0;
}

/* Records the first broken rule of the format (later ones are dropped);
 * the parse goes on. */
static void CKPT_PRINTF(4, 5) broken(hdr_parser *p, ckpt_status status, uint64_t offset,
                                     const char *fmt, ...)
{
    if (p->pending)
        return;
    p->pending = status;
    va_list ap;
    va_start(ap, fmt);
    ckpt__vfail(&p->perr, status, HEADER_RECORD, offset, fmt, ap);
    va_end(ap);
}

static const char *scratch_copy(hdr_parser *p, const unsigned char *s, size_t n)
{
    scratch_block *b = p->scratch;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        b = malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->next = p->scratch;
        b->used = 0;
        b->cap = cap;
        p->scratch = b;
    }
    char *d = b->data + b->used;
    if (n)
        memcpy(d, s, n);
    b->used += n;
    return d;
}

static bool index_put(const hdr_parser *p, keyset *ks, size_t i)
{
    (void)p;
    size_t mask = ks->index_cap - 1;
    for (size_t slot = (size_t)ks->keys[i].hash & mask;; slot = (slot + 1) & mask) {
        if (!ks->index[slot]) {
            ks->index[slot] = (uint32_t)(i + 1);
            return true;
        }
    }
}

static bool index_grow(hdr_parser *p, keyset *ks)
{
    size_t cap = ks->index_cap ? ks->index_cap * 2 : 64;
    uint32_t *idx = calloc(cap, sizeof(*idx));
    if (!idx)
        return false;
    bool fresh = !ks->index;
    free(ks->index);
    ks->index = idx;
    ks->index_cap = cap;
    for (size_t i = 0; i < ks->count; i++) {
        if (fresh)
            ks->keys[i].hash = ckpt__hash_keyed(p->f, ks->keys[i].p, ks->keys[i].len);
        index_put(p, ks, i);
    }
    return true;
}

/* Adds the key s[0..n) to the innermost object: 0 (fatal set) when it is
 * there already or memory runs out. */
static int key_add(hdr_parser *p, keyset *ks, const unsigned char *s, size_t n)
{
    uint64_t h = 0;
    if (ks->index) {
        h = ckpt__hash_keyed(p->f, s, n);
        size_t mask = ks->index_cap - 1;
        for (size_t slot = (size_t)h & mask; ks->index[slot]; slot = (slot + 1) & mask) {
            const key_ref *k = &ks->keys[ks->index[slot] - 1];
            if (k->hash == h && k->len == n && memcmp(k->p, s, n) == 0)
                goto dup;
        }
    } else {
        for (size_t i = 0; i < ks->count; i++)
            if (ks->keys[i].len == n && memcmp(ks->keys[i].p, s, n) == 0)
                goto dup;
    }
    if (ks->count >= UINT32_MAX - 1)
        return FAIL(p, CKPT_ERR_LIMIT, string_offset(p, s), "an object with 2^32 keys");
    if (ks->count == ks->cap) {
        key_ref *k = ckpt__array_grow(ks->keys, &ks->cap, sizeof(*k));
        if (!k)
            return nomem(p, 0);
        ks->keys = k;
    }
    const char *kp = (const char *)s;
    if (!(s >= p->text && s < p->text + p->len) && !(kp = scratch_copy(p, s, n)))
        return nomem(p, 0);
    ks->keys[ks->count] = (key_ref){kp, n, h};
    ks->count++;
    if (ks->index) {
        if (ks->count * 2 > ks->index_cap) {
            if (!index_grow(p, ks))
                return nomem(p, 0);
        } else {
            index_put(p, ks, ks->count - 1);
        }
    } else if (ks->count > KEYS_SCAN_MAX && !index_grow(p, ks)) {
        return nomem(p, 0);
    }
    return 1;
dup:;
    char q[120];
    size_t m = n < sizeof(q) - 1 ? n : sizeof(q) - 1;
    memcpy(q, s, m);
    q[m] = 0;
    return FAIL(p, CKPT_ERR_FORMAT, string_offset(p, s), "invalid JSON: duplicate key '%s'", q);
}

static void keyset_clear(keyset *ks)
{
    ks->count = 0;
    free(ks->index);
    ks->index = NULL;
    ks->index_cap = 0;
}

/* ---- values -------------------------------------------------------------- */

enum value_type { V_NULL, V_BOOL, V_INT, V_REAL, V_STRING, V_OBJECT, V_ARRAY };

/* A value arrives in the innermost level: what it is for, and the kind of
 * level it opens (LV_SKIP for one the format does not read). */
static int on_value(hdr_parser *p, enum value_type type, int64_t iv, const unsigned char *s,
                    size_t n, uint8_t *opens)
{
    *opens = LV_SKIP;
    if (p->depth == 0) {
        p->root_seen = true;
        if (type == V_OBJECT)
            *opens = LV_ROOT;
        else
            broken(p, CKPT_ERR_FORMAT, 0, "header is not a JSON object");
        return 1;
    }
    level *lv = &p->levels[p->depth - 1];
    if (p->pending || lv->kind == LV_SKIP)
        return 1;
    entry_state *e = &p->e;
    switch (lv->kind) {
    case LV_ROOT:
        if (lv->field == F_METADATA) {
            if (type == V_OBJECT) {
                *opens = LV_META;
                p->meta = ckpt__value_new(&p->f->arena, CKPT_KIND_DICT);
                if (!p->meta)
                    return nomem(p, sizeof(ckpt_value));
            } else {
                broken(p, CKPT_ERR_FORMAT, p->value_offset,
                       "__metadata__ is not an object of strings");
            }
        } else if (type == V_OBJECT) {
            *opens = LV_ENTRY;
        } else {
            broken(p, CKPT_ERR_FORMAT, p->value_offset, "tensor '%s' is not an object", e->name);
        }
        return 1;
    case LV_META:
        if (type != V_STRING) {
            broken(p, CKPT_ERR_FORMAT, p->value_offset,
                   "__metadata__ value of '%s' is not a string", p->meta_key->u.s.ptr);
            return 1;
        }
        {
            ckpt_value *vv = ckpt__value_str(&p->f->arena, CKPT_KIND_STR, (const char *)s, n);
            if (!vv || !ckpt__dict_set(&p->f->arena, p->meta, p->meta_key, vv))
                return nomem(p, n + 1);
        }
        return 1;
    case LV_ENTRY:
        switch (lv->field) {
        case F_DTYPE:
            e->dtype_string = type == V_STRING;
            if (type == V_STRING) {
                e->dtype = CKPT_DTYPE_INVALID;
                for (int d = 1; d < CKPT_DTYPE_COUNT_; d++) {
                    const char *sn = ckpt_dtype_safetensors_name((ckpt_dtype)d);
                    if (sn && strlen(sn) == n && memcmp(sn, s, n) == 0)
                        e->dtype = (ckpt_dtype)d;
                }
                size_t m = n < sizeof(e->dtype_text) - 1 ? n : sizeof(e->dtype_text) - 1;
                memcpy(e->dtype_text, s, m);
                e->dtype_text[m] = 0;
            }
            break;
        case F_SHAPE:
            e->shape_array = type == V_ARRAY;
            e->ndim = 0;
            e->shape_bad = SIZE_MAX;
            if (type == V_ARRAY)
                *opens = LV_SHAPE;
            break;
        case F_OFFSETS:
            e->offsets_array = type == V_ARRAY;
            e->noffsets = 0;
            e->offsets_bad = false;
            if (type == V_ARRAY)
                *opens = LV_OFFSETS;
            break;
        default:
            break; /* a field the format does not know: as before, ignored */
        }
        return 1;
    case LV_SHAPE: {
        bool ok = type == V_INT && iv >= 0;
        if (!ok && e->shape_bad == SIZE_MAX)
            e->shape_bad = e->ndim;
        if (e->ndim < p->f->opts.limits.max_ndim) {
            if (e->ndim == p->dims_cap) {
                int64_t *d = ckpt__array_grow(p->dims, &p->dims_cap, sizeof(*d));
                if (!d)
                    return nomem(p, 0);
                p->dims = d;
            }
            p->dims[e->ndim] = ok ? iv : 0;
        }
        e->ndim++;
        return 1;
    }
    case LV_OFFSETS:
        if (type != V_INT || iv < 0)
            e->offsets_bad = true;
        else if (e->noffsets < 2)
            e->off[e->noffsets] = (uint64_t)iv;
        e->noffsets++;
        return 1;
    }
    return 1;
}

/* An entry's object ended: its rules, in the order they were always checked. */
static int entry_done(hdr_parser *p)
{
    entry_state *e = &p->e;
    const char *name = e->name;
    uint64_t at = e->offset;
    if (!e->dtype_string || !e->shape_array || !e->offsets_array || e->noffsets != 2) {
        broken(p, CKPT_ERR_FORMAT, at,
               "tensor '%s' needs \"dtype\", \"shape\" and \"data_offsets\": [begin, end]", name);
        return 1;
    }
    if (e->dtype == CKPT_DTYPE_INVALID) {
        broken(p, CKPT_ERR_UNSUPPORTED, at, "tensor '%s' has unknown dtype '%s'", name,
               e->dtype_text);
        return 1;
    }
    const ckpt_limits *lim = &p->f->opts.limits;
    if (e->ndim > lim->max_ndim) {
        broken(p, CKPT_ERR_LIMIT, at, "tensor '%s' has %zu dimensions (limit %llu)", name, e->ndim,
               (unsigned long long)lim->max_ndim);
        return 1;
    }
    uint64_t numel = 1;
    for (size_t i = 0; i < e->ndim; i++) {
        if (i == e->shape_bad) {
            broken(p, CKPT_ERR_FORMAT, at,
                   "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
            return 1;
        }
        if (!ckpt__mul_u64(numel, (uint64_t)p->dims[i], &numel)) {
            broken(p, CKPT_ERR_FORMAT, at, "tensor '%s': shape product overflows", name);
            return 1;
        }
    }
    if (e->offsets_bad || e->off[1] < e->off[0]) {
        broken(p, CKPT_ERR_FORMAT, at,
               "tensor '%s': data_offsets must be [begin, end] with begin <= end", name);
        return 1;
    }
    uint64_t bits;
    if (!ckpt__mul_u64(numel, ckpt_dtype_bits(e->dtype), &bits)) {
        broken(p, CKPT_ERR_FORMAT, at, "tensor '%s': byte size overflows", name);
        return 1;
    }
    if (bits % 8 != 0) {
        broken(p, CKPT_ERR_FORMAT, at, "tensor '%s': %llu elements of %s do not fill whole bytes",
               name, (unsigned long long)numel, e->dtype_text);
        return 1;
    }
    if (e->off[1] - e->off[0] != bits / 8) {
        broken(p, CKPT_ERR_FORMAT, at,
               "tensor '%s': data_offsets span %llu bytes but shape x dtype is %llu", name,
               (unsigned long long)(e->off[1] - e->off[0]), (unsigned long long)(bits / 8));
        return 1;
    }
    if (p->ne == p->entries_cap) {
        st_entry *n = ckpt__array_grow(p->entries, &p->entries_cap, sizeof(*n));
        if (!n)
            return nomem(p, 0);
        p->entries = n;
    }
    if (p->ne >= UINT32_MAX)
        return FAIL(p, CKPT_ERR_LIMIT, at, "more than 2^32 tensors");
    /* each entry is a tensor path: refused here, before the rest is built */
    if (p->ne >= p->f->opts.limits.max_tensor_paths)
        return FAIL(p, CKPT_ERR_LIMIT, at, "more than %llu tensors (limit max_tensor_paths)",
                    (unsigned long long)p->f->opts.limits.max_tensor_paths);
    ckpt__arena *a = &p->f->arena;
    size_t dims_bytes = (e->ndim ? e->ndim : 1) * sizeof(int64_t);
    ckpt__storage *s = ckpt__arena_alloc(a, sizeof(*s));
    ckpt_tensor *t = ckpt__arena_alloc(a, sizeof(*t));
    int64_t *shape = ckpt__arena_alloc(a, 2 * dims_bytes); /* then the strides */
    ckpt_value *tv = ckpt__value_new(a, CKPT_KIND_TENSOR);
    if (!s || !t || !shape || !tv)
        return nomem(p, sizeof(*s) + sizeof(*t) + 2 * dims_bytes + sizeof(*tv));
    int64_t *stride = shape + dims_bytes / sizeof(int64_t);
    if (e->ndim)
        memcpy(shape, p->dims, e->ndim * sizeof(int64_t));
    /* contiguous strides, a dimension of 0 counting as 1 (as torch makes
     * them): with a 0 in the shape they can pass int64 while the size is 0 */
    int64_t acc = 1;
    for (size_t d = e->ndim; d-- > 0;) {
        stride[d] = acc;
        if (shape[d] && __builtin_mul_overflow(acc, shape[d], &acc)) {
            broken(p, CKPT_ERR_FORMAT, at, "tensor '%s': its strides overflow", name);
            return 1;
        }
    }
    s->key = name;
    s->location = "cpu";
    s->dtype = e->dtype;
    s->nbytes = e->off[1] - e->off[0];
    s->record = name;
    s->record_index = -1;
    s->file_offset = 8 + p->len + e->off[0]; /* the data buffer follows the header */
    s->index = (uint32_t)p->ne;
    t->dtype = e->dtype;
    t->ndim = (uint32_t)e->ndim;
    t->shape = shape;
    t->stride = stride;
    t->storage = s;
    tv->u.tensor.t = t;
    p->entries[p->ne++] = (st_entry){e->key, tv, at};
    return 1;
}

/* ---- yajl callbacks ------------------------------------------------------ */

static int open_container(hdr_parser *p, bool object)
{
    uint8_t kind;
    if (!on_value(p, object ? V_OBJECT : V_ARRAY, 0, NULL, 0, &kind))
        return 0;
    if (p->depth >= HEADER_MAX_DEPTH)
        return FAIL(p, CKPT_ERR_FORMAT, consumed(p) ? consumed(p) - 1 : 0,
                    "invalid JSON: nested deeper than %d", HEADER_MAX_DEPTH);
    if (p->depth == p->levels_cap) {
        size_t cap = p->levels_cap;
        level *l = ckpt__array_grow(p->levels, &cap, sizeof(*l));
        if (!l)
            return nomem(p, 0);
        memset(l + p->levels_cap, 0, (cap - p->levels_cap) * sizeof(*l));
        p->levels = l;
        p->levels_cap = cap;
    }
    level *lv = &p->levels[p->depth++];
    lv->kind = kind;
    lv->object = object;
    lv->field = F_NONE;
    keyset_clear(&lv->keys);
    if (kind == LV_ENTRY) {
        entry_state *e = &p->e;
        ckpt_value *key = e->key;
        uint64_t at = e->offset;
        memset(e, 0, sizeof(*e));
        e->key = key;
        e->name = key->u.s.ptr;
        e->offset = at;
        e->shape_bad = SIZE_MAX;
    }
    return 1;
}

static int close_container(hdr_parser *p)
{
    level *lv = &p->levels[--p->depth];
    keyset_clear(&lv->keys);
    if (p->pending)
        return 1;
    if (lv->kind == LV_ENTRY)
        return entry_done(p);
    if (lv->kind == LV_META)
        p->f->metadata = p->meta;
    return 1;
}

static int cb_start_map(void *ctx) { return open_container(ctx, true); }
static int cb_end_map(void *ctx) { return close_container(ctx); }
static int cb_start_array(void *ctx) { return open_container(ctx, false); }
static int cb_end_array(void *ctx) { return close_container(ctx); }

static int cb_null(void *ctx)
{
    uint8_t k;
    return on_value(ctx, V_NULL, 0, NULL, 0, &k);
}

static int cb_boolean(void *ctx, int b)
{
    (void)b;
    uint8_t k;
    return on_value(ctx, V_BOOL, 0, NULL, 0, &k);
}

static int cb_string(void *ctx, const unsigned char *s, size_t n)
{
    uint8_t k;
    return on_value(ctx, V_STRING, 0, s, n, &k);
}

/* Numbers as the JSON reader took them before: integers in 64 bits signed,
 * reals finite. */
static int cb_number(void *ctx, const char *s, size_t n)
{
    hdr_parser *p = ctx;
    uint64_t end = consumed(p), at = end >= n ? end - n : 0;
    bool real = memchr(s, '.', n) || memchr(s, 'e', n) || memchr(s, 'E', n);
    uint8_t k;
    if (real) {
        char small[64], *copy = n < sizeof(small) ? small : malloc(n + 1);
        if (!copy)
            return nomem(p, 0);
        memcpy(copy, s, n);
        copy[n] = 0;
        errno = 0;
        double d = strtod(copy, NULL);
        if (copy != small)
            free(copy);
        if (errno == ERANGE && isinf(d))
            return FAIL(p, CKPT_ERR_FORMAT, at, "invalid JSON: real number overflow");
        return on_value(p, V_REAL, 0, NULL, 0, &k);
    }
    bool neg = n && s[0] == '-';
    uint64_t v = 0, max = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    for (size_t i = neg; i < n; i++) {
        if (v > (max - (uint64_t)(s[i] - '0')) / 10)
            return FAIL(p, CKPT_ERR_FORMAT, at, "invalid JSON: too big %sinteger",
                        neg ? "negative " : "");
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    int64_t iv = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
    return on_value(p, V_INT, iv, NULL, 0, &k);
}

static int cb_map_key(void *ctx, const unsigned char *s, size_t n)
{
    hdr_parser *p = ctx;
    level *lv = &p->levels[p->depth - 1];
    if (!key_add(p, &lv->keys, s, n))
        return 0;
    if (p->pending || lv->kind == LV_SKIP)
        return 1;
    p->value_offset = string_offset(p, s);
    switch (lv->kind) {
    case LV_ROOT:
        if (n == 12 && memcmp(s, "__metadata__", 12) == 0) {
            lv->field = F_METADATA;
        } else {
            lv->field = F_TENSOR;
            p->e.key = ckpt__value_str(&p->f->arena, CKPT_KIND_STR, (const char *)s, n);
            if (!p->e.key)
                return nomem(p, sizeof(ckpt_value) + n + 1);
            p->e.name = p->e.key->u.s.ptr;
            p->e.offset = p->value_offset;
        }
        break;
    case LV_META:
        p->meta_key = ckpt__value_str(&p->f->arena, CKPT_KIND_STR, (const char *)s, n);
        if (!p->meta_key)
            return nomem(p, n + 1);
        break;
    case LV_ENTRY:
        lv->field = n == 5 && memcmp(s, "dtype", 5) == 0          ? F_DTYPE
                    : n == 5 && memcmp(s, "shape", 5) == 0        ? F_SHAPE
                    : n == 12 && memcmp(s, "data_offsets", 12) == 0 ? F_OFFSETS
                                                                  : F_NONE;
        break;
    default:
        break;
    }
    return 1;
}

static const yajl_callbacks CALLBACKS = {
    .yajl_null = cb_null,
    .yajl_boolean = cb_boolean,
    .yajl_number = cb_number,
    .yajl_string = cb_string,
    .yajl_start_map = cb_start_map,
    .yajl_map_key = cb_map_key,
    .yajl_end_map = cb_end_map,
    .yajl_start_array = cb_start_array,
    .yajl_end_array = cb_end_array,
};

/* Frees what only the parse needs (the entries stay). */
static void parser_done(hdr_parser *p)
{
    if (p->y)
        yajl_free(p->y);
    p->y = NULL;
    for (size_t i = 0; i < p->levels_cap; i++) {
        free(p->levels[i].keys.keys);
        free(p->levels[i].keys.index);
    }
    free(p->levels);
    p->levels = NULL;
    p->levels_cap = p->depth = 0;
    free(p->dims);
    p->dims = NULL;
    while (p->scratch) {
        scratch_block *next = p->scratch->next;
        free(p->scratch);
        p->scratch = next;
    }
}

/* Reads the header text into p->entries and f->metadata. */
static ckpt_status parse_header(hdr_parser *p, ckpt_error *err)
{
    CKPT_RETURN_IF_ERROR(check_text(p->text, p->len, err));
    p->y = yajl_alloc(&CALLBACKS, NULL, p);
    if (!p->y)
        return ckpt__nomem(err);
    /* check_text checked the UTF-8 (more strictly than yajl would) */
    yajl_config(p->y, yajl_dont_validate_strings, 1);
    yajl_status ys = yajl_parse(p->y, p->text, (size_t)p->len);
    if (ys == yajl_status_ok) {
        p->finishing = true;
        ys = yajl_complete_parse(p->y);
    }
    if (ys == yajl_status_client_canceled) {
        if (err)
            *err = p->ferr;
        return p->fatal;
    }
    if (ys != yajl_status_ok) {
        uint64_t at = consumed(p);
        unsigned char *text = yajl_get_error(p->y, 0, p->text, (size_t)p->len);
        char msg[200];
        snprintf(msg, sizeof(msg), "%s", text ? (const char *)text : "yajl error");
        if (text)
            yajl_free_error(p->y, text);
        size_t m = strlen(msg);
        while (m && (msg[m - 1] == '\n' || msg[m - 1] == ' ' || msg[m - 1] == '.'))
            msg[--m] = 0;
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, at, "invalid JSON: %s", msg);
    }
    if (!p->root_seen)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, 0, "header is not a JSON object");
    if (p->pending) {
        if (err)
            *err = p->perr;
        return p->pending;
    }
    return CKPT_OK;
}

ckpt_status ckpt__open_safetensors(ckpt_file *f, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    uint64_t n = ckpt__le64(f->map);
    if (n > f->opts.limits.max_header_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, HEADER_RECORD, 0,
                          "header length %llu exceeds the limit %llu", (unsigned long long)n,
                          (unsigned long long)f->opts.limits.max_header_bytes);
    if (n > f->map_size - 8)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, 0,
                          "header length %llu runs past the end of the file (%llu bytes)",
                          (unsigned long long)n, (unsigned long long)f->map_size);
    if (f->mapped) /* opened without read-around (open.c): the header, whole */
        ckpt__map_advise(f->map + 8, n, CKPT__ADVISE_WILLNEED);
    hdr_parser p;
    memset(&p, 0, sizeof(p));
    p.f = f;
    p.text = f->map + 8;
    p.len = n;
    st = parse_header(&p, err);
    parser_done(&p);
    if (st != CKPT_OK) {
        ckpt__error_set_file_base(err, 8);
        goto out;
    }
    st_entry *entries = p.entries;
    size_t ne = p.ne;
    f->records = calloc(ne ? ne : 1, sizeof(*f->records));
    if (!f->records) {
        st = ckpt__nomem(err);
        goto out;
    }
    size_t sorted = 1;
    while (sorted < ne && cmp_entry(&entries[sorted - 1], &entries[sorted]) < 0)
        sorted++;
    if (sorted < ne) /* headers often list the tensors in the order of their bytes */
        qsort(entries, ne, sizeof(*entries), cmp_entry);
    uint64_t data_start = 8 + n, buffer = f->map_size - data_start, expect = 0;
    for (size_t i = 0; i < ne; i++) {
        const ckpt__storage *s = entries[i].value->u.tensor.t->storage;
        uint64_t begin = s->file_offset - data_start;
        if (begin != expect) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, entries[i].offset,
                            "tensor '%s' starts at %llu but the previous one ends at %llu "
                            "(tensors must tile the data buffer: no gaps, no overlaps)",
                            s->record, (unsigned long long)begin, (unsigned long long)expect);
            ckpt__error_set_file_base(err, 8);
            goto out;
        }
        expect = begin + s->nbytes;
    }
    if (expect != buffer) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                        "tensors cover %llu bytes but the data buffer holds %llu",
                        (unsigned long long)expect, (unsigned long long)buffer);
        goto out;
    }

    f->root = ckpt__value_new(&f->arena, CKPT_KIND_DICT);
    if (!f->root) {
        st = ckpt__nomem(err);
        goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        ckpt_tensor *t = entries[i].value->u.tensor.t;
        ckpt__storage *s = t->storage;
        if ((st = ckpt__file_add_storage(f, s, err)) != CKPT_OK)
            goto out;
        if ((st = ckpt__tensor_validate(t, &f->opts.limits, HEADER_RECORD, CKPT_NO_OFFSET, err)))
            goto out;
        if (!ckpt__dict_set(&f->arena, f->root, entries[i].key, entries[i].value)) {
            st = ckpt__nomem(err);
            goto out;
        }
        ckpt_record_info *r = &f->records[f->record_count++];
        r->name = s->record;
        r->header_offset = r->data_offset = s->file_offset;
        r->stored_size = r->size = s->nbytes;
    }
out:
    free(p.entries);
    return st;
}

bool ckpt__safetensors_detect(const uint8_t *data, uint64_t size)
{
    /* the header length is checked by the reader, which names the problem */
    return data && size >= 10 && ckpt__le64(data) >= 2 && data[8] == '{';
}
