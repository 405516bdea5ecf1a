/*
 * pickle.h - what the pickle interpreter (pickle_read.c, pickle_call.c) and
 * the value tree (value.c) share with the format layers beyond internal.h.
 */
#ifndef CKPT_PICKLE_H
#define CKPT_PICKLE_H

#include "internal.h"

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

    CKPT__G_COUNT_
};

/*
 * The dtype of a storage class value (GLOBAL torch.FloatStorage, ...), or
 * CKPT_DTYPE_INVALID when v is not one. Char is int8, Byte is uint8; an
 * UntypedStorage gives CKPT_DTYPE_UINT8 with *untyped (may be NULL) = true.
 */
ckpt_dtype ckpt__storage_type_dtype(const ckpt_value *global, bool *untyped);

/* The value stored under key in a DICT/ORDERED_DICT (Python equality), or
 * NULL. Uses the hash index when the dict has one. */
ckpt_value *ckpt__dict_lookup(const ckpt_value *dict, const ckpt_value *key);

/* Roughly how many bytes hashing key or comparing it touches (bounded like
 * those walks); the interpreter charges it to its work budget. */
uint64_t ckpt__key_cost(const ckpt_value *key);

#endif /* CKPT_PICKLE_H */
