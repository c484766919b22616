/* SPDX-License-Identifier: MIT */

/*
 * Many threads deriving children from one shared parent (a server's base
 * context), which gives the parent a fan-out (per-thread shards of its
 * children and of their references to it; src/core/tree.c):
 *   - children of every kind (cancel, timeout, custom-free AfterFunc, value
 *     over the parent, grandchildren) are created, cancelled and freed from
 *     several threads at once, with no error and no leak (ASan);
 *   - cancelling the parent while they do it is synchronous and complete:
 *     once ctx_cancel returns, every child any thread holds is done, and
 *     every child made afterwards is born done, with the parent's cause;
 *   - the parent is freed exactly once, after its last child and its last
 *     handle are gone, and not before (a destroy hook above it says when),
 *     also when the last to go is a child held in a shard.
 */
#include "check.h"

#include <stdlib.h>

#define NTHREADS 4
#define KEEP     64 /* live children per thread at a time */

static const ctx_key_t key = { .name = "fanout" };

static ctx_t *parent;
static ctx_cancel_t *parent_cancel;
static atomic_int destroyed;
static atomic_int cancelled; /* the main thread's ctx_cancel returned */
static atomic_int stop;
static atomic_long made;
static atomic_int after_runs;

static void on_destroy(void *v)
{
    (void)v;
    atomic_fetch_add(&destroyed, 1);
}

static void on_after(void *arg)
{
    (void)arg;
    atomic_fetch_add(&after_runs, 1);
}

struct worker {
    uint64_t seed;
    long checked; /* children verified done after the cancel */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    check_rng_t r = check_rng_make(w->seed);
    ctx_t *live[KEEP] = { NULL };
    ctx_cancel_t *handles[KEEP] = { NULL };
    int seen_cancel = 0;
    for (long it = 0; !atomic_load(&stop) || !seen_cancel; it++) {
        int was_cancelled = atomic_load(&cancelled);
        if (was_cancelled && !seen_cancel) {
            /* Every child this thread holds was made before it saw the
             * flag: ctx_cancel, which returned before the flag was set,
             * must have finished it. */
            for (int i = 0; i < KEEP; i++)
                if (live[i] != NULL) {
                    CHECK_EQ_INT(ctx_err(live[i]), CTX_CANCELED);
                    w->checked++;
                }
            seen_cancel = 1;
        }
        int i = (int)check_rng_below(&r, KEEP);
        if (live[i] != NULL) {
            if (check_rng_below(&r, 2) == 0)
                ctx_cancel(handles[i]);
            ctx_unref(live[i]);
            live[i] = NULL;
        }
        ctx_t *c = NULL;
        switch (check_rng_below(&r, 6)) {
        case 0:
        case 1:
        case 2:
            c = ctx_with_cancel(parent, &handles[i]);
            break;
        case 3:
            c = ctx_with_timeout(parent, CTX_HOUR, &handles[i]);
            break;
        case 4: {
            /* A value over the parent, and a child of that. */
            ctx_t *v = ctx_with_value(parent, &key, NULL, NULL);
            CHECK_NOT_NULL(v);
            c = ctx_with_cancel(v, &handles[i]);
            ctx_unref(v);
            break;
        }
        default: {
            /* A grandchild with an AfterFunc; the child is dropped at once
             * (the grandchild holds it). */
            ctx_cancel_t *mid;
            ctx_t *m = ctx_with_cancel(parent, &mid);
            CHECK_NOT_NULL(m);
            c = ctx_with_cancel(m, &handles[i]);
            CHECK_NOT_NULL(c);
            CHECK_EQ_INT(ctx_after_func(c, on_after, NULL, NULL), 0);
            ctx_unref(m);
            break;
        }
        }
        CHECK_NOT_NULL(c);
        if (was_cancelled) {
            /* Made after the cancel returned: born done, parent's cause. */
            const char *msg;
            CHECK_EQ_INT(ctx_err(c), CTX_CANCELED);
            CHECK_EQ_INT(ctx_cause(c, &msg), ECONNRESET);
            CHECK_STR(msg, "base gone");
        }
        live[i] = c;
        atomic_fetch_add_explicit(&made, 1, memory_order_relaxed);
    }
    for (int i = 0; i < KEEP; i++)
        if (live[i] != NULL)
            ctx_unref(live[i]);
    return NULL;
}

static void test_shared_parent(void)
{
    ctx_cancel_t *rc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
    CHECK_NOT_NULL(root);
    ctx_t *v = ctx_with_value(root, &key, NULL, on_destroy);
    CHECK_NOT_NULL(v);
    parent = ctx_with_cancel(v, &parent_cancel);
    CHECK_NOT_NULL(parent);
    ctx_unref(v); /* parent holds it: freed with parent */

    pthread_t t[NTHREADS];
    struct worker w[NTHREADS];
    uint64_t seed = check_seed();
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (struct worker){ seed + (uint64_t)i, 0 };
        check_thread_start(&t[i], worker_main, &w[i]);
    }
    /* Let the threads contend for a while (the parent gets its fan-out on
     * the first contended creation), then cancel it under them. */
    long target = check_scale(200000);
    /* Meanwhile ctx_dump walks the parent's children, shards included:
     * every line it writes is a live context under the parent. */
    FILE *dump = tmpfile();
    CHECK_NOT_NULL(dump);
    while (atomic_load(&made) < target) {
        CHECK_EQ_INT(ctx_dump(parent, dump), 0);
        check_sleep_ns(CTX_MILLISECOND);
    }
    CHECK(ftell(dump) > 0);
    fclose(dump);
    ctx_cancel_cause(parent_cancel, ECONNRESET, "base gone");
    atomic_store(&cancelled, 1);
    long after_cancel = atomic_load(&made);
    while (atomic_load(&made) < after_cancel + check_scale(20000))
        check_sleep_ns(CTX_MILLISECOND);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTHREADS; i++)
        check_thread_join(t[i]);

    /* The threads freed every child; the parent lives on its handle. */
    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    ctx_unref(parent);
    CHECK_EQ_INT(atomic_load(&destroyed), 1);
    ctx_cancel(rc);
    ctx_unref(root);
    long checked = 0;
    for (int i = 0; i < NTHREADS; i++)
        checked += w[i].checked;
    fprintf(stderr, "   %ld children made, %ld checked done after the cancel, %d callbacks\n",
            atomic_load(&made), checked, atomic_load(&after_runs));
}

/* Children made, cancelled and freed from several threads while nobody
 * cancels the parent: every reference the shards counted is given back, so
 * the parent, and its fan-out with it, is freed with its last handle (ASan
 * sees a leak otherwise). */
static void *churn_main(void *arg)
{
    /* This thread's own reference, taken for it by the main thread before
     * the thread starts: a thread that first ran after every other holder
     * had let go would otherwise take it from a freed parent. */
    ctx_t *p = arg;
    while (!atomic_load(&stop)) {
        ctx_cancel_t *cc;
        ctx_t *c = ctx_with_cancel(p, &cc);
        CHECK_NOT_NULL(c);
        CHECK_EQ_INT(ctx_err(c), 0);
        ctx_t *g = ctx_with_timeout(c, CTX_HOUR, NULL);
        CHECK_NOT_NULL(g);
        ctx_cancel(cc);
        CHECK_EQ_INT(ctx_err(g), CTX_CANCELED);
        ctx_unref(c);
        ctx_unref(g);
        atomic_fetch_add_explicit(&made, 1, memory_order_relaxed);
    }
    /* Let go of the parent while a child of it still lives: the child's
     * shard gives the parent back when the child goes.  Every other thread
     * leaves a child it has cancelled, whose free takes the short way, and
     * the others a live one, which goes the long way: whichever comes last
     * frees the parent. */
    static atomic_int turn;
    int done = atomic_fetch_add(&turn, 1) % 2;
    ctx_cancel_t *lc = NULL;
    ctx_t *last = ctx_with_cancel(p, done ? &lc : NULL);
    CHECK_NOT_NULL(last);
    if (done)
        ctx_cancel(lc);
    ctx_unref(p);
    ctx_unref(last);
    return NULL;
}

static void test_free_without_cancel(void)
{
    atomic_store(&destroyed, 0);
    atomic_store(&stop, 0);
    atomic_store(&made, 0);
    ctx_t *v = ctx_with_value(ctx_background(), &key, NULL, on_destroy);
    CHECK_NOT_NULL(v);
    parent = ctx_with_cancel(v, &parent_cancel);
    CHECK_NOT_NULL(parent);
    ctx_unref(v);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        check_thread_start(&t[i], churn_main, ctx_ref(parent));
    while (atomic_load(&made) < check_scale(100000))
        check_sleep_ns(CTX_MILLISECOND);
    /* The main thread's reference goes first: the threads hold theirs. */
    CHECK_EQ_INT(ctx_err(parent), 0);
    ctx_unref(parent);
    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    atomic_store(&stop, 1);
    for (int i = 0; i < NTHREADS; i++)
        check_thread_join(t[i]);
    CHECK_EQ_INT(atomic_load(&destroyed), 1);
}

int main(void)
{
    RUN_TEST(test_shared_parent);
    RUN_TEST(test_free_without_cancel);
    return 0;
}
