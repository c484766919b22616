/*
 * sc: groups and merges, for bench/sc.py (which runs this beside the Go
 * peer bench/sc_go and prints the table).  One round per run; prints
 * "name value" lines.
 *
 *   group_task_ns   10,000 trivial tasks through a group with limit 8: wall
 *                   time per task (best of 3 batches)
 *   group_on_caller_pct  the share of them the submitting thread ran itself
 *                   while it waited for a slot (see ctx.h, Groups)
 *   block_p50_us,   1,000 tasks of a group without limit block on the
 *   block_p99_us,   group's context; one more fails once all are blocked.
 *   block_max_us    From the failing task's return to each blocked task's
 *                   return: median, 99th percentile and the last one.
 *   merge_ns        ctx_merge of 2 live parents + ctx_unref
 *   with_cancel_ns  ctx_with_cancel of 1 live parent + ctx_unref
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static atomic_long counter, on_caller;
static pthread_t caller;

static int trivial(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    atomic_fetch_add_explicit(&counter, 1, memory_order_relaxed);
    if (pthread_equal(pthread_self(), caller))
        atomic_fetch_add_explicit(&on_caller, 1, memory_order_relaxed);
    return 0;
}

static double group_task_ns(void)
{
    double best = 1e30;
    caller = pthread_self();
    atomic_store(&on_caller, 0);
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now_ns();
        ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
        ctx_group_set_limit(g, 8);
        for (int i = 0; i < 10000; i++)
            ctx_group_go(g, trivial, NULL);
        ctx_group_wait(g, NULL);
        double t = (now_ns() - t0) / 10000.0;
        if (t < best)
            best = t;
    }
    /* How many ran on the submitting thread while it waited for a slot. */
    printf("group_on_caller_pct %.1f\n", 100.0 * (double)atomic_load(&on_caller) / 30000.0);
    return best;
}

#define BLOCKERS 1000
static atomic_int started;
static double returned[BLOCKERS];
static double failed_at;

static int blocker(ctx_t *ctx, void *arg)
{
    atomic_fetch_add(&started, 1);
    ctx_wait(ctx, CTX_FOREVER);
    returned[(long)arg] = now_ns();
    return ctx_err(ctx);
}

static int failer(ctx_t *ctx, void *arg)
{
    (void)ctx;
    (void)arg;
    while (atomic_load(&started) < BLOCKERS)
        sched_yield();
    /* Let the last ones reach their wait. */
    struct timespec ms = { 0, 20 * 1000 * 1000 };
    nanosleep(&ms, NULL);
    failed_at = now_ns();
    return EIO;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void block(void)
{
    atomic_store(&started, 0);
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    for (long i = 0; i < BLOCKERS; i++)
        ctx_group_go(g, blocker, (void *)i);
    ctx_group_go(g, failer, NULL);
    ctx_group_wait(g, NULL);
    static double lat[BLOCKERS];
    for (int i = 0; i < BLOCKERS; i++)
        lat[i] = (returned[i] - failed_at) / 1000.0;
    qsort(lat, BLOCKERS, sizeof lat[0], cmp_double);
    printf("block_p50_us %.1f\nblock_p99_us %.1f\nblock_max_us %.1f\n", lat[BLOCKERS / 2],
           lat[BLOCKERS * 99 / 100], lat[BLOCKERS - 1]);
}

static void merge(void)
{
    long n = 300000;
    ctx_t *a = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *b = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *ps[2] = { a, b };
    double best_m = 1e30, best_c = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++)
            ctx_unref(ctx_merge(ps, 2, NULL));
        double t1 = now_ns();
        for (long i = 0; i < n; i++)
            ctx_unref(ctx_with_cancel(a, NULL));
        double t2 = now_ns();
        if ((t1 - t0) / (double)n < best_m)
            best_m = (t1 - t0) / (double)n;
        if ((t2 - t1) / (double)n < best_c)
            best_c = (t2 - t1) / (double)n;
    }
    printf("merge_ns %.1f\nwith_cancel_ns %.1f\n", best_m, best_c);
    ctx_unref(a);
    ctx_unref(b);
}

int main(void)
{
    printf("group_task_ns %.1f\n", group_task_ns());
    block();
    merge();
    return 0;
}
