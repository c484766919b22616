/* SPDX-License-Identifier: MIT */

/*
 * shutdown: a server loop that stops gracefully on Ctrl-C (Go's
 * signal.NotifyContext).
 *
 *     ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
 *     defer stop()
 *     <-ctx.Done() // accept loop ends; in-flight requests finish
 *
 * The server accepts TCP connections on 127.0.0.1 and answers each in a
 * task of a group (the library's thread pool).  The accept loop polls the
 * listening socket together with the signal context's done fd.  On the
 * first Ctrl-C (or SIGTERM) the context is done: the loop stops accepting,
 * waits for the requests in flight, and exits.  A second Ctrl-C during that
 * wait kills the process as usual: the previous handling is back.
 *
 *     $ ./shutdown            # serves until Ctrl-C; prints its port
 *     $ ./shutdown --self-test  # connects to itself once, then sends itself SIGINT
 */
#define _GNU_SOURCE

#include <ctx.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int serve(ctx_t *ctx, void *arg)
{
    (void)ctx;
    int fd = (int)(long)arg;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0 && write(fd, "hello\n", 6) < 0)
        perror("write");
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    int self_test = argc > 1 && strcmp(argv[1], "--self-test") == 0;
    int sigs[] = { SIGINT, SIGTERM };
    ctx_t *ctx = ctx_with_signals(ctx_background(), sigs, 2, NULL);
    if (ctx == NULL) {
        perror("ctx_with_signals");
        return 1;
    }

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 16) != 0 ||
        getsockname(ls, (struct sockaddr *)&a, &alen) != 0) {
        perror("listen");
        return 1;
    }
    printf("listening on 127.0.0.1:%d (Ctrl-C to stop)\n", ntohs(a.sin_port));
    fflush(stdout);

    int client = -1;
    if (self_test) { /* one client request, answered below */
        client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(client, (struct sockaddr *)&a, sizeof a) != 0 ||
            write(client, "hi\n", 3) != 3) {
            perror("self-test client");
            return 1;
        }
    }

    ctx_group_t *requests = ctx_group_new(ctx_background(), NULL);
    int served = 0;
    struct pollfd p[2] = { { .fd = ls, .events = POLLIN },
                           { .fd = ctx_done_fd(ctx), .events = POLLIN } };
    while (ctx_err(ctx) == 0) {
        if (poll(p, 2, -1) < 0)
            continue; /* EINTR */
        if (p[0].revents & POLLIN) {
            int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0 && ctx_group_go(requests, serve, (void *)(long)fd) == 0)
                served++;
        }
        if (self_test && served == 1) {
            char buf[16];
            ssize_t n = read(client, buf, sizeof buf); /* the answer came back */
            printf("client got: %.*s", (int)(n > 0 ? n : 0), buf);
            kill(getpid(), SIGINT); /* what Ctrl-C does */
            self_test = 0;
        }
    }
    const char *why;
    ctx_cause(ctx, &why);
    printf("shutting down: %s\n", why);
    close(ls);
    ctx_group_wait(requests, NULL); /* the requests in flight finish */
    printf("served %d connection%s, bye\n", served, served == 1 ? "" : "s");
    if (client >= 0)
        close(client);
    ctx_unref(ctx);
    return 0;
}
