/*
 * Time: the clock (real or manual), deadline contexts, and the timer
 * mechanism behind them.
 *
 * Every live deadline is one entry in a 4-ary min-heap of (deadline, node)
 * pairs; a node knows its heap and index, so cancelling or freeing it
 * removes its entry at once, in O(log n).  There are NSHARDS heaps, each
 * with its own lock, and a thread always inserts into the same one, so
 * threads creating and cancelling timeouts do not contend.  Each heap
 * publishes its earliest deadline in an atomic, so finding the global
 * earliest takes NSHARDS loads and no lock.
 *
 * One library thread, started on first need, sleeps until the earliest
 * deadline and cancels what is due, earliest first.  It hands the AfterFunc
 * callbacks of those contexts to the callback threads (after.c), so a slow
 * callback never makes another deadline late.  An insert wakes it only when
 * the new deadline is earlier than the one it sleeps until.
 *
 * Under the manual clock the timer thread stands aside and
 * ctx_clock_advance() fires what is due, in order, on the caller.
 *
 * Locks, in order: T.fire (held by whoever cancels expired timers: the
 * timer thread or an advancing test; and by fork's prepare handler), node
 * locks, then either a shard's lock or T.mu (the timer thread's sleep and
 * the clock mode).  A shard lock and T.mu are never held together except by
 * fork's prepare handler, which takes T.mu first.
 */
#include "internal.h"

#include <pthread.h>
#include <string.h>

#define NSHARDS 8

struct hent {
    ctx_time_t deadline;
    struct ctx__timer *t;
};

struct shard {
    _Atomic uint32_t mu; /* a futex lock: ctx__lock/ctx__unlock */
    struct hent *heap;
    uint32_t n, cap;
    /* heap[0].deadline, or INT64_MAX when empty.  Written under mu; read
     * without it to pick the earliest shard (a stale value only costs a
     * look under the lock). */
    _Atomic int64_t min;
} __attribute__((aligned(64)));

static struct {
    _Atomic int ready; /* init() has run */
    pthread_once_t once;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC: the timer thread sleeps here */
    pthread_mutex_t fire;
    int64_t wake;          /* under mu: when the timer thread will wake */
    _Atomic int started;   /* the timer thread runs; set under mu */
    _Atomic int manual;    /* the manual clock is in force */
    _Atomic int64_t mnow;  /* the manual clock's time */
    _Atomic unsigned next; /* round robin for assigning shards to threads */
    struct shard shard[NSHARDS];
} T = {
    .once = PTHREAD_ONCE_INIT,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .fire = PTHREAD_MUTEX_INITIALIZER, /* made recursive by init_once */
    .wake = INT64_MAX,
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

ctx_time_t ctx__real_now(void)
{
    return real_now();
}

int ctx__clock_is_manual(void)
{
    return atomic_load_explicit(&T.manual, memory_order_relaxed);
}

ctx_time_t ctx_time_from_wall(const struct timespec *wall)
{
    if (wall == NULL)
        return ctx_now();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    /* Seconds first, in unsigned arithmetic (the difference of two time_t
     * can overflow int64_t), so that a far-away instant saturates. */
    const uint64_t lim = INT64_MAX / CTX_SECOND - 1;
    int64_t ws = (int64_t)wall->tv_sec, rs = (int64_t)rt.tv_sec, ds;
    if (ws >= rs) {
        uint64_t diff = (uint64_t)ws - (uint64_t)rs;
        if (diff > lim)
            return INT64_MAX;
        ds = (int64_t)diff;
    } else {
        uint64_t diff = (uint64_t)rs - (uint64_t)ws;
        if (diff > lim)
            return INT64_MIN;
        ds = -(int64_t)diff;
    }
    ctx_duration_t d = ds * CTX_SECOND + ((int64_t)wall->tv_nsec - rt.tv_nsec);
    return ctx__add_sat(ctx_now(), d);
}

/* ---------------------------------------------------------------------------
 * The heaps (each under its shard's lock)
 */

static void heap_set(struct shard *S, uint32_t i, struct hent e)
{
    S->heap[i] = e;
    e.t->heap_index = i;
}

static void sift_up(struct shard *S, uint32_t i, struct hent e)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 4;
        if (S->heap[p].deadline <= e.deadline)
            break;
        heap_set(S, i, S->heap[p]);
        i = p;
    }
    heap_set(S, i, e);
}

static void sift_down(struct shard *S, uint32_t i, struct hent e)
{
    for (;;) {
        uint32_t c = 4 * i + 1, best = c;
        if (c >= S->n)
            break;
        uint32_t end = c + 4 < S->n ? c + 4 : S->n;
        for (uint32_t k = c + 1; k < end; k++)
            if (S->heap[k].deadline < S->heap[best].deadline)
                best = k;
        if (S->heap[best].deadline >= e.deadline)
            break;
        heap_set(S, i, S->heap[best]);
        i = best;
    }
    heap_set(S, i, e);
}

static void publish_min(struct shard *S)
{
    atomic_store_explicit(&S->min, S->n > 0 ? S->heap[0].deadline : INT64_MAX,
                          memory_order_relaxed);
}

static void heap_delete(struct shard *S, uint32_t i)
{
    struct ctx__timer *t = S->heap[i].t;
    struct hent last = S->heap[--S->n];
    if (i < S->n) {
        if (i > 0 && last.deadline < S->heap[(i - 1) / 4].deadline)
            sift_up(S, i, last);
        else
            sift_down(S, i, last);
    }
    t->heap_index = CTX__NO_INDEX;
    if (i == 0)
        publish_min(S);
}

/* T.fire is recursive: a callback run by ctx_clock_advance may advance the
 * clock again, or fork, on the same thread. */
static void init_fire(void)
{
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&T.fire, &ma);
    pthread_mutexattr_destroy(&ma);
}

static void init_once(void)
{
    init_fire();
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&T.cv, &a);
    pthread_condattr_destroy(&a);
    for (int i = 0; i < NSHARDS; i++)
        atomic_store_explicit(&T.shard[i].min, INT64_MAX, memory_order_relaxed);
    ctx__fork_init();
    /* Release: pairs with the acquire in init(). */
    atomic_store_explicit(&T.ready, 1, memory_order_release);
}

static void init(void)
{
    if (!atomic_load_explicit(&T.ready, memory_order_acquire))
        pthread_once(&T.once, init_once);
}

/* This thread's shard. */
static unsigned my_shard(void)
{
    static CTX__TLS unsigned mine;
    if (mine == 0)
        mine = 1 + atomic_fetch_add_explicit(&T.next, 1, memory_order_relaxed) % NSHARDS;
    return mine - 1;
}

/* Makes room for one more entry.  Under the shard's lock. */
static int heap_grow(struct shard *S)
{
    if (S->n < S->cap)
        return 0;
    uint32_t cap = S->cap ? S->cap * 2 : 64;
    struct hent *h = cap <= UINT32_MAX / 2 ? ctx__alloc((size_t)cap * sizeof *h) : NULL;
    if (h == NULL)
        return ENOMEM;
    if (S->n > 0)
        memcpy(h, S->heap, (size_t)S->n * sizeof *h);
    ctx__free(S->heap);
    S->heap = h;
    S->cap = cap;
    return 0;
}

static void *timer_main(void *arg);

/* Starts the timer thread if the real clock is in force and it is not
 * running.  Under T.mu. */
static int start_thread_locked(void)
{
    if (atomic_load_explicit(&T.started, memory_order_relaxed) ||
        atomic_load_explicit(&T.manual, memory_order_relaxed))
        return 0;
    int e = ctx__thread_start(timer_main, 64 * 1024);
    if (e == 0)
        atomic_store_explicit(&T.started, 1, memory_order_relaxed);
    return e;
}

static int ensure_thread(void)
{
    if (atomic_load_explicit(&T.started, memory_order_relaxed))
        return 0;
    pthread_mutex_lock(&T.mu);
    int e = start_thread_locked();
    pthread_mutex_unlock(&T.mu);
    return e;
}

/* Inserts t, unless t is already done (a parent's cancel may have reached
 * it since it was linked).  Returns 0 or ENOMEM. */
static int heap_insert(struct ctx__timer *t)
{
    struct shard *S = &T.shard[t->shard];
    int earliest = 0, e = 0;
    ctx__lock(&S->mu);
    /* Acquire: pairs with mark()'s release.  mark() sets err before it
     * takes the shard lock to remove the timer, so either it sees our entry
     * or we see its err. */
    if (!(atomic_load_explicit(&t->base.u.c.state, memory_order_acquire) & CTX__ERR_MASK) &&
        (e = heap_grow(S)) == 0) {
        struct hent h = { t->deadline, t };
        S->n++;
        sift_up(S, S->n - 1, h);
        if (t->heap_index == 0) {
            publish_min(S);
            earliest = 1;
        }
    }
    ctx__unlock(&S->mu);
    if (earliest) {
        /* The timer thread computes its wake-up time and goes to sleep
         * under T.mu, after reading every shard's min: either it read ours,
         * or we see the time it chose here. */
        pthread_mutex_lock(&T.mu);
        if (t->deadline < T.wake)
            pthread_cond_signal(&T.cv);
        pthread_mutex_unlock(&T.mu);
    }
    return e;
}

void ctx__timer_remove(struct ctx__timer *t)
{
    struct shard *S = &T.shard[t->shard];
    ctx__lock(&S->mu);
    if (t->heap_index != CTX__NO_INDEX)
        heap_delete(S, t->heap_index);
    ctx__unlock(&S->mu);
}

/* The shard holding the earliest deadline, from the published minima. */
static struct shard *earliest_shard(int64_t *min)
{
    struct shard *best = &T.shard[0];
    int64_t m = atomic_load_explicit(&best->min, memory_order_relaxed);
    for (int i = 1; i < NSHARDS; i++) {
        int64_t v = atomic_load_explicit(&T.shard[i].min, memory_order_relaxed);
        if (v < m) {
            m = v;
            best = &T.shard[i];
        }
    }
    *min = m;
    return best;
}

/* Pops the earliest entry of all shards if it is due at `now` and takes a
 * reference to its node.  Returns 1 with *out set (NULL when the node was
 * being freed and is skipped), or 0 when nothing is due. */
/* Pops S's earliest entry if it is due at `now`.  Under S's lock. */
static int pop_locked(struct shard *S, ctx_time_t now, struct ctx__timer **out)
{
    if (S->n == 0 || S->heap[0].deadline > now)
        return 0;
    struct ctx__timer *t = S->heap[0].t;
    heap_delete(S, 0);
    /* Skip a node that is already done (its canceller is about to remove
     * this entry: never touch its locks) or whose count reached zero (a
     * thread freeing it waits for this lock to remove the entry).  Either
     * way the node is still allocated while we hold the shard lock. */
    if (atomic_load_explicit(&t->base.u.c.state, memory_order_acquire) & CTX__ERR_MASK)
        *out = NULL;
    else
        *out = ctx__try_ref(&t->base) ? t : NULL;
    return 1;
}

/* Pops the earliest entry of all shards if it is due at `now` and takes a
 * reference to its node.  Returns 1 with *out set (NULL when the node is
 * skipped), or 0 when nothing is due. */
static int pop_due(ctx_time_t now, struct ctx__timer **out)
{
    for (;;) {
        int64_t m;
        struct shard *S = earliest_shard(&m);
        if (m > now)
            return 0;
        ctx__lock(&S->mu);
        int popped = pop_locked(S, now, out);
        ctx__unlock(&S->mu);
        if (popped)
            return 1;
        if (m == INT64_MAX) {
            /* Every published minimum is INT64_MAX: the heaps are empty,
             * or hold only deadlines at the end of time, which are due
             * only when now is INT64_MAX too.  One pass decides. */
            for (int i = 0; i < NSHARDS; i++) {
                ctx__lock(&T.shard[i].mu);
                popped = pop_locked(&T.shard[i], now, out);
                ctx__unlock(&T.shard[i].mu);
                if (popped)
                    return 1;
            }
            return 0;
        }
        /* The minimum changed meanwhile: look again. */
    }
}

static void fire(struct ctx__timer *t, int defer)
{
    ctx__cancel(&t->base, CTX_DEADLINE_EXCEEDED, t->dl_cause, t->dl_msg, defer);
    if (!defer) {
        ctx_unref(&t->base);
        return;
    }
    /* Freeing runs user code (value and custom destroy hooks, up the
     * chain), which must never run on the timer thread. */
    ctx__unref_deferred(&t->base);
}

static void *timer_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&T.mu);
        for (;;) {
            if (atomic_load_explicit(&T.manual, memory_order_relaxed)) {
                T.wake = INT64_MAX;
                pthread_cond_wait(&T.cv, &T.mu);
                continue;
            }
            int64_t m;
            earliest_shard(&m);
            ctx_time_t now = real_now();
            if (m <= now)
                break;
            T.wake = m;
            /* While deadline callbacks wait for a worker, look at them
             * every millisecond (after.c explains why). */
            if (ctx__after_watch(now) && m > now + CTX_MILLISECOND)
                m = now + CTX_MILLISECOND;
            if (m == INT64_MAX) {
                pthread_cond_wait(&T.cv, &T.mu);
            } else {
                struct timespec ts = ctx__timespec(m);
                pthread_cond_timedwait(&T.cv, &T.mu, &ts);
            }
        }
        T.wake = INT64_MIN; /* awake: inserts need not signal */
        pthread_mutex_unlock(&T.mu);

        pthread_mutex_lock(&T.fire);
        struct ctx__timer *t;
        while (!atomic_load_explicit(&T.manual, memory_order_relaxed) && pop_due(real_now(), &t))
            if (t != NULL)
                fire(t, 1);
        pthread_mutex_unlock(&T.fire);
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * The manual clock
 */

int ctx_clock_manual(ctx_time_t start)
{
    init();
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&T.mnow, start, memory_order_relaxed);
    atomic_store_explicit(&T.manual, 1, memory_order_relaxed);
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
    return 0;
}

void ctx_clock_real(void)
{
    init();
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&T.manual, 0, memory_order_relaxed);
    int64_t m;
    earliest_shard(&m);
    if (m != INT64_MAX)
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
    ctx_time_t target = ctx__add_sat(ctx_now(), d);
    struct ctx__timer *t;
    while (pop_due(target, &t)) {
        if (t == NULL)
            continue;
        if (t->deadline > atomic_load_explicit(&T.mnow, memory_order_relaxed))
            atomic_store_explicit(&T.mnow, t->deadline, memory_order_relaxed);
        fire(t, 0); /* in order, callbacks included, before we return */
    }
    atomic_store_explicit(&T.mnow, target, memory_order_relaxed);
    pthread_mutex_unlock(&T.fire);
    return 0;
}

/* ---------------------------------------------------------------------------
 * fork(2), called by fork.c's handlers in this order: prepare_fire, (all
 * lock holders drain), prepare; then parent or child, then *_fire.  The
 * child gets a copy of the heaps but not the timer thread; it restarts the
 * thread if it has deadlines.
 */

void ctx__time_atfork_prepare_fire(void)
{
    pthread_mutex_lock(&T.fire); /* the timer thread finishes what it fires */
}

void ctx__time_atfork_prepare(void)
{
    pthread_mutex_lock(&T.mu);
    for (int i = 0; i < NSHARDS; i++)
        ctx__lock_raw(&T.shard[i].mu);
    ctx__after_atfork_prepare();
}

void ctx__time_atfork_parent(void)
{
    ctx__after_atfork_parent();
    for (int i = NSHARDS - 1; i >= 0; i--)
        ctx__unlock_raw(&T.shard[i].mu);
    pthread_mutex_unlock(&T.mu);
}

void ctx__time_atfork_parent_fire(void)
{
    pthread_mutex_unlock(&T.fire);
}

void ctx__time_atfork_child(void)
{
    ctx__after_atfork_child();
    for (int i = NSHARDS - 1; i >= 0; i--)
        ctx__unlock_raw(&T.shard[i].mu);
    if (atomic_load_explicit(&T.ready, memory_order_acquire)) {
        pthread_condattr_t a;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_cond_init(&T.cv, &a);
        pthread_condattr_destroy(&a);
    }
    atomic_store_explicit(&T.started, 0, memory_order_relaxed);
    T.wake = INT64_MAX;
    pthread_mutex_unlock(&T.mu);
}

void ctx__time_atfork_child_fire(void)
{
    /* Not an unlock: a recursive mutex belongs to the thread that locked
     * it, and in the child that thread has another id (the unlock would
     * fail with EPERM and leave it held). */
    init_fire();
}

/* A forked child has no timer thread, and may not start one in its fork
 * handler: POSIX allows only async-signal-safe calls there, and sanitizer
 * runtimes do strand a thread made at that point.  So the child starts it
 * here, from the first call that waits or makes a deadline (T.started is 0
 * in the child while deadlines are pending). */
void ctx__timer_restart(void)
{
    if (atomic_load_explicit(&T.started, memory_order_relaxed) ||
        !atomic_load_explicit(&T.ready, memory_order_acquire))
        return;
    int64_t m;
    earliest_shard(&m);
    if (m != INT64_MAX)
        ensure_thread();
    else
        ctx__after_watch(real_now()); /* queued callbacks get a worker */
}

/* ---------------------------------------------------------------------------
 * Deadline contexts
 */

/* now is ctx_now() when the caller already read it, else NOT_READ. */
#define NOT_READ INT64_MIN

static ctx_t *with_deadline(ctx_t *parent, ctx_time_t d, ctx_time_t now, int cause,
                            const char *text, ctx_cancel_t **cancel)
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

    init();
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
    t->shard = (uint8_t)my_shard();
    int past = d <= (now != NOT_READ ? now : ctx_now());
    int e = past ? 0 : ensure_thread();
    if (e != 0) {
        ctx__msg_unref(t->dl_msg);
        ctx__node_free(t, sizeof *t);
        errno = e;
        return NULL;
    }
    ctx__init_cancel(&t->base, parent, CTX__TIMER);
    if (past) {
        ctx__cancel(&t->base, CTX_DEADLINE_EXCEEDED, cause, t->dl_msg, 0);
    } else if (heap_insert(t) != 0) {
        /* The heap could not grow.  The context was already linked and may
         * even have been reached by a cancel, but nobody else holds it:
         * the ordinary free path takes it apart. */
        ctx_unref(&t->base);
        errno = ENOMEM;
        return NULL;
    }
    if (cancel != NULL)
        *cancel = (ctx_cancel_t *)&t->base;
    return &t->base;
}

ctx_t *ctx_with_deadline(ctx_t *parent, ctx_time_t deadline, ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, NOT_READ, 0, NULL, cancel);
}

ctx_t *ctx_with_timeout(ctx_t *parent, ctx_duration_t timeout, ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx_now();
    return with_deadline(parent, ctx__add_sat(now, timeout), now, 0, NULL, cancel);
}

ctx_t *ctx_with_deadline_cause(ctx_t *parent, ctx_time_t deadline, int cause, const char *msg,
                               ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, NOT_READ, cause, msg, cancel);
}

ctx_t *ctx_with_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                              ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx_now();
    return with_deadline(parent, ctx__add_sat(now, timeout), now, cause, msg, cancel);
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
