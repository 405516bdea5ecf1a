"""The seed's example in PyTorch: train a small Net and keep last.pth and best.pth.

last.pth  - everything needed to resume: model, optimizer, scheduler, AMP scaler,
            epoch, metrics, versions.
best.pth  - weights only (a state_dict), for deployment.

Usage: python3 examples/seed_train.py OUTDIR [EPOCHS]
"""
import math
import os
import sys

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g)
    w = torch.randn(32, 10, generator=torch.Generator().manual_seed(0))
    return x, x @ w * 0.1


def atomic_save(obj, path):
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    out = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    scaler = torch.cuda.amp.GradScaler(enabled=False)
    xt, yt = data(256, 1)
    xv, yv = data(64, 2)
    best = math.inf
    for epoch in range(epochs):
        model.train()
        for i in range(0, len(xt), 32):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xt[i:i + 32]), yt[i:i + 32])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(xv), yv).item()
        print(f"epoch {epoch}: val_loss {val_loss:.6f}")
        atomic_save({
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch,
            "metrics": {"val_loss": val_loss},
            # str(): torch.__version__ pickles as TorchVersion, which
            # torch.load(weights_only=True) refuses from 2.6 on
            "versions": {"torch": str(torch.__version__)},
        }, os.path.join(out, "last.pth"))
        if val_loss < best:
            best = val_loss
            atomic_save(model.state_dict(), os.path.join(out, "best.pth"))


if __name__ == "__main__":
    main()
