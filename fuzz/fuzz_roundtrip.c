/*
 * fuzz_roundtrip.c - the writers against the reader.
 *
 * An input that opens (ckpt_open_memory, default limits) is saved with
 * ckpt_save_torch and reopened: the saved file must verify (when the
 * original does), its tensor list must be the original's (names in order,
 * dtypes, layouts, shapes, requires_grad, locations, and the bytes
 * ckpt_tensor_copy gives), and its value tree the same shape with the same
 * plain values. When every tensor is strided,
 * has data and a safetensors dtype, the root is also saved with
 * ckpt_save_safetensors and every tensor found again by name with the same
 * dtype, shape and bytes (a tensor that is the same view as another is
 * found under the name the metadata gives it). Inputs refused as unsafe are opened permissive
 * (objects outside the allow-list as inert values): whatever the writers
 * make of them must open strictly, never naming such a global.
 *
 * A save may refuse what it cannot write (an error status with a message).
 * A save that succeeds and reads back differently aborts, so libFuzzer
 * reports it. Inputs whose storages (torch) or tensors (safetensors) hold
 * more than SAVE_MAX bytes are not saved: a stride-0 view may describe
 * terabytes. Files go to a directory of this process under $TMPDIR (else
 * /dev/shm, else /tmp), written with CKPT_SAVE_NO_FSYNC and removed after
 * each input (the directory at exit).
 */
#include <ckpt.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SAVE_MAX ((uint64_t)16 << 20)
#define TREE_BUDGET 200000

static char dir_path[512], torch_path[600], st_path[600];

static void remove_files(void)
{
    unlink(torch_path);
    unlink(st_path);
    rmdir(dir_path);
}

static bool make_dir(void)
{
    if (dir_path[0])
        return true;
    const char *bases[] = {getenv("TMPDIR"), "/dev/shm", "/tmp"};
    for (size_t i = 0; i < sizeof(bases) / sizeof(bases[0]); i++) {
        struct stat sb;
        if (!bases[i] || !*bases[i] || stat(bases[i], &sb) != 0 || !S_ISDIR(sb.st_mode))
            continue;
        snprintf(dir_path, sizeof(dir_path), "%s/ckpt-roundtrip-XXXXXX", bases[i]);
        if (mkdtemp(dir_path)) {
            snprintf(torch_path, sizeof(torch_path), "%s/saved.pt", dir_path);
            snprintf(st_path, sizeof(st_path), "%s/saved.safetensors", dir_path);
            atexit(remove_files);
            return true;
        }
    }
    dir_path[0] = 0;
    return false;
}

static void mismatch(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void mismatch(const char *what, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "round trip through %s: ", what);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

/* A failed save must still say why. */
static void check_refusal(const char *what, ckpt_status st, const ckpt_error *err)
{
    if ((unsigned)st > CKPT_ERR_TYPE || err->status != st || err->message[0] == 0)
        mismatch(what, "save failed with status %d without a proper error", (int)st);
}

/* Where two trees first differ, for the report. */
static char diff_at[256];

static bool differ(const char *path, const char *how, const ckpt_value *a, const ckpt_value *b)
{
    snprintf(diff_at, sizeof(diff_at), "at '%s': %s (%s vs %s)", path, how,
             ckpt_kind_name(ckpt_value_kind(a)), ckpt_kind_name(ckpt_value_kind(b)));
    return false;
}

/* Whether two plain values are the same (NaN equals NaN bit for bit);
 * tensors by dtype and shape (their bytes are compared through the list). */
static bool same_value(const ckpt_value *a, const ckpt_value *b, const char *path, int depth,
                       uint64_t *budget)
{
    if (*budget == 0 || depth > 200)
        return true;
    (*budget)--;
    ckpt_kind k = ckpt_value_kind(a);
    if (k != ckpt_value_kind(b))
        return differ(path, "kind", a, b);
    size_t la = 0, lb = 0;
    const char *sa = ckpt_value_str(a, &la), *sb = ckpt_value_str(b, &lb);
    if ((sa == NULL) != (sb == NULL) || la != lb || (sa && memcmp(sa, sb, la) != 0))
        return differ(path, "text", a, b);
    if (ckpt_value_int(a) != ckpt_value_int(b) || ckpt_value_bool(a) != ckpt_value_bool(b) ||
        ckpt_value_dtype(a) != ckpt_value_dtype(b))
        return differ(path, "value", a, b);
    double ra, ia, rb, ib;
    ckpt_value_complex(a, &ra, &ia);
    ckpt_value_complex(b, &rb, &ib);
    if (k == CKPT_KIND_FLOAT || k == CKPT_KIND_COMPLEX) {
        if ((memcmp(&ra, &rb, sizeof(ra)) != 0 && !(isnan(ra) && isnan(rb))) ||
            (memcmp(&ia, &ib, sizeof(ia)) != 0 && !(isnan(ia) && isnan(ib))))
            return differ(path, "number", a, b);
    }
    const ckpt_tensor *ta = ckpt_value_tensor(a), *tb = ckpt_value_tensor(b);
    if ((ta == NULL) != (tb == NULL))
        return differ(path, "tensor", a, b);
    if (ta) {
        ckpt_tensor_info x = {.struct_size = sizeof(x)}, y = {.struct_size = sizeof(y)};
        ckpt_tensor_get_info(ta, &x);
        ckpt_tensor_get_info(tb, &y);
        if (x.dtype != y.dtype || x.ndim != y.ndim || x.layout != y.layout ||
            memcmp(x.shape, y.shape, x.ndim * sizeof(int64_t)) != 0)
            return differ(path, "tensor dtype, layout or shape", a, b);
    }
    size_t n = ckpt_value_len(a);
    if (n != ckpt_value_len(b))
        return differ(path, "length", a, b);
    bool dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    char sub[256];
    for (size_t i = 0; i < n; i++) {
        snprintf(sub, sizeof(sub), "%s/%zu", path, i);
        if (dict) {
            if (!same_value(ckpt_value_key(a, i), ckpt_value_key(b, i), sub, depth + 1, budget) ||
                !same_value(ckpt_value_dict_value(a, i), ckpt_value_dict_value(b, i), sub,
                            depth + 1, budget))
                return false;
        } else if (!same_value(ckpt_value_item(a, i), ckpt_value_item(b, i), sub, depth + 1,
                               budget)) {
            return false;
        }
    }
    /* BUILD state as torch applies it: to OrderedDicts and tensors only (the
     * reader also keeps it on plain dicts, which torch refuses to build), and
     * an empty state is no state */
    if (k != CKPT_KIND_ORDERED_DICT && k != CKPT_KIND_TENSOR)
        return true;
    const ckpt_value *xa = ckpt_value_state(a), *xb = ckpt_value_state(b);
    if (xa && ckpt_value_len(xa) == 0 && ckpt_value_kind(xa) == CKPT_KIND_DICT)
        xa = NULL;
    if (xb && ckpt_value_len(xb) == 0 && ckpt_value_kind(xb) == CKPT_KIND_DICT)
        xb = NULL;
    if ((xa == NULL) != (xb == NULL))
        return differ(path, "state present in one only", a, b);
    snprintf(sub, sizeof(sub), "%s/state", path);
    return !xa || same_value(xa, xb, sub, depth + 1, budget);
}

/* A contiguous copy of t, or NULL (too big, or unreadable: *st says). */
static uint8_t *copy_of(ckpt_file *f, const ckpt_tensor *t, uint64_t *nbytes, ckpt_status *st)
{
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    *nbytes = ti.nbytes;
    *st = CKPT_OK;
    if (ti.nbytes > SAVE_MAX || (!ti.has_storage && ti.layout == CKPT_LAYOUT_STRIDED))
        return NULL;
    uint8_t *p = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
    if (!p)
        return NULL;
    ckpt_error err;
    *st = ckpt_tensor_copy(f, t, p, (size_t)ti.nbytes, &err);
    if (*st != CKPT_OK) {
        free(p);
        return NULL;
    }
    return p;
}

/* Same dtype, layout, shape and bytes (when the original's read). */
static void compare_tensor(const char *what, const char *name, ckpt_file *fa,
                           const ckpt_tensor *a, ckpt_file *fb, const ckpt_tensor *b,
                           bool flags)
{
    ckpt_tensor_info x = {.struct_size = sizeof(x)}, y = {.struct_size = sizeof(y)};
    ckpt_tensor_get_info(a, &x);
    ckpt_tensor_get_info(b, &y);
    if (x.dtype != y.dtype)
        mismatch(what, "'%s': dtype %s became %s", name, ckpt_dtype_name(x.dtype),
                 ckpt_dtype_name(y.dtype));
    if (x.layout != y.layout)
        mismatch(what, "'%s': layout %s became %s", name, ckpt_layout_name(x.layout),
                 ckpt_layout_name(y.layout));
    if (x.ndim != y.ndim || memcmp(x.shape, y.shape, x.ndim * sizeof(int64_t)) != 0)
        mismatch(what, "'%s': the shape changed (%u dimensions, now %u)", name, x.ndim, y.ndim);
    if (flags && (x.requires_grad != y.requires_grad || x.is_parameter != y.is_parameter))
        mismatch(what, "'%s': requires_grad/is_parameter changed", name);
    if (flags && x.location && y.location && strcmp(x.location, y.location) != 0)
        mismatch(what, "'%s': location %s became %s", name, x.location, y.location);
    uint64_t na, nb;
    ckpt_status sa, sb;
    uint8_t *ba = copy_of(fa, a, &na, &sa);
    if (!ba)
        return; /* too big, or unreadable in the original */
    uint8_t *bb = copy_of(fb, b, &nb, &sb);
    if (!bb)
        mismatch(what, "'%s': reads in the original but not in the saved file (%s)", name,
                 ckpt_status_name(sb));
    if (na != nb || memcmp(ba, bb, (size_t)na) != 0)
        mismatch(what, "'%s': the bytes differ", name);
    free(ba);
    free(bb);
}

/* Opens what a writer saved; it must open, and verify when the original did. */
static ckpt_file *reopen(const char *what, const char *path, bool verified)
{
    ckpt_file *g = NULL;
    ckpt_error err;
    char msg[768];
    if (ckpt_open(path, NULL, &g, &err) != CKPT_OK)
        mismatch(what, "the saved file does not open: %s", ckpt_error_format(&err, msg, sizeof(msg)));
    if (ckpt_file_verify(g, &err) != CKPT_OK && verified)
        mismatch(what, "the saved file does not verify: %s",
                 ckpt_error_format(&err, msg, sizeof(msg)));
    return g;
}

static void roundtrip_torch(ckpt_file *f, bool verified)
{
    const char *what = "ckpt_save_torch";
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    so.flags = CKPT_SAVE_NO_FSYNC;
    ckpt_error err;
    ckpt_status st = ckpt_save_torch(torch_path, ckpt_file_root(f), &so, &err);
    if (st != CKPT_OK) {
        check_refusal(what, st, &err);
        return;
    }
    ckpt_file *g = reopen(what, torch_path, verified);
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(g, &fi);
    if (fi.format != CKPT_FORMAT_TORCH_ZIP)
        mismatch(what, "the saved file reads as %s", ckpt_format_name(fi.format));
    size_t n = ckpt_file_tensor_count(f);
    if (ckpt_file_tensor_count(g) != n)
        mismatch(what, "%zu tensors became %zu", n, ckpt_file_tensor_count(g));
    for (size_t i = 0; i < n; i++) {
        const char *na = NULL, *nb = NULL;
        const ckpt_tensor *a = ckpt_file_tensor(f, i, &na);
        const ckpt_tensor *b = ckpt_file_tensor(g, i, &nb);
        if (strcmp(na, nb) != 0)
            mismatch(what, "tensor %zu '%s' is now named '%s'", i, na, nb);
        compare_tensor(what, na, f, a, g, b, true);
    }
    uint64_t budget = TREE_BUDGET;
    if (!same_value(ckpt_file_root(f), ckpt_file_root(g), "", 0, &budget))
        mismatch(what, "the value tree changed %s", diff_at);
    ckpt_close(g);
}

static void roundtrip_safetensors(ckpt_file *f, bool verified)
{
    const char *what = "ckpt_save_safetensors";
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    so.flags = CKPT_SAVE_NO_FSYNC;
    ckpt_error err;
    ckpt_status st = ckpt_save_safetensors(st_path, ckpt_file_root(f), &so, &err);
    if (st != CKPT_OK) {
        check_refusal(what, st, &err);
        return;
    }
    ckpt_file *g = reopen(what, st_path, verified);
    ckpt_file_info gi = {.struct_size = sizeof(gi)};
    ckpt_file_get_info(g, &gi);
    size_t n = ckpt_file_tensor_count(f), tied = 0;
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL;
        const ckpt_tensor *a = ckpt_file_tensor(f, i, &name);
        /* a root that is itself a tensor is saved as "tensor" */
        bool root = ckpt_value_kind(ckpt_file_root(f)) == CKPT_KIND_TENSOR;
        const ckpt_tensor *b = ckpt_file_find_tensor(g, root ? "tensor" : name);
        if (!b) {
            /* the same view as another tensor: written once, this name in
             * the metadata with the kept name */
            const ckpt_value *kept = ckpt_value_get(gi.metadata, name);
            if (ckpt_value_kind(kept) == CKPT_KIND_STR)
                b = ckpt_file_find_tensor(g, ckpt_value_str(kept, NULL));
            tied += b != NULL;
        }
        if (!b)
            mismatch(what, "tensor '%s' is missing", name);
        compare_tensor(what, name, f, a, g, b, false);
    }
    if (ckpt_file_tensor_count(g) + tied != n)
        mismatch(what, "%zu tensors became %zu (%zu tied)", n, ckpt_file_tensor_count(g), tied);
    ckpt_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    ckpt_status st = ckpt_open_memory(data, size, NULL, &f, &err);
    if (st == CKPT_ERR_UNSAFE) {
        /* A file with objects outside the allow-list opens as inert values
         * when asked. The writers must refuse those objects: whatever they
         * write opens strictly again (no global outside the allow-list). */
        ckpt_open_options po;
        ckpt_open_options_default(&po);
        po.flags |= CKPT_OPEN_PERMISSIVE;
        st = ckpt_open_memory(data, size, &po, &f, &err);
    }
    if (st != CKPT_OK)
        return 0;
    if (!make_dir()) {
        ckpt_close(f);
        return 0;
    }
    /* What each writer would write: the storages once (torch), every tensor
     * contiguous (safetensors). */
    uint64_t storage_bytes = 0, tensor_bytes = 0;
    bool safetensors_ok = true;
    size_t n = ckpt_file_tensor_count(f);
    for (size_t i = 0; i < n; i++) {
        const ckpt_tensor *t = ckpt_file_tensor(f, i, NULL);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        if (__builtin_add_overflow(storage_bytes, ti.storage_nbytes, &storage_bytes))
            storage_bytes = UINT64_MAX;
        if (__builtin_add_overflow(tensor_bytes, ti.nbytes, &tensor_bytes))
            tensor_bytes = UINT64_MAX;
        if (ti.layout != CKPT_LAYOUT_STRIDED || !ti.has_storage ||
            ckpt_dtype_safetensors_name(ti.dtype) == NULL)
            safetensors_ok = false;
        if (storage_bytes > SAVE_MAX)
            break;
    }
    if (storage_bytes > SAVE_MAX) {
        ckpt_close(f);
        return 0;
    }
    /* a saved file must verify when the original does (a sparse tensor's
     * bad indices, say, are carried over as they are) */
    bool verified = ckpt_file_verify(f, &err) == CKPT_OK;
    roundtrip_torch(f, verified);
    if (safetensors_ok && tensor_bytes <= SAVE_MAX)
        roundtrip_safetensors(f, verified);
    ckpt_close(f);
    /* nothing left behind when a process ends without exit handlers */
    unlink(torch_path);
    unlink(st_path);
    return 0;
}
