/* SPDX-License-Identifier: MIT */

/*
 * The hang-up scenario with PostgreSQL as reportd's database: a client that
 * leaves after 200 ms stops the query on the server (pg_sleep is cancelled,
 * the backend goes back to idle in pg_stat_activity) and the connection
 * stays in reportd's pool, usable by the next request.  On a loaded
 * machine the server may not confirm the cancel within libctx-pq's grace;
 * the connection is then given up (its backend goes away) and the pool
 * opens a new one: either way no backend sleeps on and the next request is
 * served.
 *
 * Uses the throw-away cluster of libctx-pq's test fixture; skipped (77)
 * when there is none (no PostgreSQL server installed).
 */
#include "harness.h"

#include <libpq-fe.h>

/* reportd's backends running a pg_sleep now, and the state of backend pid
 * ("gone" when there is none).  reportd's connections carry an
 * application_name of their own: other tests share the cluster. */
#define APP "test_reportd_pq"
static void backends(PGconn *admin, int pid, int *active_sleeps, char *state, size_t size)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = '" APP
             "' AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'), coalesce((SELECT "
             "state FROM pg_stat_activity WHERE pid = %d), 'gone')",
             pid);
    PGresult *r = PQexec(admin, sql);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    *active_sleeps = atoi(PQgetvalue(r, 0, 0));
    snprintf(state, size, "%s", PQgetvalue(r, 0, 1));
    PQclear(r);
}

/* The backend of reportd's pooled connection: the one idle after a
 * pg_sleep, of which there is exactly one between requests. */
static int pooled_backend(PGconn *admin)
{
    PGresult *r = PQexec(admin, "SELECT pid FROM pg_stat_activity WHERE application_name = '" APP
                                "' AND state = 'idle' AND query LIKE 'SELECT pg_sleep%'");
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    CHECK_EQ_INT(PQntuples(r), 1);
    int pid = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return pid;
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    const char *state = getenv("CTX_PQ_STATE");
    char path[1024], conninfo[1024] = "", db[1100];
    snprintf(path, sizeof path, "%s/conninfo", state != NULL ? state : ".");
    FILE *f = fopen(path, "r");
    if (f == NULL)
        SKIP("no PostgreSQL cluster (%s): install postgresql to run this test", path);
    CHECK_NOT_NULL(fgets(conninfo, sizeof conninfo, f));
    fclose(f);
    conninfo[strcspn(conninfo, "\n")] = '\0';
    snprintf(db, sizeof db, "postgres:%s application_name=" APP, conninfo);
    PGconn *admin = PQconnectdb(conninfo);
    CHECK_EQ_INT(PQstatus(admin), CONNECTION_OK);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);

    struct svc s;
    SVC_START(&s, "pg", argv[1], "--db", db, "--budget-ms", "10000");
    char url[256];
    snprintf(url, sizeof url, "%s/report?db_ms=50", s.url);
    CHECK_EQ_INT(HTTP_GET(url, 0, NULL).status, 200);

    for (int round = 0; round < 2; round++) {
        int pid = pooled_backend(admin);
        snprintf(url, sizeof url, "%s/report?compute_ms=3000&db_ms=3000", s.url);
        struct reply r = HTTP_GET(url, 200, "X-Request-Id: pg-gone");
        CHECK_EQ_INT(r.rc, CURLE_OPERATION_TIMEDOUT);
        ctx_time_t gone = ctx_now();
        char *line = SVC_LINE(&s, 5000, "request_id=pg-gone ", "outcome=client_gone");
        CHECK_NOT_NULL(line);
        CHECK(strstr(line, "cancelled=compute,db") != NULL);
        free(line);
        /* The backend stops sleeping and is idle again at once, or, when
         * the connection was given up, goes away. */
        int active = -1;
        char backend[64] = "";
        ctx_time_t until = gone + 5 * CTX_SECOND;
        do {
            backends(admin, pid, &active, backend, sizeof backend);
        } while ((active != 0 || (strcmp(backend, "idle") != 0 && strcmp(backend, "gone") != 0)) &&
                 ctx_now() < until);
        fprintf(stderr,
                "   pg_stat_activity: %d active pg_sleep, the pooled backend %s, %lld ms after "
                "the client left\n",
                active, backend, (long long)((ctx_now() - gone) / CTX_MILLISECOND));
        CHECK_EQ_INT(active, 0);
        CHECK(strcmp(backend, "idle") == 0 || strcmp(backend, "gone") == 0);
        CHECK(settled(&s));
        /* And the pooled connection serves the next request. */
        snprintf(url, sizeof url, "%s/report?db_ms=20", s.url);
        CHECK_EQ_INT(HTTP_GET(url, 0, NULL).status, 200);
    }
    CHECK_EQ_INT(svc_stop(&s), 0);
    PQfinish(admin);
    curl_global_cleanup();
    return 0;
}
