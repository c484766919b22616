/*
 * libctx-pq when things break: a server that accepts TCP but never answers,
 * a backend that stops answering while a cancel is in flight, a connection
 * broken while a cancel is in flight, and the server stopped mid-query.
 * Every call must end with a clear error within a bound, never hang or
 * crash.  The test stops and kills servers, so it starts a cluster of its
 * own with pgcluster.sh; a parent process stops and deletes that cluster
 * whatever happens to the tests.
 */
#include "check.h"

#include "pq_test.h"

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
    close(s);
}

struct running {
    PGconn *conn;
    ctx_t *ctx;
    PGresult *result;
    int err;
    ctx_duration_t took;
    pthread_t thread;
};

static void *run_sleep(void *arg)
{
    struct running *r = arg;
    ctx_time_t start = check_mono_now();
    errno = 0;
    r->result = ctx_pq_exec(r->ctx, r->conn, "SELECT pg_sleep(60)");
    r->err = errno;
    r->took = check_mono_now() - start;
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

/* The backend stops (SIGSTOP) during a statement and the context is
 * cancelled: the cancel request is sent, but no result ever comes.  The
 * drain gives up after CTX_PQ_DRAIN_TIMEOUT_MS and the connection is
 * declared broken. */
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
    ctx_cancel(cancel);
    check_thread_join(r.thread);
    kill(pid, SIGCONT);
    fprintf(stderr, "   returned after %lld ms\n", (long long)(r.took / CTX_MILLISECOND));
    CHECK(r.took >= (CTX_PQ_DRAIN_TIMEOUT_MS - 100) * CTX_MILLISECOND);
    CHECK(r.took < (CTX_PQ_DRAIN_TIMEOUT_MS + 20000) * CTX_MILLISECOND);
    /* No cancel error came back, the connection broke: that is the answer. */
    CHECK_NOT_NULL(r.result);
    CHECK_EQ_INT(PQresultStatus(r.result), PGRES_FATAL_ERROR);
    PQclear(r.result);
    check_broken(conn);
    PQfinish(conn);
    PQfinish(observer);
    ctx_unref(ctx);
}

/* The backend is killed while the cancel is in flight (it is stopped when
 * the cancel is sent, then killed): the call ends with the broken
 * connection's error long before the drain's bound. */
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
    ctx_cancel(cancel);
    /* Gives the call time to send its cancel and start draining; the
     * outcome checked below is the same if it has not. */
    check_sleep_ns(200 * CTX_MILLISECOND);
    CHECK_EQ_INT(kill(pid, SIGKILL), 0);
    check_thread_join(r.thread);
    fprintf(stderr, "   returned after %lld ms\n", (long long)(r.took / CTX_MILLISECOND));
    CHECK(r.took < (CTX_PQ_DRAIN_TIMEOUT_MS - 1000) * CTX_MILLISECOND);
    CHECK_NOT_NULL(r.result);
    CHECK_EQ_INT(PQresultStatus(r.result), PGRES_FATAL_ERROR);
    PQclear(r.result);
    check_broken(conn);
    PQfinish(conn);
    PQfinish(observer);
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

static int run_tests(void)
{
    RUN_TEST(test_silent_server);
    RUN_TEST(test_backend_stops_answering);
    RUN_TEST(test_broken_while_cancelling);
    RUN_TEST(test_server_stopped_mid_query);
    return 0;
}

int main(void)
{
    if (getenv("CTX_PGCLUSTER") == NULL)
        SKIP("CTX_PGCLUSTER is not set: run this test through CTest");
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
