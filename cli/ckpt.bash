# bash completion for ckpt                                  -*- shell-script -*-
# Commands and options come from the tool's own --help, so they follow it;
# files complete everywhere else. Installed as
# share/bash-completion/completions/ckpt.

_ckpt_help()
{
    "$1" "${@:2}" --help 2>/dev/null
}

_ckpt()
{
    local cur prev words cword
    if declare -F _init_completion >/dev/null; then
        _init_completion -n = || return
    else
        COMPREPLY=()
        cur=${COMP_WORDS[COMP_CWORD]}
        prev=${COMP_WORDS[COMP_CWORD - 1]}
        words=("${COMP_WORDS[@]}")
        cword=$COMP_CWORD
    fi
    local tool=${words[0]}

    if ((cword == 1)); then
        local cmds
        cmds=$(_ckpt_help "$tool" | sed -n '/^commands:/,/^$/s/^  \([a-z][a-z]*\) .*/\1/p')
        mapfile -t COMPREPLY < <(compgen -W "$cmds --help --version" -- "$cur")
        return
    fi
    local cmd=${words[1]}
    local help
    help=$(_ckpt_help "$tool" "$cmd") || return

    # --opt=VALUE: complete the value
    if [[ $cur == --*=* ]]; then
        prev=${cur%%=*}
        cur=${cur#*=}
    elif [[ $prev == --* ]]; then
        # a value follows only options shown with one ('--keep N', '--to a|b')
        grep -Eq -- "$prev( [A-Z]|( |=)[a-z0-9]+\|)" <<<"$help" ||
            [[ $prev == --map-location ]] || prev=
    else
        prev=
    fi
    case $prev in
    --to) mapfile -t COMPREPLY < <(compgen -W "pth safetensors" -- "$cur"); return ;;
    --dtype) mapfile -t COMPREPLY < <(compgen -W "float32 float16 bfloat16 float64" -- "$cur"); return ;;
    --map-location) mapfile -t COMPREPLY < <(compgen -W "cpu cuda cuda:0 mps meta" -- "$cur"); return ;;
    --fail-on) mapfile -t COMPREPLY < <(compgen -W "warning unsafe" -- "$cur"); return ;;
    --model) compopt -o filenames 2>/dev/null; mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    --*) return ;; # a key, a number, a name: nothing to offer
    esac

    if [[ $cur == -* ]]; then
        local opts
        opts=$(grep -oE -- '--[a-z][a-z-]*' <<<"$help" | sort -u)
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
        return
    fi
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
} &&
    complete -F _ckpt ckpt
