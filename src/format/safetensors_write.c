/*
 * safetensors_write.c - saves the tensors of a value tree as safetensors.
 *
 * Layout: the 8-byte little-endian header length, a compact JSON header
 * ("__metadata__" first, then the tensors in data order) padded with spaces
 * so the data starts at a multiple of 64, then the tensors back to back in
 * the reference writer's order: element size descending, then name (bytes).
 * Element sizes are powers of two, so every tensor starts at a multiple of
 * its own element size: readers may use the bytes in place.
 *
 * Choices where the format has no answer:
 *  - a root that is itself a tensor is saved under the name "tensor";
 *  - tensors that are the same view of one storage (tied weights, or one
 *    tensor reached by two paths) are written once, as the reference
 *    save_model does: under the first of their names in byte order, and
 *    each other name goes into __metadata__ with the kept name as its value
 *    (a reader re-ties them by loading the model non-strictly);
 *  - subtrees without tensors go into __metadata__ under their path (a
 *    root dict without tensors: each entry under its key) as the text
 *    Python's json.dumps would give (ensure_ascii, ", " and ": " separators,
 *    NaN and Infinity tokens), with these extensions for what JSON lacks:
 *    bytes as hex text, dtypes as "torch.float32", devices as "cuda:0",
 *    complex as [re, im], torch.Size, tuples and sets as arrays, globals
 *    (and inert objects) as "module.name"; dict keys as json.dumps makes
 *    them (true, null, 1.5) and as Python's str() shows the others
 *    ((1, 'a'));
 *  - opts->metadata's entries are added after those and win on equal keys.
 */
#include "format.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define ST_MAX_HEADER 100000000u     /* what the reference reader accepts */
#define ST_DATA_ALIGN 64u
#define ST_CHUNK (4u << 20)

/* ---- text, bounded by the header limit ----------------------------------- */

typedef struct sbuf {
    ckpt__buf b;        /* b.failed: out of memory */
    bool too_big;       /* past ST_MAX_HEADER */
} sbuf;

static void sb_put(sbuf *b, const void *s, size_t n)
{
    if (b->too_big)
        return;
    if (n > ST_MAX_HEADER - b->b.len) {
        b->too_big = true;
        return;
    }
    ckpt__buf_put(&b->b, s, n);
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_chr(sbuf *b, char c) { sb_put(b, &c, 1); }

static void sb_u64(sbuf *b, uint64_t v)
{
    char tmp[24];
    snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    sb_str(b, tmp);
}

/* ---- UTF-8 ------------------------------------------------------------- */

/* JSON's two-character escape of c; NULL when it has none. */
static const char *json_escape(long c)
{
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default: return NULL;
    }
}

/* A JSON string of valid UTF-8 text, non-ASCII kept as is (header keys). */
static void sb_json_utf8(sbuf *b, const char *s, size_t n)
{
    sb_chr(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_put(b, s + run, i - run);
        run = i + 1;
        char tmp[8];
        const char *esc = json_escape(c);
        if (!esc) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            esc = tmp;
        }
        sb_str(b, esc);
    }
    sb_put(b, s + run, n - run);
    sb_chr(b, '"');
}

/* A JSON string as Python's json.dumps writes it (ensure_ascii): every
 * character outside ' '..'~' escaped, lowercase hex, astral characters as
 * surrogate pairs. Bytes that are not UTF-8 become U+FFFD. */
static void sb_json_ascii(sbuf *b, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    sb_chr(b, '"');
    for (size_t i = 0; i < n;) {
        size_t used;
        long cp = ckpt__utf8_next(p + i, n - i, &used);
        i += used;
        char tmp[40];
        if (cp < 0)
            cp = 0xfffd;
        const char *esc = json_escape(cp);
        if (esc) {
            sb_str(b, esc);
        } else if (cp >= 0x20 && cp <= 0x7e) {
            sb_chr(b, (char)cp);
        } else if (cp < 0x10000) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", (unsigned)cp);
            sb_str(b, tmp);
        } else {
            unsigned v = (unsigned)cp - 0x10000;
            snprintf(tmp, sizeof(tmp), "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            sb_str(b, tmp);
        }
    }
    sb_chr(b, '"');
}

/* ---- numbers -------------------------------------------------------------- */

/* json.dumps of a float: Python's repr, with json's tokens for NaN and the
 * infinities. */
static void sb_py_float(sbuf *b, double d)
{
    if (isnan(d) || isinf(d)) {
        sb_str(b, isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    char text[40];
    sb_put(b, text, ckpt__float_repr(d, 0, text, sizeof(text)));
}

/* An int of any size in decimal. */
static void sb_bigint(sbuf *b, const ckpt_value *v)
{
    size_t n, len;
    const char *s = ckpt_value_str(v, &n);
    char *dec = ckpt__bigint_decimal((const uint8_t *)s, n, &len);
    if (!dec) {
        b->b.failed = true;
        return;
    }
    sb_put(b, dec, len);
    free(dec);
}

static void sb_hex(sbuf *b, const char *s, size_t n)
{
    static const char HEX[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char two[2] = {HEX[c >> 4], HEX[c & 15]};
        sb_put(b, two, 2);
    }
}

/* ---- plain values as JSON text ------------------------------------------ */

typedef struct json_walk {
    const ckpt_value **path;    /* ancestors, for cycles */
    uint64_t max_depth;
    const char *where;          /* the leaf's name, for errors */
    ckpt_error *err;
    ckpt_status st;
} json_walk;

static bool is_seq(ckpt_kind k)
{
    return k == CKPT_KIND_LIST || k == CKPT_KIND_TUPLE || k == CKPT_KIND_SET || k == CKPT_KIND_SIZE;
}

/* A dict key as json.dumps converts it. */
static void sb_json_key(sbuf *b, const ckpt_value *k)
{
    size_t len;
    const char *s;
    switch (ckpt_value_kind(k)) {
    case CKPT_KIND_STR:
        s = ckpt_value_str(k, &len);
        sb_json_ascii(b, s, len);
        return;
    case CKPT_KIND_BOOL: sb_str(b, ckpt_value_bool(k) ? "\"true\"" : "\"false\""); return;
    case CKPT_KIND_NONE: sb_str(b, "\"null\""); return;
    case CKPT_KIND_FLOAT:
        sb_chr(b, '"');
        sb_py_float(b, ckpt_value_float(k));
        sb_chr(b, '"');
        return;
    default: {
        /* what json.dumps cannot take (a tuple, ...) as Python's str() */
        len = ckpt__key_text(k, NULL, 0);
        char *text = malloc(len + 1);
        if (!text) {
            b->b.failed = true;
            return;
        }
        ckpt__key_text(k, text, len + 1);
        sb_json_ascii(b, text, len);
        free(text);
        return;
    }
    }
}

static void sb_json_value(sbuf *b, json_walk *w, const ckpt_value *v, uint64_t depth)
{
    if (w->st != CKPT_OK || b->b.failed || b->too_big)
        return;
    ckpt_kind k = ckpt_value_kind(v);
    size_t len;
    const char *s;
    switch (k) {
    case CKPT_KIND_NONE: sb_str(b, "null"); return;
    case CKPT_KIND_BOOL: sb_str(b, ckpt_value_bool(v) ? "true" : "false"); return;
    case CKPT_KIND_INT: {
        char tmp[24];
        snprintf(tmp, sizeof(tmp), "%lld", (long long)ckpt_value_int(v));
        sb_str(b, tmp);
        return;
    }
    case CKPT_KIND_BIGINT: sb_bigint(b, v); return;
    case CKPT_KIND_FLOAT: sb_py_float(b, ckpt_value_float(v)); return;
    case CKPT_KIND_COMPLEX: {
        double re, im;
        ckpt_value_complex(v, &re, &im);
        sb_chr(b, '[');
        sb_py_float(b, re);
        sb_str(b, ", ");
        sb_py_float(b, im);
        sb_chr(b, ']');
        return;
    }
    case CKPT_KIND_STR:
        s = ckpt_value_str(v, &len);
        sb_json_ascii(b, s, len);
        return;
    case CKPT_KIND_BYTES:
        s = ckpt_value_str(v, &len);
        sb_chr(b, '"');
        sb_hex(b, s, len);
        sb_chr(b, '"');
        return;
    case CKPT_KIND_DTYPE:
        sb_str(b, "\"torch.");
        sb_str(b, ckpt_dtype_name(ckpt_value_dtype(v)));
        sb_chr(b, '"');
        return;
    case CKPT_KIND_DEVICE:
    case CKPT_KIND_GLOBAL:
    case CKPT_KIND_OBJECT: /* an inert object: its class's name */
        s = ckpt_value_str(v, &len);
        sb_json_ascii(b, s, len);
        return;
    case CKPT_KIND_TENSOR:
        /* the walk hands over subtrees without tensors, so this is a
         * cycle back to a container above */
        w->st = ckpt__fail(w->err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                           "'%s' refers back to a container that holds it: safetensors "
                           "metadata cannot hold a cycle", w->where);
        return;
    default:
        break;
    }
    if (!is_seq(k) && k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT) {
        sb_str(b, "null");
        return;
    }
    if (depth >= w->max_depth) {
        w->st = ckpt__fail(w->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                           "plain value '%s' nested deeper than %llu", w->where,
                           (unsigned long long)w->max_depth);
        return;
    }
    for (uint64_t i = 0; i < depth; i++) {
        if (w->path[i] == v) {
            w->st = ckpt__fail(w->err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                               "plain value '%s' contains itself: JSON cannot hold a cycle",
                               w->where);
            return;
        }
    }
    w->path[depth] = v;
    size_t n = ckpt_value_len(v);
    if (is_seq(k)) {
        sb_chr(b, '[');
        for (size_t i = 0; i < n && w->st == CKPT_OK; i++) {
            if (i)
                sb_str(b, ", ");
            sb_json_value(b, w, ckpt_value_item(v, i), depth + 1);
        }
        sb_chr(b, ']');
    } else {
        sb_chr(b, '{');
        for (size_t i = 0; i < n && w->st == CKPT_OK; i++) {
            if (i)
                sb_str(b, ", ");
            sb_json_key(b, ckpt_value_key(v, i));
            sb_str(b, ": ");
            sb_json_value(b, w, ckpt_value_dict_value(v, i), depth + 1);
        }
        sb_chr(b, '}');
    }
}

/* ---- collecting tensors and metadata -------------------------------------- */

typedef struct st_tensor {
    char *name;
    const ckpt_tensor *t;
    const char *st_dtype;
    size_t align;              /* element size (1 for sub-byte dtypes) */
    uint64_t nbytes;
    uint64_t begin;
    const char *tied_to;       /* the same view as this tensor, kept under that name */
} st_tensor;

typedef struct st_meta {
    char *key;
    char *val;                 /* JSON text or the caller's text */
    size_t order;
    bool from_opts;
    bool dropped;              /* replaced by an entry of opts->metadata */
} st_meta;

typedef struct st_ctx {
    const ckpt_value *root;
    st_tensor *tensors;
    size_t ntensors, tensors_cap;
    st_meta *meta;
    size_t nmeta, meta_cap;
    uint64_t meta_bytes;       /* their text, bounded like the header */
    uint64_t min_header;       /* the tensor entries' least header bytes */
    const ckpt_value **path;   /* for json_walk */
    uint64_t max_depth;
} st_ctx;

static ckpt_status on_tensor(void *user, const char *name, const ckpt_value *v, ckpt_error *err)
{
    st_ctx *c = user;
    const ckpt_tensor *t = ckpt_value_tensor(v);
    if (v == c->root && name[0] == 0)
        name = "tensor";
    if (!t)
        return CKPT_INVALID_ARG(err, "tensor '%s' has no tensor data", name);
    if (t->layout != CKPT_LAYOUT_STRIDED)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor '%s' is %s: safetensors holds only dense tensors", name,
                          ckpt_layout_name((ckpt_layout)t->layout));
    if (ckpt__dtype_is_quantized(t->dtype))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor '%s' is quantized (%s): safetensors has no quantized dtypes "
                          "and would lose its scale and zero point",
                          name, ckpt_dtype_name(t->dtype));
    const char *st_dtype = ckpt_dtype_safetensors_name(t->dtype);
    if (!st_dtype)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor '%s' has dtype %s, which safetensors does not have", name,
                          ckpt_dtype_name(t->dtype));
    if (!t->storage)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor '%s' is a meta tensor: it has no data to save", name);
    uint64_t bits;
    if (!ckpt__mul_u64(t->numel, ckpt_dtype_bits(t->dtype), &bits) || bits % 8 != 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor '%s': %llu elements of %s do not fill whole bytes", name,
                          (unsigned long long)t->numel, ckpt_dtype_name(t->dtype));
    size_t nlen = strlen(name);
    if (strcmp(name, "__metadata__") == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "a tensor is named '__metadata__', the name safetensors keeps for "
                          "metadata");
    if (!ckpt__utf8_valid(name, nlen, false))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "tensor name '%s' is not valid UTF-8 (a JSON header needs it)", name);
    /* "NAME":{"dtype":"..","shape":[],"data_offsets":[0,0]} at the least:
     * refuse as soon as the header surely outgrows what readers accept
     * (names multiply through shared containers) */
    c->min_header += nlen + 48;
    if (c->min_header + c->meta_bytes > ST_MAX_HEADER)
        return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "the header would exceed the %u bytes safetensors readers accept "
                          "(too many tensors)",
                          ST_MAX_HEADER);
    if (c->ntensors == c->tensors_cap) {
        st_tensor *p = ckpt__array_grow(c->tensors, &c->tensors_cap, sizeof(*p));
        if (!p)
            return ckpt__nomem(err);
        c->tensors = p;
    }
    st_tensor *e = &c->tensors[c->ntensors];
    memset(e, 0, sizeof(*e));
    e->name = malloc(nlen + 1);
    if (!e->name)
        return ckpt__nomem(err);
    memcpy(e->name, name, nlen + 1);
    e->t = t;
    e->st_dtype = st_dtype;
    e->align = ckpt_dtype_size(t->dtype) ? ckpt_dtype_size(t->dtype) : 1;
    e->nbytes = bits / 8;
    c->ntensors++;
    return CKPT_OK;
}

static ckpt_status add_meta(st_ctx *c, const char *key, size_t klen, char *val, size_t vlen,
                            bool from_opts, ckpt_error *err)
{
    uint64_t more = (uint64_t)klen + vlen;
    if (c->min_header + c->meta_bytes + more > ST_MAX_HEADER) {
        free(val);
        return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "metadata exceeds the %u bytes a safetensors header may hold",
                          ST_MAX_HEADER);
    }
    if (c->nmeta == c->meta_cap) {
        st_meta *p = ckpt__array_grow(c->meta, &c->meta_cap, sizeof(*p));
        if (!p) {
            free(val);
            return ckpt__nomem(err);
        }
        c->meta = p;
    }
    char *k = malloc(klen + 1);
    if (!k) {
        free(val);
        return ckpt__nomem(err);
    }
    memcpy(k, key, klen);
    k[klen] = 0;
    c->meta[c->nmeta] = (st_meta){.key = k, .val = val, .order = c->nmeta, .from_opts = from_opts};
    c->nmeta++;
    c->meta_bytes += more;
    return CKPT_OK;
}

static ckpt_status add_leaf(st_ctx *c, const char *name, size_t nlen, const ckpt_value *v,
                            ckpt_error *err)
{
    if (!ckpt__utf8_valid(name, nlen, false))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "metadata name '%s' is not valid UTF-8 without NUL (a JSON header "
                          "needs it)",
                          name);
    sbuf b = {0};
    json_walk w = {.path = c->path, .max_depth = c->max_depth, .where = name, .err = err};
    sb_json_value(&b, &w, v, 0);
    if (w.st != CKPT_OK || b.b.failed || b.too_big || !b.b.p) {
        ckpt__buf_free(&b.b);
        if (w.st != CKPT_OK)
            return w.st;
        if (b.too_big)
            return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                              "metadata '%s' exceeds the %u bytes a safetensors header may hold",
                              name, ST_MAX_HEADER);
        return ckpt__nomem(err);
    }
    return add_meta(c, name, nlen, (char *)b.b.p, b.b.len, false, err);
}

static ckpt_status on_leaf(void *user, const char *name, const ckpt_value *v, ckpt_error *err)
{
    st_ctx *c = user;
    ckpt_kind k = ckpt_value_kind(v);
    if (name[0] || (k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT))
        return add_leaf(c, name, strlen(name), v, err);
    /* a root dict without tensors: an entry per key, as when it has some */
    for (size_t i = 0; i < ckpt_value_len(v); i++) {
        /* named as the walk names a key */
        const ckpt_value *key = ckpt_value_key(v, i);
        size_t klen = ckpt__key_text(key, NULL, 0);
        char *kname = malloc(klen + 1);
        if (!kname)
            return ckpt__nomem(err);
        ckpt__key_text(key, kname, klen + 1);
        ckpt_status st = add_leaf(c, kname, klen, ckpt_value_dict_value(v, i), err);
        free(kname);
        CKPT_RETURN_IF_ERROR(st);
    }
    return CKPT_OK;
}

static ckpt_status add_opts_metadata(st_ctx *c, const ckpt_value *md, ckpt_error *err)
{
    ckpt_kind k = ckpt_value_kind(md);
    if (k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT)
        return CKPT_INVALID_ARG(err,
                                "options' metadata must be a dict of text to text, not %s",
                                ckpt_kind_name(k));
    for (size_t i = 0; i < ckpt_value_len(md); i++) {
        const ckpt_value *kv = ckpt_value_key(md, i), *vv = ckpt_value_dict_value(md, i);
        size_t klen, vlen;
        const char *ks = ckpt_value_str(kv, &klen), *vs = ckpt_value_str(vv, &vlen);
        if (ckpt_value_kind(kv) != CKPT_KIND_STR || ckpt_value_kind(vv) != CKPT_KIND_STR)
            return CKPT_INVALID_ARG(err, "options' metadata entry %zu is not text -> text", i);
        if (!ckpt__utf8_valid(ks, klen, false) || !ckpt__utf8_valid(vs, vlen, false))
            return CKPT_INVALID_ARG(
                err, "options' metadata entry '%s' is not valid UTF-8 without NUL", ks);
        char *val = malloc(vlen + 1);
        if (!val)
            return ckpt__nomem(err);
        memcpy(val, vs, vlen);
        val[vlen] = 0;
        CKPT_RETURN_IF_ERROR(add_meta(c, ks, klen, val, vlen, true, err));
    }
    return CKPT_OK;
}

static int cmp_meta_key(const void *a, const void *b)
{
    const st_meta *x = *(const st_meta *const *)a, *y = *(const st_meta *const *)b;
    int r = strcmp(x->key, y->key);
    if (r)
        return r;
    return x->order < y->order ? -1 : (x->order > y->order);
}

/* Two leaves under one name are refused; the caller's entries replace leaves. */
static ckpt_status settle_metadata(st_ctx *c, ckpt_error *err)
{
    if (c->nmeta < 2)
        return CKPT_OK;
    st_meta **by_key = malloc(c->nmeta * sizeof(*by_key));
    if (!by_key)
        return ckpt__nomem(err);
    for (size_t i = 0; i < c->nmeta; i++)
        by_key[i] = &c->meta[i];
    qsort(by_key, c->nmeta, sizeof(*by_key), cmp_meta_key);
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i + 1 < c->nmeta && st == CKPT_OK; i++) {
        st_meta *x = by_key[i], *y = by_key[i + 1];
        if (strcmp(x->key, y->key) != 0)
            continue;
        if (!x->from_opts && !y->from_opts) {
            st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                            "two values are named '%s' (keys whose text is equal)", x->key);
        } else if (x->from_opts != y->from_opts) {
            /* the leaf keeps its place and takes the caller's text */
            st_meta *leaf = x->from_opts ? y : x, *opt = x->from_opts ? x : y;
            free(leaf->val);
            leaf->val = opt->val;
            opt->val = NULL;
            opt->dropped = true;
        }
    }
    free(by_key);
    return st;
}

static int cmp_name(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    return strcmp(x->name, y->name);
}

/* Orders tensors so that those that are the same view of one storage are
 * side by side (0: the same view). */
static int view_order(const ckpt_tensor *s, const ckpt_tensor *t)
{
    if (s == t)
        return 0;
    if (s->storage != t->storage)
        return (uintptr_t)s->storage < (uintptr_t)t->storage ? -1 : 1;
    if (s->dtype != t->dtype)
        return s->dtype < t->dtype ? -1 : 1;
    if (s->storage_offset != t->storage_offset)
        return s->storage_offset < t->storage_offset ? -1 : 1;
    if (s->ndim != t->ndim)
        return s->ndim < t->ndim ? -1 : 1;
    for (uint32_t d = 0; d < s->ndim; d++) {
        if (s->shape[d] != t->shape[d])
            return s->shape[d] < t->shape[d] ? -1 : 1;
        if (s->stride[d] != t->stride[d])
            return s->stride[d] < t->stride[d] ? -1 : 1;
    }
    return 0;
}

/* Groups of the same view, each in name order. */
static int cmp_view(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    int r = view_order(x->t, y->t);
    return r ? r : strcmp(x->name, y->name);
}

/* Keeps one name of each group of tensors that are the same view: the first
 * in byte order; the others go into the metadata (in name order, after the
 * leaves) with the kept name as their value, as save_model records them.
 * Leaves c->tensors in name order. */
static ckpt_status drop_tied(st_ctx *c, ckpt_error *err)
{
    if (c->ntensors < 2)
        return CKPT_OK;
    qsort(c->tensors, c->ntensors, sizeof(*c->tensors), cmp_view);
    size_t first = 0, ndup = 0;
    for (size_t i = 1; i < c->ntensors; i++) {
        if (view_order(c->tensors[first].t, c->tensors[i].t) == 0) {
            c->tensors[i].tied_to = c->tensors[first].name;
            ndup++;
        } else {
            first = i;
        }
    }
    qsort(c->tensors, c->ntensors, sizeof(*c->tensors), cmp_name);
    if (!ndup)
        return CKPT_OK;
    for (size_t i = 0; i < c->ntensors; i++) {
        const st_tensor *e = &c->tensors[i];
        if (!e->tied_to)
            continue;
        size_t klen = strlen(e->tied_to);
        char *val = malloc(klen + 1);
        if (!val)
            return ckpt__nomem(err);
        memcpy(val, e->tied_to, klen + 1);
        CKPT_RETURN_IF_ERROR(add_meta(c, e->name, strlen(e->name), val, klen, false, err));
    }
    size_t kept = 0;
    for (size_t i = 0; i < c->ntensors; i++) {
        if (c->tensors[i].tied_to)
            free(c->tensors[i].name); /* the names kept outlive this loop */
        else
            c->tensors[kept++] = c->tensors[i];
    }
    c->ntensors = kept;
    return CKPT_OK;
}

static int cmp_data_order(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->align != y->align)
        return x->align > y->align ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* ---- the header ------------------------------------------------------ */

static void build_header(const st_ctx *c, sbuf *h)
{
    sb_chr(h, '{');
    bool first = true, any_meta = false;
    for (size_t i = 0; i < c->nmeta; i++)
        any_meta |= !c->meta[i].dropped;
    if (any_meta) {
        sb_str(h, "\"__metadata__\":{");
        for (size_t i = 0; i < c->nmeta; i++) {
            const st_meta *m = &c->meta[i];
            if (m->dropped)
                continue;
            if (!first)
                sb_chr(h, ',');
            first = false;
            sb_json_utf8(h, m->key, strlen(m->key));
            sb_chr(h, ':');
            sb_json_utf8(h, m->val, strlen(m->val));
        }
        sb_chr(h, '}');
        first = false;
    }
    for (size_t i = 0; i < c->ntensors; i++) {
        const st_tensor *e = &c->tensors[i];
        if (!first)
            sb_chr(h, ',');
        first = false;
        sb_json_utf8(h, e->name, strlen(e->name));
        sb_str(h, ":{\"dtype\":\"");
        sb_str(h, e->st_dtype);
        sb_str(h, "\",\"shape\":[");
        for (uint32_t d = 0; d < e->t->ndim; d++) {
            if (d)
                sb_chr(h, ',');
            sb_u64(h, (uint64_t)e->t->shape[d]);
        }
        sb_str(h, "],\"data_offsets\":[");
        sb_u64(h, e->begin);
        sb_chr(h, ',');
        sb_u64(h, e->begin + e->nbytes);
        sb_str(h, "]}");
    }
    sb_chr(h, '}');
    /* spaces up to the data alignment: JSON allows trailing whitespace */
    while (!h->b.failed && !h->too_big && (8 + h->b.len) % ST_DATA_ALIGN != 0)
        sb_chr(h, ' ');
}

/* ---- writing ------------------------------------------------------------ */

static void progress(const ckpt_save_options *o, uint64_t done, uint64_t total)
{
    if (o->progress)
        o->progress(o->progress_user, done, total);
}

static ckpt_status write_tensor(ckpt__out *out, const st_tensor *e, uint8_t *buf,
                                const ckpt_save_options *o, uint64_t *done, uint64_t total,
                                ckpt_error *err)
{
    for (uint64_t off = 0; off < e->nbytes;) {
        size_t len = e->nbytes - off < ST_CHUNK ? (size_t)(e->nbytes - off) : ST_CHUNK;
        const uint8_t *p;
        ckpt_status st = ckpt__tensor_read(e->t, off, len, buf, &p, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, e->name);
            return st;
        }
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        /* safetensors is little-endian */
        if (p != buf)
            memcpy(buf, p, len);
        ckpt__byteswap(buf, len / e->align, e->t->dtype);
        p = buf;
#endif
        /* bytes that pass through unchanged are read from their file */
        int fd;
        uint64_t foff;
        if (p != buf && ckpt__storage_file_range(e->t->storage, p, len, &fd, &foff))
            CKPT_RETURN_IF_ERROR(ckpt__out_copy(out, fd, foff, p, len, NULL, err));
        else
            CKPT_RETURN_IF_ERROR(ckpt__out_write(out, p, len, err));
        off += len;
        *done += len;
        progress(o, *done, total);
    }
    return CKPT_OK;
}

ckpt_status ckpt_save_safetensors(const char *path, const ckpt_value *root,
                                  const ckpt_save_options *opts, ckpt_error *err)
{
    if (!path || !root)
        return CKPT_INVALID_ARG(err, "NULL argument");
    ckpt_save_options o;
    ckpt__save_options_apply(&o, opts);
    ckpt_limits lim;
    ckpt_limits_default(&lim);

    ckpt_status st = CKPT_OK;
    st_ctx c = {.root = root, .max_depth = lim.max_nesting + 1};
    sbuf h = {0};
    uint8_t *buf = NULL;
    ckpt__out out = {.fd = -1};
    bool out_open = false;
    c.path = malloc((size_t)c.max_depth * sizeof(*c.path));
    if (!c.path) {
        st = ckpt__nomem(err);
        goto done;
    }
    if ((st = ckpt__walk_named(root, lim.max_nesting, on_tensor, on_leaf, &c, err)) != CKPT_OK)
        goto done;
    if (c.ntensors > 1)
        qsort(c.tensors, c.ntensors, sizeof(*c.tensors), cmp_name);
    for (size_t i = 0; i + 1 < c.ntensors; i++) {
        if (strcmp(c.tensors[i].name, c.tensors[i + 1].name) == 0) {
            st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                            "two tensors are named '%s' (keys whose text is equal): "
                            "safetensors needs one name per tensor",
                            c.tensors[i].name);
            goto done;
        }
    }
    if ((st = drop_tied(&c, err)) != CKPT_OK)
        goto done;
    if (o.metadata && (st = add_opts_metadata(&c, o.metadata, err)) != CKPT_OK)
        goto done;
    if ((st = settle_metadata(&c, err)) != CKPT_OK)
        goto done;
    if (c.ntensors > 1)
        qsort(c.tensors, c.ntensors, sizeof(*c.tensors), cmp_data_order);
    uint64_t data_bytes = 0, max_tensor = 0;
    for (size_t i = 0; i < c.ntensors; i++) {
        c.tensors[i].begin = data_bytes;
        if (!ckpt__add_u64(data_bytes, c.tensors[i].nbytes, &data_bytes)) {
            st = ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET, "tensor bytes overflow");
            goto done;
        }
        if (c.tensors[i].nbytes > max_tensor)
            max_tensor = c.tensors[i].nbytes;
    }

    /* each tensor is written contiguous: views that repeat their storage
     * make more than their files hold */
    ckpt__output_budget made = {0};
    for (size_t i = 0; i < c.ntensors; i++)
        ckpt__output_add_tensor(&made, c.tensors[i].t, c.tensors[i].nbytes);
    if ((st = ckpt__output_check(&made, err)) != CKPT_OK)
        goto done;

    build_header(&c, &h);
    if (h.b.failed) {
        st = ckpt__nomem(err);
        goto done;
    }
    if (h.too_big) {
        st = ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                        "the header would exceed the %u bytes safetensors readers accept "
                        "(too many tensors or too much metadata)",
                        ST_MAX_HEADER);
        goto done;
    }
    uint64_t total = 8 + h.b.len + data_bytes;
    if (max_tensor) {
        buf = malloc(max_tensor < ST_CHUNK ? (size_t)max_tensor : ST_CHUNK);
        if (!buf) {
            st = ckpt__nomem(err);
            goto done;
        }
    }

    unsigned out_flags = o.flags & ~(CKPT__OUT_CRC | CKPT__OUT_STAGE);
    if ((st = ckpt__out_open(&out, path, out_flags, err)) != CKPT_OK)
        goto done;
    out_open = true;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (uint8_t)((uint64_t)h.b.len >> (8 * i));
    if ((st = ckpt__out_write(&out, len8, 8, err)) != CKPT_OK ||
        (st = ckpt__out_write(&out, h.b.p, h.b.len, err)) != CKPT_OK)
        goto done;
    uint64_t done_bytes = 8 + h.b.len;
    progress(&o, done_bytes, total);
    for (size_t i = 0; i < c.ntensors; i++) {
        if ((st = write_tensor(&out, &c.tensors[i], buf, &o, &done_bytes, total, err)) != CKPT_OK)
            goto done;
    }
    st = ckpt__out_commit(&out, err);

done:
    if (out_open && st != CKPT_OK)
        ckpt__out_abort(&out);
    free(buf);
    ckpt__buf_free(&h.b);
    for (size_t i = 0; i < c.ntensors; i++)
        free(c.tensors[i].name);
    free(c.tensors);
    for (size_t i = 0; i < c.nmeta; i++) {
        free(c.meta[i].key);
        free(c.meta[i].val);
    }
    free(c.meta);
    free(c.path);
    return st;
}
