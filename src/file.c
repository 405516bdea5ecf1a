/*
 * file.c - opening a checkpoint: mapping, format detection, the handle, the
 * named tensor list, storage resolution and verification.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files from this size on keep their descriptor open (see ckpt_open). */
#define KEEP_FD_MIN ((uint64_t)16 << 20)

const char *ckpt_format_name(ckpt_format format)
{
    switch (format) {
    case CKPT_FORMAT_TORCH_ZIP: return "torch-zip";
    case CKPT_FORMAT_TORCH_LEGACY: return "torch-legacy";
    case CKPT_FORMAT_SAFETENSORS: return "safetensors";
    case CKPT_FORMAT_PICKLE: return "pickle";
    case CKPT_FORMAT_SHARDED: return "sharded";
    case CKPT_FORMAT_UNKNOWN: break;
    }
    return "unknown";
}

/* ---- format detection -------------------------------------------------- */

static bool looks_like_safetensors(const uint8_t *p, uint64_t size)
{
    if (size < 10)
        return false;
    /* the header length is checked by the reader, which names the problem */
    return ckpt__le64(p) >= 2 && p[8] == '{';
}

static bool looks_like_tar(const uint8_t *p, uint64_t size)
{
    return size >= 512 && memcmp(p + 257, "ustar", 5) == 0;
}

static ckpt_status detect_and_open(ckpt_file *f, ckpt_error *err)
{
    const uint8_t *p = f->map;
    uint64_t n = f->map_size;
    if (n == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0, "empty file: not a checkpoint");
    if (ckpt__zip_detect(p, n)) {
        f->format = CKPT_FORMAT_TORCH_ZIP;
        return ckpt__open_torch_zip(f, err);
    }
    if (n >= 8 && memcmp(p, "PYTORCH1", 8) == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                          "PyTorch 1.0-preview format (PYTORCH1) is not supported; "
                          "re-save it with a current torch.save");
    if (looks_like_safetensors(p, n)) {
        f->format = CKPT_FORMAT_SAFETENSORS;
        return ckpt__open_safetensors(f, err);
    }
    if (ckpt__sharded_detect(p, n)) {
        f->format = CKPT_FORMAT_SHARDED;
        return ckpt__open_sharded(f, err);
    }
    if (looks_like_tar(p, n))
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                          "pre-0.4 torch tar format is not supported; load and re-save it "
                          "with PyTorch >= 1.6");
    if (p[0] == 0x80 || strchr("(}]).NIJKLFGSVUXacdlpt", p[0]) != NULL) {
        /* A pickle: legacy torch file when its first pickle is the magic number. */
        return ckpt__open_torch_legacy(f, err);
    }
    if (n >= 8 && memcmp(p, "\x89PNG", 4) == 0)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0, "not a checkpoint: a PNG image");
    return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, "", 0,
                      "not a checkpoint: unknown format (first byte 0x%02x)", p[0]);
}

/* ---- open / close ------------------------------------------------------- */

void ckpt_close(ckpt_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->storage_count; i++)
        free(f->storages[i]->owned);
    for (size_t i = 0; i < f->shard_count; i++)
        ckpt_close(f->shards[i]);
    free(f->shards);
    free(f->storages);
    free(f->tensors);
    free(f->name_index);
    free(f->records);
    ckpt__zip_close(&f->zip);
    ckpt__arena_free(&f->arena);
    if (f->mapped && f->map_size)
        munmap((void *)f->map, f->map_size);
    if (f->has_fd)
        close(f->fd);
    free(f);
}

static ckpt_status open_common(ckpt_file *f, const ckpt_open_options *opts, ckpt_error *err)
{
    ckpt_open_options_default(&f->opts);
    if (opts) {
        f->opts.flags = opts->flags;
        ckpt__limits_apply(&f->opts.limits, &opts->limits);
    }
    f->pickle_protocol = -1;
    ckpt__arena_init(&f->arena, f->opts.limits.max_value_bytes);
    CKPT_RETURN_IF_ERROR(detect_and_open(f, err));
    CKPT_RETURN_IF_ERROR(ckpt__file_collect_tensors(f, err));
    if (f->opts.flags & CKPT_OPEN_VERIFY_CRC)
        CKPT_RETURN_IF_ERROR(ckpt_file_verify(f, err));
    return CKPT_OK;
}

ckpt_status ckpt_open_memory(const void *data, size_t size, const ckpt_open_options *opts,
                             ckpt_file **out, ckpt_error *err)
{
    if (!out || (!data && size))
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET, "NULL argument");
    *out = NULL;
    ckpt_file *f = calloc(1, sizeof(*f));
    if (!f)
        return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    f->map = data;
    f->map_size = size;
    ckpt_status st = open_common(f, opts, err);
    if (st != CKPT_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return CKPT_OK;
}

ckpt_status ckpt_open(const char *path, const ckpt_open_options *opts, ckpt_file **out,
                      ckpt_error *err)
{
    if (!out || !path)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET, "NULL argument");
    *out = NULL;
    ckpt_status st = CKPT_OK;
    ckpt_file *f = NULL;
    /* O_NONBLOCK: a FIFO named by a (sharded) index must not hang the open */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot stat: %s", strerror(errno));
        goto out;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "is a directory");
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                        "not a regular file (checkpoints are mapped from files)");
        goto out;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        goto out;
    }
    f->path = path;
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            st = ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot map: %s",
                            strerror(errno));
            goto out;
        }
        f->map = m;
        f->map_size = (uint64_t)sb.st_size;
        f->mapped = true;
    }
    /* Kept so that writers read bytes that pass through unchanged with
     * pread (ckpt__out_copy). Only for files big enough for that to pay: a
     * program holding many small checkpoints open holds no descriptors. */
    if ((uint64_t)sb.st_size >= KEEP_FD_MIN) {
        f->fd = fd;
        f->has_fd = true;
        fd = -1;
    }
    st = open_common(f, opts, err);
    f->path = NULL; /* the caller's string: not kept past open */
out:
    if (fd >= 0)
        close(fd);
    if (st != CKPT_OK) {
        ckpt_close(f);
        return st;
    }
    *out = f;
    return CKPT_OK;
}

/* ---- accessors ---------------------------------------------------------- */

static uint64_t pow2_alignment(uint64_t off)
{
    uint64_t a = 1;
    while (a < 4096 && off % (a * 2) == 0)
        a *= 2;
    return a;
}

void ckpt_file_get_info(const ckpt_file *f, ckpt_file_info *info)
{
    if (!info)
        return;
    memset(info, 0, sizeof(*info));
    info->pickle_protocol = -1;
    if (!f)
        return;
    info->format = f->format;
    info->file_size = f->map_size;
    info->prefix = f->prefix;
    info->version = f->version;
    info->byteorder = f->byteorder;
    info->serialization_id = f->serialization_id;
    info->format_version = f->format_version;
    info->storage_alignment = f->storage_alignment;
    info->pickle_protocol = f->pickle_protocol;
    info->legacy_protocol_version = f->legacy_protocol_version;
    info->record_count = ckpt_file_record_count(f);
    info->storage_count = f->storage_count;
    info->tensor_count = f->tensor_count;
    info->big_endian = f->big_endian;
    info->metadata = f->metadata;
    info->shard_count = f->shard_count;
    uint64_t align = 0;
    for (size_t i = 0; i < f->storage_count; i++) {
        const ckpt__storage *s = f->storages[i];
        if (s->base || s->file_offset == CKPT_NO_OFFSET || s->nbytes == 0)
            continue;
        uint64_t a = pow2_alignment(s->file_offset);
        if (align == 0 || a < align)
            align = a;
    }
    info->data_alignment = align;
}

const ckpt_value *ckpt_file_root(const ckpt_file *f) { return f ? f->root : NULL; }
size_t ckpt_file_tensor_count(const ckpt_file *f) { return f ? f->tensor_count : 0; }

const ckpt_tensor *ckpt_file_tensor(const ckpt_file *f, size_t i, const char **name)
{
    if (!f || i >= f->tensor_count) {
        if (name)
            *name = NULL;
        return NULL;
    }
    if (name)
        *name = f->tensors[i].name;
    return f->tensors[i].tensor;
}

static uint64_t hash_name(const ckpt_file *f, const char *s)
{
    return ckpt__hash_keyed(f, s, strlen(s));
}

const ckpt_tensor *ckpt_file_find_tensor(const ckpt_file *f, const char *name)
{
    if (!f || !name || !f->name_index_cap)
        return NULL;
    size_t mask = f->name_index_cap - 1;
    for (size_t slot = hash_name(f, name) & mask;; slot = (slot + 1) & mask) {
        uint32_t e = f->name_index[slot];
        if (e == 0)
            return NULL;
        if (strcmp(f->tensors[e - 1].name, name) == 0)
            return f->tensors[e - 1].tensor;
    }
}

size_t ckpt_file_record_count(const ckpt_file *f)
{
    if (!f)
        return 0;
    return f->has_zip ? f->zip.count : f->record_count;
}

ckpt_status ckpt_file_record(const ckpt_file *f, size_t i, ckpt_record_info *info)
{
    if (!f || !info || i >= ckpt_file_record_count(f))
        return CKPT_ERR_INVALID_ARG;
    if (!f->has_zip) {
        *info = f->records[i];
        return CKPT_OK;
    }
    const ckpt__zip_entry *e = &f->zip.entries[i];
    memset(info, 0, sizeof(*info));
    info->name = e->name;
    info->header_offset = e->header_offset;
    info->data_offset = e->data_offset;
    info->stored_size = e->comp_size;
    info->size = e->size;
    info->crc32 = e->crc32;
    info->compressed = e->method != 0;
    info->has_crc = true;
    return CKPT_OK;
}

/* ---- storages ------------------------------------------------------------ */

ckpt_status ckpt__file_add_storage(ckpt_file *f, ckpt__storage *s, ckpt_error *err)
{
    if (f->storage_count == f->storage_cap) {
        size_t cap = f->storage_cap ? f->storage_cap * 2 : 16;
        ckpt__storage **p = realloc(f->storages, cap * sizeof(*p));
        if (!p)
            return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        f->storages = p;
        f->storage_cap = cap;
    }
    s->index = (uint32_t)f->storage_count;
    s->owner = f;
    f->storages[f->storage_count++] = s;
    return CKPT_OK;
}

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

ckpt_status ckpt_file_resolve_all(ckpt_file *f, ckpt_error *err)
{
    if (!f)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET, "NULL argument");
    for (size_t i = 0; i < f->storage_count; i++)
        CKPT_RETURN_IF_ERROR(ckpt__storage_resolve(f, f->storages[i], err));
    return CKPT_OK;
}

ckpt_status ckpt_file_verify(ckpt_file *f, ckpt_error *err)
{
    if (!f)
        return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET, "NULL argument");
    if (f->has_zip) {
        for (size_t i = 0; i < f->zip.count; i++) {
            /* checking a deflated record inflates it (for a while) */
            const ckpt__zip_entry *e = &f->zip.entries[i];
            uint64_t total;
            if (e->method != 0 && (!ckpt__add_u64(f->inflated_total, e->size, &total) ||
                                   total > f->opts.limits.max_total_inflated_bytes))
                return ckpt__fail(err, CKPT_ERR_LIMIT, e->name, CKPT_NO_OFFSET,
                                  "checking this record would hold %llu inflated bytes "
                                  "(limit max_total_inflated_bytes %llu)",
                                  (unsigned long long)(f->inflated_total + e->size),
                                  (unsigned long long)f->opts.limits.max_total_inflated_bytes);
            CKPT_RETURN_IF_ERROR(ckpt__zip_check_crc(&f->zip, i, &f->opts.limits, err));
        }
    }
    for (size_t i = 0; i < f->shard_count; i++) {
        ckpt_status st = ckpt_file_verify(f->shards[i], err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, f->records[i].name);
            return st;
        }
    }
    /* Every tensor was checked against its storage when the tree was built;
     * check again here so verify stands on its own, then touch the data. */
    for (size_t i = 0; i < f->tensor_count; i++) {
        ckpt_tensor *t = f->tensors[i].tensor;
        ckpt_tensor copy = *t;
        CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(&copy, &f->opts.limits, f->tensors[i].name,
                                                   CKPT_NO_OFFSET, err));
        if (t->layout != CKPT_LAYOUT_STRIDED) {
            ckpt_status st = ckpt__sparse_check(f, t, err);
            if (st != CKPT_OK) {
                ckpt__error_prefix_record(err, f->tensors[i].name);
                return st;
            }
        }
    }
    return ckpt_file_resolve_all(f, err);
}

/* ---- the named tensor list --------------------------------------------- */

const ckpt_value *ckpt_file_tensor_value(const ckpt_file *f, size_t i)
{
    if (!f || i >= f->tensor_count)
        return NULL;
    return f->tensors[i].value;
}

static ckpt_status add_tensor(ckpt_file *f, const char *name_text, ckpt_value *v, ckpt_error *err)
{
    const ckpt_limits *lim = &f->opts.limits;
    /* The name index counts in uint32_t. */
    if (f->tensor_count >= lim->max_tensor_paths || f->tensor_count >= UINT32_MAX - 1)
        return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "more than %llu tensor paths (limit max_tensor_paths): a tensor is "
                          "named once per path to it, and containers shared through the "
                          "pickle memo multiply paths (at '%.200s')",
                          (unsigned long long)lim->max_tensor_paths, name_text);
    size_t len = strlen(name_text);
    if (len + 1 > lim->max_tensor_name_bytes - f->tensor_name_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, "", CKPT_NO_OFFSET,
                          "tensor names take more than %llu bytes (limit "
                          "max_tensor_name_bytes) at '%.200s'",
                          (unsigned long long)lim->max_tensor_name_bytes, name_text);
    if (f->tensor_count == f->tensor_cap) {
        size_t cap = f->tensor_cap ? f->tensor_cap * 2 : 64;
        ckpt__tensor_ref *p = realloc(f->tensors, cap * sizeof(*p));
        if (!p)
            return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        f->tensors = p;
        f->tensor_cap = cap;
    }
    const char *name = ckpt__arena_strdup(&f->arena, name_text, len);
    if (!name)
        return ckpt__fail(err, ckpt__arena_over_limit(&f->arena, len + 1)
                                   ? CKPT_ERR_LIMIT : CKPT_ERR_NOMEM,
                          "", CKPT_NO_OFFSET, "no memory for tensor names");
    f->tensors[f->tensor_count].name = name;
    f->tensors[f->tensor_count].tensor = v->u.tensor.t;
    f->tensors[f->tensor_count].value = v;
    f->tensor_count++;
    f->tensor_name_bytes += len + 1;
    return CKPT_OK;
}

/* torch.save(storage) pickles a bare storage: present it as a 1-D tensor
 * over all of its elements, as torch.load gives a TypedStorage. */
static ckpt_status storage_to_tensor(ckpt_file *f, ckpt_value *v, ckpt_error *err)
{
    ckpt__storage *s = v->u.storage;
    ckpt__arena *a = &f->arena;
    ckpt_tensor *t = ckpt__arena_alloc(a, sizeof(*t));
    int64_t *dims = ckpt__arena_alloc(a, 2 * sizeof(int64_t));
    if (!t || !dims)
        return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    t->dtype = s->dtype;
    t->ndim = 1;
    t->shape = dims;
    t->stride = dims + 1;
    dims[0] = (int64_t)(s->nbytes * 8 / ckpt_dtype_bits(s->dtype));
    dims[1] = 1;
    t->storage = s;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, s->record, CKPT_NO_OFFSET,
                                               err));
    v->kind = CKPT_TENSOR;
    v->u.tensor.t = t;
    v->u.tensor.state = NULL;
    return CKPT_OK;
}

static ckpt_status collect_one(void *user, const char *name, const ckpt_value *cv,
                               ckpt_error *err)
{
    ckpt_file *f = user;
    ckpt_value *v = (ckpt_value *)(uintptr_t)cv; /* the file's own tree */
    if (v->kind == CKPT__KIND_STORAGE)
        CKPT_RETURN_IF_ERROR(storage_to_tensor(f, v, err));
    return add_tensor(f, name, v, err);
}

ckpt_status ckpt__file_collect_tensors(ckpt_file *f, ckpt_error *err)
{
    /* Naming follows every path, so a container shared k times is walked k
     * times; sharing nested n deep makes 2^n paths from a few hundred bytes.
     * The names are bounded by max_tensor_paths and max_tensor_name_bytes;
     * the steps of the walk (containers entered, children looked at) by a
     * generous multiple of the tree's size and of the paths allowed. */
    const ckpt_limits *lim = &f->opts.limits;
    uint64_t steps = UINT64_C(10000000) + f->arena.used / 4, paths_steps;
    if (!ckpt__mul_u64(lim->max_tensor_paths, 4, &paths_steps) ||
        !ckpt__add_u64(steps, paths_steps, &steps))
        steps = UINT64_MAX;
    uint64_t max_name = lim->max_tensor_name_bytes ? lim->max_tensor_name_bytes - 1 : 0;
    ckpt__walk_bounds b = {.max_nesting = lim->max_nesting,
                           .max_steps = steps,
                           .max_name_len = max_name < SIZE_MAX ? (size_t)max_name : SIZE_MAX};
    CKPT_RETURN_IF_ERROR(ckpt__walk_named_ex(f->root, &b, collect_one, NULL, f, err));
    size_t cap = 16;
    while (cap < f->tensor_count * 2)
        cap *= 2;
    f->name_index = calloc(cap, sizeof(uint32_t));
    if (!f->name_index)
        return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    f->name_index_cap = cap;
    for (size_t i = 0; i < f->tensor_count; i++) {
        size_t slot = hash_name(f, f->tensors[i].name) & (cap - 1);
        bool dup = false;
        while (f->name_index[slot]) {
            if (strcmp(f->tensors[f->name_index[slot] - 1].name, f->tensors[i].name) == 0) {
                dup = true; /* the first one keeps the name */
                break;
            }
            slot = (slot + 1) & (cap - 1);
        }
        if (!dup)
            f->name_index[slot] = (uint32_t)(i + 1);
    }
    return CKPT_OK;
}
