"""ckpt: read, write, scan and manage PyTorch checkpoints safely, without pickle.

A binding over libckpt (pure Python, ctypes). Nothing in a file is ever run
or imported: pickles go through libckpt's data-only interpreter on every
torch version.

    import ckpt
    sd = ckpt.load("model.pt")                 # what torch.load(weights_only=True) gives
    ckpt.save(sd, "copy.pt")                   # what torch.save writes, crash-safe
    with ckpt.safe_open("model.safetensors") as f:   # also torch files
        w = f.get_slice("lm_head.weight")[:100]
    report = ckpt.scan("download.bin")         # verdict and findings, nothing loaded
    m = ckpt.Manager("runs/a", monitor="val_loss", mode="min", save_top_k=3)

Errors are subclasses of :class:`ckpt.Error`, carrying the status, record and
byte offset libckpt reported.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterator, List, Optional, Union

from . import _lib
from . import _read
from . import _write
from .errors import (BusyError, CorruptError, Error, FormatError, InvalidArgumentError, IOError,
                     LimitError, MismatchError, NoMemoryError, NotFoundError, UnsafeError,
                     UnsupportedError, ValueTypeError)
from ._read import DeviceError, Global, InertObject, RawArray
from ._lib import lib as _c
from ._manager import Manager, CheckpointEntry
from ._scan import Finding, ScanResult, inspect, scan

__all__ = [
    "load", "save", "safe_open", "load_file", "save_file", "scan", "inspect", "Manager",
    "CheckpointEntry", "ScanResult", "Finding", "Error", "IOError", "NoMemoryError",
    "FormatError", "UnsupportedError", "UnsafeError", "LimitError", "CorruptError",
    "NotFoundError", "InvalidArgumentError", "ValueTypeError", "BusyError", "MismatchError",
    "DeviceError", "Global", "InertObject", "RawArray", "library_version", "__version__",
]

__version__ = "0.1.0"

PathLike = Union[str, bytes, "os.PathLike[str]"]


def library_version() -> str:
    """The version of the libckpt this package runs on, e.g. "0.1.0"."""
    return _lib.cstr(_c.ckpt_version()) or ""


def load(f: Any, map_location: Any = None, *, mmap: bool = True, weights_only: bool = True,
         key: Optional[str] = None, permissive: bool = False, framework: str = "pt",
         torchscript_weights: bool = False) -> Any:
    """Loads a checkpoint as ``torch.load(f, weights_only=True)`` does, without pickle.

    Returns the same tree: dicts, OrderedDicts (with ``_metadata``), lists,
    tuples, sets, ints, floats, strings, bytes, ``torch.Size``, dtypes,
    devices, tensors and Parameters (with ``requires_grad``), sparse tensors.
    Every format libckpt reads is accepted: torch.save's zip and legacy
    formats, safetensors (a dict of its tensors), a sharded index
    (``*.index.json``), a PyTorch Distributed Checkpoint directory (or its
    ``.metadata``: the state dict ``dcp_to_torch_save`` would write), numpy
    ``.npy``/``.npz`` files and pickles of arrays, the pre-0.4 tar format, a
    plain pickle.

    Args:
        f: a path, or a binary file object, read from its current position
            as torch.load reads it (one with ``fileno()`` is mapped, any other
            is read into memory).
        map_location: where tensors go, as in torch: a device string, a
            ``torch.device``, a dict of saved tag to tag (``{"cuda:1":
            "cuda:0"}``), or a callable ``fn(storage, location)`` whose
            result's device is used (None keeps the saved device). A device
            that is not available raises :class:`ckpt.DeviceError` before any
            tensor is built.
        mmap: True (default): tensors are views of a private copy-on-write
            map of the file: loading touches no tensor bytes, writing to a
            tensor never changes the file, and the map lives as long as any
            tensor on it. Tensors libckpt must convert (deflated,
            big-endian, misaligned, shards of an index) are copied. False:
            every tensor is copied into ordinary memory.
        weights_only: must be True: ckpt never runs a pickle. For files that
            hold pickled objects (a whole ``nn.Module``) use
            ``permissive=True``.
        key: a dotted path of dict keys inside the checkpoint (``"model"``,
            ``"state_dict"``); only that entry is read.
        permissive: objects outside the allow-list are read as inert values
            (:class:`ckpt.InertObject`) instead of refused; a pickled module
            becomes its state dict (names as ``state_dict()`` gives them).
            Nothing is called or imported either way.
        framework: ``"pt"`` (torch tensors) or ``"np"`` (numpy arrays, no
            torch needed: bfloat16 and float8 come as unsigned views of
            their width, :class:`ckpt.RawArray`, with ``ckpt_dtype`` naming
            the dtype; torch.Size becomes a tuple, dtypes and devices text).
            Quantized tensors (qint8, quint8, qint32; per tensor or per
            channel) come as torch makes them with ``"pt"``, their
            integers over the map; with ``"np"`` their raw integers.
        torchscript_weights: read a TorchScript archive (``torch.jit.save``)
            as data: the state dict ``torch.jit.load(f).state_dict()`` gives,
            nothing in its code run. Without it such an archive is refused,
            as torch.load refuses it.

    Raises:
        ckpt.UnsafeError: the pickle names something outside the allow-list.
        ckpt.FormatError, ckpt.LimitError, ckpt.IOError, ...: the file is
            malformed, exceeds a limit, cannot be read; each names the record
            and byte offset, as ``ckpt inspect`` prints it.
    """
    if not weights_only:
        raise ValueError(
            "ckpt.load never runs pickled code, so weights_only=False is refused; to read a "
            "file that holds pickled objects (a whole nn.Module, custom classes) as data, use "
            "ckpt.load(f, permissive=True): modules become their state dicts and other "
            "objects inert ckpt.InertObject values, nothing is run")
    return _read.load(f, map_location, mmap, key, permissive, framework, torchscript_weights)


def save(obj: Any, f: Any, *, fsync: bool = True) -> None:
    """Saves obj as ``torch.save`` does, through libckpt's writer.

    The file loads with ``torch.load(f, weights_only=True)`` on torch 1.13 and
    2.x. Only what that reader reads is accepted (see :func:`ckpt.load`);
    anything else raises :class:`ckpt.UnsafeError` naming its type, and
    nothing is ever pickled. Views of one storage stay one storage. Tensor
    bytes stream from the tensors' memory (CUDA tensors are copied to the
    host one at a time). The write is crash-safe: a temporary file beside
    the target, fsync'ed (unless ``fsync=False``), renamed over it; on any
    error the previous file is untouched.

    Args:
        obj: the object to save (usually a dict holding state dicts).
        f: a path, or a writable binary file object.
        fsync: flush to stable storage before the rename (default True).
    """
    _write.save(obj, f, fsync)


class _Slice:
    """A lazy tensor of a :class:`safe_open` file: index it to read part of it."""

    def __init__(self, owner: "safe_open", name: str, t: int) -> None:
        self._owner = owner
        self._name = name
        self._t = t

    def get_shape(self) -> List[int]:
        """The tensor's shape."""
        ti = _read.tensor_info(self._t)
        return [ti.shape[i] for i in range(ti.ndim)]

    def get_dtype(self) -> str:
        """The dtype's safetensors name ("F32", "BF16", ...) or ckpt's name."""
        ti = _read.tensor_info(self._t)
        st = _c.ckpt_dtype_safetensors_name(ti.dtype)
        return _lib.cstr(st) if st else _read.dtype_name(ti.dtype)

    def __getitem__(self, index: Any) -> Any:
        """The selected part as a new tensor/array: only its bytes are read."""
        full = self._owner._tensor(self._t)
        part = full[index]
        return part.copy() if self._owner._conv.np else part.clone()

    def __len__(self) -> int:
        return self.get_shape()[0]


class safe_open:
    """Opens a checkpoint for reading tensors by name, as safetensors' ``safe_open``.

    Works on every format libckpt reads, not only safetensors: names follow
    ckpt's naming contract (dict keys and list positions joined by dots,
    ``"model.net.0.weight"``, ``"optimizer.state.0.exp_avg"``).

        with ckpt.safe_open("model.pt", framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)

    Tensors are views of a private copy-on-write map (see :func:`ckpt.load`)
    and stay valid after the file is closed.

    Args:
        filename: the file.
        framework: ``"pt"`` or ``"np"`` (also ``"torch"``, ``"numpy"``).
        device: where tensors go (``"cpu"``, ``"cuda:0"``, an int for CUDA).
    """

    def __init__(self, filename: Any, framework: str = "pt", device: Any = "cpu", *,
                 torchscript_weights: bool = False) -> None:
        fw = {"torch": "pt", "numpy": "np"}.get(framework, framework)
        if isinstance(device, int):
            device = f"cuda:{device}"
        self._src = _read.Source(filename, torchscript_weights=torchscript_weights)
        try:
            self._conv = _read.Converter(self._src, fw, None if fw == "np" else str(device))
            self._names = {n: t for n, t in _read.tensor_names(self._src)}
            self._conv.check_devices(list(self._names.values()))
        except BaseException:
            self._src.close()
            raise

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Closes the file (tensors already read stay valid)."""
        self._src.close()

    def _live(self) -> None:
        if not self._src.handle:
            raise _read._err.make(InvalidArgumentError, "the file is closed", self._src.name)

    def keys(self) -> List[str]:
        """Every tensor's name, in file order."""
        self._live()
        return list(self._names)

    def offset_keys(self) -> List[str]:
        """The names, in the order of their bytes in the file."""
        self._live()
        return sorted(self._names, key=lambda n: (_read.tensor_info(self._names[n])
                                                  .storage_file_offset, n))

    def _find(self, name: str) -> int:
        self._live()
        t = self._names.get(name)
        if t is None:
            raise _read._err.make(NotFoundError, f"no tensor named {name!r}", self._src.name)
        return t

    def _tensor(self, t: int) -> Any:
        return self._conv.tensor(t)

    def get_tensor(self, name: str) -> Any:
        """The tensor (or numpy array) of that name."""
        return self._tensor(self._find(name))

    def get_slice(self, name: str) -> _Slice:
        """A lazy handle: ``f.get_slice(name)[0:10, :]`` reads only those bytes."""
        return _Slice(self, name, self._find(name))

    def metadata(self) -> Optional[Dict[str, str]]:
        """safetensors' ``__metadata__`` (a sharded index's "metadata"), or None."""
        self._live()
        fi = _lib.FileInfo()
        fi.struct_size = _lib.ctypes.sizeof(fi)
        _c.ckpt_file_get_info(self._src.handle, _lib.ctypes.byref(fi))
        if not fi.metadata:
            return None
        md = _read.Converter(self._src, "np").value(fi.metadata)
        return {str(k): v if isinstance(v, str) else str(v) for k, v in md.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


def load_file(filename: Any, device: Any = "cpu") -> Dict[str, Any]:
    """Every tensor of a file by name, as safetensors.torch.load_file
    (any format libckpt reads; names as :class:`safe_open` gives them)."""
    with safe_open(filename, framework="pt", device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def save_file(tensors: Dict[str, Any], filename: Any, metadata: Optional[Dict[str, str]] = None,
              *, dedup: bool = False, fsync: bool = True) -> None:
    """Saves a dict of tensors as safetensors, as safetensors.torch.save_file.

    Each tensor is written contiguous, in safetensors' reference order, with
    ``metadata`` (str to str) in ``__metadata__``. Tensors that share memory
    are refused (as safetensors does) unless ``dedup=True``: then tensors
    that are the same view of one storage (tied weights) are written once,
    the other names recorded in ``__metadata__`` as safetensors' save_model
    does. The write is crash-safe (see :func:`ckpt.save`).
    """
    _write.save_file(tensors, filename, metadata, dedup, fsync)
