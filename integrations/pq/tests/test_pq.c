/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq against a real PostgreSQL (the cluster of the CTest fixture):
 * statements, cancels and deadlines cancelled on the server with the
 * connection kept, results after PQsend*, and BeginTx's rule.
 */
#include "check.h"

#include "pq_test.h"

#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>

static PGconn *observer; /* a second connection that watches the first */

static void test_bad_input(void)
{
    PGconn *conn = pq_open();
    PGconn *out = (PGconn *)1;
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), pq_conninfo(), NULL), EINVAL);
    CHECK_EQ_INT(ctx_pq_connect(NULL, pq_conninfo(), &out), EINVAL);
    CHECK_NULL(out);
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), NULL, &out), EINVAL);
    CHECK_FAILS_WITH(ctx_pq_exec(NULL, conn, "SELECT 1"), EINVAL);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx_background(), NULL, "SELECT 1"), EINVAL);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx_background(), conn, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_pq_exec_params(ctx_background(), conn, NULL, 0, NULL, NULL, NULL, NULL, 0),
                     EINVAL);
    CHECK_FAILS_WITH(ctx_pq_get_result(NULL, conn), EINVAL);
    CHECK_FAILS_WITH(ctx_pq_get_result(ctx_background(), NULL), EINVAL);
    ctx_pq_tx_t *tx = (ctx_pq_tx_t *)1;
    CHECK_EQ_INT(ctx_pq_begin(ctx_background(), NULL, &tx), EINVAL);
    CHECK_NULL(tx);
    CHECK_EQ_INT(ctx_pq_begin(ctx_background(), conn, NULL), EINVAL);
    CHECK_EQ_INT(ctx_pq_commit(NULL), EINVAL);
    CHECK_EQ_INT(ctx_pq_rollback(NULL), EINVAL);
    /* Nothing was lost. */
    CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    PQfinish(conn);
}

static void test_connect_errors(void)
{
    /* A port nobody listens on: bind one, learn its number, close it. */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    CHECK_EQ_INT(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ_INT(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    char info[128];
    snprintf(info, sizeof info, "host=127.0.0.1 port=%d user=postgres", ntohs(a.sin_port));
    PGconn *conn = (PGconn *)1;
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), info, &conn), ECONNREFUSED);
    CHECK_NULL(conn);

    char bad[600];
    snprintf(bad, sizeof bad, "%s dbname=no_such_database", pq_conninfo());
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), bad, &conn), ENOENT);
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), "this is not a conninfo", &conn), EPROTO);

    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    CHECK_EQ_INT(ctx_pq_connect(ctx, pq_conninfo(), &conn), CTX_CANCELED);
    CHECK_NULL(conn);
    ctx_unref(ctx);

    /* Over TCP too, under a live context with a deadline. */
    ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_pq_connect(ctx, pq_conninfo_in(getenv("CTX_PQ_STATE"), "conninfo_tcp"), &conn),
                 0);
    CHECK_EQ_INT(pq_int(conn, "SELECT 2"), 2);
    PQfinish(conn);
    ctx_unref(ctx);
}

static void test_exec(void)
{
    PGconn *conn = pq_open();
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    PGresult *r = ctx_pq_exec(ctx, conn, "SELECT 1");
    CHECK_NOT_NULL(r);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    CHECK_STR(PQgetvalue(r, 0, 0), "1");
    PQclear(r);

    const char *values[] = { "42", "forty-two" };
    r = ctx_pq_exec_params(ctx, conn, "SELECT $1::int + 1, $2::text", 2, NULL, values, NULL, NULL,
                           0);
    CHECK_NOT_NULL(r);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    CHECK_STR(PQgetvalue(r, 0, 0), "43");
    CHECK_STR(PQgetvalue(r, 0, 1), "forty-two");
    PQclear(r);

    /* Several statements: the last result, as PQexec gives it. */
    r = ctx_pq_exec(ctx, conn, "SELECT 1; SELECT 2");
    CHECK_NOT_NULL(r);
    CHECK_STR(PQgetvalue(r, 0, 0), "2");
    PQclear(r);

    /* A server error is a result that says so; the connection goes on. */
    r = ctx_pq_exec(ctx, conn, "SELECT nope");
    CHECK_NOT_NULL(r);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_FATAL_ERROR);
    CHECK_STR(PQresultErrorField(r, PG_DIAG_SQLSTATE), "42703");
    PQclear(r);
    r = ctx_pq_exec(ctx, conn, "SELECT 1; SELECT 1/0; SELECT 3");
    CHECK_NOT_NULL(r);
    CHECK_STR(PQresultErrorField(r, PG_DIAG_SQLSTATE), "22012");
    PQclear(r);
    CHECK_EQ_INT(pq_int(conn, "SELECT 5"), 5);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* After a statement stopped by its context: when the connection was kept,
 * the backend had sent ReadyForQuery when the call returned (it is idle) and
 * the connection answers; when it was given up (the server did not confirm
 * the cancel within the grace, as on a loaded machine), the backend's
 * statement is stopped all the same and the backend goes away.  A given up
 * connection is replaced. */
static void settled_on_server(PGconn **conn, int *pid)
{
    if (PQstatus(*conn) == CONNECTION_BAD) {
        fprintf(stderr, "   connection given up\n");
        CHECK(pq_await_state(observer, *pid, "(gone)", 30 * CTX_SECOND));
        PQfinish(*conn);
        *conn = pq_open();
        *pid = PQbackendPID(*conn);
        return;
    }
    CHECK_EQ_INT(PQtransactionStatus(*conn), PQTRANS_IDLE);
    char state[64];
    pq_backend_state(observer, *pid, state, sizeof state);
    CHECK_STR(state, "idle");
    CHECK_EQ_INT(pq_int(*conn, "SELECT 1"), 1);
}

/* A cancel during pg_sleep(10): the call returns soon, the statement
 * stops on the server, and the connection answers or was given up. */
static void test_cancel_on_server(void)
{
    PGconn *conn = pq_open();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    pq_canceller_t c;
    pq_cancel_later(&c, cancel, 100 * CTX_MILLISECOND);
    ctx_time_t start = check_mono_now();
    errno = 0;
    PGresult *r = ctx_pq_exec(ctx, conn, "SELECT pg_sleep(10)");
    ctx_duration_t took = check_mono_now() - start;
    CHECK_NULL(r);
    CHECK_EQ_INT(errno, CTX_CANCELED);
    CHECK_MSG(took < 8 * CTX_SECOND, "took %lld ms", (long long)(took / CTX_MILLISECOND));
    pq_canceller_join(&c);
    settled_on_server(&conn, &pid);
    ctx_unref(ctx);

    /* A deadline, through exec_params. */
    ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    const char *v[] = { "10" };
    errno = 0;
    r = ctx_pq_exec_params(ctx, conn, "SELECT pg_sleep($1::float8)", 1, NULL, v, NULL, NULL, 0);
    CHECK_NULL(r);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    settled_on_server(&conn, &pid);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* A deadline that passes while the statement is being sent or read by the
 * backend: the first cancel request may be dropped (PostgreSQL cancels only
 * a command it has started), so the library repeats it. */
static void test_cancel_right_after_send(void)
{
    PGconn *conn = pq_open();
    int given_up = 0;
    for (int i = 0; i < 20; i++) {
        ctx_t *ctx = ctx_with_timeout(ctx_background(), (i % 5) * 100 * CTX_MICROSECOND, NULL);
        ctx_time_t start = check_mono_now();
        errno = 0;
        PGresult *r = ctx_pq_exec(ctx, conn, "SELECT pg_sleep(10)");
        CHECK_NULL(r);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        CHECK_MSG(check_mono_now() - start < PQ_BOUND + (i % 5) * 100 * CTX_MICROSECOND,
                  "round %d: %lld ms", i,
                  (long long)((check_mono_now() - start) / CTX_MILLISECOND));
        /* Kept when the repeats stopped the command within the grace, given
         * up otherwise (on a slow machine); a kept one answers rightly. */
        if (pq_kept_or_reopen(&conn, pq_conninfo()))
            CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
        else
            given_up++;
        ctx_unref(ctx);
    }
    fprintf(stderr, "   %d of 20 connections given up\n", given_up);
    PQfinish(conn);
}

static void test_already_done(void)
{
    PGconn *conn = pq_open();
    pq_ok(conn, "CREATE TEMP TABLE t(x int)");
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx, conn, "INSERT INTO t VALUES (1)"), CTX_CANCELED);
    CHECK_FAILS_WITH(
        ctx_pq_exec_params(ctx, conn, "INSERT INTO t VALUES (2)", 0, NULL, NULL, NULL, NULL, 0),
        CTX_CANCELED);
    ctx_pq_tx_t *tx;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), CTX_CANCELED);
    CHECK_NULL(tx);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(pq_int(conn, "SELECT count(*) FROM t"), 0);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* Inside an explicit transaction a cancelled statement leaves the
 * transaction failed, as PostgreSQL makes it; the connection still talks. */
static void test_cancel_in_plain_transaction(void)
{
    PGconn *conn = pq_open();
    pq_ok(conn, "BEGIN");
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx, conn, "SELECT pg_sleep(10)"), CTX_DEADLINE_EXCEEDED);
    ctx_unref(ctx);
    /* Kept: in the failed transaction.  Given up (a slow machine): the
     * server rolls back as the connection closes. */
    if (PQstatus(conn) != CONNECTION_BAD) {
        CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_INERROR);
        pq_ok(conn, "ROLLBACK");
        CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    }
    PQfinish(conn);
}

static void test_get_result(void)
{
    PGconn *conn = pq_open();
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    CHECK(PQsendQuery(conn, "SELECT 1; SELECT 2"));
    PGresult *r = ctx_pq_get_result(ctx, conn);
    CHECK_NOT_NULL(r);
    CHECK_STR(PQgetvalue(r, 0, 0), "1");
    PQclear(r);
    r = ctx_pq_get_result(ctx, conn);
    CHECK_NOT_NULL(r);
    CHECK_STR(PQgetvalue(r, 0, 0), "2");
    PQclear(r);
    errno = EBADF;
    CHECK_NULL(ctx_pq_get_result(ctx, conn));
    CHECK_EQ_INT(errno, 0);
    ctx_unref(ctx);

    /* A deadline while waiting: cancelled on the server, drained. */
    ctx = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    CHECK(PQsendQuery(conn, "SELECT pg_sleep(10)"));
    CHECK_FAILS_WITH(ctx_pq_get_result(ctx, conn), CTX_DEADLINE_EXCEEDED);
    if (pq_kept_or_reopen(&conn, pq_conninfo())) {
        CHECK_NULL(PQgetResult(conn));
        CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    }
    ctx_unref(ctx);

    /* A context that is already done: no waiting, the command cancelled.
     * The cancel request leaves at once, often before the backend has read
     * the command, and PostgreSQL drops a cancel that arrives then: the
     * library must repeat it, or each round would take the full 10 s. */
    ctx_cancel_t *cancel;
    ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    for (int i = 0; i < 10; i++) {
        CHECK(PQsendQuery(conn, "SELECT pg_sleep(10)"));
        ctx_time_t start = check_mono_now();
        CHECK_FAILS_WITH(ctx_pq_get_result(ctx, conn), CTX_CANCELED);
        CHECK_MSG(check_mono_now() - start < PQ_BOUND, "round %d", i);
        if (pq_kept_or_reopen(&conn, pq_conninfo()))
            CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    }
    ctx_unref(ctx);
    PQfinish(conn);
}

static long long count_rows(PGconn *conn)
{
    return pq_int(conn, "SELECT count(*) FROM ctx_pq_tx_rows");
}

static void test_tx_commit_and_rollback(void)
{
    PGconn *conn = pq_open();
    pq_ok(conn, "DROP TABLE IF EXISTS ctx_pq_tx_rows; CREATE TABLE ctx_pq_tx_rows(x int)");
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);

    ctx_pq_tx_t *tx;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_INTRANS);
    ctx_pq_tx_t *again;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &again), EBUSY);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (1)"));
    CHECK_EQ_INT(ctx_pq_commit(tx), 0);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(observer), 1);

    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (2)"));
    CHECK_EQ_INT(ctx_pq_rollback(tx), 0);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(conn), 1);

    /* A transaction that failed: COMMIT rolls back, commit says EIO. */
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (3)"));
    PGresult *r = ctx_pq_exec(ctx, conn, "SELECT 1/0");
    CHECK_EQ_INT(PQresultStatus(r), PGRES_FATAL_ERROR);
    PQclear(r);
    CHECK_EQ_INT(ctx_pq_commit(tx), EIO);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(conn), 1);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* Go's BeginTx rule, idle case: the context ends while no statement runs;
 * the transaction is rolled back at once (the backend leaves "idle in
 * transaction" without any further call on the connection). */
static void test_tx_rolled_back_at_once(void)
{
    PGconn *conn = pq_open();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_pq_tx_t *tx;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (10)"));
    CHECK(pq_await_state(observer, pid, "idle in transaction", 30 * CTX_SECOND));
    ctx_cancel(cancel);
    CHECK(pq_await_state(observer, pid, "idle", 30 * CTX_SECOND));
    CHECK_EQ_INT(count_rows(observer), 1);
    /* A statement now would run outside the transaction: it is refused. */
    CHECK_FAILS_WITH(ctx_pq_exec(ctx_background(), conn, "INSERT INTO ctx_pq_tx_rows VALUES (11)"),
                     CTX_CANCELED);
    CHECK_EQ_INT(ctx_pq_commit(tx), CTX_CANCELED);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(conn), 1);
    ctx_unref(ctx);

    /* The same with a deadline, which the library's timer thread ends. */
    ctx = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (12)"));
    CHECK_EQ_INT(ctx_wait(ctx, CTX_FOREVER), CTX_DEADLINE_EXCEEDED);
    CHECK(pq_await_state(observer, pid, "idle", 30 * CTX_SECOND));
    CHECK_EQ_INT(ctx_pq_rollback(tx), 0);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(conn), 1);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* Running case: a statement of the transaction runs under another context
 * (here background) when the transaction's context ends: it is cancelled,
 * and the transaction rolled back as soon as it stops. */
static void test_tx_running_statement_cancelled(void)
{
    PGconn *conn = pq_open();
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_pq_tx_t *tx;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_tx_rows VALUES (20)"));
    pq_canceller_t c;
    pq_cancel_later(&c, cancel, 100 * CTX_MILLISECOND);
    ctx_time_t start = check_mono_now();
    CHECK_FAILS_WITH(ctx_pq_exec(ctx_background(), conn, "SELECT pg_sleep(10)"), CTX_CANCELED);
    CHECK(check_mono_now() - start < 8 * CTX_SECOND);
    pq_canceller_join(&c);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(count_rows(observer), 1);
    CHECK_EQ_INT(ctx_pq_commit(tx), CTX_CANCELED);
    CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    ctx_unref(ctx);

    /* A statement cancelled by its own context leaves the transaction
     * failed but open: commit reports EIO and the server rolled back. */
    ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    ctx_t *short_ctx = ctx_with_timeout(ctx, 50 * CTX_MILLISECOND, NULL);
    CHECK_FAILS_WITH(ctx_pq_exec(short_ctx, conn, "SELECT pg_sleep(10)"), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_INERROR);
    CHECK_EQ_INT(ctx_pq_commit(tx), EIO);
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    ctx_unref(short_ctx);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* An AfterFunc that holds up the thread ending its context for 100 ms. */
static void slow_after_func(void *arg)
{
    (void)arg;
    check_sleep_ns(100 * CTX_MILLISECOND);
}

struct timed_cancel {
    ctx_cancel_t *cancel;
    ctx_duration_t took;
    pthread_t thread;
};

static void *timed_cancel(void *arg)
{
    struct timed_cancel *t = arg;
    ctx_time_t start = check_mono_now();
    ctx_cancel(t->cancel);
    t->took = check_mono_now() - start;
    return NULL;
}

static void *continue_later(void *arg)
{
    check_sleep_ns(1500 * CTX_MILLISECOND);
    kill((pid_t)(intptr_t)arg, SIGCONT);
    return NULL;
}

/* The thread that ends a transaction's context (the library's timer
 * thread, for a deadline) runs the transaction's AfterFunc; it must not wait
 * for a round trip that the caller's thread makes with the transaction
 * locked.  Here the caller's statement comes just after the context ended,
 * while the ending thread is still in another AfterFunc (one registered
 * before and one after BEGIN, whatever order they run in), and the backend
 * is stopped for 1.5 s, so the caller's ROLLBACK cannot be answered: the
 * cancel must return long before it, and the caller gives the connection up
 * after its grace. */
static void test_tx_end_not_held_by_rollback(void)
{
    PGconn *conn = pq_open();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_EQ_INT(ctx_after_func(ctx, slow_after_func, NULL, NULL), 0);
    ctx_pq_tx_t *tx;
    CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), 0);
    CHECK_EQ_INT(ctx_after_func(ctx, slow_after_func, NULL, NULL), 0);
    CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
    pthread_t resume;
    check_thread_start(&resume, continue_later, (void *)(intptr_t)pid);
    struct timed_cancel t = { .cancel = cancel };
    check_thread_start(&t.thread, timed_cancel, &t);
    while (ctx_err(ctx) == 0)
        check_sleep_ns(100 * CTX_MICROSECOND);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx_background(), conn, "SELECT 1"), CTX_CANCELED);
    check_thread_join(t.thread);
    check_thread_join(resume);
    fprintf(stderr, "   ctx_cancel took %lld ms\n", (long long)(t.took / CTX_MILLISECOND));
    CHECK_MSG(t.took < 1000 * CTX_MILLISECOND, "ctx_cancel took %lld ms",
              (long long)(t.took / CTX_MILLISECOND));
    /* The ROLLBACK cannot be answered by a stopped backend within the
     * grace: the connection is given up, and the server rolls back as it
     * sees the connection close. */
    CHECK_EQ_INT(ctx_pq_commit(tx), CTX_CANCELED);
    CHECK_EQ_INT(PQstatus(conn), CONNECTION_BAD);
    ctx_unref(ctx);
    PQfinish(conn);
}

int main(void)
{
    observer = pq_open();
    RUN_TEST(test_bad_input);
    RUN_TEST(test_connect_errors);
    RUN_TEST(test_exec);
    RUN_TEST(test_cancel_on_server);
    RUN_TEST(test_cancel_right_after_send);
    RUN_TEST(test_already_done);
    RUN_TEST(test_cancel_in_plain_transaction);
    RUN_TEST(test_get_result);
    RUN_TEST(test_tx_commit_and_rollback);
    RUN_TEST(test_tx_rolled_back_at_once);
    RUN_TEST(test_tx_running_statement_cancelled);
    RUN_TEST(test_tx_end_not_held_by_rollback);
    pq_ok(observer, "DROP TABLE IF EXISTS ctx_pq_tx_rows");
    PQfinish(observer);
    return 0;
}
