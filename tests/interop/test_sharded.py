"""Sharded checkpoints: an index JSON over shard files beside it."""
import json
import os
import struct

import numpy as np
import pytest
import torch


def _safetensors(path, tensors):
    """A minimal safetensors writer (FORMATS.md section 4) for test inputs."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[str(arr.dtype)],
                        "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_corpus_sharded_index(corpus_dir, tool):
    index = corpus_dir / "benign/SafeTensors.jl/sharded/model.safetensors.index.json"
    js = tool.inspect_json(index)
    weight_map = json.loads(index.read_text())["weight_map"]
    assert js["format"] == "sharded"
    assert js["details"]["shards"] == len(set(weight_map.values()))
    assert [t["name"] for t in js["tensors"]] == list(weight_map)
    assert js["metadata"] == {"total_size": 4305}
    res = tool.run("verify", index)
    assert res.returncode == 0, res.describe()


@pytest.fixture()
def shard_dir(tmp_path):
    rng = np.random.default_rng(5)
    a = {"w1": rng.standard_normal((3, 4)).astype(np.float32)}
    b = {"w2": np.arange(6, dtype=np.int64), "b2": rng.standard_normal(2).astype(np.float32)}
    _safetensors(tmp_path / "model-00001-of-00002.safetensors", a)
    torch.save({k: torch.from_numpy(v) for k, v in b.items()}, tmp_path / "model-00002-of-00002.bin")
    index = {"metadata": {"total_size": 100, "format": "pt"},
             "weight_map": {"w1": "model-00001-of-00002.safetensors",
                            "w2": "model-00002-of-00002.bin",
                            "b2": "model-00002-of-00002.bin"}}
    (tmp_path / "model.index.json").write_text(json.dumps(index))
    return tmp_path, {**a, **b}


def test_mixed_shards_read_exactly(shard_dir, tool):
    d, expected = shard_dir
    js = tool.inspect_json(d / "model.index.json")
    assert [t["name"] for t in js["tensors"]] == ["w1", "w2", "b2"]
    assert js["metadata"] == {"total_size": 100, "format": "pt"}
    index, blobs = tool.dump(d / "model.index.json")
    for e, blob in zip(index, blobs):
        assert blob == expected[e["name"]].tobytes(), e["name"]


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "a/../../x", ""])
def test_shard_names_must_stay_inside(shard_dir, tool, bad):
    d, _ = shard_dir
    index = {"weight_map": {"w1": bad}}
    (d / "evil.index.json").write_text(json.dumps(index))
    res = tool.run("inspect", d / "evil.index.json")
    assert res.returncode == 2
    assert "inside the index's directory" in res.stderr, res.describe()


def test_tensor_missing_from_its_shard(shard_dir, tool):
    d, _ = shard_dir
    index = {"weight_map": {"nope": "model-00001-of-00002.safetensors"}}
    (d / "missing.index.json").write_text(json.dumps(index))
    res = tool.run("inspect", d / "missing.index.json")
    assert res.returncode == 2
    assert "'nope' is not in its shard" in res.stderr, res.describe()


def test_fifo_shard_does_not_hang(shard_dir, tool):
    d, _ = shard_dir
    os.mkfifo(d / "pipe.safetensors")
    (d / "fifo.index.json").write_text(json.dumps({"weight_map": {"w": "pipe.safetensors"}}))
    res = tool.run("inspect", d / "fifo.index.json", timeout=20)
    assert res.returncode == 2
    assert "pipe.safetensors" in res.stderr and "not a regular file" in res.stderr, res.describe()


def test_corrupt_shard_named_by_verify(shard_dir, tool):
    d, _ = shard_dir
    shard = d / "model-00002-of-00002.bin"
    raw = bytearray(shard.read_bytes())
    import zipfile
    with zipfile.ZipFile(shard) as z:
        info = z.getinfo("model-00002-of-00002/data/0")
    # flip a byte inside the first storage record (located through its local header)
    off = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", raw, off + 26)
    raw[off + 30 + name_len + extra_len] ^= 0xFF
    shard.write_bytes(bytes(raw))
    res = tool.run("verify", d / "model.index.json")
    assert res.returncode == 1, res.describe()
    assert "model-00002-of-00002.bin" in res.stdout and "CRC32" in res.stdout, res.describe()


def test_many_big_shards_hold_no_descriptor_each(tmp_path, tool):
    """An index of more big shards than the process may hold descriptors:
    shards are read through their maps, so opening needs one at a time.
    The shards are sparse files (16 MiB of zeros each, no disk used)."""
    import resource
    import subprocess
    n, numel = 40, 4 << 20  # 40 shards of 16 MiB of float32
    weight_map = {}
    for i in range(n):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        header = json.dumps({f"w{i}": {"dtype": "F32", "shape": [numel],
                                       "data_offsets": [0, 4 * numel]}}).encode()
        header += b" " * ((-len(header)) % 8)
        with open(tmp_path / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            f.truncate(8 + len(header) + 4 * numel)
        weight_map[f"w{i}"] = name
    (tmp_path / "model.index.json").write_text(json.dumps({"weight_map": weight_map}))

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    proc = subprocess.run([tool.ckpt_bin, "inspect", str(tmp_path / "model.index.json"), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=low_limit,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    js = json.loads(proc.stdout)
    assert js["details"]["shards"] == n
    assert [t["name"] for t in js["tensors"]] == [f"w{i}" for i in range(n)]


def _index(path, weight_map):
    path.write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture()
def index_loops(shard_dir):
    """Indexes whose shards are indexes: the index itself under several
    spellings (its name, ./name, a link, a hard link), another index, and
    two indexes naming each other."""
    d, _ = shard_dir
    _index(d / "self.index.json", {"w1": "self.index.json"})
    _index(d / "dot.index.json", {"w1": "./dot.index.json"})
    _index(d / "link.index.json", {"w1": "link.safetensors"})
    os.symlink("link.index.json", d / "link.safetensors")
    _index(d / "hard.index.json", {"w1": "hard.safetensors"})
    os.link(d / "hard.index.json", d / "hard.safetensors")
    _index(d / "outer.index.json", {"w1": "model.index.json"})
    _index(d / "ping.index.json", {"w1": "pong.safetensors"})
    _index(d / "pong.safetensors", {"w1": "ping.index.json"})
    return d


LOOPS = [("self.index.json", "self.index.json", "the index itself"),
         ("dot.index.json", "./dot.index.json", "the index itself"),
         ("link.index.json", "link.safetensors", "the index itself"),
         ("hard.index.json", "hard.safetensors", "the index itself"),
         ("outer.index.json", "model.index.json", "itself a sharded index"),
         ("ping.index.json", "pong.safetensors", "itself a sharded index")]


@pytest.mark.parametrize("index,shard,why", LOOPS)
def test_index_as_shard_is_refused(index_loops, tool, index, shard, why):
    """A shard must be a checkpoint file: an index naming an index (itself,
    however spelled) is a FORMAT error naming the shard, never a recursion
    (which ran out of stack)."""
    d = index_loops
    res = tool.run("inspect", d / index, timeout=60)
    assert res.returncode == 2, res.describe()
    assert shard in res.stderr and why in res.stderr, res.describe()
    res = tool.run("verify", d / index, timeout=60)
    assert res.returncode == 1, res.describe()  # 1: the file is broken
    assert shard in res.stdout and why in res.stdout, res.describe()
    res = tool.run("scan", d / index, "--json", timeout=60)
    assert res.returncode == 1, res.describe()  # 1: unsafe
    rep = json.loads(res.stdout)["files"][0]
    assert rep["verdict"] == "unsafe", rep
    if "/" in shard:  # the scan names shards plainly: one with a directory is refused
        assert [f["kind"] for f in rep["findings"]] == ["unsafe_name"], rep
    else:
        assert [(f["kind"], f["record"]) for f in rep["findings"]] == [("format", shard)], rep
        assert why in rep["findings"][0]["message"], rep


def test_one_shard_file_opened_once(shard_dir, tool):
    """Tensors naming one shard file under several spellings (a link, a hard
    link, ./name) share one opened shard."""
    d, expected = shard_dir
    os.symlink("model-00002-of-00002.bin", d / "alias.bin")
    os.link(d / "model-00002-of-00002.bin", d / "hardalias.bin")
    _index(d / "alias.index.json", {"w1": "./model-00001-of-00002.safetensors",
                                    "w2": "alias.bin", "b2": "hardalias.bin"})
    js = tool.inspect_json(d / "alias.index.json")
    assert js["details"]["shards"] == 2
    assert [t["name"] for t in js["tensors"]] == ["w1", "w2", "b2"]
    res = tool.run("verify", d / "alias.index.json")
    assert res.returncode == 0, res.describe()
