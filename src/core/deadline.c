/* SPDX-License-Identifier: MIT */

/*
 * Deadline contexts: a cancel node with a deadline, armed in the timer
 * structures (timer.c) and cancelled with CTX_DEADLINE_EXCEEDED when the
 * timer thread, or the manual clock, reaches it.  A deadline no earlier
 * than the parent's makes a plain cancel node: the parent's comes first.
 */
#include "internal.h"

#include <errno.h>

/* now is ctx_now() when the caller already read it, else NOT_READ. */
#define NOT_READ INT64_MIN

static ctx_t *with_deadline(ctx_t *parent, ctx_time_t d, ctx_time_t now, int cause,
                            const char *text, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    /* The parent's deadline, as ctx_deadline() finds it. */
    struct ctx__timer *src = ctx__dlsrc(parent);
    if (src != NULL && src->deadline <= d)
        return ctx_with_cancel(parent, cancel); /* the parent's comes first */

    if (now == NOT_READ)
        now = ctx__now();
    int past = d <= now;
    unsigned shard;
    int e = ctx__timer_prepare(!past, &shard);
    if (e != 0) {
        errno = e;
        return NULL;
    }
    struct ctx__timer *t;
    if ((cancel != NULL && ctx__handle_reserve() != 0) ||
        (t = ctx__node_alloc(sizeof *t)) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    t->deadline = d;
    t->wheel.next = NULL;
    t->wheel.pprev = NULL;
    t->level = 0;
    t->slot = 0;
    /* The deadline's cause waits in the node's own cause fields until the
     * node is done (see mark() in tree.c). */
    t->base.u.c.cause = cause;
    t->base.u.c.msg = NULL;
    if (text != NULL && (t->base.u.c.msg = ctx__msg_new(text)) == NULL) {
        ctx__node_free(t, sizeof *t);
        errno = ENOMEM;
        return NULL;
    }
    t->shard = (uint8_t)shard;
    ctx__init_cancel(&t->base, parent, CTX__TIMER);
    if (past)
        ctx__cancel_deadline(t, NULL);
    else
        ctx__timer_insert(t, now);
    if (cancel != NULL)
        *cancel = ctx__handle_bind(&t->base);
    return &t->base;
}

ctx_t *ctx_with_deadline(ctx_t *parent, ctx_time_t deadline, ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, NOT_READ, 0, NULL, cancel);
}

ctx_t *ctx_with_timeout(ctx_t *parent, ctx_duration_t timeout, ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx__now();
    return with_deadline(parent, ctx__add_sat(now, timeout), now, 0, NULL, cancel);
}

ctx_t *ctx_with_deadline_cause(ctx_t *parent, ctx_time_t deadline, int cause, const char *msg,
                               ctx_cancel_t **cancel)
{
    return with_deadline(parent, deadline, NOT_READ, cause, msg, cancel);
}

ctx_t *ctx_with_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause, const char *msg,
                              ctx_cancel_t **cancel)
{
    ctx_time_t now = ctx__now();
    return with_deadline(parent, ctx__add_sat(now, timeout), now, cause, msg, cancel);
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
