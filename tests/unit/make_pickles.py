#!/usr/bin/python3
"""Writes the reference pickles under tests/unit/pickles/ for test_pickle.c.

Run once with Debian's python3 (PyTorch 1.13); the outputs are committed.
test_pickle.c holds the expected values: change both together.

    PYTHONHASHSEED=0 /usr/bin/python3 tests/unit/make_pickles.py
"""
import collections
import io
import os
import pickle
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "pickles")


def plain_values():
    """One object using every plain type the interpreter knows."""
    odict = collections.OrderedDict()
    odict["weight"] = 1
    odict["bias"] = 2
    odict._metadata = collections.OrderedDict([("", {"version": 1}), ("fc", {"version": 2})])
    shared = [1, 2]
    recursive = [1]
    recursive.append(recursive)
    return {
        "none": None,
        "true": True,
        "false": False,
        "ints": [0, 1, -1, 255, 256, 65535, 65536, -65536, 2**31 - 1, -2**31, 2**31,
                 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, 2**100, -2**100, 10**40],
        "floats": [0.0, -0.0, 1.5, -2.25, 0.1, 1e300, 5e-324, float("inf"), float("-inf"),
                   float("nan")],
        "strs": ["", "ascii", "caf\u00e9", "\u20ac", "\U0001f600", "\ud800", "a\x00b", "\\",
                 "line\nbreak", "quote'\""],
        "bytes": [b"", b"\x00\xffab", bytes(range(256))],
        "bytearray": bytearray(b"xyz\x80"),
        "tuples": ((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)),
        "set": {1, 2, 3},
        "frozenset": frozenset({7}),
        "nested": {"a": [1, [2, [3, {"b": (4,)}]]]},
        "odict": odict,
        "shared": [shared, shared],
        "recursive": recursive,
        "complex": complex(1.5, -2.0),
        "keys": {1: "int", 2.5: "float", (1, 2): "tuple", b"k": "bytes", None: "none"},
        "many": {"k%d" % i: i for i in range(40)},
    }


def torch_pickle():
    """data.pkl of a torch.save with tensors and a Parameter, all views of
    one 6-float storage ('storage', FloatStorage, '0', 'cpu', 6)."""
    import torch
    base = torch.arange(6, dtype=torch.float32)
    w = base.view(2, 3)
    row = base[3:]
    param = torch.nn.Parameter(base.view(3, 2), requires_grad=False)
    flat = base.view(6)
    buf = io.BytesIO()
    torch.save({"w": w, "row": row, "param": param, "flat": flat}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        name = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        return z.read(name)


def main():
    os.makedirs(OUT, exist_ok=True)
    obj = plain_values()
    for proto in range(6):
        with open(os.path.join(OUT, "values_p%d.pkl" % proto), "wb") as f:
            f.write(pickle.dumps(obj, protocol=proto))
    with open(os.path.join(OUT, "tensors_p2.pkl"), "wb") as f:
        f.write(torch_pickle())
    print("wrote", sorted(os.listdir(OUT)), file=sys.stderr)


if __name__ == "__main__":
    main()
