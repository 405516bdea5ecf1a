/*
 * test_torchscript.c - CKPT_OPEN_TORCHSCRIPT_WEIGHTS through the public API,
 * on archives made here opcode by opcode (the interop suite compares real
 * torch.jit.save archives with torch.jit.load): refused without the flag,
 * the state dict with it, the flag changing nothing for other files.
 */
#include <ckpt.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "support.h"

static const char MODULE_CODE[] = "class M(Module):\n"
                                  "  __parameters__ = [\"w\", ]\n"
                                  "  __buffers__ = [\"b\", ]\n"
                                  "  w : Tensor\n";

static const float W[4] = {1.5f, -2.0f, 0.25f, 8.0f};

/* M() with the attributes w, b (None or a tensor), sub (when nested) */
static void pk_module(buf *b, const char *module, bool nested, bool buffer)
{
    static const int64_t shape[1] = {2}, stride[1] = {1};
    pk_global(b, module, "M");
    b_u8(b, ')');
    b_u8(b, 0x81); /* NEWOBJ */
    b_u8(b, '}');
    b_u8(b, '(');
    pk_unicode(b, "w");
    pk_tensor(b, "FloatStorage", "0", 4, nested ? 0 : 2, shape, stride, 1);
    pk_unicode(b, "b");
    if (buffer)
        pk_tensor(b, "FloatStorage", "0", 4, 1, shape, stride, 1);
    else
        b_u8(b, 'N');
    pk_unicode(b, "training");
    b_u8(b, 0x88);
    if (nested) {
        pk_unicode(b, "sub");
        pk_module(b, "__torch__.lib", false, true);
    }
    b_u8(b, 'u'); /* SETITEMS */
    b_u8(b, 'b'); /* BUILD */
}

/* prefix m/: data.pkl, code/ (unless !code), constants.pkl, data/0, version */
static zbuilt archive(const buf *pkl, bool code)
{
    zrec recs[7];
    int n = 0;
    recs[n++] = zr_stored("m/data.pkl", pkl->p, pkl->len);
    if (code) {
        recs[n++] = zr_stored("m/code/__torch__.py", MODULE_CODE, strlen(MODULE_CODE));
        recs[n++] = zr_stored("m/code/__torch__/lib.py", MODULE_CODE, strlen(MODULE_CODE));
        static const uint8_t constants[] = {0x80, 2, ')', '.'};
        recs[n++] = zr_stored("m/constants.pkl", constants, sizeof(constants));
    }
    recs[n++] = zr_stored("m/data/0", W, sizeof(W));
    recs[n++] = zr_stored("m/version", "3\n", 2);
    zend end = {0};
    return zip_build(recs, n, &end);
}

static buf nested_pickle(void)
{
    buf b = {0};
    pk_proto(&b, 2);
    pk_module(&b, "__torch__", true, false);
    pk_stop(&b);
    return b;
}

static ckpt_status open_with(const zbuilt *z, unsigned flags, ckpt_file **f, ckpt_error *err)
{
    ckpt_open_options oo;
    ckpt_open_options_default(&oo);
    oo.flags |= flags;
    return ckpt_open_memory(z->file.p, z->file.len, &oo, f, err);
}

static void test_refused_by_default(void **state)
{
    (void)state;
    buf pkl = nested_pickle();
    zbuilt z = archive(&pkl, true);
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(open_with(&z, 0, &f, &err), CKPT_ERR_UNSUPPORTED);
    assert_null(f);
    assert_non_null(strstr(err.message, "TorchScript archive"));
    assert_non_null(strstr(err.message, "--torchscript-weights"));
    b_free(&z.file);
    b_free(&pkl);
}

static void test_state_dict(void **state)
{
    (void)state;
    buf pkl = nested_pickle();
    zbuilt z = archive(&pkl, true);
    static const unsigned modes[2] = {CKPT_OPEN_TORCHSCRIPT_WEIGHTS,
                                      CKPT_OPEN_TORCHSCRIPT_WEIGHTS | CKPT_OPEN_PERMISSIVE};
    for (int m = 0; m < 2; m++) {
        ckpt_file *f = NULL;
        ckpt_error err;
        assert_int_equal(open_with(&z, modes[m], &f, &err), CKPT_OK);
        /* parameters, buffers (a None one skipped), then submodules */
        static const char *const names[] = {"w", "sub.w", "sub.b"};
        static const float first[] = {1.5f, 0.25f, -2.0f};
        assert_int_equal(ckpt_file_tensor_count(f), 3);
        for (size_t i = 0; i < 3; i++) {
            const char *name = NULL;
            const ckpt_tensor *t = ckpt_file_tensor(f, i, &name);
            assert_non_null(t);
            assert_string_equal(name, names[i]);
            float v[2];
            assert_int_equal(ckpt_tensor_copy(f, t, v, sizeof(v), &err), CKPT_OK);
            assert_true(v[0] == first[i]);
        }
        /* "w" of the root is the view at offset 0 */
        float v[2];
        assert_int_equal(ckpt_tensor_copy(f, ckpt_file_find_tensor(f, "w"), v, sizeof(v), &err),
                         CKPT_OK);
        assert_true(v[1] == -2.0f);
        assert_int_equal(ckpt_file_verify(f, &err), CKPT_OK);
        ckpt_close(f);
    }
    b_free(&z.file);
    b_free(&pkl);
}

/* The flag reads TorchScript archives only: in a torch.save zip a
 * __torch__ class is a global outside the allow-list, as ever. */
static void test_flag_changes_nothing_else(void **state)
{
    (void)state;
    buf pkl = nested_pickle();
    zbuilt z = archive(&pkl, false);
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(open_with(&z, CKPT_OPEN_TORCHSCRIPT_WEIGHTS, &f, &err), CKPT_ERR_UNSAFE);
    assert_non_null(strstr(err.message, "__torch__.M"));
    b_free(&z.file);
    b_free(&pkl);
}

/* Every prefix of the archive's data.pkl fails cleanly. */
static void test_truncated_pickles(void **state)
{
    (void)state;
    buf pkl = nested_pickle();
    for (size_t n = 0; n < pkl.len; n++) {
        buf cut = {0};
        b_put(&cut, pkl.p, n);
        zbuilt z = archive(&cut, true);
        ckpt_file *f = NULL;
        ckpt_error err;
        assert_int_not_equal(open_with(&z, CKPT_OPEN_TORCHSCRIPT_WEIGHTS, &f, &err), CKPT_OK);
        assert_null(f);
        b_free(&z.file);
        b_free(&cut);
    }
    b_free(&pkl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_by_default),
        cmocka_unit_test(test_state_dict),
        cmocka_unit_test(test_flag_changes_nothing_else),
        cmocka_unit_test(test_truncated_pickles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
