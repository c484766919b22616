/* SPDX-License-Identifier: MIT */

/*
 * Go's net/http on both sides of reportd, as peers nobody here wrote:
 *   - a Go client whose context.WithTimeout ends its call: reportd sees the
 *     connection close and stops the request's parts (outcome client_gone);
 *   - a Go server as reportd's upstream: its r.Context() must end when the
 *     front's budget does (the call's connection closes, and its
 *     grpc-timeout expires).
 * Builds the two programs with Debian's Go (GO111MODULE=off, no network,
 * GOCACHE in the build directory); skipped when go is not installed.
 *
 *   test_reportd_go REPORTD GO-SOURCE-DIR WORK-DIR
 */
#include "harness.h"

static const char *reportd, *src, *work;

static void go_build(const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", work, name);
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "cd '%s/%s' && GO111MODULE=off GOFLAGS=-mod=mod GOPROXY=off GOPATH='%s/gopath' "
             "GOCACHE='%s/gocache' go build -o '%s' main.go",
             src, name, work, work, out);
    fprintf(stderr, "   %s\n", cmd);
    CHECK_MSG(system(cmd) == 0, "go build of %s failed", name);
}

/* Runs the Go client and returns its one line (free it). */
static char *go_client(const char *client, const char *url, const char *timeout, const char *id)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' -url '%s' -timeout %s -id %s", client, url, timeout, id);
    FILE *p = popen(cmd, "r");
    CHECK_NOT_NULL(p);
    char *line = NULL;
    size_t cap = 0;
    CHECK(getline(&line, &cap, p) > 0);
    CHECK_EQ_INT(pclose(p), 0);
    fprintf(stderr, "   go client: %s", line);
    return line;
}

int main(int argc, char **argv)
{
    CHECK(argc == 4);
    reportd = argv[1];
    src = argv[2];
    work = argv[3];
    if (system("command -v go >/dev/null 2>&1") != 0)
        SKIP("go is not installed (Debian: golang-go)");
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    char client[1024], upstream[1024];
    go_build("client", client, sizeof client);
    go_build("upstream", upstream, sizeof upstream);

    struct svc up, front;
    svc_spawn(&up, "go-upstream", (const char *const[]){ upstream, NULL });
    SVC_START(&front, "front", reportd, "--upstream", up.url, "--budget-ms", "300");

    fprintf(stderr, "-- a Go client within its timeout\n");
    char url[256];
    snprintf(url, sizeof url, "%s/report?compute_ms=5&db_ms=5&upstream_ms=5", front.url);
    char *line = go_client(client, url, "5s", "go-ok");
    CHECK(strstr(line, "status=200 request_id=go-ok ") != NULL);
    free(line);
    line = SVC_LINE(&up, 5000, "task request_id=go-ok ", "err=none");
    CHECK_NOT_NULL(line);
    CHECK(strstr(line, "traceparent=00-") != NULL);
    free(line);

    fprintf(stderr, "-- a Go client whose context.WithTimeout ends first\n");
    snprintf(url, sizeof url, "%s/report?compute_ms=2000&db_ms=2000", front.url);
    line = go_client(client, url, "150ms", "go-gone");
    CHECK(strstr(line, "err=context deadline exceeded") != NULL);
    free(line);
    line = SVC_LINE(&front, 5000, "request_id=go-gone ", "outcome=client_gone",
                    "cancelled=compute,db");
    CHECK_NOT_NULL(line);
    /* Left after 150 ms; generous for a loaded machine. */
    CHECK_LE_INT(field_long(line, "ms"), 150 + 350);
    free(line);

    fprintf(stderr, "-- a Go upstream that hangs: its r.Context() ends with the budget\n");
    snprintf(url, sizeof url, "%s/report?upstream_ms=5000", front.url);
    struct reply r = HTTP_GET(url, 0, "X-Request-Id: go-hang");
    CHECK_EQ_INT(r.status, 504);
    line = SVC_LINE(&up, 5000, "task request_id=go-hang ");
    CHECK_NOT_NULL(line);
    fprintf(stderr, "   go upstream: %s\n", line);
    CHECK(strstr(line, "err=context canceled") != NULL ||
          strstr(line, "err=context deadline exceeded") != NULL);
    /* The budget is 300 ms; generous for a loaded machine. */
    CHECK_LE_INT(field_long(line, "after_ms"), 300 + 400);
    free(line);

    CHECK_EQ_INT(svc_stop(&front), 0);
    svc_stop(&up);
    curl_global_cleanup();
    return 0;
}
