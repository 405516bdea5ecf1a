"""The package under torch 2.6 (the chroot of scripts/torch2-chroot.sh):
ckpt.load against torch.load(weights_only=True) on files torch 2.6 writes,
including the dtypes 1.13 lacks. Skipped without the chroot."""
import os
import shutil
import subprocess
import textwrap

import pytest

import ckpt
import ckpt._lib

from conftest import SANITIZED, SOURCE_DIR

SCRIPT = SOURCE_DIR / "scripts" / "torch2-chroot.sh"

CHILD = textwrap.dedent("""
    import collections, sys, torch
    import ckpt
    d = sys.argv[1]
    base = torch.arange(24, dtype=torch.float32)
    sd = collections.OrderedDict()
    sd["w"] = torch.nn.Parameter(torch.randn(3, 4))
    sd["bf16"] = torch.randn(5).to(torch.bfloat16)
    sd["f8"] = torch.randn(6).to(torch.float8_e4m3fn)
    sd["f8b"] = torch.randn(6).to(torch.float8_e5m2)
    sd["u16"] = torch.arange(7).to(torch.uint16)
    sd["u32"] = torch.arange(7).to(torch.uint32)
    sd["a"] = base[:12].view(3, 4)
    sd["b"] = base.view(4, 6).t()
    sd["scalar"] = torch.tensor(2.5)
    obj = {"model": sd, "epoch": 3, "lr": 0.25, "size": torch.Size([2]),
           "dtype": torch.float8_e4m3fn, "dev": torch.device("cpu"), "s": {1, 2}}
    torch.save(obj, d + "/t2.pt")
    ref = torch.load(d + "/t2.pt", weights_only=True)
    for mm in (True, False):
        ours = ckpt.load(d + "/t2.pt", mmap=mm)
        assert ours.keys() == ref.keys()
        for k in ("epoch", "lr", "size", "dtype", "dev", "s"):
            assert ours[k] == ref[k] and type(ours[k]) is type(ref[k]), k
        for k, t in ref["model"].items():
            o = ours["model"][k]
            assert type(o) is type(t) and o.dtype == t.dtype and o.shape == t.shape, k
            assert o.stride() == t.stride() and o.requires_grad == t.requires_grad, k
            assert o.detach().contiguous().reshape(-1).view(torch.uint8).tolist() == \\
                t.detach().contiguous().reshape(-1).view(torch.uint8).tolist(), k
        m = ours["model"]
        assert m["a"].untyped_storage().data_ptr() == m["b"].untyped_storage().data_ptr()
    ckpt.save(ref, d + "/c2.pt")
    back = torch.load(d + "/c2.pt", weights_only=True)
    assert back["model"]["f8"].dtype == torch.float8_e4m3fn
    assert torch.equal(back["model"]["u16"], sd["u16"])
    assert back["s"] == {1, 2} and back["dev"] == torch.device("cpu")
    n = ckpt.load(d + "/t2.pt", framework="np")
    assert n["model"]["f8"].ckpt_dtype == "float8_e4m3fn"
    x = torch.randn(4, 6)
    q = {"t": torch.quantize_per_tensor(x, 0.1, 3, torch.qint8).t(),
         "c": torch.quantize_per_channel(x, torch.rand(6) + 0.1, torch.randint(0, 5, (6,)), 1,
                                         torch.quint8)}
    torch.save(q, d + "/q.pt")
    ref = torch.load(d + "/q.pt", weights_only=True)
    ours = ckpt.load(d + "/q.pt")
    for k, t in ref.items():
        o = ours[k]
        assert o.dtype == t.dtype and o.qscheme() == t.qscheme() and o.stride() == t.stride(), k
        assert torch.equal(o.int_repr(), t.int_repr()), k
        assert torch.equal(o.dequantize(), t.dequantize()), k
    print("ok", torch.__version__)
""")


@pytest.mark.skipif(SANITIZED, reason="an instrumented libckpt needs the ASan runtime "
                    "preloaded, which the chroot lacks")
def test_torch2_load_and_save(tmp_path):
    if not SCRIPT.exists() or subprocess.run(["sh", str(SCRIPT), "check"],
                                             capture_output=True).returncode != 0:
        pytest.skip("no torch 2.x chroot (make torch2)")
    # the package and libckpt with the libraries it links, for the chroot's python
    pkg = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(os.path.abspath(ckpt.__file__)), pkg / "ckpt",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(ckpt._lib.library_path if os.sep in ckpt._lib.library_path else
                    ckpt._lib.SONAME, pkg / "ckpt" / "libckpt.so.0")
    libs = tmp_path / "lib"
    libs.mkdir()
    ldd = subprocess.run(["ldd", str(pkg / "ckpt" / "libckpt.so.0")], capture_output=True,
                         text=True).stdout
    for line in ldd.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and not parts[0].startswith(
                ("libc.so", "libm.so", "libz.so", "ld-linux")):
            shutil.copyfile(parts[2], libs / parts[0])
    (tmp_path / "child.py").write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k not in ("CKPT_LIBRARY", "PYTHONPATH")}
    env.update(PYTHONPATH=str(pkg), LD_LIBRARY_PATH=str(libs))
    res = subprocess.run(["sh", str(SCRIPT), "python", str(tmp_path / "child.py"),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0 and res.stdout.startswith("ok 2."), res.stderr + res.stdout
