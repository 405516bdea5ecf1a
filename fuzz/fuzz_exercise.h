/*
 * fuzz_exercise.h - what every fuzz target does with an opened file: verify
 * it, read every tensor (data pointer and a contiguous copy), and walk the
 * value tree through the public accessors. Included by fuzz_*.c.
 */
#ifndef CKPT_FUZZ_EXERCISE_H
#define CKPT_FUZZ_EXERCISE_H

#include <ckpt.h>

#include <stdint.h>
#include <stdlib.h>

/* Largest copy made: a stride-0 view may describe far more bytes than the file. */
#define FUZZ_MAX_COPY ((uint64_t)64 << 20)

/* Visits values to a bounded depth and count; returns a checksum so the
 * accessors cannot be optimized away. */
static uint64_t fuzz_walk(const ckpt_value *v, int depth, uint64_t *budget)
{
    if (!v || depth > 64 || *budget == 0)
        return 0;
    (*budget)--;
    uint64_t h = (uint64_t)ckpt_value_kind(v);
    size_t len = 0;
    const char *s = ckpt_value_str(v, &len);
    if (s)
        h += len + (len ? (unsigned char)s[0] : 0);
    h += (uint64_t)ckpt_value_int(v) + (uint64_t)ckpt_value_bool(v);
    double re = 0, im = 0;
    ckpt_value_complex(v, &re, &im);
    h += (uint64_t)(re == re) + (uint64_t)ckpt_value_dtype(v);
    const ckpt_tensor *t = ckpt_value_tensor(v);
    if (t) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        h += ti.numel + ti.ndim;
    }
    size_t n = ckpt_value_len(v);
    ckpt_kind k = ckpt_value_kind(v);
    bool dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    for (size_t i = 0; i < n && *budget; i++) {
        if (dict) {
            h += fuzz_walk(ckpt_value_key(v, i), depth + 1, budget);
            h += fuzz_walk(ckpt_value_dict_value(v, i), depth + 1, budget);
        } else {
            h += fuzz_walk(ckpt_value_item(v, i), depth + 1, budget);
        }
    }
    if (dict && n) {
        const char *key = ckpt_value_str(ckpt_value_key(v, 0), NULL);
        if (key)
            h += ckpt_value_get(v, key) != NULL;
    }
    h += fuzz_walk(ckpt_value_state(v), depth + 1, budget);
    return h;
}

/* Reads one value of ckpt_value_flatten's ops at *at, checking every
 * offset against the arrays; aborts on anything out of place. */
static void fuzz_flat_value(const ckpt_flat_info *fi, size_t *at, int depth)
{
#define FUZZ_WORD() (*at < fi->op_count ? fi->ops[(*at)++] : (abort(), 0))
    if (depth > 2000)
        abort();
    int64_t op = FUZZ_WORD(), n, off, len, row;
    switch (op) {
    case CKPT_FLAT_NONE: return;
    case CKPT_FLAT_BOOL: case CKPT_FLAT_INT: case CKPT_FLAT_FLOAT: case CKPT_FLAT_DTYPE:
    case CKPT_FLAT_REF:
        (void)FUZZ_WORD();
        return;
    case CKPT_FLAT_STR: case CKPT_FLAT_DEVICE:
        off = FUZZ_WORD();
        len = FUZZ_WORD();
        if (off < 0 || len < 0 || (uint64_t)off + (uint64_t)len > fi->text_bytes)
            abort();
        return;
    case CKPT_FLAT_SIZE:
        n = FUZZ_WORD();
        for (int64_t i = 0; i < n; i++)
            (void)FUZZ_WORD();
        return;
    case CKPT_FLAT_TENSOR:
        row = FUZZ_WORD();
        if (row < 0 || (uint64_t)row >= fi->tensor_count)
            abort();
        return;
    case CKPT_FLAT_LIST: case CKPT_FLAT_TUPLE:
        n = FUZZ_WORD();
        (void)FUZZ_WORD();
        for (int64_t i = 0; i < n; i++)
            fuzz_flat_value(fi, at, depth + 1);
        return;
    case CKPT_FLAT_DICT: case CKPT_FLAT_ORDERED_DICT: {
        n = FUZZ_WORD();
        (void)FUZZ_WORD();
        int64_t state = op == CKPT_FLAT_ORDERED_DICT ? FUZZ_WORD() : 0;
        for (int64_t i = 0; i < 2 * n; i++)
            fuzz_flat_value(fi, at, depth + 1);
        if (state)
            fuzz_flat_value(fi, at, depth + 1);
        return;
    }
    case CKPT_FLAT_STR_TENSOR_DICT: {
        (void)FUZZ_WORD();
        n = FUZZ_WORD();
        (void)FUZZ_WORD();
        off = FUZZ_WORD();
        len = FUZZ_WORD();
        row = FUZZ_WORD();
        int64_t state = FUZZ_WORD();
        if (off < 0 || len < n || (uint64_t)off + (uint64_t)len > fi->text_bytes || row < 0 ||
            (uint64_t)row + (uint64_t)n > fi->tensor_count)
            abort();
        if (state)
            fuzz_flat_value(fi, at, depth + 1);
        return;
    }
    default:
        abort();
    }
#undef FUZZ_WORD
}

/* ckpt_value_flatten of the root: the ops parse whole, every row's dims
 * and location lie in their arrays. */
static void fuzz_flat(ckpt_file *f)
{
    ckpt_flat *flat = NULL;
    ckpt_error err;
    if (ckpt_value_flatten(f, NULL, &flat, &err) != CKPT_OK)
        return;
    ckpt_flat_info fi = {.struct_size = sizeof(fi)};
    ckpt_flat_get_info(flat, &fi);
    size_t at = 0;
    fuzz_flat_value(&fi, &at, 0);
    if (at != fi.op_count)
        abort();
    for (size_t i = 0; i < fi.tensor_count; i++) {
        const int64_t *r = fi.tensors + i * fi.tensor_fields;
        int64_t nd = r[CKPT_FLAT_T_NDIM], d = r[CKPT_FLAT_T_DIMS];
        if (nd < 0 || d < 0 || (uint64_t)d + 2 * (uint64_t)nd > fi.dim_count ||
            r[CKPT_FLAT_T_LOCATION] < 0 ||
            (uint64_t)r[CKPT_FLAT_T_LOCATION] + (uint64_t)r[CKPT_FLAT_T_LOCATION_LEN] >
                fi.text_bytes)
            abort();
    }
    ckpt_flat_free(flat);
}

/* fuzz_exercise with these open options (NULL: the defaults). */
static void fuzz_exercise_opts(const uint8_t *data, size_t size, const ckpt_open_options *opts)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    char msg[768];
    if (ckpt_open_memory(data, size, opts, &f, &err) != CKPT_OK) {
        ckpt_error_format(&err, msg, sizeof(msg));
        return;
    }
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    for (size_t i = 0; i < ckpt_file_record_count(f); i++) {
        ckpt_record_info ri = {.struct_size = sizeof(ri)};
        (void)ckpt_file_record(f, i, &ri);
    }
    if (ckpt_file_verify(f, &err) != CKPT_OK)
        ckpt_error_format(&err, msg, sizeof(msg));
    uint64_t budget = 100000;
    volatile uint64_t sink = fuzz_walk(ckpt_file_root(f), 0, &budget);
    if (fi.metadata)
        sink += fuzz_walk(fi.metadata, 0, &budget);
    fuzz_flat(f);
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        const char *name = NULL;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        if (!t)
            continue;
        if (name && ckpt_file_find_tensor(f, name) == NULL)
            abort(); /* every listed name must be found */
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        const void *p = NULL;
        bool zc = false;
        if (ckpt_tensor_data(f, t, &p, &zc, &err) != CKPT_OK || ti.nbytes > FUZZ_MAX_COPY)
            continue;
        void *dst = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
        if (!dst)
            continue;
        if (ckpt_tensor_copy(f, t, dst, (size_t)ti.nbytes, &err) == CKPT_OK && ti.nbytes)
            sink += ((const unsigned char *)dst)[ti.nbytes - 1];
        free(dst);
    }
    (void)sink;
    ckpt_close(f);
}

static inline void fuzz_exercise(const uint8_t *data, size_t size)
{
    fuzz_exercise_opts(data, size, NULL);
}

#endif /* CKPT_FUZZ_EXERCISE_H */
