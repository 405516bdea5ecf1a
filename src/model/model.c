/*
 * model.c - C models: parameters described by name, dtype and shape, filled
 * from a state dict as PyTorch's load_state_dict() does, and given back as
 * a state dict to save.
 *
 * A load runs in two passes. The first matches keys, checks every tensor
 * (kind, layout, shape, dtype) and resolves the bytes of the ones that will
 * be loaded; it writes nothing. Only when it found no problem (or only
 * missing and unexpected keys of a non-strict load) does the second pass
 * copy, convert, borrow or hand the bytes to the placement callback.
 *
 * Reports follow torch.nn.Module.load_state_dict: the modules are the name
 * prefixes ("net.", "net.0."), visited depth first in the order they first
 * appear; missing keys and size mismatches are found module by module, and
 * an unexpected key is one whose first component after a module's prefix
 * names neither a child module nor a parameter of it.
 */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL_ALIGN 64

typedef struct model_param {
    char *name;
    ckpt_dtype dtype;
    uint32_t ndim;
    int64_t shape[CKPT_MODEL_MAX_NDIM];
    uint64_t numel;
    uint64_t nbytes;
    void *host;          /* the caller's memory or own_mem */
    void *own_mem;       /* allocated by the model, NULL for the caller's */
    void *data;          /* host, the file's bytes (borrowed) or placed memory */
    char location[72];
    bool is_buffer;
    bool no_data;        /* CKPT_PARAM_NO_DATA: a description only */
    bool extra_state;    /* CKPT_PARAM_EXTRA_STATE */
    bool loaded;
    bool borrowed;
    bool placed;
} model_param;

/* Growable list of owned strings. */
typedef struct str_list {
    char **items;
    size_t len, cap;
} str_list;

struct ckpt_model {
    char *class_name;
    model_param *params;
    size_t count, cap;
    size_t *index;       /* open-addressed name -> param + 1; 0 empty */
    size_t index_cap;
    /* declared modules ("net.1."), each with the number of parameters
     * added before it, to place it among them */
    str_list modules;
    size_t *module_at;
    /* the last load's report */
    str_list missing, unexpected, errors;
    char *message;
};

/* ---- small helpers ---------------------------------------------------- */

static char *dup_n(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static void str_list_clear(str_list *l)
{
    for (size_t i = 0; i < l->len; i++)
        free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

static bool str_list_push(str_list *l, char *s)
{
    if (!s)
        return false;
    if (l->len == l->cap) {
        void *p = ckpt__array_grow(l->items, &l->cap, sizeof(char *));
        if (!p) {
            free(s);
            return false;
        }
        l->items = p;
    }
    l->items[l->len++] = s;
    return true;
}

static char *str_printf(const char *fmt, ...) CKPT_PRINTF(1, 2);
static char *str_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = malloc((size_t)n + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

/* "torch.Size([5, 64])", allocated. */
static char *size_text(uint32_t ndim, const int64_t *shape)
{
    char *s = malloc(16 + (size_t)ndim * 22);
    if (!s)
        return NULL;
    size_t n = (size_t)sprintf(s, "torch.Size([");
    for (uint32_t i = 0; i < ndim; i++)
        n += (size_t)sprintf(s + n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    sprintf(s + n, "])");
    return s;
}

/* ---- the model -------------------------------------------------------- */

ckpt_model *ckpt_model_new(const char *class_name)
{
    ckpt_model *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    const char *n = class_name ? class_name : "Model";
    m->class_name = dup_n(n, strlen(n));
    if (!m->class_name) {
        free(m);
        return NULL;
    }
    return m;
}

static void report_clear(ckpt_model *m)
{
    str_list_clear(&m->missing);
    str_list_clear(&m->unexpected);
    str_list_clear(&m->errors);
    free(m->message);
    m->message = NULL;
}

void ckpt_model_free(ckpt_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->count; i++) {
        free(m->params[i].name);
        free(m->params[i].own_mem);
    }
    free(m->params);
    free(m->index);
    str_list_clear(&m->modules);
    free(m->module_at);
    report_clear(m);
    free(m->class_name);
    free(m);
}

static bool index_find(const ckpt_model *m, const char *name, size_t len, size_t *out)
{
    if (!m->index_cap)
        return false;
    size_t mask = m->index_cap - 1;
    for (size_t h = (size_t)ckpt__hash_keyed(m, name, len) & mask;; h = (h + 1) & mask) {
        size_t e = m->index[h];
        if (!e)
            return false;
        const char *pn = m->params[e - 1].name;
        if (strlen(pn) == len && memcmp(pn, name, len) == 0) {
            *out = e - 1;
            return true;
        }
    }
}

static bool index_rebuild(ckpt_model *m, size_t want)
{
    size_t cap = 16;
    while (cap < want * 2)
        cap *= 2;
    if (cap <= m->index_cap)
        return true;
    size_t *idx = calloc(cap, sizeof(size_t));
    if (!idx)
        return false;
    for (size_t i = 0; i < m->count; i++) {
        const char *pn = m->params[i].name;
        size_t h = (size_t)ckpt__hash_keyed(m, pn, strlen(pn)) & (cap - 1);
        while (idx[h])
            h = (h + 1) & (cap - 1);
        idx[h] = i + 1;
    }
    free(m->index);
    m->index = idx;
    m->index_cap = cap;
    return true;
}

ckpt_status ckpt_model_add(ckpt_model *m, const char *name, ckpt_dtype dtype, uint32_t ndim,
                           const int64_t *shape, void *data, unsigned flags, size_t *index,
                           ckpt_error *err)
{
    if (!m || !name || !*name)
        return CKPT_INVALID_ARG(err, "a parameter needs a model and a name");
    if (flags & CKPT_PARAM_EXTRA_STATE) {
        const char *last = strrchr(name, '.');
        if (strcmp(last ? last + 1 : name, "_extra_state") != 0)
            return CKPT_INVALID_ARG(err,
                                    "extra state \"%s\": the name must end in _extra_state", name);
        flags |= CKPT_PARAM_NO_DATA;
        dtype = CKPT_DTYPE_UINT8;
        ndim = 0;
    }
    size_t dummy;
    if (index_find(m, name, strlen(name), &dummy))
        return CKPT_INVALID_ARG(err, "parameter \"%s\" is already in the model", name);
    size_t esize = ckpt_dtype_size(dtype);
    if (dtype <= CKPT_DTYPE_INVALID || dtype >= CKPT_DTYPE_COUNT_ || esize == 0 ||
        ckpt_dtype_bits(dtype) != esize * 8)
        return CKPT_INVALID_ARG(err, "parameter \"%s\": dtype %d is not a whole-byte dtype",
                                name, (int)dtype);
    if (ndim > CKPT_MODEL_MAX_NDIM || (ndim && !shape))
        return CKPT_INVALID_ARG(err,
                                "parameter \"%s\": %u dimensions (at most %d)", name, ndim,
                                CKPT_MODEL_MAX_NDIM);
    uint64_t numel = 1, nbytes;
    for (uint32_t i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !ckpt__mul_u64(numel, (uint64_t)shape[i], &numel))
            return CKPT_INVALID_ARG(err, "parameter \"%s\": bad shape", name);
    }
    if (!ckpt__mul_u64(numel, esize, &nbytes) || nbytes > SIZE_MAX - MODEL_ALIGN)
        return CKPT_INVALID_ARG(err, "parameter \"%s\": too large", name);
    if (m->count == m->cap) {
        void *p = ckpt__array_grow(m->params, &m->cap, sizeof(model_param));
        if (!p)
            return ckpt__nomem(err);
        m->params = p;
    }
    if (!index_rebuild(m, m->count + 1))
        return ckpt__nomem(err);
    model_param *p = &m->params[m->count];
    memset(p, 0, sizeof(*p));
    p->name = dup_n(name, strlen(name));
    if (!p->name)
        return ckpt__nomem(err);
    if (flags & CKPT_PARAM_NO_DATA) {
        data = NULL;
    } else if (!data) {
        size_t sz = (size_t)nbytes ? ((size_t)nbytes + MODEL_ALIGN - 1) / MODEL_ALIGN * MODEL_ALIGN
                                   : MODEL_ALIGN;
        p->own_mem = aligned_alloc(MODEL_ALIGN, sz);
        if (!p->own_mem) {
            free(p->name);
            return ckpt__fail(err, CKPT_ERR_NOMEM, "", CKPT_NO_OFFSET,
                              "parameter \"%s\": out of memory for %llu bytes", name,
                              (unsigned long long)nbytes);
        }
        memset(p->own_mem, 0, sz);
        data = p->own_mem;
    }
    p->dtype = dtype;
    p->ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++)
        p->shape[i] = shape[i];
    p->numel = numel;
    p->nbytes = nbytes;
    p->host = p->data = data;
    strcpy(p->location, "cpu");
    p->is_buffer = (flags & CKPT_PARAM_BUFFER) != 0;
    p->no_data = (flags & CKPT_PARAM_NO_DATA) != 0;
    p->extra_state = (flags & CKPT_PARAM_EXTRA_STATE) != 0;
    size_t mask = m->index_cap - 1;
    size_t h = (size_t)ckpt__hash_keyed(m, name, strlen(name)) & mask;
    while (m->index[h])
        h = (h + 1) & mask;
    m->index[h] = m->count + 1;
    if (index)
        *index = m->count;
    m->count++;
    return CKPT_OK;
}

ckpt_status ckpt_model_add_module(ckpt_model *m, const char *name, ckpt_error *err)
{
    if (!m || !name)
        return CKPT_INVALID_ARG(err, "a module needs a model and a name");
    if (!*name)
        return CKPT_OK; /* the root is always there */
    size_t cap = m->modules.cap;
    char *dotted = str_printf("%s.", name);
    if (!str_list_push(&m->modules, dotted))
        return ckpt__nomem(err);
    if (m->modules.cap != cap) {
        size_t *at = realloc(m->module_at, m->modules.cap * sizeof(size_t));
        if (!at) {
            free(m->modules.items[--m->modules.len]);
            return ckpt__nomem(err);
        }
        m->module_at = at;
    }
    m->module_at[m->modules.len - 1] = m->count;
    return CKPT_OK;
}

size_t ckpt_model_count(const ckpt_model *m)
{
    return m ? m->count : 0;
}

bool ckpt_model_param(const ckpt_model *m, size_t i, ckpt_param_info *out)
{
    if (!m || i >= m->count || !out)
        return false;
    const model_param *p = &m->params[i];
    ckpt_param_info full, *info = &full;
    memset(info, 0, sizeof(*info));
    info->name = p->name;
    info->dtype = p->dtype;
    info->ndim = p->ndim;
    info->shape = p->shape;
    info->numel = p->numel;
    info->nbytes = p->nbytes;
    info->data = p->data;
    info->host = p->host;
    info->location = p->location;
    info->is_buffer = p->is_buffer;
    info->is_extra_state = p->extra_state;
    info->loaded = p->loaded;
    info->borrowed = p->borrowed;
    info->placed = p->placed;
    return ckpt__struct_out(out, &full, sizeof(full));
}

bool ckpt_model_find(const ckpt_model *m, const char *name, size_t *index)
{
    size_t i;
    if (!m || !name || !index_find(m, name, strlen(name), &i))
        return false;
    if (index)
        *index = i;
    return true;
}

void *ckpt_model_data(const ckpt_model *m, size_t i)
{
    return m && i < m->count ? m->params[i].data : NULL;
}

/* ---- the model's state dict ------------------------------------------- */

ckpt_value *ckpt_model_state_dict(const ckpt_model *m, ckpt_tree *tree)
{
    ckpt_value *d = ckpt_new_ordered_dict(tree);
    if (!d || !m)
        return NULL;
    for (size_t i = 0; i < m->count; i++) {
        const model_param *p = &m->params[i];
        if (p->extra_state)
            continue; /* the caller's to save */
        if (p->no_data) {
            ckpt_error err;
            CKPT_INVALID_ARG(&err, "parameter \"%s\" is a description only (CKPT_PARAM_NO_DATA)",
                             p->name);
            ckpt__tree_fail(tree, &err);
            return NULL;
        }
        ckpt_tensor_desc desc;
        ckpt_tensor_desc_init(&desc);
        desc.dtype = p->dtype;
        desc.ndim = p->ndim;
        desc.shape = p->shape;
        desc.data = p->placed ? p->host : p->data;
        desc.storage_nbytes = p->nbytes;
        ckpt_value *t = ckpt_new_tensor(tree, &desc);
        if (!t || ckpt_dict_put_str(tree, d, p->name, t) != CKPT_OK)
            return NULL;
    }
    return d;
}

/* ---- loading ---------------------------------------------------------- */

void ckpt_load_options_default(ckpt_load_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
}

/* One entry of the state dict. */
typedef struct sd_entry {
    char *key;                 /* after remapping */
    const ckpt_value *value;
    size_t param;              /* matching model parameter, or SIZE_MAX */
    bool can_match;            /* a text key without NUL; others never name a
                                  parameter, and are unexpected at the root */
} sd_entry;

/* What the first pass decided for one parameter. */
typedef struct load_plan {
    const ckpt_tensor *t;
    const void *src;           /* the tensor's resolved first element */
    bool contiguous;           /* src can be read as numel elements */
    bool zero_copy;            /* src is the file's map */
    ckpt_dtype from;
    const char *location;
    bool scalar_from_1d;       /* a 0-d parameter from element 0 of a 1-d tensor */
} load_plan;

typedef struct load_ctx {
    ckpt_model *m;
    ckpt_file *f;
    ckpt_load_options o;
    sd_entry *entries;
    size_t n_entries;
    size_t *lookup;            /* open-addressed key -> entry + 1 */
    size_t lookup_cap;
    load_plan *plan;           /* per model parameter; t NULL: not loaded */
    const ckpt_value *sd;      /* the state dict */
    struct meta_module *meta;  /* its _metadata modules, sorted (built when needed) */
    size_t n_meta;
    bool meta_built;
    ckpt_error *err;
} load_ctx;

/* Whether a dict has a tensor among its values. */
static bool dict_holds_tensors(const ckpt_value *v)
{
    ckpt_kind k = ckpt_value_kind(v);
    if (k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT)
        return false;
    for (size_t i = 0; i < ckpt_value_len(v); i++)
        if (ckpt_value_kind(ckpt_value_dict_value(v, i)) == CKPT_KIND_TENSOR)
            return true;
    return false;
}

/* The dict the options name. */
static ckpt_status find_state_dict(const ckpt_value *root, const char *key,
                                   const ckpt_value **out, ckpt_error *err)
{
    if (!key) {
        /* the root, unless it has a "state_dict" or "model" dict: a training
         * checkpoint keeps stray tensors (an RNG state) beside the model's */
        const ckpt_value *sd = root;
        bool has_tensor = dict_holds_tensors(root);
        ckpt_kind k = ckpt_value_kind(root);
        if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
            static const char *const names[] = {"state_dict", "model"};
            for (size_t j = 0; j < 2 && sd == root; j++) {
                const ckpt_value *v = ckpt_value_get(root, names[j]);
                ckpt_kind vk = ckpt_value_kind(v);
                if (v && (vk == CKPT_KIND_DICT || vk == CKPT_KIND_ORDERED_DICT) &&
                    (!has_tensor || dict_holds_tensors(v)))
                    sd = v;
            }
        }
        *out = sd;
    } else {
        /* at each level the longest key that the rest of the path starts
         * with ("layer.0" before "layer"), as ckpt convert --key reads it */
        const ckpt_value *v = root;
        const char *p = key;
        size_t plen = strlen(key);
        char *part = malloc(plen + 1);
        if (!part)
            return ckpt__nomem(err);
        while (*p) {
            size_t rest = strlen(p), len = rest;
            const ckpt_value *hit = NULL;
            for (;;) {
                memcpy(part, p, len);
                part[len] = '\0';
                if ((hit = ckpt_value_get(v, part)) != NULL)
                    break;
                while (len > 0 && p[len - 1] != '.')
                    len--;
                if (len <= 1)
                    break;
                len--; /* before the dot */
            }
            if (!hit) {
                free(part);
                return ckpt__fail(err, CKPT_ERR_NOT_FOUND, "", CKPT_NO_OFFSET,
                                  "the checkpoint has no entry \"%.*s\" (key path \"%s\")",
                                  (int)strcspn(p, "."), p, key);
            }
            v = hit;
            p += len;
            if (*p == '.')
                p++;
        }
        free(part);
        *out = v;
    }
    ckpt_kind k = ckpt_value_kind(*out);
    if (k != CKPT_KIND_DICT && k != CKPT_KIND_ORDERED_DICT)
        return ckpt__fail(err, CKPT_ERR_TYPE, "", CKPT_NO_OFFSET,
                          "the state dict%s%s%s is a %s, not a dict", key ? " \"" : "",
                          key ? key : "", key ? "\"" : "", ckpt_kind_name(k));
    return CKPT_OK;
}

/* The key with the options' remapping. */
static char *remap_key(const ckpt_load_options *o, const char *key, size_t len)
{
    for (size_t i = 0; i < o->strip_prefix_count; i++) {
        const char *p = o->strip_prefixes[i];
        size_t pl = p ? strlen(p) : 0;
        if (pl && pl <= len && memcmp(key, p, pl) == 0) {
            key += pl;
            len -= pl;
            break;
        }
    }
    for (size_t i = 0; i < o->prefix_map_count; i++) {
        const char *from = o->prefix_map[i].from ? o->prefix_map[i].from : "";
        const char *to = o->prefix_map[i].to ? o->prefix_map[i].to : "";
        size_t fl = strlen(from), tl = strlen(to);
        if (fl <= len && memcmp(key, from, fl) == 0) {
            char *s = malloc(tl + (len - fl) + 1);
            if (s) {
                memcpy(s, to, tl);
                memcpy(s + tl, key + fl, len - fl);
                s[tl + len - fl] = '\0';
            }
            return s;
        }
    }
    return dup_n(key, len);
}

static bool lookup_find(const load_ctx *c, const char *key, size_t len, size_t *out)
{
    size_t mask = c->lookup_cap - 1;
    for (size_t h = (size_t)ckpt__hash_keyed(c, key, len) & mask;; h = (h + 1) & mask) {
        size_t e = c->lookup[h];
        if (!e)
            return false;
        const char *k = c->entries[e - 1].key;
        if (strncmp(k, key, len) == 0 && k[len] == '\0') {
            *out = e - 1;
            return true;
        }
    }
}

/* Reads the state dict's keys, remaps them and indexes them. */
static ckpt_status collect_entries(load_ctx *c, const ckpt_value *sd, str_list *errors)
{
    size_t n = ckpt_value_len(sd);
    c->entries = calloc(n ? n : 1, sizeof(sd_entry));
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    c->lookup = calloc(cap, sizeof(size_t));
    c->lookup_cap = cap;
    if (!c->entries || !c->lookup)
        return ckpt__nomem(c->err);
    for (size_t i = 0; i < n; i++) {
        const ckpt_value *k = ckpt_value_key(sd, i);
        char *text;
        size_t len;
        bool is_str = ckpt_value_kind(k) == CKPT_KIND_STR, has_nul = false;
        if (is_str) {
            /* a NUL inside a key shows as \x00: such a key never names a
             * parameter, as in Python */
            const char *raw = ckpt_value_str(k, &len);
            size_t nuls = 0;
            for (const char *z = memchr(raw, '\0', len); z;
                 z = memchr(z + 1, '\0', len - (size_t)(z + 1 - raw)))
                nuls++;
            text = malloc(len + 3 * nuls + 1);
            if (!text)
                return ckpt__nomem(c->err);
            size_t at = 0;
            for (size_t j = 0; j < len; j++) {
                if (raw[j])
                    text[at++] = raw[j];
                else
                    memcpy(text + at, "\\x00", 4), at += 4;
            }
            len = at;
            has_nul = nuls > 0;
        } else {
            /* Python's str() of the key: 1, None, (1, 'a') */
            len = ckpt__key_text(k, NULL, 0);
            text = malloc(len + 1);
            if (!text)
                return ckpt__nomem(c->err);
            len = ckpt__key_text(k, text, len + 1);
        }
        text[len] = '\0';
        char *key = remap_key(&c->o, text, len);
        free(text);
        if (!key)
            return ckpt__nomem(c->err);
        sd_entry *e = &c->entries[c->n_entries];
        e->key = key;
        e->value = ckpt_value_dict_value(sd, i);
        e->param = SIZE_MAX;
        e->can_match = is_str && !has_nul;
        size_t klen = strlen(key), prev;
        if (!e->can_match) {
            c->n_entries++;
            continue;
        }
        if (lookup_find(c, key, klen, &prev)) {
            bool ok = str_list_push(errors, str_printf("key \"%s\" appears twice in the state "
                                                       "dict after remapping",
                                                       key));
            free(key);
            if (!ok)
                return ckpt__nomem(c->err);
            e->key = NULL;
            continue;
        }
        size_t h = (size_t)ckpt__hash_keyed(c, key, klen) & (cap - 1);
        while (c->lookup[h])
            h = (h + 1) & (cap - 1);
        c->lookup[h] = ++c->n_entries;
    }
    return CKPT_OK;
}

/* Python's type() text for a value that is not a tensor. */
static const char *python_type(const ckpt_value *v)
{
    switch (ckpt_value_kind(v)) {
    case CKPT_KIND_NONE: return "<class 'NoneType'>";
    case CKPT_KIND_BOOL: return "<class 'bool'>";
    case CKPT_KIND_INT:
    case CKPT_KIND_BIGINT: return "<class 'int'>";
    case CKPT_KIND_FLOAT: return "<class 'float'>";
    case CKPT_KIND_COMPLEX: return "<class 'complex'>";
    case CKPT_KIND_STR: return "<class 'str'>";
    case CKPT_KIND_BYTES: return "<class 'bytes'>";
    case CKPT_KIND_LIST: return "<class 'list'>";
    case CKPT_KIND_TUPLE: return "<class 'tuple'>";
    case CKPT_KIND_SET:
        return (v->flags & CKPT__VF_FROZEN) ? "<class 'frozenset'>" : "<class 'set'>";
    case CKPT_KIND_DICT: return "<class 'dict'>";
    case CKPT_KIND_ORDERED_DICT: return "<class 'collections.OrderedDict'>";
    case CKPT_KIND_SIZE: return "<class 'torch.Size'>";
    case CKPT_KIND_DEVICE: return "<class 'torch.device'>";
    case CKPT_KIND_DTYPE: return "<class 'torch.dtype'>";
    default: return "<class 'object'>";
    }
}

/* Integer and bool dtypes, which convert as torch's copy_ casts them. */
static bool is_integral(ckpt_dtype d)
{
    switch (d) {
    case CKPT_DTYPE_INT64: case CKPT_DTYPE_INT32: case CKPT_DTYPE_INT16: case CKPT_DTYPE_INT8:
    case CKPT_DTYPE_UINT64: case CKPT_DTYPE_UINT32: case CKPT_DTYPE_UINT16: case CKPT_DTYPE_UINT8:
    case CKPT_DTYPE_BOOL:
        return true;
    default:
        return false;
    }
}

/* Floating dtypes convert among themselves; integers and bools convert into
 * any integer, bool or floating dtype. A floating value into an integer is
 * refused (torch's cast of NaN or an out-of-range value is undefined). */
static bool can_convert(ckpt_dtype to, ckpt_dtype from)
{
    if (to == from)
        return true;
    if (ckpt__dtype_castable(from))
        return ckpt__dtype_castable(to);
    return is_integral(from) && (is_integral(to) || ckpt__dtype_castable(to));
}

static int64_t load_int(ckpt_dtype d, const uint8_t *p, uint64_t *u, bool *is_unsigned)
{
    int64_t i = 0;
    *is_unsigned = false;
    switch (d) {
    case CKPT_DTYPE_INT64: { int64_t v; memcpy(&v, p, 8); i = v; break; }
    case CKPT_DTYPE_INT32: { int32_t v; memcpy(&v, p, 4); i = v; break; }
    case CKPT_DTYPE_INT16: { int16_t v; memcpy(&v, p, 2); i = v; break; }
    case CKPT_DTYPE_INT8: i = (int8_t)p[0]; break;
    case CKPT_DTYPE_UINT64: memcpy(u, p, 8); *is_unsigned = true; return 0;
    case CKPT_DTYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); i = v; break; }
    case CKPT_DTYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); i = v; break; }
    case CKPT_DTYPE_UINT8: i = p[0]; break;
    case CKPT_DTYPE_BOOL: i = p[0] != 0; break;
    default: break;
    }
    *u = (uint64_t)i;
    return i;
}

/* count integer or bool elements of from into to (see can_convert). */
static void convert_integral(ckpt_dtype to, void *dst, ckpt_dtype from, const void *src,
                             size_t count)
{
    const uint8_t *s = src;
    uint8_t *d = dst;
    size_t fs = ckpt_dtype_size(from), ts = ckpt_dtype_size(to);
    for (size_t k = 0; k < count; k++, s += fs, d += ts) {
        uint64_t u;
        bool is_unsigned;
        int64_t i = load_int(from, s, &u, &is_unsigned);
        switch (to) {
        case CKPT_DTYPE_FLOAT64: {
            double v = is_unsigned ? (double)u : (double)i;
            memcpy(d, &v, 8);
            break;
        }
        case CKPT_DTYPE_FLOAT32: {
            float v = is_unsigned ? (float)u : (float)i;
            memcpy(d, &v, 4);
            break;
        }
        case CKPT_DTYPE_FLOAT16:
        case CKPT_DTYPE_BFLOAT16: {
            /* through float32, as torch computes it */
            float v = is_unsigned ? (float)u : (float)i;
            ckpt_convert_dtype(to, d, CKPT_DTYPE_FLOAT32, &v, 1);
            break;
        }
        case CKPT_DTYPE_BOOL: d[0] = u != 0; break;
        /* the low bits, as a C++ static_cast wraps */
        case CKPT_DTYPE_INT64: case CKPT_DTYPE_UINT64: memcpy(d, &u, 8); break;
        case CKPT_DTYPE_INT32: case CKPT_DTYPE_UINT32: { uint32_t v = (uint32_t)u; memcpy(d, &v, 4); break; }
        case CKPT_DTYPE_INT16: case CKPT_DTYPE_UINT16: { uint16_t v = (uint16_t)u; memcpy(d, &v, 2); break; }
        default: d[0] = (uint8_t)u; break;
        }
    }
}

static const char *mapped_location(const ckpt_load_options *o, const char *loc)
{
    if (o->map_location)
        return o->map_location;
    for (size_t i = 0; i < o->location_map_count; i++)
        if (o->location_map[i].from && loc && strcmp(o->location_map[i].from, loc) == 0)
            return o->location_map[i].to ? o->location_map[i].to : loc;
    return loc ? loc : "cpu";
}

/* First pass for one matched parameter: an error line, or a plan. */
static ckpt_status check_param(load_ctx *c, size_t pi, const sd_entry *e, str_list *errors)
{
    const model_param *p = &c->m->params[pi];
    if (ckpt_value_kind(e->value) != CKPT_KIND_TENSOR) {
        if (!str_list_push(errors, str_printf("While copying the parameter named \"%s\", expected "
                                              "torch.Tensor or Tensor-like object from checkpoint "
                                              "but received %s",
                                              p->name, python_type(e->value))))
            return ckpt__nomem(c->err);
        return CKPT_OK;
    }
    const ckpt_tensor *t = ckpt_value_tensor(e->value);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    bool scalar_from_1d = p->ndim == 0 && ti.ndim == 1;
    bool same = scalar_from_1d ? ti.shape[0] >= 1 : ti.ndim == p->ndim;
    for (uint32_t i = 0; same && !scalar_from_1d && i < p->ndim; i++)
        same = ti.shape[i] == p->shape[i];
    if (!same) {
        char *a = size_text(ti.ndim, ti.shape), *b = size_text(p->ndim, p->shape);
        bool ok = a && b &&
                  str_list_push(errors, str_printf("size mismatch for %s: copying a param with "
                                                   "shape %s from checkpoint, the shape in current "
                                                   "model is %s.",
                                                   p->name, a, b));
        free(a);
        free(b);
        return ok ? CKPT_OK : ckpt__nomem(c->err);
    }
    if (ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage) {
        if (!str_list_push(errors, str_printf("While copying the parameter named \"%s\": a %s "
                                              "tensor%s cannot be loaded into a dense parameter",
                                              p->name, ckpt_layout_name(ti.layout),
                                              ti.has_storage ? "" : " without data (meta)")))
            return ckpt__nomem(c->err);
        return CKPT_OK;
    }
    if (!can_convert(p->dtype, ti.dtype)) {
        if (!str_list_push(errors, str_printf("dtype mismatch for %s: copying a param of dtype "
                                              "torch.%s from checkpoint, the dtype in current "
                                              "model is torch.%s.",
                                              p->name, ckpt_dtype_name(ti.dtype),
                                              ckpt_dtype_name(p->dtype))))
            return ckpt__nomem(c->err);
        return CKPT_OK;
    }
    load_plan *pl = &c->plan[pi];
    pl->t = t;
    pl->from = ti.dtype;
    pl->location = mapped_location(&c->o, ti.location);
    pl->scalar_from_1d = scalar_from_1d;
    /* one element of a 1-d tensor, or the whole tensor when row-major */
    pl->contiguous = scalar_from_1d || ti.is_contiguous;
    if (p->numel == 0 || (c->o.flags & CKPT_LOAD_CHECK_ONLY))
        return CKPT_OK;
    ckpt_status st = ckpt_tensor_data(c->f, t, &pl->src, &pl->zero_copy, c->err);
    if (st != CKPT_OK)
        return st;
    if (!pl->src)
        return ckpt__fail(c->err, CKPT_ERR_FORMAT, "", CKPT_NO_OFFSET,
                          "tensor \"%s\" has no data", e->key);
    return CKPT_OK;
}

/*
 * The modules, as a trie of name components, to emulate load_state_dict's
 * walk for the report: node 0 is the root (prefix ""); an edge (parent,
 * component) leads to a child module or to a parameter, found by a keyed
 * hash of the component, so every lookup costs the component's length.
 */
typedef struct module_node {
    const char *prefix;        /* "net.0." (points into a name), "" for the root */
    size_t prefix_len;
    size_t first_child, next_sibling, last_child; /* SIZE_MAX: none */
    size_t first_param, param_count;              /* a range of module_tree.order */
    size_t rank;               /* position in depth-first order */
} module_node;

typedef struct module_edge {
    size_t parent;
    const char *comp;          /* points into a parameter name */
    size_t len;
    size_t target;             /* a node, or a parameter index */
    bool is_param;
} module_edge;

typedef struct module_tree {
    module_node *nodes;
    size_t len, cap;
    module_edge *edges;
    size_t n_edges;
    size_t *table;             /* edge index + 1; 0 empty */
    size_t table_cap;
    size_t *param_module;      /* module of each parameter */
    size_t *order;             /* parameters grouped by module, model order within */
    size_t *dfs;               /* nodes in depth-first order */
} module_tree;

static size_t edge_hash(const module_tree *mt, size_t parent, const char *comp, size_t len,
                        bool is_param)
{
    uint64_t h = ckpt__hash_keyed(mt, comp, len);
    h ^= ((uint64_t)parent * 2 + is_param) * 0x9e3779b97f4a7c15ull;
    return (size_t)(h ^ (h >> 29)) & (mt->table_cap - 1);
}

static size_t edge_find(const module_tree *mt, size_t parent, const char *comp, size_t len,
                        bool is_param)
{
    size_t mask = mt->table_cap - 1;
    for (size_t h = edge_hash(mt, parent, comp, len, is_param);; h = (h + 1) & mask) {
        size_t e = mt->table[h];
        if (!e)
            return SIZE_MAX;
        const module_edge *ed = &mt->edges[e - 1];
        if (ed->parent == parent && ed->is_param == is_param && ed->len == len &&
            memcmp(ed->comp, comp, len) == 0)
            return ed->target;
    }
}

static void edge_add(module_tree *mt, size_t parent, const char *comp, size_t len, bool is_param,
                     size_t target)
{
    size_t mask = mt->table_cap - 1;
    size_t h = edge_hash(mt, parent, comp, len, is_param);
    while (mt->table[h])
        h = (h + 1) & mask;
    mt->edges[mt->n_edges] = (module_edge){parent, comp, len, target, is_param};
    mt->table[h] = ++mt->n_edges;
}

static size_t module_child(module_tree *mt, size_t parent, const char *name, size_t start,
                           size_t end)
{
    size_t c = edge_find(mt, parent, name + start, end - start, false);
    if (c != SIZE_MAX)
        return c;
    if (mt->len == mt->cap) {
        void *p = ckpt__array_grow(mt->nodes, &mt->cap, sizeof(module_node));
        if (!p)
            return SIZE_MAX;
        mt->nodes = p;
    }
    c = mt->len++;
    mt->nodes[c] = (module_node){name, end + 1, SIZE_MAX, SIZE_MAX, SIZE_MAX, 0, 0, 0};
    module_node *par = &mt->nodes[parent];
    if (par->last_child == SIZE_MAX)
        par->first_child = c;
    else
        mt->nodes[par->last_child].next_sibling = c;
    par->last_child = c;
    edge_add(mt, parent, name + start, end - start, false, c);
    return c;
}

/* The modules of a name's components but the last ("net.0.weight": "net.",
 * "net.0."), made when new: *node gets the innermost, *start where the last
 * component begins. */
static bool module_path(module_tree *mt, const char *name, size_t *node, size_t *start)
{
    *node = 0;
    *start = 0;
    for (const char *dot = strchr(name, '.'); dot; dot = strchr(dot + 1, '.')) {
        size_t end = (size_t)(dot - name);
        *node = module_child(mt, *node, name, *start, end);
        if (*node == SIZE_MAX)
            return false;
        *start = end + 1;
    }
    return true;
}

static bool module_tree_build(module_tree *mt, const ckpt_model *m)
{
    memset(mt, 0, sizeof(*mt));
    size_t comps = 0;
    for (size_t i = 0; i < m->count; i++)
        for (const char *p = m->params[i].name; p; p = strchr(p, '.'), p = p ? p + 1 : p)
            comps++;
    for (size_t i = 0; i < m->modules.len; i++)
        for (const char *p = m->modules.items[i]; p; p = strchr(p, '.'), p = p ? p + 1 : p)
            comps++;
    size_t cap = 16;
    while (cap < comps * 2)
        cap *= 2;
    size_t n = m->count ? m->count : 1;
    mt->table_cap = cap;
    mt->table = calloc(cap, sizeof(size_t));
    mt->edges = malloc((comps ? comps : 1) * sizeof(module_edge));
    mt->param_module = malloc(n * sizeof(size_t));
    mt->order = malloc(n * sizeof(size_t));
    mt->cap = 16;
    mt->nodes = malloc(mt->cap * sizeof(module_node));
    if (!mt->table || !mt->edges || !mt->param_module || !mt->order || !mt->nodes)
        return false;
    mt->nodes[0] = (module_node){"", 0, SIZE_MAX, SIZE_MAX, SIZE_MAX, 0, 0, 0};
    mt->len = 1;
    /* parameters and declared modules in the order they were added */
    size_t next_module = 0;
    for (size_t i = 0; i <= m->count; i++) {
        size_t node, start;
        for (; next_module < m->modules.len && m->module_at[next_module] <= i; next_module++)
            if (!module_path(mt, m->modules.items[next_module], &node, &start))
                return false;
        if (i == m->count)
            break;
        const char *name = m->params[i].name;
        if (!module_path(mt, name, &node, &start))
            return false;
        mt->param_module[i] = node;
        mt->nodes[node].param_count++;
        edge_add(mt, node, name + start, strlen(name + start), true, i);
    }
    /* depth-first order, children in the order they first appear */
    mt->dfs = malloc(mt->len * sizeof(size_t));
    size_t *stack = malloc(mt->len * sizeof(size_t));
    if (!mt->dfs || !stack) {
        free(stack);
        return false;
    }
    size_t sp = 0, k = 0;
    stack[sp++] = 0;
    while (sp) {
        size_t node = stack[--sp];
        mt->nodes[node].rank = k;
        mt->dfs[k++] = node;
        size_t first = sp;
        for (size_t ch = mt->nodes[node].first_child; ch != SIZE_MAX; ch = mt->nodes[ch].next_sibling)
            stack[sp++] = ch;
        for (size_t a = first, b = sp; b > a + 1; a++, b--) {
            size_t t = stack[a];
            stack[a] = stack[b - 1];
            stack[b - 1] = t;
        }
    }
    free(stack);
    /* parameters grouped by module */
    size_t at = 0;
    for (size_t j = 0; j < mt->len; j++) {
        mt->nodes[j].first_param = at;
        at += mt->nodes[j].param_count;
        mt->nodes[j].param_count = 0;
    }
    for (size_t i = 0; i < m->count; i++) {
        module_node *nd = &mt->nodes[mt->param_module[i]];
        mt->order[nd->first_param + nd->param_count++] = i;
    }
    return true;
}

static void module_tree_free(module_tree *mt)
{
    free(mt->nodes);
    free(mt->edges);
    free(mt->table);
    free(mt->param_module);
    free(mt->order);
    free(mt->dfs);
}

/* A module of the state dict's _metadata: its prefix after remapping and
 * its version (-1 when none is given). */
typedef struct meta_module {
    char *prefix;
    int64_t version;
} meta_module;

static int meta_cmp(const void *a, const void *b)
{
    return strcmp(((const meta_module *)a)->prefix, ((const meta_module *)b)->prefix);
}

static ckpt_status meta_build(load_ctx *c)
{
    c->meta_built = true;
    const ckpt_value *meta = ckpt_value_get(ckpt_value_state(c->sd), "_metadata");
    size_t n = ckpt_value_len(meta);
    c->meta = calloc(n ? n : 1, sizeof(meta_module));
    if (!c->meta)
        return ckpt__nomem(c->err);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const ckpt_value *k = ckpt_value_key(meta, i);
        const char *name = ckpt_value_str(k, &len);
        if (ckpt_value_kind(k) != CKPT_KIND_STR || memchr(name, '\0', len))
            continue;
        /* "net.1" names the module whose prefix is "net.1."; "" the root */
        char *dotted = malloc(len + 2);
        if (!dotted)
            return ckpt__nomem(c->err);
        memcpy(dotted, name, len);
        if (len)
            dotted[len++] = '.';
        char *mapped = remap_key(&c->o, dotted, len);
        free(dotted);
        if (!mapped)
            return ckpt__nomem(c->err);
        const ckpt_value *version = ckpt_value_get(ckpt_value_dict_value(meta, i), "version");
        c->meta[c->n_meta].prefix = mapped;
        c->meta[c->n_meta++].version =
            ckpt_value_kind(version) == CKPT_KIND_INT ? ckpt_value_int(version) : -1;
    }
    qsort(c->meta, c->n_meta, sizeof(meta_module), meta_cmp);
    return CKPT_OK;
}

/* BatchNorm's compatibility rule: a state dict saved before its version 2
 * (by the state dict's _metadata, or without _metadata) has no
 * num_batches_tracked, and load_state_dict does not report the key
 * missing. The model keeps its value, as PyTorch 2.1 and later do (1.13
 * writes 0). */
static ckpt_status old_batchnorm_key(load_ctx *c, const model_param *p, const module_node *nd,
                                     bool *old)
{
    *old = false;
    if (p->dtype != CKPT_DTYPE_INT64 || p->ndim != 0 ||
        strcmp(p->name + nd->prefix_len, "num_batches_tracked") != 0)
        return CKPT_OK;
    if (!c->meta_built)
        CKPT_RETURN_IF_ERROR(meta_build(c));
    char *prefix = dup_n(nd->prefix, nd->prefix_len);
    if (!prefix)
        return ckpt__nomem(c->err);
    meta_module want = {prefix, 0};
    const meta_module *hit = bsearch(&want, c->meta, c->n_meta, sizeof(meta_module), meta_cmp);
    free(prefix);
    *old = !hit || hit->version < 2;
    return CKPT_OK;
}

/* An unexpected key, found at a module: kind 0 for the module's
 * _extra_state (listed first), 1 for the others. */
typedef struct unexpected_rec {
    size_t rank;
    int kind;
    size_t entry;
} unexpected_rec;

static int unexpected_cmp(const void *a, const void *b)
{
    const unexpected_rec *x = a, *y = b;
    if (x->rank != y->rank)
        return x->rank < y->rank ? -1 : 1;
    if (x->kind != y->kind)
        return x->kind - y->kind;
    return (x->entry > y->entry) - (x->entry < y->entry);
}

/* load_state_dict's walk: module by module in depth-first order, the
 * missing keys and the checks of the module's parameters, then the keys
 * under its prefix whose first component names neither a child module nor
 * a parameter of it (its _extra_state first: a C model has none to set). */
static ckpt_status walk_modules(load_ctx *c, const module_tree *mt, str_list *errors)
{
    ckpt_model *m = c->m;
    ckpt_status st = CKPT_OK;
    for (size_t k = 0; k < mt->len && st == CKPT_OK; k++) {
        const module_node *nd = &mt->nodes[mt->dfs[k]];
        for (size_t j = 0; j < nd->param_count && st == CKPT_OK; j++) {
            size_t i = mt->order[nd->first_param + j], e;
            const char *name = m->params[i].name;
            if (!lookup_find(c, name, strlen(name), &e)) {
                bool old;
                st = old_batchnorm_key(c, &m->params[i], nd, &old);
                if (st == CKPT_OK && !old && !str_list_push(&m->missing, dup_n(name, strlen(name))))
                    st = ckpt__nomem(c->err);
                continue;
            }
            c->entries[e].param = i;
            if (!m->params[i].extra_state) /* any value: the caller's to read */
                st = check_param(c, i, &c->entries[e], errors);
        }
    }
    if (st != CKPT_OK)
        return st;

    unexpected_rec *recs = NULL;
    size_t n_recs = 0, cap = 0;
    static const char extra[] = "_extra_state";
    for (size_t e = 0; e < c->n_entries && st == CKPT_OK; e++) {
        const char *key = c->entries[e].key;
        size_t node = 0, plen = 0;
        for (;;) {
            const char *rest = key + plen;
            const char *dot = strchr(rest, '.');
            size_t clen = dot ? (size_t)(dot - rest) : strlen(rest);
            int kind = -1;
            size_t pi;
            if (!c->entries[e].can_match)
                kind = 1; /* 3, (1, 'a') or "w\0x" as a key: never a parameter's name */
            else if (!dot && clen == sizeof(extra) - 1 && memcmp(rest, extra, clen) == 0)
                /* unexpected unless the module has extra state, even when
                 * a parameter has that name, as in PyTorch */
                kind = (pi = edge_find(mt, node, rest, clen, true)) != SIZE_MAX &&
                               m->params[pi].extra_state
                           ? -1
                           : 0;
            else if (edge_find(mt, node, rest, clen, false) == SIZE_MAX &&
                     edge_find(mt, node, rest, clen, true) == SIZE_MAX)
                kind = 1;
            if (kind >= 0) {
                if (n_recs == cap) {
                    void *p = ckpt__array_grow(recs, &cap, sizeof(unexpected_rec));
                    if (!p) {
                        st = ckpt__nomem(c->err);
                        break;
                    }
                    recs = p;
                }
                recs[n_recs++] = (unexpected_rec){mt->nodes[node].rank, kind, e};
            }
            if (!c->entries[e].can_match || !dot)
                break;
            node = edge_find(mt, node, rest, clen, false);
            if (node == SIZE_MAX)
                break;
            plen += clen + 1;
        }
    }
    if (st == CKPT_OK && n_recs) {
        qsort(recs, n_recs, sizeof(unexpected_rec), unexpected_cmp);
        for (size_t r = 0; r < n_recs && st == CKPT_OK; r++) {
            const char *key = c->entries[recs[r].entry].key;
            if (!str_list_push(&m->unexpected, dup_n(key, strlen(key))))
                st = ckpt__nomem(c->err);
        }
    }
    free(recs);
    return st;
}

/* Joins "\"a\", \"b\"" for the Missing/Unexpected lines. */
static char *quoted_list(const str_list *l)
{
    size_t n = 1;
    for (size_t i = 0; i < l->len; i++)
        n += strlen(l->items[i]) + 4;
    char *s = malloc(n);
    if (!s)
        return NULL;
    size_t at = 0;
    for (size_t i = 0; i < l->len; i++)
        at += (size_t)sprintf(s + at, "%s\"%s\"", i ? ", " : "", l->items[i]);
    s[at] = '\0';
    return s;
}

static ckpt_status build_message(ckpt_model *m, bool strict, str_list *errors, ckpt_error *err)
{
    str_list lines = {0};
    ckpt_status st = CKPT_OK;
    if (strict && m->missing.len) {
        char *q = quoted_list(&m->missing);
        if (!q || !str_list_push(&lines, str_printf("Missing key(s) in state_dict: %s. ", q)))
            st = ckpt__nomem(err);
        free(q);
    }
    if (st == CKPT_OK && strict && m->unexpected.len) {
        char *q = quoted_list(&m->unexpected);
        if (!q || !str_list_push(&lines, str_printf("Unexpected key(s) in state_dict: %s. ", q)))
            st = ckpt__nomem(err);
        free(q);
    }
    for (size_t i = 0; st == CKPT_OK && i < errors->len; i++)
        if (!str_list_push(&lines, dup_n(errors->items[i], strlen(errors->items[i]))))
            st = ckpt__nomem(err);
    if (st == CKPT_OK && lines.len) {
        size_t n = strlen(m->class_name) + 64;
        for (size_t i = 0; i < lines.len; i++)
            n += strlen(lines.items[i]) + 2;
        m->message = malloc(n);
        if (!m->message) {
            st = ckpt__nomem(err);
        } else {
            size_t at = (size_t)sprintf(m->message, "Error(s) in loading state_dict for %s:",
                                        m->class_name);
            for (size_t i = 0; i < lines.len; i++)
                at += (size_t)sprintf(m->message + at, "\n\t%s", lines.items[i]);
        }
    }
    str_list_clear(&lines);
    return st;
}

/* Second pass for one parameter. */
static ckpt_status load_param(load_ctx *c, size_t pi, ckpt_load_report *r, void **scratch,
                              size_t *scratch_cap)
{
    model_param *p = &c->m->params[pi];
    load_plan *pl = &c->plan[pi];
    size_t esize = ckpt_dtype_size(p->dtype);
    size_t from_size = ckpt_dtype_size(pl->from);
    bool convert = pl->from != p->dtype;
    const void *src = pl->src; /* values in the model's dtype, contiguous, or NULL */

    if (p->numel && !convert && pl->contiguous) {
        if (pl->zero_copy && p->own_mem && (c->o.flags & CKPT_LOAD_ZERO_COPY) && !c->o.place &&
            !pl->scalar_from_1d) {
            p->data = (void *)(uintptr_t)pl->src;
            p->borrowed = true;
            p->placed = false;
            p->loaded = true;
            snprintf(p->location, sizeof(p->location), "%s", pl->location);
            r->zero_copy++;
            r->loaded++;
            return CKPT_OK;
        }
    } else if (p->numel) {
        /* the values in the model's dtype, in scratch (or straight into host
         * memory when nothing will place them elsewhere) */
        void *dst = p->host;
        if (c->o.place) {
            if (*scratch_cap < p->nbytes) {
                void *s = realloc(*scratch, (size_t)p->nbytes);
                if (!s)
                    return ckpt__nomem(c->err);
                *scratch = s;
                *scratch_cap = (size_t)p->nbytes;
            }
            dst = *scratch;
        }
        const void *from = pl->src;
        void *tmp = NULL;
        if (pl->contiguous && from) /* a cold file: read while converting */
            ckpt__map_advise(from, p->numel * from_size, CKPT__ADVISE_WILLNEED);
        if (!pl->contiguous) {
            uint64_t nb;
            if (!ckpt__mul_u64(p->numel, from_size, &nb) || nb > SIZE_MAX)
                return ckpt__nomem(c->err);
            tmp = convert ? malloc((size_t)nb) : dst;
            if (!tmp)
                return ckpt__nomem(c->err);
            ckpt_status st = ckpt__tensor_copy(c->f, pl->t, tmp, (size_t)nb, c->err);
            if (st != CKPT_OK) {
                if (tmp != dst)
                    free(tmp);
                return st;
            }
            from = tmp;
        }
        if (convert) {
            ckpt_status st = CKPT_OK;
            if (is_integral(pl->from))
                convert_integral(p->dtype, dst, pl->from, from, (size_t)p->numel);
            else
                st = ckpt_convert_dtype(p->dtype, dst, pl->from, from, (size_t)p->numel);
            if (tmp != dst)
                free(tmp);
            if (st != CKPT_OK)
                return ckpt__fail(c->err, st, "", CKPT_NO_OFFSET, "converting \"%s\" failed",
                                  p->name);
            r->converted++;
        }
        src = dst;
    }

    if (c->o.place) {
        ckpt_placement pc;
        memset(&pc, 0, sizeof(pc));
        pc.struct_size = sizeof(pc);
        pc.name = p->name;
        pc.index = pi;
        pc.location = pl->location;
        pc.dtype = p->dtype;
        pc.ndim = p->ndim;
        pc.shape = p->shape;
        pc.data = src;
        pc.nbytes = p->nbytes;
        ckpt_status st = c->o.place(c->o.place_user, &pc, c->err);
        if (st != CKPT_OK)
            return st;
        if (pc.placed) {
            p->data = pc.dest;
            p->placed = true;
            p->borrowed = false;
            p->loaded = true;
            snprintf(p->location, sizeof(p->location), "%s", pl->location);
            r->placed++;
            r->loaded++;
            return CKPT_OK;
        }
    }
    if (p->numel && src == pl->src && pl->contiguous && !convert && !pl->scalar_from_1d) {
        /* from the file: read into host memory (pread, see ckpt__tensor_copy) */
        ckpt_status st = ckpt__tensor_copy(c->f, pl->t, p->host, (size_t)p->numel * esize,
                                           c->err);
        if (st != CKPT_OK)
            return st;
    } else if (p->numel && src != p->host) {
        memcpy(p->host, src, (size_t)p->numel * esize);
    }
    p->data = p->host;
    p->borrowed = false;
    p->placed = false;
    p->loaded = true;
    snprintf(p->location, sizeof(p->location), "%s", pl->location);
    r->loaded++;
    return CKPT_OK;
}

static void fill_report(const ckpt_model *m, ckpt_load_report *r, const str_list *errors)
{
    r->missing = (const char *const *)m->missing.items;
    r->missing_count = m->missing.len;
    r->unexpected = (const char *const *)m->unexpected.items;
    r->unexpected_count = m->unexpected.len;
    r->errors = (const char *const *)errors->items;
    r->error_count = errors->len;
    r->message = m->message;
}

static ckpt_status model_load(ckpt_model *m, ckpt_file *f, const ckpt_load_options *opts,
                              ckpt_load_report *r, ckpt_error *err)
{
    memset(r, 0, sizeof(*r));
    if (!m || !f)
        return CKPT_INVALID_ARG(err, "ckpt_model_load needs a model and a file");
    load_ctx c;
    memset(&c, 0, sizeof(c));
    c.m = m;
    c.f = f;
    c.err = err;
    ckpt_load_options_default(&c.o);
    ckpt__struct_in(&c.o, sizeof(c.o), opts);
    if ((c.o.strip_prefix_count && !c.o.strip_prefixes) ||
        (c.o.prefix_map_count && !c.o.prefix_map) ||
        (c.o.location_map_count && !c.o.location_map))
        return CKPT_INVALID_ARG(err, "a remapping count without its array");
    if (!(c.o.flags & CKPT_LOAD_CHECK_ONLY))
        for (size_t i = 0; i < m->count; i++)
            if (m->params[i].no_data && !m->params[i].extra_state)
                return CKPT_INVALID_ARG(err,
                                        "parameter \"%s\" is a description only "
                                        "(CKPT_PARAM_NO_DATA): the model can only be checked",
                                        m->params[i].name);
    report_clear(m);
    /* this load's problem lines, kept by the model for the report */
    str_list *errors = &m->errors;
    bool strict = !(c.o.flags & CKPT_LOAD_NON_STRICT);

    const ckpt_value *sd = c.o.state_dict;
    ckpt_status st = CKPT_OK;
    if (!sd)
        st = find_state_dict(ckpt_file_root(f), c.o.key, &sd, err);
    else if (ckpt_value_kind(sd) != CKPT_KIND_DICT && ckpt_value_kind(sd) != CKPT_KIND_ORDERED_DICT)
        st = ckpt__fail(err, CKPT_ERR_TYPE, "", CKPT_NO_OFFSET, "the state dict is a %s, not a dict",
                        ckpt_kind_name(ckpt_value_kind(sd)));
    module_tree mt = {0};
    void *scratch = NULL;
    size_t scratch_cap = 0;
    if (st != CKPT_OK)
        goto out;
    c.plan = calloc(m->count ? m->count : 1, sizeof(load_plan));
    if (!c.plan || !module_tree_build(&mt, m)) {
        st = ckpt__nomem(err);
        goto out;
    }
    c.sd = sd;
    st = collect_entries(&c, sd, errors);
    if (st == CKPT_OK)
        st = walk_modules(&c, &mt, errors);
    if (st != CKPT_OK)
        goto out;
    st = build_message(m, strict, errors, err);
    if (st != CKPT_OK)
        goto out;
    if (m->message) {
        /* the first line after the header, for err */
        const char *first = strchr(m->message, '\t');
        st = ckpt__fail(err, CKPT_ERR_MISMATCH, "", CKPT_NO_OFFSET,
                        "state dict does not fit %s: %s%s", m->class_name, first ? first + 1 : "",
                        (m->missing.len + m->unexpected.len + errors->len > 1) ? " (and more)" : "");
        goto out;
    }
    if (c.o.flags & CKPT_LOAD_CHECK_ONLY) {
        for (size_t i = 0; i < m->count; i++) {
            r->loaded += c.plan[i].t != NULL;
            r->converted += c.plan[i].t && c.plan[i].from != m->params[i].dtype;
        }
        goto out;
    }
    for (size_t i = 0; i < m->count; i++)
        m->params[i].loaded = false;
    for (size_t i = 0; i < m->count; i++) {
        if (!c.plan[i].t)
            continue;
        st = load_param(&c, i, r, &scratch, &scratch_cap);
        if (st != CKPT_OK)
            goto out;
    }
out:
    fill_report(m, r, errors);
    for (size_t i = 0; i < c.n_entries; i++)
        free(c.entries[i].key);
    for (size_t i = 0; i < c.n_meta; i++)
        free(c.meta[i].prefix);
    free(c.meta);
    free(c.entries);
    free(c.lookup);
    free(c.plan);
    free(scratch);
    module_tree_free(&mt);
    return st;
}

ckpt_status ckpt_model_load(ckpt_model *m, ckpt_file *f, const ckpt_load_options *opts,
                            ckpt_load_report *report, ckpt_error *err)
{
    if (report && report->struct_size < sizeof(size_t))
        return CKPT_INVALID_ARG(err, "ckpt_model_load: report.struct_size not set");
    ckpt_load_report r = {.struct_size = sizeof(r)};
    ckpt_status st = model_load(m, f, opts, &r, err);
    if (report)
        ckpt__struct_out(report, &r, sizeof(r));
    return st;
}
