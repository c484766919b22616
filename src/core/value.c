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
    uint32_t len = ctx__kind(parent) == CTX__VALUE
                       ? atomic_load_explicit(&parent->lock, memory_order_relaxed)
                       : CTX__SEG;
    if (len < CTX__SEG) { /* extend the parent's segment */
        n->u.v.bloom = parent->u.v.bloom | ctx__key_bit(key);
        n->u.v.skip = parent->u.v.skip;
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
 * it, and the walk jumps to the segment's end.  Segments never span a custom
 * node (it starts a new one), so no custom lookup hook is skipped.  Every
 * field read here is immutable after creation, and the caller's reference
 * keeps the whole chain alive, so no lock and no atomic is needed. */
void *ctx_value(ctx_t *c, const ctx_key_t *key)
{
    const uint64_t bit = ctx__key_bit(key);
    while (c != NULL) {
        switch (ctx__kind(c)) {
        case CTX__VALUE:
            if (!(c->u.v.bloom & bit)) {
                c = c->u.v.skip;
                continue;
            }
            if (c->u.v.key == key)
                return c->u.v.value;
            break;
        case CTX__CUSTOM: {
            struct ctx__custom *cu = (struct ctx__custom *)c;
            void *v = NULL;
            if (cu->ops->value != NULL && cu->ops->value(cu->data, key, &v))
                return v;
            break;
        }
        case CTX__ROOT:
            return NULL;
        default:
            break;
        }
        c = ctx__parent(c);
    }
    return NULL;
}
