/*
 * scan.c - ckpt scan: is each file safe to torch.load(weights_only=True)?
 * Directories are walked as model scanners walk a model repository: in name
 * order, hidden directories (.git, .cache, ...) skipped, and only the files
 * that can be checkpoints scanned (by their first bytes, or a checkpoint's
 * extension); configs, tokenizers, text and images are counted as skipped.
 */
#include "cli.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_DIR_DEPTH 64

typedef struct scan_run {
    ckpt_scan_options opts;
    bool json;
    json_t *files;          /* --json: the per-file objects */
    bool fail_on_warning;   /* --fail-on warning */
    size_t safe, warning, unsafe, errors, skipped;
} scan_run;

enum { OPT_JSON = CLI_OPT_LONG, OPT_ALLOW, OPT_FAIL_ON };

static const struct option scan_options[] = {
    {"json", no_argument, NULL, OPT_JSON},
    {"allow", required_argument, NULL, OPT_ALLOW},
    {"fail-on", required_argument, NULL, OPT_FAIL_ON},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const cli_command scan_command = {
    "scan", "ckpt scan FILE|DIR... [--json] [--fail-on warning|unsafe] [--allow MODULE.NAME]...",
    "h", scan_options,
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: %s\n"
            "  Says whether each file is safe to load: 'safe' when torch.load(weights_only=True)\n"
            "  (PyTorch 2.6+) would load it without running code and every reader sees the same\n"
            "  archive; 'warning' when nothing in it runs code but torch's default reader\n"
            "  refuses it (torch.__version__ saved as a TorchVersion, numpy arrays, a .npy or\n"
            "  tar file: the finding says how to load it); 'unsafe' otherwise, with findings:\n"
            "  globals outside the allow-list (with the call as Python reads it, the record,\n"
            "  the byte offset and how the pickle uses them), TorchScript code, zip tricks,\n"
            "  broken or extra pickles, files that are not checkpoints. Nothing is run; only\n"
            "  pickles and headers are read. A directory is walked: hidden directories (.git)\n"
            "  are skipped, and so are files that cannot be checkpoints (configs, tokenizers,\n"
            "  text, images: neither a checkpoint's first bytes nor its extension); a summary\n"
            "  line ends the output.\n"
            "  --json               one JSON object: files, verdicts, findings, counts\n"
            "  --fail-on LEVEL      'unsafe' (default) or 'warning': the lowest verdict that\n"
            "                       makes the exit status 1\n"
            "  --allow MODULE.NAME  allow one more global, as torch's add_safe_globals does\n"
            "                       (never for the modules sys, os, posix, nt)\n"
            "  exit 0 every file safe or warning, 1 any unsafe (or warning with --fail-on\n"
            "  warning), 2 a file cannot be read\n",
            scan_command.synopsis);
}

/* The fields a newer library appended, read only when struct_size covers
 * them. */
static ckpt_scan_verdict finding_severity(const ckpt_scan_finding *f)
{
    return f->struct_size >= offsetof(ckpt_scan_finding, severity) + sizeof(f->severity)
               ? f->severity
               : CKPT_SCAN_VERDICT_UNSAFE;
}

static const char *finding_call(const ckpt_scan_finding *f)
{
    return f->struct_size >= offsetof(ckpt_scan_finding, call) + sizeof(f->call) ? f->call : NULL;
}

static json_t *offset_json(uint64_t off)
{
    return off == CKPT_NO_OFFSET ? json_null() : json_integer((json_int_t)off);
}

static void report_json(scan_run *r, const char *path, const ckpt_scan *sc, const ckpt_error *err)
{
    json_t *o = json_object();
    json_object_set_new(o, "file", json_string(path));
    if (!sc) {
        char msg[768];
        json_object_set_new(o, "verdict", json_string("error"));
        json_object_set_new(o, "format", json_null());
        json_object_set_new(o, "findings", json_array());
        json_object_set_new(o, "error", json_string(ckpt_error_format(err, msg, sizeof(msg))));
        json_array_append_new(r->files, o);
        return;
    }
    ckpt_scan_verdict verdict = ckpt_scan_get_verdict(sc);
    json_object_set_new(o, "verdict", json_string(ckpt_scan_verdict_name(verdict)));
    json_object_set_new(o, "format", json_string(ckpt_scan_format(sc)));
    /* true only where torch.load(weights_only=True) loads the file: a
     * torch.save file (zip or legacy) with nothing to warn about */
    const char *format = ckpt_scan_format(sc);
    bool torch_format = strcmp(format, "torch-zip") == 0 || strcmp(format, "torch-legacy") == 0;
    json_object_set_new(o, "torch_weights_only_loads",
                        json_boolean(verdict == CKPT_SCAN_VERDICT_SAFE && torch_format));
    const char *reason = torch_format
                             ? "every global is on torch's weights-only allow-list, every opcode "
                               "is one its reader runs, and every reader sees the same content"
                             : "not a file torch.load reads (it reads torch.save's zip and legacy "
                               "formats)";
    for (size_t i = 0; verdict != CKPT_SCAN_VERDICT_SAFE && i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        if (finding_severity(f) == verdict) {
            reason = f->message; /* the first finding that decided the verdict */
            break;
        }
    }
    json_object_set_new(o, "reason", json_string(reason));
    json_t *fs = json_array();
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        json_t *j = json_object();
        char use[160];
        json_object_set_new(j, "kind", json_string(ckpt_scan_kind_name(f->kind)));
        json_object_set_new(j, "severity", json_string(ckpt_scan_verdict_name(finding_severity(f))));
        json_object_set_new(j, "global", f->global ? json_string(f->global) : json_null());
        json_object_set_new(j, "call", finding_call(f) ? json_string(finding_call(f)) : json_null());
        json_object_set_new(j, "record", json_string(f->record));
        json_object_set_new(j, "offset", offset_json(f->offset));
        json_object_set_new(j, "file_offset", offset_json(f->file_offset));
        ckpt_scan_use_text(f->use, use, sizeof(use));
        json_object_set_new(j, "use", f->kind == CKPT_SCAN_KIND_GLOBAL ? json_string(use) : json_null());
        json_object_set_new(j, "runs_code", json_boolean(f->runs_code));
        json_object_set_new(j, "message", json_string(f->message));
        json_array_append_new(fs, j);
    }
    json_object_set_new(o, "findings", fs);
    json_array_append_new(r->files, o);
}

static void report_human(const char *path, const ckpt_scan *sc, const ckpt_error *err)
{
    if (!sc) {
        char msg[768];
        printf("%s: error: %s\n", path, ckpt_error_format(err, msg, sizeof(msg)));
        return;
    }
    size_t n = ckpt_scan_finding_count(sc);
    ckpt_scan_verdict verdict = ckpt_scan_get_verdict(sc);
    if (verdict == CKPT_SCAN_VERDICT_SAFE) {
        printf("%s: safe\n", path);
        return;
    }
    printf("%s: %s (%zu finding%s, %s)\n", path, ckpt_scan_verdict_name(verdict), n,
           n == 1 ? "" : "s", ckpt_scan_format(sc));
    for (size_t i = 0; i < n; i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        printf("  %s%s", finding_severity(f) == CKPT_SCAN_VERDICT_WARNING ? "warning: " : "",
               ckpt_scan_kind_name(f->kind));
        if (f->global) {
            char use[160];
            printf(" %s (%s%s)", finding_call(f) ? finding_call(f) : f->global,
                   ckpt_scan_use_text(f->use, use, sizeof(use)), f->runs_code ? "; runs code" : "");
        }
        if (f->record && *f->record)
            printf(" in %s", f->record);
        if (f->offset != CKPT_NO_OFFSET)
            printf(" at byte %llu", (unsigned long long)f->offset);
        printf(": %s\n", f->message);
    }
}

static void scan_one(scan_run *r, const char *path)
{
    ckpt_scan *sc = NULL;
    ckpt_error err;
    memset(&err, 0, sizeof(err));
    if (ckpt_scan_file(path, &r->opts, &sc, &err) != CKPT_OK) {
        sc = NULL;
        r->errors++;
    } else if (ckpt_scan_get_verdict(sc) == CKPT_SCAN_VERDICT_SAFE) {
        r->safe++;
    } else if (ckpt_scan_get_verdict(sc) == CKPT_SCAN_VERDICT_WARNING) {
        r->warning++;
    } else {
        r->unsafe++;
    }
    if (r->json)
        report_json(r, path, sc, &err);
    else
        report_human(path, sc, &err);
    if (!r->json)
        fflush(stdout);
    ckpt_scan_free(sc);
}

/* Extensions under which checkpoints and other pickles are saved: such a
 * file is scanned whatever it holds (picklescan's and modelscan's lists). */
static const char *const MODEL_EXTENSIONS[] = {
    ".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".joblib", ".dill", ".safetensors",
    ".npy", ".npz", ".zip", ".tar", ".7z", ".pt2", ".mar", ".data", ".sav",
};

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

/* A protocol-0/1 pickle that starts with a GLOBAL: "c" module "\n" name "\n". */
static bool text_pickle_global(const unsigned char *b, size_t n)
{
    if (n < 4 || b[0] != 'c')
        return false;
    size_t i = 1, lines = 0;
    for (; i < n && lines < 2; i++) {
        if (b[i] == '\n') {
            if (b[i - 1] == 'c' || b[i - 1] == '\n')
                return false;
            lines++;
        } else if (!(b[i] == '_' || b[i] == '.' || (b[i] >= '0' && b[i] <= '9') ||
                     ((b[i] | 0x20) >= 'a' && (b[i] | 0x20) <= 'z'))) {
            return false;
        }
    }
    return lines == 2;
}

/* A 512-byte block whose checksum field matches its bytes, as a tar header's
 * does (tarfile takes unsigned or signed sums, octal or base-256 fields). A
 * loose test: the scan itself decides what the file is. */
static bool tar_header_like(const unsigned char *b, size_t n)
{
    if (n < 512)
        return false;
    int64_t usum = 0, ssum = 0;
    for (size_t i = 0; i < 512; i++) {
        unsigned char c = i >= 148 && i < 156 ? ' ' : b[i];
        usum += c;
        ssum += (signed char)c;
    }
    uint64_t v = 0;
    if (b[148] & 0x80) {
        for (size_t i = 149; i < 156; i++)
            v = v << 8 | b[i];
    } else {
        size_t i = 148;
        while (i < 156 && (b[i] == ' ' || b[i] == 0))
            i++;
        if (i == 156 || b[i] < '0' || b[i] > '7')
            return false;
        for (; i < 156 && b[i] >= '0' && b[i] <= '7'; i++)
            v = v * 8 + (uint64_t)(b[i] - '0');
    }
    return (int64_t)v == usum || (int64_t)v == ssum;
}

/* Whether a file met in a directory walk can be a checkpoint: by its first
 * bytes (zip, pickle, numpy, safetensors, tar, 7z, a text pickle), a
 * sharded index's name (*.index.json), or a checkpoint's extension. What
 * is left is configs, tokenizers, text, images and the like: skipped. */
static bool may_be_checkpoint(const char *path, const char *name, uint64_t size)
{
    if (ends_with(name, ".index.json"))
        return true;
    for (size_t i = 0; i < sizeof(MODEL_EXTENSIONS) / sizeof(MODEL_EXTENSIONS[0]); i++) {
        if (ends_with(name, MODEL_EXTENSIONS[i]))
            return true;
    }
    unsigned char b[512];
    size_t n = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return true; /* scanned, so that the error is reported */
    n = fread(b, 1, sizeof(b), f);
    fclose(f);
    if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] < 9 && b[3] < 9)
        return true; /* zip */
    if (n >= 2 && b[0] == 0x80 && b[1] <= 5)
        return true; /* pickle PROTO */
    if (n >= 6 && memcmp(b, "\x93NUMPY", 6) == 0)
        return true;
    if (n >= 6 && memcmp(b, "7z\xbc\xaf\x27\x1c", 6) == 0)
        return true;
    if ((n >= 262 && memcmp(b + 257, "ustar", 5) == 0) || tar_header_like(b, n))
        return true;
    if (n >= 9 && b[8] == '{') { /* safetensors: header length, then JSON */
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | b[i];
        if (hlen >= 2 && hlen <= size - 8)
            return true;
    }
    return text_pickle_global(b, n);
}

static int name_order(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file below dir, in name order; links to directories are
 * not followed (no loops). */
static void scan_dir(scan_run *r, const char *dir, int depth)
{
    /* a DCP checkpoint is one checkpoint: its .metadata names its items */
    size_t mlen = strlen(dir) + sizeof("/.metadata");
    char *meta = malloc(mlen);
    struct stat msb;
    if (meta) {
        snprintf(meta, mlen, "%s/.metadata", dir);
        bool dcp = lstat(meta, &msb) == 0 && S_ISREG(msb.st_mode);
        free(meta);
        if (dcp) {
            scan_one(r, dir);
            return;
        }
    }
    DIR *d = opendir(dir);
    if (!d || depth > MAX_DIR_DEPTH) {
        if (d)
            closedir(d);
        ckpt_error err;
        memset(&err, 0, sizeof(err));
        err.status = CKPT_ERR_IO;
        err.offset = err.file_offset = CKPT_NO_OFFSET;
        snprintf(err.message, sizeof(err.message), "%s",
                 d ? "directories nested too deep" : "cannot read the directory");
        r->errors++;
        if (r->json)
            report_json(r, dir, NULL, &err);
        else
            report_human(dir, NULL, &err);
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 64;
            char **p = realloc(names, c * sizeof(*p));
            if (!p)
                break;
            names = p;
            cap = c;
        }
        names[n] = strdup(de->d_name);
        if (names[n])
            n++;
    }
    closedir(d);
    qsort(names, n, sizeof(*names), name_order);
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(dir) + 1 + strlen(names[i]) + 1;
        char *path = malloc(len);
        if (path) {
            snprintf(path, len, "%s%s%s", dir, dir[strlen(dir) - 1] == '/' ? "" : "/", names[i]);
            struct stat sb;
            bool hidden = names[i][0] == '.';
            if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
                if (hidden)
                    r->skipped++; /* .git, .cache, ...: not walked */
                else
                    scan_dir(r, path, depth + 1);
            } else if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode) && stat(path, &sb) == 0 &&
                       S_ISDIR(sb.st_mode)) {
                r->skipped++; /* a link to a directory: not followed */
            } else if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
                r->skipped++; /* a fifo, a socket, a device */
            } else if (stat(path, &sb) == 0 &&
                       !may_be_checkpoint(path, names[i], (uint64_t)sb.st_size)) {
                r->skipped++;
            } else {
                scan_one(r, path);
            }
            free(path);
        }
        free(names[i]);
    }
    free(names);
}

int ckpt_cli_scan(int argc, char **argv)
{
    scan_run r;
    memset(&r, 0, sizeof(r));
    ckpt_scan_options_default(&r.opts);
    const char **allow = calloc((size_t)argc + 1, sizeof(*allow));
    const char **paths = calloc((size_t)argc + 1, sizeof(*paths));
    size_t nallow = 0, npaths = 0;
    int rc = CLI_EXIT_OK;
    if (!allow || !paths) {
        fprintf(stderr, "ckpt: scan: out of memory\n");
        rc = CLI_EXIT_ERROR;
        goto out;
    }
    cli_args args;
    cli_args_init(&args, &scan_command, argc, argv);
    const char *arg;
    int c;
    while ((c = cli_next_arg(&args, &arg)) != CLI_OPT_END) {
        switch (c) {
        case OPT_JSON: r.json = true; break;
        case OPT_ALLOW:
            if (!*arg || !strchr(arg, '.')) {
                rc = cli_usage_error(&scan_command, "--allow needs a MODULE.NAME, not '%s'",
                                     arg);
                goto out;
            }
            allow[nallow++] = arg;
            break;
        case OPT_FAIL_ON:
            if (strcmp(arg, "warning") == 0) {
                r.fail_on_warning = true;
            } else if (strcmp(arg, "unsafe") == 0) {
                r.fail_on_warning = false;
            } else {
                rc = cli_usage_error(&scan_command,
                                     "--fail-on takes 'warning' or 'unsafe', not '%s'", arg);
                goto out;
            }
            break;
        case 'h': usage(stdout); goto out;
        case CLI_OPT_ARG: paths[npaths++] = arg; break;
        default: rc = CLI_EXIT_ERROR; goto out;
        }
    }
    if (!npaths) {
        usage(stderr);
        rc = CLI_EXIT_ERROR;
        goto out;
    }
    r.opts.allow = allow;
    r.opts.allow_count = nallow;
    if (r.json)
        r.files = json_array();
    bool any_dir = false;
    for (size_t i = 0; i < npaths; i++) {
        struct stat sb;
        if (stat(paths[i], &sb) == 0 && S_ISDIR(sb.st_mode)) {
            any_dir = true;
            scan_dir(&r, paths[i], 0);
        } else {
            scan_one(&r, paths[i]);
        }
    }
    if (r.json) {
        json_t *o = json_object();
        json_object_set_new(o, "files", r.files);
        json_object_set_new(o, "safe", json_integer((json_int_t)r.safe));
        json_object_set_new(o, "warning", json_integer((json_int_t)r.warning));
        json_object_set_new(o, "unsafe", json_integer((json_int_t)r.unsafe));
        json_object_set_new(o, "errors", json_integer((json_int_t)r.errors));
        json_object_set_new(o, "skipped", json_integer((json_int_t)r.skipped));
        if (!cli_print_json(o, 1, "scan")) {
            rc = CLI_EXIT_ERROR;
            goto out;
        }
    } else if (any_dir || npaths > 1) {
        size_t n = r.safe + r.warning + r.unsafe + r.errors;
        printf("%zu files: %zu safe, %zu warning, %zu unsafe, %zu errors, %zu skipped\n", n,
               r.safe, r.warning, r.unsafe, r.errors, r.skipped);
    }
    rc = r.errors                              ? CLI_EXIT_ERROR
         : r.unsafe                            ? CLI_EXIT_FAIL
         : r.warning && r.fail_on_warning      ? CLI_EXIT_FAIL
                                               : CLI_EXIT_OK;
out:
    free(allow);
    free(paths);
    return rc;
}
