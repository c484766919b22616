/* SPDX-License-Identifier: MIT */

/*
 * Signal contexts (Go's signal.NotifyContext).
 *
 * The kernel delivers a process-directed signal to any thread that does not
 * block it, so the library cannot rely on masks (sigwaitinfo would need the
 * signal blocked in every thread, which only the program can arrange).
 * Instead a handler installed with sigaction writes the signal's number to
 * a pipe, whichever thread it runs on, and one library thread (which blocks
 * every signal) reads the pipe and cancels the live contexts that asked for
 * that signal.
 *
 * Each signal context is a custom node with a record in one list.  The
 * first live context for a signal saves the previous action and installs
 * the handler; the last one to end restores it.  A context ends for this
 * purpose when it is done (an AfterFunc-style record on the node itself,
 * which, like merge.c's, holds no reference, runs in the cancelling
 * thread) or freed (the destroy hook), whichever comes first.
 *
 * A signal that the thread reads after every context for it has ended is
 * sent again with kill(2) once the previous action is back, so it gets that
 * handling (a second Ctrl-C kills).
 *
 * fork(2): the handlers hold the list's mutex and block every signal in
 * the forking thread across the fork.  The child makes its own pipe in its
 * fork handler (so a signal sent to the child never reaches the parent's
 * thread, and one that arrives from then on waits in the pipe), but not its
 * reading thread: only async-signal-safe calls are allowed there, and
 * sanitizer runtimes strand a thread made at that point (timer.c's timer
 * thread is restarted the same way).  The thread starts on the child's
 * first call that waits (through ctx__timer_restart) or makes a signal
 * context.
 *
 * Lock order: S.mu, then node locks (ctx__cancel is called without S.mu,
 * but the reading thread takes references under it).
 */
#include "internal.h"
#include "platform.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sigctx {
    struct ctx self; /* AFTER record on the node: first, for its alignment */
    struct ctx *c;
    sigset_t set;
    int registered; /* holds its counts in S.count */
    struct sigctx *next, **pprev;
};

static struct {
    pthread_mutex_t mu;
    struct sigctx *head;
    int count[NSIG];   /* live contexts per signal */
    int pending[NSIG]; /* read after its contexts ended: send again */
    struct sigaction old[NSIG];
    struct ctx__msg *msg[NSIG]; /* "<name> signal received", kept for ever */
    int rfd;
    int thread; /* the reading thread runs */
    int quit;   /* ctx_shutdown asked it to end: a 0 byte follows */
    sigset_t fork_mask;
} S = { .mu = PTHREAD_MUTEX_INITIALIZER, .rfd = -1 };

/* The pipe's write end, read by the handler: lock-free, so async-signal
 * safe. */
static _Atomic int wfd = -1;

static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Set in a forked child that inherited live signal contexts and has no
 * reading thread yet; cleared once it runs.  Relaxed: a hint, read and
 * acted on under S.mu. */
static _Atomic int restart_needed;

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    int fd = atomic_load_explicit(&wfd, memory_order_relaxed);
    if (fd >= 0 && write(fd, &b, 1) < 0) {
        /* A full pipe already holds wake-ups for the reading thread. */
    }
    errno = saved;
}

/* Restores sig's previous action if no live context wants it any more.
 * Under S.mu. */
static void release_signal_locked(int sig)
{
    if (--S.count[sig] != 0)
        return;
    sigaction(sig, &S.old[sig], NULL);
    if (S.pending[sig]) {
        S.pending[sig] = 0;
        kill(getpid(), sig);
    }
}

static void deregister_locked(struct sigctx *r)
{
    if (!r->registered)
        return;
    r->registered = 0;
    for (int sig = 1; sig < NSIG; sig++)
        if (sigismember(&r->set, sig) == 1)
            release_signal_locked(sig);
    *r->pprev = r->next;
    if (r->next != NULL)
        r->next->pprev = r->pprev;
}

/* The record on the node ran: the context is done. */
static void sig_done(void *arg)
{
    pthread_mutex_lock(&S.mu);
    deregister_locked(arg);
    pthread_mutex_unlock(&S.mu);
}

static void sig_destroy(void *data)
{
    struct sigctx *r = data;
    /* true: never done, so sig_done never ran and never will; false: it
     * ran (ctx_after_stop waited for it). */
    if (ctx_after_stop((ctx_after_t *)&r->self)) {
        pthread_mutex_lock(&S.mu);
        deregister_locked(r);
        pthread_mutex_unlock(&S.mu);
    }
    ctx__record_quiesce(&r->self);
    ctx__free(r);
}

static size_t sig_describe(void *data, char *buf, size_t size)
{
    struct sigctx *r = data;
    size_t pos = 0;
    int first = 1;
    const char *p = "WithSignals(";
    for (; *p; p++, pos++)
        if (pos + 1 < size)
            buf[pos] = *p;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sigismember(&r->set, sig) != 1)
            continue;
        char num[16];
        int len = snprintf(num, sizeof num, "%s%d", first ? "" : ",", sig);
        for (int i = 0; i < len; i++, pos++)
            if (pos + 1 < size)
                buf[pos] = num[i];
        first = 0;
    }
    if (pos + 1 < size)
        buf[pos] = ')';
    pos++;
    if (size > 0)
        buf[pos < size ? pos : size - 1] = '\0';
    return pos;
}

static const ctx_custom_ops_t sig_ops = {
    .name = "WithSignals",
    .describe = sig_describe,
    .destroy = sig_destroy,
};

/* Cancels every live context that wants sig.  Called without S.mu. */
static void deliver(int sig)
{
    struct ctx *found[64];
    int n, first = 1;
    do {
        n = 0;
        pthread_mutex_lock(&S.mu);
        struct sigctx *r = S.head;
        while (r != NULL && n < 64) {
            struct sigctx *next = r->next;
            /* A node whose count reached zero is being freed; its destroy
             * hook waits for S.mu to take it off the list. */
            if (sigismember(&r->set, sig) == 1 && ctx__try_ref(r->c)) {
                found[n++] = r->c;
                /* Restore the previous handling before the context is
                 * seen done, as a cancel by hand does before it returns. */
                deregister_locked(r);
            }
            r = next;
        }
        if (n == 0 && first && S.count[sig] > 0)
            S.pending[sig] = 1; /* ending, not yet ended: see release */
        else if (n == 0 && first)
            kill(getpid(), sig); /* the previous action is back */
        first = 0;
        pthread_mutex_unlock(&S.mu);
        for (int i = 0; i < n; i++) {
            ctx__cancel(found[i], CTX_CANCELED, EINTR, S.msg[sig], 0);
            ctx_unref(found[i]);
        }
        /* More than 64 take turns; the ones done are off the list. */
    } while (n == 64);
}

static void *watch_main(void *arg)
{
    (void)arg;
    for (;;) {
        unsigned char buf[64];
        pthread_mutex_lock(&S.mu);
        int fd = S.rfd;
        pthread_mutex_unlock(&S.mu);
        ssize_t got = read(fd, buf, sizeof buf);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return NULL; /* the pipe is gone: a forked child replaced it */
        for (ssize_t i = 0; i < got; i++) {
            if (buf[i] > 0 && buf[i] < NSIG) {
                deliver(buf[i]);
            } else if (buf[i] == 0) {
                /* ctx_shutdown's wake-up: end unless a context came since.
                 * The next signal context starts a new thread. */
                pthread_mutex_lock(&S.mu);
                int end = S.quit && S.head == NULL;
                S.quit = 0;
                if (end)
                    S.thread = 0;
                pthread_mutex_unlock(&S.mu);
                if (end)
                    return NULL;
            }
        }
    }
}

int ctx__signal_quit(void)
{
    pthread_mutex_lock(&S.mu);
    int busy = S.head != NULL;
    if (!busy && S.thread && !S.quit) {
        S.quit = 1;
        unsigned char zero = 0;
        if (write(atomic_load_explicit(&wfd, memory_order_relaxed), &zero, 1) != 1)
            S.quit = 0; /* a full pipe: the thread is busy reading */
    }
    int e = busy || (S.thread && !S.quit) ? EBUSY : 0;
    pthread_mutex_unlock(&S.mu);
    return e;
}

/* The pipe.  Under S.mu, or in the child's fork handler: making a pipe
 * and fcntl are plain system calls, safe there. */
static int make_pipe_locked(void)
{
    int fds[2];
    if (ctx__plat_pipe_cloexec(fds) != 0)
        return errno;
    /* The handler must never block. */
    fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK);
    S.rfd = fds[0];
    atomic_store_explicit(&wfd, fds[1], memory_order_relaxed);
    return 0;
}

/* Makes the pipe and starts the reading thread.  Under S.mu. */
static int start_locked(void)
{
    if (S.thread)
        return 0;
    if (S.rfd < 0) {
        int e = make_pipe_locked();
        if (e != 0)
            return e;
    }
    int e = ctx__sc_thread_start(watch_main, 0); /* runs AfterFunc callbacks */
    if (e != 0)
        return e;
    S.thread = 1;
    return 0;
}

static void fork_prepare(void)
{
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &S.fork_mask);
    pthread_mutex_lock(&S.mu);
}

static void fork_parent(void)
{
    pthread_mutex_unlock(&S.mu);
    pthread_sigmask(SIG_SETMASK, &S.fork_mask, NULL);
}

static void fork_child(void)
{
    /* The parent's reading thread did not come along, and its pipe is
     * shared with the parent: a signal sent to the child must not wake
     * the parent.  The child gets its own pipe now, and its own thread
     * on first use (see the top of the file). */
    int old_w = atomic_exchange_explicit(&wfd, -1, memory_order_relaxed);
    if (S.rfd >= 0)
        close(S.rfd);
    if (old_w >= 0)
        close(old_w);
    S.rfd = -1;
    S.thread = 0;
    if (S.head != NULL) {
        make_pipe_locked(); /* on failure, start_locked tries again */
        atomic_store_explicit(&restart_needed, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&S.mu);
    pthread_sigmask(SIG_SETMASK, &S.fork_mask, NULL);
}

void ctx__signal_restart(void)
{
    if (!atomic_load_explicit(&restart_needed, memory_order_relaxed))
        return;
    pthread_mutex_lock(&S.mu);
    if (start_locked() == 0)
        atomic_store_explicit(&restart_needed, 0, memory_order_relaxed);
    pthread_mutex_unlock(&S.mu);
}

static void init_once(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* "interrupt signal received": strsignal's text in lower case, as Go
 * names signals.  Under S.mu. */
static struct ctx__msg *msg_locked(int sig)
{
    if (S.msg[sig] != NULL)
        return S.msg[sig];
    char text[128];
    const char *name = strsignal(sig);
    snprintf(text, sizeof text, "%s signal received", name != NULL ? name : "unknown");
    text[0] = (char)(text[0] >= 'A' && text[0] <= 'Z' ? text[0] - 'A' + 'a' : text[0]);
    struct ctx__msg *m = ctx__msg_new(text);
    if (m != NULL) {
        m->func = "signal"; /* the cancel site ctx_cancel_site reports */
        S.msg[sig] = m;     /* kept for ever: its one reference is ours */
    }
    return m;
}

ctx_t *ctx_with_signals(ctx_t *parent, const int *signals, size_t n, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL || signals == NULL || n == 0) {
        errno = EINVAL;
        return NULL;
    }
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < n; i++) {
        int sig = signals[i];
        if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP) {
            errno = EINVAL;
            return NULL;
        }
        sigaddset(&set, sig);
    }
    pthread_once(&once, init_once);
    struct sigctx *r = ctx__alloc(sizeof *r);
    if (r == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    r->set = set;
    r->registered = 0;
    ctx_cancel_t *h;
    struct ctx *c = ctx_with_custom(parent, &sig_ops, r, &h);
    if (c == NULL) {
        ctx__free(r);
        errno = ENOMEM;
        return NULL;
    }
    r->c = c;
    /* The record on the node, as merge.c's: no reference, a count that
     * after.c never drops to zero (the block is freed by the destroy
     * hook). */
    struct ctx *s = &r->self;
    ctx__after_init(s, c, c, 3, sig_done, r); /* the list's, the handle's, the block's */

    pthread_mutex_lock(&S.mu);
    int e = start_locked();
    for (int sig = 1; e == 0 && sig < NSIG; sig++)
        if (sigismember(&set, sig) == 1 && msg_locked(sig) == NULL)
            e = ENOMEM;
    int done_sig = 0; /* signals whose count was taken, for a rollback */
    for (int sig = 1; e == 0 && sig < NSIG; sig++) {
        if (sigismember(&set, sig) != 1)
            continue;
        if (S.count[sig] == 0) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = on_signal;
            sigfillset(&sa.sa_mask);
            sa.sa_flags = SA_RESTART;
            if (sigaction(sig, &sa, &S.old[sig]) != 0) {
                e = EINVAL;
                break;
            }
        }
        /* A signal read while the last contexts for sig were being freed
         * waits (pending) to be sent again once they are gone.  This
         * context takes over sig first: without this, the signal would be
         * sent whenever this one ended, however much later. */
        S.pending[sig] = 0;
        S.count[sig]++;
        done_sig = sig;
    }
    if (e != 0) {
        for (int sig = 1; sig <= done_sig; sig++)
            if (sigismember(&set, sig) == 1)
                release_signal_locked(sig);
        pthread_mutex_unlock(&S.mu);
        /* Freeing the node runs the destroy hook, which frees r; the
         * record was never listed (no list reference), so stopping it
         * returns true. */
        atomic_store_explicit(&s->refs, 2, memory_order_relaxed);
        ctx_unref(c);
        errno = e;
        return NULL;
    }
    r->registered = 1;
    r->next = S.head;
    if (r->next != NULL)
        r->next->pprev = &r->next;
    r->pprev = &S.head;
    S.head = r;
    pthread_mutex_unlock(&S.mu);

    /* Register the record on the node; a node done at birth (its parent
     * was done) ends at once. */
    if (!ctx__after_register(s)) {
        ctx__record_unlisted(s);
        sig_done(r);
    }
    if (cancel != NULL)
        *cancel = h;
    return c;
}
