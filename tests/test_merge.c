/* SPDX-License-Identifier: MIT */

/*
 * ctx_merge: done with the first parent that is done (its err, cause and
 * cancel site), earliest deadline, values in parent order, no trace left
 * in any parent once done or freed, the same parent twice, parents already
 * done, bad input, merges cancelled from many threads at once, and a merge
 * cancelled while ctx_merge is still linking it.
 */
#include "check.h"

static const ctx_key_t k1 = { .name = "k1" };
static const ctx_key_t k2 = { .name = "k2" };
static const ctx_key_t k3 = { .name = "k3" };

static atomic_int fired;
static void count_fire(void *arg)
{
    (void)arg;
    atomic_fetch_add(&fired, 1);
}

static void test_second_parent_cancels(void)
{
    ctx_cancel_t *h1, *h2, *hm;
    ctx_t *a = ctx_with_cancel(ctx_background(), &h1);
    ctx_t *b = ctx_with_cancel(ctx_background(), &h2);
    ctx_t *ps[2] = { a, b };
    ctx_t *m = ctx_merge(ps, 2, &hm);
    CHECK_NOT_NULL(m);
    CHECK_NOT_NULL(hm);
    ctx_t *kid = ctx_with_cancel(m, NULL);
    CHECK_NOT_DONE(m);
    atomic_store(&fired, 0);
    CHECK_EQ_INT(ctx_after_func(m, count_fire, NULL, NULL), 0);
    int line = __LINE__ + 1;
    ctx_cancel_cause(h2, EPIPE, "b broke");
    CHECK_DONE(m, CTX_CANCELED, EPIPE, "b broke");
    CHECK_DONE(kid, CTX_CANCELED, EPIPE, "b broke");
    CHECK_EQ_INT(atomic_load(&fired), 1);
    const char *file, *fn;
    int l;
    CHECK(ctx_cancel_site(kid, &file, &l, &fn));
    CHECK_STR(file, __FILE__);
    CHECK_EQ_INT(l, line);
    CHECK_STR(fn, __func__);
    CHECK_NOT_DONE(a);
    ctx_unref(kid);
    ctx_unref(m);
    ctx_cancel(h1);
    ctx_unref(a);
    ctx_unref(b);
}

static void test_first_parent_cancels(void)
{
    ctx_cancel_t *h1;
    ctx_t *a = ctx_with_cancel(ctx_background(), &h1);
    ctx_t *b = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *ps[2] = { a, b };
    ctx_t *m = ctx_merge(ps, 2, NULL);
    ctx_cancel(h1);
    CHECK_CANCELED(m);
    CHECK_NOT_DONE(b);
    ctx_unref(m);
    ctx_unref(a);
    ctx_unref(b);
}

static void test_own_cancel(void)
{
    ctx_cancel_t *hm;
    ctx_t *a = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *b = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    ctx_t *ps[2] = { a, b };
    ctx_t *m = ctx_merge(ps, 2, &hm);
    ctx_cancel(hm);
    CHECK_CANCELED(m);
    CHECK_NOT_DONE(a);
    CHECK_NOT_DONE(b);
    ctx_unref(m);
    ctx_unref(a);
    ctx_unref(b);
}

static void test_deadline_is_earliest(void)
{
    ctx_time_t now = ctx_now();
    ctx_t *a = ctx_with_deadline(ctx_background(), now + CTX_HOUR, NULL);
    ctx_t *b = ctx_with_deadline(ctx_background(), now + CTX_MINUTE, NULL);
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *ps[3] = { a, c, b };
    ctx_t *m = ctx_merge(ps, 3, NULL);
    ctx_time_t d;
    CHECK(ctx_deadline(m, &d));
    CHECK(d == now + CTX_MINUTE);
    ctx_t *kid = ctx_with_cancel(m, NULL);
    CHECK(ctx_deadline(kid, &d));
    CHECK(d == now + CTX_MINUTE);
    ctx_unref(kid);
    ctx_unref(m);
    /* No parent with a deadline: none. */
    ctx_t *ps2[2] = { c, ctx_background() };
    m = ctx_merge(ps2, 2, NULL);
    CHECK(!ctx_deadline(m, &d));
    ctx_unref(m);

    /* A short deadline on the second parent ends the merge. */
    ctx_t *e = ctx_with_timeout_cause(ctx_background(), 5 * CTX_MILLISECOND, ETIME, "slow", NULL);
    ctx_t *ps3[2] = { a, e };
    m = ctx_merge(ps3, 2, NULL);
    CHECK_EQ_INT(ctx_wait(m, 60 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_DONE(m, CTX_DEADLINE_EXCEEDED, ETIME, "slow");
    ctx_unref(m);
    ctx_unref(e);
    ctx_unref(a);
    ctx_unref(b);
    ctx_unref(c);
}

static void test_values_in_parent_order(void)
{
    static int v1 = 1, v2 = 2, v3 = 3;
    ctx_t *a = ctx_with_value(ctx_background(), &k1, &v1, NULL);
    ctx_t *b0 = ctx_with_value(ctx_background(), &k1, &v2, NULL);
    ctx_t *b = ctx_with_value(b0, &k2, &v2, NULL);
    ctx_t *c = ctx_with_value(ctx_background(), &k3, NULL, NULL); /* bound to NULL */
    ctx_t *c2 = ctx_with_value(ctx_background(), &k3, &v3, NULL);
    ctx_t *ps[4] = { a, b, c, c2 };
    ctx_t *m = ctx_merge(ps, 4, NULL);
    CHECK_NOT_NULL(m);
    CHECK_PTR_EQ(ctx_value(m, &k1), &v1); /* parents[0] first */
    CHECK_PTR_EQ(ctx_value(m, &k2), &v2);
    CHECK_NULL(ctx_value(m, &k3)); /* the binding to NULL in c wins over c2 */
    /* The merge holds its parents: their values outlive the caller's refs. */
    ctx_unref(a);
    ctx_unref(b);
    ctx_unref(b0);
    ctx_unref(c);
    ctx_unref(c2);
    ctx_t *kid = ctx_with_value(m, &k3, &v3, NULL);
    CHECK_PTR_EQ(ctx_value(kid, &k3), &v3);
    CHECK_PTR_EQ(ctx_value(kid, &k2), &v2);
    char buf[256];
    ctx_describe(m, buf, sizeof buf);
    CHECK(strstr(buf, ".Merge(4 parents)") != NULL);
    ctx_unref(kid);
    ctx_unref(m);
}

/* The parents keep no trace: an AfterFunc count on the parent is the
 * probe (ctx_dump lists the callbacks of a cancel node). */
static int callbacks_of(ctx_t *c)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    CHECK_EQ_INT(ctx_dump(c, f), 0);
    fclose(f);
    char *first_nl = strchr(s, '\n');
    if (first_nl != NULL)
        *first_nl = '\0';
    const char *p = strstr(s, "callbacks=");
    int r = p != NULL ? atoi(p + 10) : 0;
    free(s);
    return r;
}

static void test_no_trace_in_parents(void)
{
    ctx_cancel_t *ha;
    ctx_t *a = ctx_with_cancel(ctx_background(), &ha); /* long-lived */
    for (int i = 0; i < 1000; i++) {
        ctx_cancel_t *hb, *hm;
        ctx_t *b = ctx_with_cancel(ctx_background(), &hb);
        ctx_t *ps[2] = { b, a };
        ctx_t *m = ctx_merge(ps, 2, &hm);
        CHECK_EQ_INT(callbacks_of(a), 1);
        switch (i % 3) {
        case 0: /* freed while live */
            break;
        case 1: /* its own cancel */
            ctx_cancel(hm);
            CHECK_EQ_INT(callbacks_of(a), 0);
            break;
        default: /* the other parent */
            ctx_cancel(hb);
            CHECK_EQ_INT(callbacks_of(a), 0);
            break;
        }
        ctx_unref(m);
        CHECK_EQ_INT(callbacks_of(a), 0);
        ctx_unref(b);
    }
    /* The long-lived parent has no children left either. */
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    CHECK_EQ_INT(ctx_dump(a, f), 0);
    fclose(f);
    CHECK_EQ_INT((int)strlen(s), (int)(strchr(s, '\n') - s) + 1);
    free(s);
    ctx_cancel(ha);
    ctx_unref(a);
}

static void test_same_parent_twice_and_done_parents(void)
{
    ctx_cancel_t *h;
    ctx_t *a = ctx_with_cancel(ctx_background(), &h);
    ctx_t *ps[3] = { a, a, a };
    ctx_t *m = ctx_merge(ps, 3, NULL);
    CHECK_NOT_NULL(m);
    CHECK_EQ_INT(callbacks_of(a), 2);
    ctx_cancel_cause(h, EIO, "a");
    CHECK_DONE(m, CTX_CANCELED, EIO, "a");
    ctx_unref(m);

    /* Parents already done: done at birth, with the first done parent's
     * cause, whatever its position. */
    ctx_t *live = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *ps2[2] = { live, a };
    m = ctx_merge(ps2, 2, NULL);
    CHECK_DONE(m, CTX_CANCELED, EIO, "a");
    CHECK_EQ_INT(callbacks_of(live), 0);
    ctx_unref(m);
    ctx_t *ps3[2] = { a, live };
    m = ctx_merge(ps3, 2, NULL);
    CHECK_DONE(m, CTX_CANCELED, EIO, "a");
    CHECK_EQ_INT(callbacks_of(live), 0);
    ctx_unref(m);
    /* One parent: a plain child. */
    ctx_t *ps4[1] = { live };
    m = ctx_merge(ps4, 1, NULL);
    CHECK_NOT_DONE(m);
    ctx_unref(m);
    ctx_unref(live);
    ctx_unref(a);
}

/* The merge cancelled through its first parent while ctx_merge is still
 * linking it to the others: whatever the moment, no link may stay on the
 * long-lived parent once the merge is freed. */
struct birth {
    _Atomic(ctx_cancel_t *) h;
    atomic_long taken;
    atomic_int stop;
};

static void *birth_canceller(void *arg)
{
    struct birth *b = arg;
    while (!atomic_load(&b->stop)) {
        ctx_cancel_t *h = atomic_exchange(&b->h, NULL);
        if (h != NULL) {
            /* A delay that sweeps the moments of ctx_merge's work. */
            long spins = (atomic_load(&b->taken) * 37) % 2000;
            for (volatile long k = 0; k < spins; k++)
                ;
            ctx_cancel(h);
            atomic_fetch_add(&b->taken, 1);
        }
    }
    return NULL;
}

static void test_cancel_during_birth(void)
{
    struct birth b;
    atomic_init(&b.h, NULL);
    atomic_init(&b.taken, 0);
    atomic_init(&b.stop, 0);
    pthread_t t;
    check_thread_start(&t, birth_canceller, &b);
    ctx_cancel_t *hl;
    ctx_t *longlived = ctx_with_cancel(ctx_background(), &hl);
    long rounds = check_scale(5000);
    for (long i = 0; i < rounds; i++) {
        ctx_cancel_t *h0;
        ctx_t *p0 = ctx_with_cancel(ctx_background(), &h0);
        /* Many links make ctx_merge's linking a window worth hitting. */
        ctx_t *ps[32];
        ps[0] = p0;
        for (int j = 1; j < 32; j++)
            ps[j] = longlived;
        atomic_store(&b.h, h0);
        ctx_t *m = ctx_merge(ps, 32, NULL);
        CHECK_NOT_NULL(m);
        while (atomic_load(&b.taken) != i + 1)
            ;
        CHECK_CANCELED(m);
        ctx_unref(m);
        ctx_unref(p0);
        CHECK_MSG(callbacks_of(longlived) == 0, "round %ld: %d links left", i,
                  callbacks_of(longlived));
    }
    atomic_store(&b.stop, 1);
    check_thread_join(t);
    /* A link left behind would now run on a freed merge. */
    ctx_cancel(hl);
    ctx_unref(longlived);
}

/* The idiom of a compound literal passes through the call-site macro. */
static void test_compound_literal(void)
{
    ctx_t *a = ctx_with_cancel(ctx_background(), NULL);
    ctx_cancel_t *hb;
    ctx_t *b = ctx_with_cancel(ctx_background(), &hb);
    ctx_t *m = ctx_merge((ctx_t *[]){ a, b }, 2, NULL);
    CHECK_NOT_NULL(m);
    ctx_cancel(hb);
    CHECK_CANCELED(m);
    ctx_unref(m);
    ctx_unref(a);
    ctx_unref(b);
}

static void test_bad_input(void)
{
    ctx_cancel_t *h = (ctx_cancel_t *)1;
    ctx_t *ps[2] = { ctx_background(), NULL };
    CHECK_FAILS_WITH(ctx_merge(NULL, 1, &h), EINVAL);
    CHECK_NULL(h);
    CHECK_FAILS_WITH(ctx_merge(ps, 0, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_merge(ps, 2, NULL), EINVAL);
}

/* Both parents and the merge itself cancelled at once, and the merge freed
 * at the same moment, from different threads. */
struct race {
    pthread_barrier_t *bar;
    ctx_cancel_t *h;
    ctx_t *unref;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->bar);
    if (r->h != NULL)
        ctx_cancel(r->h);
    ctx_unref(r->unref);
    return NULL;
}

static void test_races(void)
{
    long rounds = check_scale(2000);
    for (long i = 0; i < rounds; i++) {
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, 3);
        ctx_cancel_t *ha, *hb, *hm;
        ctx_t *a = ctx_with_cancel(ctx_background(), &ha);
        ctx_t *b = ctx_with_cancel(ctx_background(), &hb);
        ctx_t *ps[2] = { a, b };
        ctx_t *m = ctx_merge(ps, 2, &hm);
        ctx_t *kid = ctx_with_cancel(m, NULL);
        ctx_unref(m); /* kid keeps it */
        struct race r1 = { &bar, ha, a }, r2 = { &bar, hb, b }, r3 = { &bar, NULL, kid };
        if (i % 2)
            r3.h = hm; /* the merge's own cancel too */
        pthread_t t1, t2;
        check_thread_start(&t1, racer, &r1);
        check_thread_start(&t2, racer, &r2);
        racer(&r3);
        check_thread_join(t1);
        check_thread_join(t2);
        pthread_barrier_destroy(&bar);
    }
}

int main(void)
{
    RUN_TEST(test_second_parent_cancels);
    RUN_TEST(test_first_parent_cancels);
    RUN_TEST(test_own_cancel);
    RUN_TEST(test_deadline_is_earliest);
    RUN_TEST(test_values_in_parent_order);
    RUN_TEST(test_no_trace_in_parents);
    RUN_TEST(test_same_parent_twice_and_done_parents);
    RUN_TEST(test_compound_literal);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_races);
    RUN_TEST(test_cancel_during_birth);
    return 0;
}
