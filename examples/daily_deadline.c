/* SPDX-License-Identifier: MIT */

/*
 * daily_deadline: a deadline at a time of day ("cancel at 20:30").
 *
 * The Go tutorial's snippet:
 *
 *     // cancel every day at 20:30
 *     curr := time.Now()
 *     t := time.Date(curr.Year(), curr.Month(), curr.Day(), 20, 30, 0, 0, time.Local)
 *     ctx, cancel := context.WithDeadline(context.Background(), t)
 *
 * In C, mktime plays time.Date: it turns today's date with the hour set to
 * 20:30 into a time_t in local time.  Deadlines in libctx are instants on
 * the monotonic clock (ctx_now()), which no NTP step or manual clock change
 * can move; ctx_time_from_wall converts a wall-clock instant to one.
 *
 * What the snippet does depends on the time of day.  Before 20:30 the
 * context is live and is cancelled at 20:30.  After 20:30 the deadline is in
 * the past, and a context whose deadline has passed is done at birth with
 * "context deadline exceeded" (so is Go's).  The program prints which case
 * it is in, then the next 20:30 (tomorrow's, once today's has passed), which
 * is what a job that really runs every day needs.
 *
 * Waiting until 20:30 would make a poor demo, so the program then does the
 * same with a wall-clock instant 1.5 s from now and waits for it to fire.
 * The last line is the same at any time of day:
 *
 *       it fired: context deadline exceeded
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void fail(const char *what, int err)
{
    fprintf(stderr, "daily_deadline: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* time.Date(y, m, d, 20, 30, 0, 0, time.Local) for the day `days` after
 * today.  mktime normalizes a day past the end of the month, and
 * tm_isdst = -1 lets it decide whether summer time is in force then. */
static time_t at_2030(time_t now, int days)
{
    struct tm tm;
    if (localtime_r(&now, &tm) == NULL)
        fail("localtime_r", errno);
    tm.tm_mday += days;
    tm.tm_hour = 20;
    tm.tm_min = 30;
    tm.tm_sec = 0;
    tm.tm_isdst = -1;
    time_t t = mktime(&tm);
    if (t == (time_t)-1)
        fail("mktime", EOVERFLOW);
    return t;
}

/* "2026-11-22 20:30:00 CET" */
static const char *local_text(time_t t, char *buf, size_t size)
{
    struct tm tm;
    if (localtime_r(&t, &tm) == NULL || strftime(buf, size, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
        fail("localtime_r", errno);
    return buf;
}

/* Go: context.WithDeadline(context.Background(), t) for a wall-clock t. */
static ctx_t *with_wall_deadline(const struct timespec *wall, ctx_cancel_t **cancel)
{
    ctx_t *ctx = ctx_with_deadline(ctx_background(), ctx_time_from_wall(wall), cancel);
    if (ctx == NULL)
        fail("ctx_with_deadline", errno);
    return ctx;
}

/* Part 1: the tutorial's snippet, as it behaves at this time of day. */
static void today_at_2030(void)
{
    char buf[64];
    time_t now = time(NULL);
    time_t today = at_2030(now, 0);
    ctx_cancel_t *cancel;

    struct timespec wall = { .tv_sec = today, .tv_nsec = 0 };
    ctx_t *ctx = with_wall_deadline(&wall, &cancel);

    printf("today's 20:30 is %s\n", local_text(today, buf, sizeof buf));
    int err = ctx_err(ctx); /* Go: ctx.Err() */
    if (err == 0) {
        ctx_time_t deadline;
        ctx_deadline(ctx, &deadline); /* Go: ctx.Deadline() */
        long long minutes = (deadline - ctx_now()) / CTX_MINUTE;
        printf("  it is still ahead: the context is live, and is cancelled in %lldh%02lldm\n",
               minutes / 60, minutes % 60);
    } else {
        printf("  it has passed: the context is done at birth (%s)\n", ctx_strerror(err));
    }

    /* The outcome must match the clock: done if 20:30 had passed before the
     * context was made, live if it is more than a few seconds away. */
    if (today <= now && err != CTX_DEADLINE_EXCEEDED)
        fail("a deadline in the past gave a live context", err);
    if (today > now + 5 && err != 0)
        fail("a deadline in the future gave a done context", err);

    /* defer cancel() */
    ctx_cancel(cancel);
    ctx_unref(ctx);

    /* "Every day at 20:30" means the next 20:30: tomorrow's once today's has
     * passed.  A daily job makes each day's context from this one. */
    time_t next = today > now ? today : at_2030(now, 1);
    wall.tv_sec = next;
    ctx = with_wall_deadline(&wall, NULL);
    printf("the next 20:30 is %s: a context with that deadline is %s\n",
           local_text(next, buf, sizeof buf), ctx_err(ctx) == 0 ? "live" : "done");
    ctx_unref(ctx);
}

/* Part 2: a wall-clock deadline 1.5 s from now, and its firing. */
static void soon(void)
{
    char buf[64];
    struct timespec wall;

    if (clock_gettime(CLOCK_REALTIME, &wall) != 0)
        fail("clock_gettime", errno);
    wall.tv_sec += 1;
    wall.tv_nsec += 500000000L;
    if (wall.tv_nsec >= 1000000000L) {
        wall.tv_sec += 1;
        wall.tv_nsec -= 1000000000L;
    }

    ctx_time_t start = ctx_now();
    ctx_t *ctx = with_wall_deadline(&wall, NULL);
    printf("a deadline 1.5 s from now, at %s + %03ld ms: waiting\n",
           local_text(wall.tv_sec, buf, sizeof buf), wall.tv_nsec / 1000000L);

    /* Go: <-ctx.Done(); ctx.Err() */
    int err = ctx_wait(ctx, CTX_FOREVER);
    ctx_duration_t waited = ctx_now() - start;
    printf("  it fired: %s\n", ctx_strerror(err));

    if (err != CTX_DEADLINE_EXCEEDED)
        fail("ctx_wait", err);
    /* A deadline never fires early.  The conversion reads two clocks one
     * after the other, so allow a few milliseconds for that. */
    if (waited < 1500 * CTX_MILLISECOND - 10 * CTX_MILLISECOND)
        fail("the deadline fired early", ETIMEDOUT);
    ctx_unref(ctx);
}

int main(void)
{
    today_at_2030();
    soon();
    return 0;
}
