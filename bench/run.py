#!/usr/bin/python3
"""Benchmarks ckpt against PyTorch, numpy and the raw I/O of the machine.

Run by `make bench` (which builds a Release tree first), or by hand:

    /usr/bin/python3 bench/run.py --build BUILD_DIR [--mb 1024] [--reps 5]
                                  [--dir SCRATCH] [--out bench/RESULTS.md]

Environment: BENCH_MB, BENCH_REPS, BENCH_DIR override the defaults.

The Python package (python/ckpt over the --build tree's libckpt.so) gets its
own rows and section when it imports: ckpt.load with and without mmap and
ckpt.save against torch.load, torch.save, pread and write(2). --python-only
measures only those and replaces that section of --out, leaving the rest.

Every measurement is a fresh process (ckpt_bench, the ckpt CLI, cat, or this
script in --child mode for torch and numpy) that times only the operation
itself (imports, setup and process start stay outside, except for the CLI
rows, which time the whole command, as a user sees it) and reports its peak
RSS. Each row is the median of the repetitions. The page cache is warm: the
inputs are read once before measuring. The cold rows (run as root) empty the
page cache before every command (sync; echo 3 > /proc/sys/vm/drop_caches)
and compare with `cat FILE > /dev/null` in the same run; without root they are
skipped with a note. The newer peers (torch 2.6 torch.load(mmap=True),
safetensors) run in the Debian 13 chroot (scripts/torch2-chroot.sh) when it is
built. Outputs are removed and dirty pages synced (sync(2)) before each
repetition, so that one run's writeback does not slow the next.
"""
import argparse
import json
import os
import platform
import random
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
    elif mode in ("t2-load-mmap", "st-load-file", "st-safe-open"):
        # torch 2 and safetensors (in the Debian 13 chroot): the newer peers
        if mode == "t2-load-mmap":
            t0 = time.perf_counter()
            obj = torch.load(path, mmap=True, weights_only=True)
            t1 = time.perf_counter()
        elif mode == "st-load-file":
            from safetensors.torch import load_file
            t0 = time.perf_counter()
            obj = load_file(path)
            t1 = time.perf_counter()
        else:
            from safetensors import safe_open
            t0 = time.perf_counter()
            obj = {}
            with safe_open(path, framework="pt") as f:
                for k in f.keys():
                    obj[k] = f.get_tensor(k)
            t1 = time.perf_counter()
        del obj
        done(t1 - t0)
    elif mode == "np-load":
        count = int(argv[3])
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            arrays = [np.load(f) for _ in range(count)]
        t1 = time.perf_counter()
        del arrays
        done(t1 - t0)
    elif mode.startswith("py-"):
        py_child(mode, path, argv[2:], done)
    elif mode == "load-warm":
        # the second load in an interpreter that has loaded the file once:
        # imports, allocator and page cache warm, as in a long-lived process
        obj = torch.load(path)
        del obj
        t0 = time.perf_counter()
        obj = torch.load(path)
        t1 = time.perf_counter()
        del obj
        done(t1 - t0)
    else:
        raise SystemExit(f"unknown child mode {mode}")


# ---- child mode: the Python package (python/ckpt) -------------------------

def py_child(mode, path, rest, done):
    import gc

    import torch

    import ckpt

    if mode == "py-idle":
        # the interpreter with torch and ckpt imported: the baseline of the
        # peak RSS rows
        done(0.0)
    elif mode in ("py-load", "py-load-copy"):
        t0 = time.perf_counter()
        obj = ckpt.load(path, mmap=(mode == "py-load"))
        t1 = time.perf_counter()
        del obj
        gc.collect()
        done(t1 - t0)
    elif mode == "py-rss":
        # what a load adds to the process, by kind: private memory (RssAnon)
        # and mapped file pages (RssFile: the page cache, shared, which the
        # kernel maps a whole large folio at a time around a touched page)
        def status():
            out = {}
            with open("/proc/self/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "RssAnon", "RssFile"):
                        out[k] = int(v.split()[0])
            return out
        gc.collect()
        before = status()
        obj = ckpt.load(path, mmap=True)
        after = status()
        print(json.dumps({k: after[k] - before[k] for k in before}))
        del obj
    elif mode in ("py-save", "py-save-fsync"):
        import inspect
        sd = torch.load(path)  # ordinary memory, as torch.save's row has it
        kw = {}
        if "fsync" in inspect.signature(ckpt.save).parameters:
            kw["fsync"] = mode == "py-save-fsync"
        elif mode == "py-save":
            raise SystemExit("ckpt.save has no fsync option")
        t0 = time.perf_counter()
        ckpt.save(sd, rest[0], **kw)
        t1 = time.perf_counter()
        done(t1 - t0)
    else:
        raise SystemExit(f"unknown child mode {mode}")


def py_env(build):
    """The environment of a child that imports the package of this tree over
    the library of build (python/ is imported from the source tree)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "python")] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["CKPT_LIBRARY"] = os.path.join(os.path.abspath(build), "libckpt.so")
    e["LD_LIBRARY_PATH"] = os.pathsep.join(
        [os.path.abspath(build)] + ([e["LD_LIBRARY_PATH"]] if e.get("LD_LIBRARY_PATH") else []))
    return e


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


def can_drop_caches():
    return os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)


def drop_caches():
    """Empties the page cache (root only): the next read comes from the disk."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def torch2_cmd():
    """How to run this script in the Debian 13 chroot (torch 2.6, safetensors), or
    None when it is not built here."""
    script = os.path.join(ROOT, "scripts", "torch2-chroot.sh")
    if not os.path.exists(script) or os.geteuid() != 0:
        return None
    ok = subprocess.run(["sh", script, "check"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0
    return ["sh", script, "python"] if ok else None


def remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---- measuring ------------------------------------------------------------

def run_once(cmd, stdout_path=None, json_out=True, env=None):
    """Runs cmd, returns (seconds, maxrss_kb): the child's own timing when
    it prints one, else the wall time of the whole process."""
    out = open(stdout_path, "wb") if stdout_path else subprocess.PIPE
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env)
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
        return r["s"], r["maxrss_kb"], r
    return t1 - t0, ru.ru_maxrss, {}


def measure_group(specs, reps, log, cold=False):
    """Runs each spec (key, cmd, outputs, kwargs) reps times, every
    contender once a round, in an order shuffled afresh each round (seeded:
    the same from run to run): a disturbance (another process, the host
    reclaiming memory this guest freed) then falls on every contender alike
    instead of on whoever runs after the largest free. A rotation would keep
    each contender behind the same one every round. cold=True empties the
    page cache before each run (root only)."""
    times = {k: [] for k, *_ in specs}
    rss = {k: [] for k, *_ in specs}
    totals = {k: [] for k, *_ in specs}
    shuffle = random.Random(len(specs) * 1000 + reps)
    for rep in range(reps):
        order = list(range(len(specs)))
        shuffle.shuffle(order)
        for i in order:
            key, cmd, outputs, kw = specs[i]
            for o in outputs:
                remove(o)
            os.sync()
            if cold:
                drop_caches()
            t, m, extra = run_once(cmd, **kw)
            times[key].append(t)
            rss[key].append(m)
            if "total" in extra:
                totals[key].append(extra["total"])
            for o in outputs:
                remove(o)
    out = {}
    for key, *_ in specs:
        v = times[key]
        out[key] = {"s": statistics.median(v), "min": min(v), "max": max(v),
                    "maxrss_kb": max(rss[key])}
        if totals[key]:
            out[key]["total"] = statistics.median(totals[key])
            out[key]["total_min"] = min(totals[key])
        log(f"  {key}: median {fmt_s(out[key]['s'])}, min {fmt_s(out[key]['min'])}")
    return out


# ---- the report ---------------------------------------------------------

# ---- metadata-heavy files --------------------------------------------------
# Files of many small tensors, where an open is all metadata: the whole `ckpt
# verify -q` process (start, open, index, every CRC, close, exit) against
# torch.load in an interpreter that has loaded the file once already. The
# rows have a section of their own in RESULTS.md; `run.py --only meta`
# measures just them and rewrites just that section.

META_SMALL = "small-10000.pth"
META_OPTIM = "optim-100000.pth"
META_OPTIM_TENSORS = 3 * 33334
META_TITLE = "## Metadata-heavy files"


def meta_generate(d):
    """The 10,000 small tensors of the open rows (the same recipe as
    generate's) and a 100,000-tensor optimizer state (Adam over 33,334
    parameters: step, exp_avg and exp_avg_sq each), made once."""
    small, optim = os.path.join(d, META_SMALL), os.path.join(d, META_OPTIM)
    code = r"""
import sys, torch
small, optim = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
if small != "-":
    sd = {f"block{i // 10}.layer{i % 10}.weight": torch.randn(16, 16) for i in range(10000)}
    torch.save(sd, small)
if optim != "-":
    n = 33334
    state = {i: {"step": torch.tensor(float(i)), "exp_avg": torch.randn(8),
                 "exp_avg_sq": torch.rand(8)} for i in range(n)}
    groups = [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
               "amsgrad": False, "params": list(range(n))}]
    torch.save({"state": state, "param_groups": groups}, optim)
"""
    want = [p if not os.path.exists(p) else "-" for p in (small, optim)]
    if want != ["-", "-"]:
        print(f"generating {', '.join(p for p in want if p != '-')} ...", flush=True)
        subprocess.run([PY, "-c", code, *want], check=True)
    return small, optim


def meta_measure(group, torch_child, cli, small, optim):
    kw = {"json_out": False}
    group(("verify.small", [cli, "verify", "-q", small], (), kw),
          ("torch.load-warm.small", torch_child("load-warm", small)))
    group(("verify.optim", [cli, "verify", "-q", optim], (), kw),
          ("torch.load-warm.optim", torch_child("load-warm", optim)))


def meta_section(r, optim, reps):
    """The section's lines: its table and its targets."""
    def row(what, key, ref_key):
        ck, ref = r[key], r[ref_key]
        return (f"| {what} | {fmt_s(ck['s'])} | {fmt_mb(ck['maxrss_kb'])} | "
                f"{fmt_s(ref['s'])} | {fmt_mb(ref['maxrss_kb'])} | "
                f"{ref['s'] / ck['s']:.1f}x | {ref['min'] / ck['min']:.1f}x |")
    small_x = r["torch.load-warm.small"]["s"] / r["verify.small"]["s"]
    small_xm = r["torch.load-warm.small"]["min"] / r["verify.small"]["min"]
    optim_p = r["verify.optim"]["s"] / r["torch.load-warm.optim"]["s"]
    optim_pm = r["verify.optim"]["min"] / r["torch.load-warm.optim"]["min"]
    # what the open holds beyond the file's own pages (mapped and touched)
    extra = r["verify.optim"]["maxrss_kb"] * 1024 - os.path.getsize(optim)
    per = extra / META_OPTIM_TENSORS
    targets = [
        ("10,000 small tensors: `ckpt verify -q` (whole process) >= 20x faster than a warm "
         "torch.load", f"{small_x:.1f}x ({small_xm:.1f}x)", small_x >= 20),
        ("100,000-tensor optimizer state: `ckpt verify -q` (whole process) < 10% of a warm "
         "torch.load", f"{optim_p * 100:.1f}% ({optim_pm * 100:.1f}%)", optim_p < 0.10),
        ("100,000-tensor optimizer state: peak memory O(metadata), beyond the file's own "
         "bytes < 1.5 KiB per tensor", f"{per:.0f} bytes per tensor", per < 1536),
    ]
    lines = [META_TITLE + "\n",
             f"Written by `bench/run.py` on {time.strftime('%Y-%m-%d %H:%M')}, median of "
             f"{reps} interleaved rounds, load average {os.getloadavg()[0]:.1f} at the end. "
             "ckpt's time is the whole `ckpt verify -q FILE` process (start, open, index, "
             "the CRC of every record, close, exit); torch.load's is a second load in an "
             "interpreter that has loaded the file once (imports, allocator and page cache "
             "warm). Peak RSS counts the pages of the mapped file.\n",
             "| file | ckpt verify -q | ckpt peak RSS | torch.load (warm) | torch peak RSS | "
             "ckpt faster by | on the best runs |",
             "|---|---:|---:|---:|---:|---:|---:|",
             row("10,000 small tensors (16x16 float32)", "verify.small", "torch.load-warm.small"),
             row("100,000-tensor Adam state (33,334 parameters)", "verify.optim",
                 "torch.load-warm.optim"),
             "",
             "| target | measured (best runs) | |", "|---|---:|---|"]
    for text, val, ok in targets:
        lines.append(f"| {text} | {val} | {'met' if ok else '**missed**'} |")
    lines.append("")
    return lines, targets


def meta_only(a, cli):
    """`run.py --only meta`: these rows alone, their section of the results
    file rewritten (appended when it has none)."""
    os.makedirs(a.dir, exist_ok=True)
    small, optim = meta_generate(a.dir)
    for p in (small, optim):
        warm(p)
    results = {}

    def group(*specs):
        full = [(sp[0], sp[1], sp[2] if len(sp) > 2 else (), sp[3] if len(sp) > 3 else {})
                for sp in specs]
        results.update(measure_group(full, a.reps, lambda t: print(t, flush=True)))

    def torch_child(mode, *args):
        return [PY, os.path.abspath(__file__), "--child", mode, *args]

    print(f"measuring ({a.reps} repetitions each, warm page cache) ...", flush=True)
    meta_measure(group, torch_child, cli, small, optim)
    section, targets = meta_section(results, optim, a.reps)
    text = open(a.out).read() if os.path.exists(a.out) else ""
    start = text.find(META_TITLE)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section)
    else:
        end = text.find("\n## ", start + len(META_TITLE))
        text = text[:start] + "\n".join(section) + (text[end + 1:] if end >= 0 else "")
    # the notes copied into the file follow bench/NOTES.md
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            body = f.read()
        head = body.split("\n", 1)[0]
        start = text.find(head) if head.startswith("## ") else -1
        end = text.find("\n## Spread", start) if start >= 0 else -1
        if start >= 0 and end >= 0:
            text = text[:start] + body + text[end:]
    with open(a.out, "w") as f:
        f.write(text)
    print("\n".join(section[2:]))
    print(f"wrote {a.out}")
    if not a.keep:
        for p in (small, optim):
            os.unlink(p)


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
    v = (subprocess.run([ckpt_bin, "--version"], stdout=subprocess.PIPE, text=True).stdout
         .strip().splitlines() or ["?"])[0]
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


PY_BEGIN = "<!-- python package: begin (bench/run.py writes this section) -->"
PY_END = "<!-- python package: end -->"


def python_section(a, bench, measure, f32, small, out_pth, out_raw, size_label):
    """The package's rows (python/ckpt over the library of --build) against
    torch and raw I/O, each group interleaved. Returns the section's
    markdown lines and the targets, or None when the package is missing."""
    env = py_env(a.build)
    probe = subprocess.run(
        [PY, "-c", "import inspect, ckpt; print('fsync' in inspect.signature(ckpt.save).parameters)"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if probe.returncode != 0:
        print(f"skipping the Python package's rows: import ckpt failed: "
              f"{probe.stderr.strip().splitlines()[-1:] or probe.returncode}", flush=True)
        return None
    has_fsync = probe.stdout.strip() == "True"
    pkw = {"env": env}
    load_before = os.getloadavg()

    def py(mode, *args):
        return [PY, os.path.abspath(__file__), "--child", mode, *args]

    print("measuring the Python package ...", flush=True)
    r = {}
    r.update(measure(("py.load.f32", py("py-load", f32), (), pkw),
                     ("py.load.copy.f32", py("py-load-copy", f32), (), pkw),
                     ("py.pread.f32", [bench, "pread", f32], (), {}),
                     ("py.torch.load.f32", py("load", f32), (), {}),
                     ("py.idle", py("py-idle", f32), (), pkw)))
    r.update(measure(("py.load.small", py("py-load", small), (), pkw),
                     ("py.load.copy.small", py("py-load-copy", small), (), pkw),
                     ("py.torch.load.small", py("load", small), (), {})))
    # ckpt.save without fsync against write(2) into the page cache; a
    # package whose save always syncs is compared with write + fsync
    save_mode, wr = ("py-save", [bench, "write", f32, out_raw]) if has_fsync else \
        ("py-save-fsync", [bench, "write", f32, out_raw, "fsync"])
    r.update(measure(("py.save.f32", py(save_mode, f32, out_pth), (out_pth,), pkw),
                     ("py.write.f32", wr, (out_raw,), {}),
                     ("py.torch.save.f32", py("save" if has_fsync else "save-fsync", f32, out_pth),
                      (out_pth,), {})))
    load_after = os.getloadavg()
    rss_split = json.loads(subprocess.run(py("py-rss", f32), env=env, check=True,
                                          stdout=subprocess.PIPE, text=True).stdout)

    def rat(x, y, key="s"):
        return r[x][key] / r[y][key]

    table = []

    def row(what, key, ref_name, ref_key):
        ck, ref = r[key], r[ref_key]
        table.append((what, fmt_s(ck["s"]), fmt_mb(ck["maxrss_kb"]), ref_name, fmt_s(ref["s"]),
                      fmt_mb(ref["maxrss_kb"]), f"{rat(key, ref_key):.3g}x",
                      f"{rat(key, ref_key, 'min'):.3g}x"))

    sync_note = "" if has_fsync else " + fsync"
    row(f"ckpt.load {size_label} f32 (mmap=True)", "py.load.f32", "torch.load", "py.torch.load.f32")
    row(f"ckpt.load {size_label} f32 (mmap=False)", "py.load.copy.f32", "pread floor (fresh memory)",
        "py.pread.f32")
    row(f"ckpt.load {size_label} f32 (mmap=False)", "py.load.copy.f32", "torch.load",
        "py.torch.load.f32")
    row("ckpt.load 10,000 small tensors (mmap=True)", "py.load.small", "torch.load",
        "py.torch.load.small")
    row("ckpt.load 10,000 small tensors (mmap=False)", "py.load.copy.small", "torch.load",
        "py.torch.load.small")
    row(f"ckpt.save {size_label} f32 (.pth{sync_note})", "py.save.f32", f"raw write{sync_note}",
        "py.write.f32")
    row(f"ckpt.save {size_label} f32 (.pth{sync_note})", "py.save.f32", f"torch.save{sync_note}",
        "py.torch.save.f32")

    def both(x, y, fmt="{:.3f}x"):
        return f"{fmt.format(rat(x, y))} ({fmt.format(rat(x, y, 'min'))})"

    extra_rss = r["py.load.f32"]["maxrss_kb"] - r["py.idle"]["maxrss_kb"]
    anon = rss_split.get("RssAnon", 0)
    targets = [
        (f"ckpt.load (mmap) of {size_label} <= 2% of torch.load",
         f"{rat('py.load.f32', 'py.torch.load.f32') * 100:.3f}% "
         f"({rat('py.load.f32', 'py.torch.load.f32', 'min') * 100:.3f}%)",
         rat("py.load.f32", "py.torch.load.f32") <= 0.02),
        ("ckpt.load(mmap=False) <= 1.1x the pread floor into fresh memory",
         both("py.load.copy.f32", "py.pread.f32"), rat("py.load.copy.f32", "py.pread.f32") <= 1.1),
        ("ckpt.load(mmap=False) faster than torch.load", both("py.load.copy.f32", "py.torch.load.f32"),
         rat("py.load.copy.f32", "py.torch.load.f32") < 1),
        ("10,000 small tensors: ckpt.load >= 5x faster than torch.load",
         both("py.torch.load.small", "py.load.small", "{:.1f}x"),
         rat("py.torch.load.small", "py.load.small") >= 5),
        (f"ckpt.save <= 1.1x raw write{sync_note}", both("py.save.f32", "py.write.f32"),
         rat("py.save.f32", "py.write.f32") <= 1.1),
        (f"ckpt.save faster than torch.save{sync_note}", both("py.save.f32", "py.torch.save.f32"),
         rat("py.save.f32", "py.torch.save.f32") < 1),
        ("memory of ckpt.load(mmap=True) O(metadata): private memory it adds (RssAnon; "
         "< 64 MiB)", f"{fmt_mb(max(0, anon))} (peak RSS beyond the interpreter, mapped file "
         f"pages included: {fmt_mb(max(0, extra_rss))}; RssFile added: "
         f"{fmt_mb(max(0, rss_split.get('RssFile', 0)))})", anon < 64 * 1024),
    ]
    busy = max(load_before[0], load_after[0]) > 1.0
    lines = [PY_BEGIN, "## The Python package (python/ckpt)\n"]
    lines.append(
        f"Written by `make bench` (bench/run.py) on {time.strftime('%Y-%m-%d %H:%M')}. The package "
        f"of this tree over the library of `{os.path.relpath(a.build, ROOT)}`, under "
        f"{PY} (torch {torch_version()}). Each group of rows ran interleaved, {a.reps} rounds, "
        "each run a fresh process timing the call alone (`ckpt.load(path)`, `torch.load(path)`, "
        "`ckpt.save(sd, path)` from tensors in ordinary memory); medians, the ratio of the best "
        "runs beside them. The pread and raw write floors are ckpt_bench's (C). Peak RSS counts "
        f"the interpreter with torch imported ({fmt_mb(r['py.idle']['maxrss_kb'])} with ckpt "
        "too, doing nothing).\n")
    lines.append(f"Load average (1, 5, 15 min) before these rows: "
                 f"{', '.join(f'{x:.2f}' for x in load_before)}; after: "
                 f"{', '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores"
                 + (": **taken on a busy machine** (other processes ran beside the benchmark; "
                    "read the ratio of the best runs)." if busy else ".") + "\n")
    lines.append("| operation | ckpt | ckpt peak RSS | reference | reference time | "
                 "reference peak RSS | ratio | ratio of the best runs |")
    lines.append("|---|---:|---:|---|---:|---:|---:|---:|")
    for t in table:
        lines.append("| " + " | ".join(t) + " |")
    lines.append("")
    lines.append("| target | measured | |")
    lines.append("|---|---:|---|")
    for text, val, ok in targets:
        lines.append(f"| {text} | {val} | {'met' if ok else '**missed**'} |")
    lines.append("")
    notes = os.path.join(HERE, "NOTES-python.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines.append(f.read())
    lines.append("Spread (min to max of the runs): " + "; ".join(
        f"{k} {fmt_s(v['min'])} .. {fmt_s(v['max'])}" for k, v in r.items() if k != "py.idle")
        + "\n")
    lines.append(PY_END)
    print()
    w = [max(len(t[i]) for t in table) for i in range(8)]
    for t in table:
        print("  ".join(t[i].ljust(w[i]) for i in range(8)))
    print()
    for text_, val, ok in targets:
        print(f"{'met   ' if ok else 'MISSED'}  {text_}: {val}")
    return lines


def torch_version():
    return subprocess.run([PY, "-c", "import torch; print(torch.__version__)"],
                          stdout=subprocess.PIPE, text=True).stdout.strip() or "?"


def splice_section(path, section):
    """Replaces the package's section of an existing results file (or adds it
    at the end), leaving the rest as it was."""
    text = open(path).read() if os.path.exists(path) else ""
    b, e = text.find(PY_BEGIN), text.find(PY_END)
    new = "\n".join(section) + "\n"
    if b >= 0 and e > b:
        text = text[:b] + new + text[e + len(PY_END):].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    with open(path, "w") as f:
        f.write(text)


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
    ap.add_argument("--python-only", action="store_true",
                    help="measure only the Python package's rows and replace their section "
                         "of --out, leaving the rest")
    ap.add_argument("--only", choices=["meta"],
                    help="measure one group of rows alone (meta: metadata-heavy files) and "
                         "rewrite its section of the results file")
    ap.add_argument("--dcp-only", action="store_true",
                    help="only the DCP consolidation rows, printed (RESULTS.md untouched)")
    a = ap.parse_args()

    bench = os.path.join(a.build, "ckpt_bench")
    cli = os.path.join(a.build, "ckpt")
    for b in (bench, cli):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b} is missing: build first (make bench does)")
    if a.only == "meta":
        meta_only(a, cli)
        return
    os.makedirs(a.dir, exist_ok=True)
    free = shutil.disk_usage(a.dir).free
    need = (a.mb << 20) * 6
    if free < need:
        raise SystemExit(f"{a.dir} has {free >> 20} MiB free, the run needs about {need >> 20}")

    load_start = os.getloadavg()[0]
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
    _, optim = meta_generate(a.dir)
    for p in (f32, f32s, bf16, small, heavy, optim):
        warm(p)
    out_pth = os.path.join(a.dir, "out.pth")
    out_st = os.path.join(a.dir, "out.safetensors")
    out_raw = os.path.join(a.dir, "out.raw")
    R = a.reps
    rows = []      # (group, what, ckpt result, reference name, reference result, ratio text)
    results = {}

    def group(*specs, cold=False):
        full = [(sp[0], sp[1], sp[2] if len(sp) > 2 else (), sp[3] if len(sp) > 3 else {})
                for sp in specs]
        results.update(measure_group(full, R, lambda t: print(t, flush=True), cold=cold))

    def torch_child(mode, *args):
        return [PY, os.path.abspath(__file__), "--child", mode, *args]

    gib = a.mb / 1024
    size_label = f"{a.mb} MiB" if a.mb < 1024 else f"{gib:g} GiB"
    def measure(*specs):
        return measure_group(list(specs), R, lambda t: print(t, flush=True))

    st_file = os.path.join(a.dir, f"f32-{a.mb}.safetensors")  # the peers' rows

    def clean_inputs():
        if not a.keep:
            for p in (f32, f32s, bf16, small, heavy, optim, st_file):
                if os.path.exists(p):
                    os.unlink(p)

    if a.python_only:
        section = python_section(a, bench, measure, f32, small, out_pth, out_raw, size_label)
        if section is None:
            raise SystemExit("the Python package could not be imported")
        splice_section(a.out, section)
        print(f"\nwrote the Python package's section of {a.out}")
        clean_inputs()
        return

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

    # the checkpoint manager: blocking and asynchronous saves, fsync'ed and
    # committed, five times after one untimed save (a training loop's steady
    # state; ckpt_bench reports the medians)
    mgr = os.path.join(a.dir, "mgr")
    print("checkpoint manager saves ...", flush=True)
    group(("mgr.block.f32", [bench, "manager", f32, mgr, "blocking"], [mgr]),
          ("mgr.async.f32", [bench, "manager", f32, mgr, "async"], [mgr]),
          ("memcpy.f32", [bench, "memcpy", f32]))
    results["mgr.async-total.f32"] = {
        "s": results["mgr.async.f32"]["total"], "min": results["mgr.async.f32"]["total_min"],
        "max": results["mgr.async.f32"]["total"],
        "maxrss_kb": results["mgr.async.f32"]["maxrss_kb"]}

    # a cold page cache: emptied before every command (root only)
    cold = can_drop_caches()
    dev_null = {"stdout_path": os.devnull, "json_out": False}
    if cold:
        print(f"measuring ({R} repetitions each, page cache emptied before each) ...",
              flush=True)
        group(("cold.cat.f32", ["cat", f32], (), dev_null),
              ("cold.cat-out.f32", ["cat", f32], [out_raw], {"stdout_path": out_raw,
                                                            "json_out": False}),
              ("cold.verify.f32", [cli, "verify", "-q", f32], (), cli_kw),
              ("cold.conv.st.f32", [cli, "convert", "-q", "--no-fsync", f32, out_st], [out_st],
               cli_kw),
              ("cold.conv.pth.f32", [cli, "convert", "-q", "--no-fsync", f32, out_pth],
               [out_pth], cli_kw),
              ("cold.conv.bf16.f32", [cli, "convert", "-q", "--no-fsync", "--dtype", "bfloat16",
                                      f32, out_st], [out_st], cli_kw),
              ("cold.mat.f32", [bench, "materialise", f32]),
              ("cold.pread.f32", [bench, "pread", f32]),
              ("cold.load.f32", [bench, "load", f32, "copy"]),
              ("cold.scan.f32", [cli, "scan", f32], (), cli_kw),
              ("cold.open.f32", [bench, "open", f32]),
              ("cold.torch.load.f32", torch_child("load", f32)),
              ("cold.np.load.f32", torch_child("np-load", npy, "-", "128")),
              cold=True)
    else:
        print("cold rows skipped: emptying the page cache needs root", flush=True)
    os.unlink(npy)
    # metadata-heavy files
    meta_measure(group, torch_child, cli, small, optim)

    # newer peers: torch 2.6 and safetensors in the Debian 13 chroot, on the
    # same files, warm and cold
    t2 = torch2_cmd()
    peers = t2 is not None
    if peers:
        print("newer peers (torch 2, safetensors) ...", flush=True)
        if not os.path.exists(st_file):
            subprocess.run([cli, "convert", "-q", f32, st_file], check=True)

        def t2_child(mode, path):
            return [*t2, os.path.abspath(__file__), "--child", mode, path]

        # torch.load(mmap=True) and safetensors (safe_open maps the file:
        # torch.UntypedStorage.from_file) give tensors over a private map of
        # the file: ckpt's counterpart is open + ckpt_tensor_data of each
        peer_specs = [("open.f32", [bench, "tensors", f32]),
                      ("t2.mmap.f32", t2_child("t2-load-mmap", f32)),
                      ("mat.st.f32", [bench, "tensors", st_file]),
                      ("st.load_file.f32", t2_child("st-load-file", st_file)),
                      ("st.safe_open.f32", t2_child("st-safe-open", st_file))]
        warm(st_file)
        group(*[("peer." + k, c) for k, c in peer_specs])
        if cold:
            group(*[("peer.cold." + k, c) for k, c in peer_specs], cold=True)
    else:
        print("newer peers skipped: the torch 2 chroot (scripts/torch2-chroot.sh) is not "
              "built here, or this is not root", flush=True)

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
    row(f"manager save {size_label}: the call blocks (async)", "mgr.async.f32",
        "memcpy into warm memory", "memcpy.f32", "stall")
    row(f"manager save {size_label}: the call blocks (async)", "mgr.async.f32",
        "torch.save", "torch.save.f32", "stall")
    row(f"manager save {size_label}: until committed (async)", "mgr.async-total.f32",
        "blocking manager save", "mgr.block.f32", "fsync'ed, renamed, manifest")
    if cold:
        cold_rows = [("verify", "cold.verify.f32"),
                     ("convert pth -> safetensors", "cold.conv.st.f32"),
                     ("convert pth -> pth", "cold.conv.pth.f32"),
                     ("convert pth -> bf16 safetensors", "cold.conv.bf16.f32"),
                     ("materialise (ckpt_tensor_copy)", "cold.mat.f32"),
                     ("load into a C model (open + copy)", "cold.load.f32"),
                     ("scan", "cold.scan.f32")]
        for what, key in cold_rows:
            row(f"cold: {what} {size_label} f32", key, "cat FILE > /dev/null", "cold.cat.f32")
        for what, key in cold_rows[1:4]:
            row(f"cold: {what} {size_label} f32", key, "cat FILE > OUT (a copy)",
                "cold.cat-out.f32")
        row(f"cold: materialise {size_label} f32", "cold.mat.f32", "pread floor",
            "cold.pread.f32")
        row(f"cold: open {size_label} f32 (zero-copy)", "cold.open.f32", "torch.load",
            "cold.torch.load.f32")
        row(f"cold: torch.load {size_label} f32", "cold.torch.load.f32", "cat FILE > /dev/null",
            "cold.cat.f32", "reference")
        row(f"cold: numpy load {size_label} (128 np.load)", "cold.np.load.f32",
            "cat FILE > /dev/null", "cold.cat.f32", "reference")
    if peers:
        for pre, label in (("peer.", ""), ("peer.cold.", "cold: ")):
            if pre + "open.f32" not in r:
                continue
            row(f"{label}every tensor of {size_label} .pth, mapped", pre + "open.f32",
                "torch 2.6 torch.load(mmap=True)", pre + "t2.mmap.f32")
            row(f"{label}every tensor of {size_label} .safetensors, mapped", pre + "mat.st.f32",
                "safetensors.torch.load_file", pre + "st.load_file.f32")
            row(f"{label}every tensor of {size_label} .safetensors, mapped", pre + "mat.st.f32",
                "safe_open().get_tensor, each", pre + "st.safe_open.f32")

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

    meta_lines, meta_targets = meta_section(r, optim, R)

    # the checkpoint manager's asynchronous save
    stall_r = ratio("mgr.async.f32", "memcpy.f32")
    torch_stall = ratio("torch.save.f32", "mgr.async.f32")
    total_r = ratio("mgr.async-total.f32", "mgr.block.f32")
    extra_kb = r["mgr.async.f32"]["maxrss_kb"] - r["mgr.block.f32"]["maxrss_kb"]
    targets += [
        ("async save: the call blocks <= 1.3x a memcpy into warm memory",
         both("mgr.async.f32", "memcpy.f32"), stall_r <= 1.3),
        ("async save: the call blocks >= 5x shorter than torch.save",
         both("torch.save.f32", "mgr.async.f32", "{:.1f}x"), torch_stall >= 5),
        ("async save: committed within 1.1x the blocking save's time",
         both("mgr.async-total.f32", "mgr.block.f32"), total_r <= 1.1),
        ("async save: peak extra memory one staging copy (<= the tensors + 64 MiB)",
         f"{fmt_mb(max(0, extra_kb))} for {fmt_mb(fsize // 1024)} of tensors",
         extra_kb <= fsize // 1024 + 64 * 1024),
    ]
    if cold:
        for what, key in cold_rows:
            targets.append((f"cold: {what} <= 1.2x cat", both(key, "cold.cat.f32"),
                            ratio(key, "cold.cat.f32") <= 1.2))
    if peers:
        for pre, label in (("peer.", "warm"), ("peer.cold.", "cold")):
            if pre + "open.f32" not in r:
                continue
            for ck, ref, name in (("open.f32", "t2.mmap.f32", "torch.load(mmap=True)"),
                                  ("mat.st.f32", "st.load_file.f32", "load_file"),
                                  ("mat.st.f32", "st.safe_open.f32", "safe_open")):
                targets.append((f"{label}: ckpt ahead of {name}",
                                both(pre + ck, pre + ref), ratio(pre + ck, pre + ref) < 1))

    mi = machine_info(a.dir)
    ve = versions(a.build, cli)
    lines = []
    lines.append("# ckpt benchmark results\n")
    lines.append(f"Written by `make bench` (bench/run.py) on {time.strftime('%Y-%m-%d %H:%M')}. "
                 f"Median of {R} runs, each in a fresh process, the contenders of a group "
                 "interleaved round by round; warm page cache (inputs read once before), "
                 "outputs removed and `sync` before each run, except the rows marked cold, "
                 "before each of which the page cache was emptied "
                 f"({'done: run as root' if cold else 'skipped: that needs root'}). Times are "
                 "of the operation alone (imports and setup outside), except the convert, "
                 "verify, scan (cold) and cat rows, which time the whole command. RSS is the "
                 "process's peak (ru_maxrss), which counts the pages of a mapped input that "
                 "were touched, and for Python the interpreter with torch imported. The "
                 "newer peers (torch 2.6, safetensors) run in the Debian 13 chroot "
                 f"({'measured' if peers else 'skipped: not built here'}).\n")
    lines.append("## Machine\n")
    lines.append(f"- CPU: {mi['cpu']}, {mi['cores']} cores")
    lines.append(f"- RAM: {mi['ram']}")
    lines.append(f"- kernel: Linux {mi['kernel']}")
    lines.append(f"- scratch filesystem: {mi['fs']}")
    lines.append(f"- load average (1 min) at the start and the end: {load_start:.1f}, "
                 f"{os.getloadavg()[0]:.1f} (2 cores: above 2, other jobs shared the machine)")
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
    lines.extend(meta_lines)
    notes = os.path.join(HERE, "NOTES.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines.append(f.read())
    lines.append("## Spread (min to max of the runs)\n")
    for k, v in results.items():
        lines.append(f"- {k}: {fmt_s(v['min'])} .. {fmt_s(v['max'])}")
    lines.append("")
    py_lines = python_section(a, bench, measure, f32, small, out_pth, out_raw, size_label)
    if py_lines:
        lines += py_lines
    text = "\n".join(lines)
    with open(a.out, "w") as f:
        f.write(text)
    # the table on the terminal too
    print()
    w = [max(len(t[i]) for t in table) for i in range(8)]
    for t in table:
        print("  ".join(t[i].ljust(w[i]) for i in range(8)))
    print()
    for text_, val, ok in targets + meta_targets:
        print(f"{'met   ' if ok else 'MISSED'}  {text_}: {val}")
    print(f"\nwrote {a.out}")
    clean_inputs()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
