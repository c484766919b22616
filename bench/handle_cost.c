/* SPDX-License-Identifier: MIT */

/*
 * What a cancel handle costs: the same cancellation, with and without a
 * handle, in one process, in rounds that alternate the shapes.  Linked
 * against the static library, since the shape without a handle cancels the
 * node through the library's internal entry point (a program can only do
 * that through a parent).
 *
 *   handle      ctx_with_cancel(p, &h) + ctx_cancel(h) + ctx_unref
 *   handle_nosite  the same through (ctx_cancel)(h): no cancel site
 *   node_handle ctx_with_cancel(p, &h) + cancel the node itself + unref:
 *               a node with a handle, cancelled without it
 *   no_handle   ctx_with_cancel(p, NULL) + cancel the node itself + unref
 *   child_unref ctx_with_cancel(p, NULL) + ctx_unref
 *   timeout     ctx_with_timeout(p, 1 h, &h) + ctx_cancel(h) + ctx_unref
 *
 * p is a live cancellable parent.  Each figure is CPU time of the calling
 * thread per operation (CLOCK_THREAD_CPUTIME_ID), which a loaded machine
 * disturbs less than wall time; printed as "key<TAB>min<TAB>median<TAB>max"
 * in ns over the rounds, then handle - no_handle per round.
 *
 *   ctx_handle_cost [rounds [ops per round]]     (default 9, 1,000,000)
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { HANDLE, HANDLE_NOSITE, NODE_HANDLE, NO_HANDLE, CHILD_UNREF, TIMEOUT, NSHAPES };
static const char *const names[NSHAPES] = { "handle",    "handle_nosite", "node_handle",
                                            "no_handle", "child_unref",   "timeout" };

static double cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static void run(int shape, ctx_t *p, long n)
{
    for (long i = 0; i < n; i++) {
        ctx_cancel_t *h;
        ctx_t *c;
        switch (shape) {
        case HANDLE:
            c = ctx_with_cancel(p, &h);
            ctx_cancel_at(h, __FILE__, __LINE__, __func__); /* what ctx.h's macro calls */
            break;
        case HANDLE_NOSITE:
            c = ctx_with_cancel(p, &h);
            ctx_cancel(h);
            break;
        case NODE_HANDLE:
            c = ctx_with_cancel(p, &h);
            ctx__cancel(c, CTX_CANCELED, 0, NULL, 0);
            break;
        case NO_HANDLE:
            c = ctx_with_cancel(p, NULL);
            ctx__cancel(c, CTX_CANCELED, 0, NULL, 0);
            break;
        case CHILD_UNREF:
            c = ctx_with_cancel(p, NULL);
            break;
        default:
            c = ctx_with_timeout(p, CTX_HOUR, &h);
            ctx_cancel(h);
            break;
        }
        if (c == NULL) {
            fprintf(stderr, "handle_cost: no memory\n");
            exit(1);
        }
        ctx_unref(c);
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void put(const char *key, double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    printf("%s\t%.2f\t%.2f\t%.2f\n", key, v[0], v[n / 2], v[n - 1]);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 9;
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    if (rounds < 1 || rounds > 1000 || n < 1) {
        fprintf(stderr, "usage: %s [rounds (1-1000) [ops per round]]\n", argv[0]);
        return 2;
    }
    double *t = calloc((size_t)rounds * NSHAPES, sizeof *t);
    double *d = calloc((size_t)rounds, sizeof *d);
    if (t == NULL || d == NULL)
        return 1;
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    run(TIMEOUT, p, 1000); /* the timer thread and structures, made once */
    for (int r = 0; r < rounds; r++) {
        for (int s = 0; s < NSHAPES; s++) {
            double t0 = cpu_ns();
            run(s, p, n);
            t[s * rounds + r] = (cpu_ns() - t0) / (double)n;
        }
        d[r] = t[HANDLE_NOSITE * rounds + r] - t[NO_HANDLE * rounds + r];
    }
    for (int s = 0; s < NSHAPES; s++)
        put(names[s], t + s * rounds, rounds);
    put("handle_nosite-no_handle", d, rounds);
    ctx_cancel(pc);
    ctx_unref(p);
    free(t);
    free(d);
    return 0;
}
