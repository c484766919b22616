/* SPDX-License-Identifier: MIT */

/*
 * libFuzzer harness for W3C Trace Context: the input is read as a
 * traceparent and as a tracestate header.
 *
 * traceparent: an accepted value has non-zero ids, known flags only, and
 * writes back (as version 00) to text that reads to the same fields; a
 * version 00 value writes back byte for byte, with the flags masked.
 * tracestate: what is kept fits in 512 bytes, is a valid header that the
 * filter keeps whole, and is made of members of the input, in its order.
 */
#include "wire_fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static void traceparent(const char *s, size_t size)
{
    struct ctx__traceparent tp;
    if (ctx__traceparent_parse(s, size, &tp) != 0)
        return;
    FUZZ_CHECK(size >= CTX__TRACEPARENT_LEN);
    FUZZ_CHECK((tp.flags & ~(CTX__TRACE_SAMPLED | CTX__TRACE_RANDOM)) == 0);
    static const uint8_t zero[16];
    FUZZ_CHECK(memcmp(tp.trace_id, zero, 16) != 0 && memcmp(tp.span_id, zero, 8) != 0);
    char out[CTX__TRACEPARENT_LEN + 1];
    ctx__traceparent_format(&tp, out);
    FUZZ_CHECK(strlen(out) == CTX__TRACEPARENT_LEN);
    struct ctx__traceparent back;
    FUZZ_CHECK(ctx__traceparent_parse(out, CTX__TRACEPARENT_LEN, &back) == 0);
    FUZZ_CHECK(memcmp(&back, &tp, sizeof tp) == 0);
    if (s[0] == '0' && s[1] == '0')
        FUZZ_CHECK(memcmp(out, s, 53) == 0);
}

static void tracestate(const char *s, size_t size)
{
    char out[CTX__TRACESTATE_MAX + 1];
    memset(out, 'Z', sizeof out);
    size_t n = ctx__tracestate_filter(s, size, out);
    FUZZ_CHECK(n <= CTX__TRACESTATE_MAX && out[n] == '\0' && strlen(out) == n);
    if (n == 0)
        return;
    char again[CTX__TRACESTATE_MAX + 1];
    FUZZ_CHECK(ctx__tracestate_filter(out, n, again) == n && memcmp(again, out, n) == 0);
    /* Every kept member occurs in the input, in the same order. */
    const char *from = s, *end = s + size;
    for (const char *m = out; *m != '\0';) {
        const char *comma = strchr(m, ',');
        size_t ml = comma != NULL ? (size_t)(comma - m) : strlen(m);
        const char *hit = NULL;
        for (const char *p = from; p + ml <= end; p++) {
            if (memcmp(p, m, ml) == 0) {
                hit = p;
                break;
            }
        }
        FUZZ_CHECK(hit != NULL);
        from = hit + ml;
        m += ml + (comma != NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    traceparent((const char *)data, size);
    tracestate((const char *)data, size);
    return 0;
}
