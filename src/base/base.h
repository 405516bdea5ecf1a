/*
 * base.h - the lowest layer of libckpt (src/base/): errors, checked
 * arithmetic, byte loads, growable memory, the arena, dtypes and crash-safe
 * output files. Every layer above includes it through its own header.
 * Internal symbols start with ckpt__ (two underscores) and are hidden in the
 * shared library.
 */
#ifndef CKPT_BASE_H
#define CKPT_BASE_H

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
    void *released[4];  /* ckpt__arena_release: pieces of 16, 32, 48, 64 bytes */
} ckpt__arena;

void ckpt__arena_init(ckpt__arena *a, uint64_t limit);
void ckpt__arena_free(ckpt__arena *a);
/* Zeroed, 16-byte aligned memory; NULL when out of memory or over the limit
 * (ckpt__arena_over_limit tells which). */
void *ckpt__arena_alloc(ckpt__arena *a, size_t size);
bool ckpt__arena_over_limit(const ckpt__arena *a, size_t more);
/* Gives back an allocation of size bytes that nothing refers to any more:
 * a later allocation of the same rounded size (16 to 64 bytes) reuses it,
 * zeroed. Other sizes are simply abandoned. */
void ckpt__arena_release(ckpt__arena *a, void *p, size_t size);
/* Copies size bytes and appends a NUL. */
char *ckpt__arena_strdup(ckpt__arena *a, const char *s, size_t size);
/* Grows an allocation of old_size bytes to new_size bytes: in place when it
 * is the last one of the current chunk, else by copying (the old bytes are
 * abandoned). NULL when out of memory or over the limit. */
void *ckpt__arena_grow(ckpt__arena *a, void *old, size_t old_size, size_t new_size);

/* ---- dtypes ---------------------------------------------------------- */

/* Bytes per storage element: a byte for packed sub-byte dtypes (quint4x2). */
static inline size_t ckpt__storage_elem_size(ckpt_dtype d)
{
    size_t n = ckpt_dtype_size(d);
    return n ? n : 1;
}

/* qint8, quint8, qint32, quint4x2, quint2x4: tensors with a quantizer. */
static inline bool ckpt__dtype_is_quantized(ckpt_dtype d)
{
    return d == CKPT_DTYPE_QINT8 || d == CKPT_DTYPE_QUINT8 || d == CKPT_DTYPE_QINT32 || d == CKPT_DTYPE_QUINT4X2 ||
           d == CKPT_DTYPE_QUINT2X4;
}

/* The dtypes ckpt_convert_dtype converts between. */
static inline bool ckpt__dtype_castable(ckpt_dtype d)
{
    return d == CKPT_DTYPE_FLOAT64 || d == CKPT_DTYPE_FLOAT32 || d == CKPT_DTYPE_FLOAT16 || d == CKPT_DTYPE_BFLOAT16;
}

/* ---- crash-safe output file ------------------------------------------ */

typedef struct ckpt__out {
    int fd;
    char *path;                 /* the target */
    char *tmp_path;             /* the temporary beside it */
    unsigned flags;             /* CKPT_SAVE_*, CKPT__OUT_* */
    uint64_t size;              /* bytes written so far */
    uint32_t crc;               /* their CRC32, kept with CKPT__OUT_CRC */
    uint8_t *copy_buf;          /* ckpt__out_copy's buffer, made at first use */
    struct ckpt__out_ahead *ahead; /* read-ahead of the input copied from (outfile.c) */
    struct ckpt__reader *reader;   /* the input read on a second thread (outfile.c) */
    bool reader_failed;
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

/* Creates a temporary file beside path, or beside the file a symbolic link
 * at path names (O_EXCL; the mode of the file it replaces, else 0666 &
 * ~umask), first removing the temporaries there of processes gone. */
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
/* Hands [src_off, src_off + n) of src_fd to sink in pieces read on a second
 * thread (ckpt__reader) while sink works, when n is at least
 * CKPT__READER_MIN and a thread is to be had. *done: the bytes handed over;
 * 0 when nothing was read this way (the caller reads for itself), fewer
 * than n after a read error (the caller takes the rest from the map). A
 * file that ends early is an error. */
typedef ckpt_status (*ckpt__out_sink)(void *user, const uint8_t *p, size_t n, ckpt_error *err);
ckpt_status ckpt__out_read_through(ckpt__out *o, int src_fd, uint64_t src_off, size_t n,
                                   ckpt__out_sink sink, void *user, size_t *done,
                                   ckpt_error *err);
/* One pread of up to want bytes at off into buf for a copy to o: *got
 * bytes (0 after a read error: the caller takes the rest from the map);
 * an input that ends early (it shrank) is CKPT_ERR_IO. */
ckpt_status ckpt__out_read_piece(ckpt__out *o, int src_fd, uint64_t off, uint8_t *buf,
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

/* ---- keyed hashing (hash.c) ---------------------------------------------- */

/* SipHash-1-3 of data[0..n) under the key (k0, k1); fold_case: ASCII
 * 'A'..'Z' hashed as 'a'..'z'. */
uint64_t ckpt__siphash13(uint64_t k0, uint64_t k1, const void *data, size_t n, bool fold_case);
/* The key of a table at owner (its address: ASLR varies it from run to run). */
void ckpt__hash_key(const void *owner, uint64_t *k0, uint64_t *k1);
/* ckpt__siphash13 of p[0..n) under owner's key. */
uint64_t ckpt__hash_keyed(const void *owner, const void *p, size_t n);

/* ---- crash-safe output directories (outdir.c) ------------------------- */

/* Removes a directory of files (one level). */
void ckpt__dir_remove(const char *path);
/* Removes DIR.tmp-* and DIR.old-* beside dir, left by saves that crashed
 * (a DIR.old-* with no DIR goes back to DIR). */
void ckpt__dir_remove_leftovers(const char *dir);
/* fsync of a directory; -1 with errno on failure. */
int ckpt__dir_sync(const char *path);
/* Puts the finished directory tmp in place of dir in one step; *old (old_cap
 * bytes) gets where the previous dir went, to be removed, or "" when there
 * was none. On failure dir is as it was. */
ckpt_status ckpt__dir_swap_in(const char *tmp, const char *dir, char *old, size_t old_cap,
                              ckpt_error *err);

/* ---- read-ahead of cold files (readahead.c) ---------------------------- */

/* Advice for the pages of a file map (base, len need no alignment: the
 * range is widened to whole pages). Failures are ignored: advice only. */
typedef enum ckpt__advice {
    CKPT__ADVISE_NORMAL,   /* the kernel's read-around on faults */
    CKPT__ADVISE_RANDOM,   /* no read-around: a fault reads its page alone */
    CKPT__ADVISE_WILLNEED, /* start reading the range now, without waiting */
} ckpt__advice;
void ckpt__map_advise(const void *base, uint64_t len, ckpt__advice advice);

/* Keeps the kernel reading ahead of a consumer that goes through
 * [start, end) of a file in order: each ckpt__ahead_at(a, pos) asks for
 * the pages up to CKPT__AHEAD_WINDOW past pos (posix_fadvise WILLNEED on
 * fd when fd >= 0, else madvise on map, map + offset being the byte at
 * offset), so that the device streams while the consumer works, whatever
 * the system's read-ahead setting. Only bytes of the range are asked for. */
#define CKPT__AHEAD_WINDOW ((uint64_t)32 << 20)
typedef struct ckpt__ahead {
    int fd;
    const uint8_t *map;
    uint64_t next;  /* asked for up to here */
    uint64_t end;
    struct ckpt__reader *reader; /* ckpt__ahead_reader's */
    bool reader_tried;
} ckpt__ahead;
void ckpt__ahead_init(ckpt__ahead *a, int fd, const void *map, uint64_t start, uint64_t end);
void ckpt__ahead_at(ckpt__ahead *a, uint64_t pos);
/* A reader of fd (reader.c) that keeps this read-ahead from its own thread,
 * made at the first call for a range of at least CKPT__READER_MIN bytes;
 * NULL: read inline. While it reads, only it calls ckpt__ahead_at. */
struct ckpt__reader *ckpt__ahead_reader(ckpt__ahead *a, size_t piece);
/* Frees the reader, if any. */
void ckpt__ahead_end(ckpt__ahead *a);

/* Ranges at least this large are read on a second thread (ckpt__reader):
 * below it, starting a thread costs more than the overlap gains. */
#define CKPT__READER_MIN ((uint64_t)16 << 20)
/* Pieces of the readers. */
#define CKPT__READER_PIECE ((size_t)1 << 20)

/* ---- a file's ranges read on a thread of their own (reader.c) ---------- */

/* Reads n bytes at off of fd into buf, through short reads and EINTR.
 * Returns 0, or the errno of a failed read (ENODATA: the file ended
 * first), *got being the bytes read before it. */
int ckpt__pread_full(int fd, void *buf, size_t n, uint64_t off, size_t *got);

/* Reads one range of fd at a time, in pieces of `piece` bytes, a few pieces
 * ahead of the consumer, on a thread of its own: the consumer works on one
 * piece while the next are read. hook, when given, runs on that thread
 * before each piece is read, with the piece's offset (read-ahead advice);
 * the consumer must not use what hook uses while a range is being read.
 * ckpt__reader_new returns NULL when no thread (or memory) is to be had:
 * the caller then reads for itself. */
typedef struct ckpt__reader ckpt__reader;
typedef void (*ckpt__reader_hook)(void *user, uint64_t off);
ckpt__reader *ckpt__reader_new(int fd, size_t piece, ckpt__reader_hook hook, void *user);
int ckpt__reader_fd(const ckpt__reader *r);
/* Reads [off, off + len) from now on; what was left of the last range is
 * dropped. */
void ckpt__reader_start(ckpt__reader *r, uint64_t off, uint64_t len);
/* The range's next piece, in order: *n bytes at *p, valid until the next
 * call. Returns 0, or the errno of a failed read (ENODATA: the file ended
 * first), *n then being the bytes read before it; the range ends there.
 * Asked for past the range's end: ENODATA. */
int ckpt__reader_next(ckpt__reader *r, const uint8_t **p, size_t *n);
void ckpt__reader_free(ckpt__reader *r);

#endif /* CKPT_BASE_H */
