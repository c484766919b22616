/* SPDX-License-Identifier: MIT */

/*
 * Scale figures for libctx (bench/report.py prints them beside Go's, which
 * bench/scale_go/scale.go measures the same way):
 *
 *   mem.*       bytes and allocations per context of each kind, from a
 *               counting allocator (ctx_replace_allocator): requested bytes,
 *               and what malloc really hands out (malloc_usable_size + 8);
 *               the allocator is put back before the timed figures
 *   timeouts.*  1,000,000 live ctx_with_timeout(parent, 1 h, &cancel):
 *               create, cancel one by one, cancel them all through their
 *               parent, free; and the growth of the resident set per live
 *               timeout in the process's first burst (rss_per_ctx: nodes,
 *               handles and timer structures, everything the library keeps)
 *   timeouts.cancel_each.SHAPE, timeouts.create.threads2  (only with
 *               --only=timeout_shapes) the same created by two threads, or
 *               cancelled in reverse or a random order, or freed as they are
 *               cancelled; each shape creates on the heap the one before
 *               left, in the order of the table
 *   fire.*      1,000,000 deadlines spread over 2 s, each with an AfterFunc
 *               that records ctx_now() - deadline: firing lateness
 *   fire_state.*  the same without callbacks: the main thread watches the
 *               done state (lateness of the timer thread alone)
 *   fire_pending.*  1,000,000 deadlines pending an hour away while 2,000
 *               others, spread over 2 s, come due: lateness of each from a
 *               thread blocked in ctx_wait on it (wake-up latency included)
 *   tree.*      cancelling a root with 1,000,000 descendants, wide (children
 *               of the root) and deep (a chain)
 *   waiters.*   1,000 threads blocked in ctx_wait: time from ctx_cancel to
 *               each thread's return, all on one context, or each on its own
 *               child of the cancelled root; and the floor, a bare futex word
 *               woken the same way without the library
 *
 * Output: one "key<TAB>value<TAB>unit" line per figure.  --quick shrinks
 * every count (for the bench_scale_smoke test).
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int quick;

/* ---------------------------------------------------------------------------
 * Counting allocator (per thread: the creating thread is the one measured) */

static _Thread_local uint64_t t_allocs, t_bytes, t_usable;
static _Atomic int count_usable;

static void *count_malloc(size_t n)
{
    void *p = malloc(n);
    t_allocs++;
    t_bytes += n;
    if (p != NULL && atomic_load_explicit(&count_usable, memory_order_relaxed))
        t_usable += malloc_usable_size(p) + sizeof(size_t); /* + glibc's chunk header */
    return p;
}

static void count_free(void *p)
{
    free(p);
}

static void put(const char *key, double v, const char *unit)
{
    printf("%s\t%.6g\t%s\n", key, v, unit);
    fflush(stdout);
}

static void die(const char *what)
{
    fprintf(stderr, "scale: %s failed\n", what);
    exit(1);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t pct(int64_t *sorted, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

/* ---------------------------------------------------------------------------
 * Bytes per context */

enum kind { K_CANCEL, K_CANCEL_LINKED, K_TIMER, K_VALUE, K_WITHOUT, K_AFTER };

static const ctx_key_t key = { .name = "k" };

static void noop(void *arg)
{
    (void)arg;
}

static ctx_t *make(enum kind k, ctx_t *parent, ctx_after_t **stop)
{
    switch (k) {
    case K_CANCEL:
        return ctx_with_cancel(ctx_background(), NULL);
    case K_CANCEL_LINKED:
        return ctx_with_cancel(parent, NULL);
    case K_TIMER:
        return ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    case K_VALUE:
        return ctx_with_value(ctx_background(), &key, NULL, NULL);
    case K_WITHOUT:
        return ctx_without_cancel(parent);
    case K_AFTER:
        if (ctx_after_func(parent, noop, NULL, stop) != 0)
            die("ctx_after_func");
        return NULL;
    }
    return NULL;
}

static void mem_figures(void)
{
    static const struct {
        enum kind k;
        const char *name;
    } kinds[] = {
        { K_CANCEL, "cancel" },   { K_CANCEL_LINKED, "cancel_linked" },
        { K_TIMER, "timer" },     { K_VALUE, "value" },
        { K_WITHOUT, "without" }, { K_AFTER, "afterfunc" },
    };
    const size_t n = quick ? 1000 : 10000;
    ctx_t **live = malloc(n * sizeof *live);
    ctx_after_t **stops = malloc(n * sizeof *stops);
    if (live == NULL || stops == NULL)
        die("malloc");
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);

    atomic_store(&count_usable, 1);
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        enum kind k = kinds[i].k;
        /* n of them alive at once: shared structures (timer shards) are
         * amortized over them. */
        uint64_t a0 = t_allocs, b0 = t_bytes, u0 = t_usable;
        for (size_t j = 0; j < n; j++)
            live[j] = make(k, parent, &stops[j]);
        uint64_t a1 = t_allocs, b1 = t_bytes, u1 = t_usable;
        /* One more, in the steady state: the node alone. */
        ctx_after_t *stop1 = NULL;
        ctx_t *one = make(k, parent, &stop1);
        uint64_t a2 = t_allocs, b2 = t_bytes, u2 = t_usable;

        char key_buf[64];
        snprintf(key_buf, sizeof key_buf, "mem.%s.bytes", kinds[i].name);
        put(key_buf, (double)(b2 - b1), "B");
        snprintf(key_buf, sizeof key_buf, "mem.%s.allocs", kinds[i].name);
        put(key_buf, (double)(a2 - a1), "allocs");
        snprintf(key_buf, sizeof key_buf, "mem.%s.malloc_bytes", kinds[i].name);
        put(key_buf, (double)(u2 - u1), "B");
        snprintf(key_buf, sizeof key_buf, "mem.%s.avg_bytes", kinds[i].name);
        put(key_buf, (double)(b1 - b0) / (double)n, "B");
        snprintf(key_buf, sizeof key_buf, "mem.%s.avg_allocs", kinds[i].name);
        put(key_buf, (double)(a1 - a0) / (double)n, "allocs");
        (void)u0;

        if (k == K_AFTER) {
            ctx_after_stop(stop1);
            for (size_t j = 0; j < n; j++)
                ctx_after_stop(stops[j]);
        } else {
            ctx_unref(one);
            for (size_t j = 0; j < n; j++)
                ctx_unref(live[j]);
        }
    }
    atomic_store(&count_usable, 0);
    ctx_cancel(pc);
    ctx_unref(parent);
    free(live);
    free(stops);
}

/* ---------------------------------------------------------------------------
 * 1,000,000 live timeouts */

/* The process's resident set in bytes (Linux), or -1. */
static long long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long long size, res = -1;
    if (f == NULL)
        return -1;
    if (fscanf(f, "%lld %lld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : res * (long long)sysconf(_SC_PAGESIZE);
}

static void timeout_figures(void)
{
    const size_t n = quick ? 10000 : 1000000;
    ctx_t **c = malloc(n * sizeof *c);
    ctx_cancel_t **cc = malloc(n * sizeof *cc);
    if (c == NULL || cc == NULL)
        die("malloc");
    /* Resident before the baseline, so that the growth is the library's
     * alone: the nodes, their handles, the timer structures.  Not zeros:
     * the compiler may turn malloc and a zeroing memset into a calloc,
     * which touches no page. */
    memset(c, 0xff, n * sizeof *c);
    memset(cc, 0xff, n * sizeof *cc);

    for (int round = 0; round < 2; round++) {
        ctx_cancel_t *pc;
        ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
        long long rss0 = rss_bytes();
        ctx_time_t t0 = ctx_now();
        for (size_t i = 0; i < n; i++)
            if ((c[i] = ctx_with_timeout(parent, CTX_HOUR, &cc[i])) == NULL)
                die("ctx_with_timeout");
        ctx_time_t t1 = ctx_now();
        long long rss1 = rss_bytes();
        if (round == 0) {
            put("timeouts.create", (double)(t1 - t0) / (double)n, "ns/op");
            /* The first burst of the process: growth of the resident set
             * per live ctx_with_timeout(parent, 1 h, &cancel). */
            if (rss0 >= 0 && rss1 >= 0)
                put("timeouts.rss_per_ctx", (double)(rss1 - rss0) / (double)n, "B");
            /* Each cancelled through its own handle. */
            for (size_t i = 0; i < n; i++)
                ctx_cancel(cc[i]);
            ctx_time_t t2 = ctx_now();
            put("timeouts.cancel_each", (double)(t2 - t1) / (double)n, "ns/op");
        } else {
            /* All of them through their parent: one call. */
            ctx_cancel(pc);
            ctx_time_t t2 = ctx_now();
            put("timeouts.cancel_parent", (double)(t2 - t1) / (double)n, "ns/op");
        }
        ctx_time_t t3 = ctx_now();
        for (size_t i = 0; i < n; i++)
            ctx_unref(c[i]);
        ctx_time_t t4 = ctx_now();
        if (round == 0)
            put("timeouts.free", (double)(t4 - t3) / (double)n, "ns/op");
        ctx_cancel(pc);
        ctx_unref(parent);
    }
    free(c);
    free(cc);
}

/* ---------------------------------------------------------------------------
 * 1,000,000 live timeouts in other shapes: the order in which a program
 * cancels them, whether it frees each as it goes, and creation from two
 * threads.  scale.go runs the same shapes, with the same permutation. */

/* The permutation both programs use: Fisher-Yates driven by xorshift64
 * from a fixed seed, so that Go and C visit the contexts in the same
 * order. */
static void shuffle(size_t *ix, size_t n)
{
    uint64_t x = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < n; i++)
        ix[i] = i;
    for (size_t i = n; i > 1; i--) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        size_t j = (size_t)(x % i);
        size_t tmp = ix[i - 1];
        ix[i - 1] = ix[j];
        ix[j] = tmp;
    }
}

struct maker {
    ctx_t *parent;
    ctx_t **c;
    ctx_cancel_t **cc;
    size_t from, to;
    pthread_barrier_t *go;
};

static void *make_main(void *arg)
{
    struct maker *m = arg;
    pthread_barrier_wait(m->go);
    for (size_t i = m->from; i < m->to; i++)
        if ((m->c[i] = ctx_with_timeout(m->parent, CTX_HOUR, &m->cc[i])) == NULL)
            die("ctx_with_timeout");
    return NULL;
}

/* Creates n timeouts under parent from `threads` threads (the caller is
 * one of them); returns ns per timeout of wall time. */
static double make_timeouts(ctx_t *parent, ctx_t **c, ctx_cancel_t **cc, size_t n, int threads)
{
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)threads);
    struct maker m[2];
    pthread_t tid[2];
    for (int k = 0; k < threads; k++) {
        m[k] = (struct maker){
            parent, c, cc, n * (size_t)k / (size_t)threads, n * (size_t)(k + 1) / (size_t)threads,
            &go
        };
        if (k > 0 && pthread_create(&tid[k], NULL, make_main, &m[k]) != 0)
            die("pthread_create");
    }
    /* The clock starts when every thread is ready: the barrier is the
     * last thing each does before its loop. */
    ctx_time_t t0 = ctx_now();
    make_main(&m[0]);
    for (int k = 1; k < threads; k++)
        pthread_join(tid[k], NULL);
    ctx_time_t t1 = ctx_now();
    pthread_barrier_destroy(&go);
    return (double)(t1 - t0) / (double)n;
}

static void timeout_shape_figures(void)
{
    const size_t n = quick ? 10000 : 1000000;
    ctx_t **c = malloc(n * sizeof *c);
    ctx_cancel_t **cc = malloc(n * sizeof *cc);
    size_t *ix = malloc(n * sizeof *ix);
    if (c == NULL || cc == NULL || ix == NULL)
        die("malloc");
    shuffle(ix, n);
    static const struct {
        const char *name;
        int order; /* 0 creation order, 1 reverse, 2 random */
        int free_each;
        int threads;
    } shapes[] = {
        { "threads2", 0, 0, 2 }, { "free_each", 0, 1, 1 },   { "reverse", 1, 0, 1 },
        { "random", 2, 0, 1 },   { "random_free", 2, 1, 1 },
    };
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        ctx_cancel_t *pc;
        ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
        double create = make_timeouts(parent, c, cc, n, shapes[s].threads);
        char name[64];
        /* Each shape creates on the heap the one before left: after a
         * random-order free, the blocks come back scattered. */
        snprintf(name, sizeof name, "timeouts.create.%s", shapes[s].name);
        put(name, create, "ns/op");
        ctx_time_t t1 = ctx_now();
        for (size_t k = 0; k < n; k++) {
            size_t i = shapes[s].order == 0 ? k : shapes[s].order == 1 ? n - 1 - k : ix[k];
            ctx_cancel(cc[i]);
            if (shapes[s].free_each)
                ctx_unref(c[i]);
        }
        ctx_time_t t2 = ctx_now();
        snprintf(name, sizeof name, "timeouts.cancel_each.%s", shapes[s].name);
        put(name, (double)(t2 - t1) / (double)n, "ns/op");
        if (!shapes[s].free_each)
            for (size_t i = 0; i < n; i++)
                ctx_unref(c[i]);
        ctx_cancel(pc);
        ctx_unref(parent);
    }
    free(c);
    free(cc);
    free(ix);
}

/* ---------------------------------------------------------------------------
 * Firing lateness with 1,000,000 pending deadlines */

struct slot {
    ctx_time_t deadline;
    int64_t late;
};

static _Atomic size_t fired;

static void record(void *arg)
{
    struct slot *s = arg;
    s->late = ctx_now() - s->deadline;
    atomic_fetch_add_explicit(&fired, 1, memory_order_release);
}

/* Without callbacks: the main thread watches the done state itself.  The
 * timer thread fires in deadline order, so it suffices to watch the earliest
 * context not yet seen done (the contexts are sorted by deadline). */
struct watch {
    ctx_time_t deadline;
    ctx_t *ctx;
};

static int cmp_watch(const void *a, const void *b)
{
    ctx_time_t x = ((const struct watch *)a)->deadline, y = ((const struct watch *)b)->deadline;
    return x < y ? -1 : x > y;
}

static void fire_state_figures(void)
{
    const size_t n = quick ? 10000 : 1000000;
    const ctx_duration_t spread = quick ? 200 * CTX_MILLISECOND : 2 * CTX_SECOND;
    const ctx_duration_t lead = quick ? 300 * CTX_MILLISECOND : 1500 * CTX_MILLISECOND;
    struct watch *w = malloc(n * sizeof *w);
    int64_t *late = malloc(n * sizeof *late);
    if (w == NULL || late == NULL)
        die("malloc");
    ctx_time_t base = ctx_now() + lead;
    uint64_t rng = 0x2545F4914F6CDD1Du;
    for (size_t i = 0; i < n; i++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        w[i].deadline = base + (ctx_time_t)((rng >> 11) % (uint64_t)spread);
        if ((w[i].ctx = ctx_with_deadline(ctx_background(), w[i].deadline, NULL)) == NULL)
            die("ctx_with_deadline");
    }
    qsort(w, n, sizeof *w, cmp_watch);
    ctx_time_t give_up = base + spread + 30 * CTX_SECOND;
    for (size_t i = 0; i < n;) {
        if (ctx_err(w[i].ctx) != 0) {
            late[i] = ctx_now() - w[i].deadline;
            i++;
        } else {
            if (ctx_now() > give_up) {
                fprintf(stderr, "scale: only %zu of %zu deadlines fired\n", i, n);
                exit(1);
            }
            /* Do not spin: the timer thread needs the CPU more than we do.
             * This makes each figure up to ~0.1 ms (plus the sleep's slack)
             * too high. */
            struct timespec ts = { 0, 100 * 1000 };
            nanosleep(&ts, NULL);
        }
    }
    qsort(late, n, sizeof *late, cmp_i64);
    put("fire_state.p50", (double)pct(late, n, 0.50) / 1e3, "us");
    put("fire_state.p99", (double)pct(late, n, 0.99) / 1e3, "us");
    put("fire_state.max", (double)late[n - 1] / 1e3, "us");
    for (size_t i = 0; i < n; i++)
        ctx_unref(w[i].ctx);
    free(w);
    free(late);
}

/* Deadlines coming due while a million others are pending: the timer
 * mechanism's lateness at that size, not its throughput (fire_state.*
 * measures a burst of a million coming due within 2 s). */
static void fire_pending_figures(void)
{
    const size_t pending = quick ? 10000 : 1000000, n = quick ? 200 : 2000;
    const ctx_duration_t spread = quick ? 200 * CTX_MILLISECOND : 2 * CTX_SECOND;
    ctx_t **far = malloc(pending * sizeof *far);
    struct watch *w = malloc(n * sizeof *w);
    int64_t *late = malloc(n * sizeof *late);
    if (far == NULL || w == NULL || late == NULL)
        die("malloc");
    for (size_t i = 0; i < pending; i++)
        if ((far[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL)) == NULL)
            die("ctx_with_timeout");
    ctx_time_t base = ctx_now() + 100 * CTX_MILLISECOND;
    for (size_t i = 0; i < n; i++) {
        w[i].deadline = base + (ctx_time_t)(i * (size_t)spread / n);
        if ((w[i].ctx = ctx_with_deadline(ctx_background(), w[i].deadline, NULL)) == NULL)
            die("ctx_with_deadline");
    }
    for (size_t i = 0; i < n; i++) {
        if (ctx_wait(w[i].ctx, CTX_FOREVER) != CTX_DEADLINE_EXCEEDED)
            die("ctx_wait");
        late[i] = ctx_now() - w[i].deadline;
        if (late[i] < 0)
            die("a deadline fired early");
    }
    qsort(late, n, sizeof *late, cmp_i64);
    put("fire_pending.p50", (double)pct(late, n, 0.50) / 1e3, "us");
    put("fire_pending.p99", (double)pct(late, n, 0.99) / 1e3, "us");
    put("fire_pending.max", (double)late[n - 1] / 1e3, "us");
    for (size_t i = 0; i < n; i++)
        ctx_unref(w[i].ctx);
    for (size_t i = 0; i < pending; i++)
        ctx_unref(far[i]);
    free(far);
    free(w);
    free(late);
}

static void fire_figures(void)
{
    const size_t n = quick ? 10000 : 1000000;
    const ctx_duration_t spread = quick ? 200 * CTX_MILLISECOND : 2 * CTX_SECOND;
    const ctx_duration_t lead = quick ? 300 * CTX_MILLISECOND : 1500 * CTX_MILLISECOND;
    struct slot *s = malloc(n * sizeof *s);
    if (s == NULL)
        die("malloc");
    atomic_store(&fired, 0);

    ctx_time_t base = ctx_now() + lead;
    uint64_t rng = 0x9E3779B97F4A7C15u;
    size_t born_done = 0;
    ctx_time_t t0 = ctx_now();
    for (size_t i = 0; i < n; i++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        s[i].deadline = base + (ctx_time_t)((rng >> 11) % (uint64_t)spread);
        ctx_t *c = ctx_with_deadline(ctx_background(), s[i].deadline, NULL);
        if (c == NULL)
            die("ctx_with_deadline");
        if (ctx_err(c) != 0)
            born_done++;
        /* The registration holds the context: drop ours at once. */
        if (ctx_after_func(c, record, &s[i], NULL) != 0)
            die("ctx_after_func");
        ctx_unref(c);
    }
    ctx_time_t t1 = ctx_now();
    put("fire.setup", (double)(t1 - t0) / (double)n, "ns/op");
    if (born_done)
        put("fire.born_done", (double)born_done, "contexts");

    ctx_time_t give_up = base + spread + 30 * CTX_SECOND;
    while (atomic_load_explicit(&fired, memory_order_acquire) < n) {
        if (ctx_now() > give_up) {
            fprintf(stderr, "scale: only %zu of %zu deadlines fired\n", atomic_load(&fired), n);
            exit(1);
        }
        struct timespec ts = { 0, 10 * 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    int64_t *late = malloc(n * sizeof *late);
    if (late == NULL)
        die("malloc");
    for (size_t i = 0; i < n; i++)
        late[i] = s[i].late;
    qsort(late, n, sizeof *late, cmp_i64);
    put("fire.p50", (double)pct(late, n, 0.50) / 1e3, "us");
    put("fire.p99", (double)pct(late, n, 0.99) / 1e3, "us");
    put("fire.max", (double)late[n - 1] / 1e3, "us");
    free(late);
    free(s);
}

/* ---------------------------------------------------------------------------
 * Cancelling a root with 1,000,000 descendants */

static void tree_figures(void)
{
    const size_t n = quick ? 10000 : 1000000;
    ctx_t **c = malloc(n * sizeof *c);
    if (c == NULL)
        die("malloc");

    /* Wide: n children of the root. */
    ctx_cancel_t *pc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &pc);
    ctx_time_t t0 = ctx_now();
    for (size_t i = 0; i < n; i++)
        if ((c[i] = ctx_with_cancel(root, NULL)) == NULL)
            die("ctx_with_cancel");
    ctx_time_t t1 = ctx_now();
    ctx_cancel(pc);
    ctx_time_t t2 = ctx_now();
    for (size_t i = 0; i < n; i++)
        ctx_unref(c[i]);
    ctx_time_t t3 = ctx_now();
    ctx_unref(root);
    put("tree.wide.build", (double)(t1 - t0) / (double)n, "ns/op");
    put("tree.wide.cancel", (double)(t2 - t1) / (double)n, "ns/op");
    put("tree.wide.cancel_total", (double)(t2 - t1) / 1e6, "ms");
    put("tree.wide.free", (double)(t3 - t2) / (double)n, "ns/op");

    /* Deep: a chain of n under the root (each link holds its parent). */
    root = ctx_with_cancel(ctx_background(), &pc);
    t0 = ctx_now();
    ctx_t *leaf = root;
    for (size_t i = 0; i < n; i++) {
        ctx_t *x = ctx_with_cancel(leaf, NULL);
        if (x == NULL)
            die("ctx_with_cancel");
        if (leaf != root)
            ctx_unref(leaf);
        leaf = x;
    }
    t1 = ctx_now();
    ctx_cancel(pc);
    t2 = ctx_now();
    ctx_unref(leaf);
    t3 = ctx_now();
    ctx_unref(root);
    put("tree.deep.build", (double)(t1 - t0) / (double)n, "ns/op");
    put("tree.deep.cancel", (double)(t2 - t1) / (double)n, "ns/op");
    put("tree.deep.cancel_total", (double)(t2 - t1) / 1e6, "ms");
    put("tree.deep.free", (double)(t3 - t2) / (double)n, "ns/op");
    free(c);
}

/* ---------------------------------------------------------------------------
 * 1,000 threads blocked in ctx_wait */

struct waiter {
    pthread_t tid;
    ctx_t *ctx;
    ctx_t *release;
    _Atomic ctx_time_t woke; /* 0 until woken */
};

static _Atomic int ready;

/* Waits until n waiter threads have said they are ready, then a little
 * longer so that every one is asleep in its futex wait (a benchmark's
 * pause, not a test's synchronisation: the figures only need the threads
 * to be parked). */
static void await_waiters(int n)
{
    while (atomic_load(&ready) < n) {
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    struct timespec settle = { 0, 300 * 1000 * 1000 };
    nanosleep(&settle, NULL);
}

static void *wait_main(void *arg)
{
    struct waiter *w = arg;
    atomic_fetch_add(&ready, 1);
    if (ctx_wait(w->ctx, CTX_FOREVER) == 0)
        die("ctx_wait returned early");
    atomic_store_explicit(&w->woke, ctx_now(), memory_order_release);
    /* Park rather than exit, so that thread teardown does not compete with
     * the wake-ups being measured. */
    ctx_wait(w->release, CTX_FOREVER);
    return NULL;
}

static void waiter_figures(int own_child)
{
    const int n = quick ? 50 : 1000;
    struct waiter *w = calloc((size_t)n, sizeof *w);
    int64_t *lat = malloc((size_t)n * sizeof *lat);
    if (w == NULL || lat == NULL)
        die("malloc");
    ctx_cancel_t *pc, *rc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &pc);
    ctx_t *release = ctx_with_cancel(ctx_background(), &rc);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    atomic_store(&ready, 0);
    for (int i = 0; i < n; i++) {
        w[i].ctx = own_child ? ctx_with_cancel(root, NULL) : ctx_ref(root);
        w[i].release = release;
        if (pthread_create(&w[i].tid, &a, wait_main, &w[i]) != 0)
            die("pthread_create");
    }
    pthread_attr_destroy(&a);
    await_waiters(n);

    ctx_time_t t0 = ctx_now();
    ctx_cancel(pc);
    ctx_time_t t1 = ctx_now();
    /* Wait for every wake-up to be recorded, then let the threads go. */
    for (int i = 0; i < n; i++)
        while (atomic_load_explicit(&w[i].woke, memory_order_acquire) == 0)
            sched_yield();
    ctx_cancel(rc);
    for (int i = 0; i < n; i++) {
        pthread_join(w[i].tid, NULL);
        lat[i] = atomic_load(&w[i].woke) - t0;
        ctx_unref(w[i].ctx);
    }
    ctx_unref(root);
    ctx_unref(release);
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    const char *pre = own_child ? "waiters.children" : "waiters.one";
    char k[64];
    snprintf(k, sizeof k, "%s.cancel_call", pre);
    put(k, (double)(t1 - t0) / 1e3, "us");
    snprintf(k, sizeof k, "%s.p50", pre);
    put(k, (double)pct(lat, (size_t)n, 0.50) / 1e3, "us");
    snprintf(k, sizeof k, "%s.p99", pre);
    put(k, (double)pct(lat, (size_t)n, 0.99) / 1e3, "us");
    snprintf(k, sizeof k, "%s.max", pre);
    put(k, (double)lat[n - 1] / 1e3, "us");
    free(w);
    free(lat);
}

#ifdef __linux__
/* The floor: the same wake-up with a bare futex word and no library (what
 * ctx_wait does underneath: FUTEX_WAIT, then one FUTEX_WAKE of everyone). */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic uint32_t raw_word;

struct raw_waiter {
    pthread_t tid;
    _Atomic ctx_time_t woke;
};

static void *raw_main(void *arg)
{
    struct raw_waiter *w = arg;
    atomic_fetch_add(&ready, 1);
    while (atomic_load(&raw_word) == 0)
        syscall(SYS_futex, &raw_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    atomic_store_explicit(&w->woke, ctx_now(), memory_order_release);
    while (atomic_load(&raw_word) == 1)
        syscall(SYS_futex, &raw_word, FUTEX_WAIT_PRIVATE, 1, NULL, NULL, 0);
    return NULL;
}

static void raw_waiter_figures(void)
{
    const int n = quick ? 50 : 1000;
    struct raw_waiter *w = calloc((size_t)n, sizeof *w);
    int64_t *lat = malloc((size_t)n * sizeof *lat);
    if (w == NULL || lat == NULL)
        die("malloc");
    atomic_store(&raw_word, 0);
    atomic_store(&ready, 0);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    for (int i = 0; i < n; i++)
        if (pthread_create(&w[i].tid, &a, raw_main, &w[i]) != 0)
            die("pthread_create");
    pthread_attr_destroy(&a);
    await_waiters(n);
    ctx_time_t t0 = ctx_now();
    atomic_store(&raw_word, 1);
    syscall(SYS_futex, &raw_word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    ctx_time_t t1 = ctx_now();
    for (int i = 0; i < n; i++)
        while (atomic_load_explicit(&w[i].woke, memory_order_acquire) == 0)
            sched_yield();
    atomic_store(&raw_word, 2);
    syscall(SYS_futex, &raw_word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    for (int i = 0; i < n; i++) {
        pthread_join(w[i].tid, NULL);
        lat[i] = atomic_load(&w[i].woke) - t0;
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    put("waiters.raw_futex.cancel_call", (double)(t1 - t0) / 1e3, "us");
    put("waiters.raw_futex.p50", (double)pct(lat, (size_t)n, 0.50) / 1e3, "us");
    put("waiters.raw_futex.p99", (double)pct(lat, (size_t)n, 0.99) / 1e3, "us");
    put("waiters.raw_futex.max", (double)lat[n - 1] / 1e3, "us");
    free(w);
    free(lat);
}
#else
static void raw_waiter_figures(void) {}
#endif

int main(int argc, char **argv)
{
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strncmp(argv[i], "--only=", 7) == 0)
            only = argv[i] + 7;
        else {
            fprintf(stderr,
                    "usage: %s [--quick] [--only=mem|timeouts|timeout_shapes|fire|tree|waiters]\n",
                    argv[0]);
            return 2;
        }
    }
#define RUN(name, call)                                                                            \
    if (only == NULL || strcmp(only, name) == 0)                                                   \
    call
    /* The counting allocator only for the memory figures: a replaced
     * allocator turns off libctx's node cache, which the timed figures
     * should have, as programs using the default allocator do.  No context
     * exists before or after. */
    if (only == NULL || strcmp(only, "mem") == 0) {
        if (ctx_replace_allocator(count_malloc, count_free) != 0)
            die("ctx_replace_allocator");
        mem_figures();
        ctx_reset_allocator();
    }
    RUN("timeouts", timeout_figures());
    /* Not in the default run: the shapes bench/report.py does not print. */
    if (only != NULL && strcmp(only, "timeout_shapes") == 0)
        timeout_shape_figures();
    RUN("tree", tree_figures());
    RUN("waiters", waiter_figures(0));
    RUN("waiters", waiter_figures(1));
    RUN("waiters", raw_waiter_figures());
    RUN("fire", fire_pending_figures());
    RUN("fire", fire_state_figures());
    RUN("fire", fire_figures());
    return 0;
}
