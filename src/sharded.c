/*
 * sharded.c - sharded checkpoints: an index JSON ({"metadata": {...},
 * "weight_map": {tensor name: shard file}}) over safetensors or torch shards,
 * as model.safetensors.index.json and pytorch_model.bin.index.json.
 */
#include "internal.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
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
        *out = ckpt__value_str(a, CKPT_STR, json_string_value(v), json_string_length(v));
    else if (json_is_integer(v)) {
        *out = ckpt__value_new(a, CKPT_INT);
        if (*out)
            (*out)->u.i = json_integer_value(v);
    } else if (json_is_real(v)) {
        *out = ckpt__value_new(a, CKPT_FLOAT);
        if (*out)
            (*out)->u.f = json_real_value(v);
    } else if (json_is_boolean(v)) {
        *out = ckpt__value_new(a, CKPT_BOOLEAN);
        if (*out)
            (*out)->u.b = json_is_true(v);
    } else {
        char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        *out = text ? ckpt__value_str(a, CKPT_STR, text, strlen(text)) : NULL;
        free(text);
    }
    return *out ? CKPT_OK : CKPT_ERR_NOMEM;
}

ckpt_status ckpt__open_sharded(ckpt_file *f, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    json_t *root = NULL;
    char *path = NULL;
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
        f->metadata = ckpt__value_new(&f->arena, CKPT_DICT);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)meta, k, v) {
            ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_STR, k, strlen(k)), *vv = NULL;
            if (!f->metadata || !kv || metadata_value(f, v, &vv) != CKPT_OK ||
                !ckpt__dict_set(&f->arena, f->metadata, kv, vv)) {
                st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
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
    f->root = ckpt__value_new(&f->arena, CKPT_DICT);
    if (!f->shards || !f->records || !f->root) {
        st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        goto out;
    }
    const char *name;
    json_t *shard;
    json_object_foreach((json_t *)map, name, shard) {
        if (!json_is_string(shard) || !shard_name_ok(json_string_value(shard))) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD, CKPT_NO_OFFSET,
                            "shard of '%s' is not a relative file name inside the index's directory",
                            name);
            goto out;
        }
        const char *sname = json_string_value(shard);
        size_t si = 0;
        while (si < f->shard_count && strcmp(f->records[si].name, sname) != 0)
            si++;
        if (si == f->shard_count) {
            free(path);
            path = malloc(dir_len + strlen(sname) + 1);
            if (!path) {
                st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
                goto out;
            }
            memcpy(path, f->path, dir_len);
            strcpy(path + dir_len, sname);
            ckpt_file *sf = NULL;
            st = ckpt_open(path, &f->opts, &sf, err);
            if (st != CKPT_OK) {
                ckpt__error_prefix_record(err, sname);
                goto out;
            }
            if (sf->format == CKPT_FORMAT_SHARDED) {
                ckpt_close(sf);
                st = ckpt__fail(err, CKPT_ERR_FORMAT, sname, CKPT_NO_OFFSET,
                                "a shard is itself a sharded index");
                goto out;
            }
            /* An index of many shards holds no descriptor per shard (they
             * would run out): shard bytes are read through the maps. */
            if (sf->has_fd) {
                close(sf->fd);
                sf->has_fd = false;
            }
            f->shards[f->shard_count] = sf;
            ckpt_record_info *r = &f->records[f->shard_count];
            r->name = ckpt__arena_strdup(&f->arena, sname, strlen(sname));
            if (!r->name) {
                st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
                goto out;
            }
            r->stored_size = r->size = sf->map_size;
            f->shard_count++;
            f->record_count++;
        }
        ckpt_file *sf = f->shards[si];
        const ckpt_tensor *t = ckpt_file_find_tensor(sf, name);
        if (!t) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, INDEX_RECORD, CKPT_NO_OFFSET,
                            "tensor '%s' is not in its shard '%s'", name, sname);
            goto out;
        }
        ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_STR, name, strlen(name));
        ckpt_value *tv = ckpt__value_new(&f->arena, CKPT_TENSOR);
        if (!kv || !tv) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
            goto out;
        }
        tv->u.tensor.t = (ckpt_tensor *)t;
        if (!ckpt__dict_set(&f->arena, f->root, kv, tv)) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
            goto out;
        }
    }
out:
    free(path);
    json_decref(root);
    return st;
}
