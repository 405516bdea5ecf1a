"""The package as installed: where it and its library are, its documentation."""
import inspect as pyinspect
import os
import subprocess
import sys

import pytest

import ckpt
import ckpt._lib


@pytest.mark.skipif(not os.environ.get("CKPT_EXPECT_INSTALLED"),
                    reason="run from the source tree (the python-package ctest installs it)")
def test_installed_with_its_library():
    pkg = os.path.dirname(os.path.abspath(ckpt.__file__))
    assert "site-packages" in pkg or "dist-packages" in pkg, pkg
    assert ckpt._lib.library_path == os.path.join(pkg, "libckpt.so.0")
    res = subprocess.run([sys.executable, "-c", "import ckpt; print(ckpt.library_version())"],
                         cwd="/", capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == ckpt.library_version(), res.stderr


def test_no_library_is_a_clear_error(tmp_path):
    """Neither beside the package nor by soname: an ImportError saying what to do."""
    pkg = tmp_path / "ckpt"
    src = os.path.dirname(os.path.abspath(ckpt.__file__))
    pkg.mkdir()
    for name in os.listdir(src):
        if name.endswith(".py"):
            (pkg / name).write_bytes(open(os.path.join(src, name), "rb").read())
    env = {k: v for k, v in os.environ.items() if k not in ("CKPT_LIBRARY", "LD_LIBRARY_PATH")}
    env["PYTHONPATH"] = str(tmp_path)
    env["LD_LIBRARY_PATH"] = str(tmp_path)  # no libckpt.so.0 there
    res = subprocess.run([sys.executable, "-c", "import ckpt"], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True)
    if res.returncode == 0:
        pytest.skip("libckpt.so.0 is installed system-wide: found by its soname")
    assert "libckpt was not found" in res.stderr and "pip install ./python" in res.stderr


def test_every_public_name_is_documented():
    for name in ckpt.__all__:
        obj = getattr(ckpt, name)
        if isinstance(obj, str):
            continue
        assert obj.__doc__ and len(obj.__doc__.strip()) > 20, name
        if callable(obj) and not isinstance(obj, type):
            sig = pyinspect.signature(obj)
            assert sig.return_annotation is not pyinspect.Signature.empty, name
    for cls in (ckpt.Manager, ckpt.safe_open):
        for attr, member in vars(cls).items():
            if not attr.startswith("_") and callable(member):
                assert member.__doc__, f"{cls.__name__}.{attr}"
