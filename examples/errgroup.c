/* SPDX-License-Identifier: MIT */

/*
 * errgroup: fan work out, and stop every sibling at the first failure.
 *
 * Go's golang.org/x/sync/errgroup:
 *
 *     g, ctx := errgroup.WithContext(context.Background())
 *     for i, replica := range replicas {
 *         g.Go(func() error { return fetch(ctx, replica) })
 *     }
 *     err := g.Wait() // the first error; ctx was cancelled with it
 *
 * Five replicas are asked for the same record.  Replica 2 refuses at once;
 * the group's context is cancelled with that error as its cause, so the
 * two slow fetches already running stop early instead of running their
 * full 30 s.  The tasks run on the library's thread pool, at most 3 at a
 * time here, so the last two wait for a slot; a slot frees only when a
 * fetch ends, and none ends before the refusal, so by then the group has
 * failed and they are not started at all (Go would start them and leave
 * the check to the task).  (Were an earlier replica the one to refuse, a
 * later one might or might not have been handed over before the failure:
 * the output would depend on timing.)
 *
 *     $ ./errgroup
 *     replica 0: stopped (Connection refused)
 *     replica 1: stopped (Connection refused)
 *     replica 2: refused (the failure)
 *     ...
 *     group: Connection refused
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>
#include <string.h>

#define N 5

static const char *outcome[N];

static int fetch(ctx_t *ctx, void *arg)
{
    int i = (int)(long)arg;
    if (i == 2) {
        outcome[i] = "refused";
        return ECONNREFUSED;
    }
    /* The slow part: 30 s, unless the group ends first. */
    if (ctx_sleep(ctx, 30 * CTX_SECOND) != 0) {
        outcome[i] = "stopped";
        return ctx_err(ctx);
    }
    outcome[i] = "fetched";
    return 0;
}

int main(void)
{
    ctx_t *ctx;
    ctx_group_t *g = ctx_group_new(ctx_background(), &ctx);
    if (g == NULL) {
        perror("ctx_group_new");
        return 1;
    }
    ctx_group_set_limit(g, 3);
    for (long i = 0; i < N; i++) {
        int e = ctx_group_go(g, fetch, (void *)i);
        if (e != 0) /* the group already failed: the task was not started */
            outcome[i] = "not started";
    }
    const char *msg;
    int err = ctx_group_wait(g, &msg);

    const char *why;
    ctx_cause(ctx, &why);
    for (int i = 0; i < N; i++)
        printf("replica %d: %s (%s)\n", i, outcome[i], i == 2 ? "the failure" : why);
    printf("group: %s\n", err != 0 ? msg : "ok");
    ctx_unref(ctx);
    return err == ECONNREFUSED ? 0 : 1;
}
