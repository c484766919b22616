/* SPDX-License-Identifier: MIT */

/*
 * Cancellable I/O on real pipes and sockets: ctx_read/ctx_write and their
 * vector, socket, accept, connect, poll and whole-buffer forms.  Checks the
 * contract of <ctx/io.h>: results as in POSIX, -1 with ctx_err when the
 * context ends first, bytes never lost, fd flags untouched, EINTR retried,
 * a done context failing without touching the fd, no done fd on the fast
 * path, no SIGPIPE on sockets, and clear errors for bad input.
 */
#include "io_helpers.h"

#include <limits.h>
#include <signal.h>
#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <termios.h>

static void make_pipe(int p[2], int flags)
{
    CHECK_EQ_INT(pipe2(p, O_CLOEXEC | flags), 0);
}

/* Data that is ready is read with one call: no done fd is made. */
static void test_fast_path(void)
{
    int p[2];
    make_pipe(p, 0);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    int before = io_fd_count();
    char buf[64] = "hello";
    CHECK_EQ_INT(ctx_write(c, p[1], buf, 64), 64);
    memset(buf, 0, sizeof buf);
    CHECK_EQ_INT(ctx_read(c, p[0], buf, 64), 64);
    CHECK_STR(buf, "hello");
    CHECK_EQ_INT(io_fd_count(), before);
    /* A short read is a success, as in read(2). */
    CHECK_EQ_INT(ctx_write(c, p[1], "abc", 3), 3);
    CHECK_EQ_INT(ctx_read(c, p[0], buf, sizeof buf), 3);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

struct reader {
    ctx_t *ctx;
    int fd;
    ssize_t r;
    int err;
    long tid;
    atomic_int started;
    char buf[16];
};

static void *reader_main(void *arg)
{
    struct reader *rd = arg;
    rd->tid = check_gettid();
    atomic_store(&rd->started, 1);
    rd->r = ctx_read(rd->ctx, rd->fd, rd->buf, sizeof rd->buf);
    rd->err = rd->r < 0 ? errno : 0;
    return NULL;
}

/* A reader blocked on an empty pipe returns when the context is cancelled
 * and when its deadline passes; on a blocking and a non-blocking pipe. */
static void test_cancel_and_deadline(void)
{
    for (int nb = 0; nb < 2; nb++) {
        int p[2];
        make_pipe(p, nb ? O_NONBLOCK : 0);
        int fl = fcntl(p[0], F_GETFL);

        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
        struct reader rd = { .ctx = c, .fd = p[0] };
        pthread_t t;
        check_thread_start(&t, reader_main, &rd);
        CHECK(check_wait_flag(&rd.started, 1, 10 * CTX_SECOND));
        check_wait_sleeping(rd.tid, 1000);
        ctx_cancel(cancel);
        check_thread_join(t);
        CHECK_EQ_INT(rd.r, -1);
        CHECK_EQ_INT(rd.err, CTX_CANCELED);
        ctx_unref(c);

        ctx_time_t t0 = check_mono_now();
        c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
        char b[4];
        errno = 0;
        CHECK_EQ_INT(ctx_read(c, p[0], b, sizeof b), -1);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        CHECK(check_mono_now() - t0 >= 50 * CTX_MILLISECOND);
        ctx_unref(c);

        /* The flags were never changed. */
        CHECK_EQ_INT(fcntl(p[0], F_GETFL), fl);
        close(p[0]);
        close(p[1]);
    }
}

/* A context that is already done fails at once without touching the fd:
 * even an invalid fd gives ctx_err, and the pipe keeps its data. */
static void test_done_first(void)
{
    int p[2];
    make_pipe(p, 0);
    CHECK_EQ_INT(write(p[1], "x", 1), 1);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    char b[4];
    struct iovec v = { b, sizeof b };
    errno = 0;
    CHECK_EQ_INT(ctx_read(c, p[0], b, 1), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    errno = 0;
    CHECK_EQ_INT(ctx_read(c, -1, b, 1), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    errno = 0;
    CHECK_EQ_INT(ctx_write(c, p[1], b, 1), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    CHECK_EQ_INT(ctx_readv(c, p[0], &v, 1), -1);
    CHECK_EQ_INT(ctx_writev(c, p[1], &v, 1), -1);
    CHECK_EQ_INT(ctx_recv(c, p[0], b, 1, 0), -1);
    CHECK_EQ_INT(ctx_send(c, p[1], b, 1, 0), -1);
    CHECK_EQ_INT(ctx_accept(c, p[0], NULL, NULL, 0), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    struct sockaddr_in a = io_addr(1);
    CHECK_EQ_INT(ctx_connect(c, p[0], (struct sockaddr *)&a, sizeof a), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    struct pollfd pf = { p[0], POLLIN, 0 };
    CHECK_EQ_INT(ctx_poll(c, &pf, 1, 0), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    size_t done = 99;
    CHECK_EQ_INT(ctx_read_full(c, p[0], b, 1, &done), CTX_CANCELED);
    CHECK_EQ_INT(done, 0);
    CHECK_EQ_INT(ctx_write_all(c, p[1], b, 1, &done), CTX_CANCELED);
    CHECK_EQ_INT(done, 0);
    CHECK_EQ_INT(ctx_dial(c, "127.0.0.1", "1"), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    /* Nothing was consumed. */
    CHECK_EQ_INT(read(p[0], b, sizeof b), 1);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* Bad input gives a clear error and loses nothing. */
static void test_bad_input(void)
{
    int p[2];
    make_pipe(p, 0);
    char b[4];
    errno = 0;
    CHECK_EQ_INT(ctx_read(NULL, p[0], b, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_read(ctx_background(), p[0], NULL, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_write(ctx_background(), p[1], NULL, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_readv(ctx_background(), p[0], NULL, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    struct iovec v = { b, 1 };
    CHECK_EQ_INT(ctx_writev(ctx_background(), p[1], &v, -1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_poll(NULL, NULL, 0, 0), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_poll(ctx_background(), NULL, 1, 0), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_read_full(NULL, p[0], b, 1, NULL), EINVAL);
    CHECK_EQ_INT(ctx_write_all(ctx_background(), p[1], NULL, 1, NULL), EINVAL);
    CHECK_EQ_INT(ctx_accept(NULL, p[0], NULL, NULL, 0), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_connect(ctx_background(), p[0], NULL, 0), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_dial(NULL, "127.0.0.1", "1"), -1);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(ctx_dial(ctx_background(), "127.0.0.1", NULL), -1);
    CHECK_EQ_INT(errno, EINVAL);

    /* A closed fd gives EBADF, as the system call says, with a live
     * cancellable context as well as with the background. */
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    /* Above any descriptor limit, so never open (a closed low number could
     * be reused by the context's own done fd). */
    int bad = 1 << 24;
    ctx_t *cs[2] = { ctx_background(), c };
    for (int i = 0; i < 2; i++) {
        errno = 0;
        CHECK_EQ_INT(ctx_read(cs[i], bad, b, 1), -1);
        CHECK_EQ_INT(errno, EBADF);
        errno = 0;
        CHECK_EQ_INT(ctx_write(cs[i], bad, b, 1), -1);
        CHECK_EQ_INT(errno, EBADF);
        errno = 0;
        CHECK_EQ_INT(ctx_recv(cs[i], bad, b, 1, 0), -1);
        CHECK_EQ_INT(errno, EBADF);
        errno = 0;
        CHECK_EQ_INT(ctx_accept(cs[i], bad, NULL, NULL, 0), -1);
        CHECK_EQ_INT(errno, EBADF);
        struct pollfd pf = { bad, POLLIN, 0 };
        CHECK_EQ_INT(ctx_poll(cs[i], &pf, 1, 0), 1);
        CHECK(pf.revents & POLLNVAL);
    }
    /* recv on a pipe: the system call's ENOTSOCK. */
    errno = 0;
    CHECK_EQ_INT(ctx_recv(c, p[0], b, 1, 0), -1);
    CHECK_EQ_INT(errno, ENOTSOCK);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* Two threads block in ctx_read on one blocking pipe; one byte arrives.
 * One reader gets it; the other must not be stuck in a blocking read: it
 * returns when the context is cancelled. */
static void test_two_readers(void)
{
    int p[2];
#ifdef CTX_TEST_PORTABLE
    /* The portable backend has no read that is non-blocking for one call:
     * of two readers of a blocking pipe, the one that loses the byte would
     * block in read(2) past the cancel (docs/platforms.md).  O_NONBLOCK is
     * the remedy the documentation gives; the calls must still wait. */
    make_pipe(p, O_NONBLOCK);
#else
    make_pipe(p, 0);
#endif
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    struct reader rd[2] = { { .ctx = c, .fd = p[0] }, { .ctx = c, .fd = p[0] } };
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        check_thread_start(&t[i], reader_main, &rd[i]);
    for (int i = 0; i < 2; i++) {
        CHECK(check_wait_flag(&rd[i].started, 1, 10 * CTX_SECOND));
        check_wait_sleeping(rd[i].tid, 1000);
    }
    CHECK_EQ_INT(write(p[1], "z", 1), 1);
    /* Wait until one of them has it, then cancel the other. */
    for (int i = 0; i < 10000; i++) {
        int avail = 0;
        CHECK_EQ_INT(ioctl(p[0], FIONREAD, &avail), 0);
        if (avail == 0)
            break;
        check_sleep_ns(CTX_MILLISECOND);
    }
    ctx_cancel(cancel);
    for (int i = 0; i < 2; i++)
        check_thread_join(t[i]);
    int got = (rd[0].r == 1) + (rd[1].r == 1);
    int canceled =
        (rd[0].r == -1 && rd[0].err == CTX_CANCELED) + (rd[1].r == -1 && rd[1].err == CTX_CANCELED);
    CHECK_EQ_INT(got, 1);
    CHECK_EQ_INT(canceled, 1);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* Writes: a full pipe makes ctx_write wait until the deadline; a pipe with
 * some room takes a short count; whole buffers move with ctx_write_all and
 * ctx_read_full, which reports end of file as ENODATA with the count. */
static void test_write_full_pipe(void)
{
    int p[2];
    make_pipe(p, 0);
    int size = fcntl(p[1], F_GETPIPE_SZ);
    CHECK(size > 0);
    char *big = calloc(1, (size_t)size * 2);
    CHECK_NOT_NULL(big);
    ctx_t *c = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    size_t done = 0;
    CHECK_EQ_INT(ctx_write_all(c, p[1], big, (size_t)size * 2, &done), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(done, size); /* exactly what the pipe holds */
    errno = 0;
    CHECK_EQ_INT(ctx_write(c, p[1], big, 1), -1);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);

    /* Room for one page: a larger write takes what fits and says so. */
    CHECK_EQ_INT(read(p[0], big, 4096), 4096);
    ssize_t w = ctx_write(ctx_background(), p[1], big, 3 * 4096);
    CHECK(w > 0 && w < 3 * 4096);
    CHECK_EQ_INT(read(p[0], big, (size_t)w), w); /* size - 4096 bytes left */

    /* Drain, then read_full meets end of file after 10 bytes. */
    c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_read_full(c, p[0], big, (size_t)size - 4096, &done), 0);
    CHECK_EQ_INT(done, size - 4096);
    CHECK_EQ_INT(write(p[1], big, 10), 10);
    close(p[1]);
    CHECK_EQ_INT(ctx_read_full(c, p[0], big, 20, &done), ENODATA);
    CHECK_EQ_INT(done, 10);
    CHECK_EQ_INT(ctx_read(c, p[0], big, 20), 0); /* end of file: 0, as read(2) */
    ctx_unref(c);
    close(p[0]);
    free(big);
}

/* Vectors and sockets: readv/writev on a socketpair and a pipe,
 * recv/send with flags, and MSG_DONTWAIT keeping its meaning. */
/* Writes "late" to *arg after 20 ms. */
static void *late_writer(void *arg)
{
    check_sleep_ns(20 * CTX_MILLISECOND);
    CHECK_EQ_INT(write(*(int *)arg, "late", 4), 4);
    return NULL;
}

static void test_vectors_and_sockets(void)
{
    int s[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    int p[2];
    make_pipe(p, 0);
    ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    int pairs[2][2] = { { s[0], s[1] }, { p[1], p[0] } };
    for (int i = 0; i < 2; i++) {
        struct iovec out[2] = { { "ab", 2 }, { "cde", 3 } };
        CHECK_EQ_INT(ctx_writev(c, pairs[i][0], out, 2), 5);
        char x[2], y[8] = { 0 };
        struct iovec in[2] = { { x, 2 }, { y, sizeof y } };
        CHECK_EQ_INT(ctx_readv(c, pairs[i][1], in, 2), 5);
        CHECK(memcmp(x, "ab", 2) == 0);
        CHECK_STR(y, "cde");
    }
    CHECK_EQ_INT(ctx_send(c, s[0], "pk", 2, 0), 2);
    char b[4] = { 0 };
    CHECK_EQ_INT(ctx_recv(c, s[1], b, 2, MSG_PEEK), 2);
    CHECK_EQ_INT(ctx_recv(c, s[1], b, 2, 0), 2);
    CHECK(memcmp(b, "pk", 2) == 0);
    errno = 0;
    CHECK_EQ_INT(ctx_recv(c, s[1], b, 2, MSG_DONTWAIT), -1);
    CHECK_EQ_INT(errno, EAGAIN);

    /* MSG_WAITALL waits for every byte, as recv(2) does; when the context
     * ends first, the bytes that arrived are returned. */
    char w[8] = { 0 };
    CHECK_EQ_INT(write(s[0], "on", 2), 2);
    pthread_t t;
    check_thread_start(&t, late_writer, &s[0]);
    CHECK_EQ_INT(ctx_recv(c, s[1], w, 6, MSG_WAITALL), 6);
    CHECK(memcmp(w, "onlate", 6) == 0);
    check_thread_join(t);
    CHECK_EQ_INT(write(s[0], "xy", 2), 2);
    ctx_t *d = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK_EQ_INT(ctx_recv(d, s[1], w, 6, MSG_WAITALL), 2);
    CHECK(memcmp(w, "xy", 2) == 0);
    ctx_unref(d);
    ctx_unref(c);
    close(s[0]);
    close(s[1]);
    close(p[0]);
    close(p[1]);
}

/* A peer reset in the middle of ctx_write_all gives EPIPE or ECONNRESET,
 * *done exact, and no SIGPIPE (which would kill this process: SIGPIPE is
 * at its default disposition here). */
static void test_peer_reset(void)
{
    signal(SIGPIPE, SIG_DFL);
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    int one = 1;
    CHECK_EQ_INT(setsockopt(cl, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one), 0);
    size_t n = 64u << 20;
    char *big = calloc(1, n);
    CHECK_NOT_NULL(big);
    /* The server reads a little, then resets the connection. */
    char rb[1000];
    ctx_t *c = ctx_with_timeout(ctx_background(), 30 * CTX_SECOND, NULL);
    size_t done = 0;
    CHECK_EQ_INT(ctx_write(c, cl, big, 1000), 1000);
    CHECK_EQ_INT(ctx_read_full(c, sv, rb, sizeof rb, &done), 0);
    struct linger lg = { 1, 0 };
    CHECK_EQ_INT(setsockopt(sv, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(sv);
    int rc = ctx_write_all(c, cl, big, n, &done);
    CHECK_MSG(rc == EPIPE || rc == ECONNRESET, "rc %d", rc);
    CHECK(done < n);
    /* Sending again gives the error again, still without a signal. */
    errno = 0;
    CHECK_EQ_INT(ctx_write(c, cl, big, 10), -1);
    CHECK(errno == EPIPE || errno == ECONNRESET);
    ctx_unref(c);
    close(cl);
    free(big);
}

/* SIGPIPE, counted by a handler. */
static volatile sig_atomic_t sigpipes;

static void count_sigpipe(int sig)
{
    (void)sig;
    sigpipes++;
}

/* One write of each kind to fd, whose reading side is gone: each fails
 * with EPIPE (or ECONNRESET), and raises SIGPIPE exactly when `signal`
 * (write(2)'s behaviour on a pipe; never on a socket). */
static void check_broken_write(ctx_t *c, int fd, int signal, const char *what)
{
    struct iovec v[2] = { { "ab", 2 }, { "cd", 2 } };
    for (int k = 0; k < 3; k++) {
        sig_atomic_t before = sigpipes;
        errno = 0;
        ssize_t r = k == 0   ? ctx_write(c, fd, "x", 1)
                    : k == 1 ? ctx_writev(c, fd, v, 2)
                             : (ssize_t)ctx_write_all(c, fd, "xyz", 3, NULL);
        int err = k == 2 ? (int)r : errno;
        CHECK_MSG(k == 2 ? r != 0 : r == -1, "%s: write %d returned %zd", what, k, r);
        CHECK_MSG(err == EPIPE || err == ECONNRESET, "%s: write %d: %s", what, k, strerror(err));
        CHECK_MSG(sigpipes - before == signal, "%s: write %d raised %d SIGPIPE", what, k,
                  (int)(sigpipes - before));
    }
}

/* A write whose reader is gone: a pipe or FIFO raises SIGPIPE as write(2)
 * does, a socket never does (the one non-blocking call that writes to
 * both asks the kernel for no signal, and a pipe's signal is then raised
 * by a second call).  Nothing is kept per fd number: the same number
 * turned from a pipe into a socket and back behaves as what it is now. */
static void test_sigpipe(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count_sigpipe;
    sigemptyset(&sa.sa_mask);
    CHECK_EQ_INT(sigaction(SIGPIPE, &sa, &old), 0);
    ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);

    int p[2];
    make_pipe(p, 0);
    close(p[0]);
    check_broken_write(c, p[1], 1, "pipe");
    check_broken_write(ctx_background(), p[1], 1, "pipe, background");

    int s[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    close(s[1]);
    check_broken_write(c, s[0], 0, "unix socket");
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    CHECK_EQ_INT(shutdown(cl, SHUT_WR), 0);
    check_broken_write(c, cl, 0, "tcp socket, shut down");

    /* One fd number, reused: a writable pipe, a broken socket, a broken
     * pipe, a working socket. */
    int n = p[1];
    int q[2];
    make_pipe(q, 0);
    CHECK_EQ_INT(dup2(q[1], n), n);
    CHECK_EQ_INT(ctx_write(c, n, "ok", 2), 2);
    CHECK_EQ_INT(dup2(s[0], n), n);
    check_broken_write(c, n, 0, "socket on a pipe's number");
    close(q[0]);
    CHECK_EQ_INT(dup2(q[1], n), n);
    check_broken_write(c, n, 1, "pipe on a socket's number");
    CHECK_EQ_INT(dup2(sv, n), n);
    CHECK_EQ_INT(ctx_write(c, n, "ok", 2), 2);
    char b[2];
    CHECK_EQ_INT(ctx_read_full(c, cl, b, 2, NULL), 0);

    /* An eventfd refuses a short count with EINVAL, as write(2) says. */
    int ev = eventfd(0, EFD_CLOEXEC);
    CHECK(ev >= 0);
    errno = 0;
    CHECK_EQ_INT(ctx_write(c, ev, "abc", 3), -1);
    CHECK_EQ_INT(errno, EINVAL);
    close(ev);

    close(n);
    close(q[1]);
    close(s[0]);
    close(cl);
    close(sv);
    ctx_unref(c);
    CHECK_EQ_INT(sigaction(SIGPIPE, &old, NULL), 0);
}

/* A kernel before RWF_NOSIGNAL (Linux 6.18), made from this one with a
 * seccomp filter that refuses pwritev2 with that flag as such a kernel
 * does (EOPNOTSUPP), in a child process: writes still work on every file
 * type, by the socket call first, and SIGPIPE still comes from pipes
 * only. */
#if defined(__has_include)
#if __has_include(<linux/seccomp.h>) && __has_include(<linux/filter.h>) && \
    __has_include(<linux/audit.h>) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_SECCOMP_TEST 1
#endif
#endif

#ifdef HAVE_SECCOMP_TEST
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifdef __x86_64__
#define TEST_AUDIT_ARCH AUDIT_ARCH_X86_64
#else
#define TEST_AUDIT_ARCH AUDIT_ARCH_I386
#endif

static void refuse_rwf_nosignal(void)
{
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pwritev2, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        /* The flags are pwritev2's sixth argument; their low word. */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[5])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x100 /* RWF_NOSIGNAL */, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EOPNOTSUPP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
    CHECK_EQ_INT(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
    CHECK_EQ_INT(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define TEST_UNDER_SANITIZER 1
#endif
#ifdef __has_feature
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define TEST_UNDER_SANITIZER 1
#endif
#endif

/* A ready read and a ready write are one system call each: in a child
 * whose only allowed system calls are preadv2, pwritev2 and exit (every
 * other call fails with EDOM), ctx_write and ctx_read on a pipe with room
 * and data, under a cancellable context, still succeed.  No socket probe,
 * no poll, no fstat, no done fd.  Not under a sanitizer, whose
 * interceptors make calls of their own. */
static void test_one_system_call(void)
{
#if defined(TEST_UNDER_SANITIZER)
    fprintf(stderr, "   skipped under a sanitizer\n");
#elif defined(CTX_TEST_PORTABLE)
    fprintf(stderr, "   skipped: the portable backend polls a pipe first\n");
#else
    int p[2];
    make_pipe(p, 0);
    char x = 'x';
    struct iovec v = { &x, 1 };
    if (syscall(SYS_pwritev2, p[1], &v, 1, -1L, -1L, 0x108) != 1) {
        fprintf(stderr, "   no RWF_NOSIGNAL in this kernel (%s): writes make two calls\n",
                strerror(errno));
        close(p[0]);
        close(p[1]);
        return;
    }
    CHECK_EQ_INT(read(p[0], &x, 1), 1);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
        ctx_t *d = ctx_with_timeout(c, 10 * CTX_SECOND, NULL);
        char buf[64] = "one call";
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TEST_AUDIT_ARCH, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EDOM),
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_preadv2, 4, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_pwritev2, 3, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_exit_group, 2, 0),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_exit, 1, 0),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EDOM),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
        CHECK_EQ_INT(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        CHECK_EQ_INT(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
        /* From here a failed check could not even print: exit codes say. */
        if (ctx_write(d, p[1], buf, sizeof buf) != (ssize_t)sizeof buf)
            _exit(10 + (errno == EDOM));
        struct iovec w[2] = { { buf, 3 }, { buf + 3, 5 } };
        if (ctx_writev(d, p[1], w, 2) != 8)
            _exit(20 + (errno == EDOM));
        if (ctx_read(d, p[0], buf, sizeof buf) != (ssize_t)sizeof buf ||
            ctx_read(d, p[0], buf, sizeof buf) != 8)
            _exit(30 + (errno == EDOM));
        _exit(0);
    }
    int status;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "child status %#x (exit 11, 21, 31: a write, a vector write or a read made "
              "another system call)",
              status);
    close(p[0]);
    close(p[1]);
#endif
}

static void test_kernel_without_nosignal(void)
{
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        refuse_rwf_nosignal();
        /* The filter works: the flag is refused, RWF_NOWAIT alone is not. */
        int p[2];
        make_pipe(p, 0);
        char x = 'x';
        struct iovec v = { &x, 1 };
        errno = 0;
        CHECK_EQ_INT(syscall(SYS_pwritev2, p[1], &v, 1, -1L, -1L, 0x108), -1);
        CHECK_EQ_INT(errno, EOPNOTSUPP);
        CHECK_EQ_INT(syscall(SYS_pwritev2, p[1], &v, 1, -1L, -1L, 0x8), 1);
        CHECK_EQ_INT(read(p[0], &x, 1), 1);

        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = count_sigpipe;
        sigemptyset(&sa.sa_mask);
        CHECK_EQ_INT(sigaction(SIGPIPE, &sa, NULL), 0);
        ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
        char b[64];
        for (int i = 0; i < 3; i++) { /* before and after the probe */
            CHECK_EQ_INT(ctx_write(c, p[1], "abc", 3), 3);
            CHECK_EQ_INT(ctx_read(c, p[0], b, sizeof b), 3);
        }
        int s[2];
        CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        struct iovec out[2] = { { "ab", 2 }, { "cde", 3 } };
        CHECK_EQ_INT(ctx_writev(c, s[0], out, 2), 5);
        CHECK_EQ_INT(ctx_read_full(c, s[1], b, 5, NULL), 0);
        CHECK(memcmp(b, "abcde", 5) == 0);
        int ev = eventfd(0, EFD_CLOEXEC);
        CHECK(ev >= 0);
        uint64_t one = 1;
        CHECK_EQ_INT(ctx_write(c, ev, &one, sizeof one), 8);
        close(ev);
        /* A full pipe still waits until the deadline. */
        ctx_t *d = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
        int size = fcntl(p[1], F_GETPIPE_SZ);
        char *big = calloc(1, (size_t)size + 1);
        CHECK_NOT_NULL(big);
        size_t done = 0;
        CHECK_EQ_INT(ctx_write_all(d, p[1], big, (size_t)size + 1, &done), CTX_DEADLINE_EXCEEDED);
        CHECK_EQ_INT(done, size);
        free(big);
        ctx_unref(d);

        close(p[0]);
        check_broken_write(c, p[1], 1, "pipe, old kernel");
        close(s[1]);
        check_broken_write(c, s[0], 0, "unix socket, old kernel");
        close(p[1]);
        close(s[0]);
        ctx_unref(c);
        _exit(0); /* a failed check aborts the child */
    }
    int status;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
}
#endif

/* accept and connect: waiting, success, the deadline, blocking and
 * non-blocking sockets; a connect to a listener whose backlog is full
 * hangs on loopback until the context ends it. */
static void test_accept_connect(void)
{
    for (int nb = 0; nb < 2; nb++) {
        int port;
        int l = io_listen(8, &port);
        if (nb)
            fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK);
        ctx_t *c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
        errno = 0;
        CHECK_EQ_INT(ctx_accept(c, l, NULL, NULL, 0), -1);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        ctx_unref(c);

        c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
        int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nb ? SOCK_NONBLOCK : 0), 0);
        struct sockaddr_in a = io_addr(port);
        CHECK_EQ_INT(ctx_connect(c, cl, (struct sockaddr *)&a, sizeof a), 0);
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        int sv = ctx_accept(c, l, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
        CHECK(sv >= 0);
        CHECK_EQ_INT(pl, sizeof peer);
        CHECK_EQ_INT(fcntl(sv, F_GETFD), FD_CLOEXEC);
        CHECK_EQ_INT(ctx_write(c, cl, "hi", 2), 2);
        char b[2];
        CHECK_EQ_INT(ctx_read_full(c, sv, b, 2, NULL), 0);
        ctx_unref(c);
        close(sv);
        close(cl);
        close(l);
    }

    /* Backlog full: fill the queue of a listener that never accepts. */
    int port;
    int l = io_listen(0, &port);
    struct sockaddr_in a = io_addr(port);
    int fill[8], nfill = 0;
    for (; nfill < 8; nfill++) {
        fill[nfill] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = connect(fill[nfill], (struct sockaddr *)&a, sizeof a);
        CHECK(r == 0 || errno == EINPROGRESS);
    }
    for (int nb = 0; nb < 2; nb++) {
        ctx_time_t t0 = check_mono_now();
        ctx_t *c = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
        int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nb ? SOCK_NONBLOCK : 0), 0);
        errno = 0;
        CHECK_EQ_INT(ctx_connect(c, cl, (struct sockaddr *)&a, sizeof a), -1);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        ctx_time_t took = check_mono_now() - t0;
        CHECK_MSG(took < 5 * CTX_SECOND, "took %lld ns", (long long)took);
        close(cl);
        ctx_unref(c);

        c = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
        char portstr[16];
        snprintf(portstr, sizeof portstr, "%d", port);
        errno = 0;
        CHECK_EQ_INT(ctx_dial(c, "127.0.0.1", portstr), -1);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        ctx_unref(c);
    }
    /* A context that ends at any moment around the connect, also before
     * the SYN has left: the call still returns at once.  (An abort from
     * outside the call, such as shutdown(2) from an AfterFunc, is lost
     * when it lands before the SYN, and the connect then waits out the
     * SYN timeout, minutes.)  The blocking socket's send timeout is
     * restored afterwards. */
    for (int i = 0; i < 200; i++) {
        ctx_time_t t0 = check_mono_now();
        ctx_t *c = ctx_with_timeout(ctx_background(), (i % 50) * CTX_MICROSECOND, NULL);
        int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct timeval tv = { 7, 0 };
        CHECK_EQ_INT(setsockopt(cl, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv), 0);
        errno = 0;
        int r = ctx_connect(c, cl, (struct sockaddr *)&a, sizeof a);
        CHECK_EQ_INT(r, -1);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        ctx_time_t took = check_mono_now() - t0;
        CHECK_MSG(took < 2 * CTX_SECOND, "took %lld ns", (long long)took);
        socklen_t tl = sizeof tv;
        CHECK_EQ_INT(getsockopt(cl, SOL_SOCKET, SO_SNDTIMEO, &tv, &tl), 0);
        CHECK_EQ_INT(tv.tv_sec, 7);
        CHECK_EQ_INT(fcntl(cl, F_GETFL) & O_NONBLOCK, 0);
        close(cl);
        ctx_unref(c);
    }
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    close(l);

    /* A blocking AF_UNIX connect to a listener whose backlog is full waits
     * for room, as connect(2) does, until the context ends it; once room
     * is made it connects. */
    int u = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un ua;
    memset(&ua, 0, sizeof ua);
    ua.sun_family = AF_UNIX;
    snprintf(ua.sun_path + 1, sizeof ua.sun_path - 1, "libctx-test-io-%d", (int)getpid());
    socklen_t ual =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(ua.sun_path + 1));
    CHECK_EQ_INT(bind(u, (struct sockaddr *)&ua, ual), 0);
    CHECK_EQ_INT(listen(u, 0), 0);
    int ufill[4], nufill = 0;
    for (; nufill < 4; nufill++) {
        ufill[nufill] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (connect(ufill[nufill], (struct sockaddr *)&ua, ual) != 0) {
            CHECK_EQ_INT(errno, EAGAIN);
            close(ufill[nufill]);
            break;
        }
    }
    CHECK(nufill >= 1);
    ctx_time_t t0 = check_mono_now();
    ctx_t *c = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    int cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    errno = 0;
    CHECK_EQ_INT(ctx_connect(c, cl, (struct sockaddr *)&ua, ual), -1);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    ctx_time_t took = check_mono_now() - t0;
    CHECK_MSG(took >= 90 * CTX_MILLISECOND && took < 2 * CTX_SECOND, "took %lld ns",
              (long long)took);
    close(cl);
    ctx_unref(c);
    /* Room: accept the queued connections, then connect. */
    for (int i = 0; i < nufill; i++) {
        int s = accept4(u, NULL, NULL, SOCK_CLOEXEC);
        CHECK(s >= 0);
        close(s);
        close(ufill[i]);
    }
    c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    cl = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK_EQ_INT(ctx_connect(c, cl, (struct sockaddr *)&ua, ual), 0);
    close(cl);
    ctx_unref(c);
    close(u);
}

/* A read on fd under a 100 ms deadline that finds nothing: -1 with
 * CTX_DEADLINE_EXCEEDED, promptly, and the fd's flags as they were. */
static void check_read_times_out(int fd, const char *what)
{
    int fl = fcntl(fd, F_GETFL);
    char b[64];
    ctx_time_t t0 = check_mono_now();
    ctx_t *c = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    errno = 0;
    ssize_t r = ctx_read(c, fd, b, sizeof b);
    int e = errno;
    ctx_time_t took = check_mono_now() - t0;
    CHECK_MSG(r == -1 && e == CTX_DEADLINE_EXCEEDED, "%s: r %zd errno %d", what, r, e);
    CHECK_MSG(took < 5 * CTX_SECOND, "%s: took %lld ns", what, (long long)took);
    CHECK_EQ_INT(fcntl(fd, F_GETFL), fl);
    ctx_unref(c);
}

/* File types besides pipes and sockets, each down its own path: a regular
 * file (read at once, never waited for), a FIFO, an eventfd, a terminal
 * (no RWF_NOWAIT: poll, then the plain call) and /dev/null and /dev/zero.
 * Blocking fds throughout, which the calls must not change. */
static void test_file_types(void)
{
    ctx_t *bg = ctx_background();
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(bg, &cancel); /* cancellable: takes the wait path */

    /* A regular file: data, then end of file; writes append. */
    char path[] = "/tmp/libctx-test-io-XXXXXX";
    int f = mkstemp(path);
    CHECK(f >= 0);
    unlink(path);
    CHECK_EQ_INT(ctx_write(c, f, "regular", 7), 7);
    CHECK_EQ_INT(lseek(f, 0, SEEK_SET), 0);
    char b[64];
    CHECK_EQ_INT(ctx_read(c, f, b, sizeof b), 7);
    CHECK(memcmp(b, "regular", 7) == 0);
    CHECK_EQ_INT(ctx_read(c, f, b, sizeof b), 0);
    size_t done = 99;
    CHECK_EQ_INT(ctx_read_full(c, f, b, 1, &done), ENODATA);
    CHECK_EQ_INT(done, 0);
    close(f);

    /* A FIFO opened read-write (so that it has a writer and never says end
     * of file): empty waits until the deadline, data is read. */
    char fifo[64];
    snprintf(fifo, sizeof fifo, "/tmp/libctx-test-fifo-%d", (int)getpid());
    CHECK_EQ_INT(mkfifo(fifo, 0600), 0);
    int ff = open(fifo, O_RDWR | O_CLOEXEC);
    CHECK(ff >= 0);
    unlink(fifo);
    check_read_times_out(ff, "fifo");
    CHECK_EQ_INT(ctx_write(c, ff, "fifo", 4), 4);
    CHECK_EQ_INT(ctx_read(c, ff, b, sizeof b), 4);
    close(ff);

    /* An eventfd: a zero counter waits; a posted count is read. */
    int ev = eventfd(0, EFD_CLOEXEC);
    CHECK(ev >= 0);
    check_read_times_out(ev, "eventfd");
    uint64_t one = 1, got = 0;
    CHECK_EQ_INT(ctx_write(c, ev, &one, sizeof one), 8);
    CHECK_EQ_INT(ctx_read(c, ev, &got, sizeof got), 8);
    CHECK_EQ_INT(got, 1);
    close(ev);

    /* A terminal (a pseudo-terminal pair in raw mode). */
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m >= 0 && grantpt(m) == 0 && unlockpt(m) == 0) {
        int sl = open(ptsname(m), O_RDWR | O_NOCTTY | O_CLOEXEC);
        CHECK(sl >= 0);
        struct termios t;
        CHECK_EQ_INT(tcgetattr(sl, &t), 0);
        cfmakeraw(&t);
        CHECK_EQ_INT(tcsetattr(sl, TCSANOW, &t), 0);
        check_read_times_out(m, "pty master");
        check_read_times_out(sl, "pty slave");
        CHECK_EQ_INT(ctx_write(c, sl, "tty", 3), 3);
        CHECK_EQ_INT(ctx_read_full(c, m, b, 3, NULL), 0);
        CHECK(memcmp(b, "tty", 3) == 0);

        /* A terminal has no per-call "do not block", and write(2) on a
         * blocking fd waits until all of it is written: a big write is
         * cut to a piece that an empty terminal buffer takes at once, and
         * the count says exactly what went. */
        size_t big = 1 << 20;
        char *buf = malloc(big);
        CHECK_NOT_NULL(buf);
        memset(buf, 'x', big);
        ctx_t *d = ctx_with_timeout(bg, 10 * CTX_SECOND, NULL);
        ssize_t w = ctx_write(d, sl, buf, big);
        CHECK_MSG(w > 0 && w <= PIPE_BUF, "wrote %zd", w);
        CHECK_EQ_INT(ctx_read_full(d, m, buf, (size_t)w, NULL), 0);
        ctx_unref(d);
        free(buf);
        close(sl);
    } else {
        fprintf(stderr, "   no pseudo-terminal: %s\n", strerror(errno));
    }
    if (m >= 0)
        close(m);

    /* Character devices that are always ready. */
    int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    CHECK(zero >= 0 && null >= 0);
    b[0] = 1;
    CHECK_EQ_INT(ctx_read(c, zero, b, sizeof b), sizeof b);
    CHECK_EQ_INT(b[0], 0);
    CHECK_EQ_INT(ctx_write(c, null, b, sizeof b), sizeof b);
    close(zero);
    close(null);

    ctx_cancel(cancel);
    ctx_unref(c);
}

/* ctx_poll: readiness, timeout, cancel, deadline, no fds, many fds. */
static void test_poll(void)
{
    int p[2];
    make_pipe(p, 0);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    struct pollfd pf = { p[0], POLLIN, 0 };
    ctx_time_t t0 = check_mono_now();
    CHECK_EQ_INT(ctx_poll(c, &pf, 1, 20 * CTX_MILLISECOND), 0);
    CHECK(check_mono_now() - t0 >= 20 * CTX_MILLISECOND);
    CHECK_EQ_INT(ctx_poll(ctx_background(), &pf, 1, 0), 0);
    CHECK_EQ_INT(write(p[1], "x", 1), 1);
    CHECK_EQ_INT(ctx_poll(c, &pf, 1, CTX_FOREVER), 1);
    CHECK_EQ_INT(pf.revents, POLLIN);
    CHECK_EQ_INT(ctx_poll(ctx_background(), &pf, 1, -5), 1);

    /* Many fds: 40 entries, the last one ready. */
    struct pollfd many[40];
    for (int i = 0; i < 40; i++) {
        many[i].fd = i == 39 ? p[0] : -1;
        many[i].events = POLLIN;
    }
    CHECK_EQ_INT(ctx_poll(c, many, 40, CTX_FOREVER), 1);
    CHECK_EQ_INT(many[39].revents, POLLIN);
    CHECK_EQ_INT(read(p[0], &pf, 1), 1);

    /* No fds: a sleep the deadline cuts short, reported as the deadline. */
    ctx_t *d = ctx_with_timeout(c, 30 * CTX_MILLISECOND, NULL);
    errno = 0;
    CHECK_EQ_INT(ctx_poll(d, NULL, 0, CTX_FOREVER), -1);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    ctx_unref(d);

    struct reader rd = { .ctx = c, .fd = p[0] };
    pthread_t t;
    check_thread_start(&t, reader_main, &rd);
    CHECK(check_wait_flag(&rd.started, 1, 10 * CTX_SECOND));
    ctx_cancel(cancel);
    check_thread_join(t);
    CHECK_EQ_INT(rd.err, CTX_CANCELED);
    errno = 0;
    CHECK_EQ_INT(ctx_poll(c, &pf, 1, CTX_FOREVER), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* The background context can never be done: waiting on it makes no fd. */
static void test_background_wait(void)
{
    int p[2];
    make_pipe(p, 0);
    pthread_t t;
    check_thread_start(&t, late_writer, &p[1]);
    char b[8];
    CHECK_EQ_INT(ctx_read_full(ctx_background(), p[0], b, 4, NULL), 0);
    CHECK(memcmp(b, "late", 4) == 0);
    check_thread_join(t);
    close(p[0]);
    close(p[1]);
}

/* A signal interrupting the wait is retried, not reported. */
static void on_usr1(int sig)
{
    (void)sig;
}

static void test_eintr(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1; /* no SA_RESTART: poll returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);
    int p[2];
    make_pipe(p, 0);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    struct reader rd = { .ctx = c, .fd = p[0] };
    pthread_t t;
    check_thread_start(&t, reader_main, &rd);
    CHECK(check_wait_flag(&rd.started, 1, 10 * CTX_SECOND));
    for (int i = 0; i < 5; i++) {
        check_wait_sleeping(rd.tid, 1000);
        pthread_kill(t, SIGUSR1);
    }
    CHECK_EQ_INT(write(p[1], "ok", 2), 2);
    check_thread_join(t);
    CHECK_EQ_INT(rd.r, 2);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* No fd left for the done fd: the wait fails with EMFILE, the data and
 * the descriptors are untouched, and all works again afterwards. */
static void test_fd_exhaustion(void)
{
    int p[2];
    make_pipe(p, 0);
    struct rlimit old, low;
    CHECK_EQ_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
    int maxfd = p[0] > p[1] ? p[0] : p[1];
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        int fd = atoi(de->d_name);
        if (fd > maxfd)
            maxfd = fd;
    }
    closedir(d);
    low = old;
    low.rlim_cur = (rlim_t)maxfd + 1;
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    int before = io_fd_count();
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &low), 0);
    /* Fill every free number below the limit. */
    static int fillers[65536];
    int nfill = 0;
    while (nfill < 65536 && (fillers[nfill] = dup(p[0])) >= 0)
        nfill++;
    CHECK_EQ_INT(errno, EMFILE);
    char b[4];
    errno = 0;
    ssize_t r = ctx_read(c, p[0], b, sizeof b);
    int e = errno;
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
    CHECK_EQ_INT(r, -1);
    CHECK_EQ_INT(e, EMFILE);
    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    CHECK_EQ_INT(io_fd_count(), before);
    CHECK_EQ_INT(write(p[1], "y", 1), 1);
    CHECK_EQ_INT(ctx_read(c, p[0], b, sizeof b), 1);
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
}

/* ctx_accept's flags decide the new socket's flags, whatever the
 * listener's: blocking without CTX_SOCK_NONBLOCK even from a non-blocking
 * listener (BSD's accept would copy O_NONBLOCK; the portable backend must
 * clear it), close-on-exec only with CTX_SOCK_CLOEXEC; any other bit is
 * EINVAL.  With CTX_SOCK_CLOEXEC and CTX_SOCK_NONBLOCK spelled as
 * <ctx/io.h> gives them, on either backend. */
static void test_accept_flags(void)
{
    int port;
    int l = io_listen(8, &port);
    CHECK_EQ_INT(fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK), 0);
    struct sockaddr_in a = io_addr(port);
    const int flags[] = { 0, CTX_SOCK_CLOEXEC, CTX_SOCK_NONBLOCK,
                          CTX_SOCK_CLOEXEC | CTX_SOCK_NONBLOCK };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++) {
        int cl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(cl >= 0);
        CHECK_EQ_INT(connect(cl, (struct sockaddr *)&a, sizeof a), 0);
        int sv = ctx_accept(ctx_background(), l, NULL, NULL, flags[i]);
        CHECK_MSG(sv >= 0, "flags %#x: errno %d", flags[i], errno);
        int fl = fcntl(sv, F_GETFL), fd = fcntl(sv, F_GETFD);
        CHECK_EQ_INT((fl & O_NONBLOCK) != 0, (flags[i] & CTX_SOCK_NONBLOCK) != 0);
        CHECK_EQ_INT((fd & FD_CLOEXEC) != 0, (flags[i] & CTX_SOCK_CLOEXEC) != 0);
        close(sv);
        close(cl);
    }
    errno = 0;
    CHECK_EQ_INT(ctx_accept(ctx_background(), l, NULL, NULL, 0x40 | CTX_SOCK_CLOEXEC), -1);
    CHECK_EQ_INT(errno, EINVAL);
    close(l);
}

int main(void)
{
#ifdef HAVE_SECCOMP_TEST
    /* First, before a write of this process can have found out what the
     * kernel takes: the child inherits that. */
    RUN_TEST(test_kernel_without_nosignal);
#endif
    RUN_TEST(test_fast_path);
    RUN_TEST(test_cancel_and_deadline);
    RUN_TEST(test_done_first);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_two_readers);
    RUN_TEST(test_write_full_pipe);
    RUN_TEST(test_vectors_and_sockets);
    RUN_TEST(test_peer_reset);
    RUN_TEST(test_sigpipe);
#ifdef HAVE_SECCOMP_TEST
    RUN_TEST(test_one_system_call);
#endif
    RUN_TEST(test_accept_connect);
    RUN_TEST(test_accept_flags);
    RUN_TEST(test_file_types);
    RUN_TEST(test_poll);
    RUN_TEST(test_background_wait);
    RUN_TEST(test_eintr);
    RUN_TEST(test_fd_exhaustion);
    return 0;
}
