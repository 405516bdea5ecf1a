"""Checkpoints generated with the real PyTorch (Debian's 1.13) for the interop tests.

generate_all(dir) writes every case once and returns {name: Case}. A Case
knows its file, where torch.load should read the expected object from
(`source`: the file itself, or the original a derived file was made from) and
what check_file should expect of it.
"""
import collections
import dataclasses
import io
import pickletools
import zipfile

import numpy as np
import torch
import torch.serialization
from torch import nn


@dataclasses.dataclass
class Case:
    name: str
    path: object
    source: object
    check: dict
    note: str = ""

    def expected(self):
        return torch.load(self.source, map_location="cpu")


GENERATORS = []


def generator(fn):
    GENERATORS.append(fn)
    return fn


def zip_case(name, path, **check):
    """A file torch.save wrote in its zip format."""
    opts = {"fmt": "torch-zip", "prefix": path.stem if "." in path.name else path.name,
            "zero_copy": True}
    opts.update(check)
    return Case(name, path, path, opts)


def legacy_case(name, path, **check):
    opts = {"fmt": "torch-legacy"}
    opts.update(check)
    return Case(name, path, path, opts)


def save_both(d, name, obj, **kw):
    """Saves obj in the zip and the legacy format: two cases."""
    zp = d / f"{name}.pt"
    torch.save(obj, zp, **kw)
    lp = d / f"{name}_legacy.pt"
    torch.save(obj, lp, _use_new_zipfile_serialization=False, **kw)
    return [zip_case(name, zp), legacy_case(f"{name}_legacy", lp)]


# ---- objects ---------------------------------------------------------------

def all_dtypes_obj():
    g = torch.Generator().manual_seed(1)
    return {
        "float64": torch.randn(3, 2, dtype=torch.float64, generator=g),
        "float32": torch.randn(5, generator=g),
        "float16": torch.randn(2, 3, generator=g).half(),
        "bfloat16": torch.randn(4, generator=g).bfloat16(),
        "complex64": torch.randn(3, dtype=torch.complex64, generator=g),
        "complex128": torch.randn(2, 2, dtype=torch.complex128, generator=g),
        "int8": torch.tensor([-128, -1, 0, 1, 127], dtype=torch.int8),
        "int16": torch.tensor([-32768, -2, 0, 300, 32767], dtype=torch.int16),
        "int32": torch.tensor([[-2 ** 31, 7], [0, 2 ** 31 - 1]], dtype=torch.int32),
        "int64": torch.tensor([-2 ** 63, -5, 0, 2 ** 40, 2 ** 63 - 1], dtype=torch.int64),
        "uint8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "specials": torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 1e-45]),
    }


def views_obj():
    x = torch.arange(20, dtype=torch.float32)
    m = x.view(4, 5)
    return {
        "x": x,
        "slice": x[5:10],
        "narrow": x.narrow(0, 2, 3),
        "transpose": m.t(),
        "step": x[1::3],
        "block": m[1:, 2:],
        "scalar_view": x[7],
        "same": x,                      # the same object under a second path
        "list": [m, x[18:]],
        "expand": torch.arange(3, dtype=torch.int16).expand(4, 3),   # stride 0
        "other": torch.ones(2, 2, dtype=torch.float64),
        "fortran": torch.arange(24, dtype=torch.int64).reshape(4, 3, 2).permute(2, 1, 0),
    }


def shapes_obj():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, generator=g).requires_grad_()
    return {
        "zero_d": torch.tensor(3.5),
        "zero_d_int": torch.tensor(-9, dtype=torch.int64),
        "empty": torch.empty(0),
        "empty_2d": torch.empty(3, 0, dtype=torch.int32),
        "empty_mid": torch.zeros(2, 0, 4),
        "ones_dims": torch.arange(6.).reshape(1, 6, 1),
        "requires_grad": w,
        "param": nn.Parameter(torch.randn(2, 2, generator=g)),
        "param_frozen": nn.Parameter(torch.randn(3, generator=g), requires_grad=False),
        "noncontig": torch.arange(30.).reshape(5, 6)[:, ::2],
        "big": torch.randn(70000, generator=g),
    }


def plain_values_obj():
    g = torch.Generator().manual_seed(3)
    t = [torch.randn(2, generator=g) for _ in range(6)]
    return {
        "int": 7, "neg": -123456789, "zero": 0,
        "i64max": 2 ** 63 - 1, "i64min": -2 ** 63,
        "big": 2 ** 70, "negbig": -(2 ** 70) - 5, "u64": 2 ** 64,
        "float": 0.1, "negzero": -0.0, "tiny": 5e-324, "huge": 1.7976931348623157e308,
        "nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"),
        "str": "héllo wörld ✓ 🚀 日本", "empty_str": "", "nul_str": "a\x00b",
        "bytes": b"\x00\x01\xffabc", "empty_bytes": b"", "bytearray": bytearray(b"xy\x00z"),
        "none": None, "true": True, "false": False,
        "tuple": (1, "a", (2.5, None)), "empty_tuple": (), "one_tuple": (1,),
        "set": {1, 2, 3}, "frozenset": frozenset({"a", "b"}), "empty_set": set(),
        "complex": complex(1.5, -2.0), "complex_special": complex(float("nan"), float("-inf")),
        "size": torch.Size([2, 3]), "size0": torch.Size([]),
        "dtype": torch.float16, "dtype2": torch.bfloat16, "dtype3": torch.int64,
        "device": torch.device("cuda", 1), "cpu": torch.device("cpu"),
        "list": [1, [2, [3, []]], {"k": "v"}, [[[[["deep"]]]]]],
        "int_keys": {1: "one", -2: "minus two", 10 ** 20: "big key"},
        "mixed_keys": {None: 1, False: 2, "s": 3, 2.5: 4, (1, 2): 5},
        "odict": collections.OrderedDict([("b", 1), ("a", [2, 3])]),
        "empty_dict": {}, "empty_list": [],
        "nul_key": {"a\x00b": 1},
        "tensors": {0: t[0], 7: [t[1], {"x": t[2]}], True: t[3], None: t[4], "n": {"m": t[5]}},
    }


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        x = self.bn(self.conv(x)).mean(dim=(2, 3))
        return self.head(x)


def model_state_dict():
    torch.manual_seed(4)
    net = Net()
    net(torch.randn(2, 3, 6, 6))  # updates BatchNorm running stats
    return net.state_dict()


def training_checkpoint(version_obj):
    """The seed's training checkpoint, after a few real AdamW steps."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    scaler = torch.cuda.amp.GradScaler(enabled=False).state_dict()
    if not scaler:  # disabled scalers return {}: use the enabled layout
        scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                  "growth_interval": 2000, "_growth_tracker": 0}
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler,
        "epoch": 3,
        "metrics": {"val_loss": 0.25, "acc": 0.9},
        "torch_version": version_obj,
    }


# ---- generators ----------------------------------------------------------

@generator
def gen_dtypes(d):
    return save_both(d, "dtypes", all_dtypes_obj())


@generator
def gen_views(d):
    return save_both(d, "views", views_obj())


@generator
def gen_shapes(d):
    return save_both(d, "shapes", shapes_obj())


@generator
def gen_plain(d):
    return save_both(d, "plain", plain_values_obj())


@generator
def gen_state_dict(d):
    return save_both(d, "state_dict", model_state_dict())


@generator
def gen_training(d):
    return save_both(d, "training", training_checkpoint(str(torch.__version__)))


@generator
def gen_ddp(d):
    sd = model_state_dict()
    ddp = collections.OrderedDict(("module." + k, v) for k, v in sd.items())
    ddp._metadata = collections.OrderedDict(
        ("module." + k if k else "module", v) for k, v in sd._metadata.items())
    p = d / "ddp.pt"
    torch.save(ddp, p)
    return [zip_case("ddp", p)]


@generator
def gen_root_tensor(d):
    p = d / "root_tensor.pt"
    torch.save(torch.arange(12, dtype=torch.int32).reshape(3, 4).t(), p)
    lp = d / "root_tensor_legacy.pt"
    torch.save(torch.arange(5.), lp, _use_new_zipfile_serialization=False)
    return [zip_case("root_tensor", p), legacy_case("root_tensor_legacy", lp)]


@generator
def gen_dotted_name(d):
    p = d / "model.v2.pt"
    torch.save({"w": torch.arange(4.)}, p)
    return [zip_case("dotted_name", p, prefix="model.v2")]


@generator
def gen_bytesio(d):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(6.).reshape(2, 3), "n": 3}, buf)
    p = d / "from_buffer.pt"
    p.write_bytes(buf.getvalue())
    return [zip_case("bytesio", p, prefix="archive")]


@generator
def gen_protocol4(d):
    obj = {"w": torch.randn(3, 3), "values": plain_values_obj(), "views": views_obj()}
    p = d / "proto4.pt"
    torch.save(obj, p, pickle_protocol=4)
    lp = d / "proto4_legacy.pt"
    torch.save(obj, lp, pickle_protocol=4, _use_new_zipfile_serialization=False)
    return [zip_case("protocol4", p, protocol=4),
            legacy_case("protocol4_legacy", lp, protocol=4)]


def _save_with_location(obj, path, tag, **kw):
    orig = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: tag
    try:
        torch.save(obj, path, **kw)
    finally:
        torch.serialization.location_tag = orig


@generator
def gen_location(d):
    obj = {"a": torch.arange(4.), "b": nn.Parameter(torch.ones(2, 2)), "v": None}
    obj["v"] = obj["a"][1:3]
    p = d / "cuda.pt"
    _save_with_location(obj, p, "cuda:0")
    lp = d / "cuda_legacy.pt"
    _save_with_location(obj, lp, "cuda:0", _use_new_zipfile_serialization=False)
    return [zip_case("location_cuda", p, location="cuda:0"),
            legacy_case("location_cuda_legacy", lp, location="cuda:0")]


@generator
def gen_many(d):
    g = torch.Generator().manual_seed(6)
    sd = collections.OrderedDict(
        (f"blocks.{i // 10}.layer{i % 10}.weight", torch.randn(2, generator=g))
        for i in range(10000))
    p = d / "many.pt"
    torch.save(sd, p)
    return [zip_case("many_tensors", p)]


def quantized_obj():
    torch.manual_seed(7)
    return {
        "qint8": torch.quantize_per_tensor(torch.randn(6), 0.1, 2, torch.qint8),
        "quint8": torch.quantize_per_tensor(torch.randn(2, 3), 0.05, 100, torch.quint8),
        "qint32": torch.quantize_per_tensor(torch.randn(4), 0.01, 0, torch.qint32),
    }


# ---- derived files: big-endian and deflated rewrites ----------------------

STORAGE_ITEM = {  # storage class -> (element size, bytes swapped as a unit)
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1,
    "ByteStorage": 1, "BoolStorage": 1,
    "ComplexDoubleStorage": 8, "ComplexFloatStorage": 4,  # each half on its own
}


def storage_classes(pkl):
    """key -> storage class name, read from a protocol-2 data.pkl without running it."""
    memo, last, out = {}, None, {}
    state = None  # None -> saw 'storage' -> saw class
    cls = None
    for op, arg, _pos in pickletools.genops(pkl):
        val = None
        if op.name in ("GLOBAL",):
            val = ("global", arg)
        elif op.name in ("BINUNICODE", "SHORT_BINUNICODE", "UNICODE"):
            val = ("str", arg)
        elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
            continue
        elif op.name in ("BINGET", "LONG_BINGET", "GET"):
            val = memo.get(arg)
        if val is None:
            last = None
            continue
        last = val
        if val == ("str", "storage"):
            state = "storage"
        elif state == "storage" and val[0] == "global":
            cls = val[1].split(" ")[-1]
            state = "class"
        elif state == "class" and val[0] == "str":
            out[val[1]] = cls
            state = None
        else:
            state = None
    return out


def _swap(data, size):
    if size == 1 or not data:
        return data
    return np.frombuffer(data, dtype=f"<u{size}").byteswap().tobytes()


def make_big_endian(src, dst):
    """Rewrites a torch zip as a big-endian machine would have saved it."""
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        prefix = names[0].split("/")[0]
        classes = storage_classes(zin.read(f"{prefix}/data.pkl"))
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for n in names:
                data = zin.read(n)
                if n.startswith(f"{prefix}/data/"):
                    key = n[len(prefix) + 6:]
                    data = _swap(data, STORAGE_ITEM[classes[key]])
                if n == f"{prefix}/byteorder":
                    continue
                zout.writestr(n, data)
            zout.writestr(f"{prefix}/byteorder", b"big")


def make_deflated(src, dst):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for n in zin.namelist():
            zout.writestr(n, zin.read(n))


@generator
def gen_big_endian(d):
    src = d / "be_src.pt"
    obj = all_dtypes_obj()
    obj.update({"views": views_obj(), "param": nn.Parameter(torch.randn(3, 2))})
    torch.save(obj, src)
    dst = d / "be.pt"
    make_big_endian(src, dst)
    return [Case("big_endian", dst, src,
                 {"fmt": "torch-zip", "prefix": "be_src", "big_endian": True,
                  "zero_copy": False})]


@generator
def gen_deflated(d):
    src = d / "deflate_src.pt"
    obj = {"dtypes": all_dtypes_obj(), "views": views_obj(), "sd": model_state_dict(),
           "zeros": torch.zeros(5000)}
    torch.save(obj, src)
    dst = d / "deflated.pt"
    make_deflated(src, dst)
    return [Case("deflated", dst, src,
                 {"fmt": "torch-zip", "prefix": "deflate_src", "compressed": True,
                  "zero_copy": False})]


def generate_all(d):
    cases = {}
    for gen in GENERATORS:
        for c in gen(d):
            assert c.name not in cases, c.name
            cases[c.name] = c
    return cases


# Every case generate_all makes (tests are parametrized by these names).
CASE_NAMES = [
    "dtypes", "dtypes_legacy", "views", "views_legacy", "shapes", "shapes_legacy",
    "plain", "plain_legacy", "state_dict", "state_dict_legacy", "training", "training_legacy",
    "ddp", "root_tensor", "root_tensor_legacy", "dotted_name", "bytesio",
    "protocol4", "protocol4_legacy", "location_cuda", "location_cuda_legacy",
    "many_tensors", "big_endian", "deflated",
]
