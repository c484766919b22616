/* SPDX-License-Identifier: MIT */

/*
 * Causes: Go's TestCause table mapped to C (a cause is an int code plus an
 * optional message), Go's TestCauseRace (a poller never sees a half-written
 * cause), and the exact texts of ctx_strerror().
 */
#include "check.h"

/* The four error values of Go's table, as codes with messages. */
#define PARENT_CAUSE   EPIPE
#define CHILD_CAUSE    ECONNRESET
#define TOO_SLOW       ETIME
#define FINISHED_EARLY EALREADY

#define FOREVER (1000 * CTX_HOUR)

struct row {
    const char *name;
    ctx_t *(*make)(void); /* returns the context to inspect (one reference) */
    int err;              /* 0: not done */
    int cause;
    const char *msg; /* the expected cause text */
};

/* Each maker keeps every context it made alive through the inspected one
 * (children hold their parents) and drops the rest. */

static ctx_t *make_background(void)
{
    return ctx_background();
}

static ctx_t *make_todo(void)
{
    return ctx_todo();
}

static ctx_t *make_with_cancel(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    return ctx;
}

static ctx_t *make_with_cancel_cause(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, PARENT_CAUSE, "parentCause");
    return ctx;
}

static ctx_t *make_with_cancel_cause_nil(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, 0, NULL);
    return ctx;
}

/* A cause code with no message: its text is the C library's. */
static ctx_t *make_cause_without_msg(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, ENOSPC, NULL);
    return ctx;
}

/* CTX_CANCELED given as a cause, with a message of its own. */
static ctx_t *make_canceled_with_msg(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, CTX_CANCELED, "shutting down");
    return ctx;
}

/* Cause code 0 ("no cause") with a message: the code is err's, the text is
 * the message. */
static ctx_t *make_no_code_with_msg(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, 0, "closing time");
    return ctx;
}

/* Two levels: a parent and its child, each cancelled once, with a cause
 * (code and message) or plainly (code 0); first says which goes first ('p'
 * or 'c').  Returns the child. */
static ctx_t *two_levels(int parent_cause, const char *pmsg, int child_cause, const char *cmsg,
                         char first)
{
    ctx_cancel_t *pc, *cc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *c = ctx_with_cancel(p, &cc);
    CHECK_NOT_NULL(c);
    for (int step = 0; step < 2; step++) {
        bool parent_now = (step == 0) == (first == 'p');
        if (parent_now) {
            if (parent_cause)
                ctx_cancel_cause(pc, parent_cause, pmsg);
            else
                ctx_cancel(pc);
        } else {
            if (child_cause)
                ctx_cancel_cause(cc, child_cause, cmsg);
            else
                ctx_cancel(cc);
        }
    }
    ctx_unref(p);
    return c;
}

static ctx_t *make_parent_cause_before_child(void)
{
    return two_levels(PARENT_CAUSE, "parentCause", CHILD_CAUSE, "childCause", 'p');
}

static ctx_t *make_parent_cause_after_child(void)
{
    return two_levels(PARENT_CAUSE, "parentCause", CHILD_CAUSE, "childCause", 'c');
}

static ctx_t *make_parent_cause_before_nil(void)
{
    return two_levels(PARENT_CAUSE, "parentCause", 0, NULL, 'p');
}

static ctx_t *make_parent_cause_after_nil(void)
{
    return two_levels(PARENT_CAUSE, "parentCause", 0, NULL, 'c');
}

static ctx_t *make_child_cause_after_nil(void)
{
    return two_levels(0, NULL, CHILD_CAUSE, "childCause", 'p');
}

static ctx_t *make_child_cause_before_nil(void)
{
    return two_levels(0, NULL, CHILD_CAUSE, "childCause", 'c');
}

/* A cause given through a value layer in between reaches the bottom. */
static ctx_t *make_cause_through_value(void)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *v = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *c = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(pc, PARENT_CAUSE, "parentCause");
    ctx_unref(v);
    ctx_unref(p);
    return c;
}

/* Go's TestWithCancelCanceledParent: born under a parent cancelled with a
 * cause. */
static ctx_t *make_born_under_cause(void)
{
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_cancel_cause(pc, PARENT_CAUSE, "Because!");
    ctx_t *c = ctx_with_cancel(p, NULL);
    CHECK_NOT_NULL(c);
    ctx_unref(p);
    return c;
}

static ctx_t *make_with_timeout(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 0, &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    return ctx;
}

static ctx_t *make_with_timeout_canceled(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), FOREVER, &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    return ctx;
}

static ctx_t *make_with_timeout_cause(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_timeout_cause(ctx_background(), 0, TOO_SLOW, "tooSlow", &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    return ctx;
}

static ctx_t *make_with_timeout_cause_canceled(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_timeout_cause(ctx_background(), FOREVER, TOO_SLOW, "tooSlow", &c);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    return ctx;
}

static ctx_t *make_with_timeout_cause_stacked(void)
{
    ctx_cancel_t *c;
    ctx_t *p = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(p);
    ctx_t *ctx = ctx_with_timeout_cause(p, 0, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, FINISHED_EARLY, "finishedEarly");
    ctx_unref(p);
    return ctx;
}

static ctx_t *make_with_timeout_cause_stacked_canceled(void)
{
    ctx_cancel_t *c;
    ctx_t *p = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(p);
    ctx_t *ctx = ctx_with_timeout_cause(p, FOREVER, TOO_SLOW, "tooSlow", NULL);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, FINISHED_EARLY, "finishedEarly");
    ctx_unref(p);
    return ctx;
}

static ctx_t *make_without_cancel(void)
{
    return ctx_without_cancel(ctx_background());
}

static ctx_t *make_without_cancel_canceled(void)
{
    ctx_cancel_t *c;
    ctx_t *p = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(p);
    ctx_t *ctx = ctx_without_cancel(p);
    CHECK_NOT_NULL(ctx);
    ctx_cancel_cause(c, FINISHED_EARLY, "finishedEarly");
    ctx_unref(p);
    return ctx;
}

static ctx_t *make_without_cancel_timeout(void)
{
    ctx_cancel_t *c;
    ctx_t *p = ctx_with_timeout_cause(ctx_background(), 0, TOO_SLOW, "tooSlow", &c);
    CHECK_NOT_NULL(p);
    ctx_t *ctx = ctx_without_cancel(p);
    CHECK_NOT_NULL(ctx);
    ctx_cancel(c);
    ctx_unref(p);
    return ctx;
}

/* Go's TestCause, row by row, plus rows for what C adds (a code without a
 * message, CTX_CANCELED with a message, a value layer in between). */
static void test_cause_table(void)
{
    char enospc[128];
    snprintf(enospc, sizeof enospc, "%s", strerror(ENOSPC));
    const struct row rows[] = {
        { "Background", make_background, 0, 0, NULL },
        { "TODO", make_todo, 0, 0, NULL },
        { "WithCancel", make_with_cancel, CTX_CANCELED, CTX_CANCELED, "context canceled" },
        { "WithCancelCause", make_with_cancel_cause, CTX_CANCELED, PARENT_CAUSE, "parentCause" },
        { "WithCancelCause nil", make_with_cancel_cause_nil, CTX_CANCELED, CTX_CANCELED,
          "context canceled" },
        { "cause without message", make_cause_without_msg, CTX_CANCELED, ENOSPC, enospc },
        { "CTX_CANCELED with message", make_canceled_with_msg, CTX_CANCELED, CTX_CANCELED,
          "shutting down" },
        { "no code, with message", make_no_code_with_msg, CTX_CANCELED, CTX_CANCELED,
          "closing time" },
        { "parent cause before child", make_parent_cause_before_child, CTX_CANCELED, PARENT_CAUSE,
          "parentCause" },
        { "parent cause after child", make_parent_cause_after_child, CTX_CANCELED, CHILD_CAUSE,
          "childCause" },
        { "parent cause before nil", make_parent_cause_before_nil, CTX_CANCELED, PARENT_CAUSE,
          "parentCause" },
        { "parent cause after nil", make_parent_cause_after_nil, CTX_CANCELED, CTX_CANCELED,
          "context canceled" },
        { "child cause after nil", make_child_cause_after_nil, CTX_CANCELED, CTX_CANCELED,
          "context canceled" },
        { "child cause before nil", make_child_cause_before_nil, CTX_CANCELED, CHILD_CAUSE,
          "childCause" },
        { "cause through a value layer", make_cause_through_value, CTX_CANCELED, PARENT_CAUSE,
          "parentCause" },
        { "born under a cancelled parent", make_born_under_cause, CTX_CANCELED, PARENT_CAUSE,
          "Because!" },
        { "WithTimeout", make_with_timeout, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED,
          "context deadline exceeded" },
        { "WithTimeout canceled", make_with_timeout_canceled, CTX_CANCELED, CTX_CANCELED,
          "context canceled" },
        { "WithTimeoutCause", make_with_timeout_cause, CTX_DEADLINE_EXCEEDED, TOO_SLOW, "tooSlow" },
        { "WithTimeoutCause canceled", make_with_timeout_cause_canceled, CTX_CANCELED, CTX_CANCELED,
          "context canceled" },
        { "WithTimeoutCause stacked", make_with_timeout_cause_stacked, CTX_DEADLINE_EXCEEDED,
          TOO_SLOW, "tooSlow" },
        { "WithTimeoutCause stacked canceled", make_with_timeout_cause_stacked_canceled,
          CTX_CANCELED, FINISHED_EARLY, "finishedEarly" },
        { "WithoutCancel", make_without_cancel, 0, 0, NULL },
        { "WithoutCancel canceled", make_without_cancel_canceled, 0, 0, NULL },
        { "WithoutCancel timeout", make_without_cancel_timeout, 0, 0, NULL },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const struct row *t = &rows[i];
        fprintf(stderr, "   %s\n", t->name);
        ctx_t *ctx = t->make();
        CHECK_NOT_NULL(ctx);
        const char *msg = "sentinel";
        int err = ctx_err(ctx);
        int cause = ctx_cause(ctx, &msg);
        CHECK_MSG(err == t->err, "%s: err %d want %d", t->name, err, t->err);
        CHECK_MSG(cause == t->cause, "%s: cause %d want %d", t->name, cause, t->cause);
        if (t->msg != NULL)
            CHECK_MSG(msg != NULL && strcmp(msg, t->msg) == 0, "%s: msg \"%s\" want \"%s\"",
                      t->name, msg ? msg : "(null)", t->msg);
        /* With no cause given, the cause is err, text and all. */
        if (t->err != 0 && t->cause == t->err && t->msg != NULL &&
            strcmp(t->msg, "shutting down") != 0 && strcmp(t->msg, "closing time") != 0)
            CHECK_STR(msg, ctx_strerror(t->err));
        /* Not done: the text is NULL. */
        if (t->err == 0)
            CHECK_NULL(msg);
        /* ctx_cause with a NULL msg pointer is fine. */
        CHECK_EQ_INT(ctx_cause(ctx, NULL), t->cause);
        ctx_unref(ctx);
    }
}

/* ctx_strerror: exact texts for the two context errors, strerror for the
 * rest, and a stable pointer. */
static void test_strerror(void)
{
    /* Go's TestDeadlineExceededSupportsTimeout, in C: the deadline error is
     * the errno that means "timed out", the cancel error ECANCELED. */
    CHECK_EQ_INT(CTX_DEADLINE_EXCEEDED, ETIMEDOUT);
    CHECK_EQ_INT(CTX_CANCELED, ECANCELED);
    CHECK_STR(ctx_strerror(CTX_CANCELED), "context canceled");
    CHECK_STR(ctx_strerror(CTX_DEADLINE_EXCEEDED), "context deadline exceeded");
    const int others[] = { EPIPE, EINVAL, ENOMEM, ENOENT, EAGAIN, EIO, ETIME };
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "%s", strerror(others[i]));
        CHECK_STR(ctx_strerror(others[i]), want);
    }
    /* The two context texts are constants: the same on every call. */
    const char *a = ctx_strerror(CTX_CANCELED);
    ctx_strerror(EPIPE);
    CHECK_STR(a, "context canceled");
}

/* The cause text of a code given without a message stays what it was for as
 * long as the context lives, even for a code the C library does not know
 * (whose strerror text is built in a buffer that later calls reuse). */
static void test_cause_text_is_stable(void)
{
    ctx_cancel_t *c1, *c2;
    ctx_t *a = ctx_with_cancel(ctx_background(), &c1);
    ctx_t *b = ctx_with_cancel(ctx_background(), &c2);
    CHECK_NOT_NULL(a);
    CHECK_NOT_NULL(b);
    char want_a[128], want_b[128];
    snprintf(want_a, sizeof want_a, "%s", strerror(4001));
    snprintf(want_b, sizeof want_b, "%s", strerror(4002));

    ctx_cancel_cause(c1, 4001, NULL);
    const char *ma = NULL;
    CHECK_EQ_INT(ctx_cause(a, &ma), 4001);
    CHECK_STR(ma, want_a);

    ctx_cancel_cause(c2, 4002, NULL);
    const char *mb = NULL;
    CHECK_EQ_INT(ctx_cause(b, &mb), 4002);
    (void)strerror(4003);
    (void)ctx_strerror(4004);
    CHECK_STR(mb, want_b);
    CHECK_STR(ma, want_a);
    ctx_unref(b);
    ctx_unref(a);
}

/* Go's TestCauseRace, made stricter: while one thread cancels with a cause,
 * another polls err and cause without waiting.  It may see "not done" or the
 * full final answer, never a mix: once err is non-zero the cause code and
 * text must be complete, and a non-zero cause comes with err set. */
struct race {
    ctx_t *ctx;
    ctx_cancel_t *cancel;
    pthread_barrier_t *start;
    int code;
    char msg[48];
};

static void *race_canceller(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->start);
    ctx_cancel_cause(r->cancel, r->code, r->msg);
    return NULL;
}

static void test_cause_race(void)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    long rounds = check_scale(2000);
    for (long i = 0; i < rounds; i++) {
        struct race r;
        r.start = &start;
        r.code = 5000 + (int)(i % 100);
        snprintf(r.msg, sizeof r.msg, "TestCauseRace %ld", i);
        r.ctx = ctx_with_cancel(ctx_background(), &r.cancel);
        CHECK_NOT_NULL(r.ctx);
        /* Poll a descendant too: its cause is copied during propagation. */
        ctx_t *child = ctx_with_cancel(r.ctx, NULL);
        CHECK_NOT_NULL(child);

        pthread_t t;
        check_thread_start(&t, race_canceller, &r);
        pthread_barrier_wait(&start);
        for (;;) {
            int seen_err[2], seen_cause[2];
            const char *seen_msg[2] = { NULL, NULL };
            ctx_t *pair[2] = { r.ctx, child };
            for (int k = 0; k < 2; k++) {
                seen_err[k] = ctx_err(pair[k]);
                seen_cause[k] = ctx_cause(pair[k], &seen_msg[k]);
                if (seen_err[k] != 0) {
                    CHECK_EQ_INT(seen_err[k], CTX_CANCELED);
                    CHECK_EQ_INT(seen_cause[k], r.code);
                    CHECK_STR(seen_msg[k], r.msg);
                } else if (seen_cause[k] != 0) {
                    /* Done between the two loads: must be the final answer. */
                    CHECK_EQ_INT(seen_cause[k], r.code);
                    CHECK_STR(seen_msg[k], r.msg);
                    CHECK_EQ_INT(ctx_err(pair[k]), CTX_CANCELED);
                }
            }
            if (seen_err[0] != 0 && seen_err[1] != 0)
                break;
            sched_yield();
        }
        check_thread_join(t);
        CHECK_DONE(child, CTX_CANCELED, r.code, r.msg);
        ctx_unref(child);
        ctx_unref(r.ctx);
    }
    pthread_barrier_destroy(&start);
}

int main(void)
{
    RUN_TEST(test_cause_table);
    RUN_TEST(test_strerror);
    RUN_TEST(test_cause_text_is_stable);
    RUN_TEST(test_cause_race);
    return 0;
}
