/* SPDX-License-Identifier: MIT */

/*
 * bench/wire.c: ctx_inject and ctx_extract of a context with a deadline, a
 * trace and 3 baggage entries, beside a Go program (bench/wire_go/wire.go)
 * that does the same by hand with net/http headers, in rounds, in one
 * invocation.  Prints a Markdown table (min / median / max of the rounds,
 * allocations per call, ratios) and, given --out, writes it to that file
 * too (make bench gives a file in the build directory).
 *
 *   wire [--rounds R] [--n CALLS] [--go GO --go-src DIR] [--out FILE]
 *
 * Allocations are counted two ways.  "mallocs" counts the malloc calls the
 * library makes with its default allocator: the program is linked with
 * -Wl,--wrap=malloc, which sends the library's references to malloc
 * through a counter (freed nodes come back from a per-thread cache, so
 * this is what a service pays).  "allocator calls" installs a counting
 * allocator with ctx_replace_allocator, which turns the node cache off, so
 * every node and block is counted.
 */
#define _GNU_SOURCE
#include <ctx.h>
#include <ctx/propagation.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * Counting malloc calls (GNU ld's --wrap).
 */

void *__real_malloc(size_t size);
void *__wrap_malloc(size_t size);
static atomic_long mallocs;

void *__wrap_malloc(size_t size)
{
    atomic_fetch_add_explicit(&mallocs, 1, memory_order_relaxed);
    return __real_malloc(size);
}

static atomic_long allocator_calls;

static void *counting_malloc(size_t size)
{
    atomic_fetch_add_explicit(&allocator_calls, 1, memory_order_relaxed);
    return __real_malloc(size);
}

/* ---------------------------------------------------------------------------
 * A carrier over fixed buffers: no allocation of its own.
 */

#define NHDR 4
static const char *const names[NHDR] = { "grpc-timeout", "traceparent", "tracestate", "baggage" };

struct store {
    char value[NHDR][8200];
    bool has[NHDR];
};

static int slot(const char *name)
{
    for (int i = 0; i < NHDR; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

static const char *get(void *h, const char *name)
{
    struct store *s = h;
    int i = slot(name);
    return i >= 0 && s->has[i] ? s->value[i] : NULL;
}

static int set(void *h, const char *name, const char *value)
{
    struct store *s = h;
    int i = slot(name);
    size_t n = strlen(value);
    if (i < 0 || n >= sizeof s->value[i])
        return EMSGSIZE;
    memcpy(s->value[i], value, n + 1);
    s->has[i] = true;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Measurements
 */

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static struct store in_store, out_store;
static ctx_carrier_t in_carrier = { get, set, &in_store };
static ctx_carrier_t out_carrier = { get, set, &out_store };

/* The context an outgoing call is made under: an extracted trace, a 1 h
 * deadline, three baggage entries. */
static ctx_t *chain[5];

static ctx_t *make_context(void)
{
    struct store empty = { 0 };
    ctx_carrier_t e = { get, set, &empty };
    chain[0] = ctx_extract(ctx_background(), &e, NULL);
    chain[1] = ctx_with_timeout(chain[0], CTX_HOUR, NULL);
    chain[2] = ctx_with_baggage(chain[1], "request-id", "req-42");
    chain[3] = ctx_with_baggage(chain[2], "tenant", "acme");
    chain[4] = ctx_with_baggage(chain[3], "user", "\xc3\xa9t\xc3\xa9");
    if (chain[4] == NULL) {
        perror("wire: setup");
        exit(1);
    }
    /* The incoming request that extract reads: what inject writes. */
    if (ctx_inject(chain[4], &in_carrier) != 0) {
        fprintf(stderr, "wire: inject failed\n");
        exit(1);
    }
    return chain[4];
}

static void free_context(void)
{
    for (int i = 4; i >= 0; i--)
        ctx_unref(chain[i]);
}

struct sample {
    double ns, allocs;
};

static struct sample bench_inject(ctx_t *c, long n, atomic_long *counter)
{
    long a0 = atomic_load(counter);
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (ctx_inject(c, &out_carrier) != 0)
            abort();
    }
    double t1 = now_ns();
    return (struct sample){ (t1 - t0) / (double)n,
                            (double)(atomic_load(counter) - a0) / (double)n };
}

static struct sample bench_extract(long n, atomic_long *counter)
{
    long a0 = atomic_load(counter);
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        ctx_t *c = ctx_extract(ctx_background(), &in_carrier, NULL);
        if (c == NULL || ctx_baggage(c, "user") == NULL)
            abort();
        ctx_unref(c);
    }
    double t1 = now_ns();
    return (struct sample){ (t1 - t0) / (double)n,
                            (double)(atomic_load(counter) - a0) / (double)n };
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

struct spread {
    double min, med, max;
};

static struct spread spread_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    return (struct spread){ v[0], n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v[n - 1] };
}

/* ---------------------------------------------------------------------------
 * The Go peer
 */

static char go_bin[8192];

static bool build_go(const char *go, const char *src)
{
    if (go == NULL || go[0] == '\0' || src == NULL)
        return false;
    char dir[4096], cmd[24576];
    if (getcwd(dir, sizeof dir) == NULL)
        return false;
    snprintf(go_bin, sizeof go_bin, "%s/wire_go_peer", dir);
    /* GOPATH mode, no network, the build cache in the build directory. */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE='%s/go-cache' "
             "GOPATH=/usr/share/gocode:'%s/gopath' '%s' build -o '%s' wire.go",
             src, dir, dir, go, go_bin);
    if (system(cmd) != 0) {
        fprintf(stderr, "wire: could not build the Go peer; it is left out\n");
        return false;
    }
    return true;
}

static bool run_go(long n, struct sample *inj, struct sample *ext)
{
    char cmd[8300], line[256];
    snprintf(cmd, sizeof cmd, "'%s' -n %ld", go_bin, n);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return false;
    int got = 0;
    while (fgets(line, sizeof line, p) != NULL) {
        double ns, a;
        if (sscanf(line, "inject %lf %lf", &ns, &a) == 2) {
            *inj = (struct sample){ ns, a };
            got |= 1;
        } else if (sscanf(line, "extract %lf %lf", &ns, &a) == 2) {
            *ext = (struct sample){ ns, a };
            got |= 2;
        }
    }
    return pclose(p) == 0 && got == 3;
}

/* ---------------------------------------------------------------------------
 * main
 */

#define MAX_ROUNDS 32

int main(int argc, char **argv)
{
    int rounds = 5;
    long n = 200000;
    const char *go = NULL, *go_src = NULL, *out = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--rounds") == 0)
            rounds = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--n") == 0)
            n = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--go") == 0)
            go = argv[i + 1];
        else if (strcmp(argv[i], "--go-src") == 0)
            go_src = argv[i + 1];
        else if (strcmp(argv[i], "--out") == 0)
            out = argv[i + 1];
    }
    if (rounds < 1 || rounds > MAX_ROUNDS || n < 1) {
        fprintf(stderr,
                "usage: wire [--rounds 1..%d] [--n CALLS] [--go GO --go-src DIR] [--out "
                "FILE]\n",
                MAX_ROUNDS);
        return 2;
    }
    bool with_go = build_go(go, go_src);

    double c_inj[MAX_ROUNDS], c_ext[MAX_ROUNDS], g_inj[MAX_ROUNDS], g_ext[MAX_ROUNDS];
    double c_inj_a = 0, c_ext_a = 0, g_inj_a = 0, g_ext_a = 0;
    int go_rounds = 0;
    ctx_t *c = make_context();
    bench_inject(c, n / 10, &mallocs); /* warm the caches */
    bench_extract(n / 10, &mallocs);
    for (int r = 0; r < rounds; r++) {
        struct sample s = bench_inject(c, n, &mallocs);
        c_inj[r] = s.ns;
        c_inj_a = s.allocs;
        s = bench_extract(n, &mallocs);
        c_ext[r] = s.ns;
        c_ext_a = s.allocs;
        struct sample gi = { 0, 0 }, ge = { 0, 0 };
        if (with_go && run_go(n, &gi, &ge)) {
            g_inj[go_rounds] = gi.ns;
            g_ext[go_rounds] = ge.ns;
            g_inj_a = gi.allocs;
            g_ext_a = ge.allocs;
            go_rounds++;
        }
        fprintf(stderr, "round %d/%d: inject %.0f ns, extract %.0f ns\n", r + 1, rounds, c_inj[r],
                c_ext[r]);
    }
    free_context();

    /* Every node and block, with the node cache off. */
    ctx_replace_allocator(counting_malloc, free);
    c = make_context();
    struct sample ci = bench_inject(c, n / 10, &allocator_calls);
    struct sample ce = bench_extract(n / 10, &allocator_calls);
    free_context();

    struct spread ci_s = spread_of(c_inj, rounds), ce_s = spread_of(c_ext, rounds);
    char table[8192];
    int len = snprintf(table, sizeof table,
                       "### Propagation: inject and extract (deadline, trace, 3 baggage "
                       "entries)\n\n"
                       "%d rounds of %ld calls each.\n\n"
                       "| call | implementation | min ns | median ns | max ns | mallocs/call | "
                       "allocator calls/call | libctx / Go (median) |\n"
                       "|---|---|---|---|---|---|---|---|\n",
                       rounds, n);
    struct spread gi_s = { 0, 0, 0 }, ge_s = { 0, 0, 0 };
    if (go_rounds > 0) {
        gi_s = spread_of(g_inj, go_rounds);
        ge_s = spread_of(g_ext, go_rounds);
    }
    len += snprintf(table + len, sizeof table - (size_t)len,
                    "| inject | libctx | %.0f | %.0f | %.0f | %.2f | %.2f | %s |\n", ci_s.min,
                    ci_s.med, ci_s.max, c_inj_a, ci.allocs, "");
    if (go_rounds > 0) {
        len += snprintf(table + len, sizeof table - (size_t)len,
                        "| inject | Go by hand (net/http Header) | %.0f | %.0f | %.0f | %.2f | - "
                        "| %.2f |\n",
                        gi_s.min, gi_s.med, gi_s.max, g_inj_a, ci_s.med / gi_s.med);
    }
    len += snprintf(table + len, sizeof table - (size_t)len,
                    "| extract | libctx | %.0f | %.0f | %.0f | %.2f | %.2f | %s |\n", ce_s.min,
                    ce_s.med, ce_s.max, c_ext_a, ce.allocs, "");
    if (go_rounds > 0) {
        len += snprintf(table + len, sizeof table - (size_t)len,
                        "| extract | Go by hand (net/http Header) | %.0f | %.0f | %.0f | %.2f | - "
                        "| %.2f |\n",
                        ge_s.min, ge_s.med, ge_s.max, g_ext_a, ce_s.med / ge_s.med);
    }
    len +=
        snprintf(table + len, sizeof table - (size_t)len,
                 "\nTarget: extract <= 1000 ns and <= 2 allocations.  Time: median %.0f ns "
                 "(%s).  Allocations: %.2f malloc calls per call on the default path (%s); "
                 "%.2f allocator calls when every node is counted (node cache off: %s).\n",
                 ce_s.med, ce_s.med <= 1000 ? "met" : "not met", c_ext_a,
                 c_ext_a <= 2 ? "met" : "not met", ce.allocs, ce.allocs <= 2 ? "met" : "not met");
    if (!with_go || go_rounds == 0)
        len += snprintf(table + len, sizeof table - (size_t)len,
                        "\nThe Go peer did not run (no go found, or it failed).\n");
    fputs(table, stdout);
    FILE *f = out != NULL ? fopen(out, "w") : NULL;
    if (f != NULL) {
        fputs(table, f);
        fclose(f);
    }
    return 0;
}
