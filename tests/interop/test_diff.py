"""`ckpt diff A B`: tensors by name (keys, dtypes, shapes, values within a tolerance)
and plain values by path, across formats; exit 0 same, 1 different, 2 error."""
import json
import math
import shutil
import struct

import numpy as np
import pytest
import torch

ST_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32",
            np.dtype(np.float16): "F16", np.dtype(np.int64): "I64",
            np.dtype(np.int32): "I32", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
            np.dtype(np.bool_): "BOOL"}


def write_safetensors(path, arrays, metadata=None):
    """A safetensors file written by hand from numpy arrays (the reference layout)."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, a in arrays.items():
        a = np.array(a, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        raw = a.tobytes()
        header[name] = {"dtype": ST_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def diff(tool, a, b, *opts):
    return tool.run("diff", a, b, *opts)


def diff_json(tool, a, b, *opts, rc=None):
    res = diff(tool, a, b, "--json", *opts)
    assert res.returncode in (0, 1), res.describe()
    if rc is not None:
        assert res.returncode == rc, res.describe()
    out = json.loads(res.stdout)
    assert out["same"] == (res.returncode == 0)
    return out


def lines(res):
    return res.stdout.rstrip("\n").split("\n")


@pytest.fixture(scope="module")
def base(gen_dir):
    d = gen_dir / "diff"
    d.mkdir()
    g = torch.Generator().manual_seed(21)
    sd = {"enc.weight": torch.randn(16, 8, generator=g),
          "enc.bias": torch.randn(16, generator=g),
          "head.weight": torch.randn(4, 16, generator=g).double(),
          "steps": torch.tensor(12, dtype=torch.int64),
          "mask": torch.tensor([True, False, True])}
    ck = {"model": sd, "epoch": 3, "metrics": {"loss": 0.5, "acc": [0.25, 0.75]},
          "note": "run 1"}
    p = d / "a.pt"
    torch.save(ck, p)
    return d, ck, p


def variant(d, name, ck, edit):
    ck = {"model": {k: v.clone() for k, v in ck["model"].items()},
          "epoch": ck["epoch"], "metrics": json.loads(json.dumps(ck["metrics"])),
          "note": ck["note"]}
    edit(ck)
    p = d / f"{name}.pt"
    torch.save(ck, p)
    return p


def test_identical(tool, base, tmp_path):
    d, ck, a = base
    copy = tmp_path / "copy.pt"
    shutil.copy(a, copy)
    res = diff(tool, a, copy)
    assert res.returncode == 0, res.describe()
    assert lines(res) == ["same: 5 tensors, 5 plain values"]
    out = diff_json(tool, a, copy, rc=0)
    assert out == {"same": True, "only_in_a": [], "only_in_b": [], "dtype_mismatch": [],
                   "shape_mismatch": [], "value_mismatch": [], "plain_mismatch": [],
                   "tensors_compared": 5, "plain_compared": 5}
    # the same content saved again (another zip, another serialization id), and legacy
    again = tmp_path / "again.pt"
    torch.save(torch.load(a), again)
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.load(a), legacy, _use_new_zipfile_serialization=False)
    assert diff(tool, a, again).returncode == 0
    res = diff(tool, legacy, a)
    assert res.returncode == 0, res.describe()


def test_changed_element(tool, base):
    d, ck, a = base

    def edit(c):
        c["model"]["enc.weight"][3, 5] += 0.5
    b = variant(d, "changed", ck, edit)
    res = diff(tool, a, b)
    assert res.returncode == 1, res.describe()
    out = lines(res)
    assert out[0].startswith("values: model.enc.weight  1/128 elements differ, max abs diff 0.5"), out
    assert out[-1].startswith("different: 1 values"), out
    j = diff_json(tool, a, b, rc=1)
    [v] = j["value_mismatch"]
    assert v["name"] == "model.enc.weight" and v["count"] == 1 and v["numel"] == 128
    want = abs(float(ck["model"]["enc.weight"][3, 5] + 0.5) - float(ck["model"]["enc.weight"][3, 5]))
    assert math.isclose(v["max_abs_diff"], want, rel_tol=1e-6)
    assert j["only_in_a"] == j["only_in_b"] == j["dtype_mismatch"] == j["plain_mismatch"] == []


def test_tolerance(tool, base, tmp_path):
    d, ck, a = base

    def edit(c):
        c["model"]["head.weight"] += 1e-4   # float64: every element moves by 1e-4
    b = variant(d, "nudged", ck, edit)
    n = ck["model"]["head.weight"].numel()
    j = diff_json(tool, a, b, rc=1)
    [v] = j["value_mismatch"]
    assert v["count"] == n and math.isclose(v["max_abs_diff"], 1e-4, rel_tol=1e-6)
    assert diff(tool, a, b, "--atol", "1e-3").returncode == 0
    assert diff(tool, a, b, "--atol=2e-4").returncode == 0
    assert diff(tool, a, b, "--atol", "1e-6").returncode == 1

    # |a - b| <= atol + rtol * |b|, element by element
    ta, tb = tmp_path / "ta.pt", tmp_path / "tb.pt"
    torch.save({"x": torch.tensor([1.0, 2.0, 100.0, 0.0], dtype=torch.float64)}, ta)
    torch.save({"x": torch.tensor([1.001, 2.0, 100.05, 1e-6], dtype=torch.float64)}, tb)

    def count(*opts):
        j = diff_json(tool, ta, tb, *opts)
        return j["value_mismatch"][0]["count"] if j["value_mismatch"] else 0
    assert count() == 3
    assert count("--atol", "1e-2") == 1           # 0.05 is past it
    assert count("--atol", "0.1") == 0
    assert count("--rtol", "1e-3") == 1           # 1e-6 against b = 1e-6: past 1e-9
    assert count("--rtol", "1e-3", "--atol", "1e-5") == 0
    assert count("--rtol", "1e-4") == 3


def test_different_keys(tool, base):
    d, ck, a = base

    def edit(c):
        c["model"]["enc.extra"] = c["model"].pop("enc.bias")
    b = variant(d, "keys", ck, edit)
    res = diff(tool, a, b)
    assert res.returncode == 1, res.describe()
    out = lines(res)
    assert "only in A: model.enc.bias" in out and "only in B: model.enc.extra" in out
    j = diff_json(tool, a, b)
    assert j["only_in_a"] == ["model.enc.bias"] and j["only_in_b"] == ["model.enc.extra"]
    assert j["tensors_compared"] == 4


def test_dtype_mismatch(tool, base):
    d, ck, a = base

    def exact(c):  # values bfloat16 holds exactly: only the dtype differs
        c["model"]["enc.weight"] = (c["model"]["enc.weight"] * 8).round() / 8
    a2 = variant(d, "exact_f32", ck, exact)

    def to_bf16(c):
        exact(c)
        c["model"]["enc.weight"] = c["model"]["enc.weight"].bfloat16()
    b = variant(d, "exact_bf16", ck, to_bf16)
    res = diff(tool, a2, b)
    assert res.returncode == 1, res.describe()
    assert "dtype: model.enc.weight  float32 -> bfloat16" in lines(res)
    j = diff_json(tool, a2, b)
    assert j["dtype_mismatch"] == [{"name": "model.enc.weight", "a": "float32", "b": "bfloat16"}]
    assert j["value_mismatch"] == []

    def rounded(c):  # bfloat16 rounds: the dtype and the values differ
        c["model"]["enc.weight"] = c["model"]["enc.weight"].bfloat16()
    b2 = variant(d, "rounded_bf16", ck, rounded)
    j = diff_json(tool, a, b2, rc=1)
    assert [m["name"] for m in j["dtype_mismatch"]] == ["model.enc.weight"]
    [v] = j["value_mismatch"]
    w = ck["model"]["enc.weight"]
    want = (w.bfloat16().double() - w.double()).abs()
    assert v["count"] == int((want > 0).sum())
    assert math.isclose(v["max_abs_diff"], float(want.max()), rel_tol=1e-9)
    # within bfloat16's rounding, only the dtype differs
    j = diff_json(tool, a, b2, "--rtol", "0.01")
    assert j["value_mismatch"] == [] and len(j["dtype_mismatch"]) == 1

    # integers compare exactly across widths
    def to_i32(c):
        c["model"]["steps"] = c["model"]["steps"].int()
    b3 = variant(d, "i32", ck, to_i32)
    j = diff_json(tool, a, b3, rc=1)
    assert j["dtype_mismatch"] == [{"name": "model.steps", "a": "int64", "b": "int32"}]
    assert j["value_mismatch"] == []


def test_integer_values(tool, tmp_path):
    a, b = tmp_path / "ia.pt", tmp_path / "ib.pt"
    big = 2 ** 62 + 1
    torch.save({"u8": torch.tensor([1, 200, 3], dtype=torch.uint8),
                "i64": torch.tensor([big, -5, 7]),
                "b": torch.tensor([True, False])}, a)
    torch.save({"u8": torch.tensor([1, -56, 3], dtype=torch.int8),   # same bits, other value
                "i64": torch.tensor([big + 1, -5, 7]),               # beyond float64's precision
                "b": torch.tensor([True, True])}, b)
    j = diff_json(tool, a, b, rc=1)
    vals = {v["name"]: v for v in j["value_mismatch"]}
    assert vals["u8"]["count"] == 1 and vals["u8"]["max_abs_diff"] == 256
    assert vals["i64"]["count"] == 1
    assert vals["b"]["count"] == 1 and vals["b"]["max_abs_diff"] == 1
    assert diff_json(tool, a, b, "--atol", "1")["value_mismatch"][0]["name"] == "u8"


def test_shape_mismatch(tool, base):
    d, ck, a = base

    def edit(c):
        c["model"]["enc.bias"] = c["model"]["enc.bias"].reshape(4, 4)
    b = variant(d, "shape", ck, edit)
    res = diff(tool, a, b)
    assert res.returncode == 1, res.describe()
    assert "shape: model.enc.bias  [16] -> [4, 4]" in lines(res)
    j = diff_json(tool, a, b)
    assert j["shape_mismatch"] == [{"name": "model.enc.bias", "a": [16], "b": [4, 4]}]
    assert j["value_mismatch"] == []


def test_plain_values(tool, base):
    d, ck, a = base

    def edit(c):
        c["epoch"] = 4
        c["metrics"]["acc"][1] = 0.8
        c["metrics"]["lr"] = 1e-3
        del c["note"]
    b = variant(d, "epoch", ck, edit)
    res = diff(tool, a, b)
    assert res.returncode == 1, res.describe()
    out = lines(res)
    assert "value: epoch  3 -> 4" in out
    assert "value: metrics.acc.1  0.75 -> 0.8" in out
    assert "value: note  'run 1' -> (absent)" in out
    assert "value: metrics.lr  (absent) -> 0.001" in out
    j = diff_json(tool, a, b)
    assert {(p["path"], p["a"], p["b"]) for p in j["plain_mismatch"]} == {
        ("epoch", "3", "4"), ("metrics.acc.1", "0.75", "0.8"), ("note", "'run 1'", None),
        ("metrics.lr", None, "0.001")}
    assert j["value_mismatch"] == [] and j["only_in_a"] == []
    # 1 and 1.0 are different values to a checkpoint reader; NaN equals NaN
    a2, b2 = d / "f1.pt", d / "f2.pt"
    torch.save({"x": 1, "n": float("nan"), "t": (1, "a")}, a2)
    torch.save({"x": 1.0, "n": float("nan"), "t": (1, "a")}, b2)
    j = diff_json(tool, a2, b2, rc=1)
    assert j["plain_mismatch"] == [{"path": "x", "a": "1", "b": "1.0"}]


def test_torch_vs_safetensors(tool, base, tmp_path):
    d, ck, a = base
    sd = ck["model"]
    st = tmp_path / "w.safetensors"
    write_safetensors(st, {"model." + k: v.numpy() for k, v in sd.items()},
                      metadata={"format": "pt"})
    res = diff(tool, a, st)
    assert res.returncode == 0, res.describe()
    assert lines(res) == ["same: 5 tensors; plain values not compared: one file is safetensors"]
    j = diff_json(tool, st, a, rc=0)
    assert j["tensors_compared"] == 5 and j["plain_compared"] is None
    # a changed tensor is found across formats
    changed = {"model." + k: v.numpy().copy() for k, v in sd.items()}
    changed["model.enc.bias"][0] += 1
    st2 = tmp_path / "w2.safetensors"
    write_safetensors(st2, changed, metadata={"format": "np"})
    j = diff_json(tool, a, st2, rc=1)
    assert [v["name"] for v in j["value_mismatch"]] == ["model.enc.bias"]
    # two safetensors files compare their metadata
    j = diff_json(tool, st, st2, rc=1)
    assert j["plain_mismatch"] == [{"path": "__metadata__.format", "a": "'pt'", "b": "'np'"}]
    assert [v["name"] for v in j["value_mismatch"]] == ["model.enc.bias"]


def test_nan_and_infinities(tool, tmp_path):
    x = torch.tensor([1.0, float("nan"), float("inf"), -2.0, float("-inf")])
    a, same, moved, inf = (tmp_path / f"{n}.pt" for n in ("a", "same", "moved", "inf"))
    torch.save({"x": x}, a)
    torch.save({"x": x.clone()}, same)
    torch.save({"x": torch.tensor([float("nan"), 1.0, float("inf"), -2.0, float("-inf")])}, moved)
    torch.save({"x": torch.tensor([1.0, float("nan"), float("-inf"), -2.0, float("-inf")])}, inf)
    assert diff(tool, a, same).returncode == 0
    assert diff_json(tool, a, same, rc=0)["same"]
    j = diff_json(tool, a, moved, rc=1)
    [v] = j["value_mismatch"]
    assert v["count"] == 2 and v["max_abs_diff"] is None   # NaN against a number
    res = diff(tool, a, moved)
    assert "values: x  2/5 elements differ, max abs diff inf" in lines(res)
    # no tolerance covers NaN against a number, nor inf against -inf
    assert diff(tool, a, moved, "--atol", "1e300").returncode == 1
    assert diff(tool, a, inf, "--atol", "1e300").returncode == 1
    # float16 NaN against float32 NaN: equal values, other dtype
    h = tmp_path / "h.pt"
    torch.save({"x": x.half()}, h)
    j = diff_json(tool, a, h, rc=1)
    assert j["value_mismatch"] == [] and len(j["dtype_mismatch"]) == 1


def test_strided_big_and_bytewise(tool, tmp_path):
    """Views compare by their elements; a big tensor streams through chunks; dtypes
    without a common number compare their bytes."""
    m = torch.arange(300 * 700, dtype=torch.float32).reshape(300, 700)
    a, b = tmp_path / "sa.pt", tmp_path / "sb.pt"
    c = torch.complex(torch.arange(4.), torch.ones(4))
    torch.save({"t": m.t(), "big": m.reshape(-1), "c": c}, a)
    m2 = m.t().contiguous()
    big = m.reshape(-1).clone()
    big[-1] += 1
    c2 = c.clone()
    c2[2] = 0
    torch.save({"t": m2, "big": big, "c": c2}, b)
    j = diff_json(tool, a, b, rc=1)
    vals = {v["name"]: v for v in j["value_mismatch"]}
    assert set(vals) == {"big", "c"}
    assert vals["big"]["count"] == 1 and vals["big"]["numel"] == 210000
    assert vals["big"]["max_abs_diff"] == 1.0
    assert vals["c"]["count"] == 1 and vals["c"]["max_abs_diff"] is None


def test_errors(tool, base, tmp_path):
    d, ck, a = base
    res = diff(tool, a, tmp_path / "missing.pt")
    assert res.returncode == 2 and "missing.pt" in res.stderr, res.describe()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    res = diff(tool, bad, a)
    assert res.returncode == 2 and "bad.pt" in res.stderr and res.stdout == "", res.describe()
    for opts in (["--atol", "-1"], ["--atol", "abc"], ["--rtol", "nan"], ["--atol"],
                 ["--bogus"]):
        res = diff(tool, a, a, *opts)
        assert res.returncode == 2 and res.stderr.startswith("ckpt: diff"), res.describe()
    for args in ([a], [a, a, a], []):  # two files, no more, no fewer
        res = tool.run("diff", *args)
        assert res.returncode == 2 and "usage: ckpt diff" in res.stderr, res.describe()
    res = tool.run("diff", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ckpt diff"), res.describe()


def test_sharded_index(tool, tmp_path):
    """A sharded index compares as the tensors of its shards."""
    sd = {"a.w": torch.arange(6.).reshape(2, 3), "b.w": torch.ones(4, dtype=torch.int32)}
    pt = tmp_path / "sd.pt"
    torch.save(sd, pt)
    write_safetensors(tmp_path / "s1.safetensors", {"a.w": sd["a.w"].numpy()})
    write_safetensors(tmp_path / "s2.safetensors", {"b.w": (sd["b.w"] + 1).numpy()})
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 40},
                                 "weight_map": {"a.w": "s1.safetensors",
                                                "b.w": "s2.safetensors"}}))
    j = diff_json(tool, pt, index, rc=1)
    assert [v["name"] for v in j["value_mismatch"]] == ["b.w"]
    assert j["value_mismatch"][0]["count"] == 4 and j["tensors_compared"] == 2
