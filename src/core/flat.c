/*
 * flat.c - a value tree as flat arrays (ckpt_value_flatten): a prefix
 * program of int64 words, the text it names and one row per tensor, so that
 * a binding builds its objects in one pass without a call per node.
 */
#include "core.h"

#include <stdlib.h>
#include <string.h>

struct ckpt_flat {
    ckpt__buf ops;             /* int64 words */
    ckpt__buf text;
    ckpt__buf tensors;         /* rows of CKPT_FLAT_T_COUNT int64 words */
    ckpt__buf dims;            /* int64 words */
    size_t tensor_count;
};

/* Pointers to numbers (container ids, tensor rows), by address. */
typedef struct ptr_map {
    const void **keys;
    int64_t *vals;
    size_t cap, count;
} ptr_map;

static size_t ptr_slot(const ptr_map *m, const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    size_t i = (size_t)h & (m->cap - 1);
    while (m->keys[i] && m->keys[i] != p)
        i = (i + 1) & (m->cap - 1);
    return i;
}

/* The number stored for p, or -1. */
static int64_t ptr_map_get(const ptr_map *m, const void *p)
{
    if (!m->cap)
        return -1;
    size_t i = ptr_slot(m, p);
    return m->keys[i] ? m->vals[i] : -1;
}

static bool ptr_map_put(ptr_map *m, const void *p, int64_t v)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        ptr_map n = {calloc(cap, sizeof(*n.keys)), calloc(cap, sizeof(*n.vals)), cap, 0};
        if (!n.keys || !n.vals) {
            free(n.keys);
            free(n.vals);
            return false;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (m->keys[i]) {
                size_t j = ptr_slot(&n, m->keys[i]);
                n.keys[j] = m->keys[i];
                n.vals[j] = m->vals[i];
            }
        }
        n.count = m->count;
        free(m->keys);
        free(m->vals);
        *m = n;
    }
    size_t i = ptr_slot(m, p);
    m->keys[i] = p;
    m->vals[i] = v;
    m->count++;
    return true;
}

static void ptr_map_free(ptr_map *m)
{
    free(m->keys);
    free(m->vals);
}

typedef struct flattener {
    ckpt_file *f;
    ckpt_flat *out;
    ptr_map containers;        /* value -> id */
    ptr_map rows;              /* tensor -> row */
    ptr_map places;            /* location text -> its offset in text */
    int64_t next_id;
    size_t depth;
    ckpt_error *err;
} flattener;

static void put(flattener *fl, int64_t w) { ckpt__buf_put(&fl->out->ops, &w, sizeof(w)); }

static int64_t put_text(flattener *fl, const char *p, size_t n)
{
    int64_t off = (int64_t)fl->out->text.len;
    ckpt__buf_put(&fl->out->text, p, n);
    return off;
}

static ckpt_status unsupported(flattener *fl, const char *what)
{
    return ckpt__fail(fl->err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                      "ckpt_value_flatten: %s is not flattened; walk the tree node by node",
                      what);
}

static bool tensor_flattens(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_TENSOR && !v->u.tensor.state &&
           v->u.tensor.t->layout == CKPT_LAYOUT_STRIDED;
}

/* The row of a tensor, added (data resolved) when new. */
static ckpt_status tensor_row(flattener *fl, const ckpt_tensor *t, int64_t *row)
{
    *row = ptr_map_get(&fl->rows, t);
    if (*row >= 0)
        return CKPT_OK;
    const void *data = NULL;
    bool zc = false;
    CKPT_RETURN_IF_ERROR(ckpt_tensor_data(fl->f, t, &data, &zc, fl->err));
    int64_t r[CKPT_FLAT_T_COUNT] = {0};
    const ckpt__storage *s = t->storage;
    r[CKPT_FLAT_T_TENSOR] = (int64_t)(uintptr_t)t;
    r[CKPT_FLAT_T_DATA] = (int64_t)(uintptr_t)data;
    r[CKPT_FLAT_T_FLAGS] = (zc ? CKPT_FLAT_TF_ZERO_COPY : 0) |
                           (t->requires_grad ? CKPT_FLAT_TF_REQUIRES_GRAD : 0) |
                           (t->is_parameter ? CKPT_FLAT_TF_PARAMETER : 0) |
                           (s ? CKPT_FLAT_TF_STORAGE : 0) |
                           (ckpt__tensor_is_contiguous(t) ? CKPT_FLAT_TF_CONTIGUOUS : 0) |
                           (s && s->base ? CKPT_FLAT_TF_STORAGE_VIEW : 0);
    r[CKPT_FLAT_T_DTYPE] = t->dtype;
    r[CKPT_FLAT_T_NDIM] = t->ndim;
    r[CKPT_FLAT_T_DIMS] = (int64_t)(fl->out->dims.len / sizeof(int64_t));
    r[CKPT_FLAT_T_STORAGE_OFFSET] = t->storage_offset;
    r[CKPT_FLAT_T_NBYTES] = (int64_t)ckpt__tensor_nbytes(t);
    r[CKPT_FLAT_T_STORAGE] = (int64_t)(uintptr_t)s;
    r[CKPT_FLAT_T_STORAGE_NBYTES] = s ? (int64_t)s->nbytes : 0;
    const char *loc = s && s->location ? s->location : "cpu";
    size_t loc_len = strlen(loc);
    int64_t loc_off = ptr_map_get(&fl->places, loc);
    if (loc_off < 0) {
        loc_off = put_text(fl, loc, loc_len);
        if (!ptr_map_put(&fl->places, loc, loc_off))
            return ckpt__nomem(fl->err);
    }
    r[CKPT_FLAT_T_LOCATION] = loc_off;
    r[CKPT_FLAT_T_LOCATION_LEN] = (int64_t)loc_len;
    ckpt__buf_put(&fl->out->dims, t->shape, t->ndim * sizeof(int64_t));
    ckpt__buf_put(&fl->out->dims, t->stride, t->ndim * sizeof(int64_t));
    ckpt__buf_put(&fl->out->tensors, r, sizeof(r));
    *row = (int64_t)fl->out->tensor_count++;
    if (!ptr_map_put(&fl->rows, t, *row))
        return ckpt__nomem(fl->err);
    return CKPT_OK;
}

/* A dict of text keys without NUL and tensors seen nowhere before: its
 * values take consecutive rows (flatten_dict checks that no tensor comes
 * twice inside it). */
static bool str_tensor_dict(flattener *fl, const ckpt_value *v)
{
    if (!v->u.dict.len)
        return false;
    for (size_t i = 0; i < v->u.dict.len; i++) {
        const ckpt_value *k = v->u.dict.keys[i], *x = v->u.dict.vals[i];
        if (k->kind != CKPT_KIND_STR || memchr(k->u.s.ptr, 0, k->u.s.len) ||
            !tensor_flattens(x) || ptr_map_get(&fl->rows, x->u.tensor.t) >= 0)
            return false;
    }
    return true;
}

static ckpt_status flatten(flattener *fl, const ckpt_value *v);

static ckpt_status flatten_dict(flattener *fl, const ckpt_value *v)
{
    bool ordered = v->kind == CKPT_KIND_ORDERED_DICT;
    const ckpt_value *state = ordered ? v->u.dict.state : NULL;
    if (v->kind == CKPT_KIND_DICT && v->u.dict.state)
        return unsupported(fl, "a dict with state");
    size_t n = v->u.dict.len;
    size_t ops_at = fl->out->ops.len;
    if (str_tensor_dict(fl, v)) {
        put(fl, CKPT_FLAT_STR_TENSOR_DICT);
        put(fl, ordered);
        put(fl, (int64_t)n);
        put(fl, fl->next_id++);
        int64_t off = (int64_t)fl->out->text.len;
        for (size_t i = 0; i < n; i++)
            put_text(fl, v->u.dict.keys[i]->u.s.ptr, v->u.dict.keys[i]->u.s.len + 1);
        put(fl, off);
        put(fl, (int64_t)fl->out->text.len - off);
        int64_t first = (int64_t)fl->out->tensor_count;
        put(fl, first);
        put(fl, state != NULL);
        bool consecutive = true;
        for (size_t i = 0; i < n && consecutive; i++) {
            int64_t row;
            CKPT_RETURN_IF_ERROR(tensor_row(fl, v->u.dict.vals[i]->u.tensor.t, &row));
            consecutive = row == first + (int64_t)i;
        }
        if (consecutive)
            return state ? flatten(fl, state) : CKPT_OK;
        /* a tensor repeated inside: undo the ops, keep the rows and the
         * text (the rows' locations may be in it) */
        fl->out->ops.len = ops_at;
        fl->next_id--;
    }
    put(fl, ordered ? CKPT_FLAT_ORDERED_DICT : CKPT_FLAT_DICT);
    put(fl, (int64_t)n);
    put(fl, fl->next_id++);
    if (ordered)
        put(fl, state != NULL);
    for (size_t i = 0; i < n; i++) {
        CKPT_RETURN_IF_ERROR(flatten(fl, v->u.dict.keys[i]));
        CKPT_RETURN_IF_ERROR(flatten(fl, v->u.dict.vals[i]));
    }
    return state ? flatten(fl, state) : CKPT_OK;
}

static ckpt_status flatten_node(flattener *fl, const ckpt_value *v)
{
    switch (v->kind) {
    case CKPT_KIND_NONE:
        put(fl, CKPT_FLAT_NONE);
        return CKPT_OK;
    case CKPT_KIND_BOOL:
        put(fl, CKPT_FLAT_BOOL);
        put(fl, v->u.b);
        return CKPT_OK;
    case CKPT_KIND_INT:
        put(fl, CKPT_FLAT_INT);
        put(fl, v->u.i);
        return CKPT_OK;
    case CKPT_KIND_FLOAT: {
        int64_t bits;
        memcpy(&bits, &v->u.f, sizeof(bits));
        put(fl, CKPT_FLAT_FLOAT);
        put(fl, bits);
        return CKPT_OK;
    }
    case CKPT_KIND_STR:
    case CKPT_KIND_DEVICE:
        put(fl, v->kind == CKPT_KIND_STR ? CKPT_FLAT_STR : CKPT_FLAT_DEVICE);
        put(fl, put_text(fl, v->u.s.ptr, v->u.s.len));
        put(fl, (int64_t)v->u.s.len);
        return CKPT_OK;
    case CKPT_KIND_DTYPE:
        put(fl, CKPT_FLAT_DTYPE);
        put(fl, v->u.dtype);
        return CKPT_OK;
    case CKPT_KIND_SIZE:
        put(fl, CKPT_FLAT_SIZE);
        put(fl, (int64_t)v->u.seq.len);
        for (size_t i = 0; i < v->u.seq.len; i++) {
            if (v->u.seq.items[i]->kind != CKPT_KIND_INT)
                return unsupported(fl, "a torch.Size of non-integers");
            put(fl, v->u.seq.items[i]->u.i);
        }
        return CKPT_OK;
    case CKPT_KIND_TENSOR: {
        if (!tensor_flattens(v))
            return unsupported(fl, "a sparse tensor or one with state");
        int64_t row;
        CKPT_RETURN_IF_ERROR(tensor_row(fl, v->u.tensor.t, &row));
        put(fl, CKPT_FLAT_TENSOR);
        put(fl, row);
        return CKPT_OK;
    }
    case CKPT_KIND_LIST:
    case CKPT_KIND_TUPLE:
        put(fl, v->kind == CKPT_KIND_LIST ? CKPT_FLAT_LIST : CKPT_FLAT_TUPLE);
        put(fl, (int64_t)v->u.seq.len);
        put(fl, fl->next_id++);
        for (size_t i = 0; i < v->u.seq.len; i++)
            CKPT_RETURN_IF_ERROR(flatten(fl, v->u.seq.items[i]));
        return CKPT_OK;
    case CKPT_KIND_DICT:
    case CKPT_KIND_ORDERED_DICT:
        return flatten_dict(fl, v);
    default:
        return unsupported(fl, ckpt_kind_name((ckpt_kind)v->kind));
    }
}

static bool is_container(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_LIST || v->kind == CKPT_KIND_TUPLE ||
           v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT;
}

static ckpt_status flatten(flattener *fl, const ckpt_value *v)
{
    if (!v)
        return unsupported(fl, "a missing value");
    if (!is_container(v))
        return flatten_node(fl, v);
    int64_t id = ptr_map_get(&fl->containers, v);
    if (id >= 0) {
        if (v->flags & CKPT__VF_VISITING)
            return unsupported(fl, "a container holding itself");
        put(fl, CKPT_FLAT_REF);
        put(fl, id);
        return CKPT_OK;
    }
    if (fl->depth >= fl->f->opts.limits.max_nesting)
        return ckpt__fail(fl->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "ckpt_value_flatten: values nested deeper than max_nesting (%llu)",
                          (unsigned long long)fl->f->opts.limits.max_nesting);
    /* the id its ops will take */
    if (!ptr_map_put(&fl->containers, v, fl->next_id))
        return ckpt__nomem(fl->err);
    ckpt_value *w = (ckpt_value *)(uintptr_t)v;
    w->flags |= CKPT__VF_VISITING;
    fl->depth++;
    ckpt_status st = flatten_node(fl, v);
    fl->depth--;
    w->flags &= (uint16_t)~CKPT__VF_VISITING;
    return st;
}

/* Sets CKPT_FLAT_TF_SHARED on rows whose storage another row has. */
static ckpt_status mark_shared(flattener *fl)
{
    ckpt_flat *out = fl->out;
    if (out->tensors.failed)
        return ckpt__nomem(fl->err);
    int64_t *rows = (int64_t *)(void *)out->tensors.p;
    ptr_map first = {0};   /* storage -> its first row */
    for (size_t i = 0; i < out->tensor_count; i++) {
        int64_t *r = rows + i * CKPT_FLAT_T_COUNT;
        const void *s = (const void *)(uintptr_t)r[CKPT_FLAT_T_STORAGE];
        if (!s)
            continue;
        int64_t j = ptr_map_get(&first, s);
        if (j < 0) {
            if (!ptr_map_put(&first, s, (int64_t)i)) {
                ptr_map_free(&first);
                return ckpt__nomem(fl->err);
            }
            continue;
        }
        r[CKPT_FLAT_T_FLAGS] |= CKPT_FLAT_TF_SHARED;
        rows[(size_t)j * CKPT_FLAT_T_COUNT + CKPT_FLAT_T_FLAGS] |= CKPT_FLAT_TF_SHARED;
    }
    ptr_map_free(&first);
    return CKPT_OK;
}

ckpt_status ckpt_value_flatten(ckpt_file *f, const ckpt_value *root, ckpt_flat **out,
                               ckpt_error *err)
{
    if (!f || !out)
        return CKPT_INVALID_ARG(err, "NULL argument");
    *out = NULL;
    if (!root)
        root = f->root;
    ckpt_flat *flat = calloc(1, sizeof(*flat));
    if (!flat)
        return ckpt__nomem(err);
    flattener fl = {.f = f, .out = flat, .err = err};
    ckpt_status st = flatten(&fl, root);
    if (st == CKPT_OK)
        st = mark_shared(&fl);
    if (st == CKPT_OK && (flat->ops.failed || flat->text.failed || flat->tensors.failed ||
                          flat->dims.failed))
        st = ckpt__nomem(err);
    ptr_map_free(&fl.containers);
    ptr_map_free(&fl.rows);
    ptr_map_free(&fl.places);
    if (st != CKPT_OK) {
        ckpt_flat_free(flat);
        return st;
    }
    *out = flat;
    return CKPT_OK;
}

void ckpt_flat_get_info(const ckpt_flat *flat, ckpt_flat_info *info)
{
    ckpt_flat_info full = {.struct_size = sizeof(full)};
    if (flat) {
        full.ops = (const int64_t *)(const void *)flat->ops.p;
        full.op_count = flat->ops.len / sizeof(int64_t);
        full.text = (const char *)flat->text.p;
        full.text_bytes = flat->text.len;
        full.tensors = (const int64_t *)(const void *)flat->tensors.p;
        full.tensor_count = flat->tensor_count;
        full.tensor_fields = CKPT_FLAT_T_COUNT;
        full.dims = (const int64_t *)(const void *)flat->dims.p;
        full.dim_count = flat->dims.len / sizeof(int64_t);
    }
    ckpt__struct_out(info, &full, sizeof(full));
}

void ckpt_flat_free(ckpt_flat *flat)
{
    if (!flat)
        return;
    ckpt__buf_free(&flat->ops);
    ckpt__buf_free(&flat->text);
    ckpt__buf_free(&flat->tensors);
    ckpt__buf_free(&flat->dims);
    free(flat);
}
