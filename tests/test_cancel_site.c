/* SPDX-License-Identifier: MIT */

/*
 * Cancel sites: ctx_cancel and ctx_cancel_cause record where they were
 * called, every context the cancel reaches reports that site, the plain
 * functions record none, and a deadline reports "deadline" with the
 * creation site of its context when tracking is on; the site table
 * filled past its size.
 */
#include "check.h"

static void check_site(ctx_t *c, const char *file, int line, const char *func)
{
    const char *f = (const char *)1, *fn = (const char *)1;
    int l = -1;
    CHECK(ctx_cancel_site(c, &f, &l, &fn));
    if (file == NULL)
        CHECK_NULL(f);
    else
        CHECK_STR(f, file);
    CHECK_EQ_INT(l, line);
    if (func == NULL)
        CHECK_NULL(fn);
    else
        CHECK_STR(fn, func);
}

static const ctx_key_t key = { .name = "k" };

static void test_plain_cancel_records_site(void)
{
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    ctx_t *v = ctx_with_value(c, &key, NULL, NULL);
    ctx_t *g = ctx_with_timeout(v, CTX_HOUR, NULL);
    const char *f = "x";
    int l = 7;
    CHECK(!ctx_cancel_site(c, &f, &l, NULL));
    CHECK_NULL(f);
    CHECK_EQ_INT(l, 0);
    CHECK(!ctx_cancel_site(g, NULL, NULL, NULL));
    int line = __LINE__ + 1;
    ctx_cancel(h);
    check_site(c, __FILE__, line, __func__);
    check_site(v, __FILE__, line, __func__);
    check_site(g, __FILE__, line, __func__);
    /* A child born after the cancel inherits it with the cause. */
    ctx_t *late = ctx_with_cancel(v, NULL);
    check_site(late, __FILE__, line, __func__);
    /* The site does not change what ctx_cause says. */
    CHECK_CANCELED(g);
    /* A second cancel elsewhere changes nothing. */
    ctx_cancel(h);
    check_site(c, __FILE__, line, __func__);
    ctx_unref(late);
    ctx_unref(g);
    ctx_unref(v);
    ctx_unref(c);
}

static void test_cause_keeps_message_and_site(void)
{
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    ctx_t *k = ctx_with_cancel(c, NULL);
    int line = __LINE__ + 1;
    ctx_cancel_cause(h, EPIPE, "pipe closed");
    CHECK_DONE(k, CTX_CANCELED, EPIPE, "pipe closed");
    check_site(k, __FILE__, line, __func__);
    ctx_unref(k);
    ctx_unref(c);

    c = ctx_with_cancel(ctx_background(), &h);
    line = __LINE__ + 1;
    ctx_cancel_cause(h, EPIPE, NULL);
    CHECK_DONE(c, CTX_CANCELED, EPIPE, strerror(EPIPE));
    check_site(c, __FILE__, line, __func__);
    ctx_unref(c);
}

static void test_functions_record_nothing(void)
{
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    void (*fp)(ctx_cancel_t *) = ctx_cancel;
    (ctx_cancel)(h);
    fp(h);
    CHECK_CANCELED(c);
    check_site(c, NULL, 0, NULL);
    ctx_unref(c);

    c = ctx_with_cancel(ctx_background(), &h);
    (ctx_cancel_cause)(h, EIO, "io");
    CHECK_DONE(c, CTX_CANCELED, EIO, "io");
    check_site(c, NULL, 0, NULL);
    ctx_unref(c);

    CHECK(!ctx_cancel_site(NULL, NULL, NULL, NULL));
    CHECK(!ctx_cancel_site(ctx_background(), NULL, NULL, NULL));
    /* A NULL handle is still ignored through the macro. */
    ctx_cancel(NULL);
    ctx_cancel_cause(NULL, EIO, "x");
}

static void test_deadline_site(void)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), 0, NULL);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    check_site(c, NULL, 0, "deadline");
    ctx_unref(c);

    ctx_track(true);
    int line = __LINE__ + 1;
    ctx_t *d = ctx_with_timeout(ctx_background(), CTX_MILLISECOND, NULL);
    ctx_t *k = ctx_with_cancel(d, NULL);
    CHECK_EQ_INT(ctx_wait(k, 30 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    check_site(d, __FILE__, line, "deadline");
    check_site(k, __FILE__, line, "deadline");
    ctx_unref(k);
    ctx_unref(d);
    ctx_track(false);
}

/* Many sites from many threads: each cancel reports its own. */
static void *many(void *arg)
{
    (void)arg;
    for (int i = 0; i < 2000; i++) {
        ctx_cancel_t *h;
        ctx_t *c = ctx_with_cancel(ctx_background(), &h);
        int line;
        if (i & 1) {
            line = __LINE__ + 1;
            ctx_cancel(h);
        } else {
            line = __LINE__ + 1;
            ctx_cancel(h);
        }
        check_site(c, __FILE__, line, "many");
        ctx_unref(c);
    }
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        check_thread_start(&t[i], many, NULL);
    for (int i = 0; i < 4; i++)
        check_thread_join(t[i]);
}

/* More sites than the static table holds: each cancel reports its own
 * site or none (once its slots are taken), never another's; sites seen
 * before stay; a cancel with no site to record still cancels.  Last: it
 * fills the table for the rest of the process. */
static void test_table_full(void)
{
    static const char file[] = "filled.c";
    int recorded = 0, missed = 0;
    for (int line = 1; line <= 20000; line++) {
        ctx_cancel_t *h;
        ctx_t *c = ctx_with_cancel(ctx_background(), &h);
        ctx_cancel_at(h, file, line, "fill");
        CHECK_CANCELED(c);
        const char *f, *fn;
        int l;
        CHECK(ctx_cancel_site(c, &f, &l, &fn));
        if (f == NULL) {
            CHECK_EQ_INT(l, 0);
            CHECK_NULL(fn);
            missed++;
        } else {
            CHECK(f == file);
            CHECK_EQ_INT(l, line);
            CHECK_STR(fn, "fill");
            recorded++;
        }
        ctx_unref(c);
    }
    CHECK_MSG(recorded > 1000 && missed > 0, "recorded %d, missed %d", recorded, missed);
    /* An early site is found again, in its slot. */
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    ctx_cancel_at(h, file, 1, "fill");
    check_site(c, file, 1, "fill");
    ctx_unref(c);
}

int main(void)
{
    RUN_TEST(test_plain_cancel_records_site);
    RUN_TEST(test_cause_keeps_message_and_site);
    RUN_TEST(test_functions_record_nothing);
    RUN_TEST(test_deadline_site);
    RUN_TEST(test_threads);
    RUN_TEST(test_table_full);
    return 0;
}
