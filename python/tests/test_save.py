"""ckpt.save and ckpt.save_file: torch and the C reader read what they write."""
import collections
import io
import os
import shutil
import subprocess

import pytest
import torch

import ckpt
from conftest import tool_env
from helpers import assert_same, storage_ptr


def _obj():
    base = torch.arange(24, dtype=torch.float32)
    sd = collections.OrderedDict(w=torch.randn(4, 3), b=torch.zeros(4, dtype=torch.float64))
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    return {
        "model": sd,
        "epoch": 7, "lr": 0.5, "name": "run", "ok": True, "none": None, "c": 1 + 2j,
        "list": [1, 2.5, "x"], "tuple": (1, (2, 3)),
        "size": torch.Size([2, 3]), "dtype": torch.bfloat16,
        "a": base[:12].view(3, 4), "b": base.view(4, 6).t(), "c2": base[5:9],
        "param": torch.nn.Parameter(torch.ones(2, 2)),
        "frozen": torch.nn.Parameter(torch.ones(3), requires_grad=False),
        "grad": torch.ones(2).requires_grad_(),
        "types": [torch.ones(3, dtype=dt) for dt in (
            torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16, torch.int32,
            torch.int64, torch.bool, torch.complex64, torch.complex128)],
        "empty": torch.empty(0, 3), "scalar": torch.tensor(3.5),
    }


def _weights_only_obj():
    """What torch 1.13's weights-only reader reads: it lacks BINFLOAT (Python
    floats and complex) and the reducers of dtypes and sizes."""
    obj = _obj()
    for k in ("lr", "c", "list", "dtype", "size"):
        del obj[k]
    return obj


def test_save_loads_in_torch(tmp_path):
    obj = _weights_only_obj()
    path = tmp_path / "out.pt"
    ckpt.save(obj, path)
    back = torch.load(path, weights_only=True)
    assert_same(back, obj)
    assert storage_ptr(back["a"]) == storage_ptr(back["b"]) == storage_ptr(back["c2"])
    assert_same(ckpt.load(path), obj)
    full = _obj()  # our own file of plain data: torch's full reader for the rest
    ckpt.save(full, path)
    assert_same(torch.load(path), full)
    assert_same(ckpt.load(path), full)


def test_save_to_file_object(tmp_path):
    obj = _weights_only_obj()
    buf = io.BytesIO()
    ckpt.save(obj, buf, fsync=False)
    buf.seek(0)
    assert_same(torch.load(buf, weights_only=True), obj)


def test_save_refuses_by_name(tmp_path):
    path = tmp_path / "x.pt"
    path.write_bytes(b"old")

    class Custom:
        pass

    for bad, name in ((Custom(), "Custom"), (torch.nn.Linear(2, 2), "torch.nn.modules.linear"),
                      ({"f": print}, "builtin_function_or_method")):
        with pytest.raises(ckpt.UnsafeError, match=name):
            ckpt.save({"x": bad}, path)
    assert path.read_bytes() == b"old"  # untouched
    assert os.listdir(tmp_path) == ["x.pt"]  # no temporary left


def test_save_streams_mapped_tensors(tmp_path):
    """A loaded (mapped) checkpoint saves straight from its map."""
    src = tmp_path / "src.pt"
    torch.save({"w": torch.randn(1000, 100)}, src)
    d = ckpt.load(src)
    ckpt.save(d, tmp_path / "copy.pt")
    assert torch.equal(torch.load(tmp_path / "copy.pt")["w"], torch.load(src)["w"])


def test_save_file_round_trip(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(6).view(2, 3).t(),
         "c": torch.ones(2, dtype=torch.bfloat16)}
    path = tmp_path / "m.safetensors"
    ckpt.save_file(t, path, metadata={"format": "pt"})
    back = ckpt.load_file(path)
    assert set(back) == set(t)
    for k in t:
        assert torch.equal(back[k], t[k]) and back[k].is_contiguous()
    with ckpt.safe_open(path, framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(t)
        assert torch.equal(f.get_slice("a")[1:, 2:], t["a"][1:, 2:])
        assert f.get_slice("a").get_shape() == [3, 4]
    ckpt_bin = os.environ.get("CKPT_BIN") or shutil.which("ckpt")
    if ckpt_bin:  # the C tool reads it too
        res = subprocess.run([ckpt_bin, "verify", str(path)], capture_output=True, text=True,
                             env=tool_env())
        assert res.returncode == 0, res.stderr


def test_save_file_shared_memory(tmp_path):
    w = torch.randn(4, 4)
    tied = {"emb": w, "head": w}
    with pytest.raises(ckpt.Error, match="share memory"):
        ckpt.save_file(tied, tmp_path / "t.safetensors")
    with pytest.raises(ckpt.Error, match="share memory"):
        ckpt.save_file({"a": w[:2], "b": w[1:]}, tmp_path / "t.safetensors")
    ckpt.save_file(tied, tmp_path / "t.safetensors", dedup=True)
    with ckpt.safe_open(tmp_path / "t.safetensors") as f:
        assert len(f.keys()) == 1
        md = f.metadata()
        kept = f.keys()[0]
        assert md and md.get("head" if kept == "emb" else "emb") == kept
        assert torch.equal(f.get_tensor(kept), w)


TORCH2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                      "torch2-chroot.sh")


def _torch2():
    if not os.path.exists(TORCH2) or subprocess.run(
            ["sh", TORCH2, "check"], capture_output=True).returncode != 0:
        pytest.skip("no torch 2.x chroot (make torch2)")


def test_torch2_and_safetensors_read_ours(tmp_path):
    _torch2()
    obj = _obj()
    ckpt.save(obj, tmp_path / "o.pt")
    ckpt.save_file({"a": torch.randn(3, 4), "b": torch.ones(2, dtype=torch.bfloat16)},
                   tmp_path / "o.safetensors", {"k": "v"})
    ref = {"a": obj["a"].tolist()}
    script = (
        "import sys, torch, safetensors.torch as st\n"
        "d = torch.load(sys.argv[1] + '/o.pt', weights_only=True)\n"
        "assert d['a'].untyped_storage().data_ptr() == d['b'].untyped_storage().data_ptr()\n"
        f"assert d['a'].tolist() == {ref['a']!r}\n"
        "assert d['param'].requires_grad and isinstance(d['param'], torch.nn.Parameter)\n"
        "t = st.load_file(sys.argv[1] + '/o.safetensors')\n"
        "assert t['b'].dtype == torch.bfloat16 and t['a'].shape == (3, 4)\n"
        "print('ok')\n")
    (tmp_path / "t.py").write_text(script)
    res = subprocess.run(["sh", TORCH2, "python", str(tmp_path / "t.py"), str(tmp_path)],
                         capture_output=True, text=True,
                             env=tool_env())
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr + res.stdout
