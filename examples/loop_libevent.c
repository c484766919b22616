/* SPDX-License-Identifier: MIT */

/*
 * loop_libevent: a libevent loop that waits on a socket and a context at
 * once.
 *
 * An event on ctx_done_fd() fires when the context is done (here, when its
 * 100 ms deadline passes) and breaks the loop; a persistent event watches
 * the socket.  Build and run:  cmake --build build && build/examples/loop_libevent
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <event2/event.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static ctx_t *ctx;

static void on_socket(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    char buf[64];
    ssize_t n = read(fd, buf, sizeof buf);
    printf("socket: %.*s\n", (int)n, buf);
}

static void on_ctx(evutil_socket_t fd, short what, void *base)
{
    (void)fd;
    (void)what;
    printf("context: %s\n", ctx_strerror(ctx_err(ctx)));
    event_base_loopbreak(base); /* the context ended: stop the loop */
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 1;
    if (write(sv[1], "hello", 5) != 5)
        return 1;

    ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    struct event_base *base = event_base_new();
    struct event *sock_ev = event_new(base, sv[0], EV_READ | EV_PERSIST, on_socket, NULL);
    struct event *ctx_ev = event_new(base, ctx_done_fd(ctx), EV_READ, on_ctx, base);
    event_add(sock_ev, NULL);
    event_add(ctx_ev, NULL);

    event_base_dispatch(base);

    event_free(sock_ev);
    event_free(ctx_ev);
    event_base_free(base);
    close(sv[0]);
    close(sv[1]);
    ctx_unref(ctx);
    return 0;
}
