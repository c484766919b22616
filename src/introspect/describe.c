/* SPDX-License-Identifier: MIT */

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
    ctx_time_t now;   /* one instant for the whole text */
    int64_t wall_now; /* the same instant on CLOCK_REALTIME, in ns */
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
    int64_t wall_now; /* CLOCK_REALTIME at `now`, in ns */
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
        struct deadline_arg d = { c, s->now, s->wall_now };
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

/* One node's own piece of ctx_describe's text (".WithCancel", ...), for
 * ctx_dump (track.c), which indents pieces instead of chaining them. */
size_t ctx__describe_piece(ctx_t *c, char *buf, size_t size)
{
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    struct sink s = { buf, buf != NULL ? size : 0, 0, ctx_now(),
                      (int64_t)rt.tv_sec * CTX_SECOND + rt.tv_nsec };
    piece(&s, c);
    if (s.size > 0)
        buf[s.pos < s.size ? s.pos : s.size - 1] = '\0';
    return s.pos;
}

size_t ctx_describe(ctx_t *c, char *buf, size_t size)
{
    if (buf == NULL)
        size = 0;
    ctx_time_t now = ctx_now();
    struct timespec rt;
    clock_gettime(CLOCK_REALTIME, &rt);
    int64_t wall = (int64_t)rt.tv_sec * CTX_SECOND + rt.tv_nsec;
    if (c == NULL) {
        struct sink s = { buf, size, 0, now, wall };
        put(&s, "<nil>");
        if (size > 0)
            buf[s.pos < size ? s.pos : size - 1] = '\0';
        return s.pos;
    }
    /* Pass 1: the total length. */
    size_t total = 0;
    for (const struct ctx *n = c; n != NULL; n = ctx__parent(n)) {
        struct sink m = { NULL, 0, 0, now, wall };
        piece(&m, n);
        total += m.pos;
        if (ctx__kind(n) == CTX__ROOT)
            break;
    }
    /* Pass 2: each piece ends where the pieces to its right begin. */
    size_t end = total;
    for (const struct ctx *n = c; n != NULL && size > 0; n = ctx__parent(n)) {
        struct sink m = { NULL, 0, 0, now, wall };
        piece(&m, n);
        /* A user hook that changed its length between the passes would
         * misplace its own text; clamp so it can never write outside. */
        size_t len = m.pos < end ? m.pos : end;
        struct sink s = { buf, size, end - len, now, wall };
        piece(&s, n);
        end -= len;
        if (ctx__kind(n) == CTX__ROOT)
            break;
    }
    if (size > 0)
        buf[total < size ? total : size - 1] = '\0';
    return total;
}

/* Appends "<whole>[.<fraction>]<unit>" for v in units of `unit_ns`, with the
 * fraction's trailing zeros dropped, as Go prints durations. */
static int put_frac(char *p, size_t room, uint64_t v, uint64_t unit_ns, int digits,
                    const char *unit)
{
    uint64_t whole = v / unit_ns, frac = v % unit_ns;
    if (frac == 0)
        return snprintf(p, room, "%" PRIu64 "%s", whole, unit);
    while (frac % 10 == 0) {
        frac /= 10;
        digits--;
    }
    return snprintf(p, room, "%" PRIu64 ".%0*" PRIu64 "%s", whole, digits, frac, unit);
}

/* A duration the way Go's time.Duration.String writes it: "1h0m0s",
 * "2m3.5s", "999.999162ms", "15µs", "0s". */
static void duration_text(ctx_duration_t d, char *p, size_t room)
{
    uint64_t u = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    const char *sign = d < 0 ? "-" : "";
    int n = snprintf(p, room, "%s", sign);
    if (n < 0 || (size_t)n >= room)
        return;
    p += n;
    room -= (size_t)n;
    if (u < 1000u)
        snprintf(p, room, "%" PRIu64 "ns", u);
    else if (u < 1000000u)
        put_frac(p, room, u, 1000u, 3, "\u00b5s");
    else if (u < 1000000000u)
        put_frac(p, room, u, 1000000u, 6, "ms");
    else {
        uint64_t h = u / 3600000000000u, m = u / 60000000000u % 60u;
        u %= 60000000000u;
        if (h > 0)
            n = snprintf(p, room, "%" PRIu64 "h%" PRIu64 "m", h, m);
        else if (m > 0)
            n = snprintf(p, room, "%" PRIu64 "m", m);
        else
            n = 0;
        if (n < 0 || (size_t)n >= room)
            return;
        put_frac(p + n, room - (size_t)n, u, 1000000000u, 9, "s");
    }
}

/* "<UTC wall time> [<time left>]", the shape of Go's
 * "WithDeadline(2009-11-10 23:00:00 +0000 UTC m=+1 [1h0m0s])".  The
 * deadline lives on the monotonic clock; it is shown at the wall time it
 * corresponds to now. */
static size_t deadline_text(const void *arg, char *buf, size_t size)
{
    const struct deadline_arg *a = arg;
    ctx_time_t d = 0;
    ctx_deadline((ctx_t *)a->c, &d);
    /* Saturating: a deadline may be anywhere in int64_t. */
    ctx_duration_t left;
    if (__builtin_sub_overflow(d, a->now, &left))
        left = d < 0 ? INT64_MIN : INT64_MAX;
    char when[80], rest[48];
    int64_t wall; /* ns since the epoch */
    if (__builtin_add_overflow(a->wall_now, left, &wall))
        wall = left < 0 ? INT64_MIN : INT64_MAX;
    time_t sec = (time_t)(wall / CTX_SECOND);
    long nsec = (long)(wall % CTX_SECOND);
    if (nsec < 0) {
        nsec += CTX_SECOND;
        sec--;
    }
    struct tm tm;
    size_t w = gmtime_r(&sec, &tm) != NULL ? strftime(when, 32, "%Y-%m-%d %H:%M:%S", &tm) : 0;
    if (w == 0) {
        snprintf(when, sizeof when, "%" PRId64 "ns", d);
    } else if (nsec != 0) {
        /* ".5", ".123456789": nanoseconds without trailing zeros. */
        int digits = 9;
        while (nsec % 10 == 0) {
            nsec /= 10;
            digits--;
        }
        snprintf(when + w, sizeof when - w, ".%0*ld", digits, nsec);
    }
    duration_text(left, rest, sizeof rest);
    int n = snprintf(buf, size, "%s%s [%s]", when, w != 0 ? " +0000 UTC" : "", rest);
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

/* fork: take (0) or release (1) the error-text lock. */
void ctx__describe_atfork(int release)
{
    if (release)
        pthread_mutex_unlock(&errtexts_mu);
    else
        pthread_mutex_lock(&errtexts_mu);
}

/* strerror_r comes in two kinds: GNU's (glibc with _GNU_SOURCE) returns
 * the text, a static string or buf; the POSIX one (musl, macOS, FreeBSD)
 * writes buf and returns 0 or an error number.  ERR_TEXT tells them apart
 * by the return type, at compile time, and gives the text either way. */
static inline const char *gnu_text(const char *r, char *buf, size_t n, int err)
{
    (void)buf;
    (void)n;
    (void)err;
    return r;
}

static inline const char *posix_text(int r, char *buf, size_t n, int err)
{
    if (r != 0 && r != ERANGE) /* ERANGE: cut short, still text */
        snprintf(buf, n, "Unknown error %d", err);
    buf[n - 1] = '\0';
    return buf;
}

/* The POSIX strerror_r gives every text in the caller's buffer, even for
 * the codes the C library knows: the texts of codes below STATIC_CODES
 * (every errno value of the supported systems) are kept here, made once,
 * so that they cost no allocation.  Other codes go to the list above. */
#define STATIC_CODES 256
static char static_texts[STATIC_CODES][64];
static _Atomic unsigned char static_made[STATIC_CODES];

#define ERR_TEXT(err, buf, n)                                                                      \
    _Generic(strerror_r((err), (buf), (n)), char *: gnu_text, default: posix_text)(                \
        strerror_r((err), (buf), (n)), (buf), (n), (err))

/* The C library's text for err, static. */
static const char *sys_text(int err);

const char *ctx_strerror(int err)
{
    if (err == CTX_CANCELED)
        return "context canceled";
    if (err == CTX_DEADLINE_EXCEEDED)
        return "context deadline exceeded";
    return sys_text(err);
}

const char *ctx_strerror_of(ctx_t *ctx, int err)
{
    if (err != 0 && ctx != NULL && err == ctx_err(ctx))
        return ctx_strerror(err);
    return sys_text(err);
}

static const char *sys_text(int err)
{
    char buf[64];
    /* The GNU strerror_r returns a static string for codes it knows and
     * writes the others into buf; the POSIX one always writes buf, whose
     * text is then kept below, once per code. */
    const char *t = ERR_TEXT(err, buf, sizeof buf);
    if (t != buf)
        return t;
    if (err >= 0 && err < STATIC_CODES) {
        /* Acquire: pairs with the release below; the text is complete. */
        if (!atomic_load_explicit(&static_made[err], memory_order_acquire)) {
            pthread_mutex_lock(&errtexts_mu);
            if (!atomic_load_explicit(&static_made[err], memory_order_relaxed)) {
                memcpy(static_texts[err], buf, sizeof static_texts[err]);
                atomic_store_explicit(&static_made[err], 1, memory_order_release);
            }
            pthread_mutex_unlock(&errtexts_mu);
        }
        return static_texts[err];
    }
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
