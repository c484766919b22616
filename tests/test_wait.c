/* SPDX-License-Identifier: MIT */

/*
 * Waiting: ctx_wait, ctx_sleep, ctx_done_fd and ctx_cond_wait, the C
 * stand-ins for Go's Done channel.  Go's tests select on Done(); here every
 * way of waiting is run against every way a context can end:
 *   - a thread blocked in ctx_wait (for ever or timed), ctx_sleep (an hour
 *     or for ever), ctx_cond_wait or poll(2) on ctx_done_fd is woken by its
 *     own cancel, by an ancestor's cancel through a value layer, and by a
 *     deadline; the test makes sure the thread is asleep first, so that the
 *     wake-up path (not the early check) is what runs;
 *   - polls, short timeouts and sleeps that run to their end;
 *   - ctx_done_fd's contract (one fd per context, readable once done, -1
 *     with errno 0 when the context can never be done, shared by value
 *     layers, closed when the context is freed, EMFILE when the process is
 *     out of fds, with everything else still working);
 *   - a thousand threads on one context, all woken by one cancel;
 *   - ctx_cond_wait: an ordinary signal, cancel, the mutex held on return,
 *     and Go's AfterFunc condition-variable example run for hundreds of
 *     rounds, where a lost wake-up would hang a waiter.
 */
#include "check.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>

#define BOUND (CHECK_TSAN ? 30 * CTX_SECOND : 10 * CTX_SECOND)

static void errorcheck_mutex_init(pthread_mutex_t *mu)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ERRORCHECK);
    CHECK_EQ_INT(pthread_mutex_init(mu, &a), 0);
    pthread_mutexattr_destroy(&a);
}

/* 1 if fd is readable now, 0 if not. */
static int readable(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    int r = poll(&p, 1, 0);
    CHECK(r >= 0);
    if (r == 1)
        CHECK(p.revents & POLLIN);
    return r;
}

static bool fd_is_open(int fd)
{
    return fcntl(fd, F_GETFD) != -1 || errno != EBADF;
}

static const ctx_key_t key = { .name = "k" };

/* ---------------------------------------------------------------------------
 * Every way to wait x every way to end
 */

enum waiter_kind {
    K_WAIT_FOREVER,
    K_WAIT_HOUR,
    K_SLEEP_HOUR,
    K_SLEEP_FOREVER,
    K_COND,
    K_POLL,
    NKIND
};
static const char *const kind_name[NKIND] = { "ctx_wait(FOREVER)", "ctx_wait(1h)",
                                              "ctx_sleep(1h)",     "ctx_sleep(FOREVER)",
                                              "ctx_cond_wait",     "poll(ctx_done_fd)" };

enum wake_kind { WK_OWN, WK_ANCESTOR, WK_DEADLINE, NWAKE };
static const char *const wake_name[NWAKE] = { "own cancel", "ancestor cancel", "deadline" };

struct waiter {
    enum waiter_kind kind;
    ctx_t *ctx;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long tid;
    int r;
    int spurious;       /* ctx_cond_wait returned 0 */
    bool mutex_held;    /* ctx_cond_wait returned with the mutex held */
    ctx_time_t woke_at; /* ctx_now() after the wait */
    atomic_int done;
    check_latch_t ready;
};

static void *waiter_main(void *arg)
{
    struct waiter *w = arg;
    w->tid = check_gettid();
    int fd = -1;
    if (w->kind == K_POLL) {
        fd = ctx_done_fd(w->ctx);
        CHECK_MSG(fd >= 0, "ctx_done_fd: errno %d", errno);
    }
    if (w->kind == K_COND)
        CHECK_EQ_INT(pthread_mutex_lock(&w->mu), 0);
    check_latch_open(&w->ready);
    switch (w->kind) {
    case K_WAIT_FOREVER:
        w->r = ctx_wait(w->ctx, CTX_FOREVER);
        break;
    case K_WAIT_HOUR:
        w->r = ctx_wait(w->ctx, CTX_HOUR);
        break;
    case K_SLEEP_HOUR:
        w->r = ctx_sleep(w->ctx, CTX_HOUR);
        break;
    case K_SLEEP_FOREVER:
        w->r = ctx_sleep(w->ctx, CTX_FOREVER);
        break;
    case K_COND:
        /* No predicate ever turns true: only the context can end this. */
        while ((w->r = ctx_cond_wait(w->ctx, &w->cv, &w->mu)) == 0)
            w->spurious++;
        w->mutex_held = pthread_mutex_unlock(&w->mu) == 0;
        break;
    case K_POLL: {
        struct pollfd p = { fd, POLLIN, 0 };
        int n;
        while ((n = poll(&p, 1, -1)) < 0 && errno == EINTR)
            ;
        CHECK_EQ_INT(n, 1);
        CHECK(p.revents & POLLIN);
        w->r = ctx_err(w->ctx);
        break;
    }
    default:
        CHECK(!"bad kind");
    }
    w->woke_at = ctx_now();
    atomic_store(&w->done, 1);
    return NULL;
}

static void run_waiter(enum waiter_kind kind, enum wake_kind wake)
{
    ctx_cancel_t *own = NULL, *anc = NULL;
    ctx_t *a = NULL, *v = NULL, *c = NULL, *target = NULL;
    ctx_duration_t dl_after = (CHECK_TSAN ? 1000 : 300) * CTX_MILLISECOND;
    switch (wake) {
    case WK_OWN:
        c = ctx_with_cancel(ctx_background(), &own);
        CHECK_NOT_NULL(c);
        target = ctx_ref(c);
        break;
    case WK_ANCESTOR:
        /* ancestor -> value -> cancel -> value (waited on) */
        a = ctx_with_cancel(ctx_background(), &anc);
        CHECK_NOT_NULL(a);
        v = ctx_with_value(a, &key, NULL, NULL);
        CHECK_NOT_NULL(v);
        c = ctx_with_cancel(v, &own);
        CHECK_NOT_NULL(c);
        target = ctx_with_value(c, &key, NULL, NULL);
        CHECK_NOT_NULL(target);
        break;
    case WK_DEADLINE:
        c = ctx_with_timeout(ctx_background(), dl_after, &own);
        CHECK_NOT_NULL(c);
        target = ctx_with_value(c, &key, NULL, NULL);
        CHECK_NOT_NULL(target);
        break;
    default:
        CHECK(!"bad wake");
    }

    struct waiter w;
    memset(&w, 0, sizeof w);
    w.kind = kind;
    w.ctx = target;
    w.r = -1;
    errorcheck_mutex_init(&w.mu);
    pthread_cond_init(&w.cv, NULL);
    check_latch_init(&w.ready);
    pthread_t t;
    check_thread_start(&t, waiter_main, &w);
    check_latch_wait(&w.ready);
    /* Let it block first, so that the wake-up path is what runs. */
    check_wait_sleeping(w.tid, 5000);
    bool was_asleep = check_thread_sleeping(w.tid);
    /* (A deadline may legitimately have passed already on a slow machine.) */
    if (wake != WK_DEADLINE)
        CHECK_MSG(atomic_load(&w.done) == 0, "%s returned %d before %s", kind_name[kind], w.r,
                  wake_name[wake]);

    ctx_time_t d = 0;
    int want;
    switch (wake) {
    case WK_OWN:
        ctx_cancel(own);
        want = CTX_CANCELED;
        break;
    case WK_ANCESTOR:
        ctx_cancel_cause(anc, EPIPE, "ancestor");
        want = CTX_CANCELED;
        break;
    default:
        CHECK(ctx_deadline(target, &d));
        want = CTX_DEADLINE_EXCEEDED;
        break;
    }
    CHECK_MSG(check_wait_flag(&w.done, 1, BOUND), "%s not woken by %s", kind_name[kind],
              wake_name[wake]);
    check_thread_join(t);
    CHECK_MSG(w.r == want, "%s woken by %s returned %d, want %d", kind_name[kind], wake_name[wake],
              w.r, want);
    if (kind == K_COND)
        CHECK_MSG(w.mutex_held, "ctx_cond_wait returned without the mutex");
    if (wake == WK_DEADLINE)
        CHECK(w.woke_at >= d);
    if (!was_asleep)
        fprintf(stderr, "   (note: %s had not gone to sleep before %s)\n", kind_name[kind],
                wake_name[wake]);

    check_latch_destroy(&w.ready);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    ctx_unref(target);
    ctx_unref(c);
    ctx_unref(v);
    ctx_unref(a);
}

static void test_wake_matrix(void)
{
    long base = check_alloc_live();
    for (int wake = 0; wake < NWAKE; wake++)
        for (int kind = 0; kind < NKIND; kind++)
            run_waiter((enum waiter_kind)kind, (enum wake_kind)wake);
    /* The deadline rows drop their last references on library threads.
     * The tests after this one count live allocations from a base they
     * take at their start, so those drops must be done by then. */
    ctx_time_t end = check_mono_now() + BOUND;
    while (check_alloc_live() > base && check_mono_now() < end)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK_LE_INT(check_alloc_live(), base);
}

/* ---------------------------------------------------------------------------
 * Polls, timeouts and full sleeps
 */

static void test_poll_and_timeouts(void)
{
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c);
    ctx_t *v = ctx_with_value(c, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *w = ctx_without_cancel(c);
    CHECK_NOT_NULL(w);

    /* 0 polls; a negative timeout other than CTX_FOREVER is 0. */
    ctx_t *all[] = { c, v, w, ctx_background(), ctx_todo() };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        ctx_time_t t0 = check_mono_now();
        CHECK_EQ_INT(ctx_wait(all[i], 0), 0);
        CHECK_EQ_INT(ctx_wait(all[i], -5), 0);
        CHECK_EQ_INT(ctx_sleep(all[i], 0), 0);
        CHECK_EQ_INT(ctx_sleep(all[i], -5), 0);
        CHECK(check_mono_now() - t0 < CTX_SECOND);
    }

    /* A short timeout returns 0 after about that long. */
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        ctx_time_t t0 = check_mono_now();
        CHECK_EQ_INT(ctx_wait(all[i], 30 * CTX_MILLISECOND), 0);
        ctx_duration_t took = check_mono_now() - t0;
        CHECK_MSG(took >= 30 * CTX_MILLISECOND, "ctx_wait(30 ms) returned after %lld us",
                  (long long)(took / CTX_MICROSECOND));
        CHECK_MSG(took < 30 * CTX_MILLISECOND + BOUND / 5, "ctx_wait(30 ms) took %lld ms",
                  (long long)(took / CTX_MILLISECOND));
        t0 = check_mono_now();
        CHECK_EQ_INT(ctx_sleep(all[i], 20 * CTX_MILLISECOND), 0);
        took = check_mono_now() - t0;
        CHECK(took >= 20 * CTX_MILLISECOND);
        CHECK(took < 20 * CTX_MILLISECOND + BOUND / 5);
    }
    CHECK_NOT_DONE(c);

    /* A timeout shorter than the context's deadline: 0; longer: the err. */
    ctx_t *dl = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(dl);
    CHECK_EQ_INT(ctx_wait(dl, 10 * CTX_MILLISECOND), 0);
    CHECK_EQ_INT(ctx_sleep(dl, 10 * CTX_MILLISECOND), 0);
    ctx_time_t d;
    CHECK(ctx_deadline(dl, &d));
    CHECK_EQ_INT(ctx_sleep(dl, CTX_HOUR), CTX_DEADLINE_EXCEEDED);
    CHECK(ctx_now() >= d);
    ctx_unref(dl);

    /* Once done, every wait returns at once with the err. */
    ctx_cancel(cc);
    ctx_t *done_ones[] = { c, v };
    for (size_t i = 0; i < 2; i++) {
        ctx_time_t t0 = check_mono_now();
        CHECK_EQ_INT(ctx_wait(done_ones[i], 0), CTX_CANCELED);
        CHECK_EQ_INT(ctx_wait(done_ones[i], CTX_FOREVER), CTX_CANCELED);
        CHECK_EQ_INT(ctx_wait(done_ones[i], CTX_HOUR), CTX_CANCELED);
        CHECK_EQ_INT(ctx_sleep(done_ones[i], CTX_HOUR), CTX_CANCELED);
        CHECK_EQ_INT(ctx_sleep(done_ones[i], CTX_FOREVER), CTX_CANCELED);
        CHECK(check_mono_now() - t0 < CTX_SECOND);
    }
    /* The without-cancel child is still never done. */
    CHECK_EQ_INT(ctx_wait(w, CTX_MILLISECOND), 0);
    ctx_unref(w);
    ctx_unref(v);
    ctx_unref(c);
}

static void test_null(void)
{
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    CHECK_EQ_INT(ctx_wait(NULL, 0), EINVAL);
    CHECK_EQ_INT(ctx_wait(NULL, CTX_FOREVER), EINVAL);
    CHECK_EQ_INT(ctx_wait(NULL, CTX_SECOND), EINVAL);
    CHECK_EQ_INT(ctx_sleep(NULL, 0), EINVAL);
    CHECK_EQ_INT(ctx_sleep(NULL, CTX_HOUR), EINVAL);
    CHECK_EQ_INT(ctx_sleep(NULL, CTX_FOREVER), EINVAL);
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    pthread_mutex_lock(&mu);
    CHECK_EQ_INT(ctx_cond_wait(NULL, &cv, &mu), EINVAL);
    CHECK_EQ_INT(ctx_cond_wait(c, NULL, &mu), EINVAL);
    CHECK_EQ_INT(ctx_cond_wait(c, &cv, NULL), EINVAL);
    pthread_mutex_unlock(&mu);
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(NULL), -1);
    CHECK(errno != 0);
    ctx_unref(c);
}

/* ---------------------------------------------------------------------------
 * ctx_done_fd
 */

static void test_done_fd_basics(void)
{
    long base = check_alloc_live();
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c);
    int fd = ctx_done_fd(c);
    CHECK_MSG(fd >= 0, "errno %d", errno);
    CHECK_EQ_INT(ctx_done_fd(c), fd);
    CHECK_EQ_INT(ctx_done_fd(c), fd);
    CHECK_EQ_INT(readable(fd), 0);

    /* Value layers share the owner's fd, before and after it exists. */
    ctx_t *v = ctx_with_value(c, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *vv = ctx_with_value(v, &key, NULL, NULL);
    CHECK_NOT_NULL(vv);
    CHECK_EQ_INT(ctx_done_fd(vv), fd);
    CHECK_EQ_INT(ctx_done_fd(v), fd);
    ctx_t *c2 = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c2);
    ctx_t *v2 = ctx_with_value(c2, &key, NULL, NULL);
    CHECK_NOT_NULL(v2);
    int fd2 = ctx_done_fd(v2); /* made through the value layer first */
    CHECK(fd2 >= 0);
    CHECK_NE_INT(fd2, fd);
    CHECK_EQ_INT(ctx_done_fd(c2), fd2);
    CHECK_EQ_INT(readable(fd2), 0);

    /* A child has its own fd; cancelling it leaves the parent's quiet. */
    ctx_cancel_t *kc;
    ctx_t *kid = ctx_with_cancel(v, &kc);
    CHECK_NOT_NULL(kid);
    int kfd = ctx_done_fd(kid);
    CHECK(kfd >= 0 && kfd != fd);
    ctx_cancel(kc);
    CHECK_EQ_INT(readable(kfd), 1);
    CHECK_EQ_INT(readable(fd), 0);
    ctx_unref(kid);

    /* Readable after cancel, and it stays readable (level, never read). */
    ctx_t *kid2 = ctx_with_cancel(vv, NULL);
    CHECK_NOT_NULL(kid2);
    int k2fd = ctx_done_fd(kid2);
    CHECK(k2fd >= 0);
    ctx_cancel(cc);
    CHECK_EQ_INT(readable(fd), 1);
    CHECK_EQ_INT(readable(fd), 1);
    CHECK_EQ_INT(readable(k2fd), 1); /* a descendant's fd too */
    CHECK_EQ_INT(ctx_done_fd(c), fd);
    CHECK_EQ_INT(ctx_done_fd(vv), fd);
    CHECK_EQ_INT(readable(fd2), 0);
    ctx_unref(kid2);

    /* Already done before the fd is made: readable at once. */
    ctx_t *born = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(born);
    CHECK_CANCELED(born);
    int bfd = ctx_done_fd(born);
    CHECK(bfd >= 0);
    CHECK_EQ_INT(readable(bfd), 1);
    ctx_t *past = ctx_with_timeout(ctx_background(), -1, NULL);
    CHECK_NOT_NULL(past);
    int pfd = ctx_done_fd(past);
    CHECK(pfd >= 0);
    CHECK_EQ_INT(readable(pfd), 1);

    /* The fd belongs to the context: closed when it is freed. */
    CHECK(fd_is_open(bfd));
    ctx_unref(born);
    CHECK(!fd_is_open(bfd));
    ctx_unref(past);
    CHECK(!fd_is_open(pfd));
    ctx_unref(vv);
    CHECK(fd_is_open(fd)); /* v and c still hold it */
    ctx_unref(v);
    ctx_unref(c);
    CHECK(!fd_is_open(fd));
    ctx_unref(v2);
    CHECK(fd_is_open(fd2));
    ctx_unref(c2);
    CHECK(!fd_is_open(fd2));
    CHECK(!fd_is_open(kfd));
    CHECK(!fd_is_open(k2fd));
    CHECK_EQ_INT(check_alloc_live(), base);
}

static void test_done_fd_never_done(void)
{
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c);
    ctx_t *w = ctx_without_cancel(c);
    CHECK_NOT_NULL(w);
    ctx_t *bv = ctx_with_value(ctx_background(), &key, NULL, NULL);
    CHECK_NOT_NULL(bv);
    ctx_t *wv = ctx_with_value(w, &key, NULL, NULL);
    CHECK_NOT_NULL(wv);
    ctx_t *never[] = { ctx_background(), ctx_todo(), w, bv, wv };
    for (int round = 0; round < 2; round++) {
        for (size_t i = 0; i < sizeof never / sizeof never[0]; i++) {
            errno = 12345;
            CHECK_EQ_INT(ctx_done_fd(never[i]), -1);
            CHECK_EQ_INT(errno, 0);
        }
        ctx_cancel(cc); /* the second round: after the parent is done */
    }
    /* A child of a without-cancel context can be done again: it has one. */
    ctx_cancel_t *kc;
    ctx_t *kid = ctx_with_cancel(wv, &kc);
    CHECK_NOT_NULL(kid);
    int kfd = ctx_done_fd(kid);
    CHECK(kfd >= 0);
    CHECK_EQ_INT(readable(kfd), 0);
    ctx_cancel(kc);
    CHECK_EQ_INT(readable(kfd), 1);
    ctx_unref(kid);
    ctx_unref(wv);
    ctx_unref(bv);
    ctx_unref(w);
    ctx_unref(c);
}

/* The fd of a deadline context turns readable when the deadline passes. */
static void test_done_fd_deadline(void)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_t *v = ctx_with_value(c, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    int fd = ctx_done_fd(v);
    CHECK(fd >= 0);
    ctx_time_t d;
    CHECK(ctx_deadline(c, &d));
    struct pollfd p = { fd, POLLIN, 0 };
    int n;
    while ((n = poll(&p, 1, (int)(BOUND / CTX_MILLISECOND))) < 0 && errno == EINTR)
        ;
    CHECK_EQ_INT(n, 1);
    CHECK(ctx_now() >= d);
    CHECK_EQ_INT(ctx_err(v), CTX_DEADLINE_EXCEEDED);
    ctx_unref(v);
    ctx_unref(c);
}

/* Threads asking for the first fd of one context at the same moment all
 * get the same one, and only one is made. */
struct fd_race {
    pthread_barrier_t *bar;
    ctx_t *ctx;
    int fd;
};

static void *fd_race_main(void *arg)
{
    struct fd_race *r = arg;
    pthread_barrier_wait(r->bar);
    r->fd = ctx_done_fd(r->ctx);
    return NULL;
}

static void test_done_fd_race(void)
{
    enum { NT = 8 };
    int rounds = (int)check_scale(200);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, NT);
    for (int i = 0; i < rounds; i++) {
        /* Per round, and only "does not grow": the timer thread may still
         * be dropping its reference to a deadline context of an earlier
         * test, which lowers the count while we run. */
        long base = check_alloc_live();
        ctx_cancel_t *cc;
        ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
        CHECK_NOT_NULL(c);
        ctx_t *v = ctx_with_value(c, &key, NULL, NULL);
        CHECK_NOT_NULL(v);
        struct fd_race r[NT];
        pthread_t t[NT];
        for (int k = 0; k < NT; k++) {
            r[k].bar = &bar;
            r[k].ctx = (k & 1) ? v : c;
            r[k].fd = -2;
            check_thread_start(&t[k], fd_race_main, &r[k]);
        }
        if (i & 1)
            ctx_cancel(cc); /* sometimes it ends meanwhile */
        for (int k = 0; k < NT; k++)
            check_thread_join(t[k]);
        for (int k = 0; k < NT; k++)
            CHECK_EQ_INT(r[k].fd, r[0].fd);
        CHECK(r[0].fd >= 0);
        CHECK_EQ_INT(ctx_done_fd(c), r[0].fd);
        if (i & 1)
            CHECK_EQ_INT(readable(r[0].fd), 1);
        ctx_cancel(cc);
        CHECK_EQ_INT(readable(r[0].fd), 1);
        ctx_unref(v);
        ctx_unref(c);
        CHECK(!fd_is_open(r[0].fd));
        CHECK_LE_INT(check_alloc_live(), base);
    }
    pthread_barrier_destroy(&bar);
}

/* The highest fd this process has open. */
static int highest_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int hi = -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd > hi && fd != dirfd(d))
            hi = fd;
    }
    closedir(d);
    return hi;
}

struct blocked {
    ctx_t *ctx;
    int r;
    atomic_int done;
};

static void *blocked_main(void *arg)
{
    struct blocked *b = arg;
    b->r = ctx_wait(b->ctx, CTX_FOREVER);
    atomic_store(&b->done, 1);
    return NULL;
}

/* Out of fds: ctx_done_fd fails with EMFILE and leaks nothing, while
 * waiting, cancelling, deriving and values keep working. */
static void test_done_fd_exhausted(void)
{
    struct rlimit old;
    CHECK_EQ_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
    int spare = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(spare >= 0);
    ctx_cancel_t *hc;
    ctx_t *had = ctx_with_cancel(ctx_background(), &hc); /* got its fd in time */
    CHECK_NOT_NULL(had);
    int had_fd = ctx_done_fd(had);
    CHECK(had_fd >= 0);
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c);

    int hi = highest_fd();
    if (hi < 0)
        SKIP("cannot list /proc/self/fd");
    int *fill = malloc(((size_t)hi + 2) * sizeof *fill);
    CHECK_NOT_NULL(fill);
    struct rlimit lim = old;
    lim.rlim_cur = (rlim_t)hi + 1;
    if (old.rlim_cur != RLIM_INFINITY && lim.rlim_cur > old.rlim_cur)
        SKIP("fd limit already at its lowest");
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &lim), 0);
    /* Fill whatever holes lie below the limit (there are at most hi + 1
     * fd numbers below it). */
    int nfill = 0, fd;
    while (nfill <= hi && (fd = dup(spare)) >= 0)
        fill[nfill++] = fd;
    CHECK_EQ_INT(errno, EMFILE);

    static int payload;
    ctx_t *v = ctx_with_value(c, &key, &payload, NULL);
    CHECK_NOT_NULL(v);
    long base = check_alloc_live();
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(c), -1);
    CHECK_EQ_INT(errno, EMFILE);
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(v), -1);
    CHECK_EQ_INT(errno, EMFILE);
    CHECK_EQ_INT(check_alloc_live(), base); /* the failures leaked nothing */
    CHECK_EQ_INT(ctx_done_fd(had), had_fd); /* an fd made before still comes back */

    /* Everything else works. */
    CHECK_EQ_INT(ctx_wait(c, 0), 0);
    CHECK_EQ_INT(ctx_wait(c, 5 * CTX_MILLISECOND), 0);
    CHECK_EQ_INT(ctx_sleep(v, 5 * CTX_MILLISECOND), 0);
    ctx_t *kid = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(kid);
    ctx_t *kv = ctx_with_value(kid, &key, NULL, NULL);
    CHECK_NOT_NULL(kv);
    CHECK_NULL(ctx_value(kv, &key));
    CHECK_PTR_EQ(ctx_value(kid, &key), &payload);
    ctx_t *dl = ctx_with_timeout(kv, 20 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(dl);
    CHECK_EQ_INT(ctx_wait(dl, BOUND), CTX_DEADLINE_EXCEEDED);
    CHECK_NOT_DONE(kv);
    struct blocked b = { kv, -1, 0 };
    pthread_t t;
    check_thread_start(&t, blocked_main, &b);
    /* Only makes it likely the waiter is asleep (check_wait_sleeping would
     * need an fd to look). */
    check_sleep_ns(10 * CTX_MILLISECOND);
    pthread_mutex_t mu;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    errorcheck_mutex_init(&mu);
    pthread_mutex_lock(&mu);
    CHECK_EQ_INT(ctx_cond_wait(dl, &cv, &mu), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(pthread_mutex_unlock(&mu), 0);
    ctx_cancel_cause(cc, EPIPE, "out of fds");
    CHECK(check_wait_flag(&b.done, 1, BOUND));
    check_thread_join(t);
    CHECK_EQ_INT(b.r, CTX_CANCELED);
    CHECK_DONE(kv, CTX_CANCELED, EPIPE, "out of fds");
    ctx_cancel(hc);
    CHECK_EQ_INT(readable(had_fd), 1);
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(c), -1); /* done now, but still no fd to be had */
    CHECK_EQ_INT(errno, EMFILE);

    /* Fds again: the same context gets one now, readable at once. */
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
    for (int i = 0; i < nfill; i++)
        close(fill[i]);
    free(fill);
    int cfd = ctx_done_fd(v);
    CHECK_MSG(cfd >= 0, "errno %d", errno);
    CHECK_EQ_INT(ctx_done_fd(c), cfd);
    CHECK_EQ_INT(readable(cfd), 1);

    pthread_cond_destroy(&cv);
    pthread_mutex_destroy(&mu);
    ctx_unref(dl);
    ctx_unref(kv);
    ctx_unref(kid);
    ctx_unref(v);
    ctx_unref(c);
    ctx_unref(had);
    close(spare);
}

/* ---------------------------------------------------------------------------
 * A thousand waiters, one cancel
 */

struct crowd {
    ctx_t *ctx;
    ctx_t *val;
    atomic_int started, woke, bad;
    long *tids;
};

struct crowd_arg {
    struct crowd *cr;
    int i;
};

static void *crowd_main(void *arg)
{
    struct crowd_arg *a = arg;
    struct crowd *cr = a->cr;
    cr->tids[a->i] = check_gettid();
    ctx_t *target = (a->i & 1) ? cr->val : cr->ctx;
    atomic_fetch_add(&cr->started, 1);
    int r;
    switch (a->i % 10) {
    case 3:
        r = ctx_sleep(target, CTX_HOUR);
        break;
    case 7: {
        int fd = ctx_done_fd(target);
        struct pollfd p = { fd, POLLIN, 0 };
        while (poll(&p, 1, -1) < 0 && errno == EINTR)
            ;
        r = ctx_err(target);
        break;
    }
    default:
        r = ctx_wait(target, CTX_FOREVER);
        break;
    }
    if (r != CTX_CANCELED)
        atomic_fetch_add(&cr->bad, 1);
    atomic_fetch_add(&cr->woke, 1);
    return NULL;
}

static void test_thousand_waiters(void)
{
    int n = (int)check_scale(1000);
    struct crowd cr;
    memset(&cr, 0, sizeof cr);
    ctx_cancel_t *cc;
    cr.ctx = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(cr.ctx);
    cr.val = ctx_with_value(cr.ctx, &key, NULL, NULL);
    CHECK_NOT_NULL(cr.val);
    cr.tids = calloc((size_t)n, sizeof *cr.tids);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    struct crowd_arg *args = calloc((size_t)n, sizeof *args);
    CHECK(cr.tids && t && args);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (CHECK_TSAN ? 1024 : 256) * 1024);
    int made = 0;
    for (int i = 0; i < n; i++) {
        args[i].cr = &cr;
        args[i].i = i;
        int e = pthread_create(&t[i], &attr, crowd_main, &args[i]);
        if (e != 0) {
            CHECK_MSG(e == EAGAIN && i >= 50, "pthread_create: %s", strerror(e));
            fprintf(stderr, "   (only %d threads could be made)\n", i);
            break;
        }
        made++;
    }
    pthread_attr_destroy(&attr);
    CHECK(check_wait_flag(&cr.started, made, BOUND));
    /* Give a sample of them the time to go to sleep. */
    for (int i = made - 1; i >= 0 && i >= made - 20; i--)
        check_wait_sleeping(cr.tids[i], 2000);
    CHECK_EQ_INT(atomic_load(&cr.woke), 0);
    CHECK_NOT_DONE(cr.ctx);
    ctx_cancel(cc);
    CHECK_MSG(check_wait_flag(&cr.woke, made, BOUND), "%d of %d waiters woke",
              atomic_load(&cr.woke), made);
    for (int i = 0; i < made; i++)
        check_thread_join(t[i]);
    CHECK_EQ_INT(atomic_load(&cr.bad), 0);
    fprintf(stderr, "   %d waiters\n", made);
    ctx_unref(cr.val);
    ctx_unref(cr.ctx);
    free(cr.tids);
    free(t);
    free(args);
}

/* ---------------------------------------------------------------------------
 * ctx_cond_wait
 */

struct cond_waiter {
    ctx_t *ctx;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    bool *pred;
    int r, zeros;
    bool held;
    atomic_long tid;
    atomic_int done;
};

/* Waits for *pred or for the context, like Go's waitOnCond. */
static void *cond_waiter_main(void *arg)
{
    struct cond_waiter *w = arg;
    atomic_store(&w->tid, check_gettid());
    CHECK_EQ_INT(pthread_mutex_lock(w->mu), 0);
    w->r = 0;
    while (!*w->pred) {
        w->r = ctx_cond_wait(w->ctx, w->cv, w->mu);
        if (w->r != 0)
            break;
        w->zeros++;
    }
    w->held = pthread_mutex_unlock(w->mu) == 0;
    atomic_store(&w->done, 1);
    return NULL;
}

struct noise {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    atomic_int stop;
};

static void *noise_main(void *arg)
{
    struct noise *n = arg;
    while (!atomic_load(&n->stop)) {
        pthread_mutex_lock(n->mu);
        pthread_cond_broadcast(n->cv);
        pthread_mutex_unlock(n->mu);
        sched_yield();
    }
    return NULL;
}

/* Waits until the cond waiter has started and, likely, gone to sleep. */
static void cond_waiter_settle(struct cond_waiter *w)
{
    for (int i = 0; i < 5000 && atomic_load(&w->tid) == 0; i++)
        check_sleep_ns(CTX_MILLISECOND);
    check_wait_sleeping(atomic_load(&w->tid), 5000);
}

static void test_cond_signal(void)
{
    long base = check_alloc_live();
    pthread_mutex_t mu;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    errorcheck_mutex_init(&mu);
    bool pred = false;
    ctx_cancel_t *cc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c);

    /* An ordinary signal: 0, with the mutex held. */
    struct cond_waiter w = { c, &mu, &cv, &pred, -1, 0, false, 0, 0 };
    pthread_t t;
    check_thread_start(&t, cond_waiter_main, &w);
    cond_waiter_settle(&w);
    pthread_mutex_lock(&mu);
    pred = true;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
    CHECK(check_wait_flag(&w.done, 1, BOUND));
    check_thread_join(t);
    CHECK_EQ_INT(w.r, 0);
    CHECK(w.zeros >= 1);
    CHECK(w.held);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(check_alloc_live(), base + 1); /* only c: no registration left behind */

    /* Cancel: the err, with the mutex held. */
    pred = false;
    struct cond_waiter w2 = { c, &mu, &cv, &pred, -1, 0, false, 0, 0 };
    check_thread_start(&t, cond_waiter_main, &w2);
    cond_waiter_settle(&w2);
    CHECK_EQ_INT(atomic_load(&w2.done), 0);
    ctx_cancel(cc);
    CHECK(check_wait_flag(&w2.done, 1, BOUND));
    check_thread_join(t);
    CHECK_EQ_INT(w2.r, CTX_CANCELED);
    CHECK(w2.held);

    /* Already done: returns at once, mutex still held. */
    pthread_mutex_lock(&mu);
    CHECK_EQ_INT(ctx_cond_wait(c, &cv, &mu), CTX_CANCELED);
    CHECK_EQ_INT(pthread_mutex_unlock(&mu), 0);

    /* A context that can never be done: an ordinary wait. */
    ctx_t *w3ctx = ctx_without_cancel(c);
    CHECK_NOT_NULL(w3ctx);
    pred = false;
    struct cond_waiter w3 = { w3ctx, &mu, &cv, &pred, -1, 0, false, 0, 0 };
    check_thread_start(&t, cond_waiter_main, &w3);
    cond_waiter_settle(&w3);
    CHECK_EQ_INT(atomic_load(&w3.done), 0);
    pthread_mutex_lock(&mu);
    pred = true;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    CHECK(check_wait_flag(&w3.done, 1, BOUND));
    check_thread_join(t);
    CHECK_EQ_INT(w3.r, 0);
    CHECK(w3.held);
    ctx_unref(w3ctx);

    /* Many ordinary wake-ups (another thread broadcasts without end)
     * leave no registration behind, and each returns 0 with the mutex
     * held. */
    ctx_t *c4 = ctx_with_cancel(ctx_background(), &cc);
    CHECK_NOT_NULL(c4);
    long before = check_alloc_live();
    struct noise nz = { &mu, &cv, 0 };
    pthread_t nt;
    check_thread_start(&nt, noise_main, &nz);
    for (int i = 0; i < 200; i++) {
        CHECK_EQ_INT(pthread_mutex_lock(&mu), 0);
        CHECK_EQ_INT(ctx_cond_wait(c4, &cv, &mu), 0);
        CHECK_EQ_INT(pthread_mutex_unlock(&mu), 0);
    }
    atomic_store(&nz.stop, 1);
    check_thread_join(nt);
    CHECK_EQ_INT(check_alloc_live(), before);
    ctx_cancel(cc);
    ctx_unref(c4);

    ctx_unref(c);
    pthread_cond_destroy(&cv);
    pthread_mutex_destroy(&mu);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* Go's AfterFunc condition-variable example: several waiters on one cond,
 * each with its own short timeout (as in Go), or all on one context that
 * the main thread cancels; every waiter must come back with the err, for
 * hundreds of rounds.  A lost wake-up leaves a waiter asleep for good and
 * fails the bound.  Some rounds add a thread that broadcasts for no reason,
 * so the waiters also see ordinary wake-ups. */
static void test_cond_example(void)
{
    enum { NW = 4 };
    int rounds = (int)check_scale(300);
    check_rng_t rng = check_rng_make(check_seed() ^ 0xc0d);
    pthread_mutex_t mu;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    errorcheck_mutex_init(&mu);
    bool pred = false;
    long base = check_alloc_live();
    int spurious = 0;
    for (int round = 0; round < rounds; round++) {
        bool shared = round % 2 == 1;
        bool noisy = round % 3 == 2;
        ctx_cancel_t *sc = NULL;
        ctx_t *sctx = NULL;
        if (shared) {
            sctx = ctx_with_cancel(ctx_background(), &sc);
            CHECK_NOT_NULL(sctx);
        }
        struct cond_waiter w[NW];
        ctx_t *own[NW] = { 0 };
        pthread_t t[NW];
        for (int i = 0; i < NW; i++) {
            if (shared) {
                own[i] = ctx_with_value(sctx, &key, NULL, NULL);
            } else {
                own[i] = ctx_with_timeout(ctx_background(), CTX_MILLISECOND, NULL);
            }
            CHECK_NOT_NULL(own[i]);
            w[i] = (struct cond_waiter){ own[i], &mu, &cv, &pred, -1, 0, false, 0, 0 };
        }
        struct noise nz = { &mu, &cv, 0 };
        pthread_t nt;
        if (noisy)
            check_thread_start(&nt, noise_main, &nz);
        for (int i = 0; i < NW; i++)
            check_thread_start(&t[i], cond_waiter_main, &w[i]);
        if (shared) {
            /* Cancel at a random moment, from before the waiters register
             * to after they sleep. */
            check_sleep_ns((ctx_duration_t)check_rng_below(&rng, 1500) * CTX_MICROSECOND);
            ctx_cancel(sc);
        }
        for (int i = 0; i < NW; i++) {
            CHECK_MSG(check_wait_flag(&w[i].done, 1, BOUND), "round %d: waiter %d lost its wake-up",
                      round, i);
            check_thread_join(t[i]);
            CHECK_EQ_INT(w[i].r, shared ? CTX_CANCELED : CTX_DEADLINE_EXCEEDED);
            CHECK(w[i].held);
            spurious += w[i].zeros;
        }
        if (noisy) {
            atomic_store(&nz.stop, 1);
            check_thread_join(nt);
        }
        for (int i = 0; i < NW; i++)
            ctx_unref(own[i]);
        ctx_unref(sctx);
    }
    fprintf(stderr, "   %d rounds, %d ordinary wake-ups\n", rounds, spurious);
    pthread_cond_destroy(&cv);
    pthread_mutex_destroy(&mu);
    /* Deadline callbacks drop their references on library threads. */
    ctx_time_t end = check_mono_now() + BOUND;
    while (check_alloc_live() != base && check_mono_now() < end)
        check_sleep_ns(CTX_MILLISECOND);
    CHECK_EQ_INT(check_alloc_live(), base);
}

int main(void)
{
    check_alloc_install();
    check_seed();
    RUN_TEST(test_null);
    RUN_TEST(test_poll_and_timeouts);
    RUN_TEST(test_done_fd_basics);
    RUN_TEST(test_done_fd_never_done);
    RUN_TEST(test_done_fd_deadline);
    RUN_TEST(test_done_fd_race);
    RUN_TEST(test_done_fd_exhausted);
    RUN_TEST(test_wake_matrix);
    RUN_TEST(test_cond_signal);
    RUN_TEST(test_cond_example);
    RUN_TEST(test_thousand_waiters);
    fprintf(stderr, "ok\n");
    return 0;
}
