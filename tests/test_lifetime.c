/* SPDX-License-Identifier: MIT */

/*
 * The lifetime rules of the handles a program keeps: they must survive
 * misuse of order that Go makes natural.  Run under AddressSanitizer (make
 * asan) these show that no call here touches freed memory.
 *
 *   - A cancel handle used after its context was freed is a no-op, from
 *     any constructor that gives one, also when a new context took the
 *     freed one's memory and handle slot, and also when the free and the
 *     cancel race.  A handle that is never used leaks nothing.
 *   - A peer-close watch whose fd the program closed early is not ended by
 *     the hang-up of a new connection that got the same fd number.
 *   - ETIMEDOUT from the kernel and the context's deadline (also
 *     ETIMEDOUT) are told apart by err == ctx_err(ctx), and
 *     ctx_strerror_of words them differently.
 *   - A group's handle goes stale at ctx_group_wait or ctx_group_abandon:
 *     a second wait is EINVAL; an abandoned group's tasks finish and the
 *     group is freed without anyone waiting.
 */
#include "check.h"

#include <ctx/io.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

/* Every constructor that gives a cancel handle: the context is freed
 * before the handle is used, and the late cancel must do nothing, also to
 * the context that reuses the memory. */
static void cancel_after_free_round(void)
{
    for (int kind = 0; kind < 5; kind++) {
        ctx_cancel_t *h = NULL;
        ctx_t *c = NULL;
        int sv[2] = { -1, -1 };
        static const ctx_custom_ops_t ops = { .name = "custom" };
        ctx_t *parents[2] = { ctx_background(), ctx_todo() };
        switch (kind) {
        case 0:
            c = ctx_with_cancel(ctx_background(), &h);
            break;
        case 1:
            c = ctx_with_timeout(ctx_background(), CTX_HOUR, &h);
            break;
        case 2:
            c = ctx_with_custom(ctx_background(), &ops, NULL, &h);
            break;
        case 3:
            c = ctx_merge(parents, 2, &h);
            break;
        case 4:
            CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
            c = ctx_with_peer_close(ctx_background(), sv[0], &h);
            break;
        }
        CHECK_NOT_NULL(c);
        CHECK_NOT_NULL(h);
        ctx_unref(c); /* freed: Go's `defer cancel()` runs after this */
        ctx_cancel(h);
        ctx_cancel_cause(h, EIO, "late");

        /* The next context of the same kind takes the freed memory and,
         * from this thread's free list, the same handle slot. */
        ctx_cancel_t *h2;
        ctx_t *c2 = ctx_with_cancel(ctx_background(), &h2);
        CHECK_NOT_NULL(c2);
        ctx_cancel(h);
        CHECK_NOT_DONE(c2);
        ctx_cancel(h2);
        CHECK_CANCELED(c2);
        ctx_unref(c2);
        ctx_cancel(h2);
        if (sv[0] >= 0) {
            close(sv[0]);
            close(sv[1]);
        }
    }
}

static void test_cancel_after_free(void)
{
    /* The first round makes what the library keeps once made (the timer
     * structures, the peer-close watcher's table); the second must leave
     * nothing: handles need no release. */
    cancel_after_free_round();
    long live0 = check_alloc_live();
    cancel_after_free_round();
    CHECK_EQ_INT(check_alloc_live(), live0);
}

/* A forgotten cancel leaks nothing: 10,000 contexts made with a handle and
 * freed without a cancel leave no allocation behind (and AddressSanitizer's
 * leak check at exit finds none). */
static void test_forgotten_cancel(void)
{
    long live0 = check_alloc_live();
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(parent);
    for (int i = 0; i < 10000; i++) {
        ctx_cancel_t *h;
        ctx_t *c = (i & 1) ? ctx_with_cancel(parent, &h) : ctx_with_timeout(parent, CTX_HOUR, &h);
        CHECK_NOT_NULL(c);
        ctx_unref(c);
    }
    ctx_cancel(pc);
    ctx_unref(parent);
    CHECK_EQ_INT(check_alloc_live(), live0);
}

/* Go's pattern: the context goes to a thread that drops it whenever it is
 * done, while the creator's deferred cancel runs whenever the creator
 * returns.  The two race; whichever order they take, nothing is touched
 * after the free, and a cancel that comes first is seen by the thread. */
struct race {
    ctx_t *c;
    check_latch_t go;
    atomic_int saw_done;
};

static void *drop_it(void *arg)
{
    struct race *r = arg;
    check_latch_wait(&r->go);
    if (ctx_err(r->c) != 0)
        atomic_fetch_add(&r->saw_done, 1);
    ctx_unref(r->c);
    return NULL;
}

static void test_cancel_races_free(void)
{
    long rounds = check_scale(3000);
    for (long i = 0; i < rounds; i++) {
        struct race r;
        ctx_cancel_t *h;
        r.c = ctx_with_cancel(ctx_background(), &h);
        CHECK_NOT_NULL(r.c);
        check_latch_init(&r.go);
        atomic_init(&r.saw_done, 0);
        pthread_t t;
        check_thread_start(&t, drop_it, &r);
        check_latch_open(&r.go);
        ctx_cancel(h); /* before, during or after the free */
        check_thread_join(t);
        ctx_cancel(h); /* certainly after */
        check_latch_destroy(&r.go);
    }
}

static int ok_task(ctx_t *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

/* A task that waits until its group's context is cancelled: it shows that
 * an abandoned group is cancelled and that its tasks still finish. */
static int wait_task(ctx_t *ctx, void *arg)
{
    CHECK_EQ_INT(ctx_wait(ctx, CTX_FOREVER), CTX_CANCELED);
    atomic_fetch_add((atomic_int *)arg, 1);
    return EIO;
}

static void test_group_wait_twice(void)
{
    atomic_int ran = 0;
    ctx_t *gc;
    ctx_group_t *g = ctx_group_new(ctx_background(), &gc);
    CHECK_NOT_NULL(g);
    CHECK_EQ_INT(ctx_group_go(g, ok_task, &ran), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_EQ_INT(atomic_load(&ran), 1);
    /* The group is freed; its handle is stale, not dangling. */
    CHECK_EQ_INT(ctx_group_wait(g, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_go(g, ok_task, &ran), EINVAL);
    CHECK_EQ_INT(ctx_group_try_go(g, ok_task, &ran), EINVAL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 1), EINVAL);
    CHECK_EQ_INT(ctx_group_abandon(g), EINVAL);
    CHECK_CANCELED(gc);
    ctx_unref(gc);
    /* A new group may take the freed one's slot; the old handle does not
     * reach it. */
    ctx_group_t *g2 = ctx_group_new(ctx_background(), NULL);
    CHECK_NOT_NULL(g2);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_wait(g2, NULL), 0);
}

static void test_group_abandon(void)
{
    /* The previous test's last task may still be letting go of its group
     * on a pool thread: wait until every library thread is idle and
     * joined, so that the count below is this test's alone. */
    for (int i = 0; i < 10000 && ctx_shutdown() == EBUSY; i++)
        check_sleep_ns(CTX_MILLISECOND);
    long live0 = check_alloc_live();
    atomic_int ran = 0;
    ctx_t *gc;
    ctx_group_t *g = ctx_group_new(ctx_background(), &gc);
    CHECK_NOT_NULL(g);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(ctx_group_go(g, wait_task, &ran), 0);
    CHECK_EQ_INT(ctx_group_abandon(g), 0); /* returns at once */
    CHECK_CANCELED(gc);
    const char *file, *func;
    CHECK(ctx_cancel_site(gc, &file, NULL, &func));
    CHECK_STR(func, "ctx_group_abandon");
    CHECK_EQ_INT(ctx_group_wait(g, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_abandon(g), EINVAL);
    /* The tasks see the cancel and end; the last one frees the group. */
    CHECK(check_wait_flag(&ran, 4, 10 * CTX_SECOND));
    ctx_unref(gc);
    for (int i = 0; i < 1000 && check_alloc_live() != live0; i++)
        check_sleep_ns(CTX_MILLISECOND); /* the last task's thread lets go */
    CHECK_EQ_INT(check_alloc_live(), live0);
}

/* The old request's fd is closed while its context lives; the number goes
 * to a new connection, watched too, whose peer hangs up.  Only the new
 * context ends. */
static void test_peer_close_fd_reuse(void)
{
    int a[2], b[2], c[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
    ctx_t *old = ctx_with_peer_close(ctx_background(), a[0], NULL);
    CHECK_NOT_NULL(old);
    int num = a[0];
    close(a[0]); /* the program is done with the socket, not the context */
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
    if (b[0] != num) {
        /* The lowest free number is reused: make b[0] take it. */
        CHECK_EQ_INT(dup2(b[0], num), num);
        close(b[0]);
        b[0] = num;
    }
    ctx_t *young = ctx_with_peer_close(ctx_background(), b[0], NULL);
    CHECK_NOT_NULL(young);
    close(b[1]); /* the new connection's peer hangs up */
    CHECK_EQ_INT(ctx_wait(young, 10 * CTX_SECOND), CTX_CANCELED);
    CHECK_DONE(young, CTX_CANCELED, ECONNRESET, "client disconnected");

    /* The watcher handles one batch of events at a time: once a later
     * hang-up has been acted on, the batch with b's has been finished. */
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, c), 0);
    ctx_t *probe = ctx_with_peer_close(ctx_background(), c[0], NULL);
    CHECK_NOT_NULL(probe);
    close(c[1]);
    CHECK_EQ_INT(ctx_wait(probe, 10 * CTX_SECOND), CTX_CANCELED);
    CHECK_NOT_DONE(old);

    /* The old request still ends with its parent, and frees cleanly. */
    ctx_unref(probe);
    ctx_unref(young);
    ctx_unref(old);
    close(c[0]);
    close(b[0]);
    close(a[1]);
}

/* A loopback TCP connection whose receiver never reads, with small
 * buffers, so that a writer soon stalls on a zero window.  user_ms > 0
 * sets the writer's TCP_USER_TIMEOUT: the kernel then aborts the stalled
 * connection with ETIMEDOUT. */
static void stalled_pair(int *writer, int *reader, int user_ms)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(l >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    CHECK_EQ_INT(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ_INT(listen(l, 1), 0);
    CHECK_EQ_INT(getsockname(l, (struct sockaddr *)&a, &al), 0);
    int w = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(w >= 0);
    int small = 4096;
    CHECK_EQ_INT(setsockopt(w, SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    if (user_ms > 0)
        CHECK_EQ_INT(setsockopt(w, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_ms, sizeof user_ms), 0);
    CHECK_EQ_INT(connect(w, (struct sockaddr *)&a, sizeof a), 0);
    int r = accept(l, NULL, NULL);
    CHECK(r >= 0);
    CHECK_EQ_INT(setsockopt(r, SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    close(l);
    *writer = w;
    *reader = r;
}

static void test_kernel_timeout_vs_deadline(void)
{
    static char buf[1 << 20];
    int w, r;

    /* The kernel's timeout: the context (whose deadline is far) lives. */
    stalled_pair(&w, &r, 300);
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, &h);
    CHECK_NOT_NULL(c);
    int err = ctx_write_all(c, w, buf, sizeof buf, NULL); /* returns the code */
    CHECK_EQ_INT(err, ETIMEDOUT);
    CHECK_EQ_INT(ctx_err(c), 0); /* so: not the context's deadline */
    CHECK_STR(ctx_strerror_of(c, err), strerror(ETIMEDOUT));
    ctx_cancel(h);
    ctx_unref(c);
    close(w);
    close(r);

    /* The context's deadline: same errno, told apart by ctx_err. */
    stalled_pair(&w, &r, 0);
    c = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    err = ctx_write_all(c, w, buf, sizeof buf, NULL);
    CHECK_EQ_INT(err, CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_err(c), err); /* so: the context's deadline */
    CHECK_STR(ctx_strerror_of(c, err), "context deadline exceeded");
    ctx_unref(c);
    close(w);
    close(r);
}

int main(void)
{
    check_alloc_install();
    RUN_TEST(test_cancel_after_free);
    RUN_TEST(test_forgotten_cancel);
    RUN_TEST(test_cancel_races_free);
    RUN_TEST(test_peer_close_fd_reuse);
    RUN_TEST(test_kernel_timeout_vs_deadline);
    RUN_TEST(test_group_wait_twice);
    RUN_TEST(test_group_abandon);
    return 0;
}
