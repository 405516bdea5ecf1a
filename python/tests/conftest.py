"""Fixtures of the package's tests.

Run them with the python the package is installed for (the python-package
ctest makes a fresh venv and pip-installs ./python into it), or from the
source tree with PYTHONPATH=python and CKPT_LIBRARY=build/libckpt.so.0.
The corpus suites read ../shared/corpus beside the source tree (or
CKPT_CORPUS) and skip with one line without it.
"""
import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
SOURCE_DIR = pathlib.Path(os.environ.get("CKPT_SOURCE_DIR", HERE.parent.parent)).resolve()
CORPUS = pathlib.Path(os.environ.get("CKPT_CORPUS", SOURCE_DIR.parent / "shared" / "corpus"))

sys.path.insert(0, str(SOURCE_DIR / "tests" / "interop"))  # ckptgen, the torch generators


def tool_env():
    """The environment for running the ckpt tool: without the LD_PRELOAD of
    an ASan runtime that a sanitizer build's python runs under (the tool
    links its own)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


SANITIZED = "asan" in os.environ.get("LD_PRELOAD", "")


@pytest.fixture(scope="session")
def corpus():
    if not (CORPUS / "benign").is_dir():
        pytest.skip(f"the third-party corpus is not at {CORPUS} (set CKPT_CORPUS)")
    return CORPUS


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """Every checkpoint tests/interop/ckptgen.py writes with torch: {name: Case}."""
    import ckptgen
    return ckptgen.generate_all(tmp_path_factory.mktemp("gen"))
