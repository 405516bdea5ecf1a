/*
 * test_cold.c - reading files that are not in the page cache.
 *
 * A file's pages are dropped from the cache (posix_fadvise DONTNEED of a
 * clean file: no root needed) and mincore tells which are back after a
 * call. Opening and scanning read metadata only, never the tensor bytes
 * around the local headers; copies (pread into the destination) give the
 * tensors' values, views at an offset into their storage included. Where
 * the cache cannot be emptied (a filesystem that keeps the pages) the
 * cases are skipped.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "support.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TENSORS 8
#define ELEMS ((size_t)1 << 20) /* 4 MiB of float32 each: 32 MiB in all */

static float *g_data[TENSORS];

static float value_at(int t, size_t i) { return (float)t * 1000.0f + (float)(i % 977); }

static int setup(void **state)
{
    (void)state;
    tmp_dir_make("ckpt-test-cold-");
    ckpt_tree *tree = ckpt_tree_new();
    ckpt_value *root = ckpt_new_ordered_dict(tree);
    static const int64_t shape[1] = {(int64_t)ELEMS}, half[1] = {(int64_t)ELEMS / 2};
    for (int t = 0; t < TENSORS; t++) {
        g_data[t] = malloc(ELEMS * sizeof(float));
        assert_non_null(g_data[t]);
        for (size_t i = 0; i < ELEMS; i++)
            g_data[t][i] = value_at(t, i);
        ckpt_tensor_desc d;
        ckpt_tensor_desc_init(&d);
        d.ndim = 1;
        d.shape = shape;
        d.data = g_data[t];
        char name[32];
        snprintf(name, sizeof(name), "layer%d.weight", t);
        ckpt_value *v = ckpt_new_tensor(tree, &d);
        ckpt_dict_put_str(tree, root, name, v);
        if (t == 3) { /* the second half of layer3's storage, a view of it */
            ckpt_tensor_desc h;
            ckpt_tensor_desc_init(&h);
            h.ndim = 1;
            h.shape = half;
            h.storage_offset = (int64_t)ELEMS / 2;
            ckpt_dict_put_str(tree, root, "layer3.tail", ckpt_new_view(tree, v, &h));
        }
    }
    assert_int_equal(ckpt_tree_status(tree, NULL), CKPT_OK);
    assert_int_equal(ckpt_save_torch(tmp_path("cold.pth"), root, NULL, NULL), CKPT_OK);
    assert_int_equal(ckpt_save_safetensors(tmp_path("cold.safetensors"), root, NULL, NULL),
                     CKPT_OK);
    ckpt_tree_free(tree);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int t = 0; t < TENSORS; t++)
        free(g_data[t]);
    remove_tree(tmp_dir());
    return 0;
}

/* Pages of path in the page cache. */
static size_t resident_pages(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    assert_true(m != MAP_FAILED);
    long ps = sysconf(_SC_PAGESIZE);
    size_t pages = ((size_t)sb.st_size + (size_t)ps - 1) / (size_t)ps;
    unsigned char *vec = malloc(pages);
    assert_non_null(vec);
    assert_int_equal(mincore(m, (size_t)sb.st_size, vec), 0);
    size_t n = 0;
    for (size_t i = 0; i < pages; i++)
        n += vec[i] & 1;
    free(vec);
    munmap(m, (size_t)sb.st_size);
    close(fd);
    return n;
}

/* Drops the file's pages from the cache; false when they stay. */
static bool make_cold(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    fdatasync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
    return resident_pages(path) < 16;
}

#define MIB_PAGES(n) ((size_t)(n) * (1u << 20) / (size_t)sysconf(_SC_PAGESIZE))

static void test_open_reads_metadata_only(void **state)
{
    (void)state;
    static const char *const files[] = {"cold.pth", "cold.safetensors"};
    for (size_t k = 0; k < 2; k++) {
        const char *path = tmp_path(files[k]);
        if (!make_cold(path))
            skip();
        ckpt_file *f = NULL;
        assert_int_equal(ckpt_open(path, NULL, &f, NULL), CKPT_OK);
        assert_int_equal(ckpt_file_tensor_count(f), TENSORS + 1);
        /* the pickle or header, the central directory and a page per
         * local header: far below one tensor's 4 MiB */
        size_t pages = resident_pages(path);
        if (pages >= MIB_PAGES(1))
            fail_msg("%s: opening brought %zu pages into the cache", files[k], pages);
        ckpt_close(f);
    }
}

static void test_scan_reads_metadata_only(void **state)
{
    (void)state;
    const char *path = tmp_path("cold.pth");
    if (!make_cold(path))
        skip();
    ckpt_scan *scan = NULL;
    assert_int_equal(ckpt_scan_file(path, NULL, &scan, NULL), CKPT_OK);
    ckpt_scan_free(scan);
    size_t pages = resident_pages(path);
    if (pages >= MIB_PAGES(1))
        fail_msg("scanning brought %zu pages into the cache", pages);
}

/* Copies from a cold file (pread into the destination) give the values,
 * a view at an offset into its storage too; so do verify and a model load. */
static void test_cold_copies(void **state)
{
    (void)state;
    static const char *const files[] = {"cold.pth", "cold.safetensors"};
    float *vals = malloc(ELEMS * sizeof(float));
    assert_non_null(vals);
    for (size_t k = 0; k < 2; k++) {
        const char *path = tmp_path(files[k]);
        if (!make_cold(path))
            skip();
        ckpt_file *f = NULL;
        assert_int_equal(ckpt_open(path, NULL, &f, NULL), CKPT_OK);
        for (int t = 0; t < TENSORS; t++) {
            char name[32];
            snprintf(name, sizeof(name), "layer%d.weight", t);
            const ckpt_tensor *x = ckpt_file_find_tensor(f, name);
            assert_non_null(x);
            memset(vals, 0, ELEMS * sizeof(float));
            assert_int_equal(ckpt_tensor_copy(f, x, vals, ELEMS * sizeof(float), NULL), CKPT_OK);
            assert_memory_equal(vals, g_data[t], ELEMS * sizeof(float));
        }
        const ckpt_tensor *tail = ckpt_file_find_tensor(f, "layer3.tail");
        assert_non_null(tail);
        memset(vals, 0, ELEMS * sizeof(float));
        assert_int_equal(ckpt_tensor_copy(f, tail, vals, ELEMS / 2 * sizeof(float), NULL),
                         CKPT_OK);
        assert_memory_equal(vals, g_data[3] + ELEMS / 2, ELEMS / 2 * sizeof(float));
        ckpt_close(f);

        assert_true(make_cold(path));
        assert_int_equal(ckpt_open(path, NULL, &f, NULL), CKPT_OK);
        assert_int_equal(ckpt_file_verify(f, NULL), CKPT_OK);
        ckpt_close(f);

        assert_true(make_cold(path));
        ckpt_model *m = ckpt_model_new("Cold");
        assert_non_null(m);
        static const int64_t shape[1] = {(int64_t)ELEMS}, half[1] = {(int64_t)ELEMS / 2};
        for (int t = 0; t < TENSORS; t++) {
            char name[32];
            snprintf(name, sizeof(name), "layer%d.weight", t);
            assert_int_equal(ckpt_model_add(m, name, CKPT_DTYPE_FLOAT32, 1, shape, NULL, 0, NULL,
                                            NULL),
                             CKPT_OK);
        }
        assert_int_equal(ckpt_model_add(m, "layer3.tail", CKPT_DTYPE_FLOAT32, 1, half, NULL, 0,
                                        NULL, NULL),
                         CKPT_OK);
        assert_int_equal(ckpt_open(path, NULL, &f, NULL), CKPT_OK);
        assert_int_equal(ckpt_model_load(m, f, NULL, NULL, NULL), CKPT_OK);
        for (int t = 0; t < TENSORS; t++)
            assert_memory_equal(ckpt_model_data(m, (size_t)t), g_data[t],
                                ELEMS * sizeof(float));
        assert_memory_equal(ckpt_model_data(m, TENSORS), g_data[3] + ELEMS / 2,
                            ELEMS / 2 * sizeof(float));
        ckpt_close(f);
        ckpt_model_free(m);
    }
    free(vals);
}

/* Verifying a big file reads its records with pread: a flipped byte in
 * a tensor is still a CRC mismatch naming the record. */
static void test_cold_verify_finds_corruption(void **state)
{
    (void)state;
    size_t size = 0;
    uint8_t *bytes = read_file(tmp_path("cold.pth"), &size);
    assert_non_null(bytes);
    bytes[size / 2] ^= 0x40; /* inside a tensor's bytes */
    const char *bad = tmp_path("bad.pth");
    FILE *fp = fopen(bad, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(bytes, 1, size, fp), size);
    assert_int_equal(fclose(fp), 0);
    free(bytes);
    make_cold(bad);
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open(bad, NULL, &f, NULL), CKPT_OK);
    assert_int_equal(ckpt_file_verify(f, &err), CKPT_ERR_CORRUPT);
    assert_non_null(strstr(err.record, "data/"));
    ckpt_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_reads_metadata_only),
        cmocka_unit_test(test_scan_reads_metadata_only),
        cmocka_unit_test(test_cold_copies),
        cmocka_unit_test(test_cold_verify_finds_corruption),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
