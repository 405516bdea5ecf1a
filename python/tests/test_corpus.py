"""The third-party corpus: benign files as torch reads them, malicious ones refused."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ckpt
from helpers import assert_same

from conftest import CORPUS


def _files(sub):
    root = CORPUS / sub
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(CORPUS)) for p in root.rglob("*") if p.is_file())


BENIGN = _files("benign")
MALICIOUS = _files("malicious")


@pytest.mark.parametrize("rel", BENIGN or ["(no corpus)"])
def test_benign_same_as_torch(corpus, rel):
    path = corpus / rel
    fmt = ckpt.scan(path).format
    if fmt not in ("torch-zip", "torch-legacy", "pickle"):
        pytest.skip(f"{fmt}: torch.load(weights_only=True) does not read it")
    try:
        ref = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch 1.13's reader is narrower than ckpt's
        pytest.skip(f"torch.load(weights_only=True) refuses it: {type(e).__name__}")
    ours = ckpt.load(path, map_location="cpu")
    assert_same(ours, ref)


# Loads every malicious file in a child process with an audit hook that
# records any attempt to run a command, spawn, exec or open a socket, in a
# scratch directory that must stay empty (no canary file).
CHILD = textwrap.dedent("""
    import json, os, sys
    import ckpt
    events = []
    BAD = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
           "os.fork", "socket.connect", "webbrowser.open", "os.remove", "shutil.rmtree")
    def hook(ev, args):
        if ev.startswith(BAD) or (ev == "open" and len(args) > 1 and args[1] and
                                  any(c in str(args[1]) for c in "wax+")):
            events.append(ev + " " + repr(args)[:200])
    paths = json.loads(sys.stdin.read())
    sys.addaudithook(hook)
    out = {}
    for p in paths:
        for fw in ("pt", "np"):
            try:
                ckpt.load(p, framework=fw)
                r = "loaded"
            except ckpt.Error as e:
                r = type(e).__name__
            except BaseException as e:
                r = "OTHER " + type(e).__name__ + ": " + str(e)[:200]
            out[p + " " + fw] = r
    print(json.dumps({"results": out, "events": events}))
""")

# zips of text files, no pickle: nothing to refuse but "not a checkpoint"
MAY_OPEN = {"malicious/djl/linux-created-offender-root.zip",
            "malicious/djl/linux-created-offender-traversal-elements.zip",
            "malicious/djl/windows-created-offender-root.zip",
            "malicious/djl/windows-created-offender-traversal-elements.zip"}


def test_malicious_all_refused_nothing_runs(corpus, tmp_path):
    paths = [str(corpus / r) for r in MALICIOUS]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.__file__)))
    env = dict(os.environ, HOME=str(scratch), TMPDIR=str(scratch),
               PYTHONPATH=os.pathsep.join([pkg_parent] + sys.path))
    res = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(paths), cwd=scratch,
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.splitlines()[-1])
    assert report["events"] == []
    assert list(scratch.iterdir()) == []
    bad = {}
    for key, r in report["results"].items():
        rel = os.path.relpath(key.rsplit(" ", 1)[0], corpus)
        if r == "loaded" and rel in MAY_OPEN:
            continue
        if r == "loaded" or r.startswith("OTHER"):
            bad[key] = r
    assert bad == {}
    unsafe = [k for k, r in report["results"].items() if r == "UnsafeError"]
    assert len(unsafe) > len(MALICIOUS) // 2  # most are refused for the global they name


@pytest.mark.parametrize("rel", MALICIOUS or ["(no corpus)"])
def test_malicious_scan_is_not_safe(corpus, rel):
    if rel in MAY_OPEN:
        pytest.skip("a zip of text files: not a checkpoint")
    r = ckpt.scan(corpus / rel)
    assert r.verdict != "safe", r.as_dict()
