/*
 * The clock and deadline lookup.
 */
#include "internal.h"

ctx_time_t ctx_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ctx_time_t)ts.tv_sec * CTX_SECOND + ts.tv_nsec;
}

bool ctx_deadline(ctx_t *c, ctx_time_t *deadline)
{
    /* A timer node's deadline is already the earliest of its chain (a later
     * one would have made a plain cancel node), so the nearest wins. */
    for (; c != NULL; c = ctx__parent(c)) {
        switch (ctx__kind(c)) {
        case CTX__TIMER:
            if (deadline != NULL)
                *deadline = ((struct ctx__timer *)c)->deadline;
            return true;
        case CTX__ROOT:
        case CTX__WITHOUT:
            return false;
        default:
            break;
        }
    }
    return false;
}
