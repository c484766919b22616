/* SPDX-License-Identifier: MIT */

/*
 * pq_exec: Go's
 *
 *     query := "DELETE FROM table_name WHERE id = $1"
 *     db.ExecContext(ctx, query, 42)
 *
 * in C with libctx-pq, under a context with a 500 ms budget: if the server
 * hangs, the statement is cancelled on the server when the budget is spent,
 * and the connection stays usable.
 *
 * Build and run:  make build && build/integrations/pq/pq_exec "host=... dbname=..."
 * (the argument is a libpq conninfo; without one libpq's defaults and PG*
 * environment variables apply).  Prints "deleted 1 row with id 42".
 */
#include <ctx.h>
#include <ctx/pq.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    ctx_cancel_t *cancel;
    /* Go: ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond) */
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 500 * CTX_MILLISECOND, &cancel);

    PGconn *conn;
    int err = ctx_pq_connect(ctx, conninfo, &conn);
    if (err != 0) {
        printf("FAIL: connect: %s\n", ctx_strerror(err));
        return 1;
    }
    /* A table like the Go snippet's, with three rows. */
    PQclear(ctx_pq_exec(ctx, conn,
                        "CREATE TEMP TABLE table_name (id int PRIMARY KEY, name text);"
                        "INSERT INTO table_name VALUES (41, 'a'), (42, 'b'), (43, 'c')"));

    const char *query = "DELETE FROM table_name WHERE id = $1";
    const char *args[] = { "42" };
    PGresult *res = ctx_pq_exec_params(ctx, conn, query, 1, NULL, args, NULL, NULL, 0);
    int status = 1;
    if (res == NULL)
        printf("FAIL: %s\n", ctx_strerror(errno)); /* the budget ran out */
    else if (PQresultStatus(res) != PGRES_COMMAND_OK)
        printf("FAIL: %s", PQresultErrorMessage(res));
    else {
        printf("deleted %s row with id 42\n", PQcmdTuples(res)); /* Result.RowsAffected */
        status = 0;
    }
    PQclear(res);
    PQfinish(conn);
    ctx_cancel(cancel); /* Go: defer cancel() */
    ctx_unref(ctx);
    return status;
}
