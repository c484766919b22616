/* SPDX-License-Identifier: MIT */

/*
 * The stale-cancel race (Go pgx's bug): cancels racing the completion of
 * statements, round after round, each round followed by SELECT 1 on the same
 * connection, which a cancel request that landed late would fail with
 * "canceling statement due to user request".  Both outcomes of the race
 * must occur, or the test proves nothing; and every SELECT 1 must return 1.
 * The races run through ctx_pq_exec (by cancel and by deadline) and through
 * PQsendQuery + ctx_pq_get_result; a fourth races the end of a transaction's
 * context against its statements and commit.
 */
#include "check.h"

#include "pq_test.h"

static void race(PGconn **connp, long rounds, bool by_deadline, bool via_get_result)
{
    check_rng_t rng = check_rng_make(check_seed());
    long cancelled = 0, finished = 0, given_up = 0;
    PGconn *conn = *connp;
    for (long i = 0; i < rounds; i++) {
        /* The statement takes 0 to 4 ms on the server; the cancel comes at
         * a random moment in 0 to 3 ms, so it lands before, during and
         * after the statement.  (With statements of at most 2 ms, a slow
         * build, ASan's, saw the cancel lose every round: a statement
         * that finishes before the cancel reaches the server returns its
         * result.) */
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT pg_sleep(%u / 1000000.0), 7",
                 check_rng_below(&rng, 4000));
        ctx_duration_t at = (ctx_duration_t)check_rng_below(&rng, 3000) * CTX_MICROSECOND;
        ctx_t *ctx;
        pq_canceller_t c;
        if (by_deadline) {
            ctx = ctx_with_timeout(ctx_background(), at, NULL);
        } else {
            ctx_cancel_t *cancel;
            ctx = ctx_with_cancel(ctx_background(), &cancel);
            pq_cancel_later(&c, cancel, at);
        }
        errno = 0;
        PGresult *r;
        if (via_get_result) {
            /* PQsendQuery, then ctx_pq_get_result until NULL, as a caller
             * of the asynchronous API does. */
            CHECK(PQsendQuery(conn, sql));
            r = ctx_pq_get_result(ctx, conn);
            int saved = errno;
            if (r != NULL) {
                errno = 0;
                PGresult *more = ctx_pq_get_result(ctx, conn);
                CHECK_NULL(more);
                CHECK(errno == 0 || errno == (by_deadline ? CTX_DEADLINE_EXCEEDED : CTX_CANCELED));
            }
            errno = saved;
        } else {
            r = ctx_pq_exec(ctx, conn, sql);
        }
        if (r == NULL) {
            CHECK_EQ_INT(errno, by_deadline ? CTX_DEADLINE_EXCEEDED : CTX_CANCELED);
            cancelled++;
        } else {
            CHECK_MSG(PQresultStatus(r) == PGRES_TUPLES_OK, "round %ld: %s", i,
                      PQresultErrorMessage(r));
            CHECK_STR(PQgetvalue(r, 0, 1), "7");
            finished++;
            PQclear(r);
        }
        if (!by_deadline)
            pq_canceller_join(&c);
        ctx_unref(ctx);
        /* A connection the library could not settle within its grace is
         * given up; a kept one must answer the next statement rightly. */
        if (!pq_kept_or_reopen(&conn, pq_conninfo()))
            given_up++;

        PGresult *one = ctx_pq_exec(ctx_background(), conn, "SELECT 1");
        CHECK_NOT_NULL(one);
        CHECK_MSG(PQresultStatus(one) == PGRES_TUPLES_OK, "round %ld: SELECT 1 failed: %s", i,
                  PQresultErrorMessage(one));
        CHECK_STR(PQgetvalue(one, 0, 0), "1");
        PQclear(one);
    }
    fprintf(stderr,
            "   %s, %s: %ld rounds, %ld cancelled, %ld finished first, %ld connections given "
            "up; every SELECT 1 gave 1\n",
            by_deadline ? "deadline" : "cancel",
            via_get_result ? "ctx_pq_get_result" : "ctx_pq_exec", rounds, cancelled, finished,
            given_up);
    *connp = conn;
    CHECK(cancelled > 0);
    CHECK(finished > 0);
}

/* Go's BeginTx rule racing the statements of the transaction: the
 * transaction's context is cancelled from another thread at a random moment
 * while the caller runs statements and commits on its own thread, so the
 * library's ROLLBACK (sent by the cancelling thread when no statement runs)
 * races the caller's next statement, its commit, and the statements' own
 * cancels.  Whatever wins, the outcome must be whole: commit returns 0 and
 * every row of the round is there, or it returns the context's error and
 * none is; the connection is idle and SELECT 1 gives 1.  Under
 * ThreadSanitizer this also checks that the two threads never touch the
 * connection at the same time. */
static void race_tx(PGconn **connp, long rounds)
{
    PGconn *conn = *connp;
    long given_up = 0;
    check_rng_t rng = check_rng_make(check_seed() ^ 0x7478);
    long committed = 0, rolled_back = 0;
    PQclear(ctx_pq_exec(ctx_background(), conn,
                        "DROP TABLE IF EXISTS ctx_pq_race_tx; CREATE TABLE ctx_pq_race_tx(r int)"));
    for (long i = 0; i < rounds; i++) {
        ctx_cancel_t *cancel;
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
        pq_canceller_t c;
        ctx_pq_tx_t *tx;
        int rc = ctx_pq_begin(ctx, conn, &tx);
        CHECK_MSG(rc == 0, "round %ld: begin: %s", i, strerror(rc));
        pq_cancel_later(&c, cancel, (ctx_duration_t)check_rng_below(&rng, 4000) * CTX_MICROSECOND);
        int statements = 1 + (int)check_rng_below(&rng, 4);
        for (int k = 0; k < statements; k++) {
            char sql[96];
            snprintf(sql, sizeof sql,
                     "INSERT INTO ctx_pq_race_tx SELECT %ld FROM pg_sleep(%u / 1000000.0)", i,
                     check_rng_below(&rng, 800));
            errno = 0;
            PGresult *r = ctx_pq_exec(ctx, conn, sql);
            if (r == NULL) {
                CHECK_EQ_INT(errno, CTX_CANCELED);
                break;
            }
            CHECK_MSG(PQresultStatus(r) == PGRES_COMMAND_OK, "round %ld: %s", i,
                      PQresultErrorMessage(r));
            PQclear(r);
        }
        rc = ctx_pq_commit(tx);
        pq_canceller_join(&c);
        CHECK_MSG(rc == 0 || rc == CTX_CANCELED, "round %ld: commit: %s", i, strerror(rc));
        if (!pq_kept_or_reopen(&conn, pq_conninfo()))
            given_up++;
        char sql[96];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM ctx_pq_race_tx WHERE r = %ld", i);
        long long rows = pq_int(conn, sql);
        if (rc == 0) {
            CHECK_MSG(rows == statements, "round %ld: committed %lld rows of %d", i, rows,
                      statements);
            committed++;
        } else {
            CHECK_MSG(rows == 0, "round %ld: rolled back, yet %lld rows", i, rows);
            rolled_back++;
        }
        CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
        ctx_unref(ctx);
    }
    fprintf(stderr,
            "   transactions: %ld rounds, %ld committed, %ld rolled back, %ld connections "
            "given up; all whole\n",
            rounds, committed, rolled_back, given_up);
    *connp = conn;
    CHECK(committed > 0);
    CHECK(rolled_back > 0);
}

int main(void)
{
    PGconn *conn = pq_open();
    long rounds = check_scale(1000);
    if (rounds < 1000 && getenv("CTX_TEST_SCALE") == NULL)
        rounds = 1000; /* at least 1000 rounds, sanitizers or not */
    race(&conn, rounds, false, false);
    race(&conn, rounds, true, false);
    race(&conn, rounds, false, true);
    race_tx(&conn, rounds / 2);
    PQfinish(conn);
    return 0;
}
