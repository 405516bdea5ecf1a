/*
 * dcp_write.c - ckpt_dcp_save: a state dict, sharded over MPI ranks (or
 * whole, from one process), as a PyTorch Distributed Checkpoint directory.
 *
 * Each rank flattens its tree as torch's flatten_state_dict does, writes the
 * items it owns (its chunks; the coordinator also every replicated value)
 * into DIR.tmp-ID/__RANK_0.distcp, each item a whole torch.save archive
 * (torch_write.c) at its offset, and syncs it. The coordinator gathers
 * every rank's item list, merges the chunks of each key, writes .metadata as
 * a protocol 4 pickle of torch 2.x's classes, syncs the directory and swaps
 * it into place. The item lists come from ranks of this job, yet they are
 * read with checked bounds all the same.
 *
 * Test hook: CKPT_DCP_KILL_AT=RANK:STEP makes that rank SIGKILL itself at
 * the commit step STEP (kill_point below), so that tests can show a crash
 * anywhere leaves the previous directory whole.
 */
#include "format.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifdef CKPT_HAVE_MPI
#include <dlfcn.h>
#include <mpi.h>
#endif

#define MAX_NDIM 64
#define ID_LEN 32

/* ---- shard sets ----------------------------------------------------------- */

typedef struct shard {
    const ckpt_value *tensor;
    uint32_t ndim;
    int64_t *dims; /* global shape, then offsets */
} shard;

struct ckpt_dcp_shards {
    shard *list;
    size_t count, cap;
};

ckpt_dcp_shards *ckpt_dcp_shards_new(void) { return calloc(1, sizeof(ckpt_dcp_shards)); }

void ckpt_dcp_shards_free(ckpt_dcp_shards *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->count; i++)
        free(s->list[i].dims);
    free(s->list);
    free(s);
}

ckpt_status ckpt_dcp_shards_add(ckpt_dcp_shards *s, const ckpt_value *tensor, uint32_t ndim,
                                const int64_t *global_shape, const int64_t *offsets,
                                ckpt_error *err)
{
    const ckpt_tensor *t = ckpt_value_tensor(tensor);
    if (!s || !t || (ndim && (!global_shape || !offsets)))
        return CKPT_INVALID_ARG(err, "a shard needs a set, a tensor, its global shape and offsets");
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    if (ti.ndim != ndim || ndim > MAX_NDIM)
        return CKPT_INVALID_ARG(err, "a shard of %u dimensions for a tensor of %u (at most %d)",
                                ndim, ti.ndim, MAX_NDIM);
    for (uint32_t d = 0; d < ndim; d++) {
        int64_t end;
        if (offsets[d] < 0 || global_shape[d] < 0 ||
            __builtin_add_overflow(offsets[d], ti.shape[d], &end) || end > global_shape[d])
            return CKPT_INVALID_ARG(err,
                                    "shard dimension %u: offset %lld + size %lld lies outside "
                                    "the global size %lld",
                                    d, (long long)offsets[d], (long long)ti.shape[d],
                                    (long long)global_shape[d]);
    }
    if (s->count == s->cap) {
        shard *grown = ckpt__array_grow(s->list, &s->cap, sizeof(*grown));
        if (!grown)
            return ckpt__nomem(err);
        s->list = grown;
    }
    int64_t *dims = malloc(2 * (ndim ? ndim : 1) * sizeof(*dims));
    if (!dims)
        return ckpt__nomem(err);
    if (ndim) {
        memcpy(dims, global_shape, ndim * sizeof(*dims));
        memcpy(dims + ndim, offsets, ndim * sizeof(*dims));
    }
    s->list[s->count++] = (shard){tensor, ndim, dims};
    return CKPT_OK;
}

void ckpt_dcp_save_options_default(ckpt_dcp_save_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
}

bool ckpt_dcp_has_mpi(void)
{
#ifdef CKPT_HAVE_MPI
    return true;
#else
    return false;
#endif
}

/* ---- the communicator ------------------------------------------------------ */

#ifdef CKPT_HAVE_MPI
/*
 * MPI is found in the process at run time, not linked: a program that saves
 * from MPI ranks has its MPI library loaded (it called MPI_Init), and every
 * other program (the CLI, a Python interpreter) starts without loading
 * libmpi and the libraries it pulls in (a whole-process verify of a small
 * file: 14.4 ms linked, 12.4 ms not). The functions keep mpi.h's
 * prototypes; Open MPI's predefined handles are addresses of its globals,
 * looked up the same way, other implementations' are mpi.h's constants.
 */
typedef struct mpi_api {
    __typeof__(MPI_Initialized) *initialized;
    __typeof__(MPI_Finalized) *finalized;
    __typeof__(MPI_Comm_rank) *comm_rank;
    __typeof__(MPI_Comm_size) *comm_size;
    __typeof__(MPI_Bcast) *bcast;
    __typeof__(MPI_Gather) *gather;
    __typeof__(MPI_Gatherv) *gatherv;
    __typeof__(MPI_Abort) *abort;
    MPI_Comm world;
    MPI_Datatype byte, u64;
} mpi_api;

static void *mpi_sym(void *lib, const char *name)
{
    void *p = dlsym(RTLD_DEFAULT, name);
    return p || !lib ? p : dlsym(lib, name);
}

#define MPI_FN(lib, field, name)                                                             \
    do {                                                                                     \
        void *p_ = mpi_sym(lib, name);                                                       \
        memcpy(&api->field, &p_, sizeof(p_));                                                \
        ok = ok && p_;                                                                       \
    } while (0)

/* false: no MPI library in the process (so MPI cannot be initialized) */
static bool mpi_find(mpi_api *api)
{
    memset(api, 0, sizeof(*api));
    /* a library loaded without RTLD_GLOBAL (an extension module's) is found
     * by its soname; RTLD_NOLOAD never loads one */
    void *lib = NULL;
    if (!dlsym(RTLD_DEFAULT, "MPI_Initialized")) {
        static const char *const sonames[] = {"libmpi.so.40", "libmpi.so.12", "libmpi.so"};
        for (size_t i = 0; !lib && i < sizeof(sonames) / sizeof(*sonames); i++)
            lib = dlopen(sonames[i], RTLD_NOW | RTLD_NOLOAD);
    }
    bool ok = true;
    MPI_FN(lib, initialized, "MPI_Initialized");
    MPI_FN(lib, finalized, "MPI_Finalized");
    MPI_FN(lib, comm_rank, "MPI_Comm_rank");
    MPI_FN(lib, comm_size, "MPI_Comm_size");
    MPI_FN(lib, bcast, "MPI_Bcast");
    MPI_FN(lib, gather, "MPI_Gather");
    MPI_FN(lib, gatherv, "MPI_Gatherv");
    MPI_FN(lib, abort, "MPI_Abort");
#ifdef OPEN_MPI
    api->world = (MPI_Comm)mpi_sym(lib, "ompi_mpi_comm_world");
    api->byte = (MPI_Datatype)mpi_sym(lib, "ompi_mpi_byte");
    api->u64 = (MPI_Datatype)mpi_sym(lib, "ompi_mpi_uint64_t");
    ok = ok && api->world && api->byte && api->u64;
#else
    api->world = MPI_COMM_WORLD;
    api->byte = MPI_BYTE;
    api->u64 = MPI_UINT64_T;
#endif
    if (lib)
        dlclose(lib); /* NOLOAD took a reference: the library stays loaded */
    return ok;
}
#undef MPI_FN
#endif

typedef struct comm {
    int rank, size, root;
#ifdef CKPT_HAVE_MPI
    mpi_api api;
    MPI_Comm c;
    bool mpi;
#endif
} comm;

static ckpt_status comm_init(comm *c, const ckpt_dcp_save_options *o, ckpt_error *err)
{
    memset(c, 0, sizeof(*c));
    c->size = 1;
#ifdef CKPT_HAVE_MPI
    int inited = 0, finalized = 0;
    if (mpi_find(&c->api)) {
        c->api.initialized(&inited);
        c->api.finalized(&finalized);
    }
    if (inited && !finalized) {
        c->c = o->comm ? *(const MPI_Comm *)o->comm : c->api.world;
        c->mpi = true;
        c->api.comm_rank(c->c, &c->rank);
        c->api.comm_size(c->c, &c->size);
    } else if (o->comm) {
        return CKPT_INVALID_ARG(err, "a communicator was given but MPI is not initialized");
    }
#else
    if (o->comm)
        return CKPT_INVALID_ARG(err, "a communicator was given to a build without MPI (CKPT_MPI)");
#endif
    if (o->coordinator < 0 || o->coordinator >= c->size)
        return CKPT_INVALID_ARG(err, "coordinator rank %d outside 0..%d", o->coordinator,
                                c->size - 1);
    c->root = o->coordinator;
    return CKPT_OK;
}

static void comm_bcast(const comm *c, void *p, size_t n)
{
#ifdef CKPT_HAVE_MPI
    if (c->mpi)
        c->api.bcast(p, (int)n, c->api.byte, c->root, c->c);
#else
    (void)c, (void)p, (void)n;
#endif
}

/* The coordinator gets every rank's buffer (*all, *lens, malloc'd); every
 * rank takes part. false: out of memory or a buffer of 2 GiB or more, which
 * the coordinator learns as a length of UINT64_MAX. */
static bool comm_gather(const comm *c, const ckpt__buf *mine, uint8_t **all, uint64_t **lens)
{
    *all = NULL;
    *lens = NULL;
    uint64_t len = mine->failed || mine->len > INT32_MAX ? UINT64_MAX : mine->len;
    bool root = c->rank == c->root;
    if (root) {
        *lens = calloc((size_t)c->size, sizeof(**lens));
        if (!*lens)
            return false; /* the others block in the gather: MPI_Abort below */
    }
#ifdef CKPT_HAVE_MPI
    if (c->mpi) {
        c->api.gather(&len, 1, c->api.u64, *lens, 1, c->api.u64, c->root, c->c);
        int *counts = NULL, *displs = NULL;
        uint64_t total = 0;
        bool ok = true;
        if (root) {
            counts = calloc((size_t)c->size, sizeof(*counts));
            displs = calloc((size_t)c->size, sizeof(*displs));
            for (int r = 0; r < c->size && counts && displs; r++) {
                uint64_t n = (*lens)[r] == UINT64_MAX ? 0 : (*lens)[r];
                if (total + n > INT32_MAX)
                    ok = false;
                else {
                    counts[r] = (int)n;
                    displs[r] = (int)total;
                    total += n;
                }
            }
            *all = malloc(total + 1);
            if (!counts || !displs || !*all)
                ok = false;
            if (!ok)
                c->api.abort(c->c, 1); /* the others wait in Gatherv */
        }
        c->api.gatherv(len == UINT64_MAX ? NULL : mine->p, len == UINT64_MAX ? 0 : (int)len,
                       c->api.byte, *all, counts, displs, c->api.byte, c->root, c->c);
        free(counts);
        free(displs);
        return true;
    }
#endif
    (*lens)[0] = len;
    *all = malloc(len == UINT64_MAX ? 1 : len + 1);
    if (!*all)
        return false;
    if (len != UINT64_MAX && len)
        memcpy(*all, mine->p, len);
    return true;
}

/* ---- the test hook ---------------------------------------------------------- */

enum {
    KILL_TEMP_DIR = 1,   /* the temporary directory exists, nothing written */
    KILL_WRITTEN = 2,    /* the rank's items written, the file not synced */
    KILL_SYNCED = 3,     /* the rank's file synced and in place */
    KILL_METADATA = 4,   /* coordinator: .metadata synced, not swapped in */
    KILL_SWAPPED = 5,    /* coordinator: swapped in, parent not synced */
    KILL_COMMITTED = 6,  /* coordinator: parent synced, old not removed */
};

static void kill_point(const comm *c, int step)
{
    const char *at = getenv("CKPT_DCP_KILL_AT");
    int rank, s;
    if (at && sscanf(at, "%d:%d", &rank, &s) == 2 && rank == c->rank && s == step)
        raise(SIGKILL);
}

/* ---- flattening, as torch's flatten_state_dict -------------------------- */

/* A path component: a dict key (text) or a list index. */
typedef struct part {
    bool is_index;
    int64_t index;
    const char *text;
    size_t len;
} part;

typedef struct item {
    char *fqn;                 /* "model.0.weight" */
    part *path;
    size_t path_len;
    const ckpt_value *v;
    bool tensor;
} item;

typedef struct flattener {
    item *items;
    size_t count, cap;
    part stack[256];
    size_t depth;
    char **texts;              /* int keys as text, freed with the flattener */
    size_t ntexts, texts_cap;
    ckpt_error *err;
} flattener;

static bool is_dict(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    return k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
}

/* torch's _is_terminal with _keep_visiting_tensors: a list is walked into
 * when it holds a tensor or a container that is walked into. */
static bool is_terminal(const ckpt_value *v, unsigned depth)
{
    if (is_dict(v))
        return false;
    if (ckpt_value_kind(v) != CKPT_KIND_LIST)
        return true;
    if (depth > 256)
        return true;
    for (size_t i = 0; i < ckpt_value_len(v); i++) {
        const ckpt_value *e = ckpt_value_item(v, i);
        ckpt_kind k = ckpt_value_kind(e);
        if ((is_dict(e) || k == CKPT_KIND_LIST) && !is_terminal(e, depth + 1))
            return false;
        if (k == CKPT_KIND_TENSOR)
            return false;
    }
    return true;
}

static ckpt_status add_item(flattener *f, const ckpt_value *v)
{
    if (f->count == f->cap) {
        item *grown = ckpt__array_grow(f->items, &f->cap, sizeof(*grown));
        if (!grown)
            return ckpt__nomem(f->err);
        f->items = grown;
    }
    ckpt__buf name = {0};
    for (size_t i = 0; i < f->depth; i++) {
        if (i)
            ckpt__buf_put(&name, ".", 1);
        if (f->stack[i].is_index) {
            char num[24];
            int n = snprintf(num, sizeof(num), "%lld", (long long)f->stack[i].index);
            ckpt__buf_put(&name, num, (size_t)n);
        } else {
            ckpt__buf_put(&name, f->stack[i].text, f->stack[i].len);
        }
    }
    ckpt__buf_put(&name, "", 0);
    part *path = malloc((f->depth ? f->depth : 1) * sizeof(*path));
    if (name.failed || !path) {
        ckpt__buf_free(&name);
        free(path);
        return ckpt__nomem(f->err);
    }
    memcpy(path, f->stack, f->depth * sizeof(*path));
    f->items[f->count++] = (item){(char *)name.p, path, f->depth, v,
                                  ckpt_value_kind(v) == CKPT_KIND_TENSOR};
    return CKPT_OK;
}

static ckpt_status flatten(flattener *f, const ckpt_value *v)
{
    if (f->depth >= sizeof(f->stack) / sizeof(f->stack[0]))
        return CKPT_INVALID_ARG(f->err, "the state dict nests deeper than %zu levels",
                                sizeof(f->stack) / sizeof(f->stack[0]));
    if (is_dict(v)) {
        for (size_t i = 0; i < ckpt_value_len(v); i++) {
            const ckpt_value *k = ckpt_value_key(v, i);
            part *p = &f->stack[f->depth];
            memset(p, 0, sizeof(*p));
            if (ckpt_value_kind(k) == CKPT_KIND_STR) {
                p->text = ckpt_value_str(k, &p->len);
            } else if (ckpt_value_kind(k) == CKPT_KIND_INT) {
                /* str(key), as torch flattens an optimizer's state {0: ...} */
                if (f->ntexts == f->texts_cap) {
                    char **grown = ckpt__array_grow(f->texts, &f->texts_cap, sizeof(*grown));
                    if (!grown)
                        return ckpt__nomem(f->err);
                    f->texts = grown;
                }
                char *num = malloc(24);
                if (!num)
                    return ckpt__nomem(f->err);
                snprintf(num, 24, "%lld", (long long)ckpt_value_int(k));
                f->texts[f->ntexts++] = num;
                p->text = num;
                p->len = strlen(num);
            } else {
                return CKPT_INVALID_ARG(f->err, "a state dict key is a %s, not text",
                                        ckpt_kind_name(ckpt_value_kind(k)));
            }
            f->depth++;
            ckpt_status st = flatten(f, ckpt_value_dict_value(v, i));
            f->depth--;
            CKPT_RETURN_IF_ERROR(st);
        }
        return CKPT_OK;
    }
    if (is_terminal(v, 0))
        return add_item(f, v);
    for (size_t i = 0; i < ckpt_value_len(v); i++) {
        part *p = &f->stack[f->depth];
        memset(p, 0, sizeof(*p));
        p->is_index = true;
        p->index = (int64_t)i;
        f->depth++;
        ckpt_status st = flatten(f, ckpt_value_item(v, i));
        f->depth--;
        CKPT_RETURN_IF_ERROR(st);
    }
    return CKPT_OK;
}

static void flattener_free(flattener *f)
{
    for (size_t i = 0; i < f->count; i++) {
        free(f->items[i].fqn);
        free(f->items[i].path);
    }
    free(f->items);
    for (size_t i = 0; i < f->ntexts; i++)
        free(f->texts[i]);
    free(f->texts);
}

/* ---- item records exchanged with the coordinator ------------------------
 * u32 status; then per item: u8 tensor, u8 dtype, u8 requires_grad,
 * u32 ndim, u32 fqn length, fqn, u32 path length, per part u8 is_index and
 * i64 index or u32 length and text, i64 global[ndim], offsets[ndim],
 * sizes[ndim], u64 file offset, u64 length. A failed rank sends its status
 * and its ckpt_error instead of items. */

static void put_u8(ckpt__buf *b, uint8_t v) { ckpt__buf_put(b, &v, 1); }
static void put_u32(ckpt__buf *b, uint32_t v) { ckpt__buf_put(b, &v, 4); }
static void put_u64(ckpt__buf *b, uint64_t v) { ckpt__buf_put(b, &v, 8); }

typedef struct cursor {
    const uint8_t *p;
    size_t left;
    bool bad;
} cursor;

static const uint8_t *take(cursor *c, size_t n)
{
    if (c->bad || n > c->left) {
        c->bad = true;
        return NULL;
    }
    const uint8_t *p = c->p;
    c->p += n;
    c->left -= n;
    return p;
}

static uint8_t get_u8(cursor *c)
{
    const uint8_t *p = take(c, 1);
    return p ? *p : 0;
}

static uint32_t get_u32(cursor *c)
{
    uint32_t v = 0;
    const uint8_t *p = take(c, 4);
    if (p)
        memcpy(&v, p, 4);
    return v;
}

static uint64_t get_u64(cursor *c)
{
    uint64_t v = 0;
    const uint8_t *p = take(c, 8);
    if (p)
        memcpy(&v, p, 8);
    return v;
}

/* One chunk (or bytes item) as the coordinator merges it. */
typedef struct rec {
    int rank;
    bool tensor, requires_grad;
    ckpt_dtype dtype;
    uint32_t ndim;
    const char *fqn;
    uint32_t fqn_len;
    const uint8_t *path;        /* the encoded parts */
    uint32_t path_parts;
    const int64_t *global, *offsets, *sizes; /* unaligned: read with memcpy */
    uint64_t file_offset, length;
    size_t key;                 /* index of its key */
    size_t chunk_index;         /* its place in the key's chunks */
    size_t next;                /* the key's next record, SIZE_MAX after the last */
} rec;

static int64_t dim_at(const int64_t *base, uint32_t i)
{
    int64_t v;
    memcpy(&v, (const uint8_t *)base + (size_t)i * 8, 8);
    return v;
}

/* ---- the pickle of .metadata --------------------------------------------- */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_BININT = 'J', OP_BININT1 = 'K', OP_BININT2 = 'M',
    OP_NONE = 'N', OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b', OP_EMPTY_DICT = '}',
    OP_APPENDS = 'e', OP_BINGET = 'h', OP_LONG_BINGET = 'j', OP_EMPTY_LIST = ']', OP_REDUCE = 'R',
    OP_SETITEM = 's', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')', OP_SETITEMS = 'u', OP_PROTO = 0x80,
    OP_NEWOBJ = 0x81, OP_TUPLE1 = 0x85, OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88,
    OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a, OP_SHORT_BINUNICODE = 0x8c, OP_MEMOIZE = 0x94,
    OP_FRAME = 0x95, OP_STACK_GLOBAL = 0x93,
};

enum {
    G_METADATA, G_TSM, G_TP, G_CSM, G_BSM, G_MI, G_SI, G_SM, G_SIZE, G_LAYOUT, G_MEMFMT,
    G_PATH, V_STRIDED, V_CONTIGUOUS, G_DTYPE0, /* then one per dtype */
    MEMO_SLOTS = G_DTYPE0 + CKPT_DTYPE_COUNT_
};

typedef struct pickler {
    ckpt__buf out;      /* finished frames */
    ckpt__buf frame;    /* the frame being filled */
    uint32_t memo;      /* next memo index */
    uint32_t slot[MEMO_SLOTS];
} pickler;

#define FRAME_TARGET 65536

/* Every opcode starts here: a full frame goes out first, as Python's framer. */
static void op(pickler *w, uint8_t code)
{
    if (w->frame.len >= FRAME_TARGET) {
        put_u8(&w->out, OP_FRAME);
        put_u64(&w->out, w->frame.len);
        ckpt__buf_put(&w->out, w->frame.p, w->frame.len);
        w->frame.len = 0;
    }
    put_u8(&w->frame, code);
}

static void raw(pickler *w, const void *p, size_t n) { ckpt__buf_put(&w->frame, p, n); }

static void memoize(pickler *w, int slot)
{
    op(w, OP_MEMOIZE);
    if (slot >= 0)
        w->slot[slot] = w->memo;
    w->memo++;
}

static bool memo_get(pickler *w, int slot)
{
    uint32_t m = w->slot[slot];
    if (m == UINT32_MAX)
        return false;
    if (m < 256) {
        op(w, OP_BINGET);
        put_u8(&w->frame, (uint8_t)m);
    } else {
        op(w, OP_LONG_BINGET);
        put_u32(&w->frame, m);
    }
    return true;
}

static void pk_str(pickler *w, const char *s, size_t n)
{
    if (n < 256) {
        op(w, OP_SHORT_BINUNICODE);
        put_u8(&w->frame, (uint8_t)n);
    } else {
        op(w, OP_BINUNICODE);
        put_u32(&w->frame, (uint32_t)n);
    }
    raw(w, s, n);
}

static void pk_cstr(pickler *w, const char *s) { pk_str(w, s, strlen(s)); }

static void pk_int(pickler *w, int64_t v)
{
    if (v >= 0 && v < 256) {
        op(w, OP_BININT1);
        put_u8(&w->frame, (uint8_t)v);
    } else if (v >= 0 && v < 65536) {
        op(w, OP_BININT2);
        uint16_t x = (uint16_t)v;
        raw(w, &x, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        op(w, OP_BININT);
        int32_t x = (int32_t)v;
        raw(w, &x, 4);
    } else {
        /* LONG1: little-endian two's complement, as few bytes as hold it */
        uint8_t b[8];
        uint64_t u = (uint64_t)v;
        for (int i = 0; i < 8; i++)
            b[i] = (uint8_t)(u >> (8 * i));
        int n = 8;
        while (n > 1 && ((b[n - 1] == 0 && !(b[n - 2] & 0x80)) ||
                         (b[n - 1] == 0xff && (b[n - 2] & 0x80))))
            n--;
        op(w, OP_LONG1);
        put_u8(&w->frame, (uint8_t)n);
        raw(w, b, (size_t)n);
    }
}

static void pk_global(pickler *w, int slot, const char *module, const char *name)
{
    if (memo_get(w, slot))
        return;
    pk_cstr(w, module);
    pk_cstr(w, name);
    op(w, OP_STACK_GLOBAL);
    memoize(w, slot);
}

#define DCP_MOD "torch.distributed.checkpoint.metadata"

/* CLASS.__new__(CLASS) with an empty dict after it, opened for its state */
static void pk_object_dict(pickler *w, int slot, const char *module, const char *name)
{
    pk_global(w, slot, module, name);
    op(w, OP_EMPTY_TUPLE);
    op(w, OP_NEWOBJ);
    op(w, OP_EMPTY_DICT);
    op(w, OP_MARK);
}

static void pk_end_object_dict(pickler *w)
{
    op(w, OP_SETITEMS);
    op(w, OP_BUILD);
}

static void pk_tuple_end(pickler *w, size_t n, bool marked)
{
    static const uint8_t small[] = {OP_EMPTY_TUPLE, OP_TUPLE1, OP_TUPLE2, OP_TUPLE3};
    op(w, marked ? OP_TUPLE : small[n]);
}

/* torch.Size((d0, d1, ...)) from possibly unaligned dims */
static void pk_size(pickler *w, uint32_t ndim, const int64_t *dims)
{
    pk_global(w, G_SIZE, "torch", "Size");
    bool marked = ndim > 3;
    if (marked)
        op(w, OP_MARK);
    for (uint32_t i = 0; i < ndim; i++)
        pk_int(w, dim_at(dims, i));
    pk_tuple_end(w, ndim, marked);
    op(w, OP_TUPLE1);
    op(w, OP_REDUCE);
}

static void pk_properties(pickler *w, ckpt_dtype dtype, bool requires_grad)
{
    pk_global(w, G_TP, DCP_MOD, "TensorProperties");
    op(w, OP_EMPTY_TUPLE);
    op(w, OP_NEWOBJ);
    op(w, OP_MARK);
    pk_global(w, G_DTYPE0 + (int)dtype, "torch", ckpt_dtype_name(dtype));
    if (!memo_get(w, V_STRIDED)) {
        pk_global(w, G_LAYOUT, "torch.serialization", "_get_layout");
        pk_cstr(w, "torch.strided");
        op(w, OP_TUPLE1);
        op(w, OP_REDUCE);
        memoize(w, V_STRIDED);
    }
    op(w, requires_grad ? OP_NEWTRUE : OP_NEWFALSE);
    if (!memo_get(w, V_CONTIGUOUS)) {
        /* _MEM_FORMAT_ENCODING(0): TORCH_CONTIGUOUS_FORMAT, as Python 3.13
         * pickles an enum member; 3.11 loads it the same */
        pk_global(w, G_MEMFMT, DCP_MOD, "_MEM_FORMAT_ENCODING");
        pk_int(w, 0);
        op(w, OP_TUPLE1);
        op(w, OP_REDUCE);
        memoize(w, V_CONTIGUOUS);
    }
    op(w, OP_NEWFALSE);
    op(w, OP_TUPLE);
    op(w, OP_BUILD);
}

/* An encoded planner path as a tuple of text and ints. */
static void pk_path(pickler *w, const uint8_t *p, uint32_t parts)
{
    cursor c = {p, SIZE_MAX, false};
    bool marked = parts > 3;
    if (marked)
        op(w, OP_MARK);
    for (uint32_t i = 0; i < parts; i++) {
        if (get_u8(&c)) {
            pk_int(w, (int64_t)get_u64(&c));
        } else {
            uint32_t n = get_u32(&c);
            pk_str(w, (const char *)take(&c, n), n);
        }
    }
    pk_tuple_end(w, parts, marked);
}

/* ---- merging the ranks' records ------------------------------------------ */

typedef struct key {
    const char *fqn;
    uint32_t fqn_len;
    size_t first, last;         /* its records, a list through rec.next */
    size_t chunks;
    uint64_t volume;            /* elements its chunks hold */
    bool overflow;
} key;

typedef struct merge {
    rec *recs;
    size_t count, cap;
    key *keys;
    size_t key_count, key_cap;
    size_t *slots;              /* open addressing: key index + 1 */
    size_t slot_cap;
} merge;

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static bool merge_rehash(merge *m)
{
    size_t cap = m->slot_cap ? m->slot_cap * 2 : 64;
    size_t *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return false;
    for (size_t k = 0; k < m->key_count; k++) {
        size_t i = (size_t)fnv(m->keys[k].fqn, m->keys[k].fqn_len) & (cap - 1);
        while (slots[i])
            i = (i + 1) & (cap - 1);
        slots[i] = k + 1;
    }
    free(m->slots);
    m->slots = slots;
    m->slot_cap = cap;
    return true;
}

/* The key of fqn, added when new; SIZE_MAX when out of memory. */
static size_t merge_key(merge *m, const char *fqn, uint32_t n, size_t rec_index)
{
    if ((m->key_count + 1) * 2 > m->slot_cap && !merge_rehash(m))
        return SIZE_MAX;
    size_t i = (size_t)fnv(fqn, n) & (m->slot_cap - 1);
    while (m->slots[i]) {
        key *k = &m->keys[m->slots[i] - 1];
        if (k->fqn_len == n && memcmp(k->fqn, fqn, n) == 0)
            return m->slots[i] - 1;
        i = (i + 1) & (m->slot_cap - 1);
    }
    if (m->key_count == m->key_cap) {
        key *grown = ckpt__array_grow(m->keys, &m->key_cap, sizeof(*grown));
        if (!grown)
            return SIZE_MAX;
        m->keys = grown;
    }
    m->keys[m->key_count] = (key){fqn, n, rec_index, rec_index, 0, 0, false};
    m->slots[i] = ++m->key_count;
    return m->key_count - 1;
}

static ckpt_status parse_rank(merge *m, int rank, const uint8_t *p, uint64_t len, ckpt_error *err)
{
    cursor c = {p, (size_t)len, false};
    while (c.left && !c.bad) {
        rec r;
        memset(&r, 0, sizeof(r));
        r.rank = rank;
        r.tensor = get_u8(&c);
        r.dtype = (ckpt_dtype)get_u8(&c);
        r.requires_grad = get_u8(&c);
        r.ndim = get_u32(&c);
        r.fqn_len = get_u32(&c);
        r.fqn = (const char *)take(&c, r.fqn_len);
        r.path_parts = get_u32(&c);
        r.path = c.p;
        for (uint32_t i = 0; i < r.path_parts && !c.bad; i++) {
            if (get_u8(&c))
                take(&c, 8);
            else
                take(&c, get_u32(&c));
        }
        if (r.ndim > MAX_NDIM)
            c.bad = true;
        size_t dims = (size_t)r.ndim * 8;
        r.global = (const int64_t *)take(&c, dims);
        r.offsets = (const int64_t *)take(&c, dims);
        r.sizes = (const int64_t *)take(&c, dims);
        r.file_offset = get_u64(&c);
        r.length = get_u64(&c);
        if (c.bad)
            break;
        if (m->count == m->cap) {
            rec *grown = ckpt__array_grow(m->recs, &m->cap, sizeof(*grown));
            if (!grown)
                return ckpt__nomem(err);
            m->recs = grown;
        }
        r.key = merge_key(m, r.fqn, r.fqn_len, m->count);
        if (r.key == SIZE_MAX)
            return ckpt__nomem(err);
        key *k = &m->keys[r.key];
        const rec *first = &m->recs[k->first];
        if (k->chunks || k->first != m->count) {
            /* every chunk of a key must agree with its first */
            bool same = first->tensor == r.tensor && first->dtype == r.dtype &&
                        first->ndim == r.ndim;
            for (uint32_t d = 0; same && d < r.ndim; d++)
                same = dim_at(first->global, d) == dim_at(r.global, d);
            if (!same || !r.tensor)
                return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET,
                                  "'%.*s': rank %d saves it as %s than rank %d does",
                                  (int)(r.fqn_len > 200 ? 200 : r.fqn_len), r.fqn, rank,
                                  r.tensor ? "another tensor" : "another value", first->rank);
        }
        r.chunk_index = k->chunks++;
        r.next = SIZE_MAX;
        if (k->first != m->count)
            m->recs[k->last].next = m->count;
        k->last = m->count;
        uint64_t v = 1;
        for (uint32_t d = 0; d < r.ndim; d++)
            k->overflow |= !ckpt__mul_u64(v, (uint64_t)dim_at(r.sizes, d), &v);
        k->overflow |= !ckpt__add_u64(k->volume, v, &k->volume);
        m->recs[m->count++] = r;
    }
    if (c.bad)
        return ckpt__fail(err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "the item list of rank %d is malformed", rank);
    return CKPT_OK;
}

/* The chunks of each tensor must add up to its size: every chunk lies
 * inside the tensor (checked when it was added), so a gap or an overlap
 * shows, unless an overlap exactly fills a gap elsewhere, which this
 * linear check lets through (ckpt verify finds it; torch's own check is a
 * pairwise one, quadratic in the chunks). */
static ckpt_status check_cover(const merge *m, ckpt_error *err)
{
    for (size_t k = 0; k < m->key_count; k++) {
        const rec *first = &m->recs[m->keys[k].first];
        if (!first->tensor)
            continue;
        uint64_t numel = 1, sum = m->keys[k].volume;
        bool overflow = m->keys[k].overflow;
        for (uint32_t d = 0; d < first->ndim; d++)
            overflow |= !ckpt__mul_u64(numel, (uint64_t)dim_at(first->global, d), &numel);
        if (overflow || sum != numel)
            return ckpt__fail(err, CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET,
                              "the chunks of '%.*s' hold %llu elements, the tensor %llu: "
                              "chunks are missing or overlap",
                              (int)(first->fqn_len > 200 ? 200 : first->fqn_len), first->fqn,
                              (unsigned long long)sum, (unsigned long long)numel);
    }
    return CKPT_OK;
}

static ckpt_status write_metadata(const char *tmp_dir, const char *final_dir, const merge *m,
                                  const char *save_id, unsigned flags, ckpt_error *err)
{
    pickler w;
    memset(&w, 0, sizeof(w));
    for (size_t i = 0; i < MEMO_SLOTS; i++)
        w.slot[i] = UINT32_MAX;

    pk_object_dict(&w, G_METADATA, DCP_MOD, "Metadata");
    pk_cstr(&w, "state_dict_metadata");
    op(&w, OP_EMPTY_DICT);
    for (size_t k = 0; k < m->key_count; k++) {
        if (k % 1000 == 0)
            op(&w, OP_MARK);
        const key *kk = &m->keys[k];
        const rec *first = &m->recs[kk->first];
        pk_str(&w, kk->fqn, kk->fqn_len);
        if (!first->tensor) {
            pk_global(&w, G_BSM, DCP_MOD, "BytesStorageMetadata");
            op(&w, OP_EMPTY_TUPLE);
            op(&w, OP_NEWOBJ);
        } else {
            pk_object_dict(&w, G_TSM, DCP_MOD, "TensorStorageMetadata");
            pk_cstr(&w, "properties");
            pk_properties(&w, first->dtype, first->requires_grad);
            pk_cstr(&w, "size");
            pk_size(&w, first->ndim, first->global);
            pk_cstr(&w, "chunks");
            op(&w, OP_EMPTY_LIST);
            size_t n = 0;
            for (size_t i = kk->first; i != SIZE_MAX; i = m->recs[i].next) {
                const rec *r = &m->recs[i];
                if (kk->chunks > 1 && n % 1000 == 0)
                    op(&w, OP_MARK);
                pk_object_dict(&w, G_CSM, DCP_MOD, "ChunkStorageMetadata");
                pk_cstr(&w, "offsets");
                pk_size(&w, r->ndim, r->offsets);
                pk_cstr(&w, "sizes");
                pk_size(&w, r->ndim, r->sizes);
                pk_end_object_dict(&w);
                n++;
                if (kk->chunks > 1 && (n % 1000 == 0 || n == kk->chunks))
                    op(&w, OP_APPENDS);
            }
            if (kk->chunks == 1)
                op(&w, OP_APPEND);
            pk_end_object_dict(&w);
        }
        if (k % 1000 == 999 || k + 1 == m->key_count)
            op(&w, OP_SETITEMS);
    }
    pk_cstr(&w, "planner_data");
    op(&w, OP_EMPTY_DICT);
    for (size_t k = 0; k < m->key_count; k++) {
        if (k % 1000 == 0)
            op(&w, OP_MARK);
        const rec *first = &m->recs[m->keys[k].first];
        pk_str(&w, first->fqn, first->fqn_len);
        pk_path(&w, first->path, first->path_parts);
        if (k % 1000 == 999 || k + 1 == m->key_count)
            op(&w, OP_SETITEMS);
    }
    pk_cstr(&w, "storage_data");
    op(&w, OP_EMPTY_DICT);
    char rel[48];
    for (size_t i = 0; i < m->count; i++) {
        const rec *r = &m->recs[i];
        if (i % 1000 == 0)
            op(&w, OP_MARK);
        pk_object_dict(&w, G_MI, DCP_MOD, "MetadataIndex");
        pk_cstr(&w, "fqn");
        pk_str(&w, r->fqn, r->fqn_len);
        if (r->tensor) {
            pk_cstr(&w, "offset");
            pk_size(&w, r->ndim, r->offsets);
            pk_cstr(&w, "index");
            pk_int(&w, (int64_t)r->chunk_index);
        } else {
            pk_cstr(&w, "index");
            op(&w, OP_NONE);
        }
        pk_end_object_dict(&w);
        pk_object_dict(&w, G_SI, "torch.distributed.checkpoint.filesystem", "_StorageInfo");
        pk_cstr(&w, "relative_path");
        snprintf(rel, sizeof(rel), "__%d_0.distcp", r->rank);
        pk_cstr(&w, rel);
        pk_cstr(&w, "offset");
        pk_int(&w, (int64_t)r->file_offset);
        pk_cstr(&w, "length");
        pk_int(&w, (int64_t)r->length);
        pk_end_object_dict(&w);
        if (i % 1000 == 999 || i + 1 == m->count)
            op(&w, OP_SETITEMS);
    }
    pk_cstr(&w, "storage_meta");
    pk_object_dict(&w, G_SM, DCP_MOD, "StorageMeta");
    pk_cstr(&w, "checkpoint_id");
    pk_global(&w, G_PATH, "pathlib", "PosixPath");
    pk_cstr(&w, final_dir);
    op(&w, OP_TUPLE1);
    op(&w, OP_REDUCE);
    pk_cstr(&w, "save_id");
    pk_cstr(&w, save_id);
    pk_cstr(&w, "load_id");
    op(&w, OP_NONE);
    pk_end_object_dict(&w);
    pk_end_object_dict(&w);
    op(&w, OP_STOP);

    ckpt__buf head = {0};
    put_u8(&head, OP_PROTO);
    put_u8(&head, 4);
    put_u8(&head, OP_FRAME);
    put_u64(&head, w.frame.len);
    ckpt_status st = CKPT_OK;
    char *path = NULL;
    if (head.failed || w.out.failed || w.frame.failed) {
        st = ckpt__nomem(err);
        goto done;
    }
    size_t plen = strlen(tmp_dir) + 16;
    path = malloc(plen);
    if (!path) {
        st = ckpt__nomem(err);
        goto done;
    }
    snprintf(path, plen, "%s/.metadata", tmp_dir);
    ckpt__out out;
    if ((st = ckpt__out_open(&out, path, flags & CKPT_SAVE_NO_FSYNC, err)) != CKPT_OK)
        goto done;
    /* the frames already full, then the last one */
    if ((st = ckpt__out_write(&out, head.p, 2, err)) != CKPT_OK ||
        (st = ckpt__out_write(&out, w.out.p, w.out.len, err)) != CKPT_OK ||
        (st = ckpt__out_write(&out, head.p + 2, 9, err)) != CKPT_OK ||
        (st = ckpt__out_write(&out, w.frame.p, w.frame.len, err)) != CKPT_OK ||
        (st = ckpt__out_commit(&out, err)) != CKPT_OK)
        ckpt__out_abort(&out);
done:
    free(path);
    ckpt__buf_free(&head);
    ckpt__buf_free(&w.out);
    ckpt__buf_free(&w.frame);
    return st;
}

/* ---- a rank's file ------------------------------------------------------------ */

static const shard *find_shard(const ckpt_dcp_shards *s, const ckpt_value *v)
{
    for (size_t i = 0; s && i < s->count; i++) {
        if (s->list[i].tensor == v)
            return &s->list[i];
    }
    return NULL;
}

static void put_item_header(ckpt__buf *b, const item *it, ckpt_dtype dtype, bool requires_grad,
                            uint32_t ndim)
{
    put_u8(b, it->tensor);
    put_u8(b, (uint8_t)dtype);
    put_u8(b, requires_grad);
    put_u32(b, ndim);
    put_u32(b, (uint32_t)strlen(it->fqn));
    ckpt__buf_put(b, it->fqn, strlen(it->fqn));
    put_u32(b, (uint32_t)it->path_len);
    for (size_t i = 0; i < it->path_len; i++) {
        put_u8(b, it->path[i].is_index);
        if (it->path[i].is_index) {
            put_u64(b, (uint64_t)it->path[i].index);
        } else {
            put_u32(b, (uint32_t)it->path[i].len);
            ckpt__buf_put(b, it->path[i].text, it->path[i].len);
        }
    }
}

/* Writes this rank's items into tmp_dir/__RANK_0.distcp; their records go
 * to *recs. */
static ckpt_status write_rank_file(const comm *c, const char *tmp_dir, const flattener *f,
                                   const ckpt_dcp_save_options *o, ckpt__buf *recs,
                                   ckpt_error *err)
{
    bool coord = c->rank == c->root;
    /* what this rank writes: bytes items first, as torch orders them */
    size_t mine = 0;
    for (size_t i = 0; i < f->count; i++) {
        if (coord || (f->items[i].tensor && find_shard(o->shards, f->items[i].v)))
            mine++;
    }
    if (mine == 0)
        return CKPT_OK;
    size_t plen = strlen(tmp_dir) + 48;
    char *path = malloc(plen);
    if (!path)
        return ckpt__nomem(err);
    snprintf(path, plen, "%s/__%d_0.distcp", tmp_dir, c->rank);
    ckpt__out out;
    ckpt_status st = ckpt__out_open(&out, path, o->flags & CKPT_SAVE_NO_FSYNC, err);
    free(path);
    if (st != CKPT_OK)
        return st;
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    so.prefix = "archive";
    for (int pass = 0; pass < 2 && st == CKPT_OK; pass++) {
        for (size_t i = 0; i < f->count && st == CKPT_OK; i++) {
            const item *it = &f->items[i];
            if (it->tensor != (pass == 1))
                continue;
            const shard *sh = it->tensor ? find_shard(o->shards, it->v) : NULL;
            if (!coord && !sh)
                continue;
            uint64_t at = out.size, len = 0;
            if (!it->tensor) {
                st = ckpt__save_torch_append(&out, it->v, &so, &len, err);
                if (st == CKPT_OK) {
                    put_item_header(recs, it, CKPT_DTYPE_INVALID, false, 0);
                    put_u64(recs, at);
                    put_u64(recs, len);
                }
                continue;
            }
            /* a plain tensor over the same storage: DCP saves detached
             * tensors, never Parameters */
            ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
            ckpt_tensor_get_info(ckpt_value_tensor(it->v), &ti);
            if (ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage) {
                st = CKPT_INVALID_ARG(err, "'%s' is not a strided tensor with a storage",
                                      it->fqn);
                break;
            }
            ckpt_tree *tree = ckpt_tree_new();
            if (!tree) {
                st = ckpt__nomem(err);
                break;
            }
            ckpt_tensor_desc d;
            ckpt_tensor_desc_init(&d);
            d.dtype = ti.dtype;
            d.ndim = ti.ndim;
            d.shape = ti.shape;
            d.stride = ti.stride;
            d.storage_offset = ti.storage_offset;
            const ckpt_value *v = ckpt_new_view(tree, it->v, &d);
            if (!v)
                st = ckpt_tree_status(tree, err);
            else
                st = ckpt__save_torch_append(&out, v, &so, &len, err);
            ckpt_tree_free(tree);
            if (st != CKPT_OK) {
                ckpt__error_prefix_record(err, it->fqn);
                break;
            }
            static const int64_t zero[MAX_NDIM];
            put_item_header(recs, it, ti.dtype, ti.requires_grad, ti.ndim);
            ckpt__buf_put(recs, sh ? sh->dims : ti.shape, ti.ndim * 8);
            ckpt__buf_put(recs, sh ? sh->dims + ti.ndim : zero, ti.ndim * 8);
            ckpt__buf_put(recs, ti.shape, ti.ndim * 8);
            put_u64(recs, at);
            put_u64(recs, len);
        }
    }
    kill_point(c, KILL_WRITTEN);
    if (st == CKPT_OK)
        st = ckpt__out_commit(&out, err);
    else
        ckpt__out_abort(&out);
    return st;
}

/* ---- the save --------------------------------------------------------------- */

typedef struct outcome {
    ckpt_status status;
    ckpt_error err;
} outcome;

ckpt_status ckpt_dcp_save(const char *dir, const ckpt_value *root,
                          const ckpt_dcp_save_options *opts, ckpt_error *err)
{
    return ckpt__dcp_save_ex(dir, root, opts, NULL, NULL, NULL, err);
}

ckpt_status ckpt__dcp_save_ex(const char *dir_in, const ckpt_value *root,
                              const ckpt_dcp_save_options *opts, const ckpt_error *preflight,
                              ckpt__dcp_before_swap_fn before_swap, void *user, ckpt_error *err)
{
    ckpt_dcp_save_options o;
    ckpt_dcp_save_options_default(&o);
    ckpt__struct_in(&o, sizeof(o), opts);
    comm c;
    CKPT_RETURN_IF_ERROR(comm_init(&c, &o, err));
    bool coord = c.rank == c.root;

    /* Arguments are checked by every rank alike before any collective call. */
    if (!dir_in || !*dir_in || !root)
        return CKPT_INVALID_ARG(err, "ckpt_dcp_save needs a directory and a state dict");
    if (!is_dict(root))
        return CKPT_INVALID_ARG(err, "a DCP state dict is a dict, not a %s",
                                ckpt_kind_name(ckpt_value_kind(root)));
    size_t dlen = strlen(dir_in);
    while (dlen > 1 && dir_in[dlen - 1] == '/')
        dlen--;
    char *dir = strndup(dir_in, dlen);
    size_t tlen = dlen + ID_LEN + 16;
    char *tmp = malloc(tlen), *old = malloc(tlen);
    flattener f;
    memset(&f, 0, sizeof(f));
    f.err = err;
    ckpt__buf recs = {0};
    uint8_t *all = NULL;
    uint64_t *lens = NULL;
    merge m;
    memset(&m, 0, sizeof(m));
    outcome local = {CKPT_OK, {0}}, final = {CKPT_OK, {0}};
    char id[ID_LEN] = {0};

    if (!dir || !tmp || !old)
        local.status = ckpt__nomem(&local.err);
    else if (preflight && preflight->status != CKPT_OK)
        local = (outcome){preflight->status, *preflight};

    /* the coordinator names and makes the temporary directory */
    if (coord && local.status == CKPT_OK) {
        ckpt__dir_remove_leftovers(dir);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(id, sizeof(id), "%lx%lx-%lx", (unsigned long)ts.tv_sec,
                 (unsigned long)ts.tv_nsec, (unsigned long)getpid());
        snprintf(tmp, tlen, "%s.tmp-%s", dir, id);
        if (mkdir(tmp, 0777) != 0)
            local.status = ckpt__fail(&local.err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                                      "cannot create the directory %s: %s", tmp, strerror(errno));
    }
    if (coord && local.status != CKPT_OK)
        id[0] = 0; /* tells the others */
    comm_bcast(&c, id, sizeof(id));
    if (!id[0] && local.status == CKPT_OK) {
        local.status = CKPT_ERR_IO;
        ckpt__fail(&local.err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                   "the coordinator could not make the temporary directory");
    }
    if (local.status == CKPT_OK) {
        snprintf(tmp, tlen, "%s.tmp-%s", dir, id);
        kill_point(&c, KILL_TEMP_DIR);
        f.err = &local.err;
        local.status = flatten(&f, root);
    }
    if (local.status == CKPT_OK)
        local.status = write_rank_file(&c, tmp, &f, &o, &recs, &local.err);
    if (local.status == CKPT_OK)
        kill_point(&c, KILL_SYNCED);

    /* the gather: a failed rank sends a status and its error instead */
    ckpt__buf msg = {0};
    put_u32(&msg, (uint32_t)local.status);
    if (local.status != CKPT_OK)
        ckpt__buf_put(&msg, &local.err, sizeof(local.err));
    else
        ckpt__buf_put(&msg, recs.p, recs.len);
    if (recs.failed)
        msg.failed = true;
    bool gathered = comm_gather(&c, &msg, &all, &lens);
    ckpt__buf_free(&msg);

    if (coord) {
        if (!gathered) {
            final.status = ckpt__nomem(&final.err);
        } else {
            uint64_t at = 0;
            for (int r = 0; r < c.size && final.status == CKPT_OK; r++) {
                uint64_t n = lens[r];
                if (n == UINT64_MAX || n < 4) {
                    final.status = ckpt__fail(&final.err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET,
                                              "rank %d could not send its item list", r);
                    break;
                }
                uint32_t rs;
                memcpy(&rs, all + at, 4);
                if (rs != CKPT_OK) {
                    final.status = (ckpt_status)rs;
                    if (n >= 4 + sizeof(ckpt_error))
                        memcpy(&final.err, all + at + 4, sizeof(ckpt_error));
                    final.err.message[sizeof(final.err.message) - 1] = 0;
                    final.err.record[sizeof(final.err.record) - 1] = 0;
                    if (c.size > 1) {
                        char msg_copy[sizeof(final.err.message)];
                        memcpy(msg_copy, final.err.message, sizeof(msg_copy));
                        snprintf(final.err.message, sizeof(final.err.message), "rank %d: %.300s", r,
                                 msg_copy);
                    }
                    break;
                }
                final.status = parse_rank(&m, r, all + at + 4, n - 4, &final.err);
                at += n;
            }
        }
        if (final.status == CKPT_OK)
            final.status = check_cover(&m, &final.err);
        if (final.status == CKPT_OK)
            final.status = write_metadata(tmp, dir, &m, id, o.flags, &final.err);
        if (final.status == CKPT_OK && !(o.flags & CKPT_SAVE_NO_FSYNC) && ckpt__dir_sync(tmp) != 0)
            final.status = ckpt__fail(&final.err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                                      "cannot sync %s: %s", tmp, strerror(errno));
        if (final.status == CKPT_OK) {
            kill_point(&c, KILL_METADATA);
            if (before_swap)
                final.status = before_swap(user, tmp, &final.err);
        }
        if (final.status == CKPT_OK)
            final.status = ckpt__dir_swap_in(tmp, dir, old, tlen, &final.err);
        if (final.status == CKPT_OK) {
            kill_point(&c, KILL_SWAPPED);
            char *parent = strdup(dir);
            char *slash = parent ? strrchr(parent, '/') : NULL;
            if (slash)
                *(slash == parent ? slash + 1 : slash) = 0;
            if (!(o.flags & CKPT_SAVE_NO_FSYNC) && parent &&
                ckpt__dir_sync(slash ? parent : ".") != 0)
                final.status = ckpt__fail(&final.err, CKPT_ERR_IO, "", CKPT_NO_OFFSET,
                                          "cannot sync the directory holding %s: %s", dir,
                                          strerror(errno));
            free(parent);
            kill_point(&c, KILL_COMMITTED);
            if (old[0])
                ckpt__dir_remove(old);
        } else if (id[0]) {
            ckpt__dir_remove(tmp); /* the previous directory stays as it was */
        }
    }
    comm_bcast(&c, &final, sizeof(final));
    if (final.status != CKPT_OK && err)
        *err = final.err;

    free(all);
    free(lens);
    free(m.recs);
    free(m.keys);
    free(m.slots);
    ckpt__buf_free(&recs);
    flattener_free(&f);
    free(dir);
    free(tmp);
    free(old);
    return final.status;
}
