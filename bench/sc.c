/* SPDX-License-Identifier: MIT */

/*
 * sc: groups and merges, for bench/sc.py (which runs this beside the Go
 * peer bench/sc_go and prints the table).  One round per run; prints
 * "name value" lines.
 *
 *   group_cold_task_ns  the same batch as group_task_ns, but the first one
 *                   of the process: no pool thread exists yet.  This is the
 *                   shape a program that runs one batch sees (and what an
 *                   outside benchmark that starts a fresh process per
 *                   measurement sees); it is printed first and run first.
 *                   With --cold only this batch runs, and the program
 *                   adds group_cold_on_caller_pct (the share of its tasks
 *                   the submitting thread ran), group_cold_caller_cpu_ns
 *                   (the submitting thread's CPU time per task: the rest
 *                   of the wall time it was off the CPU),
 *                   group_cold_threads (the process's threads after it),
 *                   group_cold_cpu_us (the process's CPU time) and
 *                   group_cold_csw (its context switches), then exits.
 *   group_task_ns   10,000 trivial tasks through a group with limit 8: wall
 *                   time per task (best of 3 further batches, pool warm)
 *   group_on_caller_pct  the share of them the submitting thread ran itself
 *                   while it waited for a slot (see ctx.h, Groups)
 *   block_p50_us,   1,000 tasks of a group without limit block on the
 *   block_p99_us,   group's context; one more fails once all are blocked.
 *   block_max_us    From the failing task's return to each blocked task's
 *                   return: median, 99th percentile and the last one.
 *   floor_p50_us,   the physical floor of that: 1,000 threads blocked in
 *   floor_p99_us,   FUTEX_WAIT on one bare word, one FUTEX_WAKE for all;
 *   floor_max_us    from the wake to each thread's return (same run, so
 *                   the same load).
 *   merge_ns        ctx_merge of 2 live parents + ctx_unref
 *   with_cancel_ns  ctx_with_cancel of 1 live parent + ctx_unref
 */
#define _GNU_SOURCE

#include <ctx.h>

#include <linux/futex.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

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

static double thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static double batch_caller_cpu_ns; /* the submitter's CPU time per task, last batch */

static double group_batch_ns(void)
{
    double c0 = thread_cpu_ns();
    double t0 = now_ns();
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    ctx_group_set_limit(g, 8);
    for (int i = 0; i < 10000; i++)
        ctx_group_go(g, trivial, NULL);
    ctx_group_wait(g, NULL);
    double t1 = now_ns();
    batch_caller_cpu_ns = (thread_cpu_ns() - c0) / 10000.0;
    return (t1 - t0) / 10000.0;
}

static double group_task_ns(void)
{
    double best = 1e30;
    caller = pthread_self();
    atomic_store(&on_caller, 0);
    for (int rep = 0; rep < 3; rep++) {
        double t = group_batch_ns();
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

static void report(const char *what, double *lat)
{
    qsort(lat, BLOCKERS, sizeof lat[0], cmp_double);
    printf("%s_p50_us %.1f\n%s_p99_us %.1f\n%s_max_us %.1f\n", what, lat[BLOCKERS / 2], what,
           lat[BLOCKERS * 99 / 100], what, lat[BLOCKERS - 1]);
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
    report("block", lat);
}

static _Atomic uint32_t floor_word, floor_exit;
static atomic_int floor_done;

static void *floor_thread(void *arg)
{
    atomic_fetch_add(&started, 1);
    while (atomic_load(&floor_word) == 0)
        syscall(SYS_futex, &floor_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    returned[(long)arg] = now_ns();
    /* Stay blocked until all have returned: a thread's exit is work that
     * the blocked tasks do not do, and it would delay the others. */
    atomic_fetch_add(&floor_done, 1);
    while (atomic_load(&floor_exit) == 0)
        syscall(SYS_futex, &floor_exit, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    return NULL;
}

/* The same wake-up with nothing but the kernel in it: 1,000 threads in
 * FUTEX_WAIT on one word (small stacks, as the pool's), one FUTEX_WAKE. */
static void floor_run(void)
{
    static pthread_t th[BLOCKERS];
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    atomic_store(&started, 0);
    atomic_store(&floor_word, 0);
    atomic_store(&floor_exit, 0);
    atomic_store(&floor_done, 0);
    for (long i = 0; i < BLOCKERS; i++)
        if (pthread_create(&th[i], &a, floor_thread, (void *)i) != 0)
            abort();
    while (atomic_load(&started) < BLOCKERS)
        sched_yield();
    struct timespec ms = { 0, 20 * 1000 * 1000 };
    nanosleep(&ms, NULL);
    failed_at = now_ns();
    atomic_store(&floor_word, 1);
    syscall(SYS_futex, &floor_word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    while (atomic_load(&floor_done) < BLOCKERS)
        sched_yield();
    atomic_store(&floor_exit, 1);
    syscall(SYS_futex, &floor_exit, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    for (int i = 0; i < BLOCKERS; i++)
        pthread_join(th[i], NULL);
    pthread_attr_destroy(&a);
    static double lat[BLOCKERS];
    for (int i = 0; i < BLOCKERS; i++)
        lat[i] = (returned[i] - failed_at) / 1000.0;
    report("floor", lat);
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

int main(int argc, char **argv)
{
    /* First: the pool starts empty only once per process. */
    caller = pthread_self();
    double cold = group_batch_ns();
    printf("group_cold_task_ns %.1f\n", cold);
    printf("group_cold_on_caller_pct %.1f\n", 100.0 * (double)atomic_load(&on_caller) / 10000.0);
    if (argc > 1 && strcmp(argv[1], "--cold") == 0) {
        /* What the first batch cost besides its wall time: the threads it
         * left (the pool's and the library's), the process's CPU time and
         * context switches. */
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        int threads = 0;
        FILE *f = fopen("/proc/self/status", "r");
        char line[256];
        while (f != NULL && fgets(line, sizeof line, f) != NULL)
            if (sscanf(line, "Threads: %d", &threads) == 1)
                break;
        if (f != NULL)
            fclose(f);
        printf("group_cold_caller_cpu_ns %.1f\n", batch_caller_cpu_ns);
        printf("group_cold_threads %d\ngroup_cold_cpu_us %.0f\ngroup_cold_csw %ld\n", threads,
               (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                   (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec),
               ru.ru_nvcsw + ru.ru_nivcsw);
        return 0;
    }
    printf("group_task_ns %.1f\n", group_task_ns());
    block();
    floor_run();
    merge();
    return 0;
}
