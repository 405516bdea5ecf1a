"""`ckpt convert IN OUT-DIR/ --max-shard-size SIZE`: a sharded safetensors set
as transformers' save_pretrained writes it.

- the split is the reference's (split_state_dict_into_shards, written out
  below from huggingface_hub's code: a tensor over the limit alone in a
  shard appended at once, a tensor that would tip the current shard over
  the limit starts a new one); names model-0000i-of-0000n.safetensors, the
  index's metadata.total_size and its sorted weight_map;
- ckpt reads the set back through the index (a round trip to .pth that
  torch 1.13 loads), and the safetensors package in the torch 2.6 chroot
  loads it as transformers does (index, then load_file per shard), every
  tensor equal bit for bit;
- one commit: files of OUT that are not part of a set stay (config.json),
  stale shards of an earlier set go, and a SIGKILL at each step of the
  commit (CKPT_SHARD_KILL_AT) leaves the earlier set whole; the next
  conversion clears what the crash left.
"""
import json
import os
import shlex
import subprocess

import pytest
import torch

T2 = os.environ.get("CKPT_TORCH2_PYTHON")


def reference_split(sizes, max_size):
    """huggingface_hub's split_state_dict_into_shards_factory over (name, bytes)
    in state dict order, without shared storages: name -> shard index."""
    shard_list, current, current_size = [], [], 0
    for name, size in sizes:
        if size > max_size:
            shard_list.append([name])
            continue
        if current_size + size > max_size:
            shard_list.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current:
        shard_list.append(current)
    return {name: i for i, names in enumerate(shard_list) for name in names}, len(shard_list)


def state_dict():
    g = torch.Generator().manual_seed(7)
    return {
        "embed.weight": torch.randn(64, 16, generator=g),            # 4096 B
        "layers.0.w": torch.randn(8, 16, generator=g).half(),        # 256 B
        "layers.0.b": torch.arange(16, dtype=torch.int64),           # 128 B
        "huge": torch.randn(2000, generator=g),                      # 8000 B > limit
        "layers.1.w": torch.randn(8, 16, generator=g).to(torch.bfloat16),
        "layers.1.b": torch.ones(3000, dtype=torch.uint8),           # 3000 B
        "norm": torch.randn(16, generator=g, dtype=torch.float64),   # 128 B
    }


def run(argv, env=None, check=True):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return proc


@pytest.fixture()
def source(tmp_path):
    sd = state_dict()
    path = tmp_path / "in.pth"
    torch.save({"model": sd, "epoch": 4}, path)
    return path, sd


def test_split_names_and_index_match_save_pretrained(tmp_path, source, ckpt_bin):
    src, sd = source
    out = tmp_path / "out"
    run([ckpt_bin, "convert", str(src), str(out) + "/", "--key", "model",
         "--max-shard-size", "5KB", "-q"])
    sizes = [(k, v.numel() * v.element_size()) for k, v in sd.items()]
    where, n = reference_split(sizes, 5000)
    assert n == 3
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["model.safetensors.index.json"])
    index_text = (out / "model.safetensors.index.json").read_text()
    index = json.loads(index_text)
    assert index == {"metadata": {"total_size": sum(s for _, s in sizes)},
                     "weight_map": {k: names[where[k]] for k in sd}}
    # json.dumps(index, indent=2, sort_keys=True) + "\n", as save_pretrained
    assert index_text == json.dumps(index, indent=2, sort_keys=True) + "\n"
    # the tensor over the limit is alone in its shard
    huge_file = index["weight_map"]["huge"]
    assert [k for k, f in index["weight_map"].items() if f == huge_file] == ["huge"]

    # ckpt reads the set through its index: a round trip torch loads
    back = tmp_path / "back.pth"
    run([ckpt_bin, "convert", str(out / "model.safetensors.index.json"), str(back), "-q"])
    loaded = torch.load(back)
    assert sorted(loaded) == sorted(sd)
    for k, v in sd.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


def test_safetensors_loads_the_set_as_transformers_does(tmp_path, source, ckpt_bin):
    if not T2:
        pytest.skip("no torch 2.x chroot with safetensors (scripts/torch2-chroot.sh build)")
    src, sd = source
    out = tmp_path / "out"
    run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size", "0.005MB",
         "-q"])
    code = r'''
import json, os, sys, torch
from safetensors import safe_open
from safetensors.torch import load_file
d = sys.argv[1]
index = json.load(open(os.path.join(d, "model.safetensors.index.json")))
sd = {}
for f in sorted(set(index["weight_map"].values())):
    with safe_open(os.path.join(d, f), framework="pt") as h:
        assert h.metadata() == {"format": "pt"}, h.metadata()
    sd.update(load_file(os.path.join(d, f)))
assert sorted(sd) == sorted(index["weight_map"]), sorted(sd)
orig = torch.load(sys.argv[2], weights_only=True)["model"]
for k, v in orig.items():
    assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
print("ok", len(sd))
'''
    argv = [*shlex.split(T2), "-c", code, str(out), str(src)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    assert proc.stdout.decode().split() == ["ok", str(len(sd))]


def test_one_shard_is_model_safetensors_alone(tmp_path, source, ckpt_bin):
    src, sd = source
    out = tmp_path / "one"
    run([ckpt_bin, "convert", str(src), str(out) + "/", "--key", "model", "-q"])
    assert [p.name for p in out.iterdir()] == ["model.safetensors"]
    back = tmp_path / "back.pth"
    run([ckpt_bin, "convert", str(out / "model.safetensors"), str(back), "-q"])
    assert all(torch.equal(torch.load(back)[k], v) for k, v in sd.items())


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_commit_keeps_other_files_and_drops_stale_shards(tmp_path, source, ckpt_bin):
    src, _ = source
    out = tmp_path / "out"
    run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size", "3KB",
         "-q"])
    assert len([p for p in out.iterdir() if p.name.endswith(".safetensors")]) > 4
    (out / "config.json").write_text('{"model_type": "toy"}\n')
    run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size", "5KB",
         "-q"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model-00001-of-00003.safetensors",
                     "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                     "model.safetensors.index.json"]
    assert (out / "config.json").read_text() == '{"model_type": "toy"}\n'
    # a sharded output is safetensors only, and OUT must be a directory
    proc = run([ckpt_bin, "convert", str(src), str(out), "--max-shard-size", "5KB", "--to", "pth"],
               check=False)
    assert proc.returncode != 0 and b"sharded output" in proc.stderr
    proc = run([ckpt_bin, "convert", str(src), str(src), "--key", "model", "--max-shard-size",
                "5KB"], check=False)
    assert proc.returncode != 0 and b"not a directory" in proc.stderr
    for bad in ["5XB", "-1GB", "0", "GB"]:
        proc = run([ckpt_bin, "convert", str(src), str(out), "--max-shard-size", bad],
                   check=False)
        assert proc.returncode == 2 and b"--max-shard-size" in proc.stderr, bad


@pytest.mark.parametrize("step", [1, 2, 3])
def test_killed_at_each_commit_step_leaves_a_whole_set(tmp_path, source, ckpt_bin, step):
    src, sd = source
    out = tmp_path / "out"
    run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size", "3KB",
         "-q"])
    (out / "config.json").write_text("{}\n")
    before = snapshot(out)
    proc = run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size",
                "5KB", "-q"], env={"CKPT_SHARD_KILL_AT": str(step)}, check=False)
    assert proc.returncode == -9
    after = snapshot(out)
    if step < 3:
        assert after == before
    else:
        assert len([n for n in after if n.endswith(".safetensors")]) == 3
        assert after["config.json"] == b"{}\n"
    # whichever set is in place reads whole through its index
    back = tmp_path / "back.pth"
    run([ckpt_bin, "convert", str(out / "model.safetensors.index.json"), str(back), "-q"])
    loaded = torch.load(back)
    assert all(torch.equal(loaded[k], v) for k, v in sd.items())
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith("out.")]
    assert left, "the crash should leave its temporary directory"
    run([ckpt_bin, "convert", str(src), str(out), "--key", "model", "--max-shard-size", "5KB",
         "-q"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out.")] == []
