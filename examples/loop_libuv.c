/* SPDX-License-Identifier: MIT */

/*
 * loop_libuv: a libuv loop that waits on a socket and a context at once.
 *
 * A uv_poll_t on ctx_done_fd() fires when the context is done (here, when
 * its 100 ms deadline passes) and stops the loop; another watches the
 * socket.  Build and run:  cmake --build build && build/examples/loop_libuv
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

static ctx_t *ctx;
static uv_poll_t sock_watch, ctx_watch;

static void on_socket(uv_poll_t *w, int status, int events)
{
    (void)status;
    (void)events;
    char buf[64];
    ssize_t n = read(*(int *)w->data, buf, sizeof buf);
    printf("socket: %.*s\n", (int)n, buf);
}

static void on_ctx(uv_poll_t *w, int status, int events)
{
    (void)w;
    (void)status;
    (void)events;
    printf("context: %s\n", ctx_strerror(ctx_err(ctx)));
    uv_poll_stop(&sock_watch); /* the context ended: nothing is left to do */
    uv_poll_stop(&ctx_watch);
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 1;
    if (write(sv[1], "hello", 5) != 5)
        return 1;

    ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    uv_loop_t *loop = uv_default_loop();
    uv_poll_init(loop, &sock_watch, sv[0]);
    sock_watch.data = &sv[0];
    uv_poll_start(&sock_watch, UV_READABLE, on_socket);
    uv_poll_init(loop, &ctx_watch, ctx_done_fd(ctx));
    uv_poll_start(&ctx_watch, UV_READABLE, on_ctx);

    uv_run(loop, UV_RUN_DEFAULT); /* returns once no watcher is active */

    uv_close((uv_handle_t *)&sock_watch, NULL);
    uv_close((uv_handle_t *)&ctx_watch, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_loop_close(loop);
    close(sv[0]);
    close(sv[1]);
    ctx_unref(ctx);
    return 0;
}
