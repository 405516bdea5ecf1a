/*
 * torch_tar.c - the pre-0.4 torch.save format: a tar archive (members
 * listed as Python's tarfile lists them, tar.c) read as torch's
 * _legacy_load reads it.
 *
 * Members (tarfile takes the last one of a name): "storages" holds a
 * pickle of the storage count, then for each storage a pickle (key,
 * location, storage_type), an int64 element count and the raw
 * little-endian elements, then a pickle of the views [(key, root_key,
 * offset, numel)]; "tensors" holds a pickle of the tensor count, then for
 * each a pickle (key, storage_key, tensor_type) and its metadata (int32
 * ndim, 4 bytes, ndim int64 sizes, ndim int64 strides, int64 offset);
 * "pickle" is the object, whose persistent ids are the decimal keys of
 * those storages and tensors. "sys_info" is not read (torch does not read
 * it either). Every pickle goes through the usual allow-list. Members that
 * are not regular files (links, which extraction would follow) and keys
 * given twice are refused.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>

/* deserialized_objects: keys are ints (what torch.save wrote) or strs
 * (what a dict also takes; no persistent id can name them) */
typedef struct okey {
    bool is_str;
    int64_t i;
    const char *s;
    size_t n;
} okey;

typedef struct tar_obj {
    okey key;
    ckpt_value *value;           /* a storage or a tensor value */
} tar_obj;

typedef struct tar_load {
    ckpt_file *f;
    ckpt__tar_member copies[3];  /* storages, tensors, pickle (the last of each) */
    bool found[3];
    bool bad_type[3];
    tar_obj *objs;
    size_t count, cap;
    uint32_t *index;             /* keyed hash of objs: slot -> i+1, 0 empty */
    size_t index_cap;
} tar_load;

static const char *const MEMBER_NAMES[3] = {"storages", "tensors", "pickle"};

static ckpt_status collect(void *user, const ckpt__tar_member *m)
{
    tar_load *L = user;
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(MEMBER_NAMES[i]);
        if (m->name_len == n && memcmp(m->name, MEMBER_NAMES[i], n) == 0) {
            L->copies[i] = *m;
            L->copies[i].name = (const uint8_t *)MEMBER_NAMES[i]; /* the walk's buffer goes */
            L->found[i] = true;
            /* regular files only: '0', NUL (old), '7' (contiguous) */
            L->bad_type[i] = !(m->type == '0' || m->type == 0 || m->type == '7');
        }
    }
    return CKPT_OK;
}

static bool same_key(const okey *a, const okey *b)
{
    if (a->is_str != b->is_str)
        return false;
    if (!a->is_str)
        return a->i == b->i;
    return a->n == b->n && memcmp(a->s, b->s, a->n) == 0;
}

static size_t slot_of(const tar_load *L, const uint32_t *index, size_t cap, const okey *key)
{
    size_t mask = cap - 1;
    uint64_t h = key->is_str ? ~ckpt__hash_keyed(L, key->s, key->n)
                             : ckpt__hash_keyed(L, &key->i, sizeof(key->i));
    size_t i = (size_t)h & mask;
    while (index[i] && !same_key(&L->objs[index[i] - 1].key, key))
        i = (i + 1) & mask;
    return i;
}

static tar_obj *find_obj(tar_load *L, const okey *key)
{
    if (!L->index_cap)
        return NULL;
    uint32_t k = L->index[slot_of(L, L->index, L->index_cap, key)];
    return k ? &L->objs[k - 1] : NULL;
}

/* A key as text for messages. */
static const char *key_text(const okey *key, char *buf, size_t cap)
{
    char q[64];
    if (!key->is_str)
        snprintf(buf, cap, "%lld", (long long)key->i);
    else
        snprintf(buf, cap, "'%s'", ckpt__quote(q, sizeof(q), key->s, key->n, true));
    return buf;
}

static ckpt_status add_obj(tar_load *L, const char *record, uint64_t offset, const okey *key,
                           ckpt_value *v, ckpt_error *err)
{
    char kb[128];
    if (find_obj(L, key))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "key %s is given twice (torch would keep the last)",
                          key_text(key, kb, sizeof(kb)));
    if (L->count == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 16;
        tar_obj *p = realloc(L->objs, cap * sizeof(*p));
        if (!p)
            return ckpt__nomem(err);
        L->objs = p;
        L->cap = cap;
    }
    if ((L->count + 1) * 2 > L->index_cap) {
        size_t cap = L->index_cap ? L->index_cap * 2 : 64;
        uint32_t *index = calloc(cap, sizeof(*index));
        if (!index)
            return ckpt__nomem(err);
        for (size_t i = 0; i < L->count; i++)
            index[slot_of(L, index, cap, &L->objs[i].key)] = (uint32_t)(i + 1);
        free(L->index);
        L->index = index;
        L->index_cap = cap;
    }
    L->objs[L->count++] = (tar_obj){*key, v};
    L->index[slot_of(L, L->index, L->index_cap, key)] = (uint32_t)L->count;
    return CKPT_OK;
}

/* A member's bytes as a cursor. */
typedef struct cursor {
    const uint8_t *p;
    uint64_t size, pos;
    uint64_t file_base;          /* file offset of p */
    const char *record;
} cursor;

static ckpt_status next_pickle(tar_load *L, cursor *c, ckpt__persistent_load_fn pl,
                               ckpt_value **out, ckpt_error *err)
{
    ckpt_file *f = L->f;
    if (c->pos >= c->size)
        return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, c->pos,
                          "the member ends before the next pickle (torch fails with EOFError)");
    uint64_t avail = c->size - c->pos;
    ckpt__pickle_ctx ctx = {
        .limits = &f->opts.limits, .arena = &f->arena, .record = c->record,
        .persistent_load = pl, .user = L, .protocol = -1,
        .flags = CKPT__PICKLE_NUMPY |
                 ((f->opts.flags & CKPT_OPEN_PERMISSIVE) ? CKPT__PICKLE_INERT : 0u),
        .file = f,
    };
    size_t used = 0;
    ckpt_status st = ckpt__unpickle(&ctx, c->p + c->pos, avail > SIZE_MAX ? SIZE_MAX : (size_t)avail,
                                    &used, out, err);
    if (st != CKPT_OK) {
        ckpt__error_set_file_base(err, c->file_base + c->pos);
        return st;
    }
    if (pl)
        f->pickle_protocol = ctx.protocol; /* the object's */
    c->pos += used;
    return CKPT_OK;
}

static ckpt_status read_i64(cursor *c, int64_t *out, const char *what, ckpt_error *err)
{
    if (c->size - c->pos < 8)
        return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, c->pos,
                          "the member ends inside %s (torch fails)", what);
    *out = (int64_t)ckpt__le64(c->p + c->pos);
    c->pos += 8;
    return CKPT_OK;
}

static bool int_of(const ckpt_value *v, int64_t *out)
{
    if (!v || v->kind != CKPT_KIND_INT)
        return false;
    *out = v->u.i;
    return true;
}

/* A key of deserialized_objects: an int or a str. */
static bool obj_key(const ckpt_value *v, okey *out)
{
    if (!v || (v->kind != CKPT_KIND_INT && v->kind != CKPT_KIND_STR))
        return false;
    *out = v->kind == CKPT_KIND_INT ? (okey){false, v->u.i, NULL, 0}
                                    : (okey){true, 0, v->u.s.ptr, v->u.s.len};
    return true;
}

static ckpt_status count_of(const ckpt_value *v, cursor *c, const char *what, uint64_t max,
                            uint64_t *out, ckpt_error *err)
{
    if (!v || v->kind != CKPT_KIND_INT || v->u.i < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, 0,
                          "the %s count must be an int >= 0", what);
    if ((uint64_t)v->u.i > max)
        return ckpt__fail(err, CKPT_ERR_LIMIT, c->record, 0,
                          "%lld %s (limit %llu)", (long long)v->u.i, what, (unsigned long long)max);
    *out = (uint64_t)v->u.i;
    return CKPT_OK;
}

static ckpt_status read_storages(tar_load *L, cursor *c, ckpt_error *err)
{
    ckpt_file *f = L->f;
    ckpt_value *v;
    uint64_t n = 0;
    char kb[128], kb2[128];
    CKPT_RETURN_IF_ERROR(next_pickle(L, c, NULL, &v, err));
    CKPT_RETURN_IF_ERROR(count_of(v, c, "storages", c->size, &n, err));
    for (uint64_t i = 0; i < n; i++) {
        uint64_t at = c->pos;
        CKPT_RETURN_IF_ERROR(next_pickle(L, c, NULL, &v, err));
        okey key;
        bool untyped = false;
        ckpt_dtype dtype = CKPT_DTYPE_INVALID;
        if (!v || v->kind != CKPT_KIND_TUPLE || v->u.seq.len != 3 ||
            !obj_key(v->u.seq.items[0], &key) || !v->u.seq.items[1] ||
            v->u.seq.items[1]->kind != CKPT_KIND_STR ||
            (dtype = ckpt__storage_type_dtype(v->u.seq.items[2], &untyped)) == CKPT_DTYPE_INVALID ||
            untyped)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "storage %llu is not (key, location, storage_type)",
                              (unsigned long long)i);
        int64_t numel = 0;
        CKPT_RETURN_IF_ERROR(read_i64(c, &numel, "a storage's size", err));
        size_t esize = ckpt__storage_elem_size(dtype);
        uint64_t nbytes;
        if (numel < 0 || !ckpt__mul_u64((uint64_t)numel, esize, &nbytes) ||
            nbytes > c->size - c->pos)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, c->pos - 8,
                              "storage %s of %lld elements runs past the end of the member",
                              key_text(&key, kb, sizeof(kb)), (long long)numel);
        ckpt__storage *s = ckpt__arena_alloc(&f->arena, sizeof(*s));
        char name[140];
        int len = snprintf(name, sizeof(name), "storage %s", key_text(&key, kb, sizeof(kb)));
        if (!s || !(s->record = ckpt__arena_strdup(&f->arena, name, (size_t)len)))
            return ckpt__nomem(err);
        s->key = s->record + 8;
        s->location = v->u.seq.items[1]->u.s.ptr;
        s->dtype = dtype;
        s->nbytes = nbytes;
        s->record_index = -1;
        s->file_offset = c->file_base + c->pos; /* in place; torch never swaps */
        c->pos += nbytes;
        CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, s, err));
        ckpt_value *sv;
        CKPT_RETURN_IF_ERROR(ckpt__storage_value(&f->arena, s, c->record, at, &sv, err));
        CKPT_RETURN_IF_ERROR(add_obj(L, c->record, at, &key, sv, err));
    }
    /* views: [(key, root_key, offset, numel)] in elements of the root */
    uint64_t at = c->pos;
    CKPT_RETURN_IF_ERROR(next_pickle(L, c, NULL, &v, err));
    if (!v || v->kind != CKPT_KIND_LIST)
        return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at, "the storage views are not a list");
    for (size_t i = 0; i < v->u.seq.len; i++) {
        const ckpt_value *w = v->u.seq.items[i];
        okey key, root_key;
        int64_t off, numel;
        if (!w || w->kind != CKPT_KIND_TUPLE || w->u.seq.len != 4 ||
            !obj_key(w->u.seq.items[0], &key) || !obj_key(w->u.seq.items[1], &root_key) ||
            !int_of(w->u.seq.items[2], &off) || !int_of(w->u.seq.items[3], &numel) || off < 0 ||
            numel < 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "storage view %zu is not (key, root_key, offset, numel)", i);
        tar_obj *r = find_obj(L, &root_key);
        if (!r || r->value->kind != CKPT__KIND_STORAGE || r->value->u.storage->base)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "storage view %s names no root storage %s",
                              key_text(&key, kb, sizeof(kb)), key_text(&root_key, kb2, sizeof(kb2)));
        ckpt__storage *root = r->value->u.storage;
        size_t esize = ckpt__storage_elem_size(root->dtype);
        uint64_t voff, vsize, vend;
        if (!ckpt__mul_u64((uint64_t)off, esize, &voff) ||
            !ckpt__mul_u64((uint64_t)numel, esize, &vsize) || !ckpt__add_u64(voff, vsize, &vend) ||
            vend > root->nbytes)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "storage view %s lies outside storage %s",
                              key_text(&key, kb, sizeof(kb)), key_text(&root_key, kb2, sizeof(kb2)));
        ckpt__storage *s = ckpt__arena_alloc(&f->arena, sizeof(*s));
        if (!s)
            return ckpt__nomem(err);
        *s = *root;
        char name[140];
        int len = snprintf(name, sizeof(name), "storage %s", key_text(&key, kb, sizeof(kb)));
        if (!(s->record = ckpt__arena_strdup(&f->arena, name, (size_t)len)))
            return ckpt__nomem(err);
        s->key = s->record + 8;
        s->base = root;
        s->base_offset = voff;
        s->nbytes = vsize;
        s->file_offset = CKPT_NO_OFFSET; /* resolved through the root */
        CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, s, err));
        ckpt_value *sv;
        CKPT_RETURN_IF_ERROR(ckpt__storage_value(&f->arena, s, c->record, at, &sv, err));
        CKPT_RETURN_IF_ERROR(add_obj(L, c->record, at, &key, sv, err));
    }
    return CKPT_OK;
}

static ckpt_status read_tensors(tar_load *L, cursor *c, ckpt_error *err)
{
    ckpt_file *f = L->f;
    ckpt_value *v;
    uint64_t n = 0;
    CKPT_RETURN_IF_ERROR(next_pickle(L, c, NULL, &v, err));
    CKPT_RETURN_IF_ERROR(count_of(v, c, "tensors", c->size, &n, err));
    char kb[128], kb2[128];
    for (uint64_t i = 0; i < n; i++) {
        uint64_t at = c->pos;
        CKPT_RETURN_IF_ERROR(next_pickle(L, c, NULL, &v, err));
        okey key, skey;
        if (!v || v->kind != CKPT_KIND_TUPLE || v->u.seq.len != 3 ||
            !obj_key(v->u.seq.items[0], &key) || !obj_key(v->u.seq.items[1], &skey))
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "tensor %llu is not (key, storage_key, tensor_type)",
                              (unsigned long long)i);
        tar_obj *so = find_obj(L, &skey);
        if (!so || so->value->kind != CKPT__KIND_STORAGE)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, at,
                              "tensor %s names no storage %s (torch fails with KeyError)",
                              key_text(&key, kb, sizeof(kb)), key_text(&skey, kb2, sizeof(kb2)));
        if (c->size - c->pos < 8)
            return ckpt__fail(err, CKPT_ERR_FORMAT, c->record, c->pos,
                              "the member ends inside tensor %s's metadata",
                              key_text(&key, kb, sizeof(kb)));
        int32_t ndim = (int32_t)ckpt__le32(c->p + c->pos);
        c->pos += 8;
        if (ndim < 0 || (uint64_t)ndim > f->opts.limits.max_ndim)
            return ckpt__fail(err, ndim < 0 ? CKPT_ERR_FORMAT : CKPT_ERR_LIMIT, c->record, c->pos - 8,
                              "tensor %s has %d dimensions (max_ndim %llu)",
                              key_text(&key, kb, sizeof(kb)), (int)ndim, (unsigned long long)f->opts.limits.max_ndim);
        ckpt_tensor *t = ckpt__arena_alloc(&f->arena, sizeof(*t));
        int64_t *dims = ckpt__arena_alloc(&f->arena, (size_t)(2 * ndim + 1) * sizeof(int64_t));
        if (!t || !dims)
            return ckpt__nomem(err);
        for (int32_t k = 0; k < 2 * ndim + 1; k++)
            CKPT_RETURN_IF_ERROR(read_i64(c, &dims[k], "a tensor's metadata", err));
        ckpt__storage *s = so->value->u.storage;
        t->dtype = s->dtype;
        t->ndim = (uint32_t)ndim;
        t->shape = dims;
        t->stride = dims + ndim;
        t->storage_offset = dims[2 * ndim];
        t->storage = s;
        CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, c->record, at, err));
        ckpt_value *tv = ckpt__value_new(&f->arena, CKPT_KIND_TENSOR);
        if (!tv)
            return ckpt__nomem(err);
        tv->u.tensor.t = t;
        CKPT_RETURN_IF_ERROR(add_obj(L, c->record, at, &key, tv, err));
    }
    return CKPT_OK;
}

/* persistent_load of the "pickle" member: deserialized_objects[int(saved_id)] */
static ckpt_status tar_persistent_load(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                       uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    tar_load *L = user;
    if (pid && pid->kind == CKPT_KIND_TUPLE)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, ctx->record, offset,
                          "whole pickled modules with source code are not supported");
    okey key = {false, 0, NULL, 0};
    if (!int_of(pid, &key.i)) {
        /* str(key), as torch wrote it: decimal digits (an optional '-') */
        bool ok = pid && pid->kind == CKPT_KIND_STR && pid->u.s.len > 0 && pid->u.s.len <= 19;
        const char *s = ok ? pid->u.s.ptr : "";
        size_t n = ok ? pid->u.s.len : 0, i = ok && s[0] == '-' ? 1 : 0;
        uint64_t u = 0;
        ok = ok && i < n;
        for (; ok && i < n; i++) {
            ok = s[i] >= '0' && s[i] <= '9';
            u = u * 10 + (uint64_t)(s[i] - '0');
        }
        if (!ok || u > (uint64_t)INT64_MAX)
            return ckpt__fail(err, CKPT_ERR_FORMAT, ctx->record, offset,
                              "a persistent id must be a decimal key (torch calls int() on it)");
        key.i = s[0] == '-' ? -(int64_t)u : (int64_t)u;
    }
    tar_obj *o = find_obj(L, &key);
    if (!o)
        return ckpt__fail(err, CKPT_ERR_FORMAT, ctx->record, offset,
                          "persistent id %lld names no storage or tensor (torch fails with "
                          "KeyError)",
                          (long long)key.i);
    *out = o->value;
    return CKPT_OK;
}

/* The member storages/tensors/pickle (i) as a cursor. */
static ckpt_status member(tar_load *L, int i, cursor *c, ckpt_error *err)
{
    const ckpt__tar_member *m = &L->copies[i];
    if (!L->found[i])
        return ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "a pre-0.4 tar archive without a '%s' member: not a torch.save file "
                          "(torch fails with KeyError)",
                          MEMBER_NAMES[i]);
    if (L->bad_type[i])
        return ckpt__fail(err, CKPT_ERR_FORMAT, MEMBER_NAMES[i], m->header_offset,
                          "member is not a regular file (type '%c'): extracting it would follow "
                          "a link",
                          m->type ? m->type : '0');
    uint64_t end;
    if (m->size_big || !ckpt__add_u64(m->data_offset, m->size, &end) || end > L->f->map_size)
        return ckpt__fail(err, CKPT_ERR_FORMAT, MEMBER_NAMES[i], m->header_offset,
                          "member data runs past the end of the file");
    *c = (cursor){L->f->map + m->data_offset, m->size, 0, m->data_offset, MEMBER_NAMES[i]};
    return CKPT_OK;
}

ckpt_status ckpt__open_torch_tar(ckpt_file *f, ckpt_error *err)
{
    tar_load L = {.f = f};
    ckpt__tar_end end;
    ckpt_status st =
        ckpt__tar_walk(f->map, f->map_size, f->opts.limits.max_zip_entries, collect, &L, &end);
    if (st != CKPT_OK)
        return st;
    if (end.kind != CKPT__TAR_END)
        return ckpt__fail(err, end.kind == CKPT__TAR_LIMIT ? CKPT_ERR_LIMIT : CKPT_ERR_UNSUPPORTED,
                          "", end.offset,
                          "torch.load reads this file as a pre-0.4 tar archive, which ckpt does "
                          "not follow here: %s",
                          end.kind == CKPT__TAR_FALLBACK
                              ? "tarfile fails on it, and torch then reads the file as a pickle "
                                "from byte 0"
                              : end.why);
    /* torch's order: storages, tensors, then the object, each member
     * looked up when it is needed */
    cursor c;
    for (int i = 0; i < 3; i++) {
        if ((st = member(&L, i, &c, err)) != CKPT_OK)
            goto out;
        st = i == 0   ? read_storages(&L, &c, err)
             : i == 1 ? read_tensors(&L, &c, err)
                      : next_pickle(&L, &c, tar_persistent_load, &f->root, err);
        if (st != CKPT_OK)
            goto out;
    }
out:
    free(L.objs);
    free(L.index);
    return st;
}
