"""Less common things torch 1.13 writes: non-text keys, bare storages, memory
formats, materialised conj/neg views, every pickle protocol, and the refusals."""
import collections
import json

import pytest
import torch

from torchref import check_file


def _save(gen_dir, name, obj, **kw):
    p = gen_dir / f"edge_{name}.pt"
    torch.save(obj, p, **kw)
    return p


def test_non_text_keys_are_named_like_python_str(gen_dir, tool):
    t = torch.arange(3.)
    obj = {1: t, (1, "a"): t + 1, None: t + 2, 2.5: t + 3, (7,): t + 4, 1e16: t + 5}
    p = _save(gen_dir, "keys", obj)
    names = [x["name"] for x in tool.inspect_json(p)["tensors"]]
    assert names == ["1", "(1, 'a')", "None", "2.5", "(7,)", "1e+16"]
    _, blobs = tool.dump(p)
    for blob, v in zip(blobs, obj.values()):
        assert blob == v.numpy().tobytes()


def test_python_dict_semantics_for_equal_keys(gen_dir, tool):
    """True == 1 in Python: the later value replaces the earlier one in place."""
    p = _save(gen_dir, "eqkeys", {1: torch.ones(1), "x": 0, True: 5})
    tree = tool.inspect_json(p)["tree"]
    assert tree == {"$dict": [[1, 5], ["x", 0]]}
    assert tool.inspect_json(p)["tensors"] == []


@pytest.mark.parametrize("kind", ["typed", "untyped", "legacy"])
def test_bare_storages(gen_dir, tool, kind):
    src = torch.arange(5, dtype=torch.int16)
    if kind == "typed":
        obj = {"s": src.storage()}
        p = _save(gen_dir, "st_typed", obj)
    elif kind == "untyped":
        obj = {"s": src.storage().untyped()}
        p = _save(gen_dir, "st_untyped", obj)
    else:
        obj = [src.storage()]
        p = _save(gen_dir, "st_legacy", obj, _use_new_zipfile_serialization=False)
    tensors = tool.inspect_json(p)["tensors"]
    assert len(tensors) == 1
    t = tensors[0]
    if kind == "untyped":
        assert (t["dtype"], t["shape"]) == ("uint8", [10])
    else:
        assert (t["dtype"], t["shape"]) == ("int16", [5])
    _, blobs = tool.dump(p)
    assert blobs[0] == src.numpy().tobytes()


def test_memory_formats_and_materialised_views(gen_dir, tool):
    torch.manual_seed(3)
    c1 = torch.complex(torch.randn(4), torch.randn(4))
    c2 = torch.complex(torch.randn(4), torch.randn(4))
    obj = {
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "conj": c1.conj(),
        "neg": c2.conj().imag,
        "expanded": torch.randn(3, 1).expand(3, 4),
        "flipped_t": torch.randn(3, 5).t()[1:, ::2],
    }
    p = _save(gen_dir, "formats", obj)
    check_file(tool, p, torch.load(p), fmt="torch-zip", prefix="edge_formats")


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_every_pickle_protocol_torch_loads(gen_dir, tool, protocol):
    obj = {"w": torch.randn(3, 2), "lr": 0.5, "name": "x", "n": 2 ** 40}
    p = _save(gen_dir, f"proto{protocol}", obj, pickle_protocol=protocol)
    check_file(tool, p, torch.load(p), fmt="torch-zip", prefix=f"edge_proto{protocol}",
               protocol=protocol if protocol >= 2 else None)


def test_protocol0_refused_like_torch(gen_dir, tool):
    p = _save(gen_dir, "proto0", {"w": torch.ones(2)}, pickle_protocol=0)
    with pytest.raises(Exception):
        torch.load(p)
    res = tool.run("inspect", p)
    assert res.returncode == 2
    assert "protocol 0" in res.stderr and "edge_proto0/data.pkl at byte" in res.stderr


def test_counter_and_empty_containers(gen_dir, tool):
    obj = {"c": collections.Counter("abca"), "l": [], "d": {}, "t": (), "s": set()}
    p = _save(gen_dir, "containers", obj)
    tree = tool.inspect_json(p)["tree"]
    assert tree == {"c": {"a": 2, "b": 1, "c": 1}, "l": [], "d": {}, "t": {"$tuple": []},
                    "s": {"$set": []}}


def test_sparse_tensors_read_and_densified(gen_dir, tool):
    torch.manual_seed(4)
    idx = torch.tensor([[0, 1, 1, 0], [2, 0, 2, 2]])
    obj = {
        # uncoalesced: (0, 2) twice, summed by to_dense
        "coo": torch.sparse_coo_tensor(idx, torch.tensor([3., 4., 5., 6.]), (2, 3)),
        "coalesced": torch.sparse_coo_tensor(idx, torch.tensor([1, 2, 3, 4]), (2, 3)).coalesce(),
        "hybrid": torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.randn(2, 4), (3, 4)),
        "csr": torch.randn(4, 5).relu().to_sparse_csr(),
        "dense": torch.ones(2),
    }
    p = _save(gen_dir, "sparse", obj)
    loaded = torch.load(p)
    js = tool.inspect_json(p)
    ts = {t["name"]: t for t in js["tensors"]}
    assert list(ts) == list(obj)
    assert ts["coo"]["layout"] == "sparse_coo" and ts["coo"]["nnz"] == 4
    assert ts["csr"]["layout"] == "sparse_csr"
    assert ts["csr"]["nnz"] == loaded["csr"].values().numel()
    assert ts["dense"]["layout"] == "strided" and "nnz" not in ts["dense"]
    for name, t in ts.items():
        assert t["shape"] == list(loaded[name].shape)
        assert t["dtype"] == str(loaded[name].dtype).replace("torch.", "")
    index, blobs = tool.dump(p)
    for e, blob in zip(index, blobs):
        assert blob == loaded[e["name"]].to_dense().numpy().tobytes(), e["name"]
    assert tool.run("verify", p).returncode == 0


def test_sparse_index_out_of_bounds(gen_dir, tool):
    """torch.load validates sparse indices after loading; ckpt's verify does too,
    and a dense copy never writes out of bounds."""
    bad = torch._sparse_coo_tensor_unsafe(torch.tensor([[0, 7]]), torch.tensor([1., 2.]), (3,))
    p = _save(gen_dir, "sparse_oob", {"s": bad})
    with pytest.raises(Exception):
        torch.load(p)
    assert tool.inspect_json(p)["tensors"][0]["layout"] == "sparse_coo"
    res = tool.run("verify", p)
    assert res.returncode == 1
    assert "index 7 of element 1 is out of bounds" in res.stdout, res.describe()
    out = gen_dir / "sparse_oob_dump"
    out.mkdir(exist_ok=True)
    import subprocess
    r = subprocess.run([tool.dump_bin, str(p), str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "copy failed" in r.stderr


def test_whole_module_refused_naming_the_class(gen_dir, tool):
    p = _save(gen_dir, "module", torch.nn.Linear(2, 2))
    res = tool.run("inspect", p)
    assert res.returncode == 2
    assert "torch.nn.modules.linear.Linear" in res.stderr
    assert "edge_module/data.pkl at byte 2" in res.stderr


def test_root_values(gen_dir, tool):
    for name, obj, tree in [("none", None, None), ("int", 7, 7),
                            ("size", torch.Size([2, 3]), {"$size": [2, 3]})]:
        p = _save(gen_dir, f"root_{name}", obj)
        js = tool.inspect_json(p)
        assert js["tree"] == tree and js["tensors"] == []
    p = _save(gen_dir, "root_tensor2", torch.arange(4))
    js = tool.inspect_json(p)
    assert [t["name"] for t in js["tensors"]] == [""]
    assert json.dumps(js["tree"]) == json.dumps({"$tensor": {"dtype": "int64", "shape": [4]}})


def test_meta_tensors_have_no_storage(gen_dir, tool):
    p = _save(gen_dir, "meta", {"m": torch.empty(3, 4, device="meta"),
                                "p": torch.nn.Parameter(torch.empty(2, device="meta"))})
    ts = tool.inspect_json(p)["tensors"]
    assert [(t["name"], t["dtype"], t["shape"], t["location"], t["storage"]) for t in ts] == [
        ("m", "float32", [3, 4], "meta", None), ("p", "float32", [2], "meta", None)]
    assert ts[1]["parameter"] is True and ts[1]["requires_grad"] is True
    index, blobs = tool.dump(p)
    assert blobs == [b"", b""] and [e["location"] for e in index] == ["meta", "meta"]
    assert tool.run("verify", p).returncode == 0


def _rezip(src, dst, rename):
    """A copy of a torch zip (stored entries) with names changed by rename(name)."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            for name in rename(info.filename):
                zout.writestr(name, zin.read(info.filename))


def test_record_names_ignore_case_like_torch(gen_dir, tool):
    """torch's zip reader (miniz) looks names up ignoring ASCII case: a file
    whose pickle is DATA.PKL loads, and two names differing only in case
    are an ambiguous archive."""
    src = _save(gen_dir, "case_src", {"w": torch.arange(6.)})
    upper = gen_dir / "case_upper.pt"
    _rezip(src, upper, lambda n: [n.replace("data.pkl", "DATA.PKL")])
    assert torch.equal(torch.load(upper)["w"], torch.arange(6.))  # torch reads it
    js = tool.inspect_json(upper)
    assert [t["name"] for t in js["tensors"]] == ["w"]
    both = gen_dir / "case_both.pt"
    _rezip(src, both, lambda n: [n, n.replace("data.pkl", "DATA.PKL")] if n.endswith("data.pkl")
           else [n])
    res = tool.run("inspect", both)
    assert res.returncode == 2 and "only in case" in res.stderr, res.describe()
