/*
 * ctx_with_peer_close over TCP loopback and AF_UNIX: the context ends with
 * cause ECONNRESET "client disconnected" when the peer closes, never
 * consumes bytes the peer sent (a pipelined request stays readable), stops
 * watching when the context is done for another reason or freed, handles
 * several watches on one fd, and survives many threads creating,
 * cancelling and freeing watches while peers hang up (run under TSan).
 */
#include "io_helpers.h"

#include <sys/wait.h>

#if CHECK_TSAN
/* The fork test's child starts the watcher thread; ThreadSanitizer kills a
 * child that starts threads after a multithreaded fork unless told not to
 * (test_fork.c does the same). */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

#if defined(__SANITIZE_ADDRESS__)
#define IO_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IO_ASAN 1
#endif
#endif

#define CHECK_PEER_GONE(c)                                                                         \
    do {                                                                                           \
        CHECK_EQ_INT(ctx_wait((c), 30 * CTX_SECOND), CTX_CANCELED);                                \
        CHECK_DONE((c), CTX_CANCELED, ECONNRESET, "client disconnected");                          \
    } while (0)

static void test_close_and_pipelined_bytes(void)
{
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_peer_close(ctx_background(), sv, &cancel);
    CHECK_NOT_NULL(c);
    CHECK_NOT_NULL(cancel);
    CHECK_NOT_DONE(c);
    char d[64];
    ctx_describe(c, d, sizeof d);
    CHECK(strstr(d, "WithPeerClose") != NULL);
    /* The client sends a pipelined request: nothing ends, nothing is read. */
    CHECK_EQ_INT(write(cl, "GET /a\nGET /b\n", 14), 14);
    CHECK_EQ_INT(ctx_wait(c, 50 * CTX_MILLISECOND), 0);
    close(cl);
    CHECK_PEER_GONE(c);
    char b[32];
    CHECK_EQ_INT(ctx_read_full(ctx_background(), sv, b, 14, NULL), 0);
    CHECK(memcmp(b, "GET /a\nGET /b\n", 14) == 0);
    ctx_unref(c);
    close(sv);
}

/* Half-close (shutdown of the client's writing side) counts as a hang-up,
 * as Go's background read sees EOF; so does an AF_UNIX peer closing. */
static void test_shutdown_and_unix(void)
{
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    ctx_t *c = ctx_with_peer_close(ctx_background(), sv, NULL);
    CHECK_NOT_NULL(c);
    shutdown(cl, SHUT_WR);
    CHECK_PEER_GONE(c);
    ctx_unref(c);
    close(cl);
    close(sv);

    int s[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
    c = ctx_with_peer_close(ctx_background(), s[0], NULL);
    CHECK_NOT_NULL(c);
    close(s[1]);
    CHECK_PEER_GONE(c);
    ctx_unref(c);
    close(s[0]);
}

/* A peer already gone when the watch starts: done promptly.  A parent
 * already done: done at birth with the parent's err, nothing watched. */
static void test_already(void)
{
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    close(cl);
    ctx_t *c = ctx_with_peer_close(ctx_background(), sv, NULL);
    CHECK_NOT_NULL(c);
    CHECK_PEER_GONE(c);
    ctx_unref(c);

    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    ctx_cancel(pc);
    c = ctx_with_peer_close(p, sv, NULL);
    CHECK_NOT_NULL(c);
    CHECK_CANCELED(c);
    ctx_unref(c);
    ctx_unref(p);
    close(sv);
}

/* Done for another reason first (own cancel, ancestor, deadline) or freed
 * while live: the watch ends; a later hang-up changes nothing. */
static void test_done_otherwise(void)
{
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    ctx_cancel_t *pc, *cc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    ctx_t *a = ctx_with_peer_close(p, sv, NULL);
    ctx_t *b = ctx_with_peer_close(ctx_background(), sv, &cc);
    ctx_t *tp = ctx_with_timeout(ctx_background(), 20 * CTX_MILLISECOND, NULL);
    ctx_t *d = ctx_with_peer_close(tp, sv, NULL);
    ctx_t *e = ctx_with_peer_close(ctx_background(), sv, NULL);
    ctx_t *f = ctx_with_peer_close(ctx_background(), sv, NULL);
    CHECK(a && b && d && e && f);
    ctx_unref(e); /* freed while live */
    ctx_cancel(pc);
    ctx_cancel(cc);
    CHECK_CANCELED(a);
    CHECK_CANCELED(b);
    CHECK_EQ_INT(ctx_wait(d, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    close(cl);
    CHECK_PEER_GONE(f); /* the one watch left still works */
    CHECK_CANCELED(a);
    CHECK_CANCELED(b);
    CHECK_EQ_INT(ctx_cause(d, NULL), CTX_DEADLINE_EXCEEDED);
    ctx_unref(a);
    ctx_unref(b);
    ctx_unref(d);
    ctx_unref(tp);
    ctx_unref(f);
    ctx_unref(p);
    close(sv);
}

static void test_bad_input(void)
{
    CHECK_FAILS_WITH(ctx_with_peer_close(NULL, 0, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_with_peer_close(ctx_background(), -1, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_with_peer_close(ctx_background(), 1 << 24, NULL), EBADF);
    int p[2];
    CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
    ctx_cancel_t *cancel = (ctx_cancel_t *)1;
    CHECK_FAILS_WITH(ctx_with_peer_close(ctx_background(), p[0], &cancel), ENOTSOCK);
    CHECK_NULL(cancel);
    close(p[0]);
    close(p[1]);
}

/* The watcher costs no fd per watch: 200 watched connections add exactly
 * their own sockets. */
static void test_no_fd_per_watch(void)
{
    enum { N = 200 };
    int cl[N], sv[N];
    ctx_t *c[N];
    for (int i = 0; i < N; i++)
        io_tcp_pair(&cl[i], &sv[i]);
    int before = io_fd_count();
    for (int i = 0; i < N; i++) {
        c[i] = ctx_with_peer_close(ctx_background(), sv[i], NULL);
        CHECK_NOT_NULL(c[i]);
    }
    CHECK_EQ_INT(io_fd_count(), before);
    for (int i = 0; i < N; i += 2)
        close(cl[i]);
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0)
            CHECK_PEER_GONE(c[i]);
        else
            CHECK_NOT_DONE(c[i]);
    }
    for (int i = 0; i < N; i++) {
        ctx_unref(c[i]);
        if (i % 2)
            close(cl[i]);
        close(sv[i]);
    }
}

/* Threads create, cancel and free watches while the peers close. */
struct churn {
    uint64_t seed;
    int id;
};

static void *churn_main(void *arg)
{
    struct churn *ch = arg;
    check_rng_t rng = check_rng_make(ch->seed + (uint64_t)ch->id);
    long rounds = check_scale(400);
    for (long r = 0; r < rounds; r++) {
        int s[2];
        CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        ctx_cancel_t *pc;
        ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_peer_close(p, s[0], &cancel);
        CHECK_NOT_NULL(c);
        ctx_t *c2 = ctx_with_peer_close(c, s[0], NULL);
        CHECK_NOT_NULL(c2);
        switch (check_rng_below(&rng, 4)) {
        case 0:
            close(s[1]);
            s[1] = -1;
            CHECK_PEER_GONE(c);
            break;
        case 1:
            ctx_cancel(pc);
            break;
        case 2:
            ctx_cancel(cancel);
            close(s[1]);
            s[1] = -1;
            break;
        default:
            close(s[1]); /* race the watcher against the frees below */
            s[1] = -1;
            break;
        }
        ctx_unref(c2);
        ctx_unref(c);
        ctx_unref(p);
        if (s[1] >= 0)
            close(s[1]);
        close(s[0]);
    }
    return NULL;
}

static void test_churn(void)
{
    uint64_t seed = check_seed();
    struct churn ch[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        ch[i].seed = seed;
        ch[i].id = i;
        check_thread_start(&t[i], churn_main, &ch[i]);
    }
    for (int i = 0; i < 4; i++)
        check_thread_join(t[i]);
}

/* fork: the child gets a watcher of its own; the parent's goes on. */
static void test_fork(void)
{
#ifdef IO_ASAN
    /* As in test_fork.c: ASan's allocator is not fork-safe in a
     * multithreaded process, so the child could hang in malloc. */
    fprintf(stderr, "(skipped under AddressSanitizer)\n");
    return;
#endif
    int cl, sv;
    io_tcp_pair(&cl, &sv);
    ctx_t *c = ctx_with_peer_close(ctx_background(), sv, NULL);
    CHECK_NOT_NULL(c);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int s[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s) != 0)
            _exit(2);
        ctx_t *k = ctx_with_peer_close(ctx_background(), s[0], NULL);
        if (k == NULL)
            _exit(3);
        close(s[1]);
        if (ctx_wait(k, 30 * CTX_SECOND) != CTX_CANCELED)
            _exit(4);
        _exit(0);
    }
    int st;
    CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
    CHECK_NOT_DONE(c); /* the parent still holds the client end */
    close(cl);
    CHECK_PEER_GONE(c);
    ctx_unref(c);
    close(sv);
}

int main(void)
{
    RUN_TEST(test_close_and_pipelined_bytes);
    RUN_TEST(test_shutdown_and_unix);
    RUN_TEST(test_already);
    RUN_TEST(test_done_otherwise);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_no_fd_per_watch);
    RUN_TEST(test_churn);
    RUN_TEST(test_fork);
    return 0;
}
