#!/bin/sh
# test_install.sh BUILD SOURCE CC [CFLAGS] - install BUILD into a temporary
# prefix (and once with DESTDIR), check every file lands, then build
# consumer.c against it with pkg-config and with find_package(ckpt), and run
# both; check the man page and the bash completion.
set -eu
BUILD=$1 SRC=$2 CC=$3 CFLAGS=${4:-} CMAKE=${CMAKE:-cmake}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== DESTDIR=$tmp/stage cmake --install --prefix /opt/ckpt"
DESTDIR=$tmp/stage $CMAKE --install "$BUILD" --prefix /opt/ckpt >/dev/null
[ -x "$tmp/stage/opt/ckpt/bin/ckpt" ] || fail "DESTDIR: no bin/ckpt under $tmp/stage/opt/ckpt"
grep -qx "prefix=/opt/ckpt" "$(find "$tmp/stage" -name ckpt.pc)" || fail "DESTDIR: ckpt.pc's prefix"

P=$tmp/prefix
echo "== cmake --install --prefix $P"
$CMAKE --install "$BUILD" --prefix "$P" >/dev/null
pc=$(find "$P" -name ckpt.pc)
[ -n "$pc" ] || fail "no ckpt.pc"
libdir=$(dirname "$(dirname "$pc")")
for f in "$libdir/libckpt.a" "$libdir/libckpt.so" "$libdir/libckpt.so.0" "$P/include/ckpt.h" \
    "$P/bin/ckpt" "$P/share/man/man1/ckpt.1" "$P/share/bash-completion/completions/ckpt" \
    "$libdir/cmake/ckpt/ckptConfig.cmake" "$libdir/cmake/ckpt/ckptConfigVersion.cmake"; do
    [ -e "$f" ] || fail "not installed: ${f#"$P"/}"
done
version=$(sed -n 's/^#define CKPT_VERSION_STRING "\(.*\)"/\1/p' "$P/include/ckpt.h")
[ -e "$libdir/libckpt.so.$version" ] || fail "no libckpt.so.$version"
soname=$(readelf -d "$libdir/libckpt.so.$version" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[ "$soname" = libckpt.so.0 ] || fail "soname '$soname', not libckpt.so.0"
"$P/bin/ckpt" --version | grep -qx "ckpt $version" || fail "installed ckpt --version"

echo "== pkg-config --cflags --libs ckpt"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
[ "$(pkg-config --modversion ckpt)" = "$version" ] || fail "pkg-config --modversion"
pkg-config --print-requires-private ckpt | grep -q libdeflate || fail "Requires.private"
# shellcheck disable=SC2046,SC2086 # the flags are words
$CC $CFLAGS -o "$tmp/consumer_pc" "$SRC/tests/install/consumer.c" $(pkg-config --cflags --libs ckpt) \
    -Wl,-rpath,"$libdir"
"$tmp/consumer_pc" "$tmp/pc.pth" | tee "$tmp/out"
grep -q "^libckpt $version (header $version): epoch 7, w read back$" "$tmp/out" || fail "pkg-config build"

echo "== libckpt.a with its dependencies from pkg-config"
# shellcheck disable=SC2046,SC2086
$CC $CFLAGS -o "$tmp/consumer_a" "$SRC/tests/install/consumer.c" $(pkg-config --cflags ckpt) \
    "$(pkg-config --variable=libdir ckpt)/libckpt.a" $(pkg-config --libs libdeflate zlib jansson yajl) \
    -pthread -lm
! ldd "$tmp/consumer_a" | grep -q libckpt || fail "consumer_a links libckpt.so"
"$tmp/consumer_a" "$tmp/a.pth" | grep -q "epoch 7, w read back$" || fail "static build"

echo "== find_package(ckpt), target_link_libraries(consumer ckpt::ckpt)"
cp "$SRC/tests/install/CMakeLists.txt" "$SRC/tests/install/consumer.c" "$tmp/"
mkdir "$tmp/src" && mv "$tmp/CMakeLists.txt" "$tmp/consumer.c" "$tmp/src/"
CC=$CC $CMAKE -S "$tmp/src" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$P" -DCMAKE_C_FLAGS="$CFLAGS" \
    -DCMAKE_EXE_LINKER_FLAGS="$CFLAGS" >/dev/null
$CMAKE --build "$tmp/cm" >/dev/null
"$tmp/cm/consumer" "$tmp/cm.pth" | tee "$tmp/out"
grep -q "^libckpt $version (header $version): epoch 7, w read back$" "$tmp/out" || fail "find_package build"

echo "== man page: every command, the exit status, the same as --help"
man=$P/share/man/man1/ckpt.1
commands=$("$P/bin/ckpt" --help | sed -n '/^commands:/,/^$/s/^  \([a-z][a-z]*\) .*/\1/p' | grep -vx version)
for c in $commands; do
    grep -qx ".SS $c" "$man" || fail "man page lacks the command $c"
done
grep -qx ".SH EXIT STATUS" "$man" || fail "man page lacks EXIT STATUS"
sh "$SRC/scripts/gen-man.sh" "$P/bin/ckpt" | cmp -s - "$man" || fail "man page differs from --help"
if command -v groff >/dev/null; then
    groff -man -Tutf8 -ww -z "$man" 2>"$tmp/groff" || fail "groff fails on the man page"
    if [ -s "$tmp/groff" ]; then cat "$tmp/groff" >&2; fail "groff warns about the man page"; fi
fi

echo "== bash completion"
out=$(PATH="$P/bin:$PATH" bash -c '
    . "$1"
    t() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _ckpt; echo "${COMPREPLY[*]}"; }
    cd "$2" && : >model.pth
    t ckpt ""; t ckpt convert --dt; t ckpt convert x --to ""; t ckpt verify mod' _ \
    "$P/share/bash-completion/completions/ckpt" "$tmp")
echo "$out"
for c in $commands; do
    echo "$out" | sed -n 1p | grep -qw "$c" || fail "completion lacks the command $c"
done
[ "$(echo "$out" | sed -n 2p)" = --dtype ] || fail "completion of options"
[ "$(echo "$out" | sed -n 3p)" = "pth safetensors" ] || fail "completion of --to"
[ "$(echo "$out" | sed -n 4p)" = model.pth ] || fail "completion of files"
echo "== the Python package beside libckpt, importable by python3"
pkg=$(dirname "$(find "$P/lib" -path '*-packages/ckpt/__init__.py' | head -n 1)")
[ "$pkg" != . ] || fail "no Python package under $P/lib"
for f in "$pkg/__init__.py" "$pkg/_lib.py" "$pkg/libckpt.so.0"; do
    [ -e "$f" ] || fail "not installed: ${f#"$P"/}"
done
[ -e "$tmp/stage/opt/ckpt/${pkg#"$P"/}/libckpt.so.0" ] || fail "DESTDIR: the Python package"
# an instrumented libckpt cannot load into an uninstrumented python3
if [ -x /usr/bin/python3 ] && ! nm -D "$pkg/libckpt.so.0" | grep -q __asan_init; then
    (cd "$tmp" && env -u CKPT_LIBRARY PYTHONPATH="$(dirname "$pkg")" /usr/bin/python3 -c '
import sys, ckpt, ckpt._lib as l
assert l.library_path == sys.argv[1] + "/libckpt.so.0", l.library_path
print("python3: ckpt", ckpt.library_version())' "$pkg") || fail "python3 -c 'import ckpt'"
fi
echo "install ok"
