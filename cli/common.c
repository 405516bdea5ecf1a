/*
 * common.c - small helpers shared by the ckpt commands.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>

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
