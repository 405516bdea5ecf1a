/*
 * readahead.c - reading cold files at the speed of the device.
 *
 * A file map read in order pages in through faults, each served by the
 * kernel's read-around: with a small read-ahead setting that is a wait per
 * few pages, and a fault far from the last one (a zip local header, a
 * record's descriptor) reads megabytes around it that nobody asked for.
 * Openers therefore map with read-around off while they touch the scattered
 * metadata, asking for the few ranges they read whole (a pickle), and
 * readers that go through tensor bytes in order keep the device busy a
 * window ahead of themselves (ckpt__ahead). Nothing here waits for I/O.
 */
#include "base.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

static uintptr_t page_mask(void)
{
    static uintptr_t mask;
    if (!mask) {
        long ps = sysconf(_SC_PAGESIZE);
        mask = (uintptr_t)(ps > 0 ? ps : 4096) - 1;
    }
    return mask;
}

void ckpt__map_advise(const void *base, uint64_t len, ckpt__advice advice)
{
    if (!base || len == 0 || len > SIZE_MAX - 2 * (page_mask() + 1))
        return;
    uintptr_t m = page_mask();
    uintptr_t lo = (uintptr_t)base & ~m;
    uintptr_t hi = ((uintptr_t)base + (uintptr_t)len + m) & ~m;
    int adv = advice == CKPT__ADVISE_RANDOM     ? MADV_RANDOM
              : advice == CKPT__ADVISE_WILLNEED ? MADV_WILLNEED
                                                : MADV_NORMAL;
    (void)madvise((void *)lo, (size_t)(hi - lo), adv);
}

/* Asked for in steps of this many bytes: few calls, and the device's
 * queue never runs dry. */
#define AHEAD_STEP ((uint64_t)8 << 20)

void ckpt__ahead_init(ckpt__ahead *a, int fd, const void *map, uint64_t start, uint64_t end)
{
    a->fd = fd;
    a->map = map;
    a->next = start;
    a->end = end < start ? start : end;
    a->reader = NULL;
    a->reader_tried = false;
}

void ckpt__ahead_at(ckpt__ahead *a, uint64_t pos)
{
    uint64_t want = pos < a->end && a->end - pos > CKPT__AHEAD_WINDOW
                        ? pos + CKPT__AHEAD_WINDOW
                        : a->end;
    while (a->next < want) {
        uint64_t n = a->end - a->next < AHEAD_STEP ? a->end - a->next : AHEAD_STEP;
        if (a->fd >= 0)
            (void)posix_fadvise(a->fd, (off_t)a->next, (off_t)n, POSIX_FADV_WILLNEED);
        else if (a->map)
            ckpt__map_advise(a->map + a->next, n, CKPT__ADVISE_WILLNEED);
        a->next += n;
    }
}

static void ahead_hook(void *user, uint64_t off) { ckpt__ahead_at(user, off); }

struct ckpt__reader *ckpt__ahead_reader(ckpt__ahead *a, size_t piece)
{
    if (!a->reader_tried && a->fd >= 0 && a->end - a->next >= CKPT__READER_MIN) {
        a->reader_tried = true;
        a->reader = ckpt__reader_new(a->fd, piece, ahead_hook, a);
    }
    return a->reader;
}

void ckpt__ahead_end(ckpt__ahead *a)
{
    ckpt__reader_free(a->reader);
    a->reader = NULL;
}
