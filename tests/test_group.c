/* SPDX-License-Identifier: MIT */

/*
 * Groups (errgroup): tasks run on the library's pool, the first failure
 * cancels the group's context and is what ctx_group_wait returns, limits
 * hold, a blocked task delays only its own group, a task can start tasks
 * of its own group, the pool shrinks when idle, bad input gets EINVAL or
 * EBUSY, and a second ctx_group_wait is caught in debug builds.
 */
#include "check.h"

#include <signal.h>
#include <sys/wait.h>

static atomic_int ran;

static int ok_task(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add(&ran, 1);
    return 0;
}

static void test_all_succeed(void)
{
    atomic_store(&ran, 0);
    ctx_t *gc;
    ctx_group_t *g = ctx_group_new(ctx_background(), &gc);
    CHECK_NOT_NULL(g);
    CHECK_NOT_NULL(gc);
    for (int i = 0; i < 200; i++)
        CHECK_EQ_INT(ctx_group_go(g, ok_task, NULL), 0);
    const char *msg = "x";
    CHECK_EQ_INT(ctx_group_wait(g, &msg), 0);
    CHECK_NULL(msg);
    CHECK_EQ_INT(atomic_load(&ran), 200);
    /* Wait cancels the group's context, plainly. */
    CHECK_CANCELED(gc);
    const char *fn;
    CHECK(ctx_cancel_site(gc, NULL, NULL, &fn));
    CHECK_STR(fn, "ctx_group_wait");
    /* ctx_group_new(NULL ctx out) works too. */
    g = ctx_group_new(ctx_background(), NULL);
    CHECK_NOT_NULL(g);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    ctx_unref(gc);
}

/* Waits for the group's context, then reports that it was cancelled. */
static int waits_for_end(ctx_t *ctx, void *arg)
{
    (void)arg;
    atomic_fetch_add(&ran, 1);
    CHECK_EQ_INT(ctx_wait(ctx, 60 * CTX_SECOND), CTX_CANCELED);
    return CTX_CANCELED;
}

static int fails(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    return EPIPE;
}

static void test_first_failure_cancels(void)
{
    atomic_store(&ran, 0);
    ctx_t *gc;
    ctx_group_t *g = ctx_group_new(ctx_background(), &gc);
    CHECK_NOT_NULL(g);
    for (int i = 0; i < 20; i++)
        CHECK_EQ_INT(ctx_group_go(g, waits_for_end, NULL), 0);
    CHECK_EQ_INT(ctx_group_go(g, fails, NULL), 0);
    CHECK_EQ_INT(ctx_wait(gc, 60 * CTX_SECOND), CTX_CANCELED);
    CHECK_DONE(gc, CTX_CANCELED, EPIPE, strerror(EPIPE));
    const char *fn;
    CHECK(ctx_cancel_site(gc, NULL, NULL, &fn));
    CHECK_STR(fn, "ctx_group");
    /* A task submitted now is not started: the group's error instead. */
    int before = atomic_load(&ran);
    CHECK_EQ_INT(ctx_group_go(g, ok_task, NULL), CTX_CANCELED);
    CHECK_EQ_INT(ctx_group_try_go(g, ok_task, NULL), CTX_CANCELED);
    const char *msg;
    CHECK_EQ_INT(ctx_group_wait(g, &msg), EPIPE);
    CHECK_STR(msg, strerror(EPIPE));
    /* The tasks that waited all ran; their CTX_CANCELED came second. */
    CHECK(atomic_load(&ran) >= before);
    ctx_unref(gc);
}

static void test_parent_cancel(void)
{
    ctx_cancel_t *h;
    ctx_t *p = ctx_with_cancel(ctx_background(), &h);
    ctx_t *gc;
    ctx_group_t *g = ctx_group_new(p, &gc);
    CHECK_EQ_INT(ctx_group_go(g, waits_for_end, NULL), 0);
    ctx_cancel(h);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), CTX_CANCELED);
    CHECK_EQ_INT(ctx_group_go(NULL, ok_task, NULL), EINVAL);
    ctx_unref(gc);
    ctx_unref(p);
}

static atomic_int running, max_running;

static int counted(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    int n = atomic_fetch_add(&running, 1) + 1;
    int m = atomic_load(&max_running);
    while (n > m && !atomic_compare_exchange_weak(&max_running, &m, n))
        ;
    check_sleep_ns(200 * CTX_MICROSECOND);
    atomic_fetch_sub(&running, 1);
    return 0;
}

static int blocks_on_latch(ctx_t *ctx, void *arg)
{
    (void)ctx;
    check_latch_wait(arg);
    return 0;
}

static void test_limit(void)
{
    atomic_store(&max_running, 0);
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 3), 0);
    for (int i = 0; i < 60; i++)
        CHECK_EQ_INT(ctx_group_go(g, counted, NULL), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_LE_INT(atomic_load(&max_running), 3);
    CHECK(atomic_load(&max_running) >= 1);

    /* TryGo: EBUSY at the limit; set_limit: EBUSY while tasks are active. */
    check_latch_t l;
    check_latch_init(&l);
    g = ctx_group_new(ctx_background(), NULL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 2), 0);
    CHECK_EQ_INT(ctx_group_try_go(g, blocks_on_latch, &l), 0);
    CHECK_EQ_INT(ctx_group_try_go(g, blocks_on_latch, &l), 0);
    CHECK_EQ_INT(ctx_group_try_go(g, blocks_on_latch, &l), EBUSY);
    CHECK_EQ_INT(ctx_group_set_limit(g, 5), EBUSY);
    CHECK_EQ_INT(ctx_group_set_limit(NULL, 5), EINVAL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 0), EINVAL);
    check_latch_open(&l);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    check_latch_destroy(&l);

    /* No limit again with a negative n. */
    g = ctx_group_new(ctx_background(), NULL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 1), 0);
    CHECK_EQ_INT(ctx_group_set_limit(g, -1), 0);
    check_latch_init(&l);
    for (int i = 0; i < 10; i++)
        CHECK_EQ_INT(ctx_group_try_go(g, blocks_on_latch, &l), 0);
    check_latch_open(&l);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    check_latch_destroy(&l);
}

/* A task that ignores its context blocks its own group's wait only. */
static int ignores_ctx(ctx_t *ctx, void *arg)
{
    (void)ctx;
    check_latch_wait(arg);
    return EIO;
}

static void test_blocked_task_delays_only_its_group(void)
{
    check_latch_t l;
    check_latch_init(&l);
    ctx_group_t *a = ctx_group_new(ctx_background(), NULL);
    CHECK_EQ_INT(ctx_group_go(a, ignores_ctx, &l), 0);
    for (int round = 0; round < 5; round++) {
        atomic_store(&ran, 0);
        ctx_group_t *b = ctx_group_new(ctx_background(), NULL);
        CHECK_EQ_INT(ctx_group_set_limit(b, 2), 0);
        for (int i = 0; i < 50; i++)
            CHECK_EQ_INT(ctx_group_go(b, ok_task, NULL), 0);
        /* Every task runs without ctx_group_wait's help (it runs queued
         * tasks itself, which would hide a pool stuck behind a's task). */
        CHECK_MSG(check_wait_flag(&ran, 50, 30 * CTX_SECOND), "round %d: %d of 50 ran", round,
                  atomic_load(&ran));
        CHECK_EQ_INT(ctx_group_wait(b, NULL), 0);
        CHECK_EQ_INT(atomic_load(&ran), 50);
    }
    check_latch_open(&l);
    CHECK_EQ_INT(ctx_group_wait(a, NULL), EIO);
    check_latch_destroy(&l);
}

/* A task that starts tasks of its own group (a fan-out tree). */
struct tree_arg {
    ctx_group_t *g;
    int depth;
};

static struct tree_arg levels[7]; /* levels[d]: a task with d levels below */

static int fan(ctx_t *ctx, void *arg)
{
    (void)ctx;
    const struct tree_arg *t = arg;
    atomic_fetch_add(&ran, 1);
    if (t->depth == 0)
        return 0;
    CHECK_EQ_INT(ctx_group_go(t->g, fan, &levels[t->depth - 1]), 0);
    CHECK_EQ_INT(ctx_group_go(t->g, fan, &levels[t->depth - 1]), 0);
    return 0;
}

static void test_task_starts_tasks(void)
{
    atomic_store(&ran, 0);
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    for (int d = 0; d < 7; d++)
        levels[d] = (struct tree_arg){ g, d };
    CHECK_EQ_INT(ctx_group_go(g, fan, &levels[6]), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_EQ_INT(atomic_load(&ran), 127); /* 2^7 - 1 */
}

static void test_bad_input(void)
{
    CHECK_NULL(ctx_group_new(NULL, NULL));
    CHECK_EQ_INT(errno, EINVAL);
    ctx_t *gc = (ctx_t *)1;
    CHECK_NULL(ctx_group_new(NULL, &gc));
    CHECK_NULL(gc);
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    CHECK_EQ_INT(ctx_group_go(g, NULL, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_try_go(g, NULL, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_try_go(NULL, ok_task, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_wait(NULL, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
}

/* The pool grows for blocked tasks and shrinks once they are done. */
static void test_pool_grows_and_shrinks(void)
{
    check_latch_t l;
    check_latch_init(&l);
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    for (int i = 0; i < 40; i++)
        CHECK_EQ_INT(ctx_group_go(g, blocks_on_latch, &l), 0);
    /* Each blocked task holds a thread of its own.  Threads start one
     * after another, each by the one before it as it takes its task, so
     * the count is awaited. */
    ctx_time_t until = check_mono_now() + 60 * CTX_SECOND;
    int peak;
    while ((peak = check_thread_count()) < 41 && check_mono_now() < until)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK(peak >= 41);
    check_latch_open(&l);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    check_latch_destroy(&l);
    /* Idle threads exit after about two seconds; allow plenty. */
    ctx_time_t end = check_mono_now() + 60 * CTX_SECOND;
    while (check_thread_count() > peak - 35 && check_mono_now() < end)
        check_sleep_ns(50 * CTX_MILLISECOND);
    CHECK_LE_INT(check_thread_count(), peak - 35);
}

/* 1,000 groups at once, from four threads. */
static void *many_groups(void *arg)
{
    (void)arg;
    ctx_group_t *gs[250];
    for (int i = 0; i < 250; i++) {
        gs[i] = ctx_group_new(ctx_background(), NULL);
        CHECK_NOT_NULL(gs[i]);
        CHECK_EQ_INT(ctx_group_go(gs[i], ok_task, NULL), 0);
        CHECK_EQ_INT(ctx_group_go(gs[i], i % 7 == 0 ? fails : ok_task, NULL), 0);
    }
    for (int i = 0; i < 250; i++)
        CHECK_EQ_INT(ctx_group_wait(gs[i], NULL), i % 7 == 0 ? EPIPE : 0);
    return NULL;
}

static void test_thousand_groups(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        check_thread_start(&t[i], many_groups, NULL);
    for (int i = 0; i < 4; i++)
        check_thread_join(t[i]);
}

/* The handle goes stale when the group is waited for: a second wait is
 * EINVAL in every build, and so is starting a task on the waited group
 * (test_lifetime runs the same under AddressSanitizer). */
static void test_wait_twice(void)
{
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    CHECK_NOT_NULL(g);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_go(g, ok_task, NULL), EINVAL);
    CHECK_EQ_INT(ctx_group_set_limit(g, 2), EINVAL);
}

int main(void)
{
    RUN_TEST(test_wait_twice);
    RUN_TEST(test_all_succeed);
    RUN_TEST(test_first_failure_cancels);
    RUN_TEST(test_parent_cancel);
    RUN_TEST(test_limit);
    RUN_TEST(test_blocked_task_delays_only_its_group);
    RUN_TEST(test_task_starts_tasks);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_thousand_groups);
    RUN_TEST(test_pool_grows_and_shrinks);
    return 0;
}
