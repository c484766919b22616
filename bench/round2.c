/* SPDX-License-Identifier: MIT */

/*
 * The figures of the second performance round, one per run, for
 * bench/round2.py, which runs them in rounds beside bench/round2_go and
 * prints the table.  Each run prints "key<TAB>value<TAB>unit" lines.
 *
 *   fanout THREADS   THREADS threads each create, cancel and free children
 *                    of one shared parent (Go's BaseContext shape), 10M in
 *                    all: ns per operation of the whole (wall time / all
 *                    operations), and CPU time per operation; the same
 *                    shape as bench/round2_go's, for the side by side
 *   fanmix           the scaling of that loop, in one process: 1 thread
 *                    on a parent, 2 threads on one parent, and 2 threads
 *                    with a parent each (nothing of the library's shared:
 *                    what the two CPUs give this loop at best), in turns
 *                    of fixed time whose order rotates, so that the three
 *                    meet the same machine; each turn counts what every
 *                    thread did in its time, so a thread on a slower CPU
 *                    does not hold up the end.  Medians over the turns,
 *                    and the ratios within each set of three
 *   storm MODE       1,000,000 deadlines spread over 2 s, coming due 3 s
 *                    after they are made (time for Go to start a million
 *                    goroutines); lateness p50/p99/max.  MODE
 *                    "after": each has an AfterFunc recording ctx_now() -
 *                    deadline; "state": no callbacks, the main thread waits
 *                    (ctx_wait) on the earliest context not yet seen done
 *   timeouts         1,000,000 live ctx_with_timeout(parent, 1 h): create
 *                    ns/op, first touch included (fresh process), and the
 *                    resident memory it added per timeout
 *   timeouts_random  the same million, cancelled each by its handle in a
 *                    random order (requests that end out of order): ns per
 *                    cancel; the handles are put in that order before the
 *                    clock starts, so the loop reads them in sequence
 *   lone             500 lone 1 ms timeouts, one at a time, each waited on
 *                    with ctx_wait: lateness p50/p99/max of the return (a
 *                    fresh sleep and wake-up of the timer thread each time)
 *   timeout_cpu      the timeout rows' shapes on one thread, in thread CPU
 *                    time (not counting preemption: for comparing two
 *                    builds on a loaded machine): alone, beside 200k live,
 *                    1M create, 1M cancel each
 *
 * --quick shrinks every count (for the smoke test).
 */
#define _GNU_SOURCE
#include <ctx.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int quick;

static void put(const char *key, double v, const char *unit)
{
    printf("%s\t%.6g\t%s\n", key, v, unit);
    fflush(stdout);
}

static void die(const char *what)
{
    fprintf(stderr, "round2: %s failed\n", what);
    exit(1);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int64_t pct(const int64_t *sorted, size_t n, double p)
{
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return sorted[i < n ? i : n - 1];
}

/* ---------------------------------------------------------------------------
 * Fan-out from one shared parent */

static ctx_t *shared;
static long fan_ops;
static _Atomic int fan_go;

static void *fan_main(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&fan_go, memory_order_acquire))
        ;
    for (long i = 0; i < fan_ops; i++) {
        ctx_cancel_t *cc;
        ctx_t *c = ctx_with_cancel(shared, &cc);
        if (c == NULL)
            die("ctx_with_cancel");
        ctx_cancel(cc);
        ctx_unref(c);
    }
    return NULL;
}

/* CPU time of the whole process (every thread), in ns. */
static double cpu_ns(void)
{
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return ((double)r.ru_utime.tv_sec + (double)r.ru_stime.tv_sec) * 1e9 +
           ((double)r.ru_utime.tv_usec + (double)r.ru_stime.tv_usec) * 1e3;
}

static void fanout(int threads)
{
    fan_ops = quick ? 20000 : 10000000 / threads;
    ctx_cancel_t *pc;
    shared = ctx_with_cancel(ctx_background(), &pc);
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    if (t == NULL)
        die("calloc");
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, fan_main, NULL) != 0)
            die("pthread_create");
    ctx_time_t t0 = ctx_now();
    double c0 = cpu_ns();
    atomic_store_explicit(&fan_go, 1, memory_order_release);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    ctx_time_t t1 = ctx_now();
    double c1 = cpu_ns();
    double ops = (double)(fan_ops * threads);
    put("fanout.ns_per_op", (double)(t1 - t0) / ops, "ns/op");
    /* CPU time per operation, every thread's: what contention costs, even
     * when a loaded machine does not run the threads at the same time. */
    put("fanout.cpu_ns_per_op", (c1 - c0) / ops, "ns/op");
    ctx_cancel(pc);
    ctx_unref(shared);
    free(t);
}

/* ---------------------------------------------------------------------------
 * Fan-out scaling in one process
 *
 * Two ways of measuring "2 threads against 1" from separate processes
 * mislead on a virtual machine.  A thread's speed at this loop changes
 * with the state of the CPU it is given (on the 2-CPU test machine it
 * moves between about 33 and 60 ns per operation within one run, while
 * the library-free store and load loop of the same moments moves in
 * step), so two processes run seconds apart meet different machines; and
 * with a fixed share of the work per thread, the pair is timed by the
 * thread on the slower CPU, the faster one idle at the end.  Here the
 * three shapes take turns in one process, each turn a fixed time in which
 * every running thread counts what it did, and the order rotates so that
 * none always follows the same one.  Between turns the workers block (a
 * barrier; the barriers also order mix_until and the counts between the
 * threads), so that the CPU of a thread not running is idle, as it is in
 * a 1-thread program. */

enum { MIX_ONE, MIX_SHARED, MIX_PRIVATE, MIX_SHAPES };

static pthread_barrier_t mix_start, mix_end;
static ctx_time_t mix_until; /* when the workers stop, set before a turn */
static int mix_threads;      /* threads that work in this turn; -1: exit */
static ctx_t *mix_parent[2];
static struct {
    long ops;
    double cpu;
    char pad[64 - sizeof(long) - sizeof(double)]; /* a line per worker */
} mix_out[2];

static double thread_cpu_ns(void);
static int cmp_double(const void *a, const void *b);

static void *mix_main(void *arg)
{
    long id = (long)arg;
    for (;;) {
        pthread_barrier_wait(&mix_start);
        if (mix_threads < 0)
            return NULL;
        long n = 0;
        double c0 = thread_cpu_ns();
        if (id < mix_threads) {
            ctx_t *p = mix_parent[id];
            /* The workers stop on the clock themselves: the main thread
             * does nothing during a turn, so that under a real-time
             * priority (round2.py --rt) no worker waits for it.  Each
             * does one batch at least, even when it first runs after the
             * turn's end (a busy machine), so that every turn has a
             * count to divide by. */
            do {
                for (int i = 0; i < 256; i++) {
                    ctx_cancel_t *cc;
                    ctx_t *c = ctx_with_cancel(p, &cc);
                    if (c == NULL)
                        die("ctx_with_cancel");
                    ctx_cancel(cc);
                    ctx_unref(c);
                }
                n += 256;
            } while (ctx_now() < mix_until);
        }
        mix_out[id].ops = n;
        mix_out[id].cpu = thread_cpu_ns() - c0;
        pthread_barrier_wait(&mix_end);
    }
}

/* One turn of shape k, lasting about ms milliseconds: wall ns per
 * operation of all threads together, CPU ns per operation. */
static void mix_turn(int k, long ms, double *ns, double *cpu)
{
    /* A new parent each turn, so that the one-thread turn takes the path
     * of a parent that never saw two threads at once, as in a 1-thread
     * program, and a shared turn installs its fan-out as a fresh parent
     * does. */
    ctx_cancel_t *pc[2];
    mix_parent[0] = ctx_with_cancel(ctx_background(), &pc[0]);
    mix_parent[1] = k == MIX_PRIVATE ? ctx_with_cancel(ctx_background(), &pc[1]) : mix_parent[0];
    if (mix_parent[0] == NULL || mix_parent[1] == NULL)
        die("ctx_with_cancel");
    mix_threads = k == MIX_ONE ? 1 : 2;
    ctx_time_t t0 = ctx_now();
    mix_until = t0 + ms * CTX_MILLISECOND;
    pthread_barrier_wait(&mix_start);
    pthread_barrier_wait(&mix_end);
    ctx_time_t t1 = ctx_now();
    long ops = 0;
    double c = 0;
    for (int i = 0; i < mix_threads; i++) {
        ops += mix_out[i].ops;
        c += mix_out[i].cpu;
    }
    if (ops == 0)
        die("a turn (no operation done)");
    *ns = (double)(t1 - t0) / (double)ops;
    *cpu = c / (double)ops;
    ctx_cancel(pc[0]);
    ctx_unref(mix_parent[0]);
    if (k == MIX_PRIVATE) {
        ctx_cancel(pc[1]);
        ctx_unref(mix_parent[1]);
    }
}

static double median_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void fanmix(void)
{
    enum { SETS = 15 };
    const int sets = quick ? 2 : SETS;
    const long ms = quick ? 20 : 150;
    static const char *const names[MIX_SHAPES] = { "one", "shared", "private" };
    double ns[MIX_SHAPES][SETS], cpu[MIX_SHAPES][SETS];
    double scale[SETS], ceiling[SETS], share[SETS];
    if (pthread_barrier_init(&mix_start, NULL, 3) != 0 ||
        pthread_barrier_init(&mix_end, NULL, 3) != 0)
        die("pthread_barrier_init");
    pthread_t t[2];
    for (long i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, mix_main, (void *)i) != 0)
            die("pthread_create");
    double warm_ns, warm_cpu;
    for (int k = 0; k < MIX_SHAPES; k++)
        mix_turn(k, ms / 5, &warm_ns, &warm_cpu); /* first touch, not counted */
    for (int s = 0; s < sets; s++) {
        for (int j = 0; j < MIX_SHAPES; j++) {
            int k = (s + j) % MIX_SHAPES;
            mix_turn(k, ms, &ns[k][s], &cpu[k][s]);
        }
        scale[s] = ns[MIX_ONE][s] / ns[MIX_SHARED][s];
        ceiling[s] = ns[MIX_ONE][s] / ns[MIX_PRIVATE][s];
        share[s] = ns[MIX_PRIVATE][s] / ns[MIX_SHARED][s];
    }
    mix_threads = -1;
    pthread_barrier_wait(&mix_start);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    char key[64];
    for (int k = 0; k < MIX_SHAPES; k++) {
        snprintf(key, sizeof key, "fanmix.%s.ns_per_op", names[k]);
        put(key, median_of(ns[k], sets), "ns/op");
        snprintf(key, sizeof key, "fanmix.%s.cpu_ns_per_op", names[k]);
        put(key, median_of(cpu[k], sets), "ns/op");
    }
    /* Ratios of throughput within each set of three, then their median:
     * 2 threads on one parent against 1; 2 threads with a parent each
     * against 1 (the ceiling the machine gives this loop); and the one
     * parent's share of that ceiling. */
    put("fanmix.scale", median_of(scale, sets), "x"); /* sorts scale */
    put("fanmix.scale_min", scale[0], "x");
    put("fanmix.scale_max", scale[sets - 1], "x");
    put("fanmix.ceiling", median_of(ceiling, sets), "x");
    put("fanmix.shared_of_ceiling", median_of(share, sets), "x");
}

/* ---------------------------------------------------------------------------
 * Deadline storm */

struct slot {
    ctx_time_t deadline;
    int64_t late;
    ctx_t *ctx;
};

static _Atomic size_t fired;

static void record(void *arg)
{
    struct slot *s = arg;
    s->late = ctx_now() - s->deadline;
    atomic_fetch_add_explicit(&fired, 1, memory_order_release);
}

static int cmp_slot(const void *a, const void *b)
{
    ctx_time_t x = ((const struct slot *)a)->deadline, y = ((const struct slot *)b)->deadline;
    return x < y ? -1 : x > y;
}

static void storm(int callbacks)
{
    const size_t n = quick ? 10000 : 1000000;
    const ctx_duration_t spread = quick ? 200 * CTX_MILLISECOND : 2 * CTX_SECOND;
    const ctx_duration_t lead = quick ? 300 * CTX_MILLISECOND : 3 * CTX_SECOND;
    struct slot *s = calloc(n, sizeof *s);
    int64_t *late = malloc(n * sizeof *late);
    if (s == NULL || late == NULL)
        die("malloc");
    ctx_time_t base = ctx_now() + lead;
    uint64_t rng = 0x9E3779B97F4A7C15u;
    for (size_t i = 0; i < n; i++) {
        rng = rng * 6364136223846793005u + 1442695040888963407u;
        s[i].deadline = base + (ctx_time_t)((rng >> 11) % (uint64_t)spread);
    }
    if (!callbacks)
        qsort(s, n, sizeof *s, cmp_slot); /* the watcher goes in order */
    for (size_t i = 0; i < n; i++) {
        ctx_t *c = ctx_with_deadline(ctx_background(), s[i].deadline, NULL);
        if (c == NULL)
            die("ctx_with_deadline");
        if (callbacks) {
            /* The registration holds the context: drop ours at once. */
            if (ctx_after_func(c, record, &s[i], NULL) != 0)
                die("ctx_after_func");
            ctx_unref(c);
        } else {
            s[i].ctx = c;
        }
    }
    if (ctx_now() >= base)
        die("making the deadlines (took longer than the lead)");
    if (callbacks) {
        ctx_time_t give_up = base + spread + 30 * CTX_SECOND;
        while (atomic_load_explicit(&fired, memory_order_acquire) < n) {
            if (ctx_now() > give_up)
                die("firing (not all fired)");
            struct timespec ts = { 0, 10 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
    } else {
        /* The timer thread fires in deadline order; a context already done
         * when we get to it was late by at most what we measure. */
        for (size_t i = 0; i < n; i++) {
            if (ctx_wait(s[i].ctx, 30 * CTX_SECOND) != CTX_DEADLINE_EXCEEDED)
                die("ctx_wait");
            s[i].late = ctx_now() - s[i].deadline;
        }
    }
    for (size_t i = 0; i < n; i++) {
        late[i] = s[i].late;
        if (late[i] < 0)
            die("a deadline fired early");
        if (!callbacks)
            ctx_unref(s[i].ctx);
    }
    qsort(late, n, sizeof *late, cmp_i64);
    put("storm.p50", (double)pct(late, n, 0.50) / 1e3, "us");
    put("storm.p99", (double)pct(late, n, 0.99) / 1e3, "us");
    put("storm.max", (double)late[n - 1] / 1e3, "us");
    free(s);
    free(late);
}

/* ---------------------------------------------------------------------------
 * 1,000,000 live timeouts */

static long rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * sysconf(_SC_PAGESIZE);
}

/* A million timeouts (an hour away) under one cancellable parent, with
 * their handles. */
struct million {
    size_t n;
    ctx_t **c;
    ctx_cancel_t **cc;
    ctx_t *parent;
    ctx_cancel_t *pc;
};

/* The arrays and the parent; the timeouts are made by million_make. */
static void million_init(struct million *m)
{
    m->n = quick ? 10000 : 1000000;
    m->c = malloc(m->n * sizeof *m->c);
    m->cc = malloc(m->n * sizeof *m->cc);
    if (m->c == NULL || m->cc == NULL)
        die("malloc");
    /* The benchmark's own arrays are touched first, so that their pages do
     * not count as the library's.  Not with zeros: the compiler may merge
     * malloc and a zeroing memset into calloc, whose fresh pages stay
     * untouched until the loop below writes them. */
    memset(m->c, 0xff, m->n * sizeof *m->c);
    memset(m->cc, 0xff, m->n * sizeof *m->cc);
    m->parent = ctx_with_cancel(ctx_background(), &m->pc);
    if (m->parent == NULL)
        die("ctx_with_cancel");
}

static void million_make(struct million *m)
{
    for (size_t i = 0; i < m->n; i++)
        if ((m->c[i] = ctx_with_timeout(m->parent, CTX_HOUR, &m->cc[i])) == NULL)
            die("ctx_with_timeout");
}

static void million_free(struct million *m)
{
    for (size_t i = 0; i < m->n; i++)
        ctx_unref(m->c[i]);
    ctx_cancel(m->pc);
    ctx_unref(m->parent);
    free(m->c);
    free(m->cc);
}

static void timeouts(void)
{
    struct million m;
    million_init(&m);
    long r0 = rss_bytes();
    ctx_time_t t0 = ctx_now();
    million_make(&m);
    ctx_time_t t1 = ctx_now();
    long r1 = rss_bytes();
    put("timeouts.create", (double)(t1 - t0) / (double)m.n, "ns/op");
    put("timeouts.rss_per_timer", (double)(r1 - r0) / (double)m.n, "B");
    for (size_t i = 0; i < m.n; i++)
        ctx_cancel(m.cc[i]);
    ctx_time_t t2 = ctx_now();
    put("timeouts.cancel_each", (double)(t2 - t1) / (double)m.n, "ns/op");
    million_free(&m);
}

/* The million cancelled by their handles in a fixed random order: each
 * cancel finds its node out of the cache. */
static void timeouts_random(void)
{
    struct million m;
    million_init(&m);
    million_make(&m);
    ctx_cancel_t **order = malloc(m.n * sizeof *order);
    if (order == NULL)
        die("malloc");
    /* A fixed shuffle (Fisher-Yates on xorshift), the same on every run. */
    memcpy(order, m.cc, m.n * sizeof *order);
    uint64_t r = 0x9E3779B97F4A7C15u;
    for (size_t i = m.n - 1; i > 0; i--) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        size_t j = (size_t)(r % (i + 1));
        ctx_cancel_t *t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    ctx_time_t t0 = ctx_now();
    for (size_t i = 0; i < m.n; i++)
        ctx_cancel(order[i]);
    ctx_time_t t1 = ctx_now();
    put("timeouts.cancel_random", (double)(t1 - t0) / (double)m.n, "ns/op");
    free(order);
    million_free(&m);
}

/* ---------------------------------------------------------------------------
 * A lone deadline: one 1 ms timeout at a time, waited on with ctx_wait,
 * so that each firing is a fresh sleep of the timer thread.  Lateness of
 * ctx_wait's return: the timer thread's wake-up and the waiter's. */

static void lone(void)
{
    const size_t n = quick ? 50 : 500;
    int64_t *late = malloc(n * sizeof *late);
    if (late == NULL)
        die("malloc");
    for (size_t i = 0; i < n; i++) {
        ctx_t *c = ctx_with_timeout(ctx_background(), CTX_MILLISECOND, NULL);
        ctx_time_t d = 0;
        if (c == NULL || !ctx_deadline(c, &d))
            die("ctx_with_timeout");
        if (ctx_wait(c, 30 * CTX_SECOND) != CTX_DEADLINE_EXCEEDED)
            die("ctx_wait");
        late[i] = ctx_now() - d;
        if (late[i] < 0)
            die("a deadline fired early");
        ctx_unref(c);
    }
    qsort(late, n, sizeof *late, cmp_i64);
    put("lone.p50", (double)pct(late, n, 0.50) / 1e3, "us");
    put("lone.p99", (double)pct(late, n, 0.99) / 1e3, "us");
    put("lone.max", (double)late[n - 1] / 1e3, "us");
    free(late);
}

/* ---------------------------------------------------------------------------
 * Timeouts in thread CPU time: the shapes of the timeout rows, timed on
 * CLOCK_THREAD_CPUTIME_ID, which does not count the time the thread was
 * preempted, so that two builds compared on a shared, loaded machine give
 * comparable figures.  The median of 7 repetitions, in ns per timeout. */

static double thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One repetition of shape k: 0 create + cancel + free alone; 1 ten
 * created then ten cancelled and freed, beside 200,000 live (Go's
 * WithTimeout/concurrency shape on one thread); 2 and 3 create and
 * cancel of 1,000,000 under one parent (each by its handle, in order). */
static double cpu_shape(int k)
{
    const size_t n = quick ? 20000 : 1000000;
    double t0 = 0, t1 = 0;
    if (k == 0) {
        t0 = thread_cpu_ns();
        for (size_t i = 0; i < n; i++) {
            ctx_cancel_t *cc;
            ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, &cc);
            if (c == NULL)
                die("ctx_with_timeout");
            ctx_cancel(cc);
            ctx_unref(c);
        }
        t1 = thread_cpu_ns();
    } else if (k == 1) {
        const size_t live = quick ? 2000 : 200000;
        ctx_t **lv = malloc(live * sizeof *lv);
        ctx_cancel_t **lc = malloc(live * sizeof *lc);
        if (lv == NULL || lc == NULL)
            die("malloc");
        for (size_t i = 0; i < live; i++)
            if ((lv[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, &lc[i])) == NULL)
                die("ctx_with_timeout");
        ctx_t *w[10];
        ctx_cancel_t *wc[10];
        t0 = thread_cpu_ns();
        for (size_t i = 0; i < n / 10; i++) {
            for (int j = 0; j < 10; j++)
                if ((w[j] = ctx_with_timeout(ctx_background(), CTX_HOUR, &wc[j])) == NULL)
                    die("ctx_with_timeout");
            for (int j = 0; j < 10; j++) {
                ctx_cancel(wc[j]);
                ctx_unref(w[j]);
            }
        }
        t1 = thread_cpu_ns();
        for (size_t i = 0; i < live; i++) {
            ctx_cancel(lc[i]);
            ctx_unref(lv[i]);
        }
        free(lv);
        free(lc);
    } else {
        ctx_t **c = malloc(n * sizeof *c);
        ctx_cancel_t **cc = malloc(n * sizeof *cc);
        if (c == NULL || cc == NULL)
            die("malloc");
        ctx_cancel_t *pc;
        ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
        double a = thread_cpu_ns();
        for (size_t i = 0; i < n; i++)
            if ((c[i] = ctx_with_timeout(parent, CTX_HOUR, &cc[i])) == NULL)
                die("ctx_with_timeout");
        double b = thread_cpu_ns();
        for (size_t i = 0; i < n; i++)
            ctx_cancel(cc[i]);
        double e = thread_cpu_ns();
        t0 = k == 2 ? a : b;
        t1 = k == 2 ? b : e;
        for (size_t i = 0; i < n; i++)
            ctx_unref(c[i]);
        ctx_cancel(pc);
        ctx_unref(parent);
        free(c);
        free(cc);
    }
    return (t1 - t0) / (double)n;
}

static void timeout_cpu(void)
{
    static const char *const keys[] = { "timeout_cpu.alone", "timeout_cpu.live200k",
                                        "timeout_cpu.create_1m", "timeout_cpu.cancel_1m" };
    for (int k = 0; k < 4; k++) {
        double r[7];
        for (int i = 0; i < 7; i++)
            r[i] = cpu_shape(k);
        qsort(r, 7, sizeof r[0], cmp_double);
        put(keys[k], r[3], "ns/op");
    }
}

int main(int argc, char **argv)
{
    int i = 1;
    if (i < argc && strcmp(argv[i], "--quick") == 0) {
        quick = 1;
        i++;
    }
    if (i < argc && strcmp(argv[i], "fanout") == 0 && i + 1 < argc) {
        fanout(atoi(argv[i + 1]));
    } else if (i < argc && strcmp(argv[i], "fanmix") == 0) {
        fanmix();
    } else if (i < argc && strcmp(argv[i], "storm") == 0 && i + 1 < argc) {
        storm(strcmp(argv[i + 1], "after") == 0);
    } else if (i < argc && strcmp(argv[i], "timeouts") == 0) {
        timeouts();
    } else if (i < argc && strcmp(argv[i], "timeouts_random") == 0) {
        timeouts_random();
    } else if (i < argc && strcmp(argv[i], "lone") == 0) {
        lone();
    } else if (i < argc && strcmp(argv[i], "timeout_cpu") == 0) {
        timeout_cpu();
    } else {
        fprintf(stderr,
                "usage: %s [--quick] fanout THREADS | fanmix | storm after|state | timeouts | "
                "timeouts_random | lone | timeout_cpu\n",
                argv[0]);
        return 2;
    }
    return 0;
}
