/* SPDX-License-Identifier: MIT */

/*
 * grpc_call: one unary gRPC call over HTTP/2 without TLS (h2c, prior
 * knowledge) through libctx-curl, with raw bytes as the message.
 *
 *     grpc_call http://127.0.0.1:50051/pkg.Service/Method PAYLOAD [TIMEOUT_MS]
 *
 * The context's deadline travels as grpc-timeout (the server's deadline
 * becomes ours), and a cancel or the deadline resets the call on the server
 * at once.  Prints the gRPC status, its message and the response bytes.
 * No protobuf: the payload is sent as it is, so the server's method must
 * take raw bytes (a generic handler) or the caller encodes the message.
 */
#include <ctx.h>
#include <ctx/curl.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct reply {
    unsigned char body[65536];
    size_t len;
    int status; /* grpc-status from the trailers; -1 until one came */
    char message[256];
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;
    if (len > sizeof r->body - r->len)
        return 0; /* larger than this example takes: the transfer fails */
    memcpy(r->body + r->len, p, len);
    r->len += len;
    return len;
}

/* gRPC sends its status in HTTP/2 trailers (or in the headers when there is
 * no message); libcurl hands both to the header callback. */
static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "grpc-status:", 12) == 0)
        r->status = atoi(p + 12);
    else if (len > 13 && strncasecmp(p, "grpc-message:", 13) == 0) {
        const char *v = p + 13 + strspn(p + 13, " "); /* curl keeps the blank */
        snprintf(r->message, sizeof r->message, "%.*s", (int)strcspn(v, "\r\n"), v);
    }
    return len;
}

/* The gRPC status of a call: when the context ended it, DEADLINE_EXCEEDED
 * (4) or CANCELLED (1), as grpc-go reports; a transfer that failed is
 * UNAVAILABLE (14); else what the server said. */
static int grpc_status(CURLcode rc, const struct reply *r)
{
    if (rc == CURLE_OPERATION_TIMEDOUT)
        return 4;
    if (rc == CURLE_ABORTED_BY_CALLBACK)
        return 1;
    if (rc != CURLE_OK || r->status < 0)
        return 14;
    return r->status;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s URL/pkg.Service/Method PAYLOAD [TIMEOUT_MS]\n", argv[0]);
        return 2;
    }
    long timeout_ms = argc > 3 ? atol(argv[3]) : 1000;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), timeout_ms * CTX_MILLISECOND, NULL);

    /* The message: a 5-byte prefix (flag 0 = not compressed, then the
     * length as 4 bytes big-endian) before the payload. */
    size_t plen = strlen(argv[2]);
    unsigned char *frame = malloc(5 + plen);
    frame[0] = 0;
    for (int i = 0; i < 4; i++)
        frame[1 + i] = (unsigned char)(plen >> (24 - 8 * i));
    memcpy(frame + 5, argv[2], plen);

    /* gRPC's request headers; ctx_curl_headers adds grpc-timeout (the time
     * left now, so build the list right before the call), traceparent and
     * baggage when ctx carries them. */
    struct curl_slist *h = curl_slist_append(NULL, "content-type: application/grpc");
    h = curl_slist_append(h, "te: trailers");
    struct curl_slist *with = ctx_curl_headers(ctx, h); /* NULL: h unchanged */
    h = with != NULL ? with : h;

    struct reply *r = calloc(1, sizeof *r);
    r->status = -1;
    CURL *easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, argv[1]);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, frame); /* a POST */
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, (long)(5 + plen));
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, r);

    CURLcode rc = ctx_curl_perform(ctx, easy);
    int status = grpc_status(rc, r);
    printf("status %d (%s)\n", status, rc != CURLE_OK ? curl_easy_strerror(rc) : r->message);
    /* The response message has the same 5-byte prefix. */
    if (status == 0 && r->len >= 5)
        printf("response: %.*s\n", (int)(r->len - 5), (const char *)r->body + 5);

    curl_easy_cleanup(easy);
    curl_slist_free_all(h);
    free(frame);
    free(r);
    ctx_unref(ctx);
    curl_global_cleanup();
    return status == 0 ? 0 : 1;
}
