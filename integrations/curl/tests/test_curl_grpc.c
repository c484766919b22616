/* SPDX-License-Identifier: MIT */

/*
 * libctx-curl over HTTP/2 against a real gRPC server (Python grpcio over h2c,
 * integrations/curl/tests/grpc_server.py), making unary calls by hand: the
 * 5-byte message prefix, content-type application/grpc, te: trailers and the
 * grpc-timeout that ctx_curl_headers computes from the context's deadline.
 *
 *   - the server's deadline equals the caller's within 5 ms;
 *   - a cancel ends the call on the server (the connection closes, see
 *     curl.h): the server's context goes inactive within 20 ms while the
 *     calling thread lives on, and the next calls on the same thread (same
 *     multi handle, same connection cache) succeed;
 *   - a deadline does the same and maps to DEADLINE_EXCEEDED;
 *   - grpc-status and grpc-message from the trailers reach the caller;
 *   - a server killed mid-call fails the call at once, and the handle works
 *     with the server that replaces it.
 *
 * Skipped (exit 77) when /usr/bin/python3 has no grpc module, unless the
 * build requires every integration (CTX_REQUIRE_INTEGRATIONS, as in CI).
 */
#include "check.h"

#include "peer_proc.h"

#include <ctx/curl.h>

#include <ctype.h>

#ifndef GRPC_SERVER_PY
#error "GRPC_SERVER_PY must name grpc_server.py"
#endif

static struct peer_proc server;
static char base_url[64];

/* Starts grpc_server.py and notes its address. */
static void start_server(void)
{
    char *server_argv[] = { "/usr/bin/python3", GRPC_SERVER_PY, NULL };
    CHECK(peer_proc_start(&server, server_argv));
    char *line = peer_proc_wait_line(&server, "port ", 30 * CTX_SECOND);
    CHECK_MSG(line != NULL, "the gRPC server did not start");
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%s", line + 5);
    free(line);
}

/* gRPC status codes the test names. */
enum { GRPC_OK = 0, GRPC_CANCELLED = 1, GRPC_DEADLINE_EXCEEDED = 4, GRPC_NOT_FOUND = 5 };

/* One unary call's result: the response message, grpc-status (-1 when no
 * trailer said it) and grpc-message. */
struct call {
    unsigned char body[4096];
    size_t len;
    int status;
    char message[256];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct call *c = arg;
    size_t len = size * n;
    if (len > sizeof c->body - c->len)
        return 0; /* more than a test message: fail the transfer */
    memcpy(c->body + c->len, p, len);
    c->len += len;
    return len;
}

/* Headers and trailers alike come here; libcurl hands HTTP/2 trailers to the
 * header callback once the stream ends. */
static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct call *c = arg;
    size_t len = size * n;
    char line[300];
    size_t l = len < sizeof line - 1 ? len : sizeof line - 1;
    memcpy(line, p, l);
    line[l] = '\0';
    line[strcspn(line, "\r\n")] = '\0';
    if (strncasecmp(line, "grpc-status:", 12) == 0)
        c->status = atoi(line + 12);
    else if (strncasecmp(line, "grpc-message:", 13) == 0)
        snprintf(c->message, sizeof c->message, "%s", line + 13 + strspn(line + 13, " "));
    return len;
}

/* A unary call of test.Echo/METHOD with payload on easy under ctx, with the
 * propagation headers of hdr_ctx (normally ctx itself); returns curl's code
 * and fills c.  The easy handle is reused between calls, as a client would. */
static CURLcode grpc_call_with(ctx_t *ctx, ctx_t *hdr_ctx, CURL *easy, const char *method,
                               const char *payload, struct call *c)
{
    memset(c, 0, sizeof *c);
    c->status = -1;
    size_t plen = strlen(payload);
    unsigned char *frame = malloc(5 + plen);
    CHECK_NOT_NULL(frame);
    /* The 5-byte prefix: not compressed, then the length, big-endian. */
    frame[0] = 0;
    frame[1] = (unsigned char)(plen >> 24);
    frame[2] = (unsigned char)(plen >> 16);
    frame[3] = (unsigned char)(plen >> 8);
    frame[4] = (unsigned char)plen;
    memcpy(frame + 5, payload, plen);

    char url[128];
    snprintf(url, sizeof url, "%s/test.Echo/%s", base_url, method);
    struct curl_slist *h = curl_slist_append(NULL, "content-type: application/grpc");
    h = curl_slist_append(h, "te: trailers");
    struct curl_slist *with = ctx_curl_headers(hdr_ctx, h);
    if (with != NULL)
        h = with;
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, frame);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)(5 + plen));
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(easy, CURLOPT_VERBOSE, getenv("CTX_TEST_VERBOSE") != NULL ? 1L : 0L);
    CURLcode rc = ctx_curl_perform(ctx, easy);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, NULL);
    curl_slist_free_all(h);
    free(frame);
    /* Strip the response message's prefix. */
    if (rc == CURLE_OK && c->len >= 5) {
        size_t mlen = (size_t)c->body[1] << 24 | (size_t)c->body[2] << 16 |
                      (size_t)c->body[3] << 8 | c->body[4];
        CHECK_EQ_INT(mlen, c->len - 5);
        memmove(c->body, c->body + 5, mlen);
        c->len = mlen;
    }
    c->body[c->len < sizeof c->body ? c->len : sizeof c->body - 1] = '\0';
    return rc;
}

static CURLcode grpc_call(ctx_t *ctx, CURL *easy, const char *method, const char *payload,
                          struct call *c)
{
    return grpc_call_with(ctx, ctx, easy, method, payload, c);
}

/* The gRPC status a caller reports: the server's, or the context's end. */
static int grpc_status_of(CURLcode rc, const struct call *c)
{
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return GRPC_DEADLINE_EXCEEDED;
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        return GRPC_CANCELLED;
    return rc == CURLE_OK ? c->status : -1;
}

/* An Echo call succeeds on easy: the handle and the thread's connection
 * cache are fine. */
static void check_echo(CURL *easy, const char *text)
{
    struct call c;
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    CHECK_NOT_NULL(ctx);
    CURLcode rc = grpc_call(ctx, easy, "Echo", text, &c);
    CHECK_MSG(rc == CURLE_OK, "Echo after an ended call: %s", curl_easy_strerror(rc));
    CHECK_EQ_INT(c.status, GRPC_OK);
    CHECK_STR((char *)c.body, text);
    long version = 0;
    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version);
    CHECK_EQ_INT(version, CURL_HTTP_VERSION_2_0);
    ctx_unref(ctx);
}

static void test_echo(void)
{
    CURL *easy = curl_easy_init();
    check_echo(easy, "hello");
    check_echo(easy, "again");
    curl_easy_cleanup(easy);
}

/* The server's deadline is the caller's, within 5 ms.
 *
 * The header carries the time left when it was made, so the server's
 * deadline is later than the caller's by the time the header takes to be
 * read there (and earlier by at most the age of grpcio's cached clock).  On
 * a loaded machine that time includes the server waiting for a CPU, which no
 * client can help: a round whose server deadline is late by more than 5 ms
 * is tried again, up to three times.  A server deadline more than 5 ms early
 * would be an error of the encoding (grpc-timeout rounds up), and fails at
 * once. */
static void test_deadline_propagates(void)
{
    CURL *easy = curl_easy_init();
    for (int i = 0; i < 5; i++) {
        ctx_duration_t budget = (ctx_duration_t)(300 + 700 * i) * CTX_MILLISECOND;
        long long diff_us = 0;
        for (int attempt = 0; attempt < 3; attempt++) {
            ctx_t *ctx = ctx_with_timeout(ctx_background(), budget, NULL);
            CHECK_NOT_NULL(ctx);
            ctx_time_t mine;
            CHECK(ctx_deadline(ctx, &mine));
            struct call c;
            CHECK_EQ_INT(grpc_call(ctx, easy, "Deadline", "", &c), CURLE_OK);
            CHECK_EQ_INT(c.status, GRPC_OK);
            long long theirs = strtoll((char *)c.body, NULL, 10);
            diff_us = (theirs - (long long)mine) / 1000;
            fprintf(stderr, "   budget %lld ms: server's deadline %+lld us from the caller's\n",
                    (long long)(budget / CTX_MILLISECOND), diff_us);
            CHECK(diff_us >= -5000);
            ctx_unref(ctx);
            if (diff_us <= 5000)
                break;
        }
        CHECK_LE_INT(diff_us, 5000);
    }
    /* No deadline, no grpc-timeout: the server sees none. */
    struct call c;
    CHECK_EQ_INT(grpc_call(ctx_background(), easy, "Deadline", "", &c), CURLE_OK);
    CHECK_STR((char *)c.body, "none");
    curl_easy_cleanup(easy);
}

/* Parses "inactive ID T" and returns T. */
static ctx_time_t inactive_at(const char *id)
{
    char prefix[64];
    snprintf(prefix, sizeof prefix, "inactive %s ", id);
    char *line = peer_proc_wait_line(&server, prefix, 10 * CTX_SECOND);
    CHECK_MSG(line != NULL, "the server never saw call %s end", id);
    ctx_time_t t = (ctx_time_t)strtoll(line + strlen(prefix), NULL, 10);
    free(line);
    return t;
}

struct canceller {
    const char *id;
    ctx_cancel_t *cancel;
    ctx_time_t at;
};

/* Cancels once the server's handler of the call is running. */
static void *cancel_main(void *arg)
{
    struct canceller *k = arg;
    char prefix[64];
    snprintf(prefix, sizeof prefix, "started %s", k->id);
    char *line = peer_proc_wait_line(&server, prefix, 10 * CTX_SECOND);
    CHECK_NOT_NULL(line);
    free(line);
    k->at = ctx_now();
    ctx_cancel(k->cancel);
    return NULL;
}

/* Cancelled calls, each followed by calls that must succeed on the same
 * thread: the stream is reset at once and the connection stays good. */
static void test_cancel_then_reuse(void)
{
    CURL *easy = curl_easy_init();
    check_echo(easy, "before");
    for (int round = 0; round < 5; round++) {
        char id[32];
        snprintf(id, sizeof id, "cancel-%d", round);
        ctx_cancel_t *cancel;
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
        CHECK_NOT_NULL(ctx);
        struct canceller k = { .id = id, .cancel = cancel };
        pthread_t t;
        CHECK_EQ_INT(pthread_create(&t, NULL, cancel_main, &k), 0);
        struct call c;
        CURLcode rc = grpc_call(ctx, easy, "Hang", id, &c);
        ctx_time_t returned = ctx_now();
        CHECK_EQ_INT(pthread_join(t, NULL), 0);
        CHECK_EQ_INT(rc, CURLE_ABORTED_BY_CALLBACK);
        CHECK_EQ_INT(grpc_status_of(rc, &c), GRPC_CANCELLED);
        ctx_time_t seen = inactive_at(id);
        fprintf(stderr,
                "   round %d: returned %lld us after the cancel; the server saw it after %lld us\n",
                round, (long long)((returned - k.at) / CTX_MICROSECOND),
                (long long)((seen - k.at) / CTX_MICROSECOND));
        CHECK_LE_INT(returned - k.at, 100 * CTX_MILLISECOND);
        CHECK_LE_INT(seen - k.at, 20 * CTX_MILLISECOND);
        ctx_unref(ctx);
        check_echo(easy, "after");
        check_echo(easy, "and again");
    }
    curl_easy_cleanup(easy);
}

/* A deadline while the server works.  When the server knows the deadline
 * (grpc-timeout), either side may end the call first: the server with
 * grpc-status DEADLINE_EXCEEDED in its trailers, or the caller's context; both
 * map to DEADLINE_EXCEEDED.  When it does not, only the caller's context ends
 * the call, and the server must hear of it within 20 ms of the call's
 * return.  Either way the next call works. */
static void test_deadline_then_reuse(void)
{
    CURL *easy = curl_easy_init();
    for (int round = 0; round < 6; round++) {
        bool told = round % 2 == 0;
        char id[32];
        snprintf(id, sizeof id, "deadline-%d", round);
        ctx_t *ctx = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
        CHECK_NOT_NULL(ctx);
        ctx_time_t deadline;
        CHECK(ctx_deadline(ctx, &deadline));
        struct call c;
        CURLcode rc = grpc_call_with(ctx, told ? ctx : ctx_background(), easy, "Hang", id, &c);
        ctx_time_t returned = ctx_now();
        CHECK_EQ_INT(grpc_status_of(rc, &c), GRPC_DEADLINE_EXCEEDED);
        if (rc == CURLE_OK) {
            CHECK(told); /* only a server that knows the deadline ends the call */
            CHECK_LE_INT(deadline - returned, 5 * CTX_MILLISECOND);
        } else {
            CHECK_EQ_INT(rc, CURLE_OPERATION_TIMEDOUT);
            CHECK_EQ_INT(ctx_err(ctx), CTX_DEADLINE_EXCEEDED);
        }
        ctx_time_t seen = inactive_at(id);
        fprintf(
            stderr,
            "   round %d (%s): %s, returned %+lld us after the deadline; server's end %+lld us\n",
            round, told ? "grpc-timeout sent" : "no grpc-timeout",
            rc == CURLE_OK ? "server's status" : "caller's deadline",
            (long long)((returned - deadline) / CTX_MICROSECOND),
            (long long)((seen - deadline) / CTX_MICROSECOND));
        CHECK_LE_INT(returned - deadline, 100 * CTX_MILLISECOND);
        /* When the caller's deadline ended the call, the server hears of it
         * as of a cancel: within 20 ms of the call giving up. */
        if (rc != CURLE_OK)
            CHECK_LE_INT(seen - returned, 20 * CTX_MILLISECOND);
        ctx_unref(ctx);
        check_echo(easy, "after the deadline");
    }
    curl_easy_cleanup(easy);
}

/* The server's status and message arrive in the trailers. */
static void test_status(void)
{
    CURL *easy = curl_easy_init();
    struct call c;
    CHECK_EQ_INT(grpc_call(ctx_background(), easy, "Status", "5 no such report", &c), CURLE_OK);
    CHECK_EQ_INT(c.status, GRPC_NOT_FOUND);
    CHECK_STR(c.message, "no such report");
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    CHECK_EQ_INT(code, 200); /* gRPC errors ride on HTTP 200 */
    /* A server that reports DEADLINE_EXCEEDED itself: the transfer is fine,
     * the status says it. */
    CHECK_EQ_INT(grpc_call(ctx_background(), easy, "Status", "4 too slow", &c), CURLE_OK);
    CHECK_EQ_INT(grpc_status_of(CURLE_OK, &c), GRPC_DEADLINE_EXCEEDED);
    CHECK_STR(c.message, "too slow");
    check_echo(easy, "after a status");
    curl_easy_cleanup(easy);
}

/* Each of several threads cancels calls and goes on calling. */
static void *thread_main(void *arg)
{
    int n = (int)(intptr_t)arg;
    CURL *easy = curl_easy_init();
    for (int i = 0; i < 3; i++) {
        ctx_t *ctx = ctx_with_timeout(ctx_background(), 50 * CTX_MILLISECOND, NULL);
        char id[32];
        snprintf(id, sizeof id, "thread-%d-%d", n, i);
        struct call c;
        CURLcode rc = grpc_call(ctx, easy, "Hang", id, &c);
        CHECK_EQ_INT(grpc_status_of(rc, &c), GRPC_DEADLINE_EXCEEDED);
        ctx_unref(ctx);
        check_echo(easy, id);
    }
    curl_easy_cleanup(easy);
    return NULL;
}

static void test_threads(void)
{
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(pthread_create(&t[i], NULL, thread_main, (void *)(intptr_t)i), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(pthread_join(t[i], NULL), 0);
}

/* The server dies while it works on a call: the call fails at once with
 * curl's error, long before its deadline, and once a new server runs, the
 * next call on the same thread and handle succeeds. */
static void *kill_main(void *arg)
{
    (void)arg;
    char *line = peer_proc_wait_line(&server, "started doomed", 10 * CTX_SECOND);
    CHECK_NOT_NULL(line);
    free(line);
    peer_proc_kill(&server);
    return NULL;
}

static void test_server_killed(void)
{
    CURL *easy = curl_easy_init();
    check_echo(easy, "before");
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, kill_main, NULL), 0);
    struct call c;
    ctx_time_t start = ctx_now();
    CURLcode rc = grpc_call(ctx, easy, "Hang", "doomed", &c);
    ctx_duration_t took = ctx_now() - start;
    CHECK_EQ_INT(pthread_join(t, NULL), 0);
    fprintf(stderr, "   server killed: %s after %lld ms\n", curl_easy_strerror(rc),
            (long long)(took / CTX_MILLISECOND));
    CHECK(rc != CURLE_OK && rc != CURLE_OPERATION_TIMEDOUT);
    CHECK_EQ_INT(ctx_err(ctx), 0);
    ctx_unref(ctx);
    peer_proc_stop(&server);
    start_server();
    check_echo(easy, "after a new server");
    curl_easy_cleanup(easy);
}

/* Runs examples/grpc_call against the server and returns its output. */
static char *run_example(const char *exe, const char *method, const char *payload,
                         const char *timeout_ms, int *status)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' '%s/test.Echo/%s' '%s' %s", exe, base_url, method, payload,
             timeout_ms);
    FILE *f = popen(cmd, "r");
    CHECK_NOT_NULL(f);
    static char out[1024];
    size_t len = fread(out, 1, sizeof out - 1, f);
    out[len] = '\0';
    *status = pclose(f);
    fprintf(stderr, "   %s\n%s", cmd, out);
    return out;
}

/* The example of the docs makes the calls it promises. */
static void test_example(const char *exe)
{
    int status;
    char *out = run_example(exe, "Echo", "hello", "1000", &status);
    CHECK_EQ_INT(WEXITSTATUS(status), 0);
    CHECK_STR(out, "status 0 ()\nresponse: hello\n");
    out = run_example(exe, "Status", "5 not here", "1000", &status);
    CHECK_EQ_INT(WEXITSTATUS(status), 1);
    CHECK_STR(out, "status 5 (not here)\n");
    /* Either side may end the call at the deadline; both say 4. */
    out = run_example(exe, "Hang", "example", "200", &status);
    CHECK_EQ_INT(WEXITSTATUS(status), 1);
    CHECK_MSG(strncmp(out, "status 4 (", 10) == 0, "%s", out);
    char *line = peer_proc_wait_line(&server, "inactive example ", 10 * CTX_SECOND);
    CHECK_NOT_NULL(line);
    free(line);
}

/* With "--example PATH", checks examples/grpc_call instead of the library. */
int main(int argc, char **argv)
{
    if (system("/usr/bin/python3 -c 'import grpc' 2>/dev/null") != 0) {
        if (CTX_CURL_TEST_REQUIRE)
            CHECK_MSG(false, "/usr/bin/python3 lacks grpc (Debian: python3-grpcio)");
        SKIP("/usr/bin/python3 lacks grpc (Debian: python3-grpcio)");
    }
    start_server();
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);

    if (argc == 3 && strcmp(argv[1], "--example") == 0) {
        test_example(argv[2]);
        curl_global_cleanup();
        peer_proc_stop(&server);
        return 0;
    }
    RUN_TEST(test_echo);
    RUN_TEST(test_deadline_propagates);
    RUN_TEST(test_status);
    RUN_TEST(test_cancel_then_reuse);
    RUN_TEST(test_deadline_then_reuse);
    RUN_TEST(test_threads);
    RUN_TEST(test_server_killed);

    curl_global_cleanup();
    peer_proc_stop(&server);
    return 0;
}
