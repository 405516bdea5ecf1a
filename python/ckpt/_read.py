"""Reading: files into Python values, tensors over a copy-on-write map.

A file read with mmap=True is mapped privately (MAP_PRIVATE, with libc's
mmap, so that no descriptor stays open while tensors live): libckpt
reads it through ckpt_open_memory over that map, and every tensor whose
bytes are stored plainly, aligned and little-endian is a view of the map
(torch.frombuffer / numpy.frombuffer), so writing to a tensor changes only
the process's private copy of the page, never the file. The map is owned
by the buffer object the tensors hold: it lives as long as any tensor on it,
whatever happens to the handle. Tensors libckpt had to copy (deflated
records, big-endian or misaligned data, shards of a sharded index) are
copied once per storage into ordinary memory before the handle closes.
"""

from __future__ import annotations

import collections
import ctypes
import gc
import mmap as _mmap
import os
import struct
import stat
import sys
import weakref
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _lib
from . import errors as _err
from ._lib import lib

try:  # torch is optional: framework="np" works without it
    import torch
except ImportError:  # pragma: no cover - exercised by a subprocess test
    torch = None  # type: ignore[assignment]

# numpy types of ckpt dtypes; the raw ones (no numpy dtype) are read as the
# unsigned integers of their width, named in RawArray.ckpt_dtype.
_NP_TYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "complex128": np.complex128, "complex64": np.complex64, "int64": np.int64,
    "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint64": np.uint64,
    "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8, "bool": np.bool_,
}
_RAW_BY_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
# the integers of quantized dtypes torch reads whole bytes of
_QUANT_INT = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}


class RawArray(np.ndarray):
    """A numpy array holding a dtype numpy lacks (bfloat16, float8, ...) as
    raw unsigned integers of the same width; ``ckpt_dtype`` names the dtype
    ("bfloat16")."""

    ckpt_dtype: str = ""

    def __array_finalize__(self, obj: Any) -> None:
        self.ckpt_dtype = getattr(obj, "ckpt_dtype", "")


class Global(str):
    """A reference to a class or constant the pickle names ("module.name")
    that has no Python value here; nothing was imported."""

    def __repr__(self) -> str:
        return f"ckpt.Global({str.__repr__(self)})"


class InertObject:
    """An object of a class outside the allow-list, read with
    ``permissive=True``: never built, nothing called. ``cls`` is its class's
    "module.name"; ``args``, ``kwargs``, ``state``, ``dict_items`` and
    ``list_items`` are what the pickle gave to build it."""

    __slots__ = ("cls", "args", "kwargs", "state", "dict_items", "list_items")

    def __init__(self, cls: str, args: Any, kwargs: Any, state: Any, dict_items: Any,
                 list_items: Any) -> None:
        self.cls = cls
        self.args = args
        self.kwargs = kwargs
        self.state = state
        self.dict_items = dict_items
        self.list_items = list_items

    def __repr__(self) -> str:
        return f"<inert {self.cls} object>"


class DeviceError(_err.Error, RuntimeError):
    """A tensor's device (as saved, or as map_location maps it) is not
    available here; raised before any tensor is built, as torch does."""


def _need_torch(what: str) -> None:
    if torch is None:
        raise ImportError(f"ckpt: {what} needs torch, which is not installed; "
                          "use framework=\"np\" for numpy arrays")


def _open_options(permissive: bool, verify: bool = False,
                  torchscript_weights: bool = False) -> "_lib.OpenOptions":
    flags = (_lib.OPEN_PERMISSIVE if permissive else 0) | (_lib.OPEN_VERIFY_CRC if verify else 0)
    if torchscript_weights:
        flags |= _lib.OPEN_TORCHSCRIPT_WEIGHTS
    return _lib.open_options(flags)


class Source:
    """An open ckpt_file and the buffer its tensors may borrow from.

    ``buf`` is the private map (or bytearray) the file was opened over, or
    None when libckpt opened the path itself (then every tensor is copied).
    """

    def __init__(self, f: Any, *, mmap: bool = True, permissive: bool = False,
                 verify: bool = False, torchscript_weights: bool = False) -> None:
        self.handle = ctypes.c_void_p()
        self.buf: Any = None
        self.base = 0
        self.size = 0
        self._cview: Any = None
        self.fd: Optional[int] = None
        self.name = _display_name(f)
        opts = _open_options(permissive, verify, torchscript_weights)
        err = _lib.Error_()
        path = os.fspath(f) if isinstance(f, (str, bytes, os.PathLike)) else None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        fd = None
        by_path = False
        try:
            if path is not None:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                by_path = _opened_by_path(fd, path)
            if by_path:
                os.close(fd)
                fd = None
            elif path is not None:
                buf = _map_fd(fd)
                if buf is None:  # empty, or not a regular file: read, never pread
                    buf = _read_fd(fd)
                    os.close(fd)
                    fd = None
            else:
                buf = self._map(f)
        except OSError as e:
            if fd is not None:
                os.close(fd)
            what = e.strerror if isinstance(e, _MapError) else f"cannot open: {e.strerror or e}"
            raise _err.IOError(f"{self.name}: {what}", path=self.name, detail=what) from None
        if by_path:
            # a sharded index or a DCP directory: libckpt opens the files it
            # names (shards, .distcp items); tensors are copied
            st = lib.ckpt_open(path.encode(), ctypes.byref(opts), ctypes.byref(self.handle),
                               ctypes.byref(err))
            _err.check(st, err, self.name)
            return
        size = len(buf)
        if size:
            self._cview = (ctypes.c_char * size).from_buffer(buf)
            addr = ctypes.addressof(self._cview)
        else:
            addr = None
        st = lib.ckpt_open_memory(addr, size, ctypes.byref(opts), ctypes.byref(self.handle),
                                  ctypes.byref(err))
        if st != _lib.OK:
            self._cview = None
            if fd is not None:
                os.close(fd)
            _err.check(st, err, self.name)
        if mmap:
            self.buf = buf
            if fd is not None:
                os.close(fd)
        else:
            # mmap=False: plainly stored storages are read with pread from the
            # file the map shows (the same inode), the rest copied from the map
            self.fd = fd
        self.base = addr or 0
        self.size = size

    @classmethod
    def from_handle(cls, handle: "ctypes.c_void_p", name: str) -> "Source":
        """A Source over a ckpt_file opened elsewhere (its tensors are copied)."""
        self = cls.__new__(cls)
        self.handle = handle
        self.buf = None
        self.base = self.size = 0
        self._cview = None
        self.fd = None
        self.name = name
        return self

    @staticmethod
    def _map(f: Any) -> Any:
        fileno = getattr(f, "fileno", None)
        if fileno is not None:
            try:
                fd = fileno()
            except (OSError, ValueError, AttributeError):
                fd = None
            if fd is not None:
                try:
                    pos = f.tell()  # read from where f stands, as torch.load does
                except (OSError, ValueError, AttributeError):
                    pos = 0
                m = _map_fd(fd, pos)
                if m is not None:
                    return m
        read = getattr(f, "read", None)
        if read is None:
            raise TypeError(f"ckpt: expected a path or a file object, got {type(f).__name__}")
        data = read()
        if isinstance(data, str):
            raise TypeError("ckpt: the file object must be opened in binary mode")
        return bytearray(data)

    def close(self) -> None:
        """Closes the ckpt_file; tensors already made stay valid."""
        if self.handle:
            lib.ckpt_close(self.handle)
            self.handle = ctypes.c_void_p()
        self._cview = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _fresh(nbytes: int, as_numpy: bool) -> Tuple[Any, memoryview]:
    """Fresh memory for a storage read with mmap=False (torch.empty or
    numpy.empty), and a memoryview to read into. No huge-page advice: when
    free huge pages are short each fault compacts memory first, which made
    reads of 8 MiB storages several times slower on a busy machine."""
    if as_numpy:
        u8 = np.empty(nbytes, dtype=np.uint8)
        return u8, memoryview(u8)
    u8 = torch.empty(nbytes, dtype=torch.uint8)
    return u8, memoryview(u8.numpy())


_libc = ctypes.CDLL(None, use_errno=True)
_c_mmap = getattr(_libc, "mmap64", None) or _libc.mmap
_c_mmap.restype = ctypes.c_void_p
_c_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                    ctypes.c_int64)
_c_munmap = _libc.munmap
_c_munmap.restype = ctypes.c_int
_c_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


class _MapError(OSError):
    """A regular file that could not be mapped."""


def _map_fd(fd: int, offset: int = 0) -> Any:
    """A private copy-on-write map of the file open on fd, from byte offset
    to its end, as a ctypes char array: the map is unmapped when the array
    goes (the last tensor over it), and holds no descriptor (Python's
    mmap.mmap keeps a duplicate open for as long as the map lives). None
    when fd is not a regular file or nothing follows offset; _MapError when
    the file cannot be mapped."""
    st = os.fstat(fd)
    size = st.st_size
    if not stat.S_ISREG(st.st_mode) or size <= offset:
        return None
    addr = _c_mmap(None, size, _mmap.PROT_READ | _mmap.PROT_WRITE, _mmap.MAP_PRIVATE, fd, 0)
    if not addr or addr == _MAP_FAILED:
        e = ctypes.get_errno()
        raise _MapError(e, f"cannot map its {size} bytes: {os.strerror(e)}")
    buf = (ctypes.c_char * (size - offset)).from_address(addr + offset)
    weakref.finalize(buf, _c_munmap, addr, size).atexit = False  # tensors may outlive atexit
    return buf


def _read_fd(fd: int) -> bytearray:
    """The rest of a file that is not mapped (a pipe, a character device)."""
    out = bytearray()
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return out
        out += chunk


def _opened_by_path(fd: int, path: str) -> bool:
    """A PyTorch Distributed Checkpoint (its directory, or its .metadata) or
    a sharded index (JSON) is opened by path: the files it names are read
    too. Told from the descriptor already open, without opening it again."""
    if stat.S_ISDIR(os.fstat(fd).st_mode) or os.path.basename(path) == ".metadata":
        return True
    try:
        head = os.pread(fd, 64, 0)
    except OSError:
        return False
    return head.lstrip().startswith(b"{")


def _display_name(f: Any) -> str:
    if isinstance(f, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(f))
    return str(getattr(f, "name", "<file object>"))


_tensor_data = lib.ckpt_tensor_data
_value_kind = lib.ckpt_value_kind
_value_key = lib.ckpt_value_key
_value_dict_value = lib.ckpt_value_dict_value
_value_tensor = lib.ckpt_value_tensor
_intern = sys.intern
# ckpt_value_str as a char * result: the text up to its first NUL, in one call
_value_cstr = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_void_p,
                               ctypes.POINTER(ctypes.c_size_t))(("ckpt_value_str", lib))


def tensor_info(t: int) -> "_lib.TensorInfo":
    ti = _lib.TensorInfo()
    ti.struct_size = ctypes.sizeof(ti)
    lib.ckpt_tensor_get_info(t, ctypes.byref(ti))
    return ti


def dtype_name(d: int) -> str:
    return _lib.cstr(lib.ckpt_dtype_name(d)) or "invalid"


class Converter:
    """Turns a file's values into Python objects (framework "pt" or "np")."""

    def __init__(self, src: Source, framework: str = "pt", map_location: Any = None,
                 permissive: bool = False, copy: bool = False) -> None:
        if framework not in ("pt", "np"):
            raise ValueError(f"ckpt: framework must be \"pt\" or \"np\", not {framework!r}")
        if framework == "pt":
            _need_torch("framework=\"pt\"")
        self.src = src
        self.np = framework == "np"
        self.map_location = map_location
        self.permissive = permissive
        self.copy = copy or src.buf is None
        self.memo: Dict[int, Any] = {}
        self.storages: Dict[Tuple[int, int], Any] = {}   # (start, nbytes) -> uint8 base
        self.typed: Dict[Tuple[int, int, int], Any] = {}  # + dtype -> typed base
        self.devices: Dict[Tuple[int, int], Any] = {}
        self.tensor_paths: Optional[Dict[int, str]] = None
        self.infos: Dict[int, Any] = {}
        self.dtypes: Dict[int, tuple] = {}
        self.locations: Dict[Optional[bytes], str] = {}
        self._ptr = ctypes.c_void_p()
        self._zc = ctypes.c_bool(False)
        self._err = _lib.Error_()
        self._ptr_ref = ctypes.byref(self._ptr)
        self._len = ctypes.c_size_t(0)
        self._len_ref = ctypes.byref(self._len)
        self._zc_ref = ctypes.byref(self._zc)
        self._err_ref = ctypes.byref(self._err)

    # -- devices ---------------------------------------------------------

    def target(self, location: str) -> Optional[str]:
        """The device a tensor saved at location goes to (None: decided by a
        callable map_location on the storage)."""
        ml = self.map_location
        if self.np:
            return "cpu"
        if ml is None:
            return location
        if isinstance(ml, str):
            return ml
        if torch is not None and isinstance(ml, torch.device):
            return str(ml)
        if isinstance(ml, dict):
            return str(ml.get(location, location))
        if callable(ml):
            return None
        raise TypeError("ckpt: map_location must be a str, a torch.device, a dict of str to "
                        f"str or a callable, not {type(ml).__name__}")

    def check_devices(self, tensors) -> None:
        """Refuses absent devices before any tensor is built."""
        if self.np:
            if self.map_location not in (None, "cpu"):
                raise ValueError("ckpt: framework=\"np\" reads onto the host only "
                                 f"(map_location={self.map_location!r})")
            return
        seen = set()
        for t in tensors:
            ti = tensor_info(t)
            self.infos[t] = ti
            loc = self._location(ti.location)
            dev = self.target(loc)
            if dev is None or dev in seen:
                continue
            seen.add(dev)
            check_device(dev, loc, self.src.name)

    # -- values ----------------------------------------------------------

    def value(self, v: int, path: str = "") -> Any:
        if not v:
            return None
        hit = self.memo.get(v)
        if hit is not None or v in self.memo:
            return hit
        kind = lib.ckpt_value_kind(v)
        if kind == _lib.KIND_NONE:
            return None
        if kind == _lib.KIND_BOOL:
            return bool(lib.ckpt_value_bool(v))
        if kind == _lib.KIND_INT:
            return int(lib.ckpt_value_int(v))
        if kind == _lib.KIND_FLOAT:
            return float(lib.ckpt_value_float(v))
        if kind == _lib.KIND_STR:
            return self._text(v)
        if kind == _lib.KIND_BYTES:
            out = _lib.value_bytes(v)
            if _repr(v).startswith("bytearray"):
                out = bytearray(out)
        elif kind == _lib.KIND_BIGINT:
            out = int.from_bytes(_lib.value_bytes(v), "little", signed=True)
        elif kind == _lib.KIND_COMPLEX:
            re_, im = ctypes.c_double(), ctypes.c_double()
            lib.ckpt_value_complex(v, ctypes.byref(re_), ctypes.byref(im))
            out = complex(re_.value, im.value)
        elif kind == _lib.KIND_LIST:
            out = []
            self.memo[v] = out
            n = lib.ckpt_value_len(v)
            for i in range(n):
                out.append(self.value(lib.ckpt_value_item(v, i), self._sub(path, str(i))))
            return out
        elif kind == _lib.KIND_TUPLE:
            n = lib.ckpt_value_len(v)
            out = tuple(self.value(lib.ckpt_value_item(v, i), self._sub(path, str(i)))
                        for i in range(n))
        elif kind == _lib.KIND_SET:
            n = lib.ckpt_value_len(v)
            items = [self.value(lib.ckpt_value_item(v, i), self._sub(path, str(i)))
                     for i in range(n)]
            out = frozenset(items) if _repr(v).startswith("frozenset") else set(items)
        elif kind in (_lib.KIND_DICT, _lib.KIND_ORDERED_DICT):
            out = collections.OrderedDict() if kind == _lib.KIND_ORDERED_DICT else {}
            self.memo[v] = out
            n = lib.ckpt_value_len(v)
            memo = self.memo
            paths = self.tensor_paths is not None
            for i in range(n):  # the hot loop of a state dict: text keys, tensor values
                kv = _value_key(v, i)
                # one interned string per key text, as the pickle's memo gives torch
                key = (_intern(self._text(kv)) if _value_kind(kv) == _lib.KIND_STR
                       else self.value(kv))
                vv = _value_dict_value(v, i)
                item = memo.get(vv)
                if item is None:
                    if not paths and _value_kind(vv) == _lib.KIND_TENSOR:
                        item = self.tensor(_value_tensor(vv), vv)
                        memo[vv] = item
                    else:
                        item = self.value(vv, self._sub(path, _key_text(kv)) if paths else "")
                out[key] = item
            if kind == _lib.KIND_ORDERED_DICT:
                state = lib.ckpt_value_state(v)
                if state:
                    st = self.value(state)
                    if isinstance(st, dict):
                        for k, a in st.items():
                            if isinstance(k, str):
                                setattr(out, k, a)
            return out
        elif kind == _lib.KIND_SIZE:
            n = lib.ckpt_value_len(v)
            dims = tuple(int(lib.ckpt_value_int(lib.ckpt_value_item(v, i))) for i in range(n))
            out = dims if self.np else torch.Size(dims)
        elif kind == _lib.KIND_DEVICE:
            text = _lib.value_bytes(v).decode()
            out = text if self.np else torch.device(text)
        elif kind == _lib.KIND_DTYPE:
            name = dtype_name(lib.ckpt_value_dtype(v))
            out = name if self.np else self.torch_dtype(name)
        elif kind == _lib.KIND_TENSOR:
            out = self.tensor(lib.ckpt_value_tensor(v), v)
        elif kind == _lib.KIND_GLOBAL:
            out = self.global_(_lib.value_bytes(v).decode("utf-8", "replace"))
        elif kind == _lib.KIND_OBJECT:
            out = self.object_(v, path)
        else:  # pragma: no cover - a newer library's kind
            raise _err.make(_err.UnsupportedError,
                            f"value kind {_lib.cstr(lib.ckpt_kind_name(kind))} is not read "
                            "by this version of the package", self.src.name)
        self.memo[v] = out
        return out

    def _text(self, v: int) -> str:
        """A STR value's text."""
        b = _value_cstr(v, self._len_ref)
        if b is None or len(b) != self._len.value:  # NULs inside
            b = _lib.value_bytes(v)
        return b.decode("utf-8", "surrogatepass")

    def _sub(self, path: str, part: str) -> str:
        if self.tensor_paths is None:
            return ""
        return f"{path}.{part}" if path else part

    def global_(self, name: str) -> Any:
        if not self.np and name.startswith("torch."):
            obj: Any = torch
            for part in name.split(".")[1:]:
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if obj is not None and not callable(obj):
                return obj
        return Global(name)

    def object_(self, v: int, path: str) -> Any:
        """An inert object (permissive): a pickled module becomes its state
        dict, as its tensors' names give it; anything else an InertObject."""
        cls = _lib.value_bytes(v).decode("utf-8", "replace")
        if self.tensor_paths is not None:
            prefix = path + "." if path else ""
            sd = collections.OrderedDict()
            for t, name in self.tensor_paths.items():
                if name.startswith(prefix):
                    sd[name[len(prefix):]] = self.tensor(t)
            if sd:
                return sd
        return InertObject(cls, self.value(lib.ckpt_value_object_args(v)),
                           self.value(lib.ckpt_value_object_kwargs(v)),
                           self.value(lib.ckpt_value_state(v)),
                           self.value(lib.ckpt_value_object_dict(v)),
                           self.value(lib.ckpt_value_object_items(v)))

    def torch_dtype(self, name: str) -> Any:
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            raise _err.make(_err.UnsupportedError,
                            f"dtype {name} has no torch.dtype in torch {torch.__version__}; "
                            "read it with framework=\"np\" (raw bytes)", self.src.name)
        return dt

    # -- tensors ---------------------------------------------------------

    def tensor(self, t: int, v: int = 0) -> Any:
        """The tensor of ckpt_tensor t; v is the tree's value holding it
        (its state: a quantized tensor's quantizer parameters)."""
        hit = self.memo.get(t)
        if hit is not None:
            return hit
        ti = self.infos.pop(t, None)
        if ti is None:
            ti = tensor_info(t)
        if ti.layout != _lib.LAYOUT_STRIDED:
            out = self.sparse(t, ti)
        else:
            out = self.strided(t, ti)
            if not self.np and self._dtype(ti.dtype)[0] in _QUANT_INT:
                out = self.quantized(out, ti, t, v)
        if not self.np:
            if ti.is_parameter:
                out = torch.nn.Parameter(out, requires_grad=bool(ti.requires_grad))
            elif ti.requires_grad and (out.is_floating_point() or out.is_complex()):
                out.requires_grad_(True)
        self.memo[t] = out
        return out

    def _data(self, t: int) -> Tuple[int, bool]:
        st = _tensor_data(self.src.handle, t, self._ptr_ref, self._zc_ref, self._err_ref)
        if st != _lib.OK:
            _err.check(st, self._err, self.src.name)
        return self._ptr.value or 0, self._zc.value

    def _dtype(self, d: int) -> tuple:
        """(name, element size, torch dtype or numpy type, raw) of a ckpt dtype."""
        hit = self.dtypes.get(d)
        if hit is not None:
            return hit
        name = dtype_name(d)
        elsize = lib.ckpt_dtype_size(d)
        raw = False
        if self.np:
            typ = _NP_TYPES.get(name)
            raw = typ is None
            if raw:
                typ = _RAW_BY_SIZE.get(elsize)
                if typ is None:
                    raise _err.make(_err.UnsupportedError,
                                    f"dtype {name} ({lib.ckpt_dtype_bits(d)} bits per "
                                    "element) has no numpy view", self.src.name)
        else:
            # a quantized tensor's integers, made quantized by Converter.quantized
            typ = self.torch_dtype(_QUANT_INT.get(name, name))
            if elsize == 0:
                raise _err.make(_err.UnsupportedError, f"sub-byte dtype {name} is not read",
                                self.src.name)
        out = (name, elsize, typ, raw)
        self.dtypes[d] = out
        return out

    def _location(self, raw: Optional[bytes]) -> str:
        loc = self.locations.get(raw)
        if loc is None:
            loc = raw.decode("utf-8", "replace") if raw else "cpu"
            self.locations[raw] = loc
        return loc

    def strided(self, t: int, ti: "_lib.TensorInfo") -> Any:
        name, elsize, typ, raw = self._dtype(ti.dtype)
        nd = ti.ndim
        shape = tuple(ti.shape[:nd])
        stride = tuple(ti.stride[:nd])
        loc = self._location(ti.location)
        if not ti.has_storage:
            if self.np:
                raise _err.make(_err.UnsupportedError,
                                "a meta tensor (no storage) has no numpy array", self.src.name)
            return torch.empty_strided(shape, stride, dtype=typ, device="meta")
        nbytes = ti.storage_nbytes
        foff = ti.storage_file_offset
        if (self.src.fd is not None and nbytes and foff != _lib.NO_OFFSET
                and not ti.big_endian and self.copy):
            return self._pread_view(ti, foff, nbytes, shape, stride, typ, elsize, name, raw,
                                    loc)
        ptr, zc = self._data(t) if nbytes else (0, False)
        if not ptr:
            if self.np:
                return np.empty(shape, dtype=typ)
            return self._place(torch.empty_strided(shape, stride, dtype=typ), loc)
        offset = ti.storage_offset
        start = ptr - offset * elsize
        if nbytes % elsize:
            raise _err.make(_err.FormatError,
                            f"storage {_lib.cstr(ti.storage_key)} of {nbytes} bytes does not "
                            f"hold whole {name} elements", self.src.name)
        tkey = (start, nbytes, ti.dtype)
        typed = self.typed.get(tkey)
        if typed is None:
            typed = self._typed(start, nbytes, zc, loc, typ, elsize)
            self.typed[tkey] = typed
        if self.np:
            itemsize = typed.itemsize
            arr = np.lib.stride_tricks.as_strided(
                typed[offset:], shape=shape, strides=tuple(s * itemsize for s in stride))
            if raw:
                arr = arr.view(RawArray)
                arr.ckpt_dtype = name
            return arr
        return typed.as_strided(shape, stride, offset)

    def _pread_view(self, ti, foff: int, nbytes: int, shape, stride, typ, elsize: int,
                    name: str, raw: bool, loc: str) -> Any:
        """mmap=False: a plainly stored storage read with pread into fresh
        memory (no map, no second copy), shared by its views."""
        if nbytes % elsize:
            raise _err.make(_err.FormatError,
                            f"storage {_lib.cstr(ti.storage_key)} of {nbytes} bytes does not "
                            f"hold whole {name} elements", self.src.name)
        key = ("file", foff, nbytes)
        tkey = ("file", foff, nbytes, ti.dtype)
        typed = self.typed.get(tkey)
        if typed is None:
            other = self.storages.get(key)
            if other is not None:
                typed = other.view(np.uint8 if self.np else torch.uint8).view(typ)
            else:
                u8, mv = _fresh(nbytes, self.np)
                done = 0
                while done < nbytes:
                    n = os.preadv(self.src.fd, [mv[done:]], foff + done)
                    if n <= 0:
                        raise _err.make(_err.IOError,
                                        f"{_lib.cstr(ti.record)}: the file ends inside the "
                                        f"storage ({done} of {nbytes} bytes at {foff})",
                                        self.src.name)
                    done += n
                if not self.np:
                    u8 = self._place(u8, loc)
                typed = u8.view(typ)
                self.storages[key] = typed
            self.typed[tkey] = typed
        offset = ti.storage_offset
        if self.np:
            itemsize = typed.itemsize
            arr = np.lib.stride_tricks.as_strided(
                typed[offset:], shape=shape, strides=tuple(s * itemsize for s in stride))
            if raw:
                arr = arr.view(RawArray)
                arr.ckpt_dtype = name
            return arr
        return typed.as_strided(shape, stride, offset)

    def _typed(self, start: int, nbytes: int, zc: bool, loc: str, typ: Any,
               elsize: int) -> Any:
        """A storage as a 1-D array of typ: one storage per (start, size),
        shared by every dtype that views it."""
        key = (start, nbytes)
        other = self.storages.get(key)
        if other is not None:
            u8 = other.view(np.uint8 if self.np else torch.uint8)
            return u8.view(typ)
        src = self.src
        in_map = (zc and not self.copy and src.base <= start
                  and start + nbytes <= src.base + src.size)
        if (in_map and not self.np and self.target(loc) == "cpu"):
            typed = torch.frombuffer(src.buf, dtype=typ, count=nbytes // elsize,
                                     offset=start - src.base)
        else:
            typed = self._storage(start, nbytes, zc, loc).view(typ)
        self.storages[key] = typed
        return typed

    def _storage(self, start: int, nbytes: int, zc: bool, loc: str) -> Any:
        """A 1-D uint8 array of a storage's bytes: a view of the map when
        the bytes are there, else a copy."""
        src = self.src
        in_map = (zc and not self.copy and src.base <= start
                  and start + nbytes <= src.base + src.size)
        if self.np:
            if in_map:
                return np.frombuffer(src.buf, dtype=np.uint8, count=nbytes,
                                     offset=start - src.base)
            out, _ = _fresh(nbytes, True)
            ctypes.memmove(out.ctypes.data, start, nbytes)
            return out
        if in_map:
            base = torch.frombuffer(src.buf, dtype=torch.uint8, count=nbytes,
                                    offset=start - src.base)
        else:
            base, _ = _fresh(nbytes, False)
            ctypes.memmove(base.data_ptr(), start, nbytes)
        return self._place(base, loc)

    def _place(self, base: Any, loc: str) -> Any:
        dev = self.target(loc)
        if dev is None:  # a callable map_location decides from the storage
            res = self.map_location(_storage_of(base), loc)
            dev = loc if res is None else str(getattr(res, "device", "cpu"))
            check_device(dev, loc, self.src.name)
        if dev != "cpu":
            base = base.to(torch.device(dev))
        return base

    def quantized(self, ints: Any, ti: "_lib.TensorInfo", t: int, v: int) -> Any:
        """The quantized tensor over ints' storage (its integers, strides and
        offset), with the quantizer parameters the file gave as the tensor
        value's state, as torch's _rebuild_qtensor makes it."""
        name = self._dtype(ti.dtype)[0]
        if not v:  # reached by name (safe_open): the file's value of it
            h = self.src.handle
            for i in range(lib.ckpt_file_tensor_count(h)):
                if lib.ckpt_file_tensor(h, i, None) == t:
                    v = lib.ckpt_file_tensor_value(h, i)
                    break
        state = lib.ckpt_value_state(v) if v else None
        params = self.value(state) if state else None
        if not isinstance(params, tuple) or len(params) < 3:
            raise _err.make(_err.UnsupportedError,
                            f"a quantized tensor ({name}) without its quantizer parameters; "
                            "read its integer values with framework=\"np\"", self.src.name)
        qdtype = self.torch_dtype(name)
        qscheme = params[0]
        size = tuple(ints.shape)
        try:
            if qscheme == torch.per_tensor_affine:
                q = torch._empty_affine_quantized(size, scale=float(params[1]),
                                                  zero_point=int(params[2]), dtype=qdtype,
                                                  device=ints.device)
            elif qscheme in (torch.per_channel_affine,
                             torch.per_channel_affine_float_qparams) and len(params) == 4:
                _, scales, zero_points, axis = params
                if isinstance(scales, list) and isinstance(zero_points, list):
                    fl = qscheme == torch.per_channel_affine_float_qparams
                    scales = torch.tensor(scales, dtype=torch.float if fl else torch.double)
                    zero_points = torch.tensor(zero_points,
                                               dtype=torch.float if fl else torch.long)
                q = torch._empty_per_channel_affine_quantized(
                    size, scales=scales, zero_points=zero_points, axis=int(axis), dtype=qdtype,
                    device=ints.device)
            else:
                raise _err.make(_err.UnsupportedError,
                                f"a quantized tensor ({name}) with qscheme {qscheme!r}",
                                self.src.name)
            if hasattr(ints, "untyped_storage"):
                storage = ints.untyped_storage()
            else:  # torch 1.13: a typed storage of the quantized dtype
                typed = ints.storage()
                untyped = getattr(typed, "untyped", None) or typed._untyped
                storage = torch.TypedStorage(wrap_storage=untyped(), dtype=qdtype)
            q.set_(storage, ints.storage_offset(), size, tuple(ints.stride()))
        except (RuntimeError, TypeError, ValueError) as e:
            raise _err.make(_err.FormatError, f"a quantized tensor ({name}): {e}",
                            self.src.name) from None
        return q

    def sparse(self, t: int, ti: "_lib.TensorInfo") -> Any:
        if self.np:
            raise _err.make(_err.UnsupportedError,
                            "sparse tensors have no numpy form; use framework=\"pt\"",
                            self.src.name)
        parts = []
        i = 0
        while True:
            p = lib.ckpt_tensor_sparse_part(t, i)
            if not p:
                break
            parts.append(self.tensor(p))
            i += 1
        shape = tuple(ti.shape[i] for i in range(ti.ndim))
        layout = ti.layout
        if layout == _lib.LAYOUT_SPARSE_COO:
            return torch.sparse_coo_tensor(parts[0], parts[1], shape)
        ctor = {_lib.LAYOUT_SPARSE_CSR: "sparse_csr_tensor",
                _lib.LAYOUT_SPARSE_CSC: "sparse_csc_tensor",
                _lib.LAYOUT_SPARSE_BSR: "sparse_bsr_tensor",
                _lib.LAYOUT_SPARSE_BSC: "sparse_bsc_tensor"}.get(layout)
        fn = getattr(torch, ctor, None) if ctor else None
        if fn is None or len(parts) != 3:
            raise _err.make(_err.UnsupportedError,
                            f"layout {_lib.cstr(lib.ckpt_layout_name(layout))} is not read "
                            f"with torch {torch.__version__}", self.src.name)
        return fn(parts[0], parts[1], parts[2], shape)


def _storage_of(base: Any) -> Any:
    st = getattr(base, "untyped_storage", None)
    return st() if st is not None else base.storage()


def check_device(dev: str, saved: str, name: str) -> None:
    """Raises DeviceError when dev is not available here."""
    try:
        d = torch.device(dev)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{name}: map_location: {e}", path=name) from None
    if d.type in ("cpu", "meta"):
        return
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{name}: a tensor saved on {saved} would be restored on {dev}, but "
                "torch.cuda.is_available() is False; pass map_location=\"cpu\" (or "
                "torch.device(\"cpu\")) to load it onto the host", path=name)
        idx = d.index or 0
        if idx >= torch.cuda.device_count():
            raise DeviceError(
                f"{name}: a tensor saved on {saved} would be restored on {dev}, but there are "
                f"{torch.cuda.device_count()} CUDA devices; map it with map_location "
                f"({{\"{dev}\": \"cuda:0\"}})", path=name)
        return
    mod = getattr(torch, d.type, None)
    avail = getattr(mod, "is_available", None)
    if avail is None or not avail():
        raise DeviceError(f"{name}: device {dev} (saved as {saved}) is not available here; "
                          "pass map_location=\"cpu\"", path=name)


def _repr(v: int) -> str:
    buf = ctypes.create_string_buffer(16)
    lib.ckpt_value_repr(v, buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def _key_text(kv: int) -> str:
    if lib.ckpt_value_kind(kv) == _lib.KIND_STR:
        return _lib.value_bytes(kv).decode("utf-8", "surrogatepass")
    buf = ctypes.create_string_buffer(4096)
    lib.ckpt_value_key_text(kv, buf, len(buf))
    return buf.value.decode("utf-8", "replace")


def find_key(root: int, key: str, name: str) -> int:
    """The value at a dotted path of dict keys (the longest key the rest of
    the path starts with, at each level, so keys may hold dots)."""
    v = root
    rest = key
    while rest:
        kind = lib.ckpt_value_kind(v)
        if kind not in (_lib.KIND_DICT, _lib.KIND_ORDERED_DICT):
            raise _err.make(_err.NotFoundError, f"key {key!r}: {rest!r} is inside a "
                            f"{_lib.cstr(lib.ckpt_kind_name(kind))}, not a dict", name)
        best = None
        blen = -1
        for i in range(lib.ckpt_value_len(v)):
            kv = lib.ckpt_value_key(v, i)
            if lib.ckpt_value_kind(kv) != _lib.KIND_STR:
                continue
            k = _lib.value_bytes(kv).decode("utf-8", "surrogatepass")
            if (rest == k or rest.startswith(k + ".")) and len(k) > blen:
                best, blen = i, len(k)
        if best is None:
            raise _err.make(_err.NotFoundError, f"key {key!r}: no entry {rest!r}", name)
        v = lib.ckpt_value_dict_value(v, best)
        rest = rest[blen + 1:]
    return v


def tensors_under(src: Source, v: int) -> list:
    """Every ckpt_tensor reachable from v (for the device check)."""
    out = []
    seen = set()
    stack = [v]
    while stack:
        x = stack.pop()
        if not x or x in seen:
            continue
        seen.add(x)
        kind = lib.ckpt_value_kind(x)
        if kind == _lib.KIND_TENSOR:
            out.append(lib.ckpt_value_tensor(x))
        elif kind in (_lib.KIND_LIST, _lib.KIND_TUPLE, _lib.KIND_SET):
            stack.extend(lib.ckpt_value_item(x, i) for i in range(lib.ckpt_value_len(x)))
        elif kind in (_lib.KIND_DICT, _lib.KIND_ORDERED_DICT):
            stack.extend(lib.ckpt_value_dict_value(x, i) for i in range(lib.ckpt_value_len(x)))
        elif kind == _lib.KIND_OBJECT:
            stack.extend((lib.ckpt_value_object_args(x), lib.ckpt_value_object_kwargs(x),
                          lib.ckpt_value_state(x), lib.ckpt_value_object_dict(x),
                          lib.ckpt_value_object_items(x)))
    return out


def all_tensors(src: Source) -> list:
    n = lib.ckpt_file_tensor_count(src.handle)
    return [lib.ckpt_file_tensor(src.handle, i, None) for i in range(n)]


def tensor_names(src: Source) -> list:
    """(name, ckpt_tensor) of every tensor, in file order."""
    out = []
    name = ctypes.c_char_p()
    for i in range(lib.ckpt_file_tensor_count(src.handle)):
        t = lib.ckpt_file_tensor(src.handle, i, ctypes.byref(name))
        out.append((name.value.decode("utf-8", "surrogateescape"), t))
    return out


def load(f: Any, map_location: Any, mmap: bool, key: Optional[str], permissive: bool,
         framework: str, torchscript_weights: bool = False) -> Any:
    src = Source(f, mmap=mmap, permissive=permissive, torchscript_weights=torchscript_weights)
    try:
        conv = Converter(src, framework, map_location, permissive, copy=not mmap)
        root = lib.ckpt_file_root(src.handle)
        if key:
            root = find_key(root, key, src.name)
        if permissive:
            conv.tensor_paths = {t: n for n, t in tensor_names(src)}
        old = sys.getrecursionlimit()
        if old < 20000:
            sys.setrecursionlimit(20000)
        collecting = gc.isenabled()
        gc.disable()
        try:
            out = _flat_load(conv, root) if _HAS_FLAT else _SLOW
        finally:
            if collecting:
                gc.enable()
            sys.setrecursionlimit(old)
        if out is not _SLOW:
            return out
        conv.check_devices(tensors_under(src, root) if key else all_tensors(src))
        old = sys.getrecursionlimit()
        if old < 20000:
            sys.setrecursionlimit(20000)
        # the tree makes no cycles the collector must find while it is built;
        # pausing it spares a tenth of the time of a many-tensor load
        collecting = gc.isenabled()
        gc.disable()
        try:
            return conv.value(root, key or "")
        finally:
            if collecting:
                gc.enable()
            sys.setrecursionlimit(old)
    finally:
        src.close()



# ---- the one-call path: ckpt_value_flatten ----------------------------------

_HAS_FLAT = _lib.has("ckpt_value_flatten")
_SMALL_COPY = 1 << 20
_SLOW = object()
_unpack_double = struct.Struct("<d").unpack
_pack_int64 = struct.Struct("<q").pack


def _words(ptr: int, count: int) -> Any:
    """count int64 words at ptr, copied into a numpy array."""
    if not count:
        return np.zeros(0, dtype=np.int64)
    return np.frombuffer(ctypes.string_at(ptr, count * 8), dtype=np.int64)


# ckpt dtype names numpy views directly (torch.from_numpy takes them), and
# the ones viewed through an integer of their width, then as the torch dtype
_FAST_NP = {"float64": np.float64, "float32": np.float32, "float16": np.float16,
            "complex128": np.complex128, "complex64": np.complex64, "int64": np.int64,
            "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8,
            "bool": np.bool_}
_FAST_VIEW = {"bfloat16": np.int16, "float8_e4m3fn": np.uint8, "float8_e5m2": np.uint8}


def _fast_dtype(conv: Converter, d: int) -> Any:
    """(numpy dtype, torch dtype to view it as or None) of ckpt dtype d, or
    None when torch.from_numpy cannot make it."""
    name = dtype_name(d)
    typ = _FAST_NP.get(name)
    if typ is not None:
        return np.dtype(typ), None
    typ = _FAST_VIEW.get(name)
    tdt = getattr(torch, name, None)
    if typ is None or not isinstance(tdt, torch.dtype):
        return None
    return np.dtype(typ), tdt


def _flat_tensors(conv: Converter, rows: Any, dims: list, text: bytes) -> list:
    """The tensors of ckpt_value_flatten's rows: a storage that one tensor
    covers whole, in the map, becomes that tensor's own storage over the
    map through numpy (one call each); the rest go through Converter.tensor."""
    src = conv.src
    n = len(rows)
    out: list = [None] * n
    if not n:
        return out
    flags = rows[:, _lib.FLAT_T_FLAGS]
    data = rows[:, _lib.FLAT_T_DATA]
    nbytes = rows[:, _lib.FLAT_T_NBYTES]
    need = _lib.FLAT_TF_ZERO_COPY | _lib.FLAT_TF_STORAGE | _lib.FLAT_TF_CONTIGUOUS
    # a storage shared by several tensors keeps the shared path (one base
    # tensor, views of it), as torch shares it
    fast = ((flags & (need | _lib.FLAT_TF_STORAGE_VIEW | _lib.FLAT_TF_PARAMETER |
                      _lib.FLAT_TF_SHARED)) == need)
    fast &= rows[:, _lib.FLAT_T_STORAGE_OFFSET] == 0
    fast &= nbytes == rows[:, _lib.FLAT_T_STORAGE_NBYTES]
    fast &= nbytes > 0
    # mmap=False: small storages are copied out of the map the file was
    # parsed from (big ones keep the pread path, into fresh huge pages)
    mapped = src.buf if not conv.copy else src._cview if src.fd is not None else None
    if mapped is None:
        fast[:] = False
    else:
        fast &= (data >= src.base) & (data - src.base <= src.size - nbytes)
        if conv.copy:
            fast &= nbytes < _SMALL_COPY
    # devices: refused before any tensor is made, as torch does
    locs = rows[:, _lib.FLAT_T_LOCATION]
    seen = set()
    for off in ([int(locs[0])] if (locs == locs[0]).all() else np.unique(locs).tolist()):
        i = int(np.argmax(locs == off))
        ln = int(rows[i, _lib.FLAT_T_LOCATION_LEN])
        loc = text[off:off + ln].decode("utf-8", "replace")
        dev = conv.target(loc)
        if dev != "cpu":
            fast &= locs != off
        if dev is not None and dev not in seen:
            seen.add(dev)
            check_device(dev, loc, src.name)
    dts = rows[:, _lib.FLAT_T_DTYPE]
    kinds = {}
    for d in np.unique(dts[fast]).tolist():
        kind = _fast_dtype(conv, d)
        if kind is None:
            fast &= dts != d
        else:
            kinds[d] = kind
    idx = np.flatnonzero(fast)
    if len(idx):
        ndarray = np.ndarray
        buf = mapped
        sel = rows[idx]
        offs = (sel[:, _lib.FLAT_T_DATA] - src.base).tolist()
        shapes = [tuple(dims[at:at + nd]) for at, nd in
                  zip(sel[:, _lib.FLAT_T_DIMS].tolist(), sel[:, _lib.FLAT_T_NDIM].tolist())]
        sel_dts = sel[:, _lib.FLAT_T_DTYPE]
        npdts = {d: k[0] for d, k in kinds.items()}
        if len(npdts) == 1:
            npdt = next(iter(npdts.values()))
            arrays = [ndarray(shape, npdt, buf, off) for shape, off in zip(shapes, offs)]
        else:
            arrays = [ndarray(shape, npdts[d], buf, off)
                      for shape, d, off in zip(shapes, sel_dts.tolist(), offs)]
        # one tensor per storage, over the map: the whole cost of a small
        # tensor is now torch.from_numpy's
        if conv.copy:
            arrays = [a.copy() for a in arrays]
        made = list(map(torch.from_numpy, arrays))
        for d, (_, view) in kinds.items():
            if view is not None:
                for j in np.flatnonzero(sel_dts == d).tolist():
                    made[j] = made[j].view(view)
        for j in np.flatnonzero(sel[:, _lib.FLAT_T_FLAGS] & _lib.FLAT_TF_REQUIRES_GRAD).tolist():
            t = made[j]
            if t.is_floating_point() or t.is_complex():
                t.requires_grad_(True)
        if len(idx) == n:
            out = made
        else:
            for i, t in zip(idx.tolist(), made):
                out[i] = t
    for i in np.flatnonzero(~fast).tolist():
        out[i] = conv.tensor(int(rows[i, _lib.FLAT_T_TENSOR]))
    return out


def _flat_load(conv: Converter, root: int) -> Any:
    """The value at root through one ckpt_value_flatten call, or _SLOW when
    the tree holds what it does not flatten (or numpy arrays are asked)."""
    if conv.np or conv.tensor_paths is not None or callable(conv.map_location):
        return _SLOW
    src = conv.src
    flat = ctypes.c_void_p()
    st = lib.ckpt_value_flatten(src.handle, root, ctypes.byref(flat), conv._err_ref)
    if st == _lib.ERR_UNSUPPORTED:
        return _SLOW
    _err.check(st, conv._err, src.name)
    try:
        fi = _lib.FlatInfo()
        fi.struct_size = ctypes.sizeof(fi)
        lib.ckpt_flat_get_info(flat, ctypes.byref(fi))
        ops = _words(fi.ops, fi.op_count).tolist()
        text = ctypes.string_at(fi.text, fi.text_bytes) if fi.text_bytes else b""
        width = fi.tensor_fields
        rows = _words(fi.tensors, fi.tensor_count * width).reshape(fi.tensor_count, width)
        dims = _words(fi.dims, fi.dim_count).tolist()
    finally:
        lib.ckpt_flat_free(flat)
    tensors = _flat_tensors(conv, rows, dims, text)
    return _Decoder(conv, ops, text, tensors).value()


class _Decoder:
    """Python values of ckpt_value_flatten's ops."""

    def __init__(self, conv: Converter, ops: list, text: bytes, tensors: list) -> None:
        self.conv = conv
        self.ops = ops
        self.text = text
        self.tensors = tensors
        self.pos = 0
        self.objs: Dict[int, Any] = {}

    def _str(self, off: int, n: int) -> str:
        return self.text[off:off + n].decode("utf-8", "surrogatepass")

    def _state(self, out: Any) -> None:
        st = self.value()
        if isinstance(st, dict):
            for k, a in st.items():
                if isinstance(k, str):
                    setattr(out, k, a)

    def value(self) -> Any:
        ops = self.ops
        p = self.pos
        op = ops[p]
        if op == _lib.FLAT_TENSOR:
            self.pos = p + 2
            return self.tensors[ops[p + 1]]
        if op == _lib.FLAT_STR:
            self.pos = p + 3
            return self._str(ops[p + 1], ops[p + 2])
        if op == _lib.FLAT_INT:
            self.pos = p + 2
            return ops[p + 1]
        if op == _lib.FLAT_FLOAT:
            self.pos = p + 2
            return _unpack_double(_pack_int64(ops[p + 1]))[0]
        if op == _lib.FLAT_NONE:
            self.pos = p + 1
            return None
        if op == _lib.FLAT_BOOL:
            self.pos = p + 2
            return bool(ops[p + 1])
        if op == _lib.FLAT_STR_TENSOR_DICT:
            ordered, n, id_, off, ln, row, has_state = ops[p + 1:p + 8]
            self.pos = p + 8
            # interned, as the per-node walk and the pickle memo give torch
            keys = list(map(_intern, self._str(off, ln - 1).split("\0")))
            vals = self.tensors[row:row + n]
            out = collections.OrderedDict(zip(keys, vals)) if ordered else dict(zip(keys, vals))
            self.objs[id_] = out
            if has_state:
                self._state(out)
            return out
        if op in (_lib.FLAT_DICT, _lib.FLAT_ORDERED_DICT):
            n, id_ = ops[p + 1], ops[p + 2]
            ordered = op == _lib.FLAT_ORDERED_DICT
            has_state = ops[p + 3] if ordered else 0
            self.pos = p + (4 if ordered else 3)
            out = collections.OrderedDict() if ordered else {}
            self.objs[id_] = out
            value = self.value
            for _ in range(n):
                k = value()
                if type(k) is str:
                    k = _intern(k)
                out[k] = value()
            if has_state:
                self._state(out)
            return out
        if op == _lib.FLAT_LIST:
            n, id_ = ops[p + 1], ops[p + 2]
            self.pos = p + 3
            out = []
            self.objs[id_] = out
            value = self.value
            for _ in range(n):
                out.append(value())
            return out
        if op == _lib.FLAT_TUPLE:
            n, id_ = ops[p + 1], ops[p + 2]
            self.pos = p + 3
            value = self.value
            out = tuple([value() for _ in range(n)])
            self.objs[id_] = out
            return out
        if op == _lib.FLAT_REF:
            self.pos = p + 2
            return self.objs[ops[p + 1]]
        if op == _lib.FLAT_SIZE:
            n = ops[p + 1]
            self.pos = p + 2 + n
            return torch.Size(ops[p + 2:p + 2 + n])
        if op == _lib.FLAT_DEVICE:
            self.pos = p + 3
            return torch.device(self._str(ops[p + 1], ops[p + 2]))
        if op == _lib.FLAT_DTYPE:
            self.pos = p + 2
            return self.conv.torch_dtype(dtype_name(ops[p + 1]))
        raise _err.make(_err.UnsupportedError, f"ckpt_value_flatten op {op} is not read by "
                        "this version of the package", self.conv.src.name)
