/*
 * core.h - the core layer (src/core/): values, storages, tensors, sparse
 * tensors, the naming walk, streamed tensor bytes, the output budget, trees
 * for writing, Python's text of values and the file handle. Above zip.
 */
#ifndef CKPT_CORE_H
#define CKPT_CORE_H

#include "zip/zip.h"

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
    /* a DCP checkpoint's global tensor (owner: the DCP file): its bytes
     * lie in chunks (region.c reads them), not in one record */
    struct ckpt__chunked *chunked;
} ckpt__storage;

/* ---- chunked tensors (region.c) ---------------------------------------
 * A DCP checkpoint's global tensor is a storage of its own (chunked) over
 * chunks, each a box of the tensor held whole by one item of a file. */

typedef struct ckpt__chunk {
    int64_t *offsets, *sizes;  /* ndim each: the chunk's box in the tensor */
    uint32_t ndim;
    uint32_t file;             /* index in its DCP file's files (dcp_files) */
    uint64_t offset, length;   /* its item's bytes in that file */
    ckpt_file *item;           /* the item once opened, else NULL */
    const struct ckpt_tensor *src; /* the item's tensor (shape = sizes) */
} ckpt__chunk;

typedef struct ckpt__chunked {
    const char *name;          /* the tensor's key, for messages */
    uint32_t ndim;
    const int64_t *shape;
    ckpt_dtype dtype;
    ckpt__chunk *chunks;       /* sorted by offsets, row-major */
    size_t count;
    int64_t max_extent0;       /* the largest sizes[0]: how far back a chunk
                                  starting before a box may still reach it */
} ckpt__chunked;

/* Opens chunk c's item and checks its tensor against the chunk (set by the
 * format layer on a DCP file: ckpt_file.open_chunk). */
typedef ckpt_status (*ckpt__open_chunk_fn)(ckpt_file *f, const ckpt__chunked *t, ckpt__chunk *c,
                                           ckpt_error *err);

/* The box [lo, lo + n) of t (ndim values each, checked by the caller) into
 * dst, row-major with n's shape. t is any strided tensor, chunked or not. */
ckpt_status ckpt__tensor_region(ckpt_file *f, const struct ckpt_tensor *t, const uint64_t *lo,
                                const uint64_t *n, uint8_t *dst, ckpt_error *err);
/* Bytes [off, off + len) of a chunked storage, row-major, into buf. */
ckpt_status ckpt__chunked_read(ckpt__storage *s, uint64_t off, size_t len, uint8_t *buf,
                               ckpt_error *err);
/* A chunked storage assembled whole into memory it owns (resolution). */
ckpt_status ckpt__chunked_resolve(ckpt__storage *s, ckpt_error *err);
/* Opens every chunk's item not opened yet (verification reads them all). */
ckpt_status ckpt__chunks_open_all(ckpt_file *f, ckpt_error *err);

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

/* Storages by key (open addressing over s->key). */
typedef struct ckpt__storage_table {
    ckpt__storage **slots;
    size_t cap, count;
    uintptr_t seed;            /* keys the hash: the address of the first slots */
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
#define CKPT__VF_FRESH 0x10u       /* pickle: a tuple made from the stack (TUPLE*) or
                                      an OrderedDict() made by REDUCE */
#define CKPT__VF_SHARED 0x20u      /* pickle: put under a memo key that is read, or DUP'd */

/* A zeroed value of kind. It holds the header and the union member of its
 * kind only (ckpt__value_size bytes, 16 for scalars, 32 for text, sequences
 * and tensors): set only that member, and never change a value's kind to one
 * of a bigger size (a storage may become a tensor). */
ckpt_value *ckpt__value_new(ckpt__arena *a, int kind);
size_t ckpt__value_size(int kind);
ckpt_value *ckpt__value_str(ckpt__arena *a, int kind, const char *s, size_t len);
/* Appends to LIST/TUPLE/SET/SIZE; false on out of memory / limit. */
bool ckpt__seq_append(ckpt__arena *a, ckpt_value *seq, ckpt_value *item);
/* dict[key] = val with Python semantics: an existing equal key keeps its
 * place and gets the new value. false on out of memory / limit. */
bool ckpt__dict_set(ckpt__arena *a, ckpt_value *dict, ckpt_value *key, ckpt_value *val);
/* Python equality of plain keys (numbers across bool/int/float, text, bytes, tuples). */
bool ckpt__value_equal(const ckpt_value *x, const ckpt_value *y);

/* The value stored under key in a DICT/ORDERED_DICT (Python equality), or
 * NULL. Uses the hash index when the dict has one. */
ckpt_value *ckpt__dict_lookup(const ckpt_value *dict, const ckpt_value *key);

/* Roughly how many bytes hashing key or comparing it touches (bounded like
 * those walks); the interpreter charges it to its work budget. */
uint64_t ckpt__key_cost(const ckpt_value *key);

/* ---- the file handle ---------------------------------------------------- */

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

    /* A DCP checkpoint (format/dcp.c): the files its .metadata names,
     * mapped, and the items opened from them (values, chunks), closed with
     * the file and verified with it. */
    bool is_dcp;
    int dcp_dir;                  /* its directory, while opening */
    struct ckpt__dcp_file {
        const char *name;
        const uint8_t *map;
        uint64_t size;
    } *dcp_files;
    size_t dcp_file_count;
    struct ckpt__dcp_item {       /* every item storage_data names */
        const char *key;
        uint32_t file;
        uint64_t offset, length;
    } *dcp_items;
    size_t dcp_item_count;
    ckpt_file **items;
    const char **item_names;      /* "FILE@N (key)", for messages */
    size_t item_count, item_cap;
    ckpt__open_chunk_fn open_chunk;
};

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

#endif /* CKPT_CORE_H */
