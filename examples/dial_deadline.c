/* SPDX-License-Identifier: MIT */

/*
 * dial_deadline: ctx_dial and ctx_read under one deadline, Go's
 *
 *     ctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
 *     conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
 *     conn.SetDeadline(deadline); conn.Read(buf)
 *
 * The program runs its own loopback server, which greets once and then
 * stays silent: the first read gets the greeting, the second is cut short
 * by the deadline.  Build and run:  cmake --build build && build/examples/dial_deadline
 */
#define _GNU_SOURCE
#include <ctx.h>
#include <ctx/io.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <unistd.h>

int main(void)
{
    /* A server on 127.0.0.1 with a port the kernel picks. */
    int lsn = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (bind(lsn, (struct sockaddr *)&a, sizeof a) != 0 || listen(lsn, 8) != 0 ||
        getsockname(lsn, (struct sockaddr *)&a, &al) != 0)
        return 1;
    char port[16];
    snprintf(port, sizeof port, "%d", ntohs(a.sin_port));

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 300 * CTX_MILLISECOND, NULL);
    int fd = ctx_dial(ctx, "127.0.0.1", port);
    if (fd < 0) {
        printf("FAIL dial: %s\n", ctx_strerror(errno));
        return 1;
    }
    printf("dialed 127.0.0.1\n");

    int peer = accept4(lsn, NULL, NULL, SOCK_CLOEXEC); /* the server greets once */
    if (peer < 0 || write(peer, "hello", 5) != 5)
        return 1;

    char buf[64];
    for (;;) {
        ssize_t n = ctx_read(ctx, fd, buf, sizeof buf);
        if (n < 0) { /* the deadline ended the wait */
            printf("read: %s\n", ctx_strerror(errno));
            break;
        }
        printf("read: %.*s\n", (int)n, buf);
    }
    close(peer);
    close(fd);
    close(lsn);
    ctx_unref(ctx);
    return 0;
}
