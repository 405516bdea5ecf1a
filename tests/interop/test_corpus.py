"""ckpt over the third-party corpus ($CKPT_CORPUS, see its MANIFEST.md).

benign/: `ckpt inspect --json` succeeds, or exits 2 with one line on stderr
that gives one of the documented reasons below. Files that succeed are compared
with torch 1.13's `torch.load(weights_only=True)` where that loads them, and
safetensors files with their own header.
malicious/: never exit 0 (unless listed with why), never crash, for both
`inspect` and `verify`. Nothing under malicious/ is ever unpickled here.
"""
import codecs
import collections
import fnmatch
import json
import os
import pathlib
import pickle
import pickletools
import re
import struct
import warnings
import zipfile

import pytest

import numpyref

from torchref import assert_same_tree, dtype_name, flatten, tagged, tensor_bytes

CORPUS = pathlib.Path(os.environ.get(
    "CKPT_CORPUS",
    pathlib.Path(__file__).resolve().parents[3] / "shared" / "corpus")).resolve()
if not (CORPUS / "benign").is_dir() and os.environ.get("CKPT_REQUIRE_CORPUS") != "1":
    pytest.skip(f"the third-party corpus is not at {CORPUS}: run with CKPT_CORPUS=DIR",
                allow_module_level=True)


def _files(sub):
    root = CORPUS / sub
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in root.rglob("*") if p.is_file())


BENIGN = _files("benign")
MALICIOUS = _files("malicious")

# Benign files ckpt may refuse, and the reason its one-line message must give.
# (glob on the path under the corpus, regex the message must match, why)
TORCHSCRIPT = r"TorchScript archive \(constants\.pkl, code/\).*--torchscript-weights"
NOT_ALLOWED = r"global '{}[\w.]*' is not allowed"
DOCUMENTED_FAILURES = [
    ("benign/TorchSharp/*", TORCHSCRIPT,
     "TorchScript archives (constants.pkl / code/): reading them means running code"),
    ("benign/djl/identity.pt", TORCHSCRIPT, "TorchScript archive"),
    ("benign/mlverse-torch/linear.pt", TORCHSCRIPT, "TorchScript archive (R torch)"),
    ("benign/tch-rs/foo*.pt", TORCHSCRIPT, "TorchScript archives"),
    ("benign/tch-rs/2019-12/foo4.pt", TORCHSCRIPT, "TorchScript archive (torch 1.3 layout)"),
    ("benign/tch-rs/2024-11/foo9.pt", TORCHSCRIPT, "TorchScript archive"),
    ("benign/tch-rs/2019-05/*.pt", r"TorchScript archive in the pre-1\.3 layout \(model\.json",
     "pre-1.3 TorchScript (model.json + attributes.pkl, code/)"),
    ("benign/Pickle.jl/csr_mat.pkl", NOT_ALLOWED.format(r"scipy\.sparse\."),
     "non-allow-listed scipy global (csr_matrix)"),
    ("benign/Pickle.jl/test-np-string.pkl", r"numpy dtype 'U\d+' has no torch dtype",
     "numpy str arrays: no torch dtype holds text"),
    ("benign/zml/simple.pt", NOT_ALLOWED.format(r"torch\.nn\.modules\."),
     "whole nn.Module pickled: its class is not allow-listed"),
    ("benign/burn/src/pytorch/tests/reader/test_data/tar_*.tar",
     r"storages at byte \d+: the member ends before the next pickle \(torch fails with EOFError\)",
     "pre-0.4 tar format, synthetic: str storage keys, no 'tensors' member and no views "
     "pickle; torch 1.13 fails on it too (EOFError)"),
    ("benign/burn/src/pytorch/tests/reader/test_data/broken.pt", r"^ckpt: \S+: pickle at byte \d+: ",
     "3 bytes 'abc': a broken pickle, not a checkpoint"),
    ("benign/picklescan/data2/object_array*.np[yz]", r"numpy object array \(dtype '\|O'\)",
     "numpy object arrays: their data is a pickle (allow_pickle)"),
    ("benign/modelaudit/samples/archives/safe_model.zip", r"outside the archive prefix",
     "plain zip of text files in two directories: not a torch archive"),
    ("benign/modelaudit/samples/pytorch/safe_model.pt", r"record is not in a subdirectory",
     "records at the zip root without an archive prefix: torch refuses it too"),
    ("benign/*password_protected.zip", r"encrypted entr",
     "encrypted zip of a text file: not a checkpoint"),
]

# Malicious files that may open (exit 0), and why.
MALICIOUS_MAY_OPEN = {
    "malicious/djl/linux-created-offender-root.zip":
        "zip of one text file, no pickle: it can only be 'not a checkpoint'",
    "malicious/djl/linux-created-offender-traversal-elements.zip": "zip-slip text member, no pickle",
    "malicious/djl/windows-created-offender-root.zip": "text member, no pickle",
    "malicious/djl/windows-created-offender-traversal-elements.zip": "zip-slip text member, no pickle",
}


def documented_reason(rel):
    for pattern, regex, why in DOCUMENTED_FAILURES:
        if fnmatch.fnmatch(rel, pattern):
            return regex, why
    return None


def test_corpus_present():
    assert len(BENIGN) >= 190 and len(MALICIOUS) >= 120, CORPUS


def test_table_entries_all_match_files():
    for pattern, _regex, why in DOCUMENTED_FAILURES:
        assert any(fnmatch.fnmatch(b, pattern) for b in BENIGN), (pattern, why)
    for rel in MALICIOUS_MAY_OPEN:
        assert rel in MALICIOUS, rel


# ---- safetensors, read independently -------------------------------------

ST_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "F8_E5M2": "float8_e5m2",
    "F8_E4M3": "float8_e4m3fn", "F8_E8M0": "float8_e8m0fnu", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32",
    "F64": "float64", "I64": "int64", "U64": "uint64", "C64": "complex64",
}


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None)
    base = 8 + n
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    tensors = [(k, ST_DTYPES[v["dtype"]], v["shape"],
                raw[base + v["data_offsets"][0]:base + v["data_offsets"][1]]) for k, v in items]
    return tensors, meta


def compare_safetensors(tool, path, js):
    tensors, meta = read_safetensors(path)
    assert js["format"] == "safetensors"
    assert [t["name"] for t in js["tensors"]] == [t[0] for t in tensors]
    for jt, (name, dt, shape, data) in zip(js["tensors"], tensors):
        assert (jt["dtype"], jt["shape"]) == (dt, shape), name
        assert jt["nbytes"] == len(data), name
    if meta is not None:
        assert js["metadata"] == meta
    idx, blobs = tool.dump(path)
    assert [e["name"] for e in idx] == [t[0] for t in tensors]
    for e, b, t in zip(idx, blobs, tensors):
        assert b == t[3], e["name"]


def compare_sharded(tool, path, js):
    """An index over safetensors shards: every tensor as its shard holds it."""
    index = json.loads(path.read_text())
    weight_map = index["weight_map"]
    shards = {}
    for shard in sorted(set(weight_map.values())):
        tensors, _meta = read_safetensors(path.parent / shard)
        for name, dt, shape, data in tensors:
            shards[name] = (shard, dt, shape, data)
    assert sorted(t["name"] for t in js["tensors"]) == sorted(weight_map)
    idx, blobs = tool.dump(path)
    assert [e["name"] for e in idx] == [t["name"] for t in js["tensors"]]
    for jt, b in zip(js["tensors"], blobs):
        shard, dt, shape, data = shards[jt["name"]]
        assert shard == weight_map[jt["name"]]
        assert (jt["dtype"], jt["shape"]) == (dt, shape), jt["name"]
        assert b == data, jt["name"]
    assert js["metadata"] == {k: str(v) for k, v in index.get("metadata", {}).items()} or \
        js["metadata"] == index.get("metadata")


# ---- torch.load of benign files --------------------------------------------

def torch_weights_only(path):
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - 1.13's weights_only reader refuses many files
            return None
    if isinstance(obj, torch.jit.ScriptModule):
        return None
    return obj


class _AllowListUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the weights_only allow-list (data-only
    constructors), like newer torch's weights_only reader. For benign files that
    torch 1.13's weights_only reader refuses (BINFLOAT, protocol 4/5, bare pickles)."""

    def find_class(self, module, name):
        import torch
        module = {"__builtin__": "builtins"}.get(module, module)
        full = f"{module}.{name}"
        simple = {
            "collections.OrderedDict": collections.OrderedDict,
            "collections.Counter": collections.Counter,
            "_codecs.encode": codecs.encode,
            "builtins.set": set, "builtins.frozenset": frozenset,
            "builtins.bytearray": bytearray, "builtins.complex": complex,
            "builtins.bytes": bytes,
            "torch.Size": torch.Size, "torch.device": torch.device,
            "torch.nn.parameter.Parameter": torch.nn.Parameter,
            "torch._tensor._rebuild_from_type_v2": torch._tensor._rebuild_from_type_v2,
            "torch.storage.UntypedStorage": torch.UntypedStorage,
        }
        if full in simple:
            return simple[full]
        if module == "torch._utils" and name in (
                "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter",
                "_rebuild_parameter_with_state"):
            return getattr(torch._utils, name)
        if module == "torch" and (name.endswith("Storage") or
                                  isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"not allowed here: {full}")


class _AllowListPickleModule:
    Unpickler = _AllowListUnpickler

    @staticmethod
    def load(f, **kw):
        return _AllowListUnpickler(f, **kw).load()


def allow_list_load(path, fmt):
    """The object a file holds, read with the allow-list unpickler (None if refused)."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if fmt == "pickle":
                with open(path, "rb") as f:
                    return _AllowListUnpickler(f).load()
            return torch.load(str(path), map_location="cpu", pickle_module=_AllowListPickleModule)
        except Exception:  # noqa: BLE001
            return None


def compare_with_torch(tool, path, js, obj):
    exp = flatten(obj)
    assert [t["name"] for t in js["tensors"]] == [n for n, _ in exp]
    idx, blobs = tool.dump(path)
    assert [e["name"] for e in idx] == [n for n, _ in exp]
    for (name, t), jt, b in zip(exp, js["tensors"], blobs):
        assert jt["dtype"] == dtype_name(t.dtype), name
        assert jt["shape"] == list(t.shape), name
        assert jt["stride"] == list(t.stride()), name
        assert jt["storage_offset"] == t.storage_offset(), name
        assert jt["requires_grad"] is t.requires_grad, name
        assert b == tensor_bytes(t), f"{name}: bytes differ"


def compare_numpy_file(tool, path, js):
    import numpy as np
    if js["format"] == "numpy-npy":
        expected = [("tensor", np.load(path, allow_pickle=False))]
    else:
        with np.load(path, allow_pickle=False) as z:
            expected = [(k, z[k]) for k in z.files]
    numpyref.assert_same(tool, path, expected)


def uses_numpy(path):
    raw = path.read_bytes()
    return b"multiarray" in raw or (raw[:2] == b"PK" and any(
        b"multiarray" in zipfile.ZipFile(path).read(n)
        for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))


class _NumpyTorchUnpickler(numpyref.NumpyUnpickler):
    """numpy's array builders and torch's allow-list (for torch.save files)."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except pickle.UnpicklingError:
            return _AllowListUnpickler.find_class(self, module, name)


class _NumpyTorchPickleModule:
    Unpickler = _NumpyTorchUnpickler

    @staticmethod
    def load(f, **kw):
        return _NumpyTorchUnpickler(f, **kw).load()


def compare_numpy_pickle(tool, path, js):
    """Pickles holding numpy arrays: every array as numpy builds it."""
    import torch
    if js["format"] == "pickle":
        obj = numpyref.load_pickle(path.read_bytes())
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", pickle_module=_NumpyTorchPickleModule)
    numpyref.assert_same(tool, path, numpyref.flatten(obj))
    assert_same_tree(js["tree"], numpyref.tagged(obj))


def error_lines(res, path):
    """stderr's lines without the hint that follows a refused global."""
    lines = res.stderr.strip("\n").split("\n")
    if len(lines) == 2 and "is not allowed" in lines[0]:
        assert lines[1] == (f"ckpt: hint: 'ckpt scan {path}' shows what the file holds; "
                            "inspect and convert read such objects as inert values with "
                            "--permissive"), res.describe()
        lines.pop()
    return lines


@pytest.mark.parametrize("rel", BENIGN)
def test_benign(rel, tool):
    path = CORPUS / rel
    res = tool.run("inspect", path, "--json")
    if res.returncode != 0:
        reason = documented_reason(rel)
        assert reason is not None, "undocumented failure on a benign file\n" + res.describe()
        regex, why = reason
        assert res.returncode == 2, res.describe()
        assert res.stdout == ""
        lines = error_lines(res, path)
        assert len(lines) == 1, res.describe()
        assert lines[0].startswith(f"ckpt: {path}: "), lines[0]
        assert re.search(regex, lines[0]), f"message does not give the reason ({why}): {lines[0]}"
        return
    js = json.loads(res.stdout)
    assert res.stderr == ""
    if js["format"] in ("numpy-npy", "numpy-npz"):
        compare_numpy_file(tool, path, js)
        return
    if uses_numpy(path):
        compare_numpy_pickle(tool, path, js)
        return
    if js["format"] == "safetensors":
        compare_safetensors(tool, path, js)
        return
    if js["format"] == "sharded":
        compare_sharded(tool, path, js)
        return
    obj = torch_weights_only(path) if js["format"] != "pickle" else None
    if obj is None:
        obj = allow_list_load(path, js["format"])
    assert obj is not None, f"neither torch nor the allow-list reader loads {rel}, ckpt does"
    compare_with_torch(tool, path, js, obj)
    assert_same_tree(js["tree"], tagged(obj))


# ---- malicious -----------------------------------------------------------------

# The weights_only allow-list (FORMATS.md): a global outside it in a pickle
# must stop ckpt.
ALLOWED_PREFIXES = ("torch._utils._rebuild_", "torch.")
ALLOWED = {"collections.OrderedDict", "collections.Counter", "_codecs.encode",
           "builtins.bytearray", "builtins.set", "builtins.frozenset", "builtins.complex",
           "builtins.bytes", "torch._tensor._rebuild_from_type_v2"}


def first_global(raw):
    """The first global a pickle names, resolved statically, or None when unsure."""
    strings = []
    memo = {}
    last = None
    try:
        for op, arg, pos in pickletools.genops(raw):
            name = op.name
            if name == "GLOBAL":
                return arg.replace(" ", ".")
            if name == "INST":
                return arg.replace(" ", ".")
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                last = ("s", arg)
                strings.append(last)
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = last
                continue
            elif name == "MEMOIZE":
                memo[len(memo)] = last
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(arg)
                strings.append(last)
            elif name == "STACK_GLOBAL":
                if len(strings) >= 2 and all(s and s[0] == "s" for s in strings[-2:]):
                    return f"{strings[-2][1]}.{strings[-1][1]}"
                return None
            elif name == "FRAME":
                if pos + 9 + arg > len(raw):
                    return None  # a broken frame: the reader stops there
                continue
            elif name == "PROTO":
                continue
            else:
                last = None
                strings.append(None)
    except Exception:  # noqa: BLE001 - broken pickles are expected here
        return None
    return None


def is_allowed(g):
    g = g.replace("__builtin__.", "builtins.")
    return g in ALLOWED or g.startswith(ALLOWED_PREFIXES)


@pytest.mark.parametrize("rel", MALICIOUS)
def test_malicious(rel, tool):
    path = CORPUS / rel
    for cmd in ("inspect", "verify"):
        res = tool.run(cmd, path)  # tool.run fails on a signal or a sanitizer report
        assert res.returncode in (0, 1, 2), res.describe()
        if rel in MALICIOUS_MAY_OPEN:
            continue
        assert res.returncode != 0, f"{cmd} accepted a malicious file\n" + res.describe()
        answer = cmd == "verify" and res.returncode == 1  # corrupt: verify's result
        lines = res.stdout.strip("\n").split("\n") if answer else error_lines(res, path)
        prefix = f"{path}: corrupt: " if answer else f"ckpt: {path}: "
        assert len(lines) == 1 and lines[0].startswith(prefix), res.describe()


def _plain_pickles_with_bad_first_global():
    out = []
    for rel in MALICIOUS:
        raw = (CORPUS / rel).read_bytes()
        if raw[:2] not in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") and \
                raw[:1] not in (b"c", b"("):
            continue
        g = first_global(raw)
        if g and not is_allowed(g):
            out.append((rel, g))
    return out


@pytest.mark.parametrize("rel,glob", _plain_pickles_with_bad_first_global())
def test_malicious_names_the_global(rel, glob, tool):
    """A plain pickle whose first global is outside the allow-list: ckpt refuses it
    and its message names that global (module.name)."""
    path = CORPUS / rel
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    mod, _, name = glob.rpartition(".")
    alt = glob.replace("__builtin__.", "builtins.")
    assert glob in res.stderr or alt in res.stderr or \
        (mod in res.stderr and name in res.stderr), res.describe()
