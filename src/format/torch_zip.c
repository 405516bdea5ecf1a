/*
 * torch_zip.c - the torch.save zip format (PyTorch >= 1.6): records, the
 * data.pkl pickle and its storages.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

typedef struct zip_load {
    ckpt_file *f;
    ckpt__storage_table table;
    const char *pkl_record;
    uint64_t pkl_base;          /* file offset of data.pkl bytes, or NO_OFFSET */
    char *name_buf;             /* scratch for record names */
    size_t name_cap;
    const char *storage_dir;    /* "data/", or "constants/" for constants.pkl */
    bool keep_storages;         /* added to the file (constants.pkl's are not) */
    size_t next_record;         /* the entry after the last storage's: torch.save
                                   writes storages' records as it pickles them */
} zip_load;

/* "PREFIX/" dir name[0..len) in the scratch buffer (once per storage: no
 * printf on this path). */
static const char *join_record_n(zip_load *L, const char *dir, const char *name, size_t len)
{
    size_t pn = strlen(L->f->prefix), dn = strlen(dir);
    size_t need = pn + 1 + dn + len + 1;
    if (need > L->name_cap) {
        char *p = realloc(L->name_buf, need);
        if (!p)
            return NULL;
        L->name_buf = p;
        L->name_cap = need;
    }
    char *q = L->name_buf;
    memcpy(q, L->f->prefix, pn);
    q[pn] = '/';
    memcpy(q + pn + 1, dir, dn);
    memcpy(q + pn + 1 + dn, name, len);
    q[need - 1] = 0;
    return L->name_buf;
}

static const char *join_record(zip_load *L, const char *name)
{
    return join_record_n(L, "", name, strlen(name));
}

/* Reads a small text record (version, byteorder, ...) into the arena, trimmed. */
static ckpt_status read_text_record(zip_load *L, const char *name, const char **out,
                                    ckpt_error *err)
{
    *out = NULL;
    const char *full = join_record(L, name);
    if (!full)
        return ckpt__nomem(err);
    long idx = ckpt__zip_find(&L->f->zip, full);
    if (idx < 0)
        return CKPT_OK;
    const ckpt__zip_entry *e = &L->f->zip.entries[idx];
    if (e->size > 4096)
        return ckpt__fail(err, CKPT_ERR_FORMAT, e->name, 0,
                          "record is %llu bytes; expected a short text",
                          (unsigned long long)e->size);
    const uint8_t *data;
    uint8_t *owned = NULL;
    CKPT_RETURN_IF_ERROR(ckpt__zip_read(&L->f->zip, (size_t)idx, &L->f->opts.limits, &data,
                                        &owned, err));
    size_t n = (size_t)e->size;
    while (n && (data[n - 1] == '\n' || data[n - 1] == '\r' || data[n - 1] == ' '))
        n--;
    *out = ckpt__arena_strdup(&L->f->arena, (const char *)data, n);
    free(owned);
    if (!*out)
        return ckpt__nomem(err);
    if (memchr(*out, 0, n))
        return ckpt__fail(err, CKPT_ERR_FORMAT, e->name, 0, "record holds a NUL byte");
    return CKPT_OK;
}

/* persistent_load: ('storage', storage_type, key, location, numel) */
static ckpt_status zip_persistent_load(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                       uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    zip_load *L = user;
    ckpt_file *f = L->f;
    const char *rec = ctx->record;
    ckpt__storage_pid p;
    CKPT_RETURN_IF_ERROR(ckpt__storage_pid_parse(pid, 5, rec, offset, &p, err));
    ckpt__storage *s = ckpt__storage_table_find(&L->table, p.key, p.key_len);
    if (s) {
        if (s->nbytes != p.nbytes || (!p.untyped && !s->untyped && s->dtype != p.dtype))
            return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset,
                              "storage '%s' is referenced as %s x %llu bytes and as %s x %llu bytes",
                              p.key, ckpt_dtype_name(s->dtype), (unsigned long long)s->nbytes,
                              ckpt_dtype_name(p.dtype), (unsigned long long)p.nbytes);
        return ckpt__storage_value(&f->arena, s, rec, offset, out, err);
    }
    const char *full = join_record_n(L, L->storage_dir, p.key, p.key_len);
    if (!full)
        return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
    long idx = ckpt__zip_find_near(&f->zip, full, strlen(full), L->next_record);
    if (idx < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset, "storage '%s' has no record '%s'",
                          p.key, full);
    L->next_record = (size_t)idx + 1;
    const ckpt__zip_entry *e = &f->zip.entries[idx];
    /* torch < 2.10 did not check this: a short record overflowed the heap. */
    if (e->size != p.nbytes)
        return ckpt__fail(err, CKPT_ERR_FORMAT, rec, offset,
                          "record '%s' holds %llu bytes but its storage declares %llu "
                          "(%llu x %s)",
                          e->name, (unsigned long long)e->size, (unsigned long long)p.nbytes,
                          (unsigned long long)p.numel, ckpt_dtype_name(p.dtype));
    s = ckpt__arena_alloc(&f->arena, sizeof(*s));
    if (!s)
        return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
    s->key = p.key;
    s->location = p.location;
    s->dtype = p.dtype;
    s->untyped = p.untyped;
    s->nbytes = p.nbytes;
    s->record = e->name;
    s->record_index = (int32_t)idx;
    s->file_offset = e->method == 0 ? e->data_offset : CKPT_NO_OFFSET;
    s->big_endian = f->big_endian;
    if (L->keep_storages)
        CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, s, err));
    if (!ckpt__storage_table_add(&L->table, s))
        return ckpt__fail(err, CKPT_ERR_NOMEM, rec, offset, "out of memory");
    return ckpt__storage_value(&f->arena, s, rec, offset, out, err);
}

/* Records of at most this many bytes on average make an archive dense;
 * one of at most DENSE_POPULATE_MAX bytes is mapped whole at open (a big
 * one, a large optimizer state, is left to page in as it is read). */
#define DENSE_RECORD_BYTES ((uint64_t)64 * 1024)
#define DENSE_POPULATE_MAX ((uint64_t)256 << 20)

static bool has_prefix(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* Reads the pickle record PREFIX/name (data.pkl, or a TorchScript archive's
 * constants.pkl) into *out, its storages in dir ("data/", "constants/");
 * torchscript: the archive is one, read as data (its classes as objects). */
static ckpt_status read_pickle(zip_load *L, const char *name, const char *dir, bool keep,
                               bool torchscript, ckpt_value **out, ckpt_error *err)
{
    ckpt_file *f = L->f;
    const char *pkl_name = join_record(L, name);
    long idx = pkl_name ? ckpt__zip_find(&f->zip, pkl_name) : -1;
    if (idx < 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "no '%s/%s' record: not a torch.save checkpoint", f->prefix, name);
    const ckpt__zip_entry *pe = &f->zip.entries[idx];
    if (pe->size > f->opts.limits.max_pickle_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, pe->name, 0, "pickle is %llu bytes (limit %llu)",
                          (unsigned long long)pe->size,
                          (unsigned long long)f->opts.limits.max_pickle_bytes);
    if (f->mapped)
        ckpt__map_advise(f->map + pe->data_offset, pe->comp_size, CKPT__ADVISE_WILLNEED);
    const uint8_t *pkl;
    uint8_t *owned = NULL;
    CKPT_RETURN_IF_ERROR(ckpt__zip_read(&f->zip, (size_t)idx, &f->opts.limits, &pkl, &owned, err));
    unsigned flags = (f->opts.flags & CKPT_OPEN_PERMISSIVE) ? CKPT__PICKLE_INERT : 0u;
    flags |= torchscript ? CKPT__PICKLE_TORCHSCRIPT : CKPT__PICKLE_NUMPY;
    flags |= CKPT__PICKLE_PID_DONE; /* zip_persistent_load keeps the key's text, not the id */
    L->storage_dir = dir;
    L->keep_storages = keep;
    ckpt__pickle_ctx ctx = {
        .limits = &f->opts.limits,
        .arena = &f->arena,
        .record = pe->name,
        .persistent_load = zip_persistent_load,
        .user = L,
        .protocol = -1,
        .flags = flags,
        .file = f,
    };
    ckpt_status st = ckpt__unpickle(&ctx, pkl, (size_t)pe->size, NULL, out, err);
    free(owned);
    if (keep)
        f->pickle_protocol = ctx.protocol;
    if (st != CKPT_OK && pe->method == 0)
        ckpt__error_set_file_base(err, pe->data_offset);
    return st;
}


/*
 * How the map pages in while it opens. A dense archive (small records) has
 * metadata on most pages: it is read whole, in one request, and mapped in
 * one call rather than a page fault for each. In a sparse one (big
 * tensors) the local headers and descriptors lie megabytes apart, and the
 * kernel's read-around would read megabytes around each of them from a
 * cold file, the whole file in scattered pieces: read-around is off until
 * the open is done, and the pickle is asked for whole. Opening then reads
 * what its metadata needs and no tensor bytes.
 */
static bool open_advise(ckpt_file *f)
{
    uint64_t count = 0, cd_offset = 0;
    if (!f->mapped || !ckpt__zip_declared(f->map, f->map_size, &count, &cd_offset) ||
        count == 0)
        return false;
    if (f->map_size <= DENSE_POPULATE_MAX && cd_offset / count <= DENSE_RECORD_BYTES) {
        ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_WILLNEED);
#ifdef MADV_POPULATE_READ
        (void)madvise((void *)(uintptr_t)f->map, (size_t)f->map_size, MADV_POPULATE_READ);
#endif
        return false;
    }
    ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_RANDOM);
    return true;
}

static ckpt_status open_torch_zip(ckpt_file *f, ckpt_error *err);

ckpt_status ckpt__open_torch_zip(ckpt_file *f, ckpt_error *err)
{
    bool random = open_advise(f);
    ckpt_status st = open_torch_zip(f, err);
    if (random) /* tensor bytes read later page in with read-around again */
        ckpt__map_advise(f->map, f->map_size, CKPT__ADVISE_NORMAL);
    return st;
}

static ckpt_status open_torch_zip(ckpt_file *f, ckpt_error *err)
{
    zip_load L = {.f = f};
    ckpt_value *constants = NULL;
    ckpt_status st = ckpt__zip_open(&f->zip, f->map, f->map_size, &f->opts.limits, err);
    if (st != CKPT_OK)
        return st;
    f->has_zip = true;
    if (f->zip.count == 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, "zip", 0, "empty zip archive: not a checkpoint");

    /* numpy's .npz: every member NAME.npy (no data.pkl: torch.load refuses it) */
    if (ckpt__npz_detect(&f->zip)) {
        f->format = CKPT_FORMAT_NUMPY_NPZ;
        return ckpt__open_npz(f, err);
    }

    /* The prefix comes from the first central-directory entry; every entry must share it. */
    const char *first = f->zip.entries[0].name;
    const char *slash = strchr(first, '/');
    if (!slash)
        return ckpt__fail(err, CKPT_ERR_FORMAT, first, CKPT_NO_OFFSET,
                          "record is not in a subdirectory (torch requires '<prefix>/<name>')");
    f->prefix = ckpt__arena_strdup(&f->arena, first, (size_t)(slash - first));
    if (!f->prefix)
        return ckpt__nomem(err);
    size_t plen = (size_t)(slash - first) + 1;
    bool torchscript = false, model_json = false;
    for (size_t i = 0; i < f->zip.count; i++) {
        const char *n = f->zip.entries[i].name;
        if (strncmp(n, first, plen) != 0)
            return ckpt__fail(err, CKPT_ERR_FORMAT, n, CKPT_NO_OFFSET,
                              "record is outside the archive prefix '%s/'", f->prefix);
        const char *rest = n + plen;
        if (strcmp(rest, "constants.pkl") == 0 || has_prefix(rest, "code/"))
            torchscript = true;
        if (strcmp(rest, "model.json") == 0)
            model_json = true;
    }
    if (model_json)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "TorchScript archive in the pre-1.3 layout (model.json, "
                          "attributes.pkl): its tensors are described by model.json, which "
                          "ckpt does not read; re-save it with torch.jit.save of torch >= 1.3");
    if (torchscript && !(f->opts.flags & CKPT_OPEN_TORCHSCRIPT_WEIGHTS))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", CKPT_NO_OFFSET,
                          "TorchScript archive (constants.pkl, code/): it holds code that "
                          "torch.jit.load runs; its weights can be read as data with "
                          "--torchscript-weights (CKPT_OPEN_TORCHSCRIPT_WEIGHTS)");

    if ((st = read_text_record(&L, "version", &f->version, err)) != CKPT_OK)
        goto out;
    if (!f->version && (st = read_text_record(&L, ".data/version", &f->version, err)) != CKPT_OK)
        goto out;
    if ((st = read_text_record(&L, "byteorder", &f->byteorder, err)) != CKPT_OK ||
        (st = read_text_record(&L, ".data/serialization_id", &f->serialization_id, err)) != CKPT_OK ||
        (st = read_text_record(&L, ".format_version", &f->format_version, err)) != CKPT_OK ||
        (st = read_text_record(&L, ".storage_alignment", &f->storage_alignment, err)) != CKPT_OK)
        goto out;
    if (f->byteorder) {
        if (strcmp(f->byteorder, "big") == 0) {
            f->big_endian = true;
        } else if (strcmp(f->byteorder, "little") != 0) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, join_record(&L, "byteorder"), 0,
                            "byteorder is '%s', expected 'little' or 'big'", f->byteorder);
            goto out;
        }
    }

    const char *constants_name = torchscript ? join_record(&L, "constants.pkl") : NULL;
    if (constants_name && ckpt__zip_find(&f->zip, constants_name) >= 0) {
        /* read as data, checked, but not part of the state dict */
        st = read_pickle(&L, "constants.pkl", "constants/", false, true, &constants, err);
        if (st == CKPT_OK)
            ckpt__storage_table_free(&L.table);
    }
    if (st == CKPT_OK)
        st = read_pickle(&L, "data.pkl", "data/", true, torchscript, &f->root, err);
    if (st == CKPT_OK && torchscript)
        st = ckpt__torchscript_state_dict(f, f->root, &f->root, err);
out:
    ckpt__storage_table_free(&L.table);
    free(L.name_buf);
    return st;
}
