/*
 * test_scan.c - ckpt_scan over hand-written pickles and archives, and the
 * inert objects of CKPT_OPEN_PERMISSIVE: what is reported, where, and how
 * a global is used; the allow-list's edges; nothing is ever called.
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

#define P(s) (const uint8_t *)(s), sizeof(s) - 1

static ckpt_scan *scan_with(const uint8_t *data, size_t size, const char *const *allow,
                            size_t nallow)
{
    ckpt_scan_options o;
    ckpt_scan_options_default(&o);
    o.allow = allow;
    o.allow_count = nallow;
    ckpt_scan *sc = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_scan_memory(data, size, &o, &sc, &err), CKPT_OK);
    assert_non_null(sc);
    return sc;
}

static ckpt_scan *scan(const uint8_t *data, size_t size)
{
    return scan_with(data, size, NULL, 0);
}

static void test_safe_pickle(void **state)
{
    (void)state;
    /* {'a': OrderedDict(), 'b': [1, 2.5]} with allowed globals only */
    ckpt_scan *sc = scan(P("\x80\x02}q\x00(X\x01\x00\x00\x00" "aq\x01" "ccollections\nOrderedDict\nq\x02"
                           ")Rq\x03X\x01\x00\x00\x00" "bq\x04]q\x05(K\x01G@\x04\x00\x00\x00\x00\x00\x00"
                           "eu."));
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    assert_int_equal(ckpt_scan_finding_count(sc), 0);
    assert_string_equal(ckpt_scan_format(sc), "pickle");
    ckpt_scan_free(sc);
}

static void test_reduce_payload(void **state)
{
    (void)state;
    ckpt_scan *sc = scan(P("\x80\x02" "cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."));
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(f);
    assert_int_equal(f->offset, 2);
    assert_int_equal(f->file_offset, 2);
    assert_true(f->use & CKPT_SCAN_USE_REDUCE);
    assert_true(f->runs_code);
    assert_string_equal(f->record, "pickle");
    char line[128];
    assert_string_equal(ckpt_scan_use_text(f->use, line, sizeof(line)), "called by REDUCE");
    assert_string_equal(ckpt_scan_kind_name(f->kind), "global");
    assert_int_equal(f->severity, CKPT_SCAN_VERDICT_UNSAFE);
    assert_true(f->struct_size >= offsetof(ckpt_scan_finding, call) + sizeof(f->call));
    assert_string_equal(f->call, "posix.system('true')");
    ckpt_scan_free(sc);
    /* arguments of every kind, keywords, and a long one cut */
    sc = scan(P("\x80\x04" "\x8c\x0b" "mylib.tools\x94\x8c\x03" "run\x94\x93"
                "(K\x01\x88N\x8c\x01" "a\x85t}\x8c\x01" "k\x8c\x01" "vs\x92."));
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "mylib.tools.run", NULL);
    assert_non_null(f);
    assert_string_equal(f->call, "mylib.tools.run(1, True, None, ('a',), k='v')");
    ckpt_scan_free(sc);
    static const char head[] = "\x80\x02" "cposix\nsystem\nX\xc8\x00\x00\x00";
    uint8_t big[300];
    memcpy(big, head, sizeof(head) - 1);
    memset(big + sizeof(head) - 1, 'x', 200);
    memcpy(big + sizeof(head) - 1 + 200, "\x85R.", 3);
    sc = scan(big, sizeof(head) - 1 + 203);
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL);
    assert_non_null(f);
    assert_true(strlen(f->call) < 100);
    assert_non_null(strstr(f->call, "xxx...)"));
    ckpt_scan_free(sc);
    /* named, never called: no call */
    sc = scan(P("\x80\x02" "cposix\nsystem\n."));
    assert_null(scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "posix.system", NULL)->call);
    ckpt_scan_free(sc);
}

#define SIZED(s) {s, sizeof(s) - 1}

static void test_severities(void **state)
{
    (void)state;
    assert_string_equal(ckpt_scan_verdict_name(CKPT_SCAN_VERDICT_SAFE), "safe");
    assert_string_equal(ckpt_scan_verdict_name(CKPT_SCAN_VERDICT_WARNING), "warning");
    assert_string_equal(ckpt_scan_verdict_name(CKPT_SCAN_VERDICT_UNSAFE), "unsafe");
    /* TorchVersion and numpy array builders: warnings */
    static const struct { const char *p; size_t n; } warn[] = {
        SIZED("\x80\x02" "ctorch.torch_version\nTorchVersion\nX\x04\x00\x00\x00" "2.6a\x85\x81."),
        SIZED("\x80\x02" "cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
              "C\x01" "b\x87R."),
        SIZED("\x80\x02" "cnumpy\ndtype\nX\x02\x00\x00\x00" "f8\x89\x88\x87R."),
        SIZED("\x80\x02" "cnumpy.dtypes\nFloat64DType\n)\x81."),
    };
    for (size_t i = 0; i < sizeof(warn) / sizeof(warn[0]); i++) {
        ckpt_scan *sc = scan((const uint8_t *)warn[i].p, warn[i].n);
        assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_WARNING);
        for (size_t k = 0; k < ckpt_scan_finding_count(sc); k++) {
            const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, k);
            assert_int_equal(f->severity, CKPT_SCAN_VERDICT_WARNING);
            assert_non_null(strstr(f->message, "add_safe_globals(["));
        }
        ckpt_scan_free(sc);
    }
    /* what they build, called in turn; a warning name next to a payload */
    static const struct { const char *p; size_t n; } bad[] = {
        SIZED("\x80\x02" "cnumpy\ndtype\nX\x02\x00\x00\x00" "f8\x85R)R."),
        SIZED("\x80\x02" "ctorch.torch_version\nTorchVersion\nX\x01\x00\x00\x00" "a" "\x85\x81"
              "cposix\nsystem\nX\x02\x00\x00\x00" "id\x85R\x86."),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ckpt_scan *sc = scan((const uint8_t *)bad[i].p, bad[i].n);
        assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
        ckpt_scan_free(sc);
    }
    /* a numpy module under another name is no warning */
    ckpt_scan *sc = scan(P("\x80\x02" "cnumpy.testing._private.utils\nruntstring\n."));
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    ckpt_scan_free(sc);
    /* a .npy of numbers: a warning */
    static const char npy[] = "\x93NUMPY\x01\x00\x76\x00{'descr': '<f4', 'fortran_order': False, "
                              "'shape': (1,), }";
    uint8_t arr[10 + 118 + 4];
    memset(arr, ' ', sizeof(arr));
    memcpy(arr, npy, sizeof(npy) - 1);
    arr[10 + 117] = '\n';
    memset(arr + 128, 0, 4);
    sc = scan(arr, sizeof(arr));
    assert_string_equal(ckpt_scan_format(sc), "numpy");
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_WARNING);
    ckpt_scan_free(sc);
}

static void test_uses(void **state)
{
    (void)state;
    /* INST, OBJ, NEWOBJ + BUILD, a bare reference, a called result */
    ckpt_scan *sc = scan(P("(S'x'\nibuiltins\nexec\n"                       /* INST */
                           "0(cbuiltins\neval\nS'1'\no"                      /* OBJ */
                           "0\x80\x02" "cfoo\nBar\n)\x81}b"                     /* NEWOBJ, BUILD */
                           "0cfoo\nref\n"                                    /* referenced */
                           "0cbuiltins\ngetattr\n(S'a'\nS'b'\ntR)R"          /* result called */
                           "."));
    const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "builtins.exec", NULL);
    assert_non_null(f);
    assert_int_equal(f->use, CKPT_SCAN_USE_INST);
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "builtins.eval", NULL);
    assert_non_null(f);
    assert_int_equal(f->use, CKPT_SCAN_USE_OBJ);
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "foo.Bar", NULL);
    assert_non_null(f);
    assert_int_equal(f->use, CKPT_SCAN_USE_NEWOBJ | CKPT_SCAN_USE_BUILD);
    assert_false(f->runs_code);
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "foo.ref", NULL);
    assert_non_null(f);
    assert_int_equal(f->use, 0);
    char line[64];
    assert_string_equal(ckpt_scan_use_text(0, line, sizeof(line)), "referenced");
    f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "builtins.getattr", NULL);
    assert_non_null(f);
    assert_int_equal(f->use, CKPT_SCAN_USE_REDUCE | CKPT_SCAN_USE_RESULT_CALLED);
    assert_null(scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, NULL));
    ckpt_scan_free(sc);
}

static void test_stack_global_from_memo(void **state)
{
    (void)state;
    /* os and system stored in the memo, dropped, fetched back for STACK_GLOBAL */
    ckpt_scan *sc = scan(P("\x80\x04\x8c\x02os\x94\x8c\x06system\x94" "00h\x00h\x01\x93"
                           "\x8c\x04true\x85R."));
    const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "os.system", NULL);
    assert_non_null(f);
    assert_int_equal(f->offset, 22);
    assert_true(f->use & CKPT_SCAN_USE_REDUCE);
    ckpt_scan_free(sc);
}

static void test_break_after_payload(void **state)
{
    (void)state;
    ckpt_scan *sc = scan(P("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00id\x85R\xff."));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "os.system", NULL));
    const ckpt_scan_finding *b = scan_find(sc, CKPT_SCAN_KIND_BROKEN_PICKLE, NULL, NULL);
    assert_non_null(b);
    assert_int_equal(b->offset, 22);
    assert_non_null(strstr(b->message, "unknown opcode 0xff"));
    ckpt_scan_free(sc);
}

static void test_back_to_back(void **state)
{
    (void)state;
    ckpt_scan *sc = scan(P("\x80\x02]q\x00.\x80\x02" "cbuiltins\neval\nX\x01\x00\x00\x00" "1\x85R."));
    const ckpt_scan_finding *x = scan_find(sc, CKPT_SCAN_KIND_EXTRA_PICKLE, NULL, NULL);
    assert_non_null(x);
    assert_int_equal(x->file_offset, 6);
    const ckpt_scan_finding *g = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "builtins.eval", NULL);
    assert_non_null(g);
    assert_string_equal(g->record, "pickle 2");
    assert_int_equal(g->offset, 2);
    assert_int_equal(g->file_offset, 8);
    ckpt_scan_free(sc);

    sc = scan(P("\x80\x02]q\x00.\n\n\t\t"));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_TRAILING_DATA, NULL, NULL));
    ckpt_scan_free(sc);
}

static void test_allow_list_edges(void **state)
{
    (void)state;
    /* names the reader reads but torch refuses */
    static const char *const extras[] = {
        "\x80\x02" "cbuiltins\nfrozenset\n]\x85R.",
        "\x80\x02" "ctorch.torch_version\nTorchVersion\nX\x04\x00\x00\x00" "2.6a\x85\x81.",
        "\x80\x02" "ctorch\ndouble\n.",
        "\x80\x02" "ctorch\nstrided\n.",
        "\x80\x02" "ctorch\nUntypedStorage\n.",
        "\x80\x02" "ctorch.cuda\nQInt8Storage\n.",
    };
    for (size_t i = 0; i < sizeof(extras) / sizeof(extras[0]); i++) {
        ckpt_scan *sc = scan((const uint8_t *)extras[i], strlen(extras[i]));
        const ckpt_scan_finding *f = scan_find(sc, CKPT_SCAN_KIND_GLOBAL, NULL, NULL);
        assert_non_null(f);
        assert_false(f->runs_code);
        if (i == 1) { /* TorchVersion: runs nothing, a warning */
            assert_int_equal(f->severity, CKPT_SCAN_VERDICT_WARNING);
            assert_non_null(strstr(f->message, "torch.load(weights_only=True) refuses it"));
        } else {
            assert_int_equal(f->severity, CKPT_SCAN_VERDICT_UNSAFE);
            assert_non_null(strstr(f->message, "torch's weights-only allow-list"));
        }
        ckpt_scan_free(sc);
    }
    /* names torch allows that the reader does not know */
    static const char *const torch_only[] = {
        "\x80\x02" "ctorch\nuint3\n.",
        "\x80\x02" "ctorch.sparse\nFloatTensor\n.",
        "\x80\x02" "ctorch.storage\nTypedStorage\n.",
        "\x80\x02" "ctorch._utils\n_rebuild_wrapper_subclass\n.",
        "\x80\x02" "c__builtin__\nset\n.",
    };
    for (size_t i = 0; i < sizeof(torch_only) / sizeof(torch_only[0]); i++) {
        ckpt_scan *sc = scan((const uint8_t *)torch_only[i], strlen(torch_only[i]));
        assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
        ckpt_scan_free(sc);
    }
}

static void test_allow_option(void **state)
{
    (void)state;
    static const uint8_t tv[] = "\x80\x02}X\x01\x00\x00\x00vctorch.torch_version\nTorchVersion\n"
                                "X\x04\x00\x00\x00" "2.6a\x85\x81s.";
    static const char *const allow[] = {"torch.torch_version.TorchVersion"};
    ckpt_scan *sc = scan(tv, sizeof(tv) - 1);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_WARNING);
    ckpt_scan_free(sc);
    sc = scan_with(tv, sizeof(tv) - 1, allow, 1);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    ckpt_scan_free(sc);
    /* modules torch blocks stay refused */
    static const char *const allow_os[] = {"os.system", "posix.system"};
    sc = scan_with(P("\x80\x02" "cos\nsystem\nX\x02\x00\x00\x00id\x85R."), allow_os, 2);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    ckpt_scan_free(sc);
    static const char *const allow_sub[] = {"subprocess.call"};
    sc = scan_with(P("\x80\x02" "csubprocess\ncall\nX\x02\x00\x00\x00id\x85R."), allow_sub, 1);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_SAFE);
    ckpt_scan_free(sc);
}

static void test_formats_and_errors(void **state)
{
    (void)state;
    ckpt_scan *sc = scan((const uint8_t *)"", 0);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    assert_string_equal(ckpt_scan_format(sc), "empty");
    ckpt_scan_free(sc);
    sc = scan(P("\x89PNG\r\n\x1a\n"));
    assert_string_equal(ckpt_scan_format(sc), "unknown");
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_FORMAT, NULL, NULL));
    ckpt_scan_free(sc);
    sc = scan(P("7z\xbc\xaf\x27\x1c\x00\x04\x80\x02" "cbuiltins\neval\nX\x01\x00\x00\x00" "1\x85R."));
    assert_string_equal(ckpt_scan_format(sc), "7z");
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_NESTED_ARCHIVE, NULL, NULL));
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_GLOBAL, "builtins.eval", NULL));
    ckpt_scan_free(sc);

    ckpt_error err;
    ckpt_scan *out = (ckpt_scan *)&err;
    assert_int_equal(ckpt_scan_file("/nonexistent/ckpt-scan-test", NULL, &out, &err), CKPT_ERR_IO);
    assert_null(out);
    assert_int_equal(ckpt_scan_file("/", NULL, &out, &err), CKPT_ERR_IO);
    assert_int_equal(ckpt_scan_memory(NULL, 4, NULL, &out, &err), CKPT_ERR_INVALID_ARG);
    assert_int_equal(ckpt_scan_memory("x", 1, NULL, NULL, &err), CKPT_ERR_INVALID_ARG);
    ckpt_scan_free(NULL);
    assert_int_equal(ckpt_scan_get_verdict(NULL), CKPT_SCAN_VERDICT_UNSAFE);
    assert_int_equal(ckpt_scan_finding_count(NULL), 0);
    assert_null(ckpt_scan_finding_at(NULL, 0));
    assert_string_equal(ckpt_scan_kind_name((ckpt_scan_kind)99), "unknown");
    assert_string_equal(ckpt_scan_verdict_name(CKPT_SCAN_VERDICT_SAFE), "safe");
}

static void test_many_findings_are_capped(void **state)
{
    (void)state;
    /* 5000 GLOBALs of a foreign name, each popped */
    size_t n = 5000;
    uint8_t *bytes = malloc(n * 10 + 4);
    size_t o = 0;
    bytes[o++] = 0x80;
    bytes[o++] = 2;
    for (size_t i = 0; i < n; i++) {
        memcpy(bytes + o, "cfoo\nbar\n0", 10);
        o += 10;
    }
    bytes[o++] = 'N';
    bytes[o++] = '.';
    ckpt_scan *sc = scan(bytes, o);
    size_t count = ckpt_scan_finding_count(sc);
    assert_true(count <= 1000);
    const ckpt_scan_finding *last = ckpt_scan_finding_at(sc, count - 1);
    assert_int_equal(last->kind, CKPT_SCAN_KIND_LIMIT);
    assert_non_null(strstr(last->message, "more findings"));
    ckpt_scan_free(sc);
    free(bytes);
}

static void test_limits_are_findings(void **state)
{
    (void)state;
    ckpt_scan_options o;
    ckpt_scan_options_default(&o);
    o.limits.max_stack_depth = 8;
    ckpt_scan *sc = NULL;
    ckpt_error err;
    static const uint8_t deep[] = "\x80\x02]]]]]]]]]]]]]]]].";
    assert_int_equal(ckpt_scan_memory(deep, sizeof(deep) - 1, &o, &sc, &err), CKPT_OK);
    assert_int_equal(ckpt_scan_get_verdict(sc), CKPT_SCAN_VERDICT_UNSAFE);
    assert_non_null(scan_find(sc, CKPT_SCAN_KIND_LIMIT, NULL, NULL));
    ckpt_scan_free(sc);
}

/* ---- permissive reads ---------------------------------------------------- */

static void test_permissive_objects(void **state)
{
    (void)state;
    /* foo.Bar(1, x=2) via NEWOBJ_EX, BUILD {'a': 3}, SETITEMS {'k': 4}, APPENDS [5] */
    static const uint8_t pkl[] = "\x80\x04" "cfoo\nBar\n" "K\x01\x85}X\x01\x00\x00\x00xK\x02s"
                                 "\x92" "}X\x01\x00\x00\x00" "aK\x03sb"
                                 "(X\x01\x00\x00\x00kK\x04u" "(K\x05" "e.";
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(pkl, sizeof(pkl) - 1, NULL, &f, &err), CKPT_ERR_UNSAFE);
    assert_null(f);
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.flags |= CKPT_OPEN_PERMISSIVE;
    assert_int_equal(ckpt_open_memory(pkl, sizeof(pkl) - 1, &o, &f, &err), CKPT_OK);
    const ckpt_value *root = ckpt_file_root(f);
    assert_int_equal(ckpt_value_kind(root), CKPT_KIND_OBJECT);
    assert_string_equal(ckpt_kind_name(CKPT_KIND_OBJECT), "object");
    assert_string_equal(ckpt_value_str(root, NULL), "foo.Bar");
    assert_string_equal(ckpt_value_str(ckpt_value_object_class(root), NULL), "foo.Bar");
    const ckpt_value *args = ckpt_value_object_args(root);
    assert_int_equal(ckpt_value_kind(args), CKPT_KIND_TUPLE);
    assert_int_equal(ckpt_value_int(ckpt_value_item(args, 0)), 1);
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_value_object_kwargs(root), "x")), 2);
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_value_state(root), "a")), 3);
    assert_int_equal(ckpt_value_int(ckpt_value_get(ckpt_value_object_dict(root), "k")), 4);
    assert_int_equal(ckpt_value_int(ckpt_value_item(ckpt_value_object_items(root), 0)), 5);
    assert_int_equal(ckpt_value_len(root), 0);
    assert_null(ckpt_value_object_args(args));
    ckpt_close(f);
}

static void test_permissive_keeps_allowed_meanings(void **state)
{
    (void)state;
    /* an OrderedDict holding an object; BUILD on the class itself is dropped */
    static const uint8_t pkl[] = "\x80\x02" "ccollections\nOrderedDict\n)R"
                                 "X\x01\x00\x00\x00mcfoo\nMod\n)\x81s"
                                 "cfoo\nMod\n}b0.";
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.flags |= CKPT_OPEN_PERMISSIVE;
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(pkl, sizeof(pkl) - 1, &o, &f, &err), CKPT_OK);
    const ckpt_value *root = ckpt_file_root(f);
    assert_int_equal(ckpt_value_kind(root), CKPT_KIND_ORDERED_DICT);
    assert_int_equal(ckpt_value_kind(ckpt_value_get(root, "m")), CKPT_KIND_OBJECT);
    ckpt_close(f);
}

/* A module whose _modules hold a list shared 2^60 ways through the memo:
 * the search for tensors under a submodule looks at each list once, finds
 * none, and the walk passes the submodule over (a tensor under it would
 * make 2^60 paths, refused: test_hostile.c). */
static void test_permissive_shared_submodules(void **state)
{
    (void)state;
    enum { N = 60 };
    uint8_t pkl[1024];
    size_t n = 0;
#define PUT(s) (memcpy(pkl + n, (s), sizeof(s) - 1), n += sizeof(s) - 1)
    PUT("\x80\x02]q\x00");
    for (int i = 1; i <= N; i++) {
        /* L_i = [L_{i-1}, L_{i-1}], memo slot i */
        const uint8_t step[] = {']', '(', 'h', (uint8_t)(i - 1), 'h', (uint8_t)(i - 1), 'e',
                                'q', (uint8_t)i, '0'};
        memcpy(pkl + n, step, sizeof(step));
        n += sizeof(step);
    }
    PUT("cfoo\nNet\n)\x81}(X\x0b\x00\x00\x00_parameters}X\x08\x00\x00\x00_buffers}"
        "X\x08\x00\x00\x00_modules}(X\x01\x00\x00\x00" "ah");
    pkl[n++] = N;
    PUT("uub.");
#undef PUT
    assert_true(n <= sizeof(pkl));
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.flags |= CKPT_OPEN_PERMISSIVE;
    ckpt_file *f = NULL;
    ckpt_error err;
    assert_int_equal(ckpt_open_memory(pkl, n, &o, &f, &err), CKPT_OK);
    assert_int_equal(ckpt_file_tensor_count(f), 0);
    assert_int_equal(ckpt_value_kind(ckpt_file_root(f)), CKPT_KIND_OBJECT);
    ckpt_close(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safe_pickle),
        cmocka_unit_test(test_reduce_payload),
        cmocka_unit_test(test_severities),
        cmocka_unit_test(test_uses),
        cmocka_unit_test(test_stack_global_from_memo),
        cmocka_unit_test(test_break_after_payload),
        cmocka_unit_test(test_back_to_back),
        cmocka_unit_test(test_allow_list_edges),
        cmocka_unit_test(test_allow_option),
        cmocka_unit_test(test_formats_and_errors),
        cmocka_unit_test(test_many_findings_are_capped),
        cmocka_unit_test(test_limits_are_findings),
        cmocka_unit_test(test_permissive_objects),
        cmocka_unit_test(test_permissive_keeps_allowed_meanings),
        cmocka_unit_test(test_permissive_shared_submodules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
