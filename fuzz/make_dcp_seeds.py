"""Packs DCP checkpoint directories into seeds for fuzz_dcp (see its
header): records { u8 name length, name, u32 LE length, data }, the
.metadata first.

    make_dcp_seeds.py OUT_DIR DCP_DIR...
"""
import pathlib
import struct
import sys


def pack(d):
    d = pathlib.Path(d)
    files = [d / ".metadata"] + sorted(p for p in d.iterdir() if p.name != ".metadata")
    out = b""
    for p in files[:16]:
        name = p.name.encode()
        data = p.read_bytes()
        out += bytes([len(name)]) + name + struct.pack("<I", len(data)) + data
    return out


def main():
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for d in sys.argv[2:]:
        (out / pathlib.Path(d).name).write_bytes(pack(d))


if __name__ == "__main__":
    main()
