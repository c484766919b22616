/* SPDX-License-Identifier: MIT */

/*
 * libctx across processes: deadlines, trace identity and request values on
 * the wire.
 *
 * A context's deadline, its W3C trace and its baggage (request-scoped string
 * values such as a request ID) cross a process boundary as headers in the
 * formats that gRPC and OpenTelemetry use, so that a peer written in Go,
 * Java or Python reads them without knowing libctx:
 *
 *   grpc-timeout   the time left to the deadline (gRPC's PROTOCOL-HTTP2),
 *   traceparent    trace id, the caller's span id and flags (W3C Trace Context),
 *   tracestate     vendors' trace data, passed through (W3C Trace Context),
 *   baggage        key=value members (W3C Baggage).
 *
 * The library knows no HTTP library.  The caller hands over its own header
 * store as a carrier: two functions and a pointer.  Header names are given
 * in lowercase; a carrier over a case-sensitive store should compare names
 * without regard to case, as HTTP does.
 *
 * Threading.  Every call may be made from any thread at any time; the
 * carrier's functions are called on the calling thread only, never after
 * the call returns, and never with a library lock held.
 *
 * Nothing here blocks except in the carrier's own functions.
 */
#ifndef CTX_PROPAGATION_H
#define CTX_PROPAGATION_H

#include <ctx.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A header store.  get returns the value of the header name (a lowercase,
 * NUL-terminated string), or NULL when it is absent; the string must stay
 * valid until the call that asked for it returns.  When a request carries a
 * header more than once, get should return the values joined by ",", as
 * HTTP allows for these list-valued headers.  set stores one header and
 * returns 0 or an errno-style code; it should replace a header of the same
 * name.  name and value are valid only during the call of set (most values
 * are built on ctx_inject's stack): set copies what it keeps.  Either
 * function may be NULL when the carrier is only read from (ctx_extract) or
 * only written to (ctx_inject).
 */
typedef struct ctx_carrier {
    const char *(*get)(void *headers, const char *name);
    int (*set)(void *headers, const char *name, const char *value);
    void *headers;
} ctx_carrier_t;

/*
 * Writes, for an outgoing call under ctx, through out->set:
 *
 *   grpc-timeout  the time left to ctx's deadline, as grpc-go writes it: at
 *                 most 8 digits and the finest unit of n u m S M H that
 *                 fits, rounded up; absent when ctx has no deadline;
 *   traceparent   version 00: ctx's trace id, a fresh random span id for
 *                 this call and the trace's flags; absent when ctx carries
 *                 no trace (no ctx_extract above it);
 *   tracestate    the incoming tracestate, when there was one;
 *   baggage       every entry bound with ctx_with_baggage or extracted above
 *                 ctx, the nearest binding of a key winning, values
 *                 percent-encoded; at most 64 members and 8192 bytes, whole
 *                 members being dropped beyond that (the nearest kept first).
 *
 * A ctx that is already done, or whose deadline has passed, writes nothing
 * and returns its error (CTX_CANCELED or CTX_DEADLINE_EXCEEDED), as grpc-go
 * refuses to send such a call.
 *
 * Every header value is built before the first call of set, so a failure
 * of the library (ENOMEM never happens here: the call allocates nothing; an
 * error of the random source) writes nothing at all.  When set fails, the
 * call stops and returns set's code: the headers already set are complete
 * values that stand on their own (the carrier never holds a partial value)
 * and the caller may send or drop them.
 *
 * Returns 0, EINVAL for a NULL ctx, out or out->set, ctx's error, set's
 * code, or the random source's error.  Thread-safe; does not block; uses
 * about 9 KiB of stack (the largest baggage header it may write).
 */
CTX_EXPORT int ctx_inject(ctx_t *ctx, const ctx_carrier_t *out);

/*
 * For an incoming request: a child of parent (a new reference) whose
 *
 *   deadline  is the earlier of parent's and now + grpc-timeout;
 *   trace     is the incoming traceparent's (and tracestate's), or a new
 *             trace with random ids (flags 02, "random trace id") when there
 *             is no traceparent or it is invalid;
 *   baggage   holds the incoming members, above the baggage of parent (an
 *             incoming key hides the same key bound above), values
 *             percent-decoded, with escaped bytes that are not UTF-8
 *             replaced by U+FFFD as W3C Baggage requires.
 *
 * Malformed or oversized headers are ignored, never trusted: a malformed
 * grpc-timeout or baggage header is ignored whole; an invalid traceparent
 * starts a new trace and its tracestate is not read (a traceparent between
 * spaces or tabs is valid); a tracestate that breaks the W3C grammar or has
 * more than 32 members is dropped, a repeated key keeps its first value, and one
 * longer than 512 bytes loses whole members, from the end (those over 128
 * bytes first, then any); baggage members beyond 64 members or 8192 bytes are
 * dropped whole.  At most a bounded prefix of each header is read, whatever
 * get returns.  They shorten nothing but the child's own deadline and never
 * change parent.
 *
 * *cancel (when cancel is not NULL) receives the handle that cancels the
 * child.  Returns NULL with errno EINVAL for a NULL parent, in or in->get,
 * ENOMEM when memory runs out (nothing leaks), or the random source's
 * error.  Thread-safe; does not block.
 */
CTX_EXPORT ctx_t *ctx_extract(ctx_t *parent, const ctx_carrier_t *in, ctx_cancel_t **cancel);

/*
 * Baggage: string entries that travel with the request (request-id, tenant,
 * ...).  ctx_with_baggage returns a child of parent (a new reference) that
 * binds key to value; both are copied.  key must be a non-empty HTTP token
 * (letters, digits and !#$%&'*+-.^_`|~); value may be any string, it is
 * percent-encoded on the wire (a receiver reads bytes that are not UTF-8 as
 * U+FFFD, so only UTF-8 crosses unchanged).  NULL with errno EINVAL for a NULL argument
 * or an invalid key, ENOMEM when memory runs out.
 *
 * ctx_baggage returns the value bound to key nearest to ctx, or NULL when
 * there is none; the string lives as long as ctx.
 */
CTX_EXPORT ctx_t *ctx_with_baggage(ctx_t *parent, const char *key, const char *value);
CTX_EXPORT const char *ctx_baggage(ctx_t *ctx, const char *key);

/*
 * Trace identity.  ctx_trace_id writes the 32 lowercase hex digits of ctx's
 * trace id and a NUL into buf; false (buf untouched) when ctx carries no
 * trace.  ctx_span_id writes the 16 hex digits of the span that ctx_extract
 * received (the caller's span: the parent of this service's work), or of
 * the random root span of a new trace.
 */
CTX_EXPORT bool ctx_trace_id(ctx_t *ctx, char buf[33]);
CTX_EXPORT bool ctx_span_id(ctx_t *ctx, char buf[17]);

#ifdef __cplusplus
}
#endif

#endif /* CTX_PROPAGATION_H */
