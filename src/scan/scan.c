/*
 * scan.c - ckpt_scan: is a file safe to torch.load(weights_only=True)?
 *
 * The pickle interpreter runs in its inert mode: a global outside the
 * allow-list does not stop it but becomes an inert value, and every global
 * it names and every use of such a value (called by REDUCE, NEWOBJ, INST,
 * OBJ, BUILD target, ...) is reported here. Nothing is ever called. The
 * verdict mirrors torch's own weights-only allow-list exactly (the reader
 * accepts a few inert names torch refuses; a scan reports those), plus
 * what the caller allows, as torch.serialization.add_safe_globals does.
 *
 * Everything that is not a checkpoint torch loads unambiguously is unsafe:
 * broken pickles (with what came before the break), pickles back to back,
 * data after the end, archives inside archives, unknown formats. This file
 * holds the report, the lists, pickles and the formats without a zip;
 * scan_zip.c walks archives.
 */
#include "scan.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ======================================================================
 * Names
 * ====================================================================== */

const char *ckpt_scan_verdict_name(ckpt_scan_verdict verdict)
{
    switch (verdict) {
    case CKPT_SCAN_VERDICT_SAFE: return "safe";
    case CKPT_SCAN_VERDICT_WARNING: return "warning";
    default: return "unsafe";
    }
}

const char *ckpt_scan_kind_name(ckpt_scan_kind kind)
{
    switch (kind) {
    case CKPT_SCAN_KIND_GLOBAL: return "global";
    case CKPT_SCAN_KIND_BROKEN_PICKLE: return "broken_pickle";
    case CKPT_SCAN_KIND_EXTRA_PICKLE: return "extra_pickle";
    case CKPT_SCAN_KIND_TRAILING_DATA: return "trailing_data";
    case CKPT_SCAN_KIND_TORCHSCRIPT: return "torchscript";
    case CKPT_SCAN_KIND_DUPLICATE_NAME: return "duplicate_name";
    case CKPT_SCAN_KIND_NAME_MISMATCH: return "name_mismatch";
    case CKPT_SCAN_KIND_ZIP_FLAGS: return "zip_flags";
    case CKPT_SCAN_KIND_CRC_MISMATCH: return "crc_mismatch";
    case CKPT_SCAN_KIND_EXTRA_BYTES: return "extra_bytes";
    case CKPT_SCAN_KIND_ZIP_STRUCTURE: return "zip_structure";
    case CKPT_SCAN_KIND_UNSAFE_NAME: return "unsafe_name";
    case CKPT_SCAN_KIND_NESTED_ARCHIVE: return "nested_archive";
    case CKPT_SCAN_KIND_STORAGE: return "storage";
    case CKPT_SCAN_KIND_FORMAT: return "format";
    case CKPT_SCAN_KIND_LIMIT: return "limit";
    case CKPT_SCAN_KIND_OPCODE: return "opcode";
    }
    return "unknown";
}

const char *ckpt_scan_use_text(unsigned use, char *buf, size_t size)
{
    static const struct {
        unsigned bit;
        const char *text;
    } uses[] = {
        {CKPT_SCAN_USE_REDUCE, "called by REDUCE"},
        {CKPT_SCAN_USE_NEWOBJ, "called by NEWOBJ"},
        {CKPT_SCAN_USE_NEWOBJ_EX, "called by NEWOBJ_EX"},
        {CKPT_SCAN_USE_INST, "called by INST"},
        {CKPT_SCAN_USE_OBJ, "called by OBJ"},
        {CKPT_SCAN_USE_BUILD, "BUILD target"},
        {CKPT_SCAN_USE_ITEMS, "items set on its objects"},
        {CKPT_SCAN_USE_RESULT_CALLED, "its result called"},
    };
    if (!buf || size == 0)
        return buf;
    buf[0] = '\0';
    size_t n = 0;
    for (size_t i = 0; i < sizeof(uses) / sizeof(uses[0]); i++) {
        if (!(use & uses[i].bit))
            continue;
        int w = snprintf(buf + n, size - n, "%s%s", n ? ", " : "", uses[i].text);
        if (w < 0 || (size_t)w >= size - n)
            return buf;
        n += (size_t)w;
    }
    if (n == 0)
        snprintf(buf, size, "referenced");
    return buf;
}

/* ======================================================================
 * The report
 * ====================================================================== */

static const char *text_copy(ckpt_scan *r, const char *t)
{
    return ckpt__arena_strdup(&r->text, t ? t : "", t ? strlen(t) : 0);
}

/* A new finding, or NULL when the list is full (counted) or memory is out
 * (*st says which). */
static ckpt_scan_finding *new_finding(scan_ctx *s, ckpt_scan_kind kind, const char *record,
                                      uint64_t offset, uint64_t file_offset, const char *message,
                                      ckpt_status *st)
{
    ckpt_scan *r = s->report;
    *st = CKPT_OK;
    if (r->count >= SCAN_MAX_FINDINGS) {
        r->dropped++;
        return NULL;
    }
    if (r->count == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        ckpt_scan_finding *p = realloc(r->findings, cap * sizeof(*p));
        if (!p) {
            *st = ckpt__nomem(s->err);
            return NULL;
        }
        r->findings = p;
        r->cap = cap;
    }
    ckpt_scan_finding *f = &r->findings[r->count];
    memset(f, 0, sizeof(*f));
    f->struct_size = sizeof(*f);
    f->kind = kind;
    f->severity = CKPT_SCAN_VERDICT_UNSAFE;
    f->record = text_copy(r, record);
    f->message = text_copy(r, message);
    f->offset = offset;
    f->file_offset = file_offset;
    if (!f->record || !f->message) {
        *st = ckpt__nomem(s->err);
        return NULL;
    }
    r->count++;
    return f;
}

ckpt_status ckpt__scan_vadd(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                            uint64_t file_offset, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    ckpt_status st;
    new_finding(s, kind, record, offset, file_offset, msg, &st);
    return st;
}

ckpt_status ckpt__scan_add(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                           uint64_t file_offset, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ckpt_status st = ckpt__scan_vadd(s, kind, record, offset, file_offset, fmt, ap);
    va_end(ap);
    return st;
}

ckpt_status ckpt__scan_warn(scan_ctx *s, ckpt_scan_kind kind, const char *record, uint64_t offset,
                            uint64_t file_offset, const char *fmt, ...)
{
    va_list ap;
    size_t before = s->report->count;
    va_start(ap, fmt);
    ckpt_status st = ckpt__scan_vadd(s, kind, record, offset, file_offset, fmt, ap);
    va_end(ap);
    if (st == CKPT_OK && s->report->count > before)
        s->report->findings[before].severity = CKPT_SCAN_VERDICT_WARNING;
    return st;
}

/* ======================================================================
 * The allow-list: torch 2.6+'s _get_allowed_globals(), exactly
 * ====================================================================== */

/* Every "module.name" torch.load(weights_only=True) resolves, from
 * torch/_weights_only_unpickler.py: the named classes and functions, every
 * dtype by its str() (so torch.float32, never the alias torch.float), the
 * legacy tensor types and storage classes (torch._tensor_classes,
 * torch._storage_classes), the qschemes and the rebuild functions. Layouts
 * travel as torch.serialization._get_layout('torch.sparse_coo'), never as
 * globals. */
static const char *const TORCH_ALLOWED[] = {
    "collections.OrderedDict",
    "collections.Counter",
    "torch.nn.parameter.Parameter",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.Tensor",
    "torch.device",
    "_codecs.encode",
    "builtins.bytearray",
    "builtins.set",
    "builtins.complex",
    /* dtypes */
    "torch.float64", "torch.float32", "torch.float16", "torch.bfloat16",
    "torch.int64", "torch.int32", "torch.int16", "torch.int8", "torch.uint8", "torch.bool",
    "torch.complex128", "torch.complex64", "torch.complex32",
    "torch.quint8", "torch.qint8", "torch.qint32", "torch.quint4x2", "torch.quint2x4",
    "torch.float8_e5m2", "torch.float8_e4m3fn", "torch.float8_e5m2fnuz", "torch.float8_e4m3fnuz",
    "torch.float8_e8m0fnu", "torch.float4_e2m1fn_x2",
    "torch.bits8", "torch.bits16", "torch.bits1x8", "torch.bits2x4", "torch.bits4x2",
    "torch.uint16", "torch.uint32", "torch.uint64",
    "torch.uint1", "torch.uint2", "torch.uint3", "torch.uint4", "torch.uint5", "torch.uint6",
    "torch.uint7",
    "torch.int1", "torch.int2", "torch.int3", "torch.int4", "torch.int5", "torch.int6",
    "torch.int7",
    /* legacy tensor types */
    "torch.DoubleTensor", "torch.FloatTensor", "torch.HalfTensor", "torch.BFloat16Tensor",
    "torch.LongTensor", "torch.IntTensor", "torch.ShortTensor", "torch.CharTensor",
    "torch.ByteTensor", "torch.BoolTensor",
    "torch.cuda.DoubleTensor", "torch.cuda.FloatTensor", "torch.cuda.HalfTensor",
    "torch.cuda.BFloat16Tensor", "torch.cuda.LongTensor", "torch.cuda.IntTensor",
    "torch.cuda.ShortTensor", "torch.cuda.CharTensor", "torch.cuda.ByteTensor",
    "torch.cuda.BoolTensor",
    "torch.sparse.DoubleTensor", "torch.sparse.FloatTensor", "torch.sparse.HalfTensor",
    "torch.sparse.BFloat16Tensor", "torch.sparse.LongTensor", "torch.sparse.IntTensor",
    "torch.sparse.ShortTensor", "torch.sparse.CharTensor", "torch.sparse.ByteTensor",
    "torch.cuda.sparse.DoubleTensor", "torch.cuda.sparse.FloatTensor",
    "torch.cuda.sparse.HalfTensor", "torch.cuda.sparse.BFloat16Tensor",
    "torch.cuda.sparse.LongTensor", "torch.cuda.sparse.IntTensor",
    "torch.cuda.sparse.ShortTensor", "torch.cuda.sparse.CharTensor",
    "torch.cuda.sparse.ByteTensor",
    /* storage classes */
    "torch.DoubleStorage", "torch.FloatStorage", "torch.HalfStorage", "torch.BFloat16Storage",
    "torch.LongStorage", "torch.IntStorage", "torch.ShortStorage", "torch.CharStorage",
    "torch.ByteStorage", "torch.BoolStorage", "torch.ComplexDoubleStorage",
    "torch.ComplexFloatStorage", "torch.QInt8Storage", "torch.QInt32Storage",
    "torch.QUInt8Storage", "torch.QUInt4x2Storage", "torch.QUInt2x4Storage",
    "torch.cuda.DoubleStorage", "torch.cuda.FloatStorage", "torch.cuda.HalfStorage",
    "torch.cuda.BFloat16Storage", "torch.cuda.LongStorage", "torch.cuda.IntStorage",
    "torch.cuda.ShortStorage", "torch.cuda.CharStorage", "torch.cuda.ByteStorage",
    "torch.cuda.BoolStorage", "torch.cuda.ComplexDoubleStorage",
    "torch.cuda.ComplexFloatStorage",
    "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
    /* qschemes */
    "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
    "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
    /* rebuild functions */
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_qtensor", "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_wrapper_subclass", "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._utils._rebuild_device_tensor_from_cpu_tensor",
    "torch._tensor._rebuild_from_type_v2",
};

/* Globals that run no code: they only build data (a str subclass, numpy
 * arrays and dtypes), but torch's default weights-only reader refuses them.
 * Named (and called as a pickle calls them) they make a warning, not an
 * unsafe file; anything that calls what they return is unsafe. */
static const char *const WARNING_GLOBALS[] = {
    "torch.torch_version.TorchVersion",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer", /* protocol 5 */
    "numpy.ndarray", "numpy.dtype",
};

/* Modules torch refuses whatever the caller allows. */
static const char *const BLOCKED_MODULES[] = {"sys", "os", "posix", "nt"};

/* Well-known ways to run code, commands or other loaders: for the message
 * only (runs_code). A module entry covers its submodules. */
static const char *const RUNS_CODE_MODULES[] = {
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "runpy", "pty", "socket",
    "shutil", "importlib", "pickle", "_pickle", "marshal", "types", "ctypes", "_ctypes",
    "webbrowser", "code", "codeop", "cProfile", "profile", "trace", "timeit", "bdb", "pdb",
    "doctest", "idlelib", "venv", "ensurepip", "pip", "multiprocessing", "asyncio", "commands",
    "popen2", "dill", "cloudpickle", "_aix_support", "_osx_support",
};
static const char *const RUNS_CODE_NAMES[] = {
    "builtins.eval", "builtins.exec", "builtins.execfile", "builtins.compile",
    "builtins.__import__", "builtins.getattr", "builtins.setattr", "builtins.delattr",
    "builtins.open", "builtins.apply", "builtins.input", "builtins.breakpoint",
    "builtins.globals", "builtins.locals", "builtins.vars",
    "operator.attrgetter", "operator.methodcaller", "_operator.attrgetter",
    "_operator.methodcaller",
    "pydoc.locate", "pydoc.pipepager", "pydoc.tempfilepager", "pydoc.pager",
    "pkgutil.resolve_name", "io.open", "_io.open", "uuid._get_command_stdout",
    "imaplib.IMAP4_stream", "torch.load", "torch.serialization.load",
    "torch.utils.collect_env.run", "torch.utils.collect_env.run_and_read_all",
    "torch.jit.unsupported_tensor_ops.execWrapper", "torch._inductor.codecache.compile_file",
    "numpy.testing._private.utils.runstring",
};

static bool full_name_is(const char *module, size_t mlen, const char *name, size_t nlen,
                         const char *full)
{
    size_t flen = strlen(full);
    return flen == mlen + 1 + nlen && memcmp(full, module, mlen) == 0 && full[mlen] == '.' &&
           memcmp(full + mlen + 1, name, nlen) == 0;
}

static bool module_is(const char *module, size_t mlen, const char *m)
{
    size_t n = strlen(m);
    return mlen == n && memcmp(module, m, n) == 0;
}

static bool module_under(const char *module, size_t mlen, const char *m)
{
    size_t n = strlen(m);
    return mlen >= n && memcmp(module, m, n) == 0 && (mlen == n || module[n] == '.');
}

static bool in_list(const char *const *list, size_t n, const char *module, size_t mlen,
                    const char *name, size_t nlen)
{
    for (size_t i = 0; i < n; i++) {
        if (list[i] && full_name_is(module, mlen, name, nlen, list[i]))
            return true;
    }
    return false;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* numpy.dtypes.Float32DType and the like (numpy >= 1.25 pickles dtypes so) */
static bool is_numpy_dtype_class(const char *module, size_t mlen, const char *name, size_t nlen)
{
    return module_is(module, mlen, "numpy.dtypes") && nlen > 5 &&
           memcmp(name + nlen - 5, "DType", 5) == 0;
}

static bool is_blocked_module(const char *module, size_t mlen)
{
    for (size_t i = 0; i < COUNT(BLOCKED_MODULES); i++) {
        if (module_is(module, mlen, BLOCKED_MODULES[i]))
            return true;
    }
    return false;
}

static bool runs_code(const char *module, size_t mlen, const char *name, size_t nlen)
{
    for (size_t i = 0; i < COUNT(RUNS_CODE_MODULES); i++) {
        if (module_under(module, mlen, RUNS_CODE_MODULES[i]))
            return true;
    }
    return in_list(RUNS_CODE_NAMES, COUNT(RUNS_CODE_NAMES), module, mlen, name, nlen);
}

/* ======================================================================
 * Pickles
 * ====================================================================== */

typedef struct pickle_user {
    scan_ctx *s;
    const char *record;
    uint64_t file_base;
    ckpt__persistent_load_fn pl;
    void *pl_user;
    size_t globals;
    bool report;              /* false: a dry run that only counts */
    ckpt_error framing;       /* the first break of the framing rules, if any */
} pickle_user;

static size_t use_slot(const scan_ctx *s, const void *v)
{
    uintptr_t h = (uintptr_t)v;
    h ^= h >> 17;
    h *= (uintptr_t)0x9e3779b97f4a7c15ull;
    return (size_t)(h >> 7) & (s->uses_cap - 1);
}

static ckpt_status remember_use(scan_ctx *s, const void *v, size_t finding)
{
    if ((s->uses_count + 1) * 2 > s->uses_cap) {
        size_t cap = s->uses_cap ? s->uses_cap * 2 : 64;
        scan_use_slot *old = s->uses;
        size_t old_cap = s->uses_cap;
        s->uses = calloc(cap, sizeof(*s->uses));
        if (!s->uses) {
            s->uses = old;
            return ckpt__nomem(s->err);
        }
        s->uses_cap = cap;
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].value)
                continue;
            size_t k = use_slot(s, old[i].value);
            while (s->uses[k].value)
                k = (k + 1) & (cap - 1);
            s->uses[k] = old[i];
        }
        free(old);
    }
    size_t k = use_slot(s, v);
    while (s->uses[k].value && s->uses[k].value != v)
        k = (k + 1) & (s->uses_cap - 1);
    if (!s->uses[k].value)
        s->uses_count++;
    s->uses[k].value = v;
    s->uses[k].finding = finding;
    return CKPT_OK;
}

static void forget_uses(scan_ctx *s)
{
    if (s->uses_cap)
        memset(s->uses, 0, s->uses_cap * sizeof(*s->uses));
    s->uses_count = 0;
}

static ckpt_status on_global(void *user, const char *module, size_t mlen, const char *name,
                             size_t nlen, const ckpt_value *v, uint64_t offset)
{
    pickle_user *u = user;
    scan_ctx *s = u->s;
    if (!u->report) {
        if (ckpt__python_dotted_name(module, mlen) && ckpt__python_dotted_name(name, nlen))
            u->globals++;
        return CKPT_OK;
    }
    u->globals++;
    /* torch maps Python 2 module names before it looks (IMPORT_MAPPING) */
    const char *mod = module;
    size_t ml = mlen;
    if (module_is(module, mlen, "__builtin__")) {
        mod = "builtins";
        ml = 8;
    }
    bool blocked = is_blocked_module(mod, ml);
    if (s->dcp && ckpt__dcp_global_allowed(module, mlen, name, nlen))
        return CKPT_OK; /* judged by the DCP reader (scan_dcp.c) */
    if (!blocked && (in_list(TORCH_ALLOWED, COUNT(TORCH_ALLOWED), mod, ml, name, nlen) ||
                     in_list(s->allow, s->allow_count, mod, ml, name, nlen) ||
                     in_list(s->allow, s->allow_count, module, mlen, name, nlen)))
        return CKPT_OK;

    char mq[160], nq[160], full[330], msg[1600];
    snprintf(full, sizeof(full), "%s.%s", ckpt__quote(mq, sizeof(mq), module, mlen, false),
             ckpt__quote(nq, sizeof(nq), name, nlen, false));
    bool code = runs_code(mod, ml, name, nlen);
    bool known = !(v && v->kind == CKPT_KIND_GLOBAL && v->global_id == CKPT__G_UNKNOWN);
    bool torch_version = full_name_is(mod, ml, name, nlen, "torch.torch_version.TorchVersion");
    bool warning = !blocked && (in_list(WARNING_GLOBALS, COUNT(WARNING_GLOBALS), mod, ml, name,
                                        nlen) ||
                                is_numpy_dtype_class(mod, ml, name, nlen));
    if (warning && torch_version)
        snprintf(msg, sizeof(msg),
                 "'%s' runs no code (a str subclass, what torch.__version__ is), but "
                 "torch.load(weights_only=True) refuses it from torch 2.6 on: load it after "
                 "torch.serialization.add_safe_globals([torch.torch_version.TorchVersion]), or "
                 "with ckpt (--allow %s makes this scan safe)", full, full);
    else if (warning)
        snprintf(msg, sizeof(msg),
                 "'%s' only builds a numpy array, but torch.load(weights_only=True) refuses "
                 "it: load it after torch.serialization.add_safe_globals([%s]) (and the other "
                 "numpy names listed), or with ckpt (--allow %s makes this scan safe)",
                 full, full, full);
    else if (blocked)
        snprintf(msg, sizeof(msg),
                 "'%s' runs code when unpickled; torch refuses module '%.*s' even when asked to "
                 "allow it", full, (int)(ml > 40 ? 40 : ml), mod);
    else if (known)
        snprintf(msg, sizeof(msg),
                 "'%s' is not in torch's weights-only allow-list: torch.load(weights_only=True) "
                 "refuses the file (ckpt reads it as inert data; --allow %s accepts it)",
                 full, full);
    else if (code)
        snprintf(msg, sizeof(msg), "'%s' runs code when unpickled", full);
    else
        snprintf(msg, sizeof(msg),
                 "'%s' is outside the weights-only allow-list: unpickling it imports and calls "
                 "arbitrary Python", full);
    ckpt_status st;
    ckpt_scan_finding *f = new_finding(s, CKPT_SCAN_KIND_GLOBAL, u->record, offset,
                                       ckpt__scan_at(u->file_base, offset), msg, &st);
    if (!f)
        return st;
    f->global = text_copy(s->report, full);
    if (!f->global)
        return ckpt__nomem(s->err);
    f->runs_code = code;
    if (warning)
        f->severity = CKPT_SCAN_VERDICT_WARNING;
    return remember_use(s, v, (size_t)(f - s->report->findings));
}

static ckpt_status on_use(void *user, const ckpt_value *global, unsigned use, uint64_t offset)
{
    pickle_user *u = user;
    scan_ctx *s = u->s;
    (void)offset;
    if (!u->report || !s->uses_cap)
        return CKPT_OK;
    size_t k = use_slot(s, global);
    while (s->uses[k].value) {
        if (s->uses[k].value == global) {
            ckpt_scan_finding *f = &s->report->findings[s->uses[k].finding];
            f->use |= use;
            if (use & CKPT_SCAN_USE_RESULT_CALLED)
                f->severity = CKPT_SCAN_VERDICT_UNSAFE; /* what it built is called */
            return CKPT_OK;
        }
        k = (k + 1) & (s->uses_cap - 1);
    }
    return CKPT_OK;
}

/* Appends text to buf (len used of cap), cut with "..." past max bytes. */
static void call_put(char *buf, size_t cap, size_t *len, const char *t, size_t tlen, size_t max)
{
    bool cut = tlen > max;
    if (cut)
        tlen = max;
    if (*len + tlen + 4 >= cap)
        return;
    memcpy(buf + *len, t, tlen);
    *len += tlen;
    if (cut) {
        memcpy(buf + *len, "...", 3);
        *len += 3;
    }
    buf[*len] = 0;
}

/* The first direct call of a reported global, as Python reads it:
 * "posix.system('id')", each argument cut at 80 bytes. */
static ckpt_status on_call(void *user, const ckpt_value *global, ckpt_value *const *args,
                           size_t nargs, const ckpt_value *kwargs)
{
    pickle_user *u = user;
    scan_ctx *s = u->s;
    if (!u->report || !s->uses_cap)
        return CKPT_OK;
    size_t k = use_slot(s, global);
    while (s->uses[k].value && s->uses[k].value != global)
        k = (k + 1) & (s->uses_cap - 1);
    if (!s->uses[k].value)
        return CKPT_OK;
    ckpt_scan_finding *f = &s->report->findings[s->uses[k].finding];
    if (f->call || !f->global)
        return CKPT_OK;
    char text[1024], arg[128];
    size_t len = 0;
    text[0] = 0;
    call_put(text, sizeof(text), &len, f->global, strlen(f->global), 200);
    call_put(text, sizeof(text), &len, "(", 1, 1);
    for (size_t i = 0; i < nargs; i++) {
        if (i)
            call_put(text, sizeof(text), &len, ", ", 2, 2);
        size_t n = ckpt_value_repr(args[i], arg, sizeof(arg));
        call_put(text, sizeof(text), &len, arg, n < sizeof(arg) ? n : sizeof(arg) - 1, 80);
    }
    if (kwargs && kwargs->kind == CKPT_KIND_DICT) {
        for (size_t i = 0; i < kwargs->u.dict.len; i++) {
            const ckpt_value *key = kwargs->u.dict.keys[i];
            if (i || nargs)
                call_put(text, sizeof(text), &len, ", ", 2, 2);
            if (key && key->kind == CKPT_KIND_STR)
                call_put(text, sizeof(text), &len, key->u.s.ptr, key->u.s.len, 40);
            call_put(text, sizeof(text), &len, "=", 1, 1);
            size_t n = ckpt_value_repr(kwargs->u.dict.vals[i], arg, sizeof(arg));
            call_put(text, sizeof(text), &len, arg, n < sizeof(arg) ? n : sizeof(arg) - 1, 80);
        }
    }
    call_put(text, sizeof(text), &len, ")", 1, 1);
    f->call = text_copy(s->report, text);
    return f->call ? CKPT_OK : ckpt__nomem(s->err);
}

static ckpt_status on_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                 uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    pickle_user *u = user;
    if (!u->pl) {
        /* a plain pickle: torch's weights-only reader refuses it too */
        return ckpt__fail(err, CKPT_ERR_FORMAT, u->record, offset,
                          "persistent id in a pickle that has no storages");
    }
    ckpt__pickle_ctx inner = *ctx;
    inner.user = u->pl_user;
    return u->pl(u->pl_user, &inner, pid, offset, out, err);
}

static ckpt_status run_pickle(scan_ctx *s, ckpt__arena *arena, const uint8_t *data, size_t size,
                              pickle_user *u, scan_pickle_result *res, ckpt_error *perr)
{
    ckpt__pickle_ctx ctx = {
        .limits = &s->limits,
        .arena = arena,
        .record = u->record,
        .persistent_load = on_persistent,
        .user = u,
        .protocol = -1,
        .flags = CKPT__PICKLE_INERT | CKPT__PICKLE_NO_FAIL,
        .on_global = on_global,
        .on_use = on_use,
        .on_call = on_call,
        .ops_seen = s->torch_ops,
        .framing = &u->framing,
    };
    memset(&u->framing, 0, sizeof(u->framing));
    memset(res, 0, sizeof(*res));
    forget_uses(s);
    ckpt_status st = ckpt__unpickle(&ctx, data, size, &res->consumed, &res->value, perr);
    res->globals = u->globals;
    res->next = ctx.stop_frame_end > res->consumed ? ctx.stop_frame_end : res->consumed;
    return st;
}

ckpt_status ckpt__scan_pickle(scan_ctx *s, ckpt__arena *arena, const uint8_t *data, size_t size,
                              const char *record, uint64_t file_base, ckpt__persistent_load_fn pl,
                              void *pl_user, scan_pickle_result *res)
{
    pickle_user u = {.s = s, .record = record, .file_base = file_base, .pl = pl,
                     .pl_user = pl_user, .report = true};
    ckpt_error perr;
    memset(&perr, 0, sizeof(perr));
    ckpt_status st = run_pickle(s, arena, data, size, &u, res, &perr);
    forget_uses(s);
    if (st != CKPT_ERR_NOMEM && u.framing.status != CKPT_OK) {
        uint64_t off = u.framing.offset;
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_BROKEN_PICKLE, record, off,
                                            ckpt__scan_at(file_base, off),
                                            "the pickle's framing breaks here (%s); ckpt reads on "
                                            "as if there were no frame",
                                            u.framing.message));
    }
    if (st == CKPT_OK && res->next > res->consumed) {
        uint64_t stop = res->consumed - 1;
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, record, stop, ckpt__scan_at(file_base, stop),
                              "the frame runs %zu byte%s past STOP (to byte %zu): Python's "
                              "unpickler reading from a file continues after the frame, not "
                              "after STOP",
                              res->next - res->consumed,
                              res->next - res->consumed == 1 ? "" : "s", res->next);
    }
    if (st == CKPT_OK)
        return CKPT_OK;
    if (st == CKPT_ERR_NOMEM) {
        if (s->err && perr.status == CKPT_ERR_NOMEM)
            *s->err = perr; /* else a callback already said so */
        return st;
    }
    res->broke = true;
    uint64_t off = perr.offset;
    if (st == CKPT_ERR_LIMIT)
        return ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, record, off, ckpt__scan_at(file_base, off),
                              "the pickle is not checked past this point: %s", perr.message);
    return ckpt__scan_add(s, CKPT_SCAN_KIND_BROKEN_PICKLE, record, off, ckpt__scan_at(file_base, off),
                          "the pickle breaks here (%s); what came before it was read and reported",
                          perr.message);
}

ckpt_status ckpt__scan_pickle_alone(scan_ctx *s, const uint8_t *data, size_t size,
                                    const char *record, uint64_t file_base,
                                    scan_pickle_result *res)
{
    ckpt__arena arena;
    ckpt__arena_init(&arena, s->limits.max_value_bytes);
    ckpt_status st = ckpt__scan_pickle(s, &arena, data, size, record, file_base, NULL, NULL, res);
    ckpt__arena_free(&arena);
    res->value = NULL;
    return st;
}

bool ckpt__scan_is_pickle(scan_ctx *s, const uint8_t *data, size_t size)
{
    if (size == 0)
        return false;
    ckpt__arena arena;
    ckpt__arena_init(&arena, s->limits.max_value_bytes);
    pickle_user u = {.s = s, .record = "", .file_base = CKPT_NO_OFFSET, .report = false};
    scan_pickle_result res;
    ckpt_error perr;
    ckpt_status st = run_pickle(s, &arena, data, size, &u, &res, &perr);
    ckpt__arena_free(&arena);
    return st == CKPT_OK || res.globals > 0;
}

/* ======================================================================
 * Pickle streams: plain pickles and the legacy torch format
 * ====================================================================== */

static char *where_record(const char *where, const char *name, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s%s", where ? where : "", name);
    return buf;
}

/* A persistent id in a pickle read on its own where a reader that goes on
 * after STOP would read it (the rest of a legacy file): an inert value. */
static ckpt_status inert_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                    uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    (void)user;
    (void)ctx;
    (void)offset;
    (void)err;
    *out = (ckpt_value *)(uintptr_t)pid;
    return CKPT_OK;
}

/*
 * Where the next pickle of a stream starts, after the one scanned at
 * data[pos..] (res): after its STOP for a reader of bytes, but at the end
 * of the frame STOP sat in when that frame runs on (rule (d) of FRAME in
 * pickle_read.c, reported by ckpt__scan_pickle) for Python's unpickler
 * reading a file, which is how torch reads pickles one after another. The
 * bytes in between are scanned for the pickles a reader that goes on after
 * STOP would read; *next gets the frame's end, where torch reads on.
 */
static ckpt_status next_in_stream(scan_ctx *s, const uint8_t *data, uint64_t pos,
                                  const scan_pickle_result *res, const char *record,
                                  uint64_t file_base, uint64_t *next)
{
    uint64_t at = pos + res->consumed, end = pos + res->next;
    *next = end;
    for (unsigned k = 1; at < end && k <= SCAN_MAX_PICKLES; k++) {
        const uint8_t *p = data + at;
        size_t left = (size_t)(end - at);
        if (!ckpt__scan_is_pickle(s, p, left))
            return CKPT_OK;
        char rec[300];
        snprintf(rec, sizeof(rec), "%s: pickle %u after STOP, inside the frame", record, k);
        if (k == 1)
            CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_EXTRA_PICKLE, rec, 0,
                                                ckpt__scan_at(file_base, at),
                                                "pickles between STOP and the end of its frame "
                                                "(from byte %llu to %llu): torch reading the file "
                                                "skips them, readers that go on after STOP read "
                                                "them; scanned",
                                                (unsigned long long)at, (unsigned long long)end));
        ckpt__arena arena;
        ckpt__arena_init(&arena, s->limits.max_value_bytes);
        scan_pickle_result r;
        ckpt_status st = ckpt__scan_pickle(s, &arena, p, left, rec, ckpt__scan_at(file_base, at),
                                           inert_persistent, NULL, &r);
        ckpt__arena_free(&arena);
        CKPT_RETURN_IF_ERROR(st);
        if (r.broke || r.next == 0)
            return CKPT_OK;
        at += r.next;
    }
    return CKPT_OK;
}

/* What follows the last pickle a stream format reads: another pickle
 * (reported, then scanned) or plain trailing bytes. */
static ckpt_status scan_trailing(scan_ctx *s, const uint8_t *data, uint64_t size, uint64_t pos,
                                 const char *where, uint64_t file_base, const char *after)
{
    char rec[256];
    unsigned k = 2;
    while (pos < size) {
        const uint8_t *p = data + pos;
        size_t left = (size_t)(size - pos);
        if (k > SCAN_MAX_PICKLES)
            return ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, where_record(where, "", rec, sizeof(rec)),
                                  pos, ckpt__scan_at(file_base, pos),
                                  "more than %d pickles back to back: the rest is not checked",
                                  SCAN_MAX_PICKLES);
        if (!ckpt__scan_is_pickle(s, p, left))
            return ckpt__scan_add(s, CKPT_SCAN_KIND_TRAILING_DATA,
                                  where_record(where, "", rec, sizeof(rec)), pos,
                                  ckpt__scan_at(file_base, pos),
                                  "%llu bytes after %s: readers that stop there never see them",
                                  (unsigned long long)left, after);
        char name[32];
        snprintf(name, sizeof(name), "pickle %u", k);
        where_record(where, name, rec, sizeof(rec));
        CKPT_RETURN_IF_ERROR(
            ckpt__scan_add(s, CKPT_SCAN_KIND_EXTRA_PICKLE, rec, 0, ckpt__scan_at(file_base, pos),
                           "another pickle starts at byte %llu, after %s: "
                           "pickle.load and torch.load stop before it, other readers "
                           "run it",
                           (unsigned long long)pos, after));
        scan_pickle_result res;
        ckpt_status st = ckpt__scan_pickle_alone(s, p, left, rec, ckpt__scan_at(file_base, pos),
                                                 &res);
        CKPT_RETURN_IF_ERROR(st);
        if (res.broke || res.consumed == 0)
            return CKPT_OK;
        CKPT_RETURN_IF_ERROR(next_in_stream(s, data, pos, &res, rec, file_base, &pos));
        after = res.next > res.consumed ? "the previous pickle's frame"
                                        : "the previous pickle's STOP";
        k++;
    }
    return CKPT_OK;
}

/* The opcodes torch's weights-only reader runs (torch 2.6,
 * torch/_weights_only_unpickler.py): protocol 2 as torch.save writes it.
 * Any other opcode makes torch.load(weights_only=True) refuse the file with
 * "Unsupported operand N" (FRAME and SHORT_BINUNICODE of protocol 4,
 * MEMOIZE, STACK_GLOBAL, BINBYTES, the text opcodes of protocol 0, ...). */
static const char TORCH_OPCODES[] = "c\x81Rbaesu(t\x85\x86\x87N\x89\x88)]}\x8fJKMGXUQhjqr\x8a\x80.";

ckpt_status ckpt__scan_torch_opcodes(scan_ctx *s, const uint64_t ops[4], const char *record,
                                     uint64_t file_offset)
{
    for (unsigned op = 0; op < 256; op++) {
        if (!(ops[op >> 6] & ((uint64_t)1 << (op & 63))) ||
            memchr(TORCH_OPCODES, (int)op, sizeof(TORCH_OPCODES) - 1))
            continue;
        CKPT_RETURN_IF_ERROR(ckpt__scan_warn(
            s, CKPT_SCAN_KIND_OPCODE, record, CKPT_NO_OFFSET, file_offset,
            "opcode %s (0x%02x), which torch's weights-only reader lacks: "
            "torch.load(weights_only=True) refuses the file (\"Unsupported operand %u\"); "
            "ckpt reads it, and re-saving it with ckpt convert writes what torch reads",
            ckpt__pickle_opcode_name((uint8_t)op), op, op));
    }
    return CKPT_OK;
}

ckpt_status ckpt__scan_after_pickle(scan_ctx *s, const uint8_t *data, uint64_t size,
                                    const scan_pickle_result *res, const char *record,
                                    const char *where, uint64_t file_base)
{
    uint64_t next;
    CKPT_RETURN_IF_ERROR(next_in_stream(s, data, 0, res, record, file_base, &next));
    return scan_trailing(s, data, size, next, where, file_base,
                         next > res->consumed ? "the pickle's frame" : "the pickle's STOP");
}

/* The legacy object pickle's storages, by root key. */
typedef struct legacy_root {
    char key[72];
    uint64_t nbytes;
    size_t elem_size;
    bool listed;
} legacy_root;

typedef struct legacy_scan {
    scan_ctx *s;
    uint64_t file_base;        /* where the object pickle starts in the file */
    legacy_root *roots;
    size_t count, cap;
    ckpt_status fatal;
} legacy_scan;

static legacy_root *legacy_find(legacy_scan *L, const char *key)
{
    for (size_t i = 0; i < L->count; i++) {
        if (strcmp(L->roots[i].key, key) == 0)
            return &L->roots[i];
    }
    return NULL;
}

/* ('storage', storage_type, root_key, location, numel, view) as torch's
 * legacy loader reads it; ('module', cls, file, source) gives the class. */
static ckpt_status legacy_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                     uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    legacy_scan *L = user;
    *out = (ckpt_value *)(uintptr_t)pid;
    const ckpt_value *kind = pid && pid->kind == CKPT_KIND_TUPLE && pid->u.seq.len >= 2
                                 ? pid->u.seq.items[0] : NULL;
    if (kind && kind->kind == CKPT_KIND_STR && strcmp(kind->u.s.ptr, "module") == 0) {
        *out = pid->u.seq.items[1];
        return CKPT_OK;
    }
    ckpt__storage_pid p;
    ckpt_error why;
    if (ckpt__storage_pid_parse(pid, 6, ctx->record, offset, &p, &why) != CKPT_OK)
        return ckpt__scan_add(L->s, CKPT_SCAN_KIND_STORAGE, ctx->record, offset,
                              ckpt__scan_at(L->file_base, offset),
                              "a persistent id torch's loader does not read as a storage "
                              "(%s): torch.load fails on it", why.message);
    if (L->count > 1000000)
        return CKPT_OK;
    legacy_root *r = legacy_find(L, p.key);
    if (!r) {
        if (L->count == L->cap) {
            size_t cap = L->cap ? L->cap * 2 : 16;
            legacy_root *n = realloc(L->roots, cap * sizeof(*n));
            if (!n)
                return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
            L->roots = n;
            L->cap = cap;
        }
        r = &L->roots[L->count++];
        memset(r, 0, sizeof(*r));
        snprintf(r->key, sizeof(r->key), "%s", p.key);
        r->nbytes = p.nbytes;
        r->elem_size = ckpt__storage_elem_size(p.dtype);
    }
    ckpt__storage *st = ckpt__arena_alloc(ctx->arena, sizeof(*st));
    if (!st)
        return ckpt__fail(err, CKPT_ERR_NOMEM, ctx->record, offset, "out of memory");
    st->key = p.key;
    st->location = p.location;
    st->dtype = p.dtype;
    st->untyped = p.untyped;
    st->nbytes = r->nbytes;
    st->record_index = -1;
    st->file_offset = CKPT_NO_OFFSET;
    st->record = "legacy storage";
    return ckpt__storage_value(ctx->arena, st, ctx->record, offset, out, err);
}

/* The legacy format after its magic number: protocol version, sys_info,
 * the object, the storage keys, then each storage's count and bytes (the
 * counts are read, the bytes skipped). */
static ckpt_status scan_legacy(scan_ctx *s, const uint8_t *data, uint64_t size, uint64_t pos,
                               const char *where, uint64_t file_base, uint64_t ops[4])
{
    static const char *const names[] = {"legacy protocol version", "legacy sys_info",
                                        "legacy object pickle", "legacy storage keys"};
    legacy_scan L = {.s = s};
    ckpt__arena arena;
    ckpt__arena_init(&arena, s->limits.max_value_bytes);
    ckpt_status st = CKPT_OK;
    ckpt_value *keys = NULL;
    char rec[256];
    for (int i = 0; i < 4; i++) {
        where_record(where, names[i], rec, sizeof(rec));
        if (pos >= size) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                "the file ends before this pickle: torch.load fails on it");
            goto out;
        }
        scan_pickle_result res;
        uint64_t start = pos;
        L.file_base = ckpt__scan_at(file_base, pos);
        s->torch_ops = ops; /* torch's weights-only reader runs each of these */
        st = ckpt__scan_pickle(s, &arena, data + pos, (size_t)(size - pos), rec,
                               ckpt__scan_at(file_base, pos), i == 2 ? legacy_persistent : NULL,
                               i == 2 ? &L : NULL, &res);
        s->torch_ops = NULL;
        if (st != CKPT_OK || res.broke)
            goto out;
        /* torch reads the next pickle where its reader of the file is */
        st = next_in_stream(s, data, pos, &res, rec, file_base, &pos);
        if (st != CKPT_OK)
            goto out;
        const ckpt_value *v = res.value;
        if (i == 0 && (!v || v->kind != CKPT_KIND_INT || v->u.i != 1001)) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, CKPT_NO_OFFSET,
                                "protocol version is not 1001: torch.load refuses it");
            if (st != CKPT_OK)
                goto out;
        }
        /* torch never reads sys_info: the storages' bytes are loaded as
         * saved, little-endian, whatever it says */
        const ckpt_value *le = i == 1 ? ckpt_value_get(v, "little_endian") : NULL;
        if (le && ((le->kind == CKPT_KIND_BOOL && !le->u.b) || (le->kind == CKPT_KIND_INT && !le->u.i))) {
            st = ckpt__scan_warn(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, start),
                                 "sys_info says the storages were saved big-endian "
                                 "(little_endian=False), but torch never reads sys_info and "
                                 "loads their bytes as little-endian: the weights torch (and "
                                 "ckpt) load are not the ones that were saved; nothing runs, "
                                 "but check the weights before use");
            if (st != CKPT_OK)
                goto out;
        }
        if (i == 3)
            keys = res.value;
    }
    where_record(where, "legacy storage keys", rec, sizeof(rec));
    if (!keys || keys->kind != CKPT_KIND_LIST) {
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, CKPT_NO_OFFSET,
                            "the storage keys are not a list: torch.load fails on it");
        goto out;
    }
    for (size_t i = 0; i < keys->u.seq.len; i++) {
        const ckpt_value *k = keys->u.seq.items[i];
        legacy_root *r = k && k->kind == CKPT_KIND_STR ? legacy_find(&L, k->u.s.ptr) : NULL;
        if (!r || r->listed) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, CKPT_NO_OFFSET,
                                "storage key %zu is %s: torch.load fails on it", i,
                                r ? "listed twice" : "not a storage of the object");
            goto out;
        }
        r->listed = true;
        char srec[300];
        snprintf(srec, sizeof(srec), "%sstorage %s", where ? where : "", r->key);
        if (size - pos < 8) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_STORAGE, srec, 0, ckpt__scan_at(file_base, pos),
                                "the file ends before the storage's element count");
            goto out;
        }
        uint64_t numel = ckpt__le64(data + pos), nbytes;
        if (!ckpt__mul_u64(numel, r->elem_size, &nbytes) || nbytes != r->nbytes) {
            st =
                ckpt__scan_add(s, CKPT_SCAN_KIND_STORAGE, srec, 0, ckpt__scan_at(file_base, pos),
                               "the file holds %llu elements for this storage, the object declares "
                               "%llu: torch reads past the storage",
                               (unsigned long long)numel,
                               (unsigned long long)(r->nbytes / (r->elem_size ? r->elem_size : 1)));
            goto out;
        }
        if (size - pos - 8 < nbytes) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_STORAGE, srec, 8, ckpt__scan_at(file_base, pos + 8),
                                "the storage's %llu bytes run past the end of the file",
                                (unsigned long long)nbytes);
            goto out;
        }
        pos += 8 + nbytes;
    }
    for (size_t i = 0; i < L.count; i++) {
        if (!L.roots[i].listed) {
            char srec[300];
            snprintf(srec, sizeof(srec), "%sstorage %s", where ? where : "", L.roots[i].key);
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_STORAGE, srec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                "the storage has no bytes in the file: torch.load fails on it");
            goto out;
        }
    }
    st = scan_trailing(s, data, size, pos, where, file_base, "the last storage");
out:
    free(L.roots);
    ckpt__arena_free(&arena);
    return st;
}

static ckpt_status scan_pickle_stream(scan_ctx *s, const uint8_t *data, uint64_t size,
                                      const char *where, uint64_t file_base, bool top)
{
    char rec[256];
    where_record(where, "pickle", rec, sizeof(rec));
    ckpt__arena arena;
    ckpt__arena_init(&arena, s->limits.max_value_bytes);
    scan_pickle_result res;
    size_t n = size > SIZE_MAX ? SIZE_MAX : (size_t)size;
    uint64_t ops[4] = {0};
    s->torch_ops = ops;
    ckpt_status st = ckpt__scan_pickle(s, &arena, data, n, rec, file_base, NULL, NULL, &res);
    s->torch_ops = NULL;
    bool legacy = st == CKPT_OK && !res.broke && ckpt__is_legacy_magic(res.value);
    ckpt__arena_free(&arena);
    CKPT_RETURN_IF_ERROR(st);
    if (top)
        s->report->format = legacy ? "torch-legacy" : "pickle";
    if (res.broke)
        return CKPT_OK;
    if (!legacy)
        return ckpt__scan_after_pickle(s, data, size, &res, rec, where, file_base);
    uint64_t next;
    CKPT_RETURN_IF_ERROR(next_in_stream(s, data, 0, &res, rec, file_base, &next));
    CKPT_RETURN_IF_ERROR(scan_legacy(s, data, size, next, where, file_base, ops));
    return ckpt__scan_torch_opcodes(s, ops, where_record(where, "legacy pickles", rec, sizeof(rec)),
                                    ckpt__scan_at(file_base, 0));
}

/* ======================================================================
 * Other formats
 * ====================================================================== */

static ckpt_status scan_safetensors(scan_ctx *s, const uint8_t *data, uint64_t size,
                                    const char *where)
{
    ckpt_open_options o;
    ckpt_open_options_default(&o);
    o.limits = s->limits;
    o.flags |= CKPT__OPEN_NO_PICKLE_AT_ZERO; /* the scan checks that itself */
    ckpt_file *f = NULL;
    ckpt_error err;
    ckpt_status st = ckpt_open_memory(data, (size_t)size, &o, &f, &err);
    ckpt_close(f);
    if (st == CKPT_OK)
        return CKPT_OK;
    if (st == CKPT_ERR_NOMEM) {
        if (s->err)
            *s->err = err;
        return st;
    }
    char rec[256], msg[768];
    where_record(where, err.record, rec, sizeof(rec));
    ckpt_error_format(&err, msg, sizeof(msg));
    return ckpt__scan_add(s, st == CKPT_ERR_LIMIT ? CKPT_SCAN_KIND_LIMIT : CKPT_SCAN_KIND_FORMAT, rec,
                          err.offset, err.file_offset,
                          "the safetensors header breaks the format's rules: %s", err.message);
}

/* numpy .npy: an object array (a 'O' in its dtype) holds a pickle that
 * np.load(allow_pickle=True) runs. */
ckpt_status ckpt__scan_npy(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                           uint64_t file_base, bool top, bool quiet)
{
    char rec[256];
    where_record(where, "npy header", rec, sizeof(rec));
    if (top)
        s->report->format = "numpy";
    uint64_t hlen, start;
    if (size >= 10 && data[6] == 1) {
        hlen = ckpt__le16(data + 8);
        start = 10;
    } else if (size >= 12) {
        hlen = ckpt__le32(data + 8);
        start = 12;
    } else {
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
                              "a truncated numpy array file: not a checkpoint");
    }
    if (hlen > size - start)
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
                              "the numpy header runs past the end: not a checkpoint");
    const char *h = (const char *)data + start, *end = h + hlen;
    const char *p = NULL;
    for (const char *q = h; q + 7 <= end; q++) {
        if (memcmp(q, "'descr'", 7) == 0 || memcmp(q, "\"descr\"", 7) == 0) {
            p = q + 7;
            break;
        }
    }
    /* the dtype: a quoted type string, or a list of fields; an object
     * type ('O') anywhere in it means a pickle follows */
    bool object = false;
    while (p && p < end && (*p == ':' || *p == ' '))
        p++;
    if (p && p < end) {
        int depth = 0;
        char quote = 0;
        for (; p < end; p++) {
            char c = *p;
            if (quote) {
                if (c == quote)
                    quote = 0;
                else if (c == 'O')
                    object = true;
                if (!quote && depth == 0)
                    break;
                continue;
            }
            if (c == '\'' || c == '"')
                quote = c;
            else if (c == '[' || c == '(')
                depth++;
            else if (c == ']' || c == ')') {
                if (--depth <= 0)
                    break;
            } else if (c == ',' && depth == 0)
                break;
        }
    }
    if (!object)
        return quiet
                   ? CKPT_OK
                   : ckpt__scan_warn(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
                                     "a numpy array file (.npy), not a checkpoint torch.load "
                                     "reads; it holds no objects: load it with "
                                     "numpy.load(allow_pickle=False)");
    CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
                                        "a numpy object array: its data is a pickle that "
                                        "np.load(allow_pickle=True) runs"));
    uint64_t pos = start + hlen;
    char drec[256];
    where_record(where, "npy data", drec, sizeof(drec));
    scan_pickle_result res;
    return ckpt__scan_pickle_alone(s, data + pos, (size_t)(size - pos), drec,
                                   ckpt__scan_at(file_base, pos), &res);
}

/* torch.load reads every file that is neither a zip nor a tar archive as a
 * pickle from byte 0. A file ckpt takes for something else gets that
 * reading checked too (detect.c): when the pickle names a global or is the
 * legacy magic number, it is reported and scanned as torch reads it. when
 * says why torch would read it. */
static ckpt_status scan_pickle_at_zero(scan_ctx *s, const uint8_t *data, uint64_t size,
                                       const char *where, uint64_t file_base, const char *when)
{
    ckpt__byte0 b;
    ckpt__pickle_at_zero(data, size, &s->limits, &b);
    if (!b.matters)
        return CKPT_OK;
    char rec[256];
    where_record(where, "pickle from byte 0", rec, sizeof(rec));
    if (b.magic)
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(
            s, CKPT_SCAN_KIND_FORMAT, rec, b.offset, ckpt__scan_at(file_base, b.offset),
            "torch.load reads this file as a legacy torch file from byte 0 (%s): its first "
            "pickle is the legacy magic number, and the file is scanned that way too",
            when));
    else
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(
            s, CKPT_SCAN_KIND_FORMAT, rec, b.offset, ckpt__scan_at(file_base, b.offset),
            "torch.load reads this file as a pickle from byte 0 (%s): that pickle names '%s'",
            when, b.global));
    return scan_pickle_stream(s, data, size, where, file_base, false);
}

/* ======================================================================
 * The pre-0.4 torch tar format
 * ====================================================================== */

/*
 * torch.load opens every file tarfile takes (tar.c) as the pre-0.4 format:
 * it extracts "storages" and unpickles it as a row (a count; per storage a
 * pickle (key, location, storage_type), an int64 element count and the
 * raw bytes; then a pickle of the storage views), then "tensors" (a count;
 * per tensor a pickle (key, storage_id, type), an int32 ndim, 4 bytes,
 * ndim int64 sizes and strides, an int64 offset), then "pickle", the
 * object. tarfile takes the last member of a name. torch >= 2.x refuses
 * the format under weights_only=True; older torch, or weights_only=False,
 * unpickles all of it. Each of those members is scanned as torch reads it,
 * the raw parts skipped as torch skips them; every other member that reads
 * as a pickle is scanned too.
 */

#define TAR_NAME_KEY 1024 /* name bytes compared for duplicates */

typedef struct tar_entry {
    const char *name;          /* in the file, or a copy ("prefix/name") */
    size_t name_len;
    uint8_t type;
    uint64_t header_offset, data_offset, size;
    bool size_big;
    uint64_t hash;             /* of the first TAR_NAME_KEY bytes */
    size_t index;
} tar_entry;

typedef struct tar_list {
    scan_ctx *s;
    ckpt__arena names;
    tar_entry *items;
    size_t count, cap;
} tar_list;

static ckpt_status tar_collect(void *user, const ckpt__tar_member *m)
{
    tar_list *L = user;
    if (L->count == L->cap) {
        tar_entry *p = ckpt__array_grow(L->items, &L->cap, sizeof(*p));
        if (!p)
            return ckpt__nomem(L->s->err);
        L->items = p;
    }
    const char *name = (const char *)m->name;
    if (m->name_joined) {
        name = ckpt__arena_strdup(&L->names, name, m->name_len); /* the walk's buffer */
        if (!name)
            return ckpt__nomem(L->s->err);
    }
    tar_entry *e = &L->items[L->count];
    memset(e, 0, sizeof(*e));
    e->name = name;
    e->name_len = m->name_len;
    e->type = m->type;
    e->header_offset = m->header_offset;
    e->data_offset = m->data_offset;
    e->size = m->size;
    e->size_big = m->size_big;
    e->index = L->count;
    e->hash = ckpt__hash_keyed(L, name, m->name_len < TAR_NAME_KEY ? m->name_len : TAR_NAME_KEY);
    L->count++;
    return CKPT_OK;
}

static int tar_name_cmp(const tar_entry *a, const tar_entry *b)
{
    if (a->name_len != b->name_len)
        return a->name_len < b->name_len ? -1 : 1;
    if (a->hash != b->hash)
        return a->hash < b->hash ? -1 : 1;
    size_t n = a->name_len < TAR_NAME_KEY ? a->name_len : TAR_NAME_KEY;
    return memcmp(a->name, b->name, n);
}

static int tar_sort_cmp(const void *x, const void *y)
{
    const tar_entry *a = *(const tar_entry *const *)x, *b = *(const tar_entry *const *)y;
    int c = tar_name_cmp(a, b);
    if (c)
        return c;
    return a->index < b->index ? -1 : a->index > b->index;
}

static bool tar_name_is(const tar_entry *e, const char *name)
{
    return e->name_len == strlen(name) && memcmp(e->name, name, e->name_len) == 0;
}

/* A persistent id in the object pickle names a storage torch restored
 * from "storages", or a module: kept as it is. */
static ckpt_status tar_persistent(void *user, ckpt__pickle_ctx *ctx, const ckpt_value *pid,
                                  uint64_t offset, ckpt_value **out, ckpt_error *err)
{
    (void)user;
    (void)ctx;
    (void)offset;
    (void)err;
    *out = (ckpt_value *)(uintptr_t)pid;
    return CKPT_OK;
}

/* One member being read as torch reads it. */
typedef struct tar_read {
    scan_ctx *s;
    ckpt__arena arena;
    const uint8_t *p;          /* the member's bytes */
    uint64_t len;
    uint64_t pos;
    uint64_t base;             /* where p starts in the file */
    char name[200];            /* the member's name for records */
    const char *where;
    bool stop;                 /* torch fails here, or ckpt cannot follow */
    bool rest;                 /* stopped, but what follows is scanned as pickles */
    bool greedy;               /* the count is unknown: records are read while
                                  they fit, then the rest scanned as pickles */
} tar_read;

/* The next pickle of the row: record "<member> <what>". */
static ckpt_status tar_next_pickle(tar_read *t, const char *what, ckpt__persistent_load_fn pl,
                                   scan_pickle_result *res)
{
    char rec[320];
    snprintf(rec, sizeof(rec), "%s%s%s%s", t->where ? t->where : "", t->name, *what ? " " : "",
             what);
    memset(res, 0, sizeof(*res));
    if (t->pos >= t->len) {
        t->stop = true;
        return ckpt__scan_add(t->s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET,
                              ckpt__scan_at(t->base, t->pos),
                              "the member ends before this pickle: torch.load fails here");
    }
    CKPT_RETURN_IF_ERROR(ckpt__scan_pickle(t->s, &t->arena, t->p + t->pos,
                                           (size_t)(t->len - t->pos), rec,
                                           ckpt__scan_at(t->base, t->pos), pl, NULL, res));
    if (res->broke) {
        t->stop = true;
        return CKPT_OK;
    }
    /* torch reads the member from an unbuffered file: a frame that runs
     * past STOP is read whole, and the next pickle starts at its end */
    return next_in_stream(t->s, t->p, t->pos, res, rec, t->base, &t->pos);
}

/* Raw bytes torch reads that do not fit: torch fails there (rest false),
 * or ckpt cannot tell how many there are (rest true: what follows is
 * scanned as further pickles). */
static ckpt_status tar_raw_problem(tar_read *t, const char *what, bool rest, const char *fmt,
                                   ...) CKPT_PRINTF(4, 5);
static ckpt_status tar_raw_problem(tar_read *t, const char *what, bool rest, const char *fmt,
                                   ...)
{
    char rec[320];
    snprintf(rec, sizeof(rec), "%s%s %s", t->where ? t->where : "", t->name, what);
    t->stop = true;
    t->rest = rest;
    va_list ap;
    va_start(ap, fmt);
    ckpt_status st = ckpt__scan_vadd(t->s, CKPT_SCAN_KIND_STORAGE, rec, CKPT_NO_OFFSET,
                                     ckpt__scan_at(t->base, t->pos), fmt, ap);
    va_end(ap);
    return st;
}

/* range(count) as torch runs it over the count pickle's value: false when
 * ckpt cannot tell (not an int: torch fails; an inert call's result). */
static bool tar_count(const ckpt_value *v, uint64_t *count)
{
    if (v && (v->kind == CKPT_KIND_INT || v->kind == CKPT_KIND_BOOL)) {
        int64_t i = v->kind == CKPT_KIND_INT ? v->u.i : (int64_t)v->u.b;
        *count = i < 0 ? 0 : (uint64_t)i;
        return true;
    }
    if (v && v->kind == CKPT_KIND_BIGINT && v->u.s.len) {
        bool neg = (uint8_t)v->u.s.ptr[v->u.s.len - 1] & 0x80;
        *count = neg ? 0 : UINT64_MAX;
        return true;
    }
    return false;
}

static ckpt_status tar_count_pickle(tar_read *t, uint64_t *count)
{
    scan_pickle_result res;
    *count = 0;
    CKPT_RETURN_IF_ERROR(tar_next_pickle(t, "count", NULL, &res));
    if (t->stop)
        return CKPT_OK;
    if (!tar_count(res.value, count)) {
        char rec[320];
        snprintf(rec, sizeof(rec), "%s%s count", t->where ? t->where : "", t->name);
        t->greedy = true;
        *count = UINT64_MAX;
        return ckpt__scan_add(t->s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET,
                              ckpt__scan_at(t->base, t->pos),
                              "the count is not an int ckpt can tell (not a number, or what a "
                              "call returns): the records are read while they fit, what follows "
                              "is scanned for further pickles");
    }
    return CKPT_OK;
}

/* The row ends where an unknown count makes ckpt stop following it. */
static ckpt_status tar_greedy_end(tar_read *t)
{
    t->stop = true;
    t->rest = true;
    return CKPT_OK;
}

/* The record pickle that starts row i of a member ("storage 3"): *more
 * false when the rows stop before it (the member ends where the count was
 * a guess, or torch fails on the pickle). */
static ckpt_status tar_row(tar_read *t, const char *kind, uint64_t i, char *what, size_t cap,
                           scan_pickle_result *res, bool *more)
{
    snprintf(what, cap, "%s %llu", kind, (unsigned long long)i);
    *more = false;
    if (t->greedy && t->pos >= t->len)
        return tar_greedy_end(t);
    CKPT_RETURN_IF_ERROR(tar_next_pickle(t, what, NULL, res));
    *more = !t->stop;
    return CKPT_OK;
}

/* "storages": a count, per storage (key, location, storage_type), an int64
 * element count and the bytes, then the views. */
static ckpt_status tar_storages(tar_read *t)
{
    uint64_t count;
    CKPT_RETURN_IF_ERROR(tar_count_pickle(t, &count));
    for (uint64_t i = 0; i < count && !t->stop; i++) {
        char what[48];
        scan_pickle_result res;
        bool more;
        CKPT_RETURN_IF_ERROR(tar_row(t, "storage", i, what, sizeof(what), &res, &more));
        if (!more)
            break;
        const ckpt_value *v = res.value;
        bool untyped = false;
        ckpt_dtype dt = v && v->kind == CKPT_KIND_TUPLE && v->u.seq.len == 3
                            ? ckpt__storage_type_dtype(v->u.seq.items[2], &untyped)
                            : CKPT_DTYPE_INVALID;
        if (t->greedy && (dt == CKPT_DTYPE_INVALID || untyped ||
                          t->len - t->pos < 8 ||
                          ckpt__le64(t->p + t->pos) >
                              (t->len - t->pos - 8) / ckpt__storage_elem_size(dt)))
            return tar_greedy_end(t); /* not a storage that fits: the views, say */
        if (dt == CKPT_DTYPE_INVALID || untyped)
            return tar_raw_problem(t, what, true,
                                   "not (key, location, storage class) with a typed storage "
                                   "class: ckpt cannot tell the size of what torch reads next "
                                   "(what follows is scanned for further pickles)");
        if (t->len - t->pos < 8)
            return tar_raw_problem(t, what, false,
                                   "the member ends before the storage's element count: "
                                   "torch.load fails here");
        uint64_t numel = ckpt__le64(t->p + t->pos), nbytes;
        if ((int64_t)numel < 0 ||
            !ckpt__mul_u64(numel, ckpt__storage_elem_size(dt), &nbytes) ||
            nbytes > t->len - t->pos - 8)
            return tar_raw_problem(t, what, false,
                                   "%llu elements run past the end of the member: torch.load "
                                   "fails here", (unsigned long long)numel);
        t->pos += 8 + nbytes;
    }
    if (t->stop || t->greedy)
        return CKPT_OK;
    scan_pickle_result res;
    return tar_next_pickle(t, "views", NULL, &res);
}

/* "tensors": a count, per tensor (key, storage_id, type) and its int32
 * ndim, 4 bytes, sizes, strides and offset. */
static ckpt_status tar_tensors(tar_read *t)
{
    uint64_t count;
    CKPT_RETURN_IF_ERROR(tar_count_pickle(t, &count));
    for (uint64_t i = 0; i < count && !t->stop; i++) {
        char what[48];
        scan_pickle_result res;
        bool more;
        CKPT_RETURN_IF_ERROR(tar_row(t, "tensor", i, what, sizeof(what), &res, &more));
        if (!more)
            break;
        if (t->greedy && (t->len - t->pos < 8 || (int32_t)ckpt__le32(t->p + t->pos) < 0 ||
                          16 + 16 * (uint64_t)(int32_t)ckpt__le32(t->p + t->pos) >
                              t->len - t->pos))
            return tar_greedy_end(t);
        if (t->len - t->pos < 8)
            return tar_raw_problem(t, what, false,
                                   "the member ends before the tensor's ndim: torch.load fails "
                                   "here");
        int32_t ndim = (int32_t)ckpt__le32(t->p + t->pos);
        if (ndim < 0)
            return tar_raw_problem(t, what, false,
                                   "ndim %ld is below zero: torch.load fails here", (long)ndim);
        uint64_t need = 16 + 16 * (uint64_t)ndim;
        if (need > t->len - t->pos)
            return tar_raw_problem(t, what, false,
                                   "the tensor's %ld dimensions run past the end of the member: "
                                   "torch.load fails here", (long)ndim);
        t->pos += need;
    }
    return CKPT_OK;
}

static ckpt_status tar_rest(scan_ctx *s, const uint8_t *p, uint64_t len, uint64_t pos,
                            const char *rec, uint64_t base);

static ckpt_status scan_tar_member(scan_ctx *s, const uint8_t *data, uint64_t size,
                                   const tar_entry *e, const char *where, uint64_t file_base)
{
    tar_read t = {.s = s, .where = where, .base = ckpt__scan_at(file_base, e->data_offset)};
    ckpt__quote(t.name, sizeof(t.name), e->name, e->name_len, false);
    char rec[320];
    snprintf(rec, sizeof(rec), "%s%s", where ? where : "", t.name);
    if (e->type >= '1' && e->type <= '6') {
        static const char *const kinds[] = {"a hard link", "a symbolic link", "a character device",
                                            "a block device", "a directory", "a FIFO"};
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET,
                              ckpt__scan_at(file_base, e->header_offset),
                              "%s: tarfile extracts it as such, and torch.load reading a member "
                              "by this name reads what it points to, outside the archive's bytes "
                              "(not checked)", kinds[e->type - '1']);
    }
    uint64_t avail = e->data_offset <= size ? size - e->data_offset : 0;
    t.p = data + (e->data_offset <= size ? e->data_offset : size);
    t.len = e->size < avail ? e->size : avail;
    if (e->size_big || e->size > avail)
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(
            s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET, ckpt__scan_at(file_base, e->header_offset),
            "the member's data runs past the end of the file: when torch extracts it tarfile "
            "fails and torch.load reads the file as a pickle from byte 0"));
    bool storages = tar_name_is(e, "storages"), tensors = tar_name_is(e, "tensors");
    bool object = tar_name_is(e, "pickle");
    if (!storages && !tensors && !object &&
        (t.len == 0 || !ckpt__scan_is_pickle(s, t.p, (size_t)t.len)))
        return CKPT_OK;
    ckpt__arena_init(&t.arena, s->limits.max_value_bytes);
    ckpt_status st;
    if (storages) {
        st = tar_storages(&t);
    } else if (tensors) {
        st = tar_tensors(&t);
    } else {
        scan_pickle_result res;
        st = tar_next_pickle(&t, "", tar_persistent, &res);
    }
    ckpt__arena_free(&t.arena);
    CKPT_RETURN_IF_ERROR(st);
    if (t.pos >= t.len || (t.stop && !t.rest))
        return CKPT_OK;
    char w[330];
    snprintf(w, sizeof(w), "%s: ", rec);
    if (!t.stop) /* what torch does not read: further pickles */
        return scan_trailing(s, t.p, t.len, t.pos, w, t.base, "what torch reads of the member");
    return tar_rest(s, t.p, t.len, t.pos, rec, t.base);
}

/* The rest of a member ckpt cannot follow as torch reads it (a count or a
 * storage class only a call gives): the pickles in it are scanned, found
 * by where they start (the next byte, then each PROTO opcode). */
static ckpt_status tar_rest(scan_ctx *s, const uint8_t *p, uint64_t len, uint64_t pos,
                            const char *rec, uint64_t base)
{
    unsigned tries = 0;
    for (uint64_t i = pos; i < len && tries < 32; i++) {
        if (i != pos && (p[i] != 0x80 || i + 1 >= len || p[i + 1] < 2 || p[i + 1] > 5))
            continue;
        tries++;
        if (!ckpt__scan_is_pickle(s, p + i, (size_t)(len - i)))
            continue;
        char r[400];
        snprintf(r, sizeof(r), "%s pickle at byte %llu", rec, (unsigned long long)i);
        scan_pickle_result res;
        CKPT_RETURN_IF_ERROR(ckpt__scan_pickle_alone(s, p + i, (size_t)(len - i), r,
                                                     ckpt__scan_at(base, i), &res));
        if (res.consumed)
            i += res.consumed - 1;
    }
    return CKPT_OK;
}

static ckpt_status scan_tar(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                            uint64_t file_base, bool top)
{
    char rec[256];
    if (top)
        s->report->format = "tar";
    where_record(where, "tar", rec, sizeof(rec));
    CKPT_RETURN_IF_ERROR(ckpt__scan_warn(
        s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
        "torch.load reads this file as a pre-0.4 tar archive (its first 512 bytes are a valid tar "
        "header): torch >= 2.x refuses it under weights_only=True, older torch and "
        "weights_only=False unpickle its members; convert it with ckpt"));
    tar_list L = {.s = s};
    ckpt__arena_init(&L.names, 0);
    ckpt__tar_end end;
    tar_entry **sorted = NULL;
    ckpt_status st = ckpt__tar_walk(data, size, s->limits.max_zip_entries, tar_collect, &L, &end);
    if (st != CKPT_OK)
        goto out;
    /* duplicates: tarfile (and torch) takes the last copy of a name */
    if (L.count > 1) {
        sorted = malloc(L.count * sizeof(*sorted));
        if (!sorted) {
            st = ckpt__nomem(s->err);
            goto out;
        }
        for (size_t i = 0; i < L.count; i++)
            sorted[i] = &L.items[i];
        qsort(sorted, L.count, sizeof(*sorted), tar_sort_cmp);
        for (size_t i = 1; i < L.count; i++) {
            const tar_entry *a = sorted[i - 1], *b = sorted[i];
            if (tar_name_cmp(a, b) != 0)
                continue;
            char q[200], r[320];
            ckpt__quote(q, sizeof(q), b->name, b->name_len, false);
            snprintf(r, sizeof(r), "%s%s", where ? where : "", q);
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_DUPLICATE_NAME, r, CKPT_NO_OFFSET,
                                ckpt__scan_at(file_base, b->header_offset),
                                "another member of this name comes before it (header at byte "
                                "%llu): tarfile and torch take the last copy, other readers the "
                                "first (each copy is scanned)",
                                (unsigned long long)a->header_offset);
            if (st != CKPT_OK)
                goto out;
        }
    }
    for (size_t i = 0; i < L.count; i++) {
        st = scan_tar_member(s, data, size, &L.items[i], where, file_base);
        if (st != CKPT_OK)
            goto out;
    }
    switch (end.kind) {
    case CKPT__TAR_END:
        break;
    case CKPT__TAR_FALLBACK:
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, end.offset,
                            ckpt__scan_at(file_base, end.offset),
                            "tarfile fails here (%s): torch.load then reads the file as a pickle "
                            "from byte 0, before it unpickles any member",
                            end.why);
        break;
    case CKPT__TAR_UNFOLLOWED:
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, end.offset,
                            ckpt__scan_at(file_base, end.offset),
                            "%s: ckpt does not follow the archive past here, the members after "
                            "it are not checked",
                            end.why);
        break;
    case CKPT__TAR_LIMIT:
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, rec, end.offset,
                            ckpt__scan_at(file_base, end.offset),
                            "%s (limit max_zip_entries): the rest is not checked", end.why);
        break;
    }
    if (st != CKPT_OK)
        goto out;
    /* torch.load reads the pickle from byte 0 when tarfile fails, and from
     * a buffer (io.BytesIO), where it never tries tarfile */
    st = scan_pickle_at_zero(s, data, size, where, file_base,
                             end.kind == CKPT__TAR_FALLBACK
                                 ? "tarfile gives up on the archive"
                                 : "from a buffer such as io.BytesIO, where torch.load does not "
                                   "try tarfile");
out:
    free(sorted);
    free(L.items);
    ckpt__arena_free(&L.names);
    return st;
}

/* The pickles a 7z archive shows in place (an uncompressed LZMA2 chunk
 * holds its data as is): found by their PROTO opcode and scanned. */
static ckpt_status scan_7z(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                           uint64_t file_base, bool top)
{
    char rec[256];
    if (top)
        s->report->format = "7z";
    CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_NESTED_ARCHIVE,
                                        where_record(where, "7z", rec, sizeof(rec)), 0,
                                        ckpt__scan_at(file_base, 0),
                                        "a 7z archive: neither torch.load nor ckpt reads it, its "
                                        "members are not checked (pickles visible in place are)"));
    unsigned tries = 0;
    for (uint64_t i = 0; i + 2 < size && tries < 32; i++) {
        if (data[i] != 0x80 || data[i + 1] < 2 || data[i + 1] > 5)
            continue;
        tries++;
        if (!ckpt__scan_is_pickle(s, data + i, (size_t)(size - i)))
            continue;
        char name[64];
        snprintf(name, sizeof(name), "7z pickle at byte %llu", (unsigned long long)i);
        where_record(where, name, rec, sizeof(rec));
        scan_pickle_result res;
        ckpt_status st = ckpt__scan_pickle_alone(s, data + i, (size_t)(size - i), rec,
                                                 ckpt__scan_at(file_base, i), &res);
        CKPT_RETURN_IF_ERROR(st);
        if (res.consumed)
            i += res.consumed - 1;
    }
    return CKPT_OK;
}

static bool plain_shard_name(const char *n)
{
    return *n && !strchr(n, '/') && !strchr(n, '\\') && strcmp(n, "..") != 0 &&
           strcmp(n, ".") != 0;
}

/* What a sharded index has seen: its shard names and the shard files'
 * identities (st_dev, st_ino), so that a shard named by many tensors or
 * reached under many names (links) is scanned once. Open addressing. */
typedef struct seen_slot {
    const char *name;            /* NULL for an identity */
    uint64_t dev, ino;
    bool used;
} seen_slot;

struct scan_seen {
    seen_slot *slots;
    size_t cap, count;
};

static bool seen_same(const seen_slot *a, const seen_slot *b)
{
    if (!a->name != !b->name)
        return false;
    return a->name ? strcmp(a->name, b->name) == 0 : a->dev == b->dev && a->ino == b->ino;
}

static seen_slot *seen_find(const struct scan_seen *t, const seen_slot *key)
{
    uint64_t id[2] = {key->dev, key->ino};
    uint64_t h = key->name ? ckpt__hash_keyed(t, key->name, strlen(key->name))
                           : ckpt__hash_keyed(t, id, sizeof(id));
    for (size_t i = (size_t)h & (t->cap - 1);; i = (i + 1) & (t->cap - 1))
        if (!t->slots[i].used || seen_same(&t->slots[i], key))
            return &t->slots[i];
}

/* Adds key; *was_there tells whether it was there already. false when out
 * of memory. */
static bool seen_add(struct scan_seen *t, const seen_slot *key, bool *was_there)
{
    if ((t->count + 1) * 2 > t->cap) {
        struct scan_seen bigger = {calloc(t->cap ? t->cap * 2 : 64, sizeof(seen_slot)),
                                   t->cap ? t->cap * 2 : 64, t->count};
        if (!bigger.slots)
            return false;
        for (size_t i = 0; i < t->cap; i++)
            if (t->slots[i].used)
                *seen_find(&bigger, &t->slots[i]) = t->slots[i];
        free(t->slots);
        *t = bigger;
    }
    seen_slot *sl = seen_find(t, key);
    *was_there = sl->used;
    if (!sl->used) {
        *sl = *key;
        sl->used = true;
        t->count++;
    }
    return true;
}

/* true when the reader takes these bytes for a sharded index (ckpt_open's
 * order: zip, then safetensors, then an index): a shard that is one. */
static bool reads_as_index(const uint8_t *data, uint64_t size)
{
    return !ckpt__zip_detect(data, size) && !ckpt__pytorch1_detect(data, size) &&
           !ckpt__safetensors_detect(data, size) && ckpt__sharded_detect(data, size);
}

static ckpt_status scan_path(scan_ctx *s, const char *path, const char *where);

/* A sharded index: its shard files (beside it) are scanned in turn, each
 * file once. */
static ckpt_status scan_sharded(scan_ctx *s, const uint8_t *data, uint64_t size, bool top)
{
    if (top)
        s->report->format = "sharded";
    if (!s->dir)
        return ckpt__scan_add(
            s, CKPT_SCAN_KIND_FORMAT, "index", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
            "a sharded index: its shard files are not checked when scanning memory");
    if (size > s->limits.max_header_bytes)
        return ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, "index", 0, 0,
                              "the index is larger than max_header_bytes");
    json_error_t jerr;
    json_t *root = json_loadb((const char *)data, (size_t)size, JSON_REJECT_DUPLICATES, &jerr);
    const json_t *map = root ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(map)) {
        json_decref(root);
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, "index", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                              "the index is not JSON with a weight_map object");
    }
    ckpt_status st = CKPT_OK;
    struct scan_seen seen = {0};
    s->shards_seen = &seen;
    size_t nshards = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)(uintptr_t)map, key, val) {
        const char *shard = json_string_value(val);
        if (!shard) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, "index", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                "weight_map names a shard that is not text");
            break;
        }
        bool dup;
        seen_slot k = {.name = shard};
        if (!seen_add(&seen, &k, &dup)) {
            st = ckpt__nomem(s->err);
            break;
        }
        if (dup)
            continue;
        if (nshards++ >= 10000) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, "index", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                "more than 10000 shards: the rest are not checked");
            break;
        }
        char q[200];
        if (!plain_shard_name(shard)) {
            st = ckpt__scan_add(s, CKPT_SCAN_KIND_UNSAFE_NAME, "index", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                "shard '%s' is not a plain file name beside the index",
                                ckpt__quote(q, sizeof(q), shard, strlen(shard), false));
            if (st != CKPT_OK)
                break;
            continue;
        }
        size_t plen = strlen(s->dir) + 1 + strlen(shard) + 1;
        char *path = malloc(plen), where[256];
        if (!path) {
            st = ckpt__nomem(s->err);
            break;
        }
        snprintf(path, plen, "%s/%s", s->dir, shard);
        snprintf(where, sizeof(where), "%s: ",
                 ckpt__quote(q, sizeof(q), shard, strlen(shard), false));
        st = scan_path(s, path, where);
        free(path);
        if (st != CKPT_OK)
            break;
    }
    s->shards_seen = NULL;
    free(seen.slots);
    json_decref(root);
    return st;
}

ckpt_status ckpt__scan_bytes(scan_ctx *s, const uint8_t *data, uint64_t size, const char *where,
                             uint64_t file_base, bool top)
{
    char rec[256];
    where_record(where, "", rec, sizeof(rec));
    if (size == 0) {
        if (top)
            s->report->format = "empty";
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                              "an empty file: not a checkpoint");
    }
    if (ckpt__zip_detect(data, size))
        return ckpt__scan_zip(s, data, size, where, file_base, top);
    /* torch.load's order: zip, tar as tarfile takes it, then a pickle from
     * byte 0; ckpt's other formats come after tar, each checked for what
     * that pickle reading makes of it. */
    static const char *const not_zip_or_tar = "the file is neither a zip nor a tar archive";
    switch (ckpt__tar_detect(data, size)) {
    case CKPT__TAR_BLOCK_HEADER:
        return scan_tar(s, data, size, where, file_base, top);
    case CKPT__TAR_BLOCK_ZERO:
        if (top)
            s->report->format = "tar";
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, where_record(where, "tar", rec, sizeof(rec)),
                              0, ckpt__scan_at(file_base, 0),
                              "torch.load reads this file as an empty tar archive (its first 512 "
                              "bytes are zero) and fails: not a checkpoint");
    case CKPT__TAR_BLOCK_INVALID:
        break;
    }
    if (ckpt__7z_detect(data, size)) {
        CKPT_RETURN_IF_ERROR(scan_7z(s, data, size, where, file_base, top));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (ckpt__pytorch1_detect(data, size)) {
        if (top)
            s->report->format = "unknown";
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0,
                                            ckpt__scan_at(file_base, 0),
                                            "the PyTorch 1.0-preview format (PYTORCH1): current "
                                            "torch.load does not read it"));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (ckpt__safetensors_detect(data, size)) {
        if (top)
            s->report->format = "safetensors";
        CKPT_RETURN_IF_ERROR(scan_safetensors(s, data, size, where));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (top && ckpt__sharded_detect(data, size)) {
        CKPT_RETURN_IF_ERROR(scan_sharded(s, data, size, top));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (ckpt__npy_detect(data, size)) {
        CKPT_RETURN_IF_ERROR(ckpt__scan_npy(s, data, size, where, file_base, top, false));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (!ckpt__png_detect(data, size) && ckpt__pickle_detect(data, size))
        return scan_pickle_stream(s, data, size, where, file_base, top);
    if (ckpt__scan_zip_at_end(data, size)) {
        CKPT_RETURN_IF_ERROR(ckpt__scan_zip(s, data, size, where, file_base, top));
        return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
    }
    if (top)
        s->report->format = "unknown";
    char hex[40] = "";
    for (size_t i = 0; i < 8 && i < size; i++)
        snprintf(hex + 3 * i, sizeof(hex) - 3 * i, "%02x ", data[i]);
    if (*hex)
        hex[strlen(hex) - 1] = '\0';
    CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, rec, 0, ckpt__scan_at(file_base, 0),
                                        "not a checkpoint: unknown format (starts with %s); its "
                                        "content is not checked",
                                        hex));
    return scan_pickle_at_zero(s, data, size, where, file_base, not_zip_or_tar);
}

/* ======================================================================
 * Public API
 * ====================================================================== */

void ckpt_scan_options_default(ckpt_scan_options *opts)
{
    if (!opts)
        return;
    memset(opts, 0, sizeof(*opts));
    opts->struct_size = sizeof(*opts);
    ckpt_limits_default(&opts->limits);
}

static ckpt_scan *report_new(void)
{
    ckpt_scan *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    ckpt__arena_init(&r->text, 0);
    r->format = "unknown";
    return r;
}

void ckpt_scan_free(ckpt_scan *scan)
{
    if (!scan)
        return;
    free(scan->findings);
    ckpt__arena_free(&scan->text);
    free(scan);
}

ckpt_scan_verdict ckpt_scan_get_verdict(const ckpt_scan *scan)
{
    if (!scan || scan->dropped)
        return CKPT_SCAN_VERDICT_UNSAFE;
    ckpt_scan_verdict v = CKPT_SCAN_VERDICT_SAFE;
    for (size_t i = 0; i < scan->count; i++) {
        if (scan->findings[i].severity != CKPT_SCAN_VERDICT_WARNING)
            return CKPT_SCAN_VERDICT_UNSAFE;
        v = CKPT_SCAN_VERDICT_WARNING;
    }
    return v;
}

const char *ckpt_scan_format(const ckpt_scan *scan)
{
    return scan ? scan->format : "unknown";
}

size_t ckpt_scan_finding_count(const ckpt_scan *scan)
{
    return scan ? scan->count : 0;
}

const ckpt_scan_finding *ckpt_scan_finding_at(const ckpt_scan *scan, size_t i)
{
    return scan && i < scan->count ? &scan->findings[i] : NULL;
}

static void ctx_init(scan_ctx *s, ckpt_scan *r, const ckpt_scan_options *opts, ckpt_error *err)
{
    memset(s, 0, sizeof(*s));
    s->report = r;
    s->err = err;
    ckpt_limits_default(&s->limits);
    if (opts) {
        ckpt_scan_options o;
        ckpt_scan_options_default(&o);
        ckpt__struct_in(&o, sizeof(o), opts);
        ckpt__limits_apply(&s->limits, &o.limits);
        s->allow = o.allow;
        s->allow_count = o.allow ? o.allow_count : 0;
    }
}

/* Finishes a scan: the count of findings past the list, if any. */
static ckpt_status finish(scan_ctx *s)
{
    ckpt_scan *r = s->report;
    free(s->uses);
    s->uses = NULL;
    if (r->dropped) {
        size_t dropped = r->dropped;
        r->dropped = 0;
        r->count--; /* make room: the last listed finding gives way to the count */
        dropped++;
        CKPT_RETURN_IF_ERROR(ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, "", CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                                            "%zu more findings are not listed", dropped));
    }
    return CKPT_OK;
}

ckpt_status ckpt_scan_memory(const void *data, size_t size, const ckpt_scan_options *opts,
                             ckpt_scan **out, ckpt_error *err)
{
    if (out)
        *out = NULL;
    if (!out || (!data && size))
        return CKPT_INVALID_ARG(err, "NULL argument");
    ckpt_scan *r = report_new();
    if (!r)
        return ckpt__nomem(err);
    scan_ctx s;
    ctx_init(&s, r, opts, err);
    ckpt_status st = ckpt__scan_bytes(&s, data ? data : (const uint8_t *)"", size, "", 0, true);
    if (st == CKPT_OK)
        st = finish(&s);
    free(s.uses);
    if (st != CKPT_OK) {
        ckpt_scan_free(r);
        return st;
    }
    *out = r;
    return CKPT_OK;
}

/* Maps path and scans it. Top level (where NULL): I/O problems are errors;
 * a shard (where set): they are findings. */

/* A scan reads the metadata of a file, never its tensor bytes. In a zip of
 * big records (torch.save of large tensors) the local headers lie megabytes
 * apart, and the kernel's read-around would read megabytes around each of
 * them from a cold file: read-around is off while such a file is scanned,
 * and the records a scan reads whole are asked for whole (scan_zip.c).
 * Other layouts are read in order and keep it. */
#define SCAN_SPARSE_RECORD_BYTES ((uint64_t)64 << 10)
#define SCAN_ENDS ((uint64_t)64 << 10)

static bool scan_advise(const uint8_t *map, uint64_t size)
{
    if (size < SCAN_SPARSE_RECORD_BYTES)
        return false;
    /* off before the first look: detection touches both ends */
    ckpt__map_advise(map, size, CKPT__ADVISE_RANDOM);
    uint64_t ends = size < SCAN_ENDS ? size : SCAN_ENDS;
    ckpt__map_advise(map, ends, CKPT__ADVISE_WILLNEED);
    ckpt__map_advise(map + size - ends, ends, CKPT__ADVISE_WILLNEED);
    uint64_t count = 0, cd_offset = 0;
    if (!ckpt__zip_detect(map, size) || !ckpt__zip_declared(map, size, &count, &cd_offset) ||
        count == 0 || cd_offset / count < SCAN_SPARSE_RECORD_BYTES) {
        ckpt__map_advise(map, size, CKPT__ADVISE_NORMAL);
        return false;
    }
    return true;
}

static ckpt_status scan_path(scan_ctx *s, const char *path, const char *where)
{
    bool top = where == NULL;
    ckpt_status st = CKPT_OK;
    char why[200] = "";
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    struct stat sb;
    if (fd < 0)
        snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
    else if (fstat(fd, &sb) != 0)
        snprintf(why, sizeof(why), "cannot stat: %s", strerror(errno));
    else if (S_ISDIR(sb.st_mode))
        snprintf(why, sizeof(why), "is a directory");
    else if (!S_ISREG(sb.st_mode))
        snprintf(why, sizeof(why), "not a regular file");
    /* a shard: the record its findings name is where without its ": " */
    char shard_rec[256] = "";
    if (!top) {
        snprintf(shard_rec, sizeof(shard_rec), "%s", where);
        size_t n = strlen(shard_rec);
        if (n >= 2 && strcmp(shard_rec + n - 2, ": ") == 0)
            shard_rec[n - 2] = '\0';
    }
    if (*why) {
        if (fd >= 0)
            close(fd);
        if (top)
            return ckpt__fail(s->err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "%s", why);
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, shard_rec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                              "the shard file %s", why);
    }
    if (top) {
        s->file_dev = (uint64_t)sb.st_dev;
        s->file_ino = (uint64_t)sb.st_ino;
    } else if ((uint64_t)sb.st_dev == s->file_dev && (uint64_t)sb.st_ino == s->file_ino) {
        close(fd);
        return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, shard_rec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                              "a shard that is the index itself (a shard must be a checkpoint "
                              "file)");
    } else if (s->shards_seen) {
        bool dup;
        seen_slot k = {.dev = (uint64_t)sb.st_dev, .ino = (uint64_t)sb.st_ino};
        if (!seen_add(s->shards_seen, &k, &dup)) {
            close(fd);
            return ckpt__nomem(s->err);
        }
        if (dup) {
            close(fd); /* another name of a shard file already scanned */
            return CKPT_OK;
        }
    }
    const uint8_t *map = (const uint8_t *)"";
    size_t size = 0;
    if (sb.st_size > 0) {
        void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            int e = errno;
            close(fd);
            if (top)
                return ckpt__fail(s->err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot map: %s",
                                  strerror(e));
            return ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, shard_rec, CKPT_NO_OFFSET,
                                  CKPT_NO_OFFSET, "the shard file cannot be mapped: %s",
                                  strerror(e));
        }
        map = m;
        size = (size_t)sb.st_size;
    }
    close(fd);
    bool random = scan_advise(map, size);
    if (top) {
        st = ckpt__scan_bytes(s, map, size, "", 0, true);
    } else if (s->depth >= SCAN_MAX_DEPTH) {
        st = ckpt__scan_add(s, CKPT_SCAN_KIND_LIMIT, shard_rec, CKPT_NO_OFFSET, CKPT_NO_OFFSET,
                            "nested too deep: not checked");
    } else {
        s->depth++;
        /* a shard's own format does not change the report's */
        st = reads_as_index(map, size)
                 ? ckpt__scan_add(s, CKPT_SCAN_KIND_FORMAT, shard_rec, CKPT_NO_OFFSET,
                                  CKPT_NO_OFFSET, "a shard that is itself a sharded index (a "
                                  "shard must be a checkpoint file)")
                 : ckpt__scan_bytes(s, map, size, where, CKPT_NO_OFFSET, false);
        s->depth--;
    }
    if (random)
        ckpt__map_advise(map, size, CKPT__ADVISE_NORMAL);
    if (size)
        munmap((void *)(uintptr_t)map, size);
    return st;
}

ckpt_status ckpt_scan_file(const char *path, const ckpt_scan_options *opts, ckpt_scan **out,
                           ckpt_error *err)
{
    if (out)
        *out = NULL;
    if (!out || !path)
        return CKPT_INVALID_ARG(err, "NULL argument");
    ckpt_scan *r = report_new();
    if (!r)
        return ckpt__nomem(err);
    scan_ctx s;
    ctx_init(&s, r, opts, err);
    size_t plen = strlen(path);
    char *dir = malloc(plen + 2);
    if (dir)
        memcpy(dir, path, plen + 1);
    if (!dir) {
        ckpt_scan_free(r);
        return ckpt__nomem(err);
    }
    char *slash = strrchr(dir, '/');
    if (!slash)
        strcpy(dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    s.dir = dir;
    ckpt_status st;
    struct stat sb;
    const char *pslash = strrchr(path, '/');
    const char *base = pslash ? pslash + 1 : path;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
        st = ckpt__scan_dcp(&s, path);
    else if (strcmp(base, ".metadata") == 0)
        st = ckpt__scan_dcp(&s, dir);
    else
        st = scan_path(&s, path, NULL);
    if (st == CKPT_OK)
        st = finish(&s);
    free(s.uses);
    free(dir);
    if (st != CKPT_OK) {
        ckpt_scan_free(r);
        return st;
    }
    *out = r;
    return CKPT_OK;
}
