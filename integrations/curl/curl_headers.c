/* SPDX-License-Identifier: MIT */

/*
 * ctx_curl_headers: the propagation headers of a context as a curl_slist.
 */
#include <ctx/curl.h>
#include <ctx/propagation.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The headers ctx_inject writes, collected in a list of their own so that
 * the caller's list is touched only once all of them exist. */
struct collected {
    struct curl_slist *head;
    struct curl_slist *tail;
};

static int collect(void *headers, const char *name, const char *value)
{
    struct collected *c = headers;
    size_t nl = strlen(name), vl = strlen(value), len = nl + 2 + vl + 1;
    /* Most lines (traceparent, grpc-timeout, a short baggage) fit on the
     * stack; curl_slist_append copies the line, so it is ours to free. */
    char small[256];
    char *line = len <= sizeof small ? small : malloc(len);
    if (line == NULL)
        return ENOMEM;
    memcpy(line, name, nl);
    memcpy(line + nl, ": ", 2);
    memcpy(line + nl + 2, value, vl + 1);
    struct curl_slist *node = curl_slist_append(NULL, line);
    if (line != small)
        free(line);
    if (node == NULL)
        return ENOMEM;
    if (c->tail == NULL)
        c->head = node;
    else
        c->tail->next = node;
    c->tail = node;
    return 0;
}

struct curl_slist *ctx_curl_headers(ctx_t *ctx, struct curl_slist *headers)
{
    if (ctx == NULL) {
        errno = EINVAL;
        return NULL;
    }
    struct collected c = { NULL, NULL };
    const ctx_carrier_t out = { .get = NULL, .set = collect, .headers = &c };
    int err = ctx_inject(ctx, &out);
    if (err != 0) {
        curl_slist_free_all(c.head);
        errno = err;
        return NULL;
    }
    if (c.head == NULL) {
        errno = 0;
        return headers;
    }
    if (headers == NULL)
        return c.head;
    /* struct curl_slist is public: linking our nodes after the caller's
     * last one makes a single list that curl_slist_free_all frees whole. */
    struct curl_slist *last = headers;
    while (last->next != NULL)
        last = last->next;
    last->next = c.head;
    return headers;
}
