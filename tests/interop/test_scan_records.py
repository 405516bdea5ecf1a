"""ckpt scan over the records of a real torch zip that torch does not unpickle.

torch 1.13 writes data.pkl, data/<key> and version; newer torch adds byteorder,
.data/serialization_id, .format_version and .storage_alignment. torch reads
those as texts and the storages as raw bytes, but other tools pickle.loads
records of an archive: a pickle in any of them is an extra pickle, and its
globals are reported. Storage records are probed at their start only.
"""
import io
import json
import struct
import zipfile

import pytest
import torch

# only ever scanned, never unpickled
POSIX_SYSTEM = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."


def saved(tmp_path):
    path = tmp_path / "real.pt"
    torch.save({"w": torch.arange(16, dtype=torch.float32),
                "b": torch.ones(3, dtype=torch.float16)}, path)
    return path


def rewrite(src, dst, replace=None, add=None, compress=zipfile.ZIP_STORED):
    """Copies the archive, replacing or adding records (names after the prefix)."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            rest = info.filename[len(prefix) + 1:]
            data = replace.get(rest, zin.read(info))
            zout.writestr(info.filename, data, compress_type=compress if rest in replace else 0)
        for rest, data in add.items():
            zout.writestr(f"{prefix}/{rest}", data, compress_type=compress)
    return dst


def scan(tool, path):
    res = tool.run("scan", "--json", path)
    assert res.returncode in (0, 1), res.describe()
    return json.loads(res.stdout)["files"][0]


def test_real_file_is_safe(tool, tmp_path):
    path = saved(tmp_path)
    rep = scan(tool, path)
    assert rep["verdict"] == "safe" and rep["format"] == "torch-zip", rep
    # the records a newer torch writes, with their usual content
    newer = rewrite(path, tmp_path / "newer.pt", add={
        "byteorder": b"little", ".data/serialization_id": b"1234567890123456789012345678901234",
        ".format_version": b"1", ".storage_alignment": b"64", ".data/version": b"3\n"})
    rep = scan(tool, newer)
    assert rep["verdict"] == "safe", rep


@pytest.mark.parametrize("record", ["version", "byteorder", ".data/serialization_id",
                                    ".format_version", ".storage_alignment", "notes"])
@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_pickle_in_a_text_record(tool, tmp_path, record, compress):
    path = saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        names = [n.split("/", 1)[1] for n in z.namelist()]
    kw = {"replace": {record: POSIX_SYSTEM}} if record in names else {"add": {record: POSIX_SYSTEM}}
    bad = rewrite(path, tmp_path / "bad.pt", compress=compress, **kw)
    if record != "version":     # torch reads the others as texts, or not at all
        assert torch.load(bad)["w"].tolist() == list(range(16))
    rep = scan(tool, bad)
    assert rep["verdict"] == "unsafe"
    extra = [f for f in rep["findings"] if f["kind"] == "extra_pickle"]
    assert extra and extra[0]["record"].endswith("/" + record), rep
    hits = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == "posix.system"]
    assert hits and hits[0]["record"].endswith("/" + record), json.dumps(rep, indent=1)
    assert hits[0]["use"] == "called by REDUCE"


@pytest.mark.parametrize("compress", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_pickle_at_the_start_of_a_storage(tool, tmp_path, compress):
    """data/0 holds the 64 bytes of the 16 floats torch loads; they start with a
    pickle that other tools would run."""
    path = saved(tmp_path)
    with zipfile.ZipFile(path) as z:
        key = next(n for n in z.namelist() if "/data/" in n and z.getinfo(n).file_size == 64)
    rest = key.split("/", 1)[1]
    payload = POSIX_SYSTEM + b"N" * (64 - len(POSIX_SYSTEM))
    bad = rewrite(path, tmp_path / "bad.pt", replace={rest: payload}, compress=compress)
    got = torch.load(bad)["w"]      # torch reads the bytes as floats
    assert got.numpy().tobytes() == payload
    rep = scan(tool, bad)
    assert rep["verdict"] == "unsafe"
    hits = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == "posix.system"]
    assert hits and hits[0]["record"] == key, json.dumps(rep, indent=1)
    # ckpt reads the tensor torch reads
    res = tool.run("inspect", bad)
    assert res.returncode == 0, res.describe()
