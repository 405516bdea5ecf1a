/*
 * st_write IN OUT [--meta KEY=VALUE]... [--progress] - test tool: saves the
 * tensors of IN (any readable file) as safetensors with ckpt_save_safetensors.
 * A safetensors IN passes its __metadata__ along as the options' metadata,
 * so a file written this way is written again byte for byte. --meta adds
 * an entry to the options' metadata; --progress prints every
 * progress call as "progress DONE TOTAL" on stdout. Exit 2 with the error on
 * stderr when IN cannot be read or OUT cannot be written.
 */
#include <ckpt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void on_progress(void *user, uint64_t done, uint64_t total)
{
    (void)user;
    printf("progress %llu %llu\n", (unsigned long long)done, (unsigned long long)total);
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    bool progress = false;
    char msg[768];
    ckpt_error err;
    ckpt_tree *tree = ckpt_tree_new();
    ckpt_value *meta = tree ? ckpt_new_dict(tree) : NULL;
    if (!meta) {
        fprintf(stderr, "st_write: out of memory\n");
        ckpt_tree_free(tree);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--progress") == 0) {
            progress = true;
        } else if (strcmp(argv[i], "--meta") == 0 && i + 1 < argc) {
            const char *kv = argv[++i], *eq = strchr(kv, '=');
            if (!eq) {
                fprintf(stderr, "st_write: --meta needs KEY=VALUE\n");
                ckpt_tree_free(tree);
                return 2;
            }
            ckpt_value *key = ckpt_new_str(tree, kv, (size_t)(eq - kv));
            ckpt_value *val = ckpt_new_str(tree, eq + 1, SIZE_MAX);
            ckpt_dict_put(tree, meta, key, val);
        } else if (!in) {
            in = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            in = NULL;
            break;
        }
    }
    if (!in || !out) {
        fprintf(stderr, "usage: st_write IN OUT [--meta KEY=VALUE]... [--progress]\n");
        ckpt_tree_free(tree);
        return 2;
    }
    ckpt_file *f;
    if (ckpt_open(in, NULL, &f, &err) != CKPT_OK) {
        fprintf(stderr, "st_write: %s: %s\n", in, ckpt_error_format(&err, msg, sizeof(msg)));
        ckpt_tree_free(tree);
        return 2;
    }
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    ckpt_value *all = ckpt_new_dict(tree);
    size_t nall = 0;
    if (fi.format == CKPT_FORMAT_SAFETENSORS && fi.metadata) {
        for (size_t i = 0; i < ckpt_value_len(fi.metadata); i++, nall++)
            ckpt_dict_put(tree, all, ckpt_value_key(fi.metadata, i),
                          ckpt_value_dict_value(fi.metadata, i));
    }
    for (size_t i = 0; i < ckpt_value_len(meta); i++, nall++)
        ckpt_dict_put(tree, all, ckpt_value_key(meta, i), ckpt_value_dict_value(meta, i));
    ckpt_save_options opts;
    ckpt_save_options_default(&opts);
    opts.flags |= CKPT_SAVE_NO_FSYNC;
    opts.metadata = nall ? all : NULL;
    if (progress)
        opts.progress = on_progress;
    int rc = 0;
    if (ckpt_tree_status(tree, &err) != CKPT_OK) {
        fprintf(stderr, "st_write: %s\n", ckpt_error_format(&err, msg, sizeof(msg)));
        rc = 2;
    } else if (ckpt_save_safetensors(out, ckpt_file_root(f), &opts, &err) != CKPT_OK) {
        fprintf(stderr, "st_write: %s: %s\n", out, ckpt_error_format(&err, msg, sizeof(msg)));
        rc = 2;
    }
    ckpt_close(f);
    ckpt_tree_free(tree);
    return rc;
}
