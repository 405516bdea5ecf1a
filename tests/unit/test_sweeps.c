/*
 * test_sweeps.c - hostile input in bulk, through the public API, each sweep
 * in a child process under a memory cap and a time limit:
 *
 *  (a) every truncation (every length 0..n-1) of small real files of each
 *      format: torch zip (stored, deflated, big-endian), legacy, safetensors,
 *      plain pickle ($CKPT_CORPUS and the seeds of fuzz/corpus/fuzz_file);
 *  (b) seeded mutants, 20,000 per file (every other one opened permissive):
 *      bit flips, byte changes, extreme values (all ones, 2^63 - 1, ...)
 *      written over fields, deleted and repeated ranges; and every position of each file's head and tail
 *      overwritten with all-ones fields of 1, 2, 4 and 8 bytes;
 *  (c) crafted inputs: deflate bombs (huge ratio, huge or lying declared
 *      sizes), ZIP64 sizes, offsets and counts of 2^64 - 1, pickle lengths of
 *      2^64 - 1, huge and overflowing shapes, legacy storages smaller than
 *      their views and counts of 2^64 - 1, deeply nested JSON headers.
 *
 * Every input is opened with ckpt_open_memory from an exact-size copy (so
 * ASan sees any read past its end); what opens is exercised: the value tree
 * walked, every tensor found by name, its bounds recomputed here, its data
 * touched at both ends, small tensors copied, the file verified. Every
 * failing call must return a status of the expected set with a message, and
 * format errors must say where (record or offset).
 *
 * Memory: without AddressSanitizer the child runs under RLIMIT_AS (an
 * allocation past the cap fails, and CKPT_ERR_NOMEM is never expected). With
 * it (its shadow memory needs terabytes of address space) the child counts
 * live heap bytes through the sanitizer allocator and checks the peak of
 * each case; leaks are checked at the end of each sweep. Time: alarm() ends
 * a sweep that runs too long, and each case is timed.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"
#include <libdeflate.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SWEEP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SWEEP_ASAN 1
#endif
#endif
#ifndef SWEEP_ASAN
#define SWEEP_ASAN 0
#endif

#if SWEEP_ASAN
/* from sanitizer/lsan_interface.h */
int __lsan_do_recoverable_leak_check(void);
#endif

/* Largest tensor copied (stride-0 views may describe terabytes). */
#define COPY_MAX ((uint64_t)1 << 20)
/* Memory one case of a file sweep may use (library heap, or address space
 * above the sweep's own without ASan). */
#define FILE_BUDGET ((uint64_t)64 << 20)
/* The same for crafted bombs. */
#define BOMB_BUDGET ((uint64_t)64 << 20)
/* A well-formed safetensors file of 100,000 tensors, and its header. */
#define MANY_BUDGET ((uint64_t)96 << 20)
/* The deflate bombs' well-formed twin inflates 64 MiB; the bombs themselves
 * must be refused within REFUSED_HEAP. */
#define INFLATE_BUDGET ((uint64_t)160 << 20)
#define REFUSED_HEAP ((uint64_t)1 << 20)
/* Verifying records of 64 MiB inflated must fit in far less. */
#define STREAM_BUDGET ((uint64_t)24 << 20)
/* Seconds for one case, and for one whole sweep. */
#define CASE_SECONDS 5.0
#define SWEEP_SECONDS 300u

#define S(st) (1u << (st))
#define OPEN_ANY_ERROR \
    (S(CKPT_ERR_FORMAT) | S(CKPT_ERR_UNSUPPORTED) | S(CKPT_ERR_UNSAFE) | S(CKPT_ERR_LIMIT))
#define VERIFY_ANY (S(CKPT_OK) | S(CKPT_ERR_FORMAT) | S(CKPT_ERR_CORRUPT) | S(CKPT_ERR_LIMIT) | \
                    S(CKPT_ERR_UNSUPPORTED))
#define DATA_ANY VERIFY_ANY

/* ---- memory ------------------------------------------------------------- */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort(); /* the test's own memory: cannot go on */
    return p;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- the child's report ---------------------------------------------------- */

typedef struct report {
    uint64_t cases, opened, verified;
    uint64_t by_status[16];   /* the first failing call's status, per case */
    double seconds, slowest;
    char slowest_what[160];
    uint64_t peak;            /* largest case heap (ASan), else peak RSS */
    uint64_t budget_peak;     /* the same over cases held to the sweep's budget */
    char peak_what[160];
    char failure[1536];       /* the first broken expectation; "" when none */
} report;

static void failf(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void failf(report *r, const char *fmt, ...)
{
    if (r->failure[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->failure, sizeof(r->failure), fmt, ap);
    va_end(ap);
}

typedef void (*sweep_fn)(const void *arg, report *r);

static const char *kib(uint64_t n, char *b, size_t cap)
{
    snprintf(b, cap, "%.1f KiB", (double)n / 1024.0);
    return b;
}

typedef struct sweep_job {
    sweep_fn fn;
    const void *arg;
    uint64_t budget;
} sweep_job;

/* In the child: the sweep under the caps, then its leak check. */
static void sweep_child(const void *arg, void *result)
{
    const sweep_job *j = arg;
    report *r = result;
    alarm(SWEEP_SECONDS);
    mem_cap(j->budget);
    memset(r, 0, sizeof(*r));
    double t0 = now_s();
    j->fn(j->arg, r);
    r->seconds = now_s() - t0;
#if SWEEP_ASAN
    if (__lsan_do_recoverable_leak_check() != 0)
        failf(r, "memory leaked (see the LeakSanitizer report above)");
#else
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    r->peak = (uint64_t)ru.ru_maxrss * 1024;
    snprintf(r->peak_what, sizeof(r->peak_what), "whole sweep, peak RSS");
#endif
}

/* Runs fn in a child under the caps; fails the test on a broken
 * expectation, a crash, a sanitizer report, a hang or a leak. */
static void sandbox(const char *title, sweep_fn fn, const void *arg, uint64_t budget)
{
    const sweep_job j = {fn, arg, budget};
    report r;
    memset(&r, 0, sizeof(r));
    child_end e;
    child_run(sweep_child, &j, &r, sizeof(r), 0, &e);
    if (e.signal)
        fail_msg("%s: the sweep died of signal %d (%s)%s", title, e.signal, strsignal(e.signal),
                 e.signal == SIGALRM ? ": it ran past its time limit (a hang?)" : "");
    if (e.status != 0 || e.got != sizeof(r))
        fail_msg("%s: the sweep exited with status %d (a sanitizer report?)", title, e.status);
    char a[32], b[32];
    print_message("  %-52s %6llu cases, %5llu opened, %5llu verified, %6.2f s, slowest %.3f s, "
                  "peak %s (%s)\n",
                  title, (unsigned long long)r.cases, (unsigned long long)r.opened,
                  (unsigned long long)r.verified, r.seconds, r.slowest,
                  kib(r.peak, a, sizeof(a)), r.peak_what);
    char line[512];
    size_t n = 0;
    line[0] = 0;
    for (int s = 0; s < 16 && n < sizeof(line) - 64; s++)
        if (r.by_status[s])
            n += (size_t)snprintf(line + n, sizeof(line) - n, " %s %llu",
                                  ckpt_status_name((ckpt_status)s),
                                  (unsigned long long)r.by_status[s]);
    print_message("  %-52s  outcome:%s\n", "", line);
    if (r.failure[0])
        fail_msg("%s: %s", title, r.failure);
    if (SWEEP_ASAN && r.budget_peak > budget)
        fail_msg("%s: one case used %s of heap, more than the %s budget", title,
                 kib(r.budget_peak, a, sizeof(a)), kib(budget, b, sizeof(b)));
    (void)b;
}

/* ---- running one input ------------------------------------------------------- */

typedef struct expect {
    unsigned open;       /* allowed statuses of ckpt_open_memory */
    unsigned verify;     /* of ckpt_file_verify */
    unsigned data;       /* of ckpt_tensor_data / ckpt_tensor_copy */
    long tensors;        /* when it opens: the tensor count, or -1 for any */
    uint64_t heap;       /* with ASan: the most heap the case may use, 0 for the
                            sweep's budget */
} expect;

static const expect ANY_OUTCOME = {S(CKPT_OK) | OPEN_ANY_ERROR, VERIFY_ANY, DATA_ANY, -1, 0};
static const expect MUST_FAIL = {OPEN_ANY_ERROR, VERIFY_ANY, DATA_ANY, -1, 0};

static bool nul_terminated(const char *s, size_t cap) { return memchr(s, 0, cap) != NULL; }

/* The contract of a failed call: the status it returned, a message, and a
 * place for format errors. */
static void check_error(report *r, const char *what, const char *call, ckpt_status st,
                        const ckpt_error *err, size_t size)
{
    if (err->status != st)
        failf(r, "%s: %s returned %s but err.status is %s", what, call, ckpt_status_name(st),
              ckpt_status_name(err->status));
    if (!nul_terminated(err->message, sizeof(err->message)) ||
        !nul_terminated(err->record, sizeof(err->record)))
        failf(r, "%s: %s: error strings not terminated", what, call);
    else if (err->message[0] == 0)
        failf(r, "%s: %s: %s without a message", what, call, ckpt_status_name(st));
    if ((st == CKPT_ERR_FORMAT || st == CKPT_ERR_CORRUPT) && err->record[0] == 0 &&
        err->offset == CKPT_NO_OFFSET)
        failf(r, "%s: %s: %s names neither a record nor an offset: %s", what, call,
              ckpt_status_name(st), err->message);
    if (err->record[0] == 0 && err->offset != CKPT_NO_OFFSET && err->offset > size)
        failf(r, "%s: %s: file offset %llu is past the end (%zu bytes): %s", what, call,
              (unsigned long long)err->offset, size, err->message);
    if (err->file_offset != CKPT_NO_OFFSET && err->file_offset > size)
        failf(r, "%s: %s: file_offset %llu is past the end (%zu bytes): %s", what, call,
              (unsigned long long)err->file_offset, size, err->message);
}

static void check_status(report *r, const char *what, const char *call, ckpt_status st,
                         unsigned allowed, const ckpt_error *err)
{
    if ((unsigned)st > 15 || !(allowed & S(st)))
        failf(r, "%s: %s returned %s (%d): %s: %s", what, call, ckpt_status_name(st), (int)st,
              st == CKPT_OK ? "" : err->record, st == CKPT_OK ? "unexpected success" : err->message);
}

/* Visits values to a bounded count (memo sharing can make 2^64 paths). */
static void walk(report *r, const char *what, const ckpt_value *v, int depth, uint64_t *budget)
{
    if (!v || depth > 1100 || *budget == 0)
        return;
    (*budget)--;
    size_t len = 0;
    const char *s = ckpt_value_str(v, &len);
    if (s && s[len] != 0)
        failf(r, "%s: a %s value's text is not NUL-terminated", what,
              ckpt_kind_name(ckpt_value_kind(v)));
    double re, im;
    ckpt_value_complex(v, &re, &im);
    (void)ckpt_value_int(v);
    (void)ckpt_value_float(v);
    (void)ckpt_value_dtype(v);
    ckpt_kind k = ckpt_value_kind(v);
    bool dict = k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT;
    size_t n = ckpt_value_len(v);
    for (size_t i = 0; i < n && *budget; i++) {
        if (dict) {
            walk(r, what, ckpt_value_key(v, i), depth + 1, budget);
            walk(r, what, ckpt_value_dict_value(v, i), depth + 1, budget);
        } else {
            walk(r, what, ckpt_value_item(v, i), depth + 1, budget);
        }
    }
    walk(r, what, ckpt_value_state(v), depth + 1, budget);
}

/* The last byte a strided view reaches, from its info alone; false when it
 * overflows (then the library must have refused it). */
static bool view_end(const ckpt_tensor_info *ti, uint64_t *end)
{
    unsigned bits = ckpt_dtype_bits(ti->dtype);
    uint64_t last = (uint64_t)ti->storage_offset;
    for (uint32_t d = 0; d < ti->ndim; d++) {
        uint64_t span;
        if (__builtin_mul_overflow((uint64_t)(ti->shape[d] - 1), (uint64_t)ti->stride[d], &span) ||
            __builtin_add_overflow(last, span, &last))
            return false;
    }
    uint64_t b;
    if (__builtin_add_overflow(last, 1, &last) || __builtin_mul_overflow(last, bits, &b))
        return false;
    *end = (b + 7) / 8;
    return true;
}

/* Reads every tensor of an open file: data at both ends, a copy when small. */
static ckpt_status read_tensors(report *r, const char *what, ckpt_file *f, size_t size,
                                const expect *e, ckpt_error *first)
{
    ckpt_status result = CKPT_OK;
    size_t n = ckpt_file_tensor_count(f);
    for (size_t i = 0; i < n; i++) {
        const char *name = NULL;
        const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
        if (!t || !name) {
            failf(r, "%s: tensor %zu of %zu is missing", what, i, n);
            return result;
        }
        if (!ckpt_file_find_tensor(f, name))
            failf(r, "%s: tensor '%s' is listed but not found by name", what, name);
        ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
        ckpt_tensor_get_info(t, &ti);
        if (ti.ndim > 64)
            failf(r, "%s: tensor '%s' has %u dimensions", what, name, ti.ndim);
        uint64_t numel = 1;
        for (uint32_t d = 0; d < ti.ndim; d++) {
            if (ti.shape[d] < 0 || ti.stride[d] < 0)
                failf(r, "%s: tensor '%s' has a negative size or stride", what, name);
            else if (__builtin_mul_overflow(numel, (uint64_t)ti.shape[d], &numel))
                failf(r, "%s: tensor '%s': the shape overflows", what, name);
        }
        if (numel != ti.numel)
            failf(r, "%s: tensor '%s': numel %llu, the shape gives %llu", what, name,
                  (unsigned long long)ti.numel, (unsigned long long)numel);
        bool strided = ti.layout == CKPT_LAYOUT_STRIDED;
        uint64_t end = 0;
        if (strided && ti.has_storage && ti.numel > 0) {
            if (!view_end(&ti, &end) || end > ti.storage_nbytes) {
                failf(r, "%s: tensor '%s' reaches past its storage of %llu bytes", what, name,
                      (unsigned long long)ti.storage_nbytes);
                return result;
            }
        }
        ckpt_error err;
        memset(&err, 0, sizeof(err));
        const void *p = NULL;
        bool zc = false;
        ckpt_status st = ckpt_tensor_data(f, t, &p, &zc, &err);
        if (!strided && st == CKPT_ERR_UNSUPPORTED)
            st = CKPT_OK; /* sparse tensors have parts, no data of their own */
        else if (st == CKPT_OK && p && ti.numel > 0 && end > 0) {
            /* touch the first and last byte of the view: ASan checks both */
            uint64_t first_byte = (uint64_t)ti.storage_offset * ckpt_dtype_bits(ti.dtype) / 8;
            volatile uint8_t sink = ((const uint8_t *)p)[0];
            sink ^= ((const uint8_t *)p)[end - 1 - first_byte];
            (void)sink;
        }
        if (st == CKPT_OK && (ti.has_storage || !strided) && ti.nbytes <= COPY_MAX) {
            uint8_t *dst = malloc(ti.nbytes ? (size_t)ti.nbytes : 1);
            if (!dst) {
                failf(r, "%s: the test is out of memory", what);
                return result;
            }
            st = ckpt_tensor_copy(f, t, dst, (size_t)ti.nbytes, &err);
            free(dst);
        }
        if (st != CKPT_OK) {
            check_error(r, what, "tensor read", st, &err, size);
            check_status(r, what, "tensor read", st, e->data, &err);
            if (result == CKPT_OK) {
                result = st;
                *first = err;
            }
        }
    }
    return result;
}

/* One input, start to end. */
static void run_case(report *r, const void *data, size_t size, const ckpt_open_options *opts,
                     const char *what, const expect *e)
{
    double t0 = now_s();
    mem_mark();
    ckpt_file *f = (ckpt_file *)(uintptr_t)1;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    ckpt_status st = ckpt_open_memory(data, size, opts, &f, &err);
    ckpt_status first = st;
    r->cases++;
    if (st != CKPT_OK) {
        if (f != NULL)
            failf(r, "%s: a failed open left a handle", what);
        check_error(r, what, "open", st, &err, size);
        check_status(r, what, "open", st, e->open, &err);
    } else if (!f) {
        failf(r, "%s: open returned CKPT_OK without a handle", what);
    } else {
        r->opened++;
        check_status(r, what, "open", st, e->open, &err);
        if (e->tensors >= 0 && ckpt_file_tensor_count(f) != (size_t)e->tensors)
            failf(r, "%s: %zu tensors, expected %ld", what, ckpt_file_tensor_count(f), e->tensors);
        ckpt_file_info fi = {.struct_size = sizeof(fi)};
        ckpt_file_get_info(f, &fi);
        for (size_t i = 0; i < ckpt_file_record_count(f); i++) {
            ckpt_record_info ri = {.struct_size = sizeof(ri)};
            if (ckpt_file_record(f, i, &ri) != CKPT_OK || !ri.name)
                failf(r, "%s: record %zu has no info", what, i);
        }
        uint64_t budget = 200000;
        walk(r, what, ckpt_file_root(f), 0, &budget);
        if (fi.metadata)
            walk(r, what, fi.metadata, 0, &budget);
        ckpt_error terr;
        memset(&terr, 0, sizeof(terr));
        ckpt_status dst = read_tensors(r, what, f, size, e, &terr);
        ckpt_error verr;
        memset(&verr, 0, sizeof(verr));
        ckpt_status vst = ckpt_file_verify(f, &verr);
        if (vst != CKPT_OK) {
            check_error(r, what, "verify", vst, &verr, size);
            check_status(r, what, "verify", vst, e->verify, &verr);
        } else {
            r->verified++;
            check_status(r, what, "verify", vst, e->verify, &verr);
        }
        first = dst != CKPT_OK ? dst : vst;
        ckpt_close(f);
    }
    r->by_status[(unsigned)first & 15]++;
    double dt = now_s() - t0;
    uint64_t peak = mem_peak();
    if (peak > r->peak) {
        r->peak = peak;
        snprintf(r->peak_what, sizeof(r->peak_what), "%s", what);
    }
    if (dt > r->slowest) {
        r->slowest = dt;
        snprintf(r->slowest_what, sizeof(r->slowest_what), "%s", what);
    }
    if (dt > CASE_SECONDS)
        failf(r, "%s: took %.1f s", what, dt);
    if (e->heap && peak > e->heap)
        failf(r, "%s: used %llu bytes of heap, expected at most %llu", what,
              (unsigned long long)peak, (unsigned long long)e->heap);
    if (!e->heap && peak > r->budget_peak)
        r->budget_peak = peak;
}

/* Runs a copy of exactly size bytes, so that reading past it is caught. */
static void run_copy(report *r, const uint8_t *data, size_t size, const char *what,
                     const expect *e)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy) {
        failf(r, "%s: the test is out of memory", what);
        return;
    }
    if (size)
        memcpy(copy, data, size);
    run_case(r, copy, size, NULL, what, e);
    free(copy);
}

/* ---- (a) truncations and (b) mutants of real files -------------------------- */

typedef struct sample {
    const char *name;       /* for messages */
    const char *path;       /* relative to its root */
    bool from_source;       /* under $CKPT_SOURCE_DIR/fuzz/corpus/fuzz_file, else $CKPT_CORPUS */
    long tensors;           /* when the whole file opens */
    uint8_t *data;          /* loaded by the parent */
    size_t size;
} sample;

static sample SAMPLES[] = {
    {"zip float32.pt", "benign/burn/src/pytorch/tests/reader/test_data/float32.pt", false, 1,
     NULL, 0},
    {"zip state_dict_full.zip.pt", "benign/bumblebee/state_dict_full.zip.pt", false, 5, NULL, 0},
    {"zip deflated.pt", "deflated.pt", true, 3, NULL, 0},
    {"zip big_endian.pt", "big_endian.pt", true, 3, NULL, 0},
    {"zip sparse_layouts.pt", "sparse_layouts.pt", true, -1, NULL, 0},
    {"legacy offset-strides.bin", "benign/Pickle.jl/offset-strides.bin", false, 2, NULL, 0},
    {"legacy storage_view.legacy.pt", "benign/bumblebee/storage_view.legacy.pt", false, 2, NULL,
     0},
    {"legacy views_legacy.pt", "views_legacy.pt", true, 7, NULL, 0},
    {"safetensors model.safetensors", "benign/SafeTensors.jl/non_sharded/model.safetensors",
     false, 36, NULL, 0},
    {"safetensors model-00002-of-00006",
     "benign/SafeTensors.jl/sharded/model-00002-of-00006.safetensors", false, -1, NULL, 0},
    {"pickle builtin_type_p2.pkl", "benign/Pickle.jl/builtin_type_p2.pkl", false, 0, NULL, 0},
    {"pickle plain_p4.pkl", "plain_p4.pkl", true, 0, NULL, 0},
};
#define SAMPLE_COUNT (sizeof(SAMPLES) / sizeof(SAMPLES[0]))

/* Loads a sample in the parent; skips the test when its root is not set. */
static const sample *need_sample(size_t i)
{
    sample *s = &SAMPLES[i];
    if (s->data)
        return s;
    const char *root = getenv(s->from_source ? "CKPT_SOURCE_DIR" : "CKPT_CORPUS");
    if (!root || !*root) {
        print_message("%s not set: skipped\n", s->from_source ? "CKPT_SOURCE_DIR" : "CKPT_CORPUS");
        skip();
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s%s", root, s->from_source ? "fuzz/corpus/fuzz_file/" : "",
             s->path);
    s->data = read_file(path, &s->size);
    if (!s->data) {
        print_message("%s is missing: skipped\n", path);
        skip();
    }
    return s;
}

static void sweep_truncations(const void *arg, report *r)
{
    const sample *s = arg;
    char what[256];
    snprintf(what, sizeof(what), "%s whole", s->name);
    expect whole = {S(CKPT_OK), S(CKPT_OK), S(CKPT_OK), s->tensors, 0};
    run_copy(r, s->data, s->size, what, &whole);
    /* A prefix of a file of any of these formats is never a whole file:
     * zips end with their end record, safetensors with their last tensor's
     * bytes, legacy files with a storage, and a pickle with its STOP. */
    for (size_t len = 0; len < s->size && !r->failure[0]; len++) {
        snprintf(what, sizeof(what), "%s cut to %zu of %zu bytes", s->name, len, s->size);
        run_copy(r, s->data, len, what, &MUST_FAIL);
    }
}

static uint64_t rng_next(uint64_t *state)
{
    /* splitmix64 */
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static const uint64_t EXTREMES[] = {
    UINT64_MAX, 0, 0x7FFFFFFFFFFFFFFFull, 0x8000000000000000ull, 0xFFFFFFFFull, 0x7FFFFFFFull,
    0x80000000ull, 0xFFFFull, 0x10000ull, 1ull << 62, 1ull << 32, 0xFFFFFFFEull,
};

/* One mutant of s (an exact-size buffer in *out); describes it in what. */
static size_t mutate(const sample *s, uint64_t *rng, uint8_t **out, char *what, size_t cap)
{
    size_t n = s->size;
    uint64_t op = rng_next(rng) % 20;
    if (op < 10 || n < 16) {
        /* flip 1 to 8 bits */
        uint8_t *m = xmalloc(n);
        memcpy(m, s->data, n);
        int flips = op < 5 ? 1 : 1 + (int)(rng_next(rng) % 8);
        size_t at = 0;
        for (int k = 0; k < flips; k++) {
            at = (size_t)(rng_next(rng) % n);
            m[at] ^= (uint8_t)(1u << (rng_next(rng) % 8));
        }
        snprintf(what, cap, "%d bit flips, the last at %zu", flips, at);
        *out = m;
        return n;
    }
    if (op < 14) {
        /* 1 to 4 bytes set to random values */
        uint8_t *m = xmalloc(n);
        memcpy(m, s->data, n);
        int k = 1 + (int)(rng_next(rng) % 4);
        size_t at = 0;
        for (int i = 0; i < k; i++) {
            at = (size_t)(rng_next(rng) % n);
            m[at] = (uint8_t)rng_next(rng);
        }
        snprintf(what, cap, "%d random bytes, the last at %zu", k, at);
        *out = m;
        return n;
    }
    if (op < 17) {
        /* an extreme value as a 2-, 4- or 8-byte little-endian field */
        uint8_t *m = xmalloc(n);
        memcpy(m, s->data, n);
        int width = 2 << (rng_next(rng) % 3);
        uint64_t v = EXTREMES[rng_next(rng) % (sizeof(EXTREMES) / sizeof(EXTREMES[0]))];
        size_t at = (size_t)(rng_next(rng) % (n - (size_t)width + 1));
        put_le(m + at, v, width);
        snprintf(what, cap, "0x%llx as %d bytes at %zu", (unsigned long long)v, width, at);
        *out = m;
        return n;
    }
    size_t at = (size_t)(rng_next(rng) % n);
    size_t len = 1 + (size_t)(rng_next(rng) % 64);
    if (len > n - at)
        len = n - at;
    if (op < 19) {
        /* a range deleted: every later offset shifts */
        uint8_t *m = xmalloc(n - len);
        memcpy(m, s->data, at);
        memcpy(m + at, s->data + at + len, n - at - len);
        snprintf(what, cap, "%zu bytes deleted at %zu", len, at);
        *out = m;
        return n - len;
    }
    /* a range repeated */
    uint8_t *m = xmalloc(n + len);
    memcpy(m, s->data, at + len);
    memcpy(m + at + len, s->data + at, n - at);
    snprintf(what, cap, "%zu bytes repeated at %zu", len, at);
    *out = m;
    return n + len;
}

#define MUTANTS 20000

static void sweep_mutants(const void *arg, report *r)
{
    const sample *s = arg;
    uint64_t rng = 0x5EED0000u;
    for (const char *c = s->name; *c; c++)
        rng = rng * 131 + (uint8_t)*c;
    /* every other mutant opens permissive: objects outside the allow-list
     * become inert values, a path of its own through the interpreter */
    ckpt_open_options permissive;
    ckpt_open_options_default(&permissive);
    permissive.flags |= CKPT_OPEN_PERMISSIVE;
    for (int i = 0; i < MUTANTS && !r->failure[0]; i++) {
        char desc[128], what[256];
        uint8_t *m = NULL;
        size_t n = mutate(s, &rng, &m, desc, sizeof(desc));
        snprintf(what, sizeof(what), "%s mutant %d (%s%s)", s->name, i, desc,
                 i & 1 ? ", permissive" : "");
        run_case(r, m, n, i & 1 ? &permissive : NULL, what, &ANY_OUTCOME);
        free(m);
    }
}

/* Every position of the file's head and tail (where its headers, pickles,
 * JSON and directories are) overwritten with an all-ones field of 1, 2, 4
 * and 8 bytes: every length, count, offset and size there becomes 0xFF..,
 * and every opcode and signature byte 0xFF. */
#define EXTREMES_HEAD 2048
#define EXTREMES_TAIL 512

static void sweep_extremes(const void *arg, report *r)
{
    const sample *s = arg;
    uint8_t *m = xmalloc(s->size);
    for (size_t at = 0; at < s->size && !r->failure[0]; at++) {
        if (at == EXTREMES_HEAD && s->size > EXTREMES_HEAD + EXTREMES_TAIL)
            at = s->size - EXTREMES_TAIL;
        for (int width = 1; width <= 8 && at + (size_t)width <= s->size; width *= 2) {
            memcpy(m, s->data, s->size);
            memset(m + at, 0xFF, (size_t)width);
            if (memcmp(m, s->data, s->size) == 0)
                continue;
            char what[256];
            snprintf(what, sizeof(what), "%s with %d bytes of 0xFF at %zu", s->name, width, at);
            run_case(r, m, s->size, NULL, what, &ANY_OUTCOME);
        }
    }
    free(m);
}

static void sweep_samples(sweep_fn fn, const char *kind)
{
    for (size_t i = 0; i < SAMPLE_COUNT; i++) {
        const sample *s = need_sample(i);
        char title[128];
        snprintf(title, sizeof(title), "%s: %s (%zu B)", kind, s->name, s->size);
        sandbox(title, fn, s, FILE_BUDGET);
    }
}

static void test_truncations(void **state)
{
    (void)state;
    sweep_samples(sweep_truncations, "truncations");
}

static void test_mutants(void **state)
{
    (void)state;
    sweep_samples(sweep_mutants, "mutants");
}

static void test_extremes(void **state)
{
    (void)state;
    sweep_samples(sweep_extremes, "0xFF fields");
}

/* ---- builders: pickles ---------------------------------------------------- */

typedef struct tspec {
    const char *storage_class;   /* "FloatStorage" */
    uint64_t storage_numel;
    bool legacy;                 /* 6-item persistent id */
    const char *view_key;        /* legacy storage view: (key, offset, size) */
    uint64_t view_offset, view_size;
    uint64_t offset;
    const uint64_t *shape, *stride;
    int ndim;
    const char *key;             /* the storage's key; NULL: "0" */
} tspec;

static void pk_dims(buf *b, const uint64_t *v, int n)
{
    b_u8(b, '(');
    for (int i = 0; i < n; i++)
        pk_uint(b, v[i]);
    b_u8(b, 't');
}

/* _rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict()) */
static void pk_tspec(buf *b, const tspec *t)
{
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    b_u8(b, '(');
    b_u8(b, '(');
    pk_unicode(b, "storage");
    pk_global(b, "torch", t->storage_class);
    pk_unicode(b, t->key ? t->key : "0");
    pk_unicode(b, "cpu");
    pk_uint(b, t->storage_numel);
    if (t->legacy) {
        if (t->view_key) {
            b_u8(b, '(');
            pk_unicode(b, t->view_key);
            pk_uint(b, t->view_offset);
            pk_uint(b, t->view_size);
            b_u8(b, 't');
        } else {
            b_u8(b, 'N');
        }
    }
    b_u8(b, 't');
    b_u8(b, 'Q'); /* BINPERSID */
    pk_uint(b, t->offset);
    pk_dims(b, t->shape, t->ndim);
    pk_dims(b, t->stride, t->ndim);
    b_u8(b, 0x89); /* NEWFALSE */
    pk_global(b, "collections", "OrderedDict");
    b_u8(b, ')');
    b_u8(b, 'R');
    b_u8(b, 't');
    b_u8(b, 'R');
}

/* {"t": tensor} */
static buf pk_one_tspec(const tspec *t)
{
    buf b = {0};
    pk_proto(&b, 2);
    b_u8(&b, '}');
    pk_unicode(&b, "t");
    pk_tspec(&b, t);
    b_u8(&b, 's');
    pk_stop(&b);
    return b;
}

/* ---- builders: zip archives ------------------------------------------------- */

/*
 * The densest deflate stream: one dynamic Huffman block whose literal/length
 * code gives length 258 (symbol 285) one bit and whose distance code gives
 * distance 1 one bit, so every two bits repeat 258 zero bytes (a ratio of
 * 1032, the most deflate allows). Inflates to 4 + 258 x runs zeros.
 */
typedef struct bitw {
    buf *b;
    unsigned bit;
} bitw;

static void bw_bit(bitw *w, unsigned v)
{
    if (w->bit == 0)
        b_u8(w->b, 0);
    if (v & 1u)
        w->b->p[w->b->len - 1] |= (uint8_t)(1u << w->bit);
    w->bit = (w->bit + 1) & 7u;
}

/* a field, least significant bit first */
static void bw_bits(bitw *w, unsigned v, int n)
{
    for (int i = 0; i < n; i++)
        bw_bit(w, v >> i);
}

/* a Huffman code, most significant bit first */
static void bw_code(bitw *w, unsigned code, int n)
{
    for (int i = n - 1; i >= 0; i--)
        bw_bit(w, code >> i);
}

static void deflate_zeros(size_t runs, buf *out)
{
    static const int order[18] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1};
    memset(out, 0, sizeof(*out));
    bitw w = {out, 0};
    bw_bits(&w, 1, 1);   /* BFINAL */
    bw_bits(&w, 2, 2);   /* dynamic Huffman */
    bw_bits(&w, 29, 5);  /* 286 literal/length codes */
    bw_bits(&w, 0, 5);   /* 1 distance code */
    bw_bits(&w, 14, 4);  /* 18 code length codes */
    /* code length code: 18 (a run of zeros) 1 bit "0", 1 "10", 2 "11" */
    for (int i = 0; i < 18; i++)
        bw_bits(&w, order[i] == 18 ? 1u : order[i] == 1 || order[i] == 2 ? 2u : 0u, 3);
    bw_code(&w, 3, 2);                       /* literal 0: 2 bits */
    bw_code(&w, 0, 1);                       /* literals 1..138: none */
    bw_bits(&w, 127, 7);
    bw_code(&w, 0, 1);                       /* literals 139..255: none */
    bw_bits(&w, 106, 7);
    bw_code(&w, 3, 2);                       /* end of block: 2 bits */
    bw_code(&w, 0, 1);                       /* lengths 257..284: none */
    bw_bits(&w, 17, 7);
    bw_code(&w, 2, 2);                       /* length 258: 1 bit */
    bw_code(&w, 2, 2);                       /* distance 1: 1 bit */
    /* literal/length code: 285 "0", literal 0 "10", end "11"; distance "0" */
    for (int i = 0; i < 4; i++)
        bw_code(&w, 2, 2);
    for (size_t i = 0; i < runs; i++) {
        bw_code(&w, 0, 1);
        bw_code(&w, 0, 1);
    }
    bw_code(&w, 3, 2);
}

/*
 * size zero bytes (size >= 4) in the code of deflate_zeros, with a literal
 * zero (two bits) after every eleven runs: a ratio of about 946, under the
 * default max_inflate_ratio of 1000, as a hostile file would choose.
 */
static void deflate_zeros_sized(uint64_t size, buf *out)
{
    static const int order[18] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1};
    memset(out, 0, sizeof(*out));
    bitw w = {out, 0};
    bw_bits(&w, 1, 1);
    bw_bits(&w, 2, 2);
    bw_bits(&w, 29, 5);
    bw_bits(&w, 0, 5);
    bw_bits(&w, 14, 4);
    for (int i = 0; i < 18; i++)
        bw_bits(&w, order[i] == 18 ? 1u : order[i] == 1 || order[i] == 2 ? 2u : 0u, 3);
    bw_code(&w, 3, 2);
    bw_code(&w, 0, 1);
    bw_bits(&w, 127, 7);
    bw_code(&w, 0, 1);
    bw_bits(&w, 106, 7);
    bw_code(&w, 3, 2);
    bw_code(&w, 0, 1);
    bw_bits(&w, 17, 7);
    bw_code(&w, 2, 2);
    bw_code(&w, 2, 2);
    for (int i = 0; i < 4; i++) /* distance 1 needs a byte before it */
        bw_code(&w, 2, 2);
    uint64_t left = size - 4;
    unsigned runs = 0;
    while (left >= 258) {
        bw_code(&w, 0, 1); /* length 258 */
        bw_code(&w, 0, 1); /* distance 1 */
        left -= 258;
        if (++runs % 11 == 0 && left) {
            bw_code(&w, 2, 2); /* a literal zero */
            left--;
        }
    }
    for (; left; left--)
        bw_code(&w, 2, 2);
    bw_code(&w, 3, 2);
}

static const uint8_t VERSION3[] = "3\n";

static uint8_t FLOATS[4096];

static void fill_floats(void)
{
    for (size_t i = 0; i < sizeof(FLOATS); i++)
        FLOATS[i] = (uint8_t)(i * 13 + 5);
}

/* ---- builders: legacy files ------------------------------------------------- */

/* magic, protocol 1001, sys_info, the object, keys ["0"], then the storage:
 * its element count field and bytes. */
static buf legacy_file(const buf *object, uint64_t count_field, const uint8_t *data, size_t len)
{
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    buf b = {0};
    pk_proto(&b, 2);
    b_u8(&b, 0x8a);
    b_u8(&b, 10);
    b_put(&b, magic, 10);
    pk_stop(&b);
    pk_proto(&b, 2);
    b_u8(&b, 'M');
    b_le(&b, 1001, 2);
    pk_stop(&b);
    pk_proto(&b, 2);
    b_u8(&b, '}');
    pk_unicode(&b, "little_endian");
    b_u8(&b, 0x88);
    b_u8(&b, 's');
    pk_stop(&b);
    b_put(&b, object->p, object->len);
    pk_proto(&b, 2);
    b_u8(&b, ']');
    pk_unicode(&b, "0");
    b_u8(&b, 'a');
    pk_stop(&b);
    b_le(&b, count_field, 8);
    b_put(&b, data, len);
    return b;
}

/* ---- (c) crafted inputs ---------------------------------------------------- */

static const expect OPENS = {S(CKPT_OK), S(CKPT_OK), S(CKPT_OK), -1, 0};

static expect fails_with(unsigned open)
{
    expect e = {open, VERIFY_ANY, DATA_ANY, -1, 0};
    return e;
}

/* Opens but verify (and reading the data) must fail with one of `later`. */
static expect later_fails(unsigned later)
{
    expect e = {S(CKPT_OK), later, later | S(CKPT_OK), -1, 0};
    return e;
}

/* The same within `heap` bytes: a bomb refused before it is inflated. */
static expect small(expect e, uint64_t heap)
{
    e.heap = heap;
    return e;
}

static void run_buf(report *r, const buf *b, const char *what, expect e)
{
    run_copy(r, b->p, b->len, what, &e);
}

static void run_with(report *r, const buf *b, const ckpt_open_options *opts, const char *what,
                     expect e)
{
    uint8_t *copy = xmalloc(b->len);
    memcpy(copy, b->p, b->len);
    run_case(r, copy, b->len, opts, what, &e);
    free(copy);
}

/* {"t": float[n]} over archive/data/0, every record as given. */
static zbuilt zip_with(const zrec *pkl, const zrec *storage)
{
    zrec recs[3];
    recs[0] = *pkl;
    recs[1] = *storage;
    recs[2] = zr_stored("archive/version", VERSION3, 2);
    return zip_build(recs, 3, NULL);
}

static buf float_tensor_pickle(uint64_t numel)
{
    uint64_t shape[] = {numel}, stride[] = {1};
    tspec t = {"FloatStorage", numel, false, NULL, 0, 0, 0, shape, stride, 1, NULL};
    return pk_one_tspec(&t);
}

static void sweep_zip_bombs(const void *arg, report *r)
{
    (void)arg;
    fill_floats();
    const size_t runs = 260000;
    const uint64_t big = 4 + 258 * (uint64_t)runs; /* 64 MiB of zeros */
    buf zdata = {0};
    deflate_zeros(runs, &zdata);
    uint8_t *mib = xmalloc(1 << 20);
    memset(mib, 0, 1 << 20);
    uint32_t crc_1m = libdeflate_crc32(0, mib, 1 << 20), crc_big = 0;
    for (uint64_t done = 0; done < big; done += 1 << 20)
        crc_big = libdeflate_crc32(crc_big, mib, big - done < (1 << 20) ? big - done : 1 << 20);
    free(mib);
    zrec data_rec = {"archive/data/0", zdata.p, zdata.len, big, crc_big, 8, false, 0};
    zrec pkl_bomb = data_rec;
    pkl_bomb.name = "archive/data.pkl";
    buf pkl = float_tensor_pickle(big / 4);
    zrec pkl_rec = zr_stored("archive/data.pkl", pkl.p, pkl.len);
    char what[160];
    snprintf(what, sizeof(what), "64 MiB of zeros deflated to %zu bytes (ratio %llu)", zdata.len,
             (unsigned long long)(big / zdata.len));

    /* control: a torch zip with deflated records */
    buf small4 = float_tensor_pickle(4), pz = {0}, dz = {0};
    zrec pkl_deflated = zr_deflated("archive/data.pkl", small4.p, small4.len, 9, &pz);
    zrec data_deflated = zr_deflated("archive/data/0", FLOATS, 16, 9, &dz);
    zbuilt z = zip_with(&pkl_deflated, &data_deflated);
    run_buf(r, &z.file, "torch zip of deflated records (control)", OPENS);
    b_free(&z.file);
    b_free(&pz);
    b_free(&dz);
    b_free(&small4);

    /* control: the bomb, with a ratio limit it stays under */
    ckpt_open_options lax;
    ckpt_open_options_default(&lax);
    lax.limits.max_inflate_ratio = 2000;
    z = zip_with(&pkl_rec, &data_rec);
    run_with(r, &z.file, &lax, "deflate bomb under max_inflate_ratio 2000 (control)", OPENS);
    /* what a file holds inflated at once is bounded too */
    ckpt_open_options total = lax;
    total.limits.max_total_inflated_bytes = 32 << 20;
    /* (verification streams it: only reading the data holds it) */
    run_with(r, &z.file, &total, "64 MiB record, max_total_inflated_bytes 32 MiB",
             (expect){S(CKPT_OK), S(CKPT_OK), S(CKPT_ERR_LIMIT), -1, REFUSED_HEAP});
    /* the default ratio limit (1000) refuses it before inflating */
    run_buf(r, &z.file, what, small(later_fails(S(CKPT_ERR_LIMIT)), REFUSED_HEAP));
    ckpt_open_options strict;
    ckpt_open_options_default(&strict);
    strict.limits.max_inflated_bytes = 1 << 20;
    strict.limits.max_inflate_ratio = 2000;
    run_with(r, &z.file, &strict, "64 MiB record, max_inflated_bytes 1 MiB",
             small(later_fails(S(CKPT_ERR_LIMIT)), REFUSED_HEAP));
    b_free(&z.file);

    /* the stream inflates to 64 MiB, the headers say 1 MiB: stops at 1 MiB */
    buf small_pkl = float_tensor_pickle((1 << 20) / 4);
    zrec small_pkl_rec = zr_stored("archive/data.pkl", small_pkl.p, small_pkl.len);
    zrec lying = data_rec;
    lying.size = 1 << 20;
    lying.crc = crc_1m;
    z = zip_with(&small_pkl_rec, &lying);
    run_buf(r, &z.file, "declared 1 MiB, the stream holds 64 MiB",
            small(later_fails(S(CKPT_ERR_FORMAT)), (1 << 20) + REFUSED_HEAP));
    b_free(&z.file);

    /* declared sizes of 5 GiB and 2^64 - 1 (ZIP64) for the storage */
    const uint64_t huge[] = {(uint64_t)5 << 30, UINT64_MAX, UINT64_MAX - 1, (uint64_t)1 << 63};
    for (size_t i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        zrec h = data_rec;
        h.size = huge[i];
        h.zip64 = true;
        z = zip_with(&pkl_rec, &h);
        snprintf(what, sizeof(what), "storage record declaring %llu bytes (ZIP64)",
                 (unsigned long long)huge[i]);
        run_buf(r, &z.file, what,
                small(fails_with(S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)), REFUSED_HEAP));
        b_free(&z.file);
        /* the same storage as the tensor declares it: the size matches */
        if (huge[i] % 4 == 0 && huge[i] / 4 <= INT64_MAX) {
            buf hp = float_tensor_pickle(huge[i] / 4);
            zrec hp_rec = zr_stored("archive/data.pkl", hp.p, hp.len);
            z = zip_with(&hp_rec, &h);
            snprintf(what, sizeof(what), "float[%llu] in a record declaring %llu bytes",
                     (unsigned long long)(huge[i] / 4), (unsigned long long)huge[i]);
            expect e = {S(CKPT_OK) | S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT),
                        S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT),
                        S(CKPT_OK) | S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT), -1, REFUSED_HEAP};
            run_buf(r, &z.file, what, e);
            b_free(&z.file);
            b_free(&hp);
        }
    }

    /* data.pkl itself a bomb: refused while opening */
    zrec tiny = zr_stored("archive/data/0", FLOATS, 16);
    z = zip_with(&pkl_bomb, &tiny);
    run_buf(r, &z.file, "data.pkl: 64 MiB of zeros deflated",
            small(fails_with(S(CKPT_ERR_LIMIT)), REFUSED_HEAP));
    b_free(&z.file);
    pkl_bomb.size = UINT64_MAX;
    pkl_bomb.zip64 = true;
    z = zip_with(&pkl_bomb, &tiny);
    run_buf(r, &z.file, "data.pkl declaring 2^64 - 1 bytes (ZIP64)",
            small(fails_with(S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT)), REFUSED_HEAP));
    b_free(&z.file);

    b_free(&zdata);
    b_free(&small_pkl);
    b_free(&pkl);
}

/* {"a": a, "b": b} */
static buf pk_pair(const tspec *a, const tspec *b)
{
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, '}');
    pk_unicode(&p, "a");
    pk_tspec(&p, a);
    b_u8(&p, 's');
    pk_unicode(&p, "b");
    pk_tspec(&p, b);
    b_u8(&p, 's');
    pk_stop(&p);
    return p;
}

/* {"t": sparse_coo tensor of the size given over indices and values} */
static buf pk_sparse_coo(const tspec *indices, const tspec *values, uint64_t size)
{
    buf p = {0};
    pk_proto(&p, 2);
    b_u8(&p, '}');
    pk_unicode(&p, "t");
    pk_global(&p, "torch._utils", "_rebuild_sparse_tensor");
    b_u8(&p, '(');
    pk_global(&p, "torch", "sparse_coo");
    b_u8(&p, '(');
    pk_tspec(&p, indices);
    pk_tspec(&p, values);
    pk_dims(&p, &size, 1);
    b_u8(&p, 't');
    b_u8(&p, 't');
    b_u8(&p, 'R');
    b_u8(&p, 's');
    pk_stop(&p);
    return p;
}

static uint32_t crc_of_zeros(uint64_t n)
{
    uint8_t *mib = xmalloc(1 << 20);
    memset(mib, 0, 1 << 20);
    uint32_t crc = 0;
    for (uint64_t done = 0; done < n; done += 1 << 20)
        crc = libdeflate_crc32(crc, mib, n - done < (1 << 20) ? (size_t)(n - done) : 1 << 20);
    free(mib);
    return crc;
}

/*
 * Verification reads deflated records as a stream: records of 64 MiB of
 * zeros each, deflated at a ratio near the limit, are checked (CRC32, size,
 * sparse indices) without ever being held, within STREAM_BUDGET of address
 * space (REFUSED_HEAP of heap with ASan). Reading their data is refused by
 * max_total_inflated_bytes, so that only verification inflates them; a
 * verification that held a record whole would run out of memory here.
 */
static void sweep_streaming_verify(const void *arg, report *r)
{
    (void)arg;
    const uint64_t big = (uint64_t)64 << 20;
    buf zd = {0}, zlong = {0}, one = {0};
    deflate_zeros_sized(big, &zd);
    deflate_zeros_sized(big + 1024, &zlong);
    uint32_t crc = crc_of_zeros(big);
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.limits.max_total_inflated_bytes = 1 << 20;
    char what[200];

    uint64_t shape[] = {big / 4}, stride[] = {1};
    tspec a = {"FloatStorage", big / 4, false, NULL, 0, 0, 0, shape, stride, 1, "0"};
    tspec b = a;
    b.key = "1";
    buf pkl = pk_pair(&a, &b);
    zrec recs[4] = {zr_stored("archive/data.pkl", pkl.p, pkl.len),
                    {"archive/data/0", zd.p, zd.len, big, crc, 8, false, 0},
                    {"archive/data/1", zd.p, zd.len, big, crc, 8, false, 0},
                    zr_stored("archive/version", VERSION3, 2)};
    zbuilt z = zip_build(recs, 4, NULL);
    snprintf(what, sizeof(what), "two records of 64 MiB of zeros deflated to %zu bytes (ratio %llu)",
             zd.len, (unsigned long long)(big / zd.len));
    run_with(r, &z.file, &o, what, (expect){S(CKPT_OK), S(CKPT_OK), S(CKPT_ERR_LIMIT), 2,
                                            REFUSED_HEAP});
    b_free(&z.file);

    /* a wrong CRC32 is found as the bytes pass */
    recs[2].crc ^= 1;
    z = zip_build(recs, 4, NULL);
    run_with(r, &z.file, &o, "the same, the second record's CRC32 wrong",
             (expect){S(CKPT_OK), S(CKPT_ERR_CORRUPT), S(CKPT_ERR_LIMIT), 2, REFUSED_HEAP});
    b_free(&z.file);
    recs[2].crc = crc;

    /* a stream that holds more than its declared size stops there */
    recs[2].data = zlong.p;
    recs[2].stored = zlong.len;
    z = zip_build(recs, 4, NULL);
    run_with(r, &z.file, &o, "the same, the second stream 1 KiB longer than declared",
             (expect){S(CKPT_OK), S(CKPT_ERR_FORMAT), S(CKPT_ERR_LIMIT), 2, REFUSED_HEAP});
    b_free(&z.file);

    /* sparse_coo indices int64 [1, nnz] in such a record, values a stride-0
     * view of one float: checked from the same pass */
    const uint64_t nnz = big / 8;
    uint64_t ishape[] = {1, nnz}, istride[] = {nnz, 1}, vshape[] = {nnz}, vstride[] = {0};
    tspec idx = {"LongStorage", nnz, false, NULL, 0, 0, 0, ishape, istride, 2, "0"};
    tspec val = {"FloatStorage", 1, false, NULL, 0, 0, 0, vshape, vstride, 1, "1"};
    b_fill(&one, 0, 4);
    for (uint64_t size = 3; size != UINT64_MAX; size = size ? 0 : UINT64_MAX) {
        buf sp = pk_sparse_coo(&idx, &val, size);
        zrec srecs[4] = {zr_stored("archive/data.pkl", sp.p, sp.len),
                         {"archive/data/0", zd.p, zd.len, big, crc, 8, false, 0},
                         zr_stored("archive/data/1", one.p, 4),
                         zr_stored("archive/version", VERSION3, 2)};
        z = zip_build(srecs, 4, NULL);
        snprintf(what, sizeof(what), "sparse_coo [%llu], %llu indices in a deflated record",
                 (unsigned long long)size, (unsigned long long)nnz);
        /* size 0: index 0 is out of bounds */
        expect e = size ? (expect){S(CKPT_OK), S(CKPT_OK), S(CKPT_ERR_LIMIT), 1, REFUSED_HEAP}
                        : (expect){S(CKPT_OK), S(CKPT_ERR_FORMAT), S(CKPT_OK), 1, REFUSED_HEAP};
        run_with(r, &z.file, &o, what, e);
        b_free(&z.file);
        b_free(&sp);
    }
    b_free(&one);
    b_free(&pkl);
    b_free(&zd);
    b_free(&zlong);
}

static void sweep_zip64(const void *arg, report *r)
{
    (void)arg;
    fill_floats();
    buf pkl = float_tensor_pickle(4);
    zrec recs[3] = {zr_stored("archive/data.pkl", pkl.p, pkl.len),
                    zr_stored("archive/data/0", FLOATS, 16),
                    zr_stored("archive/version", VERSION3, 2)};
    for (int i = 0; i < 3; i++)
        recs[i].zip64 = true;
    zend end = {.zip64 = true};
    zbuilt z = zip_build(recs, 3, &end);
    run_buf(r, &z.file, "ZIP64 torch zip (control)", OPENS);
    b_free(&z.file);

    static const struct {
        const char *what;
        bool set_count, set_size, set_offset;
        uint64_t count, size, offset;
    } ends[] = {
        {"ZIP64 end record: 2^64 - 1 entries", true, false, false, UINT64_MAX, 0, 0},
        {"ZIP64 end record: 2^32 entries", true, false, false, (uint64_t)1 << 32, 0, 0},
        {"ZIP64 end record: 1,000,001 entries", true, false, false, 1000001, 0, 0},
        {"ZIP64 end record: 0 entries", true, false, false, 0, 0, 0},
        {"ZIP64 end record: directory of 2^64 - 1 bytes", false, true, false, 0, UINT64_MAX, 0},
        {"ZIP64 end record: directory at 2^64 - 1", false, false, true, 0, 0, UINT64_MAX},
        {"ZIP64 end record: directory at 2^63", false, false, true, 0, 0, (uint64_t)1 << 63},
        {"ZIP64 end record: both 2^64 - 1", false, true, true, 0, UINT64_MAX, UINT64_MAX},
    };
    for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
        zend e = {true, ends[i].set_count, ends[i].set_size, ends[i].set_offset, ends[i].count,
                  ends[i].size, ends[i].offset, false};
        z = zip_build(recs, 3, &e);
        run_buf(r, &z.file, ends[i].what, fails_with(S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)));
        b_free(&z.file);
    }
    /* the classic end record (no ZIP64) with 65535 entries in a tiny directory */
    zend classic = {false, true, false, false, 0xFFFF, 0, 0, false};
    zrec plain[3] = {zr_stored("archive/data.pkl", pkl.p, pkl.len),
                     zr_stored("archive/data/0", FLOATS, 16),
                     zr_stored("archive/version", VERSION3, 2)};
    z = zip_build(plain, 3, &classic);
    run_buf(r, &z.file, "end record: 65535 entries", fails_with(S(CKPT_ERR_FORMAT)));
    b_free(&z.file);

    /* entries: a ZIP64 local header offset of 2^64 - 1, sizes of 2^64 - 1 */
    const uint64_t offs[] = {UINT64_MAX, (uint64_t)1 << 63, 0xFFFFFFFFull + 1};
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        zrec bad[3];
        memcpy(bad, recs, sizeof(bad));
        bad[1].zip64_offset = offs[i];
        z = zip_build(bad, 3, &end);
        char what[128];
        snprintf(what, sizeof(what), "ZIP64 local header offset %llu", (unsigned long long)offs[i]);
        run_buf(r, &z.file, what, fails_with(S(CKPT_ERR_FORMAT)));
        b_free(&z.file);
    }
    /* a stored entry whose headers agree on a size of 2^64 - 1 over 16 bytes */
    zrec bad[3];
    memcpy(bad, recs, sizeof(bad));
    bad[1].size = UINT64_MAX;
    z = zip_build(bad, 3, &end);
    run_buf(r, &z.file, "stored ZIP64 entry of size 2^64 - 1", fails_with(S(CKPT_ERR_FORMAT)));
    b_free(&z.file);
    b_free(&pkl);
}

/* A pickle alone and as archive/data.pkl of a torch zip. */
static void run_pickle(report *r, const buf *p, const char *what, unsigned open)
{
    char w[192];
    snprintf(w, sizeof(w), "%s (plain pickle)", what);
    run_buf(r, p, w, fails_with(open));
    zbuilt z = torch_zip(p, FLOATS, 16);
    snprintf(w, sizeof(w), "%s (torch zip)", what);
    run_buf(r, &z.file, w, fails_with(open));
    b_free(&z.file);
}

static void sweep_pickle_lengths(const void *arg, report *r)
{
    (void)arg;
    fill_floats();
    static const struct {
        const char *what;
        unsigned proto, op;
        int width;
        uint64_t len;
    } cases[] = {
        {"BINUNICODE8 of 2^64 - 1 bytes", 4, 0x8d, 8, UINT64_MAX},
        {"BINUNICODE8 of 2^63 bytes", 4, 0x8d, 8, (uint64_t)1 << 63},
        {"BINBYTES8 of 2^64 - 1 bytes", 4, 0x8e, 8, UINT64_MAX},
        {"BYTEARRAY8 of 2^64 - 1 bytes", 5, 0x96, 8, UINT64_MAX},
        {"FRAME of 2^64 - 1 bytes", 4, 0x95, 8, UINT64_MAX},
        {"FRAME of 2^63 bytes", 4, 0x95, 8, (uint64_t)1 << 63},
        {"BINUNICODE of 2^32 - 1 bytes", 2, 'X', 4, 0xFFFFFFFFu},
        {"BINBYTES of 2^32 - 1 bytes", 3, 'B', 4, 0xFFFFFFFFu},
        {"BINSTRING of length -1", 2, 'T', 4, 0xFFFFFFFFu},
        {"BINSTRING of 2^31 - 1 bytes", 2, 'T', 4, 0x7FFFFFFFu},
        {"LONG4 of 2^31 - 1 bytes", 2, 0x8b, 4, 0x7FFFFFFFu},
        {"LONG4 of length -1", 2, 0x8b, 4, 0xFFFFFFFFu},
        {"LONG_BINGET 2^32 - 1", 2, 'j', 4, 0xFFFFFFFFu},
        {"EXT4 2^32 - 1", 2, 0x84, 4, 0xFFFFFFFFu},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf p = {0};
        pk_proto(&p, cases[i].proto);
        b_u8(&p, cases[i].op);
        b_le(&p, cases[i].len, cases[i].width);
        b_str(&p, "abcdefgh");
        pk_stop(&p);
        run_pickle(r, &p, cases[i].what, OPEN_ANY_ERROR);
        b_free(&p);
    }

    /* decimal texts far past CPython's 4300 digits, and a long float text */
    buf p = {0};
    b_u8(&p, 'I');
    b_fill(&p, '7', 1000000);
    b_str(&p, "\n.");
    run_pickle(r, &p, "INT of 1,000,000 digits", S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT));
    b_free(&p);
    b_u8(&p, 'L');
    b_fill(&p, '9', 1000000);
    b_str(&p, "L\n.");
    run_pickle(r, &p, "LONG of 1,000,000 digits", S(CKPT_ERR_LIMIT) | S(CKPT_ERR_FORMAT));
    b_free(&p);
    b_u8(&p, 'F');
    b_fill(&p, '1', 1000000);
    b_str(&p, "\n.");
    char what[64];
    snprintf(what, sizeof(what), "FLOAT of 1,000,000 digits (plain pickle)");
    run_buf(r, &p, what, ANY_OUTCOME);
    b_free(&p);

    /* LONG1 / LONG4 of many bytes: a big int, no arithmetic on it */
    pk_proto(&p, 2);
    b_u8(&p, 0x8b);
    b_le(&p, 1 << 20, 4);
    b_fill(&p, 0x5a, 1 << 20);
    pk_stop(&p);
    snprintf(what, sizeof(what), "LONG4 of 1 MiB (plain pickle)");
    run_buf(r, &p, what, ANY_OUTCOME);
    b_free(&p);

    /* 200,000 distinct int keys in one dict: hashing stays linear */
    pk_proto(&p, 2);
    b_u8(&p, '}');
    b_u8(&p, '(');
    for (int32_t k = 0; k < 200000; k++) {
        pk_int(&p, (int64_t)k * 4096);
        b_u8(&p, 'N');
    }
    b_u8(&p, 'u');
    pk_stop(&p);
    run_buf(r, &p, "dict of 200,000 int keys (plain pickle)", OPENS);
    b_free(&p);
}

/* {"t": tensor} in a torch zip over a storage record of `bytes` bytes. */
static void run_shape(report *r, const char *what, const char *cls, uint64_t numel,
                      size_t bytes, uint64_t offset, const uint64_t *shape,
                      const uint64_t *stride, int ndim, expect e)
{
    tspec t = {cls, numel, false, NULL, 0, 0, offset, shape, stride, ndim, NULL};
    buf p = pk_one_tspec(&t);
    zbuilt z = torch_zip(&p, FLOATS, bytes);
    run_buf(r, &z.file, what, e);
    b_free(&z.file);
    b_free(&p);
}

static void sweep_shapes(const void *arg, report *r)
{
    (void)arg;
    fill_floats();
    const uint64_t M = UINT64_MAX, I = INT64_MAX;
    expect fmt = fails_with(S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT));
    expect one = OPENS;
    one.tensors = 1;
    {
        const uint64_t sh[] = {4}, st[] = {1};
        run_shape(r, "float[4] (control)", "FloatStorage", 4, 16, 0, sh, st, 1, one);
    }
    {
        /* a 1 TiB view of one byte: valid (torch.expand saves these) */
        const uint64_t sh[] = {(uint64_t)1 << 40}, st[] = {0};
        run_shape(r, "uint8[2^40] with stride 0 over 1 byte", "ByteStorage", 1, 1, 0, sh, st, 1,
                  one);
        const uint64_t sh60[] = {1ull << 20, 1ull << 20, 1ull << 20}, st60[] = {0, 0, 0};
        run_shape(r, "uint8[2^20, 2^20, 2^20] with strides 0", "ByteStorage", 1, 1, 0, sh60, st60,
                  3, one);
    }
    static const struct {
        const char *what;
        const char *cls;
        uint64_t numel, offset;
        int ndim;
        uint64_t shape[4], stride[4];
    } bad[] = {
        {"shape [2^64 - 1]", "FloatStorage", 4, 0, 1, {M}, {1}},
        {"shape [2^63 - 1] stride 0 (bits overflow)", "FloatStorage", 4, 0, 1, {I}, {0}},
        {"shape [2^62] stride 0 float64 (bytes overflow)", "DoubleStorage", 2, 0, 1,
         {1ull << 62}, {0}},
        {"shape [2^31, 2^31] strides 0 (bits overflow)", "FloatStorage", 4, 0, 2,
         {1ull << 31, 1ull << 31}, {0, 0}},
        {"shape [2^32, 2^32] strides 0 (numel overflows)", "FloatStorage", 4, 0, 2,
         {1ull << 32, 1ull << 32}, {0, 0}},
        {"shape [2^21, 2^21, 2^21, 2^2] strides 0", "FloatStorage", 4, 0, 4,
         {1ull << 21, 1ull << 21, 1ull << 21, 4}, {0, 0, 0, 0}},
        {"shape [3, 2^62] (numel overflows)", "FloatStorage", 4, 0, 2, {3, 1ull << 62}, {0, 0}},
        {"stride 2^64 - 1", "FloatStorage", 4, 0, 1, {2}, {M}},
        {"stride 2^63 - 1", "FloatStorage", 4, 0, 1, {2}, {I}},
        {"stride 2^62 (extent overflows)", "FloatStorage", 4, 0, 1, {5}, {1ull << 62}},
        {"storage offset 2^63 - 1", "FloatStorage", 4, I, 1, {1}, {1}},
        {"storage offset 2^64 - 1", "FloatStorage", 4, M, 1, {1}, {1}},
        {"storage offset 2^62", "FloatStorage", 4, 1ull << 62, 1, {1}, {1}},
        {"storage numel 2^64 - 1", "FloatStorage", M, 0, 1, {1}, {1}},
        {"storage numel 2^63 - 1", "FloatStorage", I, 0, 1, {1}, {1}},
        {"storage numel 2^61 (record of 16 bytes)", "FloatStorage", 1ull << 61, 0, 1, {1}, {1}},
        {"view past its storage by one element", "FloatStorage", 4, 1, 1, {4}, {1}},
        {"view past its storage through a stride", "FloatStorage", 4, 0, 2, {2, 2}, {3, 1}},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        run_shape(r, bad[i].what, bad[i].cls, bad[i].numel, 16, bad[i].offset, bad[i].shape,
                  bad[i].stride, bad[i].ndim, fmt);
}

static void run_legacy(report *r, const char *what, const tspec *t, uint64_t count_field,
                       size_t data_len, expect e)
{
    buf obj = pk_one_tspec(t);
    buf f = legacy_file(&obj, count_field, FLOATS, data_len);
    run_buf(r, &f, what, e);
    b_free(&f);
    b_free(&obj);
}

static void sweep_legacy(const void *arg, report *r)
{
    (void)arg;
    fill_floats();
    const uint64_t M = UINT64_MAX;
    expect one = OPENS;
    one.tensors = 1;
    expect fmt = fails_with(S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT));
    const uint64_t sh4[] = {4}, st1[] = {1}, sh2[] = {2};
    tspec t = {"FloatStorage", 4, true, NULL, 0, 0, 0, sh4, st1, 1, NULL};
    run_legacy(r, "legacy float[4] (control)", &t, 4, 16, one);
    tspec v = {"FloatStorage", 4, true, "1", 1, 2, 0, sh2, st1, 1, NULL};
    run_legacy(r, "legacy view of elements 1..2 (control)", &v, 4, 16, one);

    /* the element count field before the storage bytes */
    const uint64_t counts[] = {M, (uint64_t)1 << 63, (uint64_t)1 << 62, 5, 3, 0};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        char what[96];
        snprintf(what, sizeof(what), "legacy storage count field %llu (object says 4)",
                 (unsigned long long)counts[i]);
        run_legacy(r, what, &t, counts[i], 16, fmt);
    }
    /* the object and the count agree on a storage the file does not hold */
    const uint64_t numels[] = {(uint64_t)1 << 61, (uint64_t)1 << 40, 5};
    for (size_t i = 0; i < sizeof(numels) / sizeof(numels[0]); i++) {
        tspec big = t;
        big.storage_numel = numels[i];
        char what[96];
        snprintf(what, sizeof(what), "legacy storage of %llu floats in 16 bytes",
                 (unsigned long long)numels[i]);
        run_legacy(r, what, &big, numels[i], 16, fmt);
    }
    run_legacy(r, "legacy storage of 2^64 - 1 floats", &(tspec){"FloatStorage", M, true, NULL, 0,
               0, 0, sh4, st1, 1, NULL}, M, 16, fmt);

    /* storage views that do not fit their storage */
    static const struct {
        const char *what;
        uint64_t offset, size;
    } views[] = {
        {"legacy view past the end of its storage", 3, 2},
        {"legacy view of 2^64 - 1 elements", 0, UINT64_MAX},
        {"legacy view at offset 2^64 - 1", UINT64_MAX, 1},
        {"legacy view at offset 2^62, size 2^62", 1ull << 62, 1ull << 62},
        {"legacy view at offset 2^61 (bytes overflow)", 1ull << 61, 1},
    };
    for (size_t i = 0; i < sizeof(views) / sizeof(views[0]); i++) {
        tspec bad = v;
        bad.view_offset = views[i].offset;
        bad.view_size = views[i].size;
        run_legacy(r, views[i].what, &bad, 4, 16, fmt);
    }
    /* tensors larger than their (view of a) storage, and shapes that overflow */
    tspec tv = v;
    tv.shape = sh4;
    run_legacy(r, "legacy float[4] on a view of 2", &tv, 4, 16, fmt);
    const uint64_t huge[] = {1ull << 62, 1ull << 62}, st0[] = {0, 0};
    tspec ov = {"FloatStorage", 4, true, NULL, 0, 0, 0, huge, st0, 2, NULL};
    run_legacy(r, "legacy shape [2^62, 2^62] strides 0", &ov, 4, 16, fmt);
    tspec off = t;
    off.offset = M;
    run_legacy(r, "legacy storage offset 2^64 - 1", &off, 4, 16, fmt);
}

static void sweep_safetensors(const void *arg, report *r)
{
    (void)arg;
    static const struct {
        const char *what;
        const char *header;
        size_t data;
        unsigned open;
    } cases[] = {
        {"data_offsets [0, 2^64 - 1]",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,18446744073709551615]}}", 4,
         S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"data_offsets [2^64 - 1, 2^64 - 1]",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[18446744073709551615,"
         "18446744073709551615]}}", 0, S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"data_offsets past 2^64",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,18446744073709551616]}}", 4,
         S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"shape [2^64 - 1]",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],\"data_offsets\":[0,4]}}", 4,
         S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"shape [2^63 - 1, 2]",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,2],\"data_offsets\":[0,4]}}",
         4, S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"shape [2^62] of F64 (bytes overflow)",
         "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", 8,
         S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"shape [1e300]",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", 4,
         S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
        {"shape [2^63 - 1, 0] (no elements)",
         "{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,0],\"data_offsets\":[0,0]}}",
         0, S(CKPT_OK) | S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf b = {0};
        b_le(&b, strlen(cases[i].header), 8);
        b_str(&b, cases[i].header);
        b_fill(&b, 7, cases[i].data);
        run_buf(r, &b, cases[i].what, fails_with(cases[i].open));
        b_free(&b);
    }
    /* JSON nested 100,000 deep, in the header and in the metadata */
    for (int where = 0; where < 2; where++) {
        buf h = {0};
        b_str(&h, where ? "{\"__metadata__\":{\"k\":" : "{\"a\":");
        b_fill(&h, '[', 100000);
        b_fill(&h, ']', 100000);
        b_str(&h, where ? "}}" : "}");
        buf b = {0};
        b_le(&b, h.len, 8);
        b_put(&b, h.p, h.len);
        run_buf(r, &b, where ? "metadata nested 100,000 deep" : "header nested 100,000 deep",
                fails_with(S(CKPT_ERR_FORMAT) | S(CKPT_ERR_LIMIT)));
        b_free(&b);
        b_free(&h);
    }
}

/* 100,000 tensors of no bytes (a 5.7 MB header): they open, in time and
 * memory in proportion to the tensors (the header is read as a stream, and
 * a tensor costs a few hundred bytes), within a budget of its own. */
static void sweep_safetensors_many(const void *arg, report *r)
{
    (void)arg;
    buf h = {0};
    b_u8(&h, '{');
    for (int i = 0; i < 100000; i++) {
        char e[96];
        snprintf(e, sizeof(e), "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}",
                 i ? "," : "", i);
        b_str(&h, e);
    }
    b_u8(&h, '}');
    buf b = {0};
    b_le(&b, h.len, 8);
    b_put(&b, h.p, h.len);
    expect e = small(OPENS, 32 * (uint64_t)h.len);
    e.tensors = 100000;
    run_buf(r, &b, "100,000 empty tensors", e);
    b_free(&b);
    b_free(&h);
}

static void test_zip_bombs(void **state)
{
    (void)state;
    sandbox("deflate bombs", sweep_zip_bombs, NULL, INFLATE_BUDGET);
}

static void test_streaming_verify(void **state)
{
    (void)state;
    sandbox("verification streams deflated records", sweep_streaming_verify, NULL,
            STREAM_BUDGET);
}

static void test_zip64_extremes(void **state)
{
    (void)state;
    sandbox("ZIP64 sizes, offsets and counts", sweep_zip64, NULL, BOMB_BUDGET);
}

static void test_pickle_lengths(void **state)
{
    (void)state;
    sandbox("pickle lengths and counts", sweep_pickle_lengths, NULL, BOMB_BUDGET);
}

static void test_shapes(void **state)
{
    (void)state;
    sandbox("huge and overflowing shapes", sweep_shapes, NULL, BOMB_BUDGET);
}

static void test_legacy_storages(void **state)
{
    (void)state;
    sandbox("legacy storages, views and counts", sweep_legacy, NULL, BOMB_BUDGET);
}

static void test_safetensors_extremes(void **state)
{
    (void)state;
    sandbox("safetensors offsets, shapes and nesting", sweep_safetensors, NULL, BOMB_BUDGET);
    sandbox("safetensors: 100,000 tensors", sweep_safetensors_many, NULL, MANY_BUDGET);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_truncations),
        cmocka_unit_test(test_mutants),
        cmocka_unit_test(test_extremes),
        cmocka_unit_test(test_zip_bombs),
        cmocka_unit_test(test_streaming_verify),
        cmocka_unit_test(test_zip64_extremes),
        cmocka_unit_test(test_pickle_lengths),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_legacy_storages),
        cmocka_unit_test(test_safetensors_extremes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
