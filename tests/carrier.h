/* SPDX-License-Identifier: MIT */

/*
 * carrier.h: a small header store for the propagation tests, with the
 * ctx_carrier_t functions over it.  It keeps up to 16 headers (names
 * compared without regard to case, as HTTP does), records which names get
 * was asked for, and can make the Nth set fail with a chosen code.
 */
#ifndef CTX_TESTS_CARRIER_H
#define CTX_TESTS_CARRIER_H

#include <ctx/propagation.h>

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEADERS_MAX 16

typedef struct headers {
    int n;
    char *name[HEADERS_MAX];
    char *value[HEADERS_MAX];
    int sets;    /* calls of set so far */
    int fail_at; /* the set call (1-based) that fails, 0 for none */
    int fail_code;
    char asked[256]; /* names get was asked for, each followed by ";" */
} headers_t;

static inline const char *headers_find(const headers_t *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (strcasecmp(h->name[i], name) == 0)
            return h->value[i];
    return NULL;
}

static inline void headers_put(headers_t *h, const char *name, const char *value)
{
    for (int i = 0; i < h->n; i++) {
        if (strcasecmp(h->name[i], name) == 0) {
            free(h->value[i]);
            h->value[i] = strdup(value);
            return;
        }
    }
    if (h->n < HEADERS_MAX) {
        h->name[h->n] = strdup(name);
        h->value[h->n] = strdup(value);
        h->n++;
    }
}

static inline void headers_clear(headers_t *h)
{
    for (int i = 0; i < h->n; i++) {
        free(h->name[i]);
        free(h->value[i]);
    }
    memset(h, 0, sizeof *h);
}

static inline const char *headers_get_(void *store, const char *name)
{
    headers_t *h = store;
    size_t len = strlen(h->asked);
    if (len + strlen(name) + 2 < sizeof h->asked) {
        strcat(h->asked, name);
        strcat(h->asked, ";");
    }
    return headers_find(h, name);
}

static inline int headers_set_(void *store, const char *name, const char *value)
{
    headers_t *h = store;
    h->sets++;
    if (h->fail_at != 0 && h->sets == h->fail_at)
        return h->fail_code;
    headers_put(h, name, value);
    return 0;
}

static inline ctx_carrier_t headers_carrier(headers_t *h)
{
    ctx_carrier_t c = { headers_get_, headers_set_, h };
    return c;
}

#endif /* CTX_TESTS_CARRIER_H */
