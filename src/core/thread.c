/* SPDX-License-Identifier: MIT */

/*
 * The library's own threads: the timer thread, the callback workers, and
 * whatever later subsystems start.  This file is at the bottom of the
 * library: it calls nothing else in it besides registering its fork hooks,
 * so every subsystem may use it.
 *
 * A library thread must not take the program's signals (signals belong to
 * the program's own threads, which may block some of them on purpose), so
 * every signal is blocked around its creation and the thread inherits that
 * mask.  Where the system can (platform.h), it is named, so that a thread
 * listing or a debugger shows whose it is.
 *
 * Every library thread is joinable and listed in a registry, so that
 * ctx_shutdown can join them all (a valgrind-clean exit, a safe dlclose).
 * A thread that ends on its own (an idle pool or callback thread) leaves
 * the registry and detaches itself, unless ctx_shutdown is joining: then
 * it marks itself done and is joined.  Registry entries come from the C
 * library (like the handle table they are the library's own, outside
 * ctx_replace_allocator).
 */
#include "internal.h"
#include "platform.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

struct lthread {
    pthread_t tid;
    void *(*fn)(void *);
    void *arg;
    int done; /* fn returned; under reg_mu */
    struct lthread *next;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct lthread *reg; /* every library thread not yet joined */
static int joining;         /* ctx__thread_join_all runs; under reg_mu */

static void *trampoline(void *p)
{
    struct lthread *t = p;
    void *r = t->fn(t->arg);
    pthread_mutex_lock(&reg_mu);
    if (joining) {
        t->done = 1; /* ctx_shutdown joins it */
    } else {
        /* Ended on its own (idle): nobody will join it, so it leaves the
         * registry and detaches, and no finished thread is left unjoined
         * (a leak to ThreadSanitizer and valgrind). */
        for (struct lthread **pp = &reg; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == t) {
                *pp = t->next;
                break;
            }
        }
        pthread_detach(t->tid);
        free(t);
    }
    pthread_mutex_unlock(&reg_mu);
    return r;
}

/* Joins the threads that ended while ctx_shutdown was joining and that it
 * did not reach.  Under reg_mu: a done thread has nothing left to run but
 * its return, so the join does not wait. */
static void reap_locked(void)
{
    for (struct lthread **pp = &reg; *pp != NULL;) {
        struct lthread *t = *pp;
        if (!t->done) {
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        pthread_join(t->tid, NULL);
        free(t);
    }
}

int ctx__thread_start_arg(void *(*fn)(void *), void *arg, size_t stack)
{
    struct lthread *t = malloc(sizeof *t);
    if (t == NULL)
        return ENOMEM;
    t->fn = fn;
    t->arg = arg;
    t->done = 0;
    pthread_attr_t a;
    int e = pthread_attr_init(&a);
    if (e != 0) {
        free(t);
        return e;
    }
    if (stack != 0)
        pthread_attr_setstacksize(&a, stack);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* Under reg_mu, so that the entry has its tid before the thread can
     * mark itself done. */
    pthread_mutex_lock(&reg_mu);
    reap_locked();
    e = pthread_create(&t->tid, &a, trampoline, t);
    if (e == 0) {
        t->next = reg;
        reg = t;
    }
    pthread_mutex_unlock(&reg_mu);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    if (e != 0)
        free(t);
    return e;
}

void ctx__thread_join_begin(void)
{
    pthread_mutex_lock(&reg_mu);
    joining = 1; /* threads that end from now on wait to be joined */
    pthread_mutex_unlock(&reg_mu);
}

void ctx__thread_join_cancel(void)
{
    pthread_mutex_lock(&reg_mu);
    joining = 0;
    reap_locked(); /* those that ended meanwhile */
    pthread_mutex_unlock(&reg_mu);
}

int ctx__thread_join_all(void)
{
    int n = 0;
    for (;;) {
        pthread_mutex_lock(&reg_mu);
        struct lthread *t = reg;
        if (t != NULL)
            reg = t->next;
        else
            joining = 0;
        pthread_mutex_unlock(&reg_mu);
        if (t == NULL)
            return n;
        pthread_join(t->tid, NULL);
        free(t);
        n++;
    }
}

/* fork(2): the child has none of the parent's threads; forget them.  The
 * lock is not held across the fork (the subsystems' fork handlers take
 * their own locks, under which threads are started, in an order of their
 * own); instead the child makes a new lock and walks the list as the fork
 * left it, which is whole between any two of the stores above: an entry is
 * linked after it is filled and freed after it is unlinked. */
static void reg_child(void)
{
    pthread_mutex_init(&reg_mu, NULL);
    while (reg != NULL) {
        struct lthread *t = reg;
        reg = t->next;
        free(t);
    }
}

CTX__FORK_HOOKS(reg_hooks, .rank = CTX__FORK_RANK_THREADS, .child = reg_child)

int ctx__thread_start(void *(*fn)(void *), size_t stack)
{
    return ctx__thread_start_arg(fn, NULL, stack);
}

void ctx__thread_name(const char *name)
{
    ctx__plat_thread_name(name);
}
