"""What a new user meets first: the state dict a command picks in a training
checkpoint, the totals inspect prints, and errors that say how to go on."""
import argparse
import json
import re

import pytest
import torch


@pytest.fixture(scope="module")
def files(gen_dir):
    d = gen_dir / "hints"
    d.mkdir()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = net.state_dict()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    out = {"sd": d / "sd.pth", "last": d / "last.pth", "tied": d / "tied.pth",
           "unsafe": d / "unsafe.pth", "lightning": d / "lightning.ckpt"}
    torch.save(sd, out["sd"])
    # an RNG state sits at the root beside the model, as training scripts save it
    torch.save({"model": sd, "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
                "epoch": 3}, out["last"])
    torch.save({"state_dict": sd, "epoch": 1}, out["lightning"])
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: one storage under two names
    torch.save({"model": {"emb.weight": emb.weight, "head.weight": head.weight},
                "rng": torch.get_rng_state()}, out["tied"])
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=0.1)}, out["unsafe"])
    return out


# ---- match picks the model's state dict ------------------------------------------

def test_match_prefers_model_over_stray_root_tensors(tool, files):
    res = tool.run("match", files["last"], "--model", files["sd"])
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith("ok: 7 tensors load into Model (strict)"), res.describe()
    # the other way round: the reference is the training checkpoint
    res = tool.run("match", files["sd"], "--model", files["last"])
    assert res.returncode == 0, res.describe()
    res = tool.run("match", files["lightning"], "--model", files["last"])
    assert res.returncode == 0, res.describe()


def test_match_plain_state_dict_at_root(tool, files, gen_dir):
    """A state dict at the root stays the state dict, as torch loads it, even
    with a module named model."""
    path = gen_dir / "hints" / "root_model.pth"
    torch.save({"model.weight": torch.ones(2, 2), "rng": torch.zeros(3)}, path)
    res = tool.run("match", path, "--model", path)
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith("ok: 2 tensors"), res.describe()
    res = tool.run("match", files["sd"], "--model", path)
    assert res.returncode == 1, res.describe()
    assert "Missing key(s)" in res.stdout and '"model.weight"' in res.stdout


def test_match_missing_key_lists_keys(tool, files):
    res = tool.run("match", files["last"], "--model", files["sd"], "--key", "modle")
    assert res.returncode == 2, res.describe()
    assert "no value at --key modle" in res.stderr
    assert "'model', 'optimizer', 'rng', 'epoch'" in res.stderr, res.describe()
    assert "hint: --key model" in res.stderr, res.describe()
    res = tool.run("match", files["last"], "--model", files["sd"], "--key", "optimizer.stat")
    assert res.returncode == 2, res.describe()
    assert "keys at 'optimizer': 'state', 'param_groups'" in res.stderr, res.describe()
    res = tool.run("match", files["sd"], "--model", files["lightning"], "--model-key", "model")
    assert res.returncode == 2, res.describe()
    assert "'state_dict', 'epoch'" in res.stderr
    assert "hint: --model-key state_dict" in res.stderr, res.describe()


def test_convert_missing_key_lists_keys(tool, files, tmp_path):
    res = tool.run("convert", files["last"], tmp_path / "out.safetensors", "--key", "models")
    assert res.returncode == 2, res.describe()
    assert "'model', 'optimizer', 'rng', 'epoch'" in res.stderr, res.describe()
    assert "hint: --key model" in res.stderr, res.describe()
    assert not (tmp_path / "out.safetensors").exists()


# ---- inspect's totals ------------------------------------------------------------

def test_inspect_totals_say_what_is_counted(tool, files):
    res = tool.run("inspect", files["tied"])
    assert res.returncode == 0, res.describe()
    rng = torch.get_rng_state().numel()
    # emb.weight and head.weight are one storage: counted once
    total = 40 + rng
    assert re.search(rf"^Totals:\s+3 tensors \(2 distinct: shared data counted once\), "
                     rf"{total} elements, {160 + rng} bytes", res.stdout, re.M), res.describe()
    assert re.search(r"^Model:\s+'model', its parameters and buffers: 2 tensors "
                     r"\(1 distinct: shared data counted once\), 40 elements, 160 bytes",
                     res.stdout, re.M), res.describe()
    js = tool.inspect_json(files["tied"])
    assert js["totals"] == {"tensors": 3, "distinct": 2, "elements": total,
                            "bytes": 160 + rng}
    assert js["model"] == {"tensors": 2, "distinct": 1, "elements": 40, "bytes": 160,
                           "key": "model"}
    # the optimizer's moments and the RNG state are not the model's
    js = tool.inspect_json(files["last"])
    n = sum(t.numel() for t in torch.load(files["sd"]).values())
    assert js["model"]["key"] == "model" and js["model"]["elements"] == n
    assert js["model"]["tensors"] == 7
    assert js["totals"]["elements"] > n


# ---- errors that point at the fix --------------------------------------------------

def test_unsafe_global_points_at_scan_and_permissive(tool, files):
    for args in (("inspect",), ("verify",), ("match", "--model", files["sd"])):
        res = tool.run(*args, files["unsafe"])
        assert res.returncode != 0, res.describe()
        assert "argparse" in res.stderr, res.describe()
        assert f"'ckpt scan {files['unsafe']}'" in res.stderr, res.describe()
        assert "--permissive" in res.stderr, res.describe()
    res = tool.run("inspect", "--permissive", files["unsafe"])
    assert res.returncode == 0, res.describe()
    assert "hint" not in res.stderr
    assert json.loads(tool.run("scan", "--json", files["unsafe"]).stdout)
