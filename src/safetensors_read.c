/*
 * safetensors_read.c - the safetensors format: an 8-byte header length, a
 * JSON header, then a buffer the tensors tile exactly.
 *
 * The reference reader's rules, plus: duplicate JSON keys and NUL bytes in
 * names are refused (readers that disagree on them see different models).
 */
#include "internal.h"

#include <jansson.h>
#include <stdlib.h>

#define HEADER_RECORD "safetensors header"

typedef struct st_entry {
    const char *name;
    ckpt_dtype dtype;
    uint32_t ndim;
    int64_t *shape;
    uint64_t begin, end;
    size_t order;              /* position in the header, to break ties */
} st_entry;

static int cmp_entry(const void *a, const void *b)
{
    const st_entry *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return x->order < y->order ? -1 : (x->order > y->order);
}

static bool json_u64(const json_t *j, uint64_t *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return false;
    *out = (uint64_t)json_integer_value(j);
    return true;
}

static ckpt_status parse_metadata(ckpt_file *f, const json_t *meta, ckpt_error *err)
{
    if (!json_is_object(meta))
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "__metadata__ is not an object of strings");
    ckpt_value *d = ckpt__value_new(&f->arena, CKPT_DICT);
    if (!d)
        return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)meta, k, v) {
        if (!json_is_string(v))
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                              "__metadata__ value of '%s' is not a string", k);
        ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_STR, k, strlen(k));
        ckpt_value *vv = ckpt__value_str(&f->arena, CKPT_STR, json_string_value(v),
                                         json_string_length(v));
        if (!kv || !vv || !ckpt__dict_set(&f->arena, d, kv, vv))
            return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    }
    f->metadata = d;
    return CKPT_OK;
}

static ckpt_status parse_entry(ckpt_file *f, const char *name, const json_t *info, st_entry *e,
                               ckpt_error *err)
{
    if (!json_is_object(info))
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s' is not an object", name);
    const json_t *jd = json_object_get(info, "dtype");
    const json_t *js = json_object_get(info, "shape");
    const json_t *jo = json_object_get(info, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s' needs \"dtype\", \"shape\" and \"data_offsets\": [begin, end]",
                          name);
    const char *dn = json_string_value(jd);
    e->dtype = CKPT_DTYPE_INVALID;
    for (int d = 1; d < CKPT_DTYPE_COUNT_; d++) {
        const char *sn = ckpt_dtype_safetensors_name((ckpt_dtype)d);
        if (sn && strcmp(sn, dn) == 0)
            e->dtype = (ckpt_dtype)d;
    }
    if (e->dtype == CKPT_DTYPE_INVALID)
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s' has unknown dtype '%s'", name, dn);
    size_t ndim = json_array_size(js);
    if (ndim > f->opts.limits.max_ndim)
        return ckpt__fail(err, CKPT_ERR_LIMIT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s' has %zu dimensions (limit %llu)", name, ndim,
                          (unsigned long long)f->opts.limits.max_ndim);
    e->ndim = (uint32_t)ndim;
    e->shape = ckpt__arena_alloc(&f->arena, (ndim ? ndim : 1) * sizeof(int64_t));
    if (!e->shape)
        return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
    uint64_t numel = 1;
    for (size_t i = 0; i < ndim; i++) {
        uint64_t d;
        if (!json_u64(json_array_get(js, i), &d) || d > INT64_MAX)
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                              "tensor '%s': shape[%zu] is not a non-negative integer", name, i);
        e->shape[i] = (int64_t)d;
        if (!ckpt__mul_u64(numel, d, &numel))
            return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                              "tensor '%s': shape product overflows", name);
    }
    if (!json_u64(json_array_get(jo, 0), &e->begin) || !json_u64(json_array_get(jo, 1), &e->end) ||
        e->end < e->begin)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s': data_offsets must be [begin, end] with begin <= end", name);
    uint64_t bits;
    if (!ckpt__mul_u64(numel, ckpt_dtype_bits(e->dtype), &bits))
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s': byte size overflows", name);
    if (bits % 8 != 0)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s': %llu elements of %s do not fill whole bytes", name,
                          (unsigned long long)numel, dn);
    if (e->end - e->begin != bits / 8)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                          "tensor '%s': data_offsets span %llu bytes but shape x dtype is %llu",
                          name, (unsigned long long)(e->end - e->begin),
                          (unsigned long long)(bits / 8));
    return CKPT_OK;
}

ckpt_status ckpt__open_safetensors(ckpt_file *f, ckpt_error *err)
{
    ckpt_status st = CKPT_OK;
    json_t *root = NULL;
    st_entry *entries = NULL;
    uint64_t n = ckpt__le64(f->map);
    if (n > f->opts.limits.max_header_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, HEADER_RECORD, 0,
                          "header length %llu exceeds the limit %llu", (unsigned long long)n,
                          (unsigned long long)f->opts.limits.max_header_bytes);
    if (n > f->map_size - 8)
        return ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, 0,
                          "header length %llu runs past the end of the file (%llu bytes)",
                          (unsigned long long)n, (unsigned long long)f->map_size);
    json_error_t jerr;
    root = json_loadb((const char *)f->map + 8, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD,
                        jerr.position >= 0 ? (uint64_t)jerr.position : CKPT_NO_OFFSET,
                        "invalid JSON: %s", jerr.text);
        ckpt__error_set_file_base(err, 8);
        return st;
    }
    if (!json_is_object(root)) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, 0, "header is not a JSON object");
        goto out;
    }
    size_t count = json_object_size(root);
    entries = calloc(count ? count : 1, sizeof(*entries));
    f->records = calloc(count ? count : 1, sizeof(*f->records));
    if (!entries || !f->records) {
        st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        goto out;
    }
    size_t ne = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        size_t klen = strlen(key);
        if (strcmp(key, "__metadata__") == 0) {
            if ((st = parse_metadata(f, val, err)) != CKPT_OK)
                goto out;
            continue;
        }
        st_entry *e = &entries[ne];
        e->name = ckpt__arena_strdup(&f->arena, key, klen);
        if (!e->name) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
            goto out;
        }
        e->order = ne;
        if ((st = parse_entry(f, e->name, val, e, err)) != CKPT_OK)
            goto out;
        ne++;
    }
    qsort(entries, ne, sizeof(*entries), cmp_entry);
    uint64_t data_start = 8 + n, buffer = f->map_size - data_start, expect = 0;
    for (size_t i = 0; i < ne; i++) {
        if (entries[i].begin != expect) {
            st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                            "tensor '%s' starts at %llu but the previous one ends at %llu "
                            "(tensors must tile the data buffer: no gaps, no overlaps)",
                            entries[i].name, (unsigned long long)entries[i].begin,
                            (unsigned long long)expect);
            goto out;
        }
        expect = entries[i].end;
    }
    if (expect != buffer) {
        st = ckpt__fail(err, CKPT_ERR_FORMAT, HEADER_RECORD, CKPT_NO_OFFSET,
                        "tensors cover %llu bytes but the data buffer holds %llu",
                        (unsigned long long)expect, (unsigned long long)buffer);
        goto out;
    }

    f->root = ckpt__value_new(&f->arena, CKPT_DICT);
    if (!f->root) {
        st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < ne; i++) {
        st_entry *e = &entries[i];
        ckpt__storage *s = ckpt__arena_alloc(&f->arena, sizeof(*s));
        ckpt_tensor *t = ckpt__arena_alloc(&f->arena, sizeof(*t));
        int64_t *stride = ckpt__arena_alloc(&f->arena, (e->ndim ? e->ndim : 1) * sizeof(int64_t));
        ckpt_value *tv = ckpt__value_new(&f->arena, CKPT_TENSOR);
        ckpt_value *kv = ckpt__value_str(&f->arena, CKPT_STR, e->name, strlen(e->name));
        if (!s || !t || !stride || !tv || !kv) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
            goto out;
        }
        s->key = kv->u.s.ptr;
        s->location = "cpu";
        s->dtype = e->dtype;
        s->nbytes = e->end - e->begin;
        s->record = kv->u.s.ptr;
        s->record_index = -1;
        s->file_offset = data_start + e->begin;
        if ((st = ckpt__file_add_storage(f, s, err)) != CKPT_OK)
            goto out;
        int64_t acc = 1;
        for (uint32_t d = e->ndim; d-- > 0;) {
            stride[d] = acc;
            acc = e->shape[d] ? acc * e->shape[d] : acc;
        }
        t->dtype = e->dtype;
        t->ndim = e->ndim;
        t->shape = e->shape;
        t->stride = stride;
        t->storage = s;
        if ((st = ckpt__tensor_validate(t, &f->opts.limits, HEADER_RECORD, CKPT_NO_OFFSET, err)))
            goto out;
        tv->u.tensor.t = t;
        if (!ckpt__dict_set(&f->arena, f->root, kv, tv)) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET, "out of memory");
            goto out;
        }
        ckpt_record_info *r = &f->records[f->record_count++];
        r->name = s->record;
        r->header_offset = r->data_offset = s->file_offset;
        r->stored_size = r->size = s->nbytes;
    }
out:
    free(entries);
    json_decref(root);
    return st;
}
