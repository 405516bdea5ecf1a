#!/bin/sh
# The library and the CLI load no MPI library: a program that saves from MPI
# ranks brings its own, found at run time (src/format/dcp_write.c), and
# everything else starts without libmpi and what it pulls in.
#   check_needed.sh FILE...
set -eu
bad=0
for f in "$@"; do
    needed=$(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
    [ -n "$needed" ] || { echo "$f: no NEEDED entries read (readelf failed?)"; bad=1; }
    for lib in $needed; do
        case $lib in
        libmpi* | libopen-* | libhwloc* | libevent*) echo "$f: links $lib"; bad=1 ;;
        esac
    done
done
[ $bad = 0 ] && echo "no MPI library among the NEEDED entries of: $*"
exit $bad
