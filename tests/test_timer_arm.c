/* SPDX-License-Identifier: MIT */

/*
 * Arming a deadline (src/core/timer.c): a timeout reads the clock once and
 * its insert starts an empty shard's wheel at that reading; an insert that
 * uses a new wheel slot, or becomes the first due entry, lowers the
 * shard's published time to its own, which the timer thread and the
 * manual clock trust to find work.  So every arrangement here must fire
 * exactly on time:
 *   - a timeout made on a shard emptied by a cancel, whose published time
 *     is still the cancelled timer's;
 *   - a near deadline made beside a far one, and an earlier one made in
 *     the slot of a later one;
 *   - a deadline that lands in the due list (before the wheel's base);
 *   - on the real clock, many threads (more than there are shards, so
 *     they share them) arming, cancelling and waiting on short timeouts:
 *     each fires, never early.
 */
#include "check.h"

#include <pthread.h>

static void check_deadline_is(ctx_t *c, ctx_time_t want)
{
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    CHECK_MSG(d == want, "deadline %lld, want %lld", (long long)d, (long long)want);
}

/* Advances the manual clock to just before c's deadline (c must still be
 * pending), then to it (c must be done). */
static void check_fires_at(ctx_t *c)
{
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    ctx_time_t now = ctx_now();
    CHECK(d > now);
    CHECK_EQ_INT(ctx_clock_advance(d - now - 1), 0);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_clock_advance(1), 0);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
}

static void test_manual(void)
{
    const ctx_time_t t0 = 1000 * CTX_SECOND;
    CHECK_EQ_INT(ctx_clock_manual(t0), 0);

    /* A far timer armed and cancelled leaves the shard empty, its
     * published time the far one's. */
    ctx_cancel_t *cc;
    ctx_t *far = ctx_with_timeout(ctx_background(), CTX_HOUR, &cc);
    CHECK_NOT_NULL(far);
    check_deadline_is(far, t0 + CTX_HOUR); /* the one reading: the manual now */
    ctx_cancel(cc);
    ctx_unref(far);

    /* A near one made there must lower it. */
    ctx_t *near = ctx_with_timeout(ctx_background(), 5 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(near);
    check_deadline_is(near, t0 + 5 * CTX_MILLISECOND);
    check_fires_at(near);
    ctx_unref(near);

    /* A pending far one, then a near one beside it. */
    far = ctx_with_timeout(ctx_background(), 2 * CTX_HOUR, &cc);
    CHECK_NOT_NULL(far);
    near = ctx_with_timeout(ctx_background(), 2 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(near);
    check_fires_at(near);
    CHECK_NOT_DONE(far);
    ctx_unref(near);

    /* Two in one slot, the later made first: the earlier fires first. */
    ctx_t *later = ctx_with_timeout(ctx_background(), 10 * CTX_MILLISECOND, NULL);
    ctx_t *earlier = ctx_with_timeout(ctx_background(), 10 * CTX_MILLISECOND - 1, NULL);
    CHECK_NOT_NULL(later);
    CHECK_NOT_NULL(earlier);
    check_fires_at(earlier);
    CHECK_NOT_DONE(later);
    check_fires_at(later);
    ctx_unref(earlier);
    ctx_unref(later);

    /* The wheel's base runs ahead of the clock by the due list's horizon:
     * a deadline a few microseconds away goes into the due list, as its
     * first entry. */
    ctx_t *soon = ctx_with_timeout(ctx_background(), 3 * CTX_MICROSECOND, NULL);
    CHECK_NOT_NULL(soon);
    check_fires_at(soon);
    ctx_unref(soon);
    /* And one after it, behind a pending first entry. */
    ctx_t *first = ctx_with_timeout(ctx_background(), 7 * CTX_MICROSECOND, NULL);
    ctx_t *second = ctx_with_timeout(ctx_background(), 9 * CTX_MICROSECOND, NULL);
    CHECK_NOT_NULL(first);
    CHECK_NOT_NULL(second);
    check_fires_at(first);
    CHECK_NOT_DONE(second);
    check_fires_at(second);
    ctx_unref(first);
    ctx_unref(second);

    ctx_cancel(cc);
    ctx_unref(far);
    ctx_clock_real();
}

#define NTHREADS 12 /* more than the timer's shards */
#define ROUNDS   40

static void *arm_main(void *arg)
{
    check_rng_t r = check_rng_make((uint64_t)(uintptr_t)arg);
    for (int i = 0; i < ROUNDS; i++) {
        /* Empty this thread's shard of our own timers, leaving a stale
         * far time published. */
        ctx_cancel_t *cc;
        ctx_t *far = ctx_with_timeout(ctx_background(), CTX_HOUR, &cc);
        CHECK_NOT_NULL(far);
        ctx_cancel(cc);
        ctx_unref(far);

        ctx_duration_t to = (ctx_duration_t)(1 + check_rng_below(&r, 8)) * CTX_MILLISECOND;
        ctx_t *c = ctx_with_timeout(ctx_background(), to, &cc);
        CHECK_NOT_NULL(c);
        ctx_time_t d;
        CHECK(ctx_deadline(c, &d));
        if (check_rng_below(&r, 4) == 0) {
            ctx_cancel(cc);
            CHECK_CANCELED(c);
        } else {
            /* Generous: the machine may be loaded; only "fires" and
             * "never early" are this test's claims. */
            CHECK_EQ_INT(ctx_wait(c, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
            ctx_time_t now = ctx_now();
            CHECK_MSG(now >= d, "fired %lld ns early", (long long)(d - now));
            ctx_cancel(cc);
        }
        ctx_unref(c);
    }
    return NULL;
}

static void test_real_threads(void)
{
    pthread_t t[NTHREADS];
    uint64_t seed = check_seed();
    for (int i = 0; i < NTHREADS; i++)
        CHECK_EQ_INT(pthread_create(&t[i], NULL, arm_main, (void *)(uintptr_t)(seed + (uint64_t)i)),
                     0);
    for (int i = 0; i < NTHREADS; i++)
        CHECK_EQ_INT(pthread_join(t[i], NULL), 0);
}

int main(void)
{
    test_manual();
    test_real_threads();
    return 0;
}
