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
    proxy_check_hang_ups(haproxy.url, &front, "haproxy-gone");
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
    proxy_test_begin(argc, argv, "haproxy", &down, &front);
    RUN_TEST_ARG(test_abortonclose, argv[2]);
    RUN_TEST_ARG(test_defaults, argv[2]);
    proxy_test_end(&down, &front);
    return 0;
}
