/*
 * walk.c - the naming walk: every tensor of a value tree with its name.
 *
 * Names are paths from the root: dict keys as text (other keys as Python's
 * str() shows them), list/tuple/set positions as decimal numbers, joined by
 * ".". The file's tensor list and the writers name tensors through this one
 * walk, so a name means the same thing everywhere.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct name_buf {
    char *p;
    size_t len, cap;
} name_buf;

static bool nb_reserve(name_buf *b, size_t more)
{
    if (b->len + more + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p)
        return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static bool nb_append(name_buf *b, const char *s, size_t n)
{
    if (!nb_reserve(b, n + 1))
        return false;
    if (b->len)
        b->p[b->len++] = '.';
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return true;
}

/* Text of a dict key in a tensor name, written in place. */
static bool nb_append_key(name_buf *b, const ckpt_value *k)
{
    if (k->kind == CKPT_STR && !memchr(k->u.s.ptr, 0, k->u.s.len))
        return nb_append(b, k->u.s.ptr, k->u.s.len);
    if (k->kind == CKPT_STR) {
        /* Names are C strings: a NUL in a key would cut the name short and
         * make two keys one. Write it as Python's repr does, \x00. */
        size_t nuls = 0;
        for (size_t i = 0; i < k->u.s.len; i++)
            nuls += k->u.s.ptr[i] == 0;
        if (!nb_reserve(b, k->u.s.len + 3 * nuls + 1))
            return false;
        if (b->len)
            b->p[b->len++] = '.';
        for (size_t i = 0; i < k->u.s.len; i++) {
            if (k->u.s.ptr[i]) {
                b->p[b->len++] = k->u.s.ptr[i];
            } else {
                memcpy(b->p + b->len, "\\x00", 4);
                b->len += 4;
            }
        }
        b->p[b->len] = 0;
        return true;
    }
    size_t n = ckpt__key_text(k, NULL, 0);
    if (!nb_reserve(b, n + 1))
        return false;
    if (b->len)
        b->p[b->len++] = '.';
    b->len += ckpt__key_text(k, b->p + b->len, n + 1);
    return true;
}

typedef struct walk_ctx {
    name_buf nb;
    ckpt__walk_fn tensor_fn, leaf_fn;
    void *user;
    ckpt_error *err;
    uint64_t max_nesting;
    uint64_t visits_left;   /* containers shared through the memo multiply paths */
} walk_ctx;

static bool is_container(const ckpt_value *v)
{
    switch (v->kind) {
    case CKPT_LIST:
    case CKPT_TUPLE:
    case CKPT_SET:
    case CKPT_DICT:
    case CKPT_ORDERED_DICT:
        return true;
    default:
        return false;
    }
}

static bool is_tensor_like(const ckpt_value *v)
{
    return v->kind == CKPT_TENSOR || v->kind == CKPT__KIND_STORAGE;
}

static size_t child_count(const ckpt_value *v)
{
    bool is_dict = v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT;
    return is_dict ? v->u.dict.len : v->u.seq.len;
}

static ckpt_value *child_at(const ckpt_value *v, size_t i)
{
    bool is_dict = v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT;
    return is_dict ? v->u.dict.vals[i] : v->u.seq.items[i];
}

/* The parts of an inert object (CKPT_OPEN_PERMISSIVE) that can hold
 * tensors: its state, its SETITEM entries, its appended items. */
static void object_parts(const ckpt_value *v, ckpt_value *parts[3])
{
    parts[0] = v->u.obj.state;
    parts[1] = v->u.obj.dict;
    parts[2] = v->u.obj.items;
}

/* 1 when a tensor is reachable from v, 0 when not (cycles and depth
 * bounded), -1 when the walk's visits ran out: like the walk itself, the
 * search follows every path, and shared subtrees multiply them. */
static int search_tensor(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    if (!v)
        return 0;
    if (is_tensor_like(v))
        return 1;
    bool object = v->kind == CKPT_OBJECT;
    if ((!is_container(v) && !object) || depth > c->max_nesting ||
        (v->flags & CKPT__VF_VISITING))
        return 0;
    if (c->visits_left == 0)
        return -1;
    c->visits_left--;
    v->flags |= CKPT__VF_VISITING;
    int found = 0;
    if (object) {
        ckpt_value *parts[3];
        object_parts(v, parts);
        for (int i = 0; i < 3 && !found; i++)
            found = search_tensor(c, parts[i], depth + 1);
    } else {
        size_t n = child_count(v);
        for (size_t i = 0; i < n && !found; i++)
            found = search_tensor(c, child_at(v, i), depth + 1);
    }
    v->flags &= (uint16_t)~CKPT__VF_VISITING;
    return found;
}

static ckpt_status too_many_paths(walk_ctx *c)
{
    return ckpt__fail(c->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                      "containers shared through the pickle memo make too many paths "
                      "to name (at '%s')", c->nb.p ? c->nb.p : "");
}

/* *found: a tensor is reachable from v. */
static ckpt_status holds_tensor(walk_ctx *c, ckpt_value *v, uint64_t depth, bool *found)
{
    int r = search_tensor(c, v, depth);
    *found = r > 0;
    return r < 0 ? too_many_paths(c) : CKPT_OK;
}

static ckpt_status nomem(walk_ctx *c)
{
    return ckpt__fail(c->err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
}

static ckpt_status walk(walk_ctx *c, ckpt_value *v, uint64_t depth);

/* Walks child under the name component of key (a dict key) or, when key is
 * NULL, of the position index. */
static ckpt_status walk_child(walk_ctx *c, const ckpt_value *key, size_t index, ckpt_value *child,
                              uint64_t depth)
{
    size_t saved = c->nb.len;
    bool ok;
    if (key) {
        ok = nb_append_key(&c->nb, key);
    } else {
        char tmp[32];
        int len = snprintf(tmp, sizeof(tmp), "%zu", index);
        ok = nb_append(&c->nb, tmp, (size_t)len);
    }
    if (!ok)
        return nomem(c);
    ckpt_status st = walk(c, child, depth);
    c->nb.len = saved;
    if (c->nb.p)
        c->nb.p[saved] = 0;
    return st;
}

static const ckpt_value *state_entry(const ckpt_value *state, const char *key)
{
    const ckpt_value *v = ckpt_value_get(state, key);
    return v && (v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT) ? v : NULL;
}

/* A pickled torch.nn.Module: its state (__dict__) holds the _parameters,
 * _buffers and _modules dicts. */
static bool is_module(const ckpt_value *v)
{
    const ckpt_value *state = v->u.obj.state;
    return state_entry(state, "_parameters") && state_entry(state, "_buffers") &&
           state_entry(state, "_modules");
}

/* true when the set (a SET of names) holds the text key. */
static bool set_has(const ckpt_value *set, const ckpt_value *key)
{
    if (!set || set->kind != CKPT_SET)
        return false;
    for (size_t i = 0; i < set->u.seq.len; i++) {
        if (ckpt__value_equal(set->u.seq.items[i], key))
            return true;
    }
    return false;
}

/* A module's tensors under the names state_dict() gives them: its
 * parameters (None skipped), then its persistent buffers, then each
 * submodule's, recursively, in the order of the dicts. What else a module
 * holds (hooks, flags) is not in a state dict and is not walked. */
static ckpt_status walk_module(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    const ckpt_value *state = v->u.obj.state;
    const ckpt_value *params = state_entry(state, "_parameters");
    const ckpt_value *buffers = state_entry(state, "_buffers");
    const ckpt_value *modules = state_entry(state, "_modules");
    const ckpt_value *transient = ckpt_value_get(state, "_non_persistent_buffers_set");
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < params->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *p = params->u.dict.vals[i];
        if (p && is_tensor_like(p))
            st = walk_child(c, params->u.dict.keys[i], 0, p, depth + 1);
    }
    for (size_t i = 0; i < buffers->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *b = buffers->u.dict.vals[i];
        if (b && is_tensor_like(b) && !set_has(transient, buffers->u.dict.keys[i]))
            st = walk_child(c, buffers->u.dict.keys[i], 0, b, depth + 1);
    }
    for (size_t i = 0; i < modules->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *sub = modules->u.dict.vals[i];
        bool has = false;
        if (sub && (sub->kind == CKPT_OBJECT || is_container(sub)))
            st = holds_tensor(c, sub, depth + 1, &has);
        if (st == CKPT_OK && has)
            st = walk_child(c, modules->u.dict.keys[i], 0, sub, depth + 1);
    }
    return st;
}

/* Any other inert object: its attributes by name (a dict state) or its
 * state as it is, then its SETITEM entries by key, then its items by
 * position. */
static ckpt_status walk_object(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    ckpt_status st = CKPT_OK;
    ckpt_value *state = v->u.obj.state;
    if (state && (state->kind == CKPT_DICT || state->kind == CKPT_ORDERED_DICT)) {
        for (size_t i = 0; i < state->u.dict.len && st == CKPT_OK; i++)
            st = walk_child(c, state->u.dict.keys[i], 0, state->u.dict.vals[i], depth + 1);
    } else if (state) {
        st = walk(c, state, depth + 1);
    }
    const ckpt_value *d = v->u.obj.dict;
    for (size_t i = 0; d && i < d->u.dict.len && st == CKPT_OK; i++)
        st = walk_child(c, d->u.dict.keys[i], 0, d->u.dict.vals[i], depth + 1);
    const ckpt_value *items = v->u.obj.items;
    for (size_t i = 0; items && i < items->u.seq.len && st == CKPT_OK; i++)
        st = walk_child(c, NULL, i, items->u.seq.items[i], depth + 1);
    return st;
}

static ckpt_status walk(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    if (!v)
        return CKPT_OK;
    if (depth > c->max_nesting)
        return ckpt__fail(c->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "values nested deeper than %llu at '%s'",
                          (unsigned long long)c->max_nesting, c->nb.p ? c->nb.p : "");
    if (c->visits_left-- == 0)
        return too_many_paths(c);
    const char *name = c->nb.p ? c->nb.p : "";
    if (is_tensor_like(v))
        return c->tensor_fn(c->user, name, v, c->err);
    bool has = true;
    if (c->leaf_fn && (v->kind == CKPT_OBJECT || is_container(v)) &&
        !(v->flags & CKPT__VF_VISITING))
        CKPT_RETURN_IF_ERROR(holds_tensor(c, v, depth, &has));
    if (v->kind == CKPT_OBJECT && !(v->flags & CKPT__VF_VISITING)) {
        if (!has)
            return c->leaf_fn(c->user, name, v, c->err);
        v->flags |= CKPT__VF_VISITING;
        ckpt_status st = is_module(v) ? walk_module(c, v, depth) : walk_object(c, v, depth);
        v->flags &= (uint16_t)~CKPT__VF_VISITING;
        return st;
    }
    if (!is_container(v) || (v->flags & CKPT__VF_VISITING) || !has)
        return c->leaf_fn ? c->leaf_fn(c->user, name, v, c->err) : CKPT_OK;
    v->flags |= CKPT__VF_VISITING;
    ckpt_status st = CKPT_OK;
    size_t saved = c->nb.len;
    bool is_dict = v->kind == CKPT_DICT || v->kind == CKPT_ORDERED_DICT;
    size_t n = child_count(v);
    for (size_t i = 0; i < n && st == CKPT_OK; i++) {
        ckpt_value *child = child_at(v, i);
        /* Without a leaf callback only containers, objects and tensors
         * matter: skip plain leaves fast. */
        if (!c->leaf_fn && (!child || (!is_tensor_like(child) && !is_container(child) &&
                                       child->kind != CKPT_OBJECT)))
            continue;
        bool ok;
        if (is_dict) {
            ok = nb_append_key(&c->nb, v->u.dict.keys[i]);
        } else {
            char tmp[32];
            int len = snprintf(tmp, sizeof(tmp), "%zu", i);
            ok = nb_append(&c->nb, tmp, (size_t)len);
        }
        if (!ok) {
            st = nomem(c);
            break;
        }
        st = walk(c, child, depth + 1);
        c->nb.len = saved;
        if (c->nb.p)
            c->nb.p[saved] = 0;
    }
    v->flags &= (uint16_t)~CKPT__VF_VISITING;
    return st;
}

ckpt_status ckpt__walk_named_ex(const ckpt_value *root, uint64_t max_nesting,
                                uint64_t max_visits, ckpt__walk_fn tensor_fn,
                                ckpt__walk_fn leaf_fn, void *user, ckpt_error *err)
{
    walk_ctx c = {.tensor_fn = tensor_fn, .leaf_fn = leaf_fn, .user = user, .err = err,
                  .max_nesting = max_nesting, .visits_left = max_visits};
    /* The walk marks containers it is inside of (cycle guard) and clears
     * the marks on the way out: the tree is unchanged afterwards. */
    ckpt_status st = walk(&c, (ckpt_value *)(uintptr_t)root, 0);
    free(c.nb.p);
    return st;
}

ckpt_status ckpt__walk_named(const ckpt_value *root, uint64_t max_nesting, ckpt__walk_fn tensor_fn,
                             ckpt__walk_fn leaf_fn, void *user, ckpt_error *err)
{
    return ckpt__walk_named_ex(root, max_nesting, UINT64_C(100000000), tensor_fn, leaf_fn, user,
                               err);
}
