#!/bin/sh
# A Debian 13 (trixie) chroot with torch 2.6, safetensors and numpy, for the
# interop tests against a newer torch than Debian 12's 1.13.
#
#   torch2-chroot.sh build          makes the chroot unless it is there
#   torch2-chroot.sh python ARGS    runs python3 ARGS in it (the command for
#                                   CKPT_TORCH2_PYTHON)
#   torch2-chroot.sh path           prints where it lives
#   torch2-chroot.sh check          exits 0 when it is built and usable here
#
# It lives outside the work tree, in $CKPT_TORCH2_ROOT (default
# /var/cache/ckpt-torch2), and is reused when present. It is made with
# debootstrap from the Debian mirror this machine's apt uses (about 1.6 GB).
# Both commands need root: debootstrap and chroot do.
#
# `python` runs in a private mount namespace (unshare -m): /proc, /dev, /tmp,
# $TMPDIR, this repository, the current directory's repository and
# $CKPT_TORCH2_BINDS are mounted there at the same paths as outside, so the test's files are where it says they are, and
# the kernel drops every mount when the command ends, however it ends.
set -eu

ROOT=${CKPT_TORCH2_ROOT:-/var/cache/ckpt-torch2}
SUITE=trixie
PKGS="python3-torch python3-safetensors python3-numpy"
STAMP=.ckpt-torch2-ready

die() { echo "torch2-chroot: $*" >&2; exit 2; }

# The first Debian mirror named in apt's sources (deb822 or one-line form).
mirror() {
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
        grep -v -e security -e '^$' | head -n 1)
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' |
            grep -i debian | grep -v security | head -n 1)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

ready() { [ -f "$ROOT/$STAMP" ]; }

build() {
    ready && return 0
    [ "$(id -u)" -eq 0 ] || die "building the chroot needs root (debootstrap)"
    command -v debootstrap >/dev/null 2>&1 ||
        die "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$(dirname "$ROOT")"
    # One build at a time; a second caller waits and then finds it ready.
    exec 9>"$ROOT.lock"
    flock 9
    ready && return 0
    tmp="$ROOT.tmp"
    # debootstrap mounts /proc, /sys (and may bind /dev) in its target: it
    # runs in a private mount namespace, so none of them outlives it, and a
    # leftover target is removed only when nothing is mounted in it.
    ! grep -q " $tmp/" /proc/mounts || die "$tmp has mounts in it: unmount them first"
    rm -rf "$tmp"
    m=$(mirror)
    start=$(date +%s)
    echo "torch2-chroot: debootstrap $SUITE from $m into $tmp" >&2
    unshare --mount --propagation private -- debootstrap --variant=minbase \
        --include="$(echo "$PKGS" | tr ' ' ,)" "$SUITE" "$tmp" "$m" >&2 ||
        die "debootstrap failed (log: $tmp/debootstrap/debootstrap.log)"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    (run_in "$tmp" python3 -c 'import torch, safetensors, numpy; print("torch", torch.__version__)') >&2 ||
        die "torch does not start in $tmp"
    touch "$tmp/$STAMP"
    ! grep -q " $ROOT/" /proc/mounts || die "$ROOT has mounts in it: unmount them first"
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
    echo "torch2-chroot: ready in $ROOT ($(($(date +%s) - start)) s)" >&2
}

# run_in DIR CMD ARGS: CMD in chroot DIR, in a private mount namespace.
run_in() {
    dir=$1
    shift
    [ "$(id -u)" -eq 0 ] || die "running in the chroot needs root (chroot)"
    # the temporary directories, this repository, the current directory's
    # repository and CKPT_TORCH2_BINDS (more directories, space-separated)
    here=$(cd "$(dirname "$0")/.." && pwd -P)
    top=$(git rev-parse --show-toplevel 2>/dev/null || true)
    binds="/tmp ${TMPDIR:-} $here $top ${CKPT_TORCH2_BINDS:-}"
    exec unshare --mount --propagation private -- sh -eu -c '
        dir=$1; binds=$2; cwd=$3; shift 3
        mount -t proc proc "$dir/proc"
        mount --rbind /dev "$dir/dev"
        for b in $binds; do
            [ -d "$b" ] || continue
            mkdir -p "$dir$b"
            mount --rbind "$b" "$dir$b"
        done
        exec chroot "$dir" /bin/sh -c "cd \"\$0\" 2>/dev/null || cd /; exec \"\$@\"" "$cwd" "$@"
    ' sh "$dir" "$binds" "$(pwd)" "$@"
}

case "${1:-}" in
build) build ;;
path) echo "$ROOT" ;;
check) ready && [ "$(id -u)" -eq 0 ] && command -v unshare >/dev/null 2>&1 ;;
python)
    shift
    ready || die "no chroot in $ROOT: run '$0 build' first"
    (run_in "$ROOT" env PYTHONDONTWRITEBYTECODE=1 python3 "$@")
    ;;
*) die "usage: $0 build|python ARGS|path|check" ;;
esac
