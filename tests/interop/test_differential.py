"""Differential tests: what torch itself does with a file against what ckpt says of it.

Every variant of diffgen.py (attack families and their benign controls, built
byte by byte) is loaded in a child process by diffrun.py with the real
torch.load(weights_only=False), and by plain pickle readers, each in its own
empty directory where a payload writes the file CANARY. Nothing hostile is
ever unpickled in this process. Then, for every variant:

1. A canary written (by torch.load, or by pickle.load / pickle.loads of what
   the file holds) => `ckpt scan FILE` exits 1, says "unsafe" and names at
   least one finding.
2. `ckpt inspect --json FILE` exits 0 => it shows what torch loaded: the same
   tensor names, dtypes, shapes, values (through ckpt_dump) and the same
   value tree. When torch failed and ckpt read the file, that is a difference
   too, unless the failure is one of TORCH_LIMITS below.
3. The harness holds: a variant that torch 1.13 is known to run (runs=True)
   wrote the canary, a benign control loaded what it was built to hold, and
   no benign variant wrote a canary. A suite whose payloads stopped running
   would pass while proving nothing.

Readers: torch 1.13 (CKPT_TORCH_PYTHON, by default this interpreter) always;
a torch 2.x interpreter when CKPT_TORCH2_PYTHON names a command that runs one
(split like a shell word list, e.g. "schroot -c trixie -- python3"; it must
see this machine's temporary directory). Check 3 is about torch 1.13 and is
made for 1.x only.
"""
import hashlib
import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

import diffgen

HERE = pathlib.Path(__file__).resolve().parent
RUNNER = HERE / "diffrun.py"
VARIANTS = diffgen.variants()
BY_NAME = {v.name: v for v in VARIANTS}

# When torch.load fails on a file that ckpt reads, ckpt shows content torch
# never returns; that is a difference, except where torch cannot read the
# format at all. Keyed by the format `ckpt inspect` reports.
TORCH_LIMITS = {
    "safetensors": "torch.load has no safetensors reader (1.13 and 2.x alike): it reads the "
                   "8-byte header length and the JSON as a pickle and fails",
    "pickle": "torch.load wants the legacy format's magic number as the first pickle "
              "('Invalid magic number; corrupt file?'): a plain pickle is compared with what "
              "pickle.load returns for its first pickle instead",
}

CRASHES_BEFORE_GIVING_UP = 5


def interpreters():
    """name -> argv prefix of each torch interpreter to run."""
    out = {"torch1": shlex.split(os.environ.get("CKPT_TORCH_PYTHON", "")) or [sys.executable]}
    t2 = os.environ.get("CKPT_TORCH2_PYTHON")
    if t2:
        out["torch2"] = shlex.split(t2)
    return out


def run_readers(argv, jobs, workdir):
    """Runs diffrun.py over jobs; a job that kills the interpreter is recorded
    as crashed and a new interpreter goes on with the rest."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "results.jsonl"
    results, remaining, stalls = {}, list(jobs), 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    while remaining:
        jobs_file = workdir / "jobs.json"
        jobs_file.write_text(json.dumps(remaining))
        try:
            proc = subprocess.run([*argv, str(RUNNER), str(jobs_file), str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                  cwd=workdir, timeout=900)
            rc, tail = proc.returncode, proc.stderr.decode("utf-8", "replace")[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", (e.stderr or b"").decode("utf-8", "replace")[-3000:]
        if out.exists():
            for line in out.read_text(encoding="utf-8").splitlines():
                res = json.loads(line)
                results[res["name"]] = res
        before = len(remaining)
        remaining = [j for j in remaining if j["name"] not in results]
        if not remaining:
            break
        stalls = stalls + 1 if len(remaining) == before else 0
        if stalls >= CRASHES_BEFORE_GIVING_UP or rc == 0:
            for j in remaining:
                results[j["name"]] = {"name": j["name"],
                                      "harness_error": f"no result (exit {rc}): {tail}"}
            break
        first = remaining.pop(0)
        results[first["name"]] = {"name": first["name"], "crashed": rc, "stderr": tail}
    return results


@pytest.fixture(scope="module")
def variant_files(gen_dir):
    """name -> (path, its own directory)."""
    root = gen_dir / "differential"
    root.mkdir()
    out = {}
    for i, v in enumerate(VARIANTS):
        d = root / f"{i:03d}"
        d.mkdir()
        p = d / "file"
        p.write_bytes(v.data)
        out[v.name] = (p, d)
    return out


@pytest.fixture(scope="module")
def loaded(variant_files, gen_dir):
    """interpreter name -> {variant name -> diffrun.py's result}."""
    res = {}
    for name, argv in interpreters().items():
        jobs = [{"name": n, "path": str(p), "dir": str(d / name)}
                for n, (p, d) in variant_files.items()]
        res[name] = run_readers(argv, jobs, gen_dir / f"differential-{name}")
    return res


# ---- what ckpt says ----------------------------------------------------------------

SANITIZER_MARKS = ("Sanitizer", "runtime error:")


def run(argv, timeout=120):
    try:
        proc = subprocess.run([str(a) for a in argv], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", "", f"no exit after {timeout} s"
    return (proc.returncode, proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"))


def describe(argv, rc, out, err):
    return (f"$ {' '.join(map(str, argv))}\nexit {rc}\nstdout: {out[-1500:]}\n"
            f"stderr: {err[-1500:]}")


def ckpt_view(ckpt_bin, dump_bin, path, scratch):
    """What ckpt says: the scan's exit and report, inspect's JSON (None when it
    fails) and every tensor's values through ckpt_dump. A crash, a sanitizer
    report or a hang goes to view["broken"]."""
    view = {"broken": [], "scan": None, "inspect": None, "dump": None}

    def call(argv, ok_codes):
        rc, out, err = run(argv)
        text = describe(argv, rc, out, err)
        if rc not in ok_codes or any(m in err for m in SANITIZER_MARKS):
            view["broken"].append(text)
        return rc, out, text

    rc, out, view["scan_text"] = call([ckpt_bin, "scan", "--json", path], (0, 1, 2))
    view["scan_rc"] = rc
    try:
        view["scan"] = json.loads(out)["files"][0]
    except (ValueError, KeyError, IndexError):
        pass
    rc, out, view["inspect_text"] = call([ckpt_bin, "inspect", "--json", path], (0, 2))
    if rc == 0:
        view["inspect"] = json.loads(out)
        scratch.mkdir(exist_ok=True)
        rc, out, text = call([dump_bin, path, scratch], (0, 2))
        if rc == 0:
            index = json.loads((scratch / "index.json").read_text(encoding="utf-8"))
            view["dump"] = [[e["name"], e["dtype"], e["shape"],
                             hashlib.sha256((scratch / e["file"]).read_bytes()).hexdigest()]
                            for e in index]
        else:
            view["dump_error"] = text
    return view


def ckpt_tensors(view):
    """[name, dtype, shape, sha256] of every tensor ckpt shows."""
    ins = view["inspect"]
    shown = [[t["name"], t["dtype"], t["shape"]] for t in ins["tensors"]]
    dumped = view["dump"]
    if dumped is None:
        return None
    assert [d[:3] for d in dumped] == shown, \
        f"ckpt_dump and ckpt inspect list different tensors: {dumped} / {shown}"
    return dumped


def canon(x):
    return json.dumps(x, sort_keys=False)


def compare(label, ref, view):
    """Differences between a reader's summary (diffrun.summary) and ckpt's view."""
    problems = []
    mine = ckpt_tensors(view)
    if mine is None:
        problems.append(f"ckpt inspect reads it but ckpt_dump fails: {view.get('dump_error')}")
    elif ref.get("tensors") is not None and mine != ref["tensors"]:
        problems.append(f"tensors differ from {label}'s:\n  {label}: {ref['tensors']}\n"
                        f"  ckpt:  {mine}")
    if ref.get("tree") is not None and canon(view["inspect"].get("tree")) != canon(ref["tree"]):
        problems.append(f"value tree differs from {label}'s:\n"
                        f"  {label}: {canon(ref['tree'])[:600]}\n"
                        f"  ckpt:  {canon(view['inspect'].get('tree'))[:600]}")
    return problems


def differences(v, res, view):
    """The differential rules for one reader's result (see the module's doc)."""
    problems = [f"ckpt crashed, hung or a sanitizer reported:\n{b}" for b in view.get("broken", ())]
    if "crashed" in res or "harness_error" in res:
        return problems + [f"the reader did not report: {res}"]
    t, p = res["torch"], res["pickle"]
    readers = [r for r, ran in (("torch.load", t["canary"]), ("pickle", p["canary"])) if ran]
    if readers:
        scan = view["scan"] or {}
        if view["scan_rc"] != 1 or scan.get("verdict") != "unsafe" or not scan.get("findings"):
            problems.append(f"{' and '.join(readers)} ran the payload but the scan does not "
                            f"say unsafe with a finding:\n{view['scan_text']}")
    ins = view["inspect"]
    if ins is None:
        return problems
    fmt = ins.get("format")
    if t["ok"]:
        problems += compare("torch", t, view)
    elif fmt == "pickle":
        if p["objects"]:
            problems += compare("pickle.load", p["objects"][0], view)
        else:
            problems.append(f"ckpt reads a plain pickle that pickle.load refuses ({p['error']})")
    elif fmt not in TORCH_LIMITS:
        problems.append(f"torch.load fails ({t['error']}) but ckpt inspect reads it as {fmt}:"
                        f" ckpt shows content torch never loads")
    return problems


def harness_problems(v, res):
    """What torch 1.x must do with the variant, by construction."""
    if "crashed" in res or "harness_error" in res:
        return [f"the reader did not report: {res}"]
    if not res["torch_version"].startswith("1."):
        return []
    problems = []
    t, p = res["torch"], res["pickle"]
    if not v.payload and (t["canary"] or p["canary"]):
        problems.append("a variant built without a payload wrote the canary")
    if v.runs is not None and t["canary"] != v.runs:
        problems.append(f"torch.load {'did not run' if v.runs else 'ran'} the payload, the "
                        f"variant is built so that it {'does' if v.runs else 'does not'} "
                        f"(torch: {json.dumps(t)[:800]})")
    if v.pickle_runs is not None and p["canary"] != v.pickle_runs:
        problems.append(f"pickle.load {'did not run' if v.pickle_runs else 'ran'} the payload "
                        f"(pickle: {json.dumps(p)[:800]})")
    if v.loads == "error" and t["ok"]:
        problems.append(f"torch.load was meant to fail, it loaded {json.dumps(t)[:800]}")
    elif isinstance(v.loads, list):
        got = t.get("tensors") if t["ok"] else None
        want = v.loads
        same = got is not None and len(got) == len(want) and all(
            g[:3] == w[:3] and (w[3] is None or g[3] == w[3]) for g, w in zip(got, want))
        if not same:
            problems.append(f"torch.load was meant to load {want}, it gave "
                            f"{got if t['ok'] else t['error']}")
    return problems


@pytest.fixture(scope="module")
def views(variant_files, ckpt_bin, ckpt_dump_bin, gen_dir):
    scratch = gen_dir / "differential-dumps"
    scratch.mkdir()
    return {v.name: ckpt_view(ckpt_bin, ckpt_dump_bin, variant_files[v.name][0],
                              scratch / f"{i:03d}")
            for i, v in enumerate(VARIANTS)}


# ---- the tests ---------------------------------------------------------------------

@pytest.mark.parametrize("name", [v.name for v in VARIANTS])
def test_variant(name, loaded, views):
    v = BY_NAME[name]
    problems = []
    for interp, results in loaded.items():
        res = results[name]
        problems += [f"[{interp} harness] {p}" for p in harness_problems(v, res)]
        problems += [f"[{interp}] {p}" for p in differences(v, res, views[name])]
    assert not problems, f"{name}: {v.note}\n" + "\n".join(problems)


def test_harness_runs_payloads(loaded):
    """The suite can fail: the plainest payload writes its canary under torch
    and under pickle.load, and a fair share of the attack variants run theirs."""
    res = loaded["torch1"]
    plain = res["plain/payload"]
    assert plain["torch"]["canary"] and plain["pickle"]["canary"], plain
    ran = [n for n, r in res.items() if r.get("torch", {}).get("canary")]
    assert len(ran) >= 60, ran
    benign = [n for n, r in res.items() if not BY_NAME[n].payload and
              (r["torch"]["canary"] or r["pickle"]["canary"])]
    assert not benign, benign


def test_harness_sees_what_torch_loads(loaded):
    """A benign control loads what it was built to hold, and a different file
    gives a different summary: the comparison can see a difference."""
    res = loaded["torch1"]
    ctl = res["zip/control"]["torch"]
    assert ctl["ok"] and ctl["tensors"] == diffgen.expect(diffgen.REAL), ctl
    other = res["zip/storage_is_pickle"]["torch"]
    assert other["ok"] and other["tensors"] != ctl["tensors"], other


def test_torch2_interpreter():
    """The same differential against torch 2.x, where such an interpreter exists."""
    if "torch2" not in interpreters():
        pytest.skip("CKPT_TORCH2_PYTHON is not set: no torch 2.x interpreter, the differential "
                    "ran against torch 1.13 only")
    argv = interpreters()["torch2"]
    rc, out, err = run([*argv, "-c", "import torch; print(torch.__version__)"], timeout=300)
    assert rc == 0 and out.startswith("2."), describe(argv, rc, out, err)


def test_harness_survives_a_crash(tmp_path):
    """A file that kills the interpreter is reported as crashed; the others
    still get their results from a new interpreter."""
    fake = tmp_path / "fake_runner.py"
    fake.write_text(
        "import json, os, sys\n"
        "jobs = json.load(open(sys.argv[2]))\n"
        "with open(sys.argv[3], 'a') as out:\n"
        "    for j in jobs:\n"
        "        if j['name'].startswith('boom'):\n"
        "            os._exit(7)\n"
        "        out.write(json.dumps({'name': j['name'], 'torch_version': 'x'}) + '\\n')\n"
        "        out.flush()\n")
    names = ["a", "boom1", "b", "boom2", "c"]
    res = run_readers([sys.executable, str(fake)], [{"name": n} for n in names],
                      tmp_path / "run")
    assert set(res) == set(names)
    assert [n for n in names if res[n].get("crashed") == 7] == ["boom1", "boom2"]
    assert all("crashed" not in res[n] and "harness_error" not in res[n] for n in "abc")
    # an interpreter that never reports gives every job an error, not a pass
    dead = run_readers([sys.executable, "-c", "import sys; sys.exit(3)"],
                       [{"name": n} for n in names], tmp_path / "dead")
    assert all("crashed" in r or "harness_error" in r for r in dead.values())
    assert all(differences(BY_NAME["plain/payload"], r, {}) for r in dead.values())
