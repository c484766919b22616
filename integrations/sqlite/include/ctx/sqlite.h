/* SPDX-License-Identifier: MIT */

/*
 * libctx-sqlite: SQLite statements under a context (Go's database/sql
 * ExecContext and QueryContext over the embedded database).
 *
 * A cancel or a deadline of the context interrupts the statement that runs
 * under it, and only that one.  SQLite's own sqlite3_interrupt() is not used:
 * it stops every statement running on the connection and stays in effect until
 * all of them have finished, so a cancel meant for one request would fail
 * another request sharing the connection.  Instead the library gives the
 * connection a progress handler, and each call publishes its context to that
 * handler in a thread-local variable for the duration of the call.  SQLite runs
 * the handler on the thread that executes the statement, which is the thread
 * that made the call, so the handler always sees the context of the statement
 * it interrupts, whatever other threads do on the same connection (serialized
 * mode) and with no shared state written per call.
 *
 * The progress handler runs every CTX_SQLITE_PROGRESS_OPS virtual machine
 * instructions.  A cancel therefore stops a statement after at most that many
 * instructions (microseconds of work), and the check costs one load of the
 * context's state per call of the handler.
 *
 * While the database is locked by another connection (SQLITE_BUSY) the call
 * waits for the lock as long as the context allows, and at most as long as the
 * connection's busy timeout; a cancel ends that wait at once.
 *
 * Bound.  Whatever the call waits for (a lock, a long statement), it returns
 * within a thread wake-up of its context's end, deadline or cancel; the tests
 * hold every round to 100 ms (docs/failure-modes.md).
 *
 * What the library installs.  The first call on a cancellable context that
 * uses a connection installs the library's progress handler and busy handler
 * on it, and an SQL function named ctx_sqlite_state_ (it returns NULL; its
 * destructor tells the library that the connection closed), for the life of
 * the connection (SQLite has no way to read back a handler, so none could be
 * restored per call).  The busy timeout the
 * connection had then (sqlite3_busy_timeout) is read once and kept: plain
 * SQLite calls on the connection keep waiting that long, the library's busy
 * handler waiting as SQLite's own would.  From then on do not set a progress
 * handler, a busy handler or a busy timeout on the connection (not even with
 * PRAGMA busy_timeout, which would replace the library's busy handler and
 * reads 0 once it is installed); change the timeout with
 * ctx_sqlite_busy_timeout.  Calls on ctx_background() or ctx_todo(), which can
 * never be cancelled, install nothing and cost nothing beyond sqlite3_step.
 *
 * Transactions.  A statement interrupted inside an explicit transaction
 * (BEGIN ... COMMIT) follows SQLite's rule for interrupts: if the statement
 * writes (INSERT, UPDATE, DELETE, ...), SQLite rolls the whole transaction
 * back and the connection is in autocommit mode again (sqlite3_get_autocommit
 * returns 1); an interrupted read-only statement (SELECT) leaves the
 * transaction open.  Go's database/sql gives the same outcome for a write
 * cancelled inside Tx.ExecContext.
 *
 * Threading.  Every function is safe to call from any thread, under the same
 * rules as the SQLite functions it wraps (serialized mode: any thread at any
 * time; multi-thread mode: one thread per connection at a time).
 *
 * Errors.  NULL for stmt, db or sql gives SQLITE_MISUSE and sets errno to
 * EINVAL, without touching anything.  A context that is already done gives
 * SQLITE_INTERRUPT at once without running anything: ctx_sqlite_step resets
 * the statement, as after any interrupt (a statement left in the middle of a
 * scan would keep its read transaction and lock), and ctx_sqlite_exec does
 * not start.
 */
#ifndef CTX_SQLITE_H
#define CTX_SQLITE_H

#include <ctx.h>
#include <sqlite3.h>

#if defined(CTX_STATIC_DEFINE)
#define CTX_SQLITE_EXPORT
#elif defined(__GNUC__)
#define CTX_SQLITE_EXPORT __attribute__((visibility("default")))
#else
#define CTX_SQLITE_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* The interval, in SQLite virtual machine instructions, at which the progress
 * handler of a running call checks its context. */
#define CTX_SQLITE_PROGRESS_OPS 1000

/*
 * sqlite3_step(stmt) under ctx.  Returns what sqlite3_step returns, or
 * SQLITE_INTERRUPT when ctx ended first: the statement has then been reset and
 * may be stepped again (its bindings are kept), and ctx_err(ctx) says why.  A
 * cancel that comes after the step finished is harmless: the caller gets the
 * real result.  Blocks as sqlite3_step does, plus the busy waits described
 * above; never longer than ctx allows.
 */
CTX_SQLITE_EXPORT int ctx_sqlite_step(ctx_t *ctx, sqlite3_stmt *stmt);

/*
 * sqlite3_exec(db, sql, row, arg, errmsg) under ctx, with the rules of
 * ctx_sqlite_step for every statement in sql.  Returns what sqlite3_exec
 * returns, or SQLITE_INTERRUPT when ctx ended first; then *errmsg (if errmsg is
 * not NULL) is a message that names the context's error, to be freed with
 * sqlite3_free like any sqlite3_exec message.  The row callback runs on the
 * calling thread while the connection's mutex is held, as with sqlite3_exec.
 */
CTX_SQLITE_EXPORT int ctx_sqlite_exec(ctx_t *ctx, sqlite3 *db, const char *sql,
                                      int (*row)(void *arg, int ncols, char **values, char **names),
                                      void *arg, char **errmsg);

/*
 * Sets the busy timeout of a connection that the library's handlers serve
 * (installing them if needed): what sqlite3_busy_timeout(db, ms) does for a
 * plain connection, for plain calls and calls under a context alike.  A
 * negative ms means 0 (SQLITE_BUSY at once).  Returns SQLITE_OK, SQLITE_MISUSE
 * (errno EINVAL) for a NULL db, or SQLITE_NOMEM.
 */
CTX_SQLITE_EXPORT int ctx_sqlite_busy_timeout(sqlite3 *db, int ms);

#ifdef __cplusplus
}
#endif

#endif /* CTX_SQLITE_H */
