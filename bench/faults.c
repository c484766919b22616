/* SPDX-License-Identifier: MIT */

/*
 * faults: how long a call under a 300 ms deadline takes to return after the
 * deadline when the network or the peer fails, and whether the connection
 * is still good afterwards; libctx-pq (ctx_pq_exec) beside Go's
 * database/sql with lib/pq (bench/faults_go), through the same fault proxy
 * (tests/faultproxy) to the same throw-away PostgreSQL cluster, in one run.
 *
 *   faults_bench --pgcluster integrations/pq/tests/pgcluster.sh
 *                --proxy build/tests/faultproxy [--go faults_go]
 *                [--rounds 20] [--go-rounds 5] [--out build/bench/faults.md]
 *
 * Per fault it reports the return after the deadline (p50, p99, max) and
 * how often the connection was kept (the next statement, after the network
 * healed, answered on it).  A Go call that has not returned 3 s after its
 * deadline is reported as such; the network then heals and the benchmark
 * waits up to 20 s more for it.
 */
#define _GNU_SOURCE

#include "faultproxy/faultproxy.h"

#include <ctx.h>
#include <ctx/pq.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUDGET_MS 300
#define GO_CAP_MS 3000

enum strike { NONE, DARK_WHEN_ACTIVE, DARK_STREAMING, DARK_AT_DEADLINE, RESET, HALFCLOSE };

struct fault {
    const char *name;
    const char *before;
    const char *sql;
    enum strike strike;
};

static const struct fault faults[] = {
    { "none: server busy past the deadline", NULL, "SELECT pg_sleep(2)", NONE },
    { "dark before the call", "dark", "SELECT 1", NONE },
    { "dark while the server works", NULL, "SELECT pg_sleep(2)", DARK_WHEN_ACTIVE },
    { "dark while the result streams", NULL,
      "SELECT repeat('x', 10000), pg_sleep(0.01) FROM generate_series(1, 1000)", DARK_STREAMING },
    { "dark at the deadline", NULL, "SELECT pg_sleep(2)", DARK_AT_DEADLINE },
    { "peer resets", NULL, "SELECT pg_sleep(2)", RESET },
    { "peer half-closes", NULL, "SELECT pg_sleep(2)", HALFCLOSE },
    { "1 byte per second", "trickle 1000", "SELECT 1", NONE },
};
#define NFAULTS (sizeof faults / sizeof faults[0])

static faultproxy_t fp;
static PGconn *observer;
static char via_proxy[700];
static FILE *out;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (out != NULL) {
        va_start(ap, fmt);
        vfprintf(out, fmt, ap);
        va_end(ap);
    }
    fflush(stdout);
}

static void die(const char *what)
{
    fprintf(stderr, "faults_bench: %s\n", what);
    exit(1);
}

static void proxy(const char *cmd)
{
    if (faultproxy_cmd(&fp, "%s", cmd) != 0)
        die("the proxy did not take a command");
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Waits (up to 10 s) until backend pid runs a statement. */
static void await_active(int pid)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT state FROM pg_stat_activity WHERE pid = %d", pid);
    for (int i = 0; i < 5000; i++) {
        PGresult *r = PQexec(observer, sql);
        bool active = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                      strcmp(PQgetvalue(r, 0, 0), "active") == 0;
        PQclear(r);
        if (active)
            return;
        sleep_ms(2);
    }
    die("a backend never became active");
}

/* The fault that strikes during a call, once the backend is active. */
static void strike_now(enum strike s, int pid)
{
    if (s == NONE || s == DARK_AT_DEADLINE)
        return;
    await_active(pid);
    switch (s) {
    case DARK_WHEN_ACTIVE:
        proxy("dark");
        break;
    case DARK_STREAMING:
        sleep_ms(60);
        proxy("dark");
        break;
    case RESET:
        proxy("reset");
        break;
    case HALFCLOSE:
        proxy("halfclose");
        break;
    default:
        break;
    }
}

struct striker {
    enum strike s;
    int pid;
    pthread_t t;
};

static void *striker_main(void *arg)
{
    struct striker *st = arg;
    strike_now(st->s, st->pid);
    return NULL;
}

static void dark_now(void *arg)
{
    (void)arg;
    proxy("dark");
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void stats(int64_t *v, int n, char *buf, size_t len)
{
    if (n == 0) {
        snprintf(buf, len, "none returned");
        return;
    }
    qsort(v, (size_t)n, sizeof v[0], cmp_i64);
    int p99 = (int)(0.99 * (n - 1) + 0.5);
    snprintf(buf, len, "%+.1f / %+.1f / %+.1f ms", v[n / 2] / 1e6, v[p99] / 1e6, v[n - 1] / 1e6);
}

/* ---------------------------------------------------------------------------
 * libctx-pq
 */

static PGconn *open_conn(void)
{
    PGconn *conn = NULL;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    int err = ctx_pq_connect(ctx, via_proxy, &conn);
    ctx_unref(ctx);
    if (err != 0)
        die("cannot connect through the proxy");
    return conn;
}

static void run_c(const struct fault *f, int rounds, char *lat, size_t latlen, int *kept)
{
    int64_t *late = calloc((size_t)rounds, sizeof *late);
    *kept = 0;
    PGconn *conn = open_conn();
    for (int i = 0; i < rounds; i++) {
        struct striker st = { .s = f->strike, .pid = PQbackendPID(conn) };
        ctx_t *ctx = ctx_with_timeout(ctx_background(), BUDGET_MS * CTX_MILLISECOND, NULL);
        ctx_time_t deadline;
        ctx_deadline(ctx, &deadline);
        ctx_after_t *after = NULL;
        if (f->strike == DARK_AT_DEADLINE)
            ctx_after_func(ctx, dark_now, NULL, &after);
        if (f->before != NULL)
            proxy(f->before);
        pthread_create(&st.t, NULL, striker_main, &st);
        PGresult *r = ctx_pq_exec(ctx, conn, f->sql);
        late[i] = ctx_now() - deadline;
        pthread_join(st.t, NULL);
        if (after != NULL)
            ctx_after_stop(after);
        PQclear(r);
        ctx_unref(ctx);
        proxy("heal");
        bool ok = false;
        if (PQstatus(conn) != CONNECTION_BAD) {
            ctx_t *c2 = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
            PGresult *n = ctx_pq_exec(c2, conn, "SELECT 42");
            ok = n != NULL && PQresultStatus(n) == PGRES_TUPLES_OK &&
                 strcmp(PQgetvalue(n, 0, 0), "42") == 0;
            PQclear(n);
            ctx_unref(c2);
        }
        if (ok) {
            (*kept)++;
        } else {
            PQfinish(conn);
            conn = open_conn();
        }
    }
    PQfinish(conn);
    stats(late, rounds, lat, latlen);
    free(late);
}

/* ---------------------------------------------------------------------------
 * Go's database/sql with lib/pq, through bench/faults_go
 */

struct go_peer {
    pid_t pid;
    FILE *in;
    int outfd;
    char buf[4096];
    size_t len;
};

static bool go_start(struct go_peer *g, const char *bin)
{
    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0)
        return false;
    g->pid = fork();
    if (g->pid == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        char arg[800];
        snprintf(arg, sizeof arg, "%s", via_proxy);
        execl(bin, bin, "-conninfo", arg, (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    g->in = fdopen(to[1], "w");
    g->outfd = from[0];
    g->len = 0;
    return g->pid > 0;
}

/* The next line from Go within ms (-1: no limit); false on timeout. */
static bool go_line(struct go_peer *g, char *line, size_t len, int ms)
{
    int64_t end = ms < 0 ? INT64_MAX : now_ns() + (int64_t)ms * 1000000;
    for (;;) {
        char *nl = memchr(g->buf, '\n', g->len);
        if (nl != NULL) {
            size_t n = (size_t)(nl - g->buf);
            snprintf(line, len, "%.*s", (int)n, g->buf);
            memmove(g->buf, nl + 1, g->len - n - 1);
            g->len -= n + 1;
            return true;
        }
        int64_t left = end - now_ns();
        if (left <= 0)
            return false;
        struct pollfd p = { .fd = g->outfd, .events = POLLIN };
        if (poll(&p, 1, ms < 0 ? -1 : (int)(left / 1000000) + 1) <= 0)
            continue;
        ssize_t r = read(g->outfd, g->buf + g->len, sizeof g->buf - g->len - 1);
        if (r <= 0)
            die("the Go peer died");
        g->len += (size_t)r;
    }
}

static void go_say(struct go_peer *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void go_say(struct go_peer *g, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(g->in, fmt, ap);
    va_end(ap);
    fputc('\n', g->in);
    fflush(g->in);
}

static void run_go(struct go_peer *g, const struct fault *f, int rounds, char *lat, size_t latlen,
                   int *kept, int *hung)
{
    int64_t *late = calloc((size_t)rounds, sizeof *late);
    int n = 0;
    *kept = *hung = 0;
    char line[4096];
    for (int i = 0; i < rounds; i++) {
        go_say(g, "round %s", f->sql);
        if (!go_line(g, line, sizeof line, 20000) || strncmp(line, "pid ", 4) != 0)
            die("the Go peer did not open a connection");
        int pid = atoi(line + 4);
        if (f->before != NULL)
            proxy(f->before);
        go_say(g, "go %d", BUDGET_MS);
        if (f->strike == DARK_AT_DEADLINE) {
            sleep_ms(BUDGET_MS);
            proxy("dark");
        } else {
            strike_now(f->strike, pid);
        }
        bool returned = go_line(g, line, sizeof line, BUDGET_MS + GO_CAP_MS);
        proxy("heal");
        if (!returned) {
            /* Its figure counts too: the time until the heal let it go. */
            (*hung)++;
            if (!go_line(g, line, sizeof line, 20000)) {
                fprintf(stderr, "proxy connections: %d\n", faultproxy_count(&fp));
                PGresult *r = PQexec(observer, "SELECT pid, state, query FROM pg_stat_activity "
                                               "WHERE backend_type = 'client backend'");
                for (int k = 0; k < PQntuples(r); k++)
                    fprintf(stderr, "  %s %s %s\n", PQgetvalue(r, k, 0), PQgetvalue(r, k, 1),
                            PQgetvalue(r, k, 2));
                PQclear(r);
                die("the Go peer never returned, even after the heal");
            }
        }
        late[n++] = strtoll(line + 5, NULL, 10);
        go_say(g, "check");
        if (!go_line(g, line, sizeof line, 20000))
            die("the Go peer did not check its connection");
        if (strcmp(line, "kept") == 0)
            (*kept)++;
    }
    stats(late, n, lat, latlen);
    free(late);
}

int main(int argc, char **argv)
{
    const char *pgcluster = NULL, *proxy_exe = NULL, *go_bin = NULL, *out_path = NULL;
    int rounds = 20, go_rounds = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--pgcluster") && i + 1 < argc)
            pgcluster = argv[++i];
        else if (!strcmp(argv[i], "--proxy") && i + 1 < argc)
            proxy_exe = argv[++i];
        else if (!strcmp(argv[i], "--go") && i + 1 < argc)
            go_bin = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out_path = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--go-rounds") && i + 1 < argc)
            go_rounds = atoi(argv[++i]);
        else {
            fprintf(stderr,
                    "usage: %s --pgcluster SCRIPT --proxy FAULTPROXY [--go BIN] [--rounds N] "
                    "[--go-rounds N] [--out FILE]\n",
                    argv[0]);
            return 2;
        }
    }
    if (pgcluster == NULL || proxy_exe == NULL || rounds < 1 || go_rounds < 1)
        die("--pgcluster and --proxy are needed, rounds at least 1");
    if (go_bin != NULL && access(go_bin, X_OK) != 0)
        go_bin = NULL;
    if (out_path != NULL)
        out = fopen(out_path, "w");

    char dir[] = "/tmp/ctx-faults-bench-XXXXXX";
    if (mkdtemp(dir) == NULL)
        die("mkdtemp");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' start '%s' >&2", pgcluster, dir);
    if (system(cmd) != 0)
        die("the PostgreSQL cluster did not start");
    char path[256], tcp[512] = "", direct[512] = "";
    snprintf(path, sizeof path, "%s/conninfo_tcp", dir);
    FILE *fi = fopen(path, "r");
    if (fi == NULL || fgets(tcp, sizeof tcp, fi) == NULL)
        die("no conninfo_tcp");
    fclose(fi);
    snprintf(path, sizeof path, "%s/conninfo", dir);
    fi = fopen(path, "r");
    if (fi == NULL || fgets(direct, sizeof direct, fi) == NULL)
        die("no conninfo");
    fclose(fi);
    tcp[strcspn(tcp, "\n")] = 0;
    direct[strcspn(direct, "\n")] = 0;
    const char *p = strstr(tcp, "port=");
    if (p == NULL)
        die("no port in conninfo_tcp");
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", atoi(p + 5));
    if (faultproxy_start(&fp, proxy_exe, target) != 0)
        die("the proxy did not start");
    snprintf(via_proxy, sizeof via_proxy, "%s port=%d", tcp, fp.port);
    observer = PQconnectdb(direct);
    if (PQstatus(observer) != CONNECTION_OK)
        die("no observer connection");

    struct go_peer g = { 0 };
    bool have_go = go_bin != NULL && go_start(&g, go_bin);

    emit("## Faults: the return after a 300 ms deadline, and the connection afterwards\n\n");
    emit("ctx_pq_exec (libctx-pq) and Go's database/sql ExecContext with lib/pq, through the "
         "same fault proxy to one PostgreSQL %s cluster on loopback; %d rounds per fault for "
         "libctx, %d for Go. Times are from the deadline to the call's return (p50 / p99 / "
         "max); \"kept\" counts rounds whose connection answered the next statement after "
         "the network healed. A Go call still blocked %d ms after its deadline is counted "
         "under \"blocked\"; the network then heals, and its time is that of its return after "
         "the heal.\n\n",
         PQparameterStatus(observer, "server_version"), rounds, go_rounds, GO_CAP_MS);
    emit("| fault | libctx-pq: return after deadline | libctx-pq: kept | Go lib/pq: return "
         "after deadline | Go: blocked > 3 s | Go: kept |\n");
    emit("|---|---|---|---|---|---|\n");
    /* FAULTS_ONLY=<name prefix> runs the matching faults only. */
    const char *only = getenv("FAULTS_ONLY");
    for (size_t i = 0; i < NFAULTS; i++) {
        if (only != NULL && strncmp(faults[i].name, only, strlen(only)) != 0)
            continue;
        char clat[96], glat[96] = "not run";
        int ckept, gkept = 0, ghung = 0;
        run_c(&faults[i], rounds, clat, sizeof clat, &ckept);
        if (have_go)
            run_go(&g, &faults[i], go_rounds, glat, sizeof glat, &gkept, &ghung);
        if (have_go)
            emit("| %s | %s | %d/%d | %s | %d/%d | %d/%d |\n", faults[i].name, clat, ckept, rounds,
                 glat, ghung, go_rounds, gkept, go_rounds);
        else
            emit("| %s | %s | %d/%d | not run | | |\n", faults[i].name, clat, ckept, rounds);
    }
    if (!have_go)
        emit("\nGo: not run (the Go peer did not build: it needs golang-github-lib-pq-dev).\n");

    if (have_go) {
        fclose(g.in);
        waitpid(g.pid, NULL, 0);
    }
    PQfinish(observer);
    faultproxy_stop(&fp);
    snprintf(cmd, sizeof cmd, "'%s' stop '%s' >&2", pgcluster, dir);
    if (system(cmd) != 0)
        fprintf(stderr, "faults_bench: the cluster did not stop cleanly\n");
    rmdir(dir);
    if (out != NULL)
        fclose(out);
    return 0;
}
