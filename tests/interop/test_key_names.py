"""Tensor names of non-text dict keys against Python's own str().

A tensor under a dict key that is not text is named by the key as str()
prints it. Each key here goes into a dict of its own (so that keys Python
holds equal, 1 and True, never meet), the dicts into a list, and torch.save
writes it (zip and legacy, pickle protocols 2 and 4: frozensets come by
REDUCE in one and by the FROZENSET opcode in the other). torch.load reads the
file back and str() of each key it returns, in the order the loaded object
gives, must be ckpt's name for that tensor.
"""
import math
import pickle

import pytest
import torch

KEYS = [
    # sets that can be keys
    frozenset({3}), (frozenset({4}),), frozenset(), (frozenset(),),
    frozenset({frozenset({1})}), frozenset({(1, 2)}), frozenset({"a"}), frozenset({b"x"}),
    frozenset({2.5}), frozenset({None}), (1, frozenset({frozenset()}), "z"),
    # numbers
    7, -3, True, False, None, 2 ** 70, -(2 ** 70), 10 ** 100, -(10 ** 300),
    2.5, 1e16, 1e15, 1e-5, 0.0001, -0.0, math.inf, -math.inf, math.nan, 1e22, 5e-324,
    1.7976931348623157e308, 0.1 + 0.2, 123456789.125, -1.5e-7,
    1 + 2j, 2j, complex(-0.0, 1), complex(0, -0.0), complex(-0.0, -0.0), complex(1, math.nan),
    complex(math.inf, -math.inf), complex(-1.5, 0.0),
    # bytes
    b"abc", b"", b"it's", b'say "hi"', b"both ' and \"", b"\x00\xff\n\t\r\\", bytes(range(0, 256, 7)),
    # tuples
    (), (1,), (1, "a"), ((1,),), ("x", b"y", None, True, 1.0, -0.0), ("it's",), ('a"b',),
    ("a\"b'c",), ("\x00\n\u2028\u00e9\x7f",), ("tab\t", "\\"), ((),), (1e16, math.nan, -math.inf),
    ("\U0001f600", "\u200b", "\u0378"),
    # torch values that can be keys
    torch.device("cuda:0"), torch.device("cpu"), (torch.device("cpu"),), (torch.device("cuda", 1),),
    torch.float16, (torch.int8, torch.bool), torch.Size([2, 3]), torch.Size([]),
    (torch.Size([1]),),
    # text, as it is
    "plain", "dot.ted", "a\nb", "\u00e9t\u00e9", "",
]


def save(obj, path, fmt):
    if fmt == "zip2":
        torch.save(obj, path)
    elif fmt == "zip4":
        torch.save(obj, path, pickle_protocol=4)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=False)


@pytest.mark.parametrize("fmt", ["zip2", "zip4", "legacy"])
def test_names_are_str_of_keys(fmt, tool, tmp_path):
    t = torch.arange(2, dtype=torch.float32)
    path = tmp_path / f"keys_{fmt}.pt"
    save([{k: t} for k in KEYS], path, fmt)
    loaded = torch.load(path, weights_only=False)
    expected = [f"{i}.{k}" for i, d in enumerate(loaded) for k in d]
    assert len(expected) == len(KEYS)
    names = [e["name"] for e in tool.inspect_json(path)["tensors"]]
    assert names == expected


def test_equal_frozensets_are_one_key(tool, tmp_path):
    """Equal frozensets are one key in any order of their items: the later
    value stays, at the place of the first (a pickle built by hand: no
    pickler writes a dict with two equal keys)."""
    raw = b"\x80\x04}((K\x01K\x02\x91K\x0a(K\x02K\x01\x91K\x14u."
    path = tmp_path / "dup.pkl"
    path.write_bytes(raw)
    assert pickle.loads(raw) == {frozenset({1, 2}): 20}
    tree = tool.inspect_json(path)["tree"]
    assert tree == {"$dict": [[{"$set": [1, 2]}, 20]]}


def test_frozenset_takes_no_items(tool, tmp_path):
    """ADDITEMS on a frozenset fails in Python (it has no add()): ckpt
    refuses it too rather than show items Python never loads."""
    raw = b"\x80\x04(K\x01\x91(K\x02\x90."
    path = tmp_path / "add.pkl"
    path.write_bytes(raw)
    with pytest.raises(AttributeError):
        pickle.loads(raw)
    res = tool.run("inspect", path)
    assert res.returncode == 2, res.describe()
    assert "ADDITEMS on a frozenset" in res.stderr, res.describe()


def test_frozenset_keys_are_not_written_as_sets(tool, tmp_path):
    """The torch writer folds a frozenset into a set (builtins.frozenset is
    not on the weights-only allow-list); as a key, a set would make a file
    Python cannot load, so such a key is refused, naming it."""
    t = torch.ones(2)
    for key in (frozenset({3}), (1, frozenset())):
        src = tmp_path / "fs.pt"
        torch.save({key: t}, src)
        dst = tmp_path / "out.pt"
        res = tool.run("convert", src, dst)
        assert res.returncode == 2, res.describe()
        assert f"the dict key {key} holds a frozenset" in res.stderr, res.describe()
        assert not dst.exists()
    src = tmp_path / "values.pt"
    torch.save({"t": t, "v": [frozenset({5}), {6}, frozenset()]}, src)
    dst = tmp_path / "values_out.pt"
    res = tool.run("convert", src, dst)
    assert res.returncode == 0, res.describe()
    back = torch.load(dst, weights_only=False)
    assert back["v"] == [{5}, {6}, set()]
    assert [type(x) for x in back["v"]] == [set, set, set]
