/* SPDX-License-Identifier: MIT */

/* Uses an installed libctx-pq without a server: a connection attempt that
 * the context ends, and libpq's own calls beside it. */
#include <ctx.h>
#include <ctx/pq.h>
#include <stdio.h>

int main(void)
{
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);
    PGconn *conn = NULL;
    int err = ctx_pq_connect(ctx, "host=127.0.0.1 port=1", &conn);
    printf("libctx-pq consumer: %s, libpq %d\n", ctx_strerror(err), PQlibVersion());
    PQfinish(conn); /* NULL: nothing to do */
    ctx_unref(ctx);
    return err == CTX_CANCELED && conn == NULL ? 0 : 1;
}
