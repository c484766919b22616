/* SPDX-License-Identifier: MIT */

/* Uses an installed libctx-mhd: a libmicrohttpd server on a loopback port
 * the kernel picks, and the argument check of ctx_mhd_request (a request
 * context needs a connection, which only a handler has). */
#include <ctx.h>
#include <ctx/mhd.h>
#include <errno.h>
#include <stdio.h>

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *size, void **state)
{
    (void)cls, (void)conn, (void)url, (void)method, (void)version, (void)data, (void)size,
        (void)state;
    return MHD_NO;
}

int main(void)
{
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, handler,
                                            NULL, MHD_OPTION_END);
    ctx_cancel_t *cancel;
    errno = 0;
    ctx_t *c = ctx_mhd_request(ctx_background(), NULL, &cancel);
    int einval = c == NULL && errno == EINVAL;
    printf("libctx-mhd consumer: server %s, request without a connection: %s\n",
           d != NULL ? "started" : "failed", einval ? "EINVAL" : "unexpected");
    if (d != NULL)
        MHD_stop_daemon(d);
    ctx_unref(c);
    return d != NULL && einval ? 0 : 1;
}
