/*
 * traceparent and tracestate, one table per rule of W3C Trace Context:
 * version 00 layout, lowercase hex only, all-zero ids, version ff, trailing
 * data, later versions; tracestate keys and values, 32 members, empty
 * members, duplicates, and truncation to 512 bytes (long members first,
 * then from the end).
 */
#include "check.h"

#include "propagation/wire.h"

#define TRACE "4bf92f3577b34da6a3ce929d0e0e4736"
#define SPAN  "00f067aa0ba902b7"

static void test_traceparent_parse(void)
{
    static const struct {
        const char *s;
        int flags; /* -1: invalid */
    } rows[] = {
        { "00-" TRACE "-" SPAN "-00", 0 },
        { "00-" TRACE "-" SPAN "-01", 1 },
        { "00-" TRACE "-" SPAN "-02", 2 },
        { "00-" TRACE "-" SPAN "-03", 3 },
        { "00-" TRACE "-" SPAN "-ff", 3 },          /* unknown flag bits are not kept */
        { "01-" TRACE "-" SPAN "-01", 1 },          /* a later version, 55 bytes */
        { "fe-" TRACE "-" SPAN "-01-anything", 1 }, /* a later version, more fields */
        { "ff-" TRACE "-" SPAN "-01", -1 },         /* version ff is invalid */
        { "00-" TRACE "-" SPAN "-01-", -1 },        /* version 00 with trailing data */
        { "00-" TRACE "-" SPAN "-01 ", -1 },
        { "01-" TRACE "-" SPAN "-01x", -1 }, /* later version: no dash after flags */
        { "01-" TRACE "-" SPAN "-1", -1 },   /* later version shorter than 55 */
        { "01-00000000000000000000000000000000-" SPAN "-01-x", -1 }, /* zero ids, */
        { "01-" TRACE "-0000000000000000-01-x", -1 },                /* any version */
        { "01-" TRACE "-" SPAN "-0g-x", -1 },
        { "00-" TRACE "-" SPAN "-1", -1 }, /* short */
        { "00-" TRACE "-" SPAN, -1 },
        { "", -1 },
        { "0g-" TRACE "-" SPAN "-01", -1 },
        { "0A-" TRACE "-" SPAN "-01", -1 }, /* uppercase version */
        { "00-4BF92F3577B34DA6A3CE929D0E0E4736-" SPAN "-01", -1 },
        { "00-" TRACE "-00F067AA0BA902B7-01", -1 },
        { "00-" TRACE "-" SPAN "-0A", -1 },
        { "00-00000000000000000000000000000000-" SPAN "-01", -1 },
        { "00-" TRACE "-0000000000000000-01", -1 },
        { "00_" TRACE "-" SPAN "-01", -1 },
        { "00-" TRACE "_" SPAN "-01", -1 },
        { "00-" TRACE "-" SPAN "_01", -1 },
        { "00-4bf92f3577b34da6a3ce929d0e0e473-" SPAN "0-01", -1 }, /* shifted dash */
        { "00- bf92f3577b34da6a3ce929d0e0e4736-" SPAN "-01", -1 },
        { "00-" TRACE "-" SPAN "-\xc3\xa9", -1 },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct ctx__traceparent tp;
        memset(&tp, 0xaa, sizeof tp);
        int rc = ctx__traceparent_parse(rows[i].s, strlen(rows[i].s), &tp);
        if (rows[i].flags < 0) {
            CHECK_MSG(rc == EINVAL, "accepted \"%s\"", rows[i].s);
            continue;
        }
        CHECK_MSG(rc == 0, "refused \"%s\"", rows[i].s);
        CHECK_EQ_INT(tp.flags, rows[i].flags);
        char hex[33];
        ctx__hex(tp.trace_id, 16, hex);
        CHECK_STR(hex, TRACE);
        ctx__hex(tp.span_id, 8, hex);
        CHECK_STR(hex, SPAN);
    }
    /* The given length is obeyed. */
    struct ctx__traceparent tp;
    const char *s = "00-" TRACE "-" SPAN "-01";
    CHECK_EQ_INT(ctx__traceparent_parse(s, 54, &tp), EINVAL);
    CHECK_EQ_INT(ctx__traceparent_parse(NULL, 55, &tp), EINVAL);
}

static void test_traceparent_format(void)
{
    struct ctx__traceparent tp;
    const char *s = "00-" TRACE "-" SPAN "-01";
    CHECK_EQ_INT(ctx__traceparent_parse(s, strlen(s), &tp), 0);
    char out[CTX__TRACEPARENT_LEN + 1];
    ctx__traceparent_format(&tp, out);
    CHECK_STR(out, s);
    /* A later version is written back as version 00. */
    s = "7f-" TRACE "-" SPAN "-03-more";
    CHECK_EQ_INT(ctx__traceparent_parse(s, strlen(s), &tp), 0);
    ctx__traceparent_format(&tp, out);
    CHECK_STR(out, "00-" TRACE "-" SPAN "-03");
}

static char *repeat(char c, size_t n)
{
    static char bufs[4][600];
    static int next;
    char *b = bufs[next++ % 4];
    memset(b, c, n);
    b[n] = '\0';
    return b;
}

static void check_filter(const char *in, const char *want)
{
    char out[CTX__TRACESTATE_MAX + 1];
    size_t n = ctx__tracestate_filter(in, strlen(in), out);
    CHECK_MSG(strcmp(out, want) == 0 && n == strlen(out), "\"%s\" -> \"%s\", want \"%s\"", in, out,
              want);
}

/* The filter keeps the first len bytes of in, which end at a member. */
static void check_filter_prefix(const char *in, size_t len)
{
    char want[CTX__TRACESTATE_MAX + 1];
    CHECK(len <= CTX__TRACESTATE_MAX && (in[len] == ',' || in[len] == '\0'));
    memcpy(want, in, len);
    want[len] = '\0';
    check_filter(in, want);
}

static void test_tracestate(void)
{
    /* Members, white space, empty members. */
    check_filter("", "");
    check_filter("congo=t61rcWkgMzE", "congo=t61rcWkgMzE");
    check_filter("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
                 "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    check_filter(" a=1 ,\tb=2\t", "a=1,b=2");
    check_filter("a=1,,b=2,", "a=1,b=2");
    check_filter(" , ", "");
    /* Keys. */
    check_filter("a-_*/0=1", "a-_*/0=1");
    check_filter("0a=1", "");
    check_filter("A=1", "");
    check_filter("a.b=1", "");
    check_filter("=1", "");
    check_filter("a", "");
    check_filter("1tenant@sys=1", "1tenant@sys=1");
    check_filter("t@s-_*/123456789=1", "t@s-_*/123456789=1"); /* system id of 14 */
    check_filter("t@s-_*/1234567890=1", "");                  /* 15 */
    check_filter("t@1s=1", "");
    check_filter("@s=1", "");
    check_filter("t@=1", "");
    check_filter("t@s@x=1", "");
    char key[300];
    snprintf(key, sizeof key, "a%s=1", repeat('b', 255));
    check_filter(key, key);
    snprintf(key, sizeof key, "a%s=1", repeat('b', 256));
    check_filter(key, "");
    snprintf(key, sizeof key, "%s@s=1", repeat('t', 241));
    check_filter(key, key);
    snprintf(key, sizeof key, "%s@s=1", repeat('t', 242));
    check_filter(key, "");
    /* Values. */
    check_filter("a=hello world", "a=hello world");
    check_filter("a= x", "a= x"); /* a leading space is a chr */
    check_filter("a=", "");
    check_filter("a=x=y", "");
    check_filter("a=\x7f", "");
    check_filter("a=caf\xc3\xa9", "");
    check_filter("a=x\ty", "");
    char val[300];
    snprintf(val, sizeof val, "a=%s", repeat('v', 256));
    check_filter(val, val);
    snprintf(val, sizeof val, "a=%s", repeat('v', 257));
    check_filter(val, "");
    /* Duplicates invalidate the whole header. */
    check_filter("a=1,b=2,a=3", "");
    /* 32 members, not 33. */
    char many[512];
    size_t n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)sprintf(many + n, "%sk%d=%d", i ? "," : "", i, i);
    check_filter(many, many);
    sprintf(many + n, ",k32=32");
    check_filter(many, "");
    /* Truncation to 512 bytes: long members first, then from the end. */
    char in[2048], want[1024];
    n = 0;
    for (int i = 0; i < 5; i++) /* 5 x 120 + 4 commas = 604 */
        n += (size_t)sprintf(in + n, "%sm%d=%s", i ? "," : "", i, repeat('x', 117));
    snprintf(want, sizeof want, "m0=%s,m1=%s,m2=%s,m3=%s", repeat('x', 117), repeat('x', 117),
             repeat('x', 117), repeat('x', 117));
    check_filter(in, want);
    n = 0;
    n += (size_t)sprintf(in + n, "m0=%s", repeat('x', 117));
    n += (size_t)sprintf(in + n, ",long=%s", repeat('y', 200)); /* 205 bytes: over 128 */
    n += (size_t)sprintf(in + n, ",m2=%s", repeat('x', 117));
    n += (size_t)sprintf(in + n, ",m3=%s", repeat('x', 117));
    n += (size_t)sprintf(in + n, ",m4=%s", repeat('x', 117));
    snprintf(want, sizeof want, "m0=%s,m2=%s,m3=%s,m4=%s", repeat('x', 117), repeat('x', 117),
             repeat('x', 117), repeat('x', 117));
    check_filter(in, want);
    /* Two long members: only the later one goes when that is enough, so
     * the leftmost (newest) member survives. */
    n = 0;
    n += (size_t)sprintf(in + n, "first=%s", repeat('y', 200));
    n += (size_t)sprintf(in + n, ",m1=%s", repeat('x', 117));
    n += (size_t)sprintf(in + n, ",last=%s", repeat('z', 200));
    snprintf(want, sizeof want, "first=%s,m1=%s", repeat('y', 200), repeat('x', 117));
    check_filter(in, want);
    /* One member of 513 bytes (the longest the grammar allows) never fits:
     * nothing is left, and the count of what remains must not wrap. */
    snprintf(in, sizeof in, "%s=%s", repeat('k', 256), repeat('v', 256));
    CHECK_EQ_INT(strlen(in), 513);
    check_filter(in, "");
    snprintf(want, sizeof want, "a=1,%s", in);
    check_filter(want, "a=1");
    /* Only short members: dropped from the end, whole. */
    n = 0;
    for (int i = 0; i < 26; i++) /* 26 x 20 + 25 commas = 545 */
        n += (size_t)sprintf(in + n, "%sk%02d=%s", i ? "," : "", i, repeat('s', 16));
    CHECK_EQ_INT(strlen(in), 545);
    check_filter_prefix(in, 24 * 21 - 1);
    /* Exactly 512 bytes pass whole. */
    n = 0;
    for (int i = 0; i < 4; i++)
        n += (size_t)sprintf(in + n, "%sm%d=%s", i ? "," : "", i,
                             i == 3 ? repeat('z', 122) : repeat('x', 125));
    CHECK_EQ_INT(strlen(in), 512);
    check_filter(in, in);
    /* Beyond what is read at all. */
    char *huge = malloc(CTX__TRACESTATE_READ_MAX + 2);
    memset(huge, ' ', CTX__TRACESTATE_READ_MAX + 1);
    memcpy(huge, "a=1", 3);
    huge[CTX__TRACESTATE_READ_MAX + 1] = '\0';
    check_filter(huge, "");
    huge[CTX__TRACESTATE_READ_MAX] = '\0';
    check_filter(huge, "a=1");
    free(huge);
}

int main(void)
{
    test_traceparent_parse();
    test_traceparent_format();
    test_tracestate();
    printf("test_traceparent: ok\n");
    return 0;
}
