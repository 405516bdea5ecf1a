"""--torchscript-weights over the corpus's 23 TorchScript archives (see its
MANIFEST.md): 21 give the state dict torch.jit.load(f).state_dict() gives
(torch 1.13's, or torch 2.x's for the archive 1.13 cannot compile); the two
pre-1.3 model.json layouts are refused by name. Skipped, in one line, without
the corpus.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import torch

from test_torchscript import ckpt_run, inspect_ts, same_state_dict
from torchref import dtype_name, tensor_bytes

CORPUS = pathlib.Path(os.environ.get(
    "CKPT_CORPUS",
    pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpus")).resolve()
if not (CORPUS / "benign").is_dir() and os.environ.get("CKPT_REQUIRE_CORPUS") != "1":
    pytest.skip(f"the third-party corpus is not at {CORPUS}: run with CKPT_CORPUS=DIR",
                allow_module_level=True)


CORPUS_ARCHIVES = [
    "benign/TorchSharp/exported.method.dat", "benign/TorchSharp/func.script.dat",
    "benign/TorchSharp/l1000_100_10.script.dat", "benign/TorchSharp/linrelu.script.dat",
    "benign/TorchSharp/list_out.dat", "benign/TorchSharp/scripted.script.dat",
    "benign/TorchSharp/shakespeare.pt.zip", "benign/TorchSharp/tuple_out.dat",
    "benign/djl/identity.pt", "benign/mlverse-torch/linear.pt",
    "benign/tch-rs/2019-12/foo4.pt", "benign/tch-rs/2024-11/foo9.pt",
] + [f"benign/tch-rs/foo{n}.pt" for n in ("", 1, 2, 3, 4, 5, 6, 7, 8)]
# the pre-1.3 layout: model.json describes the tensors; refused by name
CORPUS_MODEL_JSON = ["benign/tch-rs/2019-05/foo.pt", "benign/tch-rs/2019-05/foo3.pt"]

T2 = os.environ.get("CKPT_TORCH2_PYTHON")
T2_STATE_DICT = r'''
import json, sys, torch
sd = torch.jit.load(sys.argv[1], map_location="cpu").state_dict()
print(json.dumps([[k, str(v.dtype).replace("torch.", ""), list(v.shape),
                   v.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()]
                  for k, v in sd.items()]))
'''


def torch2_state_dict(path, tmp_path):
    """torch 2.x's torch.jit.load(path).state_dict() as [name, dtype, shape, hex]."""
    if not T2:
        pytest.skip("torch 1.13 cannot load this archive and no torch 2.x interpreter is here")
    copy = tmp_path / path.name  # the chroot sees this machine's /tmp
    shutil.copyfile(path, copy)
    proc = subprocess.run([*shlex.split(T2), "-c", T2_STATE_DICT, str(copy)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    return json.loads(proc.stdout)


def test_corpus_lists_are_the_manifest():
    text = (CORPUS / "MANIFEST.md").read_text()
    listed = sorted(re.findall(r"^\| `(benign/[^`]+)` \|(?:[^|]*\|){5} torchscript", text, re.M))
    assert listed == sorted(CORPUS_ARCHIVES + CORPUS_MODEL_JSON)


@pytest.mark.parametrize("rel", CORPUS_MODEL_JSON)
def test_corpus_model_json_refused_by_name(tool, rel):
    res = ckpt_run(tool, "inspect", "--torchscript-weights", CORPUS / rel)
    assert res.returncode == 2
    assert "pre-1.3 layout (model.json" in res.stderr, res.describe()


@pytest.mark.parametrize("rel", CORPUS_ARCHIVES)
def test_corpus_archive(tool, rel, tmp_path):
    path = CORPUS / rel
    js = inspect_ts(tool, path)
    out = tmp_path / "out.pt"
    res = ckpt_run(tool, "convert", "-q", "--torchscript-weights", path, out)
    assert res.returncode == 0, res.describe()
    got = torch.load(out, map_location="cpu")
    assert [t["name"] for t in js["tensors"]] == list(got)
    try:
        want = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:  # a torch 2.x archive 1.13 cannot compile
        want = None
    if want is not None:
        same_state_dict(got, want)
        return
    rows = torch2_state_dict(path, tmp_path)
    assert [r[0] for r in rows] == list(got)
    for (name, dtype, shape, raw), t in zip(rows, got.values()):
        assert (dtype_name(t.dtype), list(t.shape)) == (dtype, shape), name
        assert tensor_bytes(t).hex() == raw, name
