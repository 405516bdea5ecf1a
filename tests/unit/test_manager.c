/*
 * test_manager.c - the checkpoint manager: best and last selection and
 * retention against a worked example, the manifest, a crash at every step
 * of the commit protocol (a child stopped by _exit at each point in turn),
 * resume past a torn file, the lock, a rebuilt manifest, and refusals that
 * must leave the directory as it was.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "support.h"

#include "manager.h"

#include <libdeflate.h>

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern void (*ckpt__manager_hook)(const char *point);

/* ---- helpers ------------------------------------------------------------------ */

static int setup(void **state)
{
    (void)state;
    tmp_dir_make("ckpt-test-manager-");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    remove_tree(tmp_dir());
    return 0;
}

/* Warnings, collected. */
static char g_warnings[8192];

static void collect(void *user, const char *msg)
{
    (void)user;
    size_t n = strlen(g_warnings);
    snprintf(g_warnings + n, sizeof(g_warnings) - n, "%s\n", msg);
}

static ckpt_manager *open_dir(const char *monitor, ckpt_metric_mode mode, unsigned keep_last,
                              unsigned keep_best, unsigned flags)
{
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    o.monitor = monitor;
    o.mode = mode;
    o.keep_last = keep_last;
    o.keep_best = keep_best;
    o.flags = flags;
    o.save_flags = CKPT_SAVE_NO_FSYNC;
    o.warn = collect;
    ckpt_manager *m = NULL;
    ckpt_error err;
    ckpt_status st = ckpt_manager_open(tmp_dir(), &o, &m, &err);
    if (st != CKPT_OK) {
        char t[512];
        fprintf(stderr, "open: %s\n", ckpt_error_format(&err, t, sizeof(t)));
    }
    assert_int_equal(st, CKPT_OK);
    return m;
}

/* {"model": {"w": float32[4] = step + i}, "step": step} */
static float g_w[4];

static ckpt_tree *checkpoint(int64_t step, ckpt_value **root)
{
    ckpt_tree *t = ckpt_tree_new();
    for (int i = 0; i < 4; i++)
        g_w[i] = (float)step + (float)i;
    static const int64_t shape[1] = {4};
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = 1;
    d.shape = shape;
    d.data = g_w;
    ckpt_value *model = ckpt_new_ordered_dict(t);
    ckpt_dict_put_str(t, model, "w", ckpt_new_tensor(t, &d));
    *root = ckpt_new_dict(t);
    ckpt_dict_put_str(t, *root, "model", model);
    ckpt_dict_put_str(t, *root, "step", ckpt_new_int(t, step));
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    return t;
}

static unsigned save(ckpt_manager *m, int64_t step, double val_loss)
{
    ckpt_value *root;
    ckpt_tree *t = checkpoint(step, &root);
    ckpt_metric metrics[2] = {{"val_loss", val_loss}, {"acc", 1.0 - val_loss}};
    unsigned saved = 0;
    ckpt_error err;
    ckpt_status st = ckpt_manager_save(m, step, root, metrics, 2, &saved, &err);
    if (st != CKPT_OK) {
        char text[512];
        fprintf(stderr, "save: %s\n", ckpt_error_format(&err, text, sizeof(text)));
    }
    assert_int_equal(st, CKPT_OK);
    ckpt_tree_free(t);
    return saved;
}

/* The step a saved file holds: its w[0] (weights files have only w). */
static int64_t step_in(const char *name)
{
    ckpt_file *f = NULL;
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.flags = CKPT_OPEN_VERIFY_CRC;
    if (ckpt_open(tmp_path(name), &o, &f, NULL) != CKPT_OK)
        return -2;
    const ckpt_tensor *w = ckpt_file_find_tensor(f, "model.w");
    if (!w)
        w = ckpt_file_find_tensor(f, "w");
    assert_non_null(w);
    float v[4];
    assert_int_equal(ckpt_tensor_copy(f, w, v, sizeof(v), NULL), CKPT_OK);
    ckpt_close(f);
    return (int64_t)v[0];
}

static bool exists(const char *name)
{
    struct stat sb;
    return stat(tmp_path(name), &sb) == 0;
}

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Names in the directory other than the lock, sorted, joined by spaces. */
static const char *listing(void)
{
    static char out[2048];
    char *names[64];
    size_t n = 0;
    DIR *d = opendir(tmp_dir());
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL && n < 64) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            strcmp(de->d_name, CKPT__LOCK_NAME) == 0)
            continue;
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_cstr);
    out[0] = 0;
    for (size_t i = 0; i < n; i++) {
        strcat(out, i ? " " : "");
        strcat(out, names[i]);
        free(names[i]);
    }
    return out;
}

static ckpt_status read_manifest(ckpt__manifest *mf, ckpt_error *err)
{
    return ckpt__manifest_read(tmp_path(CKPT__MANIFEST_NAME), CKPT__MANIFEST_MAX_BYTES, mf, err);
}

/* Every manifest entry matches its file (size and CRC32), none pending. */
static void check_manifest_matches_files(void)
{
    ckpt__manifest mf;
    assert_int_equal(read_manifest(&mf, NULL), CKPT_OK);
    assert_int_equal(mf.pending.count, 0);
    for (size_t i = 0; i < mf.committed.count; i++) {
        const ckpt__mentry *e = &mf.committed.items[i];
        FILE *fp = fopen(tmp_path(e->file), "rb");
        assert_non_null(fp);
        uint8_t chunk[65536];
        size_t r;
        uint64_t size = 0;
        uint32_t crc = 0;
        while ((r = fread(chunk, 1, sizeof(chunk), fp)) > 0) {
            crc = libdeflate_crc32(crc, chunk, r);
            size += r;
        }
        fclose(fp);
        assert_int_equal(size, e->size);
        assert_int_equal(crc, e->crc);
    }
    ckpt__manifest_free(&mf);
}

/* ---- best, last and retention ------------------------------------------------------ */

/* val_loss by step, worked by hand for keep_last 2, keep_best 2:
 *   best.pth is written at steps 0 (0.9), 1 (0.5), 3 (0.3) and 8 (0.2);
 *   numbered files kept after each save (newest two, best two):
 *     0:{0} 1:{0,1} 2:{1,2} 3:{1,2,3} 4:{1,3,4} 5:{3,4,5} 6:{3,5,6}
 *     7:{3,6,7} 8:{3,7,8} 9:{3,8,9}
 *   then 10 (0.25) gives {8,9,10} and 11 (0.1, a new best) {8,10,11}. */
static const double LOSS[10] = {0.9, 0.5, 0.7, 0.3, 0.8, 0.4, 0.35, 0.6, 0.2, 0.65};

static void test_best_last_retention(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 2, 2, 0);
    unsigned bits[10];
    for (int s = 0; s < 10; s++)
        bits[s] = save(m, s, LOSS[s]);
    for (int s = 0; s < 10; s++) {
        bool best = s == 0 || s == 1 || s == 3 || s == 8;
        assert_int_equal(!!(bits[s] & CKPT_SAVED_BEST), best);
        assert_true(bits[s] & CKPT_SAVED_LAST);
    }
    /* step 4 (0.8): newest two then are 3 and 4, best two 3 and 1: kept */
    assert_true(bits[4] & CKPT_SAVED_NUMBERED);
    assert_string_equal(listing(), "best.pth last.pth manifest.json step-00000003.pth "
                                   "step-00000008.pth step-00000009.pth");
    assert_int_equal(step_in("last.pth"), 9);
    assert_int_equal(step_in("best.pth"), 8);
    assert_int_equal(step_in("step-00000003.pth"), 3);

    /* what the manager reports, in ls order */
    assert_int_equal(ckpt_manager_count(m), 5);
    const char *files[5] = {"last.pth", "best.pth", "step-00000003.pth", "step-00000008.pth",
                            "step-00000009.pth"};
    const int64_t steps[5] = {9, 8, 3, 8, 9};
    const bool lasts[5] = {true, false, false, false, true};
    const bool bests[5] = {false, true, false, true, false};
    for (size_t i = 0; i < 5; i++) {
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_manager_get(m, i, &info));
        assert_string_equal(info.file, files[i]);
        assert_int_equal(info.step, steps[i]);
        assert_int_equal(info.last, lasts[i]);
        assert_int_equal(info.best, bests[i]);
        assert_int_equal(info.weights_only, i == 1);
        assert_int_equal(info.metric_count, 2);
        assert_string_equal(info.metrics[0].name, "val_loss");
        assert_true(info.metrics[0].value == LOSS[steps[i]]);
        assert_string_equal(info.ckpt_version, ckpt_version());
        assert_int_equal(info.format_version, 3);
        assert_true(info.time > 0);
    }
    assert_false(ckpt_manager_get(m, 5, NULL));
    ckpt_metric_mode mode;
    assert_string_equal(ckpt_manager_monitor(m, &mode), "val_loss");
    assert_int_equal(mode, CKPT_MODE_MIN);
    ckpt_manager_close(m);
    check_manifest_matches_files();

    /* reopened: the same story, and the best so far still counts */
    m = open_dir(NULL, CKPT_MODE_MIN, 2, 2, 0);
    assert_string_equal(ckpt_manager_monitor(m, NULL), "val_loss");
    assert_int_equal(save(m, 10, 0.25) & CKPT_SAVED_BEST, 0);
    assert_int_equal(save(m, 11, 0.1) & CKPT_SAVED_BEST, CKPT_SAVED_BEST);
    assert_int_equal(step_in("best.pth"), 11);

    /* prune keeps last.pth and best.pth */
    size_t removed = 99;
    assert_int_equal(ckpt_manager_prune(m, 1, 0, &removed, NULL), CKPT_OK);
    assert_int_equal(removed, 2);
    assert_string_equal(listing(), "best.pth last.pth manifest.json step-00000011.pth");
    ckpt_manager_close(m);
    check_manifest_matches_files();
}

static void test_mode_max_and_nan(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("acc", CKPT_MODE_MAX, 0, 1, 0);
    /* acc = 1 - val_loss */
    assert_true(save(m, 0, 0.5) & CKPT_SAVED_BEST);   /* 0.5 */
    assert_false(save(m, 1, 0.6) & CKPT_SAVED_BEST);  /* 0.4: worse, not written */
    assert_false(exists("step-00000001.pth"));
    assert_true(save(m, 2, 0.1) & CKPT_SAVED_BEST);   /* 0.9 */
    assert_false(save(m, 3, NAN) & CKPT_SAVED_BEST);  /* NaN never improves */
    assert_string_equal(listing(), "best.pth last.pth manifest.json step-00000002.pth");
    assert_int_equal(step_in("last.pth"), 3);
    ckpt_manager_close(m);
    /* the NaN metric survives the manifest */
    m = open_dir(NULL, CKPT_MODE_MIN, 0, 0, CKPT_MANAGER_READ_ONLY);
    ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
    assert_true(ckpt_manager_get(m, 0, &info));
    assert_string_equal(info.file, "last.pth");
    assert_true(isnan(info.metrics[0].value));
    ckpt_manager_close(m);
}

/* A refused save changes nothing: missing monitored metric, no weights. */
static void test_refusals_change_nothing(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 0, 0, 0);
    save(m, 0, 0.5);
    char before[2048];
    snprintf(before, sizeof(before), "%s", listing());
    ckpt_value *root;
    ckpt_tree *t = checkpoint(1, &root);
    ckpt_metric other = {"acc", 0.1};
    ckpt_error err;
    assert_int_equal(ckpt_manager_save(m, 1, root, &other, 1, NULL, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "val_loss"));
    ckpt_metric dup[2] = {{"val_loss", 0.1}, {"val_loss", 0.2}};
    assert_int_equal(ckpt_manager_save(m, 1, root, dup, 2, NULL, &err), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_manager_save(m, -1, root, dup, 1, NULL, &err), CKPT_ERR_INVALID_ARG);
    /* an improving save of a checkpoint without "model" (and not a state
     * dict) cannot make best.pth */
    ckpt_value *bare = ckpt_new_dict(t);
    ckpt_dict_put_str(t, bare, "epoch", ckpt_new_int(t, 3));
    ckpt_metric better = {"val_loss", 0.1};
    assert_int_equal(ckpt_manager_save(m, 1, bare, &better, 1, NULL, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "\"model\""));
    assert_string_equal(listing(), before);
    assert_int_equal(step_in("last.pth"), 0);
    ckpt_tree_free(t);
    ckpt_manager_close(m);
    check_manifest_matches_files();
}

/* ---- crashes --------------------------------------------------------------------------- */

static int g_stop_at, g_calls;

static void stop_here(const char *point)
{
    (void)point;
    if (++g_calls == g_stop_at)
        _exit(42);
}

/* A child saves step 2 (an improvement, with a numbered file) after steps
 * 0 and 1 and stops at the k-th protocol point; then the directory is
 * opened again. Whatever k, every file is whole, the manifest matches the
 * files, no temporary is left, and last/best hold step 1 or step 2. */
static void crash_at_every_point(unsigned keep_last)
{
    bool finished = false;
    for (int k = 1; !finished && k < 20; k++) {
        remove_tree(tmp_dir());
        assert_int_equal(mkdir(tmp_dir(), 0700), 0);
        ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, keep_last, 0, 0);
        save(m, 0, 0.9);
        save(m, 1, 0.5);
        ckpt_manager_close(m);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            g_stop_at = k;
            g_calls = 0;
            ckpt__manager_hook = stop_here;
            m = open_dir("val_loss", CKPT_MODE_MIN, keep_last, 0, 0);
            save(m, 2, 0.1);
            ckpt_manager_close(m);
            _exit(0);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        finished = WEXITSTATUS(status) == 0;
        if (!finished)
            assert_int_equal(WEXITSTATUS(status), 42);

        g_warnings[0] = 0;
        m = open_dir(NULL, CKPT_MODE_MIN, keep_last, 0, 0);
        const char *ls = listing();
        assert_null(strstr(ls, ".tmp-"));
        /* exactly the manifest's files: nothing orphaned, nothing missing */
        const char *names[9] = {"manifest.json"};
        size_t count = ckpt_manager_count(m);
        assert_true(count <= 8);
        for (size_t i = 0; i < count; i++) {
            ckpt_checkpoint_info ci = {.struct_size = sizeof(ci)};
            ckpt_manager_get(m, i, &ci);
            names[i + 1] = ci.file;
        }
        qsort(names, count + 1, sizeof(*names), cmp_cstr);
        char expect[1024] = "";
        for (size_t i = 0; i <= count; i++) {
            strcat(expect, i ? " " : "");
            strcat(expect, names[i]);
        }
        assert_string_equal(ls, expect);
        int64_t last = step_in("last.pth"), best = step_in("best.pth");
        assert_true(last == 1 || last == 2);
        assert_true(best == 1 || best == 2);
        /* best is renamed before last: a save that reached last reached best */
        assert_true(best >= last);
        /* the manifest says what the files hold */
        for (size_t i = 0; i < ckpt_manager_count(m); i++) {
            ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
            ckpt_manager_get(m, i, &info);
            assert_int_equal(info.step, step_in(info.file));
        }
        ckpt_file *f = NULL;
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        assert_int_equal(ckpt_manager_resume(m, NULL, &f, &info, NULL), CKPT_OK);
        assert_string_equal(info.file, "last.pth");
        assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_file_root(f), "step")), last);
        ckpt_close(f);
        /* and the next save goes on from there */
        save(m, 3, 0.05);
        ckpt_manager_close(m);
        check_manifest_matches_files();
        assert_int_equal(step_in("best.pth"), 3);
    }
    assert_true(finished);
}

/* keep_last 3: nothing removed; keep_last 1: every save removes a file, so
 * the crash between the committed manifest and the removal is hit too. */
static void test_crash_at_every_point(void **state)
{
    (void)state;
    crash_at_every_point(3);
    crash_at_every_point(1);
}

/* ---- resume, lock, manifest ---------------------------------------------------------------- */

static void replace_with(const char *name, const void *p, size_t n)
{
    char tmp[400];
    snprintf(tmp, sizeof(tmp), "%s.x", tmp_path(name));
    FILE *f = fopen(tmp, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
    assert_int_equal(rename(tmp, tmp_path(name)), 0);
}

static void test_resume_skips_torn(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 3, 0, 0);
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_manager_resume(m, NULL, &f, NULL, &err), CKPT_ERR_NOT_FOUND);
    for (int s = 0; s < 3; s++)
        save(m, s, 1.0 - s * 0.1);
    ckpt_manager_close(m);
    /* last.pth torn in half by someone else's writer, step 2 flipped */
    struct stat sb;
    assert_int_equal(stat(tmp_path("last.pth"), &sb), 0);
    uint8_t *half = calloc(1, (size_t)sb.st_size / 2);
    replace_with("last.pth", half, (size_t)sb.st_size / 2);
    free(half);
    FILE *fp = fopen(tmp_path("step-00000002.pth"), "r+b");
    assert_non_null(fp);
    fseek(fp, 200, SEEK_SET);
    int byte = fgetc(fp);
    fseek(fp, 200, SEEK_SET);
    fputc(0x5a ^ byte, fp);
    fclose(fp);

    g_warnings[0] = 0;
    m = open_dir(NULL, CKPT_MODE_MIN, 3, 0, 0);
    assert_non_null(strstr(g_warnings, "last.pth changed"));
    ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
    assert_int_equal(ckpt_manager_resume(m, NULL, &f, &info, &err), CKPT_OK);
    assert_string_equal(info.file, "step-00000001.pth");
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_file_root(f), "step")), 1);
    assert_non_null(strstr(g_warnings, "skipping"));
    ckpt_close(f);
    ckpt_manager_close(m);
}

static void test_lock(void **state)
{
    (void)state;
    ckpt_manager *a = open_dir(NULL, CKPT_MODE_MIN, 0, 0, 0);
    ckpt_manager *b = NULL;
    ckpt_error err;
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &b, &err), CKPT_ERR_BUSY);
    assert_null(b);
    assert_non_null(strstr(err.message, "locked by another process"));
    assert_non_null(strstr(err.message, tmp_dir()));
    /* a reader needs no lock */
    o.flags = CKPT_MANAGER_READ_ONLY;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &b, &err), CKPT_OK);
    ckpt_value *root;
    ckpt_tree *t = checkpoint(0, &root);
    assert_int_equal(ckpt_manager_save(b, 0, root, NULL, 0, NULL, &err), CKPT_ERR_INVALID_ARG);
    ckpt_tree_free(t);
    ckpt_manager_close(b);
    ckpt_manager_close(a);
    o.flags = 0;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &b, &err), CKPT_OK);
    ckpt_manager_close(b);
}

static void spit_path(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void spit(const char *name, const char *text) { spit_path(tmp_path(name), text); }

/* CKPT_MANAGER_EXISTING: a directory without a readable manifest is
 * refused before anything in it is created, locked or set aside. */
static void test_open_existing_only(void **state)
{
    (void)state;
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    o.flags = CKPT_MANAGER_EXISTING;
    ckpt_manager *m = NULL;
    ckpt_error err;
    /* files the manager did not write, no manifest */
    spit("epoch=3-step=100.ckpt", "x");
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_ERR_NOT_FOUND);
    assert_null(m);
    assert_non_null(strstr(err.message, "not a directory kept by the checkpoint manager"));
    assert_false(exists(CKPT__LOCK_NAME));
    assert_false(exists(CKPT__MANIFEST_NAME));
    o.flags |= CKPT_MANAGER_READ_ONLY;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_ERR_NOT_FOUND);
    o.flags = CKPT_MANAGER_EXISTING;

    /* a malformed manifest is neither rebuilt nor set aside */
    m = open_dir("val_loss", CKPT_MODE_MIN, 2, 0, 0);
    save(m, 4, 0.5);
    ckpt_manager_close(m);
    spit(CKPT__MANIFEST_NAME, "garbage");
    m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_ERR_FORMAT);
    assert_null(m);
    assert_non_null(strstr(err.message, "unreadable"));
    DIR *d = opendir(tmp_dir());
    assert_non_null(d);
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        assert_null(strstr(de->d_name, ".bad-"));
    closedir(d);
    assert_true(exists("step-00000004.pth"));

    /* a good one opens as without the flag */
    m = open_dir("val_loss", CKPT_MODE_MIN, 2, 0, 0); /* rebuilds it */
    ckpt_manager_close(m);
    m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_OK);
    assert_int_equal(ckpt_manager_count(m), 3);
    ckpt_manager_close(m);
}

static void test_manifest_rebuilt(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 2, 0, 0);
    save(m, 4, 0.5);
    save(m, 5, 0.7);
    ckpt_manager_close(m);
    static const char *bad[] = {
        "{",
        "[]",
        "{\"format\": \"ckpt-manifest\", \"version\": 1, \"checkpoints\": [{\"file\": "
        "\"../etc/passwd\", \"step\": 1, \"size\": 1, \"crc32\": \"00000000\", \"metrics\": {}, "
        "\"content\": \"weights\"}]}",
        "{\"format\": \"ckpt-manifest\", \"version\": 1, \"version\": 1}",
        "{\"format\": \"ckpt-manifest\", \"version\": 1, \"checkpoints\": [{\"file\": "
        "\"last.pth\", \"step\": 1, \"size\": -5, \"crc32\": \"00000000\", \"metrics\": {}, "
        "\"content\": \"weights\"}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        spit(CKPT__MANIFEST_NAME, bad[i]);
        g_warnings[0] = 0;
        m = open_dir("val_loss", CKPT_MODE_MIN, 2, 0, 0);
        assert_non_null(strstr(g_warnings, "unreadable"));
        assert_non_null(strstr(g_warnings, "kept as manifest.json.bad-"));
        /* adopted from the files: numbered steps from their names */
        assert_int_equal(ckpt_manager_count(m), 4);
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        assert_true(ckpt_manager_get(m, 0, &info));
        assert_string_equal(info.file, "last.pth");
        assert_int_equal(info.step, -1);
        assert_true(ckpt_manager_get(m, 3, &info));
        assert_string_equal(info.file, "step-00000005.pth");
        assert_int_equal(info.step, 5);
        ckpt_manager_close(m);
        check_manifest_matches_files();
    }
    /* the rebuilt manifest knows no metric for best.pth, and says so */
    assert_non_null(strstr(g_warnings, "best.pth has no recorded val_loss"));

    /* a newer version's manifest is not ours to rewrite */
    spit(CKPT__MANIFEST_NAME, "{\"format\": \"ckpt-manifest\", \"version\": 2}");
    ckpt_manager_options vo;
    ckpt_manager_options_default(&vo);
    ckpt_error verr;
    m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &vo, &m, &verr), CKPT_ERR_UNSUPPORTED);
    assert_non_null(strstr(verr.message, "version 2"));
    spit(CKPT__MANIFEST_NAME, "{");
    m = open_dir("val_loss", CKPT_MODE_MIN, 2, 0, 0);
    ckpt_manager_close(m);

    /* over max_manifest_bytes: an error, and the manifest stays as it is */
    char before[8192];
    FILE *fp = fopen(tmp_path(CKPT__MANIFEST_NAME), "rb");
    assert_non_null(fp);
    size_t n = fread(before, 1, sizeof(before), fp);
    fclose(fp);
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    assert_int_equal(o.max_manifest_bytes, 16u << 20);
    o.max_manifest_bytes = 100;
    ckpt_error err;
    m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_ERR_LIMIT);
    assert_null(m);
    assert_non_null(strstr(err.message, "max_manifest_bytes"));
    char after[8192];
    fp = fopen(tmp_path(CKPT__MANIFEST_NAME), "rb");
    assert_non_null(fp);
    assert_int_equal(fread(after, 1, sizeof(after), fp), n);
    fclose(fp);
    assert_memory_equal(before, after, n);
}

/* A pending entry whose file was never renamed is dropped; one whose file
 * was renamed is committed; "removing" files are removed. */
static void test_settle_by_hand(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 3, 0, 0);
    save(m, 0, 0.5);
    ckpt_manager_close(m);
    ckpt__manifest mf;
    assert_int_equal(read_manifest(&mf, NULL), CKPT_OK);
    /* a pending last.pth of another size (never renamed), a pending copy of
     * step-0 under step 7's name that was renamed, a removal of step 0 */
    ckpt__mentry *last = ckpt__mlist_find(&mf.committed, "last.pth");
    ckpt__mentry e;
    assert_true(ckpt__mentry_copy(&e, last));
    e.size += 1;
    e.step = 9;
    assert_true(ckpt__mlist_push(&mf.pending, &e));
    assert_true(ckpt__mentry_copy(&e, last));
    free(e.file);
    e.file = strdup("step-00000007.pth");
    e.step = 7;
    assert_true(ckpt__mlist_push(&mf.pending, &e));
    assert_int_equal(link(tmp_path("last.pth"), tmp_path("step-00000007.pth")), 0);
    mf.removing = calloc(1, sizeof(char *));
    mf.removing[0] = strdup("step-00000000.pth");
    mf.removing_count = 1;
    ckpt__mlist_remove(&mf.committed, (size_t)(ckpt__mlist_find(&mf.committed,
                                                                "step-00000000.pth") -
                                               mf.committed.items));
    char *text = ckpt__manifest_text(&mf, NULL, NULL);
    spit(CKPT__MANIFEST_NAME, text);
    free(text);
    ckpt__manifest_free(&mf);
    spit(".last.pth.tmp-1-abc", "partial");
    spit(".other.tmp-1-abc", "not ours");

    /* read-only: settled in memory only */
    m = open_dir(NULL, CKPT_MODE_MIN, 3, 0, CKPT_MANAGER_READ_ONLY);
    assert_int_equal(ckpt_manager_count(m), 3);
    assert_true(exists(".last.pth.tmp-1-abc"));
    ckpt_manager_close(m);

    m = open_dir(NULL, CKPT_MODE_MIN, 3, 0, 0);
    assert_string_equal(listing(), ".other.tmp-1-abc best.pth last.pth manifest.json "
                                   "step-00000007.pth");
    ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
    assert_true(ckpt_manager_get(m, 0, &info));
    assert_string_equal(info.file, "last.pth");
    assert_int_equal(info.step, 0);
    assert_true(ckpt_manager_get(m, 2, &info));
    assert_string_equal(info.file, "step-00000007.pth");
    assert_int_equal(info.step, 7);
    ckpt_manager_close(m);
    check_manifest_matches_files();
}

static void test_manifest_text_round_trip(void **state)
{
    (void)state;
    ckpt__manifest mf;
    memset(&mf, 0, sizeof(mf));
    mf.monitor = strdup("val \"loss\"\n");
    mf.mode = CKPT_MODE_MAX;
    ckpt__mentry e;
    memset(&e, 0, sizeof(e));
    e.file = strdup("best.pth");
    e.step = 12;
    e.size = 1234;
    e.crc = 0xdeadbeef;
    e.time = 1795000000;
    e.format_version = 3;
    e.ckpt_version = strdup("0.1.0");
    e.torch_version = strdup("1.13.1");
    e.user_json = strdup("{\"run\":\"a\",\"n\":[1,2]}");
    e.weights_only = true;
    e.metric_count = 3;
    e.metrics = calloc(3, sizeof(*e.metrics));
    e.metrics[0].name = strdup("val_loss");
    e.metrics[0].value = 0.1;
    e.metrics[1].name = strdup("x");
    e.metrics[1].value = -INFINITY;
    e.metrics[2].name = strdup("y");
    e.metrics[2].value = NAN;
    assert_true(ckpt__mlist_push(&mf.committed, &e));
    bool yes = true, no = false;
    char *text = ckpt__manifest_text(&mf, &no, &yes);
    assert_non_null(strstr(text, "\"val_loss\": 0.1,"));
    assert_non_null(strstr(text, "\"x\": \"-Infinity\""));
    assert_non_null(strstr(text, "\"crc32\": \"deadbeef\""));
    assert_non_null(strstr(text, "\"monitor\": \"val \\\"loss\\\"\\u000a\""));
    spit(CKPT__MANIFEST_NAME, text);
    free(text);
    ckpt__manifest back;
    assert_int_equal(read_manifest(&back, NULL), CKPT_OK);
    assert_string_equal(back.monitor, mf.monitor);
    assert_int_equal(back.mode, CKPT_MODE_MAX);
    assert_int_equal(back.committed.count, 1);
    const ckpt__mentry *b = &back.committed.items[0];
    assert_string_equal(b->file, "best.pth");
    assert_int_equal(b->step, 12);
    assert_int_equal(b->size, 1234);
    assert_int_equal(b->crc, 0xdeadbeef);
    assert_int_equal(b->time, 1795000000);
    assert_string_equal(b->torch_version, "1.13.1");
    assert_string_equal(b->user_json, "{\"run\":\"a\",\"n\":[1,2]}");
    assert_true(b->weights_only);
    assert_true(b->metrics[0].value == 0.1);
    assert_true(isinf(b->metrics[1].value) && b->metrics[1].value < 0);
    assert_true(isnan(b->metrics[2].value));
    ckpt__manifest_free(&back);
    ckpt__manifest_free(&mf);
}

static void test_numbered_names(void **state)
{
    (void)state;
    char name[64];
    assert_true(ckpt__numbered_name(12, name, sizeof(name)));
    assert_string_equal(name, "step-00000012.pth");
    assert_int_equal(ckpt__numbered_step(name), 12);
    assert_true(ckpt__numbered_name(123456789012, name, sizeof(name)));
    assert_int_equal(ckpt__numbered_step(name), 123456789012);
    assert_int_equal(ckpt__numbered_step("step-12.pth"), -1);
    assert_int_equal(ckpt__numbered_step("step-000000012.pth"), -1);
    assert_int_equal(ckpt__numbered_step("step-00000012.pth.bak"), -1);
    assert_int_equal(ckpt__numbered_step("step-99999999999999999999999.pth"), -1);
    assert_false(ckpt__numbered_name(-1, name, sizeof(name)));
}

/* A rename that fails half-way (a directory where the numbered file goes):
 * the error is reported, what was renamed is recorded, and the next save
 * finds a consistent manager. */
static void test_failed_rename_midway(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 3, 0, 0);
    save(m, 0, 0.5);
    assert_int_equal(mkdir(tmp_path("step-00000001.pth"), 0700), 0);
    ckpt_value *root;
    ckpt_tree *t = checkpoint(1, &root);
    ckpt_metric better = {"val_loss", 0.1};
    unsigned saved = 99;
    ckpt_error err;
    assert_int_not_equal(ckpt_manager_save(m, 1, root, &better, 1, &saved, &err), CKPT_OK);
    assert_int_equal(saved, 0);
    assert_non_null(strstr(err.message, "step-00000001.pth"));
    ckpt_tree_free(t);
    /* best.pth went in before the failure, last.pth did not */
    assert_int_equal(step_in("best.pth"), 1);
    assert_int_equal(step_in("last.pth"), 0);
    assert_int_equal(rmdir(tmp_path("step-00000001.pth")), 0);
    assert_null(strstr(listing(), ".tmp-"));
    check_manifest_matches_files();
    for (size_t i = 0; i < ckpt_manager_count(m); i++) {
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        ckpt_manager_get(m, i, &info);
        assert_int_equal(info.step, step_in(info.file));
    }
    save(m, 2, 0.3);
    assert_int_equal(ckpt_manager_count(m), 4); /* last, best, step 0, step 2 */
    ckpt_manager_close(m);
    check_manifest_matches_files();
    m = open_dir(NULL, CKPT_MODE_MIN, 3, 0, 0);
    assert_int_equal(ckpt_manager_count(m), 4);
    ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
    ckpt_manager_get(m, 1, &info);
    assert_string_equal(info.file, "best.pth");
    assert_int_equal(info.step, 1);
    ckpt_manager_close(m);
}

/* Opening a manager over DIR/.ckpt.lock, made by the caller to point at
 * other (a symbolic or hard link), fails naming the lock and leaves other's
 * text as it was. */
static void lock_refused_and_target_kept(const char *other, const char *text, const char *why)
{
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    ckpt_manager *m = NULL;
    ckpt_error err;
    assert_int_not_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_OK);
    assert_null(m);
    assert_non_null(strstr(err.message, why));
    FILE *fp = fopen(other, "rb");
    assert_non_null(fp);
    char line[64] = "";
    assert_non_null(fgets(line, sizeof(line), fp));
    fclose(fp);
    assert_string_equal(line, text);
}

/* Links and special files in the directory are never followed into
 * writes or endless reads. */
static void test_hostile_directory(void **state)
{
    (void)state;
    /* a linked lock file: refused, its target untouched */
    char victim[300];
    snprintf(victim, sizeof(victim), "%s.victim", tmp_dir());
    spit_path(victim, "precious");
    assert_int_equal(symlink(victim, tmp_path(CKPT__LOCK_NAME)), 0);
    lock_refused_and_target_kept(victim, "precious", CKPT__LOCK_NAME);
    unlink(victim);
    unlink(tmp_path(CKPT__LOCK_NAME));

    /* a FIFO as the manifest: listed from the files at once, then replaced */
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    ckpt_manager *m;
    ckpt_error err;
    m = open_dir("val_loss", CKPT_MODE_MIN, 0, 0, 0);
    save(m, 0, 0.5);
    ckpt_manager_close(m);
    unlink(tmp_path(CKPT__MANIFEST_NAME));
    assert_int_equal(mkfifo(tmp_path(CKPT__MANIFEST_NAME), 0600), 0);
    g_warnings[0] = 0;
    m = open_dir(NULL, CKPT_MODE_MIN, 0, 0, CKPT_MANAGER_READ_ONLY);
    assert_non_null(strstr(g_warnings, "unreadable"));
    assert_int_equal(ckpt_manager_count(m), 2);
    ckpt_manager_close(m);
    /* a writer does not replace what it did not make */
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, &err), CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "not a regular file"));
    unlink(tmp_path(CKPT__MANIFEST_NAME));
    m = open_dir(NULL, CKPT_MODE_MIN, 0, 0, 0);
    assert_int_equal(ckpt_manager_count(m), 2);
    ckpt_manager_close(m);
    struct stat sb;
    assert_int_equal(stat(tmp_path(CKPT__MANIFEST_NAME), &sb), 0);
    assert_true(S_ISREG(sb.st_mode));

    /* a pending entry over a device, a numbered name linked to one: the
     * device is never read (it would never end) */
    spit(CKPT__MANIFEST_NAME,
         "{\"format\": \"ckpt-manifest\", \"version\": 1, \"checkpoints\": [], \"pending\": "
         "[{\"file\": \"step-00000009.pth\", \"step\": 9, \"size\": 0, \"crc32\": \"00000000\", "
         "\"metrics\": {}, \"content\": \"checkpoint\"}]}");
    assert_int_equal(symlink("/dev/zero", tmp_path("step-00000009.pth")), 0);
    g_warnings[0] = 0;
    m = open_dir(NULL, CKPT_MODE_MIN, 0, 0, CKPT_MANAGER_READ_ONLY);
    for (size_t i = 0; i < ckpt_manager_count(m); i++) {
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        ckpt_manager_get(m, i, &info);
        assert_string_not_equal(info.file, "step-00000009.pth");
    }
    ckpt_manager_close(m);
    unlink(tmp_path("step-00000009.pth"));
}

/* A long manifest is read in n log n: 100,000 entries whose files are all
 * gone (each then dropped), listed read-only. */
static void test_long_manifest(void **state)
{
    (void)state;
    size_t n = 100000;
    FILE *fp = fopen(tmp_path(CKPT__MANIFEST_NAME), "wb");
    assert_non_null(fp);
    fputs("{\"format\": \"ckpt-manifest\", \"version\": 1, \"checkpoints\": [", fp);
    for (size_t i = 0; i < n; i++)
        fprintf(fp, "%s{\"file\": \"step-%08zu.pth\", \"step\": %zu, \"size\": 1, "
                    "\"crc32\": \"00000000\", \"metrics\": {\"m%zu\": 1}, \"content\": "
                    "\"checkpoint\"}",
                i ? ", " : "", i, i, i);
    fputs("], \"removing\": [", fp);
    for (size_t i = 0; i < n; i++)
        fprintf(fp, "%s\"step-%08zu.pth\"", i ? ", " : "", i + n);
    fputs("]}", fp);
    fclose(fp);
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    o.flags = CKPT_MANAGER_READ_ONLY;
    o.max_manifest_bytes = (uint64_t)64 << 20;
    ckpt_manager *m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_dir(), &o, &m, NULL), CKPT_OK);
    assert_int_equal(ckpt_manager_count(m), 0);
    ckpt_manager_close(m);
    /* one entry per file: a duplicate far down the list is found */
    fp = fopen(tmp_path(CKPT__MANIFEST_NAME), "r+b");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long end = ftell(fp);
    fclose(fp);
    assert_true(end > 0);
    ckpt__manifest mf;
    char *text = malloc((size_t)end + 1);
    fp = fopen(tmp_path(CKPT__MANIFEST_NAME), "rb");
    assert_int_equal(fread(text, 1, (size_t)end, fp), (size_t)end);
    fclose(fp);
    text[end] = 0;
    char *last = strstr(text, "step-00099999.pth");
    memcpy(last, "step-00000007.pth", 17);
    ckpt_error err;
    assert_int_equal(ckpt__manifest_parse(text, (size_t)end, UINT64_MAX, &mf, &err),
                     CKPT_ERR_FORMAT);
    assert_non_null(strstr(err.message, "two entries for step-00000007.pth"));
    free(text);
}

/* A manifest write that fails leaves names listed for removal; a later
 * save of one of those steps must keep its new file. */
static void test_resave_after_failed_manifest(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 5, 0, 0);
    save(m, 1, 0.5);
    save(m, 2, 0.4);
    /* the next manifest cannot be renamed into place */
    assert_int_equal(unlink(tmp_path(CKPT__MANIFEST_NAME)), 0);
    assert_int_equal(mkdir(tmp_path(CKPT__MANIFEST_NAME), 0700), 0);
    spit("manifest.json/x", "x");
    size_t removed = 0;
    assert_int_not_equal(ckpt_manager_prune(m, 1, 0, &removed, NULL), CKPT_OK);
    assert_true(exists("step-00000001.pth"));
    unlink(tmp_path("manifest.json/x"));
    assert_int_equal(rmdir(tmp_path(CKPT__MANIFEST_NAME)), 0);
    save(m, 1, 0.3);
    assert_true(exists("step-00000001.pth"));
    assert_int_equal(step_in("step-00000001.pth"), 1);
    ckpt_manager_close(m);
    check_manifest_matches_files();
    m = open_dir(NULL, CKPT_MODE_MIN, 5, 0, 0);
    bool listed = false;
    for (size_t i = 0; i < ckpt_manager_count(m); i++) {
        ckpt_checkpoint_info info = {.struct_size = sizeof(info)};
        ckpt_manager_get(m, i, &info);
        listed |= strcmp(info.file, "step-00000001.pth") == 0;
    }
    assert_true(listed);
    ckpt_manager_close(m);
}

/* Numbered files whose metric the manager does not know (adopted) are
 * never removed by a save's retention; an explicit prune removes them. */
static void test_adopted_survive_retention(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 0, 1, 0);
    save(m, 1, 0.5);
    ckpt_manager_close(m);
    /* a numbered file from elsewhere: same layout, unknown metric */
    assert_int_equal(link(tmp_path("step-00000001.pth"), tmp_path("step-00000000.pth")), 0);
    m = open_dir("val_loss", CKPT_MODE_MIN, 0, 1, 0);
    save(m, 2, 0.2);
    save(m, 3, 0.1);
    assert_true(exists("step-00000000.pth"));
    assert_false(exists("step-00000001.pth"));
    assert_false(exists("step-00000002.pth"));
    assert_true(exists("step-00000003.pth"));
    bool keep[8];
    assert_int_equal(ckpt_manager_count(m), 4);
    assert_int_equal(ckpt_manager_plan_prune(m, 0, 1, keep, NULL), CKPT_OK);
    assert_false(keep[2]); /* step 0: ranks last, an explicit prune drops it */
    assert_true(keep[3]);
    size_t removed = 0;
    assert_int_equal(ckpt_manager_prune(m, 0, 1, &removed, NULL), CKPT_OK);
    assert_int_equal(removed, 1);
    assert_false(exists("step-00000000.pth"));
    ckpt_manager_close(m);
}

/* A lock file that is a hard link to someone's file is not truncated. */
static void test_lock_hard_link(void **state)
{
    (void)state;
    char other[300];
    snprintf(other, sizeof(other), "%s/notes.txt", tmp_dir());
    spit_path(other, "keep me");
    assert_int_equal(link(other, tmp_path(CKPT__LOCK_NAME)), 0);
    lock_refused_and_target_kept(other, "keep me", "link");
}

/* ---- saves in the background -------------------------------------------------- */

/* A tree with what snapshots must keep: a storage two views share, a list,
 * text, bytes, an ordered dict, numbers; over caller memory. */
static float g_big[64];

static ckpt_tree *rich_checkpoint(int64_t step, ckpt_value **root)
{
    ckpt_tree *t = checkpoint(step, root);
    for (int i = 0; i < 64; i++)
        g_big[i] = (float)(step * 100 + i);
    static const int64_t shape[2] = {8, 8}, row[1] = {8}, col_stride[1] = {8};
    ckpt_tensor_desc d;
    ckpt_tensor_desc_init(&d);
    d.ndim = 2;
    d.shape = shape;
    d.data = g_big;
    ckpt_value *big = ckpt_new_tensor(t, &d);
    ckpt_tensor_desc v;
    ckpt_tensor_desc_init(&v);
    v.ndim = 1;
    v.shape = row;
    v.stride = col_stride;
    v.storage_offset = 3;
    ckpt_value *column = ckpt_new_view(t, big, &v);
    ckpt_value *list = ckpt_new_list(t);
    ckpt_append(t, list, big);
    ckpt_append(t, list, column);
    ckpt_append(t, list, ckpt_new_str(t, "text", SIZE_MAX));
    ckpt_append(t, list, ckpt_new_bytes(t, "\0\1\2", 3));
    ckpt_append(t, list, ckpt_new_float(t, 0.25));
    ckpt_append(t, list, ckpt_new_none(t));
    ckpt_dict_put_str(t, *root, "extra", list);
    ckpt_dict_put_str(t, *root, "again", big); /* the same tensor twice */
    assert_int_equal(ckpt_tree_status(t, NULL), CKPT_OK);
    return t;
}

static uint8_t *file_in(const char *sub, const char *name, size_t *size)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "%s/%s", sub, name);
    return read_file(tmp_path(rel), size);
}

static ckpt_manager *open_sub(const char *sub)
{
    ckpt_manager_options o;
    ckpt_manager_options_default(&o);
    o.monitor = "val_loss";
    o.keep_last = 2;
    o.save_flags = CKPT_SAVE_NO_FSYNC;
    ckpt_manager *m = NULL;
    assert_int_equal(ckpt_manager_open(tmp_path(sub), &o, &m, NULL), CKPT_OK);
    return m;
}

/* An async save writes the bytes a blocking save writes, although the
 * caller refills its tensors and frees its tree as soon as it returns. */
static void test_async_same_bytes(void **state)
{
    (void)state;
    ckpt_manager *a = open_sub("blocking"), *b = open_sub("async");
    ckpt_metric metric = {"val_loss", 0.5};
    for (int64_t step = 0; step < 3; step++) {
        ckpt_value *root;
        ckpt_tree *t = rich_checkpoint(step, &root);
        unsigned saved_a = 0, saved_b = 0;
        assert_int_equal(ckpt_manager_save(a, step, root, &metric, 1, &saved_a, NULL), CKPT_OK);
        ckpt_error err;
        assert_int_equal(ckpt_manager_save_async(b, step, root, &metric, 1, 0, &err), CKPT_OK);
        ckpt_tree_free(t);
        memset(g_big, 0xff, sizeof(g_big));
        memset(g_w, 0xff, sizeof(g_w));
        assert_int_equal(ckpt_manager_wait(b, &saved_b, &err), CKPT_OK);
        assert_int_equal(saved_a, saved_b);
        metric.value -= 0.1;
    }
    static const char *const names[] = {"last.pth", "best.pth", "step-00000001.pth",
                                        "step-00000002.pth"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        size_t na = 0, nb = 0;
        uint8_t *fa = file_in("blocking", names[i], &na);
        uint8_t *fb = file_in("async", names[i], &nb);
        assert_non_null(fa);
        assert_non_null(fb);
        assert_int_equal(na, nb);
        assert_memory_equal(fa, fb, na);
        free(fa);
        free(fb);
    }
    assert_null(file_in("async", "step-00000000.pth", &(size_t){0})); /* retention */
    assert_int_equal(ckpt_manager_count(a), ckpt_manager_count(b));
    ckpt_manager_close(a);
    ckpt_manager_close(b);
}

/* Holds the background save at its first staged file until released. */
static atomic_int g_gate; /* 1: hold, 0: go */
static atomic_int g_held;

static void gate_hook(const char *point)
{
    if (strcmp(point, "staged") != 0)
        return;
    atomic_store(&g_held, 1);
    while (atomic_load(&g_gate))
        usleep(1000);
}

static ckpt_status save_async(ckpt_manager *m, int64_t step, double val_loss, unsigned flags,
                              ckpt_error *err)
{
    ckpt_value *root;
    ckpt_tree *t = checkpoint(step, &root);
    ckpt_metric metrics[2] = {{"val_loss", val_loss}, {"acc", 1.0 - val_loss}};
    ckpt_status st = ckpt_manager_save_async(m, step, root, metrics, 2, flags, err);
    ckpt_tree_free(t);
    return st;
}

/* One save in flight: the next fails with CKPT_ERR_BUSY when asked not to
 * wait, and waits otherwise; a background failure is reported once, by
 * ckpt_manager_wait or by the next save (which then starts nothing). */
static void test_async_busy_and_failures(void **state)
{
    (void)state;
    ckpt_manager *m = open_dir("val_loss", CKPT_MODE_MIN, 3, 0, 0);
    ckpt_error err;
    atomic_store(&g_gate, 1);
    atomic_store(&g_held, 0);
    ckpt__manager_hook = gate_hook;
    assert_int_equal(save_async(m, 0, 0.5, 0, &err), CKPT_OK);
    while (!atomic_load(&g_held))
        usleep(1000);
    assert_int_equal(save_async(m, 1, 0.4, CKPT_ASYNC_NO_WAIT, &err), CKPT_ERR_BUSY);
    assert_non_null(strstr(err.message, "step 0 is still being written"));
    atomic_store(&g_gate, 0);
    unsigned saved = 0;
    assert_int_equal(ckpt_manager_wait(m, &saved, &err), CKPT_OK);
    ckpt__manager_hook = NULL;
    assert_int_equal(saved, CKPT_SAVED_LAST | CKPT_SAVED_BEST | CKPT_SAVED_NUMBERED);
    assert_int_equal(step_in("last.pth"), 0);
    /* a call made with nothing in flight does not wait, and has nothing to report */
    assert_int_equal(ckpt_manager_wait(m, NULL, &err), CKPT_OK);

    /* a failure in the background (a directory where the numbered file goes) */
    assert_int_equal(mkdir(tmp_path("step-00000001.pth"), 0700), 0);
    assert_int_equal(save_async(m, 1, 0.6, 0, &err), CKPT_OK);
    assert_int_not_equal(ckpt_manager_wait(m, &saved, &err), CKPT_OK);
    assert_int_equal(saved, 0);
    assert_non_null(strstr(err.message, "the save of step 1 in the background failed: "));
    assert_non_null(strstr(err.message, "step-00000001.pth"));
    assert_int_equal(ckpt_manager_wait(m, NULL, &err), CKPT_OK); /* reported once */
    assert_int_equal(step_in("last.pth"), 0);

    /* ... reported by the next save, which starts nothing */
    assert_int_equal(save_async(m, 1, 0.6, 0, &err), CKPT_OK);
    assert_int_not_equal(save_async(m, 2, 0.6, 0, &err), CKPT_OK);
    assert_non_null(strstr(err.message, "the save of step 1 in the background failed: "));
    assert_int_equal(rmdir(tmp_path("step-00000001.pth")), 0);
    assert_int_equal(ckpt_manager_wait(m, NULL, &err), CKPT_OK);
    assert_int_equal(step_in("last.pth"), 0);
    assert_false(exists("step-00000002.pth"));
    /* and by a blocking save too */
    assert_int_equal(mkdir(tmp_path("step-00000002.pth"), 0700), 0);
    assert_int_equal(save_async(m, 2, 0.6, 0, &err), CKPT_OK);
    {
        ckpt_value *r3;
        ckpt_tree *t3 = checkpoint(3, &r3);
        ckpt_metric m3 = {"val_loss", 0.6};
        assert_int_not_equal(ckpt_manager_save(m, 3, r3, &m3, 1, NULL, &err), CKPT_OK);
        assert_non_null(strstr(err.message, "the save of step 2 in the background failed: "));
        ckpt_tree_free(t3);
    }
    assert_int_equal(rmdir(tmp_path("step-00000002.pth")), 0);
    assert_int_equal(save(m, 3, 0.6), CKPT_SAVED_LAST | CKPT_SAVED_NUMBERED);
    assert_int_equal(step_in("last.pth"), 3);
    assert_null(strstr(listing(), ".tmp-"));
    check_manifest_matches_files();

    /* refusals come at once: the monitored metric missing, a bad step */
    ckpt_value *root;
    ckpt_tree *t = checkpoint(4, &root);
    ckpt_metric other = {"acc", 1.0};
    assert_int_equal(ckpt_manager_save_async(m, 4, root, &other, 1, 0, &err),
                     CKPT_ERR_INVALID_ARG);
    assert_non_null(strstr(err.message, "val_loss"));
    assert_int_equal(ckpt_manager_save_async(m, -1, root, &other, 1, 0, &err),
                     CKPT_ERR_INVALID_ARG);
    ckpt_tree_free(t);

    /* close waits for the save in flight */
    assert_int_equal(save_async(m, 4, 0.1, 0, &err), CKPT_OK);
    ckpt_manager_close(m);
    assert_int_equal(step_in("last.pth"), 4);
    assert_int_equal(step_in("best.pth"), 4);
    check_manifest_matches_files();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_best_last_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mode_max_and_nan, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_at_every_point, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_skips_torn, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_rebuilt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_existing_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_settle_by_hand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_manifest_text_round_trip, setup, teardown),
        cmocka_unit_test(test_numbered_names),
        cmocka_unit_test_setup_teardown(test_failed_rename_midway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_directory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_manifest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resave_after_failed_manifest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adopted_survive_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_hard_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_same_bytes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_busy_and_failures, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
