"""Deflated records are read as streams: verify and scan never hold one whole.

A small file can hold deflated records of zeros at a ratio just under
max_inflate_ratio (1000): here two records of 256 MiB each in about half a
megabyte. `verify` checks their CRC32 as the bytes pass through a small
buffer, and `scan` never inflates a data record past its first bytes, so both
run under an address-space limit far below one record; so does `inspect`.
torch.load reads such a file (the records are real tensors), so it is checked
first to be well formed. Sanitizer builds reserve terabytes of address space,
so the limits apply in the plain build only.
"""
import collections
import io
import os
import pickle
import resource
import struct
import subprocess
import zlib

import pytest
import torch

MiB = 1 << 20
RECORD = 256 * MiB
# The CLI's own address space (libraries, the map of a small file) plus room:
# well under one record.
LIMIT = 96 * MiB

SANITIZED = os.environ.get("CKPT_SANITIZED", "0") not in ("0", "", "FALSE", "OFF")
needs_plain_build = pytest.mark.skipif(
    SANITIZED, reason="sanitizers reserve more address space than the limit")


def deflated_zeros(n, piece=196608):
    """n zero bytes as raw deflate at a ratio of about 950: a partial flush
    every `piece` bytes costs a few bytes each, below zlib's 1030."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc, zeros = [], 0, bytes(piece)
    for off in range(0, n, piece):
        k = min(piece, n - off)
        parts.append(c.compress(zeros[:k]))
        parts.append(c.flush(zlib.Z_PARTIAL_FLUSH))
        crc = zlib.crc32(zeros[:k], crc)
    parts.append(c.flush())
    return b"".join(parts), crc


class _Storage:
    def __init__(self, key):
        self.key = key


class _Tensor:
    """Pickles as torch.save pickles a uint8 tensor over storage `key`."""

    def __init__(self, key, numel):
        self.storage, self.numel = _Storage(key), numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, (self.numel,), (1,), False, collections.OrderedDict()))


def torch_pickle(obj, numel):
    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _Storage):
                return ("storage", torch.ByteStorage, o.key, "cpu", numel)
            return None
    b = io.BytesIO()
    P(b, protocol=2).dump(obj)
    return b.getvalue()


def write_zip(path, records):
    """records: (name, data, size, crc, method) in order; a plain zip."""
    out, central = bytearray(), bytearray()
    for name, data, size, crc, method in records:
        nb = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, method, 0, 0, crc,
                               len(data), size, len(nb), 0, 0, 0, 0, 0, len(out)) + nb
        out += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, method, 0, 0, crc, len(data),
                           size, len(nb), 0) + nb + data
    cd = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, len(records), len(records),
                       len(central), cd, 0)
    path.write_bytes(bytes(out))


def hostile(path, referenced=True, crc_delta=0):
    comp, crc = deflated_zeros(RECORD)
    obj = {"a": _Tensor("0", RECORD), "b": _Tensor("1", RECORD)} if referenced else {}
    pkl = torch_pickle(obj, RECORD)
    write_zip(path, [
        ("archive/data.pkl", pkl, len(pkl), zlib.crc32(pkl), 0),
        ("archive/byteorder", b"little", 6, zlib.crc32(b"little"), 0),
        ("archive/data/0", comp, RECORD, crc, 8),
        ("archive/data/1", comp, RECORD, crc ^ crc_delta, 8),
        ("archive/version", b"3\n", 2, zlib.crc32(b"3\n"), 0),
    ])
    return len(comp)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inflate")
    made = {}
    for name, kw in (("referenced", {}), ("unreferenced", {"referenced": False}),
                     ("bad_crc", {"crc_delta": 1})):
        p = d / f"{name}.pth"
        comp = hostile(p, **kw)
        made[name] = p
    made["ratio"] = RECORD / comp
    return made


def run_limited(ckpt_bin, *args, limit=LIMIT):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return subprocess.run([ckpt_bin, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, preexec_fn=preexec, timeout=300)


def test_the_file_is_what_it_claims(files):
    """Ratio near the limit, a small file, and torch reads it (a smaller twin:
    torch holds what it loads)."""
    assert 900 < files["ratio"] < 1000
    assert files["referenced"].stat().st_size < 2 * RECORD // 900 + 4096


def test_torch_loads_such_a_file(tmp_path):
    global RECORD
    saved, RECORD = RECORD, MiB
    try:
        hostile(tmp_path / "small.pth")
    finally:
        RECORD = saved
    got = torch.load(tmp_path / "small.pth")
    assert got["a"].shape == (MiB,) and int(got["a"].sum()) == 0


@needs_plain_build
def test_verify_streams(ckpt_bin, files):
    proc = run_limited(ckpt_bin, "verify", files["referenced"])
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"ok" in proc.stdout


@needs_plain_build
def test_verify_finds_a_bad_crc_while_streaming(ckpt_bin, files):
    proc = run_limited(ckpt_bin, "verify", files["bad_crc"])
    assert proc.returncode == 1, proc.stderr.decode()
    out = (proc.stdout + proc.stderr).decode()
    assert "archive/data/1" in out and "CRC32" in out


@needs_plain_build
@pytest.mark.parametrize("which", ["referenced", "unreferenced"])
def test_scan_and_inspect_do_not_inflate_data(ckpt_bin, files, which):
    proc = run_limited(ckpt_bin, "scan", files[which])
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    proc = run_limited(ckpt_bin, "inspect", files[which])
    assert proc.returncode == 0, proc.stderr.decode()


@needs_plain_build
def test_the_limit_is_tight_enough_to_matter(ckpt_bin, files):
    """Holding one record whole does not fit under the limit: reading a
    tensor's bytes (what convert does) fails for want of memory."""
    code = f"b = bytearray({RECORD})\n"
    proc = subprocess.run(["/usr/bin/python3", "-c", code],
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS,
                                                                (LIMIT, LIMIT)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode != 0 and b"MemoryError" in proc.stderr
    out = files["referenced"].parent / "out.safetensors"
    proc = run_limited(ckpt_bin, "convert", "--no-fsync", files["referenced"], out)
    assert proc.returncode == 2 and not out.exists()
