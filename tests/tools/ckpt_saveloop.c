/*
 * ckpt_saveloop DIR --steps N [--start S] [--elements E] [--keep-last K]
 *               [--keep-best K] [--monitor NAME] [--mode min|max] [--best-full]
 *               [--no-fsync] [--torch-version V] [--user-json JSON] [--resume]
 *               [--trend X] [--async]
 *
 * Test tool: a training loop that keeps DIR with the checkpoint manager.
 * For every step in [S, S+N) it saves the checkpoint
 *
 *   {"model": OrderedDict{"w": float32[E], w[i] = step + i*0.001f,
 *                         "b": float32[16], all step},
 *    "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "params": [0, 1]}]},
 *    "step": step, "metrics": {"val_loss": v},
 *    "rng_state": uint8[64], byte k = (step*31 + k) & 255,
 *    "user_bytes": b"ckpt-step-<step>"}
 *
 * with v = fmod(step * 0.6180339887, 1.0) - X * step (X from --trend,
 * default 0: a metric that jumps around; X > 0 makes it improve often),
 * also passed to the manager as the metric "val_loss", and prints
 * "saved STEP BITS" (the CKPT_SAVED_* bits) after each save. --resume
 * first resumes from DIR: it prints "resumed STEP" (the checkpoint's "step")
 * and continues from STEP+1, or prints "fresh" when there is nothing to
 * resume. --steps 0 only opens and closes the manager (which settles a
 * crashed save and removes temporaries). Warnings go to stderr as
 * "warning: ...". Exit 1 on an error (its text on stderr), 2 on bad usage.
 *
 * --async saves with ckpt_manager_save_async: the tree is freed and the
 * tensors' memory refilled for the next step while a save is written;
 * "saved STEP BITS" is printed once that save is done (ckpt_manager_wait,
 * after the next step's tensors are filled, before its save starts).
 */
#include <ckpt.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BIAS_LEN 16
#define RNG_LEN 64

static void usage(void)
{
    fprintf(stderr,
            "usage: ckpt_saveloop DIR --steps N [--start S] [--elements E] [--keep-last K]\n"
            "                     [--keep-best K] [--monitor NAME] [--mode min|max] [--best-full]\n"
            "                     [--no-fsync] [--torch-version V] [--user-json JSON] [--resume]\n"
            "                     [--trend X] [--async]\n");
}

static void on_warning(void *user, const char *message)
{
    (void)user;
    fprintf(stderr, "warning: %s\n", message);
    fflush(stderr);
}

static int parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    *out = (int64_t)v;
    return 0;
}

static double trend;

static double val_loss(int64_t step)
{
    return fmod((double)step * 0.6180339887, 1.0) - trend * (double)step;
}

static int fail(const ckpt_error *err)
{
    char msg[768];
    fprintf(stderr, "error: %s\n", ckpt_error_format(err, msg, sizeof(msg)));
    return 1;
}

/* Builds the checkpoint of one step in tree over the caller's buffers. */
static ckpt_value *build_checkpoint(ckpt_tree *t, int64_t step, float *w, int64_t elements,
                                    float *b, uint8_t *rng, char *text, size_t text_size)
{
    for (int64_t i = 0; i < elements; i++)
        w[i] = (float)step + (float)i * 0.001f;
    for (int i = 0; i < BIAS_LEN; i++)
        b[i] = (float)step;
    for (int k = 0; k < RNG_LEN; k++)
        rng[k] = (uint8_t)((step * 31 + k) & 255);
    int n = snprintf(text, text_size, "ckpt-step-%" PRId64, step);

    ckpt_tensor_desc d;
    int64_t wshape[1] = {elements}, bshape[1] = {BIAS_LEN}, rshape[1] = {RNG_LEN};
    ckpt_value *model = ckpt_new_ordered_dict(t);
    ckpt_tensor_desc_init(&d);
    d.ndim = 1, d.shape = wshape, d.data = w;
    ckpt_dict_put_str(t, model, "w", ckpt_new_tensor(t, &d));
    d.shape = bshape, d.data = b;
    ckpt_dict_put_str(t, model, "b", ckpt_new_tensor(t, &d));

    ckpt_value *group = ckpt_new_dict(t);
    ckpt_dict_put_str(t, group, "lr", ckpt_new_float(t, 0.001));
    ckpt_value *params = ckpt_new_list(t);
    ckpt_append(t, params, ckpt_new_int(t, 0));
    ckpt_append(t, params, ckpt_new_int(t, 1));
    ckpt_dict_put_str(t, group, "params", params);
    ckpt_value *groups = ckpt_new_list(t);
    ckpt_append(t, groups, group);
    ckpt_value *optimizer = ckpt_new_dict(t);
    ckpt_dict_put_str(t, optimizer, "state", ckpt_new_dict(t));
    ckpt_dict_put_str(t, optimizer, "param_groups", groups);

    ckpt_value *metrics = ckpt_new_dict(t);
    ckpt_dict_put_str(t, metrics, "val_loss", ckpt_new_float(t, val_loss(step)));

    ckpt_tensor_desc_init(&d);
    d.dtype = CKPT_DTYPE_UINT8, d.ndim = 1, d.shape = rshape, d.data = rng;

    ckpt_value *root = ckpt_new_dict(t);
    ckpt_dict_put_str(t, root, "model", model);
    ckpt_dict_put_str(t, root, "optimizer", optimizer);
    ckpt_dict_put_str(t, root, "step", ckpt_new_int(t, step));
    ckpt_dict_put_str(t, root, "metrics", metrics);
    ckpt_dict_put_str(t, root, "rng_state", ckpt_new_tensor(t, &d));
    ckpt_dict_put_str(t, root, "user_bytes", ckpt_new_bytes(t, text, n > 0 ? (size_t)n : 0));
    return root;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int64_t steps = -1, start = 0, elements = 4096, keep_last = 0, keep_best = 0;
    bool resume = false, async = false;
    ckpt_manager_options opts;
    ckpt_manager_options_default(&opts);
    opts.monitor = "val_loss";
    opts.mode = CKPT_MODE_MIN;
    opts.warn = on_warning;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (strcmp(a, "--resume") == 0) {
            resume = true;
        } else if (strcmp(a, "--async") == 0) {
            async = true;
        } else if (strcmp(a, "--best-full") == 0) {
            opts.flags |= CKPT_MANAGER_BEST_FULL;
        } else if (strcmp(a, "--no-fsync") == 0) {
            opts.save_flags |= CKPT_SAVE_NO_FSYNC;
        } else if (a[0] == '-' && a[1] == '-' && !v) {
            bad = 1;
        } else if (strcmp(a, "--steps") == 0) {
            bad = parse_int(v, 0, INT64_MAX / 2, &steps), i++;
        } else if (strcmp(a, "--start") == 0) {
            bad = parse_int(v, 0, INT64_MAX / 4, &start), i++;
        } else if (strcmp(a, "--elements") == 0) {
            bad = parse_int(v, 1, INT64_C(1) << 32, &elements), i++;
        } else if (strcmp(a, "--keep-last") == 0) {
            bad = parse_int(v, 0, 1000000, &keep_last), i++;
        } else if (strcmp(a, "--keep-best") == 0) {
            bad = parse_int(v, 0, 1000000, &keep_best), i++;
        } else if (strcmp(a, "--monitor") == 0) {
            opts.monitor = v, i++;
        } else if (strcmp(a, "--mode") == 0) {
            if (strcmp(v, "min") == 0)
                opts.mode = CKPT_MODE_MIN;
            else if (strcmp(v, "max") == 0)
                opts.mode = CKPT_MODE_MAX;
            else
                bad = 1;
            i++;
        } else if (strcmp(a, "--trend") == 0) {
            char *end;
            trend = strtod(v, &end);
            bad = end == v || *end || !isfinite(trend), i++;
        } else if (strcmp(a, "--torch-version") == 0) {
            opts.torch_version = v, i++;
        } else if (strcmp(a, "--user-json") == 0) {
            opts.user_metadata = v, i++;
        } else if (a[0] != '-' && !dir) {
            dir = a;
        } else {
            bad = 1;
        }
        if (bad) {
            fprintf(stderr, "ckpt_saveloop: bad argument '%s'\n", a);
            usage();
            return 2;
        }
    }
    if (!dir || steps < 0) {
        usage();
        return 2;
    }
    opts.keep_last = (unsigned)keep_last;
    opts.keep_best = (unsigned)keep_best;

    ckpt_error err;
    ckpt_manager *m = NULL;
    if (ckpt_manager_open(dir, &opts, &m, &err) != CKPT_OK)
        return fail(&err);

    if (resume) {
        ckpt_file *f = NULL;
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        ckpt_status st = ckpt_manager_resume(m, NULL, &f, &info, &err);
        if (st == CKPT_ERR_NOT_FOUND) {
            printf("fresh\n");
        } else if (st != CKPT_OK) {
            ckpt_manager_close(m);
            return fail(&err);
        } else {
            const ckpt_value *sv = ckpt_value_get(ckpt_file_root(f), "step");
            int64_t step = ckpt_value_kind(sv) == CKPT_KIND_INT ? ckpt_value_int(sv) : info.step;
            printf("resumed %" PRId64 "\n", step);
            start = step + 1;
            ckpt_close(f);
        }
        fflush(stdout);
    }

    float *w = malloc((size_t)elements * sizeof(float));
    float b[BIAS_LEN];
    uint8_t rng[RNG_LEN];
    char text[64];
    if (!w) {
        fprintf(stderr, "error: out of memory\n");
        ckpt_manager_close(m);
        return 1;
    }
    int rc = 0;
    int64_t in_flight = -1; /* --async: the step being written */
    for (int64_t step = start; step < start + steps; step++) {
        ckpt_tree *t = ckpt_tree_new();
        if (!t) {
            fprintf(stderr, "error: out of memory\n");
            rc = 1;
            break;
        }
        ckpt_value *root = build_checkpoint(t, step, w, elements, b, rng, text, sizeof(text));
        ckpt_metric metric = {"val_loss", val_loss(step)};
        unsigned saved = 0;
        if (async && in_flight >= 0) {
            if (ckpt_manager_wait(m, &saved, &err) != CKPT_OK) {
                ckpt_tree_free(t);
                rc = fail(&err);
                in_flight = -1;
                break;
            }
            printf("saved %" PRId64 " %u\n", in_flight, saved);
            fflush(stdout);
            in_flight = -1;
        }
        ckpt_status st = ckpt_tree_status(t, &err);
        if (st == CKPT_OK && async)
            st = ckpt_manager_save_async(m, step, root, &metric, 1, 0, &err);
        else if (st == CKPT_OK)
            st = ckpt_manager_save(m, step, root, &metric, 1, &saved, &err);
        ckpt_tree_free(t);
        if (st != CKPT_OK) {
            rc = fail(&err);
            break;
        }
        if (async) {
            in_flight = step;
            continue;
        }
        printf("saved %" PRId64 " %u\n", step, saved);
        fflush(stdout);
    }
    if (in_flight >= 0) {
        unsigned saved = 0;
        if (ckpt_manager_wait(m, &saved, &err) != CKPT_OK) {
            rc = fail(&err);
        } else {
            printf("saved %" PRId64 " %u\n", in_flight, saved);
            fflush(stdout);
        }
    }
    free(w);
    ckpt_manager_close(m);
    return rc;
}
