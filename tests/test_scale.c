/* SPDX-License-Identifier: MIT */

/*
 * Scale: very wide and very deep trees.  One cancel reaches 100,000
 * children; 400,000 children made and dropped under a live parent leave no
 * memory behind; a 200,000-deep chain is cancelled, described, searched and
 * freed by one ctx_unref on a thread with a 256 KiB stack (so every walk
 * must be iterative); a wide-and-deep tree is cancelled in one call.
 * Memory is counted with a counting allocator installed before anything
 * (unless run with --default-allocator, as the test_scale_cached CTest
 * does, to put the library's own allocation path under the same load).
 */
#include "check.h"

static const ctx_key_t root_key = { .name = "root" };
static const ctx_key_t layer_key = { .name = "layer" };
static const ctx_key_t absent_key = { .name = "absent" };
static const ctx_custom_ops_t other_ops = { .name = "Other" };

static atomic_long destroyed;

static void count_destroy(void *v)
{
    (void)v;
    atomic_fetch_add(&destroyed, 1);
}

/* 100,000 children of one parent, all reached by one cancel. */
static void test_wide(void)
{
    long base = check_alloc_live();
    long n = check_scale(100000);
    ctx_cancel_t *cancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(parent);
    ctx_t **kids = malloc((size_t)n * sizeof *kids);
    CHECK(kids != NULL);
    for (long i = 0; i < n; i++) {
        kids[i] = i % 8 == 7 ? ctx_with_custom(parent, &other_ops, NULL, NULL)
                             : ctx_with_cancel(parent, NULL);
        CHECK_NOT_NULL(kids[i]);
    }
    ctx_cancel_cause(cancel, EPIPE, "wide");
    for (long i = 0; i < n; i++)
        CHECK_DONE(kids[i], CTX_CANCELED, EPIPE, "wide");
    for (long i = 0; i < n; i++)
        ctx_unref(kids[i]);
    free(kids);
    ctx_unref(parent);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* 400,000 children made and dropped without cancel under a live parent:
 * the number of live blocks never creeps up and ends where it began; the
 * parent's cancel still reaches the child it kept. */
static void test_churn_without_cancel(void)
{
    ctx_cancel_t *cancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(parent);
    ctx_t *witness = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(witness);
    long base = check_alloc_live();
    long n = check_scale(400000);
    atomic_store(&destroyed, 0);
    for (long i = 0; i < n; i++) {
        ctx_t *c;
        switch (i % 4) {
        case 0:
            c = ctx_with_cancel(parent, NULL);
            break;
        case 1:
            c = ctx_with_custom(parent, &other_ops, NULL, NULL);
            break;
        case 2:
            c = ctx_with_value(parent, &layer_key, NULL, count_destroy);
            break;
        default: {
            /* A grandchild through a value layer, dropped child first. */
            ctx_t *v = ctx_with_value(parent, &layer_key, NULL, count_destroy);
            CHECK_NOT_NULL(v);
            c = ctx_with_cancel(v, NULL);
            ctx_unref(v);
            break;
        }
        }
        CHECK_NOT_NULL(c);
        ctx_unref(c);
        if (i % 4096 == 0)
            CHECK_MSG(check_alloc_live() <= base, "after %ld children: %ld blocks live, base %ld",
                      i, check_alloc_live(), base);
    }
    CHECK_EQ_INT(check_alloc_live(), base);
    CHECK_EQ_INT(atomic_load(&destroyed), n / 2);
    CHECK_NOT_DONE(witness);
    ctx_cancel(cancel);
    CHECK_CANCELED(witness);
    ctx_unref(witness);
    ctx_unref(parent);
}

/* The deep chain, run on a thread with a 256 KiB stack. */
struct deep {
    long depth;
    bool cancel_first;
    ctx_t *top; /* the chain hangs below this live context */
};

static void *deep_chain(void *arg)
{
    struct deep *d = arg;
    long base = check_alloc_live();
    long n = d->depth;
    ctx_t **node = malloc((size_t)n * sizeof *node);
    ctx_cancel_t **cancel = malloc((size_t)n * sizeof *cancel);
    CHECK(node != NULL && cancel != NULL);
    atomic_store(&destroyed, 0);
    long values = 0;
    size_t want_len = strlen("context.Background.WithCancel");
    for (long i = 0; i < n; i++) {
        ctx_t *p = i == 0 ? d->top : node[i - 1];
        cancel[i] = NULL;
        if (i == 0) {
            node[i] = ctx_with_value(p, &root_key, (void *)"bottom of the stack", count_destroy);
            want_len += strlen(".WithValue(root, ...)");
            values++;
        } else if (i % 2 == 1) {
            node[i] = ctx_with_cancel(p, &cancel[i]);
            want_len += strlen(".WithCancel");
        } else {
            node[i] = ctx_with_value(p, &layer_key, NULL, count_destroy);
            want_len += strlen(".WithValue(layer, ...)");
            values++;
        }
        CHECK_NOT_NULL(node[i]);
    }
    ctx_t *leaf = node[n - 1];

    /* Walks up: value lookup through every layer, the description. */
    CHECK_PTR_EQ(ctx_value(leaf, &root_key), "bottom of the stack");
    CHECK_NULL(ctx_value(leaf, &absent_key));
    CHECK_EQ_INT(ctx_describe(leaf, NULL, 0), want_len);
    const char *want_head = "context.Background.WithCancel.WithValue(root, ...).WithCancel.";
    char head[80];
    CHECK_EQ_INT(ctx_describe(leaf, head, sizeof head), want_len);
    CHECK_MSG(strncmp(head, want_head, strlen(want_head)) == 0, "head \"%s\"", head);

    if (d->cancel_first) {
        /* A walk down: one cancel near the top reaches the leaf. */
        ctx_cancel_cause(cancel[1], EPIPE, "deep");
        for (long i = 1; i < n; i++)
            CHECK_MSG(ctx_err(node[i]) == CTX_CANCELED, "node %ld of %ld not done", i, n);
        CHECK_DONE(leaf, CTX_CANCELED, EPIPE, "deep");
        CHECK_NOT_DONE(node[0]);
    }

    /* Freeing: drop every reference but the leaf's, top first (each node is
     * then held only by its child), then the leaf, which frees the whole
     * chain in one call. */
    for (long i = 0; i < n - 1; i++)
        ctx_unref(node[i]);
    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    ctx_unref(leaf);
    CHECK_EQ_INT(atomic_load(&destroyed), values);
    free(cancel);
    free(node);
    CHECK_EQ_INT(check_alloc_live(), base);
    return NULL;
}

static void run_small_stack(void *(*fn)(void *), void *arg)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    CHECK_EQ_INT(pthread_attr_setstacksize(&attr, 256 * 1024), 0);
    pthread_t t;
    int rc = pthread_create(&t, &attr, fn, arg);
    CHECK_MSG(rc == 0, "pthread_create: %s", strerror(rc));
    pthread_attr_destroy(&attr);
    check_thread_join(t);
}

static void test_deep_chain(void)
{
    long depth = check_scale(200000);
    ctx_cancel_t *tc;
    ctx_t *top = ctx_with_cancel(ctx_background(), &tc);
    CHECK_NOT_NULL(top);

    /* Cancelled, then freed. */
    struct deep d = { depth, true, top };
    run_small_stack(deep_chain, &d);
    /* Freed while never cancelled: each node leaves a live parent. */
    d.cancel_first = false;
    run_small_stack(deep_chain, &d);

    CHECK_NOT_DONE(top);
    ctx_cancel(tc);
    ctx_unref(top);
}

/* The whole deep chain cancelled from its top on the small stack, with an
 * AfterFunc at the leaf that must run before the cancel returns. */
struct deep_after {
    long depth;
    int ran;
};

static void mark(void *arg)
{
    *(int *)arg += 1;
}

static void *deep_cancel_top(void *arg)
{
    struct deep_after *d = arg;
    ctx_cancel_t *rc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
    CHECK_NOT_NULL(root);
    ctx_t *c = ctx_ref(root);
    for (long i = 0; i < d->depth; i++) {
        ctx_t *next = i % 3 == 0   ? ctx_with_value(c, &layer_key, NULL, NULL)
                      : i % 3 == 1 ? ctx_with_cancel(c, NULL)
                                   : ctx_with_custom(c, &other_ops, NULL, NULL);
        CHECK_NOT_NULL(next);
        ctx_unref(c);
        c = next;
    }
    CHECK_EQ_INT(ctx_after_func(c, mark, &d->ran, NULL), 0);
    /* Only the leaf and the root are held now. */
    ctx_cancel(rc);
    CHECK_EQ_INT(d->ran, 1);
    CHECK_CANCELED(c);
    ctx_unref(root);
    ctx_unref(c);
    return NULL;
}

static void test_deep_cancel_from_top(void)
{
    long base = check_alloc_live();
    struct deep_after d = { check_scale(200000), 0 };
    run_small_stack(deep_cancel_top, &d);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* Wide and deep: 1,000 chains of 100 under one root, one cancel. */
static void test_wide_and_deep(void)
{
    long base = check_alloc_live();
    long chains = check_scale(1000);
    enum { DEPTH = 100 };
    ctx_cancel_t *rc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
    CHECK_NOT_NULL(root);
    ctx_t **leaf = malloc((size_t)chains * sizeof *leaf);
    ctx_t **mid = malloc((size_t)chains * sizeof *mid);
    CHECK(leaf != NULL && mid != NULL);
    for (long k = 0; k < chains; k++) {
        ctx_t *c = ctx_ref(root);
        mid[k] = NULL;
        for (int i = 0; i < DEPTH; i++) {
            ctx_t *next =
                i % 4 == 3 ? ctx_with_value(c, &layer_key, NULL, NULL) : ctx_with_cancel(c, NULL);
            CHECK_NOT_NULL(next);
            if (i == DEPTH / 2)
                mid[k] = ctx_ref(next);
            ctx_unref(c);
            c = next;
        }
        leaf[k] = c;
    }
    ctx_cancel_cause(rc, ECONNRESET, "everything");
    for (long k = 0; k < chains; k++) {
        CHECK_DONE(leaf[k], CTX_CANCELED, ECONNRESET, "everything");
        CHECK_DONE(mid[k], CTX_CANCELED, ECONNRESET, "everything");
    }
    for (long k = 0; k < chains; k++) {
        ctx_unref(mid[k]);
        ctx_unref(leaf[k]);
    }
    free(mid);
    free(leaf);
    ctx_unref(root);
    CHECK_EQ_INT(check_alloc_live(), base);
}

int main(int argc, char **argv)
{
    /* With --default-allocator the library keeps its own allocator (and
     * whatever node caching it does with it); the live-block checks then
     * compare zeros and only the behaviour is checked. */
    if (argc > 1 && strcmp(argv[1], "--default-allocator") == 0)
        fprintf(stderr, "default allocator: memory is not counted\n");
    else
        check_alloc_install();
    RUN_TEST(test_wide);
    RUN_TEST(test_churn_without_cancel);
    RUN_TEST(test_deep_chain);
    RUN_TEST(test_deep_cancel_from_top);
    RUN_TEST(test_wide_and_deep);
    return 0;
}
