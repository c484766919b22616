/* SPDX-License-Identifier: MIT */

/*
 * pq_budget: "set a 500 ms timeout on database calls so a hung query cannot
 * take the service down".  SELECT pg_sleep(10) stands for the hung query; it
 * runs under a context with a 500 ms deadline.  When the deadline passes,
 * libctx-pq cancels it ON THE SERVER (the backend stops working on it, as
 * pg_stat_activity shows) and the same connection answers the next query.
 * Should the server not confirm the cancel within CTX_PQ_CANCEL_GRACE_MS
 * (a loaded machine, a slow network), the call gives the connection up
 * instead (PQstatus says CONNECTION_BAD) and the program connects again.
 *
 * Build and run:  make build && build/integrations/pq/pq_budget "host=... dbname=..."
 * Prints "slow query stopped after 500 ms: context deadline exceeded" (the
 * figure is the time measured), "backend N is idle" (or "connection given
 * up, connecting again") and "next query: 1".
 */
#include <ctx.h>
#include <ctx/pq.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    const char *conninfo = argc > 1 ? argv[1] : "";
    PGconn *conn, *observer;
    if (ctx_pq_connect(ctx_background(), conninfo, &conn) != 0 ||
        ctx_pq_connect(ctx_background(), conninfo, &observer) != 0) {
        printf("FAIL: cannot connect\n");
        return 1;
    }

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 500 * CTX_MILLISECOND, NULL);
    ctx_time_t start = ctx_now();
    PGresult *res = ctx_pq_exec(ctx, conn, "SELECT pg_sleep(10)");
    long long ms = (long long)((ctx_now() - start) / CTX_MILLISECOND);
    if (res != NULL) {
        printf("FAIL: the slow query was not stopped: %s\n", PQresStatus(PQresultStatus(res)));
        return 1;
    }
    printf("slow query stopped after %lld ms: %s\n", ms, ctx_strerror(errno));
    ctx_unref(ctx);

    if (PQstatus(conn) == CONNECTION_BAD) {
        printf("connection given up, connecting again\n");
        PQfinish(conn);
        if (ctx_pq_connect(ctx_background(), conninfo, &conn) != 0) {
            printf("FAIL: cannot connect\n");
            return 1;
        }
        res = ctx_pq_exec(ctx_background(), conn, "SELECT 1");
        printf("next query: %s\n",
               res != NULL && PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "FAIL");
        PQclear(res);
        PQfinish(observer);
        PQfinish(conn);
        return 0;
    }
    /* Another connection looks at the backend: the statement is gone. */
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT state FROM pg_stat_activity WHERE pid = %d",
             PQbackendPID(conn));
    res = ctx_pq_exec(ctx_background(), observer, sql);
    if (res != NULL && PQntuples(res) == 1)
        printf("backend %d is %s\n", PQbackendPID(conn), PQgetvalue(res, 0, 0));
    PQclear(res);

    res = ctx_pq_exec(ctx_background(), conn, "SELECT 1");
    printf("next query: %s\n", res != NULL && PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "FAIL");
    PQclear(res);
    PQfinish(observer);
    PQfinish(conn);
    return 0;
}
