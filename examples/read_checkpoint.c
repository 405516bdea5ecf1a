/*
 * read_checkpoint FILE [TENSOR] - the README's C API example: open a
 * checkpoint, read a plain value and a tensor, borrowing its bytes.
 */
#include <ckpt.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: read_checkpoint FILE [TENSOR]\n");
        return 2;
    }
    ckpt_file *f;
    ckpt_error err;
    if (ckpt_open(argv[1], NULL, &f, &err) != CKPT_OK) {
        char msg[768];
        fprintf(stderr, "%s\n", ckpt_error_format(&err, msg, sizeof msg));
        return 2;
    }
    /* the tree torch.load would return */
    const ckpt_value *epoch = ckpt_value_get(ckpt_file_root(f), "epoch");
    if (epoch)
        printf("epoch %lld\n", (long long)ckpt_value_int(epoch));

    const char *name = argc > 2 ? argv[2] : "model.net.0.weight";
    const ckpt_tensor *w = ckpt_file_find_tensor(f, name);
    if (w) {
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(w, &ti);
        const void *data; /* borrowed from the map until ckpt_close */
        bool zero_copy;
        if (ckpt_tensor_data(f, w, &data, &zero_copy, &err) == CKPT_OK && ti.dtype == CKPT_DTYPE_FLOAT32 &&
            ti.numel > 0)
            printf("%s: %s %s, first %g, zero-copy %d\n", name, ckpt_dtype_name(ti.dtype),
                   ti.is_contiguous ? "contiguous" : "strided", ((const float *)data)[0], zero_copy);
    }
    ckpt_close(f);
    return 0;
}
