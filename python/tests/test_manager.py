"""ckpt.Manager: saves, best and last, retention, resume, listing."""
import json
import os
import shutil
import subprocess

import pytest
import torch

import ckpt
from conftest import tool_env
from helpers import assert_same


def _state(step):
    torch.manual_seed(step)
    return {"model": {"w": torch.randn(3, 3), "b": torch.randn(3)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1, "params": [0, 1]}]},
            "epoch": step}


def test_save_best_last_resume(tmp_path):
    d = tmp_path / "run"
    losses = [0.9, 0.5, 0.7, 0.3, 0.8]
    with ckpt.Manager(d, monitor="val_loss", mode="min", save_top_k=2) as m:
        assert m.resume() is None
        assert m.best_path is None and m.last_path is None
        for step, loss in enumerate(losses):
            written = m.save(_state(step), step=step, metrics={"val_loss": loss})
            assert str(d / "last.pth") in written
        assert m.last_path == str(d / "last.pth")
        assert m.best_path == str(d / "best.pth")
        assert m.best_model_score == pytest.approx(0.3)
        entries = m.checkpoints
        numbered = sorted(e.step for e in entries if e.file.startswith("step-"))
        assert numbered == [1, 3]  # the two best
        last = [e for e in entries if e.last][0]
        assert last.step == 4 and last.metrics == {"val_loss": 0.8}
        assert last.content == "checkpoint"
        best = [e for e in entries if e.best][0]
        assert best.content == "weights" and best.step == 3
        got = m.resume()
        assert_same(got, _state(4))
        assert m.resumed_step == 4
    assert_same(ckpt.load(d / "best.pth"), _state(3)["model"])
    assert_same(torch.load(d / "last.pth", weights_only=True), _state(4))


def test_busy_and_listing_match_cli(tmp_path):
    d = tmp_path / "run"
    with ckpt.Manager(d, monitor="acc", mode="max", metadata={"lr": 0.1}) as m:
        m.save(_state(1), step=1, metrics={"acc": 0.5})
        with pytest.raises(ckpt.BusyError):
            ckpt.Manager(d, monitor="acc", mode="max")
        entries = [e.as_dict() for e in m.checkpoints]
    ckpt_bin = os.environ.get("CKPT_BIN") or shutil.which("ckpt")
    if not ckpt_bin:
        pytest.skip("no ckpt tool to compare with")
    res = subprocess.run([ckpt_bin, "ls", "--json", str(d)], capture_output=True, text=True,
                             env=tool_env())
    assert res.returncode == 0, res.stderr
    cli = json.loads(res.stdout)["checkpoints"]
    assert [c["file"] for c in cli] == [e["file"] for e in entries]
    for c, e in zip(cli, entries):
        for k in ("step", "size", "crc32", "time", "torch_version", "user", "content"):
            assert c[k] == e[k], (k, c, e)


def test_resume_skips_a_torn_last(tmp_path):
    d = tmp_path / "run"
    with ckpt.Manager(d, monitor="val_loss", save_top_k=-1) as m:
        m.save(_state(1), step=1, metrics={"val_loss": 1.0})
        m.save(_state(2), step=2, metrics={"val_loss": 2.0})
    last = d / "last.pth"
    data = bytearray(last.read_bytes())
    os.unlink(last)  # the numbered file is a hard link to it: break only last.pth
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning):
        with ckpt.Manager(d, monitor="val_loss") as m:
            got = m.resume()
    assert got is not None and got["epoch"] in (1, 2)


def test_background_saves_equal_blocking_ones(tmp_path):
    """blocking=False captures the state when called: the tensors changed
    right after do not reach the file, and the files equal a blocking
    run's byte for byte."""
    losses = [0.9, 0.5, 0.7, 0.3]
    runs = {}
    for mode in ("blocking", "background"):
        d = tmp_path / mode
        with ckpt.Manager(d, monitor="val_loss", mode="min", save_top_k=2) as m:
            for step, loss in enumerate(losses):
                st = _state(step)
                if mode == "blocking":
                    m.save(st, step=step, metrics={"val_loss": loss})
                else:
                    assert m.save(st, step=step, metrics={"val_loss": loss},
                                  blocking=False) == []
                    st["model"]["w"].fill_(float("nan"))  # training goes on
                    st["model"]["b"].zero_()
            if mode == "background":
                # the last save (loss 0.3) is the best one and kept numbered
                assert m.wait() == [str(d / "last.pth"), str(d / "best.pth"),
                                    str(d / "step-00000003.pth")]
                assert m.wait() == []
            assert m.last_path == str(d / "last.pth")
        runs[mode] = d
    names = sorted(os.listdir(runs["blocking"]))
    assert sorted(os.listdir(runs["background"])) == names
    for n in names:
        if n.endswith(".pth"):
            assert (runs["blocking"] / n).read_bytes() == (runs["background"] / n).read_bytes(), n
    assert_same(ckpt.load(runs["background"] / "best.pth"), _state(3)["model"])
    assert_same(torch.load(runs["background"] / "last.pth", weights_only=True), _state(3))


def test_background_save_busy_without_wait(tmp_path):
    """wait=False refuses a second save while one is in flight (BusyError)
    and starts nothing; or, when the first was already done, saves."""
    d = tmp_path / "run"
    big = {"model": {"w": torch.randn(4096, 1024)}, "epoch": 0}  # 16 MiB: takes a while
    with ckpt.Manager(d, monitor="val_loss") as m:
        m.save(big, step=0, metrics={"val_loss": 1.0}, blocking=False)
        try:
            m.save(_state(1), step=1, metrics={"val_loss": 0.5}, blocking=False, wait=False)
            busy = False
        except ckpt.BusyError:
            busy = True
        m.wait()
        entries = {e.step for e in m.checkpoints if e.last}
        assert entries == ({0} if busy else {1})
    assert_same(ckpt.load(d / "last.pth")["epoch"], 0 if busy else 1)
