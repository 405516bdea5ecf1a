"""ckpt.scan and ckpt.inspect give what `ckpt scan --json` and `ckpt inspect --json` give."""
import json
import os
import shutil
import subprocess

import pytest

import ckpt
from conftest import tool_env


def _cli():
    b = os.environ.get("CKPT_BIN") or shutil.which("ckpt")
    if not b:
        pytest.skip("no ckpt tool to compare with")
    return b


def _evil(path):
    path.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cposix\nsystem\nq\x02X\x02\x00"
                     b"\x00\x00idq\x03\x85q\x04Rq\x05s.")


def test_scan_matches_cli(generated, tmp_path):
    _evil(tmp_path / "evil.pkl")
    for path in (generated["training"].path, tmp_path / "evil.pkl",
                 generated["state_dict_legacy"].path):
        ours = ckpt.scan(path)
        res = subprocess.run([_cli(), "scan", "--json", str(path)], capture_output=True,
                             text=True, env=tool_env())
        cli = json.loads(res.stdout)["files"][0]
        assert ours.as_dict() == cli
    bad = ckpt.scan(tmp_path / "evil.pkl")
    assert bad.verdict == "unsafe" and not bad
    g = [f for f in bad.findings if f.kind == "global"][0]
    assert g.global_ == "posix.system" and g.runs_code and g.call == "posix.system('id')"
    with open(tmp_path / "evil.pkl", "rb") as fh:
        assert ckpt.scan(fh).verdict == "unsafe"
    assert ckpt.scan(generated["training"].path).safe
    with pytest.raises(ckpt.IOError):
        ckpt.scan(tmp_path / "missing")


def test_inspect_matches_cli(generated):
    for name in ("training", "views_legacy", "deflated", "ddp", "state_dict"):
        path = generated[name].path
        ours = ckpt.inspect(path)
        res = subprocess.run([_cli(), "inspect", "--json", str(path)], capture_output=True,
                             text=True, env=tool_env())
        cli = json.loads(res.stdout)
        for k in ("file", "format", "details", "records", "tensors", "totals", "model", "tree"):
            assert ours[k] == cli[k], k


def test_inspect_tree_matches_cli(tmp_path):
    """The "tree" key holds what JSON lacks as the tool tags it: tuples,
    sets, sizes, OrderedDicts with their state, dicts with keys that are
    not text, bytes, big and special numbers, text that is not UTF-8,
    dtypes, devices, Parameters, and a container met twice."""
    import collections
    import torch
    sd = collections.OrderedDict(w=torch.nn.Parameter(torch.randn(2, 3)), b=torch.zeros(3))
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    shared = [1, 2]
    obj = {"sd": sd, "t": (1, "a", None), "s": {3}, "size": torch.Size([2, 3]),
           "nums": [2 ** 80, -2 ** 70, float("nan"), float("inf"), -float("inf"), 0.1,
                    complex(1.5, float("nan")), True],
           "keys": {1: "one", (2, 3): "pair", "x": b"\x00\xff"}, "ba": bytearray(b"ab"),
           "text": "caf\u00e9 \u0000 end", "bad": "\udc80", "dtype": torch.bfloat16,
           "dev": torch.device("cuda:1"), "a": shared, "b": shared, "fs": frozenset({4})}
    path = tmp_path / "tree.pt"
    torch.save(obj, path)
    ours = ckpt.inspect(path)
    res = subprocess.run([_cli(), "inspect", "--json", str(path)], capture_output=True,
                         text=True, env=tool_env())
    cli = json.loads(res.stdout)
    assert ours["tree"] == cli["tree"]
    t = ours["tree"]
    assert t["t"] == {"$tuple": [1, "a", None]}
    assert t["sd"]["$odict"]["w"] == {"$tensor": {"dtype": "float32", "shape": [2, 3],
                                                  "parameter": True}}
    assert t["a"] == t["b"] == [1, 2]
