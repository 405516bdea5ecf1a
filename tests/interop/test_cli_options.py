"""The option syntax every ckpt command shares: `--opt value` and `--opt=value`,
options before or after the files, `--` before a name starting with '-',
unknown options and missing values refused alike (exit 2, one line naming the
option, then the command's usage)."""
import shutil
import subprocess

import pytest
import torch

from ckpttool import Result, crashed
from test_cli_manage import make_dir, standard_entries

COMMANDS = ("inspect", "verify", "scan", "convert", "diff", "match", "ls", "prune")


@pytest.fixture(scope="module")
def files(gen_dir):
    d = gen_dir / "cli_options"
    d.mkdir()
    g = torch.Generator().manual_seed(14)
    sd = {"layer.weight": torch.randn(4, 3, generator=g), "layer.bias": torch.randn(4, generator=g)}
    out = {"dir": d}
    out["a"] = d / "a.pt"
    torch.save(sd, out["a"])
    out["b"] = d / "b.pt"
    torch.save({k: v + 0.05 for k, v in sd.items()}, out["b"])
    out["ckpt"] = d / "ckpt.pt"
    torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, out["ckpt"])
    out["run"] = make_dir(d / "run", standard_entries())
    return out


def positional(cmd, f):
    """Arguments that make cmd do its work, without options."""
    return {"inspect": [f["a"]], "verify": [f["a"]], "scan": [f["a"]],
            "convert": [f["a"], f["dir"] / "o.safetensors"], "diff": [f["a"], f["b"]],
            "match": [f["a"], "--model", f["a"]], "ls": [f["run"]],
            "prune": [f["run"], "--keep", "5", "--dry-run"]}[cmd]


def first_line(text):
    return text.strip("\n").split("\n")[0]


def assert_refused(res, cmd, *words):
    assert res.returncode == 2, res.describe()
    assert res.stdout == "", res.describe()
    line = first_line(res.stderr)
    assert line.startswith(f"ckpt: {cmd}: "), res.describe()
    for w in words:
        assert w in line, res.describe()
    assert f"usage: ckpt {cmd}" in res.stderr, res.describe()


# ---- --opt value and --opt=value ------------------------------------------------

# (command, option, value, extra arguments): every option that takes a value
VALUE_OPTIONS = [
    ("convert", "--to", "safetensors", []),
    ("convert", "--key", "model", ["ckpt"]),
    ("convert", "--strip-prefix", "module.", ["ckpt", "--key", "model"]),
    ("convert", "--add-prefix", "net.", []),
    ("convert", "--rename", "layer.=block.", []),
    ("convert", "--include", "*.weight", []),
    ("convert", "--exclude", "*.bias", []),
    ("convert", "--dtype", "bfloat16", []),
    ("convert", "--map-location", "cpu", []),
    ("convert", "--max-output-ratio", "2", []),
    ("diff", "--atol", "0.1", []),
    ("diff", "--rtol", "0.5", []),
    ("diff", "--max-output-ratio", "2", []),
    ("scan", "--allow", "collections.OrderedDict", []),
    ("match", "--model-key", "model", ["model=ckpt"]),
    ("match", "--name", "Net", []),
    ("match", "--key", "model", ["ckpt"]),
    ("match", "--strip-prefix", "module.", ["ckpt", "--key", "model"]),
    ("match", "--rename-prefix", "module.=", ["ckpt", "--key", "model"]),
    ("match", "--map-location", "cpu", []),
    ("match", "--model", None, []),
    ("prune", "--keep", "1", []),
    ("prune", "--keep-best", "1", []),
]


def value_run(tool, f, cmd, opt, value, extra, spelling, tmp):
    """Runs cmd with opt given as spelling ("space" or "equals"), its output file
    (convert) in tmp."""
    if cmd == "convert":
        src = f["ckpt"] if "ckpt" in extra else f["a"]
        out = tmp / ("o.weights" if opt == "--to" else "o.safetensors")
        args = [src, out] + [x for x in extra if x != "ckpt"]
    elif cmd == "diff":
        args = [f["a"], f["b"]]
    elif cmd == "scan":
        args = [f["a"]]
    elif cmd == "match":
        ck = f["ckpt"] if "ckpt" in extra else f["a"]
        ref = f["ckpt"] if "model=ckpt" in extra else f["a"]
        args = [ck] + [x for x in extra if x not in ("ckpt", "model=ckpt")]
        if opt == "--model":
            value = ref
        else:
            args += ["--model", ref]
    else:  # prune, read-only
        args = [f["run"], "--dry-run"] + (["--keep", "5"] if opt != "--keep" else [])
    given = [opt, str(value)] if spelling == "space" else [f"{opt}={value}"]
    res = tool.run(cmd, *given, *args)  # before the files
    res_after = tool.run(cmd, *args, *given)  # after them
    assert (res.returncode, res.stdout) == (res_after.returncode, res_after.stdout), \
        res.describe() + "\n" + res_after.describe()
    data = out.read_bytes() if cmd == "convert" and res.returncode == 0 else None
    return res, data


@pytest.mark.parametrize("cmd,opt,value,extra", VALUE_OPTIONS,
                         ids=[f"{c}{o}" for c, o, _, _ in VALUE_OPTIONS])
def test_value_spellings(tool, files, tmp_path, cmd, opt, value, extra):
    (tmp_path / "s").mkdir()
    (tmp_path / "e").mkdir()
    res_s, data_s = value_run(tool, files, cmd, opt, value, extra, "space", tmp_path / "s")
    res_e, data_e = value_run(tool, files, cmd, opt, value, extra, "equals", tmp_path / "e")
    assert res_s.returncode in (0, 1), res_s.describe()
    assert "unknown option" not in res_s.stderr and "unknown option" not in res_e.stderr
    assert res_s.returncode == res_e.returncode, res_s.describe() + res_e.describe()
    assert res_s.stdout.replace(str(tmp_path / "s"), "") == \
        res_e.stdout.replace(str(tmp_path / "e"), ""), res_s.describe() + res_e.describe()
    assert data_s == data_e


def test_values_take_effect(tool, files, tmp_path):
    """The = spelling is not read as another option's value or a file name."""
    a, b = files["a"], files["b"]
    assert tool.run("diff", a, b).returncode == 1
    assert tool.run("diff", a, b, "--atol=0.1").returncode == 0
    assert tool.run("diff", "--atol=0.01", a, b).returncode == 1
    out = tmp_path / "o.weights"
    res = tool.run("convert", a, out, "--to=safetensors")
    assert res.returncode == 0, res.describe()
    assert out.read_bytes()[8:9] == b"{"
    res = tool.run("convert", "--to=pth", a, out)
    assert res.returncode == 0 and out.read_bytes()[:4] == b"PK\x03\x04", res.describe()
    res = tool.run("match", files["ckpt"], "--key=model", f"--model={a}", "--json")
    assert res.returncode == 1, res.describe()
    res = tool.run("match", files["ckpt"], "--key=model", f"--model={a}",
                   "--strip-prefix=module.")
    assert res.returncode == 0, res.describe()
    res = tool.run("prune", files["run"], "--keep=1", "--keep-best=1", "--dry-run")
    assert res.returncode == 0 and res.stdout.count("would remove") == 1, res.describe()
    # an empty value is a value
    res = tool.run("convert", a, tmp_path / "p.safetensors", "--add-prefix=")
    assert res.returncode == 0, res.describe()


# ---- -- ------------------------------------------------------------------------------


def run_in(tool, cwd, *args):
    proc = subprocess.run([tool.ckpt_bin, *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=120)
    res = Result([tool.ckpt_bin, *args], proc)
    assert not crashed(res), res.describe()
    return res


def test_double_dash(tool, files, tmp_path):
    shutil.copy(files["a"], tmp_path / "-a.pt")
    shutil.copy(files["b"], tmp_path / "-b.pt")
    shutil.copytree(files["run"], tmp_path / "-run")
    cases = {
        "inspect": (["--json", "--", "-a.pt"], 0),
        "verify": (["-q", "--", "-a.pt", "-b.pt"], 0),
        "scan": (["--json", "--", "-a.pt"], 0),
        "convert": (["--to", "safetensors", "--", "-a.pt", "-out"], 0),
        "diff": (["--atol", "0.1", "--", "-a.pt", "-b.pt"], 0),
        "match": (["--model", "-a.pt", "--", "-b.pt"], 0),
        "ls": (["--json", "--", "-run"], 0),
        "prune": (["--keep", "5", "--dry-run", "--", "-run"], 0),
    }
    for cmd, (args, rc) in cases.items():
        res = run_in(tool, tmp_path, cmd, *args)
        assert res.returncode == rc, res.describe()
        # without --, the name is an option, and an unknown one
        no_dash = [x for x in args if x != "--"]
        res = run_in(tool, tmp_path, cmd, *no_dash)
        assert_refused(res, cmd, "unknown option")
    assert (tmp_path / "-out").read_bytes()[8:9] == b"{"
    # after --, an option's spelling is a file name
    res = run_in(tool, tmp_path, "verify", "--", "-a.pt", "--json")
    assert res.returncode == 2 and "--json" in res.stderr and "unknown" not in res.stderr
    res = run_in(tool, tmp_path, "inspect", "--", "--help")
    assert res.returncode == 2 and res.stdout == "", res.describe()


# ---- unknown options, missing values --------------------------------------------


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unknown_options(tool, files, cmd):
    args = positional(cmd, files)
    for bad, named in (("--bogus", "'--bogus'"), ("--bogus=x", "'--bogus'"), ("-Z", "'-Z'"),
                       ("--jso", "'--jso'"), ("--JSON", "'--JSON'")):
        for argv in ([bad, *args], [*args, bad], [*args, bad, "x"]):
            res = tool.run(cmd, *argv)
            assert_refused(res, cmd, "unknown option", named)
    # verify once read files past an unknown option and checked nothing else
    res = tool.run(cmd, "--bogus", "x")
    assert_refused(res, cmd, "unknown option", "'--bogus'")


@pytest.mark.parametrize("cmd,opt,value,extra", VALUE_OPTIONS,
                         ids=[f"{c}{o}" for c, o, _, _ in VALUE_OPTIONS])
def test_missing_value(tool, files, cmd, opt, value, extra):
    args = [x for x in positional(cmd, files) if x not in ("--keep", "5")] \
        if cmd == "prune" else positional(cmd, files)
    res = tool.run(cmd, *args, opt)
    assert_refused(res, cmd, opt, "needs a value")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_flag_takes_no_value(tool, files, cmd):
    flag = {"verify": "--quiet", "prune": "--dry-run", "convert": "--quiet"}.get(cmd, "--json")
    if cmd == "inspect":
        flag = "--full"
    res = tool.run(cmd, *positional(cmd, files), f"{flag}=1")
    assert_refused(res, cmd, f"'{flag}'", "takes no value")


def test_bad_values(tool, files, tmp_path):
    a = files["a"]
    cases = [
        ("diff", [a, a, "--atol=-1"], "--atol"),
        ("diff", [a, a, "--rtol", "x"], "--rtol"),
        ("diff", [a, a, "--max-output-ratio=0"], "--max-output-ratio"),
        ("convert", [a, tmp_path / "o.pth", "--to=zip"], "--to"),
        ("convert", [a, tmp_path / "o.pth", "--dtype=int8"], "--dtype"),
        ("convert", [a, tmp_path / "o.pth", "--rename=nope"], "--rename"),
        ("convert", [a, tmp_path / "o.pth", "--max-output-ratio", "x"], "--max-output-ratio"),
        ("scan", [a, "--allow=nodot"], "--allow"),
        ("match", [a, "--model", a, "--rename-prefix=x"], "--rename-prefix"),
        ("match", [a, "--model", a, "--name="], "--name"),
        ("prune", [files["run"], "--keep=-1"], "--keep"),
        ("prune", [files["run"], "--keep", "1", "--keep-best=1.5"], "--keep-best"),
    ]
    for cmd, args, opt in cases:
        res = tool.run(cmd, *args)
        assert_refused(res, cmd, opt)
    assert not (tmp_path / "o.pth").exists()


# ---- what the demo and the docs run keeps working ---------------------------------------


def test_documented_invocations(tool, files, tmp_path):
    """The forms scripts/demo.sh and the README use, options first or last, -q included."""
    f = files
    d = tmp_path
    ok = [
        ("ls", f["run"]), ("inspect", f["a"]), ("inspect", "--json", f["a"]),
        ("verify", f["a"], f["b"]), ("verify", "-q", f["a"]), ("verify", f["a"], "--quiet"),
        ("scan", f["a"], f["b"]),
        ("convert", f["a"], d / "a.safetensors"),
        ("convert", f["a"], d / "a.bf16.safetensors", "--dtype", "bfloat16"),
        ("diff", f["a"], d / "a.safetensors"),
        ("convert", f["ckpt"], d / "w.pth", "--key", "model"),
        ("convert", f["a"], d / "ddp.pth", "--add-prefix", "module.", "-q"),
        ("match", d / "ddp.pth", "--model", f["a"], "--name", "Net", "--strip-prefix",
         "module."),
        ("match", d / "a.bf16.safetensors", "--model", f["a"], "--name", "Net"),
        ("prune", f["run"], "--keep", "1", "--keep-best", "1", "--dry-run"),
        ("prune", "--dry-run", "--keep", "1", f["run"], "-q"),
    ]
    for args in ok:
        res = tool.run(*args)
        assert res.returncode == 0, res.describe()
    for args in ([f["a"], d / "a.bf16.safetensors"],
                 ["--atol", "0.01", f["a"], d / "a.bf16.safetensors", "--json"]):
        res = tool.run("diff", *args)  # the dtypes differ
        assert res.returncode == 1, res.describe()
    res = tool.run("match", d / "ddp.pth", "--model", f["a"], "--name", "Net")
    assert res.returncode == 1 and "Error(s) in loading state_dict for Net" in res.stdout
    for cmd in COMMANDS:
        for flag in ("--help", "-h"):
            res = tool.run(cmd, flag)
            assert res.returncode == 0 and res.stdout.startswith(f"usage: ckpt {cmd}"), \
                res.describe()
