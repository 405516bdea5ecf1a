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

size_t cli_key_text(const ckpt_value *key, char *buf, size_t size)
{
    return ckpt_value_key_text(key, buf, size);
}
