/*
 * diff.c - ckpt diff A B: what differs between two checkpoints, whatever
 * their formats.
 *
 * Tensors are matched by name (ckpt_file_tensor's names; a name listed twice
 * counts once, with its first tensor): names only in one file, dtypes and
 * shapes that differ, and for tensors of one shape, how many elements differ
 * and by how much at most. a and b are equal when |a - b| <= atol + rtol*|b|
 * (numpy's allclose; the defaults 0 and 0 ask for exact equality); NaN equals
 * NaN at the same position. float64/32/16 and bfloat16 compare as float64,
 * integers and bool exactly (across widths and signedness; with a float on
 * the other side, as float64), other dtypes byte by byte when both files
 * have the same dtype (sub-byte dtypes count bytes, not elements). Values
 * stream through fixed chunks: memory does not grow with the tensors
 * (sparse tensors are compared through their dense copy).
 *
 * Plain values (everything but tensors) are compared leaf by leaf, by path
 * (named like tensors), by their Python repr (ckpt_value_repr): 1 and 1.0
 * differ, NaN equals NaN. A safetensors file holds no plain values, only
 * __metadata__ text: two safetensors files compare their metadata
 * ("__metadata__.KEY"); a safetensors file against another format compares
 * tensors only.
 */
#include "cli.h"

#include <ckpt.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_ELEMS 65536
#define MAX_ELEM_BYTES 16           /* complex128 */
#define MAX_DIMS 64

static const char *PROG = "ckpt";

static int cmp_leaf(const void *a, const void *b)
{
    const cli_leaf *x = *(const cli_leaf *const *)a, *y = *(const cli_leaf *const *)b;
    int r = strcmp(x->path, y->path);
    if (r)
        return r;
    return x->order < y->order ? -1 : (x->order > y->order);
}

/* The first leaf named path among sorted (by path, then order); NULL if none. */
static cli_leaf *find_leaf(cli_leaf **sorted, size_t n, const char *path)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(sorted[mid]->path, path) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(sorted[lo]->path, path) == 0 ? sorted[lo] : NULL;
}

/* ---- results ------------------------------------------------------------- */

typedef struct tensor_pair {
    const char *name;
    const ckpt_tensor *a, *b;
} tensor_pair;

typedef struct value_diff {
    const char *name;
    uint64_t count, numel;
    double max_abs;
    bool has_max;               /* false for byte comparisons */
} value_diff;

typedef struct plain_diff {
    const char *path;
    const char *a, *b;          /* NULL when absent */
} plain_diff;

typedef struct diff_result {
    cli_vec only_a, only_b;         /* of const char * */
    cli_vec dtype, shape;           /* of tensor_pair */
    cli_vec values;                 /* of value_diff */
    cli_vec plain;                  /* of plain_diff */
    size_t tensors_compared;
    size_t plain_compared;
    bool plain_skipped;
} diff_result;

/* ---- tensor values ---------------------------------------------------------- */

typedef enum vclass { VC_FLOAT, VC_INT, VC_BYTES } vclass;

static vclass value_class(ckpt_dtype d)
{
    switch (d) {
    case CKPT_DTYPE_FLOAT64:
    case CKPT_DTYPE_FLOAT32:
    case CKPT_DTYPE_FLOAT16:
    case CKPT_DTYPE_BFLOAT16:
        return VC_FLOAT;
    case CKPT_DTYPE_INT64:
    case CKPT_DTYPE_INT32:
    case CKPT_DTYPE_INT16:
    case CKPT_DTYPE_INT8:
    case CKPT_DTYPE_UINT64:
    case CKPT_DTYPE_UINT32:
    case CKPT_DTYPE_UINT16:
    case CKPT_DTYPE_UINT8:
    case CKPT_DTYPE_BOOL:
        return VC_INT;
    default:
        return VC_BYTES;
    }
}

/* A tensor's elements in row-major order, a chunk at a time. */
typedef struct tsrc {
    ckpt_tensor_info ti;
    const uint8_t *base;        /* first element, indexed with the strides */
    uint8_t *dense;             /* sparse tensors: their dense copy */
    size_t esize;               /* bytes per element (1 for sub-byte dtypes: bytes) */
    uint64_t count;             /* elements (bytes for sub-byte dtypes) */
    bool contiguous;
    uint64_t pos;               /* next element */
    uint64_t idx[MAX_DIMS];     /* its index, for strided reads */
    uint64_t off;               /* its offset in elements from base */
} tsrc;

static bool tsrc_open(tsrc *s, ckpt_file *f, const ckpt_tensor *t, const char *fname,
                      const char *tname)
{
    memset(s, 0, sizeof(*s));
    s->ti.struct_size = sizeof(s->ti);
    ckpt_tensor_get_info(t, &s->ti);
    s->esize = ckpt_dtype_size(s->ti.dtype);
    s->count = s->ti.numel;
    if (s->esize == 0) {
        s->esize = 1;
        s->count = s->ti.nbytes;
    }
    ckpt_error err;
    char msg[768];
    if (s->ti.layout != CKPT_LAYOUT_STRIDED) {
        s->dense = malloc(s->ti.nbytes ? (size_t)s->ti.nbytes : 1);
        if (!s->dense) {
            fprintf(stderr, "%s: %s: %s: out of memory for the dense copy\n", PROG, fname, tname);
            return false;
        }
        if (ckpt_tensor_copy(f, t, s->dense, (size_t)s->ti.nbytes, &err) != CKPT_OK) {
            fprintf(stderr, "%s: %s: %s: %s\n", PROG, fname, tname,
                    ckpt_error_format(&err, msg, sizeof(msg)));
            return false;
        }
        s->base = s->dense;
        s->contiguous = true;
        return true;
    }
    if (s->ti.ndim > MAX_DIMS) {
        fprintf(stderr, "%s: %s: %s: more than %d dimensions\n", PROG, fname, tname, MAX_DIMS);
        return false;
    }
    s->contiguous = s->ti.is_contiguous;
    if (!s->ti.has_storage || s->count == 0)
        return true;
    const void *data;
    if (ckpt_tensor_data(f, t, &data, NULL, &err) != CKPT_OK) {
        fprintf(stderr, "%s: %s: %s: %s\n", PROG, fname, tname,
                ckpt_error_format(&err, msg, sizeof(msg)));
        return false;
    }
    s->base = data;
    return true;
}

/* The next n elements: straight from the data when contiguous, else
 * gathered into scratch (n x esize bytes). */
static const uint8_t *tsrc_next(tsrc *s, size_t n, uint8_t *scratch)
{
    if (s->contiguous) {
        const uint8_t *p = s->base + s->pos * s->esize;
        s->pos += n;
        return p;
    }
    uint32_t nd = s->ti.ndim;
    for (size_t k = 0; k < n; k++) {
        memcpy(scratch + k * s->esize, s->base + s->off * s->esize, s->esize);
        for (uint32_t d = nd; d-- > 0;) {
            s->off += (uint64_t)s->ti.stride[d];
            if (++s->idx[d] < (uint64_t)s->ti.shape[d])
                break;
            s->off -= (uint64_t)s->ti.stride[d] * s->idx[d];
            s->idx[d] = 0;
        }
    }
    s->pos += n;
    return scratch;
}

static void tsrc_close(tsrc *s) { free(s->dense); }

/* An integer element, exactly: signed values and unsigned ones above
 * INT64_MAX apart. */
typedef struct ival {
    int64_t s;
    uint64_t u;
    bool big;                   /* unsigned above INT64_MAX: u holds it */
} ival;

static ival load_int(ckpt_dtype d, const uint8_t *p)
{
    ival v = {0};
    switch (d) {
    case CKPT_DTYPE_INT64: { int64_t x; memcpy(&x, p, 8); v.s = x; break; }
    case CKPT_DTYPE_INT32: { int32_t x; memcpy(&x, p, 4); v.s = x; break; }
    case CKPT_DTYPE_INT16: { int16_t x; memcpy(&x, p, 2); v.s = x; break; }
    case CKPT_DTYPE_INT8: { int8_t x; memcpy(&x, p, 1); v.s = x; break; }
    case CKPT_DTYPE_UINT64: {
        uint64_t x;
        memcpy(&x, p, 8);
        if (x > (uint64_t)INT64_MAX) {
            v.big = true;
            v.u = x;
        } else {
            v.s = (int64_t)x;
        }
        break;
    }
    case CKPT_DTYPE_UINT32: { uint32_t x; memcpy(&x, p, 4); v.s = x; break; }
    case CKPT_DTYPE_UINT16: { uint16_t x; memcpy(&x, p, 2); v.s = x; break; }
    case CKPT_DTYPE_UINT8: v.s = p[0]; break;
    case CKPT_DTYPE_BOOL: v.s = p[0] != 0; break;
    default: break;
    }
    return v;
}

static long double ival_ld(ival v) { return v.big ? (long double)v.u : (long double)v.s; }

static void to_double(ckpt_dtype d, const uint8_t *src, size_t n, double *out)
{
    if (value_class(d) == VC_FLOAT) {
        if (ckpt_convert_dtype(CKPT_DTYPE_FLOAT64, out, d, src, n) == CKPT_OK)
            return;
    }
    size_t es = ckpt_dtype_size(d);
    for (size_t i = 0; i < n; i++)
        out[i] = (double)ival_ld(load_int(d, src + i * es));
}

typedef struct scratch {
    uint8_t *raw_a, *raw_b;     /* CHUNK_ELEMS x MAX_ELEM_BYTES */
    double *da, *db;            /* CHUNK_ELEMS */
} scratch;

typedef struct tol {
    double atol, rtol;
} tol;

static void note_diff(value_diff *vd, double d)
{
    if (d > vd->max_abs || isinf(d))
        vd->max_abs = d;
}

/* Compares the values of two tensors of one shape. false on a read error
 * (printed); vd gets the count of differing elements. */
static bool compare_values(ckpt_file *fa, const ckpt_tensor *a, ckpt_file *fb,
                           const ckpt_tensor *b, const char *name, const char *path_a,
                           const char *path_b, const tol *tl, scratch *sc, value_diff *vd,
                           bool *compared)
{
    *compared = false;
    tsrc sa, sb;
    bool ok = tsrc_open(&sa, fa, a, path_a, name);
    if (!ok) {
        tsrc_close(&sa);
        return false;
    }
    if (!tsrc_open(&sb, fb, b, path_b, name)) {
        tsrc_close(&sa);
        tsrc_close(&sb);
        return false;
    }
    ckpt_dtype da = sa.ti.dtype, db = sb.ti.dtype;
    vclass ca = value_class(da), cb = value_class(db);
    bool numeric = ca != VC_BYTES && cb != VC_BYTES;
    bool exact_int = ca == VC_INT && cb == VC_INT;
    /* meta tensors have no values; dtypes without a common number compare
     * only when they are the same dtype */
    if (!sa.base || !sb.base || (!numeric && (da != db || sa.count != sb.count)))
        goto out;
    *compared = true;
    vd->name = name;
    vd->numel = numeric ? sa.ti.numel : sa.count;
    vd->has_max = numeric;
    bool exact = tl->atol == 0 && tl->rtol == 0;
    for (uint64_t pos = 0; pos < sa.count;) {
        size_t n = sa.count - pos < CHUNK_ELEMS ? (size_t)(sa.count - pos) : CHUNK_ELEMS;
        const uint8_t *pa = tsrc_next(&sa, n, sc->raw_a);
        const uint8_t *pb = tsrc_next(&sb, n, sc->raw_b);
        if (!numeric) {
            for (size_t i = 0; i < n; i++)
                vd->count += memcmp(pa + i * sa.esize, pb + i * sb.esize, sa.esize) != 0;
        } else if (exact_int) {
            for (size_t i = 0; i < n; i++) {
                ival x = load_int(da, pa + i * sa.esize), y = load_int(db, pb + i * sb.esize);
                bool same = x.big == y.big && (x.big ? x.u == y.u : x.s == y.s);
                if (same)
                    continue;
                long double lx = ival_ld(x), ly = ival_ld(y), d = fabsl(lx - ly);
                note_diff(vd, (double)d);
                if (exact || d > (long double)tl->atol + (long double)tl->rtol * fabsl(ly))
                    vd->count++;
            }
        } else {
            to_double(da, pa, n, sc->da);
            to_double(db, pb, n, sc->db);
            for (size_t i = 0; i < n; i++) {
                double x = sc->da[i], y = sc->db[i];
                if (x == y || (isnan(x) && isnan(y)))
                    continue;
                double d = fabs(x - y);
                if (isnan(d))
                    d = INFINITY; /* NaN against a number, or inf - inf */
                note_diff(vd, d);
                if (exact || !(d <= tl->atol + tl->rtol * fabs(y)))
                    vd->count++;
            }
        }
        pos += n;
    }
out:
    tsrc_close(&sa);
    tsrc_close(&sb);
    return true;
}

static bool same_shape(const ckpt_tensor_info *x, const ckpt_tensor_info *y)
{
    if (x->ndim != y->ndim)
        return false;
    for (uint32_t i = 0; i < x->ndim; i++) {
        if (x->shape[i] != y->shape[i])
            return false;
    }
    return true;
}

/* ---- the comparison --------------------------------------------------------- */

static bool push_ptr(cli_vec *v, const void *p)
{
    const void **slot = cli_vec_push(v);
    if (!slot)
        return false;
    *slot = p;
    return true;
}

/* The bytes comparing a tensor's values goes through: its dense size (a
 * view with stride 0 counts every element it shows), 0 without values. */
static uint64_t values_bytes(const ckpt_tensor_info *ti)
{
    return ti->layout != CKPT_LAYOUT_STRIDED || ti->has_storage ? ti->nbytes : 0;
}

/* Whether going through `bytes` more of f's values (after *made) stays within
 * its max_output_ratio; says why not on stderr. */
static bool may_compare(ckpt_file *f, const char *path, const char *name, uint64_t bytes,
                        uint64_t *made)
{
    *made = *made + bytes < *made ? UINT64_MAX : *made + bytes;
    ckpt_error err;
    if (ckpt_file_check_output(f, *made, name, &err) == CKPT_OK)
        return true;
    cli_print_error(path, &err);
    fprintf(stderr, "%s: diff: --max-output-ratio N compares more\n", PROG);
    return false;
}

/* Results of comparing a pair of tensors, kept: a tensor shared through the
 * pickle memo is listed under every path to it, and is compared once. */
typedef struct pair_result {
    const ckpt_tensor *a, *b;   /* a NULL: an empty slot */
    value_diff vd;
    bool compared;
} pair_result;

typedef struct pair_memo {
    pair_result *slots;
    size_t cap, len;
} pair_memo;

static size_t pair_hash(const ckpt_tensor *a, const ckpt_tensor *b)
{
    return (size_t)(cli_hash_ptr(a) ^ (cli_hash_ptr(b) * 0xff51afd7ed558ccdull));
}

static void rehash_pair(void *fresh, size_t cap, const void *old)
{
    const pair_result *e = old;
    if (!e->a)
        return;
    pair_result *t = fresh;
    size_t i = pair_hash(e->a, e->b) & (cap - 1);
    while (t[i].a)
        i = (i + 1) & (cap - 1);
    t[i] = *e;
}

/* The slot of the pair (a NULL when not compared yet); NULL when out of memory. */
static pair_result *pair_slot(pair_memo *m, const ckpt_tensor *a, const ckpt_tensor *b)
{
    if (!cli_table_room((void **)&m->slots, &m->cap, m->len, sizeof(pair_result), rehash_pair))
        return NULL;
    size_t i = pair_hash(a, b) & (m->cap - 1);
    while (m->slots[i].a && (m->slots[i].a != a || m->slots[i].b != b))
        i = (i + 1) & (m->cap - 1);
    return &m->slots[i];
}

static bool diff_tensors(ckpt_file *fa, ckpt_file *fb, const char *path_a, const char *path_b,
                         const tol *tl, diff_result *r)
{
    uint64_t made_a = 0, made_b = 0;
    pair_memo memo = {0};
    scratch sc = {0};
    sc.raw_a = malloc(CHUNK_ELEMS * MAX_ELEM_BYTES);
    sc.raw_b = malloc(CHUNK_ELEMS * MAX_ELEM_BYTES);
    sc.da = malloc(CHUNK_ELEMS * sizeof(double));
    sc.db = malloc(CHUNK_ELEMS * sizeof(double));
    bool ok = sc.raw_a && sc.raw_b && sc.da && sc.db;
    if (!ok)
        fprintf(stderr, "%s: out of memory\n", PROG);
    for (size_t i = 0; ok && i < ckpt_file_tensor_count(fa); i++) {
        const char *name;
        const ckpt_tensor *ta = ckpt_file_tensor(fa, i, &name);
        if (ckpt_file_find_tensor(fa, name) != ta)
            continue; /* a name listed twice: its first tensor stands for it */
        const ckpt_tensor *tb = ckpt_file_find_tensor(fb, name);
        if (!tb) {
            ok = push_ptr(&r->only_a, name);
            continue;
        }
        r->tensors_compared++;
        ckpt_tensor_info ia = {.struct_size = sizeof(ia)}, ib = {.struct_size = sizeof(ib)};
        ckpt_tensor_get_info(ta, &ia);
        ckpt_tensor_get_info(tb, &ib);
        tensor_pair pair = {name, ta, tb};
        tensor_pair *slot;
        if (ia.dtype != ib.dtype) {
            ok = (slot = cli_vec_push(&r->dtype)) != NULL;
            if (ok)
                *slot = pair;
        }
        if (ok && !same_shape(&ia, &ib)) {
            ok = (slot = cli_vec_push(&r->shape)) != NULL;
            if (ok)
                *slot = pair;
            continue;
        }
        value_diff vd = {0};
        bool compared = false;
        pair_result *done = ok ? pair_slot(&memo, ta, tb) : NULL;
        if (ok && !done) {
            fprintf(stderr, "%s: out of memory\n", PROG);
            ok = false;
        } else if (ok && done->a) {
            vd = done->vd;
            vd.name = name;
            compared = done->compared;
        } else if (ok && may_compare(fa, path_a, name, values_bytes(&ia), &made_a) &&
                   may_compare(fb, path_b, name, values_bytes(&ib), &made_b) &&
                   compare_values(fa, ta, fb, tb, name, path_a, path_b, tl, &sc, &vd,
                                  &compared)) {
            *done = (pair_result){ta, tb, vd, compared};
            memo.len++;
        } else {
            ok = false;
        }
        if (ok && compared && vd.count) {
            value_diff *v = cli_vec_push(&r->values);
            ok = v != NULL;
            if (ok)
                *v = vd;
        }
    }
    for (size_t i = 0; ok && i < ckpt_file_tensor_count(fb); i++) {
        const char *name;
        const ckpt_tensor *tb = ckpt_file_tensor(fb, i, &name);
        if (ckpt_file_find_tensor(fb, name) == tb && !ckpt_file_find_tensor(fa, name))
            ok = push_ptr(&r->only_b, name);
    }
    if (!ok && sc.raw_a && sc.raw_b && sc.da && sc.db)
        fprintf(stderr, "%s: diff stopped\n", PROG);
    free(sc.raw_a);
    free(sc.raw_b);
    free(sc.da);
    free(sc.db);
    free(memo.slots);
    return ok;
}

static bool diff_plain(const cli_plain *pa, const cli_plain *pb, diff_result *r)
{
    cli_leaf *la = pa->leaves, *lb = pb->leaves;
    size_t na = pa->count, nb = pb->count;
    cli_leaf **sa = malloc((na ? na : 1) * sizeof(*sa)), **sb = malloc((nb ? nb : 1) * sizeof(*sb));
    bool ok = sa && sb;
    for (size_t i = 0; ok && i < na; i++)
        sa[i] = &la[i];
    for (size_t i = 0; ok && i < nb; i++)
        sb[i] = &lb[i];
    if (ok) {
        qsort(sa, na, sizeof(*sa), cmp_leaf);
        qsort(sb, nb, sizeof(*sb), cmp_leaf);
    }
    for (size_t i = 0; ok && i < na; i++) {
        if (find_leaf(sa, na, la[i].path) != &la[i])
            continue; /* a path seen twice: the first counts */
        cli_leaf *other = find_leaf(sb, nb, la[i].path);
        r->plain_compared++;
        if (other) {
            other->matched = true;
            if (other->text == la[i].text) /* interned */
                continue;
        }
        plain_diff *d = cli_vec_push(&r->plain);
        ok = d != NULL;
        if (ok)
            *d = (plain_diff){la[i].path, la[i].text, other ? other->text : NULL};
    }
    for (size_t i = 0; ok && i < nb; i++) {
        if (lb[i].matched || find_leaf(sb, nb, lb[i].path) != &lb[i])
            continue;
        r->plain_compared++;
        plain_diff *d = cli_vec_push(&r->plain);
        ok = d != NULL;
        if (ok)
            *d = (plain_diff){lb[i].path, NULL, lb[i].text};
    }
    if (!ok)
        fprintf(stderr, "%s: out of memory\n", PROG);
    free(sa);
    free(sb);
    return ok;
}

/* ---- output ----------------------------------------------------------------- */

static void print_shape(const ckpt_tensor *x)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(x, &ti);
    putchar('[');
    for (uint32_t i = 0; i < ti.ndim; i++)
        printf("%s%lld", i ? ", " : "", (long long)ti.shape[i]);
    putchar(']');
}

static const char *dtype_of(const ckpt_tensor *x)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(x, &ti);
    return ckpt_dtype_name(ti.dtype);
}

static bool is_same(const diff_result *r)
{
    return !r->only_a.len && !r->only_b.len && !r->dtype.len && !r->shape.len &&
           !r->values.len && !r->plain.len;
}

static void print_human(const diff_result *r)
{
    const char **names = r->only_a.p;
    for (size_t i = 0; i < r->only_a.len; i++)
        printf("only in A: %s\n", names[i]);
    names = r->only_b.p;
    for (size_t i = 0; i < r->only_b.len; i++)
        printf("only in B: %s\n", names[i]);
    const tensor_pair *pairs = r->dtype.p;
    for (size_t i = 0; i < r->dtype.len; i++)
        printf("dtype: %s  %s -> %s\n", pairs[i].name, dtype_of(pairs[i].a), dtype_of(pairs[i].b));
    pairs = r->shape.p;
    for (size_t i = 0; i < r->shape.len; i++) {
        printf("shape: %s  ", pairs[i].name);
        print_shape(pairs[i].a);
        printf(" -> ");
        print_shape(pairs[i].b);
        putchar('\n');
    }
    const value_diff *vals = r->values.p;
    for (size_t i = 0; i < r->values.len; i++) {
        printf("values: %s  %llu/%llu elements differ", vals[i].name, (unsigned long long)vals[i].count,
               (unsigned long long)vals[i].numel);
        if (vals[i].has_max)
            printf(", max abs diff %.6g", vals[i].max_abs);
        printf("\n");
    }
    const plain_diff *pd = r->plain.p;
    for (size_t i = 0; i < r->plain.len; i++)
        printf("value: %s  %s -> %s\n", pd[i].path[0] ? pd[i].path : "(root)",
               pd[i].a ? pd[i].a : "(absent)", pd[i].b ? pd[i].b : "(absent)");
    if (is_same(r)) {
        printf("same: %zu tensors", r->tensors_compared);
        if (!r->plain_skipped)
            printf(", %zu plain values", r->plain_compared);
    } else {
        const struct { size_t n; const char *what; } parts[] = {
            {r->only_a.len, "only in A"}, {r->only_b.len, "only in B"},
            {r->dtype.len, "dtype"},      {r->shape.len, "shape"},
            {r->values.len, "values"},    {r->plain.len, "plain values"},
        };
        printf("different:");
        bool first = true;
        for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
            if (!parts[i].n)
                continue;
            printf("%s %zu %s", first ? "" : ",", parts[i].n, parts[i].what);
            first = false;
        }
        printf(" (%zu tensors in both", r->tensors_compared);
        if (!r->plain_skipped)
            printf(", %zu plain values", r->plain_compared);
        putchar(')');
    }
    if (r->plain_skipped)
        printf("; plain values not compared: one file is safetensors");
    putchar('\n');
}

/* A JSON string; text that is not UTF-8 gets its high bytes as \xNN. */
static void jstr(cli_jw *jw, const char *s)
{
    if (cli_utf8_valid(s, strlen(s))) {
        cli_jw_string(jw, s);
        return;
    }
    char *t = malloc(strlen(s) * 4 + 1);
    if (!t) {
        cli_jw_string(jw, "");
        return;
    }
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x80)
            n += (size_t)sprintf(t + n, "\\x%02x", *p);
        else
            t[n++] = (char)*p;
    }
    t[n] = 0;
    cli_jw_string(jw, t);
    free(t);
}

static void jshape(cli_jw *jw, const ckpt_tensor *x)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(x, &ti);
    cli_jw_begin_array(jw);
    for (uint32_t i = 0; i < ti.ndim; i++)
        cli_jw_int(jw, ti.shape[i]);
    cli_jw_end_array(jw);
}

static void jnames(cli_jw *jw, const char *key, const cli_vec *v)
{
    const char **names = v->p;
    cli_jw_key(jw, key);
    cli_jw_begin_array(jw);
    for (size_t i = 0; i < v->len; i++)
        jstr(jw, names[i]);
    cli_jw_end_array(jw);
}

/* Written as it goes: the lists can be as long as the tensor lists. */
static int print_json(const diff_result *r)
{
    cli_jw *jw = malloc(sizeof(*jw));
    if (!jw) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        return CLI_EXIT_ERROR;
    }
    cli_jw_init(jw, stdout, 1);
    cli_jw_begin_object(jw);
    cli_jw_key(jw, "same");
    cli_jw_bool(jw, is_same(r));
    jnames(jw, "only_in_a", &r->only_a);
    jnames(jw, "only_in_b", &r->only_b);
    cli_jw_key(jw, "dtype_mismatch");
    cli_jw_begin_array(jw);
    const tensor_pair *pairs = r->dtype.p;
    for (size_t i = 0; i < r->dtype.len; i++) {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "name");
        jstr(jw, pairs[i].name);
        cli_jw_key(jw, "a");
        cli_jw_string(jw, dtype_of(pairs[i].a));
        cli_jw_key(jw, "b");
        cli_jw_string(jw, dtype_of(pairs[i].b));
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_key(jw, "shape_mismatch");
    cli_jw_begin_array(jw);
    pairs = r->shape.p;
    for (size_t i = 0; i < r->shape.len; i++) {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "name");
        jstr(jw, pairs[i].name);
        cli_jw_key(jw, "a");
        jshape(jw, pairs[i].a);
        cli_jw_key(jw, "b");
        jshape(jw, pairs[i].b);
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_key(jw, "value_mismatch");
    cli_jw_begin_array(jw);
    const value_diff *vals = r->values.p;
    for (size_t i = 0; i < r->values.len; i++) {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "name");
        jstr(jw, vals[i].name);
        cli_jw_key(jw, "count");
        cli_jw_int(jw, (long long)vals[i].count);
        cli_jw_key(jw, "numel");
        cli_jw_int(jw, (long long)vals[i].numel);
        /* null when not a number: byte comparisons, infinite differences */
        cli_jw_key(jw, "max_abs_diff");
        if (vals[i].has_max && isfinite(vals[i].max_abs))
            cli_jw_real(jw, vals[i].max_abs);
        else
            cli_jw_null(jw);
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_key(jw, "plain_mismatch");
    cli_jw_begin_array(jw);
    const plain_diff *pd = r->plain.p;
    for (size_t i = 0; i < r->plain.len; i++) {
        cli_jw_begin_object(jw);
        cli_jw_key(jw, "path");
        jstr(jw, pd[i].path);
        cli_jw_key(jw, "a");
        if (pd[i].a)
            jstr(jw, pd[i].a);
        else
            cli_jw_null(jw);
        cli_jw_key(jw, "b");
        if (pd[i].b)
            jstr(jw, pd[i].b);
        else
            cli_jw_null(jw);
        cli_jw_end_object(jw);
    }
    cli_jw_end_array(jw);
    cli_jw_key(jw, "tensors_compared");
    cli_jw_int(jw, (long long)r->tensors_compared);
    cli_jw_key(jw, "plain_compared");
    if (r->plain_skipped)
        cli_jw_null(jw);
    else
        cli_jw_int(jw, (long long)r->plain_compared);
    cli_jw_end_object(jw);
    bool ok = cli_jw_finish(jw, "diff");
    free(jw);
    return ok ? 0 : CLI_EXIT_ERROR;
}

/* ---- the command -------------------------------------------------------------- */

enum { OPT_ATOL = CLI_OPT_LONG, OPT_RTOL, OPT_JSON, OPT_MAX_OUTPUT_RATIO, OPT_TORCHSCRIPT_WEIGHTS };

static const struct option diff_options[] = {
    {"atol", required_argument, NULL, OPT_ATOL},
    {"rtol", required_argument, NULL, OPT_RTOL},
    {"json", no_argument, NULL, OPT_JSON},
    {"max-output-ratio", required_argument, NULL, OPT_MAX_OUTPUT_RATIO},
    {"torchscript-weights", no_argument, NULL, OPT_TORCHSCRIPT_WEIGHTS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command diff_command = {
    "diff",
    "ckpt diff A B [--atol X] [--rtol Y] [--json] [--max-output-ratio N] [--torchscript-weights]",
    "h",
    diff_options,
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s\n"
            "  Compares two checkpoints of any formats: tensor names only in one file,\n"
            "  dtype and shape mismatches, and for tensors of one shape the elements whose\n"
            "  values differ (|a - b| > atol + rtol*|b|; NaN equals NaN) with the largest\n"
            "  difference; then plain values (epoch, metrics, ...) by path. A safetensors\n"
            "  file's plain values are its __metadata__, compared only with another\n"
            "  safetensors file.\n"
            "  --atol X   absolute tolerance (default 0: exact)\n"
            "  --rtol Y   relative tolerance (default 0)\n"
            "  --json     one JSON object: same, only_in_a, only_in_b, dtype_mismatch,\n"
            "             shape_mismatch, value_mismatch, plain_mismatch\n"
            "  --max-output-ratio N  go through at most N times the bytes each file holds,\n"
            "             plus 64 MiB (default 64): a view with stride 0 shows more\n"
            "             elements than its file stores\n"
            CLI_TORCHSCRIPT_WEIGHTS_HELP
            "  exit 0 same, 1 different, 2 error (a file cannot be read, a bad option)\n",
            diff_command.synopsis);
}

static bool parse_tol(const char *opt, const char *s, double *out)
{
    char *end;
    double v = *s ? strtod(s, &end) : NAN;
    if (!*s || *end || !isfinite(v) || v < 0) {
        cli_usage_error(&diff_command, "%s needs a finite number >= 0, not '%s'", opt, s);
        return false;
    }
    *out = v;
    return true;
}

int ckpt_cli_diff(int argc, char **argv)
{
    tol tl = {0, 0};
    bool json = false;
    uint64_t ratio = 0;
    unsigned open_flags = 0;
    const char *paths[2] = {NULL, NULL};
    int npaths = 0;
    cli_args args;
    cli_args_init(&args, &diff_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case 'h': usage(stdout); return CLI_EXIT_OK;
        case OPT_JSON: json = true; break;
        case OPT_TORCHSCRIPT_WEIGHTS: open_flags |= CKPT_OPEN_TORCHSCRIPT_WEIGHTS; break;
        case OPT_MAX_OUTPUT_RATIO:
            if (!cli_parse_ratio(&diff_command, "--max-output-ratio", arg, &ratio))
                return CLI_EXIT_ERROR;
            break;
        case OPT_ATOL:
        case OPT_RTOL:
            if (!parse_tol(c == OPT_ATOL ? "--atol" : "--rtol", arg,
                           c == OPT_ATOL ? &tl.atol : &tl.rtol))
                return CLI_EXIT_ERROR;
            break;
        case CLI_OPT_ARG:
            if (npaths == 2)
                return cli_usage_error(&diff_command, "compares two files");
            paths[npaths++] = arg;
            break;
        default: return CLI_EXIT_ERROR;
        }
    }
    if (npaths != 2) {
        usage(stderr);
        return CLI_EXIT_ERROR;
    }
    ckpt_file *f[2] = {NULL, NULL};
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= open_flags;
    if (ratio)
        oo.limits.max_output_ratio = ratio;
    for (int k = 0; k < 2; k++) {
        ckpt_error err;
        if (ckpt_open(paths[k], &oo, &f[k], &err) != CKPT_OK) {
            cli_print_error(paths[k], &err);
            ckpt_close(f[0]);
            return CLI_EXIT_ERROR;
        }
    }
    int rc = CLI_EXIT_ERROR;
    diff_result r;
    memset(&r, 0, sizeof(r));
    r.only_a.esize = r.only_b.esize = sizeof(const char *);
    r.dtype.esize = r.shape.esize = sizeof(tensor_pair);
    r.values.esize = sizeof(value_diff);
    r.plain.esize = sizeof(plain_diff);
    cli_plain plain[2] = {{NULL, 0}, {NULL, 0}};
    cli_texts *tx = cli_texts_new();
    if (!tx) {
        fprintf(stderr, "%s: out of memory\n", PROG);
        goto out;
    }
    if (!diff_tensors(f[0], f[1], paths[0], paths[1], &tl, &r))
        goto out;
    ckpt_file_info ia = {.struct_size = sizeof(ia)}, ib = {.struct_size = sizeof(ib)};
    ckpt_file_get_info(f[0], &ia);
    ckpt_file_get_info(f[1], &ib);
    r.plain_skipped = (ia.format == CKPT_FORMAT_SAFETENSORS) != (ib.format == CKPT_FORMAT_SAFETENSORS);
    if (!r.plain_skipped) {
        if (!cli_plain_collect(f[0], paths[0], tx, &plain[0]) ||
            !cli_plain_collect(f[1], paths[1], tx, &plain[1]) ||
            !diff_plain(&plain[0], &plain[1], &r))
            goto out;
    }
    if (json) {
        rc = print_json(&r);
    } else {
        print_human(&r);
        rc = fflush(stdout) == 0 ? CLI_EXIT_OK : CLI_EXIT_ERROR;
    }
    if (rc == CLI_EXIT_OK)
        rc = is_same(&r) ? CLI_EXIT_OK : CLI_EXIT_FAIL;
out:
    cli_plain_free(&plain[0]);
    cli_plain_free(&plain[1]);
    cli_texts_free(tx);
    free(r.only_a.p);
    free(r.only_b.p);
    free(r.dtype.p);
    free(r.shape.p);
    free(r.values.p);
    free(r.plain.p);
    ckpt_close(f[0]);
    ckpt_close(f[1]);
    return rc;
}
