/* SPDX-License-Identifier: MIT */

/*
 * loop_io_uring: an io_uring loop (liburing) that waits on a socket and a
 * context at once.
 *
 * IORING_OP_POLL_ADD on ctx_done_fd() completes when the context is done
 * (here, when its 100 ms deadline passes); the socket gets its own poll.
 * Build and run:  cmake --build build && build/examples/loop_io_uring
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum { TAG_SOCKET = 1, TAG_CTX = 2 };

static void poll_add(struct io_uring *ring, int fd, unsigned tag)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_poll_add(sqe, fd, POLLIN);
    io_uring_sqe_set_data64(sqe, tag);
}

int main(void)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return 1;
    if (write(sv[1], "hello", 5) != 5)
        return 1;

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    struct io_uring ring;
    int e = io_uring_queue_init(8, &ring, 0);
    if (e < 0) {
        /* Some sandboxes forbid io_uring; say so rather than fail. */
        printf("io_uring unavailable: %s\n", strerror(-e));
        ctx_unref(ctx);
        return 77;
    }
    poll_add(&ring, sv[0], TAG_SOCKET);
    poll_add(&ring, ctx_done_fd(ctx), TAG_CTX);
    io_uring_submit(&ring);

    for (;;) {
        struct io_uring_cqe *cqe;
        if (io_uring_wait_cqe(&ring, &cqe) < 0)
            continue;
        uint64_t tag = io_uring_cqe_get_data64(cqe);
        io_uring_cqe_seen(&ring, cqe);
        if (tag == TAG_CTX) { /* the context ended: stop the loop */
            printf("context: %s\n", ctx_strerror(ctx_err(ctx)));
            break;
        }
        char buf[64];
        ssize_t n = read(sv[0], buf, sizeof buf);
        printf("socket: %.*s\n", (int)n, buf);
        poll_add(&ring, sv[0], TAG_SOCKET); /* a poll request fires once: re-arm */
        io_uring_submit(&ring);
    }
    io_uring_queue_exit(&ring);
    close(sv[0]);
    close(sv[1]);
    ctx_unref(ctx);
    return 0;
}
