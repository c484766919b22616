/* SPDX-License-Identifier: MIT */

/*
 * Waiting: ctx_wait and ctx_sleep (a futex on the owner's state word) and
 * ctx_done_fd (an eventfd or pipe, created on first use).
 *
 * Nothing here costs anything until somebody waits: a waiter sets the
 * WAITERS bit and a done fd sets HAS_FD, and mark() makes a system call only
 * when one of those bits is set.  Done fds live in a small global table
 * rather than in the node, because a node has no room to spare (it is 64
 * bytes) and an fd is rare and already costs microseconds to create.
 */
#include "internal.h"
#include "platform.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * Blocking waits
 */

/* The parentheses keep ctx.h's inline macro from expanding here. */
int(ctx_wait)(ctx_t *c, ctx_duration_t timeout)
{
    if (c == NULL)
        return EINVAL;
    struct ctx *o = ctx__owner(c);
    _Atomic uint32_t *word = &o->u.c.state;
    /* Acquire: pairs with the release in mark(). */
    uint32_t s = atomic_load_explicit(word, memory_order_acquire);
    if (s & CTX__ERR_MASK)
        return (int)(s & CTX__ERR_MASK);
    if (timeout == 0 || (timeout < 0 && timeout != CTX_FOREVER))
        return 0;
    ctx__timer_restart(); /* see timer.c: after fork, in the child */

    /* Under the manual clock a timeout is a deadline like any other: wait
     * on a child that ctx_clock_advance() ends.  Without memory for the
     * child, wait in slices of real time and read the manual clock between
     * them. */
    int manual = timeout != CTX_FOREVER && ctx__clock_is_manual();
    ctx_time_t manual_end = 0;
    if (manual) {
        ctx_t *t = ctx_with_timeout(c, timeout, NULL);
        if (t != NULL) {
            ctx_wait(t, CTX_FOREVER);
            ctx_unref(t);
            return ctx_err(c);
        }
        manual_end = ctx__add_sat(ctx_now(), timeout);
    }

    /* The futex deadline is always on the real monotonic clock. */
    struct timespec abs, *absp = NULL;
    if (timeout != CTX_FOREVER) {
        abs = ctx__timespec(ctx__add_sat(ctx__real_now(), manual ? CTX_MILLISECOND : timeout));
        absp = &abs;
    }
    for (;;) {
        int r;
        if (ctx__kind(o) == CTX__ROOT) {
            /* Never done: just sleep.  The roots' state word stays 0. */
            static _Atomic uint32_t never;
            r = ctx__futex_wait(&never, 0, absp);
        } else {
            if (!(s & CTX__WAITERS)) {
                /* The flag is set under the lock, like every change of
                 * the word, so that mark() can publish err with a plain
                 * store. */
                ctx__lock(&o->lock);
                s = atomic_load_explicit(word, memory_order_relaxed);
                if (!(s & CTX__ERR_MASK)) {
                    s |= CTX__WAITERS;
                    atomic_store_explicit(word, s, memory_order_relaxed);
                }
                ctx__unlock(&o->lock);
                if (s & CTX__ERR_MASK)
                    return (int)(s & CTX__ERR_MASK);
            }
            r = ctx__futex_wait(word, s, absp);
            s = atomic_load_explicit(word, memory_order_acquire);
            if (s & CTX__ERR_MASK)
                return (int)(s & CTX__ERR_MASK);
        }
        if (r == ETIMEDOUT) {
            if (!manual || ctx_now() >= manual_end)
                return 0;
            abs = ctx__timespec(ctx__add_sat(ctx__real_now(), CTX_MILLISECOND));
        }
    }
}

int ctx_sleep(ctx_t *c, ctx_duration_t d)
{
    if (c == NULL)
        return EINVAL;
    if (d == CTX_FOREVER)
        d = INT64_MAX;
    return ctx_wait(c, d < 0 ? 0 : d);
}

/* ---------------------------------------------------------------------------
 * Done fds
 */

struct fdent {
    const struct ctx *node;
    int rfd, wfd; /* the same fd for an eventfd */
    struct fdent *next;
};

#define FD_BUCKETS 64
static pthread_mutex_t fd_mu = PTHREAD_MUTEX_INITIALIZER;
static struct fdent *fd_table[FD_BUCKETS];

static struct fdent **fd_slot(const struct ctx *n)
{
    uintptr_t h = (uintptr_t)n >> 6; /* nodes are 64 bytes apart at least */
    struct fdent **p = &fd_table[(h ^ (h >> 7)) % FD_BUCKETS];
    while (*p != NULL && (*p)->node != n)
        p = &(*p)->next;
    return p;
}

static int fd_lookup(const struct ctx *n)
{
    pthread_mutex_lock(&fd_mu);
    struct fdent *e = *fd_slot(n);
    int fd = e != NULL ? e->rfd : -1;
    pthread_mutex_unlock(&fd_mu);
    return fd;
}

static void fd_kick(const struct fdent *e)
{
    ctx__plat_event_signal(e->wfd);
}

/* Called by mark() with n's lock held: n just became done. */
void ctx__fd_signal(struct ctx *n)
{
    pthread_mutex_lock(&fd_mu);
    struct fdent *e = *fd_slot(n);
    if (e != NULL)
        fd_kick(e);
    pthread_mutex_unlock(&fd_mu);
}

/* Called when n is freed. */
void ctx__fd_release(struct ctx *n)
{
    pthread_mutex_lock(&fd_mu);
    struct fdent **p = fd_slot(n);
    struct fdent *e = *p;
    if (e != NULL)
        *p = e->next;
    pthread_mutex_unlock(&fd_mu);
    if (e != NULL) {
        close(e->rfd);
        if (e->wfd != e->rfd)
            close(e->wfd);
        ctx__free(e);
    }
}

/* An eventfd on Linux, a pipe elsewhere (platform.h). */
static int make_fd(int *rfd, int *wfd)
{
    return ctx__plat_event_open(rfd, wfd);
}

int ctx_done_fd(ctx_t *c)
{
    if (c == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct ctx *o = ctx__owner(c);
    if (ctx__kind(o) == CTX__ROOT) {
        errno = 0; /* can never be done: like Go's nil Done channel */
        return -1;
    }
    ctx__timer_restart(); /* see timer.c: after fork, in the child */
    /* Acquire: pairs with the release that set HAS_FD after the entry was
     * in the table. */
    if (atomic_load_explicit(&o->u.c.state, memory_order_acquire) & CTX__HAS_FD)
        return fd_lookup(o);

    struct fdent *e = ctx__alloc(sizeof *e);
    if (e == NULL) {
        errno = ENOMEM;
        return -1;
    }
    ctx__lock(&o->lock);
    if (atomic_load_explicit(&o->u.c.state, memory_order_relaxed) & CTX__HAS_FD) {
        ctx__unlock(&o->lock); /* another thread made it meanwhile */
        ctx__free(e);
        return fd_lookup(o);
    }
    if (make_fd(&e->rfd, &e->wfd) != 0) {
        int err = errno;
        ctx__unlock(&o->lock);
        ctx__free(e);
        errno = err;
        return -1;
    }
    e->node = o;
    pthread_mutex_lock(&fd_mu);
    struct fdent **slot = fd_slot(o);
    e->next = *slot;
    *slot = e;
    if (atomic_load_explicit(&o->u.c.state, memory_order_relaxed) & CTX__ERR_MASK)
        fd_kick(e); /* already done: readable at once */
    pthread_mutex_unlock(&fd_mu);
    /* Under the node's lock, like every change of the word, so mark() sees
     * either no bit (and the entry was kicked here) or the bit (and mark
     * kicks it).  Release: pairs with the acquire above and in free_chain;
     * publishes the table entry. */
    uint32_t s = atomic_load_explicit(&o->u.c.state, memory_order_relaxed);
    atomic_store_explicit(&o->u.c.state, s | CTX__HAS_FD, memory_order_release);
    int fd = e->rfd;
    ctx__unlock(&o->lock);
    return fd;
}

/* ---------------------------------------------------------------------------
 * Condition variables
 *
 * Go's AfterFunc example: a waiter on a condition variable must also wake
 * when its context is done.  An AfterFunc broadcasts under the mutex, so the
 * wake-up cannot fall between the waiter's check and its sleep: the
 * callback cannot take the mutex until pthread_cond_wait has released it.
 */

struct condw {
    pthread_cond_t *cond;
    pthread_mutex_t *mu;
    pthread_t self;
    /* Set while ctx_after_func runs: if the context is already done, the
     * callback runs on the waiting thread, which holds the mutex. */
    _Atomic int registering;
};

static void condw_fn(void *arg)
{
    struct condw *w = arg;
    if (atomic_load_explicit(&w->registering, memory_order_relaxed) &&
        pthread_equal(pthread_self(), w->self))
        return; /* the waiter checks ctx_err itself */
    pthread_mutex_lock(w->mu);
    pthread_cond_broadcast(w->cond);
    pthread_mutex_unlock(w->mu);
}

int ctx_cond_wait(ctx_t *c, pthread_cond_t *cond, pthread_mutex_t *mu)
{
    if (c == NULL || cond == NULL || mu == NULL)
        return EINVAL;
    int e = ctx_err(c);
    if (e != 0)
        return e;
    ctx__timer_restart(); /* see timer.c: after fork, in the child */
    struct condw w = { cond, mu, pthread_self(), 1 };
    ctx_after_t *stop;
    e = ctx_after_func(c, condw_fn, &w, &stop);
    atomic_store_explicit(&w.registering, 0, memory_order_relaxed);
    if (e != 0)
        return e;
    if (ctx_err(c) == 0)
        pthread_cond_wait(cond, mu);
    /* The callback may be running on the cancelling thread and need the
     * mutex: release it while stop waits for the callback to return. */
    pthread_mutex_unlock(mu);
    ctx_after_stop(stop);
    pthread_mutex_lock(mu);
    return ctx_err(c);
}

/* ---------------------------------------------------------------------------
 * fork(2) (registered with fork.c: run after every lock holder has drained)
 */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&fd_mu);
    ctx__describe_atfork(0);
}

static void atfork_parent(void)
{
    ctx__describe_atfork(1);
    pthread_mutex_unlock(&fd_mu);
}

/* A done fd made before the fork is one kernel object shared by both
 * processes: a cancel in either would make it readable in both.  Give the
 * child its own, at the same fd numbers (which its code may already hold),
 * readable if the context is done.  Only async-signal-safe calls. */
static void atfork_child(void)
{
    ctx__describe_atfork(1);
    for (int b = 0; b < FD_BUCKETS; b++) {
        for (struct fdent *e = fd_table[b]; e != NULL; e = e->next) {
            int rfd, wfd;
            if (make_fd(&rfd, &wfd) != 0)
                continue; /* no fd left: it stays shared, as before */
            dup2(rfd, e->rfd);
            if (wfd != rfd)
                dup2(wfd, e->wfd);
            close(rfd);
            if (wfd != rfd)
                close(wfd);
            /* dup2 dropped close-on-exec; set it again. */
            fcntl(e->rfd, F_SETFD, FD_CLOEXEC);
            if (e->wfd != e->rfd)
                fcntl(e->wfd, F_SETFD, FD_CLOEXEC);
            if (atomic_load_explicit(&e->node->u.c.state, memory_order_acquire) & CTX__ERR_MASK)
                fd_kick(e);
        }
    }
    pthread_mutex_unlock(&fd_mu);
}

CTX__FORK_HOOKS(wait_hooks, .rank = CTX__FORK_RANK_WAIT, .prepare = atfork_prepare,
                .parent = atfork_parent, .child = atfork_child)
