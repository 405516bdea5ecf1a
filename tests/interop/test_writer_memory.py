"""The writers stream: writing 1 GiB of tensors needs O(metadata) memory.

The converter runs under an address-space limit of the input's size (its
read-only map) plus 256 MiB: a writer that buffered the tensors, or the
file, would fail to allocate. Sanitizer builds reserve terabytes of address
space, so the check runs in the plain build only.
"""
import os
import resource
import subprocess

import pytest
import torch

GiB = 1 << 30


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    p = d / "big.pth"
    # 128 tensors of 8 MiB: 1 GiB of float32
    sd = {f"layer{i}.weight": torch.full((2048, 1024), float(i)) for i in range(128)}
    torch.save(sd, p)
    del sd
    return p


def limited(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return preexec


@pytest.mark.skipif(os.environ.get("CKPT_SANITIZED", "0") not in ("0", "", "FALSE", "OFF"),
                    reason="sanitizers reserve more address space than the limit")
@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_convert_1gib_in_bounded_memory(ckpt_bin, big_file, tmp_path, ext):
    out = tmp_path / f"out.{ext}"
    limit = big_file.stat().st_size + 256 * (1 << 20)
    proc = subprocess.run([ckpt_bin, "convert", "--no-fsync", str(big_file), str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          preexec_fn=limited(limit), timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    assert out.stat().st_size >= GiB
    # and the bytes arrived: spot-check through torch
    if ext == "pth":
        got = torch.load(out)
        assert float(got["layer77.weight"][5, 7]) == 77.0
    else:
        raw = out.open("rb")
        import json
        import struct
        n = struct.unpack("<Q", raw.read(8))[0]
        header = json.loads(raw.read(n))
        b, e = header["layer77.weight"]["data_offsets"]
        raw.seek(8 + n + b)
        first = struct.unpack("<f", raw.read(4))[0]
        assert first == 77.0 and e - b == 2048 * 1024 * 4


@pytest.mark.skipif(os.environ.get("CKPT_SANITIZED", "0") not in ("0", "", "FALSE", "OFF"),
                    reason="sanitizers reserve more address space than the limit")
def test_a_buffering_writer_would_fail_the_limit(ckpt_bin, big_file, tmp_path):
    """The limit is tight enough to matter: reading the file whole into
    memory (what a buffering writer would need) does not fit."""
    limit = big_file.stat().st_size + 256 * (1 << 20)
    code = ("import sys\n"
            "b = bytearray(%d)\n" % (big_file.stat().st_size,) +
            "c = bytearray(%d)\n" % (big_file.stat().st_size,))
    proc = subprocess.run(["/usr/bin/python3", "-c", code], preexec_fn=limited(limit),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode != 0 and b"MemoryError" in proc.stderr
