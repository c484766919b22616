/* SPDX-License-Identifier: MIT */

/*
 * Groups (errgroup) and the thread pool their tasks run on.
 *
 * The pool is shared by every group.  A task goes into one FIFO queue, and
 * a non-empty queue always has a thread that is not inside a task to take
 * from it: a "looking" thread (between tasks: it takes from the queue until
 * the queue is empty before it may sleep), a sleeping thread woken for it,
 * or a new thread.  A submitter wakes or starts a thread only when no
 * thread looks; a thread that takes a task and leaves tasks behind that no
 * other thread looks at wakes or starts the next one before it runs its
 * task (Go's scheduler hands work on the same way between its spinning
 * threads).  So a task never waits behind a task that blocks (a thread
 * inside a task looks at nothing) as long as threads can be started: at
 * the thread cap, or when a start fails, tasks already queued wait for a
 * thread to come free (or for their group's ctx_group_wait, which runs
 * them), and a submission that nobody would look at gets EAGAIN.  Threads
 * start one at a time as tasks
 * need them, a burst that its submitter runs itself (below) starts one
 * thread and not one per task, and a burst of short tasks is handed over
 * without a system call each: a thread that finds the queue empty polls it
 * for SPIN_NS before it sleeps.  Idle threads exit after IDLE_NS.
 *
 * A caller that must wait (ctx_group_go at the group's limit,
 * ctx_group_wait) runs its own group's queued tasks meanwhile instead of
 * sleeping: they hold slots already, so the limit holds, and a burst of
 * short tasks then costs no hand-over at all.
 *
 * A group counts its active tasks (queued or running) in one futex word:
 * ctx_group_go waits on it while the limit is reached, ctx_group_wait until
 * it is zero.  The group is freed by whichever of ctx_group_wait and the
 * last task lets go of it last (a reference count), so a worker may touch
 * the group after waking the waiter.
 *
 * Lock order: the pool mutex and a group's mutex are never held together,
 * and neither is held while a task runs or while a context is cancelled.
 *
 * A ctx_group_t * is not the group's address but a generation-checked
 * handle (core/cancel.c): the group is reached through a cell that
 * ctx_group_wait and ctx_group_abandon make stale, so a second wait, or a
 * ctx_group_go after the group is gone, is an EINVAL and never a touch of
 * freed memory.  Tasks hold the group itself (struct task's g).
 *
 * fork(2): the pool's handlers (registered here with pthread_atfork) hold
 * the pool mutex across the fork; the child starts with an empty pool.
 * The parent's queued tasks are the parent's: the child forgets them.
 */
#include "internal.h"
#include "platform.h"

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#define IDLE_NS     (2 * CTX_SECOND)
#define SPIN_NS     (50 * CTX_MICROSECOND)
#define MAX_POLLING 2
#define MAX_THREADS 4096

#define GROUP_LIVE    0x4c495645u /* "LIVE" */
#define GROUP_WAITING 0x57414954u /* "WAIT": in ctx_group_wait */
#define GROUP_WAITED  0x444f4e45u /* "DONE": ctx_group_wait returned */

struct task {
    ctx_task_fn fn;
    void *arg;
    struct ctx_group *g;
    struct task *next;
};

struct ctx_group {
    ctx_t *ctx;
    ctx_cancel_t *cancel;
    /* Tasks handed to the pool and not finished.  A futex word. */
    _Atomic uint32_t active;
    /* Threads sleeping on active (submitters at the limit, the waiter). */
    _Atomic uint32_t sleepers;
    /* The owner's reference plus one per active task. */
    _Atomic uint32_t refs;
    _Atomic uint32_t state; /* GROUP_LIVE, _WAITING, _WAITED: one wait or abandon */
    uint32_t handle;        /* the handle's cell index + 1 */
    /* < 0: none.  Written by ctx_group_set_limit only while active == 0,
     * but a misused concurrent ctx_group_go may read it meanwhile: atomic
     * (relaxed; it publishes nothing) so that this stays a wrong answer
     * and not undefined behaviour. */
    _Atomic int limit;
    pthread_mutex_t mu; /* the first failure */
    int err;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct task *head, **tail;
    int threads;             /* pool threads alive */
    int looking;             /* of which outside tasks and awake: they drain the queue */
    int idle;                /* of which sleeping on cv */
    int wakes;               /* signals sent to cv not yet taken */
    int qlen;                /* tasks in the queue */
    int polling;             /* looking threads polling `queued` (<= MAX_POLLING) */
    _Atomic uint32_t queued; /* qlen, for the polls of looking threads */
    int quit;                /* ctx_shutdown: idle threads end now */
} P = { CTX__PLAT_SPIN_MUTEX_INITIALIZER,
        PTHREAD_COND_INITIALIZER,
        NULL,
        &P.head,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0 };

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

int (*ctx__sc_thread_start)(void *(*fn)(void *), size_t stack) = ctx__thread_start;

/* The pool's condition variable measures its idle timeout on
 * CLOCK_MONOTONIC, like every wait in the library. */
static void cv_make(void)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&P.cv, &a);
    pthread_condattr_destroy(&a);
}

/* ---------------------------------------------------------------------------
 * fork(2)
 */

static void pool_prepare(void)
{
    pthread_mutex_lock(&P.mu);
}

static void pool_parent(void)
{
    pthread_mutex_unlock(&P.mu);
}

static void pool_child(void)
{
    /* Only the forking thread exists here: no pool thread came along, and
     * the queue's tasks belong to the parent's groups. */
    P.head = NULL;
    P.tail = &P.head;
    P.threads = P.looking = P.idle = P.wakes = P.qlen = P.polling = 0;
    atomic_store_explicit(&P.queued, 0, memory_order_relaxed);
    cv_make();
    pthread_mutex_unlock(&P.mu);
}

static void pool_init(void)
{
    pthread_cond_destroy(&P.cv);
    cv_make();
    pthread_atfork(pool_prepare, pool_parent, pool_child);
}

/* ---------------------------------------------------------------------------
 * Groups' counters
 */

static void group_unref(struct ctx_group *g)
{
    /* acq_rel: the last holder sees what every task and the owner did. */
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1) {
        ctx_unref(g->ctx);
        pthread_mutex_destroy(&g->mu);
        ctx__free(g);
    }
}

/* One task fewer.  seq_cst with the sleepers count: a sleeper increments
 * sleepers then reads active, we write active then read sleepers, so one of
 * us sees the other (Dekker), and the futex wait re-checks the value.
 *
 * Only two values of the count matter to a sleeper: zero (ctx_group_wait)
 * and one below the limit (a ctx_group_go at the limit; the limit changes
 * only while the count is zero).  Any other decrement wakes nobody, so
 * 1,000 tasks ending together cost the waiter one wake-up, not 1,000. */
static void release_slot(struct ctx_group *g)
{
    uint32_t was = atomic_fetch_sub_explicit(&g->active, 1, memory_order_seq_cst);
    int limit = atomic_load_explicit(&g->limit, memory_order_relaxed);
    if (was != 1 && (limit < 0 || was != (uint32_t)limit))
        return;
    if (atomic_load_explicit(&g->sleepers, memory_order_seq_cst) != 0)
        ctx__futex_wake(&g->active, INT32_MAX);
}

/* Sleeps while active == a (a spurious return is fine: callers loop). */
static void sleep_on_active(struct ctx_group *g, uint32_t a)
{
    atomic_fetch_add_explicit(&g->sleepers, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&g->active, memory_order_seq_cst) == a)
        ctx__futex_wait(&g->active, a, NULL);
    atomic_fetch_sub_explicit(&g->sleepers, 1, memory_order_relaxed);
}

static void run_task(struct task *t);
static struct task *pop_own(struct ctx_group *g);

/* Polls for SPIN_NS from the first call (*until == 0), yielding the CPU
 * between polls; false once the time is up. */
static int spin(ctx_time_t *until)
{
    ctx_time_t now = ctx__real_now();
    if (*until == 0)
        *until = now + SPIN_NS;
    if (now >= *until)
        return 0;
    sched_yield();
    return 1;
}

/* Takes a slot under the limit.  Returns 0, or EBUSY when !block and the
 * limit is reached. */
static int take_slot(struct ctx_group *g, int block)
{
    ctx_time_t spin_until = 0;
    for (;;) {
        uint32_t a = atomic_load_explicit(&g->active, memory_order_relaxed);
        int limit = atomic_load_explicit(&g->limit, memory_order_relaxed);
        if (limit < 0 || a < (uint32_t)limit) {
            if (atomic_compare_exchange_weak_explicit(&g->active, &a, a + 1, memory_order_relaxed,
                                                      memory_order_relaxed))
                return 0;
            continue;
        }
        if (!block)
            return EBUSY;
        /* Rather than wait for a pool thread to get round to one of our
         * queued tasks, run it here: it holds a slot already, so the
         * limit still holds, and the slot is ours when it returns. */
        struct task *t = pop_own(g);
        if (t != NULL) {
            run_task(t);
            continue;
        }
        /* Tasks are often short: let a pool thread finish one before
         * paying for a sleep and a wake-up. */
        if (spin(&spin_until))
            continue;
        sleep_on_active(g, a);
    }
}

/* ---------------------------------------------------------------------------
 * The pool
 */

static void run_task(struct task *t)
{
    struct ctx_group *g = t->g;
    int r = t->fn(g->ctx, t->arg);
    ctx__free(t);
    if (r != 0) {
        pthread_mutex_lock(&g->mu);
        int first = g->err == 0;
        if (first)
            g->err = r;
        pthread_mutex_unlock(&g->mu);
        if (first)
            ctx_cancel_cause_at(g->cancel, r, ctx_strerror(r), __FILE__, __LINE__, "ctx_group");
    }
    release_slot(g);
    group_unref(g);
}

/* Pops a task.  Under P.mu. */
static struct task *pop_locked(void)
{
    struct task *t = P.head;
    if (t != NULL) {
        P.head = t->next;
        if (P.head == NULL)
            P.tail = &P.head;
        P.qlen--;
        atomic_store_explicit(&P.queued, (uint32_t)P.qlen, memory_order_relaxed);
    }
    return t;
}

/* Takes the first queued task of g, or NULL. */
static struct task *pop_own(struct ctx_group *g)
{
    /* Relaxed: a hint; the queue is read under the lock. */
    if (atomic_load_explicit(&P.queued, memory_order_relaxed) == 0)
        return NULL;
    pthread_mutex_lock(&P.mu);
    struct task **pp = &P.head;
    while (*pp != NULL && (*pp)->g != g)
        pp = &(*pp)->next;
    struct task *t = *pp;
    if (t != NULL) {
        *pp = t->next;
        if (P.tail == &t->next)
            P.tail = pp;
        P.qlen--;
        atomic_store_explicit(&P.queued, (uint32_t)P.qlen, memory_order_relaxed);
    }
    pthread_mutex_unlock(&P.mu);
    return t;
}

static int cover_locked(void);
static int start_thread(void);

static void *pool_main(void *arg)
{
    (void)arg;
    int spun = 0;              /* polled since the last task: sleep next time */
    pthread_mutex_lock(&P.mu); /* counted as looking by whoever started us */
    for (;;) {
        struct task *t = pop_locked();
        if (t != NULL) {
            P.looking--;
            /* The task may block: if tasks are left that no other thread
             * looks at, hand the queue on first (as Go's scheduler wakes
             * another spinning thread when it finds work).  So threads
             * start one at a time, as the tasks need them, and a burst
             * that the submitters run themselves starts only one. */
            int start = P.head != NULL && P.looking + P.wakes == 0 && cover_locked();
            pthread_mutex_unlock(&P.mu);
            if (start)
                start_thread(); /* on failure we take the rest after t */
            run_task(t);
            spun = 0;
            pthread_mutex_lock(&P.mu);
            P.looking++;
            continue;
        }
        if (!spun && P.polling < MAX_POLLING) {
            /* Still looking: poll a while, then look again under the
             * lock before sleeping.  One poller is enough to catch a
             * burst; more would only fight over the lock. */
            spun = 1;
            P.polling++;
            pthread_mutex_unlock(&P.mu);
            ctx_time_t until = 0;
            while (atomic_load_explicit(&P.queued, memory_order_relaxed) == 0 && spin(&until))
                ;
            pthread_mutex_lock(&P.mu);
            P.polling--;
            continue;
        }
        spun = 0;
        P.looking--;
        P.idle++;
        struct timespec end = ctx__timespec(ctx__add_sat(ctx__real_now(), IDLE_NS));
        int rc = 0;
        while (P.head == NULL && P.wakes == 0 && rc != ETIMEDOUT && !P.quit)
            rc = pthread_cond_timedwait(&P.cv, &P.mu, &end);
        P.idle--;
        if (P.wakes > 0)
            P.wakes--;
        if (P.head == NULL && (rc == ETIMEDOUT || P.quit)) {
            P.threads--;
            pthread_mutex_unlock(&P.mu);
            return NULL;
        }
        P.looking++;
    }
}

/* Takes t back out of the queue if it is still there.  Under P.mu. */
static int unqueue_locked(struct task *t)
{
    struct task **pp = &P.head;
    while (*pp != NULL && *pp != t)
        pp = &(*pp)->next;
    if (*pp == NULL)
        return 0;
    *pp = t->next;
    if (P.tail == &t->next)
        P.tail = pp;
    P.qlen--;
    atomic_store_explicit(&P.queued, (uint32_t)P.qlen, memory_order_relaxed);
    return 1;
}

/* Makes sure some thread will look at the queue: wakes an idle thread or
 * counts a new one, which the caller starts with start_thread after
 * unlocking.  Returns 1 when a thread is to be started.  Under P.mu, with
 * a non-empty queue that no looking or woken thread covers. */
static int cover_locked(void)
{
    if (P.idle > P.wakes) {
        P.wakes++;
        pthread_cond_signal(&P.cv);
        return 0;
    }
    if (P.threads >= MAX_THREADS)
        return 0;
    /* Counted from this instant, so that the submitters meanwhile do not
     * start more threads for the same tasks. */
    P.threads++;
    P.looking++;
    return 1;
}

/* Starts the thread that cover_locked counted.  Outside the lock: starting
 * a thread maps its stack and clones, tens of microseconds during which
 * the pool's threads and the submitters would otherwise queue up on the
 * lock.  Returns 0 or the error, the count taken back. */
static int start_thread(void)
{
    int e = ctx__sc_thread_start(pool_main, 0);
    if (e == 0)
        return 0;
    pthread_mutex_lock(&P.mu);
    P.threads--;
    P.looking--;
    pthread_mutex_unlock(&P.mu);
    return e;
}

/* Queues t and makes sure a thread will take it.  0, or EAGAIN when no
 * thread looks at the queue and none can be woken or started (t is then
 * not queued). */
static int submit(struct task *t)
{
    pthread_mutex_lock(&P.mu);
    P.quit = 0; /* new work: the pool is in use again */
    t->next = NULL;
    *P.tail = t;
    P.tail = &t->next;
    P.qlen++;
    atomic_store_explicit(&P.queued, (uint32_t)P.qlen, memory_order_relaxed);
    /* One looking or woken thread covers the whole queue: it takes the
     * first task, and before it runs it, it wakes or starts the next
     * thread if tasks are left and nobody else looks (pool_main). */
    int start = 0;
    if (P.looking + P.wakes == 0) {
        start = cover_locked();
        if (!start && P.wakes == 0) {
            unqueue_locked(t);
            pthread_mutex_unlock(&P.mu);
            return EAGAIN;
        }
    }
    pthread_mutex_unlock(&P.mu);
    if (!start || start_thread() == 0)
        return 0;
    pthread_mutex_lock(&P.mu);
    int e = 0;
    /* If no thread took t meanwhile and nobody looks, t goes back to the
     * caller. */
    if (P.looking + P.wakes == 0 && unqueue_locked(t))
        e = EAGAIN;
    pthread_mutex_unlock(&P.mu);
    return e;
}

int ctx__pool_quit(void)
{
    pthread_mutex_lock(&P.mu);
    /* Threads neither looking nor sleeping are inside tasks. */
    int busy = P.qlen > 0 || P.threads > P.looking + P.idle;
    if (!busy && P.threads > 0) {
        P.quit = 1;
        pthread_cond_broadcast(&P.cv);
    }
    pthread_mutex_unlock(&P.mu);
    return busy ? EBUSY : 0;
}

/* ---------------------------------------------------------------------------
 * The API
 */

ctx_group_t *ctx_group_new(ctx_t *parent, ctx_t **out)
{
    if (out != NULL)
        *out = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    pthread_once(&pool_once, pool_init);
    struct ctx_group *g = ctx__alloc(sizeof *g);
    if (g == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    g->ctx = ctx_with_cancel(parent, &g->cancel);
    if (g->ctx == NULL) {
        ctx__free(g);
        errno = ENOMEM;
        return NULL;
    }
    if (ctx__tracking_on())
        ctx_track_new_(g->ctx, NULL, 0, "ctx_group_new");
    atomic_init(&g->active, 0);
    atomic_init(&g->sleepers, 0);
    atomic_init(&g->refs, 1);
    atomic_init(&g->state, GROUP_LIVE);
    atomic_init(&g->limit, -1);
    g->err = 0;
    pthread_mutex_init(&g->mu, NULL);
    ctx_group_t *h = ctx__handle_new(g, &g->handle);
    if (h == NULL) {
        ctx_unref(g->ctx);
        pthread_mutex_destroy(&g->mu);
        ctx__free(g);
        errno = ENOMEM;
        return NULL;
    }
    if (out != NULL)
        *out = ctx__ref(g->ctx);
    return h;
}

/* The group of handle h, or NULL once it was waited for or abandoned. */
static struct ctx_group *group_of(ctx_group_t *h)
{
    return ctx__handle_peek(h, "ctx_group: not a group handle");
}

int ctx_group_set_limit(ctx_group_t *h, int n)
{
    struct ctx_group *g;
    if (h == NULL || n == 0 || (g = group_of(h)) == NULL)
        return EINVAL;
    /* Acquire: pairs with release_slot's seq_cst decrement, so that the
     * tasks that ended are really gone. */
    if (atomic_load_explicit(&g->active, memory_order_acquire) != 0)
        return EBUSY;
    atomic_store_explicit(&g->limit, n < 0 ? -1 : n, memory_order_relaxed);
    return 0;
}

static int go(ctx_group_t *h, ctx_task_fn fn, void *arg, int block)
{
    struct ctx_group *g;
    /* Tasks may start tasks while ctx_group_wait waits; after it returned
     * (or the group was abandoned) the handle is stale. */
    if (h == NULL || fn == NULL || (g = group_of(h)) == NULL)
        return EINVAL;
    int e = ctx_err(g->ctx);
    if (e != 0)
        return e; /* Go would start it and leave the check to the task */
    if ((e = take_slot(g, block)) != 0)
        return e;
    /* The group may have ended while we waited for the slot. */
    if ((e = ctx_err(g->ctx)) == 0) {
        struct task *t = ctx__alloc(sizeof *t);
        if (t == NULL) {
            e = ENOMEM;
        } else {
            t->fn = fn;
            t->arg = arg;
            t->g = g;
            atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
            if ((e = submit(t)) != 0) {
                atomic_fetch_sub_explicit(&g->refs, 1, memory_order_relaxed);
                ctx__free(t);
            }
        }
    }
    if (e != 0)
        release_slot(g);
    return e;
}

int ctx_group_go(ctx_group_t *g, ctx_task_fn fn, void *arg)
{
    return go(g, fn, arg, 1);
}

int ctx_group_try_go(ctx_group_t *g, ctx_task_fn fn, void *arg)
{
    return go(g, fn, arg, 0);
}

int ctx_group_wait(ctx_group_t *h, const char **msg)
{
    if (msg != NULL)
        *msg = NULL;
    struct ctx_group *g;
    if (h == NULL || (g = group_of(h)) == NULL)
        return EINVAL; /* a second wait, or a wait after ctx_group_abandon */
    uint32_t live = GROUP_LIVE;
    if (!atomic_compare_exchange_strong_explicit(&g->state, &live, GROUP_WAITING,
                                                 memory_order_relaxed, memory_order_relaxed))
        return EINVAL; /* another thread is waiting: the owner's call only */
    ctx_time_t spin_until = 0;
    for (;;) {
        /* Acquire: pairs with the tasks' release_slot; what they did
         * (the first failure) happens before we read it. */
        uint32_t a = atomic_load_explicit(&g->active, memory_order_acquire);
        if (a == 0)
            break;
        struct task *t = pop_own(g); /* as in take_slot */
        if (t != NULL)
            run_task(t);
        else if (!spin(&spin_until))
            sleep_on_active(g, a);
    }
    pthread_mutex_lock(&g->mu);
    int err = g->err;
    pthread_mutex_unlock(&g->mu);
    ctx_cancel_at(g->cancel, __FILE__, __LINE__, "ctx_group_wait");
    if (msg != NULL && err != 0)
        *msg = ctx_strerror(err);
    atomic_store_explicit(&g->state, GROUP_WAITED, memory_order_relaxed);
    ctx__handle_drop(g->handle);
    group_unref(g);
    return err;
}

int ctx_group_abandon(ctx_group_t *h)
{
    struct ctx_group *g;
    if (h == NULL || (g = group_of(h)) == NULL)
        return EINVAL;
    uint32_t live = GROUP_LIVE;
    if (!atomic_compare_exchange_strong_explicit(&g->state, &live, GROUP_WAITED,
                                                 memory_order_relaxed, memory_order_relaxed))
        return EINVAL;
    ctx_cancel_at(g->cancel, __FILE__, __LINE__, "ctx_group_abandon");
    /* The handle goes stale now; the tasks still queued or running hold
     * the group, and the last of them frees it. */
    ctx__handle_drop(g->handle);
    group_unref(g);
    return 0;
}
