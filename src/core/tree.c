/* SPDX-License-Identifier: MIT */

/*
 * The context tree: roots, references, cancel nodes, cancellation and
 * freeing.  docs/DESIGN.md describes the protocol; the comments here say why
 * each step is where it is.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ctx ctx__background_node = {
    .up = &ctx__background_node,
    .pk = CTX__ROOT,
};
struct ctx ctx__todo_node = {
    .up = &ctx__todo_node,
    .pk = CTX__ROOT,
};

ctx_t *ctx_background(void)
{
    return &ctx__background_node;
}

ctx_t *ctx_todo(void)
{
    return &ctx__todo_node;
}

/* ---------------------------------------------------------------------------
 * References
 */

ctx_t *ctx_ref(ctx_t *c)
{
    return c != NULL ? ctx__ref(c) : NULL;
}

/* Takes a reference unless the count already reached zero (the node is
 * being freed by another thread, which is blocked on a lock we hold). */
int ctx__try_ref(struct ctx *c)
{
    uint32_t r = atomic_load_explicit(&c->refs, memory_order_relaxed);
    while (r != 0) {
        if (atomic_compare_exchange_weak_explicit(&c->refs, &r, r + 1, memory_order_relaxed,
                                                  memory_order_relaxed))
            return 1;
    }
    return 0;
}

static int fan_release(struct ctx *p);

/* Drops one reference; true when it was the last one.  Inlined into
 * ctx_unref by force: the misuse check's call would otherwise keep the
 * compiler from doing it, and the call costs more than the check. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline int
drop_ref(struct ctx *c)
{
    uint32_t r = atomic_load_explicit(&c->refs, memory_order_relaxed);
    for (;;) {
        CTX__MISUSE(r == 0, "ctx_unref: reference count underflow (more unrefs than refs)");
        /* Ours is the last reference besides fan-out shards': they give
         * theirs back, with ours held until they have looked (a shard's
         * last child could otherwise free c under us). */
        if (r > 1 && (r - 1) % CTX__FAN_REF == 0)
            return fan_release(c);
        /* Release: everything this thread did with the node happens before
         * the free.  Acquire: the thread that drops the last reference sees
         * what the others did.  (acq_rel rather than release plus a fence,
         * which ThreadSanitizer does not model.)  A CAS rather than a
         * fetch_sub, so that the check above sees the count it replaces. */
        if (atomic_compare_exchange_weak_explicit(&c->refs, &r, r - 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            return r == 1;
    }
}

void ctx__msg_unref(struct ctx__msg *m)
{
    /* A static site block (cancel.c) is shared by every cancel at its site
     * and never freed: no count, so no shared cache line either. */
    if (m != NULL && m->size != CTX__MSG_STATIC &&
        atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) == 1)
        ctx__free(m);
}

static struct ctx__msg *msg_ref(struct ctx__msg *m)
{
    if (m != NULL && m->size != CTX__MSG_STATIC)
        atomic_fetch_add_explicit(&m->refs, 1, memory_order_relaxed);
    return m;
}

/* c's shard in its parent's fan-out, from c's state word, or NULL. */
static struct ctx__fan_shard *fan_shard(struct ctx *p, uint32_t cstate)
{
    unsigned i = (cstate & CTX__FAN_BITS) >> CTX__FAN_SHIFT;
    return i != 0 ? &ctx__fan_of(p)->sh[i - 1] : NULL;
}

/* Removes cancel node c (whose state word is cstate) from its parent's
 * children, if it is there.  A child in an open shard is unlinked under the
 * shard's lock; once the shard is closed, a canceller of the parent has
 * moved it (or is moving it) to the legacy list under the parent's lock,
 * which that canceller holds until it is done with c's subtree. */
static void detach(struct ctx *c, uint32_t cstate)
{
    struct ctx *p = ctx__owner(ctx__parent(c));
    if (ctx__kind(p) == CTX__ROOT)
        return; /* never registered */
    struct ctx__fan_shard *sh = fan_shard(p, cstate);
    if (sh != NULL) {
        ctx__lock(&sh->lock);
        int open = !sh->closed;
        if (open && c->u.c.link.pprev != NULL)
            ctx__link_remove(&c->u.c.link);
        ctx__unlock(&sh->lock);
        if (open)
            return;
    }
    ctx__lock(&p->lock);
    if (c->u.c.link.pprev != NULL)
        ctx__link_remove(&c->u.c.link);
    ctx__unlock(&p->lock);
}

/* detach() for a node that its canceller could not unlink: rare, and out
 * of line so that the usual free keeps its code as it was. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline, cold))
#endif
static void
detach_flagged(struct ctx *c, uint32_t cstate)
{
    detach(c, cstate);
}

/* Gives back a shard's reference to p.  True when it was p's last. */
static int shard_unref(struct ctx *p)
{
    /* acq_rel, as in drop_ref. */
    return atomic_fetch_sub_explicit(&p->refs, CTX__FAN_REF, memory_order_acq_rel) == CTX__FAN_REF;
}

/* Drops the reference cancel node c (state cstate) held to its parent, in
 * c's shard when it has one: the shard's own reference stays while the
 * parent has other holders.  True when the parent's count reached zero. */
static int drop_parent(struct ctx *parent, uint32_t cstate)
{
    struct ctx__fan_shard *sh = fan_shard(parent, cstate);
    if (sh == NULL)
        return drop_ref(parent);
    ctx__lock(&sh->lock);
    int give = --sh->kids == 0 && sh->dying && sh->has_ref;
    if (give)
        sh->has_ref = sh->dying = 0;
    ctx__unlock(&sh->lock);
    return give && shard_unref(parent);
}

/* Called by the holder of p's last reference besides its shards': each
 * shard without children gives its reference back now, each other one when
 * its last child goes; then the caller's reference goes.  True when p's
 * count reached zero. */
static int fan_release(struct ctx *p)
{
    struct ctx__fan *f = ctx__fan_of(p);
    for (int i = 0; i < CTX__NFAN; i++) {
        struct ctx__fan_shard *sh = &f->sh[i];
        ctx__lock(&sh->lock);
        int give = sh->has_ref && sh->kids == 0;
        if (give)
            sh->has_ref = sh->dying = 0;
        else if (sh->has_ref)
            sh->dying = 1;
        ctx__unlock(&sh->lock);
        if (give)
            shard_unref(p); /* not the last: the caller holds p */
    }
    /* The caller's reference.  No new holder can appear (no one holds p to
     * make one) except the timer thread's try_ref, whose drop comes back
     * here; the shards still holding p give their references back when
     * their last children go, and the last one frees p. */
    return atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) == 1;
}

/* Tears down cancel node c (kind, not VALUE nor WITHOUT), whose count
 * reached zero: its handle, its place in its parent's children, its fd,
 * message, timer and hooks.  Returns its state word (its fan shard) and
 * sets *size to its block's size. */
static uint32_t free_cancel(struct ctx *c, unsigned kind, size_t *size)
{
    uint32_t s;
    if (kind == CTX__CANCEL) {
        /* Acquire: pairs with the release in mark() (the cause and message
         * of a done node) and with a canceller's unlock below. */
        s = atomic_load_explicit(&c->u.c.state, memory_order_acquire);
        *size = sizeof(struct ctx);
        if (s & CTX__HANDLE) {
            *size = sizeof(struct ctx__hnode);
            goto handle;
        }
    } else {
        *size = kind == CTX__TIMER    ? sizeof(struct ctx__timer)
                : kind == CTX__CUSTOM ? sizeof(struct ctx__custom)
                                      : sizeof(struct ctx__hnode);
    handle:;
        /* First of all, the cancel handle goes stale: a ctx_cancel through
         * it is a no-op from now on.  (It waits while a ctx_cancel holds c
         * through the handle, which is why the state is read after it.) */
        ctx__handle_drop_node(c);
        s = atomic_load_explicit(&c->u.c.state, memory_order_acquire);
        /* Done by a ctx_cancel that could not unlink c (only a node with a
         * slab handle gets the flag), so here rather than on every free. */
        if (CTX__UNLIKELY(s & CTX__DETACH))
            detach_flagged(c, s);
    }
    if ((s & CTX__ERR_MASK) == 0) {
        /* Live: unlink under the parent's lock (or its shard's).  A
         * canceller that reaches c meanwhile holds that lock until it is
         * done with c's subtree.  A child of a root was never linked. */
        if (ctx__kind(ctx__parent(c)) != CTX__ROOT)
            detach(c, s);
    } else if (atomic_load_explicit(&c->lock, memory_order_acquire) != 0) {
        /* Done, and a canceller may still be walking below c: it holds c's
         * lock until it leaves.  (Acquire above pairs with its unlock when
         * the word is already 0.) */
        ctx__lock(&c->lock);
        ctx__unlock(&c->lock);
    }
    if (CTX__UNLIKELY(s & (CTX__HAS_FD | CTX__FANNED))) {
        if (s & CTX__HAS_FD)
            ctx__fd_release(c);
        if (s & CTX__FANNED)
            ctx__free(ctx__fan_of(c)->mem); /* every child is gone */
    }
    /* A live timer's msg is its deadline message (see mark()). */
    ctx__msg_unref(c->u.c.msg);
    if (kind == CTX__TIMER) {
        if ((s & CTX__ERR_MASK) == 0)
            ctx__timer_remove((struct ctx__timer *)c);
    } else if (kind == CTX__CUSTOM) {
        struct ctx__custom *cu = (struct ctx__custom *)c;
        if (cu->ops->destroy != NULL)
            cu->ops->destroy(cu->data);
    }
    return s;
}

/*
 * Frees c, whose count reached zero, then walks up: each parent loses the
 * reference its child held and is freed in turn when that was its last.  A
 * loop, not recursion, so a chain of any depth frees on any stack.
 */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void
free_chain(struct ctx *c)
{
    while (c != NULL) {
        struct ctx *parent = ctx__parent(c);
        unsigned kind = ctx__kind(c);
        uint32_t s = 0; /* a cancel node's state: its fan shard */
        size_t size;

        /* Tracking (track.c): the one test it costs a free while off. */
        if (CTX__UNLIKELY(ctx__tracking_on()))
            ctx__track_forget(c);

        if (kind == CTX__VALUE) {
            if (c->u.v.destroy != NULL)
                c->u.v.destroy(c->u.v.value);
            size = sizeof(struct ctx);
        } else if (ctx__is_cancel_kind(kind)) {
            s = free_cancel(c, kind, &size);
        } else {
            size = kind == CTX__WITHOUT ? offsetof(struct ctx, u) : sizeof(struct ctx);
        }
        ctx__node_free(c, size);
        ctx__live_add(-1);

        if (parent == NULL || ctx__kind(parent) == CTX__ROOT || !drop_parent(parent, s))
            break;
        c = parent;
    }
}

/* free_node's short free for a done cancel node whose parent reference is
 * counted in a shard of its parent's fan-out (state s: err and the shard,
 * nothing else).  The same steps as free_chain's for it, as free_node
 * takes them for a child of a parent without a fan-out; a call of its
 * own, made only when free_node's own test has failed, so that the frees
 * of other nodes run the same instructions as before. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void
free_fanned(struct ctx *c, uint32_t s, size_t size)
{
    struct ctx *parent = ctx__parent(c);
    ctx__msg_unref(c->u.c.msg);
    ctx__node_free(c, size);
    ctx__live_add(-1);
    if (drop_parent(parent, s))
        free_chain(parent);
}

/* free_chain for the commonest frees that free_leaf leaves to it: a done
 * cancel or timer node with no fd or fan-out and no canceller left below
 * it, with no handle or with a slab handle that its ctx_cancel retired
 * (nothing left to drop: ctx__handle_drop_node).  Such a node is in no
 * list (it left its parent's children when it was cancelled, or was never
 * linked, being born done) and a done timer is in no wheel (mark_live), so
 * it goes with its block, its message and its parent reference, without
 * free_cancel's tests and without free_chain's frame; free_fanned does the
 * same for one whose parent reference is in a fan-out shard.  Every other
 * node goes to free_chain. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void
free_node(struct ctx *c)
{
    unsigned kind = ctx__kind(c);
    if ((kind != CTX__CANCEL && kind != CTX__TIMER) || CTX__UNLIKELY(ctx__tracking_on()))
        goto chain;
    /* Acquire, as in free_cancel; a timer's is read after its word. */
    uint32_t s =
        kind == CTX__CANCEL ? atomic_load_explicit(&c->u.c.state, memory_order_acquire) : 0;
    size_t size = kind == CTX__TIMER ? sizeof(struct ctx__timer) : sizeof(struct ctx);
    if (kind == CTX__TIMER || (s & CTX__HANDLE)) {
        /* ctx__handle_drop_node's steps for a retired slab handle, in its
         * order: the word (acquire, pairing with the retire), the lock
         * (sequentially consistent, as there), and only then the state,
         * which the canceller that retired the handle may have changed
         * (CTX__DETACH) before it let go.  A timer's word may also be 0:
         * a block from outside the slab that never had a handle. */
        uint32_t v = atomic_load_explicit(ctx__hword(c), memory_order_acquire);
        if (((v & (CTX__SLAB_WORD | CTX__SLAB_BOUND)) != CTX__SLAB_WORD &&
             (kind != CTX__TIMER || v != 0)) ||
            atomic_load_explicit(&c->lock, memory_order_seq_cst) != 0)
            goto chain;
        s = atomic_load_explicit(&c->u.c.state, memory_order_acquire) & ~CTX__HANDLE;
        if (kind == CTX__CANCEL)
            size = sizeof(struct ctx__hnode);
    } else if (atomic_load_explicit(&c->lock, memory_order_acquire) != 0) {
        goto chain; /* a canceller may still be walking below c */
    }
    if (s == 0 || (s & ~CTX__ERR_MASK) != 0) {
        /* Done, and in a fan-out shard of its parent: no other flag. */
        if ((s & CTX__ERR_MASK) != 0 && (s & ~(CTX__ERR_MASK | CTX__FAN_BITS)) == 0) {
            free_fanned(c, s, size);
            return;
        }
        goto chain; /* live (maybe linked), or with an fd, fan-out or waiters */
    }
    struct ctx *parent = ctx__parent(c);
    ctx__msg_unref(c->u.c.msg);
    ctx__node_free(c, size);
    ctx__live_add(-1);
    if (ctx__kind(parent) == CTX__ROOT || !drop_ref(parent))
        return;
    c = parent;
chain:
    free_chain(c);
}

/* free_chain's first step for the nodes a request makes most, inline in
 * ctx_unref: a child of a root that is a cancel node with no handle, fd or
 * fan-out (live, or done with no canceller left below it), or a value node
 * with no destroy hook.  Such a node is in no list and holds no counted
 * parent, so its free is the block's.  False, having done nothing, for
 * every other node.  (What free_chain and free_cancel do for it, in short.) */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline int
free_leaf(struct ctx *c)
{
    unsigned kind = ctx__kind(c);
    if (ctx__kind(ctx__parent(c)) != CTX__ROOT || CTX__UNLIKELY(ctx__tracking_on()))
        return 0;
    if (kind == CTX__CANCEL) {
        /* Acquire, as in free_cancel. */
        uint32_t s = atomic_load_explicit(&c->u.c.state, memory_order_acquire);
        if (s & ~CTX__ERR_MASK)
            return 0;
        if (s != 0 && atomic_load_explicit(&c->lock, memory_order_acquire) != 0)
            return 0; /* a canceller may still be walking below c */
        ctx__msg_unref(c->u.c.msg);
    } else if (kind != CTX__VALUE || c->u.v.destroy != NULL) {
        return 0;
    }
    ctx__node_free(c, sizeof(struct ctx));
    ctx__live_add(-1);
    return 1;
}

void ctx__unref(struct ctx *c)
{
    if (c == NULL || ctx__kind(c) == CTX__ROOT)
        return;
    if (drop_ref(c) && !free_leaf(c))
        free_node(c);
}

void ctx_unref(ctx_t *c)
{
    ctx__unref(c);
}

/* ---------------------------------------------------------------------------
 * Creation
 */

/* Marks n done.  Called with n's lock held and n not yet done.  The cause
 * and message are written before the release that publishes err, so a
 * reader that sees err also sees them.  Until then a timer node keeps the
 * cause and message its deadline reports in these same fields (nobody reads
 * them while err is 0); the message it held is released here, after the new
 * one is referenced, since the two may be the same. */
static void mark(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg)
{
    /* A custom node's internal hook runs before err is published, so that
     * whatever it undoes is undone before anybody can see the node done. */
    if (ctx__kind(n) == CTX__CUSTOM) {
        struct ctx__custom *cu = (struct ctx__custom *)n;
        if (cu->done != NULL)
            cu->done(cu->data);
    }
    struct ctx__msg *held = n->u.c.msg;
    n->u.c.cause = cause;
    n->u.c.msg = msg_ref(msg);
    ctx__msg_unref(held);
    /* Every writer of the state word holds n's lock (waiters and done fds
     * set their flags under it too), so a load and a store suffice.
     * Release: pairs with the acquire loads in ctx_err, ctx_cause, attach
     * and the waiters; publishes cause and msg. */
    uint32_t old = atomic_load_explicit(&n->u.c.state, memory_order_relaxed);
    atomic_store_explicit(&n->u.c.state, old | err, memory_order_release);
    if (old & CTX__WAITERS)
        ctx__futex_wake(&n->u.c.state, INT32_MAX);
    if (old & CTX__HAS_FD)
        ctx__fd_signal(n);
}

/* mark() for a node that may have a timer: a done node's timer is removed at
 * once.  (A node born done never had one.) */
static void mark_live(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg)
{
    mark(n, err, cause, msg);
    if (ctx__kind(n) == CTX__TIMER)
        ctx__timer_remove((struct ctx__timer *)n);
}

/* This thread's shard in a fan-out: threads are dealt out round robin. */
static unsigned my_fan(void)
{
    static CTX__TLS unsigned mine;
    static _Atomic unsigned next;
    if (mine == 0)
        mine = 1 + atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) % CTX__NFAN;
    return mine - 1;
}

/* Links n (whose parent is the fanned p itself) into this thread's shard,
 * its parent reference counted there.  Returns 0, linking nothing, when the
 * shard is closed: p is done. */
static int fan_link(struct ctx *n, struct ctx *p, unsigned kind)
{
    unsigned i = my_fan();
    struct ctx__fan_shard *sh = &ctx__fan_of(p)->sh[i];
    ctx__lock(&sh->lock);
    if (sh->closed) {
        ctx__unlock(&sh->lock);
        return 0;
    }
    if (!sh->has_ref) {
        /* Release: pairs with the acquire of the drop that finds only shard
         * references left and then reads the fan-out (which this creator
         * saw installed). */
        atomic_fetch_add_explicit(&p->refs, CTX__FAN_REF, memory_order_release);
        sh->has_ref = 1;
    }
    sh->kids++;
    n->pk = (uintptr_t)p | kind;
    uint32_t s = atomic_load_explicit(&n->u.c.state, memory_order_relaxed); /* CTX__HANDLE */
    atomic_store_explicit(&n->u.c.state, s | (uint32_t)(i + 1) << CTX__FAN_SHIFT,
                          memory_order_relaxed);
    ctx__link_insert(&sh->children, &n->u.c.link);
    ctx__unlock(&sh->lock);
    return 1;
}

/* Gives cancel node p a fan-out, after a creation of a child found p's
 * lock taken by another thread.  Without memory p stays as it is. */
static void fan_install(struct ctx *p)
{
    void *mem = ctx__alloc(sizeof(struct ctx__fan) + 63);
    if (mem == NULL)
        return;
    struct ctx__fan *f = (struct ctx__fan *)(((uintptr_t)mem + 63) & ~(uintptr_t)63);
    memset(f, 0, sizeof *f);
    f->mem = mem;
    for (int i = 0; i < CTX__NFAN; i++)
        atomic_init(&f->sh[i].lock, 0);
    ctx__lock(&p->lock);
    uint32_t s = atomic_load_explicit(&p->u.c.state, memory_order_relaxed);
    if ((s & (CTX__ERR_MASK | CTX__FANNED)) == 0) {
        f->legacy = p->u.c.children;
        if (f->legacy != NULL)
            f->legacy->pprev = &f->legacy;
        p->u.c.children = (struct ctx__link *)((uintptr_t)f | 1);
        /* Release: pairs with the acquire in ctx__init_cancel; a creator
         * that sees CTX__FANNED sees the fan-out. */
        atomic_store_explicit(&p->u.c.state, s | CTX__FANNED, memory_order_release);
        mem = NULL;
    }
    ctx__unlock(&p->lock);
    ctx__free(mem);
}

/* Closes every shard of done node x's fan-out and moves their children to
 * the legacy list, where the cancellation walk finds them.  Under x's lock;
 * each shard's lock is taken inside it (node lock, then shard lock). */
static void fan_close(struct ctx *x)
{
    struct ctx__fan *f = ctx__fan_of(x);
    for (int i = 0; i < CTX__NFAN; i++) {
        struct ctx__fan_shard *sh = &f->sh[i];
        ctx__lock(&sh->lock);
        sh->closed = 1;
        while (sh->children != NULL) {
            struct ctx__link *l = sh->children;
            ctx__link_remove(l);
            ctx__link_insert(&f->legacy, l);
        }
        ctx__unlock(&sh->lock);
    }
}

/* ctx__lock, done by hand to learn whether another thread held the lock:
 * true when it did (link_cancel then gives the parent a fan-out). */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline int
lock_contended(_Atomic uint32_t *l)
{
    ctx__hold();
    uint32_t unlocked = 0;
    /* Acquire: pairs with the release in ctx__unlock_raw, as in
     * ctx__lock_raw. */
    if (atomic_compare_exchange_strong_explicit(l, &unlocked, 1, memory_order_acquire,
                                                memory_order_relaxed))
        return 0;
    ctx__lock_slow(l);
    return 1;
}

/*
 * Initializes cancel node n as a child of parent and links it into the
 * children of parent's owner, or marks it done at birth when that owner is
 * already done.  n is not visible to any other thread yet.  Takes a
 * reference to parent (or counts it in a fan-out shard).  Cannot fail.
 */
static void link_cancel(struct ctx *n, ctx_t *parent, struct ctx *p, unsigned kind);

/* ctx__init_cancel's body, inlined into ctx_with_cancel, whose kind is a
 * constant there: a child of a root is made without a further call. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline void
init_cancel(struct ctx *n, ctx_t *parent, unsigned kind)
{
    struct ctx *p = ctx__owner(parent);
    uint32_t flags = kind & CTX__WITH_HANDLE ? CTX__HANDLE : 0;
    kind &= 7u;
    int root = ctx__kind(p) == CTX__ROOT;

    ctx__live_add(1);
    n->up = kind == CTX__TIMER ? n : root ? NULL : p->up; /* ctx__dlsrc(parent) */
    atomic_init(&n->refs, 1);
    /* A slab block's lock word is 0 while the block is free, and a stale
     * ctx_cancel may hold it for a moment (cancel.c) even now: only a
     * block from elsewhere gets its word set. */
    if ((flags == 0 && kind == CTX__CANCEL) ||
        !(atomic_load_explicit(ctx__hword(n), memory_order_relaxed) & CTX__SLAB_WORD))
        atomic_init(&n->lock, 0);
    atomic_init(&n->u.c.state, flags);
    if (kind != CTX__TIMER) {
        /* A timer's creator has put its deadline's cause here already. */
        n->u.c.cause = 0;
        n->u.c.msg = NULL;
    }
    n->u.c.children = NULL;
    n->u.c.link.next = NULL;
    n->u.c.link.pprev = NULL;

    if (root) {
        /* The parent can never be done: nothing to link to.  (A root
         * parent is not counted; a value parent over a root is.) */
        n->pk = (uintptr_t)ctx__ref(parent) | kind;
        return;
    }
    link_cancel(n, parent, p, kind);
}

void ctx__init_cancel(struct ctx *n, ctx_t *parent, unsigned kind)
{
    init_cancel(n, parent, kind);
}

/* The rest of init_cancel for a parent whose owner p is a cancel node:
 * link n (kind without flags) under p, or mark it done at birth. */
static void link_cancel(struct ctx *n, ctx_t *parent, struct ctx *p, unsigned kind)
{
    /* Acquire: pairs with the release in mark(); lets us copy cause and msg
     * without the parent's lock when the parent is already done.  Also
     * pairs with the release in fan_install(). */
    uint32_t s = atomic_load_explicit(&p->u.c.state, memory_order_acquire);
    if ((s & CTX__ERR_MASK) == 0 && (s & CTX__FANNED) && parent == p) {
        if (fan_link(n, p, kind))
            return;
        /* Closed: the canceller marked p before it took the shard lock we
         * then took.  Acquire: pairs with mark()'s release. */
        s = atomic_load_explicit(&p->u.c.state, memory_order_acquire);
    } else if ((s & CTX__ERR_MASK) == 0) {
        int contended = lock_contended(&p->lock);
        s = atomic_load_explicit(&p->u.c.state, memory_order_relaxed);
        if ((s & CTX__ERR_MASK) == 0) {
            n->pk = (uintptr_t)ctx__ref(parent) | kind;
            ctx__link_insert(ctx__kids(p), &n->u.c.link);
            ctx__unlock(&p->lock);
            /* Another thread makes children of p at the same time: give p
             * a fan-out for the next ones. */
            if (contended && parent == p && !(s & CTX__FANNED))
                fan_install(p);
            return;
        }
        ctx__unlock(&p->lock);
    }
    /* Born done, with the parent's err and cause. */
    n->pk = (uintptr_t)ctx__ref(parent) | kind;
    if (kind == CTX__CANCEL) {
        /* mark() in short: no other thread can see n yet (no waiter, no
         * fd, no lock), a cancel node has no hook, and it holds no
         * message.  The caller's publication of n publishes these. */
        n->u.c.cause = p->u.c.cause;
        n->u.c.msg = msg_ref(p->u.c.msg);
        uint32_t flags = atomic_load_explicit(&n->u.c.state, memory_order_relaxed);
        atomic_store_explicit(&n->u.c.state, flags | (s & CTX__ERR_MASK), memory_order_relaxed);
        return;
    }
    mark(n, s & CTX__ERR_MASK, p->u.c.cause, p->u.c.msg);
}

/* The fields link_quick and born_done set alike. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline void
quick_init(struct ctx *n, struct ctx *p, uint32_t flags)
{
    ctx__live_add(1);
    n->up = p->up; /* ctx__dlsrc(p) */
    atomic_init(&n->refs, 1);
    /* As in init_cancel: a slab block's lock word is left as it is. */
    if (flags == 0 || !(atomic_load_explicit(ctx__hword(n), memory_order_relaxed) & CTX__SLAB_WORD))
        atomic_init(&n->lock, 0);
    n->u.c.children = NULL;
    n->pk = (uintptr_t)ctx__ref(p) | CTX__CANCEL;
}

/* link_quick for a parent p found done (state s, read with acquire):
 * n is born done, as at the end of link_cancel.  Nobody else sees n yet,
 * and the caller's publication of n publishes what is written here. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static int
born_done(struct ctx *n, struct ctx *p, uint32_t flags, uint32_t s)
{
    quick_init(n, p, flags);
    n->u.c.cause = p->u.c.cause;
    n->u.c.msg = msg_ref(p->u.c.msg);
    atomic_init(&n->u.c.state, flags | (s & CTX__ERR_MASK));
    n->u.c.link.next = NULL;
    n->u.c.link.pprev = NULL;
    return 1;
}

/* link_quick for a live parent p with a fan-out: n (flags 0 or
 * CTX__HANDLE) is made as init_cancel would make it and linked into this
 * thread's shard, where its parent reference is counted (so no write to
 * p's line).  Returns 0, having left n for init_cancel, when the shard is
 * closed: p is done, and link_cancel makes n born done. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static int
fan_quick(struct ctx *n, struct ctx *p, uint32_t flags)
{
    n->up = p->up; /* ctx__dlsrc(p) */
    atomic_init(&n->refs, 1);
    /* As in init_cancel: a slab block's lock word is left as it is. */
    if (flags == 0 || !(atomic_load_explicit(ctx__hword(n), memory_order_relaxed) & CTX__SLAB_WORD))
        atomic_init(&n->lock, 0);
    atomic_init(&n->u.c.state, flags);
    n->u.c.cause = 0;
    n->u.c.msg = NULL;
    n->u.c.children = NULL;
    if (!fan_link(n, p, CTX__CANCEL))
        return 0;
    ctx__live_add(1);
    return 1;
}

/* init_cancel for the commonest children of a cancel node: cancel node n
 * (with flags 0, or CTX__HANDLE for a handle block) under cancel node p
 * itself, either live and without a fan-out (n is linked, and p gets a
 * fan-out when its lock was contended, as in link_cancel), live with a
 * fan-out (n goes into this thread's shard: fan_quick), or done (n is
 * born done).  Written out here so that a wide tree's children are made
 * without link_cancel's call and frame.  Returns 0 for any other case,
 * leaving n to init_cancel, which initialises it from the start. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline int
link_quick(struct ctx *n, struct ctx *p, uint32_t flags)
{
    /* Acquire: pairs with the release in mark(), so that the cause and
     * message of a done p can be copied without its lock. */
    uint32_t s = atomic_load_explicit(&p->u.c.state, memory_order_acquire);
    if (CTX__UNLIKELY(s & CTX__ERR_MASK))
        return born_done(n, p, flags, s);
    if (s & CTX__FANNED)
        return fan_quick(n, p, flags);
    int contended = lock_contended(&p->lock);
    /* Under p's lock, every change of the state word is seen. */
    if (atomic_load_explicit(&p->u.c.state, memory_order_relaxed) & (CTX__ERR_MASK | CTX__FANNED)) {
        ctx__unlock(&p->lock);
        return 0;
    }
    quick_init(n, p, flags);
    atomic_init(&n->u.c.state, flags);
    n->u.c.cause = 0;
    n->u.c.msg = NULL;
    ctx__link_insert(&p->u.c.children, &n->u.c.link);
    ctx__unlock(&p->lock);
    /* Another thread makes children of p at the same time: give p a
     * fan-out for the next ones, as link_cancel does. */
    if (contended)
        fan_install(p);
    return 1;
}

/* ctx_with_cancel without a handle, any parent. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static ctx_t *
with_cancel_any(ctx_t *parent)
{
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx *n = ctx__node_alloc(sizeof *n);
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    if (ctx__kind(parent) != CTX__CANCEL || !link_quick(n, parent, 0))
        init_cancel(n, parent, CTX__CANCEL);
    return n;
}

/* ctx_with_cancel without a handle, inline in it.  A child of a root
 * itself, with a block in this thread's cache, is the commonest creation
 * of all: made here with no call and no saved register (init_cancel's
 * work for it, written out); everything else goes to with_cancel_any by a
 * jump. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline ctx_t *
with_cancel_plain(ctx_t *parent)
{
#if CTX__NODE_CACHE
    struct ctx *n = ctx__tc.head[0];
    struct ctx__live_cell *lc = ctx__live_mine;
    if (parent != NULL && ctx__kind(parent) == CTX__ROOT && n != NULL && lc != NULL &&
        atomic_load_explicit(&ctx__caching, memory_order_relaxed)) {
        ctx__tc.head[0] = *(void **)n;
        ctx__tc.n[0]--;
        atomic_store_explicit(&lc->n, atomic_load_explicit(&lc->n, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        n->up = NULL;
        n->pk = (uintptr_t)parent | CTX__CANCEL; /* a root is not counted */
        atomic_init(&n->refs, 1);
        atomic_init(&n->lock, 0);
        atomic_init(&n->u.c.state, 0);
        n->u.c.cause = 0;
        n->u.c.msg = NULL;
        n->u.c.children = NULL;
        n->u.c.link.next = NULL;
        n->u.c.link.pprev = NULL;
        return n;
    }
#endif
    return with_cancel_any(parent);
}

/* ctx_with_cancel with a handle: a function of its own, so that
 * ctx_with_cancel reaches it by a jump, and saves no register for it. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static ctx_t *
with_cancel_handle(ctx_t *parent, ctx_cancel_t **cancel)
{
    *cancel = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    /* A node with a handle is the larger block that has room for the
     * handle's word.  A block from a program's allocator needs a cell,
     * reserved before the node is made so that binding it cannot fail; a
     * slab block's handle is its own word. */
    struct ctx__hnode *n = ctx__node_alloc(sizeof *n);
    if (n == NULL)
        goto nomem;
    if (!(atomic_load_explicit(&n->handle, memory_order_relaxed) & CTX__SLAB_WORD) &&
        ctx__handle_reserve() != 0) {
        ctx__node_free(n, sizeof *n);
        goto nomem;
    }
    if (ctx__kind(parent) != CTX__CANCEL || !link_quick(&n->base, parent, CTX__HANDLE))
        init_cancel(&n->base, parent, CTX__CANCEL | CTX__WITH_HANDLE);
    *cancel = ctx__handle_bind(&n->base);
    return &n->base;
nomem:
    errno = ENOMEM;
    return NULL;
}

ctx_t *ctx_with_cancel(ctx_t *parent, ctx_cancel_t **cancel)
{
    return cancel == NULL ? with_cancel_plain(parent) : with_cancel_handle(parent, cancel);
}

/* ---------------------------------------------------------------------------
 * Cancellation
 *
 * Depth-first and iterative.  The canceller holds the lock of every node on
 * its current path (each node on the path is locked, marked done, and has
 * children left to visit), taking locks strictly from parent to child.  A
 * node's lock is released only when its whole subtree is done.  Hence a
 * thread that finds a node already done, after taking that node's lock,
 * knows its subtree is complete; that is what makes ctx_cancel synchronous
 * even when several threads cancel overlapping subtrees.
 *
 * The path is threaded through the nodes' own link.next fields (a node is
 * unlinked from its parent before it is pushed), so cancelling a tree of any
 * depth needs no memory and no stack.  The AfterFunc records the walk
 * collects are chained the same way and run after every lock is released.
 */

static struct ctx *link_node(struct ctx__link *l)
{
    return l == NULL ? NULL : ctx__from_link(l);
}

struct ctx__msg *ctx__msg_new(const char *text)
{
    if (text == NULL)
        return NULL;
    size_t len = strlen(text);
    struct ctx__msg *msg = ctx__alloc(sizeof *msg + len + 1);
    if (msg != NULL) {
        atomic_init(&msg->refs, 1);
        msg->has_text = 1;
        msg->size = 0;
        msg->file = msg->func = NULL;
        msg->line = 0;
        memcpy(msg->text, text, len + 1);
    }
    return msg;
}

void ctx__lock_sc(_Atomic uint32_t *l)
{
    ctx__hold();
    uint32_t unlocked = 0;
    if (atomic_compare_exchange_strong_explicit(l, &unlocked, 1, memory_order_seq_cst,
                                                memory_order_relaxed))
        return;
    /* Taken after a wait: one more sequentially consistent
     * read-modify-write, which leaves the word as it is, puts this
     * acquisition in the order the free's check relies on. */
    ctx__lock_slow(l);
    atomic_fetch_or_explicit(l, 0, memory_order_seq_cst);
}

/* Takes a node or shard lock if it is free, without waiting. */
static int try_lock(_Atomic uint32_t *l)
{
    ctx__hold();
    uint32_t unlocked = 0;
    /* Acquire, as in ctx__lock_raw. */
    if (atomic_compare_exchange_strong_explicit(l, &unlocked, 1, memory_order_acquire,
                                                memory_order_relaxed))
        return 1;
    ctx__release();
    return 0;
}

/* detach() for a caller that holds c's lock and so must not wait for its
 * parent's (or shard's), which comes before c's in the lock order; p is
 * the owner of c's parent, a cancel node.  True when c is no longer in its
 * parent's children. */
static int unlink_locked(struct ctx *c, struct ctx *p, uint32_t cstate)
{
    struct ctx__fan_shard *sh = fan_shard(p, cstate);
    if (sh != NULL) {
        if (!try_lock(&sh->lock))
            return 0;
        int open = !sh->closed;
        if (open && c->u.c.link.pprev != NULL)
            ctx__link_remove(&c->u.c.link);
        ctx__unlock(&sh->lock);
        if (open)
            return 1;
    }
    if (!try_lock(&p->lock))
        return 0;
    if (c->u.c.link.pprev != NULL)
        ctx__link_remove(&c->u.c.link);
    ctx__unlock(&p->lock);
    return 1;
}

/* A child of a root was never linked: the test is inline, the unlinking
 * (unlink_locked, with p the parent's owner) a call. */
static inline int detach_locked(struct ctx *c, uint32_t cstate)
{
    struct ctx *p = ctx__owner(ctx__parent(c));
    return ctx__kind(p) == CTX__ROOT || unlink_locked(c, p, cstate);
}

/* The cancellation walk.  With own set, n's err comes with the cause and
 * message n keeps for its deadline (read under n's lock: a concurrent
 * cancel may replace them).  With defer set, the AfterFunc records found
 * are appended to *defer for the callback threads instead of run here.
 * With locked set, the caller has taken n's lock and holds n through it
 * alone (ctx__cancel_locked): n leaves its parent before its lock goes. */
static void cancel_walk(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg, int own,
                        struct ctx__chain *defer, const void *pin, int locked)
{
    if (!locked)
        ctx__lock(&n->lock);
    if (atomic_load_explicit(&n->u.c.state, memory_order_relaxed) & CTX__ERR_MASK) {
        /* Already done; since we hold its lock, whoever did it has finished
         * its subtree too. */
        if (locked)
            ctx__slab_retire(n);
        ctx__unlock(&n->lock);
        if (pin != NULL)
            ctx__handle_unpin(pin);
        return;
    }
    if (own) {
        cause = n->u.c.cause;
        msg = n->u.c.msg; /* n keeps its reference through mark() */
    }
    mark_live(n, err, cause, msg);
    if (atomic_load_explicit(&n->u.c.state, memory_order_relaxed) & CTX__FANNED)
        fan_close(n);

    struct ctx__link *callbacks = NULL; /* AFTER records to run */
    struct ctx__link *last = NULL;      /* the first found: the chain's end */
    struct ctx *x = n;                  /* current node: locked and done */
    for (;;) {
        struct ctx__link *l = *ctx__kids(x);
        if (l == NULL) {
            if (x == n)
                break;
            /* x's subtree is complete: pop it.  Read the path link before
             * unlocking: once x is unlocked, a thread freeing x may go on. */
            struct ctx *up = link_node(x->u.c.link.next);
            ctx__unlock(&x->lock);
            x = up != NULL ? up : n;
            continue;
        }
        ctx__link_remove(l);
        struct ctx *y = ctx__from_link(l);
        if (ctx__kind(y) == CTX__AFTER) {
            if (callbacks == NULL)
                last = l;
            l->next = callbacks;
            callbacks = l;
            continue;
        }
        /* No reference is needed to keep y alive: a thread freeing a live y
         * first takes x's lock to unlink it, and x stays locked until y's
         * subtree is done; a thread freeing y once it is done waits for
         * y's lock, which we hold until then. */
        ctx__lock(&y->lock);
        uint32_t ys = atomic_load_explicit(&y->u.c.state, memory_order_relaxed);
        if (ys & CTX__ERR_MASK) {
            /* Cancelled by its own handle; that canceller held y's lock
             * until y's subtree was done and will find y unlinked. */
            ctx__unlock(&y->lock);
            continue;
        }
        if (ctx__kind(y) == CTX__CANCEL && !(ys & (CTX__WAITERS | CTX__HAS_FD))) {
            /* mark() in short for what a wide tree is made of: a plain
             * cancel node has no hook and no timer, holds no message
             * while it is live, and here has nobody to wake. */
            y->u.c.cause = cause;
            y->u.c.msg = msg_ref(msg);
            /* Release, as in mark(). */
            atomic_store_explicit(&y->u.c.state, ys | err, memory_order_release);
        } else {
            mark_live(y, err, cause, msg);
        }
        if (y->u.c.children == NULL) {
            /* No child and no AfterFunc record (a fan-out would make the
             * field non-NULL): y's subtree is done already, and y need not
             * go on the path.  y is not touched again. */
            ctx__unlock(&y->lock);
            continue;
        }
        if (atomic_load_explicit(&y->u.c.state, memory_order_relaxed) & CTX__FANNED)
            fan_close(y);
        l->next = x == n ? NULL : &x->u.c.link; /* push y on the path */
        x = y;
    }

    /* A cancelled node leaves its parent at once (Go's removeChild). */
    uint32_t s = atomic_load_explicit(&n->u.c.state, memory_order_relaxed);
    if (locked) {
        /* Once its lock goes n may be freed, so it leaves now; when that
         * would mean waiting (a canceller of the parent may hold the
         * parent's lock and wait for n's), its free unlinks it instead.
         * Under n's lock, as every change of its state; release, like
         * mark()'s store of the error that it extends. */
        if (!detach_locked(n, s))
            atomic_store_explicit(&n->u.c.state, s | CTX__DETACH, memory_order_release);
        ctx__slab_retire(n);
        ctx__unlock(&n->lock);
    } else {
        ctx__unlock(&n->lock);
        detach(n, s);
    }
    /* n is not touched again: a callback below may drop its last
     * reference, and the free waits for the pin to go. */
    if (pin != NULL)
        ctx__handle_unpin(pin);

    /* Callbacks run with no lock held, after the whole subtree is done:
     * here, or on the callback threads when the timer thread cancels. */
    if (defer != NULL && callbacks != NULL) {
        *defer->tail = callbacks;
        defer->tail = &last->next;
    } else {
        while (callbacks != NULL) {
            struct ctx *r = ctx__from_link(callbacks);
            callbacks = callbacks->next;
            ctx__run_after(r);
        }
    }
}

void ctx__cancel(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg, int defer)
{
    if (!defer) {
        cancel_walk(n, err, cause, msg, 0, NULL, NULL, 0);
        return;
    }
    struct ctx__chain chain = { NULL, &chain.head };
    cancel_walk(n, err, cause, msg, 0, &chain, NULL, 0);
    if (chain.head != NULL)
        ctx__after_defer(&chain);
}

void ctx__cancel_deadline(struct ctx__timer *t, struct ctx__chain *defer)
{
    cancel_walk(&t->base, CTX_DEADLINE_EXCEEDED, 0, NULL, 1, defer, NULL, 0);
}

void ctx__cancel_pinned(struct ctx *n, int cause, struct ctx__msg *msg, const void *h)
{
    cancel_walk(n, CTX_CANCELED, cause, msg, 0, NULL, h, 0);
}

int ctx__cancel_leaf_locked(struct ctx *n, int cause, struct ctx__msg *msg)
{
    /* A live plain cancel or timer node with no child, AfterFunc record,
     * waiter or fd (what a handle cancels most): the walk in short, with
     * the same steps in the same order (mark, remove the timer, leave the
     * parent, retire the handle, unlock). */
    uint32_t s = atomic_load_explicit(&n->u.c.state, memory_order_relaxed);
    unsigned kind = ctx__kind(n);
    if ((kind != CTX__CANCEL && kind != CTX__TIMER) ||
        (s & (CTX__ERR_MASK | CTX__WAITERS | CTX__HAS_FD | CTX__FANNED)) || n->u.c.children != NULL)
        return 0;
    /* A live cancel node holds no message; a live timer node holds its
     * deadline's, released after the new one is referenced (see mark()). */
    struct ctx__msg *held = n->u.c.msg;
    n->u.c.cause = cause;
    n->u.c.msg = msg_ref(msg);
    if (kind == CTX__TIMER)
        ctx__msg_unref(held);
    /* Release, as in mark(). */
    s |= CTX_CANCELED;
    atomic_store_explicit(&n->u.c.state, s, memory_order_release);
    if (kind == CTX__TIMER)
        ctx__timer_remove((struct ctx__timer *)n);
    if (!detach_locked(n, s))
        atomic_store_explicit(&n->u.c.state, s | CTX__DETACH, memory_order_release);
    ctx__slab_retire(n);
    ctx__unlock(&n->lock);
    return 1;
}

void ctx__cancel_locked(struct ctx *n, int cause, struct ctx__msg *msg)
{
    cancel_walk(n, CTX_CANCELED, cause, msg, 0, NULL, NULL, 1);
}

/* ---------------------------------------------------------------------------
 * Observation
 */

/* The parentheses keep ctx.h's inline macro from expanding here. */
int(ctx_err)(ctx_t *c)
{
    if (c == NULL)
        return EINVAL;
    /* Acquire: pairs with the release in mark(). */
    return (int)(atomic_load_explicit(&ctx__owner(c)->u.c.state, memory_order_acquire) &
                 CTX__ERR_MASK);
}

int ctx_cause(ctx_t *c, const char **msg)
{
    if (msg != NULL)
        *msg = NULL;
    if (c == NULL)
        return EINVAL;
    struct ctx *o = ctx__owner(c);
    /* Acquire: pairs with the release in mark(); cause and msg were written
     * before it. */
    int err = (int)(atomic_load_explicit(&o->u.c.state, memory_order_acquire) & CTX__ERR_MASK);
    if (err == 0)
        return 0;
    int code = o->u.c.cause != 0 ? o->u.c.cause : err;
    if (msg != NULL) {
        const char *text = ctx__msg_text(o->u.c.msg);
        *msg = text != NULL ? text : ctx_strerror(code);
    }
    return code;
}
