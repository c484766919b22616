/* SPDX-License-Identifier: MIT */

/*
 * fork(2) with live timers.  The child of a multithreaded process gets a
 * copy of the timer heap but none of the library's threads (the timer
 * thread, the callback threads), and every lock some other thread held at
 * the fork stays held for good.  The library's fork handlers must leave
 * the child with working deadlines:
 *   - timers made before the fork still fire in the child (and in the
 *     parent), and their AfterFunc callbacks still run;
 *   - a timeout made in the child fires; cancel works; a grandchild works;
 *   - forking while another thread is creating, firing and cancelling
 *     timeouts in a loop never leaves the child deadlocked.
 * A child that hangs is killed by alarm(), a parent waits for its child
 * with a bound, so a deadlock is reported rather than waited out.
 */
#include "check.h"

#include <signal.h>
#include <sys/wait.h>

#if CHECK_TSAN
/* ThreadSanitizer kills a child that starts threads after a multithreaded
 * fork unless told otherwise; starting threads there is what this file
 * tests. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

#define BOUND_S (CHECK_TSAN ? 20 : 10)
#define BOUND   ((ctx_duration_t)BOUND_S * CTX_SECOND)

/* Waits for pid with a bound; fails (after killing it) if it does not end
 * in time, or ends other than by exit(0). */
static void wait_child(pid_t pid, const char *what)
{
    ctx_time_t end = check_mono_now() + BOUND + 10 * CTX_SECOND;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        CHECK_MSG(r == 0 || (r < 0 && errno == EINTR), "waitpid: %s", strerror(errno));
        if (check_mono_now() > end) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            CHECK_MSG(false, "%s: child %d did not finish (deadlock?)", what, (int)pid);
        }
        check_sleep_ns(CTX_MILLISECOND);
    }
    if (WIFSIGNALED(status))
        CHECK_MSG(false, "%s: child killed by signal %d%s", what, WTERMSIG(status),
                  WTERMSIG(status) == SIGALRM ? " (alarm: it hung)" : "");
    CHECK_MSG(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: child exit status %d", what,
              WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* In a child: ends the process if it hangs. */
static void child_watchdog(void)
{
    signal(SIGALRM, SIG_DFL);
    alarm(BOUND_S + 5);
}

struct probe {
    atomic_int ran;
    ctx_t *ctx;
    int err;
    pthread_t thread;
};

static void probe_fn(void *arg)
{
    struct probe *p = arg;
    p->thread = pthread_self();
    p->err = ctx_err(p->ctx);
    atomic_fetch_add(&p->ran, 1);
}

/* A new timeout fires, on time, and its callback runs on another thread. */
static void check_new_timeout(void)
{
    struct probe p = { 0 };
    ctx_t *c = ctx_with_timeout(ctx_background(), 30 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    p.ctx = c;
    CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p, NULL), 0);
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    CHECK_EQ_INT(ctx_wait(c, BOUND), CTX_DEADLINE_EXCEEDED);
    CHECK(ctx_now() >= d);
    CHECK(check_wait_flag(&p.ran, 1, BOUND));
    CHECK_EQ_INT(p.err, CTX_DEADLINE_EXCEEDED);
    CHECK(!pthread_equal(p.thread, pthread_self()));
    ctx_unref(c);
    /* Cancel works too. */
    ctx_cancel_t *cc;
    c = ctx_with_timeout(ctx_background(), CTX_HOUR, &cc);
    CHECK_NOT_NULL(c);
    ctx_t *kid = ctx_with_timeout(c, 2 * CTX_HOUR, NULL);
    CHECK_NOT_NULL(kid);
    ctx_cancel(cc);
    CHECK_CANCELED(c);
    CHECK_CANCELED(kid);
    ctx_unref(kid);
    ctx_unref(c);
    /* And timed sleeps. */
    ctx_time_t t0 = check_mono_now();
    CHECK_EQ_INT(ctx_sleep(ctx_background(), 5 * CTX_MILLISECOND), 0);
    CHECK(check_mono_now() - t0 >= 5 * CTX_MILLISECOND);
}

/* ---------------------------------------------------------------------------
 * Live timers across fork
 */

struct live {
    ctx_t *shortc, *longc;
    ctx_cancel_t *long_cancel;
    ctx_t *long_kid;
    ctx_time_t short_deadline;
    struct probe short_probe, long_probe;
};

/* The checks both sides of the fork make. */
static void check_live_timers(struct live *l, const char *side)
{
    fprintf(stderr, "   %s: checking\n", side);
    /* The short timer (made before the fork) fires. */
    CHECK_EQ_INT(ctx_wait(l->shortc, BOUND), CTX_DEADLINE_EXCEEDED);
    CHECK(ctx_now() >= l->short_deadline);
    CHECK_MSG(check_wait_flag(&l->short_probe.ran, 1, BOUND),
              "%s: short timer's callback never ran", side);
    CHECK_EQ_INT(atomic_load(&l->short_probe.ran), 1);
    CHECK_EQ_INT(l->short_probe.err, CTX_DEADLINE_EXCEEDED);

    /* The long one has not; a new timeout fires. */
    CHECK_NOT_DONE(l->longc);
    check_new_timeout();

    /* Cancelling the long one works, callbacks included. */
    CHECK_NOT_DONE(l->longc);
    CHECK_EQ_INT(atomic_load(&l->long_probe.ran), 0);
    ctx_cancel(l->long_cancel);
    CHECK_CANCELED(l->longc);
    CHECK_CANCELED(l->long_kid);
    CHECK_EQ_INT(atomic_load(&l->long_probe.ran), 1);
    CHECK(pthread_equal(l->long_probe.thread, pthread_self()));
}

static void live_make(struct live *l)
{
    memset(l, 0, sizeof *l);
    l->shortc = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(l->shortc);
    CHECK(ctx_deadline(l->shortc, &l->short_deadline));
    l->short_probe.ctx = l->shortc;
    CHECK_EQ_INT(ctx_after_func(l->shortc, probe_fn, &l->short_probe, NULL), 0);
    l->longc = ctx_with_timeout(ctx_background(), CTX_HOUR, &l->long_cancel);
    CHECK_NOT_NULL(l->longc);
    l->long_kid = ctx_with_cancel(l->longc, NULL);
    CHECK_NOT_NULL(l->long_kid);
    l->long_probe.ctx = l->long_kid;
    CHECK_EQ_INT(ctx_after_func(l->long_kid, probe_fn, &l->long_probe, NULL), 0);
}

static void live_free(struct live *l)
{
    ctx_unref(l->long_kid);
    ctx_unref(l->longc);
    ctx_unref(l->shortc);
}

static void test_live_timers(void)
{
    struct live l;
    live_make(&l);
    /* Both timers are still pending at the fork. */
    CHECK_NOT_DONE(l.shortc);
    fflush(stderr);
    pid_t pid = fork();
    CHECK_MSG(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        child_watchdog();
        check_live_timers(&l, "child");
        /* One generation further. */
        struct live g;
        live_make(&g);
        fflush(stderr);
        pid_t gpid = fork();
        CHECK(gpid >= 0);
        if (gpid == 0) {
            child_watchdog();
            check_live_timers(&g, "grandchild");
            _exit(0);
        }
        check_live_timers(&g, "child, after forking");
        wait_child(gpid, "grandchild");
        live_free(&g);
        live_free(&l);
        _exit(0);
    }
    check_live_timers(&l, "parent");
    wait_child(pid, "live timers");
    live_free(&l);
}

/* Forks made right around a deadline: as it passes, while the timer thread
 * fires it, while its callback waits for or runs on a callback thread. */
static void test_fork_at_deadline(void)
{
    int rounds = (int)check_scale(20);
    for (int i = 0; i < rounds; i++) {
        struct probe p = { 0 };
        ctx_t *c =
            ctx_with_timeout(ctx_background(), (ctx_duration_t)(i % 5) * CTX_MILLISECOND, NULL);
        CHECK_NOT_NULL(c);
        p.ctx = c;
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p, NULL), 0);
        if (i % 2)
            check_sleep_ns((ctx_duration_t)(i % 5) * CTX_MILLISECOND);
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            child_watchdog();
            /* The deadline is reached here too.  (Its callback is not
             * checked: one that a callback thread had taken at the fork
             * stays with that thread, which did not come along.) */
            CHECK_EQ_INT(ctx_wait(c, BOUND), CTX_DEADLINE_EXCEEDED);
            CHECK_EQ_INT(ctx_cause(c, NULL), CTX_DEADLINE_EXCEEDED);
            check_new_timeout();
            _exit(0);
        }
        CHECK_EQ_INT(ctx_wait(c, BOUND), CTX_DEADLINE_EXCEEDED);
        CHECK(check_wait_flag(&p.ran, 1, BOUND));
        wait_child(pid, "fork at a deadline");
        CHECK_EQ_INT(atomic_load(&p.ran), 1);
        ctx_unref(c);
    }
}

/* ---------------------------------------------------------------------------
 * Fork while another thread churns through timeouts
 */

struct churn {
    atomic_int stop;
    atomic_long iterations;
    atomic_int cb;
};

struct churner {
    struct churn *ch;
    bool tight; /* only create and cancel, as fast as it can */
};

static void churn_cb(void *arg)
{
    atomic_fetch_add(&((struct churn *)arg)->cb, 1);
}

static void *churn_main(void *arg)
{
    struct churner *me = arg;
    struct churn *ch = me->ch;
    check_rng_t rng = check_rng_make(check_seed() ^ 0xf0f0);
    static const ctx_key_t key = { .name = "k" };
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_timeout(ctx_background(), CTX_HOUR, &pc);
    CHECK_NOT_NULL(parent);
    ctx_t *pv = ctx_with_value(parent, &key, NULL, NULL);
    CHECK_NOT_NULL(pv);
    for (long i = 0; !atomic_load(&ch->stop); i++) {
        ctx_cancel_t *cc;
        /* Short timeouts, so that some fire (on the timer thread) while
         * others are being cancelled and freed here. */
        ctx_duration_t t = (ctx_duration_t)check_rng_below(&rng, 3000) * CTX_MICROSECOND;
        ctx_t *c = ctx_with_timeout_cause((i & 1) ? pv : ctx_background(), t, ETIME, "churn", &cc);
        CHECK_NOT_NULL(c);
        if (me->tight) {
            ctx_cancel(cc);
            ctx_unref(c);
            atomic_fetch_add(&ch->iterations, 1);
            continue;
        }
        if (i % 3 == 0)
            CHECK_EQ_INT(ctx_after_func(c, churn_cb, ch, NULL), 0);
        if (i % 7 == 0)
            ctx_done_fd(c);
        switch (i % 4) {
        case 0:
            ctx_cancel(cc);
            break;
        case 1:
            ctx_wait(c, (ctx_duration_t)check_rng_below(&rng, 500) * CTX_MICROSECOND);
            break;
        case 2:
            ctx_cancel_cause(cc, EPIPE, "early");
            break;
        default:
            break; /* dropped live: freed without cancel */
        }
        ctx_unref(c);
        atomic_fetch_add(&ch->iterations, 1);
    }
    ctx_cancel(pc);
    ctx_unref(pv);
    ctx_unref(parent);
    return NULL;
}

static void test_fork_while_busy(void)
{
    enum { NCHURN = 2 };
    int rounds = (int)check_scale(40);
    struct churn ch;
    memset(&ch, 0, sizeof ch);
    pthread_t t[NCHURN];
    struct churner who[NCHURN];
    for (int k = 0; k < NCHURN; k++) {
        who[k].ch = &ch;
        who[k].tight = k == 0;
        check_thread_start(&t[k], churn_main, &who[k]);
    }
    check_rng_t rng = check_rng_make(check_seed() ^ 0xb05);
    for (int i = 0; i < rounds; i++) {
        long before = atomic_load(&ch.iterations);
        /* Let the churners get going again after the last fork. */
        ctx_time_t end = check_mono_now() + BOUND;
        while (atomic_load(&ch.iterations) < before + 20) {
            CHECK_MSG(check_mono_now() < end, "the churning threads stalled in the parent");
            sched_yield();
        }
        check_sleep_ns((ctx_duration_t)check_rng_below(&rng, 1000) * CTX_MICROSECOND);
        fflush(stderr);
        pid_t pid = fork();
        CHECK(pid >= 0);
        if (pid == 0) {
            child_watchdog();
            /* Only this thread came along.  Whatever the churners left
             * half-done, deadlines must still work here, including ones
             * that share the timer with the churners' leftovers. */
            check_new_timeout();
            for (int k = 0; k < 100; k++) {
                ctx_cancel_t *cc;
                ctx_t *c = ctx_with_timeout(ctx_background(), (k % 3) * CTX_MILLISECOND, &cc);
                CHECK_NOT_NULL(c);
                if (k % 2)
                    ctx_cancel(cc);
                else
                    CHECK_EQ_INT(ctx_wait(c, BOUND), CTX_DEADLINE_EXCEEDED);
                ctx_unref(c);
            }
            /* The churners' timeouts are at most 3 ms: by now any left in
             * the heap are due; firing them must not hang the child. */
            check_sleep_ns(10 * CTX_MILLISECOND);
            check_new_timeout();
            _exit(0);
        }
        wait_child(pid, "fork while busy");
    }
    atomic_store(&ch.stop, 1);
    for (int k = 0; k < NCHURN; k++)
        check_thread_join(t[k]);
    fprintf(stderr, "   %d forks, %ld churn iterations\n", rounds, atomic_load(&ch.iterations));
    /* The parent is fine too. */
    check_new_timeout();
}

#if defined(__SANITIZE_ADDRESS__)
#define CHECK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CHECK_ASAN 1
#endif
#endif

int main(void)
{
#ifdef CHECK_ASAN
    /* The AddressSanitizer runtimes of GCC 12 and Clang 14 do not hold their
     * allocator's locks across fork(), so a child of a multithreaded process
     * can hang in its first malloc when another thread was allocating at
     * that moment (seen here: a child's pthread_create blocked in
     * SizeClassAllocator64::GetFromAllocator).  The plain and TSan builds
     * run this test. */
    SKIP("AddressSanitizer's allocator is not fork-safe in multithreaded processes");
#endif
    check_seed();
    RUN_TEST(test_live_timers);
    RUN_TEST(test_fork_at_deadline);
    RUN_TEST(test_fork_while_busy);
    fprintf(stderr, "ok\n");
    return 0;
}
