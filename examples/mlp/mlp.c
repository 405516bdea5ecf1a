/*
 * mlp - the seed's example (examples/seed_train.py) in C, with nothing but
 * ckpt.h and libc: the same two-layer Net, trained with AdamW on synthetic
 * regression data, its checkpoints kept by the checkpoint manager in
 * PyTorch's layout. Training resumes from a last.pth that this program or
 * PyTorch wrote, and PyTorch loads what it saves (best.pth with
 * load_state_dict, the optimizer with AdamW.load_state_dict).
 *
 *   mlp train --dir DIR [--epochs N]   train, resuming from DIR when it holds a checkpoint
 *   mpirun -np N mlp train --dir DIR --sharded [--epochs N]
 *                                      the same data-parallel over N MPI ranks, the
 *                                      AdamW state and update split by rows (ZeRO
 *                                      stage 1), a DCP checkpoint per epoch
 *   mlp predict --weights FILE         outputs of the weights in FILE for a fixed batch
 *   mlp data --out FILE                the training and validation data, as safetensors
 *
 * Everything is deterministic: the same state gives bit-identical results,
 * so a run resumed at any epoch ends with the weights of an uninterrupted one.
 */
#include <ckpt.h>
#include <errno.h>
#ifdef CKPT_HAVE_MPI
#include <mpi.h>
#endif
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IN 32
#define HIDDEN 64
#define OUT 10
#define BATCH 32
#define TRAIN_ROWS 256
#define VAL_ROWS 64
#define MAX_ROWS 64 /* the most rows one forward pass takes */
#define PREDICT_ROWS 4

#define EXIT_MISMATCH 1 /* predict: the file's weights do not fit the Net */
#define EXIT_ERROR 2    /* any other error, and usage errors */

/* ------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------ */

/* Prints an error as "mlp: FILE: what was wrong" (FILE when known) and
 * gives the exit status for it. */
static int fail(const char *file, const ckpt_error *err)
{
    char msg[768];
    ckpt_error_format(err, msg, sizeof msg);
    if (file)
        fprintf(stderr, "mlp: %s: %s\n", file, msg);
    else
        fprintf(stderr, "mlp: %s\n", msg);
    return EXIT_ERROR;
}

/* The error of something that failed outside the library. */
static ckpt_status set_error(ckpt_error *err, ckpt_status status, const char *message)
{
    memset(err, 0, sizeof *err);
    err->status = status;
    err->offset = err->file_offset = CKPT_NO_OFFSET;
    snprintf(err->message, sizeof err->message, "%s", message);
    return status;
}

/* ------------------------------------------------------------------------
 * Random numbers: splitmix64, uniform and normal draws
 * ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1), 53 bits. */
static double uniform(uint64_t *state)
{
    return (double)(splitmix64(state) >> 11) * 0x1.0p-53;
}

/* n draws of N(0, 1) by Box-Muller, two per pair of uniforms. */
static void normal_fill(float *out, size_t n, uint64_t seed)
{
    const double two_pi = 6.283185307179586476925;
    uint64_t state = seed;
    for (size_t i = 0; i < n; i += 2) {
        double u1 = 1.0 - uniform(&state); /* (0, 1]: the log is finite */
        double u2 = uniform(&state);
        double r = sqrt(-2.0 * log(u1));
        out[i] = (float)(r * cos(two_pi * u2));
        if (i + 1 < n)
            out[i + 1] = (float)(r * sin(two_pi * u2));
    }
}

/* ------------------------------------------------------------------------
 * Data: y = (x @ Wt) * 0.1 for x ~ N(0, 1), as the seed makes it
 * ------------------------------------------------------------------------ */

typedef struct dataset {
    float train_x[TRAIN_ROWS * IN], train_y[TRAIN_ROWS * OUT];
    float val_x[VAL_ROWS * IN], val_y[VAL_ROWS * OUT];
} dataset;

static void make_targets(const float *x, int rows, const float *wt, float *y)
{
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < OUT; o++) {
            float s = 0;
            for (int k = 0; k < IN; k++)
                s += x[r * IN + k] * wt[k * OUT + o];
            y[r * OUT + o] = s * 0.1f;
        }
}

static void make_data(dataset *d)
{
    float wt[IN * OUT]; /* the true matrix, [32, 10] */
    normal_fill(wt, IN * OUT, 0);
    normal_fill(d->train_x, TRAIN_ROWS * IN, 1);
    normal_fill(d->val_x, VAL_ROWS * IN, 2);
    make_targets(d->train_x, TRAIN_ROWS, wt, d->train_y);
    make_targets(d->val_x, VAL_ROWS, wt, d->val_y);
}

/* ------------------------------------------------------------------------
 * The model: Linear(32, 64) -> ReLU -> Linear(64, 10)
 * ------------------------------------------------------------------------ */

typedef struct net {
    ckpt_model *model;
    /* where the parameters are now (the model's memory, or the file's
     * after a zero-copy load): looked up again after every load */
    float *w1, *b1, *w2, *b2;
} net;

/* Gradients, one per parameter, in model order. */
typedef struct grads {
    float w1[HIDDEN * IN], b1[HIDDEN], w2[OUT * HIDDEN], b2[OUT];
} grads;

static void net_bind(net *n)
{
    n->w1 = ckpt_model_data(n->model, 0);
    n->b1 = ckpt_model_data(n->model, 1);
    n->w2 = ckpt_model_data(n->model, 2);
    n->b2 = ckpt_model_data(n->model, 3);
}

/* The parameters under PyTorch's names, in state_dict() order, in memory
 * the model allocates. */
static ckpt_status net_new(net *n, ckpt_error *err)
{
    static const struct {
        const char *name;
        uint32_t ndim;
        int64_t shape[2];
    } params[] = {
        {"net.0.weight", 2, {HIDDEN, IN}},
        {"net.0.bias", 1, {HIDDEN}},
        {"net.2.weight", 2, {OUT, HIDDEN}},
        {"net.2.bias", 1, {OUT}},
    };
    memset(n, 0, sizeof *n);
    n->model = ckpt_model_new("Net");
    if (!n->model)
        return set_error(err, CKPT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < sizeof params / sizeof params[0]; i++) {
        ckpt_status st = ckpt_model_add(n->model, params[i].name, CKPT_DTYPE_FLOAT32, params[i].ndim,
                                        params[i].shape, NULL, 0, NULL, err);
        if (st != CKPT_OK)
            return st;
    }
    net_bind(n);
    return CKPT_OK;
}

/* nn.Linear's default initialization: kaiming_uniform_(a=sqrt(5)) for the
 * weight and the bias both come to U(-1/sqrt(fan_in), 1/sqrt(fan_in)). */
static void uniform_fill(float *p, int count, int fan_in, uint64_t *state)
{
    double bound = 1.0 / sqrt((double)fan_in);
    for (int i = 0; i < count; i++)
        p[i] = (float)((2.0 * uniform(state) - 1.0) * bound);
}

static void net_init(net *n)
{
    uint64_t state = 0;
    uniform_fill(n->w1, HIDDEN * IN, IN, &state);
    uniform_fill(n->b1, HIDDEN, IN, &state);
    uniform_fill(n->w2, OUT * HIDDEN, HIDDEN, &state);
    uniform_fill(n->b2, OUT, HIDDEN, &state);
}

/* out = W2 relu(W1 x + b1) + b2 for each of rows rows of x; h keeps the
 * hidden activations (after the ReLU) for the backward pass. */
static void forward(const net *n, const float *x, int rows, float *h, float *out)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + r * IN;
        float *hr = h + r * HIDDEN;
        for (int j = 0; j < HIDDEN; j++) {
            float s = n->b1[j];
            for (int k = 0; k < IN; k++)
                s += n->w1[j * IN + k] * xr[k];
            hr[j] = s > 0 ? s : 0;
        }
        for (int o = 0; o < OUT; o++) {
            float s = n->b2[o];
            for (int j = 0; j < HIDDEN; j++)
                s += n->w2[o * HIDDEN + j] * hr[j];
            out[r * OUT + o] = s;
        }
    }
}

/* Mean squared error over every element, as a float32 mean. */
static float mse(const float *out, const float *y, int count)
{
    double sum = 0;
    for (int i = 0; i < count; i++) {
        float d = out[i] - y[i];
        sum += (double)d * d;
    }
    return (float)(sum / count);
}

/* Gradients of the mean squared error of one batch. */
static void backward(const net *n, const float *x, const float *h, const float *out,
                     const float *y, int rows, grads *g)
{
    float dout[MAX_ROWS * OUT], dh[MAX_ROWS * HIDDEN];
    const float scale = 2.0f / (float)(rows * OUT);
    for (int i = 0; i < rows * OUT; i++)
        dout[i] = (out[i] - y[i]) * scale;

    for (int o = 0; o < OUT; o++) {
        float sb = 0;
        for (int r = 0; r < rows; r++)
            sb += dout[r * OUT + o];
        g->b2[o] = sb;
        for (int j = 0; j < HIDDEN; j++) {
            float s = 0;
            for (int r = 0; r < rows; r++)
                s += dout[r * OUT + o] * h[r * HIDDEN + j];
            g->w2[o * HIDDEN + j] = s;
        }
    }
    /* back through the second layer and the ReLU */
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < HIDDEN; j++) {
            float s = 0;
            if (h[r * HIDDEN + j] > 0)
                for (int o = 0; o < OUT; o++)
                    s += dout[r * OUT + o] * n->w2[o * HIDDEN + j];
            dh[r * HIDDEN + j] = s;
        }
    for (int j = 0; j < HIDDEN; j++) {
        float sb = 0;
        for (int r = 0; r < rows; r++)
            sb += dh[r * HIDDEN + j];
        g->b1[j] = sb;
        for (int k = 0; k < IN; k++) {
            float s = 0;
            for (int r = 0; r < rows; r++)
                s += dh[r * HIDDEN + j] * x[r * IN + k];
            g->w1[j * IN + k] = s;
        }
    }
}

/* ------------------------------------------------------------------------
 * mlp train
 * ------------------------------------------------------------------------ */

static void print_warning(void *user, const char *message)
{
    (void)user;
    fprintf(stderr, "warning: %s\n", message);
}

/* One epoch over the training data in order; *loss gets the mean of the
 * batch losses. */
static ckpt_status train_epoch(net *n, ckpt_adamw *opt, const dataset *d, double *loss,
                               ckpt_error *err)
{
    static grads g;
    float h[BATCH * HIDDEN], out[BATCH * OUT];
    const float *gs[4] = {g.w1, g.b1, g.w2, g.b2};
    double sum = 0;
    int batches = 0;
    for (int start = 0; start < TRAIN_ROWS; start += BATCH, batches++) {
        const float *x = d->train_x + start * IN, *y = d->train_y + start * OUT;
        forward(n, x, BATCH, h, out);
        sum += mse(out, y, BATCH * OUT);
        backward(n, x, h, out, y, BATCH, &g);
        ckpt_status st = ckpt_adamw_step(opt, gs, err);
        if (st != CKPT_OK)
            return st;
    }
    *loss = sum / batches;
    return CKPT_OK;
}

static double validate(const net *n, const dataset *d)
{
    float h[VAL_ROWS * HIDDEN], out[VAL_ROWS * OUT];
    forward(n, d->val_x, VAL_ROWS, h, out);
    return mse(out, d->val_y, VAL_ROWS * OUT); /* .item() of a float32 */
}

/* Restores the model, the optimizer and the epoch from a checkpoint in the
 * seed's layout; *next_epoch gets the epoch to train next. */
static ckpt_status restore(net *n, ckpt_adamw *opt, ckpt_file *f, int64_t *next_epoch,
                           ckpt_load_report *report, ckpt_error *err)
{
    ckpt_load_options lo;
    ckpt_load_options_default(&lo);
    lo.key = "model";
    ckpt_status st = ckpt_model_load(n->model, f, &lo, report, err);
    if (st != CKPT_OK)
        return st;
    net_bind(n);

    const ckpt_value *root = ckpt_file_root(f);
    const ckpt_value *state = ckpt_value_get(root, "optimizer");
    const ckpt_value *epoch = ckpt_value_get(root, "epoch");
    if (!state || !epoch || ckpt_value_kind(epoch) != CKPT_KIND_INT)
        return set_error(err, CKPT_ERR_NOT_FOUND,
                         "no \"optimizer\" state or no int \"epoch\" to resume from");
    if (ckpt_value_int(epoch) < 0 || ckpt_value_int(epoch) >= INT32_MAX)
        return set_error(err, CKPT_ERR_FORMAT, "\"epoch\" is out of range");
    st = ckpt_adamw_load(opt, f, state, err);
    if (st != CKPT_OK)
        return st;
    *next_epoch = ckpt_value_int(epoch) + 1;
    return CKPT_OK;
}

/* The checkpoint of one epoch, in the seed's layout, over the memory of
 * the model and the optimizer. */
static ckpt_value *checkpoint_value(ckpt_tree *t, const net *n, const ckpt_adamw *opt,
                                    int64_t epoch, double train_loss, double val_loss)
{
    ckpt_value *root = ckpt_new_dict(t);
    ckpt_value *metrics = ckpt_new_dict(t);
    ckpt_value *versions = ckpt_new_dict(t);
    ckpt_dict_put_str(t, root, "model", ckpt_model_state_dict(n->model, t));
    ckpt_dict_put_str(t, root, "optimizer", ckpt_adamw_state_dict(opt, t));
    ckpt_dict_put_str(t, root, "epoch", ckpt_new_int(t, epoch));
    ckpt_dict_put_str(t, metrics, "val_loss", ckpt_new_float(t, val_loss));
    ckpt_dict_put_str(t, metrics, "train_loss", ckpt_new_float(t, train_loss));
    ckpt_dict_put_str(t, root, "metrics", metrics);
    ckpt_dict_put_str(t, versions, "ckpt", ckpt_new_str(t, ckpt_version(), SIZE_MAX));
    ckpt_dict_put_str(t, versions, "format_version", ckpt_new_int(t, 3));
    ckpt_dict_put_str(t, root, "versions", versions);
    return root;
}

/* Starts the save of one epoch: the manager snapshots the model and the
 * optimizer, and writes while the next epoch trains (ckpt_manager_wait
 * says how it went). */
static ckpt_status save_epoch(ckpt_manager *m, const net *n, const ckpt_adamw *opt, int64_t epoch,
                              double train_loss, double val_loss, ckpt_error *err)
{
    ckpt_tree *t = ckpt_tree_new();
    if (!t)
        return set_error(err, CKPT_ERR_NOMEM, "out of memory");
    ckpt_value *root = checkpoint_value(t, n, opt, epoch, train_loss, val_loss);
    ckpt_metric metric = {"val_loss", val_loss};
    ckpt_status st = ckpt_tree_status(t, err);
    if (st == CKPT_OK)
        st = ckpt_manager_save_async(m, epoch, root, &metric, 1, 0, err);
    ckpt_tree_free(t);
    return st;
}

/* An epoch's line, once its checkpoint is committed. */
typedef struct epoch_line {
    int64_t epoch; /* -1: none waiting */
    double train_loss, val_loss;
} epoch_line;

static ckpt_status finish_epoch(ckpt_manager *m, epoch_line *l, ckpt_error *err)
{
    if (l->epoch < 0)
        return CKPT_OK;
    unsigned saved = 0;
    ckpt_status st = ckpt_manager_wait(m, &saved, err);
    if (st != CKPT_OK)
        return st;
    printf("epoch %lld: train_loss %.6f val_loss %.6f%s\n", (long long)l->epoch, l->train_loss,
           l->val_loss, saved & CKPT_SAVED_BEST ? " (best)" : "");
    fflush(stdout);
    l->epoch = -1;
    return CKPT_OK;
}

static int cmd_train(const char *dir, int64_t epochs)
{
    static dataset d;
    make_data(&d);
    int code = EXIT_ERROR;
    const char *where = NULL; /* the file an error is about */
    char resumed[4096] = "";
    net n;
    ckpt_adamw *opt = NULL;
    ckpt_manager *m = NULL;
    ckpt_error err;
    if (net_new(&n, &err) != CKPT_OK)
        goto failed;
    net_init(&n);
    ckpt_adamw_options ao;
    ckpt_adamw_options_default(&ao);
    if (ckpt_adamw_new(n.model, &ao, &opt, &err) != CKPT_OK)
        goto failed;

    ckpt_manager_options mo;
    ckpt_manager_options_default(&mo);
    mo.monitor = "val_loss";
    mo.mode = CKPT_MODE_MIN;
    mo.warn = print_warning;
    if (ckpt_manager_open(dir, &mo, &m, &err) != CKPT_OK)
        goto failed;

    int64_t first = 0;
    ckpt_file *f;
    ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
    ckpt_status st = ckpt_manager_resume(m, NULL, &f, &info, &err);
    if (st == CKPT_OK) {
        ckpt_load_report report = {.struct_size = sizeof(report)};
        snprintf(resumed, sizeof resumed, "%s/%s", dir, info.file);
        where = resumed;
        st = restore(&n, opt, f, &first, &report, &err);
        ckpt_close(f);
        if (st == CKPT_ERR_MISMATCH && report.message) {
            /* the whole report: err holds only its start */
            fprintf(stderr, "mlp: %s: %s\n", resumed, report.message);
            goto done;
        }
        if (st != CKPT_OK)
            goto failed;
        where = NULL;
        printf("Resuming at epoch %lld from %s\n", (long long)first, resumed);
    } else if (st != CKPT_ERR_NOT_FOUND) {
        goto failed;
    }
    if (first >= epochs) {
        printf("Nothing to do: epochs 0 to %lld are done\n", (long long)first - 1);
        code = 0;
        goto done;
    }

    /* each epoch's checkpoint is written while the next one trains; its
     * line is printed once it is committed */
    epoch_line line = {.epoch = -1};
    for (int64_t epoch = first; epoch < epochs; epoch++) {
        double train_loss, val_loss;
        if (train_epoch(&n, opt, &d, &train_loss, &err) != CKPT_OK)
            goto failed;
        val_loss = validate(&n, &d);
        if (finish_epoch(m, &line, &err) != CKPT_OK ||
            save_epoch(m, &n, opt, epoch, train_loss, val_loss, &err) != CKPT_OK)
            goto failed;
        line = (epoch_line){epoch, train_loss, val_loss};
    }
    if (finish_epoch(m, &line, &err) != CKPT_OK)
        goto failed;
    code = 0;
    goto done;
failed:
    code = fail(where, &err);
done:
    ckpt_manager_close(m);
    ckpt_adamw_free(opt);
    if (n.model)
        ckpt_model_free(n.model);
    return code;
}

#ifdef CKPT_HAVE_MPI
/* ------------------------------------------------------------------------
 * mlp train --sharded: data-parallel over MPI ranks, ZeRO stage 1
 *
 * Every rank holds the whole model and takes a slice of each batch; the
 * gradients are summed with MPI_Allreduce. Each parameter's rows are split
 * over the ranks: a rank keeps the AdamW state of its rows only, updates
 * them, and MPI_Allgatherv gives every rank the updated rows. The
 * checkpoint of each epoch is a DCP directory (ckpt_manager_save_dcp:
 * DIR/last.dcp, best.dcp) in which each rank saves its rows of every
 * parameter and of its optimizer state; a run resumes from it with any
 * number of ranks, each reading only its rows (ckpt_dcp_load_shard).
 * ------------------------------------------------------------------------ */

#define NPARAMS 4

typedef struct zero1 {
    int rank, size;
    int64_t rows[NPARAMS], cols[NPARAMS];
    int64_t r0[NPARAMS], nr[NPARAMS]; /* this rank's rows */
    float *exp_avg[NPARAMS], *exp_avg_sq[NPARAMS];
    int64_t step;
    ckpt_adamw_options ao;
} zero1;

static void rows_of(int64_t rows, int rank, int size, int64_t *r0, int64_t *nr)
{
    *r0 = rows * rank / size;
    *nr = rows * (rank + 1) / size - *r0;
}

/* AdamW (torch.optim.AdamW's arithmetic) on this rank's rows of each
 * parameter, then every rank gets every rank's rows. */
static void zero1_step(zero1 *z, net *n, const grads *g)
{
    float *params[NPARAMS] = {n->w1, n->b1, n->w2, n->b2};
    const float *gs[NPARAMS] = {g->w1, g->b1, g->w2, g->b2};
    const ckpt_adamw_options *o = &z->ao;
    z->step++;
    double bc1 = 1.0 - pow(o->beta1, (double)z->step), bc2 = 1.0 - pow(o->beta2, (double)z->step);
    float step_size = (float)(o->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    for (int p = 0; p < NPARAMS; p++) {
        int64_t first = z->r0[p] * z->cols[p], count = z->nr[p] * z->cols[p];
        for (int64_t i = 0; i < count; i++) {
            float *w = &params[p][first + i], grad = gs[p][first + i];
            float *m = &z->exp_avg[p][i], *v = &z->exp_avg_sq[p][i];
            *w *= (float)(1.0 - o->lr * o->weight_decay);
            *m += (grad - *m) * (float)(1.0 - o->beta1);
            *v = *v * (float)o->beta2 + (float)(1.0 - o->beta2) * grad * grad;
            *w -= step_size * (*m / (sqrtf(*v) / bc2_sqrt + (float)o->eps));
        }
        int counts[64], displs[64];
        for (int r = 0; r < z->size; r++) {
            int64_t r0, nr;
            rows_of(z->rows[p], r, z->size, &r0, &nr);
            counts[r] = (int)(nr * z->cols[p]);
            displs[r] = (int)(r0 * z->cols[p]);
        }
        MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, params[p], counts, displs, MPI_FLOAT,
                       MPI_COMM_WORLD);
    }
}

static const char *const PARAM_NAMES[NPARAMS] = {"net.0.weight", "net.0.bias", "net.2.weight",
                                                 "net.2.bias"};

/* A tensor over rows [r0, r0 + nr) of a [rows, cols] parameter (cols 1: a
 * bias), marked as this rank's chunk of it. */
static ckpt_value *chunk(ckpt_tree *t, ckpt_dcp_shards *shards, const float *base,
                         const zero1 *z, int p, ckpt_error *err)
{
    bool matrix = z->cols[p] > 1;
    int64_t shape[2] = {z->nr[p], z->cols[p]}, global[2] = {z->rows[p], z->cols[p]},
            offsets[2] = {z->r0[p], 0};
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = matrix ? 2 : 1;
    d.shape = shape;
    d.data = base;
    ckpt_value *v = ckpt_new_tensor(t, &d);
    if (v && ckpt_dcp_shards_add(shards, v, d.ndim, global, offsets, err) != CKPT_OK)
        return NULL;
    return v;
}

static ckpt_status save_sharded(ckpt_manager *m, const char *dir, const net *n, const zero1 *z,
                                int64_t epoch, double train_loss, double val_loss,
                                unsigned *saved, ckpt_error *err)
{
    ckpt_tree *t = ckpt_tree_new();
    ckpt_dcp_shards *shards = ckpt_dcp_shards_new();
    if (!t || !shards) {
        ckpt_tree_free(t);
        ckpt_dcp_shards_free(shards);
        return set_error(err, CKPT_ERR_NOMEM, "out of memory");
    }
    const float *params[NPARAMS] = {n->w1, n->b1, n->w2, n->b2};
    ckpt_value *root = ckpt_new_dict(t), *model = ckpt_new_dict(t), *optim = ckpt_new_dict(t);
    ckpt_value *state = ckpt_new_dict(t), *groups = ckpt_new_list(t), *group = ckpt_new_dict(t);
    ckpt_value *ids = ckpt_new_list(t), *metrics = ckpt_new_dict(t);
    ckpt_status st = CKPT_OK;
    for (int p = 0; p < NPARAMS && st == CKPT_OK; p++) {
        ckpt_append(t, ids, ckpt_new_int(t, p));
        if (z->nr[p] == 0)
            continue; /* more ranks than rows: nothing of it here */
        ckpt_value *w = chunk(t, shards, params[p] + z->r0[p] * z->cols[p], z, p, err);
        ckpt_value *ea = chunk(t, shards, z->exp_avg[p], z, p, err);
        ckpt_value *es = chunk(t, shards, z->exp_avg_sq[p], z, p, err);
        if (!w || !ea || !es) {
            st = err->status ? err->status : ckpt_tree_status(t, err);
            break;
        }
        ckpt_value *ps = ckpt_new_dict(t);
        ckpt_dict_put_str(t, ps, "step", ckpt_new_int(t, z->step));
        ckpt_dict_put_str(t, ps, "exp_avg", ea);
        ckpt_dict_put_str(t, ps, "exp_avg_sq", es);
        ckpt_dict_put(t, state, ckpt_new_int(t, p), ps);
        ckpt_dict_put_str(t, model, PARAM_NAMES[p], w);
    }
    ckpt_dict_put_str(t, group, "lr", ckpt_new_float(t, z->ao.lr));
    ckpt_dict_put_str(t, group, "eps", ckpt_new_float(t, z->ao.eps));
    ckpt_dict_put_str(t, group, "weight_decay", ckpt_new_float(t, z->ao.weight_decay));
    ckpt_dict_put_str(t, group, "params", ids);
    ckpt_append(t, groups, group);
    ckpt_dict_put_str(t, optim, "state", state);
    ckpt_dict_put_str(t, optim, "param_groups", groups);
    ckpt_dict_put_str(t, root, "model", model);
    ckpt_dict_put_str(t, root, "optimizer", optim);
    ckpt_dict_put_str(t, root, "epoch", ckpt_new_int(t, epoch));
    ckpt_dict_put_str(t, metrics, "val_loss", ckpt_new_float(t, val_loss));
    ckpt_dict_put_str(t, metrics, "train_loss", ckpt_new_float(t, train_loss));
    ckpt_dict_put_str(t, root, "metrics", metrics);
    if (st == CKPT_OK)
        st = ckpt_tree_status(t, err);
    ckpt_dcp_save_options o;
    ckpt_dcp_save_options_default(&o);
    o.shards = shards;
    ckpt_metric metric = {"val_loss", val_loss};
    /* every rank takes part even after an error of its own: the save then
     * fails everywhere */
    ckpt_error mine = *err;
    ckpt_status st2 = ckpt_manager_save_dcp(m, dir, epoch, st == CKPT_OK ? root : model, &o,
                                           &metric, 1, saved, err);
    if (st != CKPT_OK) {
        *err = mine;
        st2 = st;
    }
    ckpt_dcp_shards_free(shards);
    ckpt_tree_free(t);
    return st2;
}

/* Every rank reads the whole model and its rows of the optimizer state
 * from the DCP directory path; *next_epoch gets the epoch to train next. */
static ckpt_status restore_sharded(net *n, zero1 *z, const char *path, int64_t *next_epoch,
                                   ckpt_error *err)
{
    ckpt_file *f = NULL;
    ckpt_status st = ckpt_open(path, NULL, &f, err);
    if (st != CKPT_OK)
        return st;
    float *params[NPARAMS] = {n->w1, n->b1, n->w2, n->b2};
    char names[3 * NPARAMS][64];
    int64_t zero[2] = {0, 0}, whole[NPARAMS][2], off[NPARAMS][2], mine[NPARAMS][2];
    ckpt_region regions[3 * NPARAMS];
    size_t count = 0;
    for (int p = 0; p < NPARAMS; p++) {
        whole[p][0] = z->rows[p];
        whole[p][1] = z->cols[p];
        off[p][0] = z->r0[p];
        off[p][1] = 0;
        mine[p][0] = z->nr[p];
        mine[p][1] = z->cols[p];
        size_t all = (size_t)(z->rows[p] * z->cols[p]) * sizeof(float);
        size_t part = (size_t)(z->nr[p] * z->cols[p]) * sizeof(float);
        snprintf(names[count], 64, "model.%s", PARAM_NAMES[p]);
        regions[count] = (ckpt_region){names[count], zero, whole[p], params[p], all};
        count++;
        if (z->nr[p] == 0)
            continue;
        snprintf(names[count], 64, "optimizer.state.%d.exp_avg", p);
        regions[count] = (ckpt_region){names[count], off[p], mine[p], z->exp_avg[p], part};
        count++;
        snprintf(names[count], 64, "optimizer.state.%d.exp_avg_sq", p);
        regions[count] = (ckpt_region){names[count], off[p], mine[p], z->exp_avg_sq[p], part};
        count++;
    }
    st = ckpt_dcp_load_shard(f, regions, count, err);
    const ckpt_value *root = ckpt_file_root(f);
    const ckpt_value *epoch = ckpt_value_get(root, "epoch");
    const ckpt_value *s0 = ckpt_value_get(ckpt_value_get(ckpt_value_get(root, "optimizer"),
                                                         "state"), "0");
    const ckpt_value *step = ckpt_value_get(s0, "step");
    if (st == CKPT_OK && (!epoch || ckpt_value_kind(epoch) != CKPT_KIND_INT || !step ||
                          ckpt_value_kind(step) != CKPT_KIND_INT))
        st = set_error(err, CKPT_ERR_NOT_FOUND, "no int \"epoch\" or optimizer step to resume from");
    if (st == CKPT_OK) {
        *next_epoch = ckpt_value_int(epoch) + 1;
        z->step = ckpt_value_int(step);
    }
    ckpt_close(f);
    return st;
}

static int cmd_train_sharded(const char *dir, int64_t epochs)
{
    MPI_Init(NULL, NULL);
    static dataset d;
    static grads g;
    make_data(&d);
    zero1 z;
    memset(&z, 0, sizeof z);
    MPI_Comm_rank(MPI_COMM_WORLD, &z.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &z.size);
    int code = EXIT_ERROR;
    net n;
    ckpt_manager *m = NULL;
    ckpt_error err;
    memset(&err, 0, sizeof err);
    char resumed[4096] = "";
    if (z.size > 10) {
        if (z.rank == 0)
            fprintf(stderr, "mlp: --sharded takes at most 10 ranks (net.2.bias has 10 rows)\n");
        MPI_Finalize();
        return EXIT_ERROR;
    }
    if (net_new(&n, &err) != CKPT_OK)
        goto failed;
    net_init(&n);
    ckpt_adamw_options_default(&z.ao);
    const int64_t rows[NPARAMS] = {HIDDEN, HIDDEN, OUT, OUT}, cols[NPARAMS] = {IN, 1, HIDDEN, 1};
    for (int p = 0; p < NPARAMS; p++) {
        z.rows[p] = rows[p];
        z.cols[p] = cols[p];
        rows_of(rows[p], z.rank, z.size, &z.r0[p], &z.nr[p]);
        z.exp_avg[p] = calloc((size_t)(z.nr[p] * cols[p]) + 1, sizeof(float));
        z.exp_avg_sq[p] = calloc((size_t)(z.nr[p] * cols[p]) + 1, sizeof(float));
        if (!z.exp_avg[p] || !z.exp_avg_sq[p]) {
            set_error(&err, CKPT_ERR_NOMEM, "out of memory");
            goto failed;
        }
    }

    /* the coordinator keeps the directory and finds what to resume from */
    int found = 0;
    if (z.rank == 0) {
        ckpt_manager_options mo;
        ckpt_manager_options_default(&mo);
        mo.monitor = "val_loss";
        mo.mode = CKPT_MODE_MIN;
        mo.warn = print_warning;
        ckpt_status st = ckpt_manager_open(dir, &mo, &m, &err);
        ckpt_file *f = NULL;
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        if (st == CKPT_OK)
            st = ckpt_manager_resume(m, NULL, &f, &info, &err);
        if (st == CKPT_OK) {
            snprintf(resumed, sizeof resumed, "%s/%s", dir, info.file);
            found = 1;
            ckpt_close(f);
        } else if (st == CKPT_ERR_NOT_FOUND) {
            found = 0;
        } else {
            found = -1;
        }
    }
    MPI_Bcast(&found, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Bcast(resumed, (int)sizeof resumed, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (found < 0)
        goto failed;
    int64_t first = 0;
    if (found) {
        int ok = restore_sharded(&n, &z, resumed, &first, &err) == CKPT_OK, all = 0;
        MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (!all)
            goto failed;
        if (z.rank == 0)
            printf("Resuming at epoch %lld from %s on %d rank%s\n", (long long)first, resumed,
                   z.size, z.size == 1 ? "" : "s");
    }
    float *gflat = (float *)&g;
    const int gcount = (int)(sizeof g / sizeof(float));
    for (int64_t epoch = first; epoch < epochs; epoch++) {
        double sum = 0;
        int batches = 0;
        for (int start = 0; start < TRAIN_ROWS; start += BATCH, batches++) {
            int64_t l0, ln;
            rows_of(BATCH, z.rank, z.size, &l0, &ln);
            float h[BATCH * HIDDEN], out[BATCH * OUT];
            const float *x = d.train_x + (start + l0) * IN, *y = d.train_y + (start + l0) * OUT;
            double sq = 0;
            memset(&g, 0, sizeof g);
            if (ln > 0) {
                forward(&n, x, (int)ln, h, out);
                sq = (double)mse(out, y, (int)ln * OUT) * (double)(ln * OUT);
                backward(&n, x, h, out, y, (int)ln, &g);
                /* this slice's share of the whole batch's mean */
                for (int i = 0; i < gcount; i++)
                    gflat[i] *= (float)ln / (float)BATCH;
            }
            MPI_Allreduce(MPI_IN_PLACE, gflat, gcount, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            MPI_Allreduce(MPI_IN_PLACE, &sq, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
            sum += sq / (BATCH * OUT);
            zero1_step(&z, &n, &g);
        }
        double train_loss = sum / batches, val_loss = validate(&n, &d);
        unsigned saved = 0;
        if (save_sharded(m, dir, &n, &z, epoch, train_loss, val_loss, &saved, &err) != CKPT_OK)
            goto failed;
        if (z.rank == 0) {
            printf("epoch %lld: train_loss %.6f val_loss %.6f%s\n", (long long)epoch, train_loss,
                   val_loss, saved & CKPT_SAVED_BEST ? " (best)" : "");
            fflush(stdout);
        }
    }
    code = 0;
    goto done;
failed:
    code = fail(resumed[0] ? resumed : NULL, &err);
done:
    ckpt_manager_close(m);
    for (int p = 0; p < NPARAMS; p++) {
        free(z.exp_avg[p]);
        free(z.exp_avg_sq[p]);
    }
    if (n.model)
        ckpt_model_free(n.model);
    MPI_Finalize();
    return code;
}
#endif

/* ------------------------------------------------------------------------
 * mlp predict
 * ------------------------------------------------------------------------ */

static int cmd_predict(const char *path)
{
    float x[PREDICT_ROWS * IN], h[PREDICT_ROWS * HIDDEN], out[PREDICT_ROWS * OUT];
    for (int i = 0; i < PREDICT_ROWS * IN; i++)
        x[i] = (float)sin((double)i);

    int code = EXIT_ERROR;
    net n;
    ckpt_file *f = NULL;
    ckpt_error err;
    if (net_new(&n, &err) != CKPT_OK || ckpt_open(path, NULL, &f, &err) != CKPT_OK)
        goto failed;

    ckpt_load_options lo;
    ckpt_load_options_default(&lo); /* key NULL: the file's state dict */
    lo.flags = CKPT_LOAD_ZERO_COPY;  /* inference: borrow the file's bytes */
    ckpt_load_report report = {.struct_size = sizeof(report)};
    ckpt_status st = ckpt_model_load(n.model, f, &lo, &report, &err);
    if (st == CKPT_ERR_MISMATCH && report.message) {
        fprintf(stderr, "%s\n", report.message);
        code = EXIT_MISMATCH;
        goto done;
    }
    if (st != CKPT_OK)
        goto failed;
    net_bind(&n);

    forward(&n, x, PREDICT_ROWS, h, out);
    for (int r = 0; r < PREDICT_ROWS; r++)
        for (int o = 0; o < OUT; o++)
            printf("%.9g%c", out[r * OUT + o], o + 1 < OUT ? ' ' : '\n');
    code = 0;
    goto done;
failed:
    code = fail(path, &err);
done:
    if (n.model)
        ckpt_model_free(n.model); /* before the file its parameters borrow */
    ckpt_close(f);
    return code;
}

/* ------------------------------------------------------------------------
 * mlp data
 * ------------------------------------------------------------------------ */

static ckpt_value *float_tensor(ckpt_tree *t, const float *data, int64_t rows, int64_t cols)
{
    int64_t shape[2] = {rows, cols};
    ckpt_tensor_desc desc;
    ckpt_tensor_desc_init(&desc); /* float32, contiguous */
    desc.ndim = 2;
    desc.shape = shape;
    desc.data = data;
    return ckpt_new_tensor(t, &desc);
}

static int cmd_data(const char *path)
{
    static dataset d;
    make_data(&d);
    ckpt_error err;
    ckpt_tree *t = ckpt_tree_new();
    if (!t) {
        set_error(&err, CKPT_ERR_NOMEM, "out of memory");
        return fail(path, &err);
    }
    /* nested dicts: safetensors names them "train.x", "val.y", ... */
    ckpt_value *root = ckpt_new_dict(t), *train = ckpt_new_dict(t), *val = ckpt_new_dict(t);
    ckpt_dict_put_str(t, train, "x", float_tensor(t, d.train_x, TRAIN_ROWS, IN));
    ckpt_dict_put_str(t, train, "y", float_tensor(t, d.train_y, TRAIN_ROWS, OUT));
    ckpt_dict_put_str(t, val, "x", float_tensor(t, d.val_x, VAL_ROWS, IN));
    ckpt_dict_put_str(t, val, "y", float_tensor(t, d.val_y, VAL_ROWS, OUT));
    ckpt_dict_put_str(t, root, "train", train);
    ckpt_dict_put_str(t, root, "val", val);
    ckpt_status st = ckpt_tree_status(t, &err);
    if (st == CKPT_OK)
        st = ckpt_save_safetensors(path, root, NULL, &err);
    ckpt_tree_free(t);
    if (st != CKPT_OK)
        return fail(path, &err);
    printf("wrote %s\n", path);
    return 0;
}

/* ------------------------------------------------------------------------
 * Command line
 * ------------------------------------------------------------------------ */

static const char usage_text[] =
    "usage: mlp train --dir DIR [--epochs N]  train the seed's Net for epochs 0..N-1 (default 3),\n"
    "                                         resuming from DIR's last checkpoint\n"
    "       mpirun -np N mlp train --dir DIR --sharded [--epochs N]\n"
    "                                         the same over N MPI ranks (ZeRO stage 1), a DCP\n"
    "                                         directory per epoch (DIR/last.dcp), resuming\n"
    "                                         with any N\n"
    "       mlp predict --weights FILE        print the outputs of FILE's weights (.pth,\n"
    "                                         .safetensors or a DCP directory) for a fixed\n"
    "                                         4x32 batch\n"
    "       mlp data --out FILE               write the training and validation data as\n"
    "                                         safetensors (train.x, train.y, val.x, val.y)\n";

static int usage(void)
{
    fputs(usage_text, stderr);
    return EXIT_ERROR;
}

/* Reads "--name VALUE" pairs: values[i] gets the value of names[i]. */
static bool parse_options(int argc, char **argv, const char *const *names, const char **values,
                          int count)
{
    for (int i = 0; i < argc; i += 2) {
        int j = 0;
        while (j < count && strcmp(argv[i], names[j]) != 0)
            j++;
        if (j == count || i + 1 >= argc) {
            fprintf(stderr, "mlp: %s: %s\n", argv[i],
                    j == count ? "unknown option" : "needs a value");
            return false;
        }
        values[j] = argv[i + 1];
    }
    return true;
}

static bool parse_epochs(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 0) {
        fprintf(stderr, "mlp: --epochs: %s is not a count of epochs\n", s);
        return false;
    }
    *out = v;
    return true;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
    if (argc < 2)
        return usage();

    const char *cmd = argv[1];
    if (strcmp(cmd, "train") == 0) {
        static const char *const names[] = {"--dir", "--epochs"};
        const char *values[2] = {NULL, "3"};
        int64_t epochs;
        bool sharded = false;
        char *rest[8];
        int nrest = 0;
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--sharded") == 0)
                sharded = true;
            else if (nrest < 8)
                rest[nrest++] = argv[i];
            else
                return usage();
        }
        if (!parse_options(nrest, rest, names, values, 2) || !values[0] ||
            !parse_epochs(values[1], &epochs))
            return usage();
        if (sharded) {
#ifdef CKPT_HAVE_MPI
            return cmd_train_sharded(values[0], epochs);
#else
            fprintf(stderr, "mlp: --sharded needs MPI: this build has none (CKPT_MPI)\n");
            return EXIT_ERROR;
#endif
        }
        return cmd_train(values[0], epochs);
    }
    if (strcmp(cmd, "predict") == 0) {
        static const char *const names[] = {"--weights"};
        const char *values[1] = {NULL};
        if (!parse_options(argc - 2, argv + 2, names, values, 1) || !values[0])
            return usage();
        return cmd_predict(values[0]);
    }
    if (strcmp(cmd, "data") == 0) {
        static const char *const names[] = {"--out"};
        const char *values[1] = {NULL};
        if (!parse_options(argc - 2, argv + 2, names, values, 1) || !values[0])
            return usage();
        return cmd_data(values[0]);
    }
    fprintf(stderr, "mlp: unknown command %s\n", cmd);
    return usage();
}
