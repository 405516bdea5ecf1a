/*
 * storage.c - torch storages as pickles name them: the persistent id
 * ('storage', storage_type, key, location, numel[, view]) and a table of
 * storages by key, so that views of one storage share it.
 */
#include "internal.h"
#include "pickle.h"

#include <stdlib.h>

static bool is_str(const ckpt_value *v) { return v && v->kind == CKPT_KIND_STR; }

ckpt_status ckpt__storage_pid_parse(const ckpt_value *pid, size_t items, const char *record,
                                    uint64_t offset, ckpt__storage_pid *out, ckpt_error *err)
{
    memset(out, 0, sizeof(*out));
    if (pid && pid->kind == CKPT_KIND_STR)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, offset,
                          "persistent id is text (PERSID of pickle protocol 0): torch.load "
                          "cannot read such a file either");
    if (!pid || pid->kind != CKPT_KIND_TUPLE || pid->u.seq.len < 1)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "persistent id is not a tuple");
    ckpt_value **it = pid->u.seq.items;
    if (!is_str(it[0]) || strcmp(it[0]->u.s.ptr, "storage") != 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, record, offset,
                          "persistent id of type '%s' (only 'storage' is known)",
                          is_str(it[0]) ? it[0]->u.s.ptr : ckpt_kind_name(ckpt_value_kind(it[0])));
    if (pid->u.seq.len != items)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage persistent id has %zu items, expected %zu", pid->u.seq.len,
                          items);
    out->dtype = ckpt__storage_type_dtype(it[1], &out->untyped);
    if (out->dtype == CKPT_DTYPE_INVALID)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage type is not a torch storage class");
    /* keys name records ("data/<key>"): no path tricks */
    if (!is_str(it[2]) || it[2]->u.s.len == 0 || it[2]->u.s.len > 64 ||
        strlen(it[2]->u.s.ptr) != it[2]->u.s.len || strchr(it[2]->u.s.ptr, '/') ||
        strstr(it[2]->u.s.ptr, ".."))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage key is not a plain name of 1 to 64 bytes");
    if (!is_str(it[3]))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "storage location is not a string");
    if (it[4]->kind != CKPT_KIND_INT || it[4]->u.i < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset,
                          "storage size is not a non-negative integer");
    out->numel = (uint64_t)it[4]->u.i;
    if (!ckpt__mul_u64(out->numel, ckpt__storage_elem_size(out->dtype), &out->nbytes))
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, offset, "storage size overflows");
    out->key = it[2]->u.s.ptr;
    out->key_len = it[2]->u.s.len;
    out->location = it[3]->u.s.ptr;
    out->view = items > 5 ? it[5] : NULL;
    return CKPT_OK;
}

static ckpt__storage **table_slot(const ckpt__storage_table *t, const char *key, size_t len)
{
    size_t mask = t->cap - 1;
    for (size_t i = ckpt__hash_keyed(t->slots, key, len) & mask;; i = (i + 1) & mask) {
        ckpt__storage *s = t->slots[i];
        if (!s || (strlen(s->key) == len && memcmp(s->key, key, len) == 0))
            return &t->slots[i];
    }
}

ckpt__storage *ckpt__storage_table_find(const ckpt__storage_table *t, const char *key, size_t len)
{
    return t->cap ? *table_slot(t, key, len) : NULL;
}

bool ckpt__storage_table_add(ckpt__storage_table *t, ckpt__storage *s)
{
    if (!t->cap || (t->count + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        ckpt__storage_table n = {calloc(cap, sizeof(*n.slots)), cap, t->count};
        if (!n.slots)
            return false;
        for (size_t i = 0; i < t->cap; i++) {
            if (t->slots[i])
                *table_slot(&n, t->slots[i]->key, strlen(t->slots[i]->key)) = t->slots[i];
        }
        free(t->slots);
        *t = n;
    }
    *table_slot(t, s->key, strlen(s->key)) = s;
    t->count++;
    return true;
}

void ckpt__storage_table_free(ckpt__storage_table *t)
{
    free(t->slots);
    memset(t, 0, sizeof(*t));
}

ckpt_status ckpt__storage_value(ckpt__arena *a, ckpt__storage *s, const char *record,
                                uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    ckpt_value *v = ckpt__value_new(a, CKPT__KIND_STORAGE);
    if (!v)
        return ckpt__fail(err, ckpt__arena_over_limit(a, sizeof(*v)) ? CKPT_ERR_LIMIT
                                                                     : CKPT_ERR_NOMEM,
                          record, offset, "no memory for a storage value");
    v->u.storage = s;
    *out = v;
    return CKPT_OK;
}
