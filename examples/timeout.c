/* SPDX-License-Identifier: MIT */

/*
 * timeout: give a piece of work a time budget.
 *
 * This is the Go tutorial's demo of context.WithTimeout:
 *
 *     ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second)
 *     defer cancel()
 *     select {
 *     case <-time.After(2 * time.Second):
 *         fmt.Println("任务完成")           // the work finished
 *     case <-ctx.Done():
 *         fmt.Println("任务超时:", ctx.Err()) // the work timed out
 *     }
 *
 * The work takes 2 s and the budget is 1 s, so after one second it prints
 *
 *     任务超时: context deadline exceeded
 *
 * The select between "the work is done" and "ctx is done" is ctx_sleep: it
 * returns 0 when the whole 2 s passed first, and ctx_err(ctx) as soon as ctx
 * is done.  The program then shows ctx_cause (Go's context.Cause) on the
 * timed-out context, and the same with ctx_with_timeout_cause, which lets
 * the deadline carry a reason of its own.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fail(const char *what, int err)
{
    fprintf(stderr, "timeout: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* Go: fmt.Println("Cause:", context.Cause(ctx)).  ctx_cause returns the
 * cause code and points msg at its text. */
static int print_cause(ctx_t *ctx)
{
    const char *msg;
    int cause = ctx_cause(ctx, &msg);
    printf("Cause: %s\n", msg);
    return cause;
}

int main(void)
{
    ctx_cancel_t *cancel;

    /* ctx, cancel := context.WithTimeout(context.Background(), 1*time.Second) */
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 1 * CTX_SECOND, &cancel);
    if (ctx == NULL)
        fail("ctx_with_timeout", errno);

    /* select {
     * case <-time.After(2 * time.Second): fmt.Println("任务完成")
     * case <-ctx.Done():                  fmt.Println("任务超时:", ctx.Err())
     * } */
    int err = ctx_sleep(ctx, 2 * CTX_SECOND);
    if (err == 0)
        printf("任务完成\n");
    else
        printf("任务超时: %s\n", ctx_strerror(err));
    if (err != CTX_DEADLINE_EXCEEDED)
        fail("the 1 s deadline did not end the 2 s of work", err);

    /* No cause was given, so the cause is the error itself. */
    if (print_cause(ctx) != CTX_DEADLINE_EXCEEDED)
        fail("ctx_cause", ctx_cause(ctx, NULL));

    /* defer cancel(): cancelling a context that is already done changes
     * nothing; it stays "deadline exceeded".  (Unlike in Go, forgetting it
     * would not leak: ctx_unref frees the context and stops its timer.) */
    ctx_cancel(cancel);
    if (ctx_err(ctx) != CTX_DEADLINE_EXCEEDED)
        fail("a late cancel changed the error", ctx_err(ctx));
    ctx_unref(ctx);

    /* Go 1.21: context.WithTimeoutCause(ctx, d, errors.New("...")).  Err is
     * still "deadline exceeded"; Cause says why.  A short timeout keeps the
     * program quick. */
    ctx = ctx_with_timeout_cause(ctx_background(), 100 * CTX_MILLISECOND, EBUSY,
                                 "order service busy: no reply within 100 ms", NULL);
    if (ctx == NULL)
        fail("ctx_with_timeout_cause", errno);
    err = ctx_wait(ctx, CTX_FOREVER); /* Go: <-ctx.Done(); err := ctx.Err() */
    printf("Err: %s\n", ctx_strerror(err));
    if (err != CTX_DEADLINE_EXCEEDED)
        fail("ctx_wait", err);
    if (print_cause(ctx) != EBUSY)
        fail("ctx_cause", ctx_cause(ctx, NULL));
    ctx_unref(ctx);
    return 0;
}
