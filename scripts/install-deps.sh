#!/bin/sh
# Installs the Debian packages that ckpt's build and tests need.
# Idempotent: returns at once when everything is present.
set -eu
PKGS="build-essential cmake pkg-config clang libclang-rt-dev libdeflate-dev zlib1g-dev libjansson-dev libyajl-dev libcmocka-dev python3 python3-torch python3-numpy python3-pytest"
# the Python package: a venv, and pip installing it offline with Debian's setuptools
PKGS="$PKGS python3-venv python3-pip python3-setuptools python3-wheel"
# MPI for ckpt_dcp_save from MPI ranks (CKPT_MPI) and its tests under mpirun
PKGS="$PKGS libopenmpi-dev openmpi-bin"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends $missing
