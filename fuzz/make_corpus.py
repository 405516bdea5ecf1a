#!/usr/bin/python3
"""Rebuilds the named seeds of every fuzz target's corpus, fuzz/corpus/<target>/:
fuzz_file, fuzz_safetensors, fuzz_zip (archives), fuzz_pickle (pickle streams,
the data.pkl of torch zips among them), fuzz_roundtrip (valid files of every
format the writers must reproduce) and the framing and record seeds of
fuzz_scan, and fuzz_torchscript (TorchScript archives). Seeds that libFuzzer found (named by
their SHA-1) are left alone.

Seeds are small (<= 8 KiB): files copied byte for byte from the shared
third-party corpus (see its MANIFEST.md for sources and licenses), files made
with PyTorch (Debian's 1.13, /usr/bin/python3), and hand-made safetensors,
archives and pickles. Nothing is ever unpickled here: zip members are read
as bytes.

usage: /usr/bin/python3 fuzz/make_corpus.py [--force] [CORPUS_DIR]
"""
import io
import json
import os
import pathlib
import struct
import sys
import tempfile
import zipfile
import zlib

HERE = pathlib.Path(__file__).resolve().parent
ARGS = [a for a in sys.argv[1:] if a != "--force"]
CORPUS = pathlib.Path(ARGS[0] if ARGS else
                      os.environ.get("CKPT_CORPUS", HERE.parent.parent / "shared" / "corpus"))
MAX = 8192

FROM_CORPUS_FILE = [
    "benign/burn/src/pytorch/tests/reader/test_data/float32.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/parameter.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/scalar.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/legacy_shared_storage.pt",
    "benign/candle/fortran_tensor_3d.pth",
    "benign/gopickle/tensor_bfloat16_proto2_zip.pt",
    "benign/gopickle/tensor_bool_proto4_zip.pt",
    "benign/gopickle/tensor_float32_proto1.pt",
    "benign/Pickle.jl/offset-strides.bin",
    "benign/Pickle.jl/bool.bin",
    "benign/Pickle.jl/builtin_type_p0.pkl",
    "benign/Pickle.jl/builtin_type_p4.pkl",
    "benign/bumblebee/storage_view.legacy.pt",
    "benign/bumblebee/tensors.zip.pt",
    "benign/modelaudit/samples/pickles/safe_model_with_encoding.pkl",
    "benign/djl/list.safetensors",
    "benign/SafeTensors.jl/sharded/model-00005-of-00006.safetensors",
    "malicious/picklescan/data/malicious1_v4.pkl",
    "malicious/picklescan/data/malicious11.pkl",
    "malicious/picklescan/data2/malicious1_crc.zip",
]

FROM_CORPUS_ST = [
    "benign/djl/list.safetensors",
    "benign/safetensors-cpp/model.safetensors",
    "benign/SafeTensors.jl/sharded/model-00001-of-00006.safetensors",
    "benign/SafeTensors.jl/sharded/model-00002-of-00006.safetensors",
    "benign/SafeTensors.jl/sharded/model-00003-of-00006.safetensors",
    "benign/SafeTensors.jl/sharded/model-00004-of-00006.safetensors",
    "benign/SafeTensors.jl/sharded/model-00005-of-00006.safetensors",
    "benign/SafeTensors.jl/sharded/model-00006-of-00006.safetensors",
    "malicious/safetensors-cpp/safetensors_abuse_attempt_1.safetensors",
]


# archives for fuzz_zip (with the zip-format files of FROM_CORPUS_FILE)
FROM_CORPUS_ZIP = [
    "benign/bumblebee/ordered_dict.zip.pt",
    "benign/bumblebee/state_dict_base.zip.pt",
    "benign/mlverse-torch/state_dict.pth",
    "benign/TorchSharp/tuple_out.dat",
    "benign/picklescan/data/benign_password_protected.zip",
    "benign/modelaudit/samples/archives/safe_model.zip",
    "malicious/picklescan/data/malicious1_0x1.zip",
    "malicious/picklescan/data/malicious1_0x20.zip",
    "malicious/picklescan/data/malicious1_0x40.zip",
    "malicious/picklescan/data/malicious1_central_directory.zip",
    "malicious/djl/linux-created-offender-traversal-elements.zip",
    "malicious/modelaudit/samples/archives/path_traversal.zip",
]

# pickle streams for fuzz_pickle (with the pickles of FROM_CORPUS_FILE)
FROM_CORPUS_PICKLE = [
    "benign/Pickle.jl/builtin_type_p1.pkl",
    "benign/Pickle.jl/builtin_type_p2.pkl",
    "benign/Pickle.jl/builtin_type_p3.pkl",
    "benign/Pickle.jl/csr_mat.pkl",
    "benign/zml/simple_test_4.pickle",
    "benign/picklescan/data/benign0_v0.pkl",
    "malicious/modelaudit/pickles/memo_attack.pkl",
    "malicious/modelaudit/pickles/multiple_stream_attack.pkl",
    "malicious/modelaudit/pickles/stack_global_attack.pkl",
    "malicious/picklescan/data/malicious13a.pkl",
    "malicious/picklescan/data/malicious15a.pkl",
]

# valid files for fuzz_roundtrip, one of each kind the writers must reproduce
FROM_CORPUS_ROUNDTRIP = [
    "benign/burn/src/pytorch/tests/reader/test_data/float32.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/parameter.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/scalar.pt",
    "benign/burn/src/pytorch/tests/reader/test_data/legacy_shared_storage.pt",
    "benign/bumblebee/state_dict_full.zip.pt",
    "benign/bumblebee/tensors.legacy.pt",
    "benign/bumblebee/noncontiguous_tensor.zip.pt",
    "benign/bumblebee/storage_view.legacy.pt",
    "benign/candle/fortran_tensor_3d.pth",
    "benign/gopickle/tensor_bfloat16_proto2_zip.pt",
    "benign/gopickle/tensor_float32_proto1.pt",
    "benign/mlverse-torch/ordered_dict.pt",
    "benign/Pickle.jl/offset-strides.bin",
    "benign/Pickle.jl/builtin_type_p4.pkl",
    "benign/djl/list.safetensors",
    "benign/safetensors-cpp/model.safetensors",
    "benign/SafeTensors.jl/sharded/model-00003-of-00006.safetensors",
]


def seed_name(rel):
    return rel.replace("/", "_")


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] packed in order."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dt, shape, raw in tensors:
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def st_seeds():
    out = {}
    out["all_dtypes.safetensors"] = safetensors([
        ("f64", "F64", [2], struct.pack("<2d", 1.5, -2.0)),
        ("c64", "C64", [1], struct.pack("<2f", 1.0, -1.0)),
        ("i64", "I64", [1], struct.pack("<q", -7)),
        ("u64", "U64", [1], struct.pack("<Q", 2 ** 63)),
        ("f32", "F32", [2, 1], struct.pack("<2f", 0.5, 3.0)),
        ("i32", "I32", [1], struct.pack("<i", -3)),
        ("u32", "U32", [1], struct.pack("<I", 9)),
        ("bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
        ("f16", "F16", [1], b"\x00\x3c"),
        ("i16", "I16", [1], b"\xff\xff"),
        ("u16", "U16", [1], b"\x01\x00"),
        ("e5m2", "F8_E5M2", [2], b"\x3c\xbc"),
        ("e4m3", "F8_E4M3", [2], b"\x38\xb8"),
        ("e8m0", "F8_E8M0", [1], b"\x7f"),
        ("i8", "I8", [1], b"\x80"),
        ("u8", "U8", [], b"\x07"),
        ("b", "BOOL", [3], b"\x01\x00\x01"),
        ("f4", "F4", [2], b"\x21"),
        ("f6", "F6_E2M3", [4], b"\x01\x02\x03"),
        ("empty", "F32", [0, 3], b""),
    ], metadata={"format": "pt", "note": "seed"})
    out["unaligned.safetensors"] = safetensors([
        ("a", "U8", [3], b"abc"), ("b", "F32", [1], struct.pack("<f", 2.0))], pad=False)
    out["duplicate_key.safetensors"] = (
        lambda t: struct.pack("<Q", len(t)) + t + b"\0" * 8)(
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}')
    out["overlap.safetensors"] = (
        lambda t: struct.pack("<Q", len(t)) + t + b"\0" * 12)(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
        b'"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}')
    out["nul_name.safetensors"] = (
        lambda t: struct.pack("<Q", len(t)) + t + b"\0" * 4)(
        b'{"a\\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')
    out["huge_header_len.safetensors"] = struct.pack("<Q", 2 ** 64 - 1) + \
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' + b"\0" * 4
    # a bare header: fuzz_safetensors adds the length prefix itself
    out["bare_header.json"] = b'{"x":{"dtype":"I16","shape":[0],"data_offsets":[0,0]}}'
    out.update(header_seeds())
    return out


def header_seeds():
    """Bare headers for the streaming JSON reader: duplicate keys at every
    depth and spelling, objects side by side, deep nesting, numbers at the
    edges of 64 bits, escapes, UTF-8 and white space."""
    e1 = b'"dtype":"U8","shape":[1],"data_offsets":[0,1]'
    ent = b'{"a":{' + e1
    keys = lambda n: b",".join(b'"k%d":%d' % (i, i) for i in range(n))
    return {
        "dup_nested.json": ent + b',"x":[1,{"y":{"k":1,"k":2}}]}}',
        "dup_escaped.json": ent + b'},"\u0061":{' + e1 + b'}}',
        "dup_metadata.json": b'{"__metadata__":{"k":"v","k":"w"},' + ent[1:] + b'}}',
        "dup_metadata_escaped.json": b'{"__metadata__":{},"__metad\u0061ta__":{},' + ent[1:] + b'}}',
        "dup_many_keys.json": ent + b',"x":{' + keys(40) + b',"k39":0}}}',
        "siblings.json": ent + b',"x":[{"k":1},{"k":1},{' + keys(12) + b'},{"k3":0}]}}',
        "deep_2047.json": ent + b',"x":' + b"[" * 2047 + b"]" * 2047 + b"}}",
        "deep_objects.json": ent + b',"x":' + b'[{"k":' * 700 + b"0" + b"}]" * 700 + b"}}",
        "int64_edges.json": ent + b',"x":[9223372036854775807,-9223372036854775808,-0,1e-400]}}',
        "int_too_big.json": ent + b',"x":9223372036854775808}}',
        "int_too_small.json": ent + b',"x":-9223372036854775809}}',
        "real_overflow.json": ent + b',"x":1e400}}',
        "shape_u64_max.json": b'{"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}}',
        "strides_overflow.json": b'{"a":{"dtype":"U8","shape":[0,4294967296,4294967296,4294967296],'
                                 b'"data_offsets":[0,0]}}',
        "lone_high_surrogate.json": b'{"a\ud800":{' + e1 + b'}}',
        "lone_low_surrogate.json": b'{"a\udc00":{' + e1 + b'}}',
        "pair_and_utf8.json": b'{"\ud83d\ude00":{' + e1 + b'},"\xf0\x9f\x98\x80":{' + e1 + b'}}',
        "overlong_utf8.json": b'{"a\xc0\x80":{' + e1 + b'}}',
        "form_feed.json": b'{\x0c"a":{' + e1 + b'}}',
        "dtype_then_eof.json": b'{"a":{"dtype":"X9","shape":[1],"data_offsets":[0,1]},',
        "escaped_fields.json": b'{"a":{"dtype":"\u0055\u0038","shape":[1],"data_offsets":[0,1]},'
                               b'"__metadata__":{"\u00e9":"\n"}}',
    }


def pickle_seeds():
    import pickle
    out = {}
    obj = {"epoch": 3, "lr": 1e-3, "name": "run-ü", "big": 2 ** 70, "raw": b"\x00\xff",
           "ba": bytearray(b"xy"), "t": (1, 2.5, None, True), "s": {1, 2}, "fs": frozenset("ab"),
           "c": complex(1, -1), "nested": [[1, [2, {3: "x"}]]], "inf": float("inf")}
    for proto in (0, 2, 4, 5):
        out[f"plain_p{proto}.pkl"] = pickle.dumps(obj, protocol=proto)
    return out


def torch_seeds():
    import collections

    import torch

    sys.path.insert(0, str(HERE.parent / "tests" / "interop"))
    import ckptgen

    out = {}

    def save(obj, name, **kw):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        out[name] = buf.getvalue()

    x = torch.arange(12, dtype=torch.float32)
    views = {"x": x, "v": x[3:7], "t": x.view(3, 4).t(), "e": torch.arange(2.).expand(3, 2),
             "p": torch.nn.Parameter(torch.ones(2)), "z": torch.tensor(1.5), "n": torch.empty(0)}
    save(views, "views.pt")
    save(views, "views_legacy.pt", _use_new_zipfile_serialization=False)
    save(views, "views_p4.pt", pickle_protocol=4)
    plain = {"i": -5, "big": 2 ** 70, "f": float("nan"), "s": "ü", "b": b"\x00", "n": None,
             "tu": (1,), "se": {1}, "sz": torch.Size([2]), "dt": torch.bfloat16,
             "dev": torch.device("cuda", 0), "k": {1: torch.ones(1, dtype=torch.int8)}}
    save(plain, "plain_values.pt")
    sd = collections.OrderedDict([("w", torch.ones(2, 2)), ("b", torch.zeros(2))])
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    save(sd, "state_dict.pt")
    dts = {str(d): torch.ones(2, dtype=d) for d in (
        torch.float64, torch.float16, torch.bfloat16, torch.complex64, torch.int16, torch.bool,
        torch.uint8)}
    save(dts, "dtypes.pt")
    save({"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, "quantized.pt")
    # one tensor under many paths through the memo: 10^6 (past max_tensor_paths),
    # 400 (named), and a shared list whose leaves would take 10^8 steps to pass
    one = torch.arange(4, dtype=torch.float32)
    save([[one] * 1000] * 1000, "fan_out_1e6.pt")
    save({"a": [[one] * 20] * 20, "b": {"x": [one] * 3}}, "fan_out_400.pt")
    save([[[one] + [0] * 1500] * 500] * 100, "fan_out_wide_leaves.pt")
    keys = {frozenset({3}): one, (frozenset({4}),): one, frozenset(): one,
            frozenset({frozenset({1})}): one, "v": [set(), {5}, frozenset({6})]}
    save(keys, "frozenset_keys.pt")
    save(keys, "frozenset_keys_p4.pt", pickle_protocol=4)

    with tempfile.TemporaryDirectory() as tmp:
        d = pathlib.Path(tmp)
        src = d / "src.pt"
        torch.save({"a": torch.arange(4, dtype=torch.int32),
                    "b": torch.ones(2, dtype=torch.float64), "v": x[1:3]}, src)
        ckptgen.make_big_endian(src, d / "be.pt")
        out["big_endian.pt"] = (d / "be.pt").read_bytes()
        ckptgen.make_deflated(src, d / "deflated.pt")
        out["deflated.pt"] = (d / "deflated.pt").read_bytes()

    orig = torch.serialization.location_tag
    torch.serialization.location_tag = lambda s: "cuda:1"
    try:
        save({"g": torch.ones(3)}, "cuda_location.pt")
    finally:
        torch.serialization.location_tag = orig

    # a TorchScript-looking archive (constants.pkl): must be refused, never read
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("m/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("m/constants.pkl", b"\x80\x02).")
        z.writestr("m/code/__torch__.py", b"def forward(self):\n    return 1\n")
        z.writestr("m/version", b"3\n")
    out["torchscript_like.pt"] = buf.getvalue()
    return out


def torchscript_seeds():
    """fuzz_torchscript: archives torch.jit.save writes (scripted, traced, a
    shared parameter, a buffer of each of a few dtypes, classes with a
    __setstate__, quantized packed params) and the hand-made ones of
    tests/interop/tsgen.py."""
    from typing import Dict, Tuple

    import torch
    from torch import nn

    sys.path.insert(0, str(HERE.parent / "tests" / "interop"))
    import tsgen

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.heads = nn.ModuleList([nn.Linear(2, 1, bias=False)])
            self.named = nn.ModuleDict({"x": nn.Identity()})
            self.register_buffer("steps", torch.tensor(3))
            self.register_buffer("h", torch.ones(2, dtype=torch.float16))
            self.tied = self.lin.weight

        def forward(self, x):
            return self.heads[0](self.lin(x)) + self.steps

    class Dtypes(nn.Module):
        def __init__(self):
            super().__init__()
            for i, dt in enumerate((torch.bfloat16, torch.int8, torch.bool, torch.complex64)):
                self.register_buffer(f"b{i}", torch.zeros(2, dtype=dt))

        def forward(self, x):
            return x

    class TupleState(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        @torch.jit.export
        def __getstate__(self) -> Tuple[torch.Tensor, bool]:
            return (self.w, self.training)

        @torch.jit.export
        def __setstate__(self, state: Tuple[torch.Tensor, bool]):
            self.w = state[0]
            self.training = state[1]

        def forward(self, x):
            return x * self.w

    class DictState(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        @torch.jit.export
        def __getstate__(self) -> Dict[str, torch.Tensor]:
            return {"w": self.w}

        @torch.jit.export
        def __setstate__(self, state: Dict[str, torch.Tensor]):
            self.w = state["w"]

        def forward(self, x):
            return x * self.w

    out = {}

    def save(module, name):
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        out[name] = buf.getvalue()

    torch.manual_seed(0)
    save(torch.jit.script(Small()), "ts_scripted.pt")
    save(torch.jit.trace(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.ones(1, 2)),
         "ts_traced.pt")
    save(torch.jit.script(Dtypes()), "ts_dtypes.pt")
    save(torch.jit.script(TupleState()), "ts_tuple_state.pt")
    save(torch.jit.script(DictState()), "ts_dict_state.pt")
    q = torch.quantization.quantize_dynamic(nn.Sequential(nn.Linear(2, 2)), {nn.Linear},
                                            dtype=torch.qint8)
    save(torch.jit.script(q), "ts_quantized_dynamic.pt")
    for name in tsgen.CASES:
        out[f"ts_hand_{name}.pt"] = tsgen.build(name)[0]
    return out


def roundtrip_seeds(torch_files):
    """Valid files of every kind the writers must reproduce."""
    import collections

    import torch

    out = {k: v for k, v in torch_files.items() if k != "torchscript_like.pt"}

    def save(obj, name, **kw):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        out[name] = buf.getvalue()

    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    last = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "metrics": {"val_loss": 0.25}, "versions": {"torch": "1.13"}}
    save(last, "last.pth")
    save(last, "last_legacy.pth", _use_new_zipfile_serialization=False)
    save(model.state_dict(), "best.pth")
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    coo = torch.sparse_coo_tensor(i, torch.tensor([3., 4., 5.]), (2, 3))
    dense = torch.tensor([[0., 1., 0.], [2., 0., 3.]])
    save({"coo": coo, "csr": dense.to_sparse_csr()}, "sparse.pt")
    meta = {"m": torch.empty(2, 3, device="meta"), "t": torch.ones(2)}
    save(meta, "meta.pt")
    save(torch.arange(6, dtype=torch.int16).reshape(2, 3), "root_tensor.pt")
    save([torch.ones(1, dtype=torch.complex64), (torch.zeros(2, dtype=torch.bool),)],
         "list_root.pt")
    shared = torch.arange(8.)
    save(collections.OrderedDict([("a", shared[:4]), ("b", shared[4:]), ("c", shared)]),
         "shared_storage.pt")
    return out


def zip_seeds():
    """Archives the torch writer would not make: ZIP64, deflated, empty."""
    out = {}
    for name, kw in [("zip64.zip", {"force_zip64": True}), ("plain.zip", {})]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            with z.open("archive/data.pkl", "w", **kw) as f:
                f.write(b"\x80\x02}q\x00.")
            z.writestr("archive/version", b"3\n")
        out[name] = buf.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02]q\x00(K\x01K\x02e." * 4)
        z.writestr("archive/version", b"3\n")
    out["deflated.zip"] = buf.getvalue()
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    out["empty.zip"] = buf.getvalue()
    return out


def framing_seeds():
    """Pickles whose FRAMEs readers disagree on, in the places files hold
    them, and pickles in the records of a torch zip torch reads as texts
    or raw bytes; legacy files whose sys_info says big-endian. Hand-made;
    the payload (posix.system) is only ever scanned."""
    def frame(n):
        return b"\x95" + struct.pack("<Q", n)

    payload = b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00true\x85R."
    magic = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."

    def obj(storage, n, legacy=True):
        """{'t': tensor of n elements}; a legacy persistent id has a view (None)."""
        return (b"}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
                b"ctorch\n" + storage + b"\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK" + bytes([n]) +
                (b"N" if legacy else b"") + b"tQK\x00(K" + bytes([n]) +
                b"t(K\x01t\x89ccollections\nOrderedDict\n)RtRs.")

    def legacy_bodies(n, little=True):
        return [magic, b"M\xe9\x03.", b"}X\x0d\x00\x00\x00little_endian" +
                (b"\x88" if little else b"\x89") + b"s.", obj(b"ByteStorage", n),
                b"]X\x01\x00\x00\x000a."]

    out = {}
    hide = 16
    n = hide + len(payload)
    for framed in range(5):
        bodies = legacy_bodies(n)
        rest = b"".join(b"\x80\x02" + b for b in bodies[framed + 1:])
        rest += struct.pack("<q", n) + b"\0" * hide
        head = b"".join(b"\x80\x02" + b for b in bodies[:framed])
        out[f"frame_past_stop_legacy_{framed}.pt"] = (
            head + b"\x80\x02" + frame(len(bodies[framed]) + len(rest)) + bodies[framed] +
            rest + payload)
    out["frame_past_stop.pkl"] = b"\x80\x04" + frame(9) + b"]K\x01a.N.N." + payload
    out["frame_arg_across_end.pkl"] = b"\x80\x04" + frame(2) + b"M\x01\x00."
    out["frame_text_across_end.pkl"] = b"\x80\x04" + frame(5) + payload[2:]
    out["frame_nested.pkl"] = b"\x80\x04" + frame(12) + b"]" + frame(2) + b"K\x01a."
    out["frame_past_end.pkl"] = b"\x80\x04" + frame(1000) + payload[2:]
    out["frames_well_formed.pkl"] = (b"\x80\x04" + frame(1) + b"(" +
                                     b"\x8e" + struct.pack("<Q", 3) + b"abc" + frame(2) + b"l.")
    b = b"".join(b"\x80\x02" + x for x in legacy_bodies(2, little=False)[:3])
    b += b"\x80\x02" + obj(b"FloatStorage", 2) + b"\x80\x02]X\x01\x00\x00\x000a."
    out["legacy_sys_info_big_endian.pt"] = b + struct.pack("<q", 2) + struct.pack("<2f", 1, 2)

    def torch_zip(name, data, compress=zipfile.ZIP_STORED,
                  pkl=b"\x80\x02" + obj(b"FloatStorage", 4, legacy=False)):
        buf = io.BytesIO()
        recs = {"archive/data.pkl": pkl, "archive/data/0": struct.pack("<4f", 1, 2, 3, 4),
                "archive/version": b"3\n", "archive/byteorder": b"little",
                "archive/.data/serialization_id": b"1234567890"}
        recs[name] = data
        with zipfile.ZipFile(buf, "w") as z:
            for k, v in recs.items():
                z.writestr(k, v, compress_type=compress if k == name else zipfile.ZIP_STORED)
        return buf.getvalue()

    out["zip_frame_past_stop.pt"] = torch_zip(
        "archive/data.pkl", b"\x80\x04" + frame(5 + len(payload)) + b"]K\x01a." + payload)
    for rec in ("version", "byteorder", ".data/serialization_id", ".format_version", "notes"):
        out[f"zip_pickle_in_{rec.replace('/', '_').lstrip('.')}.pt"] = torch_zip(
            "archive/" + rec, payload)
    stored = payload + b"N" * (16 - len(payload) % 16)
    pkl = b"\x80\x02" + obj(b"FloatStorage", len(stored) // 4, legacy=False)
    out["zip_pickle_in_storage.pt"] = torch_zip("archive/data/0", stored, pkl=pkl)
    out["zip_pickle_in_deflated_storage.pt"] = torch_zip(
        "archive/data/0", stored, zipfile.ZIP_DEFLATED, pkl=pkl)


def deflated_zeros(n, piece=196608):
    """n zero bytes as raw deflate at a ratio of about 950 (just under
    max_inflate_ratio): a partial flush every `piece` bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = []
    for off in range(0, n, piece):
        parts.append(c.compress(bytes(min(piece, n - off))))
        parts.append(c.flush(zlib.Z_PARTIAL_FLUSH))
    parts.append(c.flush())
    return b"".join(parts), zlib.crc32(bytes(n))


def raw_zip(records):
    """records: (name, data, size, crc, method), a plain zip of them."""
    out, central = bytearray(), bytearray()
    for name, data, size, crc, method in records:
        nb = name.encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014b50, 20, 20, 0, method, 0, 0, crc,
                               len(data), size, len(nb), 0, 0, 0, 0, 0, len(out)) + nb
        out += struct.pack("<IHHHHHIIIHH", 0x04034b50, 20, 0, method, 0, 0, crc, len(data),
                           size, len(nb), 0) + nb + data
    cd = len(out)
    out += central + struct.pack("<IHHHHIIH", 0x06054b50, 0, 0, len(records), len(records),
                                 len(central), cd, 0)
    return bytes(out)


def stream_seeds():
    """Deflated records near the ratio limit (read as streams by verify and
    scan) and views with stride 0 (bounded by max_output_ratio)."""
    n = 1 << 20
    comp, crc = deflated_zeros(n)

    def tensor(key, numel, shape, stride, cls=b"ByteStorage"):
        dims = lambda v: b"(" + b"".join(b"J" + struct.pack("<i", x) for x in v) + b"t"
        return (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n" +
                cls + b"\nX" + struct.pack("<I", len(key)) + key.encode() +
                b"X\x03\x00\x00\x00cpuJ" + struct.pack("<i", numel) + b"tQK\x00" +
                dims(shape) + dims(stride) + b"\x89ccollections\nOrderedDict\n)RtR")

    def torch_zip(pkl, data):
        recs = [("archive/data.pkl", pkl, len(pkl), zlib.crc32(pkl), 0)]
        recs += data
        recs.append(("archive/version", b"3\n", 2, zlib.crc32(b"3\n"), 0))
        return raw_zip(recs)

    pair = (b"\x80\x02}X\x01\x00\x00\x00a" + tensor("0", n, [n], [1]) +
            b"sX\x01\x00\x00\x00b" + tensor("1", n, [n], [1]) + b"s.")
    rec0 = ("archive/data/0", comp, n, crc, 8)
    notes = b"\x80\x02K\x01." + bytes(64)  # a small pickle, deflated: it is read
    notes_z = zlib.compress(notes)[2:-4]
    out = {
        "deflated_ratio950.pt": torch_zip(pair, [rec0, ("archive/data/1", comp, n, crc, 8)]),
        "deflated_ratio950_bad_crc.pt":
            torch_zip(pair, [rec0, ("archive/data/1", comp, n, crc ^ 1, 8)]),
        "deflated_ratio950_long.pt":
            torch_zip(pair, [rec0, ("archive/data/1", deflated_zeros(n + 300)[0], n, crc, 8)]),
        "deflated_ratio950_unreferenced.pt":
            torch_zip(b"\x80\x02}.", [rec0, ("archive/notes", notes_z, len(notes),
                                               zlib.crc32(notes), 8)]),
    }
    # sparse_coo [4], indices int64 [1, n/8] in a deflated record, values a
    # stride-0 view of one float
    sparse = (b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_sparse_tensor\n"
              b"(ctorch\nsparse_coo\n(" +
              tensor("0", n // 8, [1, n // 8], [n // 8, 1], b"LongStorage") +
              tensor("1", 1, [n // 8], [0], b"FloatStorage") + b"(J\x04\x00\x00\x00tttRs.")
    out["sparse_deflated_indices.pt"] = torch_zip(
        sparse, [rec0, ("archive/data/1", bytes(4), 4, zlib.crc32(bytes(4)), 0)])
    # a float view of 72 MiB with stride (0, 0) over one float
    expand = (b"\x80\x02}X\x01\x00\x00\x00t" +
              tensor("0", 1, [18, 1 << 20], [0, 0], b"FloatStorage") + b"s.")
    out["expand_stride0.pt"] = torch_zip(
        expand, [("archive/data/0", bytes(4), 4, zlib.crc32(bytes(4)), 0)])
    return out


def pickles_in(files):
    """The data.pkl of each torch zip (read as bytes), and legacy files whole."""
    out = {}
    for name, data in files.items():
        if data[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    for member in z.namelist():
                        if member.endswith(".pkl"):
                            out[f"{name}.{member.replace('/', '_')}"] = z.read(member)
            except zipfile.BadZipFile:
                continue  # a broken archive (a bad CRC): its pickle is not needed
        elif data[:1] == b"\x80" and name.endswith((".pt", ".pth", ".bin")):
            out[name] = data
    return out


def numpy_seeds():
    """.npy files (versions 1-3, every dtype, Fortran, big-endian, 0-d, empty,
    object and broken headers), .npz archives (stored, deflated), pickles of
    numpy arrays (protocols 2-5, torch.save with arrays) and pre-0.4 tar
    files built member by member (tests/interop/test_tar.py's layout)."""
    import numpy as np
    import pickle
    import tarfile
    out, pickles, npys = {}, {}, {}
    dtypes = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
              "uint64", "float16", "float32", "float64", "complex64", "complex128"]
    for d in dtypes:
        a = np.arange(6).astype(d).reshape(2, 3)
        for tag, arr in (("c", a), ("f", np.asfortranarray(a)),
                         ("be", a.astype(a.dtype.newbyteorder(">")))):
            b = io.BytesIO()
            np.save(b, arr)
            npys[f"npy_{d}_{tag}.npy"] = b.getvalue()
    for v in ((1, 0), (2, 0), (3, 0)):
        b = io.BytesIO()
        np.lib.format.write_array(b, np.ones((2, 2), np.float32), version=v)
        npys[f"npy_v{v[0]}.npy"] = b.getvalue()
    for name, arr in (("scalar", np.array(1.5)), ("empty", np.zeros((0, 3), np.int16))):
        b = io.BytesIO()
        np.save(b, arr)
        npys[f"npy_{name}.npy"] = b.getvalue()
    b = io.BytesIO()
    np.save(b, np.array([1, "x"], dtype=object), allow_pickle=True)
    npys["npy_object.npy"] = b.getvalue()

    def header(text, version=1, data=b"\0" * 16):
        h = text.encode("latin1") + b"\n"
        ln = struct.pack("<H", len(h)) if version == 1 else struct.pack("<I", len(h))
        return b"\x93NUMPY" + bytes([version, 0]) + ln + h + data
    npys["npy_eval.npy"] = header("{'descr': __import__('os'), 'fortran_order': False, "
                                  "'shape': (1,), }")
    npys["npy_dup_key.npy"] = header("{'descr': '<f4', 'descr': '<i4', 'fortran_order': "
                                     "False, 'shape': (2,)}")
    npys["npy_huge_shape.npy"] = header("{'descr': '<f8', 'fortran_order': True, 'shape': "
                                        "(4294967296, 4294967296, 16), }")
    npys["npy_record.npy"] = header("{'descr': [('a', '<f4')], 'fortran_order': False, "
                                    "'shape': (1,), }")
    npys["npy_len_past_end.npy"] = b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{"
    out.update(npys)
    arrays = {"a": np.arange(5, dtype=np.float32),
              "b": np.asfortranarray(np.ones((2, 3), ">f8"))}
    for tag, fn in (("stored", np.savez), ("deflated", np.savez_compressed)):
        b = io.BytesIO()
        fn(b, **arrays)
        out[f"npz_{tag}.npz"] = b.getvalue()
    obj = {"w": np.arange(4, dtype=np.int32).reshape(2, 2),
           "f": np.asfortranarray(np.ones((2, 3), ">f4")), "s": [np.float16(2.0), np.int64(-1)],
           "e": np.zeros((0,), np.uint8)}
    for p in (2, 3, 4, 5):
        pickles[f"numpy_p{p}.pkl"] = pickle.dumps(obj, protocol=p)
    import torch
    b = io.BytesIO()
    torch.save({"np": obj["w"], "t": torch.ones(2)}, b)
    out["numpy_in_torch_zip.pt"] = b.getvalue()
    out.update(pickles)

    def tar(members):
        b = io.BytesIO()
        with tarfile.open(fileobj=b, mode="w", format=tarfile.USTAR_FORMAT) as t:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            end = t.offset
        return b.getvalue()[:end + 1024]  # the two end blocks, not tarfile's record padding
    floats = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    storages = (pickle.dumps(1, protocol=2) + pickle.dumps((7, "cpu", torch.FloatStorage), protocol=2)
                + struct.pack("<q", 6) + floats + pickle.dumps([(8, 7, 2, 4)], protocol=2))
    tensors = pickle.dumps(2, protocol=2)
    for key, skey, shape, stride in ((1, 7, (2, 3), (3, 1)), (2, 8, (4,), (1,))):
        tensors += pickle.dumps((key, skey, torch.FloatTensor), protocol=2)
        tensors += struct.pack("<ii", len(shape), 0) + struct.pack(f"<{len(shape)}q", *shape)
        tensors += struct.pack(f"<{len(shape)}q", *stride) + struct.pack("<q", 0)
    obj_pickle = b"\x80\x02}(X\x01\x00\x00\x00aP1\nX\x01\x00\x00\x00bP2\nX\x01\x00\x00\x00sP7\nu."
    good = [("sys_info", pickle.dumps({"little_endian": True}, protocol=2)),
            ("pickle", obj_pickle), ("tensors", tensors), ("storages", storages)]
    out["tar_torch.tar"] = tar(good)
    out["tar_no_tensors.tar"] = tar([m for m in good if m[0] != "tensors"])
    out["tar_dup_pickle.tar"] = tar(good + [("pickle", b"\x80\x02P999\n.")])
    out["tar_bad_view.tar"] = tar(good[:3] + [("storages", storages.replace(
        pickle.dumps([(8, 7, 2, 4)], protocol=2), pickle.dumps([(8, 7, 5, 4)], protocol=2)))])
    return out, pickles, npys


FORCE = False


def write(dirname, files):
    """Adds the seeds a corpus lacks; with --force rewrites them all (torch
    and zipfile put timestamps, object ids and hash-ordered sets in some,
    so a rewrite changes bytes without changing what the seed covers)."""
    d = HERE / "corpus" / dirname
    d.mkdir(parents=True, exist_ok=True)
    added = 0
    for name, data in files.items():
        assert len(data) <= MAX, (name, len(data))
        path = d / name
        if FORCE or not path.exists():
            path.write_bytes(data)
            added += 1
    print(f"{d}: {len(files)} seeds, {added} written")


def main():
    global FORCE
    FORCE = "--force" in sys.argv[1:]
    torch_files = torch_seeds()
    file_seeds = {seed_name(r): (CORPUS / r).read_bytes() for r in FROM_CORPUS_FILE}
    file_seeds.update(torch_files)
    file_seeds.update(pickle_seeds())
    framing = framing_seeds()
    file_seeds.update(framing)
    st = st_seeds()
    file_seeds["all_dtypes.safetensors"] = st["all_dtypes.safetensors"]
    write("fuzz_file", file_seeds)

    st_files = {seed_name(r): (CORPUS / r).read_bytes() for r in FROM_CORPUS_ST}
    st_files.update(st)
    write("fuzz_safetensors", st_files)

    zips = {k: v for k, v in file_seeds.items() if v[:4] == b"PK\x03\x04"}
    zips.update({seed_name(r): (CORPUS / r).read_bytes() for r in FROM_CORPUS_ZIP})
    zips.update(zip_seeds())
    write("fuzz_zip", zips)

    pickles = {k: v for k, v in file_seeds.items() if k.endswith((".pkl", ".pickle"))}
    pickles.update({seed_name(r): (CORPUS / r).read_bytes() for r in FROM_CORPUS_PICKLE})
    pickles.update(pickles_in({k: v for k, v in file_seeds.items()
                               if k not in framing or k == "zip_frame_past_stop.pt"}))
    write("fuzz_pickle", pickles)

    write("fuzz_scan", framing)

    rt = {seed_name(r): (CORPUS / r).read_bytes() for r in FROM_CORPUS_ROUNDTRIP}
    rt.update(roundtrip_seeds(torch_files))
    rt.update(pickle_seeds())
    rt["all_dtypes.safetensors"] = st["all_dtypes.safetensors"]
    rt["unaligned.safetensors"] = st["unaligned.safetensors"]
    write("fuzz_roundtrip", rt)

    numpy_files, numpy_pickles, npys = numpy_seeds()
    write("fuzz_file", numpy_files)
    write("fuzz_scan", numpy_files)
    write("fuzz_pickle", numpy_pickles)
    write("fuzz_npy", npys)

    streams = stream_seeds()
    write("fuzz_file", streams)
    write("fuzz_zip", {k: v for k, v in streams.items() if k != "expand_stride0.pt"})
    write("fuzz_scan", streams)
    write("fuzz_roundtrip", {k: v for k, v in streams.items() if k == "expand_stride0.pt"})

    write("fuzz_torchscript", torchscript_seeds())


if __name__ == "__main__":
    main()
