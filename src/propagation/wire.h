/* SPDX-License-Identifier: MIT */

/*
 * The header formats of ctx_inject and ctx_extract as small pure functions:
 * no allocation, no global state, bounded work.  The table tests and the
 * fuzzers call them directly; src/propagation.c builds the public calls on
 * them.  Nothing here is part of the public API.
 *
 * Every parser takes a pointer and a length (the input need not be
 * NUL-terminated) and never reads outside it.
 */
#ifndef CTX_WIRE_H
#define CTX_WIRE_H

#include "ctx.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------
 * grpc-timeout: 1 to 8 ASCII digits and one unit of H M S m u n.
 */

/* 8 digits, a unit and the NUL. */
#define CTX__GRPC_TIMEOUT_SIZE 10

/* Writes d (> 0) as grpc-go does: the first unit of n, u, m, S, M whose
 * value, rounded up, fits in 8 digits, else H.  d <= 0 gives "0n".  Returns
 * the length written (without the NUL). */
size_t ctx__grpc_timeout_format(ctx_duration_t d, char buf[CTX__GRPC_TIMEOUT_SIZE]);

/* Reads s[0..n).  0 and *out set (saturated at INT64_MAX nanoseconds), or
 * EINVAL: empty, more than 8 digits, no digit, a sign, a space or any other
 * byte, an unknown unit. */
int ctx__grpc_timeout_parse(const char *s, size_t n, ctx_duration_t *out);

/* ---------------------------------------------------------------------------
 * traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>.
 */

#define CTX__TRACEPARENT_LEN 55
/* What ctx_extract reads of a traceparent: a later version may append
 * fields, which are not looked at beyond this. */
#define CTX__TRACEPARENT_READ_MAX 4096
#define CTX__TRACE_SAMPLED        0x01u
#define CTX__TRACE_RANDOM         0x02u

struct ctx__traceparent {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
};

/* Reads s[0..n), less the spaces and tabs at either end (HTTP's optional
 * white space).  0 or EINVAL: not lowercase hex where hex belongs, a
 * missing dash, an all-zero trace or parent id, version ff, version 00 with
 * anything after the flags, a higher version shorter than 55 bytes or whose
 * 56th byte is not a dash.  A higher version is read as version 00 (its
 * first four fields).  Flags keep only the bits defined so far (sampled,
 * random). */
int ctx__traceparent_parse(const char *s, size_t n, struct ctx__traceparent *out);

/* Writes version 00 and a NUL: CTX__TRACEPARENT_LEN + 1 bytes. */
void ctx__traceparent_format(const struct ctx__traceparent *tp, char buf[CTX__TRACEPARENT_LEN + 1]);

/* Lowercase hex of n bytes, then a NUL: 2n + 1 bytes. */
void ctx__hex(const uint8_t *bytes, size_t n, char *out);

/* ---------------------------------------------------------------------------
 * tracestate: up to 32 comma-separated key=value members.
 */

/* What ctx_extract keeps and ctx_inject passes through. */
#define CTX__TRACESTATE_MAX         512
#define CTX__TRACESTATE_MEMBERS     32
#define CTX__TRACESTATE_LONG_MEMBER 128
/* Longer input is not read at all: 32 members of at most 256 + 1 + 256
 * bytes, with room for the optional white space around them. */
#define CTX__TRACESTATE_READ_MAX 32768

/* Validates s[0..n) and writes the members to keep into out (at most
 * CTX__TRACESTATE_MAX bytes and a NUL), joined by ",", without the optional
 * white space.  A key that comes again is kept once, with its first
 * (leftmost) value.  When the members do not fit, those longer than 128
 * bytes are dropped first, then any member, both from the end (the leftmost
 * member, the most recently updated, is kept longest).  Returns the length
 * written; 0 (out = "") for an empty, invalid or over-long header: a key or
 * value that breaks the W3C grammar (Level 2 keys: a lowercase letter or
 * digit, then up to 255 of a-z 0-9 _ - * / @), more than 32 members
 * (repeats included). */
size_t ctx__tracestate_filter(const char *s, size_t n, char out[CTX__TRACESTATE_MAX + 1]);

/* ---------------------------------------------------------------------------
 * baggage: key=value members with optional ;properties, values
 * percent-encoded.
 */

#define CTX__BAGGAGE_MAX_MEMBERS 64
#define CTX__BAGGAGE_MAX_BYTES   8192

/* One member of a baggage header, as spans of the input.  value is still
 * percent-encoded; value_len_decoded (never more than value_len) is its
 * length once decoded by ctx__baggage_decode.  props is
 * the text after the first ";" (without surrounding white space), or NULL. */
struct ctx__bag_member {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
    size_t value_len_decoded;
    const char *props;
    size_t props_len;
};

/* Reads the first CTX__BAGGAGE_MAX_BYTES bytes of s[0..n) and fills m with
 * up to CTX__BAGGAGE_MAX_MEMBERS members; a member that reaches past either
 * limit is dropped whole, with everything after it.  Returns the number of
 * members, or -1 when the part read breaks the grammar (a bad key, value,
 * property or percent escape, an escape of NUL, an empty member): the
 * header is then ignored whole. */
int ctx__baggage_parse(const char *s, size_t n, struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS]);

/* Decodes a value that ctx__baggage_parse accepted into out (at least
 * value_len_decoded + 1 bytes, or NULL to only count) and adds a NUL;
 * returns the length without the NUL.  Escaped bytes that are not UTF-8
 * are replaced by U+FFFD, as W3C Baggage requires, so the result is always
 * valid UTF-8 and never longer than n. */
size_t ctx__baggage_decode(const char *v, size_t n, char *out);

/* The length of s once percent-encoded for a baggage value: every byte
 * outside the W3C baggage-octet set, and "%" itself, takes three bytes. */
size_t ctx__baggage_encoded_len(const char *s);

/* Percent-encodes s into out (ctx__baggage_encoded_len(s) bytes, no NUL);
 * returns the length. */
size_t ctx__baggage_encode(const char *s, char *out);

/* Whether s[0..n) is an HTTP token (RFC 9110), the grammar of baggage keys. */
bool ctx__token_valid(const char *s, size_t n);

#endif /* CTX_WIRE_H */
