/* SPDX-License-Identifier: MIT */

/*
 * The hang-up through nginx with its default proxy settings: a client that
 * leaves a /report through nginx after 200 ms.  nginx (proxy_ignore_client_abort
 * off, its default) closes its connection to reportd as soon as it sees
 * the client go, so reportd logs the client as gone and stops all three
 * parts within 25 ms, as its log line and its gauges show.
 *
 *   test_reportd_nginx REPORTD NGINX
 */
#include "proxy.h"

/* Only what a test instance needs of its own (paths, port, foreground);
 * nothing about proxying is set, so every proxy setting is nginx's
 * default. */
static void nginx_config(struct proxy *p, unsigned backend, FILE *f)
{
    fprintf(f,
            "daemon off;\n"
            "worker_processes 1;\n"
            "pid %s/nginx.pid;\n"
            "error_log %s/error.log info;\n"
            "events { worker_connections 64; }\n"
            "http {\n"
            "    access_log %s/access.log;\n"
            "    client_body_temp_path %s/body;\n"
            "    proxy_temp_path %s/proxy;\n"
            "    fastcgi_temp_path %s/fastcgi;\n"
            "    uwsgi_temp_path %s/uwsgi;\n"
            "    scgi_temp_path %s/scgi;\n"
            "    server {\n"
            "        listen 127.0.0.1:%u;\n"
            "        location / {\n"
            "            proxy_pass http://127.0.0.1:%u;\n"
            "        }\n"
            "    }\n"
            "}\n",
            p->dir, p->dir, p->dir, p->dir, p->dir, p->dir, p->dir, p->dir, p->port, backend);
}

static struct svc down, front;
static struct proxy nginx;

int main(int argc, char **argv)
{
    proxy_test_begin(argc, argv, "nginx", &down, &front);

    proxy_cleanup_target = &nginx;
    /* -e: the error log before the configuration is read (nginx would
     * otherwise open /var/log/nginx/error.log first). */
    proxy_start(&nginx, "nginx", nginx_config, "nginx.conf", front.port,
                (const char *const[]){ argv[2], "-p", "%s", "-c", "%s/nginx.conf", "-e",
                                       "%s/error.log", NULL });

    /* A request that stays: nginx passes it through, trace and all. */
    char url[160];
    snprintf(url, sizeof url, "%s/report?compute_ms=10&db_ms=10&upstream_ms=10", nginx.url);
    struct reply r = HTTP_GET(url, 10000, "X-Request-Id: through-nginx");
    CHECK_EQ_INT(r.rc, CURLE_OK);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.request_id, "through-nginx");

    /* Clients leave at 200 ms. */
    proxy_check_hang_ups(nginx.url, &front, "nginx-gone");
    CHECK_EQ_INT(metric(&front, "reportd_requests_total{outcome=\"client_gone\"}"), 5);

    /* SIGQUIT: nginx's graceful stop; nothing is in flight. */
    proxy_stop(&nginx, SIGQUIT);
    proxy_cleanup_target = NULL;
    proxy_test_end(&down, &front);
    return 0;
}
