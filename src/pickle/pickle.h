/*
 * pickle.h - the pickle layer (src/pickle/): the data-only interpreter
 * (pickle_read.c, pickle_call.c), the ids of the globals it knows, and the
 * pickler (pickle_write.c). Above core.
 */
#ifndef CKPT_PICKLE_H
#define CKPT_PICKLE_H

#include "core/core.h"

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
#define CKPT__PICKLE_NUMPY 0x4u    /* numpy arrays, dtypes and scalars (pickle_numpy.c) are
                                      read as tensors and numbers; without it their names
                                      are outside the allow-list like any other */

#define CKPT__PICKLE_TORCHSCRIPT 0x8u /* the pickles of a TorchScript archive read as
                                      data: a class of module __torch__(.*) becomes
                                      an inert GLOBAL that NEWOBJ with no arguments
                                      makes into an OBJECT whose BUILD state must be
                                      a dict of attributes (any other state is a
                                      __setstate__, refused naming the class); the
                                      torch.jit._pickle helpers are their values;
                                      torchbind classes (__torch__.torch.classes.*)
                                      are refused by name */
#define CKPT__PICKLE_PID_DONE 0x10u /* persistent_load keeps no reference to the id it
                                      is given (text it points into may stay): an id
                                      tuple nothing else holds goes back to the arena
                                      once a storage came of it */

/* Scanning: every global the pickle names (GLOBAL, STACK_GLOBAL, INST), with
 * module and name as written and the value it became. */
typedef ckpt_status (*ckpt__global_seen_fn)(void *user, const char *module, size_t mlen,
                                            const char *name, size_t nlen, const ckpt_value *v,
                                            uint64_t offset);
/* Scanning: a use (CKPT_SCAN_USE_*) of a value a global became, at the
 * offset of the opcode. */
typedef ckpt_status (*ckpt__global_use_fn)(void *user, const ckpt_value *global, unsigned use,
                                           uint64_t offset);
/* Scanning: a global (a GLOBAL value) called with these arguments by
 * REDUCE, NEWOBJ(_EX), INST or OBJ; kwargs may be NULL. */
typedef ckpt_status (*ckpt__global_call_fn)(void *user, const ckpt_value *global,
                                            ckpt_value *const *args, size_t nargs,
                                            const ckpt_value *kwargs);

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
    ckpt__global_call_fn on_call;       /* may be NULL */
    uint64_t *ops_seen;                 /* may be NULL: 256 bits, one per opcode run */
    size_t stop_frame_end;              /* out, with CKPT__PICKLE_NO_FAIL: where the frame
                                           that holds STOP ends when it runs on past STOP
                                           (an error otherwise: see FRAME in
                                           pickle_read.c); 0 when it does not */
    ckpt_error *framing;                /* with CKPT__PICKLE_NO_FAIL, may be NULL: gets the
                                           first break of the other framing rules (status
                                           CKPT_OK when none), and the pickle reads on as
                                           contiguous bytes instead of stopping there */
    ckpt_file *file;                    /* with CKPT__PICKLE_NUMPY, may be NULL: gets the
                                           storages of the numpy arrays made */
};

/*
 * Interprets one pickle (up to and including STOP) from data[0..size).
 * *consumed (may be NULL) gets the bytes used. Offsets in errors are relative
 * to data. Nothing is called or imported: allowed globals are evaluated by
 * their data-only meaning; any other global is CKPT_ERR_UNSAFE naming
 * module.name and its offset, or, with CKPT__PICKLE_INERT, an inert value.
 */
/* The opcode's name as pickletools names it ("FRAME"), or "unknown". */
const char *ckpt__pickle_opcode_name(uint8_t op);

ckpt_status ckpt__unpickle(ckpt__pickle_ctx *ctx, const uint8_t *data, size_t size,
                           size_t *consumed, ckpt_value **out, ckpt_error *err);

/* true when data[0] is an opcode CPython's unpickler knows, so that
 * pickle.load reads on from byte 0 (any other first byte fails at once).
 * Format detection's pickle bid (format/open.c and the scanner). */
bool ckpt__pickle_detect(const uint8_t *data, uint64_t size);

/*
 * Ids of the globals the interpreter knows (ckpt_value.global_id of a
 * CKPT_KIND_GLOBAL value). Dtypes never appear here: GLOBAL torch.float32 becomes
 * a CKPT_KIND_DTYPE value. The values are internal and may change.
 */
enum ckpt__global_id {
    CKPT__G_UNKNOWN = 0,

    /* classes and functions with a data-only meaning */
    CKPT__G_ORDERED_DICT,           /* collections.OrderedDict */
    CKPT__G_COUNTER,                /* collections.Counter */
    CKPT__G_PARAMETER,              /* torch.nn.parameter.Parameter */
    CKPT__G_TENSOR,                 /* torch.Tensor */
    CKPT__G_SIZE,                   /* torch.Size */
    CKPT__G_DEVICE,                 /* torch.device */
    CKPT__G_GET_LAYOUT,             /* torch.serialization._get_layout */
    CKPT__G_CODECS_ENCODE,          /* _codecs.encode */
    CKPT__G_BYTEARRAY,              /* builtins.bytearray */
    CKPT__G_BYTES,                  /* builtins.bytes */
    CKPT__G_SET,                    /* builtins.set */
    CKPT__G_FROZENSET,              /* builtins.frozenset */
    CKPT__G_COMPLEX,                /* builtins.complex */
    CKPT__G_TORCH_VERSION,          /* torch.torch_version.TorchVersion: a str */
    CKPT__G_TENSOR_TYPE,            /* torch.FloatTensor, torch.cuda.LongTensor, ...:
                                       allowed names, not callable here */

    /* torch._utils rebuild functions */
    CKPT__G_REBUILD_TENSOR,
    CKPT__G_REBUILD_TENSOR_V2,
    CKPT__G_REBUILD_TENSOR_V3,
    CKPT__G_REBUILD_PARAMETER,
    CKPT__G_REBUILD_PARAMETER_WITH_STATE,
    CKPT__G_REBUILD_META_TENSOR_NO_STORAGE,
    CKPT__G_REBUILD_QTENSOR,
    CKPT__G_REBUILD_SPARSE_TENSOR,
    CKPT__G_REBUILD_SPARSE_CSR_TENSOR, /* torch <= 2.0 wrote compressed layouts with it */
    CKPT__G_REBUILD_WRAPPER_SUBCLASS,
    CKPT__G_REBUILD_DEVICE_TENSOR_FROM_NUMPY,
    CKPT__G_REBUILD_DEVICE_TENSOR_FROM_CPU_TENSOR,
    CKPT__G_REBUILD_NESTED_TENSOR,
    CKPT__G_REBUILD_FROM_TYPE_V2,   /* torch._tensor._rebuild_from_type_v2 */

    /* storage classes: torch.<X>Storage (also torch.cuda.<X>Storage) */
    CKPT__G_STORAGE_FIRST_,
    CKPT__G_DOUBLE_STORAGE = CKPT__G_STORAGE_FIRST_,
    CKPT__G_FLOAT_STORAGE,
    CKPT__G_HALF_STORAGE,
    CKPT__G_BFLOAT16_STORAGE,
    CKPT__G_LONG_STORAGE,
    CKPT__G_INT_STORAGE,
    CKPT__G_SHORT_STORAGE,
    CKPT__G_CHAR_STORAGE,
    CKPT__G_BYTE_STORAGE,
    CKPT__G_BOOL_STORAGE,
    CKPT__G_COMPLEX_DOUBLE_STORAGE,
    CKPT__G_COMPLEX_FLOAT_STORAGE,
    CKPT__G_QINT8_STORAGE,
    CKPT__G_QINT32_STORAGE,
    CKPT__G_QUINT8_STORAGE,
    CKPT__G_QUINT4X2_STORAGE,
    CKPT__G_QUINT2X4_STORAGE,
    CKPT__G_COMPLEX_HALF_STORAGE,   /* TorchScript archives only: torch.save cannot
                                       write complex32 */
    CKPT__G_UNTYPED_STORAGE,        /* torch.UntypedStorage, torch.storage.UntypedStorage */
    CKPT__G_STORAGE_LAST_ = CKPT__G_UNTYPED_STORAGE,

    /* constants */
    CKPT__G_PER_TENSOR_AFFINE,
    CKPT__G_PER_CHANNEL_AFFINE,
    CKPT__G_PER_TENSOR_SYMMETRIC,
    CKPT__G_PER_CHANNEL_SYMMETRIC,
    CKPT__G_PER_CHANNEL_AFFINE_FLOAT_QPARAMS,
    CKPT__G_STRIDED,
    CKPT__G_SPARSE_COO,
    CKPT__G_SPARSE_CSR,
    CKPT__G_SPARSE_CSC,
    CKPT__G_SPARSE_BSR,
    CKPT__G_SPARSE_BSC,
    CKPT__G_MKLDNN,

    /* torch.jit._pickle helpers (CKPT__PICKLE_TORCHSCRIPT only) */
    CKPT__G_JIT_BUILD_INTLIST,
    CKPT__G_JIT_BUILD_DOUBLELIST,
    CKPT__G_JIT_BUILD_BOOLLIST,
    CKPT__G_JIT_BUILD_TENSORLIST,
    CKPT__G_JIT_RESTORE_TYPE_TAG,

    /* numpy (CKPT__PICKLE_NUMPY only) */
    CKPT__G_NUMPY_RECONSTRUCT,      /* numpy(._)core.multiarray._reconstruct */
    CKPT__G_NUMPY_NDARRAY,          /* numpy.ndarray */
    CKPT__G_NUMPY_DTYPE,            /* numpy.dtype */
    CKPT__G_NUMPY_SCALAR,           /* numpy(._)core.multiarray.scalar */
    CKPT__G_NUMPY_FROMBUFFER,       /* numpy(._)core.numeric._frombuffer */

    CKPT__G_COUNT_
};

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

/*
 * The dtype of a storage class value (GLOBAL torch.FloatStorage, ...), or
 * CKPT_DTYPE_INVALID when v is not one. Char is int8, Byte is uint8; an
 * UntypedStorage gives CKPT_DTYPE_UINT8 with *untyped (may be NULL) = true.
 */
ckpt_dtype ckpt__storage_type_dtype(const ckpt_value *global, bool *untyped);

/* ---- numpy type strings (pickle_numpy.c) ---------------------------- */

typedef enum ckpt__numpy_type {
    CKPT__NUMPY_OK,            /* a dtype torch shares */
    CKPT__NUMPY_OBJECT,        /* 'O': items are pickled Python objects */
    CKPT__NUMPY_UNSUPPORTED,   /* a real numpy type torch lacks (strings, dates, ...) */
    CKPT__NUMPY_BAD,           /* not a numpy type string */
} ckpt__numpy_type;

/* A numpy type string ('<f4', 'f8', '|b1', 'c16') as a ckpt dtype; order
 * ('<', '>', '|', '=') applies when s has no byte order of its own. '|'
 * is only valid for one-byte types. */
ckpt__numpy_type ckpt__numpy_descr(const char *s, size_t n, char order, ckpt_dtype *dtype,
                                   bool *big_endian);

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

#endif /* CKPT_PICKLE_H */
