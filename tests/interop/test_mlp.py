"""examples/mlp against the real PyTorch: the seed's training run in C (build/mlp) and
in PyTorch hand checkpoints to each other.

mlp trains the seed's Net (nn.Sequential `net`: Linear(32, 64), ReLU, Linear(64, 10))
with AdamW(lr=1e-3) on a fixed dataset (`mlp data`), batches of 32 in order, MSE loss,
and keeps DIR/last.pth ({"model", "optimizer", "epoch", "metrics", "versions"}) and
DIR/best.pth (weights) through the checkpoint manager. Here:

  (a) PyTorch loads best.pth into the seed's Net and predicts what `mlp predict` does;
  (b) PyTorch resumes mlp's last.pth (model and AdamW) and trains one more epoch: the
      same weights as mlp resuming it (ckpt's AdamW against torch's);
  (c) mlp resumes a last.pth PyTorch wrote (with the seed's scheduler and scaler
      entries): the same weights as PyTorch going on;
  (d) a run resumed half way ends bit-identical to an uninterrupted one;
  (e) the files: what they hold, in PyTorch's layout, loadable weights-only.

torch 1.13's weights_only reader lacks BINFLOAT, so whole training checkpoints (which
hold floats) load with weights_only=True only on torch 2; on 1.13 they are read with
an unpickler that resolves nothing outside the weights_only allow-list, and `ckpt scan`
vouches for them. best.pth (tensors only) loads with weights_only=True everywhere.

CKPT_MLP names the binary (default build/mlp), CKPT_BIN the ckpt CLI.
"""
import collections
import importlib.util
import json
import os
import pathlib
import pickle
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("CKPT_SOURCE_DIR", HERE.parent.parent)).resolve()
TORCH2 = int(torch.__version__.split(".")[0]) >= 2
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:")
NAMES = ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
BATCHES_PER_EPOCH = 256 // 32
EPOCH_LINE = re.compile(r"epoch (\d+): train_loss (\S+) val_loss (\S+)( \(best\))?")


# ---- running mlp ------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp():
    value = os.environ.get("CKPT_MLP")
    path = pathlib.Path(value) if value else SOURCE_DIR / "build" / "mlp"
    if not path.is_file():
        pytest.fail(f"mlp binary not found at {path} (set CKPT_MLP or build the mlp target)")
    return str(path)


def run(mlp, *args):
    proc = subprocess.run([mlp, *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    for mark in SANITIZER_MARKS:
        assert mark not in proc.stderr, proc.stderr
    assert proc.returncode == 0, f"mlp {' '.join(map(str, args))}: rc {proc.returncode}\n" \
                                 f"{proc.stdout}{proc.stderr}"
    return proc.stdout


def train(mlp, d, epochs):
    """Runs `mlp train`; returns [(epoch, train_loss, val_loss, best)] and the resume line."""
    out = run(mlp, "train", "--dir", d, "--epochs", epochs)
    epochs_seen, resumed = [], None
    for line in out.splitlines():
        m = EPOCH_LINE.fullmatch(line)
        if m:
            epochs_seen.append((int(m.group(1)), float(m.group(2)), float(m.group(3)),
                                bool(m.group(4))))
        elif line.startswith("Resuming at epoch "):
            assert resumed is None, out
            resumed = int(line.split()[3])
        else:
            pytest.fail(f"unexpected line from mlp train: {line!r}\n{out}")
    return epochs_seen, resumed


# ---- the seed's model, data and training step ----------------------------------------

def seed_module():
    spec = importlib.util.spec_from_file_location("seed_train",
                                                  SOURCE_DIR / "examples" / "seed_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SEED = seed_module()


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e)
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype="<f4").reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


@pytest.fixture(scope="module")
def data(mlp, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.safetensors"
    run(mlp, "data", "--out", path)
    d = read_safetensors(path)
    assert {k: tuple(v.shape) for k, v in d.items()} == {
        "train.x": (256, 32), "train.y": (256, 10), "val.x": (64, 32), "val.y": (64, 10)}
    return d


def train_epoch_torch(model, opt, data):
    """One epoch as mlp trains it: batches of 32 in order, MSE (mean), AdamW."""
    model.train()
    xt, yt = data["train.x"], data["train.y"]
    for i in range(0, len(xt), 32):
        opt.zero_grad()
        loss = F.mse_loss(model(xt[i:i + 32]), yt[i:i + 32])
        loss.backward()
        opt.step()


def val_loss_torch(model, data):
    model.eval()
    with torch.no_grad():
        return F.mse_loss(model(data["val.x"]), data["val.y"]).item()


def net_from(state_dict):
    net = SEED.Net()
    net.load_state_dict(state_dict, strict=True)
    return net


# ---- loading what mlp wrote ---------------------------------------------------------

class _AllowListUnpickler(pickle.Unpickler):
    """Resolves only what torch's weights_only reader allows (data-only constructors)."""

    def find_class(self, module, name):
        full = f"{module}.{name}"
        allowed = {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
            "torch.Size": torch.Size,
        }
        if full in allowed:
            return allowed[full]
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"outside the weights_only allow-list: {full}")


class _AllowListPickleModule:
    Unpickler = _AllowListUnpickler

    @staticmethod
    def load(f, **kw):
        return _AllowListUnpickler(f, **kw).load()


def load_full(path):
    """A whole training checkpoint, loaded as weights_only=True would (see the top)."""
    if TORCH2:
        return torch.load(path, weights_only=True)
    return torch.load(path, pickle_module=_AllowListPickleModule)


def load_weights(path):
    return torch.load(path, weights_only=True)


def assert_scan_safe(path):
    ckpt_bin = os.environ.get("CKPT_BIN") or str(SOURCE_DIR / "build" / "ckpt")
    if not os.path.isfile(ckpt_bin):
        pytest.fail(f"ckpt binary not found at {ckpt_bin} (set CKPT_BIN)")
    proc = subprocess.run([ckpt_bin, "scan", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == f"{path}: safe", \
        proc.stdout + proc.stderr


def assert_weights_close(got, want, rtol, atol):
    assert list(got) == list(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


# ---- shared runs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run2(mlp, tmp_path_factory):
    """A directory after `mlp train --epochs 2`, with what mlp printed."""
    d = tmp_path_factory.mktemp("run2")
    lines, resumed = train(mlp, d, 2)
    assert resumed is None
    assert [e[0] for e in lines] == [0, 1]
    return d, lines


@pytest.fixture(scope="module")
def run4(mlp, tmp_path_factory):
    """An uninterrupted 4-epoch run."""
    d = tmp_path_factory.mktemp("run4")
    lines, resumed = train(mlp, d, 4)
    assert resumed is None
    assert [e[0] for e in lines] == [0, 1, 2, 3]
    return d, lines


# ---- the data ---------------------------------------------------------------------------

def test_data_is_one_linear_map(data):
    """y = x @ W * 0.1 row for row, one W for training and validation: x and y line up."""
    xt, yt = data["train.x"].double(), data["train.y"].double()
    w = torch.linalg.lstsq(xt, yt).solution
    assert float((xt @ w - yt).abs().max()) < 1e-5
    xv, yv = data["val.x"].double(), data["val.y"].double()
    assert float((xv @ w - yv).abs().max()) < 1e-5
    assert float(yt.std()) > 0.1 and float(data["train.x"].std()) > 0.5  # not degenerate
    assert not torch.equal(data["train.x"][:64], data["val.x"])


# ---- (a) best.pth in PyTorch ----------------------------------------------------------------

def test_a_torch_predicts_like_mlp(mlp, run4):
    d, _ = run4
    best = d / "best.pth"
    sd = load_weights(best)
    net = net_from(sd)
    net.eval()
    x = torch.from_numpy(np.sin(np.arange(4 * 32, dtype=np.float64)).astype(np.float32))
    with torch.no_grad():
        want = net(x.reshape(4, 32))
    out = run(mlp, "predict", "--weights", best)
    rows = [[float(v) for v in line.split()] for line in out.splitlines()]
    assert len(rows) == 4 and all(len(r) == 10 for r in rows), out
    got = torch.tensor(rows, dtype=torch.float32)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # predicting from last.pth's state dict (the "model" entry) is the same program path
    last_out = run(mlp, "predict", "--weights", d / "last.pth")
    net_last = net_from(load_full(d / "last.pth")["model"])
    net_last.eval()
    with torch.no_grad():
        want_last = net_last(x.reshape(4, 32))
    got_last = torch.tensor([[float(v) for v in line.split()] for line in last_out.splitlines()])
    torch.testing.assert_close(got_last, want_last, rtol=1e-5, atol=1e-6)


# ---- (b) PyTorch resumes mlp's last.pth ----------------------------------------------------------

def test_b_torch_resumes_mlp_checkpoint(mlp, run2, data, tmp_path):
    src, _ = run2
    ck = load_full(src / "last.pth")
    assert ck["epoch"] == 1
    net = net_from(ck["model"])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt.load_state_dict(ck["optimizer"])
    for st in opt.state.values():
        assert float(st["step"]) == 2 * BATCHES_PER_EPOCH
    train_epoch_torch(net, opt, data)

    d = tmp_path / "resumed"
    shutil.copytree(src, d)
    lines, resumed = train(mlp, d, 3)
    assert resumed == 2
    assert [e[0] for e in lines] == [2]
    got = load_full(d / "last.pth")
    assert got["epoch"] == 2
    assert_weights_close(got["model"], net.state_dict(), rtol=1e-4, atol=1e-6)
    # the optimizers agree too: the same steps, close moments
    want_opt = opt.state_dict()
    assert sorted(got["optimizer"]["state"]) == sorted(want_opt["state"]) == [0, 1, 2, 3]
    for k, st in want_opt["state"].items():
        g = got["optimizer"]["state"][k]
        assert float(g["step"]) == float(st["step"]) == 3 * BATCHES_PER_EPOCH
        torch.testing.assert_close(g["exp_avg"], st["exp_avg"], rtol=1e-3, atol=1e-7)
        torch.testing.assert_close(g["exp_avg_sq"], st["exp_avg_sq"], rtol=1e-3, atol=1e-10)
    # mlp's printed val_loss is PyTorch's for those weights
    torch.testing.assert_close(lines[0][2], val_loss_torch(net, data), rtol=1e-4, atol=1e-7)


# ---- (c) mlp resumes a PyTorch-written last.pth ------------------------------------------------

def test_c_mlp_resumes_torch_checkpoint(mlp, data, tmp_path):
    torch.manual_seed(0)
    net = SEED.Net()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    val = None
    for _ in range(2):
        train_epoch_torch(net, opt, data)
        sched.step()
        val = val_loss_torch(net, data)
    d = tmp_path / "from_torch"
    d.mkdir()
    torch.save({
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": 1,
        "metrics": {"val_loss": val, "train_loss": val},
        "versions": {"torch": str(torch.__version__)},
    }, d / "last.pth")
    # the scheduler halved the learning rate after epoch 1: the file says 5e-4, and
    # the optimizer's hyperparameters come from the file
    assert opt.param_groups[0]["lr"] == 5e-4

    lines, resumed = train(mlp, d, 3)
    assert resumed == 2
    assert [e[0] for e in lines] == [2]

    train_epoch_torch(net, opt, data)  # epoch 2, in PyTorch
    got = load_full(d / "last.pth")
    assert got["epoch"] == 2
    assert_weights_close(got["model"], net.state_dict(), rtol=1e-4, atol=1e-6)
    assert got["optimizer"]["param_groups"][0]["lr"] == 5e-4
    for st in got["optimizer"]["state"].values():
        assert float(st["step"]) == 3 * BATCHES_PER_EPOCH
    torch.testing.assert_close(lines[0][2], val_loss_torch(net, data), rtol=1e-4, atol=1e-7)
    # the weights mlp saves go back into PyTorch, strictly
    net_from(load_weights(d / "best.pth"))


# ---- (d) resumed == uninterrupted -------------------------------------------------------------

def assert_tensors_identical(a, b, where):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_tensors_identical(a[k], b[k], f"{where}.{k}")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_d_resumed_equals_uninterrupted(mlp, run4, tmp_path):
    a, lines_a = run4
    b = tmp_path / "b"
    first, resumed = train(mlp, b, 2)
    assert resumed is None
    second, resumed = train(mlp, b, 4)
    assert resumed == 2
    assert first + second == lines_a  # the same losses, printed to the digit
    ck_a, ck_b = load_full(a / "last.pth"), load_full(b / "last.pth")
    assert ck_a["epoch"] == ck_b["epoch"] == 3
    assert_tensors_identical(ck_a["model"], ck_b["model"], "model")
    assert_tensors_identical(ck_a["optimizer"], ck_b["optimizer"], "optimizer")
    assert ck_a["metrics"] == ck_b["metrics"]
    assert_tensors_identical(load_weights(a / "best.pth"), load_weights(b / "best.pth"), "best")


# ---- (e) the files ------------------------------------------------------------------------------

def test_e_files(run4, data):
    d, lines = run4
    last, best = d / "last.pth", d / "best.pth"
    assert_scan_safe(last)
    assert_scan_safe(best)
    ck = load_full(last)
    assert list(ck) == ["model", "optimizer", "epoch", "metrics", "versions"]
    assert ck["epoch"] == 3
    assert list(ck["model"]) == NAMES
    assert isinstance(ck["model"], collections.OrderedDict)
    assert [tuple(t.shape) for t in ck["model"].values()] == [(64, 32), (64,), (10, 64), (10,)]
    assert all(t.dtype == torch.float32 for t in ck["model"].values())

    opt = ck["optimizer"]
    assert list(opt["state"]) == [0, 1, 2, 3]
    for k, name in enumerate(NAMES):
        st = opt["state"][k]
        assert set(st) == {"step", "exp_avg", "exp_avg_sq"}
        assert float(st["step"]) == 4 * BATCHES_PER_EPOCH
        assert st["exp_avg"].shape == ck["model"][name].shape
        assert st["exp_avg_sq"].shape == ck["model"][name].shape
        assert bool((st["exp_avg_sq"] >= 0).all()) and float(st["exp_avg_sq"].max()) > 0
    assert len(opt["param_groups"]) == 1
    g = opt["param_groups"][0]
    assert g["lr"] == 0.001
    assert tuple(g["betas"]) == (0.9, 0.999)
    assert g["eps"] == 1e-08
    assert g["weight_decay"] == 0.01
    assert g["amsgrad"] is False
    assert g["params"] == [0, 1, 2, 3]
    # PyTorch's AdamW takes the state dict as it is
    net = net_from(ck["model"])
    torch.optim.AdamW(net.parameters(), lr=1e-3).load_state_dict(opt)

    assert set(ck["metrics"]) == {"val_loss", "train_loss"}
    val = ck["metrics"]["val_loss"]
    assert isinstance(val, float)
    torch.testing.assert_close(val, val_loss_torch(net, data), rtol=1e-5, atol=0.0)
    assert lines[-1][2] == pytest.approx(val, abs=5e-7)  # printed with 6 decimals
    assert lines[-1][1] == pytest.approx(ck["metrics"]["train_loss"], abs=5e-7)
    v = ck["versions"]
    assert set(v) == {"ckpt", "format_version"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", v["ckpt"]) and v["format_version"] == 3

    sd = load_weights(best)
    assert list(sd) == NAMES
    # best.pth holds the weights of the epoch with the lowest val_loss
    best_epoch = min(lines, key=lambda e: e[2])[0]
    assert [e[0] for e in lines if e[3]][-1] == best_epoch
    if best_epoch == 3:
        assert_tensors_identical(sd, ck["model"], "best")
    torch.testing.assert_close(val_loss_torch(net_from(sd), data),
                               min(e[2] for e in lines), rtol=0, atol=5e-7)


# ---- (f) killed at any moment, resumed ----------------------------------------------------------

def test_f_killed_and_resumed_equals_uninterrupted(mlp, run4, tmp_path):
    """mlp writes each epoch's checkpoint in the background while the next epoch trains
    (ckpt_manager_save_async), and prints an epoch once its checkpoint is committed. A
    SIGKILL at any moment leaves a whole last.pth holding every printed epoch (and at
    most the one in flight besides), and the resumed run ends bit-identical to the
    uninterrupted one."""
    import random
    import signal
    import time
    a, lines_a = run4
    ck_a = load_full(a / "last.pth")
    rnd = random.Random(19)
    killed = 0
    for it in range(12):
        d = tmp_path / f"run{it}"
        proc = subprocess.Popen([mlp, "train", "--dir", str(d), "--epochs", "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rnd.uniform(0.0, 0.04))
        proc.kill()
        out, err = proc.communicate(timeout=60)
        for mark in SANITIZER_MARKS:
            assert mark not in err, err
        if proc.returncode == 0:
            continue  # it finished first
        assert proc.returncode == -signal.SIGKILL, err
        killed += 1
        printed = [int(m.group(1)) for m in map(EPOCH_LINE.fullmatch, out.splitlines()) if m]
        assert printed == list(range(len(printed))), out
        more = run(mlp, "train", "--dir", d, "--epochs", 4).splitlines()
        if more and more[0].startswith("Resuming at epoch "):
            resumed = int(more[0].split()[3])
            assert len(printed) <= resumed <= len(printed) + 1, (out, more)
            more = more[1:]
        else:
            assert printed == [], (out, more)
            resumed = 0
        if resumed == 4:
            assert more == ["Nothing to do: epochs 0 to 3 are done"], more
        else:
            got = [(int(m.group(1)), float(m.group(2)), float(m.group(3)), bool(m.group(4)))
                   for m in map(EPOCH_LINE.fullmatch, more)]
            assert [g[:3] for g in got] == [g[:3] for g in lines_a[resumed:]], (out, more)
        ck = load_full(d / "last.pth")
        assert ck["epoch"] == 3
        assert_tensors_identical(ck_a["model"], ck["model"], "model")
        assert_tensors_identical(ck_a["optimizer"], ck["optimizer"], "optimizer")
        assert ck_a["metrics"] == ck["metrics"]
        assert_tensors_identical(load_weights(a / "best.pth"), load_weights(d / "best.pth"),
                                 "best")
    assert killed, "every run finished before its kill"
