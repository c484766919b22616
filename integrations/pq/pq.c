/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq: libpq's asynchronous API driven by poll(2) on the connection's
 * socket and the context's done fd.
 *
 * Every wait for the server goes through wait_socket(): it returns when the
 * socket is ready, when one of (at most) two contexts ends, or when an
 * optional time limit passes.  When a context ends during a statement, the
 * statement is settled (settle()): cancel requests go out, each PQcancel in
 * a child process of a short-lived canceller thread, and the results are
 * read, for at most CTX_PQ_CANCEL_GRACE_MS; a connection not settled by then
 * is given up (break_conn), so the call returns within the grace with the
 * connection idle or broken, never in between.
 *
 * Transactions are the one place where another thread touches a connection:
 * the thread that ends a transaction's context sends the ROLLBACK at once
 * when no statement of the transaction is running.  The live transactions
 * sit in a registry keyed by connection, which ctx_pq_exec consults to learn
 * whether its statement belongs to one; each transaction's mutex orders the
 * calling thread's use of the connection with the ending thread's.
 */
#define _GNU_SOURCE

#include <ctx/pq.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

/* When a done fd cannot be made (no fds left), waits poll the context at
 * this interval instead. */
#define FALLBACK_POLL_MS 10

/* The SQLSTATE of a statement cancelled by a cancel request. */
#define SQLSTATE_QUERY_CANCELED "57014"

/* ---------------------------------------------------------------------------
 * Waiting
 */

enum { WAIT_READY = 0, WAIT_LIMIT = -1 };

/* The done fd of ctx for poll: -1 (ignored by poll) for a context that can
 * never be done; *fallback set when the context can end but has no fd. */
static int done_fd_of(ctx_t *ctx, bool *fallback)
{
    if (ctx == NULL)
        return -1;
    errno = 0;
    int fd = ctx_done_fd(ctx);
    if (fd < 0 && errno != 0)
        *fallback = true;
    return fd;
}

/* Waits until fd has one of events, or ctx or ctx2 (either may be NULL) is
 * done, or limit (an instant of ctx_now; 0 for none) passes.  Returns
 * WAIT_READY, the error of the context that ended (ctx first), WAIT_LIMIT,
 * or poll's errno. */
static int wait_socket(ctx_t *ctx, ctx_t *ctx2, int fd, short events, ctx_time_t limit)
{
    bool fallback = false;
    struct pollfd p[3] = {
        { .fd = fd, .events = events },
        { .fd = done_fd_of(ctx, &fallback), .events = POLLIN },
        { .fd = done_fd_of(ctx2, &fallback), .events = POLLIN },
    };
    for (;;) {
        int err = ctx != NULL ? ctx_err(ctx) : 0;
        if (err == 0 && ctx2 != NULL)
            err = ctx_err(ctx2);
        if (err != 0)
            return err;
        int timeout = fallback ? FALLBACK_POLL_MS : -1;
        if (limit != 0) {
            ctx_duration_t left = limit - ctx_now();
            if (left <= 0)
                return WAIT_LIMIT;
            int ms = (int)((left + CTX_MILLISECOND - 1) / CTX_MILLISECOND);
            if (timeout < 0 || ms < timeout)
                timeout = ms;
        }
        int n = poll(p, 3, timeout);
        if (n < 0 && errno != EINTR)
            return errno;
        if (n > 0 && p[0].revents != 0)
            return WAIT_READY;
    }
}

/* Waits until PQgetResult will not block.  Returns WAIT_READY (also when
 * the connection broke: PQgetResult then reports it), a context's error, or
 * WAIT_LIMIT. */
static int wait_result(ctx_t *ctx, ctx_t *ctx2, PGconn *conn, ctx_time_t limit)
{
    while (PQisBusy(conn)) {
        int sock = PQsocket(conn);
        if (sock < 0)
            return WAIT_READY;
        int rc = wait_socket(ctx, ctx2, sock, POLLIN, limit);
        if (rc != WAIT_READY)
            return rc;
        if (!PQconsumeInput(conn))
            return WAIT_READY;
    }
    return WAIT_READY;
}

/* ---------------------------------------------------------------------------
 * Results, the way PQexec combines them
 */

static bool is_error(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_FATAL_ERROR || s == PGRES_NONFATAL_ERROR || s == PGRES_BAD_RESPONSE;
}

static bool is_copy(const PGresult *r)
{
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_COPY_IN || s == PGRES_COPY_OUT || s == PGRES_COPY_BOTH;
}

static bool is_cancel_error(const PGresult *r)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    return state != NULL && strcmp(state, SQLSTATE_QUERY_CANCELED) == 0;
}

/* Adds r to the results of one command string: as PQexec, the last result
 * wins, except that the first error is kept. */
static void keep_result(PGresult **last, PGresult *r)
{
    if (*last != NULL && is_error(*last)) {
        PQclear(r);
        return;
    }
    PQclear(*last);
    *last = r;
}

/* When libpq cannot even report an error in a result. */
static PGresult *error_result(PGconn *conn)
{
    PGresult *r = PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
    if (r == NULL)
        errno = ENOMEM;
    return r;
}

/* ---------------------------------------------------------------------------
 * Cancel requests, each in a child process
 *
 * libpq's PQcancel connects to the server, sends the request and waits for
 * the server to close that connection, with no time limit and retrying on
 * EINTR: on a network that has gone dark it blocks for ever, and no signal
 * or socket option of ours can reach the socket it made.  PQcancel is
 * async-signal-safe by design, which is exactly what a child of fork(2) in
 * a threaded process may call.  So each request runs in a child process
 * that a thread of the library ("canceller") forks, waits for up to a bound
 * and kills when the bound passes; a killed child takes its socket with
 * it.  The caller never waits for a canceller longer than its own bound.
 */

enum job_state {
    JOB_RUNNING,
    JOB_SENT,   /* PQcancel returned: the server has processed the request */
    JOB_FAILED, /* PQcancel failed before the request was sent */
    JOB_LOST,   /* killed at the bound, or never started: outcome unknown */
};

/* One past the highest fd a child closes when close_range is missing. */
static long child_fd_limit(void)
{
    long n = sysconf(_SC_OPEN_MAX);
    return n < 0 || n > 65536 ? 65536 : n;
}

/* Runs one PQcancel in a child process, bounded by limit.  Only the
 * calling canceller thread waits for it. */
/* What a cancel child needs; it lives on the stack of the thread that waits
 * for the child. */
struct child_arg {
    PGcancel *pc;
    int wfd;
    long fd_limit;
};

/* The child: async-signal-safe calls only.  It dies with the thread that
 * started it, keeps only the pipe's write end (as fd 3) and closes every
 * other descriptor it got (its table is its own copy), so that no socket of
 * the parent lives on in it. */
static int cancel_child(void *arg)
{
    struct child_arg *a = arg;
    /* No handler of the application may run here (on Linux this child
     * shares its memory), and a SIGPIPE from a cancel connection the server
     * reset must not end the child before it reports. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
#ifdef __linux__
    prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
    if (a->wfd != 3)
        dup2(a->wfd, 3);
#if defined(__linux__) && defined(SYS_close_range)
    if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0)
#endif
        for (long fd = 4; fd < a->fd_limit; fd++)
            close((int)fd);
    char errbuf[256];
    int code = PQcancel(a->pc, errbuf, (int)sizeof errbuf) ? 0 : 1;
#if defined(__linux__) && defined(SYS_exit_group)
    /* The raw system call: _exit is declared noreturn, before which
     * AddressSanitizer inspects the stack, a stack it did not make. */
    syscall(SYS_exit_group, code);
#endif
    _exit(code);
}

/* ThreadSanitizer keeps per-thread state that a child sharing the address
 * space would write at the same time as its parent thread. */
#if defined(__SANITIZE_THREAD__)
#define CANCEL_CHILD_SHARES_MEMORY 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CANCEL_CHILD_SHARES_MEMORY 0
#endif
#endif
#if !defined(CANCEL_CHILD_SHARES_MEMORY) && defined(__linux__)
#define CANCEL_CHILD_SHARES_MEMORY 1
#endif
#ifndef CANCEL_CHILD_SHARES_MEMORY
#define CANCEL_CHILD_SHARES_MEMORY 0
#endif

#define CHILD_STACK_SIZE (256 * 1024)

/* Starts cancel_child.  On Linux the child shares the address space
 * (clone(CLONE_VM), as posix_spawn does): fork(2) would copy the page
 * tables with the address space's lock held for writing, and every other
 * thread of the process that faults a page or maps memory meanwhile (the
 * caller among them) would wait for that copy, which takes long on a loaded
 * machine.  The child touches only its own stack and reads the PGcancel.
 * *stack receives the stack to free once the child is reaped. */
static pid_t start_child(struct child_arg *a, void **stack)
{
    *stack = NULL;
#if CANCEL_CHILD_SHARES_MEMORY
    *stack = malloc(CHILD_STACK_SIZE);
    if (*stack == NULL)
        return -1;
    return clone(cancel_child, (char *)*stack + CHILD_STACK_SIZE, CLONE_VM | SIGCHLD, a);
#else
    /* One fork at a time: the core's fork handlers (pthread_atfork) are not
     * made for two forks of the process at once, and two cancellers may
     * start children together. */
    static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_mutex_lock(&fork_lock);
    pid_t pid = fork();
    if (pid == 0)
        cancel_child(a);
    pthread_mutex_unlock(&fork_lock);
    return pid;
#endif
}

/* Runs one PQcancel in a child process, bounded by limit.  Only the
 * calling canceller thread waits for it. */
static enum job_state run_job(PGcancel *pc, ctx_time_t limit)
{
    int p[2];
    if (pipe(p) != 0)
        return JOB_LOST;
    /* Close-on-exec: a fork+exec elsewhere in the process must not keep
     * the write end open, whose close tells this thread the child ended. */
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    struct child_arg a = { .pc = pc, .wfd = p[1], .fd_limit = child_fd_limit() };
    void *stack;
    pid_t pid = start_child(&a, &stack);
    close(p[1]);
    if (pid < 0) {
        free(stack);
        close(p[0]);
        return JOB_LOST;
    }
    /* The pipe reads EOF when the child has exited (or closed fd 3, which
     * it does only by exiting). */
    bool killed = false;
    for (;;) {
        struct pollfd pf = { .fd = p[0], .events = POLLIN };
        ctx_duration_t left = limit - ctx_now();
        int ms = left <= 0 ? 0 : (int)((left + CTX_MILLISECOND - 1) / CTX_MILLISECOND);
        int n = poll(&pf, 1, ms);
        if (n > 0)
            break;
        if (n == 0 || (n < 0 && errno != EINTR)) {
            kill(pid, SIGKILL);
            killed = true;
            break;
        }
    }
    close(p[0]);
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    /* Reaped (or, when the application reaps children itself, past its
     * pipe's close, which comes only from its exit): its stack is free. */
    free(stack);
    if (r < 0) /* reaped by the application (SIGCHLD ignored): it ended */
        return killed ? JOB_LOST : JOB_SENT;
    if (WIFEXITED(status))
        return WEXITSTATUS(status) == 0 ? JOB_SENT : JOB_FAILED;
    return JOB_LOST;
}

/* A thread that sends cancel requests, one child at a time, and tells the
 * caller (who polls `done_fd`) the outcome of the first.  `repeats` more
 * requests follow while each is sent, after `delay`, tripled each time:
 * that is for a connection already given up, whose command may still run
 * because the first request came before the server had started it. */
typedef struct canceller {
    pthread_mutex_t lock; /* guards refs and state */
    int refs;
    enum job_state state;
    int done_fd;  /* the caller's end: EOF once state is final */
    int done_wfd; /* the thread's end, closed when the first request ended */
    PGcancel *pc;
    ctx_time_t limit;
    int repeats;
    ctx_duration_t delay;
} canceller_t;

static void canceller_release(canceller_t *cl)
{
    pthread_mutex_lock(&cl->lock);
    int left = --cl->refs;
    pthread_mutex_unlock(&cl->lock);
    if (left > 0)
        return;
    if (cl->done_fd >= 0)
        close(cl->done_fd);
    if (cl->done_wfd >= 0)
        close(cl->done_wfd);
    PQfreeCancel(cl->pc);
    pthread_mutex_destroy(&cl->lock);
    free(cl);
}

static void *canceller_main(void *arg)
{
    canceller_t *cl = arg;
    enum job_state st = run_job(cl->pc, cl->limit);
    pthread_mutex_lock(&cl->lock);
    cl->state = st;
    int wfd = cl->done_wfd;
    cl->done_wfd = -1;
    pthread_mutex_unlock(&cl->lock);
    if (wfd >= 0)
        close(wfd); /* the caller's poll on done_fd wakes */
    for (int i = 0; i < cl->repeats && st == JOB_SENT; i++) {
        if (ctx_now() + cl->delay >= cl->limit)
            break;
        struct timespec ts = { .tv_sec = cl->delay / CTX_SECOND,
                               .tv_nsec = cl->delay % CTX_SECOND };
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        st = run_job(cl->pc, cl->limit);
        cl->delay *= 3;
    }
    canceller_release(cl);
    return NULL;
}

/* Starts a canceller for the command running on conn; NULL when it cannot
 * (no memory, no thread, or libpq has no cancel data for conn). */
static canceller_t *canceller_start(PGconn *conn, int repeats, bool want_fd)
{
    canceller_t *cl = calloc(1, sizeof *cl);
    if (cl == NULL)
        return NULL;
    cl->done_fd = cl->done_wfd = -1;
    cl->pc = PQgetCancel(conn);
    if (cl->pc == NULL || pthread_mutex_init(&cl->lock, NULL) != 0) {
        PQfreeCancel(cl->pc);
        free(cl);
        return NULL;
    }
    int p[2];
    if (want_fd) {
        if (pipe(p) != 0) {
            PQfreeCancel(cl->pc);
            pthread_mutex_destroy(&cl->lock);
            free(cl);
            return NULL;
        }
        fcntl(p[0], F_SETFD, FD_CLOEXEC);
        fcntl(p[1], F_SETFD, FD_CLOEXEC);
        cl->done_fd = p[0];
        cl->done_wfd = p[1];
    }
    cl->state = JOB_RUNNING;
    cl->refs = want_fd ? 2 : 1;
    cl->limit = ctx_now() + (ctx_duration_t)CTX_PQ_DRAIN_TIMEOUT_MS * CTX_MILLISECOND;
    cl->repeats = repeats;
    cl->delay = 100 * CTX_MILLISECOND;
    pthread_attr_t attr;
    pthread_t t;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* The canceller takes no signal: the application's signals are for
         * its own threads, and a system call of this thread that a signal
         * never interrupts (poll, waitpid) never reads errno, which the
         * child, sharing this thread's memory on Linux, may write. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        rc = pthread_create(&t, &attr, canceller_main, cl);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
    }
    if (rc != 0) {
        cl->refs = 1;
        canceller_release(cl);
        return NULL;
    }
    return cl;
}

/* The canceller's outcome so far. */
static enum job_state canceller_state(canceller_t *cl)
{
    pthread_mutex_lock(&cl->lock);
    enum job_state st = cl->state;
    pthread_mutex_unlock(&cl->lock);
    return st;
}

/* ---------------------------------------------------------------------------
 * Settling a command whose context ended
 */

/* What is read of a command's results after its context ended. */
typedef struct {
    PGresult *first; /* the first result, for ctx_pq_get_result */
    PGresult *last;  /* the results combined as PQexec does */
    bool cancelled;  /* one of them says a cancel request stopped it */
    bool copy_out;   /* inside a COPY TO: its rows are read and dropped */
    bool done;       /* PQgetResult said there are no more */
} drain_t;

static void drain_keep(drain_t *d, PGresult *r)
{
    if (d->first == NULL) {
        d->first = r;
        /* The combined result owns its own copy only when a later one
         * replaces it; keep_result must not free the first. */
        d->last = r;
        return;
    }
    if (d->last != NULL && is_error(d->last)) {
        PQclear(r);
        return;
    }
    if (d->last != d->first)
        PQclear(d->last);
    d->last = r;
}

static void drain_free(drain_t *d)
{
    if (d->last != d->first)
        PQclear(d->last);
    PQclear(d->first);
    d->first = d->last = NULL;
}

/* Reads every result that has arrived, without blocking. */
static void drain_step(PGconn *conn, drain_t *d)
{
    PQconsumeInput(conn); /* a broken connection: PQgetResult reports it */
    while (!d->done) {
        if (d->copy_out) {
            char *buf;
            int n;
            while ((n = PQgetCopyData(conn, &buf, 1)) > 0)
                PQfreemem(buf);
            if (n == 0)
                return; /* more rows to come */
            d->copy_out = false;
        }
        if (PQisBusy(conn))
            return;
        PGresult *r = PQgetResult(conn);
        if (r == NULL) {
            d->done = true;
            return;
        }
        if (is_cancel_error(r))
            d->cancelled = true;
        if (PQresultStatus(r) == PGRES_COPY_OUT) {
            d->copy_out = true;
            PQclear(r);
        } else if (is_copy(r)) {
            /* A COPY FROM is ended by the client: fail it. */
            PQputCopyEnd(conn, "cancelled");
            PQflush(conn);
            PQclear(r);
        } else {
            drain_keep(d, r);
        }
    }
}

/* Gives the connection up: shutting its socket down makes libpq see it
 * closed, so PQstatus is CONNECTION_BAD when this returns and every result
 * still owed comes back at once as an error.  The server sees the close
 * and rolls back an open transaction. */
static void break_conn(PGconn *conn, drain_t *d)
{
    int sock = PQsocket(conn);
    if (sock >= 0)
        shutdown(sock, SHUT_RDWR);
    /* Bytes that had arrived come first, then EOF: bounded by what is
     * buffered. */
    while (PQstatus(conn) != CONNECTION_BAD && PQconsumeInput(conn))
        ;
    d->copy_out = false;
    for (int i = 0; i < 64; i++) {
        PGresult *r = PQgetResult(conn);
        if (r == NULL)
            break;
        if (is_copy(r))
            PQclear(r);
        else
            drain_keep(d, r);
    }
    d->done = true;
}

/* The first repeat of a cancel request after one was sent while the
 * command still runs: PostgreSQL drops a request that comes before the
 * backend has started the command. */
#define RECANCEL_NS (5 * CTX_MILLISECOND)

/* Ends the command on conn after a context ended, by `until`: sends cancel
 * requests (when `cancel`), reads and discards results.  Returns true when
 * SETTLED when the connection is idle with no cancel request in flight, so
 * that none can hit a later statement; when `until` comes first the
 * connection is given up (break_conn), and when its command may still run on the
 * server, cancel requests go on in the background for at most
 * CTX_PQ_DRAIN_TIMEOUT_MS. */
enum settled {
    SETTLED,      /* idle, no cancel request in flight */
    BROKEN_AFTER, /* given up, but every result had come */
    BROKEN,       /* given up with the command's end unknown */
};

static enum settled settle(PGconn *conn, drain_t *d, ctx_time_t until, bool cancel)
{
    canceller_t *cl = NULL;
    ctx_time_t next_cancel = 0; /* 0: at once; INT64_MAX: no more */
    bool sent_any = false;
    drain_step(conn, d);
    if (!cancel || PQtransactionStatus(conn) != PQTRANS_ACTIVE)
        next_cancel = INT64_MAX;
    for (;;) {
        if (cl != NULL) {
            enum job_state st = canceller_state(cl);
            if (st != JOB_RUNNING) {
                canceller_release(cl);
                cl = NULL;
                if (st == JOB_SENT) {
                    sent_any = true;
                    next_cancel = ctx_now() + RECANCEL_NS;
                } else if (st == JOB_FAILED) {
                    /* The server cannot be reached for a cancel: only the
                     * command's own end can settle the connection now. */
                    next_cancel = INT64_MAX;
                } else {
                    /* Outcome unknown: a late request could still land. */
                    break;
                }
            }
        }
        if (d->done && cl == NULL)
            return SETTLED;
        ctx_time_t now = ctx_now();
        if (now >= until)
            break;
        if (!d->done && cl == NULL && now >= next_cancel) {
            cl = canceller_start(conn, 0, true);
            if (cl == NULL)
                next_cancel = INT64_MAX;
            continue;
        }
        ctx_time_t wake = until;
        if (cl == NULL && !d->done && next_cancel < wake)
            wake = next_cancel;
        int ms = (int)((wake - now + CTX_MILLISECOND - 1) / CTX_MILLISECOND);
        struct pollfd p[2] = {
            { .fd = d->done ? -1 : PQsocket(conn), .events = POLLIN },
            { .fd = cl != NULL ? cl->done_fd : -1, .events = POLLIN },
        };
        int n = poll(p, 2, ms);
        if (n < 0 && errno != EINTR)
            break;
        if (n > 0 && p[0].revents != 0)
            drain_step(conn, d);
    }
    bool may_run = !d->done;
    if (cl != NULL)
        canceller_release(cl); /* it finishes alone, within its bound */
    if (cancel && may_run) {
        /* Started before the break, while libpq still has the cancel data:
         * one detached thread that frees itself, its requests in sequence,
         * all within the bound.  Nothing more can be done if it fails. */
        canceller_start(conn, sent_any ? 2 : 3, false);
    }
    break_conn(conn, d);
    return may_run ? BROKEN : BROKEN_AFTER;
}

/* The end of a command whose context ended (err), by `until`: the real
 * result if the command finished anyway, else NULL with errno = err.  The
 * connection is idle, or broken (CONNECTION_BAD) when it could not be
 * settled in time. */
static PGresult *cancel_and_drain(PGconn *conn, PGresult *last, int err, ctx_time_t until)
{
    drain_t d = { .first = last, .last = last };
    enum settled o = settle(conn, &d, until, true);
    if (o == BROKEN || d.cancelled || d.last == NULL) {
        drain_free(&d);
        errno = err;
        return NULL;
    }
    PGresult *r = d.last;
    if (d.first != r)
        PQclear(d.first);
    return r;
}

/* The instant by which a call whose context just ended returns. */
static ctx_time_t grace_end(void)
{
    return ctx_now() + (ctx_duration_t)CTX_PQ_CANCEL_GRACE_MS * CTX_MILLISECOND;
}

/* ---------------------------------------------------------------------------
 * Transactions: the registry
 */

enum tx_state {
    TX_OPEN,          /* BEGIN done, ctx live */
    TX_ENDED,         /* ctx ended while a statement ran; ROLLBACK still to send */
    TX_ROLLBACK_SENT, /* the ending thread sent ROLLBACK; its result is unread */
    TX_ROLLED_BACK,   /* over: the connection is idle outside a transaction */
};

struct ctx_pq_tx {
    pthread_mutex_t lock; /* guards state and running, and the connection
                             whenever running is false */
    PGconn *conn;
    ctx_t *ctx;
    ctx_after_t *after;
    enum tx_state state;
    bool running; /* a statement of the transaction is running */
    struct ctx_pq_tx *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ctx_pq_tx *registry;
/* The number of transactions in the registry: statements on a connection
 * skip the lookup while it is 0. */
static atomic_int registry_count;

static void registry_add(struct ctx_pq_tx *tx)
{
    pthread_mutex_lock(&registry_lock);
    tx->next = registry;
    registry = tx;
    atomic_fetch_add_explicit(&registry_count, 1, memory_order_relaxed);
    pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(struct ctx_pq_tx *tx)
{
    pthread_mutex_lock(&registry_lock);
    struct ctx_pq_tx **link = &registry;
    while (*link != NULL && *link != tx)
        link = &(*link)->next;
    if (*link == tx) {
        *link = tx->next;
        atomic_fetch_sub_explicit(&registry_count, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&registry_lock);
}

/* The transaction of conn, or NULL.  The count is only a hint: a thread
 * that registers a transaction on conn is the thread that uses conn, so
 * the caller always sees its own registrations; the lock orders the rest. */
static struct ctx_pq_tx *registry_find(PGconn *conn)
{
    if (atomic_load_explicit(&registry_count, memory_order_relaxed) == 0)
        return NULL;
    pthread_mutex_lock(&registry_lock);
    struct ctx_pq_tx *tx = registry;
    while (tx != NULL && tx->conn != conn)
        tx = tx->next;
    pthread_mutex_unlock(&registry_lock);
    return tx;
}

/* ---------------------------------------------------------------------------
 * Statements
 */

typedef struct {
    const char *sql;
    int nparams;
    const Oid *types;
    const char *const *values;
    const int *lengths;
    const int *formats;
    int result_format;
    bool params;
} command_t;

/* Sends cmd on conn: libpq's output is flushed in non-blocking mode while
 * ctx and ctx2 live (either may be NULL) and limit (0: none) has not come,
 * so a statement larger than the socket buffer cannot hold the caller on a
 * network that stopped taking bytes.  Returns 0, -1 when libpq refused the
 * command (its reason in PQerrorMessage), or the error of what ended first
 * (ETIMEDOUT for limit): the connection has then been given up, as a
 * statement half sent cannot be taken back. */
static int send_command(ctx_t *ctx, ctx_t *ctx2, PGconn *conn, const command_t *cmd,
                        ctx_time_t limit)
{
    bool was_blocking = !PQisnonblocking(conn);
    if (was_blocking)
        PQsetnonblocking(conn, 1);
    int sent = cmd->params
                   ? PQsendQueryParams(conn, cmd->sql, cmd->nparams, cmd->types, cmd->values,
                                       cmd->lengths, cmd->formats, cmd->result_format)
                   : PQsendQuery(conn, cmd->sql);
    int rc = sent ? 0 : -1;
    while (sent && PQflush(conn) == 1) {
        int w = wait_socket(ctx, ctx2, PQsocket(conn), POLLOUT | POLLIN, limit);
        if (w == WAIT_READY) {
            /* libpq asks to read while it writes: the server may be sending
             * notices and waiting for them to be read. */
            PQconsumeInput(conn);
            continue;
        }
        drain_t d = { 0 };
        break_conn(conn, &d);
        drain_free(&d);
        rc = w == WAIT_LIMIT ? ETIMEDOUT : w;
        break;
    }
    if (was_blocking && PQstatus(conn) == CONNECTION_OK)
        PQsetnonblocking(conn, 0);
    return rc;
}

/* The results of the command just sent on conn, while ctx and ctx2 (either
 * may be NULL) live and limit (0: none) has not come.  When one of them
 * ends, the command is settled by *until (set here, when 0 on entry, to
 * CTX_PQ_CANCEL_GRACE_MS after the end). */
static PGresult *await_results(ctx_t *ctx, ctx_t *ctx2, PGconn *conn, ctx_time_t limit,
                               ctx_time_t *until)
{
    PGresult *last = NULL;
    for (;;) {
        int rc = wait_result(ctx, ctx2, conn, limit);
        if (rc != WAIT_READY) {
            if (*until == 0)
                *until = grace_end();
            if (rc == WAIT_LIMIT) {
                /* No context is left to honour: nothing to cancel for. */
                drain_t d = { .first = last, .last = last };
                enum settled o = settle(conn, &d, *until, false);
                if (o != BROKEN && d.last != NULL) {
                    if (d.first != d.last)
                        PQclear(d.first);
                    return d.last;
                }
                drain_free(&d);
                errno = ETIMEDOUT;
                return NULL;
            }
            /* A context ended (or poll itself failed: the same, with its
             * errno). */
            return cancel_and_drain(conn, last, rc, *until);
        }
        PGresult *r = PQgetResult(conn);
        if (r == NULL)
            return last != NULL ? last : error_result(conn);
        if (is_copy(r)) {
            PQclear(last);
            return r;
        }
        keep_result(&last, r);
        if (PQstatus(conn) == CONNECTION_BAD) {
            /* Nothing more will come: libpq gives the rest at once. */
            drain_t d = { .first = last, .last = last };
            break_conn(conn, &d);
            if (d.first != d.last)
                PQclear(d.first);
            return d.last;
        }
    }
}

/* cmd on conn under ctx and ctx2 (either may be NULL) and limit (0: none),
 * with no transaction bookkeeping.  *until as in await_results. */
static PGresult *run_under(ctx_t *ctx, ctx_t *ctx2, PGconn *conn, const command_t *cmd,
                           ctx_time_t limit, ctx_time_t *until)
{
    int rc = send_command(ctx, ctx2, conn, cmd, limit);
    if (rc == -1) {
        /* As PQexec does: the reason (a broken connection, another command
         * in progress) as an error result. */
        return error_result(conn);
    }
    if (rc != 0) {
        if (*until == 0)
            *until = ctx_now();
        errno = rc;
        return NULL;
    }
    return await_results(ctx, ctx2, conn, limit, until);
}

/* A ROLLBACK that follows a context's end gets at least this long, even
 * when the statement before it used up the grace. */
#define ROLLBACK_MIN_NS (5 * CTX_MILLISECOND)

static const command_t rollback_cmd = { .sql = "ROLLBACK" };

static ctx_time_t rollback_until(ctx_time_t until)
{
    ctx_time_t min = ctx_now() + ROLLBACK_MIN_NS;
    return until < min ? min : until;
}

/* Reads the result of a ROLLBACK sent on conn, by until.  0 or EIO (EIO
 * also when the connection had to be given up: the server then rolls the
 * transaction back as the connection closes). */
static int rollback_read(PGconn *conn, ctx_time_t until)
{
    drain_t d = { 0 };
    enum settled o = settle(conn, &d, rollback_until(until), false);
    int rc = o == SETTLED && d.last != NULL && PQresultStatus(d.last) == PGRES_COMMAND_OK ? 0 : EIO;
    drain_free(&d);
    return rc;
}

/* Sends ROLLBACK on an idle connection and reads its result, by until.
 * 0 or EIO. */
static int rollback_now(PGconn *conn, ctx_time_t until)
{
    until = rollback_until(until);
    PGresult *r = run_under(NULL, NULL, conn, &rollback_cmd, until, &until);
    int rc = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : EIO;
    PQclear(r);
    return rc;
}

/* ROLLBACK while a and b live (either may be NULL); when one ends first,
 * settled as any statement is, and sent once more by the grace if the
 * first was cancelled.  0 when the connection is left outside any
 * transaction, EIO when it is broken. */
static int rollback_under(ctx_t *a, ctx_t *b, PGconn *conn)
{
    ctx_time_t until = 0;
    PGresult *r = run_under(a, b, conn, &rollback_cmd, 0, &until);
    PQclear(r);
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        return rollback_now(conn, until);
    return ts == PQTRANS_IDLE ? 0 : EIO;
}

/* Brings a transaction whose context ended to TX_ROLLED_BACK, by until;
 * with tx->lock held and no statement running.  0 or EIO. */
static int tx_finish_rollback(struct ctx_pq_tx *tx, ctx_time_t until)
{
    int rc = 0;
    if (tx->state == TX_ROLLBACK_SENT) {
        rc = rollback_read(tx->conn, until);
    } else if (tx->state != TX_ROLLED_BACK) {
        rc = rollback_now(tx->conn, until);
    }
    tx->state = TX_ROLLED_BACK;
    return rc;
}

/* The AfterFunc of a transaction's context: runs once, on the thread that
 * ends the context, with no library lock held. */
static void tx_ctx_ended(void *arg)
{
    struct ctx_pq_tx *tx = arg;
    pthread_mutex_lock(&tx->lock);
    if (tx->state == TX_OPEN) {
        /* A running statement sees the context end by itself and rolls
         * back after its cancel; an idle connection gets the ROLLBACK now,
         * without waiting for its result, so this thread is not held up by
         * a round trip. */
        if (!tx->running && PQsendQuery(tx->conn, "ROLLBACK"))
            tx->state = TX_ROLLBACK_SENT;
        else
            tx->state = TX_ENDED;
    }
    pthread_mutex_unlock(&tx->lock);
}

/* Locks tx; returns the error of its context, 0 while it is live.  When the
 * context has ended, its AfterFunc is first waited for (or stopped before it
 * runs), so that the caller, which then talks to the server with the lock
 * held, never keeps the AfterFunc waiting for the lock: it runs on the thread
 * that ended the context, the library's timer thread for a deadline, which
 * a round trip (up to the drain's bound on a server that does not answer)
 * would hold up for every deadline of the process.  A context that ends
 * after this returns finds the lock free, or held only briefly. */
static int tx_lock(struct ctx_pq_tx *tx)
{
    pthread_mutex_lock(&tx->lock);
    int err = ctx_err(tx->ctx);
    if (err != 0 && tx->after != NULL) {
        pthread_mutex_unlock(&tx->lock);
        ctx_after_stop(tx->after);
        tx->after = NULL; /* only this thread reads or writes it */
        pthread_mutex_lock(&tx->lock);
    }
    return err;
}

/* Marks a statement of tx as running.  Returns 0, or the error of the
 * transaction's context once the transaction is over because of it. */
static int tx_enter(struct ctx_pq_tx *tx)
{
    int err = tx_lock(tx);
    if (err != 0 || tx->state != TX_OPEN) {
        tx_finish_rollback(tx, grace_end());
        pthread_mutex_unlock(&tx->lock);
        return err != 0 ? err : CTX_CANCELED;
    }
    tx->running = true;
    pthread_mutex_unlock(&tx->lock);
    return 0;
}

/* The statement of tx is over.  If the transaction's context ended while it
 * ran, the transaction is rolled back now, by until (0: the grace from now);
 * if it ends after tx_lock looked, its AfterFunc finds no statement running
 * and sends the ROLLBACK. */
static void tx_leave(struct ctx_pq_tx *tx, ctx_time_t until)
{
    int err = tx_lock(tx);
    tx->running = false;
    if (tx->state != TX_OPEN || err != 0)
        tx_finish_rollback(tx, until != 0 ? until : grace_end());
    pthread_mutex_unlock(&tx->lock);
}

static PGresult *run(ctx_t *ctx, PGconn *conn, const command_t *cmd)
{
    if (ctx == NULL || conn == NULL || cmd->sql == NULL) {
        errno = EINVAL;
        return NULL;
    }
    int err = ctx_err(ctx);
    if (err != 0) {
        errno = err;
        return NULL;
    }
    struct ctx_pq_tx *tx = registry_find(conn);
    if (tx != NULL) {
        err = tx_enter(tx);
        if (err != 0) {
            errno = err;
            return NULL;
        }
    }
    ctx_time_t until = 0;
    PGresult *r = run_under(ctx, tx != NULL ? tx->ctx : NULL, conn, cmd, 0, &until);
    if (tx != NULL) {
        int saved = errno;
        tx_leave(tx, until);
        /* A statement the transaction's end cancelled reports that end. */
        if (r == NULL && saved != 0 && ctx_err(ctx) == 0 && ctx_err(tx->ctx) != 0)
            saved = ctx_err(tx->ctx);
        errno = saved;
    }
    return r;
}

PGresult *ctx_pq_exec(ctx_t *ctx, PGconn *conn, const char *sql)
{
    command_t cmd = { .sql = sql };
    return run(ctx, conn, &cmd);
}

PGresult *ctx_pq_exec_params(ctx_t *ctx, PGconn *conn, const char *sql, int nparams,
                             const Oid *types, const char *const *values, const int *lengths,
                             const int *formats, int result_format)
{
    command_t cmd = { .sql = sql,
                      .nparams = nparams,
                      .types = types,
                      .values = values,
                      .lengths = lengths,
                      .formats = formats,
                      .result_format = result_format,
                      .params = true };
    return run(ctx, conn, &cmd);
}

PGresult *ctx_pq_get_result(ctx_t *ctx, PGconn *conn)
{
    if (ctx == NULL || conn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    int err = ctx_err(ctx);
    bool done_before = err != 0;
    if (!done_before)
        err = wait_result(ctx, NULL, conn, 0);
    if (err == WAIT_READY) {
        PGresult *r = PQgetResult(conn);
        errno = 0;
        return r;
    }
    drain_t d = { 0 };
    enum settled o = settle(conn, &d, grace_end(), true);
    if (!done_before && o != BROKEN && d.first != NULL && !is_cancel_error(d.first)) {
        /* The result this call waited for was complete before the cancel
         * landed: it is the caller's, as with ctx_pq_exec; the rest of the
         * command's results are dropped. */
        PGresult *r = d.first;
        if (d.last != r)
            PQclear(d.last);
        errno = 0;
        return r;
    }
    drain_free(&d);
    errno = err > 0 ? err : EIO;
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Connecting
 */

/* An errno-style code for a failed connection, from libpq's message (libpq
 * reports no code of its own). */
static int connect_error(PGconn *conn)
{
    static const struct {
        const char *text;
        int code;
    } map[] = {
        { "Connection refused", ECONNREFUSED },
        { "No such file or directory", ENOENT },
        { "could not translate host name", ENOENT },
        { "does not exist", ENOENT },
        { "authentication failed", EACCES },
        { "no pg_hba.conf entry", EACCES },
        { "timeout expired", ETIMEDOUT },
        { "out of memory", ENOMEM },
    };
    const char *msg = conn != NULL ? PQerrorMessage(conn) : "out of memory";
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strstr(msg, map[i].text) != NULL)
            return map[i].code;
    return EPROTO;
}

/* libpq's connect_timeout of c in nanoseconds, 0 for none (2 s at least, as
 * libpq reads it).  libpq applies it only in its blocking connect;
 * PQconnectPoll ignores it, so ctx_pq_connect applies it itself. */
static ctx_duration_t connect_timeout_of(PGconn *c)
{
    PQconninfoOption *opts = PQconninfo(c);
    ctx_duration_t t = 0;
    for (PQconninfoOption *o = opts; o != NULL && o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL) {
            long secs = strtol(o->val, NULL, 10);
            if (secs > 0)
                t = (ctx_duration_t)(secs < 2 ? 2 : secs > 86400 ? 86400 : secs) * CTX_SECOND;
        }
    }
    PQconninfoFree(opts);
    return t;
}

int ctx_pq_connect(ctx_t *ctx, const char *conninfo, PGconn **conn)
{
    if (conn == NULL)
        return EINVAL;
    *conn = NULL;
    if (ctx == NULL || conninfo == NULL)
        return EINVAL;
    int err = ctx_err(ctx);
    if (err != 0)
        return err;
    PGconn *c = PQconnectStart(conninfo);
    if (c == NULL)
        return ENOMEM;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    if (PQstatus(c) == CONNECTION_BAD)
        st = PGRES_POLLING_FAILED;
    ctx_duration_t timeout = st == PGRES_POLLING_FAILED ? 0 : connect_timeout_of(c);
    ctx_time_t limit = timeout != 0 ? ctx_now() + timeout : 0;
    while (st != PGRES_POLLING_OK) {
        if (st == PGRES_POLLING_FAILED) {
            err = connect_error(c);
            PQfinish(c);
            /* ctx.h's rule: once ctx has ended, its end is the error. */
            return ctx_err(ctx) != 0 ? ctx_err(ctx) : err;
        }
        err = wait_socket(ctx, NULL, PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                          limit);
        if (err != WAIT_READY) {
            PQfinish(c);
            err = err == WAIT_LIMIT ? ETIMEDOUT : err;
            return ctx_err(ctx) != 0 ? ctx_err(ctx) : err;
        }
        st = PQconnectPoll(c);
    }
    *conn = c;
    return 0;
}

/* ---------------------------------------------------------------------------
 * BeginTx
 */

int ctx_pq_begin(ctx_t *ctx, PGconn *conn, ctx_pq_tx_t **txp)
{
    if (txp == NULL)
        return EINVAL;
    *txp = NULL;
    if (ctx == NULL || conn == NULL)
        return EINVAL;
    int err = ctx_err(ctx);
    if (err != 0)
        return err;
    if (registry_find(conn) != NULL)
        return EBUSY;
    struct ctx_pq_tx *tx = calloc(1, sizeof *tx);
    if (tx == NULL)
        return ENOMEM;
    int rc = pthread_mutex_init(&tx->lock, NULL);
    if (rc != 0) {
        free(tx);
        return rc;
    }
    tx->conn = conn;
    tx->state = TX_OPEN;

    PGresult *r = ctx_pq_exec(ctx, conn, "BEGIN");
    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        rc = r == NULL ? errno : EIO;
        PQclear(r);
        pthread_mutex_destroy(&tx->lock);
        free(tx);
        return rc;
    }
    PQclear(r);

    tx->ctx = ctx_ref(ctx);
    registry_add(tx);
    rc = ctx_after_func(ctx, tx_ctx_ended, tx, &tx->after);
    if (rc != 0) {
        /* Without the registration the rule cannot be kept: no
         * transaction, and the connection idle as before. */
        registry_remove(tx);
        rollback_now(conn, grace_end());
        ctx_unref(tx->ctx);
        pthread_mutex_destroy(&tx->lock);
        free(tx);
        return rc;
    }
    *txp = tx;
    return 0;
}

/* Takes tx out of use: no statement looks it up any more, and its AfterFunc
 * has run or never will. */
static void tx_detach(struct ctx_pq_tx *tx)
{
    registry_remove(tx);
    ctx_after_stop(tx->after);
    tx->after = NULL;
}

static void tx_free(struct ctx_pq_tx *tx)
{
    ctx_unref(tx->ctx);
    pthread_mutex_destroy(&tx->lock);
    free(tx);
}

/* COMMIT while the transaction's context and ctx (NULL: none) live. */
static int commit_under(ctx_t *ctx, struct ctx_pq_tx *tx)
{
    tx_detach(tx);
    PGconn *conn = tx->conn;
    pthread_mutex_lock(&tx->lock);
    int rc = ctx_err(tx->ctx);
    if (rc == 0 && ctx != NULL)
        rc = ctx_err(ctx);
    if (rc != 0 || tx->state != TX_OPEN) {
        tx_finish_rollback(tx, grace_end());
        pthread_mutex_unlock(&tx->lock);
        tx_free(tx);
        return rc != 0 ? rc : CTX_CANCELED;
    }
    pthread_mutex_unlock(&tx->lock);
    static const command_t commit_cmd = { .sql = "COMMIT" };
    ctx_time_t until = 0;
    PGresult *r = run_under(tx->ctx, ctx, conn, &commit_cmd, 0, &until);
    if (r == NULL) {
        rc = errno;
    } else if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdStatus(r), "COMMIT") != 0) {
        /* An error, or "ROLLBACK": the transaction had failed before. */
        rc = EIO;
    }
    PQclear(r);
    /* A COMMIT that was cancelled leaves the transaction open or failed. */
    PGTransactionStatusType ts = PQtransactionStatus(conn);
    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        rollback_now(conn, until != 0 ? until : grace_end());
    tx_free(tx);
    return rc;
}

/* ROLLBACK while the transaction's context and ctx (NULL: none) live. */
static int rollback_tx(ctx_t *ctx, struct ctx_pq_tx *tx)
{
    tx_detach(tx);
    pthread_mutex_lock(&tx->lock);
    int rc;
    if (tx->state == TX_OPEN && ctx_err(tx->ctx) == 0) {
        rc = rollback_under(tx->ctx, ctx, tx->conn);
        tx->state = TX_ROLLED_BACK;
    } else {
        rc = tx_finish_rollback(tx, grace_end());
    }
    pthread_mutex_unlock(&tx->lock);
    tx_free(tx);
    return rc;
}

int ctx_pq_commit(ctx_pq_tx_t *tx)
{
    return tx != NULL ? commit_under(NULL, tx) : EINVAL;
}

int ctx_pq_rollback(ctx_pq_tx_t *tx)
{
    return tx != NULL ? rollback_tx(NULL, tx) : EINVAL;
}

int ctx_pq_tx_commit(ctx_t *ctx, ctx_pq_tx_t *tx)
{
    return tx != NULL && ctx != NULL ? commit_under(ctx, tx) : EINVAL;
}

int ctx_pq_tx_rollback(ctx_t *ctx, ctx_pq_tx_t *tx)
{
    return tx != NULL && ctx != NULL ? rollback_tx(ctx, tx) : EINVAL;
}
