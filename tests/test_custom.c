/* SPDX-License-Identifier: MIT */

/*
 * Custom contexts (ctx_with_custom) as parents: the value hook, the name and
 * describe hooks, destroy, cancellation from an outside event on another
 * thread, born-done children, no thread per child, ctx_custom_data.  Ports
 * Go's TestCustomContextPropagation, TestCustomContextCause,
 * TestCustomContextGoroutines (as "no thread per child") and the
 * otherContext cases of TestWithCancel.
 */
#include "check.h"

static const ctx_key_t key_a = { .name = "a" };
static const ctx_key_t key_b = { .name = "b" };
static const ctx_key_t key_c = { .name = "c" };
static const ctx_key_t key_d = { .name = "d" };

/* A custom context's own store: one key, one value. */
struct store {
    const ctx_key_t *key;
    void *value;
    int id;
    atomic_int calls;
    atomic_int destroyed;
    ctx_t *self; /* for the hook that calls back into the library */
};

static bool store_value(void *data, const ctx_key_t *key, void **value)
{
    struct store *s = data;
    atomic_fetch_add(&s->calls, 1);
    if (key != s->key)
        return false;
    *value = s->value;
    return true;
}

static void store_destroy(void *data)
{
    struct store *s = data;
    atomic_fetch_add(&s->destroyed, 1);
}

static size_t store_describe(void *data, char *buf, size_t size)
{
    struct store *s = data;
    int n = snprintf(buf, size, "Req(%d)", s->id);
    return n < 0 ? 0 : (size_t)n;
}

static const ctx_custom_ops_t store_ops = {
    .name = "Store",
    .value = store_value,
    .describe = NULL,
    .destroy = store_destroy,
};

static const ctx_custom_ops_t req_ops = {
    .name = "Ignored",
    .value = store_value,
    .describe = store_describe,
    .destroy = store_destroy,
};

static const ctx_custom_ops_t bare_ops = { .name = NULL };

static void store_init(struct store *s, const ctx_key_t *key, void *value)
{
    memset(s, 0, sizeof *s);
    s->key = key;
    s->value = value;
}

/* The value hook is consulted; true stops the lookup (even with a NULL
 * value), false continues with the parent; it receives the data pointer. */
static void test_value_hook(void)
{
    static const char pa[] = "pa", cb[] = "cb", vc[] = "vc", ca[] = "ca";
    ctx_t *parent = ctx_with_value(ctx_background(), &key_a, (void *)pa, NULL);
    CHECK_NOT_NULL(parent);
    struct store s;
    store_init(&s, &key_b, (void *)cb);
    ctx_t *custom = ctx_with_custom(parent, &store_ops, &s, NULL);
    CHECK_NOT_NULL(custom);
    ctx_t *child = ctx_with_value(custom, &key_c, (void *)vc, NULL);
    CHECK_NOT_NULL(child);

    CHECK_PTR_EQ(ctx_value(child, &key_c), vc);
    int before = atomic_load(&s.calls);
    CHECK_PTR_EQ(ctx_value(child, &key_b), cb);
    CHECK(atomic_load(&s.calls) > before);
    before = atomic_load(&s.calls);
    CHECK_PTR_EQ(ctx_value(child, &key_a), pa); /* hook said false */
    CHECK(atomic_load(&s.calls) > before);
    CHECK_NULL(ctx_value(child, &key_d));
    CHECK_PTR_EQ(ctx_value(custom, &key_b), cb);
    CHECK_NULL(ctx_value(parent, &key_b));

    /* A custom binding shadows the parent's, including a NULL binding. */
    struct store s2, s3;
    store_init(&s2, &key_a, (void *)ca);
    store_init(&s3, &key_a, NULL);
    ctx_t *shadow = ctx_with_custom(parent, &store_ops, &s2, NULL);
    CHECK_NOT_NULL(shadow);
    ctx_t *nullshadow = ctx_with_custom(parent, &store_ops, &s3, NULL);
    CHECK_NOT_NULL(nullshadow);
    CHECK_PTR_EQ(ctx_value(shadow, &key_a), ca);
    CHECK_NULL(ctx_value(nullshadow, &key_a));
    CHECK_PTR_EQ(ctx_value(parent, &key_a), pa);

    /* No value hook: every lookup goes to the parent. */
    ctx_t *bare = ctx_with_custom(custom, &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(bare);
    CHECK_PTR_EQ(ctx_value(bare, &key_a), pa);
    CHECK_PTR_EQ(ctx_value(bare, &key_b), cb);

    ctx_unref(bare);
    ctx_unref(nullshadow);
    ctx_unref(shadow);
    ctx_unref(child);
    ctx_unref(custom);
    ctx_unref(parent);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 1);
    CHECK_EQ_INT(atomic_load(&s2.destroyed), 1);
    CHECK_EQ_INT(atomic_load(&s3.destroyed), 1);
}

/* name and describe hooks, as ctx_describe shows them. */
static void test_names(void)
{
    struct store s;
    store_init(&s, &key_a, NULL);
    s.id = 42;
    char buf[128];
    ctx_t *named = ctx_with_custom(ctx_background(), &store_ops, &s, NULL);
    CHECK_NOT_NULL(named);
    ctx_describe(named, buf, sizeof buf);
    CHECK_STR(buf, "context.Background.Store");
    ctx_t *described = ctx_with_custom(named, &req_ops, &s, NULL);
    CHECK_NOT_NULL(described);
    ctx_describe(described, buf, sizeof buf);
    CHECK_STR(buf, "context.Background.Store.Req(42)");
    ctx_t *bare = ctx_with_custom(ctx_todo(), &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(bare);
    ctx_describe(bare, buf, sizeof buf);
    CHECK_STR(buf, "context.TODO.Custom");
    ctx_unref(bare);
    ctx_unref(described);
    ctx_unref(named);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 2);
}

/* destroy runs once, with data, when the custom context is freed: not at
 * cancel, not while a child holds it, never on a failed construction. */
static void test_destroy(void)
{
    struct store s;
    store_init(&s, &key_a, NULL);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_custom(ctx_background(), &store_ops, &s, &cancel);
    CHECK_NOT_NULL(c);
    ctx_t *child = ctx_with_cancel(c, NULL);
    CHECK_NOT_NULL(child);
    ctx_cancel(cancel);
    CHECK_CANCELED(c);
    CHECK_CANCELED(child);
    ctx_unref(c);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 0);
    CHECK_NULL(ctx_value(child, &key_b));
    ctx_unref(child);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 1);

    struct store f;
    store_init(&f, &key_a, NULL);
    CHECK_FAILS_WITH(ctx_with_custom(NULL, &store_ops, &f, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_with_custom(ctx_background(), NULL, &f, NULL), EINVAL);
    CHECK_EQ_INT(atomic_load(&f.destroyed), 0);

    /* All hooks NULL and data NULL is a valid custom context. */
    ctx_t *b = ctx_with_custom(ctx_background(), &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(b);
    CHECK_NOT_DONE(b);
    ctx_unref(b);
}

/* ctx_custom_data: the data of a custom context, NULL for anything else
 * (including the children of a custom context). */
static void test_custom_data(void)
{
    struct store s;
    store_init(&s, &key_a, NULL);
    ctx_t *c = ctx_with_custom(ctx_background(), &store_ops, &s, NULL);
    CHECK_NOT_NULL(c);
    CHECK_PTR_EQ(ctx_custom_data(c), &s);
    ctx_t *kids[3];
    kids[0] = ctx_with_cancel(c, NULL);
    kids[1] = ctx_with_value(c, &key_b, &s, NULL);
    kids[2] = ctx_without_cancel(c);
    for (int i = 0; i < 3; i++) {
        CHECK_NOT_NULL(kids[i]);
        CHECK_NULL(ctx_custom_data(kids[i]));
    }
    CHECK_NULL(ctx_custom_data(ctx_background()));
    CHECK_NULL(ctx_custom_data(ctx_todo()));
    ctx_t *nodata = ctx_with_custom(c, &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(nodata);
    CHECK_NULL(ctx_custom_data(nodata));
    ctx_unref(nodata);
    for (int i = 0; i < 3; i++)
        ctx_unref(kids[i]);
    ctx_unref(c);
}

/* A custom context cancelled by an outside event: a watcher thread blocks
 * on a pipe and calls ctx_cancel_cause on the handle when the pipe closes.
 * When that call returns (the watcher is joined) every descendant (cancel,
 * value, nested custom, their children) is done with the watcher's cause,
 * and an AfterFunc on a grandchild ran on the watcher thread. */
struct watcher {
    int fd;
    ctx_cancel_t *cancel;
};

static void *watch(void *arg)
{
    struct watcher *w = arg;
    char c;
    ssize_t n;
    do
        n = read(w->fd, &c, 1);
    while (n < 0 && errno == EINTR);
    ctx_cancel_cause(w->cancel, ECONNRESET, "peer closed");
    return NULL;
}

struct seen {
    pthread_t thread;
    atomic_int ran;
};

static void note_thread(void *arg)
{
    struct seen *s = arg;
    s->thread = pthread_self();
    atomic_fetch_add(&s->ran, 1);
}

static void test_outside_event(void)
{
    int fds[2];
    CHECK_EQ_INT(pipe(fds), 0);
    struct store s, s2;
    store_init(&s, &key_a, (void *)"conn");
    store_init(&s2, &key_b, (void *)"inner");
    ctx_cancel_t *cancel;
    ctx_t *conn = ctx_with_custom(ctx_background(), &store_ops, &s, &cancel);
    CHECK_NOT_NULL(conn);
    ctx_t *k_cancel = ctx_with_cancel(conn, NULL);
    ctx_t *k_value = ctx_with_value(conn, &key_c, NULL, NULL);
    ctx_t *k_custom = ctx_with_custom(k_value, &store_ops, &s2, NULL);
    ctx_t *grand = ctx_with_cancel(k_custom, NULL);
    /* afterfunc_test.go's TestCustomContextAfterFuncTimeout: a deadline
     * child (far off) of the custom context. */
    ctx_t *k_timer = ctx_with_timeout(conn, 1000 * CTX_HOUR, NULL);
    ctx_t *all[] = { conn, k_cancel, k_value, k_custom, grand, k_timer };
    enum { ALL = sizeof all / sizeof all[0] };
    for (int i = 0; i < ALL; i++) {
        CHECK_NOT_NULL(all[i]);
        CHECK_NOT_DONE(all[i]);
    }
    struct seen seen = { 0 };
    CHECK_EQ_INT(ctx_after_func(grand, note_thread, &seen, NULL), 0);

    struct watcher w = { fds[0], cancel };
    pthread_t t;
    check_thread_start(&t, watch, &w);
    CHECK_NOT_DONE(grand);
    close(fds[1]);
    check_thread_join(t);
    for (int i = 0; i < ALL; i++)
        CHECK_DONE(all[i], CTX_CANCELED, ECONNRESET, "peer closed");
    CHECK_EQ_INT(atomic_load(&seen.ran), 1);
    CHECK(pthread_equal(seen.thread, t));
    /* Values still answer through the (now done) custom layers. */
    CHECK_PTR_EQ(ctx_value(grand, &key_a), "conn");
    CHECK_PTR_EQ(ctx_value(grand, &key_b), "inner");
    close(fds[0]);
    for (int i = ALL - 1; i >= 0; i--)
        ctx_unref(all[i]);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 1);
    CHECK_EQ_INT(atomic_load(&s2.destroyed), 1);
}

/* Children of an already-cancelled custom context are born done, and a
 * custom context under a done parent is born done, with the cause. */
static void test_born_done(void)
{
    struct store s;
    store_init(&s, &key_a, NULL);
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_custom(ctx_background(), &store_ops, &s, &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(cancel, EHOSTUNREACH, "gone");
    ctx_t *kids[3];
    kids[0] = ctx_with_cancel(c, NULL);
    kids[1] = ctx_with_value(c, &key_b, NULL, NULL);
    kids[2] = ctx_with_custom(c, &bare_ops, NULL, NULL);
    for (int i = 0; i < 3; i++) {
        CHECK_NOT_NULL(kids[i]);
        CHECK_DONE(kids[i], CTX_CANCELED, EHOSTUNREACH, "gone");
    }
    for (int i = 0; i < 3; i++)
        ctx_unref(kids[i]);
    ctx_unref(c);
}

/* Go's TestCustomContextPropagation: a cause given above a custom context
 * reaches a child below it. */
static void test_propagation(void)
{
    ctx_cancel_t *cancel1;
    ctx_t *c1 = ctx_with_cancel(ctx_background(), &cancel1);
    CHECK_NOT_NULL(c1);
    ctx_t *c2 = ctx_with_custom(c1, &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(c2);
    ctx_t *c3 = ctx_with_cancel(c2, NULL);
    CHECK_NOT_NULL(c3);
    ctx_cancel_cause(cancel1, EPROTO, "TestCustomContextPropagation");
    CHECK_DONE(c3, CTX_CANCELED, EPROTO, "TestCustomContextPropagation");
    CHECK_DONE(c2, CTX_CANCELED, EPROTO, "TestCustomContextPropagation");
    ctx_unref(c3);
    ctx_unref(c2);
    ctx_unref(c1);
}

/* Go's TestCustomContextCause: a custom context cancelled without a cause
 * reports CTX_CANCELED; cancelling a child with a cause leaves the custom
 * parent alone; cancelling the parent later leaves the child's cause; and
 * cancelling the custom context cancels its child. */
static void test_cause(void)
{
    ctx_cancel_t *ccancel;
    ctx_t *ccc = ctx_with_custom(ctx_background(), &bare_ops, NULL, &ccancel);
    CHECK_NOT_NULL(ccc);
    ctx_cancel(ccancel);
    CHECK_CANCELED(ccc);
    ctx_unref(ccc);

    ccc = ctx_with_custom(ctx_background(), &bare_ops, NULL, &ccancel);
    CHECK_NOT_NULL(ccc);
    ctx_cancel_t *child_cancel;
    ctx_t *c = ctx_with_cancel(ccc, &child_cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel_cause(child_cancel, EBADMSG, "TestCustomContextCause");
    CHECK_DONE(c, CTX_CANCELED, EBADMSG, "TestCustomContextCause");
    CHECK_NOT_DONE(ccc);
    ctx_cancel(ccancel);
    CHECK_DONE(c, CTX_CANCELED, EBADMSG, "TestCustomContextCause");
    CHECK_CANCELED(ccc);
    ctx_unref(c);
    ctx_unref(ccc);

    ccc = ctx_with_custom(ctx_background(), &bare_ops, NULL, &ccancel);
    CHECK_NOT_NULL(ccc);
    c = ctx_with_cancel(ccc, NULL);
    CHECK_NOT_NULL(c);
    ctx_cancel(ccancel);
    CHECK_CANCELED(c);
    CHECK_CANCELED(ccc);
    ctx_unref(c);
    ctx_unref(ccc);
}

/* A custom context made with cancel == NULL is still cancelled by its
 * parent; under a without layer it is cancelled only by its own handle. */
static void test_cancel_paths(void)
{
    ctx_cancel_t *pcancel;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(p);
    ctx_t *noh = ctx_with_custom(p, &bare_ops, NULL, NULL);
    CHECK_NOT_NULL(noh);
    ctx_t *w = ctx_without_cancel(p);
    CHECK_NOT_NULL(w);
    ctx_cancel_t *wcancel;
    ctx_t *under_w = ctx_with_custom(w, &bare_ops, NULL, &wcancel);
    CHECK_NOT_NULL(under_w);
    ctx_cancel(pcancel);
    CHECK_CANCELED(noh);
    CHECK_NOT_DONE(under_w);
    ctx_cancel_cause(wcancel, ENOLINK, "own");
    CHECK_DONE(under_w, CTX_CANCELED, ENOLINK, "own");
    CHECK_NOT_DONE(w);
    ctx_unref(under_w);
    ctx_unref(w);
    ctx_unref(noh);
    ctx_unref(p);
}

/* Go's TestCustomContextGoroutines, C's version: children of a custom
 * context cost no thread.  10,000 children of mixed kinds are made under a
 * custom parent; the process's thread count does not move, and one cancel of
 * the parent reaches them all. */
static void test_no_thread_per_child(void)
{
    if (check_thread_count() < 0)
        SKIP("/proc/self/task is not readable");
    ctx_cancel_t *cancel;
    ctx_t *parent = ctx_with_custom(ctx_background(), &bare_ops, NULL, &cancel);
    CHECK_NOT_NULL(parent);
    int threads = check_thread_count();
    int n = (int)check_scale(10000);
    ctx_t **kids = malloc((size_t)n * sizeof *kids);
    CHECK(kids != NULL);
    for (int i = 0; i < n; i++) {
        switch (i % 4) {
        case 0:
            kids[i] = ctx_with_cancel(parent, NULL);
            break;
        case 1: {
            ctx_t *v = ctx_with_value(parent, &key_a, NULL, NULL);
            CHECK_NOT_NULL(v);
            kids[i] = ctx_with_cancel(v, NULL);
            ctx_unref(v);
            break;
        }
        case 2:
            kids[i] = ctx_with_custom(parent, &bare_ops, NULL, NULL);
            break;
        default: {
            ctx_t *inner = ctx_with_custom(parent, &bare_ops, NULL, NULL);
            CHECK_NOT_NULL(inner);
            kids[i] = ctx_with_cancel(inner, NULL);
            ctx_unref(inner);
            break;
        }
        }
        CHECK_NOT_NULL(kids[i]);
    }
    CHECK_EQ_INT(check_thread_count(), threads);
    ctx_cancel(cancel);
    for (int i = 0; i < n; i++)
        CHECK_CANCELED(kids[i]);
    CHECK_EQ_INT(check_thread_count(), threads);
    for (int i = 0; i < n; i++)
        ctx_unref(kids[i]);
    free(kids);
    ctx_unref(parent);
}

/* The value hook runs with no library lock held: from inside it the hook
 * may derive a child of its own context, cancel it, describe and query its
 * own context. */
static _Thread_local int in_hook;

static bool reentrant_value(void *data, const ctx_key_t *key, void **value)
{
    struct store *s = data;
    if (in_hook || key != s->key)
        return false;
    in_hook = 1;
    ctx_cancel_t *c;
    ctx_t *kid = ctx_with_cancel(s->self, &c);
    CHECK_NOT_NULL(kid);
    ctx_cancel(c);
    CHECK_CANCELED(kid);
    ctx_unref(kid);
    char buf[64];
    ctx_describe(s->self, buf, sizeof buf);
    CHECK_STR(buf, "context.Background.Reentrant");
    CHECK_NULL(ctx_value(s->self, &key_d)); /* the hook again, which declines */
    CHECK_EQ_INT(ctx_err(s->self), 0);
    in_hook = 0;
    atomic_fetch_add(&s->calls, 1);
    *value = s->value;
    return true;
}

static const ctx_custom_ops_t reentrant_ops = {
    .name = "Reentrant",
    .value = reentrant_value,
};

static void test_hook_without_lock(void)
{
    struct store s;
    store_init(&s, &key_a, (void *)"mine");
    s.self = ctx_with_custom(ctx_background(), &reentrant_ops, &s, NULL);
    CHECK_NOT_NULL(s.self);
    ctx_t *child = ctx_with_cancel(s.self, NULL);
    CHECK_NOT_NULL(child);
    CHECK_PTR_EQ(ctx_value(child, &key_a), "mine");
    CHECK_EQ_INT(atomic_load(&s.calls), 1);
    ctx_unref(child);
    ctx_unref(s.self);
}

/* The value hook is called from many threads at once while the custom
 * context is being cancelled; every lookup answers right. */
struct reader {
    ctx_t *leaf;
    pthread_barrier_t *start;
    long rounds;
};

static void *read_values(void *arg)
{
    struct reader *r = arg;
    pthread_barrier_wait(r->start);
    for (long i = 0; i < r->rounds; i++) {
        CHECK_PTR_EQ(ctx_value(r->leaf, &key_a), "A");
        CHECK_PTR_EQ(ctx_value(r->leaf, &key_b), "B");
        CHECK_NULL(ctx_value(r->leaf, &key_d));
    }
    return NULL;
}

static void test_concurrent_hook(void)
{
    enum { READERS = 4 };
    struct store s;
    store_init(&s, &key_a, (void *)"A");
    ctx_t *top = ctx_with_value(ctx_background(), &key_b, (void *)"B", NULL);
    CHECK_NOT_NULL(top);
    ctx_cancel_t *cancel;
    ctx_t *custom = ctx_with_custom(top, &store_ops, &s, &cancel);
    CHECK_NOT_NULL(custom);
    ctx_t *leaf = ctx_with_cancel(custom, NULL);
    CHECK_NOT_NULL(leaf);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, READERS + 1);
    struct reader r = { leaf, &start, check_scale(20000) };
    pthread_t t[READERS];
    for (int i = 0; i < READERS; i++)
        check_thread_start(&t[i], read_values, &r);
    pthread_barrier_wait(&start);
    ctx_cancel(cancel);
    CHECK_CANCELED(leaf);
    for (int i = 0; i < READERS; i++)
        check_thread_join(t[i]);
    pthread_barrier_destroy(&start);
    ctx_unref(leaf);
    ctx_unref(custom);
    ctx_unref(top);
    CHECK_EQ_INT(atomic_load(&s.destroyed), 1);
}

int main(void)
{
    RUN_TEST(test_value_hook);
    RUN_TEST(test_names);
    RUN_TEST(test_destroy);
    RUN_TEST(test_custom_data);
    RUN_TEST(test_outside_event);
    RUN_TEST(test_born_done);
    RUN_TEST(test_propagation);
    RUN_TEST(test_cause);
    RUN_TEST(test_cancel_paths);
    RUN_TEST(test_hook_without_lock);
    RUN_TEST(test_concurrent_hook);
    RUN_TEST(test_no_thread_per_child);
    return 0;
}
