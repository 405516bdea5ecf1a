/*
 * fuzz_pickle.c - libFuzzer target for the pickle interpreter
 * (src/pickle/pickle_read.c) and the value tree (src/core/value.c).
 *
 * Runs the input as a row of pickles (as the legacy torch format has them)
 * with the default limits and a persistent_load that makes up a storage for
 * any persistent id, so that the tensor paths are reached too. Walks what
 * comes out through the public accessors. Any status is fine; crashes,
 * leaks, sanitizer reports, hangs and broken invariants are not.
 */
#include "core.h"
#include "pickle.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PICKLES 4

/* ('storage', <storage class>, key, location, numel[, view]) gives a
 * storage of that class and size; anything else a small float32 one. */
static ckpt_status fuzz_persistent_load(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                        uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    (void)user;
    ckpt_dtype dtype = CKPT_DTYPE_FLOAT32;
    uint64_t numel = 16;
    bool untyped = false;
    if (pid->kind == CKPT_KIND_TUPLE && pid->u.seq.len >= 5) {
        const ckpt_value *const *it = (const ckpt_value *const *)pid->u.seq.items;
        ckpt_dtype d = ckpt__storage_type_dtype(it[1], &untyped);
        if (d == CKPT_DTYPE_INVALID)
            return ckpt__fail(err, CKPT_ERR_FORMAT, ctx->record, offset, "not a storage class");
        dtype = d;
        if (it[4]->kind == CKPT_KIND_INT && it[4]->u.i >= 0 && it[4]->u.i <= (1 << 20))
            numel = (uint64_t)it[4]->u.i;
    }
    ckpt__storage *s = ckpt__arena_alloc(ctx->arena, sizeof(*s));
    ckpt_value *v = ckpt__value_new(ctx->arena, CKPT__KIND_STORAGE);
    if (!s || !v)
        return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
    s->key = "0";
    s->location = "cpu";
    s->dtype = dtype;
    s->untyped = untyped;
    s->nbytes = numel * (ckpt_dtype_size(dtype) ? ckpt_dtype_size(dtype) : 1);
    s->file_offset = CKPT_NO_OFFSET;
    s->record_index = -1;
    v->u.storage = s;
    *out = v;
    return CKPT_OK;
}

/* Visits at most *budget values (memo sharing can make the tree a DAG with
 * exponentially many paths, or a cycle), touching every string's ends and
 * every tensor's dimensions. */
static uint64_t walk(const ckpt_value *v, int depth, uint64_t *budget)
{
    if (!v || depth > 64 || *budget == 0)
        return 0;
    (*budget)--;
    uint64_t h = (uint64_t)ckpt_value_kind(v) + (uint64_t)ckpt_value_int(v);
    size_t len = 0;
    const char *s = ckpt_value_str(v, &len);
    if (s) {
        if (s[len] != '\0')
            abort(); /* text is always NUL-terminated */
        h += len ? (unsigned char)s[0] + (unsigned char)s[len - 1] : 0;
    }
    const ckpt_tensor *t = ckpt_value_tensor(v);
    if (t) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        for (uint32_t i = 0; i < ti.ndim; i++)
            h += (uint64_t)ti.shape[i] + (uint64_t)ti.stride[i];
        if (ti.ndim > 64)
            abort(); /* max_ndim */
    }
    ckpt_kind k = ckpt_value_kind(v);
    bool dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    size_t n = ckpt_value_len(v);
    for (size_t i = 0; i < n && *budget; i++) {
        if (dict) {
            h += walk(ckpt_value_key(v, i), depth + 1, budget);
            h += walk(ckpt_value_dict_value(v, i), depth + 1, budget);
        } else {
            h += walk(ckpt_value_item(v, i), depth + 1, budget);
        }
    }
    if (dict && n) {
        /* every key must be found again through the index */
        const ckpt_value *key = ckpt_value_key(v, n - 1);
        if (ckpt__dict_lookup(v, key) == NULL)
            abort();
    }
    h += walk(ckpt_value_state(v), depth + 1, budget);
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_limits limits;
    ckpt_limits_default(&limits);
    ckpt__arena arena;
    ckpt__arena_init(&arena, limits.max_value_bytes);

    size_t pos = 0;
    volatile uint64_t sink = 0;
    for (int i = 0; i < MAX_PICKLES && pos < size; i++) {
        ckpt__pickle_ctx ctx = {
            .limits = &limits, .arena = &arena, .record = "fuzz.pkl",
            .persistent_load = i == 0 ? NULL : fuzz_persistent_load, .user = NULL,
        };
        ckpt_error err;
        ckpt_value *root = (ckpt_value *)&ctx; /* must be reset */
        size_t used = SIZE_MAX;
        ckpt_status st = ckpt__unpickle(&ctx, data + pos, size - pos, &used, &root, &err);
        if (st != CKPT_OK) {
            if (root != NULL || used != 0 || err.status != st || err.offset > size - pos)
                abort();
            char msg[768];
            ckpt_error_format(&err, msg, sizeof(msg));
            break;
        }
        if (!root || used == 0 || used > size - pos || data[pos + used - 1] != '.' ||
            ctx.protocol < -1 || ctx.protocol > 5)
            abort();
        uint64_t budget = 100000;
        sink += walk(root, 0, &budget);
        pos += used;
    }
    (void)sink;
    /* The first pickle again, now with tensors and numpy arrays allowed. */
    if (size) {
        ckpt__pickle_ctx ctx = {
            .limits = &limits, .arena = &arena, .record = "fuzz.pkl",
            .persistent_load = fuzz_persistent_load, .user = NULL,
            .flags = CKPT__PICKLE_NUMPY,
        };
        ckpt_error err;
        ckpt_value *root = NULL;
        if (ckpt__unpickle(&ctx, data, size, NULL, &root, &err) == CKPT_OK) {
            uint64_t budget = 100000;
            sink += walk(root, 0, &budget);
        }
    }
    /* And as a scan reads it: inert globals, framing told instead of failing. */
    if (size) {
        ckpt_error framing;
        memset(&framing, 0, sizeof(framing));
        ckpt__pickle_ctx ctx = {
            .limits = &limits, .arena = &arena, .record = "fuzz.pkl",
            .persistent_load = fuzz_persistent_load, .user = NULL,
            .flags = CKPT__PICKLE_INERT | CKPT__PICKLE_NO_FAIL, .framing = &framing,
        };
        ckpt_error err;
        ckpt_value *root = NULL;
        size_t used = 0;
        ckpt_status st = ckpt__unpickle(&ctx, data, size, &used, &root, &err);
        if (framing.status != CKPT_OK &&
            (framing.status != CKPT_ERR_FORMAT || framing.offset >= size))
            abort();
        if (st == CKPT_OK && ctx.stop_frame_end &&
            (ctx.stop_frame_end <= used || ctx.stop_frame_end > size))
            abort(); /* a frame past STOP ends after it, inside the data */
        if (st != CKPT_OK && ctx.stop_frame_end)
            abort();
    }
    ckpt__arena_free(&arena);
    return 0;
}
