/*
 * json_out.c - JSON written as it is produced, for outputs as long as a
 * file's tensor list: memory stays that of one item, not of a document.
 *
 * The text is the one jansson's json_dumps gives with JSON_INDENT(n),
 * JSON_PRESERVE_ORDER and JSON_REAL_PRECISION(17) (cli_print_json), so
 * small and streamed outputs look alike.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_jw_init(cli_jw *w, FILE *fp, unsigned indent)
{
    memset(w, 0, sizeof(*w));
    w->fp = fp;
    w->indent = indent;
}

static void newline(cli_jw *w, size_t depth)
{
    fputc('\n', w->fp);
    for (size_t i = 0; i < depth * w->indent; i++)
        fputc(' ', w->fp);
}

/* Before an item of the innermost container (a value of an array, a key
 * of an object). */
static void item_start(cli_jw *w)
{
    if (w->depth == 0)
        return;
    if (w->depth > CLI_JW_MAX_DEPTH) {
        w->failed = true;
        return;
    }
    if (w->count[w->depth - 1]++)
        fputc(',', w->fp);
    newline(w, w->depth);
}

static void value_start(cli_jw *w)
{
    if (w->after_key)
        w->after_key = false;
    else
        item_start(w);
}

bool cli_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned long cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        /* jansson refuses overlong forms, surrogates and past U+10FFFF */
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

/* A JSON string as jansson writes it: ", \ and control characters
 * escaped, the rest as it is. */
static void put_string(cli_jw *w, const char *s, size_t n)
{
    FILE *fp = w->fp;
    fputc('"', fp);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        fwrite(s + run, 1, i - run, fp);
        run = i + 1;
        switch (c) {
        case '"': fputs("\\\"", fp); break;
        case '\\': fputs("\\\\", fp); break;
        case '\b': fputs("\\b", fp); break;
        case '\f': fputs("\\f", fp); break;
        case '\n': fputs("\\n", fp); break;
        case '\r': fputs("\\r", fp); break;
        case '\t': fputs("\\t", fp); break;
        default: fprintf(fp, "\\u%04X", c); break;
        }
    }
    fwrite(s + run, 1, n - run, fp);
    fputc('"', fp);
}

void cli_jw_begin_object(cli_jw *w)
{
    value_start(w);
    fputc('{', w->fp);
    if (w->depth < CLI_JW_MAX_DEPTH)
        w->count[w->depth] = 0;
    w->depth++;
}

void cli_jw_begin_array(cli_jw *w)
{
    value_start(w);
    fputc('[', w->fp);
    if (w->depth < CLI_JW_MAX_DEPTH)
        w->count[w->depth] = 0;
    w->depth++;
}

static void end(cli_jw *w, char close)
{
    if (w->depth == 0) {
        w->failed = true;
        return;
    }
    w->depth--;
    if (w->depth < CLI_JW_MAX_DEPTH && w->count[w->depth])
        newline(w, w->depth);
    fputc(close, w->fp);
}

void cli_jw_end_object(cli_jw *w) { end(w, '}'); }
void cli_jw_end_array(cli_jw *w) { end(w, ']'); }

void cli_jw_key(cli_jw *w, const char *key)
{
    item_start(w);
    put_string(w, key, strlen(key));
    fputs(": ", w->fp);
    w->after_key = true;
}

bool cli_jw_stringn(cli_jw *w, const char *s, size_t n)
{
    if (!s || !cli_utf8_valid(s, n)) {
        cli_jw_null(w);
        return false;
    }
    value_start(w);
    put_string(w, s, n);
    return true;
}

bool cli_jw_string(cli_jw *w, const char *s)
{
    return cli_jw_stringn(w, s, s ? strlen(s) : 0);
}

void cli_jw_int(cli_jw *w, long long v)
{
    value_start(w);
    fprintf(w->fp, "%lld", v);
}

void cli_jw_real(cli_jw *w, double d)
{
    /* jansson: %.17g, ".0" when that reads as an integer, an exponent
     * without '+' and leading zeros; not finite: no JSON text (null) */
    if (d != d || d - d != 0) {
        cli_jw_null(w);
        return;
    }
    char buf[64];
    int n = snprintf(buf, sizeof(buf) - 3, "%.17g", d);
    if (n < 0 || (size_t)n >= sizeof(buf) - 3) {
        cli_jw_null(w);
        return;
    }
    if (!strchr(buf, '.') && !strchr(buf, 'e'))
        strcat(buf, ".0");
    char *e = strchr(buf, 'e');
    if (e) {
        char *start = e + 1, *digits = e + 2;
        if (*start == '-')
            start++;
        while (*digits == '0')
            digits++;
        memmove(start, digits, strlen(digits) + 1);
    }
    value_start(w);
    fputs(buf, w->fp);
}

void cli_jw_bool(cli_jw *w, bool b)
{
    value_start(w);
    fputs(b ? "true" : "false", w->fp);
}

void cli_jw_null(cli_jw *w)
{
    value_start(w);
    fputs("null", w->fp);
}

void cli_jw_json(cli_jw *w, const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        cli_jw_begin_object(w);
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)(uintptr_t)j, k, v) {
            cli_jw_key(w, k);
            cli_jw_json(w, v);
        }
        cli_jw_end_object(w);
        return;
    }
    case JSON_ARRAY:
        cli_jw_begin_array(w);
        for (size_t i = 0; i < json_array_size(j); i++)
            cli_jw_json(w, json_array_get(j, i));
        cli_jw_end_array(w);
        return;
    case JSON_STRING:
        cli_jw_stringn(w, json_string_value(j), json_string_length(j));
        return;
    case JSON_INTEGER: cli_jw_int(w, (long long)json_integer_value(j)); return;
    case JSON_REAL: cli_jw_real(w, json_real_value(j)); return;
    case JSON_TRUE: cli_jw_bool(w, true); return;
    case JSON_FALSE: cli_jw_bool(w, false); return;
    case JSON_NULL: cli_jw_null(w); return;
    }
    cli_jw_null(w);
}

bool cli_jw_finish(cli_jw *w, const char *what)
{
    if (w->depth != 0)
        w->failed = true;
    fputc('\n', w->fp);
    bool ok = !w->failed && fflush(w->fp) == 0 && !ferror(w->fp);
    if (!ok)
        fprintf(stderr, "ckpt: %s: cannot write the JSON\n", what);
    return ok;
}
