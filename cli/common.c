/*
 * common.c - small helpers shared by the ckpt commands.
 */
#include "cli.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_print_error(const char *path, const ckpt_error *err)
{
    char buf[768];
    ckpt_error_format(err, buf, sizeof(buf));
    fprintf(stderr, "ckpt: %s: %s\n", path, buf);
}

char *cli_repr(const ckpt_value *v)
{
    size_t n = ckpt_value_repr(v, NULL, 0);
    char *s = malloc(n + 1);
    if (s)
        ckpt_value_repr(v, s, n + 1);
    return s;
}

void cli_human_bytes(uint64_t b, char *buf, size_t size)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
}

bool cli_print_json(json_t *o, size_t indent, const char *what)
{
    /* one buffer, one write: json_dumpf writes token by token */
    char *text = json_dumps(o, JSON_INDENT(indent) | JSON_PRESERVE_ORDER |
                                   JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text) {
        fprintf(stderr, "ckpt: %s: out of memory writing JSON\n", what);
        return false;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, stdout) == len && fputc('\n', stdout) != EOF &&
              fflush(stdout) == 0;
    free(text);
    if (!ok)
        fprintf(stderr, "ckpt: %s: cannot write the JSON\n", what);
    return ok;
}

/* Follows a dotted path: at a dict the longest key that is the whole rest
 * or a prefix of it followed by '.', at a list/tuple a decimal index. */
const ckpt_value *cli_find_path(const ckpt_value *v, const char *path)
{
    while (*path) {
        ckpt_kind k = ckpt_value_kind(v);
        size_t rest = strlen(path);
        if (k == CKPT_DICT || k == CKPT_ORDERED_DICT) {
            const ckpt_value *best = NULL;
            size_t best_len = 0;
            for (size_t i = 0; i < ckpt_value_len(v); i++) {
                char text[512];
                size_t len = ckpt_value_key_text(ckpt_value_key(v, i), text, sizeof(text));
                if (len > rest || len < best_len || (len == best_len && best))
                    continue;
                if (memcmp(text, path, len) == 0 && (path[len] == 0 || path[len] == '.')) {
                    best = ckpt_value_dict_value(v, i);
                    best_len = len;
                }
            }
            if (!best)
                return NULL;
            v = best;
            path += best_len;
        } else if (k == CKPT_LIST || k == CKPT_TUPLE) {
            char *end;
            unsigned long long i = strtoull(path, &end, 10);
            if (end == path || (*end && *end != '.') || i >= ckpt_value_len(v))
                return NULL;
            v = ckpt_value_item(v, (size_t)i);
            path = end;
        } else {
            return NULL;
        }
        if (*path == '.')
            path++;
    }
    return v;
}

bool cli_parse_ratio(const cli_command *cmd, const char *opt, const char *s, uint64_t *out)
{
    size_t n = s ? strlen(s) : 0;
    bool digits = n > 0 && n <= 19 && strspn(s, "0123456789") == n;
    unsigned long long v = digits ? strtoull(s, NULL, 10) : 0;
    if (v == 0) {
        cli_usage_error(cmd, "%s needs a whole number from 1 to 10^19 - 1, not '%s'", opt,
                        s ? s : "");
        return false;
    }
    *out = v;
    return true;
}

/* ---- options ---------------------------------------------------------------- */

int cli_usage_error(const cli_command *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "ckpt: %s: ", cmd->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nusage: %s\nrun 'ckpt %s --help' for the options\n", cmd->synopsis,
            cmd->name);
    return CLI_EXIT_ERROR;
}

void cli_args_init(cli_args *a, const cli_command *cmd, int argc, char **argv)
{
    memset(a, 0, sizeof(*a));
    a->cmd = cmd;
    a->argc = argc;
    a->argv = argv;
    /* '-': operands come back in order (1), wherever they stand, whatever
     * POSIXLY_CORRECT says; ':': a missing value is told apart (':') */
    snprintf(a->shortopts, sizeof(a->shortopts), "-:%s", cmd->shortopts);
    opterr = 0;
}

/* The table entry named by the n bytes at name, spelled out whole. */
static const struct option *long_option(const cli_command *cmd, const char *name, size_t n)
{
    for (const struct option *o = cmd->longopts; o->name; o++)
        if (strlen(o->name) == n && memcmp(o->name, name, n) == 0)
            return o;
    return NULL;
}

int cli_next_arg(cli_args *a, const char **value)
{
    *value = NULL;
    if (!a->operands_only) {
        const char *next = optind < a->argc ? a->argv[optind] : NULL;
        if (next && next[0] == '-' && next[1] == '-' && next[2]) {
            /* getopt_long takes any unambiguous prefix: only whole names here */
            size_t n = strcspn(next + 2, "=");
            const struct option *o = long_option(a->cmd, next + 2, n);
            if (!o) {
                cli_usage_error(a->cmd, "unknown option '%.*s'", (int)(n + 2), next);
                return CLI_OPT_BAD;
            }
            if (o->has_arg == no_argument && next[2 + n] == '=') {
                cli_usage_error(a->cmd, "option '--%s' takes no value", o->name);
                return CLI_OPT_BAD;
            }
        }
        int c = getopt_long(a->argc, a->argv, a->shortopts, a->cmd->longopts, NULL);
        const char *opt = optind > 0 && optind <= a->argc ? a->argv[optind - 1] : "";
        switch (c) {
        case -1:
            a->operands_only = true; /* the end, or "--" */
            break;
        case CLI_OPT_ARG:
            *value = optarg;
            return CLI_OPT_ARG;
        case '?':
            if (optopt)
                cli_usage_error(a->cmd, "unknown option '-%c'", optopt);
            else
                cli_usage_error(a->cmd, "unknown option '%s'", opt);
            return CLI_OPT_BAD;
        case ':':
            if (opt[0] == '-' && opt[1] == '-')
                cli_usage_error(a->cmd, "option '%s' needs a value", opt);
            else
                cli_usage_error(a->cmd, "option '-%c' needs a value", optopt);
            return CLI_OPT_BAD;
        default:
            *value = optarg;
            return c;
        }
    }
    if (optind < a->argc) {
        *value = a->argv[optind++];
        return CLI_OPT_ARG;
    }
    return CLI_OPT_END;
}
