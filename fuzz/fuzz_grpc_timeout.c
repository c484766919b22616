/* SPDX-License-Identifier: MIT */

/*
 * libFuzzer harness for grpc-timeout.  The input is read as a header value;
 * whatever it holds, the reader must not read past it, and what it accepts
 * must be 1 to 8 digits and a known unit, with a value that is never
 * negative.  Its first 8 bytes are also taken as a duration to write: the
 * text must read back to a budget no shorter, and less than one unit
 * longer.
 */
#include "wire_fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static ctx_duration_t unit_of(char u)
{
    switch (u) {
    case 'n':
        return CTX_NANOSECOND;
    case 'u':
        return CTX_MICROSECOND;
    case 'm':
        return CTX_MILLISECOND;
    case 'S':
        return CTX_SECOND;
    case 'M':
        return CTX_MINUTE;
    case 'H':
        return CTX_HOUR;
    default:
        return 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    ctx_duration_t d = -1;
    if (ctx__grpc_timeout_parse(s, size, &d) == 0) {
        FUZZ_CHECK(size >= 2 && size <= 9);
        FUZZ_CHECK(unit_of(s[size - 1]) != 0);
        for (size_t i = 0; i + 1 < size; i++)
            FUZZ_CHECK(s[i] >= '0' && s[i] <= '9');
        FUZZ_CHECK(d >= 0);
    } else {
        FUZZ_CHECK(d == -1); /* untouched on failure */
    }

    if (size >= 8) {
        uint64_t raw;
        memcpy(&raw, data, 8);
        ctx_duration_t t = (ctx_duration_t)(raw >> 1);
        char buf[CTX__GRPC_TIMEOUT_SIZE];
        size_t n = ctx__grpc_timeout_format(t, buf);
        FUZZ_CHECK(n == strlen(buf) && n >= 2 && n <= 9);
        ctx_duration_t back;
        FUZZ_CHECK(ctx__grpc_timeout_parse(buf, n, &back) == 0);
        FUZZ_CHECK(back >= t && back - t < unit_of(buf[n - 1]));
    }
    return 0;
}
