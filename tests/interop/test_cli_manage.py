"""`ckpt ls DIR` and `ckpt prune DIR`: a checkpoint directory kept by the manager,
listed read-only and trimmed under its lock.

The directories are made by hand: real files written by torch.save, and a
manifest.json whose sizes and CRC32s match them, as the manager commits it.
"""
import fcntl
import json
import os
import re
import shutil
import zlib

import pytest
import torch

TIME_ISO = "2026-11-28T15:20:51Z"
TIME_TEXT = "2026-11-28 15:20:51"


def numbered(step):
    return f"step-{step:08d}.pth"


def weights(seed):
    g = torch.Generator().manual_seed(seed)
    return {"layer.weight": torch.randn(4, 3, generator=g),
            "layer.bias": torch.randn(4, generator=g)}


def checkpoint(seed, step):
    return {"model": weights(seed), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            "step": step}


def make_dir(d, entries, monitor="val_loss", mode="min"):
    """Writes each entry's object with torch.save and a manifest that matches.

    entries: dicts with file, obj, step, metrics and optionally content,
    torch_version, user, time.
    """
    d.mkdir(parents=True, exist_ok=True)
    records = []
    for e in entries:
        path = d / e["file"]
        torch.save(e["obj"], path)
        raw = path.read_bytes()
        rec = {"file": e["file"], "step": e["step"], "metrics": e["metrics"],
               "size": len(raw), "crc32": f"{zlib.crc32(raw) & 0xffffffff:08x}",
               "time": e.get("time", TIME_ISO), "ckpt_version": "0.1.0", "format_version": 3,
               "content": e.get("content", "checkpoint"),
               "last": e["file"] == "last.pth", "best": e["file"] == "best.pth"}
        for key in ("torch_version", "user"):
            if key in e:
                rec[key] = e[key]
        records.append(rec)
    manifest = {"format": "ckpt-manifest", "version": 1, "monitor": monitor, "mode": mode,
                "checkpoints": records}
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return d


def standard_entries():
    """last.pth (step 30), best.pth (weights of step 20) and three numbered files.

    val_loss is best at step 20; "lr" appears only from step 20 on and "acc" is
    NaN at step 10, so the listing's metric columns are a union.
    """
    return [
        {"file": "last.pth", "obj": checkpoint(3, 30), "step": 30,
         "metrics": {"val_loss": 0.3, "acc": 0.8}, "torch_version": "1.13.1",
         "user": {"run": "a", "lr": 0.1}},
        {"file": "best.pth", "obj": weights(2), "step": 20,
         "metrics": {"val_loss": 0.1, "acc": 0.9, "lr": 0.01}, "content": "weights"},
        {"file": numbered(10), "obj": checkpoint(1, 10), "step": 10,
         "metrics": {"val_loss": 0.5, "acc": "NaN"}},
        {"file": numbered(20), "obj": checkpoint(2, 20), "step": 20,
         "metrics": {"val_loss": 0.1, "acc": 0.9, "lr": 0.01}},
        {"file": numbered(30), "obj": checkpoint(3, 30), "step": 30,
         "metrics": {"val_loss": 0.3, "acc": 0.8}},
    ]


@pytest.fixture(scope="module")
def template(gen_dir):
    return make_dir(gen_dir / "manage" / "template", standard_entries())


@pytest.fixture
def run_dir(template, tmp_path):
    """A fresh copy of the standard directory for tests that change it."""
    d = tmp_path / "run"
    shutil.copytree(template, d)
    return d


def snapshot(d):
    """Every name in d with its bytes: what 'changes nothing' compares."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def one_line(text):
    lines = text.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"expected one line, got {text!r}"
    return lines[0]


def ls_json(tool, d):
    res = tool.run("ls", d, "--json")
    assert res.returncode == 0, res.describe()
    assert res.stderr == "", res.describe()
    return json.loads(res.stdout)


# ---- ls ---------------------------------------------------------------------


def test_ls_json(tool, template):
    out = ls_json(tool, template)
    assert list(out) == ["directory", "monitor", "mode", "checkpoints"]
    assert out["directory"] == str(template)
    assert out["monitor"] == "val_loss" and out["mode"] == "min"
    by_file = {c["file"]: c for c in out["checkpoints"]}
    # last.pth, best.pth, then the numbered files by step
    assert [c["file"] for c in out["checkpoints"]] == [
        "last.pth", "best.pth", numbered(10), numbered(20), numbered(30)]
    keys = ["file", "step", "metrics", "best", "last", "size", "crc32", "time", "ckpt_version",
            "format_version", "torch_version", "user", "content"]
    for c in out["checkpoints"]:
        assert list(c) == keys, c
        raw = (template / c["file"]).read_bytes()
        assert c["size"] == len(raw)
        assert c["crc32"] == f"{zlib.crc32(raw) & 0xffffffff:08x}"
        assert re.fullmatch(r"[0-9a-f]{8}", c["crc32"])
        assert c["time"] == TIME_ISO
        assert c["ckpt_version"] == "0.1.0" and c["format_version"] == 3
    last, best = by_file["last.pth"], by_file["best.pth"]
    assert last["last"] is True and last["best"] is False
    assert best["best"] is True and best["last"] is False
    assert last["step"] == 30 and best["step"] == 20
    assert last["content"] == "checkpoint" and best["content"] == "weights"
    assert last["metrics"] == {"val_loss": 0.3, "acc": 0.8}
    assert last["torch_version"] == "1.13.1"
    assert last["user"] == {"run": "a", "lr": 0.1}
    assert best["torch_version"] is None and best["user"] is None
    assert by_file[numbered(20)]["metrics"] == {"val_loss": 0.1, "acc": 0.9, "lr": 0.01}
    # non-finite metrics as the strings Python's json module reads back
    assert by_file[numbered(10)]["metrics"] == {"val_loss": 0.5, "acc": "NaN"}
    assert all(c["content"] == "checkpoint" for f, c in by_file.items() if f != "best.pth")
    # a numbered file of the step last.pth / best.pth hold shares their mark
    marks = {f: (c["last"], c["best"]) for f, c in by_file.items()}
    assert marks[numbered(10)] == (False, False)
    assert marks[numbered(20)] == (False, True)
    assert marks[numbered(30)] == (True, False)


def test_ls_text(tool, template):
    res = tool.run("ls", template)
    assert res.returncode == 0, res.describe()
    assert res.stderr == ""
    lines = res.stdout.rstrip("\n").split("\n")
    assert lines[0] == f"checkpoints in {template} (best by val_loss, min)"
    # metric columns: the union of the entries' names, in first-seen order
    assert lines[1].split() == ["FILE", "STEP", "SIZE", "val_loss", "acc", "lr", "TIME", "FLAGS"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == ["last.pth", "best.pth", numbered(10), numbered(20), numbered(30)]
    size = (template / "last.pth").stat().st_size
    human = f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"
    assert re.search(rf"^last\.pth\s+30\s+{re.escape(human)}\s+0\.3\s+0\.8\s+-\s+"
                     rf"{TIME_TEXT}\s+last$", rows["last.pth"]), rows["last.pth"]
    assert re.search(rf"^best\.pth\s+20\s+.*\s+0\.1\s+0\.9\s+0\.01\s+{TIME_TEXT}\s+best,weights$",
                     rows["best.pth"]), rows["best.pth"]
    row10 = rows[numbered(10)]
    assert re.search(rf"\s0\.5\s+nan\s+-\s+{TIME_TEXT}\s+-$", row10), row10
    assert rows[numbered(20)].endswith(" best") and rows[numbered(30)].endswith(" last")
    # columns line up: every row starts its TIME at the header's column
    col = lines[1].index("TIME")
    assert all(line[col:col + len(TIME_TEXT)] == TIME_TEXT for line in lines[2:])


def test_ls_unknown_step_and_mode(tool, gen_dir):
    """step -1 (a file the manager did not write) is null / "-"; max mode."""
    entries = [
        {"file": "last.pth", "obj": checkpoint(5, 0), "step": -1, "metrics": {}, "time": None},
        {"file": numbered(7), "obj": checkpoint(6, 7), "step": 7, "metrics": {"acc": 0.25}},
    ]
    d = make_dir(gen_dir / "manage" / "unknown", entries, monitor="acc", mode="max")
    out = ls_json(tool, d)
    assert out["monitor"] == "acc" and out["mode"] == "max"
    last = out["checkpoints"][0]
    assert last["file"] == "last.pth"
    assert last["step"] is None and last["time"] is None and last["metrics"] == {}
    res = tool.run("ls", d)
    assert res.returncode == 0, res.describe()
    lines = res.stdout.rstrip("\n").split("\n")
    assert lines[0] == f"checkpoints in {d} (best by acc, max)"
    assert lines[1].split() == ["FILE", "STEP", "SIZE", "acc", "TIME", "FLAGS"]
    assert re.search(r"^last\.pth\s+-\s+\d+\.\d KiB\s+-\s+-\s+last$", lines[2]), lines[2]


def test_ls_no_monitor(tool, gen_dir):
    entries = [{"file": "last.pth", "obj": checkpoint(8, 3), "step": 3, "metrics": {"loss": 1.5}}]
    d = make_dir(gen_dir / "manage" / "nomon", entries, monitor=None)
    out = ls_json(tool, d)
    assert out["monitor"] is None and out["mode"] is None
    assert out["checkpoints"][0]["metrics"] == {"loss": 1.5}
    res = tool.run("ls", d)
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith(f"checkpoints in {d} (no monitored metric)\n")


def test_ls_changes_nothing(tool, run_dir):
    before = snapshot(run_dir)
    names = sorted(os.listdir(run_dir))
    assert ls_json(tool, run_dir)["checkpoints"]
    assert tool.run("ls", run_dir).returncode == 0
    assert sorted(os.listdir(run_dir)) == names  # no lock file, no temporaries
    assert snapshot(run_dir) == before


def test_ls_while_locked(tool, run_dir):
    """ls takes no lock: it lists while a training run holds the directory."""
    with open(run_dir / ".ckpt.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = ls_json(tool, run_dir)
    assert len(out["checkpoints"]) == 5


def test_ls_missing_dir(tool, tmp_path):
    missing = tmp_path / "no-such-dir"
    for extra in ((), ("--json",)):
        res = tool.run("ls", missing, *extra)
        assert res.returncode == 2, res.describe()
        assert res.stdout == ""
        line = one_line(res.stderr)
        assert line.startswith(f"ckpt: {missing}: ") and "No such file" in line, line
    assert not missing.exists()  # not created
    afile = tmp_path / "plain.txt"
    afile.write_text("x")
    res = tool.run("ls", afile)
    assert res.returncode == 2 and str(afile) in one_line(res.stderr)


def test_ls_usage(tool, template):
    res = tool.run("ls", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ckpt ls"), res.describe()
    for args in ((), (template, "--bogus"), (template, template)):
        res = tool.run("ls", *args)
        assert res.returncode == 2, res.describe()
        assert "usage: ckpt ls" in res.stderr and res.stdout == ""
    res = tool.run("--help")
    assert "ls DIR" in res.stdout and "prune DIR" in res.stdout


# ---- prune ---------------------------------------------------------------------


def would_remove(res):
    assert res.returncode == 0, res.describe()
    lines = [line for line in res.stdout.split("\n") if line]
    assert all(line.startswith("would remove ") for line in lines), res.stdout
    return [line[len("would remove "):] for line in lines]


def test_prune_dry_run(tool, run_dir):
    before = snapshot(run_dir)
    names = sorted(os.listdir(run_dir))
    res = tool.run("prune", run_dir, "--keep", "1", "--dry-run")
    assert would_remove(res) == [numbered(10), numbered(20)]
    res = tool.run("prune", run_dir, "--keep", "1", "--keep-best", "1", "--dry-run")
    assert would_remove(res) == [numbered(10)]
    res = tool.run("prune", run_dir, "--keep=0", "--dry-run")
    assert would_remove(res) == [numbered(10), numbered(20), numbered(30)]
    res = tool.run("prune", run_dir, "--keep", "5", "--dry-run")
    assert would_remove(res) == []
    assert sorted(os.listdir(run_dir)) == names
    assert snapshot(run_dir) == before


def test_prune_keep_one(tool, run_dir):
    res = tool.run("prune", run_dir, "--keep", "1")
    assert res.returncode == 0, res.describe()
    assert res.stdout == "removed 2 file(s)\n"
    left = {p.name for p in run_dir.iterdir() if p.suffix == ".pth"}
    assert left == {"last.pth", "best.pth", numbered(30)}
    out = ls_json(tool, run_dir)
    assert [c["file"] for c in out["checkpoints"]] == ["last.pth", "best.pth", numbered(30)]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {c["file"] for c in manifest["checkpoints"]} == left
    # nothing more to remove
    res = tool.run("prune", run_dir, "--keep", "1", "-q")
    assert res.returncode == 0 and res.stdout == ""


def test_prune_keep_best(tool, run_dir):
    """min val_loss: step 20 is the best, step 30 the newest; step 10 goes."""
    predicted = would_remove(tool.run("prune", run_dir, "--keep", "1", "--keep-best", "1",
                                      "--dry-run"))
    res = tool.run("prune", run_dir, "--keep", "1", "--keep-best", "1")
    assert res.returncode == 0, res.describe()
    assert res.stdout == "removed 1 file(s)\n"
    assert predicted == [numbered(10)]
    left = {p.name for p in run_dir.iterdir() if p.suffix == ".pth"}
    assert left == {"last.pth", "best.pth", numbered(20), numbered(30)}


def test_prune_busy(tool, run_dir):
    before = snapshot(run_dir)
    with open(run_dir / ".ckpt.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = tool.run("prune", run_dir, "--keep", "0")
        assert res.returncode == 2, res.describe()
        assert res.stdout == ""
        line = one_line(res.stderr)
        assert str(run_dir) in line
        assert "lock" in line.lower() or "busy" in line.lower(), line
    after = snapshot(run_dir)
    after.pop(".ckpt.lock", None)
    before.pop(".ckpt.lock", None)
    assert after == before


def test_prune_missing_dir(tool, tmp_path):
    missing = tmp_path / "gone"
    res = tool.run("prune", missing, "--keep", "1")
    assert res.returncode == 2, res.describe()
    assert "No such file" in one_line(res.stderr)
    assert not missing.exists()


def test_prune_usage(tool, template):
    res = tool.run("prune", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ckpt prune"), res.describe()
    for args in ((), (template,), (template, "--keep"), (template, "--keep", "x"),
                 (template, "--keep", "-1"), (template, "--keep", "1", "--keep-best", "1.5"),
                 (template, "--keep", "1", "--bogus"), (template, template, "--keep", "1")):
        res = tool.run("prune", *args)
        assert res.returncode == 2, res.describe()
        assert "usage: ckpt prune" in res.stderr and res.stdout == "", res.describe()


def test_ls_file_not_in_manifest(tool, tmp_path):
    """A last.pth written by PyTorch alone: listed with unknown step, and a warning."""
    d = tmp_path / "plain"
    d.mkdir()
    torch.save(checkpoint(9, 1), d / "last.pth")
    res = tool.run("ls", d, "--json")
    assert res.returncode == 0, res.describe()
    out = json.loads(res.stdout)
    assert out["monitor"] is None and out["mode"] is None
    (entry,) = out["checkpoints"]
    assert entry["file"] == "last.pth" and entry["step"] is None and entry["last"] is True
    assert entry["metrics"] == {} and entry["content"] == "checkpoint"
    raw = (d / "last.pth").read_bytes()
    assert entry["size"] == len(raw) and entry["crc32"] == f"{zlib.crc32(raw) & 0xffffffff:08x}"
    warnings = res.stderr.rstrip("\n").split("\n")
    assert warnings and all(w.startswith("ckpt: warning: ") for w in warnings), res.stderr
    assert "last.pth" in res.stderr
    assert sorted(os.listdir(d)) == ["last.pth"]  # read-only: no manifest, no lock written
    res = tool.run("ls", d)
    assert res.returncode == 0, res.describe()
    assert re.search(r"^last\.pth\s+-\s", res.stdout, re.M), res.stdout


def test_ls_empty_dir(tool, tmp_path):
    out = ls_json(tool, tmp_path)
    assert out == {"directory": str(tmp_path), "monitor": None, "mode": None, "checkpoints": []}
    res = tool.run("ls", tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"checkpoints in {tmp_path} ")
    assert os.listdir(tmp_path) == []


# ---- directories the manager did not write, and broken ones -------------------


def lightning_dir(d):
    """What Lightning's ModelCheckpoint leaves: no manifest, its own names."""
    d.mkdir()
    torch.save(checkpoint(1, 100), d / "epoch=3-step=100.ckpt")
    torch.save(checkpoint(2, 200), d / "last.ckpt")
    (d / "hparams.yaml").write_text("lr: 0.1\n")
    (d / "config.json").write_text("{}")
    return d


def test_ls_foreign_dir(tool, tmp_path):
    """Checkpoint files the manager did not write are listed, read-only, step -."""
    d = lightning_dir(tmp_path / "lightning")
    before = snapshot(d)
    res = tool.run("ls", d)
    assert res.returncode == 0, res.describe()
    assert "no manifest.json" in res.stdout.split("\n")[0], res.stdout
    assert re.search(r"^epoch=3-step=100\.ckpt\s+-\s.*foreign$", res.stdout, re.M), res.stdout
    assert re.search(r"^last\.ckpt\s+-\s.*foreign$", res.stdout, re.M), res.stdout
    assert "hparams.yaml" not in res.stdout and "config.json" not in res.stdout
    out = ls_json(tool, d)
    assert [(c["file"], c["step"], c["content"], c["format"]) for c in out["checkpoints"]] == [
        ("epoch=3-step=100.ckpt", None, "foreign", "torch-zip"),
        ("last.ckpt", None, "foreign", "torch-zip")]
    assert snapshot(d) == before and sorted(os.listdir(d)) == sorted(before)


def test_ls_extra_and_numbered_file(tool, run_dir):
    """extra.pth beside the manager's files is listed (step -); a numbered file
    the manifest lacks keeps the step of its name, and the warning says so."""
    torch.save(weights(5), run_dir / "extra.pth")
    torch.save(checkpoint(9, 99), run_dir / numbered(99))
    res = tool.run("ls", run_dir, "--json")
    assert res.returncode == 0, res.describe()
    entries = {c["file"]: c for c in json.loads(res.stdout)["checkpoints"]}
    assert entries["extra.pth"]["step"] is None and entries["extra.pth"]["content"] == "foreign"
    assert entries[numbered(99)]["step"] == 99
    line = one_line(res.stderr)
    assert numbered(99) in line and "step 99" in line and "unknown step" not in line, line
    res = tool.run("ls", run_dir)
    assert re.search(r"^extra\.pth\s+-\s", res.stdout, re.M), res.stdout


def test_ls_warnings_sorted(tool, run_dir):
    """Warnings come in name order, whatever order the directory is read in."""
    for step in range(40, 60):
        torch.save(weights(step), run_dir / numbered(step))
    res = tool.run("ls", run_dir)
    assert res.returncode == 0, res.describe()
    lines = res.stderr.rstrip("\n").split("\n")
    assert len(lines) == 20 and lines == sorted(lines), res.stderr


@pytest.mark.parametrize("dry_run", [False, True])
def test_prune_foreign_dir_refused(tool, tmp_path, dry_run):
    """prune on a directory without a manifest: exit 2, nothing created."""
    d = lightning_dir(tmp_path / "lightning")
    before = snapshot(d)
    res = tool.run("prune", d, "--keep", "1", *(["--dry-run"] if dry_run else []))
    assert res.returncode == 2, res.describe()
    assert res.stdout == ""
    line = one_line(res.stderr)
    assert line.startswith("ckpt: prune: ") and "no manifest.json" in line, line
    assert "nothing changed" in line, line
    assert sorted(os.listdir(d)) == sorted(before) and snapshot(d) == before


@pytest.mark.parametrize("dry_run", [False, True])
def test_prune_garbage_manifest_refused(tool, run_dir, dry_run):
    """A manifest that cannot be read is not rebuilt by a command that removes files."""
    (run_dir / "manifest.json").write_text("garbage")
    before = snapshot(run_dir)
    res = tool.run("prune", run_dir, "--keep", "1", "--keep-best", "1",
                   *(["--dry-run"] if dry_run else []))
    assert res.returncode == 2, res.describe()
    assert res.stdout == ""
    line = one_line(res.stderr)
    assert line.startswith("ckpt: prune: ") and "manifest.json" in line, line
    assert sorted(os.listdir(run_dir)) == sorted(before) and snapshot(run_dir) == before
