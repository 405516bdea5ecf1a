"""`ckpt match CHECKPOINT --model REFERENCE`: ckpt's load report against
PyTorch's own load_state_dict() for the same mismatches.

Each case has a model A and a state dict sd made from another model. A's
state_dict() is saved as the reference, sd as the checkpoint; torch loads sd
into A (strict, then strict=False) and ckpt must say the same: the same
message, character for character, when torch raises, and the same missing
and unexpected keys, in the same order, when it does not.
"""
import copy
import json
import os
import resource
import subprocess
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

import ckptgen
from ckpttool import Result, crashed


class Net(nn.Module):
    """The seed's model."""

    def __init__(self, head=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, head))


class Short(nn.Module):
    """Net without its last layer."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU())


class Deep(nn.Module):
    """Net with one more layer: net.4.weight, net.4.bias."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10), nn.ReLU(),
                                 nn.Linear(10, 10))


class Mixed(nn.Module):
    """Against Net: net.2.weight of another shape, no net.2.bias, net.4.* and
    a head at the root that Net lacks (saved after net.4.*)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5, bias=False),
                                 nn.ReLU(), nn.Linear(5, 5))
        self.head = nn.Linear(5, 2)


class BNNet(nn.Module):
    """Buffers: running_mean, running_var and an int64 num_batches_tracked."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                 nn.Linear(64, 10))


def made(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(**kw)


def bn_trained():
    m = made(BNNet, 3)
    m.train()
    m.net(torch.randn(8, 32))
    return m


def run(ckpt_bin, *args):
    argv = [ckpt_bin, *map(str, args)]
    res = Result(argv, subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      timeout=60))
    assert not crashed(res), "ckpt crashed\n" + res.describe()
    return res


def stdout_text(res):
    out = res.stdout
    assert out.endswith("\n"), res.describe()
    return out[:-1]


def torch_load(model, sd, strict):
    """What load_state_dict says: (None, _IncompatibleKeys) or (message, None)."""
    model = copy.deepcopy(model)
    try:
        return None, model.load_state_dict(sd, strict=strict)
    except RuntimeError as e:
        return str(e), None


class Case:
    def __init__(self, d, model, sd, name):
        self.model, self.sd = model, sd
        self.ref = d / f"{name}_ref.pth"
        self.ck = d / f"{name}_ck.pth"
        torch.save(model.state_dict(), self.ref)
        torch.save(sd, self.ck)
        self.cls = type(model).__name__

    def match(self, ckpt_bin, *opts):
        return run(ckpt_bin, "match", self.ck, "--model", self.ref, "--name", self.cls, *opts)


@pytest.fixture
def case(tmp_path):
    n = iter(range(1000))

    def make(model, sd):
        return Case(tmp_path, model, sd, f"c{next(n)}")
    return make


def check_strict(ckpt_bin, c, *opts, torch_sd=None):
    """ckpt's strict verdict is torch's: exit 1 with its message, or exit 0."""
    message, _ = torch_load(c.model, c.sd if torch_sd is None else torch_sd, strict=True)
    res = c.match(ckpt_bin, *opts)
    if message is None:
        assert res.returncode == 0, res.describe()
        # the model keys the checkpoint has, after remapping: a key torch
        # fills itself (an old BatchNorm's num_batches_tracked) is not loaded
        strip = [opts[i + 1] for i, o in enumerate(opts) if o == "--strip-prefix"]
        renames = [opts[i + 1].split("=", 1) for i, o in enumerate(opts) if o == "--rename-prefix"]

        def remap(k):
            k = next((k[len(p):] for p in strip if k.startswith(p)), k)
            return next((t + k[len(f):] for f, t in renames if k.startswith(f)), k)
        keys = {remap(k) for k in c.sd}
        # extra state is accepted, not loaded
        n = sum(1 for k in c.model.state_dict() if k in keys and not k.endswith("_extra_state"))
        assert res.stdout.startswith(
            f"ok: {n} tensor{'s' if n != 1 else ''} load{'s' if n == 1 else ''} into {c.cls} "
            "(strict)\n"), res.describe()
    else:
        assert res.returncode == 1, res.describe()
        assert stdout_text(res) == message
    js = c.match(ckpt_bin, *opts, "--json")
    assert js.returncode == res.returncode, js.describe()
    out = json.loads(js.stdout)
    assert out["ok"] is (message is None) and out["strict"] is True
    assert out["message"] == message
    return message, out


def check_non_strict(ckpt_bin, c, *opts, torch_sd=None):
    """ckpt --non-strict against load_state_dict(strict=False)."""
    message, keys = torch_load(c.model, c.sd if torch_sd is None else torch_sd, strict=False)
    res = c.match(ckpt_bin, "--non-strict", *opts)
    js = c.match(ckpt_bin, "--non-strict", "--json", *opts)
    out = json.loads(js.stdout)
    assert out["strict"] is False
    if message is not None:
        assert res.returncode == 1 and js.returncode == 1, res.describe()
        assert stdout_text(res) == message
        assert out["ok"] is False and out["message"] == message
        return message, out
    assert res.returncode == 0 and js.returncode == 0, res.describe() + js.describe()
    lines = res.stdout.split("\n")
    assert lines[0].endswith(f" into {c.cls} (non-strict)"), res.describe()
    assert lines[1] == repr(keys)
    assert out["ok"] is True and out["message"] is None and out["errors"] == []
    assert out["missing"] == keys.missing_keys
    assert out["unexpected"] == keys.unexpected_keys
    return None, out


# ---- the cases ----------------------------------------------------------------------


def test_same_model_loads(ckpt_bin, case):
    c = case(made(Net), made(Net, 1).state_dict())
    _, out = check_strict(ckpt_bin, c)
    assert out["loaded"] == 4 and out["converted"] == 0
    assert out["missing"] == out["unexpected"] == out["errors"] == []
    _, out = check_non_strict(ckpt_bin, c)
    assert c.match(ckpt_bin, "--non-strict").stdout.split("\n")[1] == \
        "<All keys matched successfully>"


def test_changed_head(ckpt_bin, case):
    """(a) Linear(64, 5) for Linear(64, 10): two size mismatches."""
    c = case(made(Net), made(Net, 1, head=5).state_dict())
    message, out = check_strict(ckpt_bin, c)
    assert message.count("size mismatch for") == 2
    assert out["missing"] == out["unexpected"] == []
    assert ["\t" + e for e in out["errors"]] == message.split("\n")[1:]


def test_missing_layer(ckpt_bin, case):
    """(b) a state dict without net.2.*: Missing key(s)."""
    c = case(made(Net), made(Short, 1).state_dict())
    message, out = check_strict(ckpt_bin, c)
    assert "Missing key(s) in state_dict: " in message
    assert out["missing"] == ["net.2.weight", "net.2.bias"] and out["unexpected"] == []


def test_extra_keys(ckpt_bin, case):
    """(c) a deeper net: Unexpected key(s) net.4.weight, net.4.bias."""
    c = case(made(Net), made(Deep, 1).state_dict())
    message, out = check_strict(ckpt_bin, c)
    assert "Unexpected key(s) in state_dict: " in message
    assert out["unexpected"] == ["net.4.weight", "net.4.bias"] and out["missing"] == []


def test_data_parallel_prefix(ckpt_bin, case):
    """(d) nn.DataParallel's "module." keys: every key missing and unexpected,
    until --strip-prefix module. removes it."""
    sd = nn.DataParallel(made(Net, 1)).state_dict()
    assert all(k.startswith("module.") for k in sd)
    c = case(made(Net), sd)
    message, out = check_strict(ckpt_bin, c)
    assert "Missing key(s)" in message and "Unexpected key(s)" in message
    assert len(out["missing"]) == len(out["unexpected"]) == 4
    assert "--strip-prefix module." in c.match(ckpt_bin).stderr
    stripped = torch.nn.modules.utils.consume_prefix_in_state_dict_if_present
    torch_sd = copy.copy(sd)
    stripped(torch_sd, "module.")
    _, out = check_strict(ckpt_bin, c, "--strip-prefix", "module.", torch_sd=torch_sd)
    assert out["loaded"] == 4
    # the first prefix that matches is removed, once
    _, out = check_strict(ckpt_bin, c, "--strip-prefix", "nothing.", "--strip-prefix",
                          "module.", "--strip-prefix", "module.net.", torch_sd=torch_sd)
    assert out["loaded"] == 4


def test_rename_prefix(ckpt_bin, case):
    """--rename-prefix FROM=TO, after --strip-prefix."""
    model = made(Net)
    src = made(Net, 1).state_dict()
    sd = OrderedDict(("module.backbone." + k[len("net."):], v) for k, v in src.items())
    c = case(model, sd)
    _, out = check_strict(ckpt_bin, c, "--strip-prefix", "module.", "--rename-prefix",
                          "backbone.=net.", torch_sd=src)
    assert out["loaded"] == 4
    # renaming sees the stripped keys: FROM with the stripped prefix matches nothing
    message, out = check_strict(ckpt_bin, c, "--strip-prefix", "module.", "--rename-prefix",
                                "module.backbone.=net.",
                                torch_sd={k[len("module."):]: v for k, v in sd.items()})
    assert out["unexpected"] == ["backbone.0.weight", "backbone.0.bias", "backbone.2.weight",
                                 "backbone.2.bias"]


def test_everything_at_once(ckpt_bin, case):
    """(e) missing, unexpected and a size mismatch, reported in torch's order:
    unexpected keys module by module (head.* at the root before net.4.*)."""
    c = case(made(Net), made(Mixed, 1).state_dict())
    message, out = check_strict(ckpt_bin, c)
    lines = message.split("\n")
    assert lines[1].startswith("\tMissing key(s)") and lines[2].startswith("\tUnexpected key(s)")
    assert lines[3].startswith("\tsize mismatch for net.2.weight")
    assert out["missing"] == ["net.2.bias"]
    assert out["unexpected"] == ["head.weight", "head.bias", "net.4.weight", "net.4.bias"]
    assert len(out["errors"]) == 1


def test_non_strict_size_mismatch_still_fails(ckpt_bin, case):
    """(f) strict=False still raises on a size mismatch, with only that in the message."""
    c = case(made(Net), made(Net, 1, head=5).state_dict())
    message, out = check_non_strict(ckpt_bin, c)
    assert message is not None and "Missing" not in message
    assert len(out["errors"]) == 2
    c = case(made(Net), made(Mixed, 1).state_dict())
    message, out = check_non_strict(ckpt_bin, c)
    assert message is not None and message.count("\n") == 1


def test_non_strict_lists(ckpt_bin, case):
    """(g) strict=False with missing and unexpected keys only: loads, lists as torch's."""
    for other in (Short, Deep):
        c = case(made(Net), made(other, 1).state_dict())
        message, out = check_non_strict(ckpt_bin, c)
        assert message is None and out["loaded"] == (2 if other is Short else 4)
    sd = made(Short, 1).state_dict()
    sd["extra.weight"] = torch.zeros(3)
    sd["net.9.bias"] = torch.zeros(3)
    c = case(made(Net), sd)
    message, out = check_non_strict(ckpt_bin, c)
    assert out["missing"] == ["net.2.weight", "net.2.bias"]
    assert out["unexpected"] == ["extra.weight", "net.9.bias"]
    # DataParallel keys: nothing loads, nothing fails
    c = case(made(Net), nn.DataParallel(made(Net, 1)).state_dict())
    message, out = check_non_strict(ckpt_bin, c)
    assert message is None and out["loaded"] == 0 and len(out["missing"]) == 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_other_float_dtype_converts(ckpt_bin, case, dtype):
    """(h) a bfloat16 (float16, float64) checkpoint into the float32 model loads."""
    sd = OrderedDict((k, v.to(dtype)) for k, v in made(Net, 1).state_dict().items())
    c = case(made(Net), sd)
    _, out = check_strict(ckpt_bin, c)
    assert out["loaded"] == 4 and out["converted"] == 4
    assert "converted: 4 of 4" in c.match(ckpt_bin).stdout


def test_cuda_location(ckpt_bin, case):
    """(i) tensors saved with a 'cuda:0' location tag load on a host without CUDA."""
    model = made(Net)
    sd = made(Net, 1).state_dict()
    c = case(model, sd)
    ckptgen._save_with_location(sd, c.ck, "cuda:0")
    loaded = torch.load(c.ck, map_location="cpu")
    for opts in ((), ("--map-location", "cpu")):
        _, out = check_strict(ckpt_bin, c, *opts, torch_sd=loaded)
        assert out["loaded"] == 4
    deep = made(Deep, 1).state_dict()
    ckptgen._save_with_location(deep, c.ck, "cuda:0")
    message, _ = check_strict(ckpt_bin, c, torch_sd=torch.load(c.ck, map_location="cpu"))
    assert "Unexpected key(s)" in message


def test_batchnorm_buffers(ckpt_bin, case):
    """(j) BatchNorm1d buffers: running stats and an int64 num_batches_tracked."""
    model = bn_trained()
    sd = made(BNNet, 1).state_dict()
    assert sd["net.1.num_batches_tracked"].dtype == torch.int64
    c = case(model, sd)
    _, out = check_strict(ckpt_bin, c)
    assert out["loaded"] == 9 and out["converted"] == 0
    check_non_strict(ckpt_bin, c)
    # BatchNorm keys missing, net.2.* (a ReLU there) unexpected
    sd = made(BNNet, 1).state_dict()
    for k in [k for k in sd if k.startswith("net.1.")]:
        del sd[k]
    sd["net.2.weight"] = torch.zeros(64)
    c = case(model, sd)
    message, out = check_strict(ckpt_bin, c)
    assert out["missing"] == ["net.1.weight", "net.1.bias", "net.1.running_mean",
                              "net.1.running_var", "net.1.num_batches_tracked"]
    assert out["unexpected"] == ["net.2.weight"]
    check_non_strict(ckpt_bin, c)
    # a state dict of version 2 without num_batches_tracked: missing, as torch says
    sd = made(BNNet, 1).state_dict()
    del sd["net.1.num_batches_tracked"]
    c = case(model, sd)
    message, out = check_strict(ckpt_bin, c)
    assert out["missing"] == ["net.1.num_batches_tracked"]
    # running_mean of another size
    sd = made(BNNet, 1).state_dict()
    sd["net.1.running_mean"] = torch.zeros(32)
    c = case(model, sd)
    message, out = check_strict(ckpt_bin, c)
    assert "size mismatch for net.1.running_mean" in message


def test_scalar_parameter_takes_one_element(ckpt_bin, case):
    """A 0-d parameter loads a 1-d tensor's first element (PyTorch 0.3 files)."""
    model = nn.Module()
    model.scale = nn.Parameter(torch.tensor(2.0))
    model.w = nn.Parameter(torch.ones(3))
    for first in (torch.tensor([5.0]), torch.tensor([5.0, 6.0, 7.0])):
        c = case(model, OrderedDict([("scale", first), ("w", torch.zeros(3))]))
        _, out = check_strict(ckpt_bin, c)
        assert out["loaded"] == 2
    c = case(model, OrderedDict([("scale", torch.tensor([[5.0]])), ("w", torch.zeros(3))]))
    message, _ = check_strict(ckpt_bin, c)
    assert "size mismatch for scale" in message


@pytest.mark.parametrize("value", [3, None, "text", [1, 2], OrderedDict(a=1), 1.5, (1,)],
                         ids=lambda v: type(v).__name__)
def test_value_not_a_tensor(ckpt_bin, case, value):
    """A value of the state dict that is not a tensor: torch's 'While copying' text."""
    sd = made(Net, 1).state_dict()
    sd["net.0.bias"] = value
    c = case(made(Net), sd)
    message, out = check_strict(ckpt_bin, c)
    assert message.startswith("Error(s) in loading state_dict for Net:\n\tWhile copying the "
                              'parameter named "net.0.bias"')
    check_non_strict(ckpt_bin, c)


def test_every_kind_of_problem(ckpt_bin, case):
    """Missing, unexpected, a size mismatch and a value that is not a tensor."""
    sd = made(Net, 1).state_dict()
    del sd["net.0.weight"]
    sd["net.0.bias"] = 7
    sd["net.2.bias"] = torch.zeros(3)
    sd["x"] = torch.zeros(1)
    c = case(made(Net), sd)
    message, out = check_strict(ckpt_bin, c)
    assert len(out["errors"]) == 2
    check_non_strict(ckpt_bin, c)


def test_key_text_in_lists(ckpt_bin, case):
    """Keys with quotes and non-ASCII text: in the message as torch writes them,
    in the non-strict lists as Python's repr() does."""
    sd = made(Net, 1).state_dict()
    for k in ("a'b", 'c"d', "é\n", "both'\"", "back\\slash"):
        sd[k] = torch.zeros(1)
    c = case(made(Net), sd)
    check_strict(ckpt_bin, c)
    check_non_strict(ckpt_bin, c)


def test_integer_dtypes_convert_as_torch(ckpt_bin, case):
    """Integer and bool tensors convert as torch's copy_() casts them (int64
    into a float32 parameter, int32 into an int64 buffer, uint8 into bool);
    a floating tensor into an integer buffer is refused, where torch casts."""
    class Buffers(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("position_ids", torch.arange(4))
            self.register_buffer("mask", torch.ones(4, dtype=torch.bool))
    model = Buffers()
    sd = model.state_dict()
    sd["lin.bias"] = torch.tensor([1, 2], dtype=torch.int64)
    sd["position_ids"] = torch.arange(4, dtype=torch.int32)
    sd["mask"] = torch.tensor([0, 1, 2, 0], dtype=torch.uint8)
    c = case(model, sd)
    check_strict(ckpt_bin, c)
    res = c.match(ckpt_bin, "--json")
    assert json.loads(res.stdout)["converted"] == 3, res.describe()

    sd2 = dict(model.state_dict())
    sd2["position_ids"] = torch.zeros(4)
    c2 = case(Buffers(), sd2)
    assert torch_load(c2.model, sd2, True)[0] is None
    res = c2.match(ckpt_bin)
    assert res.returncode == 1, res.describe()
    assert stdout_text(res) == (
        "Error(s) in loading state_dict for Buffers:\n\tdtype mismatch for position_ids: copying "
        "a param of dtype torch.float32 from checkpoint, the dtype in current model is "
        "torch.int64.")


def test_old_state_dict_without_num_batches_tracked(ckpt_bin, case):
    """State dicts older than PyTorch 0.4.1 (or without _metadata) lack
    num_batches_tracked: torch's BatchNorm loads them with 0."""
    model = bn_trained()
    sd = made(BNNet, 1).state_dict()
    del sd["net.1.num_batches_tracked"]
    c = case(model, dict(sd))
    assert torch_load(model, c.sd, True)[0] is None
    check_strict(ckpt_bin, c)


def test_new_state_dict_without_num_batches_tracked(ckpt_bin, case):
    """With _metadata saying BatchNorm version 2, the key is missing, as in torch."""
    model = bn_trained()
    sd = made(BNNet, 1).state_dict()
    del sd["net.1.num_batches_tracked"]
    c = case(model, sd)
    assert torch_load(model, c.sd, True)[0] is not None
    check_strict(ckpt_bin, c)
    check_non_strict(ckpt_bin, c)


def test_extra_state_listed_first(ckpt_bin, case):
    sd = made(Net, 1).state_dict()
    sd = OrderedDict([("zzz", torch.zeros(1)), ("_extra_state", torch.zeros(1))] +
                     list(sd.items()) +
                     [("net.zz", torch.zeros(1)), ("net._extra_state", torch.zeros(1))])
    c = case(made(Net), sd)
    check_strict(ckpt_bin, c)
    check_non_strict(ckpt_bin, c)


def test_default_name_and_keys(ckpt_bin, case, tmp_path):
    """--name defaults to Model; --key and the default rule find a checkpoint's
    "model" entry; --model-key and the same rule pick the reference's."""
    model = made(Net)
    c = case(model, made(Net, 1, head=5).state_dict())
    res = run(ckpt_bin, "match", c.ck, "--model", c.ref)
    assert res.returncode == 1
    assert res.stdout.startswith("Error(s) in loading state_dict for Model:\n\tsize mismatch")

    full = tmp_path / "full.pth"
    torch.save({"epoch": 3, "model": made(Net, 2).state_dict(), "optimizer": {"state": {}}}, full)
    lit = tmp_path / "lit.pth"
    torch.save({"state_dict": made(Net, 2).state_dict(), "epoch": 1}, lit)
    for ck in (full, lit):
        res = run(ckpt_bin, "match", ck, "--model", c.ref, "--name", "Net")
        assert res.returncode == 0, res.describe()
        assert res.stdout == "ok: 4 tensors load into Net (strict)\n"
    res = run(ckpt_bin, "match", full, "--key", "model", "--model", c.ref)
    assert res.returncode == 0, res.describe()
    # the whole dict as the state dict: nothing of it is a model key
    res = run(ckpt_bin, "match", full, "--key", "", "--model", c.ref, "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 1 and len(out["missing"]) == 4
    assert out["unexpected"] == ["epoch", "model", "optimizer"]
    # the reference may be a training checkpoint or a safetensors file too
    for ref_args in (("--model", full), ("--model", full, "--model-key", "model"),
                     ("--model", lit)):
        res = run(ckpt_bin, "match", c.ck, *ref_args, "--name", "Net")
        assert res.returncode == 1 and stdout_text(res) == torch_load(
            model, c.sd, True)[0], res.describe()
    st = tmp_path / "ref.safetensors"
    res = run(ckpt_bin, "convert", c.ref, st, "-q")
    assert res.returncode == 0, res.describe()
    res = run(ckpt_bin, "match", lit, "--model", st, "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["loaded"] == 4, res.describe()


def test_usage_errors(ckpt_bin, case, tmp_path):
    c = case(made(Net), made(Net, 1).state_dict())
    res = run(ckpt_bin, "match", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: ckpt match"), res.describe()
    assert "match" in run(ckpt_bin, "--help").stdout
    for args in (("match",), ("match", c.ck), ("match", c.ck, "--model"),
                 ("match", c.ck, "--model", c.ref, "--bogus"),
                 ("match", c.ck, c.ck, "--model", c.ref),
                 ("match", c.ck, "--model", c.ref, "--rename-prefix", "noequals"),
                 ("match", c.ck, "--model", c.ref, "--key")):
        res = run(ckpt_bin, *args)
        assert res.returncode == 2, res.describe()
        assert res.stdout == "" and res.stderr, res.describe()
    assert "unknown option '--bogus'" in run(ckpt_bin, "match", c.ck, "--model", c.ref,
                                             "--bogus").stderr
    missing = tmp_path / "nope.pth"
    for args in (("match", missing, "--model", c.ref), ("match", c.ck, "--model", missing),
                 ("match", c.ck, "--model", c.ref, "--key", "no.such.key"),
                 ("match", c.ck, "--model", c.ref, "--model-key", "nothing")):
        res = run(ckpt_bin, *args)
        assert res.returncode == 2, res.describe()
        assert res.stdout == "" and res.stderr.startswith("ckpt: "), res.describe()
    assert str(missing) in run(ckpt_bin, "match", missing, "--model", c.ref).stderr


# ---- regressions ---------------------------------------------------------------------


def test_nul_in_key_names_no_parameter(ckpt_bin, case):
    """A key "w\0junk" is not "w" (C strings would say it is): "w" is
    missing and the key unexpected, as torch says; ckpt writes the NUL as
    the text \x00 where torch's message holds the NUL itself."""
    model = nn.Module()
    model.w = nn.Parameter(torch.ones(3))
    c = case(model, OrderedDict([("w\x00junk", torch.zeros(3))]))
    message, _ = torch_load(model, c.sd, strict=True)
    assert message is not None and "\x00" in message
    res = c.match(ckpt_bin)
    assert res.returncode == 1, res.describe()
    lines = stdout_text(res).split("\n")
    torch_lines = message.split("\n")
    assert lines[0] == torch_lines[0] == "Error(s) in loading state_dict for Module:"
    assert lines[1] == torch_lines[1] == '\tMissing key(s) in state_dict: "w". '
    assert lines[2] == '\tUnexpected key(s) in state_dict: "w\\x00junk". '
    assert torch_lines[2] == lines[2].replace("\\x00", "\x00")
    out = json.loads(c.match(ckpt_bin, "--json").stdout)
    assert out["missing"] == ["w"] and out["unexpected"] == ["w\\x00junk"]
    res = c.match(ckpt_bin, "--non-strict")
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith("ok: 0 tensors load into Module (non-strict)\n")


def test_long_int_keys_stay_distinct(ckpt_bin, tmp_path):
    """Int keys whose text is longer than 511 characters are not cut: two
    that differ in their last digit are two unexpected keys, not one key
    that "appears twice". (torch's load_state_dict cannot take int keys.)"""
    big = 10 ** 600
    ref, ck = tmp_path / "ref.pth", tmp_path / "ck.pth"
    torch.save(OrderedDict([("w", torch.ones(2))]), ref)
    torch.save(OrderedDict([(big, torch.zeros(1)), ("w", torch.zeros(2)),
                            (big + 1, torch.zeros(1))]), ck)
    res = run(ckpt_bin, "match", ck, "--model", ref, "--non-strict")
    assert res.returncode == 0, res.describe()
    assert "appears twice" not in res.stdout + res.stderr
    assert res.stdout.split("\n")[:2] == [
        "ok: 1 tensor loads into Model (non-strict)",
        f"_IncompatibleKeys(missing_keys=[], unexpected_keys=['{big}', '{big + 1}'])"]
    out = json.loads(run(ckpt_bin, "match", ck, "--model", ref, "--non-strict", "--json").stdout)
    assert out["unexpected"] == [str(big), str(big + 1)] and out["errors"] == []
    res = run(ckpt_bin, "match", ck, "--model", ref)
    assert res.returncode == 1, res.describe()
    assert stdout_text(res) == ("Error(s) in loading state_dict for Model:\n"
                                f'\tUnexpected key(s) in state_dict: "{big}", "{big + 1}". ')


def _sanitized(ckpt_bin):
    """ASan reserves terabytes of address space: no RLIMIT_AS under it (as
    CTest says with CKPT_SANITIZED, or as the binary itself shows)."""
    if os.environ.get("CKPT_SANITIZED", "0").upper() not in ("0", "", "FALSE", "OFF"):
        return True
    with open(ckpt_bin, "rb") as f:
        return b"__asan_init" in f.read()


def test_match_reads_no_tensor_bytes(ckpt_bin, tmp_path):
    """`ckpt match` only describes and checks: a 4 GiB expanded view of one
    float (saved as its one-element storage) as both the model and the
    checkpoint needs neither 4 GiB of memory nor the time to fill it."""
    t = torch.zeros(1).expand(2 ** 30)
    ref = tmp_path / "expanded.pth"
    torch.save({"w": t}, ref)
    assert ref.stat().st_size < 4096
    limit = 1 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    argv = [ckpt_bin, "match", str(ref), "--model", str(ref)]
    sanitized = _sanitized(ckpt_bin)
    for extra in ([], ["--non-strict"], ["--json"]):
        proc = subprocess.run(argv + extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60, preexec_fn=None if sanitized else cap)
        res = Result(argv + extra, proc)
        assert not crashed(res), res.describe()
        assert res.returncode == 0, res.describe()
        assert "out of memory" not in res.stderr
        if extra == ["--json"]:
            assert json.loads(res.stdout)["loaded"] == 1
        else:
            assert res.stdout.startswith("ok: 1 tensor loads into Model"), res.describe()


def test_non_utf8_unexpected_key(ckpt_bin, tmp_path):
    """A key that is not UTF-8 (a lone surrogate, which pickle writes with
    surrogatepass) in --non-strict's list: shown as bytes, never "out of
    memory". torch shows it as the str 'x\\udcff'."""
    ref, ck = tmp_path / "ref.pth", tmp_path / "ck.pth"
    torch.save(OrderedDict([("w", torch.ones(2))]), ref)
    torch.save(OrderedDict([("w", torch.zeros(2)), ("x\udcff", torch.zeros(1))]), ck)
    res = run(ckpt_bin, "match", ck, "--model", ref, "--non-strict")
    assert res.returncode == 0, res.describe()
    assert "out of memory" not in res.stdout + res.stderr
    assert res.stdout.split("\n")[:2] == [
        "ok: 1 tensor loads into Model (non-strict)",
        "_IncompatibleKeys(missing_keys=[], unexpected_keys=[b'x\\xed\\xb3\\xbf'])"]
    js = run(ckpt_bin, "match", ck, "--model", ref, "--non-strict", "--json")
    assert js.returncode == 0, js.describe()
    out = json.loads(js.stdout)
    assert out["ok"] is True and out["unexpected"] == [None] and out["loaded"] == 1
    # strict: refused, the key in the message as its bytes
    res = run(ckpt_bin, "match", ck, "--model", ref)
    assert res.returncode == 1, res.describe()
    argv = [ckpt_bin, "match", str(ck), "--model", str(ref)]
    raw = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60).stdout
    assert raw == (b"Error(s) in loading state_dict for Model:\n"
                   b'\tUnexpected key(s) in state_dict: "x\xed\xb3\xbf". \n')


class WithExtraState(nn.Module):
    """A module with extra state, as TransformerEngine's layers have."""
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.scale = 1.0

    def get_extra_state(self):
        return {"scale": self.scale}

    def set_extra_state(self, state):
        self.scale = state["scale"]


def test_extra_state_modules(ckpt_bin, case):
    """A reference's X._extra_state entries declare extra state: present it
    loads, absent it is missing, as torch decides."""
    model = nn.Sequential(WithExtraState(), nn.ReLU(), WithExtraState())
    sd = model.state_dict()
    assert "0._extra_state" in sd
    c = case(model, sd)
    check_strict(ckpt_bin, c)
    sd2 = OrderedDict((k, v) for k, v in sd.items() if k != "2._extra_state")
    c2 = case(model, sd2)
    assert torch_load(model, sd2, True)[0] is not None
    check_strict(ckpt_bin, c2)
    check_non_strict(ckpt_bin, c2)


def test_modules_without_parameters(ckpt_bin, case):
    """The reference's _metadata declares the modules without parameters (a
    ReLU): a key naming one is not unexpected, and keys under it are
    reported in torch's order."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    sd = OrderedDict(model.state_dict())
    sd["1.x"] = torch.zeros(1)
    sd["0.y"] = torch.zeros(1)
    check_strict(ckpt_bin, case(model, sd))
    sd = OrderedDict(model.state_dict())
    sd["1"] = torch.zeros(1)
    check_strict(ckpt_bin, case(model, sd))


def test_default_rule_skips_entries_that_are_not_dicts(ckpt_bin, tmp_path):
    """{"state_dict": None, "model": sd}: the library and the CLI both take
    "model", the first of the two entries that is a dict."""
    sd = made(Net, 1).state_dict()
    f = tmp_path / "ck.pth"
    torch.save({"state_dict": None, "model": sd, "epoch": 3}, f)
    res = run(ckpt_bin, "match", f, "--model", f, "--name", "Net")
    assert res.returncode == 0, res.describe()
    assert res.stdout.startswith("ok: 4 tensors load into Net (strict)\n"), res.describe()


def test_int_keys_never_name_a_parameter(ckpt_bin, tmp_path):
    """A key 0 is not the name "0": it is unexpected, and "0" stays missing."""
    ref = tmp_path / "ref.pth"
    ck = tmp_path / "ck.pth"
    torch.save({"0": torch.zeros(2)}, ref)
    torch.save({0: torch.zeros(2)}, ck)
    res = run(ckpt_bin, "match", ck, "--model", ref, "--json")
    assert res.returncode == 1, res.describe()
    out = json.loads(res.stdout)
    assert out["missing"] == ["0"] and out["unexpected"] == ["0"], out
