#!/usr/bin/env python3
"""The resource budget on hostile files (SECURITY.md, "The resource budget").

Builds files whose tensor bytes are small but that claim, repeat or hide much
more (a frame past STOP, tar polyglots, memo fan-out, views with stride 0,
deflated records near the ratio limit, a 100 MB safetensors header, an index
that names itself) and runs every command on each, printing the wall time and
peak RSS of each run against the budget: under 5 s and 1 GiB with default
limits. A command may fail on a file (a LIMIT or FORMAT error is the expected
answer to most of them); it may not crash, hang or pass the budget.

  python3 bench/budget.py --ckpt build-bench/ckpt [--dir /tmp/ckpt-budget]

Nothing here is a test: it measures, on the machine it runs on.
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fuzz"))
import make_corpus as mc  # noqa: E402  (hand-built zips and deflate streams)

BUDGET_S = 5.0
BUDGET_RSS = 1 << 30


def legacy_frame_past_stop(d):
    """The legacy format with a 200,000-byte FRAME in its sys_info pickle:
    a decoy after STOP, the rest of the file after the frame."""
    magic = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little") + b"."
    proto = b"\x80\x02M\xe9\x03."
    sys_info = b"}X\x0d\x00\x00\x00little_endian\x88s."
    frame_len = 200000
    body = sys_info + b"\x80\x02N." * ((frame_len - len(sys_info)) // 4)
    body += b"N" * (frame_len - len(body))
    return magic + proto + b"\x80\x04\x95" + struct.pack("<Q", frame_len) + body + b"\x80\x02N."


def tar_v7_before_pickle(d):
    """A V7 tar header (no "ustar", valid checksum) in front of a pickle."""
    b = bytearray(512)
    b[0:8] = b"storages"
    for at, field in ((100, b"0000644\0"), (108, b"0000000\0"), (116, b"0000000\0"),
                      (124, b"00000000000\0"), (136, b"00000000000\0")):
        b[at:at + len(field)] = field
    b[156] = ord("0")
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % (sum(b))
    return bytes(b) + b"\x80\x02K\x01."


def fan_out(d, n):
    """One tensor under n x 1000 paths through the pickle memo (torch.save)."""
    path = os.path.join(d, f"fan_out_{n}.pt")
    code = ("import torch, sys\n"
            "t = torch.zeros(2)\n"
            f"inner = [t] * 1000\n"
            f"torch.save([inner] * {n}, sys.argv[1])\n")
    subprocess.run(["/usr/bin/python3", "-c", code, path], check=True)
    with open(path, "rb") as f:
        return f.read()


def expand_view(d):
    """A view with stride (0, 0) of 40,000 x 250,000 floats over one float."""
    path = os.path.join(d, "expand.pt")
    code = ("import torch, sys\n"
            "torch.save({'t': torch.zeros(1).expand(40000, 250000)}, sys.argv[1])\n")
    subprocess.run(["/usr/bin/python3", "-c", code, path], check=True)
    with open(path, "rb") as f:
        return f.read()


def deflated_pair(d):
    """Two uint8 tensors of 1 GiB of zeros, each a deflated record at a ratio
    of about 950 (just under max_inflate_ratio): about 2.3 MB."""
    n = 1 << 30
    comp, crc = mc.deflated_zeros(n)

    def tensor(key):
        return (b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\n"
                b"ByteStorage\nX" + struct.pack("<I", len(key)) + key.encode() +
                b"X\x03\x00\x00\x00cpuJ" + struct.pack("<i", n) + b"tQK\x00(J" +
                struct.pack("<i", n) + b"t(K\x01t\x89ccollections\nOrderedDict\n)RtR")
    pkl = (b"\x80\x02}X\x01\x00\x00\x00a" + tensor("0") + b"sX\x01\x00\x00\x00b" +
           tensor("1") + b"s.")
    return mc.raw_zip([("archive/data.pkl", pkl, len(pkl), zlib.crc32(pkl), 0),
                       ("archive/data/0", comp, n, crc, 8),
                       ("archive/data/1", comp, n, crc, 8),
                       ("archive/version", b"3\n", 2, zlib.crc32(b"3\n"), 0)])


def huge_header(d):
    """A safetensors header of about 100 MB: 1.4 million one-byte tensors."""
    n = 1_400_000
    parts = []
    for i in range(n):
        parts.append('"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}' % (i, i, i + 1))
    header = ("{" + ",".join(parts) + "}").encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(n)


def self_index(d):
    """A sharded index whose weight_map names the index itself."""
    return json.dumps({"metadata": {}, "weight_map": {"w": "self.index.json"}}).encode()


def files(d):
    """(title, file name, maker, tensor bytes the file really holds when
    they are not small: the budget then is proportional to them)."""
    yield "legacy frame past STOP", "frame.pt", legacy_frame_past_stop, 0
    yield "V7 tar header before a pickle", "tar.pt", tar_v7_before_pickle, 0
    yield "memo fan-out, 10^6 paths", "fan6.pt", lambda d: fan_out(d, 1000), 0
    yield "memo fan-out, 249,000 paths", "fan5.pt", lambda d: fan_out(d, 249), 0
    yield "view with stride (0, 0), 40 GB", "expand.pt", expand_view, 0
    yield "2 deflated records of 1 GiB at ratio 950", "deflated.pt", deflated_pair, 2 << 30
    yield "safetensors, 100 MB header", "header.safetensors", huge_header, 0
    yield "index naming itself", "self.index.json", self_index, 0


COMMANDS = [
    ("inspect", ["inspect", "{f}"]),
    ("inspect --json", ["inspect", "--json", "{f}"]),
    ("verify", ["verify", "-q", "{f}"]),
    ("scan", ["scan", "{f}"]),
    ("convert pth", ["convert", "--no-fsync", "-q", "{f}", "{out}.pth"]),
    ("convert st", ["convert", "--no-fsync", "-q", "{f}", "{out}.safetensors"]),
    ("diff A A", ["diff", "{f}", "{f}"]),
]


def run(argv, scratch):
    """Wall time, peak RSS, exit code, whether it was killed, stderr's last
    line. GNU time measures the child it starts itself: a child forked from
    this process would count this process's memory as its own."""
    timing = os.path.join(scratch, "time.out")
    t0 = time.monotonic()
    try:
        p = subprocess.run(["/usr/bin/time", "-o", timing, "-f", "%M"] + argv,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        killed = False
    except subprocess.TimeoutExpired as e:
        p, killed = e, True
    wall = time.monotonic() - t0
    err = (p.stderr or b"").decode(errors="replace").strip().splitlines()
    err = [line for line in err if not line.startswith("Command ")]
    with open(timing) as f:
        rss = int(f.read().split()[-1]) * 1024 if not killed else 0
    code = p.returncode if not killed else -9
    return wall, rss, code, killed, (err[-1] if err else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    d = args.dir or tempfile.mkdtemp(prefix="ckpt-budget-")
    os.makedirs(d, exist_ok=True)
    worst_t, worst_m, over = 0.0, 0, 0
    print(f"{'file':44} {'command':15} {'exit':>4} {'s':>6} {'MiB':>7}  answer")
    for title, name, make, holds in files(d):
        path = os.path.join(d, name)
        with open(path, "wb") as f:
            f.write(make(d))
        size = os.path.getsize(path)
        for cname, argv in COMMANDS:
            out = os.path.join(d, "out")
            full = [args.ckpt] + [a.format(f=path, out=out) for a in argv]
            wall, rss, code, killed, msg = run(full, d)
            for ext in (".pth", ".safetensors"):
                if os.path.exists(out + ext):
                    os.unlink(out + ext)
            bad = killed or code < 0 or (not holds and (wall > BUDGET_S or rss > BUDGET_RSS))
            over += bad
            if not holds:
                worst_t, worst_m = max(worst_t, wall), max(worst_m, rss)
            label = f"{title} ({size:,} B)" if cname == "inspect" else ""
            if holds and cname == "inspect --json":
                label = f"  holds {holds / 2**30:.0f} GiB: not a small file"
            print(f"{label[:44]:44} {cname:15} {code:>4} {wall:6.2f} {rss / 2**20:7.0f}  "
                  f"{'OVER BUDGET ' if bad else ''}{msg[:90]}")
    print(f"\nworst on files whose tensor bytes are small: {worst_t:.2f} s, "
          f"{worst_m / 2**20:.0f} MiB; budget {BUDGET_S} s, {BUDGET_RSS >> 20} MiB; "
          f"{over} runs over it (or killed, or dead on a signal)")
    if not args.dir:
        shutil.rmtree(d)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
