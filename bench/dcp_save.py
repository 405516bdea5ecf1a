"""make bench, DCP rows: ckpt_dcp_save from 1, 2 and 4 MPI ranks against one
process writing the same bytes (the same tool without mpirun).

tests/tools/dcp_save writes a state dict whose "big" tensor holds most of
the bytes (BENCH_DCP_MB), split by rows over the ranks; the time is the
slowest rank's ckpt_dcp_save call (writing its file, fsync, the gather,
.metadata, the directory swap), best of BENCH_REPS, page cache warm. On a
machine of 2 cores, 4 ranks are oversubscribed: the rows show what the
design costs there, not what it gains on a cluster's parallel filesystem.
Its table goes to stdout and into bench/RESULTS.md ("DCP save" section).
"""
import argparse
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run(tool, d, ranks, elements):
    argv = [tool, d, "rows", "1", "--elements", str(elements)]
    if ranks:
        argv = ["mpirun", "-np", str(ranks), "--oversubscribe", *argv]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run(argv, stdout=subprocess.PIPE, check=True, env=env).stdout.decode()
    return max(float(line.split()[2]) for line in out.splitlines() if line.startswith("saved "))


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
    rows = []
    base = min(run(tool, d, 0, elements) for _ in range(a.reps))
    rows.append(("one process, no MPI", base))
    if has_mpi and shutil.which("mpirun"):
        for n in (1, 2, 4):
            rows.append((f"mpirun -np {n}", min(run(tool, d, n, elements) for _ in range(a.reps))))
    shutil.rmtree(d, ignore_errors=True)
    lines = ["## DCP save (ckpt_dcp_save)", "",
             f"{a.mb} MiB of tensors split by rows, {os.cpu_count()} cores, best of {a.reps}, "
             "warm cache, fsync on; time of the slowest rank's call. On a shared machine of "
             "few cores these vary by several times from run to run: compare rows of one run "
             "only.", "",
             "| writer | seconds | MB/s | vs one process |", "| --- | ---: | ---: | ---: |"]
    for what, t in rows:
        lines.append(f"| {what} | {t:.3f} | {a.mb * 1.048576 / t:.0f} | {base / t:.2f}x |")
    if len(rows) == 1:
        lines.append("")
        lines.append("(no MPI in this build or no mpirun: the MPI rows are missing)")
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
