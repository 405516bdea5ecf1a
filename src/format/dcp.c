/*
 * dcp.c - PyTorch Distributed Checkpoint (DCP) directories: a pickled
 * .metadata over __R_N.distcp files whose items are whole torch.save zips
 * (docs/FORMATS.md, section 7).
 *
 * Threat model: the directory is as hostile as any checkpoint. torch reads
 * .metadata with a plain pickle.load; here it runs in the data-only
 * interpreter with DCP's own classes kept as inert objects with known
 * fields (any other global is refused by name, nothing is called), every
 * file it names must be a plain file directly in the directory, every
 * item must lie inside its file, every chunk inside its tensor, and the
 * chunks of a tensor must cover it exactly once. Items are opened as the
 * torch.save files they are, with the normal allow-list.
 */
#include "format.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define META_RECORD ".metadata"

/* ---- the classes a .metadata may name ------------------------------------ */

typedef enum dcp_class {
    DCP_NONE = -1,
    DCP_METADATA,
    DCP_TENSOR_MD,
    DCP_CHUNK_MD,
    DCP_BYTES_MD,
    DCP_INDEX,
    DCP_STORAGE_INFO,
    DCP_PROPERTIES,
    DCP_MEM_FORMAT,
    DCP_STORAGE_META,
    DCP_PATH,
    DCP_GETATTR,
} dcp_class;

static const struct {
    const char *name;
    dcp_class cls;
} DCP_GLOBALS[] = {
    /* torch 1.13 */
    {"torch.distributed._shard.checkpoint.metadata.Metadata", DCP_METADATA},
    {"torch.distributed._shard.checkpoint.metadata.TensorStorageMetadata", DCP_TENSOR_MD},
    {"torch.distributed._shard.checkpoint.metadata.ChunkStorageMetadata", DCP_CHUNK_MD},
    {"torch.distributed._shard.checkpoint.metadata.BytesStorageMetadata", DCP_BYTES_MD},
    {"torch.distributed._shard.checkpoint.metadata.MetadataIndex", DCP_INDEX},
    {"torch.distributed._shard.checkpoint.filesystem._StorageInfo", DCP_STORAGE_INFO},
    /* 2.0 on */
    {"torch.distributed.checkpoint.metadata.Metadata", DCP_METADATA},
    {"torch.distributed.checkpoint.metadata.TensorStorageMetadata", DCP_TENSOR_MD},
    {"torch.distributed.checkpoint.metadata.ChunkStorageMetadata", DCP_CHUNK_MD},
    {"torch.distributed.checkpoint.metadata.BytesStorageMetadata", DCP_BYTES_MD},
    {"torch.distributed.checkpoint.metadata.MetadataIndex", DCP_INDEX},
    {"torch.distributed.checkpoint.metadata.StorageMeta", DCP_STORAGE_META},
    {"torch.distributed.checkpoint.filesystem._StorageInfo", DCP_STORAGE_INFO},
    /* tensor properties: to 2.2, and from 2.3 */
    {"torch.distributed._shard.sharded_tensor.metadata.TensorProperties", DCP_PROPERTIES},
    {"torch.distributed._shard.sharded_tensor.metadata.MEM_FORMAT_ENCODING", DCP_MEM_FORMAT},
    {"torch.distributed.checkpoint.metadata.TensorProperties", DCP_PROPERTIES},
    {"torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING", DCP_MEM_FORMAT},
    /* StorageMeta.checkpoint_id, an enum member by name (Python 3.11) */
    {"pathlib.PosixPath", DCP_PATH},
    {"pathlib._local.PosixPath", DCP_PATH},
    {"builtins.getattr", DCP_GETATTR},
};

static const char *const MEM_FORMAT_MEMBERS[] = {
    "TORCH_CONTIGUOUS_FORMAT", "TORCH_CHANNELS_LAST", "TORCH_PRESERVE_FORMAT",
};

static dcp_class classify_text(const char *s, size_t n)
{
    for (size_t i = 0; i < sizeof(DCP_GLOBALS) / sizeof(DCP_GLOBALS[0]); i++) {
        if (strlen(DCP_GLOBALS[i].name) == n && memcmp(DCP_GLOBALS[i].name, s, n) == 0)
            return DCP_GLOBALS[i].cls;
    }
    return DCP_NONE;
}

/* The DCP class of a GLOBAL value, or of the class an OBJECT was made by. */
static dcp_class classify(const ckpt_value *v)
{
    if (v && v->kind == CKPT_KIND_OBJECT)
        v = v->u.obj.cls;
    if (!v || v->kind != CKPT_KIND_GLOBAL || v->global_id != CKPT__G_UNKNOWN)
        return DCP_NONE;
    return classify_text(v->u.s.ptr, v->u.s.len);
}

bool ckpt__dcp_global_allowed(const char *module, size_t mlen, const char *name, size_t nlen)
{
    char text[256];
    if (mlen + nlen + 2 > sizeof(text))
        return false;
    memcpy(text, module, mlen);
    text[mlen] = '.';
    memcpy(text + mlen + 1, name, nlen);
    return classify_text(text, mlen + 1 + nlen) != DCP_NONE;
}

/* The interpreter's checks in DCP mode: the first refusal is kept here. */
typedef struct dcp_vm {
    ckpt_error err;
    bool failed;
} dcp_vm;

static ckpt_status vm_refuse(dcp_vm *d, ckpt_status st, uint64_t offset, const char *fmt, ...)
    CKPT_PRINTF(4, 5);
static ckpt_status vm_refuse(dcp_vm *d, ckpt_status st, uint64_t offset, const char *fmt, ...)
{
    if (!d->failed) {
        va_list ap;
        va_start(ap, fmt);
        ckpt__vfail(&d->err, st, META_RECORD, offset, fmt, ap);
        va_end(ap);
        d->failed = true;
    }
    return st;
}

static ckpt_status on_global(void *user, const char *module, size_t mlen, const char *name,
                             size_t nlen, const ckpt_value *v, uint64_t offset)
{
    if (v->kind == CKPT_KIND_DTYPE || (v->kind == CKPT_KIND_GLOBAL && v->global_id != CKPT__G_UNKNOWN))
        return CKPT_OK; /* the weights-only allow-list: torch.Size, dtypes, layouts */
    if (ckpt__dcp_global_allowed(module, mlen, name, nlen))
        return CKPT_OK;
    char mb[128], nb[128];
    return vm_refuse(user, CKPT_ERR_UNSAFE, offset,
                     "global '%s.%s' is not one of DCP's metadata classes (torch's pickle.load "
                     "of .metadata would import and call it)",
                     ckpt__quote(mb, sizeof(mb), module, mlen, true),
                     ckpt__quote(nb, sizeof(nb), name, nlen, true));
}

static bool is_str(const ckpt_value *v, const char *s)
{
    return v && v->kind == CKPT_KIND_STR && v->u.s.len == strlen(s) &&
           memcmp(v->u.s.ptr, s, v->u.s.len) == 0;
}

static ckpt_status on_call(void *user, const ckpt_value *fn, ckpt_value *const *args, size_t nargs,
                           const ckpt_value *kwargs)
{
    (void)kwargs;
    if (fn->global_id != CKPT__G_UNKNOWN)
        return CKPT_OK;
    const char *what = fn->u.s.ptr;
    switch (classify(fn)) {
    case DCP_GETATTR:
        if (nargs == 2 && classify(args[0]) == DCP_MEM_FORMAT && args[0]->kind == CKPT_KIND_GLOBAL) {
            for (size_t i = 0; i < sizeof(MEM_FORMAT_MEMBERS) / sizeof(MEM_FORMAT_MEMBERS[0]); i++)
                if (is_str(args[1], MEM_FORMAT_MEMBERS[i]))
                    return CKPT_OK;
        }
        return vm_refuse(user, CKPT_ERR_UNSAFE, CKPT_NO_OFFSET,
                         "%s is allowed only for a member of the memory-format enum", what);
    case DCP_MEM_FORMAT:
        if (nargs == 1 && args[0]->kind == CKPT_KIND_INT && args[0]->u.i >= 0 && args[0]->u.i <= 2)
            return CKPT_OK;
        return vm_refuse(user, CKPT_ERR_FORMAT, CKPT_NO_OFFSET, "%s: not a member's value", what);
    case DCP_PATH:
        for (size_t i = 0; i < nargs; i++)
            if (args[i]->kind != CKPT_KIND_STR)
                return vm_refuse(user, CKPT_ERR_FORMAT, CKPT_NO_OFFSET,
                                 "%s takes text only", what);
        return CKPT_OK;
    case DCP_NONE:
        return vm_refuse(user, CKPT_ERR_UNSAFE, CKPT_NO_OFFSET, "'%s' is not callable here",
                         what);
    default:
        return CKPT_OK; /* a class made into an inert object with its state */
    }
}

static ckpt_status no_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                 uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    (void)user;
    (void)ctx;
    (void)pid;
    (void)out;
    return ckpt__fail(err, CKPT_ERR_FORMAT, META_RECORD, offset,
                      "a .metadata holds no persistent ids (tensors are in the .distcp files)");
}

ckpt_status ckpt__dcp_unpickle(const uint8_t *data, size_t size, const ckpt_limits *limits,
                               ckpt__arena *arena, ckpt_value **root, int *protocol,
                               ckpt_error *err)
{
    dcp_vm d = {.failed = false};
    ckpt__pickle_ctx ctx = {
        .limits = limits,
        .arena = arena,
        .record = META_RECORD,
        .persistent_load = no_persistent,
        .user = &d,
        .protocol = -1,
        .flags = CKPT__PICKLE_INERT,
        .on_global = on_global,
        .on_call = on_call,
    };
    ckpt_status st = ckpt__unpickle(&ctx, data, size, NULL, root, err);
    if (protocol)
        *protocol = ctx.protocol;
    if (st != CKPT_OK && d.failed && err)
        *err = d.err;
    if (st == CKPT_OK && d.failed) {
        if (err)
            *err = d.err;
        st = d.err.status;
    }
    return st;
}

/* ---- reading the metadata ----------------------------------------------- */

static ckpt_status meta_fail(ckpt_error *err, const char *fmt, ...) CKPT_PRINTF(2, 3);
static ckpt_status meta_fail(ckpt_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt_status st = ckpt__vfail(err, CKPT_ERR_FORMAT, META_RECORD, CKPT_NO_OFFSET, fmt, ap);
    va_end(ap);
    return st;
}

/* An attribute of an inert object (its BUILD state dict), or NULL. */
static const ckpt_value *field(const ckpt_value *obj, const char *name)
{
    if (!obj || obj->kind != CKPT_KIND_OBJECT)
        return NULL;
    return ckpt_value_get(obj->u.obj.state, name);
}

static bool is_none(const ckpt_value *v) { return !v || v->kind == CKPT_KIND_NONE; }

static bool is_seq(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_SIZE || v->kind == CKPT_KIND_TUPLE ||
                 v->kind == CKPT_KIND_LIST);
}

static bool is_map(const ckpt_value *v)
{
    return v && (v->kind == CKPT_KIND_DICT || v->kind == CKPT_KIND_ORDERED_DICT);
}

/* Text of a STR value ("?" otherwise) for messages. */
static const char *text_of(const ckpt_value *v)
{
    return v && v->kind == CKPT_KIND_STR ? v->u.s.ptr : "?";
}

/* n non-negative ints of a torch.Size / tuple / list into the arena. */
static ckpt_status int_list(ckpt_file *f, const ckpt_value *v, uint32_t want, const char *what,
                            const char *key, int64_t **out, ckpt_error *err)
{
    if (!is_seq(v) || v->u.seq.len != want)
        return meta_fail(err, "%s of '%s' is not a sequence of %u ints", what, key, want);
    int64_t *p = ckpt__arena_alloc(&f->arena, (want ? want : 1) * sizeof(int64_t));
    if (!p)
        return ckpt__nomem(err);
    for (uint32_t i = 0; i < want; i++) {
        const ckpt_value *x = v->u.seq.items[i];
        if (!x || x->kind != CKPT_KIND_INT || x->u.i < 0)
            return meta_fail(err, "%s of '%s': item %u is not a non-negative int", what, key, i);
        p[i] = x->u.i;
    }
    *out = p;
    return CKPT_OK;
}

/* One entry of storage_data: where an item is. */
typedef struct sentry {
    const ckpt_value *fqn;      /* STR */
    const ckpt_value *offsets;  /* a sequence of ints, or NULL (a bytes item) */
    const char *path;
    size_t path_len;
    uint32_t file;
    uint64_t offset, length;
} sentry;

static int cmp_offsets(const ckpt_value *a, const ckpt_value *b)
{
    if (!a || !b)
        return (a != NULL) - (b != NULL);
    size_t n = a->u.seq.len < b->u.seq.len ? a->u.seq.len : b->u.seq.len;
    for (size_t i = 0; i < n; i++) {
        int64_t x = a->u.seq.items[i]->u.i, y = b->u.seq.items[i]->u.i;
        if (x != y)
            return x < y ? -1 : 1;
    }
    return (a->u.seq.len > b->u.seq.len) - (a->u.seq.len < b->u.seq.len);
}

static int cmp_text(const ckpt_value *a, const ckpt_value *b)
{
    size_t n = a->u.s.len < b->u.s.len ? a->u.s.len : b->u.s.len;
    int c = memcmp(a->u.s.ptr, b->u.s.ptr, n);
    if (c)
        return c;
    return (a->u.s.len > b->u.s.len) - (a->u.s.len < b->u.s.len);
}

static int cmp_sentry(const void *pa, const void *pb)
{
    const sentry *a = pa, *b = pb;
    int c = cmp_text(a->fqn, b->fqn);
    return c ? c : cmp_offsets(a->offsets, b->offsets);
}

static const sentry *find_sentry(const sentry *e, size_t n, const ckpt_value *fqn,
                                 const ckpt_value *offsets)
{
    sentry key = {.fqn = fqn, .offsets = offsets};
    return bsearch(&key, e, n, sizeof(*e), cmp_sentry);
}

/* Offsets as a sequence of ints (NULL for None or absent). */
static ckpt_status offsets_value(const ckpt_value *v, const char *key, const ckpt_value **out,
                                 ckpt_error *err)
{
    *out = NULL;
    if (is_none(v))
        return CKPT_OK;
    if (!is_seq(v))
        return meta_fail(err, "offset of the item '%s' in storage_data is not a sequence", key);
    for (size_t i = 0; i < v->u.seq.len; i++) {
        const ckpt_value *x = v->u.seq.items[i];
        if (!x || x->kind != CKPT_KIND_INT)
            return meta_fail(err, "offset of the item '%s' in storage_data holds a non-int", key);
    }
    *out = v;
    return CKPT_OK;
}

/* A file name of storage_data: one plain name in the directory. */
static bool file_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 255 || strlen(s) != n || strchr(s, '/') || strcmp(s, ".") == 0 ||
        strcmp(s, "..") == 0)
        return false;
    return true;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Maps every file that storage_data names, each once. */
static ckpt_status open_files(ckpt_file *f, sentry *e, size_t n, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    const char **names = malloc((n ? n : 1) * sizeof(*names));
    if (!names)
        return ckpt__nomem(err);
    for (size_t i = 0; i < n; i++)
        names[i] = e[i].path;
    qsort(names, n, sizeof(*names), cmp_name);
    size_t u = 0;
    for (size_t i = 0; i < n; i++)
        if (u == 0 || strcmp(names[u - 1], names[i]) != 0)
            names[u++] = names[i];
    if (u > f->opts.limits.max_tensor_paths) {
        st = ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, CKPT_NO_OFFSET,
                        "names %zu files (limit max_tensor_paths %llu)", u,
                        (unsigned long long)f->opts.limits.max_tensor_paths);
        goto out;
    }
    f->dcp_files = calloc(u ? u : 1, sizeof(*f->dcp_files));
    f->records = calloc(u ? u : 1, sizeof(*f->records));
    if (!f->dcp_files || !f->records) {
        st = ckpt__nomem(err);
        goto out;
    }
    for (size_t i = 0; i < u; i++) {
        struct ckpt__dcp_file *df = &f->dcp_files[i];
        df->name = names[i];
        f->dcp_file_count = i + 1;
        int fd = openat(f->dcp_dir, names[i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0) {
            st = ckpt__fail(err, CKPT_ERR_IO, names[i], CKPT_NO_OFFSET, "cannot open: %s%s",
                            strerror(errno),
                            errno == ELOOP ? " (a symbolic link: the files of a DCP checkpoint "
                                             "must be plain files in its directory)" : "");
            goto out;
        }
        struct stat sb;
        if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
            close(fd);
            st = ckpt__fail(err, CKPT_ERR_IO, names[i], CKPT_NO_OFFSET, "not a regular file");
            goto out;
        }
        if (sb.st_size > 0) {
            void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                st = ckpt__fail(err, CKPT_ERR_IO, names[i], CKPT_NO_OFFSET, "cannot map: %s",
                                strerror(errno));
                close(fd);
                goto out;
            }
            df->map = m;
            df->size = (uint64_t)sb.st_size;
        }
        close(fd);
        ckpt_record_info *r = &f->records[i];
        r->struct_size = sizeof(*r);
        r->name = names[i];
        r->stored_size = r->size = df->size;
        f->record_count = i + 1;
    }
    for (size_t i = 0; i < n; i++) {
        const char **hit = bsearch(&e[i].path, names, u, sizeof(*names), cmp_name);
        e[i].file = (uint32_t)(hit - names);
        const struct ckpt__dcp_file *df = &f->dcp_files[e[i].file];
        uint64_t end;
        if (!ckpt__add_u64(e[i].offset, e[i].length, &end) || end > df->size) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, META_RECORD, CKPT_NO_OFFSET,
                            "the item '%s' at bytes [%llu, +%llu) of '%s' runs past the end of "
                            "that file (%llu bytes)",
                            text_of(e[i].fqn), (unsigned long long)e[i].offset,
                            (unsigned long long)e[i].length, df->name,
                            (unsigned long long)df->size);
            goto out;
        }
    }
out:
    free(names);
    return st;
}

/* Reads storage_data into entries. */
static ckpt_status read_storage_data(ckpt_file *f, const ckpt_value *sd, sentry **out,
                                     size_t *count, ckpt_error *err)
{
    *out = NULL;
    *count = 0;
    if (!is_map(sd))
        return meta_fail(err, "storage_data is not a dict of MetadataIndex -> _StorageInfo");
    size_t n = sd->u.dict.len;
    if (n > f->opts.limits.max_tensor_paths)
        return ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, CKPT_NO_OFFSET,
                          "storage_data names %zu items (limit max_tensor_paths %llu)", n,
                          (unsigned long long)f->opts.limits.max_tensor_paths);
    sentry *e = calloc(n ? n : 1, sizeof(*e));
    if (!e)
        return ckpt__nomem(err);
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *k = sd->u.dict.keys[i], *v = sd->u.dict.vals[i];
        if (classify(k) != DCP_INDEX || classify(v) != DCP_STORAGE_INFO ||
            k->kind != CKPT_KIND_OBJECT || v->kind != CKPT_KIND_OBJECT) {
            st = meta_fail(err, "storage_data entry %zu is not MetadataIndex -> _StorageInfo", i);
            goto out;
        }
        const ckpt_value *fqn = field(k, "fqn");
        if (!fqn || fqn->kind != CKPT_KIND_STR) {
            st = meta_fail(err, "storage_data entry %zu has no fqn text", i);
            goto out;
        }
        e[i].fqn = fqn;
        if ((st = offsets_value(field(k, "offset"), fqn->u.s.ptr, &e[i].offsets, err)) != CKPT_OK)
            goto out;
        const ckpt_value *path = field(v, "relative_path");
        const ckpt_value *off = field(v, "offset"), *len = field(v, "length");
        const ckpt_value *tr = field(v, "transform_descriptors");
        if (tr && !is_none(tr) && (!is_seq(tr) || tr->u.seq.len != 0)) {
            const ckpt_value *t0 = is_seq(tr) ? tr->u.seq.items[0] : tr;
            char tb[96];
            ckpt_value_repr(t0, tb, sizeof(tb));
            st = ckpt__fail(err, CKPT_ERR_UNSUPPORTED, META_RECORD, CKPT_NO_OFFSET,
                            "the item '%s' is stored with a transform (%s, a torch 2.7+ "
                            "extension such as zstd): not supported",
                            fqn->u.s.ptr, tb);
            goto out;
        }
        if (!path || path->kind != CKPT_KIND_STR || !file_name_ok(path->u.s.ptr, path->u.s.len)) {
            char pb[96];
            ckpt_value_repr(path, pb, sizeof(pb));
            st = meta_fail(err,
                           "the item '%s' names the file %s: not a plain file name inside the "
                           "checkpoint's directory",
                           fqn->u.s.ptr, pb);
            goto out;
        }
        if (!off || off->kind != CKPT_KIND_INT || off->u.i < 0 || !len ||
            len->kind != CKPT_KIND_INT || len->u.i < 0) {
            st = meta_fail(err, "the item '%s' has no non-negative int offset and length",
                           fqn->u.s.ptr);
            goto out;
        }
        e[i].path = path->u.s.ptr;
        e[i].path_len = path->u.s.len;
        e[i].offset = (uint64_t)off->u.i;
        e[i].length = (uint64_t)len->u.i;
    }
    qsort(e, n, sizeof(*e), cmp_sentry);
    for (size_t i = 1; i < n; i++) {
        if (cmp_sentry(&e[i - 1], &e[i]) == 0) {
            st = meta_fail(err, "storage_data names the item '%s' at the same offsets twice",
                           e[i].fqn->u.s.ptr);
            goto out;
        }
    }
    if ((st = open_files(f, e, n, err)) != CKPT_OK)
        goto out;
out:
    if (st != CKPT_OK) {
        free(e);
        return st;
    }
    *out = e;
    *count = n;
    return CKPT_OK;
}

/* ---- items ---------------------------------------------------------------- */

/* Opens the item at bytes [offset, +length) of file `file` as the torch.save
 * file it is; the DCP file keeps and closes it. */
static ckpt_status open_item(ckpt_file *f, uint32_t file, uint64_t offset, uint64_t length,
                             const char *key, ckpt_file **out, ckpt_error *err)
{
    const struct ckpt__dcp_file *df = &f->dcp_files[file];
    char name[160];
    snprintf(name, sizeof(name), "%s@%llu ('%s')", df->name, (unsigned long long)offset,
             key);
    if (f->item_count == f->item_cap) {
        size_t cap = f->item_cap;
        ckpt_file **items = ckpt__array_grow(f->items, &cap, sizeof(*items));
        if (!items)
            return ckpt__nomem(err);
        f->items = items;
        size_t cap2 = f->item_cap;
        const char **names = ckpt__array_grow(f->item_names, &cap2, sizeof(*names));
        if (!names)
            return ckpt__nomem(err);
        f->item_names = names;
        f->item_cap = cap;
    }
    const char *kept = ckpt__arena_strdup(&f->arena, name, strlen(name));
    if (!kept)
        return ckpt__nomem(err);
    ckpt_open_options o = f->opts;
    o.flags &= ~(unsigned)CKPT_OPEN_VERIFY_CRC;
    ckpt_file *item = NULL;
    ckpt_status st = ckpt_open_memory(df->map ? df->map + offset : (const uint8_t *)"",
                                      (size_t)length, &o, &item, err);
    if (st != CKPT_OK) {
        ckpt__error_prefix_record(err, kept);
        return st;
    }
    f->items[f->item_count] = item;
    f->item_names[f->item_count++] = kept;
    *out = item;
    return CKPT_OK;
}

static ckpt_status open_chunk(ckpt_file *f, const ckpt__chunked *ct, ckpt__chunk *c,
                              ckpt_error *err)
{
    ckpt_file *item;
    CKPT_RETURN_IF_ERROR(open_item(f, c->file, c->offset, c->length, ct->name, &item, err));
    const ckpt_value *root = item->root;
    const ckpt_tensor *t = root && root->kind == CKPT_KIND_TENSOR ? root->u.tensor.t : NULL;
    const char *why = NULL;
    if (!t || t->layout != CKPT_LAYOUT_STRIDED || !t->storage)
        why = "is not a strided tensor with data";
    else if (t->dtype != ct->dtype)
        why = "has another dtype than the tensor's";
    else if (t->ndim != ct->ndim)
        why = "has another number of dimensions than the tensor's";
    for (uint32_t d = 0; !why && d < t->ndim; d++)
        if (t->shape[d] != c->sizes[d])
            why = "has another shape than the chunk's sizes";
    if (why)
        return ckpt__fail(err, CKPT_ERR_FORMAT, f->item_names[f->item_count - 1], CKPT_NO_OFFSET,
                          "the chunk of '%s' %s", ct->name, why);
    c->item = item;
    c->src = t;
    return CKPT_OK;
}

/* ---- chunks ---------------------------------------------------------------- */

static int cmp_chunk(const void *pa, const void *pb)
{
    const ckpt__chunk *a = pa, *b = pb;
    for (uint32_t d = 0; d < a->ndim; d++)
        if (a->offsets[d] != b->offsets[d])
            return a->offsets[d] < b->offsets[d] ? -1 : 1;
    return 0;
}

static bool boxes_overlap(const ckpt__chunk *a, const ckpt__chunk *b, uint32_t nd)
{
    for (uint32_t d = 0; d < nd; d++) {
        int64_t lo = a->offsets[d] > b->offsets[d] ? a->offsets[d] : b->offsets[d];
        int64_t ea = a->offsets[d] + a->sizes[d], eb = b->offsets[d] + b->sizes[d];
        if (lo >= (ea < eb ? ea : eb))
            return false;
    }
    return true;
}

static void box_text(const ckpt__chunk *c, uint32_t nd, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = 0;
    for (uint32_t d = 0; d < nd && n + 48 < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld:%lld", d ? ", " : "[",
                              (long long)c->offsets[d], (long long)(c->offsets[d] + c->sizes[d]));
    if (nd == 0)
        snprintf(buf, cap, "[]");
    else if (n + 2 < cap)
        snprintf(buf + n, cap - n, "]");
}

/*
 * The chunks (sorted) cover the tensor exactly once: no two overlap (a
 * sweep along dimension 0 compares a chunk only with those still open
 * there, bounded in work) and their elements add up to the tensor's.
 */
static ckpt_status check_cover(const ckpt__chunked *ct, uint64_t numel, ckpt_error *err)
{
    uint32_t nd = ct->ndim;
    uint64_t total = 0;
    for (size_t i = 0; i < ct->count; i++) {
        uint64_t v = 1;
        for (uint32_t d = 0; d < nd; d++)
            v *= (uint64_t)ct->chunks[i].sizes[d]; /* inside the tensor: <= numel */
        total += v; /* count <= max_tensor_paths, each <= numel < 2^63 */
    }
    char a[128], b[128];
    size_t *open = malloc((ct->count ? ct->count : 1) * sizeof(*open));
    if (!open)
        return ckpt__nomem(err);
    size_t nopen = 0;
    uint64_t work = 0, budget = (uint64_t)ct->count * 64 + 100000000u;
    ckpt_status st = CKPT_OK;
    for (size_t i = 0; i < ct->count && st == CKPT_OK; i++) {
        const ckpt__chunk *c = &ct->chunks[i];
        size_t keep = 0;
        for (size_t k = 0; k < nopen; k++) {
            const ckpt__chunk *o = &ct->chunks[open[k]];
            if (nd && o->offsets[0] + o->sizes[0] <= c->offsets[0])
                continue; /* closed before c starts */
            open[keep++] = open[k];
            if (++work > budget) {
                st = ckpt__fail(err, CKPT_ERR_LIMIT, ct->name, CKPT_NO_OFFSET,
                                "too many chunks side by side to check for overlaps (%zu)",
                                ct->count);
                break;
            }
            if (boxes_overlap(o, c, nd)) {
                box_text(o, nd, a, sizeof(a));
                box_text(c, nd, b, sizeof(b));
                st = ckpt__fail(err, CKPT_ERR_FORMAT, ct->name, CKPT_NO_OFFSET,
                                "the chunks %s and %s overlap", a, b);
                break;
            }
        }
        nopen = keep;
        open[nopen++] = i;
    }
    free(open);
    if (st == CKPT_OK && total != numel)
        st = ckpt__fail(err, CKPT_ERR_FORMAT, ct->name, CKPT_NO_OFFSET,
                        "the chunks cover %llu of the tensor's %llu elements (a gap)",
                        (unsigned long long)total, (unsigned long long)numel);
    return st;
}

/* A TensorStorageMetadata as a tensor over its chunks. */
static ckpt_status make_tensor(ckpt_file *f, const ckpt_value *key, const ckpt_value *md,
                               const sentry *e, size_t ne, bool *used, ckpt_value **out,
                               ckpt_error *err)
{
    const char *name = key->u.s.ptr;
    ckpt__arena *a = &f->arena;
    const ckpt_value *props = field(md, "properties"), *size = field(md, "size");
    const ckpt_value *chunks = field(md, "chunks");
    if (classify(props) != DCP_PROPERTIES || props->kind != CKPT_KIND_OBJECT)
        return meta_fail(err, "'%s' has no TensorProperties", name);
    const ckpt_value *state = props->u.obj.state, *dtype = NULL, *rg = NULL;
    if (state && state->kind == CKPT_KIND_TUPLE && state->u.seq.len >= 3) {
        dtype = state->u.seq.items[0];
        rg = state->u.seq.items[2];
    } else if (is_map(state)) {
        dtype = ckpt_value_get(state, "dtype");
        rg = ckpt_value_get(state, "requires_grad");
    }
    if (!dtype || dtype->kind != CKPT_KIND_DTYPE)
        return meta_fail(err, "the properties of '%s' name no dtype", name);
    if (!is_seq(size))
        return meta_fail(err, "'%s' has no size", name);
    if (size->u.seq.len > f->opts.limits.max_ndim || size->u.seq.len > 64)
        return ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, CKPT_NO_OFFSET,
                          "'%s' has %zu dimensions (limit %llu)", name, size->u.seq.len,
                          (unsigned long long)f->opts.limits.max_ndim);
    uint32_t nd = (uint32_t)size->u.seq.len;
    ckpt_tensor *t = ckpt__arena_alloc(a, sizeof(*t));
    ckpt__storage *s = ckpt__arena_alloc(a, sizeof(*s));
    ckpt__chunked *ct = ckpt__arena_alloc(a, sizeof(*ct));
    int64_t *stride = ckpt__arena_alloc(a, (nd ? nd : 1) * sizeof(int64_t));
    if (!t || !s || !ct || !stride)
        return ckpt__nomem(err);
    CKPT_RETURN_IF_ERROR(int_list(f, size, nd, "the size", name, &t->shape, err));
    t->dtype = ckpt_value_dtype(dtype);
    t->ndim = nd;
    t->stride = stride;
    t->layout = CKPT_LAYOUT_STRIDED;
    t->requires_grad = rg && rg->kind == CKPT_KIND_BOOL && rg->u.b;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, name, CKPT_NO_OFFSET, err));
    int64_t st_acc = 1;
    for (uint32_t d = nd; d-- > 0;) {
        stride[d] = st_acc;
        st_acc *= t->shape[d] ? t->shape[d] : 1;
    }
    s->dtype = t->dtype;
    s->nbytes = ckpt__tensor_nbytes(t);
    s->key = name;
    s->record = name;
    s->location = "cpu";
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    s->chunked = ct;
    CKPT_RETURN_IF_ERROR(ckpt__file_add_storage(f, s, err));
    t->storage = s;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, name, CKPT_NO_OFFSET, err));

    if (!chunks || chunks->kind != CKPT_KIND_LIST)
        return meta_fail(err, "'%s' has no list of chunks", name);
    size_t nc = chunks->u.seq.len;
    ct->name = name;
    ct->ndim = nd;
    ct->shape = t->shape;
    ct->dtype = t->dtype;
    ct->count = nc;
    ct->chunks = ckpt__arena_alloc(a, (nc ? nc : 1) * sizeof(*ct->chunks));
    if (!ct->chunks)
        return ckpt__nomem(err);
    for (size_t i = 0; i < nc; i++) {
        const ckpt_value *cm = chunks->u.seq.items[i];
        ckpt__chunk *c = &ct->chunks[i];
        c->ndim = nd;
        if (classify(cm) != DCP_CHUNK_MD || cm->kind != CKPT_KIND_OBJECT)
            return meta_fail(err, "chunk %zu of '%s' is not a ChunkStorageMetadata", i, name);
        const ckpt_value *ov = field(cm, "offsets");
        CKPT_RETURN_IF_ERROR(int_list(f, ov, nd, "chunk offsets", name, &c->offsets, err));
        CKPT_RETURN_IF_ERROR(int_list(f, field(cm, "sizes"), nd, "chunk sizes", name, &c->sizes,
                                      err));
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t end;
            if (!ckpt__add_u64((uint64_t)c->offsets[d], (uint64_t)c->sizes[d], &end) ||
                end > (uint64_t)t->shape[d])
                return meta_fail(err,
                                 "chunk %zu of '%s' runs past the tensor in dimension %u "
                                 "(offset %lld, size %lld, tensor size %lld)",
                                 i, name, d, (long long)c->offsets[d], (long long)c->sizes[d],
                                 (long long)t->shape[d]);
        }
        if (nd && c->sizes[0] > ct->max_extent0)
            ct->max_extent0 = c->sizes[0];
        const sentry *se = find_sentry(e, ne, key, ov);
        if (!se)
            return meta_fail(err, "chunk %zu of '%s' has no entry in storage_data", i, name);
        used[se - e] = true;
        c->file = se->file;
        c->offset = se->offset;
        c->length = se->length;
    }
    qsort(ct->chunks, nc, sizeof(*ct->chunks), cmp_chunk);
    CKPT_RETURN_IF_ERROR(check_cover(ct, t->numel, err));
    ckpt_value *tv = ckpt__value_new(a, CKPT_KIND_TENSOR);
    if (!tv)
        return ckpt__nomem(err);
    tv->u.tensor.t = t;
    *out = tv;
    return CKPT_OK;
}

/* ---- the tree ------------------------------------------------------------- */

/* Where dcp_to_torch_save puts a value: set_element of torch's
 * _nested_dict (text keys make dicts, int keys lists padded with None). */
static ckpt_status tree_put(ckpt_file *f, const ckpt_value *path, const ckpt_value *key,
                            ckpt_value *val, size_t max_index, ckpt_error *err)
{
    ckpt__arena *a = &f->arena;
    const char *name = key->u.s.ptr;
    size_t n = path->u.seq.len;
    if (n == 0)
        return meta_fail(err, "planner_data gives '%s' an empty path", name);
    ckpt_value *cur = f->root;
    for (size_t i = 0; i < n; i++) {
        ckpt_value *k = path->u.seq.items[i];
        bool last = i + 1 == n;
        ckpt_value *next = NULL;
        if (!last) {
            const ckpt_value *nk = path->u.seq.items[i + 1];
            next = ckpt__value_new(a, nk && nk->kind == CKPT_KIND_INT ? CKPT_KIND_LIST
                                                                      : CKPT_KIND_DICT);
            if (!next)
                return ckpt__nomem(err);
        }
        ckpt_value *child = last ? val : next;
        if (cur->kind == CKPT_KIND_DICT) {
            if (!k || k->kind != CKPT_KIND_STR)
                return meta_fail(err, "planner_data's path of '%s' has a non-text key in a dict",
                                 name);
            ckpt_value *have = last ? NULL : ckpt__dict_lookup(cur, k);
            if (have) {
                child = have;
            } else if (!ckpt__dict_set(a, cur, k, child)) {
                return ckpt__nomem(err);
            }
        } else if (cur->kind == CKPT_KIND_LIST) {
            if (!k || k->kind != CKPT_KIND_INT || k->u.i < 0 || (uint64_t)k->u.i >= max_index)
                return meta_fail(err,
                                 "planner_data's path of '%s' has an index that is not an int "
                                 "from 0 to the number of items",
                                 name);
            size_t idx = (size_t)k->u.i;
            while (cur->u.seq.len <= idx) {
                ckpt_value *none = ckpt__value_new(a, CKPT_KIND_NONE);
                if (!none || !ckpt__seq_append(a, cur, none))
                    return ckpt__nomem(err);
            }
            ckpt_value *have = cur->u.seq.items[idx];
            if (!last && have && have->kind != CKPT_KIND_NONE)
                child = have;
            else
                cur->u.seq.items[idx] = child;
        } else {
            return meta_fail(err, "planner_data's path of '%s' goes through a value that is not "
                                  "a dict or list", name);
        }
        cur = child;
    }
    return CKPT_OK;
}

ckpt_status ckpt__open_dcp(ckpt_file *f, ckpt_error *err)
{
    ckpt_status st;
    sentry *e = NULL;
    bool *used = NULL;
    size_t ne = 0;
    if (f->map_size > f->opts.limits.max_pickle_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, 0, "pickle is %llu bytes (limit %llu)",
                          (unsigned long long)f->map_size,
                          (unsigned long long)f->opts.limits.max_pickle_bytes);
    ckpt_value *meta = NULL;
    CKPT_RETURN_IF_ERROR(ckpt__dcp_unpickle(f->map, (size_t)f->map_size, &f->opts.limits,
                                            &f->arena, &meta, &f->pickle_protocol, err));
    if (classify(meta) != DCP_METADATA || meta->kind != CKPT_KIND_OBJECT)
        return meta_fail(err, "the pickle is not a DCP Metadata object");
    const ckpt_value *sdm = field(meta, "state_dict_metadata");
    const ckpt_value *planner = field(meta, "planner_data");
    if (!is_map(sdm))
        return meta_fail(err, "state_dict_metadata is not a dict");
    if (!is_none(planner) && !is_map(planner))
        return meta_fail(err, "planner_data is neither None nor a dict");
    if (sdm->u.dict.len > f->opts.limits.max_tensor_paths)
        return ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, CKPT_NO_OFFSET,
                          "state_dict_metadata holds %zu keys (limit max_tensor_paths %llu)",
                          sdm->u.dict.len, (unsigned long long)f->opts.limits.max_tensor_paths);
    CKPT_RETURN_IF_ERROR(read_storage_data(f, field(meta, "storage_data"), &e, &ne, err));
    f->open_chunk = open_chunk;
    f->dcp_items = ckpt__arena_alloc(&f->arena, (ne ? ne : 1) * sizeof(*f->dcp_items));
    if (!f->dcp_items) {
        free(e);
        return ckpt__nomem(err);
    }
    for (size_t i = 0; i < ne; i++)
        f->dcp_items[i] = (struct ckpt__dcp_item){e[i].fqn->u.s.ptr, e[i].file, e[i].offset,
                                                  e[i].length};
    f->dcp_item_count = ne;
    used = calloc(ne ? ne : 1, sizeof(*used));
    f->root = ckpt__value_new(&f->arena, CKPT_KIND_DICT);
    if (!used || !f->root) {
        st = ckpt__nomem(err);
        goto out;
    }
    uint64_t chunk_total = 0;
    for (size_t i = 0; i < sdm->u.dict.len; i++) {
        ckpt_value *key = sdm->u.dict.keys[i];
        const ckpt_value *md = sdm->u.dict.vals[i];
        ckpt_value *val = NULL;
        if (!key || key->kind != CKPT_KIND_STR) {
            st = meta_fail(err, "state_dict_metadata has a key that is not text");
            goto out;
        }
        dcp_class c = classify(md);
        if (c == DCP_TENSOR_MD && md->kind == CKPT_KIND_OBJECT) {
            const ckpt_value *chunks = field(md, "chunks");
            chunk_total += chunks && is_seq(chunks) ? chunks->u.seq.len : 0;
            if (chunk_total > f->opts.limits.max_tensor_paths) {
                st = ckpt__fail(err, CKPT_ERR_LIMIT, META_RECORD, CKPT_NO_OFFSET,
                                "more than %llu chunks (limit max_tensor_paths)",
                                (unsigned long long)f->opts.limits.max_tensor_paths);
                goto out;
            }
            if ((st = make_tensor(f, key, md, e, ne, used, &val, err)) != CKPT_OK)
                goto out;
        } else if (c == DCP_BYTES_MD && md->kind == CKPT_KIND_OBJECT) {
            const sentry *se = find_sentry(e, ne, key, NULL);
            if (!se) {
                st = meta_fail(err, "the value '%s' has no entry in storage_data", key->u.s.ptr);
                goto out;
            }
            used[se - e] = true;
            ckpt_file *item;
            if ((st = open_item(f, se->file, se->offset, se->length, key->u.s.ptr, &item, err)) !=
                CKPT_OK)
                goto out;
            val = item->root;
        } else {
            st = meta_fail(err, "'%s' is neither TensorStorageMetadata nor BytesStorageMetadata",
                           key->u.s.ptr);
            goto out;
        }
        const ckpt_value *path = is_map(planner) ? ckpt__dict_lookup(planner, key) : NULL;
        if (path && !is_seq(path)) {
            st = meta_fail(err, "planner_data's path of '%s' is not a tuple", key->u.s.ptr);
            goto out;
        }
        if (path) {
            st = tree_put(f, path, key, val, sdm->u.dict.len, err);
        } else if (!ckpt__dict_set(&f->arena, f->root, key, val)) {
            st = ckpt__nomem(err);
        }
        if (st != CKPT_OK)
            goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        if (!used[i]) {
            st = meta_fail(err, "storage_data names an item of '%s' that no key of "
                                "state_dict_metadata has", e[i].fqn->u.s.ptr);
            goto out;
        }
    }
    st = CKPT_OK;
out:
    free(used);
    free(e);
    return st;
}
