/* SPDX-License-Identifier: MIT */

/*
 * ctx_cancel through a slab handle holds the node by the node's own lock
 * (core/cancel.c), so the walk must leave the parent's children before it
 * lets go of that lock, without waiting for the parent's lock, which comes
 * first in the lock order:
 *
 *   - with the parent's lock busy, the cancel neither waits nor deadlocks:
 *     the child is done, flagged, still linked, and its free unlinks it
 *     (also when the parent is cancelled in between, which unlinks it
 *     first);
 *   - with the parent's lock free, the child leaves at once;
 *   - threads that make children of one parent (its lock and, once
 *     contended, its fan-out shards busy) while another thread cancels
 *     them through their handles, some already freed and their blocks
 *     reused, and the parent cancelled at the end: every child is done or
 *     untouched as it should be, and every node is freed;
 *   - the first cancel retires the handle, but only once its walk is
 *     done: a second cancel racing with it returns with the subtree done.
 *
 * White-box: the test reads the tree's own fields (src/internal.h).
 */
#include "check.h"
#include "internal.h"

static uint32_t state_of(ctx_t *c)
{
    return atomic_load_explicit(&c->u.c.state, memory_order_acquire);
}

static int linked(ctx_t *c)
{
    return c->u.c.link.pprev != NULL;
}

static void test_busy_parent_flags_child(void)
{
    ctx_cancel_t *pc, *h;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *c = ctx_with_cancel(p, &h);
    CHECK_NOT_NULL(c);
    CHECK(linked(c));
    /* Hold the parent's lock as a thread linking a sibling would. */
    ctx__lock(&p->lock);
    ctx_cancel(h); /* must return: it may not wait for p's lock */
    uint32_t s = state_of(c);
    CHECK_EQ_INT((int)(s & CTX__ERR_MASK), CTX_CANCELED);
    CHECK(s & CTX__DETACH);
    CHECK(linked(c));
    ctx__unlock(&p->lock);
    CHECK_CANCELED(c);
    CHECK_NOT_DONE(p);
    ctx_unref(c); /* the free unlinks it */
    CHECK(*ctx__kids(p) == NULL);
    ctx_cancel(pc);
    ctx_unref(p);
}

static void test_flagged_child_then_parent_cancel(void)
{
    ctx_cancel_t *pc, *h;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *c = ctx_with_cancel(p, &h);
    CHECK_NOT_NULL(c);
    ctx__lock(&p->lock);
    ctx_cancel(h);
    ctx__unlock(&p->lock);
    CHECK(state_of(c) & CTX__DETACH);
    /* The parent's walk finds the done child, unlinks it and skips it. */
    ctx_cancel(pc);
    CHECK(!linked(c));
    CHECK(*ctx__kids(p) == NULL);
    ctx_unref(c);
    ctx_unref(p);
}

static void test_free_parent_unlinks_at_once(void)
{
    ctx_cancel_t *pc, *h;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    ctx_t *c = ctx_with_cancel(p, &h);
    ctx_t *t = ctx_with_timeout(p, CTX_HOUR, &h); /* a timer: a slab handle too */
    CHECK_NOT_NULL(c);
    CHECK_NOT_NULL(t);
    ctx_cancel(h);
    CHECK(!(state_of(t) & CTX__DETACH));
    CHECK(!linked(t));
    CHECK(linked(c));
    ctx_unref(t);
    ctx_cancel(pc);
    ctx_unref(c);
    ctx_unref(p);
}

/* Makers publish each new child's handle in a slot and free the child a
 * little later; the canceller cancels whatever handle it reads, live or
 * stale.  A child that the canceller did not reach through its own handle
 * must not be done before its maker cancels the parent. */
enum { MAKERS = 2, SLOTS = 8 };

struct shared {
    ctx_t *parent;
    _Atomic(ctx_cancel_t *) slot[SLOTS];
    _Atomic int makers_left;
    long rounds;
};

struct maker {
    struct shared *sh;
    int id;
};

static void *make_children(void *arg)
{
    struct maker *m = arg;
    struct shared *sh = m->sh;
    enum { KEEP = 4 };
    ctx_t *kept[KEEP] = { NULL };
    for (long i = 0; i < sh->rounds; i++) {
        ctx_cancel_t *h;
        ctx_t *c = ctx_with_cancel(sh->parent, &h);
        CHECK_NOT_NULL(c);
        /* Perhaps in the block of a child freed earlier, whose handle the
         * canceller may be using right now: that handle is stale. */
        CHECK_EQ_INT(ctx_err(c), 0);
        atomic_store_explicit(&sh->slot[(i * MAKERS + m->id) % SLOTS], h, memory_order_release);
        int k = (int)(i % KEEP);
        if (kept[k] != NULL)
            ctx_unref(kept[k]);
        kept[k] = c;
    }
    for (int k = 0; k < KEEP; k++)
        if (kept[k] != NULL)
            ctx_unref(kept[k]);
    atomic_fetch_sub_explicit(&sh->makers_left, 1, memory_order_release);
    return NULL;
}

static void *cancel_slots(void *arg)
{
    struct shared *sh = arg;
    unsigned i = 0;
    while (atomic_load_explicit(&sh->makers_left, memory_order_acquire) > 0) {
        ctx_cancel_t *h = atomic_load_explicit(&sh->slot[i++ % SLOTS], memory_order_acquire);
        if (h != NULL)
            ctx_cancel(h);
    }
    return NULL;
}

static void test_makers_and_canceller(void)
{
    size_t live0 = ctx_live_count();
    ctx_cancel_t *pc;
    struct shared sh = { .parent = ctx_with_cancel(ctx_background(), &pc),
                         .rounds = check_scale(40000) };
    CHECK_NOT_NULL(sh.parent);
    for (int k = 0; k < SLOTS; k++)
        atomic_init(&sh.slot[k], NULL);
    atomic_init(&sh.makers_left, MAKERS);
    struct maker m[MAKERS];
    pthread_t t[MAKERS + 1];
    check_thread_start(&t[MAKERS], cancel_slots, &sh);
    for (int k = 0; k < MAKERS; k++) {
        m[k] = (struct maker){ &sh, k };
        check_thread_start(&t[k], make_children, &m[k]);
    }
    for (int k = 0; k <= MAKERS; k++)
        check_thread_join(t[k]);
    /* Every child is freed: none is left in the parent's lists, or the
     * walk below would touch freed memory (AddressSanitizer). */
    CHECK_NOT_DONE(sh.parent);
    ctx_t *late = ctx_with_cancel(sh.parent, NULL);
    CHECK_NOT_NULL(late);
    ctx_cancel(pc);
    CHECK_CANCELED(late);
    ctx_unref(late);
    ctx_unref(sh.parent);
    CHECK_EQ_INT((long)ctx_live_count(), (long)live0);
}

/* The first cancel through a handle retires it once its walk is done (the
 * free then has no generation to bump).  A second cancel through the same
 * handle, racing with the first, may find it retired and return at once:
 * it must still return with the whole subtree done, as a cancel that
 * waited for the walk would.  A retire before the walk ends fails the
 * check on the leaf. */
#define RACE_DEPTH 1000
struct race {
    ctx_cancel_t *h;
    ctx_t *leaf;
    _Atomic int go;
    _Atomic int bad;
};

static void *race_cancel(void *arg)
{
    struct race *r = arg;
    while (!atomic_load_explicit(&r->go, memory_order_acquire))
        ;
    ctx_cancel(r->h);
    if (ctx_err(r->leaf) != CTX_CANCELED)
        atomic_store_explicit(&r->bad, 1, memory_order_relaxed);
    return NULL;
}

static void test_retired_handle(void)
{
    size_t live0 = ctx_live_count();
    /* White-box: a cancelled node's slab handle is no longer bound. */
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    CHECK_NOT_NULL(c);
    _Atomic uint32_t *w = ctx__hword(c);
    uint32_t before = atomic_load_explicit(w, memory_order_relaxed);
    if (before & CTX__SLAB_WORD) {
        CHECK(before & CTX__SLAB_BOUND);
        ctx_cancel(h);
        uint32_t after = atomic_load_explicit(w, memory_order_relaxed);
        CHECK(!(after & CTX__SLAB_BOUND));
        CHECK(after != before);
    } else {
        ctx_cancel(h);
    }
    CHECK_CANCELED(c);
    ctx_cancel(h); /* a no-op */
    ctx_unref(c);
    ctx_cancel(h); /* stale: a no-op */

    int rounds = (int)check_scale(200);
    for (int i = 0; i < rounds; i++) {
        struct race r = { 0 };
        ctx_t *root = ctx_with_cancel(ctx_background(), &r.h);
        CHECK_NOT_NULL(root);
        ctx_t *cur = ctx_ref(root);
        for (int d = 0; d < RACE_DEPTH; d++) {
            ctx_t *n = ctx_with_cancel(cur, NULL);
            CHECK_NOT_NULL(n);
            ctx_unref(cur);
            cur = n;
        }
        r.leaf = cur;
        pthread_t t[2];
        check_thread_start(&t[0], race_cancel, &r);
        check_thread_start(&t[1], race_cancel, &r);
        atomic_store_explicit(&r.go, 1, memory_order_release);
        check_thread_join(t[0]);
        check_thread_join(t[1]);
        CHECK(!atomic_load_explicit(&r.bad, memory_order_relaxed));
        ctx_unref(r.leaf);
        ctx_unref(root);
    }
    CHECK_EQ_INT((long)ctx_live_count(), (long)live0);
}

int main(void)
{
    check_seed();
    RUN_TEST(test_busy_parent_flags_child);
    RUN_TEST(test_flagged_child_then_parent_cancel);
    RUN_TEST(test_free_parent_unlinks_at_once);
    RUN_TEST(test_makers_and_canceller);
    RUN_TEST(test_retired_handle);
    return 0;
}
