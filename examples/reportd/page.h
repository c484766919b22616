/* SPDX-License-Identifier: MIT */

/*
 * reportd's page: GET / (a page that starts a /report, cancels it, and
 * shows the context tree of the requests in flight) and GET
 * /debug/ctx?format=json (what the page reads), with the short list of
 * recently ended requests behind it.
 *
 * The server wires it in with two calls: page_route from its request
 * handler, before its own routes, and page_request_ended wherever it writes
 * a request's log line.  Nothing here depends on context tracking: the tree
 * is the subtree of the server's context (ctx_dump_json).
 */
#ifndef REPORTD_PAGE_H
#define REPORTD_PAGE_H

#include <ctx.h>

#include <microhttpd.h>
#include <stdbool.h>

/* Answers GET / and GET /debug/ctx?format=json on conn: true (and *ret,
 * the value the handler returns) when url is one of them, else false and
 * nothing is done.  server is the context every request descends from. */
bool page_route(struct MHD_Connection *conn, const char *url, ctx_t *server, enum MHD_Result *ret);

/* Records the end of a request for the page: its ID, path, HTTP status,
 * outcome (as in the log line), the parts it stopped ("" for none) and how
 * long it took; ctx (NULL when the request had none) gives the cause and
 * cancel site when it has ended.  Keeps the last 32; thread-safe. */
void page_request_ended(const char *id, ctx_t *ctx, const char *path, unsigned status,
                        const char *outcome, const char *cancelled, long long ms);

#endif /* REPORTD_PAGE_H */
