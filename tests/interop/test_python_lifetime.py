"""10,000 open/close cycles of the Python package leak nothing.

A child process (the package of this tree, ckptpy.py) loads a torch.save file
and a safetensors file over and over: ckpt.load with and without mmap, of a
path, a file object and a BytesIO, and ckpt.safe_open (keys, get_tensor,
get_slice, metadata), keeping some tensors
past the close and dropping them later, as a training loop or a server does.
After a warm-up it takes the process's resident memory, its open descriptors
(/proc/self/fd) and its maps of the two files (/proc/self/maps); after 10,000
more cycles and gc.collect() the descriptors and maps must be back where they
were and the resident memory within a bound far below what one leaked map,
handle or tensor per cycle would add (each cycle builds tens of KiB of tensors).
"""
import pytest

import ckptpy

CYCLES = 10000
WARMUP = 300
# what one leaked 16-KiB tensor per cycle would add is 156 MiB; a leaked ckpt
# handle (its arena) or a Python object cycle per cycle, tens of MiB
RSS_BOUND_MIB = 8

CHILD = r"""
import gc, io, json, os, sys
import torch
import ckpt

pth, st, cycles, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def fds():
    return sorted(os.listdir("/proc/self/fd"))


def maps():
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith((pth, st)))


kept = []


def cycle(i):
    # the six kinds of cycle in turn
    k = i % 6
    if k == 0:
        sd = ckpt.load(pth)                      # zero-copy
        assert float(sd["layers"][3]["weight"][1, 2]) == 3 * 1000 + 1 * 64 + 2
    elif k == 1:
        sd = ckpt.load(pth, mmap=False)          # copies
        assert float(sd["layers"][2]["bias"][5]) == -5
    elif k == 2:
        with ckpt.safe_open(st, framework="pt") as f:
            names = list(f.keys())
            t = f.get_tensor("w.1")
            part = f.get_slice("w.4")[2:4]
            assert f.metadata() == {"kind": "lifetime"}
        assert len(names) == 5 and float(t[1, 2]) == 1000 + 64 + 2
        assert float(part[0, 0]) == 4 * 1000 + 2 * 64
        with ckpt.safe_open(pth, framework="pt") as f:
            u = f.get_tensor("layers.1.weight")
        assert torch.equal(t, u)
        sd = {"t": t, "u": u}
    elif k == 3:
        sd = ckpt.load(st)
        assert float(sd["w.2"][0, 0]) == 2000
    elif k == 4:
        with open(pth, "rb") as fh:              # a file object: mapped by its fileno
            sd = ckpt.load(fh)
        assert float(sd["layers"][4]["weight"][0, 1]) == 4001
    else:
        with open(st, "rb") as fh:               # no fileno: read into memory
            sd = ckpt.load(io.BytesIO(fh.read()))
        assert float(sd["w.3"][2, 0]) == 3128
    # a tensor kept past the close, dropped 16 cycles later
    kept.append(sd[next(iter(sd))] if k != 0 else sd["layers"][0]["weight"])
    if len(kept) > 16:
        kept.pop(0)


for i in range(warmup):
    cycle(i)
kept.clear()
gc.collect()
before = {"rss": rss(), "fds": fds(), "maps": maps()}
for i in range(cycles):
    cycle(i)
kept.clear()
gc.collect()
after = {"rss": rss(), "fds": fds(), "maps": maps()}
print(json.dumps({"before": before, "after": after}))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import torch

    d = tmp_path_factory.mktemp("lifetime")
    layers = []
    for i in range(5):
        w = torch.tensor([[i * 1000 + r * 64 + c for c in range(64)] for r in range(64)],
                         dtype=torch.float32)
        layers.append({"weight": w, "bias": -torch.arange(64, dtype=torch.float32)})
    torch.save({"layers": layers, "step": 7, "name": "lifetime"}, d / "a.pth")
    # safetensors by hand (F32, row-major, offsets from the end of the header)
    import json
    import struct
    tensors = {f"w.{i}": layers[i]["weight"] for i in range(5)}
    header, blobs, off = {"__metadata__": {"kind": "lifetime"}}, [], 0
    for name, t in tensors.items():
        raw = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    (d / "a.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return d


def test_open_close_cycles_leak_nothing(files):
    ckptpy.require()
    r = ckptpy.run_code(CHILD, files / "a.pth", files / "a.safetensors", CYCLES, WARMUP)
    before, after = r["before"], r["after"]
    assert after["fds"] == before["fds"], r
    assert after["maps"] == before["maps"] == 0, r
    grown = (after["rss"] - before["rss"]) / (1 << 20)
    assert grown < RSS_BOUND_MIB, f"resident memory grew {grown:.1f} MiB over {CYCLES} cycles"
