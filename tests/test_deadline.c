/* SPDX-License-Identifier: MIT */

/*
 * Deadlines and timeouts on the real clock.  Ports Go's TestDeadline,
 * TestTimeout, TestCanceledTimeout, TestLayersTimeout, the WithTimeout half
 * of TestCancelRemoves and the deadline rows of TestCause (with
 * WithDeadlineCause as well as WithTimeoutCause, and with deadlines that
 * really pass rather than zero timeouts); adds what C makes explicit:
 * clamping to the parent's deadline, deadlines at or before now and at the
 * ends of the int64 range, memory that a cancelled or forgotten timer must
 * give back, ctx_describe's shape, and the promise that a deadline callback
 * runs on a library thread and can never make another deadline late.
 *
 * Time bounds are generous (the machine is shared, sanitizers are slow):
 * the tests assert "not before the deadline" exactly and "not much after"
 * loosely.
 */
#include "check.h"

#include <limits.h>

/* Go's TestCause errors, as codes with messages. */
#define TOO_SLOW       ETIME
#define FINISHED_EARLY EALREADY
#define PARENT_CAUSE   EPIPE

#define FOREVER (1000 * CTX_HOUR)

/* A bound on lateness: how long after its deadline a context may end. */
#define LATE_BOUND (CHECK_TSAN ? 3 * CTX_SECOND : 1 * CTX_SECOND)

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Go's testDeadline: c ends by its deadline, with CTX_DEADLINE_EXCEEDED,
 * within fail_after, and never before the deadline it reports. */
static void check_deadline_ends(ctx_t *c, const char *name, ctx_duration_t fail_after)
{
    ctx_time_t d;
    CHECK_MSG(ctx_deadline(c, &d), "%s: no deadline", name);
    int r = ctx_wait(c, fail_after);
    CHECK_MSG(r == CTX_DEADLINE_EXCEEDED, "%s: ctx_wait returned %d, want %d", name, r,
              CTX_DEADLINE_EXCEEDED);
    ctx_time_t now = ctx_now();
    CHECK_MSG(now >= d, "%s: done %lld ns before its deadline", name, (long long)(d - now));
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
}

/* A custom context stands in for Go's otherContext. */
static const ctx_custom_ops_t other_ops = { .name = "Other" };

static ctx_t *other(ctx_t *parent)
{
    ctx_t *o = ctx_with_custom(parent, &other_ops, NULL, NULL);
    CHECK_NOT_NULL(o);
    return o;
}

/* ---------------------------------------------------------------------------
 * A byte-counting allocator on top of check.h's block counter, so that
 * "memory does not accumulate" can be measured in bytes as well as blocks.
 */

#define HDR 16 /* keeps malloc's alignment */
static atomic_long live_bytes;

static void *bytes_malloc(size_t n)
{
    unsigned char *p = check_alloc_malloc_(n + HDR);
    if (p == NULL)
        return NULL;
    memcpy(p, &n, sizeof n);
    atomic_fetch_add(&live_bytes, (long)n);
    return p + HDR;
}

static void bytes_free(void *q)
{
    if (q == NULL)
        return;
    unsigned char *p = (unsigned char *)q - HDR;
    size_t n;
    memcpy(&n, p, sizeof n);
    atomic_fetch_sub(&live_bytes, (long)n);
    check_alloc_free_(p);
}

/* Waits until the library holds exactly `blocks` blocks (a timer or callback
 * thread may still be dropping its reference to a context that ended by
 * deadline); true if it got there within the bound. */
static bool live_settles_at(long blocks)
{
    ctx_time_t end = check_mono_now() + 5 * CTX_SECOND;
    while (check_alloc_live() != blocks) {
        if (check_mono_now() > end)
            return false;
        check_sleep_ns(CTX_MILLISECOND);
    }
    return true;
}

/* ---------------------------------------------------------------------------
 * Go's TestDeadline and TestTimeout
 */

static void test_deadline(void)
{
    char buf[256];
    ctx_t *c = ctx_with_deadline(ctx_background(), ctx_now() + 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_describe(c, buf, sizeof buf);
    CHECK_MSG(starts_with(buf, "context.Background.WithDeadline("), "%s", buf);
    CHECK_MSG(ends_with(buf, "])"), "%s", buf);
    CHECK_NOT_DONE(c);
    check_deadline_ends(c, "WithDeadline", 10 * CTX_SECOND);
    ctx_unref(c);

    /* Through a custom ("other") context. */
    c = ctx_with_deadline(ctx_background(), ctx_now() + 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_t *o = other(c);
    check_deadline_ends(o, "WithDeadline+otherContext", 10 * CTX_SECOND);
    ctx_unref(o);
    ctx_unref(c);

    /* A later deadline under it is the parent's. */
    c = ctx_with_deadline(ctx_background(), ctx_now() + 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    o = other(c);
    ctx_t *c2 = ctx_with_deadline(o, ctx_now() + 4 * CTX_SECOND, NULL);
    CHECK_NOT_NULL(c2);
    ctx_time_t start = check_mono_now();
    check_deadline_ends(c2, "WithDeadline+otherContext+WithDeadline", 10 * CTX_SECOND);
    CHECK_MSG(check_mono_now() - start < 2 * CTX_SECOND + LATE_BOUND, "the 4 s deadline won");
    ctx_unref(c2);
    ctx_unref(o);
    ctx_unref(c);

    /* In the past, and exactly now: born done. */
    c = ctx_with_deadline(ctx_background(), ctx_now() - CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    check_deadline_ends(c, "WithDeadline+inthepast", 0);
    ctx_unref(c);

    c = ctx_with_deadline(ctx_background(), ctx_now(), NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    check_deadline_ends(c, "WithDeadline+now", 0);
    ctx_unref(c);
}

static void test_timeout(void)
{
    char buf[256];
    ctx_time_t before = ctx_now();
    ctx_t *c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    ctx_time_t after = ctx_now();
    CHECK_NOT_NULL(c);
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    /* ctx_with_timeout(p, t) is ctx_with_deadline(p, ctx_now() + t). */
    CHECK(d >= before + 50 * CTX_MILLISECOND);
    CHECK(d <= after + 50 * CTX_MILLISECOND);
    ctx_describe(c, buf, sizeof buf);
    CHECK_MSG(starts_with(buf, "context.Background.WithDeadline("), "%s", buf);
    CHECK_MSG(ends_with(buf, "])"), "%s", buf);
    check_deadline_ends(c, "WithTimeout", 10 * CTX_SECOND);
    ctx_unref(c);

    c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_t *o = other(c);
    check_deadline_ends(o, "WithTimeout+otherContext", 10 * CTX_SECOND);
    ctx_unref(o);
    ctx_unref(c);

    c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    o = other(c);
    ctx_t *c2 = ctx_with_timeout(o, 3 * CTX_SECOND, NULL);
    CHECK_NOT_NULL(c2);
    check_deadline_ends(c2, "WithTimeout+otherContext+WithTimeout", 10 * CTX_SECOND);
    ctx_unref(c2);
    ctx_unref(o);
    ctx_unref(c);

    /* Zero and negative timeouts: born done. */
    c = ctx_with_timeout(ctx_background(), 0, NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    ctx_unref(c);
    c = ctx_with_timeout(ctx_background(), -CTX_SECOND, NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    CHECK(ctx_deadline(c, &d));
    CHECK(d < ctx_now());
    ctx_unref(c);
}

/* A timer child under a cancel parent that is cancelled first ends with
 * CTX_CANCELED, and its own deadline passing later changes nothing (only
 * the first cancellation counts). */
static void test_parent_cancelled_first(void)
{
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *c = ctx_with_timeout(p, 30 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_t *far = ctx_with_timeout(p, FOREVER, NULL);
    CHECK_NOT_NULL(far);
    ctx_cancel(pc);
    CHECK_CANCELED(c);
    CHECK_CANCELED(far);
    CHECK_EQ_INT(ctx_wait(c, CTX_FOREVER), CTX_CANCELED);

    /* Let c's deadline pass (measured on another timer), then look again. */
    ctx_t *later = ctx_with_timeout(ctx_background(), 80 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(later);
    CHECK_EQ_INT(ctx_wait(later, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_CANCELED(c);
    ctx_unref(later);
    ctx_unref(far);
    ctx_unref(c);
    ctx_unref(p);
}

/* Go's TestCanceledTimeout: a timeout cancelled by hand is CTX_CANCELED at
 * once; its parent is untouched. */
static void test_canceled_timeout(void)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_SECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_t *o = other(c);
    ctx_cancel_t *cancel;
    ctx_t *c2 = ctx_with_timeout(o, 2 * CTX_SECOND, &cancel);
    CHECK_NOT_NULL(c2);
    CHECK_NOT_NULL(cancel);
    ctx_cancel(cancel);
    CHECK_CANCELED(c2);
    CHECK_EQ_INT(ctx_wait(c2, 0), CTX_CANCELED);
    CHECK_NOT_DONE(c);
    CHECK_NOT_DONE(o);
    ctx_unref(c2);
    ctx_unref(o);
    ctx_unref(c);
}

/* A deadline not earlier than the parent's behaves as ctx_with_cancel and
 * reports the parent's; an earlier one reports its own. */
static void test_clamping(void)
{
    static const ctx_key_t key = { .name = "k" };
    char buf[512];
    ctx_time_t now = ctx_now();
    ctx_time_t pd = now + CTX_HOUR;
    ctx_t *p = ctx_with_deadline(ctx_background(), pd, NULL);
    CHECK_NOT_NULL(p);
    ctx_t *v = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_time_t d = 0;
    CHECK(ctx_deadline(v, &d));
    CHECK_EQ_INT(d, pd);

    /* Later, and equal: the parent's deadline, a plain cancel context. */
    ctx_time_t later[] = { pd + CTX_HOUR, pd, INT64_MAX };
    for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
        ctx_cancel_t *cc;
        ctx_t *c = ctx_with_deadline(v, later[i], &cc);
        CHECK_NOT_NULL(c);
        d = 0;
        CHECK(ctx_deadline(c, &d));
        CHECK_EQ_INT(d, pd);
        ctx_describe(c, buf, sizeof buf);
        CHECK_MSG(ends_with(buf, ".WithValue(k, ...).WithCancel"), "%s", buf);
        CHECK_MSG(starts_with(buf, "context.Background.WithDeadline("), "%s", buf);
        /* It still cancels by hand, without touching the parent. */
        ctx_cancel(cc);
        CHECK_CANCELED(c);
        CHECK_NOT_DONE(p);
        ctx_unref(c);
    }
    {
        ctx_t *c = ctx_with_timeout(v, 2 * CTX_HOUR, NULL);
        CHECK_NOT_NULL(c);
        CHECK(ctx_deadline(c, &d));
        CHECK_EQ_INT(d, pd);
        ctx_unref(c);
    }

    /* Earlier: its own deadline, and a child of it sees the nearest. */
    ctx_time_t own = pd - 30 * CTX_MINUTE;
    ctx_t *e = ctx_with_deadline(v, own, NULL);
    CHECK_NOT_NULL(e);
    CHECK(ctx_deadline(e, &d));
    CHECK_EQ_INT(d, own);
    ctx_describe(e, buf, sizeof buf);
    CHECK_MSG(starts_with(buf, "context.Background.WithDeadline(") &&
                  strstr(buf, "]).WithValue(k, ...).WithDeadline(") != NULL && ends_with(buf, "])"),
              "%s", buf);
    ctx_t *ev = ctx_with_value(e, &key, NULL, NULL);
    CHECK_NOT_NULL(ev);
    ctx_t *ec = ctx_with_cancel(ev, NULL);
    CHECK_NOT_NULL(ec);
    CHECK(ctx_deadline(ec, &d));
    CHECK_EQ_INT(d, own);
    /* A deadline between the two is earlier than the parent's: its own. */
    ctx_t *mid = ctx_with_deadline(ec, own - 1, NULL);
    CHECK_NOT_NULL(mid);
    CHECK(ctx_deadline(mid, &d));
    CHECK_EQ_INT(d, own - 1);
    ctx_unref(mid);
    ctx_unref(ec);
    ctx_unref(ev);
    ctx_unref(e);

    /* Without-cancel hides the deadline: a child then has its own. */
    ctx_t *w = ctx_without_cancel(v);
    CHECK_NOT_NULL(w);
    CHECK(!ctx_deadline(w, NULL));
    ctx_t *wc = ctx_with_deadline(w, pd + CTX_HOUR, NULL);
    CHECK_NOT_NULL(wc);
    CHECK(ctx_deadline(wc, &d));
    CHECK_EQ_INT(d, pd + CTX_HOUR);
    ctx_unref(wc);
    ctx_unref(w);
    ctx_unref(v);
    ctx_unref(p);

    /* The clamped child ends when the parent's (real, short) deadline passes,
     * with the parent's err. */
    p = ctx_with_timeout(ctx_background(), 40 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(p);
    CHECK(ctx_deadline(p, &pd));
    ctx_t *c = ctx_with_timeout(p, CTX_HOUR, NULL);
    CHECK_NOT_NULL(c);
    CHECK(ctx_deadline(c, &d));
    CHECK_EQ_INT(d, pd);
    check_deadline_ends(c, "clamped child", 10 * CTX_SECOND);
    CHECK_DONE(p, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    ctx_unref(c);
    ctx_unref(p);
}

/* Deadlines at the ends of the int64 range: no overflow, no crash. */
static void test_overflow(void)
{
    char buf[256];
    ctx_time_t d;

    ctx_t *c = ctx_with_timeout(ctx_background(), INT64_MAX, NULL);
    CHECK_NOT_NULL(c);
    CHECK(ctx_deadline(c, &d));
    CHECK(d > ctx_now() + 100 * 365 * 24 * CTX_HOUR); /* saturated, not wrapped */
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_wait(c, 0), 0);
    CHECK_EQ_INT(ctx_wait(c, CTX_MILLISECOND), 0);
    CHECK(ctx_describe(c, buf, sizeof buf) > 0);
    CHECK_MSG(starts_with(buf, "context.Background.WithDeadline(") && ends_with(buf, "])"), "%s",
              buf);
    /* A child of it with another huge timeout is clamped, not wrapped. */
    ctx_t *cc = ctx_with_timeout(c, INT64_MAX - 1, NULL);
    CHECK_NOT_NULL(cc);
    CHECK_NOT_DONE(cc);
    ctx_unref(cc);
    ctx_unref(c);

    c = ctx_with_deadline(ctx_background(), INT64_MAX, NULL);
    CHECK_NOT_NULL(c);
    CHECK(ctx_deadline(c, &d));
    CHECK_EQ_INT(d, INT64_MAX);
    CHECK_NOT_DONE(c);
    ctx_describe(c, buf, sizeof buf);
    ctx_unref(c);

    c = ctx_with_deadline(ctx_background(), INT64_MIN, NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    CHECK(ctx_deadline(c, &d));
    CHECK_EQ_INT(d, INT64_MIN);
    CHECK(ctx_describe(c, buf, sizeof buf) > 0);
    CHECK_MSG(starts_with(buf, "context.Background.WithDeadline(") && ends_with(buf, "])"), "%s",
              buf);
    ctx_unref(c);

    c = ctx_with_timeout(ctx_background(), INT64_MIN, NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    CHECK(ctx_describe(c, buf, sizeof buf) > 0);
    ctx_unref(c);

    c = ctx_with_timeout_cause(ctx_background(), INT64_MIN + 1, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(c);
}

/* ---------------------------------------------------------------------------
 * Causes: the deadline rows of Go's TestCause, with both constructors, plus
 * deadlines that really pass.
 */

typedef ctx_t *(*maker_fn)(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                           ctx_cancel_t **cancel);

static ctx_t *make_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                                 ctx_cancel_t **cancel)
{
    return ctx_with_timeout_cause(parent, timeout, cause, msg, cancel);
}

static ctx_t *make_deadline_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                                  ctx_cancel_t **cancel)
{
    return ctx_with_deadline_cause(parent, ctx_now() + timeout, cause, msg, cancel);
}

static void cause_rows(maker_fn make, const char *name)
{
    fprintf(stderr, "   %s\n", name);
    ctx_cancel_t *cancel;
    ctx_t *c;

    /* Deadline passes: err DEADLINE_EXCEEDED, cause the given one. */
    c = make(ctx_background(), 30 * CTX_MILLISECOND, TOO_SLOW, "tooSlow", &cancel);
    CHECK_NOT_NULL(c);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_cancel(cancel); /* too late: changes nothing */
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(c);

    /* ... with no message: the text is the code's. */
    c = make(ctx_background(), 30 * CTX_MILLISECOND, TOO_SLOW, NULL, NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, strerror(TOO_SLOW));
    ctx_unref(c);

    /* ... with cause 0: like the plain constructor. */
    c = make(ctx_background(), 30 * CTX_MILLISECOND, 0, NULL, NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    ctx_unref(c);

    /* Past deadline: born done with the cause (Go's "WithTimeoutCause"). */
    c = make(ctx_background(), 0, TOO_SLOW, "tooSlow", &cancel);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_cancel(cancel);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(c);
    c = make(ctx_background(), -CTX_HOUR, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(c);

    /* Cancelled by hand first ("... canceled"): CANCELED / CANCELED, also
     * after the deadline would have passed. */
    c = make(ctx_background(), 30 * CTX_MILLISECOND, TOO_SLOW, "tooSlow", &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel(cancel);
    CHECK_CANCELED(c);
    check_sleep_ns(60 * CTX_MILLISECOND); /* only widens the window for a wrong late fire */
    CHECK_CANCELED(c);
    ctx_unref(c);
    c = make(ctx_background(), FOREVER, TOO_SLOW, "tooSlow", &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel(cancel);
    CHECK_CANCELED(c);
    ctx_unref(c);

    /* "stacked": the deadline (past) wins over the parent's later cause. */
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    c = make(p, 0, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(pc, FINISHED_EARLY, "finishedEarly");
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(c);
    ctx_unref(p);

    /* "stacked canceled": the parent's cause reaches the child first. */
    p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    c = make(p, FOREVER, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(pc, FINISHED_EARLY, "finishedEarly");
    CHECK_DONE(c, CTX_CANCELED, FINISHED_EARLY, "finishedEarly");
    ctx_unref(c);
    ctx_unref(p);

    /* Same with a short real deadline: the parent cancelled first wins. */
    p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    c = make(p, 30 * CTX_MILLISECOND, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(pc, FINISHED_EARLY, "finishedEarly");
    CHECK_DONE(c, CTX_CANCELED, FINISHED_EARLY, "finishedEarly");
    ctx_unref(c);
    ctx_unref(p);

    /* A parent cancelled with a cause before the child is made: the child
     * is born done with the parent's cause, whatever its own deadline. */
    p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_cancel_cause(pc, PARENT_CAUSE, "parentCause");
    c = make(p, CTX_HOUR, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(c);
    CHECK_DONE(c, CTX_CANCELED, PARENT_CAUSE, "parentCause");
    ctx_unref(c);
    ctx_unref(p);

    /* A parent whose deadline cause fires: descendants of every kind report
     * the parent's deadline cause, and a later child deadline cause is
     * clamped away. */
    p = make(ctx_background(), 40 * CTX_MILLISECOND, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(p);
    static const ctx_key_t key = { .name = "k" };
    ctx_t *v = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *kc = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(kc);
    ctx_t *kt = make(v, CTX_HOUR, FINISHED_EARLY, "finishedEarly", NULL);
    CHECK_NOT_NULL(kt);
    ctx_t *ko = other(kc);
    CHECK_EQ_INT(ctx_wait(ko, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(p, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    CHECK_DONE(v, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    CHECK_DONE(kc, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    CHECK_DONE(kt, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    CHECK_DONE(ko, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    /* Born after it fired: the same. */
    ctx_t *late = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(late);
    CHECK_DONE(late, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow");
    ctx_unref(late);
    ctx_unref(ko);
    ctx_unref(kt);
    ctx_unref(kc);
    ctx_unref(v);
    ctx_unref(p);

    /* An earlier child deadline cause fires first: the child's cause, and
     * the parent goes on. */
    p = make(ctx_background(), CTX_HOUR, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(p);
    c = make(p, 30 * CTX_MILLISECOND, FINISHED_EARLY, "finishedEarly", NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, FINISHED_EARLY, "finishedEarly");
    CHECK_NOT_DONE(p);
    ctx_unref(c);
    ctx_unref(p);

    /* WithoutCancel over a deadline cause: never done, no cause. */
    p = make(ctx_background(), 0, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(p);
    ctx_t *w = ctx_without_cancel(p);
    CHECK_NOT_NULL(w);
    CHECK_NOT_DONE(w);
    CHECK(!ctx_deadline(w, NULL));
    ctx_unref(w);
    ctx_unref(p);

    /* The message is copied. */
    char text[16];
    strcpy(text, "copied");
    c = make(ctx_background(), 0, TOO_SLOW, text, NULL);
    CHECK_NOT_NULL(c);
    strcpy(text, "XXXXXX");
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "copied");
    ctx_unref(c);
    strcpy(text, "copied");
    c = make(ctx_background(), 20 * CTX_MILLISECOND, TOO_SLOW, text, NULL);
    CHECK_NOT_NULL(c);
    strcpy(text, "XXXXXX");
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "copied");
    ctx_unref(c);
}

static void test_cause_table(void)
{
    cause_rows(make_timeout_cause, "WithTimeoutCause");
    cause_rows(make_deadline_cause, "WithDeadlineCause");
}

/* ---------------------------------------------------------------------------
 * Go's TestLayersTimeout: a random stack of value, cancel and timeout layers
 * ends by the (shortest) timeout, and every value stays readable.
 */
static void test_layers_timeout(void)
{
    enum { MIN_LAYERS = 30, MAX_LAYERS = 200 };
    static ctx_key_t keys[MAX_LAYERS];
    check_rng_t rng = check_rng_make(check_seed() ^ 0x1a7e25);
    for (int round = 0; round < 3; round++) {
        ctx_t *layers[MAX_LAYERS];
        int n = 0, nvals = 0, ncancels = 0, ntimers = 0;
        const ctx_key_t *vals[MAX_LAYERS];
        ctx_t *c = ctx_background();
        while (n < MAX_LAYERS && (n < MIN_LAYERS || ntimers == 0 || ncancels == 0 || nvals == 0)) {
            switch (check_rng_below(&rng, 3)) {
            case 0:
                keys[n].name = "layer";
                c = ctx_with_value(c, &keys[n], &keys[n], NULL);
                vals[nvals++] = &keys[n];
                break;
            case 1:
                c = ctx_with_cancel(c, NULL);
                ncancels++;
                break;
            default:
                c = ctx_with_timeout(c, 100 * CTX_MILLISECOND, NULL);
                ntimers++;
                break;
            }
            CHECK_NOT_NULL(c);
            layers[n++] = c;
        }
        CHECK_NOT_DONE(c);
        char buf[64];
        ctx_describe(c, buf, sizeof buf);
        CHECK_MSG(starts_with(buf, "context.Background."), "%s", buf);
        for (int i = 0; i < nvals; i++)
            CHECK_PTR_EQ(ctx_value(c, vals[i]), vals[i]);
        check_deadline_ends(c, "layers", 100 * CTX_MILLISECOND + 10 * CTX_SECOND);
        for (int i = 0; i < nvals; i++)
            CHECK_PTR_EQ(ctx_value(c, vals[i]), vals[i]);
        /* Every layer at or above the first timer is done; below, not. */
        int first_timer = -1;
        for (int i = 0; i < n && first_timer < 0; i++)
            if (ctx_deadline(layers[i], NULL))
                first_timer = i;
        for (int i = 0; i < n; i++) {
            if (i < first_timer)
                CHECK_NOT_DONE(layers[i]);
            else
                CHECK_EQ_INT(ctx_err(layers[i]), CTX_DEADLINE_EXCEEDED);
        }
        for (int i = n - 1; i >= 0; i--)
            ctx_unref(layers[i]);
    }
}

/* ---------------------------------------------------------------------------
 * Memory: cancelled and forgotten timers leave nothing behind.
 */

/* Go's TestCancelRemoves for WithTimeout, observed through the allocator:
 * after cancel and unref, nothing the child made stays live, and the parent
 * holds no trace of it (cancelling the parent later touches no freed
 * memory). */
static void test_cancel_removes(void)
{
    /* Warm up: the library may keep a timer structure for good. */
    ctx_t *w = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(w);
    ctx_unref(w);

    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    long base = check_alloc_live();
    long base_bytes = atomic_load(&live_bytes);

    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_timeout(p, 60 * CTX_MINUTE, &cc);
    CHECK_NOT_NULL(c);
    CHECK(check_alloc_live() > base);
    ctx_cancel(cc);
    ctx_unref(c);
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_EQ_INT(atomic_load(&live_bytes), base_bytes);

    /* Forgetting to cancel never leaks: unref alone gives everything back. */
    c = ctx_with_timeout(p, 60 * CTX_MINUTE, NULL);
    CHECK_NOT_NULL(c);
    ctx_unref(c);
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_EQ_INT(atomic_load(&live_bytes), base_bytes);

    /* Also with a cause message, and for a timer whose deadline passed. */
    c = ctx_with_timeout_cause(p, 60 * CTX_MINUTE, TOO_SLOW, "a message", &cc);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(cc, PARENT_CAUSE, "another message");
    ctx_unref(c);
    CHECK_EQ_INT(check_alloc_live(), base);
    c = ctx_with_timeout_cause(p, 10 * CTX_MILLISECOND, TOO_SLOW, "a message", NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_wait(c, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    ctx_unref(c);
    CHECK_MSG(live_settles_at(base), "live %ld, want %ld", check_alloc_live(), base);

    /* A short timer freed before its deadline: the timer thread must not
     * visit it when the deadline passes (ASan would see the freed node). */
    for (int i = 0; i < 50; i++) {
        c = ctx_with_timeout(p, (i % 5) * CTX_MILLISECOND + 1, NULL);
        CHECK_NOT_NULL(c);
        ctx_unref(c);
    }
    ctx_t *probe = ctx_with_timeout(p, 20 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(probe);
    CHECK_EQ_INT(ctx_wait(probe, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    ctx_unref(probe);
    CHECK_MSG(live_settles_at(base), "live %ld, want %ld", check_alloc_live(), base);

    CHECK_NOT_DONE(p);
    ctx_cancel(pc);
    CHECK_CANCELED(p);
    ctx_unref(p);
}

/* Creating and cancelling 100,000 timeouts does not accumulate memory:
 * after each batch the library holds what it held before; and 100,000
 * cancelled timeouts kept alive cost no more than 100,000 times one of
 * them (a cancelled timer must leave the timer structure at once, not when
 * its context is freed or its deadline comes). */
static void test_no_accumulation(void)
{
    long n = check_scale(100000);
    ctx_t *w = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(w);
    ctx_unref(w);

    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    long base = check_alloc_live();
    long base_bytes = atomic_load(&live_bytes);
    for (long i = 0; i < n; i++) {
        ctx_cancel_t *cc;
        ctx_t *parent = (i & 1) ? p : ctx_background();
        ctx_t *c = ctx_with_timeout(parent, CTX_HOUR + i, &cc);
        CHECK_NOT_NULL(c);
        ctx_cancel(cc);
        ctx_unref(c);
        if (i % 10000 == 0) {
            CHECK_EQ_INT(check_alloc_live(), base);
            CHECK_EQ_INT(atomic_load(&live_bytes), base_bytes);
        }
    }
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_EQ_INT(atomic_load(&live_bytes), base_bytes);

    /* The cost of one cancelled, live timeout. */
    ctx_cancel_t *cc;
    ctx_t *one = ctx_with_timeout(ctx_background(), CTX_HOUR, &cc);
    CHECK_NOT_NULL(one);
    ctx_cancel(cc);
    long per = atomic_load(&live_bytes) - base_bytes;
    CHECK(per > 0);
    ctx_unref(one);

    ctx_t **keep = malloc((size_t)n * sizeof *keep);
    CHECK_NOT_NULL(keep);
    for (long i = 0; i < n; i++) {
        keep[i] = ctx_with_timeout(ctx_background(), CTX_HOUR + i, &cc);
        CHECK_NOT_NULL(keep[i]);
        ctx_cancel(cc);
    }
    long grown = atomic_load(&live_bytes) - base_bytes;
    CHECK_MSG(grown <= n * per + 64 * 1024, "%ld cancelled timeouts hold %ld bytes; one holds %ld",
              n, grown, per);
    for (long i = 0; i < n; i++)
        ctx_unref(keep[i]);
    free(keep);
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_EQ_INT(atomic_load(&live_bytes), base_bytes);

    /* Live (uncancelled) timers freed by unref give everything back too. */
    keep = malloc((size_t)n * sizeof *keep);
    CHECK_NOT_NULL(keep);
    for (long i = 0; i < n; i++) {
        keep[i] = ctx_with_timeout((i & 1) ? p : ctx_background(), CTX_HOUR + i, NULL);
        CHECK_NOT_NULL(keep[i]);
    }
    for (long i = 0; i < n; i++)
        ctx_unref(keep[i]);
    free(keep);
    /* The timer structure may have grown for n live timers; blocks, though,
     * are back where they were. */
    CHECK_EQ_INT(check_alloc_live(), base);

    ctx_cancel(pc);
    ctx_unref(p);
}

/* ---------------------------------------------------------------------------
 * Deadline callbacks: on a library thread, and never holding up another
 * deadline.
 */

struct blocker {
    check_latch_t release;
    atomic_int started, returned;
    ctx_t *ctx;
    int err_seen;
    pthread_t thread;
};

static void block_fn(void *arg)
{
    struct blocker *b = arg;
    b->thread = pthread_self();
    b->err_seen = ctx_err(b->ctx);
    atomic_store(&b->started, 1);
    check_latch_wait(&b->release);
    atomic_store(&b->returned, 1);
}

struct probe {
    atomic_int ran;
    ctx_t *ctx;
    int err_seen;
    ctx_time_t at;
    pthread_t thread;
};

static void probe_fn(void *arg)
{
    struct probe *p = arg;
    p->thread = pthread_self();
    p->err_seen = ctx_err(p->ctx);
    p->at = ctx_now();
    atomic_fetch_add(&p->ran, 1);
}

static void test_blocking_callback(void)
{
    enum { NBLOCK = 3 };
    struct blocker b[NBLOCK];
    ctx_t *a[NBLOCK];
    for (int i = 0; i < NBLOCK; i++) {
        memset(&b[i], 0, sizeof b[i]);
        check_latch_init(&b[i].release);
        a[i] = ctx_with_timeout(ctx_background(), (10 + 5 * i) * CTX_MILLISECOND, NULL);
        CHECK_NOT_NULL(a[i]);
        b[i].ctx = a[i];
        CHECK_EQ_INT(ctx_after_func(a[i], block_fn, &b[i], NULL), 0);
    }
    for (int i = 0; i < NBLOCK; i++) {
        CHECK_MSG(check_wait_flag(&b[i].started, 1, 10 * CTX_SECOND), "blocker %d never ran", i);
        CHECK(!pthread_equal(b[i].thread, pthread_self()));
        CHECK_EQ_INT(b[i].err_seen, CTX_DEADLINE_EXCEEDED);
    }

    /* With every blocker stuck, later deadlines still end on time and
     * their callbacks still run. */
    for (int round = 0; round < 3; round++) {
        struct probe pr = { 0 };
        ctx_t *c = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
        CHECK_NOT_NULL(c);
        pr.ctx = c;
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &pr, NULL), 0);
        ctx_time_t d;
        CHECK(ctx_deadline(c, &d));
        CHECK_EQ_INT(ctx_wait(c, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
        ctx_time_t now = ctx_now();
        CHECK(now >= d);
        CHECK_MSG(now - d <= (CHECK_TSAN ? 2000 : 500) * CTX_MILLISECOND,
                  "deadline ended %lld ms late behind a blocked callback",
                  (long long)((now - d) / CTX_MILLISECOND));
        CHECK_MSG(check_wait_flag(&pr.ran, 1, 10 * CTX_SECOND),
                  "callback behind a blocked one never ran");
        CHECK_EQ_INT(atomic_load(&pr.ran), 1);
        CHECK_EQ_INT(pr.err_seen, CTX_DEADLINE_EXCEEDED);
        CHECK(pr.at >= d);
        CHECK(!pthread_equal(pr.thread, pthread_self()));
        for (int i = 0; i < NBLOCK; i++) {
            CHECK(!pthread_equal(pr.thread, b[i].thread));
            CHECK_EQ_INT(atomic_load(&b[i].returned), 0);
        }
        ctx_unref(c);
    }

    for (int i = 0; i < NBLOCK; i++) {
        check_latch_open(&b[i].release);
        CHECK(check_wait_flag(&b[i].returned, 1, 10 * CTX_SECOND));
    }
    for (int i = 0; i < NBLOCK; i++)
        ctx_unref(a[i]);
    /* block_fn no longer touches b[i] once it has set returned. */
    for (int i = 0; i < NBLOCK; i++)
        check_latch_destroy(&b[i].release);
}

/* Many deadlines at once: each context's callback runs exactly once, after
 * its deadline, on a library thread; the ones cancelled by hand first run
 * on the canceller with CTX_CANCELED. */
static void test_many_deadline_callbacks(void)
{
    int n = (int)check_scale(2000);
    struct probe *pr = calloc((size_t)n, sizeof *pr);
    ctx_t **cs = calloc((size_t)n, sizeof *cs);
    ctx_cancel_t **cc = calloc((size_t)n, sizeof *cc);
    bool *ran_here = calloc((size_t)n, sizeof *ran_here);
    CHECK(pr != NULL && cs != NULL && cc != NULL && ran_here != NULL);
    check_rng_t rng = check_rng_make(check_seed() ^ 0xdead);
    for (int i = 0; i < n; i++) {
        cs[i] = ctx_with_timeout(ctx_background(),
                                 (ctx_duration_t)check_rng_below(&rng, 100) * CTX_MILLISECOND + 1,
                                 &cc[i]);
        CHECK_NOT_NULL(cs[i]);
        pr[i].ctx = cs[i];
        CHECK_EQ_INT(ctx_after_func(cs[i], probe_fn, &pr[i], NULL), 0);
        /* Already done when registered: it ran here, at once. */
        ran_here[i] = atomic_load(&pr[i].ran) == 1 && pthread_equal(pr[i].thread, pthread_self());
    }
    /* Cancel a few by hand; they may already have fired. */
    for (int i = 0; i < n; i += 7)
        ctx_cancel(cc[i]);
    ctx_t *last = ctx_with_timeout(ctx_background(), 150 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(last);
    CHECK_EQ_INT(ctx_wait(last, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    ctx_unref(last);
    for (int i = 0; i < n; i++) {
        CHECK_MSG(check_wait_flag(&pr[i].ran, 1, 10 * CTX_SECOND), "callback %d never ran", i);
        int e = ctx_err(cs[i]);
        CHECK_EQ_INT(pr[i].err_seen, e);
        ctx_time_t d;
        CHECK(ctx_deadline(cs[i], &d));
        if (e == CTX_DEADLINE_EXCEEDED) {
            CHECK(pr[i].at >= d);
            CHECK(ran_here[i] || !pthread_equal(pr[i].thread, pthread_self()));
        } else {
            CHECK_EQ_INT(e, CTX_CANCELED);
            CHECK_EQ_INT(i % 7, 0);
            CHECK(pthread_equal(pr[i].thread, pthread_self()));
        }
    }
    /* Nothing runs twice. */
    check_sleep_ns(20 * CTX_MILLISECOND);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(atomic_load(&pr[i].ran), 1);
        ctx_unref(cs[i]);
    }
    free(pr);
    free(cs);
    free(cc);
    free(ran_here);
}

/* A timer child of a timer parent under a value layer, cancelled by hand
 * from another thread while its deadline fires: exactly one err wins and
 * the context stays consistent. */
struct racer {
    ctx_cancel_t *cancel;
    check_latch_t go;
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    check_latch_wait(&r->go);
    ctx_cancel(r->cancel);
    return NULL;
}

static void test_cancel_deadline_race(void)
{
    int rounds = (int)check_scale(200);
    int fired = 0, cancelled = 0;
    for (int i = 0; i < rounds; i++) {
        struct racer r;
        check_latch_init(&r.go);
        r.cancel = NULL;
        pthread_t t;
        /* Vary the timeout so that each side wins some rounds. */
        ctx_duration_t timeout =
            (ctx_duration_t)(i % 8) * (CHECK_TSAN ? 200 : 25) * CTX_MICROSECOND;
        ctx_t *c = ctx_with_timeout(ctx_background(), timeout + 1, &r.cancel);
        CHECK_NOT_NULL(c);
        struct probe pr = { 0 };
        pr.ctx = c;
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &pr, NULL), 0);
        check_thread_start(&t, racer_main, &r);
        check_latch_open(&r.go);
        CHECK(ctx_wait(c, 10 * CTX_SECOND) != 0);
        check_thread_join(t);
        CHECK(check_wait_flag(&pr.ran, 1, 10 * CTX_SECOND));
        int e = ctx_err(c);
        CHECK(e == CTX_CANCELED || e == CTX_DEADLINE_EXCEEDED);
        CHECK_EQ_INT(ctx_cause(c, NULL), e);
        CHECK_EQ_INT(pr.err_seen, e);
        if (e == CTX_CANCELED)
            cancelled++;
        else
            fired++;
        ctx_unref(c);
        check_latch_destroy(&r.go);
    }
    fprintf(stderr, "   fired %d, cancelled %d\n", fired, cancelled);
}

int main(void)
{
    check_seed();
    CHECK_EQ_INT(ctx_replace_allocator(bytes_malloc, bytes_free), 0);
    /* Memory tests first, while no deadline callback is in flight. */
    RUN_TEST(test_cancel_removes);
    RUN_TEST(test_no_accumulation);
    RUN_TEST(test_deadline);
    RUN_TEST(test_timeout);
    RUN_TEST(test_parent_cancelled_first);
    RUN_TEST(test_canceled_timeout);
    RUN_TEST(test_clamping);
    RUN_TEST(test_overflow);
    RUN_TEST(test_cause_table);
    RUN_TEST(test_layers_timeout);
    RUN_TEST(test_blocking_callback);
    RUN_TEST(test_many_deadline_callbacks);
    RUN_TEST(test_cancel_deadline_race);
    fprintf(stderr, "ok\n");
    return 0;
}
