/* SPDX-License-Identifier: MIT */

/*
 * libctx-curl: libcurl transfers under a context (Go's http.NewRequestWithContext).
 *
 * Link with ctx::curl (CMake) or `pkg-config --libs libctx-curl`.
 *
 * ctx_curl_perform() is curl_easy_perform() that also ends when a context
 * ends: a cancel stops the transfer within about a millisecond in whatever
 * phase it is (name resolution, connect, TLS, sending, waiting, receiving),
 * and the context's deadline bounds the whole transfer.  ctx_curl_headers()
 * adds the headers that carry the context to the next service (deadline as
 * grpc-timeout, trace as traceparent, baggage), so that the callee can build
 * its own request context with ctx_extract().
 *
 * Threads.  Both calls may be made from any thread, on any number of easy
 * handles at once; one easy handle, as libcurl requires, is used by one
 * thread at a time.  A thread that calls ctx_curl_perform keeps one libcurl
 * multi handle (and with it a connection cache, so keep-alive connections are
 * reused between calls of the same thread); it is freed when the thread exits.
 *
 * gRPC.  A unary call with raw bytes over HTTP/2 (h2c with prior knowledge,
 * or TLS) is one ctx_curl_perform: a POST whose body has gRPC's 5-byte
 * prefix, with content-type application/grpc, te: trailers and the
 * grpc-timeout of ctx_curl_headers; grpc-status and grpc-message arrive in
 * the trailers, which libcurl passes to CURLOPT_HEADERFUNCTION.  Streaming
 * calls and protobuf are not covered.  docs/http.md and examples/grpc_call.c
 * show it, and how a context's end maps to a gRPC status.
 */
#ifndef CTX_CURL_H
#define CTX_CURL_H

#include <ctx.h>

#include <curl/curl.h>

#ifdef __cplusplus
extern "C" {
#endif

/* curl_easy_perform(easy) under ctx.
 *
 * Returns CURLE_OK or curl's own error for the transfer.  When ctx ends
 * before the transfer does, the transfer is abandoned (its connection is
 * closed, over HTTP/1.1 and HTTP/2 alike, never left half-read in the cache:
 * see "Connections" below) and the result is
 * CURLE_OPERATION_TIMEDOUT if ctx's deadline passed, CURLE_ABORTED_BY_CALLBACK
 * if it was cancelled; ctx_err(ctx) and ctx_cause(ctx) say which and why.
 * curl's own timeouts (CURLOPT_TIMEOUT, CURLOPT_CONNECTTIMEOUT) give
 * CURLE_OPERATION_TIMEDOUT too; as everywhere in libctx (ctx.h, "A
 * context's end and other timeouts") ctx_err(ctx) != 0 after the call says
 * that it was ctx, and ctx_err(ctx) == 0 that it was curl's.  A
 * ctx already done returns that code at once without any network activity.
 * CURLE_BAD_FUNCTION_ARGUMENT for a NULL ctx or easy, or an easy handle that
 * is already in a multi handle.  CURLE_OUT_OF_MEMORY when the multi handle or
 * the watch on the context (an AfterFunc that wakes the transfer's poll)
 * cannot be made.
 *
 * Name resolution: libcurl's threaded resolver normally waits for a running
 * getaddrinfo() when a transfer is abandoned, which can take as long as the
 * name server takes.  This call therefore sets CURLOPT_QUICK_EXIT on easy
 * (libcurl 7.87 and later), which lets libcurl leave that thread behind to
 * finish on its own; the option stays set on the handle afterwards.
 *
 * Connections.  A transfer that ctx cut short closes its connection: over
 * HTTP/1.1 the response is half-read, and over HTTP/2 libcurl would reset
 * the stream but keep the connection, which the next transfer to that host
 * may then not be able to use.  To close it, the call sets
 * CURLOPT_FORBID_REUSE on easy for the removal and leaves it at 0 (libcurl's
 * default) afterwards: libcurl cannot tell the caller's own value, so a
 * caller that relies on FORBID_REUSE sets it again before the next call.
 * The peer sees the connection end at once, and with it every stream on it:
 * a gRPC server's call context becomes inactive within a millisecond on
 * loopback.  (libcurl 7.88 queues an RST_STREAM for the abandoned stream but
 * never writes it out, so the close is what tells the server.)  The thread's
 * next transfers, to the same host or another, work as before.
 *
 * HTTP/2 without TLS (CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE, as gRPC clients
 * use): libcurl before 8.0.0 cannot reuse such a connection; a second
 * transfer on it fails at once with CURLE_HTTP2 ("Error in the HTTP2 framing
 * layer").  On those versions this call therefore retires the connection
 * after every transfer that ran over it (its socket is shut down, which
 * libcurl sees as a closed connection and replaces on the next call), so
 * each such call opens a new connection.  HTTP/2 over TLS (ALPN) and
 * HTTP/1.1 keep their connections between calls.
 *
 * The easy handle keeps every other option the caller set and may be
 * performed again, under the same or another context.  Blocks the calling
 * thread until the transfer or ctx ends; the callbacks of easy run on this
 * thread. */
CTX_EXPORT CURLcode ctx_curl_perform(ctx_t *ctx, CURL *easy);

/* Appends the propagation headers of ctx_inject(ctx) to headers, as
 * "grpc-timeout: ...", "traceparent: ..." (and "tracestate: ..." when there
 * is one) and "baggage: ...", and returns the list for CURLOPT_HTTPHEADER.
 *
 * The new entries are made first and linked to the end of headers only when
 * all of them could be made, so on failure headers is unchanged; the caller
 * still owns it and frees it, as always, with curl_slist_free_all().
 * Returns the list (headers itself when it was not NULL), or NULL with errno:
 * ctx_err(ctx) when ctx is already done, EINVAL for a NULL ctx, ENOMEM.
 * When there is nothing to add and headers is NULL, returns NULL with
 * errno 0.  Compute the headers right before ctx_curl_perform: grpc-timeout
 * is the time left at the moment of the call. */
CTX_EXPORT struct curl_slist *ctx_curl_headers(ctx_t *ctx, struct curl_slist *headers);

#ifdef __cplusplus
}
#endif

#endif /* CTX_CURL_H */
