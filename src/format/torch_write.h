/*
 * torch_write.h - the parts of the torch.save writer: a streaming zip writer
 * laid out like PyTorch's (zip_write.c), a protocol 2 pickler over value
 * trees (pickle_write.c), and the saver joining them (torch_write.c).
 * Private to those files and their unit test.
 */
#ifndef CKPT_TORCH_WRITE_H
#define CKPT_TORCH_WRITE_H

#include "internal.h"

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

/* ---- pickler (pickle_write.c) ------------------------------------------ */

/* How a storage appears in its persistent id. */
typedef struct ckpt__pickle_storage {
    const char *key;             /* "0", "1", ...: stable until the pickle is done */
    const char *type_name;       /* torch.<type_name>: "FloatStorage", "UntypedStorage" */
    bool untyped;                /* tensors over it need _rebuild_tensor_v3 */
    const char *location;        /* "cpu", "cuda:0", ... */
    uint64_t numel;              /* in type_name's elements (bytes when untyped) */
} ckpt__pickle_storage;

/* Names storage s, used as dtype (or untyped, for a bare untyped storage),
 * in the pickle; called at every use, in pickle order. */
typedef ckpt_status (*ckpt__pickle_storage_fn)(void *user, ckpt__storage *s, ckpt_dtype dtype,
                                               bool untyped, ckpt__pickle_storage *out,
                                               ckpt_error *err);

/* torch's typed storage class for a dtype ("FloatStorage"), or NULL when it
 * has none (an UntypedStorage and _rebuild_tensor_v3 then). */
const char *ckpt__torch_storage_class(ckpt_dtype dtype);

/*
 * Pickles root with protocol 2 as CPython's pickler does for torch.save,
 * using only opcodes the weights-only unpicklers accept (plus BINFLOAT for
 * floats). A value reached twice (by pointer) is written once and then
 * fetched from the memo; cycles and nesting beyond max_nesting are errors,
 * naming the value's path. *out (malloc'd, the caller frees it) gets the
 * bytes.
 */
ckpt_status ckpt__pickle_dump(const ckpt_value *root, uint64_t max_nesting,
                              ckpt__pickle_storage_fn storage_fn, void *user, uint8_t **out,
                              size_t *out_len, ckpt_error *err);

/* ---- saver (torch_write.c) --------------------------------------------- */

/* ckpt_save_torch with a chosen ZIP64 threshold (tests lower it). With a
 * stage, the finished file is left beside its target for the caller to
 * publish (ckpt__staged_publish), with its size and CRC32. */
ckpt_status ckpt__save_torch_ex(const char *path, const ckpt_value *root,
                                const ckpt_save_options *opts, uint64_t zip64_threshold,
                                ckpt__staged *stage, ckpt_error *err);

#endif /* CKPT_TORCH_WRITE_H */
