"""`ckpt convert`: the seed's recipes as one command each, checked with torch.

- extract the weights of a training checkpoint (--key model);
- strip DDP's `module.` prefix (and edit keys: --add-prefix, --rename,
  --include/--exclude), _metadata following like torch's
  consume_prefix_in_state_dict_if_present;
- save CPU tensors for portability (--map-location cpu);
- convert dtypes (--dtype), bit for bit as torch's .to() rounds;
- safetensors both ways.
"""
import collections
import json
import math
import struct

import numpy as np
import pytest
import torch
from torch import nn

import ckptgen
import safetensors_rules


def load(path):
    return torch.load(str(path), map_location="cpu")


def convert(tool, *args, ok=True):
    res = tool.run("convert", *args)
    if ok:
        assert res.returncode == 0, res.describe()
        assert res.stderr == "", res.describe()  # no progress bar off a terminal
    return res


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    np_dtypes = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                 "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                 "BOOL": np.bool_}
    out = collections.OrderedDict()
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        if e["dtype"] == "BF16":
            u16 = np.frombuffer(raw[base + b:base + end], dtype=np.uint16)
            t = torch.from_numpy(u16.astype(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.frombuffer(raw[base + b:base + end],
                                               dtype=np_dtypes[e["dtype"]]).copy())
        out[name] = t.reshape(e["shape"])
    return header.get("__metadata__"), out


def same_tensor(a, b):
    return (a.dtype == b.dtype and a.shape == b.shape and
            torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a,
                        b.view(torch.uint8) if b.dtype == torch.bool else b))


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    obj = ckptgen.training_checkpoint(str(torch.__version__))
    p = d / "last.pth"
    torch.save(obj, p)
    return p, obj


def test_key_model_gives_the_state_dict(tool, training, tmp_path):
    src, obj = training
    out = tmp_path / "best.pth"
    convert(tool, src, out, "--key", "model")
    got = torch.load(out, weights_only=True)  # weights only: loads with the safe reader
    want = obj["model"]
    assert type(got) is collections.OrderedDict
    assert list(got) == list(want)
    for k in want:
        assert same_tensor(got[k], want[k]), k
    assert got._metadata == want._metadata
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert not net.load_state_dict(got, strict=True).missing_keys


def test_key_reaches_nested_values(tool, training, tmp_path):
    src, obj = training
    out = tmp_path / "sched.pth"
    convert(tool, src, out, "--key", "optimizer.param_groups.0")
    assert load(out) == obj["optimizer"]["param_groups"][0]
    res = convert(tool, src, tmp_path / "x.pth", "--key", "nope", ok=False)
    assert res.returncode == 2 and "--key nope" in res.stderr
    assert not (tmp_path / "x.pth").exists()


def test_strip_ddp_prefix(tool, torch_files, tmp_path):
    src = torch_files["ddp"].path
    out = tmp_path / "plain.pth"
    convert(tool, src, out, "--strip-prefix", "module.")
    got = load(out)
    want = ckptgen.model_state_dict()
    assert list(got) == list(want)
    for k in want:
        assert same_tensor(got[k], want[k]), k
    # _metadata follows, by the rule of consume_prefix_in_state_dict_if_present
    # (torch 1.13's own metadata step looks for a "_metadata" key, so never runs):
    # "module" -> "", "module.x" -> "x"
    ddp = load(src)
    assert list(ddp._metadata)[0] == "module"
    assert got._metadata == collections.OrderedDict(
        ("" if k == "module" else k[len("module."):], v) for k, v in ddp._metadata.items())
    assert got._metadata == want._metadata
    net = ckptgen.Net()
    net.load_state_dict(got, strict=True)


def test_strip_prefix_only_at_the_start_and_once(tool, tmp_path):
    sd = collections.OrderedDict([("module.module.a", torch.ones(1)),
                                  ("b.module.c", torch.zeros(1)), ("module.d", torch.ones(2))])
    src = tmp_path / "in.pth"
    torch.save(sd, src)
    out = tmp_path / "out.pth"
    convert(tool, src, out, "--strip-prefix", "module.")
    assert list(load(out)) == ["module.a", "b.module.c", "d"]
    convert(tool, src, out, "--strip-prefix", "module.", "--strip-prefix", "module.")
    assert list(load(out)) == ["a", "b.module.c", "d"]


def test_add_prefix_rename_include_exclude(tool, torch_files, tmp_path):
    src = torch_files["state_dict"].path
    want = load(src)
    out = tmp_path / "edited.pth"
    convert(tool, src, out, "--add-prefix", "backbone.")
    got = load(out)
    assert list(got) == ["backbone." + k for k in want]
    assert got._metadata == collections.OrderedDict(
        ("backbone." + k if k else "backbone", v) for k, v in want._metadata.items())

    first = next(iter(want)).split(".")[0] + "."
    convert(tool, src, out, "--rename", f"{first}=stem.")
    got = load(out)
    assert list(got) == [("stem." + k[len(first):]) if k.startswith(first) else k for k in want]

    convert(tool, src, out, "--include", "*.weight", "--exclude", f"{first}*")
    got = load(out)
    assert list(got) == [k for k in want if k.endswith(".weight") and not k.startswith(first)]
    assert got


def test_key_edits_need_a_dict(tool, torch_files, tmp_path):
    res = convert(tool, torch_files["root_tensor"].path, tmp_path / "o.pth",
                  "--strip-prefix", "a.", ok=False)
    assert res.returncode == 2 and "--key" in res.stderr


EDGE = [0.0, -0.0, 1.0, -1.5, 65504.0, 65519.0, 65520.0, 1e6, 1e-8, 6e-8, 3e-8, 5.96e-8,
        1.0 + 2 ** -11, 1.0 + 3 * 2 ** -11, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.0e38, 1e-40,
        1e-45, float("inf"), float("-inf"), float("nan"), 2 ** -14, 2 ** -24, 2 ** -25,
        1.0 + 2 ** -11 + 2 ** -40]


@pytest.mark.parametrize("target", ["float16", "bfloat16", "float32", "float64"])
def test_dtype_matches_torch_bit_for_bit(tool, tmp_path, target):
    g = torch.Generator().manual_seed(7)
    f32 = torch.cat([torch.tensor(EDGE, dtype=torch.float32),
                     torch.randn(5000, generator=g) * 10 ** torch.randint(-9, 9, (5000,),
                                                                           generator=g)])
    f64 = torch.cat([torch.tensor(EDGE, dtype=torch.float64),
                     torch.randn(5000, generator=g, dtype=torch.float64) * 1e-3])
    obj = {"f32": f32, "f64": f64, "f16": f32.to(torch.float16), "bf16": f32.to(torch.bfloat16),
           "strided": f32[:4000].reshape(40, 100).t(), "ints": torch.arange(10),
           "flags": torch.tensor([True, False]), "epoch": 3}
    src = tmp_path / "mixed.pth"
    torch.save(obj, src)
    out = tmp_path / f"mixed_{target}.pth"
    convert(tool, src, out, "--dtype", target)
    got = load(out)
    dt = getattr(torch, target)
    for k in ("f32", "f64", "f16", "bf16", "strided"):
        want = obj[k].to(dt)
        assert got[k].dtype == dt
        assert got[k].shape == want.shape
        a, b = got[k].contiguous(), want.contiguous()
        nan = torch.isnan(b)
        assert torch.equal(torch.isnan(a), nan), k
        assert torch.equal(a[~nan], b[~nan]), k
        # signed zeros too
        assert torch.equal(torch.signbit(a[~nan]), torch.signbit(b[~nan])), k
    assert got["ints"].dtype == torch.int64 and torch.equal(got["ints"], obj["ints"])
    assert torch.equal(got["flags"], obj["flags"])
    assert got["epoch"] == 3


def test_dtype_keeps_parameters_and_sharing(tool, tmp_path):
    w = nn.Parameter(torch.randn(3, 3))
    obj = {"a": w, "tied": w, "opt": {"state": {0: {"exp_avg": torch.randn(3, 3)}}}}
    src = tmp_path / "tied.pth"
    torch.save(obj, src)
    out = tmp_path / "tied16.pth"
    convert(tool, src, out, "--dtype", "float16")
    got = load(out)
    assert isinstance(got["a"], nn.Parameter) and got["a"].dtype == torch.float16
    assert got["a"] is got["tied"]
    assert torch.equal(got["opt"]["state"][0]["exp_avg"], obj["opt"]["state"][0]["exp_avg"].half())


def test_dtype_visits_shared_and_cyclic_containers_once(tool, tmp_path):
    # A container shared by two paths stays one container; one holding
    # itself (twice, so that following every path would never end) is
    # refused by the writer instead of walked forever.
    t = torch.randn(4)
    shared = [t]
    obj = {"a": shared, "b": shared}
    src = tmp_path / "shared.pth"
    torch.save(obj, src)
    out = tmp_path / "shared16.pth"
    convert(tool, src, out, "--dtype", "float16")
    got = load(out)
    assert got["a"] is got["b"] and torch.equal(got["a"][0], t.half())

    loop = [t]
    loop.append(loop)
    loop.append(loop)
    src = tmp_path / "loop.pth"
    torch.save({"loop": loop}, src)
    res = tool.run("convert", src, tmp_path / "loop16.pth", "--dtype", "float16", timeout=60)
    assert res.returncode == 2, res.describe()
    assert "cycle" in res.stderr, res.describe()


def test_map_location_cpu(tool, torch_files, tmp_path):
    src = torch_files["location_cuda"].path
    out = tmp_path / "cpu.pth"
    convert(tool, src, out, "--map-location", "cpu")
    got = torch.load(out)  # no map_location: would fail on a CUDA tag without CUDA
    want = load(src)
    assert torch.equal(got["a"], want["a"]) and got["a"].device.type == "cpu"
    info = tool.inspect_json(out)
    assert {t["location"] for t in info["tensors"]} == {"cpu"}
    # without the option the tags stay
    keep = tmp_path / "keep.pth"
    convert(tool, src, keep)
    assert {t["location"] for t in tool.inspect_json(keep)["tensors"]} == {"cuda:0"}


def test_training_checkpoint_to_safetensors(tool, training, tmp_path):
    src, obj = training
    out = tmp_path / "last.safetensors"
    convert(tool, src, out)
    meta, tensors = read_safetensors(out)
    for name, t in ckptgen_flat(obj):
        assert same_tensor(tensors[name], t.contiguous()), name
    assert json.loads(meta["epoch"]) == 3
    assert json.loads(meta["metrics"]) == {"val_loss": 0.25, "acc": 0.9}
    assert json.loads(meta["torch_version"]) == str(torch.__version__)
    assert json.loads(meta["optimizer.param_groups"])[0]["lr"] == obj["optimizer"][
        "param_groups"][0]["lr"]
    assert meta["format"] == "pt"


def ckptgen_flat(obj):
    import torchref
    return torchref.flatten(obj)


def test_state_dict_safetensors_round_trip(tool, torch_files, tmp_path):
    src = torch_files["state_dict"].path
    want = load(src)
    st = tmp_path / "w.safetensors"
    convert(tool, src, st, "--dtype", "bfloat16")
    back = tmp_path / "w.pth"
    convert(tool, st, back)
    got = torch.load(back)
    assert type(got) is dict  # as safetensors.torch.load_file gives
    converted = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in want.items()}
    # the reference order: alignment (element size) descending, then name
    assert list(got) == sorted(converted, key=lambda k: (-converted[k].element_size(), k))
    for k, v in want.items():
        expect = v.to(torch.bfloat16) if v.is_floating_point() else v
        assert same_tensor(got[k], expect), k
    # the safetensors file keeps its metadata through a safetensors copy
    st2 = tmp_path / "w2.safetensors"
    convert(tool, st, st2)
    assert st2.read_bytes() == st.read_bytes()


def test_to_option_and_unknown_extension(tool, torch_files, tmp_path):
    src = torch_files["state_dict"].path
    res = convert(tool, src, tmp_path / "out.weights", ok=False)
    assert res.returncode == 2 and "--to" in res.stderr
    out = tmp_path / "out.weights"
    convert(tool, src, out, "--to", "safetensors")
    assert out.read_bytes()[8:9] == b"{"
    convert(tool, src, out, "--to", "pth")
    assert out.read_bytes()[:4] == b"PK\x03\x04"


def test_failed_convert_leaves_output_untouched(tool, torch_files, tmp_path):
    out = tmp_path / "keep.pth"
    out.write_bytes(b"previous contents")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    res = convert(tool, bad, out, ok=False)
    assert res.returncode == 2
    assert out.read_bytes() == b"previous contents"
    res = convert(tool, torch_files["dtypes"].path, tmp_path / "q.safetensors", ok=False)
    # complex/quantized dtypes have no safetensors name: refused, nothing left behind
    if res.returncode != 0:
        assert not (tmp_path / "q.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_options(tool, torch_files, tmp_path):
    src = torch_files["state_dict"].path
    for args in (["--dtype", "int8"], ["--rename", "nope"], ["--bogus"], []):
        res = tool.run("convert", src, tmp_path / "o.pth", *args) if args else \
            tool.run("convert", src)
        assert res.returncode == 2, res.describe()
    res = tool.run("convert", "--help")
    assert res.returncode == 0 and "--strip-prefix" in res.stdout


def test_nul_in_a_key_is_named_not_cut(tool, tmp_path):
    """Names are C strings: a NUL in a key is written \\x00 (as repr shows
    it), so "a\\0b" and "a" stay two names and reach safetensors whole."""
    src = tmp_path / "nul.pth"
    torch.save({"a\x00b": torch.ones(2), "a": torch.zeros(1)}, src)
    names = [t["name"] for t in tool.inspect_json(src)["tensors"]]
    assert names == ["a\\x00b", "a"]
    out = tmp_path / "nul.safetensors"
    convert(tool, src, out)
    _meta, tensors = read_safetensors(out)
    assert sorted(tensors) == ["a", "a\\x00b"]
    assert torch.equal(tensors["a\\x00b"], torch.ones(2))


@pytest.mark.parametrize("case", ckptgen.CASE_NAMES)
def test_pth_safetensors_pth_round_trip(tool, torch_files, tmp_path, case):
    """Every generated file through safetensors and back: the same tensors
    under the same names (a flat dict), or a clear refusal for what
    safetensors cannot hold (complex, quantized, sparse tensors)."""
    import torchref

    c = torch_files[case]
    want = torchref.flatten(c.expected())
    st = tmp_path / "mid.safetensors"
    res = convert(tool, c.path, st, ok=False)
    unsupported = [n for n, t in want if t.is_quantized or t.layout != torch.strided or
                   t.is_complex() or t.dtype in (torch.quint4x2,)]
    names = [n for n, _ in want]
    if unsupported or len(set(names)) != len(names):
        assert res.returncode == 2 and not st.exists(), res.describe()
        return
    assert res.returncode == 0, res.describe()
    back = tmp_path / "back.pth"
    convert(tool, st, back, "-q")  # quiet: no note about the metadata left behind
    got = torch.load(back)
    assert type(got) is dict
    expect = {("tensor" if n == "" else n): t for n, t in want}
    tied = safetensors_rules.tied(list(expect.items()))  # written once
    meta, _ = read_safetensors(st)
    for n, kept in tied.items():
        assert meta[n] == kept
        del expect[n]
    assert set(got) == set(expect)
    for n, t in expect.items():
        assert same_tensor(got[n], t.contiguous()), n
