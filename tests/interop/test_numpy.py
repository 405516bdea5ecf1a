"""numpy arrays: .npy and .npz files and arrays inside pickles, read by ckpt
and compared with numpy itself (dtypes, shapes, bytes), every dtype numpy and
torch share, C and Fortran order, both byte orders, 0-d and empty arrays."""
import io
import json
import pickle
import struct
import zipfile

import numpy as np
import pytest

from numpyref import assert_same, flatten, load_pickle, plain

DTYPES = ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "float32", "float64", "complex64", "complex128"]


def sample(dtype, shape=(3, 4), order="C", byteorder="<"):
    n = int(np.prod(shape))
    rng = np.random.default_rng(abs(hash((dtype, shape))) % 1000)
    if dtype == "bool":
        a = rng.integers(0, 2, n).astype(bool)
    elif dtype.startswith("complex"):
        a = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(dtype)
    elif dtype.startswith("float"):
        a = rng.standard_normal(n).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
    a = a.reshape(shape, order=order)
    if byteorder == ">" and a.dtype.itemsize > 1:
        a = a.astype(a.dtype.newbyteorder(">"))
    return np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a)


CASES = [(d, (3, 4), "C", "<") for d in DTYPES] + \
        [(d, (2, 3, 4), "F", "<") for d in DTYPES] + \
        [(d, (5, 2), "C", ">") for d in DTYPES] + \
        [("float32", (), "C", "<"), ("int64", (0,), "C", "<"), ("float64", (3, 0, 2), "C", "<"),
         ("float64", (1, 1), "F", ">"), ("uint8", (7,), "C", "|")]


def case_id(c):
    return f"{c[0]}-{'x'.join(map(str, c[1])) or 'scalar'}-{c[2]}{c[3]}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_npy_matches_numpy(tool, tmp_path, case):
    a = sample(*case)
    path = tmp_path / "a.npy"
    np.save(path, a)
    js = tool.inspect_json(path)
    assert js["format"] == "numpy-npy"
    assert_same(tool, path, [("tensor", np.load(path))])


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_header_versions(tool, tmp_path, version):
    a = sample("float32", (4, 5), "F")
    path = tmp_path / "v.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=version)
    assert path.read_bytes()[6] == version[0]
    assert_same(tool, path, [("tensor", np.load(path))])


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_matches_numpy(tool, tmp_path, compressed):
    arrays = {f"w{i}_{d}": sample(d, (2, 3), "CF"[i % 2], "<>"[i % 2]) for i, d in enumerate(DTYPES)}
    arrays["empty"] = np.zeros((0, 3), np.float32)
    arrays["scalar"] = np.array(2.5)
    path = tmp_path / "a.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    js = tool.inspect_json(path)
    assert js["format"] == "numpy-npz"
    with np.load(path) as z:
        expected = [(k, z[k]) for k in z.files]
    assert_same(tool, path, expected)


def test_npz_convert_to_safetensors(tool, tmp_path):
    arrays = {"a": sample("float32", (3, 4), "F"), "b": sample("int64", (5,), "C", ">"),
              "c": sample("float16", (2, 2))}
    src, dst = tmp_path / "x.npz", tmp_path / "x.safetensors"
    np.savez_compressed(src, **arrays)
    res = tool.run("convert", src, dst)
    assert res.returncode == 0, res.describe()
    raw = dst.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    kinds = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    for k, a in arrays.items():
        h = header[k]
        b0, b1 = h["data_offsets"]
        got = np.frombuffer(raw[8 + n + b0:8 + n + b1], kinds[h["dtype"]]).reshape(h["shape"])
        assert np.array_equal(got, a), k


def test_object_arrays_refused_by_name(tool, tmp_path):
    obj = np.array([{"a": 1}, None], dtype=object)
    npy, npz = tmp_path / "o.npy", tmp_path / "o.npz"
    np.save(npy, obj, allow_pickle=True)
    np.savez(npz, ok=np.arange(3), obj=obj)
    for path in (npy, npz):
        res = tool.run("inspect", path)
        assert res.returncode == 2, res.describe()
        assert "numpy object array (dtype '|O')" in res.stderr, res.stderr
        assert "allow_pickle" in res.stderr
    pk = tmp_path / "o.pkl"
    pk.write_bytes(pickle.dumps([obj], protocol=2))
    res = tool.run("inspect", pk)
    assert res.returncode == 2 and "numpy object arrays (dtype 'O8')" in res.stderr, \
        res.describe()


def npy_bytes(header, data=b"", version=1):
    h = header.encode("latin1")
    pad = (-(10 + len(h) + 1)) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(h)) + h + data


@pytest.mark.parametrize("header,message", [
    ("{'descr': __import__('os').system('id'), 'fortran_order': False, 'shape': (1,), }",
     "expected a quoted string"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", "unknown key"),
    ("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}", "given twice"),
    ("{'descr': '<f4', 'fortran_order': False}", "lacks 'shape'"),
    ("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,)}", "True or False"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}", "non-negative"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1)}", "trailing comma"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000,), }", "runs past the end"),
    ("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }", "has no torch dtype"),
    ("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "structured"),
    ("{'descr': '|f4', 'fortran_order': False, 'shape': (1,), }", "is not a numpy dtype"),
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }",
     "overflows"),
])
def test_hostile_npy_headers(tool, tmp_path, header, message):
    path = tmp_path / "h.npy"
    path.write_bytes(npy_bytes(header, b"\0" * 16))
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    assert message in res.stderr, res.stderr
    # numpy refuses the broken ones too; it reads strings, records and repeated
    # keys (literal_eval keeps the last), which ckpt refuses
    if message in ("expected a quoted string", "unknown key", "lacks 'shape'", "True or False",
                   "trailing comma", "runs past the end", "overflows"):
        with pytest.raises(Exception):
            np.load(path, allow_pickle=False)


def test_npy_detection_keeps_pickle_order(tool, tmp_path):
    """\\x93 (STACK_GLOBAL) at byte 0 fails at once in pickle.load: an .npy
    is never a pickle torch.load reads."""
    path = tmp_path / "a.npy"
    np.save(path, np.arange(4))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(path.read_bytes())


# ---- arrays inside pickles -----------------------------------------------

PICKLE_CASES = [(d, (3, 4), "C", "<") for d in DTYPES] + \
    [(d, (2, 3, 2), "F", "<") for d in ("float32", "int16", "complex128")] + \
    [(d, (4, 3), o, ">") for d in ("float64", "int32", "uint16") for o in "CF"] + \
    [("float32", (), "C", "<"), ("int64", (0, 3), "C", "<")]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickled_arrays(tool, tmp_path, protocol):
    arrays = {case_id(c): sample(*c) for c in PICKLE_CASES}
    arrays["strided"] = sample("float32", (4, 6))[::2, ::3]  # numpy pickles a copy
    obj = {"arrays": arrays, "scalars": [np.float32(1.5), np.int64(-3), np.uint64(2**64 - 1),
                                         np.bool_(True), np.complex64(1 - 2j), np.float16(0.5)]}
    path = tmp_path / f"p{protocol}.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    ref = load_pickle(path.read_bytes())
    assert_same(tool, path, flatten(ref))
    js = tool.inspect_json(path)
    assert js["format"] == "pickle"
    scal = js["tree"]["scalars"]
    want = plain(ref["scalars"])
    assert scal[:2] == want[:2] and scal[3] is True and scal[5] == 0.5
    assert scal[2] == {"$int": str(2**64 - 1)}
    assert scal[4] == {"$complex": [1.0, -2.0]}


def test_numpy_in_torch_save(tool, tmp_path):
    """torch.save of a dict holding tensors and numpy arrays (zip and legacy)."""
    torch = pytest.importorskip("torch")
    obj = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3),
           "np": sample("float64", (3, 2), "F"), "be": sample("int32", (4,), "C", ">")}
    for legacy in (False, True):
        path = tmp_path / f"t{int(legacy)}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        index, blobs = tool.dump(path)
        got = {e["name"]: b for e, b in zip(index, blobs)}
        assert got["w"] == obj["w"].numpy().tobytes()
        assert got["np"] == np.ascontiguousarray(obj["np"]).tobytes()
        assert got["be"] == obj["be"].astype("<i4").tobytes()


@pytest.mark.parametrize("state,message", [
    ((1, (2,), "dtype", False, b"\0" * 8), "must be a numpy.dtype"),
    ((1, (3,), "f4", False, b"\0" * 8), "8 bytes of data for 3 float32"),
    ((2, (2,), "f4", False, b"\0" * 8), "version must be 1"),
    ((1, (-1,), "f4", False, b""), "must be an int >= 0"),
])
def test_hostile_array_states(tool, tmp_path, state, message):
    """BUILD states numpy itself refuses are format errors."""
    class Arr:
        def __reduce__(self):
            s = list(state)
            if s[2] == "f4":
                s[2] = np.dtype("<f4")
            return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), tuple(s))
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps([Arr()], protocol=2))
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    assert message in res.stderr, res.stderr


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickled_scalars_and_tree(tool, tmp_path, protocol):
    """numpy scalars (numbers, str, bytes) as .item() gives them, in the tree."""
    from numpyref import tagged
    from torchref import assert_same_tree
    obj = {"f": np.float64(0.1), "h": np.float16(-2.5), "u8": np.uint8(255),
           "i": np.int32(-7), "b": np.bool_(False), "c": np.complex128(3 + 4j),
           "s": np.str_("abc\u03b1\U0001F600"), "be": np.array("xy", dtype=">U3")[()],
           "y": np.bytes_(b"ab\0"), "arr": sample("uint32", (2, 2), "F", ">")}
    path = tmp_path / "s.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    js = tool.inspect_json(path)
    ref = load_pickle(path.read_bytes())
    assert_same_tree(js["tree"], tagged(ref))
    assert js["tree"]["s"] == "abc\u03b1\U0001F600" and js["tree"]["be"] == "xy"
    assert_same(tool, path, flatten(ref))


def test_npz_verify_checks_crc(tool, tmp_path):
    path = tmp_path / "v.npz"
    np.savez(path, a=np.arange(8, dtype=np.int32))
    res = tool.run("verify", path)
    assert res.returncode == 0 and "CRC32 of every record" in res.stdout, res.describe()
    raw = bytearray(path.read_bytes())
    raw[raw.find(b"\x93NUMPY") + 128 + 4] ^= 0xFF  # an element of 'a'
    path.write_bytes(bytes(raw))
    res = tool.run("verify", path)
    assert res.returncode == 1 and "CRC32 mismatch" in res.stdout + res.stderr, res.describe()
