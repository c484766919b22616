/* SPDX-License-Identifier: MIT */

/*
 * dump: what is alive under a server right now, and why it ended.
 *
 * Go cannot list live contexts.  With tracking on (ctx_track(true) here, or
 * CTX_TRACK=1 in the environment) the library records where and when each
 * context was made, and ctx_dump writes the live subtree: one context a
 * line, its values (through the key's format), age, time left, err and
 * cause, creation and cancel sites, waiters, done fds and callbacks.
 *
 * The tree: a server context with two requests in flight, each with a
 * request id and a deadline; one request runs a database query with its
 * own shorter deadline, a thread waiting on it and an AfterFunc; the other
 * was cancelled because the client went away.
 *
 *     $ ./dump
 *     context.Background.WithCancel  age=...  created=dump.c:NN (main)
 *       .WithValue(request-id, 17)  age=...
 *         .WithDeadline(... [4.99s])  age=...  left=4.999s ...
 *           .WithDeadline(... [1.99s])  age=...  left=1.999s ...  waiters  callbacks=1
 *       ...
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t format_id(const void *value, char *buf, size_t size)
{
    return (size_t)snprintf(buf, size, "%d", *(const int *)value);
}

static const ctx_key_t request_id = { .name = "request-id", .format = format_id };

static void *waiter(void *arg)
{
    ctx_wait(arg, CTX_FOREVER); /* a worker blocked on the query */
    return NULL;
}

static void on_done(void *arg)
{
    (void)arg;
}

int main(void)
{
    ctx_track(true);
    static int id1 = 17, id2 = 18;
    ctx_cancel_t *stop_server;
    ctx_t *server = ctx_with_cancel(ctx_background(), &stop_server);

    ctx_t *r1 = ctx_with_value(server, &request_id, &id1, NULL);
    ctx_t *r1_budget = ctx_with_timeout(r1, 5 * CTX_SECOND, NULL);
    ctx_cancel_t *stop_query;
    ctx_t *query = ctx_with_timeout(r1_budget, 2 * CTX_SECOND, &stop_query);
    ctx_after_t *cb;
    ctx_after_func(query, on_done, NULL, &cb);
    pthread_t t;
    pthread_create(&t, NULL, waiter, query);

    ctx_t *r2 = ctx_with_value(server, &request_id, &id2, NULL);
    ctx_cancel_t *client_gone;
    ctx_t *r2_budget = ctx_with_timeout(r2, 5 * CTX_SECOND, &client_gone);
    ctx_cancel_cause(client_gone, ECONNRESET, "client disconnected");

    /* Let the waiter park, so that the dump shows it: the dump itself
     * says so ("waiters"), so look until it does (a few ms). */
    for (int i = 0; i < 5000; i++) {
        char *text = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&text, &len);
        ctx_dump(query, f);
        fclose(f);
        int parked = strstr(text, "waiters") != NULL;
        free(text);
        if (parked)
            break;
        struct timespec ms = { 0, 1000000 };
        nanosleep(&ms, NULL);
    }

    printf("== live under the server ==\n");
    ctx_dump(server, stdout);
    printf("== the cancelled request ==\n");
    ctx_dump(r2_budget, stdout);

    ctx_cancel(stop_server);
    pthread_join(t, NULL);
    ctx_after_stop(cb);
    ctx_unref(query);
    ctx_unref(r1_budget);
    ctx_unref(r1);
    ctx_unref(r2_budget);
    ctx_unref(r2);
    ctx_unref(server);
    return 0;
}
