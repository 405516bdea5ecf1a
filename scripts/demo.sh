#!/bin/sh
# The tool at work on the seed's example: build/mlp (examples/mlp/mlp.c, the
# seed's Net in C) trains, stops and resumes through the checkpoint manager,
# keeping last.pth / best.pth in PyTorch's layout; ckpt then lists, reads,
# checks, converts and explains them without Python; PyTorch, when it is
# installed, loads them.
set -eu
CKPT=${CKPT:-build/ckpt}
MLP=${MLP:-build/mlp}
DIR=${DEMO_DIR:-build/demo}
CORPUS=${CKPT_CORPUS:-../shared/corpus}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
has_torch() { /usr/bin/python3 -c 'import torch' 2>/dev/null; }

rm -rf "$DIR"

say "build/mlp trains the seed's Net in C for 3 epochs: last.pth every epoch, best.pth when val_loss improves"
$MLP train --dir "$DIR" --epochs 3

say "... then on to 5 epochs: model, AdamW state and epoch come back from last.pth"
$MLP train --dir "$DIR" --epochs 5

say "ckpt ls: the manager's view of the directory (manifest.json)"
$CKPT ls "$DIR"

say "ckpt inspect best.pth: format, tree, tensor table, totals"
$CKPT inspect "$DIR/best.pth"

say "ckpt inspect last.pth: the whole training checkpoint, read without running pickle code"
$CKPT inspect "$DIR/last.pth"

say "ckpt inspect --json (first lines), for pipelines"
$CKPT inspect --json "$DIR/best.pth" | head -n 20

say "ckpt verify: structure, every CRC32, every tensor inside its storage"
$CKPT verify "$DIR/best.pth" "$DIR/last.pth"

say "a flipped byte in a tensor record: verify names the record (exit 1)"
cp "$DIR/best.pth" "$DIR/corrupt.pth"
size=$(wc -c < "$DIR/best.pth")
printf '\377' | dd of="$DIR/corrupt.pth" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
$CKPT verify "$DIR/corrupt.pth" || echo "(exit $?)"

say "ckpt scan: would torch.load(weights_only=True) load them without running code?"
$CKPT scan "$DIR/best.pth" "$DIR/last.pth" || echo "(exit $?)"

if [ -f "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" ]; then
    say "a checkpoint whose pickle calls posix.system: scan explains it (exit 1)"
    $CKPT scan "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" || echo "(exit $?)"
    say "... and inspect refuses it, nothing runs (exit 2)"
    $CKPT inspect "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" || echo "(exit $?)"
fi

say "ckpt convert to safetensors (zero pickle), also in bfloat16"
$CKPT convert "$DIR/best.pth" "$DIR/best.safetensors"
$CKPT convert "$DIR/best.pth" "$DIR/best.bf16.safetensors" --dtype bfloat16
$CKPT inspect "$DIR/best.bf16.safetensors" | tail -n 8

say "ckpt diff: did the conversions change anything?"
$CKPT diff "$DIR/best.pth" "$DIR/best.safetensors" && echo "(exit 0: the same tensors)"
$CKPT diff "$DIR/best.pth" "$DIR/best.bf16.safetensors" || echo "(exit $?)"
$CKPT diff --atol 0.01 "$DIR/best.pth" "$DIR/best.bf16.safetensors" || echo "(exit $?: the dtypes differ, the values agree within --atol 0.01)"

say "ckpt convert --key model: the weights of the training checkpoint, as a file torch.load reads"
$CKPT convert "$DIR/last.pth" "$DIR/weights.pth" --key model
$CKPT diff "$DIR/weights.pth" "$DIR/best.pth" && echo "(exit 0: the last epoch was the best one)" || echo "(exit $?)"

say "build/mlp predict: best.pth's outputs for a fixed batch (weights borrowed from the file)"
$MLP predict --weights "$DIR/best.pth" | tee "$DIR/predict.txt"

say "... the same from best.safetensors"
$MLP predict --weights "$DIR/best.safetensors" > "$DIR/predict.safetensors.txt"
cat "$DIR/predict.safetensors.txt"
if cmp -s "$DIR/predict.txt" "$DIR/predict.safetensors.txt"; then
    echo "(the same numbers)"
else
    echo "(the numbers differ)"
fi

say "ckpt match: would a DataParallel/DDP checkpoint (module.* names) load into the Net?"
$CKPT convert "$DIR/best.pth" "$DIR/ddp.pth" --add-prefix module. -q
$CKPT match "$DIR/ddp.pth" --model "$DIR/best.pth" --name Net || echo "(exit $?: PyTorch's own report, every problem at once)"
$CKPT match "$DIR/ddp.pth" --model "$DIR/best.pth" --name Net --strip-prefix module.
$CKPT match "$DIR/best.bf16.safetensors" --model "$DIR/best.pth" --name Net

if has_torch; then
    say "PyTorch loads what C wrote: best.pth into the seed's Net, last.pth's optimizer into AdamW"
    /usr/bin/python3 - "$DIR" <<'PY'
import sys

import numpy as np
import torch
import torch.nn as nn

d = sys.argv[1]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


model = Net()
model.load_state_dict(torch.load(f"{d}/best.pth", weights_only=True), strict=True)
print("best.pth: torch.load(weights_only=True), load_state_dict(strict=True): ok")
x = torch.from_numpy(np.sin(np.arange(128, dtype=np.float64)).astype(np.float32).reshape(4, 32))
with torch.no_grad():
    y = model(x).numpy()
for row in y:
    print(" ".join(f"{v:.9g}" for v in row))
c = np.loadtxt(f"{d}/predict.txt", dtype=np.float32)
rel = np.max(np.abs(y - c) / np.maximum(np.abs(c), 1e-30))
print(f"largest relative difference from build/mlp predict: {rel:.3g}")

# torch 1.x's weights_only reader has no floats (BINFLOAT): lr, metrics
torch2 = int(torch.__version__.split(".")[0]) >= 2
ck = torch.load(f"{d}/last.pth", weights_only=torch2)
if not torch2:
    print(f"last.pth: torch {torch.__version__}'s weights_only reader refuses floats;"
          " loaded with weights_only=False, as ckpt scan found it safe")
model.load_state_dict(ck["model"], strict=True)
opt = torch.optim.AdamW(model.parameters())
opt.load_state_dict(ck["optimizer"])
step = opt.state[next(iter(model.parameters()))]["step"]
print(f"last.pth: epoch {ck['epoch']}, metrics {ck['metrics']}, versions {ck['versions']}")
print(f"AdamW.load_state_dict: ok, step {int(step)} (8 batches x {ck['epoch'] + 1} epochs),"
      f" lr {opt.param_groups[0]['lr']}")

w = torch.load(f"{d}/weights.pth", weights_only=True)
print("weights.pth, weights_only=True:", {k: tuple(v.shape) for k, v in w.items()})

torch.save(torch.load(f"{d}/best.pth", weights_only=True), f"{d}/best_legacy.pth",
           _use_new_zipfile_serialization=False)
PY

    say "ckpt inspect of the same weights in the legacy (pre-1.6) format, which PyTorch just wrote"
    $CKPT inspect "$DIR/best_legacy.pth" | head -n 12
    $CKPT verify "$DIR/best_legacy.pth"
    $MLP predict --weights "$DIR/best_legacy.pth" > "$DIR/predict.legacy.txt"
    if cmp -s "$DIR/predict.txt" "$DIR/predict.legacy.txt"; then
        echo "(build/mlp predict gives the same numbers from it)"
    else
        echo "(build/mlp predict gives other numbers from it)"
    fi
else
    say "PyTorch is not installed: skipping the steps that load the files with torch"
fi

# The Python package of this tree over build/'s library (an installed one
# serves as well: python3 -m venv --system-site-packages v &&
# v/bin/pip install --no-build-isolation ./python).
py_ckpt() { PYTHONPATH=python${PYTHONPATH:+:$PYTHONPATH} CKPT_LIBRARY=${CKPT_LIBRARY:-$(dirname "$CKPT")/libckpt.so} /usr/bin/python3 "$@"; }
if has_torch && [ -d python/ckpt ] && py_ckpt -c 'import ckpt' 2>/dev/null; then
    PYDIR="$DIR/python"
    say "examples/python/train.py: the seed's Net in PyTorch, checkpoints kept by ckpt.Manager; killed (SIGKILL) half way through epoch 2"
    py_ckpt examples/python/train.py "$PYDIR" --epochs 4 --kill-at 2 || echo "(exit $?: killed)"

    say "... rerun: it resumes from the newest checkpoint that verifies"
    py_ckpt examples/python/train.py "$PYDIR" --epochs 4

    say "ckpt ls of the directory the package's manager keeps"
    $CKPT ls "$PYDIR"

    say "ckpt.load(best.pth) into a fresh Net, load_state_dict(strict=True), as torch.load would"
    py_ckpt - "$PYDIR" <<'PY'
import sys

import torch

import ckpt

sys.path.insert(0, "examples/python")
from train import Net, probe  # noqa: E402

d = sys.argv[1]
net, ref = Net(), Net()
net.load_state_dict(ckpt.load(f"{d}/best.pth"), strict=True)
ref.load_state_dict(torch.load(f"{d}/best.pth", weights_only=True), strict=True)
with torch.no_grad():
    y, y_ref = net(probe()), ref(probe())
print(f"outputs on a fixed batch: {'the same as' if torch.equal(y, y_ref) else 'NOT the same as'}"
      " torch.load's")
state = ckpt.load(f"{d}/last.pth")
print(f"last.pth: epoch {state['epoch']}, metrics {state['metrics']}, versions {state['versions']}")
PY
elif has_torch; then
    say "the Python package is not importable (python/ckpt over $(dirname "$CKPT")/libckpt.so): skipping examples/python/train.py"
fi

if [ -f "$CORPUS/benign/SafeTensors.jl/non_sharded/model.with_metadata.safetensors" ]; then
    say "safetensors with __metadata__ (aligned tensors are read zero-copy)"
    $CKPT inspect "$CORPUS/benign/SafeTensors.jl/non_sharded/model.with_metadata.safetensors" | head -n 16
fi

say "done: the files are in $DIR"
