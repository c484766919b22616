/* SPDX-License-Identifier: MIT */

/*
 * libctx-sqlite's bound: every call returns within 100 ms of its context's
 * end (deadline or cancel), round after round, while it waits for a lock
 * another connection holds (rollback journal and WAL, SQLite's busy wait
 * under a 60 s busy timeout, in ctx_sqlite_step and ctx_sqlite_exec) and
 * while it runs a statement that would never end.  The worst lateness over
 * all rounds is printed.  Afterwards the connection works: once the lock
 * is released the same statement succeeds.
 */
#include "check.h"

#include <ctx/sqlite.h>

#include "faultproxy/faulttest.h"

#define BOUND (100 * CTX_MILLISECOND)

static faulttest_late_t late = FAULTTEST_LATE_INIT(BOUND);

/* rd0 is lateness_run_delay() from before the call. */
static void check_late(const char *what, ctx_time_t end, ctx_time_t returned, int64_t rd0)
{
    faulttest_check_late(&late, what, end, returned, rd0);
}

struct later {
    ctx_cancel_t *cancel;
    ctx_duration_t after;
    ctx_time_t at;
};

static void *cancel_later(void *arg)
{
    struct later *l = arg;
    check_sleep_ns(l->after);
    l->at = check_mono_now();
    ctx_cancel(l->cancel);
    return NULL;
}

/* Runs sql on db under a context that ends by deadline (even rounds) or
 * cancel (odd ones) after 20 to 120 ms; checks SQLITE_INTERRUPT and the
 * bound. */
static void round_trip(const char *what, sqlite3 *db, const char *sql, bool use_step, long i,
                       check_rng_t *rng)
{
    ctx_duration_t after = (20 + (ctx_duration_t)check_rng_below(rng, 100)) * CTX_MILLISECOND;
    ctx_t *ctx;
    struct later l = { 0 };
    pthread_t t;
    ctx_time_t end = 0;
    int64_t rd0 = lateness_run_delay();
    if (i % 2 == 0) {
        ctx = ctx_with_timeout(ctx_background(), after, NULL);
        CHECK(ctx_deadline(ctx, &end));
    } else {
        ctx = ctx_with_cancel(ctx_background(), &l.cancel);
        l.after = after;
        check_thread_start(&t, cancel_later, &l);
    }
    int rc;
    ctx_time_t returned;
    if (use_step) {
        sqlite3_stmt *stmt;
        CHECK_EQ_INT(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
        while ((rc = ctx_sqlite_step(ctx, stmt)) == SQLITE_ROW)
            ;
        returned = check_mono_now();
        sqlite3_finalize(stmt);
    } else {
        char *msg = NULL;
        rc = ctx_sqlite_exec(ctx, db, sql, NULL, NULL, &msg);
        returned = check_mono_now();
        sqlite3_free(msg);
    }
    if (i % 2 == 1) {
        check_thread_join(t);
        end = l.at;
    }
    check_late(what, end, returned, rd0);
    CHECK_EQ_INT(rc, SQLITE_INTERRUPT);
    ctx_unref(ctx);
}

static void busy_case(bool wal, long rounds, check_rng_t *rng)
{
    char path[96];
    snprintf(path, sizeof path, "/tmp/ctx-sqlite-faults-%ld-%d.db", (long)getpid(), wal);
    unlink(path);
    sqlite3 *holder, *waiter;
    CHECK_EQ_INT(sqlite3_open(path, &holder), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_open(path, &waiter), SQLITE_OK);
    if (wal)
        CHECK_EQ_INT(sqlite3_exec(holder, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(holder,
                              "CREATE TABLE t(x); BEGIN IMMEDIATE; INSERT INTO t VALUES (1)", NULL,
                              NULL, NULL),
                 SQLITE_OK);
    /* SQLite alone would wait a minute. */
    CHECK_EQ_INT(sqlite3_busy_timeout(waiter, 60000), SQLITE_OK);
    const char *what = wal ? "busy (WAL)" : "busy (rollback journal)";
    for (long i = 0; i < rounds; i++)
        round_trip(what, waiter, "INSERT INTO t VALUES (2)", i % 4 < 2, i, rng);
    /* The lock released, the waiter's statement goes through. */
    CHECK_EQ_INT(sqlite3_exec(holder, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, waiter, "INSERT INTO t VALUES (2)", NULL, NULL, NULL),
                 SQLITE_OK);
    ctx_unref(ctx);
    sqlite3_close(holder);
    sqlite3_close(waiter);
    unlink(path);
    char side[128];
    snprintf(side, sizeof side, "%s-wal", path);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", path);
    unlink(side);
}

static void endless_case(long rounds, check_rng_t *rng)
{
    sqlite3 *db;
    CHECK_EQ_INT(sqlite3_open(":memory:", &db), SQLITE_OK);
    const char *forever = "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c) "
                          "SELECT count(*) FROM c";
    for (long i = 0; i < rounds; i++)
        round_trip("endless statement", db, forever, i % 4 < 2, i, rng);
    sqlite3_close(db);
}

int main(void)
{
    check_rng_t rng = check_rng_make(check_seed());
    long rounds = check_scale(20);
    if (rounds < 4)
        rounds = 4;
    busy_case(false, rounds, &rng);
    busy_case(true, rounds, &rng);
    endless_case(rounds, &rng);
    fprintf(stderr, "worst lateness over %ld rounds each: %+lld ms\n", rounds,
            (long long)(late.worst / CTX_MILLISECOND));
    return 0;
}
