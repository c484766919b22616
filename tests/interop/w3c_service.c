/* SPDX-License-Identifier: MIT */

/*
 * w3c_service: the service that the W3C Trace Context test suite
 * (w3c/trace-context, folder test/) drives.  docs/interop.md shows how to
 * run the suite against it.
 *
 *   w3c_service [PORT]      listens on 127.0.0.1:PORT (0 or none: any port)
 *                           and prints "listening on 127.0.0.1:N"
 *
 * The suite POSTs a JSON list of {"url": ..., "arguments": [...]} to /test;
 * for each element the service POSTs "arguments" (as JSON) to "url".  The
 * trace travels only through libctx: the request's headers go through
 * ctx_extract, each outgoing call's headers come from ctx_inject (by way of
 * ctx_curl_headers).  The only code of its own is the carrier, which joins
 * repeated header lines with "," as HTTP allows for list-valued headers,
 * and a scanner that finds the two members of each element without
 * interpreting anything else.
 */
#define _GNU_SOURCE
#include <ctx.h>
#include <ctx/curl.h>
#include <ctx/propagation.h>

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

struct body {
    char *p;
    size_t n;
};

/* The carrier: every line of the header, joined with ",". */
struct joined {
    const char *name;
    char buf[65536];
    size_t n;
    int count;
};

static enum MHD_Result join_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                const char *value)
{
    (void)kind;
    struct joined *j = cls;
    if (strcasecmp(key, j->name) != 0 || value == NULL)
        return MHD_YES;
    size_t vl = strlen(value);
    if (j->n + vl + 2 > sizeof j->buf)
        return MHD_NO; /* longer than anything ctx_extract reads */
    if (j->count++ > 0)
        j->buf[j->n++] = ',';
    memcpy(j->buf + j->n, value, vl);
    j->n += vl;
    j->buf[j->n] = '\0';
    return MHD_YES;
}

static _Thread_local struct joined joined;

static const char *header(void *conn, const char *name)
{
    joined.name = name;
    joined.n = 0;
    joined.count = 0;
    joined.buf[0] = '\0';
    MHD_get_connection_values(conn, MHD_HEADER_KIND, join_one, &joined);
    return joined.count > 0 ? joined.buf : NULL;
}

/* The end of the JSON value that starts at s[i] (after white space), or 0
 * when it does not end before n. */
static size_t skip_value(const char *s, size_t i, size_t n)
{
    int depth = 0;
    for (; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            if (depth == 0)
                return i + 1;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            if (--depth == 0)
                return i + 1;
        } else if (depth == 0 && (c == ',' || c == ' ')) {
            return i;
        }
    }
    return 0;
}

static size_t discard(char *p, size_t size, size_t n, void *data)
{
    (void)p;
    (void)data;
    return size * n;
}

/* POSTs the JSON text arg to url under ctx. */
static void call(ctx_t *ctx, const char *url, const char *arg, size_t arg_len)
{
    CURL *easy = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = ctx_curl_headers(ctx, h);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, arg);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)arg_len);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = ctx_curl_perform(ctx, easy);
    if (rc != CURLE_OK)
        fprintf(stderr, "w3c_service: %s: %s\n", url, curl_easy_strerror(rc));
    curl_slist_free_all(h);
    curl_easy_cleanup(easy);
}

/* Walks the list [{"url": "...", "arguments": [...]}, ...]. */
static void serve(ctx_t *ctx, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '{')
            continue;
        size_t end = skip_value(s, i, n);
        if (end == 0)
            return;
        char url[1024] = "";
        const char *arg = "[]";
        size_t arg_len = 2;
        for (size_t k = i + 1; k < end;) {
            while (k < end && (s[k] == ' ' || s[k] == ',' || s[k] == '\n'))
                k++;
            if (s[k] != '"')
                break;
            size_t kend = skip_value(s, k, end);
            size_t colon = kend;
            while (colon < end && s[colon] != ':')
                colon++;
            size_t vb = colon + 1;
            while (vb < end && s[vb] == ' ')
                vb++;
            size_t vend = skip_value(s, vb, end);
            if (kend == 0 || vend == 0)
                return;
            if (kend - k == 5 && memcmp(s + k, "\"url\"", 5) == 0 && vend - vb < sizeof url)
                snprintf(url, sizeof url, "%.*s", (int)(vend - vb - 2), s + vb + 1);
            else if (kend - k == 11 && memcmp(s + k, "\"arguments\"", 11) == 0) {
                arg = s + vb;
                arg_len = vend - vb;
            }
            k = vend;
        }
        if (url[0] != '\0')
            call(ctx, url, arg, arg_len);
        i = end - 1;
    }
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)cls;
    (void)url;
    (void)version;
    struct body *b = *state;
    if (b == NULL) {
        *state = calloc(1, sizeof *b);
        return *state != NULL ? MHD_YES : MHD_NO;
    }
    if (*upload_size > 0) {
        char *p = realloc(b->p, b->n + *upload_size + 1);
        if (p == NULL)
            return MHD_NO;
        memcpy(p + b->n, upload, *upload_size);
        b->p = p;
        b->n += *upload_size;
        b->p[b->n] = '\0';
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "POST") == 0 && b->p != NULL) {
        const ctx_carrier_t in = { .get = header, .headers = conn };
        ctx_t *ctx = ctx_extract(ctx_background(), &in, NULL);
        if (ctx != NULL) {
            serve(ctx, b->p, b->n);
            ctx_unref(ctx);
        }
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(2, "ok", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void done(void *cls, struct MHD_Connection *conn, void **state,
                 enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    struct body *b = *state;
    if (b != NULL)
        free(b->p);
    free(b);
}

int main(int argc, char **argv)
{
    unsigned port = argc > 1 ? (unsigned)atoi(argv[1]) : 0;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG, 0,
        NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR, &sa, MHD_OPTION_NOTIFY_COMPLETED, done,
        NULL, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "w3c_service: cannot listen on 127.0.0.1:%u\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    printf("listening on 127.0.0.1:%u\n", info->port);
    fflush(stdout);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sig;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    curl_global_cleanup();
    return 0;
}
