"""PyTorch Distributed Checkpoint (DCP) directories read by ckpt.

Written by the real torch: torch 1.13 here (torch.distributed._shard.checkpoint,
save_state_dict with no_dist=True in one process, and 2 gloo processes on
localhost) and torch 2.6 in the chroot of scripts/torch2-chroot.sh (dcp.save in
one process, in 2 gloo processes with row-sharded tensors, and in 4 with a
2 x 2 uneven grid). Every tensor, and boxes of it, read by ckpt
(tests/tools/dcp_load: ckpt_dcp_load_shard) is compared bit for bit with the
state dict torch saved; `ckpt convert` of a directory loads in torch as what
torch's own dcp_to_torch_save writes (keys, nesting, values, dtypes).
Hostile directories (globals outside DCP's classes, chunks that overflow,
overlap or leave gaps, paths out of the directory, symbolic links, huge
counts, transforms) get clear errors.
"""
import os
import pathlib
import pickle
import shlex
import shutil
import signal
import subprocess
import sys

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import dcpgen  # noqa: E402

T2 = os.environ.get("CKPT_TORCH2_PYTHON")
GEN = str(HERE / "dcpgen.py")


def run(*args, check=True):
    proc = subprocess.run([str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()
    return proc


@pytest.fixture(scope="session")
def dcp_load():
    path = os.environ.get("CKPT_DCP_LOAD", str(HERE.parent.parent / "build" / "tests" /
                                                "dcp_load"))
    if not pathlib.Path(path).is_file():
        pytest.fail(f"dcp_load not found at {path} (set CKPT_DCP_LOAD or build first)")
    return path


def need_torch2():
    if not T2:
        if os.environ.get("CKPT_TORCH2") == "1":
            pytest.fail("CKPT_TORCH2=1 but no torch 2.x interpreter")
        pytest.skip("no torch 2.x interpreter (scripts/torch2-chroot.sh)")


@pytest.fixture(scope="session")
def dcp_dirs(tmp_path_factory):
    """name -> (directory, the state dict torch saved), made on first use."""
    base = tmp_path_factory.mktemp("dcp")
    made = {}

    def get(name):
        if name not in made:
            kind, torch2 = {"s113": ("single", False), "r113": ("ranks", False),
                            "s26": ("single", True), "r26": ("ranks", True),
                            "g26": ("grid", True), "d26": ("dtensor", True)}[name]
            out = base / name
            if torch2:
                need_torch2()
                argv = [*shlex.split(T2), GEN, kind, str(out)]
            else:
                argv = [sys.executable, GEN, kind, str(out)]
            # gloo ranks on a loaded machine: one retry, the whole process
            # group of a try that hangs killed
            for attempt in range(2):
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        start_new_session=True)
                try:
                    _, err = proc.communicate(timeout=300)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    _, err = proc.communicate()
                    err += b"\n(timed out)"
                if proc.returncode == 0:
                    break
                shutil.rmtree(out, ignore_errors=True)
            assert proc.returncode == 0, err.decode()[-3000:]
            made[name] = (out, torch.load(str(out) + ".expect.pt"))
        return made[name]
    return get


def flat(obj, path=""):
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat(v, f"{path}.{k}" if path else str(k)))
    else:
        out[path] = obj
    return out


def tensor_bytes(t):
    t = t.contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def assert_same(a, b, path="", ordered=True):
    """Same keys (in the same order), same nesting, values equal bit for bit."""
    assert type(a) is type(b), (path, type(a), type(b))
    if isinstance(a, dict):
        if ordered:
            assert list(a) == list(b), (path, list(a), list(b))
        else:
            assert sorted(a) == sorted(b), (path, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}", ordered)
    elif isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape) == (b.dtype, b.shape), path
        assert tensor_bytes(a) == tensor_bytes(b), path
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}.{i}", ordered)
    else:
        assert a == b, (path, a, b)


ALL = ["s113", "r113", "s26", "r26", "g26", "d26"]


@pytest.mark.parametrize("name", ALL)
def test_convert_to_torch_matches_saved(name, dcp_dirs, ckpt_bin, tmp_path):
    d, expect = dcp_dirs(name)
    out = tmp_path / "out.pth"
    run(ckpt_bin, "convert", d, out)
    got = torch.load(out)
    if name in ("r113",):
        # torch 1.13 wrote the sharded tensors under top-level keys
        assert sorted(got) == sorted(expect)
        got = {k: got[k] for k in expect}
    # DTensors: torch orders the keys as its plan has them (dcp_to_torch_save
    # too, checked in order below)
    assert_same(got, expect, ordered=name != "d26")
    # the .metadata file names the same checkpoint
    run(ckpt_bin, "convert", d / ".metadata", tmp_path / "again.pth")
    assert_same(torch.load(tmp_path / "again.pth"), got)


@pytest.mark.parametrize("name", ALL)
def test_regions_bit_for_bit(name, dcp_dirs, dcp_load):
    """Whole tensors and boxes across chunk borders: rows, columns, uneven."""
    d, expect = dcp_dirs(name)
    tensors = {k: v for k, v in flat(expect).items() if isinstance(v, torch.Tensor)}
    args, want = [], b""
    for key, t in tensors.items():
        args.append(key)
        want += tensor_bytes(t)
        if t.dim() == 0:
            args.append(f"{key}@:")
            want += tensor_bytes(t)
            continue
        for lo_frac, hi_frac in ((0, 1), (1, 3), (2, 3)):
            off = [s * lo_frac // 3 for s in t.shape]
            end = [max(o, s * hi_frac // 3 + (1 if hi_frac < 3 and s > 1 else 0))
                   for o, s in zip(off, t.shape)]
            end = [min(e, s) for e, s in zip(end, t.shape)]
            size = [e - o for o, e in zip(off, end)]
            args.append(f"{key}@{','.join(map(str, off))}:{','.join(map(str, size))}")
            want += tensor_bytes(t[tuple(slice(o, e) for o, e in zip(off, end))])
    got = run(dcp_load, d, *args).stdout
    assert got == want


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("dim", [0, 1])
def test_resharding_load(world, dim, dcp_dirs, dcp_load):
    """The 2 x 2 grid 4 ranks wrote, loaded by `world` ranks split along rows
    or columns (uneven where it does not divide); each rank's pieces put
    together are the tensor."""
    d, expect = dcp_dirs("g26")
    t = expect["grid"]
    n = t.shape[dim]
    bounds = [n * r // world for r in range(world + 1)]
    pieces = []
    for r in range(world):
        off, size = [0, 0], list(t.shape)
        off[dim], size[dim] = bounds[r], bounds[r + 1] - bounds[r]
        out = run(dcp_load, d, f"grid@{off[0]},{off[1]}:{size[0]},{size[1]}").stdout
        piece = torch.frombuffer(bytearray(out), dtype=t.dtype).reshape(size) \
            if out else torch.empty(size, dtype=t.dtype)
        pieces.append(piece)
    assert tensor_bytes(torch.cat(pieces, dim)) == tensor_bytes(t)


def chunk_layout(ckpt_bin, d, key):
    """(box, file, offset, length) of every chunk of key, as inspect shows it."""
    out = run(ckpt_bin, "inspect", d).stdout.decode().splitlines()
    start = out.index(f"  {key}: " + next(x.split(": ", 1)[1] for x in out
                                           if x.startswith(f"  {key}: ")))
    rows = []
    for line in out[start + 1:]:
        if not line.startswith("    ["):
            break
        box, rest = line.strip()[1:].split("]  ", 1)
        fname, rest = rest.split(" @ ")
        off, length = rest.split(" (")
        rows.append((box, fname, int(off), int(length.split()[0])))
    return rows


def test_only_the_overlapping_chunks_are_read(dcp_dirs, dcp_load, ckpt_bin, tmp_path):
    """Rank 1's chunk of model.w ruined: rank 0's rows still load, the whole
    tensor not."""
    d, expect = dcp_dirs("r26")
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    layout = chunk_layout(ckpt_bin, d, "model.w")
    assert [r[0] for r in layout] == ["0:5, 0:6", "5:10, 0:6"]
    _, fname, off, length = layout[1]
    assert fname == "__1_0.distcp"
    f = bad / fname
    data = bytearray(f.read_bytes())
    data[off:off + length] = b"\0" * length
    f.write_bytes(bytes(data))
    w = expect["model"]["w"]
    got = run(dcp_load, bad, "model.w@0,0:5,6").stdout
    assert got == tensor_bytes(w[:5])
    proc = run(dcp_load, bad, "model.w", check=False)
    assert proc.returncode == 1
    assert b"__1_0.distcp" in proc.stderr


def test_inspect_shows_chunk_layout(dcp_dirs, ckpt_bin):
    d, _ = dcp_dirs("g26")
    out = run(ckpt_bin, "inspect", d).stdout.decode()
    assert "Format:   dcp" in out
    for box, rank in (("0:5, 0:3", 0), ("0:5, 3:8", 1), ("5:9, 0:3", 2), ("5:9, 3:8", 3)):
        assert f"[{box}]  __{rank}_0.distcp @ " in out


@pytest.mark.parametrize("name", ["s113", "r26"])
def test_verify(name, dcp_dirs, ckpt_bin, tmp_path):
    d, _ = dcp_dirs(name)
    out = run(ckpt_bin, "verify", d).stdout.decode()
    assert ": ok: dcp" in out
    # a flipped byte of tensor data: the item's CRC32 fails, naming its file
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    f = next(p for p in sorted(bad.glob("*.distcp")) if b"/data/0" in p.read_bytes())
    data = bytearray(f.read_bytes())
    at = data.rfind(b"/data/0")
    assert at > 0
    # the local header of the data record: 30 bytes + name + extra, then data
    lh = data.rfind(b"PK\x03\x04", 0, at)
    name_len = int.from_bytes(data[lh + 26:lh + 28], "little")
    extra_len = int.from_bytes(data[lh + 28:lh + 30], "little")
    data[lh + 30 + name_len + extra_len] ^= 0x40
    f.write_bytes(bytes(data))
    proc = run(ckpt_bin, "verify", bad, check=False)
    assert proc.returncode == 1, proc.stdout
    assert f.name in proc.stdout.decode() and "CRC" in proc.stdout.decode()


def test_diff_dcp_against_its_consolidation(dcp_dirs, ckpt_bin, tmp_path):
    d, _ = dcp_dirs("r113")
    run(ckpt_bin, "convert", d, tmp_path / "c.safetensors")
    run(ckpt_bin, "convert", d, tmp_path / "c.pth")
    proc = run(ckpt_bin, "diff", d, tmp_path / "c.pth", check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_dcp_to_torch_save_same_content(dcp_dirs, ckpt_bin, tmp_path):
    """torch 2.6's own consolidation and ckpt's hold the same state dict."""
    need_torch2()
    for name in ("r26", "g26", "s26", "d26"):
        d, _ = dcp_dirs(name)
        ours, theirs = tmp_path / f"{name}.ckpt.pth", tmp_path / f"{name}.torch.pth"
        run(ckpt_bin, "convert", d, ours)
        run(ckpt_bin, "convert", d, tmp_path / f"{name}.safetensors")
        code = (
            "import sys, torch\n"
            "from torch.distributed.checkpoint.format_utils import dcp_to_torch_save\n"
            "from safetensors.torch import load_file\n"
            "d, ours, theirs, st = sys.argv[1:]\n"
            "dcp_to_torch_save(d, theirs)\n"
            "a, b = torch.load(ours), torch.load(theirs, weights_only=False)\n"
            "def same(x, y, p=''):\n"
            "    assert type(x) is type(y), (p, type(x), type(y))\n"
            "    if isinstance(x, dict):\n"
            "        assert list(x) == list(y), (p, list(x), list(y))\n"
            "        for k in x: same(x[k], y[k], p + '.' + k)\n"
            "    elif isinstance(x, torch.Tensor):\n"
            "        assert x.dtype == y.dtype and x.shape == y.shape, p\n"
            "        assert torch.equal(x.view(torch.uint8) if x.dim() else x.reshape(1)"
            ".view(torch.uint8), y.view(torch.uint8) if y.dim() else y.reshape(1)"
            ".view(torch.uint8)), p\n"
            "    elif isinstance(x, (list, tuple)):\n"
            "        assert len(x) == len(y), p\n"
            "        for i, (u, v) in enumerate(zip(x, y)): same(u, v, f'{p}.{i}')\n"
            "    else:\n"
            "        assert x == y, (p, x, y)\n"
            "same(a, b)\n"
            "flat = {}\n"
            "def walk(o, p=''):\n"
            "    if isinstance(o, dict):\n"
            "        for k, v in o.items(): walk(v, f'{p}.{k}' if p else k)\n"
            "    elif isinstance(o, torch.Tensor): flat[p] = o\n"
            "walk(b)\n"
            "s = load_file(st)\n"
            "assert sorted(s) == sorted(flat), (sorted(s), sorted(flat))\n"
            "for k in s: assert torch.equal(s[k], flat[k]), k\n"
            "print('same')\n")
        proc = subprocess.run([*shlex.split(T2), "-c", code, str(d), str(ours), str(theirs),
                               str(tmp_path / f"{name}.safetensors")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        assert proc.stdout.decode().strip() == "same"


# ---- hostile directories --------------------------------------------------

def load_metadata(path):
    dcpgen.dcp_module()  # torch 1.13's classes, importable on Python 3.11
    with open(path, "rb") as fh:
        return pickle.load(fh)


def hostile(src, dst, edit):
    """A copy of the DCP directory src whose .metadata edit(md) changed."""
    shutil.copytree(src, dst)
    md = load_metadata(dst / ".metadata")
    edit(md)
    with open(dst / ".metadata", "wb") as fh:
        pickle.dump(md, fh)
    return dst


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def tensor_md(md, key):
    return md.state_dict_metadata[key]


def storage_key(md, fqn):
    return next(k for k in md.storage_data if k.fqn == fqn)


def set_chunk(md, key, i, offsets, sizes):
    """Moves chunk i of key, and its storage_data entry with it."""
    c = tensor_md(md, key).chunks[i]
    old = next(k for k in md.storage_data if k.fqn == key and tuple(k.offset) == tuple(c.offsets))
    info = md.storage_data.pop(old)
    c.offsets, c.sizes = torch.Size(offsets), torch.Size(sizes)
    md.storage_data[type(old)(key, torch.Size(offsets), old.index)] = info


def edit_global(md):
    md.state_dict_metadata["epoch"] = RunsCode()


def edit_overflow(md):
    set_chunk(md, "model.w", 0, [0, 0], [2 ** 63 - 1, 6])


def edit_overlap(md):
    set_chunk(md, "model.w", 1, [4, 0], [5, 6])


def edit_gap(md):
    tensor_md(md, "model.w").size = torch.Size([11, 6])


def edit_missing(md):
    c = tensor_md(md, "model.w").chunks[1]
    del md.storage_data[next(k for k in md.storage_data if k.fqn == "model.w"
                             and tuple(k.offset) == tuple(c.offsets))]


def edit_path(path):
    def edit(md):
        md.storage_data[storage_key(md, "epoch")].relative_path = path
    return edit


def edit_past_end(md):
    md.storage_data[storage_key(md, "epoch")].length = 10 ** 9


def edit_huge(md):
    cls = type(tensor_md(md, "model.w").chunks[0])
    tensor_md(md, "model.w").chunks = [cls(torch.Size([0, 0]), torch.Size([0, 0]))] * 300000


def edit_transform(md):
    md.storage_data[storage_key(md, "epoch")].transform_descriptors = ["stream.zstd/1"]


HOSTILE = {
    "global": (edit_global, 2, "'posix.system' is not one of DCP's metadata classes"),
    "overflow": (edit_overflow, 2, "runs past the tensor in dimension 0"),
    "overlap": (edit_overlap, 2, "model.w: the chunks [0:5, 0:6] and [4:9, 0:6] overlap"),
    "gap": (edit_gap, 2, "model.w: the chunks cover 60 of the tensor's 66 elements (a gap)"),
    "missing": (edit_missing, 2, "chunk 1 of 'model.w' has no entry in storage_data"),
    "dotdot": (edit_path("../x.distcp"), 2, "not a plain file name inside"),
    "absolute": (edit_path("/etc/passwd"), 2, "not a plain file name inside"),
    "subdir": (edit_path("sub/x.distcp"), 2, "not a plain file name inside"),
    "past_end": (edit_past_end, 2, "runs past the end of that file"),
    "huge": (edit_huge, 2, "(limit max_tensor_paths"),
    "transform": (edit_transform, 2, "stored with a transform ('stream.zstd/1'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_metadata(case, dcp_dirs, ckpt_bin, tmp_path):
    d, _ = dcp_dirs("r113")
    edit, rc, text = HOSTILE[case]
    bad = hostile(d, tmp_path / case, edit)
    for cmd in ("inspect", "convert"):
        args = [ckpt_bin, cmd, bad] + ([tmp_path / "out.pth"] if cmd == "convert" else [])
        proc = run(*args, check=False)
        assert proc.returncode == rc, (cmd, proc.stdout, proc.stderr)
        assert text in proc.stderr.decode(), proc.stderr.decode()
    assert not (tmp_path / "out.pth").exists()


def test_symlink_out_of_the_directory(dcp_dirs, ckpt_bin, tmp_path):
    d, _ = dcp_dirs("s113")
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    outside = tmp_path / "outside.distcp"
    shutil.move(bad / "__0_1.distcp", outside)
    os.symlink(outside, bad / "__0_1.distcp")
    proc = run(ckpt_bin, "inspect", bad, check=False)
    assert proc.returncode == 2
    assert "a symbolic link" in proc.stderr.decode()


def test_scan(dcp_dirs, ckpt_bin, tmp_path):
    d, _ = dcp_dirs("r113")
    proc = run(ckpt_bin, "scan", d, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    bad = hostile(d, tmp_path / "bad", edit_global)
    proc = run(ckpt_bin, "scan", bad, check=False)
    out = proc.stdout.decode()
    assert proc.returncode == 1, out + proc.stderr.decode()
    assert "posix.system" in out and "unsafe" in out


def test_getattr_only_for_the_enum(dcp_dirs, ckpt_bin, tmp_path):
    """builtins.getattr is read only as the memory-format enum's member."""
    d, _ = dcp_dirs("s113")
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    meta = (bad / ".metadata").read_bytes()
    assert meta.count(b"TORCH_CONTIGUOUS_FORMAT") == 1
    (bad / ".metadata").write_bytes(meta.replace(b"TORCH_CONTIGUOUS_FORMAT",
                                                 b"__init_subclass__XXXXXX"))
    proc = run(ckpt_bin, "inspect", bad, check=False)
    assert proc.returncode == 2
    assert "builtins.getattr is allowed only for a member of the memory-format enum" in \
        proc.stderr.decode()
    proc = run(ckpt_bin, "scan", bad, check=False)
    assert proc.returncode == 1 and "unsafe" in proc.stdout.decode()


def test_inspect_json_chunks(dcp_dirs, ckpt_bin):
    import json
    d, _ = dcp_dirs("g26")
    doc = json.loads(run(ckpt_bin, "inspect", "--json", d).stdout)
    assert doc["format"] == "dcp"
    (grid,) = doc["tensors"]
    assert [(c["offsets"], c["sizes"], c["file"]) for c in grid["chunks"]] == [
        ([0, 0], [5, 3], "__0_0.distcp"), ([0, 3], [5, 5], "__1_0.distcp"),
        ([5, 0], [4, 3], "__2_0.distcp"), ([5, 3], [4, 5], "__3_0.distcp")]


def test_regions_of_plain_files(dcp_load, tmp_path):
    """ckpt_tensor_read_region works on any strided tensor: views with
    strides, offsets and a transpose in a torch.save file."""
    base = torch.arange(6 * 8 * 5, dtype=torch.float64).reshape(6, 8, 5)
    sd = {"t": base.transpose(0, 2)[1:4], "s": base[::2, 1:7:3, :], "x": torch.tensor(7)}
    path = tmp_path / "views.pth"
    torch.save(sd, path)
    args, want = [], b""
    for key, t in sd.items():
        if t.dim() == 0:
            args.append(f"{key}@:")
            want += tensor_bytes(t)
            continue
        off = [1 if s > 1 else 0 for s in t.shape]
        size = [s - o - (1 if s > 2 else 0) for s, o in zip(t.shape, off)]
        args.append(f"{key}@{','.join(map(str, off))}:{','.join(map(str, size))}")
        want += tensor_bytes(t[tuple(slice(o, o + n) for o, n in zip(off, size))])
    assert run(dcp_load, path, *args).stdout == want
    # a box outside the tensor is refused
    proc = run(dcp_load, path, "t@0,0,0:4,9,6", check=False)
    assert proc.returncode == 1
    assert "outside the tensor" in proc.stderr.decode()
