/*
 * torch_legacy.c - the legacy torch.save format (before 1.6, or
 * _use_new_zipfile_serialization=False), and plain pickle files.
 *
 * A legacy file is a row of pickles (magic number, protocol version,
 * sys_info, the object, the sorted storage keys) followed, for each key in
 * that order, by an int64 element count and the storage's raw bytes.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct legacy_load {
    ckpt_file *f;
    ckpt__storage **roots;     /* root storages, in order of first use */
    size_t count, cap;
    ckpt__storage_table table; /* the same, by key */
} legacy_load;

static ckpt__storage *find_root(legacy_load *L, const char *key)
{
    return ckpt__storage_table_find(&L->table, key, strlen(key));
}

static bool is_str(const ckpt_value *v) { return v && v->kind == CKPT_KIND_STR; }

static ckpt_status add_root(legacy_load *L, ckpt__storage *s, ckpt_error *err)
{
    if (L->count == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 16;
        ckpt__storage **p = realloc(L->roots, cap * sizeof(*p));
        if (!p)
            return ckpt__nomem(err);
        L->roots = p;
        L->cap = cap;
    }
    L->roots[L->count++] = s;
    if (!ckpt__storage_table_add(&L->table, s))
        return ckpt__nomem(err);
    return ckpt__file_add_storage(L->f, s, err);
}

/* ('storage', storage_type, root_key, location, numel, view_metadata) */
static ckpt_status legacy_persistent_load(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                          uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    legacy_load *L = user;
    ckpt_file *f = L->f;
    const char *rec = ctx->record;
    if (pid && pid->kind == CKPT_KIND_TUPLE && pid->u.seq.len >= 1 && is_str(pid->u.seq.items[0]) &&
        strcmp(pid->u.seq.items[0]->u.s.ptr, "module") == 0) {
        /* ('module', cls, source_file, source): a module class saved with
         * its source. Permissive reads keep the class (inert) and drop the
         * source; the source is never looked at. */
        if ((f->opts.flags & CKPT_OPEN_PERMISSIVE) && pid->u.seq.len >= 2 &&
            pid->u.seq.items[1] && pid->u.seq.items[1]->kind == CKPT_KIND_GLOBAL) {
            *out = pid->u.seq.items[1];
            return CKPT_OK;
        }
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, rec, offset,
                          "whole pickled modules with source code are not supported");
    }
    ckpt__storage_pid p;
    CKPT_RETURN_IF_ERROR(ckpt__storage_pid_parse(pid, 6, rec, offset, &p, err));
    ckpt_dtype dtype = p.dtype;
    size_t esize = ckpt__storage_elem_size(dtype);
    uint64_t nbytes = p.nbytes;
    ckpt__storage *root = find_root(L, p.key);
    if (root) {
        if (root->nbytes != nbytes || root->dtype != dtype)
            return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset,
                              "storage '%s' is referenced with two different types or sizes",
                              root->key);
    } else {
        root = ckpt__arena_alloc(&f->arena, sizeof(*root));
        if (!root)
            return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
        root->key = p.key;
        root->location = p.location;
        root->dtype = dtype;
        root->untyped = p.untyped;
        root->nbytes = nbytes;
        root->record_index = -1;
        root->file_offset = CKPT_NO_OFFSET;
        root->big_endian = false; /* whatever sys_info says: torch never swaps */
        char name[96];
        snprintf(name, sizeof(name), "storage %.80s", root->key);
        root->record = ckpt__arena_strdup(&f->arena, name, strlen(name));
        if (!root->record)
            return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
        CKPT_RETURN_IF_ERROR(add_root(L, root, err));
    }
    ckpt__storage *result = root;
    const ckpt_value *view = p.view;
    if (view->kind != CKPT_KIND_NONE) {
        /* (view_key, offset, view_size), in elements */
        if (view->kind != CKPT_KIND_TUPLE || view->u.seq.len != 3 || !is_str(view->u.seq.items[0]) ||
            view->u.seq.items[1]->kind != CKPT_KIND_INT || view->u.seq.items[2]->kind != CKPT_KIND_INT ||
            view->u.seq.items[1]->u.i < 0 || view->u.seq.items[2]->u.i < 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset,
                              "storage view metadata is not (key, offset, size)");
        uint64_t voff, vsize, vend;
        if (!ckpt__mul_u64((uint64_t)view->u.seq.items[1]->u.i, esize, &voff) ||
            !ckpt__mul_u64((uint64_t)view->u.seq.items[2]->u.i, esize, &vsize) ||
            !ckpt__add_u64(voff, vsize, &vend) || vend > root->nbytes)
            return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset,
                              "storage view '%s' lies outside storage '%s'",
                              view->u.seq.items[0]->u.s.ptr, root->key);
        ckpt__storage *v = ckpt__arena_alloc(&f->arena, sizeof(*v));
        if (!v)
            return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
        *v = *root;
        v->key = view->u.seq.items[0]->u.s.ptr;
        v->base = root;
        v->base_offset = voff;
        v->nbytes = vsize;
        v->owned = NULL;
        CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, v, err));
        result = v;
    }
    return ckpt__storage_value(&f->arena, result, rec, offset, out, err);
}

/* Runs one pickle at *pos; advances *pos. */
static ckpt_status next_pickle(ckpt_file *f, uint64_t *pos, const char *record,
                               ckpt__persistent_load_fn pl, void *user, ckpt_value **out,
                               int *protocol, ckpt_error *err)
{
    if (*pos >= f->map_size)
        return ckpt__fail(err, CKPT_ERR_FORMAT, record, CKPT_NO_OFFSET,
                          "file ends before this pickle (at byte %llu)", (unsigned long long)*pos);
    /* the rest of the file: the interpreter stops at max_pickle_bytes, and
     * a frame must end inside the file and exactly after its STOP (FRAME in
     * pickle_read.c), so the next pickle starts where torch's reader of the
     * file starts it */
    uint64_t avail = f->map_size - *pos;
    if (avail > SIZE_MAX)
        avail = SIZE_MAX;
    ckpt__pickle_ctx ctx = {
        .limits = &f->opts.limits, .arena = &f->arena, .record = record,
        .persistent_load = pl, .user = user, .protocol = -1,
        .flags = CKPT__PICKLE_NUMPY |
                 ((f->opts.flags & CKPT_OPEN_PERMISSIVE) ? CKPT__PICKLE_INERT : 0u),
        .file = f,
    };
    size_t used = 0;
    ckpt_status st = ckpt__unpickle(&ctx, f->map + *pos, (size_t)avail, &used, out, err);
    if (protocol)
        *protocol = ctx.protocol;
    if (st != CKPT_OK) {
        ckpt__error_set_file_base(err, *pos);
        return st;
    }
    *pos += used;
    return CKPT_OK;
}

ckpt_status ckpt__open_torch_legacy(ckpt_file *f, ckpt_error *err)
{
    legacy_load L = {.f = f};
    ckpt_status st;
    uint64_t pos = 0;
    ckpt_value *magic = NULL, *proto = NULL, *sys_info = NULL, *keys = NULL;

    /* The first pickle decides: the magic number, or a plain pickle. */
    st = next_pickle(f, &pos, "pickle", NULL, NULL, &magic, &f->pickle_protocol, err);
    if (st != CKPT_OK)
        return st;
    if (!ckpt__is_legacy_magic(magic)) {
        f->format = CKPT_FORMAT_PICKLE;
        f->root = magic;
        /* Readers that stop at the first STOP miss what follows (a known
         * scanner bypass): anything after it is an error. */
        if (pos != f->map_size)
            return ckpt__fail(err, CKPT_ERR_FORMAT, "pickle", pos,
                              "%llu bytes follow the pickle's STOP opcode (%s)",
                              (unsigned long long)(f->map_size - pos),
                              f->map[pos] == 0x80 ? "a second pickle" : "trailing data");
        return CKPT_OK;
    }
    f->format = CKPT_FORMAT_TORCH_LEGACY;
    if ((st = next_pickle(f, &pos, "legacy protocol version", NULL, NULL, &proto, NULL, err)))
        goto out;
    if (proto->kind != CKPT_KIND_INT) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "legacy protocol version", CKPT_NO_OFFSET,
                        "protocol version is not an integer");
        goto out;
    }
    f->legacy_protocol_version = proto->u.i;
    if (proto->u.i != 1001) {
        st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "legacy protocol version", CKPT_NO_OFFSET,
                        "legacy protocol version %lld (only 1001 is known)", (long long)proto->u.i);
        goto out;
    }
    if ((st = next_pickle(f, &pos, "legacy sys_info", NULL, NULL, &sys_info, NULL, err)))
        goto out;
    if (sys_info->kind != CKPT_KIND_DICT) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "legacy sys_info", CKPT_NO_OFFSET, "sys_info is not a dict");
        goto out;
    }
    /* torch never reads sys_info: it loads the storages' bytes as they are
     * (little-endian), whatever little_endian says, and so does ckpt. A
     * scan reports a file whose sys_info says otherwise. */

    if ((st = next_pickle(f, &pos, "legacy object pickle", legacy_persistent_load, &L, &f->root,
                          &f->pickle_protocol, err)))
        goto out;
    if ((st = next_pickle(f, &pos, "legacy storage keys", NULL, NULL, &keys, NULL, err)))
        goto out;
    if (keys->kind != CKPT_KIND_LIST) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "legacy storage keys", CKPT_NO_OFFSET,
                        "storage key list is not a list");
        goto out;
    }
    f->records = calloc(keys->u.seq.len ? keys->u.seq.len : 1, sizeof(*f->records));
    if (!f->records) {
        st = ckpt__nomem(err);
        goto out;
    }
    for (size_t i = 0; i < keys->u.seq.len; i++) {
        const ckpt_value *k = keys->u.seq.items[i];
        ckpt__storage *s = is_str(k) ? find_root(&L, k->u.s.ptr) : NULL;
        if (!s) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, "legacy storage keys", CKPT_NO_OFFSET,
                            "storage key %zu is not used by the object", i);
            goto out;
        }
        if (s->file_offset != CKPT_NO_OFFSET) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                            "storage listed twice");
            goto out;
        }
        uint64_t end;
        if (!ckpt__add_u64(pos, 8, &end) || end > f->map_size) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, s->record, 0,
                            "file ends before the storage's size (byte %llu)", (unsigned long long)pos);
            ckpt__error_set_file_base(err, pos);
            goto out;
        }
        uint64_t numel = ckpt__le64(f->map + pos);
        size_t esize = ckpt__storage_elem_size(s->dtype);
        uint64_t nbytes;
        if (!ckpt__mul_u64(numel, esize, &nbytes) || nbytes != s->nbytes) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, s->record, 0,
                            "storage holds %llu elements but the object declares %llu",
                            (unsigned long long)numel, (unsigned long long)(s->nbytes / esize));
            ckpt__error_set_file_base(err, pos);
            goto out;
        }
        uint64_t data = end;
        if (!ckpt__add_u64(data, nbytes, &end) || end > f->map_size) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, s->record, 8,
                            "storage of %llu bytes runs past the end of the file",
                            (unsigned long long)nbytes);
            ckpt__error_set_file_base(err, pos);
            goto out;
        }
        s->file_offset = data;
        ckpt_record_info *r = &f->records[f->record_count++];
        r->name = s->record;
        r->header_offset = pos;
        r->data_offset = data;
        r->stored_size = r->size = nbytes;
        pos = end;
    }
    for (size_t i = 0; i < L.count; i++) {
        if (L.roots[i]->file_offset == CKPT_NO_OFFSET) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, L.roots[i]->record, CKPT_NO_OFFSET,
                            "storage has no data in the file");
            goto out;
        }
    }
    for (size_t i = 0; i < f->storage_count; i++) {
        ckpt__storage *s = f->storages[i];
        if (s->base)
            s->file_offset = CKPT_NO_OFFSET; /* resolved through the root */
    }
    if (pos != f->map_size) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, "", pos, "%llu bytes after the last storage",
                        (unsigned long long)(f->map_size - pos));
        ckpt__error_set_file_base(err, 0);
        goto out;
    }
out:
    free(L.roots);
    ckpt__storage_table_free(&L.table);
    return st;
}
