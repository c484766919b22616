/* SPDX-License-Identifier: MIT */

/*
 * AfterFunc: ctx_after_func() and ctx_after_stop().  Ports Go's
 * TestAfterFuncCalledAfterCancel, TestAfterFuncCalledImmediately,
 * TestAfterFuncNotCalledAfterStop, the AfterFunc half of TestCancelRemoves,
 * and afterfunc_test.go's custom-context cases; adds what C's synchronous
 * callbacks promise (which thread, after what, stop waiting for a running
 * callback, stop from inside the callback) and the races between
 * registration, stop and cancel.
 */
#include "check.h"

static const ctx_custom_ops_t other_ops = { .name = "Other" };
static const ctx_key_t some_key = { .name = "k" };

/* A callback that counts its runs and remembers its thread. */
struct probe {
    atomic_int ran;
    atomic_int returned;
    pthread_t thread;
};

static void probe_fn(void *arg)
{
    struct probe *p = arg;
    p->thread = pthread_self();
    atomic_fetch_add(&p->ran, 1);
    atomic_store(&p->returned, 1);
}

static void must_not_run(void *arg)
{
    (void)arg;
    CHECK(!"this callback must never run");
}

/* Go's TestAfterFuncCalledAfterCancel: not called before cancel; called,
 * once, by the time cancel returns (C runs it synchronously, where Go's
 * TestAfterFuncCalledAsynchronously expects a new goroutine); stop then
 * returns false. */
static void test_called_after_cancel(void)
{
    struct probe p = { 0 };
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_after_t *stop = NULL;
    CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p, &stop), 0);
    CHECK_NOT_NULL(stop);
    CHECK_EQ_INT(atomic_load(&p.ran), 0);
    ctx_cancel(cancel);
    CHECK_EQ_INT(atomic_load(&p.ran), 1);
    CHECK_EQ_INT(atomic_load(&p.returned), 1);
    CHECK(pthread_equal(p.thread, pthread_self()));
    ctx_cancel(cancel);
    CHECK_EQ_INT(atomic_load(&p.ran), 1);
    CHECK(!ctx_after_stop(stop));
    CHECK_EQ_INT(atomic_load(&p.ran), 1);
    ctx_unref(c);
}

/* Go's TestAfterFuncNotCalledAfterStop. */
static void test_not_called_after_stop(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(c, must_not_run, NULL, &stop), 0);
    CHECK(ctx_after_stop(stop));
    ctx_cancel(cancel);
    ctx_unref(c);
}

/* Go's TestAfterFuncCalledImmediately: on a done context fn runs on the
 * calling thread before ctx_after_func returns, with or without a stop
 * handle. */
static void test_called_immediately(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel(cancel);

    struct probe p = { 0 };
    ctx_after_t *stop = NULL;
    CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p, &stop), 0);
    CHECK_EQ_INT(atomic_load(&p.ran), 1);
    CHECK(pthread_equal(p.thread, pthread_self()));
    CHECK_NOT_NULL(stop);
    CHECK(!ctx_after_stop(stop));

    struct probe q = { 0 };
    CHECK_EQ_INT(ctx_after_func(c, probe_fn, &q, NULL), 0);
    CHECK_EQ_INT(atomic_load(&q.ran), 1);

    /* A child born done counts as done too. */
    ctx_t *child = ctx_with_value(c, &some_key, NULL, NULL);
    CHECK_NOT_NULL(child);
    struct probe r = { 0 };
    CHECK_EQ_INT(ctx_after_func(child, probe_fn, &r, NULL), 0);
    CHECK_EQ_INT(atomic_load(&r.ran), 1);
    ctx_unref(child);
    ctx_unref(c);
}

/* Fire-and-forget registrations run and free themselves (LeakSanitizer in
 * the sanitizer build watches the freeing). */
static void test_fire_and_forget(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    struct probe p[4] = { 0 };
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p[i], NULL), 0);
    ctx_cancel(cancel);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(atomic_load(&p[i].ran), 1);
    ctx_unref(c);
}

/* The registration holds its context: registered on a child that nobody
 * else holds, fn still runs when the parent is cancelled; and the child's
 * value is destroyed only once the registration lets go. */
static atomic_int destroyed;

static void count_destroy(void *v)
{
    (void)v;
    atomic_fetch_add(&destroyed, 1);
}

static void test_unowned_child(void)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_cancel_t *pcancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(parent);

    /* Fire-and-forget on a dropped cancel child and a dropped value child. */
    atomic_store(&destroyed, 0);
    struct probe a = { 0 }, b = { 0 };
    ctx_t *child = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(child);
    CHECK_EQ_INT(ctx_after_func(child, probe_fn, &a, NULL), 0);
    ctx_unref(child);
    ctx_t *vchild = ctx_with_value(parent, &key, NULL, count_destroy);
    CHECK_NOT_NULL(vchild);
    CHECK_EQ_INT(ctx_after_func(vchild, probe_fn, &b, NULL), 0);
    ctx_unref(vchild);
    CHECK_EQ_INT(atomic_load(&destroyed), 0);

    /* With a stop handle: stopping drops the registration's reference. */
    ctx_t *v2 = ctx_with_value(parent, &key, NULL, count_destroy);
    CHECK_NOT_NULL(v2);
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(v2, must_not_run, NULL, &stop), 0);
    ctx_unref(v2);
    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    CHECK(ctx_after_stop(stop));
    CHECK_EQ_INT(atomic_load(&destroyed), 1);

    /* With a stop handle kept across the cancel. */
    struct probe c = { 0 };
    ctx_t *v3 = ctx_with_value(parent, &key, NULL, count_destroy);
    CHECK_NOT_NULL(v3);
    ctx_after_t *stop3;
    CHECK_EQ_INT(ctx_after_func(v3, probe_fn, &c, &stop3), 0);
    ctx_unref(v3);

    ctx_cancel(pcancel);
    CHECK_EQ_INT(atomic_load(&a.ran), 1);
    CHECK_EQ_INT(atomic_load(&b.ran), 1);
    CHECK_EQ_INT(atomic_load(&c.ran), 1);
    /* The fire-and-forget registration on vchild freed itself and vchild. */
    CHECK_EQ_INT(atomic_load(&destroyed), 2);
    CHECK(!ctx_after_stop(stop3));
    CHECK_EQ_INT(atomic_load(&destroyed), 3);
    ctx_unref(parent);
}

/* On a context that can never be done fn never runs and stop says true. */
static void test_never_done(void)
{
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(ctx_background(), must_not_run, NULL, &stop), 0);
    CHECK(ctx_after_stop(stop));
    CHECK_EQ_INT(ctx_after_func(ctx_todo(), must_not_run, NULL, &stop), 0);
    CHECK(ctx_after_stop(stop));

    ctx_cancel_t *cancel;
    ctx_t *p = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(p);
    ctx_t *w = ctx_without_cancel(p);
    CHECK_NOT_NULL(w);
    ctx_t *wv = ctx_with_value(w, &some_key, NULL, NULL);
    CHECK_NOT_NULL(wv);
    ctx_after_t *s1, *s2;
    CHECK_EQ_INT(ctx_after_func(w, must_not_run, NULL, &s1), 0);
    CHECK_EQ_INT(ctx_after_func(wv, must_not_run, NULL, &s2), 0);
    /* Fire-and-forget on a never-done context: never runs, leaks nothing. */
    CHECK_EQ_INT(ctx_after_func(w, must_not_run, NULL, NULL), 0);
    CHECK_EQ_INT(ctx_after_func(ctx_background(), must_not_run, NULL, NULL), 0);
    ctx_cancel(cancel);
    CHECK(ctx_after_stop(s1));
    CHECK(ctx_after_stop(s2));
    ctx_unref(wv);
    ctx_unref(w);
    ctx_unref(p);
}

/* fn runs on the cancelling thread, after the whole subtree is done:
 * registered on P it sees P's grandchild done; registered on the grandchild
 * it sees P and a cousin done. */
struct subtree {
    ctx_t *p, *child, *grand, *cousin;
    pthread_t ran_on[2];
    atomic_int ran[2];
};

static void on_parent(void *arg)
{
    struct subtree *s = arg;
    s->ran_on[0] = pthread_self();
    CHECK_CANCELED(s->p);
    CHECK_CANCELED(s->child);
    CHECK_CANCELED(s->grand);
    CHECK_CANCELED(s->cousin);
    atomic_fetch_add(&s->ran[0], 1);
}

static void on_grand(void *arg)
{
    struct subtree *s = arg;
    s->ran_on[1] = pthread_self();
    CHECK_CANCELED(s->p);
    CHECK_CANCELED(s->child);
    CHECK_CANCELED(s->grand);
    CHECK_CANCELED(s->cousin);
    atomic_fetch_add(&s->ran[1], 1);
}

struct cancel_job {
    ctx_cancel_t *cancel;
    int cause;
    const char *msg;
    pthread_t self;
};

static void *cancel_on_thread(void *arg)
{
    struct cancel_job *j = arg;
    j->self = pthread_self();
    if (j->cause != 0)
        ctx_cancel_cause(j->cancel, j->cause, j->msg);
    else
        ctx_cancel(j->cancel);
    return NULL;
}

static void test_thread_and_order(void)
{
    struct subtree s = { 0 };
    ctx_cancel_t *cancel;
    s.p = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(s.p);
    s.child = ctx_with_cancel(s.p, NULL);
    CHECK_NOT_NULL(s.child);
    s.grand = ctx_with_value(s.child, &some_key, NULL, NULL);
    CHECK_NOT_NULL(s.grand);
    ctx_t *other = ctx_with_cancel(s.p, NULL);
    CHECK_NOT_NULL(other);
    s.cousin = ctx_with_cancel(other, NULL);
    CHECK_NOT_NULL(s.cousin);
    /* Register the grandchild's first and the parent's last, and the other
     * way round, so no registration order can hide a partial subtree. */
    CHECK_EQ_INT(ctx_after_func(s.grand, on_grand, &s, NULL), 0);
    CHECK_EQ_INT(ctx_after_func(s.p, on_parent, &s, NULL), 0);

    struct cancel_job j = { cancel, 0, NULL, pthread_self() };
    pthread_t t;
    check_thread_start(&t, cancel_on_thread, &j);
    check_thread_join(t);
    CHECK_EQ_INT(atomic_load(&s.ran[0]), 1);
    CHECK_EQ_INT(atomic_load(&s.ran[1]), 1);
    CHECK(pthread_equal(s.ran_on[0], t));
    CHECK(pthread_equal(s.ran_on[1], t));

    ctx_unref(s.cousin);
    ctx_unref(other);
    ctx_unref(s.grand);
    ctx_unref(s.child);
    ctx_unref(s.p);
}

/* ctx_after_stop from another thread while fn runs waits for fn to return.
 * fn blocks on a latch; a stopper thread calls stop; the test lets the
 * stopper reach its wait (it watches the stopper sleep in the kernel), checks
 * stop has not returned, then releases fn.  The stopper must see fn's
 * return. */
struct blocker {
    check_latch_t started, release;
    atomic_int fn_returned;
    ctx_after_t *stop;
    atomic_long stopper_tid;
    atomic_int stop_returned;
    int stop_result;
    int fn_returned_at_stop;
};

static void blocking_fn(void *arg)
{
    struct blocker *b = arg;
    check_latch_open(&b->started);
    check_latch_wait(&b->release);
    atomic_store(&b->fn_returned, 1);
}

static void *stopper(void *arg)
{
    struct blocker *b = arg;
    atomic_store(&b->stopper_tid, check_gettid());
    bool r = ctx_after_stop(b->stop);
    b->fn_returned_at_stop = atomic_load(&b->fn_returned);
    b->stop_result = r;
    atomic_store(&b->stop_returned, 1);
    return NULL;
}

static void test_stop_waits_for_fn(void)
{
    struct blocker b;
    memset(&b, 0, sizeof b);
    check_latch_init(&b.started);
    check_latch_init(&b.release);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_after_func(c, blocking_fn, &b, &b.stop), 0);

    struct cancel_job j = { cancel, 0, NULL, pthread_self() };
    pthread_t canceller, stop_thread;
    check_thread_start(&canceller, cancel_on_thread, &j);
    check_latch_wait(&b.started); /* fn is running on the canceller */
    check_thread_start(&stop_thread, stopper, &b);
    while (atomic_load(&b.stopper_tid) == 0)
        sched_yield();
    check_wait_sleeping(atomic_load(&b.stopper_tid), 2000);
    CHECK_EQ_INT(atomic_load(&b.stop_returned), 0);
    check_latch_open(&b.release);
    check_thread_join(stop_thread);
    check_thread_join(canceller);
    CHECK_EQ_INT(b.stop_result, 0);
    CHECK_EQ_INT(b.fn_returned_at_stop, 1);
    check_latch_destroy(&b.started);
    check_latch_destroy(&b.release);
    ctx_unref(c);
}

/* ctx_after_stop from inside fn returns false at once, directly or through
 * a cancel that fn makes. */
struct self_stop {
    ctx_after_t *stop;
    int result;
    int ran;
    ctx_cancel_t *other; /* cancelled by fn, when set */
};

static void self_stopping_fn(void *arg)
{
    struct self_stop *s = arg;
    s->ran++;
    s->result = ctx_after_stop(s->stop);
}

static void cancel_other_fn(void *arg)
{
    struct self_stop *s = arg;
    s->ran++;
    ctx_cancel(s->other);
}

static void stop_first_fn(void *arg)
{
    struct self_stop *first = arg;
    first->result = ctx_after_stop(first->stop);
}

static void test_stop_inside_fn(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    struct self_stop s = { NULL, -1, 0, NULL };
    CHECK_EQ_INT(ctx_after_func(c, self_stopping_fn, &s, &s.stop), 0);
    ctx_cancel(cancel);
    CHECK_EQ_INT(s.ran, 1);
    CHECK_EQ_INT(s.result, 0);
    ctx_unref(c);

    /* fn on A cancels B; B's fn stops A's registration. */
    ctx_cancel_t *ca, *cb;
    ctx_t *a = ctx_with_cancel(ctx_background(), &ca);
    ctx_t *b = ctx_with_cancel(ctx_background(), &cb);
    CHECK_NOT_NULL(a);
    CHECK_NOT_NULL(b);
    struct self_stop first = { NULL, -1, 0, cb };
    CHECK_EQ_INT(ctx_after_func(a, cancel_other_fn, &first, &first.stop), 0);
    CHECK_EQ_INT(ctx_after_func(b, stop_first_fn, &first, NULL), 0);
    ctx_cancel(ca);
    CHECK_EQ_INT(first.ran, 1);
    CHECK_EQ_INT(first.result, 0);
    CHECK_CANCELED(b);
    ctx_unref(b);
    ctx_unref(a);
}

/* fn runs with no library lock held: it may cancel, create children of the
 * context being cancelled (born done), register more callbacks (which run
 * at once) and read everything. */
struct reentrant {
    ctx_t *ctx;
    ctx_cancel_t *sibling;
    struct probe inner;
    int ok;
};

static void reentrant_fn(void *arg)
{
    struct reentrant *r = arg;
    CHECK_CANCELED(r->ctx);
    ctx_t *kid = ctx_with_cancel(r->ctx, NULL);
    CHECK_NOT_NULL(kid);
    CHECK_CANCELED(kid);
    CHECK_EQ_INT(ctx_after_func(r->ctx, probe_fn, &r->inner, NULL), 0);
    CHECK_EQ_INT(atomic_load(&r->inner.ran), 1);
    char buf[64];
    CHECK(ctx_describe(kid, buf, sizeof buf) > 0);
    ctx_unref(kid);
    ctx_cancel(r->sibling);
    r->ok = 1;
}

static void test_reentrant_fn(void)
{
    ctx_t *root = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(root);
    ctx_cancel_t *cancel, *sib_cancel;
    ctx_t *c = ctx_with_cancel(root, &cancel);
    CHECK_NOT_NULL(c);
    ctx_t *sib = ctx_with_cancel(root, &sib_cancel);
    CHECK_NOT_NULL(sib);
    struct reentrant r;
    memset(&r, 0, sizeof r);
    r.ctx = c;
    r.sibling = sib_cancel;
    CHECK_EQ_INT(ctx_after_func(c, reentrant_fn, &r, NULL), 0);
    ctx_cancel(cancel);
    CHECK_EQ_INT(r.ok, 1);
    CHECK_CANCELED(sib);
    CHECK_NOT_DONE(root);
    ctx_unref(sib);
    ctx_unref(c);
    ctx_unref(root);
}

/* Many registrations on one context: every third is stopped first; the rest
 * run exactly once each. */
static void test_many_registrations(void)
{
    enum { N = 1000 };
    static struct probe p[N];
    static ctx_after_t *stop[N];
    memset(p, 0, sizeof p);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p[i], &stop[i]), 0);
    for (int i = 0; i < N; i += 3)
        CHECK(ctx_after_stop(stop[i]));
    ctx_cancel(cancel);
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&p[i].ran), i % 3 == 0 ? 0 : 1);
        if (i % 3 != 0)
            CHECK(!ctx_after_stop(stop[i]));
    }
    ctx_unref(c);
}

/* EINVAL for a NULL context or function; stop(NULL) is false. */
static void test_einval(void)
{
    ctx_after_t *stop = NULL;
    CHECK_EQ_INT(ctx_after_func(NULL, probe_fn, NULL, &stop), EINVAL);
    CHECK_EQ_INT(ctx_after_func(NULL, probe_fn, NULL, NULL), EINVAL);
    CHECK_EQ_INT(ctx_after_func(ctx_background(), NULL, NULL, &stop), EINVAL);
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(ctx_after_func(c, NULL, NULL, &stop), EINVAL);
    CHECK_EQ_INT(ctx_after_func(c, NULL, NULL, NULL), EINVAL);
    CHECK(!ctx_after_stop(NULL));
    ctx_unref(c);
}

/* The AfterFunc half of Go's TestCancelRemoves: registering and stopping
 * leaves nothing behind in a live context, however often it is done. */
static void test_stop_removes(void)
{
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    long base = check_alloc_live();
    long rounds = check_scale(100000);
    for (long i = 0; i < rounds; i++) {
        ctx_after_t *stop;
        CHECK_EQ_INT(ctx_after_func(c, must_not_run, NULL, &stop), 0);
        CHECK(ctx_after_stop(stop));
        if (i % 4096 == 0)
            CHECK_LE_INT(check_alloc_live(), base);
    }
    CHECK_EQ_INT(check_alloc_live(), base);
    ctx_unref(c);
}

/* afterfunc_test.go's custom-context cases: AfterFunc on a custom context
 * runs when the custom context is cancelled from outside; a cancel child and
 * a registration under it unregister cleanly. */
static void test_custom_context(void)
{
    ctx_cancel_t *ccancel;
    ctx_t *custom = ctx_with_custom(ctx_background(), &other_ops, NULL, &ccancel);
    CHECK_NOT_NULL(custom);
    long base = check_alloc_live();
    ctx_cancel_t *k1, *k2;
    ctx_t *c1 = ctx_with_cancel(custom, &k1);
    ctx_t *c2 = ctx_with_cancel(custom, &k2);
    CHECK_NOT_NULL(c1);
    CHECK_NOT_NULL(c2);
    ctx_cancel(k1);
    ctx_cancel(k2);
    ctx_unref(c1);
    ctx_unref(c2);
    ctx_after_t *s;
    CHECK_EQ_INT(ctx_after_func(custom, must_not_run, NULL, &s), 0);
    CHECK(ctx_after_stop(s));
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_NOT_DONE(custom);

    struct probe p = { 0 };
    ctx_t *child = ctx_with_cancel(custom, NULL);
    CHECK_NOT_NULL(child);
    CHECK_EQ_INT(ctx_after_func(custom, probe_fn, &p, NULL), 0);
    struct cancel_job j = { ccancel, ECONNABORTED, "outside", pthread_self() };
    pthread_t t;
    check_thread_start(&t, cancel_on_thread, &j);
    check_thread_join(t);
    CHECK_EQ_INT(atomic_load(&p.ran), 1);
    CHECK(pthread_equal(p.thread, t));
    CHECK_DONE(child, CTX_CANCELED, ECONNABORTED, "outside");
    ctx_unref(child);
    ctx_unref(custom);
}

/* Races.  stop against cancel: exactly one wins; stop's answer says which,
 * and a false answer comes only after fn has returned. */
struct race {
    pthread_barrier_t *start;
    ctx_cancel_t *cancel;
    ctx_after_t *stop;
    struct probe *p;
    int stop_result;
    int returned_at_stop;
};

static void *race_cancel(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->start);
    ctx_cancel(r->cancel);
    return NULL;
}

static void *race_stop(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(r->start);
    r->stop_result = ctx_after_stop(r->stop);
    r->returned_at_stop = atomic_load(&r->p->returned);
    return NULL;
}

static void test_stop_cancel_race(void)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    long rounds = check_scale(3000), stopped = 0;
    for (long i = 0; i < rounds; i++) {
        struct probe p = { 0 };
        struct race r = { &start, NULL, NULL, &p, -1, -1 };
        ctx_t *c = ctx_with_cancel(ctx_background(), &r.cancel);
        CHECK_NOT_NULL(c);
        CHECK_EQ_INT(ctx_after_func(c, probe_fn, &p, &r.stop), 0);
        pthread_t a, b;
        check_thread_start(&a, race_cancel, &r);
        check_thread_start(&b, race_stop, &r);
        check_thread_join(a);
        check_thread_join(b);
        if (r.stop_result) {
            CHECK_EQ_INT(atomic_load(&p.ran), 0);
            stopped++;
        } else {
            CHECK_EQ_INT(atomic_load(&p.ran), 1);
            CHECK_EQ_INT(r.returned_at_stop, 1);
        }
        ctx_unref(c);
    }
    fprintf(stderr, "   stop won %ld of %ld\n", stopped, rounds);
    pthread_barrier_destroy(&start);
}

/* Registration against cancel: fn runs exactly once either way, on one of
 * the two threads. */
struct reg_race {
    pthread_barrier_t *start;
    ctx_t *ctx;
    ctx_cancel_t *cancel;
    struct probe *p;
    ctx_after_t *stop;
    bool with_stop;
};

static void *reg_register(void *arg)
{
    struct reg_race *r = arg;
    pthread_barrier_wait(r->start);
    CHECK_EQ_INT(ctx_after_func(r->ctx, probe_fn, r->p, r->with_stop ? &r->stop : NULL), 0);
    return NULL;
}

static void *reg_cancel(void *arg)
{
    struct reg_race *r = arg;
    pthread_barrier_wait(r->start);
    ctx_cancel(r->cancel);
    return NULL;
}

static void test_register_cancel_race(void)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    long rounds = check_scale(3000);
    for (long i = 0; i < rounds; i++) {
        struct probe p = { 0 };
        struct reg_race r = { &start, NULL, NULL, &p, NULL, i % 2 == 0 };
        ctx_t *root = ctx_with_cancel(ctx_background(), &r.cancel);
        CHECK_NOT_NULL(root);
        /* Register on a grandchild, so the cancel has a walk to do. */
        ctx_t *mid = ctx_with_cancel(root, NULL);
        CHECK_NOT_NULL(mid);
        r.ctx = ctx_with_value(mid, &some_key, NULL, NULL);
        CHECK_NOT_NULL(r.ctx);
        pthread_t a, b;
        check_thread_start(&a, reg_register, &r);
        check_thread_start(&b, reg_cancel, &r);
        check_thread_join(a);
        check_thread_join(b);
        CHECK_EQ_INT(atomic_load(&p.ran), 1);
        CHECK(pthread_equal(p.thread, a) || pthread_equal(p.thread, b));
        if (r.with_stop)
            CHECK(!ctx_after_stop(r.stop));
        ctx_unref(r.ctx);
        ctx_unref(mid);
        ctx_unref(root);
    }
    pthread_barrier_destroy(&start);
}

int main(void)
{
    check_alloc_install();
    RUN_TEST(test_called_after_cancel);
    RUN_TEST(test_not_called_after_stop);
    RUN_TEST(test_called_immediately);
    RUN_TEST(test_fire_and_forget);
    RUN_TEST(test_unowned_child);
    RUN_TEST(test_never_done);
    RUN_TEST(test_thread_and_order);
    RUN_TEST(test_stop_waits_for_fn);
    RUN_TEST(test_stop_inside_fn);
    RUN_TEST(test_reentrant_fn);
    RUN_TEST(test_many_registrations);
    RUN_TEST(test_einval);
    RUN_TEST(test_stop_removes);
    RUN_TEST(test_custom_context);
    RUN_TEST(test_stop_cancel_race);
    RUN_TEST(test_register_cancel_race);
    return 0;
}
