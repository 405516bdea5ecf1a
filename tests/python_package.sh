#!/bin/sh
# python_package.sh PYTHON SOURCE WORK LIBCKPT [ASAN_RUNTIME] - make a fresh
# venv in WORK (with the system's site packages), pip-install SOURCE/python
# into it with LIBCKPT bundled, offline, and run the package's tests with
# that venv's python from WORK, so they import the installed package.
# ASAN_RUNTIME (a sanitizer build): the shared ASan runtime, preloaded into
# python for the tests, since an instrumented libckpt needs it first in the
# process; leaks are not reported (python and torch keep memory at exit).
set -eu
PY=$1 SRC=$2 WORK=$3 LIB=$4 ASAN_RUNTIME=${5:-}
rm -rf "$WORK"
mkdir -p "$WORK"
"$PY" -m venv --system-site-packages "$WORK/venv"
# pip builds in the directory it is given: build in a copy, not the tree
mkdir "$WORK/src"
cp -R "$SRC/python/ckpt" "$SRC/python/pyproject.toml" "$SRC/python/setup.py" \
    "$SRC/python/README.md" "$WORK/src/"
rm -rf "$WORK/src/ckpt/__pycache__" "$WORK/src/ckpt/libckpt.so.0"
CKPT_BUILD_LIBRARY=$LIB "$WORK/venv/bin/pip" install -q --no-build-isolation --no-index \
    --disable-pip-version-check "$WORK/src"
cd "$WORK"
if [ -n "$ASAN_RUNTIME" ]; then
    [ -e "$ASAN_RUNTIME" ] || { echo "no ASan runtime at $ASAN_RUNTIME" >&2; exit 1; }
    export LD_PRELOAD="$ASAN_RUNTIME" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
fi
env -u CKPT_LIBRARY -u PYTHONPATH CKPT_SOURCE_DIR="$SRC" \
    "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider "$SRC/python/tests"
