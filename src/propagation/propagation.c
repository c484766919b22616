/* SPDX-License-Identifier: MIT */

/*
 * Propagation: ctx_inject, ctx_extract, baggage and trace identity.
 *
 * Everything a context carries across processes lives in "prop" blocks, one
 * allocation each, bound under one private key.  ctx_with_baggage binds a
 * block with one entry on a value node; ctx_extract binds one with the
 * incoming trace and every incoming member on a custom node (a cancel node
 * with a value hook, so that the child it returns costs one node when the
 * request brings no deadline).  Each block points at the block visible from
 * its parent when it was made, so the baggage of a context is a chain that
 * ctx_inject walks nearest first; the chain stays alive because each context
 * holds a reference to its parent.  A block also points at the nearest trace
 * (its own, or the one above it), so a trace lookup is one ctx_value.
 *
 * Blocks are immutable once bound: readers need no lock and no atomic.
 */
#include "internal.h"
#include "platform.h"
#include "wire.h"

#include "ctx/propagation.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct trace {
    struct ctx__traceparent tp; /* span_id: the caller's span, or a new root's */
    const char *tracestate;     /* "" when there is none */
};

struct bag_entry {
    const char *key;
    const char *value; /* decoded */
    const char *props; /* as received, or NULL */
};

struct prop {
    const struct prop *up;     /* the block visible from the parent, or NULL */
    const struct trace *trace; /* the nearest trace, or NULL */
    struct trace own;          /* used when trace == &own */
    size_t nbag;
    struct bag_entry bag[]; /* then the strings */
};

static size_t prop_format(const void *value, char *buf, size_t size);

static const ctx_key_t prop_key = { .name = "baggage", .format = prop_format };

static const struct prop *prop_of(ctx_t *ctx)
{
    return ctx == NULL ? NULL : ctx_value(ctx, &prop_key);
}

static void prop_free(void *p)
{
    ctx__free(p);
}

/* describe for a baggage node: "key=value". */
static size_t prop_format(const void *value, char *buf, size_t size)
{
    const struct prop *p = value;
    int n = p->nbag == 1 ? snprintf(buf, size, "%s=%s", p->bag[0].key, p->bag[0].value)
                         : snprintf(buf, size, "%zu entries", p->nbag);
    return n < 0 ? 0 : (size_t)n;
}

/* ---------------------------------------------------------------------------
 * Random ids
 *
 * Trace and span ids come from the kernel's generator, never from the clock:
 * two services starting a trace in the same nanosecond must not collide.
 * Each thread draws 256 bytes at a time; a forked child discards what its
 * parent had drawn, or both would hand out the same ids.
 */

#define POOL_SIZE 256

/* Plain _Thread_local, not CTX__TLS: 260 bytes would be a large share of
 * the static TLS surplus that a dlopen'ed libctx.so may use, and one
 * __tls_get_addr per id costs little beside the rest of an inject. */
static _Thread_local struct {
    uint8_t bytes[POOL_SIZE];
    uint32_t left;
} pool;

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void pool_forget(void)
{
    memset(&pool, 0, sizeof pool);
}

static void pool_init(void)
{
    pthread_atfork(NULL, NULL, pool_forget);
}

/* n (<= POOL_SIZE) random bytes, not all zero (W3C forbids all-zero ids). */
static int random_id(uint8_t *out, size_t n)
{
    pthread_once(&pool_once, pool_init);
    for (;;) {
        if (pool.left < n) {
            int e = ctx__plat_random(pool.bytes, POOL_SIZE);
            if (e != 0)
                return e;
            pool.left = POOL_SIZE;
        }
        memcpy(out, pool.bytes + POOL_SIZE - pool.left, n);
        memset(pool.bytes + POOL_SIZE - pool.left, 0, n); /* never hand out twice */
        pool.left -= (uint32_t)n;
        for (size_t i = 0; i < n; i++)
            if (out[i] != 0)
                return 0;
    }
}

/* ---------------------------------------------------------------------------
 * Baggage and trace lookups
 */

ctx_t *ctx_with_baggage(ctx_t *parent, const char *key, const char *value)
{
    if (parent == NULL || key == NULL || value == NULL || !ctx__token_valid(key, strlen(key))) {
        errno = EINVAL;
        return NULL;
    }
    size_t kl = strlen(key), vl = strlen(value);
    struct prop *p = ctx__alloc(sizeof *p + sizeof p->bag[0] + kl + 1 + vl + 1);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    const struct prop *up = prop_of(parent);
    char *s = (char *)&p->bag[1];
    memcpy(s, key, kl + 1);
    memcpy(s + kl + 1, value, vl + 1);
    p->up = up;
    p->trace = up != NULL ? up->trace : NULL;
    p->nbag = 1;
    p->bag[0] = (struct bag_entry){ s, s + kl + 1, NULL };
    ctx_t *c = ctx_with_value(parent, &prop_key, p, prop_free);
    if (c == NULL) {
        ctx__free(p);
        errno = ENOMEM;
    }
    return c;
}

const char *ctx_baggage(ctx_t *ctx, const char *key)
{
    if (key == NULL)
        return NULL;
    for (const struct prop *p = prop_of(ctx); p != NULL; p = p->up)
        for (size_t i = p->nbag; i-- > 0;) /* within a block the last member wins */
            if (strcmp(p->bag[i].key, key) == 0)
                return p->bag[i].value;
    return NULL;
}

bool ctx_trace_id(ctx_t *ctx, char buf[33])
{
    const struct prop *p = prop_of(ctx);
    if (p == NULL || p->trace == NULL || buf == NULL)
        return false;
    ctx__hex(p->trace->tp.trace_id, 16, buf);
    return true;
}

bool ctx_span_id(ctx_t *ctx, char buf[17])
{
    const struct prop *p = prop_of(ctx);
    if (p == NULL || p->trace == NULL || buf == NULL)
        return false;
    ctx__hex(p->trace->tp.span_id, 8, buf);
    return true;
}

/* ---------------------------------------------------------------------------
 * Inject
 */

/* The baggage header of ctx into out (CTX__BAGGAGE_MAX_BYTES + 1 bytes):
 * distinct keys nearest first, until a member would pass either limit;
 * written oldest first, the order in which they were bound. */
static size_t baggage_header(const struct prop *top, char *out)
{
    const struct bag_entry *pick[CTX__BAGGAGE_MAX_MEMBERS];
    size_t npick = 0, total = 0;
    for (const struct prop *p = top; p != NULL; p = p->up) {
        for (size_t i = p->nbag; i-- > 0;) {
            const struct bag_entry *e = &p->bag[i];
            bool seen = false;
            for (size_t j = 0; j < npick && !seen; j++)
                seen = strcmp(pick[j]->key, e->key) == 0;
            if (seen)
                continue;
            size_t len = strlen(e->key) + 1 + ctx__baggage_encoded_len(e->value) +
                         (e->props != NULL ? 1 + strlen(e->props) : 0) + (npick > 0);
            if (npick == CTX__BAGGAGE_MAX_MEMBERS || total + len > CTX__BAGGAGE_MAX_BYTES)
                goto write;
            pick[npick++] = e;
            total += len;
        }
    }
write:;
    size_t n = 0;
    for (size_t j = npick; j-- > 0;) {
        const struct bag_entry *e = pick[j];
        if (n > 0)
            out[n++] = ',';
        size_t kl = strlen(e->key);
        memcpy(out + n, e->key, kl);
        n += kl;
        out[n++] = '=';
        n += ctx__baggage_encode(e->value, out + n);
        if (e->props != NULL) {
            size_t pl = strlen(e->props);
            out[n++] = ';';
            memcpy(out + n, e->props, pl);
            n += pl;
        }
    }
    out[n] = '\0';
    return n;
}

int ctx_inject(ctx_t *ctx, const ctx_carrier_t *out)
{
    if (ctx == NULL || out == NULL || out->set == NULL)
        return EINVAL;
    int e = ctx_err(ctx);
    if (e != 0)
        return e;

    /* Every value is ready before the first set: a failure of ours writes
     * nothing. */
    char timeout[CTX__GRPC_TIMEOUT_SIZE];
    ctx_time_t deadline;
    bool has_deadline = ctx_deadline(ctx, &deadline);
    if (has_deadline) {
        ctx_duration_t left = deadline - ctx_now();
        if (left <= 0)
            return CTX_DEADLINE_EXCEEDED; /* the timer has not fired yet */
        ctx__grpc_timeout_format(left, timeout);
    }

    const struct prop *p = prop_of(ctx);
    const struct trace *t = p != NULL ? p->trace : NULL;
    char traceparent[CTX__TRACEPARENT_LEN + 1];
    if (t != NULL) {
        struct ctx__traceparent tp = t->tp;
        if ((e = random_id(tp.span_id, sizeof tp.span_id)) != 0)
            return e;
        ctx__traceparent_format(&tp, traceparent);
    }

    char baggage[CTX__BAGGAGE_MAX_BYTES + 1];
    size_t baggage_len = baggage_header(p, baggage);

    if (has_deadline && (e = out->set(out->headers, "grpc-timeout", timeout)) != 0)
        return e;
    if (t != NULL && (e = out->set(out->headers, "traceparent", traceparent)) != 0)
        return e;
    if (t != NULL && t->tracestate[0] != '\0' &&
        (e = out->set(out->headers, "tracestate", t->tracestate)) != 0)
        return e;
    if (baggage_len > 0 && (e = out->set(out->headers, "baggage", baggage)) != 0)
        return e;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Extract
 */

static bool extract_value(void *data, const ctx_key_t *key, void **value)
{
    if (key != &prop_key)
        return false;
    *value = data;
    return true;
}

static size_t extract_describe(void *data, char *buf, size_t size)
{
    const struct prop *p = data;
    char id[33];
    ctx__hex(p->own.tp.trace_id, 16, id);
    int n = snprintf(buf, size, "Extract(trace %s, %zu baggage)", id, p->nbag);
    return n < 0 ? 0 : (size_t)n;
}

static const ctx_custom_ops_t extract_ops = {
    .name = "Extract",
    .value = extract_value,
    .describe = extract_describe,
    .destroy = prop_free,
};

ctx_t *ctx_extract(ctx_t *parent, const ctx_carrier_t *in, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL || in == NULL || in->get == NULL) {
        errno = EINVAL;
        return NULL;
    }

    /* Each header's length is taken with strnlen and a bound one past the
     * longest value its parser accepts, so whatever get returns, no more
     * than a fixed prefix is looked at, and an over-long value still looks
     * over-long to the parser. */
    ctx_duration_t timeout = 0;
    const char *h = in->get(in->headers, "grpc-timeout");
    bool has_timeout =
        h != NULL && ctx__grpc_timeout_parse(h, strnlen(h, CTX__GRPC_TIMEOUT_SIZE), &timeout) == 0;

    struct trace t = { .tracestate = "" };
    char tracestate[CTX__TRACESTATE_MAX + 1];
    size_t ts_len = 0;
    h = in->get(in->headers, "traceparent");
    if (h != NULL && ctx__traceparent_parse(h, strnlen(h, CTX__TRACEPARENT_READ_MAX), &t.tp) == 0) {
        h = in->get(in->headers, "tracestate");
        if (h != NULL)
            ts_len =
                ctx__tracestate_filter(h, strnlen(h, CTX__TRACESTATE_READ_MAX + 1), tracestate);
    } else {
        int e = random_id(t.tp.trace_id, sizeof t.tp.trace_id);
        if (e == 0)
            e = random_id(t.tp.span_id, sizeof t.tp.span_id);
        if (e != 0) {
            errno = e;
            return NULL;
        }
        t.tp.flags = CTX__TRACE_RANDOM;
    }

    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    int nb = 0;
    h = in->get(in->headers, "baggage");
    if (h != NULL && (nb = ctx__baggage_parse(h, strnlen(h, CTX__BAGGAGE_MAX_BYTES + 1), m)) < 0)
        nb = 0; /* malformed: ignored whole */

    /* One block: the header, the entries, then the strings. */
    size_t size = sizeof(struct prop) + (size_t)nb * sizeof(struct bag_entry) + ts_len + 1;
    for (int i = 0; i < nb; i++)
        size += m[i].key_len + 1 + m[i].value_len_decoded + 1 +
                (m[i].props != NULL ? m[i].props_len + 1 : 0);
    struct prop *p = ctx__alloc(size);
    if (p == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    char *s = (char *)&p->bag[nb];
    p->up = prop_of(parent);
    p->trace = &p->own;
    p->own = t;
    p->nbag = (size_t)nb;
    memcpy(s, tracestate, ts_len);
    s[ts_len] = '\0';
    p->own.tracestate = s;
    s += ts_len + 1;
    for (int i = 0; i < nb; i++) {
        struct bag_entry *e = &p->bag[i];
        e->key = s;
        memcpy(s, m[i].key, m[i].key_len);
        s[m[i].key_len] = '\0';
        s += m[i].key_len + 1;
        e->value = s;
        ctx__baggage_decode(m[i].value, m[i].value_len, s);
        s += m[i].value_len_decoded + 1;
        e->props = NULL;
        if (m[i].props != NULL) {
            e->props = s;
            memcpy(s, m[i].props, m[i].props_len);
            s[m[i].props_len] = '\0';
            s += m[i].props_len + 1;
        }
    }

    ctx_t *c = ctx_with_custom(parent, &extract_ops, p, has_timeout ? NULL : cancel);
    if (c == NULL) {
        ctx__free(p); /* destroy is not called on failure */
        errno = ENOMEM;
        return NULL;
    }
    if (!has_timeout)
        return c;
    ctx_t *d = ctx_with_timeout(c, timeout, cancel);
    int e = errno;
    ctx_unref(c); /* d holds c; on failure this frees c and p */
    errno = e;
    return d;
}
