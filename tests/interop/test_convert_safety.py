"""`ckpt convert` where a first use goes wrong: signals, symbolic links and
modes, tied weights written to safetensors."""
import json
import os
import signal
import stat
import struct
import subprocess
import time

import pytest
import torch
from torch import nn

import safetensors_rules


def small_state_dict(path):
    sd = {"module.bn.weight": torch.ones(3), "module.bn.bias": torch.zeros(3),
          "module.fc.weight": torch.arange(6.0).reshape(2, 3)}
    torch.save(sd, path)
    return sd


def header_of(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n])


def temporaries(d):
    return sorted(p.name for p in d.iterdir() if ".tmp-" in p.name)


# ---- signals ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """A small file that converts into 2 GiB: one element repeated by a
    stride-0 view (the output takes --max-output-ratio)."""
    path = tmp_path_factory.mktemp("big") / "big.pth"
    torch.save({"w": torch.ones(1).expand(1 << 29)}, path)
    return path


def start_convert(ckpt_bin, src, out, *extra):
    return subprocess.Popen([ckpt_bin, "convert", str(src), str(out), "--no-fsync",
                             "--max-output-ratio", "1000000000", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_temporary(proc, d, min_bytes=1 << 20):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for name in temporaries(d):
            try:
                if (d / name).stat().st_size >= min_bytes:
                    return name
            except FileNotFoundError:
                pass
        assert proc.poll() is None, "convert ended before the test could signal it"
        time.sleep(0.002)
    pytest.fail("no temporary file appeared")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_removes_the_temporary(ckpt_bin, big_input, tmp_path, sig):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the previous file")
    proc = start_convert(ckpt_bin, big_input, out)
    wait_for_temporary(proc, tmp_path)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == -sig  # ended by the signal, as without a handler
    assert temporaries(tmp_path) == []
    assert out.read_bytes() == b"the previous file"


def test_sigkill_leaves_a_temporary_the_next_write_removes(ckpt_bin, big_input, tmp_path):
    out = tmp_path / "out.safetensors"
    proc = start_convert(ckpt_bin, big_input, out)
    left = wait_for_temporary(proc, tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert temporaries(tmp_path) == [left] and not out.exists()
    # a temporary of a live process, and names that are not ckpt's, stay
    live = f".other.pth.tmp-{os.getpid()}-1a2b"
    foreign = [".notes.tmp-123-xyz", "plain.tmp-1-1"]
    for name in [live, *foreign]:
        (tmp_path / name).write_bytes(b"x")
    src = tmp_path / "small.pth"
    small_state_dict(src)
    res = subprocess.run([ckpt_bin, "convert", str(src), str(tmp_path / "next.pth")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert res.returncode == 0, res.stderr
    assert temporaries(tmp_path) == sorted([live, *foreign])
    assert torch.load(tmp_path / "next.pth")["module.bn.weight"].tolist() == [1, 1, 1]


# ---- symbolic links and modes ------------------------------------------------------

def test_writes_through_a_symlink(tool, tmp_path):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    real = tmp_path / "store"
    real.mkdir()
    target = real / "model.pth"
    target.write_bytes(b"old")
    link = tmp_path / "model.pth"
    link.symlink_to("store/model.pth")  # relative, as ln -s makes it
    res = tool.run("convert", src, link)
    assert res.returncode == 0, res.describe()
    assert link.is_symlink() and os.readlink(link) == "store/model.pth"
    assert torch.load(target)["module.bn.weight"].tolist() == [1, 1, 1]
    assert temporaries(tmp_path) == [] and temporaries(real) == []
    # a link to a file not there yet makes the file, as cp does
    link2 = tmp_path / "new.pth"
    link2.symlink_to(real / "new.pth")
    assert tool.run("convert", src, link2).returncode == 0
    assert link2.is_symlink() and torch.load(real / "new.pth")["module.bn.bias"].tolist() == [0] * 3


def test_keeps_the_mode_of_the_file_it_replaces(tool, tmp_path):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    os.chmod(out, 0o640)
    res = tool.run("convert", src, out)
    assert res.returncode == 0, res.describe()
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert "module.fc.weight" in header_of(out)
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.pth"
        assert tool.run("convert", src, fresh).returncode == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


# ---- tied weights ------------------------------------------------------------------

class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_written_once_as_save_model_does(tool, tmp_path):
    torch.manual_seed(0)
    model = Tied()
    src = tmp_path / "tied.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "tied.safetensors"
    res = tool.run("convert", src, out)
    assert res.returncode == 0 and res.stderr == "", res.describe()
    header = header_of(out)
    entries = safetensors_rules.tensors_of(header)
    # save_model keeps the first name in sorted order and records the other
    assert list(entries) == ["embed.weight"]
    assert header["__metadata__"] == {"format": "pt", "head.weight": "embed.weight"}
    # load_model's way back: a non-strict load whose missing keys are the
    # names dropped, which the model's own tie fills
    sd = {"embed.weight": torch.load(src)["embed.weight"]}
    raw = out.read_bytes()
    b, e = entries["embed.weight"]["data_offsets"]
    base = 8 + struct.unpack("<Q", raw[:8])[0]
    sd["embed.weight"] = torch.frombuffer(bytearray(raw[base + b:base + e]),
                                          dtype=torch.float32).reshape(5, 3)
    fresh = Tied()
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    dropped = {k for k, v in header["__metadata__"].items() if v in entries}
    assert unexpected == [] and set(missing) == dropped
    assert fresh.head.weight is fresh.embed.weight
    assert torch.equal(fresh.head.weight, model.head.weight)
    # ckpt reads it back as one tensor
    back = tmp_path / "back.pth"
    assert tool.run("convert", out, back, "-q").returncode == 0
    assert list(torch.load(back)) == ["embed.weight"]


def test_distinct_views_of_one_storage_stay_apart(tool, tmp_path):
    base = torch.arange(12.0)
    src = tmp_path / "views.pth"
    torch.save({"a": base[:6], "b": base[6:], "c": base[:6].view(2, 3), "d": base[:6]}, src)
    out = tmp_path / "views.safetensors"
    assert tool.run("convert", src, out).returncode == 0
    header = header_of(out)
    assert sorted(safetensors_rules.tensors_of(header)) == ["a", "b", "c"]
    assert header["__metadata__"]["d"] == "a"
