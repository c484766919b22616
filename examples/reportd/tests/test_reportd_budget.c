/* SPDX-License-Identifier: MIT */

/*
 * Budgets and identity across two services: a hung upstream costs the
 * front exactly its budget (504 at 500 ms +- 50 ms) and the upstream's own
 * request context ends with it, as its log shows; a shorter incoming
 * grpc-timeout wins over the budget; one request ID and one trace id appear
 * in both services' log lines.
 */
#include "harness.h"

#include <limits.h>

static struct svc down, front;

/* One request whose upstream hangs; returns the front's logged ms. */
static long hung_once(int i)
{
    char url[256], hdr[64], needle[64];
    snprintf(url, sizeof url, "%s/report?compute_ms=10&db_ms=10&upstream_ms=5000", front.url);
    snprintf(hdr, sizeof hdr, "X-Request-Id: budget-%d", i);
    snprintf(needle, sizeof needle, "request_id=budget-%d ", i);
    struct reply r = HTTP_GET(url, 0, hdr);
    fprintf(stderr, "   504 after %ld ms\n", r.ms);
    CHECK_EQ_INT(r.rc, CURLE_OK);
    CHECK_EQ_INT(r.status, 504);
    CHECK_STR(r.request_id, hdr + strlen("X-Request-Id: "));
    CHECK(r.ms >= 450);
    CHECK_LE_INT(r.ms, 500 + 500 * SLACK);

    char *line = SVC_LINE(&front, 5000, needle);
    CHECK_NOT_NULL(line);
    CHECK(strstr(line, " status=504 ") != NULL);
    CHECK(strstr(line, " outcome=deadline ") != NULL);
    /* The upstream call was stopped (a slow machine may have stopped the
     * other parts too). */
    char cancelled[64];
    CHECK(strstr(field(line, "cancelled", cancelled, sizeof cancelled), "upstream") != NULL);
    long ms = field_long(line, "ms");
    CHECK(ms >= 500);
    free(line);

    /* The upstream's request context ended too: by the grpc-timeout the
     * front sent or by the front's connection closing, whichever it saw
     * first, and at about the same moment. */
    line = SVC_LINE(&down, 5000, needle, "path=/task");
    CHECK_NOT_NULL(line);
    CHECK(strstr(line, "outcome=deadline ") != NULL ||
          strstr(line, "outcome=client_gone ") != NULL);
    CHECK(strstr(line, "cancelled=task") != NULL);
    CHECK_LE_INT(field_long(line, "ms"), 500 + 500 * SLACK);
    free(line);

    /* Nothing is left running in either service. */
    CHECK(settled(&front));
    CHECK(settled(&down));
    return ms < r.ms ? r.ms : ms;
}

/* The budget is 500 ms: the 504 comes at 500 +- 50 ms (best of three). */
static void test_hung_upstream(void)
{
    long best = LONG_MAX;
    for (int i = 1; i <= 3; i++) {
        long ms = hung_once(i);
        best = ms < best ? ms : best;
    }
    fprintf(stderr, "   best: %ld ms\n", best);
    CHECK_LE_INT(best, 500 + 50 * SLACK);
}

static void test_grpc_timeout_shorter(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/report?upstream_ms=5000", front.url);
    struct reply r = HTTP_GET(url, 0, "X-Request-Id: budget-2", "grpc-timeout: 200m");
    fprintf(stderr, "   504 after %ld ms\n", r.ms);
    CHECK_EQ_INT(r.status, 504);
    CHECK(r.ms >= 190);
    CHECK_LE_INT(r.ms, 200 + 300 * SLACK);
    char *line = SVC_LINE(&front, 5000, "request_id=budget-2 ", "outcome=deadline");
    CHECK_NOT_NULL(line);
    free(line);
}

static void same_ids(const char *id, const char *want_trace)
{
    char needle[80];
    snprintf(needle, sizeof needle, "request_id=%s ", id);
    char *a = SVC_LINE(&front, 5000, needle, "path=/report");
    char *b = SVC_LINE(&down, 5000, needle, "path=/task");
    CHECK_NOT_NULL(a);
    CHECK_NOT_NULL(b);
    char ta[64], tb[64];
    field(a, "trace_id", ta, sizeof ta);
    field(b, "trace_id", tb, sizeof tb);
    CHECK_EQ_INT(strlen(ta), 32);
    CHECK_STR(ta, tb);
    if (want_trace != NULL)
        CHECK_STR(ta, want_trace);
    free(a);
    free(b);
}

static void test_ids_across_services(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/report?compute_ms=5&db_ms=5&upstream_ms=5", front.url);
    struct reply r = HTTP_GET(url, 0, "X-Request-Id: ids-1");
    CHECK_EQ_INT(r.status, 200);
    same_ids("ids-1", NULL);

    /* An incoming trace is continued, not replaced. */
    r = HTTP_GET(url, 0, "X-Request-Id: ids-2",
                 "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"") != NULL);
    same_ids("ids-2", "4bf92f3577b34da6a3ce929d0e0e4736");

    /* A new ID made by the front travels too. */
    r = HTTP_GET(url, 0, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK_EQ_INT(strlen(r.request_id), 16);
    same_ids(r.request_id, NULL);
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    SVC_START(&down, "down", argv[1], NULL);
    char up[80];
    snprintf(up, sizeof up, "http://127.0.0.1:%u", down.port);
    SVC_START(&front, "front", argv[1], "--upstream", up, "--budget-ms", "500");
    RUN_TEST(test_hung_upstream);
    RUN_TEST(test_grpc_timeout_shorter);
    RUN_TEST(test_ids_across_services);
    CHECK_EQ_INT(svc_stop(&front), 0);
    CHECK_EQ_INT(svc_stop(&down), 0);
    curl_global_cleanup();
    return 0;
}
