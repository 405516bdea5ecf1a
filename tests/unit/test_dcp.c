/*
 * test_dcp.c - the public API of DCP checkpoints on a directory torch 2.6
 * wrote with 4 gloo ranks (a 9 x 8 float32 matrix in a 2 x 2 uneven grid),
 * unpacked from the fuzz seed fuzz/corpus/fuzz_dcp/g26: chunk listing and
 * its ABI (an older caller's struct), regions against the whole tensor,
 * resharding loads, argument errors. Uses only ckpt.h.
 */
#include <ckpt.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char g_dir[] = "/tmp/ckpt-test-dcp-XXXXXX";
static char g_names[8][64];
static size_t g_count;

/* Unpacks a seed ({u8 name length, name, u32 LE length, data}, the
 * .metadata first) into g_dir. */
static int unpack(const char *seed)
{
    FILE *f = fopen(seed, "rb");
    if (!f)
        return -1;
    unsigned char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    size_t pos = 0;
    while (pos < n && g_count < 8) {
        size_t nl = buf[pos++];
        if (pos + nl + 4 > n || nl >= sizeof(g_names[0]))
            return -1;
        memcpy(g_names[g_count], buf + pos, nl);
        g_names[g_count][nl] = 0;
        pos += nl;
        size_t len = buf[pos] | (size_t)buf[pos + 1] << 8 | (size_t)buf[pos + 2] << 16 |
                     (size_t)buf[pos + 3] << 24;
        pos += 4;
        if (pos + len > n)
            return -1;
        char path[sizeof(g_dir) + sizeof(g_names[0]) + 1];
        snprintf(path, sizeof(path), "%s/%.63s", g_dir, g_names[g_count]);
        FILE *o = fopen(path, "wb");
        if (!o || fwrite(buf + pos, 1, len, o) != len || fclose(o) != 0)
            return -1;
        pos += len;
        g_count++;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    const char *src = getenv("CKPT_SOURCE_DIR");
    char seed[512];
    snprintf(seed, sizeof(seed), "%s/fuzz/corpus/fuzz_dcp/g26", src ? src : ".");
    if (!mkdtemp(g_dir))
        return -1;
    return unpack(seed);
}

static int teardown(void **state)
{
    (void)state;
    char path[sizeof(g_dir) + sizeof(g_names[0]) + 1];
    for (size_t i = 0; i < g_count; i++) {
        snprintf(path, sizeof(path), "%s/%.63s", g_dir, g_names[i]);
        unlink(path);
    }
    rmdir(g_dir);
    return 0;
}

static ckpt_file *open_dir(void)
{
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open(g_dir, NULL, &f, &err), CKPT_OK);
    return f;
}

static void test_open_and_chunks(void **state)
{
    (void)state;
    ckpt_file *f = open_dir();
    ckpt_file_info fi = {.struct_size = sizeof(fi)};
    ckpt_file_get_info(f, &fi);
    assert_int_equal(fi.format, CKPT_FORMAT_DCP);
    assert_string_equal(ckpt_format_name(fi.format), "dcp");
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "grid");
    assert_non_null(t);
    ckpt_tensor_info ti = {.struct_size = sizeof(ti)};
    ckpt_tensor_get_info(t, &ti);
    assert_int_equal(ti.dtype, CKPT_DTYPE_FLOAT32);
    assert_int_equal(ti.ndim, 2);
    assert_int_equal(ti.shape[0], 9);
    assert_int_equal(ti.shape[1], 8);
    assert_true(ti.is_contiguous);

    /* sorted by offsets: rows 0:5 then 5:9, columns 0:3 then 3:8 */
    static const int64_t want[4][4] = {{0, 0, 5, 3}, {0, 3, 5, 5}, {5, 0, 4, 3}, {5, 3, 4, 5}};
    assert_int_equal(ckpt_tensor_chunk_count(t), 4);
    for (size_t i = 0; i < 4; i++) {
        ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
        assert_true(ckpt_tensor_chunk(t, i, &ci));
        assert_int_equal(ci.struct_size, sizeof(ci));
        assert_int_equal(ci.ndim, 2);
        assert_int_equal(ci.offsets[0], want[i][0]);
        assert_int_equal(ci.offsets[1], want[i][1]);
        assert_int_equal(ci.sizes[0], want[i][2]);
        assert_int_equal(ci.sizes[1], want[i][3]);
        char name[32];
        snprintf(name, sizeof(name), "__%zu_0.distcp", i);
        assert_string_equal(ci.file, name);
        assert_true(ci.length > 0);
    }
    ckpt_chunk_info ci = {.struct_size = sizeof(ci)};
    assert_false(ckpt_tensor_chunk(t, 4, &ci));

    /* an older caller (without length): nothing past its struct is written */
    struct {
        size_t struct_size;
        uint32_t ndim;
        const int64_t *offsets;
        const int64_t *sizes;
        const char *file;
        uint64_t file_offset;
        unsigned char canary[16];
    } old;
    memset(&old, 0xa5, sizeof(old));
    old.struct_size = offsetof(ckpt_chunk_info, length);
    assert_true(ckpt_tensor_chunk(t, 1, (ckpt_chunk_info *)&old));
    assert_int_equal(old.struct_size, offsetof(ckpt_chunk_info, length));
    assert_int_equal(old.offsets[1], 3);
    for (size_t i = 0; i < sizeof(old.canary); i++)
        assert_int_equal(old.canary[i], 0xa5);
    /* struct_size 0: nothing written */
    ckpt_chunk_info zero;
    memset(&zero, 0, sizeof(zero));
    assert_false(ckpt_tensor_chunk(t, 0, &zero));
    assert_null(zero.file);
    ckpt_close(f);

    /* the .metadata names the same checkpoint */
    char meta[256];
    snprintf(meta, sizeof(meta), "%s/.metadata", g_dir);
    ckpt_error err;
    assert_int_equal(ckpt_open(meta, NULL, &f, &err), CKPT_OK);
    assert_int_equal(ckpt_tensor_chunk_count(ckpt_file_find_tensor(f, "grid")), 4);
    ckpt_close(f);
}

static void test_regions(void **state)
{
    (void)state;
    ckpt_file *f = open_dir();
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "grid");
    float whole[72], box[72];
    ckpt_error err;
    assert_int_equal(ckpt_tensor_copy(f, t, whole, sizeof(whole), &err), CKPT_OK);
    /* every box with corners on a coarse grid, across the chunk borders */
    for (int64_t r0 = 0; r0 <= 9; r0 += 2)
        for (int64_t c0 = 0; c0 <= 8; c0 += 3)
            for (int64_t r1 = r0; r1 <= 9; r1 += 3)
                for (int64_t c1 = c0; c1 <= 8; c1 += 2) {
                    int64_t off[2] = {r0, c0}, size[2] = {r1 - r0, c1 - c0};
                    memset(box, 0, sizeof(box));
                    assert_int_equal(
                        ckpt_tensor_read_region(f, t, off, size, box, sizeof(box), &err),
                        CKPT_OK);
                    for (int64_t r = 0; r < size[0]; r++)
                        for (int64_t c = 0; c < size[1]; c++)
                            assert_memory_equal(&box[r * size[1] + c],
                                                &whole[(r0 + r) * 8 + c0 + c], sizeof(float));
                }
    /* a 3-rank load along the columns: its pieces are the whole */
    int64_t offs[3][2] = {{0, 0}, {0, 2}, {0, 5}}, sizes[3][2] = {{9, 2}, {9, 3}, {9, 3}};
    float parts[3][27];
    ckpt_region regions[3];
    for (int i = 0; i < 3; i++)
        regions[i] = (ckpt_region){"grid", offs[i], sizes[i], parts[i], sizeof(parts[i])};
    assert_int_equal(ckpt_dcp_load_shard(f, regions, 3, &err), CKPT_OK);
    for (int i = 0; i < 3; i++)
        for (int64_t r = 0; r < 9; r++)
            assert_memory_equal(&parts[i][r * sizes[i][1]], &whole[r * 8 + offs[i][1]],
                                (size_t)sizes[i][1] * sizeof(float));
    ckpt_close(f);
}

static void test_errors(void **state)
{
    (void)state;
    ckpt_file *f = open_dir();
    const ckpt_tensor *t = ckpt_file_find_tensor(f, "grid");
    float box[72];
    ckpt_error err;
    int64_t off[2] = {5, 0}, size[2] = {5, 8};
    assert_int_equal(ckpt_tensor_read_region(f, t, off, size, box, sizeof(box), &err),
                     CKPT_ERR_INVALID_ARG); /* rows 5..10 of 9 */
    int64_t neg[2] = {-1, 0}, one[2] = {1, 1};
    assert_int_equal(ckpt_tensor_read_region(f, t, neg, one, box, sizeof(box), &err),
                     CKPT_ERR_INVALID_ARG);
    int64_t ok[2] = {0, 0}, all[2] = {9, 8};
    assert_int_equal(ckpt_tensor_read_region(f, t, ok, all, box, sizeof(box) - 4, &err),
                     CKPT_ERR_INVALID_ARG); /* dst too small */
    ckpt_region r = {"no.such", ok, one, box, sizeof(box)};
    assert_int_equal(ckpt_dcp_load_shard(f, &r, 1, &err), CKPT_ERR_NOT_FOUND);
    assert_string_equal(err.record, "no.such");
    ckpt_close(f);

    /* a directory without .metadata is no checkpoint */
    char empty[] = "/tmp/ckpt-test-dcp-empty-XXXXXX";
    assert_non_null(mkdtemp(empty));
    assert_int_equal(ckpt_open(empty, NULL, &f, &err), CKPT_ERR_IO);
    assert_non_null(strstr(err.message, "without a .metadata"));
    rmdir(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_and_chunks),
        cmocka_unit_test(test_regions),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
