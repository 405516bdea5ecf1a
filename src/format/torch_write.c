/*
 * torch_write.c - ckpt_save_torch: a value tree as a torch.save zip file.
 *
 * The tree is pickled first (pickle_write.c); storages get their keys "0",
 * "1", ... in the order the pickle first uses them, each storage once
 * however many views share it. Then the records go out as torch >= 2.1
 * writes them: data.pkl, byteorder, data/<key> sorted by key as text,
 * version ("3\n"), through the zip writer (64-byte aligned, CRC32, data
 * descriptors, ZIP64 as PyTorch's miniz writes them) into a crash-safe
 * output file. No timestamp and no serialization id: the same tree gives
 * the same bytes. Storage bytes stream from their memory or the source
 * file's map a chunk at a time; nothing but metadata is held.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>

#define CHUNK ((size_t)4 << 20)

typedef struct saved_storage {
    ckpt__storage *s;
    const char *key;             /* in the saver's arena: stable while pickling */
    const char *type_name;
    ckpt_dtype dtype;            /* the dtype it is used as (typed storages) */
    bool untyped;
    const char *location;
    uint64_t numel;
} saved_storage;

typedef struct saver {
    const ckpt_save_options *opts;
    saved_storage *list;
    size_t count, cap;
    size_t *index;               /* storage pointer hash -> list position + 1 */
    size_t index_cap;
    ckpt__arena arena;
} saver;

static size_t ptr_hash(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static saved_storage *find_storage(const saver *sv, const ckpt__storage *s)
{
    if (!sv->index_cap)
        return NULL;
    size_t mask = sv->index_cap - 1;
    for (size_t i = ptr_hash(s) & mask; sv->index[i]; i = (i + 1) & mask) {
        saved_storage *e = &sv->list[sv->index[i] - 1];
        if (e->s == s)
            return e;
    }
    return NULL;
}

static bool reindex(saver *sv, size_t cap)
{
    size_t *index = calloc(cap, sizeof(*index));
    if (!index)
        return false;
    for (size_t k = 0; k < sv->count; k++) {
        size_t i = ptr_hash(sv->list[k].s) & (cap - 1);
        while (index[i])
            i = (i + 1) & (cap - 1);
        index[i] = k + 1;
    }
    free(sv->index);
    sv->index = index;
    sv->index_cap = cap;
    return true;
}

/* The name of a use of a storage, for messages. */
static const char *use_name(ckpt_dtype dtype, bool untyped)
{
    return untyped ? "untyped storage" : ckpt_dtype_name(dtype);
}

/* ckpt__pickle_storage_fn: gives each storage its key at first use and
 * checks that every later use sees it the same way. */
static ckpt_status on_storage(void *user, ckpt__storage *s, ckpt_dtype dtype, bool untyped,
                              ckpt__pickle_storage *out, ckpt_error *err)
{
    saver *sv = user;
    saved_storage *e = find_storage(sv, s);
    if (e) {
        if (e->untyped != untyped || (!untyped && e->dtype != dtype))
            return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                              "storage %s is viewed both as %s and as %s: torch.save cannot "
                              "save one storage as two types either",
                              e->key, use_name(e->dtype, e->untyped), use_name(dtype, untyped));
    } else {
        const char *type_name = untyped ? "UntypedStorage" : ckpt__torch_storage_class(dtype);
        if (!type_name)
            return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                              "no torch storage class holds %s", ckpt_dtype_name(dtype));
        size_t elem = untyped ? 1 : ckpt__storage_elem_size(dtype);
        if (s->nbytes % elem != 0)
            return CKPT_INVALID_ARG(err,
                                    "a storage of %llu bytes does not hold whole %s elements",
                                    (unsigned long long)s->nbytes, ckpt_dtype_name(dtype));
        const char *loc = sv->opts->location ? sv->opts->location
                          : s->location      ? s->location
                                             : "cpu";
        if (sv->count == sv->cap) {
            saved_storage *l = ckpt__array_grow(sv->list, &sv->cap, sizeof(*l));
            if (!l)
                return ckpt__nomem(err);
            sv->list = l;
        }
        char key[24];
        int klen = snprintf(key, sizeof(key), "%zu", sv->count);
        const char *k = ckpt__arena_strdup(&sv->arena, key, (size_t)klen);
        if (!k)
            return ckpt__nomem(err);
        e = &sv->list[sv->count++];
        *e = (saved_storage){.s = s, .key = k, .type_name = type_name, .dtype = dtype,
                             .untyped = untyped, .location = loc, .numel = s->nbytes / elem};
        if (sv->count * 2 > sv->index_cap) {
            if (!reindex(sv, sv->index_cap ? sv->index_cap * 2 : 128))
                return ckpt__nomem(err);
        } else {
            size_t i = ptr_hash(s) & (sv->index_cap - 1);
            while (sv->index[i])
                i = (i + 1) & (sv->index_cap - 1);
            sv->index[i] = sv->count;
        }
    }
    out->key = e->key;
    out->type_name = e->type_name;
    out->untyped = e->untyped;
    out->location = e->location;
    out->numel = e->numel;
    return CKPT_OK;
}

static int cmp_key(const void *a, const void *b)
{
    const saved_storage *x = *(saved_storage *const *)a, *y = *(saved_storage *const *)b;
    return strcmp(x->key, y->key);
}

/* torch 1.13+: the file's base name without its last extension. */
static ckpt_status archive_prefix(const char *path, const ckpt_save_options *o, char **out,
                                  ckpt_error *err)
{
    const char *p = o->prefix;
    size_t n;
    if (p) {
        n = strlen(p);
        if (n == 0 || n > 1024 || strchr(p, '/') || strcmp(p, ".") == 0 || strcmp(p, "..") == 0)
            return CKPT_INVALID_ARG(
                err, "archive prefix '%s' is not a plain name of 1 to 1024 bytes", p);
    } else {
        /* as PyTorchStreamWriter's basename(): after the last '/' or '\' */
        const char *base = path;
        for (const char *c = path; *c; c++) {
            if (*c == '/' || *c == '\\')
                base = c + 1;
        }
        const char *dot = strrchr(base, '.');
        n = dot ? (size_t)(dot - base) : strlen(base);
        p = base;
        if (n == 0) {
            p = "archive";
            n = 7;
        }
        if (n > 1024)
            n = 1024;
    }
    *out = malloc(n + 1);
    if (!*out)
        return ckpt__nomem(err);
    memcpy(*out, p, n);
    (*out)[n] = 0;
    return CKPT_OK;
}

static void progress(const ckpt_save_options *o, uint64_t done, uint64_t total)
{
    if (o->progress)
        o->progress(o->progress_user, done, total);
}

static ckpt_status add_text_record(ckpt__zip_writer *zw, char *name, size_t prefix_len,
                                   const char *record, const char *text, ckpt_error *err)
{
    snprintf(name + prefix_len, 64, "%s", record);
    return ckpt__zip_add(zw, name, text, strlen(text), err);
}

/* Streams one storage into its record. */
static ckpt_status write_storage(ckpt__zip_writer *zw, const char *name, const saved_storage *e,
                                 uint8_t *buf, const ckpt_save_options *o, uint64_t *done,
                                 uint64_t total, ckpt_error *err)
{
    ckpt__storage *s = e->s;
    CKPT_RETURN_IF_ERROR(ckpt__zip_record_begin(zw, name, s->nbytes, err));
    for (uint64_t off = 0; off < s->nbytes;) {
        size_t len = s->nbytes - off < CHUNK ? (size_t)(s->nbytes - off) : CHUNK;
        const uint8_t *p;
        ckpt_status st = ckpt__storage_read(s, off, len, buf, &p, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, name);
            return st;
        }
        /* bytes that pass through unchanged are read from their file */
        int fd;
        uint64_t foff;
        if (p != buf && ckpt__storage_file_range(s, p, len, &fd, &foff))
            CKPT_RETURN_IF_ERROR(ckpt__zip_record_copy(zw, fd, foff, p, len, err));
        else
            CKPT_RETURN_IF_ERROR(ckpt__zip_record_write(zw, p, len, err));
        off += len;
        *done += len;
        progress(o, *done, total);
    }
    return ckpt__zip_record_end(zw, err);
}

static bool host_is_little_endian(void)
{
    const uint16_t one = 1;
    uint8_t b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* A whole archive into its own crash-safe file at path, or (append_to) at
 * the end of an output already open, its offsets counted from its start. */
static ckpt_status save_torch(const char *path, ckpt__out *append_to, const ckpt_value *root,
                              const ckpt_save_options *opts, uint64_t zip64_threshold,
                              ckpt__staged *stage, uint64_t *archive_len, ckpt_error *err)
{
    if ((!path && !append_to) || !root)
        return CKPT_INVALID_ARG(err, "NULL argument");
    ckpt_save_options o;
    ckpt__save_options_apply(&o, opts);
    if (o.location && (!*o.location || strlen(o.location) > 64))
        return CKPT_INVALID_ARG(
            err, "location must be a tag of 1 to 64 bytes (\"cpu\", \"cuda:0\", ...)");
    ckpt_limits lim;
    ckpt_limits_default(&lim);

    saver sv;
    memset(&sv, 0, sizeof(sv));
    sv.opts = &o;
    ckpt__arena_init(&sv.arena, 0);
    char *prefix = NULL, *name = NULL;
    uint8_t *pkl = NULL, *buf = NULL;
    size_t pkl_len = 0;
    saved_storage **order = NULL;
    ckpt__out own = {.fd = -1};
    ckpt__out *out = append_to ? append_to : &own;
    bool out_open = false;
    ckpt__zip_writer zw;
    ckpt__zip_writer_init(&zw, out, zip64_threshold);

    ckpt_status st = archive_prefix(path ? path : "", &o, &prefix, err);
    if (st != CKPT_OK)
        goto done;
    st = ckpt__pickle_dump(root, lim.max_nesting, on_storage, &sv, &pkl, &pkl_len, err);
    if (st != CKPT_OK)
        goto done;

    /* storages are written once each; casts make new ones, and a legacy
     * file's storage views become storages of their own */
    ckpt__output_budget made = {0};
    for (size_t i = 0; i < sv.count; i++)
        ckpt__output_add_storage(&made, sv.list[i].s, sv.list[i].s->nbytes);
    if ((st = ckpt__output_check(&made, err)) != CKPT_OK)
        goto done;

    uint64_t total = 0;
    order = malloc((sv.count ? sv.count : 1) * sizeof(*order));
    size_t prefix_len = strlen(prefix);
    name = malloc(prefix_len + 1 + 64 + 8);
    bool casts = false;
    for (size_t i = 0; i < sv.count; i++)
        casts |= sv.list[i].s->cast_src != NULL || sv.list[i].s->chunked != NULL;
    /* only casts and chunked (DCP) tensors produce bytes; every other
     * storage is read in place */
    if (casts)
        buf = malloc(CHUNK);
    if (!order || !name || (casts && !buf)) {
        st = ckpt__nomem(err);
        goto done;
    }
    for (size_t i = 0; i < sv.count; i++) {
        order[i] = &sv.list[i];
        total += sv.list[i].s->nbytes; /* storages are address space: cannot overflow */
    }
    qsort(order, sv.count, sizeof(*order), cmp_key);
    memcpy(name, prefix, prefix_len);
    name[prefix_len++] = '/';

    unsigned out_flags = o.flags & ~(CKPT__OUT_CRC | CKPT__OUT_STAGE);
    if (stage)
        out_flags |= CKPT__OUT_CRC | CKPT__OUT_STAGE;
    if (!append_to) {
        if ((st = ckpt__out_open(&own, path, out_flags, err)) != CKPT_OK)
            goto done;
        out_open = true;
    }
    snprintf(name + prefix_len, 64, "data.pkl");
    if ((st = ckpt__zip_add(&zw, name, pkl, pkl_len, err)) != CKPT_OK)
        goto done;
    if ((st = add_text_record(&zw, name, prefix_len, "byteorder",
                              host_is_little_endian() ? "little" : "big", err)) != CKPT_OK)
        goto done;
    uint64_t done_bytes = 0;
    for (size_t i = 0; i < sv.count; i++) {
        snprintf(name + prefix_len, 64, "data/%s", order[i]->key);
        if ((st = write_storage(&zw, name, order[i], buf, &o, &done_bytes, total, err)) != CKPT_OK)
            goto done;
    }
    if ((st = add_text_record(&zw, name, prefix_len, "version", "3\n", err)) != CKPT_OK ||
        (st = ckpt__zip_finish(&zw, err)) != CKPT_OK)
        goto done;
    if (archive_len)
        *archive_len = zw.offset;
    if (append_to)
        goto done;
    st = ckpt__out_commit(&own, err);
    if (st == CKPT_OK && stage)
        ckpt__out_stage(&own, stage);

done:
    if (out_open && st != CKPT_OK)
        ckpt__out_abort(&own); /* the target stays as it was */
    ckpt__zip_writer_free(&zw);
    free(order);
    free(name);
    free(buf);
    free(pkl);
    free(prefix);
    free(sv.list);
    free(sv.index);
    ckpt__arena_free(&sv.arena);
    return st;
}

ckpt_status ckpt__save_torch_ex(const char *path, const ckpt_value *root,
                                const ckpt_save_options *opts, uint64_t zip64_threshold,
                                ckpt__staged *stage, ckpt_error *err)
{
    return save_torch(path, NULL, root, opts, zip64_threshold, stage, NULL, err);
}

ckpt_status ckpt__save_torch_append(ckpt__out *out, const ckpt_value *root,
                                    const ckpt_save_options *opts, uint64_t *len, ckpt_error *err)
{
    return save_torch(NULL, out, root, opts, CKPT__ZIP64_THRESHOLD, NULL, len, err);
}

ckpt_status ckpt_save_torch(const char *path, const ckpt_value *root,
                            const ckpt_save_options *opts, ckpt_error *err)
{
    return ckpt__save_torch_ex(path, root, opts, CKPT__ZIP64_THRESHOLD, NULL, err);
}
