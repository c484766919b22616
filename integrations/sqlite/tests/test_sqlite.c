/* SPDX-License-Identifier: MIT */

/*
 * libctx-sqlite against the real SQLite: cancels and deadlines interrupt the
 * statement run under them and nothing else, busy waits end with the
 * context, an interrupted write rolls its transaction back, and the
 * connection is left as it was found.
 */
#include "check.h"

#include <ctx/sqlite.h>

/* Runs until interrupted: a recursive count with no end in reach. */
static const char *const endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                   "WHERE i < 1000000000000) SELECT count(*) FROM n";

/* Runs long enough to call the progress handler many times, then ends. */
static const char *const medium = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                                  "WHERE i < 20000) SELECT count(*) FROM n";

static sqlite3 *open_memory(void)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        ":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    CHECK_EQ_INT(rc, SQLITE_OK);
    return db;
}

static sqlite3_stmt *prepare(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);
    CHECK_MSG(rc == SQLITE_OK, "%s: %s", sql, sqlite3_errmsg(db));
    return stmt;
}

static long long query_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = prepare(db, sql);
    CHECK_EQ_INT(sqlite3_step(stmt), SQLITE_ROW);
    long long v = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return v;
}

static void test_bad_input(void)
{
    sqlite3 *db = open_memory();
    sqlite3_stmt *stmt = prepare(db, "SELECT 1");
    char *msg = (char *)"untouched";

    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_step(NULL, stmt), SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_step(ctx_background(), NULL), SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx_background(), NULL, "SELECT 1", NULL, NULL, &msg),
                 SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_NULL(msg);
    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx_background(), db, NULL, NULL, NULL, NULL), SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_exec(NULL, db, "SELECT 1", NULL, NULL, NULL), SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_sqlite_busy_timeout(NULL, 5), SQLITE_MISUSE);
    CHECK_EQ_INT(errno, EINVAL);

    /* Nothing was lost: the statement still runs. */
    CHECK_EQ_INT(ctx_sqlite_step(ctx_background(), stmt), SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_column_int(stmt, 0), 1);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

static void test_already_done(void)
{
    sqlite3 *db = open_memory();
    CHECK_EQ_INT(sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *stmt = prepare(db, "INSERT INTO t VALUES (1)");
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);

    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
    CHECK_EQ_INT(sqlite3_stmt_busy(stmt), 0);
    char *msg = NULL;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, "INSERT INTO t VALUES (2)", NULL, NULL, &msg),
                 SQLITE_INTERRUPT);
    CHECK_STR(msg, "interrupted: context canceled");
    sqlite3_free(msg);
    /* Neither statement ran. */
    CHECK_EQ_INT(query_int(db, "SELECT count(*) FROM t"), 0);
    sqlite3_finalize(stmt);
    ctx_unref(ctx);
    sqlite3_close(db);
}

/* A scan whose context ends between two rows: the next step gives
 * SQLITE_INTERRUPT and leaves the statement reset, as the header says, so
 * that it holds no read transaction: another connection can write to the
 * database (rollback journal: the reader's SHARED lock would make it BUSY). */
static void test_done_between_rows_resets(void)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/ctx-sqlite-scan-%ld.db", (long)getpid());
    unlink(path);
    sqlite3 *reader = NULL, *writer = NULL;
    CHECK_EQ_INT(sqlite3_open(path, &reader), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_open(path, &writer), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(reader, "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3)", NULL,
                              NULL, NULL),
                 SQLITE_OK);
    sqlite3_stmt *stmt = prepare(reader, "SELECT x FROM t");
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_get_autocommit(reader), 1);
    CHECK_EQ_INT(sqlite3_exec(writer, "INSERT INTO t VALUES (4)", NULL, NULL, NULL), SQLITE_BUSY);
    ctx_cancel(cancel);
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
    CHECK_EQ_INT(sqlite3_stmt_busy(stmt), 0);
    CHECK_EQ_INT(sqlite3_exec(writer, "INSERT INTO t VALUES (4)", NULL, NULL, NULL), SQLITE_OK);
    /* Reset, it may be stepped again from the first row. */
    CHECK_EQ_INT(sqlite3_step(stmt), SQLITE_ROW);
    CHECK_EQ_INT(sqlite3_column_int(stmt, 0), 1);
    sqlite3_finalize(stmt);
    ctx_unref(ctx);
    sqlite3_close(writer);
    sqlite3_close(reader);
    unlink(path);
}

static void test_deadline_interrupts(void)
{
    sqlite3 *db = open_memory();
    sqlite3_stmt *stmt = prepare(db, endless);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    ctx_time_t start = check_mono_now();
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
    ctx_duration_t took = check_mono_now() - start;
    CHECK_EQ_INT(ctx_err(ctx), CTX_DEADLINE_EXCEEDED);
    /* A generous bound: the point is that it ends, not how fast. */
    CHECK_LE_INT(took, 10 * CTX_SECOND);
    /* The statement was reset: not busy, and steppable again. */
    CHECK_EQ_INT(sqlite3_stmt_busy(stmt), 0);
    ctx_unref(ctx);
    ctx = ctx_with_timeout(ctx_background(), 20 * CTX_MILLISECOND, NULL);
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
    ctx_unref(ctx);
    sqlite3_finalize(stmt);

    /* The connection's own calls are not interrupted afterwards. */
    CHECK_EQ_INT(query_int(db, medium), 20000);
    sqlite3_close(db);
}

struct canceller {
    ctx_cancel_t *cancel;
    ctx_duration_t after;
};

static void *cancel_later(void *arg)
{
    struct canceller *c = arg;
    check_sleep_ns(c->after);
    ctx_cancel(c->cancel);
    return NULL;
}

static void test_cancel_from_another_thread(void)
{
    sqlite3 *db = open_memory();
    char *msg = NULL;
    struct canceller c = { .after = 20 * CTX_MILLISECOND };
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c.cancel);
    pthread_t t;
    check_thread_start(&t, cancel_later, &c);
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, endless, NULL, NULL, &msg), SQLITE_INTERRUPT);
    CHECK_STR(msg, "interrupted: context canceled");
    sqlite3_free(msg);
    check_thread_join(t);
    CHECK_CANCELED(ctx);
    ctx_unref(ctx);
    CHECK_EQ_INT(query_int(db, "SELECT 7"), 7);
    sqlite3_close(db);
}

/* The heart of the design: statement A under a context that is cancelled
 * and statement B under a live context (or none: plain sqlite3_step every
 * other round), on ONE connection from two threads.
 * A must always be interrupted (its query has no end), B must never be (its
 * query ends by itself).  With sqlite3_interrupt, B fails now and then. */
struct shared_conn {
    sqlite3 *db;
    int rounds;
    atomic_int a_done;
};

static void *run_a(void *arg)
{
    struct shared_conn *s = arg;
    check_rng_t rng = check_rng_make(check_seed());
    sqlite3_stmt *stmt = prepare(s->db, endless);
    for (int i = 0; i < s->rounds; i++) {
        struct canceller c = { .after =
                                   (ctx_duration_t)check_rng_below(&rng, 2000) * CTX_MICROSECOND };
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &c.cancel);
        pthread_t t;
        check_thread_start(&t, cancel_later, &c);
        CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
        check_thread_join(t);
        CHECK_CANCELED(ctx);
        ctx_unref(ctx);
    }
    sqlite3_finalize(stmt);
    atomic_store(&s->a_done, 1);
    return NULL;
}

static void test_scoped_to_one_statement(void)
{
    struct shared_conn s = { .db = open_memory(), .rounds = (int)check_scale(200) };
    pthread_t a;
    check_thread_start(&a, run_a, &s);
    sqlite3_stmt *stmt = prepare(s.db, medium);
    ctx_cancel_t *cancel;
    ctx_t *live = ctx_with_cancel(ctx_background(), &cancel);
    long b_rounds = 0;
    while (atomic_load(&s.a_done) == 0 || b_rounds < 10) {
        /* Every other round B is a plain sqlite3_step, which no context of
         * the library's may interrupt either. */
        bool plain = b_rounds % 2 == 1;
        int rc = plain ? sqlite3_step(stmt) : ctx_sqlite_step(live, stmt);
        CHECK_MSG(rc == SQLITE_ROW, "B round %ld (%s): %d (%s)", b_rounds, plain ? "plain" : "ctx",
                  rc, sqlite3_errmsg(s.db));
        CHECK_EQ_INT(sqlite3_column_int(stmt, 0), 20000);
        CHECK_EQ_INT(plain ? sqlite3_step(stmt) : ctx_sqlite_step(live, stmt), SQLITE_DONE);
        sqlite3_reset(stmt);
        b_rounds++;
    }
    check_thread_join(a);
    fprintf(stderr, "   A interrupted %d times while B ran %ld statements uninterrupted\n",
            s.rounds, b_rounds);
    ctx_cancel(cancel);
    ctx_unref(live);
    sqlite3_finalize(stmt);
    sqlite3_close(s.db);
}

static void test_write_in_transaction_rolls_back(void)
{
    sqlite3 *db = open_memory();
    CHECK_EQ_INT(
        sqlite3_exec(db, "CREATE TABLE t(x); BEGIN; INSERT INTO t VALUES (1);", NULL, NULL, NULL),
        SQLITE_OK);
    CHECK_EQ_INT(sqlite3_get_autocommit(db), 0);

    /* An endless INSERT ... SELECT under a deadline. */
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 30 * CTX_MILLISECOND, NULL);
    char *msg = NULL;
    int rc = ctx_sqlite_exec(ctx, db,
                             "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT "
                             "i + 1 FROM n WHERE i < 1000000000000) SELECT i FROM n",
                             NULL, NULL, &msg);
    CHECK_EQ_INT(rc, SQLITE_INTERRUPT);
    CHECK_STR(msg, "interrupted: context deadline exceeded");
    sqlite3_free(msg);
    ctx_unref(ctx);

    /* SQLite rolled the whole transaction back, the first row with it. */
    CHECK_EQ_INT(sqlite3_get_autocommit(db), 1);
    CHECK_EQ_INT(query_int(db, "SELECT count(*) FROM t"), 0);

    /* An interrupted read leaves the transaction open. */
    CHECK_EQ_INT(sqlite3_exec(db, "BEGIN; INSERT INTO t VALUES (2);", NULL, NULL, NULL), SQLITE_OK);
    ctx = ctx_with_timeout(ctx_background(), 30 * CTX_MILLISECOND, NULL);
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, endless, NULL, NULL, NULL), SQLITE_INTERRUPT);
    ctx_unref(ctx);
    CHECK_EQ_INT(sqlite3_get_autocommit(db), 0);
    CHECK_EQ_INT(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    CHECK_EQ_INT(query_int(db, "SELECT count(*) FROM t"), 1);
    sqlite3_close(db);
}

/* Two connections to one file: the first holds the write lock. */
struct locked_file {
    char path[64];
    sqlite3 *holder;
    sqlite3 *waiter;
};

static void locked_file_open(struct locked_file *f)
{
    snprintf(f->path, sizeof f->path, "/tmp/ctx-sqlite-busy-%ld.db", (long)getpid());
    unlink(f->path);
    CHECK_EQ_INT(sqlite3_open(f->path, &f->holder), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_open(f->path, &f->waiter), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(f->holder,
                              "CREATE TABLE t(x); BEGIN IMMEDIATE; INSERT INTO t "
                              "VALUES (1);",
                              NULL, NULL, NULL),
                 SQLITE_OK);
}

static void locked_file_close(struct locked_file *f)
{
    sqlite3_close(f->holder);
    sqlite3_close(f->waiter);
    unlink(f->path);
}

struct releaser {
    sqlite3 *holder;
    ctx_duration_t after;
};

static void *commit_later(void *arg)
{
    struct releaser *r = arg;
    check_sleep_ns(r->after);
    CHECK_EQ_INT(sqlite3_exec(r->holder, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    return NULL;
}

static void test_busy_wait_ends_with_ctx(void)
{
    struct locked_file f;
    locked_file_open(&f);
    CHECK_EQ_INT(sqlite3_busy_timeout(f.waiter, 60000), SQLITE_OK);

    /* A cancel ends the wait long before the 60 s busy timeout. */
    struct canceller c = { .after = 50 * CTX_MILLISECOND };
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c.cancel);
    pthread_t t;
    check_thread_start(&t, cancel_later, &c);
    ctx_time_t start = check_mono_now();
    char *msg = NULL;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, f.waiter, "INSERT INTO t VALUES (2)", NULL, NULL, &msg),
                 SQLITE_INTERRUPT);
    CHECK_LE_INT(check_mono_now() - start, 20 * CTX_SECOND);
    CHECK_STR(msg, "interrupted: context canceled");
    sqlite3_free(msg);
    check_thread_join(t);
    ctx_unref(ctx);

    /* A deadline too. */
    ctx = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
    sqlite3_stmt *stmt = prepare(f.waiter, "INSERT INTO t VALUES (3)");
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_INTERRUPT);
    CHECK_EQ_INT(ctx_err(ctx), CTX_DEADLINE_EXCEEDED);
    ctx_unref(ctx);

    /* With a live context the wait lasts until the lock is free. */
    struct releaser r = { .holder = f.holder, .after = 50 * CTX_MILLISECOND };
    check_thread_start(&t, commit_later, &r);
    ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_DONE);
    check_thread_join(t);
    ctx_unref(ctx);
    sqlite3_finalize(stmt);
    CHECK_EQ_INT(query_int(f.waiter, "SELECT count(*) FROM t"), 2);
    locked_file_close(&f);
}

static void test_busy_timeout_spent_first(void)
{
    struct locked_file f;
    locked_file_open(&f);
    /* The connection's own timeout (100 ms) is spent before ctx's 60 s. */
    CHECK_EQ_INT(ctx_sqlite_busy_timeout(f.waiter, 100), SQLITE_OK);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    ctx_time_t start = check_mono_now();
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, f.waiter, "INSERT INTO t VALUES (2)", NULL, NULL, NULL),
                 SQLITE_BUSY);
    ctx_duration_t took = check_mono_now() - start;
    CHECK_MSG(took >= 90 * CTX_MILLISECOND, "gave up after %lld ns", (long long)took);
    CHECK_LE_INT(took, 20 * CTX_SECOND);
    CHECK_EQ_INT(ctx_err(ctx), 0);

    /* A plain call on the connection keeps the same busy timeout: the
     * library's busy handler waits as SQLite's own would. */
    start = check_mono_now();
    CHECK_EQ_INT(sqlite3_exec(f.waiter, "INSERT INTO t VALUES (2)", NULL, NULL, NULL), SQLITE_BUSY);
    took = check_mono_now() - start;
    CHECK_MSG(took >= 90 * CTX_MILLISECOND, "gave up after %lld ns", (long long)took);

    /* No busy timeout at all: SQLITE_BUSY at once, as plain SQLite does. */
    CHECK_EQ_INT(ctx_sqlite_busy_timeout(f.waiter, 0), SQLITE_OK);
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, f.waiter, "INSERT INTO t VALUES (2)", NULL, NULL, NULL),
                 SQLITE_BUSY);
    ctx_unref(ctx);
    locked_file_close(&f);
}

/* A row callback of ctx_sqlite_exec that runs its own statement under its
 * own context on the same connection: when that inner call returns, the
 * outer call's handler must be back, or the outer query would never notice
 * its cancel. */
struct nested {
    sqlite3 *db;
    ctx_cancel_t *outer_cancel;
    int rows;
};

static int nested_row(void *arg, int ncols, char **values, char **names)
{
    (void)ncols;
    (void)values;
    (void)names;
    struct nested *n = arg;
    n->rows++;
    if (n->rows == 1) {
        ctx_cancel_t *cancel;
        ctx_t *inner = ctx_with_cancel(ctx_background(), &cancel);
        sqlite3_stmt *stmt = prepare(n->db, medium);
        CHECK_EQ_INT(ctx_sqlite_step(inner, stmt), SQLITE_ROW);
        CHECK_EQ_INT(sqlite3_column_int(stmt, 0), 20000);
        sqlite3_finalize(stmt);
        ctx_cancel(cancel);
        ctx_unref(inner);
    } else if (n->rows == 2) {
        ctx_cancel(n->outer_cancel);
    }
    return 0;
}

static void test_nested_call_restores_outer(void)
{
    struct nested n = { .db = open_memory() };
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &n.outer_cancel);
    int rc = ctx_sqlite_exec(ctx, n.db,
                             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                             "WHERE i < 1000000000000) SELECT i FROM n",
                             nested_row, &n, NULL);
    CHECK_EQ_INT(rc, SQLITE_INTERRUPT);
    CHECK_LE_INT(n.rows, 1000000);
    ctx_unref(ctx);
    sqlite3_close(n.db);
}

static int count_rows(void *arg, int ncols, char **values, char **names)
{
    (void)names;
    CHECK_EQ_INT(ncols, 1);
    CHECK_NOT_NULL(values[0]);
    (*(int *)arg)++;
    return 0;
}

static int stop_rows(void *arg, int ncols, char **values, char **names)
{
    (void)arg;
    (void)ncols;
    (void)values;
    (void)names;
    return 1;
}

static void test_exec_rows_and_results(void)
{
    sqlite3 *db = open_memory();
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    int rows = 0;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db,
                                 "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3); "
                                 "SELECT x FROM t",
                                 count_rows, &rows, NULL),
                 SQLITE_OK);
    CHECK_EQ_INT(rows, 3);
    /* SQL errors come back as sqlite3_exec gives them. */
    char *msg = NULL;
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, "SELECT nope FROM t", NULL, NULL, &msg), SQLITE_ERROR);
    CHECK_NOT_NULL(msg);
    CHECK(strstr(msg, "nope") != NULL);
    sqlite3_free(msg);
    /* A callback that asks to stop gives SQLITE_ABORT, not an interrupt. */
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, "SELECT x FROM t", stop_rows, NULL, NULL), SQLITE_ABORT);
    CHECK_EQ_INT(ctx_err(ctx), 0);
    ctx_unref(ctx);
    sqlite3_close(db);
}

int main(void)
{
    CHECK_EQ_INT(sqlite3_threadsafe(), 1);
    RUN_TEST(test_bad_input);
    RUN_TEST(test_already_done);
    RUN_TEST(test_done_between_rows_resets);
    RUN_TEST(test_deadline_interrupts);
    RUN_TEST(test_cancel_from_another_thread);
    RUN_TEST(test_scoped_to_one_statement);
    RUN_TEST(test_write_in_transaction_rolls_back);
    RUN_TEST(test_busy_wait_ends_with_ctx);
    RUN_TEST(test_busy_timeout_spent_first);
    RUN_TEST(test_nested_call_restores_outer);
    RUN_TEST(test_exec_rows_and_results);
    return 0;
}
