/* SPDX-License-Identifier: MIT */

/*
 * A dependency that goes dark: the network between reportd and its
 * upstream, or its PostgreSQL database (with the argument "pq", in
 * libctx-pq's throw-away cluster), stops forwarding (tests/faultproxy: no
 * error, no answer).  Every
 * request gets 504 at its budget, /metrics keeps answering at once, threads
 * and file descriptors stay flat however many requests go into the dark,
 * requests succeed again once the network heals, without a restart, and
 * SIGTERM with requests stuck in the dark exits 0 within --drain-ms + 1 s.
 */
#include "harness.h"

#include "faultproxy/faultproxy.h"

#include <dirent.h>

#define BUDGET 500
#define N      6 /* requests into the dark at once */

static struct svc down, front;
static const char *reportd;
static char report_url[256];

static int count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    CHECK_NOT_NULL(d);
    int n = 0;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 2;
}

static int count_threads(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    CHECK_NOT_NULL(f);
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

struct call {
    pthread_t thread;
    struct reply r;
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    c->r = HTTP_GET(report_url, 10000, NULL);
    return NULL;
}

/* N requests at once into the dark: each 504 at its budget, while
 * /metrics answers within 100 ms. */
static void dark_round(void)
{
    struct call calls[N];
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(pthread_create(&calls[i].thread, NULL, call_main, &calls[i]), 0);
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", front.url);
    ctx_sleep(ctx_background(), 200 * CTX_MILLISECOND);
    for (int i = 0; i < 3; i++) {
        struct reply m = HTTP_GET(url, 0, NULL);
        CHECK_EQ_INT(m.status, 200);
        CHECK_LE_INT(m.ms, 100 * SLACK);
    }
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(pthread_join(calls[i].thread, NULL), 0);
        CHECK_EQ_INT(calls[i].r.status, 504);
        CHECK(calls[i].r.ms >= BUDGET - 100);
        CHECK_LE_INT(calls[i].r.ms, BUDGET + 100 * SLACK);
    }
}

/* The scenario, for a front whose dependency is behind fp: extra are the
 * front's arguments that point it there (through the proxy). */
static void dark_scenario(faultproxy_t *fp, const char *what, const char *url_args,
                          const char *const extra[2])
{
    SVC_START(&front, "front", reportd, extra[0], extra[1]);
    snprintf(report_url, sizeof report_url, "%s/report?%s", front.url, url_args);
    CHECK_EQ_INT(HTTP_GET(report_url, 0, NULL).status, 200);

    CHECK_EQ_INT(faultproxy_cmd(fp, "dark"), 0);
    dark_round();
    CHECK(settled(&front));
    int fds = count_fds(front.pid), threads = count_threads(front.pid);
    for (int round = 0; round < 8; round++)
        dark_round();
    CHECK(settled(&front));
    fprintf(stderr, "   %s dark: fds %d then %d, threads %d then %d\n", what, fds,
            count_fds(front.pid), threads, count_threads(front.pid));
    /* The calls abandoned in the dark leave no connection behind: at most
     * one, kept alive before the dark or opened in it, is open at the
     * proxy.  The threads are those of the pools, which do not grow with
     * the rounds.  A thread that has made an upstream call keeps a libcurl
     * multi handle with its wake-up socket pair until it exits: the fds may
     * grow by up to two per thread as more threads make calls, never by one
     * or more per request sent into the dark (48 here). */
    int now_threads = count_threads(front.pid);
    fprintf(stderr, "   connections open at the proxy: %d\n", faultproxy_count(fp));
    CHECK_LE_INT(faultproxy_count(fp), N);
    CHECK_LE_INT(now_threads, threads + N);
    CHECK_LE_INT(count_fds(front.pid), fds + 2 * now_threads);

    /* Healed: requests succeed again, without a restart. */
    CHECK_EQ_INT(faultproxy_cmd(fp, "heal"), 0);
    struct reply r = HTTP_GET(report_url, 0, NULL);
    for (int i = 0; i < 20 && r.status != 200; i++)
        r = HTTP_GET(report_url, 0, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(HTTP_GET(report_url, 0, NULL).status, 200);
    CHECK_EQ_INT(svc_stop(&front), 0);

    /* SIGTERM with requests in the dark and a budget longer than the
     * drain: exit 0 within --drain-ms + 1 s. */
    CHECK_EQ_INT(faultproxy_cmd(fp, "dark"), 0);
    SVC_START(&front, "front", reportd, extra[0], extra[1], "--budget-ms", "10000", "--drain-ms",
              "300");
    snprintf(report_url, sizeof report_url, "%s/report?%s", front.url, url_args);
    struct call calls[N];
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(pthread_create(&calls[i].thread, NULL, call_main, &calls[i]), 0);
    ctx_time_t t0 = ctx_now();
    while (metric(&front, "reportd_requests_in_flight") < N && ctx_now() - t0 < 5 * CTX_SECOND)
        ctx_sleep(ctx_background(), 5 * CTX_MILLISECOND);
    CHECK_EQ_INT(metric(&front, "reportd_requests_in_flight"), N);
    ctx_sleep(ctx_background(), 100 * CTX_MILLISECOND); /* into the dark */
    ctx_time_t sig = ctx_now();
    CHECK_EQ_INT(svc_stop(&front), 0);
    long ms = (long)((ctx_now() - sig) / CTX_MILLISECOND);
    fprintf(stderr, "   SIGTERM with %d requests in the dark: exit 0 after %ld ms\n", N, ms);
    CHECK_LE_INT(ms, 300 + 1000 * SLACK);
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(pthread_join(calls[i].thread, NULL), 0);
        CHECK_EQ_INT(calls[i].r.status, 503); /* outcome shutdown */
    }
    CHECK_EQ_INT(faultproxy_cmd(fp, "heal"), 0);
}

static void test_dark_upstream(void)
{
    SVC_START(&down, "down", reportd, NULL);
    faultproxy_t fp;
    char target[64], up[64];
    snprintf(target, sizeof target, "127.0.0.1:%u", down.port);
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
    snprintf(up, sizeof up, "http://127.0.0.1:%d", fp.port);
    dark_scenario(&fp, "upstream", "compute_ms=5&db_ms=5&upstream_ms=5",
                  (const char *const[]){ "--upstream", up });
    faultproxy_stop(&fp);
    CHECK_EQ_INT(svc_stop(&down), 0);
}

/* PostgreSQL over TCP through the proxy: libctx-pq returns within its
 * grace of the budget and gives a connection it could not cancel on up,
 * so the pool drops it and connects anew once the network heals. */
static void test_dark_database(void)
{
    const char *state = getenv("CTX_PQ_STATE");
    char path[1024], conninfo[1024] = "";
    snprintf(path, sizeof path, "%s/conninfo_tcp", state != NULL ? state : ".");
    FILE *f = fopen(path, "r");
    if (f == NULL)
        SKIP("no PostgreSQL cluster (%s): install postgresql to run this test", path);
    CHECK_NOT_NULL(fgets(conninfo, sizeof conninfo, f));
    fclose(f);
    const char *port = strstr(conninfo, "port=");
    CHECK_NOT_NULL(port);
    faultproxy_t fp;
    char target[64], db[256];
    snprintf(target, sizeof target, "127.0.0.1:%d", atoi(port + 5));
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
    snprintf(db, sizeof db,
             "postgres:host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable",
             fp.port);
    dark_scenario(&fp, "database", "db_ms=5", (const char *const[]){ "--db", db });
    faultproxy_stop(&fp);
}

int main(int argc, char **argv)
{
    CHECK(argc == 2 || (argc == 3 && strcmp(argv[2], "pq") == 0));
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    reportd = argv[1];
    if (argc == 3)
        test_dark_database();
    else
        test_dark_upstream();
    curl_global_cleanup();
    return 0;
}
