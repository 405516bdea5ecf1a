"""`ckpt convert` where a first use goes wrong: tied weights written to
safetensors."""
import json
import os
import signal
import stat
import struct
import subprocess
import time

import pytest
import torch
from torch import nn

import safetensors_rules


def small_state_dict(path):
    sd = {"module.bn.weight": torch.ones(3), "module.bn.bias": torch.zeros(3),
          "module.fc.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, path)
    return sd


def header_of(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def temporaries(d):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


# ---- tied weights ------------------------------------------------------------------

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_written_once_as_save_model_does(tool, tmp_path):
    torch.manual_seed(0)
    model = Tied()
    src = tmp_path / "tied.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "tied.safetensors"
    res = tool.run("convert", src, out)
    assert res.returncode == 0 and res.stderr == "", res.describe()
    header = header_of(out)
    entries = safetensors_rules.tensors_of(header)
    # save_model keeps the first name in sorted order and records the other
    assert list(entries) == ["embed.weight"]
    assert header["__metadata__"] == {"format": "pt", "head.weight": "embed.weight"}
    # load_model's way back: a non-strict load whose missing keys are the
    # names dropped, which the model's own tie fills
    sd = {"embed.weight": torch.load(src)["embed.weight"]}
    raw = out.read_bytes()
    b, e = entries["embed.weight"]["data_offsets"]
    base = 8 + struct.unpack("<Q", raw[:8])[0]
    sd["embed.weight"] = torch.frombuffer(bytearray(raw[base + b:base + e]),
                                          dtype=torch.float32).reshape(5, 3)
    fresh = Tied()
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    dropped = {k for k, v in header["__metadata__"].items() if v in entries}
    assert unexpected == [] and set(missing) == dropped
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.head.weight, model.head.weight)
    # ckpt reads it back as one tensor
    back = tmp_path / "back.pth"
    assert tool.run("convert", out, back, "-q").returncode == 0
    assert list(torch.load(back)) == ["embed.weight"]


def test_distinct_views_of_one_storage_stay_apart(tool, tmp_path):
    base = torch.arange(12.0)
    src = tmp_path / "views.pth"
    torch.save({"a": base[:6], "b": base[6:], "c": base[:6].view(2, 3), "d": base[:6]}, src)
    out = tmp_path / "views.safetensors"
    assert tool.run("convert", src, out).returncode == 0
    header = header_of(out)
    assert sorted(safetensors_rules.tensors_of(header)) == ["a", "b", "c"]
    assert header["__metadata__"]["d"] == "a"
