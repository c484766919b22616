/* SPDX-License-Identifier: MIT */

/*
 * ctx_with_peer_close over TCP loopback and AF_UNIX: the context ends with
 * cause ECONNRESET "client disconnected" when the peer closes, never
 * consumes bytes the peer sent (a pipelined request stays readable), stops
 * watching when the context is done for another reason or freed, handles
 * several watches on one fd, and survives many threads creating,
 * cancelling and freeing watches while peers hang up (run under TSan).
 */
#include "io_helpers.h"

#include <dirent.h>
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

#ifdef CTX_TEST_PORTABLE
/* The portable backend's watch set is the library's own table: ask it
 * (an internal function, which the static library lets the test call). */
int ctx__plat_watch_has(int fd);
static int in_epoll(int fd)
{
    return ctx__plat_watch_has(fd);
}
#else
/* Whether an epoll instance of this process (the watcher's: the tests make
 * none) has fd in its interest list, from /proc/self/fdinfo. */
static int in_epoll(int fd)
{
    DIR *d = opendir("/proc/self/fd");
    CHECK_NOT_NULL(d);
    int found = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && !found) {
        char path[320], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = 0;
        if (strcmp(link, "anon_inode:[eventpoll]") != 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/fdinfo/%s", de->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        char line[256];
        while (fgets(line, sizeof line, f) != NULL) {
            int t;
            if (sscanf(line, "tfd: %d", &t) == 1 && t == fd)
                found = 1;
        }
        fclose(f);
    }
    closedir(d);
    return found;
}
#endif

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
    CHECK(in_epoll(sv));
    ctx_unref(e); /* freed while live */
    ctx_cancel(pc);
    ctx_cancel(cc);
    CHECK_CANCELED(a);
    CHECK_CANCELED(b);
    CHECK_EQ_INT(ctx_wait(d, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK(in_epoll(sv)); /* f still watches */
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

    /* The last watch of an fd leaves epoll as soon as its context is done,
     * by cancel, by an ancestor or by a deadline, or freed: before the
     * owner, seeing it done, may close the fd. */
    io_tcp_pair(&cl, &sv);
    for (int how = 0; how < 4; how++) {
        ctx_cancel_t *own, *anc;
        ctx_t *parent = ctx_with_cancel(ctx_background(), &anc);
        ctx_t *tp2 = ctx_with_timeout(parent, how == 2 ? CTX_MILLISECOND : CTX_HOUR, NULL);
        ctx_t *w = ctx_with_peer_close(tp2, sv, &own);
        CHECK_NOT_NULL(w);
        CHECK(in_epoll(sv));
        if (how == 0)
            ctx_cancel(own);
        else if (how == 1)
            ctx_cancel(anc);
        else if (how == 2)
            CHECK_EQ_INT(ctx_wait(w, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
        else
            ctx_unref(w);
        if (how != 3)
            CHECK(ctx_err(w) != 0);
        CHECK_MSG(!in_epoll(sv), "how %d", how); /* while w may still live */
        if (how != 3)
            ctx_unref(w);
        ctx_cancel(anc);
        ctx_unref(tp2);
        ctx_unref(parent);
    }
    close(cl);
    close(sv);
}

/* An AfterFunc of a watched context runs on a callback thread, never on
 * the watcher: one that blocks until another client hangs up (here: until
 * the second context is done) would otherwise stop all watching, and the
 * second context would never end.  The last reference dropped by the
 * watcher is freed there too, with the destroy hook off the watcher. */
struct block_arg {
    ctx_t *other;
    _Atomic int ran, returned;
};

static void block_until_other(void *arg)
{
    struct block_arg *b = arg;
    atomic_store(&b->ran, 1);
    ctx_wait(b->other, 10 * CTX_SECOND);
    atomic_store(&b->returned, ctx_err(b->other) != 0 ? 1 : -1);
}

static void test_callback_off_watcher(void)
{
    int cl1, sv1, cl2, sv2;
    io_tcp_pair(&cl1, &sv1);
    io_tcp_pair(&cl2, &sv2);
    ctx_t *c1 = ctx_with_peer_close(ctx_background(), sv1, NULL);
    ctx_t *c2 = ctx_with_peer_close(ctx_background(), sv2, NULL);
    CHECK_NOT_NULL(c1);
    CHECK_NOT_NULL(c2);
    struct block_arg b = { .other = c2 };
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(c1, block_until_other, &b, &stop), 0);
    close(cl1);
    CHECK_PEER_GONE(c1);
    for (int i = 0; i < 10000 && !atomic_load(&b.ran); i++)
        usleep(1000);
    CHECK(atomic_load(&b.ran));
    close(cl2);
    CHECK_PEER_GONE(c2);
    CHECK(!ctx_after_stop(stop)); /* waits for the callback to return */
    CHECK_EQ_INT(atomic_load(&b.returned), 1);
    ctx_unref(c1);
    ctx_unref(c2);
    close(sv1);
    close(sv2);
}

/* An owner that closes its socket before ending the context (the fd must
 * stay open until then, but this is an easy mistake), while another
 * connection gets the same fd number and is watched: the new connection's
 * hang-up is still seen. */
static void test_closed_early_and_reused(void)
{
    /* A number far above what the calls here allocate, so that only the
     * dup3 calls below put a socket there. */
    const int num = 200;
    int cl1, tmp;
    io_tcp_pair(&cl1, &tmp);
    int sv1 = dup3(tmp, num, O_CLOEXEC);
    CHECK_EQ_INT(sv1, num);
    close(tmp);
    ctx_cancel_t *cancel1;
    ctx_t *c1 = ctx_with_peer_close(ctx_background(), sv1, &cancel1);
    CHECK_NOT_NULL(c1);
    close(sv1); /* too early: c1 still watches */
    int cl2;
    io_tcp_pair(&cl2, &tmp);
    int sv2 = dup3(tmp, num, O_CLOEXEC); /* the number a new accept could get */
    CHECK_EQ_INT(sv2, num);
    close(tmp);
    ctx_t *c2 = ctx_with_peer_close(ctx_background(), sv2, NULL);
    CHECK_NOT_NULL(c2);
    CHECK_EQ_INT(ctx_wait(c2, 50 * CTX_MILLISECOND), 0);
    close(cl2);
    CHECK_PEER_GONE(c2);
    ctx_cancel(cancel1);
    ctx_unref(c1);
    ctx_unref(c2);
    close(sv2);
    close(cl1);
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
    RUN_TEST(test_callback_off_watcher);
    RUN_TEST(test_closed_early_and_reused);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_no_fd_per_watch);
    RUN_TEST(test_churn);
    RUN_TEST(test_fork);
    return 0;
}
