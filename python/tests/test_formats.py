"""The formats beyond torch.save's: TorchScript weights, PyTorch DCP
directories, numpy .npy/.npz files, compared with what torch and numpy
themselves read."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import ckpt
from conftest import SOURCE_DIR, tool_env
from helpers import assert_same


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.register_buffer("count", torch.arange(3))

    def forward(self, x):
        return self.fc(x) + self.count


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])
        self.head = torch.nn.Linear(3, 2, bias=False)

    def forward(self, x):
        for b in self.blocks:
            x = torch.cat([b(x), x[:, :1]], 1)
        return self.head(x[:, :3])


def test_torchscript_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(_Net()), str(path))
    want = torch.jit.load(str(path)).state_dict()
    with pytest.raises(ckpt.UnsupportedError, match="torchscript"):
        ckpt.load(path)
    got = ckpt.load(path, torchscript_weights=True)
    assert list(got) == list(want)
    # state_dict() detaches; the archive keeps requires_grad on parameters
    assert_same({k: v.detach() for k, v in got.items()}, dict(want))
    with ckpt.safe_open(path, torchscript_weights=True) as f:
        assert sorted(f.keys()) == sorted(want)
        assert torch.equal(f.get_tensor("blocks.1.fc.weight"), want["blocks.1.fc.weight"])
    info = ckpt.inspect(path, torchscript_weights=True)
    assert info["details"]["torchscript"] is True
    assert {t["name"] for t in info["tensors"]} == set(want)
    assert ckpt.scan(path).verdict == "unsafe"  # it holds code: scanning says so


def test_dcp_directory(tmp_path):
    out = tmp_path / "dcp"
    gen = SOURCE_DIR / "tests" / "interop" / "dcpgen.py"
    res = subprocess.run([sys.executable, str(gen), "single", str(out)], capture_output=True,
                         text=True, env=tool_env())
    if res.returncode != 0:
        pytest.skip(f"torch could not write a DCP directory here: {res.stderr[-300:]}")
    want = torch.load(str(out) + ".expect.pt")
    for where in (out, out / ".metadata"):
        got = ckpt.load(where)
        assert_same(got, want)
    with ckpt.safe_open(out) as f:
        w = f.get_tensor("model.w")
        assert torch.equal(w, want["model"]["w"])
        assert torch.equal(f.get_slice("model.w")[2:5, 1:4], want["model"]["w"][2:5, 1:4])
    assert ckpt.inspect(out)["format"] == "dcp"


def test_npy_and_npz(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 5)).astype(np.float32)
    f = np.asfortranarray(rng.integers(0, 100, (3, 2), dtype=np.int64))
    be = np.arange(6, dtype=">f8").reshape(2, 3)
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "s.npz", a=a, f=f, be=be)
    np.savez_compressed(tmp_path / "c.npz", a=a, f=f, be=be)
    got = ckpt.load(tmp_path / "a.npy")
    assert list(got) == ["tensor"]
    assert torch.equal(got["tensor"], torch.from_numpy(a))
    for name in ("s.npz", "c.npz"):
        ref = np.load(tmp_path / name)
        got = ckpt.load(tmp_path / name, framework="np")
        assert sorted(got) == sorted(ref.files)
        for k in ref.files:
            assert got[k].dtype == ref[k].dtype.newbyteorder("=")
            assert np.array_equal(got[k], ref[k]), (name, k)
    assert ckpt.inspect(tmp_path / "c.npz")["format"] == "numpy-npz"
