"""examples/python/train.py: the seed's training run (examples/seed_train.py) with
its checkpoints kept by ckpt.Manager, killed half way and resumed.

  (a) a run killed with SIGKILL in epoch 3 and rerun prints "Resuming at epoch 3",
      trains epochs 3 and 4, and ends with the checkpoints of a run never
      interrupted, their tensors bit for bit (last.pth's model, optimizer, scheduler;
      best.pth), and the same files kept with the same metrics;
  (b) ckpt.load(best.pth) into a fresh Net (load_state_dict(strict=True)) predicts
      exactly what the model that was saved predicted in the training process,
      and what the Net loaded with torch.load(weights_only=True) predicts;
  (c) the weights are the seed's: examples/seed_train.py with torch.save ends with
      the same best.pth.

The package runs in child processes (ckptpy.py says how it is found).
"""
import re

import pytest

import ckptpy

TRAIN = ckptpy.SOURCE_DIR / "examples" / "python" / "train.py"
SEED = ckptpy.SOURCE_DIR / "examples" / "seed_train.py"
EPOCH_LINE = re.compile(r"epoch (\d+): train_loss (\S+) val_loss (\S+)( \(best\))?")
EPOCHS = 5
KILL_AT = 3


def parse(out):
    epochs, resumed, killed = [], None, None
    for line in out.splitlines():
        m = EPOCH_LINE.fullmatch(line)
        if m:
            epochs.append(int(m.group(1)))
        elif line.startswith("Resuming at epoch "):
            assert resumed is None, out
            resumed = int(line.split()[3])
        elif line.startswith("killed in epoch "):
            killed = int(line.split()[3])
        elif not line.startswith(("last: ", "best: ")):
            pytest.fail(f"unexpected line from train.py: {line!r}\n{out}")
    return epochs, resumed, killed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    ckptpy.require()
    d = tmp_path_factory.mktemp("train")
    whole, killed = d / "whole", d / "killed"
    p = ckptpy.run([TRAIN, whole, "--epochs", EPOCHS, "--record-best", d / "whole.npy"])
    assert parse(p.stdout) == (list(range(EPOCHS)), None, None), p.stdout

    p = ckptpy.run([TRAIN, killed, "--epochs", EPOCHS, "--kill-at", KILL_AT,
                    "--record-best", d / "killed.npy"], check=False)
    assert p.returncode == -9, f"rc {p.returncode}\n{p.stdout}{p.stderr}"
    assert parse(p.stdout) == (list(range(KILL_AT)), None, KILL_AT), p.stdout
    p = ckptpy.run([TRAIN, killed, "--epochs", EPOCHS, "--record-best", d / "killed.npy"])
    assert p.stdout.splitlines()[0] == f"Resuming at epoch {KILL_AT}", p.stdout
    assert parse(p.stdout) == (list(range(KILL_AT, EPOCHS)), KILL_AT, None), p.stdout
    return d


COMPARE = r"""
import importlib.util, json, sys
import numpy as np, torch
import ckpt

spec = importlib.util.spec_from_file_location("train", sys.argv[1])
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
a, b = sys.argv[2], sys.argv[3]


def same(x, y, path="root"):
    assert type(x) is type(y) or (torch.is_tensor(x) and torch.is_tensor(y)), \
        (path, type(x), type(y))
    if torch.is_tensor(x):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert torch.equal(x, y), path
    elif isinstance(x, dict):
        assert list(x) == list(y), (path, list(x), list(y))
        for k in x:
            same(x[k], y[k], f"{path}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            same(u, v, f"{path}[{i}]")
    else:
        assert x == y, (path, x, y)


la, lb = ckpt.load(f"{a}/last.pth"), ckpt.load(f"{b}/last.pth")
assert la["epoch"] == lb["epoch"] == int(sys.argv[4]) - 1
for k in ("model", "optimizer", "scheduler", "scaler", "epoch", "metrics"):
    same(la[k], lb[k], k)
same(ckpt.load(f"{a}/best.pth"), ckpt.load(f"{b}/best.pth"), "best")

out = {}
for name, d in (("whole", a), ("killed", b)):
    net = train.Net()
    net.load_state_dict(ckpt.load(f"{d}/best.pth"), strict=True)
    ref = train.Net()
    ref.load_state_dict(torch.load(f"{d}/best.pth", weights_only=True), strict=True)
    net.eval(), ref.eval()
    with torch.no_grad():
        y, y_ref = net(train.probe()).numpy(), ref(train.probe()).numpy()
    recorded = np.load(f"{d}.npy")
    assert np.array_equal(y, recorded), (y, recorded)
    assert np.array_equal(y, y_ref)
    out[name] = y.tobytes().hex()
assert out["whole"] == out["killed"]
print(json.dumps({"ok": True, "keys": sorted(la)}))
"""


def test_killed_run_resumes_to_the_same_files(runs):
    r = ckptpy.run_code(COMPARE, TRAIN, runs / "whole", runs / "killed", EPOCHS)
    assert r["keys"] == ["epoch", "metrics", "model", "optimizer", "scaler", "scheduler",
                         "versions"]


SEED_BEST = r"""
import json, sys
import torch
import ckpt
ours = ckpt.load(sys.argv[1])
seed = torch.load(sys.argv[2], weights_only=True)
assert list(ours) == list(seed) == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
print(json.dumps({"equal": all(torch.equal(ours[k], seed[k]) for k in seed)}))
"""


def test_weights_are_the_seeds(runs):
    seed_dir = runs / "seed"
    ckptpy.run([SEED, seed_dir, EPOCHS])
    r = ckptpy.run_code(SEED_BEST, runs / "whole" / "best.pth", seed_dir / "best.pth")
    assert r["equal"]


def test_manager_listing(runs, ckpt_bin):
    """ckpt ls --json of both directories: last.pth and best.pth at the last epoch (every
    epoch improves here), and save_top_k=2 numbered files, the two best epochs."""
    import json
    import subprocess

    listings = []
    for d in (runs / "whole", runs / "killed"):
        proc = subprocess.run([ckpt_bin, "ls", "--json", str(d)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        ls = json.loads(proc.stdout)
        assert (ls["monitor"], ls["mode"]) == ("val_loss", "min")
        rows = {c["file"]: c for c in ls["checkpoints"]}
        assert sorted(rows) == ["best.pth", "last.pth", f"step-{EPOCHS - 2:08d}.pth",
                                f"step-{EPOCHS - 1:08d}.pth"], rows
        assert rows["last.pth"]["step"] == rows["best.pth"]["step"] == EPOCHS - 1
        assert rows["last.pth"]["content"] == "checkpoint"
        assert rows["best.pth"]["content"] == "weights" and rows["best.pth"]["best"]
        listings.append({f: (c["step"], c["metrics"]) for f, c in rows.items()})
    # the same saves with the same metrics (not the same sizes: the resumed run's
    # state dicts hold keys read back from a file, equal strings that are not one
    # object, which the pickle then does not share)
    assert listings[0] == listings[1]
