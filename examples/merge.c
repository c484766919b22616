/* SPDX-License-Identifier: MIT */

/*
 * merge: a request that ends when the client gives up OR the server shuts
 * down, whichever comes first.
 *
 * Go has no direct way to say this (one uses context.AfterFunc to stitch two
 * contexts together); .NET has CancellationTokenSource.CreateLinkedTokenSource
 * and folly has CancellationToken::merge.  ctx_merge makes one context with
 * both parents: it is done with the first parent's err and cause, carries
 * the earliest deadline, and sees both parents' values.  When it ends or is
 * freed it leaves both parents, so a long-lived server context never
 * accumulates dead requests.
 *
 *     $ ./merge
 *     request: deadline in 10s, user alice
 *     request ended: context canceled (server shutting down)
 *     cancelled at merge.c:NN (main)
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>
#include <string.h>

static const ctx_key_t user = { .name = "user" };

int main(void)
{
    /* Lives as long as the server. */
    ctx_cancel_t *shutdown;
    ctx_t *server = ctx_with_cancel(ctx_background(), &shutdown);

    /* What the client sent: a 10 s budget and who it is. */
    ctx_t *client_budget = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    ctx_t *client = ctx_with_value(client_budget, &user, "alice", NULL);

    ctx_t *parents[] = { client, server };
    ctx_t *request = ctx_merge(parents, 2, NULL);
    if (request == NULL) {
        perror("ctx_merge");
        return 1;
    }
    ctx_time_t dl;
    if (ctx_deadline(request, &dl))
        printf("request: deadline in %llds, user %s\n",
               (long long)((dl - ctx_now() + CTX_SECOND / 2) / CTX_SECOND),
               (const char *)ctx_value(request, &user));

    /* The server shuts down while the request runs. */
    ctx_cancel_cause(shutdown, ESHUTDOWN, "server shutting down");

    const char *why;
    ctx_cause(request, &why);
    printf("request ended: %s (%s)\n", ctx_strerror(ctx_err(request)), why);
    const char *file, *func;
    int line;
    if (ctx_cancel_site(request, &file, &line, &func)) {
        const char *base = strrchr(file, '/');
        printf("cancelled at %s:%d (%s)\n", base != NULL ? base + 1 : file, line, func);
    }

    ctx_unref(request);
    ctx_unref(client);
    ctx_unref(client_budget);
    ctx_unref(server);
    return 0;
}
