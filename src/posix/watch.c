/* SPDX-License-Identifier: MIT */

/*
 * The peer-close watch set with poll(2), for the portable backend.
 *
 * The set is a table indexed by fd, under `pm`.  The watcher thread copies
 * the armed entries into a pollfd array, polls them and a wake-up pipe
 * without the lock, and reports what hung up; add writes to the pipe so
 * that a new socket is polled at once.  A deleted entry is dropped at the
 * next copy; until then an event on it is ignored, since a report is made
 * only for an entry still armed with the same key.
 *
 * What counts as a hang-up: POLLHUP and POLLERR, which poll reports
 * whatever the events asked, and the peer's end of file.  Where poll has
 * POLLRDHUP (Linux, FreeBSD 14) that flag reports it without reading, as
 * epoll does.  Elsewhere the watcher asks for POLLIN and, when the socket
 * is readable, peeks at one byte (MSG_PEEK consumes nothing): 0 is the end
 * of file.  When bytes are waiting instead, the socket is not polled for
 * POLLIN again for PEEK_PAUSE (it would be readable at once, a busy loop),
 * so a hang-up behind unread bytes is seen only once the program has read
 * them, within PEEK_PAUSE.
 *
 * An entry whose fd poll calls invalid (POLLNVAL: the program closed it)
 * is dropped, as the kernel drops a closed socket from an epoll set.
 *
 * Fork: `pm` is taken only inside a ctx__hold(), so fork's prepare handler
 * waits until nobody holds it; the child forgets the set and the pipe
 * (shared with the parent) and peer.c adds the inherited sockets again.
 */
#include "../platform.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#define PEEK_PAUSE (100 * CTX_MILLISECOND)

/* POLLRDHUP where poll has it; CTX_WATCH_PEEK (a -D flag) forces the
 * peeking way, to try it on a system that has the flag. */
#if defined(POLLRDHUP) && !defined(CTX_WATCH_PEEK)
#define USE_RDHUP 1
#else
#define USE_RDHUP 0
#endif

enum { E_NONE, E_ARMED, E_REPORTED };

struct entry {
    uint64_t key;
    ctx_time_t quiet_until; /* no POLLIN before this (bytes were waiting) */
    int state;              /* E_NONE, E_ARMED, E_REPORTED */
};

static pthread_mutex_t pm = PTHREAD_MUTEX_INITIALIZER;
static struct entry *tab; /* indexed by fd, under pm */
static size_t ntab;
static int wake[2] = { -1, -1 };

/* The watcher thread's own arrays. */
static struct pollfd *pfd;
static uint64_t *pkey;
static size_t parr;

static void lock(void)
{
    ctx__hold();
    pthread_mutex_lock(&pm);
}

static void unlock(void)
{
    pthread_mutex_unlock(&pm);
    ctx__release();
}

int ctx__plat_watch_open(void)
{
    if (wake[0] >= 0)
        return 0;
    int p[2];
    if (ctx__plat_pipe_cloexec(p) != 0)
        return errno;
    /* Neither end may block: add writes under peer.c's lock, and the
     * watcher drains what is there. */
    for (int i = 0; i < 2; i++)
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
    wake[0] = p[0];
    wake[1] = p[1];
    /* The watcher's first arrays, made here rather than by the watcher
     * when it first looks: what the library keeps once a watch was made
     * is then there when ctx_with_peer_close returns, not some time later
     * (a leak check that counts allocations around watches sees a steady
     * count).  Without memory the watcher makes them itself. */
    lock();
    if (parr == 0) {
        struct pollfd *a = ctx__alloc(64 * (sizeof *pfd + sizeof *pkey));
        if (a != NULL) {
            pfd = a;
            pkey = (uint64_t *)(void *)(a + 64);
            parr = 64;
        }
    }
    unlock();
    return 0;
}

/* Grows the table to hold fd.  Under pm. */
static int grow(int fd)
{
    if ((size_t)fd < ntab)
        return 0;
    size_t n = ntab < 64 ? 64 : ntab;
    while (n <= (size_t)fd)
        n *= 2;
    struct entry *t = ctx__alloc(n * sizeof *t);
    if (t == NULL)
        return ENOMEM;
    if (ntab != 0)
        memcpy(t, tab, ntab * sizeof *t);
    memset(t + ntab, 0, (n - ntab) * sizeof *t);
    ctx__free(tab);
    tab = t;
    ntab = n;
    return 0;
}

int ctx__plat_watch_add(int fd, uint64_t key)
{
    lock();
    int e = grow(fd);
    if (e == 0) {
        tab[fd].key = key;
        tab[fd].quiet_until = 0;
        tab[fd].state = E_ARMED;
    }
    unlock();
    if (e == 0) {
        char one = 1;
        ssize_t r = write(wake[1], &one, 1);
        (void)r; /* a full pipe wakes the watcher anyway */
    }
    return e;
}

int ctx__plat_watch_wake(void)
{
    char one = 1;
    ssize_t r = write(wake[1], &one, 1);
    /* A full pipe wakes the watcher anyway. */
    return r == 1 || errno == EAGAIN ? 0 : errno;
}

void ctx__plat_watch_del(int fd)
{
    lock();
    if ((size_t)fd < ntab)
        tab[fd].state = E_NONE;
    unlock();
}

int ctx__plat_watch_has(int fd)
{
    lock();
    int r = (size_t)fd < ntab && tab[fd].state != E_NONE;
    unlock();
    return r;
}

/* Copies the armed entries (and the wake-up pipe, at 0) into the
 * watcher's arrays.  Returns the count, or 0 without memory; *quiet is set
 * to the end of the earliest pause, or 0 when no entry pauses. */
static nfds_t collect(ctx_time_t now, ctx_time_t *quiet)
{
    *quiet = 0;
    lock();
    size_t need = 1;
    for (size_t fd = 0; fd < ntab; fd++)
        need += tab[fd].state == E_ARMED;
    if (need > parr) {
        /* One block: the pollfds (8 bytes each), then the keys. */
        size_t n = need < 64 ? 64 : need * 2;
        struct pollfd *p = ctx__alloc(n * (sizeof *pfd + sizeof *pkey));
        if (p == NULL) {
            unlock();
            return 0;
        }
        ctx__free(pfd);
        pfd = p;
        pkey = (uint64_t *)(void *)(p + n);
        parr = n;
    }
    nfds_t n = 0;
    pfd[n].fd = wake[0];
    pfd[n].events = POLLIN;
    pfd[n].revents = 0;
    n++;
    for (size_t fd = 0; fd < ntab; fd++) {
        struct entry *e = &tab[fd];
        if (e->state != E_ARMED)
            continue;
        short ev = POLLIN;
#if USE_RDHUP
        ev = POLLRDHUP;
        (void)now;
#else
        if (e->quiet_until > now) {
            ev = 0; /* POLLHUP and POLLERR still come */
            if (*quiet == 0 || e->quiet_until < *quiet)
                *quiet = e->quiet_until;
        }
#endif
        pfd[n].fd = (int)fd;
        pfd[n].events = ev;
        pfd[n].revents = 0;
        pkey[n] = e->key;
        n++;
    }
    unlock();
    return n;
}

/* What poll's answer for one socket means: 1 a hang-up, 0 nothing yet,
 * -1 drop the entry (the fd is closed, or is no socket any more), 2 bytes
 * wait (pause POLLIN). */
static int verdict(int fd, short revents)
{
    if (revents & POLLNVAL)
        return -1;
    if (revents & (POLLHUP | POLLERR))
        return 1;
#if USE_RDHUP
    if (revents & POLLRDHUP)
        return 1;
#endif
    if (!(revents & POLLIN))
        return 0;
    char b;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0)
        return 1;
    if (r > 0)
        return 2;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return 0;
    if (errno == ENOTSOCK || errno == EBADF)
        return -1;
    return 1; /* ECONNRESET, ETIMEDOUT, ...: the connection broke */
}

int ctx__plat_watch_wait(uint64_t *keys, int max)
{
    ctx_time_t now = ctx__real_now(), quiet;
    nfds_t n = collect(now, &quiet);
    if (n == 0) {
        /* No memory for the arrays: try again in a while. */
        poll(NULL, 0, 100);
        return 0;
    }
    int ms = -1;
    if (quiet != 0) {
        ctx_time_t left = quiet - now;
        ms = (int)((left + CTX_MILLISECOND - 1) / CTX_MILLISECOND);
    }
    if (poll(pfd, n, ms) <= 0)
        return 0;
    if (pfd[0].revents != 0) {
        char buf[64];
        while (read(wake[0], buf, sizeof buf) > 0) {
        }
    }
    int out = 0;
    for (nfds_t i = 1; i < n && out < max; i++) {
        if (pfd[i].revents == 0)
            continue;
        int fd = pfd[i].fd;
        int v = verdict(fd, pfd[i].revents);
        if (v == 0)
            continue;
        lock();
        struct entry *e = &tab[fd];
        if (e->state == E_ARMED && e->key == pkey[i]) {
            if (v == 1) {
                e->state = E_REPORTED; /* one-shot, as epoll's */
                keys[out++] = pkey[i];
            } else if (v == 2) {
                e->quiet_until = ctx__real_now() + PEEK_PAUSE;
            } else {
                e->state = E_NONE;
            }
        }
        unlock();
    }
    return out;
}

void ctx__plat_watch_forget(void)
{
    if (wake[0] >= 0) {
        close(wake[0]);
        close(wake[1]);
    }
    wake[0] = wake[1] = -1;
    for (size_t fd = 0; fd < ntab; fd++)
        tab[fd].state = E_NONE;
}
