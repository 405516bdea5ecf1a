"""Writing: Python objects into libckpt value trees, saved by its writers.

Only what torch.load(weights_only=True) reads back is accepted: None, bool,
int (64-bit), float, complex, str, bytes, list, tuple, set, frozenset, dict,
OrderedDict (with _metadata), torch.Size, torch.dtype, torch.device and
strided tensors (Parameters too). Anything else is refused by its type's
name; nothing is ever pickled. Tensors are borrowed: the writer streams
their bytes from their own memory, views of one storage share it.
"""

from __future__ import annotations

import collections
import ctypes
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional

from . import _lib
from . import errors as _err
from ._lib import lib

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


def _storage_ptr_nbytes(t: Any):
    st = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()
    nb = st.nbytes() if callable(getattr(st, "nbytes", None)) else st.size() * t.element_size()
    return st.data_ptr(), int(nb)


class TreeBuilder:
    """Builds a ckpt_tree from Python objects; keeps what it borrows alive."""

    def __init__(self, name: str = "") -> None:
        self.tree = lib.ckpt_tree_new()
        if not self.tree:
            raise MemoryError("ckpt: out of memory")
        self.name = name
        self.keep: List[Any] = []
        self.memo: Dict[int, int] = {}
        self.storages: Dict[tuple, tuple] = {}   # (ptr, nbytes, dtype) -> (value, tensor)
        self.active: set = set()

    def free(self) -> None:
        if self.tree:
            lib.ckpt_tree_free(self.tree)
            self.tree = None
        self.keep = []

    def __del__(self) -> None:
        self.free()

    def _ok(self, v: Optional[int], what: str) -> int:
        if not v:
            err = _lib.Error_()
            st = lib.ckpt_tree_status(self.tree, ctypes.byref(err))
            _err.check(st if st != _lib.OK else _lib.ERR_NOMEM, err, self.name)
            raise _err.make(_err.Error, f"could not make {what}", self.name)
        return v

    def _status(self, st: int) -> None:
        if st != _lib.OK:
            err = _lib.Error_()
            lib.ckpt_tree_status(self.tree, ctypes.byref(err))
            if err.status == _lib.OK:
                err.status = st
            raise _err.from_c(err, self.name)

    def refuse(self, obj: Any, where: str) -> None:
        t = type(obj)
        raise _err.make(_err.UnsafeError,
                        f"{where or 'the object'}: {t.__module__}.{t.__qualname__} is outside "
                        "the allow-list of what torch.load(weights_only=True) reads; it was "
                        "not saved (nothing is pickled)", self.name)

    def build(self, obj: Any, where: str = "") -> int:
        oid = id(obj)
        hit = self.memo.get(oid)
        if hit is not None:
            return hit
        if oid in self.active:
            raise _err.make(_err.InvalidArgumentError,
                            f"{where or 'the object'} contains itself", self.name)
        tr = self.tree
        if obj is None:
            return self._ok(lib.ckpt_new_none(tr), "None")
        if isinstance(obj, bool):
            return self._ok(lib.ckpt_new_bool(tr, obj), "a bool")
        if torch is not None and isinstance(obj, torch.Tensor):
            v = self.tensor(obj, where)
        elif torch is not None and isinstance(obj, torch.Size):
            dims = (ctypes.c_int64 * max(len(obj), 1))(*obj)
            v = self._ok(lib.ckpt_new_size(tr, len(obj), dims), "a torch.Size")
        elif type(obj) is int:
            if not _INT64_MIN <= obj <= _INT64_MAX:
                raise _err.make(_err.UnsupportedError,
                                f"{where or 'the object'}: the int {obj} does not fit in 64 "
                                "bits", self.name)
            return self._ok(lib.ckpt_new_int(tr, obj), "an int")
        elif type(obj) is float:
            return self._ok(lib.ckpt_new_float(tr, obj), "a float")
        elif type(obj) is complex:
            v = self._ok(lib.ckpt_new_complex(tr, obj.real, obj.imag), "a complex")
        elif type(obj) is str:
            b = obj.encode("utf-8", "surrogatepass")
            v = self._ok(lib.ckpt_new_str(tr, b, len(b)), "a str")
        elif type(obj) in (bytes, bytearray):
            b = bytes(obj)
            v = self._ok(lib.ckpt_new_bytes(tr, b, len(b)), "bytes")
        elif torch is not None and isinstance(obj, torch.dtype):
            d = lib.ckpt_dtype_from_name(str(obj).encode())
            if not d:
                raise _err.make(_err.UnsupportedError, f"{where}: dtype {obj} is not written",
                                self.name)
            v = self._ok(lib.ckpt_new_dtype(tr, d), "a dtype")
        elif torch is not None and isinstance(obj, torch.device):
            v = self._ok(lib.ckpt_new_device(tr, str(obj).encode()), "a device")
        elif type(obj) in (list, tuple, set, frozenset):
            if type(obj) is list:
                v = self._ok(lib.ckpt_new_list(tr), "a list")
            elif type(obj) is tuple:
                v = self._ok(lib.ckpt_new_tuple(tr), "a tuple")
            else:
                if type(obj) is frozenset:
                    raise _err.make(_err.UnsupportedError,
                                    f"{where or 'the object'}: frozenset is not written "
                                    "(torch's weights-only reader refuses it)", self.name)
                v = self._ok(lib.ckpt_new_set(tr), "a set")
            self.active.add(oid)
            for i, item in enumerate(obj):
                self._status(lib.ckpt_append(tr, v, self.build(item, f"{where}[{i}]")))
            self.active.discard(oid)
        elif type(obj) in (dict, collections.OrderedDict):
            ordered = type(obj) is collections.OrderedDict
            v = self._ok(lib.ckpt_new_ordered_dict(tr) if ordered else lib.ckpt_new_dict(tr),
                         "a dict")
            self.active.add(oid)
            for k, item in obj.items():
                kv = self.build(k, f"{where} key")
                self._status(lib.ckpt_dict_put(tr, v, kv, self.build(item, f"{where}[{k!r}]")))
            if ordered and hasattr(obj, "_metadata"):
                state = self._ok(lib.ckpt_new_dict(tr), "a dict")
                md = self.build(obj._metadata, f"{where}._metadata")
                self._status(lib.ckpt_dict_put_str(tr, state, b"_metadata", md))
                self._status(lib.ckpt_set_state(tr, v, state))
            self.active.discard(oid)
        else:
            self.refuse(obj, where)
        self.memo[oid] = v
        self.keep.append(obj)
        return v

    def tensor(self, t: Any, where: str) -> int:
        if t.layout != torch.strided:
            raise _err.make(_err.UnsupportedError,
                            f"{where or 'the tensor'}: {t.layout} tensors are not written",
                            self.name)
        if t.is_quantized:
            raise _err.make(_err.UnsupportedError,
                            f"{where or 'the tensor'}: quantized tensors are not written",
                            self.name)
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            self.refuse(t, where)
        is_param = isinstance(t, torch.nn.Parameter)
        location = str(t.device)
        data = t.detach()
        if data.device.type == "meta":
            raise _err.make(_err.UnsupportedError,
                            f"{where or 'the tensor'}: meta tensors are not written", self.name)
        if data.device.type != "cpu":
            data = data.cpu()
        if data.is_conj() if hasattr(data, "is_conj") else False:
            data = data.resolve_conj()
        if data.is_neg() if hasattr(data, "is_neg") else False:
            data = data.resolve_neg()
        d = lib.ckpt_dtype_from_name(str(data.dtype).encode())
        if not d:
            raise _err.make(_err.UnsupportedError,
                            f"{where or 'the tensor'}: dtype {data.dtype} is not written",
                            self.name)
        ptr, nbytes = _storage_ptr_nbytes(data)
        nd = data.dim()
        shape = (ctypes.c_int64 * max(nd, 1))(*data.shape)
        stride = (ctypes.c_int64 * max(nd, 1))(*data.stride())
        desc = _lib.TensorDesc()
        lib.ckpt_tensor_desc_init(ctypes.byref(desc))
        desc.dtype = d
        desc.ndim = nd
        desc.shape = shape
        desc.stride = stride
        desc.storage_offset = data.storage_offset()
        desc.data = ptr or None
        desc.storage_nbytes = nbytes
        loc = location.encode()
        desc.location = loc
        desc.requires_grad = bool(t.requires_grad)
        desc.is_parameter = is_param
        self.keep.extend((data, shape, stride, loc))
        skey = (ptr, nbytes, d, location)
        base = self.storages.get(skey) if ptr else None
        if base is not None:
            v = self._ok(lib.ckpt_new_view(self.tree, base, ctypes.byref(desc)), "a view")
        else:
            if nbytes == 0:
                desc.data = None
            v = self._ok(lib.ckpt_new_tensor(self.tree, ctypes.byref(desc)), "a tensor")
            if ptr:
                self.storages[skey] = v
        return v


def _save_options(fsync: bool, prefix: Optional[str] = None) -> "_lib.SaveOptions":
    o = _lib.SaveOptions()
    lib.ckpt_save_options_default(ctypes.byref(o))
    if not fsync:
        o.flags |= _lib.SAVE_NO_FSYNC
    if prefix is not None:
        o._prefix = prefix.encode()
        o.prefix = o._prefix
    return o


def _write(fn, root: int, f: Any, opts: "_lib.SaveOptions", name: str) -> None:
    err = _lib.Error_()
    if isinstance(f, (str, bytes, os.PathLike)):
        path = os.fsencode(os.fspath(f))
        _err.check(fn(path, root, ctypes.byref(opts), ctypes.byref(err)), err, name)
        return
    if not hasattr(f, "write"):
        raise TypeError(f"ckpt: expected a path or a writable file object, got "
                        f"{type(f).__name__}")
    with tempfile.TemporaryDirectory(prefix="ckpt-save-") as d:
        tmp = os.path.join(d, "archive.pt")
        _err.check(fn(tmp.encode(), root, ctypes.byref(opts), ctypes.byref(err)), err, name)
        with open(tmp, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)


def save(obj: Any, f: Any, fsync: bool = True) -> None:
    name = os.fsdecode(os.fspath(f)) if isinstance(f, (str, bytes, os.PathLike)) else \
        str(getattr(f, "name", "<file object>"))
    b = TreeBuilder(name)
    try:
        root = b.build(obj)
        prefix = None if isinstance(f, (str, bytes, os.PathLike)) else "archive"
        _write(lib.ckpt_save_torch, root, f, _save_options(fsync, prefix), name)
    finally:
        b.free()


def _overlap(tensors: Dict[str, Any]) -> List[List[str]]:
    """Groups of names whose tensors share memory (safetensors' check)."""
    spans = []
    for name, t in tensors.items():
        if t.numel() == 0 or t.device.type == "meta":
            continue
        ptr, nbytes = _storage_ptr_nbytes(t)
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        spans.append((ptr, start, end, name))
    spans.sort()
    groups: List[List[str]] = []
    cur: List[str] = []
    cur_end = -1
    for _, start, end, name in spans:
        if cur and start < cur_end:
            cur.append(name)
            cur_end = max(cur_end, end)
        else:
            if len(cur) > 1:
                groups.append(cur)
            cur = [name]
            cur_end = end
    if len(cur) > 1:
        groups.append(cur)
    return groups


def save_file(tensors: Dict[str, Any], path: Any, metadata: Optional[Dict[str, str]],
              dedup: bool, fsync: bool) -> None:
    name = os.fsdecode(os.fspath(path))
    if not isinstance(tensors, dict):
        raise TypeError("ckpt: save_file expects a dict of name -> tensor")
    for k, t in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"ckpt: save_file: key {k!r} is not a str")
        if torch is None or not isinstance(t, torch.Tensor):
            raise TypeError(f"ckpt: save_file: {k!r} is a {type(t).__name__}, not a "
                            "torch.Tensor")
        if t.layout != torch.strided:
            raise ValueError(f"ckpt: save_file: {k!r} is a {t.layout} tensor; safetensors "
                             "holds dense tensors only")
    if not dedup:
        shared = _overlap(tensors)
        if shared:
            raise _err.make(_err.InvalidArgumentError,
                            f"some tensors share memory, which would duplicate it on disk "
                            f"and make them differ once loaded again: {shared}; save with "
                            "save_file(..., dedup=True) to write tied weights once (as "
                            "safetensors' save_model does), or clone them", name)
    b = TreeBuilder(name)
    try:
        root = b._ok(lib.ckpt_new_ordered_dict(b.tree), "a dict")
        for k, t in tensors.items():
            kv = b.build(k)
            b._status(lib.ckpt_dict_put(b.tree, root, kv, b.tensor(t, k)))
        opts = _save_options(fsync)
        if metadata:
            md = b._ok(lib.ckpt_new_dict(b.tree), "a dict")
            for k, v in metadata.items():
                if not isinstance(k, str) or not isinstance(v, str):
                    raise TypeError("ckpt: save_file: metadata must map str to str")
                b._status(lib.ckpt_dict_put_str(b.tree, md, k.encode(), b.build(v)))
            opts.metadata = md
        _write(lib.ckpt_save_safetensors, root, path, opts, name)
    finally:
        b.free()
