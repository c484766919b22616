/* SPDX-License-Identifier: MIT */

/*
 * ctx_shutdown: every thread the library started ends and is joined, so the
 * process is back to one thread; EBUSY while a thread has work; the library
 * works again afterwards.  CTest also runs this program under valgrind
 * (test_shutdown_valgrind), which fails on any leak or error, and, given
 * the path of libctx.so, it loads the shared library with dlopen, uses
 * every thread, shuts down and dlcloses it.
 */
#include "check.h"

#include <ctx/io.h>

#include <dlfcn.h>
#include <signal.h>
#include <sys/socket.h>

/* ctx_shutdown, retried while it says EBUSY for work that just ended (a
 * callback or task whose thread has not gone back to idle yet), for at
 * most ten seconds. */
static int shutdown_when_idle(void)
{
    int e;
    for (int i = 0; i < 10000 && (e = ctx_shutdown()) == EBUSY; i++)
        check_sleep_ns(CTX_MILLISECOND);
    return e;
}

/* The process's thread count once it reaches want, or what it is after a
 * second: a joined thread's kernel task leaves /proc a moment after
 * pthread_join has returned (the kernel wakes the joiner first). */
static int threads_settled(int want)
{
    int n = check_thread_count();
    for (int i = 0; i < 1000 && n != want; i++) {
        check_sleep_ns(CTX_MILLISECOND);
        n = check_thread_count();
    }
    return n;
}

static void cb(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

static int task(ctx_t *ctx, void *arg)
{
    (void)ctx;
    atomic_fetch_add((atomic_int *)arg, 1);
    return 0;
}

/* The process's threads before the library started any.  Under
 * ThreadSanitizer its runtime may start a thread of its own on the way. */
static int base_threads;
#define SAN_THREADS CHECK_TSAN

/* Starts every kind of library thread, checks that ctx_shutdown refuses
 * while they have work, and ends with none left. */
static void use_everything_then_shut_down(void)
{
    CHECK_EQ_INT(ctx_shutdown(), 0); /* nothing started yet: nothing to do */

    /* The timer thread and a callback worker: a deadline that passes with
     * an AfterFunc. */
    atomic_int fired = 0;
    ctx_t *d = ctx_with_timeout(ctx_background(), 20 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(d);
    CHECK_EQ_INT(ctx_after_func(d, cb, &fired, NULL), 0);
    ctx_t *pending = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(pending);
    CHECK(check_wait_flag(&fired, 1, 10 * CTX_SECOND));
    CHECK_EQ_INT(ctx_shutdown(), EBUSY); /* an hour's deadline is pending */
    ctx_unref(pending);
    ctx_unref(d);

    /* The group pool. */
    atomic_int ran = 0;
    ctx_group_t *g = ctx_group_new(ctx_background(), NULL);
    CHECK_NOT_NULL(g);
    for (int i = 0; i < 8; i++)
        CHECK_EQ_INT(ctx_group_go(g, task, &ran), 0);
    CHECK_EQ_INT(ctx_group_wait(g, NULL), 0);
    CHECK_EQ_INT(atomic_load(&ran), 8);

    /* The signal thread. */
    ctx_cancel_t *sc;
    ctx_t *s = ctx_with_signals(ctx_background(), (int[]){ SIGUSR1 }, 1, &sc);
    CHECK_NOT_NULL(s);
    CHECK_EQ_INT(ctx_shutdown(), EBUSY); /* a live signal context */
    ctx_cancel(sc);
    ctx_unref(s);

    /* The peer-close watcher. */
    int sv[2];
    CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    ctx_t *p = ctx_with_peer_close(ctx_background(), sv[0], NULL);
    CHECK_NOT_NULL(p);
    CHECK_EQ_INT(ctx_shutdown(), EBUSY); /* a live watch */
    ctx_unref(p);
    close(sv[0]);
    close(sv[1]);

    CHECK(check_thread_count() > base_threads);
    CHECK_EQ_INT(shutdown_when_idle(), 0);
    if (SAN_THREADS)
        CHECK_LE_INT(threads_settled(base_threads), base_threads + 1);
    else
        CHECK_EQ_INT(threads_settled(base_threads), base_threads);
}

static void test_shutdown(void)
{
    use_everything_then_shut_down();
    /* Usable again: each thread starts anew, and a second shutdown ends
     * them again. */
    use_everything_then_shut_down();
}

/* The same through dlopen: after ctx_shutdown no code of the library runs
 * on any thread, so dlclose may unmap it. */
static void test_dlclose(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CHECK_MSG(h != NULL, "dlopen %s: %s", path, dlerror());
    /* POSIX's way from dlsym's void * to a function pointer: copy the
     * bytes (ISO C has no conversion between the two). */
#define SYM(var, name)                                                                             \
    do {                                                                                           \
        void *p_ = dlsym(h, name);                                                                 \
        memcpy(&(var), &p_, sizeof p_);                                                            \
    } while (0)
    ctx_t *(*bg)(void);
    ctx_t *(*with_timeout)(ctx_t *, ctx_duration_t, ctx_cancel_t **);
    int (*wait)(ctx_t *, ctx_duration_t);
    void (*unref)(ctx_t *);
    int (*shutdown)(void);
    SYM(bg, "ctx_background");
    SYM(with_timeout, "ctx_with_timeout");
    SYM(wait, "ctx_wait");
    SYM(unref, "ctx_unref");
    SYM(shutdown, "ctx_shutdown");
    CHECK(bg != NULL && with_timeout != NULL && wait != NULL && unref != NULL && shutdown != NULL);
    ctx_t *c = with_timeout(bg(), 10 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(wait(c, CTX_FOREVER), CTX_DEADLINE_EXCEEDED); /* the timer thread ran */
    unref(c);
    int threads = check_thread_count();
    CHECK(threads > 1);
    CHECK_EQ_INT(shutdown(), 0);
    CHECK_EQ_INT(threads_settled(threads - 1), threads - 1);
    CHECK_EQ_INT(dlclose(h), 0);
}

int main(int argc, char **argv)
{
    base_threads = check_thread_count();
    RUN_TEST(test_shutdown);
    if (argc > 1)
        test_dlclose(argv[1]);
    return 0;
}
