#!/bin/sh
# The layers of src/ only reach down: a file in src/<layer>/ includes its own
# folder's headers, ckpt.h and the headers of lower layers ("zip/zip.h"),
# never one of a layer above. With the static library given, the same holds
# for the symbols its objects use.
#   check_layers.sh SRC_DIR [libckpt.a]
set -eu
# The order, lowest first (README.md, "Architecture").
LAYERS="base zip core pickle format scan manager model"
src=$1
lib=${2:-}

rank() {
    i=0
    for l in $LAYERS; do
        [ "$l" = "$1" ] && { echo $i; return; }
        i=$((i + 1))
    done
    echo -1
}

bad=0
for f in "$src"/*; do
    case $f in
    *.c | *.h) echo "$f: outside every layer folder"; bad=1 ;;
    esac
done
for dir in "$src"/*/; do
    layer=$(basename "$dir")
    r=$(rank "$layer")
    if [ "$r" -lt 0 ]; then
        echo "$dir: a folder that is no layer (LAYERS in $0)"; bad=1; continue
    fi
    for f in "$dir"*.c "$dir"*.h; do
        [ -f "$f" ] || continue
        # every #include "..." with its line number
        sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f" |
        while read -r inc; do
            case $inc in
            ckpt.h) ;;
            */*)
                to=${inc%%/*}
                t=$(rank "$to")
                if [ "$t" -lt 0 ] || [ ! -f "$src/$inc" ]; then
                    echo "$f: includes \"$inc\", no header of a layer"
                elif [ "$t" -gt "$r" ]; then
                    echo "$f: includes \"$inc\" of layer $to, above $layer"
                fi ;;
            *)
                if [ ! -f "$dir$inc" ]; then
                    echo "$f: includes \"$inc\", not in its folder (a lower layer's header is \"layer/layer.h\")"
                fi ;;
            esac
        done
    done
done > "${TMPDIR:-/tmp}/check_layers.$$"
out=$(cat "${TMPDIR:-/tmp}/check_layers.$$"); rm -f "${TMPDIR:-/tmp}/check_layers.$$"
if [ -n "$out" ]; then
    echo "$out"; bad=1
fi

if [ -n "$lib" ]; then
    # object (file.c.o) -> layer, from the source tree
    map=$(for dir in "$src"/*/; do
        for f in "$dir"*.c; do
            [ -f "$f" ] && echo "$(basename "$f").o $(rank "$(basename "$dir")") $(basename "$dir")"
        done
    done)
    # nm -A: "lib.a:file.c.o:ADDRESS T name" and "lib.a:file.c.o:   U name"
    up=$(nm -A "$lib" | awk -v map="$map" '
        BEGIN {
            n = split(map, m, "\n")
            for (i = 1; i <= n; i++) { split(m[i], w, " "); r[w[1]] = w[2]; name[w[1]] = w[3] }
        }
        { split($1, p, ":"); obj = p[2] }
        $(NF - 1) ~ /^[TDBR]$/ { def[$NF] = obj }
        $(NF - 1) == "U" && $NF ~ /^ckpt/ { use[++u] = obj " " $NF }
        END {
            for (i = 1; i <= u; i++) {
                split(use[i], w, " "); o = w[1]; s = w[2]
                if ((s in def) && (o in r) && (def[s] in r) && r[def[s]] > r[o])
                    printf "%s (%s) uses %s of %s (%s)\n", o, name[o], s, def[s], name[def[s]]
            }
        }')
    if [ -n "$up" ]; then
        echo "objects using symbols of a layer above their own:"; echo "$up"; bad=1
    fi
fi

[ $bad -eq 0 ] || exit 1
echo "layers ok: $LAYERS"
