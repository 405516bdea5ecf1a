/*
 * torchscript.c - the weights of a TorchScript archive, read as data.
 *
 * torch.jit.save writes each module as an object of its TorchScript class
 * (GLOBAL '__torch__... Name', EMPTY_TUPLE, NEWOBJ, then BUILD with a dict
 * of its attributes in slot order); data.pkl holds the root module. Its
 * state_dict() lists, module by module and depth first, the parameters,
 * then the buffers (each in slot order), then the submodules. Which
 * attributes are parameters or buffers, and which classes are modules, is
 * written only in the class's code record: `class Name(Module):` with the
 * lines `  __parameters__ = [...]` and `  __buffers__ = [...]` (torch < 1.5
 * wrote no __buffers__: every other tensor attribute was one). Those lines
 * (and whether the class defines __setstate__) are all that is read of
 * code/; nothing in it is ever run.
 */
#include "format.h"

#include <stdlib.h>

typedef struct ts_class {
    const char *name;          /* "module.Name", in the arena */
    bool module;               /* `class Name(Module):` */
    bool setstate;             /* defines __setstate__ */
    bool has_params;           /* __parameters__ was found */
    bool has_buffers;          /* __buffers__ was found (torch >= 1.5 writes it;
                                  before, every tensor attribute that is not a
                                  parameter was a buffer) */
    ckpt_value *params;        /* LIST of STR, slot order */
    ckpt_value *buffers;       /* LIST of STR, slot order */
    const char *record;        /* where it is defined */
} ts_class;

typedef struct ts_walk {
    ckpt_file *f;
    ckpt_error *err;
    ckpt__arena *arena;
    ckpt_value *class_index;   /* DICT "module.Name" -> INT index in classes */
    ckpt_value *records_read;  /* DICT record name -> NONE */
    ts_class **classes;        /* in the arena: pointers stay valid as it grows */
    size_t nclasses, classes_cap;
    ckpt_value *out;           /* ORDERED_DICT name -> tensor */
    char *name;                /* the current path, "a.b." */
    size_t name_cap;
    uint64_t tensor_paths, name_bytes, module_paths;
} ts_walk;

static ckpt_status ts_nomem(ts_walk *w) { return ckpt__nomem(w->err); }

static ckpt_value *ts_str(ts_walk *w, const char *s, size_t n)
{
    return ckpt__value_str(w->arena, CKPT_KIND_STR, s, n);
}

/* ---- the class lines of code/ ------------------------------------------ */

static bool line_is(const char *p, const char *end, const char *text)
{
    size_t n = strlen(text);
    return (size_t)(end - p) >= n && memcmp(p, text, n) == 0;
}

/* A list of names as TorchScript prints it: ["weight", "bias", ]. p is just
 * after '[', end the end of the line. */
static ckpt_status parse_names(ts_walk *w, const char *rec, uint64_t off, const char *p,
                               const char *end, ckpt_value **out)
{
    ckpt_value *list = ckpt__value_new(w->arena, CKPT_KIND_LIST);
    if (!list)
        return ts_nomem(w);
    char *buf = NULL;
    ckpt_status st = CKPT_OK;
    for (;;) {
        while (p < end && *p == ' ')
            p++;
        if (p < end && *p == ']')
            break;
        if (p >= end || *p != '"') {
            st = ckpt__fail(w->err, CKPT_ERR_FORMAT, rec, off,
                            "a list of attribute names is not a list of quoted names");
            goto out;
        }
        p++;
        free(buf);
        buf = malloc((size_t)(end - p) + 1);
        if (!buf) {
            st = ts_nomem(w);
            goto out;
        }
        size_t n = 0;
        while (p < end && *p != '"') {
            if (*p == '\\') {
                if (end - p < 2 || (p[1] != '"' && p[1] != '\\' && p[1] != '\'')) {
                    st = ckpt__fail(w->err, CKPT_ERR_FORMAT, rec, off,
                                    "an attribute name holds an escape other than \\\", \\' "
                                    "or \\\\");
                    goto out;
                }
                p++;
            }
            buf[n++] = *p++;
        }
        if (p >= end) {
            st = ckpt__fail(w->err, CKPT_ERR_FORMAT, rec, off, "an attribute name is not closed");
            goto out;
        }
        p++;
        ckpt_value *name = ts_str(w, buf, n);
        if (!name || !ckpt__seq_append(w->arena, list, name)) {
            st = ts_nomem(w);
            goto out;
        }
        while (p < end && *p == ' ')
            p++;
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == ']')
            break;
        st = ckpt__fail(w->err, CKPT_ERR_FORMAT, rec, off,
                        "a list of attribute names is not a list of quoted names");
        goto out;
    }
    *out = list;
out:
    free(buf);
    return st;
}

static ckpt_status add_class(ts_walk *w, const char *module, size_t mlen, const char *name,
                             size_t nlen, const char *rec, ts_class **out)
{
    *out = NULL;
    char *full = ckpt__arena_alloc(w->arena, mlen + nlen + 2);
    if (!full)
        return ts_nomem(w);
    memcpy(full, module, mlen);
    full[mlen] = '.';
    memcpy(full + mlen + 1, name, nlen);
    full[mlen + 1 + nlen] = 0;
    ckpt_value *key = ts_str(w, full, mlen + 1 + nlen);
    if (!key)
        return ts_nomem(w);
    if (ckpt__dict_lookup(w->class_index, key))
        return CKPT_OK; /* defined twice: the first one counts */
    if (w->nclasses == w->classes_cap) {
        size_t cap = w->classes_cap ? w->classes_cap * 2 : 16;
        ts_class **grown = realloc(w->classes, cap * sizeof(*grown));
        if (!grown)
            return ts_nomem(w);
        w->classes = grown;
        w->classes_cap = cap;
    }
    ts_class *c = ckpt__arena_alloc(w->arena, sizeof(*c));
    if (!c)
        return ts_nomem(w);
    ckpt_value *index = ckpt__value_new(w->arena, CKPT_KIND_INT);
    if (!index)
        return ts_nomem(w);
    index->u.i = (int64_t)w->nclasses;
    if (!ckpt__dict_set(w->arena, w->class_index, key, index))
        return ts_nomem(w);
    w->classes[w->nclasses++] = c;
    memset(c, 0, sizeof(*c));
    c->name = full;
    c->record = rec;
    *out = c;
    return CKPT_OK;
}

/* Reads every class of one code record (module's), once. */
static ckpt_status read_code_record(ts_walk *w, const char *module, size_t mlen)
{
    ckpt_file *f = w->f;
    if (!ckpt__python_dotted_name(module, mlen))
        return ckpt__fail(w->err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "a TorchScript class's module is not a dotted name");
    size_t pn = strlen(f->prefix);
    char *rec = ckpt__arena_alloc(w->arena, pn + 6 + mlen + 4);
    if (!rec)
        return ts_nomem(w);
    memcpy(rec, f->prefix, pn);
    memcpy(rec + pn, "/code/", 6);
    for (size_t i = 0; i < mlen; i++)
        rec[pn + 6 + i] = module[i] == '.' ? '/' : module[i];
    memcpy(rec + pn + 6 + mlen, ".py", 4);
    ckpt_value *key = ts_str(w, rec, strlen(rec));
    if (!key)
        return ts_nomem(w);
    if (ckpt__dict_lookup(w->records_read, key))
        return CKPT_OK;
    ckpt_value *none = ckpt__value_new(w->arena, CKPT_KIND_NONE);
    if (!none || !ckpt__dict_set(w->arena, w->records_read, key, none))
        return ts_nomem(w);
    long idx = ckpt__zip_find(&f->zip, rec);
    if (idx < 0)
        return CKPT_OK; /* the caller names the class it misses */
    const ckpt__zip_entry *e = &f->zip.entries[idx];
    if (e->size > f->opts.limits.max_pickle_bytes)
        return ckpt__fail(w->err, CKPT_ERR_LIMIT, e->name, 0,
                          "code record is %llu bytes (limit max_pickle_bytes, %llu)",
                          (unsigned long long)e->size,
                          (unsigned long long)f->opts.limits.max_pickle_bytes);
    const uint8_t *data;
    uint8_t *owned = NULL;
    CKPT_RETURN_IF_ERROR(ckpt__zip_read(&f->zip, (size_t)idx, &f->opts.limits, &data, &owned,
                                        w->err));
    const char *p = (const char *)data, *end = p + e->size;
    ts_class *cur = NULL;
    ckpt_status st = CKPT_OK;
    while (p < end && st == CKPT_OK) {
        const char *le = memchr(p, '\n', (size_t)(end - p));
        if (!le)
            le = end;
        uint64_t off = (uint64_t)(p - (const char *)data);
        if (line_is(p, le, "class ")) {
            const char *n = p + 6, *q = n;
            while (q < le && *q != '(' && *q != ':')
                q++;
            cur = NULL;
            if (q > n && q < le && ckpt__python_dotted_name(n, (size_t)(q - n)) &&
                !memchr(n, '.', (size_t)(q - n)) &&
                (st = add_class(w, module, mlen, n, (size_t)(q - n), e->name, &cur)) == CKPT_OK &&
                cur)
                cur->module = *q == '(' && line_is(q, le, "(Module):");
        } else if (cur && line_is(p, le, "  __parameters__ = [")) {
            st = parse_names(w, e->name, off, p + 20, le, &cur->params);
            cur->has_params = true;
        } else if (cur && line_is(p, le, "  __buffers__ = [")) {
            st = parse_names(w, e->name, off, p + 17, le, &cur->buffers);
            cur->has_buffers = true;
        } else if (cur && line_is(p, le, "  def __setstate__(")) {
            cur->setstate = true;
        } else if (cur && p < le && *p != ' ') {
            cur = NULL;
        }
        p = le < end ? le + 1 : end;
    }
    free(owned);
    return st;
}

/* The class of a TorchScript object (its GLOBAL "module.Name"). */
static ckpt_status class_of(ts_walk *w, const ckpt_value *obj, const ts_class **out)
{
    const ckpt_value *cls = obj->u.obj.cls;
    const char *text = cls->u.s.ptr;
    size_t n = cls->u.s.len;
    const char *dot = NULL;
    for (size_t i = n; i-- > 0;) {
        if (text[i] == '.') {
            dot = text + i;
            break;
        }
    }
    ckpt_value *key = ts_str(w, text, n);
    if (!key || !dot)
        return key ? ckpt__fail(w->err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                                "TorchScript class '%s' has no module", text)
                   : ts_nomem(w);
    ckpt_value *idx = ckpt__dict_lookup(w->class_index, key);
    if (!idx) {
        CKPT_RETURN_IF_ERROR(read_code_record(w, text, (size_t)(dot - text)));
        idx = ckpt__dict_lookup(w->class_index, key);
    }
    if (!idx)
        return ckpt__fail(w->err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "TorchScript class '%s' has no definition in the archive's code/ "
                          "(which attributes are parameters and buffers is written only there)",
                          text);
    const ts_class *c = w->classes[idx->u.i];
    if (c->setstate)
        return ckpt__fail(w->err, CKPT_ERR_UNSUPPORTED, c->record, CKPT_NO_OFFSET,
                          "class '%s' has a __setstate__: torch.jit.load runs it, so its "
                          "objects are not data",
                          c->name);
    if (c->module && !c->has_params)
        return ckpt__fail(w->err, CKPT_ERR_FORMAT, c->record, CKPT_NO_OFFSET,
                          "module class '%s' has no __parameters__ list", c->name);
    *out = c;
    return CKPT_OK;
}

static bool is_torchscript_object(const ckpt_value *v)
{
    if (!v || v->kind != CKPT_KIND_OBJECT)
        return false;
    const ckpt_value *cls = v->u.obj.cls;
    return cls && cls->kind == CKPT_KIND_GLOBAL && cls->u.s.len > 10 &&
           memcmp(cls->u.s.ptr, "__torch__.", 10) == 0;
}

/* ---- the walk ------------------------------------------------------------ */

static ckpt_status set_name(ts_walk *w, size_t at, const ckpt_value *part, bool dot)
{
    uint64_t need64;
    if (!ckpt__add_u64(at, part->u.s.len, &need64) || !ckpt__add_u64(need64, 2, &need64) ||
        need64 > SIZE_MAX / 2)
        return ts_nomem(w);
    size_t need = (size_t)need64;
    if (need > w->name_cap) {
        size_t cap = w->name_cap ? w->name_cap : 64;
        while (cap < need)
            cap *= 2;
        char *p = realloc(w->name, cap);
        if (!p)
            return ts_nomem(w);
        w->name = p;
        w->name_cap = cap;
    }
    memcpy(w->name + at, part->u.s.ptr, part->u.s.len);
    if (dot)
        w->name[at + part->u.s.len] = '.';
    return CKPT_OK;
}

static ckpt_status add_tensors(ts_walk *w, const ckpt_value *state, const ts_class *c,
                               const ckpt_value *names, const char *what, size_t at)
{
    const ckpt_limits *lim = &w->f->opts.limits;
    for (size_t i = 0; names && i < names->u.seq.len; i++) {
        const ckpt_value *attr = names->u.seq.items[i];
        const ckpt_value *v = state ? ckpt__dict_lookup(state, attr) : NULL;
        if (!v)
            return ckpt__fail(w->err, CKPT_ERR_FORMAT, c->record, CKPT_NO_OFFSET,
                              "class '%s' lists the %s '%s', which its object does not hold",
                              c->name, what, attr->u.s.ptr);
        if (v->kind == CKPT_KIND_NONE)
            continue; /* state_dict() skips None */
        if (v->kind != CKPT_KIND_TENSOR)
            return ckpt__fail(w->err, CKPT_ERR_FORMAT, c->record, CKPT_NO_OFFSET,
                              "the %s '%s' of class '%s' is a %s, not a tensor", what,
                              attr->u.s.ptr, c->name, ckpt_kind_name(ckpt_value_kind(v)));
        CKPT_RETURN_IF_ERROR(set_name(w, at, attr, false));
        size_t len = at + attr->u.s.len;
        if (++w->tensor_paths > lim->max_tensor_paths)
            return ckpt__fail(w->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                              "more than %llu tensor names (max_tensor_paths)",
                              (unsigned long long)lim->max_tensor_paths);
        w->name_bytes += len + 1;
        if (w->name_bytes > lim->max_tensor_name_bytes)
            return ckpt__fail(w->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                              "tensor names take more than %llu bytes (max_tensor_name_bytes)",
                              (unsigned long long)lim->max_tensor_name_bytes);
        ckpt_value *key = ts_str(w, w->name, len);
        if (!key || !ckpt__dict_set(w->arena, w->out, key, (ckpt_value *)(uintptr_t)v))
            return ts_nomem(w);
    }
    return CKPT_OK;
}

/* The buffers of an object whose class has no __buffers__ list (torch <
 * 1.5): its tensor attributes that are not parameters, in slot order. */
static ckpt_status implied_buffers(ts_walk *w, const ckpt_value *state, const ts_class *c,
                                   ckpt_value **out)
{
    ckpt_value *list = ckpt__value_new(w->arena, CKPT_KIND_LIST);
    if (!list)
        return ts_nomem(w);
    ckpt_value *params = ckpt__value_new(w->arena, CKPT_KIND_DICT);
    if (!params)
        return ts_nomem(w);
    for (size_t i = 0; c->params && i < c->params->u.seq.len; i++) {
        if (!ckpt__dict_set(w->arena, params, c->params->u.seq.items[i], c->params->u.seq.items[i]))
            return ts_nomem(w);
    }
    for (size_t i = 0; state && i < state->u.dict.len; i++) {
        if (state->u.dict.vals[i]->kind == CKPT_KIND_TENSOR &&
            !ckpt__dict_lookup(params, state->u.dict.keys[i]) &&
            !ckpt__seq_append(w->arena, list, state->u.dict.keys[i]))
            return ts_nomem(w);
    }
    *out = list;
    return CKPT_OK;
}

/* obj (of module class c) named by w->name[0..at): its parameters, its
 * buffers, then its submodules, as state_dict() orders them. */
static ckpt_status walk_module(ts_walk *w, ckpt_value *obj, const ts_class *c, size_t at,
                               uint64_t depth)
{
    const ckpt_limits *lim = &w->f->opts.limits;
    if (depth > lim->max_nesting)
        return ckpt__fail(w->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "modules nest more than %llu deep (max_nesting)",
                          (unsigned long long)lim->max_nesting);
    if (++w->module_paths > lim->max_tensor_paths)
        return ckpt__fail(w->err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "more than %llu module paths (max_tensor_paths): shared submodules "
                          "multiply them",
                          (unsigned long long)lim->max_tensor_paths);
    if (obj->flags & CKPT__VF_VISITING)
        return ckpt__fail(w->err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "a module of class '%s' holds itself", c->name);
    const ckpt_value *state = obj->u.obj.state;
    CKPT_RETURN_IF_ERROR(add_tensors(w, state, c, c->params, "parameter", at));
    ckpt_value *buffers = c->buffers;
    if (!c->has_buffers)
        CKPT_RETURN_IF_ERROR(implied_buffers(w, state, c, &buffers));
    CKPT_RETURN_IF_ERROR(add_tensors(w, state, c, buffers, "buffer", at));
    ckpt_status st = CKPT_OK;
    obj->flags |= CKPT__VF_VISITING;
    for (size_t i = 0; state && i < state->u.dict.len && st == CKPT_OK; i++) {
        ckpt_value *sub = state->u.dict.vals[i];
        const ts_class *sc;
        if (!is_torchscript_object(sub))
            continue;
        if ((st = class_of(w, sub, &sc)) != CKPT_OK || !sc->module)
            continue;
        const ckpt_value *key = state->u.dict.keys[i];
        if ((st = set_name(w, at, key, true)) == CKPT_OK)
            st = walk_module(w, sub, sc, at + key->u.s.len + 1, depth + 1);
    }
    obj->flags &= (uint16_t)~CKPT__VF_VISITING;
    return st;
}

ckpt_status ckpt__torchscript_state_dict(ckpt_file *f, const ckpt_value *root, ckpt_value **out,
                                         ckpt_error *err)
{
    ts_walk w = {.f = f, .err = err, .arena = &f->arena};
    ckpt_status st;
    w.class_index = ckpt__value_new(w.arena, CKPT_KIND_DICT);
    w.records_read = ckpt__value_new(w.arena, CKPT_KIND_DICT);
    w.out = ckpt__value_new(w.arena, CKPT_KIND_ORDERED_DICT);
    if (!w.class_index || !w.records_read || !w.out)
        return ts_nomem(&w);
    if (!is_torchscript_object(root)) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                        "the archive's data.pkl holds a %s, not a TorchScript module",
                        ckpt_kind_name(ckpt_value_kind(root)));
        goto out;
    }
    const ts_class *c;
    if ((st = class_of(&w, root, &c)) != CKPT_OK)
        goto out;
    if (!c->module) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, c->record, CKPT_NO_OFFSET,
                        "the archive's root object, of class '%s', is not a Module", c->name);
        goto out;
    }
    if ((st = walk_module(&w, (ckpt_value *)(uintptr_t)root, c, 0, 0)) == CKPT_OK)
        *out = w.out;
out:
    free(w.classes);
    free(w.name);
    return st;
}
