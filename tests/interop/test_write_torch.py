"""ckpt_save_torch against the real PyTorch: files ckpt writes, read by torch.load.

Every checkpoint ckptgen.py makes (and a few more: sparse, quantized, meta,
tied weights) is opened with ckpt and saved again by the ckpt_rewrite test
tool. torch.load must return an equal object: same types (OrderedDict vs
dict, tuple vs list, set, bytes, torch.Size, device, dtype), dict order,
the OrderedDict `_metadata`, tensor values, dtype, shape, stride, storage
offset, requires_grad, Parameter-ness, quantizer parameters, and the same
sharing (views on one storage, one object reached twice). Where torch 1.13
loads the original with weights_only=True, it must load the rewrite so too.
The files are laid out as torch.save lays them out (records, order, 64-byte
alignment, CRCs), use only the opcodes and globals of the weights-only
unpicklers, and writing a written file again gives the same bytes.

What ckpt's reader folds on the way in comes back in its folded form:
frozenset as set, bytearray as bytes, TorchVersion as str, a bare storage as
a 1-D tensor.
"""
import collections
import json
import math
import os
import pathlib
import pickletools
import struct
import subprocess
import warnings
import zipfile

import pytest
import torch
from torch import nn

import ckptgen
from ckpttool import Result, crashed
from torchref import local_data_offset, storage_bytes, storage_ptr, tensor_bytes

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("CKPT_SOURCE_DIR", HERE.parent.parent)).resolve()

# Opcodes every weights-only unpickler reads, plus BINFLOAT (torch >= 2.0).
ALLOWED_OPS = {
    "PROTO", "STOP", "NONE", "NEWTRUE", "NEWFALSE", "BININT1", "BININT2", "BININT", "LONG1",
    "BINFLOAT", "BINUNICODE", "EMPTY_TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "MARK", "TUPLE",
    "EMPTY_LIST", "APPEND", "APPENDS", "EMPTY_DICT", "SETITEM", "SETITEMS", "GLOBAL", "REDUCE",
    "BUILD", "BINPERSID", "BINPUT", "LONG_BINPUT", "BINGET", "LONG_BINGET",
}
# torch 2.x's weights-only allow-list (torch/_weights_only_unpickler.py),
# as far as the writer may use it.
TORCH2_ALLOWED = {
    "collections.OrderedDict", "torch.Size", "torch.device", "torch.Tensor",
    "torch.serialization._get_layout", "_codecs.encode", "builtins.set", "builtins.complex",
    "torch._tensor._rebuild_from_type_v2", "torch.storage.UntypedStorage",
} | {f"torch._utils.{f}" for f in (
    "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_sparse_tensor",
    "_rebuild_meta_tensor_no_storage")}
TORCH_DTYPES = {
    "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32", "int64",
    "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8", "bool", "float8_e5m2",
    "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu", "qint8", "quint8",
    "qint32", "quint4x2", "quint2x4", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    "float4_e2m1fn_x2"}


def torch2_allows(module, name):
    if module == "__builtin__":
        module = "builtins"
    full = f"{module}.{name}"
    if full in TORCH2_ALLOWED:
        return True
    return module == "torch" and (name.endswith("Storage") or name in TORCH_DTYPES or
                                  name.startswith("per_"))


@pytest.fixture(scope="session")
def rewrite_bin():
    value = os.environ.get("CKPT_REWRITE")
    path = pathlib.Path(value) if value else SOURCE_DIR / "build" / "tests" / "ckpt_rewrite"
    if not path.is_file():
        pytest.fail(f"ckpt_rewrite not found at {path} (set CKPT_REWRITE or build first)")
    return str(path)


def rewrite(tool_path, src, dst, *args):
    dst = pathlib.Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    argv = [tool_path, str(src), str(dst), "--no-fsync", *map(str, args)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    res = Result(argv, proc)
    assert not crashed(res), "ckpt_rewrite crashed\n" + res.describe()
    return res


def rewrite_ok(tool_path, src, dst, *args):
    res = rewrite(tool_path, src, dst, *args)
    assert res.returncode == 0, res.describe()
    assert res.stderr == "", res.describe()
    return pathlib.Path(dst)


def load(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR is "beta" in 1.13
        return torch.load(path, **kw)


# ---- the comparison ------------------------------------------------------------

FOLDED = {frozenset: set, bytearray: bytes, torch.storage.TypedStorage: torch.Tensor,
          torch.torch_version.TorchVersion: str}


def _float_bits(x):
    return struct.pack("<d", x)


class Same:
    """Deep equality of two torch.load results, sharing included."""

    def __init__(self):
        self.ids = {}        # id(expected object) -> id(actual object)
        self.rids = {}
        self.ptrs = {}       # storage pointer in expected -> in actual
        self.rptrs = {}
        self.temps = []      # keeps what was converted alive: ids stay unique

    def _pair(self, fwd, rev, a, b, what, where):
        if fwd.setdefault(a, b) != b or rev.setdefault(b, a) != a:
            raise AssertionError(f"{where}: {what} shared differently")

    def check(self, actual, expected, where="root", track=True):
        et = FOLDED.get(type(expected), type(expected))
        assert type(actual) is et, \
            f"{where}: type {type(actual).__name__} != {et.__name__}"
        if track and isinstance(expected, (list, dict, set, frozenset, torch.Tensor,
                                           torch.storage.TypedStorage)):
            self._pair(self.ids, self.rids, id(expected), id(actual), "object", where)
        if isinstance(expected, torch.storage.TypedStorage):
            self.temps.append(expected)
            expected = torch.empty(0, dtype=expected.dtype).set_(expected)
        if isinstance(expected, torch.Tensor):
            return self.tensor(actual, expected, where)
        if isinstance(expected, dict):
            assert list(actual.keys()) == list(expected.keys()), \
                f"{where}: keys {list(actual)!r} != {list(expected)!r}"
            for k in expected:
                self.check(actual[k], expected[k], f"{where}.{k}")
            if isinstance(expected, collections.OrderedDict):
                self.check(dict(getattr(actual, "__dict__", {})),
                           dict(getattr(expected, "__dict__", {})), f"{where}.(state)")
            return
        if isinstance(expected, (list, tuple)):
            assert len(actual) == len(expected), f"{where}: length"
            for i, (a, e) in enumerate(zip(actual, expected)):
                self.check(a, e, f"{where}[{i}]")
            return
        if isinstance(expected, (set, frozenset)):
            assert actual == set(expected), f"{where}: {actual!r} != {expected!r}"
            return
        if isinstance(expected, float):
            assert _float_bits(actual) == _float_bits(expected), f"{where}: {actual} != {expected}"
            return
        if isinstance(expected, complex):
            assert _float_bits(actual.real) == _float_bits(expected.real), where
            assert _float_bits(actual.imag) == _float_bits(expected.imag), where
            return
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"

    def tensor(self, a, e, where):
        assert a.dtype == e.dtype, f"{where}: dtype {a.dtype} != {e.dtype}"
        assert a.layout == e.layout, f"{where}: layout"
        assert a.shape == e.shape, f"{where}: shape {a.shape} != {e.shape}"
        assert a.device == e.device, f"{where}: device {a.device} != {e.device}"
        assert a.requires_grad == e.requires_grad, f"{where}: requires_grad"
        if e.layout == torch.sparse_coo:
            self.check(a._indices(), e._indices(), f"{where}.indices", track=False)
            self.check(a._values(), e._values(), f"{where}.values", track=False)
            return
        if e.layout == torch.sparse_csr:
            self.check(a.crow_indices(), e.crow_indices(), f"{where}.crow_indices", track=False)
            self.check(a.col_indices(), e.col_indices(), f"{where}.col_indices", track=False)
            self.check(a.values(), e.values(), f"{where}.values", track=False)
            return
        assert a.stride() == e.stride(), f"{where}: stride {a.stride()} != {e.stride()}"
        assert a.storage_offset() == e.storage_offset(), f"{where}: storage_offset"
        if e.device.type == "meta":
            return
        if e.is_quantized:
            assert a.qscheme() == e.qscheme(), f"{where}: qscheme"
            if e.qscheme() == torch.per_tensor_affine:
                assert a.q_scale() == e.q_scale() and a.q_zero_point() == e.q_zero_point(), where
            else:
                assert torch.equal(a.q_per_channel_scales(), e.q_per_channel_scales()), where
                assert torch.equal(a.q_per_channel_zero_points(),
                                   e.q_per_channel_zero_points()), where
                assert a.q_per_channel_axis() == e.q_per_channel_axis(), where
            assert tensor_bytes(a) == tensor_bytes(e), f"{where}: values differ"
            return
        assert tensor_bytes(a) == tensor_bytes(e), f"{where}: values differ"
        assert storage_bytes(a) == storage_bytes(e), f"{where}: storage bytes differ"
        pe, pa = storage_ptr(e), storage_ptr(a)
        if pe is not None:
            self._pair(self.ptrs, self.rptrs, pe, pa, "storage", where)


def assert_same(actual, expected):
    Same().check(actual, expected)


# ---- the file --------------------------------------------------------------------

def check_layout(path, prefix=None):
    """Records, order, alignment, CRCs, opcodes and globals of a written file."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    if prefix is None:
        prefix = path.stem if "." in path.name else path.name
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        infos = z.infolist()
        names = [i.filename for i in infos]
        keys = [n[len(prefix) + 6:] for n in names if n.startswith(f"{prefix}/data/")]
        assert names == [f"{prefix}/data.pkl", f"{prefix}/byteorder"] + \
            [f"{prefix}/data/{k}" for k in sorted(keys)] + [f"{prefix}/version"]
        assert sorted(keys, key=int) == [str(i) for i in range(len(keys))]
        assert z.read(f"{prefix}/version") == b"3\n"
        assert z.read(f"{prefix}/byteorder") == b"little"
        for i in infos:
            assert i.compress_type == zipfile.ZIP_STORED
            assert i.date_time == (1980, 0, 0, 0, 0, 0)
            assert local_data_offset(raw, i) % 64 == 0, i.filename
        pkl = z.read(f"{prefix}/data.pkl")
    ops = set()
    for op, arg, _ in pickletools.genops(pkl):
        ops.add(op.name)
        if op.name == "GLOBAL":
            assert torch2_allows(*arg.split(" ")), f"{arg} is not on torch 2.x's allow-list"
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS
    assert pkl[:2] == b"\x80\x02"
    return pkl


def assert_scans_safe(tool, path):
    """ckpt's own scanner (torch 2.6+'s weights-only allow-list) passes it."""
    res = tool.run("scan", path, "--json")
    report = json.loads(res.stdout)
    assert report["files"][0]["verdict"] == "safe", report


def weights_only_ok(path):
    try:
        load(path, weights_only=True, map_location="cpu")
        return True
    except Exception:  # noqa: BLE001 - any refusal counts
        return False


# ---- more objects than ckptgen makes --------------------------------------------

def extra_objects():
    torch.manual_seed(11)
    idx = torch.tensor([[0, 1, 1], [2, 0, 2]])
    shared = nn.Parameter(torch.randn(4, 2))
    lst = [1, 2]

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    x = torch.randn(2, 3)
    return {
        "sparse": {
            "coo": torch.sparse_coo_tensor(idx, torch.tensor([3., 4., 5.]), (2, 3)),
            "coalesced": torch.sparse_coo_tensor(idx, torch.tensor([1, 2, 3]), (2, 3)).coalesce(),
            "hybrid": torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.randn(2, 4), (3, 4)),
        },
        "quantized": {
            "qint8": torch.quantize_per_tensor(torch.randn(6), 0.1, 2, torch.qint8),
            "quint8": torch.quantize_per_tensor(torch.randn(2, 3), 0.05, 100, torch.quint8),
            "qint32": torch.quantize_per_tensor(torch.randn(4), 0.01, 0, torch.qint32),
            "per_channel": torch.quantize_per_channel(
                x, torch.tensor([0.1, 0.2, 0.3], dtype=torch.double), torch.tensor([0, 1, 2]),
                1, torch.qint8),
            "quint4x2": torch.quantize_per_tensor(torch.rand(8), 0.1, 1, torch.quint4x2),
            "qview": torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)[1:3],
        },
        "meta": {"m": torch.empty(3, 4, device="meta"),
                 "p": nn.Parameter(torch.empty(2, device="meta")),
                 "t": torch.empty(2, 3, device="meta").t()},
        "tied": {"a": shared, "b": shared, "in_list": [shared, lst, lst],
                 "module": Tied().state_dict()},
        "values": {"complex64": torch.tensor([1 + 2j, -3j], dtype=torch.complex64),
                   "bool0d": torch.tensor(True), "nan": torch.tensor([math.nan]),
                   "strided_param": nn.Parameter(torch.arange(12.).reshape(3, 4).t()),
                   "empty_param": nn.Parameter(torch.empty(0, 3))},
    }


def plain_only_objects():
    """Things 1.13's weights-only unpickler reads (no float, bytes, set, device)."""
    t = torch.arange(10, dtype=torch.int32)
    return collections.OrderedDict([
        ("w", t), ("view", t[2:5]), ("p", nn.Parameter(torch.ones(2, 2, dtype=torch.float16))),
        ("ints", [0, 255, 256, 65536, -1, 2 ** 31, -2 ** 40, 2 ** 63 - 1]),
        ("nested", {"a": (1, (2, [3, None, True, False])), "b": torch.Size([2, 3])}),
        ("dtype", torch.float64), ("sparse", torch.eye(3).to_sparse()),
    ])


@pytest.fixture(scope="session")
def extra_files(gen_dir):
    out = {}
    for name, obj in [("extra", extra_objects()), ("plain_only", plain_only_objects())]:
        p = gen_dir / f"{name}.pt"
        torch.save(obj, p)
        out[name] = p
    return out


# ---- tests ------------------------------------------------------------------------

def _cpu_load(path):
    return load(path, map_location="cpu")


@pytest.mark.parametrize("name", ckptgen.CASE_NAMES)
def test_rewrite_loads_in_torch(name, torch_files, rewrite_bin, tool, tmp_path):
    case = torch_files[name]
    dst = rewrite_ok(rewrite_bin, case.path, tmp_path / "out" / f"{name}.pt")
    check_layout(dst)
    assert_scans_safe(tool, dst)
    expected = case.expected()
    assert_same(_cpu_load(dst), expected)
    if weights_only_ok(case.path):
        assert_same(load(dst, weights_only=True, map_location="cpu"), expected)


@pytest.mark.parametrize("name", ["extra", "plain_only"])
def test_rewrite_more_kinds(name, extra_files, rewrite_bin, tool, tmp_path):
    src = extra_files[name]
    dst = rewrite_ok(rewrite_bin, src, tmp_path / f"{name}.pt")
    check_layout(dst)
    assert_scans_safe(tool, dst)
    expected = _cpu_load(src)
    assert_same(_cpu_load(dst), expected)
    if weights_only_ok(src):
        assert_same(load(dst, weights_only=True), expected)
    if name == "plain_only":
        assert weights_only_ok(dst), "1.13's weights-only unpickler must read this file"


def test_tied_weights_stay_one_object(extra_files, rewrite_bin, tmp_path):
    dst = rewrite_ok(rewrite_bin, extra_files["extra"], tmp_path / "tied.pt")
    obj = _cpu_load(dst)["tied"]
    assert obj["a"] is obj["b"] is obj["in_list"][0]
    assert isinstance(obj["a"], nn.Parameter) and obj["a"].requires_grad
    assert obj["in_list"][1] is obj["in_list"][2]
    sd = obj["module"]
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    with zipfile.ZipFile(dst) as z:
        # one storage for the shared Parameter, one for the tied module weights
        assert len([n for n in z.namelist() if "/data/" in n]) == len(
            [n for n in zipfile.ZipFile(extra_files["extra"]).namelist() if "/data/" in n])


@pytest.mark.parametrize("name", ckptgen.CASE_NAMES + ["extra", "plain_only"])
def test_rewrite_is_deterministic(name, torch_files, extra_files, rewrite_bin, tmp_path):
    """pth -> pth -> pth: the second and third files are the same bytes."""
    src = torch_files[name].path if name in torch_files else extra_files[name]
    a = rewrite_ok(rewrite_bin, src, tmp_path / "a" / "same.pt")
    b = rewrite_ok(rewrite_bin, a, tmp_path / "b" / "same.pt")
    c = rewrite_ok(rewrite_bin, b, tmp_path / "c" / "same.pt")
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()


# torch 1.13 files whose pickle ckpt reproduces byte for byte: the same memo,
# batches and objects as CPython's pickler (files with frozensets,
# bytearrays, TorchVersion or cuda tags are folded or memoized differently).
SAME_PICKLE = ["dtypes", "views", "shapes", "state_dict", "training", "ddp", "root_tensor",
               "dotted_name", "bytesio", "many_tensors"]


@pytest.mark.parametrize("name", SAME_PICKLE)
def test_pickle_is_torchs(name, torch_files, rewrite_bin, tmp_path):
    case = torch_files[name]
    prefix = case.check["prefix"]
    dst = rewrite_ok(rewrite_bin, case.path, tmp_path / "x.pt", "--prefix", prefix)
    with zipfile.ZipFile(case.path) as z:
        theirs = z.read(f"{prefix}/data.pkl")
        their_data = {n: z.read(n) for n in z.namelist() if "/data/" in n}
    with zipfile.ZipFile(dst) as z:
        ours = z.read(f"{prefix}/data.pkl")
        our_data = {n: z.read(n) for n in z.namelist() if "/data/" in n}
    assert ours == theirs
    assert our_data == their_data


def test_corpus_rewrites(corpus_dir, rewrite_bin, tool, tmp_path):
    """Every benign corpus file ckpt opens (torch 1.6 to 2.x zips, legacy files,
    safetensors, pickles) is written as a torch file that ckpt reads back to the
    same tensors and bytes, and that torch loads (weights_only=True) to what it
    loads from the original, where it can load the original."""
    failures, rewritten, compared = [], 0, 0
    for src in sorted((corpus_dir / "benign").rglob("*")):
        if not src.is_file():
            continue
        dst = tmp_path / (str(src.relative_to(corpus_dir)).replace("/", "_") + ".pt")
        res = rewrite(rewrite_bin, src, dst)
        if res.returncode != 0:
            # ckpt cannot open it (not a checkpoint, or refused): nothing to write
            if f"ckpt_rewrite: {src}:" not in res.stderr:
                failures.append(f"{src}: {res.stderr.strip()}")
            continue
        rewritten += 1
        try:
            check_layout(dst)
            assert_scans_safe(tool, dst)
            a_idx, a_blobs = tool.dump(src)
            b_idx, b_blobs = tool.dump(dst)
            keys = ("name", "dtype", "shape", "requires_grad", "parameter")
            assert [[e.get(k) for k in keys] for e in b_idx] == \
                [[e.get(k) for k in keys] for e in a_idx]
            assert b_blobs == a_blobs
        except AssertionError as e:
            failures.append(f"{src}: {e}")
            continue
        if not weights_only_ok(src):
            continue
        compared += 1
        try:
            assert_same(load(dst, weights_only=True, map_location="cpu"),
                        load(src, weights_only=True, map_location="cpu"))
        except Exception as e:  # noqa: BLE001 - reported below with the file
            failures.append(f"{src}: torch: {e!r}")
    assert not failures, "\n".join(failures)
    assert rewritten > 100 and compared > 50, (rewritten, compared)


def _rebuild_sparse_tensor_2x(layout, data):
    """torch 2.x's _rebuild_sparse_tensor, in torch 1.13's terms."""
    if layout == torch.sparse_coo:
        return torch._sparse_coo_tensor_unsafe(*data[:3])
    compressed, plain, values, size = data
    if layout == torch.sparse_csr:
        return torch._sparse_csr_tensor_unsafe(compressed, plain, values, size)
    raise NotImplementedError(layout)


def test_sparse_compressed_as_torch2_writes_them(gen_dir, rewrite_bin, tool, tmp_path):
    """Compressed layouts go out as torch 2.x writes them,
    _rebuild_sparse_tensor(layout, (compressed, plain, values, size)), which
    torch 2.x's weights-only unpickler accepts. (torch 1.13 wrote sparse_csr
    with _rebuild_sparse_csr_tensor, gone from later torch, and its own
    _rebuild_sparse_tensor only knows sparse_coo: 1.13 is checked here
    through torch 2.x's rebuild function.)"""
    src = gen_dir / "csr_src.pt"
    obj = {"csr": torch.randn(4, 5).relu().to_sparse_csr(),
           "coo": torch.eye(3).to_sparse(), "dense": torch.arange(3.)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(obj, src)
    dst = rewrite_ok(rewrite_bin, src, tmp_path / "csr.pt")
    pkl = check_layout(dst)
    assert_scans_safe(tool, dst)
    globals_seen = {arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert "torch._utils _rebuild_sparse_csr_tensor" not in globals_seen
    assert b"torch.sparse_csr" in pkl and b"torch.sparse_coo" in pkl
    _, a = tool.dump(src)
    _, b = tool.dump(dst)
    assert a == b
    orig = torch._utils._rebuild_sparse_tensor
    torch._utils._rebuild_sparse_tensor = _rebuild_sparse_tensor_2x
    try:
        assert_same(load(dst), load(src))
    finally:
        torch._utils._rebuild_sparse_tensor = orig


def test_torch2_dtypes(gen_dir, rewrite_bin, tool, tmp_path):
    """Dtypes only torch 2.x has (float8 kinds, uint16/32/64, complex32) go out
    as torch 2.x writes them: _rebuild_tensor_v3 over a torch.storage
    UntypedStorage whose numel counts bytes, views sharing it."""
    import test_torch2_layout as t2

    src = gen_dir / "torch2_src.pt"
    records = [("data/0", bytes(range(24))), ("data/1", bytes(range(100, 124)))]
    pairs = [("f8", t2._v3_tensor("0", 24, (4, 6), (6, 1), 0, "float8_e4m3fn")),
             ("f8_view", t2._v3_tensor("0", 24, (3, 2), (1, 6), 2, "float8_e4m3fn")),
             ("u16", t2._v3_tensor("1", 24, (3, 4), (4, 1), 0, "uint16",
                                   storage_module="torch.storage")),
             ("u16_again", t2._v3_tensor("1", 24, (12,), (1,), 0, "uint16"))]
    t2._write_torch_zip(src, "torch2_src", [("data.pkl", b"\x80\x02" + t2._dict(pairs) + b"."),
                                            ("byteorder", b"little")] + records +
                        [("version", b"3\n")])
    dst = rewrite_ok(rewrite_bin, src, tmp_path / "t2.pt")
    pkl = check_layout(dst)
    globals_seen = {arg for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert {"torch._utils _rebuild_tensor_v3", "torch.storage UntypedStorage",
            "torch float8_e4m3fn", "torch uint16"} <= globals_seen
    assert "torch._utils _rebuild_tensor_v2" not in globals_seen
    a_idx, a_blobs = tool.dump(src)
    b_idx, b_blobs = tool.dump(dst)
    assert [(e["name"], e["dtype"], e["shape"]) for e in b_idx] == \
        [(e["name"], e["dtype"], e["shape"]) for e in a_idx]
    assert a_blobs == b_blobs
    js = tool.inspect_json(dst)
    by = {t["name"]: t for t in js["tensors"]}
    assert by["f8"]["storage"] == by["f8_view"]["storage"]
    assert by["u16"]["storage"] == by["u16_again"]["storage"]
    assert by["f8_view"]["stride"] == [1, 6] and by["f8_view"]["storage_offset"] == 2
    with zipfile.ZipFile(dst) as z:
        assert len([n for n in z.namelist() if "/data/" in n]) == 2


def test_prefix_from_file_name(torch_files, rewrite_bin, tmp_path):
    src = torch_files["views"].path
    for name, prefix in [("model.v2.pt", "model.v2"), ("noext", "noext"), (".pt", "archive")]:
        dst = rewrite_ok(rewrite_bin, src, tmp_path / name)
        with zipfile.ZipFile(dst) as z:
            assert z.namelist()[0] == f"{prefix}/data.pkl"
        assert_same(_cpu_load(dst), _cpu_load(src))


def test_location_cpu(torch_files, rewrite_bin, tmp_path):
    """--location cpu rewrites cuda tags: torch loads it without map_location."""
    src = torch_files["location_cuda"].path
    kept = rewrite_ok(rewrite_bin, src, tmp_path / "kept.pt")
    assert b"cuda:0" in zipfile.ZipFile(kept).read("kept/data.pkl")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            load(kept)
    dst = rewrite_ok(rewrite_bin, src, tmp_path / "cpu.pt", "--location", "cpu")
    pkl = check_layout(dst)
    assert b"cuda" not in pkl
    obj = load(dst)
    assert_same(obj, load(src, map_location="cpu"))
    assert obj["v"].data_ptr() == obj["a"].data_ptr() + 4
    assert all(t.device.type == "cpu" for t in (obj["a"], obj["b"], obj["v"]))
    # the legacy file too
    dst = rewrite_ok(rewrite_bin, torch_files["location_cuda_legacy"].path,
                     tmp_path / "cpu_legacy.pt", "--location", "cpu")
    assert_same(load(dst), load(torch_files["location_cuda_legacy"].path, map_location="cpu"))


def test_zip64_fields_with_a_lowered_threshold(torch_files, rewrite_bin, tool, tmp_path):
    """With ZIP64 fields from 100 bytes on, zipfile and ckpt read the file and
    find the same bytes. (torch's miniz checks a small record at an offset
    marked 0xFFFFFFFF against the archive size, so it only reads such
    records in files really over 4 GiB; CKPT_SLOW_TESTS=1 checks one.)"""
    case = torch_files["views"]
    normal = rewrite_ok(rewrite_bin, case.path, tmp_path / "a" / "z.pt")
    dst = rewrite_ok(rewrite_bin, case.path, tmp_path / "b" / "z.pt", "--zip64-threshold", 100)
    raw = dst.read_bytes()
    with zipfile.ZipFile(dst) as z, zipfile.ZipFile(normal) as n:
        assert z.testzip() is None
        assert [i.filename for i in z.infolist()] == [i.filename for i in n.infolist()]
        for i, j in zip(z.infolist(), n.infolist()):
            assert z.read(i) == n.read(j)
            assert local_data_offset(raw, i) % 64 == 0
            if i.header_offset >= 100 or i.file_size >= 100:
                assert i.extra[:2] == b"\x01\x00", i.filename
    _, ours = tool.dump(dst)
    _, theirs = tool.dump(case.path)
    assert ours == theirs
    b = rewrite_ok(rewrite_bin, dst, tmp_path / "c" / "z.pt")
    assert b.read_bytes() == normal.read_bytes()


@pytest.mark.skipif(os.environ.get("CKPT_SLOW_TESTS") != "1", reason="CKPT_SLOW_TESTS=1 only")
def test_zip64_real(rewrite_bin, tmp_path):
    """A storage over 4 GiB, so real ZIP64 fields, read back by torch."""
    src = tmp_path / "big.pt"
    torch.save({"big": torch.zeros(2 ** 32 + 64, dtype=torch.uint8),
                "after": torch.tensor([1.5, -2.0])}, src)
    dst = rewrite_ok(rewrite_bin, src, tmp_path / "out" / "big.pt")
    src.unlink()
    obj = load(dst, weights_only=True)
    assert obj["big"].shape == (2 ** 32 + 64,) and not obj["big"][-64:].any()
    assert torch.equal(obj["after"], torch.tensor([1.5, -2.0]))


def test_objects_outside_the_allow_list_are_not_written(gen_dir, rewrite_bin, tmp_path):
    """A pickled module opened permissively holds inert objects: the writer
    refuses them (a file it writes never names a class torch.load would
    have to import), naming the class, and leaves no file behind."""
    src = gen_dir / "whole_module.pt"
    torch.save({"ok": torch.ones(2), "net": nn.Linear(2, 2)}, src)
    dst = tmp_path / "never.pt"
    res = rewrite(rewrite_bin, src, dst, "--permissive")
    assert res.returncode == 2, res.describe()
    assert "torch.nn.modules.linear.Linear" in res.stderr, res.describe()
    assert "net" in res.stderr, res.describe()
    assert os.listdir(tmp_path) == []
