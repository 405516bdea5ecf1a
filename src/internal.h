/*
 * internal.h - shared declarations of libckpt's source files.
 * Internal symbols start with ckpt__ (two underscores) and are hidden in the
 * shared library.
 */
#ifndef CKPT_INTERNAL_H
#define CKPT_INTERNAL_H

#define CKPT_BUILDING_LIBRARY 1
#include "ckpt.h"

#include <stdarg.h>
#include <string.h>

#if defined(__GNUC__)
#define CKPT_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define CKPT_UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CKPT_PRINTF(a, b)
#define CKPT_UNLIKELY(x) (x)
#endif

/* ---- errors ---------------------------------------------------------- */

/* Fills err (may be NULL) and returns status. offset is inside record. */
ckpt_status ckpt__fail(ckpt_error *err, ckpt_status status, const char *record,
                       uint64_t offset, const char *fmt, ...) CKPT_PRINTF(5, 6);
/* The same with a va_list, for functions that take a format of their own. */
ckpt_status ckpt__vfail(ckpt_error *err, ckpt_status status, const char *record,
                        uint64_t offset, const char *fmt, va_list ap) CKPT_PRINTF(5, 0);
/*
 * Structs that cross the public boundary start with a caller-set
 * struct_size (libdeflate's sizeof_options): the library reads and writes
 * only min(struct_size, sizeof) bytes of them.
 *
 * ckpt__struct_in copies a caller's struct (src may be NULL) over dst, which
 * holds the defaults, and sets dst's struct_size to size; returns src's
 * struct_size (0 for NULL), for callers that need some fields set.
 * ckpt__struct_out copies the library's src (size bytes) into the caller's
 * dst and sets dst's struct_size to the bytes written; false, writing
 * nothing, when dst is NULL or its struct_size cannot hold struct_size.
 */
size_t ckpt__struct_in(void *dst, size_t size, const void *src);
bool ckpt__struct_out(void *dst, const void *src, size_t size);
/* Copies the limits a caller set (src->struct_size bytes of them) over the
 * defaults in dst. */
void ckpt__limits_apply(ckpt_limits *dst, const ckpt_limits *src);
/* Copies the save options a caller set (src->struct_size bytes of them; src
 * may be NULL) over the defaults in dst. */
void ckpt__save_options_apply(ckpt_save_options *dst, const ckpt_save_options *src);
/* Sets err->file_offset = base + err->offset when both are known. */
void ckpt__error_set_file_base(ckpt_error *err, uint64_t base);
/* Makes err->record "prefix: record" (e.g. the shard file of a sharded index),
 * or "prefix" when the record is empty. */
void ckpt__error_prefix_record(ckpt_error *err, const char *prefix);

/* Bytes from a file as text for a message: printable ASCII kept, any other
 * byte, '\\' and (apos) '\'' as \xNN (names from hostile files may hold
 * escapes or invalid UTF-8), cut with "..." where the rest would not fit
 * cap (at least 8). Returns buf. */
const char *ckpt__quote(char *buf, size_t cap, const void *p, size_t n, bool apos);
/* CKPT_ERR_NOMEM, "out of memory", about no record. */
ckpt_status ckpt__nomem(ckpt_error *err);
/* The caller passed something wrong: CKPT_ERR_INVALID_ARG, about no record. */
#define CKPT_INVALID_ARG(err, ...) \
    ckpt__fail((err), CKPT_ERR_INVALID_ARG, "", CKPT_NO_OFFSET, __VA_ARGS__)

#define CKPT_RETURN_IF_ERROR(expr)                                   \
    do {                                                             \
        ckpt_status ckpt__st = (expr);                               \
        if (ckpt__st != CKPT_OK) return ckpt__st;                    \
    } while (0)

/* ---- checked arithmetic ---------------------------------------------- */

static inline bool ckpt__mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool ckpt__add_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* ---- little-endian loads --------------------------------------------- */

static inline uint16_t ckpt__le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ckpt__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ckpt__le64(const uint8_t *p)
{
    return (uint64_t)ckpt__le32(p) | ((uint64_t)ckpt__le32(p + 4) << 32);
}

/* ---- growable memory (buf.c) ------------------------------------------ */

/* Bytes appended at the end, a NUL kept after them (p is a C string when
 * they hold no NUL). An append that fails sets failed and drops the bytes,
 * and every later one is dropped too: check failed once at the end. */
typedef struct ckpt__buf {
    uint8_t *p;
    size_t len, cap;
    bool failed;                /* out of memory */
} ckpt__buf;

/* Room for more bytes (and the NUL); false when out of memory. */
bool ckpt__buf_reserve(ckpt__buf *b, size_t more);
void ckpt__buf_free(ckpt__buf *b);

static inline void ckpt__buf_put(ckpt__buf *b, const void *p, size_t n)
{
    if (b->failed || (CKPT_UNLIKELY(b->len + n >= b->cap) && !ckpt__buf_reserve(b, n)))
        return;
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

/* Doubles an array of *cap elements of elem bytes (16 at first): the new
 * array, or NULL when out of memory (items and *cap are then unchanged). */
void *ckpt__array_grow(void *items, size_t *cap, size_t elem);

/* Pointers, by address (zero-initialise it; free with ckpt__ptr_set_free). */
typedef struct ckpt__ptr_set {
    const void **slots;
    size_t cap, count;
} ckpt__ptr_set;

/* Adds v (not NULL): 1 when it is new, 0 when it was there, -1 when out of
 * memory. */
int ckpt__ptr_set_add(ckpt__ptr_set *p, const void *v);
void ckpt__ptr_set_free(ckpt__ptr_set *p);

/* ---- arena: every value of a file lives here, freed at once ----------- */

typedef struct ckpt__arena_block ckpt__arena_block;
typedef struct ckpt__arena {
    ckpt__arena_block *head;
    uint64_t used;      /* bytes handed out, counted against limit */
    uint64_t limit;     /* max_value_bytes */
} ckpt__arena;

void ckpt__arena_init(ckpt__arena *a, uint64_t limit);
void ckpt__arena_free(ckpt__arena *a);
/* Zeroed, 16-byte aligned memory; NULL when out of memory or over the limit
 * (ckpt__arena_over_limit tells which). */
void *ckpt__arena_alloc(ckpt__arena *a, size_t size);
bool ckpt__arena_over_limit(const ckpt__arena *a, size_t more);
/* Copies size bytes and appends a NUL. */
char *ckpt__arena_strdup(ckpt__arena *a, const char *s, size_t size);

/* ---- storages and tensors -------------------------------------------- */

typedef struct ckpt__storage {
    uint32_t index;            /* in the file's storage table */
    const char *key;           /* "0", "1", ... */
    const char *location;      /* "cpu", "cuda:0", ... */
    ckpt_dtype dtype;          /* typed storage dtype; UINT8 for UntypedStorage */
    bool untyped;              /* UntypedStorage: holds any dtype */
    uint64_t nbytes;           /* declared numel x element size */
    const char *record;        /* record name, e.g. "archive/data/0" */
    struct ckpt__storage *base;/* legacy storage views: the root storage */
    ckpt_file *owner;          /* the file holding the bytes (set when added) */
    uint64_t base_offset;      /* byte offset inside base */
    /* where the bytes are: filled by the format layer */
    uint64_t file_offset;      /* CKPT_NO_OFFSET when not stored plainly */
    int32_t record_index;      /* zip entry index, -1 when none */
    bool big_endian;
    bool resolved;
    const uint8_t *data;       /* native-endian, aligned bytes once resolved */
    uint8_t *owned;            /* malloc'd copy, when one was needed */
    /* storages made by a ckpt_tree (owner NULL): either caller memory
     * (data set, resolved true) or the elements of cast_src converted to
     * dtype, produced while writing (data NULL) */
    const struct ckpt_tensor *cast_src;
} ckpt__storage;

struct ckpt_tensor {
    ckpt_dtype dtype;
    uint32_t ndim;
    int64_t *shape;
    int64_t *stride;
    int64_t storage_offset;
    uint64_t numel;
    ckpt__storage *storage;    /* NULL for meta and sparse tensors */
    bool requires_grad;
    bool is_parameter;
    uint8_t layout;            /* ckpt_layout */
    struct ckpt_tensor *parts[3]; /* sparse: see ckpt_layout */
};

/* Checks a sparse tensor's parts against its layout and shape (dtypes, part
 * shapes, nnz); the indices themselves are checked by ckpt__sparse_check. */
ckpt_status ckpt__sparse_validate(ckpt_tensor *t, const char *record, uint64_t offset,
                                  ckpt_error *err);
/* Checks every index of a sparse tensor against its shape (and compressed
 * indices for monotony), reading its parts a piece at a time. */
ckpt_status ckpt__sparse_check(ckpt_file *f, const ckpt_tensor *t, ckpt_error *err);

/* The index check of one part of a sparse tensor, fed the part's indices
 * in row-major order as they come (a piece of a record at a time): COO
 * indices (part 0) against the shape, compressed indices (part 0) from 0 to
 * nnz without decreasing, plain indices (part 1) against the other size. */
typedef struct ckpt__index_check {
    const ckpt_tensor *t;       /* the sparse tensor */
    unsigned part;
    uint64_t count;             /* indices seen */
    int64_t first, prev;
    uint64_t decrease_at;       /* first place compressed indices decrease */
    int64_t minor;              /* compressed layouts: bound of plain indices */
    uint64_t nnz;
    uint8_t partial[8];         /* an index split between pieces */
    size_t partial_len;
} ckpt__index_check;

/* Parts of t whose indices are checked: 0, 1 (COO) or 2. */
unsigned ckpt__index_parts(const ckpt_tensor *t);
void ckpt__index_check_init(ckpt__index_check *c, const ckpt_tensor *t, unsigned part);
/* Bytes of the part (its dtype, byte-swapped first when swap). */
ckpt_status ckpt__index_check_bytes(ckpt__index_check *c, const uint8_t *p, size_t n, bool swap,
                                    ckpt_error *err);
ckpt_status ckpt__index_check_values(ckpt__index_check *c, const int64_t *v, size_t n,
                                     ckpt_error *err);
/* After the last index: what only the whole part tells. */
ckpt_status ckpt__index_check_end(ckpt__index_check *c, ckpt_error *err);
/* Reads the whole part through its storage (ckpt__tensor_read) into c,
 * then ends it. */
ckpt_status ckpt__index_check_part(ckpt__index_check *c, ckpt_error *err);
/* Writes the dense array of a sparse tensor into dst (nbytes, zeroed here). */
ckpt_status ckpt__sparse_to_dense(ckpt_file *f, const ckpt_tensor *t, uint8_t *dst,
                                  ckpt_error *err);

/* Bytes per storage element: a byte for packed sub-byte dtypes (quint4x2). */
static inline size_t ckpt__storage_elem_size(ckpt_dtype d)
{
    size_t n = ckpt_dtype_size(d);
    return n ? n : 1;
}

/* qint8, quint8, qint32, quint4x2, quint2x4: tensors with a quantizer. */
static inline bool ckpt__dtype_is_quantized(ckpt_dtype d)
{
    return d == CKPT_DTYPE_QINT8 || d == CKPT_DTYPE_QUINT8 || d == CKPT_DTYPE_QINT32 ||
           d == CKPT_DTYPE_QUINT4X2 || d == CKPT_DTYPE_QUINT2X4;
}

/* The dtypes ckpt_convert_dtype converts between. */
static inline bool ckpt__dtype_castable(ckpt_dtype d)
{
    return d == CKPT_DTYPE_FLOAT64 || d == CKPT_DTYPE_FLOAT32 || d == CKPT_DTYPE_FLOAT16 ||
           d == CKPT_DTYPE_BFLOAT16;
}

/* A parsed persistent id ('storage', storage_type, key, location, numel[, view]). */
typedef struct ckpt__storage_pid {
    ckpt_dtype dtype;
    bool untyped;
    const char *key;           /* 1 to 64 bytes, no '/' or ".." */
    size_t key_len;
    const char *location;
    uint64_t numel;            /* in storage elements (bytes when untyped) */
    uint64_t nbytes;
    const ckpt_value *view;    /* the legacy 6th item, NULL when items == 5 */
} ckpt__storage_pid;

/* Checks a persistent id of exactly `items` items (5 zip, 6 legacy). */
ckpt_status ckpt__storage_pid_parse(const ckpt_value *pid, size_t items, const char *record,
                                    uint64_t offset, ckpt__storage_pid *out, ckpt_error *err);

/* Storages by key (open addressing over s->key). */
typedef struct ckpt__storage_table {
    ckpt__storage **slots;
    size_t cap, count;
} ckpt__storage_table;

ckpt__storage *ckpt__storage_table_find(const ckpt__storage_table *t, const char *key, size_t len);
bool ckpt__storage_table_add(ckpt__storage_table *t, ckpt__storage *s);
void ckpt__storage_table_free(ckpt__storage_table *t);
/* A CKPT__KIND_STORAGE value for the pickle interpreter. */
ckpt_status ckpt__storage_value(ckpt__arena *a, ckpt__storage *s, const char *record,
                                uint64_t offset, ckpt_value **out, ckpt_error *err);

/* Checks shape/stride/offset (overflow-safe) against the storage and fills
 * numel. record/offset name the place for errors. */
ckpt_status ckpt__tensor_validate(ckpt_tensor *t, const ckpt_limits *limits,
                                  const char *record, uint64_t offset, ckpt_error *err);
bool ckpt__tensor_is_contiguous(const ckpt_tensor *t);
/* The tensor's byte count (numel x element size, rounded up for sub-byte);
 * numel must be validated. */
uint64_t ckpt__tensor_nbytes(const ckpt_tensor *t);
/* ckpt_tensor_copy without the max_output_ratio check: for copies into
 * memory the caller sized from its own shapes (a C model's parameters). */
ckpt_status ckpt__tensor_copy(ckpt_file *f, const ckpt_tensor *t, void *dst, size_t dst_size,
                              ckpt_error *err);
/* Byte-swaps n elements of elem_size bytes in place (complex: per half). */
void ckpt__byteswap(uint8_t *p, uint64_t n, ckpt_dtype dtype);

/* ---- values ------------------------------------------------------------ */

/* Internal kinds extend ckpt_kind; never visible through ckpt_value_kind. */
enum {
    CKPT__KIND_STORAGE = 100,  /* result of persistent_load: a storage */
    CKPT__KIND_MARK = 101      /* never stored: the VM keeps marks apart */
};

struct ckpt_value {
    uint16_t kind;             /* ckpt_kind or CKPT__KIND_* */
    uint16_t flags;            /* CKPT__VF_* */
    uint32_t global_id;        /* CKPT_KIND_GLOBAL: ckpt__global id */
    union {
        bool b;
        int64_t i;
        double f;
        struct { double re, im; } c;
        struct { const char *ptr; size_t len; } s;   /* STR BYTES BIGINT DEVICE GLOBAL */
        struct { ckpt_value **items; size_t len, cap; } seq; /* LIST TUPLE SET SIZE */
        struct {
            ckpt_value **keys;
            ckpt_value **vals;
            size_t len, cap;
            uint32_t *index;       /* hash index: slot -> entry+1, 0 = empty */
            size_t index_cap;      /* power of two, 0 = no index yet */
            ckpt_value *state;     /* BUILD state (OrderedDict attributes) */
        } dict;                    /* DICT ORDERED_DICT */
        ckpt_dtype dtype;
        struct { ckpt_tensor *t; ckpt_value *state; } tensor;
        ckpt__storage *storage;
        struct {
            ckpt_value *cls;       /* the GLOBAL (or OBJECT) that was called */
            ckpt_value *args;      /* TUPLE */
            ckpt_value *kwargs;    /* DICT or NULL */
            ckpt_value *state;     /* BUILD state or NULL */
            ckpt_value *dict;      /* SETITEM(S) entries: a DICT or NULL */
            ckpt_value *items;     /* APPEND(S)/ADDITEMS items: a LIST or NULL */
        } obj;                     /* OBJECT */
    } u;
};

#define CKPT__VF_VISITING 0x1u     /* on the current walk path (cycle guard) */
#define CKPT__VF_FROZEN 0x2u       /* SET: a frozenset */
#define CKPT__VF_KNOWN 0x4u        /* walk.c, during a walk: whether a tensor is
                                      reachable from this container is known */
#define CKPT__VF_HOLDS 0x8u        /* ... and one is */

ckpt_value *ckpt__value_new(ckpt__arena *a, int kind);
ckpt_value *ckpt__value_str(ckpt__arena *a, int kind, const char *s, size_t len);
/* Appends to LIST/TUPLE/SET/SIZE; false on out of memory / limit. */
bool ckpt__seq_append(ckpt__arena *a, ckpt_value *seq, ckpt_value *item);
/* dict[key] = val with Python semantics: an existing equal key keeps its
 * place and gets the new value. false on out of memory / limit. */
bool ckpt__dict_set(ckpt__arena *a, ckpt_value *dict, ckpt_value *key, ckpt_value *val);
/* SipHash of bytes keyed from owner's address (ASLR varies it): tables
 * indexed by names from a file use it, so a file cannot choose collisions. */
uint64_t ckpt__hash_keyed(const void *owner, const void *p, size_t n);
/* Python equality of plain keys (numbers across bool/int/float, text, bytes, tuples). */
bool ckpt__value_equal(const ckpt_value *x, const ckpt_value *y);

/* ---- pickle interpreter --------------------------------------------- */

/* The closed set of globals the interpreter knows (see pickle_call.c). */
typedef struct ckpt__pickle_ctx ckpt__pickle_ctx;

/* Turns a persistent id (the value of BINPERSID/PERSID) into a value. */
typedef ckpt_status (*ckpt__persistent_load_fn)(void *user, ckpt__pickle_ctx *ctx,
                                                const ckpt_value *pid, uint64_t offset,
                                                ckpt_value **out, ckpt_error *err);

/* ckpt__pickle_ctx.flags */
#define CKPT__PICKLE_INERT 0x1u    /* a global outside the allow-list becomes an inert
                                      GLOBAL (global_id CKPT__G_UNKNOWN); calling it or
                                      its results makes an OBJECT that keeps its
                                      arguments, BUILD state and items. Nothing is
                                      ever called. */
#define CKPT__PICKLE_NO_FAIL 0x2u  /* scanning: a call, BUILD or item operation that
                                      has no data meaning makes an inert OBJECT (or is
                                      dropped) instead of failing, and framing that
                                      readers disagree on is told in stop_frame_end and
                                      framing; limits and broken streams still stop the
                                      pickle */

/* Scanning: every global the pickle names (GLOBAL, STACK_GLOBAL, INST), with
 * module and name as written and the value it became. */
typedef ckpt_status (*ckpt__global_seen_fn)(void *user, const char *module, size_t mlen,
                                            const char *name, size_t nlen, const ckpt_value *v,
                                            uint64_t offset);
/* Scanning: a use (CKPT_SCAN_USE_*) of a value a global became, at the
 * offset of the opcode. */
typedef ckpt_status (*ckpt__global_use_fn)(void *user, const ckpt_value *global, unsigned use,
                                           uint64_t offset);

struct ckpt__pickle_ctx {
    const ckpt_limits *limits;
    ckpt__arena *arena;
    const char *record;                 /* for error messages */
    ckpt__persistent_load_fn persistent_load;
    void *user;                         /* passed to every callback */
    int protocol;                       /* out: PROTO seen, -1 when none */
    unsigned flags;                     /* CKPT__PICKLE_* */
    ckpt__global_seen_fn on_global;     /* may be NULL */
    ckpt__global_use_fn on_use;         /* may be NULL */
    size_t stop_frame_end;              /* out, with CKPT__PICKLE_NO_FAIL: where the frame
                                           that holds STOP ends when it runs on past STOP
                                           (an error otherwise: see FRAME in
                                           pickle_read.c); 0 when it does not */
    ckpt_error *framing;                /* with CKPT__PICKLE_NO_FAIL, may be NULL: gets the
                                           first break of the other framing rules (status
                                           CKPT_OK when none), and the pickle reads on as
                                           contiguous bytes instead of stopping there */
};

/*
 * Interprets one pickle (up to and including STOP) from data[0..size).
 * *consumed (may be NULL) gets the bytes used. Offsets in errors are relative
 * to data. Nothing is called or imported: allowed globals are evaluated by
 * their data-only meaning; any other global is CKPT_ERR_UNSAFE naming
 * module.name and its offset, or, with CKPT__PICKLE_INERT, an inert value.
 */
ckpt_status ckpt__unpickle(ckpt__pickle_ctx *ctx, const uint8_t *data, size_t size,
                           size_t *consumed, ckpt_value **out, ckpt_error *err);

/* ---- zip layer ------------------------------------------------------- */

typedef struct ckpt__zip_entry {
    const char *name;          /* NUL-terminated copy */
    size_t name_len;
    uint64_t header_offset;    /* local file header */
    uint64_t data_offset;      /* first byte of data */
    uint64_t comp_size;
    uint64_t size;
    uint32_t crc32;
    uint16_t method;           /* 0 stored, 8 deflated */
    uint16_t flags;
} ckpt__zip_entry;

typedef struct ckpt__zip {
    const uint8_t *base;
    uint64_t size;
    ckpt__zip_entry *entries;  /* central directory order */
    size_t count;
    uint32_t *sorted;          /* indices sorted by name, for lookup */
    char *names;               /* storage for names */
} ckpt__zip;

/* true when the bytes look like a zip (local header or empty-archive EOCD). */
bool ckpt__zip_detect(const uint8_t *data, uint64_t size);
/* Parses the central directory and checks every entry strictly (see zip_read.c). */
ckpt_status ckpt__zip_open(ckpt__zip *z, const uint8_t *data, uint64_t size,
                           const ckpt_limits *limits, ckpt_error *err);
void ckpt__zip_close(ckpt__zip *z);
/* Index of the entry with this exact name, or -1. */
long ckpt__zip_find(const ckpt__zip *z, const char *name);
/* The entry's bytes: stored ones point into the map (*owned = NULL); deflated
 * ones are inflated into a malloc'd buffer returned in *owned too. */
ckpt_status ckpt__zip_read(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                           const uint8_t **data, uint8_t **owned, ckpt_error *err);
/* Checks the entry's CRC32 (of the inflated bytes for deflated entries) as
 * ckpt__zip_stream does: in bounded memory. */
ckpt_status ckpt__zip_check_crc(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                                ckpt_error *err);

/* Receives an entry's bytes in order: offset is where p starts in the
 * entry. A status other than CKPT_OK stops the reading and is returned. */
typedef ckpt_status (*ckpt__zip_sink)(void *user, uint64_t offset, const uint8_t *p, size_t n,
                                      ckpt_error *err);
/* Reads an entry once, in order, a piece of at most 256 KiB at a time:
 * stored entries from the map, deflated ones inflated through one small
 * buffer (never held whole: memory does not grow with the entry). Checks
 * the inflate limits first, then, as the bytes pass, the declared size, the
 * end of the deflate stream and the CRC32. sink may be NULL. */
ckpt_status ckpt__zip_stream(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                             ckpt__zip_sink sink, void *user, ckpt_error *err);

/* Raw deflate, inflated a piece at a time (zlib's streaming inflate). */
typedef enum ckpt__inflate_result {
    CKPT__INFLATE_OK = 0,      /* exactly out_size bytes, the stream ends at the input's end */
    CKPT__INFLATE_SHORT,       /* the stream ends before out_size bytes */
    CKPT__INFLATE_LONG,        /* it holds more than out_size bytes (no more is made) */
    CKPT__INFLATE_TRAILING,    /* it ends before the input does (*in_used: where) */
    CKPT__INFLATE_BAD,         /* invalid deflate data, or input that ends inside it */
    CKPT__INFLATE_STOPPED,     /* the sink said stop */
    CKPT__INFLATE_NOMEM
} ckpt__inflate_result;
/* Gets each inflated piece (at most 256 KiB); false stops the inflating. */
typedef bool (*ckpt__inflate_sink)(void *user, const uint8_t *p, size_t n);
/* Inflates in[0..in_size), expecting out_size bytes, handing them to sink
 * (may be NULL) as they come; holds one piece at most. *in_used (may be
 * NULL) gets the input bytes the stream took. */
ckpt__inflate_result ckpt__inflate(const uint8_t *in, uint64_t in_size, uint64_t out_size,
                                   ckpt__inflate_sink sink, void *user, uint64_t *in_used);

/* ---- formats ----------------------------------------------------------- */

typedef struct ckpt__tensor_ref {
    const char *name;
    ckpt_tensor *tensor;
    ckpt_value *value;         /* the tree's value holding it */
} ckpt__tensor_ref;

struct ckpt_file {
    ckpt_open_options opts;
    ckpt_format format;
    const uint8_t *map;
    uint64_t map_size;
    bool mapped;                  /* munmap at close */
    ckpt__arena arena;
    ckpt_value *root;

    ckpt__zip zip;
    bool has_zip;
    uint64_t inflated_total;      /* bytes of inflated records held */
    uint64_t content_bytes;       /* what the file holds (output.c), set at open */

    ckpt__storage **storages;
    size_t storage_count, storage_cap;

    ckpt__tensor_ref *tensors;
    size_t tensor_count, tensor_cap;
    uint64_t tensor_name_bytes;   /* of every name, NULs included */
    uint32_t *name_index;         /* hash of tensor names: slot -> i+1 */
    size_t name_index_cap;

    /* records for formats without a zip: safetensors tensors, legacy storages */
    ckpt_record_info *records;
    size_t record_count;

    const char *prefix, *version, *byteorder, *serialization_id;
    const char *format_version, *storage_alignment;
    int pickle_protocol;
    int64_t legacy_protocol_version;
    bool big_endian;
    ckpt_value *metadata;

    ckpt_file **shards;           /* sharded index: the shard files it opened */
    size_t shard_count;
    const char *path;             /* as given to ckpt_open, NULL for memory */
    uint64_t dev, ino;            /* the opened file's identity (0 for memory) */
    bool is_shard;                /* opened by a sharded index: may not be one */
    /* The mapped file's descriptor, kept so that writers can read bytes
     * that pass through unchanged with pread (ckpt__out_copy) instead of
     * faulting the map in; has_fd is false for memory. */
    int fd;
    bool has_fd;
};

ckpt_status ckpt__open_torch_zip(ckpt_file *f, ckpt_error *err);
/* Legacy files, and plain pickles (format PICKLE) when the magic is absent. */
ckpt_status ckpt__open_torch_legacy(ckpt_file *f, ckpt_error *err);
ckpt_status ckpt__open_safetensors(ckpt_file *f, ckpt_error *err);
/* true when the bytes look like a sharded checkpoint index (JSON with weight_map). */
bool ckpt__sharded_detect(const uint8_t *data, uint64_t size);
ckpt_status ckpt__open_sharded(ckpt_file *f, ckpt_error *err);
/* ckpt_open of an opened descriptor (taken over: closed here or kept by the
 * file) whose fstat is *sb. shard: the file is a shard of a sharded index,
 * which may not be an index itself. */
struct stat;
ckpt_status ckpt__open_fd(int fd, const struct stat *sb, const char *path,
                          const ckpt_open_options *opts, bool shard, ckpt_file **out,
                          ckpt_error *err);

/* ---- what torch.load takes a file for (tar.c, detect.c) ---------------
 * torch.load's order: a zip by its first four bytes (PK\3\4), else a tar
 * archive as Python's tarfile takes it, else a pickle from byte 0 (the
 * legacy magic number). */

typedef enum ckpt__tar_block {
    CKPT__TAR_BLOCK_INVALID,   /* not a header: tarfile refuses it */
    CKPT__TAR_BLOCK_HEADER,    /* a valid header */
    CKPT__TAR_BLOCK_ZERO,      /* 512 NULs: the end of an archive */
} ckpt__tar_block;

/* What tarfile makes of a 512-byte block (TarInfo.frombuf, see tar.c). */
ckpt__tar_block ckpt__tar_header(const uint8_t *block);
/* What tarfile.open makes of a file's first block: HEADER and ZERO are
 * archives torch.load reads as the pre-0.4 format (ZERO an empty one). */
ckpt__tar_block ckpt__tar_detect(const uint8_t *data, uint64_t size);

/* A member as tarfile lists it. */
typedef struct ckpt__tar_member {
    const uint8_t *name;       /* not NUL-terminated; valid during the callback */
    size_t name_len;
    bool name_joined;          /* "prefix/name" in the walk's own buffer (else the
                                  name lies in the file's bytes) */
    uint8_t type;              /* the type byte ('0', '5', 0, ...) */
    uint64_t header_offset;    /* its first header (a long name's, a pax header's) */
    uint64_t data_offset;      /* where tarfile reads its data */
    uint64_t size;             /* bytes of data extracted (UINT64_MAX when size_big) */
    bool size_big;             /* a size of 2^63 or more */
} ckpt__tar_member;

typedef enum ckpt__tar_end_kind {
    CKPT__TAR_END,             /* the archive ended where tarfile ends it */
    CKPT__TAR_FALLBACK,        /* tarfile raises ReadError: torch.load reads the
                                  file as a pickle from byte 0 instead */
    CKPT__TAR_UNFOLLOWED,      /* something ckpt does not follow (why) */
    CKPT__TAR_LIMIT,           /* more members than allowed */
} ckpt__tar_end_kind;

typedef struct ckpt__tar_end {
    ckpt__tar_end_kind kind;
    uint64_t offset;           /* where it ended */
    char why[96];
} ckpt__tar_end;

typedef ckpt_status (*ckpt__tar_member_fn)(void *user, const ckpt__tar_member *m);
/* Lists the members of a tar archive in tarfile's order, fn called for
 * each (its error stops the walk and is returned); *end says how the walk
 * ended. Only fn fails. */
ckpt_status ckpt__tar_walk(const uint8_t *data, uint64_t size, uint64_t max_members,
                           ckpt__tar_member_fn fn, void *user, ckpt__tar_end *end);

/* ckpt_open_options.flags beside CKPT_OPEN_*: no refusal of a safetensors
 * file or index for its pickle from byte 0 (the scanner reports it). */
#define CKPT__OPEN_NO_PICKLE_AT_ZERO 0x80000000u

/* Whether v is the legacy format's magic number, 0x1950a86a20f9469cfc6c,
 * however the pickle wrote it (detect.c). */
bool ckpt__is_legacy_magic(const ckpt_value *v);

/* How torch.load would read a file from byte 0 as a pickle (detect.c). */
typedef struct ckpt__byte0 {
    bool matters;              /* it names a global, or completes to the legacy
                                  magic number (torch then reads a legacy file) */
    bool magic;                /* the second case */
    uint64_t offset;           /* the global's opcode, or the STOP */
    char global[160];          /* "module.name" of the first global named */
} ckpt__byte0;

/* Runs the pickle at data[0..) without calling anything, up to the first
 * global with a Python name (text that only reads as a pickle by chance
 * names none) or the first error; what it found goes to *out. */
void ckpt__pickle_at_zero(const uint8_t *data, uint64_t size, const ckpt_limits *limits,
                          ckpt__byte0 *out);
/* A dotted Python name (a module or a qualified name), ASCII only. */
bool ckpt__python_dotted_name(const char *s, size_t n);

/* Adds a storage to the file's table (it gets its index). */
ckpt_status ckpt__file_add_storage(ckpt_file *f, ckpt__storage *s, ckpt_error *err);
/* Walks the root and fills the named tensor list and its index. */
ckpt_status ckpt__file_collect_tensors(ckpt_file *f, ckpt_error *err);
/* Sets s->data: zero-copy into the map when aligned and native-endian,
 * else a copy (byte-swapped when big-endian). */
ckpt_status ckpt__storage_resolve(ckpt_file *f, ckpt__storage *s, ckpt_error *err);

/* ---- bounded output (output.c) --------------------------------------- */

/* Slack of max_output_ratio: small files may always make this much. */
#define CKPT__OUTPUT_SLACK ((uint64_t)64 << 20)

/* What a file holds: its size, deflated records counted inflated, a
 * sharded index's shards added (their content_bytes). */
uint64_t ckpt__file_content(const ckpt_file *f);
/* The name f lists tensor t under (its first), or NULL. Linear: for
 * messages. */
const char *ckpt__file_tensor_name(const ckpt_file *f, const ckpt_tensor *t);

/*
 * What a save makes from the tensors of open files, against what those
 * files allow: the sum over the files it reads of max_output_ratio times
 * their content, plus CKPT__OUTPUT_SLACK once. Bytes from caller memory
 * (trees' own tensors) are not counted: the caller holds them already.
 */
typedef struct ckpt__output_budget {
    ckpt__ptr_set files;        /* the files seen */
    uint64_t allowed;           /* saturating */
    uint64_t held;              /* what the files seen hold, saturating */
    uint64_t made;              /* saturating */
    uint64_t largest;           /* the largest single piece counted */
    const ckpt_tensor *largest_tensor;  /* it, when it is a tensor's */
    const ckpt__storage *largest_storage; /* else the storage's */
    const ckpt_file *largest_file;
    bool failed;                /* out of memory */
} ckpt__output_budget;

/* Counts bytes made from tensor t (a strided tensor of a file or a tree;
 * a cast counts as made from its source's file). */
void ckpt__output_add_tensor(ckpt__output_budget *b, const ckpt_tensor *t, uint64_t bytes);
/* The same for a whole storage written out. */
void ckpt__output_add_storage(ckpt__output_budget *b, const ckpt__storage *s, uint64_t bytes);
/* CKPT_OK when what was counted fits; else CKPT_ERR_LIMIT naming the
 * largest piece. Frees the budget's memory either way. */
ckpt_status ckpt__output_check(ckpt__output_budget *b, ckpt_error *err);

/* ---- trees and streaming (writers) ---------------------------------- */

struct ckpt_tree {
    ckpt__arena arena;          /* no limit: the caller builds what it wants */
    ckpt_error err;             /* the first error */
};

/* Records err as the tree's first error (later ones are dropped). */
void ckpt__tree_fail(ckpt_tree *tree, const ckpt_error *err);

/* Bytes [off, off+len) of a storage in native byte order, len <= the
 * storage's nbytes - off. *out gets memory valid until the next call on any
 * storage: the storage's own bytes (zero-copy, buf unused) or buf, filled
 * with len bytes (casts; buf must hold len bytes). File storages are
 * resolved on first use. */
ckpt_status ckpt__storage_read(ckpt__storage *s, uint64_t off, size_t len, uint8_t *buf,
                               const uint8_t **out, ckpt_error *err);
/* Bytes [off, off+len) of the tensor's elements in row-major order, as a
 * contiguous copy would hold them (nbytes of ckpt_tensor_info in all).
 * Same *out rule: zero-copy for contiguous tensors. Strided tensors only;
 * sub-byte dtypes only when contiguous. */
ckpt_status ckpt__tensor_read(const ckpt_tensor *t, uint64_t off, size_t len, uint8_t *buf,
                              const uint8_t **out, ckpt_error *err);

/* When bytes [p, p+len) that ckpt__storage_read or ckpt__tensor_read gave
 * for storage s lie in the map of a file whose descriptor is kept, sets
 * *fd and *off (their offset in that file) and returns true: a writer may
 * read them from there. */
bool ckpt__storage_file_range(const ckpt__storage *s, const uint8_t *p, size_t len, int *fd,
                              uint64_t *off);

/* Calls fn for every tensor of the tree with its name as ckpt_file_tensor
 * gives it (a tensor reachable by two paths: twice), and, when leaf_fn is
 * not NULL, for every maximal subtree that holds no tensor (its path and
 * value). Bare storages (torch.save(storage)) come to tensor_fn as the
 * internal storage kind. Stops at the first non-OK status, which it returns. */
typedef ckpt_status (*ckpt__walk_fn)(void *user, const char *name, const ckpt_value *v,
                                     ckpt_error *err);
ckpt_status ckpt__walk_named(const ckpt_value *root, uint64_t max_nesting, ckpt__walk_fn tensor_fn,
                             ckpt__walk_fn leaf_fn, void *user, ckpt_error *err);
/* The same within bounds: containers nested at most max_nesting deep, at
 * most max_steps steps (a container entered or a child looked at: paths
 * multiply through shared containers), names of at most max_name_len
 * bytes. Each is a CKPT_ERR_LIMIT error. ckpt__walk_named's bounds are
 * 100,000,000 steps and the default max_tensor_name_bytes. */
typedef struct ckpt__walk_bounds {
    uint64_t max_nesting;
    uint64_t max_steps;
    size_t max_name_len;
} ckpt__walk_bounds;
ckpt_status ckpt__walk_named_ex(const ckpt_value *root, const ckpt__walk_bounds *bounds,
                                ckpt__walk_fn tensor_fn, ckpt__walk_fn leaf_fn, void *user,
                                ckpt_error *err);

/* ---- Python's text of values (repr.c) --------------------------------- */

/* Like snprintf, these write what fits into buf (cap bytes with the NUL;
 * buf may be NULL when cap is 0) and return the length of the whole text. */

/* Python's str() of a dict key, as tensor names show it: text as is,
 * devices as "cuda:0", globals as "module.name", other keys as their repr
 * (1, None, 2.5, (1, 'a')). */
size_t ckpt__key_text(const ckpt_value *k, char *buf, size_t cap);

#define CKPT__FLOAT_NO_DOT0 0x1u  /* "1", not "1.0": a part of a complex */
#define CKPT__FLOAT_SIGN 0x2u     /* "+" before a number without "-" */
/* Python's repr of a double: the fewest digits that read back as d, fixed
 * notation for exponents -4..15 ("100.0", "0.0001"), else "1e+16";
 * "nan", "inf", "-inf". */
size_t ckpt__float_repr(double d, unsigned flags, char *buf, size_t cap);

/* Decimal text of an int held as n bytes of little-endian two's complement
 * (CKPT_KIND_BIGINT), malloc'd and NUL-terminated; *len (may be NULL) gets its
 * length. NULL when out of memory. Quadratic in n. */
char *ckpt__bigint_decimal(const uint8_t *p, size_t n, size_t *len);

/* Decodes one UTF-8 code point at s[0..n), n >= 1; *used gets its length.
 * Surrogates (which Python writes with 'surrogatepass') decode as
 * themselves; any other invalid sequence gives -1 with *used = 1. */
long ckpt__utf8_next(const unsigned char *s, size_t n, size_t *used);
/* Well-formed UTF-8 without surrogates (what a JSON reader or Python's
 * strict decoder accepts); NUL only when allow_nul. */
bool ckpt__utf8_valid(const char *s, size_t n, bool allow_nul);

/* ---- crash-safe output file ------------------------------------------ */

typedef struct ckpt__out {
    int fd;
    char *path;                 /* the target */
    char *tmp_path;             /* the temporary beside it */
    unsigned flags;             /* CKPT_SAVE_*, CKPT__OUT_* */
    uint64_t size;              /* bytes written so far */
    uint32_t crc;               /* their CRC32, kept with CKPT__OUT_CRC */
    uint8_t *copy_buf;          /* ckpt__out_copy's buffer, made at first use */
} ckpt__out;

/* Internal flags beside CKPT_SAVE_* in ckpt__out.flags. */
#define CKPT__OUT_CRC 0x40000000u   /* keep a CRC32 of every byte written */
#define CKPT__OUT_STAGE 0x80000000u /* commit stops before the rename */

/*
 * A finished output not yet in place: the temporary is complete, synced and
 * closed; publishing renames it over the target. Both paths are malloc'd.
 */
typedef struct ckpt__staged {
    char *path;
    char *tmp_path;
    uint64_t size;
    uint32_t crc;               /* CRC32 of the whole file */
} ckpt__staged;

/* Creates a temporary file in path's directory (O_EXCL, mode 0666 & ~umask). */
ckpt_status ckpt__out_open(ckpt__out *o, const char *path, unsigned flags, ckpt_error *err);
/* Writes everything (retrying short writes and EINTR); errors name the
 * target. Every byte of the file passes here (size and CRC are kept). */
ckpt_status ckpt__out_write(ckpt__out *o, const void *p, size_t n, ckpt_error *err);
/* The same without touching o->crc: the caller sets it to the CRC over
 * these bytes (computed elsewhere, after the old value) before any other
 * write. */
ckpt_status ckpt__out_write_crc_later(ckpt__out *o, const void *p, size_t n, ckpt_error *err);
/* Puts n bytes into the file as ckpt__out_write(o, p, n) would (size and
 * CRC kept the same), reading them from src_fd at src_off (an input file
 * whose map holds them at p) through a small buffer; src_fd < 0, or a read
 * that fails, writes from p. *crc (may be NULL) is extended over the n
 * bytes. */
ckpt_status ckpt__out_copy(ckpt__out *o, int src_fd, uint64_t src_off, const void *p, size_t n,
                           uint32_t *crc, ckpt_error *err);
/* One pread of up to want bytes at off into buf for a copy to o: *got
 * bytes (0 after a read error: the caller takes the rest from the map);
 * an input that ends early (it shrank) is CKPT_ERR_IO. */
ckpt_status ckpt__out_read_piece(const ckpt__out *o, int src_fd, uint64_t off, uint8_t *buf,
                                 size_t want, size_t *got, ckpt_error *err);
/* fsync (unless CKPT_SAVE_NO_FSYNC), close, rename over the target, fsync
 * the directory. On failure the temporary is removed. With CKPT__OUT_STAGE
 * it stops after the close: see ckpt__out_stage. */
ckpt_status ckpt__out_commit(ckpt__out *o, ckpt_error *err);
/* After a commit with CKPT__OUT_STAGE: moves the finished temporary into
 * *stage (o keeps nothing). */
void ckpt__out_stage(ckpt__out *o, ckpt__staged *stage);
/* Closes and removes the temporary; safe after a failed commit and twice. */
void ckpt__out_abort(ckpt__out *o);

/* Renames a staged file over its target (no directory sync: the caller
 * syncs the directory once for all its renames). */
ckpt_status ckpt__staged_publish(ckpt__staged *stage, ckpt_error *err);
/* Removes a staged temporary that will not be published; frees *stage. */
void ckpt__staged_discard(ckpt__staged *stage);
/* fsync of the directory holding path, so renames in it are durable. */
ckpt_status ckpt__sync_dir_of(const char *path, ckpt_error *err);

#endif /* CKPT_INTERNAL_H */
