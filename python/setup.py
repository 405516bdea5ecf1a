"""Builds the ckpt package with libckpt bundled beside it.

The library bundled is, in this order: the file named by CKPT_BUILD_LIBRARY;
the source tree's build/ (brought up to date with cmake when it was
configured there); a fresh cmake build into build/ when there is none. No
download, no compiler beyond libckpt's own build.
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SONAME = "libckpt.so.0"


def _cmake(*args):
    cmake = shutil.which("cmake")
    if not cmake:
        raise RuntimeError("ckpt: libckpt is not built (no build/libckpt.so.0) and cmake is "
                           "not installed: install cmake, or build libckpt with 'make' first, "
                           "or name a libckpt.so in CKPT_BUILD_LIBRARY")
    print("ckpt: cmake " + " ".join(args), file=sys.stderr)
    subprocess.check_call([cmake] + list(args))


def find_library():
    env = os.environ.get("CKPT_BUILD_LIBRARY")
    if env:
        if not os.path.exists(env):
            raise RuntimeError(f"ckpt: CKPT_BUILD_LIBRARY={env} does not exist")
        return env
    build = os.path.join(ROOT, "build")
    lib = os.path.join(build, SONAME)
    have_source = os.path.exists(os.path.join(ROOT, "CMakeLists.txt")) and \
        os.path.exists(os.path.join(ROOT, "include", "ckpt.h"))
    if not have_source:
        if os.path.exists(lib):
            return lib
        raise RuntimeError("ckpt: the package is built from the ckpt source tree (python/ in "
                           "it); CMakeLists.txt was not found beside python/")
    jobs = str(max(1, min(os.cpu_count() or 1, 8)))
    if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        _cmake("-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo")
    _cmake("--build", build, "--target", "ckpt_shared", "-j", jobs)
    if not os.path.exists(lib):
        raise RuntimeError(f"ckpt: the build did not make {lib}")
    return lib


class BuildPy(build_py):
    """Copies libckpt.so.0 into the package."""

    def run(self):
        super().run()
        lib = os.path.realpath(find_library())
        dest = os.path.join(self.build_lib, "ckpt", SONAME)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(lib, dest)
        os.chmod(dest, 0o755)


class BinaryDistribution(Distribution):
    """The wheel holds a shared library: it is tied to the platform."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution)
