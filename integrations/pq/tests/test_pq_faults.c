/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq when things break: a server that accepts TCP but never answers,
 * a cancel request that PostgreSQL drops because the backend had not read
 * the command yet, the repeat of that request racing the command's end, a
 * backend that stops answering while a cancel is in
 * flight, a connection broken while a cancel is in flight, and the server
 * stopped mid-query.
 * Every call must end with a clear error within a bound, never hang or
 * crash.  The test stops and kills servers, so it starts a cluster of its
 * own with pgcluster.sh; a parent process stops and deletes that cluster
 * whatever happens to the tests, and a CTest cleanup fixture does so again
 * should CTest kill the whole test at its timeout.
 */
#include "check.h"

#include "pq_test.h"

#include "faultproxy/lateness.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

static char state_dir[128];

static int cluster(const char *cmd)
{
    const char *script = getenv("CTX_PGCLUSTER");
    CHECK_NOT_NULL(script);
    char line[512];
    snprintf(line, sizeof line, "'%s' %s '%s' >&2", script, cmd, state_dir);
    int rc = system(line);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* A loopback listener that completes TCP handshakes (the kernel does) and
 * never says a word: libpq waits forever for the server's first reply. */
static void test_silent_server(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    CHECK_EQ_INT(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ_INT(listen(s, 8), 0);
    CHECK_EQ_INT(getsockname(s, (struct sockaddr *)&a, &len), 0);
    char info[128];
    snprintf(info, sizeof info, "host=127.0.0.1 port=%d user=postgres sslmode=disable",
             ntohs(a.sin_port));

    ctx_t *ctx = ctx_with_timeout(ctx_background(), 300 * CTX_MILLISECOND, NULL);
    PGconn *conn = (PGconn *)1;
    ctx_time_t start = check_mono_now();
    CHECK_EQ_INT(ctx_pq_connect(ctx, info, &conn), CTX_DEADLINE_EXCEEDED);
    CHECK_NULL(conn);
    CHECK(check_mono_now() - start < 10 * CTX_SECOND);
    ctx_unref(ctx);

    ctx_cancel_t *cancel;
    ctx = ctx_with_cancel(ctx_background(), &cancel);
    pq_canceller_t c;
    pq_cancel_later(&c, cancel, 100 * CTX_MILLISECOND);
    CHECK_EQ_INT(ctx_pq_connect(ctx, info, &conn), CTX_CANCELED);
    pq_canceller_join(&c);
    ctx_unref(ctx);

    /* libpq's connect_timeout (ignored by PQconnectPoll itself) bounds the
     * call under a context that never ends; 1 means 2 s, as in libpq. */
    char timed[160];
    snprintf(timed, sizeof timed, "%s connect_timeout=1", info);
    start = check_mono_now();
    CHECK_EQ_INT(ctx_pq_connect(ctx_background(), timed, &conn), ETIMEDOUT);
    ctx_duration_t took = check_mono_now() - start;
    CHECK_NULL(conn);
    CHECK(took >= 2 * CTX_SECOND - 10 * CTX_MILLISECOND);
    CHECK(took < 10 * CTX_SECOND);
    close(s);
}

/* A statement run with ctx_pq_exec on a thread of its own. */
struct running {
    PGconn *conn;
    ctx_t *ctx;
    const char *sql; /* NULL: SELECT pg_sleep(60) */
    PGresult *result;
    int err;
    ctx_duration_t took;
    ctx_time_t end;
    pthread_t thread;
};

static void *run_sleep(void *arg)
{
    struct running *r = arg;
    ctx_time_t start = check_mono_now();
    errno = 0;
    r->result = ctx_pq_exec(r->ctx, r->conn, r->sql != NULL ? r->sql : "SELECT pg_sleep(60)");
    r->err = errno;
    r->end = check_mono_now();
    r->took = r->end - start;
    return NULL;
}

static void start_sleep(struct running *r, PGconn *conn, ctx_t *ctx, PGconn *observer)
{
    *r = (struct running){ .conn = conn, .ctx = ctx };
    check_thread_start(&r->thread, run_sleep, r);
    CHECK(pq_await_state(observer, PQbackendPID(conn), "active", 30 * CTX_SECOND));
}

/* The connection is broken: every further call says so at once. */
static void check_broken(PGconn *conn)
{
    CHECK_EQ_INT(PQstatus(conn), CONNECTION_BAD);
    ctx_time_t start = check_mono_now();
    PGresult *r = ctx_pq_exec(ctx_background(), conn, "SELECT 1");
    CHECK_NOT_NULL(r);
    CHECK_EQ_INT(PQresultStatus(r), PGRES_FATAL_ERROR);
    fprintf(stderr, "   next statement: %s", PQresultErrorMessage(r));
    PQclear(r);
    CHECK(check_mono_now() - start < 5 * CTX_SECOND);
}

/* Connections come back after the postmaster's crash recovery. */
static PGconn *reconnect(void)
{
    ctx_time_t end = check_mono_now() + 60 * CTX_SECOND;
    for (;;) {
        PGconn *conn = NULL;
        if (ctx_pq_connect(ctx_background(), pq_conninfo_in(state_dir, "conninfo"), &conn) == 0)
            return conn;
        CHECK(check_mono_now() < end);
        check_sleep_ns(50 * CTX_MILLISECOND);
    }
}

/* A killed backend makes the postmaster end every other backend and
 * recover.  observer, connected before the kill, is certain to be ended by
 * that reset: once it is, the reset has begun, and a connection that then
 * answers a query comes from after it.  Without this wait, the next test
 * could connect in the moment before the reset and lose its connection to
 * it.  Frees observer. */
static void await_crash_reset(PGconn *observer)
{
    ctx_time_t end = check_mono_now() + 60 * CTX_SECOND;
    for (;;) {
        PGresult *r = ctx_pq_exec(ctx_background(), observer, "SELECT 1");
        int alive = r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        if (!alive)
            break;
        CHECK(check_mono_now() < end);
        check_sleep_ns(20 * CTX_MILLISECOND);
    }
    PQfinish(observer);
    for (;;) {
        PGconn *conn = reconnect();
        PGresult *r = ctx_pq_exec(ctx_background(), conn, "SELECT 1");
        int ok = r != NULL && PQresultStatus(r) == PGRES_TUPLES_OK;
        PQclear(r);
        PQfinish(conn);
        if (ok)
            return;
        CHECK(check_mono_now() < end);
        check_sleep_ns(50 * CTX_MILLISECOND);
    }
}

/* The backend stops (SIGSTOP) during a statement and the context is
 * cancelled: the cancel request is sent, but no result ever comes.  The
 * call gives the connection up after CTX_PQ_CANCEL_GRACE_MS and returns the
 * context's error; the connection is broken. */
static void test_backend_stops_answering(void)
{
    PGconn *observer = reconnect();
    PGconn *conn = reconnect();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    struct running r;
    start_sleep(&r, conn, ctx, observer);
    CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
    ctx_time_t cancelled_at = check_mono_now();
    ctx_cancel(cancel);
    check_thread_join(r.thread);
    kill(pid, SIGCONT);
    ctx_duration_t late = r.end - cancelled_at;
    fprintf(stderr, "   returned %lld ms after the cancel\n", (long long)(late / CTX_MILLISECOND));
    CHECK(late < PQ_BOUND);
    CHECK_NULL(r.result);
    CHECK_EQ_INT(r.err, CTX_CANCELED);
    check_broken(conn);
    PQfinish(conn);
    PQfinish(observer);
    ctx_unref(ctx);
}

/* The backend is killed while the cancel is in flight (it is stopped when
 * the cancel is sent, then killed 20 ms later, inside the call's grace):
 * the call ends within the bound, the connection broken either way. */
static void test_broken_while_cancelling(void)
{
    PGconn *observer = reconnect();
    PGconn *conn = reconnect();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    struct running r;
    start_sleep(&r, conn, ctx, observer);
    CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
    ctx_time_t cancelled_at = check_mono_now();
    ctx_cancel(cancel);
    /* Gives the call time to send its cancel and start draining; the
     * outcome checked below is the same if it has not. */
    check_sleep_ns(20 * CTX_MILLISECOND);
    CHECK_EQ_INT(kill(pid, SIGKILL), 0);
    check_thread_join(r.thread);
    ctx_duration_t late = r.end - cancelled_at;
    fprintf(stderr, "   returned %lld ms after the cancel\n", (long long)(late / CTX_MILLISECOND));
    CHECK(late < PQ_BOUND);
    /* The killed backend's EOF (a FATAL result) or the grace (the
     * context's error) ended the call, whichever came first. */
    if (r.result != NULL) {
        CHECK_EQ_INT(PQresultStatus(r.result), PGRES_FATAL_ERROR);
        PQclear(r.result);
    } else {
        CHECK_EQ_INT(r.err, CTX_CANCELED);
    }
    check_broken(conn);
    PQfinish(conn);
    await_crash_reset(observer);
    ctx_unref(ctx);
}

/* The whole server is stopped (immediate shutdown) during a statement run
 * under a context that never ends: a clear error, no hang. */
static void test_server_stopped_mid_query(void)
{
    PGconn *observer = reconnect();
    PGconn *conn = reconnect();
    struct running r;
    start_sleep(&r, conn, ctx_background(), observer);
    CHECK_EQ_INT(cluster("stop"), 0);
    check_thread_join(r.thread);
    fprintf(stderr, "   returned after %lld ms\n", (long long)(r.took / CTX_MILLISECOND));
    CHECK_NOT_NULL(r.result);
    CHECK_EQ_INT(PQresultStatus(r.result), PGRES_FATAL_ERROR);
    fprintf(stderr, "   error: %s", PQresultErrorMessage(r.result));
    PQclear(r.result);
    check_broken(conn);
    PQfinish(conn);
    PQfinish(observer);
}

struct pending {
    PGconn *conn;
    ctx_t *ctx;
    int err;
    ctx_duration_t took;
    pthread_t thread;
};

static void *get_result_done(void *arg)
{
    struct pending *p = arg;
    ctx_time_t start = check_mono_now();
    errno = 0;
    PGresult *r = ctx_pq_get_result(p->ctx, p->conn);
    p->err = errno;
    p->took = check_mono_now() - start;
    PQclear(r);
    return NULL;
}

/* A cancel request that the backend takes while it still waits to read the
 * command is dropped by PostgreSQL; then the command runs in full.  Made
 * certain here: the backend is stopped while the command is sent and the
 * first request signals it, and continued afterwards, so it takes SIGINT
 * before it reads the command.  The library repeats the request while the
 * command runs; within its grace the repeat stops the command (the
 * connection is kept) or the connection is given up, never a wait for the
 * command's own end (10 s). */
static void test_cancel_dropped_before_read(void)
{
    PGconn *conn = reconnect();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
    CHECK(PQsendQuery(conn, "SELECT pg_sleep(10)"));
    struct pending p = { .conn = conn, .ctx = ctx };
    check_thread_start(&p.thread, get_result_done, &p);
    /* Gives the first request time to be sent; the outcome checked below is
     * the same if it has not been. */
    check_sleep_ns(20 * CTX_MILLISECOND);
    CHECK_EQ_INT(kill(pid, SIGCONT), 0);
    check_thread_join(p.thread);
    fprintf(stderr, "   returned after %lld ms, connection %s\n",
            (long long)(p.took / CTX_MILLISECOND),
            PQstatus(conn) == CONNECTION_BAD ? "given up" : "kept");
    CHECK_EQ_INT(p.err, CTX_CANCELED);
    CHECK(p.took < PQ_BOUND);
    if (pq_kept_or_reopen(&conn, pq_conninfo_in(state_dir, "conninfo")))
        CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    ctx_unref(ctx);
    PQfinish(conn);
}

/* The repeated cancel request racing the command's end (the question the
 * repeat raises: can a repeat that comes after the command finished hit the
 * next statement?).  In each round the first request is certainly dropped
 * (the backend is stopped when it comes, as above), the backend is
 * continued 5 ms after the cancel, and the command then runs 0 to 35 ms:
 * the repeats, 5 ms apart, land before, during and just after its end.  The
 * next statement runs 10 ms on the server, so a late request would cancel
 * it; on every connection kept it must give 1.  Both outcomes (cancelled,
 * finished first) must occur on kept connections, or the test proves
 * nothing; a connection not settled within the grace is given up. */
static void test_repeat_races_completion(void)
{
    PGconn *conn = reconnect();
    check_rng_t rng = check_rng_make(check_seed());
    long rounds = check_scale(150);
    long cancelled = 0, finished = 0, given_up = 0;
    long i;
    for (i = 0; i < 6 * rounds && (i < rounds || cancelled == 0 || finished == 0); i++) {
        int pid = PQbackendPID(conn);
        char sql[64];
        snprintf(sql, sizeof sql, "SELECT pg_sleep(%u / 1000000.0), 7",
                 check_rng_below(&rng, 35000));
        ctx_cancel_t *cancel;
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
        CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
        struct running e = { .conn = conn, .ctx = ctx, .sql = sql };
        check_thread_start(&e.thread, run_sleep, &e);
        /* The command is sent (into the socket buffer) long before this. */
        check_sleep_ns(5 * CTX_MILLISECOND);
        int64_t rd0 = lateness_run_delay();
        ctx_time_t cancelled_at = check_mono_now();
        ctx_cancel(cancel);
        check_sleep_ns(5 * CTX_MILLISECOND);
        CHECK_EQ_INT(kill(pid, SIGCONT), 0);
        check_thread_join(e.thread);
        /* Less the time the process waited for a CPU (lateness.h). */
        int64_t starved = lateness_run_delay() - rd0;
        if (starved < 0)
            starved = 0;
        CHECK_MSG(e.end - cancelled_at - starved < PQ_BOUND,
                  "round %ld: returned %lld ms late, %lld ms of it waiting for a CPU", i,
                  (long long)((e.end - cancelled_at) / CTX_MILLISECOND),
                  (long long)(starved / CTX_MILLISECOND));
        bool kept = PQstatus(conn) != CONNECTION_BAD;
        if (e.result == NULL) {
            CHECK_EQ_INT(e.err, CTX_CANCELED);
            if (kept)
                cancelled++;
        } else {
            CHECK_MSG(PQresultStatus(e.result) == PGRES_TUPLES_OK, "round %ld: %s", i,
                      PQresultErrorMessage(e.result));
            CHECK_STR(PQgetvalue(e.result, 0, 1), "7");
            if (kept)
                finished++;
            PQclear(e.result);
        }
        ctx_unref(ctx);
        if (!pq_kept_or_reopen(&conn, pq_conninfo_in(state_dir, "conninfo"))) {
            given_up++;
            continue;
        }
        PGresult *next = ctx_pq_exec(ctx_background(), conn, "SELECT pg_sleep(0.01), 1");
        CHECK_NOT_NULL(next);
        CHECK_MSG(PQresultStatus(next) == PGRES_TUPLES_OK,
                  "round %ld: the next statement failed: %s", i, PQresultErrorMessage(next));
        CHECK_STR(PQgetvalue(next, 0, 1), "1");
        PQclear(next);
    }
    fprintf(stderr,
            "   %ld rounds: %ld cancelled by a repeat, %ld finished first, %ld connections "
            "given up; every next statement gave 1\n",
            i, cancelled, finished, given_up);
    CHECK(cancelled > 0);
    CHECK(finished > 0);
    PQfinish(conn);
}

/* A COPY TO that starts after the first cancel request was dropped: its
 * rows are read and dropped while the request is repeated (rows that take
 * 20 s in all would otherwise be read to the end); the call returns within
 * its bound, the connection idle or given up. */
static void test_copy_after_dropped_cancel(void)
{
    PGconn *conn = reconnect();
    int pid = PQbackendPID(conn);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_EQ_INT(kill(pid, SIGSTOP), 0);
    struct running r = {
        .conn = conn,
        .ctx = ctx,
        /* Rows of 10 kB, so that the server flushes each one as it comes
         * (it buffers 8 kB); the first at once, then one every 100 ms. */
        .sql = "COPY (SELECT repeat('x', 10000), pg_sleep(CASE WHEN i = 1 THEN 0 ELSE 0.1 END) "
               "FROM generate_series(1, 200) i) TO STDOUT",
    };
    check_thread_start(&r.thread, run_sleep, &r);
    check_sleep_ns(5 * CTX_MILLISECOND);
    ctx_time_t cancelled_at = check_mono_now();
    ctx_cancel(cancel);
    check_sleep_ns(5 * CTX_MILLISECOND);
    CHECK_EQ_INT(kill(pid, SIGCONT), 0);
    check_thread_join(r.thread);
    ctx_duration_t late = r.end - cancelled_at;
    fprintf(stderr, "   returned %lld ms after the cancel, connection %s\n",
            (long long)(late / CTX_MILLISECOND),
            PQstatus(conn) == CONNECTION_BAD ? "given up" : "kept");
    CHECK_NULL(r.result);
    CHECK_EQ_INT(r.err, CTX_CANCELED);
    CHECK(late < PQ_BOUND);
    if (pq_kept_or_reopen(&conn, pq_conninfo_in(state_dir, "conninfo")))
        CHECK_EQ_INT(pq_int(conn, "SELECT 1"), 1);
    ctx_unref(ctx);
    PQfinish(conn);
}

static int run_tests(void)
{
    RUN_TEST(test_silent_server);
    RUN_TEST(test_cancel_dropped_before_read);
    RUN_TEST(test_repeat_races_completion);
    RUN_TEST(test_copy_after_dropped_cancel);
    RUN_TEST(test_backend_stops_answering);
    RUN_TEST(test_broken_while_cancelling);
    RUN_TEST(test_server_stopped_mid_query);
    return 0;
}

int main(void)
{
    if (getenv("CTX_PGCLUSTER") == NULL)
        SKIP("CTX_PGCLUSTER is not set: run this test through CTest");
    /* CTest names the directory, and stops the cluster in it even when it
     * kills this test at its timeout; run by hand, the test picks one. */
    const char *dir = getenv("CTX_PQ_FAULTS_STATE");
    if (dir != NULL)
        CHECK_MSG(snprintf(state_dir, sizeof state_dir, "%s", dir) < (int)sizeof state_dir,
                  "CTX_PQ_FAULTS_STATE is too long: %s", dir);
    else
        snprintf(state_dir, sizeof state_dir, "/tmp/ctx-pq-faults-%ld", (long)getpid());
    int rc = cluster("start");
    if (rc == CHECK_SKIP_CODE)
        SKIP("PostgreSQL's server binaries are not installed: the fault tests were skipped");
    CHECK_EQ_INT(rc, 0);

    /* The tests run in a child, so that this process stops the cluster
     * however they end (a failed check aborts). */
    fflush(NULL);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0)
        _exit(run_tests());
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR)
        ;
    cluster("stop");
    rmdir(state_dir);
    if (WIFSIGNALED(status)) {
        fprintf(stderr, "tests died with signal %d\n", WTERMSIG(status));
        return 1;
    }
    return WEXITSTATUS(status);
}
