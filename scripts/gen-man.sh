#!/bin/sh
# gen-man.sh CKPT > ckpt.1 - the man page ckpt(1), made from the tool's own
# help: 'ckpt --help' (synopsis, commands, exit status) and 'ckpt COMMAND
# --help' for each command it lists. The build runs it, so the page and
# --help cannot disagree. Plain sh and sed; the text goes in verbatim.
set -eu
CKPT=$1
# roff: a backslash is \e; a line starting with . or ' is escaped with \&
esc() { sed -e 's/\\/\\e/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }
version=$("$CKPT" --version | sed -n '1s/^ckpt //p')
help=$("$CKPT" --help)
# the commands: "  NAME ..." lines after "commands:", up to the blank line
commands=$(printf '%s\n' "$help" |
    sed -n '/^commands:/,/^$/s/^  \([a-z][a-z]*\) .*/\1/p' | grep -vx version)

cat <<END
.TH CKPT 1 "" "ckpt $version" "User Commands"
.SH NAME
ckpt \\- read, write, scan and convert PyTorch checkpoints without Python
.SH SYNOPSIS
.B ckpt
.I command
[\\fIoptions\\fR] \\fIFILE\\fR...
.br
.B ckpt
.BR \\-\\-help " | " \\-\\-version
.SH DESCRIPTION
The text of
.BR "ckpt \\-\\-help" :
.PP
.nf
END
printf '%s\n' "$help" | esc
echo ".fi"
echo ".SH COMMANDS"
for c in $commands; do
    echo ".SS $c"
    echo "The text of"
    echo ".BR \"ckpt $c \\-\\-help\" :"
    echo ".PP"
    echo ".nf"
    "$CKPT" "$c" --help | esc
    echo ".fi"
done
status=$(printf '%s\n' "$help" | sed -n '/^exit status:/,/^run /p' | sed '/^run /d')
[ -n "$status" ] || { echo "gen-man.sh: no 'exit status:' paragraph in ckpt --help" >&2; exit 1; }
[ -n "$commands" ] || { echo "gen-man.sh: no commands in ckpt --help" >&2; exit 1; }
echo ".SH EXIT STATUS"
printf '%s\n' "$status" | esc
cat <<END
.SH SEE ALSO
The library's API is in
.IR ckpt.h ;
link it with
.B pkg-config \\-\\-cflags \\-\\-libs ckpt
or CMake's
.BR "find_package(ckpt)" .
END
