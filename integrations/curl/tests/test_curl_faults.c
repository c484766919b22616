/* SPDX-License-Identifier: MIT */

/*
 * libctx-curl under network faults, over HTTP/1.1 and HTTP/2 (h2c with prior
 * knowledge), against a real Go net/http server (tests/httppeer) behind the
 * fault proxy (tests/faultproxy).
 *
 * Faults: the network goes dark before the call, while the request body is
 * sent, while the server works, while the response streams, and at the
 * deadline's instant, each time healing afterwards; the peer resets; the
 * peer half-closes; the peer answers one byte per second; the server is
 * killed mid-call.  (Name resolution that never answers: test_curl_dns.)
 *
 * For every call: it returns within 100 ms of its context's end (or earlier,
 * with curl's error, when the fault itself ends the transfer).  After it,
 * once the network heals, the same easy handle on the same thread (so the
 * same multi handle and connection cache) performs a request correctly, and
 * the connection the fault broke is gone: right after the call, the client
 * holds no established connection to the peer, and after the check only the
 * one that the check's request left for reuse.
 *
 * Skipped (exit 77) when Go could not build the peer, unless the build
 * requires every integration (CTX_REQUIRE_INTEGRATIONS, as in CI).
 */
#include "check.h"

#include "faultproxy/faulttest.h"
#include "peer_proc.h"

#include <ctx/curl.h>

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#ifndef HTTPPEER_EXE
#error "HTTPPEER_EXE must name the built Go peer"
#endif

enum proto { H1, H2C };
static const char *const proto_name[] = { "HTTP/1.1", "h2c" };

static struct peer_proc peer;
static faultproxy_t fp;
static int rounds;

static void start_peer_and_proxy(void)
{
    char *argv[] = { HTTPPEER_EXE, NULL };
    CHECK(peer_proc_start(&peer, argv));
    char *line = peer_proc_wait_line(&peer, "port ", 30 * CTX_SECOND);
    CHECK_MSG(line != NULL, "the Go peer did not start");
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%s", line + 5);
    free(line);
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
}

static void stop_peer_and_proxy(void)
{
    faultproxy_stop(&fp);
    peer_proc_stop(&peer);
}

static void proxy(const char *cmd)
{
    faulttest_proxy(&fp, cmd);
}

/* What a transfer received, and a fault the callbacks set off on their own
 * thread at a chosen point (so that the point is exact, not a guess). */
struct xfer {
    char head[64]; /* the start of the body */
    size_t received;
    size_t sent;
    size_t dark_after_received; /* 0: never */
    size_t dark_after_sent;     /* 0: never */
    bool darkened;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    size_t len = size * n;
    if (x->received < sizeof x->head - 1) {
        size_t room = sizeof x->head - 1 - x->received;
        memcpy(x->head + x->received, p, len < room ? len : room);
    }
    x->received += len;
    if (x->dark_after_received > 0 && !x->darkened && x->received >= x->dark_after_received) {
        proxy("dark");
        x->darkened = true;
    }
    return len;
}

static size_t on_read(char *buf, size_t size, size_t n, void *arg)
{
    struct xfer *x = arg;
    if (x->dark_after_sent > 0 && !x->darkened && x->sent >= x->dark_after_sent) {
        proxy("dark");
        x->darkened = true;
    }
    size_t len = size * n;
    memset(buf, 'u', len);
    x->sent += len;
    return len;
}

static CURL *new_easy(enum proto p)
{
    CURL *easy = curl_easy_init();
    CHECK_NOT_NULL(easy);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                     p == H2C ? (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE
                              : (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data);
    return easy;
}

/* Sets easy up for a GET of path (or, with upload, a POST of a large body)
 * through the proxy. */
static void prepare(CURL *easy, const char *path, struct xfer *x, bool upload)
{
    memset(x->head, 0, sizeof x->head);
    x->received = x->sent = 0;
    x->darkened = false;
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", fp.port, path);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
    if (upload) {
        curl_easy_setopt(easy, CURLOPT_POST, 1L);
        curl_easy_setopt(easy, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(easy, CURLOPT_READDATA, x);
        /* Far more than every buffer on the way can hold. */
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)256 << 20);
    } else {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    }
}

/* Every return's distance from the context's end, per fault and protocol,
 * for the summary (and the benchmark's table). */
#define NFAULTS    9
#define MAX_ROUNDS 200
static const char *fault_name[NFAULTS];
static long samples_us[NFAULTS][2][MAX_ROUNDS];
static int nsamples[NFAULTS][2];

static void note(int fault, const char *name, enum proto p, long us)
{
    fault_name[fault] = name;
    CHECK(nsamples[fault][p] < MAX_ROUNDS);
    samples_us[fault][p][nsamples[fault][p]++] = us;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

/* The q-th quantile (nearest rank) of fault's samples over protocol p. */
static long quantile(int fault, enum proto p, double q)
{
    int n = nsamples[fault][p];
    qsort(samples_us[fault][p], (size_t)n, sizeof(long), cmp_long);
    int k = (int)(q * n + 0.999999) - 1;
    return samples_us[fault][p][k < 0 ? 0 : k >= n ? n - 1 : k];
}

/* Prints p50, p99 and max per fault and protocol, as a Markdown table. */
static void print_table(FILE *f)
{
    fprintf(f, "| fault | protocol | p50 | p99 | max |\n|---|---|---:|---:|---:|\n");
    for (int i = 0; i < NFAULTS; i++) {
        for (int p = H1; p <= H2C; p++) {
            if (nsamples[i][p] == 0)
                continue;
            fprintf(f, "| %s | %s | %.2f ms | %.2f ms | %.2f ms |\n", fault_name[i], proto_name[p],
                    quantile(i, (enum proto)p, 0.5) / 1000.0,
                    quantile(i, (enum proto)p, 0.99) / 1000.0,
                    quantile(i, (enum proto)p, 1.0) / 1000.0);
        }
    }
}

/* The TCP connections of this process to the proxy that are still
 * established, found from the client's side (its descriptors), so that what
 * the proxy does with a connection does not enter the count.  A connection
 * that libcurl shut down but whose descriptor it still holds does not count:
 * it is no longer established. */
static int client_connections(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK_NOT_NULL(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == dirfd(d))
            continue;
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
            continue;
        struct sockaddr_in peer_addr;
        socklen_t len = sizeof peer_addr;
        if (getpeername(fd, (struct sockaddr *)&peer_addr, &len) != 0 ||
            peer_addr.sin_family != AF_INET || ntohs(peer_addr.sin_port) != fp.port)
            continue;
        struct tcp_info ti;
        len = sizeof ti;
        if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 &&
            ti.tcpi_state == TCP_ESTABLISHED)
            n++;
    }
    closedir(d);
    return n;
}

/* After a call that a fault or its context ended with an error: libcurl
 * holds no connection to the peer any more. */
static void check_dropped(CURLcode rc)
{
    if (rc != CURLE_OK)
        CHECK_EQ_INT(client_connections(), 0);
}

/* After a fault: the network heals, the same handle fetches /fast, and no
 * connection but the one that request left for reuse stays open. */
static void check_after(CURL *easy, enum proto p, const char *expect_inactive)
{
    proxy("pass");
    if (expect_inactive != NULL) {
        /* The server learns that the call is over once the network heals. */
        char prefix[64];
        snprintf(prefix, sizeof prefix, "inactive %s", expect_inactive);
        char *line = peer_proc_wait_line(&peer, prefix, 10 * CTX_SECOND);
        CHECK_MSG(line != NULL, "the server never saw %s end", expect_inactive);
        free(line);
    }
    struct xfer x = { 0 };
    prepare(easy, "/fast", &x, false);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    CURLcode rc = ctx_curl_perform(ctx, easy);
    CHECK_MSG(rc == CURLE_OK, "%s: the call after the fault: %s", proto_name[p],
              curl_easy_strerror(rc));
    CHECK_STR(x.head, "ok");
    long version = 0;
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
    CHECK_EQ_INT(version, p == H2C ? CURL_HTTP_VERSION_2_0 : CURL_HTTP_VERSION_1_1);
    ctx_unref(ctx);
    /* HTTP/1.1 keeps its connection; h2c on libcurl 7.x does not (see curl.h). */
    bool h2c_kept = curl_version_info(CURLVERSION_NOW)->version_num >= 0x080000;
    CHECK_EQ_INT(client_connections(), p == H1 || h2c_kept ? 1 : 0);
}

/* A thread that applies a fault each time the server reports the request:
 * libcurl retries a request whose reused connection died before any answer
 * (as Go's transport does), so the retry must meet the fault too. */
struct trigger {
    pthread_t thread;
    char line[64];
    const char *cmd; /* a proxy command, or NULL to kill the server */
    atomic_bool stop;
    int fired;
    _Atomic ctx_time_t at; /* when the last fault took effect */
};

static void *trigger_main(void *arg)
{
    struct trigger *t = arg;
    while (!atomic_load(&t->stop)) {
        char *line = peer_proc_wait_line(&peer, t->line, 20 * CTX_MILLISECOND);
        if (line == NULL)
            continue;
        free(line);
        t->fired++;
        if (t->cmd != NULL)
            proxy(t->cmd);
        else
            peer_proc_kill(&peer);
        atomic_store(&t->at, ctx_now());
    }
    return NULL;
}

static void trigger_on(struct trigger *t, const char *event, const char *id, const char *cmd)
{
    snprintf(t->line, sizeof t->line, "%s %s", event, id);
    t->cmd = cmd;
    t->fired = 0;
    atomic_init(&t->stop, false);
    atomic_init(&t->at, 0);
    CHECK_EQ_INT(pthread_create(&t->thread, NULL, trigger_main, t), 0);
}

/* Stops the trigger once the call returned; the fault must have happened. */
static void trigger_join(struct trigger *t)
{
    atomic_store(&t->stop, true);
    CHECK_EQ_INT(pthread_join(t->thread, NULL), 0);
    CHECK_MSG(t->fired > 0, "the server never said \"%s\"", t->line);
}

static ctx_time_t last_return; /* when the last bounded_perform returned */

/* The benchmark (--rounds) measures and reports; the test checks the bound:
 * a call returns within 100 ms of its context's end. */
static bool measuring;
static int late_returns;

static void check_bound(long us, CURLcode rc)
{
    if (us <= 100000)
        return;
    CHECK_MSG(measuring, "returned %ld us after the deadline (%s)", us, curl_easy_strerror(rc));
    late_returns++;
}

/* Performs easy under a deadline budget away and checks the bound: the
 * return is within 100 ms of the deadline, or before it with an error of the
 * transfer's own when the fault ends it (early_error).  Returns curl's code
 * and the return's distance from the deadline in *us. */
static CURLcode bounded_perform(CURL *easy, ctx_duration_t budget, bool early_error, long *us)
{
    ctx_t *ctx = ctx_with_timeout(ctx_background(), budget, NULL);
    CHECK_NOT_NULL(ctx);
    ctx_time_t deadline;
    CHECK(ctx_deadline(ctx, &deadline));
    CURLcode rc = ctx_curl_perform(ctx, easy);
    ctx_time_t returned = ctx_now();
    last_return = returned;
    *us = (long)((returned - deadline) / CTX_MICROSECOND);
    check_bound(*us, rc);
    if (early_error) {
        CHECK_MSG(rc != CURLE_OK && rc != CURLE_OPERATION_TIMEDOUT,
                  "the fault should end the transfer with an error: %s", curl_easy_strerror(rc));
        CHECK(returned < deadline);
        CHECK_EQ_INT(ctx_err(ctx), 0);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        CHECK_EQ_INT(ctx_err(ctx), CTX_DEADLINE_EXCEEDED);
    }
    check_dropped(rc);
    ctx_unref(ctx);
    return rc;
}

/* Points easy at route?id=TAG-PROTO-ROUND (the id the peer's event lines
 * carry, copied into id) with prepare. */
static void prepare_tagged(CURL *easy, const char *route, const char *tag, enum proto p, int round,
                           struct xfer *x, bool upload, char id[32])
{
    char path[64];
    snprintf(id, 32, "%s-%d-%d", tag, p, round);
    snprintf(path, sizeof path, "%s?id=%s", route, id);
    prepare(easy, path, x, upload);
}

/* Performs easy on a fault that holds the transfer until its deadline,
 * budget away: it must end CURLE_OPERATION_TIMEDOUT within the bound.
 * Returns the return's distance from the deadline in us. */
static long perform_to_deadline(CURL *easy, ctx_duration_t budget)
{
    long us;
    CHECK_EQ_INT(bounded_perform(easy, budget, false, &us), CURLE_OPERATION_TIMEDOUT);
    return us;
}

static void fault_dark_before(CURL *easy, enum proto p, int round)
{
    (void)round;
    struct xfer x = { 0 };
    prepare(easy, "/fast", &x, false);
    proxy("dark");
    long us = perform_to_deadline(easy, 300 * CTX_MILLISECOND);
    CHECK_EQ_INT(x.received, 0);
    note(0, "dark before the call", p, us);
    check_after(easy, p, NULL);
}

static void fault_dark_sending(CURL *easy, enum proto p, int round)
{
    char id[32];
    struct xfer x = { .dark_after_sent = 256 << 10 };
    prepare_tagged(easy, "/upload", "send", p, round, &x, true, id);
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    long us = perform_to_deadline(easy, 300 * CTX_MILLISECOND);
    CHECK(x.darkened);
    CHECK(x.sent < (size_t)256 << 20); /* it was still sending */
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);
    note(1, "dark while the request is sent", p, us);
    check_after(easy, p, id);
}

static void fault_dark_working(CURL *easy, enum proto p, int round)
{
    char id[32];
    struct xfer x = { 0 };
    prepare_tagged(easy, "/hang", "work", p, round, &x, false, id);
    struct trigger t;
    trigger_on(&t, "started", id, "dark");
    long us = perform_to_deadline(easy, 300 * CTX_MILLISECOND);
    trigger_join(&t);
    note(2, "dark while the server works", p, us);
    check_after(easy, p, id);
}

static void fault_dark_streaming(CURL *easy, enum proto p, int round)
{
    char id[32];
    struct xfer x = { .dark_after_received = 8 << 10 };
    prepare_tagged(easy, "/stream", "stream", p, round, &x, false, id);
    long us = perform_to_deadline(easy, 300 * CTX_MILLISECOND);
    CHECK(x.darkened);
    CHECK(strncmp(x.head, "first", 5) == 0);
    note(3, "dark while the response streams", p, us);
    check_after(easy, p, id);
}

/* The server answers right at the deadline and the network goes dark the
 * moment the context ends: either result is right, the bound holds. */
struct at_deadline {
    pthread_t thread;
    ctx_t *ctx;
};

static void *dark_at_end(void *arg)
{
    struct at_deadline *a = arg;
    ctx_wait(a->ctx, 10 * CTX_SECOND);
    proxy("dark");
    return NULL;
}

static void fault_dark_at_deadline(CURL *easy, enum proto p, int round)
{
    (void)round;
    struct xfer x = { 0 };
    prepare(easy, "/after?ms=300", &x, false);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 300 * CTX_MILLISECOND, NULL);
    ctx_time_t deadline;
    CHECK(ctx_deadline(ctx, &deadline));
    struct at_deadline a = { .ctx = ctx };
    CHECK_EQ_INT(pthread_create(&a.thread, NULL, dark_at_end, &a), 0);
    CURLcode rc = ctx_curl_perform(ctx, easy);
    long us = (long)((ctx_now() - deadline) / CTX_MICROSECOND);
    CHECK_EQ_INT(pthread_join(a.thread, NULL), 0);
    check_bound(us, rc);
    CHECK_MSG(rc == CURLE_OK || rc == CURLE_OPERATION_TIMEDOUT, "%s", curl_easy_strerror(rc));
    if (rc == CURLE_OK)
        CHECK_STR(x.head, "ok");
    check_dropped(rc);
    ctx_unref(ctx);
    note(4, "dark at the deadline's instant", p, us);
    check_after(easy, p, NULL);
}

/* Faults that end the transfer themselves: it fails at once, long before
 * its 5 s deadline. */
static void fault_ending(CURL *easy, enum proto p, int round, int slot, const char *name,
                         const char *cmd)
{
    char id[32];
    struct xfer x = { 0 };
    prepare_tagged(easy, "/hang", cmd != NULL ? cmd : "kill", p, round, &x, false, id);
    struct trigger t;
    trigger_on(&t, "started", id, cmd);
    long us;
    CURLcode rc = bounded_perform(easy, 5 * CTX_SECOND, true, &us);
    trigger_join(&t);
    /* For these the figure is the time from the fault to the return. */
    us = (long)((last_return - atomic_load(&t.at)) / CTX_MICROSECOND);
    fprintf(stderr, "   %s, %s: %s, %ld us after the fault\n", name, proto_name[p],
            curl_easy_strerror(rc), us);
    note(slot, name, p, us);
}

static void fault_reset(CURL *easy, enum proto p, int round)
{
    fault_ending(easy, p, round, 5, "the peer resets", "reset");
    check_after(easy, p, NULL);
}

static void fault_halfclose(CURL *easy, enum proto p, int round)
{
    fault_ending(easy, p, round, 6, "the peer half-closes", "halfclose");
    check_after(easy, p, NULL);
}

static void fault_trickle(CURL *easy, enum proto p, int round)
{
    (void)round;
    struct xfer x = { 0 };
    prepare(easy, "/fast", &x, false);
    proxy("trickle 1000");
    long us = perform_to_deadline(easy, 500 * CTX_MILLISECOND);
    note(7, "one byte per second", p, us);
    check_after(easy, p, NULL);
}

/* The server dies mid-call: the call fails at once; a new server (and a new
 * proxy in front of it) serves the same handle afterwards. */
static void fault_killed(CURL *easy, enum proto p, int round)
{
    fault_ending(easy, p, round, 8, "the server is killed", NULL);
    stop_peer_and_proxy();
    start_peer_and_proxy();
    check_after(easy, p, NULL);
}

/* With "--rounds N [--table FILE]" (the benchmark bench-curl-faults) it
 * runs N rounds of each fault, counts late returns instead of failing on
 * them, and writes the table to FILE as well. */
int main(int argc, char **argv)
{
    const char *table = NULL;
    int want_rounds = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--rounds") == 0)
            want_rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--table") == 0)
            table = argv[i + 1];
    }
    if (access(HTTPPEER_EXE, X_OK) != 0) {
        if (CTX_CURL_TEST_REQUIRE)
            CHECK_MSG(false, "the Go peer %s was not built", HTTPPEER_EXE);
        SKIP("the Go peer was not built (Debian: golang-go, golang-golang-x-net-dev)");
    }
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    measuring = want_rounds > 0;
    rounds = want_rounds > 0 ? want_rounds : (int)check_scale(3);
    if (rounds < 1)
        rounds = 1;
    CHECK(rounds <= MAX_ROUNDS);
    start_peer_and_proxy();

    void (*const faults[])(CURL *, enum proto, int) = {
        fault_dark_before,    fault_dark_sending,     fault_dark_working,
        fault_dark_streaming, fault_dark_at_deadline, fault_reset,
        fault_halfclose,      fault_trickle,          fault_killed,
    };
    for (int p = H1; p <= H2C; p++) {
        /* One handle per protocol, on this one thread: every fault below
         * hits the same easy handle and the same multi handle. */
        CURL *easy = new_easy((enum proto)p);
        fprintf(stderr, "-- %s\n", proto_name[p]);
        check_after(easy, (enum proto)p, NULL);
        for (size_t f = 0; f < sizeof faults / sizeof faults[0]; f++)
            for (int r = 0; r < rounds; r++)
                faults[f](easy, (enum proto)p, r);
        curl_easy_cleanup(easy);
    }

    fprintf(stderr,
            "return after the context's end (reset, half-close, kill: after the fault), %d "
            "rounds:\n",
            rounds);
    print_table(stderr);
    if (table != NULL) {
        FILE *f = fopen(table, "w");
        CHECK_NOT_NULL(f);
        fprintf(f,
                "libctx-curl under faults, %d rounds each, libcurl %s: the return after the "
                "context's end (reset, half-close, kill: after the fault)\n\n",
                rounds, curl_version_info(CURLVERSION_NOW)->version);
        print_table(f);
        fprintf(f, "\n%d of the returns came more than 100 ms after the context's end.\n",
                late_returns);
        fclose(f);
    }

    stop_peer_and_proxy();
    curl_global_cleanup();
    return 0;
}
