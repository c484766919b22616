// SPDX-License-Identifier: MIT

// The shapes libctx shares with C++20 std::stop_source, one per run, each
// alone in a loop in one function (measure), so that a tool that counts
// what a process executes sees one shape and its loop only (bench/shapes.py
// runs it under callgrind, counting inside measure, at two loop counts, and
// takes the difference).
//
//   ctx_shapes SHAPE N
//
// SHAPE is one of
//   child        a child of a live cancellable parent, cancelled by its
//                handle and dropped (ctx_bench's Extra/ChildCancel)
//   fanned       the same under a parent with a fan-out: before the loop,
//                two threads make children of the parent at once until one
//                of them has found the other holding the parent's lock
//                (section 3.1 of docs/DESIGN.md); under valgrind, whose
//                threads take turns, that takes --fair-sched=yes
//   after        an AfterFunc registered on a live context and stopped
//                (Extra/AfterFunc)
//   closed       a cancellable root cancelled, a child born done under it,
//                both dropped (CancelTree/depth=1/Root=ClosedCanceler)
// and cxx-child, cxx-after, cxx-closed: the same with stop_source, built
// as ctx_bench builds them (cxx_peer.hh: a stop_source whose stop_callback
// on the parent's token forwards the stop).  "all" runs every shape in
// turn (the smoke test).

#include <ctx.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <pthread.h>
#include <stop_token>

#include "cxx_peer.hh"

namespace
{

// A compiler barrier: each turn of a loop is done in full.
inline void barrier()
{
    asm volatile("" ::: "memory");
}

void noop(void *) {}

// One child of p made, cancelled by its handle and dropped.
inline void child_of(ctx_t *p)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(p, &cancel);
    ctx_cancel(cancel);
    ctx_unref(c);
}

void *churn(void *p)
{
    for (int i = 0; i < 200000; i++)
        child_of(static_cast<ctx_t *>(p));
    return nullptr;
}

// Gives p a fan-out: two threads make children of it at once.  A fan-out
// is not visible through the API; 200,000 children each from two threads
// have made one in every run so far, natively and under valgrind with
// --fair-sched=yes, and bench/shapes.py's last row shows it each time (a
// child under a fan-out executes more than the first row's child).
void fan_out(ctx_t *p)
{
    pthread_t t;
    if (pthread_create(&t, nullptr, churn, p) != 0)
        return;
    churn(p);
    pthread_join(t, nullptr);
}

// The loop of one shape, n turns.  Not inlined, so that callgrind can count
// inside it alone (--toggle-collect).
__attribute__((noinline)) int measure(const char *shape, long n, ctx_t *parent, CxxCtx &cparent)
{
    int rc = 0;
    if (std::strcmp(shape, "child") == 0 || std::strcmp(shape, "fanned") == 0) {
        for (long i = 0; i < n; i++) {
            child_of(parent);
            barrier();
        }
    } else if (std::strcmp(shape, "cxx-child") == 0) {
        for (long i = 0; i < n; i++) {
            CxxCtx c{ cparent.src.get_token(), nullptr };
            c.src.request_stop();
            barrier();
        }
    } else if (std::strcmp(shape, "after") == 0) {
        for (long i = 0; i < n; i++) {
            ctx_after_t *stop;
            if (ctx_after_func(parent, noop, nullptr, &stop) != 0 || !ctx_after_stop(stop)) {
                rc = 1;
                break;
            }
            barrier();
        }
    } else if (std::strcmp(shape, "cxx-after") == 0) {
        std::stop_token tok = cparent.src.get_token();
        for (long i = 0; i < n; i++) {
            std::stop_callback cb(tok, [] { barrier(); });
            barrier();
        }
    } else if (std::strcmp(shape, "closed") == 0) {
        for (long i = 0; i < n; i++) {
            ctx_cancel_t *cancel;
            ctx_t *root = ctx_with_cancel(ctx_background(), &cancel);
            ctx_cancel(cancel);
            ctx_t *leaf = ctx_with_cancel(root, nullptr);
            if (ctx_err(leaf) != CTX_CANCELED) { // born done
                rc = 1;
                break;
            }
            ctx_unref(leaf);
            ctx_unref(root);
            barrier();
        }
    } else if (std::strcmp(shape, "cxx-closed") == 0) {
        std::optional<CxxCtx> root, leaf;
        for (long i = 0; i < n; i++) {
            root.emplace(std::stop_token{}, nullptr);
            root->src.request_stop();
            leaf.emplace(root->src.get_token(), nullptr);
            if (!leaf->src.stop_requested()) { // stopped at once
                rc = 1;
                break;
            }
            leaf.reset();
            root.reset();
            barrier();
        }
    } else {
        std::fprintf(stderr, "ctx_shapes: unknown shape %s\n", shape);
        rc = 2;
    }
    if (rc == 1)
        std::fprintf(stderr, "ctx_shapes: %s did not behave as it should\n", shape);
    return rc;
}

int run(const char *shape, long n)
{
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CxxCtx cparent{ std::stop_token{}, nullptr };
    if (std::strcmp(shape, "fanned") == 0)
        fan_out(parent);
    int rc = measure(shape, n, parent, cparent);
    ctx_cancel(pc);
    ctx_unref(parent);
    return rc;
}

} // namespace

int main(int argc, char **argv)
{
    long n = argc == 3 ? std::atol(argv[2]) : 0;
    if (n <= 0) {
        std::fprintf(
            stderr,
            "usage: ctx_shapes child|fanned|after|closed|cxx-child|cxx-after|cxx-closed|all N\n");
        return 2;
    }
    if (std::strcmp(argv[1], "all") != 0)
        return run(argv[1], n);
    static const char *const all[] = { "child",     "fanned",    "after",     "closed",
                                       "cxx-child", "cxx-after", "cxx-closed" };
    for (const char *shape : all)
        if (int rc = run(shape, n); rc != 0)
            return rc;
    return 0;
}
