/* SPDX-License-Identifier: MIT */

/*
 * The timer structures behind deadlines (src/core/timer.c): a hierarchical timing
 * wheel per shard, whose slots cascade down as time reaches them, and a
 * sorted due list for the next fraction of a millisecond.  test_clock
 * checks firing order on a few thousand deadlines; this test reaches every
 * level of the wheel and the paths between them:
 *   - deadlines from nanoseconds to years ahead (and the end of time), made
 *     on several threads (so in several shards), fire exactly when the
 *     manual clock reaches them, in deadline order, never early, never
 *     twice, whether the clock moves by nanoseconds or by days;
 *   - timers cancelled or freed while they sit at any level never fire,
 *     and their removal leaves the others intact;
 *   - switching between the manual and the real clock with deadlines
 *     pending keeps every one of them;
 *   - on the real clock, a burst of deadlines spread over a few hundred
 *     milliseconds fires completely and never early.
 */
#include "check.h"

#include <stdlib.h>

#define NTHREADS 4

struct tmr {
    ctx_time_t deadline;
    ctx_t *c;
    ctx_cancel_t *cancel;
    ctx_after_t *stop;
    int freed;
    int stopped; /* cancelled or freed by the test: must not fire */
    int fired;
    ctx_time_t fired_at;
};

static struct tmr *tms;
static int ntms;
static ctx_time_t last_fired = INT64_MIN;
static long order_errors;

static void on_fire(void *arg)
{
    struct tmr *t = arg;
    if (ctx_err(t->c) == CTX_CANCELED)
        return; /* the test cancelled it: its callback runs then */
    t->fired++;
    t->fired_at = ctx_now();
    /* Deadlines fire in order under the manual clock: never an earlier
     * deadline after a later one. */
    if (t->deadline < last_fired)
        order_errors++;
    last_fired = t->deadline;
}

/* A deadline `ahead` of `now`, spread over magnitudes: each of 0..62 bits
 * equally likely, so every level of the wheel gets entries. */
static ctx_time_t pick(check_rng_t *r, ctx_time_t now)
{
    unsigned bits = check_rng_below(r, 56);
    /* At least 1 ns ahead: none is born done (its callback would run on
     * the making thread, beside the others). */
    ctx_duration_t d = 1 + (ctx_duration_t)(check_rng_next(r) & ((((uint64_t)1) << bits) - 1));
    if (check_rng_below(r, 200) == 0)
        return INT64_MAX; /* the end of time */
    return now > INT64_MAX - d ? INT64_MAX : now + d;
}

struct maker {
    int from, to;
    uint64_t seed;
};

static void *make_main(void *arg)
{
    struct maker *m = arg;
    check_rng_t r = check_rng_make(m->seed);
    for (int i = m->from; i < m->to; i++) {
        struct tmr *t = &tms[i];
        t->deadline = pick(&r, ctx_now());
        t->c = ctx_with_deadline(ctx_background(), t->deadline, &t->cancel);
        CHECK_NOT_NULL(t->c);
        /* Odd ones keep a stop handle, so that the test can free them. */
        CHECK_EQ_INT(ctx_after_func(t->c, on_fire, t, i % 2 ? &t->stop : NULL), 0);
    }
    return NULL;
}

/* Every timer with a deadline at or before now has fired exactly once at
 * its deadline (unless stopped); every later one has not. */
static void check_state(void)
{
    ctx_time_t now = ctx_now();
    for (int i = 0; i < ntms; i++) {
        struct tmr *t = &tms[i];
        if (t->stopped) {
            CHECK_EQ_INT(t->fired, 0);
            if (!t->freed)
                CHECK_CANCELED(t->c);
            continue;
        }
        if (t->deadline <= now) {
            CHECK_MSG(t->fired == 1, "timer %d (deadline %lld, now %lld) fired %d times", i,
                      (long long)t->deadline, (long long)now, t->fired);
            CHECK_EQ_INT(t->fired_at, t->deadline);
            CHECK_EQ_INT(ctx_err(t->c), CTX_DEADLINE_EXCEEDED);
        } else {
            CHECK_MSG(t->fired == 0, "timer %d fired early (deadline %lld, now %lld)", i,
                      (long long)t->deadline, (long long)now);
            CHECK_EQ_INT(ctx_err(t->c), 0);
        }
    }
    CHECK_EQ_INT(order_errors, 0);
}

static void test_manual_levels(void)
{
    check_rng_t r = check_rng_make(check_seed());
    ntms = (int)check_scale(20000);
    tms = calloc((size_t)ntms, sizeof *tms);
    CHECK_NOT_NULL(tms);
    CHECK_EQ_INT(ctx_clock_manual(CTX_SECOND), 0);

    pthread_t th[NTHREADS];
    struct maker mk[NTHREADS];
    for (int k = 0; k < NTHREADS; k++) {
        mk[k] =
            (struct maker){ ntms * k / NTHREADS, ntms * (k + 1) / NTHREADS, check_rng_next(&r) };
        check_thread_start(&th[k], make_main, &mk[k]);
    }
    for (int k = 0; k < NTHREADS; k++)
        check_thread_join(th[k]);

    /* Advance in steps of every magnitude, stopping or freeing a few
     * pending timers on the way, until the clock is past every finite
     * deadline that could be reached. */
    int steps = 0;
    while (ctx_now() < INT64_MAX / 2 && steps < 4000) {
        for (int j = 0; j < 3; j++) {
            int i = (int)check_rng_below(&r, (unsigned)ntms);
            struct tmr *t = &tms[i];
            if (t->stopped || ctx_err(t->c) != 0)
                continue;
            t->stopped = 1;
            if (j == 0 || i % 2 == 0) {
                ctx_cancel(t->cancel);
            } else {
                /* Freed while pending: its timer leaves with it. */
                CHECK(ctx_after_stop(t->stop));
                t->stop = NULL;
                ctx_unref(t->c);
                t->freed = 1;
            }
        }
        unsigned bits = check_rng_below(&r, 48);
        ctx_duration_t d = (ctx_duration_t)(check_rng_next(&r) & ((((uint64_t)1) << bits) - 1));
        CHECK_EQ_INT(ctx_clock_advance(d), 0);
        check_state();
        steps++;
    }
    /* A jump to the end of time fires the rest, end-of-time ones included. */
    CHECK_EQ_INT(ctx_clock_advance(INT64_MAX), 0);
    CHECK_EQ_INT(ctx_now(), INT64_MAX);
    check_state();
    for (int i = 0; i < ntms; i++) {
        if (tms[i].stop != NULL)
            CHECK(!ctx_after_stop(tms[i].stop)); /* it ran */
        if (!tms[i].freed)
            ctx_unref(tms[i].c);
    }
    free(tms);
    tms = NULL;
}

/* Deadlines pending across clock switches are kept. */
static void test_switch(void)
{
    CHECK_EQ_INT(ctx_clock_manual(0), 0);
    ntms = 300;
    tms = calloc((size_t)ntms, sizeof *tms);
    CHECK_NOT_NULL(tms);
    for (int i = 0; i < ntms; i++) {
        struct tmr *t = &tms[i];
        /* From 1 ms to about 5 minutes on the manual clock. */
        t->deadline = (ctx_time_t)(i + 1) * CTX_MILLISECOND * (i % 7 == 0 ? 1000 : 1);
        t->c = ctx_with_deadline(ctx_background(), t->deadline, &t->cancel);
        CHECK_NOT_NULL(t->c);
    }
    CHECK_EQ_INT(ctx_clock_advance(50 * CTX_MILLISECOND), 0);
    for (int i = 0; i < ntms; i++)
        CHECK_EQ_INT(ctx_err(tms[i].c),
                     tms[i].deadline <= 50 * CTX_MILLISECOND ? CTX_DEADLINE_EXCEEDED : 0);
    /* Back and forth: the manual clock again, then further. */
    CHECK_EQ_INT(ctx_clock_manual(100 * CTX_MILLISECOND), 0);
    for (int i = 0; i < ntms; i++)
        CHECK_EQ_INT(ctx_err(tms[i].c),
                     tms[i].deadline <= 50 * CTX_MILLISECOND ? CTX_DEADLINE_EXCEEDED : 0);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    for (int i = 0; i < ntms; i++)
        CHECK_EQ_INT(ctx_err(tms[i].c),
                     tms[i].deadline <= 1100 * CTX_MILLISECOND ? CTX_DEADLINE_EXCEEDED : 0);
    /* Real clock: its instants are far past these deadlines, so every
     * pending one comes due at once, on the timer thread. */
    ctx_clock_real();
    for (int i = 0; i < ntms; i++)
        CHECK_EQ_INT(ctx_wait(tms[i].c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    for (int i = 0; i < ntms; i++)
        ctx_unref(tms[i].c);
    free(tms);
    tms = NULL;
}

/* The real clock: a burst over 300 ms, with far timers that are cancelled
 * in between; every near one fires, none early. */
static _Atomic long early, fired_real;

static void on_real(void *arg)
{
    ctx_time_t d = *(ctx_time_t *)arg;
    if (ctx_now() < d)
        atomic_fetch_add(&early, 1);
    atomic_fetch_add(&fired_real, 1);
}

static void test_real_burst(void)
{
    check_rng_t r = check_rng_make(check_seed() + 1);
    int n = (int)check_scale(20000);
    ctx_time_t *dl = calloc((size_t)n, sizeof *dl);
    ctx_t **far = calloc((size_t)n, sizeof *far);
    ctx_cancel_t **farc = calloc((size_t)n, sizeof *farc);
    CHECK(dl != NULL && far != NULL && farc != NULL);
    ctx_time_t base = ctx_now() + 20 * CTX_MILLISECOND;
    for (int i = 0; i < n; i++) {
        dl[i] = base + (ctx_time_t)check_rng_below(&r, 300 * 1000) * 1000;
        ctx_t *c = ctx_with_deadline(ctx_background(), dl[i], NULL);
        CHECK_NOT_NULL(c);
        CHECK_EQ_INT(ctx_after_func(c, on_real, &dl[i], NULL), 0);
        ctx_unref(c);
        /* A far one (seconds to hours) in the same shard, cancelled soon. */
        ctx_duration_t d = CTX_SECOND << check_rng_below(&r, 13);
        far[i] = ctx_with_timeout(ctx_background(), d, &farc[i]);
        CHECK_NOT_NULL(far[i]);
    }
    for (int i = 0; i < n; i++) {
        ctx_cancel(farc[i]);
        ctx_unref(far[i]);
    }
    ctx_time_t give_up = ctx_now() + 60 * CTX_SECOND;
    while (atomic_load(&fired_real) < n && ctx_now() < give_up)
        check_sleep_ns(5 * CTX_MILLISECOND);
    CHECK_EQ_INT(atomic_load(&fired_real), n);
    CHECK_EQ_INT(atomic_load(&early), 0);
    free(dl);
    free(far);
    free(farc);
}

int main(void)
{
    RUN_TEST(test_manual_levels);
    RUN_TEST(test_switch);
    RUN_TEST(test_real_burst);
    return 0;
}
