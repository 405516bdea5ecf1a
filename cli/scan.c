/*
 * scan.c - ckpt scan: is each file safe to torch.load(weights_only=True)?
 * Directories are walked (every regular file below them, in name order).
 */
#include "cli.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_DIR_DEPTH 64

typedef struct scan_run {
    ckpt_scan_options opts;
    bool json;
    json_t *files;          /* --json: the per-file objects */
    size_t safe, unsafe, errors;
} scan_run;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ckpt scan FILE|DIR... [--json] [--allow MODULE.NAME]...\n"
            "  Says whether each file is safe to load: 'safe' when torch.load(weights_only=True)\n"
            "  (PyTorch 2.6+) would load it without running code and every reader sees the same\n"
            "  archive; 'unsafe' otherwise, with findings: globals outside the allow-list (with\n"
            "  the record, the byte offset and how the pickle uses them), TorchScript code, zip\n"
            "  tricks, broken or extra pickles, files that are not checkpoints. Nothing is run;\n"
            "  only pickles and headers are read. Directories are scanned recursively.\n"
            "  --json               one JSON object: files, verdicts, findings, counts\n"
            "  --allow MODULE.NAME  allow one more global, as torch's add_safe_globals does\n"
            "                       (never for the modules sys, os, posix, nt)\n"
            "  exit 0 all safe, 1 any unsafe, 2 a file cannot be read\n");
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
    json_object_set_new(o, "verdict",
                        json_string(ckpt_scan_verdict_name(ckpt_scan_get_verdict(sc))));
    json_object_set_new(o, "format", json_string(ckpt_scan_format(sc)));
    json_t *fs = json_array();
    for (size_t i = 0; i < ckpt_scan_finding_count(sc); i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        json_t *j = json_object();
        char use[160];
        json_object_set_new(j, "kind", json_string(ckpt_scan_kind_name(f->kind)));
        json_object_set_new(j, "global", f->global ? json_string(f->global) : json_null());
        json_object_set_new(j, "record", json_string(f->record));
        json_object_set_new(j, "offset", offset_json(f->offset));
        json_object_set_new(j, "file_offset", offset_json(f->file_offset));
        ckpt_scan_use_text(f->use, use, sizeof(use));
        json_object_set_new(j, "use",
                            f->kind == CKPT_SCAN_KIND_GLOBAL ? json_string(use) : json_null());
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
    if (ckpt_scan_get_verdict(sc) == CKPT_SCAN_VERDICT_SAFE) {
        printf("%s: safe\n", path);
        return;
    }
    printf("%s: unsafe (%zu finding%s, %s)\n", path, n, n == 1 ? "" : "s", ckpt_scan_format(sc));
    for (size_t i = 0; i < n; i++) {
        const ckpt_scan_finding *f = ckpt_scan_finding_at(sc, i);
        printf("  %s", ckpt_scan_kind_name(f->kind));
        if (f->global) {
            char use[160];
            printf(" %s (%s%s)", f->global, ckpt_scan_use_text(f->use, use, sizeof(use)),
                   f->runs_code ? "; runs code" : "");
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

static int name_order(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every regular file below dir, in name order; links to directories are
 * not followed (no loops). */
static void scan_dir(scan_run *r, const char *dir, int depth)
{
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
            if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
                scan_dir(r, path, depth + 1);
            else if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode) && stat(path, &sb) == 0 &&
                     S_ISDIR(sb.st_mode))
                ; /* a link to a directory: not followed */
            else
                scan_one(r, path);
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
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--json") == 0) {
            r.json = true;
        } else if (strcmp(a, "--allow") == 0 || strncmp(a, "--allow=", 8) == 0) {
            const char *name = a[7] == '=' ? a + 8 : (i + 1 < argc ? argv[++i] : NULL);
            if (!name || !*name || !strchr(name, '.')) {
                fprintf(stderr, "ckpt: scan: --allow needs a MODULE.NAME\n");
                rc = CLI_EXIT_ERROR;
                goto out;
            }
            allow[nallow++] = name;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            goto out;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "ckpt: scan: unknown option '%s'\n", a);
            rc = CLI_EXIT_ERROR;
            goto out;
        } else {
            paths[npaths++] = a;
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
    for (size_t i = 0; i < npaths; i++) {
        struct stat sb;
        if (stat(paths[i], &sb) == 0 && S_ISDIR(sb.st_mode))
            scan_dir(&r, paths[i], 0);
        else
            scan_one(&r, paths[i]);
    }
    if (r.json) {
        json_t *o = json_object();
        json_object_set_new(o, "files", r.files);
        json_object_set_new(o, "safe", json_integer((json_int_t)r.safe));
        json_object_set_new(o, "unsafe", json_integer((json_int_t)r.unsafe));
        json_object_set_new(o, "errors", json_integer((json_int_t)r.errors));
        if (!cli_print_json(o, 1, "scan")) {
            rc = CLI_EXIT_ERROR;
            goto out;
        }
    }
    rc = r.errors ? CLI_EXIT_ERROR : r.unsafe ? CLI_EXIT_BAD : CLI_EXIT_OK;
out:
    free(allow);
    free(paths);
    return rc;
}
