"""--permissive: files holding objects outside the allow-list open, each object
an inert value; a pickled nn.Module names its tensors exactly as state_dict()
does, and `ckpt convert --permissive` rescues its weights. Strict stays the
default, and nothing a file names is ever run."""
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)     # a None bias
        self.bn = nn.BatchNorm2d(4)                    # running stats, num_batches_tracked
        self.register_buffer("scale", torch.arange(4.0))
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.register_parameter("unused", None)

    def forward(self, x):
        return self.bn(self.conv(x)) * self.scale.view(1, -1, 1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.seq = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False))
        self.heads = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Identity()})
        self.emb = nn.Embedding(5, 2)
        self.register_buffer("steps", torch.tensor(11, dtype=torch.int64))

    def forward(self, x):
        return x


def make_model():
    torch.manual_seed(0)
    m = Net()
    m.block.bn.running_mean += 1.5
    m.block.bn.running_var *= 2.0
    m.block.bn.num_batches_tracked += 7
    m.emb.weight.data = m.emb.weight.data.half().float()
    return m


@pytest.fixture(scope="module")
def models(gen_dir):
    d = gen_dir / "permissive"
    d.mkdir()
    m = make_model()
    out = {"model": m, "dir": d}
    out["zip"] = d / "model.pth"
    torch.save(m, out["zip"])
    out["legacy"] = d / "model_legacy.pth"
    torch.save(m, out["legacy"], _use_new_zipfile_serialization=False)
    out["wrapped"] = d / "wrapped.pth"
    torch.save({"model": m, "epoch": 4, "optimizer": None}, out["wrapped"])
    out["half"] = d / "half.pth"
    torch.save(make_model().half(), out["half"])
    return out


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "F64": np.float64}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + end], dtype=dtypes[e["dtype"]]).reshape(
            e["shape"])
    return out, header.get("__metadata__", {})


def inspect(tool, path, *extra):
    res = tool.run("inspect", path, "--json", "--permissive", *extra)
    assert res.returncode == 0, res.describe()
    return json.loads(res.stdout)


@pytest.mark.parametrize("kind", ["zip", "legacy"])
def test_module_names_are_its_state_dict(tool, models, kind):
    js = inspect(tool, models[kind])
    sd = models["model"].state_dict()
    assert [t["name"] for t in js["tensors"]] == list(sd)
    for t, (name, v) in zip(js["tensors"], sd.items()):
        assert t["shape"] == list(v.shape), name
        assert t["dtype"] == str(v.dtype).replace("torch.", ""), name
    assert "block.scratch" not in {t["name"] for t in js["tensors"]}
    root = js["tree"]["$object"]
    assert root["class"].endswith(".Net")
    assert {"_parameters", "_buffers", "_modules"} <= set(root["state"])


def test_wrapped_module_gets_its_key_as_prefix(tool, models):
    js = inspect(tool, models["wrapped"])
    sd = models["model"].state_dict()
    assert [t["name"] for t in js["tensors"]] == ["model." + k for k in sd]


@pytest.mark.parametrize("kind", ["zip", "legacy", "half"])
def test_convert_rescues_the_weights(tool, models, kind):
    out = models["dir"] / f"rescued_{kind}.safetensors"
    res = tool.run("convert", "--permissive", models[kind], out)
    assert res.returncode == 0, res.describe()
    tensors, _meta = read_safetensors(out)
    model = models["model"] if kind != "half" else make_model().half()
    sd = model.state_dict()
    assert sorted(tensors) == sorted(sd)
    for name, v in sd.items():
        np.testing.assert_array_equal(tensors[name], v.numpy(), err_msg=name)
    # the rescued weights load into a fresh model
    fresh = Net() if kind != "half" else Net().half()
    fresh.load_state_dict({k: torch.from_numpy(np.array(a)) for k, a in tensors.items()})


@pytest.mark.parametrize("kind", ["zip", "legacy", "wrapped"])
def test_convert_rescues_a_state_dict_torch_loads(tool, models, kind):
    """To .pth, a pickled module becomes the OrderedDict state_dict() gives,
    loadable with weights_only=True into a fresh model, strictly."""
    out = models["dir"] / f"rescued_{kind}.pth"
    extra = ["--key", "model"] if kind == "wrapped" else []
    res = tool.run("convert", "--permissive", models[kind], out, *extra)
    assert res.returncode == 0, res.describe()
    got = torch.load(out, weights_only=True)
    sd = models["model"].state_dict()
    assert list(got) == list(sd)
    for name, v in sd.items():
        assert torch.equal(got[name], v), name
    Net().load_state_dict(got, strict=True)
    # a module inside a tree that is written whole cannot be: a clear refusal
    if kind == "wrapped":
        bad = models["dir"] / "whole.pth"
        res = tool.run("convert", "--permissive", models[kind], bad)
        assert res.returncode == 2 and not bad.exists(), res.describe()


def test_strict_is_the_default(tool, models):
    for kind in ("zip", "legacy", "wrapped"):
        res = tool.run("inspect", models[kind], "--json")
        assert res.returncode == 2, res.describe()
        assert "is not allowed" in res.stderr and "Net" in res.stderr, res.describe()
        res = tool.run("convert", models[kind], models["dir"] / "strict.safetensors")
        assert res.returncode == 2, res.describe()


def test_objects_stay_inert(tool, gen_dir):
    """A payload that would create a file if anything ran it: permissive reads
    it as an object with its arguments, and the file never appears."""
    d = gen_dir / "permissive_inert"
    d.mkdir()
    marker = d / "ran"
    cmd = f"touch {marker}".encode()
    payload = (b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\n"
               b"X\x05\x00\x00\x00evil_q\x02cposix\nsystem\nq\x03X" +
               struct.pack("<I", len(cmd)) + cmd + b"\x85Rq\x04u.")
    path = d / "payload.pkl"
    path.write_bytes(payload)
    assert tool.run("inspect", path).returncode == 2
    js = inspect(tool, path)
    obj = js["tree"]["evil_"]["$object"]
    assert obj["class"] == "posix.system"
    assert obj["args"] == {"$tuple": [f"touch {marker}"]}
    assert not marker.exists()
    res = tool.run("inspect", path, "--permissive")
    assert res.returncode == 0 and "posix.system object (inert)" in res.stdout, res.describe()
    assert not marker.exists()
