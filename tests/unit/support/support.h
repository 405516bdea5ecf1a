/*
 * support.h - what the unit tests share: a growable byte buffer, a pickle
 * builder, a zip builder, a scratch directory and a child process that runs
 * one case under a time limit and a memory cap. Built once as the static
 * library ckpt_test_support and linked into every unit test.
 */
#ifndef CKPT_TEST_SUPPORT_H
#define CKPT_TEST_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ckpt.h>

/* ---- byte buffer ------------------------------------------------------------ */

typedef struct buf {
    uint8_t *p;
    size_t len, cap;
} buf;

void b_put(buf *b, const void *src, size_t n);
void b_u8(buf *b, unsigned v);
/* v as n little-endian bytes */
void b_le(buf *b, uint64_t v, int n);
void b_str(buf *b, const char *s);
void b_fill(buf *b, unsigned c, size_t n);
void b_free(buf *b);

/* monotonic clock, seconds */
double now_s(void);

/* ---- pickles (protocol 2 opcodes) ---------------------------------------------- */

void pk_proto(buf *b, unsigned version);
void pk_stop(buf *b);
/* K, J or LONG1 of 8 bytes, the shortest that holds v */
void pk_int(buf *b, int64_t v);
/* a non-negative integer that may not fit in int64 (LONG1 of 9 bytes) */
void pk_uint(buf *b, uint64_t v);
void pk_unicode(buf *b, const char *s);
void pk_global(buf *b, const char *module, const char *name);
/* (v[0], ..., v[n-1]) */
void pk_int_tuple(buf *b, const int64_t *v, int n);
/* FRAME of n bytes (protocol 4) */
void pk_frame(buf *b, uint64_t n);
/* _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict()),
 * the storage a persistent id ('storage', torch.<storage_class>, key, 'cpu',
 * storage_numel) */
void pk_tensor(buf *b, const char *storage_class, const char *key, int64_t storage_numel,
               int64_t offset, const int64_t *shape, const int64_t *stride, int ndim);
/* {name: tensor over storage "0"} */
buf pk_one_tensor(const char *name, const char *storage_class, int64_t storage_numel,
                  int64_t offset, const int64_t *shape, const int64_t *stride, int ndim);

/* ---- zip archives ---------------------------------------------------------------- */

uint32_t crc32_of(const void *p, size_t n);

typedef struct zrec {
    const char *name;
    const uint8_t *data;     /* as stored: deflate data when method is 8 */
    size_t stored;
    uint64_t size;           /* declared size once inflated */
    uint32_t crc;
    unsigned method;
    bool zip64;              /* sizes (and offset) in ZIP64 extra fields */
    uint64_t zip64_offset;   /* when not 0: the central ZIP64 header offset */
} zrec;

/* a stored record of data */
zrec zr_stored(const char *name, const void *data, size_t len);
/* data deflated at level into *out (freed by the caller) */
zrec zr_deflated(const char *name, const void *data, size_t len, int level, buf *out);

typedef struct zend {
    bool zip64;              /* ZIP64 end record and locator */
    bool set_count, set_cd_size, set_cd_offset;
    uint64_t count, cd_size, cd_offset;   /* declared instead of the real ones */
    bool unaligned;          /* no "FB" extra field, no UTF-8 flag */
} zend;

#define ZIP_MAX_RECORDS 16

typedef struct zbuilt {
    buf file;
    uint64_t data_offset[ZIP_MAX_RECORDS];   /* where each record's data starts */
} zbuilt;

/* A zip of the records (at most ZIP_MAX_RECORDS). As torch writes it unless
 * end->unaligned: the UTF-8 flag, data aligned to 64 by an "FB" extra field. */
zbuilt zip_build(const zrec *recs, int n, const zend *end);
/* archive/data.pkl, archive/data/0 (when storage), archive/version "3\n" */
zbuilt torch_zip(const buf *pkl, const uint8_t *storage, size_t storage_len);

/* ---- files --------------------------------------------------------------------- */

/* Makes /tmp/<prefix>XXXXXX, the directory tmp_path names into; exits the
 * test program when it cannot. */
const char *tmp_dir_make(const char *prefix);
/* the directory tmp_dir_make made */
const char *tmp_dir(void);
/* name inside it (four buffers used in turn) */
const char *tmp_path(const char *name);
/* removes dir and all below it */
void remove_tree(const char *dir);
/* the whole file (malloc'd, at least 1 byte), NULL when it cannot be read */
uint8_t *read_file(const char *path, size_t *size);
/* writes n bytes to path; false on failure */
bool write_file(const char *path, const void *data, size_t n);

/* ---- a case in a child process ------------------------------------------------- */

/* In the child: caps its memory at budget bytes above what it uses now. With
 * AddressSanitizer by counting the live heap (see mem_peak), else by
 * RLIMIT_AS. */
void mem_cap(uint64_t budget);
/* Starts measuring the heap (AddressSanitizer only). */
void mem_mark(void);
/* The most heap held since mem_mark (0 without AddressSanitizer). */
uint64_t mem_peak(void);
/* true when built with AddressSanitizer */
bool mem_asan(void);

typedef struct child_end {
    bool timed_out;          /* killed after its time */
    int signal;              /* killed by this signal, else 0 */
    int status;              /* exit status, -1 when killed */
    size_t got;              /* result bytes that came back */
    double seconds;          /* from fork to the end */
} child_end;

/* Runs fn(arg, result) in a child process, which sends its size bytes of
 * result back by pipe and exits 0; seconds > 0 kills it after that long.
 * True when it ended so and all of result came back. */
bool child_run(void (*fn)(const void *arg, void *result), const void *arg, void *result,
               size_t size, double seconds, child_end *end);

/* ---- the scanner ----------------------------------------------------------------- */

/* Scans b, which must succeed. */
ckpt_scan *scan_buf(const buf *b);
/* The first finding of a kind whose global (when given) and message (when
 * given text) match. */
const ckpt_scan_finding *scan_find(const ckpt_scan *sc, ckpt_scan_kind kind, const char *global,
                                   const char *text);

#endif /* CKPT_TEST_SUPPORT_H */
