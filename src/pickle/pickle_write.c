/*
 * pickle_write.c - a protocol 2 pickler over value trees, writing what
 * CPython's pickler writes for torch.save.
 *
 * Only the opcodes of the weights-only unpicklers appear (PROTO, STOP, NONE,
 * NEWTRUE/NEWFALSE, BININT1/BININT2/BININT, LONG1, BINUNICODE, the tuple
 * opcodes, EMPTY_LIST/APPEND(S), EMPTY_DICT/SETITEM(S), GLOBAL, REDUCE,
 * BUILD, BINPERSID, BINPUT/BINGET and their LONG_ forms), plus BINFLOAT for
 * floats and LONG4 for ints of 256 bytes and more; and only globals of
 * torch's weights-only allow-list. The layout follows the C pickler:
 * containers are memoized as they are created, objects built by REDUCE once
 * built; batches of 1000 items, a lone item with APPEND/SETITEM, and the
 * extra empty MARK SETITEMS the C pickler writes after a plain dict of a
 * multiple of 1000 items. Torch objects take the forms torch.save gives
 * them: _rebuild_tensor_v2/_v3, _rebuild_parameter(_with_state),
 * _rebuild_qtensor, _rebuild_sparse_tensor, _rebuild_meta_tensor_no_storage,
 * _rebuild_from_type_v2 for tensors with attributes, storages as BINPERSID of
 * ('storage', torch.<X>Storage, key, location, numel).
 *
 * Two departures from CPython and torch 1.13, both so that torch 2.x's
 * weights-only unpickler reads every file: empty bytes are
 * _codecs.encode('', 'latin1') (not __builtin__.bytes()), and sparse_csr
 * tensors use _rebuild_sparse_tensor like the other layouts (not 1.13's
 * _rebuild_sparse_csr_tensor, which later torch no longer has).
 *
 * Values are memoized by pointer: a value reached twice is written once and
 * then fetched (so tied weights stay one tensor). Globals are memoized by
 * name, the constant strings of torch.save by text.
 */
#include "pickle.h"

#include <stdio.h>
#include <stdlib.h>

/* ---- opcodes ----------------------------------------------------------- */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_NONE = 'N', OP_BININT = 'J', OP_BININT1 = 'K',
    OP_BININT2 = 'M', OP_BINFLOAT = 'G', OP_BINUNICODE = 'X', OP_EMPTY_TUPLE = ')',
    OP_TUPLE = 't', OP_EMPTY_LIST = ']', OP_APPEND = 'a', OP_APPENDS = 'e',
    OP_EMPTY_DICT = '}', OP_SETITEM = 's', OP_SETITEMS = 'u', OP_GLOBAL = 'c',
    OP_REDUCE = 'R', OP_BUILD = 'b', OP_BINPERSID = 'Q', OP_BINPUT = 'q',
    OP_LONG_BINPUT = 'r', OP_BINGET = 'h', OP_LONG_BINGET = 'j',
    OP_PROTO = 0x80, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87,
    OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_LONG4 = 0x8b
};

#define BATCH 1000
#define NO_MEMO UINT32_MAX

/* ---- memo tables --------------------------------------------------------- */

/* Pointer -> memo index, and the cycle guard's "being written" mark. */
typedef struct ptr_slot {
    uintptr_t key;             /* 0: empty */
    uint32_t memo;             /* NO_MEMO until written */
    uint32_t visiting;
} ptr_slot;

typedef struct ptr_map {
    ptr_slot *slots;
    size_t cap, count;
} ptr_map;

static size_t ptr_hash(uintptr_t k)
{
    uint64_t x = (uint64_t)k;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static ptr_slot *ptr_find(const ptr_map *m, uintptr_t k)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = ptr_hash(k) & mask;; i = (i + 1) & mask) {
        if (m->slots[i].key == k)
            return &m->slots[i];
        if (m->slots[i].key == 0)
            return NULL;
    }
}

/* The slot of k, created (memo NO_MEMO) when absent; NULL when out of memory. */
static ptr_slot *ptr_add(ptr_map *m, uintptr_t k)
{
    ptr_slot *s = ptr_find(m, k);
    if (s)
        return s;
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        ptr_slot *n = calloc(cap, sizeof(*n));
        if (!n)
            return NULL;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].key)
                continue;
            size_t j = ptr_hash(m->slots[i].key) & (cap - 1);
            while (n[j].key)
                j = (j + 1) & (cap - 1);
            n[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = n;
        m->cap = cap;
    }
    size_t mask = m->cap - 1, i = ptr_hash(k) & mask;
    while (m->slots[i].key)
        i = (i + 1) & mask;
    m->slots[i].key = k;
    m->slots[i].memo = NO_MEMO;
    m->slots[i].visiting = 0;
    m->count++;
    return &m->slots[i];
}

/* Text -> memo index: globals ("G" module "\n" name), layouts ("L" name)
 * and constant strings ("S" text). */
typedef struct name_slot {
    char *text;                /* NULL: empty */
    size_t len;
    uint64_t hash;
    uint32_t memo;
} name_slot;

typedef struct name_map {
    name_slot *slots;
    size_t cap, count;
} name_map;

static uint64_t name_hash(const name_map *m, const char *s, size_t n)
{
    /* keyed: location tags come from files */
    return ckpt__hash_keyed(&m->slots, s, n);
}

static name_slot *name_find(const name_map *m, const char *s, size_t n, uint64_t h)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        name_slot *e = &m->slots[i];
        if (!e->text)
            return NULL;
        if (e->hash == h && e->len == n && memcmp(e->text, s, n) == 0)
            return e;
    }
}

static bool name_add(name_map *m, const char *s, size_t n, uint64_t h, uint32_t memo)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        name_slot *ns = calloc(cap, sizeof(*ns));
        if (!ns)
            return false;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->slots[i].text)
                continue;
            size_t j = (size_t)m->slots[i].hash & (cap - 1);
            while (ns[j].text)
                j = (j + 1) & (cap - 1);
            ns[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = ns;
        m->cap = cap;
    }
    char *copy = malloc(n ? n : 1);
    if (!copy)
        return false;
    memcpy(copy, s, n);
    size_t mask = m->cap - 1, i = (size_t)h & mask;
    while (m->slots[i].text)
        i = (i + 1) & mask;
    m->slots[i] = (name_slot){.text = copy, .len = n, .hash = h, .memo = memo};
    m->count++;
    return true;
}

static void name_map_free(name_map *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].text);
    free(m->slots);
}

/* ---- the pickler --------------------------------------------------------- */

/* Where the writer is in the tree, for error messages. */
typedef struct frame {
    const ckpt_value *container;
    size_t index;              /* SIZE_MAX: the container's state */
} frame;

typedef struct pickler {
    ckpt__buf out;             /* out.failed: out of memory, everything after is dropped */
    ptr_map memo;
    name_map names;
    uint32_t next_memo;
    ckpt__buf scratch;         /* name keys */
    uint64_t max_nesting;
    frame *path;
    size_t depth, path_cap;
    ckpt__pickle_storage_fn storage_fn;
    void *user;
    ckpt_error *err;
} pickler;

static void emit(pickler *w, const void *p, size_t n) { ckpt__buf_put(&w->out, p, n); }

static void op(pickler *w, uint8_t code) { emit(w, &code, 1); }

static void op_u32(pickler *w, uint8_t code, uint32_t v)
{
    uint8_t b[5] = {code, (uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    emit(w, b, 5);
}

/* ---- errors -------------------------------------------------------------- */

static size_t append_text(char *buf, size_t cap, size_t n, const char *s, size_t len)
{
    if (n + 1 >= cap)
        return n;
    if (len > cap - 1 - n)
        len = cap - 1 - n;
    memcpy(buf + n, s, len);
    buf[n + len] = 0;
    return n + len;
}

/* The path of the value being written, as the naming walk would give it:
 * dict keys as text, positions as numbers, joined by ".". */
static void path_text(const pickler *w, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < w->depth; i++) {
        const frame *f = &w->path[i];
        char part[96];
        const ckpt_value *c = f->container;
        if (!c) {
            snprintf(part, sizeof(part), "(tensor)");
        } else if (f->index == SIZE_MAX) {
            snprintf(part, sizeof(part), "(state)");
        } else if (c->kind == CKPT_KIND_DICT || c->kind == CKPT_KIND_ORDERED_DICT) {
            const ckpt_value *k = c->u.dict.keys[f->index];
            if (k && k->kind == CKPT_KIND_STR)
                snprintf(part, sizeof(part), "%.*s", (int)(k->u.s.len < 80 ? k->u.s.len : 80),
                         k->u.s.ptr);
            else if (k && k->kind == CKPT_KIND_INT)
                snprintf(part, sizeof(part), "%lld", (long long)k->u.i);
            else
                snprintf(part, sizeof(part), "(key %zu)", f->index);
        } else if (c->kind == CKPT_KIND_TENSOR) {
            snprintf(part, sizeof(part), "(part %zu)", f->index);
        } else {
            snprintf(part, sizeof(part), "%zu", f->index);
        }
        if (n)
            n = append_text(buf, cap, n, ".", 1);
        n = append_text(buf, cap, n, part, strlen(part));
    }
    if (!n)
        append_text(buf, cap, 0, "(root)", 6);
}

static ckpt_status fail(pickler *w, ckpt_status st, const char *fmt, ...) CKPT_PRINTF(3, 4);

static ckpt_status fail(pickler *w, ckpt_status st, const char *fmt, ...)
{
    char where[sizeof(((ckpt_error *)0)->record)];
    path_text(w, where, sizeof(where));
    va_list ap;
    va_start(ap, fmt);
    ckpt__vfail(w->err, st, where, CKPT_NO_OFFSET, fmt, ap);
    va_end(ap);
    return st;
}

static ckpt_status nomem(pickler *w)
{
    w->out.failed = true;
    return fail(w, CKPT_ERR_NOMEM, "out of memory while pickling");
}

static ckpt_status push(pickler *w, const ckpt_value *container, size_t index)
{
    if (w->depth >= w->max_nesting)
        return fail(w, CKPT_ERR_LIMIT, "values nest more than %llu deep (max_nesting)",
                    (unsigned long long)w->max_nesting);
    if (w->depth == w->path_cap) {
        frame *p = ckpt__array_grow(w->path, &w->path_cap, sizeof(*p));
        if (!p)
            return nomem(w);
        w->path = p;
    }
    w->path[w->depth++] = (frame){container, index};
    return CKPT_OK;
}

static void pop(pickler *w) { w->depth--; }

/* ---- memo ---------------------------------------------------------------- */

/* BINPUT of the next memo index, which it returns. */
static ckpt_status put(pickler *w, uint32_t *index)
{
    if (w->next_memo == NO_MEMO)
        return fail(w, CKPT_ERR_LIMIT, "more than %u memoized objects", NO_MEMO - 1);
    uint32_t i = w->next_memo++;
    if (i < 256) {
        uint8_t b[2] = {OP_BINPUT, (uint8_t)i};
        emit(w, b, 2);
    } else {
        op_u32(w, OP_LONG_BINPUT, i);
    }
    if (index)
        *index = i;
    return CKPT_OK;
}

static void get(pickler *w, uint32_t i)
{
    if (i < 256) {
        uint8_t b[2] = {OP_BINGET, (uint8_t)i};
        emit(w, b, 2);
    } else {
        op_u32(w, OP_LONG_BINGET, i);
    }
}

/* BINPUT, remembering the index as v's. */
static ckpt_status put_ptr(pickler *w, const void *v)
{
    uint32_t i = 0;
    CKPT_RETURN_IF_ERROR(put(w, &i));
    ptr_slot *s = ptr_add(&w->memo, (uintptr_t)v);
    if (!s)
        return nomem(w);
    s->memo = i;
    return CKPT_OK;
}

/* Closes a call's arguments as CPython does: the tuple (tuple_op), memoized,
 * then REDUCE. */
static ckpt_status reduce_with(pickler *w, uint8_t tuple_op)
{
    op(w, tuple_op);
    CKPT_RETURN_IF_ERROR(put(w, NULL));
    op(w, OP_REDUCE);
    return CKPT_OK;
}

/* The name-table key tag + a [+ "\n" + b] in the scratch buffer. */
static ckpt_status name_key(pickler *w, char tag, const char *a, size_t alen, const char *b,
                            size_t blen)
{
    w->scratch.len = 0;
    ckpt__buf_put(&w->scratch, &tag, 1);
    ckpt__buf_put(&w->scratch, a, alen);
    if (b) {
        ckpt__buf_put(&w->scratch, "\n", 1);
        ckpt__buf_put(&w->scratch, b, blen);
    }
    return w->scratch.failed ? nomem(w) : CKPT_OK;
}

/* Looks the key in the scratch buffer up: emits its BINGET and sets *found. */
static void name_get(pickler *w, uint64_t *hash, bool *found)
{
    const char *key = (const char *)w->scratch.p;
    *hash = name_hash(&w->names, key, w->scratch.len);
    name_slot *e = name_find(&w->names, key, w->scratch.len, *hash);
    *found = e != NULL;
    if (e)
        get(w, e->memo);
}

/* BINPUT of the object the scratch key names. */
static ckpt_status name_put(pickler *w, uint64_t hash)
{
    uint32_t i = 0;
    CKPT_RETURN_IF_ERROR(put(w, &i));
    if (!name_add(&w->names, (const char *)w->scratch.p, w->scratch.len, hash, i))
        return nomem(w);
    return CKPT_OK;
}

/* ---- scalars ------------------------------------------------------------- */

static void save_bool(pickler *w, bool b) { op(w, b ? OP_NEWTRUE : OP_NEWFALSE); }

/* LONG1/LONG4 of little-endian two's complement bytes. */
static void save_long_bytes(pickler *w, const uint8_t *p, size_t n)
{
    if (n < 256) {
        uint8_t h[2] = {OP_LONG1, (uint8_t)n};
        emit(w, h, 2);
    } else {
        op_u32(w, OP_LONG4, (uint32_t)n);
    }
    emit(w, p, n);
}

static void save_int(pickler *w, int64_t v)
{
    if (v >= 0 && v <= 0xff) {
        uint8_t b[2] = {OP_BININT1, (uint8_t)v};
        emit(w, b, 2);
    } else if (v >= 0 && v <= 0xffff) {
        uint8_t b[3] = {OP_BININT2, (uint8_t)v, (uint8_t)(v >> 8)};
        emit(w, b, 3);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        op_u32(w, OP_BININT, (uint32_t)(int32_t)v);
    } else {
        /* the shortest two's complement form, as pickle's encode_long */
        uint8_t b[8];
        uint64_t u = (uint64_t)v;
        for (int i = 0; i < 8; i++)
            b[i] = (uint8_t)(u >> (8 * i));
        size_t n = 8;
        while (n > 1 && ((b[n - 1] == 0x00 && !(b[n - 2] & 0x80)) ||
                         (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
            n--;
        save_long_bytes(w, b, n);
    }
}

static void save_float(pickler *w, double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    uint8_t b[9];
    b[0] = OP_BINFLOAT;
    for (int i = 0; i < 8; i++)
        b[1 + i] = (uint8_t)(u >> (56 - 8 * i));
    emit(w, b, 9);
}

static ckpt_status save_unicode(pickler *w, const char *s, size_t n)
{
    if (n > UINT32_MAX)
        return fail(w, CKPT_ERR_LIMIT, "a text of %zu bytes is too long for protocol 2", n);
    op_u32(w, OP_BINUNICODE, (uint32_t)n);
    emit(w, s, n);
    return CKPT_OK;
}

/* GLOBAL module name, or BINGET of it when written before. */
static ckpt_status save_global(pickler *w, const char *module, const char *name)
{
    size_t ml = strlen(module), nl = strlen(name);
    CKPT_RETURN_IF_ERROR(name_key(w, 'G', module, ml, name, nl));
    uint64_t h;
    bool found;
    name_get(w, &h, &found);
    if (found)
        return CKPT_OK;
    op(w, OP_GLOBAL);
    emit(w, module, ml);
    op(w, '\n');
    emit(w, name, nl);
    op(w, '\n');
    return name_put(w, h);
}

/* A string torch.save writes as one object each time ('storage', 'latin1',
 * 'cpu'): BINUNICODE once, BINGET after. */
static ckpt_status save_const_str(pickler *w, const char *s, size_t n)
{
    CKPT_RETURN_IF_ERROR(name_key(w, 'S', s, n, NULL, 0));
    uint64_t h;
    bool found;
    name_get(w, &h, &found);
    if (found)
        return CKPT_OK;
    CKPT_RETURN_IF_ERROR(save_unicode(w, s, n));
    return name_put(w, h);
}

/* collections.OrderedDict(): the backward hooks torch.save writes. */
static ckpt_status save_empty_odict(pickler *w)
{
    CKPT_RETURN_IF_ERROR(save_global(w, "collections", "OrderedDict"));
    op(w, OP_EMPTY_TUPLE);
    op(w, OP_REDUCE);
    return put(w, NULL);
}

/* A tuple of ints (sizes, strides), a new object each time. */
static ckpt_status save_dims(pickler *w, uint32_t n, const int64_t *d)
{
    if (n == 0) {
        op(w, OP_EMPTY_TUPLE);
        return CKPT_OK;
    }
    if (n > 3)
        op(w, OP_MARK);
    for (uint32_t i = 0; i < n; i++)
        save_int(w, d[i]);
    op(w, n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE);
    return put(w, NULL);
}

/* torch.Size(dims) */
static ckpt_status save_size_dims(pickler *w, uint32_t n, const int64_t *d)
{
    CKPT_RETURN_IF_ERROR(save_global(w, "torch", "Size"));
    CKPT_RETURN_IF_ERROR(save_dims(w, n, d));
    CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE1));
    return CKPT_OK;
}

/* ---- names torch knows ----------------------------------------------------- */

const char *ckpt__torch_storage_class(ckpt_dtype dtype)
{
    switch (dtype) {
    case CKPT_DTYPE_FLOAT64: return "DoubleStorage";
    case CKPT_DTYPE_FLOAT32: return "FloatStorage";
    case CKPT_DTYPE_FLOAT16: return "HalfStorage";
    case CKPT_DTYPE_BFLOAT16: return "BFloat16Storage";
    case CKPT_DTYPE_INT64: return "LongStorage";
    case CKPT_DTYPE_INT32: return "IntStorage";
    case CKPT_DTYPE_INT16: return "ShortStorage";
    case CKPT_DTYPE_INT8: return "CharStorage";
    case CKPT_DTYPE_UINT8: return "ByteStorage";
    case CKPT_DTYPE_BOOL: return "BoolStorage";
    case CKPT_DTYPE_COMPLEX128: return "ComplexDoubleStorage";
    case CKPT_DTYPE_COMPLEX64: return "ComplexFloatStorage";
    case CKPT_DTYPE_QINT8: return "QInt8Storage";
    case CKPT_DTYPE_QUINT8: return "QUInt8Storage";
    case CKPT_DTYPE_QINT32: return "QInt32Storage";
    case CKPT_DTYPE_QUINT4X2: return "QUInt4x2Storage";
    case CKPT_DTYPE_QUINT2X4: return "QUInt2x4Storage";
    default: return NULL;
    }
}

/* The dtype's name in torch (torch.<name>), NULL for the safetensors-only
 * sub-byte floats torch has no dtype for. */
static const char *torch_dtype_name(ckpt_dtype d)
{
    if (ckpt_dtype_bits(d) == 0 || d == CKPT_DTYPE_FLOAT4_E2M1 || d == CKPT_DTYPE_FLOAT6_E2M3 ||
        d == CKPT_DTYPE_FLOAT6_E3M2)
        return NULL;
    return ckpt_dtype_name(d);
}

static const char *const LAYOUTS[] = {
    "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
    "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn",
};

static const char *layout_name(unsigned layout)
{
    return layout <= CKPT_LAYOUT_SPARSE_BSC ? LAYOUTS[layout] : NULL;
}

static bool is_layout_name(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof(LAYOUTS) / sizeof(LAYOUTS[0]); i++) {
        if (strlen(LAYOUTS[i]) == n && memcmp(LAYOUTS[i], s, n) == 0)
            return true;
    }
    return false;
}

/* torch.serialization._get_layout('torch.sparse_coo'): how a layout pickles.
 * Layouts are singletons, memoized by name. */
static ckpt_status save_layout(pickler *w, const char *s, size_t n)
{
    CKPT_RETURN_IF_ERROR(name_key(w, 'L', s, n, NULL, 0));
    uint64_t h;
    bool found;
    name_get(w, &h, &found);
    if (found)
        return CKPT_OK;
    CKPT_RETURN_IF_ERROR(save_global(w, "torch.serialization", "_get_layout"));
    CKPT_RETURN_IF_ERROR(save_unicode(w, s, n));
    CKPT_RETURN_IF_ERROR(put(w, NULL));
    CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE1));
    /* the key may have moved in the scratch buffer: make it again */
    CKPT_RETURN_IF_ERROR(name_key(w, 'L', s, n, NULL, 0));
    return name_put(w, h);
}

/* ---- values ---------------------------------------------------------------- */

static ckpt_status save(pickler *w, const ckpt_value *v);

static ckpt_status save_child(pickler *w, const ckpt_value *container, size_t index,
                              const ckpt_value *v)
{
    CKPT_RETURN_IF_ERROR(push(w, container, index));
    ckpt_status st = save(w, v);
    pop(w);
    return st;
}

/* Items of a list (or the list a set pickles as), as the C pickler's
 * batch_list_exact: one item with APPEND, else MARK ... APPENDS batches. */
static ckpt_status save_list_items(pickler *w, const ckpt_value *seq)
{
    size_t n = seq->u.seq.len;
    if (n == 0)
        return CKPT_OK;
    if (n == 1) {
        CKPT_RETURN_IF_ERROR(save_child(w, seq, 0, seq->u.seq.items[0]));
        op(w, OP_APPEND);
        return CKPT_OK;
    }
    size_t i = 0;
    do {
        op(w, OP_MARK);
        for (size_t k = 0; k < BATCH && i < n; k++, i++)
            CKPT_RETURN_IF_ERROR(save_child(w, seq, i, seq->u.seq.items[i]));
        op(w, OP_APPENDS);
    } while (i < n);
    return CKPT_OK;
}

/* A frozenset in a key (itself, or in a tuple of it): written as a set it
 * would make a key Python cannot hash. Looks at 256 values at most. */
static bool key_has_frozenset(const ckpt_value *k, unsigned *budget)
{
    if (!k || *budget == 0)
        return false;
    (*budget)--;
    if (k->kind == CKPT_KIND_SET)
        return (k->flags & CKPT__VF_FROZEN) != 0;
    if (k->kind != CKPT_KIND_TUPLE)
        return false;
    for (size_t i = 0; i < k->u.seq.len; i++) {
        if (key_has_frozenset(k->u.seq.items[i], budget))
            return true;
    }
    return false;
}

static ckpt_status save_entry(pickler *w, const ckpt_value *d, size_t i)
{
    unsigned budget = 256;
    if (key_has_frozenset(d->u.dict.keys[i], &budget)) {
        char text[128];
        ckpt__key_text(d->u.dict.keys[i], text, sizeof(text));
        return fail(w, CKPT_ERR_UNSUPPORTED,
                    "the dict key %s holds a frozenset: torch's weights-only reader has no "
                    "frozenset, and a set cannot be a key",
                    text);
    }
    CKPT_RETURN_IF_ERROR(save_child(w, d, i, d->u.dict.keys[i]));
    return save_child(w, d, i, d->u.dict.vals[i]);
}

/* A plain dict's items, as batch_dict_exact: one item with SETITEM, else
 * MARK ... SETITEMS batches while a batch comes out full (so a multiple of
 * 1000 items ends with an empty batch). */
static ckpt_status save_dict_items_exact(pickler *w, const ckpt_value *d)
{
    size_t n = d->u.dict.len;
    if (n == 0)
        return CKPT_OK;
    if (n == 1) {
        CKPT_RETURN_IF_ERROR(save_entry(w, d, 0));
        op(w, OP_SETITEM);
        return CKPT_OK;
    }
    size_t i = 0, k;
    do {
        op(w, OP_MARK);
        for (k = 0; k < BATCH && i < n; k++, i++)
            CKPT_RETURN_IF_ERROR(save_entry(w, d, i));
        op(w, OP_SETITEMS);
    } while (k == BATCH);
    return CKPT_OK;
}

/* Items given by a reduce (an OrderedDict's), as batch_dict: a lone last
 * item with SETITEM, the others in MARK ... SETITEMS batches. */
static ckpt_status save_dict_items_iter(pickler *w, const ckpt_value *d)
{
    size_t n = d->u.dict.len, i = 0;
    while (i < n) {
        if (n - i == 1) {
            CKPT_RETURN_IF_ERROR(save_entry(w, d, i));
            op(w, OP_SETITEM);
            return CKPT_OK;
        }
        op(w, OP_MARK);
        for (size_t k = 0; k < BATCH && i < n; k++, i++)
            CKPT_RETURN_IF_ERROR(save_entry(w, d, i));
        op(w, OP_SETITEMS);
    }
    return CKPT_OK;
}

static ckpt_status save_tuple(pickler *w, const ckpt_value *v)
{
    size_t n = v->u.seq.len;
    if (n == 0) {
        op(w, OP_EMPTY_TUPLE); /* never memoized, as in CPython */
        return CKPT_OK;
    }
    if (n > 3)
        op(w, OP_MARK);
    for (size_t i = 0; i < n; i++)
        CKPT_RETURN_IF_ERROR(save_child(w, v, i, v->u.seq.items[i]));
    op(w, n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE);
    return put_ptr(w, v);
}

/* bytes: _codecs.encode(text, 'latin1'), as CPython writes them, also when
 * empty (where CPython writes __builtin__.bytes(), which torch 2.x's
 * weights-only unpickler refuses). */
static ckpt_status save_bytes(pickler *w, const ckpt_value *v)
{
    const uint8_t *p = (const uint8_t *)v->u.s.ptr;
    size_t n = v->u.s.len;
    CKPT_RETURN_IF_ERROR(save_global(w, "_codecs", "encode"));
    size_t high = 0;
    for (size_t i = 0; i < n; i++)
        high += p[i] >= 0x80;
    if (n + high > UINT32_MAX || n + high < n)
        return fail(w, CKPT_ERR_LIMIT, "bytes of %zu bytes are too long for protocol 2", n);
    op_u32(w, OP_BINUNICODE, (uint32_t)(n + high));
    if (!ckpt__buf_reserve(&w->out, n + high))
        return nomem(w);
    uint8_t *o = w->out.p + w->out.len;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x80) {
            *o++ = p[i];
        } else {
            *o++ = (uint8_t)(0xc0 | (p[i] >> 6));
            *o++ = (uint8_t)(0x80 | (p[i] & 0x3f));
        }
    }
    w->out.len += n + high;
    w->out.p[w->out.len] = 0;
    CKPT_RETURN_IF_ERROR(put(w, NULL));
    CKPT_RETURN_IF_ERROR(save_const_str(w, "latin1", 6));
    CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE2));
    return put_ptr(w, v);
}

/* torch.device('cuda', 0) / torch.device('cpu') */
static ckpt_status save_device(pickler *w, const ckpt_value *v)
{
    const char *s = v->u.s.ptr;
    size_t n = v->u.s.len;
    const char *colon = memchr(s, ':', n);
    size_t tlen = colon ? (size_t)(colon - s) : n;
    int64_t index = -1;
    if (colon) {
        index = 0;
        size_t dn = n - tlen - 1;
        if (dn == 0 || dn > 9)
            return fail(w, CKPT_ERR_INVALID_ARG, "device '%.*s' has no valid index", (int)n, s);
        for (size_t i = 0; i < dn; i++) {
            char c = colon[1 + i];
            if (c < '0' || c > '9')
                return fail(w, CKPT_ERR_INVALID_ARG, "device '%.*s' has no valid index", (int)n,
                            s);
            index = index * 10 + (c - '0');
        }
    }
    if (tlen == 0)
        return fail(w, CKPT_ERR_INVALID_ARG, "device has no type");
    CKPT_RETURN_IF_ERROR(save_global(w, "torch", "device"));
    CKPT_RETURN_IF_ERROR(save_unicode(w, s, tlen));
    CKPT_RETURN_IF_ERROR(put(w, NULL));
    if (index >= 0)
        save_int(w, index);
    CKPT_RETURN_IF_ERROR(reduce_with(w, index >= 0 ? OP_TUPLE2 : OP_TUPLE1));
    return put_ptr(w, v);
}

/* A GLOBAL value: a layout pickles through _get_layout, anything else as
 * GLOBAL module name (builtins named __builtin__, as protocol 2 does). */
static ckpt_status save_global_value(pickler *w, const ckpt_value *v)
{
    const char *s = v->u.s.ptr;
    size_t n = v->u.s.len;
    if (is_layout_name(s, n))
        return save_layout(w, s, n);
    const char *dot = NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n' || s[i] == 0)
            return fail(w, CKPT_ERR_INVALID_ARG, "a global's name holds a newline or NUL");
        if (s[i] == '.')
            dot = s + i;
    }
    if (!dot || dot == s || dot == s + n - 1)
        return fail(w, CKPT_ERR_INVALID_ARG, "global '%.*s' is not of the form module.name",
                    (int)(n < 100 ? n : 100), s);
    char module[256], name[256];
    size_t ml = (size_t)(dot - s), nl = n - ml - 1;
    if (ml >= sizeof(module) || nl >= sizeof(name))
        return fail(w, CKPT_ERR_INVALID_ARG, "global name of %zu bytes is too long", n);
    memcpy(module, s, ml);
    module[ml] = 0;
    memcpy(name, dot + 1, nl);
    name[nl] = 0;
    if (strcmp(module, "builtins") == 0)
        snprintf(module, sizeof(module), "__builtin__");
    return save_global(w, module, name);
}

/* ---- tensors --------------------------------------------------------------- */

static ckpt_status save_tensor(pickler *w, const ckpt_value *holder, const ckpt_tensor *t,
                               const ckpt_value *state);

/* ('storage', torch.<X>Storage, key, location, numel) BINPERSID */
static ckpt_status save_storage_ref(pickler *w, ckpt__storage *s, ckpt_dtype dtype, bool untyped)
{
    ckpt__pickle_storage ps;
    memset(&ps, 0, sizeof(ps));
    ckpt_status st = w->storage_fn(w->user, s, dtype, untyped, &ps, w->err);
    if (st != CKPT_OK) {
        if (w->err && !w->err->record[0])
            path_text(w, w->err->record, sizeof(w->err->record));
        return st;
    }
    if (ps.numel > INT64_MAX)
        return fail(w, CKPT_ERR_LIMIT, "storage of %llu elements", (unsigned long long)ps.numel);
    op(w, OP_MARK);
    CKPT_RETURN_IF_ERROR(save_const_str(w, "storage", 7));
    /* the class's own module, as pickle names it (torch.UntypedStorage is
     * defined in torch.storage; the typed classes in torch) */
    CKPT_RETURN_IF_ERROR(save_global(w, ps.untyped ? "torch.storage" : "torch", ps.type_name));
    /* the key is one object per storage in torch.save */
    ptr_slot *k = ptr_find(&w->memo, (uintptr_t)ps.key);
    if (k && k->memo != NO_MEMO) {
        get(w, k->memo);
    } else {
        CKPT_RETURN_IF_ERROR(save_unicode(w, ps.key, strlen(ps.key)));
        CKPT_RETURN_IF_ERROR(put_ptr(w, ps.key));
    }
    CKPT_RETURN_IF_ERROR(save_const_str(w, ps.location, strlen(ps.location)));
    save_int(w, (int64_t)ps.numel);
    op(w, OP_TUPLE);
    CKPT_RETURN_IF_ERROR(put(w, NULL));
    op(w, OP_BINPERSID);
    return CKPT_OK;
}

/* Checks a tensor before any of it is written: dtype, dimensions, the view
 * inside its storage. */
static ckpt_status check_tensor(pickler *w, const ckpt_tensor *t)
{
    if (!torch_dtype_name(t->dtype))
        return fail(w, CKPT_ERR_UNSUPPORTED, "a tensor of dtype %s cannot be saved in a torch file",
                    ckpt_dtype_name(t->dtype));
    if (t->ndim && (!t->shape || !t->stride))
        return fail(w, CKPT_ERR_INVALID_ARG, "tensor has no shape or stride");
    if (t->layout > CKPT_LAYOUT_SPARSE_BSC)
        return fail(w, CKPT_ERR_INVALID_ARG, "tensor has an unknown layout %u", t->layout);
    if (t->layout != CKPT_LAYOUT_STRIDED)
        return CKPT_OK; /* its parts are checked as they are written */
    ckpt_tensor copy = *t;
    ckpt_error e;
    if (ckpt__tensor_validate(&copy, NULL, "", CKPT_NO_OFFSET, &e) != CKPT_OK)
        return fail(w, e.status, "invalid tensor: %s", e.message);
    return CKPT_OK;
}

/* The torch._utils function that rebuilds t (checking what it needs). */
static ckpt_status rebuild_func(pickler *w, const ckpt_tensor *t, const ckpt_value *qparams,
                                const char **name)
{
    if (t->layout != CKPT_LAYOUT_STRIDED) {
        unsigned nparts = t->layout == CKPT_LAYOUT_SPARSE_COO ? 2 : 3;
        for (unsigned i = 0; i < nparts; i++) {
            if (!t->parts[i])
                return fail(w, CKPT_ERR_INVALID_ARG, "%s tensor misses part %u",
                            ckpt_layout_name((ckpt_layout)t->layout), i);
        }
        /* every layout as torch 2.x writes it; torch 1.13 wrote sparse_csr
         * with _rebuild_sparse_csr_tensor, which later torch (and its
         * weights-only allow-list) no longer has */
        *name = "_rebuild_sparse_tensor";
        return CKPT_OK;
    }
    if (!t->storage) {
        *name = "_rebuild_meta_tensor_no_storage";
        return CKPT_OK;
    }
    if (ckpt__dtype_is_quantized(t->dtype)) {
        const ckpt_value *q0 = qparams && qparams->kind == CKPT_KIND_TUPLE && qparams->u.seq.len >= 3
                                   ? qparams->u.seq.items[0]
                                   : NULL;
        if (!q0 || q0->kind != CKPT_KIND_GLOBAL || q0->u.s.len < 10 ||
            memcmp(q0->u.s.ptr, "torch.per_", 10) != 0)
            return fail(w, CKPT_ERR_INVALID_ARG,
                        "a %s tensor needs its quantizer parameters (qscheme, ...) as its state",
                        ckpt_dtype_name(t->dtype));
        *name = "_rebuild_qtensor";
        return CKPT_OK;
    }
    *name = ckpt__torch_storage_class(t->dtype) ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3";
    return CKPT_OK;
}

/* The argument tuple of t's rebuild function (memoized, as a new tuple). */
static ckpt_status save_rebuild_args(pickler *w, const ckpt_value *holder, const ckpt_tensor *t,
                                     const ckpt_value *qparams, bool requires_grad)
{
    if (t->layout != CKPT_LAYOUT_STRIDED) {
        /* (layout, (indices, values, size)) or (layout, (compressed, plain,
         * values, size)); requires_grad is not saved, as in torch */
        bool coo = t->layout == CKPT_LAYOUT_SPARSE_COO;
        unsigned nparts = coo ? 2 : 3;
        const char *lname = layout_name(t->layout);
        CKPT_RETURN_IF_ERROR(save_layout(w, lname, strlen(lname)));
        if (!coo)
            op(w, OP_MARK);
        for (unsigned i = 0; i < nparts; i++) {
            CKPT_RETURN_IF_ERROR(push(w, holder, i));
            ckpt_status st = save_tensor(w, NULL, t->parts[i], NULL);
            pop(w);
            CKPT_RETURN_IF_ERROR(st);
            CKPT_RETURN_IF_ERROR(put(w, NULL));
        }
        CKPT_RETURN_IF_ERROR(save_size_dims(w, t->ndim, t->shape));
        CKPT_RETURN_IF_ERROR(put(w, NULL));
        op(w, coo ? OP_TUPLE3 : OP_TUPLE);
        CKPT_RETURN_IF_ERROR(put(w, NULL));
        op(w, OP_TUPLE2);
        return put(w, NULL);
    }
    const char *dname = torch_dtype_name(t->dtype);
    op(w, OP_MARK);
    if (!t->storage) {
        /* (dtype, size, stride, requires_grad): a meta tensor has no storage */
        CKPT_RETURN_IF_ERROR(save_global(w, "torch", dname));
        CKPT_RETURN_IF_ERROR(save_dims(w, t->ndim, t->shape));
        CKPT_RETURN_IF_ERROR(save_dims(w, t->ndim, t->stride));
        save_bool(w, requires_grad);
        op(w, OP_TUPLE);
        return put(w, NULL);
    }
    /* (storage, offset, size, stride[, quantizer_params], requires_grad,
     * hooks[, dtype]) */
    bool quantized = ckpt__dtype_is_quantized(t->dtype);
    bool untyped = ckpt__torch_storage_class(t->dtype) == NULL;
    CKPT_RETURN_IF_ERROR(save_storage_ref(w, t->storage, t->dtype, untyped));
    save_int(w, t->storage_offset);
    CKPT_RETURN_IF_ERROR(save_dims(w, t->ndim, t->shape));
    CKPT_RETURN_IF_ERROR(save_dims(w, t->ndim, t->stride));
    if (quantized) {
        CKPT_RETURN_IF_ERROR(push(w, holder, SIZE_MAX));
        ckpt_status st = save(w, qparams);
        pop(w);
        CKPT_RETURN_IF_ERROR(st);
    }
    save_bool(w, requires_grad);
    CKPT_RETURN_IF_ERROR(save_empty_odict(w));
    if (untyped)
        CKPT_RETURN_IF_ERROR(save_global(w, "torch", dname));
    op(w, OP_TUPLE);
    return put(w, NULL);
}

/* A tensor as torch.save writes it, up to and including its last REDUCE
 * (the caller memoizes the result). holder is the tree value (NULL for the
 * parts of a sparse tensor); state its BUILD state. */
static ckpt_status save_tensor(pickler *w, const ckpt_value *holder, const ckpt_tensor *t,
                               const ckpt_value *state)
{
    if (!t)
        return fail(w, CKPT_ERR_INVALID_ARG, "a tensor value without a tensor");
    CKPT_RETURN_IF_ERROR(check_tensor(w, t));
    /* a quantized tensor's state is its quantizer parameters; any other
     * state is Python attributes (a dict), which torch restores with
     * _rebuild_parameter_with_state or _rebuild_from_type_v2 */
    const ckpt_value *qparams = NULL, *attrs = NULL;
    if (ckpt__dtype_is_quantized(t->dtype) && t->layout == CKPT_LAYOUT_STRIDED && t->storage)
        qparams = state;
    else
        attrs = state;
    if (attrs && (attrs->kind == CKPT_KIND_NONE ||
                  ((attrs->kind == CKPT_KIND_DICT || attrs->kind == CKPT_KIND_ORDERED_DICT) &&
                   attrs->u.dict.len == 0)))
        attrs = NULL;
    if (attrs && attrs->kind != CKPT_KIND_DICT && attrs->kind != CKPT_KIND_ORDERED_DICT)
        return fail(w, CKPT_ERR_UNSUPPORTED,
                    "a tensor's state must be a dict of attributes to be saved, not a %s",
                    ckpt_kind_name(ckpt_value_kind(attrs)));
    const char *func = NULL;
    CKPT_RETURN_IF_ERROR(rebuild_func(w, t, qparams, &func));
    if (t->is_parameter) {
        CKPT_RETURN_IF_ERROR(save_global(w, "torch._utils", attrs ? "_rebuild_parameter_with_state"
                                                                  : "_rebuild_parameter"));
        if (attrs)
            op(w, OP_MARK);
        /* the parameter's data: a plain tensor that does not require grad */
        CKPT_RETURN_IF_ERROR(save_global(w, "torch._utils", func));
        CKPT_RETURN_IF_ERROR(save_rebuild_args(w, holder, t, qparams, false));
        op(w, OP_REDUCE);
        CKPT_RETURN_IF_ERROR(put(w, NULL));
        save_bool(w, t->requires_grad);
        CKPT_RETURN_IF_ERROR(save_empty_odict(w));
        if (attrs) {
            CKPT_RETURN_IF_ERROR(push(w, holder, SIZE_MAX));
            ckpt_status st = save(w, attrs);
            pop(w);
            CKPT_RETURN_IF_ERROR(st);
            op(w, OP_TUPLE);
        } else {
            op(w, OP_TUPLE3);
        }
        CKPT_RETURN_IF_ERROR(put(w, NULL));
        op(w, OP_REDUCE);
        return CKPT_OK;
    }
    if (attrs) {
        /* _rebuild_from_type_v2(func, torch.Tensor, args, state) */
        CKPT_RETURN_IF_ERROR(save_global(w, "torch._tensor", "_rebuild_from_type_v2"));
        op(w, OP_MARK);
        CKPT_RETURN_IF_ERROR(save_global(w, "torch._utils", func));
        CKPT_RETURN_IF_ERROR(save_global(w, "torch", "Tensor"));
        CKPT_RETURN_IF_ERROR(save_rebuild_args(w, holder, t, qparams, t->requires_grad));
        CKPT_RETURN_IF_ERROR(push(w, holder, SIZE_MAX));
        ckpt_status st = save(w, attrs);
        pop(w);
        CKPT_RETURN_IF_ERROR(st);
        CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE));
        return CKPT_OK;
    }
    CKPT_RETURN_IF_ERROR(save_global(w, "torch._utils", func));
    CKPT_RETURN_IF_ERROR(save_rebuild_args(w, holder, t, qparams, t->requires_grad));
    op(w, OP_REDUCE);
    return CKPT_OK;
}

/* ---- the value switch -------------------------------------------------------- */

/* Values that are objects in Python (memoized, and possibly on a cycle). */
static ckpt_status save_object(pickler *w, const ckpt_value *v)
{
    switch (v->kind) {
    case CKPT_KIND_STR:
        CKPT_RETURN_IF_ERROR(save_unicode(w, v->u.s.ptr, v->u.s.len));
        return put_ptr(w, v);
    case CKPT_KIND_BYTES:
        return save_bytes(w, v);
    case CKPT_KIND_COMPLEX:
        CKPT_RETURN_IF_ERROR(save_global(w, "__builtin__", "complex"));
        save_float(w, v->u.c.re);
        save_float(w, v->u.c.im);
        CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE2));
        return put_ptr(w, v);
    case CKPT_KIND_LIST:
        op(w, OP_EMPTY_LIST);
        CKPT_RETURN_IF_ERROR(put_ptr(w, v));
        return save_list_items(w, v);
    case CKPT_KIND_TUPLE:
        return save_tuple(w, v);
    case CKPT_KIND_SET:
        /* frozensets too: builtins.frozenset is not on the weights-only
         * allow-list (keys that hold one are refused: save_entry) */
        CKPT_RETURN_IF_ERROR(save_global(w, "__builtin__", "set"));
        op(w, OP_EMPTY_LIST);
        CKPT_RETURN_IF_ERROR(put(w, NULL));
        CKPT_RETURN_IF_ERROR(save_list_items(w, v));
        CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE1));
        return put_ptr(w, v);
    case CKPT_KIND_DICT:
        op(w, OP_EMPTY_DICT);
        CKPT_RETURN_IF_ERROR(put_ptr(w, v));
        return save_dict_items_exact(w, v);
    case CKPT_KIND_ORDERED_DICT: {
        CKPT_RETURN_IF_ERROR(save_global(w, "collections", "OrderedDict"));
        op(w, OP_EMPTY_TUPLE);
        op(w, OP_REDUCE);
        CKPT_RETURN_IF_ERROR(put_ptr(w, v));
        CKPT_RETURN_IF_ERROR(save_dict_items_iter(w, v));
        const ckpt_value *state = v->u.dict.state;
        if (!state)
            return CKPT_OK;
        if (state->kind != CKPT_KIND_DICT && state->kind != CKPT_KIND_ORDERED_DICT)
            return fail(w, CKPT_ERR_INVALID_ARG,
                        "an OrderedDict's state must be a dict of attributes, not a %s",
                        ckpt_kind_name(ckpt_value_kind(state)));
        CKPT_RETURN_IF_ERROR(save_child(w, v, SIZE_MAX, state));
        op(w, OP_BUILD);
        return CKPT_OK;
    }
    case CKPT_KIND_SIZE: {
        CKPT_RETURN_IF_ERROR(save_global(w, "torch", "Size"));
        size_t n = v->u.seq.len;
        if (n == 0) {
            op(w, OP_EMPTY_TUPLE);
        } else {
            if (n > 3)
                op(w, OP_MARK);
            for (size_t i = 0; i < n; i++)
                CKPT_RETURN_IF_ERROR(save_child(w, v, i, v->u.seq.items[i]));
            op(w, n == 1 ? OP_TUPLE1 : n == 2 ? OP_TUPLE2 : n == 3 ? OP_TUPLE3 : OP_TUPLE);
            CKPT_RETURN_IF_ERROR(put(w, NULL));
        }
        CKPT_RETURN_IF_ERROR(reduce_with(w, OP_TUPLE1));
        return put_ptr(w, v);
    }
    case CKPT_KIND_DEVICE:
        return save_device(w, v);
    case CKPT_KIND_TENSOR:
        CKPT_RETURN_IF_ERROR(save_tensor(w, v, v->u.tensor.t, v->u.tensor.state));
        return put_ptr(w, v);
    default:
        return fail(w, CKPT_ERR_INVALID_ARG, "a value of unknown kind %u", (unsigned)v->kind);
    }
}

static ckpt_status save(pickler *w, const ckpt_value *v)
{
    if (w->out.failed)
        return nomem(w);
    if (!v)
        return fail(w, CKPT_ERR_INVALID_ARG, "a missing (NULL) value");
    switch (v->kind) {
    case CKPT_KIND_NONE:
        op(w, OP_NONE);
        return CKPT_OK;
    case CKPT_KIND_BOOL:
        save_bool(w, v->u.b);
        return CKPT_OK;
    case CKPT_KIND_INT:
        save_int(w, v->u.i);
        return CKPT_OK;
    case CKPT_KIND_BIGINT:
        if (v->u.s.len > UINT32_MAX)
            return fail(w, CKPT_ERR_LIMIT, "an int of %zu bytes", v->u.s.len);
        save_long_bytes(w, (const uint8_t *)v->u.s.ptr, v->u.s.len);
        return CKPT_OK;
    case CKPT_KIND_FLOAT:
        save_float(w, v->u.f);
        return CKPT_OK;
    case CKPT_KIND_DTYPE: {
        const char *name = torch_dtype_name(v->u.dtype);
        if (!name)
            return fail(w, CKPT_ERR_UNSUPPORTED, "dtype %s has no torch name",
                        ckpt_dtype_name(v->u.dtype));
        return save_global(w, "torch", name);
    }
    case CKPT_KIND_GLOBAL:
        /* only names of the weights-only allow-list: a file this writes
         * never makes torch.load import anything else */
        if (v->global_id == CKPT__G_UNKNOWN)
            return fail(w, CKPT_ERR_UNSAFE,
                        "global '%.*s' is outside the weights-only allow-list: not written",
                        (int)(v->u.s.len < 120 ? v->u.s.len : 120), v->u.s.ptr);
        return save_global_value(w, v);
    case CKPT_KIND_OBJECT: {
        size_t n;
        const char *cls = ckpt_value_str(v, &n);
        return fail(w, CKPT_ERR_UNSAFE,
                    "an object of class '%.*s' (outside the weights-only allow-list) cannot be "
                    "written: save its state dict instead",
                    (int)(cls ? (n < 120 ? n : 120) : 1), cls ? cls : "?");
    }
    case CKPT__KIND_STORAGE:
        /* a bare storage: its persistent id, never memoized (torch.save asks
         * for the id again at every reference) */
        if (!v->u.storage)
            return fail(w, CKPT_ERR_INVALID_ARG, "a storage value without a storage");
        return save_storage_ref(w, v->u.storage, v->u.storage->dtype, v->u.storage->untyped);
    default:
        break;
    }
    ptr_slot *s = ptr_add(&w->memo, (uintptr_t)v);
    if (!s)
        return nomem(w);
    if (s->visiting)
        return fail(w, CKPT_ERR_INVALID_ARG,
                    "the value contains itself (a cycle): torch files cannot hold one here");
    if (s->memo != NO_MEMO) {
        get(w, s->memo);
        return CKPT_OK;
    }
    s->visiting = 1;
    ckpt_status st = save_object(w, v);
    /* the table may have grown: find the slot again */
    s = ptr_find(&w->memo, (uintptr_t)v);
    if (s)
        s->visiting = 0;
    if (st == CKPT_OK && w->out.failed)
        st = nomem(w);
    return st;
}

ckpt_status ckpt__pickle_dump(const ckpt_value *root, uint64_t max_nesting,
                              ckpt__pickle_storage_fn storage_fn, void *user, uint8_t **out,
                              size_t *out_len, ckpt_error *err)
{
    *out = NULL;
    *out_len = 0;
    pickler w;
    memset(&w, 0, sizeof(w));
    w.max_nesting = max_nesting ? max_nesting : 1000;
    w.storage_fn = storage_fn;
    w.user = user;
    w.err = err;
    uint8_t proto[2] = {OP_PROTO, 2};
    emit(&w, proto, 2);
    ckpt_status st = save(&w, root);
    op(&w, OP_STOP);
    if (st == CKPT_OK && w.out.failed)
        st = nomem(&w);
    free(w.memo.slots);
    name_map_free(&w.names);
    ckpt__buf_free(&w.scratch);
    free(w.path);
    if (st != CKPT_OK) {
        ckpt__buf_free(&w.out);
        return st;
    }
    *out = w.out.p;
    *out_len = w.out.len;
    return CKPT_OK;
}
