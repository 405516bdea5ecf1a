"""Frames that end after STOP, against the real torch.load.

torch's legacy reader reads its pickles one after another from one file.
When a pickle's FRAME runs on past its STOP, CPython's unpickler has read the
whole frame (beyond 128 KiB it reads it whole from the file), so torch's next
pickle starts at the frame's end: a decoy after STOP is what a reader that
stops at STOP sees, the payload after the frame is what torch runs. Each file
here is checked against torch 1.13 first (the payload writes a canary file in
a temporary directory), then ckpt must refuse to read it and its scan must
name the payload's global. The twin whose frames end at STOP loads in torch
and in ckpt to the same bytes.
"""
import io
import json
import pickletools
import shlex
import struct
import subprocess
import sys

import pytest
import torch

MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
HIDE = 200_000          # more than CPython's 128 KiB read-ahead: the frame is read whole
RECORDS = ["pickle", "legacy protocol version", "legacy sys_info", "legacy object pickle",
           "legacy storage keys"]


def legacy_pickles(obj):
    """The five pickles torch.save writes for obj (legacy format), and the rest."""
    b = io.BytesIO()
    torch.save(obj, b, _use_new_zipfile_serialization=False)
    data = b.getvalue()
    f = io.BytesIO(data)
    bounds = [0]
    for _ in range(5):
        for _op in pickletools.genops(f):   # reads up to and including STOP
            pass
        bounds.append(f.tell())
    parts = [data[bounds[i]:bounds[i + 1]] for i in range(5)]
    return parts, data[bounds[5]:]


def system_pickle(cmd):
    c = cmd.encode()
    return b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(c)) + c + b"\x85R."


def framed_legacy(framed, payload, past_stop=True):
    """A legacy file whose pickle `framed` sits in a FRAME. After its STOP: the
    rest of a benign legacy file holding one uint8 tensor whose bytes run to
    the end of the file. With past_stop the frame covers that rest and HIDE
    bytes of the tensor, and the payload follows the frame."""
    n = HIDE + len(payload)
    parts, tail = legacy_pickles({"w": torch.zeros(n, dtype=torch.uint8)})
    assert parts[framed][:2] == b"\x80\x02"
    body = parts[framed][2:]
    rest = b"".join(parts[framed + 1:]) + tail[:len(tail) - n] + b"\0" * HIDE
    head = b"".join(parts[:framed]) + b"\x80\x02\x95"
    frame = len(body) + (len(rest) if past_stop else 0)
    data = head + struct.pack("<Q", frame) + body + rest + payload
    stop = len(head) + 8 + len(body) - 1
    return data, stop, stop + 1 + (len(rest) if past_stop else 0)


def torch_load(path, cwd):
    """torch.load(weights_only=False) in a child; what it printed or raised."""
    code = ("import sys, torch\n"
            "try:\n"
            "    v = torch.load(sys.argv[1], weights_only=False)\n"
            "    print('loaded', v['w'][-64:].tolist() if isinstance(v, dict) else v)\n"
            "except Exception as e:\n"
            "    print('raised', type(e).__name__, e)\n")
    p = subprocess.run([sys.executable, "-c", code, str(path)], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def scan_report(tool, path):
    res = tool.run("scan", "--json", path)
    assert res.returncode == 1, res.describe()
    files = json.loads(res.stdout)["files"]
    assert len(files) == 1
    return files[0]


@pytest.mark.parametrize("framed", [0, 1, 2, 3])
def test_frame_past_stop_runs_in_torch_and_is_unsafe(tool, tmp_path, framed):
    canary = tmp_path / "canary"
    payload = system_pickle("touch " + shlex.quote(str(canary)))
    data, stop, frame_end = framed_legacy(framed, payload)
    path = tmp_path / "framed.pt"
    path.write_bytes(data)

    torch_load(path, tmp_path)
    assert canary.exists(), "torch did not run the payload: the file does not test anything"

    res = tool.run("inspect", path)
    assert res.returncode != 0, res.describe()
    assert "past STOP" in res.stderr and RECORDS[framed] in res.stderr, res.describe()

    rep = scan_report(tool, path)
    assert rep["verdict"] == "unsafe"
    fmt = [f for f in rep["findings"] if f["kind"] == "format" and "past STOP" in f["message"]]
    assert fmt and fmt[0]["file_offset"] == stop, rep
    hits = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == "posix.system"]
    assert hits, json.dumps(rep, indent=1)
    assert hits[0]["file_offset"] == frame_end + 2
    assert hits[0]["record"] == RECORDS[framed + 1]
    assert hits[0]["runs_code"]


def test_small_frame_past_stop_runs_what_follows_stop(tool, tmp_path):
    """A frame under the read-ahead: CPython's unpickler reads on after STOP
    (the frame stays in its buffer), so torch runs the pickle inside the frame.
    The scan reports that one too."""
    canary = tmp_path / "canary"
    payload = system_pickle("touch " + shlex.quote(str(canary)))
    parts, tail = legacy_pickles({"w": torch.zeros(4, dtype=torch.uint8)})
    body = parts[0][2:]
    data = b"\x80\x02\x95" + struct.pack("<Q", len(body) + len(payload)) + body + payload
    data += b"".join(parts[2:]) + tail
    path = tmp_path / "small.pt"
    path.write_bytes(data)
    torch_load(path, tmp_path)
    assert canary.exists(), "torch did not run the payload: the file does not test anything"
    rep = scan_report(tool, path)
    hits = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == "posix.system"]
    assert hits and hits[0]["file_offset"] == 11 + len(body) + 2, json.dumps(rep, indent=1)
    assert "after STOP, inside the frame" in hits[0]["record"]
    res = tool.run("inspect", path)
    assert res.returncode != 0 and "past STOP" in res.stderr, res.describe()


def test_frame_past_stop_in_storage_keys_moves_the_weights(tool, tmp_path):
    """After the keys, torch reads storages raw: it loads other bytes than the
    decoy's. ckpt refuses the file instead of showing the decoy."""
    payload = bytes(range(64))
    data, stop, frame_end = framed_legacy(4, payload)
    # torch reads the element count and the bytes at the frame's end
    n = HIDE + len(payload)
    data = data[:frame_end] + struct.pack("<q", n) + b"\xee" * n
    path = tmp_path / "keys.pt"
    path.write_bytes(data)
    out = torch_load(path, tmp_path)
    assert out.startswith("loaded [238, 238,"), out
    res = tool.run("inspect", path)
    assert res.returncode != 0 and "past STOP" in res.stderr, res.describe()
    rep = scan_report(tool, path)
    assert any(f["kind"] == "format" and "past STOP" in f["message"] for f in rep["findings"])


def test_twin_with_frames_ending_at_stop_reads_the_same(tool, tmp_path):
    payload = system_pickle("touch " + shlex.quote(str(tmp_path / "canary")))
    for framed in range(5):
        data, _, _ = framed_legacy(framed, payload, past_stop=False)
        path = tmp_path / f"twin{framed}.pt"
        path.write_bytes(data)
        want = torch.load(path, weights_only=False)["w"]   # a benign file: torch's own bytes
        assert not (tmp_path / "canary").exists()
        res = tool.run("scan", "--json", path)
        assert res.returncode == 0, res.describe()
        index, blobs = tool.dump(path)
        assert len(blobs) == 1 and blobs[0] == want.numpy().tobytes()


# ---- byte order: torch never reads the legacy sys_info ------------------------------

def test_legacy_sys_info_big_endian_is_not_swapped(tool, tmp_path):
    """A legacy file whose sys_info says little_endian=False: torch 1.13 loads
    the bytes as saved; so do inspect, dump, convert and diff. The scan reports
    the contradiction."""
    want = {"w": torch.tensor([1.0, 2.5, -3.0, 1e-3], dtype=torch.float32),
            "i": torch.arange(5, dtype=torch.int64) * 1000003,
            "h": torch.tensor([0.5, -2.0], dtype=torch.float16)}
    b = io.BytesIO()
    torch.save(want, b, _use_new_zipfile_serialization=False)
    data = b.getvalue()
    saved = tmp_path / "little.pt"
    saved.write_bytes(data)
    key = b"X\x0d\x00\x00\x00little_endianq\x02\x88"   # BINPUT 2, NEWTRUE
    assert data.count(key) == 1
    big = tmp_path / "big.pt"
    big.write_bytes(data.replace(key, key[:-1] + b"\x89"))   # NEWFALSE

    got = torch.load(big, weights_only=False)     # a benign file torch wrote
    for name, t in want.items():
        assert torch.equal(got[name], t), name    # torch does not swap

    index, blobs = tool.dump(big)
    by_name = {e["name"]: blob for e, blob in zip(index, blobs)}
    for name, t in want.items():
        assert by_name[name] == t.numpy().tobytes(), name
    js = tool.inspect_json(big)
    assert js["details"]["big_endian"] is False
    res = tool.run("diff", saved, big)
    assert res.returncode == 0, res.describe()
    out = tmp_path / "big.safetensors"
    res = tool.run("convert", big, out)
    assert res.returncode == 0, res.describe()
    res = tool.run("diff", saved, out)
    assert res.returncode == 0, res.describe()

    # nothing runs: a warning (exit 0), but the weights loaded are not the saved ones
    res = tool.run("scan", "--json", big)
    assert res.returncode == 0, res.describe()
    rep = json.loads(res.stdout)["files"][0]
    assert rep["verdict"] == "warning" and rep["findings"][0]["severity"] == "warning", rep
    hits = [f for f in rep["findings"] if f["kind"] == "format" and "little_endian" in f["message"]]
    assert len(hits) == 1 and hits[0]["record"] == "legacy sys_info", rep
    assert len(rep["findings"]) == 1, rep
    res = tool.run("scan", saved)
    assert res.returncode == 0, res.describe()
