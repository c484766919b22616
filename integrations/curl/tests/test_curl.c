/* SPDX-License-Identifier: MIT */

/*
 * libctx-curl against a real HTTP server (libmicrohttpd on loopback): a
 * cancel or a deadline ends a transfer while it connects, while it waits for
 * the response and while it receives the body; a context already done costs
 * no request; the easy handle works again after every one of those.
 */
#include "check.h"

#include <ctx/curl.h>
#include <ctx/propagation.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

/* The server: /fast answers at once, /hang holds the request until the
 * test releases it, /body sends a first chunk and then holds. */
static atomic_int requests; /* requests that reached the server */
static ctx_t *release_ctx;  /* cancelled at the end: releases held handlers */
static ctx_cancel_t *release;

static ssize_t held_body(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)cls;
    if (pos == 0 && max >= 5) {
        memcpy(buf, "first", 5);
        return 5;
    }
    ctx_wait(release_ctx, 30 * CTX_SECOND);
    return MHD_CONTENT_READER_END_OF_STREAM;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **state)
{
    (void)cls, (void)method, (void)version, (void)upload, (void)upload_size;
    if (*state == NULL) {
        *state = conn;
        return MHD_YES;
    }
    atomic_fetch_add_explicit(&requests, 1, memory_order_relaxed);
    struct MHD_Response *r;
    if (strcmp(url, "/hang") == 0) {
        ctx_wait(release_ctx, 30 * CTX_SECOND);
        r = MHD_create_response_from_buffer(4, (void *)"late", MHD_RESPMEM_PERSISTENT);
    } else if (strcmp(url, "/echo") == 0) {
        /* The propagation headers as received, one a line. */
        char text[1024];
        const char *names[] = { "grpc-timeout", "traceparent", "baggage", "x-request-id" };
        size_t len = 0;
        for (int i = 0; i < 4; i++) {
            const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, names[i]);
            len += (size_t)snprintf(text + len, sizeof text - len, "%s=%s\n", names[i],
                                    v != NULL ? v : "");
        }
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_COPY);
    } else if (strcmp(url, "/body") == 0) {
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64, held_body, NULL, NULL);
    } else {
        r = MHD_create_response_from_buffer(2, (void *)"ok", MHD_RESPMEM_PERSISTENT);
    }
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static struct MHD_Daemon *daemon_;
static char base_url[64];

static void start_server(void)
{
    release_ctx = ctx_with_cancel(ctx_background(), &release);
    CHECK_NOT_NULL(release_ctx);
    daemon_ = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                   MHD_USE_ERROR_LOG,
                               0, NULL, NULL, handler, NULL, MHD_OPTION_END);
    CHECK_NOT_NULL(daemon_);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
    CHECK_NOT_NULL(info);
    snprintf(base_url, sizeof base_url, "http://127.0.0.1:%u", (unsigned)info->port);
}

static void stop_server(void)
{
    ctx_cancel(release);
    MHD_stop_daemon(daemon_);
    ctx_unref(release_ctx);
}

/* Collects a response body. */
struct body {
    char buf[256];
    size_t len;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    size_t len = size * n;
    size_t room = sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, p, len < room ? len : room);
    b->len += len < room ? len : room;
    b->buf[b->len] = '\0';
    return len;
}

static CURL *easy_for(const char *path, struct body *b)
{
    CURL *easy = curl_easy_init();
    CHECK_NOT_NULL(easy);
    char url[128];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, b);
    return easy;
}

static void set_url(CURL *easy, const char *path)
{
    char url[128];
    snprintf(url, sizeof url, "%s%s", base_url, path);
    curl_easy_setopt(easy, CURLOPT_URL, url);
}

/* The handle still works: a fresh request succeeds with the right body. */
static void check_reusable(CURL *easy, struct body *b)
{
    set_url(easy, "/fast");
    b->len = 0;
    CHECK_EQ_INT(ctx_curl_perform(ctx_background(), easy), CURLE_OK);
    CHECK_STR(b->buf, "ok");
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    CHECK_EQ_INT(code, 200);
}

/* A thread that cancels once a condition holds and notes when. */
struct canceller {
    pthread_t thread;
    ctx_cancel_t *cancel;
    int want_requests;    /* cancel once this many requests reached the server */
    ctx_duration_t after; /* or after this long, when want_requests is 0 */
    _Atomic ctx_time_t at;
};

static void *cancel_main(void *arg)
{
    struct canceller *c = arg;
    if (c->want_requests > 0) {
        while (atomic_load_explicit(&requests, memory_order_relaxed) < c->want_requests)
            ctx_sleep(ctx_background(), CTX_MILLISECOND);
    } else {
        ctx_sleep(ctx_background(), c->after);
    }
    /* Give curl time to be parked in its poll, not merely about to enter it. */
    ctx_sleep(ctx_background(), 20 * CTX_MILLISECOND);
    atomic_store_explicit(&c->at, ctx_now(), memory_order_relaxed);
    ctx_cancel(c->cancel);
    return NULL;
}

/* Runs easy under a context a canceller ends; returns the cancel-to-return
 * latency in microseconds and checks the result code. */
static long cancelled_perform(CURL *easy, int want_requests, ctx_duration_t after)
{
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(ctx);
    struct canceller c = { .cancel = cancel, .want_requests = want_requests, .after = after };
    CHECK_EQ_INT(pthread_create(&c.thread, NULL, cancel_main, &c), 0);
    CURLcode rc = ctx_curl_perform(ctx, easy);
    ctx_time_t returned = ctx_now();
    CHECK_EQ_INT(pthread_join(c.thread, NULL), 0);
    CHECK_EQ_INT(rc, CURLE_ABORTED_BY_CALLBACK);
    CHECK_CANCELED(ctx);
    ctx_unref(ctx);
    return (long)((returned - atomic_load(&c.at)) / CTX_MICROSECOND);
}

static void test_plain(void)
{
    struct body b = { 0 };
    CURL *easy = easy_for("/fast", &b);
    CHECK_EQ_INT(ctx_curl_perform(ctx_background(), easy), CURLE_OK);
    CHECK_STR(b.buf, "ok");
    check_reusable(easy, &b);
    curl_easy_cleanup(easy);
}

static void test_cancel_waiting_for_response(void)
{
    struct body b = { 0 };
    CURL *easy = easy_for("/hang", &b);
    int before = atomic_load(&requests);
    long us = cancelled_perform(easy, before + 1, 0);
    fprintf(stderr, "   cancel while waiting for the response: returned %ld us after the cancel\n",
            us);
    /* The target is a millisecond; the bound is generous for a loaded machine. */
    CHECK_LE_INT(us, 250000);
    check_reusable(easy, &b);
    curl_easy_cleanup(easy);
}

static void test_cancel_during_body(void)
{
    struct body b = { 0 };
    CURL *easy = easy_for("/body", &b);
    int before = atomic_load(&requests);
    long us = cancelled_perform(easy, before + 1, 0);
    fprintf(stderr, "   cancel while receiving the body: returned %ld us after the cancel\n", us);
    CHECK_LE_INT(us, 250000);
    check_reusable(easy, &b);
    curl_easy_cleanup(easy);
}

static void test_deadline(void)
{
    struct body b = { 0 };
    CURL *easy = easy_for("/hang", &b);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
    CHECK_NOT_NULL(ctx);
    ctx_time_t start = ctx_now();
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OPERATION_TIMEDOUT);
    ctx_duration_t took = ctx_now() - start;
    fprintf(stderr, "   200 ms deadline: returned after %lld ms\n",
            (long long)(took / CTX_MILLISECOND));
    CHECK(took >= 200 * CTX_MILLISECOND);
    CHECK_LE_INT(took, 700 * CTX_MILLISECOND);
    CHECK_EQ_INT(ctx_err(ctx), CTX_DEADLINE_EXCEEDED);
    ctx_unref(ctx);
    check_reusable(easy, &b);
    curl_easy_cleanup(easy);
}

/* A listener whose accept queue is full drops further SYNs, so a connect to
 * it stays in progress: the connect phase, held as long as we like. */
static void test_cancel_during_connect(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(lfd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK_EQ_INT(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ_INT(listen(lfd, 0), 0);
    socklen_t alen = sizeof a;
    CHECK_EQ_INT(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);

    /* Fill the queue until a connect no longer completes within 300 ms. */
    int fillers[8];
    int nfill = 0;
    bool stuck = false;
    while (nfill < 8 && !stuck) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        CHECK(fd >= 0);
        fillers[nfill++] = fd;
        if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            continue;
        CHECK_EQ_INT(errno, EINPROGRESS);
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        stuck = poll(&p, 1, 300) == 0;
    }
    if (!stuck) {
        fprintf(stderr, "   (connect phase not testable here: SYNs are never dropped)\n");
    } else {
        struct body b = { 0 };
        CURL *easy = easy_for("/", &b);
        char url[64];
        snprintf(url, sizeof url, "http://127.0.0.1:%u/", (unsigned)ntohs(a.sin_port));
        curl_easy_setopt(easy, CURLOPT_URL, url);
        long us = cancelled_perform(easy, 0, 100 * CTX_MILLISECOND);
        fprintf(stderr, "   cancel while connecting: returned %ld us after the cancel\n", us);
        CHECK_LE_INT(us, 250000);
        double connect_time = -1;
        curl_easy_getinfo(easy, CURLINFO_CONNECT_TIME, &connect_time);
        CHECK(connect_time == 0.0); /* it never connected: this was the connect phase */
        check_reusable(easy, &b);
        curl_easy_cleanup(easy);
    }
    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    close(lfd);
}

static void test_already_done(void)
{
    struct body b = { 0 };
    CURL *easy = easy_for("/fast", &b);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    int before = atomic_load(&requests);
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_ABORTED_BY_CALLBACK);
    ctx_unref(ctx);
    ctx = ctx_with_timeout(ctx_background(), 0, NULL);
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OPERATION_TIMEDOUT);
    ctx_unref(ctx);
    CHECK_EQ_INT(atomic_load(&requests), before);
    check_reusable(easy, &b);
    curl_easy_cleanup(easy);
}

static const char *get_header(void *headers, const char *name)
{
    const char *const *kv = headers;
    for (; kv[0] != NULL; kv += 2)
        if (strcmp(kv[0], name) == 0)
            return kv[1];
    return NULL;
}

/* The headers reach the server and say what the context says. */
static void test_headers(void)
{
    const char *in_headers[] = { "traceparent",
                                 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", NULL,
                                 NULL };
    const ctx_carrier_t in = { .get = get_header, .headers = in_headers };
    ctx_t *extracted = ctx_extract(ctx_background(), &in, NULL);
    CHECK_NOT_NULL(extracted);
    ctx_t *timed = ctx_with_timeout(extracted, 5 * CTX_SECOND, NULL);
    ctx_t *ctx = ctx_with_baggage(timed, "request-id", "abc 1");
    CHECK_NOT_NULL(ctx);

    struct curl_slist *list = curl_slist_append(NULL, "X-Request-Id: abc");
    CHECK_PTR_EQ(ctx_curl_headers(ctx, list), list);
    int n = 0;
    for (struct curl_slist *p = list; p != NULL; p = p->next)
        n++;
    CHECK_EQ_INT(n, 4); /* X-Request-Id, grpc-timeout, traceparent, baggage */

    struct body b = { 0 };
    CURL *easy = easy_for("/echo", &b);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OK);
    fprintf(stderr, "%s", b.buf);
    CHECK(strstr(b.buf, "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-") != NULL);
    /* A fresh span id for the call, not the caller's. */
    CHECK(strstr(b.buf, "00f067aa0ba902b7") == NULL);
    CHECK(strstr(b.buf, "baggage=request-id=abc%201") != NULL);
    CHECK(strstr(b.buf, "x-request-id=abc\n") != NULL);
    /* 5 s less the little time spent: a value in milliseconds or seconds. */
    const char *gt = strstr(b.buf, "grpc-timeout=");
    CHECK_NOT_NULL(gt);
    long v = strtol(gt + strlen("grpc-timeout="), NULL, 10);
    CHECK(v > 0);
    curl_easy_cleanup(easy);
    curl_slist_free_all(list);

    /* No headers of the caller's: the new list alone. */
    list = ctx_curl_headers(ctx, NULL);
    CHECK_NOT_NULL(list);
    curl_slist_free_all(list);

    /* A line longer than the one made on the stack arrives whole. */
    char long_value[601];
    memset(long_value, 'v', sizeof long_value - 1);
    long_value[sizeof long_value - 1] = '\0';
    ctx_t *big = ctx_with_baggage(ctx_background(), "k", long_value);
    CHECK_NOT_NULL(big);
    list = ctx_curl_headers(big, NULL);
    CHECK_NOT_NULL(list);
    CHECK_NULL(list->next);
    CHECK(strncmp(list->data, "baggage: k=", 11) == 0);
    CHECK_EQ_INT(strlen(list->data), 11 + 600);
    CHECK_EQ_INT(strspn(list->data + 11, "v"), 600);
    curl_slist_free_all(list);
    ctx_unref(big);

    /* A context with nothing to carry adds nothing. */
    errno = EBADF;
    CHECK_NULL(ctx_curl_headers(ctx_background(), NULL));
    CHECK_EQ_INT(errno, 0);

    /* A done context: NULL with its error, the list unchanged. */
    ctx_cancel_t *cancel;
    ctx_t *gone = ctx_with_cancel(ctx, &cancel);
    ctx_cancel(cancel);
    list = curl_slist_append(NULL, "Accept: */*");
    errno = 0;
    CHECK_NULL(ctx_curl_headers(gone, list));
    CHECK_EQ_INT(errno, CTX_CANCELED);
    CHECK_NULL(list->next);
    curl_slist_free_all(list);
    ctx_unref(gone);

    ctx_unref(ctx);
    ctx_unref(timed);
    ctx_unref(extracted);
}

static void test_bad_arguments(void)
{
    CURL *easy = curl_easy_init();
    CHECK_EQ_INT(ctx_curl_perform(NULL, easy), CURLE_BAD_FUNCTION_ARGUMENT);
    CHECK_EQ_INT(ctx_curl_perform(ctx_background(), NULL), CURLE_BAD_FUNCTION_ARGUMENT);
    /* An easy handle that already belongs to a multi handle is refused. */
    CURLM *m = curl_multi_init();
    CHECK_EQ_INT(curl_multi_add_handle(m, easy), CURLM_OK);
    CHECK_EQ_INT(ctx_curl_perform(ctx_background(), easy), CURLE_BAD_FUNCTION_ARGUMENT);
    curl_multi_remove_handle(m, easy);
    curl_multi_cleanup(m);
    curl_easy_cleanup(easy);
    errno = 0;
    CHECK_NULL(ctx_curl_headers(NULL, NULL));
    CHECK_EQ_INT(errno, EINVAL);
}

/* Many threads at once, each with its own handle and its own cancel. */
static void *parallel_main(void *arg)
{
    (void)arg;
    struct body b = { 0 };
    CURL *easy = easy_for("/fast", &b);
    for (int i = 0; i < 20; i++) {
        ctx_t *ctx = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
        CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OK);
        ctx_unref(ctx);
    }
    curl_easy_cleanup(easy);
    return NULL;
}

static void test_parallel(void)
{
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(pthread_create(&t[i], NULL, parallel_main, NULL), 0);
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(pthread_join(t[i], NULL), 0);
}

int main(void)
{
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    start_server();
    RUN_TEST(test_plain);
    RUN_TEST(test_bad_arguments);
    RUN_TEST(test_headers);
    RUN_TEST(test_already_done);
    RUN_TEST(test_cancel_waiting_for_response);
    RUN_TEST(test_cancel_during_body);
    RUN_TEST(test_deadline);
    RUN_TEST(test_cancel_during_connect);
    RUN_TEST(test_parallel);
    stop_server();
    curl_global_cleanup();
    return 0;
}
