/*
 * test_reader.c - a file's ranges read on a thread of their own
 * (base/reader.c): the pieces come in order and whole, a new range drops
 * the rest of the old one, a file that ends early is ENODATA after the
 * bytes it had, and asking past a range's end never waits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "support.h"

#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIECE ((size_t)64 << 10)
#define FILE_BYTES (PIECE * 37 + 1234) /* many pieces, the last one short */

static uint8_t *g_bytes;
static int g_fd = -1;

static uint8_t byte_at(uint64_t i) { return (uint8_t)((i * 2654435761u) >> 13); }

static int setup(void **state)
{
    (void)state;
    tmp_dir_make("ckpt-test-reader-");
    g_bytes = malloc(FILE_BYTES);
    assert_non_null(g_bytes);
    for (size_t i = 0; i < FILE_BYTES; i++)
        g_bytes[i] = byte_at(i);
    assert_true(write_file(tmp_path("data"), g_bytes, FILE_BYTES));
    g_fd = open(tmp_path("data"), O_RDONLY | O_CLOEXEC);
    assert_true(g_fd >= 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    close(g_fd);
    free(g_bytes);
    remove_tree(tmp_dir());
    return 0;
}

typedef struct hook_log {
    uint64_t last;
    size_t calls;
    bool in_order;
} hook_log;

static void hook(void *user, uint64_t off)
{
    hook_log *h = user;
    if (h->calls && off <= h->last)
        h->in_order = false;
    h->last = off;
    h->calls++;
}

/* Reads the whole range [off, off + len) and checks it against the file. */
static void read_range(ckpt__reader *r, uint64_t off, uint64_t len)
{
    ckpt__reader_start(r, off, len);
    uint64_t got = 0;
    while (got < len) {
        const uint8_t *p;
        size_t n;
        assert_int_equal(ckpt__reader_next(r, &p, &n), 0);
        assert_true(n > 0 && n <= PIECE && got + n <= len);
        assert_memory_equal(p, g_bytes + off + got, n);
        got += n;
    }
}

static void test_ranges_in_order(void **state)
{
    (void)state;
    hook_log h = {.in_order = true};
    ckpt__reader *r = ckpt__reader_new(g_fd, PIECE, hook, &h);
    assert_non_null(r);
    assert_int_equal(ckpt__reader_fd(r), g_fd);
    read_range(r, 0, FILE_BYTES);
    assert_true(h.in_order);
    assert_int_equal(h.calls, (FILE_BYTES + PIECE - 1) / PIECE);
    read_range(r, 777, PIECE * 5 + 3);  /* unaligned, several pieces */
    read_range(r, FILE_BYTES - 10, 10); /* one short piece at the end */
    read_range(r, 5, 1);
    /* past the range: an answer, not a wait */
    const uint8_t *p;
    size_t n;
    assert_int_equal(ckpt__reader_next(r, &p, &n), ENODATA);
    assert_int_equal(n, 0);
    ckpt__reader_free(r);
}

/* A range started before the last one was taken: the new range's bytes,
 * from its start, nothing of the old one. */
static void test_restart_drops_the_rest(void **state)
{
    (void)state;
    ckpt__reader *r = ckpt__reader_new(g_fd, PIECE, NULL, NULL);
    assert_non_null(r);
    for (int round = 0; round < 50; round++) {
        ckpt__reader_start(r, 0, FILE_BYTES);
        const uint8_t *p;
        size_t n;
        assert_int_equal(ckpt__reader_next(r, &p, &n), 0);
        assert_memory_equal(p, g_bytes, n);
        read_range(r, PIECE * 3 + (uint64_t)round, PIECE * 2);
    }
    /* dropped with a range half read: freeing stops the thread */
    ckpt__reader_start(r, 0, FILE_BYTES);
    ckpt__reader_free(r);
}

/* A range that runs past the end of the file: the bytes it has, then
 * ENODATA, and the range is over. */
static void test_file_ends_early(void **state)
{
    (void)state;
    ckpt__reader *r = ckpt__reader_new(g_fd, PIECE, NULL, NULL);
    assert_non_null(r);
    uint64_t off = FILE_BYTES - PIECE - 100;
    ckpt__reader_start(r, off, PIECE * 4);
    uint64_t got = 0;
    int code = 0;
    while (code == 0) {
        const uint8_t *p;
        size_t n;
        code = ckpt__reader_next(r, &p, &n);
        if (n)
            assert_memory_equal(p, g_bytes + off + got, n);
        got += n;
    }
    assert_int_equal(code, ENODATA);
    assert_int_equal(got, FILE_BYTES - off);
    const uint8_t *p;
    size_t n;
    assert_int_equal(ckpt__reader_next(r, &p, &n), ENODATA);
    /* and it reads on after that */
    read_range(r, 0, PIECE + 1);
    ckpt__reader_free(r);
}

/* A descriptor that cannot be read: the errno, not a hang. */
static void test_read_error(void **state)
{
    (void)state;
    int fd = open(tmp_path("data"), O_WRONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    ckpt__reader *r = ckpt__reader_new(fd, PIECE, NULL, NULL);
    assert_non_null(r);
    ckpt__reader_start(r, 0, PIECE * 3);
    const uint8_t *p;
    size_t n;
    assert_int_equal(ckpt__reader_next(r, &p, &n), EBADF);
    assert_int_equal(n, 0);
    ckpt__reader_free(r);
    close(fd);
    assert_null(ckpt__reader_new(-1, PIECE, NULL, NULL));
    assert_null(ckpt__reader_new(g_fd, 0, NULL, NULL));
    ckpt__reader_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ranges_in_order),
        cmocka_unit_test(test_restart_drops_the_rest),
        cmocka_unit_test(test_file_ends_early),
        cmocka_unit_test(test_read_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
