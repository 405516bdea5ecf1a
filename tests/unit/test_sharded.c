/*
 * test_sharded.c - sharded indexes built on disk: a shard is a checkpoint
 * file, never the index itself nor another index, whatever the spelling (a
 * link, "./index.json", a hard link, another index naming this one back),
 * and one shard file is opened and scanned once however many tensors or
 * names lead to it. ckpt_open and ckpt_scan_file run in a child with a time
 * limit, so that a recursion that runs out of stack fails the case instead
 * of the test program.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ckpt.h>
#include "support.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static void write_bytes(const char *name, const void *data, size_t n)
{
    assert_true(write_file(tmp_path(name), data, n));
}

static void write_text(const char *name, const char *text) { write_bytes(name, text, strlen(text)); }

/* A safetensors file of count U8 tensors of 1 byte: prefix0, prefix1, ... */
static void write_shard(const char *name, const char *prefix, size_t count)
{
    buf h = {0};
    b_str(&h, "{");
    char e[160];
    for (size_t i = 0; i < count; i++) {
        snprintf(e, sizeof(e), "%s\"%s%zu\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[%zu,%zu]}",
                 i ? "," : "", prefix, i, i, i + 1);
        b_str(&h, e);
    }
    b_str(&h, "}");
    buf f = {0};
    b_le(&f, h.len, 8);
    b_put(&f, h.p, h.len);
    b_fill(&f, 7, count);
    write_bytes(name, f.p, f.len);
    b_free(&h);
    b_free(&f);
}

/* What the child reports. */
typedef struct result {
    ckpt_status open_status;
    ckpt_error err;
    size_t shards, tensors;
    ckpt_status scan_status;
    ckpt_scan_verdict verdict;
    size_t findings;
    char finding[512];          /* the first finding: "kind record: message" */
} result;

static void run_child(const char *index, result *r)
{
    memset(r, 0, sizeof(*r));
    ckpt_file *f = NULL;
    r->open_status = ckpt_open(index, NULL, &f, &r->err);
    if (r->open_status == CKPT_OK) {
        ckpt_file_info fi = {.struct_size = sizeof(fi)};
        ckpt_file_get_info(f, &fi);
        r->shards = fi.shard_count;
        r->tensors = ckpt_file_tensor_count(f);
        ckpt_error verr;
        if (ckpt_file_verify(f, &verr) != CKPT_OK)
            r->open_status = verr.status, r->err = verr;
        ckpt_close(f);
    }
    ckpt_scan *scan = NULL;
    ckpt_error serr;
    r->scan_status = ckpt_scan_file(index, NULL, &scan, &serr);
    if (r->scan_status == CKPT_OK) {
        r->verdict = ckpt_scan_get_verdict(scan);
        r->findings = ckpt_scan_finding_count(scan);
        if (r->findings) {
            const ckpt_scan_finding *fd = ckpt_scan_finding_at(scan, 0);
            snprintf(r->finding, sizeof(r->finding), "%s %s: %s", ckpt_scan_kind_name(fd->kind),
                     fd->record, fd->message);
        }
        ckpt_scan_free(scan);
    }
}

/* In the child: run_child under a stack limit (a recursion through the
 * index would take hundreds of MiB of stack). */
static void run_limited(const void *arg, void *r)
{
    struct rlimit rl = {.rlim_cur = 64 << 20, .rlim_max = 64 << 20};
    setrlimit(RLIMIT_STACK, &rl);
    run_child(arg, r);
}

/* run_child in a child process with a time limit: false when it did not
 * finish (a hang, a signal such as a stack overflow, a sanitizer exit). */
static bool run_isolated(const char *index, result *r, char *why, size_t why_len)
{
    child_end e;
    if (child_run(run_limited, index, r, sizeof(*r), 120.0, &e))
        return true;
    if (e.timed_out)
        snprintf(why, why_len, "no result within 120 s");
    else if (e.signal)
        snprintf(why, why_len, "killed by signal %d", e.signal);
    else
        snprintf(why, why_len, "exited with %d", e.status);
    return false;
}

/* index must fail to open with FORMAT, the error naming shard and saying
 * why; the scan must report it as a finding (the file is unsafe). */
static void expect_refused(const char *index, const char *shard, const char *why_text)
{
    result r;
    char why[128];
    if (!run_isolated(tmp_path(index), &r, why, sizeof(why)))
        fail_msg("%s: %s", index, why);
    if (r.open_status != CKPT_ERR_FORMAT)
        fail_msg("%s: open gave %s (%s: %s), expected CKPT_ERR_FORMAT", index,
                 ckpt_status_name(r.open_status), r.err.record, r.err.message);
    if (!strstr(r.err.record, shard) || !strstr(r.err.message, why_text))
        fail_msg("%s: error '%s: %s' does not name shard '%s' with '%s'", index, r.err.record,
                 r.err.message, shard, why_text);
    if (r.scan_status != CKPT_OK)
        fail_msg("%s: the scan failed: %s", index, ckpt_status_name(r.scan_status));
    if (r.verdict != CKPT_SCAN_VERDICT_UNSAFE || r.findings != 1 || !strstr(r.finding, shard) ||
        !strstr(r.finding, why_text))
        fail_msg("%s: scan %s with %zu findings (%s); expected one naming '%s' with '%s'", index,
                 ckpt_scan_verdict_name(r.verdict), r.findings, r.finding, shard, why_text);
}

static void test_index_as_shard(void **state)
{
    (void)state;
    write_shard("good.safetensors", "w", 2);
    write_text("good.index.json", "{\"weight_map\":{\"w0\":\"good.safetensors\","
                                  "\"w1\":\"good.safetensors\"}}");
    /* the control: opens, one shard, scans safe */
    result r;
    char why[128];
    assert_true(run_isolated(tmp_path("good.index.json"), &r, why, sizeof(why)));
    assert_int_equal(r.open_status, CKPT_OK);
    assert_int_equal(r.shards, 1);
    assert_int_equal(r.tensors, 2);
    assert_int_equal(r.verdict, CKPT_SCAN_VERDICT_SAFE);

    write_text("self.index.json", "{\"weight_map\":{\"w\":\"self.index.json\"}}");
    expect_refused("self.index.json", "self.index.json", "the index itself");
    write_text("dot.index.json", "{\"weight_map\":{\"w\":\"./dot.index.json\"}}");
    result d;
    assert_true(run_isolated(tmp_path("dot.index.json"), &d, why, sizeof(why)));
    assert_int_equal(d.open_status, CKPT_ERR_FORMAT);
    assert_non_null(strstr(d.err.message, "the index itself"));
    /* the scan takes no shard name with a directory in it */
    assert_int_equal(d.verdict, CKPT_SCAN_VERDICT_UNSAFE);

    /* a link to the index, a hard link to it */
    write_text("link.index.json", "{\"weight_map\":{\"w\":\"link.safetensors\"}}");
    assert_int_equal(symlink("link.index.json", tmp_path("link.safetensors")), 0);
    expect_refused("link.index.json", "link.safetensors", "the index itself");
    write_text("hard.index.json", "{\"weight_map\":{\"w\":\"hard.safetensors\"}}");
    assert_int_equal(link(tmp_path("hard.index.json"), tmp_path("hard.safetensors")), 0);
    expect_refused("hard.index.json", "hard.safetensors", "the index itself");

    /* another index: a valid one, and two naming each other */
    write_text("outer.index.json", "{\"weight_map\":{\"w0\":\"good.index.json\"}}");
    expect_refused("outer.index.json", "good.index.json", "itself a sharded index");
    write_text("ping.index.json", "{\"weight_map\":{\"w\":\"pong.index.json\"}}");
    write_text("pong.index.json", "{\"weight_map\":{\"w\":\"ping.index.json\"}}");
    expect_refused("ping.index.json", "pong.index.json", "itself a sharded index");
    /* under a checkpoint's name, a link to another index */
    assert_int_equal(symlink("pong.index.json", tmp_path("pong.safetensors")), 0);
    write_text("via.index.json", "{\"weight_map\":{\"w\":\"pong.safetensors\"}}");
    expect_refused("via.index.json", "pong.safetensors", "itself a sharded index");
    /* a shard that is the index, after a good one */
    write_text("late.index.json", "{\"weight_map\":{\"w0\":\"good.safetensors\","
                                  "\"w1\":\"late.index.json\"}}");
    expect_refused("late.index.json", "late.index.json", "the index itself");
}

/* A safetensors shard whose tensor is named weight_map is a checkpoint file,
 * not an index, for the reader and the scanner alike. */
static void test_shard_named_like_an_index(void **state)
{
    (void)state;
    static const char header[] =
        "{\"weight_map\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}";
    buf f = {0};
    b_le(&f, sizeof(header) - 1, 8);
    b_str(&f, header);
    b_fill(&f, 1, 2);
    write_bytes("wm.safetensors", f.p, f.len);
    b_free(&f);
    write_text("wm.index.json", "{\"weight_map\":{\"weight_map\":\"wm.safetensors\"}}");
    result r;
    char why[128];
    assert_true(run_isolated(tmp_path("wm.index.json"), &r, why, sizeof(why)));
    if (r.open_status != CKPT_OK)
        fail_msg("open: %s: %s", r.err.record, r.err.message);
    assert_int_equal(r.tensors, 1);
    if (r.verdict != CKPT_SCAN_VERDICT_SAFE)
        fail_msg("scan: %s (%s)", ckpt_scan_verdict_name(r.verdict), r.finding);
}

/* One shard file under many names and for many tensors: opened once. */
static void test_shard_opened_once(void **state)
{
    (void)state;
    const size_t n = 100000;
    write_shard("big.safetensors", "t", n);
    assert_int_equal(symlink("big.safetensors", tmp_path("alias.safetensors")), 0);
    assert_int_equal(link(tmp_path("big.safetensors"), tmp_path("hardalias.safetensors")), 0);
    static const char *const names[] = {"big.safetensors", "./big.safetensors",
                                        "././big.safetensors", "alias.safetensors",
                                        "hardalias.safetensors"};
    buf j = {0};
    b_str(&j, "{\"weight_map\":{");
    char e[96];
    for (size_t i = 0; i < n; i++) {
        snprintf(e, sizeof(e), "%s\"t%zu\":\"%s\"", i ? "," : "", i, names[i % 5]);
        b_str(&j, e);
    }
    b_str(&j, "}}");
    write_bytes("many.index.json", j.p, j.len);
    b_free(&j);
    result r;
    char why[128];
    if (!run_isolated(tmp_path("many.index.json"), &r, why, sizeof(why)))
        fail_msg("many.index.json: %s", why);
    if (r.open_status != CKPT_OK)
        fail_msg("open: %s: %s", r.err.record, r.err.message);
    assert_int_equal(r.tensors, n);
    assert_int_equal(r.shards, 1);
    /* "./big.safetensors" is a finding for the scan (a shard beside the
     * index is named plainly); the rest is the one shard, scanned once */
    assert_int_equal(r.scan_status, CKPT_OK);
    assert_int_equal(r.findings, 2);
}

static int setup(void **state)
{
    (void)state;
    tmp_dir_make("ckpt_sharded_");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    remove_tree(tmp_dir());
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_as_shard),
        cmocka_unit_test(test_shard_named_like_an_index),
        cmocka_unit_test(test_shard_opened_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
