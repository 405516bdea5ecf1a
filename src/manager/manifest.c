/*
 * manifest.c - the checkpoint manager's manifest.json: its records in
 * memory, and their JSON text.
 *
 * The text is written here (floats as Python's repr writes them, so a
 * metric reads "0.1", not "0.10000000000000001"); it is read with jansson,
 * refusing duplicate keys. A manifest is checked as strictly as any input:
 * a field of the wrong type or range makes the whole file unreadable, and
 * the manager then rebuilds it from the files themselves.
 */
#include "manager.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- records ------------------------------------------------------------ */

void ckpt__mentry_free(ckpt__mentry *e)
{
    if (!e)
        return;
    for (size_t i = 0; i < e->metric_count; i++)
        free((void *)(uintptr_t)e->metrics[i].name);
    free(e->metrics);
    free(e->file);
    free(e->ckpt_version);
    free(e->torch_version);
    free(e->user_json);
    memset(e, 0, sizeof(*e));
}

static bool dup_str(char **dst, const char *src)
{
    *dst = NULL;
    return !src || (*dst = strdup(src)) != NULL;
}

bool ckpt__mentry_copy(ckpt__mentry *dst, const ckpt__mentry *src)
{
    *dst = *src;
    dst->file = dst->ckpt_version = dst->torch_version = dst->user_json = NULL;
    dst->metrics = NULL;
    dst->metric_count = 0;
    bool ok = dup_str(&dst->file, src->file) && dup_str(&dst->ckpt_version, src->ckpt_version) &&
              dup_str(&dst->torch_version, src->torch_version) &&
              dup_str(&dst->user_json, src->user_json);
    if (ok && src->metric_count) {
        dst->metrics = calloc(src->metric_count, sizeof(*dst->metrics));
        ok = dst->metrics != NULL;
        for (size_t i = 0; ok && i < src->metric_count; i++) {
            dst->metrics[i].value = src->metrics[i].value;
            ok = (dst->metrics[i].name = strdup(src->metrics[i].name)) != NULL;
            dst->metric_count = i + 1;
        }
    }
    if (!ok)
        ckpt__mentry_free(dst);
    return ok;
}

bool ckpt__mlist_push(ckpt__mlist *l, ckpt__mentry *e)
{
    if (l->count == l->cap) {
        ckpt__mentry *n = ckpt__array_grow(l->items, &l->cap, sizeof(*n));
        if (!n) {
            ckpt__mentry_free(e);
            return false;
        }
        l->items = n;
    }
    l->items[l->count++] = *e;
    memset(e, 0, sizeof(*e));
    return true;
}

void ckpt__mlist_remove(ckpt__mlist *l, size_t i)
{
    ckpt__mentry_free(&l->items[i]);
    memmove(&l->items[i], &l->items[i + 1], (l->count - i - 1) * sizeof(*l->items));
    l->count--;
}

void ckpt__mlist_free(ckpt__mlist *l)
{
    for (size_t i = 0; i < l->count; i++)
        ckpt__mentry_free(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof(*l));
}

ckpt__mentry *ckpt__mlist_find(const ckpt__mlist *l, const char *file)
{
    for (size_t i = 0; i < l->count; i++)
        if (strcmp(l->items[i].file, file) == 0)
            return &l->items[i];
    return NULL;
}

void ckpt__manifest_free(ckpt__manifest *mf)
{
    free(mf->monitor);
    ckpt__mlist_free(&mf->committed);
    ckpt__mlist_free(&mf->pending);
    for (size_t i = 0; i < mf->removing_count; i++)
        free(mf->removing[i]);
    free(mf->removing);
    memset(mf, 0, sizeof(*mf));
}

const ckpt_metric *ckpt__mentry_metric(const ckpt__mentry *e, const char *name)
{
    for (size_t i = 0; name && i < e->metric_count; i++)
        if (strcmp(e->metrics[i].name, name) == 0)
            return &e->metrics[i];
    return NULL;
}

bool ckpt__numbered_name_ext(int64_t step, const char *ext, char *buf, size_t cap)
{
    int n = snprintf(buf, cap, "step-%08" PRId64 "%s", step, ext);
    return step >= 0 && n > 0 && (size_t)n < cap;
}

bool ckpt__numbered_name(int64_t step, char *buf, size_t cap)
{
    return ckpt__numbered_name_ext(step, ".pth", buf, cap);
}

int ckpt__name_role(const char *name, bool *dir)
{
    bool d = strcmp(name, CKPT__DCP_LAST_NAME) == 0 || strcmp(name, CKPT__DCP_BEST_NAME) == 0;
    int role = -1;
    if (strcmp(name, CKPT__LAST_NAME) == 0 || strcmp(name, CKPT__DCP_LAST_NAME) == 0)
        role = 0;
    else if (strcmp(name, CKPT__BEST_NAME) == 0 || strcmp(name, CKPT__DCP_BEST_NAME) == 0)
        role = 1;
    else if (ckpt__numbered_step(name) >= 0) {
        role = 2;
        size_t n = strlen(name);
        d = n > 4 && strcmp(name + n - 4, ".dcp") == 0;
    }
    if (dir)
        *dir = role >= 0 && d;
    return role;
}

int64_t ckpt__numbered_step(const char *name)
{
    if (strncmp(name, "step-", 5) != 0)
        return -1;
    const char *p = name + 5;
    int64_t v = 0;
    size_t digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (v > (INT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (digits < 8 || (strcmp(p, ".pth") != 0 && strcmp(p, ".dcp") != 0))
        return -1;
    /* only the spelling ckpt__numbered_name gives names a step */
    char canon[64];
    if (!ckpt__numbered_name_ext(v, p, canon, sizeof(canon)) || strcmp(canon, name) != 0)
        return -1;
    return v;
}

/* ---- reading -------------------------------------------------------------- */

#define bad(err, fmt, what) \
    ckpt__fail(err, CKPT_ERR_FORMAT, CKPT__MANIFEST_NAME, CKPT_NO_OFFSET, fmt, what)

/* A plain file name of ours: no directory part, no leading dot. */
static bool name_ok(const char *s)
{
    return *s && *s != '.' && !strchr(s, '/') && strlen(s) < 256 && ckpt__name_role(s, NULL) >= 0;
}

static bool parse_time(const char *s, int64_t *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    char z = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &z) != 7 || z != 'Z' || strlen(s) != 20)
        return false;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    struct tm back;
    /* -1 says "unknown": times before 1970 are not ours; and the time must
     * print back in 20 characters (a leap second in 9999 would not) */
    if (t < 0 || !gmtime_r(&t, &back) || back.tm_year + 1900 > 9999)
        return false;
    *out = (int64_t)t;
    return true;
}

static bool metric_value(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return true;
    }
    const char *s = json_string_value(v);
    if (!s)
        return false;
    if (strcmp(s, "NaN") == 0)
        *out = NAN;
    else if (strcmp(s, "Infinity") == 0)
        *out = INFINITY;
    else if (strcmp(s, "-Infinity") == 0)
        *out = -INFINITY;
    else
        return false;
    return true;
}

/* Optional string member: absent or null gives NULL; false when it is
 * there but not a string, or out of memory. */
static bool opt_str(json_t *o, const char *key, char **out)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return true;
    const char *s = json_string_value(v);
    return s && (*out = strdup(s)) != NULL;
}

static ckpt_status read_entry(json_t *o, ckpt__mentry *e, ckpt_error *err)
{
    memset(e, 0, sizeof(*e));
    if (!json_is_object(o))
        return bad(err, "a checkpoint entry is not an object%s", "");
    const char *file = json_string_value(json_object_get(o, "file"));
    if (!file || !name_ok(file))
        return bad(err, "a checkpoint entry has no valid \"file\"%s", "");
    ckpt_status st = CKPT_ERR_FORMAT;
    if (!(e->file = strdup(file)))
        goto nomem;
    json_t *v = json_object_get(o, "step");
    if (!json_is_integer(v) || json_integer_value(v) < -1) {
        bad(err, "entry %s: \"step\" is not an integer >= -1", file);
        goto fail;
    }
    e->step = json_integer_value(v);
    v = json_object_get(o, "size");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        bad(err, "entry %s: \"size\" is not a size", file);
        goto fail;
    }
    e->size = (uint64_t)json_integer_value(v);
    const char *crc = json_string_value(json_object_get(o, "crc32"));
    char *end = NULL;
    unsigned long c = crc && strlen(crc) == 8 ? strtoul(crc, &end, 16) : 0;
    if (!crc || !end || *end || strspn(crc, "0123456789abcdef") != 8) {
        bad(err, "entry %s: \"crc32\" is not 8 hex digits", file);
        goto fail;
    }
    e->crc = (uint32_t)c;
    e->time = -1;
    v = json_object_get(o, "time");
    const char *when = json_string_value(v);
    if (v && !json_is_null(v) && !(when && parse_time(when, &e->time))) {
        bad(err, "entry %s: \"time\" is not an ISO 8601 UTC time", file);
        goto fail;
    }
    v = json_object_get(o, "format_version");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 1000000) {
            bad(err, "entry %s: \"format_version\" is not a version number", file);
            goto fail;
        }
        e->format_version = (int)json_integer_value(v);
    }
    if (!opt_str(o, "ckpt_version", &e->ckpt_version) ||
        !opt_str(o, "torch_version", &e->torch_version)) {
        bad(err, "entry %s: a version is not text", file);
        goto fail;
    }
    v = json_object_get(o, "user");
    if (v && !json_is_null(v)) {
        if (!json_is_object(v)) {
            bad(err, "entry %s: \"user\" is not an object", file);
            goto fail;
        }
        if (!(e->user_json = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER)))
            goto nomem;
    }
    const char *content = json_string_value(json_object_get(o, "content"));
    if (!content || (strcmp(content, "weights") != 0 && strcmp(content, "checkpoint") != 0)) {
        bad(err, "entry %s: \"content\" is not \"weights\" or \"checkpoint\"", file);
        goto fail;
    }
    e->weights_only = strcmp(content, "weights") == 0;
    json_t *m = json_object_get(o, "metrics");
    if (!json_is_object(m)) {
        bad(err, "entry %s: \"metrics\" is not an object", file);
        goto fail;
    }
    size_t n = json_object_size(m);
    if (n) {
        if (!(e->metrics = calloc(n, sizeof(*e->metrics))))
            goto nomem;
        const char *k;
        json_t *mv;
        json_object_foreach(m, k, mv) {
            double d;
            if (!metric_value(mv, &d)) {
                bad(err, "entry %s: a metric is not a number", file);
                goto fail;
            }
            if (!(e->metrics[e->metric_count].name = strdup(k)))
                goto nomem;
            e->metrics[e->metric_count++].value = d;
        }
    }
    return CKPT_OK;
nomem:
    st = ckpt__nomem(err);
fail:
    ckpt__mentry_free(e);
    return st;
}

static int cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Entries of one list (at most max), each file once: duplicates are found
 * by sorting, so a long list costs n log n. */
static ckpt_status read_list(json_t *a, ckpt__mlist *l, size_t max, const char *what,
                             ckpt_error *err)
{
    if (!a)
        return CKPT_OK;
    if (!json_is_array(a))
        return bad(err, "\"%s\" is not a list", what);
    if (json_array_size(a) > max)
        return bad(err, "\"%s\" has more entries than a save makes", what);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        ckpt__mentry e;
        CKPT_RETURN_IF_ERROR(read_entry(v, &e, err));
        if (!ckpt__mlist_push(l, &e))
            return ckpt__nomem(err);
    }
    const char **names = malloc((l->count ? l->count : 1) * sizeof(*names));
    if (!names)
        return ckpt__nomem(err);
    for (i = 0; i < l->count; i++)
        names[i] = l->items[i].file;
    qsort(names, l->count, sizeof(*names), cmp_name_ptr);
    ckpt_status st = CKPT_OK;
    for (i = 1; i < l->count && st == CKPT_OK; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            st = bad(err, "two entries for %s", names[i]);
    free(names);
    return st;
}

static ckpt_status read_doc(json_t *doc, ckpt__manifest *mf, ckpt_error *err)
{
    if (!json_is_object(doc))
        return bad(err, "the manifest is not an object%s", "");
    const char *fmt = json_string_value(json_object_get(doc, "format"));
    json_t *ver = json_object_get(doc, "version");
    if (!fmt || strcmp(fmt, "ckpt-manifest") != 0)
        return bad(err, "\"format\" is not \"ckpt-manifest\"%s", "");
    if (!json_is_integer(ver) || json_integer_value(ver) < 1)
        return bad(err, "\"version\" is not a version number%s", "");
    if (json_integer_value(ver) != 1) /* a newer ckpt's: not ours to rewrite */
        return ckpt__fail(err, CKPT_ERR_UNSUPPORTED, CKPT__MANIFEST_NAME, CKPT_NO_OFFSET,
                          "manifest version %lld is newer than this ckpt reads (1)",
                          (long long)json_integer_value(ver));
    json_t *mon = json_object_get(doc, "monitor");
    if (mon && !json_is_null(mon)) {
        const char *s = json_string_value(mon);
        if (!s || !*s)
            return bad(err, "\"monitor\" is not a metric name%s", "");
        if (!(mf->monitor = strdup(s)))
            return ckpt__nomem(err);
    }
    const char *mode = json_string_value(json_object_get(doc, "mode"));
    mf->mode = mode && strcmp(mode, "max") == 0 ? CKPT_MODE_MAX : CKPT_MODE_MIN;
    if (mode && strcmp(mode, "max") != 0 && strcmp(mode, "min") != 0)
        return bad(err, "\"mode\" is not \"min\" or \"max\"%s", "");
    CKPT_RETURN_IF_ERROR(read_list(json_object_get(doc, "checkpoints"), &mf->committed, SIZE_MAX,
                                   "checkpoints", err));
    /* a save makes last.pth, best.pth and one numbered file */
    CKPT_RETURN_IF_ERROR(read_list(json_object_get(doc, "pending"), &mf->pending, 3, "pending",
                                   err));
    json_t *rm = json_object_get(doc, "removing");
    if (rm) {
        if (!json_is_array(rm))
            return bad(err, "\"removing\" is not a list%s", "");
        size_t n = json_array_size(rm);
        if (n && !(mf->removing = calloc(n, sizeof(*mf->removing))))
            return ckpt__nomem(err);
        for (size_t i = 0; i < n; i++) {
            const char *s = json_string_value(json_array_get(rm, i));
            if (!s || !name_ok(s))
                return bad(err, "\"removing\" names something that is not a checkpoint%s", "");
            if (!(mf->removing[mf->removing_count] = strdup(s)))
                return ckpt__nomem(err);
            mf->removing_count++;
        }
    }
    return CKPT_OK;
}

ckpt_status ckpt__manifest_parse(const void *text, size_t len, uint64_t max_bytes,
                                 ckpt__manifest *mf, ckpt_error *err)
{
    memset(mf, 0, sizeof(*mf));
    if (len > max_bytes)
        return ckpt__fail(err, CKPT_ERR_LIMIT, CKPT__MANIFEST_NAME, CKPT_NO_OFFSET,
                          "%zu bytes, over the limit of %" PRIu64 " (max_manifest_bytes)", len,
                          max_bytes);
    json_error_t je;
    json_t *doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!doc)
        return ckpt__fail(err, CKPT_ERR_FORMAT, CKPT__MANIFEST_NAME, (uint64_t)je.position,
                          "not JSON: %s", je.text);
    ckpt_status s = read_doc(doc, mf, err);
    json_decref(doc);
    if (s != CKPT_OK)
        ckpt__manifest_free(mf);
    return s;
}

ckpt_status ckpt__manifest_read(const char *path, uint64_t max_bytes, ckpt__manifest *mf,
                                ckpt_error *err)
{
    memset(mf, 0, sizeof(*mf));
    /* O_NONBLOCK: a FIFO in its place must not hang the open */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            return ckpt__fail(err, CKPT_ERR_NOT_FOUND, "", CKPT_NO_OFFSET, "no %s",
                              CKPT__MANIFEST_NAME);
        return ckpt__fail(err, CKPT_ERR_IO, "", CKPT_NO_OFFSET, "cannot read %s: %s", path,
                          strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return bad(err, "%s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return ckpt__fail(err, CKPT_ERR_LIMIT, CKPT__MANIFEST_NAME, CKPT_NO_OFFSET,
                          "%" PRIu64 " bytes, over the limit of %" PRIu64
                          " (max_manifest_bytes)",
                          (uint64_t)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size, got = 0;
    char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return ckpt__nomem(err);
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    /* a file that shrank while read is parsed as it was read: the text is
     * checked either way */
    ckpt_status s = ckpt__manifest_parse(buf, got, max_bytes, mf, err);
    free(buf);
    return s;
}

/* ---- writing -------------------------------------------------------------- */

static void put(ckpt__buf *b, const char *s) { ckpt__buf_put(b, s, strlen(s)); }

/* A JSON string: the text is UTF-8 (checked when it came in), so only
 * quotes, backslashes and control characters need escapes. */
static void put_jstr(ckpt__buf *b, const char *s)
{
    ckpt__buf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            ckpt__buf_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", *p);
            put(b, esc);
        } else {
            ckpt__buf_put(b, p, 1);
        }
    }
    ckpt__buf_put(b, "\"", 1);
}

static void put_num(ckpt__buf *b, double d)
{
    if (isnan(d)) {
        put(b, "\"NaN\"");
    } else if (isinf(d)) {
        put(b, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    } else {
        char t[40];
        ckpt__float_repr(d, 0, t, sizeof(t));
        put(b, t);
    }
}

static void put_i64(ckpt__buf *b, int64_t v)
{
    char t[32];
    snprintf(t, sizeof(t), "%" PRId64, v);
    put(b, t);
}

static void put_entry(ckpt__buf *b, const ckpt__mentry *e, int last, int best)
{
    put(b, "    {\"file\": ");
    put_jstr(b, e->file);
    put(b, ", \"step\": ");
    put_i64(b, e->step);
    put(b, ", \"metrics\": {");
    for (size_t i = 0; i < e->metric_count; i++) {
        put(b, i ? ", " : "");
        put_jstr(b, e->metrics[i].name);
        put(b, ": ");
        put_num(b, e->metrics[i].value);
    }
    put(b, "},\n     \"size\": ");
    put_i64(b, (int64_t)e->size);
    char t[32];
    snprintf(t, sizeof(t), "\"%08" PRIx32 "\"", e->crc);
    put(b, ", \"crc32\": ");
    put(b, t);
    put(b, ", \"time\": ");
    if (e->time >= 0) {
        time_t tt = (time_t)e->time;
        struct tm tm;
        if (gmtime_r(&tt, &tm) && strftime(t, sizeof(t), "\"%Y-%m-%dT%H:%M:%SZ\"", &tm))
            put(b, t);
        else
            put(b, "null");
    } else {
        put(b, "null");
    }
    put(b, ",\n     \"ckpt_version\": ");
    if (e->ckpt_version)
        put_jstr(b, e->ckpt_version);
    else
        put(b, "null");
    put(b, ", \"format_version\": ");
    if (e->format_version)
        put_i64(b, e->format_version);
    else
        put(b, "null");
    if (e->torch_version) {
        put(b, ", \"torch_version\": ");
        put_jstr(b, e->torch_version);
    }
    if (e->user_json) {
        put(b, ", \"user\": ");
        put(b, e->user_json);
    }
    put(b, ",\n     \"content\": ");
    put(b, e->weights_only ? "\"weights\"" : "\"checkpoint\"");
    if (last >= 0) {
        put(b, ", \"last\": ");
        put(b, last ? "true" : "false");
        put(b, ", \"best\": ");
        put(b, best ? "true" : "false");
    }
    put(b, "}");
}

static void put_list(ckpt__buf *b, const char *key, const ckpt__mlist *l, const bool *is_last,
                     const bool *is_best)
{
    put(b, ",\n  \"");
    put(b, key);
    put(b, "\": [");
    for (size_t i = 0; i < l->count; i++) {
        put(b, i ? ",\n" : "\n");
        put_entry(b, &l->items[i], is_last ? is_last[i] : -1, is_best ? is_best[i] : -1);
    }
    put(b, l->count ? "\n  ]" : "]");
}

char *ckpt__manifest_text(const ckpt__manifest *mf, const bool *is_last, const bool *is_best)
{
    ckpt__buf b = {0};
    put(&b, "{\n  \"format\": \"ckpt-manifest\",\n  \"version\": 1,\n  \"monitor\": ");
    if (mf->monitor)
        put_jstr(&b, mf->monitor);
    else
        put(&b, "null");
    put(&b, ",\n  \"mode\": ");
    put(&b, mf->mode == CKPT_MODE_MAX ? "\"max\"" : "\"min\"");
    put_list(&b, "checkpoints", &mf->committed, is_last, is_best);
    if (mf->pending.count)
        put_list(&b, "pending", &mf->pending, NULL, NULL);
    if (mf->removing_count) {
        put(&b, ",\n  \"removing\": [");
        for (size_t i = 0; i < mf->removing_count; i++) {
            put(&b, i ? ", " : "");
            put_jstr(&b, mf->removing[i]);
        }
        put(&b, "]");
    }
    put(&b, "\n}\n");
    if (b.failed) {
        ckpt__buf_free(&b);
        return NULL;
    }
    return (char *)b.p;
}
