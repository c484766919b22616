/* SPDX-License-Identifier: MIT */

/*
 * traceparent and tracestate, one table per rule of W3C Trace Context:
 * version 00 layout, lowercase hex only, all-zero ids, version ff, trailing
 * data, later versions; tracestate keys and values, 32 members, empty
 * members, duplicates, and truncation to 512 bytes (long members first,
 * then from the end).
 */
#include "check.h"
/* check.h first: it sets the feature macros. */
#include "carrier.h"

#include <ctx/propagation.h>
#include <strings.h>

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
        { "00-" TRACE "-" SPAN "-01.", -1 },
        { " 00-" TRACE "-" SPAN "-01", 1 }, /* optional white space at either end */
        { "\t00-" TRACE "-" SPAN "-01", 1 },
        { "00-" TRACE "-" SPAN "-01 ", 1 },
        { "00-" TRACE "-" SPAN "-01\t", 1 },
        { "\t 00-" TRACE "-" SPAN "-01 \t", 1 },
        { " \t ", -1 },
        { "00 -" TRACE "-" SPAN "-01", -1 }, /* but not inside */
        { "00-" TRACE "-" SPAN "- 01", -1 },
        { "\n00-" TRACE "-" SPAN "-01", -1 }, /* only spaces and tabs */
        { "01-" TRACE "-" SPAN "-01x", -1 },  /* later version: no dash after flags */
        { "01-" TRACE "-" SPAN "-1", -1 },    /* later version shorter than 55 */
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
    check_filter("0a=1", "0a=1"); /* a digit may come first */
    check_filter("A=1", "");
    check_filter("a.b=1", "");
    check_filter("=1", "");
    check_filter("a", "");
    /* "@" anywhere but first (Level 2; Level 1 split tenant@system). */
    check_filter("1tenant@sys=1", "1tenant@sys=1");
    check_filter("t@s-_*/123456789=1", "t@s-_*/123456789=1");
    check_filter("t@s-_*/1234567890=1", "t@s-_*/1234567890=1");
    check_filter("t@1s=1", "t@1s=1");
    check_filter("@s=1", "");
    check_filter("t@=1", "t@=1");
    check_filter("t@s@x=1", "t@s@x=1");
    check_filter("t@@s=1", "t@@s=1");
    check_filter("t@S=1", "");
    char key[300];
    snprintf(key, sizeof key, "a%s=1", repeat('b', 255));
    check_filter(key, key);
    snprintf(key, sizeof key, "a%s=1", repeat('b', 256));
    check_filter(key, "");
    snprintf(key, sizeof key, "%s@%s=1", repeat('t', 241), repeat('v', 14));
    check_filter(key, key);
    snprintf(key, sizeof key, "%s@v=1", repeat('t', 242));
    check_filter(key, key);
    snprintf(key, sizeof key, "t@%s=1", repeat('v', 254)); /* 256 in all */
    check_filter(key, key);
    snprintf(key, sizeof key, "t@%s=1", repeat('v', 255));
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
    /* A repeated key keeps its first (leftmost) member. */
    check_filter("a=1,b=2,a=3", "a=1,b=2");
    check_filter("foo=1,foo=1", "foo=1");
    check_filter("foo=1,foo=2", "foo=1");
    /* Repeats count toward the 32 members. */
    char rep[512];
    size_t rn = 0;
    for (int i = 0; i < 33; i++)
        rn += (size_t)sprintf(rep + rn, "%sk%d=%d", i ? "," : "", i % 31, i);
    check_filter(rep, "");
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

/* ---------------------------------------------------------------------------
 * The cases of the W3C Trace Context test suite (w3c/trace-context, test/,
 * run with SPEC_LEVEL=2 STRICT_LEVEL=2), one row per request the suite
 * sends: the request's headers in order, then what a service that
 * propagates through ctx_extract and ctx_inject must send on.  Each header
 * of the request is kept as sent; the carrier joins repeated names with
 * "," as HTTP does, as a carrier over a real HTTP library must.
 */

#define W3C_TRACE "12345678901234567890123456789012"
#define W3C_SPAN  "1234567890123456"
#define W3C_TP    "00-" W3C_TRACE "-" W3C_SPAN "-01"
#define W3C_TP0   "00-" W3C_TRACE "-" W3C_SPAN "-00"

struct w3c_request {
    const char *h[6][2]; /* name, value; ends at a NULL name */
};

static const char *w3c_get(void *store, const char *name)
{
    const struct w3c_request *r = store;
    static char joined[4096];
    joined[0] = '\0';
    bool found = false;
    for (int i = 0; i < 6 && r->h[i][0] != NULL; i++) {
        if (strcasecmp(r->h[i][0], name) != 0)
            continue;
        if (found)
            strcat(joined, ",");
        strcat(joined, r->h[i][1]);
        found = true;
    }
    return found ? joined : NULL;
}

static int w3c_set(void *store, const char *name, const char *value)
{
    headers_t *h = store;
    headers_put(h, name, value);
    return 0;
}

/* Sends r through ctx_extract and ctx_inject; out receives what goes on. */
static void w3c_pass(const struct w3c_request *r, headers_t *out)
{
    ctx_t *root = ctx_background();
    ctx_carrier_t in = { w3c_get, NULL, (void *)r };
    ctx_t *c = ctx_extract(root, &in, NULL);
    CHECK(c != NULL);
    memset(out, 0, sizeof *out);
    ctx_carrier_t o = { NULL, w3c_set, out };
    CHECK_EQ_INT(ctx_inject(c, &o), 0);
    ctx_unref(c);
}

enum { KEEP, NEW };

static void test_w3c_suite(void)
{
    static char key256[300], key257[300], key_at_241[300], key_at_242[300], key_at_15[300];
    static char ts256[300], ts257[300], ts_at_241[300], ts_at_242[300], ts_at_15[300];
    static char want256[320], want_at_241[320], want_at_242[320], want_at_15[320];
    snprintf(key256, sizeof key256, "%s", repeat('z', 256));
    snprintf(key257, sizeof key257, "%s", repeat('z', 257));
    snprintf(key_at_241, sizeof key_at_241, "%s@%s", repeat('t', 241), repeat('v', 14));
    snprintf(key_at_242, sizeof key_at_242, "%s@v", repeat('t', 242));
    snprintf(key_at_15, sizeof key_at_15, "t@%s", repeat('v', 15));
    const char *keys[] = { key256, key257, key_at_241, key_at_242, key_at_15 };
    char *ts[] = { ts256, ts257, ts_at_241, ts_at_242, ts_at_15 };
    char *want[] = { want256, NULL, want_at_241, want_at_242, want_at_15 };
    for (int i = 0; i < 5; i++) {
        snprintf(ts[i], 300, "%s=1", keys[i]);
        if (want[i] != NULL)
            snprintf(want[i], 320, "foo=1,%s=1", keys[i]);
    }
    /* test_tracestate_all_allowed_characters: every key and value byte. */
    static char all_value[128], all_plain[192], all_vendor[224];
    size_t n = 0;
    for (int ch = 0x20; ch <= 0x7e; ch++)
        if (ch != ',' && ch != '=')
            all_value[n++] = (char)ch;
    all_value[n] = '\0';
    snprintf(all_plain, sizeof all_plain, "abcdefghijklmnopqrstuvwxyz0123456789_-*/=%s", all_value);
    snprintf(all_vendor, sizeof all_vendor,
             "abcdefghijklmnopqrstuvwxyz0123456789_-*/@a-z0-9_-*/=%s", all_value);
    static char m32[512];
    const char *m10 = "bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,"
                      "bar09=09,bar10=10";
    const char *m20 = "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,"
                      "bar19=19,bar20=20";
    const char *m30 = "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,"
                      "bar29=29,bar30=30";
    snprintf(m32, sizeof m32, "%s,%s,%s,bar31=31,bar32=32", m10, m20, m30);

    const struct {
        const char *suite_test;
        struct w3c_request r;
        int trace;         /* KEEP: the trace id W3C_TRACE goes on; NEW: a new one */
        const char *state; /* the tracestate sent on, NULL for none */
    } rows[] = {
        { "both_traceparent_and_tracestate_missing", { { { NULL } } }, NEW, NULL },
        { "traceparent_included_tracestate_missing",
          { { { "traceparent", W3C_TP } } },
          KEEP,
          NULL },
        { "traceparent_duplicated",
          { { { "traceparent", "00-12345678901234567890123456789011-" W3C_SPAN "-01" },
              { "traceparent", W3C_TP } } },
          NEW,
          NULL },
        { "traceparent_header_name", { { { "trace-parent", W3C_TP } } }, NEW, NULL },
        { "traceparent_header_name", { { { "trace.parent", W3C_TP } } }, NEW, NULL },
        { "traceparent_header_name_valid_casing", { { { "TraceParent", W3C_TP } } }, KEEP, NULL },
        { "traceparent_header_name_valid_casing", { { { "TrAcEpArEnT", W3C_TP } } }, KEEP, NULL },
        { "traceparent_header_name_valid_casing", { { { "TRACEPARENT", W3C_TP } } }, KEEP, NULL },
        { "traceparent_version_0x00", { { { "traceparent", W3C_TP "." } } }, NEW, NULL },
        { "traceparent_version_0x00",
          { { { "traceparent", W3C_TP "-what-the-future-will-be-like" } } },
          NEW,
          NULL },
        { "traceparent_version_0xcc",
          { { { "traceparent", "cc-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          KEEP,
          NULL },
        { "traceparent_version_0xcc",
          { { { "traceparent",
                "cc-" W3C_TRACE "-" W3C_SPAN "-01-what-the-future-will-be-like" } } },
          KEEP,
          NULL },
        { "traceparent_version_0xcc",
          { { { "traceparent",
                "cc-" W3C_TRACE "-" W3C_SPAN "-01.what-the-future-will-be-like" } } },
          NEW,
          NULL },
        { "traceparent_version_0xff",
          { { { "traceparent", "ff-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_version_illegal_characters",
          { { { "traceparent", ".0-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_version_illegal_characters",
          { { { "traceparent", "0.-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_version_too_long",
          { { { "traceparent", "000-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_version_too_long",
          { { { "traceparent", "0000-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_version_too_short",
          { { { "traceparent", "0-" W3C_TRACE "-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_id_all_zero",
          { { { "traceparent", "00-00000000000000000000000000000000-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_id_illegal_characters",
          { { { "traceparent", "00-.2345678901234567890123456789012-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_id_illegal_characters",
          { { { "traceparent", "00-1234567890123456789012345678901.-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_id_too_long",
          { { { "traceparent", "00-123456789012345678901234567890123-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_id_too_short",
          { { { "traceparent", "00-1234567890123456789012345678901-" W3C_SPAN "-01" } } },
          NEW,
          NULL },
        { "traceparent_parent_id_all_zero",
          { { { "traceparent", "00-" W3C_TRACE "-0000000000000000-01" } } },
          NEW,
          NULL },
        { "traceparent_parent_id_illegal_characters",
          { { { "traceparent", "00-" W3C_TRACE "-.234567890123456-01" } } },
          NEW,
          NULL },
        { "traceparent_parent_id_illegal_characters",
          { { { "traceparent", "00-" W3C_TRACE "-123456789012345.-01" } } },
          NEW,
          NULL },
        { "traceparent_parent_id_too_long",
          { { { "traceparent", "00-" W3C_TRACE "-12345678901234567-01" } } },
          NEW,
          NULL },
        { "traceparent_parent_id_too_short",
          { { { "traceparent", "00-" W3C_TRACE "-123456789012345-01" } } },
          NEW,
          NULL },
        { "traceparent_trace_flags_illegal_characters",
          { { { "traceparent", "00-" W3C_TRACE "-" W3C_SPAN "-.0" } } },
          NEW,
          NULL },
        { "traceparent_trace_flags_illegal_characters",
          { { { "traceparent", "00-" W3C_TRACE "-" W3C_SPAN "-0." } } },
          NEW,
          NULL },
        { "traceparent_trace_flags_too_long",
          { { { "traceparent", "00-" W3C_TRACE "-" W3C_SPAN "-001" } } },
          NEW,
          NULL },
        { "traceparent_trace_flags_too_short",
          { { { "traceparent", "00-" W3C_TRACE "-" W3C_SPAN "-1" } } },
          NEW,
          NULL },
        { "traceparent_ows_handling", { { { "traceparent", " " W3C_TP } } }, KEEP, NULL },
        { "traceparent_ows_handling", { { { "traceparent", "\t" W3C_TP } } }, KEEP, NULL },
        { "traceparent_ows_handling", { { { "traceparent", W3C_TP " " } } }, KEEP, NULL },
        { "traceparent_ows_handling", { { { "traceparent", W3C_TP "\t" } } }, KEEP, NULL },
        { "traceparent_ows_handling", { { { "traceparent", "\t " W3C_TP " \t" } } }, KEEP, NULL },
        { "tracestate_included_traceparent_missing", { { { "tracestate", "foo=1" } } }, NEW, NULL },
        { "tracestate_included_traceparent_missing",
          { { { "tracestate", "foo=1,bar=2" } } },
          NEW,
          NULL },
        { "tracestate_included_traceparent_included",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1,bar=2" } } },
          KEEP,
          "foo=1,bar=2" },
        { "tracestate_header_name",
          { { { "traceparent", W3C_TP0 }, { "trace-state", "foo=1" } } },
          KEEP,
          NULL },
        { "tracestate_header_name",
          { { { "traceparent", W3C_TP0 }, { "trace.state", "foo=1" } } },
          KEEP,
          NULL },
        { "tracestate_header_name_valid_casing",
          { { { "traceparent", W3C_TP0 }, { "TraceState", "foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_header_name_valid_casing",
          { { { "traceparent", W3C_TP0 }, { "TrAcEsTaTe", "foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_header_name_valid_casing",
          { { { "traceparent", W3C_TP0 }, { "TRACESTATE", "foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_empty_header",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "" } } },
          KEEP,
          NULL },
        { "tracestate_empty_header",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", "" } } },
          KEEP,
          "foo=1" },
        { "tracestate_empty_header",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "" }, { "tracestate", "foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_multiple_headers_different_keys",
          { { { "traceparent", W3C_TP0 },
              { "tracestate", "foo=1,bar=2" },
              { "tracestate", "rojo=1,congo=2" },
              { "tracestate", "baz=3" } } },
          KEEP,
          "foo=1,bar=2,rojo=1,congo=2,baz=3" },
        { "tracestate_duplicated_keys",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1,foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_duplicated_keys",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1,foo=2" } } },
          KEEP,
          "foo=1" },
        { "tracestate_duplicated_keys",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", "foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_duplicated_keys",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", "foo=2" } } },
          KEEP,
          "foo=1" },
        { "tracestate_all_allowed_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", all_plain } } },
          KEEP,
          all_plain },
        { "tracestate_all_allowed_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", all_vendor } } },
          KEEP,
          all_vendor },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1 \t , \t bar=2, \t baz=3" } } },
          KEEP,
          "foo=1,bar=2,baz=3" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1\t \t,\t \tbar=2,\t \tbaz=3" } } },
          KEEP,
          "foo=1,bar=2,baz=3" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", " foo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "\tfoo=1" } } },
          KEEP,
          "foo=1" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1 " } } },
          KEEP,
          "foo=1" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1\t" } } },
          KEEP,
          "foo=1" },
        { "tracestate_ows_handling",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "\t foo=1 \t" } } },
          KEEP,
          "foo=1" },
        { "tracestate_key_illegal_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo =1" } } },
          KEEP,
          NULL },
        { "tracestate_key_illegal_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "FOO=1" } } },
          KEEP,
          NULL },
        { "tracestate_key_illegal_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo.bar=1" } } },
          KEEP,
          NULL },
        { "tracestate_key_illegal_vendor_format",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo@=1,bar=2" } } },
          KEEP,
          "foo@=1,bar=2" },
        { "tracestate_key_illegal_vendor_format",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "@foo=1,bar=2" } } },
          KEEP,
          NULL },
        { "tracestate_key_illegal_vendor_format",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo@@bar=1,bar=2" } } },
          KEEP,
          "foo@@bar=1,bar=2" },
        { "tracestate_key_illegal_vendor_format",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo@bar@baz=1,bar=2" } } },
          KEEP,
          "foo@bar@baz=1,bar=2" },
        { "tracestate_member_count_limit",
          { { { "traceparent", W3C_TP0 },
              { "tracestate", m10 },
              { "tracestate", m20 },
              { "tracestate", m30 },
              { "tracestate", "bar31=31,bar32=32" } } },
          KEEP,
          m32 },
        { "tracestate_member_count_limit",
          { { { "traceparent", W3C_TP0 },
              { "tracestate", m10 },
              { "tracestate", m20 },
              { "tracestate", m30 },
              { "tracestate", "bar31=31,bar32=32,bar33=33" } } },
          KEEP,
          NULL },
        { "tracestate_key_length_limit",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", ts256 } } },
          KEEP,
          want256 },
        { "tracestate_key_length_limit",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", ts257 } } },
          KEEP,
          NULL },
        { "tracestate_key_length_limit",
          { { { "traceparent", W3C_TP0 },
              { "tracestate", "foo=1" },
              { "tracestate", ts_at_241 } } },
          KEEP,
          want_at_241 },
        { "tracestate_key_length_limit",
          { { { "traceparent", W3C_TP0 },
              { "tracestate", "foo=1" },
              { "tracestate", ts_at_242 } } },
          KEEP,
          want_at_242 },
        { "tracestate_key_length_limit",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=1" }, { "tracestate", ts_at_15 } } },
          KEEP,
          want_at_15 },
        { "tracestate_value_illegal_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=bar=baz" } } },
          KEEP,
          NULL },
        { "tracestate_value_illegal_characters",
          { { { "traceparent", W3C_TP0 }, { "tracestate", "foo=,bar=3" } } },
          KEEP,
          NULL },
        { "propagates_random_flag",
          { { { "traceparent", "00-" W3C_TRACE "-" W3C_SPAN "-02" } } },
          KEEP,
          NULL },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        headers_t out;
        w3c_pass(&rows[i].r, &out);
        const char *tp = headers_find(&out, "traceparent");
        struct ctx__traceparent got;
        CHECK_MSG(tp != NULL && strlen(tp) == CTX__TRACEPARENT_LEN &&
                      ctx__traceparent_parse(tp, strlen(tp), &got) == 0,
                  "%s (row %zu): no valid traceparent sent on", rows[i].suite_test, i);
        if (tp == NULL) {
            headers_clear(&out);
            continue;
        }
        bool same = strncmp(tp + 3, W3C_TRACE, 32) == 0;
        CHECK_MSG(rows[i].trace == KEEP ? same : !same, "%s (row %zu): traceparent %s",
                  rows[i].suite_test, i, tp);
        /* The parent id sent on is always this service's own span. */
        CHECK_MSG(strncmp(tp + 36, W3C_SPAN, 16) != 0, "%s: parent id passed on unchanged",
                  rows[i].suite_test);
        const char *st = headers_find(&out, "tracestate");
        if (rows[i].state == NULL)
            CHECK_MSG(st == NULL, "%s (row %zu): tracestate \"%s\" sent on", rows[i].suite_test, i,
                      st);
        else
            CHECK_MSG(st != NULL && strcmp(st, rows[i].state) == 0,
                      "%s (row %zu): tracestate \"%s\", want \"%s\"", rows[i].suite_test, i,
                      st != NULL ? st : "(none)", rows[i].state);
        /* A new trace is marked random; a kept one keeps its flags. */
        if (rows[i].trace == NEW)
            CHECK_EQ_INT(got.flags & CTX__TRACE_RANDOM, CTX__TRACE_RANDOM);
        if (strcmp(rows[i].suite_test, "propagates_random_flag") == 0)
            CHECK_EQ_INT(got.flags, CTX__TRACE_RANDOM);
        headers_clear(&out);
    }
}

/* test_multiple_requests_*: three calls out of one request share the trace
 * (kept, or new when the incoming one is valid or absent) and have three
 * different parent ids. */
static void test_w3c_multiple_requests(void)
{
    const struct w3c_request reqs[] = {
        { { { "traceparent", W3C_TP } } },
        { { { NULL } } },
        { { { "traceparent", "00-00000000000000000000000000000000-" W3C_SPAN "-01" } } },
    };
    for (size_t i = 0; i < 3; i++) {
        ctx_carrier_t in = { w3c_get, NULL, (void *)&reqs[i] };
        ctx_t *c = ctx_extract(ctx_background(), &in, NULL);
        CHECK(c != NULL);
        char trace[3][33], parent[3][17];
        for (int k = 0; k < 3; k++) {
            headers_t out;
            memset(&out, 0, sizeof out);
            ctx_carrier_t o = { NULL, w3c_set, &out };
            CHECK_EQ_INT(ctx_inject(c, &o), 0);
            const char *tp = headers_find(&out, "traceparent");
            CHECK(tp != NULL && strlen(tp) == CTX__TRACEPARENT_LEN);
            snprintf(trace[k], sizeof trace[k], "%.32s", tp + 3);
            snprintf(parent[k], sizeof parent[k], "%.16s", tp + 36);
            headers_clear(&out);
        }
        CHECK_STR(trace[0], trace[1]);
        CHECK_STR(trace[1], trace[2]);
        if (i == 0)
            CHECK_STR(trace[0], W3C_TRACE);
        else
            CHECK(strcmp(trace[0], "00000000000000000000000000000000") != 0);
        CHECK(strcmp(parent[0], parent[1]) != 0 && strcmp(parent[1], parent[2]) != 0 &&
              strcmp(parent[0], parent[2]) != 0);
        ctx_unref(c);
    }
}

int main(void)
{
    test_traceparent_parse();
    test_traceparent_format();
    test_tracestate();
    test_w3c_suite();
    test_w3c_multiple_requests();
    printf("test_traceparent: ok\n");
    return 0;
}
