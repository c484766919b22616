// SPDX-License-Identifier: MIT

// The shapes libctx shares with C++20 std::stop_source, one per run, in a
// loop with nothing else in it, so that a tool that counts what a whole
// process executes (bench/shapes.py runs it under callgrind at two loop
// counts and takes the difference) sees one shape and its loop only.
//
//   ctx_shapes SHAPE N
//
// SHAPE is one of
//   child        a child of a live cancellable parent, cancelled by its
//                handle and dropped (ctx_bench's Extra/ChildCancel)
//   after        an AfterFunc registered on a live context and stopped
//                (Extra/AfterFunc)
//   closed       a cancellable root cancelled, a child born done under it,
//                both dropped (CancelTree/depth=1/Root=ClosedCanceler)
// and cxx-child, cxx-after, cxx-closed: the same with stop_source, built
// as ctx_bench builds them (cxx_peer.hh: a stop_source whose stop_callback
// on the parent's token forwards the stop).  "all" runs every shape in turn (the
// smoke test).

#include <ctx.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
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

int run(const char *shape, long n)
{
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CxxCtx cparent{ std::stop_token{}, nullptr };
    int rc = 0;
    if (std::strcmp(shape, "child") == 0) {
        for (long i = 0; i < n; i++) {
            ctx_cancel_t *cancel;
            ctx_t *c = ctx_with_cancel(parent, &cancel);
            ctx_cancel(cancel);
            ctx_unref(c);
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
    ctx_cancel(pc);
    ctx_unref(parent);
    return rc;
}

} // namespace

int main(int argc, char **argv)
{
    long n = argc == 3 ? std::atol(argv[2]) : 0;
    if (n <= 0) {
        std::fprintf(stderr,
                     "usage: ctx_shapes child|after|closed|cxx-child|cxx-after|cxx-closed|all N\n");
        return 2;
    }
    if (std::strcmp(argv[1], "all") != 0)
        return run(argv[1], n);
    static const char *const all[] = { "child",     "after",     "closed",
                                       "cxx-child", "cxx-after", "cxx-closed" };
    for (const char *shape : all)
        if (int rc = run(shape, n); rc != 0)
            return rc;
    return 0;
}
