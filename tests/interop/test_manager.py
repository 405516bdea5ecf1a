"""The checkpoint manager (ckpt_manager_*), driven through tests/tools/ckpt_saveloop.

ckpt_saveloop is a training loop in C: for every step it saves

    {"model": OrderedDict(w=float32[E], w[i] = step + i*0.001f, b=float32[16] = step),
     "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
     "step": step, "metrics": {"val_loss": v}, "rng_state": uint8[64], "user_bytes": b"..."}

with v = val_loss(step) below, through ckpt_manager_save, and prints "saved STEP BITS".
The tests kill it at random moments, starve it of file size and disk space, hold its
lock, and check the directory with PyTorch, zlib and the ckpt CLI.

torch 1.13's weights_only reader lacks BINFLOAT and bytes, so whole training
checkpoints (which hold floats and bytes) load with weights_only=True only on torch 2;
on 1.13 `ckpt scan` vouches for them instead. Weights-only files (best.pth) load with
weights_only=True everywhere.
"""
import calendar
import errno
import json
import math
import os
import random
import re
import resource
import signal
import subprocess
import time
import zlib

import numpy as np
import pytest
import torch

SAVELOOP = os.environ.get("CKPT_SAVELOOP")
SANITIZED = os.environ.get("CKPT_SANITIZED", "0") not in ("0", "", "FALSE", "OFF")
TORCH2 = int(torch.__version__.split(".")[0]) >= 2
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer")

pytestmark = pytest.mark.skipif(not SAVELOOP,
                                reason="CKPT_SAVELOOP is not set (run through ctest)")

SAVED_LAST, SAVED_BEST, SAVED_NUMBERED = 0x1, 0x2, 0x4
LOCK_NAME = ".ckpt.lock"
NUMBERED = re.compile(r"step-(\d{8})\.pth")


# ---- the saveloop's content ---------------------------------------------------

def val_loss(step, trend=0.0):
    """The metric ckpt_saveloop records for a step (same double operations as C)."""
    return math.fmod(step * 0.6180339887, 1.0) - trend * step


def expected_w(step, elements):
    return np.float32(step) + np.arange(elements, dtype=np.float32) * np.float32(0.001)


def expected_rng(step):
    return bytes((step * 31 + k) & 255 for k in range(64))


def better(a, b, mode):
    return a < b if mode == "min" else a > b


def improving_steps(steps, mode, trend=0.0):
    """Steps whose save writes best.pth: the first, then each strict improvement."""
    out, best = [], None
    for s in steps:
        v = val_loss(s, trend)
        if best is None or better(v, best, mode):
            out.append(s)
            best = v
    return out


def retained(steps, keep_last, keep_best, mode, trend=0.0):
    """Numbered steps kept: the newest keep_last and the keep_best best."""
    steps = sorted(steps)
    newest = steps[len(steps) - keep_last:] if keep_last else []
    key = (lambda s: val_loss(s, trend)) if mode == "min" else (lambda s: -val_loss(s, trend))
    best = sorted(steps, key=key)[:keep_best]
    return sorted(set(newest) | set(best))


def written_numbered(steps, keep_last, keep_best, mode, trend=0.0):
    """Steps whose numbered file is written: those retention keeps right after their save."""
    return [s for i, s in enumerate(steps)
            if s in retained(steps[:i + 1], keep_last, keep_best, mode, trend)]


# ---- running things -----------------------------------------------------------

def describe(argv, proc_or_rc, out, err):
    rc = proc_or_rc if isinstance(proc_or_rc, int) else proc_or_rc.returncode
    return (f"command: {' '.join(map(str, argv))}\nexit: {rc}\n"
            f"stderr: {err[-3000:]}\nstdout: {out[-2000:]}")


def assert_no_crash(argv, rc, out, err):
    assert not any(m in err for m in SANITIZER_MARKS), describe(argv, rc, out, err)


def saveloop(d, *args, expect=0, timeout=120, preexec_fn=None):
    argv = [SAVELOOP, str(d), *map(str, args)]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout, preexec_fn=preexec_fn, restore_signals=False)
    text = describe(argv, p, p.stdout, p.stderr)
    assert p.returncode >= 0, "killed by a signal\n" + text
    assert_no_crash(argv, p.returncode, p.stdout, p.stderr)
    if expect is not None:
        assert p.returncode == expect, text
    return p


def saved_lines(stdout):
    """[(step, bits)] of the "saved STEP BITS" lines."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"^saved (\d+) (\d+)$", stdout, re.M)]


def ckpt(ckpt_bin, *args, timeout=120):
    argv = [ckpt_bin, *map(str, args)]
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    assert p.returncode >= 0, describe(argv, p, p.stdout, p.stderr)
    assert_no_crash(argv, p.returncode, p.stdout, p.stderr)
    return p


def has_command(ckpt_bin, name):
    return ckpt(ckpt_bin, name, "--help").returncode == 0


def ls_json(ckpt_bin, d):
    p = ckpt(ckpt_bin, "ls", d, "--json")
    assert p.returncode == 0, describe(["ls", d], p, p.stdout, p.stderr)
    return json.loads(p.stdout)


# ---- looking at a directory ---------------------------------------------------

def temporaries(d):
    """Temporaries in d (none when a kill came before the directory was made)."""
    if not d.exists():
        return []
    return sorted(n for n in os.listdir(d) if ".tmp-" in n)


def snapshot(d):
    """Every file of d but the lock, by name, with its bytes."""
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d)) if n != LOCK_NAME}


def numbered_steps(d):
    return sorted(int(m.group(1)) for n in os.listdir(d) if (m := NUMBERED.fullmatch(n)))


def load_full(path):
    return torch.load(path, weights_only=TORCH2)


def load_weights(path):
    return torch.load(path, weights_only=True)


def check_checkpoint(ck, step, elements):
    """ck is exactly what ckpt_saveloop saves at step."""
    assert list(ck) == ["model", "optimizer", "step", "metrics", "rng_state", "user_bytes"]
    assert ck["step"] == step
    check_weights(ck["model"], step, elements)
    assert ck["optimizer"] == {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]}
    assert list(ck["metrics"]) == ["val_loss"]
    rng = ck["rng_state"]
    assert rng.dtype == torch.uint8 and tuple(rng.shape) == (64,)
    assert bytes(rng.numpy().tobytes()) == expected_rng(step)
    assert ck["user_bytes"] == b"ckpt-step-%d" % step


def check_weights(model, step, elements):
    assert type(model).__name__ == "OrderedDict" and list(model) == ["w", "b"]
    w, b = model["w"], model["b"]
    assert w.dtype == torch.float32 and tuple(w.shape) == (elements,)
    assert b.dtype == torch.float32 and tuple(b.shape) == (16,)
    assert np.array_equal(w.numpy(), expected_w(step, elements)), f"w is not step {step}'s"
    assert np.array_equal(b.numpy(), np.full(16, step, dtype=np.float32))


def weights_step(model):
    """The step a weights file was saved at, from its b tensor."""
    b = model["b"].numpy()
    assert (b == b[0]).all()
    return int(b[0])


def check_manifest(d, allow_unknown=False):
    """manifest.json is settled and describes exactly the files in d; returns it."""
    mf = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
    assert mf["format"] == "ckpt-manifest" and mf["version"] == 1, mf
    assert mf["mode"] in ("min", "max")
    assert not mf.get("pending"), f"a settled manifest has pending entries: {mf}"
    entries = mf["checkpoints"]
    files = [e["file"] for e in entries]
    for name in mf.get("removing", []):  # removals listed by the last commit are done
        assert name not in files and not (d / name).exists(), f"{name} is still there"
    assert len(set(files)) == len(files), files
    numbered = [f for f in files if f not in ("last.pth", "best.pth")]
    assert all(NUMBERED.fullmatch(f) for f in numbered), files
    order = [f for f in ("last.pth", "best.pth") if f in files]
    order += sorted(numbered, key=lambda f: int(NUMBERED.fullmatch(f).group(1)))
    assert files == order, "manifest order"
    on_disk = {n for n in os.listdir(d) if n.endswith(".pth") and not n.startswith(".")}
    assert on_disk == set(files), f"files {sorted(on_disk)} vs manifest {files}"
    by_file = {}
    for e in entries:
        data = (d / e["file"]).read_bytes()
        assert e["size"] == len(data), e
        assert re.fullmatch(r"[0-9a-f]{8}", e["crc32"]), e
        assert e["crc32"] == "%08x" % zlib.crc32(data), f"{e['file']}: crc32 of the file differs"
        assert isinstance(e["last"], bool) and isinstance(e["best"], bool)
        assert e["content"] in ("checkpoint", "weights")
        if m := NUMBERED.fullmatch(e["file"]):
            assert e["step"] == int(m.group(1)), e
            assert e["content"] == "checkpoint"
        elif not allow_unknown:
            assert isinstance(e["step"], int) and e["step"] >= 0, e
        by_file[e["file"]] = e
    if "last.pth" in by_file:
        assert by_file["last.pth"]["last"] is True
        assert by_file["last.pth"]["content"] == "checkpoint"
    if "best.pth" in by_file:
        assert by_file["best.pth"]["best"] is True
    for e in entries:  # a numbered file marked last/best holds that save
        if e["last"] and "last.pth" in by_file:
            assert e.get("step") == by_file["last.pth"].get("step"), e
        if e["best"] and "best.pth" in by_file:
            assert e.get("step") == by_file["best.pth"].get("step"), e
    return mf


def entry(mf, name):
    found = [e for e in mf["checkpoints"] if e["file"] == name]
    assert len(found) == 1, f"{name} not in the manifest"
    return found[0]


# ---- crash safety -------------------------------------------------------------

def check_after_kill(d, ckpt_bin, elements, trend, low, high, in_flight):
    """After a kill: last.pth and best.pth are whole and consistent. The step of
    last.pth lies in [low, high]. The manager renames best.pth (and the numbered
    file) before last.pth, so best.pth may hold the save in flight (step
    in_flight) while last.pth does not yet; it never lags: it holds the best of
    every step up to last.pth's. Returns (last step, best step)."""
    last, best = d / "last.pth", d / "best.pth"
    if not last.exists():
        assert low < 0, "last.pth vanished"
        if best.exists():  # the first save, in flight
            model = load_weights(best)
            check_weights(model, weights_step(model), elements)
            assert weights_step(model) == in_flight
        return -1, None
    files = [last] + ([best] if best.exists() else [])
    p = ckpt(ckpt_bin, "verify", "-q", *files)
    assert p.returncode == 0, "a kill left a torn file\n" + p.stdout + p.stderr
    ck = load_full(last)
    step = ck["step"]
    assert low <= step <= high, f"last.pth holds step {step}, expected {low}..{high}"
    check_checkpoint(ck, step, elements)
    best_step = None
    if best.exists():
        model = load_weights(best)
        best_step = weights_step(model)
        check_weights(model, best_step, elements)
        assert best_step <= step or best_step == in_flight, \
            f"best.pth (step {best_step}) is ahead of last.pth ({step}) but not in flight"
        v = val_loss(best_step, trend)
        better_ones = [s for s in range(step + 1) if val_loss(s, trend) < v]
        assert not better_ones, (f"best.pth holds step {best_step} but steps "
                                 f"{better_ones[:5]} up to last.pth's step {step} were better")
    return step, best_step


@pytest.mark.parametrize("mode", ["blocking", "async"])
def test_kill9_at_random_moments(tmp_path, ckpt_bin, mode):
    """SIGKILL at hundreds of random moments: every name stays whole, the next
    open settles the directory, and resuming continues from last.pth. The
    async loop saves in the background (ckpt_manager_save_async) while it
    refills the tensors of the next step: the files hold each step's values."""
    d = tmp_path / "run"
    rnd = random.Random(0x5EED)
    iterations = (50 if SANITIZED else 200) // (2 if mode == "async" else 1)
    elements, trend = 64, 0.2
    keep_last, keep_best = 2, 2
    loop = [SAVELOOP, str(d), "--steps", "1000000", "--elements", elements,
            "--keep-last", keep_last, "--keep-best", keep_best, "--trend", trend, "--resume"]
    loop = list(map(str, loop)) + (["--async"] if mode == "async" else [])
    last_step = -1  # last.pth's step after the previous settle; -1 none
    started = time.monotonic()
    seen = {"last one ahead": 0, "best one ahead": 0, "temporaries": 0, "pending": 0}
    for it in range(iterations):
        proc = subprocess.Popen(loop, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(rnd.uniform(0.0, 0.060) * (3 if SANITIZED else 1))
        proc.kill()
        out, err = proc.communicate(timeout=60)
        info = f"iteration {it}\n" + describe(loop, proc, out, err)
        assert proc.returncode == -signal.SIGKILL, info
        assert_no_crash(loop, proc.returncode, out, err)
        lines = out.splitlines()
        if lines:
            want = "fresh" if last_step < 0 else f"resumed {last_step}"
            assert lines[0] == want, info
        saved = saved_lines(out)
        assert [s for s, _ in saved] == list(range(last_step + 1, last_step + 1 + len(saved))), info
        assert all(bits & SAVED_LAST for _, bits in saved), info
        low = saved[-1][0] if saved else last_step
        seen["temporaries"] += bool(temporaries(d))
        if (d / "manifest.json").exists():
            seen["pending"] += bool(json.loads((d / "manifest.json").read_text()).get("pending"))
        step, best_step = check_after_kill(d, ckpt_bin, elements, trend, low, low + 1, low + 1)
        whole = {n: (d / n).read_bytes() for n in ("last.pth", "best.pth") if (d / n).exists()}
        seen["last one ahead"] += step == low + 1
        seen["best one ahead"] += best_step is not None and best_step > step

        # the next open settles the crash and removes temporaries
        saveloop(d, "--steps", 0, "--elements", elements, "--keep-last", keep_last,
                 "--keep-best", keep_best, "--trend", trend)
        assert temporaries(d) == [], f"iteration {it}: temporaries left after an open"
        if step < 0 and not (d / "manifest.json").exists():
            continue
        mf = check_manifest(d)
        # settling decides from the files as they are: it does not change them
        assert whole == {n: (d / n).read_bytes() for n in whole}, f"iteration {it}"
        settled, settled_best = check_after_kill(d, ckpt_bin, elements, trend, step, step,
                                                 low + 1)
        if settled < 0:
            assert mf["checkpoints"] == [], f"iteration {it}: {mf}"
            continue
        assert entry(mf, "last.pth")["step"] == settled, f"iteration {it}: manifest vs last.pth"
        if settled_best is not None:
            assert entry(mf, "best.pth")["step"] == settled_best, f"iteration {it}"
            assert entry(mf, "best.pth")["content"] == "weights"
        last_step = settled
    elapsed = time.monotonic() - started
    assert last_step > 0, "no save ever completed"

    # a clean run after all that: retention over every step 0..last holds
    p = saveloop(d, "--steps", 3, "--elements", elements, "--keep-last", keep_last,
                 "--keep-best", keep_best, "--trend", trend, "--resume")
    assert p.stdout.splitlines()[0] == f"resumed {last_step}"
    final = last_step + 3
    mf = check_manifest(d)
    steps = list(range(final + 1))
    assert numbered_steps(d) == retained(steps, keep_last, keep_best, "min", trend)
    best = improving_steps(steps, "min", trend)[-1]
    assert weights_step(load_weights(d / "best.pth")) == best
    assert entry(mf, "best.pth")["step"] == best and entry(mf, "last.pth")["step"] == final
    for s in numbered_steps(d):
        check_checkpoint(load_full(d / f"step-{s:08d}.pth"), s, elements)
    print(f"{iterations} kills in {elapsed:.1f}s, reached step {final}, kills that found: {seen}")
    if not SANITIZED:  # the kills did land inside saves
        assert seen["temporaries"] and seen["pending"] and seen["last one ahead"], seen


def test_resume_skips_a_corrupt_last(tmp_path, ckpt_bin):
    """A corrupt last.pth (and numbered file of the same step) is skipped with a
    warning: resume opens the newest checkpoint that verifies."""
    d = tmp_path / "run"
    saveloop(d, "--steps", 5, "--elements", 256, "--keep-last", 2, "--no-fsync")
    assert numbered_steps(d) == [3, 4]
    w4 = expected_w(4, 256).tobytes()
    for name in ("last.pth", "step-00000004.pth"):
        data = bytearray((d / name).read_bytes())
        at = data.find(w4)  # absent when the two names share one inode
        if at >= 0:
            data[at + len(w4) // 2] ^= 0xFF  # a flipped bit in a tensor record
            with open(d / name, "r+b") as f:
                f.write(data)
    for name in ("last.pth", "step-00000004.pth"):
        assert ckpt(ckpt_bin, "verify", "-q", d / name).returncode == 1, name
    p = saveloop(d, "--steps", 0, "--resume", "--elements", 256, "--keep-last", 2, "--no-fsync")
    assert p.stdout.splitlines()[0] == "resumed 3", p.stdout + p.stderr
    assert "warning: " in p.stderr


# ---- errors leave everything as it was ----------------------------------------

def ignore_xfsz_and_limit(limit):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


@pytest.mark.parametrize("which", ["half", "all_but_one_byte"])
def test_file_size_limit(tmp_path, which):
    """RLIMIT_FSIZE below the next file's size: the save fails clearly, every
    previous file is byte-identical and no temporary remains."""
    d = tmp_path / "run"
    common = ["--elements", 4096, "--keep-last", 2, "--keep-best", 1, "--trend", 0.2]
    saveloop(d, "--steps", 4, *common)  # steps 0..3
    # an open drops the finished "removing" list from the manifest: do it first
    saveloop(d, "--steps", 0, *common)
    before = snapshot(d)
    assert {"last.pth", "best.pth", "manifest.json"} <= set(before)
    size = len(before["last.pth"])
    limit = size // 2 if which == "half" else size - 1
    # step 4 improves val_loss: last.pth, best.pth and a numbered file are due
    assert 4 in improving_steps(range(5), "min", 0.2)
    p = saveloop(d, "--start", 4, "--steps", 1, *common, expect=1,
                 preexec_fn=ignore_xfsz_and_limit(limit))
    assert "File too large" in p.stderr, p.stderr
    assert temporaries(d) == []
    assert snapshot(d) == before
    # without the limit the same save goes through
    p = saveloop(d, "--start", 4, "--steps", 1, *common)
    assert saved_lines(p.stdout) == [(4, SAVED_LAST | SAVED_BEST | SAVED_NUMBERED)]
    check_manifest(d)


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("room_kib", [0, 24])
def test_full_filesystem(small_fs, room_kib):
    """A disk that fills up mid-save: a clear error, old files byte-identical, no
    temporaries; once there is room again the save goes through."""
    d = small_fs / "run"
    common = ["--elements", 4096, "--keep-last", 1, "--trend", 0.2]
    saveloop(d, "--steps", 4, *common)
    saveloop(d, "--steps", 0, *common)  # settled: the next open changes nothing
    before = snapshot(d)
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    # leave room_kib free: room for last.pth's temporary at most, not for best.pth's
    # too (the numbered file is a second name of last's, it takes no room)
    os.truncate(filler, max(0, filler.stat().st_size - room_kib * 1024))
    assert room_kib * 1024 < len(before["last.pth"]) + len(before["best.pth"])
    p = saveloop(d, "--start", 4, "--steps", 1, *common, expect=1)
    assert "No space left on device" in p.stderr, p.stderr
    assert temporaries(d) == []
    assert snapshot(d) == before
    filler.unlink()
    p = saveloop(d, "--start", 4, "--steps", 1, *common)
    assert saved_lines(p.stdout) == [(4, SAVED_LAST | SAVED_BEST | SAVED_NUMBERED)]
    check_manifest(d)


def test_read_only_filesystem(small_fs, ckpt_bin):
    """A run directory whose filesystem turned read-only: the next run stops with a
    clear error, every file as it was, and the directory still lists."""
    d = small_fs / "run"
    common = ["--elements", 1024, "--keep-last", 1]
    saveloop(d, "--steps", 2, *common)
    saveloop(d, "--steps", 0, *common)
    before = snapshot(d)
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        p = saveloop(d, "--start", 2, "--steps", 1, *common, expect=1)
        assert "Read-only file system" in p.stderr, p.stderr
        assert snapshot(d) == before
        assert temporaries(d) == []
        ls = subprocess.run([ckpt_bin, "ls", str(d), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, timeout=60)
        assert ls.returncode == 0, ls.stderr
        files = [c["file"] for c in json.loads(ls.stdout)["checkpoints"]]
        assert files == ["last.pth", "best.pth", "step-00000001.pth"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)


def test_large_tensors_recorded_exactly(tmp_path):
    """Tensors of megabytes, whose CRCs (the record's and the whole file's) are taken
    on a second thread while they are written: the manifest's sizes and CRC32s are the
    files' own, and the files verify and load."""
    d = tmp_path / "run"
    elements = 3 << 20  # 12 MiB of float32
    saveloop(d, "--steps", 3, "--elements", elements, "--keep-last", 2, "--trend", 0.5,
             "--no-fsync")
    check_manifest(d)
    for name in ("last.pth", "best.pth", "step-00000002.pth"):
        sd = torch.load(d / name, weights_only=False)
        w = sd["model"]["w"] if "model" in sd else sd["w"]
        assert w.numel() == elements
        step = 2 if name != "best.pth" else int(w[0].item())
        expect = step + torch.arange(elements, dtype=torch.float32) * 0.001
        assert torch.equal(w, expect), name


def test_missing_monitored_metric_is_an_error(tmp_path):
    d = tmp_path / "run"
    p = saveloop(d, "--steps", 1, "--monitor", "accuracy", expect=1)
    assert "accuracy" in p.stderr, p.stderr
    assert not [n for n in os.listdir(d) if n.endswith(".pth")] and temporaries(d) == []


# ---- retention and best --------------------------------------------------------

RETENTION_CASES = [
    # mode, first step, keep_last, keep_best, numbered written, numbered kept, best saves
    # val_loss(0..10) = 0, .618, .236, .854, .472, .090, .708, .326, .944, .562, .180
    ("min", 0, 2, 2, list(range(10)), [0, 5, 8, 9], [0]),
    ("max", 0, 2, 2, list(range(10)), [3, 8, 9], [0, 1, 3, 8]),
    ("min", 1, 0, 2, [1, 2, 4, 5, 10], [5, 10], [1, 2, 5]),
]


@pytest.mark.parametrize("case", RETENTION_CASES, ids=["min", "max", "best-only"])
def test_retention_worked_example(tmp_path, ckpt_bin, case):
    mode, start, keep_last, keep_best, written, kept, best_saves = case
    steps = list(range(start, start + 10))
    # the literals are what the rules give
    assert written == written_numbered(steps, keep_last, keep_best, mode)
    assert kept == retained(steps, keep_last, keep_best, mode)
    assert best_saves == improving_steps(steps, mode)

    d = tmp_path / "run"
    p = saveloop(d, "--start", start, "--steps", 10, "--elements", 128, "--mode", mode,
                 "--keep-last", keep_last, "--keep-best", keep_best, "--no-fsync")
    bits = dict(saved_lines(p.stdout))
    assert list(bits) == steps
    for s in steps:
        want = SAVED_LAST | (SAVED_BEST if s in best_saves else 0) | \
            (SAVED_NUMBERED if s in written else 0)
        assert bits[s] == want, f"step {s}: bits {bits[s]}, expected {want}"
    assert numbered_steps(d) == kept
    assert temporaries(d) == []
    best = best_saves[-1]
    last = steps[-1]

    mf = check_manifest(d)
    assert mf["monitor"] == "val_loss" and mf["mode"] == mode
    assert [e["file"] for e in mf["checkpoints"]] == \
        ["last.pth", "best.pth"] + [f"step-{s:08d}.pth" for s in kept]
    assert entry(mf, "last.pth")["step"] == last
    assert entry(mf, "best.pth")["step"] == best
    assert entry(mf, "best.pth")["content"] == "weights"
    for e in mf["checkpoints"]:
        assert e["metrics"] == {"val_loss": val_loss(e["step"])}, e
    check_checkpoint(load_full(d / "last.pth"), last, 128)
    check_weights(load_weights(d / "best.pth"), best, 128)
    for s in kept:
        check_checkpoint(load_full(d / f"step-{s:08d}.pth"), s, 128)

    if not has_command(ckpt_bin, "ls"):
        pytest.skip("ckpt ls is not there yet")
    listing = ls_json(ckpt_bin, d)
    assert listing["monitor"] == "val_loss" and listing["mode"] == mode
    got = [(c["file"], c["step"]) for c in listing["checkpoints"]]
    assert got == [("last.pth", last), ("best.pth", best)] + \
        [(f"step-{s:08d}.pth", s) for s in kept]
    for c, e in zip(listing["checkpoints"], mf["checkpoints"]):
        assert c["metrics"] == e["metrics"] and c["best"] == e["best"] and c["last"] == e["last"]
        assert c["size"] == e["size"] and c["crc32"] == e["crc32"]
    assert listing["checkpoints"][0]["last"] and listing["checkpoints"][1]["best"]
    text = ckpt(ckpt_bin, "ls", d)
    assert text.returncode == 0 and "best.pth" in text.stdout and "step-" in text.stdout


def test_best_full(tmp_path):
    d = tmp_path / "run"
    saveloop(d, "--steps", 3, "--elements", 32, "--best-full", "--no-fsync")
    mf = check_manifest(d)
    assert entry(mf, "best.pth")["content"] == "checkpoint"
    check_checkpoint(load_full(d / "best.pth"), 0, 32)  # val_loss(0) = 0 stays best


def test_prune(tmp_path, ckpt_bin):
    if not has_command(ckpt_bin, "prune"):
        pytest.skip("ckpt prune is not there yet")
    d = tmp_path / "run"
    saveloop(d, "--steps", 10, "--elements", 64, "--keep-last", 5, "--no-fsync")
    assert numbered_steps(d) == [5, 6, 7, 8, 9]
    before = snapshot(d)
    p = ckpt(ckpt_bin, "prune", d, "--keep", 1, "--keep-best", 1)
    assert p.returncode == 0, p.stderr
    # newest 1: step 9; best 1 of 5..9 by val_loss: step 5 (.090)
    assert retained(range(5, 10), 1, 1, "min") == [5, 9]
    assert numbered_steps(d) == [5, 9]
    after = snapshot(d)
    for name in ("last.pth", "best.pth", "step-00000005.pth", "step-00000009.pth"):
        assert after[name] == before[name], name
    mf = check_manifest(d)
    assert [e["file"] for e in mf["checkpoints"]] == \
        ["last.pth", "best.pth", "step-00000005.pth", "step-00000009.pth"]
    assert temporaries(d) == []


# ---- the lock -----------------------------------------------------------------

def test_one_process_at_a_time(tmp_path, ckpt_bin):
    d = tmp_path / "run"
    argv = [SAVELOOP, str(d), "--steps", "1000000", "--elements", "64", "--no-fsync"]
    holder = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = holder.stdout.readline()
        assert first.startswith("saved 0 "), first
        p = saveloop(d, "--steps", 1, expect=1)
        assert str(d) in p.stderr, f"the lock error does not name the directory: {p.stderr}"
        assert re.search(r"lock|busy|another process", p.stderr, re.I), p.stderr
        if has_command(ckpt_bin, "prune"):
            q = ckpt(ckpt_bin, "prune", d, "--keep", 1)
            assert q.returncode != 0 and str(d) in q.stderr, q.stderr
        if has_command(ckpt_bin, "ls"):  # read-only: no lock needed
            listing = ls_json(ckpt_bin, d)
            assert listing["checkpoints"][0]["file"] == "last.pth"
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    # the kernel dropped the lock with the process: a new run opens, settles, resumes
    step = load_full(d / "last.pth")["step"]
    p = saveloop(d, "--steps", 1, "--resume", "--elements", 64)
    assert p.stdout.splitlines()[0] == f"resumed {step}"
    assert [s for s, _ in saved_lines(p.stdout)] == [step + 1]
    assert temporaries(d) == []
    check_manifest(d)


# ---- PyTorch interop ----------------------------------------------------------

class Net(torch.nn.Module):
    def __init__(self, elements):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(elements))
        self.b = torch.nn.Parameter(torch.zeros(16))


def test_files_load_in_torch(tmp_path, ckpt_bin):
    d = tmp_path / "run"
    elements = 4096
    saveloop(d, "--start", 5, "--steps", 3, "--elements", elements)  # 5, 6, 7
    ck = load_full(d / "last.pth")
    check_checkpoint(ck, 7, elements)
    assert ck["metrics"]["val_loss"] == val_loss(7)
    assert bytes(ck["rng_state"].tolist()) == expected_rng(7)
    scan = ckpt(ckpt_bin, "scan", d / "last.pth")
    assert scan.returncode == 0 and "unsafe" not in scan.stdout, scan.stdout
    # best.pth (step 5: .090 beats .708 and .326) is a state dict for the module
    sd = load_weights(d / "best.pth")
    net = Net(elements)
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.b.detach(), torch.full((16,), 5.0))
    assert np.array_equal(net.w.detach().numpy(), expected_w(5, elements))


def torch_checkpoint(step, elements):
    """What ckpt_saveloop saves, made by PyTorch."""
    from collections import OrderedDict
    model = OrderedDict(w=torch.from_numpy(expected_w(step, elements)),
                        b=torch.full((16,), float(step)))
    return {"model": model,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
            "step": step, "metrics": {"val_loss": val_loss(step)},
            "rng_state": torch.tensor(list(expected_rng(step)), dtype=torch.uint8),
            "user_bytes": b"ckpt-step-%d" % step}


def test_adopts_a_last_pth_written_by_torch(tmp_path, ckpt_bin):
    d = tmp_path / "run"
    d.mkdir()
    torch.save(torch_checkpoint(41, 64), d / "last.pth")
    if has_command(ckpt_bin, "ls"):
        listing = ls_json(ckpt_bin, d)
        assert [c["file"] for c in listing["checkpoints"]] == ["last.pth"]
        assert listing["checkpoints"][0]["step"] in (None, -1)
    saveloop(d, "--steps", 0)
    mf = check_manifest(d, allow_unknown=True)
    e = entry(mf, "last.pth")
    assert e.get("step") in (None, -1), e
    p = saveloop(d, "--steps", 2, "--resume", "--elements", 64)
    assert p.stdout.splitlines()[0] == "resumed 41"
    assert [s for s, _ in saved_lines(p.stdout)] == [42, 43]
    mf = check_manifest(d)
    assert entry(mf, "last.pth")["step"] == 43
    check_checkpoint(load_full(d / "last.pth"), 43, 64)
    best = improving_steps([42, 43], "min")[-1]
    assert entry(mf, "best.pth")["step"] == best
    check_weights(load_weights(d / "best.pth"), best, 64)


def test_manifest_records_versions_and_user_metadata(tmp_path, ckpt_bin):
    d = tmp_path / "run"
    user = {"run": "r-17", "lr": 0.001, "tags": ["a", "b"], "nested": {"seed": 3}}
    t0 = time.time()
    saveloop(d, "--steps", 3, "--elements", 32, "--keep-last", 1, "--no-fsync",
             "--torch-version", "1.13.1", "--user-json", json.dumps(user))
    t1 = time.time()
    mf = check_manifest(d)
    assert len(mf["checkpoints"]) == 3
    for e in mf["checkpoints"]:
        assert e["torch_version"] == "1.13.1" and e["user"] == user, e
        assert e["ckpt_version"] == "0.1.0" and e["format_version"] == 3, e
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["time"]), e
        at = calendar.timegm(time.strptime(e["time"], "%Y-%m-%dT%H:%M:%SZ"))
        assert t0 - 2 <= at <= t1 + 2, e
    if has_command(ckpt_bin, "ls"):
        listing = ls_json(ckpt_bin, d)
        assert all(c["torch_version"] == "1.13.1" and c["user"] == user
                   for c in listing["checkpoints"])
    # without them, the keys are absent
    d2 = tmp_path / "plain"
    saveloop(d2, "--steps", 1, "--elements", 32, "--no-fsync")
    for e in check_manifest(d2)["checkpoints"]:
        assert "torch_version" not in e and "user" not in e, e


def test_resume_fresh_then_continue(tmp_path):
    d = tmp_path / "run"
    p = saveloop(d, "--steps", 2, "--resume", "--start", 10, "--no-fsync", "--elements", 16)
    assert p.stdout.splitlines()[0] == "fresh"
    assert [s for s, _ in saved_lines(p.stdout)] == [10, 11]
    p = saveloop(d, "--steps", 1, "--resume", "--no-fsync", "--elements", 16)
    assert p.stdout.splitlines()[0] == "resumed 11"
    assert [s for s, _ in saved_lines(p.stdout)] == [12]
