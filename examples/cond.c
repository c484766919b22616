/* SPDX-License-Identifier: MIT */

/*
 * cond: wait on a condition variable until a predicate holds or a context
 * is done.
 *
 * This is Go's ExampleAfterFunc_cond (src/context/example_test.go).  In Go,
 * sync.Cond.Wait cannot be interrupted, so the example registers an
 * AfterFunc that takes the lock and broadcasts when the context is done,
 * and loops: wait, then check the context, because a broadcast meant for
 * another waiter wakes this one too.  Four goroutines, each with its own
 * 1 ms timeout, wait for a condition that never comes true, and each prints
 * its error:
 *
 *     context deadline exceeded
 *     context deadline exceeded
 *     context deadline exceeded
 *     context deadline exceeded
 *
 * libctx packs the AfterFunc part into ctx_cond_wait(ctx, cond, mutex):
 * pthread_cond_wait that also returns when ctx is done, with no lost
 * wake-up (the callback broadcasts under the mutex, so it cannot slip in
 * between the waiter's check and its sleep).  It returns ctx_err(ctx), or 0
 * after an ordinary wake-up, after which the caller re-checks its predicate
 * as after any pthread_cond_wait.
 *
 * After the four lines above the program shows, beyond Go's example, a
 * waiter whose condition does come true (it wakes with 0) and one whose
 * context is cancelled by hand.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NWAITERS 4

static void fail(const char *what, int err)
{
    fprintf(stderr, "cond: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* Go: cond := sync.NewCond(new(sync.Mutex)).  ready is the extra part's
 * condition; mu guards it. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool ready;

static bool never(void)
{
    return false;
}

static bool is_ready(void)
{
    return ready;
}

/* Go's waitOnCond(ctx, cond, conditionMet).  Called with mu held; returns
 * with it held.  0 once condition_met() is true, else why ctx is done (or
 * EINVAL / ENOMEM if ctx_cond_wait could not wait at all). */
static int wait_on_cond(ctx_t *ctx, bool (*condition_met)(void))
{
    /* for !conditionMet() { cond.Wait(); if ctx.Err() != nil { return ctx.Err() } } */
    while (!condition_met()) {
        int err = ctx_cond_wait(ctx, &cond, &mu);
        if (err != 0)
            return err;
    }
    return 0;
}

/* Go: fmt.Println(err), which prints <nil> for no error. */
static void print_err(int err)
{
    printf("%s\n", err == 0 ? "<nil>" : ctx_strerror(err));
}

/* One of Go's four goroutines. */
static void *timed_waiter(void *arg)
{
    int *result = arg;

    /* ctx, cancel := context.WithTimeout(context.Background(), 1*time.Millisecond)
     * defer cancel() */
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 1 * CTX_MILLISECOND, &cancel);
    if (ctx == NULL)
        fail("ctx_with_timeout", errno);

    /* cond.L.Lock(); defer cond.L.Unlock() */
    pthread_mutex_lock(&mu);
    *result = wait_on_cond(ctx, never);
    print_err(*result);
    pthread_mutex_unlock(&mu);

    /* Go runs the deferred calls in reverse: Unlock, then cancel.  That
     * order matters here too: ctx_cond_wait's callback takes mu, so never
     * cancel the context while holding mu. */
    ctx_cancel(cancel);
    ctx_unref(ctx);
    return NULL;
}

static void go_example(void)
{
    pthread_t threads[NWAITERS];
    int results[NWAITERS];

    for (int i = 0; i < NWAITERS; i++) {
        int rc = pthread_create(&threads[i], NULL, timed_waiter, &results[i]);
        if (rc != 0)
            fail("pthread_create", rc);
    }
    /* wg.Wait() */
    for (int i = 0; i < NWAITERS; i++) {
        int rc = pthread_join(threads[i], NULL);
        if (rc != 0)
            fail("pthread_join", rc);
        if (results[i] != CTX_DEADLINE_EXCEEDED)
            fail("a waiter ended without its deadline", results[i]);
    }
}

/* The extra part: a waiter on `ready` and a waiter on `never`, each with
 * its own context. */
struct waiter {
    ctx_t *ctx; /* borrowed from main */
    bool (*condition_met)(void);
    int result;
    pthread_t thread;
};

static void *waiter(void *arg)
{
    struct waiter *w = arg;

    pthread_mutex_lock(&mu);
    w->result = wait_on_cond(w->ctx, w->condition_met);
    if (w->result == 0)
        printf("condition met\n");
    else
        print_err(w->result);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void extra(void)
{
    printf("-- extra (not in Go's example): a condition that comes true, a cancel by hand --\n");

    /* Both contexts have a deadline far enough away that it never fires
     * here: what ends each wait is the condition or the cancel. */
    ctx_cancel_t *cancel;
    ctx_t *ctx_ready = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    ctx_t *ctx_never = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, &cancel);
    if (ctx_ready == NULL || ctx_never == NULL)
        fail("ctx_with_timeout", errno);

    struct waiter a = { .ctx = ctx_ready, .condition_met = is_ready };
    struct waiter b = { .ctx = ctx_never, .condition_met = never };
    int rc = pthread_create(&a.thread, NULL, waiter, &a);
    if (rc == 0)
        rc = pthread_create(&b.thread, NULL, waiter, &b);
    if (rc != 0)
        fail("pthread_create", rc);

    /* Make the condition true.  The broadcast wakes both waiters; b finds
     * its own condition still false and waits again. */
    ctx_sleep(ctx_background(), 20 * CTX_MILLISECOND);
    pthread_mutex_lock(&mu);
    ready = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&mu);
    rc = pthread_join(a.thread, NULL);
    if (rc != 0)
        fail("pthread_join", rc);

    /* Cancel b's context, with mu NOT held. */
    ctx_cancel(cancel);
    rc = pthread_join(b.thread, NULL);
    if (rc != 0)
        fail("pthread_join", rc);

    if (a.result != 0)
        fail("the waiter on a true condition", a.result);
    if (b.result != CTX_CANCELED)
        fail("the cancelled waiter", b.result);
    ctx_unref(ctx_ready);
    ctx_unref(ctx_never);
}

int main(void)
{
    go_example();
    extra();
    return 0;
}
