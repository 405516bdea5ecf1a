/* child.c - one case in a child process, under a time limit and a memory cap,
 * so that a hang, a crash or unbounded memory is that case's failure. */
#include "support.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SUPPORT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SUPPORT_ASAN 1
#endif
#endif
#ifndef SUPPORT_ASAN
#define SUPPORT_ASAN 0
#endif

#if SUPPORT_ASAN
/* from sanitizer/allocator_interface.h, which gcc does not ship */
size_t __sanitizer_get_current_allocated_bytes(void);
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));

static size_t heap_mark, heap_peak;

static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    size_t now = __sanitizer_get_current_allocated_bytes();
    if (now > heap_peak)
        heap_peak = now;
}

static void on_free(const volatile void *p) { (void)p; }
#else
static uint64_t address_space(void)
{
    long pages = 0;
    FILE *fp = fopen("/proc/self/statm", "r");
    if (fp) {
        if (fscanf(fp, "%ld", &pages) != 1)
            pages = 0;
        fclose(fp);
    }
    return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}
#endif

bool mem_asan(void) { return SUPPORT_ASAN; }

void mem_cap(uint64_t budget)
{
#if SUPPORT_ASAN
    (void)budget;
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    heap_mark = heap_peak = __sanitizer_get_current_allocated_bytes();
#else
    uint64_t limit = address_space() + budget;
    struct rlimit rl = {.rlim_cur = limit, .rlim_max = limit};
    setrlimit(RLIMIT_AS, &rl);
#endif
}

void mem_mark(void)
{
#if SUPPORT_ASAN
    heap_mark = heap_peak = __sanitizer_get_current_allocated_bytes();
#endif
}

uint64_t mem_peak(void)
{
#if SUPPORT_ASAN
    return heap_peak > heap_mark ? heap_peak - heap_mark : 0;
#else
    return 0;
#endif
}

bool child_run(void (*fn)(const void *arg, void *result), const void *arg, void *result,
               size_t size, double seconds, child_end *end)
{
    child_end e;
    memset(&e, 0, sizeof(e));
    e.status = -1;
    int fds[2];
    if (pipe(fds) != 0) {
        if (end)
            *end = e;
        return false;
    }
    fflush(NULL);
    double t0 = now_s();
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        if (end)
            *end = e;
        return false;
    }
    if (pid == 0) {
        close(fds[0]);
        fn(arg, result);
        const char *p = result;
        size_t left = size;
        while (left) {
            ssize_t w = write(fds[1], p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                _exit(3);
            p += w;
            left -= (size_t)w;
        }
        _exit(0);
    }
    close(fds[1]);
    char *dst = result;
    while (e.got < size) {
        int wait_ms = -1;
        if (seconds > 0) {
            wait_ms = (int)((seconds - (now_s() - t0)) * 1000);
            if (wait_ms <= 0) {
                e.timed_out = true;
                break;
            }
        }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int r = poll(&pfd, 1, wait_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0) {
            e.timed_out = true;
            break;
        }
        ssize_t n = read(fds[0], dst + e.got, size - e.got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        e.got += (size_t)n;
    }
    close(fds[0]);
    if (e.timed_out)
        kill(pid, SIGKILL);
    int wst = 0;
    while (waitpid(pid, &wst, 0) < 0 && errno == EINTR) {
    }
    e.seconds = now_s() - t0;
    if (WIFSIGNALED(wst))
        e.signal = WTERMSIG(wst);
    else if (WIFEXITED(wst))
        e.status = WEXITSTATUS(wst);
    if (end)
        *end = e;
    return !e.timed_out && e.status == 0 && e.got == size;
}
