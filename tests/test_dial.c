/* SPDX-License-Identifier: MIT */

/*
 * ctx_dial over loopback: success (a blocking, close-on-exec socket), a
 * refused port, a listener whose backlog is full (the connect hangs until
 * the context ends it), a context that ends while connecting, and
 * thousands of concurrent dials and accepts cancelled at random.  Names
 * (resolution that a context cuts short) are tested by
 * test_dial_resolver.c in a private network namespace.
 */
#include "io_helpers.h"

static char *port_str(int port)
{
    static _Thread_local char s[16];
    snprintf(s, sizeof s, "%d", port);
    return s;
}

static void test_connects(void)
{
    int port;
    int l = io_listen(16, &port);
    ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    int fd = ctx_dial(c, "127.0.0.1", port_str(port));
    CHECK(fd >= 0);
    CHECK_EQ_INT(fcntl(fd, F_GETFD), FD_CLOEXEC);
    CHECK_EQ_INT(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    int sv = ctx_accept(c, l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(sv >= 0);
    CHECK_EQ_INT(ctx_write_all(c, fd, "ping", 4, NULL), 0);
    char b[4];
    CHECK_EQ_INT(ctx_read_full(c, sv, b, 4, NULL), 0);
    close(sv);
    close(fd);
    /* NULL host: the loopback address; the background context. */
    fd = ctx_dial(ctx_background(), NULL, port_str(port));
    CHECK(fd >= 0);
    close(fd);
    ctx_unref(c);
    close(l);
}

static void test_refused(void)
{
    int port;
    int l = io_listen(1, &port);
    close(l); /* nobody listens there now */
    errno = 0;
    CHECK_EQ_INT(ctx_dial(ctx_background(), "127.0.0.1", port_str(port)), -1);
    CHECK_EQ_INT(errno, ECONNREFUSED);
    /* A port that is not a number nor a service. */
    errno = 0;
    CHECK_EQ_INT(ctx_dial(ctx_background(), "127.0.0.1", "no-such-service-xyz"), -1);
    CHECK(errno == EINVAL || errno == ENOENT);
}

/* The listener never accepts and its queue is full: SYNs are dropped, the
 * connect hangs, and only the context ends it. */
static void test_backlog_full(void)
{
    int port;
    int l = io_listen(0, &port);
    struct sockaddr_in a = io_addr(port);
    int fill[8];
    for (int i = 0; i < 8; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        int r = connect(fill[i], (struct sockaddr *)&a, sizeof a);
        CHECK(r == 0 || errno == EINPROGRESS);
    }
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_t *d = ctx_with_timeout(c, 100 * CTX_MILLISECOND, NULL);
    errno = 0;
    CHECK_EQ_INT(ctx_dial(d, "127.0.0.1", port_str(port)), -1);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    ctx_unref(d);
    ctx_cancel(cancel);
    errno = 0;
    CHECK_EQ_INT(ctx_dial(c, "127.0.0.1", port_str(port)), -1);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    ctx_unref(c);
    for (int i = 0; i < 8; i++)
        close(fill[i]);
    close(l);
}

/* Many threads dial a listener (half of them a full one) and accept, each
 * under a context that another thread cancels at a random moment.  Every
 * call must end with a socket or with ctx_err, and nothing may leak. */
struct stress {
    int port_ok, port_full, listener;
    atomic_int stop;
    atomic_long dialed, canceled;
    pthread_mutex_t mu;
    ctx_cancel_t *cur[8];
    uint64_t seed;
};

static struct stress S;

static void *dialer(void *arg)
{
    int id = (int)(intptr_t)arg;
    check_rng_t rng = check_rng_make(S.seed + (uint64_t)id);
    while (!atomic_load(&S.stop)) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_timeout(ctx_background(), 2 * CTX_SECOND, &cancel);
        CHECK_NOT_NULL(c);
        pthread_mutex_lock(&S.mu);
        S.cur[id] = cancel;
        pthread_mutex_unlock(&S.mu);
        int fd;
        if (id == 0) {
            fd = ctx_accept(c, S.listener, NULL, NULL, SOCK_CLOEXEC);
        } else {
            int port = check_rng_below(&rng, 2) ? S.port_ok : S.port_full;
            fd = ctx_dial(c, "127.0.0.1", port_str(port));
        }
        int e = errno;
        pthread_mutex_lock(&S.mu);
        S.cur[id] = NULL;
        pthread_mutex_unlock(&S.mu);
        if (fd >= 0) {
            close(fd);
            atomic_fetch_add(&S.dialed, 1);
        } else {
            CHECK_MSG(e == CTX_CANCELED || e == CTX_DEADLINE_EXCEEDED || e == ECONNREFUSED ||
                          e == ECONNRESET,
                      "errno %d", e);
            atomic_fetch_add(&S.canceled, 1);
        }
        ctx_unref(c);
    }
    return NULL;
}

static void test_concurrent_cancel(void)
{
    S.seed = check_seed();
    pthread_mutex_init(&S.mu, NULL);
    S.listener = io_listen(4096, &S.port_ok);
    int full = io_listen(0, &S.port_full);
    struct sockaddr_in a = io_addr(S.port_full);
    int fill[8];
    for (int i = 0; i < 8; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        connect(fill[i], (struct sockaddr *)&a, sizeof a);
    }
    int before = io_fd_count();
    pthread_t t[8];
    for (int i = 0; i < 8; i++)
        check_thread_start(&t[i], dialer, (void *)(intptr_t)i);
    check_rng_t rng = check_rng_make(S.seed);
    long rounds = check_scale(3000);
    for (long r = 0; r < rounds; r++) {
        check_sleep_ns((ctx_duration_t)check_rng_below(&rng, 300) * CTX_MICROSECOND);
        int id = (int)check_rng_below(&rng, 8);
        pthread_mutex_lock(&S.mu);
        if (S.cur[id] != NULL)
            ctx_cancel(S.cur[id]);
        pthread_mutex_unlock(&S.mu);
    }
    atomic_store(&S.stop, 1);
    /* Wake the acceptor and any dialer stuck on the full listener. */
    for (int i = 0; i < 8; i++) {
        pthread_mutex_lock(&S.mu);
        for (int j = 0; j < 8; j++)
            if (S.cur[j] != NULL)
                ctx_cancel(S.cur[j]);
        pthread_mutex_unlock(&S.mu);
        check_sleep_ns(CTX_MILLISECOND);
    }
    for (int i = 0; i < 8; i++) {
        for (;;) {
            /* Keep cancelling whatever is current until the thread ends. */
            pthread_mutex_lock(&S.mu);
            for (int j = 0; j < 8; j++)
                if (S.cur[j] != NULL)
                    ctx_cancel(S.cur[j]);
            pthread_mutex_unlock(&S.mu);
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 10 * 1000 * 1000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            if (pthread_timedjoin_np(t[i], NULL, &ts) == 0)
                break;
        }
    }
    /* Drain connections the acceptor left in the queue. */
    fprintf(stderr, "dialed/accepted %ld, ended by the context or refused %ld\n",
            atomic_load(&S.dialed), atomic_load(&S.canceled));
    CHECK(atomic_load(&S.dialed) > 0);
    CHECK(atomic_load(&S.canceled) > 0);
    close(S.listener);
    CHECK_LE_INT(io_fd_count(), before);
    for (int i = 0; i < 8; i++)
        close(fill[i]);
    close(full);
}

int main(void)
{
    RUN_TEST(test_connects);
    RUN_TEST(test_refused);
    RUN_TEST(test_backlog_full);
    RUN_TEST(test_concurrent_cancel);
    return 0;
}
