"""ckpt_dcp_save against torch 2.6's torch.distributed.checkpoint.

tests/tools/dcp_save (see its header for the state dict) saves a DCP
directory from one process and from `mpirun -np 1, 2, 4` ranks, split by
rows, by columns and unevenly; torch 2.6 (the chroot of
scripts/torch2-chroot.sh) loads it with dcp.load in one process and in two
gloo processes and compares every value bit for bit with the whole tensors.
Replicated values are written once, by the coordinator. A rank that
SIGKILLs itself at each step of the commit (CKPT_DCP_KILL_AT) leaves the
previous directory loadable, and the next save clears what the crash left.
Without MPI in the build or without mpirun the MPI cases skip, naming why.
"""
import json
import os
import pathlib
import shlex
import shutil
import subprocess

import pytest
import torch

T2 = os.environ.get("CKPT_TORCH2_PYTHON")
SOURCE_DIR = pathlib.Path(__file__).resolve().parent.parent.parent
CKPT_BIN = os.environ.get("CKPT_BIN", str(SOURCE_DIR / "build" / "ckpt"))
TOOL = os.environ.get("CKPT_DCP_SAVE", str(SOURCE_DIR / "build" / "tests" / "dcp_save"))


# Loads each (dir, seed, big) with dcp.load and compares with the values the
# tool writes; checks the layout of .metadata. argv: JSON list, world size.
VERIFY = r'''
import json, os, sys
import torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp

def expected(seed, big):
    def t(shape, dtype, wrap=0):
        n = 1
        for s in shape:
            n *= s
        v = torch.arange(n, dtype=torch.int64)
        if wrap:
            v = v % wrap
        v = v + seed * 1000
        if dtype == torch.bfloat16:
            return v.to(torch.float32).to(torch.bfloat16).reshape(shape)
        return v.to(dtype).reshape(shape)
    return {"model": {"w": t((8, 6), torch.float32), "emb": t((10, 4), torch.int64),
                      "h": t((5, 7), torch.bfloat16), "b": t((6,), torch.float32),
                      "big": t((big,), torch.float32, 4096)},
            "epoch": seed, "lr": 0.001 * seed, "tag": f"seed-{seed}",
            "lst": [seed, t((3,), torch.float64)],
            "opt": {"state": {0: {"step": seed, "exp_avg": t((6,), torch.float32)}},
                    "param_groups": [{"lr": 0.1 * seed, "params": [0]}]}}

def empty_like_sd(e):
    return {"model": {k: torch.full_like(v, 7) for k, v in e["model"].items()},
            "epoch": -1, "lr": -1.0, "tag": "", "lst": [-1, torch.full_like(e["lst"][1], 7)],
            "opt": {"state": {0: {"step": -1, "exp_avg": torch.zeros(6)}},
                    "param_groups": [{"lr": -1.0, "params": [7]}]}}

def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))

def check(d, seed, big, rank=0):
    e = expected(seed, big)
    sd = empty_like_sd(e)
    dcp.load(sd, checkpoint_id=d)
    for k, v in e["model"].items():
        assert same(sd["model"][k], v), (d, k, sd["model"][k], v)
    assert same(sd["lst"][1], e["lst"][1]), d
    assert (sd["epoch"], sd["lr"], sd["tag"], sd["lst"][0]) == (e["epoch"], e["lr"], e["tag"], e["lst"][0]), (d, sd)
    # the optimizer's state as torch loads what torch itself saved (a
    # non-tensor value under an int key comes back under its text)
    if not dist.is_initialized():
        import tempfile
        ref = empty_like_sd(e)
        with tempfile.TemporaryDirectory() as t:
            dcp.save(e, checkpoint_id=t)
            dcp.load(ref, checkpoint_id=t)
        assert tree_equal(sd["opt"], ref["opt"]), (sd["opt"], ref["opt"])
    assert same(sd["opt"]["state"][0]["exp_avg"], e["opt"]["state"][0]["exp_avg"]), d
    assert sd["opt"]["param_groups"] == e["opt"]["param_groups"], sd["opt"]

def tree_equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and same(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(tree_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(tree_equal, a, b))
    return type(a) is type(b) and a == b

def layout(d):
    md = dcp.FileSystemReader(d).read_metadata()
    out = {}
    for key, m in md.state_dict_metadata.items():
        out[key] = len(m.chunks) if hasattr(m, "chunks") else "bytes"
    files = {}
    for idx, info in md.storage_data.items():
        files.setdefault(idx.fqn, []).append(info.relative_path)
    return {"chunks": out, "files": files, "planner": {k: list(v) for k, v in md.planner_data.items()}}

def worker(rank, cases, port):
    import datetime
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}?use_libuv=0", rank=rank,
                            world_size=2, timeout=datetime.timedelta(seconds=120))
    for d, seed, big in cases:
        check(d, seed, big, rank)
    dist.barrier()
    # gloo's teardown (destroy_process_group) can hang: both ranks are done
    sys.stdout.flush()
    os._exit(0)

if __name__ == "__main__":
    import warnings
    warnings.simplefilter("ignore")
    cases = json.loads(sys.argv[1])
    if sys.argv[2] == "1":
        for d, seed, big in cases:
            check(d, seed, big)
    else:
        import socket
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(cases, port), nprocs=2, join=True)
    print(json.dumps({d: layout(d) for d, _, _ in cases}))
'''


def t2_verify(tmp_path, cases, world=1):
    if not T2:
        if os.environ.get("CKPT_TORCH2") == "1":
            pytest.fail("CKPT_TORCH2=1 but no torch 2.x interpreter (scripts/torch2-chroot.sh "
                        "check)")
        pytest.skip("no torch 2.x chroot to load with (scripts/torch2-chroot.sh build)")
    script = tmp_path / "verify_dcp.py"
    script.write_text(VERIFY)
    argv = [*shlex.split(T2), str(script), json.dumps([[str(d), s, b] for d, s, b in cases]),
            str(world)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=300 if world > 1 else 600)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-4000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def tool_has_mpi():
    if not pathlib.Path(TOOL).is_file():
        pytest.fail(f"dcp_save not found at {TOOL} (set CKPT_DCP_SAVE or build first)")
    out = subprocess.run([TOOL, "--has-mpi"], stdout=subprocess.PIPE, check=True).stdout
    return out.strip() == b"mpi"


def need_mpi():
    if not tool_has_mpi():
        pytest.skip("the library was built without MPI (CKPT_MPI off: no mpi.h)")
    if not shutil.which("mpirun"):
        pytest.skip("mpirun not found (openmpi-bin)")


def mpi_env(extra=None):
    env = dict(os.environ)
    env.update({"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
                "OMPI_MCA_btl": "self,vader,tcp", "OMPI_MCA_rmaps_base_oversubscribe": "1"})
    # OpenMPI's own allocations are not ckpt's leaks
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
    env.update(extra or {})
    return env


def run_save(dirpath, split, seed, ranks=None, big=4096, env=None, expect_ok=True):
    argv = [TOOL, str(dirpath), split, str(seed), "--elements", str(big)]
    if ranks:
        argv = ["mpirun", "-np", str(ranks), "--oversubscribe", *argv]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                          env=mpi_env(env))
    if expect_ok:
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
        assert proc.stdout.decode().count("saved ") == (ranks or 1)
    return proc


def leftovers(dirpath):
    return sorted(p.name for p in dirpath.parent.iterdir()
                  if p.name.startswith(dirpath.name + ".tmp-")
                  or p.name.startswith(dirpath.name + ".old-"))


def test_one_process_loads_in_torch_with_one_and_two_ranks(tmp_path):
    d = tmp_path / "one"
    run_save(d, "rows", 3, big=5000)
    assert sorted(p.name for p in d.iterdir()) == [".metadata", "__0_0.distcp"]
    layout = t2_verify(tmp_path, [(d, 3, 5000)], world=1)[str(d)]
    assert layout["chunks"]["model.w"] == 1 and layout["chunks"]["epoch"] == "bytes"
    assert layout["planner"]["lst.1"] == ["lst", 1]
    assert layout["planner"]["model.w"] == ["model", "w"]
    assert layout["planner"]["opt.state.0.exp_avg"] == ["opt", "state", "0", "exp_avg"]
    assert layout["planner"]["opt.param_groups.0.lr"] == ["opt", "param_groups", 0, "lr"]
    t2_verify(tmp_path, [(d, 3, 5000)], world=2)
    # a second save replaces it whole
    run_save(d, "cols", 4, big=5000)
    t2_verify(tmp_path, [(d, 4, 5000)], world=1)
    assert leftovers(d) == []


def share(size, n, r, split):
    if split == "uneven":
        total, before = n * (n + 1) // 2, r * (r + 1) // 2
        return size * (before + r + 1) // total - size * before // total
    return size * (r + 1) // n - size * r // n


MPI_CASES = [(1, "rows"), (2, "cols"), (2, "uneven"), (4, "rows"), (4, "uneven")]


def test_mpi_ranks_load_in_torch_bit_for_bit(tmp_path):
    need_mpi()
    cases = []
    for n, split in MPI_CASES:
        d = tmp_path / f"np{n}-{split}"
        run_save(d, split, n * 10 + len(split), ranks=n, big=4099)
        cases.append((d, n * 10 + len(split), 4099))
    layouts = t2_verify(tmp_path, cases, world=1)
    for (n, split), (d, _, _) in zip(MPI_CASES, cases):
        lay = layouts[str(d)]
        files = sorted(p.name for p in d.iterdir())
        assert files == [".metadata"] + [f"__{r}_0.distcp" for r in range(n)], files
        # replicated values: one chunk, written once, by the coordinator
        for key in ("model.b", "lst.1", "epoch", "lr", "tag", "lst.0"):
            assert lay["files"][key] == ["__0_0.distcp"], (split, n, key, lay["files"][key])
        assert lay["chunks"]["model.b"] == 1 and lay["chunks"]["lst.1"] == 1
        # sharded tensors: one chunk per rank holding a share (dcp_save's
        # shares: uneven gives rank r rows in proportion to r + 1)
        holders = [r for r in range(n) if share(8 if split != "cols" else 6, n, r, split)]
        assert lay["chunks"]["model.w"] == len(holders), (split, n, lay["chunks"])
        assert sorted(lay["files"]["model.w"]) == [f"__{r}_0.distcp" for r in holders]
        if split == "cols":
            assert lay["chunks"]["model.emb"] == 1
    # loaded by another world size than the one that wrote them
    t2_verify(tmp_path, [cases[1], cases[4]], world=2)
    # ckpt's reader: verify, and regions across the ranks' chunks, bit for bit
    dcp_load = os.environ.get("CKPT_DCP_LOAD", str(SOURCE_DIR / "build" / "tests" / "dcp_load"))
    for d, seed, big in cases:
        assert subprocess.run([CKPT_BIN, "verify", str(d)], stdout=subprocess.PIPE).returncode == 0
        w = (torch.arange(48) + seed * 1000).float().reshape(8, 6)
        emb = (torch.arange(40) + seed * 1000).reshape(10, 4)
        bigt = (torch.arange(big) % 4096 + seed * 1000).float()
        want = (w[2:6, 1:4].contiguous().numpy().tobytes() + emb.numpy().tobytes()
                + bigt[100:3100].numpy().tobytes())
        got = subprocess.run([dcp_load, str(d), "model.w@2,1:4,3", "model.emb",
                              "model.big@100:3000"], stdout=subprocess.PIPE, check=True).stdout
        assert got == want, d


# (rank, step): a rank's file, the gather, and each step of the coordinator's
# commit. Steps 1-4 leave the previous save; 5 and 6 come after the swap.
KILLS = [(1, 1), (0, 1), (1, 2), (0, 2), (1, 3), (0, 4), (0, 5), (0, 6)]


def test_rank_killed_at_each_commit_step_leaves_a_whole_checkpoint(tmp_path):
    need_mpi()
    cases, after = [], []
    for rank, step in KILLS:
        d = tmp_path / f"kill-{rank}-{step}"
        run_save(d, "uneven", 1, ranks=2)
        proc = run_save(d, "uneven", 2, ranks=2, expect_ok=False,
                        env={"CKPT_DCP_KILL_AT": f"{rank}:{step}"})
        assert proc.returncode != 0, (rank, step)
        snap = tmp_path / f"snap-{rank}-{step}"
        shutil.copytree(d, snap)
        cases.append((snap, 1 if step <= 4 else 2, 4096))
        # the next save removes what the crash left and commits
        run_save(d, "rows", 3, ranks=2)
        assert leftovers(d) == [], (rank, step, leftovers(d))
        after.append((d, 3, 4096))
    t2_verify(tmp_path, cases + after, world=1)


def test_errors_leave_the_previous_directory(tmp_path):
    d = tmp_path / "keep"
    run_save(d, "rows", 5)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    # a path that is a file, not a directory
    f = tmp_path / "afile"
    f.write_bytes(b"x")
    proc = run_save(f, "rows", 6, expect_ok=False)
    assert proc.returncode == 1 and b"not a directory" in proc.stderr
    assert f.read_bytes() == b"x"
    assert leftovers(f) == []
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def ckpt_ls(ckpt_bin, d):
    out = subprocess.run([ckpt_bin, "ls", str(d), "--json"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, check=True).stdout
    return {c["file"]: c for c in json.loads(out)["checkpoints"]}


def _manager_save(d, step, loss, env=None, expect_ok=True):
    argv = ["mpirun", "-np", "2", "--oversubscribe", TOOL, str(d), "uneven", str(step),
            "--manager", "2", str(loss)]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                          env=mpi_env(env))
    if expect_ok:
        assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    return proc


def resume(d):
    out = subprocess.run([TOOL, "--resume", str(d)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=mpi_env())
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().split(), out.stderr.decode()


def test_manager_keeps_dcp_directories(tmp_path, ckpt_bin):
    need_mpi()
    d = tmp_path / "run"
    for step, loss in [(1, 4.0), (2, 3.0), (3, 5.0), (4, 4.0)]:
        _manager_save(d, step, loss)
    ls = ckpt_ls(ckpt_bin, d)
    assert sorted(ls) == ["best.dcp", "last.dcp", "step-00000003.dcp", "step-00000004.dcp"]
    assert (ls["last.dcp"]["step"], ls["best.dcp"]["step"]) == (4, 2)
    assert ls["last.dcp"]["last"] and ls["best.dcp"]["best"]
    assert ls["best.dcp"]["metrics"] == {"loss": 3.0}
    assert sorted(p.name for p in d.iterdir()) == [
        ".ckpt.lock", "best.dcp", "last.dcp", "manifest.json", "step-00000003.dcp",
        "step-00000004.dcp"]
    # numbered and last of one save share their files
    assert (d / "last.dcp" / ".metadata").stat().st_ino == \
        (d / "step-00000004.dcp" / ".metadata").stat().st_ino
    words, _ = resume(d)
    assert words == ["resumed", "last.dcp", "4", "epoch", "4"]
    t2_verify(tmp_path, [(d / "last.dcp", 4, 4096), (d / "best.dcp", 2, 4096),
                         (d / "step-00000003.dcp", 3, 4096)], world=1)
    # ckpt reads them too, and they verify
    for name in ls:
        proc = subprocess.run([ckpt_bin, "verify", str(d / name)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("rank,step,resumed", [(1, 2, 4), (0, 4, 4), (0, 5, 5), (0, 6, 5)])
def test_manager_save_killed_leaves_a_resumable_directory(tmp_path, ckpt_bin, rank, step,
                                                          resumed):
    need_mpi()
    d = tmp_path / "run"
    for s, loss in [(3, 4.0), (4, 3.0)]:
        _manager_save(d, s, loss)
    proc = _manager_save(d, 5, 1.0, env={"CKPT_DCP_KILL_AT": f"{rank}:{step}"}, expect_ok=False)
    assert proc.returncode != 0
    words, warnings = resume(d)
    assert words[2:] == [str(resumed), "epoch", str(resumed)], (words, warnings)
    ls = ckpt_ls(ckpt_bin, d)
    assert ls["last.dcp"]["step"] == resumed
    # nothing left beside the checkpoints once the manager has settled
    assert not [p.name for p in d.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    _manager_save(d, 6, 0.5)
    ls = ckpt_ls(ckpt_bin, d)
    assert (ls["last.dcp"]["step"], ls["best.dcp"]["step"]) == (6, 6)
    assert sorted(n for n in ls if n.startswith("step-")) == [
        f"step-{s:08d}.dcp" for s in sorted({resumed, 6})][-2:]


# ---- mpirun -np N build/mlp train --sharded (ZeRO stage 1) -----------------------

MLP = os.environ.get("CKPT_MLP") or str(SOURCE_DIR / "build" / "mlp")


def mlp_run(args, ranks=None):
    argv = [MLP, *args]
    if ranks:
        argv = ["mpirun", "-np", str(ranks), "--oversubscribe", *argv]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300,
                          env=mpi_env())
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")[-3000:]
    return proc.stdout.decode()


def losses(out):
    return {int(l.split()[1].rstrip(":")): (float(l.split()[3]), float(l.split()[5]))
            for l in out.splitlines() if l.startswith("epoch ")}


# torch 2.6 loads the model's rows from the DCP directory and runs the Net on
# mlp predict's fixed batch (x[i] = sin(i), 4 x 32)
PREDICT = r'''
import math, sys, torch, torch.distributed.checkpoint as dcp
import warnings; warnings.simplefilter("ignore")
sd = {"model": {"net.0.weight": torch.zeros(64, 32), "net.0.bias": torch.zeros(64),
                "net.2.weight": torch.zeros(10, 64), "net.2.bias": torch.zeros(10)}}
dcp.load(sd, checkpoint_id=sys.argv[1])
m = sd["model"]
x = torch.tensor([math.sin(i) for i in range(4 * 32)], dtype=torch.float32).reshape(4, 32)
out = torch.relu(x @ m["net.0.weight"].T + m["net.0.bias"]) @ m["net.2.weight"].T + m["net.2.bias"]
for row in out.tolist():
    print(" ".join(repr(v) for v in row))
'''


def test_mlp_sharded_trains_saves_dcp_and_resumes_on_other_rank_counts(tmp_path, ckpt_bin):
    need_mpi()
    d = tmp_path / "run"
    first = mlp_run(["train", "--dir", str(d), "--sharded", "--epochs", "2"], ranks=2)
    assert sorted(losses(first)) == [0, 1]
    assert sorted(p.name for p in d.iterdir() if not p.name.startswith(".")) == [
        "best.dcp", "last.dcp", "manifest.json"]
    # each rank's file holds its rows of every parameter and of AdamW's state
    md = subprocess.run([ckpt_bin, "inspect", str(d / "last.dcp")], stdout=subprocess.PIPE,
                        check=True).stdout.decode()
    assert "[0:32, 0:32]  __0_0.distcp" in md and "[32:64, 0:32]  __1_0.distcp" in md, md
    second = mlp_run(["train", "--dir", str(d), "--sharded", "--epochs", "4"], ranks=3)
    assert f"Resuming at epoch 2 from {d}/last.dcp on 3 ranks" in second
    third = mlp_run(["train", "--dir", str(d), "--sharded", "--epochs", "5"], ranks=1)
    assert f"Resuming at epoch 4 from {d}/last.dcp on 1 rank" in third
    sharded = {**losses(first), **losses(second), **losses(third)}
    # the same training as one process without MPI, up to float sums' order
    plain = losses(mlp_run(["train", "--dir", str(tmp_path / "plain"), "--epochs", "5"]))
    assert sorted(sharded) == sorted(plain) == [0, 1, 2, 3, 4]
    for e in plain:
        for a, b in zip(sharded[e], plain[e]):
            assert abs(a - b) <= 1e-5 * abs(b), (e, sharded[e], plain[e])
    # predict from the DCP directory = predict from its consolidated file
    from_dir = mlp_run(["predict", "--weights", str(d / "last.dcp")])
    run([ckpt_bin, "convert", str(d / "last.dcp"), str(tmp_path / "c.pth"), "-q"])
    assert from_dir == mlp_run(["predict", "--weights", str(tmp_path / "c.pth")])
    # and torch 2.6, loading the directory with dcp.load, computes the same outputs
    if T2:
        proc = subprocess.run([*shlex.split(T2), "-c", PREDICT, str(d / "last.dcp")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        ours = [[float(v) for v in l.split()] for l in from_dir.splitlines()]
        theirs = [[float(v) for v in l.split()] for l in proc.stdout.decode().splitlines()]
        assert len(ours) == len(theirs) == 4
        for a, b in zip(ours, theirs):
            assert all(abs(x - y) <= 1e-6 for x, y in zip(a, b)), (a, b)


def run(argv):
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc
