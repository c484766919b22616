/* SPDX-License-Identifier: MIT */

/*
 * cancel_deep: cancelling a context cancels everything derived from it, and
 * nothing above or beside it.
 *
 * This is the Go tutorial program ContextCancelDeep, line for line.  It builds
 * this tree under context.Background():
 *
 *     ctxOne
 *       |     \
 *     ctxTwo   ctxThree
 *       |
 *     ctxFour
 *
 * cancels ctxOne, and starts four threads that each wait for one of the four
 * contexts to be done.  Every wait ends, because cancelling ctxOne cancelled
 * its whole subtree.  The Go program prints the four lines in whatever order
 * the goroutines happen to run; here main joins the threads in a fixed order
 * and prints for them, so the output is the same on every run:
 *
 *     one cancel
 *     two cancel
 *     three cancel
 *     four cancel
 *
 * The tutorial then makes a second point in prose, which this program also shows
 * (the lines after "-- extra"): on a fresh tree, cancelling ctxTwo cancels
 * ctxTwo and ctxFour only; ctxOne and ctxThree stay live.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Examples stop at the first failure: print why and exit non-zero. */
static void fail(const char *what, int err)
{
    fprintf(stderr, "cancel_deep: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* A ctx_with_cancel that treats NULL as fatal.  errno says why it failed. */
static ctx_t *with_cancel(ctx_t *parent, ctx_cancel_t **cancel)
{
    ctx_t *ctx = ctx_with_cancel(parent, cancel);
    if (ctx == NULL)
        fail("ctx_with_cancel", errno);
    return ctx;
}

/* One waiting thread: the Go goroutine
 *
 *     go func() { defer wg.Done(); select { case <-ctxOne.Done(): ... } }()
 *
 * C has no channels, so "<-ctx.Done()" becomes ctx_wait(ctx, CTX_FOREVER),
 * which blocks until ctx is done and returns its error. */
struct waiter {
    const char *name; /* "one", "two", ... */
    ctx_t *ctx;       /* borrowed: main holds the reference until after join */
    int err;          /* what ctx_wait returned */
    pthread_t thread;
};

static void *wait_for_done(void *arg)
{
    struct waiter *w = arg;

    w->err = ctx_wait(w->ctx, CTX_FOREVER);
    return NULL;
}

/* Part 1: the Go program. */
static void cancel_the_root(void)
{
    ctx_cancel_t *cancel;

    /* ctxOne, cancel := context.WithCancel(context.Background())
     * ctx_background() is a static root: it needs no unref. */
    ctx_t *one = with_cancel(ctx_background(), &cancel);

    /* ctxTwo, _ := context.WithCancel(ctxOne) and so on.  Go throws the
     * children's cancel functions away with "_"; in C, pass NULL.  Each child
     * holds its own reference to its parent. */
    ctx_t *two = with_cancel(one, NULL);
    ctx_t *three = with_cancel(one, NULL);
    ctx_t *four = with_cancel(two, NULL);

    /* cancel()
     * Synchronous: when ctx_cancel returns, ctxOne and all three descendants
     * are already done. */
    ctx_cancel(cancel);

    /* wg.Add(4); go func() { ... }() four times */
    struct waiter waiters[] = {
        { .name = "one", .ctx = one },
        { .name = "two", .ctx = two },
        { .name = "three", .ctx = three },
        { .name = "four", .ctx = four },
    };
    size_t n = sizeof waiters / sizeof waiters[0];
    for (size_t i = 0; i < n; i++) {
        int rc = pthread_create(&waiters[i].thread, NULL, wait_for_done, &waiters[i]);
        if (rc != 0)
            fail("pthread_create", rc);
    }

    /* wg.Wait(), then print for each thread in a fixed order:
     * fmt.Println("one cancel") ... */
    for (size_t i = 0; i < n; i++) {
        int rc = pthread_join(waiters[i].thread, NULL);
        if (rc != 0)
            fail("pthread_join", rc);
        if (waiters[i].err != CTX_CANCELED) {
            fprintf(stderr, "cancel_deep: FAIL: ctx%s: ctx_wait returned %d\n", waiters[i].name,
                    waiters[i].err);
            exit(EXIT_FAILURE);
        }
        printf("%s cancel\n", waiters[i].name);
    }

    /* Go's garbage collector frees the contexts; in C each reference is
     * dropped once.  Order does not matter: a child keeps its parent alive. */
    ctx_unref(one);
    ctx_unref(two);
    ctx_unref(three);
    ctx_unref(four);
}

/* Prints "ctxTwo: done (context canceled)" or "ctxOne: live".  ctx_err is
 * Go's ctx.Err(): 0 while live, else why the context is done.  It does not
 * block, so it is also Go's
 *     select { case <-ctx.Done(): ...; default: ... } */
static void show(const char *name, ctx_t *ctx)
{
    int err = ctx_err(ctx);

    if (err == 0)
        printf("ctx%s: live\n", name);
    else
        printf("ctx%s: done (%s)\n", name, ctx_strerror(err));
}

/* Part 2: the tutorial's second point, "if another cancel is called, e.g.
 * ctxTwo's, ctxOne and ctxThree receive no signal". */
static void cancel_a_subtree(void)
{
    ctx_cancel_t *cancel_one;
    ctx_cancel_t *cancel_two;

    printf("-- extra (not in the Go program): a fresh tree, cancel ctxTwo only --\n");

    ctx_t *one = with_cancel(ctx_background(), &cancel_one);
    ctx_t *two = with_cancel(one, &cancel_two);
    ctx_t *three = with_cancel(one, NULL);
    ctx_t *four = with_cancel(two, NULL);

    /* Go: cancelTwo() */
    ctx_cancel(cancel_two);

    show("One", one);
    show("Two", two);
    show("Three", three);
    show("Four", four);

    int ok = ctx_err(one) == 0 && ctx_err(three) == 0 && ctx_err(two) == CTX_CANCELED &&
             ctx_err(four) == CTX_CANCELED;

    /* Cancelling ctxOne is not needed to free anything (dropping the last
     * reference does that), but it is what a Go program's "defer cancel()"
     * would do, so do it here too. */
    ctx_cancel(cancel_one);

    ctx_unref(four);
    ctx_unref(three);
    ctx_unref(two);
    ctx_unref(one);

    if (!ok) {
        fprintf(stderr, "cancel_deep: FAIL: cancelling ctxTwo reached the wrong contexts\n");
        exit(EXIT_FAILURE);
    }
}

int main(void)
{
    cancel_the_root();
    cancel_a_subtree();
    return 0;
}
