/* SPDX-License-Identifier: MIT */

/*
 * ctx_mhd_request: a request's headers and socket, made into its context.
 */
#include <ctx/io.h>
#include <ctx/mhd.h>
#include <ctx/propagation.h>

#include <errno.h>
#include <stddef.h>

/* ctx_extract asks for lowercase names; libmicrohttpd compares header names
 * without regard to case, as HTTP requires. */
static const char *header(void *headers, const char *name)
{
    return MHD_lookup_connection_value(headers, MHD_HEADER_KIND, name);
}

ctx_t *ctx_mhd_request(ctx_t *base, struct MHD_Connection *conn, ctx_cancel_t **cancel)
{
    if (base == NULL || conn == NULL) {
        errno = EINVAL;
        return NULL;
    }
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (info == NULL || info->connect_fd == MHD_INVALID_SOCKET) {
        errno = ENOTSOCK;
        return NULL;
    }
    const ctx_carrier_t in = { .get = header, .set = NULL, .headers = conn };
    ctx_t *extracted = ctx_extract(base, &in, NULL);
    if (extracted == NULL)
        return NULL;
    ctx_t *ctx = ctx_with_peer_close(extracted, info->connect_fd, cancel);
    int err = errno;
    /* The request context holds its own reference to its parent. */
    ctx_unref(extracted);
    errno = err;
    return ctx;
}
