/*
 * common.c - small helpers shared by the ckpt commands.
 */
#include "cli.h"

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
