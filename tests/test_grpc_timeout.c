/* SPDX-License-Identifier: MIT */

/*
 * grpc-timeout, one table per rule: writing as grpc-go does (the first
 * unit of n u m S M whose value, rounded up, fits in 8 digits, else H);
 * reading 1 to 8 digits and a unit, rejecting signs, spaces, unknown units
 * and longer numbers, and saturating instead of overflowing.
 */
#include "check.h"

#include "propagation/wire.h"

#include <limits.h>

static void test_format(void)
{
    static const struct {
        ctx_duration_t d;
        const char *want;
    } rows[] = {
        { -5, "0n" },
        { 0, "0n" },
        { 1, "1n" },
        { 99999999, "99999999n" },
        { 100000000, "100000u" },
        { 100000001, "100001u" }, /* rounded up, never down */
        { 50 * CTX_MILLISECOND, "50000000n" },
        { CTX_SECOND, "1000000u" },
        { 99999999 * CTX_MICROSECOND, "99999999u" },
        { 99999999 * CTX_MICROSECOND + 1, "100000m" },
        { CTX_HOUR, "3600000m" },
        { 99999999 * CTX_MILLISECOND, "99999999m" },
        { 100000 * CTX_SECOND, "100000S" },
        { 99999999 * CTX_SECOND + 1, "1666667M" },
        { 99999999 * CTX_MINUTE, "99999999M" },
        { 99999999 * CTX_MINUTE + 1, "1666667H" },
        { INT64_MAX, "2562048H" },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char buf[CTX__GRPC_TIMEOUT_SIZE];
        size_t n = ctx__grpc_timeout_format(rows[i].d, buf);
        CHECK_MSG(strcmp(buf, rows[i].want) == 0 && n == strlen(buf), "%" PRId64 ": %s != %s",
                  rows[i].d, buf, rows[i].want);
    }
}

static void test_parse(void)
{
    static const struct {
        const char *s;
        ctx_duration_t want;
    } good[] = {
        { "0n", 0 },
        { "1n", 1 },
        { "1u", CTX_MICROSECOND },
        { "1m", CTX_MILLISECOND },
        { "1S", CTX_SECOND },
        { "1M", CTX_MINUTE },
        { "1H", CTX_HOUR },
        { "00000001S", CTX_SECOND }, /* leading zeros count as digits */
        { "99999999n", 99999999 },
        { "99999999M", 99999999 * CTX_MINUTE },
        { "2562047H", 2562047 * CTX_HOUR },
        { "2562048H", INT64_MAX }, /* saturates */
        { "99999999H", INT64_MAX },
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        ctx_duration_t d = -1;
        CHECK_MSG(ctx__grpc_timeout_parse(good[i].s, strlen(good[i].s), &d) == 0 &&
                      d == good[i].want,
                  "\"%s\" gave %" PRId64, good[i].s, d);
    }
    static const char *const bad[] = {
        "",   "n",  "1",  "12",   "123456789n", "000000001n", "-1S",  "+1S", " 1S", "1S ",  "1 S",
        "1s", "1h", "1x", "1.5S", "0x1S",       "1\xc2\xb5s", "\x80", "1SS", "S1",  "1e3m", "١S",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ctx_duration_t d = 77;
        CHECK_MSG(ctx__grpc_timeout_parse(bad[i], strlen(bad[i]), &d) == EINVAL && d == 77,
                  "\"%s\" accepted", bad[i]);
    }
    /* The length is obeyed: "1S" inside a longer buffer. */
    ctx_duration_t d = 0;
    CHECK_EQ_INT(ctx__grpc_timeout_parse("1S9999", 2, &d), 0);
    CHECK_EQ_INT(d, CTX_SECOND);
    CHECK_EQ_INT(ctx__grpc_timeout_parse(NULL, 2, &d), EINVAL);
}

/* Writing then reading never shortens a budget, and lengthens it by less
 * than one unit of the one chosen. */
static void test_round_trip(void)
{
    check_rng_t r = check_rng_make(check_seed());
    for (long i = 0; i < check_scale(200000); i++) {
        int shift = (int)check_rng_below(&r, 63);
        ctx_duration_t d = (ctx_duration_t)(check_rng_next(&r) >> (1 + shift));
        if (d <= 0)
            continue;
        char buf[CTX__GRPC_TIMEOUT_SIZE];
        size_t n = ctx__grpc_timeout_format(d, buf);
        CHECK(n >= 2 && n <= 9);
        ctx_duration_t back;
        CHECK_MSG(ctx__grpc_timeout_parse(buf, n, &back) == 0, "%s", buf);
        ctx_duration_t unit = buf[n - 1] == 'n'   ? 1
                              : buf[n - 1] == 'u' ? CTX_MICROSECOND
                              : buf[n - 1] == 'm' ? CTX_MILLISECOND
                              : buf[n - 1] == 'S' ? CTX_SECOND
                              : buf[n - 1] == 'M' ? CTX_MINUTE
                                                  : CTX_HOUR;
        CHECK_MSG(back >= d && back - d < unit, "%" PRId64 " -> %s -> %" PRId64, d, buf, back);
    }
}

int main(void)
{
    test_format();
    test_parse();
    test_round_trip();
    printf("test_grpc_timeout: ok\n");
    return 0;
}
