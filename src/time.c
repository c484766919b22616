/*
 * Time: the clock (real or manual), deadline contexts, and the timer
 * mechanism behind them.
 *
 * Every live deadline is one entry in a 4-ary min-heap of (deadline, node)
 * pairs; a node knows its index, so cancelling or freeing it removes its
 * entry at once, in O(log n).  One library thread, started on first need,
 * sleeps until the earliest deadline and cancels what is due.  It hands
 * the AfterFunc callbacks of those contexts to the callback threads
 * (after.c), so a slow callback never makes another deadline late.
 *
 * Under the manual clock the timer thread stands aside and
 * ctx_clock_advance() fires what is due, in order, on the caller.
 *
 * Locks: T.fire is held by whoever is cancelling expired timers (the timer
 * thread or an advancing test) and by fork's prepare handler; T.mu guards
 * the heap and the clock mode.  Order: T.fire, then node locks, then T.mu.
 */
#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>

struct hent {
    ctx_time_t deadline;
    struct ctx__timer *t;
};

static struct {
    pthread_once_t once;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC: the timer thread sleeps here */
    pthread_mutex_t fire;
    struct hent *heap;
    uint32_t n, cap, reserved;
    int started;          /* the timer thread runs */
    _Atomic int manual;   /* the manual clock is in force */
    _Atomic int64_t mnow; /* the manual clock's time */
} T = {
    .once = PTHREAD_ONCE_INIT,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .fire = PTHREAD_MUTEX_INITIALIZER,
};

/* ---------------------------------------------------------------------------
 * The clock
 */

static ctx_time_t real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ctx_time_t)ts.tv_sec * CTX_SECOND + ts.tv_nsec;
}

ctx_time_t ctx_now(void)
{
    /* Relaxed: the mode and the manual time are set by the test driving the
     * clock, which orders them with its own synchronization. */
    if (atomic_load_explicit(&T.manual, memory_order_relaxed))
        return atomic_load_explicit(&T.mnow, memory_order_relaxed);
    return real_now();
}

int ctx__clock_is_manual(void)
{
    return atomic_load_explicit(&T.manual, memory_order_relaxed);
}

static ctx_time_t add_sat(ctx_time_t t, ctx_duration_t d)
{
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    if (d < 0 && t < INT64_MIN - d)
        return INT64_MIN;
    return t + d;
}

ctx_time_t ctx_time_from_wall(const struct timespec *wall)
{
    if (wall == NULL)
        return ctx_now();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    /* Seconds first, so that a far-away instant saturates instead of
     * overflowing. */
    int64_t ds = (int64_t)wall->tv_sec - (int64_t)rt.tv_sec;
    if (ds > INT64_MAX / CTX_SECOND - 1)
        return INT64_MAX;
    if (ds < INT64_MIN / CTX_SECOND + 1)
        return INT64_MIN;
    ctx_duration_t d = ds * CTX_SECOND + ((int64_t)wall->tv_nsec - rt.tv_nsec);
    return add_sat(ctx_now(), d);
}

/* ---------------------------------------------------------------------------
 * The heap (under T.mu)
 */

static void heap_set(uint32_t i, struct hent e)
{
    T.heap[i] = e;
    e.t->heap_index = i;
}

static void sift_up(uint32_t i, struct hent e)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 4;
        if (T.heap[p].deadline <= e.deadline)
            break;
        heap_set(i, T.heap[p]);
        i = p;
    }
    heap_set(i, e);
}

static void sift_down(uint32_t i, struct hent e)
{
    for (;;) {
        uint32_t c = 4 * i + 1, best = c;
        if (c >= T.n)
            break;
        uint32_t end = c + 4 < T.n ? c + 4 : T.n;
        for (uint32_t k = c + 1; k < end; k++)
            if (T.heap[k].deadline < T.heap[best].deadline)
                best = k;
        if (T.heap[best].deadline >= e.deadline)
            break;
        heap_set(i, T.heap[best]);
        i = best;
    }
    heap_set(i, e);
}

static void heap_delete(uint32_t i)
{
    struct ctx__timer *t = T.heap[i].t;
    struct hent last = T.heap[--T.n];
    if (i < T.n) {
        if (i > 0 && last.deadline < T.heap[(i - 1) / 4].deadline)
            sift_up(i, last);
        else
            sift_down(i, last);
    }
    t->heap_index = CTX__NO_INDEX;
}

static void init_once(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&T.cv, &a);
    pthread_condattr_destroy(&a);
}

/* Makes room for one more entry; called before the node is linked, so that
 * a constructor fails cleanly rather than half-built. */
static int heap_reserve(void)
{
    pthread_mutex_lock(&T.mu);
    uint32_t need = T.n + T.reserved + 1;
    if (need > T.cap) {
        uint32_t cap = T.cap ? T.cap * 2 : 64;
        while (cap < need)
            cap *= 2;
        struct hent *h = cap <= UINT32_MAX / 2 ? ctx__alloc((size_t)cap * sizeof *h) : NULL;
        if (h == NULL) {
            pthread_mutex_unlock(&T.mu);
            return ENOMEM;
        }
        if (T.n > 0)
            memcpy(h, T.heap, (size_t)T.n * sizeof *h);
        ctx__free(T.heap);
        T.heap = h;
        T.cap = cap;
    }
    T.reserved++;
    pthread_mutex_unlock(&T.mu);
    return 0;
}

static void *timer_main(void *arg);

/* Starts the timer thread if the real clock is in force and it is not
 * running.  Under T.mu. */
static int start_thread_locked(void)
{
    if (T.started || atomic_load_explicit(&T.manual, memory_order_relaxed))
        return 0;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    /* The thread inherits our signal mask: block everything so that
     * signals go to the program's own threads. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int e = pthread_create(&tid, &a, timer_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (e == 0)
        T.started = 1;
    return e;
}

/* Inserts t using a reservation, unless t is already done (a parent's
 * cancel may have reached it since it was linked). */
static void heap_insert(struct ctx__timer *t)
{
    pthread_mutex_lock(&T.mu);
    T.reserved--;
    /* Acquire: pairs with mark()'s release.  mark() sets err before it
     * takes T.mu to remove the timer, so either it sees our entry or we
     * see its err. */
    if (!(atomic_load_explicit(&t->base.u.c.state, memory_order_acquire) & CTX__ERR_MASK)) {
        struct hent e = { t->deadline, t };
        T.n++;
        sift_up(T.n - 1, e);
        if (t->heap_index == 0)
            pthread_cond_signal(&T.cv); /* a new earliest deadline */
    }
    pthread_mutex_unlock(&T.mu);
}

static void heap_unreserve(void)
{
    pthread_mutex_lock(&T.mu);
    T.reserved--;
    pthread_mutex_unlock(&T.mu);
}

void ctx__timer_remove(struct ctx__timer *t)
{
    pthread_mutex_lock(&T.mu);
    if (t->heap_index != CTX__NO_INDEX)
        heap_delete(t->heap_index);
    pthread_mutex_unlock(&T.mu);
}

/* Pops the earliest entry if it is due at `now` and takes a reference to
 * its node; returns the node, or NULL when nothing is due.  *more tells
 * whether an entry was popped at all (a node being freed is skipped). */
static struct ctx__timer *pop_due(ctx_time_t now, int *more)
{
    *more = 0;
    if (T.n == 0 || T.heap[0].deadline > now)
        return NULL;
    struct ctx__timer *t = T.heap[0].t;
    heap_delete(0);
    *more = 1;
    /* A node whose count reached zero is being freed by a thread that
     * waits for T.mu to remove this entry: skip it. */
    return ctx__try_ref(&t->base) ? t : NULL;
}

static void fire(struct ctx__timer *t, int defer)
{
    ctx__cancel(&t->base, CTX_DEADLINE_EXCEEDED, t->dl_cause, t->dl_msg, defer);
    ctx_unref(&t->base);
}

static void *timer_main(void *arg)
{
    (void)arg;
    enum { BATCH = 64 };
    struct ctx__timer *batch[BATCH];
    for (;;) {
        pthread_mutex_lock(&T.mu);
        for (;;) {
            if (atomic_load_explicit(&T.manual, memory_order_relaxed) || T.n == 0) {
                pthread_cond_wait(&T.cv, &T.mu);
                continue;
            }
            ctx_time_t d = T.heap[0].deadline;
            if (d <= real_now())
                break;
            struct timespec ts = { (time_t)(d / CTX_SECOND), (long)(d % CTX_SECOND) };
            pthread_cond_timedwait(&T.cv, &T.mu, &ts);
        }
        pthread_mutex_unlock(&T.mu);

        /* Cancel what is due, in deadline order, in batches so that the
         * heap lock is not held while cancelling. */
        pthread_mutex_lock(&T.fire);
        for (;;) {
            int k = 0, more = 1;
            pthread_mutex_lock(&T.mu);
            ctx_time_t now = real_now();
            while (k < BATCH && more && !atomic_load_explicit(&T.manual, memory_order_relaxed)) {
                struct ctx__timer *t = pop_due(now, &more);
                if (t != NULL)
                    batch[k++] = t;
            }
            pthread_mutex_unlock(&T.mu);
            for (int i = 0; i < k; i++)
                fire(batch[i], 1);
            if (!more || k < BATCH)
                break; /* nothing more is due, or the clock turned manual */
        }
        pthread_mutex_unlock(&T.fire);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * The manual clock
 */

int ctx_clock_manual(ctx_time_t start)
{
    pthread_once(&T.once, init_once);
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&T.mnow, start, memory_order_relaxed);
    atomic_store_explicit(&T.manual, 1, memory_order_relaxed);
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
    return 0;
}

void ctx_clock_real(void)
{
    pthread_once(&T.once, init_once);
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&T.manual, 0, memory_order_relaxed);
    if (T.n > 0)
        start_thread_locked();
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
}

int ctx_clock_advance(ctx_duration_t d)
{
    if (d < 0)
        return EINVAL;
    if (!ctx__clock_is_manual())
        return EPERM;
    pthread_mutex_lock(&T.fire);
    ctx_time_t target = add_sat(ctx_now(), d);
    for (;;) {
        int more;
        pthread_mutex_lock(&T.mu);
        struct ctx__timer *t = pop_due(target, &more);
        if (!more) {
            atomic_store_explicit(&T.mnow, target, memory_order_relaxed);
            pthread_mutex_unlock(&T.mu);
            break;
        }
        if (t != NULL && t->deadline > atomic_load_explicit(&T.mnow, memory_order_relaxed))
            atomic_store_explicit(&T.mnow, t->deadline, memory_order_relaxed);
        pthread_mutex_unlock(&T.mu);
        if (t != NULL)
            fire(t, 0); /* in order, callbacks included, before we return */
    }
    pthread_mutex_unlock(&T.fire);
    return 0;
}

/* ---------------------------------------------------------------------------
 * fork(2): the child gets a copy of the heap but not the timer thread.  The
 * prepare handler waits until no thread is cancelling expired timers (so
 * the child inherits no node lock held by the timer thread), and the child
 * restarts the thread if it has deadlines.
 */

static void atfork_prepare(void)
{
    pthread_mutex_lock(&T.fire);
    pthread_mutex_lock(&T.mu);
    ctx__after_atfork_prepare();
}

static void atfork_parent(void)
{
    ctx__after_atfork_parent();
    pthread_mutex_unlock(&T.mu);
    pthread_mutex_unlock(&T.fire);
}

static void atfork_child(void)
{
    ctx__after_atfork_child();
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&T.cv, &a);
    pthread_condattr_destroy(&a);
    T.started = 0;
    if (T.n > 0)
        start_thread_locked();
    pthread_mutex_unlock(&T.mu);
    pthread_mutex_unlock(&T.fire);
}

static void init_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* ---------------------------------------------------------------------------
 * Deadline contexts
 */

static ctx_t *with_deadline(ctx_t *parent, ctx_time_t d, int cause, const char *text,
                            ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    ctx_time_t cur;
    if (ctx_deadline(parent, &cur) && cur <= d)
        return ctx_with_cancel(parent, cancel); /* the parent's comes first */

    pthread_once(&T.once, init_once);
    pthread_once(&atfork_once, init_atfork);
    struct ctx__timer *t = ctx__node_alloc(sizeof *t);
    if (t == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    t->deadline = d;
    t->heap_index = CTX__NO_INDEX;
    t->dl_cause = cause;
    t->dl_msg = NULL;
    if (text != NULL && (t->dl_msg = ctx__msg_new(text)) == NULL) {
        ctx__node_free(t, sizeof *t);
        errno = ENOMEM;
        return NULL;
    }
    int past = d <= ctx_now();
    if (!past) {
        int e = heap_reserve();
        if (e == 0) {
            pthread_mutex_lock(&T.mu);
            e = start_thread_locked();
            pthread_mutex_unlock(&T.mu);
            if (e != 0)
                heap_unreserve();
        }
        if (e != 0) {
            ctx__msg_unref(t->dl_msg);
            ctx__node_free(t, sizeof *t);
            errno = e;
            return NULL;
        }
    }
    ctx__init_cancel(&t->base, parent, CTX__TIMER);
    if (past)
        ctx__cancel(&t->base, CTX_DEADLINE_EXCEEDED, cause, t->dl_msg, 0);
    else
        heap_insert(t);
    if (cancel != NULL)
        *cancel = (ctx_cancel_t *)&t->base;
    return &t->base;
}

ctx_t *ctx_with_deadline(ctx_t *parent, ctx_time_t deadline, ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, 0, NULL, cancel);
}

ctx_t *ctx_with_timeout(ctx_t *parent, ctx_duration_t timeout, ctx_cancel_t **cancel)
{
    return with_deadline(parent, add_sat(ctx_now(), timeout), 0, NULL, cancel);
}

ctx_t *ctx_with_deadline_cause(ctx_t *parent, ctx_time_t deadline, int cause, const char *msg,
                               ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, cause, msg, cancel);
}

ctx_t *ctx_with_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                              ctx_cancel_t **cancel)
{
    return with_deadline(parent, add_sat(ctx_now(), timeout), cause, msg, cancel);
}

bool ctx_deadline(ctx_t *c, ctx_time_t *deadline)
{
    if (c == NULL)
        return false;
    /* Every cancel node records its nearest timer ancestor-or-self, whose
     * deadline is the earliest of the chain (a later one would have made a
     * plain cancel node instead). */
    struct ctx__timer *t = ctx__dlsrc(c);
    if (t == NULL)
        return false;
    if (deadline != NULL)
        *deadline = t->deadline;
    return true;
}
