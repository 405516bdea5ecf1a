/*
 * dcp_load - reads regions of a checkpoint's tensors through the public API
 * (ckpt_dcp_load_shard) and writes their bytes to stdout, one after the
 * other, for the interop tests.
 *
 *   dcp_load PATH REGION...
 *
 * REGION is NAME (the whole tensor) or NAME@O0,O1,...:S0,S1,... (the box at
 * offsets O with sizes S; "NAME@:" for a 0-d tensor). Exit status 1 with
 * the error on stderr when the load fails.
 */
#include <ckpt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DIMS 64

static int parse_ints(const char *s, int64_t *out, uint32_t max)
{
    int n = 0;
    while (*s && *s != ':') {
        char *end;
        long long v = strtoll(s, &end, 10);
        if (end == s || (uint32_t)n >= max)
            return -1;
        out[n++] = v;
        s = end;
        if (*s == ',')
            s++;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: dcp_load PATH REGION...\n");
        return 2;
    }
    ckpt_file *f = NULL;
    ckpt_error err;
    char msg[768];
    if (ckpt_open(argv[1], NULL, &f, &err) != CKPT_OK) {
        fprintf(stderr, "dcp_load: %s\n", ckpt_error_format(&err, msg, sizeof(msg)));
        return 1;
    }
    size_t n = (size_t)argc - 2;
    ckpt_region *regions = calloc(n, sizeof(*regions));
    int64_t(*dims)[2][MAX_DIMS] = calloc(n, sizeof(*dims));
    int rc = 1;
    if (!regions || !dims)
        goto out;
    for (size_t i = 0; i < n; i++) {
        char *arg = argv[i + 2];
        char *at = strchr(arg, '@');
        if (at)
            *at = 0;
        const ckpt_tensor *t = ckpt_file_find_tensor(f, arg);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        if (!t || ti.ndim > MAX_DIMS) {
            fprintf(stderr, "dcp_load: no tensor '%s'\n", arg);
            goto out;
        }
        uint64_t count = 1;
        if (at) {
            char *colon = strchr(at + 1, ':');
            if (!colon || parse_ints(at + 1, dims[i][0], MAX_DIMS) != (int)ti.ndim ||
                parse_ints(colon + 1, dims[i][1], MAX_DIMS) != (int)ti.ndim) {
                fprintf(stderr, "dcp_load: bad region for '%s'\n", arg);
                goto out;
            }
        } else {
            for (uint32_t d = 0; d < ti.ndim; d++)
                dims[i][1][d] = ti.shape[d];
        }
        for (uint32_t d = 0; d < ti.ndim; d++)
            count *= dims[i][1][d] > 0 ? (uint64_t)dims[i][1][d] : 0;
        regions[i].name = arg;
        regions[i].offsets = dims[i][0];
        regions[i].sizes = dims[i][1];
        regions[i].dst_size = (size_t)(count * ckpt_dtype_size(ti.dtype));
        regions[i].dst = malloc(regions[i].dst_size ? regions[i].dst_size : 1);
        if (!regions[i].dst)
            goto out;
    }
    if (ckpt_dcp_load_shard(f, regions, n, &err) != CKPT_OK) {
        fprintf(stderr, "dcp_load: %s\n", ckpt_error_format(&err, msg, sizeof(msg)));
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        fwrite(regions[i].dst, 1, regions[i].dst_size, stdout);
    rc = 0;
out:
    for (size_t i = 0; regions && i < n; i++)
        free(regions[i].dst);
    free(regions);
    free(dims);
    ckpt_close(f);
    return rc;
}
