/* SPDX-License-Identifier: MIT */

/*
 * Edges: what happens at the limits of the machine and of the contract.
 *
 *   - a chain 1,000,000 contexts deep (cancel and value layers alternating)
 *     is made, looked through, described, waited on, cancelled and freed on
 *     a thread with a 64 KiB stack (the same under the sanitizers; half
 *     the depth under ThreadSanitizer, through check_scale), and so is a
 *     chain freed without being cancelled, and a node with 200,000
 *     children;
 *   - deadlines and timeouts at the ends of the clock (INT64_MIN, INT64_MAX,
 *     saturating sums), including the manual clock advanced to its end;
 *   - file-descriptor exhaustion: with RLIMIT_NOFILE low, ctx_done_fd fails
 *     with EMFILE and every other call keeps working; fds made before keep
 *     signalling, and freeing contexts makes room again;
 *   - fork() with live timers and done fds: in both processes timeouts
 *     fire on time, done fds signal their own process's cancellation and
 *     nothing else;
 *   - misuse: dropping a reference the caller does not hold aborts with
 *     "reference count underflow" in a debug build (checked in a child;
 *     skipped when the library is built with NDEBUG, which has no check).
 *
 * Children that could hang are bounded by alarm(); the parent waits for
 * them with a bound.
 */
#include "check.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>

#if CHECK_TSAN
/* The fork test's children restart the library's timer thread, which
 * ThreadSanitizer forbids after a multithreaded fork unless told. */
const char *__tsan_default_options(void);
const char *__tsan_default_options(void)
{
    return "die_after_fork=0";
}
#endif

/* A counter that can be waited on: callbacks on library threads bump it. */
struct flag {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
};

static struct flag fired = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };

static void flag_reset(struct flag *f)
{
    pthread_mutex_lock(&f->mu);
    f->n = 0;
    pthread_mutex_unlock(&f->mu);
}

static int flag_get(struct flag *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->n;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* Waits until the count reaches n (CTest's timeout bounds a hang). */
static void flag_wait(struct flag *f, int n)
{
    pthread_mutex_lock(&f->mu);
    while (f->n < n)
        pthread_cond_wait(&f->cv, &f->mu);
    pthread_mutex_unlock(&f->mu);
}

static void count_fn(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&fired.mu);
    fired.n++;
    pthread_cond_broadcast(&fired.cv);
    pthread_mutex_unlock(&fired.mu);
}

static const ctx_key_t key_top = { .name = "top" };
static const ctx_key_t key_layer = { .name = "layer" };

static bool readable(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    int r;
    do
        r = poll(&p, 1, 0);
    while (r < 0 && errno == EINTR);
    CHECK(r >= 0);
    return r == 1 && (p.revents & POLLIN);
}

/* Waits up to 5 s for fd to turn readable.  A context that another thread
 * ends (the timer thread) is marked done an instant before its fd is
 * written: readable implies done, done implies readable soon. */
static bool readable_soon(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    int r;
    do
        r = poll(&p, 1, 5000);
    while (r < 0 && errno == EINTR);
    CHECK(r >= 0);
    return r == 1 && (p.revents & POLLIN);
}

/* Checks that the allocator is back to `live0`.  A deadline's callback
 * releases its registration (and with it the context) on a library thread
 * after the callback returns, unobservably: give it up to 5 s. */
static void check_settles(long live0)
{
    for (int i = 0; i < 5000 && check_alloc_live() != live0; i++) {
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    CHECK_EQ_INT(check_alloc_live(), live0);
}

/* Runs fn(arg) on a new thread with the given stack size and waits. */
static void run_on_stack(size_t stack, void *(*fn)(void *), void *arg)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    long min = sysconf(_SC_THREAD_STACK_MIN);
    if (min > 0 && stack < (size_t)min)
        stack = (size_t)min;
    CHECK_EQ_INT(pthread_attr_setstacksize(&a, stack), 0);
    pthread_t t;
    int e = pthread_create(&t, &a, fn, arg);
    CHECK_MSG(e == 0, "pthread_create: %s", strerror(e));
    pthread_attr_destroy(&a);
    check_thread_join(t);
}

/* 64 KiB: enough for the library at any depth, and for the sanitizers'
 * larger frames (gcc and clang, -O0 to -O2, ASan+UBSan and TSan). */
static size_t small_stack(void)
{
    return 64 * 1024;
}

/* ---------------------------------------------------------------------------
 * Deep and wide
 */

struct deep {
    long depth;
    bool cancel_first;
};

static int top_value;

static void *deep_main(void *arg)
{
    struct deep *d = arg;
    long live0 = check_alloc_live();
    ctx_cancel_t *top_h;
    ctx_t *top = ctx_with_cancel(ctx_background(), &top_h);
    CHECK_NOT_NULL(top);
    ctx_t *with_key = ctx_with_value(top, &key_top, &top_value, NULL);
    CHECK_NOT_NULL(with_key);
    ctx_t *c = ctx_ref(with_key);
    /* Alternating layers; each step hands our reference over to the child. */
    for (long i = 0; i < d->depth; i++) {
        ctx_t *k = (i & 1) ? ctx_with_value(c, &key_layer, (void *)(intptr_t)i, NULL)
                           : ctx_with_cancel(c, NULL);
        CHECK_NOT_NULL(k);
        ctx_unref(c);
        c = k;
    }
    ctx_unref(with_key);
    /* Lookups walk the whole chain without recursion. */
    CHECK_PTR_EQ(ctx_value(c, &key_top), &top_value);
    long last_value_layer = (d->depth & 1) ? d->depth - 2 : d->depth - 1;
    CHECK_PTR_EQ(ctx_value(c, &key_layer), (void *)(intptr_t)last_value_layer);
    CHECK(!ctx_deadline(c, NULL));
    char buf[64];
    size_t n = ctx_describe(c, buf, sizeof buf);
    CHECK(n > (size_t)d->depth * 10); /* every layer is in the length */
    CHECK(strncmp(buf, "context.Background.WithCancel.WithValue(top", 43) == 0);
    CHECK_NOT_DONE(c);
    CHECK_EQ_INT(ctx_wait(c, CTX_MILLISECOND), 0);
    int fd = ctx_done_fd(c);
    CHECK(fd >= 0);
    CHECK(!readable(fd));
    if (d->cancel_first) {
        /* One cancel reaches the bottom, half a million cancel layers
         * down, and runs the callback registered there. */
        flag_reset(&fired);
        CHECK_EQ_INT(ctx_after_func(c, count_fn, NULL, NULL), 0);
        ctx_cancel_cause(top_h, EHOSTDOWN, "deep");
        CHECK_DONE(c, CTX_CANCELED, EHOSTDOWN, "deep");
        CHECK(readable(fd));
        CHECK_EQ_INT(flag_get(&fired), 1);
        CHECK_EQ_INT(ctx_wait(c, CTX_FOREVER), CTX_CANCELED);
    }
    /* Freeing the bottom frees the chain up to top, iteratively: a done
     * chain as it is, a live one detaching every layer from its parent. */
    ctx_unref(c);
    CHECK(check_alloc_live() < live0 + 8);
    ctx_cancel(top_h);
    ctx_unref(top);
    CHECK_EQ_INT(check_alloc_live(), live0);
    return NULL;
}

static void test_deep_chain(void)
{
    long depth = check_scale(1000000);
    struct deep d = { depth, true };
    run_on_stack(small_stack(), deep_main, &d);
    d.cancel_first = false;
    run_on_stack(small_stack(), deep_main, &d);
    fprintf(stderr, "   %ld layers on a %zu KiB stack\n", depth, small_stack() / 1024);
}

static void *wide_main(void *arg)
{
    long width = *(long *)arg;
    /* A first deadline on this thread: the library may keep per-thread
     * timer state, made once. */
    ctx_unref(ctx_with_timeout(ctx_background(), CTX_HOUR, NULL));
    long live0 = check_alloc_live();
    ctx_cancel_t *h;
    ctx_t *p = ctx_with_cancel(ctx_background(), &h);
    CHECK_NOT_NULL(p);
    ctx_t **kids = malloc((size_t)width * sizeof *kids);
    CHECK_NOT_NULL(kids);
    for (long i = 0; i < width; i++) {
        kids[i] = (i % 3 == 0) ? ctx_with_timeout(p, CTX_HOUR, NULL) : ctx_with_cancel(p, NULL);
        CHECK_NOT_NULL(kids[i]);
    }
    /* Free every other one while live: each leaves its parent's list. */
    for (long i = 0; i < width; i += 2)
        ctx_unref(kids[i]);
    ctx_cancel(h);
    for (long i = 1; i < width; i += 2)
        CHECK_CANCELED(kids[i]);
    for (long i = 1; i < width; i += 2)
        ctx_unref(kids[i]);
    ctx_unref(p);
    free(kids);
    CHECK_EQ_INT(check_alloc_live(), live0);
    return NULL;
}

static void test_wide(void)
{
    long width = check_scale(200000);
    run_on_stack(small_stack(), wide_main, &width);
}

/* ---------------------------------------------------------------------------
 * The ends of the clock
 */

static void test_extreme_times(void)
{
    char buf[256];
    ctx_time_t d;
    /* Long past: done at birth; far future: not done; both describable. */
    ctx_t *past = ctx_with_deadline(ctx_background(), INT64_MIN, NULL);
    CHECK_NOT_NULL(past);
    CHECK_DONE(past, CTX_DEADLINE_EXCEEDED, CTX_DEADLINE_EXCEEDED, "context deadline exceeded");
    CHECK(ctx_deadline(past, &d) && d == INT64_MIN);
    CHECK(ctx_describe(past, buf, sizeof buf) > 0);
    ctx_t *future = ctx_with_deadline(ctx_background(), INT64_MAX, NULL);
    CHECK_NOT_NULL(future);
    CHECK_NOT_DONE(future);
    CHECK(ctx_deadline(future, &d) && d == INT64_MAX);
    CHECK(ctx_describe(future, buf, sizeof buf) > 0);
    /* Timeouts saturate instead of overflowing. */
    ctx_t *forever = ctx_with_timeout(future, INT64_MAX, NULL);
    CHECK_NOT_NULL(forever);
    CHECK(ctx_deadline(forever, &d) && d == INT64_MAX);
    CHECK_NOT_DONE(forever);
    ctx_t *never = ctx_with_timeout_cause(ctx_background(), INT64_MIN, EIO, "min", NULL);
    CHECK_NOT_NULL(never);
    CHECK_DONE(never, CTX_DEADLINE_EXCEEDED, EIO, "min");
    CHECK(ctx_describe(never, buf, sizeof buf) > 0);
    CHECK_EQ_INT(ctx_wait(forever, 0), 0);
    CHECK_EQ_INT(ctx_sleep(never, INT64_MAX), CTX_DEADLINE_EXCEEDED);
    /* Wall-clock instants far away saturate too (where time_t reaches
     * that far: a 32-bit one ends in 2038). */
    if (sizeof(time_t) >= 8) {
        struct timespec far = { (time_t)INT64_MAX / 2, 0 }, early = { (time_t)INT64_MIN / 2, 0 };
        CHECK_EQ_INT(ctx_time_from_wall(&far), INT64_MAX);
        CHECK_EQ_INT(ctx_time_from_wall(&early), INT64_MIN);
    }
    ctx_unref(forever);
    ctx_unref(future);
    ctx_unref(past);
    ctx_unref(never);
}

/* Runs fn in a child process that must exit 0 within `seconds`. */
static void in_child(const char *what, void (*fn)(void), unsigned seconds)
{
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(seconds);
        fn();
        fflush(NULL);
        _exit(0);
    }
    int st;
    CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st))
        CHECK_MSG(0, "%s: the child died of signal %d%s", what, WTERMSIG(st),
                  WTERMSIG(st) == SIGALRM ? " (it hung)" : "");
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: the child exited with %d", what,
              WEXITSTATUS(st));
}

/* The manual clock advanced to the end of time, in a child (it switches
 * the whole process). */
static void manual_clock_end(void)
{
    CHECK_EQ_INT(ctx_clock_manual(0), 0);
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_SECOND, NULL);
    ctx_t *late = ctx_with_deadline(ctx_background(), INT64_MAX, NULL);
    CHECK_NOT_NULL(c);
    CHECK_NOT_NULL(late);
    CHECK_EQ_INT(ctx_clock_advance(INT64_MAX), 0);
    CHECK_EQ_INT(ctx_now(), INT64_MAX);
    CHECK_EQ_INT(ctx_err(c), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_err(late), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_clock_advance(CTX_HOUR), 0); /* stays at the end */
    CHECK_EQ_INT(ctx_now(), INT64_MAX);
    ctx_t *born = ctx_with_timeout(ctx_background(), CTX_NANOSECOND, NULL);
    CHECK_NOT_NULL(born);
    CHECK_EQ_INT(ctx_err(born), CTX_DEADLINE_EXCEEDED); /* now + 1 saturates to now */
    ctx_unref(born);
    ctx_unref(late);
    ctx_unref(c);
}

static void test_manual_clock_end(void)
{
    in_child("manual clock at INT64_MAX", manual_clock_end, 10);
}

/* ---------------------------------------------------------------------------
 * File-descriptor exhaustion
 */

static void test_fd_exhaustion(void)
{
    struct rlimit old;
    CHECK_EQ_INT(getrlimit(RLIMIT_NOFILE, &old), 0);
    /* A limit that leaves exactly 8 free descriptor numbers (new fds take
     * the lowest free number; those open above the limit stay usable). */
    int lim = 0;
    for (int fd = 0, free_fds = 0; fd < 4096 && free_fds < 8; fd++)
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF && ++free_fds == 8)
            lim = fd + 1;
    CHECK(lim > 0);
    struct rlimit low = old;
    low.rlim_cur = (rlim_t)lim;
    if (old.rlim_cur != RLIM_INFINITY && low.rlim_cur > old.rlim_cur) {
        fprintf(stderr, "   SKIP: RLIMIT_NOFILE is already too low\n");
        return;
    }
    long live0 = check_alloc_live();
    enum { MAX = 64 };
    ctx_t *cs[MAX];
    ctx_cancel_t *hs[MAX];
    int fds[MAX], n = 0, e = 0;
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &low), 0);
    for (; n < MAX; n++) {
        cs[n] = ctx_with_cancel(ctx_background(), &hs[n]);
        CHECK_NOT_NULL(cs[n]);
        errno = 0;
        fds[n] = ctx_done_fd(cs[n]);
        if (fds[n] < 0) {
            e = errno;
            break;
        }
    }
    CHECK_MSG(n < MAX, "ctx_done_fd never failed under RLIMIT_NOFILE %ld", (long)low.rlim_cur);
    CHECK_EQ_INT(fds[n], -1);
    CHECK_MSG(e == EMFILE, "errno %d (%s), want EMFILE", e, strerror(e));
    CHECK(n > 0);
    ctx_t *starved = cs[n];
    /* Everything else works. */
    CHECK_EQ_INT(ctx_done_fd(cs[0]), fds[0]); /* an existing fd is still there */
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(starved), -1);
    CHECK_EQ_INT(errno, EMFILE);
    ctx_t *v = ctx_with_value(starved, &key_top, &top_value, NULL);
    ctx_t *t = ctx_with_timeout(v, 20 * CTX_MILLISECOND, NULL);
    ctx_t *w = ctx_without_cancel(t);
    CHECK_NOT_NULL(v);
    CHECK_NOT_NULL(t);
    CHECK_NOT_NULL(w);
    errno = 0;
    CHECK_EQ_INT(ctx_done_fd(w), -1); /* never done: no fd needed */
    CHECK_EQ_INT(errno, 0);
    flag_reset(&fired);
    CHECK_EQ_INT(ctx_after_func(t, count_fn, NULL, NULL), 0);
    CHECK_EQ_INT(ctx_wait(t, 5 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK_PTR_EQ(ctx_value(w, &key_top), &top_value);
    flag_wait(&fired, 1); /* on a callback thread */
    ctx_cancel_cause(hs[n], EIO, "no fds");
    CHECK_DONE(starved, CTX_CANCELED, EIO, "no fds");
    CHECK_EQ_INT(ctx_wait(v, CTX_FOREVER), CTX_CANCELED);
    /* The fds made before still signal. */
    for (int i = 0; i < n; i++) {
        CHECK(!readable(fds[i]));
        ctx_cancel(hs[i]);
        CHECK(readable(fds[i]));
    }
    /* Freeing contexts closes their fds and makes room. */
    ctx_unref(cs[0]);
    ctx_t *again = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(again);
    CHECK(ctx_done_fd(again) >= 0);
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &old), 0);
    ctx_unref(again);
    ctx_unref(w);
    ctx_unref(t);
    ctx_unref(v);
    for (int i = 1; i <= n; i++)
        ctx_unref(cs[i]);
    check_settles(live0);
    fprintf(stderr, "   EMFILE after %d done fds\n", n);
}

/* ---------------------------------------------------------------------------
 * fork
 */

struct forked {
    ctx_t *mine, *theirs; /* done fds made before the fork */
    ctx_cancel_t *mine_h, *theirs_h;
    int mine_fd, theirs_fd;
    ctx_t *timer; /* a live timeout made before the fork */
    int timer_fd;
    ctx_time_t timer_deadline;
    ctx_t *far; /* a deadline that must not fire */
};

static void wait_byte(int fd)
{
    char b;
    ssize_t r;
    do
        r = read(fd, &b, 1);
    while (r < 0 && errno == EINTR);
    CHECK_EQ_INT(r, 1);
}

static void send_byte(int fd)
{
    CHECK_EQ_INT(write(fd, "x", 1), 1);
}

/* One side of the fork: `mine` is cancelled here, `theirs` on the other
 * side.  `go_in` tells us the other side cancelled `theirs`, `go_out`
 * tells the other side we cancelled `mine`. */
static void fork_side(struct forked *f, int go_in, int go_out, bool first)
{
    /* The timeout made before the fork fires here too, on time, and runs
     * its AfterFunc; a new one works as well. */
    CHECK_EQ_INT(ctx_wait(f->timer, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK(ctx_now() >= f->timer_deadline);
    CHECK(readable_soon(f->timer_fd));
    ctx_t *fresh = ctx_with_timeout(ctx_background(), 20 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(fresh);
    int fresh_fd = ctx_done_fd(fresh);
    CHECK(fresh_fd >= 0);
    CHECK_EQ_INT(ctx_wait(fresh, 10 * CTX_SECOND), CTX_DEADLINE_EXCEEDED);
    CHECK(readable_soon(fresh_fd));
    ctx_unref(fresh);
    flag_wait(&fired, 1); /* the callback thread (restarted in the child) */
    CHECK_EQ_INT(flag_get(&fired), 1);
    CHECK_NOT_DONE(f->far);

    /* Done fds signal this process's cancellations, and only those. */
    if (first) {
        CHECK(!readable(f->mine_fd));
        ctx_cancel(f->mine_h);
        CHECK(readable(f->mine_fd));
        send_byte(go_out);
        wait_byte(go_in);
    } else {
        wait_byte(go_in);
        CHECK(!readable(f->mine_fd));
        ctx_cancel(f->mine_h);
        CHECK(readable(f->mine_fd));
        send_byte(go_out);
    }
    /* The other process cancelled its copy of `theirs`. */
    CHECK_NOT_DONE(f->theirs);
    CHECK_MSG(!readable(f->theirs_fd),
              "%s: a done fd made before fork() signals a cancellation in the other process",
              first ? "parent" : "child");
}

static void test_fork(void)
{
    long live0 = check_alloc_live();
    struct forked f;
    f.mine = ctx_with_cancel(ctx_background(), &f.mine_h);     /* the parent cancels it */
    f.theirs = ctx_with_cancel(ctx_background(), &f.theirs_h); /* the child cancels it */
    CHECK_NOT_NULL(f.mine);
    CHECK_NOT_NULL(f.theirs);
    f.mine_fd = ctx_done_fd(f.mine);
    f.theirs_fd = ctx_done_fd(f.theirs);
    CHECK(f.mine_fd >= 0 && f.theirs_fd >= 0);
    f.timer = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(f.timer);
    CHECK(ctx_deadline(f.timer, &f.timer_deadline));
    f.timer_fd = ctx_done_fd(f.timer);
    CHECK(f.timer_fd >= 0);
    flag_reset(&fired);
    CHECK_EQ_INT(ctx_after_func(f.timer, count_fn, NULL, NULL), 0);
    f.far = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(f.far);

    int to_child[2], to_parent[2];
    CHECK_EQ_INT(pipe(to_child), 0);
    CHECK_EQ_INT(pipe(to_parent), 0);
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        alarm(30);
        close(to_child[1]);
        close(to_parent[0]);
        struct forked g = f;
        /* In the child the roles swap. */
        g.mine = f.theirs;
        g.mine_h = f.theirs_h;
        g.mine_fd = f.theirs_fd;
        g.theirs = f.mine;
        g.theirs_h = f.mine_h;
        g.theirs_fd = f.mine_fd;
        fork_side(&g, to_child[0], to_parent[1], false);
        fflush(NULL);
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    fork_side(&f, to_parent[0], to_child[1], true);
    int st;
    CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child failed (status %#x)", st);
    close(to_child[1]);
    close(to_parent[0]);
    ctx_unref(f.mine);
    ctx_unref(f.theirs);
    ctx_unref(f.timer);
    ctx_unref(f.far);
    check_settles(live0);
}

/* ---------------------------------------------------------------------------
 * Misuse
 */

/* An allocator that never gives memory back, so that a freed context can
 * still be read: dropping a reference to it again then meets a count of
 * zero instead of reused memory. */
static void *keep_malloc(size_t n)
{
    return malloc(n);
}

static void keep_free(void *p)
{
    (void)p;
}

/* The child of expect_misuse: body is a pointer to the function to run. */
static void misuse_child(void *body)
{
    CHECK_EQ_INT(ctx_replace_allocator(keep_malloc, keep_free), 0);
    (*(void (**)(void))body)();
}

/* Runs body in a child whose allocator never frees (so freed memory keeps
 * what the library wrote into it) and checks that it dies of SIGABRT
 * saying `message`.  These checks stay in release builds: a child that
 * exits normally fails the test. */
static void expect_misuse(void (*body)(void), const char *message)
{
    check_child_aborts(misuse_child, &body, message);
    fprintf(stderr, "   caught: %s\n", message);
}

static void unref_too_often(void)
{
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    ctx_ref(c);
    ctx_unref(c);
    ctx_unref(c); /* the last reference: freed */
    ctx_unref(c); /* one too many */
}

static void test_unref_underflow(void)
{
    expect_misuse(unref_too_often, "reference count underflow");
}

static void noop_fn(void *arg)
{
    (void)arg;
}

static void stop_twice(void)
{
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(c, noop_fn, NULL, &stop), 0);
    CHECK(ctx_after_stop(stop));
    ctx_after_stop(stop); /* the handle was released by the first call */
}

static void test_after_stop_twice(void)
{
    expect_misuse(stop_twice, "already stopped");
}

/* A context passed where its cancel handle belongs: handles are numbers
 * that no pointer decodes as, so this is caught in every build.  (A freed
 * context's handle is no misuse at all: test_lifetime.) */
static void cancel_foreign(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel((ctx_cancel_t *)(void *)c);
}

static void test_cancel_foreign_handle(void)
{
    expect_misuse(cancel_foreign, "not a cancel handle");
}

int main(void)
{
    check_alloc_install();
    /* What the library keeps once made (the timer heap and thread): */
    ctx_unref(ctx_with_timeout(ctx_background(), CTX_HOUR, NULL));

    RUN_TEST(test_deep_chain);
    RUN_TEST(test_wide);
    RUN_TEST(test_extreme_times);
    RUN_TEST(test_manual_clock_end);
    RUN_TEST(test_fd_exhaustion);
    RUN_TEST(test_fork);
    RUN_TEST(test_unref_underflow);
    RUN_TEST(test_after_stop_twice);
    RUN_TEST(test_cancel_foreign_handle);
    return 0;
}
