/* SPDX-License-Identifier: MIT */

/*
 * sqlite_budget: "set a 500 ms timeout on database calls so a hung query
 * cannot take the service down".  A recursive query that would count to ten
 * billion runs under a context with a 500 ms deadline; libctx-sqlite stops it
 * when the deadline passes, and the connection answers the next query at once.
 *
 * Build and run:  make build && build/integrations/sqlite/sqlite_budget
 * Prints "slow query stopped after 500 ms: context deadline exceeded" (the
 * figure is the time measured) and then "next query: 1".
 */
#include <ctx.h>
#include <ctx/sqlite.h>
#include <stdio.h>

int main(void)
{
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
        fprintf(stderr, "FAIL: open\n");
        return 1;
    }
    const char *slow = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                       "WHERE i < 10000000000) SELECT count(*) FROM n";
    sqlite3_stmt *stmt;
    sqlite3_prepare_v2(db, slow, -1, &stmt, NULL);

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 500 * CTX_MILLISECOND, NULL);
    ctx_time_t start = ctx_now();
    int rc = ctx_sqlite_step(ctx, stmt);
    long long ms = (long long)((ctx_now() - start) / CTX_MILLISECOND);
    if (rc != SQLITE_INTERRUPT) {
        printf("FAIL: the slow query ended with %d (%s)\n", rc, sqlite3_errmsg(db));
        return 1;
    }
    printf("slow query stopped after %lld ms: %s\n", ms, ctx_strerror(ctx_err(ctx)));
    sqlite3_finalize(stmt);
    ctx_unref(ctx);

    /* The connection is free again: a fresh budget, a quick query. */
    ctx = ctx_with_timeout(ctx_background(), 500 * CTX_MILLISECOND, NULL);
    sqlite3_prepare_v2(db, "SELECT 1", -1, &stmt, NULL);
    rc = ctx_sqlite_step(ctx, stmt);
    printf("next query: %d\n", rc == SQLITE_ROW ? sqlite3_column_int(stmt, 0) : -1);
    sqlite3_finalize(stmt);
    ctx_unref(ctx);
    sqlite3_close(db);
    return rc == SQLITE_ROW ? 0 : 1;
}
