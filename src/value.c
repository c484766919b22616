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
    struct ctx *n = ctx__alloc(sizeof *n);
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    n->owner = parent->owner;
    n->pk = (uintptr_t)ctx_ref(parent) | CTX__VALUE;
    atomic_init(&n->refs, 1);
    atomic_init(&n->lock, 0);
    n->u.v.key = key;
    n->u.v.value = value;
    n->u.v.destroy = destroy;
    return n;
}

ctx_t *ctx_without_cancel(ctx_t *parent)
{
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx *n = ctx__alloc(sizeof *n);
    if (n == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    n->owner = &ctx__background_node;
    n->pk = (uintptr_t)ctx_ref(parent) | CTX__WITHOUT;
    atomic_init(&n->refs, 1);
    atomic_init(&n->lock, 0);
    return n;
}

/* Walks toward the root; the nearest binding wins.  Every field read here
 * is immutable after creation, and the caller's reference keeps the whole
 * chain alive, so no lock and no atomic is needed. */
void *ctx_value(ctx_t *c, const ctx_key_t *key)
{
    while (c != NULL) {
        switch (ctx__kind(c)) {
        case CTX__VALUE:
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
