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
    /* The segment to extend is that of the nearest value node above, even
     * across a few cancel, timer and without-cancel nodes, which bind no
     * key: a chain where values and cancel nodes alternate gets segments
     * as long as a chain of values alone.  A custom node (its hook may bind
     * any key) or a root ends the search, and so does a long run of nodes
     * without values, to bound the cost of a creation. */
    struct ctx *v = parent;
    unsigned k = ctx__kind(v);
    for (int hops = 0; k != CTX__VALUE && hops < CTX__SEG_HOPS; hops++) {
        if (k == CTX__ROOT || k == CTX__CUSTOM)
            break;
        v = ctx__parent(v);
        k = ctx__kind(v);
    }
    uint32_t len =
        k == CTX__VALUE ? atomic_load_explicit(&v->lock, memory_order_relaxed) : CTX__SEG;
    if (len < CTX__SEG) { /* extend v's segment */
        n->u.v.bloom = v->u.v.bloom | ctx__key_bit(key);
        n->u.v.skip = v->u.v.skip;
        atomic_init(&n->lock, len + 1);
    } else { /* start a segment that ends at the parent */
        n->u.v.bloom = ctx__key_bit(key);
        n->u.v.skip = parent;
        atomic_init(&n->lock, 1);
    }
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
 * filter lacks the key's bit proves that no value node of its segment binds
 * it, and the walk jumps to the segment's end.  A segment may span cancel,
 * timer and without-cancel nodes, which bind nothing, but never a custom
 * node (it starts a new one), so no custom lookup hook is skipped.  Every
 * field read here is immutable after creation, and the caller's reference
 * keeps the whole chain alive, so no lock and no atomic is needed. */
void *ctx_value(ctx_t *c, const ctx_key_t *key)
{
    const uint64_t bit = ctx__key_bit(key);
    if (c == NULL)
        return NULL;
    for (;;) {
        unsigned k = ctx__kind(c);
        /* Value nodes first: in a long chain they are most of the walk. */
        if (k == CTX__VALUE) {
            if (!(c->u.v.bloom & bit)) {
                c = c->u.v.skip;
                continue;
            }
            if (c->u.v.key == key)
                return c->u.v.value;
        } else if (k == CTX__ROOT) {
            return NULL;
        } else if (k == CTX__CUSTOM) {
            struct ctx__custom *cu = (struct ctx__custom *)c;
            void *v = NULL;
            if (cu->ops->value != NULL && cu->ops->value(cu->data, key, &v))
                return v;
        }
        c = ctx__parent(c);
    }
}
