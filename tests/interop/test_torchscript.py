"""--torchscript-weights: a TorchScript archive (torch.jit.save) read as data.

Archives made here by torch.jit.script and torch.jit.trace give, through
ckpt, the state dict torch.jit.load(f).state_dict() gives: the same names in
the same order, dtypes, shapes and bytes. Nothing in the archive runs; the
archive stays refused without the flag, and classes with a __setstate__
(quantized packed params, torchbind) are refused by name.
"""
import json
import struct
import warnings
import zipfile
from typing import Dict, Tuple

import pytest
import torch
from torch import nn

import tsgen
from torchref import dtype_name, tensor_bytes

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64,
          torch.complex128, torch.complex32]


class Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 4)
        self.register_buffer("rm", torch.arange(4, dtype=torch.int64))

    def forward(self, x):
        return self.lin(x) + self.rm


class Net(nn.Module):
    """Nested modules, ModuleList, ModuleDict, Sequential, buffers (one not
    persistent), a plain tensor attribute (neither), a None bias, BatchNorm."""

    def __init__(self):
        super().__init__()
        self.a = Sub()
        self.b = Sub()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4, bias=False)])
        self.heads = nn.ModuleDict({"x": nn.Linear(4, 2), "y": nn.Identity()})
        self.seq = nn.Sequential(nn.ReLU(), nn.Linear(2, 2))
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("h", torch.ones(2, dtype=torch.float16))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.t = torch.ones(3)

    def forward(self, x):
        x = self.a(x) + self.b(x)
        for layer in self.layers:
            x = layer(x)
        return self.seq(self.heads["x"](self.bn(x))) + self.t.sum()


class Shared(nn.Module):
    """One parameter under two names: state_dict() lists both."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 3)
        self.dec = nn.Linear(3, 3)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(self.enc(x))


class AllDtypes(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        for i, dt in enumerate(DTYPES):
            if dt == torch.complex32:  # randn has no complex32 kernel in 1.13
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "experimental"
                    v = torch.randn(2, 3, dtype=torch.complex64).to(dt)
            elif dt.is_floating_point or dt.is_complex:
                v = torch.randn(2, 3, dtype=dt)
            elif dt == torch.bool:
                v = torch.tensor([[True, False, True], [False, False, True]])
            else:
                v = torch.arange(6, dtype=dt).reshape(2, 3)
            self.register_buffer(f"b{i}", v)
        self.w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
        # a view into a bigger storage, and a transposed one
        base = torch.arange(20.0)
        self.register_buffer("view", base[4:10].view(2, 3))
        self.register_buffer("tview", torch.arange(6.0).view(2, 3).t())
        self.register_buffer("q", torch.quantize_per_tensor(torch.tensor([1.0, -2.5, 3.0]), 0.5,
                                                            2, torch.qint8))

    def forward(self, x):
        return x


def ckpt_run(tool, *args):
    return tool.run(*[str(a) for a in args])


@pytest.fixture(scope="module")
def archives(gen_dir):
    d = gen_dir / "torchscript"
    d.mkdir()
    torch.manual_seed(0)
    out = {}
    net = Net().eval()
    net.bn.running_mean += 0.5
    net.bn.num_batches_tracked += 3
    x = torch.randn(2, 3)
    torch.jit.save(torch.jit.script(net), str(d / "scripted.pt"))
    torch.jit.save(torch.jit.trace(net, x), str(d / "traced.pt"))
    out["scripted.pt"] = (d / "scripted.pt", net)
    out["traced.pt"] = (d / "traced.pt", net)
    shared = Shared()
    torch.jit.save(torch.jit.script(shared), str(d / "shared.pt"))
    out["shared.pt"] = (d / "shared.pt", shared)
    dt = AllDtypes()
    torch.jit.save(torch.jit.script(dt), str(d / "dtypes.pt"))
    out["dtypes.pt"] = (d / "dtypes.pt", dt)
    # the mobile (lite interpreter) archive: bytecode.pkl beside data.pkl and code/
    torch.jit.script(net)._save_for_lite_interpreter(str(d / "lite.ptl"))
    out["lite.ptl"] = (d / "lite.ptl", net)
    return out


def inspect_ts(tool, path):
    res = ckpt_run(tool, "inspect", "--json", "--torchscript-weights", path)
    assert res.returncode == 0, res.describe()
    return json.loads(res.stdout)


def same_state_dict(got, want):
    assert list(got) == list(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype and tuple(g.shape) == tuple(w.shape), k
        assert tensor_bytes(g) == tensor_bytes(w), k


@pytest.mark.parametrize("name", ["scripted.pt", "traced.pt", "shared.pt", "dtypes.pt",
                                  "lite.ptl"])
def test_state_dict_as_torch_jit_load(tool, archives, name, tmp_path):
    path, _ = archives[name]
    want = torch.jit.load(str(path)).state_dict()
    js = inspect_ts(tool, path)
    assert js["format"] == "torch-zip" and js["details"]["torchscript"] is True
    assert [t["name"] for t in js["tensors"]] == list(want)
    assert [t["dtype"] for t in js["tensors"]] == [dtype_name(t.dtype) for t in want.values()]
    assert [t["shape"] for t in js["tensors"]] == [list(t.shape) for t in want.values()]
    index, blobs = tool.dump(path, "--torchscript-weights")
    assert [e["name"] for e in index] == list(want)
    for e, b, t in zip(index, blobs, want.values()):
        assert b == tensor_bytes(t), e["name"]
    out = tmp_path / "out.pt"
    res = ckpt_run(tool, "convert", "-q", "--torchscript-weights", path, out)
    assert res.returncode == 0, res.describe()
    if all(t.dtype != torch.complex32 for t in want.values()):  # 1.13 cannot read it back
        same_state_dict(torch.load(out), want)
    res = ckpt_run(tool, "verify", "--torchscript-weights", path)
    assert res.returncode == 0 and ": ok: torch-zip" in res.stdout, res.describe()


def test_names_cover_parameters_and_buffers_only(tool, archives):
    js = inspect_ts(tool, archives["scripted.pt"][0])
    names = [t["name"] for t in js["tensors"]]
    # a plain tensor attribute is not in state_dict(); a None bias neither
    assert "t" not in names and "layers.1.bias" not in names
    # torch.jit.load keeps non-persistent buffers in state_dict()
    assert names[:2] == ["h", "scratch"]
    assert "b.lin.weight" in names and "a.lin.weight" in names


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    dt = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64,
          "F64": torch.float64, "BF16": torch.bfloat16}
    out = {}
    for k, e in header.items():
        if k == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(raw[8 + n + b:8 + n + end])
        out[k] = torch.frombuffer(buf, dtype=dt[e["dtype"]]).reshape(e["shape"]).clone() \
            if buf else torch.empty(e["shape"], dtype=dt[e["dtype"]])
    return out


@pytest.mark.parametrize("name", ["scripted.pt", "traced.pt"])
def test_convert_to_safetensors_loads_into_eager_model(tool, archives, name, tmp_path):
    path, model = archives[name]
    out = tmp_path / "model.safetensors"
    # the archive does not say a buffer is not persistent: torch.jit.load's
    # state_dict() lists it, and the eager model does not expect it
    res = ckpt_run(tool, "convert", "-q", "--torchscript-weights", "--exclude", "scratch", path,
                   out)
    assert res.returncode == 0, res.describe()
    sd = read_safetensors(out)
    fresh = Net()
    fresh.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_shared_parameter_to_pth_loads_strict(tool, archives, tmp_path):
    path, model = archives["shared.pt"]
    out = tmp_path / "shared.pth"
    assert ckpt_run(tool, "convert", "-q", "--torchscript-weights", path, out).returncode == 0
    fresh = Shared()
    fresh.load_state_dict(torch.load(out), strict=True)
    assert torch.equal(fresh.dec.weight, model.enc.weight)


def test_match_and_diff_take_the_flag(tool, archives, tmp_path):
    spath, shared = archives["shared.pt"]
    sref = tmp_path / "shared.pth"
    torch.save(shared.state_dict(), sref)
    res = ckpt_run(tool, "match", "--torchscript-weights", spath, "--model", sref)
    assert res.returncode == 0, res.describe()
    path, model = archives["scripted.pt"]
    res = ckpt_run(tool, "match", "--torchscript-weights", path, "--model",
                   archives["traced.pt"][0])
    assert res.returncode == 0, res.describe()
    ref = tmp_path / "ref.pth"
    torch.save(model.state_dict(), ref)
    res = ckpt_run(tool, "diff", "--torchscript-weights", path, archives["traced.pt"][0])
    assert res.returncode == 0, res.describe()
    res = ckpt_run(tool, "diff", "--torchscript-weights", path, ref)
    # the eager state_dict() has no non-persistent buffer: only that differs
    assert res.returncode == 1 and "scratch" in res.stdout, res.describe()


def test_refused_without_the_flag(tool, archives):
    path = archives["scripted.pt"][0]
    for cmd in (["inspect"], ["verify"], ["convert", "-q", path.with_suffix(".x.safetensors")]):
        res = ckpt_run(tool, cmd[0], path, *cmd[1:])
        assert res.returncode == 2, res.describe()
        assert "TorchScript archive" in res.stderr and "--torchscript-weights" in res.stderr


def test_scan_stays_unsafe_and_says_how(tool, archives):
    res = ckpt_run(tool, "scan", "--json", archives["scripted.pt"][0])
    assert res.returncode == 1
    rep = json.loads(res.stdout)
    rep = rep[0] if isinstance(rep, list) else rep
    rep = rep.get("files", [rep])[0] if "files" in rep else rep
    assert rep["verdict"] == "unsafe"
    assert "--torchscript-weights" in json.dumps(rep)


def test_quantized_packed_params_refused_by_name(tool, gen_dir):
    d = gen_dir / "torchscript_q"
    d.mkdir()
    model = nn.Sequential(nn.Linear(4, 4))
    q = torch.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    path = d / "q.pt"
    torch.jit.save(torch.jit.script(q), str(path))
    res = ckpt_run(tool, "inspect", "--torchscript-weights", path)
    assert res.returncode == 2, res.describe()
    assert "__setstate__" in res.stderr or "torchbind" in res.stderr
    assert "__torch__." in res.stderr


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


@pytest.mark.parametrize("cls", [TupleState, DictState])
def test_class_with_setstate_refused_by_name(tool, gen_dir, cls):
    """A tuple state is refused as the pickle builds it; a dict state (which
    reads like attributes) by the `def __setstate__` of the class's code."""
    path = gen_dir / f"setstate_{cls.__name__}.pt"
    torch.jit.save(torch.jit.script(cls()), str(path))
    res = ckpt_run(tool, "inspect", "--torchscript-weights", path)
    assert res.returncode == 2, res.describe()
    assert "has a __setstate__" in res.stderr and cls.__name__ in res.stderr, res.describe()


def test_code_is_only_read_for_the_lists(tool, archives, tmp_path):
    """A class whose code record lost its __parameters__ line is an error
    naming the class, not a guess."""
    path = archives["shared.pt"][0]
    out = tmp_path / "edited.pt"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if "/code/" in info.filename and b"class Shared(" in data:
                data = data.replace(b"__parameters__", b"__paramXters__")
            zout.writestr(info, data)
    res = ckpt_run(tool, "inspect", "--torchscript-weights", out)
    assert res.returncode == 2 and "__parameters__" in res.stderr and "Shared" in res.stderr, res.describe()


# ---- hand-made archives (tsgen.py): what only a hand makes ----------------

@pytest.mark.parametrize("case", sorted(tsgen.CASES))
def test_hand_made(tool, case, tmp_path):
    data, expected = tsgen.build(case)
    path = tmp_path / f"{case}.pt"
    path.write_bytes(data)
    res = ckpt_run(tool, "inspect", "--json", "--torchscript-weights", path)
    if isinstance(expected, list):
        assert res.returncode == 0, res.describe()
        assert [t["name"] for t in json.loads(res.stdout)["tensors"]] == expected
    else:
        assert res.returncode == 2, res.describe()
        assert expected in res.stderr, res.describe()
    # without the flag, every one is refused as code
    res = ckpt_run(tool, "inspect", path)
    assert res.returncode == 2 and "--torchscript-weights" in res.stderr, res.describe()
