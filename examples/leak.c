/* SPDX-License-Identifier: MIT */

/*
 * leak: which contexts are still alive when the program exits, and who made
 * them.
 *
 * Run with CTX_TRACK=1 in the environment:
 *
 *     $ CTX_TRACK=1 ./leak
 *     handled 3 requests
 *     libctx: 2 contexts still alive at exit:
 *     context.Background.WithTimeout...  age=...  created=leak.c:NN (handle)
 *       .WithValue(request-id, 2)  age=...  created=leak.c:NN (handle)
 *
 * handle() forgets to drop its context when a request fails.  Forgetting
 * costs no more than memory in libctx (the parent never holds a dead child),
 * but the report says exactly which line leaked.  The exit status is the
 * program's own.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>

static size_t format_id(const void *value, char *buf, size_t size)
{
    return (size_t)snprintf(buf, size, "%d", *(const int *)value);
}

static const ctx_key_t request_id = { .name = "request-id", .format = format_id };

static int handle(const int *id)
{
    ctx_t *budget = ctx_with_timeout(ctx_background(), CTX_MINUTE, NULL);
    ctx_t *ctx = ctx_with_value(budget, &request_id, (void *)id, NULL);
    ctx_unref(budget); /* ctx holds it */
    if (*id == 2)
        return -1; /* the bug: an early return that forgets ctx_unref(ctx) */
    ctx_unref(ctx);
    return 0;
}

int main(void)
{
    static const int ids[] = { 1, 2, 3 };
    for (int i = 0; i < 3; i++)
        handle(&ids[i]);
    printf("handled 3 requests\n");
    return 0;
}
