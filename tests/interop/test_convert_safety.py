"""`ckpt convert` where a first use goes wrong: signals, location tags, --to
against the extension, filters and edits that do nothing, symbolic links
and modes, tied weights written to safetensors."""
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


# ---- --map-location --------------------------------------------------------------

@pytest.mark.parametrize("tag", ["cpu", "cuda", "cuda:1", "mps", "meta", "xpu:0", "hpu"])
def test_map_location_tags_torch_restores(tool, tmp_path, tag):
    src = tmp_path / "in.pth"
    sd = small_state_dict(src)
    out = tmp_path / "out.pth"
    res = tool.run("convert", src, out, "--map-location", tag)
    assert res.returncode == 0, res.describe()
    seen = set()

    def restore(storage, location):
        seen.add(location)
        return storage

    got = torch.load(out, map_location=restore)
    assert seen == {tag}
    assert all(torch.equal(got[k], v) for k, v in sd.items())


@pytest.mark.parametrize("tag", ["gpu", "GPU", "CPU", "cuda0", "cuda:", "cuda:x", "cuda:-1",
                                 "cpu:0", "mps:0", "", "tpu"])
def test_map_location_refuses_other_tags(tool, tmp_path, tag):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.pth"
    res = tool.run("convert", src, out, "--map-location", tag)
    assert res.returncode == 2, res.describe()
    assert "--map-location" in res.stderr and "cuda:N" in res.stderr, res.describe()
    assert not out.exists() and temporaries(tmp_path) == []


def test_torch_cannot_restore_an_unknown_tag(tool, tmp_path):
    """Why: torch.load gives up on a tag it does not know."""
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.pth"
    assert tool.run("convert", src, out, "--map-location", "cuda:1").returncode == 0
    raw = out.read_bytes().replace(b"cuda:1", b"gpu:01")  # same length: the zip stays valid
    bad = tmp_path / "bad.pth"
    bad.write_bytes(raw)
    with pytest.raises(RuntimeError, match="gpu:01"):
        torch.load(bad)


# ---- --to against the extension ----------------------------------------------------

@pytest.mark.parametrize("name,to", [("out.safetensors", "pth"), ("out.pth", "safetensors"),
                                     ("out.pt", "safetensors"), ("out.bin", "safetensors")])
def test_to_contradicting_the_extension_is_refused(tool, tmp_path, name, to):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / name
    res = tool.run("convert", src, out, "--to", to)
    assert res.returncode == 2, res.describe()
    assert "contradicts" in res.stderr and "--force" in res.stderr, res.describe()
    assert not out.exists()
    res = tool.run("convert", src, out, "--to", to, "--force")
    assert res.returncode == 0, res.describe()
    if to == "pth":
        assert torch.load(out)["module.bn.weight"].tolist() == [1, 1, 1]
    else:
        assert "module.bn.weight" in header_of(out)


@pytest.mark.parametrize("name,to", [("out.weights", "pth"), ("out", "safetensors"),
                                     ("out.safetensors", "safetensors"), ("out.pt", "torch")])
def test_to_agreeing_or_unknown_extension(tool, tmp_path, name, to):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    res = tool.run("convert", src, tmp_path / name, "--to", to)
    assert res.returncode == 0 and res.stderr == "", res.describe()


# ---- filters and edits that do nothing ---------------------------------------------

def warnings_of(res):
    return [line for line in res.stderr.splitlines() if "warning" in line]


def test_include_matching_nothing_is_refused(tool, tmp_path):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.pth"
    res = tool.run("convert", src, out, "--include", "nothing*")
    assert res.returncode == 2, res.describe()
    assert warnings_of(res) == ["ckpt: warning: --include 'nothing*' matches no key"]
    assert "--force" in res.stderr and not out.exists()
    res = tool.run("convert", src, out, "--include", "nothing*", "--force")
    assert res.returncode == 0, res.describe()
    assert len(warnings_of(res)) == 1
    assert torch.load(out) == {}


def test_each_idle_filter_and_edit_warns_once(tool, tmp_path):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.pth"
    res = tool.run("convert", src, out, "--include", "module.*", "--include", "nothing*",
                   "--exclude", "zzz*", "--strip-prefix", "modulee.", "--rename", "fc.=head.")
    assert res.returncode == 0, res.describe()
    assert warnings_of(res) == [
        "ckpt: warning: --include 'nothing*' matches no key",
        "ckpt: warning: --exclude 'zzz*' matches no key",
        "ckpt: warning: --strip-prefix 'modulee.' matches no key",
        "ckpt: warning: --rename 'fc.=' matches no key",
    ]
    assert sorted(torch.load(out)) == ["module.bn.bias", "module.bn.weight", "module.fc.weight"]


def test_strip_prefix_cutting_mid_name_warns(tool, tmp_path):
    src = tmp_path / "in.pth"
    small_state_dict(src)
    out = tmp_path / "out.pth"
    res = tool.run("convert", src, out, "--strip-prefix", "module")
    assert res.returncode == 0, res.describe()
    (w,) = warnings_of(res)
    assert "--strip-prefix 'module' does not end at a '.'" in w and "'module.'" in w
    assert sorted(torch.load(out)) == [".bn.bias", ".bn.weight", ".fc.weight"]
    res = tool.run("convert", src, out, "--strip-prefix", "module.")
    assert res.returncode == 0 and res.stderr == "", res.describe()
    assert sorted(torch.load(out)) == ["bn.bias", "bn.weight", "fc.weight"]


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
