"""One tensor under many paths: torch.save keeps a list shared by reference
once, so [[t] * 1000] * 1000 is a 5 KB file with 10^6 tensor paths.

Past max_tensor_paths (250,000 by default) every command stops at once with
the limit's name; just under it, every command lists, compares and writes
all the paths in memory that grows with the names, not with a document of
them: each command runs under an address-space cap (512 MiB) that the
4 KiB per path of a JSON document would break at 250,000 paths.
"""
import os
import resource
import subprocess

import pytest
import torch

from ckpttool import Result, crashed

CAP = 512 << 20


def sanitized(ckpt_bin):
    """ASan reserves terabytes of address space: no cap under it."""
    if os.environ.get("CKPT_SANITIZED", "0").upper() not in ("0", "", "FALSE", "OFF"):
        return True
    with open(ckpt_bin, "rb") as f:
        return b"__asan_init" in f.read()


def run_capped(ckpt_bin, args, out_path=None):
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))
    argv = [ckpt_bin, *map(str, args)]
    with open(out_path or os.devnull, "wb") as out:
        proc = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, timeout=300,
                              preexec_fn=None if sanitized(ckpt_bin) else cap)
    proc.stdout = b""
    res = Result(argv, proc)
    assert not crashed(res), "ckpt crashed\n" + res.describe()
    return res


def count_in_file(path, needle):
    """Occurrences of needle in a file read in pieces."""
    n, tail = 0, b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            data = tail + chunk
            n += data.count(needle)
            keep = len(needle) - 1
            tail = data[-keep:] if keep else b""
            n -= tail.count(needle)
    return n


@pytest.fixture(scope="module")
def fan_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fan")
    t = torch.arange(4, dtype=torch.float32)
    inner = [t] * 1000
    files = {"over": d / "over.pt", "under": d / "under.pt", "other": d / "other.pt"}
    torch.save([inner] * 1000, files["over"])
    torch.save([inner] * 249 + [[t] * 999], files["under"])  # 249,999 paths
    torch.save({"x": t}, files["other"])
    return files


def test_past_the_limit_every_command_stops(ckpt_bin, fan_files, tmp_path):
    over = fan_files["over"]
    assert over.stat().st_size < 10000
    for args in (["inspect", over], ["inspect", "--json", over], ["verify", over],
                 ["convert", over, tmp_path / "o.pth"],
                 ["convert", over, tmp_path / "o.safetensors"], ["diff", over, over],
                 ["diff", "--json", over, fan_files["other"]],
                 ["match", over, "--model", over]):
        res = run_capped(ckpt_bin, args)
        assert res.returncode in (1, 2), res.describe()
        assert "max_tensor_paths" in res.stderr, res.describe()
    assert not (tmp_path / "o.pth").exists()
    assert not (tmp_path / "o.safetensors").exists()


def test_under_the_limit_every_command_completes(ckpt_bin, fan_files, tmp_path):
    under, other = fan_files["under"], fan_files["other"]
    out = tmp_path / "out.json"
    res = run_capped(ckpt_bin, ["inspect", "--json", under], out)
    assert res.returncode == 0, res.describe()
    assert count_in_file(out, b'"storage_offset": 0,') == 249999
    assert count_in_file(out, b'"tensors": 249999,') == 1
    res = run_capped(ckpt_bin, ["inspect", under], out)
    assert res.returncode == 0, res.describe()
    assert count_in_file(out, b"  248.999  ") == 1
    res = run_capped(ckpt_bin, ["verify", under])
    assert res.returncode == 0, res.describe()
    res = run_capped(ckpt_bin, ["diff", "--json", under, other], out)
    assert res.returncode == 1, res.describe()
    assert count_in_file(out, b'\n  "') == 249999 + 1  # only_in_a, only_in_b
    res = run_capped(ckpt_bin, ["diff", under, under], out)
    assert res.returncode == 0, res.describe()
    # the torch writer keeps the shared tensor once: a file of its size
    pth = tmp_path / "u.pth"
    res = run_capped(ckpt_bin, ["convert", under, pth])
    assert res.returncode == 0, res.describe()
    assert pth.stat().st_size < 4 * under.stat().st_size
    back = torch.load(pth)
    assert len(back) == 250 and len(back[249]) == 999
    assert back[0][0].data_ptr() == back[248][999].data_ptr()
