#!/usr/bin/python3
"""Benchmarks ckpt against PyTorch, numpy and the raw I/O of the machine.

Run by `make bench` (which builds a Release tree first), or by hand:

    /usr/bin/python3 bench/run.py --build BUILD_DIR [--mb 1024] [--reps 5]
                                  [--dir SCRATCH] [--out bench/RESULTS.md]

Environment: BENCH_MB, BENCH_REPS, BENCH_DIR override the defaults.

Every measurement is a fresh process (ckpt_bench, the ckpt CLI, cat, or this
script in --child mode for torch and numpy) that times only the operation
itself (imports, setup and process start stay outside, except for the CLI
rows, which time the whole command, as a user sees it) and reports its peak
RSS. Each row is the median of the repetitions. The page cache is warm: the
inputs are read once before measuring, and dropping the cache needs root.
Outputs are removed and dirty pages synced (sync(2)) before each repetition,
so that one run's writeback does not slow the next.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = "/usr/bin/python3"


# ---- child mode: torch and numpy references, one measurement each -------

def child(argv):
    mode, path = argv[0], argv[1]
    out = argv[2] if len(argv) > 2 else None
    import numpy as np
    import torch

    def done(t):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"s": t, "maxrss_kb": rss}))

    if mode in ("load", "load-wo"):
        t0 = time.perf_counter()
        obj = torch.load(path, weights_only=(mode == "load-wo"))
        t1 = time.perf_counter()
        del obj
        done(t1 - t0)
    elif mode == "dcp-to-torch":
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
        t0 = time.perf_counter()
        dcp_to_torch_save(path, out)
        t1 = time.perf_counter()
        done(t1 - t0)
    elif mode in ("save", "save-fsync"):
        sd = torch.load(path)
        t0 = time.perf_counter()
        torch.save(sd, out)
        if mode == "save-fsync":
            fd = os.open(out, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        t1 = time.perf_counter()
        done(t1 - t0)
    elif mode in ("load-sd", "load-sd-f32"):
        # a module with a parameter per tensor, as the file names them, its
        # memory allocated and touched (torch.zeros), then the timed load
        shapes = {k: (v.shape, v.dtype) for k, v in torch.load(path).items()}
        model = torch.nn.Module()
        for name, (shape, dtype) in shapes.items():
            mod = model
            *path_, last = name.split(".")
            for part in path_:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            dt = torch.float32 if mode == "load-sd-f32" else dtype
            mod.register_parameter(last, torch.nn.Parameter(torch.zeros(shape, dtype=dt)))
        t0 = time.perf_counter()
        model.load_state_dict(torch.load(path), strict=True)
        t1 = time.perf_counter()
        done(t1 - t0)
    elif mode == "np-save":
        arrays = [t.numpy() for t in torch.load(path).values()]
        t0 = time.perf_counter()
        with open(out, "wb") as f:
            for a in arrays:
                np.save(f, a)
        t1 = time.perf_counter()
        done(t1 - t0)
    elif mode == "np-load":
        count = int(argv[3])
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            arrays = [np.load(f) for _ in range(count)]
        t1 = time.perf_counter()
        del arrays
        done(t1 - t0)
    else:
        raise SystemExit(f"unknown child mode {mode}")


# ---- inputs -----------------------------------------------------------

def generate(d, mb):
    """The checkpoints, made by torch.save once per size."""
    code = r"""
import sys, torch
d, mb = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
def big(dtype, name, total_mb):
    n = total_mb * (1 << 20) // 128 // torch.tensor([], dtype=dtype).element_size()
    cols = 1024
    rows = max(1, n // cols)
    sd = {f"layer{i}.weight": torch.randn(rows, cols).to(dtype) for i in range(128)}
    torch.save(sd, f"{d}/{name}")
big(torch.float32, f"f32-{mb}.pth", mb)
big(torch.float32, f"f32-{max(1, mb // 16)}.pth", max(1, mb // 16))
big(torch.bfloat16, f"bf16-{mb}.pth", mb)
sd = {f"block{i // 10}.layer{i % 10}.weight": torch.randn(16, 16) for i in range(10000)}
torch.save(sd, f"{d}/small-10000.pth")
# a training checkpoint heavy in pickle: optimizer state of many small values
opt = {"state": {i: {"step": i, "lr": 1e-3 * i, "betas": (0.9, 0.999),
                     "name": f"param.{i}", "exp_avg": torch.zeros(4)}
                 for i in range(50000)},
       "param_groups": [{"params": list(range(50000)), "lr": 1e-3}]}
torch.save({"epoch": 7, "optimizer": opt, "metrics": {f"m{i}": float(i) for i in range(20000)}},
           f"{d}/pickle-heavy.pth")
"""
    names = [f"f32-{mb}.pth", f"f32-{max(1, mb // 16)}.pth", f"bf16-{mb}.pth",
             "small-10000.pth", "pickle-heavy.pth"]
    if not all(os.path.exists(os.path.join(d, n)) for n in names):
        print(f"generating checkpoints in {d} ...", flush=True)
        subprocess.run([PY, "-c", code, d, str(mb)], check=True)
    return names


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---- measuring ------------------------------------------------------------

def run_once(cmd, stdout_path=None, json_out=True):
    """Runs cmd, returns (seconds, maxrss_kb): the child's own timing when
    it prints one, else the wall time of the whole process."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.perf_counter()
    p.returncode = os.waitstatus_to_exitcode(status)
    stdout = p.stdout.read() if p.stdout else b""
    stderr = p.stderr.read()
    if stdout_path:
        out.close()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {stderr.decode()}")
    if json_out:
        r = json.loads(stdout.decode().strip().splitlines()[-1])
        return r["s"], r["maxrss_kb"]
    return t1 - t0, ru.ru_maxrss


def measure_group(specs, reps, log):
    """Runs each spec (key, cmd, outputs, kwargs) reps times, round-robin,
    starting each round one place later: a disturbance (another process,
    the host reclaiming memory this guest freed) then falls on every
    contender alike instead of on whoever runs after the largest free."""
    times = {k: [] for k, *_ in specs}
    rss = {k: [] for k, *_ in specs}
    for rep in range(reps):
        for i in range(len(specs)):
            key, cmd, outputs, kw = specs[(i + rep) % len(specs)]
            for o in outputs:
                if os.path.exists(o):
                    os.unlink(o)
            os.sync()
            t, m = run_once(cmd, **kw)
            times[key].append(t)
            rss[key].append(m)
            for o in outputs:
                if os.path.exists(o):
                    os.unlink(o)
    out = {}
    for key, *_ in specs:
        v = times[key]
        out[key] = {"s": statistics.median(v), "min": min(v), "max": max(v),
                    "maxrss_kb": max(rss[key])}
        log(f"  {key}: median {fmt_s(out[key]['s'])}, min {fmt_s(out[key]['min'])}")
    return out


# ---- the report ---------------------------------------------------------

def machine_info(d):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    fs = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", d],
                        stdout=subprocess.PIPE, text=True).stdout.strip() or "?"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram": f"{mem_kb / (1 << 20):.1f} GiB",
            "kernel": platform.release(), "fs": f"{fs} ({d})"}


def versions(build, ckpt_bin):
    v = subprocess.run([ckpt_bin, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    tv = subprocess.run([PY, "-c", "import torch, numpy; print(torch.__version__, numpy.__version__)"],
                        stdout=subprocess.PIPE, text=True).stdout.split()
    cc, build_type = "?", "?"
    cache = os.path.join(build, "CMakeCache.txt")
    if os.path.exists(cache):
        with open(cache) as f:
            for line in f:
                if line.startswith("CMAKE_C_COMPILER:"):
                    comp = line.split("=", 1)[1].strip()
                    cc = subprocess.run([comp, "--version"], stdout=subprocess.PIPE,
                                        text=True).stdout.splitlines()[0]
                if line.startswith("CMAKE_BUILD_TYPE:"):
                    build_type = line.split("=", 1)[1].strip()
    cc += f", {build_type} build"
    return {"ckpt": v, "torch": tv[0] if tv else "?", "numpy": tv[1] if len(tv) > 1 else "?",
            "python": platform.python_version(), "compiler": cc}


def fmt_s(s):
    return f"{s * 1000:.1f} ms" if s < 1 else f"{s:.3f} s"


def fmt_mb(kb):
    return f"{kb / 1024:.0f} MiB"


# ---- DCP consolidation ----------------------------------------------------

TORCH2 = ["sh", os.path.join(ROOT, "scripts", "torch2-chroot.sh"), "python"]


def torch2_ready():
    return subprocess.run(["sh", TORCH2[1], "check"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def dcp_bench(a, cli, group, results):
    """Consolidation of a 4-rank DCP directory (torch 2.6's dcp.save with gloo
    where the chroot is there, else torch 1.13's save_state_dict) into one
    .pth: ckpt convert vs dcp_to_torch_save (torch 2.6) vs cat of the files.
    Returns its table rows."""
    mb = int(os.environ.get("BENCH_DCP_MB", str(min(a.mb, 256))))
    d = os.path.join(a.dir, f"dcp-4x-{mb}")
    t2 = torch2_ready()
    if not os.path.exists(os.path.join(d, ".metadata")):
        print(f"generating a 4-rank DCP checkpoint of {mb} MiB in {d} ...", flush=True)
        gen = os.path.join(ROOT, "tests", "interop", "dcpgen.py")
        env = dict(os.environ, DCPGEN_MB=str(mb))
        subprocess.run([*(TORCH2 if t2 else [PY]), gen, "bench", d, "4"], check=True, env=env)
    files = sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".distcp"))
    for p in files:
        warm(p)
    out_pth = os.path.join(a.dir, "dcp-out.pth")
    out_raw = os.path.join(a.dir, "dcp-out.raw")
    specs = [("dcp.conv", [cli, "convert", "-q", "--no-fsync", d, out_pth], [out_pth],
              {"json_out": False}),
             ("dcp.cat", ["cat", *files], [out_raw], {"stdout_path": out_raw, "json_out": False})]
    if t2:
        specs.append(("dcp.torch", [*TORCH2, os.path.abspath(__file__), "--child",
                                    "dcp-to-torch", d, out_pth], [out_pth]))
    group(*specs)
    r = results
    label = f"consolidate a 4-rank DCP dir ({mb} MiB) -> .pth"
    rows = []
    for ref, key in (("cat of the .distcp files", "dcp.cat"),
                     ("dcp_to_torch_save (torch 2.6)", "dcp.torch")):
        if key not in r:
            continue
        ck, rf = r["dcp.conv"], r[key]
        rows.append((label, fmt_s(ck["s"]), fmt_mb(ck["maxrss_kb"]), ref, fmt_s(rf["s"]),
                     fmt_mb(rf["maxrss_kb"]), f"{ck['s'] / rf['s']:.3g}x",
                     f"{ck['min'] / rf['min']:.3g}x",
                     "whole commands" if key == "dcp.cat" else "dcp_to_torch_save timed alone"))
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_MB", "1024")))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "5")))
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/ckpt-bench"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--dcp-only", action="store_true",
                    help="only the DCP consolidation rows, printed (RESULTS.md untouched)")
    a = ap.parse_args()

    bench = os.path.join(a.build, "ckpt_bench")
    cli = os.path.join(a.build, "ckpt")
    for b in (bench, cli):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: build first (make bench does)")
    os.makedirs(a.dir, exist_ok=True)
    free = shutil.disk_usage(a.dir).free
    need = (a.mb << 20) * 6
    if free < need:
        raise SystemExit(f"{a.dir} has {free >> 20} MiB free, the run needs about {need >> 20}")

    if a.dcp_only:
        res = {}

        def dcp_group(*specs):
            full = [(sp[0], sp[1], sp[2] if len(sp) > 2 else (), sp[3] if len(sp) > 3 else {})
                    for sp in specs]
            res.update(measure_group(full, a.reps, lambda t: print(t, flush=True)))
        for t in dcp_bench(a, cli, dcp_group, res):
            print("  ".join(t))
        return
    names = generate(a.dir, a.mb)
    f32, f32s, bf16, small, heavy = (os.path.join(a.dir, n) for n in names)
    for p in (f32, f32s, bf16, small, heavy):
        warm(p)
    out_pth = os.path.join(a.dir, "out.pth")
    out_st = os.path.join(a.dir, "out.safetensors")
    out_raw = os.path.join(a.dir, "out.raw")
    R = a.reps
    rows = []      # (group, what, ckpt result, reference name, reference result, ratio text)
    results = {}

    def group(*specs):
        full = [(sp[0], sp[1], sp[2] if len(sp) > 2 else (), sp[3] if len(sp) > 3 else {})
                for sp in specs]
        results.update(measure_group(full, R, lambda t: print(t, flush=True)))

    def torch_child(mode, *args):
        return [PY, os.path.abspath(__file__), "--child", mode, *args]

    gib = a.mb / 1024
    size_label = f"{a.mb} MiB" if a.mb < 1024 else f"{gib:g} GiB"
    print(f"measuring ({R} repetitions each, warm page cache) ...", flush=True)
    cli_kw = {"json_out": False}
    # open
    group(("open.f32", [bench, "open", f32]), ("open.f32s", [bench, "open", f32s]),
          ("open.bf16", [bench, "open", bf16]), ("open.small", [bench, "open", small]))
    group(("torch.load.f32", torch_child("load", f32)),
          ("torch.load.bf16", torch_child("load", bf16)),
          ("torch.load.small", torch_child("load", small)))
    # materialise
    group(("mat.f32", [bench, "materialise", f32]), ("pread.f32", [bench, "pread", f32]))
    group(("mat.bf16", [bench, "materialise", bf16]), ("pread.bf16", [bench, "pread", bf16]))
    group(("mat.small", [bench, "materialise", small]),
          ("pread.small", [bench, "pread", small]))
    # save from memory
    group(("save.f32", [bench, "save", f32, out_pth], [out_pth]),
          ("save-st.f32", [bench, "save-st", f32, out_st], [out_st]),
          ("write.f32", [bench, "write", f32, out_raw], [out_raw]),
          ("torch.save.f32", torch_child("save", f32, out_pth), [out_pth]))
    group(("save.fsync.f32", [bench, "save", f32, out_pth, "fsync"], [out_pth]),
          ("write.fsync.f32", [bench, "write", f32, out_raw, "fsync"], [out_raw]),
          ("torch.save.fsync.f32", torch_child("save-fsync", f32, out_pth), [out_pth]))
    group(("save.small", [bench, "save", small, out_pth], [out_pth]),
          ("write.small", [bench, "write", small, out_raw], [out_raw]),
          ("torch.save.small", torch_child("save", small, out_pth), [out_pth]))
    # convert (whole commands)
    group(("cat.f32", ["cat", f32], [out_raw], {"stdout_path": out_raw, "json_out": False}),
          ("conv.st.f32", [cli, "convert", "-q", "--no-fsync", f32, out_st], [out_st], cli_kw),
          ("conv.pth.f32", [cli, "convert", "-q", "--no-fsync", f32, out_pth], [out_pth],
           cli_kw),
          ("conv.bf16.f32", [cli, "convert", "-q", "--no-fsync", "--dtype", "bfloat16", f32,
                             out_st], [out_st], cli_kw))
    # load into a model
    group(("load.f32", [bench, "load", f32, "copy"]),
          ("pread-warm.f32", [bench, "pread-warm", f32]),
          ("load.zc.f32", [bench, "load", f32, "zero-copy"]),
          ("torch.load-sd.f32", torch_child("load-sd", f32)))
    group(("load.bf16", [bench, "load", bf16, "f32"]),
          ("torch.load-sd.bf16", torch_child("load-sd-f32", bf16)))
    # scan
    group(("scan.f32", [bench, "scan", f32]), ("scan.heavy", [bench, "scan", heavy]),
          ("torch.load-wo.f32", torch_child("load-wo", f32)),
          ("torch.load.heavy", torch_child("load", heavy)))
    # numpy: np-load reads what np-save wrote, made once outside the timing
    npy = os.path.join(a.dir, "ref.npy")
    run_once(torch_child("np-save", f32, npy))
    group(("np.save.f32", torch_child("np-save", f32, out_raw), [out_raw]),
          ("np.load.f32", torch_child("np-load", npy, "-", "128")))
    os.unlink(npy)

    r = results
    fsize = os.path.getsize(f32)

    def ratio(x, y):
        return r[x]["s"] / r[y]["s"]

    def ratio_min(x, y):
        return r[x]["min"] / r[y]["min"]

    table = []

    def row(what, key, ref_name, ref_key, note=""):
        ck = r[key]
        ref = r[ref_key] if ref_key else None
        rat = f"{ck['s'] / ref['s']:.3g}x" if ref else ""
        rat_min = f"{ck['min'] / ref['min']:.3g}x" if ref else ""
        table.append((what, fmt_s(ck["s"]), fmt_mb(ck["maxrss_kb"]), ref_name,
                      fmt_s(ref["s"]) if ref else "", fmt_mb(ref["maxrss_kb"]) if ref else "",
                      rat, rat_min, note))

    row(f"open {size_label} f32 (128 tensors)", "open.f32", "torch.load", "torch.load.f32")
    row(f"open {a.mb // 16} MiB f32 (128 tensors)", "open.f32s", f"open {size_label}", "open.f32",
        "flat: same tensors, 1/16 of the bytes")
    row(f"open {size_label} bf16", "open.bf16", "torch.load", "torch.load.bf16")
    row("open 10,000 small tensors", "open.small", "torch.load", "torch.load.small")
    row(f"materialise {size_label} f32", "mat.f32", "pread floor", "pread.f32")
    row(f"materialise {size_label} f32", "mat.f32", "torch.load", "torch.load.f32")
    row(f"materialise {size_label} bf16", "mat.bf16", "pread floor", "pread.bf16")
    row("materialise 10,000 small tensors", "mat.small", "pread floor", "pread.small")
    row(f"save {size_label} f32 (.pth, page cache)", "save.f32", "raw write", "write.f32")
    row(f"save {size_label} f32 (.pth, page cache)", "save.f32", "torch.save", "torch.save.f32")
    row(f"save {size_label} f32 (.safetensors, page cache)", "save-st.f32", "raw write",
        "write.f32")
    row(f"save {size_label} f32 (.pth, fsync)", "save.fsync.f32", "raw write + fsync",
        "write.fsync.f32")
    row(f"save {size_label} f32 (.pth, fsync)", "save.fsync.f32", "torch.save + fsync",
        "torch.save.fsync.f32")
    row("save 10,000 small tensors (.pth)", "save.small", "raw write", "write.small")
    row("save 10,000 small tensors (.pth)", "save.small", "torch.save", "torch.save.small")
    row(f"load {size_label} f32 into a model (open + copy)", "load.f32",
        "pread floor (memory touched before)", "pread-warm.f32")
    row(f"load {size_label} f32 into a model (open + copy)", "load.f32",
        "torch.load + load_state_dict", "torch.load-sd.f32")
    row(f"load {size_label} f32 into a model (zero-copy)", "load.zc.f32",
        "torch.load + load_state_dict", "torch.load-sd.f32")
    row(f"load {size_label} bf16 into a float32 model", "load.bf16",
        "torch.load + load_state_dict", "torch.load-sd.bf16")
    row("convert pth -> safetensors", "conv.st.f32", "cat", "cat.f32")
    row("convert pth -> pth", "conv.pth.f32", "cat", "cat.f32")
    row("convert pth -> bf16 safetensors", "conv.bf16.f32", "cat", "cat.f32")
    row(f"scan {size_label} f32", "scan.f32", "torch.load(weights_only)", "torch.load-wo.f32")
    row("scan pickle-heavy checkpoint", "scan.heavy", "torch.load (1.13 weights_only refuses BINFLOAT)",
        "torch.load.heavy")
    table.extend(dcp_bench(a, cli, group, results))
    row(f"numpy save {size_label} (128 np.save)", "np.save.f32", "raw write", "write.f32",
        "reference")
    row(f"numpy load {size_label} (128 np.load)", "np.load.f32", "pread floor", "pread.f32",
        "reference")

    # targets: (text, value, limit, met)
    open_r = ratio("open.f32", "torch.load.f32")
    flat_r = ratio("open.f32", "open.f32s")
    mat_r = ratio("mat.f32", "pread.f32")
    save_r = ratio("save.f32", "write.f32")
    save_t = ratio("torch.save.f32", "save.f32")
    conv_r = ratio("conv.st.f32", "cat.f32")
    small_r = ratio("torch.load.small", "open.small")
    open_rss = r["open.f32"]["maxrss_kb"]
    # beyond the input: the save holds the tensors in memory, the convert maps
    # the input (each touched page counts in its RSS)
    save_extra = r["save.f32"]["maxrss_kb"] - r["write.f32"]["maxrss_kb"]
    conv_extra = r["conv.st.f32"]["maxrss_kb"] - fsize // 1024
    conv_pth_extra = r["conv.pth.f32"]["maxrss_kb"] - fsize // 1024
    def both(x, y, fmt="{:.3f}x"):
        return f"{fmt.format(ratio(x, y))} ({fmt.format(ratio_min(x, y))})"

    targets = [
        (f"open of a {size_label} .pth <= 1% of torch.load",
         f"{open_r * 100:.3f}% ({ratio_min('open.f32', 'torch.load.f32') * 100:.3f}%)",
         open_r <= 0.01),
        ("open flat as the tensor bytes grow (16x the bytes: <= 1.5x the time)",
         both("open.f32", "open.f32s", "{:.2f}x"), flat_r <= 1.5),
        ("materialise <= 1.1x the pread floor", both("mat.f32", "pread.f32"), mat_r <= 1.1),
        ("save <= 1.15x raw write (page cache)", both("save.f32", "write.f32"), save_r <= 1.15),
        ("save >= 3x faster than torch.save", both("torch.save.f32", "save.f32", "{:.2f}x"),
         save_t >= 3),
        ("convert pth -> safetensors <= 1.2x cat", both("conv.st.f32", "cat.f32"),
         conv_r <= 1.2),
        ("load into a C model (open + copy) <= 1.2x the pread floor",
         both("load.f32", "pread-warm.f32"), ratio("load.f32", "pread-warm.f32") <= 1.2),
        ("10,000-tensor file: open >= 20x faster than torch.load",
         both("torch.load.small", "open.small", "{:.1f}x"), small_r >= 20),
        ("peak memory of open O(metadata) (< 64 MiB)", fmt_mb(open_rss), open_rss < 64 * 1024),
        ("peak memory of save O(metadata) beyond the tensors (< 64 MiB)",
         fmt_mb(max(0, save_extra)), save_extra < 64 * 1024),
        ("peak memory of convert O(metadata) beyond the input map (< 64 MiB)",
         f"{fmt_mb(max(0, conv_extra))} (st), {fmt_mb(max(0, conv_pth_extra))} (pth)",
         conv_extra < 64 * 1024 and conv_pth_extra < 64 * 1024),
    ]

    mi = machine_info(a.dir)
    ve = versions(a.build, cli)
    lines = []
    lines.append("# ckpt benchmark results\n")
    lines.append(f"Written by `make bench` (bench/run.py) on {time.strftime('%Y-%m-%d %H:%M')}. "
                 f"Median of {R} runs, each in a fresh process; warm page cache (inputs read "
                 "once before; dropping the cache needs root), outputs removed and `sync` "
                 "before each run. Times are of the operation alone (imports and setup "
                 "outside), except the convert and cat rows, which time the whole command. "
                 "RSS is the process's peak (ru_maxrss), which counts the pages of a mapped "
                 "input that were touched, and for Python the interpreter with torch "
                 "imported.\n")
    lines.append("## Machine\n")
    lines.append(f"- CPU: {mi['cpu']}, {mi['cores']} cores")
    lines.append(f"- RAM: {mi['ram']}")
    lines.append(f"- kernel: Linux {mi['kernel']}")
    lines.append(f"- scratch filesystem: {mi['fs']}")
    lines.append(f"- {ve['ckpt']}; torch {ve['torch']}; numpy {ve['numpy']}; "
                 f"Python {ve['python']}; {ve['compiler']}\n")
    lines.append("## Results\n")
    lines.append("| operation | ckpt | ckpt peak RSS | reference | reference time | "
                 "reference peak RSS | ratio | ratio of the best runs | note |")
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for t in table:
        lines.append("| " + " | ".join(t) + " |")
    lines.append("")
    lines.append("## Targets\n")
    lines.append("Judged on the medians; the ratio of the best runs in parentheses.\n")
    lines.append("| target | measured | |")
    lines.append("|---|---:|---|")
    for text, val, ok in targets:
        lines.append(f"| {text} | {val} | {'met' if ok else '**missed**'} |")
    lines.append("")
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines.append(f.read())
    lines.append("## Spread (min to max of the runs)\n")
    for k, v in results.items():
        lines.append(f"- {k}: {fmt_s(v['min'])} .. {fmt_s(v['max'])}")
    lines.append("")
    text = "\n".join(lines)
    with open(a.out, "w") as f:
        f.write(text)
    # the table on the terminal too
    print()
    w = [max(len(t[i]) for t in table) for i in range(8)]
    for t in table:
        print("  ".join(t[i].ljust(w[i]) for i in range(8)))
    print()
    for text_, val, ok in targets:
        print(f"{'met   ' if ok else 'MISSED'}  {text_}: {val}")
    print(f"\nwrote {a.out}")
    if not a.keep:
        for p in (f32, f32s, bf16, small, heavy):
            os.unlink(p)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
