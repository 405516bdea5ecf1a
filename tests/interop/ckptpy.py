"""Running the Python package (python/ckpt) of this source tree in a child process.

The package is imported from SOURCE_DIR/python and binds to the libckpt.so of the
build that CKPT_BIN belongs to (build/ by default): CKPT_LIBRARY names it and
LD_LIBRARY_PATH holds its directory, so both ways the package looks for the
library find this build's. A sanitized build's library cannot be loaded into an
uninstrumented interpreter, so there the tests that need the package skip.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("CKPT_SOURCE_DIR", HERE.parent.parent)).resolve()
PYTHON = "/usr/bin/python3"


def build_dir():
    value = os.environ.get("CKPT_BIN")
    return pathlib.Path(value).resolve().parent if value else SOURCE_DIR / "build"


def library():
    return build_dir() / "libckpt.so"


def env(extra=None):
    """The environment of a child that imports this tree's package."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(
        [str(SOURCE_DIR / "python")] + ([e["PYTHONPATH"]] if e.get("PYTHONPATH") else []))
    e["CKPT_LIBRARY"] = str(library())
    e["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(build_dir())] + ([e["LD_LIBRARY_PATH"]] if e.get("LD_LIBRARY_PATH") else []))
    e["PYTHONDONTWRITEBYTECODE"] = "1"
    if extra:
        e.update(extra)
    return e


def require():
    """Skips the calling test when the package cannot run here."""
    if os.environ.get("CKPT_SANITIZED", "").upper() in ("1", "ON", "TRUE", "YES"):
        pytest.skip("the Python package is not loaded into the interpreter from a "
                    "sanitized build")
    if not (SOURCE_DIR / "python" / "ckpt").is_dir():
        pytest.skip(f"no Python package at {SOURCE_DIR / 'python' / 'ckpt'}")
    if not library().exists():
        pytest.fail(f"{library()} is missing (build the ckpt_shared target)")
    proc = subprocess.run([PYTHON, "-c", "import ckpt"], env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, f"import ckpt failed:\n{proc.stderr}"


def run(args, timeout=600, check=True, **kw):
    """Runs /usr/bin/python3 ARGS with the package importable; returns the
    CompletedProcess (text)."""
    proc = subprocess.run([PYTHON, *map(str, args)], env=env(kw.pop("extra_env", None)),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, **kw)
    if check:
        assert proc.returncode == 0, \
            f"python3 {' '.join(map(str, args))}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc


def run_code(code, *args, timeout=600):
    """Runs a script (a string) with the package importable; returns the JSON
    object its last line of stdout prints."""
    proc = run(["-c", code, *args], timeout=timeout)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr
    return json.loads(lines[-1])


if __name__ == "__main__":
    # `python3 tests/interop/ckptpy.py ARGS`: run python3 ARGS with the package
    os.execve(PYTHON, [PYTHON, *sys.argv[1:]], env())
