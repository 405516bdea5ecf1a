"""Scanning and inspecting: what a file holds, without loading it."""

from __future__ import annotations

import ctypes
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from . import _lib
from . import _read
from . import errors as _err
from ._lib import lib

_TORCH_FORMATS = ("torch-zip", "torch-legacy")


@dataclass
class Finding:
    """One finding of a scan, with the fields of ``ckpt scan --json``.

    ``global_`` is the finding's "global" (a Python keyword as an attribute
    name); :meth:`as_dict` gives the JSON keys.
    """

    kind: str
    severity: str
    global_: Optional[str]
    call: Optional[str]
    record: str
    offset: Optional[int]
    file_offset: Optional[int]
    use: Optional[str]
    runs_code: bool
    message: str

    def as_dict(self) -> Dict[str, Any]:
        """The finding as ``ckpt scan --json`` writes it."""
        return {"kind": self.kind, "severity": self.severity, "global": self.global_,
                "call": self.call, "record": self.record, "offset": self.offset,
                "file_offset": self.file_offset, "use": self.use, "runs_code": self.runs_code,
                "message": self.message}


@dataclass
class ScanResult:
    """What ``ckpt.scan`` found: ``verdict`` is "safe", "warning" or "unsafe"."""

    file: str
    verdict: str
    format: str
    torch_weights_only_loads: bool
    reason: str
    findings: List[Finding] = field(default_factory=list)

    @property
    def safe(self) -> bool:
        """True when the verdict is "safe"."""
        return self.verdict == "safe"

    def __bool__(self) -> bool:
        return self.safe

    def as_dict(self) -> Dict[str, Any]:
        """The file's entry as ``ckpt scan --json`` writes it."""
        return {"file": self.file, "verdict": self.verdict, "format": self.format,
                "torch_weights_only_loads": self.torch_weights_only_loads,
                "reason": self.reason, "findings": [f.as_dict() for f in self.findings]}


def _off(v: int) -> Optional[int]:
    return None if v == _lib.NO_OFFSET else int(v)


def scan(f: Any, *, allow: Optional[List[str]] = None) -> ScanResult:
    """Scans a checkpoint without loading it, as ``ckpt scan`` does.

    Nothing is called, imported or loaded; tensor bytes are not read. A file
    that is malformed or not a checkpoint is an "unsafe" verdict with
    findings, not an exception.

    Args:
        f: a path, or a binary file object (read into memory).
        allow: extra allowed globals ("module.name"), as
            torch.serialization.add_safe_globals adds them.

    Raises:
        ckpt.IOError: the file cannot be read at all.
    """
    opts = _lib.ScanOptions()
    lib.ckpt_scan_options_default(ctypes.byref(opts))
    keep = [a.encode() for a in (allow or [])]
    if keep:
        arr = (ctypes.c_char_p * len(keep))(*keep)
        opts.allow = arr
        opts.allow_count = len(keep)
    err = _lib.Error_()
    sc = ctypes.c_void_p()
    if isinstance(f, (str, bytes, os.PathLike)):
        name = os.fsdecode(os.fspath(f))
        st = lib.ckpt_scan_file(name.encode(), ctypes.byref(opts), ctypes.byref(sc),
                                ctypes.byref(err))
    else:
        name = str(getattr(f, "name", "<file object>"))
        data = f.read()
        buf = ctypes.create_string_buffer(data, len(data)) if data else None
        st = lib.ckpt_scan_memory(buf, len(data), ctypes.byref(opts), ctypes.byref(sc),
                                  ctypes.byref(err))
    _err.check(st, err, name)
    try:
        verdict = _lib.cstr(lib.ckpt_scan_verdict_name(lib.ckpt_scan_get_verdict(sc)))
        fmt = _lib.cstr(lib.ckpt_scan_format(sc)) or "unknown"
        findings = []
        use = ctypes.create_string_buffer(256)
        for i in range(lib.ckpt_scan_finding_count(sc)):
            p = lib.ckpt_scan_finding_at(sc, i).contents
            size = p.struct_size
            sev = p.severity if size >= _lib.ScanFinding.severity.offset + 4 else 1
            call = p.call if size >= _lib.ScanFinding.call.offset + 8 else None
            kind = _lib.cstr(lib.ckpt_scan_kind_name(p.kind))
            if p.kind == 1:
                lib.ckpt_scan_use_text(p.use, use, len(use))
                use_text = use.value.decode()
            else:
                use_text = None
            findings.append(Finding(
                kind=kind, severity=_lib.cstr(lib.ckpt_scan_verdict_name(sev)),
                global_=_lib.cstr(p.global_), call=_lib.cstr(call),
                record=_lib.cstr(p.record) or "", offset=_off(p.offset),
                file_offset=_off(p.file_offset), use=use_text, runs_code=bool(p.runs_code),
                message=_lib.cstr(p.message) or ""))
    finally:
        lib.ckpt_scan_free(sc)
    torch_fmt = fmt in _TORCH_FORMATS
    reason = ("every global is on torch's weights-only allow-list, every opcode is one its "
              "reader runs, and every reader sees the same content" if torch_fmt else
              "not a file torch.load reads (it reads torch.save's zip and legacy formats)")
    for fd in findings:
        if verdict != "safe" and fd.severity == verdict:
            reason = fd.message
            break
    return ScanResult(file=name, verdict=verdict, format=fmt,
                      torch_weights_only_loads=verdict == "safe" and torch_fmt, reason=reason,
                      findings=findings)


def _s(p: Any) -> Optional[str]:
    return _lib.cstr(p)


def _is_dict(v: int) -> bool:
    return lib.ckpt_value_kind(v) in (_lib.KIND_DICT, _lib.KIND_ORDERED_DICT)


def _holds_tensors(v: int) -> bool:
    return _is_dict(v) and any(
        lib.ckpt_value_kind(lib.ckpt_value_dict_value(v, i)) == _lib.KIND_TENSOR
        for i in range(lib.ckpt_value_len(v)))


def _default_state_dict(root: int) -> Optional[str]:
    """The entry holding the model's weights, as the tool chooses it: the
    first of "state_dict" and "model" that is a dict (holding tensors when
    the root holds some too); None for the root itself."""
    if not _is_dict(root):
        return None
    stray = _holds_tensors(root)
    for name in ("state_dict", "model"):
        v = lib.ckpt_value_get(root, name.encode())
        if v and _is_dict(v) and (not stray or _holds_tensors(v)):
            return name
    return None


# the tool's bounds on its JSON tree (cli/main.c): depth, nodes, text
_TREE_MAX_DEPTH = 200
_TREE_MAX_NODES = 2000000
_TREE_MAX_TEXT_BYTES = 256 << 20


class _TreeJSON:
    """A value tree as ``ckpt inspect --json`` writes it: JSON values, with
    {"$tuple": [...]}, {"$odict": {...}, "$state": ...}, {"$tensor":
    {...}}, ... for what JSON lacks, and the tool's bounds ({"$truncated":
    true}, {"$cycle": true})."""

    def __init__(self) -> None:
        self.nodes_left = _TREE_MAX_NODES
        self.text_left = _TREE_MAX_TEXT_BYTES
        self.path: List[int] = []

    def _text_budget(self, n: int) -> bool:
        if n > self.text_left:
            self.text_left = 0
            return False
        self.text_left -= n
        return True

    @staticmethod
    def _utf8(b: bytes) -> Optional[str]:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @staticmethod
    def _float(d: float) -> Any:
        if math.isfinite(d):
            return d
        return "nan" if math.isnan(d) else "inf" if d > 0 else "-inf"

    def _seq(self, v: int, depth: int) -> list:
        return [self.value(lib.ckpt_value_item(v, i), depth + 1)
                for i in range(lib.ckpt_value_len(v))]

    def _dict(self, v: int, depth: int) -> Any:
        n = lib.ckpt_value_len(v)
        keys = []
        for i in range(n):
            k = lib.ckpt_value_key(v, i)
            text = None
            if lib.ckpt_value_kind(k) == _lib.KIND_STR:
                b = _lib.value_bytes(k)
                if b"\0" not in b:
                    text = self._utf8(b)
            if text is None:
                return {"$dict": [[self.value(lib.ckpt_value_key(v, j), depth + 1),
                                   self.value(lib.ckpt_value_dict_value(v, j), depth + 1)]
                                  for j in range(n)]}
            keys.append(text)
        return {k: self.value(lib.ckpt_value_dict_value(v, i), depth + 1)
                for i, k in enumerate(keys)}

    def _tensor(self, t: int) -> Dict[str, Any]:
        ti = _read.tensor_info(t)
        e: Dict[str, Any] = {"dtype": _read.dtype_name(ti.dtype),
                             "shape": [ti.shape[k] for k in range(ti.ndim)]}
        if ti.is_parameter:
            e["parameter"] = True
        if ti.layout != _lib.LAYOUT_STRIDED:
            e["layout"] = _s(lib.ckpt_layout_name(ti.layout))
        return {"$tensor": e}

    def value(self, v: int, depth: int = 0) -> Any:
        if depth >= _TREE_MAX_DEPTH or self.nodes_left == 0:
            return {"$truncated": True}
        self.nodes_left -= 1
        if v and v in self.path[:depth]:
            return {"$cycle": True}
        del self.path[depth:]
        self.path.append(v)
        kind = lib.ckpt_value_kind(v)
        if kind == _lib.KIND_NONE:
            return None
        if kind == _lib.KIND_BOOL:
            return bool(lib.ckpt_value_bool(v))
        if kind == _lib.KIND_INT:
            return int(lib.ckpt_value_int(v))
        if kind == _lib.KIND_BIGINT:
            if not self._text_budget(3 * len(_lib.value_bytes(v))):
                return {"$truncated": True}
            n = lib.ckpt_value_repr(v, None, 0)
            buf = ctypes.create_string_buffer(n + 1)
            lib.ckpt_value_repr(v, buf, n + 1)
            return {"$int": buf.value.decode("utf-8", "replace")}
        if kind == _lib.KIND_FLOAT:
            d = float(lib.ckpt_value_float(v))
            return d if math.isfinite(d) else {"$float": self._float(d)}
        if kind == _lib.KIND_COMPLEX:
            re_, im = ctypes.c_double(), ctypes.c_double()
            lib.ckpt_value_complex(v, ctypes.byref(re_), ctypes.byref(im))
            return {"$complex": [self._float(re_.value), self._float(im.value)]}
        if kind == _lib.KIND_STR:
            b = _lib.value_bytes(v)
            if not self._text_budget(len(b)):
                return {"$truncated": True}
            text = self._utf8(b)
            return text if text is not None else {"$str_utf8_hex": b.hex()}
        if kind == _lib.KIND_BYTES:
            b = _lib.value_bytes(v)
            if not self._text_budget(2 * len(b)):
                return {"$truncated": True}
            return {"$bytes": b.hex()}
        if kind == _lib.KIND_LIST:
            return self._seq(v, depth)
        if kind in (_lib.KIND_TUPLE, _lib.KIND_SET, _lib.KIND_SIZE):
            tag = {_lib.KIND_TUPLE: "$tuple", _lib.KIND_SET: "$set", _lib.KIND_SIZE: "$size"}
            return {tag[kind]: self._seq(v, depth)}
        if kind == _lib.KIND_DICT:
            return self._dict(v, depth)
        if kind == _lib.KIND_ORDERED_DICT:
            out = {"$odict": self._dict(v, depth)}
            st = lib.ckpt_value_state(v)
            if st:
                out["$state"] = self.value(st, depth + 1)
            return out
        if kind in (_lib.KIND_DEVICE, _lib.KIND_GLOBAL):
            tag = "$device" if kind == _lib.KIND_DEVICE else "$global"
            return {tag: _lib.cstr(lib.ckpt_value_str(v, None))}
        if kind == _lib.KIND_DTYPE:
            return {"$dtype": _read.dtype_name(lib.ckpt_value_dtype(v))}
        if kind == _lib.KIND_OBJECT:
            o: Dict[str, Any] = {"class": _lib.cstr(lib.ckpt_value_str(v, None)),
                                 "args": self.value(lib.ckpt_value_object_args(v), depth + 1)}
            for key, fn in (("kwargs", lib.ckpt_value_object_kwargs),
                            ("state", lib.ckpt_value_state),
                            ("dict", lib.ckpt_value_object_dict),
                            ("items", lib.ckpt_value_object_items)):
                x = fn(v)
                if x:
                    o[key] = self.value(x, depth + 1)
            return {"$object": o}
        if kind == _lib.KIND_TENSOR:
            return self._tensor(lib.ckpt_value_tensor(v))
        return None


def inspect(f: Any, *, permissive: bool = False,
            torchscript_weights: bool = False) -> Dict[str, Any]:
    """What ``ckpt inspect --json`` shows of a file, as a dict: "file",
    "format", "details", "records", "tensors" (name, dtype, shape, stride,
    storage, location, data_offset, ...), "totals", "model" (the totals of
    the model's state dict and its "key"), "metadata" and "tree" (the value
    tree as the tool writes it in JSON: {"$tuple": [...]}, {"$tensor":
    {"dtype", "shape"}}, ... for what JSON lacks; :func:`ckpt.load` gives
    the values themselves). Opens the file lazily: no tensor bytes are read.
    """
    src = _read.Source(f, permissive=permissive, torchscript_weights=torchscript_weights)
    try:
        h = src.handle
        fi = _lib.FileInfo()
        fi.struct_size = ctypes.sizeof(fi)
        lib.ckpt_file_get_info(h, ctypes.byref(fi))
        fmt = _s(lib.ckpt_format_name(fi.format))
        details: Dict[str, Any] = {
            "file_size": int(fi.file_size), "prefix": _s(fi.prefix), "version": _s(fi.version),
            "byteorder": _s(fi.byteorder), "serialization_id": _s(fi.serialization_id),
            "format_version": _s(fi.format_version),
            "storage_alignment": _s(fi.storage_alignment),
            "pickle_protocol": fi.pickle_protocol if fi.pickle_protocol >= 0 else None}
        if fmt == "torch-legacy":
            details["legacy_protocol_version"] = int(fi.legacy_protocol_version)
        details.update({"data_alignment": int(fi.data_alignment),
                        "big_endian": bool(fi.big_endian), "records": int(fi.record_count),
                        "storages": int(fi.storage_count)})
        if fmt == "sharded":
            details["shards"] = int(fi.shard_count)
        records = []
        for i in range(fi.record_count):
            ri = _lib.RecordInfo()
            ri.struct_size = ctypes.sizeof(ri)
            if lib.ckpt_file_record(h, i, ctypes.byref(ri)) != _lib.OK:
                continue
            r: Dict[str, Any] = {"name": _s(ri.name), "data_offset": int(ri.data_offset),
                                 "size": int(ri.size)}
            if ri.compressed:
                r["stored_size"] = int(ri.stored_size)
            if ri.has_crc:
                r["crc32"] = f"{ri.crc32:08x}"
            r["compressed"] = bool(ri.compressed)
            records.append(r)
        # a TorchScript archive (read with torchscript_weights): a torch zip
        # holding PREFIX/constants.pkl or PREFIX/code/, as the CLI tells it
        prefix = details["prefix"]
        details["torchscript"] = bool(
            fmt == "torch-zip" and prefix and any(
                r["name"] in (prefix + "/constants.pkl",) or
                r["name"].startswith(prefix + "/code/") for r in records))
        tensors = []
        model_key = _default_state_dict(lib.ckpt_file_root(h))
        dedup = fmt != "sharded"  # a sharded file's shards number storages each
        views: Dict[Any, List[Any]] = {}
        for name, t in _read.tensor_names(src):
            ti = _read.tensor_info(t)
            shape = [ti.shape[k] for k in range(ti.ndim)]
            stride = [ti.stride[k] for k in range(ti.ndim)]
            e = {"name": name, "dtype": _read.dtype_name(ti.dtype), "shape": shape,
                 "stride": stride,
                 "storage_offset": int(ti.storage_offset), "numel": int(ti.numel),
                 "nbytes": int(ti.nbytes), "requires_grad": bool(ti.requires_grad),
                 "parameter": bool(ti.is_parameter), "contiguous": bool(ti.is_contiguous),
                 "storage": _s(ti.storage_key),
                 "storage_index": int(ti.storage_index) if ti.has_storage else None,
                 "storage_nbytes": int(ti.storage_nbytes), "location": _s(ti.location),
                 "record": _s(ti.record),
                 "data_offset": _off(ti.storage_file_offset),
                 "layout": _s(lib.ckpt_layout_name(ti.layout))}
            if ti.layout != _lib.LAYOUT_STRIDED:
                e["nnz"] = int(ti.nnz)
            tensors.append(e)
            # views over the same bytes (tied weights) count once, as the tool counts
            key: Any = (int(ti.storage_index), e["storage_offset"], int(ti.dtype),
                        int(ti.layout), tuple(shape), tuple(stride)) \
                if dedup and ti.has_storage else ("unique", len(tensors))
            in_model = bool(model_key) and name.startswith(model_key + ".")
            views.setdefault(key, []).append((e, in_model))
        totals = {"tensors": 0, "distinct": 0, "elements": 0, "bytes": 0}
        model = {"tensors": 0, "distinct": 0, "elements": 0, "bytes": 0}
        for group in views.values():
            e = group[0][0]
            names_in_model = sum(1 for _, m in group if m)
            for tot, names in ((totals, len(group)), (model, names_in_model)):
                if names:
                    tot["tensors"] += names
                    tot["distinct"] += 1
                    tot["elements"] += e["numel"]
                    tot["bytes"] += e["nbytes"]
        out: Dict[str, Any] = {
            "file": src.name, "format": fmt, "details": details, "records": records,
            "tensors": tensors, "totals": totals,
            "model": dict(model, key=model_key) if model_key else None}
        walk = _TreeJSON()
        if fi.metadata:
            out["metadata"] = _read.Converter(src, "np").value(fi.metadata)
            walk.value(fi.metadata)  # the tool's budget is spent on it first
        out["tree"] = walk.value(lib.ckpt_file_root(h))
        return out
    finally:
        src.close()
