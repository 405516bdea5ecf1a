/*
 * storage.c - torch storages: a table of storages by key, so that views of
 * one storage share it (their persistent ids are read in
 * pickle/persistent.c), and resolution: a storage's bytes in the map of its
 * file, or a copy.
 */
#include "core.h"

#include <stdlib.h>

/* The slots are followed, in the same allocation, by the hash of each
 * slot's key: a probe compares hashes and only a match reads the storage. */
static uint64_t *table_hashes(const ckpt__storage_table *t)
{
    return (uint64_t *)(void *)(t->slots + t->cap);
}

static size_t table_slot(const ckpt__storage_table *t, const char *key, size_t len, uint64_t h)
{
    size_t mask = t->cap - 1;
    const uint64_t *hashes = table_hashes(t);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const ckpt__storage *s = t->slots[i];
        if (!s || (hashes[i] == h && strncmp(s->key, key, len) == 0 && s->key[len] == '\0'))
            return i;
    }
}

static uint64_t table_hash(const ckpt__storage_table *t, const char *key, size_t len)
{
    return ckpt__hash_keyed((const void *)t->seed, key, len);
}

ckpt__storage *ckpt__storage_table_find(const ckpt__storage_table *t, const char *key, size_t len)
{
    if (!t->cap)
        return NULL;
    return t->slots[table_slot(t, key, len, table_hash(t, key, len))];
}

/* Puts s, whose key hashes to h, in its empty slot. */
static void table_put(ckpt__storage_table *t, ckpt__storage *s, size_t len, uint64_t h)
{
    size_t i = table_slot(t, s->key, len, h);
    t->slots[i] = s;
    table_hashes(t)[i] = h;
}

bool ckpt__storage_table_add(ckpt__storage_table *t, ckpt__storage *s)
{
    if (!t->cap || (t->count + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        if (cap > SIZE_MAX / (sizeof(*t->slots) + sizeof(uint64_t)))
            return false;
        ckpt__storage_table n = {calloc(cap, sizeof(*n.slots) + sizeof(uint64_t)), cap, t->count,
                                 t->seed};
        if (!n.slots)
            return false;
        if (!n.seed)
            n.seed = (uintptr_t)n.slots;
        /* the seed stays: a rehash moves the hashes kept, reading no key */
        const uint64_t *old = t->cap ? table_hashes(t) : NULL;
        uint64_t *hashes = table_hashes(&n);
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->slots[i])
                continue;
            size_t j = old[i] & (cap - 1);
            while (n.slots[j])
                j = (j + 1) & (cap - 1);
            n.slots[j] = t->slots[i];
            hashes[j] = old[i];
        }
        free(t->slots);
        *t = n;
    }
    size_t len = strlen(s->key);
    table_put(t, s, len, table_hash(t, s->key, len));
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

/* ---- resolution --------------------------------------------------------- */

static size_t storage_alignment_needed(const ckpt__storage *s)
{
    size_t a = ckpt_dtype_size(s->dtype);
    if (a == 0 || a == 1)
        a = 1;
    if (s->untyped)
        a = 16; /* may hold any dtype */
    return a > 16 ? 16 : a;
}

ckpt_status ckpt__storage_resolve(ckpt_file *f, ckpt__storage *s, ckpt_error *err)
{
    if (s->base)
        s = s->base;
    if (s->owner)
        f = s->owner; /* a shard's storage */
    if (s->resolved)
        return CKPT_OK;
    if (s->chunked)
        return ckpt__chunked_resolve(s, err);
    const uint8_t *src = NULL;
    uint8_t *owned = NULL;
    if (s->record_index >= 0) {
        const ckpt__zip_entry *e = &f->zip.entries[s->record_index];
        uint64_t total;
        if (e->method != 0 &&
            (!ckpt__add_u64(f->inflated_total, e->size, &total) ||
             total > f->opts.limits.max_total_inflated_bytes))
            return ckpt__fail(err, CKPT_ERR_LIMIT, s->record, CKPT_NO_OFFSET,
                              "inflating this record would hold %llu bytes of deflated records "
                              "at once (limit max_total_inflated_bytes %llu)",
                              (unsigned long long)(f->inflated_total + e->size),
                              (unsigned long long)f->opts.limits.max_total_inflated_bytes);
        CKPT_RETURN_IF_ERROR(ckpt__zip_read(&f->zip, (size_t)s->record_index, &f->opts.limits,
                                            &src, &owned, err));
        if (owned)
            f->inflated_total += e->size;
    } else if (s->file_offset != CKPT_NO_OFFSET) {
        uint64_t end;
        if (!ckpt__add_u64(s->file_offset, s->nbytes, &end) || end > f->map_size)
            return ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                              "storage bytes run past the end of the file");
        src = f->map + s->file_offset;
    } else if (s->nbytes != 0) {
        return ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                          "storage '%s' has no data", s->key ? s->key : "?");
    }
    size_t align = storage_alignment_needed(s);
    bool aligned = ((uintptr_t)src % align) == 0;
    if (!owned && (s->big_endian || !aligned) && s->nbytes) {
        void *copy = NULL;
        if (posix_memalign(&copy, 64, (size_t)s->nbytes) != 0)
            return ckpt__fail(err, CKPT_ERR_NOMEM, s->record, CKPT_NO_OFFSET,
                              "out of memory copying %llu bytes", (unsigned long long)s->nbytes);
        memcpy(copy, src, (size_t)s->nbytes);
        owned = copy;
    }
    if (owned && s->big_endian)
        ckpt__byteswap(owned, s->nbytes / ckpt__storage_elem_size(s->dtype), s->dtype);
    s->owned = owned;
    s->data = owned ? owned : src;
    s->resolved = true;
    return CKPT_OK;
}
