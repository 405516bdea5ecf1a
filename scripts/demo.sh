#!/bin/sh
# The tool at work: PyTorch trains the seed's example model and keeps
# last.pth / best.pth; ckpt then reads, checks and explains them without Python.
set -eu
CKPT=build/ckpt
DIR=build/demo
CORPUS=../shared/corpus
mkdir -p "$DIR"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    say "PyTorch trains the seed's Net and saves last.pth (resume) and best.pth (weights)"
    /usr/bin/python3 examples/seed_train.py "$DIR" 3
    /usr/bin/python3 -c 'import torch; torch.save(torch.load("'"$DIR"'/best.pth"), "'"$DIR"'/best_legacy.pth", _use_new_zipfile_serialization=False)'
else
    say "PyTorch is not installed: using checkpoints from the shared corpus"
    cp "$CORPUS/benign/burn/src/pytorch/tests/reader/test_data/checkpoint.pt" "$DIR/last.pth"
    cp "$CORPUS/benign/burn/pytorch-tests/tests/linear/linear.pt" "$DIR/best.pth"
    cp "$CORPUS/benign/Pickle.jl/linear_state.bin" "$DIR/best_legacy.pth"
fi

say "ckpt inspect best.pth: format, tree, tensor table, totals"
$CKPT inspect "$DIR/best.pth"

say "ckpt inspect last.pth: the whole training checkpoint, read without running pickle code"
$CKPT inspect "$DIR/last.pth"

say "ckpt inspect --json (first lines), for pipelines"
$CKPT inspect --json "$DIR/best.pth" | head -n 20

say "ckpt inspect of the same weights in the legacy (pre-1.6) format"
$CKPT inspect "$DIR/best_legacy.pth" | head -n 12

say "ckpt verify: structure, every CRC32, every tensor inside its storage"
$CKPT verify "$DIR/best.pth" "$DIR/last.pth" "$DIR/best_legacy.pth"

say "a flipped byte in a tensor record: verify names the record (exit 1)"
cp "$DIR/best.pth" "$DIR/corrupt.pth"
size=$(wc -c < "$DIR/best.pth")
printf '\377' | dd of="$DIR/corrupt.pth" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
$CKPT verify "$DIR/corrupt.pth" || echo "(exit $?)"

say "ckpt scan: would torch.load(weights_only=True) load them without running code?"
$CKPT scan "$DIR/best.pth" "$DIR/last.pth" "$DIR/best_legacy.pth" || echo "(exit $?)"

if [ -f "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" ]; then
    say "a checkpoint whose pickle calls posix.system: scan explains it (exit 1)"
    $CKPT scan "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" || echo "(exit $?)"
    say "... and inspect refuses it, nothing runs (exit 2)"
    $CKPT inspect "$CORPUS/malicious/modelscan/unsafe_zip_pytorch.pt" || echo "(exit $?)"
fi

say "ckpt convert --key model: the weights of the training checkpoint, as a file torch.load reads"
$CKPT convert "$DIR/last.pth" "$DIR/weights.pth" --key model
$CKPT diff "$DIR/weights.pth" "$DIR/best.pth" && echo "(exit 0: the last epoch was the best one)" || echo "(exit $?)"

say "ckpt convert to safetensors (zero pickle), also in bfloat16"
$CKPT convert "$DIR/best.pth" "$DIR/best.safetensors"
$CKPT convert "$DIR/best.pth" "$DIR/best.bf16.safetensors" --dtype bfloat16
$CKPT inspect "$DIR/best.bf16.safetensors" | tail -n 8

say "ckpt diff: did the conversions change anything?"
$CKPT diff "$DIR/best.pth" "$DIR/best.safetensors" && echo "(exit 0: the same tensors)"
$CKPT diff "$DIR/best.pth" "$DIR/best.bf16.safetensors" || echo "(exit $?)"
$CKPT diff --atol 0.01 "$DIR/best.pth" "$DIR/best.bf16.safetensors" || echo "(exit $?: the dtypes differ, the values agree within --atol 0.01)"

if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
    say "PyTorch loads what ckpt wrote"
    /usr/bin/python3 - "$DIR" <<'PY'
import sys, torch
d = sys.argv[1]
w = torch.load(f"{d}/weights.pth", weights_only=True)
print("weights.pth, weights_only=True:", {k: tuple(v.shape) for k, v in w.items()})
PY
fi
if [ -f "$CORPUS/benign/SafeTensors.jl/non_sharded/model.with_metadata.safetensors" ]; then
    say "safetensors with __metadata__ (aligned tensors are read zero-copy)"
    $CKPT inspect "$CORPUS/benign/SafeTensors.jl/non_sharded/model.with_metadata.safetensors" | head -n 16
fi
