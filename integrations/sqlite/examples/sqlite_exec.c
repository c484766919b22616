/* SPDX-License-Identifier: MIT */

/*
 * sqlite_exec: Go's
 *
 *     query := "DELETE FROM `table_name` WHERE `id` = ?"
 *     db.ExecContext(ctx, query, 42)
 *
 * in C with libctx-sqlite: the statement runs under a context with a 500 ms
 * budget, so a hung query cannot hold the caller longer than that.
 *
 * Build and run:  make build && build/integrations/sqlite/sqlite_exec
 * Prints "deleted 1 row with id 42".
 */
#include <ctx.h>
#include <ctx/sqlite.h>
#include <stdio.h>

/* database/sql's ExecContext: prepare, bind the argument, run to completion
 * under ctx, and report the rows affected. */
static int exec_context(ctx_t *ctx, sqlite3 *db, const char *query, int arg, int *affected)
{
    sqlite3_stmt *stmt;
    int rc = sqlite3_prepare_v2(db, query, -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_bind_int(stmt, 1, arg);
    while ((rc = ctx_sqlite_step(ctx, stmt)) == SQLITE_ROW) {
    }
    if (rc == SQLITE_DONE) {
        *affected = sqlite3_changes(db);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(stmt);
    return rc;
}

int main(void)
{
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK) {
        fprintf(stderr, "FAIL: open: %s\n", sqlite3_errmsg(db));
        return 1;
    }
    /* The table of the Go snippet, with three rows. */
    sqlite3_exec(db,
                 "CREATE TABLE table_name (id INTEGER PRIMARY KEY, name TEXT);"
                 "INSERT INTO table_name VALUES (41, 'a'), (42, 'b'), (43, 'c');",
                 NULL, NULL, NULL);

    /* Go: ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) */
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 500 * CTX_MILLISECOND, &cancel);

    const char *query = "DELETE FROM `table_name` WHERE `id` = ?";
    int affected = 0;
    int rc = exec_context(ctx, db, query, 42, &affected);
    if (rc == SQLITE_INTERRUPT)
        printf("FAIL: %s\n", ctx_strerror(ctx_err(ctx)));
    else if (rc != SQLITE_OK)
        printf("FAIL: %s\n", sqlite3_errmsg(db));
    else
        printf("deleted %d row with id 42\n", affected);

    ctx_cancel(cancel); /* Go: defer cancel() */
    ctx_unref(ctx);
    sqlite3_close(db);
    return rc == SQLITE_OK && affected == 1 ? 0 : 1;
}
