/* SPDX-License-Identifier: MIT */

/*
 * libctx-mhd against a real libmicrohttpd server and libcurl clients: the
 * request context carries the caller's deadline, trace and baggage, ignores
 * malformed ones, ends when the client goes away (while the handler runs,
 * and while the connection is suspended in the one-thread mode), and ends
 * when the server's base context does.
 */
#include "check.h"

#include <ctx/curl.h>
#include <ctx/mhd.h>
#include <ctx/propagation.h>

/* What the handler saw, published under mu for the test thread. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static struct seen {
    int started, ended;
    bool has_deadline;
    ctx_duration_t deadline_left;
    char trace[33];
    char request_id[64];
    int err, cause;
    char msg[64];
    ctx_time_t ended_at;
} seen;

static ctx_t *base;
static ctx_cancel_t *base_cancel;

static void note_start(ctx_t *ctx)
{
    pthread_mutex_lock(&mu);
    ctx_time_t d;
    seen.has_deadline = ctx_deadline(ctx, &d);
    seen.deadline_left = seen.has_deadline ? d - ctx_now() : 0;
    if (!ctx_trace_id(ctx, seen.trace))
        seen.trace[0] = '\0';
    const char *id = ctx_baggage(ctx, "request-id");
    snprintf(seen.request_id, sizeof seen.request_id, "%s", id != NULL ? id : "");
    seen.started++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void note_end(void *arg)
{
    ctx_t *ctx = arg;
    pthread_mutex_lock(&mu);
    seen.ended_at = ctx_now();
    seen.err = ctx_err(ctx);
    const char *msg = NULL;
    seen.cause = ctx_cause(ctx, &msg);
    snprintf(seen.msg, sizeof seen.msg, "%s", msg != NULL ? msg : "");
    seen.ended++;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void await_count(int *counter, int want)
{
    pthread_mutex_lock(&mu);
    while (*counter < want)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
}

static enum MHD_Result answer(struct MHD_Connection *conn, unsigned status)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(2, (void *)"ok", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Thread per connection: the handler waits right there, up to 10 s, for its
 * request context to end. */
static enum MHD_Result blocking_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                        const char *method, const char *version, const char *upload,
                                        size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version, (void)upload, (void)upload_size;
    if (*state == NULL) {
        *state = conn;
        return MHD_YES;
    }
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_mhd_request(base, conn, &cancel);
    CHECK_NOT_NULL(ctx);
    note_start(ctx);
    int err = ctx_wait(ctx, 10 * CTX_SECOND);
    note_end(ctx);
    ctx_cancel(cancel); /* as <ctx/mhd.h> asks, before the socket can close */
    ctx_unref(ctx);
    if (err == CTX_CANCELED)
        return MHD_NO;
    return answer(conn, err == 0 ? 200 : 504);
}

/* One thread for all connections: the handler must not block, so it
 * suspends the connection and lets an AfterFunc resume it when the request
 * context ends.  The second call after the resume answers. */
struct suspended {
    struct MHD_Connection *conn;
    ctx_t *ctx;
    ctx_cancel_t *cancel;
};

static void resume(void *arg)
{
    struct suspended *s = arg;
    note_end(s->ctx);
    MHD_resume_connection(s->conn);
}

static enum MHD_Result suspending_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                          const char *method, const char *version,
                                          const char *upload, size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version, (void)upload, (void)upload_size;
    struct suspended *s = *state;
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        CHECK_NOT_NULL(s);
        *state = s;
        return MHD_YES;
    }
    if (s->ctx == NULL) {
        s->conn = conn;
        s->ctx = ctx_mhd_request(base, conn, &s->cancel);
        CHECK_NOT_NULL(s->ctx);
        note_start(s->ctx);
        MHD_suspend_connection(conn);
        CHECK_EQ_INT(ctx_after_func(s->ctx, resume, s, NULL), 0);
        return MHD_YES;
    }
    return answer(conn, 504);
}

/* Frees the per-request state when libmicrohttpd is done with the request;
 * the context is ended here at the latest, before the socket closes. */
static void completed(void *cls, struct MHD_Connection *conn, void **state,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls, (void)conn, (void)code;
    struct suspended *s = *state;
    if (cls != NULL && s != NULL) {
        if (s->cancel != NULL)
            ctx_cancel(s->cancel);
        ctx_unref(s->ctx);
        free(s);
    }
    *state = NULL;
}

static struct MHD_Daemon *start(bool suspending, unsigned *port)
{
    unsigned flags = suspending ? MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME
                                : MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    struct MHD_Daemon *d = MHD_start_daemon(flags | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                                            suspending ? suspending_handler : blocking_handler,
                                            NULL, MHD_OPTION_NOTIFY_COMPLETED, completed,
                                            suspending ? (void *)1 : NULL, MHD_OPTION_END);
    CHECK_NOT_NULL(d);
    *port = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port;
    return d;
}

/* A client whose own context a thread cancels once the handler started:
 * the connection closes and the server's request context must end. */
struct client {
    unsigned port;
    ctx_cancel_t *cancel;
    ctx_time_t cancelled_at;
    int want_started;
};

static void *cancel_when_started(void *arg)
{
    struct client *c = arg;
    await_count(&seen.started, c->want_started);
    ctx_sleep(ctx_background(), 20 * CTX_MILLISECOND);
    c->cancelled_at = ctx_now();
    ctx_cancel(c->cancel);
    return NULL;
}

static void client_goes_away(unsigned port)
{
    int started = seen.started, ended = seen.ended;
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    struct client c = { .port = port, .cancel = cancel, .want_started = started + 1 };
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, cancel_when_started, &c), 0);
    CURL *easy = curl_easy_init();
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", port);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_ABORTED_BY_CALLBACK);
    CHECK_EQ_INT(pthread_join(t, NULL), 0);
    await_count(&seen.ended, ended + 1);
    pthread_mutex_lock(&mu);
    long us = (long)((seen.ended_at - c.cancelled_at) / CTX_MICROSECOND);
    fprintf(stderr, "   the server's request context ended %ld us after the client left\n", us);
    CHECK_EQ_INT(seen.err, CTX_CANCELED);
    CHECK_EQ_INT(seen.cause, ECONNRESET);
    CHECK_STR(seen.msg, "client disconnected");
    pthread_mutex_unlock(&mu);
    CHECK_LE_INT(us, 250000); /* generous: the machine is loaded */
    curl_easy_cleanup(easy);
    ctx_unref(ctx);
}

/* A request with headers, under a client context with no deadline. */
static CURLcode get(unsigned port, const char *const *headers, long *status)
{
    CURL *easy = curl_easy_init();
    struct curl_slist *list = NULL;
    for (int i = 0; headers[i] != NULL; i++)
        list = curl_slist_append(list, headers[i]);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", port);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, list);
    CURLcode rc = ctx_curl_perform(ctx_background(), easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all(list);
    curl_easy_cleanup(easy);
    return rc;
}

static void test_propagated(unsigned port)
{
    long status = 0;
    const char *h[] = { "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "grpc-timeout: 200m", "baggage: request-id=r-42", NULL };
    ctx_time_t start = ctx_now();
    CHECK_EQ_INT(get(port, h, &status), CURLE_OK);
    ctx_duration_t took = ctx_now() - start;
    CHECK_EQ_INT(status, 504);
    CHECK(took >= 200 * CTX_MILLISECOND);
    CHECK_LE_INT(took, 2 * CTX_SECOND);
    pthread_mutex_lock(&mu);
    CHECK(seen.has_deadline);
    CHECK_LE_INT(seen.deadline_left, 200 * CTX_MILLISECOND);
    CHECK_STR(seen.trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    CHECK_STR(seen.request_id, "r-42");
    CHECK_EQ_INT(seen.err, CTX_DEADLINE_EXCEEDED);
    pthread_mutex_unlock(&mu);
}

static void test_malformed(unsigned port)
{
    const char *h[] = { "traceparent: 00-zz-nonsense", "grpc-timeout: -5x", "baggage: ;;;===,,,%%%",
                        NULL };
    ctx_cancel_t *cancel;
    /* The handler would wait 10 s: end it through the base context, which
     * shows that the base reaches a running request. */
    ctx_t *old_base = base;
    base = ctx_with_cancel(old_base, &cancel);
    pthread_t t;
    struct client c = { .cancel = cancel, .want_started = seen.started + 1 };
    CHECK_EQ_INT(pthread_create(&t, NULL, cancel_when_started, &c), 0);
    long status = 0;
    CURLcode rc = get(port, h, &status);
    CHECK_EQ_INT(pthread_join(t, NULL), 0);
    /* The handler closes without an answer on a cancel. */
    CHECK(rc != CURLE_OK);
    pthread_mutex_lock(&mu);
    CHECK(!seen.has_deadline);
    CHECK_EQ_INT(strlen(seen.trace), 32); /* a new trace */
    CHECK_STR(seen.request_id, "");
    CHECK_EQ_INT(seen.err, CTX_CANCELED);
    CHECK_EQ_INT(seen.cause, CTX_CANCELED);
    pthread_mutex_unlock(&mu);
    ctx_unref(base);
    base = old_base;
}

int main(void)
{
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    base = ctx_with_cancel(ctx_background(), &base_cancel);

    errno = 0;
    CHECK_NULL(ctx_mhd_request(NULL, NULL, NULL));
    CHECK_EQ_INT(errno, EINVAL);

    unsigned port;
    struct MHD_Daemon *d = start(false, &port);
    fprintf(stderr, "-- thread per connection: client goes away\n");
    client_goes_away(port);
    fprintf(stderr, "-- thread per connection: deadline, trace, baggage\n");
    test_propagated(port);
    fprintf(stderr, "-- thread per connection: malformed headers, base cancelled\n");
    test_malformed(port);
    MHD_stop_daemon(d);

    d = start(true, &port);
    fprintf(stderr, "-- one thread, suspended connection: client goes away\n");
    client_goes_away(port);
    fprintf(stderr, "-- one thread, suspended connection: deadline\n");
    test_propagated(port);
    MHD_stop_daemon(d);

    ctx_unref(base);
    curl_global_cleanup();
    return 0;
}
