"""ctypes bindings to libckpt's public ABI (include/ckpt.h).

The library is looked up in this order: the file named by the environment
variable CKPT_LIBRARY (for running from a source tree), the copy bundled next
to this package at install time, then the soname libckpt.so.0 through the
dynamic loader. Nothing else of the system is searched.
"""

from __future__ import annotations

import ctypes
import os
from ctypes import (POINTER, Structure, c_bool, c_char, c_char_p, c_double, c_int, c_int64,
                    c_size_t, c_uint, c_uint32, c_uint64, c_void_p)
from typing import Optional

SONAME = "libckpt.so.0"
NO_OFFSET = (1 << 64) - 1

# ckpt_status
OK = 0
ERR_IO = 1
ERR_NOMEM = 2
ERR_FORMAT = 3
ERR_UNSUPPORTED = 4
ERR_UNSAFE = 5
ERR_LIMIT = 6
ERR_CORRUPT = 7
ERR_NOT_FOUND = 8
ERR_INVALID_ARG = 9
ERR_TYPE = 10
ERR_BUSY = 11
ERR_MISMATCH = 12

# ckpt_kind
KIND_NONE, KIND_BOOL, KIND_INT, KIND_BIGINT, KIND_FLOAT, KIND_COMPLEX, KIND_STR, KIND_BYTES, \
    KIND_LIST, KIND_TUPLE, KIND_SET, KIND_DICT, KIND_ORDERED_DICT, KIND_SIZE, KIND_DEVICE, \
    KIND_DTYPE, KIND_TENSOR, KIND_GLOBAL, KIND_OBJECT = range(19)

# ckpt_layout
LAYOUT_STRIDED, LAYOUT_SPARSE_COO, LAYOUT_SPARSE_CSR, LAYOUT_SPARSE_CSC, LAYOUT_SPARSE_BSR, \
    LAYOUT_SPARSE_BSC = range(6)

# ckpt_format
FORMAT_SHARDED = 5

OPEN_VERIFY_CRC = 0x1
OPEN_PERMISSIVE = 0x2
OPEN_TORCHSCRIPT_WEIGHTS = 0x4
ASYNC_NO_WAIT = 0x1
SAVE_NO_FSYNC = 0x1
MANAGER_READ_ONLY = 0x1
MANAGER_BEST_FULL = 0x2
MANAGER_EXISTING = 0x4
SAVED_LAST = 0x1
SAVED_BEST = 0x2
SAVED_NUMBERED = 0x4


class Error_(Structure):
    _fields_ = [("status", c_int), ("offset", c_uint64), ("file_offset", c_uint64),
                ("record", c_char * 160), ("message", c_char * 352)]


class Limits(Structure):
    _fields_ = [("struct_size", c_size_t)] + [(n, c_uint64) for n in (
        "max_pickle_bytes", "max_stack_depth", "max_memo_entries", "max_container_len",
        "max_value_bytes", "max_nesting", "max_ndim", "max_zip_entries", "max_inflated_bytes",
        "max_inflate_ratio", "max_header_bytes", "max_total_inflated_bytes", "max_output_ratio",
        "max_tensor_paths", "max_tensor_name_bytes")]


class TensorInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("dtype", c_int), ("ndim", c_uint32),
                ("shape", POINTER(c_int64)), ("stride", POINTER(c_int64)),
                ("storage_offset", c_int64), ("numel", c_uint64), ("nbytes", c_uint64),
                ("requires_grad", c_bool), ("is_parameter", c_bool), ("is_contiguous", c_bool),
                ("has_storage", c_bool), ("big_endian", c_bool), ("storage_key", c_char_p),
                ("location", c_char_p), ("record", c_char_p), ("storage_nbytes", c_uint64),
                ("storage_file_offset", c_uint64), ("storage_index", c_uint32), ("layout", c_int),
                ("nnz", c_uint64)]


class OpenOptions(Structure):
    _fields_ = [("struct_size", c_size_t), ("flags", c_uint), ("limits", Limits)]


class FileInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("format", c_int), ("file_size", c_uint64),
                ("prefix", c_char_p), ("version", c_char_p), ("byteorder", c_char_p),
                ("serialization_id", c_char_p), ("format_version", c_char_p),
                ("storage_alignment", c_char_p), ("pickle_protocol", c_int),
                ("legacy_protocol_version", c_int64), ("data_alignment", c_uint64),
                ("record_count", c_size_t), ("storage_count", c_size_t),
                ("tensor_count", c_size_t), ("big_endian", c_bool), ("metadata", c_void_p),
                ("shard_count", c_size_t)]


class RecordInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("name", c_char_p), ("header_offset", c_uint64),
                ("data_offset", c_uint64), ("stored_size", c_uint64), ("size", c_uint64),
                ("crc32", c_uint32), ("compressed", c_bool), ("has_crc", c_bool)]


class TensorDesc(Structure):
    _fields_ = [("struct_size", c_size_t), ("dtype", c_int), ("ndim", c_uint32),
                ("shape", POINTER(c_int64)), ("stride", POINTER(c_int64)),
                ("storage_offset", c_int64), ("data", c_void_p), ("storage_nbytes", c_uint64),
                ("location", c_char_p), ("requires_grad", c_bool), ("is_parameter", c_bool)]


class FlatInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("ops", c_void_p), ("op_count", c_size_t),
                ("text", c_void_p), ("text_bytes", c_size_t), ("tensors", c_void_p),
                ("tensor_count", c_size_t), ("tensor_fields", c_size_t), ("dims", c_void_p),
                ("dim_count", c_size_t)]


# ckpt_value_flatten's ops and tensor row fields (include/ckpt.h)
FLAT_NONE, FLAT_BOOL, FLAT_INT, FLAT_FLOAT, FLAT_STR, FLAT_LIST, FLAT_TUPLE, FLAT_DICT, \
    FLAT_ORDERED_DICT, FLAT_TENSOR, FLAT_REF, FLAT_STR_TENSOR_DICT, FLAT_SIZE, FLAT_DEVICE, \
    FLAT_DTYPE = range(15)
FLAT_T_TENSOR, FLAT_T_DATA, FLAT_T_FLAGS, FLAT_T_DTYPE, FLAT_T_NDIM, FLAT_T_DIMS, \
    FLAT_T_STORAGE_OFFSET, FLAT_T_NBYTES, FLAT_T_STORAGE, FLAT_T_STORAGE_NBYTES, \
    FLAT_T_LOCATION, FLAT_T_LOCATION_LEN, FLAT_T_COUNT = range(13)
FLAT_TF_ZERO_COPY = 0x1
FLAT_TF_REQUIRES_GRAD = 0x2
FLAT_TF_PARAMETER = 0x4
FLAT_TF_STORAGE = 0x8
FLAT_TF_CONTIGUOUS = 0x10
FLAT_TF_STORAGE_VIEW = 0x20
FLAT_TF_SHARED = 0x40


PROGRESS_FN = ctypes.CFUNCTYPE(None, c_void_p, c_uint64, c_uint64)
WARN_FN = ctypes.CFUNCTYPE(None, c_void_p, c_char_p)


class SaveOptions(Structure):
    _fields_ = [("struct_size", c_size_t), ("flags", c_uint), ("prefix", c_char_p),
                ("location", c_char_p), ("metadata", c_void_p), ("progress", PROGRESS_FN),
                ("progress_user", c_void_p)]


class ScanFinding(Structure):
    _fields_ = [("struct_size", c_size_t), ("kind", c_int), ("global_", c_char_p),
                ("record", c_char_p), ("offset", c_uint64), ("file_offset", c_uint64),
                ("use", c_uint), ("runs_code", c_bool), ("message", c_char_p),
                ("severity", c_int), ("call", c_char_p)]


class ScanOptions(Structure):
    _fields_ = [("struct_size", c_size_t), ("flags", c_uint), ("allow", POINTER(c_char_p)),
                ("allow_count", c_size_t), ("limits", Limits)]


class Metric(Structure):
    _fields_ = [("name", c_char_p), ("value", c_double)]


class ManagerOptions(Structure):
    _fields_ = [("struct_size", c_size_t), ("flags", c_uint), ("save_flags", c_uint),
                ("monitor", c_char_p), ("mode", c_int), ("weights_key", c_char_p),
                ("keep_last", c_uint), ("keep_best", c_uint), ("torch_version", c_char_p),
                ("user_metadata", c_char_p), ("warn", WARN_FN), ("warn_user", c_void_p),
                ("max_manifest_bytes", c_uint64)]


class CheckpointInfo(Structure):
    _fields_ = [("struct_size", c_size_t), ("file", c_char_p), ("step", c_int64),
                ("metrics", POINTER(Metric)), ("metric_count", c_size_t), ("size", c_uint64),
                ("crc32", c_uint32), ("time", c_int64), ("ckpt_version", c_char_p),
                ("format_version", c_int), ("torch_version", c_char_p),
                ("user_metadata", c_char_p), ("last", c_bool), ("best", c_bool),
                ("weights_only", c_bool)]


V = c_void_p  # every opaque handle
E = POINTER(Error_)

# name: (restype, argtypes)
_PROTOS = {
    "ckpt_version": (c_char_p, []),
    "ckpt_status_name": (c_char_p, [c_int]),
    "ckpt_error_format": (c_char_p, [E, c_char_p, c_size_t]),
    "ckpt_limits_default": (None, [POINTER(Limits)]),
    "ckpt_dtype_name": (c_char_p, [c_int]),
    "ckpt_dtype_from_name": (c_int, [c_char_p]),
    "ckpt_dtype_bits": (c_uint, [c_int]),
    "ckpt_dtype_size": (c_size_t, [c_int]),
    "ckpt_dtype_safetensors_name": (c_char_p, [c_int]),
    "ckpt_kind_name": (c_char_p, [c_int]),
    "ckpt_value_kind": (c_int, [V]),
    "ckpt_value_bool": (c_bool, [V]),
    "ckpt_value_int": (c_int64, [V]),
    "ckpt_value_float": (c_double, [V]),
    "ckpt_value_complex": (None, [V, POINTER(c_double), POINTER(c_double)]),
    "ckpt_value_str": (c_void_p, [V, POINTER(c_size_t)]),
    "ckpt_value_dtype": (c_int, [V]),
    "ckpt_value_len": (c_size_t, [V]),
    "ckpt_value_item": (V, [V, c_size_t]),
    "ckpt_value_key": (V, [V, c_size_t]),
    "ckpt_value_dict_value": (V, [V, c_size_t]),
    "ckpt_value_key_text": (c_size_t, [V, c_char_p, c_size_t]),
    "ckpt_value_repr": (c_size_t, [V, c_char_p, c_size_t]),
    "ckpt_value_state": (V, [V]),
    "ckpt_value_get": (V, [V, c_char_p]),
    "ckpt_value_tensor": (V, [V]),
    "ckpt_value_object_class": (V, [V]),
    "ckpt_value_object_args": (V, [V]),
    "ckpt_value_object_kwargs": (V, [V]),
    "ckpt_value_object_dict": (V, [V]),
    "ckpt_value_object_items": (V, [V]),
    "ckpt_layout_name": (c_char_p, [c_int]),
    "ckpt_tensor_get_info": (None, [V, POINTER(TensorInfo)]),
    "ckpt_tensor_data": (c_int, [V, V, POINTER(c_void_p), POINTER(c_bool), E]),
    "ckpt_tensor_sparse_part": (V, [V, c_uint]),
    "ckpt_tensor_copy": (c_int, [V, V, c_void_p, c_size_t, E]),
    "ckpt_format_name": (c_char_p, [c_int]),
    "ckpt_value_flatten": (c_int, [V, V, POINTER(c_void_p), E]),
    "ckpt_flat_get_info": (None, [V, POINTER(FlatInfo)]),
    "ckpt_flat_free": (None, [V]),
    "ckpt_open_options_default": (None, [POINTER(OpenOptions)]),
    "ckpt_open": (c_int, [c_char_p, POINTER(OpenOptions), POINTER(c_void_p), E]),
    "ckpt_open_memory": (c_int, [c_void_p, c_size_t, POINTER(OpenOptions), POINTER(c_void_p), E]),
    "ckpt_close": (None, [V]),
    "ckpt_file_get_info": (None, [V, POINTER(FileInfo)]),
    "ckpt_file_root": (V, [V]),
    "ckpt_file_tensor_count": (c_size_t, [V]),
    "ckpt_file_tensor": (V, [V, c_size_t, POINTER(c_char_p)]),
    "ckpt_file_find_tensor": (V, [V, c_char_p]),
    "ckpt_file_tensor_value": (V, [V, c_size_t]),
    "ckpt_file_record_count": (c_size_t, [V]),
    "ckpt_file_record": (c_int, [V, c_size_t, POINTER(RecordInfo)]),
    "ckpt_file_verify": (c_int, [V, E]),
    "ckpt_tree_new": (V, []),
    "ckpt_tree_free": (None, [V]),
    "ckpt_tree_status": (c_int, [V, E]),
    "ckpt_new_none": (V, [V]),
    "ckpt_new_bool": (V, [V, c_bool]),
    "ckpt_new_int": (V, [V, c_int64]),
    "ckpt_new_float": (V, [V, c_double]),
    "ckpt_new_complex": (V, [V, c_double, c_double]),
    "ckpt_new_str": (V, [V, c_char_p, c_size_t]),
    "ckpt_new_bytes": (V, [V, c_char_p, c_size_t]),
    "ckpt_new_list": (V, [V]),
    "ckpt_new_tuple": (V, [V]),
    "ckpt_new_set": (V, [V]),
    "ckpt_new_dict": (V, [V]),
    "ckpt_new_ordered_dict": (V, [V]),
    "ckpt_new_dtype": (V, [V, c_int]),
    "ckpt_new_device": (V, [V, c_char_p]),
    "ckpt_new_size": (V, [V, c_uint32, POINTER(c_int64)]),
    "ckpt_append": (c_int, [V, V, V]),
    "ckpt_dict_put": (c_int, [V, V, V, V]),
    "ckpt_dict_put_str": (c_int, [V, V, c_char_p, V]),
    "ckpt_set_state": (c_int, [V, V, V]),
    "ckpt_tensor_desc_init": (None, [POINTER(TensorDesc)]),
    "ckpt_new_tensor": (V, [V, POINTER(TensorDesc)]),
    "ckpt_new_view": (V, [V, V, POINTER(TensorDesc)]),
    "ckpt_save_options_default": (None, [POINTER(SaveOptions)]),
    "ckpt_save_torch": (c_int, [c_char_p, V, POINTER(SaveOptions), E]),
    "ckpt_save_safetensors": (c_int, [c_char_p, V, POINTER(SaveOptions), E]),
    "ckpt_manager_options_default": (None, [POINTER(ManagerOptions)]),
    "ckpt_manager_open": (c_int, [c_char_p, POINTER(ManagerOptions), POINTER(c_void_p), E]),
    "ckpt_manager_close": (None, [V]),
    "ckpt_manager_save": (c_int, [V, c_int64, V, POINTER(Metric), c_size_t, POINTER(c_uint),
                                  E]),
    "ckpt_manager_save_async": (c_int, [V, c_int64, V, POINTER(Metric), c_size_t, c_uint, E]),
    "ckpt_manager_wait": (c_int, [V, POINTER(c_uint), E]),
    "ckpt_manager_resume": (c_int, [V, POINTER(OpenOptions), POINTER(c_void_p),
                                    POINTER(CheckpointInfo), E]),
    "ckpt_manager_count": (c_size_t, [V]),
    "ckpt_manager_get": (c_bool, [V, c_size_t, POINTER(CheckpointInfo)]),
    "ckpt_manager_monitor": (c_char_p, [V, POINTER(c_int)]),
    "ckpt_manager_prune": (c_int, [V, c_uint, c_uint, POINTER(c_size_t), E]),
    "ckpt_scan_options_default": (None, [POINTER(ScanOptions)]),
    "ckpt_scan_file": (c_int, [c_char_p, POINTER(ScanOptions), POINTER(c_void_p), E]),
    "ckpt_scan_memory": (c_int, [c_void_p, c_size_t, POINTER(ScanOptions), POINTER(c_void_p),
                                 E]),
    "ckpt_scan_free": (None, [V]),
    "ckpt_scan_get_verdict": (c_int, [V]),
    "ckpt_scan_format": (c_char_p, [V]),
    "ckpt_scan_finding_count": (c_size_t, [V]),
    "ckpt_scan_finding_at": (POINTER(ScanFinding), [V, c_size_t]),
    "ckpt_scan_verdict_name": (c_char_p, [c_int]),
    "ckpt_scan_kind_name": (c_char_p, [c_int]),
    "ckpt_scan_use_text": (c_char_p, [c_uint, c_char_p, c_size_t]),
}


# newer additions: the package still works over a library without them
_OPTIONAL = {"ckpt_value_flatten", "ckpt_flat_get_info", "ckpt_flat_free"}

library_path: Optional[str] = None


class LibraryNotFound(ImportError):
    """libckpt could be found neither beside the package nor by its soname."""


def _candidates() -> list:
    here = os.path.dirname(os.path.abspath(__file__))
    env = os.environ.get("CKPT_LIBRARY")
    out = []
    if env:
        out.append(env)
    out.append(os.path.join(here, SONAME))
    out.append(SONAME)
    return out


def _load() -> ctypes.CDLL:
    tried = []
    for cand in _candidates():
        if os.sep in cand and not os.path.exists(cand):
            tried.append(f"{cand} (absent)")
            continue
        try:
            lib = ctypes.CDLL(cand)
        except OSError as e:
            tried.append(f"{cand} ({e})")
            continue
        global library_path
        library_path = cand
        for name, (res, args) in _PROTOS.items():
            fn = getattr(lib, name, None)
            if fn is None and name in _OPTIONAL:
                continue
            if fn is None:
                fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        return lib
    raise LibraryNotFound(
        "ckpt: libckpt was not found; tried " + "; ".join(tried) +
        ". Install the package with 'pip install ./python' from the source tree (it bundles the "
        "library), install libckpt ('make install'), or set CKPT_LIBRARY to a libckpt.so")


lib = _load()


def has(name: str) -> bool:
    """Whether the loaded library exports a function (newer ABI additions)."""
    try:
        getattr(lib, name)
        return True
    except AttributeError:
        return False


def cstr(p) -> Optional[str]:
    """A char * result as text (None for NULL)."""
    if p is None:
        return None
    if isinstance(p, bytes):
        return p.decode("utf-8", "surrogateescape")
    return ctypes.string_at(p).decode("utf-8", "surrogateescape")


def value_bytes(v) -> bytes:
    """The text or bytes of a STR/BYTES/... value, NULs included."""
    n = c_size_t(0)
    p = lib.ckpt_value_str(v, ctypes.byref(n))
    if not p:
        return b""
    return ctypes.string_at(p, n.value)


def open_options(flags: int = 0) -> OpenOptions:
    o = OpenOptions()
    lib.ckpt_open_options_default(ctypes.byref(o))
    o.flags |= flags
    return o
