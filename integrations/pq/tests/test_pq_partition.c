/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq on a network that fails: every call under a context returns
 * within 100 ms of the context's end (the library aims at
 * CTX_PQ_CANCEL_GRACE_MS), and once the network heals the connection is
 * usable (the next statement gives the right answer) or broken at once
 * (CONNECTION_BAD, the next statement fails without waiting).
 *
 * The client talks to the fixture's PostgreSQL through the fault proxy
 * (tests/faultproxy), which goes dark (forwards nothing, keeps every socket
 * open: a partition or a hung host), resets, half-closes or trickles one
 * byte a second on command.  The network goes dark before the call, while
 * the statement is sent, while the server works, while the result streams,
 * while the cancel request is in flight and at the deadline's instant; the
 * same for connect, BEGIN, COMMIT, ROLLBACK and PQsendQuery with
 * ctx_pq_get_result.  Statements alternate between ctx_pq_exec and
 * ctx_pq_exec_params.  Each case runs several rounds; the worst lateness is
 * printed.  At the end no thread or descriptor of the library's background
 * cancel work is left.
 */
#include "check.h"

#include "faultproxy/faulttest.h"
#include "io_helpers.h"
#include "pq_test.h"

#define BUDGET (300 * CTX_MILLISECOND)
#define BOUND  PQ_BOUND

static faultproxy_t fp;
static char via_proxy[600];
static PGconn *observer;
static faulttest_late_t late = FAULTTEST_LATE_INIT(BOUND);
static long kept_total, broken_total;

static void proxy(const char *cmd)
{
    faulttest_proxy(&fp, cmd);
}

static PGconn *open_via_proxy(void)
{
    PGconn *conn = NULL;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    int err = ctx_pq_connect(ctx, via_proxy, &conn);
    ctx_unref(ctx);
    CHECK_MSG(err == 0, "connect through the proxy: %s", strerror(err));
    return conn;
}

/* rd0 is lateness_run_delay() from before the call. */
static void check_late(const char *what, ctx_time_t end, ctx_time_t returned, int64_t rd0)
{
    faulttest_check_late(&late, what, end, returned, rd0);
}

/* After the heal: usable or broken at once.  A broken connection is
 * replaced.  Counts which. */
static void check_after_heal(PGconn **conn)
{
    proxy("heal");
    if (PQstatus(*conn) == CONNECTION_BAD) {
        ctx_time_t t0 = check_mono_now();
        PGresult *r = ctx_pq_exec(ctx_background(), *conn, "SELECT 1");
        CHECK_NOT_NULL(r);
        CHECK_EQ_INT(PQresultStatus(r), PGRES_FATAL_ERROR);
        PQclear(r);
        CHECK(check_mono_now() - t0 < BOUND);
        PQfinish(*conn);
        *conn = open_via_proxy();
        broken_total++;
        return;
    }
    CHECK_EQ_INT(PQtransactionStatus(*conn), PQTRANS_IDLE);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    PGresult *r = ctx_pq_exec(ctx, *conn, "SELECT 42");
    ctx_unref(ctx);
    CHECK_NOT_NULL(r);
    CHECK_MSG(PQresultStatus(r) == PGRES_TUPLES_OK, "next statement after the heal: %s",
              PQresultErrorMessage(r));
    CHECK_STR(PQgetvalue(r, 0, 0), "42");
    PQclear(r);
    kept_total++;
}

/* ---------------------------------------------------------------------------
 * The faults that strike during a call, from a thread of their own
 */

enum during { NOTHING, DARK_WHEN_ACTIVE, DARK_WHILE_STREAMING, RESET, HALFCLOSE, CANCEL_THEN_DARK };

struct striker {
    enum during what;
    int pid;
    ctx_cancel_t *cancel;
    ctx_time_t cancelled_at;
    pthread_t thread;
};

static void *strike(void *arg)
{
    struct striker *s = arg;
    if (s->what == NOTHING)
        return NULL;
    /* The observer is a direct connection, used by this thread only while
     * the call runs. */
    CHECK(pq_await_state(observer, s->pid, "active", 10 * CTX_SECOND));
    switch (s->what) {
    case DARK_WHEN_ACTIVE:
        proxy("dark");
        break;
    case DARK_WHILE_STREAMING:
        /* Rows of 10 kB flow every 10 ms; some have passed by now. */
        check_sleep_ns(60 * CTX_MILLISECOND);
        proxy("dark");
        break;
    case RESET:
        proxy("reset");
        break;
    case HALFCLOSE:
        proxy("halfclose");
        break;
    case CANCEL_THEN_DARK:
        check_sleep_ns(20 * CTX_MILLISECOND);
        s->cancelled_at = check_mono_now();
        ctx_cancel(s->cancel);
        proxy("dark");
        break;
    case NOTHING:
        break;
    }
    return NULL;
}

/* The AfterFunc that darkens the network at the deadline's instant, on the
 * thread that ends the context. */
static void dark_now(void *arg)
{
    (void)arg;
    proxy("dark");
}

struct exec_case {
    const char *name;
    const char *before; /* proxy command before the call, or NULL */
    const char *sql;
    enum during during;
    bool dark_at_deadline;
    bool may_fail_fast; /* reset, half-close: libpq's error before the deadline */
};

static char *big_statement;

static void run_exec_case(const struct exec_case *c, long rounds)
{
    PGconn *conn = open_via_proxy();
    ctx_duration_t case_worst = INT64_MIN;
    for (long i = 0; i < rounds; i++) {
        struct striker s = { .what = c->during, .pid = PQbackendPID(conn) };
        ctx_t *ctx;
        ctx_time_t end;
        if (c->during == CANCEL_THEN_DARK) {
            ctx = ctx_with_cancel(ctx_background(), &s.cancel);
            end = 0;
        } else {
            ctx = ctx_with_timeout(ctx_background(), BUDGET, NULL);
            CHECK(ctx_deadline(ctx, &end));
        }
        ctx_after_t *after = NULL;
        if (c->dark_at_deadline)
            CHECK_EQ_INT(ctx_after_func(ctx, dark_now, NULL, &after), 0);
        if (c->before != NULL)
            proxy(c->before);
        int64_t rd0 = lateness_run_delay();
        check_thread_start(&s.thread, strike, &s);
        errno = 0;
        /* Odd rounds take the other entry point, with the same path. */
        PGresult *r = i % 2 == 0
                          ? ctx_pq_exec(ctx, conn, c->sql)
                          : ctx_pq_exec_params(ctx, conn, c->sql, 0, NULL, NULL, NULL, NULL, 0);
        int err = errno;
        ctx_time_t returned = check_mono_now();
        check_thread_join(s.thread);
        if (after != NULL)
            ctx_after_stop(after);
        if (c->during == CANCEL_THEN_DARK)
            end = s.cancelled_at;
        if (getenv("CTX_PQ_PARTITION_ONLY") != NULL)
            fprintf(stderr, "   round %ld: %+lld us\n", i, (long long)((returned - end) / 1000));
        check_late(c->name, end, returned, rd0);
        if (returned - end > case_worst)
            case_worst = returned - end;
        if (r == NULL) {
            CHECK_MSG(err == ctx_err(ctx), "%s: errno %d", c->name, err);
        } else {
            /* Only a broken connection ends the call with a result here. */
            CHECK_MSG(c->may_fail_fast && PQresultStatus(r) == PGRES_FATAL_ERROR, "%s: result %s",
                      c->name, PQresStatus(PQresultStatus(r)));
            CHECK_EQ_INT(PQstatus(conn), CONNECTION_BAD);
            PQclear(r);
        }
        ctx_unref(ctx);
        check_after_heal(&conn);
    }
    fprintf(stderr, "   %-24s worst %+4lld ms\n", c->name,
            (long long)(case_worst / CTX_MILLISECOND));
    PQfinish(conn);
}

/* ---------------------------------------------------------------------------
 * Connect, transactions and the asynchronous API on a dark network
 */

static void test_connect_dark(long rounds)
{
    const char *faults[] = { "dark", "trickle 1000" };
    for (int f = 0; f < 2; f++) {
        for (long i = 0; i < rounds; i++) {
            proxy(faults[f]);
            int64_t rd0 = lateness_run_delay();
            ctx_t *ctx = ctx_with_timeout(ctx_background(), BUDGET, NULL);
            ctx_time_t end;
            CHECK(ctx_deadline(ctx, &end));
            PGconn *conn = (PGconn *)1;
            CHECK_EQ_INT(ctx_pq_connect(ctx, via_proxy, &conn), CTX_DEADLINE_EXCEEDED);
            check_late(faults[f], end, check_mono_now(), rd0);
            CHECK_NULL(conn);
            ctx_unref(ctx);
            proxy("heal");
        }
    }
    fprintf(stderr, "   connect (dark, trickle) ok\n");
}

static void test_begin_dark(long rounds)
{
    PGconn *conn = open_via_proxy();
    for (long i = 0; i < rounds; i++) {
        proxy("dark");
        int64_t rd0 = lateness_run_delay();
        ctx_t *ctx = ctx_with_timeout(ctx_background(), BUDGET, NULL);
        ctx_time_t end;
        CHECK(ctx_deadline(ctx, &end));
        ctx_pq_tx_t *tx = (ctx_pq_tx_t *)1;
        CHECK_EQ_INT(ctx_pq_begin(ctx, conn, &tx), CTX_DEADLINE_EXCEEDED);
        check_late("begin", end, check_mono_now(), rd0);
        CHECK_NULL(tx);
        ctx_unref(ctx);
        check_after_heal(&conn);
    }
    PQfinish(conn);
}

/* COMMIT on a dark network under the transaction's deadline; then the
 * same with ctx_pq_tx_commit's own deadline and a transaction context that
 * never ends; then ROLLBACK both ways. */
static void test_commit_rollback_dark(long rounds)
{
    PGconn *conn = open_via_proxy();
    PQclear(
        ctx_pq_exec(ctx_background(), conn, "CREATE TABLE IF NOT EXISTS ctx_pq_partition(i int)"));
    for (int variant = 0; variant < 4; variant++) {
        bool commit = variant < 2, own_ctx = variant % 2 == 1;
        for (long i = 0; i < rounds; i++) {
            ctx_t *txctx = own_ctx ? ctx_ref(ctx_background())
                                   : ctx_with_timeout(ctx_background(), BUDGET, NULL);
            ctx_pq_tx_t *tx;
            CHECK_EQ_INT(ctx_pq_begin(txctx, conn, &tx), 0);
            PGresult *r = ctx_pq_exec(txctx, conn, "INSERT INTO ctx_pq_partition VALUES (1)");
            CHECK_NOT_NULL(r);
            CHECK_EQ_INT(PQresultStatus(r), PGRES_COMMAND_OK);
            PQclear(r);
            proxy("dark");
            int64_t rd0 = lateness_run_delay();
            ctx_t *ctx = own_ctx ? ctx_with_timeout(ctx_background(), BUDGET, NULL) : txctx;
            ctx_time_t end;
            CHECK(ctx_deadline(ctx, &end));
            int rc;
            if (commit)
                rc = own_ctx ? ctx_pq_tx_commit(ctx, tx) : ctx_pq_commit(tx);
            else
                rc = own_ctx ? ctx_pq_tx_rollback(ctx, tx) : ctx_pq_rollback(tx);
            ctx_time_t returned = check_mono_now();
            check_late(commit ? "commit" : "rollback", end, returned, rd0);
            if (commit)
                CHECK_MSG(rc == CTX_DEADLINE_EXCEEDED, "commit: %d", rc);
            else
                CHECK_MSG(rc == 0 || rc == EIO, "rollback: %d", rc);
            if (own_ctx)
                ctx_unref(ctx);
            ctx_unref(txctx);
            check_after_heal(&conn);
        }
    }
    fprintf(stderr, "   commit and rollback (transaction's and own deadline) ok\n");
    PQclear(ctx_pq_exec(ctx_background(), conn, "DROP TABLE IF EXISTS ctx_pq_partition"));
    PQfinish(conn);
}

static void test_get_result_dark(long rounds)
{
    PGconn *conn = open_via_proxy();
    for (long i = 0; i < rounds; i++) {
        CHECK(PQsendQuery(conn, "SELECT pg_sleep(2)"));
        CHECK(pq_await_state(observer, PQbackendPID(conn), "active", 10 * CTX_SECOND));
        proxy("dark");
        int64_t rd0 = lateness_run_delay();
        ctx_t *ctx = ctx_with_timeout(ctx_background(), BUDGET, NULL);
        ctx_time_t end;
        CHECK(ctx_deadline(ctx, &end));
        errno = 0;
        PGresult *r = ctx_pq_get_result(ctx, conn);
        check_late("get_result", end, check_mono_now(), rd0);
        CHECK_NULL(r);
        CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
        ctx_unref(ctx);
        check_after_heal(&conn);
    }
    PQfinish(conn);
    fprintf(stderr, "   get_result ok\n");
}

int main(void)
{
    const char *direct = pq_conninfo();
    char tcp[512];
    snprintf(tcp, sizeof tcp, "%s", pq_conninfo_in(getenv("CTX_PQ_STATE"), "conninfo_tcp"));
    int port = 0;
    const char *p = strstr(tcp, "port=");
    CHECK_NOT_NULL(p);
    port = atoi(p + 5);
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", port);
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
    /* libpq takes the last of a repeated keyword. */
    snprintf(via_proxy, sizeof via_proxy, "%s port=%d", tcp, fp.port);
    observer = pq_open_at(direct);

    /* The library's timer thread starts with the first deadline: start it
     * before the baseline is taken. */
    ctx_t *warm = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    CHECK_EQ_INT(pq_int(observer, "SELECT 1"), 1);
    ctx_unref(warm);
    int threads0 = check_thread_count();
    int fds0 = io_fd_count();
    long rounds = check_scale(3);
    if (rounds < 2)
        rounds = 2;

    big_statement = malloc(16 << 20);
    CHECK_NOT_NULL(big_statement);
    int n = snprintf(big_statement, 64, "SELECT length('");
    memset(big_statement + n, 'x', (16 << 20) - n - 8);
    strcpy(big_statement + (16 << 20) - 8, "')");

    const struct exec_case cases[] = {
        { .name = "dark before the call", .before = "dark", .sql = "SELECT 1" },
        { .name = "dark while sending", .before = "dark", .sql = big_statement },
        { .name = "dark while server works",
          .sql = "SELECT pg_sleep(2)",
          .during = DARK_WHEN_ACTIVE },
        { .name = "dark while result streams",
          .sql = "SELECT repeat('x', 10000), pg_sleep(0.01) FROM generate_series(1, 1000)",
          .during = DARK_WHILE_STREAMING },
        { .name = "dark, cancel in flight",
          .sql = "SELECT pg_sleep(2)",
          .during = CANCEL_THEN_DARK },
        { .name = "dark at the deadline", .sql = "SELECT pg_sleep(2)", .dark_at_deadline = true },
        { .name = "peer resets",
          .sql = "SELECT pg_sleep(2)",
          .during = RESET,
          .may_fail_fast = true },
        { .name = "peer half-closes",
          .sql = "SELECT pg_sleep(2)",
          .during = HALFCLOSE,
          .may_fail_fast = true },
        { .name = "1 byte per second", .before = "trickle 1000", .sql = "SELECT 1" },
    };
    /* CTX_PQ_PARTITION_ONLY=<name prefix> runs only the matching cases,
     * with each round's figure. */
    const char *only = getenv("CTX_PQ_PARTITION_ONLY");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (only == NULL || strncmp(cases[i].name, only, strlen(only)) == 0)
            run_exec_case(&cases[i], rounds);
    if (only != NULL)
        return 0;
    test_connect_dark(rounds);
    test_begin_dark(rounds);
    test_commit_rollback_dark(rounds);
    test_get_result_dark(rounds);

    fprintf(stderr, "worst lateness %+lld ms; after the heal %ld connections kept, %ld broken\n",
            (long long)(late.worst / CTX_MILLISECOND), kept_total, broken_total);

    /* The background cancel work ends within CTX_PQ_DRAIN_TIMEOUT_MS and
     * leaves nothing behind. */
    ctx_time_t deadline = check_mono_now() + (CTX_PQ_DRAIN_TIMEOUT_MS + 5000) * CTX_MILLISECOND;
    while ((check_thread_count() > threads0 || io_fd_count() > fds0) && check_mono_now() < deadline)
        check_sleep_ns(50 * CTX_MILLISECOND);
    CHECK_MSG(check_thread_count() <= threads0, "threads %d, were %d", check_thread_count(),
              threads0);
    CHECK_MSG(io_fd_count() <= fds0, "fds %d, were %d", io_fd_count(), fds0);

    free(big_statement);
    PQfinish(observer);
    faultproxy_stop(&fp);
    return 0;
}
