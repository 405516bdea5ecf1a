"""Files laid out the way torch >= 2.1 writes them, for dtypes torch 1.13 cannot make.

torch 2.x pickles tensors of the newer dtypes (float8 kinds, uint16/32/64) as
_rebuild_tensor_v3(UntypedStorage, offset, size, stride, requires_grad, hooks,
dtype) and adds the `byteorder`, `.data/serialization_id`, `.format_version` and
`.storage_alignment` records, each record aligned to 64 bytes. The pickles here
are written opcode by opcode (torch 1.13 has no such dtype objects to pickle),
and the zip with Python's zipfile and an alignment extra field like torch's.
"""
import json
import random
import struct
import zipfile

import numpy as np
import pytest


# ---- a protocol-2 pickle, opcode by opcode ----------------------------------

def _unicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i):
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _tuple(items):
    return b"(" + b"".join(items) + b"t"


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _v3_tensor(key, nbytes, shape, stride, offset, dtype, storage_class="UntypedStorage",
               storage_module="torch", location="cpu"):
    pid = _tuple([_unicode("storage"), _global(storage_module, storage_class), _unicode(key),
                  _unicode(location), _int(nbytes)]) + b"Q"
    args = _tuple([pid, _int(offset), _tuple([_int(d) for d in shape]),
                   _tuple([_int(d) for d in stride]), b"\x89",
                   _global("collections", "OrderedDict") + b")R",
                   _global("torch", dtype)])
    return _global("torch._utils", "_rebuild_tensor_v3") + args + b"R"


def _dict(pairs):
    return b"}(" + b"".join(_unicode(k) + v for k, v in pairs) + b"u"


# ---- a zip laid out like torch's writer --------------------------------------

def _write_torch_zip(path, prefix, records):
    """records: list of (name, bytes). Data of each record starts at a multiple of 64."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            full = f"{prefix}/{name}"
            info = zipfile.ZipInfo(full, date_time=(1980, 1, 1, 0, 0, 0))
            start = z.fp.tell() + 30 + len(full.encode())
            pad = (-(start + 4)) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, data)


DTYPES = [
    # (torch dtype name, numpy dtype or None for raw bytes, element size)
    ("float8_e4m3fn", None, 1),
    ("float8_e5m2", None, 1),
    ("float8_e4m3fnuz", None, 1),
    ("float8_e5m2fnuz", None, 1),
    ("float8_e8m0fnu", None, 1),
    ("uint16", "<u2", 2),
    ("uint32", "<u4", 4),
    ("uint64", "<u8", 8),
    ("bfloat16", "<u2", 2),
    ("complex32", "<u4", 4),
]


@pytest.fixture(scope="module")
def torch2_file(gen_dir):
    rng = random.Random(20)
    records, pairs, expected = [], [], {}
    for i, (name, npd, size) in enumerate(DTYPES):
        shape = (3, 4)
        raw = bytes(rng.randrange(256) for _ in range(12 * size))
        key = str(i)
        records.append((f"data/{key}", raw))
        pairs.append((name, _v3_tensor(key, len(raw), shape, (4, 1), 0, name)))
        expected[name] = (shape, raw)
    # a transposed view sharing storage 0, offset into it
    pairs.append(("view", _v3_tensor("0", 12, (2, 3), (1, 4), 1, "float8_e4m3fn")))
    # a cuda location tag, as a GPU machine writes it
    raw = struct.pack("<4f", 1.0, -2.5, 3.25, 0.0)
    key = str(len(DTYPES))
    records.append((f"data/{key}", raw))
    pairs.append(("on_gpu", _v3_tensor(key, 16, (4,), (1,), 0, "float32", location="cuda:0")))
    pickle = b"\x80\x02" + _dict(pairs) + b"."
    path = gen_dir / "torch2_layout.pt"
    _write_torch_zip(path, "torch2_layout",
                     [("data.pkl", pickle), (".format_version", b"1"),
                      (".storage_alignment", b"64"), ("byteorder", b"little")] + records +
                     [("version", b"3\n"), (".data/serialization_id", b"0" * 40)])
    return path, expected


def test_torch2_records_and_alignment(torch2_file, tool):
    path, _ = torch2_file
    info = tool.inspect_json(path)
    d = info["details"]
    assert info["format"] == "torch-zip"
    assert (d["prefix"], d["version"], d["byteorder"]) == ("torch2_layout", "3", "little")
    assert (d["format_version"], d["storage_alignment"]) == ("1", "64")
    assert d["serialization_id"] == "0" * 40
    assert d["data_alignment"] >= 64


def test_torch2_new_dtypes_read_exactly(torch2_file, tool):
    path, expected = torch2_file
    info = tool.inspect_json(path)
    by_name = {t["name"]: t for t in info["tensors"]}
    index, blobs = tool.dump(path)
    dumped = {e["name"]: (e, b) for e, b in zip(index, blobs)}
    for name, (shape, raw) in expected.items():
        t = by_name[name]
        assert t["dtype"] == name
        assert t["shape"] == list(shape) and t["stride"] == [4, 1]
        e, blob = dumped[name]
        assert blob == raw, name
        assert e["zero_copy"] is True, name
    # typed view of the numbers, where numpy has the type
    for name, npd, _ in DTYPES:
        if npd and name.startswith("uint"):
            got = np.frombuffer(dumped[name][1], dtype=npd)
            want = np.frombuffer(expected[name][1], dtype=npd)
            assert (got == want).all()


def test_torch2_view_and_location(torch2_file, tool):
    path, expected = torch2_file
    info = tool.inspect_json(path)
    by_name = {t["name"]: t for t in info["tensors"]}
    view = by_name["view"]
    assert view["storage"] == by_name["float8_e4m3fn"]["storage"] == "0"
    assert view["contiguous"] is False
    _, blobs = tool.dump(path)
    names = [t["name"] for t in info["tensors"]]
    raw = expected["float8_e4m3fn"][1]
    # element [i][j] of the view is storage[1 + i*1 + j*4]
    want = bytes(raw[1 + i + 4 * j] for i in range(2) for j in range(3))
    assert blobs[names.index("view")] == want
    gpu = by_name["on_gpu"]
    assert gpu["location"] == "cuda:0" and gpu["dtype"] == "float32"
    assert blobs[names.index("on_gpu")] == struct.pack("<4f", 1.0, -2.5, 3.25, 0.0)


def test_torch2_storage_size_must_match_record(gen_dir, tool):
    """CVE-2026-24747: a record shorter than the storage it backs is refused."""
    pickle = b"\x80\x02" + _dict([("w", _v3_tensor("0", 64, (16,), (1,), 0, "float32"))]) + b"."
    path = gen_dir / "short_record.pt"
    _write_torch_zip(path, "short_record", [("data.pkl", pickle), ("data/0", b"\0" * 16),
                                             ("version", b"3\n")])
    res = tool.run("inspect", path)
    assert res.returncode == 2
    assert "short_record/data/0" in res.stderr and "16 bytes" in res.stderr, res.describe()
    assert "short_record/data.pkl at byte" in res.stderr, res.describe()


def test_torch2_json_is_valid_for_every_dtype(torch2_file, tool):
    path, _ = torch2_file
    res = tool.run("inspect", path, "--json")
    assert res.returncode == 0
    tree = json.loads(res.stdout)["tree"]
    assert tree["uint64"] == {"$tensor": {"dtype": "uint64", "shape": [3, 4]}}
