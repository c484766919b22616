/* SPDX-License-Identifier: MIT */

#include <ctx.h>
#include <pthread.h>
#include <stdio.h>

static const ctx_key_t request_id = { .name = "request-id" };

static void *worker(void *arg)
{
    ctx_t *ctx = arg;

    while (ctx_err(ctx) == 0) {               /* Go: select { case <-ctx.Done(): ...; default: } */
        ctx_sleep(ctx, 10 * CTX_MILLISECOND); /* one small piece of work; a cancel cuts it short */
    }
    printf("request %s: %s\n", (char *)ctx_value(ctx, &request_id), ctx_strerror(ctx_err(ctx)));
    return NULL;
}

int main(void)
{
    ctx_cancel_t *cancel;
    ctx_t *req = ctx_with_value(ctx_background(), &request_id, "42", NULL);
    ctx_t *ctx = ctx_with_cancel(req, &cancel);
    ctx_unref(req); /* ctx holds its parent; main only needs ctx from here on */

    pthread_t thread;
    pthread_create(&thread, NULL, worker, ctx);
    ctx_sleep(ctx_background(), 100 * CTX_MILLISECOND); /* background is never done */
    ctx_cancel(cancel); /* returns when ctx and everything below it are done */
    pthread_join(thread, NULL);
    ctx_unref(ctx); /* the last reference: frees ctx, then req */
    return 0;
}
