/*
 * common.c - small helpers shared by the ckpt commands.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cli_print_error(const char *path, const ckpt_error *err)
{
    char buf[768];
    ckpt_error_format(err, buf, sizeof(buf));
    fprintf(stderr, "ckpt: %s: %s\n", path, buf);
}

char *cli_repr(const ckpt_value *v)
{
    size_t n = ckpt_value_repr(v, NULL, 0);
    char *s = malloc(n + 1);
    if (s)
        ckpt_value_repr(v, s, n + 1);
    return s;
}

void cli_human_bytes(uint64_t b, char *buf, size_t size)
{
    const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)b;
    int u = 0;
    while (v >= 1024 && u < 4) {
        v /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%llu B", (unsigned long long)b);
    else
        snprintf(buf, size, "%.1f %s", v, units[u]);
}

bool cli_print_json(json_t *o, size_t indent, const char *what)
{
    /* one buffer, one write: json_dumpf writes token by token */
    char *text = json_dumps(o, JSON_INDENT(indent) | JSON_PRESERVE_ORDER |
                                   JSON_REAL_PRECISION(17));
    json_decref(o);
    if (!text) {
        fprintf(stderr, "ckpt: %s: out of memory writing JSON\n", what);
        return false;
    }
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, stdout) == len && fputc('\n', stdout) != EOF &&
              fflush(stdout) == 0;
    free(text);
    if (!ok)
        fprintf(stderr, "ckpt: %s: cannot write the JSON\n", what);
    return ok;
}

/* Follows a dotted path: at a dict the longest key that is the whole rest
 * or a prefix of it followed by '.', at a list/tuple a decimal index. */
const ckpt_value *cli_find_path(const ckpt_value *v, const char *path)
{
    while (*path) {
        ckpt_kind k = ckpt_value_kind(v);
        size_t rest = strlen(path);
        if (k == CKPT_KIND_DICT || k == CKPT_KIND_ORDERED_DICT) {
            const ckpt_value *best = NULL;
            size_t best_len = 0;
            for (size_t i = 0; i < ckpt_value_len(v); i++) {
                char text[512];
                size_t len = ckpt_value_key_text(ckpt_value_key(v, i), text, sizeof(text));
                if (len > rest || len < best_len || (len == best_len && best))
                    continue;
                if (memcmp(text, path, len) == 0 && (path[len] == 0 || path[len] == '.')) {
                    best = ckpt_value_dict_value(v, i);
                    best_len = len;
                }
            }
            if (!best)
                return NULL;
            v = best;
            path += best_len;
        } else if (k == CKPT_KIND_LIST || k == CKPT_KIND_TUPLE) {
            char *end;
            unsigned long long i = strtoull(path, &end, 10);
            if (end == path || (*end && *end != '.') || i >= ckpt_value_len(v))
                return NULL;
            v = ckpt_value_item(v, (size_t)i);
            path = end;
        } else {
            return NULL;
        }
        if (*path == '.')
            path++;
    }
    return v;
}

bool cli_parse_ratio(const char *cmd, const char *opt, const char *s, uint64_t *out)
{
    size_t n = s ? strlen(s) : 0;
    bool digits = n > 0 && n <= 19 && strspn(s, "0123456789") == n;
    unsigned long long v = digits ? strtoull(s, NULL, 10) : 0;
    if (v == 0) {
        fprintf(stderr, "ckpt %s: %s needs a whole number from 1 to 10^19 - 1, not '%s'\n", cmd,
                opt, s ? s : "");
        return false;
    }
    *out = v;
    return true;
}
