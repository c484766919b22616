/* SPDX-License-Identifier: MIT */

/*
 * Futex emulation for systems without futex(2): waiters sleep on a
 * condition variable chosen by hashing the word's address.  The waker
 * changes the word before it wakes and takes the bucket's mutex to do so,
 * and the waiter checks the word under the same mutex, so no wake-up is
 * lost.
 */
#include "../internal.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

/* fork's prepare handler holds every bucket's mutex at once, beside the
 * library's other locks, and ThreadSanitizer follows at most 64 mutexes
 * held by one thread: 32 buckets leave room for the rest. */
#define NBUCKETS 32

/* Whether condition variables can wait on CLOCK_MONOTONIC, the clock of
 * every deadline here.  macOS has no pthread_condattr_setclock: there the
 * deadline is moved to the real-time clock just before each wait. */
#if defined(_POSIX_MONOTONIC_CLOCK) && _POSIX_MONOTONIC_CLOCK >= 0 && !defined(__APPLE__)
#define CONDS_ON_MONOTONIC 1
#else
#define CONDS_ON_MONOTONIC 0
#endif

static struct bucket {
    pthread_mutex_t mu;
    pthread_cond_t cv;
} buckets[NBUCKETS];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init_bucket(int i)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
#if CONDS_ON_MONOTONIC
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
#endif
    pthread_mutex_init(&buckets[i].mu, NULL);
    pthread_cond_init(&buckets[i].cv, &a);
    pthread_condattr_destroy(&a);
}

static void init(void)
{
    for (int i = 0; i < NBUCKETS; i++)
        init_bucket(i);
}

static struct bucket *bucket_of(const void *addr)
{
    pthread_once(&once, init);
    uint64_t h = (uintptr_t)addr; /* 32 or 64 bits */
    h ^= h >> 17;
    h *= 0x9e3779b97f4a7c15u;
    return &buckets[(h >> 32) % NBUCKETS];
}

#if !CONDS_ON_MONOTONIC
/* abs, on CLOCK_MONOTONIC, as the same instant on CLOCK_REALTIME. */
static struct timespec to_realtime(const struct timespec *abs)
{
    struct timespec mono, real;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &real);
    ctx_time_t left =
        ((ctx_time_t)abs->tv_sec - mono.tv_sec) * CTX_SECOND + (abs->tv_nsec - mono.tv_nsec);
    if (left < 0)
        left = 0;
    ctx_time_t t = ctx__add_sat((ctx_time_t)real.tv_sec * CTX_SECOND + real.tv_nsec, left);
    return ctx__timespec(t);
}
#endif

int ctx__futex_wait(_Atomic uint32_t *addr, uint32_t expected, const struct timespec *abs_deadline)
{
#if !CONDS_ON_MONOTONIC
    struct timespec real;
    if (abs_deadline != NULL) {
        real = to_realtime(abs_deadline);
        abs_deadline = &real;
    }
#endif
    struct bucket *b = bucket_of(addr);
    int r = 0;
    pthread_mutex_lock(&b->mu);
    if (atomic_load_explicit(addr, memory_order_acquire) == expected) {
        if (abs_deadline == NULL)
            pthread_cond_wait(&b->cv, &b->mu);
        else
            r = pthread_cond_timedwait(&b->cv, &b->mu, abs_deadline);
    }
    pthread_mutex_unlock(&b->mu);
    return r == ETIMEDOUT ? ETIMEDOUT : 0;
}

void ctx__futex_wake(_Atomic uint32_t *addr, int count)
{
    (void)count; /* the bucket is shared: wake everyone, they re-check */
    struct bucket *b = bucket_of(addr);
    pthread_mutex_lock(&b->mu);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void ctx__lock_slow(_Atomic uint32_t *l)
{
    for (int i = 0; i < 100; i++) {
        uint32_t expected = 0;
        if (atomic_compare_exchange_weak_explicit(l, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        sched_yield();
    }
    while (atomic_exchange_explicit(l, 2, memory_order_acquire) != 0)
        ctx__futex_wait(l, 2, NULL);
}

/* fork(2): hold every bucket across the fork so that none is captured
 * mid-use; the child starts them afresh.  phase: 0 prepare, 1 parent,
 * 2 child. */
void ctx__futex_atfork(int phase)
{
    pthread_once(&once, init);
    for (int i = 0; i < NBUCKETS; i++) {
        if (phase == 0) {
            pthread_mutex_lock(&buckets[i].mu);
        } else if (phase == 1) {
            pthread_mutex_unlock(&buckets[i].mu);
        } else {
            init_bucket(i);
        }
    }
}
