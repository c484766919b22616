/* SPDX-License-Identifier: MIT */

/*
 * cancel_call: one cancel stops a whole group of threads.
 *
 * This is the Go tutorial program ContextCancelCall.  main starts four
 * workers that share one cancellable context.  Each worker loops: if the
 * context is done it prints "Cancel" and returns, otherwise it prints its
 * number (indented by two spaces per number) and rests for 300 ms.  After
 * 2 s main cancels the context, prints "main Cancel" and waits for the
 * workers.  The output looks like this (the order of the lines varies from
 * run to run, as it does in Go):
 *
 *      0
 *        1
 *          2
 *            3
 *     ...         (seven rounds, one every 300 ms)
 *     main Cancel
 *     Cancel
 *     Cancel
 *     Cancel
 *     Cancel
 *
 * One thing is better than in Go.  A Go worker rests with time.Sleep, which
 * no cancel can interrupt, so the Go program needs up to 300 ms after
 * cancel() before the last worker notices.  Here a worker rests with
 * ctx_sleep(ctx, 300 ms), which returns as soon as ctx is done, so every
 * worker stops at once.  (That is also why a worker's "Cancel" may come out
 * before main's "main Cancel": in Go the workers are still asleep then.)
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NWORKERS 4

static void fail(const char *what, int err)
{
    fprintf(stderr, "cancel_call: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* What each worker gets: Go's go func(c context.Context, n int) {...}(ctx, i) */
struct worker {
    ctx_t *c; /* borrowed: main holds the reference until after the join */
    int n;    /* 0 .. 3 */
    int seen; /* the error the worker saw when it stopped */
    pthread_t thread;
};

static void *work(void *arg)
{
    struct worker *w = arg;

    for (;;) {
        /* select {
         * case <-c.Done():
         *     fmt.Println("Cancel")
         *     return
         * default:
         * }
         * A select with a default never blocks: that is ctx_err, a single
         * atomic load that is 0 while the context is live. */
        int err = ctx_err(w->c);
        if (err != 0) {
            w->seen = err;
            printf("Cancel\n");
            return NULL;
        }

        /* fmt.Println(strings.Repeat("  ", n), n): Println puts a space
         * between its operands, so worker 0 prints " 0", worker 1 "   1". */
        printf("%*s %d\n", 2 * w->n, "", w->n);

        /* time.Sleep(300 * time.Millisecond), except that ctx_sleep wakes
         * up as soon as c is done (it then returns ctx_err(c)); the check
         * at the top of the loop sees the cancel right away. */
        ctx_sleep(w->c, 300 * CTX_MILLISECOND);
    }
}

int main(void)
{
    ctx_cancel_t *cancel;

    /* ctx, cancel := context.WithCancel(context.Background()) */
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    if (ctx == NULL)
        fail("ctx_with_cancel", errno);

    /* wg.Add(4); for i := 0; i < 4; i++ { go func(c context.Context, n int) {...}(ctx, i) } */
    struct worker workers[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) {
        workers[i] = (struct worker){ .c = ctx, .n = i };
        int rc = pthread_create(&workers[i].thread, NULL, work, &workers[i]);
        if (rc != 0)
            fail("pthread_create", rc);
    }

    /* select { case <-time.NewTimer(2 * time.Second).C: cancel() }
     *
     * The background context is never done, so ctx_sleep on it is a plain
     * 2-second sleep: Go's timer.  (A context made with
     * ctx_with_timeout(ctx_background(), 2 * CTX_SECOND, NULL) and waited
     * on with ctx_wait would do the same; the sleep is shorter to write and
     * keeps the hand-made cancel below, which is what this program shows.) */
    ctx_sleep(ctx_background(), 2 * CTX_SECOND);
    ctx_cancel(cancel);

    /* select { case <-ctx.Done(): fmt.Println("main Cancel") }
     * ctx_cancel is synchronous, so this wait returns at once. */
    if (ctx_wait(ctx, CTX_FOREVER) != CTX_CANCELED)
        fail("ctx_wait", ctx_err(ctx));
    printf("main Cancel\n");

    /* wg.Wait() */
    for (int i = 0; i < NWORKERS; i++) {
        int rc = pthread_join(workers[i].thread, NULL);
        if (rc != 0)
            fail("pthread_join", rc);
        if (workers[i].seen != CTX_CANCELED)
            fail("a worker stopped without seeing the cancel", workers[i].seen);
    }

    /* Go's garbage collector frees ctx; in C main drops its reference. */
    ctx_unref(ctx);
    return 0;
}
