"""The README's writing example: a checkpoint built from C memory loads in torch."""
import os
import subprocess

import pytest
import torch


def test_write_checkpoint_example(tmp_path):
    exe = os.environ.get("CKPT_WRITE_EXAMPLE")
    if not exe:
        pytest.fail("CKPT_WRITE_EXAMPLE is not set (run through ctest)")
    out = tmp_path / "from_c.pth"
    proc = subprocess.run([exe, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    ck = torch.load(out)
    assert ck["epoch"] == 7 and ck["metrics"] == {"val_loss": 0.125}
    sd = ck["model"]
    assert list(sd) == ["fc.weight", "fc.bias"]
    assert torch.equal(sd["fc.weight"], torch.tensor([[1., 2., 3.], [4., 5., 6.]]))
    assert torch.equal(sd["fc.bias"], torch.tensor([0.5, -0.5]))
    # the state dict loads into the matching module, strictly
    fc = torch.nn.Linear(3, 2)
    fc.load_state_dict({k[3:]: v for k, v in sd.items()}, strict=True)
    assert torch.equal(fc(torch.ones(1, 3)), torch.tensor([[6.5, 14.5]]))
    # the model part alone is weights-only loadable even by torch 1.13
    # (whose safe reader lacks BINFLOAT, used by val_loss)
    weights = tmp_path / "weights.pth"
    bin_ = os.environ["CKPT_BIN"]
    subprocess.run([bin_, "convert", str(out), str(weights), "--key", "model"], check=True)
    assert list(torch.load(weights, weights_only=True)) == ["fc.weight", "fc.bias"]
