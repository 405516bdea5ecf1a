"""How files are mapped and read: descriptors, mapping failures, the memory
mmap=False reads into, file objects and dict keys."""
import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import ckpt
from conftest import SANITIZED
from helpers import assert_same


def _child(code, tmp_path):
    """Runs code in a fresh python (the package's, with this environment)."""
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)


def test_kept_tensors_hold_no_descriptor(tmp_path):
    """A tensor kept from a load (or safe_open) holds the map, not an open
    file: 200 loads under a limit of 64 descriptors."""
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(4.0), "b": torch.ones(3)}, path)
    res = _child(f"""
        import gc, os, resource
        import torch
        import ckpt
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        before = len(os.listdir("/proc/self/fd"))
        kept = []
        for i in range(200):
            kept.append(ckpt.load({str(path)!r})["w"])
            with open({str(path)!r}, "rb") as fh:
                kept.append(ckpt.load(fh)["b"])
            with ckpt.safe_open({str(path)!r}) as f:
                kept.append(f.get_tensor("w"))
        gc.collect()
        assert len(os.listdir("/proc/self/fd")) <= before, os.listdir("/proc/self/fd")
        for i in range(0, len(kept), 3):
            assert torch.equal(kept[i], torch.arange(4.0))
            assert torch.equal(kept[i + 1], torch.ones(3))
            assert torch.equal(kept[i + 2], torch.arange(4.0))
        print("ok", len(kept))
        """, tmp_path)
    assert res.returncode == 0 and "ok 600" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(SANITIZED, reason="ASan's shadow memory needs more address space "
                    "than the limit leaves")
def test_mapping_failure_is_an_io_error(tmp_path):
    """A file that cannot be mapped (here: no address space left for it) is
    an I/O error naming the file, never read as an empty file."""
    path = tmp_path / "huge.pt"
    with open(path, "wb") as fh:
        fh.truncate(64 << 30)  # sparse: no disk
    res = _child(f"""
        import resource
        import ckpt
        with open("/proc/self/status") as fh:
            vm = next(int(l.split()[1]) for l in fh if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
        for how in ("path", "file object"):
            try:
                if how == "path":
                    ckpt.load({str(path)!r})
                else:
                    with open({str(path)!r}, "rb") as fh:
                        ckpt.load(fh)
            except ckpt.IOError as e:
                assert {str(path)!r} in str(e), str(e)
                print(how, "IOError:", e)
            except BaseException as e:
                print(how, "wrong error:", type(e).__name__, e)
        """, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("IOError:") == 2, res.stdout + res.stderr


def _vm_flags(addr):
    """The VmFlags of the process's mapping holding addr (/proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"{addr:#x} is in no mapping")


def test_copies_go_to_ordinary_memory(tmp_path):
    """mmap=False reads big storages into the memory torch.empty and
    numpy.empty give, not memory advised for huge pages (whose faults
    compact memory first, several times slower here)."""
    path = tmp_path / "big.pt"
    torch.save({"big": torch.arange(2 << 20, dtype=torch.float32)}, path)
    t = ckpt.load(path, mmap=False)["big"]
    assert torch.equal(t, torch.arange(2 << 20, dtype=torch.float32))
    assert "hg" not in _vm_flags(t.data_ptr())
    a = ckpt.load(path, mmap=False, framework="np")["big"]
    assert (a == np.arange(2 << 20, dtype=np.float32)).all()
    assert "hg" not in _vm_flags(a.ctypes.data)


def _key_pairs(ours, ref, out):
    """(our key, torch's key) of every str dict key, walking both trees."""
    if isinstance(ref, dict):
        for (a, x), (b, y) in zip(ours.items(), ref.items()):
            if isinstance(b, str):
                out.append((a, b))
            _key_pairs(x, y, out)
        if hasattr(ref, "_metadata"):
            _key_pairs(ours._metadata, ref._metadata, out)
    elif isinstance(ref, (list, tuple)):
        for x, y in zip(ours, ref):
            _key_pairs(x, y, out)
    return out


def test_keys_are_shared_strings(tmp_path):
    """Equal dict keys are one interned string, as torch.load gives the keys
    a pickle memoizes (an optimizer's "exp_avg" in every parameter's state),
    so a resumed state is saved again without writing each key anew."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(3, 4)).sum().backward()
    opt.step()
    path = tmp_path / "train.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    ref = torch.load(path)
    ours = ckpt.load(path)
    assert_same(ours, ref)
    pairs = _key_pairs(ours, ref, [])
    assert len(pairs) > 20
    by_ref = {}
    for a, b in pairs:
        assert a == b
        assert sys.intern(a) is a, a
        by_ref.setdefault(id(b), []).append(a)
    shared = [ks for ks in by_ref.values() if len(ks) > 1]
    assert shared, "torch's load shares no key"
    for ks in shared:
        assert all(k is ks[0] for k in ks), ks[0]
    again, theirs = tmp_path / "again.pt", tmp_path / "theirs.pt"
    ckpt.save(ours, again)
    ckpt.save(ref, theirs)
    assert os.path.getsize(again) <= os.path.getsize(theirs)
    assert_same(torch.load(again), ref)


@pytest.mark.parametrize("zipped", [True, False])
def test_file_object_read_from_its_position(tmp_path, zipped):
    """A file object is read from where it stands, as torch.load reads it:
    a checkpoint written by torch.save after leading bytes (a header of the
    caller's), read as torch reads those bytes alone."""
    obj = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.int64),
           "meta": {"step": 7, "name": "run"}}
    obj["v"] = obj["w"][1:]
    path = tmp_path / "prefixed.bin"
    for lead in (b"HEADER" * 50 + b"\n", b"\0" * 4096 + b"x" * 9):
        with open(path, "wb") as fh:
            fh.write(lead)
            torch.save(obj, fh, _use_new_zipfile_serialization=zipped)
        ref = torch.load(io.BytesIO(path.read_bytes()[len(lead):]))
        if not zipped:  # torch.load reads from where the file stands (1.13 fails to
            # find a zip's central directory after leading bytes)
            with open(path, "rb") as fh:
                fh.seek(len(lead))
                assert_same(torch.load(fh), ref)
        for mm in (True, False):
            with open(path, "rb") as fh:  # mapped by its fileno
                fh.read(len(lead))
                assert_same(ckpt.load(fh, mmap=mm), ref)
        with open(path, "rb") as fh:
            fh.seek(len(lead))
            with ckpt.safe_open(fh) as f:
                assert torch.equal(f.get_tensor("w"), ref["w"])
        buf = io.BytesIO(path.read_bytes())  # no fileno: read
        buf.seek(len(lead))
        assert_same(ckpt.load(buf), ref)
