"""Exceptions: one class per ckpt_status, all subclasses of :class:`ckpt.Error`."""

from __future__ import annotations

import builtins
import ctypes
from typing import Optional

from . import _lib


class Error(Exception):
    """An error libckpt reported.

    Attributes:
        status: the ckpt_status value (``ckpt.Error.status_name`` gives its
            constant name, e.g. ``"CKPT_ERR_FORMAT"``).
        record: the part of the file that was wrong (``"archive/data.pkl"``,
            ``"safetensors header"``), or ``""``.
        offset: byte offset inside that record, or None.
        file_offset: the same position in the file, or None.
        path: the file the error is about, or None.
        message: the line ``ckpt`` prints for it (``"PATH: RECORD at byte N: WHAT"``).
    """

    status: int = -1

    def __init__(self, message: str, *, status: Optional[int] = None, record: str = "",
                 offset: Optional[int] = None, file_offset: Optional[int] = None,
                 path: Optional[str] = None, detail: Optional[str] = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.record = record
        self.offset = offset
        self.file_offset = file_offset
        self.path = path
        self.message = message
        self.detail = detail if detail is not None else message

    @property
    def status_name(self) -> str:
        """The status's constant name, e.g. ``"CKPT_ERR_UNSAFE"``."""
        if self.status < 0:
            return "CKPT_ERR_UNKNOWN"
        return _lib.cstr(_lib.lib.ckpt_status_name(self.status)) or "CKPT_ERR_UNKNOWN"

    def __str__(self) -> str:
        return self.message


class IOError(Error, builtins.OSError):  # noqa: A001 - named after CKPT_ERR_IO
    """A file could not be opened, read, mapped or written (CKPT_ERR_IO)."""
    status = _lib.ERR_IO


class NoMemoryError(Error, MemoryError):
    """An allocation failed (CKPT_ERR_NOMEM)."""
    status = _lib.ERR_NOMEM


class FormatError(Error, ValueError):
    """Malformed input: bad structure, bounds, opcode (CKPT_ERR_FORMAT)."""
    status = _lib.ERR_FORMAT


class UnsupportedError(Error):
    """Well-formed, but a feature ckpt does not read or write (CKPT_ERR_UNSUPPORTED)."""
    status = _lib.ERR_UNSUPPORTED


class UnsafeError(Error):
    """A pickle names a global outside the allow-list, or an object outside it
    was given to a writer (CKPT_ERR_UNSAFE). Nothing was run."""
    status = _lib.ERR_UNSAFE


class LimitError(Error):
    """A configured limit was exceeded (CKPT_ERR_LIMIT)."""
    status = _lib.ERR_LIMIT


class CorruptError(Error):
    """A checksum does not match (CKPT_ERR_CORRUPT)."""
    status = _lib.ERR_CORRUPT


class NotFoundError(Error, KeyError):
    """A name, record or checkpoint does not exist (CKPT_ERR_NOT_FOUND)."""
    status = _lib.ERR_NOT_FOUND

    def __str__(self) -> str:  # KeyError would quote it
        return self.message


class InvalidArgumentError(Error, ValueError):
    """The caller passed something wrong (CKPT_ERR_INVALID_ARG)."""
    status = _lib.ERR_INVALID_ARG


class ValueTypeError(Error, TypeError):
    """A value is not of the kind asked for (CKPT_ERR_TYPE)."""
    status = _lib.ERR_TYPE


class BusyError(Error):
    """Another process holds the checkpoint directory (CKPT_ERR_BUSY)."""
    status = _lib.ERR_BUSY


class MismatchError(Error):
    """A state dict does not fit the model (CKPT_ERR_MISMATCH)."""
    status = _lib.ERR_MISMATCH


_BY_STATUS = {c.status: c for c in (IOError, NoMemoryError, FormatError, UnsupportedError,
                                    UnsafeError, LimitError, CorruptError, NotFoundError,
                                    InvalidArgumentError, ValueTypeError, BusyError,
                                    MismatchError)}


def error_class(status: int) -> type:
    """The exception class of a ckpt_status."""
    return _BY_STATUS.get(status, Error)


def from_c(err: "_lib.Error_", path: Optional[str] = None) -> Error:
    """The exception for a filled ckpt_error, its message formatted as the CLI prints it."""
    buf = ctypes.create_string_buffer(768)
    _lib.lib.ckpt_error_format(ctypes.byref(err), buf, len(buf))
    detail = buf.value.decode("utf-8", "replace")
    message = f"{path}: {detail}" if path else detail
    off = None if err.offset == _lib.NO_OFFSET else int(err.offset)
    foff = None if err.file_offset == _lib.NO_OFFSET else int(err.file_offset)
    cls = error_class(err.status)
    return cls(message, status=int(err.status), record=err.record.decode("utf-8", "replace"),
               offset=off, file_offset=foff, path=path, detail=detail)


def check(status: int, err: "_lib.Error_", path: Optional[str] = None) -> None:
    """Raises the exception for status unless it is CKPT_OK."""
    if status != _lib.OK:
        if err.status == _lib.OK:
            err.status = status
        raise from_c(err, path)


def make(cls: type, message: str, path: Optional[str] = None) -> Error:
    """An exception raised by the binding itself (not by libckpt)."""
    return cls(f"{path}: {message}" if path else message, path=path, detail=message)
