/*
 * walk.c - the naming walk: every tensor of a value tree with its name.
 *
 * Names are paths from the root: dict keys as text (other keys as Python's
 * str() shows them), list/tuple/set positions as decimal numbers, joined by
 * ".". The file's tensor list and the writers name tensors through this one
 * walk, so a name means the same thing everywhere.
 *
 * A container shared through the pickle memo is reached once per path to
 * it, so the work of a walk is bounded by what it names, not by the tree:
 * - whether a subtree holds a tensor is found once per container and kept
 *   in its flags for the rest of the walk; subtrees without tensors are
 *   passed over whole, however often they are reached;
 * - every container entered and every child looked at counts against a
 *   budget of steps (visits_left), so a container with many children
 *   reached many times is refused, not walked for minutes;
 * - one name is at most max_name bytes, so keys shared along a deep path
 *   cannot make a name longer than the caller allows.
 */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct name_buf {
    char *p;
    size_t len, cap;
    size_t max;        /* longest name, without its NUL */
    bool too_long;     /* the last append failed on max, not on memory */
} name_buf;

static bool nb_reserve(name_buf *b, size_t more)
{
    if (more > b->max || b->len > b->max - more) {
        b->too_long = true;
        return false;
    }
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
    if (k->kind == CKPT_KIND_STR && !memchr(k->u.s.ptr, 0, k->u.s.len))
        return nb_append(b, k->u.s.ptr, k->u.s.len);
    if (k->kind == CKPT_KIND_STR) {
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
    uint64_t visits_left;   /* steps left: containers shared through the memo multiply paths */
    bool provisional;       /* the current search met a cycle or the nesting bound */
    bool too_deep;          /* a search went past max_nesting */
    ckpt_value **known;     /* values given CKPT__VF_KNOWN, to clear at the end */
    size_t known_len, known_cap;
} walk_ctx;

static bool is_container(const ckpt_value *v)
{
    switch (v->kind) {
    case CKPT_KIND_LIST:
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SET:
    case CKPT_KIND_DICT:
    case CKPT_KIND_ORDERED_DICT:
        return true;
    default:
        return false;
    }
}

static bool is_tensor_like(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_TENSOR || v->kind == CKPT__KIND_STORAGE;
}

static bool is_dict(const ckpt_value *v)
{
    return v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT;
}

static size_t child_count(const ckpt_value *v)
{
    return is_dict(v) ? v->u.dict.len : v->u.seq.len;
}

static ckpt_value *child_at(const ckpt_value *v, size_t i)
{
    return is_dict(v) ? v->u.dict.vals[i] : v->u.seq.items[i];
}

/* The parts of an inert object (CKPT_OPEN_PERMISSIVE) that can hold
 * tensors: its state, its SETITEM entries, its appended items. */
static void object_parts(const ckpt_value *v, ckpt_value *parts[3])
{
    parts[0] = v->u.obj.state;
    parts[1] = v->u.obj.dict;
    parts[2] = v->u.obj.items;
}

/* Takes n steps from the budget; false when it has fewer. */
static bool charge(walk_ctx *c, uint64_t n)
{
    if (c->visits_left < n) {
        c->visits_left = 0;
        return false;
    }
    c->visits_left -= n;
    return true;
}

/* false when a tensor surely is not reachable from v (a leaf, or a
 * container or object already searched): the walk passes it over. */
static bool may_hold(const ckpt_value *v)
{
    if (!v)
        return false;
    if (is_tensor_like(v))
        return true;
    if (!is_container(v) && v->kind != CKPT_KIND_OBJECT)
        return false;
    return (v->flags & (CKPT__VF_KNOWN | CKPT__VF_HOLDS)) != CKPT__VF_KNOWN;
}

enum { SEARCH_NONE = 0, SEARCH_FOUND = 1, SEARCH_BUDGET = -1, SEARCH_NOMEM = -2 };

static bool remember(walk_ctx *c, ckpt_value *v, uint16_t flags)
{
    if (c->known_len == c->known_cap) {
        ckpt_value **p = ckpt__array_grow(c->known, &c->known_cap, sizeof(*p));
        if (!p)
            return false;
        c->known = p;
    }
    c->known[c->known_len++] = v;
    v->flags |= flags;
    return true;
}

/* SEARCH_FOUND when a tensor is reachable from v, SEARCH_NONE when not
 * (cycles and depth bounded), or why the search stopped. The answer for a
 * container is kept in its flags, so each is searched once per walk; an
 * answer "none" that depended on a container being searched further up
 * (a cycle) or on the nesting bound is not kept. */
static int search_tensor(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    if (!v)
        return SEARCH_NONE;
    if (is_tensor_like(v))
        return SEARCH_FOUND;
    bool object = v->kind == CKPT_KIND_OBJECT;
    if (!is_container(v) && !object)
        return SEARCH_NONE;
    if (v->flags & CKPT__VF_KNOWN)
        return (v->flags & CKPT__VF_HOLDS) ? SEARCH_FOUND : SEARCH_NONE;
    if (v->flags & CKPT__VF_VISITING) {
        c->provisional = true;
        return SEARCH_NONE;
    }
    if (depth > c->max_nesting) {
        c->provisional = true;
        c->too_deep = true;
        return SEARCH_NONE;
    }
    if (!charge(c, 1))
        return SEARCH_BUDGET;
    bool outer = c->provisional;
    c->provisional = false;
    v->flags |= CKPT__VF_VISITING;
    int found = SEARCH_NONE;
    if (object) {
        ckpt_value *parts[3];
        object_parts(v, parts);
        for (int i = 0; i < 3 && found == SEARCH_NONE && !c->too_deep; i++)
            found = search_tensor(c, parts[i], depth + 1);
    } else {
        size_t n = child_count(v);
        for (size_t i = 0; i < n && found == SEARCH_NONE && !c->too_deep; i++) {
            if (!charge(c, 1))
                found = SEARCH_BUDGET;
            else
                found = search_tensor(c, child_at(v, i), depth + 1);
        }
    }
    v->flags &= (uint16_t)~CKPT__VF_VISITING;
    if (found == SEARCH_FOUND || (found == SEARCH_NONE && !c->provisional)) {
        if (!remember(c, v, found == SEARCH_FOUND ? CKPT__VF_KNOWN | CKPT__VF_HOLDS : CKPT__VF_KNOWN))
            found = SEARCH_NOMEM;
    }
    c->provisional = c->provisional || outer;
    return found;
}

static ckpt_status too_many_paths(walk_ctx *c)
{
    return ckpt__fail(c->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                      "containers shared through the pickle memo make too many paths "
                      "to name (at '%s')", c->nb.p ? c->nb.p : "");
}

static ckpt_status too_deep(walk_ctx *c)
{
    return ckpt__fail(c->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                      "values nested deeper than %llu at '%s'",
                      (unsigned long long)c->max_nesting, c->nb.p ? c->nb.p : "");
}

/* *found: a tensor is reachable from v. Values nested past max_nesting are
 * refused here as the walk refuses them: a subtree the walk passes over is
 * still bounded. */
static ckpt_status holds_tensor(walk_ctx *c, ckpt_value *v, uint64_t depth, bool *found)
{
    c->provisional = false;
    int r = search_tensor(c, v, depth);
    *found = r == SEARCH_FOUND;
    if (r == SEARCH_BUDGET)
        return too_many_paths(c);
    if (r == SEARCH_NOMEM)
        return ckpt__nomem(c->err);
    if (c->too_deep)
        return too_deep(c);
    return CKPT_OK;
}

static ckpt_status name_failed(walk_ctx *c)
{
    if (!c->nb.too_long)
        return ckpt__nomem(c->err);
    return ckpt__fail(c->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                      "a tensor name would take more than %llu bytes with its NUL "
                      "(limit max_tensor_name_bytes) under '%.200s'",
                      (unsigned long long)c->nb.max + 1, c->nb.p ? c->nb.p : "");
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
        return name_failed(c);
    ckpt_status st = walk(c, child, depth);
    c->nb.len = saved;
    if (c->nb.p)
        c->nb.p[saved] = 0;
    return st;
}

/* Walks the n entries of a dict (keys != NULL) or items of a sequence.
 * Without a leaf callback only what may hold a tensor is walked; looking
 * at each entry is a step either way. */
static ckpt_status walk_entries(walk_ctx *c, ckpt_value *const *keys, ckpt_value *const *vals,
                                size_t n, uint64_t depth)
{
    if (!charge(c, n))
        return too_many_paths(c);
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < n && st == CKPT_OK; i++) {
        if (!c->leaf_fn && !may_hold(vals[i]))
            continue;
        st = walk_child(c, keys ? keys[i] : NULL, i, vals[i], depth);
    }
    return st;
}

static const ckpt_value *state_entry(const ckpt_value *state, const char *key)
{
    const ckpt_value *v = ckpt_value_get(state, key);
    return v && is_dict(v) ? v : NULL;
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
    if (!set || set->kind != CKPT_KIND_SET)
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
    size_t transient_len = transient && transient->kind == CKPT_KIND_SET ? transient->u.seq.len : 0;
    if (!charge(c, params->u.dict.len) || !charge(c, buffers->u.dict.len) ||
        !charge(c, modules->u.dict.len))
        return too_many_paths(c);
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < params->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *p = params->u.dict.vals[i];
        if (p && is_tensor_like(p))
            st = walk_child(c, params->u.dict.keys[i], 0, p, depth + 1);
    }
    for (size_t i = 0; i < buffers->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *b = buffers->u.dict.vals[i];
        if (!b || !is_tensor_like(b))
            continue;
        /* the lookup compares with each name of the set */
        if (!charge(c, transient_len))
            return too_many_paths(c);
        if (!set_has(transient, buffers->u.dict.keys[i]))
            st = walk_child(c, buffers->u.dict.keys[i], 0, b, depth + 1);
    }
    for (size_t i = 0; i < modules->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *sub = modules->u.dict.vals[i];
        bool has = false;
        if (sub && (sub->kind == CKPT_KIND_OBJECT || is_container(sub)))
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
    if (state && is_dict(state))
        st = walk_entries(c, state->u.dict.keys, state->u.dict.vals, state->u.dict.len,
                          depth + 1);
    else if (state)
        st = walk(c, state, depth + 1);
    const ckpt_value *d = v->u.obj.dict;
    if (d && st == CKPT_OK)
        st = walk_entries(c, d->u.dict.keys, d->u.dict.vals, d->u.dict.len, depth + 1);
    const ckpt_value *items = v->u.obj.items;
    if (items && st == CKPT_OK)
        st = walk_entries(c, NULL, items->u.seq.items, items->u.seq.len, depth + 1);
    return st;
}

static ckpt_status walk(walk_ctx *c, ckpt_value *v, uint64_t depth)
{
    if (!v)
        return CKPT_OK;
    if (depth > c->max_nesting)
        return too_deep(c);
    if (!charge(c, 1))
        return too_many_paths(c);
    const char *name = c->nb.p ? c->nb.p : "";
    if (is_tensor_like(v))
        return c->tensor_fn(c->user, name, v, c->err);
    bool object = v->kind == CKPT_KIND_OBJECT;
    if ((!object && !is_container(v)) || (v->flags & CKPT__VF_VISITING))
        return c->leaf_fn ? c->leaf_fn(c->user, name, v, c->err) : CKPT_OK;
    bool has;
    CKPT_RETURN_IF_ERROR(holds_tensor(c, v, depth, &has));
    if (!has)
        return c->leaf_fn ? c->leaf_fn(c->user, name, v, c->err) : CKPT_OK;
    v->flags |= CKPT__VF_VISITING;
    ckpt_status st;
    if (object)
        st = is_module(v) ? walk_module(c, v, depth) : walk_object(c, v, depth);
    else if (is_dict(v))
        st = walk_entries(c, v->u.dict.keys, v->u.dict.vals, v->u.dict.len, depth + 1);
    else
        st = walk_entries(c, NULL, v->u.seq.items, v->u.seq.len, depth + 1);
    v->flags &= (uint16_t)~CKPT__VF_VISITING;
    return st;
}

ckpt_status ckpt__walk_named_ex(const ckpt_value *root, const ckpt__walk_bounds *bounds,
                                ckpt__walk_fn tensor_fn, ckpt__walk_fn leaf_fn, void *user,
                                ckpt_error *err)
{
    walk_ctx c = {.tensor_fn = tensor_fn, .leaf_fn = leaf_fn, .user = user, .err = err,
                  .max_nesting = bounds->max_nesting, .visits_left = bounds->max_steps};
    c.nb.max = bounds->max_name_len;
    /* The walk marks containers it is inside of (cycle guard) and those it
     * searched; it clears the marks on the way out: the tree is unchanged
     * afterwards. */
    ckpt_status st = walk(&c, (ckpt_value *)(uintptr_t)root, 0);
    for (size_t i = 0; i < c.known_len; i++)
        c.known[i]->flags &= (uint16_t)~(CKPT__VF_KNOWN | CKPT__VF_HOLDS);
    free(c.known);
    free(c.nb.p);
    return st;
}

ckpt_status ckpt__walk_named(const ckpt_value *root, uint64_t max_nesting, ckpt__walk_fn tensor_fn,
                             ckpt__walk_fn leaf_fn, void *user, ckpt_error *err)
{
    ckpt_limits lim;
    ckpt_limits_default(&lim);
    ckpt__walk_bounds b = {.max_nesting = max_nesting,
                           .max_steps = UINT64_C(100000000),
                           .max_name_len = (size_t)lim.max_tensor_name_bytes};
    return ckpt__walk_named_ex(root, &b, tensor_fn, leaf_fn, user, err);
}
