/* SPDX-License-Identifier: MIT */

/*
 * The manual test clock: ctx_clock_manual(), ctx_clock_advance(),
 * ctx_clock_real(), and ctx_time_from_wall().  What Go gets from
 * testing/synctest, checked here the way Go's deadline tests would be if
 * time could be driven by hand:
 *   - thousands of random deadlines fire exactly when the clock reaches
 *     them, in deadline order, each seeing ctx_now() equal to its deadline,
 *     on the advancing thread, before ctx_clock_advance() returns; none
 *     fires early, none fires twice, cancelled and freed ones never fire;
 *   - timed waits (ctx_wait, ctx_sleep) on another thread measure their
 *     timeouts on the manual clock and end only when it is advanced;
 *   - argument errors (EINVAL, EPERM) and the way back to the real clock.
 *
 * The manual clock is switched on first thing in main, before any deadline
 * exists, as the header asks.
 */
#include "check.h"

#define START (1 * CTX_SECOND)

static pthread_t main_thread;

/* Advances to exactly t (t >= ctx_now()). */
static void advance_to(ctx_time_t t)
{
    ctx_time_t now = ctx_now();
    CHECK(t >= now);
    CHECK_EQ_INT(ctx_clock_advance(t - now), 0);
    CHECK_EQ_INT(ctx_now(), t);
}

/* ---------------------------------------------------------------------------
 * Basics
 */

static void test_basics(void)
{
    ctx_time_t t0 = ctx_now();
    CHECK_EQ_INT(t0, START);
    check_sleep_ns(5 * CTX_MILLISECOND);
    CHECK_EQ_INT(ctx_now(), t0); /* the manual clock does not move by itself */

    CHECK_EQ_INT(ctx_clock_advance(-1), EINVAL);
    CHECK_EQ_INT(ctx_clock_advance(INT64_MIN), EINVAL);
    CHECK_EQ_INT(ctx_now(), t0);
    CHECK_EQ_INT(ctx_clock_advance(0), 0);
    CHECK_EQ_INT(ctx_now(), t0);
    CHECK_EQ_INT(ctx_clock_advance(7), 0);
    CHECK_EQ_INT(ctx_now(), t0 + 7);

    /* A 1 ns timeout does not end in real time, only when advanced. */
    ctx_t *c = ctx_with_timeout(ctx_background(), 1, NULL);
    CHECK_NOT_NULL(c);
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    CHECK_EQ_INT(d, t0 + 8);
    check_sleep_ns(20 * CTX_MILLISECOND); /* room for a wrong real-time fire */
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_wait(c, 0), 0);
    CHECK_EQ_INT(ctx_clock_advance(1), 0);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    CHECK_EQ_INT(ctx_wait(c, CTX_FOREVER), CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);

    /* At or before now: born done, on the manual clock too. */
    c = ctx_with_deadline(ctx_background(), ctx_now(), NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);
    c = ctx_with_timeout(ctx_background(), 0, NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);

    /* ctx_wait(ctx, 0) polls without advancing anything. */
    c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    ctx_time_t before = ctx_now();
    CHECK_EQ_INT(ctx_wait(c, 0), 0);
    CHECK_EQ_INT(ctx_sleep(c, 0), 0);
    CHECK_EQ_INT(ctx_now(), before);
    ctx_unref(c);
}

/* ---------------------------------------------------------------------------
 * Thousands of random deadlines
 */

struct item {
    int idx;
    ctx_t *ctx;
    ctx_time_t deadline;
    int cause; /* expected cause when the deadline fires */
    bool cancelled;
};

struct logent {
    int idx;
    ctx_time_t now;
    int err, cause;
    long step;
    bool on_main;
};

static struct logent *log_;
static atomic_int nlog;
static atomic_long cur_step;
static atomic_int *fired_count;

static void record_fn(void *arg)
{
    struct item *it = arg;
    int k = atomic_fetch_add(&nlog, 1);
    log_[k].idx = it->idx;
    log_[k].now = ctx_now();
    log_[k].err = ctx_err(it->ctx);
    log_[k].cause = ctx_cause(it->ctx, NULL);
    log_[k].step = atomic_load(&cur_step);
    log_[k].on_main = pthread_equal(pthread_self(), main_thread) != 0;
    atomic_fetch_add(&fired_count[it->idx], 1);
}

static int cmp_deadline(const void *a, const void *b)
{
    const struct item *x = *(const struct item *const *)a;
    const struct item *y = *(const struct item *const *)b;
    if (x->deadline != y->deadline)
        return x->deadline < y->deadline ? -1 : 1;
    return x->idx - y->idx;
}

static void test_random_deadlines(void)
{
    int n = (int)check_scale(10000);
    int nfree = n / 10;
    check_rng_t rng = check_rng_make(check_seed() ^ 0xc10c);
    struct item *items = calloc((size_t)n, sizeof *items);
    struct item **sorted = calloc((size_t)n, sizeof *sorted);
    ctx_cancel_t **cancels = calloc((size_t)n, sizeof *cancels);
    log_ = calloc((size_t)n, sizeof *log_);
    fired_count = calloc((size_t)n, sizeof *fired_count);
    CHECK(items && sorted && cancels && log_ && fired_count);
    atomic_store(&nlog, 0);

    ctx_time_t base = ctx_now();
    for (int i = 0; i < n; i++) {
        /* Few distinct values, so that many deadlines are equal; some with
         * odd nanoseconds. */
        ctx_duration_t t = (ctx_duration_t)(check_rng_below(&rng, 2000) + 1) * CTX_MILLISECOND;
        if (check_rng_below(&rng, 4) == 0)
            t += check_rng_below(&rng, 1000);
        struct item *it = &items[i];
        it->idx = i;
        switch (i % 4) {
        case 0:
            it->ctx = ctx_with_timeout(ctx_background(), t, &cancels[i]);
            it->cause = CTX_DEADLINE_EXCEEDED;
            break;
        case 1:
            it->ctx = ctx_with_deadline(ctx_background(), base + t, &cancels[i]);
            it->cause = CTX_DEADLINE_EXCEEDED;
            break;
        case 2:
            it->ctx = ctx_with_timeout_cause(ctx_background(), t, ETIME, "slow", &cancels[i]);
            it->cause = ETIME;
            break;
        default:
            it->ctx = ctx_with_deadline_cause(ctx_background(), base + t, EPIPE, NULL, &cancels[i]);
            it->cause = EPIPE;
            break;
        }
        CHECK_NOT_NULL(it->ctx);
        CHECK(ctx_deadline(it->ctx, &it->deadline));
        CHECK_EQ_INT(it->deadline, base + t); /* the clock did not move */
        CHECK_EQ_INT(ctx_after_func(it->ctx, record_fn, it, NULL), 0);
    }
    /* Timers freed without cancel must never be visited. */
    for (int i = 0; i < nfree; i++) {
        ctx_t *c = ctx_with_timeout(
            ctx_background(), (ctx_duration_t)(check_rng_below(&rng, 2000) + 1) * CTX_MILLISECOND,
            NULL);
        CHECK_NOT_NULL(c);
        ctx_unref(c);
    }
    CHECK_EQ_INT(atomic_load(&nlog), 0); /* nothing fired while creating */

    /* Cancel one in ten by hand: its callback runs now, with CANCELED. */
    atomic_store(&cur_step, -1);
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (check_rng_below(&rng, 10) == 0) {
            items[i].cancelled = true;
            ctx_cancel(cancels[i]);
            CHECK_EQ_INT(atomic_load(&fired_count[i]), 1);
            CHECK_CANCELED(items[i].ctx);
        } else {
            sorted[m++] = &items[i];
        }
    }
    int ncancelled = n - m;
    CHECK_EQ_INT(atomic_load(&nlog), ncancelled);
    for (int k = 0; k < ncancelled; k++) {
        CHECK_EQ_INT(log_[k].err, CTX_CANCELED);
        CHECK(log_[k].on_main);
        CHECK_EQ_INT(log_[k].now, base);
    }
    qsort(sorted, (size_t)m, sizeof *sorted, cmp_deadline);

    /* Advance in random steps until every deadline has passed. */
    int pos = 0;
    long step = 0;
    ctx_time_t last_fired = base;
    while (pos < m) {
        ctx_time_t now = ctx_now();
        ctx_time_t next = sorted[pos]->deadline;
        ctx_duration_t d;
        switch (check_rng_below(&rng, 10)) {
        case 0:
            d = 0;
            break;
        case 1:
        case 2:
            d = next - now; /* exactly onto the next deadline */
            break;
        case 3:
            d = next - now > 0 ? next - now - 1 : 0; /* one short of it */
            break;
        case 4:
            d = (ctx_duration_t)check_rng_below(&rng, 500) * CTX_MILLISECOND;
            break;
        default:
            d = (ctx_duration_t)check_rng_below(&rng, 30000) * CTX_MICROSECOND;
            break;
        }
        step++;
        atomic_store(&cur_step, step);
        int before = atomic_load(&nlog);
        CHECK_EQ_INT(ctx_clock_advance(d), 0);
        ctx_time_t target = now + d;
        CHECK_EQ_INT(ctx_now(), target);
        int after = atomic_load(&nlog);

        int newpos = pos;
        while (newpos < m && sorted[newpos]->deadline <= target)
            newpos++;
        CHECK_MSG(after - before == newpos - pos,
                  "step %ld to %lld: %d callbacks ran, %d deadlines were due", step,
                  (long long)target, after - before, newpos - pos);
        for (int k = before; k < after; k++) {
            struct logent *e = &log_[k];
            struct item *it = &items[e->idx];
            CHECK(!it->cancelled);
            CHECK_EQ_INT(atomic_load(&fired_count[e->idx]), 1);
            CHECK_EQ_INT(e->step, step); /* ran inside this advance */
            CHECK(e->on_main);
            CHECK_EQ_INT(e->err, CTX_DEADLINE_EXCEEDED);
            CHECK_EQ_INT(e->cause, it->cause);
            CHECK_MSG(e->now == it->deadline, "callback saw now %lld, deadline %lld",
                      (long long)e->now, (long long)it->deadline);
            CHECK(it->deadline > now && it->deadline <= target);
            CHECK_MSG(it->deadline >= last_fired, "out of order: %lld after %lld",
                      (long long)it->deadline, (long long)last_fired);
            last_fired = it->deadline;
        }
        /* What is not due yet is not done. */
        for (int k = newpos; k < m && k < newpos + 8; k++)
            CHECK_NOT_DONE(sorted[k]->ctx);
        pos = newpos;
    }
    CHECK_EQ_INT(atomic_load(&nlog), n);

    /* Far past every deadline: nothing more runs, the cancelled stay
     * cancelled. */
    CHECK_EQ_INT(ctx_clock_advance(10 * CTX_SECOND), 0);
    CHECK_EQ_INT(atomic_load(&nlog), n);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(atomic_load(&fired_count[i]), 1);
        if (items[i].cancelled)
            CHECK_CANCELED(items[i].ctx);
        else
            CHECK_EQ_INT(ctx_err(items[i].ctx), CTX_DEADLINE_EXCEEDED);
        ctx_unref(items[i].ctx);
    }
    fprintf(stderr, "   %d deadlines (%d cancelled) over %ld steps\n", n, ncancelled, step);
    free(items);
    free(sorted);
    free(cancels);
    free(log_);
    free(fired_count);
    log_ = NULL;
}

/* ---------------------------------------------------------------------------
 * Trees and callbacks that make deadlines
 */

struct seen {
    atomic_int ran;
    ctx_t *ctx;
    ctx_time_t now;
    int err;
    bool on_main;
};

static void seen_fn(void *arg)
{
    struct seen *s = arg;
    s->now = ctx_now();
    s->err = ctx_err(s->ctx);
    s->on_main = pthread_equal(pthread_self(), main_thread) != 0;
    atomic_fetch_add(&s->ran, 1);
}

static void test_nested(void)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_time_t t0 = ctx_now();
    ctx_t *p = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(p);
    ctx_t *v = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *clamped = ctx_with_timeout(v, 200 * CTX_MILLISECOND, NULL); /* the parent's */
    CHECK_NOT_NULL(clamped);
    ctx_t *early = ctx_with_timeout(v, 40 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(early);
    struct seen sp = { 0 }, sc = { 0 }, se = { 0 };
    sp.ctx = p;
    sc.ctx = clamped;
    se.ctx = early;
    CHECK_EQ_INT(ctx_after_func(p, seen_fn, &sp, NULL), 0);
    CHECK_EQ_INT(ctx_after_func(clamped, seen_fn, &sc, NULL), 0);
    CHECK_EQ_INT(ctx_after_func(early, seen_fn, &se, NULL), 0);

    CHECK_EQ_INT(ctx_clock_advance(39 * CTX_MILLISECOND), 0);
    CHECK_EQ_INT(atomic_load(&se.ran), 0);
    CHECK_NOT_DONE(early);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    CHECK_EQ_INT(atomic_load(&se.ran), 1);
    CHECK_EQ_INT(atomic_load(&sp.ran), 1);
    CHECK_EQ_INT(atomic_load(&sc.ran), 1);
    CHECK_EQ_INT(se.now, t0 + 40 * CTX_MILLISECOND);
    CHECK_EQ_INT(sp.now, t0 + 100 * CTX_MILLISECOND);
    CHECK_EQ_INT(sc.now, t0 + 100 * CTX_MILLISECOND);
    CHECK(se.on_main && sp.on_main && sc.on_main);
    CHECK_EQ_INT(se.err, CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(sp.err, CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(sc.err, CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_now(), t0 + 39 * CTX_MILLISECOND + CTX_SECOND);
    ctx_unref(early);
    ctx_unref(clamped);
    ctx_unref(v);
    ctx_unref(p);

    /* A cancelled timer never fires, even when its deadline passes. */
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_SECOND, &cancel);
    CHECK_NOT_NULL(c);
    struct seen s = { 0 };
    s.ctx = c;
    CHECK_EQ_INT(ctx_after_func(c, seen_fn, &s, NULL), 0);
    ctx_cancel(cancel);
    CHECK_EQ_INT(atomic_load(&s.ran), 1);
    CHECK_EQ_INT(s.err, CTX_CANCELED);
    CHECK_EQ_INT(ctx_clock_advance(2 * CTX_SECOND), 0);
    CHECK_EQ_INT(atomic_load(&s.ran), 1);
    CHECK_CANCELED(c);
    ctx_unref(c);

    /* A stopped callback never runs. */
    c = ctx_with_timeout(ctx_background(), CTX_SECOND, NULL);
    CHECK_NOT_NULL(c);
    struct seen s2 = { 0 };
    s2.ctx = c;
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(c, seen_fn, &s2, &stop), 0);
    CHECK(ctx_after_stop(stop));
    CHECK_EQ_INT(ctx_clock_advance(2 * CTX_SECOND), 0);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(atomic_load(&s2.ran), 0);
    ctx_unref(c);
}

/* A callback that makes the next deadline: each one that falls due within
 * the same advance fires in it, at its own time. */
struct chain {
    int n, max;
    ctx_time_t at[16];
    ctx_t *ctxs[16];
};

static void chain_fn(void *arg)
{
    struct chain *ch = arg;
    ch->at[ch->n] = ctx_now();
    ch->n++;
    if (ch->n < ch->max) {
        ctx_t *c = ctx_with_timeout(ctx_background(), CTX_MILLISECOND, NULL);
        CHECK_NOT_NULL(c);
        ch->ctxs[ch->n] = c;
        CHECK_EQ_INT(ctx_after_func(c, chain_fn, ch, NULL), 0);
    }
}

static void test_callback_makes_deadline(void)
{
    struct chain ch = { 0, 10, { 0 }, { 0 } };
    ctx_time_t t0 = ctx_now();
    ch.ctxs[0] = ctx_with_timeout(ctx_background(), CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(ch.ctxs[0]);
    CHECK_EQ_INT(ctx_after_func(ch.ctxs[0], chain_fn, &ch, NULL), 0);
    CHECK_EQ_INT(ctx_clock_advance(5 * CTX_MILLISECOND + CTX_MILLISECOND / 2), 0);
    CHECK_EQ_INT(ch.n, 5);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    CHECK_EQ_INT(ch.n, 10);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ_INT(ch.at[i], t0 + (i + 1) * CTX_MILLISECOND);
        ctx_unref(ch.ctxs[i]);
    }
}

/* ---------------------------------------------------------------------------
 * Timed waits on another thread
 */

enum wait_kind { W_WAIT, W_SLEEP, W_WAIT_FOREVER };

struct sleeper {
    ctx_t *ctx;
    enum wait_kind kind;
    ctx_duration_t d;
    ctx_time_t t0, t1;
    int r;
    long tid;
    atomic_int done;
    check_latch_t ready;
};

static void *sleeper_main(void *arg)
{
    struct sleeper *s = arg;
    s->tid = check_gettid();
    s->t0 = ctx_now();
    check_latch_open(&s->ready);
    switch (s->kind) {
    case W_WAIT:
        s->r = ctx_wait(s->ctx, s->d);
        break;
    case W_SLEEP:
        s->r = ctx_sleep(s->ctx, s->d);
        break;
    case W_WAIT_FOREVER:
        s->r = ctx_wait(s->ctx, CTX_FOREVER);
        break;
    }
    s->t1 = ctx_now();
    atomic_store(&s->done, 1);
    return NULL;
}

static void sleeper_start(struct sleeper *s, pthread_t *t, ctx_t *c, enum wait_kind kind,
                          ctx_duration_t d)
{
    s->ctx = c;
    s->kind = kind;
    s->d = d;
    s->r = -1;
    atomic_store(&s->done, 0);
    check_latch_init(&s->ready);
    check_thread_start(t, sleeper_main, s);
    check_latch_wait(&s->ready);
    /* Makes it likely the sleeper blocks before the clock moves; if it does
     * not, the loop in expect_timeout() still gets it out. */
    check_wait_sleeping(s->tid, 2000);
}

static void sleeper_join(struct sleeper *s, pthread_t t)
{
    CHECK_MSG(check_wait_flag(&s->done, 1, 30 * CTX_SECOND), "the sleeper never woke");
    check_thread_join(t);
    check_latch_destroy(&s->ready);
}

/* A timed wait of d on another thread ends only once the clock has moved d
 * past the moment it began, and returns 0. */
static void expect_timeout(ctx_t *c, enum wait_kind kind, ctx_duration_t d)
{
    struct sleeper s;
    pthread_t t;
    sleeper_start(&s, &t, c, kind, d);
    /* Up to one nanosecond short of it: still asleep. */
    advance_to(s.t0 + d - 1);
    check_sleep_ns(20 * CTX_MILLISECOND); /* room for a wrong early wake-up */
    CHECK_MSG(atomic_load(&s.done) == 0, "woke before its timeout (r=%d)", s.r);
    CHECK_EQ_INT(ctx_clock_advance(1), 0);
    /* If the sleeper measured from a later instant (it had not reached its
     * wait yet), each further advance gives it another chance. */
    for (int i = 0; i < 10 && !check_wait_flag(&s.done, 1, 2 * CTX_SECOND); i++)
        CHECK_EQ_INT(ctx_clock_advance(d), 0);
    sleeper_join(&s, t);
    CHECK_EQ_INT(s.r, 0);
    CHECK_MSG(s.t1 - s.t0 >= d, "returned after %lld of %lld ns", (long long)(s.t1 - s.t0),
              (long long)d);
}

/* A wait woken by cancel from the main thread returns the err at once,
 * without the clock moving. */
static void expect_cancel(enum wait_kind kind, ctx_duration_t d, bool through_parent)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *v = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(v, &cc);
    CHECK_NOT_NULL(c);
    ctx_t *w = ctx_with_value(c, &key, NULL, NULL);
    CHECK_NOT_NULL(w);

    struct sleeper s;
    pthread_t t;
    sleeper_start(&s, &t, w, kind, d);
    ctx_time_t before = ctx_now();
    CHECK_EQ_INT(atomic_load(&s.done), 0);
    ctx_cancel_cause(through_parent ? pc : cc, EPIPE, "gone");
    sleeper_join(&s, t);
    CHECK_EQ_INT(s.r, CTX_CANCELED);
    CHECK_EQ_INT(ctx_now(), before);
    ctx_unref(w);
    ctx_unref(c);
    ctx_unref(v);
    ctx_unref(p);
}

static void test_timed_waits(void)
{
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    expect_timeout(c, W_WAIT, 5 * CTX_SECOND);
    expect_timeout(c, W_SLEEP, CTX_MINUTE);
    expect_timeout(c, W_WAIT, 1);
    CHECK_NOT_DONE(c);
    ctx_unref(c);

    /* On a root, and on a value over a root. */
    static const ctx_key_t key = { .name = "k" };
    expect_timeout(ctx_background(), W_WAIT, 3 * CTX_SECOND);
    expect_timeout(ctx_todo(), W_SLEEP, 2 * CTX_SECOND);
    ctx_t *v = ctx_with_value(ctx_background(), &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    expect_timeout(v, W_SLEEP, 4 * CTX_SECOND);
    ctx_unref(v);

    /* Cancelled while waiting: its own cancel and an ancestor's. */
    expect_cancel(W_WAIT, CTX_HOUR, false);
    expect_cancel(W_WAIT, CTX_HOUR, true);
    expect_cancel(W_SLEEP, CTX_HOUR, false);
    expect_cancel(W_SLEEP, CTX_HOUR, true);
    expect_cancel(W_WAIT_FOREVER, 0, false);
    expect_cancel(W_WAIT_FOREVER, 0, true);
}

/* A wait on a deadline context ends when the clock reaches the deadline,
 * with CTX_DEADLINE_EXCEEDED, whether its own timeout is longer or it waits
 * for ever. */
static void test_wait_for_deadline(void)
{
    enum wait_kind kinds[] = { W_WAIT, W_SLEEP, W_WAIT_FOREVER };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
        CHECK_NOT_NULL(c);
        ctx_time_t d;
        CHECK(ctx_deadline(c, &d));
        struct sleeper s;
        pthread_t t;
        sleeper_start(&s, &t, c, kinds[k], CTX_HOUR);
        advance_to(d - 1);
        check_sleep_ns(20 * CTX_MILLISECOND); /* room for a wrong early wake-up */
        CHECK_EQ_INT(atomic_load(&s.done), 0);
        CHECK_EQ_INT(ctx_clock_advance(1), 0);
        sleeper_join(&s, t);
        CHECK_EQ_INT(s.r, CTX_DEADLINE_EXCEEDED);
        CHECK(s.t1 >= d);
        ctx_unref(c);
    }

    /* A timed wait shorter than the context's deadline times out first. */
    ctx_t *c = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    CHECK_NOT_NULL(c);
    expect_timeout(c, W_WAIT, CTX_SECOND);
    CHECK_NOT_DONE(c);
    ctx_unref(c);
}

/* ---------------------------------------------------------------------------
 * Wall-clock conversion
 */

static void test_time_from_wall(void)
{
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    ctx_time_t now = ctx_now();
    struct timespec w = rt;
    w.tv_sec += 3600;
    ctx_time_t t = ctx_time_from_wall(&w);
    /* The manual clock stands still; only the real time that passed
     * between the two readings of the wall clock can shift the result. */
    CHECK_MSG(t <= now + CTX_HOUR && t > now + CTX_HOUR - CTX_SECOND, "got now%+lld ns",
              (long long)(t - now));
    w = rt;
    w.tv_sec -= 3600;
    t = ctx_time_from_wall(&w);
    CHECK(t <= now - CTX_HOUR && t > now - CTX_HOUR - CTX_SECOND);
    CHECK_EQ_INT(ctx_time_from_wall(NULL), ctx_now());

    /* Nanoseconds count. */
    w = rt;
    w.tv_sec += 10;
    w.tv_nsec = 0;
    ctx_time_t a = ctx_time_from_wall(&w);
    w.tv_nsec = 500000000;
    ctx_time_t b = ctx_time_from_wall(&w);
    CHECK(b - a > CTX_SECOND / 2 - CTX_SECOND / 10 && b - a <= CTX_SECOND / 2);

    if (sizeof(time_t) >= 8) {
        /* Far away: saturates. */
        w.tv_sec = (time_t)(INT64_MAX / 2);
        CHECK_EQ_INT(ctx_time_from_wall(&w), INT64_MAX);
        w.tv_sec = (time_t)(INT64_MIN / 2);
        CHECK_EQ_INT(ctx_time_from_wall(&w), INT64_MIN);
        w.tv_sec = (time_t)INT64_MAX;
        w.tv_nsec = 999999999;
        CHECK_EQ_INT(ctx_time_from_wall(&w), INT64_MAX);
        w.tv_sec = (time_t)INT64_MIN;
        w.tv_nsec = 0;
        CHECK_EQ_INT(ctx_time_from_wall(&w), INT64_MIN);
    } else {
        /* A 32-bit time_t (i386) reaches only 1901 and 2038, well inside
         * ctx_time_t's range: the ends convert without saturating. */
        w.tv_sec = (time_t)INT32_MAX;
        w.tv_nsec = 0;
        ctx_time_t t32 = ctx_time_from_wall(&w);
        CHECK(t32 > ctx_now() + 10 * 365 * 24 * CTX_HOUR && t32 != INT64_MAX);
        w.tv_sec = (time_t)INT32_MIN;
        t32 = ctx_time_from_wall(&w);
        CHECK(t32 < ctx_now() - 100 * 365 * 24 * CTX_HOUR && t32 != INT64_MIN);
    }

    /* As a deadline: fires when the manual clock gets there. */
    w = rt;
    w.tv_sec += 2;
    ctx_t *c = ctx_with_deadline(ctx_background(), ctx_time_from_wall(&w), NULL);
    CHECK_NOT_NULL(c);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);
}

/* ---------------------------------------------------------------------------
 * Back to the real clock (last: it ends the manual clock for the process).
 * The tests above keep the manual clock within a few minutes of START, so
 * that a deadline can lie ahead of the manual clock and behind the real
 * one (CLOCK_MONOTONIC counts from boot).
 */

static void test_clock_real(void)
{
    ctx_time_t mnow = ctx_now();
    ctx_time_t real = check_mono_now();
    bool can_test_due = real - mnow > 2 * CTX_SECOND;

    /* A deadline ahead on the manual clock but already behind on the real
     * one, and one an hour ahead of both. */
    ctx_t *due = NULL;
    struct seen sd = { 0 };
    if (can_test_due) {
        due = ctx_with_deadline(ctx_background(), mnow + (real - mnow) / 2, NULL);
        CHECK_NOT_NULL(due);
        CHECK_NOT_DONE(due);
        sd.ctx = due;
        CHECK_EQ_INT(ctx_after_func(due, seen_fn, &sd, NULL), 0);
    } else {
        fprintf(stderr, "   (the real clock is too close to the manual one to test due "
                        "deadlines)\n");
    }
    ctx_t *far = ctx_with_deadline(ctx_background(), (real > mnow ? real : mnow) + CTX_HOUR, NULL);
    CHECK_NOT_NULL(far);

    ctx_clock_real();
    ctx_time_t now = ctx_now();
    CHECK(now >= real);
    CHECK(now < real + CTX_MINUTE);
    CHECK_EQ_INT(ctx_clock_advance(1), EPERM);
    CHECK_EQ_INT(ctx_clock_advance(0), EPERM);
    CHECK_EQ_INT(ctx_clock_advance(-1), EINVAL);

    if (due != NULL) {
        CHECK_EQ_INT(ctx_wait(due, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
        CHECK(check_wait_flag(&sd.ran, 1, 10 * CTX_SECOND));
        CHECK_EQ_INT(sd.err, CTX_DEADLINE_EXCEEDED);
        CHECK(!sd.on_main); /* a library thread fires real deadlines */
        ctx_unref(due);
    }
    CHECK_NOT_DONE(far);
    ctx_unref(far);

    /* Real deadlines and timed waits work again. */
    ctx_t *c = ctx_with_timeout(ctx_background(), 30 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_time_t t0 = check_mono_now();
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK(check_mono_now() - t0 >= 29 * CTX_MILLISECOND);
    ctx_unref(c);
    t0 = check_mono_now();
    CHECK_EQ_INT(ctx_sleep(ctx_background(), 20 * CTX_MILLISECOND), 0);
    CHECK(check_mono_now() - t0 >= 20 * CTX_MILLISECOND);

    /* ctx_time_from_wall now follows the real clock. */
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    now = ctx_now();
    rt.tv_sec += 3600;
    ctx_time_t t = ctx_time_from_wall(&rt);
    CHECK(t > now + CTX_HOUR - CTX_SECOND && t < now + CTX_HOUR + CTX_SECOND);
}

int main(void)
{
    main_thread = pthread_self();
    /* Before any deadline exists. */
    CHECK_EQ_INT(ctx_clock_manual(START), 0);
    check_seed();
    RUN_TEST(test_basics);
    RUN_TEST(test_random_deadlines);
    RUN_TEST(test_nested);
    RUN_TEST(test_callback_makes_deadline);
    RUN_TEST(test_timed_waits);
    RUN_TEST(test_wait_for_deadline);
    RUN_TEST(test_time_from_wall);
    RUN_TEST(test_clock_real);
    fprintf(stderr, "ok\n");
    return 0;
}
