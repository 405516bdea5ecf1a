/*
 * sharded.c - sharded checkpoints: an index JSON ({"metadata": {...},
 * "weight_map": {tensor name: shard file}}) over safetensors or torch shards,
 * as model.safetensors.index.json and pytorch_model.bin.index.json.
 */
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_RECORD "index"

bool ckpt__sharded_detect(const uint8_t *p, uint64_t size)
{
    uint64_t i = 0;
    while (i < size && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    if (i >= size || p[i] != '{')
        return false;
    /* cheap look for the key; the JSON parser decides */
    uint64_t scan = size < 1 << 20 ? size : 1 << 20;
    for (uint64_t k = i; k + 12 <= scan; k++) {
        if (memcmp(p + k, "\"weight_map\"", 12) == 0)
            return true;
    }
    return false;
}

/* A shard name must stay inside the index's directory. */
static bool shard_name_ok(const char *s)
{
    if (!*s || s[0] == '/' || strchr(s, '\\'))
        return false;
    for (const char *p = s; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 0 || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += n + (slash ? 1 : 0);
        if (!slash)
            break;
    }
    return true;
}

static ckpt_status metadata_value(ckpt_file *f, const json_t *v, ckpt_value **out)
{
    ckpt__arena *a = &f->arena;
    if (json_is_string(v))
        *out = ckpt__value_str(a, CKPT_KIND_STR, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v)) {
        *out = ckpt__value_new(a, CKPT_KIND_INT);
        if (*out)
            (*out)->u.i = json_integer_value(v);
    } else if (json_is_real(v)) {
        *out = ckpt__value_new(a, CKPT_KIND_FLOAT);
        if (*out)
            (*out)->u.f = json_real_value(v);
    } else if (json_is_boolean(v)) {
        *out = ckpt__value_new(a, CKPT_KIND_BOOL);
        if (*out)
            (*out)->u.b = json_is_true(v);
    } else {
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        *out = text ? ckpt__value_str(a, CKPT_KIND_STR, text, strlen(text)) : NULL;
        free(text);
    }
    return *out ? CKPT_OK : CKPT_ERR_NOMEM;
}

/*
 * Shards already opened, found by the name the index gives and by the file's
 * identity (st_dev, st_ino): a shard named by many tensors, or under many
 * spellings ("a", "./a", a link to a), is opened and read once.
 */
typedef struct shard_slot {
    const char *name;             /* by name: the index's string; NULL: free */
    uint64_t dev, ino;            /* by identity */
    size_t shard;                 /* index in f->shards, +1 (0: free) */
} shard_slot;

typedef struct shard_table {
    shard_slot *slots;
    size_t cap, count;
} shard_table;

static uint64_t id_hash(const ckpt_file *f, uint64_t dev, uint64_t ino)
{
    uint64_t k[2] = {dev, ino};
    return ckpt__hash_keyed(f, k, sizeof(k));
}

/* The slot of name (by_name) or of dev/ino: the one holding it or a free
 * one; NULL while the table is empty. */
static shard_slot *table_find(const ckpt_file *f, const shard_table *t, bool by_name,
                              const char *name, uint64_t dev, uint64_t ino)
{
    if (!t->cap)
        return NULL;
    size_t mask = t->cap - 1;
    uint64_t h = by_name ? ckpt__hash_keyed(f, name, strlen(name)) : id_hash(f, dev, ino);
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        shard_slot *sl = &t->slots[i];
        if (!sl->shard)
            return sl;
        if (by_name ? strcmp(sl->name, name) == 0 : (sl->dev == dev && sl->ino == ino))
            return sl;
    }
}

/* Adds an entry (known absent); false when out of memory. */
static bool table_add(const ckpt_file *f, shard_table *t, bool by_name, const char *name,
                      uint64_t dev, uint64_t ino, size_t shard)
{
    if ((t->count + 1) * 2 > t->cap) {
        shard_table bigger = {calloc(t->cap ? t->cap * 2 : 16, sizeof(shard_slot)),
                              t->cap ? t->cap * 2 : 16, 0};
        if (!bigger.slots)
            return false;
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i].shard)
                *table_find(f, &bigger, by_name, t->slots[i].name, t->slots[i].dev,
                            t->slots[i].ino) = t->slots[i];
        bigger.count = t->count;
        free(t->slots);
        *t = bigger;
    }
    shard_slot *sl = table_find(f, t, by_name, name, dev, ino);
    sl->name = name;
    sl->dev = dev;
    sl->ino = ino;
    sl->shard = shard + 1;
    t->count++;
    return true;
}

/*
 * The shard file sname (path: beside the index): opened once per file. A
 * shard is a checkpoint file, never the index itself nor another index
 * (ckpt__open_fd refuses one from its content, whatever its name: a link,
 * "./index.json", a second hard link): an index naming itself would
 * otherwise recurse until the stack runs out.
 */
static ckpt_status shard_open(ckpt_file *f, const char *path, const char *sname,
                              shard_table *by_name, shard_table *by_id, size_t *si,
                              ckpt_error *err)
{
    shard_slot *sl = table_find(f, by_name, true, sname, 0, 0);
    if (sl && sl->shard) {
        *si = sl->shard - 1;
        return CKPT_OK;
    }
    ckpt_status st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ckpt__fail(err, CKPT_ERR_IO, sname, CKPT_NO_OFFSET, "cannot open: %s",
                          strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ckpt__fail(err, CKPT_ERR_IO, sname, CKPT_NO_OFFSET, "cannot stat: %s",
                        strerror(errno));
        close(fd);
        return st;
    }
    uint64_t dev = (uint64_t)sb.st_dev, ino = (uint64_t)sb.st_ino;
    if (dev == f->dev && ino == f->ino) {
        close(fd);
        return ckpt__fail(err, CKPT_ERR_FORMAT, sname, CKPT_NO_OFFSET,
                          "the shard is the index itself (a shard must be a checkpoint file)");
    }
    sl = table_find(f, by_id, false, NULL, dev, ino);
    if (sl && sl->shard) {
        close(fd); /* another name of a shard already open */
        *si = sl->shard - 1;
    } else {
        ckpt_file *sf = NULL;
        st = ckpt__open_fd(fd, &sb, path, &f->opts, true, &sf, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, sname);
            return st;
        }
        /* An index of many shards holds no descriptor per shard (they
         * would run out): shard bytes are read through the maps. */
        if (sf->has_fd) {
            close(sf->fd);
            sf->has_fd = false;
        }
        ckpt_record_info *r = &f->records[f->shard_count];
        r->name = ckpt__arena_strdup(&f->arena, sname, strlen(sname));
        if (!r->name) {
            ckpt_close(sf);
            return ckpt__nomem(err);
        }
        r->stored_size = r->size = sf->map_size;
        f->shards[f->shard_count] = sf;
        *si = f->shard_count++;
        f->record_count++;
        if (!table_add(f, by_id, false, NULL, dev, ino, *si))
            return ckpt__nomem(err);
    }
    if (!table_add(f, by_name, true, sname, 0, 0, *si))
        return ckpt__nomem(err);
    return CKPT_OK;
}

ckpt_status ckpt__open_sharded(ckpt_file *f, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    json_t *root = NULL;
    char *path = NULL;
    size_t path_cap = 0;
    shard_table by_name = {0}, by_id = {0};
    if (!f->path)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, INDEX_RECORD, CKPT_NO_OFFSET,
                          "a sharded index must be opened from its file (its shards sit beside it)");
    if (f->map_size > f->opts.limits.max_header_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, INDEX_RECORD, 0, "index is %llu bytes (limit %llu)",
                          (unsigned long long)f->map_size,
                          (unsigned long long)f->opts.limits.max_header_bytes);
    json_error_t jerr;
    root = json_loadb((const char *)f->map, (size_t)f->map_size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD,
                          jerr.position >= 0 ? (uint64_t)jerr.position : CKPT_NO_OFFSET,
                          "invalid JSON: %s", jerr.text);
    const json_t *map = json_object_get(root, "weight_map");
    const json_t *meta = json_object_get(root, "metadata");
    if (!json_is_object(map)) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD, CKPT_NO_OFFSET,
                        "\"weight_map\" is not an object of tensor name -> shard file");
        goto out;
    }
    if (meta && json_is_object(meta)) {
        f->metadata = ckpt__value_new(&f->arena, CKPT_KIND_DICT);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)(uintptr_t)meta, k, v) {
            ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_KIND_STR, k, strlen(k)), *vv = NULL;
            if (!f->metadata || !kv || metadata_value(f, v, &vv) != CKPT_OK ||
                !ckpt__dict_set(&f->arena, f->metadata, kv, vv)) {
                st = ckpt__nomem(err);
                goto out;
            }
        }
    }

    /* directory of the index */
    const char *slash = strrchr(f->path, '/');
    size_t dir_len = slash ? (size_t)(slash - f->path) + 1 : 0;
    size_t n = json_object_size(map);
    f->shards = calloc(n ? n : 1, sizeof(*f->shards));
    f->records = calloc(n ? n : 1, sizeof(*f->records));
    f->root = ckpt__value_new(&f->arena, CKPT_KIND_DICT);
    if (!f->shards || !f->records || !f->root) {
        st = ckpt__nomem(err);
        goto out;
    }
    const char *name;
    json_t *shard;
    json_object_foreach((json_t *)(uintptr_t)map, name, shard) {
        if (!json_is_string(shard) || !shard_name_ok(json_string_value(shard))) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD, CKPT_NO_OFFSET,
                            "shard of '%s' is not a relative file name inside the index's directory",
                            name);
            goto out;
        }
        const char *sname = json_string_value(shard);
        size_t need = dir_len + strlen(sname) + 1;
        if (need > path_cap) {
            char *p = realloc(path, need);
            if (!p) {
                st = ckpt__nomem(err);
                goto out;
            }
            path = p;
            path_cap = need;
        }
        memcpy(path, f->path, dir_len);
        strcpy(path + dir_len, sname);
        size_t si = 0;
        if ((st = shard_open(f, path, sname, &by_name, &by_id, &si, err)) != CKPT_OK)
            goto out;
        ckpt_file *sf = f->shards[si];
        const ckpt_tensor *t = ckpt_file_find_tensor(sf, name);
        if (!t) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD, CKPT_NO_OFFSET,
                            "tensor '%s' is not in its shard '%s'", name, sname);
            goto out;
        }
        ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_KIND_STR, name, strlen(name));
        ckpt_value *tv = ckpt__value_new(&f->arena, CKPT_KIND_TENSOR);
        if (!kv || !tv) {
            st = ckpt__nomem(err);
            goto out;
        }
        tv->u.tensor.t = (ckpt_tensor *)(uintptr_t)t;
        if (!ckpt__dict_set(&f->arena, f->root, kv, tv)) {
            st = ckpt__nomem(err);
            goto out;
        }
    }
out:
    free(by_name.slots);
    free(by_id.slots);
    free(path);
    json_decref(root);
    return st;
}
