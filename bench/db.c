/* SPDX-License-Identifier: MIT */

/*
 * db: libctx-sqlite and libctx-pq beside plain SQLite and libpq, and beside
 * Go's database/sql with lib/pq and mattn/go-sqlite3, in rounds, in one run.
 *
 *   db_bench --pgcluster integrations/pq/tests/pgcluster.sh --out build/bench/db.md
 *            [--go bench/db_go] [--quick]
 *
 * Overhead: the same work through the plain call and through the libctx
 * call under a cancellable context (so the handlers and the done fd are
 * really in play), rounds interleaved, min / median / max of the rounds.
 * Cancel latency: from ctx_cancel to the call's return, and (PostgreSQL)
 * until pg_stat_activity shows the backend idle, p50 / p99 / max.
 * PostgreSQL runs in a throw-away cluster started with pgcluster.sh.
 */
#define _GNU_SOURCE

#include <ctx.h>
#include <ctx/pq.h>
#include <ctx/sqlite.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static bool quick;
static FILE *out;
static char state_dir[128];
static const char *cluster_script;

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* CPU time of the calling thread: what a CPU-bound loop costs, whatever
 * else the machine runs (a preempted thread's CPU clock stands still). */
static double cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Prints to stdout and to the report file. */
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
    fprintf(stderr, "db_bench: %s\n", what);
    if (state_dir[0] != '\0' && cluster_script != NULL) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "'%s' stop '%s'", cluster_script, state_dir);
        if (system(cmd) != 0)
            fprintf(stderr, "db_bench: stopping the cluster failed\n");
    }
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double v[256];
    int n;
} series_t;

static void add(series_t *s, double v)
{
    if (s->n < (int)(sizeof s->v / sizeof s->v[0]))
        s->v[s->n++] = v;
}

static double pct(series_t *s, double p)
{
    qsort(s->v, (size_t)s->n, sizeof s->v[0], cmp_double);
    if (s->n == 0)
        return 0;
    int i = (int)(p * (s->n - 1) + 0.5);
    return s->v[i];
}

static void fmt_spread(char *buf, size_t size, series_t *s, double scale, const char *unit)
{
    if (s->n == 0) {
        snprintf(buf, size, "n/a");
        return;
    }
    snprintf(buf, size, "%.0f / %.0f / %.0f %s", pct(s, 0) / scale, pct(s, 0.5) / scale,
             pct(s, 1) / scale, unit);
}

/* ---------------------------------------------------------------------------
 * SQLite
 */

static sqlite3 *sqlite_db(int rows)
{
    sqlite3 *db;
    if (sqlite3_open(":memory:", &db) != SQLITE_OK)
        die("sqlite open");
    char sql[256];
    snprintf(sql, sizeof sql,
             "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);"
             "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
             "WHERE i < %d) SELECT i, i * 7 FROM n;",
             rows);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
        die(sqlite3_errmsg(db));
    return db;
}

enum { PLAIN, CTX_LIVE, CTX_BG, NVARIANTS };
static const char *const variant_names[] = { "plain", "libctx", "libctx, background" };

static int step(int variant, ctx_t *ctx, sqlite3_stmt *stmt)
{
    switch (variant) {
    case PLAIN:
        return sqlite3_step(stmt);
    case CTX_LIVE:
        return ctx_sqlite_step(ctx, stmt);
    default:
        return ctx_sqlite_step(ctx_background(), stmt);
    }
}

/* ns per lookup of one row by primary key (bind, step, reset). */
static double sqlite_lookups(sqlite3 *db, int variant, ctx_t *ctx, int n)
{
    sqlite3_stmt *stmt;
    sqlite3_prepare_v2(db, "SELECT v FROM t WHERE id = ?", -1, &stmt, NULL);
    long long sum = 0;
    double t0 = cpu_ns();
    for (int i = 0; i < n; i++) {
        sqlite3_bind_int(stmt, 1, 1 + (i * 7919) % 1000);
        if (step(variant, ctx, stmt) != SQLITE_ROW)
            die("lookup");
        sum += sqlite3_column_int(stmt, 0);
        sqlite3_reset(stmt);
    }
    double t = (cpu_ns() - t0) / n;
    sqlite3_finalize(stmt);
    if (sum == 0)
        die("lookup sum");
    return t;
}

/* ms for a scan of every row, one step per row. */
static double sqlite_scan(sqlite3 *db, int variant, ctx_t *ctx)
{
    sqlite3_stmt *stmt;
    sqlite3_prepare_v2(db, "SELECT v FROM t", -1, &stmt, NULL);
    long long sum = 0;
    int rc;
    double t0 = cpu_ns();
    while ((rc = step(variant, ctx, stmt)) == SQLITE_ROW)
        sum += sqlite3_column_int(stmt, 0);
    double t = cpu_ns() - t0;
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE || sum == 0)
        die("scan");
    return t / 1e6;
}

/* ms for one step that aggregates every row: the progress handler runs
 * thousands of times inside one call. */
static double sqlite_aggregate(sqlite3 *db, int variant, ctx_t *ctx)
{
    sqlite3_stmt *stmt;
    sqlite3_prepare_v2(db, "SELECT sum(v) FROM t", -1, &stmt, NULL);
    double t0 = cpu_ns();
    if (step(variant, ctx, stmt) != SQLITE_ROW)
        die("aggregate");
    double t = cpu_ns() - t0;
    sqlite3_finalize(stmt);
    return t / 1e6;
}

struct canceller {
    ctx_cancel_t *cancel;
    double delay_ns;
    double cancelled_at;
    pthread_t thread;
    /* PostgreSQL: watch the backend until it is idle. */
    PGconn *observer;
    int pid;
    double idle_at;
};

static void sleep_ns(double ns)
{
    struct timespec ts = { (time_t)(ns / 1e9), (long)((long long)ns % 1000000000LL) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void *cancel_later(void *arg)
{
    struct canceller *c = arg;
    sleep_ns(c->delay_ns);
    c->cancelled_at = now_ns();
    ctx_cancel(c->cancel);
    if (c->observer != NULL) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT state FROM pg_stat_activity WHERE pid = %d", c->pid);
        for (;;) {
            PGresult *r = PQexec(c->observer, sql);
            bool idle = r != NULL && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "idle") == 0;
            PQclear(r);
            if (idle)
                break;
        }
        c->idle_at = now_ns();
    }
    return NULL;
}

static void sqlite_cancel_latency(series_t *lat, int rounds)
{
    sqlite3 *db = sqlite_db(10);
    sqlite3_stmt *stmt;
    sqlite3_prepare_v2(db,
                       "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < "
                       "1000000000000) SELECT count(*) FROM n",
                       -1, &stmt, NULL);
    for (int i = 0; i < rounds; i++) {
        struct canceller c = { .delay_ns = 2e6 };
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &c.cancel);
        pthread_create(&c.thread, NULL, cancel_later, &c);
        if (ctx_sqlite_step(ctx, stmt) != SQLITE_INTERRUPT)
            die("sqlite cancel");
        double back = now_ns();
        pthread_join(c.thread, NULL);
        add(lat, back - c.cancelled_at);
        ctx_unref(ctx);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

static bool go_peer(const char *go_bin, const char *args, char *line, size_t size);

static void bench_sqlite(int rounds, const char *go_bin)
{
    int lookups = quick ? 20000 : 200000;
    int rows = quick ? 100000 : 1000000;
    sqlite3 *db = sqlite_db(rows);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    series_t look[NVARIANTS] = { 0 }, scan[NVARIANTS] = { 0 }, agg[NVARIANTS] = { 0 };
    series_t go_look = { 0 };
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < NVARIANTS; k++) {
            int v = (k + r) % NVARIANTS; /* rotate the order from round to round */
            add(&look[v], sqlite_lookups(db, v, ctx, lookups));
            add(&scan[v], sqlite_scan(db, v, ctx));
            add(&agg[v], sqlite_aggregate(db, v, ctx));
        }
        char line[128], args[64];
        snprintf(args, sizeof args, "-mode sqlite-lookup -n %d", lookups);
        if (go_peer(go_bin, args, line, sizeof line))
            add(&go_look, atof(line));
    }
    ctx_unref(ctx);
    sqlite3_close(db);

    emit("\n### SQLite %s (in memory), %d rounds, CPU time of the calling thread\n\n",
         sqlite3_libversion(), rounds);
    emit("| operation | plain sqlite3_step | ctx_sqlite_step, cancellable ctx | ctx_sqlite_step, "
         "background | libctx / plain (medians) |\n|---|---|---|---|---|\n");
    struct {
        const char *name;
        series_t *s;
        double scale;
        const char *unit;
    } rows_[] = {
        { "1-row lookup by key (bind, step, reset)", look, 1, "ns" },
        { "scan, one step per row", scan, 1, "ms" },
        { "sum() over every row in one step", agg, 1, "ms" },
    };
    for (size_t i = 0; i < sizeof rows_ / sizeof rows_[0]; i++) {
        char a[64], b[64], c[64];
        fmt_spread(a, sizeof a, &rows_[i].s[PLAIN], rows_[i].scale, rows_[i].unit);
        fmt_spread(b, sizeof b, &rows_[i].s[CTX_LIVE], rows_[i].scale, rows_[i].unit);
        fmt_spread(c, sizeof c, &rows_[i].s[CTX_BG], rows_[i].scale, rows_[i].unit);
        double ratio = pct(&rows_[i].s[CTX_LIVE], 0.5) / pct(&rows_[i].s[PLAIN], 0.5);
        emit("| %s%s | %s | %s | %s | %.3fx |\n", rows_[i].name,
             i == 1 ? (quick ? " (100k rows)" : " (1M rows)") : (i == 2 ? "" : ""), a, b, c, ratio);
    }

    series_t lat = { 0 };
    int n = quick ? 20 : 200;
    sqlite_cancel_latency(&lat, n);
    char g[64];
    fmt_spread(g, sizeof g, &go_look, 1, "ns");
    emit("\nGo database/sql + mattn/go-sqlite3 (cgo, the same libsqlite3), "
         "stmt.QueryRowContext(ctx, id).Scan, the same 1-row lookup, wall clock: %s\n",
         g);
    emit("\nCancel latency, %d rounds of an endless recursive query cancelled after 2 ms "
         "(ctx_cancel to ctx_sqlite_step's return): p50 %.1f us, p99 %.1f us, max %.1f us\n",
         n, pct(&lat, 0.5) / 1e3, pct(&lat, 0.99) / 1e3, pct(&lat, 1) / 1e3);
    char line[256], args[64];
    snprintf(args, sizeof args, "-mode sqlite-cancel -n %d", n);
    double p50, p99, mx;
    int unc;
    if (go_peer(go_bin, args, line, sizeof line) &&
        sscanf(line, "%lf %lf %lf %d", &p50, &p99, &mx, &unc) == 4)
        emit("Go database/sql + mattn/go-sqlite3 (sqlite3_interrupt), the same query and "
             "schedule: p50 %.1f us, p99 %.1f us, max %.1f us (%d rounds returned no error)\n",
             p50 / 1e3, p99 / 1e3, mx / 1e3, unc);
    else
        emit("Go database/sql + mattn/go-sqlite3: not run (Go or "
             "golang-github-mattn-go-sqlite3-dev missing)\n");
    emit("(progress handler every %d VM instructions)\n", CTX_SQLITE_PROGRESS_OPS);
    (void)variant_names;
}

/* ---------------------------------------------------------------------------
 * PostgreSQL
 */

static char conninfo[512];

static void read_conninfo(void)
{
    char path[256];
    snprintf(path, sizeof path, "%s/conninfo", state_dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        die("no conninfo");
    if (fgets(conninfo, sizeof conninfo, f) == NULL)
        die("empty conninfo");
    fclose(f);
    conninfo[strcspn(conninfo, "\n")] = '\0';
}

static PGconn *pg_open(void)
{
    PGconn *c;
    if (ctx_pq_connect(ctx_background(), conninfo, &c) != 0)
        die("connect");
    return c;
}

/* ns per SELECT 1 (wall clock); *cpu gets the client's CPU ns per op. */
static double pg_select1(PGconn *conn, int variant, ctx_t *ctx, int n, double *cpu)
{
    double c0 = cpu_ns();
    double t0 = now_ns();
    for (int i = 0; i < n; i++) {
        PGresult *r;
        if (variant == PLAIN)
            r = PQexec(conn, "SELECT 1");
        else
            r = ctx_pq_exec(variant == CTX_LIVE ? ctx : ctx_background(), conn, "SELECT 1");
        if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK)
            die("SELECT 1");
        PQclear(r);
    }
    double t = (now_ns() - t0) / n;
    *cpu = (cpu_ns() - c0) / n;
    return t;
}

/* Runs the Go peer once; its one line of output is a number (or a few). */
static bool go_peer(const char *go_bin, const char *args, char *line, size_t size)
{
    if (go_bin == NULL)
        return false;
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' -conninfo '%s' %s", go_bin, conninfo, args);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return false;
    bool ok = fgets(line, (int)size, p) != NULL;
    int rc = pclose(p);
    return ok && rc == 0;
}

static void bench_pq(int rounds, const char *go_bin)
{
    PGconn *conn = pg_open();
    int n = quick ? 500 : 5000;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    series_t s[NVARIANTS] = { 0 }, cpu[NVARIANTS] = { 0 }, go_s = { 0 };
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < NVARIANTS; k++) {
            int v = (k + r) % NVARIANTS;
            double c;
            add(&s[v], pg_select1(conn, v, ctx, n, &c));
            add(&cpu[v], c);
        }
        char line[128], args[64];
        snprintf(args, sizeof args, "-mode select1 -n %d", n);
        if (go_peer(go_bin, args, line, sizeof line))
            add(&go_s, atof(line));
    }
    ctx_unref(ctx);

    emit("\n### PostgreSQL %d (Unix socket), %d rounds of %d x SELECT 1\n\n",
         PQserverVersion(conn) / 10000, rounds, n);
    emit("| operation | plain PQexec | ctx_pq_exec, cancellable ctx | ctx_pq_exec, background | "
         "libctx / plain (medians) | Go database/sql + lib/pq, ctx with timeout |\n"
         "|---|---|---|---|---|---|\n");
    char a[64], b[64], c[64], g[64];
    fmt_spread(a, sizeof a, &s[PLAIN], 1, "ns");
    fmt_spread(b, sizeof b, &s[CTX_LIVE], 1, "ns");
    fmt_spread(c, sizeof c, &s[CTX_BG], 1, "ns");
    fmt_spread(g, sizeof g, &go_s, 1, "ns");
    emit("| SELECT 1, wall clock | %s | %s | %s | %.3fx | %s |\n", a, b, c,
         pct(&s[CTX_LIVE], 0.5) / pct(&s[PLAIN], 0.5), g);
    fmt_spread(a, sizeof a, &cpu[PLAIN], 1, "ns");
    fmt_spread(b, sizeof b, &cpu[CTX_LIVE], 1, "ns");
    fmt_spread(c, sizeof c, &cpu[CTX_BG], 1, "ns");
    emit("| SELECT 1, the client's CPU time | %s | %s | %s | %.3fx | |\n", a, b, c,
         pct(&cpu[CTX_LIVE], 0.5) / pct(&cpu[PLAIN], 0.5));

    /* Cancel latency during pg_sleep(10). */
    PGconn *observer = pg_open();
    int m = quick ? 20 : 200;
    series_t ret = { 0 }, idle = { 0 };
    for (int i = 0; i < m; i++) {
        struct canceller cl = { .delay_ns = 5e6, .observer = observer, .pid = PQbackendPID(conn) };
        ctx_t *x = ctx_with_cancel(ctx_background(), &cl.cancel);
        pthread_create(&cl.thread, NULL, cancel_later, &cl);
        PGresult *r = ctx_pq_exec(x, conn, "SELECT pg_sleep(10)");
        double back = now_ns();
        if (r != NULL)
            die("pg_sleep was not cancelled");
        pthread_join(cl.thread, NULL);
        add(&ret, back - cl.cancelled_at);
        add(&idle, cl.idle_at - cl.cancelled_at);
        ctx_unref(x);
    }
    emit("\nCancel latency, %d rounds of SELECT pg_sleep(10) cancelled after 5 ms:\n\n", m);
    emit("| from ctx_cancel to | p50 | p99 | max |\n|---|---|---|---|\n");
    emit("| ctx_pq_exec returns (connection idle, usable) | %.2f ms | %.2f ms | %.2f ms |\n",
         pct(&ret, 0.5) / 1e6, pct(&ret, 0.99) / 1e6, pct(&ret, 1) / 1e6);
    emit("| pg_stat_activity shows the backend idle (polled from a 2nd connection) | %.2f ms | "
         "%.2f ms | %.2f ms |\n",
         pct(&idle, 0.5) / 1e6, pct(&idle, 0.99) / 1e6, pct(&idle, 1) / 1e6);
    char line[256], args[64];
    snprintf(args, sizeof args, "-mode cancel -n %d", m);
    if (go_peer(go_bin, args, line, sizeof line)) {
        double p50, p99, mx;
        int uncancelled;
        if (sscanf(line, "%lf %lf %lf %d", &p50, &p99, &mx, &uncancelled) == 4)
            emit("| Go database/sql + lib/pq: ExecContext returns (%d of %d rounds returned no "
                 "error) | %.2f ms | %.2f ms | %.2f ms |\n",
                 uncancelled, m, p50 / 1e6, p99 / 1e6, mx / 1e6);
    } else {
        emit("| Go database/sql + lib/pq | not run (Go or golang-github-lib-pq-dev missing) | | "
             "|\n");
    }
    PQfinish(observer);
    PQfinish(conn);
}

int main(int argc, char **argv)
{
    const char *out_path = NULL, *go_bin = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out_path = argv[++i];
        else if (strcmp(argv[i], "--pgcluster") == 0 && i + 1 < argc)
            cluster_script = argv[++i];
        else if (strcmp(argv[i], "--go") == 0 && i + 1 < argc)
            go_bin = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--out FILE] [--pgcluster SCRIPT] [--go BIN]\n",
                    argv[0]);
            return 2;
        }
    }
    if (out_path != NULL && (out = fopen(out_path, "w")) == NULL)
        die("cannot write the report");
    int rounds = quick ? 3 : 7;
    emit("## db: libctx-sqlite and libctx-pq beside plain SQLite, libpq and Go\n\n");
    emit("Each figure is min / median / max over the rounds; the variants run interleaved, "
         "their order rotated each round.\n");
    bench_sqlite(rounds, go_bin);

    if (cluster_script == NULL) {
        emit("\nPostgreSQL: not run (no --pgcluster script).\n");
        return 0;
    }
    snprintf(state_dir, sizeof state_dir, "/tmp/ctx-db-bench-%ld", (long)getpid());
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' start '%s' >&2", cluster_script, state_dir);
    int rc = system(cmd);
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
        emit("\nPostgreSQL: not run (no PostgreSQL server binaries on this machine).\n");
        return 0;
    }
    if (rc != 0)
        die("the cluster did not start");
    read_conninfo();
    bench_pq(rounds, go_bin);
    snprintf(cmd, sizeof cmd, "'%s' stop '%s'", cluster_script, state_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "db_bench: stopping the cluster failed\n");
    rmdir(state_dir);
    if (out != NULL)
        fclose(out);
    return 0;
}
