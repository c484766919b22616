/* SPDX-License-Identifier: MIT */

/*
 * The peer-close watch set on Linux: one epoll instance.  Interest is
 * EPOLLRDHUP (the peer closed or shut down its writing side), EPOLLHUP and
 * EPOLLERR, never EPOLLIN, so the watcher never has to read and bytes the
 * peer sent stay for the program.  It is level-triggered, so a socket
 * whose peer is already gone reports at once, and one-shot, so that the
 * watcher never has to remove an fd that the program may already have
 * closed: the kernel drops a closed socket from the set by itself.
 */
#include "../platform.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define PEER_EVENTS (EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLONESHOT)

/* Written under peer.c's lock; read by the watcher thread, which exists
 * only once the set does. */
static int epfd = -1;
/* An eventfd in the set, level-triggered, with the key WAKE_KEY (no fd and
 * generation make it): ctx__plat_watch_wake's way to end a wait.  -1 when
 * it could not be made; the watcher works without it and ctx_shutdown
 * then reports the watcher busy. */
static int wakefd = -1;
#define WAKE_KEY UINT64_MAX

int ctx__plat_watch_open(void)
{
    if (epfd >= 0)
        return 0;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        return errno;
    wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wakefd >= 0) {
        struct epoll_event ev = { .events = EPOLLIN };
        ev.data.u64 = WAKE_KEY;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, wakefd, &ev) != 0) {
            close(wakefd);
            wakefd = -1;
        }
    }
    return 0;
}

int ctx__plat_watch_wake(void)
{
    if (wakefd < 0)
        return ENOSYS;
    uint64_t one = 1;
    return write(wakefd, &one, sizeof one) == (ssize_t)sizeof one ? 0 : errno;
}

int ctx__plat_watch_add(int fd, uint64_t key)
{
    /* EEXIST means the same socket is there: an armed entry, or a
     * disarmed one left by a report; MOD (re-)arms it. */
    struct epoll_event ev = { .events = PEER_EVENTS };
    ev.data.u64 = key;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
        return 0;
    int e = errno;
    if (e == EEXIST && epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev) == 0)
        return 0;
    return e;
}

void ctx__plat_watch_del(int fd)
{
    if (epfd >= 0)
        epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

int ctx__plat_watch_wait(uint64_t *keys, int max)
{
    struct epoll_event ev[64];
    if (max > 64)
        max = 64;
    int n = epoll_wait(epfd, ev, max, -1);
    if (n < 0)
        return 0; /* EINTR; epfd stays valid for the thread's life */
    int out = 0;
    for (int i = 0; i < n; i++) {
        if (ev[i].data.u64 == WAKE_KEY) {
            uint64_t v;
            if (read(wakefd, &v, sizeof v) < 0) {
                /* EAGAIN: another wait read it; the caller's flag counts. */
            }
            continue;
        }
        keys[out++] = ev[i].data.u64;
    }
    return out;
}

/* The epoll instance is shared with the parent, so changing it here would
 * change the parent's: only the child's copy of the descriptor goes. */
void ctx__plat_watch_forget(void)
{
    if (epfd >= 0)
        close(epfd);
    epfd = -1;
    if (wakefd >= 0)
        close(wakefd);
    wakefd = -1;
}

/* From the instance's entry in /proc, which lists its interest set. */
int ctx__plat_watch_has(int fd)
{
    if (epfd < 0)
        return 0;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", epfd);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL) {
        int t;
        found = sscanf(line, "tfd: %d", &t) == 1 && t == fd;
    }
    fclose(f);
    return found;
}
