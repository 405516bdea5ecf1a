/*
 * async.c - checkpoint manager saves that barely stall the caller.
 *
 * ckpt_manager_save_async takes a snapshot of the checkpoint and returns;
 * a background thread runs the blocking save (ckpt__manager_save_now) on
 * the snapshot: the same files, fsyncs, renames, manifest and retention,
 * so crash safety is the blocking save's. The snapshot:
 *
 * - the bytes of every storage in caller memory are copied into staging
 *   memory the manager owns and keeps for the next save (one copy of the
 *   tensors: the only memory a save in flight adds), each storage once
 *   however many views share it;
 * - the tree around them is rebuilt in a tree of the snapshot's own (text,
 *   numbers, containers and their sharing), its tensors over the staging
 *   copies, so the caller may change its tensors and free its tree as soon
 *   as the call returns;
 * - values of open files (their tensors, inert objects) are referenced, as
 *   a blocking save references them: a file's bytes do not change, and the
 *   file stays open until the save is done.
 *
 * One save is in flight at a time: the next waits for it (or fails with
 * CKPT_ERR_BUSY when asked not to wait), and so does every other call on
 * the manager. A background failure is returned by the next save and by
 * ckpt_manager_wait, once.
 */
#include "async.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STAGE_ALIGN ((size_t)64)
/* Containers nested deeper are refused (the writers refuse them too). */
#define SNAPSHOT_MAX_DEPTH 10000

struct ckpt__async {
    ckpt_manager *m;
    pthread_t thread;
    bool running;             /* started and not yet joined */
    atomic_bool done;         /* the thread has finished its save */
    /* the save in flight */
    int64_t step;
    ckpt_tree *tree;          /* the snapshot */
    const ckpt_value *root;
    ckpt_metric *metrics;     /* names in metric_names */
    size_t metric_count;
    char *metric_names;
    /* its outcome, until reported */
    ckpt_status st;
    ckpt_error err;
    unsigned saved;
    bool unreported;
    /* staging memory, kept from save to save */
    uint8_t *staging;
    size_t staging_cap;
};

/* ---- pointer maps ------------------------------------------------------ */

typedef struct ptr_map {
    const void **keys;
    void **vals;
    size_t cap, count;        /* cap: 0 or a power of two */
} ptr_map;

static size_t ptr_hash(const void *p, size_t cap)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static void **ptr_map_find(const ptr_map *m, const void *key)
{
    if (!m->cap)
        return NULL;
    for (size_t i = ptr_hash(key, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->keys[i] == key)
            return &m->vals[i];
        if (!m->keys[i])
            return NULL;
    }
}

static bool ptr_map_put(ptr_map *m, const void *key, void *val)
{
    if ((m->count + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        const void **keys = calloc(cap, sizeof(*keys));
        void **vals = calloc(cap, sizeof(*vals));
        if (!keys || !vals) {
            free(keys);
            free(vals);
            return false;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = ptr_hash(m->keys[i], cap);
            while (keys[j])
                j = (j + 1) & (cap - 1);
            keys[j] = m->keys[i];
            vals[j] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = keys;
        m->vals = vals;
        m->cap = cap;
    }
    size_t i = ptr_hash(key, m->cap);
    while (m->keys[i] && m->keys[i] != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->keys[i])
        m->count++;
    m->keys[i] = key;
    m->vals[i] = val;
    return true;
}

static void ptr_map_free(ptr_map *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

/* ---- the snapshot ------------------------------------------------------- */

typedef struct snap {
    ckpt_tree *tree;
    ptr_map values;           /* caller's container or tensor -> its copy */
    ptr_map storages;         /* caller-memory storage -> staging offset + 1, then its first copy */
    size_t bytes;             /* staging needed */
    uint8_t *staging;
    ckpt_status st;
    ckpt_error *err;
} snap;

static ckpt_status snap_fail(snap *s, ckpt_status st, const char *what)
{
    if (s->st == CKPT_OK)
        s->st = ckpt__fail(s->err, st, "", CKPT_NO_OFFSET, "%s", what);
    return s->st;
}

/* The storage whose bytes a tree tensor borrows from caller memory; NULL
 * for a file's tensor (its owner holds the bytes) and a tensor without
 * bytes. */
static const ckpt__storage *caller_storage(const ckpt_tensor *t)
{
    if (!t || !t->storage)
        return NULL;
    const ckpt__storage *s = t->storage->base ? t->storage->base : t->storage;
    if (s->owner || !s->data || s->cast_src)
        return NULL;
    return s;
}

/* Pass 1: the caller-memory storages and the staging they need. */
static ckpt_status collect(snap *s, const ckpt_value *v, ptr_map *seen, unsigned depth)
{
    if (depth > SNAPSHOT_MAX_DEPTH)
        return snap_fail(s, CKPT_ERR_LIMIT, "checkpoint nested too deep to snapshot");
    ckpt_kind k = ckpt_value_kind(v);
    switch (k) {
    case CKPT_KIND_LIST:
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SET:
    case CKPT_KIND_DICT:
    case CKPT_KIND_ORDERED_DICT:
    case CKPT_KIND_TENSOR:
        break;
    default:
        return CKPT_OK;
    }
    if (ptr_map_find(seen, v))
        return CKPT_OK;
    if (!ptr_map_put(seen, v, NULL))
        return s->st = ckpt__nomem(s->err);
    if (k == CKPT_KIND_TENSOR) {
        const ckpt_tensor *t = ckpt_value_tensor(v);
        const ckpt_tensor *src[2] = {t, t && t->storage ? t->storage->cast_src : NULL};
        for (int i = 0; i < 2; i++) {
            const ckpt__storage *st = caller_storage(src[i]);
            if (!st || ptr_map_find(&s->storages, st))
                continue;
            size_t n = (size_t)st->nbytes;
            if (st->nbytes > SIZE_MAX - STAGE_ALIGN - s->bytes)
                return s->st = ckpt__nomem(s->err);
            if (!ptr_map_put(&s->storages, st, (void *)(uintptr_t)(s->bytes + 1)))
                return s->st = ckpt__nomem(s->err);
            s->bytes += (n + STAGE_ALIGN - 1) & ~(STAGE_ALIGN - 1);
        }
    } else if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
        for (size_t i = 0; i < ckpt_value_len(v); i++) {
            CKPT_RETURN_IF_ERROR(collect(s, ckpt_value_key(v, i), seen, depth + 1));
            CKPT_RETURN_IF_ERROR(collect(s, ckpt_value_dict_value(v, i), seen, depth + 1));
        }
    } else {
        for (size_t i = 0; i < ckpt_value_len(v); i++)
            CKPT_RETURN_IF_ERROR(collect(s, ckpt_value_item(v, i), seen, depth + 1));
    }
    return collect(s, ckpt_value_state(v), seen, depth + 1);
}

/* Copies the bytes of every caller-memory storage into staging: the part
 * of the save the caller waits for. Big snapshots are copied by two
 * threads, in pieces taken in turn: one core's copy does not reach the
 * memory's bandwidth. */
#define COPY_PIECE ((size_t)4 << 20)
#define COPY_TWO_THREADS ((size_t)64 << 20)

typedef struct copy_job {
    const ckpt__storage **stores;
    size_t *offsets;
    size_t count;
    uint8_t *staging;
    atomic_size_t next;       /* pieces handed out: storage index << 32 | piece */
    size_t pieces_total;
    size_t *first_piece;      /* of each storage, a prefix sum */
} copy_job;

static void *copy_pieces(void *user)
{
    copy_job *j = user;
    size_t k = 0;
    for (;;) {
        size_t p = atomic_fetch_add(&j->next, 1);
        if (p >= j->pieces_total)
            break;
        while (k + 1 < j->count && j->first_piece[k + 1] <= p)
            k++;
        while (k > 0 && j->first_piece[k] > p)
            k--;
        const ckpt__storage *st = j->stores[k];
        size_t at = (p - j->first_piece[k]) * COPY_PIECE;
        size_t n = (size_t)st->nbytes - at < COPY_PIECE ? (size_t)st->nbytes - at : COPY_PIECE;
        memcpy(j->staging + j->offsets[k] + at, st->data + at, n);
    }
    return NULL;
}

static ckpt_status copy_storages(snap *s)
{
    size_t count = s->storages.count;
    copy_job j = {.count = count, .staging = s->staging};
    j.stores = malloc((count ? count : 1) * sizeof(*j.stores));
    j.offsets = malloc((count ? count : 1) * sizeof(*j.offsets));
    j.first_piece = malloc((count ? count : 1) * sizeof(*j.first_piece));
    if (!j.stores || !j.offsets || !j.first_piece) {
        free(j.stores);
        free(j.offsets);
        free(j.first_piece);
        return s->st = ckpt__nomem(s->err);
    }
    size_t k = 0;
    for (size_t i = 0; i < s->storages.cap; i++) {
        if (!s->storages.keys[i])
            continue;
        j.stores[k] = s->storages.keys[i];
        j.offsets[k] = (size_t)(uintptr_t)s->storages.vals[i] - 1;
        j.first_piece[k] = j.pieces_total;
        j.pieces_total += ((size_t)j.stores[k]->nbytes + COPY_PIECE - 1) / COPY_PIECE;
        k++;
    }
    atomic_init(&j.next, 0);
    pthread_t helper;
    bool two = s->bytes >= COPY_TWO_THREADS &&
               pthread_create(&helper, NULL, copy_pieces, &j) == 0;
    copy_pieces(&j);
    if (two)
        pthread_join(helper, NULL);
    free(j.stores);
    free(j.offsets);
    free(j.first_piece);
    return CKPT_OK;
}

static ckpt_value *copy_value(snap *s, const ckpt_value *v, unsigned depth);

/* A tensor over the staging copy of its storage: the first one of a
 * storage owns it, the others are views of that one, as in the caller's
 * tree. */
static ckpt_value *staged_tensor(snap *s, const ckpt_tensor *t, const ckpt__storage *st)
{
    void **slot = ptr_map_find(&s->storages, st);
    if (!slot)
        return NULL;
    ckpt_tensor_info info = {.struct_size = sizeof(info)};
    ckpt_tensor_get_info(t, &info);
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = info.dtype;
    d.ndim = info.ndim;
    d.shape = info.shape;
    d.stride = info.stride;
    d.storage_offset = info.storage_offset;
    d.location = info.location;
    d.requires_grad = info.requires_grad;
    d.is_parameter = info.is_parameter;
    uintptr_t tag = (uintptr_t)*slot;
    if (tag & 1) { /* the first: offset + 1 (staging offsets are multiples of 64) */
        d.data = s->staging + (tag - 1);
        d.storage_nbytes = st->nbytes;
        ckpt_value *nv = ckpt_new_tensor(s->tree, &d);
        if (nv)
            *slot = nv;
        return nv;
    }
    const ckpt_value *base = (const ckpt_value *)*slot;
    if (ckpt_value_tensor(base)->dtype != t->dtype) {
        /* one storage seen as two dtypes: its own copy of the same bytes */
        d.data = ckpt_value_tensor(base)->storage->data;
        d.storage_nbytes = st->nbytes;
        return ckpt_new_tensor(s->tree, &d);
    }
    return ckpt_new_view(s->tree, base, &d);
}

/* The value of an open file that holds tensor t, to cast from. */
static const ckpt_value *file_tensor_value(const ckpt_tensor *t)
{
    const ckpt__storage *st = t->storage ? (t->storage->base ? t->storage->base : t->storage)
                                         : NULL;
    const ckpt_file *f = st ? st->owner : NULL;
    if (!f)
        return NULL;
    size_t n = ckpt_file_tensor_count(f);
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *v = ckpt_file_tensor_value(f, i);
        if (ckpt_value_tensor(v) == t)
            return v;
    }
    return NULL;
}

static ckpt_value *copy_tensor(snap *s, const ckpt_value *v)
{
    const ckpt_tensor *t = ckpt_value_tensor(v);
    const ckpt__storage *st = caller_storage(t);
    if (st)
        return staged_tensor(s, t, st);
    const ckpt_tensor *src = t && t->storage ? t->storage->cast_src : NULL;
    if (!src) /* a file's tensor: its bytes stay where they are */
        return (ckpt_value *)(uintptr_t)v;
    const ckpt__storage *src_st = caller_storage(src);
    const ckpt_value *from = src_st ? staged_tensor(s, src, src_st) : file_tensor_value(src);
    if (!from) {
        snap_fail(s, CKPT_ERR_UNSUPPORTED,
                  "a cast of a tensor that is neither in caller memory nor in an open file");
        return NULL;
    }
    return ckpt_new_cast(s->tree, from, t->dtype);
}

static ckpt_value *copy_container(snap *s, const ckpt_value *v, ckpt_kind k, unsigned depth)
{
    ckpt_value *nv = k == CKPT_KIND_LIST           ? ckpt_new_list(s->tree)
                     : k == CKPT_KIND_TUPLE        ? ckpt_new_tuple(s->tree)
                     : k == CKPT_KIND_SET          ? ckpt_new_set(s->tree)
                     : k == CKPT_KIND_DICT         ? ckpt_new_dict(s->tree)
                                                   : ckpt_new_ordered_dict(s->tree);
    if (!nv || !ptr_map_put(&s->values, v, nv))
        return NULL;
    size_t n = ckpt_value_len(v);
    for (size_t i = 0; i < n && s->st == CKPT_OK; i++) {
        if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
            ckpt_value *key = copy_value(s, ckpt_value_key(v, i), depth + 1);
            ckpt_value *val = copy_value(s, ckpt_value_dict_value(v, i), depth + 1);
            if (!key || !val || ckpt_dict_put(s->tree, nv, key, val) != CKPT_OK)
                return NULL;
        } else {
            ckpt_value *item = copy_value(s, ckpt_value_item(v, i), depth + 1);
            if (!item || ckpt_append(s->tree, nv, item) != CKPT_OK)
                return NULL;
        }
    }
    return nv;
}

/* Pass 2: the caller's value in the snapshot's tree. */
static ckpt_value *copy_value(snap *s, const ckpt_value *v, unsigned depth)
{
    if (s->st != CKPT_OK)
        return NULL;
    if (depth > SNAPSHOT_MAX_DEPTH) {
        snap_fail(s, CKPT_ERR_LIMIT, "checkpoint nested too deep to snapshot");
        return NULL;
    }
    void **done = ptr_map_find(&s->values, v);
    if (done)
        return *done;
    ckpt_kind k = ckpt_value_kind(v);
    ckpt_value *nv = NULL;
    size_t len = 0;
    const char *text;
    switch (k) {
    case CKPT_KIND_NONE:
        return ckpt_new_none(s->tree);
    case CKPT_KIND_BOOL:
        return ckpt_new_bool(s->tree, ckpt_value_bool(v));
    case CKPT_KIND_INT:
        return ckpt_new_int(s->tree, ckpt_value_int(v));
    case CKPT_KIND_FLOAT:
        return ckpt_new_float(s->tree, ckpt_value_float(v));
    case CKPT_KIND_COMPLEX: {
        double re, im;
        ckpt_value_complex(v, &re, &im);
        return ckpt_new_complex(s->tree, re, im);
    }
    case CKPT_KIND_STR:
        text = ckpt_value_str(v, &len);
        return ckpt_new_str(s->tree, text, len);
    case CKPT_KIND_BYTES:
        text = ckpt_value_str(v, &len);
        return ckpt_new_bytes(s->tree, text, len);
    case CKPT_KIND_DTYPE:
        return ckpt_new_dtype(s->tree, ckpt_value_dtype(v));
    case CKPT_KIND_DEVICE:
        return ckpt_new_device(s->tree, ckpt_value_str(v, NULL));
    case CKPT_KIND_SIZE: {
        int64_t dims[64];
        len = ckpt_value_len(v);
        if (len > 64) {
            snap_fail(s, CKPT_ERR_UNSUPPORTED, "a torch.Size of more than 64 dimensions");
            return NULL;
        }
        for (size_t i = 0; i < len; i++)
            dims[i] = ckpt_value_int(ckpt_value_item(v, i));
        return ckpt_new_size(s->tree, (uint32_t)len, dims);
    }
    case CKPT_KIND_LIST:
    case CKPT_KIND_TUPLE:
    case CKPT_KIND_SET:
    case CKPT_KIND_DICT:
    case CKPT_KIND_ORDERED_DICT:
        nv = copy_container(s, v, k, depth);
        break;
    case CKPT_KIND_TENSOR:
        nv = copy_tensor(s, v);
        if (nv && nv != v && !ptr_map_put(&s->values, v, nv))
            nv = NULL;
        break;
    default:
        /* BIGINT, GLOBAL, OBJECT: only files make them, and a file's values
         * do not change while it is open */
        return (ckpt_value *)(uintptr_t)v;
    }
    if (!nv)
        return NULL;
    const ckpt_value *state = ckpt_value_state(v);
    if (state && nv != v) {
        ckpt_value *ns = copy_value(s, state, depth + 1);
        if (!ns || ckpt_set_state(s->tree, nv, ns) != CKPT_OK)
            return NULL;
    }
    return nv;
}

/* ---- the background save ------------------------------------------------ */

static void job_clear(ckpt__async *a)
{
    ckpt_tree_free(a->tree);
    a->tree = NULL;
    a->root = NULL;
    free(a->metrics);
    free(a->metric_names);
    a->metrics = NULL;
    a->metric_names = NULL;
    a->metric_count = 0;
}

static void *run_save(void *user)
{
    ckpt__async *a = user;
    a->saved = 0;
    a->st = ckpt__manager_save_now(a->m, a->step, a->root, a->metrics, a->metric_count,
                                   &a->saved, &a->err);
    atomic_store(&a->done, true);
    return NULL;
}

static void join(ckpt__async *a)
{
    if (!a || !a->running)
        return;
    pthread_join(a->thread, NULL);
    a->running = false;
    job_clear(a);
    a->unreported = a->st != CKPT_OK;
}

ckpt_status ckpt__async_settle(ckpt__async *a, bool report, unsigned *saved, ckpt_error *err)
{
    if (saved)
        *saved = 0;
    if (!a)
        return CKPT_OK;
    join(a);
    if (saved && a->st == CKPT_OK)
        *saved = a->saved;
    if (!report || !a->unreported)
        return CKPT_OK;
    a->unreported = false;
    if (err) {
        *err = a->err;
        /* the cause, after what failed, cut to fit */
        char head[80];
        int h = snprintf(head, sizeof(head), "the save of step %lld in the background failed: ",
                         (long long)a->step);
        size_t hl = h > 0 ? (size_t)h : 0, cap = sizeof(err->message);
        if (hl < cap) {
            size_t rest = strnlen(a->err.message, sizeof(a->err.message));
            if (rest > cap - hl - 1)
                rest = cap - hl - 1;
            memcpy(err->message, head, hl);
            memcpy(err->message + hl, a->err.message, rest);
            err->message[hl + rest] = '\0';
        }
    }
    return a->st;
}

void ckpt__async_free(ckpt__async *a)
{
    if (!a)
        return;
    join(a);
    free(a->staging);
    free(a);
}

/* ---- the API ------------------------------------------------------------- */

static ckpt_status stage_metrics(ckpt__async *a, const ckpt_metric *metrics, size_t n,
                                 ckpt_error *err)
{
    if (!n)
        return CKPT_OK;
    size_t text = 0;
    for (size_t i = 0; i < n; i++) {
        if (!metrics[i].name)
            return CKPT_INVALID_ARG(err, "metric %zu has no name", i);
        text += strlen(metrics[i].name) + 1;
    }
    a->metrics = malloc(n * sizeof(*a->metrics));
    a->metric_names = malloc(text);
    if (!a->metrics || !a->metric_names)
        return ckpt__nomem(err);
    char *p = a->metric_names;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(metrics[i].name) + 1;
        memcpy(p, metrics[i].name, len);
        a->metrics[i] = metrics[i];
        a->metrics[i].name = p;
        p += len;
    }
    a->metric_count = n;
    return CKPT_OK;
}

static ckpt_status take_snapshot(ckpt__async *a, const ckpt_value *checkpoint, ckpt_error *err)
{
    snap s = {.err = err, .st = CKPT_OK};
    ptr_map seen = {0};
    ckpt_status st = collect(&s, checkpoint, &seen, 0);
    ptr_map_free(&seen);
    if (st == CKPT_OK && s.bytes > a->staging_cap) {
        /* the staging memory grows to the biggest checkpoint and stays */
        free(a->staging);
        a->staging = NULL;
        a->staging_cap = 0;
        void *p = NULL;
        if (posix_memalign(&p, STAGE_ALIGN, s.bytes) != 0) {
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET,
                            "out of memory for a snapshot of %zu bytes", s.bytes);
        } else {
            a->staging = p;
            a->staging_cap = s.bytes;
        }
    }
    if (st == CKPT_OK) {
        s.staging = a->staging;
        st = copy_storages(&s);
    }
    if (st == CKPT_OK) {
        s.tree = a->tree = ckpt_tree_new();
        if (!s.tree)
            st = ckpt__nomem(err);
    }
    if (st == CKPT_OK) {
        a->root = copy_value(&s, checkpoint, 0);
        st = s.st;
        if (st == CKPT_OK)
            st = ckpt_tree_status(s.tree, err);
        if (st == CKPT_OK && !a->root)
            st = ckpt__nomem(err);
    }
    ptr_map_free(&s.values);
    ptr_map_free(&s.storages);
    return st;
}

ckpt_status ckpt_manager_save_async(ckpt_manager *m, int64_t step, const ckpt_value *checkpoint,
                                    const ckpt_metric *metrics, size_t metric_count,
                                    unsigned flags, ckpt_error *err)
{
    if (!m || !checkpoint || (metric_count && !metrics))
        return CKPT_INVALID_ARG(err, "NULL argument");
    if (flags & ~CKPT_ASYNC_NO_WAIT)
        return CKPT_INVALID_ARG(err, "unknown flags 0x%x", flags & ~CKPT_ASYNC_NO_WAIT);
    ckpt__async **slot = ckpt__manager_async(m);
    ckpt__async *a = *slot;
    if (a && a->running && (flags & CKPT_ASYNC_NO_WAIT) && !atomic_load(&a->done))
        return ckpt__fail(err, CKPT_ERR_BUSY, "", CKPT_NO_OFFSET,
                          "the save of step %lld is still being written (one save at a time; "
                          "ckpt_manager_wait waits for it)", (long long)a->step);
    /* the previous save: finished, and its failure reported here */
    CKPT_RETURN_IF_ERROR(ckpt__async_settle(a, true, NULL, err));
    CKPT_RETURN_IF_ERROR(ckpt__manager_save_check(m, step, metrics, metric_count, err));
    if (!a) {
        a = calloc(1, sizeof(*a));
        if (!a)
            return ckpt__nomem(err);
        a->m = m;
        *slot = a;
    }
    a->step = step;
    a->st = CKPT_OK;
    a->saved = 0;
    memset(&a->err, 0, sizeof(a->err));
    ckpt_status st = stage_metrics(a, metrics, metric_count, err);
    if (st == CKPT_OK)
        st = take_snapshot(a, checkpoint, err);
    if (st == CKPT_OK) {
        atomic_store(&a->done, false);
        if (pthread_create(&a->thread, NULL, run_save, a) != 0)
            st = ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET,
                            "cannot start a thread for the save");
        else
            a->running = true;
    }
    if (st != CKPT_OK)
        job_clear(a);
    return st;
}

ckpt_status ckpt_manager_wait(ckpt_manager *m, unsigned *saved, ckpt_error *err)
{
    if (saved)
        *saved = 0;
    if (!m)
        return CKPT_INVALID_ARG(err, "NULL argument");
    return ckpt__async_settle(*ckpt__manager_async(m), true, saved, err);
}
