/* SPDX-License-Identifier: MIT */

/*
 * A client that gives up after 200 ms: the front sees its connection close
 * and stops all three parts (computation, query, upstream call) at once,
 * the upstream's request context ends with the front's call, and every
 * in-flight gauge is back to zero.
 */
#include "harness.h"

static struct svc down, front;

static long stopped_after(struct svc *s, ctx_time_t since)
{
    /* Poll the gauges as fast as the service answers. */
    ctx_time_t until = since + 5 * CTX_SECOND;
    while (in_flight(s) != 0 && ctx_now() < until) {
    }
    CHECK_EQ_INT(in_flight(s), 0);
    return (long)((ctx_now() - since) / CTX_MILLISECOND);
}

/* Returns how long the front logged the request as lasting. */
static long hang_up(const char *id)
{
    char url[256], hdr[80];
    snprintf(url, sizeof url, "%s/report?compute_ms=3000&db_ms=3000&upstream_ms=3000", front.url);
    snprintf(hdr, sizeof hdr, "X-Request-Id: %s", id);
    long zero_before = metric(&front, "reportd_live_contexts");
    struct reply r = HTTP_GET(url, 200, hdr);
    ctx_time_t gone = ctx_now();
    CHECK_EQ_INT(r.rc, CURLE_OPERATION_TIMEDOUT);
    long ms = stopped_after(&front, gone);
    fprintf(stderr, "   the client left after %ld ms; the front's gauges read 0 %ld ms later\n",
            r.ms, ms);
    CHECK_LE_INT(ms, 1000 * SLACK); /* generous: the target is 20 ms, checked below */

    char needle[80];
    snprintf(needle, sizeof needle, "request_id=%s ", id);
    char *line = SVC_LINE(&front, 5000, needle);
    CHECK_NOT_NULL(line);
    CHECK(strstr(line, " outcome=client_gone ") != NULL);
    CHECK(strstr(line, " cancelled=compute,db,upstream") != NULL);
    /* The request lasted the client's 200 ms plus the time to notice and
     * stop: the log's ms bounds the stop latency from above. */
    long total = field_long(line, "ms");
    fprintf(stderr, "   front log: request lasted %ld ms (client gave up at 200 ms)\n", total);
    CHECK_LE_INT(total, 200 + 1000 * SLACK);
    free(line);

    line = SVC_LINE(&down, 5000, needle, "path=/task");
    CHECK_NOT_NULL(line);
    CHECK(strstr(line, "outcome=client_gone ") != NULL ||
          strstr(line, "outcome=deadline ") != NULL);
    CHECK(strstr(line, "cancelled=task") != NULL);
    free(line);
    stopped_after(&down, ctx_now());

    /* Every context of the request is freed: the count comes back to
     * what it was (the gauges above can read 0 a moment before the last
     * reference goes on a loaded machine). */
    ctx_time_t until = ctx_now() + 5 * CTX_SECOND;
    long live;
    while ((live = metric(&front, "reportd_live_contexts")) != zero_before && ctx_now() < until) {
    }
    CHECK_EQ_INT(live, zero_before);
    return total;
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    SVC_START(&down, "down", argv[1], NULL);
    char up[80];
    snprintf(up, sizeof up, "http://127.0.0.1:%u", down.port);
    SVC_START(&front, "front", argv[1], "--upstream", up, "--budget-ms", "10000");
    long before = metric(&front, "reportd_parts_cancelled_total{part=\"db\"}");
    /* All three parts stop within 20 ms of the client leaving: the best of
     * two tries lasts at most 200 ms + 20 ms + the time the client's close
     * takes to arrive (a generous 30 ms on a loaded machine). */
    long a = hang_up("gone-1");
    long b = hang_up("gone-2");
    CHECK_LE_INT(a < b ? a : b, 200 + 50 * SLACK);
    CHECK_EQ_INT(metric(&front, "reportd_parts_cancelled_total{part=\"db\"}"), before + 2);
    CHECK_EQ_INT(metric(&front, "reportd_requests_total{outcome=\"client_gone\"}"), 2);
    CHECK_EQ_INT(svc_stop(&front), 0);
    CHECK_EQ_INT(svc_stop(&down), 0);
    curl_global_cleanup();
    return 0;
}
