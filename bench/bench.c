/*
 * bench.c - one timed measurement of libckpt, or of the raw POSIX floor it
 * is compared with, per process.
 *
 *   ckpt_bench open FILE               ckpt_open (lazy, zero-copy index)
 *   ckpt_bench tensors FILE            ckpt_open + ckpt_tensor_data of every
 *                                      tensor: usable, zero-copy, in the map
 *   ckpt_bench materialise FILE        ckpt_open + every tensor copied into
 *                                      fresh malloc'd memory
 *   ckpt_bench pread FILE              the same tensor bytes read with pread
 *                                      into fresh malloc'd memory (the floor)
 *   ckpt_bench pread-warm FILE         the same into memory allocated and
 *                                      touched beforehand (a load's floor)
 *   ckpt_bench save FILE OUT [fsync]   ckpt_save_torch of the file's tensors,
 *                                      held in memory, to OUT
 *   ckpt_bench save-st FILE OUT [fsync] the same with ckpt_save_safetensors
 *   ckpt_bench write FILE OUT [fsync]  write(2) of the same bytes (+ fsync)
 *   ckpt_bench scan FILE               ckpt_scan_file
 *   ckpt_bench memcpy FILE             the file's tensors, held in memory, copied
 *                                      into memory allocated and touched before
 *                                      (what a snapshot of the state costs)
 *   ckpt_bench manager FILE DIR blocking|async
 *                                      the file's tensors, held in memory, saved
 *                                      by a checkpoint manager on DIR (fsync'ed,
 *                                      committed) five times after one untimed
 *                                      save (a training loop's steady state):
 *                                      "s" is the median of how long the call
 *                                      blocks the caller, "total" of the time
 *                                      until the save is committed
 *                                      (ckpt_manager_save_async + wait)
 *   ckpt_bench load FILE copy|zero-copy|f32
 *                                      ckpt_open + ckpt_model_load into a C
 *                                      model of the file's tensors (made
 *                                      beforehand, its memory allocated and
 *                                      zeroed): copied, borrowed from the
 *                                      map, or converted into float32
 *
 * It prints one line of JSON: {"s": seconds, "maxrss_kb": peak RSS,
 * "bytes": tensor bytes, "tensors": count}. A fresh process per measurement
 * keeps every run honest: memory is fresh (never recycled by malloc from an
 * earlier repetition) and the peak RSS belongs to that run alone. Setup
 * (reading the tensors into memory before a save) is outside the timing.
 * Only the public header and POSIX are used, as any user of the library.
 */
#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

typedef struct bench_tensor {
    const char *name;
    const ckpt_tensor *t;
    uint64_t nbytes;
    uint64_t file_offset;      /* of its first byte; UINT64_MAX when not plain */
    void *mem;                 /* a contiguous copy, when one is held */
} bench_tensor;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what, const ckpt_error *err)
{
    char line[600];
    if (err)
        fprintf(stderr, "ckpt_bench: %s: %s\n", what, ckpt_error_format(err, line, sizeof(line)));
    else
        fprintf(stderr, "ckpt_bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void report(double seconds, uint64_t bytes, size_t tensors)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"s\": %.6f, \"maxrss_kb\": %ld, \"bytes\": %llu, \"tensors\": %zu}\n", seconds,
           ru.ru_maxrss, (unsigned long long)bytes, tensors);
}

static ckpt_file *open_file(const char *path)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    if (ckpt_open(path, NULL, &f, &err) != CKPT_OK)
        die(path, &err);
    return f;
}

/* The file's tensors with their sizes and where their bytes lie. Tensors
 * reached by two names are listed once per name, as ckpt lists them. */
static bench_tensor *list_tensors(ckpt_file *f, size_t *count, uint64_t *total)
{
    size_t n = ckpt_file_tensor_count(f);
    bench_tensor *v = calloc(n ? n : 1, sizeof(*v));
    if (!v)
        die("calloc", NULL);
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        v[i].t = ckpt_file_tensor(f, i, &v[i].name);
        ckpt_tensor_get_info(v[i].t, &info);
        v[i].nbytes = info.nbytes;
        v[i].file_offset = UINT64_MAX;
        size_t esz = ckpt_dtype_size(info.dtype);
        if (info.is_contiguous && info.storage_file_offset != CKPT_NO_OFFSET && esz &&
            !info.big_endian)
            v[i].file_offset = info.storage_file_offset + (uint64_t)info.storage_offset * esz;
        *total += info.nbytes;
    }
    *count = n;
    return v;
}

static void *fresh(uint64_t n)
{
    void *p = malloc(n ? (size_t)n : 1);
    if (!p)
        die("malloc", NULL);
    return p;
}

static int cmd_open(const char *path)
{
    double t0 = now();
    ckpt_file *f = open_file(path);
    double t1 = now();
    size_t n;
    uint64_t total;
    bench_tensor *v = list_tensors(f, &n, &total);
    report(t1 - t0, total, n);
    free(v);
    ckpt_close(f);
    return 0;
}

static int cmd_tensors(const char *path)
{
    ckpt_error err;
    double t0 = now();
    ckpt_file *f = open_file(path);
    size_t n = ckpt_file_tensor_count(f);
    uint64_t total = 0;
    uintptr_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        const ckpt_tensor *t = ckpt_file_tensor(f, i, NULL);
        const void *p = NULL;
        if (ckpt_tensor_data(f, t, &p, NULL, &err) != CKPT_OK)
            die("ckpt_tensor_data", &err);
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        ckpt_tensor_get_info(t, &info);
        total += info.nbytes;
        sum += (uintptr_t)p;
    }
    double t1 = now();
    report(t1 - t0, total, n + (sum == 1)); /* sum: the pointers are used */
    ckpt_close(f);
    return 0;
}

static int cmd_materialise(const char *path)
{
    ckpt_error err;
    double t0 = now();
    ckpt_file *f = open_file(path);
    size_t n = ckpt_file_tensor_count(f);
    void **mem = fresh(n * sizeof(*mem) + 1);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const ckpt_tensor *t = ckpt_file_tensor(f, i, NULL);
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        ckpt_tensor_get_info(t, &info);
        mem[i] = fresh(info.nbytes);
        if (ckpt_tensor_copy(f, t, mem[i], (size_t)info.nbytes, &err) != CKPT_OK)
            die("ckpt_tensor_copy", &err);
        total += info.nbytes;
    }
    double t1 = now();
    report(t1 - t0, total, n);
    for (size_t i = 0; i < n; i++)
        free(mem[i]);
    free(mem);
    ckpt_close(f);
    return 0;
}

static void pread_all(int fd, uint8_t *dst, uint64_t n, uint64_t off)
{
    while (n) {
        size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t r = pread(fd, dst, chunk, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("pread", NULL);
        dst += r;
        off += (uint64_t)r;
        n -= (uint64_t)r;
    }
}

/* warm: the destination is allocated and touched before the timing, as a
 * model's memory is before it loads (the floor of a load into a model). */
static int cmd_pread(const char *path, bool warm)
{
    /* Where the bytes are is found first, untimed: the floor is the copy. */
    ckpt_file *f = open_file(path);
    size_t n;
    uint64_t total;
    bench_tensor *v = list_tensors(f, &n, &total);
    ckpt_close(f);
    for (size_t i = 0; i < n; i++) {
        if (v[i].file_offset == UINT64_MAX && v[i].nbytes) {
            fprintf(stderr, "ckpt_bench: %s: tensor %s is not stored plainly\n", path, v[i].name);
            return 2;
        }
    }
    for (size_t i = 0; warm && i < n; i++) {
        v[i].mem = fresh(v[i].nbytes);
        memset(v[i].mem, 0, (size_t)v[i].nbytes);
    }
    double t0 = now();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(path, NULL);
    for (size_t i = 0; i < n; i++) {
        if (!warm)
            v[i].mem = fresh(v[i].nbytes);
        pread_all(fd, v[i].mem, v[i].nbytes, v[i].file_offset);
    }
    close(fd);
    double t1 = now();
    report(t1 - t0, total, n);
    for (size_t i = 0; i < n; i++)
        free(v[i].mem);
    free(v);
    return 0;
}

static int cmd_save(const char *path, const char *out, bool fsync_it, bool safetensors)
{
    ckpt_error err;
    /* shapes come from the file, bytes from memory */
    ckpt_file *f = open_file(path);
    size_t n;
    uint64_t total;
    bench_tensor *v = list_tensors(f, &n, &total);
    ckpt_tree *tree = ckpt_tree_new();
    if (!tree)
        die("ckpt_tree_new", NULL);
    ckpt_value *root = ckpt_new_ordered_dict(tree);
    for (size_t i = 0; i < n; i++) {
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        ckpt_tensor_get_info(v[i].t, &info);
        v[i].mem = fresh(v[i].nbytes);
        if (ckpt_tensor_copy(f, v[i].t, v[i].mem, (size_t)v[i].nbytes, &err) != CKPT_OK)
            die("ckpt_tensor_copy", &err);
        ckpt_tensor_desc d;
        ckpt_tensor_desc_init(&d);
        d.dtype = info.dtype;
        d.ndim = info.ndim;
        d.shape = info.shape; /* copied by ckpt_new_tensor */
        d.data = v[i].mem;
        d.storage_nbytes = v[i].nbytes;
        ckpt_dict_put_str(tree, root, v[i].name, ckpt_new_tensor(tree, &d));
    }
    if (ckpt_tree_status(tree, &err) != CKPT_OK)
        die("building the tree", &err);
    ckpt_save_options so;
    ckpt_save_options_default(&so);
    if (!fsync_it)
        so.flags |= CKPT_SAVE_NO_FSYNC;
    double t0 = now();
    ckpt_status st = safetensors ? ckpt_save_safetensors(out, root, &so, &err)
                                 : ckpt_save_torch(out, root, &so, &err);
    double t1 = now();
    if (st != CKPT_OK)
        die(out, &err);
    report(t1 - t0, total, n);
    ckpt_tree_free(tree);
    for (size_t i = 0; i < n; i++)
        free(v[i].mem);
    free(v);
    ckpt_close(f);
    return 0;
}

static void write_all(int fd, const uint8_t *p, uint64_t n)
{
    while (n) {
        size_t chunk = n > ((uint64_t)1 << 30) ? ((size_t)1 << 30) : (size_t)n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("write", NULL);
        p += w;
        n -= (uint64_t)w;
    }
}

static int cmd_write(const char *path, const char *out, bool fsync_it)
{
    /* the same setup as cmd_save: the input stays open (and mapped) while
     * the bytes are written, as it does for ckpt */
    ckpt_error err;
    ckpt_file *f = open_file(path);
    size_t n;
    uint64_t total;
    bench_tensor *v = list_tensors(f, &n, &total);
    for (size_t i = 0; i < n; i++) {
        v[i].mem = fresh(v[i].nbytes);
        if (ckpt_tensor_copy(f, v[i].t, v[i].mem, (size_t)v[i].nbytes, &err) != CKPT_OK)
            die("ckpt_tensor_copy", &err);
    }
    double t0 = now();
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        die(out, NULL);
    for (size_t i = 0; i < n; i++)
        write_all(fd, v[i].mem, v[i].nbytes);
    if (fsync_it && fsync(fd) != 0)
        die("fsync", NULL);
    if (close(fd) != 0)
        die("close", NULL);
    double t1 = now();
    report(t1 - t0, total, n);
    for (size_t i = 0; i < n; i++)
        free(v[i].mem);
    free(v);
    ckpt_close(f);
    return 0;
}

/* The file's tensors in fresh memory, copied from it untimed, and a tree
 * (an ordered dict by name) over them. */
static ckpt_tree *tensors_in_memory(const char *path, bench_tensor **out, size_t *count,
                                    uint64_t *total, ckpt_value **root)
{
    ckpt_error err;
    ckpt_file *f = open_file(path);
    bench_tensor *v = list_tensors(f, count, total);
    ckpt_tree *tree = ckpt_tree_new();
    if (!tree)
        die("ckpt_tree_new", NULL);
    *root = ckpt_new_ordered_dict(tree);
    for (size_t i = 0; i < *count; i++) {
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        ckpt_tensor_get_info(v[i].t, &info);
        v[i].mem = fresh(v[i].nbytes);
        if (ckpt_tensor_copy(f, v[i].t, v[i].mem, (size_t)v[i].nbytes, &err) != CKPT_OK)
            die("ckpt_tensor_copy", &err);
        ckpt_tensor_desc d;
        ckpt_tensor_desc_init(&d);
        d.dtype = info.dtype;
        d.ndim = info.ndim;
        d.shape = info.shape;
        d.data = v[i].mem;
        d.storage_nbytes = v[i].nbytes;
        ckpt_dict_put_str(tree, *root, v[i].name, ckpt_new_tensor(tree, &d));
    }
    if (ckpt_tree_status(tree, &err) != CKPT_OK)
        die("building the tree", &err);
    /* the names now live in the tree: the file may go */
    for (size_t i = 0; i < *count; i++)
        v[i].name = NULL, v[i].t = NULL;
    ckpt_close(f);
    *out = v;
    return tree;
}

static int cmd_memcpy(const char *path)
{
    size_t n;
    uint64_t total;
    bench_tensor *v;
    ckpt_value *root;
    ckpt_tree *tree = tensors_in_memory(path, &v, &n, &total, &root);
    uint8_t *dst = fresh(total);
    double t0 = 0, t1 = 0;
    for (int round = 0; round < 2; round++) { /* the first, untimed, warms dst */
        t0 = now();
        uint64_t at = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(dst + at, v[i].mem, (size_t)v[i].nbytes);
            at += v[i].nbytes;
        }
        t1 = now();
    }
    report(t1 - t0, total, n);
    free(dst);
    ckpt_tree_free(tree);
    for (size_t i = 0; i < n; i++)
        free(v[i].mem);
    free(v);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmd_manager(const char *path, const char *dir, const char *mode)
{
    bool async = strcmp(mode, "async") == 0;
    if (!async && strcmp(mode, "blocking") != 0) {
        fprintf(stderr, "ckpt_bench: manager: blocking or async, not %s\n", mode);
        return 2;
    }
    ckpt_error err;
    size_t n;
    uint64_t total;
    bench_tensor *v;
    ckpt_value *root;
    ckpt_tree *tree = tensors_in_memory(path, &v, &n, &total, &root);
    ckpt_manager *m = NULL;
    if (ckpt_manager_open(dir, NULL, &m, &err) != CKPT_OK)
        die(dir, &err);
    /* step 0 is untimed: the staging memory (async) and the file names
     * exist from then on, as in a training loop; the steps after it are
     * timed and their medians reported (a single save's time here varies
     * by 2 to 4x with the page cache's writeback) */
    enum { TIMED = 5 };
    double stall[TIMED], total_s[TIMED];
    for (int64_t step = 0; step <= TIMED; step++) {
        sync();
        double t0 = now();
        ckpt_status st = async ? ckpt_manager_save_async(m, step, root, NULL, 0, 0, &err)
                               : ckpt_manager_save(m, step, root, NULL, 0, NULL, &err);
        double t1 = now();
        if (st == CKPT_OK && async)
            st = ckpt_manager_wait(m, NULL, &err);
        double t2 = now();
        if (st != CKPT_OK)
            die(dir, &err);
        if (step > 0) {
            stall[step - 1] = t1 - t0;
            total_s[step - 1] = t2 - t0;
        }
    }
    qsort(stall, TIMED, sizeof(*stall), cmp_double);
    qsort(total_s, TIMED, sizeof(*total_s), cmp_double);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"s\": %.6f, \"total\": %.6f, \"maxrss_kb\": %ld, \"bytes\": %llu, "
           "\"tensors\": %zu}\n",
           stall[TIMED / 2], total_s[TIMED / 2], ru.ru_maxrss, (unsigned long long)total, n);
    ckpt_manager_close(m);
    ckpt_tree_free(tree);
    for (size_t i = 0; i < n; i++)
        free(v[i].mem);
    free(v);
    return 0;
}

static int cmd_scan(const char *path)
{
    ckpt_error err;
    ckpt_scan *scan = NULL;
    double t0 = now();
    if (ckpt_scan_file(path, NULL, &scan, &err) != CKPT_OK)
        die(path, &err);
    double t1 = now();
    report(t1 - t0, 0, ckpt_scan_finding_count(scan));
    ckpt_scan_free(scan);
    return 0;
}

static int cmd_load(const char *path, const char *mode)
{
    bool zero_copy = strcmp(mode, "zero-copy") == 0, to_f32 = strcmp(mode, "f32") == 0;
    if (!zero_copy && !to_f32 && strcmp(mode, "copy") != 0) {
        fprintf(stderr, "ckpt_bench: load: copy, zero-copy or f32, not %s\n", mode);
        return 2;
    }
    /* the model, as a program has it before it loads: described from the
     * file, its memory allocated and touched */
    ckpt_error err;
    ckpt_file *f = open_file(path);
    size_t n;
    uint64_t total;
    bench_tensor *v = list_tensors(f, &n, &total);
    ckpt_model *m = ckpt_model_new("Bench");
    if (!m)
        die("ckpt_model_new", NULL);
    for (size_t i = 0; i < n; i++) {
        ckpt_tensor_info info = {.struct_size = sizeof(info)};
        ckpt_tensor_get_info(v[i].t, &info);
        if (ckpt_model_add(m, v[i].name, to_f32 ? CKPT_DTYPE_FLOAT32 : info.dtype, info.ndim,
                           info.shape, NULL, 0, NULL, &err) != CKPT_OK)
            die(v[i].name, &err);
    }
    free(v);
    ckpt_close(f);

    ckpt_load_options o;
    ckpt_load_options_default(&o);
    if (zero_copy)
        o.flags |= CKPT_LOAD_ZERO_COPY;
    ckpt_load_report r = {.struct_size = sizeof(r)};
    double t0 = now();
    f = open_file(path);
    if (ckpt_model_load(m, f, &o, &r, &err) != CKPT_OK)
        die(path, &err);
    double t1 = now();
    if (r.loaded != n || (zero_copy && r.zero_copy != n)) {
        fprintf(stderr, "ckpt_bench: load: %zu of %zu tensors loaded, %zu zero-copy\n",
                r.loaded, n, r.zero_copy);
        return 2;
    }
    report(t1 - t0, total, n);
    ckpt_model_free(m);
    ckpt_close(f);
    return 0;
}

static int usage(void)
{
    fprintf(stderr,
            "usage: ckpt_bench open|tensors|materialise|pread|pread-warm|scan FILE\n"
            "       ckpt_bench load FILE copy|zero-copy|f32\n"
            "       ckpt_bench memcpy FILE\n"
            "       ckpt_bench manager FILE DIR blocking|async\n"
            "       ckpt_bench save|save-st|write FILE OUT [fsync]\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return usage();
    const char *cmd = argv[1], *path = argv[2];
    bool fsync_it = argc > 4 && strcmp(argv[4], "fsync") == 0;
    if (strcmp(cmd, "open") == 0)
        return cmd_open(path);
    if (strcmp(cmd, "materialise") == 0)
        return cmd_materialise(path);
    if (strcmp(cmd, "tensors") == 0)
        return cmd_tensors(path);
    if (strcmp(cmd, "pread") == 0)
        return cmd_pread(path, false);
    if (strcmp(cmd, "pread-warm") == 0)
        return cmd_pread(path, true);
    if (strcmp(cmd, "scan") == 0)
        return cmd_scan(path);
    if (strcmp(cmd, "memcpy") == 0)
        return cmd_memcpy(path);
    if (strcmp(cmd, "manager") == 0 && argc > 4)
        return cmd_manager(path, argv[3], argv[4]);
    if (argc < 4)
        return usage();
    if (strcmp(cmd, "load") == 0)
        return cmd_load(path, argv[3]);
    if (strcmp(cmd, "save") == 0)
        return cmd_save(path, argv[3], fsync_it, false);
    if (strcmp(cmd, "save-st") == 0)
        return cmd_save(path, argv[3], fsync_it, true);
    if (strcmp(cmd, "write") == 0)
        return cmd_write(path, argv[3], fsync_it);
    return usage();
}
