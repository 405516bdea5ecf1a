#!/bin/sh
# Every symbol libckpt exports starts with ckpt_ (internal ones with ckpt__,
# and those are hidden in the shared library).
set -eu
static=$1
shared=$2
bad=$(nm -g --defined-only "$static" | awk 'NF == 3 {print $3}' | grep -v '^ckpt_' || true)
if [ -n "$bad" ]; then
    echo "symbols in $static without the ckpt_ prefix:"; echo "$bad"; exit 1
fi
leaked=$(nm -D --defined-only "$shared" | awk 'NF == 3 {print $3}' | grep -E '^ckpt__|^[^c]' | grep -v '^_init$\|^_fini$' || true)
if [ -n "$leaked" ]; then
    echo "internal symbols exported by $shared:"; echo "$leaked"; exit 1
fi
n=$(nm -D --defined-only "$shared" | awk 'NF == 3 {print $3}' | grep -c '^ckpt_[^_]')
echo "symbols ok: $n public ckpt_ symbols"
