/* SPDX-License-Identifier: MIT */

/*
 * Allocation and thread-creation failure at every site of groups, merges,
 * signal contexts, cancel sites and tracking: each failing call reports a
 * clear error, leaves its parents and the process as they were, and leaks
 * nothing; a task that cannot start never runs and the group stays usable.
 */
#include "check.h"

#include <signal.h>

/* The library's thread starter for the pool and the signal thread
 * (internal: the tests link the static library). */
extern int (*ctx__sc_thread_start)(void *(*fn)(void *), size_t stack);
static int (*real_start)(void *(*fn)(void *), size_t stack);
static int no_thread(void *(*fn)(void *), size_t stack)
{
    (void)fn;
    (void)stack;
    return EAGAIN;
}

/* Blocks the library's groups may still hold for a moment after
 * ctx_group_wait (a pool thread drops the last reference): await them. */
static void await_live(long want)
{
    ctx_time_t end = check_mono_now() + 60 * CTX_SECOND;
    while (check_alloc_live() != want && check_mono_now() < end)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK_EQ_INT(check_alloc_live(), want);
}

static atomic_int ran;
static int task(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return 0;
}

static void test_group_new(void)
{
    long base = check_alloc_live();
    int points = 0;
    for (long n = 0;; n++) {
        check_alloc_fail_at(n, false);
        ctx_t *gc = (ctx_t *)1;
        ctx_group_t *g = ctx_group_new(ctx_background(), &gc);
        check_alloc_fail_none();
        if (g != NULL) {
            CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
            ctx_unref(gc);
            break;
        }
        CHECK_EQ_INT(errno, ENOMEM);
        CHECK_NULL(gc);
        CHECK_EQ_INT(check_alloc_live(), base);
        points++;
    }
    await_live(base);
    CHECK(points >= 2);
}

static void test_group_go(void)
{
    long base = check_alloc_live();
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    atomic_store(&ran, 0);
    int started = 0, refused = 0;
    for (int i = 0; i < 50; i++) {
        check_alloc_fail_at(i % 2 == 0 ? 0 : 5, false);
        int e = ctx_group_go(g, task, NULL);
        check_alloc_fail_none();
        if (e == 0)
            started++;
        else {
            CHECK_EQ_INT(e, ENOMEM);
            refused++;
        }
    }
    CHECK(refused > 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0); /* refusals are not failures */
    CHECK_EQ_INT(atomic_load(&ran), started);
    await_live(base);
}

static atomic_int blocked;

static int blocker(ctx_t *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add(&blocked, 1);
    check_latch_wait(arg);
    return 0;
}

/* With every pool thread blocked, a new task needs a new thread. */
static void test_no_thread_for_task(void)
{
    long base = check_alloc_live();
    check_latch_t l;
    check_latch_init(&l);
    ctx_group_t *busy = ctx_group_new(ctx_background(), NULL);
    /* More blockers than there can be idle threads left from before. */
    atomic_store(&blocked, 0);
    for (int i = 0; i < 64; i++)
        CHECK_EQ_INT(ctx_group_go(busy, blocker, &l), 0);
    /* Each started the next thread as it took its task: once all are
     * blocked, no thread is left looking. */
    ctx_time_t until = check_mono_now() + 60 * CTX_SECOND;
    while (atomic_load(&blocked) < 64 && check_mono_now() < until)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK_EQ_INT(atomic_load(&blocked), 64);
    ctx__sc_thread_start = no_thread;
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    atomic_store(&ran, 0);
    int refused = 0, ok = 0;
    for (int i = 0; i < 200; i++) {
        int e = ctx_group_go(g, task, NULL);
        if (e == EAGAIN)
            refused++;
        else {
            CHECK_EQ_INT(e, 0);
            ok++;
        }
    }
    ctx__sc_thread_start = real_start;
    CHECK(refused > 0);
    /* The group is consistent: it runs tasks again and waits. */
    CHECK_EQ_INT(ctx_group_go(g, task, NULL), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_EQ_INT(atomic_load(&ran), ok + 1);
    check_latch_open(&l);
    CHECK_EQ_INT(ctx_group_wait(busy, NULL), 0);
    check_latch_destroy(&l);
    await_live(base);
}

static int callbacks_of(ctx_t *c)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    check_alloc_fail_none();
    CHECK_EQ_INT(ctx_dump(c, f), 0);
    fclose(f);
    const char *p = strstr(s, "callbacks=");
    int r = p != NULL ? atoi(p + 10) : 0;
    free(s);
    return r;
}

static void test_merge(void)
{
    ctx_cancel_t *ha;
    ctx_t *a = ctx_with_cancel(ctx_background(), &ha);
    ctx_t *b = ctx_with_cancel(ctx_background(), NULL);
    long base = check_alloc_live();
    ctx_t *ps[3] = { a, b, a };
    int points = 0;
    for (long n = 0;; n++) {
        check_alloc_fail_at(n, false);
        ctx_t *m = ctx_merge(ps, 3, NULL);
        check_alloc_fail_none();
        if (m != NULL) {
            ctx_unref(m);
            break;
        }
        CHECK_EQ_INT(errno, ENOMEM);
        CHECK_EQ_INT(check_alloc_live(), base);
        CHECK_EQ_INT(callbacks_of(b), 0);
        points++;
    }
    /* n parents, one allocation. */
    CHECK_EQ_INT(points, 1);
    CHECK_EQ_INT(check_alloc_live(), base);
    ctx_cancel(ha);
    ctx_unref(a);
    ctx_unref(b);
}

static void test_signals(void)
{
    struct sigaction before, after;
    sigaction(SIGUSR1, NULL, &before);
    /* Warm up: the signal thread, its pipe and the message block stay. */
    int sigs[] = { SIGUSR1 };
    ctx_unref(ctx_with_signals(ctx_background(), sigs, 1, NULL));
    long base = check_alloc_live();
    int points = 0;
    for (long n = 0;; n++) {
        check_alloc_fail_at(n, false);
        ctx_t *c = ctx_with_signals(ctx_background(), sigs, 1, NULL);
        check_alloc_fail_none();
        if (c != NULL) {
            ctx_unref(c);
            break;
        }
        CHECK_EQ_INT(errno, ENOMEM);
        CHECK_EQ_INT(check_alloc_live(), base);
        sigaction(SIGUSR1, NULL, &after);
        CHECK(after.sa_handler == before.sa_handler);
        points++;
    }
    CHECK(points >= 2);
    /* A signal never seen before needs its message block: refused too. */
    int sigs2[] = { SIGUSR2 };
    check_alloc_fail_at(2, true);
    ctx_t *c = ctx_with_signals(ctx_background(), sigs2, 1, NULL);
    check_alloc_fail_none();
    CHECK_NULL(c);
    CHECK_EQ_INT(errno, ENOMEM);
    sigaction(SIGUSR2, NULL, &after);
    CHECK(after.sa_handler == SIG_DFL);
    CHECK_EQ_INT(check_alloc_live(), base);
}

static void test_cancel_site_without_memory(void)
{
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    check_alloc_fail_at(0, true);
    int line = __LINE__ + 1;
    ctx_cancel_cause(h, EIO, "no room for this text");
    check_alloc_fail_none();
    CHECK_DONE(c, CTX_CANCELED, EIO, strerror(EIO));
    const char *f;
    int l;
    CHECK(ctx_cancel_site(c, &f, &l, NULL));
    CHECK_STR(f, __FILE__);
    CHECK_EQ_INT(l, line);
    ctx_unref(c);
}

static void test_tracking_without_memory(void)
{
    ctx_track(true);
    long base = check_alloc_live();
    /* The node is allocation 0, its record 1 (and the registry's table,
     * the first time). */
    check_alloc_fail_at(1, true);
    errno = 0;
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    check_alloc_fail_none();
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(errno, 0);
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    CHECK_EQ_INT(ctx_dump_all(f), 0);
    fclose(f);
    CHECK_STR(s, ""); /* untracked, and working */
    free(s);
    ctx_unref(c);
    /* A dump that cannot allocate says so and leaks nothing. */
    c = ctx_with_cancel(ctx_background(), NULL);
    long live = check_alloc_live();
    f = fopen("/dev/null", "w");
    check_alloc_fail_at(0, true);
    CHECK_EQ_INT(ctx_dump_all(f), ENOMEM);
    check_alloc_fail_none();
    fclose(f);
    CHECK_EQ_INT(check_alloc_live(), live);
    ctx_unref(c);
    ctx_track(false);
    CHECK(check_alloc_live() <= base);
}

int main(void)
{
    check_alloc_install();
    real_start = ctx__sc_thread_start;
    RUN_TEST(test_group_new);
    RUN_TEST(test_group_go);
    RUN_TEST(test_no_thread_for_task);
    RUN_TEST(test_merge);
    RUN_TEST(test_signals);
    RUN_TEST(test_cancel_site_without_memory);
    RUN_TEST(test_tracking_without_memory);
    return 0;
}
