"""ckpt_save_safetensors: files the reference reader's rules accept, with the tensors
torch.load sees, decoded independently from the raw bytes and read back by ckpt.

The writer runs through the test tool st_write (CKPT_ST_WRITE): `st_write IN OUT`
saves the tensors of IN. Every generated torch checkpoint goes through it: those
holding a tensor safetensors cannot represent are refused, with nothing left behind.
"""
import collections
import json
import os
import pathlib
import struct
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import ckptgen
import ckpttool
import safetensors_rules

HERE = pathlib.Path(__file__).resolve().parent

ST_DTYPES = {  # torch dtype -> (safetensors name, numpy dtype of the raw bytes)
    torch.float64: ("F64", np.float64), torch.float32: ("F32", np.float32),
    torch.float16: ("F16", np.float16), torch.bfloat16: ("BF16", np.uint16),
    torch.complex64: ("C64", np.complex64),
    torch.int64: ("I64", np.int64), torch.int32: ("I32", np.int32),
    torch.int16: ("I16", np.int16), torch.int8: ("I8", np.int8),
    torch.uint8: ("U8", np.uint8), torch.bool: ("BOOL", np.bool_),
}
NP_OF = {name: npd for name, npd in ST_DTYPES.values()}


@pytest.fixture(scope="session")
def st_write_bin():
    value = os.environ.get("CKPT_ST_WRITE")
    path = pathlib.Path(value) if value else HERE.parent.parent / "build" / "tests" / "st_write"
    if not path.is_file():
        pytest.fail(f"st_write not found at {path} (set CKPT_ST_WRITE or build first)")
    return str(path)


def run_st_write(st_write_bin, *args):
    argv = [st_write_bin, *map(str, args)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    res = ckpttool.Result(argv, proc)
    assert not ckpttool.crashed(res), "st_write crashed\n" + res.describe()
    return res


def write(st_write_bin, src, dst, *extra):
    res = run_st_write(st_write_bin, src, dst, *extra)
    assert res.returncode == 0, res.describe()
    assert res.stderr == "", res.describe()
    raw = pathlib.Path(dst).read_bytes()
    header = safetensors_rules.check(raw)
    return raw, header


def refused(st_write_bin, src, dst, *words):
    res = run_st_write(st_write_bin, src, dst)
    assert res.returncode == 2, res.describe()
    for w in words:
        assert w in res.stderr, res.describe()
    assert not pathlib.Path(dst).exists()
    # no temporary left beside the target either
    assert [p.name for p in pathlib.Path(dst).parent.iterdir()
            if pathlib.Path(dst).name in p.name] == []
    return res


# ---- what the writer should make of an object --------------------------------

def is_container(obj):
    return isinstance(obj, (dict, list, tuple, set, frozenset)) and not isinstance(obj, torch.Size)


def holds_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(holds_tensor(v) for v in obj.values())
    if is_container(obj):
        return any(holds_tensor(v) for v in obj)
    return False


def join(path, part):
    return f"{path}.{part}" if path else part


def split(obj):
    """(tensors, leaves): [(name, tensor)] and {path: value} in walk order."""
    tensors, leaves = [], collections.OrderedDict()

    def walk(v, path):
        if isinstance(v, torch.Tensor):
            tensors.append((path, v))
        elif is_container(v) and (holds_tensor(v) or (path == "" and isinstance(v, dict))):
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, child in items:
                walk(child, join(path, k if isinstance(k, str) else str(k)))
        else:
            leaves.setdefault(path, v)

    walk(obj, "")
    if len(tensors) == 1 and tensors[0][0] == "" and tensors[0][1] is obj:
        tensors = [("tensor", obj)]
    return tensors, leaves


def jsonable(v):
    """What the writer's JSON text stands for, as Python's json would take it."""
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    if isinstance(v, complex):
        return [v.real, v.imag]
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {(k if k is None or isinstance(k, (str, int, float, bool)) else str(k)): jsonable(x)
                for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    return v


def check_leaf(text, value, path):
    if isinstance(value, (set, frozenset)):
        # a set's order is the saving process's hash order: compare as a multiset
        got = json.loads(text)
        assert sorted(map(repr, got)) == sorted(repr(x) for x in jsonable(value)), path
    else:
        assert text == json.dumps(jsonable(value)), path


def data_order(entries):
    """Names in the reference order: element size descending, then name bytes."""
    return sorted(entries, key=lambda n: (-max(1, safetensors_rules.DTYPE_BITS[entries[n]["dtype"]] // 8),
                                          n.encode()))


def torch_bytes(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def decode(raw, header):
    """{name: numpy array} decoded from the raw bytes, without ckpt."""
    (n,) = struct.unpack("<Q", raw[:8])
    base = 8 + n
    out = {}
    for name, e in safetensors_rules.tensors_of(header).items():
        b, end = e["data_offsets"]
        a = np.frombuffer(raw[base + b:base + end], dtype=NP_OF[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        out[name] = a
    return out


def as_numpy(t):
    t = t.detach()
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def check_against(raw, header, obj, tool=None, path=None):
    """Everything the file must hold for obj: names, order, dtypes, shapes, bytes,
    values decoded independently, metadata, and the same through ckpt's reader."""
    tensors, leaves = split(obj)
    tied = safetensors_rules.tied(tensors)  # written once, the others named in the metadata
    tensors = [(name, t) for name, t in tensors if name not in tied]
    entries = safetensors_rules.tensors_of(header)
    assert sorted(entries) == sorted(name for name, _ in tensors)
    assert list(entries) == data_order(entries)  # header order is data order
    starts = [entries[n]["data_offsets"][0] for n in entries]
    assert starts == sorted(starts)
    arrays = decode(raw, header)
    (n,) = struct.unpack("<Q", raw[:8])
    for name, t in tensors:
        e = entries[name]
        assert e["dtype"] == ST_DTYPES[t.dtype][0], name
        assert e["shape"] == list(t.shape), name
        b, end = e["data_offsets"]
        assert raw[8 + n + b:8 + n + end] == torch_bytes(t), name
        want = as_numpy(t)
        got = arrays[name]
        assert got.shape == want.shape and got.dtype == want.dtype, name
        kind = want.dtype.kind
        assert np.array_equal(got, want, equal_nan=kind in "fc"), name
    meta = header.get("__metadata__", {})
    assert list(meta) == list(leaves) + sorted(tied, key=lambda n: n.encode())
    for p, v in leaves.items():
        check_leaf(meta[p], v, p)
    for name, kept in tied.items():
        assert meta[name] == kept, name
    if tool is not None:
        index, blobs = tool.dump(path)
        got = {e["name"]: (e, blob) for e, blob in zip(index, blobs)}
        assert [e["name"] for e in index] == list(entries)
        for name, t in tensors:
            e, blob = got[name]
            assert e["dtype"] == str(t.dtype).replace("torch.", ""), name
            assert e["shape"] == list(t.shape), name
            assert blob == torch_bytes(t), name
    return tensors, leaves


# ---- every generated torch checkpoint ----------------------------------------

def refusal_reason(tensors):
    names = [n for n, _ in tensors]
    for name, t in tensors:
        if t.is_quantized:
            return ["quantized", name]
        if t.layout != torch.strided:
            return ["sparse", name]
        if t.dtype not in ST_DTYPES:
            return [str(t.dtype).replace("torch.", ""), name]
    dups = [n for n in names if names.count(n) > 1]
    if dups:
        return ["two tensors", dups[0]]
    return None


@pytest.mark.parametrize("case", ckptgen.CASE_NAMES)
def test_generated(st_write_bin, torch_files, tool, tmp_path, case):
    c = torch_files[case]
    obj = c.expected()
    out = tmp_path / "out.safetensors"
    reason = refusal_reason(split(obj)[0])
    if reason:
        refused(st_write_bin, c.path, out, *reason)
        return
    raw, header = write(st_write_bin, c.path, out)
    check_against(raw, header, obj, tool, out)


def test_dtypes_state_dict(st_write_bin, tool, tmp_path):
    """Every dtype torch 1.13 saves that safetensors has, with its extremes."""
    g = torch.Generator().manual_seed(11)
    sd = collections.OrderedDict()
    for dt in ST_DTYPES:
        if dt.is_floating_point or dt.is_complex:
            base = torch.randn(7, 3, generator=g, dtype=torch.float64)
            t = base.to(dt) if not dt.is_complex else torch.complex(base.float(), base.float())
            t.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0]).to(dt)
        elif dt == torch.bool:
            t = torch.rand(5, 4, generator=g) > 0.5
        else:
            info = torch.iinfo(dt)
            t = torch.randint(info.min, info.max, (4, 5), generator=g, dtype=dt)
            t.view(-1)[:2] = torch.tensor([info.min, info.max], dtype=dt)
        sd[f"w.{str(dt)[6:]}"] = t
    sd["odd.u8"] = torch.arange(3, dtype=torch.uint8)        # odd sizes before wider dtypes
    sd["odd.i16"] = torch.arange(5, dtype=torch.int16)
    src = tmp_path / "sd.pt"
    torch.save(sd, src)
    out = tmp_path / "sd.safetensors"
    raw, header = write(st_write_bin, src, out)
    check_against(raw, header, torch.load(src), tool, out)
    assert "__metadata__" not in header  # a state dict has no plain values
    # every tensor aligned to its element size (checked by the rules), data at 64
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 64 == 0
    assert raw[8:8 + n].rstrip(b" ").endswith(b"}")
    info = tool.inspect_json(out)
    assert info["format"] == "safetensors"
    assert len(info["tensors"]) == len(sd)


def test_views_noncontiguous(st_write_bin, tool, tmp_path):
    """Views come out contiguous, each with only its own elements; big strided
    tensors stream through several chunks."""
    big = torch.arange(1500 * 1400, dtype=torch.float32).reshape(1500, 1400)
    obj = {
        "t": big.t(),                                     # 8 MiB, strided, > one chunk
        "rows": big[100:103],
        "step": big[::7, 3::5],
        "expand": torch.arange(4, dtype=torch.int64).expand(3, 4),
        "perm": torch.arange(60, dtype=torch.int16).reshape(3, 4, 5).permute(2, 0, 1),
        "scalar_view": big[5, 6],
        "bf16_t": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t(),
        "c64_t": torch.complex(torch.arange(6.), -torch.arange(6.)).reshape(2, 3).t(),
        "bool_step": (torch.arange(20) % 3 == 0)[::2],
    }
    src = tmp_path / "views.pt"
    torch.save(obj, src)
    out = tmp_path / "views.safetensors"
    raw, header = write(st_write_bin, src, out)
    check_against(raw, header, torch.load(src), tool, out)
    # the file holds the views' elements only, not their storages
    entries = safetensors_rules.tensors_of(header)
    assert sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values()) == sum(
        t.numel() * t.element_size() for t in obj.values())


def test_zero_d_and_empty(st_write_bin, tool, tmp_path):
    obj = {
        "s": torch.tensor(2.5), "si": torch.tensor(-3, dtype=torch.int64),
        "sb": torch.tensor(True), "sh": torch.tensor(1.5, dtype=torch.float16),
        "e": torch.empty(0), "e2": torch.empty(3, 0, dtype=torch.int32),
        "e3": torch.zeros(2, 0, 4, dtype=torch.bfloat16), "one": torch.ones(1, 1, 1),
    }
    src = tmp_path / "shapes.pt"
    torch.save(obj, src)
    out = tmp_path / "shapes.safetensors"
    raw, header = write(st_write_bin, src, out)
    check_against(raw, header, torch.load(src), tool, out)
    entries = safetensors_rules.tensors_of(header)
    assert entries["s"]["shape"] == [] and entries["e2"]["shape"] == [3, 0]
    assert entries["e"]["data_offsets"][0] == entries["e"]["data_offsets"][1]


def test_training_checkpoint_metadata(st_write_bin, tool, tmp_path):
    """Epoch, metrics, optimizer hyper-parameters, scheduler and versions become
    __metadata__ JSON under their paths; tensors keep their names."""
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    sd = model.state_dict()
    ck = {
        "model": sd,
        "ema": {"decay": 0.999, "shadow": {k: v.clone() for k, v in sd.items()}},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 7,
        "global_step": 12345678901,
        "metrics": {"val_loss": 0.125, "acc": [0.5, 0.75, float("nan")], "best": float("inf")},
        "versions": {"torch": str(torch.__version__), "ckpt": "0.1.0"},
        "config": {"dtype": torch.bfloat16, "device": torch.device("cuda", 0), "amp": True,
                   "tag": None, "sizes": torch.Size([3, 4]), "seed_bytes": b"\x00\xfe",
                   "z": 1 + 2j, "unicode": "λ-train ✓ 🚀", "quote": 'say "hi"\n'},
    }
    ck["tied"] = sd["0.weight"]  # the same tensor object under a second path
    src = tmp_path / "last.pth"
    torch.save(ck, src)
    out = tmp_path / "last.safetensors"
    raw, header = write(st_write_bin, src, out)
    tensors, leaves = check_against(raw, header, torch.load(src), tool, out)
    meta = header["__metadata__"]
    assert json.loads(meta["epoch"]) == 7
    assert json.loads(meta["global_step"]) == 12345678901
    m = json.loads(meta["metrics"])
    assert m["val_loss"] == 0.125 and m["acc"][:2] == [0.5, 0.75] and m["best"] == float("inf")
    assert json.loads(meta["ema.decay"]) == 0.999
    groups = json.loads(meta["optimizer.param_groups"])
    assert groups[0]["initial_lr"] == 1e-3 and groups[0]["betas"] == [0.9, 0.999]
    assert groups[0]["params"] == [0, 1, 2, 3]
    assert json.loads(meta["scheduler"])["T_max"] == 10
    cfg = json.loads(meta["config"])
    assert cfg == {"dtype": "torch.bfloat16", "device": "cuda:0", "amp": True, "tag": None,
                   "sizes": [3, 4], "seed_bytes": "00fe", "z": [1.0, 2.0],
                   "unicode": "λ-train ✓ 🚀", "quote": 'say "hi"\n'}
    assert json.loads(meta["versions"]) == {"torch": str(torch.__version__), "ckpt": "0.1.0"}
    # tied weights: written once, under the first name in byte order, as
    # safetensors' save_model does; the other name is in the metadata
    entries = safetensors_rules.tensors_of(header)
    assert "model.0.weight" in entries and "tied" not in entries
    assert meta["tied"] == "model.0.weight"
    assert "optimizer.state.0.exp_avg" in entries and "ema.shadow.2.bias" in entries


def test_big_endian_and_deflated_sources(st_write_bin, tool, tmp_path):
    """Bytes swapped from a big-endian file and inflated from a re-zipped one
    come out as the little-endian values torch.load gives."""
    obj = {k: v for k, v in ckptgen.all_dtypes_obj().items() if v.dtype in ST_DTYPES}
    obj["views"] = ckptgen.views_obj()
    src = tmp_path / "src.pt"
    torch.save(obj, src)
    for name, make in (("be", ckptgen.make_big_endian), ("deflated", ckptgen.make_deflated)):
        derived = tmp_path / f"{name}.pt"
        make(src, derived)
        out = tmp_path / f"{name}.safetensors"
        raw, header = write(st_write_bin, derived, out)
        check_against(raw, header, torch.load(src), tool, out)


def test_caller_metadata(st_write_bin, tmp_path):
    """Options' metadata entries go in verbatim, after the plain values, and win
    over a plain value of the same name."""
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "epoch": 3, "note": "x"}, src)
    out = tmp_path / "m.safetensors"
    raw, header = write(st_write_bin, src, out, "--meta", "format=pt", "--meta", "epoch=final",
                        "--meta", "text=ünïcode \"q\" \\ \n")
    assert header["__metadata__"] == {"epoch": "final", "note": '"x"', "format": "pt",
                                      "text": "ünïcode \"q\" \\ \n"}
    assert list(header["__metadata__"]) == ["epoch", "note", "format", "text"]


def test_no_tensors(st_write_bin, tmp_path):
    """A checkpoint without tensors: its root dict's entries become metadata, and
    the data buffer is empty."""
    src = tmp_path / "plain.pt"
    obj = {"epoch": 3, "lr": 0.1, "hist": [1, 2], 5: None}
    torch.save(obj, src)
    out = tmp_path / "plain.safetensors"
    raw, header = write(st_write_bin, src, out)
    assert header == {"__metadata__": {"epoch": "3", "lr": "0.1", "hist": "[1, 2]", "5": "null"}}
    assert len(raw) == 8 + struct.unpack("<Q", raw[:8])[0]
    check_against(raw, header, obj)
    src2 = tmp_path / "list.pt"
    torch.save([1, "a"], src2)
    raw, header = write(st_write_bin, src2, tmp_path / "list.safetensors")
    assert header == {"__metadata__": {"": '[1, "a"]'}}


def test_floats_as_python_writes_them(st_write_bin, tmp_path):
    """Metadata floats are repr()'s shortest round-trip text, at every magnitude."""
    rng = np.random.default_rng(13)
    vals = (rng.standard_normal(20000) * 10.0 ** rng.integers(-320, 306, 20000)).tolist()
    vals += [0.0, -0.0, 1.0, 0.1, 1e16, 1e15, 123456789012345678.0, 1e-4, 1e-5, 0.00012,
             5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 9007199254740993.0,
             float("nan"), float("inf"), -float("inf"), 100.0, 1e22, 1.5e-7]
    obj = {"w": torch.zeros(1), "floats": vals, "ints": [0, -1, 2 ** 63 - 1, -2 ** 63, 2 ** 64,
                                                        -(2 ** 100) + 1]}
    src = tmp_path / "f.pt"
    torch.save(obj, src)
    raw, header = write(st_write_bin, src, tmp_path / "f.safetensors")
    assert header["__metadata__"]["floats"] == json.dumps(vals)
    assert header["__metadata__"]["ints"] == json.dumps(obj["ints"])


def test_root_tensor_is_named_tensor(st_write_bin, tmp_path):
    src = tmp_path / "bare.pt"
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    torch.save(t, src)
    out = tmp_path / "bare.safetensors"
    raw, header = write(st_write_bin, src, out)
    assert list(safetensors_rules.tensors_of(header)) == ["tensor"]
    assert decode(raw, header)["tensor"].tolist() == t.tolist()


def test_deterministic_and_round_trip(st_write_bin, torch_files, tmp_path):
    """The same input gives the same bytes; a file we wrote, written again from
    its safetensors form (its __metadata__ passed along), gives the same bytes."""
    src = torch_files["training"].path
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    raw_a, _ = write(st_write_bin, src, a)
    raw_b, _ = write(st_write_bin, src, b)
    assert raw_a == raw_b
    c = tmp_path / "c.safetensors"
    raw_c, _ = write(st_write_bin, a, c)
    assert raw_c == raw_a
    d = tmp_path / "d.safetensors"
    raw_d, _ = write(st_write_bin, c, d)
    assert raw_d == raw_a


def test_progress(st_write_bin, tmp_path):
    src = tmp_path / "p.pt"
    torch.save({"a": torch.zeros(3 << 20), "b": torch.ones(5)}, src)  # 12 MiB: chunks
    out = tmp_path / "p.safetensors"
    res = run_st_write(st_write_bin, src, out, "--progress")
    assert res.returncode == 0, res.describe()
    calls = [tuple(map(int, line.split()[1:])) for line in res.stdout.splitlines()]
    size = out.stat().st_size
    assert len(calls) >= 4
    assert all(total == size for _, total in calls)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and dones[-1] == size


def test_replaces_existing_file(st_write_bin, tmp_path):
    src = tmp_path / "r.pt"
    torch.save({"w": torch.arange(3.)}, src)
    out = tmp_path / "r.safetensors"
    out.write_bytes(b"old contents")
    raw, header = write(st_write_bin, src, out)
    assert list(safetensors_rules.tensors_of(header)) == ["w"]
    # a refused save leaves the previous file as it was
    bad = tmp_path / "bad.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)}, bad)
    res = run_st_write(st_write_bin, bad, out)
    assert res.returncode == 2, res.describe()
    assert out.read_bytes() == raw
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "r.pt", "r.safetensors"]


@pytest.mark.parametrize("what", ["quantized", "complex128", "sparse", "duplicate", "reserved",
                                  "meta"])
def test_refusals(st_write_bin, tmp_path, what):
    t = torch.ones(3)
    if what == "quantized":
        obj, words = {"ok": t, "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0,
                                                              torch.quint8)}, ["'q'", "quantized"]
    elif what == "complex128":
        obj, words = {"c": torch.zeros(2, dtype=torch.complex128)}, ["'c'", "complex128"]
    elif what == "sparse":
        obj, words = {"s": torch.eye(3).to_sparse()}, ["'s'", "sparse"]
    elif what == "duplicate":
        obj, words = {1: t, "1": torch.zeros(2)}, ["two tensors", "'1'"]
    elif what == "reserved":
        obj, words = {"__metadata__": t}, ["__metadata__"]
    else:
        obj, words = {"m": torch.empty(3, device="meta")}, ["'m'", "meta"]
    src = tmp_path / "in.pt"
    try:
        torch.save(obj, src)
    except Exception as e:  # noqa: BLE001 - torch versions differ in what they save
        pytest.skip(f"torch cannot save it: {e}")
    refused(st_write_bin, src, tmp_path / "out.safetensors", *words)


def test_rules_catch_bad_files():
    """The checker itself: each rule refuses a file that breaks it."""
    def build_text(h, data=b"", pad=True):
        h = h.encode() if isinstance(h, str) else h
        if pad:
            h += b" " * ((-(8 + len(h))) % 64)
        return struct.pack("<Q", len(h)) + h + data

    def build(header, data=b"", pad=True):
        return build_text(json.dumps(header), data, pad)

    good = build({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8))
    safetensors_rules.check(good)
    bad = {
        "gap": build({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8)),
        "size": build({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "trailing": build({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                          bytes(9)),
        "overlap": build({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                          "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6)),
        "missing": build({"a": {"dtype": "F32", "shape": [2]}}, bytes(8)),
        "dtype": build({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
                       bytes(16)),
        "misaligned": build({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                             "b": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}},
                            bytes(5)),
        "unpadded": build({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}},
                          bytes(1), pad=False),
        "overflow": build({"a": {"dtype": "F32", "shape": [2 ** 62, 8],
                                 "data_offsets": [0, 0]}}),
        "nul": build({"a\0": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}),
        "metadata": build({"__metadata__": {"k": 1}}),
    }
    bad["duplicate"] = build_text('{"a": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}, '
                                  '"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                                  bytes(8))
    bad["nan_token"] = build_text('{"__metadata__": {"k": NaN}}')
    bad["length"] = struct.pack("<Q", 10 ** 8 + 1) + good[8:]
    bad["past_end"] = struct.pack("<Q", len(good)) + good[8:]
    bad["utf8"] = struct.pack("<Q", 64 - 8) + b'{"\xff": 1}' + b" " * (64 - 8 - 9)
    for name, data in bad.items():
        with pytest.raises(safetensors_rules.RuleError):
            safetensors_rules.check(data)
            pytest.fail(f"rule not enforced: {name}")
