/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq: PostgreSQL through libpq under a context (Go's database/sql
 * ExecContext, QueryContext and BeginTx).
 *
 * Every call runs on libpq's asynchronous API (PQconnectStart/PQconnectPoll,
 * PQsend*, PQconsumeInput) and waits with poll(2) on the connection's socket
 * and the context's done fd at once, so a cancel or a deadline is noticed the
 * moment it happens.
 *
 * What a cancel does.  When the context ends while a statement runs, the call
 * sends a cancel request to the server and reads and discards the
 * statement's results, for at most CTX_PQ_CANCEL_GRACE_MS after the end.  If
 * the server confirms the cancel (or finishes) within that grace, the
 * connection is idle and usable for the next statement (inside a transaction
 * it is in the failed state, as PostgreSQL makes it).  If not (the network
 * went dark, the peer trickles, the server hangs), the call gives the
 * connection up before it returns: it shuts the connection's socket down, so
 * PQstatus is CONNECTION_BAD at once and the server rolls back whatever
 * transaction was open when it sees the close.  After the return the
 * connection is therefore always one of two things: usable, with no cancel
 * request in flight, or broken.  Close a broken one with PQfinish (or
 * PQreset it); nothing else of it lives on in the library.
 *
 * How the request is sent.  libpq's PQcancel connects, sends and then waits
 * for the server to close the cancel connection, with no time limit; on a
 * network that has gone dark it never returns.  So each request runs
 * PQcancel (async-signal-safe by design) in a child process that a
 * short-lived library thread starts (on Linux one that shares the address
 * space, as posix_spawn's does), waits for and kills with SIGKILL at a
 * bound; the child keeps no descriptor of the caller's.  The caller only
 * watches the thread's outcome within its grace.  When the connection is
 * given up while the statement may still run on the server, requests go on
 * in the background (up to four, 100, 300 and 900 ms apart) for at most
 * CTX_PQ_DRAIN_TIMEOUT_MS, after which no thread, process
 * or descriptor of the cancel remains.  A request that never reaches the
 * server leaves the statement running there until it ends by itself: set
 * statement_timeout (ends any statement past a time), and
 * client_connection_check_interval with tcp_keepalives_idle,
 * tcp_keepalives_interval and tcp_keepalives_count (end a backend whose
 * client has gone) on the server; docs/failure-modes.md has the details.
 * The process must leave these children to the library: a SIGCHLD handler
 * that reaps every child with waitpid(-1) makes the library count a request
 * as delivered without knowing.
 *
 * Why a late cancel cannot hit the next statement.  A kept connection has
 * no cancel request in flight: every request sent has been processed (the
 * server closed the cancel connection, which it does after signalling the
 * backend) and the backend has sent ReadyForQuery.  A backend that takes the
 * signal after it finished the statement takes it at the latest when its
 * read of the next command returns, and PostgreSQL checks for a pending
 * cancel once more before it leaves the "reading a command" state, where a
 * cancel is dropped as a no-op (postgres.c, PostgresMain step 5).  So a late
 * cancel is spent before the next statement starts.  A request whose outcome
 * is unknown when the grace ends (still in flight, or killed) makes the call
 * give the connection up instead.  Go's pgx sends the cancel without waiting
 * and could cancel the next query; lib/pq throws the connection away after
 * every cancel.
 *
 * A cancel request that reaches the backend before it has started the
 * command (the context ended just as the statement was sent) is dropped by
 * PostgreSQL, so while the command still runs the request is repeated, 5 ms
 * after the previous one was processed, within the grace.
 *
 * Bounds.  Every call returns within CTX_PQ_CANCEL_GRACE_MS of its context's
 * end, plus scheduling delays, whatever the network or the server does:
 * statements are sent in libpq's non-blocking mode and flushed under the
 * context (a statement cut off half sent gives the connection up), results
 * are awaited under it, the cancel is bounded as above.  A connection that
 * breaks (reset, half-close, the server killed) ends the call at once with a
 * PGRES_FATAL_ERROR result.  Not bounded by the context: the name
 * resolution inside PQconnectStart (use hostaddr=, or resolve the name with
 * ctx_dial's resolver first).
 *
 * Threading.  A PGconn is used by one thread at a time, as libpq requires;
 * the library adds the exception that makes BeginTx work: when a
 * transaction's context ends while no statement of it runs, the thread that
 * ends the context (or the library's timer thread, for a deadline) sends the
 * ROLLBACK at once.  So while a transaction is open use its connection only
 * through ctx_pq_exec, ctx_pq_exec_params, ctx_pq_commit and
 * ctx_pq_rollback, which coordinate with that thread: no PQsend* with
 * ctx_pq_get_result (the ROLLBACK could be sent between the two), and no
 * other libpq call on the connection, not even one that only reads its
 * state (PQtransactionStatus, PQerrorMessage), which the ROLLBACK changes.
 * End the transaction before PQfinish: the library keeps the connection's
 * address while the transaction lives.
 *
 * Errors.  NULL for ctx, conn or sql gives NULL with errno EINVAL (EINVAL as
 * a return value for the calls that return a code).  A context that is
 * already done fails at once with its error without touching the connection.
 */
#ifndef CTX_PQ_H
#define CTX_PQ_H

#include <ctx.h>
#include <libpq-fe.h>

#if defined(CTX_STATIC_DEFINE)
#define CTX_PQ_EXPORT
#elif defined(__GNUC__)
#define CTX_PQ_EXPORT __attribute__((visibility("default")))
#else
#define CTX_PQ_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* How long a call goes on after its context ended, to let the server confirm
 * the cancel and send what it owes, before it gives the connection up (see
 * "Bounds" above).  The call returns within this much of the end. */
#define CTX_PQ_CANCEL_GRACE_MS 35

/* How long cancel requests may go on in the background after a call gave its
 * connection up (see "Bounds" above). */
#define CTX_PQ_DRAIN_TIMEOUT_MS 5000

/*
 * Opens a connection (PQconnectStart/PQconnectPoll) under ctx: a server that
 * accepts the TCP connection but never answers cannot hold the caller past
 * ctx's deadline.  Returns 0 and a connection in CONNECTION_OK in *conn (close
 * it with PQfinish), or an errno-style code with *conn NULL: ctx_err(ctx) when
 * ctx ended first; ECONNREFUSED, ENOENT (no such host, socket or database),
 * EACCES (authentication), ETIMEDOUT (connect_timeout, below), ENOMEM, or
 * EPROTO for any other failure libpq reports (the codes are read from libpq's
 * message, so a translated message, under a non-English LC_MESSAGES, gives
 * EPROTO).  EINVAL for a NULL argument.
 *
 * libpq ignores the connect_timeout parameter under PQconnectPoll; this call
 * applies it itself, to the whole call (PQconnectdb applies it to each host
 * of a multi-host conninfo in turn), 2 s at least as in libpq, and returns
 * ETIMEDOUT when it passes first.  ctx's deadline bounds the call too, and
 * reports CTX_DEADLINE_EXCEEDED, which is also ETIMEDOUT: as everywhere in
 * libctx (ctx.h, "A context's end and other timeouts"), the connect_timeout
 * or a server's timeout is reported only while ctx_err(ctx) == 0, so
 * `err == ctx_err(ctx)` says it was ctx's deadline.
 */
CTX_PQ_EXPORT int ctx_pq_connect(ctx_t *ctx, const char *conninfo, PGconn **conn);

/*
 * PQexec(conn, sql) under ctx.  Returns what PQexec returns: the last result,
 * a server error as a PGresult whose status says so (free every result with
 * PQclear).  When ctx ends first the statement is cancelled on the server
 * and the call returns NULL with errno = ctx_err(ctx) within
 * CTX_PQ_CANCEL_GRACE_MS, the connection idle, or broken (CONNECTION_BAD)
 * when the server could not settle it in time (see "What a cancel does").
 * A cancel that comes after the server finished is harmless: the caller gets
 * the real result.  A connection that breaks gives a PGRES_FATAL_ERROR result
 * naming the cause, never a hang.  NULL with errno ENOMEM when libpq cannot
 * allocate a result.
 */
CTX_PQ_EXPORT PGresult *ctx_pq_exec(ctx_t *ctx, PGconn *conn, const char *sql);

/* PQexecParams under ctx, with the rules of ctx_pq_exec. */
CTX_PQ_EXPORT PGresult *ctx_pq_exec_params(ctx_t *ctx, PGconn *conn, const char *sql, int nparams,
                                           const Oid *types, const char *const *values,
                                           const int *lengths, const int *formats,
                                           int result_format);

/*
 * After any PQsend* call: the next result (PQgetResult) under ctx, or NULL
 * with errno 0 when there are no more.  When ctx ends first, the running
 * command is cancelled on the server; if the result this call waited for
 * was complete anyway, it is returned (a late cancel is harmless), else
 * every remaining result is read and discarded and the call returns NULL
 * with errno = ctx_err(ctx).  A call under a context that is already done
 * returns no result: it cancels the command and discards its results,
 * waiting only until the server has stopped it, within the grace; either way
 * the connection is then idle or broken, as for ctx_pq_exec.
 */
CTX_PQ_EXPORT PGresult *ctx_pq_get_result(ctx_t *ctx, PGconn *conn);

/*
 * database/sql's BeginTx.  ctx_pq_begin sends BEGIN under ctx and returns 0
 * and the transaction in *tx, or an errno-style code (ctx_err, EBUSY when the
 * connection already has a transaction of this library, EIO when the server
 * refused BEGIN, ENOMEM) with *tx NULL.
 *
 * If ctx ends before the transaction is committed, the transaction is rolled
 * back: at once when no statement of it is running (the thread that ends ctx
 * sends the ROLLBACK), else as soon as the running statement is cancelled.
 * Statements of the transaction are run with ctx_pq_exec/ctx_pq_exec_params
 * on the same connection, under ctx or any other context; once the
 * transaction has been rolled back because ctx ended, they fail with NULL and
 * errno = ctx_err(ctx) instead of running outside the transaction.
 *
 * ctx_pq_commit commits and returns 0; ctx_err(ctx) if ctx ended first (the
 * transaction was rolled back); EIO if the server did not commit (an error,
 * or a transaction already failed, which PostgreSQL rolls back instead; the
 * server's message is in PQerrorMessage(conn) for an error).  ctx_pq_rollback
 * rolls back and returns 0 (also when ctx's end already did), or EIO when the
 * connection is broken.  Either one ends the transaction and frees tx: call
 * exactly one of them, exactly once; the connection is idle afterwards.
 * Both take no context: as in Go, the transaction's context governs them.
 * They return within CTX_PQ_CANCEL_GRACE_MS of its end (a transaction under
 * ctx_background() waits as long as the server takes); when the grace ends
 * first the connection is given up and the server rolls back.
 * ctx_pq_tx_commit and ctx_pq_tx_rollback below take a bound of the caller's
 * as well.
 */
typedef struct ctx_pq_tx ctx_pq_tx_t;
CTX_PQ_EXPORT int ctx_pq_begin(ctx_t *ctx, PGconn *conn, ctx_pq_tx_t **tx);
CTX_PQ_EXPORT int ctx_pq_commit(ctx_pq_tx_t *tx);
CTX_PQ_EXPORT int ctx_pq_rollback(ctx_pq_tx_t *tx);

/*
 * ctx_pq_commit and ctx_pq_rollback with one more bound, ctx, beside the
 * transaction's context: the call returns within CTX_PQ_CANCEL_GRACE_MS of
 * the first of the two to end.  When ctx ends first, ctx_pq_tx_commit
 * commits nothing if ctx had ended before the call, else it cancels the
 * COMMIT and returns ctx_err(ctx); if the server answered anyway the real
 * answer is returned; if the connection had to be given up (PQstatus
 * CONNECTION_BAD) whether the transaction committed is unknown, as with any
 * connection lost during COMMIT.  ctx_pq_tx_rollback returns 0 when the
 * connection is left idle, EIO when it was given up (the server then rolls
 * back as the connection closes).  Either one ends the transaction and frees
 * tx, as ctx_pq_commit and ctx_pq_rollback do.  EINVAL for a NULL argument
 * (tx is then not freed).
 */
CTX_PQ_EXPORT int ctx_pq_tx_commit(ctx_t *ctx, ctx_pq_tx_t *tx);
CTX_PQ_EXPORT int ctx_pq_tx_rollback(ctx_t *ctx, ctx_pq_tx_t *tx);

#ifdef __cplusplus
}
#endif

#endif /* CTX_PQ_H */
