/*
 * file.c - the handle of an open checkpoint: its accessors, the named
 * tensor list and verification (format/open.c opens it).
 */
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- close -------------------------------------------------------------- */

void ckpt_close(ckpt_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->storage_count; i++)
        free(f->storages[i]->owned);
    for (size_t i = 0; i < f->shard_count; i++)
        ckpt_close(f->shards[i]);
    free(f->shards);
    for (size_t i = 0; i < f->item_count; i++)
        ckpt_close(f->items[i]);
    free(f->items);
    free(f->item_names);
    for (size_t i = 0; i < f->dcp_file_count; i++) {
        if (f->dcp_files[i].map && f->dcp_files[i].size)
            munmap((void *)(uintptr_t)f->dcp_files[i].map, f->dcp_files[i].size);
    }
    free(f->dcp_files);
    free(f->storages);
    free(f->tensors);
    free(f->name_index);
    free(f->records);
    ckpt__zip_close(&f->zip);
    ckpt__arena_free(&f->arena);
    if (f->mapped && f->map_size)
        munmap((void *)(uintptr_t)f->map, f->map_size);
    if (f->has_fd)
        close(f->fd);
    free(f);
}

/* ---- accessors ---------------------------------------------------------- */

static uint64_t pow2_alignment(uint64_t off)
{
    uint64_t a = 1;
    while (a < 4096 && off % (a * 2) == 0)
        a *= 2;
    return a;
}

static void file_info(const ckpt_file *f, ckpt_file_info *info)
{
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

void ckpt_file_get_info(const ckpt_file *f, ckpt_file_info *info)
{
    ckpt_file_info full = {.struct_size = sizeof(full)};
    file_info(f, &full);
    ckpt__struct_out(info, &full, sizeof(full));
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
    ckpt_record_info r = {.struct_size = sizeof(r)};
    if (!f->has_zip) {
        r = f->records[i];
    } else {
        const ckpt__zip_entry *e = &f->zip.entries[i];
        memset(&r, 0, sizeof(r));
        r.name = e->name;
        r.header_offset = e->header_offset;
        r.data_offset = e->data_offset;
        r.stored_size = e->comp_size;
        r.size = e->size;
        r.crc32 = e->crc32;
        r.compressed = e->method != 0;
        r.has_crc = true;
    }
    return ckpt__struct_out(info, &r, sizeof(r)) ? CKPT_OK : CKPT_ERR_INVALID_ARG;
}

/* ---- storages ------------------------------------------------------------ */

ckpt_status ckpt__file_add_storage(ckpt_file *f, ckpt__storage *s, ckpt_error *err)
{
    if (f->storage_count == f->storage_cap) {
        size_t cap = f->storage_cap ? f->storage_cap * 2 : 16;
        ckpt__storage **p = realloc(f->storages, cap * sizeof(*p));
        if (!p)
            return ckpt__nomem(err);
        f->storages = p;
        f->storage_cap = cap;
    }
    s->index = (uint32_t)f->storage_count;
    s->owner = f;
    f->storages[f->storage_count++] = s;
    return CKPT_OK;
}

ckpt_status ckpt_file_resolve_all(ckpt_file *f, ckpt_error *err)
{
    if (!f)
        return CKPT_INVALID_ARG(err, "NULL argument");
    for (size_t i = 0; i < f->storage_count; i++)
        CKPT_RETURN_IF_ERROR(ckpt__storage_resolve(f, f->storages[i], err));
    return CKPT_OK;
}

/* ---- verification -------------------------------------------------------- */

/* The index check of one part of a sparse tensor: fed by the stream of the
 * record holding it (its bytes [begin, end) there), or, when the part
 * cannot be read that way (not contiguous, not in a zip record, bytes
 * already in memory), read through its storage. */
typedef struct verify_part {
    ckpt__index_check c;
    const char *name;          /* the tensor's */
    size_t record;
    uint64_t begin, end;
    bool swap;                 /* a big-endian record */
    bool direct;               /* read through its storage */
    ckpt_status st;            /* its first problem, kept until its turn */
    ckpt_error err;
} verify_part;

/* A part fed by a record, for sorting by record (then by plan order). */
typedef struct part_ref {
    size_t record, k;
} part_ref;

static int cmp_part_ref(const void *a, const void *b)
{
    const part_ref *x = a, *y = b;
    if (x->record != y->record)
        return x->record < y->record ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

typedef struct verify_stream {
    verify_part *parts;
    const part_ref *refs;      /* the parts fed by this record */
    size_t count;
} verify_stream;

static ckpt_status verify_sink(void *user, uint64_t offset, const uint8_t *p, size_t n,
                               ckpt_error *err)
{
    (void)err; /* a part's problem waits for its turn; the stream goes on */
    verify_stream *v = user;
    for (size_t k = 0; k < v->count; k++) {
        verify_part *vp = &v->parts[v->refs[k].k];
        uint64_t lo = offset > vp->begin ? offset : vp->begin;
        uint64_t hi = offset + n < vp->end ? offset + n : vp->end;
        if (vp->st == CKPT_OK && lo < hi)
            vp->st = ckpt__index_check_bytes(&vp->c, p + (lo - offset), (size_t)(hi - lo),
                                             vp->swap, &vp->err);
    }
    return CKPT_OK;
}

/* Plans the index checks of a sparse tensor's parts. */
static ckpt_status verify_plan_sparse(ckpt_file *f, const ckpt_tensor *t, const char *name,
                                      verify_part **parts, size_t *count, size_t *cap,
                                      ckpt_error *err)
{
    unsigned n = ckpt__index_parts(t);
    for (unsigned i = 0; i < n; i++) {
        const ckpt__storage *s = t->parts[i]->storage;
        const ckpt__storage *root = s && s->base ? s->base : s;
        if (root && root->owner && root->owner != f)
            return CKPT_OK; /* a shard's tensor: the shard's verification checks it */
    }
    for (unsigned i = 0; i < n; i++) {
        if (*count == *cap) {
            verify_part *p = ckpt__array_grow(*parts, cap, sizeof(**parts));
            if (!p)
                return ckpt__nomem(err);
            *parts = p;
        }
        verify_part *vp = &(*parts)[(*count)++];
        memset(vp, 0, sizeof(*vp));
        ckpt__index_check_init(&vp->c, t, i);
        vp->name = name;
        vp->direct = true;
        const ckpt_tensor *p = t->parts[i];
        const ckpt__storage *s = p->storage;
        const ckpt__storage *root = s && s->base ? s->base : s;
        if (root && f->has_zip && root->record_index >= 0 && !root->resolved && p->numel &&
            ckpt__tensor_is_contiguous(p)) {
            vp->direct = false;
            vp->record = (size_t)root->record_index;
            /* inside the record: the view was checked against its storage */
            vp->begin = s->base_offset + (uint64_t)p->storage_offset * ckpt_dtype_size(p->dtype);
            vp->end = vp->begin + ckpt__tensor_nbytes(p);
            vp->swap = root->big_endian;
        }
    }
    return CKPT_OK;
}

/* What resolving a storage checks, without reading or copying its bytes. */
static ckpt_status verify_storage(ckpt_file *f, const ckpt__storage *s, ckpt_error *err)
{
    if (s->base || (s->owner && s->owner != f) || s->record_index >= 0 || s->chunked)
        return CKPT_OK; /* a view of a root checked here; a shard's; a record checked above;
                           chunks, checked as the items they are */
    if (s->file_offset != CKPT_NO_OFFSET) {
        uint64_t end;
        if (!ckpt__add_u64(s->file_offset, s->nbytes, &end) || end > f->map_size)
            return ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                              "storage bytes run past the end of the file");
    } else if (s->nbytes != 0 && !s->resolved) {
        return ckpt__fail(err, CKPT_ERR_FORMAT, s->record, CKPT_NO_OFFSET,
                          "storage '%s' has no data", s->key ? s->key : "?");
    }
    return CKPT_OK;
}

/* Drops the bytes of a storage that verification resolved: verifying keeps
 * nothing that the caller did not ask for. */
static void storage_release(ckpt_file *f, ckpt__storage *s)
{
    if (s->owned && s->record_index >= 0 && f->has_zip &&
        f->zip.entries[s->record_index].method != 0)
        f->inflated_total -= f->zip.entries[s->record_index].size;
    free(s->owned);
    s->owned = NULL;
    s->data = NULL;
    s->resolved = false;
}

/*
 * Every record is read once, in order, in bounded memory (ckpt__zip_stream:
 * deflated ones inflate through a small buffer, never held), its CRC32
 * computed as its bytes pass; the index checks of sparse tensors take their
 * bytes from the same pass. Each tensor object is checked once however
 * many names it has. Nothing stays in memory afterwards: a storage that
 * verification had to read in place (a sparse part that is not contiguous)
 * is released again.
 */
/* Progress over the records of a file and its shards. */
typedef struct verify_progress {
    void (*fn)(void *user, uint64_t done, uint64_t total);
    void *user;
    uint64_t done, total;
} verify_progress;

/* The bytes verification streams: every record, the shards' too. */
static uint64_t verify_total(const ckpt_file *f)
{
    uint64_t t = 0;
    if (f->has_zip)
        for (size_t i = 0; i < f->zip.count; i++)
            t += f->zip.entries[i].size;
    for (size_t i = 0; i < f->shard_count; i++)
        t += verify_total(f->shards[i]);
    for (size_t i = 0; i < f->dcp_file_count; i++)
        t += f->dcp_files[i].size; /* about what its items inflate to */
    return t;
}

static ckpt_status verify_file(ckpt_file *f, verify_progress *prog, ckpt_error *err);

ckpt_status ckpt_file_verify(ckpt_file *f, ckpt_error *err)
{
    if (!f)
        return CKPT_INVALID_ARG(err, "NULL argument");
    return verify_file(f, NULL, err);
}

void ckpt_verify_options_default(ckpt_verify_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
}

ckpt_status ckpt_file_verify_with(ckpt_file *f, const ckpt_verify_options *opts,
                                  ckpt_error *err)
{
    if (!f)
        return CKPT_INVALID_ARG(err, "NULL argument");
    ckpt_verify_options o;
    ckpt_verify_options_default(&o);
    ckpt__struct_in(&o, sizeof(o), opts);
    if (!o.progress)
        return verify_file(f, NULL, err);
    verify_progress vp = {o.progress, o.progress_user, 0, verify_total(f)};
    ckpt_status st = verify_file(f, &vp, err);
    return st;
}

static ckpt_status verify_file(ckpt_file *f, verify_progress *prog, ckpt_error *err)
{
    ckpt_status st = CKPT_OK, tensor_st = CKPT_OK;
    ckpt_error tensor_err;
    ckpt__ptr_set seen = {0};
    verify_part *parts = NULL;
    size_t nparts = 0, parts_cap = 0;
    uint64_t index_bytes = 0;       /* sparse indices to go through */
    part_ref *order = NULL;
    bool *was_resolved = NULL;
    ckpt__ahead ahead;
    ckpt__ahead_init(&ahead, -1, NULL, 0, 0);

    /* Every tensor object once: its view against its storage (checked when
     * the tree was built; again here so verify stands on its own), and the
     * index checks of sparse tensors. Its problem waits for the records'. */
    for (size_t i = 0; i < f->tensor_count && tensor_st == CKPT_OK; i++) {
        ckpt_tensor *t = f->tensors[i].tensor;
        int added = ckpt__ptr_set_add(&seen, t);
        if (added < 0) {
            st = ckpt__nomem(err);
            goto out;
        }
        if (!added)
            continue;
        ckpt_tensor copy = *t;
        tensor_st = ckpt__tensor_validate(&copy, &f->opts.limits, f->tensors[i].name,
                                          CKPT_NO_OFFSET, &tensor_err);
        if (tensor_st == CKPT_OK && t->layout != CKPT_LAYOUT_STRIDED) {
            /* indices that repeat their storage (a stride of 0) are bounded
             * like any values gone through */
            for (unsigned k = 0; k < ckpt__index_parts(t); k++) {
                uint64_t n = ckpt__tensor_nbytes(t->parts[k]);
                index_bytes = index_bytes + n < index_bytes ? UINT64_MAX : index_bytes + n;
            }
            st = ckpt_file_check_output(f, index_bytes, f->tensors[i].name, err);
            if (st == CKPT_OK)
                st = verify_plan_sparse(f, t, f->tensors[i].name, &parts, &nparts, &parts_cap,
                                        err);
            if (st != CKPT_OK)
                goto out;
        }
    }

    if (f->has_zip) {
        /* the parts each record feeds, in record order */
        order = malloc((nparts ? nparts : 1) * sizeof(*order));
        if (!order) {
            st = ckpt__nomem(err);
            goto out;
        }
        size_t streamed = 0;
        for (size_t k = 0; k < nparts; k++) {
            if (!parts[k].direct)
                order[streamed++] = (part_ref){parts[k].record, k};
        }
        qsort(order, streamed, sizeof(*order), cmp_part_ref);
        size_t at = 0;
        /* records go in directory order, file order for torch.save's
         * archives: a cold file is read ahead across them */
        ckpt__ahead_init(&ahead, f->has_fd && f->mapped ? f->fd : -1, f->zip.base, 0,
                         f->zip.size);
        for (size_t i = 0; i < f->zip.count; i++) {
            verify_stream vs = {.parts = parts, .refs = order + at, .count = 0};
            while (at + vs.count < streamed && order[at + vs.count].record == i)
                vs.count++;
            st = ckpt__zip_stream_ahead(&f->zip, i, &f->opts.limits,
                                        vs.count ? verify_sink : NULL, &vs, &ahead, err);
            if (st != CKPT_OK)
                goto out;
            for (size_t k = 0; k < vs.count; k++) {
                verify_part *vp = &parts[vs.refs[k].k];
                if (vp->st == CKPT_OK)
                    vp->st = ckpt__index_check_end(&vp->c, &vp->err);
            }
            at += vs.count;
            if (prog) {
                prog->done += f->zip.entries[i].size;
                prog->fn(prog->user, prog->done, prog->total);
            }
        }
        ckpt__ahead_end(&ahead);
    }
    for (size_t i = 0; i < f->shard_count; i++) {
        st = verify_file(f->shards[i], prog, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, f->records[i].name);
            goto out;
        }
    }
    /* a DCP checkpoint: every item, its chunks opened first */
    if (f->is_dcp && (st = ckpt__chunks_open_all(f, err)) != CKPT_OK)
        goto out;
    for (size_t i = 0; i < f->item_count; i++) {
        st = verify_file(f->items[i], prog, err);
        if (st != CKPT_OK) {
            ckpt__error_prefix_record(err, f->item_names[i]);
            goto out;
        }
    }
    if (tensor_st != CKPT_OK) {
        st = tensor_st;
        if (err)
            *err = tensor_err;
        goto out;
    }

    /* sparse indices, tensor by tensor */
    was_resolved = malloc((f->storage_count ? f->storage_count : 1) * sizeof(*was_resolved));
    if (!was_resolved) {
        st = ckpt__nomem(err);
        goto out;
    }
    for (size_t i = 0; i < f->storage_count; i++)
        was_resolved[i] = f->storages[i]->resolved;
    for (size_t k = 0; k < nparts; k++) {
        verify_part *vp = &parts[k];
        if (vp->direct)
            vp->st = ckpt__index_check_part(&vp->c, &vp->err);
        if (vp->st != CKPT_OK) {
            st = vp->st;
            if (err)
                *err = vp->err;
            ckpt__error_prefix_record(err, vp->name);
            goto out;
        }
    }
    for (size_t i = 0; i < f->storage_count; i++) {
        st = verify_storage(f, f->storages[i], err);
        if (st != CKPT_OK)
            goto out;
    }

out:
    ckpt__ahead_end(&ahead);
    if (was_resolved) {
        for (size_t i = 0; i < f->storage_count; i++) {
            if (!was_resolved[i] && f->storages[i]->resolved)
                storage_release(f, f->storages[i]);
        }
    }
    free(was_resolved);
    free(order);
    free(parts);
    ckpt__ptr_set_free(&seen);
    return st;
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
            return ckpt__nomem(err);
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
        return ckpt__nomem(err);
    t->dtype = s->dtype;
    t->ndim = 1;
    t->shape = dims;
    t->stride = dims + 1;
    dims[0] = (int64_t)(s->nbytes * 8 / ckpt_dtype_bits(s->dtype));
    dims[1] = 1;
    t->storage = s;
    CKPT_RETURN_IF_ERROR(ckpt__tensor_validate(t, &f->opts.limits, s->record, CKPT_NO_OFFSET,
                                               err));
    v->kind = CKPT_KIND_TENSOR;
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
        return ckpt__nomem(err);
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
