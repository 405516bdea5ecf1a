/*
 * consumer OUT.pth - a program built against an installed libckpt (by
 * pkg-config, by find_package): writes a checkpoint, reads it back, prints
 * the library's version and what it read.
 */
#include <ckpt.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: consumer OUT.pth\n");
        return 2;
    }
    float w[3] = {1.5f, 2.5f, 3.5f};
    int64_t shape[1] = {3};
    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = 1, d.shape = shape, d.data = w;
    ckpt_dict_put_str(t, root, "w", ckpt_new_tensor(t, &d));
    ckpt_dict_put_str(t, root, "epoch", ckpt_new_int(t, 7));

    ckpt_error err;
    char msg[768];
    ckpt_file *f = NULL;
    if (ckpt_tree_status(t, &err) != CKPT_OK || ckpt_save_torch(argv[1], root, NULL, &err) != CKPT_OK ||
        ckpt_open(argv[1], NULL, &f, &err) != CKPT_OK) {
        fprintf(stderr, "%s\n", ckpt_error_format(&err, msg, sizeof msg));
        ckpt_tree_free(t);
        return 1;
    }
    ckpt_tree_free(t);
    const ckpt_value *epoch = ckpt_value_get(ckpt_file_root(f), "epoch");
    const ckpt_tensor *wt = ckpt_file_find_tensor(f, "w");
    const void *data = NULL;
    bool zero_copy;
    int ok = epoch && ckpt_value_int(epoch) == 7 && wt &&
             ckpt_tensor_data(f, wt, &data, &zero_copy, &err) == CKPT_OK &&
             memcmp(data, w, sizeof w) == 0;
    printf("libckpt %s (header %s): epoch %lld, w %s\n", ckpt_version(), CKPT_VERSION_STRING,
           epoch ? (long long)ckpt_value_int(epoch) : -1LL, ok ? "read back" : "WRONG");
    ckpt_close(f);
    return ok && strcmp(ckpt_version(), CKPT_VERSION_STRING) == 0 ? 0 : 1;
}
