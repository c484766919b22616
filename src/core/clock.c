/* SPDX-License-Identifier: MIT */

/*
 * The clock: CLOCK_MONOTONIC, or the manual clock a test sets in force
 * (ctx_clock_manual in timer.c, which drives the timers with it).
 *
 * ctx_now() reads the mode and the manual time with relaxed loads: the
 * test that drives the manual clock orders its changes with its own
 * synchronization, and a reader on the real clock pays one load.
 */
#include "internal.h"

#include <time.h>

struct ctx__clock ctx__clock;

static ctx_time_t real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ctx_time_t)ts.tv_sec * CTX_SECOND + ts.tv_nsec;
}

ctx_time_t ctx_now(void)
{
    /* Relaxed: the mode and the manual time are set by the test driving the
     * clock, which orders them with its own synchronization. */
    if (atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed))
        return atomic_load_explicit(&ctx__clock.mnow, memory_order_relaxed);
    return real_now();
}

ctx_time_t ctx__real_now(void)
{
    return real_now();
}

int ctx__clock_is_manual(void)
{
    return atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed);
}

ctx_time_t ctx_time_from_wall(const struct timespec *wall)
{
    if (wall == NULL)
        return ctx_now();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    /* Seconds first, in unsigned arithmetic (the difference of two time_t
     * can overflow int64_t), so that a far-away instant saturates. */
    const uint64_t lim = INT64_MAX / CTX_SECOND - 1;
    int64_t ws = (int64_t)wall->tv_sec, rs = (int64_t)rt.tv_sec, ds;
    if (ws >= rs) {
        uint64_t diff = (uint64_t)ws - (uint64_t)rs;
        if (diff > lim)
            return INT64_MAX;
        ds = (int64_t)diff;
    } else {
        uint64_t diff = (uint64_t)rs - (uint64_t)ws;
        if (diff > lim)
            return INT64_MIN;
        ds = -(int64_t)diff;
    }
    ctx_duration_t d = ds * CTX_SECOND + ((int64_t)wall->tv_nsec - rt.tv_nsec);
    return ctx__add_sat(ctx_now(), d);
}
