/*
 * output.c - what the tensors of a file may make when they are written out,
 * copied dense or gone through value by value.
 *
 * A view says how to read its storage, not how many bytes it stores: torch
 * saves torch.zeros(1).expand(10**6, 10**6) as its one-element storage and
 * the stride (0, 0), a file of 700 bytes that describes 4 TB. Everything
 * that materialises views (the safetensors writer, which writes each one
 * contiguous; casts, which make a contiguous copy; a storage written per
 * legacy storage view; dense copies of sparse tensors; ckpt_tensor_copy;
 * comparing values) is held to max_output_ratio times what the files it
 * reads hold, plus CKPT__OUTPUT_SLACK so that small files always pass. The
 * check comes first, before anything is allocated or written.
 *
 * Loading into a C model is not counted: what it fills is the model's own
 * memory, sized by the caller.
 */
#include "core.h"

#include <stdlib.h>

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    uint64_t r;
    return ckpt__add_u64(a, b, &r) ? r : UINT64_MAX;
}

static uint64_t sat_mul(uint64_t a, uint64_t b)
{
    uint64_t r;
    return ckpt__mul_u64(a, b, &r) ? r : UINT64_MAX;
}

uint64_t ckpt__file_content(const ckpt_file *f)
{
    uint64_t n = f->map_size;
    for (size_t i = 0; f->has_zip && i < f->zip.count; i++) {
        const ckpt__zip_entry *e = &f->zip.entries[i];
        if (e->method != 0 && e->size > e->comp_size)
            n = sat_add(n, e->size - e->comp_size);
    }
    for (size_t i = 0; i < f->shard_count; i++)
        n = sat_add(n, f->shards[i]->content_bytes);
    for (size_t i = 0; i < f->dcp_file_count; i++)
        n = sat_add(n, f->dcp_files[i].size);
    return n;
}

const char *ckpt__file_tensor_name(const ckpt_file *f, const ckpt_tensor *t)
{
    for (size_t i = 0; f && t && i < f->tensor_count; i++) {
        if (f->tensors[i].tensor == t)
            return f->tensors[i].name;
    }
    return NULL;
}

static uint64_t file_allowed(const ckpt_file *f)
{
    return sat_mul(f->opts.limits.max_output_ratio, f->content_bytes);
}

static ckpt_status output_fail(ckpt_error *err, const char *what, uint64_t bytes, uint64_t held,
                               uint64_t ratio, uint64_t largest)
{
    return ckpt__fail(err, CKPT_ERR_LIMIT, what ? what : "", CKPT_NO_OFFSET,
                      "would make %llu bytes from %llu bytes of input, more than "
                      "max_output_ratio allows (%llu times the input, plus 64 MiB); this tensor "
                      "makes %llu of them (a view that repeats its storage, a stride of 0?): "
                      "nothing was made; raise max_output_ratio to allow it",
                      (unsigned long long)bytes, (unsigned long long)held,
                      (unsigned long long)ratio, (unsigned long long)largest);
}

ckpt_status ckpt_file_check_output(const ckpt_file *f, uint64_t bytes, const char *what,
                                   ckpt_error *err)
{
    if (!f)
        return CKPT_INVALID_ARG(err, "NULL argument");
    if (bytes <= sat_add(file_allowed(f), CKPT__OUTPUT_SLACK))
        return CKPT_OK;
    return output_fail(err, what, bytes, f->content_bytes, f->opts.limits.max_output_ratio, bytes);
}

/* The file whose bytes s gives (a cast's source's), or NULL for caller memory. */
static const ckpt_file *source_of(const ckpt__storage **s)
{
    while (*s && (*s)->cast_src)
        *s = (*s)->cast_src->storage;
    if (!*s)
        return NULL;
    const ckpt__storage *root = (*s)->base ? (*s)->base : *s;
    return root->owner;
}

static void add(ckpt__output_budget *b, const ckpt_tensor *t, const ckpt__storage *s,
                uint64_t bytes)
{
    const ckpt_file *f = source_of(&s);
    if (!f || b->failed)
        return;
    int added = ckpt__ptr_set_add(&b->files, f);
    if (added < 0) {
        b->failed = true;
        return;
    }
    if (added) {
        b->allowed = sat_add(b->allowed, file_allowed(f));
        b->held = sat_add(b->held, f->content_bytes);
    }
    b->made = sat_add(b->made, bytes);
    if (bytes >= b->largest) {
        b->largest = bytes;
        b->largest_tensor = t;
        b->largest_storage = s;
        b->largest_file = f;
    }
}

void ckpt__output_add_tensor(ckpt__output_budget *b, const ckpt_tensor *t, uint64_t bytes)
{
    if (t && t->storage)
        add(b, t, t->storage, bytes);
}

void ckpt__output_add_storage(ckpt__output_budget *b, const ckpt__storage *s, uint64_t bytes)
{
    if (s)
        add(b, s->cast_src, s, bytes); /* a cast is named by its source */
}

ckpt_status ckpt__output_check(ckpt__output_budget *b, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    if (b->failed) {
        st = ckpt__nomem(err);
    } else if (b->made > sat_add(b->allowed, CKPT__OUTPUT_SLACK)) {
        /* name the largest piece: a tensor by its name in the file (a
         * cast's source's), else its storage's record */
        const ckpt_tensor *t = b->largest_tensor;
        while (t && t->storage && t->storage->cast_src)
            t = t->storage->cast_src;
        const char *name = ckpt__file_tensor_name(b->largest_file, t);
        if (!name && b->largest_storage)
            name = b->largest_storage->record;
        uint64_t ratio = b->largest_file ? b->largest_file->opts.limits.max_output_ratio : 0;
        st = output_fail(err, name, b->made, b->held, ratio, b->largest);
    }
    ckpt__ptr_set_free(&b->files);
    return st;
}
