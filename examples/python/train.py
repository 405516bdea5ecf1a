"""The seed's example through the ckpt package: train a small Net with PyTorch and
keep its checkpoints with ckpt.Manager.

Every epoch saves the whole training state (model, optimizer, scheduler, AMP
scaler, epoch, metrics, versions) as last.pth; best.pth gets the weights when
val_loss improves. Each save is crash-safe: a kill at any moment leaves the
last good files whole. A rerun resumes from the newest checkpoint that
verifies ("Resuming at epoch K") and ends with the weights of a run that was
never interrupted, bit for bit.

Usage:
    python3 examples/python/train.py OUTDIR [--epochs N] [--kill-at K]
                                            [--record-best FILE]

    --epochs N          train epochs 0..N-1 (default 5)
    --kill-at K         SIGKILL this process half way through epoch K, after
                        epochs 0..K-1 are saved (what a crash or a preempted
                        job does); a rerun prints "Resuming at epoch K"
    --record-best FILE  whenever best.pth is saved, also write the saved
                        model's outputs on a fixed batch (numpy .npy), so that
                        a later load of best.pth can be checked against them

Then, for deployment:
    model = Net(); model.load_state_dict(ckpt.load("OUTDIR/best.pth"), strict=True)
"""
import argparse
import math
import os
import signal

import numpy as np
import torch
import torch.nn as nn

import ckpt


class Net(nn.Module):
    """The seed's model: Linear(32, 64), ReLU, Linear(64, 10)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def data(n, seed):
    """The seed's synthetic task: x ~ N(0, 1), y = 0.1 * x @ w for a fixed w."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    w = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    return x, x @ w * 0.1


def probe():
    """A fixed batch whose outputs identify the weights: x[i][j] = sin(i * 32 + j)."""
    return torch.sin(torch.arange(128, dtype=torch.float64)).float().reshape(4, 32)


def save_array(path, array):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kill-at", type=int, default=None, metavar="K")
    ap.add_argument("--record-best", default=None, metavar="FILE")
    a = ap.parse_args()

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    # last.pth every epoch, best.pth (state["model"]) when val_loss improves,
    # and the two best epochs as numbered files; the directory is locked
    # while the manager is open
    with ckpt.Manager(a.outdir, monitor="val_loss", mode="min", save_top_k=2,
                      save_last=True) as manager:
        train(a, manager, model, opt, sched, scaler)
        print(f"last: {manager.last_path}\nbest: {manager.best_path}")


def train(a, manager, model, opt, sched, scaler):
    xt, yt = data(256, 1)
    xv, yv = data(64, 2)
    first = 0
    state = manager.resume()  # the newest checkpoint whose CRCs all verify, or None
    if state is not None:
        model.load_state_dict(state["model"], strict=True)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        first = state["epoch"] + 1
        print(f"Resuming at epoch {first}", flush=True)
    del state

    for epoch in range(first, a.epochs):
        model.train()
        for i in range(0, len(xt), 32):
            if epoch == a.kill_at and i == len(xt) // 2:
                print(f"killed in epoch {epoch}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xt[i:i + 32]), yt[i:i + 32])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            train_loss = nn.functional.mse_loss(model(xt), yt).item()
            val_loss = nn.functional.mse_loss(model(xv), yv).item()
        manager.save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "metrics": {"train_loss": train_loss, "val_loss": val_loss},
            # str(): torch.__version__ is a TorchVersion, outside the allow-list
            "versions": {"torch": str(torch.__version__), "ckpt": ckpt.__version__},
        }, step=epoch, metrics={"val_loss": val_loss, "train_loss": train_loss})
        improved = not math.isnan(val_loss) and _is_best(manager, epoch)
        if improved and a.record_best:
            with torch.no_grad():
                save_array(a.record_best, model(probe()).numpy())
        print(f"epoch {epoch}: train_loss {train_loss:.6f} val_loss {val_loss:.6f}"
              f"{' (best)' if improved else ''}", flush=True)


def _is_best(manager, epoch):
    """Whether the save of this epoch became best.pth (the manager's listing says
    which step each file holds)."""
    return any(c.best and c.step == epoch for c in manager.checkpoints)


if __name__ == "__main__":
    main()
