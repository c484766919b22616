/* SPDX-License-Identifier: MIT */

/*
 * Merged contexts: one context with several parents.
 *
 * The merged context M is a custom node, a child of parents[0] like any
 * other.  Each further parent gets a link record: an AfterFunc record
 * (after.c's layout and protocol) whose function cancels M with that
 * parent's err and cause.  The records live in one block beside M, with
 * one more record registered on M itself: when M is done, that one stops
 * (unlinks) the records on the other parents, so a long-lived parent keeps
 * no trace of a merge that ended.  When M is freed first, its destroy hook
 * does the same.
 *
 * One allocation holds it all: M's own node comes first in the block, so
 * when the tree frees M (ctx__node_free with a custom node's size) it
 * frees the block: its handle word says it is no slab block, so it goes
 * back to ctx__free at once.
 *
 * The records are never freed through their reference counts: each starts
 * with one count more than after.c ever drops (the block's own), and the
 * block is freed with M.  M holds a reference to every parent (through its
 * record, or plainly for a parent that can never be done), which the
 * destroy hook drops.  The record on M holds none, so that M can be
 * freed while it is registered.
 */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>

struct merge {
    struct ctx__custom node; /* M: first, so that freeing M frees the block */
    struct ctx *m;           /* &node.base */
    size_t n;
    ctx_t **parents;  /* n entries, after the records */
    struct ctx self;  /* registered on M: unlinks the others when M is done */
    struct ctx rec[]; /* rec[i - 1] links parents[i]; kind 0 when unused */
};

/* A value lookup that reports a binding to NULL as found, unlike
 * ctx_value: the nearest binding in c's chain, custom hooks included. */
static bool find_value(ctx_t *c, const ctx_key_t *key, void **out)
{
    for (struct ctx *x = c; x != NULL; x = ctx__parent(x)) {
        switch (ctx__kind(x)) {
        case CTX__ROOT:
            return false;
        case CTX__VALUE:
            if (x->u.v.key == key) {
                *out = x->u.v.value;
                return true;
            }
            break;
        case CTX__CUSTOM: {
            /* A merge below another merge recurses once per level of
             * merging, never per level of the tree. */
            const struct ctx__custom *cu = (const struct ctx__custom *)x;
            if (cu->ops->value != NULL && cu->ops->value(cu->data, key, out))
                return true;
            break;
        }
        default:
            break;
        }
    }
    return false;
}

static bool merge_value(void *data, const ctx_key_t *key, void **value)
{
    struct merge *b = data;
    for (size_t i = 0; i < b->n; i++)
        if (find_value(b->parents[i], key, value))
            return true;
    return false;
}

static size_t merge_describe(void *data, char *buf, size_t size)
{
    struct merge *b = data;
    return (size_t)snprintf(buf, size, "Merge(%zu parents)", b->n);
}

static void merge_destroy(void *data);

static const ctx_custom_ops_t merge_ops = {
    .name = "Merge",
    .value = merge_value,
    .describe = merge_describe,
    .destroy = merge_destroy,
};

/* Drops a reference to M; the last one is handed to the callback thread,
 * because freeing M stops these records, and a record's function must not
 * wait for another record's. */
static void drop_m(struct ctx *m)
{
    uint32_t r = atomic_load_explicit(&m->refs, memory_order_relaxed);
    while (r > 1) {
        /* Release: our use of M happens before whoever frees it. */
        if (atomic_compare_exchange_weak_explicit(&m->refs, &r, r - 1, memory_order_release,
                                                  memory_order_relaxed))
            return;
    }
    ctx__after_defer_unref(m);
}

/* Cancels M with the err and cause of the first parent that is done. */
static void cancel_from_parents(struct merge *b)
{
    for (size_t i = 0; i < b->n; i++) {
        struct ctx *o = ctx__owner(b->parents[i]);
        /* Acquire: pairs with the release in mark(); cause and msg were
         * written before it. */
        uint32_t err = atomic_load_explicit(&o->u.c.state, memory_order_acquire) & CTX__ERR_MASK;
        if (err != 0) {
            ctx__cancel(b->m, err, o->u.c.cause, o->u.c.msg, 0);
            return;
        }
    }
}

/* A record on parents[i] fired. */
static void merge_fire(void *arg)
{
    struct merge *b = arg;
    /* M may be being freed (count zero): then its destroy hook is about to
     * stop this record, and there is nothing left to cancel. */
    if (!ctx__try_ref(b->m))
        return;
    cancel_from_parents(b);
    drop_m(b->m);
}

static void stop_links(struct merge *b)
{
    for (size_t i = 1; i < b->n; i++)
        if (b->rec[i - 1].pk != 0)
            ctx_after_stop((ctx_after_t *)&b->rec[i - 1]);
}

/* M is done: leave the other parents' lists. */
static void merge_done(void *arg)
{
    stop_links(arg);
}

void ctx__record_quiesce(struct ctx *r)
{
    /* Acquire: pairs with the acq_rel decrement in ctx__after_release,
     * after.c's last touch of the record (a canceller that ran fn may still
     * be between fn's return and that decrement). */
    while (atomic_load_explicit(&r->refs, memory_order_acquire) != 1)
        sched_yield();
}

static void merge_destroy(void *data)
{
    struct merge *b = data;
    /* true: M never ended, so merge_done never ran and the links are still
     * registered; false: merge_done ran (stop waited for it to return). */
    if (ctx_after_stop((ctx_after_t *)&b->self))
        stop_links(b);
    ctx__record_quiesce(&b->self);
    for (size_t i = 1; i < b->n; i++) {
        if (b->rec[i - 1].pk != 0)
            ctx__record_quiesce(&b->rec[i - 1]);
        ctx_unref(b->parents[i]); /* the record's, or the plain one below */
    }
    /* The block is M's node: the tree frees it when this returns. */
}

/* A record that never enters a list: no list reference, and marked run,
 * so that stopping it returns at once. */
void ctx__record_unlisted(struct ctx *r)
{
    atomic_store_explicit(&r->refs, 2, memory_order_relaxed);
    atomic_store_explicit(&r->u.a.run, CTX__RUN_DONE, memory_order_relaxed);
}

/* Registers a record of the block; one the owner is already done for is
 * left unlisted.  Returns whether it was listed. */
static bool register_record(struct ctx *r)
{
    if (ctx__after_register(r))
        return true;
    ctx__record_unlisted(r);
    return false;
}

ctx_t *ctx_merge(ctx_t *const *parents, size_t n, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parents == NULL || n == 0 || n > (SIZE_MAX - sizeof(struct merge)) / 128) {
        errno = EINVAL;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (parents[i] == NULL) {
            errno = EINVAL;
            return NULL;
        }
    }
    size_t recs = sizeof(struct merge) + (n - 1) * sizeof(struct ctx);
    struct merge *b;
    if ((cancel != NULL && ctx__handle_reserve() != 0) ||
        (b = ctx__alloc(recs + n * sizeof(ctx_t *))) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    b->n = n;
    b->parents = (ctx_t **)(void *)((char *)b + recs);
    memcpy(b->parents, parents, n * sizeof(ctx_t *));
    /* M is made as ctx_with_custom makes a custom node, in the block. */
    b->node.ops = &merge_ops;
    b->node.done = NULL; /* no internal hook: the records do the work */
    b->node.data = b;
    struct ctx *m = &b->node.base;
    /* The block is not a slab block: its handle word starts as "no cell". */
    atomic_init(&b->node.handle, 0);
    ctx__init_cancel(m, parents[0], CTX__CUSTOM);
    ctx_cancel_t *h = cancel != NULL ? ctx__handle_bind(m) : NULL;
    b->m = m;
    /* The earliest deadline of all parents: M's deadline slot points at
     * the timer node that has it.  M holds every parent, and so that
     * node, alive. */
    struct ctx__timer *dl = ctx__dlsrc(m);
    for (size_t i = 1; i < n; i++) {
        struct ctx__timer *t = ctx__dlsrc(parents[i]);
        if (t != NULL && (dl == NULL || t->deadline < dl->deadline))
            dl = t;
    }
    m->up = (struct ctx *)dl;

    /* The records on the other parents first, the one on M last.  M can
     * be cancelled (through parents[0] or a linked parent) at any moment
     * from here on; registering the self record last means that
     * merge_done, which stops the links, can only run once every link is
     * in place, and that a cancel that came before finds the self record
     * unregistered, so that this function stops the links itself.  A
     * parent already done cancels M, with its err and cause. */
    /* Each record's count: the list's, the handle's, the block's.  The
     * self record holds no reference to M; the others hold their parent. */
    ctx__after_init(&b->self, m, m, 3, merge_done, b);
    bool m_done = (atomic_load_explicit(&m->u.c.state, memory_order_relaxed) & CTX__ERR_MASK) != 0;
    bool fire = false;
    for (size_t i = 1; i < n; i++) {
        struct ctx *r = &b->rec[i - 1];
        struct ctx *o = ctx__owner(parents[i]);
        if (ctx__kind(o) == CTX__ROOT) {
            /* Never done: nothing to link, but M still holds the parent
             * for its values. */
            r->pk = 0;
            ctx__ref(parents[i]);
            continue;
        }
        ctx__after_init(r, o, ctx__ref(parents[i]), 3, merge_fire, b);
        if (m_done || fire)
            ctx__record_unlisted(r); /* M is or will be done: no need to link */
        else if (!register_record(r))
            fire = true;
    }
    if (register_record(&b->self)) {
        /* From here merge_done (once M is done) or the destroy hook stops
         * the links. */
        if (fire)
            cancel_from_parents(b);
    } else {
        /* M is already done and merge_done will never run: stop the links
         * here (for an unlisted one, that only marks its handle stopped,
         * as merge_done would have; the destroy hook sees the self record
         * as run and leaves them alone). */
        stop_links(b);
    }
    if (cancel != NULL)
        *cancel = h;
    return m;
}
