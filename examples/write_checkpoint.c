/*
 * write_checkpoint OUT - the README's writing example: a training
 * checkpoint built from C memory, saved as a file torch.load reads.
 */
#include <ckpt.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: write_checkpoint OUT.pth\n");
        return 2;
    }
    /* the model's memory: borrowed by the tree, never copied */
    float weight[2][3] = {{1, 2, 3}, {4, 5, 6}};
    float bias[2] = {0.5f, -0.5f};

    ckpt_tree *t = ckpt_tree_new();
    ckpt_value *model = ckpt_new_ordered_dict(t); /* what state_dict() returns */
    int64_t wshape[2] = {2, 3}, bshape[1] = {2};
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d); /* float32, contiguous, "cpu" */
    d.ndim = 2, d.shape = wshape, d.data = weight;
    ckpt_dict_put_str(t, model, "fc.weight", ckpt_new_tensor(t, &d));
    d.ndim = 1, d.shape = bshape, d.data = bias;
    ckpt_dict_put_str(t, model, "fc.bias", ckpt_new_tensor(t, &d));

    ckpt_value *root = ckpt_new_dict(t);
    ckpt_dict_put_str(t, root, "model", model);
    ckpt_dict_put_str(t, root, "epoch", ckpt_new_int(t, 7));
    ckpt_value *metrics = ckpt_new_dict(t);
    ckpt_dict_put_str(t, metrics, "val_loss", ckpt_new_float(t, 0.125));
    ckpt_dict_put_str(t, root, "metrics", metrics);

    ckpt_error err;
    char msg[768];
    /* one check for every constructor above, then the crash-safe save */
    if (ckpt_tree_status(t, &err) != CKPT_OK ||
        ckpt_save_torch(argv[1], root, NULL, &err) != CKPT_OK) {
        fprintf(stderr, "%s\n", ckpt_error_format(&err, msg, sizeof msg));
        ckpt_tree_free(t);
        return 2;
    }
    ckpt_tree_free(t);
    printf("wrote %s\n", argv[1]);
    return 0;
}
