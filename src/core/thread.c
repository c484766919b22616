/*
 * The library's own threads: the timer thread, the callback workers, and
 * whatever later subsystems start.  This file is at the bottom of the
 * library: it calls nothing else in it, so every subsystem may use it.
 *
 * A library thread must not take the program's signals (signals belong to
 * the program's own threads, which may block some of them on purpose), so
 * every signal is blocked around its creation and the thread inherits that
 * mask.  It is detached (nobody joins it) and, where the system can
 * (platform.h), named, so that a thread listing or a debugger shows whose
 * it is.
 */
#include "internal.h"
#include "platform.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>

int ctx__thread_start_arg(void *(*fn)(void *), void *arg, size_t stack)
{
    pthread_attr_t a;
    int e = pthread_attr_init(&a);
    if (e != 0)
        return e;
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (stack != 0)
        pthread_attr_setstacksize(&a, stack);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    e = pthread_create(&tid, &a, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    return e;
}

int ctx__thread_start(void *(*fn)(void *), size_t stack)
{
    return ctx__thread_start_arg(fn, NULL, stack);
}

void ctx__thread_name(const char *name)
{
    ctx__plat_thread_name(name);
}
