"""framework="np": numpy arrays, and the package without torch."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

import ckpt


def test_np_arrays_match_torch(generated):
    path = generated["dtypes"].path
    ref = torch.load(path)
    d = ckpt.load(path, framework="np")
    assert set(d) == set(ref)
    for k, t in ref.items():
        if not isinstance(t, torch.Tensor):
            continue
        a = d[k]
        assert isinstance(a, np.ndarray), k
        assert tuple(a.shape) == tuple(t.shape), k
        if t.dtype == torch.bfloat16:
            assert isinstance(a, ckpt.RawArray) and a.ckpt_dtype == "bfloat16"
            assert a.dtype == np.uint16
            assert np.array_equal(a, t.view(torch.int16).numpy().view(np.uint16))
        elif t.dtype in (torch.complex32,) or getattr(torch, "float8_e5m2", None) == t.dtype:
            assert isinstance(a, ckpt.RawArray)
        else:
            assert np.array_equal(a, t.numpy(), equal_nan=True), k


def _root(a):
    """The storage's array (the last ndarray before the map)."""
    last = a
    while getattr(a, "base", None) is not None:
        a = a.base
        if isinstance(a, np.ndarray):
            last = a
    return last


def test_np_views_share_and_write_privately(generated, tmp_path):
    path = tmp_path / "v.pt"
    path.write_bytes(generated["views"].path.read_bytes())
    before = path.read_bytes()
    d = ckpt.load(path, framework="np")
    ref = torch.load(path)
    for k, t in ref.items():
        if isinstance(t, torch.Tensor) and t.dtype != torch.bfloat16:
            assert np.array_equal(d[k], t.numpy()), k
    for k, t in ref.items():
        if isinstance(t, torch.Tensor) and d[k].size:
            d[k].flat[0] = 1  # views of one storage share it
    shared = [(a, b) for a in ref for b in ref if a < b
              and isinstance(ref[a], torch.Tensor) and isinstance(ref[b], torch.Tensor)
              and ref[a].numel() and ref[b].numel()
              and ref[a].storage().data_ptr() == ref[b].storage().data_ptr()]
    assert shared
    for a, b in shared:
        assert _root(d[a]) is _root(d[b]), (a, b)  # one storage, one buffer
    assert path.read_bytes() == before
    with ckpt.safe_open(path, framework="np") as f:
        for name in f.keys():
            assert isinstance(f.get_tensor(name), np.ndarray)


def test_import_without_torch(generated):
    """`import ckpt` and framework="np" with torch made unimportable."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import ckpt
        d = ckpt.load({str(generated["training"].path)!r}, framework="np")
        assert d["epoch"] == 5 or isinstance(d["epoch"], int)
        assert type(d["model"]["0.weight"]).__module__ == "numpy"
        with ckpt.safe_open({str(generated["state_dict"].path)!r}, framework="np") as f:
            f.get_tensor(f.keys()[0])
        print(ckpt.scan({str(generated["training"].path)!r}).verdict)
        try:
            ckpt.load({str(generated["training"].path)!r})
        except ImportError as e:
            assert "framework" in str(e)
        else:
            raise SystemExit("loaded torch tensors without torch")
    """)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_parent] + sys.path))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "safe"
