/* SPDX-License-Identifier: MIT */

/*
 * pq_test.h: what the libctx-pq tests share: the conninfo of the cluster the
 * CTest fixture started (pgcluster.sh), connections, and small queries.
 * Include after check.h.
 */
#ifndef CTX_PQ_TEST_H
#define CTX_PQ_TEST_H

#include <ctx/pq.h>

/* The conninfo written by `pgcluster.sh start DIR` into DIR/<name>, DIR
 * being $CTX_PQ_STATE.  Skips the test when there is none: no PostgreSQL
 * server on this machine. */
static inline const char *pq_conninfo_in(const char *dir, const char *name)
{
    static char buf[512];
    char path[512];
    if (dir == NULL)
        SKIP("CTX_PQ_STATE is not set: run this test through CTest");
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        SKIP("no PostgreSQL cluster (%s is missing): the fixture found no PostgreSQL "
             "server binaries (Debian: postgresql), so the PostgreSQL tests were skipped",
             path);
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
        n--;
    buf[n] = '\0';
    return buf;
}

static inline const char *pq_conninfo(void)
{
    return pq_conninfo_in(getenv("CTX_PQ_STATE"), "conninfo");
}

static inline PGconn *pq_open_at(const char *conninfo)
{
    PGconn *conn = NULL;
    int err = ctx_pq_connect(ctx_background(), conninfo, &conn);
    CHECK_MSG(err == 0, "connect %s: %s", conninfo, strerror(err));
    CHECK_EQ_INT(PQstatus(conn), CONNECTION_OK);
    return conn;
}

static inline PGconn *pq_open(void)
{
    return pq_open_at(pq_conninfo());
}

/* How late after its context's end a call may return: 100 ms.  Under
 * ThreadSanitizer the cancel child is started with fork(2) (a child sharing
 * the address space would write the sanitizer's per-thread state), and
 * ThreadSanitizer's fork stops every thread of the process while it copies
 * its shadow memory: there the bound is 500 ms. */
#define PQ_BOUND (CHECK_TSAN ? 500 * CTX_MILLISECOND : 100 * CTX_MILLISECOND)

/* After a statement whose context ended: the connection is either kept
 * (idle) or was given up (CONNECTION_BAD), never anything between.  A given
 * up connection is replaced by a new one.  Returns true when it was kept. */
static inline bool pq_kept_or_reopen(PGconn **conn, const char *conninfo)
{
    if (PQstatus(*conn) == CONNECTION_BAD) {
        PQfinish(*conn);
        *conn = pq_open_at(conninfo);
        return false;
    }
    CHECK_EQ_INT(PQtransactionStatus(*conn), PQTRANS_IDLE);
    return true;
}

/* The single value of sql as an integer; the statement must succeed. */
static inline long long pq_int(PGconn *conn, const char *sql)
{
    PGresult *r = ctx_pq_exec(ctx_background(), conn, sql);
    CHECK_NOT_NULL(r);
    CHECK_MSG(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    CHECK_EQ_INT(PQntuples(r), 1);
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static inline void pq_ok(PGconn *conn, const char *sql)
{
    PGresult *r = ctx_pq_exec(ctx_background(), conn, sql);
    CHECK_NOT_NULL(r);
    CHECK_MSG(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

/* The pg_stat_activity state of backend pid as seen from observer. */
static inline void pq_backend_state(PGconn *observer, int pid, char *out, size_t size)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT coalesce(state, '') FROM pg_stat_activity WHERE pid = %d",
             pid);
    PGresult *r = ctx_pq_exec(ctx_background(), observer, sql);
    CHECK_NOT_NULL(r);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_TUPLES_OK);
    snprintf(out, size, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "(gone)");
    PQclear(r);
}

/* Awaits (up to bound) the state want of backend pid; true if it came. */
static inline bool pq_await_state(PGconn *observer, int pid, const char *want, ctx_duration_t bound)
{
    ctx_time_t end = check_mono_now() + bound;
    char state[64];
    for (;;) {
        pq_backend_state(observer, pid, state, sizeof state);
        if (strcmp(state, want) == 0)
            return true;
        if (check_mono_now() > end) {
            fprintf(stderr, "backend %d: state '%s', want '%s'\n", pid, state, want);
            return false;
        }
        check_sleep_ns(2 * CTX_MILLISECOND);
    }
}

/* Cancels a context from another thread after a delay. */
typedef struct pq_canceller {
    ctx_cancel_t *cancel;
    ctx_duration_t after;
    pthread_t thread;
} pq_canceller_t;

static inline void *pq_cancel_later_(void *arg)
{
    pq_canceller_t *c = arg;
    check_sleep_ns(c->after);
    ctx_cancel(c->cancel);
    return NULL;
}

static inline void pq_cancel_later(pq_canceller_t *c, ctx_cancel_t *cancel, ctx_duration_t after)
{
    c->cancel = cancel;
    c->after = after;
    check_thread_start(&c->thread, pq_cancel_later_, c);
}

static inline void pq_canceller_join(pq_canceller_t *c)
{
    check_thread_join(c->thread);
}

#endif /* CTX_PQ_TEST_H */
