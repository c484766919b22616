/* SPDX-License-Identifier: MIT */

/*
 * Custom contexts: a cancel node with user hooks.  Because it is a node of
 * the library's own tree, its children register with it like with any
 * cancel node, instead of costing a watcher thread each (Go's fallback for
 * parents that are not a cancelCtx).
 */
#include "internal.h"

ctx_t *ctx_with_custom(ctx_t *parent, const ctx_custom_ops_t *ops, void *data,
                       ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL || ops == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct ctx__custom *cu;
    if ((cancel != NULL && ctx__handle_reserve() != 0) ||
        (cu = ctx__node_alloc(sizeof *cu)) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    cu->ops = ops;
    cu->data = data;
    cu->done = NULL;
    ctx__init_cancel(&cu->base, parent, CTX__CUSTOM);
    if (cancel != NULL)
        *cancel = ctx__handle_bind(&cu->base);
    return &cu->base;
}

void *ctx_custom_data(ctx_t *c)
{
    if (c == NULL || ctx__kind(c) != CTX__CUSTOM)
        return NULL;
    return ((struct ctx__custom *)c)->data;
}
