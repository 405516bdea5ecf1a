"""Shared fixtures of the interop suite.

The suite runs under CTest as `/usr/bin/python3 -m pytest -q -p no:cacheprovider
tests/interop` with CKPT_BIN, CKPT_DUMP, CKPT_CORPUS and CKPT_SOURCE_DIR set.
Run by hand, the binaries default to build/ckpt and build/tests/ckpt_dump and
the corpus to ../shared/corpus next to the source tree.
"""
import os
import pathlib
import shlex
import subprocess

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("CKPT_SOURCE_DIR", HERE.parent.parent)).resolve()


# A torch 2.x interpreter for test_torch2.py and test_differential.py: the
# chroot of scripts/torch2-chroot.sh when it is built and usable here, unless
# CKPT_TORCH2_PYTHON names one. CKPT_TORCH2=1 requires it (make test builds it
# first then); without it, those tests are skipped with one line saying so.
TORCH2_SCRIPT = SOURCE_DIR / "scripts" / "torch2-chroot.sh"
if not os.environ.get("CKPT_TORCH2_PYTHON") and subprocess.run(
        ["sh", str(TORCH2_SCRIPT), "check"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL).returncode == 0:
    os.environ["CKPT_TORCH2_PYTHON"] = f"sh {shlex.quote(str(TORCH2_SCRIPT))} python"


def pytest_terminal_summary(terminalreporter):
    if not os.environ.get("CKPT_TORCH2_PYTHON") and os.environ.get("CKPT_TORCH2") != "1":
        terminalreporter.write_line(
            "skipped the torch 2.x interop tests: no chroot at "
            f"{os.environ.get('CKPT_TORCH2_ROOT', '/var/cache/ckpt-torch2')} "
            "(CKPT_TORCH2=1 make test builds it)")


def _path_from_env(var, fallback):
    value = os.environ.get(var)
    return pathlib.Path(value) if value else fallback


@pytest.fixture(scope="session")
def source_dir():
    return SOURCE_DIR


@pytest.fixture(scope="session")
def ckpt_bin():
    path = _path_from_env("CKPT_BIN", SOURCE_DIR / "build" / "ckpt")
    if not path.is_file():
        pytest.fail(f"ckpt binary not found at {path} (set CKPT_BIN or build first)")
    return str(path)


@pytest.fixture(scope="session")
def ckpt_dump_bin():
    path = _path_from_env("CKPT_DUMP", SOURCE_DIR / "build" / "tests" / "ckpt_dump")
    if not path.is_file():
        pytest.fail(f"ckpt_dump not found at {path} (set CKPT_DUMP or build first)")
    return str(path)


@pytest.fixture(scope="session")
def corpus_dir():
    path = _path_from_env("CKPT_CORPUS", SOURCE_DIR.parent / "shared" / "corpus")
    if not (path / "benign").is_dir():
        if os.environ.get("CKPT_REQUIRE_CORPUS") == "1":
            pytest.fail(f"corpus not found at {path} (set CKPT_CORPUS)")
        pytest.skip(f"the third-party corpus is not at {path}: run with CKPT_CORPUS=DIR")
    return path.resolve()


@pytest.fixture(scope="session")
def gen_dir(tmp_path_factory):
    """A session-wide directory for generated checkpoints."""
    return tmp_path_factory.mktemp("generated")


@pytest.fixture(scope="session")
def torch_files(gen_dir):
    """Every generated torch checkpoint, made once per session.

    Maps case name -> ckptgen.Case (path, expected object, expectations).
    """
    import ckptgen

    return ckptgen.generate_all(gen_dir)


@pytest.fixture(scope="session")
def tool(ckpt_bin, ckpt_dump_bin, tmp_path_factory):
    import ckpttool

    return ckpttool.Tool(ckpt_bin, ckpt_dump_bin, tmp_path_factory.mktemp("dumps"))
