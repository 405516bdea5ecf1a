#!/bin/sh
# python_package.sh PYTHON SOURCE WORK LIBCKPT - make a fresh venv in WORK
# (with the system's site packages), pip-install SOURCE/python into it with
# LIBCKPT bundled, offline, and run the package's tests with that venv's
# python from WORK, so they import the installed package.
set -eu
PY=$1 SRC=$2 WORK=$3 LIB=$4
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
env -u CKPT_LIBRARY -u PYTHONPATH CKPT_SOURCE_DIR="$SRC" \
    "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider "$SRC/python/tests"
