"""ckpt against the real PyTorch: files torch 1.13 writes, read back by ckpt.

Each generated file (see ckptgen.py) is checked in full by torchref.check_file:
tensor names by the naming contract, dtype, shape, stride, storage offset,
requires_grad, Parameter-ness, location, storage sharing, record and data
offsets, bytes (through ckpt_dump), totals, format details and the whole value
tree in tagged JSON form. The tests below add the case-specific assertions.
"""
import collections
import io
import warnings
import zipfile

import pytest
import torch

import ckptgen
from torchref import check_file, flatten, tensor_bytes


def test_case_list_is_complete(torch_files):
    assert sorted(torch_files) == sorted(ckptgen.CASE_NAMES)


@pytest.mark.parametrize("name", ckptgen.CASE_NAMES)
def test_matches_torch(name, torch_files, tool):
    case = torch_files[name]
    check_file(tool, case.path, case.expected(), **case.check)


def _by_name(js):
    return {t["name"]: t for t in js["tensors"]}


@pytest.mark.parametrize("name", ["views", "views_legacy"])
def test_views_share_one_storage(name, torch_files, tool):
    js = tool.inspect_json(torch_files[name].path)
    t = _by_name(js)
    shared = ["x", "slice", "narrow", "transpose", "step", "block", "scalar_view", "same",
              "list.0", "list.1"]
    keys = {t[n]["storage"] for n in shared}
    assert len(keys) == 1, {n: t[n]["storage"] for n in shared}
    assert t["other"]["storage"] not in keys
    assert t["expand"]["storage"] not in keys
    assert t["expand"]["stride"] == [0, 1]
    assert t["expand"]["storage_nbytes"] == 3 * 2
    assert t["slice"]["storage_offset"] == 5
    assert t["scalar_view"]["shape"] == [] and t["scalar_view"]["storage_offset"] == 7
    assert t["transpose"]["stride"] == [1, 5] and t["transpose"]["contiguous"] is False
    assert t["fortran"]["stride"] == [1, 2, 6]
    assert js["details"]["storages"] == 4
    # the same object reached by two paths is listed under both
    assert t["x"]["storage_offset"] == t["same"]["storage_offset"] == 0


@pytest.mark.parametrize("name", ["shapes", "shapes_legacy"])
def test_special_shapes(name, torch_files, tool):
    js = tool.inspect_json(torch_files[name].path)
    t = _by_name(js)
    assert t["zero_d"]["shape"] == [] and t["zero_d"]["numel"] == 1
    assert t["empty"]["shape"] == [0] and t["empty"]["nbytes"] == 0
    assert t["empty_2d"]["shape"] == [3, 0] and t["empty_2d"]["numel"] == 0
    assert t["requires_grad"]["requires_grad"] is True
    assert t["requires_grad"]["parameter"] is False
    assert t["param"]["parameter"] is True and t["param"]["requires_grad"] is True
    assert t["param_frozen"]["parameter"] is True
    assert t["param_frozen"]["requires_grad"] is False
    assert js["tree"]["param"] == {"$tensor": {"dtype": "float32", "shape": [2, 2],
                                               "parameter": True}}


@pytest.mark.parametrize("name", ["state_dict", "state_dict_legacy", "ddp"])
def test_state_dict_keeps_metadata(name, torch_files, tool):
    case = torch_files[name]
    sd = case.expected()
    js = tool.inspect_json(case.path)
    tree = js["tree"]
    assert set(tree) == {"$odict", "$state"}, "a state_dict must keep its BUILD state"
    meta = tree["$state"]["_metadata"]
    assert "$odict" in meta
    versions = {k: v["version"] for k, v in meta["$odict"].items()}
    assert versions == {k: v["version"] for k, v in sd._metadata.items()}
    # BatchNorm's version is 2 in torch 1.13: a real module version, not a default
    bn = "module.bn" if name == "ddp" else "bn"
    assert versions[bn] == 2
    assert list(tree["$odict"]) == list(sd.keys())


@pytest.mark.parametrize("name", ["training", "training_legacy"])
def test_training_checkpoint(name, torch_files, tool):
    case = torch_files[name]
    ck = case.expected()
    js = tool.inspect_json(case.path)
    names = [t["name"] for t in js["tensors"]]
    for p in range(4):
        for k in ("step", "exp_avg", "exp_avg_sq"):
            assert f"optimizer.state.{p}.{k}" in names
    tree = js["tree"]
    assert tree["epoch"] == 3
    assert tree["metrics"] == {"val_loss": 0.25, "acc": 0.9}
    assert tree["torch_version"] == str(torch.__version__)
    assert tree["scheduler"]["last_epoch"] == 3
    assert tree["scheduler"]["_last_lr"] == ck["scheduler"]["_last_lr"]
    assert tree["optimizer"]["param_groups"][0]["params"] == [0, 1, 2, 3]
    assert tree["optimizer"]["param_groups"][0]["betas"] == {"$tuple": [0.9, 0.999]}
    assert tree["scaler"]["scale"] == 65536.0
    # Adam's exp_avg after real steps is not all zero: the bytes checked are real data
    idx, blobs = tool.dump(case.path)
    i = names.index("optimizer.state.0.exp_avg")
    assert blobs[i] == tensor_bytes(ck["optimizer"]["state"][0]["exp_avg"])
    assert any(blobs[i])


def test_torch_version_object(gen_dir, tool):
    """torch.__version__ pickles as torch.torch_version.TorchVersion (a str subclass,
    outside torch's weights_only allow-list): ckpt reads it as its text."""
    p = gen_dir / "tv.pt"
    torch.save({"torch_version": torch.__version__, "w": torch.ones(2)}, p)
    res = tool.run("inspect", p, "--json")
    assert res.returncode == 0, res.describe()
    import json
    assert json.loads(res.stdout)["tree"]["torch_version"] == str(torch.__version__)


def test_plain_values_tree(torch_files, tool):
    """Spot checks of the tagged forms (the full tree is compared in test_matches_torch)."""
    tree = tool.inspect_json(torch_files["plain"].path)["tree"]
    assert tree["big"] == {"$int": str(2 ** 70)}
    assert tree["negbig"] == {"$int": str(-(2 ** 70) - 5)}
    assert tree["i64min"] == -2 ** 63
    assert tree["nan"] == {"$float": "nan"}
    assert tree["ninf"] == {"$float": "-inf"}
    assert tree["bytes"] == {"$bytes": "0001ff616263"}
    assert tree["bytearray"] == {"$bytes": "7879007a"}
    assert tree["str"] == "héllo wörld ✓ 🚀 日本"
    assert tree["nul_str"] == "a\x00b"
    assert tree["size"] == {"$size": [2, 3]}
    assert tree["device"] == {"$device": "cuda:1"}
    assert tree["dtype2"] == {"$dtype": "bfloat16"}
    assert tree["complex_special"] == {"$complex": ["nan", "-inf"]}
    assert tree["int_keys"] == {"$dict": [[1, "one"], [-2, "minus two"],
                                          [{"$int": str(10 ** 20)}, "big key"]]}
    assert tree["nul_key"] == {"$dict": [["a\x00b", 1]]}
    assert tree["one_tuple"] == {"$tuple": [1]}
    assert sorted(tree["frozenset"]["$set"]) == ["a", "b"]


def test_location_tag(torch_files, tool):
    for name in ("location_cuda", "location_cuda_legacy"):
        case = torch_files[name]
        js = tool.inspect_json(case.path)
        assert {t["location"] for t in js["tensors"]} == {"cuda:0"}, name
        idx, _ = tool.dump(case.path)
        assert {e["location"] for e in idx} == {"cuda:0"}, name
        # torch itself maps them back to the CPU with equal values (checked in full by
        # test_matches_torch); the file really says cuda:0:
        if name == "location_cuda":
            with zipfile.ZipFile(case.path) as z:
                assert b"cuda:0" in z.read("cuda/data.pkl")


def test_prefixes(torch_files, tool):
    assert tool.inspect_json(torch_files["dotted_name"].path)["details"]["prefix"] == "model.v2"
    assert tool.inspect_json(torch_files["bytesio"].path)["details"]["prefix"] == "archive"
    assert tool.inspect_json(torch_files["dtypes"].path)["details"]["prefix"] == "dtypes"


def test_protocol4(torch_files, tool):
    for name in ("protocol4", "protocol4_legacy"):
        js = tool.inspect_json(torch_files[name].path)
        assert js["details"]["pickle_protocol"] == 4, name


def test_big_endian_rewrite(torch_files, tool):
    case = torch_files["big_endian"]
    js = tool.inspect_json(case.path)
    assert js["details"]["byteorder"] == "big"
    assert js["details"]["big_endian"] is True
    idx, blobs = tool.dump(case.path)
    exp = dict(flatten(case.expected()))
    assert len(idx) == len(exp)
    for e, b in zip(idx, blobs):
        assert e["zero_copy"] is False, e
        assert b == tensor_bytes(exp[e["name"]]), e["name"]
    # the rewrite really swapped the bytes on disk
    with zipfile.ZipFile(case.path) as z, zipfile.ZipFile(case.source) as zs:
        key = _by_name(js)["int64"]["storage"]
        assert z.read(f"be_src/data/{key}") != zs.read(f"be_src/data/{key}")


def test_deflated_rewrite(torch_files, tool):
    case = torch_files["deflated"]
    js = tool.inspect_json(case.path)
    data_records = [r for r in js["records"] if "/data/" in r["name"]]
    assert data_records and all(r["compressed"] for r in data_records)
    zeros = next(r for r in data_records if r["size"] == 20000)
    assert zeros["stored_size"] < 1000
    idx, blobs = tool.dump(case.path)
    assert all(e["zero_copy"] is False for e in idx)


def test_many_tensors(torch_files, tool):
    js = tool.inspect_json(torch_files["many_tensors"].path)
    names = [t["name"] for t in js["tensors"]]
    assert len(names) == 10000 == js["totals"]["tensors"]
    assert names[0] == "blocks.0.layer0.weight" and names[-1] == "blocks.999.layer9.weight"
    assert len(set(names)) == 10000
    assert len({t["storage"] for t in js["tensors"]}) == 10000


def test_zero_copy_for_torch_files(torch_files, tool):
    idx, _ = tool.dump(torch_files["dtypes"].path)
    assert all(e["zero_copy"] is True for e in idx)


def test_complex32_cannot_be_saved():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ComplexHalf support is experimental"
            torch.save(torch.zeros(2, dtype=torch.chalf), io.BytesIO())
    except (KeyError, RuntimeError, TypeError) as exc:
        pytest.skip(f"torch {torch.__version__} cannot save complex32: {exc}")
    pytest.fail("this torch saves complex32: add it to ckptgen.all_dtypes_obj")


def test_quantized(gen_dir, tool):
    """torch 1.13 saves quantized tensors (_rebuild_qtensor, allow-listed): ckpt reads
    them like torch, the integer representation as the bytes."""
    p = gen_dir / "quantized.pt"
    obj = ckptgen.quantized_obj()
    torch.save(obj, p)
    res = tool.run("inspect", p, "--json")
    assert res.returncode == 0, res.describe()
    check_file(tool, p, torch.load(p), fmt="torch-zip", prefix="quantized")


def test_quint4x2(gen_dir, tool):
    """quint4x2 packs two elements per byte: the storage holds 2 bytes for 4 elements."""
    torch.manual_seed(8)
    q = torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint4x2)
    p = gen_dir / "quint4x2.pt"
    torch.save({"q": q}, p)
    res = tool.run("inspect", p, "--json")
    assert res.returncode == 0, res.describe()
    import json
    t = json.loads(res.stdout)["tensors"][0]
    assert t["dtype"] == "quint4x2" and t["shape"] == [4]
    with zipfile.ZipFile(p) as z:
        packed = z.read("quint4x2/data/0")
    assert t["storage_nbytes"] == len(packed) == 2
    assert t["nbytes"] == 2


def test_shared_tensor_listed_under_every_path(gen_dir, tool):
    t = torch.arange(3.)
    obj = {"a": t, "b": [t, {"c": t}], "d": (t,)}
    p = gen_dir / "shared_paths.pt"
    torch.save(obj, p)
    js = tool.inspect_json(p)
    assert [x["name"] for x in js["tensors"]] == ["a", "b.0", "b.1.c", "d.0"]
    assert len({x["storage"] for x in js["tensors"]}) == 1
    assert js["details"]["storages"] == 1


def test_module_versions_keep_order(torch_files, tool):
    sd = torch_files["state_dict"].expected()
    js = tool.inspect_json(torch_files["state_dict"].path)
    assert list(js["tree"]["$state"]["_metadata"]["$odict"]) == list(sd._metadata)
    assert isinstance(sd._metadata, collections.OrderedDict)
