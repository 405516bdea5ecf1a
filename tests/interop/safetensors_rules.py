"""The safetensors reader's rules, checked in Python from the format's description.

`check(data)` returns the parsed header (a dict, `__metadata__` left in) or raises
`RuleError` naming the broken rule. The reference reader's rules: the header length at
most 100,000,000 and inside the file; the header UTF-8 JSON, an object; each tensor
entry with dtype, shape and data_offsets [begin, end]; byte length == prod(shape) x dtype
size, without overflow; the tensors tiling the data buffer exactly when sorted by offset
(no gaps, no overlaps, no trailing bytes); `__metadata__` a map of text to text.
`strict=True` adds the rules of a careful writer: no duplicate keys, no NUL in names,
data starting at a multiple of 64, every tensor at a multiple of its element size.
"""
import json
import struct

MAX_HEADER = 100_000_000
U64_MAX = 2**64 - 1

# bits per element
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "F64": 64, "I64": 64, "U64": 64, "C64": 64,
}


class RuleError(ValueError):
    pass


def _pairs_no_duplicates(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise RuleError(f"duplicate key {k!r}")
        seen.add(k)
    return dict(pairs)


def _reject_constant(name):
    raise RuleError(f"non-standard JSON token {name}")


def check(data, strict=True):
    if len(data) < 8:
        raise RuleError("shorter than the 8-byte header length")
    (n,) = struct.unpack_from("<Q", data, 0)
    if n > MAX_HEADER:
        raise RuleError(f"header length {n} exceeds {MAX_HEADER}")
    if n > len(data) - 8:
        raise RuleError(f"header length {n} runs past the end of the file")
    raw = data[8:8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RuleError(f"header is not UTF-8: {e}") from None
    try:
        header = json.loads(text, object_pairs_hook=_pairs_no_duplicates if strict else None,
                            parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise RuleError(f"header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise RuleError("header is not a JSON object")
    data_start = 8 + n
    buffer = len(data) - data_start
    if strict and data_start % 64:
        raise RuleError(f"data starts at {data_start}, not a multiple of 64")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise RuleError("__metadata__ is not a map of text to text")
            continue
        if strict and "\0" in name:
            raise RuleError(f"NUL in tensor name {name!r}")
        if not isinstance(info, dict):
            raise RuleError(f"{name!r}: entry is not an object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise RuleError(f"{name!r}: no {field}")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BITS:
            raise RuleError(f"{name!r}: unknown dtype {dtype!r}")
        if (not isinstance(shape, list) or
                not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= U64_MAX
                        for d in shape)):
            raise RuleError(f"{name!r}: shape is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or
                not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o <= U64_MAX
                        for o in offsets)):
            raise RuleError(f"{name!r}: data_offsets is not [begin, end]")
        begin, end = offsets
        if end < begin:
            raise RuleError(f"{name!r}: data_offsets end before they begin")
        numel = 1
        for d in shape:
            numel *= d
            if numel > U64_MAX:
                raise RuleError(f"{name!r}: shape product overflows")
        bits = numel * DTYPE_BITS[dtype]
        if bits > U64_MAX or bits % 8:
            raise RuleError(f"{name!r}: byte size overflows or is not whole bytes")
        if end - begin != bits // 8:
            raise RuleError(f"{name!r}: {end - begin} bytes for shape {shape} of {dtype} "
                            f"({bits // 8} expected)")
        if strict:
            size = DTYPE_BITS[dtype] // 8
            if size > 1 and begin % size:
                raise RuleError(f"{name!r}: offset {begin} is not a multiple of its "
                                f"element size {size}")
        entries.append((begin, end, name))
    expect = 0
    for begin, end, name in sorted(entries):
        if begin != expect:
            raise RuleError(f"{name!r} starts at {begin}, the previous tensor ends at {expect}")
        expect = end
    if expect != buffer:
        raise RuleError(f"tensors cover {expect} bytes but the buffer holds {buffer}")
    return header


def tensors_of(header):
    """The tensor entries of a header, without __metadata__."""
    return {k: v for k, v in header.items() if k != "__metadata__"}


def tied(tensors):
    """{name: kept name} for the tensors ckpt writes once (as save_model does):
    those that are the same view of one storage as a tensor whose name comes
    first in byte order. tensors: [(name, torch tensor)]."""
    groups = {}
    for name, t in sorted(tensors, key=lambda p: p[0].encode("utf-8", "surrogatepass")):
        try:
            s = t.storage()
        except (NotImplementedError, RuntimeError):
            continue
        s = getattr(s, "_storage", s)  # torch >= 1.13: a typed wrapper
        key = (s._cdata, t.dtype, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(key, []).append(name)
    out = {}
    for names in groups.values():
        for n in names[1:]:
            out[n] = names[0]
    return out
