/*
 * ckpt_rewrite IN OUT [--location TAG] [--prefix NAME] [--no-fsync]
 *              [--permissive] [--zip64-threshold N]
 * Test tool: opens IN with ckpt_open (--permissive: CKPT_OPEN_PERMISSIVE)
 * and saves its root with ckpt_save_torch. --zip64-threshold lowers the size from which the zip
 * writer uses ZIP64 fields (an internal knob, so that small test files
 * exercise them). Exit 2 with the error on stderr on failure.
 */
#include "format.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: ckpt_rewrite IN OUT [--location TAG] [--prefix NAME] [--no-fsync] "
                    "[--permissive] [--zip64-threshold N]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    uint64_t threshold = CKPT__ZIP64_THRESHOLD;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--location") == 0 && i + 1 < argc) {
            so.location = argv[++i];
        } else if (strcmp(a, "--prefix") == 0 && i + 1 < argc) {
            so.prefix = argv[++i];
        } else if (strcmp(a, "--no-fsync") == 0) {
            so.flags |= CKPT_SAVE_NO_FSYNC;
        } else if (strcmp(a, "--permissive") == 0) {
            oo.flags |= CKPT_OPEN_PERMISSIVE;
        } else if (strcmp(a, "--zip64-threshold") == 0 && i + 1 < argc) {
            char *end;
            threshold = strtoull(argv[++i], &end, 10);
            if (*end || threshold == 0)
                return usage();
        } else if (a[0] == '-' && a[1] == '-') {
            return usage();
        } else if (!in) {
            in = a;
        } else if (!out) {
            out = a;
        } else {
            return usage();
        }
    }
    if (!in || !out)
        return usage();
    ckpt_file *f;
    ckpt_error err;
    char msg[768];
    if (ckpt_open(in, &oo, &f, &err) != CKPT_OK) {
        fprintf(stderr, "ckpt_rewrite: %s: %s\n", in, ckpt_error_format(&err, msg, sizeof(msg)));
        return 2;
    }
    ckpt_status st = ckpt__save_torch_ex(out, ckpt_file_root(f), &so, threshold, NULL, &err);
    ckpt_close(f);
    if (st != CKPT_OK) {
        fprintf(stderr, "ckpt_rewrite: %s: %s\n", out, ckpt_error_format(&err, msg, sizeof(msg)));
        return 2;
    }
    return 0;
}
