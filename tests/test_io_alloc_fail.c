/* SPDX-License-Identifier: MIT */

/*
 * Allocation failure at every allocation site of the I/O calls, SQLite
 * style: each scenario runs again and again with allocation number N
 * refused (once, then "sticky": every allocation from N on), for N = 0, 1,
 * 2, ... until a run completes without a refusal.  Each run must either
 * succeed or fail with ENOMEM, must leave the descriptors it was given
 * untouched, and must leak nothing: afterwards the counting allocator holds
 * what it held before, and the process has the fds it had before.
 *
 * Sites: the done fd's table entry (the first wait on a context), ctx_poll's
 * copy of a long array, the done fd of a blocking connect that waits, and
 * ctx_with_peer_close's node, watch and fd table.  ctx_dial's lookup
 * record is swept in test_dial_resolver.c, which can resolve names without
 * a real name server.
 */
#include "io_helpers.h"

static int refused_any;

/* Result check: success, or ENOMEM (and then something was refused). */
#define CHECK_OK_OR_ENOMEM(ok, err)                                                                \
    do {                                                                                           \
        if (!(ok)) {                                                                               \
            CHECK_EQ_INT((err), ENOMEM);                                                           \
            CHECK(check_alloc_failed() > 0);                                                       \
        }                                                                                          \
    } while (0)

static void scenario_wait(void)
{
    int p[2];
    CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    if (c == NULL) {
        CHECK_EQ_INT(errno, ENOMEM);
    } else {
        struct pollfd pf = { p[0], POLLIN, 0 };
        errno = 0;
        int r = ctx_poll(c, &pf, 1, 0);
        CHECK_OK_OR_ENOMEM(r == 0, errno);
        /* A write always works without waiting; the read then too. */
        char b[2];
        CHECK_EQ_INT(ctx_write(c, p[1], "ab", 2), 2);
        CHECK_EQ_INT(ctx_read(c, p[0], b, 2), 2);
        ctx_cancel(cancel);
        ctx_unref(c);
    }
    close(p[0]);
    close(p[1]);
}

static void scenario_poll_many(void)
{
    int p[2];
    CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
    CHECK_EQ_INT(write(p[1], "x", 1), 1);
    struct pollfd pf[20];
    for (int i = 0; i < 20; i++) {
        pf[i].fd = p[0];
        pf[i].events = POLLIN;
    }
    errno = 0;
    int r = ctx_poll(ctx_background(), pf, 20, 0);
    CHECK_OK_OR_ENOMEM(r == 20, errno);
    close(p[0]);
    close(p[1]);
}

static int listen_port;

static void scenario_connect(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    if (c == NULL) {
        CHECK_EQ_INT(errno, ENOMEM);
        return;
    }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = io_addr(listen_port);
    errno = 0;
    int r = ctx_connect(c, s, (struct sockaddr *)&a, sizeof a);
    CHECK_OK_OR_ENOMEM(r == 0, errno);
    close(s);
    ctx_unref(c);
}

static void scenario_peer_close(void)
{
    int s[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    ctx_t *c = ctx_with_peer_close(ctx_background(), s[0], NULL);
    CHECK_OK_OR_ENOMEM(c != NULL, errno);
    if (c != NULL) {
        ctx_t *c2 = ctx_with_peer_close(c, s[0], NULL);
        CHECK_OK_OR_ENOMEM(c2 != NULL, errno);
        close(s[1]);
        CHECK_EQ_INT(ctx_wait(c, 30 * CTX_SECOND), CTX_CANCELED);
        CHECK_EQ_INT(ctx_cause(c, NULL), ECONNRESET);
        if (c2 != NULL)
            CHECK_EQ_INT(ctx_wait(c2, 30 * CTX_SECOND), CTX_CANCELED);
        ctx_unref(c2);
        ctx_unref(c);
    } else {
        close(s[1]);
    }
    close(s[0]);
}

/* Waits (bounded) for the watcher thread, which frees a context after it
 * cancelled it, to bring the count of live blocks to want. */
static void settle(long want)
{
    for (int i = 0; i < 10000 && check_alloc_live() != want; i++)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK_EQ_INT(check_alloc_live(), want);
}

/* tables: blocks the first run keeps for good (the watcher's fd table). */
static void sweep(const char *name, void (*scenario)(void), long tables)
{
    long live = check_alloc_live() + tables;
    scenario(); /* warm up: one-time tables are made here */
    settle(live);
    int fds = io_fd_count();
    int refusals = 0;
    for (int sticky = 0; sticky < 2; sticky++) {
        for (long n = 0;; n++) {
            long failed = check_alloc_failed();
            check_alloc_fail_at(n, sticky);
            scenario();
            check_alloc_fail_none();
            long refused = check_alloc_failed() - failed;
            settle(live);
            CHECK_EQ_INT(io_fd_count(), fds);
            if (refused == 0)
                break;
            refusals++;
        }
    }
    fprintf(stderr, "%s: %d runs with a refused allocation\n", name, refusals);
    if (refusals > 0)
        refused_any = 1;
}

int main(void)
{
    check_alloc_install();
    int l = io_listen(4096, &listen_port);
    sweep("wait", scenario_wait, 0);
    sweep("poll_many", scenario_poll_many, 0);
    sweep("connect", scenario_connect, 0);
#ifdef CTX_TEST_PORTABLE
    /* The portable watcher's own fd table and pollfd array besides. */
    sweep("peer_close", scenario_peer_close, 3);
#else
    sweep("peer_close", scenario_peer_close, 1);
#endif
    CHECK(refused_any);
    close(l);
    return 0;
}
