/* SPDX-License-Identifier: MIT */

/*
 * The core I/O calls on a network that fails: each call under a context
 * returns within 100 ms of the context's end whatever the peer or the
 * network does, and the connection is usable once the network heals.
 *
 * A TCP echo server on 127.0.0.1 sits behind the fault proxy
 * (tests/faultproxy), which goes dark (forwards nothing, keeps every
 * socket open), trickles one byte a second, resets or half-closes on
 * command.  ctx_read, ctx_recv, ctx_read_full, ctx_poll, ctx_write_all and
 * ctx_writev wait on a dark network and on a trickle; resets and
 * half-closes give their errors at once; ctx_dial and ctx_connect meet a
 * host whose accept queue is full (its SYNs go unanswered, like a host
 * that has gone away).  Several rounds each; the worst lateness is printed.
 */
#include "check.h"
#include "faultproxy/faulttest.h"
#include "io_helpers.h"

#include <sys/uio.h>

#define BUDGET (200 * CTX_MILLISECOND)
#define BOUND  (100 * CTX_MILLISECOND)

static faultproxy_t fp;
static faulttest_late_t late = FAULTTEST_LATE_INIT(BOUND);

static void proxy(const char *cmd)
{
    faulttest_proxy(&fp, cmd);
}

static int connect_proxy(void)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    char port[16];
    snprintf(port, sizeof port, "%d", fp.port);
    int fd = ctx_dial(c, "127.0.0.1", port);
    ctx_unref(c);
    CHECK_MSG(fd >= 0, "dial the proxy: errno %d", errno);
    return fd;
}

/* A deadline BUDGET from now and the instant it falls on. */
static ctx_t *budget(ctx_time_t *end)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), BUDGET, NULL);
    CHECK(ctx_deadline(c, end));
    return c;
}

/* The call returned now; rd0 is lateness_run_delay() from before it. */
static void check_late(const char *what, ctx_time_t end, int64_t rd0)
{
    faulttest_check_late(&late, what, end, check_mono_now(), rd0);
}

/* The stream still works: what is sent comes back.  Bytes held while the
 * network was dark arrive first; `held` of them are expected. */
static void check_usable(int fd, size_t held)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    char buf[64];
    if (held > 0) {
        CHECK(held <= sizeof buf);
        CHECK_EQ_INT(ctx_read_full(c, fd, buf, held, NULL), 0);
    }
    CHECK_EQ_INT(ctx_write_all(c, fd, "ping", 4, NULL), 0);
    CHECK_EQ_INT(ctx_read_full(c, fd, buf, 4, NULL), 0);
    CHECK(memcmp(buf, "ping", 4) == 0);
    ctx_unref(c);
}

/* Reads on a dark network and on a trickle, then the heal. */
static void test_reads(long rounds)
{
    const char *faults[] = { "dark", "trickle 1000" };
    for (int f = 0; f < 2; f++) {
        for (long i = 0; i < rounds; i++) {
            int fd = connect_proxy();
            check_usable(fd, 0);
            proxy(faults[f]);
            /* A request the echo would answer, held by the network. */
            CHECK_EQ_INT((int)write(fd, "abcd", 4), 4);
            ctx_time_t end;
            int64_t rd0 = lateness_run_delay();
            ctx_t *c = budget(&end);
            char buf[16];
            switch (i % 4) {
            case 0: {
                errno = 0;
                ssize_t n = ctx_read(c, fd, buf, sizeof buf);
                /* A trickle may let one byte through in time. */
                CHECK(n == -1 || (f == 1 && n == 1));
                if (n == -1)
                    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
                else
                    CHECK_EQ_INT(ctx_read_full(c, fd, buf, 3, NULL), CTX_DEADLINE_EXCEEDED);
                break;
            }
            case 1: {
                size_t done = 99;
                CHECK_EQ_INT(ctx_read_full(c, fd, buf, 4, &done), CTX_DEADLINE_EXCEEDED);
                CHECK(done < 4);
                break;
            }
            case 2: {
                errno = 0;
                ssize_t n = ctx_recv(c, fd, buf, 4, MSG_WAITALL);
                CHECK(n == -1 || (f == 1 && n >= 0 && n < 4));
                break;
            }
            default: {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                errno = 0;
                int n = ctx_poll(c, &p, 1, CTX_FOREVER);
                CHECK(n == -1 || (f == 1 && n == 1));
                break;
            }
            }
            check_late(faults[f], end, rd0);
            ctx_unref(c);
            proxy("heal");
            /* Whatever part of "abcd" the call read is gone; the rest comes
             * before the ping's echo.  Read it all with a fresh request. */
            ctx_t *drain = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
            CHECK_EQ_INT(ctx_write_all(drain, fd, "!", 1, NULL), 0);
            char b;
            do {
                CHECK_EQ_INT((int)ctx_read(drain, fd, &b, 1), 1);
            } while (b != '!');
            ctx_unref(drain);
            check_usable(fd, 0);
            close(fd);
        }
    }
    fprintf(stderr, "   reads on dark and trickle ok\n");
}

/* Writes that fill the buffers of a dark network (the echo server stops
 * being read), then the heal. */
static void test_writes(long rounds)
{
    size_t big = 64u << 20;
    char *data = calloc(1, big);
    CHECK_NOT_NULL(data);
    for (long i = 0; i < rounds; i++) {
        int fd = connect_proxy();
        proxy("dark");
        ctx_time_t end;
        int64_t rd0 = lateness_run_delay();
        ctx_t *c = budget(&end);
        if (i % 2 == 0) {
            size_t done = 0;
            CHECK_EQ_INT(ctx_write_all(c, fd, data, big, &done), CTX_DEADLINE_EXCEEDED);
            CHECK(done < big);
        } else {
            struct iovec iov[2] = { { data, big / 2 }, { data + big / 2, big / 2 } };
            ssize_t n;
            /* writev takes what fits; the next one waits. */
            while ((n = ctx_writev(c, fd, iov, 2)) > 0)
                ;
            CHECK_EQ_INT((int)n, -1);
            CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        }
        check_late("write on dark", end, rd0);
        ctx_unref(c);
        proxy("heal");
        close(fd);
    }
    free(data);
    fprintf(stderr, "   writes on dark ok\n");
}

/* Reset and half-close, while a read waits, end it at once with the
 * error (ECONNRESET) or end of file. */
struct strike {
    long tid;
    const char *cmd;
    ctx_time_t at;
};

static void *striker(void *arg)
{
    struct strike *s = arg;
    check_wait_sleeping(s->tid, 5000);
    s->at = check_mono_now();
    proxy(s->cmd);
    return NULL;
}

static void test_peer_faults(long rounds)
{
    for (long i = 0; i < rounds; i++) {
        int fd = connect_proxy();
        check_usable(fd, 0);
        ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
        struct strike s = { .tid = check_gettid(), .cmd = i % 2 ? "reset" : "halfclose" };
        pthread_t t;
        check_thread_start(&t, striker, &s);
        char buf[16];
        errno = 0;
        ssize_t n = ctx_read(c, fd, buf, sizeof buf);
        ctx_time_t returned = check_mono_now();
        int err = errno;
        check_thread_join(t);
        if (i % 2) {
            CHECK_EQ_INT((int)n, -1);
            CHECK_EQ_INT(err, ECONNRESET);
        } else {
            CHECK_EQ_INT((int)n, 0);
        }
        CHECK_MSG(returned - s.at < BOUND, "%s: returned %lld ms after it", s.cmd,
                  (long long)((returned - s.at) / CTX_MILLISECOND));
        ctx_unref(c);
        close(fd);
    }
    fprintf(stderr, "   reset and half-close ok\n");
}

/* A host that has gone away: a listener whose accept queue is full drops
 * the SYNs of new connections, so connect(2) gets no answer.  ctx_dial and
 * ctx_connect return by the deadline. */
static void test_connect_hung_host(long rounds)
{
    int port;
    int hole = io_listen(0, &port);
    int fill[8];
    struct sockaddr_in h = io_addr(port);
    for (int i = 0; i < 8; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = connect(fill[i], (struct sockaddr *)&h, sizeof h);
        CHECK(r == 0 || errno == EINPROGRESS);
    }
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    long hung = 0;
    for (long i = 0; i < rounds; i++) {
        ctx_time_t end;
        int64_t rd0 = lateness_run_delay();
        ctx_t *c = budget(&end);
        int rc;
        if (i % 2 == 0) {
            rc = ctx_dial(c, "127.0.0.1", ps);
        } else {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            rc = ctx_connect(c, fd, (struct sockaddr *)&h, sizeof h);
            close(fd);
        }
        /* The kernel may still squeeze a connection in; then it is no
         * test of the bound, but no error either. */
        if (rc < 0) {
            CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
            check_late("connect to a hung host", end, rd0);
            hung++;
        } else if (i % 2 == 0) {
            close(rc);
        }
        ctx_unref(c);
    }
    CHECK(hung > 0);
    for (int i = 0; i < 8; i++)
        close(fill[i]);
    close(hole);
    fprintf(stderr, "   connect to a hung host ok (%ld of %ld rounds hung)\n", hung, rounds);
}

int main(void)
{
    faulttest_echo_t echo;
    faulttest_echo_start(&echo, 64);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", echo.port);
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
    long rounds = check_scale(8);
    if (rounds < 4)
        rounds = 4;

    test_reads(rounds);
    test_writes(rounds / 2 < 2 ? 2 : rounds / 2);
    test_peer_faults(rounds);
    test_connect_hung_host(rounds);

    fprintf(stderr, "worst lateness %+lld ms\n", (long long)(late.worst / CTX_MILLISECOND));
    faultproxy_stop(&fp);
    faulttest_echo_stop(&echo);
    return 0;
}
