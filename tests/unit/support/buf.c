/* buf.c - a growable byte buffer for tests that build files by hand. */
#include "support.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void b_put(buf *b, const void *src, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p)
            abort(); /* the test's own memory: cannot go on */
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, src, n);
    b->len += n;
}

void b_u8(buf *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    b_put(b, &c, 1);
}

void b_le(buf *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        b_u8(b, (unsigned)(v >> (8 * i)) & 0xffu);
}

void b_str(buf *b, const char *s) { b_put(b, s, strlen(s)); }

void b_fill(buf *b, unsigned c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        b_u8(b, c);
}

void b_free(buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
