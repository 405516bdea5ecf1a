"""ckpt against a live torch 2.x (Debian 13's python3-torch 2.6) and the
`safetensors` package, run in the chroot that scripts/torch2-chroot.sh makes.

The interpreter is CKPT_TORCH2_PYTHON (conftest.py sets it when the chroot is
there). Each test runs a short program in it that writes or loads files under
this machine's temporary directory, which the chroot sees at the same path:

- every dtype torch 2.6 writes (uint16/32/64, every float8 kind), read by ckpt;
- what ckpt writes (rewrites, conversions of training checkpoints with floats,
  torch.__version__, AdamW/StepLR/GradScaler state) loaded by torch 2.6's
  default torch.load, which is weights_only=True;
- safetensors files written by the package read by ckpt, and the other way;
- `convert` warns in one line when a safetensors output holds dtypes that
  older readers (this package among them, for C64) refuse;
- `ckpt scan` never calls safe what torch 2.6's weights_only reader refuses
  (a scan that has no torch_weights_only_loads yet calls files with FRAME
  opcodes safe, which torch refuses: that one gap is let through there).
"""
import json
import os
import pathlib
import shlex
import subprocess

import pytest
import torch

T2 = os.environ.get("CKPT_TORCH2_PYTHON")
SOURCE_DIR = pathlib.Path(__file__).resolve().parent.parent.parent

# Every dtype torch 2.x adds over 1.13 that it writes to a checkpoint, and a
# few old ones beside them (the same file must hold both).
NEW_DTYPES = ["uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2",
              "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu"]
OLD_DTYPES = ["float32", "bfloat16", "float16", "int64", "bool", "uint8", "complex64"]

# Helpers the programs below share (run in torch 2.x).
PRELUDE = r'''
import json, sys, torch
def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
def flat(obj, path=""):
    """path -> summary of every leaf, paths joined with '.' as ckpt names them."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flat(v, f"{path}.{i}" if path else str(i)))
    elif isinstance(obj, torch.Tensor):
        out[path] = ["tensor", str(obj.dtype).replace("torch.", ""), list(obj.shape), raw(obj)]
    else:
        out[path] = [type(obj).__name__, obj if isinstance(obj, (int, float, str, bool))
                     or obj is None else repr(obj)]
    return out
'''


def t2(code, *args, timeout=600):
    """Runs PRELUDE + code in torch 2.x with sys.argv[1:] = args; its stdout."""
    if not T2:
        pytest.fail("CKPT_TORCH2=1 but no torch 2.x interpreter: scripts/torch2-chroot.sh "
                    "check fails (build it with scripts/torch2-chroot.sh build, as root)")
    argv = [*shlex.split(T2), "-c", PRELUDE + code, *map(str, args)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    assert proc.returncode == 0, (f"torch 2 program failed ({proc.returncode}):\n"
                                  f"{proc.stderr.decode('utf-8', 'replace')[-4000:]}")
    return proc.stdout.decode()


def host_flat(obj, path=""):
    """The same summary as PRELUDE's flat(), of what torch 1.13 loads here."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(host_flat(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(host_flat(v, f"{path}.{i}" if path else str(i)))
    elif isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous().reshape(-1)
        out[path] = ["tensor", str(obj.dtype).replace("torch.", ""), list(obj.shape),
                     t.view(torch.uint8).numpy().tobytes().hex() if t.numel() else ""]
    else:
        if isinstance(obj, str):  # TorchVersion is a str; ckpt writes it as one
            obj = str(obj)
        out[path] = [type(obj).__name__, obj if isinstance(obj, (int, float, str, bool))
                     or obj is None else repr(obj)]
    return out


def dumped(tool, path):
    """name -> (dtype, shape, bytes) as ckpt reads the file."""
    index, blobs = tool.dump(path)
    return {e["name"]: (e["dtype"], e["shape"], b) for e, b in zip(index, blobs)}


@pytest.fixture(scope="module")
def rewrite_bin():
    value = os.environ.get("CKPT_REWRITE")
    path = pathlib.Path(value) if value else SOURCE_DIR / "build" / "tests" / "ckpt_rewrite"
    if not path.is_file():
        pytest.fail(f"ckpt_rewrite not found at {path} (set CKPT_REWRITE or build first)")
    return str(path)


# ---- torch 2.6 -------------------------------------------------------------

@pytest.fixture(scope="module")
def t2_info():
    """What the torch 2.x interpreter has; every test that needs it takes this:
    skipped without one, failed when CKPT_TORCH2=1 (make test, .ci/run) asks."""
    if not T2 and os.environ.get("CKPT_TORCH2") != "1":
        pytest.skip("no torch 2.x interpreter: scripts/torch2-chroot.sh build, or "
                    "CKPT_TORCH2=1 make test, makes one")
    return json.loads(t2(r'''
import safetensors, numpy
print(json.dumps({"torch": torch.__version__, "safetensors": safetensors.__version__,
                  "dtypes": [d for d in dir(torch) if isinstance(getattr(torch, d), torch.dtype)]}))
'''))


def test_interpreter_is_torch2(t2_info):
    assert t2_info["torch"].startswith("2."), t2_info


WRITE_DTYPES = r'''
names, out = sys.argv[2].split(","), {}
for i, name in enumerate(names):
    dt = getattr(torch, name, None)
    if dt is None:
        continue
    size = torch.empty((), dtype=dt).element_size()
    base = ((torch.arange(24 * size) * 7 + i) % 251).to(torch.uint8)
    if dt.is_floating_point and dt.itemsize == 1 and name != "float8_e8m0fnu":
        base = base & 0x7b   # no NaN/inf bit patterns: the same bytes either way
    if dt == torch.bool:
        base = base & 1
    t = base.view(dt).reshape(4, 6)
    out[name] = t
    out[name + "_view"] = t.t()[1:, 2:]      # strided, offset, shares t's storage
legacy = len(sys.argv) > 3
torch.save(out, sys.argv[1], _use_new_zipfile_serialization=not legacy)
print(json.dumps(flat(out)))
'''


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_ckpt_reads_every_dtype_torch2_writes(t2_info, tool, tmp_path, legacy):
    path = tmp_path / "dtypes.pt"
    wanted = NEW_DTYPES + OLD_DTYPES
    expect = json.loads(t2(WRITE_DTYPES, path, ",".join(wanted), *(["legacy"] if legacy else [])))
    written = {v[1] for v in expect.values()}
    assert set(NEW_DTYPES) - {"float8_e8m0fnu"} <= written, written
    got = dumped(tool, path)
    assert set(got) == set(expect)
    for name, (_, dtype, shape, hexbytes) in expect.items():
        assert got[name] == (dtype, shape, bytes.fromhex(hexbytes)), name
    js = tool.inspect_json(path)
    by = {t["name"]: t for t in js["tensors"]}
    for name in expect:
        if name.endswith("_view"):
            assert by[name]["storage"] == by[name[:-5]]["storage"], name


def test_torch2_loads_ckpts_rewrite_of_every_dtype(t2_info, tool, rewrite_bin, tmp_path):
    """ckpt's writer, fed torch 2.6's file: torch 2.6 loads the rewrite with
    its default (weights_only=True) to the same tensors."""
    src, dst = tmp_path / "dtypes.pt", tmp_path / "rewrite.pt"
    expect = json.loads(t2(WRITE_DTYPES, src, ",".join(NEW_DTYPES + OLD_DTYPES)))
    res = subprocess.run([rewrite_bin, str(src), str(dst)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    got = json.loads(t2("print(json.dumps(flat(torch.load(sys.argv[1]))))", dst))
    assert got == expect


# ---- training checkpoints: torch 2.6's default load of what ckpt writes ------

def training_checkpoint():
    """A training script's checkpoint, made by torch 1.13 here."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    # GradScaler.state_dict() of an enabled scaler (this machine has no GPU,
    # where a scaler is disabled and its state is empty).
    scaler = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5,
              "growth_interval": 2000, "_growth_tracker": 17}
    return {"epoch": 3, "global_step": 300, "loss": 0.123456789, "best": float("inf"),
            "model": net.state_dict(), "optimizer": opt.state_dict(),
            "lr_scheduler": sched.state_dict(), "scaler": scaler,
            "torch_version": torch.__version__, "note": "resumable", "flag": True,
            "history": [1.5, 0.75, 0.5]}


def test_torch2_default_load_of_ckpt_training_checkpoint(t2_info, ckpt_bin, tmp_path):
    src, dst = tmp_path / "train.pth", tmp_path / "ckpt.pth"
    obj = training_checkpoint()
    assert isinstance(obj["torch_version"], torch.torch_version.TorchVersion)
    torch.save(obj, src)
    res = subprocess.run([ckpt_bin, "convert", str(src), str(dst)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    code = r'''
import pickle
try:
    torch.load(sys.argv[1])
    refused = None
except pickle.UnpicklingError as e:
    refused = str(e)
print(json.dumps({"original_refused": refused, "ckpt": flat(torch.load(sys.argv[2]))}))
'''
    out = json.loads(t2(code, src, dst))
    # torch 2.6 refuses the original (TorchVersion is not on its allow-list);
    # ckpt writes the version as the str it is and torch loads the rest as is.
    assert "TorchVersion" in (out["original_refused"] or ""), out
    assert out["ckpt"] == host_flat(obj)


def test_torch2_default_load_of_mlp_checkpoint(t2_info, tmp_path):
    """examples/mlp's checkpoints (ckpt's own writer: model, AdamW, step,
    floats) load with torch 2.6's default."""
    mlp = os.environ.get("CKPT_MLP")
    if not mlp:
        pytest.skip("CKPT_MLP is not set (run through ctest)")
    d = tmp_path / "run"
    res = subprocess.run([mlp, "train", "--dir", str(d), "--epochs", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=300)
    if res.returncode != 0:
        pytest.fail(res.stderr.decode())
    files = sorted(p for p in d.iterdir() if p.suffix == ".pth")
    assert files
    for p in files:
        got = json.loads(t2("print(json.dumps(flat(torch.load(sys.argv[1]))))", p))
        assert got == host_flat(torch.load(p)), p


# ---- safetensors: the package and ckpt, both ways --------------------------

ST_WRITE = r'''
import safetensors.numpy, safetensors.torch
api = sys.argv[3]        # "pt": safetensors.torch, "np": safetensors.numpy
save = getattr(safetensors, {"pt": "torch", "np": "numpy"}[api]).save_file
names, out = sys.argv[2].split(","), {}
for i, name in enumerate(names):
    dt = getattr(torch, name, None)
    if dt is None:
        continue
    size = torch.empty((), dtype=dt).element_size()
    b = ((torch.arange(15 * size) * 5 + i) % 251).to(torch.uint8)
    t = (b & 1 if dt == torch.bool else b).view(dt).reshape(3, 5)
    try:
        save({name: t if api == "pt" else t.numpy()}, "/dev/null")
    except Exception:
        continue          # a dtype this version of the package does not take
    out[name] = t
save({k: v if api == "pt" else v.numpy() for k, v in out.items()}, sys.argv[1],
     metadata={"format": api})
print(json.dumps(flat(out)))
'''


@pytest.mark.parametrize("api,must", [
    ("pt", {"float8_e4m3fn", "float8_e5m2", "bfloat16", "float16", "bool"}),
    ("np", {"uint16", "uint32", "uint64", "float32", "int64", "uint8"})])
def test_ckpt_reads_safetensors_package_files(t2_info, tool, tmp_path, api, must):
    """The package's torch API (which in 0.4.5 takes no uint16/32/64) and its
    numpy API (which has no bfloat16 or float8) write; ckpt reads the same."""
    path = tmp_path / "pkg.safetensors"
    expect = json.loads(t2(ST_WRITE, path, ",".join(NEW_DTYPES + OLD_DTYPES), api))
    assert must <= set(expect), set(expect)
    got = dumped(tool, path)
    assert set(got) == set(expect)
    for name, (_, dtype, shape, hexbytes) in expect.items():
        assert got[name] == (dtype, shape, bytes.fromhex(hexbytes)), name


def test_safetensors_package_reads_ckpts_files(t2_info, ckpt_bin, tmp_path):
    """torch 2.6's checkpoint converted by ckpt to safetensors, loaded by the
    package: the same tensors, and the dtypes it knows."""
    src, dst = tmp_path / "dtypes.pt", tmp_path / "ckpt.safetensors"
    st_known = ["uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2", "float32",
                "bfloat16", "float16", "int64", "bool", "uint8"]
    expect = json.loads(t2(WRITE_DTYPES, src, ",".join(st_known)))
    res = subprocess.run([ckpt_bin, "convert", str(src), str(dst)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert "warning" not in res.stderr.decode()
    got = json.loads(t2(r'''
from safetensors.torch import load_file
from safetensors import safe_open
with safe_open(sys.argv[1], "pt") as f:
    meta = f.metadata()
print(json.dumps({"meta": meta, "tensors": flat(dict(load_file(sys.argv[1])))}))
''', dst))
    assert got["meta"] == {"format": "pt"}
    assert got["tensors"] == expect


def test_convert_warns_of_dtypes_older_readers_refuse(ckpt_bin, tmp_path):
    """complex64 (C64) is in the format, but the package in Debian 13 refuses
    it: convert writes it and says so in one warning line. Runs without torch
    2.x too; with it, the package's refusal is checked as well."""
    src, dst = tmp_path / "c64.pth", tmp_path / "c64.safetensors"
    torch.save({"z": torch.arange(6, dtype=torch.float32).view(torch.complex64),
                "w": torch.ones(3)}, src)
    res = subprocess.run([ckpt_bin, "convert", str(src), str(dst)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "C64" in lines[0], lines
    assert "older readers refuse" in lines[0]
    if not T2:
        return
    out = t2(r'''
from safetensors.torch import load_file
try:
    t = load_file(sys.argv[1])["z"]
    print("loaded", t.dtype)
except Exception as e:
    print("refused", type(e).__name__)
''', dst)
    if not out.startswith("loaded"):   # the premise of the warning (0.4.5)
        assert out.startswith("refused"), out
    else:
        assert "complex64" in out


def test_convert_warns_of_float8_e8m0(t2_info, ckpt_bin, tmp_path):
    """torch 2.6's float8_e8m0fnu (F8_E8M0) and complex64 in one file: one
    warning line names both; the tensors the package knows convert silently."""
    if "float8_e8m0fnu" not in t2_info["dtypes"]:
        pytest.skip(f"torch {t2_info['torch']} has no float8_e8m0fnu")
    src, dst = tmp_path / "late.pt", tmp_path / "late.safetensors"
    t2(WRITE_DTYPES, src, "float8_e8m0fnu,complex64,float32")
    res = subprocess.run([ckpt_bin, "convert", str(src), str(dst)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    lines = res.stderr.decode().splitlines()
    assert len(lines) == 1 and "C64, F8_E8M0" in lines[0], lines


# ---- ckpt scan against what torch 2.6's weights_only reader accepts ---------

WEIGHTS_ONLY = r'''
import pickle
done = set(json.load(open(sys.argv[2]))) if len(sys.argv) > 2 else set()
with open(sys.argv[1]) as f, open(sys.argv[1] + ".out", "a") as out:
    for path in f.read().split("\n"):
        if not path or path in done:
            continue
        out.write(json.dumps({"path": path, "start": True}) + "\n"); out.flush()
        try:
            torch.load(path, weights_only=True, map_location="cpu")
            ok, why = True, ""
        except Exception as e:
            ok, why = False, f"{type(e).__name__}: {str(e)[-400:]}"
        out.write(json.dumps({"path": path, "loads": ok, "why": why}) + "\n"); out.flush()
'''


def weights_only_loads(paths, workdir):
    """path -> (torch 2.x's torch.load(weights_only=True) succeeded, why not);
    a file that kills the interpreter counts as not loaded."""
    lst = workdir / "paths.txt"
    lst.write_text("\n".join(map(str, paths)))
    results = {}
    for _ in range(len(paths) + 1):
        done = workdir / "done.json"
        done.write_text(json.dumps(sorted(results)))
        argv = [*shlex.split(T2), "-c", PRELUDE + WEIGHTS_ONLY, str(lst), str(done)]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=900)
        started = None
        for line in pathlib.Path(str(lst) + ".out").read_text().splitlines():
            r = json.loads(line)
            if r.get("start"):
                started = r["path"]
            else:
                results[r["path"]] = (r["loads"], r["why"])
                started = None
        if proc.returncode == 0:
            break
        assert started, proc.stderr.decode()[-3000:]
        results[started] = (False, f"crashed ({proc.returncode})")
    return results


def test_scan_safe_means_torch2_weights_only_loads(t2_info, ckpt_bin, torch_files, tmp_path):
    """Every file `ckpt scan` calls safe, torch 2.6 loads with weights_only=True
    (torch-made files and the differential's hostile and benign variants);
    where scan states torch_weights_only_loads, it is what torch 2.6 does."""
    import diffgen

    paths = []
    for i, v in enumerate(diffgen.variants()):
        p = tmp_path / f"v{i:03d}"
        p.write_bytes(v.data)
        paths.append(p)
    paths += [c.path for c in torch_files.values()]
    versioned = tmp_path / "versioned.pth"
    torch.save(training_checkpoint(), versioned)
    paths.append(versioned)
    res = subprocess.run([ckpt_bin, "scan", "--json", *map(str, paths)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, timeout=600)
    assert res.returncode in (0, 1), res.stderr.decode()
    scanned = {f["file"]: f for f in json.loads(res.stdout)["files"]}
    torch_formats = ("torch-zip", "torch-legacy")
    loads = weights_only_loads(paths, tmp_path)
    wrong = []
    for p in map(str, paths):
        f = scanned[p]
        ok, why = loads[p]
        # true promises that torch loads it; false also stands for "unsafe,
        # whatever torch does" (an ambiguous archive torch may well load)
        if f["torch_weights_only_loads"] and not ok:
            wrong.append(f"{p}: scan says torch_weights_only_loads=true, torch 2.6: {why}")
        if not f["torch_weights_only_loads"] and ok and f["verdict"] != "unsafe":
            wrong.append(f"{p}: scan says {f['verdict']} and torch_weights_only_loads=false, "
                         f"torch 2.6 loads it")
        if f.get("verdict") == "safe" and f.get("format") in torch_formats and not ok:
            wrong.append(f"{p} ({f.get('format')}): scan says safe, torch 2.6 refuses: {why}")
    assert not wrong, "\n".join(wrong)
    assert not loads[str(versioned)][0]     # TorchVersion: torch 2.6 refuses it
    assert scanned[str(versioned)]["verdict"] != "safe"
