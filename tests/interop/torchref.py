"""What torch says a file holds, in the forms ckpt reports, and the comparison.

- flatten(obj): [(name, tensor)] by the naming contract (path from the root,
  dict keys as text, positions as numbers, joined by ".", depth-first).
- tagged(obj): the tagged JSON form of `ckpt inspect --json`'s "tree".
- tensor_bytes(t) / storage_bytes(t): contiguous native bytes.
- check_file(tool, path, expected, ...): every check of one file against the
  object torch.load returned for it.
"""
import collections
import json
import math
import pathlib
import struct
import zipfile

import torch

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def _as_tensor(obj):
    """torch.load returns bare storages as TypedStorage: view them as 1-D tensors."""
    if isinstance(obj, torch.storage.TypedStorage):
        return torch.empty(0, dtype=obj.dtype).set_(obj)
    return obj


def is_tensorish(obj):
    return isinstance(obj, (torch.Tensor, torch.storage.TypedStorage))


def key_text(k):
    if isinstance(k, str):
        return k
    if k is None:
        return "None"
    if isinstance(k, bool):
        return "True" if k else "False"
    if isinstance(k, int):
        return str(k)
    raise AssertionError(f"no naming rule for key {k!r} in these tests")


def flatten(obj, prefix=None, out=None):
    if out is None:
        out = []
    if is_tensorish(obj):
        out.append(("" if prefix is None else prefix, _as_tensor(obj)))
        return out

    def sub(part):
        return part if prefix is None else f"{prefix}.{part}"

    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_tensorish(v) or isinstance(v, (dict, list, tuple, set, frozenset)):
                flatten(v, sub(key_text(k)), out)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, v in enumerate(obj):
            flatten(v, sub(str(i)), out)
    return out


def _float_tag(x):
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def tagged(o):
    """The tagged JSON form ckpt prints for a torch.load result."""
    if o is None or isinstance(o, bool) or isinstance(o, str):
        return o
    if isinstance(o, int):
        return o if INT64_MIN <= o <= INT64_MAX else {"$int": str(o)}
    if isinstance(o, float):
        f = _float_tag(o)
        return f if isinstance(f, float) else {"$float": f}
    if isinstance(o, complex):
        return {"$complex": [_float_tag(o.real), _float_tag(o.imag)]}
    if isinstance(o, (bytes, bytearray)):
        return {"$bytes": bytes(o).hex()}
    if isinstance(o, torch.Size):
        return {"$size": list(o)}
    if isinstance(o, tuple):
        return {"$tuple": [tagged(x) for x in o]}
    if isinstance(o, list):
        return [tagged(x) for x in o]
    if isinstance(o, (set, frozenset)):
        return {"$set": [tagged(x) for x in o]}
    if isinstance(o, torch.device):
        return {"$device": str(o)}
    if isinstance(o, torch.dtype):
        return {"$dtype": dtype_name(o)}
    if is_tensorish(o):
        t = _as_tensor(o)
        d = {"dtype": dtype_name(t.dtype), "shape": list(t.shape)}
        if isinstance(t, torch.nn.Parameter):
            d["parameter"] = True
        return {"$tensor": d}
    if isinstance(o, collections.OrderedDict):
        r = {"$odict": _dict_tagged(o)}
        state = getattr(o, "__dict__", None)
        if state:
            r["$state"] = _dict_tagged(state)
        return r
    if isinstance(o, dict):
        return _dict_tagged(o)
    raise AssertionError(f"no tagged form for {type(o)} in these tests")


def _dict_tagged(d):
    if all(isinstance(k, str) and "\0" not in k for k in d):
        return {k: tagged(v) for k, v in d.items()}
    return {"$dict": [[tagged(k), tagged(v)] for k, v in d.items()]}


def _canon(x):
    return json.dumps(x, sort_keys=True)


def assert_same_tree(actual, expected, path="tree"):
    """Exact comparison: types (int vs float vs bool), dict key order; sets unordered."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected object {expected!r}, got {actual!r}"
        if set(expected) == {"$set"} and set(actual) == {"$set"}:
            assert isinstance(actual["$set"], list), path
            assert sorted(map(_canon, actual["$set"])) == sorted(map(_canon, expected["$set"])), \
                f"{path}: set items differ: {actual['$set']!r} != {expected['$set']!r}"
            return
        assert list(actual.keys()) == list(expected.keys()), \
            f"{path}: keys {list(actual.keys())!r} != expected {list(expected.keys())!r}"
        for k in expected:
            assert_same_tree(actual[k], expected[k], f"{path}.{k}")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), f"{path}: expected list {expected!r}, got {actual!r}"
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_tree(a, e, f"{path}[{i}]")
        return
    assert type(actual) is type(expected), \
        f"{path}: type {type(actual).__name__} ({actual!r}) != {type(expected).__name__} ({expected!r})"
    if isinstance(expected, float):
        assert struct.pack("<d", actual) == struct.pack("<d", expected), \
            f"{path}: {actual!r} != {expected!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def tensor_bytes(t):
    """Contiguous native-endian bytes of a tensor (quantized: the integer values)."""
    t = t.detach()
    if t.is_quantized:
        t = t.int_repr()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    try:
        return t.numpy().tobytes()
    except (TypeError, RuntimeError):
        return t.view(torch.uint8).numpy().tobytes()


def storage_bytes(t):
    """All bytes of the tensor's storage, or None when torch cannot show them."""
    t = t.detach()
    if t.is_quantized:
        return None
    s = t.storage()
    whole = torch.empty(0, dtype=t.dtype).set_(s)
    return tensor_bytes(whole)


def storage_ptr(t):
    t = t.detach()
    if t.is_quantized:
        return None
    s = t.storage()
    if s.size() == 0:
        return None
    return s.data_ptr()


def local_data_offset(raw, zinfo):
    """Where an entry's data starts, from its local header."""
    off = zinfo.header_offset
    assert raw[off:off + 4] == b"PK\x03\x04"
    name_len, extra_len = struct.unpack_from("<HH", raw, off + 26)
    return off + 30 + name_len + extra_len


def check_file(tool, path, expected, *, fmt, prefix=None, location="cpu", protocol=2,
               compressed=False, big_endian=False, zero_copy=None, check_tree=True):
    """Checks `ckpt inspect --json` and `ckpt_dump` of path against torch's object.

    zero_copy: True/False to require it of every tensor with a non-empty
    storage, None to not check.
    """
    path = pathlib.Path(path)
    raw = path.read_bytes()
    js = tool.inspect_json(path)
    index, blobs = tool.dump(path)
    exp = flatten(expected)
    names = [n for n, _ in exp]

    assert js["format"] == fmt
    assert [t["name"] for t in js["tensors"]] == names
    assert [e["name"] for e in index] == names
    assert len(blobs) == len(exp)

    zf = zipfile.ZipFile(path) if fmt == "torch-zip" else None
    det = js["details"]
    assert det["big_endian"] is big_endian
    assert det["file_size"] == len(raw)
    if protocol is not None:
        assert det["pickle_protocol"] == protocol
    if fmt == "torch-zip":
        assert det["prefix"] == prefix
        assert (det["version"] or "").strip() == "3"
        infos = zf.infolist()
        assert [r["name"] for r in js["records"]] == [z.filename for z in infos]
        for r, z in zip(js["records"], infos):
            assert r["size"] == z.file_size, r
            assert r["compressed"] is (z.compress_type != zipfile.ZIP_STORED), r
            assert r["crc32"] == f"{z.CRC:08x}", r
            if not r["compressed"]:
                assert r["data_offset"] == local_data_offset(raw, z), r
                assert raw[r["data_offset"]:r["data_offset"] + z.file_size] == zf.read(z), r
        assert det["records"] == len(infos)
    elif fmt == "torch-legacy":
        assert det["legacy_protocol_version"] == 1001

    key_to_ptr, ptr_to_key, key_to_index = {}, {}, {}
    total_numel = total_bytes = 0
    views = set()  # tensors over the same bytes (tied weights) count once
    for (name, t), jt, ie, blob in zip(exp, js["tensors"], index, blobs):
        where = f"tensor {name!r}"
        dt = dtype_name(t.dtype)
        assert jt["dtype"] == dt, where
        assert ie["dtype"] == dt, where
        assert jt["shape"] == list(t.shape), where
        assert ie["shape"] == list(t.shape), where
        assert jt["stride"] == list(t.stride()), where
        assert jt["storage_offset"] == t.storage_offset(), where
        assert jt["numel"] == t.numel(), where
        assert jt["nbytes"] == t.numel() * t.element_size(), where
        assert jt["requires_grad"] is t.requires_grad, where
        assert ie["requires_grad"] is t.requires_grad, where
        is_param = isinstance(t, torch.nn.Parameter)
        assert jt["parameter"] is is_param, where
        assert ie["parameter"] is is_param, where
        assert jt["contiguous"] is t.is_contiguous(), where
        assert jt["location"] == location, where
        assert ie["location"] == location, where
        assert blob == tensor_bytes(t), f"{where}: bytes differ"
        view = (jt["storage"], t.storage_offset(), tuple(t.shape), tuple(t.stride()), dt,
                jt["layout"])
        if view not in views:
            views.add(view)
            total_numel += t.numel()
            total_bytes += t.numel() * t.element_size()

        key = jt["storage"]
        assert key is not None, where
        assert jt["storage_index"] is not None, where
        if key_to_index.setdefault(key, jt["storage_index"]) != jt["storage_index"]:
            raise AssertionError(f"{where}: storage {key} has two storage indices")
        ptr = storage_ptr(t)
        if ptr is not None:
            assert key_to_ptr.setdefault(key, ptr) == ptr, \
                f"{where}: storage key {key} shared by tensors torch keeps apart"
            assert ptr_to_key.setdefault(ptr, key) == key, \
                f"{where}: one torch storage reported under keys {ptr_to_key[ptr]} and {key}"
        sb = storage_bytes(t)
        if sb is not None:
            assert jt["storage_nbytes"] == len(sb), where
        if fmt == "torch-zip":
            rec = f"{prefix}/data/{key}"
            assert jt["record"] == rec, where
            z = zf.getinfo(rec)
            if compressed:
                assert jt["data_offset"] is None, where
            else:
                assert jt["data_offset"] == local_data_offset(raw, z), where
            if sb is not None and not big_endian:
                assert zf.read(rec) == sb, f"{where}: record bytes != torch storage bytes"
        elif sb is not None and not big_endian and jt["data_offset"] is not None:
            off = jt["data_offset"]
            assert raw[off:off + len(sb)] == sb, f"{where}: bytes at data_offset differ"
        if zero_copy is not None and jt["storage_nbytes"] > 0:
            assert ie["zero_copy"] is zero_copy, where

    assert det["storages"] == len(key_to_index)
    assert js["totals"] == {"tensors": len(exp), "distinct": len(views), "elements": total_numel,
                            "bytes": total_bytes}
    if check_tree:
        assert_same_tree(js["tree"], tagged(expected))
    return js, index, blobs
