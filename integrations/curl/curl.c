/* SPDX-License-Identifier: MIT */

/*
 * ctx_curl_perform: a libcurl transfer that ends when its context ends.
 *
 * The transfer runs on a multi handle so that this thread can wait in
 * curl_multi_poll() on the transfer's sockets and still hear of the
 * context's end: a function registered with ctx_after_func calls
 * curl_multi_wakeup(), the poll returns, and the easy handle is taken out of
 * the multi handle, which abandons the transfer in whatever phase it was.
 * The registration costs no system call, where a done fd would cost an
 * eventfd per context (one per request, when each request has its own) and
 * a third descriptor in every poll.  No callback of the user's is replaced,
 * so the easy handle keeps all of its options.
 */
#include <ctx/curl.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>

/* Each thread keeps one multi handle between calls: making one costs little,
 * but its connection cache is what lets consecutive calls from a thread reuse
 * keep-alive connections instead of opening a new one per request. */
struct thread_multi {
    CURLM *multi;
    bool wakeable; /* curl_multi_wakeup works on it (see wakeable) */
    bool busy;     /* a callback of a running transfer calls ctx_curl_perform again */
};

static pthread_key_t multi_key;
static pthread_once_t multi_once = PTHREAD_ONCE_INIT;
static int multi_key_err;

static void free_thread_multi(void *p)
{
    struct thread_multi *tm = p;
    curl_multi_cleanup(tm->multi);
    free(tm);
}

static void make_multi_key(void)
{
    multi_key_err = pthread_key_create(&multi_key, free_thread_multi);
}

/* Whether curl_multi_wakeup can break multi's poll.  libcurl makes the
 * socket pair it needs along with the multi handle and goes on without it
 * when that fails (no descriptors left); the transfer then watches the
 * context's done fd instead.  The test wakes the handle once: its next
 * poll returns at once, a spurious return that run() takes in its stride. */
static bool wakeable(CURLM *multi)
{
    return curl_multi_wakeup(multi) == CURLM_OK;
}

/* The calling thread's multi handle, or NULL when it is in use by a transfer
 * further up this thread's stack or cannot be made; the caller then makes a
 * multi handle of its own for this one call. */
static struct thread_multi *thread_multi(void)
{
    if (pthread_once(&multi_once, make_multi_key) != 0 || multi_key_err != 0)
        return NULL;
    struct thread_multi *tm = pthread_getspecific(multi_key);
    if (tm != NULL)
        return tm->busy ? NULL : tm;
    tm = calloc(1, sizeof *tm);
    if (tm == NULL)
        return NULL;
    tm->multi = curl_multi_init();
    if (tm->multi == NULL || pthread_setspecific(multi_key, tm) != 0) {
        curl_multi_cleanup(tm->multi);
        free(tm);
        return NULL;
    }
    tm->wakeable = wakeable(tm->multi);
    return tm;
}

/* The result a transfer cut short by ctx reports. */
static CURLcode ended_code(int err)
{
    return err == CTX_DEADLINE_EXCEEDED ? CURLE_OPERATION_TIMEDOUT : CURLE_ABORTED_BY_CALLBACK;
}

/* libcurl before 8.0.0 cannot reuse an HTTP/2 connection that it opened
 * with prior knowledge over plain TCP (h2c, as gRPC uses): a second transfer
 * on it installs a second HTTP/2 layer over the first one and fails at once
 * with CURLE_HTTP2, "Error in the HTTP2 framing layer", for as long as the
 * connection stays in the cache, i.e. for the life of this thread's multi
 * handle.  libcurl 8.0.0 fixed it (it checks for the layer already there).
 * The version is asked once: curl_version_info builds its whole answer
 * (thousands of instructions) on every call. */
static bool h2c_broken;
static pthread_once_t h2c_once = PTHREAD_ONCE_INIT;

static void learn_h2c_broken(void)
{
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    h2c_broken = v != NULL && v->version_num < 0x080000;
}

static bool h2c_reuse_broken(void)
{
    pthread_once(&h2c_once, learn_h2c_broken);
    return h2c_broken;
}

/* After a finished transfer on such a libcurl: when it ran HTTP/2 over plain
 * TCP, its connection now waits in the cache and must not be reused.  There
 * is no call that closes one cached connection, so its socket is shut down:
 * the peer sees an orderly close at once, and libcurl's own liveness check
 * finds the connection closed when the next transfer looks for one, closes
 * the descriptor and connects anew.  The socket is only found while the
 * handle is still in the multi handle. */
static void retire_h2c_connection(CURL *easy)
{
    long version = 0;
    char *scheme = NULL;
    curl_socket_t sock = CURL_SOCKET_BAD;
    if (curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) != CURLE_OK ||
        version != CURL_HTTP_VERSION_2_0)
        return;
    if (curl_easy_getinfo(easy, CURLINFO_SCHEME, &scheme) != CURLE_OK || scheme == NULL ||
        strcasecmp(scheme, "http") != 0)
        return;
    if (curl_easy_getinfo(easy, CURLINFO_ACTIVESOCKET, &sock) == CURLE_OK &&
        sock != CURL_SOCKET_BAD)
        shutdown(sock, SHUT_RDWR);
}

/* ctx's end, told to the poll of the transfer's thread (see the top). */
static void wake(void *multi)
{
    curl_multi_wakeup(multi);
}

/* Runs the transfer already added to multi until it finishes (*finished set)
 * or ctx ends.  done_fd is polled as well when it is not -1: the fallback
 * for a multi handle that cannot be woken. */
static CURLcode run(ctx_t *ctx, CURLM *multi, CURL *easy, int done_fd, bool *finished)
{
    struct curl_waitfd extra = { .fd = done_fd, .events = CURL_WAIT_POLLIN, .revents = 0 };
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK)
            return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;

        int queued;
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(multi, &queued)) != NULL) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
                *finished = true;
                return msg->data.result;
            }
        }
        /* A transfer that finished in the same round as the cancel keeps its
         * real result (above); only one still running is cut short. */
        int err = ctx_err(ctx);
        if (err != 0)
            return ended_code(err);

        /* curl_multi_poll caps the wait by libcurl's own next timeout; the
         * cap here is ctx's deadline.  The wake-up of a deadline runs on a
         * library thread one hand-off after the timer, which a busy machine
         * can delay, so the poll also ends by itself at the deadline and
         * reads ctx_err, which the timer sets as it fires. */
        int wait_ms = 1000;
        ctx_time_t deadline;
        if (ctx_deadline(ctx, &deadline)) {
            ctx_duration_t left = deadline - ctx_now();
            if (left < wait_ms * CTX_MILLISECOND)
                wait_ms = left > 0 ? (int)((left + CTX_MILLISECOND - 1) / CTX_MILLISECOND) : 1;
        }
        mc = curl_multi_poll(multi, done_fd >= 0 ? &extra : NULL, done_fd >= 0 ? 1 : 0, wait_ms,
                             NULL);
        if (mc != CURLM_OK)
            return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_FAILED_INIT;
    }
}

CURLcode ctx_curl_perform(ctx_t *ctx, CURL *easy)
{
    if (ctx == NULL || easy == NULL)
        return CURLE_BAD_FUNCTION_ARGUMENT;
    int err = ctx_err(ctx);
    if (err != 0)
        return ended_code(err);

    /* Without this, removing a transfer that is still resolving joins the
     * resolver thread, i.e. waits for getaddrinfo() to give up. */
    curl_easy_setopt(easy, CURLOPT_QUICK_EXIT, 1L);

    struct thread_multi *tm = thread_multi();
    CURLM *multi = tm != NULL ? tm->multi : curl_multi_init();
    if (multi == NULL)
        return CURLE_OUT_OF_MEMORY;
    /* How the poll learns of ctx's end: a wake-up, else the done fd, where
     * -1 with errno 0 means that ctx can never end and the transfer runs as
     * curl_easy_perform would.  A context that can never end takes the
     * wake-up's registration and never runs it. */
    ctx_after_t *watch = NULL;
    int done_fd = -1;
    bool watched;
    if (tm != NULL ? tm->wakeable : wakeable(multi)) {
        watched = ctx_after_func(ctx, wake, multi, &watch) == 0;
    } else {
        errno = 0;
        done_fd = ctx_done_fd(ctx);
        watched = done_fd >= 0 || errno == 0;
    }
    CURLMcode mc = watched ? curl_multi_add_handle(multi, easy) : CURLM_OUT_OF_MEMORY;
    if (mc != CURLM_OK) {
        if (watch != NULL)
            ctx_after_stop(watch);
        if (tm == NULL)
            curl_multi_cleanup(multi);
        return mc == CURLM_OUT_OF_MEMORY ? CURLE_OUT_OF_MEMORY : CURLE_BAD_FUNCTION_ARGUMENT;
    }
    if (tm != NULL)
        tm->busy = true;

    bool finished = false;
    CURLcode rc = run(ctx, multi, easy, done_fd, &finished);

    if (finished) {
        if (h2c_reuse_broken())
            retire_h2c_connection(easy);
    } else {
        /* A transfer cut short.  Removing the handle ends it: over HTTP/1.1
         * libcurl closes the connection; over HTTP/2 it queues an RST_STREAM
         * for the stream (which libcurl 7.88 never writes out: it sits in a
         * buffer that only the connection's next use flushes) and keeps the
         * connection for the next transfer, which libcurl 7.88 then cannot
         * use over h2c (see h2c_reuse_broken) and which may still deliver
         * frames of the abandoned stream.  Forbidding reuse makes the removal
         * close the connection, so the server learns of the cancel at once
         * and the next call starts on a fresh connection.  libcurl offers no way to read an option
         * back, so it cannot be restored to the caller's value: it is left at 0, libcurl's default,
         * as curl.h documents. */
        curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 1L);
    }
    curl_multi_remove_handle(multi, easy);
    if (!finished)
        curl_easy_setopt(easy, CURLOPT_FORBID_REUSE, 0L);
    /* Once stopped, the wake-up has returned or will never run, so the
     * multi handle may serve the next call or be freed.  A wake-up that ran
     * after the transfer ended leaves the next poll a spurious return. */
    if (watch != NULL)
        ctx_after_stop(watch);
    if (tm != NULL)
        tm->busy = false;
    else
        curl_multi_cleanup(multi);
    return rc;
}
