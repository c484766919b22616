// SPDX-License-Identifier: MIT

// libctx side by side with Go's context benchmarks and C++20 std::stop_source.
//
// Every benchmark in Go 1.19's src/context/benchmark_test.go has a libctx
// counterpart here under the same name ("libctx/<Go name>") doing the same
// work per op, and, where the shape exists in C++, a std::stop_source
// counterpart ("cxx/<Go name>").  bench/report.py runs Go's own benchmarks
// next to this binary and prints one table; docs/PERFORMANCE.md explains
// every mapping.  The short version:
//
//  * b.RunParallel runs GOMAXPROCS goroutines (the number of CPUs) and reports
//    wall time / total ops.  Here: ->Threads(number of CPUs)->UseRealTime(),
//    which Google Benchmark reports the same way (wall time divided by the
//    iterations of all threads).  Every other benchmark uses real time too,
//    as Go does.
//  * Go's garbage collector frees what a benchmark drops, inside the timed
//    loop.  libctx frees when the last reference goes, so each libctx loop
//    also drops its references (ctx_unref) inside the timed loop.
//  * Go's Done() + select-default becomes ctx_wait(ctx, 0): the non-blocking
//    form of C's Done() (see PERFORMANCE.md, "Done").
//  * C++ nodes: a std::stop_source plus a std::stop_callback on the parent's
//    token that requests stop on the child.  The nodes live in storage the
//    caller provides (the stack, or an array made before the timed loop), so
//    the only allocation per C++ context is the stop_source's shared state:
//    the most favourable arrangement for C++.
//  * C++ has no values: the "C++" column of the value benchmarks is a
//    hand-rolled parent-linked chain of (key, value) nodes.
//
// Allocation counters: C++ allocations are counted by replacing operator new
// (always); libctx allocations through ctx_replace_allocator, only with
// --count-allocs, because installing an allocator turns off libctx's node
// cache and would slow down what the timing runs measure.  Both counters are
// thread-local and reported as bytes_per_op / allocs_per_op (requested bytes,
// averaged over all iterations of all threads).
//
// Usage: ctx_bench [--count-allocs] [Google Benchmark flags]

#include <benchmark/benchmark.h>

// ctx.h declares both `struct ctx_cancel` and a function ctx_cancel(); g++'s
// -Wshadow calls that "hides constructor for struct ctx_cancel".
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#include <ctx.h>
#pragma GCC diagnostic pop

#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "cxx_peer.hh"

using benchmark::State;

namespace
{

// ---------------------------------------------------------------------------
// Allocation counting

struct Count {
    uint64_t allocs;
    uint64_t bytes;
};
thread_local Count tl_ctx = { 0, 0 }; // through ctx_replace_allocator
thread_local Count tl_cxx = { 0, 0 }; // through operator new

// Whether libctx's allocations are counted (--count-allocs).  Installing an
// allocator turns off libctx's per-thread node cache, so the timing runs go
// without it and a separate run with it gives the allocation counters.
bool g_count_libctx = false;

void *count_malloc(size_t n)
{
    tl_ctx.allocs++;
    tl_ctx.bytes += n;
    return std::malloc(n);
}

void count_free(void *p)
{
    std::free(p);
}

enum class Peer { libctx, cxx };

// Snapshot of this thread's counter; report() turns the difference into
// per-op counters (summed over threads, divided by all iterations).
class Mem
{
  public:
    Mem(State &st, Peer p) : st_(st), p_(p), start_(now()) {}
    void report()
    {
        if (p_ == Peer::libctx && !g_count_libctx)
            return;
        Count c = now();
        st_.counters["allocs_per_op"] = benchmark::Counter(double(c.allocs - start_.allocs),
                                                           benchmark::Counter::kAvgIterations);
        st_.counters["bytes_per_op"] =
            benchmark::Counter(double(c.bytes - start_.bytes), benchmark::Counter::kAvgIterations);
    }

  private:
    Count now() const
    {
        return p_ == Peer::libctx ? tl_ctx : tl_cxx;
    }
    State &st_;
    Peer p_;
    Count start_;
};

int ncpu()
{
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(n);
}

const ctx_key_t key_key = { "key", nullptr };
const ctx_key_t key_missing = { "missing", nullptr }; // Go: ctx.Value(-1)
ctx_key_t value_keys[100];                            // Go: WithValue(ctx, i, i)
const char value_str[] = "value";

// Go's busy loop between create and cancel in CommonParentCancel:
//     for i := 0; i < 100; i++ { x /= x + 1 }
// DoNotOptimize keeps the compiler from folding it: 100 divides, as in Go.
inline void go_spin(int64_t &x)
{
    for (int i = 0; i < 100; i++) {
        benchmark::DoNotOptimize(x);
        x /= x + 1;
    }
}

// ---------------------------------------------------------------------------
// The C++ peer: bench/cxx_peer.hh


// ---------------------------------------------------------------------------
// CommonParentCancel (parallel)
//
// Go:  root := WithValue(Background(), "key", "value"); shared := WithCancel(root)
//      per op: ctx, cancel := WithCancel(shared); ctx.Value("key") == "value";
//              100 divides; cancel(); 100 divides

ctx_t *cpc_root, *cpc_shared;
ctx_cancel_t *cpc_cancel;

void libctx_CommonParentCancel(State &st)
{
    if (st.thread_index() == 0) {
        cpc_root = ctx_with_value(ctx_background(), &key_key, (void *)value_str, nullptr);
        cpc_shared = ctx_with_cancel(cpc_root, &cpc_cancel);
    }
    Mem mem(st, Peer::libctx);
    int64_t x = 0;
    for (auto _ : st) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_cancel(cpc_shared, &cancel);
        const char *v = static_cast<const char *>(ctx_value(c, &key_key));
        if (v == nullptr || std::strcmp(v, "value") != 0) {
            st.SkipWithError("should not be reached");
            break;
        }
        go_spin(x);
        ctx_cancel(cancel);
        go_spin(x);
        ctx_unref(c);
    }
    mem.report();
    if (st.thread_index() == 0) {
        ctx_cancel(cpc_cancel);
        ctx_unref(cpc_shared);
        ctx_unref(cpc_root);
    }
}

std::optional<CxxCtx> cxx_cpc_shared;
KV cxx_cpc_kv = { nullptr, &key_key, (void *)value_str };

void cxx_CommonParentCancel(State &st)
{
    if (st.thread_index() == 0)
        cxx_cpc_shared.emplace(std::stop_token{}, &cxx_cpc_kv);
    Mem mem(st, Peer::cxx);
    int64_t x = 0;
    for (auto _ : st) {
        CxxCtx c(cxx_cpc_shared->src.get_token(), cxx_cpc_shared->kv);
        const char *v = static_cast<const char *>(kv_lookup(c.kv, &key_key));
        if (v == nullptr || std::strcmp(v, "value") != 0) {
            st.SkipWithError("should not be reached");
            break;
        }
        go_spin(x);
        c.src.request_stop();
        go_spin(x);
    }
    mem.report();
    if (st.thread_index() == 0) {
        cxx_cpc_shared->src.request_stop();
        cxx_cpc_shared.reset();
    }
}

// ---------------------------------------------------------------------------
// WithTimeout/concurrency=N (parallel)
//
// Go:  N contexts WithTimeout(Background(), time.Hour) stay alive, made by
//      GOMAXPROCS goroutines (N/GOMAXPROCS each); then per op, in parallel:
//      10 × WithTimeout(root, time.Hour), then the 10 cancels.
// No C++ counterpart: std::stop_source has no deadlines.

void libctx_WithTimeout(State &st, int concurrency)
{
    const int per = concurrency / st.threads();
    std::vector<ctx_t *> live(per);
    std::vector<ctx_cancel_t *> live_cancel(per);
    for (int i = 0; i < per; i++)
        live[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, &live_cancel[i]);

    Mem mem(st, Peer::libctx);
    ctx_t *w[10];
    ctx_cancel_t *wc[10];
    for (auto _ : st) {
        for (int i = 0; i < 10; i++)
            w[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, &wc[i]);
        for (int i = 0; i < 10; i++) {
            ctx_cancel(wc[i]);
            ctx_unref(w[i]);
        }
    }
    mem.report();

    for (int i = 0; i < per; i++) {
        ctx_cancel(live_cancel[i]);
        ctx_unref(live[i]);
    }
}

// ---------------------------------------------------------------------------
// CancelTree/depth=D/Root=...
//
// Go:  buildContextTree(root, d) makes a chain of d WithCancel contexts and
//      drops them.  Root=Background: the chain on Background, never cancelled.
//      Root=OpenCanceler: a WithCancel root, the chain, then cancel the root
//      (which walks the whole chain).  Root=ClosedCanceler: cancel the root
//      first, then the chain (every context is born done).
// libctx keeps the leaf until after the cancel, so that the cancel walks the
// chain as Go's does (Go's parents hold their children in a map until they
// are cancelled), and then drops it, which frees the whole chain.

// Returns the leaf of a chain of `depth` cancel contexts under root, holding
// one reference (root itself, unreferenced, when depth is 0).
ctx_t *build_tree(ctx_t *root, int depth)
{
    ctx_t *cur = root;
    for (int d = 0; d < depth; d++) {
        ctx_t *n = ctx_with_cancel(cur, nullptr);
        if (d > 0)
            ctx_unref(cur); // the child holds its parent
        cur = n;
    }
    return cur;
}

enum class Root { Background, OpenCanceler, ClosedCanceler };

void libctx_CancelTree(State &st, int depth, Root root)
{
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        switch (root) {
        case Root::Background:
            ctx_unref(build_tree(ctx_background(), depth));
            break;
        case Root::OpenCanceler: {
            ctx_cancel_t *cancel;
            ctx_t *r = ctx_with_cancel(ctx_background(), &cancel);
            ctx_t *leaf = build_tree(r, depth);
            ctx_cancel(cancel);
            if (ctx_err(leaf) != CTX_CANCELED) { // one load: the walk reached the leaf
                st.SkipWithError("the leaf was not cancelled");
                return;
            }
            ctx_unref(leaf);
            ctx_unref(r);
            break;
        }
        case Root::ClosedCanceler: {
            ctx_cancel_t *cancel;
            ctx_t *r = ctx_with_cancel(ctx_background(), &cancel);
            ctx_cancel(cancel);
            ctx_t *leaf = build_tree(r, depth);
            if (ctx_err(leaf) != CTX_CANCELED) { // born done
                st.SkipWithError("the leaf was not born done");
                return;
            }
            ctx_unref(leaf);
            ctx_unref(r);
            break;
        }
        }
    }
    mem.report();
}

void cxx_CancelTree(State &st, int depth, Root root)
{
    // Node storage made once, outside the timed loop: slot 0 is the root.
    std::unique_ptr<std::optional<CxxCtx>[]> n(new std::optional<CxxCtx>[depth + 1]);
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        int first = 0;
        if (root != Root::Background) {
            n[0].emplace(std::stop_token{}, nullptr);
            if (root == Root::ClosedCanceler)
                n[0]->src.request_stop();
            first = 1;
        }
        for (int i = first; i < first + depth; i++)
            n[i].emplace(i == 0 ? std::stop_token{} : n[i - 1]->src.get_token(), nullptr);
        if (root == Root::OpenCanceler)
            n[0]->src.request_stop();
        if (root != Root::Background && !n[first + depth - 1]->src.stop_requested()) {
            st.SkipWithError("the leaf was not stopped");
            return;
        }
        for (int i = first + depth - 1; i >= 0; i--)
            n[i].reset();
    }
    mem.report();
}

// ---------------------------------------------------------------------------
// CheckCanceled/Err and /Done, BareAtomicLoad
//
// Go:  ctx, cancel := WithCancel(Background()); cancel()
//      Err:  per op ctx.Err()
//      Done: per op select { case <-ctx.Done(): default: }

void libctx_CheckCanceled_Err(State &st)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    Mem mem(st, Peer::libctx);
    for (auto _ : st)
        benchmark::DoNotOptimize(ctx_err(c));
    mem.report();
    ctx_unref(c);
}

// ctx_err as an exported function: (ctx_err)(c) is not expanded by the
// header's inline ctx_err macro, so this is the call through the PLT that a
// compiler without the inline fast path (or CTX_NO_INLINE) makes.
void libctx_CheckCanceled_ErrCall(State &st)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    Mem mem(st, Peer::libctx);
    for (auto _ : st)
        benchmark::DoNotOptimize((ctx_err)(c));
    mem.report();
    ctx_unref(c);
}

void libctx_CheckCanceled_Done(State &st)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    Mem mem(st, Peer::libctx);
    for (auto _ : st)
        benchmark::DoNotOptimize(ctx_wait(c, 0));
    mem.report();
    ctx_unref(c);
}

void cxx_CheckCanceled(State &st)
{
    std::stop_source src;
    src.request_stop();
    std::stop_token tok = src.get_token();
    Mem mem(st, Peer::cxx);
    for (auto _ : st)
        benchmark::DoNotOptimize(tok.stop_requested());
    mem.report();
}

// The floor for a cancelled check: one acquire load of a state word through
// a pointer, as an inlined check would do.
void BareAtomicLoad(State &st)
{
    std::atomic<uint32_t> word{ ECANCELED };
    std::atomic<uint32_t> *p = &word;
    for (auto _ : st) {
        benchmark::DoNotOptimize(p);
        benchmark::DoNotOptimize(p->load(std::memory_order_acquire) & 0xffu);
    }
}

// ---------------------------------------------------------------------------
// ContextCancelDone (parallel)
//
// Go:  ctx := WithCancel(Background()) (not cancelled); in parallel, per op
//      select { case <-ctx.Done(): default: }

ctx_t *ccd_ctx;
ctx_cancel_t *ccd_cancel;

void libctx_ContextCancelDone(State &st)
{
    if (st.thread_index() == 0)
        ccd_ctx = ctx_with_cancel(ctx_background(), &ccd_cancel);
    Mem mem(st, Peer::libctx);
    for (auto _ : st)
        benchmark::DoNotOptimize(ctx_wait(ccd_ctx, 0));
    mem.report();
    if (st.thread_index() == 0) {
        ctx_cancel(ccd_cancel);
        ctx_unref(ccd_ctx);
    }
}

std::optional<std::stop_source> cxx_ccd;

void cxx_ContextCancelDone(State &st)
{
    if (st.thread_index() == 0)
        cxx_ccd.emplace();
    Mem mem(st, Peer::cxx);
    std::optional<std::stop_token> tok;
    for (auto _ : st) {
        if (!tok) // after the start barrier, once per thread
            tok = cxx_ccd->get_token();
        benchmark::DoNotOptimize(tok->stop_requested());
    }
    mem.report();
    tok.reset();
    if (st.thread_index() == 0)
        cxx_ccd.reset();
}

// ---------------------------------------------------------------------------
// Go 1.24+ Err benchmarks (not in Go 1.19; ported for completeness)
//
// ErrOK: Err() of a live context; ErrCanceled: of a cancelled one; the
// Parallel forms share one context among GOMAXPROCS goroutines; Distinct gives
// each goroutine its own cancelled context.

ctx_t *err_shared;

void libctx_Err(State &st, bool canceled, bool distinct)
{
    ctx_t *c = nullptr;
    ctx_cancel_t *cancel = nullptr;
    if (distinct || st.thread_index() == 0) {
        c = ctx_with_cancel(ctx_background(), &cancel);
        if (canceled)
            ctx_cancel(cancel);
        if (!distinct)
            err_shared = c;
    }
    Mem mem(st, Peer::libctx);
    bool first = true;
    for (auto _ : st) {
        if (first) { // after the start barrier
            first = false;
            if (!distinct)
                c = err_shared;
        }
        if ((ctx_err(c) != 0) != canceled) {
            st.SkipWithError("wrong ctx_err");
            break;
        }
    }
    mem.report();
    if (distinct || st.thread_index() == 0) { // the maker drops it
        ctx_cancel(cancel);
        ctx_unref(c);
    }
}

std::optional<std::stop_source> cxx_err_shared;

void cxx_Err(State &st, bool canceled, bool distinct)
{
    std::optional<std::stop_source> mine;
    if (distinct || st.thread_index() == 0) {
        mine.emplace();
        if (canceled)
            mine->request_stop();
        if (!distinct)
            cxx_err_shared = mine;
    }
    Mem mem(st, Peer::cxx);
    std::optional<std::stop_token> tok;
    for (auto _ : st) {
        if (!tok)
            tok = distinct ? mine->get_token() : cxx_err_shared->get_token();
        if (tok->stop_requested() != canceled) {
            st.SkipWithError("wrong stop_requested");
            break;
        }
    }
    mem.report();
    tok.reset();
    if (!distinct && st.thread_index() == 0)
        cxx_err_shared.reset();
}

// ---------------------------------------------------------------------------
// DeepValueSameGoRoutine/depth=D, DeepValueNewThread/depth=D
//
// Go:  ctx := Background(); for i < depth { ctx = WithValue(ctx, i, i) }
//      per op: ctx.Value(-1) (a miss: walks the whole chain)
// DeepValueNewGoRoutine starts a goroutine per lookup and waits for it; the
// libctx row starts a pthread instead (DeepValueNewThread), which measures
// thread creation, not contexts: reported, never compared.

ctx_t *value_chain(int depth)
{
    ctx_t *c = ctx_background();
    for (int i = 0; i < depth; i++) {
        ctx_t *n = ctx_with_value(c, &value_keys[i], (void *)(intptr_t)i, nullptr);
        ctx_unref(c);
        c = n;
    }
    return c;
}

void libctx_DeepValueSameGoRoutine(State &st, int depth)
{
    ctx_t *c = value_chain(depth);
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        benchmark::DoNotOptimize(c);
        benchmark::DoNotOptimize(ctx_value(c, &key_missing));
    }
    mem.report();
    ctx_unref(c);
}

void cxx_DeepValueSameGoRoutine(State &st, int depth)
{
    std::vector<std::unique_ptr<KV>> nodes;
    const KV *leaf = nullptr;
    for (int i = 0; i < depth; i++) {
        nodes.emplace_back(new KV{ leaf, &value_keys[i], (void *)(intptr_t)i });
        leaf = nodes.back().get();
    }
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        benchmark::DoNotOptimize(leaf);
        benchmark::DoNotOptimize(kv_lookup(leaf, &key_missing));
    }
    mem.report();
}

void *lookup_thread(void *arg)
{
    return ctx_value(static_cast<ctx_t *>(arg), &key_missing);
}

void libctx_DeepValueNewThread(State &st, int depth)
{
    ctx_t *c = value_chain(depth);
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        pthread_t t;
        if (pthread_create(&t, nullptr, lookup_thread, c) != 0) {
            st.SkipWithError("pthread_create");
            break;
        }
        void *r;
        pthread_join(t, &r);
        benchmark::DoNotOptimize(r);
    }
    mem.report();
    ctx_unref(c);
}

// ---------------------------------------------------------------------------
// Extras (no Go 1.19 counterpart): single-context costs.

// Extra/ChildCancel: create a child of a live cancellable parent, cancel it,
// drop it.  The smallest shared shape of libctx and stop_source.
void libctx_ChildCancel(State &st)
{
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_cancel(parent, &cancel);
        ctx_cancel(cancel);
        ctx_unref(c);
    }
    mem.report();
    ctx_cancel(pc);
    ctx_unref(parent);
}

void cxx_ChildCancel(State &st)
{
    CxxCtx parent(std::stop_token{}, nullptr);
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        CxxCtx c(parent.src.get_token(), nullptr);
        c.src.request_stop();
    }
    mem.report();
}

// Extra/Spin200: the busy loop of CommonParentCancel alone (both halves).
void Spin200(State &st)
{
    int64_t x = 0;
    for (auto _ : st) {
        go_spin(x);
        go_spin(x);
    }
}

// Extra/CommonParentCancelNoSpin: CommonParentCancel without the busy loop,
// so that only the context work is left (parallel, one shared parent).
void libctx_CommonParentCancelNoSpin(State &st)
{
    if (st.thread_index() == 0) {
        cpc_root = ctx_with_value(ctx_background(), &key_key, (void *)value_str, nullptr);
        cpc_shared = ctx_with_cancel(cpc_root, &cpc_cancel);
    }
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_cancel(cpc_shared, &cancel);
        const char *v = static_cast<const char *>(ctx_value(c, &key_key));
        if (v == nullptr || std::strcmp(v, "value") != 0) {
            st.SkipWithError("should not be reached");
            break;
        }
        ctx_cancel(cancel);
        ctx_unref(c);
    }
    mem.report();
    if (st.thread_index() == 0) {
        ctx_cancel(cpc_cancel);
        ctx_unref(cpc_shared);
        ctx_unref(cpc_root);
    }
}

void cxx_CommonParentCancelNoSpin(State &st)
{
    if (st.thread_index() == 0)
        cxx_cpc_shared.emplace(std::stop_token{}, &cxx_cpc_kv);
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        CxxCtx c(cxx_cpc_shared->src.get_token(), cxx_cpc_shared->kv);
        const char *v = static_cast<const char *>(kv_lookup(c.kv, &key_key));
        if (v == nullptr || std::strcmp(v, "value") != 0) {
            st.SkipWithError("should not be reached");
            break;
        }
        c.src.request_stop();
    }
    mem.report();
    if (st.thread_index() == 0) {
        cxx_cpc_shared->src.request_stop();
        cxx_cpc_shared.reset();
    }
}

// Extra/AfterFunc: register a callback on a live context and stop it
// (Go 1.21 AfterFunc + stop; C++ stop_callback constructed and destroyed).
void noop(void *) {}

void libctx_AfterFunc(State &st)
{
    ctx_cancel_t *pc;
    ctx_t *c = ctx_with_cancel(ctx_background(), &pc);
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_after_t *stop;
        if (ctx_after_func(c, noop, nullptr, &stop) != 0) {
            st.SkipWithError("ctx_after_func");
            break;
        }
        benchmark::DoNotOptimize(ctx_after_stop(stop));
    }
    mem.report();
    ctx_cancel(pc);
    ctx_unref(c);
}

void cxx_AfterFunc(State &st)
{
    std::stop_source src;
    std::stop_token tok = src.get_token();
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        std::stop_callback cb(tok, [] { benchmark::ClobberMemory(); });
        benchmark::DoNotOptimize(&cb);
    }
    mem.report();
}

// Extra/WithValue: create a value context and drop it (C++: new + delete of a
// hand-rolled KV node).
void libctx_WithValue(State &st)
{
    Mem mem(st, Peer::libctx);
    for (auto _ : st)
        ctx_unref(ctx_with_value(ctx_background(), &key_key, (void *)value_str, nullptr));
    mem.report();
}

void cxx_WithValue(State &st)
{
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        KV *kv = new KV{ nullptr, &key_key, (void *)value_str };
        benchmark::DoNotOptimize(kv);
        delete kv;
    }
    mem.report();
}

// Extra/WithTimeout: one timeout context, cancelled and dropped, alone in
// the timer heap (WithTimeout/concurrency=N without the parallelism).
void libctx_WithTimeout1(State &st)
{
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_cancel_t *cancel;
        ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, &cancel);
        ctx_cancel(cancel);
        ctx_unref(c);
    }
    mem.report();
}

// Extra/Value100/<shape>/<key>: lookups in a chain of 100 value contexts,
// the shapes a program meets: the key bound at the top of the chain (the
// first one made, so the walk crosses all 100 levels to find it), each of
// the 100 keys in turn (one lookup per op, key i % 100), and a key bound
// nowhere.  Shape Values is 100 value contexts alone; Interleaved puts a
// cancellable context under each value context (200 levels, a cancellable
// leaf), as a program that derives a cancellable context per request and
// attaches a value to each does.
//
// Go:  ctx = WithValue(ctx, i, i) for i < 100 (Interleaved: then
//      ctx, _ = WithCancel(ctx)); per op ctx.Value(key)

enum class VShape { Values, Interleaved };
enum class VKey { Top, EachKey, Absent };

ctx_t *value_chain_shape(VShape shape)
{
    ctx_t *c = ctx_background();
    for (int i = 0; i < 100; i++) {
        ctx_t *n = ctx_with_value(c, &value_keys[i], (void *)(intptr_t)(i + 1), nullptr);
        ctx_unref(c);
        c = n;
        if (shape == VShape::Interleaved) {
            n = ctx_with_cancel(c, nullptr);
            ctx_unref(c);
            c = n;
        }
    }
    return c;
}

void libctx_Value100(State &st, VShape shape, VKey which)
{
    ctx_t *c = value_chain_shape(shape);
    Mem mem(st, Peer::libctx);
    unsigned i = 0;
    for (auto _ : st) {
        const ctx_key_t *k = which == VKey::Top       ? &value_keys[0]
                             : which == VKey::Absent ? &key_missing
                                                     : &value_keys[i];
        if (++i == 100)
            i = 0;
        benchmark::DoNotOptimize(c);
        void *v = ctx_value(c, k);
        if ((v == nullptr) != (which == VKey::Absent)) {
            st.SkipWithError("wrong lookup");
            break;
        }
        benchmark::DoNotOptimize(v);
    }
    mem.report();
    ctx_unref(c);
}

void cxx_Value100(State &st, VShape shape, VKey which)
{
    // The hand-rolled chain has no cancellable links: Interleaved is the
    // same chain for it.
    (void)shape;
    std::vector<std::unique_ptr<KV>> nodes;
    const KV *leaf = nullptr;
    for (int i = 0; i < 100; i++) {
        nodes.emplace_back(new KV{ leaf, &value_keys[i], (void *)(intptr_t)(i + 1) });
        leaf = nodes.back().get();
    }
    Mem mem(st, Peer::cxx);
    unsigned i = 0;
    for (auto _ : st) {
        const void *k = which == VKey::Top       ? (const void *)&value_keys[0]
                        : which == VKey::Absent ? (const void *)&key_missing
                                                : (const void *)&value_keys[i];
        if (++i == 100)
            i = 0;
        benchmark::DoNotOptimize(leaf);
        benchmark::DoNotOptimize(kv_lookup(leaf, k));
    }
    mem.report();
}

// Extra/Value100/Values/Build: the chain of 100 value contexts itself, made
// and dropped per op: what the lookups' filters cost when the chain is made
// (Extra/WithValue makes a value context right under a root, where a filter
// has nothing to merge).
//
// Go:  ctx = WithValue(ctx, i, i+1) for i < 100 per op (the GC frees it)

void libctx_Value100Build(State &st)
{
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_t *c = value_chain_shape(VShape::Values);
        benchmark::DoNotOptimize(c);
        ctx_unref(c);
    }
    mem.report();
}

void cxx_Value100Build(State &st)
{
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        const KV *leaf = nullptr;
        for (int i = 0; i < 100; i++)
            leaf = new KV{ leaf, &value_keys[i], (void *)(intptr_t)(i + 1) };
        benchmark::DoNotOptimize(leaf);
        while (leaf != nullptr) {
            const KV *up = leaf->parent;
            delete leaf;
            leaf = up;
        }
    }
    mem.report();
}

// Extra/CancelWide1000: a cancellable root with 1,000 cancellable children,
// the root cancelled, everything dropped (CancelTree/depth=1000 is the
// chain of the same size).
//
// Go:  root, cancel := WithCancel(Background()); 1,000 x WithCancel(root);
//      cancel()

void libctx_CancelWide1000(State &st)
{
    std::vector<ctx_t *> kids(1000);
    Mem mem(st, Peer::libctx);
    for (auto _ : st) {
        ctx_cancel_t *cancel;
        ctx_t *r = ctx_with_cancel(ctx_background(), &cancel);
        for (auto &k : kids)
            k = ctx_with_cancel(r, nullptr);
        ctx_cancel(cancel);
        if (ctx_err(kids[999]) != CTX_CANCELED) {
            st.SkipWithError("a child was not cancelled");
            return;
        }
        for (auto *k : kids)
            ctx_unref(k);
        ctx_unref(r);
    }
    mem.report();
}

void cxx_CancelWide1000(State &st)
{
    std::unique_ptr<std::optional<CxxCtx>[]> n(new std::optional<CxxCtx>[1001]);
    Mem mem(st, Peer::cxx);
    for (auto _ : st) {
        n[0].emplace(std::stop_token{}, nullptr);
        for (int i = 1; i <= 1000; i++)
            n[i].emplace(n[0]->src.get_token(), nullptr);
        n[0]->src.request_stop();
        if (!n[1000]->src.stop_requested()) {
            st.SkipWithError("a child was not stopped");
            return;
        }
        for (int i = 1000; i >= 0; i--)
            n[i].reset();
    }
    mem.report();
}

// ---------------------------------------------------------------------------
// Registration

template <class F> benchmark::internal::Benchmark *reg(const std::string &name, F f)
{
    return benchmark::RegisterBenchmark(name.c_str(), f)->UseRealTime();
}

void register_all()
{
    const int par = ncpu(); // b.RunParallel runs GOMAXPROCS = #CPU goroutines

    reg("libctx/CommonParentCancel", libctx_CommonParentCancel)->Threads(par);
    reg("cxx/CommonParentCancel", cxx_CommonParentCancel)->Threads(par);

    for (int conc = 40; conc <= 400000; conc *= 100)
        reg("libctx/WithTimeout/concurrency=" + std::to_string(conc), [conc](State &st) {
            libctx_WithTimeout(st, conc);
        })->Threads(par);

    const struct {
        Root root;
        const char *name;
    } roots[] = { { Root::Background, "Background" },
                  { Root::OpenCanceler, "OpenCanceler" },
                  { Root::ClosedCanceler, "ClosedCanceler" } };
    for (int d : { 1, 10, 100, 1000 })
        for (const auto &r : roots) {
            std::string n = "CancelTree/depth=" + std::to_string(d) + "/Root=" + r.name;
            Root root = r.root;
            reg("libctx/" + n, [d, root](State &st) { libctx_CancelTree(st, d, root); });
            reg("cxx/" + n, [d, root](State &st) { cxx_CancelTree(st, d, root); });
        }

    reg("libctx/CheckCanceled/Err", libctx_CheckCanceled_Err);
    reg("libctx/CheckCanceled/Done", libctx_CheckCanceled_Done);
    reg("libctx/CheckCanceled/ErrCall", libctx_CheckCanceled_ErrCall);
    reg("cxx/CheckCanceled/Err", cxx_CheckCanceled);
    reg("cxx/CheckCanceled/Done", cxx_CheckCanceled);
    reg("BareAtomicLoad", BareAtomicLoad);

    reg("libctx/ContextCancelDone", libctx_ContextCancelDone)->Threads(par);
    reg("cxx/ContextCancelDone", cxx_ContextCancelDone)->Threads(par);

    for (int d : { 10, 20, 30, 50, 100 }) {
        std::string n = "/depth=" + std::to_string(d);
        reg("libctx/DeepValueSameGoRoutine" + n,
            [d](State &st) { libctx_DeepValueSameGoRoutine(st, d); });
        reg("cxx/DeepValueSameGoRoutine" + n,
            [d](State &st) { cxx_DeepValueSameGoRoutine(st, d); });
    }
    for (int d : { 10, 20, 30, 50, 100 })
        reg("libctx/DeepValueNewThread/depth=" + std::to_string(d),
            [d](State &st) { libctx_DeepValueNewThread(st, d); });

    const struct {
        const char *name;
        bool canceled, parallel, distinct;
    } errs[] = { { "ErrOK", false, false, false },
                 { "ErrCanceled", true, false, false },
                 { "ErrOKParallel", false, true, false },
                 { "ErrCanceledParallel", true, true, false },
                 { "ErrCanceledParallelDistinct", true, true, true } };
    for (const auto &e : errs) {
        bool canceled = e.canceled, distinct = e.distinct;
        auto *a = reg(std::string("libctx/") + e.name,
                      [=](State &st) { libctx_Err(st, canceled, distinct); });
        auto *b =
            reg(std::string("cxx/") + e.name, [=](State &st) { cxx_Err(st, canceled, distinct); });
        if (e.parallel) {
            a->Threads(par);
            b->Threads(par);
        }
    }

    reg("Extra/Spin200", Spin200);
    reg("libctx/Extra/CommonParentCancelNoSpin", libctx_CommonParentCancelNoSpin)->Threads(par);
    reg("cxx/Extra/CommonParentCancelNoSpin", cxx_CommonParentCancelNoSpin)->Threads(par);
    reg("libctx/Extra/ChildCancel", libctx_ChildCancel);
    reg("cxx/Extra/ChildCancel", cxx_ChildCancel);
    reg("libctx/Extra/AfterFunc", libctx_AfterFunc);
    reg("cxx/Extra/AfterFunc", cxx_AfterFunc);
    reg("libctx/Extra/WithValue", libctx_WithValue);
    reg("cxx/Extra/WithValue", cxx_WithValue);
    reg("libctx/Extra/WithTimeout", libctx_WithTimeout1);

    const struct {
        VShape shape;
        const char *name;
    } vshapes[] = { { VShape::Values, "Values" }, { VShape::Interleaved, "Interleaved" } };
    const struct {
        VKey key;
        const char *name;
    } vkeys[] = { { VKey::Top, "Top" }, { VKey::EachKey, "EachKey" }, { VKey::Absent, "Absent" } };
    for (const auto &vs : vshapes)
        for (const auto &vk : vkeys) {
            std::string n = std::string("Extra/Value100/") + vs.name + "/" + vk.name;
            VShape shape = vs.shape;
            VKey key = vk.key;
            reg("libctx/" + n, [shape, key](State &st) { libctx_Value100(st, shape, key); });
            reg("cxx/" + n, [shape, key](State &st) { cxx_Value100(st, shape, key); });
        }
    reg("libctx/Extra/Value100/Values/Build", libctx_Value100Build);
    reg("cxx/Extra/Value100/Values/Build", cxx_Value100Build);
    reg("libctx/Extra/CancelWide1000", libctx_CancelWide1000);
    reg("cxx/Extra/CancelWide1000", cxx_CancelWide1000);
}

} // namespace

// ---------------------------------------------------------------------------
// operator new, counted (the C++ peer's allocations).  gcc 12 flags free() in
// a replaced operator delete as "mismatched"; it is exactly what matches the
// malloc in operator new.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void *operator new(std::size_t n)
{
    tl_cxx.allocs++;
    tl_cxx.bytes += n;
    if (void *p = std::malloc(n != 0 ? n : 1))
        return p;
    throw std::bad_alloc();
}

void operator delete(void *p) noexcept
{
    std::free(p);
}

void operator delete(void *p, std::size_t) noexcept
{
    std::free(p);
}

int main(int argc, char **argv)
{
    int k = 1;
    for (int i = 1; i < argc; i++) {
        if (std::strcmp(argv[i], "--count-allocs") == 0)
            g_count_libctx = true;
        else
            argv[k++] = argv[i];
    }
    argc = k;
    argv[argc] = nullptr;
    // Before any context exists, as the contract asks.
    if (g_count_libctx && ctx_replace_allocator(count_malloc, count_free) != 0) {
        std::fprintf(stderr, "ctx_replace_allocator failed\n");
        return 1;
    }
    for (int i = 0; i < 100; i++)
        value_keys[i].name = "i";
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv))
        return 1;
    register_all();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
