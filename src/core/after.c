/* SPDX-License-Identifier: MIT */

/*
 * AfterFunc registrations.
 *
 * A registration is a 64-byte record laid out like a node (kind AFTER) so
 * that it sits in its context's children list and a cancel finds it in the
 * same walk that finds the children.  Its run word decides, by CAS, between
 * the canceller (PENDING -> RUNNING) and ctx_after_stop (PENDING -> STOPPED),
 * so exactly one of "fn runs" and "stop returns true" happens.
 *
 * References on a record: one for the children list (dropped by whoever
 * takes it off the list: the canceller after running fn, or stop), one for
 * the stop handle if there is one.  The record holds a reference to its
 * context, so a registration on a context nobody else holds still runs.
 */
#include "internal.h"

#include <stdint.h>

/* The AfterFunc callbacks running on this thread, innermost first, so that
 * ctx_after_stop can tell it is called from inside fn (directly or through
 * a cancel fn made) and must not wait for fn to return. */
struct frame {
    struct ctx *r;
    struct frame *prev;
};
static CTX__TLS struct frame *running;

/* The handle returned for a context that can never be done: fn never runs
 * and stopping it returns true.  Nothing is allocated for it. */
static struct ctx never_after = { .pk = CTX__AFTER };

static void after_free(struct ctx *r)
{
    ctx_t *c = ctx__parent(r);
    r->u.a.handle = CTX__HANDLE_FREED;
    ctx__node_free(r, sizeof *r);
    ctx__unref(c);
}

static void ctx__after_release(struct ctx *r)
{
    /* acq_rel: the last holder sees every write the others made. */
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1)
        after_free(r);
}

/* Drops the list's and the handle's references at once, both the caller's
 * (a stop that took r off the list).  When they are all there is, nobody
 * else can reach r to take one, and r goes without a read-modify-write.
 * Acquire: pairs with the release half of the holders' earlier drops. */
static void after_release2(struct ctx *r)
{
    if (atomic_load_explicit(&r->refs, memory_order_acquire) == 2 ||
        atomic_fetch_sub_explicit(&r->refs, 2, memory_order_acq_rel) == 2)
        after_free(r);
}

/* Runs r's fn unless it was stopped, then drops the list's reference.
 * Called with no lock held. */
void ctx__run_after(struct ctx *r)
{
    uint32_t s = CTX__RUN_PENDING;
    /* Acquire/release against ctx_after_stop's CAS on the same word. */
    if (atomic_compare_exchange_strong_explicit(&r->u.a.run, &s, CTX__RUN_RUNNING,
                                                memory_order_acq_rel, memory_order_acquire)) {
        struct frame f = { r, running };
        running = &f;
        r->u.a.fn(r->u.a.arg);
        running = f.prev;
        /* Release: pairs with the acquire in ctx_after_stop's wait loop, so
         * a stopper that returns sees all fn did. */
        s = atomic_exchange_explicit(&r->u.a.run, CTX__RUN_DONE, memory_order_release);
        if (s & CTX__RUN_WAITER)
            ctx__futex_wake(&r->u.a.run, INT32_MAX);
    }
    ctx__after_release(r);
}

int ctx_after_func(ctx_t *c, void (*fn)(void *arg), void *arg, ctx_after_t **stop)
{
    if (stop != NULL)
        *stop = NULL;
    if (c == NULL || fn == NULL)
        return EINVAL;
    struct ctx *o = ctx__owner(c);
    if (ctx__kind(o) == CTX__ROOT) {
        if (stop != NULL)
            *stop = (ctx_after_t *)&never_after;
        return 0;
    }
    struct ctx *r = ctx__node_alloc(sizeof *r);
    if (r == NULL)
        return ENOMEM;
    /* The list's reference, and the handle's if there is one. */
    ctx__after_init(r, o, ctx__ref(c), stop != NULL ? 2u : 1u, fn, arg);
    if (stop != NULL)
        *stop = (ctx_after_t *)r;
    if (!ctx__after_register(r))
        ctx__run_after(r); /* already done: run here, now */
    return 0;
}

void ctx__after_init(struct ctx *r, struct ctx *o, ctx_t *c, uint32_t refs, void (*fn)(void *),
                     void *arg)
{
    r->up = o;
    r->pk = (uintptr_t)c | CTX__AFTER;
    atomic_init(&r->refs, refs);
    atomic_init(&r->lock, 0);
    atomic_init(&r->u.a.run, CTX__RUN_PENDING);
    r->u.a.handle = CTX__HANDLE_LIVE;
    r->u.a.fn = fn;
    r->u.a.arg = arg;
    r->u.a.link.next = NULL;
    r->u.a.link.pprev = NULL;
}

bool ctx__after_register(struct ctx *r)
{
    struct ctx *o = r->up;
    ctx__lock(&o->lock);
    /* Relaxed: every writer of the state word holds the owner's lock
     * (mark() in tree.c), so under it this load sees the latest err; a
     * canceller that marks o afterwards finds r in the list. */
    if ((atomic_load_explicit(&o->u.c.state, memory_order_relaxed) & CTX__ERR_MASK) == 0) {
        ctx__link_insert(ctx__kids(o), &r->u.a.link);
        ctx__unlock(&o->lock);
        return true;
    }
    ctx__unlock(&o->lock);
    return false;
}

static int inside(const struct ctx *r)
{
    for (const struct frame *f = running; f != NULL; f = f->prev)
        if (f->r == r)
            return 1;
    return 0;
}

bool ctx_after_stop(ctx_after_t *stop)
{
    struct ctx *r = (struct ctx *)stop;
    if (r == NULL)
        return false;
    if (r == &never_after)
        return true;
    CTX__MISUSE(r->u.a.handle != CTX__HANDLE_LIVE,
                "ctx_after_stop: this handle was already stopped (each handle is stopped once)");
    r->u.a.handle = CTX__HANDLE_STOPPED;

    bool stopped = false;
    struct ctx *o = r->up;
    ctx__lock(&o->lock);
    if (r->u.a.link.pprev != NULL) {
        /* Still registered: no canceller has seen it. */
        ctx__link_remove(&r->u.a.link);
        atomic_store_explicit(&r->u.a.run, CTX__RUN_STOPPED, memory_order_relaxed);
        ctx__unlock(&o->lock);
        after_release2(r); /* the list's reference and the handle's */
        return true;
    } else {
        ctx__unlock(&o->lock);
        uint32_t s = CTX__RUN_PENDING;
        /* A canceller took it off the list but has not started fn: winning
         * this CAS makes it skip fn. */
        if (atomic_compare_exchange_strong_explicit(&r->u.a.run, &s, CTX__RUN_STOPPED,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            stopped = true;
        } else if (!inside(r)) {
            /* fn has started: wait until it returns. */
            /* (STOPPED here means a second stop of one handle: misuse,
             * caught in debug builds; never wait for ever on it.) */
            while ((s & ~(uint32_t)CTX__RUN_WAITER) != CTX__RUN_DONE &&
                   (s & ~(uint32_t)CTX__RUN_WAITER) != CTX__RUN_STOPPED) {
                if (!(s & CTX__RUN_WAITER) && !atomic_compare_exchange_strong_explicit(
                                                  &r->u.a.run, &s, s | CTX__RUN_WAITER,
                                                  memory_order_acquire, memory_order_acquire))
                    continue;
                ctx__futex_wait(&r->u.a.run, s | CTX__RUN_WAITER, NULL);
                /* Acquire: pairs with the release exchange to DONE. */
                s = atomic_load_explicit(&r->u.a.run, memory_order_acquire);
            }
        }
    }
    ctx__after_release(r); /* the handle's reference */
    return stopped;
}

/* ---------------------------------------------------------------------------
 * Callback threads, for callbacks of contexts that end by deadline.
 *
 * The timer thread must never run user code, or one slow callback would
 * make every later deadline late.  It queues the records here instead, and
 * one worker thread runs them in order, one at a time.  A callback that
 * blocks must not hold up the others either: while the queue is not empty
 * the timer thread looks at it every millisecond (ctx__after_watch), and if
 * no worker has taken a record since its last look it starts another
 * worker.  So a blocked callback delays the ones queued behind it by about
 * a millisecond, and never delays a deadline.  Workers that stay idle for a
 * while exit.
 */

#include <pthread.h>

#define MAX_WORKERS 256
#define IDLE_NS     (2 * CTX_SECOND)
#define STALL_NS    CTX_MILLISECOND

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ctx__link *head, **tail;
    int workers, idle;
    uint64_t taken;     /* records taken by workers, ever */
    uint64_t seen;      /* `taken` at the watchdog's last look */
    ctx_time_t seen_at; /* when `taken` last changed, as the watchdog saw */
    int quit;           /* ctx_shutdown: idle workers end now */
} X = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, &X.head, 0, 0, 0, 0, 0, 0 };

static void *worker_main(void *arg);

/* Starts one more worker.  Under X.mu.  Returns 0 or an errno. */
static int spawn_locked(void)
{
    if (X.workers >= MAX_WORKERS)
        return EAGAIN;
    int e = ctx__thread_start(worker_main, 0);
    if (e == 0) {
        X.workers++;
        X.idle++; /* counted idle until it takes a record */
    }
    return e;
}

static struct ctx *take_locked(void)
{
    struct ctx__link *l = X.head;
    if (l == NULL)
        return NULL;
    X.head = l->next;
    if (X.head == NULL)
        X.tail = &X.head;
#if defined(__GNUC__) || defined(__clang__)
    else
        __builtin_prefetch(X.head, 1); /* the next one taken, likely ours */
#endif
    X.taken++;
    return ctx__from_link(l);
}

static void *worker_main(void *arg)
{
    (void)arg;
    ctx__thread_name("ctx-after");
    pthread_mutex_lock(&X.mu);
    for (;;) {
        struct ctx *r = take_locked();
        if (r == NULL) {
            if (X.quit)
                break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += IDLE_NS / CTX_SECOND;
            if (pthread_cond_timedwait(&X.cv, &X.mu, &ts) != 0 && X.head == NULL)
                break;
            continue;
        }
        X.idle--;
        pthread_mutex_unlock(&X.mu);
        if (ctx__kind(r) == CTX__AFTER)
            ctx__run_after(r);
        else
            ctx_unref(r); /* a node the timer thread held last */
        pthread_mutex_lock(&X.mu);
        X.idle++;
    }
    X.idle--;
    X.workers--;
    pthread_mutex_unlock(&X.mu);
    return NULL;
}

int ctx__after_quit(void)
{
    pthread_mutex_lock(&X.mu);
    int busy = X.head != NULL || X.idle < X.workers;
    if (!busy && X.workers > 0) {
        X.quit = 1;
        pthread_cond_broadcast(&X.cv);
    }
    pthread_mutex_unlock(&X.mu);
    return busy ? EBUSY : 0;
}

void ctx__after_defer(struct ctx__chain *chain)
{
    if (chain->head == NULL)
        return;
    pthread_mutex_lock(&X.mu);
    X.quit = 0; /* new work: the workers are in use again */
    *X.tail = chain->head;
    X.tail = chain->tail;
    if (X.idle > 0)
        pthread_cond_signal(&X.cv);
    else if (X.workers == 0)
        spawn_locked(); /* if that fails, the timer thread's look retries */
    pthread_mutex_unlock(&X.mu);
    chain->head = NULL;
    chain->tail = &chain->head;
}

void ctx__after_defer_unref(struct ctx *node)
{
    /* The node is done and out of every list: its link is free. */
    node->u.c.link.next = NULL;
    struct ctx__chain one = { &node->u.c.link, &node->u.c.link.next };
    ctx__after_defer(&one);
}

void ctx__unref_chain(struct ctx *node, struct ctx__chain *chain)
{
    /* Acquire: when we see ours is the last reference, every other
     * holder's release decrement happens before what we do next (such as a
     * canceller's unlink that wrote the link we reuse).  Release: our use of
     * the node happens before whoever frees it. */
    uint32_t r = atomic_load_explicit(&node->refs, memory_order_acquire);
    /* (Not when only fan-out shards would be left: that drop has work to
     * do, which ctx_unref on the callback thread does.) */
    while (r > 1 && (r - 1) % CTX__FAN_REF != 0)
        if (atomic_compare_exchange_weak_explicit(&node->refs, &r, r - 1, memory_order_acq_rel,
                                                  memory_order_acquire))
            return;
    /* The node is done and out of every list: its link is free. */
    node->u.c.link.next = NULL;
    *chain->tail = &node->u.c.link;
    chain->tail = &node->u.c.link.next;
}

void ctx__unref_deferred(struct ctx *node)
{
    struct ctx__chain one = { NULL, &one.head };
    ctx__unref_chain(node, &one);
    ctx__after_defer(&one);
}

int ctx__after_watch(ctx_time_t now)
{
    pthread_mutex_lock(&X.mu);
    int pending = X.head != NULL;
    if (pending && X.workers == 0)
        spawn_locked(); /* a forked child's queue, or a worker that quit */
    if (X.taken != X.seen || !pending) {
        X.seen = X.taken;
        X.seen_at = now;
    } else if (now - X.seen_at >= STALL_NS) {
        /* Nothing taken for a millisecond: every worker is inside a
         * callback.  One more takes the rest. */
        if (X.idle == 0)
            spawn_locked();
        pthread_cond_signal(&X.cv);
        X.seen_at = now;
    }
    pthread_mutex_unlock(&X.mu);
    return pending;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&X.mu);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&X.mu);
}

static void atfork_child(void)
{
    /* The workers did not come along.  Queued callbacks get a new one when
     * the child's timer thread next looks at the queue (no thread may be
     * started in a fork handler). */
    pthread_cond_init(&X.cv, NULL);
    X.workers = X.idle = 0;
    pthread_mutex_unlock(&X.mu);
}

CTX__FORK_HOOKS(after_hooks, .rank = CTX__FORK_RANK_AFTER, .prepare = atfork_prepare,
                .parent = atfork_parent, .child = atfork_child)
