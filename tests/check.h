/* SPDX-License-Identifier: MIT */

/*
 * check.h: the whole test framework of libctx, in one header.
 *
 * Every test file is its own executable and its own CTest.  A failed check
 * prints file:line, the expression and the values involved, then aborts, so
 * a failure is never silent and never depends on NDEBUG.  A test that cannot
 * run on this machine exits with CHECK_SKIP_CODE (77), which CTest reports as
 * skipped.
 *
 * Besides the checks this header offers the few tools the tests share:
 *   - check_scale(): halves round counts under ThreadSanitizer (many times
 *     slower) and applies CTX_TEST_SCALE when set (0.1 for a quick run, 10
 *     for a soak), so that every file stays well under its timeout;
 *   - a seeded random generator whose seed is printed (CTX_TEST_SEED
 *     replays a run);
 *   - thread helpers and a count of this process's threads;
 *   - a counting allocator for ctx_replace_allocator() that can also fail
 *     the Nth allocation, to observe leaks and ENOMEM paths.
 *
 * Include this header first: it asks for the POSIX and GNU declarations
 * (barriers, mallinfo2, syscall) that a -std=c11 build hides otherwise.
 */
#ifndef CTX_TESTS_CHECK_H
#define CTX_TESTS_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <ctx.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK_SKIP_CODE 77

#if defined(__GNUC__) || defined(__clang__)
#define CHECK_NORETURN_     __attribute__((noreturn))
#define CHECK_PRINTF_(a, b) __attribute__((format(printf, a, b)))
#else
#define CHECK_NORETURN_
#define CHECK_PRINTF_(a, b)
#endif

/* ---------------------------------------------------------------------------
 * Failing and skipping
 */

static inline CHECK_NORETURN_ CHECK_PRINTF_(3, 4) void check_fail_(const char *file, int line,
                                                                   const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s:%d: check failed: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    fflush(stdout);
    abort();
}

/* Ends the test as skipped; CTest maps the code through SKIP_RETURN_CODE. */
#define SKIP(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "SKIP: ");                                                                 \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        exit(CHECK_SKIP_CODE);                                                                     \
    } while (0)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            check_fail_(__FILE__, __LINE__, "%s", #cond);                                          \
    } while (0)

/* CHECK with an explanation: CHECK_MSG(x > 0, "node %d", i). */
#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            fflush(stderr);                                                                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a);                                                       \
        long long check_b_ = (long long)(b);                                                       \
        if (check_a_ != check_b_)                                                                  \
            check_fail_(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, check_a_, check_b_); \
    } while (0)

#define CHECK_NE_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a);                                                       \
        long long check_b_ = (long long)(b);                                                       \
        if (check_a_ == check_b_)                                                                  \
            check_fail_(__FILE__, __LINE__, "%s != %s: both %lld", #a, #b, check_a_);              \
    } while (0)

#define CHECK_LE_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a);                                                       \
        long long check_b_ = (long long)(b);                                                       \
        if (!(check_a_ <= check_b_))                                                               \
            check_fail_(__FILE__, __LINE__, "%s <= %s: %lld > %lld", #a, #b, check_a_, check_b_);  \
    } while (0)

#define CHECK_PTR_EQ(a, b)                                                                         \
    do {                                                                                           \
        const void *check_a_ = (const void *)(a);                                                  \
        const void *check_b_ = (const void *)(b);                                                  \
        if (check_a_ != check_b_)                                                                  \
            check_fail_(__FILE__, __LINE__, "%s == %s: %p != %p", #a, #b, check_a_, check_b_);     \
    } while (0)

#define CHECK_NULL(p)     CHECK_PTR_EQ((p), NULL)
#define CHECK_NOT_NULL(p) CHECK_MSG((p) != NULL, "errno %d (%s)", errno, strerror(errno))

/* Two C strings are equal; NULL equals only NULL. */
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *check_a_ = (a);                                                                \
        const char *check_b_ = (b);                                                                \
        bool check_same_ = (check_a_ == NULL || check_b_ == NULL)                                  \
                               ? check_a_ == check_b_                                              \
                               : strcmp(check_a_, check_b_) == 0;                                  \
        if (!check_same_)                                                                          \
            check_fail_(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,                  \
                        check_a_ ? check_a_ : "(null)", check_b_ ? check_b_ : "(null)");           \
    } while (0)

/* A constructor call fails with NULL and the given errno. */
#define CHECK_FAILS_WITH(expr, err)                                                                \
    do {                                                                                           \
        errno = 0;                                                                                 \
        const void *check_p_ = (const void *)(expr);                                               \
        int check_e_ = errno;                                                                      \
        if (check_p_ != NULL || check_e_ != (err))                                                 \
            check_fail_(__FILE__, __LINE__, "%s: returned %p errno %d, want NULL errno %d", #expr, \
                        check_p_, check_e_, (int)(err));                                           \
    } while (0)

/* Runs one test function and says so, so a log shows where a failure was. */
#define RUN_TEST(fn)                                                                               \
    do {                                                                                           \
        fprintf(stderr, "-- %s\n", #fn);                                                           \
        fn();                                                                                      \
    } while (0)

/* ---------------------------------------------------------------------------
 * Context helpers: the (err, cause, msg) triple of a context in one check.
 */

/* Runs body(arg) in a forked child whose stderr goes into out (cap bytes,
 * NUL-terminated) and returns the child's wait status.  The child exits 0
 * when body returns; an alarm ends it after 10 s. */
static inline int check_child(void (*body)(void *), void *arg, char *out, size_t cap)
{
    int err[2];
    CHECK_EQ_INT(pipe(err), 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(10);
        dup2(err[1], 2);
        body(arg);
        _exit(0);
    }
    close(err[1]);
    size_t len = 0;
    ssize_t r;
    while (len < cap - 1 && (r = read(err[0], out + len, cap - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(err[0]);
    int st;
    CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
    return st;
}

/* Checks that body(arg), run in a child, dies of SIGABRT with message on
 * its stderr. */
static inline void check_child_aborts(void (*body)(void *), void *arg, const char *message)
{
    char out[4096];
    int st = check_child(body, arg, out, sizeof out);
    CHECK_MSG(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT, "status %#x, stderr: %s", st, out);
    CHECK_MSG(strstr(out, message) != NULL, "stderr: %s", out);
}

/* ctx is not done: err 0 and cause 0. */
#define CHECK_NOT_DONE(c)                                                                          \
    do {                                                                                           \
        ctx_t *check_c_ = (c);                                                                     \
        CHECK_EQ_INT(ctx_err(check_c_), 0);                                                        \
        CHECK_EQ_INT(ctx_cause(check_c_, NULL), 0);                                                \
    } while (0)

/* ctx is done with err, cause code and cause text msg (NULL: the text is
 * not checked). */
#define CHECK_DONE(c, err, cause, msg)                                                             \
    do {                                                                                           \
        ctx_t *check_c_ = (c);                                                                     \
        const char *check_m_ = NULL;                                                               \
        const char *check_want_m_ = (msg);                                                         \
        CHECK_EQ_INT(ctx_err(check_c_), (err));                                                    \
        CHECK_EQ_INT(ctx_cause(check_c_, &check_m_), (cause));                                     \
        CHECK_NOT_NULL(check_m_);                                                                  \
        if (check_want_m_ != NULL)                                                                 \
            CHECK_STR(check_m_, check_want_m_);                                                    \
    } while (0)

/* Cancelled without a cause: err, cause and text all say "canceled". */
#define CHECK_CANCELED(c) CHECK_DONE((c), CTX_CANCELED, CTX_CANCELED, "context canceled")

/* ---------------------------------------------------------------------------
 * Scale: how much of each stress loop to run.
 */

#if defined(__SANITIZE_THREAD__)
#define CHECK_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CHECK_TSAN 1
#endif
#endif
#ifndef CHECK_TSAN
#define CHECK_TSAN 0
#endif

/* The factor applied to round counts: CTX_TEST_SCALE if set, else 0.5 under
 * ThreadSanitizer, else 1. */
static inline double check_scale_factor(void)
{
    const char *s = getenv("CTX_TEST_SCALE");
    if (s != NULL && *s != '\0') {
        double f = strtod(s, NULL);
        if (f > 0)
            return f;
    }
    return CHECK_TSAN ? 0.5 : 1.0;
}

/* n scaled, never below min(n, 10) so every loop still does something. */
static inline long check_scale(long n)
{
    long floor = n < 10 ? n : 10;
    long s = (long)((double)n * check_scale_factor());
    return s < floor ? floor : s;
}

/* ---------------------------------------------------------------------------
 * Random numbers: xorshift64*, one state per user (thread-safe by design).
 */

typedef struct check_rng {
    uint64_t s;
} check_rng_t;

/* The seed of this run: CTX_TEST_SEED if set, else the clock; printed once
 * so that a failing run can be replayed. */
static inline uint64_t check_seed(void)
{
    static uint64_t seed;
    static int printed;
    if (!printed) {
        const char *s = getenv("CTX_TEST_SEED");
        if (s != NULL && *s != '\0') {
            seed = strtoull(s, NULL, 0);
        } else {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            seed = (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec;
        }
        printed = 1;
        fprintf(stderr, "seed: CTX_TEST_SEED=%" PRIu64 "\n", seed);
    }
    return seed;
}

static inline check_rng_t check_rng_make(uint64_t seed)
{
    check_rng_t r;
    r.s = seed * 0x9E3779B97F4A7C15u + 0x2545F4914F6CDD1Du;
    if (r.s == 0)
        r.s = 1;
    return r;
}

static inline uint64_t check_rng_next(check_rng_t *r)
{
    uint64_t x = r->s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->s = x;
    return x * 0x2545F4914F6CDD1Du;
}

/* Uniform in [0, n). */
static inline unsigned check_rng_below(check_rng_t *r, unsigned n)
{
    return (unsigned)((check_rng_next(r) >> 32) % n);
}

static inline void check_shuffle(check_rng_t *r, int *a, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)check_rng_below(r, (unsigned)i + 1);
        int t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---------------------------------------------------------------------------
 * Threads
 */

static inline void check_thread_start(pthread_t *t, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(t, NULL, fn, arg);
    CHECK_MSG(rc == 0, "pthread_create: %s", strerror(rc));
}

static inline void check_thread_join(pthread_t t)
{
    int rc = pthread_join(t, NULL);
    CHECK_MSG(rc == 0, "pthread_join: %s", strerror(rc));
}

static inline long check_gettid(void)
{
    return (long)syscall(SYS_gettid);
}

/* The number of threads of this process, from /proc/self/task; -1 if that
 * cannot be read. */
static inline int check_thread_count(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* true when thread tid sleeps in the kernel (state S or D), as a thread
 * blocked in a futex or a condition variable does. */
static inline bool check_thread_sleeping(long tid)
{
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%ld/stat", tid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    return p != NULL && p[1] == ' ' && (p[2] == 'S' || p[2] == 'D');
}

/* Gives thread tid up to max_ms to go to sleep in the kernel.  Used only to
 * make a race window likely to be hit; no result depends on it. */
static inline void check_wait_sleeping(long tid, int max_ms)
{
    for (int i = 0; i < max_ms && !check_thread_sleeping(tid); i++) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
}

/* ---------------------------------------------------------------------------
 * Time, for the timer tests: the real monotonic clock (ctx_now() may be the
 * manual one), a sleep that survives signals, and a bounded poll of a flag
 * set by another thread (the flag decides; the sleep only paces the poll).
 */

static inline ctx_time_t check_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ctx_time_t)ts.tv_sec * CTX_SECOND + ts.tv_nsec;
}

static inline void check_sleep_ns(ctx_duration_t d)
{
    struct timespec ts = { (time_t)(d / CTX_SECOND), (long)(d % CTX_SECOND) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Polls *flag until it is at least want or bound passes; true if it did. */
static inline bool check_wait_flag(atomic_int *flag, int want, ctx_duration_t bound)
{
    ctx_time_t end = check_mono_now() + bound;
    while (atomic_load(flag) < want) {
        if (check_mono_now() > end)
            return false;
        check_sleep_ns(CTX_MILLISECOND);
    }
    return true;
}

/* A one-shot latch: wait() returns once open() was called (by any thread). */
typedef struct check_latch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
} check_latch_t;

static inline void check_latch_init(check_latch_t *l)
{
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->open = 0;
}

static inline void check_latch_destroy(check_latch_t *l)
{
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
}

static inline void check_latch_open(check_latch_t *l)
{
    pthread_mutex_lock(&l->mu);
    l->open = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static inline void check_latch_wait(check_latch_t *l)
{
    pthread_mutex_lock(&l->mu);
    while (!l->open)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

static inline bool check_latch_is_open(check_latch_t *l)
{
    pthread_mutex_lock(&l->mu);
    int o = l->open;
    pthread_mutex_unlock(&l->mu);
    return o != 0;
}

/* ---------------------------------------------------------------------------
 * A counting allocator for ctx_replace_allocator().
 *
 * check_alloc_install() must run before the first context other than the
 * roots is made, and the allocator stays installed to the end of the
 * process (the header's rule).  check_alloc_live() is the number of blocks
 * the library holds.  check_alloc_fail_at(n, sticky) makes the allocation
 * numbered n (0 = the next one) fail, and with sticky every one after it
 * too; check_alloc_fail_none() stops failing.
 */

typedef struct check_alloc_state {
    atomic_long live;    /* blocks handed out and not yet freed */
    atomic_long total;   /* blocks ever handed out */
    atomic_long seq;     /* allocations attempted since the last fail_at */
    atomic_long fail_at; /* -1: never fail */
    atomic_int sticky;
    atomic_long failed; /* allocations refused */
} check_alloc_state_t;

static inline check_alloc_state_t *check_alloc_state_(void)
{
    static check_alloc_state_t s = { 0, 0, 0, -1, 0, 0 };
    return &s;
}

static inline void *check_alloc_malloc_(size_t size)
{
    check_alloc_state_t *s = check_alloc_state_();
    long fail_at = atomic_load(&s->fail_at);
    if (fail_at >= 0) {
        long i = atomic_fetch_add(&s->seq, 1);
        if (i == fail_at || (i > fail_at && atomic_load(&s->sticky))) {
            atomic_fetch_add(&s->failed, 1);
            return NULL;
        }
    }
    void *p = malloc(size);
    if (p != NULL) {
        atomic_fetch_add(&s->live, 1);
        atomic_fetch_add(&s->total, 1);
    }
    return p;
}

static inline void check_alloc_free_(void *p)
{
    if (p == NULL)
        return;
    atomic_fetch_sub(&check_alloc_state_()->live, 1);
    free(p);
}

static inline void check_alloc_install(void)
{
    CHECK_EQ_INT(ctx_replace_allocator(check_alloc_malloc_, check_alloc_free_), 0);
}

static inline long check_alloc_live(void)
{
    return atomic_load(&check_alloc_state_()->live);
}

static inline long check_alloc_total(void)
{
    return atomic_load(&check_alloc_state_()->total);
}

static inline long check_alloc_failed(void)
{
    return atomic_load(&check_alloc_state_()->failed);
}

static inline void check_alloc_fail_at(long n, bool sticky)
{
    check_alloc_state_t *s = check_alloc_state_();
    atomic_store(&s->fail_at, -1);
    atomic_store(&s->seq, 0);
    atomic_store(&s->sticky, sticky ? 1 : 0);
    atomic_store(&s->fail_at, n);
}

static inline void check_alloc_fail_none(void)
{
    atomic_store(&check_alloc_state_()->fail_at, -1);
}

#endif /* CTX_TESTS_CHECK_H */
