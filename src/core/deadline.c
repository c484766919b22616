/* SPDX-License-Identifier: MIT */

/*
 * Deadline contexts: a cancel node with a deadline, armed in the timer
 * structures (timer.c) and cancelled with CTX_DEADLINE_EXCEEDED when the
 * timer thread, or the manual clock, reaches it.  A deadline no earlier
 * than the parent's makes a plain cancel node: the parent's comes first.
 */
#include "internal.h"

ctx_t *ctx_with_deadline(ctx_t *parent, ctx_time_t deadline, ctx_cancel_t **cancel)
{
    return ctx__timer_new(parent, deadline, CTX__NOT_READ, 0, NULL, cancel);
}

ctx_t *ctx_with_timeout(ctx_t *parent, ctx_duration_t timeout, ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx__now();
    return ctx__timer_new(parent, ctx__add_sat(now, timeout), now, 0, NULL, cancel);
}

ctx_t *ctx_with_deadline_cause(ctx_t *parent, ctx_time_t deadline, int cause, const char *msg,
                               ctx_cancel_t **cancel)
{
    return ctx__timer_new(parent, deadline, CTX__NOT_READ, cause, msg, cancel);
}

ctx_t *ctx_with_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                              ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx__now();
    return ctx__timer_new(parent, ctx__add_sat(now, timeout), now, cause, msg, cancel);
}

bool ctx_deadline(ctx_t *c, ctx_time_t *deadline)
{
    if (c == NULL)
        return false;
    /* Every cancel node records its nearest timer ancestor-or-self, whose
     * deadline is the earliest of the chain (a later one would have made a
     * plain cancel node instead). */
    struct ctx__timer *t = ctx__dlsrc(c);
    if (t == NULL)
        return false;
    if (deadline != NULL)
        *deadline = t->deadline;
    return true;
}
