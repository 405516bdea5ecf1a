"""The checkpoint manager: crash-safe saves, best and last files, resume."""

from __future__ import annotations

import ctypes
import datetime
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import _lib
from . import _read
from . import _write
from . import errors as _err
from ._lib import lib

_UINT_MAX = (1 << 32) - 1


@dataclass
class CheckpointEntry:
    """One kept file, as ``ckpt ls --json`` lists it."""

    file: str
    path: str
    step: Optional[int]
    metrics: Dict[str, float]
    size: int
    crc32: str
    time: Optional[str]
    ckpt_version: Optional[str]
    format_version: Optional[int]
    torch_version: Optional[str]
    user: Optional[Dict[str, Any]]
    content: str
    last: bool = False
    best: bool = False

    def as_dict(self) -> Dict[str, Any]:
        """The entry's fields as a dict."""
        return dict(self.__dict__)


class Manager:
    """A directory of checkpoints for a training run, kept crash-safely.

    Each :meth:`save` writes ``last.pth`` (the whole checkpoint, to resume),
    ``best.pth`` when the monitored metric improves (the weights, to deploy)
    and ``step-NNNNNNNN.pth`` numbered files that retention keeps, with
    ``manifest.json`` recording step, metrics, size and CRC32 of each. A
    crash or a full disk at any moment leaves every name holding its old or
    its new content, whole: the last good checkpoint is never lost.

        mgr = ckpt.Manager("runs/a", monitor="val_loss", mode="min", save_top_k=3)
        state = mgr.resume()            # newest checkpoint that verifies, or None
        ...
        mgr.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "epoch": epoch}, step=step, metrics={"val_loss": loss})

    One process at a time manages a directory (others get
    :class:`ckpt.BusyError`); close the manager (or use it as a context
    manager) to release it.

    Args:
        dirpath: the directory (created when missing).
        monitor: the metric deciding ``best.pth`` (Lightning's ``monitor``);
            None keeps the one recorded in the manifest, or no best.pth.
        mode: ``"min"`` (a loss) or ``"max"`` (an accuracy).
        save_top_k: numbered checkpoints kept for being best by the metric
            (Lightning's ``save_top_k``: -1 keeps every one, 0 none).
        save_last: ``last.pth`` is always written: it is what :meth:`resume`
            and crash safety rest on; False is refused.
        keep_last: numbered checkpoints kept for being newest (0 default).
        best_full: best.pth holds the whole checkpoint, not only the weights.
        weights_key: the checkpoint entry holding the weights ("model").
        fsync: flush every file to stable storage (default True).
        metadata: a JSON-serialisable dict recorded with every save.
        read_only: list only: no lock, no clean-up, no saves.
    """

    def __init__(self, dirpath: Any, monitor: Optional[str] = "val_loss", mode: str = "min",
                 save_top_k: int = 1, save_last: bool = True, *, keep_last: int = 0,
                 best_full: bool = False, weights_key: str = "model", fsync: bool = True,
                 metadata: Optional[Dict[str, Any]] = None, read_only: bool = False) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"ckpt.Manager: mode must be \"min\" or \"max\", not {mode!r}")
        if not save_last:
            raise ValueError("ckpt.Manager: last.pth is always written (resume and crash "
                             "safety rest on it); save_last=False is not supported")
        if save_top_k < -1 or keep_last < 0:
            raise ValueError("ckpt.Manager: save_top_k is -1 (all), 0 or more; keep_last "
                             "is 0 or more")
        self.dirpath = os.fsdecode(os.fspath(dirpath))
        self.monitor = monitor
        self.mode = mode
        self._handle = ctypes.c_void_p()
        self._warnings: List[str] = []

        def warn(_user: Any, msg: bytes) -> None:
            text = msg.decode("utf-8", "replace")
            self._warnings.append(text)
            warnings.warn(f"ckpt: {self.dirpath}: {text}", RuntimeWarning, stacklevel=2)

        self._warn_cb = _lib.WARN_FN(warn)
        o = _lib.ManagerOptions()
        lib.ckpt_manager_options_default(ctypes.byref(o))
        o.flags |= (_lib.MANAGER_BEST_FULL if best_full else 0) | \
            (_lib.MANAGER_READ_ONLY if read_only else 0)
        o.save_flags |= 0 if fsync else _lib.SAVE_NO_FSYNC
        self._keep = []
        if monitor is not None:
            self._keep.append(monitor.encode())
            o.monitor = self._keep[-1]
        o.mode = 1 if mode == "max" else 0
        self._keep.append(weights_key.encode())
        o.weights_key = self._keep[-1]
        o.keep_last = keep_last
        o.keep_best = _UINT_MAX if save_top_k == -1 else save_top_k
        try:
            import torch
            self._keep.append(str(torch.__version__).encode())
            o.torch_version = self._keep[-1]
        except ImportError:
            pass
        if metadata is not None:
            self._keep.append(json.dumps(metadata).encode())
            o.user_metadata = self._keep[-1]
        o.warn = self._warn_cb
        err = _lib.Error_()
        st = lib.ckpt_manager_open(self.dirpath.encode(), ctypes.byref(o),
                                   ctypes.byref(self._handle), ctypes.byref(err))
        _err.check(st, err, self.dirpath)

    def __enter__(self) -> "Manager":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Releases the directory's lock."""
        if self._handle:
            lib.ckpt_manager_close(self._handle)
            self._handle = ctypes.c_void_p()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover
            pass

    def _live(self) -> None:
        if not self._handle:
            raise _err.make(_err.InvalidArgumentError, "the manager is closed", self.dirpath)

    def save(self, state: Any, step: int, metrics: Optional[Dict[str, float]] = None, *,
             blocking: bool = True, wait: bool = True) -> List[str]:
        """Saves a checkpoint taken at step; returns the paths written.

        ``state`` is what :func:`ckpt.save` accepts (usually a dict with
        "model", "optimizer", "epoch", ...). The monitored metric, when
        there is one, must be among ``metrics``. On any error (a full disk,
        an I/O error) every file stays as it was.

        ``blocking=False`` returns as soon as the state is captured: the
        bytes of its tensors are copied into staging memory the manager
        keeps and reuses, and a background thread writes, fsyncs and commits
        exactly as the blocking save does, while training goes on (the
        tensors may change at once). It returns ``[]``; :meth:`wait` gives
        the paths. One save is in flight at a time: the next save (and every
        other call) waits for it first, or with ``wait=False`` raises
        :class:`ckpt.BusyError` and starts nothing. A failure of the
        background save is raised by the next :meth:`save` or :meth:`wait`.
        """
        self._live()
        metrics = dict(metrics or {})
        names = [str(k).encode() for k in metrics]
        arr = (_lib.Metric * max(len(names), 1))()
        for i, (n, v) in enumerate(zip(names, metrics.values())):
            arr[i].name = n
            arr[i].value = float(v.item() if hasattr(v, "item") else v)
        b = _write.TreeBuilder(self.dirpath)
        try:
            root = b.build(state)
            saved = ctypes.c_uint(0)
            err = _lib.Error_()
            if blocking:
                st = lib.ckpt_manager_save(self._handle, int(step), root, arr, len(names),
                                           ctypes.byref(saved), ctypes.byref(err))
            else:
                st = lib.ckpt_manager_save_async(self._handle, int(step), root, arr,
                                                 len(names), 0 if wait else _lib.ASYNC_NO_WAIT,
                                                 ctypes.byref(err))
            _err.check(st, err, self.dirpath)
        finally:
            b.free()
        if not blocking:
            self._pending_step = int(step)
            return []
        return self._paths(int(step), saved.value)

    def wait(self) -> List[str]:
        """Waits for the save in flight, if any; returns the paths the last
        finished save wrote (``[]`` when none), or raises the error of a
        background save that failed."""
        self._live()
        saved = ctypes.c_uint(0)
        err = _lib.Error_()
        st = lib.ckpt_manager_wait(self._handle, ctypes.byref(saved), ctypes.byref(err))
        step, self._pending_step = self._pending_step, None
        _err.check(st, err, self.dirpath)
        return self._paths(step, saved.value) if step is not None else []

    _pending_step: Optional[int] = None

    def _paths(self, step: int, saved: int) -> List[str]:
        out = [os.path.join(self.dirpath, "last.pth")]
        if saved & _lib.SAVED_BEST:
            out.append(os.path.join(self.dirpath, "best.pth"))
        if saved & _lib.SAVED_NUMBERED:
            out.append(os.path.join(self.dirpath, f"step-{step:08d}.pth"))
        return out

    def resume(self, map_location: Any = None, *, framework: str = "pt") -> Any:
        """The newest checkpoint that verifies (every CRC checked): last.pth,
        then numbered files from the newest, then a whole best.pth; torn or
        corrupt ones are skipped with a warning. None when there is nothing
        to resume from. Tensors are copies (training writes to them)."""
        self._live()
        opts = _lib.open_options(_lib.OPEN_VERIFY_CRC)
        h = ctypes.c_void_p()
        info = _lib.CheckpointInfo()
        info.struct_size = ctypes.sizeof(info)
        err = _lib.Error_()
        st = lib.ckpt_manager_resume(self._handle, ctypes.byref(opts), ctypes.byref(h),
                                     ctypes.byref(info), ctypes.byref(err))
        if st == _lib.ERR_NOT_FOUND:
            return None
        _err.check(st, err, self.dirpath)
        src = _read.Source.from_handle(h, os.path.join(self.dirpath, _lib.cstr(info.file) or ""))
        try:
            conv = _read.Converter(src, framework, map_location, copy=True)
            conv.check_devices(_read.all_tensors(src))
            self.resumed_step = int(info.step) if info.step >= 0 else None
            return conv.value(lib.ckpt_file_root(h))
        finally:
            src.close()

    resumed_step: Optional[int] = None

    @property
    def checkpoints(self) -> List[CheckpointEntry]:
        """The kept files (last.pth, best.pth, then numbered ones by step),
        with what ``ckpt ls --json`` shows of each."""
        self._live()
        out = []
        for i in range(lib.ckpt_manager_count(self._handle)):
            ci = _lib.CheckpointInfo()
            ci.struct_size = ctypes.sizeof(ci)
            if not lib.ckpt_manager_get(self._handle, i, ctypes.byref(ci)):
                continue
            name = _lib.cstr(ci.file) or ""
            metrics = {_lib.cstr(ci.metrics[k].name): float(ci.metrics[k].value)
                       for k in range(ci.metric_count)}
            user = None
            if ci.user_metadata:
                try:
                    user = json.loads(_lib.cstr(ci.user_metadata))
                except ValueError:
                    user = None
            t = None
            if ci.time >= 0:
                t = datetime.datetime.fromtimestamp(ci.time, datetime.timezone.utc) \
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
            out.append(CheckpointEntry(
                file=name, path=os.path.join(self.dirpath, name),
                step=int(ci.step) if ci.step >= 0 else None, metrics=metrics,
                size=int(ci.size), crc32=f"{ci.crc32:08x}", time=t,
                ckpt_version=_lib.cstr(ci.ckpt_version),
                format_version=int(ci.format_version) or None,
                torch_version=_lib.cstr(ci.torch_version), user=user,
                content="weights" if ci.weights_only else "checkpoint",
                last=bool(ci.last), best=bool(ci.best)))
        return out

    def _find(self, flag: str) -> Optional[str]:
        for e in self.checkpoints:
            if getattr(e, flag):
                return e.path
        return None

    @property
    def best_path(self) -> Optional[str]:
        """The path of best.pth, or None when there is none yet."""
        return self._find("best")

    @property
    def last_path(self) -> Optional[str]:
        """The path of last.pth, or None when there is none yet."""
        return self._find("last")

    @property
    def best_model_score(self) -> Optional[float]:
        """The monitored metric of best.pth (Lightning's name), or None."""
        for e in self.checkpoints:
            if e.best and self.monitor in e.metrics:
                v = e.metrics[self.monitor]
                return None if math.isnan(v) else v
        return None

    def prune(self, keep_last: int = 0, keep_best: int = 0) -> int:
        """Removes numbered checkpoints beyond the newest keep_last and the
        keep_best best (last.pth and best.pth stay); returns how many went."""
        self._live()
        n = ctypes.c_size_t(0)
        err = _lib.Error_()
        _err.check(lib.ckpt_manager_prune(self._handle, keep_last, keep_best, ctypes.byref(n),
                                          ctypes.byref(err)), err, self.dirpath)
        return int(n.value)
