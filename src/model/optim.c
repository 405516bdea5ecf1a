/*
 * optim.c - AdamW over a C model's parameters, with its state in the layout
 * of torch.optim.Optimizer.state_dict(), so that training moves between C
 * and PyTorch mid-run.
 *
 * The update is torch.optim.AdamW's single-tensor path, in float32 with the
 * scalar factors PyTorch computes in double:
 *   param *= 1 - lr * weight_decay
 *   exp_avg = exp_avg * beta1 + grad * (1 - beta1)
 *   exp_avg_sq = exp_avg_sq * beta2 + grad * grad * (1 - beta2)
 *   denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
 *   param -= lr / (1 - beta1^step) * exp_avg / denom
 * (amsgrad uses the running maximum of exp_avg_sq in denom).
 */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct adamw_param {
    size_t model_index;
    uint64_t numel;
    uint32_t ndim;
    int64_t shape[CKPT_MODEL_MAX_NDIM];
    float *exp_avg;
    float *exp_avg_sq;
    float *max_exp_avg_sq;   /* amsgrad only */
    int64_t step;            /* 0: no state yet */
    float step_value;        /* step as the float32 tensor PyTorch keeps */
    bool fresh;              /* state allocated by the step in progress */
} adamw_param;

struct ckpt_adamw {
    ckpt_model *model;
    ckpt_adamw_options o;
    adamw_param *params;
    size_t count;
};

void ckpt_adamw_options_default(ckpt_adamw_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
    opts->lr = 1e-3;
    opts->beta1 = 0.9;
    opts->beta2 = 0.999;
    opts->eps = 1e-8;
    opts->weight_decay = 1e-2;
}

static void free_state(adamw_param *p)
{
    free(p->exp_avg);
    free(p->exp_avg_sq);
    free(p->max_exp_avg_sq);
    p->exp_avg = p->exp_avg_sq = p->max_exp_avg_sq = NULL;
}

void ckpt_adamw_free(ckpt_adamw *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->count; i++)
        free_state(&o->params[i]);
    free(o->params);
    free(o);
}

static ckpt_status check_options(const ckpt_adamw_options *o, ckpt_error *err)
{
    if (!(o->lr >= 0) || !(o->eps >= 0) || !(o->weight_decay >= 0) || !(o->beta1 >= 0) ||
        !(o->beta1 < 1) || !(o->beta2 >= 0) || !(o->beta2 < 1) || !isfinite(o->lr) ||
        !isfinite(o->eps) || !isfinite(o->weight_decay))
        return CKPT_INVALID_ARG(err,
                                "AdamW: invalid hyperparameters (lr %g, betas (%g, %g), eps %g, "
                                "weight_decay %g)",
                                o->lr, o->beta1, o->beta2, o->eps, o->weight_decay);
    return CKPT_OK;
}

ckpt_status ckpt_adamw_new(ckpt_model *m, const ckpt_adamw_options *opts, ckpt_adamw **out,
                           ckpt_error *err)
{
    if (out)
        *out = NULL;
    if (!m || !out)
        return CKPT_INVALID_ARG(err, "ckpt_adamw_new needs a model and an output");
    ckpt_adamw_options o;
    ckpt_adamw_options_default(&o);
    ckpt__struct_in(&o, sizeof(o), opts);
    CKPT_RETURN_IF_ERROR(check_options(&o, err));
    ckpt_adamw *a = calloc(1, sizeof(*a));
    size_t n = ckpt_model_count(m);
    if (!a || !(a->params = calloc(n ? n : 1, sizeof(adamw_param)))) {
        free(a);
        return ckpt__nomem(err);
    }
    a->model = m;
    a->o = o;
    for (size_t i = 0; i < n; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        ckpt_model_param(m, i, &info);
        if (info.is_buffer || info.is_extra_state)
            continue;
        if (info.dtype != CKPT_DTYPE_FLOAT32) {
            ckpt_adamw_free(a);
            return ckpt__fail(err, CKPT_ERR_TYPE, "", CKPT_NO_OFFSET,
                              "AdamW: parameter \"%s\" is %s; ckpt's AdamW updates float32",
                              info.name, ckpt_dtype_name(info.dtype));
        }
        adamw_param *p = &a->params[a->count++];
        p->model_index = i;
        p->numel = info.numel;
        p->ndim = info.ndim;
        memcpy(p->shape, info.shape, info.ndim * sizeof(int64_t));
    }
    *out = a;
    return CKPT_OK;
}

void ckpt_adamw_get_options(const ckpt_adamw *o, ckpt_adamw_options *opts)
{
    if (o)
        ckpt__struct_out(opts, &o->o, sizeof(o->o));
}

ckpt_status ckpt_adamw_set_lr(ckpt_adamw *o, double lr)
{
    if (!o || !(lr >= 0) || !isfinite(lr))
        return CKPT_ERR_INVALID_ARG;
    o->o.lr = lr;
    return CKPT_OK;
}

int64_t ckpt_adamw_param_step(const ckpt_adamw *o, size_t i)
{
    return o && i < o->count ? o->params[i].step : 0;
}

static float *zeros(uint64_t numel)
{
    if (numel > SIZE_MAX / sizeof(float))
        return NULL;
    return calloc(numel ? (size_t)numel : 1, sizeof(float));
}

ckpt_status ckpt_adamw_step(ckpt_adamw *o, const float *const *grads, ckpt_error *err)
{
    if (!o || !grads)
        return CKPT_INVALID_ARG(err, "ckpt_adamw_step needs an optimizer and gradients");
    for (size_t i = 0; i < o->count; i++) {
        ckpt_param_info info = {.struct_size = sizeof(info)};
        ckpt_model_param(o->model, o->params[i].model_index, &info);
        if (grads[i] && (info.borrowed || info.placed || !info.data))
            return CKPT_INVALID_ARG(err, "AdamW: parameter \"%s\" is not in its host memory (%s)",
                                    info.name,
                                    info.borrowed ? "borrowed from a file"
                                    : info.placed ? "placed by the caller"
                                                  : "a description only");
    }
    /* state for first steps, all or nothing, so that running out of memory
     * changes nothing */
    for (size_t i = 0; i < o->count; i++) {
        adamw_param *p = &o->params[i];
        if (!grads[i] || p->exp_avg)
            continue;
        p->fresh = true;
        p->exp_avg = zeros(p->numel);
        p->exp_avg_sq = zeros(p->numel);
        if (o->o.amsgrad)
            p->max_exp_avg_sq = zeros(p->numel);
        if (!p->exp_avg || !p->exp_avg_sq || (o->o.amsgrad && !p->max_exp_avg_sq)) {
            for (size_t j = 0; j <= i; j++)
                if (o->params[j].fresh) {
                    free_state(&o->params[j]);
                    o->params[j].fresh = false;
                }
            return ckpt__nomem(err);
        }
    }
    for (size_t i = 0; i < o->count; i++)
        o->params[i].fresh = false;
    const double lr = o->o.lr, beta1 = o->o.beta1, beta2 = o->o.beta2;
    const float decay = (float)(1.0 - lr * o->o.weight_decay);
    const float b1 = (float)beta1, one_b1 = (float)(1.0 - beta1);
    const float b2 = (float)beta2, one_b2 = (float)(1.0 - beta2);
    const float eps = (float)o->o.eps;
    for (size_t i = 0; i < o->count; i++) {
        adamw_param *p = &o->params[i];
        const float *g = grads[i];
        if (!g)
            continue;
        float *w = ckpt_model_data(o->model, p->model_index);
        p->step++;
        p->step_value = (float)p->step;
        const double step = (double)p->step_value;
        const double bc1 = 1.0 - pow(beta1, step);
        const double bc2 = 1.0 - pow(beta2, step);
        const float neg_step_size = (float)-(lr / bc1);
        const float bc2_sqrt = (float)sqrt(bc2);
        float *m = p->exp_avg, *v = p->exp_avg_sq, *vmax = p->max_exp_avg_sq;
        const bool maximize = o->o.maximize;
        for (uint64_t k = 0; k < p->numel; k++) {
            const float gk = maximize ? -g[k] : g[k];
            w[k] *= decay;
            m[k] = m[k] * b1 + gk * one_b1;
            v[k] = v[k] * b2 + one_b2 * gk * gk;
            float s = v[k];
            if (vmax) {
                if (vmax[k] < s || s != s)
                    vmax[k] = s;
                s = vmax[k];
            }
            const float denom = sqrtf(s) / bc2_sqrt + eps;
            w[k] += neg_step_size * (m[k] / denom);
        }
    }
    return CKPT_OK;
}

/* ---- state dict ------------------------------------------------------- */

static ckpt_value *float_tensor(ckpt_tree *tree, const float *data, uint32_t ndim,
                                const int64_t *shape, uint64_t numel)
{
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.dtype = CKPT_DTYPE_FLOAT32;
    d.ndim = ndim;
    d.shape = shape;
    d.data = data;
    d.storage_nbytes = numel * sizeof(float);
    return ckpt_new_tensor(tree, &d);
}

static ckpt_status put(ckpt_tree *tree, ckpt_value *d, const char *key, const ckpt_value *v)
{
    return v ? ckpt_dict_put_str(tree, d, key, v) : CKPT_ERR_NOMEM;
}

ckpt_value *ckpt_adamw_state_dict(const ckpt_adamw *o, ckpt_tree *tree)
{
    ckpt_value *root = ckpt_new_dict(tree);
    ckpt_value *state = ckpt_new_dict(tree);
    ckpt_value *groups = ckpt_new_list(tree);
    ckpt_value *g = ckpt_new_dict(tree);
    ckpt_value *params = ckpt_new_list(tree);
    ckpt_value *betas = ckpt_new_tuple(tree);
    if (!o || !root || !state || !groups || !g || !params || !betas)
        return NULL;
    for (size_t i = 0; i < o->count; i++) {
        const adamw_param *p = &o->params[i];
        if (ckpt_append(tree, params, ckpt_new_int(tree, (int64_t)i)) != CKPT_OK)
            return NULL;
        if (!p->exp_avg)
            continue;
        ckpt_value *s = ckpt_new_dict(tree);
        if (!s || put(tree, s, "step", float_tensor(tree, &p->step_value, 0, NULL, 1)) ||
            put(tree, s, "exp_avg", float_tensor(tree, p->exp_avg, p->ndim, p->shape, p->numel)) ||
            put(tree, s, "exp_avg_sq",
                float_tensor(tree, p->exp_avg_sq, p->ndim, p->shape, p->numel)) ||
            (p->max_exp_avg_sq &&
             put(tree, s, "max_exp_avg_sq",
                 float_tensor(tree, p->max_exp_avg_sq, p->ndim, p->shape, p->numel))) ||
            ckpt_dict_put(tree, state, ckpt_new_int(tree, (int64_t)i), s) != CKPT_OK)
            return NULL;
    }
    if (ckpt_append(tree, betas, ckpt_new_float(tree, o->o.beta1)) ||
        ckpt_append(tree, betas, ckpt_new_float(tree, o->o.beta2)) ||
        put(tree, g, "lr", ckpt_new_float(tree, o->o.lr)) || put(tree, g, "betas", betas) ||
        put(tree, g, "eps", ckpt_new_float(tree, o->o.eps)) ||
        put(tree, g, "weight_decay", ckpt_new_float(tree, o->o.weight_decay)) ||
        put(tree, g, "amsgrad", ckpt_new_bool(tree, o->o.amsgrad)) ||
        put(tree, g, "foreach", ckpt_new_none(tree)) ||
        put(tree, g, "maximize", ckpt_new_bool(tree, o->o.maximize)) ||
        put(tree, g, "capturable", ckpt_new_bool(tree, false)) ||
        put(tree, g, "differentiable", ckpt_new_bool(tree, false)) ||
        put(tree, g, "fused", ckpt_new_none(tree)) || put(tree, g, "params", params) ||
        ckpt_append(tree, groups, g) || put(tree, root, "state", state) ||
        put(tree, root, "param_groups", groups))
        return NULL;
    return root;
}

/* ---- loading ---------------------------------------------------------- */

static bool is_dict(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    return k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
}

static bool number(const ckpt_value *v, double *out)
{
    ckpt_kind k = ckpt_value_kind(v);
    if (k == CKPT_KIND_FLOAT || k == CKPT_KIND_INT) {
        *out = ckpt_value_float(v);
        return true;
    }
    return false;
}

#define load_fail(err, fmt, what) ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET, fmt, what)

/* Reads a state tensor of parameter p into a fresh float32 array. */
static ckpt_status read_state_tensor(ckpt_file *f, const ckpt_value *v, const adamw_param *p,
                                     size_t i, const char *name, float **out, ckpt_error *err)
{
    *out = NULL;
    if (ckpt_value_kind(v) != CKPT_KIND_TENSOR)
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "optimizer state %zu: \"%s\" is missing or not a tensor", i, name);
    const ckpt_tensor *t = ckpt_value_tensor(v);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    bool same = ti.ndim == p->ndim && ti.layout == CKPT_LAYOUT_STRIDED && ti.has_storage;
    for (uint32_t d = 0; same && d < p->ndim; d++)
        same = ti.shape[d] == p->shape[d];
    if (!same)
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "optimizer state %zu: \"%s\" does not have its parameter's shape", i,
                          name);
    if (ti.dtype != CKPT_DTYPE_FLOAT32 && !ckpt__dtype_castable(ti.dtype))
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "optimizer state %zu: \"%s\" is %s, not a floating dtype", i, name,
                          ckpt_dtype_name(ti.dtype));
    float *dst = zeros(p->numel);
    if (!dst)
        return ckpt__nomem(err);
    ckpt_status st = CKPT_OK;
    if (p->numel) {
        size_t es = ckpt_dtype_size(ti.dtype);
        void *tmp = ti.dtype == CKPT_DTYPE_FLOAT32 ? (void *)dst : malloc((size_t)p->numel * es);
        if (!tmp)
            st = ckpt__nomem(err);
        else
            st = ckpt__tensor_copy(f, t, tmp, (size_t)p->numel * es, err);
        if (st == CKPT_OK && tmp != dst)
            st = ckpt_convert_dtype(CKPT_DTYPE_FLOAT32, dst, ti.dtype, tmp, (size_t)p->numel);
        if (tmp != dst)
            free(tmp);
    }
    if (st != CKPT_OK) {
        free(dst);
        return st;
    }
    *out = dst;
    return CKPT_OK;
}

static ckpt_status read_step(ckpt_file *f, const ckpt_value *v, size_t i, int64_t *out,
                             ckpt_error *err)
{
    double d;
    if (ckpt_value_kind(v) == CKPT_KIND_TENSOR) {
        const ckpt_tensor *t = ckpt_value_tensor(v);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        if (ti.numel != 1 || ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage)
            return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                              "optimizer state %zu: \"step\" is not a single number", i);
        union {
            double f64;
            float f32;
            int64_t i64;
            int32_t i32;
            uint8_t b[16];
        } u;
        memset(&u, 0, sizeof(u));
        size_t es = ckpt_dtype_size(ti.dtype);
        if (es == 0 || es > sizeof(u))
            return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                              "optimizer state %zu: \"step\" has dtype %s", i,
                              ckpt_dtype_name(ti.dtype));
        CKPT_RETURN_IF_ERROR(ckpt__tensor_copy(f, t, u.b, es, err));
        switch (ti.dtype) {
        case CKPT_DTYPE_FLOAT32: d = u.f32; break;
        case CKPT_DTYPE_FLOAT64: d = u.f64; break;
        case CKPT_DTYPE_INT64: d = (double)u.i64; break;
        case CKPT_DTYPE_INT32: d = u.i32; break;
        default:
            return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                              "optimizer state %zu: \"step\" has dtype %s", i,
                              ckpt_dtype_name(ti.dtype));
        }
    } else if (!number(v, &d)) {
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "optimizer state %zu: \"step\" is missing or not a number", i);
    }
    if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d))
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "optimizer state %zu: \"step\" is %g, not a count", i, d);
    *out = (int64_t)d;
    return CKPT_OK;
}

typedef struct id_slot {
    int64_t id;
    size_t index;
} id_slot;

static int id_cmp(const void *a, const void *b)
{
    int64_t x = ((const id_slot *)a)->id, y = ((const id_slot *)b)->id;
    return (x > y) - (x < y);
}

ckpt_status ckpt_adamw_load(ckpt_adamw *o, ckpt_file *f, const ckpt_value *sd, ckpt_error *err)
{
    if (!o || !f)
        return CKPT_INVALID_ARG(err, "ckpt_adamw_load needs an optimizer and a file");
    if (!is_dict(sd))
        return load_fail(err, "the optimizer state dict is %s, not a dict",
                         sd ? ckpt_kind_name(ckpt_value_kind(sd)) : "missing");
    const ckpt_value *state = ckpt_value_get(sd, "state");
    const ckpt_value *groups = ckpt_value_get(sd, "param_groups");
    ckpt_kind gk = ckpt_value_kind(groups);
    if (!is_dict(state) || (gk != CKPT_KIND_LIST && gk != CKPT_KIND_TUPLE))
        return load_fail(err, "the optimizer state dict lacks %s",
                         is_dict(state) ? "\"param_groups\"" : "\"state\"");
    if (ckpt_value_len(groups) != 1)
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "loaded state dict has %zu parameter groups, the optimizer has 1",
                          ckpt_value_len(groups));
    const ckpt_value *g = ckpt_value_item(groups, 0);
    const ckpt_value *ids = ckpt_value_get(g, "params");
    ckpt_kind ik = ckpt_value_kind(ids);
    if (!is_dict(g) || (ik != CKPT_KIND_LIST && ik != CKPT_KIND_TUPLE))
        return load_fail(err, "%s", "the optimizer's parameter group has no \"params\" list");
    if (ckpt_value_len(ids) != o->count)
        return ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                          "loaded state dict contains a parameter group that doesn't match the "
                          "size of optimizer's group (%zu parameters, the optimizer has %zu)",
                          ckpt_value_len(ids), o->count);

    ckpt_adamw_options opt = o->o;
    double b1, b2;
    const ckpt_value *betas = ckpt_value_get(g, "betas");
    if (!number(ckpt_value_get(g, "lr"), &opt.lr) || !number(ckpt_value_get(g, "eps"), &opt.eps) ||
        !number(ckpt_value_get(g, "weight_decay"), &opt.weight_decay) ||
        ckpt_value_len(betas) != 2 || !number(ckpt_value_item(betas, 0), &b1) ||
        !number(ckpt_value_item(betas, 1), &b2))
        return load_fail(err, "%s",
                         "the optimizer's parameter group lacks a number among lr, betas, eps, "
                         "weight_decay");
    opt.beta1 = b1;
    opt.beta2 = b2;
    const ckpt_value *ams = ckpt_value_get(g, "amsgrad");
    const ckpt_value *max = ckpt_value_get(g, "maximize");
    opt.amsgrad = ams && ckpt_value_kind(ams) == CKPT_KIND_BOOL && ckpt_value_bool(ams);
    opt.maximize = max && ckpt_value_kind(max) == CKPT_KIND_BOOL && ckpt_value_bool(max);
    CKPT_RETURN_IF_ERROR(check_options(&opt, err));

    /* file ids -> our parameters; a state entry is keyed by a file id */
    size_t n = o->count;
    adamw_param *next = calloc(n ? n : 1, sizeof(adamw_param));
    id_slot *file_ids = calloc(n ? n : 1, sizeof(id_slot));
    ckpt_status st = CKPT_OK;
    if (!next || !file_ids) {
        st = ckpt__nomem(err);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        next[i] = o->params[i];
        next[i].exp_avg = next[i].exp_avg_sq = next[i].max_exp_avg_sq = NULL;
        next[i].step = 0;
        next[i].step_value = 0;
        const ckpt_value *id = ckpt_value_item(ids, i);
        if (ckpt_value_kind(id) != CKPT_KIND_INT) {
            st = load_fail(err, "%s", "the optimizer's \"params\" are not all ints");
            goto out;
        }
        file_ids[i] = (id_slot){ckpt_value_int(id), i};
    }
    qsort(file_ids, n, sizeof(id_slot), id_cmp);
    for (size_t i = 1; i < n; i++)
        if (file_ids[i].id == file_ids[i - 1].id) {
            st = ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                            "parameter id %lld appears twice in the optimizer's group",
                            (long long)file_ids[i].id);
            goto out;
        }
    size_t ns = ckpt_value_len(state);
    for (size_t k = 0; k < ns; k++) {
        const ckpt_value *key = ckpt_value_key(state, k);
        const ckpt_value *s = ckpt_value_dict_value(state, k);
        if (ckpt_value_kind(key) != CKPT_KIND_INT || !is_dict(s)) {
            st = load_fail(err, "%s", "optimizer state entries must be int -> dict");
            goto out;
        }
        id_slot want = {ckpt_value_int(key), 0};
        const id_slot *hit = bsearch(&want, file_ids, n, sizeof(id_slot), id_cmp);
        if (!hit) /* state of a parameter not in the group: torch drops it too */
            continue;
        int64_t id = want.id;
        size_t i = hit->index;
        adamw_param *p = &next[i];
        if (p->exp_avg) {
            st = ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                            "optimizer state %lld appears twice", (long long)id);
            goto out;
        }
        st = read_step(f, ckpt_value_get(s, "step"), i, &p->step, err);
        if (st == CKPT_OK)
            st = read_state_tensor(f, ckpt_value_get(s, "exp_avg"), p, i, "exp_avg", &p->exp_avg,
                                   err);
        if (st == CKPT_OK)
            st = read_state_tensor(f, ckpt_value_get(s, "exp_avg_sq"), p, i, "exp_avg_sq",
                                   &p->exp_avg_sq, err);
        if (st == CKPT_OK && opt.amsgrad)
            st = read_state_tensor(f, ckpt_value_get(s, "max_exp_avg_sq"), p, i,
                                   "max_exp_avg_sq", &p->max_exp_avg_sq, err);
        if (st != CKPT_OK)
            goto out;
        p->step_value = (float)p->step;
    }
    /* commit */
    for (size_t i = 0; i < n; i++) {
        free_state(&o->params[i]);
        o->params[i] = next[i];
        next[i].exp_avg = next[i].exp_avg_sq = next[i].max_exp_avg_sq = NULL;
    }
    o->o = opt;
out:
    if (next)
        for (size_t i = 0; i < n; i++)
            free_state(&next[i]);
    free(next);
    free(file_ids);
    return st;
}
