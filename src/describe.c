/*
 * ctx_describe (Go's String) and ctx_strerror.
 *
 * The text reads root first ("context.Background.WithCancel..."), but the
 * chain can only be walked from the leaf up, and its depth is the user's.
 * So it is built in two iterative passes without any allocation: the first
 * measures every piece, the second walks up again and writes each piece at
 * the place the lengths below it leave for it.
 */
#include "internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* Writes into buf[pos..] up to the limit of a buffer of `size` bytes (the
 * last of which is reserved for the terminating NUL) and advances pos by the
 * full length, snprintf-style. */
struct sink {
    char *buf;
    size_t size;
    size_t pos;
    ctx_time_t now; /* one instant for the whole text */
};

static void put(struct sink *s, const char *text)
{
    for (; *text != '\0'; text++, s->pos++)
        if (s->pos + 1 < s->size)
            s->buf[s->pos] = *text;
}

/* Appends what an snprintf-style user function writes.  Such a function
 * NUL-terminates its output, which would overwrite the first character of
 * the piece already written to the right of it: save and restore it. */
static void put_fn(struct sink *s, size_t (*fn)(const void *, char *, size_t), const void *arg)
{
    size_t len = fn(arg, NULL, 0);
    if (s->pos + 1 < s->size) {
        size_t room = s->size - 1 - s->pos;
        size_t end = s->pos + (len < room ? len : room);
        char saved = s->buf[end];
        fn(arg, s->buf + s->pos, room + 1);
        s->buf[end] = saved;
    }
    s->pos += len;
}

/* Adapters from the two user hook signatures to put_fn's. */
struct custom_arg {
    const struct ctx__custom *cu;
};
static size_t custom_describe(const void *arg, char *buf, size_t size)
{
    const struct ctx__custom *cu = ((const struct custom_arg *)arg)->cu;
    return cu->ops->describe(cu->data, buf, size);
}

struct deadline_arg {
    const struct ctx *c;
    ctx_time_t now;
};
static size_t deadline_text(const void *arg, char *buf, size_t size);

static void piece(struct sink *s, const struct ctx *c)
{
    switch (ctx__kind(c)) {
    case CTX__ROOT:
        put(s, c == &ctx__todo_node ? "context.TODO" : "context.Background");
        break;
    case CTX__CANCEL:
        put(s, ".WithCancel");
        break;
    case CTX__TIMER: {
        put(s, ".WithDeadline(");
        struct deadline_arg d = { c, s->now };
        put_fn(s, deadline_text, &d);
        put(s, ")");
        break;
    }
    case CTX__WITHOUT:
        put(s, ".WithoutCancel");
        break;
    case CTX__VALUE:
        put(s, ".WithValue(");
        put(s, c->u.v.key->name != NULL ? c->u.v.key->name : "<unnamed key>");
        put(s, ", ");
        if (c->u.v.key->format != NULL)
            put_fn(s, (size_t(*)(const void *, char *, size_t))c->u.v.key->format, c->u.v.value);
        else
            put(s, "...");
        put(s, ")");
        break;
    case CTX__CUSTOM: {
        const struct ctx__custom *cu = (const struct ctx__custom *)c;
        put(s, ".");
        if (cu->ops->describe != NULL) {
            struct custom_arg a = { cu };
            put_fn(s, custom_describe, &a);
        } else {
            put(s, cu->ops->name != NULL ? cu->ops->name : "Custom");
        }
        break;
    }
    default:
        break;
    }
}

size_t ctx_describe(ctx_t *c, char *buf, size_t size)
{
    if (buf == NULL)
        size = 0;
    ctx_time_t now = ctx_now();
    if (c == NULL) {
        struct sink s = { buf, size, 0, now };
        put(&s, "<nil>");
        if (size > 0)
            buf[s.pos < size ? s.pos : size - 1] = '\0';
        return s.pos;
    }
    /* Pass 1: the total length. */
    size_t total = 0;
    for (const struct ctx *n = c; n != NULL; n = ctx__parent(n)) {
        struct sink m = { NULL, 0, 0, now };
        piece(&m, n);
        total += m.pos;
        if (ctx__kind(n) == CTX__ROOT)
            break;
    }
    /* Pass 2: each piece ends where the pieces to its right begin. */
    size_t end = total;
    for (const struct ctx *n = c; n != NULL && size > 0; n = ctx__parent(n)) {
        struct sink m = { NULL, 0, 0, now };
        piece(&m, n);
        /* A user hook that changed its length between the passes would
         * misplace its own text; clamp so it can never write outside. */
        size_t len = m.pos < end ? m.pos : end;
        struct sink s = { buf, size, end - len, now };
        piece(&s, n);
        end -= len;
        if (ctx__kind(n) == CTX__ROOT)
            break;
    }
    if (size > 0)
        buf[total < size ? total : size - 1] = '\0';
    return total;
}

/* "<instant> [<remaining>]" in seconds on ctx_now()'s clock, the shape of
 * Go's "WithDeadline(2009-11-10 23:00:00 +0000 UTC [1h0m0s])". */
static size_t deadline_text(const void *arg, char *buf, size_t size)
{
    const struct deadline_arg *a = arg;
    ctx_time_t d = 0;
    ctx_deadline((ctx_t *)a->c, &d);
    ctx_duration_t left = d - a->now;
    int n =
        snprintf(buf, size, "%" PRId64 ".%09" PRId64 "s [%s%" PRId64 ".%09" PRId64 "s]",
                 d / CTX_SECOND, d % CTX_SECOND, left < 0 ? "-" : "",
                 (left < 0 ? -left : left) / CTX_SECOND, (left < 0 ? -left : left) % CTX_SECOND);
    return n < 0 ? 0 : (size_t)n;
}

/* Texts of codes the C library does not know ("Unknown error 4004"),
 * made once per code and kept for the life of the process, because
 * ctx_cause promises its text stays valid while the context lives and
 * strerror's buffer is shared and overwritten. */
struct errtext {
    int code;
    struct errtext *next;
    char text[];
};
static struct errtext *errtexts;
static pthread_mutex_t errtexts_mu = PTHREAD_MUTEX_INITIALIZER;

const char *ctx_strerror(int err)
{
    if (err == CTX_CANCELED)
        return "context canceled";
    if (err == CTX_DEADLINE_EXCEEDED)
        return "context deadline exceeded";
    char buf[64];
    /* The GNU strerror_r returns a static string for codes it knows and
     * writes the others into buf. */
    const char *t = strerror_r(err, buf, sizeof buf);
    if (t != buf)
        return t;
    pthread_mutex_lock(&errtexts_mu);
    struct errtext *e = errtexts;
    while (e != NULL && e->code != err)
        e = e->next;
    if (e == NULL) {
        size_t n = strlen(buf) + 1;
        e = ctx__alloc(sizeof *e + n);
        if (e != NULL) {
            e->code = err;
            memcpy(e->text, buf, n);
            e->next = errtexts;
            errtexts = e;
        }
    }
    pthread_mutex_unlock(&errtexts_mu);
    return e != NULL ? e->text : "unknown error";
}
