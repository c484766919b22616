/* SPDX-License-Identifier: MIT */

/*
 * ctx_dial: Go's net.Dialer.DialContext for TCP.
 *
 * getaddrinfo(3) cannot be interrupted, so a name (as opposed to a numeric
 * address, which is parsed on the caller's thread) is looked up on a thread
 * of its own while the caller waits on a child of its context.  The lookup
 * ends that child when it finishes; the caller's context ends it when it is
 * done first.  Whoever comes second in the race on `state` cleans up: an
 * abandoned lookup frees its own result when getaddrinfo finally returns,
 * while the caller's context is released at once (the caller drops the
 * thread's reference to the child).
 * A thread per lookup, rather than a pool, keeps a hung name server from
 * holding up unrelated lookups, and costs nothing when nobody dials names.
 */
#include "internal.h"
#include "platform.h"

#include "ctx/io.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

enum { L_RUNNING = 0, L_FINISHED = 1, L_ABANDONED = 2 };

struct lookup {
    _Atomic uint32_t refs;  /* the caller's and the thread's */
    _Atomic uint32_t state; /* L_RUNNING until one side claims it */
    ctx_t *wake;            /* child of the caller's ctx; the thread holds a ref */
    ctx_cancel_t *wake_cancel;
    struct addrinfo *res; /* the thread's result, until the caller takes it */
    int rc;               /* getaddrinfo's return value */
    int sys_errno;        /* errno after it, for EAI_SYSTEM */
    char *host;           /* copies: the caller may be gone when they are used */
    char *port;
};

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = ctx__alloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

static void lookup_free(struct lookup *lk)
{
    ctx__free(lk->host);
    ctx__free(lk->port);
    ctx__free(lk);
}

static void lookup_unref(struct lookup *lk)
{
    /* acq_rel: the last side sees everything the other side wrote. */
    if (atomic_fetch_sub_explicit(&lk->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (lk->res != NULL)
        freeaddrinfo(lk->res); /* abandoned: nobody took it */
    lookup_free(lk);
}

static const struct addrinfo dial_hints = {
    .ai_family = AF_UNSPEC,
    .ai_socktype = SOCK_STREAM,
    .ai_protocol = IPPROTO_TCP,
};

static void *lookup_thread(void *arg)
{
    struct lookup *lk = arg;
    struct addrinfo *res = NULL;
    lk->rc = getaddrinfo(lk->host, lk->port, &dial_hints, &res);
    lk->sys_errno = errno;
    lk->res = res;
    uint32_t expected = L_RUNNING;
    /* Release: publishes rc and res to the caller's acquire in
     * resolve_name.  When the caller abandoned the lookup first, the
     * result stays in lk and lookup_unref frees it, and the caller has
     * dropped this thread's reference to wake already: wake is not ours
     * to touch. */
    if (atomic_compare_exchange_strong_explicit(&lk->state, &expected, L_FINISHED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        ctx_t *wake = lk->wake;
        ctx_cancel(lk->wake_cancel);
        ctx_unref(wake);
    }
    lookup_unref(lk);
    return NULL;
}

/* Starts the lookup thread, detached and with every signal blocked (signals
 * belong to the program's own threads). */
static int start_thread(struct lookup *lk)
{
    pthread_attr_t a;
    if (pthread_attr_init(&a) != 0)
        return EAGAIN;
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int e = pthread_create(&tid, &a, lookup_thread, lk);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    return e;
}

/* Maps getaddrinfo's result codes onto the errno values io.h names. */
static int gai_errno(int rc, int sys_errno)
{
    switch (rc) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
#ifdef EAI_ADDRFAMILY
    case EAI_ADDRFAMILY:
#endif
        return ENOENT;
    case EAI_AGAIN:
        return EAGAIN;
    case EAI_MEMORY:
        return ENOMEM;
    case EAI_SERVICE:
    case EAI_SOCKTYPE:
    case EAI_FAMILY:
    case EAI_BADFLAGS:
        return EINVAL;
    case EAI_SYSTEM:
        return sys_errno != 0 ? sys_errno : EIO;
    default:
        return EIO;
    }
}

/* Resolves host:port into *res, on a lookup thread, as long as c allows.
 * Returns 0 or an errno-style code. */
static int resolve_name(ctx_t *c, const char *host, const char *port, struct addrinfo **res)
{
    struct lookup *lk = ctx__alloc(sizeof *lk);
    if (lk == NULL)
        return ENOMEM;
    memset(lk, 0, sizeof *lk);
    atomic_init(&lk->refs, 2);
    atomic_init(&lk->state, L_RUNNING);
    lk->host = dup_str(host);
    lk->port = dup_str(port);
    lk->wake = ctx_with_cancel(c, &lk->wake_cancel);
    if (lk->host == NULL || lk->port == NULL || lk->wake == NULL) {
        ctx_unref(lk->wake);
        lookup_free(lk);
        return ENOMEM;
    }
    ctx__ref(lk->wake); /* the thread's reference */
    int e = start_thread(lk);
    if (e != 0) {
        ctx_unref(lk->wake);
        ctx_unref(lk->wake);
        lookup_free(lk);
        return EAGAIN;
    }
    ctx_wait(lk->wake, CTX_FOREVER);
    uint32_t expected = L_RUNNING;
    int rc;
    /* Acquire (on failure): pairs with the thread's release; rc and res
     * are its. */
    if (atomic_compare_exchange_strong_explicit(&lk->state, &expected, L_ABANDONED,
                                                memory_order_acq_rel, memory_order_acquire)) {
        /* c ended first: the thread cleans up its result.  Its reference
         * to wake is dropped here, now, since it will never use it: wake
         * holds c (and so c's ancestors and values) alive, and a name
         * server that never answers must not pin them until getaddrinfo
         * gives up, which can take minutes. */
        rc = ctx_err(c);
        ctx_unref(lk->wake);
    } else if (lk->rc != 0) {
        rc = gai_errno(lk->rc, lk->sys_errno);
    } else {
        *res = lk->res;
        lk->res = NULL;
        rc = 0;
    }
    ctx_unref(lk->wake);
    lookup_unref(lk);
    return rc;
}

/* The context of one connection attempt when c has a deadline: Go's
 * partialDeadline.  The time left is shared among the addresses left, but
 * an attempt gets at least 2 s (or all that is left), so that one
 * address that never answers (a black hole) cannot use up the whole
 * deadline before the next address is tried.  NULL: use c itself (no
 * deadline, one address left, or no memory for the child). */
static ctx_t *attempt_ctx(ctx_t *c, size_t left)
{
    ctx_time_t dl;
    if (left <= 1 || !ctx_deadline(c, &dl))
        return NULL;
    ctx_time_t now = ctx_now();
    ctx_duration_t remaining = dl - now;
    ctx_duration_t share = remaining / (ctx_duration_t)left;
    const ctx_duration_t sane_minimum = 2 * CTX_SECOND;
    if (share < sane_minimum)
        share = remaining < sane_minimum ? remaining : sane_minimum;
    return ctx_with_deadline(c, ctx__add_sat(now, share), NULL);
}

int ctx_dial(ctx_t *c, const char *host, const char *port)
{
    if (c == NULL || port == NULL) {
        errno = EINVAL;
        return -1;
    }
    if (ctx__ended(c))
        return -1;
    /* A numeric address (or NULL: the loopback address) needs no name
     * server and is parsed here. */
    struct addrinfo hints = dial_hints;
    hints.ai_flags = AI_NUMERICHOST;
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc == EAI_NONAME && host != NULL) {
        int e = resolve_name(c, host, port, &res);
        if (e != 0) {
            errno = e;
            return ctx__fail(c);
        }
    } else if (rc != 0) {
        errno = gai_errno(rc, errno);
        return -1;
    }

    /* Each address in turn, in the resolver's order (RFC 6724). */
    size_t left = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next)
        left++;
    int last = ECONNREFUSED;
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next, left--) {
        int e = ctx_err(c);
        if (e != 0) {
            last = e;
            break;
        }
        int s = ctx__plat_socket_nb(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (s < 0) {
            last = errno;
            continue;
        }
        ctx_t *attempt = attempt_ctx(c, left);
        int r = ctx_connect(attempt != NULL ? attempt : c, s, ai->ai_addr, ai->ai_addrlen);
        last = errno;
        ctx_unref(attempt);
        if (r == 0) {
            /* The caller gets a blocking socket, as net.Dial's users get
             * a conn whose reads block. */
            int fl = fcntl(s, F_GETFL);
            if (fl >= 0 && fcntl(s, F_SETFL, fl & ~O_NONBLOCK) == 0) {
                fd = s;
                break;
            }
            last = errno;
        }
        close(s);
        e = ctx_err(c);
        if (e != 0) {
            last = e;
            break;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        /* An attempt's own time budget may have ended it with ETIMEDOUT:
         * that is reported as such only while c itself lives. */
        errno = last;
        return ctx__fail(c);
    }
    return fd;
}
