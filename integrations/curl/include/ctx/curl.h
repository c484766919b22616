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
 * closed, never left half-read in the cache) and the result is
 * CURLE_OPERATION_TIMEDOUT if ctx's deadline passed, CURLE_ABORTED_BY_CALLBACK
 * if it was cancelled; ctx_err(ctx) and ctx_cause(ctx) say which and why.
 * curl's own timeouts (CURLOPT_TIMEOUT, CURLOPT_CONNECTTIMEOUT) give
 * CURLE_OPERATION_TIMEDOUT too; as everywhere in libctx (ctx.h, "A
 * context's end and other timeouts") ctx_err(ctx) != 0 after the call says
 * that it was ctx, and ctx_err(ctx) == 0 that it was curl's.  A
 * ctx already done returns that code at once without any network activity.
 * CURLE_BAD_FUNCTION_ARGUMENT for a NULL ctx or easy, or an easy handle that
 * is already in a multi handle.  CURLE_OUT_OF_MEMORY when the multi handle or
 * the context's done fd cannot be made.
 *
 * Name resolution: libcurl's threaded resolver normally waits for a running
 * getaddrinfo() when a transfer is abandoned, which can take as long as the
 * name server takes.  This call therefore sets CURLOPT_QUICK_EXIT on easy
 * (libcurl 7.87 and later), which lets libcurl leave that thread behind to
 * finish on its own; the option stays set on the handle afterwards.
 *
 * The easy handle keeps every option the caller set and may be performed
 * again, under the same or another context.  Blocks the calling thread until
 * the transfer or ctx ends; the callbacks of easy run on this thread. */
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
