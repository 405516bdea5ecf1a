"""Views that repeat their storage are not made whole past max_output_ratio.

torch saves torch.zeros(1).expand(n, m) as its one-float storage and the
stride (0, 0): a file of some 700 bytes that describes n x m floats. What
ckpt makes from a file (safetensors writes every view contiguous, --dtype
makes a contiguous copy, diff goes through every element) is bounded by 64
times what the file holds plus 64 MiB, refused with a limit error that names
the tensor before anything is written; --max-output-ratio raises it.
"""
import json
import struct
import subprocess

import pytest
import torch

MiB = 1 << 20


def run(ckpt_bin, *args):
    return subprocess.run([ckpt_bin, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("expand")
    huge = d / "huge.pth"          # 40 GB of float32 described
    torch.save({"w": torch.randn(8, 8), "x": torch.zeros(1).expand(100000, 100000)}, huge)
    modest = d / "modest.pth"      # 128 MiB described, past the 64 MiB of slack
    torch.save({"x": torch.full((1,), 2.5).expand(1 << 20, 32)}, modest)
    small = d / "small.pth"        # expands as real code saves them: within the slack
    torch.save({"ids": torch.arange(512).expand(1, -1), "m": torch.ones(1).expand(64, 64)},
               small)
    return {"huge": huge, "modest": modest, "small": small}


def test_torch_saves_stride_zero(files):
    x = torch.load(files["huge"])["x"]
    assert x.stride() == (0, 0) and x.storage().size() == 1
    assert files["huge"].stat().st_size < 2048


@pytest.mark.parametrize("args", [[], ["--dtype", "float64"]])
def test_convert_refuses_before_writing(ckpt_bin, files, tmp_path, args):
    out = tmp_path / ("out.safetensors" if not args else "out.pth")
    out.write_bytes(b"previous")
    res = run(ckpt_bin, "convert", "--no-fsync", files["huge"], out, *args)
    assert res.returncode == 2, res.stderr.decode()
    err = res.stderr.decode()
    assert ": x: " in err and "max_output_ratio" in err and "--max-output-ratio" in err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_torch_output_keeps_the_view(ckpt_bin, files, tmp_path):
    out = tmp_path / "same.pth"
    res = run(ckpt_bin, "convert", "--no-fsync", files["huge"], out)
    assert res.returncode == 0, res.stderr.decode()
    x = torch.load(out)["x"]
    assert x.shape == (100000, 100000) and x.stride() == (0, 0)
    assert out.stat().st_size < 4096


def test_diff_refuses_to_go_through_every_element(ckpt_bin, files):
    res = run(ckpt_bin, "diff", files["huge"], files["huge"])
    assert res.returncode == 2
    err = res.stderr.decode()
    assert ": x: " in err and "max_output_ratio" in err


def test_raising_the_limit_lets_a_modest_case_through(ckpt_bin, files, tmp_path):
    out = tmp_path / "modest.safetensors"
    res = run(ckpt_bin, "convert", "--no-fsync", files["modest"], out)
    assert res.returncode == 2 and not out.exists(), res.stderr.decode()
    res = run(ckpt_bin, "convert", "--no-fsync", "--max-output-ratio", "100000",
              files["modest"], out)
    assert res.returncode == 0, res.stderr.decode()
    raw = out.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert header["x"]["shape"] == [1 << 20, 32]
    b, e = header["x"]["data_offsets"]
    assert e - b == 128 * MiB
    assert struct.unpack("<f", raw[8 + n + e - 4:8 + n + e])[0] == 2.5
    res = run(ckpt_bin, "diff", files["modest"], out)
    assert res.returncode == 2
    res = run(ckpt_bin, "diff", "--max-output-ratio", "100000", files["modest"], out)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


def test_expands_real_code_saves_convert(ckpt_bin, files, tmp_path):
    out = tmp_path / "small.safetensors"
    res = run(ckpt_bin, "convert", "--no-fsync", files["small"], out)
    assert res.returncode == 0, res.stderr.decode()
    res = run(ckpt_bin, "diff", files["small"], out)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()


@pytest.mark.parametrize("value", ["0", "-1", "x", "1e3", ""])
def test_bad_ratio_values(ckpt_bin, files, tmp_path, value):
    res = run(ckpt_bin, "convert", files["small"], tmp_path / "o.pth", "--max-output-ratio", value)
    assert res.returncode == 2 and "--max-output-ratio" in res.stderr.decode()
