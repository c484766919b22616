/* SPDX-License-Identifier: MIT */

/*
 * Value and without-cancel nodes, and value lookup.
 *
 * Neither kind has a done state of its own: a value node reports its
 * owner's (the nearest cancel ancestor's), a without-cancel node reports
 * the background root's, which is never done.  So ctx_err is one load for
 * every kind, and neither kind ever joins a children list.
 */
#include "internal.h"

ctx_t *ctx_with_value(ctx_t *parent, const ctx_key_t *key, void *value,
                      void (*destroy)(void *value))
{
    if (parent == NULL || key == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx *n = ctx__node_alloc(sizeof *n);
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    ctx__live_add(1);
    n->up = ctx__owner(parent);
    n->pk = (uintptr_t)ctx__ref(parent) | CTX__VALUE;
    atomic_init(&n->refs, 1);
    n->u.v.key = key;
    n->u.v.value = value;
    n->u.v.destroy = destroy;
    /* The value nodes of a chain are numbered from 1 at its top, and node
     * i filters the keys of the span(i) nodes ending at itself (a Fenwick
     * tree's ranges), where span(i) is i's lowest set bit, at most
     * CTX__SEG: its skip is the node just above that range.  A lookup that
     * meets a filter holding its key's bits and a different key steps to
     * the node above, whose range is the next smaller one inside, so a key
     * at any depth is reached in a few jumps and a short descent instead of
     * a walk along a whole segment.  The chain continues from the nearest
     * value node above, even across a few cancel, timer and without-cancel
     * nodes, which bind no key; a custom node (its hook may bind any key),
     * a root, or a long run of nodes without values ends the search and
     * starts a new chain, to bound the cost of a creation. */
    struct ctx *v = parent;
    unsigned k = ctx__kind(v);
    for (int hops = 0; k != CTX__VALUE && hops < CTX__SEG_HOPS; hops++) {
        if (k == CTX__ROOT || k == CTX__CUSTOM)
            break;
        v = ctx__parent(v);
        k = ctx__kind(v);
    }
    uint32_t i = 1;
    if (k == CTX__VALUE) {
        uint32_t above = atomic_load_explicit(&v->lock, memory_order_relaxed);
        /* Numbering starts anew after 2^31 values (128 GiB of nodes), so
         * the index never wraps to 0, which has no lowest set bit; the new
         * chain's first range ends at v, a value node, as any range may. */
        i = above < CTX__CHAIN_MAX ? above + 1 : 1;
    } else if (k == CTX__ROOT) {
        /* Nothing above binds a key: a lookup that jumps here is done,
         * without a visit to the root. */
        v = NULL;
    }
    uint32_t span = i & -i;
    if (span > CTX__SEG)
        span = CTX__SEG;
    /* The ranges of nodes i-1, i-2, i-4, ... (each the skip of the one
     * before) tile the rest of the range, and the last one's skip is the
     * node above the whole range; with a span of 1 that is v itself. */
    uint64_t bloom = ctx__key_bits(key);
    for (uint32_t m = 1; m < span; m <<= 1) {
        bloom |= v->u.v.bloom;
        v = v->u.v.skip;
    }
    n->u.v.bloom = bloom;
    n->u.v.skip = v;
    atomic_init(&n->lock, i);
    return n;
}

ctx_t *ctx_without_cancel(ctx_t *parent)
{
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    /* Only the common header: 24 bytes. */
    struct ctx *n = ctx__node_alloc(offsetof(struct ctx, u));
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    ctx__live_add(1);
    n->up = &ctx__background_node;
    n->pk = (uintptr_t)ctx__ref(parent) | CTX__WITHOUT;
    atomic_init(&n->refs, 1);
    atomic_init(&n->lock, 0);
    return n;
}

/* Walks toward the root; the nearest binding wins.  A value node whose
 * filter lacks one of the key's bits proves that no value node of its range
 * binds it, and the walk jumps to the node above the range; one whose
 * filter has them all and binds another key sends the walk to the node
 * above it, whose range is the next smaller one.  A range may span cancel,
 * timer and without-cancel nodes, which bind nothing, but never a custom
 * node (it starts a new chain), so no custom lookup hook is skipped.  Every
 * field read here is immutable after creation, and the caller's reference
 * keeps the whole chain alive, so no lock and no ordering is needed.
 *
 * walk stops at a binding or a root (returns NULL, the value in *out) or at
 * a custom node (returns it).  It calls nothing, so that ctx_value, which
 * leaves custom nodes to value_from, needs no stack frame: a good part of a
 * short lookup's cost. */
static inline struct ctx *walk(struct ctx *c, const ctx_key_t *key, uint64_t bits, void **out)
{
    for (;;) {
        unsigned k = ctx__kind(c);
        if (k == CTX__VALUE) {
            /* Laid out for the jump: most filters of a long walk miss. */
            if (!CTX__UNLIKELY((c->u.v.bloom & bits) == bits)) {
                if ((c = c->u.v.skip) == NULL) { /* the chain hangs from a root */
                    *out = NULL;
                    return NULL;
                }
                continue;
            }
            if (c->u.v.key == key) {
                *out = c->u.v.value;
                return NULL;
            }
            /* An odd node's range is itself alone: the bits were another
             * key's, and the range above starts at skip, past any cancel
             * nodes in between. */
            if (atomic_load_explicit(&c->lock, memory_order_relaxed) & 1) {
                if ((c = c->u.v.skip) == NULL) {
                    *out = NULL;
                    return NULL;
                }
                continue;
            }
        } else if (k == CTX__ROOT) {
            *out = NULL;
            return NULL;
        } else if (CTX__UNLIKELY(k == CTX__CUSTOM)) {
            return c;
        }
        c = ctx__parent(c);
    }
}

/* The walk from custom node c on: asks each custom node's hook. */
__attribute__((noinline)) static void *value_from(struct ctx *c, const ctx_key_t *key,
                                                  uint64_t bits)
{
    void *v;
    do {
        struct ctx__custom *cu = (struct ctx__custom *)c;
        v = NULL;
        if (cu->ops->value != NULL && cu->ops->value(cu->data, key, &v))
            return v;
    } while ((c = walk(ctx__parent(c), key, bits, &v)) != NULL);
    return v;
}

void *ctx_value(ctx_t *c, const ctx_key_t *key)
{
    const uint64_t bits = ctx__key_bits(key);
    if (c == NULL)
        return NULL;
    void *v;
    if (CTX__UNLIKELY((c = walk(c, key, bits, &v)) != NULL))
        return value_from(c, key, bits);
    return v;
}
