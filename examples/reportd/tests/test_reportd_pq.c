/* SPDX-License-Identifier: MIT */

/*
 * The hang-up scenario with PostgreSQL as reportd's database: a client that
 * leaves after 200 ms stops the query on the server (pg_sleep is cancelled,
 * the backend goes back to idle in pg_stat_activity) and the connection
 * stays in reportd's pool, usable by the next request.
 *
 * Uses the throw-away cluster of libctx-pq's test fixture; skipped (77)
 * when there is none (no PostgreSQL server installed).
 */
#include "harness.h"

#include <libpq-fe.h>

/* The backends running our pg_sleep, and those of reportd's pool at all. */
static void backends(PGconn *admin, int *active_sleeps, int *idle)
{
    PGresult *r = PQexec(admin, "SELECT count(*) FILTER (WHERE state = 'active' AND query LIKE "
                                "'SELECT pg_sleep%'), count(*) FILTER (WHERE state = 'idle' "
                                "AND query LIKE 'SELECT pg_sleep%') FROM pg_stat_activity "
                                "WHERE pid <> pg_backend_pid()");
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    *active_sleeps = atoi(PQgetvalue(r, 0, 0));
    *idle = atoi(PQgetvalue(r, 0, 1));
    PQclear(r);
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
    snprintf(db, sizeof db, "postgres:%s", conninfo);
    PGconn *admin = PQconnectdb(conninfo);
    CHECK_EQ_INT(PQstatus(admin), CONNECTION_OK);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);

    struct svc s;
    SVC_START(&s, "pg", argv[1], "--db", db, "--budget-ms", "10000");
    char url[256];
    snprintf(url, sizeof url, "%s/report?db_ms=50", s.url);
    CHECK_EQ_INT(HTTP_GET(url, 0, NULL).status, 200);

    for (int round = 0; round < 2; round++) {
        snprintf(url, sizeof url, "%s/report?compute_ms=3000&db_ms=3000", s.url);
        struct reply r = HTTP_GET(url, 200, "X-Request-Id: pg-gone");
        CHECK_EQ_INT(r.rc, CURLE_OPERATION_TIMEDOUT);
        ctx_time_t gone = ctx_now();
        char *line = SVC_LINE(&s, 5000, "request_id=pg-gone ", "outcome=client_gone");
        CHECK_NOT_NULL(line);
        CHECK(strstr(line, "cancelled=compute,db") != NULL);
        free(line);
        /* The backend stops sleeping and is idle again, at once. */
        int active = -1, idle = -1;
        ctx_time_t until = gone + 5 * CTX_SECOND;
        do {
            backends(admin, &active, &idle);
        } while ((active != 0 || idle < 1) && ctx_now() < until);
        fprintf(stderr,
                "   pg_stat_activity: %d active pg_sleep, %d idle, %lld ms after the client left\n",
                active, idle, (long long)((ctx_now() - gone) / CTX_MILLISECOND));
        CHECK_EQ_INT(active, 0);
        CHECK(idle >= 1);
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
