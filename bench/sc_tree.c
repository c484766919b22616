/* SPDX-License-Identifier: MIT */

/*
 * sc_tree: the tree benchmarks that tracking must not slow down, built
 * twice by bench/CMakeLists.txt: against this tree's libctx (where the
 * creation calls go through ctx.h's tracking macros and ctx_cancel through
 * the cancel-site macro) and against the library of the commit this branch
 * started from ("main").  Run by bench/sc.py; prints "name ns" lines.
 *
 *   tree_cancel  ctx_with_cancel + ctx_cancel + ctx_unref of a child of a
 *                live parent
 *   tree_value   ctx_with_value + ctx_unref
 *   tree_cancel_nosite  as tree_cancel, but cancelling through the plain
 *                function (ctx_cancel), which records no site: what is
 *                left is the creation macro's tracking test
 *
 * Each figure is the best of 5 runs of N operations (the least disturbed
 * by the other work on a shared machine).
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static const ctx_key_t key = { .name = "k" };
static int value;

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    ctx_t *parent = ctx_with_cancel(ctx_background(), NULL);
    double best_c = 1e30, best_v = 1e30, best_n = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ns();
        for (long i = 0; i < n; i++) {
            ctx_cancel_t *h;
            ctx_t *c = ctx_with_cancel(parent, &h);
            ctx_cancel(h);
            ctx_unref(c);
        }
        double t1 = now_ns();
        for (long i = 0; i < n; i++)
            ctx_unref(ctx_with_value(parent, &key, &value, NULL));
        double t2 = now_ns();
        for (long i = 0; i < n; i++) {
            ctx_cancel_t *h;
            ctx_t *c = ctx_with_cancel(parent, &h);
            (ctx_cancel)(h);
            ctx_unref(c);
        }
        double t3 = now_ns();
        if ((t3 - t2) / (double)n < best_n)
            best_n = (t3 - t2) / (double)n;
        if ((t1 - t0) / (double)n < best_c)
            best_c = (t1 - t0) / (double)n;
        if ((t2 - t1) / (double)n < best_v)
            best_v = (t2 - t1) / (double)n;
    }
    printf("tree_cancel %.2f\ntree_value %.2f\ntree_cancel_nosite %.2f\n", best_c, best_v, best_n);
    ctx_unref(parent);
    return 0;
}
