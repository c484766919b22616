/* SPDX-License-Identifier: MIT */

/*
 * Shedding past saturation, made deterministic with one computation slot:
 * a request of 50 ms of computation can only be served 20 times within a
 * budget of 1000 ms.  A burst of 60 such requests at once is three times
 * what the slot can do: the requests that cannot get the slot in time are
 * turned away before any part starts (the log line names no stopped part)
 * and answered 504 once half their budget has passed, not at once (a
 * client that sent its next request at once would flood the service) and
 * not on a thread;
 * every answer comes within the budget (plus a margin for a busy machine);
 * the requests admitted are served.  Before the burst, the same requests one
 * at a time are all served, and after it nothing is left counted against
 * the slot: a small burst that fits is served in full again.
 */
#include "harness.h"

#define BUDGET_MS 1000
#define WORK_MS   50
#define BURST     60

static struct svc svc;

/* The log line of request id, which must be there by now. */
static char *line_of(const char *id)
{
    char needle[64];
    snprintf(needle, sizeof needle, "request_id=%s ", id);
    char *line = SVC_LINE(&svc, 5000, needle);
    CHECK_NOT_NULL(line);
    return line;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p, (void)arg;
    return size * n;
}

/* One /report of work ms of computation with request ID id, added to
 * multi; *hdr keeps its header list for the caller to free. */
static CURL *add_report(CURLM *multi, const char *id, int work, long timeout_ms,
                        struct curl_slist **hdr)
{
    char url[128], h[64];
    snprintf(url, sizeof url, "%s/report?compute_ms=%d", svc.url, work);
    snprintf(h, sizeof h, "X-Request-Id: %s", id);
    *hdr = curl_slist_append(NULL, h);
    CURL *e = curl_easy_init();
    CHECK_NOT_NULL(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, *hdr);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
    CHECK_EQ_INT(curl_multi_add_handle(multi, e), CURLM_OK);
    return e;
}

/* n requests of WORK_MS ms of computation sent at once with curl's multi
 * interface; each one's status and time go into status[] and ms[]. */
static void burst(int n, const char *prefix, long *status, long *ms)
{
    CURLM *multi = curl_multi_init();
    CHECK_NOT_NULL(multi);
    CURL *easy[BURST];
    struct curl_slist *hdr[BURST];
    CHECK_LE_INT(n, BURST);
    for (int i = 0; i < n; i++) {
        char id[48];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        easy[i] = add_report(multi, id, WORK_MS, 30000L, &hdr[i]);
    }
    int running = n;
    while (running > 0) {
        CHECK_EQ_INT(curl_multi_perform(multi, &running), CURLM_OK);
        if (running > 0)
            CHECK_EQ_INT(curl_multi_poll(multi, NULL, 0, 100, NULL), CURLM_OK);
    }
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(multi, &left)) != NULL)
        CHECK_EQ_INT(m->data.result, CURLE_OK);
    for (int i = 0; i < n; i++) {
        curl_off_t us = 0;
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &status[i]);
        curl_easy_getinfo(easy[i], CURLINFO_TOTAL_TIME_T, &us);
        ms[i] = (long)(us / 1000);
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
        curl_slist_free_all(hdr[i]);
    }
    curl_multi_cleanup(multi);
}

/* Below what the slot can do, one at a time: all served, none shed.  This
 * also gives reportd its measure of how long the slot is held. */
static void test_one_at_a_time(void)
{
    char url[128];
    snprintf(url, sizeof url, "%s/report?compute_ms=%d", svc.url, WORK_MS);
    for (int i = 0; i < 5; i++) {
        struct reply r = HTTP_GET(url, 0, NULL);
        CHECK_EQ_INT(r.rc, CURLE_OK);
        CHECK_EQ_INT(r.status, 200);
    }
    CHECK_EQ_INT(metric(&svc, "reportd_requests_shed_total"), 0);
}

/* Three times what the slot can serve within the budget, at once. */
static void test_burst_is_shed(void)
{
    long status[BURST], ms[BURST];
    burst(BURST, "burst", status, ms);
    int ok = 0, shed_at_door = 0, latest = 0;
    for (int i = 0; i < BURST; i++) {
        CHECK_MSG(status[i] == 200 || status[i] == 504, "request %d: status %ld", i, status[i]);
        latest = ms[i] > latest ? (int)ms[i] : latest;
        char id[32];
        snprintf(id, sizeof id, "burst-%d", i);
        char *line = line_of(id);
        if (status[i] == 200) {
            ok++;
            CHECK(strstr(line, " outcome=ok ") != NULL);
        } else {
            CHECK(strstr(line, " status=504 ") != NULL);
            CHECK(strstr(line, " outcome=deadline ") != NULL);
            /* Turned away at the door: no part was started, so none was
             * stopped, and the answer came halfway through the budget. */
            size_t len = strlen(line);
            if (len > 10 && strcmp(line + len - 10, "cancelled=") == 0) {
                shed_at_door++;
                CHECK(field_long(line, "ms") >= BUDGET_MS / 2 - 1);
                CHECK(ms[i] >= BUDGET_MS / 2 - 1);
            }
        }
        free(line);
    }
    fprintf(stderr, "   %d served, %d shed at the door, latest answer %d ms\n", ok, shed_at_door,
            latest);
    /* The slot serves at most BUDGET_MS / WORK_MS within the budget. */
    CHECK(ok >= 1);
    CHECK_LE_INT(ok, BUDGET_MS / WORK_MS + 1);
    /* Of the 40 or more that cannot be served, most are turned away at
     * the door rather than let in to wait on a thread. */
    CHECK(shed_at_door >= BURST - 2 * (BUDGET_MS / WORK_MS));
    CHECK(metric(&svc, "reportd_requests_shed_total") >= shed_at_door);
    CHECK_LE_INT(latest, BUDGET_MS + 250 * SLACK);
    CHECK(settled(&svc));
}

/* A request turned away waits for its budget without a thread, and a
 * client that leaves meanwhile ends it at once: the log line says the
 * client has gone (499), no part was started, and it came long before the
 * budget.  The slot is first made busy past its budget by a burst; the
 * request sent after the door has begun to turn requests away asks for
 * most of its budget in work, so that the few requests ahead of it are
 * enough to turn it away however far the queue has drained by the time it
 * arrives, and its client gives up after LEAVE_MS. */
#define LEAVE_MS 200
static void test_shed_client_leaves(void)
{
    long shed0 = metric(&svc, "reportd_requests_shed_total");
    CURLM *multi = curl_multi_init();
    CHECK_NOT_NULL(multi);
    CURL *easy[BURST / 2 + 1];
    struct curl_slist *hdr[BURST / 2 + 1];
    int n = 0, running = 0;
    for (; n <= BURST / 2; n++) {
        if (n == BURST / 2) { /* the one that leaves, once the door turns requests away */
            ctx_time_t until = ctx_now() + 10 * CTX_SECOND;
            while (metric(&svc, "reportd_requests_shed_total") == shed0 && ctx_now() < until) {
                CHECK_EQ_INT(curl_multi_perform(multi, &running), CURLM_OK);
                CHECK_EQ_INT(curl_multi_poll(multi, NULL, 0, 5, NULL), CURLM_OK);
            }
            CHECK(metric(&svc, "reportd_requests_shed_total") > shed0);
        }
        char id[48];
        snprintf(id, sizeof id, "leave-%d", n);
        bool leaves = n == BURST / 2;
        easy[n] = add_report(multi, id, leaves ? BUDGET_MS - 2 * WORK_MS : WORK_MS,
                             leaves ? (long)LEAVE_MS : 30000L, &hdr[n]);
    }
    do {
        CHECK_EQ_INT(curl_multi_perform(multi, &running), CURLM_OK);
        if (running > 0)
            CHECK_EQ_INT(curl_multi_poll(multi, NULL, 0, 100, NULL), CURLM_OK);
    } while (running > 0);
    for (int i = 0; i < n; i++) {
        curl_multi_remove_handle(multi, easy[i]);
        curl_easy_cleanup(easy[i]);
        curl_slist_free_all(hdr[i]);
    }
    curl_multi_cleanup(multi);
    char id[32];
    snprintf(id, sizeof id, "leave-%d", BURST / 2);
    char *line = line_of(id);
    fprintf(stderr, "   %s\n", line);
    CHECK(strstr(line, " status=499 ") != NULL);
    CHECK(strstr(line, " outcome=client_gone ") != NULL);
    size_t len = strlen(line);
    CHECK(len > 10 && strcmp(line + len - 10, "cancelled=") == 0);
    CHECK(field_long(line, "ms") < BUDGET_MS / 2 - 1);
    free(line);
    CHECK(settled(&svc));
}

/* Nothing is left counted against the slot: a burst it can serve within
 * the budget is served in full. */
static void test_after_the_burst(void)
{
    long status[5], ms[5];
    burst(5, "after", status, ms);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(status[i], 200);
    CHECK(settled(&svc));
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    char budget[16];
    snprintf(budget, sizeof budget, "%d", BUDGET_MS);
    SVC_START(&svc, "reportd", argv[1], "--budget-ms", budget, "--compute-slots", "1");
    RUN_TEST(test_one_at_a_time);
    RUN_TEST(test_burst_is_shed);
    RUN_TEST(test_after_the_burst);
    RUN_TEST(test_shed_client_leaves);
    RUN_TEST(test_after_the_burst);
    CHECK_EQ_INT(svc_stop(&svc), 0);
    curl_global_cleanup();
    return 0;
}
