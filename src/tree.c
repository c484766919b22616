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

/* Drops one reference; true when it was the last one. */
static int drop_ref(struct ctx *c)
{
    /* Release: everything this thread did with the node happens before the
     * free.  Acquire: the thread that drops the last reference sees what the
     * others did.  (acq_rel rather than release plus a fence, which
     * ThreadSanitizer does not model; on x86 both are one locked
     * instruction.) */
    uint32_t old = atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel);
    if (old != 1) {
#ifndef NDEBUG
        if (old == 0)
            ctx__misuse("ctx_unref: reference count underflow (more unrefs than refs)");
#endif
        return 0;
    }
    return 1;
}

void ctx__msg_unref(struct ctx__msg *m)
{
    /* A static site block (track.c) is shared by every cancel at its site
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

static size_t ctx__node_size(unsigned kind)
{
    switch (kind) {
    case CTX__TIMER:
        return sizeof(struct ctx__timer);
    case CTX__CUSTOM:
        return sizeof(struct ctx__custom);
    case CTX__WITHOUT:
        return offsetof(struct ctx, u);
    default:
        return sizeof(struct ctx);
    }
}

/* Removes cancel node c from its parent's children list, if it is there. */
static void detach(struct ctx *c)
{
    struct ctx *p = ctx__owner(ctx__parent(c));
    if (ctx__kind(p) == CTX__ROOT)
        return; /* never registered */
    ctx__lock(&p->lock);
    if (c->u.c.link.pprev != NULL)
        ctx__link_remove(&c->u.c.link);
    ctx__unlock(&p->lock);
}

/*
 * Frees c, whose count reached zero, then walks up: each parent loses the
 * reference its child held and is freed in turn when that was its last.  A
 * loop, not recursion, so a chain of any depth frees on any stack.
 */
static void free_chain(struct ctx *c)
{
    while (c != NULL) {
        struct ctx *parent = ctx__parent(c);
        unsigned kind = ctx__kind(c);

        /* Tracking (track.c): the one test it costs a free while off. */
        if (ctx__tracking_on())
            ctx__track_forget(c);

        if (kind == CTX__VALUE) {
            if (c->u.v.destroy != NULL)
                c->u.v.destroy(c->u.v.value);
        } else if (ctx__is_cancel_kind(kind)) {
            uint32_t s = atomic_load_explicit(&c->u.c.state, memory_order_acquire);
            if ((s & CTX__ERR_MASK) == 0) {
                /* Live: unlink under the parent's lock.  A canceller that
                 * reaches c meanwhile holds that lock until it is done
                 * with c's subtree. */
                detach(c);
            } else if (atomic_load_explicit(&c->lock, memory_order_acquire) != 0) {
                /* Done, and a canceller may still be walking below c: it
                 * holds c's lock until it leaves.  (Acquire above pairs with
                 * its unlock when the word is already 0.) */
                ctx__lock(&c->lock);
                ctx__unlock(&c->lock);
            }
            if (s & CTX__HAS_FD)
                ctx__fd_release(c);
            ctx__msg_unref(c->u.c.msg);
            if (kind == CTX__TIMER) {
                struct ctx__timer *t = (struct ctx__timer *)c;
                if ((s & CTX__ERR_MASK) == 0)
                    ctx__timer_remove(t);
                ctx__msg_unref(t->dl_msg);
            }
            if (kind == CTX__CUSTOM) {
                struct ctx__custom *cu = (struct ctx__custom *)c;
                if (cu->ops->destroy != NULL)
                    cu->ops->destroy(cu->data);
            }
        }
#ifndef NDEBUG
        c->pk = (uintptr_t)parent | CTX__FREED;
#endif
        ctx__node_free(c, ctx__node_size(kind));

        if (parent == NULL || ctx__kind(parent) == CTX__ROOT || !drop_ref(parent))
            break;
        c = parent;
    }
}

void ctx_unref(ctx_t *c)
{
    if (c == NULL || ctx__kind(c) == CTX__ROOT)
        return;
    if (drop_ref(c))
        free_chain(c);
}

/* ---------------------------------------------------------------------------
 * Creation
 */

/* Marks n done.  Called with n's lock held and n not yet done.  The cause
 * and message are written before the release that publishes err, so a
 * reader that sees err also sees them. */
static void mark(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg)
{
    /* A custom node's internal hook runs before err is published, so that
     * whatever it undoes is undone before anybody can see the node done. */
    if (ctx__kind(n) == CTX__CUSTOM) {
        struct ctx__custom *cu = (struct ctx__custom *)n;
        if (cu->done != NULL)
            cu->done(cu->data);
    }
    n->u.c.cause = cause;
    n->u.c.msg = msg_ref(msg);
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

/*
 * Initializes cancel node n as a child of parent and links it into the
 * children list of parent's owner, or marks it done at birth when that owner
 * is already done.  n is not visible to any other thread yet.  Takes a
 * reference to parent.  Cannot fail.
 */
void ctx__init_cancel(struct ctx *n, ctx_t *parent, unsigned kind)
{
    struct ctx *p = ctx__owner(parent);

    n->up = kind == CTX__TIMER ? n : (struct ctx *)ctx__dlsrc(parent);
    n->pk = (uintptr_t)ctx__ref(parent) | kind;
    atomic_init(&n->refs, 1);
    atomic_init(&n->lock, 0);
    atomic_init(&n->u.c.state, 0);
    n->u.c.cause = 0;
    n->u.c.msg = NULL;
    n->u.c.children = NULL;
    n->u.c.link.next = NULL;
    n->u.c.link.pprev = NULL;

    if (ctx__kind(p) == CTX__ROOT)
        return; /* the parent can never be done: nothing to link to */

    /* Acquire: pairs with the release in mark(); lets us copy cause and msg
     * without the parent's lock when the parent is already done. */
    uint32_t s = atomic_load_explicit(&p->u.c.state, memory_order_acquire);
    if ((s & CTX__ERR_MASK) == 0) {
        ctx__lock(&p->lock);
        s = atomic_load_explicit(&p->u.c.state, memory_order_relaxed);
        if ((s & CTX__ERR_MASK) == 0) {
            ctx__link_insert(&p->u.c.children, &n->u.c.link);
            ctx__unlock(&p->lock);
            return;
        }
        ctx__unlock(&p->lock);
    }
    /* Born done, with the parent's err and cause. */
    mark(n, s & CTX__ERR_MASK, p->u.c.cause, p->u.c.msg);
}

ctx_t *ctx_with_cancel(ctx_t *parent, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx *n = ctx__node_alloc(sizeof *n);
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    ctx__init_cancel(n, parent, CTX__CANCEL);
    if (cancel != NULL)
        *cancel = (ctx_cancel_t *)n;
    return n;
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

void ctx__cancel(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg, int defer)
{
    ctx__lock(&n->lock);
    if (atomic_load_explicit(&n->u.c.state, memory_order_relaxed) & CTX__ERR_MASK) {
        /* Already done; since we hold its lock, whoever did it has finished
         * its subtree too. */
        ctx__unlock(&n->lock);
        return;
    }
    mark_live(n, err, cause, msg);

    struct ctx__link *callbacks = NULL; /* AFTER records to run */
    struct ctx *x = n;                  /* current node: locked and done */
    for (;;) {
        struct ctx__link *l = x->u.c.children;
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
            l->next = callbacks;
            callbacks = l;
            continue;
        }
        /* No reference is needed to keep y alive: a thread freeing a live y
         * first takes x's lock to unlink it, and x stays locked until y's
         * subtree is done; a thread freeing y once it is done waits for
         * y's lock, which we hold until then. */
        ctx__lock(&y->lock);
        if (atomic_load_explicit(&y->u.c.state, memory_order_relaxed) & CTX__ERR_MASK) {
            /* Cancelled by its own handle; that canceller held y's lock
             * until y's subtree was done and will find y unlinked. */
            ctx__unlock(&y->lock);
            continue;
        }
        mark_live(y, err, cause, msg);
        l->next = x == n ? NULL : &x->u.c.link; /* push y on the path */
        x = y;
    }
    ctx__unlock(&n->lock);

    /* A cancelled node leaves its parent at once (Go's removeChild). */
    detach(n);

    /* Callbacks run with no lock held, after the whole subtree is done:
     * here, or on the callback threads when the timer thread cancels. */
    if (defer && callbacks != NULL)
        ctx__after_defer(callbacks);
    else
        while (callbacks != NULL) {
            struct ctx *r = ctx__from_link(callbacks);
            callbacks = callbacks->next;
            ctx__run_after(r);
        }
}

void ctx__misuse(const char *msg)
{
    fprintf(stderr, "libctx: misuse: %s\n", msg);
    abort();
}

/* The handle of a freed context: its memory says so in debug builds. */
static void check_handle(const struct ctx *n)
{
    CTX__MISUSE(!ctx__is_cancel_kind(ctx__kind(n)),
                "ctx_cancel: the handle's context was freed (or this is not a cancel handle)");
    (void)n;
}

/* The parentheses keep ctx.h's call-site macros from expanding here: these
 * are the exported functions that record no site. */
void(ctx_cancel)(ctx_cancel_t *cancel)
{
    if (cancel == NULL)
        return;
    check_handle((struct ctx *)cancel);
    ctx__cancel((struct ctx *)cancel, CTX_CANCELED, 0, NULL, 0);
}

void(ctx_cancel_cause)(ctx_cancel_t *cancel, int cause, const char *text)
{
    if (cancel == NULL)
        return;
    check_handle((struct ctx *)cancel);
    /* Without memory for the copy the cause keeps its code only. */
    struct ctx__msg *msg = ctx__msg_new(text);
    ctx__cancel((struct ctx *)cancel, CTX_CANCELED, cause, msg, 0);
    ctx__msg_unref(msg);
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
