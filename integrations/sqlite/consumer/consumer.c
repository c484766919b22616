/* SPDX-License-Identifier: MIT */

/* Uses an installed libctx-sqlite: one statement under a deadline. */
#include <ctx.h>
#include <ctx/sqlite.h>
#include <stdio.h>

int main(void)
{
    sqlite3 *db;
    sqlite3_stmt *stmt;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT 40 + 2", -1, &stmt, NULL) != SQLITE_OK)
        return 1;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    int rc = ctx_sqlite_step(ctx, stmt);
    int v = rc == SQLITE_ROW ? sqlite3_column_int(stmt, 0) : -1;
    printf("libctx-sqlite consumer: %d\n", v);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    ctx_unref(ctx);
    return v == 42 ? 0 : 1;
}
