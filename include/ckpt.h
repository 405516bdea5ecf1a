/*
 * ckpt.h - read PyTorch checkpoints safely, without Python.
 *
 * The one public header of libckpt. Every exported symbol starts with ckpt_.
 *
 * Reading model:
 *   ckpt_open() maps a file read-only, detects its format from its content
 *   (torch zip, torch legacy, safetensors, plain pickle), interprets every
 *   pickle with a data-only interpreter (nothing is ever called or imported)
 *   and returns a handle that owns a tree of values. Tensors in that tree
 *   point into the map: their bytes are borrowed from the file and stay valid
 *   until ckpt_close(). Copies are made only when needed (misaligned data,
 *   compressed records, big-endian data) or asked for (ckpt_tensor_copy).
 *
 *   A handle is not thread-safe while tensor data is being resolved; after
 *   ckpt_file_resolve_all() every read-only accessor may be used from any
 *   number of threads.
 *
 * ABI:
 *   The soname is libckpt.so.0 until 1.0; before 1.0 a minor release may
 *   still break the ABI, and says so. From 1.0 on, within one soname:
 *   - may change: fields appended at the end of a struct that starts with
 *     struct_size, new enum values, new flag bits, new functions;
 *   - never changes: the order, type and meaning of existing fields, the
 *     numeric value of every enum constant, flag and status, the
 *     signature and meaning of existing functions.
 *   Every struct that crosses the boundary and may grow starts with
 *   size_t struct_size (libdeflate's sizeof_options):
 *   - structs the library fills (ckpt_tensor_info, ckpt_file_info,
 *     ckpt_record_info, ckpt_checkpoint_info, ckpt_param_info,
 *     ckpt_load_report, and ckpt_adamw_options for ckpt_adamw_get_options):
 *     the caller sets struct_size to the size it was built with,
 *       ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
 *     and the library writes only min(struct_size, its own sizeof) bytes,
 *     then sets struct_size to the bytes it wrote, so a caller built
 *     against a newer header sees which fields were filled; the rest of a
 *     longer struct is left as it was. A struct_size too small to hold
 *     struct_size (0) gets nothing written: functions that return a status
 *     return CKPT_ERR_INVALID_ARG, the others (bool) return false or (void)
 *     do nothing.
 *   - structs the library reads (the *_options structs, ckpt_limits,
 *     ckpt_tensor_desc): the *_default / _init functions set struct_size.
 *     The library reads only min(struct_size, its own sizeof) bytes: fields
 *     an older caller lacks take their defaults, fields a newer caller has
 *     that this library does not know are not read. ckpt_tensor_desc must
 *     hold at least dtype, ndim and shape.
 *   - structs the library owns and hands out (ckpt_scan_finding, and the
 *     ckpt_placement a placement callback gets): struct_size is the
 *     library's sizeof; read a field only when struct_size covers it.
 *   Fixed structs never grow: ckpt_error (its text buffers are its room),
 *   and the pairs passed in arrays, ckpt_metric and ckpt_key_map (an array
 *   has no room to grow; new data comes in new structs).
 *   Enum constants carry their type's name as prefix: CKPT_DTYPE_*,
 *   CKPT_KIND_* (ckpt_kind), CKPT_LAYOUT_*, CKPT_FORMAT_*,
 *   CKPT_SCAN_VERDICT_*, CKPT_SCAN_KIND_*, CKPT_MODE_* (ckpt_metric_mode),
 *   and CKPT_OK / CKPT_ERR_* (ckpt_status); flags theirs: CKPT_OPEN_*,
 *   CKPT_SAVE_*, CKPT_LOAD_*, CKPT_PARAM_*, CKPT_SCAN_USE_*, ...
 */
#ifndef CKPT_H
#define CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && defined(CKPT_BUILDING_LIBRARY)
#define CKPT_API __attribute__((visibility("default")))
#else
#define CKPT_API
#endif

/* ========================================================================
 * Version
 * ======================================================================== */

#define CKPT_VERSION_MAJOR 0
#define CKPT_VERSION_MINOR 1
#define CKPT_VERSION_PATCH 0
#define CKPT_VERSION_STRING "0.1.0"

/* The library's version string, e.g. "0.1.0". */
CKPT_API const char *ckpt_version(void);

/* ========================================================================
 * Errors
 * ======================================================================== */

/* Stable result codes: values never change between releases. */
typedef enum ckpt_status {
    CKPT_OK = 0,
    CKPT_ERR_IO = 1,          /* open/read/mmap failed (errno in the message) */
    CKPT_ERR_NOMEM = 2,       /* allocation failed */
    CKPT_ERR_FORMAT = 3,      /* malformed input: bad structure, bounds, opcode */
    CKPT_ERR_UNSUPPORTED = 4, /* well-formed, but a feature ckpt does not read */
    CKPT_ERR_UNSAFE = 5,      /* a pickle names a global outside the allow-list */
    CKPT_ERR_LIMIT = 6,       /* a configured limit was exceeded */
    CKPT_ERR_CORRUPT = 7,     /* checksum mismatch (CRC32) */
    CKPT_ERR_NOT_FOUND = 8,   /* a name or record does not exist */
    CKPT_ERR_INVALID_ARG = 9, /* the caller passed something wrong */
    CKPT_ERR_TYPE = 10,       /* a value is not of the kind asked for */
    CKPT_ERR_BUSY = 11,       /* another process holds the checkpoint directory;
                                 a save is still in flight (CKPT_ASYNC_NO_WAIT) */
    CKPT_ERR_MISMATCH = 12    /* a state dict does not fit the model (keys, shapes) */
} ckpt_status;

/* Short constant name of a status, e.g. "CKPT_ERR_FORMAT". */
CKPT_API const char *ckpt_status_name(ckpt_status status);

#define CKPT_NO_OFFSET UINT64_MAX

/*
 * Detailed error. Filled by every function that takes one (may be NULL).
 * record: the part of the file that was wrong ("archive/data.pkl",
 *         "safetensors header", "central directory", ...), or "".
 * offset: byte offset inside that record (inside the file when record is
 *         ""), or CKPT_NO_OFFSET.
 * file_offset: the same position as an absolute offset in the file, or
 *         CKPT_NO_OFFSET when it has none (e.g. inside an inflated record).
 */
typedef struct ckpt_error {
    ckpt_status status;
    uint64_t offset;
    uint64_t file_offset;
    char record[160];
    char message[352];
} ckpt_error;

/* Formats an error as one line: "RECORD at byte N: MESSAGE". Returns buf. */
CKPT_API const char *ckpt_error_format(const ckpt_error *err, char *buf, size_t size);

/* ========================================================================
 * Limits (protect the host from hostile files)
 * ======================================================================== */

typedef struct ckpt_limits {
    size_t struct_size;            /* sizeof(ckpt_limits), set by ckpt_limits_default */
    uint64_t max_pickle_bytes;     /* size of one pickle stream (default 1 GiB) */
    uint64_t max_stack_depth;      /* pickle VM stack + mark stack (default 1,000,000) */
    uint64_t max_memo_entries;     /* pickle memo slots, also the largest index (default 1,000,000) */
    uint64_t max_container_len;    /* items in one list/dict/tuple/set (default 100,000,000) */
    uint64_t max_value_bytes;      /* total memory of the value tree (default 1 GiB) */
    uint64_t max_nesting;          /* container nesting depth for walks (default 1,000) */
    uint64_t max_ndim;             /* tensor dimensions (default 64) */
    uint64_t max_zip_entries;      /* zip central directory entries (default 1,000,000) */
    uint64_t max_inflated_bytes;   /* one deflated record, inflated (default 4 GiB) */
    uint64_t max_inflate_ratio;    /* inflated / compressed size (default 1,000) */
    uint64_t max_header_bytes;     /* safetensors JSON header (default 100,000,000) */
    uint64_t max_total_inflated_bytes; /* deflated records of one file held inflated
                                          at once (default 4 GiB) */
    /* Bytes made from a file's tensors (a file written from them, a dense
     * copy, values compared) over the bytes the file holds (its size, with
     * deflated records counted inflated), plus 64 MiB of slack (default 64):
     * a view with stride 0 describes far more than it stores. */
    uint64_t max_output_ratio;
    uint64_t max_tensor_paths;     /* tensor names of one file: every path to a tensor,
                                      so one tensor shared through the pickle memo
                                      counts once per path (default 250,000) */
    uint64_t max_tensor_name_bytes;/* those names together, and so the longest one,
                                      NULs included (default 64 MiB) */
} ckpt_limits;

/* Fills *limits with the safe defaults above. */
CKPT_API void ckpt_limits_default(ckpt_limits *limits);

/* ========================================================================
 * Data types
 * ======================================================================== */

/* Values are stable. Names are PyTorch's without "torch." (ckpt_dtype_name). */
typedef enum ckpt_dtype {
    CKPT_DTYPE_INVALID = 0,
    CKPT_DTYPE_FLOAT64 = 1,
    CKPT_DTYPE_FLOAT32 = 2,
    CKPT_DTYPE_FLOAT16 = 3,
    CKPT_DTYPE_BFLOAT16 = 4,
    CKPT_DTYPE_COMPLEX128 = 5,
    CKPT_DTYPE_COMPLEX64 = 6,
    CKPT_DTYPE_COMPLEX32 = 7,
    CKPT_DTYPE_INT64 = 8,
    CKPT_DTYPE_INT32 = 9,
    CKPT_DTYPE_INT16 = 10,
    CKPT_DTYPE_INT8 = 11,
    CKPT_DTYPE_UINT64 = 12,
    CKPT_DTYPE_UINT32 = 13,
    CKPT_DTYPE_UINT16 = 14,
    CKPT_DTYPE_UINT8 = 15,
    CKPT_DTYPE_BOOL = 16,
    CKPT_DTYPE_FLOAT8_E5M2 = 17,
    CKPT_DTYPE_FLOAT8_E4M3FN = 18,
    CKPT_DTYPE_FLOAT8_E5M2FNUZ = 19,
    CKPT_DTYPE_FLOAT8_E4M3FNUZ = 20,
    CKPT_DTYPE_FLOAT8_E8M0FNU = 21,
    CKPT_DTYPE_QINT8 = 22,
    CKPT_DTYPE_QUINT8 = 23,
    CKPT_DTYPE_QINT32 = 24,
    CKPT_DTYPE_QUINT4X2 = 25,
    CKPT_DTYPE_QUINT2X4 = 26,
    CKPT_DTYPE_BITS8 = 27,
    CKPT_DTYPE_BITS16 = 28,
    CKPT_DTYPE_BITS1X8 = 29,
    CKPT_DTYPE_BITS2X4 = 30,
    CKPT_DTYPE_BITS4X2 = 31,
    CKPT_DTYPE_FLOAT4_E2M1FN_X2 = 32,
    CKPT_DTYPE_FLOAT4_E2M1 = 33,  /* safetensors F4: 4 bits per element */
    CKPT_DTYPE_FLOAT6_E2M3 = 34,  /* safetensors F6_E2M3: 6 bits per element */
    CKPT_DTYPE_FLOAT6_E3M2 = 35,  /* safetensors F6_E3M2: 6 bits per element */
    CKPT_DTYPE_COUNT_
} ckpt_dtype;

/* "float32", "bfloat16", ...; "invalid" for an unknown value. */
CKPT_API const char *ckpt_dtype_name(ckpt_dtype dtype);
/* Parses a name as printed by ckpt_dtype_name (also "torch.float32"). */
CKPT_API ckpt_dtype ckpt_dtype_from_name(const char *name);
/* Bits per element (4 for float4 and quint4x2, 2 for quint2x4, 6 for float6,
 * 8 x bytes otherwise); 0 if unknown. */
CKPT_API unsigned ckpt_dtype_bits(ckpt_dtype dtype);
/* Bytes per element; 0 for sub-byte dtypes. */
CKPT_API size_t ckpt_dtype_size(ckpt_dtype dtype);
/* safetensors' name ("F32", "BF16", ...), or NULL when it has none. */
CKPT_API const char *ckpt_dtype_safetensors_name(ckpt_dtype dtype);
/* true for floating dtypes (float64..float8, not complex, not quantized). */
CKPT_API bool ckpt_dtype_is_floating(ckpt_dtype dtype);

/* ========================================================================
 * Values: the tree a checkpoint holds
 * ======================================================================== */

typedef enum ckpt_kind {
    CKPT_KIND_NONE = 0,
    CKPT_KIND_BOOL = 1,
    CKPT_KIND_INT = 2,         /* fits in int64_t */
    CKPT_KIND_BIGINT = 3,      /* larger int: little-endian two's complement bytes */
    CKPT_KIND_FLOAT = 4,
    CKPT_KIND_COMPLEX = 5,
    CKPT_KIND_STR = 6,         /* UTF-8, may hold NUL: use the length */
    CKPT_KIND_BYTES = 7,       /* bytes or bytearray */
    CKPT_KIND_LIST = 8,
    CKPT_KIND_TUPLE = 9,
    CKPT_KIND_SET = 10,        /* set or frozenset (ckpt_value_repr tells them apart) */
    CKPT_KIND_DICT = 11,
    CKPT_KIND_ORDERED_DICT = 12,
    CKPT_KIND_SIZE = 13,       /* torch.Size: a tuple of ints */
    CKPT_KIND_DEVICE = 14,     /* torch.device: text "cpu", "cuda:0" */
    CKPT_KIND_DTYPE = 15,      /* a torch dtype object */
    CKPT_KIND_TENSOR = 16,     /* a tensor or Parameter */
    CKPT_KIND_GLOBAL = 17,     /* a reference to a class or constant, e.g.
                             torch.per_tensor_affine: text "module.name" */
    CKPT_KIND_OBJECT = 18      /* an object of a class outside the allow-list, kept
                             inert (CKPT_OPEN_PERMISSIVE; never built by running
                             anything): text "module.name" of its class, its
                             arguments and state through the accessors below */
} ckpt_kind;

typedef struct ckpt_value ckpt_value;
typedef struct ckpt_tensor ckpt_tensor;

/* "none", "bool", "int", ... */
CKPT_API const char *ckpt_kind_name(ckpt_kind kind);

/* All accessors accept NULL and return a neutral result (0, NULL, false). */
CKPT_API ckpt_kind ckpt_value_kind(const ckpt_value *v);
CKPT_API bool ckpt_value_bool(const ckpt_value *v);
CKPT_API int64_t ckpt_value_int(const ckpt_value *v);           /* INT, BOOLEAN */
CKPT_API double ckpt_value_float(const ckpt_value *v);          /* FLOAT, INT */
CKPT_API void ckpt_value_complex(const ckpt_value *v, double *re, double *im);
/* Text or bytes of STR, BYTES, BIGINT, DEVICE, DTYPE (its name), GLOBAL and
 * OBJECT (its class's "module.name"). NUL-terminated; *len (may be NULL)
 * gets the length without the NUL. */
CKPT_API const char *ckpt_value_str(const ckpt_value *v, size_t *len);
CKPT_API ckpt_dtype ckpt_value_dtype(const ckpt_value *v);      /* DTYPE */
/* Items of LIST, TUPLE, SET, SIZE; entries of DICT, ORDERED_DICT. */
CKPT_API size_t ckpt_value_len(const ckpt_value *v);
CKPT_API const ckpt_value *ckpt_value_item(const ckpt_value *v, size_t i);
CKPT_API const ckpt_value *ckpt_value_key(const ckpt_value *v, size_t i);
CKPT_API const ckpt_value *ckpt_value_dict_value(const ckpt_value *v, size_t i);
/* A dict key as text, as tensor names show it: text as is, other keys as
 * Python's str() (1, None, True, 2.5, (1, 'a'), frozenset({3})). Writes at
 * most size bytes with the NUL; returns the length written. */
CKPT_API size_t ckpt_value_key_text(const ckpt_value *key, char *buf, size_t size);
/*
 * Python's repr() of a value: None, True, 12, 1e+16, nan, (1+2j), 'a\n',
 * "it's" (Python's quotes and escapes), b'\x00', [1, 2], (1,), {'a': 1},
 * {1, 2}, set(), frozenset({1}), frozenset(), OrderedDict([('a', 1)]),
 * torch.Size([2, 3]), device(type='cuda', index=0), torch.float32. Where
 * Python has no such text: a global as "module.name", an inert object as
 * "<module.name object>", a tensor as "tensor(dtype=float32, shape=[2, 3])",
 * an int of more than 4,300 digits (where Python's str() refuses) in hex,
 * as hex() shows it. A container inside itself, or nested more than 100 deep, shows
 * as [...] ({...}, (...)); text past 64 MiB is cut with "...".
 * Like snprintf: writes at most size bytes with the NUL (buf may be NULL
 * when size is 0) and returns the length of the whole text. NULL is None.
 */
CKPT_API size_t ckpt_value_repr(const ckpt_value *v, char *buf, size_t size);
/* Dict lookup by a text key; NULL when absent. */
CKPT_API const ckpt_value *ckpt_value_get(const ckpt_value *v, const char *key);
/* State an object was built with: an ORDERED_DICT's attributes (a dict with
 * "_metadata" for state dicts), a tensor's BUILD state, an OBJECT's BUILD
 * state (its attributes: a DICT, or what the pickle gave); NULL when none. */
CKPT_API const ckpt_value *ckpt_value_state(const ckpt_value *v);
CKPT_API const ckpt_tensor *ckpt_value_tensor(const ckpt_value *v);
/* OBJECT: what it was called with, as the pickle gave it: the class (a
 * GLOBAL, or an OBJECT when the result of a call was called in turn), the
 * positional arguments (a TUPLE) and NEWOBJ_EX's keyword arguments (a DICT,
 * NULL when none). NULL for other kinds. */
CKPT_API const ckpt_value *ckpt_value_object_class(const ckpt_value *v);
CKPT_API const ckpt_value *ckpt_value_object_args(const ckpt_value *v);
CKPT_API const ckpt_value *ckpt_value_object_kwargs(const ckpt_value *v);
/* OBJECT: entries set on it by SETITEM(S) (a DICT) and items added by
 * APPEND(S)/ADDITEMS (a LIST); NULL when none. */
CKPT_API const ckpt_value *ckpt_value_object_dict(const ckpt_value *v);
CKPT_API const ckpt_value *ckpt_value_object_items(const ckpt_value *v);

/* ========================================================================
 * Tensors
 * ======================================================================== */

/* How a tensor's elements are stored. Sparse tensors have no strided data of
 * their own: their parts (ckpt_tensor_sparse_part) are strided tensors, and
 * ckpt_tensor_copy writes the dense array. */
typedef enum ckpt_layout {
    CKPT_LAYOUT_STRIDED = 0,
    CKPT_LAYOUT_SPARSE_COO = 1,   /* parts: indices [sparse_dim, nnz], values [nnz, ...] */
    CKPT_LAYOUT_SPARSE_CSR = 2,   /* parts: crow_indices, col_indices, values */
    CKPT_LAYOUT_SPARSE_CSC = 3,   /* parts: ccol_indices, row_indices, values */
    CKPT_LAYOUT_SPARSE_BSR = 4,   /* parts: crow_indices, col_indices, values (blocks) */
    CKPT_LAYOUT_SPARSE_BSC = 5    /* parts: ccol_indices, row_indices, values (blocks) */
} ckpt_layout;

/* "strided", "sparse_coo", "sparse_csr", ... */
CKPT_API const char *ckpt_layout_name(ckpt_layout layout);

typedef struct ckpt_tensor_info {
    size_t struct_size;        /* caller: sizeof(ckpt_tensor_info) (see the top) */
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;      /* ndim sizes */
    const int64_t *stride;     /* ndim strides, in elements */
    int64_t storage_offset;    /* in elements */
    uint64_t numel;
    uint64_t nbytes;           /* numel x element size (rounded up for sub-byte) */
    bool requires_grad;
    bool is_parameter;         /* saved as torch.nn.Parameter */
    bool is_contiguous;        /* row-major, no gaps */
    bool has_storage;          /* false for meta tensors */
    bool big_endian;           /* bytes in the file are big-endian */
    const char *storage_key;   /* record key in the file ("0", "1", ...) */
    const char *location;      /* "cpu", "cuda:0", ... as saved */
    const char *record;        /* record holding the bytes, e.g. "archive/data/0" */
    uint64_t storage_nbytes;   /* bytes of the whole storage */
    uint64_t storage_file_offset; /* where the storage's bytes start in the file,
                                      CKPT_NO_OFFSET when not stored plainly */
    uint32_t storage_index;    /* index in the file's storage table */
    ckpt_layout layout;        /* sparse: storage fields describe the values part */
    uint64_t nnz;              /* sparse: number of specified elements (or blocks) */
} ckpt_tensor_info;

CKPT_API void ckpt_tensor_get_info(const ckpt_tensor *t, ckpt_tensor_info *info);

typedef struct ckpt_file ckpt_file;

/*
 * Pointer to the tensor's first element (storage + storage_offset) in native
 * byte order; index it with the strides. Borrowed: valid until ckpt_close().
 * Zero-copy when the file's bytes are aligned and native-endian; otherwise the
 * storage is copied once into memory the handle owns. *zero_copy (may be NULL)
 * tells which. Meta tensors and empty storages give NULL with CKPT_OK;
 * sparse tensors give CKPT_ERR_UNSUPPORTED (read their parts instead).
 */
CKPT_API ckpt_status ckpt_tensor_data(ckpt_file *f, const ckpt_tensor *t,
                                      const void **data, bool *zero_copy,
                                      ckpt_error *err);

/* Part i of a sparse tensor (see ckpt_layout), a strided tensor; NULL past
 * the last part or for strided tensors. */
CKPT_API const ckpt_tensor *ckpt_tensor_sparse_part(const ckpt_tensor *t, unsigned i);

/* Copies the tensor as a contiguous row-major array in native byte order into
 * dst (dst_size >= nbytes), whatever its strides. Sparse COO and CSR/CSC
 * tensors are written dense (duplicate COO entries are summed, as torch's
 * to_dense does); every index is checked against the shape first. nbytes
 * past what f's max_output_ratio allows (ckpt_file_check_output) is
 * CKPT_ERR_LIMIT, before anything is written. */
CKPT_API ckpt_status ckpt_tensor_copy(ckpt_file *f, const ckpt_tensor *t,
                                      void *dst, size_t dst_size,
                                      ckpt_error *err);

/* ========================================================================
 * Reading files
 * ======================================================================== */

typedef enum ckpt_format {
    CKPT_FORMAT_UNKNOWN = 0,
    CKPT_FORMAT_TORCH_ZIP = 1,     /* torch.save, PyTorch >= 1.6 */
    CKPT_FORMAT_TORCH_LEGACY = 2,  /* torch.save before 1.6 / _use_new_zipfile_serialization=False */
    CKPT_FORMAT_SAFETENSORS = 3,
    CKPT_FORMAT_PICKLE = 4,        /* a plain pickle stream (no tensors) */
    CKPT_FORMAT_SHARDED = 5,       /* an index (model.safetensors.index.json,
                                      pytorch_model.bin.index.json) over shard files */
    CKPT_FORMAT_NUMPY_NPY = 6,     /* numpy.save: one array, named "tensor" */
    CKPT_FORMAT_NUMPY_NPZ = 7,     /* numpy.savez(_compressed): one array per member, named
                                      by its key */
    CKPT_FORMAT_TORCH_TAR = 8,     /* torch.save before 0.4: a tar archive (storages,
                                      tensors, pickle members) */
    CKPT_FORMAT_DCP = 9            /* a PyTorch Distributed Checkpoint directory
                                      (.metadata and __R_N.distcp files) */
} ckpt_format;

/* "torch-zip", "torch-legacy", "safetensors", "pickle", "sharded", "numpy-npy",
 * "numpy-npz", "torch-tar", "dcp", "unknown". */
CKPT_API const char *ckpt_format_name(ckpt_format format);

/* Flags for ckpt_open_options.flags. */
#define CKPT_OPEN_VERIFY_CRC 0x1u   /* check every record's CRC32 while opening */
/* Objects outside the allow-list become inert values instead of errors
 * (nothing is ever called); a pickled nn.Module names its tensors as its
 * state_dict() does. */
#define CKPT_OPEN_PERMISSIVE 0x2u
/* A TorchScript archive (constants.pkl, code/), refused by default, is read
 * as data: its data.pkl's module objects give the state dict that
 * torch.jit.load(f).state_dict() gives (same names, order, dtypes, shapes,
 * bytes). Nothing in code/ runs; only each class's __parameters__ and
 * __buffers__ lists are read. Classes with a __setstate__ (quantized packed
 * params, torchbind) are refused by name. */
#define CKPT_OPEN_TORCHSCRIPT_WEIGHTS 0x4u

typedef struct ckpt_open_options {
    size_t struct_size;    /* sizeof(ckpt_open_options) */
    unsigned flags;        /* CKPT_OPEN_* */
    ckpt_limits limits;    /* limits.struct_size == 0 means defaults */
} ckpt_open_options;

/* Fills *opts with defaults (no flags, default limits). */
CKPT_API void ckpt_open_options_default(ckpt_open_options *opts);

/*
 * Opens and indexes a checkpoint. opts may be NULL (defaults). On success
 * *out owns the map and the value tree; free it with ckpt_close(). On failure
 * *out is NULL and err says why.
 */
CKPT_API ckpt_status ckpt_open(const char *path, const ckpt_open_options *opts,
                               ckpt_file **out, ckpt_error *err);

/* Same over caller memory, which must outlive the handle (nothing is copied).
 * A sharded index cannot be opened this way (its shards are files). */
CKPT_API ckpt_status ckpt_open_memory(const void *data, size_t size,
                                      const ckpt_open_options *opts,
                                      ckpt_file **out, ckpt_error *err);

/* Frees everything the handle owns; NULL is a no-op. */
CKPT_API void ckpt_close(ckpt_file *f);

/* Details of the file's format, for display. Strings are NULL when absent. */
typedef struct ckpt_file_info {
    size_t struct_size;        /* caller: sizeof(ckpt_file_info) (see the top) */
    ckpt_format format;
    uint64_t file_size;
    const char *prefix;             /* torch zip: archive prefix, e.g. "archive" */
    const char *version;            /* torch zip: content of "version" ("3") */
    const char *byteorder;          /* torch zip: "little"/"big"; NULL if no record */
    const char *serialization_id;   /* torch zip: .data/serialization_id */
    const char *format_version;     /* torch zip: .format_version */
    const char *storage_alignment;  /* torch zip: .storage_alignment */
    int pickle_protocol;            /* protocol of the main pickle (PROTO), -1 if none */
    int64_t legacy_protocol_version;/* legacy: 1001; else 0 */
    uint64_t data_alignment;        /* largest power of two (<= 4096) dividing the
                                       file offset of every stored tensor record;
                                       0 when there are none */
    size_t record_count;            /* zip records, safetensors tensors, legacy storages */
    size_t storage_count;
    size_t tensor_count;
    bool big_endian;                /* tensor data is stored big-endian */
    const ckpt_value *metadata;     /* safetensors __metadata__, a sharded index's
                                       "metadata" (a DICT), or NULL */
    size_t shard_count;             /* sharded: the shard files opened */
} ckpt_file_info;

CKPT_API void ckpt_file_get_info(const ckpt_file *f, ckpt_file_info *info);

/* The root value: what torch.load would return. */
CKPT_API const ckpt_value *ckpt_file_root(const ckpt_file *f);

/*
 * Tensors, flattened in the order they appear in the tree, each named by its
 * path from the root: dict keys as text (other keys as Python's str() shows
 * them: 1, None, True, 2.5, (1, 'a')), list/tuple/set positions as decimal
 * numbers, joined by ".": "model.net.0.weight", "optimizer.state.0.exp_avg".
 * A tensor object reachable by two paths is listed under both.
 */
CKPT_API size_t ckpt_file_tensor_count(const ckpt_file *f);
CKPT_API const ckpt_tensor *ckpt_file_tensor(const ckpt_file *f, size_t i,
                                             const char **name);
/* By name; NULL when absent. */
CKPT_API const ckpt_tensor *ckpt_file_find_tensor(const ckpt_file *f, const char *name);
/* The value (kind CKPT_KIND_TENSOR) holding tensor i, to put it into a tree as it
 * is (see ckpt_new_view); NULL past the end. */
CKPT_API const ckpt_value *ckpt_file_tensor_value(const ckpt_file *f, size_t i);

/* Raw records of the file (zip entries; one per tensor for safetensors;
 * one per storage for legacy; one per shard file for a sharded index). */
typedef struct ckpt_record_info {
    size_t struct_size;        /* caller: sizeof(ckpt_record_info) (see the top) */
    const char *name;
    uint64_t header_offset;   /* zip: local header offset; else = data_offset */
    uint64_t data_offset;     /* where the record's bytes start in the file */
    uint64_t stored_size;     /* bytes in the file */
    uint64_t size;            /* bytes once inflated */
    uint32_t crc32;           /* declared CRC32 (zip), 0 otherwise */
    bool compressed;          /* deflated */
    bool has_crc;
} ckpt_record_info;

CKPT_API size_t ckpt_file_record_count(const ckpt_file *f);
CKPT_API ckpt_status ckpt_file_record(const ckpt_file *f, size_t i, ckpt_record_info *info);

/* Resolves the data of every storage now (inflating/copying where needed), so
 * later ckpt_tensor_data calls are read-only. */
CKPT_API ckpt_status ckpt_file_resolve_all(ckpt_file *f, ckpt_error *err);

/*
 * A value tree as flat arrays, for bindings that build their own objects in
 * one pass instead of one call per node (the Python package). The tree must
 * hold only NONE, BOOL, INT, FLOAT, STR, LIST, TUPLE, DICT, ORDERED_DICT,
 * SIZE, DEVICE, DTYPE and strided TENSOR values without BUILD state, and no
 * cycle; anything else gives CKPT_ERR_UNSUPPORTED (walk it node by node).
 *
 * ops is a prefix program of int64 words, one value after another:
 *   CKPT_FLAT_NONE | BOOL b | INT v | FLOAT bits (IEEE double) |
 *   STR off len (text[off..off+len], UTF-8) | DEVICE off len | DTYPE d |
 *   SIZE n d0..dn-1 |
 *   LIST n id, n values | TUPLE n id, n values |
 *   DICT n id, n key/value pairs | ORDERED_DICT n id has_state, n pairs,
 *     then the state value when has_state |
 *   STR_TENSOR_DICT kind n id off len row has_state: a DICT or ORDERED_DICT
 *     (kind) of n text keys, NUL-terminated one after another at
 *     text[off..off+len], with the tensors of rows row..row+n-1 as values,
 *     then the state value when has_state |
 *   TENSOR row | REF id: the container numbered id again (ids count
 *     containers in the order their ops come, from 0).
 * tensors holds one row of tensor_fields int64 words per distinct tensor,
 * indexed by CKPT_FLAT_T_*; a newer library may append fields (rows are
 * tensor_fields wide). dims holds each row's shape then its strides.
 */
typedef struct ckpt_flat ckpt_flat;

enum {
    CKPT_FLAT_NONE = 0, CKPT_FLAT_BOOL = 1, CKPT_FLAT_INT = 2, CKPT_FLAT_FLOAT = 3,
    CKPT_FLAT_STR = 4, CKPT_FLAT_LIST = 5, CKPT_FLAT_TUPLE = 6, CKPT_FLAT_DICT = 7,
    CKPT_FLAT_ORDERED_DICT = 8, CKPT_FLAT_TENSOR = 9, CKPT_FLAT_REF = 10,
    CKPT_FLAT_STR_TENSOR_DICT = 11, CKPT_FLAT_SIZE = 12, CKPT_FLAT_DEVICE = 13,
    CKPT_FLAT_DTYPE = 14
};

/* Fields of a tensor row. */
enum {
    CKPT_FLAT_T_TENSOR = 0,        /* the const ckpt_tensor * */
    CKPT_FLAT_T_DATA = 1,          /* ckpt_tensor_data's pointer, 0 when none */
    CKPT_FLAT_T_FLAGS = 2,         /* CKPT_FLAT_TF_* */
    CKPT_FLAT_T_DTYPE = 3,
    CKPT_FLAT_T_NDIM = 4,
    CKPT_FLAT_T_DIMS = 5,          /* index of its shape in dims; strides follow */
    CKPT_FLAT_T_STORAGE_OFFSET = 6,/* in elements */
    CKPT_FLAT_T_NBYTES = 7,        /* the tensor's bytes */
    CKPT_FLAT_T_STORAGE = 8,       /* an id of its storage (equal ids: one storage) */
    CKPT_FLAT_T_STORAGE_NBYTES = 9,
    CKPT_FLAT_T_LOCATION = 10,     /* its location's text: offset, */
    CKPT_FLAT_T_LOCATION_LEN = 11, /* and length */
    CKPT_FLAT_T_COUNT = 12
};

#define CKPT_FLAT_TF_ZERO_COPY 0x1     /* DATA points into the file's map */
#define CKPT_FLAT_TF_REQUIRES_GRAD 0x2
#define CKPT_FLAT_TF_PARAMETER 0x4
#define CKPT_FLAT_TF_STORAGE 0x8       /* has a storage (not meta) */
#define CKPT_FLAT_TF_CONTIGUOUS 0x10
#define CKPT_FLAT_TF_STORAGE_VIEW 0x20 /* a view of another storage (legacy files) */
#define CKPT_FLAT_TF_SHARED 0x40       /* another row has the same STORAGE */

typedef struct ckpt_flat_info {
    size_t struct_size;        /* caller: sizeof(ckpt_flat_info) (see the top) */
    const int64_t *ops;
    size_t op_count;
    const char *text;
    size_t text_bytes;
    const int64_t *tensors;
    size_t tensor_count;
    size_t tensor_fields;      /* int64 words per row (CKPT_FLAT_T_COUNT or more) */
    const int64_t *dims;
    size_t dim_count;
} ckpt_flat_info;

/* Flattens root (a value of f; NULL: f's root) and resolves every tensor's
 * data as ckpt_tensor_data does. Free *out with ckpt_flat_free; pointers
 * into f stay valid until ckpt_close(). */
CKPT_API ckpt_status ckpt_value_flatten(ckpt_file *f, const ckpt_value *root, ckpt_flat **out,
                                        ckpt_error *err);
CKPT_API void ckpt_flat_get_info(const ckpt_flat *flat, ckpt_flat_info *info);
/* NULL is a no-op. */
CKPT_API void ckpt_flat_free(ckpt_flat *flat);

/*
 * Checks everything: every record's CRC32, every record inside the file,
 * every tensor's bytes inside its storage, every storage's size, every
 * index of sparse tensors. Each record is read once as a stream (deflated
 * ones through a small inflate buffer): memory does not grow with the
 * file, and nothing is held afterwards (ckpt_file_resolve_all holds the
 * data). Returns CKPT_OK, CKPT_ERR_CORRUPT (checksum), CKPT_ERR_FORMAT or
 * CKPT_ERR_LIMIT (an inflate limit, sparse indices past max_output_ratio),
 * with the first problem (record and offset) in err.
 */
CKPT_API ckpt_status ckpt_file_verify(ckpt_file *f, ckpt_error *err);

/* Options of ckpt_file_verify_with; ckpt_verify_options_default sets
 * struct_size and leaves the rest zero. */
typedef struct ckpt_verify_options {
    size_t struct_size;      /* sizeof(ckpt_verify_options) */
    /* Called after each record of a torch zip is checked, with the bytes
     * checked so far and the bytes of all its records (a sharded file's
     * shards included); NULL: none. Files without records (safetensors,
     * legacy) make no call. */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *progress_user;
} ckpt_verify_options;

CKPT_API void ckpt_verify_options_default(ckpt_verify_options *opts);
/* ckpt_file_verify with options (NULL: the defaults). */
CKPT_API ckpt_status ckpt_file_verify_with(ckpt_file *f, const ckpt_verify_options *opts,
                                           ckpt_error *err);

/*
 * Whether making `bytes` bytes out of f's tensors stays within its
 * max_output_ratio: at most that many times the bytes f holds (its size,
 * deflated records counted inflated, a sharded index's shards included)
 * plus 64 MiB. CKPT_ERR_LIMIT naming `what` (may be NULL) otherwise. The
 * writers and ckpt_tensor_copy check it themselves; a caller that goes
 * through values another way (comparing them element by element) asks
 * first, with the total it means to go through.
 */
CKPT_API ckpt_status ckpt_file_check_output(const ckpt_file *f, uint64_t bytes, const char *what,
                                            ckpt_error *err);

/* ========================================================================
 * Building values (for writing)
 *
 * A tree owns the values made in it; ckpt_tree_free() frees them all.
 * Containers may hold values of the tree and values of open files
 * (ckpt_file_root() and below): a file's values are referenced, not
 * copied, so the file must stay open until the tree is saved.
 * Constructors return NULL on failure and the tree remembers its first
 * error: check ckpt_tree_status() once, before saving (containers refuse
 * NULL items, so a failed constructor shows up there too).
 * ======================================================================== */

typedef struct ckpt_tree ckpt_tree;

/* NULL when out of memory. */
CKPT_API ckpt_tree *ckpt_tree_new(void);
CKPT_API void ckpt_tree_free(ckpt_tree *tree);
/* The tree's first error (CKPT_OK when none); err (may be NULL) gets it. */
CKPT_API ckpt_status ckpt_tree_status(const ckpt_tree *tree, ckpt_error *err);

CKPT_API ckpt_value *ckpt_new_none(ckpt_tree *tree);
CKPT_API ckpt_value *ckpt_new_bool(ckpt_tree *tree, bool b);
CKPT_API ckpt_value *ckpt_new_int(ckpt_tree *tree, int64_t i);
CKPT_API ckpt_value *ckpt_new_float(ckpt_tree *tree, double d);
CKPT_API ckpt_value *ckpt_new_complex(ckpt_tree *tree, double re, double im);
/* UTF-8 text (checked); len SIZE_MAX means strlen(s). Copied. */
CKPT_API ckpt_value *ckpt_new_str(ckpt_tree *tree, const char *s, size_t len);
CKPT_API ckpt_value *ckpt_new_bytes(ckpt_tree *tree, const void *p, size_t len);
CKPT_API ckpt_value *ckpt_new_list(ckpt_tree *tree);
CKPT_API ckpt_value *ckpt_new_tuple(ckpt_tree *tree);
CKPT_API ckpt_value *ckpt_new_set(ckpt_tree *tree);
CKPT_API ckpt_value *ckpt_new_dict(ckpt_tree *tree);
/* collections.OrderedDict, what state_dict() returns. */
CKPT_API ckpt_value *ckpt_new_ordered_dict(ckpt_tree *tree);
CKPT_API ckpt_value *ckpt_new_dtype(ckpt_tree *tree, ckpt_dtype dtype);
/* torch.device: "cpu", "cuda:0", ... */
CKPT_API ckpt_value *ckpt_new_device(ckpt_tree *tree, const char *device);
/* torch.Size of ndim ints. */
CKPT_API ckpt_value *ckpt_new_size(ckpt_tree *tree, uint32_t ndim, const int64_t *dims);

/* Appends item to a LIST, TUPLE or SET made in this tree. */
CKPT_API ckpt_status ckpt_append(ckpt_tree *tree, ckpt_value *seq, const ckpt_value *item);
/* dict[key] = val for a DICT or ORDERED_DICT made in this tree, with Python's
 * semantics (an equal key keeps its place and takes the new value). */
CKPT_API ckpt_status ckpt_dict_put(ckpt_tree *tree, ckpt_value *dict, const ckpt_value *key,
                                   const ckpt_value *val);
/* The same with a text key. */
CKPT_API ckpt_status ckpt_dict_put_str(ckpt_tree *tree, ckpt_value *dict, const char *key,
                                       const ckpt_value *val);
/* Attaches state: an ORDERED_DICT's attributes (a DICT holding "_metadata"
 * for state dicts, see ckpt_value_state), or a tensor's BUILD state. */
CKPT_API ckpt_status ckpt_set_state(ckpt_tree *tree, ckpt_value *v, const ckpt_value *state);

/* A strided tensor over caller memory, borrowed (never copied): data must
 * stay valid and unchanged until the tree is saved. */
typedef struct ckpt_tensor_desc {
    size_t struct_size;          /* sizeof(ckpt_tensor_desc) */
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;        /* ndim sizes */
    const int64_t *stride;       /* ndim strides in elements; NULL: contiguous */
    int64_t storage_offset;      /* in elements */
    const void *data;            /* first byte of the storage, native byte order */
    uint64_t storage_nbytes;     /* bytes of the storage; 0: exactly what the view spans */
    const char *location;        /* location tag; NULL: "cpu" */
    bool requires_grad;
    bool is_parameter;           /* saved as torch.nn.Parameter */
} ckpt_tensor_desc;

/* Fills *desc with zeros, struct_size and dtype float32. */
CKPT_API void ckpt_tensor_desc_init(ckpt_tensor_desc *desc);
/* A tensor with a storage of its own. Shape, stride and offset are checked
 * against storage_nbytes. */
CKPT_API ckpt_value *ckpt_new_tensor(ckpt_tree *tree, const ckpt_tensor_desc *desc);
/* A view sharing base's storage (base: a tensor of this tree or of an open
 * file): desc's shape, stride, storage_offset, requires_grad and
 * is_parameter are used; dtype must be base's; data and location are
 * ignored. The storage is written once however many views share it. */
CKPT_API ckpt_value *ckpt_new_view(ckpt_tree *tree, const ckpt_value *base,
                                   const ckpt_tensor_desc *desc);
/* A contiguous copy of a strided tensor (of this tree or of an open file) in
 * another floating dtype, computed while saving (never held whole in memory):
 * float64, float32, float16 and bfloat16, converted as ckpt_convert_dtype
 * does. Other dtypes give CKPT_ERR_TYPE. to == the tensor's dtype makes a
 * contiguous copy. */
CKPT_API ckpt_value *ckpt_new_cast(ckpt_tree *tree, const ckpt_value *tensor, ckpt_dtype to);

/* Converts count elements between float64, float32, float16 and bfloat16,
 * bit for bit as PyTorch's .to(dtype): round to nearest even (float64 to
 * float16/bfloat16 through float32), NaN stays NaN, infinities and
 * subnormals exact where representable. Other pairs: CKPT_ERR_TYPE unless
 * from == to (a copy). */
CKPT_API ckpt_status ckpt_convert_dtype(ckpt_dtype to, void *dst, ckpt_dtype from,
                                        const void *src, size_t count);

/* ========================================================================
 * Writing files
 *
 * Writes are crash-safe: the bytes go to a temporary file in the target's
 * directory, which is fsync'ed, renamed over the target, and the directory
 * fsync'ed. On any error the previous file is untouched and the temporary
 * removed. Tensor bytes stream from their memory (or the source file's map)
 * to the output: the writer's own memory is O(metadata). What tensors of
 * open files make (each one written contiguous, casts, a storage per view
 * of a legacy storage) is bounded by those files' max_output_ratio
 * (ckpt_file_check_output, over the files together): past it the save is
 * CKPT_ERR_LIMIT, naming the largest tensor, before anything is written.
 * ======================================================================== */

#define CKPT_SAVE_NO_FSYNC 0x1u   /* skip the fsyncs: faster, not durable */

typedef struct ckpt_save_options {
    size_t struct_size;          /* sizeof(ckpt_save_options) */
    unsigned flags;              /* CKPT_SAVE_* */
    /* torch zip: archive prefix; NULL: the file's base name without its last
     * extension, as torch 1.13+ does ("archive" when that is empty). */
    const char *prefix;
    /* torch zip: write every tensor with this location tag ("cpu"), as
     * map_location does; NULL keeps each tensor's tag. */
    const char *location;
    /* safetensors: extra __metadata__ entries, a DICT of text -> text. */
    const ckpt_value *metadata;
    /* Called as bytes are written (done, total), may be NULL. */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *progress_user;
} ckpt_save_options;

CKPT_API void ckpt_save_options_default(ckpt_save_options *opts);

/*
 * Saves a value tree as a torch zip file that torch.load reads (and
 * weights_only=True where the content allows): a protocol 2 pickle of only
 * the opcodes every weights_only reader accepts, storages written once in
 * order of first use, records aligned to 64 bytes, CRC32, data descriptors
 * and ZIP64 as PyTorch writes them. The same tree gives the same bytes.
 */
CKPT_API ckpt_status ckpt_save_torch(const char *path, const ckpt_value *root,
                                     const ckpt_save_options *opts, ckpt_error *err);

/*
 * Saves the tensors of a tree as safetensors: one entry per tensor, named as
 * ckpt_file_tensor names them, each contiguous; data in the reference order
 * (dtype alignment descending, then name), starting at a multiple of 64.
 * Subtrees without tensors (epoch, metrics, versions) go into __metadata__
 * as JSON text under their path, with opts->metadata's entries. Tensors
 * that are the same view of one storage (tied weights) are written once, as
 * safetensors' save_model does: under the first name in byte order, each
 * other name in __metadata__ with the kept name as its value. Sparse and
 * quantized tensors, and two tensors under one name, are refused.
 */
CKPT_API ckpt_status ckpt_save_safetensors(const char *path, const ckpt_value *root,
                                           const ckpt_save_options *opts, ckpt_error *err);

/*
 * Saves the tensors of a tree as a sharded safetensors set in the directory
 * dir, as transformers' save_pretrained does: in the tree's order, shards
 * of at most max_shard_size bytes of tensor data (a tensor larger than that
 * alone in its shard; tensors sharing a storage in the first one's shard),
 * named model-0000i-of-0000n.safetensors, with model.safetensors.index.json
 * ({"metadata": {"total_size": N}, "weight_map": {name: file}}); a single
 * shard is model.safetensors, without an index. Each shard is written as
 * ckpt_save_safetensors writes a file (opts->metadata in every shard;
 * subtrees without tensors in the first shard's __metadata__). The set is
 * one commit: it is made in DIR.tmp-ID beside dir with hard links to the
 * other files of dir (config.json stays; stale shards of an earlier set
 * go), synced, and swapped into place in one rename; a crash leaves dir
 * old or new, whole. A dir holding subdirectories is refused.
 */
CKPT_API ckpt_status ckpt_save_safetensors_sharded(const char *dir, const ckpt_value *root,
                                                   uint64_t max_shard_size,
                                                   const ckpt_save_options *opts,
                                                   ckpt_error *err);

/*
 * Saves write to a temporary file beside the target and rename it over the
 * target when complete. This removes the temporaries of the saves in
 * progress in this process; it is async-signal-safe, for a SIGINT or
 * SIGTERM handler that then re-raises the signal. A process killed outright
 * (SIGKILL) leaves its temporary; the next save into that directory removes
 * the temporaries of processes that no longer exist.
 */
CKPT_API void ckpt_remove_temporaries(void);

/* ========================================================================
 * Writing distributed checkpoints (PyTorch DCP directories)
 *
 * ckpt_dcp_save writes a directory that torch.distributed.checkpoint.load
 * (torch 2.4+: StorageMeta) reads with any world size: .metadata (a protocol 4 pickle of
 * torch 2.x's Metadata, TensorStorageMetadata, ChunkStorageMetadata,
 * MetadataIndex, _StorageInfo, StorageMeta) and __RANK_0.distcp, one file
 * per rank that has something to write, each item in it a whole torch.save
 * archive at its offset. The state dict is flattened as torch does
 * ("model.0.weight", "lst.1"; planner_data keeps the nesting).
 *
 * Every rank calls it with its own tree, the same dir and the same options:
 * a tensor marked in opts->shards is that rank's chunk of a global tensor;
 * every other value (unmarked tensors, ints, hyperparameters) is replicated
 * and written once, from the coordinator's tree. The commit is atomic for
 * the whole directory: the files go to DIR.tmp-ID beside it, each rank
 * fsyncs its file, the coordinator gathers the chunk lists (MPI_Gather and
 * MPI_Gatherv), writes and syncs .metadata, swaps the new directory into
 * place (renameat2 RENAME_EXCHANGE over an old one), fsyncs the parent and
 * removes the old directory. A crash of any rank at any point leaves the
 * previous DIR whole; leftovers (DIR.tmp-*, DIR.old-*) are removed by the
 * next save. All ranks return the same status.
 *
 * MPI is optional at build time (CKPT_MPI, on when mpi.h is found). Without
 * it, or when MPI is not initialized, the same call writes the directory
 * from this process alone (rank 0 of 1).
 * ======================================================================== */

/* A set of tensor chunks: which tensors of a rank's tree are its part of a
 * global tensor, and where they lie in it. */
typedef struct ckpt_dcp_shards ckpt_dcp_shards;

CKPT_API ckpt_dcp_shards *ckpt_dcp_shards_new(void);
CKPT_API void ckpt_dcp_shards_free(ckpt_dcp_shards *shards);
/* Marks tensor (a value of the tree to be saved; its shape is the chunk's
 * sizes) as the chunk of a global tensor of ndim dimensions global_shape
 * starting at offsets. The chunk must lie inside the global tensor. */
CKPT_API ckpt_status ckpt_dcp_shards_add(ckpt_dcp_shards *shards, const ckpt_value *tensor,
                                         uint32_t ndim, const int64_t *global_shape,
                                         const int64_t *offsets, ckpt_error *err);

typedef struct ckpt_dcp_save_options {
    size_t struct_size;              /* sizeof(ckpt_dcp_save_options) */
    unsigned flags;                  /* CKPT_SAVE_NO_FSYNC */
    const ckpt_dcp_shards *shards;   /* NULL: every tensor is whole */
    /* An MPI_Comm * (CKPT_MPI builds only); NULL: MPI_COMM_WORLD when MPI is
     * initialized, else this process alone. */
    const void *comm;
    int coordinator;                 /* the rank writing .metadata (0) */
} ckpt_dcp_save_options;

CKPT_API void ckpt_dcp_save_options_default(ckpt_dcp_save_options *opts);
/* Saves a state dict (root: a DICT or ORDERED_DICT) as the DCP directory
 * dir; collective over the communicator. */
CKPT_API ckpt_status ckpt_dcp_save(const char *dir, const ckpt_value *root,
                                   const ckpt_dcp_save_options *opts, ckpt_error *err);
/* Whether this build of the library has MPI (CKPT_MPI). */
CKPT_API bool ckpt_dcp_has_mpi(void);

/* ========================================================================
 * Checkpoint manager
 *
 * A manager keeps a directory of checkpoints for a training run:
 *   last.pth            the whole checkpoint of the newest save (to resume);
 *   best.pth            the weights (or the whole checkpoint) of the save
 *                       with the best monitored metric (to deploy);
 *   step-NNNNNNNN.pth   numbered checkpoints, when retention keeps any
 *                       (hard links to the last.pth of their save: the
 *                       manager never writes a file in place, and neither
 *                       should anyone else in a managed directory);
 *   manifest.json       what each file holds: step, metrics, size, CRC32,
 *                       time, versions, user metadata.
 *
 * Commits are crash-safe: every file is written to a temporary beside it
 * and fsync'ed; the manifest then records the new files as pending; they
 * are renamed into place, the directory is fsync'ed, and the manifest is
 * written again. A crash at any moment leaves each name holding either its
 * old or its new content, whole, and the next open settles which from the
 * files' CRCs. Old numbered files are removed only after the new manifest
 * is committed. An error while writing (full disk, file size limit, I/O
 * error, read-only directory) leaves every previous file byte for byte as
 * it was and no temporary behind. One process at a time may manage a
 * directory: others get CKPT_ERR_BUSY (an flock on DIR/.ckpt.lock,
 * released when the manager is closed or its process dies; a child forked
 * while it is held holds it too until it exits or execs).
 * ======================================================================== */

typedef struct ckpt_manager ckpt_manager;

typedef enum ckpt_metric_mode {
    CKPT_MODE_MIN = 0, /* lower is better (a loss) */
    CKPT_MODE_MAX = 1  /* higher is better (an accuracy) */
} ckpt_metric_mode;

typedef struct ckpt_metric {
    const char *name;
    double value;
} ckpt_metric;

/* Flags for ckpt_manager_options.flags. */
#define CKPT_MANAGER_READ_ONLY 0x1u /* list only: no lock, no clean-up, no saves */
#define CKPT_MANAGER_BEST_FULL 0x2u /* best.pth holds the whole checkpoint */
/* Open only a directory the manager keeps, as it is: no manifest.json
 * fails with CKPT_ERR_NOT_FOUND and a malformed one with CKPT_ERR_FORMAT
 * (instead of a rebuild), before anything is created, locked or changed. */
#define CKPT_MANAGER_EXISTING 0x4u

typedef struct ckpt_manager_options {
    size_t struct_size;         /* sizeof(ckpt_manager_options) */
    unsigned flags;             /* CKPT_MANAGER_* */
    unsigned save_flags;        /* CKPT_SAVE_* for every file written */
    /* The metric deciding best.pth ("val_loss"); NULL: the one recorded in
     * the manifest, or no best.pth when there is none. */
    const char *monitor;
    ckpt_metric_mode mode;      /* used with monitor */
    /* best.pth's weights: this entry of the checkpoint dict (default
     * "model"); a checkpoint whose entries are all tensors is itself the
     * weights. */
    const char *weights_key;
    /* Numbered checkpoints: the newest keep_last and the keep_best best by
     * the monitored metric are kept (a file in either set stays). Both 0:
     * no numbered checkpoints. */
    unsigned keep_last;
    unsigned keep_best;
    /* Recorded in the manifest for every save: the PyTorch version of the
     * run (may be NULL), and a JSON object of the caller's (may be NULL). */
    const char *torch_version;
    const char *user_metadata;
    /* Warnings (a skipped corrupt checkpoint, a rebuilt manifest), one line
     * each without newline; NULL ignores them. */
    void (*warn)(void *user, const char *message);
    void *warn_user;
    /* manifest.json is read only up to this size (default 16 MiB, some
     * 40,000 entries): a bigger one fails the open with CKPT_ERR_LIMIT
     * (so does a newer manifest version, CKPT_ERR_UNSUPPORTED); a
     * malformed one is set aside as manifest.json.bad-TIME and rebuilt from
     * the files. */
    uint64_t max_manifest_bytes;
} ckpt_manager_options;

CKPT_API void ckpt_manager_options_default(ckpt_manager_options *opts);

/* What the manifest says of one kept file. Pointers stay valid until the
 * next call that changes the manager. */
typedef struct ckpt_checkpoint_info {
    size_t struct_size;        /* caller: sizeof(ckpt_checkpoint_info) (see the top) */
    const char *file;           /* name in the directory: "last.pth", ... */
    int64_t step;               /* -1: unknown (a file the manager did not write) */
    const ckpt_metric *metrics;
    size_t metric_count;
    uint64_t size;              /* bytes */
    uint32_t crc32;             /* of the whole file */
    int64_t time;               /* saved at, seconds since 1970 UTC; -1 unknown */
    const char *ckpt_version;   /* the writer's version; NULL unknown */
    int format_version;         /* torch zip "version" record; 0 unknown */
    const char *torch_version;  /* NULL when not given */
    const char *user_metadata;  /* JSON object text, NULL when none */
    bool last;                  /* holds the newest save */
    bool best;                  /* holds the best save */
    bool weights_only;          /* holds only the weights (best.pth) */
} ckpt_checkpoint_info;

/*
 * Opens (creating it when missing) a checkpoint directory: takes its lock,
 * settles a crashed save (pending manifest entries, unfinished removals)
 * and removes its temporaries, and reads the manifest. Files the manifest
 * does not know (a last.pth written by PyTorch) are recorded with unknown
 * step; a missing or malformed manifest is rebuilt from the files (unless
 * CKPT_MANAGER_EXISTING asks to fail instead). Saves
 * never remove a numbered file whose metric is unknown; only a prune does.
 */
CKPT_API ckpt_status ckpt_manager_open(const char *dir, const ckpt_manager_options *opts,
                                       ckpt_manager **out, ckpt_error *err);
/* Releases the lock. NULL is a no-op. */
CKPT_API void ckpt_manager_close(ckpt_manager *m);

/* Bits of ckpt_manager_save's *saved. */
#define CKPT_SAVED_LAST 0x1u
#define CKPT_SAVED_BEST 0x2u
#define CKPT_SAVED_NUMBERED 0x4u

/*
 * Saves a checkpoint (a value tree, usually a dict with "model",
 * "optimizer", "epoch", ...) taken at step: last.pth always; best.pth when
 * the monitored metric (which must be among metrics) strictly improves on
 * best.pth's (NaN never does; a best.pth without a recorded metric, one
 * the manager did not write, is replaced); step-NNNNNNNN.pth when
 * retention keeps it; then removes the numbered files retention drops.
 * saved (may be NULL) gets CKPT_SAVED_* bits on success.
 *
 * An error before the renames (writing, a full disk, the pending manifest)
 * leaves every file as it was. An error after them (a failed rename or
 * directory sync, the final manifest) leaves each name old or new, whole,
 * and the manager records what is in place as the next open would.
 */
CKPT_API ckpt_status ckpt_manager_save(ckpt_manager *m, int64_t step, const ckpt_value *checkpoint,
                                       const ckpt_metric *metrics, size_t metric_count,
                                       unsigned *saved, ckpt_error *err);

/* Flags for ckpt_manager_save_async. */
#define CKPT_ASYNC_NO_WAIT 0x1u   /* a save still in flight: CKPT_ERR_BUSY, not a wait */

/*
 * ckpt_manager_save, returning as soon as the checkpoint is captured: the
 * bytes of its tensors in caller memory are copied into staging memory the
 * manager owns (and reuses from save to save: one copy of the tensors is
 * the memory a save in flight adds) and the tree around them rebuilt; a
 * background thread then writes, fsyncs and commits exactly as
 * ckpt_manager_save does (same files, crash safety, retention, manifest).
 * The caller may change its tensors and free its tree when this returns;
 * tensors of open files are read from them while the save runs, so those
 * files must stay open until it is done.
 *
 * One save at a time: a save still in flight is waited for first (with
 * CKPT_ASYNC_NO_WAIT: CKPT_ERR_BUSY, nothing started), and so is every
 * other call on the manager (ckpt_manager_close too). A failure of the
 * background save is returned, once, by the next ckpt_manager_save,
 * ckpt_manager_save_async (which then starts nothing) or ckpt_manager_wait.
 * Errors of the call itself (arguments, memory for the snapshot, the
 * monitored metric missing) are returned at once.
 */
CKPT_API ckpt_status ckpt_manager_save_async(ckpt_manager *m, int64_t step,
                                             const ckpt_value *checkpoint,
                                             const ckpt_metric *metrics, size_t metric_count,
                                             unsigned flags, ckpt_error *err);
/* Waits for the save in flight (if any) and returns its status: a failure
 * not reported yet, else CKPT_OK. saved (may be NULL) gets the CKPT_SAVED_*
 * bits of the last save that finished (0 after a failure). */
CKPT_API ckpt_status ckpt_manager_wait(ckpt_manager *m, unsigned *saved, ckpt_error *err);

/*
 * Opens the newest checkpoint that verifies (every CRC): last.pth, then the
 * numbered files from the newest, then best.pth when it holds the whole
 * checkpoint. Torn or corrupt ones are skipped with a warning. opts may be
 * NULL (CKPT_OPEN_VERIFY_CRC is always added). info (may be NULL) gets the
 * file's entry. CKPT_ERR_NOT_FOUND when there is nothing to resume.
 */
CKPT_API ckpt_status ckpt_manager_resume(ckpt_manager *m, const ckpt_open_options *opts,
                                         ckpt_file **out, ckpt_checkpoint_info *info,
                                         ckpt_error *err);

/*
 * Saves a distributed checkpoint (a state dict sharded over MPI ranks, see
 * ckpt_dcp_save) taken at step as the directory last.dcp of the managed
 * directory, with best.dcp when the monitored metric improves and
 * step-NNNNNNNN.dcp when retention keeps it: each a whole DCP directory
 * that torch.distributed.checkpoint loads (best.dcp always holds the whole
 * checkpoint; the numbered and best directories are hard links to last's
 * files). Collective: every rank calls it with dir (the managed directory,
 * on a filesystem all ranks share) and the same opts; the coordinator
 * passes the manager it opened on dir, every other rank NULL (dir NULL on
 * the coordinator: the manager's). Each directory goes into place whole
 * (ckpt_dcp_save's commit), the manifest records it pending first, as
 * ckpt_manager_save does for files: retention, best/last, listing, pruning
 * and resume treat a .dcp directory as one checkpoint (its size and CRC32
 * are of its files in name order). Do not mix .pth and .dcp checkpoints in
 * one directory. saved (may be NULL) gets CKPT_SAVED_* bits on the
 * coordinator. An error on any rank fails the save on every rank and
 * leaves every checkpoint as it was.
 */
CKPT_API ckpt_status ckpt_manager_save_dcp(ckpt_manager *m, const char *dir, int64_t step,
                                           const ckpt_value *state_dict,
                                           const ckpt_dcp_save_options *opts,
                                           const ckpt_metric *metrics, size_t metric_count,
                                           unsigned *saved, ckpt_error *err);

/* The kept files: last.pth, best.pth, then numbered ones by step. */
CKPT_API size_t ckpt_manager_count(const ckpt_manager *m);
CKPT_API bool ckpt_manager_get(const ckpt_manager *m, size_t i, ckpt_checkpoint_info *info);
/* The monitored metric and its mode; NULL when there is none. */
CKPT_API const char *ckpt_manager_monitor(const ckpt_manager *m, ckpt_metric_mode *mode);

/*
 * Removes numbered checkpoints beyond the newest keep_last and the
 * keep_best best (last.pth and best.pth always stay), committing the
 * manifest first. removed (may be NULL) gets how many files went.
 *
 * Ranking as Lightning's save_top_k: a NaN or missing metric ranks last
 * but still fills a free place, and of equal metrics the older file stays.
 */
CKPT_API ckpt_status ckpt_manager_prune(ckpt_manager *m, unsigned keep_last, unsigned keep_best,
                                        size_t *removed, ckpt_error *err);
/* What ckpt_manager_prune would do, changing nothing (a read-only manager
 * too): keep[i] for each of the ckpt_manager_count entries. */
CKPT_API ckpt_status ckpt_manager_plan_prune(const ckpt_manager *m, unsigned keep_last,
                                             unsigned keep_best, bool *keep, ckpt_error *err);

/* ========================================================================
 * C models: loading state dicts, saving them, optimizer state
 *
 * A ckpt_model describes a model's parameters and buffers, by the names
 * PyTorch's state_dict() gives them ("net.0.weight"), each with a dtype, a
 * shape and contiguous row-major memory: the caller's, or memory the model
 * allocates. ckpt_model_load() fills them from a checkpoint as
 * load_state_dict() does (strict or not, with PyTorch's report), remapping
 * keys, converting dtypes and placing bytes where the caller wants them;
 * ckpt_model_state_dict() gives the model's tensors back as a value to save.
 * ======================================================================== */

typedef struct ckpt_model ckpt_model;

/* Most dimensions a model parameter may have. */
#define CKPT_MODEL_MAX_NDIM 16

/* Flags for ckpt_model_add. */
#define CKPT_PARAM_BUFFER 0x1u  /* a buffer (running_mean), not a Parameter:
                                   saved as a plain tensor, no optimizer state */
#define CKPT_PARAM_NO_DATA 0x2u /* a description only (name, dtype, shape), no
                                   memory: the model can only be checked
                                   (CKPT_LOAD_CHECK_ONLY), never loaded or saved */
/* A module's extra state (a name ending in "_extra_state", for a module
 * with set_extra_state): any value is accepted under the name, absent it is
 * missing, it is never unexpected; ckpt does not load it (read it from the
 * file) and dtype and shape are ignored. */
#define CKPT_PARAM_EXTRA_STATE 0x4u

/* A model named class_name (used in reports: "Error(s) in loading
 * state_dict for Net"; NULL: "Model"). NULL when out of memory. */
CKPT_API ckpt_model *ckpt_model_new(const char *class_name);
/* Frees the model and the memory it allocated (never the caller's); NULL is
 * a no-op. */
CKPT_API void ckpt_model_free(ckpt_model *m);

/*
 * Adds a parameter or buffer. data: the caller's memory, contiguous
 * row-major in native byte order, numel x element size bytes, valid for the
 * model's life; NULL: the model allocates it, zeroed (64-byte aligned).
 * Names must be unique and not empty. index (may be NULL) gets its index;
 * parameters and buffers are kept in the order added, as state_dict()
 * orders them.
 */
CKPT_API ckpt_status ckpt_model_add(ckpt_model *m, const char *name, ckpt_dtype dtype,
                                    uint32_t ndim, const int64_t *shape, void *data,
                                    unsigned flags, size_t *index, ckpt_error *err);

/* Declares a module ("net.1", "" the root) with no parameters of its own,
 * such as a ReLU: PyTorch's report walks modules in the order they were
 * registered, and a key naming such a module is not unexpected. Modules
 * that hold parameters need no declaration; declared ones take their place
 * in that order from the declaration. */
CKPT_API ckpt_status ckpt_model_add_module(ckpt_model *m, const char *name, ckpt_error *err);

typedef struct ckpt_param_info {
    size_t struct_size;        /* caller: sizeof(ckpt_param_info) (see the top) */
    const char *name;
    ckpt_dtype dtype;
    uint32_t ndim;
    const int64_t *shape;
    uint64_t numel;
    uint64_t nbytes;
    void *data;             /* where the values are now (see borrowed, placed) */
    void *host;             /* the parameter's own host memory (the caller's or
                               the model's): what ckpt_model_state_dict saves */
    const char *location;   /* the loaded tensor's tag after remapping ("cpu",
                               "cuda:0"); "cpu" before any load */
    bool is_buffer;
    bool is_extra_state;    /* CKPT_PARAM_EXTRA_STATE */
    bool loaded;            /* filled by the last load (a parameter it did not
                               fill keeps its values, and stays borrowed from
                               an earlier file if it was) */
    bool borrowed;          /* data points into an open file (read-only,
                               valid until that file is closed) */
    bool placed;            /* the placement callback took the bytes: data is
                               what it returned (e.g. device memory) */
} ckpt_param_info;

CKPT_API size_t ckpt_model_count(const ckpt_model *m);
/* false past the end. Pointers stay valid until the model changes. */
CKPT_API bool ckpt_model_param(const ckpt_model *m, size_t i, ckpt_param_info *info);
/* The index of a name, or false. */
CKPT_API bool ckpt_model_find(const ckpt_model *m, const char *name, size_t *index);
/* Shortcut for ckpt_model_param(m, i, ...).data; NULL past the end. After a
 * CKPT_LOAD_ZERO_COPY load it may point into the file's read-only map
 * (info.borrowed): read it, never write it. */
CKPT_API void *ckpt_model_data(const ckpt_model *m, size_t i);

/* Flags for ckpt_load_options.flags. */
#define CKPT_LOAD_NON_STRICT 0x1u /* strict=False: load what matches, report the rest */
/* Parameters whose memory the model allocated point into the file instead
 * of being copied, when the tensor is contiguous, of the model's dtype and
 * read zero-copy (see ckpt_tensor_data): read-only, valid until the file
 * is closed, and aligned to the element size (not to 64 bytes). For inference; a later load without the flag copies the
 * parameters it fills into their own memory again. */
#define CKPT_LOAD_ZERO_COPY 0x2u
/* Decide and report only: keys, kinds, shapes and dtypes are checked as a
 * load would, no tensor byte is read and nothing is written; report.loaded
 * and report.converted count what a load would do. */
#define CKPT_LOAD_CHECK_ONLY 0x4u

typedef struct ckpt_key_map {
    const char *from;
    const char *to;
} ckpt_key_map;

/* What a placement callback receives for each tensor it may place. */
typedef struct ckpt_placement {
    size_t struct_size;       /* set by the library: sizeof(ckpt_placement) in its build */
    const char *name;         /* the model's name for it */
    size_t index;             /* its index in the model */
    const char *location;     /* the file's tag after map_location/location_map */
    ckpt_dtype dtype;         /* the model's dtype (bytes already converted) */
    uint32_t ndim;
    const int64_t *shape;
    const void *data;         /* the values: contiguous, native order, nbytes;
                                 valid during the call only */
    uint64_t nbytes;
    /* Out: set placed = true when the callback took the bytes itself (copied
     * them to a device); dest then becomes the parameter's data. Left false,
     * ckpt copies them into the parameter's host memory as usual. */
    bool placed;
    void *dest;
} ckpt_placement;

typedef struct ckpt_load_options {
    size_t struct_size;       /* sizeof(ckpt_load_options) */
    unsigned flags;           /* CKPT_LOAD_* */
    /* The state dict inside the checkpoint: a dotted path of dict keys
     * ("model", "state_dict", "model.encoder"; at each level the longest
     * key the path starts with, so keys may hold dots); "" the root. NULL: the
     * first of the root's "state_dict" and "model" entries that is a dict
     * (Lightning's and the seed's layouts) and, when the root itself holds
     * tensors (an RNG state beside the model), holds tensors too; else the
     * root (a plain state dict). Keys that are not text (3, (1, 'a')) never
     * name a parameter: they are unexpected. */
    const char *key;
    /* The state dict as a value of the file (a dict), found by the caller;
     * when set, key is not used. */
    const ckpt_value *state_dict;
    /* Key remapping, applied in this order to every key of the state dict:
     * the first of strip_prefixes that a key starts with is removed once
     * ("module." of DataParallel/DDP); then the first prefix_map entry whose
     * from a key starts with is replaced by its to. */
    const char *const *strip_prefixes;
    size_t strip_prefix_count;
    const ckpt_key_map *prefix_map;
    size_t prefix_map_count;
    /* Location tags never fail a load (a "cuda:0" tensor loads on a host
     * without CUDA). map_location, when set, replaces every tag ("cpu");
     * otherwise location_map renames exact tags ({"cuda:1", "cuda:0"}). The
     * result is what the placement callback sees and info.location says. */
    const char *map_location;
    const ckpt_key_map *location_map;
    size_t location_map_count;
    /* Called for each tensor as it is loaded (may be NULL); see
     * ckpt_placement. An error it returns stops the load. */
    ckpt_status (*place)(void *user, ckpt_placement *p, ckpt_error *err);
    void *place_user;
} ckpt_load_options;

CKPT_API void ckpt_load_options_default(ckpt_load_options *opts);

/* What a load found, in PyTorch's terms. Owned by the model: valid until its
 * next load or ckpt_model_free. */
typedef struct ckpt_load_report {
    size_t struct_size;        /* caller: sizeof(ckpt_load_report) (see the top) */
    const char *const *missing;     /* model keys the state dict lacks */
    size_t missing_count;
    const char *const *unexpected;  /* state dict keys the model lacks */
    size_t unexpected_count;
    /* The other problems, one line each in PyTorch's words ("size mismatch
     * for net.2.weight: copying a param with shape torch.Size([5, 64]) from
     * checkpoint, the shape in current model is torch.Size([10, 64]).") */
    const char *const *errors;
    size_t error_count;
    /* load_state_dict's whole message when the load failed ("Error(s) in
     * loading state_dict for Net:\n\tMissing key(s) in state_dict: ...");
     * NULL when it succeeded. */
    const char *message;
    size_t loaded;                  /* tensors loaded */
    size_t converted;               /* of which converted to the model's dtype */
    size_t zero_copy;               /* of which borrowed from the file */
    size_t placed;                  /* of which placed by the callback */
} ckpt_load_report;

/*
 * Loads a state dict from an open checkpoint into the model, as PyTorch's
 * load_state_dict(strict=...) decides. Every problem is found before any
 * byte is written: on CKPT_ERR_MISMATCH (missing or unexpected keys when
 * strict, a shape mismatch, a value that is not a tensor, a dtype that
 * cannot be converted) the model is unchanged and report (may be NULL)
 * lists everything, and err names the model and the first problem.
 * Floating dtypes convert into the model's (bfloat16/float16 <-> float32 as
 * torch's .to() does); integer and bool tensors convert into any integer,
 * bool or floating dtype as torch's copy_ casts them; a floating tensor into
 * an integer parameter is refused. A 0-d model parameter
 * takes the first element of a 1-d tensor, as PyTorch does. Non-strict
 * loads that miss keys succeed, with the lists in report. On another error
 * (an unreadable record, a placement callback's error) report holds what
 * was found until then, and tensors already copied or placed stay loaded.
 */
CKPT_API ckpt_status ckpt_model_load(ckpt_model *m, ckpt_file *f, const ckpt_load_options *opts,
                                     ckpt_load_report *report, ckpt_error *err);

/* The model's state dict, as state_dict() gives it: an ORDERED_DICT of name
 * -> tensor (plain tensors, not Parameters, tagged "cpu"), borrowing the
 * model's memory until the tree is saved. NULL on error (see
 * ckpt_tree_status). A borrowed parameter saves the file's bytes it points
 * to; a placed one saves its host memory, so copy device values back there
 * first. */
CKPT_API ckpt_value *ckpt_model_state_dict(const ckpt_model *m, ckpt_tree *tree);

/*
 * AdamW (torch.optim.AdamW) over a model's float32 parameters, with its
 * state in PyTorch's layout, so that optimizer.state_dict() and
 * load_state_dict() move between C and PyTorch:
 *   {"state": {0: {"step": tensor(3.), "exp_avg": T, "exp_avg_sq": T}, ...},
 *    "param_groups": [{"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-08,
 *                      "weight_decay": 0.01, "amsgrad": False, ...,
 *                      "params": [0, 1, ...]}]}
 * Parameters are numbered in model order, buffers skipped; a parameter's
 * state appears after its first step, as in PyTorch.
 * ======================================================================== */

typedef struct ckpt_adamw ckpt_adamw;

typedef struct ckpt_adamw_options {
    size_t struct_size;       /* sizeof(ckpt_adamw_options) */
    double lr;                /* 1e-3 */
    double beta1, beta2;      /* 0.9, 0.999 */
    double eps;               /* 1e-8 */
    double weight_decay;      /* 1e-2 */
    bool amsgrad;             /* false */
    bool maximize;            /* false */
} ckpt_adamw_options;

CKPT_API void ckpt_adamw_options_default(ckpt_adamw_options *opts);
/* Every parameter of m must be float32 and in host memory; m must outlive
 * the optimizer. */
CKPT_API ckpt_status ckpt_adamw_new(ckpt_model *m, const ckpt_adamw_options *opts,
                                    ckpt_adamw **out, ckpt_error *err);
CKPT_API void ckpt_adamw_free(ckpt_adamw *o);
/* The hyperparameters now in use (a load replaces them with the file's);
 * opts->struct_size set by the caller (see the ABI note at the top). */
CKPT_API void ckpt_adamw_get_options(const ckpt_adamw *o, ckpt_adamw_options *opts);
/* Sets the learning rate (a scheduler's job); CKPT_ERR_INVALID_ARG for a
 * negative or non-finite one. */
CKPT_API ckpt_status ckpt_adamw_set_lr(ckpt_adamw *o, double lr);
/*
 * One step, as torch.optim.AdamW.step() computes it (the single-tensor
 * path): grads[i] is the gradient of optimizer parameter i (model order,
 * buffers skipped), NULL for a parameter without one (it is skipped, as a
 * parameter whose .grad is None).
 */
CKPT_API ckpt_status ckpt_adamw_step(ckpt_adamw *o, const float *const *grads, ckpt_error *err);
/* The state dict, borrowing the optimizer's memory until the tree is saved. */
CKPT_API ckpt_value *ckpt_adamw_state_dict(const ckpt_adamw *o, ckpt_tree *tree);
/*
 * Loads an optimizer state dict (as torch.optim.AdamW.state_dict() saves it,
 * or ckpt's) from an open file: state_dict is a value of f (e.g.
 * ckpt_value_get(root, "optimizer")). The groups' parameter counts must
 * match, every state tensor must have its parameter's shape; steps may be
 * tensors or numbers; hyperparameters come from the file; state under an
 * id the group does not list is dropped (PyTorch keeps it, unused). Nothing
 * changes on error.
 */
CKPT_API ckpt_status ckpt_adamw_load(ckpt_adamw *o, ckpt_file *f, const ckpt_value *state_dict,
                                     ckpt_error *err);
/* Parameter i's step count (0 before its first step). */
CKPT_API int64_t ckpt_adamw_param_step(const ckpt_adamw *o, size_t i);

/* ========================================================================
 * Scanning
 *
 * A scan says whether a file is safe to load: "safe" means that PyTorch's
 * torch.load(weights_only=True) (2.6 and later) would load it without
 * running any code, and that the file is unambiguous (every reader sees the
 * same records). "warning" means that nothing in it runs code and it is
 * unambiguous, but torch's default weights-only reader refuses it (a
 * torch.torch_version.TorchVersion, numpy arrays, a .npy file, a pre-0.4
 * tar archive, ...): each such finding says how to load it. Everything
 * else is "unsafe", with findings that say why.
 * A scan never calls anything and reads only pickles, headers and small
 * records: tensor bytes are never touched. It does not depend on the
 * reader accepting the file: a lenient walk of the archive finds and
 * explains what the reader refuses.
 * ======================================================================== */

typedef enum ckpt_scan_verdict {
    CKPT_SCAN_VERDICT_SAFE = 0,
    CKPT_SCAN_VERDICT_UNSAFE = 1,
    CKPT_SCAN_VERDICT_WARNING = 2   /* runs nothing, but torch's default reader refuses it */
} ckpt_scan_verdict;

/* What a finding is about. Values are stable; names (ckpt_scan_kind_name)
 * are the snake_case of the constant without the prefix. */
typedef enum ckpt_scan_kind {
    CKPT_SCAN_KIND_GLOBAL = 1,          /* a pickle names a global outside the allow-list */
    CKPT_SCAN_KIND_BROKEN_PICKLE = 2,   /* a pickle breaks: the opcode's offset and why */
    CKPT_SCAN_KIND_EXTRA_PICKLE = 3,    /* a pickle the format does not read: back to back,
                                      in another record, hidden in the archive */
    CKPT_SCAN_KIND_TRAILING_DATA = 4,   /* bytes after what the format reads */
    CKPT_SCAN_KIND_TORCHSCRIPT = 5,     /* a TorchScript archive (code/, constants.pkl) */
    CKPT_SCAN_KIND_DUPLICATE_NAME = 6,  /* two zip entries with one name */
    CKPT_SCAN_KIND_NAME_MISMATCH = 7,   /* local header and central directory disagree */
    CKPT_SCAN_KIND_ZIP_FLAGS = 8,       /* encryption or patch flag bits (0x1, 0x20, 0x40) */
    CKPT_SCAN_KIND_CRC_MISMATCH = 9,    /* a record read by the scan has a wrong CRC32 */
    CKPT_SCAN_KIND_EXTRA_BYTES = 10,    /* bytes before, between or after the zip entries */
    CKPT_SCAN_KIND_ZIP_STRUCTURE = 11,  /* other zip inconsistencies (overlaps, sizes, ...) */
    CKPT_SCAN_KIND_UNSAFE_NAME = 12,    /* an entry name with "..", an absolute path, "\\" */
    CKPT_SCAN_KIND_NESTED_ARCHIVE = 13, /* an archive inside the file (zip, 7z) */
    CKPT_SCAN_KIND_STORAGE = 14,        /* a storage record missing or of the wrong size */
    CKPT_SCAN_KIND_FORMAT = 15,         /* not a checkpoint torch.load reads, or one it refuses */
    CKPT_SCAN_KIND_LIMIT = 16,          /* a limit stopped the scan: the rest is unchecked */
    CKPT_SCAN_KIND_OPCODE = 17          /* an opcode torch's weights-only reader lacks (a warning) */
} ckpt_scan_kind;

/* How a pickle uses a global (ckpt_scan_finding.use); 0 means it is only
 * referenced (named, passed around, returned). */
#define CKPT_SCAN_USE_REDUCE 0x1u        /* called by REDUCE */
#define CKPT_SCAN_USE_NEWOBJ 0x2u        /* called by NEWOBJ (cls.__new__) */
#define CKPT_SCAN_USE_NEWOBJ_EX 0x4u     /* called by NEWOBJ_EX */
#define CKPT_SCAN_USE_INST 0x8u          /* called by INST */
#define CKPT_SCAN_USE_OBJ 0x10u          /* called by OBJ */
#define CKPT_SCAN_USE_BUILD 0x20u        /* BUILD target: it, or an object made by calling
                                            it, gets a state (__setstate__) */
#define CKPT_SCAN_USE_ITEMS 0x40u        /* an object made by calling it gets items
                                            (SETITEM(S), APPEND(S), ADDITEMS) */
#define CKPT_SCAN_USE_RESULT_CALLED 0x80u /* what calling it returned is called in turn */

typedef struct ckpt_scan_finding {
    size_t struct_size;       /* set by the library: sizeof(ckpt_scan_finding) in its build */
    ckpt_scan_kind kind;
    const char *global;       /* GLOBAL: "module.name" as the pickle writes it; else NULL */
    const char *record;       /* where: a zip record, "pickle", "legacy object pickle",
                                 "zip", ...; "" for the whole file */
    uint64_t offset;          /* byte offset inside the record (of the opcode for
                                 pickles); for findings about an archive's structure,
                                 inside the archive, as the reader's zip errors give
                                 it; CKPT_NO_OFFSET when none */
    uint64_t file_offset;     /* the same position in the file, or CKPT_NO_OFFSET
                                 (inside an inflated record) */
    unsigned use;             /* GLOBAL: CKPT_SCAN_USE_* */
    bool runs_code;           /* GLOBAL: a well-known way to run code or commands
                                 (os.system, builtins.eval, subprocess, ...). Only
                                 for the message: any global outside the allow-list
                                 makes the file unsafe */
    const char *message;      /* one line */
    ckpt_scan_verdict severity; /* CKPT_SCAN_VERDICT_WARNING or _UNSAFE: the file's verdict
                                 is the worst of its findings' */
    const char *call;         /* GLOBAL: the first call of it as Python reads it, with its
                                 arguments ("posix.system('id')", long ones cut with
                                 "..."), or NULL when it is not called directly */
} ckpt_scan_finding;

typedef struct ckpt_scan ckpt_scan;

typedef struct ckpt_scan_options {
    size_t struct_size;          /* sizeof(ckpt_scan_options) */
    unsigned flags;              /* none defined yet: 0 */
    /* Extra allowed globals, "module.name", as torch.serialization.
     * add_safe_globals adds them. Names in the modules sys, os, posix and nt
     * stay refused, as in torch. */
    const char *const *allow;
    size_t allow_count;
    ckpt_limits limits;          /* limits.struct_size == 0 means defaults */
} ckpt_scan_options;

/* Fills *opts with defaults (no extra names, default limits). */
CKPT_API void ckpt_scan_options_default(ckpt_scan_options *opts);

/*
 * Scans a file (or caller memory). opts may be NULL. On success *out owns
 * the report (free it with ckpt_scan_free), whatever the verdict: a file
 * that is not a checkpoint, or is malformed, is an unsafe verdict with
 * findings, not an error. Errors are for files that cannot be read at all
 * (CKPT_ERR_IO: missing, a directory, unreadable) and out of memory; *out
 * is then NULL. A sharded index scanned from a path has its shard files
 * scanned too; from memory it cannot be checked (unsafe).
 */
CKPT_API ckpt_status ckpt_scan_file(const char *path, const ckpt_scan_options *opts,
                                    ckpt_scan **out, ckpt_error *err);
CKPT_API ckpt_status ckpt_scan_memory(const void *data, size_t size,
                                      const ckpt_scan_options *opts, ckpt_scan **out,
                                      ckpt_error *err);
/* NULL is a no-op. */
CKPT_API void ckpt_scan_free(ckpt_scan *scan);

CKPT_API ckpt_scan_verdict ckpt_scan_get_verdict(const ckpt_scan *scan);
/* What the file is: "torch-zip", "torch-legacy", "pickle", "safetensors",
 * "sharded", "torchscript", "zip", "7z", "numpy", "tar", "empty", "unknown". */
CKPT_API const char *ckpt_scan_format(const ckpt_scan *scan);
/* Findings in the order they were made (file order within each part). The
 * pointers stay valid until ckpt_scan_free. */
CKPT_API size_t ckpt_scan_finding_count(const ckpt_scan *scan);
CKPT_API const ckpt_scan_finding *ckpt_scan_finding_at(const ckpt_scan *scan, size_t i);

/* "safe", "unsafe", "warning". */
CKPT_API const char *ckpt_scan_verdict_name(ckpt_scan_verdict verdict);
/* "global", "broken_pickle", ...; "unknown" for other values. */
CKPT_API const char *ckpt_scan_kind_name(ckpt_scan_kind kind);
/* Writes how a global is used as text ("called by REDUCE, BUILD target",
 * "referenced" when use is 0) into buf; returns buf. */
CKPT_API const char *ckpt_scan_use_text(unsigned use, char *buf, size_t size);

/* ========================================================================
 * Distributed checkpoints (PyTorch DCP) and regions of tensors
 *
 * ckpt_open of a DCP directory (or of the .metadata file in it) gives one
 * logical checkpoint (format CKPT_FORMAT_DCP): every key of the state dict
 * torch saved, nested as dcp_to_torch_save nests it (planner_data; flat
 * names where there is none), each tensor with its global shape and dtype.
 * Non-tensor items (epoch, hyperparameters) are in the tree as values.
 * A global tensor's bytes lie in chunks, each a torch.save zip inside a
 * .distcp file: ckpt_tensor_read_region reads any box of it from the chunks
 * that overlap the box, opening and reading only those; ckpt_tensor_copy
 * and writers (ckpt_save_torch, ckpt_save_safetensors) stream it chunk by
 * chunk; ckpt_tensor_data assembles it once into memory the handle owns.
 * Chunks are opened on first use, which changes the handle: read regions of
 * one handle from one thread at a time (or one handle per thread), as with
 * tensor data before ckpt_file_resolve_all.
 *
 * The .metadata pickle is read as inert data: only DCP's own classes
 * (torch 1.13's torch.distributed._shard.checkpoint and 2.x's
 * torch.distributed.checkpoint, with TensorProperties, its memory-format
 * enum, StorageMeta and pathlib paths), torch.Size, dtypes and layouts may
 * appear; any other global is CKPT_ERR_UNSAFE naming it. Nothing is ever
 * called. Items are read with the normal allow-list. Every file named must
 * be a plain file directly in the directory (no "/", "..", absolute paths
 * or symbolic links); every chunk must lie inside its file and inside its
 * tensor, and the chunks of a tensor must cover it exactly once (a gap or
 * an overlap is CKPT_ERR_FORMAT naming the tensor). Items stored with
 * transforms (transform_descriptors, torch 2.7+ extensions such as zstd)
 * are CKPT_ERR_UNSUPPORTED naming the transform. The files named and the
 * items (chunks and values) each count against limits.max_tensor_paths.
 * ======================================================================== */

/* Where one chunk of a tensor is: its box in the global tensor and its item.
 * Filled by ckpt_tensor_chunk (the library fills it: see the top). */
typedef struct ckpt_chunk_info {
    size_t struct_size;        /* caller: sizeof(ckpt_chunk_info) (see the top) */
    uint32_t ndim;
    const int64_t *offsets;    /* ndim: the chunk's first element in the tensor */
    const int64_t *sizes;      /* ndim: its extent in each dimension */
    const char *file;          /* the file holding it, relative to the directory */
    uint64_t file_offset;      /* where its item (a torch.save zip) starts there */
    uint64_t length;           /* the item's bytes */
} ckpt_chunk_info;

/* Chunks of a tensor of a DCP checkpoint, sorted by their offsets (row-major
 * order of their first elements); 0 for a tensor stored whole. */
CKPT_API size_t ckpt_tensor_chunk_count(const ckpt_tensor *t);
/* Chunk i of t; false past the last (nothing written then). Pointers are
 * borrowed from the handle. */
CKPT_API bool ckpt_tensor_chunk(const ckpt_tensor *t, size_t i, ckpt_chunk_info *info);

/*
 * Copies the box [offsets[d], offsets[d] + sizes[d]) of every dimension d of
 * tensor t (ndim values each; NULL for a 0-d tensor) into dst as a
 * contiguous row-major array in native byte order (dst_size >= the box's
 * elements x element size). Works for every strided tensor of any format;
 * for a DCP tensor only the chunks overlapping the box are opened and read.
 * A box outside the tensor is CKPT_ERR_INVALID_ARG; sub-byte dtypes are
 * CKPT_ERR_UNSUPPORTED. The box is bounded by max_output_ratio as
 * ckpt_tensor_copy is.
 */
CKPT_API ckpt_status ckpt_tensor_read_region(ckpt_file *f, const ckpt_tensor *t,
                                             const int64_t *offsets, const int64_t *sizes,
                                             void *dst, size_t dst_size, ckpt_error *err);

/* One region a rank asks for: tensor `name` (as ckpt_file_tensor names it),
 * box offsets/sizes (its ndim values each), written into dst as
 * ckpt_tensor_read_region writes it. Passed in arrays: never grows. */
typedef struct ckpt_region {
    const char *name;
    const int64_t *offsets;
    const int64_t *sizes;
    void *dst;
    size_t dst_size;
} ckpt_region;

/*
 * Resharding load: fills every region of regions[0..count) from the chunks
 * of f (a DCP checkpoint, or any checkpoint), whatever split and world
 * size wrote it and whatever split asks (rows, columns, uneven pieces).
 * Each process (rank) opens the checkpoint and asks for its own regions;
 * only the chunks that overlap them are opened and read. Finding them is
 * a binary search over each tensor's chunks sorted by their first offset,
 * not a comparison of every chunk with every region. The first failing
 * region stops the load with CKPT_ERR_NOT_FOUND (no such tensor) or the
 * error of ckpt_tensor_read_region, its name in err's record.
 */
CKPT_API ckpt_status ckpt_dcp_load_shard(ckpt_file *f, const ckpt_region *regions,
                                         size_t count, ckpt_error *err);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_H */
