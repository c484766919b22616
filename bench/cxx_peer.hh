// SPDX-License-Identifier: MIT

// The C++ peer of libctx's contexts, shared by ctx_bench.cc and shapes.cc
// so that both measure the same C++ shape: a std::stop_source linked to its
// parent's by a std::stop_callback, and a hand-rolled chain of values.

#ifndef CTX_BENCH_CXX_PEER_HH
#define CTX_BENCH_CXX_PEER_HH

#include <stop_token>
#include <utility>

// A hand-rolled value chain: what C++ code writes instead of WithValue.
struct KV {
    const KV *parent;
    const void *key;
    void *value;
};

inline void *kv_lookup(const KV *n, const void *key)
{
    for (; n != nullptr; n = n->parent)
        if (n->key == key)
            return n->value;
    return nullptr;
}

struct Forward {
    std::stop_source *child;
    void operator()() const noexcept
    {
        child->request_stop();
    }
};

// A cancellable C++ "context": its own stop_source, linked to its parent by
// a stop_callback that requests stop on it.  An empty parent token (the
// analogue of Background) registers nothing.
struct CxxCtx {
    std::stop_source src;
    std::stop_callback<Forward> link;
    const KV *kv;
    CxxCtx(std::stop_token parent, const KV *values)
        : src(), link(std::move(parent), Forward{ &src }), kv(values)
    {
    }
};

#endif
