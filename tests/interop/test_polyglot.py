"""Files two readers read differently: torch.load's format detection against ckpt's.

torch.load takes a file for a zip by its first four bytes, else tries Python's
tarfile on it (any first block whose checksum holds, "ustar" or not: the pre-0.4
format, whose members it unpickles), else reads a pickle from byte 0. Each file
made here runs its payload under the real torch.load(weights_only=False) (a
child process writes a canary file in a temporary directory: proved below), and
ckpt must scan it unsafe naming the payload's global and refuse to inspect it
rather than show something else. Benign tar and safetensors files keep their
readings, and ckpt's tar detection agrees with tarfile's on random headers."""
import io
import json
import os
import random
import struct
import subprocess
import sys
import tarfile

import pytest

# 0x1950a86a20f9469cfc6c: the legacy format's magic number, as LONG1 writes it.
MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
PYTHON = "/usr/bin/python3"


def payload(canary, proto=2):
    """A pickle that writes the canary file through posix.system (returns 0)."""
    cmd = f"touch {canary}".encode()
    return (b"\x80" + bytes([proto]) + b"cposix\nsystem\nX" + struct.pack("<I", len(cmd)) + cmd
            + b"\x85R.")


def pickle_of(obj):
    import pickle
    return pickle.dumps(obj, protocol=2)


# ---- tar headers as tarfile reads them ----------------------------------------------

def tar_header(name, size, typ=b"0", chk="unsigned", ustar=False):
    """A 512-byte header. name: the raw name field (NULs allowed: tarfile reads
    it up to its first NUL). No "ustar" magic unless asked (a V7 header)."""
    b = bytearray(512)
    b[0:len(name)] = name
    b[100:108] = b"0000644\0"
    b[108:116] = b"0000000\0"
    b[116:124] = b"0000000\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"00000000000\0"
    b[156:157] = typ
    if ustar:
        b[257:265] = b"ustar\x0000"
    b[148:156] = b" " * 8
    unsigned = 256 + sum(b[:148]) + sum(b[156:])
    signed = 256 + sum(x - 256 if x > 127 else x for x in b[:148] + b[156:])
    if chk == "unsigned":
        b[148:156] = b"%06o\0 " % unsigned
    elif chk == "signed":
        assert signed != unsigned, "the signed variant needs bytes above 0x7f"
        b[148:156] = (b"%07o\0" % signed) if signed >= 0 else (b"-%06o\0" % -signed)
    elif chk == "base256":
        b[148:156] = b"\x80" + unsigned.to_bytes(7, "big")
    else:
        raise ValueError(chk)
    block = bytes(b)
    tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")  # tarfile takes it
    return block


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def tar_members(members):
    """Header + padded data for each (name, data), V7 headers."""
    return b"".join(tar_header(name, len(data)) + pad(data) for name, data in members)


def storage_record(key, storage_class="FloatStorage"):
    return (b"\x80\x02(X" + struct.pack("<I", len(key)) + key + b"X\x03\x00\x00\x00cpu"
            + b"ctorch\n" + storage_class.encode() + b"\nt.")


def torch_members(canary, where):
    """storages / tensors / pickle members of the pre-0.4 format, one storage of
    4 floats and one 2x2 tensor over it; the payload goes where `where` says."""
    pay = payload(canary)
    floats = struct.pack("<4f", 1, 2, 3, 4)
    storages = pickle_of(1) + storage_record(b"s0") + struct.pack("<q", 4) + floats
    storages += pay if where == "views" else pickle_of([])
    if where == "storages":
        storages = pay + pickle_of([])  # count 0 (what system returns), then the views
    if where == "storages frame":
        # the count pickle's frame runs past its STOP over a decoy record and
        # element count whose raw bytes cover the payload: torch reads the
        # member unbuffered, skips to the frame's end and unpickles the payload
        # as the storage's record; a reader that goes on after STOP skips it
        raw = pay + b"\0" * (-len(pay) % 4)
        inner = b"K\x01." + storage_record(b"s0") + struct.pack("<q", len(raw) // 4)
        storages = (b"\x80\x04\x95" + struct.pack("<Q", len(inner)) + inner + raw
                    + pickle_of([]))
    if where == "views after a called count":
        # builtins.int(1): a count only a call gives, then one storage and the payload
        storages = (b"\x80\x02cbuiltins\nint\nK\x01\x85R." + storage_record(b"s0")
                    + struct.pack("<q", 4) + floats + pay)
    tensor0 = (b"\x80\x02(X\x02\x00\x00\x00t0X\x02\x00\x00\x00s0ctorch\nFloatTensor\nt."
               + struct.pack("<ii", 2, 0) + struct.pack("<2q", 2, 2) + struct.pack("<2q", 2, 1)
               + struct.pack("<q", 0))
    if where == "tensors":
        tensors = pay  # count 0
    elif where == "tensor 1":
        tensors = pickle_of(2) + tensor0 + pay
    else:
        tensors = pickle_of(1) + tensor0
    obj = pay if where == "pickle" else pickle_of({"w": 1})
    return [(b"storages", storages), (b"tensors", tensors), (b"pickle", obj)]


def real_tar(members):
    """A tar archive written by tarfile itself (ustar)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name.decode())
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def in_front_of_pickle(members, after, chk):
    """A V7 header whose name field starts a pickle: PROTO 3, BINBYTES over the
    rest of the header and the members (a tar archive), then `after` (the
    rest of the pickle, or of a legacy file). ckpt used to read only the
    pickle; torch reads the archive."""
    body = tar_members(members)
    total = 512 + len(body)
    head = b"\x80\x03B" + struct.pack("<I", total - 7)
    block = tar_header(head + b"hdr", 0, chk=chk)
    return block + body + after


def legacy_tail():
    """A complete legacy file (one float tensor) without its magic-number pickle:
    what follows it, and the first pickle's own bytes."""
    import torch
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    first = data.index(b".") + 1  # the magic number pickle ends at its STOP
    assert MAGIC in data[:first]
    return data[first:]


def safetensors_with_tar(members):
    """A valid safetensors file whose first 512 bytes are also a V7 tar header:
    its JSON header fits in the name field, the tar fields and the members lie
    in its one U8 tensor's data."""
    n = 80
    body = tar_members(members)
    rest_len = 512 + len(body) - 8 - n
    js = json.dumps({"t": {"dtype": "U8", "shape": [rest_len],
                           "data_offsets": [0, rest_len]}}, separators=(",", ":")).encode()
    assert len(js) <= n
    name = struct.pack("<Q", n) + js.ljust(n, b" ")
    assert len(name) <= 100
    return tar_header(name, 0) + body


def safetensors_pickle(canary):
    """A valid safetensors file that is also a pickle from byte 0: the header
    length's low byte is 'X' (BINUNICODE), whose length (the next four bytes)
    ends inside the JSON header, in a tensor name made of SHORT_BINSTRING
    skips; the last skip crosses the end of the header, and the pickle goes on
    in the U8 tensor's data: GLOBAL posix system ... REDUCE STOP."""
    L = 16                      # the BINUNICODE's length: n >> 8
    n = (L << 8) | ord("X")     # header length, low byte 'X'
    resume = 5 + L - 8          # header index where the pickle resumes
    tail_pay = payload(canary)[2:]  # without PROTO
    for into in range(3, 40):   # bytes of the data inside the last skip
        data_len = into + len(tail_pay) + 16
        # the header: {"KEY":{"dtype":"U8","shape":[N],"data_offsets":[0,N]}} + spaces
        tail = ('":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}'
                % (data_len, data_len)).encode()
        spaces = 16
        key_len = n - 2 - len(tail) - spaces
        key = bytearray(b"a" * key_len)
        pos = resume - 2        # index in key of the next SHORT_BINSTRING
        end = n + into          # header index where the skips end, in the data
        left = end - (2 + pos + 2)   # what a skip starting at pos must cover
        while left > 126:
            step = min(100, left - 2 - 60)
            key[pos:pos + 2] = b"U" + bytes([step])
            pos += 2 + step
            left = end - (2 + pos + 2)
        if left not in (34, 92) and pos + 2 <= key_len:
            key[pos:pos + 2] = b"U" + bytes([left])
            break
    header = b'{"' + bytes(key) + tail + b" " * spaces
    assert len(header) == n
    data = b"a" * into + tail_pay + b"\0" * 16
    return struct.pack("<Q", n) + header + data


def run_torch_load(paths):
    """torch.load(weights_only=False) on each file in a child process: what each
    did ('ok' or the exception)."""
    code = (
        "import json, sys, torch\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        torch.load(p)\n"
        "        out[p] = 'ok'\n"
        "    except BaseException as e:\n"
        "        out[p] = type(e).__name__ + ': ' + str(e)[:200]\n"
        "print(json.dumps(out))\n")
    res = subprocess.run([PYTHON, "-c", code, *map(str, paths)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def attacks(gen_dir):
    """name -> (path, canary) for every file made to run its payload."""
    d = gen_dir / "polyglot"
    canaries = d / "canaries"
    canaries.mkdir(parents=True)
    out = {}

    def put(name, make):
        canary = canaries / name
        path = d / name
        path.write_bytes(make(canary))
        out[name] = (path, canary)

    for chk in ("unsigned", "signed", "base256"):
        put(f"v7_{chk}_before_pickle", lambda c, chk=chk: in_front_of_pickle(
            torch_members(c, "pickle"), b"0}q\x00X\x01\x00\x00\x00aK\x01s.", chk))
    put("v7_before_legacy", lambda c: in_front_of_pickle(
        torch_members(c, "storages"), b"0" + MAGIC + b"." + legacy_tail(), "unsigned"))
    put("v7_before_safetensors", lambda c: safetensors_with_tar(torch_members(c, "tensors")))
    for where in ("storages", "views", "tensors", "tensor 1", "pickle",
                  "views after a called count", "storages frame"):
        put(f"tar_payload_in_{where.replace(' ', '_')}",
            lambda c, where=where: real_tar(torch_members(c, where)))
    put("tar_duplicate_pickle", lambda c: real_tar(
        torch_members(c, "none") + [(b"pickle", payload(c))]))
    # tarfile fails on the archive (its member runs past the end): torch falls
    # back to the pickle from byte 0, which swallows the header and goes on
    put("tar_fallback_to_pickle", lambda c: tar_header(
        b"\x80\x03B" + struct.pack("<I", 512 - 7), 10000) + b"0" + payload(c)[2:])
    put("safetensors_pickle", safetensors_pickle)
    return out


@pytest.fixture(scope="module")
def torch_results(attacks):
    return run_torch_load([p for p, _ in attacks.values()])


def test_torch_runs_every_payload(attacks, torch_results):
    """The proof: each file writes its canary under torch.load(weights_only=False)."""
    for name, (path, canary) in attacks.items():
        assert canary.exists(), f"{name}: torch.load did not run it: {torch_results[str(path)]}"


def scan(tool, path):
    res = tool.run("scan", "--json", path)
    assert res.returncode in (0, 1), res.describe()
    js = json.loads(res.stdout)
    return res.returncode, js["files"][0]


@pytest.mark.parametrize("name", [
    "v7_unsigned_before_pickle", "v7_signed_before_pickle", "v7_base256_before_pickle",
    "v7_before_legacy", "v7_before_safetensors", "tar_payload_in_storages",
    "tar_payload_in_views", "tar_payload_in_tensors", "tar_payload_in_tensor_1",
    "tar_payload_in_pickle", "tar_payload_in_views_after_a_called_count",
    "tar_payload_in_storages_frame",
    "tar_duplicate_pickle", "tar_fallback_to_pickle",
    "safetensors_pickle"])
def test_scan_unsafe_and_inspect_refuses(tool, attacks, torch_results, name):
    path, canary = attacks[name]
    assert canary.exists(), torch_results[str(path)]
    code, rep = scan(tool, path)
    assert code == 1 and rep["verdict"] == "unsafe", rep
    named = [f for f in rep["findings"] if f["kind"] == "global" and f["global"] == "posix.system"]
    assert named, json.dumps(rep, indent=1)
    assert all(f["runs_code"] for f in named)
    if name.startswith(("v7", "tar")):
        assert rep["format"] == "tar", rep
        assert any("pre-0.4 tar archive" in f["message"] for f in rep["findings"]), rep
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    assert res.stdout == "", res.describe()
    if name == "tar_fallback_to_pickle":
        assert "torch.load reads this file as a pre-0.4 tar archive" in res.stderr, res.stderr
    elif name.startswith(("v7", "tar")):
        # read as torch reads the archive: refused at the payload, in the
        # member torch unpickles it from
        want = {"tar_payload_in_views_after_a_called_count": "global 'builtins.int' is not allowed",
                "tar_payload_in_storages_frame": "storages at byte 13: STOP: the frame runs"}
        assert want.get(name, "GLOBAL: global 'posix.system' is not allowed") in res.stderr, \
            res.stderr
    else:
        assert "ambiguous file: ckpt reads it as safetensors" in res.stderr, res.stderr
        assert "'posix.system'" in res.stderr, res.stderr


def test_scan_findings_say_where(tool, attacks):
    """The global is found in the member torch unpickles, past the raw bytes
    torch skips; a duplicate and tarfile's failure are findings of their own."""
    where = {"tar_payload_in_storages": "storages count",
             "tar_payload_in_views": "storages views",
             "tar_payload_in_tensors": "tensors count",
             "tar_payload_in_tensor_1": "tensors tensor 1",
             "tar_payload_in_pickle": "pickle"}
    for name, record in where.items():
        _, rep = scan(tool, attacks[name][0])
        glob = [f for f in rep["findings"] if f["kind"] == "global"]
        assert [f["record"] for f in glob] == [record], (name, rep)
        assert not any(f["kind"] == "broken_pickle" for f in rep["findings"]), (name, rep)
    _, rep = scan(tool, attacks["tar_duplicate_pickle"][0])
    assert any(f["kind"] == "duplicate_name" and f["record"] == "pickle"
               for f in rep["findings"]), rep
    _, rep = scan(tool, attacks["tar_fallback_to_pickle"][0])
    msgs = [f["message"] for f in rep["findings"]]
    assert any("tarfile fails here" in m for m in msgs), rep
    assert any("torch.load reads this file as a pickle from byte 0" in m for m in msgs), rep
    _, rep = scan(tool, attacks["safetensors_pickle"][0])
    assert rep["format"] == "safetensors"
    assert any(f["record"] == "pickle from byte 0" and "names 'posix.system'" in f["message"]
               for f in rep["findings"]), rep


def test_legacy_behind_tar_is_both(tool, attacks, tmp_path):
    """A legacy file behind a tar header: torch.load reads the tar from a file,
    the legacy file from a buffer (it tries tarfile only on real files). The
    scan reports both readings."""
    path = attacks["v7_before_legacy"][0]
    canary = tmp_path / "canary"
    data = in_front_of_pickle(torch_members(canary, "storages"),
                              b"0" + MAGIC + b"." + legacy_tail(), "unsigned")
    code = ("import io, sys, torch\n"
            "print(sorted(torch.load(io.BytesIO(open(sys.argv[1], 'rb').read()))))\n")
    p = tmp_path / "v7_before_legacy"
    p.write_bytes(data)
    res = subprocess.run([PYTHON, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "['w']", res.stderr
    assert not canary.exists()
    _, rep = scan(tool, path)
    assert any("legacy torch file from byte 0 (from a buffer" in f["message"]
               for f in rep["findings"]), rep


# ---- benign files keep their readings -------------------------------------------------

def test_corpus_tar_files_are_tar_for_both(tool, corpus_dir):
    files = sorted((corpus_dir / "benign").rglob("tar_*.tar"))
    assert len(files) == 2
    for f in files:
        with open(f, "rb") as fh:
            assert tarfile.open(fileobj=fh, mode="r:").getnames()
        code, rep = scan(tool, f)
        assert rep["format"] == "tar" and code == 1, rep
        assert not [x for x in rep["findings"] if x["kind"] == "global"], rep
        res = tool.run("inspect", f)
        # synthetic: no views pickle after the storages, as torch finds too
        assert res.returncode == 2 and "torch fails with EOFError" in res.stderr, res.describe()


def test_corpus_safetensors_still_read_and_safe(tool, corpus_dir):
    files = sorted((corpus_dir / "benign").rglob("*.safetensors"))
    assert files
    for f in files:
        code, rep = scan(tool, f)
        assert code == 0 and rep["format"] == "safetensors", rep
        res = tool.run("inspect", f)
        assert res.returncode == 0, res.describe()


def test_benign_pickle_shaped_safetensors(tool, gen_dir):
    """Header lengths whose low bytes read as a pickle that completes (']' '.'
    gives []) or starts a string ('X'): torch.load fails on them without
    running anything, so ckpt reads them as the safetensors files they are."""
    d = gen_dir / "polyglot_benign"
    d.mkdir()
    for n in (0x2E5D, 0x58 + (16 << 8), 0x2E4E):
        meta = {"__metadata__": {"k": "v"}, "t": {"dtype": "F32", "shape": [1],
                                                  "data_offsets": [0, 4]}}
        js = json.dumps(meta).encode()
        js = js.ljust(n, b" ")
        path = d / f"h{n}.safetensors"
        path.write_bytes(struct.pack("<Q", n) + js + struct.pack("<f", 1.5))
        code, rep = scan(tool, path)
        assert code == 0, rep
        res = tool.run("inspect", path)
        assert res.returncode == 0, res.describe()


# ---- ckpt's tar detection agrees with tarfile's ------------------------------------------

WS = [b" ", b"\t", b"\n", b"\x0b", b"\x0c", b"\r", b"\x1c", b"\x1f"]


def number_text(rng, num, width, wild=True):
    """num in one of the ways int(text, 8) takes it (wild: or nearly takes)."""
    s = ("-" if num < 0 else rng.choice(["", "+"]))
    if rng.random() < 0.2:
        s += rng.choice(["0o", "0O", "0o_"])
    digits = format(abs(num), "o")
    if rng.random() < 0.2 and len(digits) > 1:
        i = rng.randrange(1, len(digits))
        digits = digits[:i] + (rng.choice(["_", "__"]) if wild else "_") + digits[i:]
    s += digits + (rng.choice(["", "", "", "_", " 7"]) if wild else "")
    b = s.encode()
    if rng.random() < 0.3:
        b = rng.choice(WS) + b
    if rng.random() < 0.3:
        b += rng.choice(WS)
    if wild and rng.random() < 0.05:
        b = b"\xc3" + b
    if len(b) < width and rng.random() < 0.7:
        b += b"\0"
    return b[:width].ljust(width, rng.choice([b"\0", b" "]))


def random_block(rng):
    b = bytearray(512)
    b[0:8] = rng.choice([b"storages", b"\x80\x02X\x00abcd", b"x/\0\0\0\0\0\0"])
    for at, w in ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (329, 8), (337, 8)):
        r = rng.random()
        if r < 0.1:
            b[at:at + w] = b"\x80" + rng.randrange(1 << 40).to_bytes(w - 1, "big")
        elif r < 0.13:
            b[at:at + w] = bytes(rng.randrange(256) for _ in range(w))
        elif r < 0.16:
            b[at:at + w] = rng.choice(WS) * w
        else:
            b[at:at + w] = number_text(rng, rng.randrange(4096), w, rng.random() < 0.1)
    b[156] = rng.choice(b"0\x005xLgS")
    if b[156] == ord("S"):
        for at in range(386, 495, 12):
            b[at:at + 12] = number_text(rng, rng.randrange(64), 12, rng.random() < 0.1)
    for _ in range(rng.randrange(4)):
        b[rng.randrange(157, 512)] = rng.randrange(256)
    b[148:156] = b" " * 8
    unsigned = 256 + sum(b[:148]) + sum(b[156:])
    signed = 256 + sum(x - 256 if x > 127 else x for x in b[:148] + b[156:])
    r = rng.random()
    if r < 0.1:
        b[148:156] = b"\x80" + unsigned.to_bytes(7, "big")
    elif r < 0.15:
        b[148:156] = (b"\xff" + ((1 << 56) + signed).to_bytes(7, "big") if signed < 0
                      else b"\x80" + signed.to_bytes(7, "big"))
    elif r < 0.3:
        b[148:156] = number_text(rng, signed, 8)
    elif r < 0.35:
        b[148:156] = number_text(rng, unsigned + rng.choice([-1, 1, 8]), 8)
    else:
        b[148:156] = number_text(rng, unsigned, 8)
    return bytes(b)


def test_tar_detection_matches_tarfile(tool, gen_dir):
    """Random headers (number fields in every form int(x, 8) takes or nearly
    takes, checksums right, signed, base-256 or off by a little): ckpt takes
    a file for tar exactly when tarfile's TarInfo.frombuf does."""
    rng = random.Random(13)
    d = gen_dir / "tar_headers"
    d.mkdir()
    expect = {}
    for i in range(600):
        block = random_block(rng)
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            ok = True
        except tarfile.HeaderError:
            ok = False
        (d / f"h{i:04d}").write_bytes(block)
        expect[f"h{i:04d}"] = ok
    assert 100 < sum(expect.values()) < 500
    # named one by one: a directory walk skips files that are not checkpoints
    res = tool.run("scan", "--json", *sorted(d.iterdir()))
    js = json.loads(res.stdout)
    got = {os.path.basename(f["file"]): f["format"] == "tar" for f in js["files"]}
    assert got == expect


def random_archive(rng):
    """Members of every kind tarfile knows, GNU long names and pax headers
    among them, sometimes cut short."""
    def pax(records):
        body = b""
        for k, v in records:
            rec = b" " + k + b"=" + v + b"\n"
            n = len(rec) + len(str(len(rec)))
            n += len(str(n)) - len(str(len(rec)))
            body += str(n).encode() + rec
        return body

    parts = []
    for _ in range(rng.randint(1, 4)):
        name = rng.choice([b"storages", b"pickle", b"a/", b"x" * 99])
        data = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 511, 513])))
        r = rng.random()
        if r < 0.4:
            parts.append(tar_header(name, len(data), rng.choice([b"0", b"\0", b"7", b"Z"]))
                         + pad(data))
        elif r < 0.5:
            parts.append(tar_header(name, rng.choice([0, 700]), rng.choice([b"1", b"2", b"5"])))
        elif r < 0.65:
            long_name = rng.choice([b"storages", b"L" * 300])
            parts.append(tar_header(b"././@LongLink", len(long_name), b"L") + pad(long_name)
                         + tar_header(name, len(data)) + pad(data))
        elif r < 0.85:
            recs = [(b"path", rng.choice([b"pickle", b"p/"]))]
            if rng.random() < 0.5:
                recs.append((b"size", rng.choice([b"0", b"10", b" 1_0 ", b"x", b"99999"])))
            body = pax(recs) if rng.random() < 0.9 else b"3 x\n"
            parts.append(tar_header(b"pax", len(body), rng.choice([b"x", b"g"])) + pad(body)
                         + tar_header(name, len(data)) + pad(data))
        else:
            parts.append(b"\0" * 512)
    data = b"".join(parts)
    if rng.random() < 0.4:
        data = data[:rng.randrange(512, len(data) + 1)]
    return data


def test_tar_fallback_matches_tarfile(tool, gen_dir):
    """Whether tarfile gives up on an archive (and torch.load falls back to the
    pickle from byte 0) as the scan reports it, against tarfile itself."""
    rng = random.Random(14)
    d = gen_dir / "tar_archives"
    d.mkdir()
    expect = {}
    for i in range(300):
        data = random_archive(rng)
        name = f"a{i:04d}"
        (d / name).write_bytes(data)
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
                t.getmembers()
            expect[name] = False
        except tarfile.ReadError:
            expect[name] = True
    assert 20 < sum(expect.values()) < 280
    res = tool.run("scan", "--json", *sorted(d.iterdir()))
    js = json.loads(res.stdout)
    got = {}
    for f in js["files"]:
        msgs = [x["message"] for x in f["findings"]]
        if any("ckpt does not follow" in m for m in msgs):
            continue
        got[os.path.basename(f["file"])] = (f["format"] != "tar"
                                             or any("tarfile fails here" in m for m in msgs))
    assert len(got) > 250
    assert got == {k: v for k, v in expect.items() if k in got}
