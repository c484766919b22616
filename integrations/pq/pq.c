/*
 * libctx-pq: libpq's asynchronous API driven by poll(2) on the connection's
 * socket and the context's done fd.
 *
 * Every wait in this file goes through wait_socket(): it returns when the
 * socket is ready, when one of (at most) two contexts ends, or when an
 * optional time limit passes.  When a context ends during a statement, the
 * statement is cancelled on the server (cancel_and_drain) and its results
 * are read to the end, so the connection is idle when the call returns.
 *
 * Transactions are the one place where another thread touches a connection:
 * the thread that ends a transaction's context sends the ROLLBACK at once
 * when no statement of the transaction is running.  The live transactions
 * sit in a registry keyed by connection, which ctx_pq_exec consults to learn
 * whether its statement belongs to one; each transaction's mutex orders the
 * calling thread's use of the connection with the ending thread's.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx/pq.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
 * Cancelling
 */

/* Sends a cancel request for the command running on conn, if one runs, and
 * returns when the server has processed it (PQcancel reads the server's
 * close of the cancel connection).  Failures are ignored: the drain that
 * follows is bounded, and a server that cannot be reached to cancel will
 * either finish the command or break the connection. */
static void send_cancel(PGconn *conn)
{
    if (PQtransactionStatus(conn) != PQTRANS_ACTIVE)
        return;
    PGcancel *c = PQgetCancel(conn);
    if (c == NULL)
        return;
    char errbuf[256];
    PQcancel(c, errbuf, (int)sizeof errbuf);
    PQfreeCancel(c);
}

/* The first repeat of a cancel request, and the most time between two. */
#define RECANCEL_FIRST_MS 50
#define RECANCEL_MAX_MS   1000

/* The clock of a drain: its bound, and when to repeat the cancel request. */
typedef struct {
    ctx_time_t limit;
    ctx_time_t next;
    ctx_duration_t every;
    bool recancel;
} drain_clock_t;

static drain_clock_t drain_clock(bool recancel)
{
    ctx_time_t now = ctx_now();
    drain_clock_t dc = {
        .limit = now + (ctx_duration_t)CTX_PQ_DRAIN_TIMEOUT_MS * CTX_MILLISECOND,
        .every = RECANCEL_FIRST_MS * CTX_MILLISECOND,
        .recancel = recancel,
    };
    dc.next = now + dc.every;
    return dc;
}

/* What a drain does when it has waited until dc's next instant: repeat the
 * cancel request, or at the drain's bound give the connection up (shutting
 * its socket down makes libpq see it broken, so PQgetResult returns at
 * once).  Returns false when it gave up. */
static bool drain_tick(PGconn *conn, drain_clock_t *dc, bool recancel)
{
    if (!recancel) {
        shutdown(PQsocket(conn), SHUT_RDWR);
        PQconsumeInput(conn);
        return false;
    }
    send_cancel(conn);
    dc->every *= 2;
    if (dc->every > RECANCEL_MAX_MS * CTX_MILLISECOND)
        dc->every = RECANCEL_MAX_MS * CTX_MILLISECOND;
    dc->next = ctx_now() + dc->every;
    return true;
}

/* Waits, after a cancel request, until PQgetResult will not block.  A
 * request that reaches the backend while it is still reading the command
 * is dropped by PostgreSQL (it cancels nothing that has not started), so
 * while the command runs on the request is repeated, 50 ms after the first
 * and then at doubling intervals up to a second.  Repeating is as safe as
 * the first request: each one is complete (PQcancel has read the server's
 * close) before the drain goes on, and the drain ends only at the command's
 * end.  At the drain's bound the connection is given up. */
static void wait_drained(PGconn *conn, drain_clock_t *dc)
{
    for (;;) {
        bool recancel = dc->recancel && dc->next < dc->limit;
        if (wait_result(NULL, NULL, conn, recancel ? dc->next : dc->limit) != WAIT_LIMIT)
            return;
        if (!drain_tick(conn, dc, recancel))
            return;
    }
}

/* Reads and discards a COPY TO's data to its end, on the clock of the drain
 * (the cancel request repeated, the connection given up at the bound): the
 * COPY may have started after a request that was dropped, and its rows
 * could take any time to come. */
static void drain_copy_out(PGconn *conn, drain_clock_t *dc)
{
    for (;;) {
        char *buf;
        int n = PQgetCopyData(conn, &buf, 1);
        if (n > 0) {
            PQfreemem(buf);
            continue;
        }
        if (n < 0)
            return; /* -1: the COPY is over; -2: an error, which PQgetResult gives */
        bool recancel = dc->recancel && dc->next < dc->limit;
        int rc = wait_socket(NULL, NULL, PQsocket(conn), POLLIN, recancel ? dc->next : dc->limit);
        if (rc == WAIT_LIMIT) {
            if (!drain_tick(conn, dc, recancel))
                return;
        } else if (rc != WAIT_READY || !PQconsumeInput(conn)) {
            return;
        }
    }
}

/* Reads every result left on conn, bounded by CTX_PQ_DRAIN_TIMEOUT_MS (see
 * wait_drained; recancel after a cancel request).  Returns the combined
 * result (or NULL) and sets *cancelled when one of them says the command
 * was cancelled. */
static PGresult *drain(PGconn *conn, PGresult *last, bool *cancelled, bool recancel)
{
    drain_clock_t dc = drain_clock(recancel);
    for (;;) {
        wait_drained(conn, &dc);
        PGresult *r = PQgetResult(conn);
        if (r == NULL)
            return last;
        if (is_cancel_error(r))
            *cancelled = true;
        if (is_copy(r)) {
            /* A COPY is ended by the client: fail a COPY FROM, read a COPY
             * TO to its end. */
            if (PQresultStatus(r) == PGRES_COPY_OUT) {
                drain_copy_out(conn, &dc);
            } else {
                PQputCopyEnd(conn, "cancelled");
            }
            PQclear(r);
            continue;
        }
        keep_result(&last, r);
    }
}

/* The end of a command whose context ended (err): cancel it on the server,
 * read its results to the end, and give the real result if the command
 * finished anyway, else NULL with errno = err. */
static PGresult *cancel_and_drain(PGconn *conn, PGresult *last, int err)
{
    send_cancel(conn);
    bool cancelled = false;
    last = drain(conn, last, &cancelled, true);
    if (cancelled || last == NULL) {
        PQclear(last);
        errno = err;
        return NULL;
    }
    return last;
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

/* Reads the result of a ROLLBACK sent on conn.  0 or EIO. */
static int rollback_read(PGconn *conn)
{
    bool cancelled = false;
    PGresult *r = drain(conn, NULL, &cancelled, false);
    int rc = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : EIO;
    PQclear(r);
    return rc;
}

/* Sends ROLLBACK on an idle connection and reads its result.  0 or EIO. */
static int rollback_now(PGconn *conn)
{
    return PQsendQuery(conn, "ROLLBACK") ? rollback_read(conn) : EIO;
}

/* Brings a transaction whose context ended to TX_ROLLED_BACK; with tx->lock
 * held and no statement running.  0 or EIO. */
static int tx_finish_rollback(struct ctx_pq_tx *tx)
{
    int rc = 0;
    if (tx->state == TX_ROLLBACK_SENT) {
        rc = rollback_read(tx->conn);
    } else if (tx->state != TX_ROLLED_BACK) {
        rc = rollback_now(tx->conn);
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
        tx_finish_rollback(tx);
        pthread_mutex_unlock(&tx->lock);
        return err != 0 ? err : CTX_CANCELED;
    }
    tx->running = true;
    pthread_mutex_unlock(&tx->lock);
    return 0;
}

/* The statement of tx is over.  If the transaction's context ended while it
 * ran, the transaction is rolled back now; if it ends after tx_lock looked,
 * its AfterFunc finds no statement running and sends the ROLLBACK. */
static void tx_leave(struct ctx_pq_tx *tx)
{
    int err = tx_lock(tx);
    tx->running = false;
    if (tx->state != TX_OPEN || err != 0)
        tx_finish_rollback(tx);
    pthread_mutex_unlock(&tx->lock);
}

/* ---------------------------------------------------------------------------
 * Statements
 */

/* The results of the command just sent on conn, under ctx (and, inside a
 * transaction, under the transaction's context tx_ctx too). */
static PGresult *await_results(ctx_t *ctx, ctx_t *tx_ctx, PGconn *conn)
{
    PGresult *last = NULL;
    for (;;) {
        int rc = wait_result(ctx, tx_ctx, conn, 0);
        if (rc != WAIT_READY) {
            if (rc > 0 && (ctx_err(ctx) == rc || (tx_ctx != NULL && ctx_err(tx_ctx) == rc)))
                return cancel_and_drain(conn, last, rc);
            /* poll itself failed: give up on the command as lost. */
            PQclear(last);
            return cancel_and_drain(conn, NULL, rc);
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
            /* Nothing more will come; libpq's own drain ends at once. */
            bool cancelled = false;
            return drain(conn, last, &cancelled, false);
        }
    }
}

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
    int sent = cmd->params
                   ? PQsendQueryParams(conn, cmd->sql, cmd->nparams, cmd->types, cmd->values,
                                       cmd->lengths, cmd->formats, cmd->result_format)
                   : PQsendQuery(conn, cmd->sql);
    PGresult *r;
    if (!sent) {
        /* As PQexec does: the reason (a broken connection, another command
         * in progress) as an error result. */
        r = error_result(conn);
    } else {
        r = await_results(ctx, tx != NULL ? tx->ctx : NULL, conn);
    }
    if (tx != NULL) {
        int saved = errno;
        tx_leave(tx);
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
    send_cancel(conn);
    if (!done_before) {
        /* The result this call waited for may have been complete before the
         * cancel landed: then it is the caller's, as with ctx_pq_exec, and
         * the caller's next call (under the ended context) drains the rest. */
        drain_clock_t dc = drain_clock(true);
        wait_drained(conn, &dc);
        PGresult *r = PQgetResult(conn);
        if (r != NULL && !is_cancel_error(r) && !is_copy(r)) {
            errno = 0;
            return r;
        }
        PQclear(r);
    }
    bool cancelled = false;
    PQclear(drain(conn, NULL, &cancelled, true));
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
        rollback_now(conn);
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

int ctx_pq_commit(ctx_pq_tx_t *tx)
{
    if (tx == NULL)
        return EINVAL;
    tx_detach(tx);
    PGconn *conn = tx->conn;
    pthread_mutex_lock(&tx->lock);
    int rc = ctx_err(tx->ctx);
    if (rc != 0 || tx->state != TX_OPEN) {
        tx_finish_rollback(tx);
        pthread_mutex_unlock(&tx->lock);
        tx_free(tx);
        return rc != 0 ? rc : CTX_CANCELED;
    }
    pthread_mutex_unlock(&tx->lock);
    PGresult *r = ctx_pq_exec(tx->ctx, conn, "COMMIT");
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
        rollback_now(conn);
    tx_free(tx);
    return rc;
}

int ctx_pq_rollback(ctx_pq_tx_t *tx)
{
    if (tx == NULL)
        return EINVAL;
    tx_detach(tx);
    pthread_mutex_lock(&tx->lock);
    int rc = tx_finish_rollback(tx);
    pthread_mutex_unlock(&tx->lock);
    tx_free(tx);
    return rc;
}
