"""make bench, DCP rows: ckpt_dcp_save from 1, 2 and 4 MPI ranks against one
process writing the same bytes (the same tool without mpirun) and against
torch 2.6's dcp.save from as many gloo ranks; a resharding load 4 -> 2 ranks.

tests/tools/dcp_save writes a state dict whose "big" tensor holds most of
the bytes (BENCH_DCP_MB), split by rows over the ranks; the time is the
slowest rank's ckpt_dcp_save call (writing its file, fsync, the gather,
.metadata, the directory swap), best of BENCH_REPS, page cache warm. On a
machine of 2 cores, 4 ranks are oversubscribed: the rows show what the
design costs there, not what it gains on a cluster's parallel filesystem.
torch's rows (bench/dcp_torch.py in scripts/torch2-chroot.sh's chroot) save
float32[E] split by rows the same way (ShardedTensors), timed as the slowest
rank's dcp.save call. The resharding load reads the 4-rank directory of the
last MPI save with 2 ranks, each its half of "big"'s rows: ckpt_dcp_load_shard
(tests/tools/dcp_save --load under mpirun -np 2; ckpt_open and the load),
torch's dcp.load into 2 gloo ranks (ShardedTensors of the same rows), and
`cat` of the .distcp files to /dev/null. Without MPI or the chroot their rows
are left out with a note.
Its tables go to stdout and into bench/RESULTS.md ("DCP save" section).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHROOT = os.path.join(ROOT, "scripts", "torch2-chroot.sh")
MPI_ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")


def slowest(out, word):
    """The slowest rank's seconds from lines "WORD RANK/N SECONDS"."""
    # ranks share the pipe: a line may run into another's, so match anywhere
    times = [float(t) for t in re.findall(word + r" \d+/\d+ (\d+\.\d+)", out)]
    if not times:
        raise RuntimeError(f"no '{word}' line in the output:\n{out}")
    return max(times)


def run(tool, d, ranks, elements):
    argv = [tool, d, "rows", "1", "--elements", str(elements)]
    if ranks:
        argv = ["mpirun", "-np", str(ranks), "--oversubscribe", *argv]
    out = subprocess.run(argv, stdout=subprocess.PIPE, check=True, env=MPI_ENV).stdout.decode()
    return slowest(out, "saved")


def torch_run(what, d, world, arg):
    """bench/dcp_torch.py in the chroot: the slowest rank's seconds, or None
    (with a note) when it fails."""
    argv = ["sh", CHROOT, "python", os.path.join(HERE, "dcp_torch.py"), what, d, str(world),
            str(arg)]
    try:
        r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        if r.returncode == 0:
            return slowest(r.stdout.decode(), "saved" if what == "save" else "loaded")
        err = r.stderr.decode(errors="replace").strip().splitlines()[-5:]
    except (subprocess.TimeoutExpired, RuntimeError) as e:
        err = [str(e)]
    print(f"torch dcp.{what} with {world} gloo ranks failed:", *err, sep="\n  ")
    return None


def mpi_load(tool, d, ranks, name):
    argv = ["mpirun", "-np", str(ranks), "--oversubscribe", tool, "--load", d, name]
    out = subprocess.run(argv, stdout=subprocess.PIPE, check=True, env=MPI_ENV).stdout.decode()
    return slowest(out, "loaded")


def cat_files(d):
    files = sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".distcp"))
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", *files], stdout=null, check=True)
    return time.monotonic() - t0


def best(f, reps):
    """The best of reps calls of f, or None when one returns None."""
    times = []
    for _ in range(reps):
        t = f()
        if t is None:
            return None
        times.append(t)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--mb", type=int, default=int(os.environ.get("BENCH_DCP_MB", "256")))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", "3")))
    ap.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/ckpt-bench"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    a = ap.parse_args()
    tool = os.path.join(a.build, "tests", "dcp_save")
    has_mpi = subprocess.run([tool, "--has-mpi"], stdout=subprocess.PIPE,
                             check=True).stdout.strip() == b"mpi"
    elements = a.mb * (1 << 20) // 4
    os.makedirs(a.dir, exist_ok=True)
    d = os.path.join(a.dir, "dcp-save")
    load0 = os.getloadavg()[0]
    t2 = subprocess.run(["sh", CHROOT, "check"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL).returncode == 0
    mpi = has_mpi and shutil.which("mpirun") is not None
    notes = []
    if not mpi:
        notes.append("no MPI in this build or no mpirun: the MPI rows and the resharding load "
                     "are missing")
    if not t2:
        notes.append("no torch 2.6 chroot (scripts/torch2-chroot.sh build): torch's rows are "
                     "missing")
    for n in notes:
        print(n)
    rows = []
    base = min(run(tool, d, 0, elements) for _ in range(a.reps))
    rows.append(("one process, no MPI", base, None))
    loads = []
    td = os.path.join(a.dir, "dcp-save-torch")
    if mpi:
        for n in (1, 2, 4):
            ck = min(run(tool, d, n, elements) for _ in range(a.reps))
            tt = None
            if t2:
                def once():
                    shutil.rmtree(td, ignore_errors=True)
                    return torch_run("save", td, n, elements)
                tt = best(once, a.reps)
            rows.append((f"mpirun -np {n}", ck, tt))
        # d now holds the 4-rank directory of the last save
        loads.append(("ckpt_dcp_load_shard, mpirun -np 2",
                      best(lambda: mpi_load(tool, d, 2, "model.big"), a.reps)))
        if t2:
            loads.append(("torch 2.6 dcp.load, 2 gloo ranks",
                          best(lambda: torch_run("load", d, 2, "model/big"), a.reps)))
        loads.append(("cat of the 4 .distcp files > /dev/null", best(lambda: cat_files(d), a.reps)))
    shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(td, ignore_errors=True)
    load1 = os.getloadavg()[0]
    cores = os.cpu_count()
    busy = (f"Load average (1 min) at the start and the end: {load0:.1f}, {load1:.1f} "
            f"({cores} cores{', busy with other jobs' if max(load0, load1) > cores / 2 else ''})")
    lines = ["## DCP save (ckpt_dcp_save)", "",
             f"{a.mb} MiB of tensors split by rows, {cores} cores, best of {a.reps}, "
             "warm cache, fsync on; time of the slowest rank's call (torch: its dcp.save, "
             "gloo on localhost, the same float32 rows as ShardedTensors). On a shared "
             "machine of few cores these vary by several times from run to run: compare "
             f"rows of one run only. ckpt / torch and ckpt / this are ckpt's time over the "
             f"other's (below 1: ckpt faster). {busy}.", "",
             "| writer | seconds | MB/s | vs one process | torch 2.6 dcp.save, as many gloo "
             "ranks | ckpt / torch |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for what, t, tt in rows:
        tcol = f"{tt:.3f}" if tt is not None else "-"
        ratio = f"{t / tt:.2f}x" if tt is not None else "-"
        lines.append(f"| {what} | {t:.3f} | {a.mb * 1.048576 / t:.0f} | {base / t:.2f}x | "
                     f"{tcol} | {ratio} |")
    if loads:
        ref = loads[0][1]
        lines += ["", f"Resharding load 4 -> 2 ranks: the 4-rank directory above ({a.mb} MiB, "
                  "\"big\" split by rows in 4), read by 2 ranks, each its half of the rows; "
                  "time of the slowest rank (ckpt: ckpt_open and ckpt_dcp_load_shard; torch: "
                  "dcp.load into ShardedTensors of the same rows; cat: the whole command), "
                  f"best of {a.reps}, warm cache.", "",
                  "| reader | seconds | MB/s | ckpt / this |", "| --- | ---: | ---: | ---: |"]
        for what, t in loads:
            if t is None:
                continue
            lines.append(f"| {what} | {t:.3f} | {a.mb * 1.048576 / t:.0f} | {ref / t:.2f}x |")
    if notes:
        lines.append("")
        lines += [f"({n})" for n in notes]
    table = "\n".join(lines) + "\n"
    print(table)
    text = open(a.out).read() if os.path.exists(a.out) else ""
    start = text.find("## DCP save")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + text[end + 1:] if end >= 0 else text[:start]
    with open(a.out, "w") as f:
        f.write(text.rstrip("\n") + ("\n\n" if text.strip() else "") + table)


if __name__ == "__main__":
    sys.exit(main())
