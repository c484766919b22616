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
 * sends a cancel request to the server (PQcancel, on a separate short-lived
 * connection), then reads and discards the statement's results until libpq
 * has none left.  The connection is then idle and usable for the next
 * statement; inside a transaction it is in the failed state, as PostgreSQL
 * makes it.
 *
 * Why a late cancel cannot hit the next statement.  A cancel request is
 * handled by a server process that signals the backend and then closes the
 * cancel connection; libpq's PQcancel returns only after it has read that
 * close.  By then the signal is pending at the backend, and the call also
 * waits for the backend's ReadyForQuery before it returns.  A backend that
 * takes the signal after it finished the statement takes it at the latest
 * when its read of the next command returns, and PostgreSQL checks for a
 * pending cancel once more before it leaves the "reading a command" state,
 * where a cancel is dropped as a no-op (postgres.c, PostgresMain step 5).  So
 * a late cancel is spent before the next statement starts.  Go's pgx sends the cancel
 * without waiting and could cancel the next query; lib/pq throws the
 * connection away instead.  The test suite races cancels against completion
 * thousands of times, each followed by a SELECT 1 that must succeed.
 *
 * A cancel request that reaches the backend before it has started the
 * command (the context ended just as the statement was sent) is dropped by
 * PostgreSQL, so while the command still runs the request is repeated, 50 ms
 * later and then at doubling intervals up to a second; each repeat is
 * complete before the call goes on, so it is as safe as the first.
 *
 * Bounds.  The wait for the results after a cancel request is bounded by
 * CTX_PQ_DRAIN_TIMEOUT_MS: a server that neither finishes nor cancels within
 * that time is treated as lost, the connection's socket is shut down and the
 * call returns the resulting error (the connection is then CONNECTION_BAD and
 * must be reset or closed).  Sending a statement to the server is not
 * interruptible (libpq's blocking-mode write; it only blocks for statements
 * larger than the socket buffer), nor is a cancel request's own connection
 * to the server (PQcancel), nor the name resolution inside PQconnectStart
 * (use an address, or resolve with a cancellable resolver).
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

/* How long a call waits for the server after a cancel request before it
 * gives the connection up (see "Bounds" above). */
#define CTX_PQ_DRAIN_TIMEOUT_MS 10000

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
 * and the call returns NULL with errno = ctx_err(ctx), the connection idle.
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
 * waiting only until the server has stopped it (bounded as in "Bounds"), so
 * calling on until NULL leaves the connection idle either way.
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
 * Both may block for a round trip to the server; they take no context (as in
 * Go, the transaction's context governs them).
 */
typedef struct ctx_pq_tx ctx_pq_tx_t;
CTX_PQ_EXPORT int ctx_pq_begin(ctx_t *ctx, PGconn *conn, ctx_pq_tx_t **tx);
CTX_PQ_EXPORT int ctx_pq_commit(ctx_pq_tx_t *tx);
CTX_PQ_EXPORT int ctx_pq_rollback(ctx_pq_tx_t *tx);

#ifdef __cplusplus
}
#endif

#endif /* CTX_PQ_H */
