/* SPDX-License-Identifier: MIT */

/*
 * ctx_inject and ctx_extract through a real header store: round trips of
 * deadline, trace and baggage; deadline clamping; done contexts; a carrier
 * whose set fails at each header; NULL arguments; huge and non-ASCII header
 * values; an invalid traceparent never leading to tracestate being read.
 */
#include "check.h"

#include "carrier.h"

#include <sys/wait.h>

static headers_t hdr;

static ctx_carrier_t fresh(void)
{
    headers_clear(&hdr);
    return headers_carrier(&hdr);
}

static void test_null_arguments(void)
{
    ctx_carrier_t c = fresh();
    ctx_carrier_t no_set = { headers_get_, NULL, &hdr };
    ctx_carrier_t no_get = { NULL, headers_set_, &hdr };
    CHECK_EQ_INT(ctx_inject(NULL, &c), EINVAL);
    CHECK_EQ_INT(ctx_inject(ctx_background(), NULL), EINVAL);
    CHECK_EQ_INT(ctx_inject(ctx_background(), &no_set), EINVAL);

    ctx_cancel_t *cancel = (ctx_cancel_t *)&cancel;
    errno = 0;
    CHECK(ctx_extract(NULL, &c, &cancel) == NULL && errno == EINVAL && cancel == NULL);
    errno = 0;
    CHECK(ctx_extract(ctx_background(), NULL, NULL) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(ctx_extract(ctx_background(), &no_get, NULL) == NULL && errno == EINVAL);

    errno = 0;
    CHECK(ctx_with_baggage(NULL, "k", "v") == NULL && errno == EINVAL);
    const char *bad_keys[] = { NULL, "", "a b", "a=b", "a,b", "a;b", "k\x80", "\"q\"" };
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        errno = 0;
        CHECK_MSG(ctx_with_baggage(ctx_background(), bad_keys[i], "v") == NULL && errno == EINVAL,
                  "key %zu", i);
    }
    errno = 0;
    CHECK(ctx_with_baggage(ctx_background(), "k", NULL) == NULL && errno == EINVAL);
    CHECK(ctx_baggage(NULL, "k") == NULL);
    CHECK(ctx_baggage(ctx_background(), NULL) == NULL);
    char id[33];
    CHECK(!ctx_trace_id(NULL, id));
    CHECK(!ctx_trace_id(ctx_background(), id));

    /* Nothing to write for the background: no deadline, trace or baggage. */
    CHECK_EQ_INT(ctx_inject(ctx_background(), &c), 0);
    CHECK_EQ_INT(hdr.n, 0);
}

static void test_round_trip(void)
{
    ctx_carrier_t c = fresh();
    ctx_t *a = ctx_extract(ctx_background(), &c, NULL); /* empty: a new trace */
    CHECK(a != NULL);
    char trace[33], span[17];
    CHECK(ctx_trace_id(a, trace));
    CHECK(ctx_span_id(a, span));
    CHECK_EQ_INT(strlen(trace), 32);
    CHECK(strcmp(trace, "00000000000000000000000000000000") != 0);
    /* Only the first three headers are asked for: no traceparent, so no
     * tracestate. */
    CHECK_MSG(strcmp(hdr.asked, "grpc-timeout;traceparent;baggage;") == 0, "%s", hdr.asked);

    ctx_t *b = ctx_with_timeout(a, 2 * CTX_SECOND, NULL);
    ctx_t *v1 = ctx_with_baggage(b, "request-id", "42");
    ctx_t *v2 = ctx_with_baggage(v1, "tenant", "a b,c;d%\xc3\xa9");
    CHECK(v1 != NULL && v2 != NULL);
    CHECK_STR(ctx_baggage(v2, "request-id"), "42");
    CHECK_STR(ctx_baggage(v2, "tenant"), "a b,c;d%\xc3\xa9");
    CHECK(ctx_baggage(v1, "tenant") == NULL);
    char t2[33];
    CHECK(ctx_trace_id(v2, t2) && strcmp(t2, trace) == 0); /* inherited */

    c = fresh();
    ctx_time_t before = ctx_now();
    CHECK_EQ_INT(ctx_inject(v2, &c), 0);
    CHECK_EQ_INT(hdr.n, 3);
    const char *gt = headers_find(&hdr, "grpc-timeout");
    CHECK(gt != NULL);
    /* Just under 2 s in microseconds: "19999xxu" or so. */
    CHECK_MSG(gt[strlen(gt) - 1] == 'u', "%s", gt);
    long long us = atoll(gt);
    CHECK_MSG(us <= 2000000 && us > 1000000, "%s", gt);
    const char *tp = headers_find(&hdr, "traceparent");
    CHECK(tp != NULL && strlen(tp) == 55);
    CHECK(strncmp(tp, "00-", 3) == 0 && strncmp(tp + 3, trace, 32) == 0);
    CHECK(strncmp(tp + 36, span, 16) != 0); /* a fresh span for the call */
    CHECK_STR(tp + 52, "-02");
    CHECK_STR(headers_find(&hdr, "baggage"), "request-id=42,tenant=a%20b%2Cc%3Bd%25%C3%A9");
    char first_span[17];
    memcpy(first_span, tp + 36, 16);
    first_span[16] = '\0';

    /* The other side: its deadline is the written budget from the moment
     * it extracts, not merely some deadline. */
    ctx_time_t t0 = ctx_now();
    ctx_t *d = ctx_extract(ctx_background(), &c, NULL);
    ctx_time_t t1 = ctx_now();
    CHECK(d != NULL);
    ctx_time_t dl;
    CHECK(ctx_deadline(d, &dl));
    CHECK_MSG(dl >= t0 + us * CTX_MICROSECOND && dl <= t1 + us * CTX_MICROSECOND,
              "deadline %" PRId64 " ns after extract for a budget of %s", (int64_t)(dl - t0), gt);
    CHECK(dl > before);
    char t3[33], s3[17];
    CHECK(ctx_trace_id(d, t3) && strcmp(t3, trace) == 0);
    CHECK(ctx_span_id(d, s3) && strcmp(s3, first_span) == 0);
    CHECK_STR(ctx_baggage(d, "request-id"), "42");
    CHECK_STR(ctx_baggage(d, "tenant"), "a b,c;d%\xc3\xa9");
    char desc[256];
    ctx_describe(d, desc, sizeof desc);
    CHECK_MSG(strstr(desc, "Extract(trace ") != NULL, "%s", desc);

    /* A second inject: same trace, another span. */
    c = fresh();
    CHECK_EQ_INT(ctx_inject(v2, &c), 0);
    CHECK(strncmp(headers_find(&hdr, "traceparent") + 36, first_span, 16) != 0);

    /* Extracted baggage is passed on again, with what is bound below it;
     * the nearest binding of a key wins and is written once. */
    ctx_t *e = ctx_with_baggage(d, "request-id", "43");
    c = fresh();
    CHECK_EQ_INT(ctx_inject(e, &c), 0);
    CHECK_STR(headers_find(&hdr, "baggage"), "tenant=a%20b%2Cc%3Bd%25%C3%A9,request-id=43");

    ctx_unref(e);
    ctx_unref(d);
    ctx_unref(v2);
    ctx_unref(v1);
    ctx_unref(b);
    ctx_unref(a);
    headers_clear(&hdr);
}

static void test_deadline_clamping(void)
{
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "grpc-timeout", "10S");
    ctx_t *p = ctx_with_timeout(ctx_background(), 100 * CTX_MILLISECOND, NULL);
    ctx_time_t pd, d;
    CHECK(ctx_deadline(p, &pd));
    ctx_t *x = ctx_extract(p, &c, NULL);
    CHECK(ctx_deadline(x, &d) && d == pd); /* the parent's is earlier */
    ctx_unref(x);

    headers_put(&hdr, "grpc-timeout", "50m");
    ctx_t *q = ctx_with_timeout(ctx_background(), 10 * CTX_SECOND, NULL);
    ctx_time_t before = ctx_now();
    x = ctx_extract(q, &c, NULL);
    ctx_time_t after = ctx_now();
    CHECK(ctx_deadline(x, &d));
    CHECK(d >= before + 50 * CTX_MILLISECOND && d <= after + 50 * CTX_MILLISECOND);
    /* The incoming deadline ends the request, not the parent. */
    CHECK_EQ_INT(ctx_wait(x, CTX_FOREVER), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_err(q), 0);
    ctx_unref(x);

    /* A zero budget: done at once, as in grpc-go. */
    headers_put(&hdr, "grpc-timeout", "0n");
    x = ctx_extract(q, &c, NULL);
    CHECK_EQ_INT(ctx_err(x), CTX_DEADLINE_EXCEEDED);
    ctx_unref(x);

    /* Malformed: ignored, no deadline. */
    const char *bad[] = { "",    "1",          "m",  "-1S",  "+1S",   " 1S",
                          "1S ", "123456789n", "1x", "1.5S", "\3771S" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        headers_put(&hdr, "grpc-timeout", bad[i]);
        x = ctx_extract(ctx_background(), &c, NULL);
        CHECK_MSG(x != NULL && !ctx_deadline(x, NULL), "grpc-timeout \"%s\"", bad[i]);
        ctx_unref(x);
    }
    ctx_unref(q);
    ctx_unref(p);
    headers_clear(&hdr);
}

/* A budget too large for int64_t nanoseconds saturates: a deadline far
 * away, never one that wrapped into the past. */
static void test_deadline_saturates(void)
{
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "grpc-timeout", "99999999H");
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    ctx_time_t d;
    CHECK(x != NULL && ctx_deadline(x, &d));
    CHECK(d > ctx_now() + 100000 * CTX_HOUR);
    CHECK_EQ_INT(ctx_err(x), 0);
    /* And it goes out again as the largest budget grpc-go would write. */
    ctx_carrier_t o = { headers_get_, headers_set_, &(headers_t){ 0 } };
    CHECK_EQ_INT(ctx_inject(x, &o), 0);
    const char *gt = headers_find(o.headers, "grpc-timeout");
    CHECK_MSG(gt != NULL && gt[strlen(gt) - 1] == 'H' && strlen(gt) <= 9, "%s", gt);
    headers_clear(o.headers);
    ctx_unref(x);
    headers_clear(&hdr);
}

/* Incoming baggage hides a key bound above the extract, without changing
 * the parent; properties and duplicate keys (the last wins) travel on. */
static void test_baggage_layers(void)
{
    ctx_t *p = ctx_with_baggage(ctx_background(), "tenant", "parent");
    ctx_t *q = ctx_with_baggage(p, "only-above", "1");
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "baggage", "tenant=incoming;ttl=3, k=first , k=last;p;q=%25");
    ctx_t *x = ctx_extract(q, &c, NULL);
    CHECK(x != NULL);
    CHECK_STR(ctx_baggage(x, "tenant"), "incoming");
    CHECK_STR(ctx_baggage(x, "only-above"), "1");
    CHECK_STR(ctx_baggage(x, "k"), "last");
    CHECK_STR(ctx_baggage(q, "tenant"), "parent");
    c = fresh();
    CHECK_EQ_INT(ctx_inject(x, &c), 0);
    CHECK_STR(headers_find(&hdr, "baggage"), "only-above=1,tenant=incoming;ttl=3,k=last;p;q=%25");

    /* A malformed header adds nothing, and the baggage above still goes. */
    c = fresh();
    headers_put(&hdr, "baggage", "good=1,bad");
    ctx_t *y = ctx_extract(q, &c, NULL);
    CHECK(y != NULL && ctx_baggage(y, "good") == NULL);
    c = fresh();
    CHECK_EQ_INT(ctx_inject(y, &c), 0);
    CHECK_STR(headers_find(&hdr, "baggage"), "tenant=parent,only-above=1");
    ctx_unref(y);
    ctx_unref(x);
    ctx_unref(q);
    ctx_unref(p);
    headers_clear(&hdr);
}

/* tracestate goes out as it came in once filtered: dropped whole when it
 * breaks the grammar (the trace itself kept), truncated from the end when
 * long. */
static void test_tracestate_passthrough(void)
{
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /* 620 bytes; without the 204-byte member, 415 fit. */
    char long_ts[1024], want[600];
    snprintf(long_ts, sizeof long_ts, "m0=%0100d,big=%0200d,m1=%0100d,m2=%0100d,m3=%0100d", 0, 0, 0,
             0, 0);
    snprintf(want, sizeof want, "m0=%0100d,m1=%0100d,m2=%0100d,m3=%0100d", 0, 0, 0, 0);
    const struct {
        const char *in, *out; /* out NULL: no tracestate sent */
    } rows[] = {
        { " congo=t61rcWkgMzE , rojo=00f067aa0ba902b7", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" },
        { "congo=t61rcWkgMzE,Bad=1", NULL },
        { "a=1,a=2", "a=1" }, /* a repeated key keeps its first member */
        { long_ts, want },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        ctx_carrier_t c = fresh();
        headers_put(&hdr, "traceparent", tp);
        headers_put(&hdr, "tracestate", rows[i].in);
        ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
        char id[33];
        CHECK(x != NULL && ctx_trace_id(x, id));
        CHECK_STR(id, "4bf92f3577b34da6a3ce929d0e0e4736");
        c = fresh();
        CHECK_EQ_INT(ctx_inject(x, &c), 0);
        const char *ts = headers_find(&hdr, "tracestate");
        if (rows[i].out == NULL)
            CHECK_MSG(ts == NULL, "row %zu sent tracestate %s", i, ts);
        else
            CHECK_MSG(ts != NULL && strcmp(ts, rows[i].out) == 0, "row %zu sent %s", i,
                      ts != NULL ? ts : "nothing");
        ctx_unref(x);
    }
    headers_clear(&hdr);
}

static void test_cancel_handle(void)
{
    ctx_carrier_t c = fresh();
    for (int with_timeout = 0; with_timeout < 2; with_timeout++) {
        if (with_timeout)
            headers_put(&hdr, "grpc-timeout", "1H");
        ctx_cancel_t *pc, *xc = NULL;
        ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
        ctx_t *x = ctx_extract(p, &c, &xc);
        CHECK(x != NULL && xc != NULL);
        CHECK_EQ_INT(ctx_deadline(x, NULL), with_timeout);
        ctx_cancel(xc);
        CHECK_EQ_INT(ctx_err(x), CTX_CANCELED);
        CHECK_EQ_INT(ctx_err(p), 0);
        ctx_unref(x);
        /* And the parent's cancel reaches an extracted child. */
        x = ctx_extract(p, &c, NULL);
        ctx_cancel(pc);
        CHECK_EQ_INT(ctx_err(x), CTX_CANCELED);
        ctx_unref(x);
        ctx_unref(p);
    }
    headers_clear(&hdr);
}

static void test_done_writes_nothing(void)
{
    ctx_carrier_t c = fresh();
    ctx_cancel_t *cancel;
    ctx_t *x = ctx_extract(ctx_background(), &c, &cancel);
    ctx_t *t = ctx_with_timeout(x, CTX_HOUR, NULL);
    ctx_t *v = ctx_with_baggage(t, "k", "v");
    ctx_cancel(cancel);
    CHECK_EQ_INT(ctx_inject(v, &c), CTX_CANCELED);
    CHECK_EQ_INT(hdr.n, 0);
    CHECK_EQ_INT(hdr.sets, 0);
    ctx_unref(v);
    ctx_unref(t);
    ctx_unref(x);

    ctx_t *past = ctx_with_timeout(ctx_background(), -CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_inject(past, &c), CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(hdr.sets, 0);
    ctx_unref(past);

    /* A deadline that has passed while its timer may not have fired yet:
     * refused all the same, never sent as a budget of "0n". */
    for (int i = 0; i < 100; i++) {
        ctx_t *soon = ctx_with_timeout(ctx_background(), 20 * CTX_MICROSECOND, NULL);
        ctx_time_t dl;
        CHECK(ctx_deadline(soon, &dl));
        while (ctx_now() <= dl) {
        }
        CHECK_EQ_INT(ctx_inject(soon, &c), CTX_DEADLINE_EXCEEDED);
        CHECK_EQ_INT(hdr.sets, 0);
        ctx_unref(soon);
    }
    headers_clear(&hdr);
}

static void test_set_failure(void)
{
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    headers_put(&hdr, "tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    ctx_t *t = ctx_with_timeout(x, CTX_HOUR, NULL);
    ctx_t *v = ctx_with_baggage(t, "k", "v");

    /* The complete set, for reference. */
    c = fresh();
    CHECK_EQ_INT(ctx_inject(v, &c), 0);
    CHECK_EQ_INT(hdr.n, 4);
    CHECK_STR(headers_find(&hdr, "tracestate"), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    CHECK_STR(headers_find(&hdr, "baggage"), "k=v");
    const char *order[4] = { "grpc-timeout", "traceparent", "tracestate", "baggage" };
    for (int i = 0; i < 4; i++)
        CHECK_STR(hdr.name[i], order[i]);

    for (int k = 1; k <= 4; k++) {
        c = fresh();
        hdr.fail_at = k;
        hdr.fail_code = EMSGSIZE;
        CHECK_EQ_INT(ctx_inject(v, &c), EMSGSIZE);
        /* The headers before the failing one were written whole; nothing
         * after it was tried. */
        CHECK_EQ_INT(hdr.n, k - 1);
        CHECK_EQ_INT(hdr.sets, k);
        for (int i = 0; i < k - 1; i++)
            CHECK_STR(hdr.name[i], order[i]);
        if (k > 2)
            CHECK(strlen(headers_find(&hdr, "traceparent")) == 55);
    }
    ctx_unref(v);
    ctx_unref(t);
    ctx_unref(x);
    headers_clear(&hdr);
}

static void test_invalid_traceparent(void)
{
    const char *bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",         /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",       /* 00 + more */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",        /* uppercase */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",        /* zero trace */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",        /* zero parent */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",        /* version ff */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",       /* no dash */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",        /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",        /* flags */
        "\303\2510-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", /* not ASCII */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ctx_carrier_t c = fresh();
        headers_put(&hdr, "traceparent", bad[i]);
        headers_put(&hdr, "tracestate", "congo=t61rcWkgMzE");
        ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
        CHECK(x != NULL);
        char id[33];
        CHECK(ctx_trace_id(x, id));
        CHECK_MSG(strcmp(id, "4bf92f3577b34da6a3ce929d0e0e4736") != 0, "case %zu", i);
        CHECK_MSG(strstr(hdr.asked, "tracestate") == NULL, "case %zu read tracestate", i);
        ctx_unref(x);
    }
    /* A later version with more fields is read as version 00. */
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "traceparent",
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-holds");
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    char id[33];
    CHECK(ctx_trace_id(x, id) && strcmp(id, "4bf92f3577b34da6a3ce929d0e0e4736") == 0);
    c = fresh();
    CHECK_EQ_INT(ctx_inject(x, &c), 0);
    const char *tp = headers_find(&hdr, "traceparent");
    CHECK(strncmp(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36) == 0);
    CHECK_STR(tp + 52, "-03");
    ctx_unref(x);
    headers_clear(&hdr);
}

/* Huge and non-ASCII values for every header: ignored, bounded, no crash. */
static void test_huge_and_binary(void)
{
    size_t big = 1 << 20;
    char *s = malloc(big + 1);
    CHECK(s != NULL);
    const char fills[] = { 'a', '\x80', '\xff', ',', '=', '%', ' ' };
    for (size_t f = 0; f < sizeof fills; f++) {
        memset(s, fills[f], big);
        s[big] = '\0';
        ctx_carrier_t c = fresh();
        headers_put(&hdr, "grpc-timeout", s);
        headers_put(&hdr, "traceparent", s);
        headers_put(&hdr, "tracestate", s);
        headers_put(&hdr, "baggage", s);
        ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
        CHECK(x != NULL);
        CHECK(!ctx_deadline(x, NULL));
        CHECK(ctx_baggage(x, "a") == NULL);
        c = fresh();
        CHECK_EQ_INT(ctx_inject(x, &c), 0);
        CHECK_EQ_INT(hdr.n, 1); /* the new trace only */
        ctx_unref(x);
    }

    /* A huge valid baggage header: the members that fit in 8192 bytes and
     * 64 members, whole. */
    size_t n = 0;
    for (int i = 0; n + 32 < big; i++)
        n += (size_t)sprintf(s + n, "%sk%d=%d", i ? "," : "", i, i);
    ctx_carrier_t c = fresh();
    headers_put(&hdr, "baggage", s);
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    CHECK_STR(ctx_baggage(x, "k0"), "0");
    CHECK_STR(ctx_baggage(x, "k63"), "63");
    CHECK(ctx_baggage(x, "k64") == NULL);
    ctx_unref(x);

    /* Long members: 8192 bytes hold 7 members of 1100 bytes and 1 of 400;
     * the ninth member is cut by the limit and dropped whole. */
    char *v = malloc(1100);
    memset(v, 'x', 1099);
    v[1099] = '\0';
    n = 0;
    for (int i = 0; i < 12; i++)
        n += (size_t)sprintf(s + n, "%sm%02d=%.*s", i ? "," : "", i, i == 7 ? 400 : 1090, v);
    c = fresh();
    headers_put(&hdr, "baggage", s);
    x = ctx_extract(ctx_background(), &c, NULL);
    for (int i = 0; i < 12; i++) {
        char key[8];
        sprintf(key, "m%02d", i);
        CHECK_MSG((ctx_baggage(x, key) != NULL) == (i < 8), "member %d", i);
    }
    c = fresh();
    CHECK_EQ_INT(ctx_inject(x, &c), 0);
    CHECK(strlen(headers_find(&hdr, "baggage")) <= 8192);
    ctx_unref(x);
    free(v);
    free(s);
    headers_clear(&hdr);
}

/* Baggage bound by hand beyond the limits: inject drops whole members,
 * keeping the nearest. */
static void test_inject_limits(void)
{
    ctx_t *c = ctx_ref(ctx_background());
    for (int i = 0; i < 100; i++) {
        char k[16], val[16];
        sprintf(k, "k%d", i);
        sprintf(val, "%d", i);
        ctx_t *n = ctx_with_baggage(c, k, val);
        ctx_unref(c);
        c = n;
    }
    ctx_carrier_t car = fresh();
    CHECK_EQ_INT(ctx_inject(c, &car), 0);
    const char *b = headers_find(&hdr, "baggage");
    CHECK(strncmp(b, "k36=36,", 7) == 0);
    CHECK(strstr(b, "k35=") == NULL);
    CHECK(strstr(b, ",k99=99") != NULL);
    ctx_unref(c);

    /* One value that alone is over the byte limit is dropped whole. */
    char *big = malloc(9000);
    memset(big, 'v', 8999);
    big[8999] = '\0';
    ctx_t *a = ctx_with_baggage(ctx_background(), "small", "1");
    ctx_t *z = ctx_with_baggage(a, "big", big);
    car = fresh();
    CHECK_EQ_INT(ctx_inject(z, &car), 0);
    CHECK(headers_find(&hdr, "baggage") == NULL);
    ctx_unref(z);
    ctx_unref(a);
    free(big);
    headers_clear(&hdr);
}

/* Many threads inject from and extract under one shared context: no race
 * (TSan), and no span id is handed out twice. */
#define THREADS 4
#define ROUNDS  2000
static ctx_t *shared;
static char spans[THREADS * ROUNDS][17];

static void *worker(void *arg)
{
    int me = (int)(intptr_t)arg;
    headers_t h = { 0 };
    ctx_carrier_t c = headers_carrier(&h);
    for (int i = 0; i < ROUNDS; i++) {
        CHECK_EQ_INT(ctx_inject(shared, &c), 0);
        const char *tp = headers_find(&h, "traceparent");
        CHECK(tp != NULL);
        memcpy(spans[me * ROUNDS + i], tp + 36, 16);
        spans[me * ROUNDS + i][16] = '\0';
        ctx_t *x = ctx_extract(shared, &c, NULL);
        ctx_t *v = ctx_with_baggage(x, "worker", "w");
        CHECK_STR(ctx_baggage(v, "request-id"), "r-1");
        CHECK_STR(ctx_baggage(v, "worker"), "w");
        ctx_unref(v);
        ctx_unref(x);
    }
    headers_clear(&h);
    return NULL;
}

static int by_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_concurrent(void)
{
    ctx_carrier_t c = fresh();
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    shared = ctx_with_baggage(x, "request-id", "r-1");
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        check_thread_start(&t[i], worker, (void *)(intptr_t)i);
    for (int i = 0; i < THREADS; i++)
        check_thread_join(t[i]);
    qsort(spans, THREADS * ROUNDS, sizeof spans[0], by_str);
    for (int i = 1; i < THREADS * ROUNDS; i++)
        CHECK_MSG(strcmp(spans[i - 1], spans[i]) != 0, "span id %s given twice", spans[i]);
    ctx_unref(shared);
    ctx_unref(x);
    headers_clear(&hdr);
}

/* A forked child must not hand out the span ids its parent will. */
static void test_fork_ids(void)
{
    ctx_carrier_t c = fresh();
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    CHECK_EQ_INT(ctx_inject(x, &c), 0); /* the parent's pool is filled */
    int p[2];
    CHECK(pipe(p) == 0);
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        headers_t h = { 0 };
        ctx_carrier_t hc = headers_carrier(&h);
        int ok = ctx_inject(x, &hc) == 0 && write(p[1], headers_find(&h, "traceparent"), 55) == 55;
        _exit(ok ? 0 : 1);
    }
    CHECK_EQ_INT(ctx_inject(x, &c), 0);
    char child[56] = { 0 };
    CHECK_EQ_INT(read(p[0], child, 55), 55);
    int st;
    CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    close(p[0]);
    close(p[1]);
    const char *mine = headers_find(&hdr, "traceparent");
    CHECK(strncmp(mine, child, 36) == 0);              /* the same trace */
    CHECK_MSG(strncmp(mine + 36, child + 36, 16) != 0, /* different spans */
              "parent and child both drew span %.16s", mine + 36);
    ctx_unref(x);
    headers_clear(&hdr);
}

int main(void)
{
    test_null_arguments();
    test_round_trip();
    test_deadline_clamping();
    test_deadline_saturates();
    test_baggage_layers();
    test_tracestate_passthrough();
    test_cancel_handle();
    test_done_writes_nothing();
    test_set_failure();
    test_invalid_traceparent();
    test_huge_and_binary();
    test_inject_limits();
    test_concurrent();
    test_fork_ids();
    headers_clear(&hdr);
    printf("test_propagation: ok\n");
    return 0;
}
