/*
 * tree.c - value trees built by the caller, for the writers.
 *
 * A tree is an arena of values of the same kind the reader produces, so a
 * writer takes either (or a mix: a tree's dict may hold a file's tensors).
 * Constructors never fail loudly: they return NULL and the tree keeps its
 * first error, which ckpt_tree_status and the writers report.
 */
#include "core.h"

#include <stdio.h>
#include <stdlib.h>

ckpt_tree *ckpt_tree_new(void)
{
    ckpt_tree *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    ckpt__arena_init(&t->arena, 0);
    t->err.status = CKPT_OK;
    t->err.offset = t->err.file_offset = CKPT_NO_OFFSET;
    return t;
}

void ckpt_tree_free(ckpt_tree *tree)
{
    if (!tree)
        return;
    ckpt__arena_free(&tree->arena);
    free(tree);
}

ckpt_status ckpt_tree_status(const ckpt_tree *tree, ckpt_error *err)
{
    if (!tree)
        return CKPT_INVALID_ARG(err, "NULL tree");
    if (err)
        *err = tree->err;
    return tree->err.status;
}

void ckpt__tree_fail(ckpt_tree *tree, const ckpt_error *err)
{
    if (tree && tree->err.status == CKPT_OK && err && err->status != CKPT_OK)
        tree->err = *err;
}

/* Records an error in the tree; returns status. */
static ckpt_status tree_fail(ckpt_tree *tree, ckpt_status status, const char *fmt, const char *arg)
{
    ckpt_error e;
    /* fmt: one of this file's literals, each with one %s */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    ckpt__fail(&e, status, "", CKPT_NO_OFFSET, fmt, arg ? arg : "");
#pragma GCC diagnostic pop
    ckpt__tree_fail(tree, &e);
    return status;
}

static ckpt_value *nomem(ckpt_tree *tree)
{
    tree_fail(tree, CKPT_ERR_NOMEM, "out of memory building a value tree%s", NULL);
    return NULL;
}

static ckpt_value *make(ckpt_tree *tree, int kind)
{
    if (!tree)
        return NULL;
    ckpt_value *v = ckpt__value_new(&tree->arena, kind);
    return v ? v : nomem(tree);
}

ckpt_value *ckpt_new_none(ckpt_tree *tree) { return make(tree, CKPT_KIND_NONE); }
ckpt_value *ckpt_new_list(ckpt_tree *tree) { return make(tree, CKPT_KIND_LIST); }
ckpt_value *ckpt_new_tuple(ckpt_tree *tree) { return make(tree, CKPT_KIND_TUPLE); }
ckpt_value *ckpt_new_set(ckpt_tree *tree) { return make(tree, CKPT_KIND_SET); }
ckpt_value *ckpt_new_dict(ckpt_tree *tree) { return make(tree, CKPT_KIND_DICT); }
ckpt_value *ckpt_new_ordered_dict(ckpt_tree *tree) { return make(tree, CKPT_KIND_ORDERED_DICT); }

ckpt_value *ckpt_new_bool(ckpt_tree *tree, bool b)
{
    ckpt_value *v = make(tree, CKPT_KIND_BOOL);
    if (v)
        v->u.b = b;
    return v;
}

ckpt_value *ckpt_new_int(ckpt_tree *tree, int64_t i)
{
    ckpt_value *v = make(tree, CKPT_KIND_INT);
    if (v)
        v->u.i = i;
    return v;
}

ckpt_value *ckpt_new_float(ckpt_tree *tree, double d)
{
    ckpt_value *v = make(tree, CKPT_KIND_FLOAT);
    if (v)
        v->u.f = d;
    return v;
}

ckpt_value *ckpt_new_complex(ckpt_tree *tree, double re, double im)
{
    ckpt_value *v = make(tree, CKPT_KIND_COMPLEX);
    if (v) {
        v->u.c.re = re;
        v->u.c.im = im;
    }
    return v;
}

static ckpt_value *make_text(ckpt_tree *tree, int kind, const char *s, size_t len)
{
    if (!tree)
        return NULL;
    if (!s && len) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "NULL text%s", NULL);
        return NULL;
    }
    ckpt_value *v = ckpt__value_str(&tree->arena, kind, s ? s : "", len);
    return v ? v : nomem(tree);
}

ckpt_value *ckpt_new_str(ckpt_tree *tree, const char *s, size_t len)
{
    if (!tree)
        return NULL;
    if (len == SIZE_MAX)
        len = s ? strlen(s) : 0;
    if (s && !ckpt__utf8_valid(s, len, true)) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "text is not valid UTF-8%s", NULL);
        return NULL;
    }
    return make_text(tree, CKPT_KIND_STR, s, len);
}

ckpt_value *ckpt_new_bytes(ckpt_tree *tree, const void *p, size_t len)
{
    return make_text(tree, CKPT_KIND_BYTES, p, len);
}

ckpt_value *ckpt_new_device(ckpt_tree *tree, const char *device)
{
    if (!tree)
        return NULL;
    if (!device || !*device || strlen(device) > 64) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "bad device name%s", NULL);
        return NULL;
    }
    for (const char *p = device; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == ':' || *p == '_')) {
            tree_fail(tree, CKPT_ERR_INVALID_ARG, "bad device name '%s'", device);
            return NULL;
        }
    }
    return make_text(tree, CKPT_KIND_DEVICE, device, strlen(device));
}

ckpt_value *ckpt_new_dtype(ckpt_tree *tree, ckpt_dtype dtype)
{
    if (!tree)
        return NULL;
    if (ckpt_dtype_bits(dtype) == 0) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "invalid dtype%s", NULL);
        return NULL;
    }
    ckpt_value *v = make(tree, CKPT_KIND_DTYPE);
    if (v)
        v->u.dtype = dtype;
    return v;
}

ckpt_value *ckpt_new_size(ckpt_tree *tree, uint32_t ndim, const int64_t *dims)
{
    ckpt_value *v = make(tree, CKPT_KIND_SIZE);
    if (!v)
        return NULL;
    if (ndim && !dims) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "NULL dims%s", NULL);
        return NULL;
    }
    for (uint32_t i = 0; i < ndim; i++) {
        ckpt_value *d = ckpt_new_int(tree, dims[i]);
        if (!d)
            return NULL;
        if (!ckpt__seq_append(&tree->arena, v, d))
            return nomem(tree);
    }
    return v;
}

/* ---- containers ---------------------------------------------------------- */

static ckpt_status check_item(ckpt_tree *tree, const ckpt_value *item)
{
    if (!item)
        return tree->err.status != CKPT_OK
                   ? tree->err.status /* the constructor that failed said why */
                   : tree_fail(tree, CKPT_ERR_INVALID_ARG, "NULL value in a container%s", NULL);
    return CKPT_OK;
}

ckpt_status ckpt_append(ckpt_tree *tree, ckpt_value *seq, const ckpt_value *item)
{
    if (!tree)
        return CKPT_ERR_INVALID_ARG;
    CKPT_RETURN_IF_ERROR(check_item(tree, item));
    if (!seq || (seq->kind != CKPT_KIND_LIST && seq->kind != CKPT_KIND_TUPLE && seq->kind != CKPT_KIND_SET))
        return tree_fail(tree, CKPT_ERR_TYPE, "append needs a list, tuple or set%s", NULL);
    if (!ckpt__seq_append(&tree->arena, seq, (ckpt_value *)(uintptr_t)item)) {
        nomem(tree);
        return CKPT_ERR_NOMEM;
    }
    return CKPT_OK;
}

ckpt_status ckpt_dict_put(ckpt_tree *tree, ckpt_value *dict, const ckpt_value *key,
                          const ckpt_value *val)
{
    if (!tree)
        return CKPT_ERR_INVALID_ARG;
    CKPT_RETURN_IF_ERROR(check_item(tree, key));
    CKPT_RETURN_IF_ERROR(check_item(tree, val));
    if (!dict || (dict->kind != CKPT_KIND_DICT && dict->kind != CKPT_KIND_ORDERED_DICT))
        return tree_fail(tree, CKPT_ERR_TYPE, "put needs a dict%s", NULL);
    if (!ckpt__dict_set(&tree->arena, dict, (ckpt_value *)(uintptr_t)key,
                        (ckpt_value *)(uintptr_t)val)) {
        nomem(tree);
        return CKPT_ERR_NOMEM;
    }
    return CKPT_OK;
}

ckpt_status ckpt_dict_put_str(ckpt_tree *tree, ckpt_value *dict, const char *key,
                              const ckpt_value *val)
{
    if (!tree)
        return CKPT_ERR_INVALID_ARG;
    ckpt_value *k = ckpt_new_str(tree, key, SIZE_MAX);
    if (!k)
        return tree->err.status;
    return ckpt_dict_put(tree, dict, k, val);
}

ckpt_status ckpt_set_state(ckpt_tree *tree, ckpt_value *v, const ckpt_value *state)
{
    if (!tree)
        return CKPT_ERR_INVALID_ARG;
    ckpt_value *s = (ckpt_value *)(uintptr_t)state;
    if (v && v->kind == CKPT_KIND_ORDERED_DICT) {
        v->u.dict.state = s;
        return CKPT_OK;
    }
    if (v && v->kind == CKPT_KIND_TENSOR) {
        v->u.tensor.state = s;
        return CKPT_OK;
    }
    return tree_fail(tree, CKPT_ERR_TYPE, "state goes on an OrderedDict or a tensor%s", NULL);
}

/* ---- tensors -------------------------------------------------------------- */

void ckpt_tensor_desc_init(ckpt_tensor_desc *desc)
{
    if (!desc)
        return;
    memset(desc, 0, sizeof(*desc));
    desc->struct_size = sizeof(*desc);
    desc->dtype = CKPT_DTYPE_FLOAT32;
}

/* Takes the caller's description into *d: an older caller's shorter one
 * gets ckpt_tensor_desc_init's values for the fields it lacks; dtype, ndim
 * and shape it must have. */
static ckpt_status desc_check(ckpt_tree *tree, const ckpt_tensor_desc *desc, ckpt_tensor_desc *d)
{
    ckpt_tensor_desc_init(d);
    if (!desc || ckpt__struct_in(d, sizeof(*d), desc) < offsetof(ckpt_tensor_desc, stride))
        return tree_fail(tree, CKPT_ERR_INVALID_ARG,
                         "tensor description missing or not set up with ckpt_tensor_desc_init%s",
                         NULL);
    if (d->ndim && !d->shape)
        return tree_fail(tree, CKPT_ERR_INVALID_ARG, "tensor description has no shape%s", NULL);
    if (d->ndim > 64)
        return tree_fail(tree, CKPT_ERR_INVALID_ARG, "tensor has more than 64 dimensions%s",
                         NULL);
    return CKPT_OK;
}

/* A tensor of the tree's arena over s, shaped by d (stride NULL: contiguous). */
static ckpt_tensor *tensor_from_desc(ckpt_tree *tree, const ckpt_tensor_desc *d, ckpt_dtype dtype,
                                     ckpt__storage *s)
{
    ckpt_tensor *t = ckpt__arena_alloc(&tree->arena, sizeof(*t));
    int64_t *dims = ckpt__arena_alloc(&tree->arena, 2 * sizeof(int64_t) * (d->ndim ? d->ndim : 1));
    if (!t || !dims) {
        nomem(tree);
        return NULL;
    }
    t->dtype = dtype;
    t->ndim = d->ndim;
    t->shape = dims;
    t->stride = dims + d->ndim;
    int64_t expect = 1;
    for (uint32_t i = d->ndim; i-- > 0;) {
        t->shape[i] = d->shape[i];
        t->stride[i] = d->stride ? d->stride[i] : expect;
        /* an overflowing shape fails validation: any stride will do */
        if (d->shape[i] > 1 && __builtin_mul_overflow(expect, d->shape[i], &expect))
            expect = 1;
    }
    t->storage_offset = d->storage_offset;
    t->storage = s;
    t->requires_grad = d->requires_grad;
    t->is_parameter = d->is_parameter;
    t->layout = CKPT_LAYOUT_STRIDED;
    return t;
}

static ckpt_value *tensor_value(ckpt_tree *tree, ckpt_tensor *t)
{
    ckpt_value *v = make(tree, CKPT_KIND_TENSOR);
    if (v)
        v->u.tensor.t = t;
    return v;
}

static ckpt_status validate(ckpt_tree *tree, ckpt_tensor *t)
{
    ckpt_limits lim;
    ckpt_limits_default(&lim);
    ckpt_error e;
    ckpt_status st = ckpt__tensor_validate(t, &lim, "tensor", CKPT_NO_OFFSET, &e);
    if (st != CKPT_OK)
        ckpt__tree_fail(tree, &e);
    return st;
}

ckpt_value *ckpt_new_tensor(ckpt_tree *tree, const ckpt_tensor_desc *caller_desc)
{
    ckpt_tensor_desc d, *desc = &d;
    if (!tree || desc_check(tree, caller_desc, &d) != CKPT_OK)
        return NULL;
    if (ckpt_dtype_bits(desc->dtype) == 0) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "invalid dtype%s", NULL);
        return NULL;
    }
    ckpt__storage *s = ckpt__arena_alloc(&tree->arena, sizeof(*s));
    if (!s)
        return nomem(tree);
    const char *loc = desc->location ? desc->location : "cpu";
    s->location = ckpt__arena_strdup(&tree->arena, loc, strlen(loc));
    if (!s->location)
        return nomem(tree);
    s->dtype = desc->dtype;
    s->record_index = -1;
    s->file_offset = CKPT_NO_OFFSET;
    s->resolved = true;
    s->data = desc->data;
    s->nbytes = UINT64_MAX; /* bounds come below, once the view is known */
    ckpt_tensor *t = tensor_from_desc(tree, desc, desc->dtype, s);
    if (!t || validate(tree, t) != CKPT_OK)
        return NULL;
    /* the bytes the view spans */
    uint64_t span = 0;
    if (t->numel) {
        uint64_t last = (uint64_t)t->storage_offset;
        for (uint32_t i = 0; i < t->ndim; i++)
            last += (uint64_t)(t->shape[i] - 1) * (uint64_t)t->stride[i];
        uint64_t bits = (last + 1) * ckpt_dtype_bits(t->dtype);
        span = bits / 8 + (bits % 8 != 0);
    }
    if (desc->storage_nbytes == 0) {
        s->nbytes = span;
    } else if (desc->storage_nbytes < span) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG,
                  "tensor view runs past its storage_nbytes%s", NULL);
        return NULL;
    } else {
        s->nbytes = desc->storage_nbytes;
    }
    if (s->nbytes && !s->data) {
        tree_fail(tree, CKPT_ERR_INVALID_ARG, "tensor with bytes but NULL data%s", NULL);
        return NULL;
    }
    return tensor_value(tree, t);
}

static const ckpt_tensor *strided_tensor_of(ckpt_tree *tree, const ckpt_value *v, const char *what)
{
    if (!v || v->kind != CKPT_KIND_TENSOR) {
        tree_fail(tree, CKPT_ERR_TYPE, "%s needs a tensor", what);
        return NULL;
    }
    const ckpt_tensor *t = v->u.tensor.t;
    if (t->layout != CKPT_LAYOUT_STRIDED || !t->storage) {
        tree_fail(tree, CKPT_ERR_TYPE, "%s needs a strided tensor with a storage", what);
        return NULL;
    }
    return t;
}

ckpt_value *ckpt_new_view(ckpt_tree *tree, const ckpt_value *base,
                          const ckpt_tensor_desc *caller_desc)
{
    ckpt_tensor_desc d, *desc = &d;
    if (!tree || desc_check(tree, caller_desc, &d) != CKPT_OK)
        return NULL;
    const ckpt_tensor *b = strided_tensor_of(tree, base, "a view");
    if (!b)
        return NULL;
    if (b->storage->cast_src) {
        tree_fail(tree, CKPT_ERR_TYPE, "a view of a cast is not supported%s", NULL);
        return NULL;
    }
    if (desc->dtype != b->dtype) {
        tree_fail(tree, CKPT_ERR_TYPE, "a view must have its base's dtype (%s)",
                  ckpt_dtype_name(b->dtype));
        return NULL;
    }
    ckpt_tensor *t = tensor_from_desc(tree, desc, b->dtype, b->storage);
    if (!t || validate(tree, t) != CKPT_OK)
        return NULL;
    return tensor_value(tree, t);
}

ckpt_value *ckpt_new_cast(ckpt_tree *tree, const ckpt_value *tensor, ckpt_dtype to)
{
    if (!tree)
        return NULL;
    const ckpt_tensor *src = strided_tensor_of(tree, tensor, "a cast");
    if (!src)
        return NULL;
    if (to != src->dtype && (!ckpt__dtype_castable(to) || !ckpt__dtype_castable(src->dtype))) {
        tree_fail(tree, CKPT_ERR_TYPE, "cannot cast %s", ckpt_dtype_name(src->dtype));
        return NULL;
    }
    if (ckpt_dtype_size(to) == 0) {
        tree_fail(tree, CKPT_ERR_TYPE, "cannot copy %s elements one by one",
                  ckpt_dtype_name(to));
        return NULL;
    }
    ckpt__storage *s = ckpt__arena_alloc(&tree->arena, sizeof(*s));
    if (!s)
        return nomem(tree);
    s->location = src->storage->location;
    s->dtype = to;
    s->record_index = -1;
    s->file_offset = CKPT_NO_OFFSET;
    s->cast_src = src;
    s->nbytes = src->numel * ckpt_dtype_size(to); /* numel x 16 fits: validated */
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = src->ndim;
    d.shape = src->shape;
    d.requires_grad = src->requires_grad;
    d.is_parameter = src->is_parameter;
    ckpt_tensor *t = tensor_from_desc(tree, &d, to, s);
    if (!t || validate(tree, t) != CKPT_OK)
        return NULL;
    return tensor_value(tree, t);
}
