/* SPDX-License-Identifier: MIT */

/*
 * libctx-mhd: a context for each request of a libmicrohttpd server (Go's
 * http.Request.Context()).
 *
 * Link with ctx::mhd (CMake) or `pkg-config --libs libctx-mhd`.
 *
 * The context of a request ends when the first of these happens: the
 * server's base context ends (shutdown), the request's deadline passes (the
 * base's, or a shorter one the caller sent in grpc-timeout), or the client
 * goes away (closes its end or the connection breaks).  It carries the
 * caller's trace (traceparent) and baggage, so that a handler's outgoing
 * calls continue the trace (ctx_curl_headers).
 *
 * Threading modes.  The peer-close watch is libctx's own (ctx_with_peer_close)
 * and does not depend on libmicrohttpd polling the socket, so a request
 * context notices a client that leaves in every threading mode, even while a
 * handler runs or while the connection is suspended.  What the mode decides
 * is where the work may block:
 *   - MHD_USE_THREAD_PER_CONNECTION (with MHD_USE_INTERNAL_POLLING_THREAD):
 *     the handler may do the whole request's work right there, blocking in
 *     cancellable calls.  The simple mode, but every connection holds a
 *     thread, an idle or a slow one too.
 *   - MHD_USE_INTERNAL_POLLING_THREAD alone, MHD_USE_EPOLL, a thread pool
 *     (MHD_OPTION_THREAD_POOL_SIZE) or an external select loop: one thread
 *     serves many connections, so a handler must not block.  Make the
 *     context in the handler, suspend the connection
 *     (MHD_suspend_connection, MHD_ALLOW_SUSPEND_RESUME) and hand the work
 *     to another thread; when the work ends (or the context does, which
 *     ends the work), keep the answer, end the context and
 *     MHD_resume_connection: libmicrohttpd calls the handler once more, and
 *     that call queues the answer.  examples/reportd does this with epoll
 *     and a thread per core.
 * All modes are supported by ctx_mhd_request itself; the tests run the first
 * and the second, and reportd's tests the epoll mode with suspend and
 * resume (a client that leaves while its connection is suspended).
 *
 * Lifetime.  The context watches the connection's socket by its number
 * until it is done, so end it with the cancel handle (Go's `defer
 * cancel()`) before libmicrohttpd can close that socket: when the handler
 * has its answer, or at the latest in the MHD_OPTION_NOTIFY_COMPLETED
 * callback of the request.  Dropping the reference is not enough when
 * others may still hold one (a task of a ctx_group under the request, an
 * AfterFunc): the watch would outlive the socket.
 */
#ifndef CTX_MHD_H
#define CTX_MHD_H

#include <ctx.h>

#include <microhttpd.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The context of the request being served on conn: a child of base built
 * with ctx_extract() from the request's headers (grpc-timeout, traceparent,
 * tracestate, baggage; malformed ones are ignored) and cancelled, with cause
 * ECONNRESET and the message "client disconnected", when the client
 * disconnects (ctx_with_peer_close on the connection's socket).
 *
 * Returns a new reference (drop it with ctx_unref; see Lifetime above) and,
 * if cancel is not NULL, the capability to cancel it by hand.  NULL with
 * errno: EINVAL for a NULL base or conn, ENOTSOCK when libmicrohttpd gives
 * no socket for conn, ENOMEM, or what ctx_extract or ctx_with_peer_close
 * fail with.  Any thread; does not block; reads conn's headers, so call it
 * from inside libmicrohttpd's access handler (or while the connection is
 * suspended). */
CTX_EXPORT ctx_t *ctx_mhd_request(ctx_t *base, struct MHD_Connection *conn, ctx_cancel_t **cancel);

#ifdef __cplusplus
}
#endif

#endif /* CTX_MHD_H */
