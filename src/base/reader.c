/*
 * reader.c - reading a file's ranges on a thread of their own.
 *
 * A reader that reads and then works on what it read (a CRC, a write to
 * another file) leaves the device idle while it works and its core idle
 * while it waits; the page cache's pages for the input are also allocated
 * on its core. A ckpt__reader reads a range of a file in pieces on a second
 * thread, a few pieces ahead, into buffers it owns: the consumer only takes
 * the pieces in order. One range at a time; starting another drops what is
 * left of the last.
 */
#include "base.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

/* Pieces read ahead of the consumer. */
#define READER_SLOTS 4

typedef struct reader_slot {
    uint8_t *buf;
    size_t n;
    int err;   /* errno of the read, ENODATA: the file ended */
    bool full;
} reader_slot;

struct ckpt__reader {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t to_reader, to_consumer;
    int fd;
    size_t piece;
    ckpt__reader_hook hook;
    void *user;
    reader_slot slots[READER_SLOTS];
    unsigned rd, wr;     /* the consumer's slot, the reader's next */
    bool held;           /* the consumer holds slots[rd] */
    uint64_t pos, end;   /* what is left to read of the range */
    uint64_t gen;        /* a new range drops a read of the old one */
    bool stop;
};

int ckpt__pread_full(int fd, void *buf, size_t n, uint64_t off, size_t *got)
{
    *got = 0;
    while (*got < n) {
        ssize_t r = pread(fd, (uint8_t *)buf + *got, n - *got, (off_t)(off + *got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return r < 0 ? errno : ENODATA;
        *got += (size_t)r;
    }
    return 0;
}

static void *reader_main(void *arg)
{
    ckpt__reader *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->stop && (r->pos >= r->end || r->slots[r->wr].full))
            pthread_cond_wait(&r->to_reader, &r->mu);
        if (r->stop)
            break;
        uint64_t off = r->pos, gen = r->gen;
        size_t want = r->end - off < r->piece ? (size_t)(r->end - off) : r->piece;
        reader_slot *s = &r->slots[r->wr];
        pthread_mutex_unlock(&r->mu);
        if (r->hook)
            r->hook(r->user, off);
        size_t got;
        int e = ckpt__pread_full(r->fd, s->buf, want, off, &got);
        pthread_mutex_lock(&r->mu);
        if (gen != r->gen)
            continue; /* the range was replaced meanwhile */
        s->n = got;
        s->err = e;
        s->full = true;
        r->wr = (r->wr + 1) % READER_SLOTS;
        r->pos = e ? r->end : off + want; /* an error ends the range */
        pthread_cond_signal(&r->to_consumer);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

ckpt__reader *ckpt__reader_new(int fd, size_t piece, ckpt__reader_hook hook, void *user)
{
    if (fd < 0 || piece == 0)
        return NULL;
    ckpt__reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->fd = fd;
    r->piece = piece;
    r->hook = hook;
    r->user = user;
    for (unsigned i = 0; i < READER_SLOTS; i++) {
        if (!(r->slots[i].buf = malloc(piece)))
            goto fail;
    }
    if (pthread_mutex_init(&r->mu, NULL) != 0)
        goto fail;
    if (pthread_cond_init(&r->to_reader, NULL) != 0) {
        pthread_mutex_destroy(&r->mu);
        goto fail;
    }
    if (pthread_cond_init(&r->to_consumer, NULL) != 0) {
        pthread_cond_destroy(&r->to_reader);
        pthread_mutex_destroy(&r->mu);
        goto fail;
    }
    /* the caller's signals stay the caller's */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&r->thread, NULL, reader_main, r);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0)
        return r;
    pthread_cond_destroy(&r->to_consumer);
    pthread_cond_destroy(&r->to_reader);
    pthread_mutex_destroy(&r->mu);
fail:
    for (unsigned i = 0; i < READER_SLOTS; i++)
        free(r->slots[i].buf);
    free(r);
    return NULL;
}

int ckpt__reader_fd(const ckpt__reader *r) { return r ? r->fd : -1; }

void ckpt__reader_start(ckpt__reader *r, uint64_t off, uint64_t len)
{
    pthread_mutex_lock(&r->mu);
    r->gen++;
    for (unsigned i = 0; i < READER_SLOTS; i++)
        r->slots[i].full = false;
    r->rd = r->wr = 0;
    r->held = false;
    r->pos = off;
    r->end = len > UINT64_MAX - off ? UINT64_MAX : off + len;
    pthread_cond_signal(&r->to_reader);
    pthread_mutex_unlock(&r->mu);
}

int ckpt__reader_next(ckpt__reader *r, const uint8_t **p, size_t *n)
{
    pthread_mutex_lock(&r->mu);
    if (r->held) {
        r->slots[r->rd].full = false;
        r->rd = (r->rd + 1) % READER_SLOTS;
        r->held = false;
        pthread_cond_signal(&r->to_reader);
    }
    reader_slot *s = &r->slots[r->rd];
    while (!s->full) {
        if (r->pos >= r->end) { /* nothing is being read: past the range */
            pthread_mutex_unlock(&r->mu);
            *p = NULL;
            *n = 0;
            return ENODATA;
        }
        pthread_cond_wait(&r->to_consumer, &r->mu);
    }
    r->held = true;
    *p = s->buf;
    *n = s->n;
    int e = s->err;
    pthread_mutex_unlock(&r->mu);
    return e;
}

void ckpt__reader_free(ckpt__reader *r)
{
    if (!r)
        return;
    pthread_mutex_lock(&r->mu);
    r->stop = true;
    pthread_cond_signal(&r->to_reader);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->thread, NULL);
    pthread_cond_destroy(&r->to_consumer);
    pthread_cond_destroy(&r->to_reader);
    pthread_mutex_destroy(&r->mu);
    for (unsigned i = 0; i < READER_SLOTS; i++)
        free(r->slots[i].buf);
    free(r);
}
