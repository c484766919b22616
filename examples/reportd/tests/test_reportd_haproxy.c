/* SPDX-License-Identifier: MIT */

/*
 * The hang-up through HAProxy.  With its defaults HAProxy treats a client
 * that closes its side as a half-close and keeps the request running on
 * the server until the answer comes; `option abortonclose` makes it close
 * the server connection instead, so reportd sees the client go.  Both are
 * checked: with abortonclose a client that leaves at 200 ms ends reportd's
 * work within 25 ms (its log line and its gauges), and without it the
 * request runs to its end.
 *
 *   test_reportd_haproxy REPORTD HAPROXY
 */
#include "proxy.h"

static bool abort_on_close;

static void haproxy_config(struct proxy *p, unsigned backend, FILE *f)
{
    fprintf(f,
            "global\n"
            "    pidfile %s/haproxy.pid\n"
            "defaults\n"
            "    mode http\n"
            "    timeout connect 5s\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "%s"
            "frontend web\n"
            "    bind 127.0.0.1:%u\n"
            "    default_backend reportd\n"
            "backend reportd\n"
            "    server r1 127.0.0.1:%u\n",
            p->dir, abort_on_close ? "    option abortonclose\n" : "", p->port, backend);
}

static struct svc down, front;
static struct proxy haproxy;

static void start_haproxy(const char *exe)
{
    proxy_cleanup_target = &haproxy;
    /* -db: in the foreground, no daemon. */
    proxy_start(&haproxy, abort_on_close ? "haproxy-abortonclose" : "haproxy-defaults",
                haproxy_config, "haproxy.cfg", front.port,
                (const char *const[]){ exe, "-db", "-f", "%s/haproxy.cfg", NULL });
}

/* option abortonclose: the client's leaving reaches reportd. */
static void test_abortonclose(const char *exe)
{
    abort_on_close = true;
    start_haproxy(exe);
    /* The best of five tries, so that one slowed by a loaded machine does
     * not fail a property that holds. */
    long best_log = LONG_MAX, best_gauges = LONG_MAX;
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "haproxy-gone-%d", i);
        struct hangup h = hang_up_through(haproxy.url, &front, id, 3000);
        CHECK_MSG(strstr(h.line, " status=499 ") != NULL &&
                      strstr(h.line, " outcome=client_gone ") &&
                      strstr(h.line, " cancelled=compute,db,upstream"),
                  "line: %s", h.line);
        fprintf(
            stderr,
            "   try %d: reportd logged %ld ms; its gauges read 0 %ld ms after the client left\n", i,
            h.log_ms, h.gauges_ms);
        best_log = h.log_ms < best_log ? h.log_ms : best_log;
        best_gauges = h.gauges_ms < best_gauges ? h.gauges_ms : best_gauges;
    }
    CHECK_LE_INT(best_log, 200 + 25 * SLACK);
    CHECK_LE_INT(best_gauges, 25 * SLACK);
    proxy_stop(&haproxy, SIGTERM);
    proxy_cleanup_target = NULL;
}

/* The defaults: reportd never hears of it and serves the request whole. */
static void test_defaults(const char *exe)
{
    abort_on_close = false;
    start_haproxy(exe);
    struct hangup h = hang_up_through(haproxy.url, &front, "haproxy-default", 1000);
    fprintf(stderr, "   defaults: reportd logged %ld ms (%s)\n", h.log_ms, h.line);
    CHECK_MSG(strstr(h.line, " status=200 ") != NULL && strstr(h.line, " outcome=ok "), "line: %s",
              h.line);
    CHECK(h.log_ms >= 1000);
    proxy_stop(&haproxy, SIGTERM);
    proxy_cleanup_target = NULL;
}

int main(int argc, char **argv)
{
    CHECK(argc == 3);
    if (access(argv[2], X_OK) != 0) {
        fprintf(stderr, "SKIP: no haproxy at %s (Debian: haproxy)\n", argv[2]);
        return 77;
    }
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    SVC_START(&down, "down", argv[1], "--budget-ms", "10000");
    char up[80];
    snprintf(up, sizeof up, "http://127.0.0.1:%u", down.port);
    SVC_START(&front, "front", argv[1], "--upstream", up, "--budget-ms", "10000");
    proxy_also_kill[0] = down.pid;
    proxy_also_kill[1] = front.pid;
    signal(SIGABRT, proxy_on_abort);
    RUN_TEST_ARG(test_abortonclose, argv[2]);
    RUN_TEST_ARG(test_defaults, argv[2]);
    CHECK_EQ_INT(svc_stop(&front), 0);
    CHECK_EQ_INT(svc_stop(&down), 0);
    curl_global_cleanup();
    return 0;
}
