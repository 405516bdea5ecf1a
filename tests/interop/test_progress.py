"""Progress bars of convert and verify: on a terminal only (stderr), with rate
and ETA; nothing when stderr is not a terminal or with -q."""
import os
import pty
import subprocess

import pytest
import torch


@pytest.fixture(scope="module")
def big(gen_dir):
    """Past the 64 MiB from which a bar shows: 9 storages of 8 MiB."""
    d = gen_dir / "progress"
    d.mkdir()
    path = d / "big.pth"
    torch.save({f"layer{i}.weight": torch.full((1024, 2048), float(i)) for i in range(9)}, path)
    return path


def run_on_terminal(args, timeout=120):
    """Runs args with stderr on a pseudo-terminal; returns (rc, stdout, terminal text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([str(a) for a in args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's last writer is gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    rc = proc.wait(timeout=timeout)
    return rc, out, b"".join(chunks).decode(errors="replace")


def check_bar(text):
    assert "\r[" in text, repr(text)
    assert "100%" in text and "MiB/s" in text, repr(text)
    last = text.rstrip("\r\n").split("\r")[-1]
    assert last.startswith("[" + "#" * 30 + "] 100%"), repr(last)
    assert " in " in last, repr(last)  # the time it took, once done
    assert text.endswith("\n"), repr(text)


def test_verify_bar_on_terminal(ckpt_bin, big):
    rc, out, term = run_on_terminal([ckpt_bin, "verify", big])
    assert rc == 0, (out, term)
    assert out.startswith(f"{big}: ok: "), out
    check_bar(term)


def test_convert_bar_on_terminal(ckpt_bin, big, tmp_path):
    for name in ("out.safetensors", "out.pth"):
        rc, out, term = run_on_terminal([ckpt_bin, "convert", big, tmp_path / name])
        assert rc == 0, (out, term)
        check_bar(term)
        assert "MiB/s" not in out


def test_no_bar_without_terminal_or_when_quiet(ckpt_bin, big, tmp_path):
    res = subprocess.run([ckpt_bin, "verify", big], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    res = subprocess.run([ckpt_bin, "convert", big, tmp_path / "o.safetensors"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    rc, _, term = run_on_terminal([ckpt_bin, "verify", "-q", big])
    assert rc == 0 and term == "", repr(term)
    rc, _, term = run_on_terminal([ckpt_bin, "convert", "-q", big, tmp_path / "q.pth"])
    assert rc == 0 and term == "", repr(term)


def test_no_bar_for_small_files(ckpt_bin, gen_dir, tmp_path):
    small = tmp_path / "small.pth"
    torch.save({"w": torch.ones(16)}, small)
    rc, out, term = run_on_terminal([ckpt_bin, "verify", small])
    assert rc == 0 and term == "", repr(term)
    rc, out, term = run_on_terminal([ckpt_bin, "inspect", "--json", small])
    assert rc == 0 and term == "", repr(term)


def test_consolidation_and_sharded_verify(ckpt_bin, tmp_path):
    """Shards consolidated into one file, and verified, count as one bar:
    each shard alone is under 64 MiB."""
    import json
    weight_map = {}
    for s in range(2):
        name = f"pytorch_model-0000{s + 1}-of-00002.bin"
        tensors = {f"h{s}.{i}.weight": torch.full((1024, 1024), float(i)) for i in range(9)}
        torch.save(tensors, tmp_path / name)
        weight_map.update({k: name for k in tensors})
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    rc, out, term = run_on_terminal([ckpt_bin, "convert", index, tmp_path / "one.safetensors"])
    assert rc == 0, (out, term)
    check_bar(term)
    assert "72.0 MiB" in term, repr(term)
    rc, out, term = run_on_terminal([ckpt_bin, "verify", index])
    assert rc == 0, (out, term)
    check_bar(term)
    assert "/ 72.0 MiB" in term, repr(term)
