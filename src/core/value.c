/*
 * value.c - the value tree's containers (lists, dicts with a hash index)
 * and the public accessors; the values live in an arena (base/arena.c).
 */
#include "core.h"

#include <assert.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* ======================================================================
 * Values
 * ====================================================================== */

/* The bytes a value of kind needs: its header and the union member its
 * kind uses. A file of many tensors makes some ten values per tensor, most
 * of them tuples, ints and strings: 16 or 32 bytes each instead of the 64
 * of the biggest member (dicts and objects). */
#define VALUE_SMALL (offsetof(ckpt_value, u) + sizeof(int64_t))
#define VALUE_MEDIUM (offsetof(ckpt_value, u) + 3 * sizeof(void *))

static_assert(sizeof(((ckpt_value *)0)->u.c) <= VALUE_MEDIUM - offsetof(ckpt_value, u),
              "complex fits a medium value");
static_assert(sizeof(((ckpt_value *)0)->u.s) <= VALUE_MEDIUM - offsetof(ckpt_value, u),
              "text fits a medium value");
static_assert(sizeof(((ckpt_value *)0)->u.seq) <= VALUE_MEDIUM - offsetof(ckpt_value, u),
              "a sequence fits a medium value");
static_assert(sizeof(((ckpt_value *)0)->u.tensor) <= VALUE_MEDIUM - offsetof(ckpt_value, u),
              "a tensor fits a medium value");
static_assert(sizeof(((ckpt_value *)0)->u.storage) <= VALUE_SMALL - offsetof(ckpt_value, u) &&
              sizeof(((ckpt_value *)0)->u.dtype) <= VALUE_SMALL - offsetof(ckpt_value, u),
              "scalars fit a small value");

size_t ckpt__value_size(int kind)
{
    switch (kind) {
    case CKPT_KIND_NONE:
    case CKPT_KIND_BOOL:
    case CKPT_KIND_INT:
    case CKPT_KIND_FLOAT:
    case CKPT_KIND_DTYPE:
        return VALUE_SMALL;
    case CKPT_KIND_BIGINT:
    case CKPT_KIND_COMPLEX:
    case CKPT_KIND_STR:
    case CKPT_KIND_BYTES:
    case CKPT_KIND_LIST:
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SET:
    case CKPT_KIND_SIZE:
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL:
    case CKPT_KIND_TENSOR:
    case CKPT__KIND_STORAGE: /* becomes a tensor in place (a bare storage) */
        return VALUE_MEDIUM;
    default:
        return sizeof(ckpt_value); /* dicts, objects */
    }
}

ckpt_value *ckpt__value_new(ckpt__arena *a, int kind)
{
    ckpt_value *v = ckpt__arena_alloc(a, ckpt__value_size(kind));
    if (v)
        v->kind = (uint16_t)kind;
    return v;
}

ckpt_value *ckpt__value_str(ckpt__arena *a, int kind, const char *s, size_t len)
{
    ckpt_value *v = ckpt__value_new(a, kind);
    if (!v)
        return NULL;
    char *p = ckpt__arena_strdup(a, s, len);
    if (!p)
        return NULL;
    v->u.s.ptr = p;
    v->u.s.len = len;
    return v;
}

/* New capacity for a container of cap slots holding elem-byte items. */
static bool next_cap(size_t cap, size_t elem, size_t *out)
{
    if (cap > SIZE_MAX / 2 / elem)
        return false;
    *out = cap ? cap * 2 : 4;
    return true;
}

bool ckpt__seq_append(ckpt__arena *a, ckpt_value *seq, ckpt_value *item)
{
    if (!seq)
        return false;
    if (seq->u.seq.len == seq->u.seq.cap) {
        size_t cap;
        if (!next_cap(seq->u.seq.cap, sizeof(ckpt_value *), &cap))
            return false;
        ckpt_value **items = ckpt__arena_grow(a, seq->u.seq.items,
                                              seq->u.seq.cap * sizeof(ckpt_value *),
                                              cap * sizeof(ckpt_value *));
        if (!items)
            return false;
        seq->u.seq.items = items;
        seq->u.seq.cap = cap;
    }
    seq->u.seq.items[seq->u.seq.len++] = item;
    return true;
}

/* ---- hashing ------------------------------------------------------------
 * Dict keys come from the file: a fixed hash would let a hostile pickle
 * send every key to one slot and turn loading into O(n^2). SipHash-1-3 keyed
 * per dict (from addresses, which ASLR varies) keeps that out of reach. */

#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

/* Tags keep equal byte strings of different kinds (str 'a', bytes b'a')
 * apart, as Python does. */
enum { TAG_STR = 1, TAG_BYTES, TAG_INT, TAG_FLOAT, TAG_COMPLEX, TAG_BIGINT, TAG_TUPLE,
       TAG_DTYPE, TAG_GLOBAL, TAG_DEVICE, TAG_IDENTITY, TAG_FROZENSET };

/* Keys are compared and hashed structurally through tuples and frozensets
 * (in any order of their items, as Python compares sets). Tuples cannot
 * form cycles, but memo sharing lets a short pickle build a tuple whose
 * expansion is exponential ((t, t) nested 64 deep): every walk over a key
 * visits at most KEY_NODE_BUDGET values. Hashing stops adding items there
 * (equal keys stop at the same place, so equal keys still hash alike), and
 * keys too big to compare within it are treated as different. */
#define KEY_NODE_BUDGET 256

typedef struct hash_key {
    uint64_t k0, k1;
} hash_key;

static hash_key dict_hash_key(const void *dict)
{
    hash_key k;
    ckpt__hash_key(dict, &k.k0, &k.k1);
    return k;
}

static uint64_t hash_bytes(hash_key k, unsigned tag, const void *p, size_t n)
{
    return ckpt__siphash13(k.k0, k.k1 ^ tag, p, n, false);
}

static uint64_t hash_u64(hash_key k, unsigned tag, uint64_t x)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(x >> (8 * i));
    return hash_bytes(k, tag, b, sizeof(b));
}

static uint64_t hash_identity(hash_key k, const ckpt_value *v)
{
    return hash_u64(k, TAG_IDENTITY, (uint64_t)(uintptr_t)v);
}

/* Numbers as Python compares them: bool, int, float and complex are equal
 * when their values are, so 1, 1.0, True and (1+0j) are one key. */
typedef struct num {
    bool is_int;
    int64_t i;
    double re, im;
} num;

static bool as_num(const ckpt_value *v, num *n)
{
    n->is_int = false;
    n->i = 0;
    n->im = 0.0;
    switch (v->kind) {
    case CKPT_KIND_BOOL: n->is_int = true; n->i = v->u.b ? 1 : 0; n->re = (double)n->i; return true;
    case CKPT_KIND_INT: n->is_int = true; n->i = v->u.i; n->re = (double)v->u.i; return true;
    case CKPT_KIND_FLOAT: n->re = v->u.f; return true;
    case CKPT_KIND_COMPLEX: n->re = v->u.c.re; n->im = v->u.c.im; return true;
    default: return false;
    }
}

/* An integral double inside int64's range, as that int. */
static bool float_as_int(double f, int64_t *out)
{
    if (!(f >= -9223372036854775808.0 && f < 9223372036854775808.0))
        return false;
    int64_t i = (int64_t)f;
    if ((double)i != f)
        return false;
    *out = i;
    return true;
}

static bool num_equal(const num *a, const num *b)
{
    if (a->im != b->im)
        return false;
    if (a->is_int && b->is_int)
        return a->i == b->i;
    int64_t j;
    if (a->is_int)
        return float_as_int(b->re, &j) && j == a->i;
    if (b->is_int)
        return float_as_int(a->re, &j) && j == b->i;
    return a->re == b->re;
}

static uint64_t double_bits(double f)
{
    uint64_t u;
    f += 0.0; /* -0.0 becomes 0.0: they are equal */
    memcpy(&u, &f, sizeof(u));
    return u;
}

static uint64_t hash_num(hash_key k, const ckpt_value *v, const num *n)
{
    int64_t j;
    if (n->im != 0.0 || n->im != n->im) {
        if (n->re != n->re || n->im != n->im)
            return hash_identity(k, v); /* NaN equals nothing but itself */
        uint64_t parts[2] = {double_bits(n->re), double_bits(n->im)};
        uint8_t b[16];
        for (int i = 0; i < 16; i++)
            b[i] = (uint8_t)(parts[i / 8] >> (8 * (i % 8)));
        return hash_bytes(k, TAG_COMPLEX, b, sizeof(b));
    }
    if (n->is_int)
        return hash_u64(k, TAG_INT, (uint64_t)n->i);
    if (float_as_int(n->re, &j))
        return hash_u64(k, TAG_INT, (uint64_t)j);
    if (n->re != n->re)
        return hash_identity(k, v);
    return hash_u64(k, TAG_FLOAT, double_bits(n->re));
}

static bool is_tuple_like(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_TUPLE || v->kind == CKPT_KIND_SIZE;
}

static uint64_t value_hash(hash_key k, const ckpt_value *v, unsigned *nodes)
{
    num n;
    (*nodes)++;
    if (as_num(v, &n))
        return hash_num(k, v, &n);
    switch (v->kind) {
    case CKPT_KIND_STR: return hash_bytes(k, TAG_STR, v->u.s.ptr, v->u.s.len);
    case CKPT_KIND_BYTES: return hash_bytes(k, TAG_BYTES, v->u.s.ptr, v->u.s.len);
    case CKPT_KIND_BIGINT: return hash_bytes(k, TAG_BIGINT, v->u.s.ptr, v->u.s.len);
    case CKPT_KIND_DEVICE: return hash_bytes(k, TAG_DEVICE, v->u.s.ptr, v->u.s.len);
    case CKPT_KIND_GLOBAL: return hash_bytes(k, TAG_GLOBAL, v->u.s.ptr, v->u.s.len);
    case CKPT_KIND_DTYPE: return hash_u64(k, TAG_DTYPE, (uint64_t)v->u.dtype);
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SIZE: {
        uint64_t h = hash_u64(k, TAG_TUPLE, (uint64_t)v->u.seq.len);
        for (size_t i = 0; i < v->u.seq.len && *nodes < KEY_NODE_BUDGET; i++) {
            const ckpt_value *item = v->u.seq.items[i];
            uint64_t ih = item ? value_hash(k, item, nodes) : 0;
            h = ROTL64(h ^ ih, 27) * 0x9e3779b97f4a7c15ull;
        }
        return h;
    }
    case CKPT_KIND_SET: {
        if (!(v->flags & CKPT__VF_FROZEN))
            return hash_identity(k, v);
        /* a sum of the items' hashes: the same in any order */
        uint64_t sum = 0;
        for (size_t i = 0; i < v->u.seq.len && *nodes < KEY_NODE_BUDGET; i++) {
            const ckpt_value *item = v->u.seq.items[i];
            sum += item ? value_hash(k, item, nodes) : 0;
        }
        return hash_u64(k, TAG_FROZENSET, (uint64_t)v->u.seq.len) ^
               (sum * 0x9e3779b97f4a7c15ull);
    }
    default: return hash_identity(k, v);
    }
}

static bool value_equal(const ckpt_value *x, const ckpt_value *y, unsigned *nodes);

/* Two frozensets hold equal items (pickles of sets never repeat one). */
static bool frozensets_equal(const ckpt_value *x, const ckpt_value *y, unsigned *nodes)
{
    if (x->u.seq.len != y->u.seq.len)
        return false;
    for (size_t i = 0; i < x->u.seq.len; i++) {
        /* the same place first: equal sets pickled alike list items alike */
        bool found = value_equal(x->u.seq.items[i], y->u.seq.items[i], nodes);
        for (size_t j = 0; j < y->u.seq.len && !found; j++)
            found = j != i && value_equal(x->u.seq.items[i], y->u.seq.items[j], nodes);
        if (!found)
            return false;
    }
    return true;
}

static bool same_bytes(const ckpt_value *x, const ckpt_value *y)
{
    return x->u.s.len == y->u.s.len &&
           (x->u.s.len == 0 || memcmp(x->u.s.ptr, y->u.s.ptr, x->u.s.len) == 0);
}

static bool value_equal(const ckpt_value *x, const ckpt_value *y, unsigned *nodes)
{
    if (x == y)
        return true;
    if (!x || !y || ++*nodes > KEY_NODE_BUDGET)
        return false;
    num a, b;
    if (as_num(x, &a))
        return as_num(y, &b) && num_equal(&a, &b);
    if (is_tuple_like(x)) {
        if (!is_tuple_like(y) || x->u.seq.len != y->u.seq.len)
            return false;
        for (size_t i = 0; i < x->u.seq.len; i++) {
            if (!value_equal(x->u.seq.items[i], y->u.seq.items[i], nodes))
                return false;
        }
        return true;
    }
    if (x->kind != y->kind)
        return false;
    if (x->kind == CKPT_KIND_SET && (x->flags & y->flags & CKPT__VF_FROZEN))
        return frozensets_equal(x, y, nodes);
    switch (x->kind) {
    case CKPT_KIND_NONE: return true;
    case CKPT_KIND_STR:
    case CKPT_KIND_BYTES:
    case CKPT_KIND_BIGINT: /* normalised: minimal two's complement bytes */
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL: return same_bytes(x, y);
    case CKPT_KIND_DTYPE: return x->u.dtype == y->u.dtype; /* dtypes are singletons */
    default: return false; /* containers, tensors, storages: identity */
    }
}

bool ckpt__value_equal(const ckpt_value *x, const ckpt_value *y)
{
    unsigned nodes = 0;
    return value_equal(x, y, &nodes);
}

static bool keys_equal(const ckpt_value *x, const ckpt_value *y)
{
    unsigned nodes = 0;
    return value_equal(x, y, &nodes);
}

static uint64_t key_hash(hash_key k, const ckpt_value *v)
{
    unsigned nodes = 0;
    return value_hash(k, v, &nodes);
}

/* Bytes a hash or a comparison of this key may touch, walking as they do. */
static uint64_t key_cost(const ckpt_value *v, unsigned *nodes)
{
    (*nodes)++;
    switch (v->kind) {
    case CKPT_KIND_STR:
    case CKPT_KIND_BYTES:
    case CKPT_KIND_BIGINT:
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL: return 16 + (uint64_t)v->u.s.len;
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SIZE:
    case CKPT_KIND_SET: {
        uint64_t c = 16;
        for (size_t i = 0; i < v->u.seq.len && *nodes < KEY_NODE_BUDGET; i++) {
            if (v->u.seq.items[i])
                c += key_cost(v->u.seq.items[i], nodes);
        }
        return c;
    }
    default: return 16;
    }
}

uint64_t ckpt__key_cost(const ckpt_value *key)
{
    unsigned nodes = 0;
    return key ? key_cost(key, &nodes) : 0;
}

/* ---- dicts ------------------------------------------------------------
 * Entries stay in insertion order in keys[]/vals[]; the index maps a hash
 * slot to entry+1 (linear probing, load <= 1/2). Small dicts (<= 8 entries)
 * have no index: a scan is cheaper than hashing. Pickles never delete. */

#define DICT_SCAN_MAX 8
#define DICT_INDEX_MIN 32

static bool is_dict(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT);
}

/* The index holds index_cap slots (entry+1) followed by index_cap tags: the
 * low 32 bits of each slot's key hash. A probe compares keys only on a
 * matching tag, and a reindex places entries by their tags without hashing
 * a key again (a slot is the hash's low bits; index_cap stays below 2^32
 * as entries do). */
static uint32_t *dict_tags(const ckpt_value *d)
{
    return d->u.dict.index + d->u.dict.index_cap;
}

/* Entry index of key, or SIZE_MAX; *slot gets the empty index slot where the
 * key would go and *tag its tag when the dict has an index. */
static size_t dict_find(const ckpt_value *d, const ckpt_value *key, size_t *slot, uint32_t *tag)
{
    if (d->u.dict.index_cap == 0) {
        for (size_t i = 0; i < d->u.dict.len; i++) {
            if (keys_equal(d->u.dict.keys[i], key))
                return i;
        }
        return SIZE_MAX;
    }
    size_t mask = d->u.dict.index_cap - 1;
    uint64_t h = key_hash(dict_hash_key(d), key);
    uint32_t t = (uint32_t)h;
    const uint32_t *tags = dict_tags(d);
    size_t s = (size_t)t & mask;
    for (;;) {
        uint32_t e = d->u.dict.index[s];
        if (e == 0) {
            if (slot)
                *slot = s;
            if (tag)
                *tag = t;
            return SIZE_MAX;
        }
        if (tags[s] == t && keys_equal(d->u.dict.keys[e - 1], key))
            return e - 1;
        s = (s + 1) & mask;
    }
}

static bool dict_reindex(ckpt__arena *a, ckpt_value *d, size_t cap)
{
    if (cap > UINT32_MAX || cap > SIZE_MAX / 2 / sizeof(uint32_t))
        return false;
    uint32_t *index = ckpt__arena_alloc(a, 2 * cap * sizeof(uint32_t));
    if (!index)
        return false;
    uint32_t *tags = index + cap;
    size_t mask = cap - 1;
    /* the tags of the entries, from the old index or hashed once */
    size_t old_cap = d->u.dict.index_cap;
    const uint32_t *old = d->u.dict.index, *old_tags = old ? old + old_cap : NULL;
    hash_key k = dict_hash_key(d);
    for (size_t i = 0; i < old_cap; i++) {
        if (old[i] == 0)
            continue;
        size_t s = old_tags[i] & mask;
        while (index[s] != 0)
            s = (s + 1) & mask;
        index[s] = old[i];
        tags[s] = old_tags[i];
    }
    /* entries not in the old index (all of them when there was none; the
     * newest one otherwise) */
    for (size_t i = 0; i < d->u.dict.len; i++) {
        if (old && i + 1 < d->u.dict.len)
            continue;
        uint32_t t = (uint32_t)key_hash(k, d->u.dict.keys[i]);
        size_t s = t & mask;
        while (index[s] != 0)
            s = (s + 1) & mask;
        index[s] = (uint32_t)(i + 1);
        tags[s] = t;
    }
    d->u.dict.index = index;
    d->u.dict.index_cap = cap;
    return true;
}

bool ckpt__dict_set(ckpt__arena *a, ckpt_value *dict, ckpt_value *key, ckpt_value *val)
{
    if (!is_dict(dict))
        return false;
    size_t slot = 0;
    uint32_t tag = 0;
    size_t found = dict_find(dict, key, &slot, &tag);
    if (found != SIZE_MAX) {
        dict->u.dict.vals[found] = val;
        return true;
    }
    size_t len = dict->u.dict.len;
    if (len >= UINT32_MAX - 1)
        return false; /* the index stores entry+1 in 32 bits */
    if (len == dict->u.dict.cap) {
        size_t cap;
        if (!next_cap(dict->u.dict.cap, sizeof(ckpt_value *), &cap))
            return false;
        size_t old_bytes = dict->u.dict.cap * sizeof(ckpt_value *);
        ckpt_value **keys =
            ckpt__arena_grow(a, dict->u.dict.keys, old_bytes, cap * sizeof(ckpt_value *));
        if (!keys)
            return false;
        dict->u.dict.keys = keys;
        ckpt_value **vals =
            ckpt__arena_grow(a, dict->u.dict.vals, old_bytes, cap * sizeof(ckpt_value *));
        if (!vals)
            return false; /* keys grew already: harmless, cap stays consistent */
        dict->u.dict.vals = vals;
        dict->u.dict.cap = cap;
    }
    dict->u.dict.keys[len] = key;
    dict->u.dict.vals[len] = val;
    dict->u.dict.len = len + 1;
    if (len + 1 <= DICT_SCAN_MAX)
        return true;
    if (dict->u.dict.index_cap == 0 || (len + 1) * 2 > dict->u.dict.index_cap) {
        size_t cap = dict->u.dict.index_cap ? dict->u.dict.index_cap : DICT_INDEX_MIN;
        while (cap < (len + 1) * 2) {
            if (cap > SIZE_MAX / 2)
                goto undo;
            cap *= 2;
        }
        if (!dict_reindex(a, dict, cap))
            goto undo;
        return true;
    }
    dict->u.dict.index[slot] = (uint32_t)(len + 1);
    dict_tags(dict)[slot] = tag;
    return true;

undo:
    /* keep the dict consistent with its (old) index */
    dict->u.dict.len = len;
    return false;
}

ckpt_value *ckpt__dict_lookup(const ckpt_value *dict, const ckpt_value *key)
{
    if (!is_dict(dict) || !key)
        return NULL;
    size_t i = dict_find(dict, key, NULL, NULL);
    return i == SIZE_MAX ? NULL : dict->u.dict.vals[i];
}

/* ======================================================================
 * Public accessors
 * ====================================================================== */

const char *ckpt_kind_name(ckpt_kind kind)
{
    switch (kind) {
    case CKPT_KIND_NONE: return "none";
    case CKPT_KIND_BOOL: return "bool";
    case CKPT_KIND_INT: return "int";
    case CKPT_KIND_BIGINT: return "bigint";
    case CKPT_KIND_FLOAT: return "float";
    case CKPT_KIND_COMPLEX: return "complex";
    case CKPT_KIND_STR: return "str";
    case CKPT_KIND_BYTES: return "bytes";
    case CKPT_KIND_LIST: return "list";
    case CKPT_KIND_TUPLE: return "tuple";
    case CKPT_KIND_SET: return "set";
    case CKPT_KIND_DICT: return "dict";
    case CKPT_KIND_ORDERED_DICT: return "ordered_dict";
    case CKPT_KIND_SIZE: return "size";
    case CKPT_KIND_DEVICE: return "device";
    case CKPT_KIND_DTYPE: return "dtype";
    case CKPT_KIND_TENSOR: return "tensor";
    case CKPT_KIND_GLOBAL: return "global";
    case CKPT_KIND_OBJECT: return "object";
    }
    return "unknown";
}

ckpt_kind ckpt_value_kind(const ckpt_value *v)
{
    if (!v || v->kind > CKPT_KIND_OBJECT)
        return CKPT_KIND_NONE; /* internal kinds (storages) never leak */
    return (ckpt_kind)v->kind;
}

bool ckpt_value_bool(const ckpt_value *v)
{
    if (!v)
        return false;
    if (v->kind == CKPT_KIND_BOOL)
        return v->u.b;
    if (v->kind == CKPT_KIND_INT)
        return v->u.i != 0;
    return false;
}

int64_t ckpt_value_int(const ckpt_value *v)
{
    if (!v)
        return 0;
    if (v->kind == CKPT_KIND_INT)
        return v->u.i;
    if (v->kind == CKPT_KIND_BOOL)
        return v->u.b ? 1 : 0;
    return 0;
}

double ckpt_value_float(const ckpt_value *v)
{
    if (!v)
        return 0.0;
    switch (v->kind) {
    case CKPT_KIND_FLOAT: return v->u.f;
    case CKPT_KIND_INT: return (double)v->u.i;
    case CKPT_KIND_BOOL: return v->u.b ? 1.0 : 0.0;
    default: return 0.0;
    }
}

void ckpt_value_complex(const ckpt_value *v, double *re, double *im)
{
    double r = 0.0, i = 0.0;
    if (v && v->kind == CKPT_KIND_COMPLEX) {
        r = v->u.c.re;
        i = v->u.c.im;
    } else {
        r = ckpt_value_float(v);
    }
    if (re)
        *re = r;
    if (im)
        *im = i;
}

const char *ckpt_value_str(const ckpt_value *v, size_t *len)
{
    const char *s = NULL;
    size_t n = 0;
    if (v) {
        switch (v->kind) {
        case CKPT_KIND_STR:
        case CKPT_KIND_BYTES:
        case CKPT_KIND_BIGINT:
        case CKPT_KIND_DEVICE:
        case CKPT_KIND_GLOBAL:
            s = v->u.s.ptr;
            n = v->u.s.len;
            break;
        case CKPT_KIND_DTYPE:
            s = ckpt_dtype_name(v->u.dtype);
            n = s ? strlen(s) : 0;
            break;
        case CKPT_KIND_OBJECT: {
            /* the class it was made from; a called result names its origin */
            const ckpt_value *c = v->u.obj.cls;
            for (int i = 0; i < 64 && c && c->kind == CKPT_KIND_OBJECT; i++)
                c = c->u.obj.cls;
            if (c && c->kind == CKPT_KIND_GLOBAL) {
                s = c->u.s.ptr;
                n = c->u.s.len;
            }
            break;
        }
        default:
            break;
        }
    }
    if (len)
        *len = s ? n : 0;
    return s;
}

ckpt_dtype ckpt_value_dtype(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_DTYPE ? v->u.dtype : CKPT_DTYPE_INVALID;
}

static bool is_seq(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_LIST || v->kind == CKPT_KIND_TUPLE || v->kind == CKPT_KIND_SET ||
                 v->kind == CKPT_KIND_SIZE);
}

size_t ckpt_value_len(const ckpt_value *v)
{
    if (is_seq(v))
        return v->u.seq.len;
    if (is_dict(v))
        return v->u.dict.len;
    return 0;
}

const ckpt_value *ckpt_value_item(const ckpt_value *v, size_t i)
{
    if (is_seq(v))
        return i < v->u.seq.len ? v->u.seq.items[i] : NULL;
    if (is_dict(v)) /* iterating a dict gives its keys */
        return i < v->u.dict.len ? v->u.dict.keys[i] : NULL;
    return NULL;
}

const ckpt_value *ckpt_value_key(const ckpt_value *v, size_t i)
{
    return is_dict(v) && i < v->u.dict.len ? v->u.dict.keys[i] : NULL;
}

const ckpt_value *ckpt_value_dict_value(const ckpt_value *v, size_t i)
{
    return is_dict(v) && i < v->u.dict.len ? v->u.dict.vals[i] : NULL;
}

const ckpt_value *ckpt_value_get(const ckpt_value *v, const char *key)
{
    if (!is_dict(v) || !key)
        return NULL;
    ckpt_value k;
    memset(&k, 0, sizeof(k));
    k.kind = CKPT_KIND_STR;
    k.u.s.ptr = key;
    k.u.s.len = strlen(key);
    return ckpt__dict_lookup(v, &k);
}

const ckpt_value *ckpt_value_state(const ckpt_value *v)
{
    if (is_dict(v))
        return v->u.dict.state;
    if (v && v->kind == CKPT_KIND_TENSOR)
        return v->u.tensor.state;
    if (v && v->kind == CKPT_KIND_OBJECT)
        return v->u.obj.state;
    return NULL;
}

static const ckpt_value *object_part(const ckpt_value *v, size_t which)
{
    if (!v || v->kind != CKPT_KIND_OBJECT)
        return NULL;
    switch (which) {
    case 0: return v->u.obj.cls;
    case 1: return v->u.obj.args;
    case 2: return v->u.obj.kwargs;
    case 3: return v->u.obj.dict;
    default: return v->u.obj.items;
    }
}

const ckpt_value *ckpt_value_object_class(const ckpt_value *v) { return object_part(v, 0); }
const ckpt_value *ckpt_value_object_args(const ckpt_value *v) { return object_part(v, 1); }
const ckpt_value *ckpt_value_object_kwargs(const ckpt_value *v) { return object_part(v, 2); }
const ckpt_value *ckpt_value_object_dict(const ckpt_value *v) { return object_part(v, 3); }
const ckpt_value *ckpt_value_object_items(const ckpt_value *v) { return object_part(v, 4); }

const ckpt_tensor *ckpt_value_tensor(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_TENSOR ? v->u.tensor.t : NULL;
}
