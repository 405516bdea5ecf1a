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
