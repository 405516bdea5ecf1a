/*
 * zip.h - the zip layer (src/zip/): the strict reader (zip_read.c) and the
 * streaming writer laid out like PyTorch's (zip_write.c). Above base.
 */
#ifndef CKPT_ZIP_H
#define CKPT_ZIP_H

#include "base/base.h"

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
    uint32_t *index;           /* hash of names (ASCII case folded): slot -> entry+1 */
    size_t index_cap;          /* a power of two, at least twice count */
    char *names;               /* storage for names */
} ckpt__zip;

/* true when the bytes look like a zip (local header or empty-archive EOCD). */
bool ckpt__zip_detect(const uint8_t *data, uint64_t size);
/* What the end record declares, read without checking the rest (a hint
 * for how to page the archive in before ckpt__zip_open): false when there
 * is no readable end record. */
bool ckpt__zip_declared(const uint8_t *data, uint64_t size, uint64_t *count,
                        uint64_t *cd_offset);
/* Parses the central directory and checks every entry strictly (see zip_read.c). */
ckpt_status ckpt__zip_open(ckpt__zip *z, const uint8_t *data, uint64_t size,
                           const ckpt_limits *limits, ckpt_error *err);
void ckpt__zip_close(ckpt__zip *z);
/* Index of the entry with this name (ASCII case ignored, as torch's reader
 * ignores it; an open archive has no two such names), or -1. */
long ckpt__zip_find(const ckpt__zip *z, const char *name);
/* The same for name[0..len), looking at entry hint first: readers that
 * look records up in the order the archive holds them pass the entry after
 * the last one found, and skip the hash. */
long ckpt__zip_find_near(const ckpt__zip *z, const char *name, size_t len, size_t hint);
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
/* The same, keeping the device reading ahead with the caller's ahead (its
 * offsets those of the archive) when it goes through many entries in file
 * order; NULL reads ahead within the entry. When ahead->fd is the
 * archive's file, stored entries are read from it with pread. */
ckpt_status ckpt__zip_stream_ahead(const ckpt__zip *z, size_t index, const ckpt_limits *limits,
                                   ckpt__zip_sink sink, void *user, ckpt__ahead *ahead,
                                   ckpt_error *err);

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

/* ---- zip writer (zip_write.c) ----------------------------------------- */

/* PyTorch (miniz) moves a size or offset into a ZIP64 extra field from this
 * value on. */
#define CKPT__ZIP64_THRESHOLD 0xFFFFFFFFull

typedef struct ckpt__zip_wentry ckpt__zip_wentry;

/*
 * Writes a zip the way PyTorchStreamWriter does: every record stored, its
 * data starting at a multiple of 64 (an "FB" padding extra field), CRC32 and
 * sizes in a data descriptor after the data, a central directory, and always
 * the ZIP64 end record and locator before the classic end record. Records
 * are streamed: their size is declared up front (the padding depends on it)
 * and their bytes are passed in pieces.
 */
typedef struct ckpt__zip_writer {
    ckpt__out *out;
    /* Sizes and offsets >= this go into ZIP64 extra fields, with all ones in
     * the 32-bit slots (CKPT__ZIP64_THRESHOLD, as PyTorch; tests lower it). */
    uint64_t zip64_threshold;
    uint64_t offset;             /* archive bytes so far */
    ckpt__zip_wentry *entries;
    size_t count, cap;
    ckpt__buf names;             /* every entry's name, back to back */
    /* the record being written */
    bool in_record;
    uint64_t size, written;
    uint32_t crc;
    /* small writes are gathered before they reach the file */
    uint8_t *buf;
    size_t buf_len;
    /* a second thread computing the CRC of large writes while they are
     * written; started at the first, NULL when none */
    struct ckpt__crc_worker *crc_worker;
    bool crc_worker_failed;      /* could not start one: CRCs stay inline */
    uint8_t *copy_buf;           /* pieces of an input read for a record copy */
} ckpt__zip_writer;

/* Sets up a writer appending to out (which stays the caller's). */
void ckpt__zip_writer_init(ckpt__zip_writer *w, ckpt__out *out, uint64_t zip64_threshold);
/* Starts a record of exactly size bytes: writes its local header. */
ckpt_status ckpt__zip_record_begin(ckpt__zip_writer *w, const char *name, uint64_t size,
                                   ckpt_error *err);
/* Appends bytes to the record, computing its CRC32 on the way. */
ckpt_status ckpt__zip_record_write(ckpt__zip_writer *w, const void *p, size_t n, ckpt_error *err);
/* The same for bytes an input file holds at src_off (mapped at p): they are
 * read from src_fd through a small buffer (see ckpt__out_copy). */
ckpt_status ckpt__zip_record_copy(ckpt__zip_writer *w, int src_fd, uint64_t src_off,
                                  const void *p, size_t n, ckpt_error *err);
/* Ends the record (all its bytes written): the data descriptor. */
ckpt_status ckpt__zip_record_end(ckpt__zip_writer *w, ckpt_error *err);
/* A whole record from memory. */
ckpt_status ckpt__zip_add(ckpt__zip_writer *w, const char *name, const void *p, size_t n,
                          ckpt_error *err);
/* The central directory, ZIP64 end record, locator and end record; then
 * everything is written out. */
ckpt_status ckpt__zip_finish(ckpt__zip_writer *w, ckpt_error *err);
/* Frees the writer's memory (not the output). */
void ckpt__zip_writer_free(ckpt__zip_writer *w);

#endif /* CKPT_ZIP_H */
