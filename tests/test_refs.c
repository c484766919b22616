/* SPDX-License-Identifier: MIT */

/*
 * Ownership: a child keeps its parent alive; dropping the last reference
 * detaches a context from its parent (the parent's later cancel must not
 * touch freed memory: AddressSanitizer watches); ctx_ref/ctx_unref count;
 * the cancel handle lives as long as its context.  And WithoutCancel (Go's
 * TestWithoutCancel): values visible, never done, no deadline, no cause,
 * no done fd.
 */
#include "check.h"

static const ctx_key_t key = { .name = "key" };
static atomic_int destroyed;

static void count_destroy(void *v)
{
    (void)v;
    atomic_fetch_add(&destroyed, 1);
}

static const ctx_custom_ops_t plain_ops = { .name = "C" };
static const ctx_custom_ops_t counted_ops = { .name = "Counted", .destroy = count_destroy };

/* A child keeps its parent alive: the parent's value is still visible and
 * not destroyed after the parent's own reference is gone, the parent's
 * cancel handle still works, and everything goes when the child goes. */
static void test_child_keeps_parent(void)
{
    atomic_store(&destroyed, 0);
    ctx_t *v = ctx_with_value(ctx_background(), &key, (void *)"v", count_destroy);
    CHECK_NOT_NULL(v);
    ctx_cancel_t *pcancel;
    ctx_t *p = ctx_with_cancel(v, &pcancel);
    CHECK_NOT_NULL(p);
    ctx_t *child = ctx_with_cancel(p, NULL);
    CHECK_NOT_NULL(child);
    ctx_unref(v);
    ctx_unref(p);
    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    CHECK_PTR_EQ(ctx_value(child, &key), "v");
    CHECK_NOT_DONE(child);
    ctx_cancel_cause(pcancel, EPIPE, "via a parent only the child holds");
    CHECK_DONE(child, CTX_CANCELED, EPIPE, "via a parent only the child holds");
    CHECK_PTR_EQ(ctx_value(child, &key), "v");
    ctx_unref(child);
    CHECK_EQ_INT(atomic_load(&destroyed), 1);
}

/* ctx_ref returns its argument and counts: n refs need n+1 unrefs. */
static void test_ref_counting(void)
{
    atomic_store(&destroyed, 0);
    ctx_t *v = ctx_with_value(ctx_background(), &key, NULL, count_destroy);
    CHECK_NOT_NULL(v);
    for (int i = 0; i < 5; i++)
        CHECK_PTR_EQ(ctx_ref(v), v);
    for (int i = 0; i < 5; i++) {
        ctx_unref(v);
        CHECK_EQ_INT(atomic_load(&destroyed), 0);
    }
    ctx_unref(v);
    CHECK_EQ_INT(atomic_load(&destroyed), 1);
}

/* References taken and dropped from many threads at once. */
struct refjob {
    ctx_t *ctx;
    pthread_barrier_t *start;
    long rounds;
};

static void *ref_unref_loop(void *arg)
{
    struct refjob *j = arg;
    pthread_barrier_wait(j->start);
    for (long i = 0; i < j->rounds; i++) {
        ctx_t *r = ctx_ref(j->ctx);
        CHECK_PTR_EQ(ctx_value(r, &key), "shared");
        ctx_unref(r);
    }
    ctx_unref(j->ctx); /* each thread was given one reference */
    return NULL;
}

static void test_concurrent_refs(void)
{
    enum { T = 4 };
    atomic_store(&destroyed, 0);
    ctx_t *v = ctx_with_value(ctx_background(), &key, (void *)"shared", count_destroy);
    CHECK_NOT_NULL(v);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, T + 1);
    struct refjob j = { v, &start, check_scale(100000) };
    pthread_t t[T];
    for (int i = 0; i < T; i++) {
        ctx_ref(v);
        check_thread_start(&t[i], ref_unref_loop, &j);
    }
    ctx_unref(v); /* the threads now hold the only references */
    pthread_barrier_wait(&start);
    for (int i = 0; i < T; i++)
        check_thread_join(t[i]);
    CHECK_EQ_INT(atomic_load(&destroyed), 1);
    pthread_barrier_destroy(&start);
}

/* Dropping the last reference to a child detaches it: the parent's later
 * cancel walks only live children (any touch of freed memory is an
 * AddressSanitizer error), and siblings are unaffected. */
static void test_unref_detaches(void)
{
    ctx_cancel_t *pcancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(parent);
    enum { N = 64 };
    ctx_t *kids[N];
    for (int i = 0; i < N; i++) {
        switch (i % 4) {
        case 0:
            kids[i] = ctx_with_cancel(parent, NULL);
            break;
        case 1:
            kids[i] = ctx_with_timeout(parent, 1000 * CTX_HOUR, NULL);
            break;
        case 2:
            kids[i] = ctx_with_custom(parent, &plain_ops, NULL, NULL);
            break;
        default: {
            ctx_t *v = ctx_with_value(parent, &key, NULL, NULL);
            CHECK_NOT_NULL(v);
            kids[i] = ctx_with_cancel(v, NULL);
            ctx_unref(v);
            break;
        }
        }
        CHECK_NOT_NULL(kids[i]);
    }
    /* Drop every other child, in an order that is not creation order. */
    for (int i = N - 2; i >= 0; i -= 2) {
        ctx_unref(kids[i]);
        kids[i] = NULL;
    }
    ctx_cancel(pcancel);
    for (int i = 1; i < N; i += 2)
        CHECK_CANCELED(kids[i]);
    for (int i = 1; i < N; i += 2)
        ctx_unref(kids[i]);
    ctx_unref(parent);
}

/* Releasing a random tree in a random order: a value or custom node is
 * destroyed exactly when it and all its descendants have been dropped
 * (children hold their parents), each exactly once.  Sanitizers watch the
 * freeing. */
static bool in_subtree(const int *parent, int j, int i)
{
    for (; j >= 0; j = parent[j])
        if (j == i)
            return true;
    return false;
}

static void test_release_orders(void)
{
    check_rng_t r = check_rng_make(check_seed() ^ 0x5eed);
    for (int round = 0; round < 200; round++) {
        enum { N = 30 };
        ctx_t *n[N];
        int parent[N];
        bool destroyable[N], dropped[N];
        atomic_store(&destroyed, 0);
        for (int i = 0; i < N; i++) {
            parent[i] = i == 0 ? -1 : (int)check_rng_below(&r, (unsigned)i);
            ctx_t *p = parent[i] < 0 ? ctx_background() : n[parent[i]];
            destroyable[i] = false;
            dropped[i] = false;
            switch (check_rng_below(&r, 4)) {
            case 0:
                n[i] = ctx_with_cancel(p, NULL);
                break;
            case 1:
                n[i] = ctx_with_value(p, &key, NULL, count_destroy);
                destroyable[i] = true;
                break;
            case 2:
                n[i] = ctx_without_cancel(p);
                break;
            default:
                n[i] = ctx_with_custom(p, &counted_ops, NULL, NULL);
                destroyable[i] = true;
                break;
            }
            CHECK_NOT_NULL(n[i]);
        }
        int order[N];
        for (int i = 0; i < N; i++)
            order[i] = i;
        check_shuffle(&r, order, N);
        for (int k = 0; k < N; k++) {
            ctx_unref(n[order[k]]);
            dropped[order[k]] = true;
            int want = 0;
            for (int i = 0; i < N; i++) {
                if (!destroyable[i])
                    continue;
                bool all = true;
                for (int j = i; j < N && all; j++)
                    if (!dropped[j] && in_subtree(parent, j, i))
                        all = false;
                want += all;
            }
            CHECK_EQ_INT(atomic_load(&destroyed), want);
        }
    }
}

/* The cancel handle stays valid while the context is alive, even if only a
 * child holds it. */
static void test_cancel_handle_lifetime(void)
{
    ctx_cancel_t *c;
    ctx_t *p = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(p);
    ctx_t *child = ctx_with_value(p, &key, NULL, NULL);
    CHECK_NOT_NULL(child);
    ctx_unref(p);
    ctx_cancel(c);
    CHECK_CANCELED(child);
    ctx_cancel(c); /* still alive: idempotent */
    ctx_unref(child);
}

/* Go's TestWithoutCancel, and more: values visible; never done, whatever
 * the parent does; no deadline even under a parent with one; cause 0;
 * ctx_wait polls 0; ctx_done_fd is -1 with errno 0; children of it are
 * cancelled only by their own handles. */
static void test_without_cancel(void)
{
    ctx_t *v = ctx_with_value(ctx_background(), &key, (void *)"value", NULL);
    CHECK_NOT_NULL(v);
    ctx_cancel_t *pcancel;
    ctx_t *p = ctx_with_timeout(v, CTX_HOUR, &pcancel);
    CHECK_NOT_NULL(p);
    ctx_time_t pd;
    CHECK(ctx_deadline(p, &pd));
    ctx_t *w = ctx_without_cancel(p);
    CHECK_NOT_NULL(w);
    ctx_cancel_t *kcancel;
    ctx_t *kid = ctx_with_cancel(w, &kcancel);
    CHECK_NOT_NULL(kid);
    ctx_t *kid2 = ctx_with_cancel(w, NULL);
    CHECK_NOT_NULL(kid2);

    ctx_time_t d = 777;
    CHECK(!ctx_deadline(w, &d));
    CHECK(!ctx_deadline(kid, &d));
    CHECK_PTR_EQ(ctx_value(w, &key), "value");
    CHECK_PTR_EQ(ctx_value(kid, &key), "value");
    CHECK_NOT_DONE(w);

    ctx_cancel_cause(pcancel, EPIPE, "parent gone");
    CHECK_DONE(p, CTX_CANCELED, EPIPE, "parent gone");
    CHECK_NOT_DONE(w);
    CHECK_NOT_DONE(kid);
    CHECK_NOT_DONE(kid2);
    CHECK_EQ_INT(ctx_cause(w, NULL), 0);
    CHECK_EQ_INT(ctx_wait(w, 0), 0);
    errno = EBADF;
    CHECK_EQ_INT(ctx_done_fd(w), -1);
    CHECK_EQ_INT(errno, 0);
    CHECK_PTR_EQ(ctx_value(w, &key), "value");

    ctx_cancel(kcancel);
    CHECK_CANCELED(kid);
    CHECK_NOT_DONE(kid2);
    CHECK_NOT_DONE(w);

    /* WithoutCancel of an already-done parent is not done either. */
    ctx_t *w2 = ctx_without_cancel(p);
    CHECK_NOT_NULL(w2);
    CHECK_NOT_DONE(w2);
    CHECK_PTR_EQ(ctx_value(w2, &key), "value");

    /* The without context keeps its parent alive for its values. */
    ctx_unref(p);
    ctx_unref(v);
    CHECK_PTR_EQ(ctx_value(w2, &key), "value");

    ctx_unref(w2);
    ctx_unref(kid2);
    ctx_unref(kid);
    ctx_unref(w);
}

int main(void)
{
    RUN_TEST(test_child_keeps_parent);
    RUN_TEST(test_ref_counting);
    RUN_TEST(test_concurrent_refs);
    RUN_TEST(test_unref_detaches);
    RUN_TEST(test_release_orders);
    RUN_TEST(test_cancel_handle_lifetime);
    RUN_TEST(test_without_cancel);
    return 0;
}
