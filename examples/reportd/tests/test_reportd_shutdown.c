/* SPDX-License-Identifier: MIT */

/*
 * Graceful shutdown with requests in flight: on SIGTERM reportd stops
 * accepting, lets the requests in flight finish within --drain-ms, then
 * cancels the rest (outcome "shutdown", 503) and exits 0.  A second signal
 * ends it at once.
 */
#include "harness.h"

static const char *reportd;

struct call {
    pthread_t thread;
    char url[256];
    struct reply r;
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    c->r = HTTP_GET(c->url, 0, NULL);
    return NULL;
}

static void await_in_flight(struct svc *s, long n)
{
    ctx_time_t until = ctx_now() + 10 * CTX_SECOND;
    while (metric(s, "reportd_requests_in_flight") < n && ctx_now() < until)
        ctx_sleep(ctx_background(), 5 * CTX_MILLISECOND);
    CHECK_EQ_INT(metric(s, "reportd_requests_in_flight"), n);
}

static void test_drain(void)
{
    struct svc s;
    SVC_START(&s, "drain", reportd, "--drain-ms", "20000", "--budget-ms", "30000");
    struct call calls[3];
    for (int i = 0; i < 3; i++) {
        /* Waits, not CPU work, so that a loaded machine cannot stretch
         * them past the drain. */
        snprintf(calls[i].url, sizeof calls[i].url, "%s/task?ms=800", s.url);
        CHECK_EQ_INT(pthread_create(&calls[i].thread, NULL, call_main, &calls[i]), 0);
    }
    await_in_flight(&s, 3);
    kill(s.pid, SIGTERM);
    char *line = SVC_LINE(&s, 5000, "draining");
    CHECK_NOT_NULL(line);
    free(line);
    /* No new connection is accepted while draining. */
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", s.url);
    struct reply r = HTTP_GET(url, 2000, NULL);
    CHECK(r.rc != CURLE_OK);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(pthread_join(calls[i].thread, NULL), 0);
        CHECK_EQ_INT(calls[i].r.status, 200);
    }
    CHECK_EQ_INT(svc_wait(&s), 0);
}

static void test_drain_time_over(void)
{
    struct svc s;
    SVC_START(&s, "cut", reportd, "--drain-ms", "200", "--budget-ms", "20000");
    struct call c;
    snprintf(c.url, sizeof c.url, "%s/report?compute_ms=10000&db_ms=10000", s.url);
    CHECK_EQ_INT(pthread_create(&c.thread, NULL, call_main, &c), 0);
    await_in_flight(&s, 1);
    ctx_time_t t = ctx_now();
    kill(s.pid, SIGTERM);
    CHECK_EQ_INT(pthread_join(c.thread, NULL), 0);
    long ms = (long)((ctx_now() - t) / CTX_MILLISECOND);
    fprintf(stderr, "   the request ended %ld ms after SIGTERM (drain 200 ms)\n", ms);
    CHECK_EQ_INT(c.r.status, 503);
    CHECK(ms >= 190);
    CHECK_LE_INT(ms, 2000);
    char *line = SVC_LINE(&s, 5000, "outcome=shutdown", "cancelled=compute,db");
    CHECK_NOT_NULL(line);
    free(line);
    CHECK_EQ_INT(svc_wait(&s), 0);
}

static void test_second_signal(void)
{
    struct svc s;
    SVC_START(&s, "twice", reportd, "--drain-ms", "30000", "--budget-ms", "40000");
    struct call c;
    snprintf(c.url, sizeof c.url, "%s/report?compute_ms=30000", s.url);
    CHECK_EQ_INT(pthread_create(&c.thread, NULL, call_main, &c), 0);
    await_in_flight(&s, 1);
    kill(s.pid, SIGINT);
    char *line = SVC_LINE(&s, 5000, "draining");
    CHECK_NOT_NULL(line);
    free(line);
    ctx_time_t t = ctx_now();
    kill(s.pid, SIGINT);
    int st;
    CHECK_EQ_INT(waitpid(s.pid, &st, 0), s.pid);
    long ms = (long)((ctx_now() - t) / CTX_MILLISECOND);
    fprintf(stderr, "   the second signal ended it after %ld ms\n", ms);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT);
    CHECK_LE_INT(ms, 2000);
    CHECK_EQ_INT(pthread_join(c.thread, NULL), 0);
    CHECK(c.r.rc != CURLE_OK);
    CHECK_EQ_INT(pthread_join(s.reader, NULL), 0);
    close(s.err_fd);
    free(s.log);
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    reportd = argv[1];
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    RUN_TEST(test_drain);
    RUN_TEST(test_drain_time_over);
    RUN_TEST(test_second_signal);
    curl_global_cleanup();
    return 0;
}
