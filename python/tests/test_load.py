"""ckpt.load against torch.load(weights_only=True), lifetime and zero-copy."""
import collections
import gc
import io
import os

import pytest
import torch

import ckpt
from helpers import assert_same, raw_bytes, storage_ptr

import ckptgen

# cases torch 1.13's weights-only reader cannot read, compared with its full
# reader on the original instead (these files hold nothing but data)
NAMES = ckptgen.CASE_NAMES


@pytest.mark.parametrize("name", NAMES)
def test_generated_same_as_torch(generated, name):
    case = generated[name]
    ref = case.expected()
    kw = {"map_location": "cpu"}
    ours = ckpt.load(case.path, **kw)
    assert_same(ours, ref)
    ours = ckpt.load(case.path, mmap=False, **kw)
    assert_same(ours, ref)


@pytest.mark.parametrize("name", ["views", "training", "state_dict_legacy"])
def test_file_objects(generated, name):
    case = generated[name]
    ref = case.expected()
    with open(case.path, "rb") as fh:  # has fileno(): mapped
        assert_same(ckpt.load(fh), ref)
    with open(case.path, "rb") as fh:  # no fileno(): read
        assert_same(ckpt.load(io.BytesIO(fh.read())), ref)


def test_views_share_storage(generated):
    d = ckpt.load(generated["views"].path)
    ref = torch.load(generated["views"].path)
    ptrs = collections.defaultdict(set)
    for k, t in ref.items():
        if isinstance(t, torch.Tensor):
            ptrs[storage_ptr(t)].add(k)
    shared = [ks for ks in ptrs.values() if len(ks) > 1]
    assert shared, "the views case has no shared storage"
    for ks in shared:
        assert len({storage_ptr(d[k]) for k in ks}) == 1, ks
        a, b = sorted(ks)[:2]
        before = d[b].clone()
        if d[a].numel():
            d[a][(0,) * d[a].dim()] = 7
        # writing through one view changes the other when they overlap
        assert storage_ptr(d[a]) == storage_ptr(d[b])
        del before


def _file_map_range(path):
    """Where the process mapped path (any mapping of it), from /proc/self/maps."""
    real = os.path.realpath(path)
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                out.append((lo, hi))
    return out


def test_zero_copy_pointers_in_map(generated):
    path = generated["state_dict"].path
    sd = ckpt.load(path)
    ranges = _file_map_range(path)
    assert ranges, "the file is not mapped"
    for k, t in sd.items():
        p = t.data_ptr()
        assert any(lo <= p < hi for lo, hi in ranges), f"{k} is not inside the map"
    copied = ckpt.load(path, mmap=False)
    del sd
    gc.collect()
    for k, t in copied.items():
        p = t.data_ptr()
        assert not any(lo <= p < hi for lo, hi in _file_map_range(path)), k


def test_writes_never_reach_the_file(generated, tmp_path):
    src = generated["state_dict"].path
    path = tmp_path / "sd.pt"
    path.write_bytes(src.read_bytes())
    before = path.read_bytes()
    sd = ckpt.load(path)
    for t in sd.values():
        t.fill_(42)  # never fails: a private copy-on-write map
    assert path.read_bytes() == before
    again = ckpt.load(path)
    for k in sd:
        assert raw_bytes(again[k]) != raw_bytes(sd[k]) or sd[k].numel() == 0


def test_tensors_outlive_everything(generated):
    path = generated["training"].path
    ref = torch.load(path)
    d = ckpt.load(path)
    gc.collect()
    assert_same(d, ref)
    with ckpt.safe_open(path) as f:
        t = f.get_tensor("model.0.weight")
    del f
    gc.collect()
    assert torch.equal(t, ref["model"]["0.weight"])
    w = d["model"]["0.weight"]
    del d
    gc.collect()
    assert torch.equal(w, ref["model"]["0.weight"])
    w.add_(1)  # still writable after everything else went
    gc.collect()
    assert torch.equal(w, ref["model"]["0.weight"] + 1)


def test_map_location(generated):
    case = generated["location_cuda"]
    if not torch.cuda.is_available():
        with pytest.raises(ckpt.DeviceError, match="cuda"):
            ckpt.load(case.path)
        with pytest.raises(ckpt.DeviceError):
            ckpt.load(case.path, map_location={"cuda:0": "cuda:1"})
    ref = case.expected()
    for ml in ("cpu", torch.device("cpu"), {"cuda:0": "cpu", "cuda:1": "cpu"},
               lambda storage, loc: storage):
        assert_same(ckpt.load(case.path, map_location=ml), ref)
    with pytest.raises(TypeError):
        ckpt.load(case.path, map_location=3)
    meta = ckpt.load(generated["state_dict"].path, map_location="meta")
    assert all(t.device.type == "meta" for t in meta.values())


def test_key_and_weights_only(generated):
    path = generated["training"].path
    ref = torch.load(path)
    assert_same(ckpt.load(path, key="model"), ref["model"])
    with pytest.raises(ckpt.NotFoundError):
        ckpt.load(path, key="nope")
    with pytest.raises(ValueError, match="permissive=True"):
        ckpt.load(path, weights_only=False)


def test_parameters_and_requires_grad(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    q = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    g = torch.randn(4).requires_grad_()
    path = tmp_path / "p.pt"
    torch.save({"p": p, "q": q, "g": g}, path)
    d = ckpt.load(path)
    assert_same(d, torch.load(path, weights_only=True))
    assert isinstance(d["p"], torch.nn.Parameter) and d["p"].requires_grad
    assert not d["q"].requires_grad


def test_safetensors_and_sharded(generated, tmp_path):
    sd = torch.load(generated["state_dict"].path)
    path = tmp_path / "m.safetensors"
    ckpt.save_file(dict(sd), path, {"k": "v"})
    back = ckpt.load(path)
    assert list(back) == sorted(sd) or set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k])
    names = list(sd)
    half = len(names) // 2
    ckpt.save_file({k: sd[k] for k in names[:half]}, tmp_path / "a.safetensors")
    ckpt.save_file({k: sd[k] for k in names[half:]}, tmp_path / "b.safetensors")
    import json
    idx = {"metadata": {"total_size": 1},
           "weight_map": {k: ("a" if i < half else "b") + ".safetensors"
                          for i, k in enumerate(names)}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(idx))
    both = ckpt.load(tmp_path / "model.safetensors.index.json")
    assert set(both) == set(sd)
    for k in sd:
        assert torch.equal(both[k], sd[k])


def test_errors_carry_record_and_offset(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cos\nsystem\nq\x02s.")
    with pytest.raises(ckpt.UnsafeError) as ei:
        ckpt.load(path)
    e = ei.value
    assert isinstance(e, ckpt.Error)
    assert e.status == 5 and e.status_name == "CKPT_ERR_UNSAFE"
    assert e.record and e.offset is not None
    assert str(e).startswith(str(path) + ": ")
    assert "os.system" in str(e) or "posix.system" in str(e)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.Error) as ei:
        ckpt.load(path)
    assert ei.value.status in (3, 4)
    with pytest.raises(ckpt.IOError):
        ckpt.load(tmp_path / "missing.pt")


def test_permissive_reads_a_pickled_module(tmp_path):
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
    path = tmp_path / "module.pt"
    torch.save(m, path)
    with pytest.raises(ckpt.UnsafeError):
        ckpt.load(path)
    sd = ckpt.load(path, permissive=True)
    ref = m.state_dict()
    assert list(sd) == list(ref)
    for k in ref:
        assert torch.equal(sd[k], ref[k])


def test_big_storages_copied_and_mapped(tmp_path):
    """Storages of a megabyte and more, read into their own memory (mmap=False)
    and through libckpt's copy (deflated records)."""
    import zipfile
    sd = {"big": torch.randn(600, 1000), "view": None, "small": torch.arange(10)}
    sd["view"] = sd["big"][100:200, 3:]
    path = tmp_path / "big.pt"
    torch.save(sd, path)
    ref = torch.load(path)
    for mm in (True, False):
        d = ckpt.load(path, mmap=mm)
        assert_same(d, ref)
        d["big"].add_(1)
        gc.collect()
        assert torch.equal(d["view"], ref["view"] + 1)
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(deflated, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert_same(ckpt.load(deflated), ref)


def test_sparse_tensors(tmp_path):
    i = torch.tensor([[0, 1, 1], [2, 0, 2]])
    obj = {"coo": torch.sparse_coo_tensor(i, torch.tensor([3., 4., 5.]), (2, 3)),
           "csr": torch.eye(3).to_sparse_csr(), "dense": torch.ones(2)}
    path = tmp_path / "sparse.pt"
    torch.save(obj, path)
    ref = torch.load(path)
    d = ckpt.load(path)
    assert d["coo"].layout == torch.sparse_coo and d["csr"].layout == torch.sparse_csr
    for k in obj:
        assert torch.equal(d[k].to_dense(), ref[k].to_dense()), k
    with pytest.raises(ckpt.UnsupportedError):
        ckpt.load(path, framework="np")


def _same_sharing(a, b, seen=None):
    """a and b have the same shape of object identity: an object met twice
    in a is met twice, at the same places, in b."""
    seen = {} if seen is None else seen
    if isinstance(a, (dict, list, tuple, torch.Tensor)):
        prev = seen.setdefault(id(a), id(b))
        assert prev == id(b), "object identity differs"
        if prev is not None and isinstance(a, torch.Tensor):
            return
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same_sharing(a[k], b[k], seen)
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b):
            _same_sharing(x, y, seen)


@pytest.mark.parametrize("name", NAMES)
def test_flat_path_same_as_node_walk(generated, name, monkeypatch):
    """The one-call path (ckpt_value_flatten) and the node-by-node walk
    give the same tree: values, tensors, storage sharing, identity."""
    from ckpt import _read
    path = generated[name].path
    fast = ckpt.load(path, map_location="cpu")
    monkeypatch.setattr(_read, "_HAS_FLAT", False)
    slow = ckpt.load(path, map_location="cpu")
    assert_same(fast, slow)
    _same_sharing(slow, fast)
    _same_sharing(fast, slow)


def test_flat_path_state_dict(tmp_path, monkeypatch):
    """A state dict of tensors with a storage each is built without a
    ctypes call per tensor, its tensors over the map, and equals torch's."""
    from ckpt import _read
    sd = collections.OrderedDict(
        (f"layer{i}.{k}", torch.randn(3, i % 4 + 1).to(dt))
        for i in range(300) for k, dt in (("w", torch.float32), ("h", torch.bfloat16),
                                           ("n", torch.int64), ("m", torch.bool)))
    sd["tied"] = sd["layer0.w"]
    sd._metadata = collections.OrderedDict({"": {"version": 1}})
    p = tmp_path / "sd.pt"
    torch.save(sd, p)
    calls = []
    real = _read.Converter.tensor
    monkeypatch.setattr(_read.Converter, "tensor",
                        lambda self, t: calls.append(t) or real(self, t))
    ref = torch.load(p)
    for mm in (False, True):
        ours = ckpt.load(p, mmap=mm)
        assert_same(ours, ref)
        assert ours._metadata == ref._metadata
        assert ours["tied"] is ours["layer0.w"]
        assert calls == []
    with open(p, "rb") as fh:
        raw = fh.read()
    t = ours["layer5.w"]
    # inside the map, a storage of its own, and writing to it leaves the file
    assert storage_ptr(t) == t.data_ptr()
    t.fill_(7)
    with open(p, "rb") as fh:
        assert fh.read() == raw
    del ours
    gc.collect()
    assert torch.equal(t, torch.full_like(t, 7))


def test_quantized_tensors(tmp_path):
    """Quantized tensors (per tensor and per channel, strided) as torch.load
    gives them: dtype, qscheme, quantizer parameters, strides, integers,
    over the file's map; framework="np" gives their integers."""
    import ckptgen
    obj = ckptgen.quantized_obj()
    x = torch.randn(4, 6)
    obj["t"] = torch.quantize_per_tensor(x, 0.2, 1, torch.qint8).t()
    obj["c"] = torch.quantize_per_channel(x, torch.rand(6) + 0.1, torch.randint(0, 5, (6,)), 1,
                                          torch.quint8)
    obj["c0"] = torch.quantize_per_channel(x, torch.rand(4) + 0.1, torch.zeros(4).long(), 0,
                                           torch.qint8)
    obj["w"] = torch.randn(3)
    path = tmp_path / "q.pt"
    torch.save(obj, path)
    ref = torch.load(path)
    raw = path.read_bytes()
    for mm in (True, False):
        ours = ckpt.load(path, mmap=mm)
        assert list(ours) == list(ref)
        for k, t in ref.items():
            o = ours[k]
            assert o.dtype == t.dtype and o.shape == t.shape, k
            assert o.stride() == t.stride() and o.storage_offset() == t.storage_offset(), k
            if not t.is_quantized:
                assert torch.equal(o, t)
                continue
            assert o.qscheme() == t.qscheme(), k
            assert torch.equal(o.int_repr(), t.int_repr()), k
            assert torch.equal(o.dequantize(), t.dequantize()), k
            if t.qscheme() == torch.per_tensor_affine:
                assert (o.q_scale(), o.q_zero_point()) == (t.q_scale(), t.q_zero_point()), k
            else:
                assert torch.equal(o.q_per_channel_scales(), t.q_per_channel_scales()), k
                assert torch.equal(o.q_per_channel_zero_points(),
                                   t.q_per_channel_zero_points()), k
                assert o.q_per_channel_axis() == t.q_per_channel_axis(), k
            if mm:  # its integers are the file's bytes, in place
                b = bytes(o.int_repr().contiguous().view(torch.uint8).numpy()) \
                    if o.is_contiguous() else None
                if b:
                    assert raw.find(b) >= 0, k
    with ckpt.safe_open(path) as fh:  # by name too
        o = fh.get_tensor("c")
        assert o.qscheme() == ref["c"].qscheme() and torch.equal(o.dequantize(),
                                                                 ref["c"].dequantize())
    n = ckpt.load(path, framework="np")
    assert n["qint8"].ckpt_dtype == "qint8"
    # raw unsigned integers of the width, as for every dtype numpy lacks
    assert n["qint8"].view("int8").tolist() == ref["qint8"].int_repr().tolist()
