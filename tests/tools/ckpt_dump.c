/*
 * ckpt_dump FILE OUTDIR [--torchscript-weights] - test tool: writes every
 * tensor of FILE as a contiguous native-endian array OUTDIR/<i>.bin, and
 * OUTDIR/index.json listing {name, dtype, shape, file, zero_copy} in order.
 * Exit 2 with the error on stderr when the file cannot be opened.
 */
#include <ckpt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "--torchscript-weights") == 0)) {
        fprintf(stderr, "usage: ckpt_dump FILE OUTDIR [--torchscript-weights]\n");
        return 2;
    }
    ckpt_file *f;
    ckpt_error err;
    char msg[768];
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    if (argc == 4)
        oo.flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS;
    if (ckpt_open(argv[1], &oo, &f, &err) != CKPT_OK) {
        fprintf(stderr, "ckpt_dump: %s: %s\n", argv[1], ckpt_error_format(&err, msg, sizeof(msg)));
        return 2;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/index.json", argv[2]);
    FILE *idx = fopen(path, "w");
    if (!idx) {
        perror(path);
        return 2;
    }
    fprintf(idx, "[\n");
    int rc = 0;
    for (size_t i = 0; i < ckpt_file_tensor_count(f); i++) {
        const char *name;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        const void *data;
        bool zc = false;
        bool sparse = ti.layout != CKPT_LAYOUT_STRIDED;
        if (!ti.has_storage && !sparse) /* meta tensors: no bytes */
            ti.nbytes = 0;
        if (!sparse && ckpt_tensor_data(f, t, &data, &zc, &err) != CKPT_OK) {
            fprintf(stderr, "ckpt_dump: %s: %s\n", name, ckpt_error_format(&err, msg, sizeof(msg)));
            rc = 2;
            break;
        }
        void *buf = malloc(ti.nbytes ? ti.nbytes : 1);
        if (!buf || ((ti.has_storage || sparse) &&
                     ckpt_tensor_copy(f, t, buf, ti.nbytes, &err) != CKPT_OK)) {
            fprintf(stderr, "ckpt_dump: %s: copy failed\n", name);
            free(buf);
            rc = 2;
            break;
        }
        snprintf(path, sizeof(path), "%s/%zu.bin", argv[2], i);
        FILE *out = fopen(path, "wb");
        if (!out || fwrite(buf, 1, ti.nbytes, out) != ti.nbytes) {
            perror(path);
            rc = 2;
        }
        if (out)
            fclose(out);
        free(buf);
        fprintf(idx, "%s {\"name\": ", i ? "," : "");
        json_str(idx, name);
        fprintf(idx, ", \"dtype\": \"%s\", \"shape\": [", ckpt_dtype_name(ti.dtype));
        for (uint32_t k = 0; k < ti.ndim; k++)
            fprintf(idx, "%s%lld", k ? ", " : "", (long long)ti.shape[k]);
        fprintf(idx, "], \"file\": \"%zu.bin\", \"zero_copy\": %s, \"requires_grad\": %s, "
                     "\"parameter\": %s, \"location\": ",
                i, zc ? "true" : "false", ti.requires_grad ? "true" : "false",
                ti.is_parameter ? "true" : "false");
        json_str(idx, ti.location ? ti.location : "");
        fprintf(idx, "}\n");
    }
    fprintf(idx, "]\n");
    fclose(idx);
    ckpt_close(f);
    return rc;
}
