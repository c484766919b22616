/* SPDX-License-Identifier: MIT */

/*
 * Allocation failure at every site of propagation, SQLite style: the
 * scenario below runs again and again with allocation number N refused
 * (once, then "sticky": every allocation from N on), for N = 0, 1, 2, ...
 * until a run completes without a refusal.  Every run must see each
 * refusal surface as NULL + ENOMEM from ctx_extract or ctx_with_baggage,
 * leave the parent untouched and usable, keep ctx_inject allocation-free,
 * and leak nothing: the counting allocator holds exactly what it held
 * before the run.
 */
#include "check.h"

#include "carrier.h"

static const char *const incoming[][2] = {
    { "grpc-timeout", "1500m" },
    { "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" },
    { "tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" },
    { "baggage", "request-id=42,tenant=acme;ttl=3,user=%C3%A9" },
};

/* One run; returns the number of steps that failed. */
static int scenario(ctx_t *parent)
{
    int failed = 0;
    headers_t in = { 0 }, out = { 0 };
    for (size_t i = 0; i < sizeof incoming / sizeof incoming[0]; i++)
        headers_put(&in, incoming[i][0], incoming[i][1]);
    ctx_carrier_t cin = headers_carrier(&in), cout = headers_carrier(&out);

    ctx_cancel_t *cancel = NULL;
    errno = 0;
    ctx_t *x = ctx_extract(parent, &cin, &cancel);
    if (x == NULL) {
        CHECK_EQ_INT(errno, ENOMEM);
        CHECK_NULL(cancel);
        failed++;
    } else {
        CHECK_NOT_NULL(cancel);
        CHECK_STR(ctx_baggage(x, "user"), "\xc3\xa9");
        CHECK(ctx_deadline(x, NULL));
    }

    ctx_t *base = x != NULL ? x : parent;
    errno = 0;
    ctx_t *v = ctx_with_baggage(base, "request-id", "43");
    if (v == NULL) {
        CHECK_EQ_INT(errno, ENOMEM);
        failed++;
    } else {
        CHECK_STR(ctx_baggage(v, "request-id"), "43");
    }

    /* Inject allocates nothing, whatever the allocator does. */
    ctx_t *top = v != NULL ? v : base;
    long total = check_alloc_total();
    CHECK_EQ_INT(ctx_inject(top, &cout), 0);
    CHECK_EQ_INT(check_alloc_total(), total);
    if (x != NULL) {
        CHECK_NOT_NULL(headers_find(&out, "traceparent"));
        CHECK_STR(headers_find(&out, "tracestate"), "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
    }

    /* The other side of the hop. */
    errno = 0;
    ctx_t *y = ctx_extract(ctx_background(), &cout, NULL);
    if (y == NULL) {
        CHECK_EQ_INT(errno, ENOMEM);
        failed++;
    } else if (v != NULL) {
        CHECK_STR(ctx_baggage(y, "request-id"), "43");
    }

    if (cancel != NULL)
        ctx_cancel(cancel);
    ctx_unref(y);
    ctx_unref(v);
    ctx_unref(x);
    CHECK_EQ_INT(ctx_err(parent), 0); /* never changed */
    CHECK(ctx_baggage(parent, "request-id") == NULL);
    headers_clear(&in);
    headers_clear(&out);
    return failed;
}

int main(void)
{
    check_alloc_install();
    ctx_t *parent = ctx_with_cancel(ctx_background(), NULL);
    /* One clean run first: the timer thread and heap exist from then on,
     * as they would in a service. */
    CHECK_EQ_INT(scenario(parent), 0);

    long runs = 0, refusals = 0;
    for (long n = 0;; n++) {
        bool refused_any = false;
        for (int sticky = 0; sticky < 2; sticky++) {
            long live = check_alloc_live();
            long before = check_alloc_failed();
            check_alloc_fail_at(n, sticky);
            int failed = scenario(parent);
            check_alloc_fail_none();
            long refused = check_alloc_failed() - before;
            CHECK_MSG(check_alloc_live() == live, "N=%ld sticky=%d: %ld blocks leaked", n, sticky,
                      check_alloc_live() - live);
            /* A refusal is always reported, and only a refusal fails. */
            CHECK_MSG((failed > 0) == (refused > 0), "N=%ld sticky=%d: %d failed, %ld refused", n,
                      sticky, failed, refused);
            refusals += refused;
            runs++;
            if (!sticky)
                refused_any = refused > 0;
        }
        if (!refused_any)
            break;
        CHECK(n < 1000);
    }
    ctx_unref(parent);
    printf("test_wire_alloc_fail: %ld runs, %ld refused allocations\n", runs, refusals);
    CHECK(refusals >= 6); /* extract: block, node, timer; baggage: block, node; extract again */
    return 0;
}
