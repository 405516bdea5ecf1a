"""The pre-0.4 tar format, built here member by member as torch < 0.4's
torch.save wrote it (sys_info, pickle, tensors, storages), read by ckpt and
compared with torch 1.13's torch.load (which still reads it)."""
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torchref import tensor_bytes  # noqa: E402


class Ref:
    def __init__(self, key):
        self.key = key


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        return str(obj.key) if isinstance(obj, Ref) else None


def dumps(obj, protocol=2):
    b = io.BytesIO()
    _Pickler(b, protocol=protocol).dump(obj)
    return b.getvalue()


STORAGE_TYPES = {np.float32: torch.FloatStorage, np.float64: torch.DoubleStorage,
                 np.int64: torch.LongStorage, np.int32: torch.IntStorage,
                 np.int16: torch.ShortStorage, np.int8: torch.CharStorage,
                 np.uint8: torch.ByteStorage, np.float16: torch.HalfStorage}
TENSOR_TYPES = {torch.FloatStorage: torch.FloatTensor, torch.DoubleStorage: torch.DoubleTensor,
                torch.LongStorage: torch.LongTensor, torch.IntStorage: torch.IntTensor,
                torch.ShortStorage: torch.ShortTensor, torch.CharStorage: torch.CharTensor,
                torch.ByteStorage: torch.ByteTensor, torch.HalfStorage: torch.HalfTensor}


def build_tar(obj, storages, views, tensors, extra=(), member_type=tarfile.REGTYPE):
    """storages: {key: np array}; views: [(key, root, offset, numel)];
    tensors: {key: (storage_key, shape, stride, offset)}; obj uses Ref(key)."""
    sys_info = pickle.dumps({"protocol_version": 1000, "little_endian": True,
                             "type_sizes": {"short": 2, "int": 4, "long": 8}}, protocol=2)
    st = io.BytesIO()
    st.write(pickle.dumps(len(storages), protocol=2))
    kinds = {}
    for key, a in storages.items():
        stype = STORAGE_TYPES[a.dtype.type]
        kinds[key] = stype
        st.write(pickle.dumps((key, "cpu", stype), protocol=2))
        st.write(struct.pack("<q", a.size) + a.astype(a.dtype.newbyteorder("<")).tobytes())
    st.write(pickle.dumps(list(views), protocol=2))
    for key, root, _, _ in views:
        kinds[key] = kinds[root]
    te = io.BytesIO()
    te.write(pickle.dumps(len(tensors), protocol=2))
    for key, (skey, shape, stride, offset) in tensors.items():
        te.write(pickle.dumps((key, skey, TENSOR_TYPES[kinds[skey]]), protocol=2))
        te.write(struct.pack("<ii", len(shape), 0))
        te.write(struct.pack(f"<{len(shape)}q", *shape) + struct.pack(f"<{len(shape)}q", *stride))
        te.write(struct.pack("<q", offset))
    members = [("sys_info", sys_info), ("pickle", dumps(obj)), ("tensors", te.getvalue()),
               ("storages", st.getvalue())] + list(extra)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if member_type != tarfile.REGTYPE and name == "storages":
                info.type = member_type
                info.linkname = "/etc/passwd"
                info.size = 0
                data = b""
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def sample():
    rng = np.random.default_rng(7)
    storages = {
        101: rng.standard_normal(24).astype(np.float32),
        102: np.arange(10, dtype=np.int64),
        103: rng.standard_normal(6).astype(np.float64),
        104: np.arange(-5, 5, dtype=np.int8),
        105: rng.standard_normal(4).astype(np.float16),
        106: np.arange(8, dtype=np.uint8),
    }
    views = [(201, 101, 4, 12)]
    tensors = {
        1: (101, (4, 6), (6, 1), 0),          # the whole storage
        2: (101, (6, 4), (1, 6), 0),          # its transpose (shared)
        3: (201, (3, 4), (4, 1), 0),          # over a view
        4: (102, (5,), (2,), 1),              # strided, offset
        5: (103, (), (), 2),                  # 0-d
        6: (104, (2, 5), (5, 1), 0),
        7: (105, (4,), (1,), 0),
        8: (106, (0, 3), (3, 1), 0),          # empty
    }
    obj = {"weight": Ref(1), "weight_t": Ref(2), "view": Ref(3), "strided": Ref(4),
           "scalar": Ref(5), "int8": Ref(6), "half": Ref(7), "empty": Ref(8),
           "nested": [Ref(4), {"again": Ref(1)}], "epoch": 3, "name": "old"}
    return obj, storages, views, tensors


def test_tar_matches_torch(tool, tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(build_tar(*sample()))
    ref = torch.load(str(path))
    for weights_only in (True,):
        assert torch.load(str(path), weights_only=weights_only).keys() == ref.keys()
    js = tool.inspect_json(path)
    assert js["format"] == "torch-tar"
    index, blobs = tool.dump(path)
    got = {e["name"]: (e, b) for e, b in zip(index, blobs)}
    expected = {"weight": ref["weight"], "weight_t": ref["weight_t"], "view": ref["view"],
                "strided": ref["strided"], "scalar": ref["scalar"], "int8": ref["int8"],
                "half": ref["half"], "empty": ref["empty"], "nested.0": ref["nested"][0],
                "nested.1.again": ref["nested"][1]["again"]}
    assert sorted(got) == sorted(expected)
    for name, t in expected.items():
        e, b = got[name]
        assert e["dtype"] == str(t.dtype).replace("torch.", ""), name
        assert e["shape"] == list(t.shape), name
        assert b == tensor_bytes(t), name
    assert js["tree"]["epoch"] == 3 and js["tree"]["name"] == "old"


def test_tar_convert_roundtrip(tool, tmp_path):
    path, out = tmp_path / "old.pt", tmp_path / "new.pt"
    path.write_bytes(build_tar(*sample()))
    res = tool.run("convert", path, out)
    assert res.returncode == 0, res.describe()
    ref, new = torch.load(str(path)), torch.load(str(out))
    for k in ("weight", "weight_t", "view", "strided", "scalar", "half", "empty"):
        assert torch.equal(ref[k], new[k]), k


def refused(tool, tmp_path, raw, message, torch_fails=True):
    path = tmp_path / "bad.pt"
    path.write_bytes(raw)
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    assert message in res.stderr, res.stderr
    if torch_fails:
        with pytest.raises(Exception):
            torch.load(str(path))


def test_tar_missing_member(tool, tmp_path):
    obj, storages, views, tensors = sample()
    raw = build_tar(obj, storages, views, tensors)
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            if m.name != "tensors":
                dst.addfile(m, src.extractfile(m))
    refused(tool, tmp_path, out.getvalue(), "without a 'tensors' member")


def test_tar_link_member_refused(tool, tmp_path):
    raw = build_tar(*sample(), member_type=tarfile.SYMTYPE)
    path = tmp_path / "link.pt"
    path.write_bytes(raw)
    res = tool.run("inspect", path)
    assert res.returncode == 2 and "not a regular file" in res.stderr, res.describe()


def test_tar_unknown_key_and_bad_view(tool, tmp_path):
    obj, storages, views, tensors = sample()
    obj["missing"] = Ref(999)
    refused(tool, tmp_path, build_tar(obj, storages, views, tensors), "names no storage or tensor")
    obj, storages, views, tensors = sample()
    tensors[9] = (101, (30,), (1,), 0)
    refused(tool, tmp_path, build_tar(obj, storages, views, tensors),
            "tensor view needs 120 bytes but its storage '101' has 96",
            torch_fails=False)  # torch 1.13's set_ grows the storage; ckpt refuses


def test_tar_global_outside_allow_list(tool, tmp_path):
    """Every member pickle goes through the allow-list."""
    obj, storages, views, tensors = sample()
    obj["evil"] = __import__("os").getcwd  # a global a weights-only reader refuses
    path = tmp_path / "evil.pt"
    path.write_bytes(build_tar(obj, storages, views, tensors))
    res = tool.run("inspect", path)
    assert res.returncode == 2 and "global 'posix.getcwd' is not allowed" in res.stderr, \
        res.describe()


def test_tar_str_keys_as_torch(tool, tmp_path):
    """Keys are dict keys to torch: str keys work for storages and tensors,
    and the object's persistent ids (int(id)) name the int ones."""
    obj, storages, views, tensors = sample()
    storages["s"] = np.arange(4, dtype=np.float32)
    tensors["t"] = ("s", (2, 2), (2, 1), 0)
    path = tmp_path / "str.pt"
    path.write_bytes(build_tar(obj, storages, views, tensors))
    ref = torch.load(str(path))
    index, blobs = tool.dump(path)
    got = {e["name"]: b for e, b in zip(index, blobs)}
    assert got["weight"] == tensor_bytes(ref["weight"])


def test_tar_duplicate_key_refused(tool, tmp_path):
    obj, storages, views, tensors = sample()
    views = views + [(101, 102, 0, 2)]  # a view under a storage's key
    path = tmp_path / "dup.pt"
    path.write_bytes(build_tar(obj, storages, views, tensors))
    res = tool.run("inspect", path)
    assert res.returncode == 2 and "key 101 is given twice" in res.stderr, res.describe()
