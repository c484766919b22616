/* SPDX-License-Identifier: MIT */

/*
 * loop_epoll: an epoll loop that waits on a socket and a context at once.
 *
 * ctx_done_fd() is an fd like any other: put it in the epoll set beside
 * your sockets and the loop wakes when the context is done (here, when its
 * 100 ms deadline passes).  Build and run:  cmake --build build && build/examples/loop_epoll
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 1;
    if (write(sv[1], "hello", 5) != 5) /* the peer has something to say */
        return 1;

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    int done_fd = ctx_done_fd(ctx); /* owned by ctx: never close it */

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = sv[0] };
    epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev);
    ev.data.fd = done_fd;
    epoll_ctl(ep, EPOLL_CTL_ADD, done_fd, &ev);

    for (;;) {
        struct epoll_event got;
        if (epoll_wait(ep, &got, 1, -1) != 1)
            continue;
        if (got.data.fd == done_fd) { /* the context ended: stop the loop */
            printf("context: %s\n", ctx_strerror(ctx_err(ctx)));
            break;
        }
        char buf[64];
        ssize_t n = read(sv[0], buf, sizeof buf);
        printf("socket: %.*s\n", (int)n, buf);
    }
    close(ep);
    close(sv[0]);
    close(sv[1]);
    ctx_unref(ctx);
    return 0;
}
