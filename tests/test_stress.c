/* SPDX-License-Identifier: MIT */

/*
 * Randomized multi-threaded stress over overlapping trees.  Several threads
 * share 64 slots of contexts and, at random, create children of every kind
 * under any slot (cancel, value, without-cancel, deadlines and timeouts of
 * a few hundred microseconds with and without causes, custom), cancel with
 * and without causes, wait (ctx_wait with 0 and small timeouts, ctx_sleep,
 * ctx_cond_wait on a short deadline), poll done fds, register and stop
 * AfterFuncs, look values up, describe, ref and unref.  It runs for a few
 * seconds or a number of operations, whichever ends first.
 *
 * Checked while it runs: a ctx_cancel() that returned has made every
 * context below it done (sampled on the slots), done fds are readable once
 * and only once the context is done, waits return the context's err or 0,
 * values found are the ones bound and not yet destroyed, every AfterFunc
 * callback runs at most once and only after its context is done.
 *
 * Checked at the end: every context under a cancelled ancestor (or an
 * expired deadline) is done; each AfterFunc ran exactly once or was
 * stopped (ctx_after_stop's answer agrees with what ran); every value and
 * custom destructor ran exactly once; the counting allocator is back to
 * its baseline once everything is released (not with --default-allocator,
 * which runs the same on the library's own allocation path and caches).  A watchdog fails the test
 * if the workers do not finish (a deadlock).  Prints the operation counts.
 */
#include "check.h"

#include <poll.h>

#define NSLOTS    64
#define NTHREADS  4
#define MAX_DEPTH 48
#define MAX_VALS  (1 << 17)
#define MAX_REGS  (1 << 17)
#define MAX_STOPS 256

enum kind { K_ROOT, K_CANCEL, K_VALUE, K_WITHOUT, K_TIMER, K_CUSTOM };

/* A bound value (or a custom context's data). */
struct val {
    const ctx_key_t *key;
    uint32_t magic;
    atomic_int destroyed;
};
#define VAL_MAGIC 0x5a17c0deu

static const ctx_key_t keys[4] = {
    { .name = "a" }, { .name = "b" }, { .name = "c" }, { .name = "d" }
};

/* The test's record of one context.  It holds one library reference, and
 * a record of its parent, so that an ancestor can be examined at the end;
 * slots, children and registrations hold records. */
struct node {
    atomic_int refs;
    ctx_t *c;
    ctx_cancel_t *h; /* NULL for value and without-cancel contexts */
    struct node *parent;
    enum kind kind;
    int depth;
    bool can_be_done;
    ctx_time_t deadline;  /* asked for (an upper bound for timeouts); 0: none */
    atomic_int cancelled; /* a ctx_cancel on h has returned */
};

static struct node root_node = { .kind = K_ROOT };

static struct node *node_ref(struct node *n)
{
    if (n != NULL && n != &root_node)
        atomic_fetch_add(&n->refs, 1);
    return n;
}

static void node_release(struct node *n)
{
    while (n != NULL && n != &root_node && atomic_fetch_sub(&n->refs, 1) == 1) {
        struct node *p = n->parent;
        ctx_unref(n->c);
        free(n);
        n = p;
    }
}

/* ---------------------------------------------------------------------------
 * Shared state
 */

static struct {
    pthread_mutex_t mu;
    struct node *n;
} slots[NSLOTS];

static struct node *slot_get(unsigned i)
{
    i %= NSLOTS;
    pthread_mutex_lock(&slots[i].mu);
    struct node *n = node_ref(slots[i].n);
    pthread_mutex_unlock(&slots[i].mu);
    return n;
}

/* Puts n (whose reference the slot takes over) into slot i. */
static void slot_put(unsigned i, struct node *n)
{
    i %= NSLOTS;
    pthread_mutex_lock(&slots[i].mu);
    struct node *old = slots[i].n;
    slots[i].n = n;
    pthread_mutex_unlock(&slots[i].mu);
    node_release(old);
}

static struct val vals[MAX_VALS];
static atomic_int nvals;

static struct val *val_new(const ctx_key_t *key)
{
    int i = atomic_fetch_add(&nvals, 1);
    if (i >= MAX_VALS)
        return NULL;
    vals[i].key = key;
    vals[i].magic = VAL_MAGIC;
    atomic_init(&vals[i].destroyed, 0);
    return &vals[i];
}

static void val_destroy(void *v)
{
    struct val *x = v;
    CHECK_EQ_INT(x->magic, VAL_MAGIC);
    CHECK_EQ_INT(atomic_fetch_add(&x->destroyed, 1), 0);
}

static bool custom_value(void *data, const ctx_key_t *key, void **value)
{
    struct val *x = data;
    if (x->key != key)
        return false;
    *value = x;
    return true;
}

static const ctx_custom_ops_t custom_ops = {
    .name = "Stress", .value = custom_value, .describe = NULL, .destroy = val_destroy
};

/* An AfterFunc registration. */
struct reg {
    struct node *node; /* held until fn ran (fire and forget) or stop */
    ctx_t *ctx;        /* kept alive by the registration itself */
    bool with_stop;
    bool can_be_done;
    atomic_int runs;
    atomic_int stopped; /* 1: stop returned true, 2: stop returned false */
};

static struct reg regs[MAX_REGS];
static atomic_int nregs;
/* Guards reg.node of fire-and-forget registrations, which their callback
 * (possibly on a library thread) clears and releases. */
static pthread_mutex_t regs_mu = PTHREAD_MUTEX_INITIALIZER;

static void reg_fn(void *arg)
{
    struct reg *g = arg;
    CHECK_MSG(atomic_fetch_add(&g->runs, 1) == 0, "an AfterFunc ran twice");
    CHECK_MSG(atomic_load(&g->stopped) != 1, "an AfterFunc ran after a successful stop");
    CHECK_NE_INT(ctx_err(g->ctx), 0);
    if (!g->with_stop) {
        pthread_mutex_lock(&regs_mu);
        struct node *n = g->node;
        g->node = NULL;
        pthread_mutex_unlock(&regs_mu);
        node_release(n); /* the registration still holds the context */
    }
}

/* ---------------------------------------------------------------------------
 * Workers
 */

enum {
    OP_CREATE,
    OP_CANCEL,
    OP_WAIT,
    OP_FD,
    OP_AFTER,
    OP_STOP,
    OP_VALUE,
    OP_UNREF,
    OP_REF,
    OP_COND,
    OP_DESCRIBE,
    OP_N
};
static const char *const op_names[OP_N] = { "create", "cancel", "wait", "fd",   "after",   "stop",
                                            "value",  "unref",  "ref",  "cond", "describe" };

struct worker {
    int id;
    check_rng_t rng;
    long ops[OP_N];
    long max_ops;
    ctx_time_t until;
    struct reg *stops[MAX_STOPS];
    ctx_after_t *handles[MAX_STOPS];
    int nstops;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static atomic_int stop_all;

/* Whether x lies below a cancelled ancestor (or is itself cancelled),
 * within the reach of cancellation (not across a without-cancel layer). */
static bool under_cancelled(const struct node *x)
{
    for (const struct node *p = x; p != NULL && p != &root_node; p = p->parent) {
        if (p->kind == K_WITHOUT)
            return false;
        if (atomic_load(&p->cancelled))
            return true;
    }
    return false;
}

/* The earliest deadline of x's chain within the reach of cancellation. */
static ctx_time_t chain_deadline(const struct node *x)
{
    ctx_time_t d = 0;
    for (const struct node *p = x; p != NULL && p != &root_node; p = p->parent) {
        if (p->kind == K_WITHOUT)
            break;
        if (p->deadline != 0 && (d == 0 || p->deadline < d))
            d = p->deadline;
    }
    return d;
}

static const char *const msgs[4] = { NULL, "stress", "", "a longer cancellation message" };
static const int causes[4] = { 0, EIO, EPIPE, 4242 };

static void do_create(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *p = slot_get(check_rng_below(r, NSLOTS));
    if (p == NULL || p->depth >= MAX_DEPTH) {
        node_release(p);
        p = &root_node;
    }
    ctx_t *pc = p == &root_node ? ctx_background() : p->c;
    struct node *n = calloc(1, sizeof *n);
    CHECK_NOT_NULL(n);
    atomic_init(&n->refs, 1);
    n->parent = p; /* takes over our reference to p */
    n->depth = p->depth + 1;
    n->can_be_done = p == &root_node ? false : p->can_be_done;
    ctx_cancel_t *h = NULL;
    unsigned k = check_rng_below(r, 8);
    ctx_duration_t t = (ctx_duration_t)(50 + check_rng_below(r, 950)) * CTX_MICROSECOND;
    switch (k) {
    case 0:
    case 1:
        n->kind = K_CANCEL;
        n->c = ctx_with_cancel(pc, &h);
        n->can_be_done = true;
        break;
    case 2: {
        n->kind = K_VALUE;
        const ctx_key_t *key = &keys[check_rng_below(r, 4)];
        struct val *v = val_new(key);
        n->c = ctx_with_value(pc, key, v, v != NULL ? val_destroy : NULL);
        break;
    }
    case 3:
        n->kind = K_WITHOUT;
        n->c = ctx_without_cancel(pc);
        n->can_be_done = false;
        break;
    case 4:
        n->kind = K_TIMER;
        n->deadline = ctx_now() + t;
        n->c = ctx_with_deadline(pc, n->deadline, &h);
        n->can_be_done = true;
        break;
    case 5:
        n->kind = K_TIMER;
        n->c = ctx_with_timeout_cause(pc, t, causes[check_rng_below(r, 4)],
                                      msgs[check_rng_below(r, 4)], &h);
        n->deadline = ctx_now() + t; /* not earlier than the real one */
        n->can_be_done = true;
        break;
    case 6:
        n->kind = K_TIMER;
        n->c = ctx_with_timeout(pc, t, &h);
        n->deadline = ctx_now() + t;
        n->can_be_done = true;
        break;
    default: {
        n->kind = K_CUSTOM;
        struct val *v = val_new(&keys[check_rng_below(r, 4)]);
        if (v == NULL)
            n->c = ctx_with_cancel(pc, &h);
        else
            n->c = ctx_with_custom(pc, &custom_ops, v, &h);
        n->can_be_done = true;
        break;
    }
    }
    CHECK_NOT_NULL(n->c);
    n->h = h;
    /* A child of a context under a cancelled ancestor is born done. */
    if (under_cancelled(n))
        CHECK_NE_INT(ctx_err(n->c), 0);
    slot_put(check_rng_below(r, NSLOTS), n);
}

static void do_cancel(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    if (n == NULL || n->h == NULL) {
        node_release(n);
        return;
    }
    if (check_rng_below(r, 2) == 0) {
        ctx_cancel(n->h);
    } else {
        unsigned i = check_rng_below(r, 4);
        ctx_cancel_cause(n->h, causes[i], msgs[i]);
    }
    /* Synchronous: when cancel returns, the context and everything below
     * it is done, whatever other threads are doing to the same tree. */
    atomic_store(&n->cancelled, 1);
    CHECK_NE_INT(ctx_err(n->c), 0);
    const char *m = NULL;
    CHECK_NE_INT(ctx_cause(n->c, &m), 0);
    CHECK_NOT_NULL(m);
    for (int k = 0; k < 4; k++) {
        struct node *x = slot_get(check_rng_below(r, NSLOTS));
        if (x != NULL && under_cancelled(x))
            CHECK_MSG(ctx_err(x->c) != 0, "a context below a cancelled one is not done");
        node_release(x);
    }
    node_release(n);
}

static void do_wait(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    ctx_t *c = n != NULL ? n->c : ctx_background();
    unsigned how = check_rng_below(r, 4);
    int e;
    if (how == 0)
        e = ctx_wait(c, 0);
    else if (how == 1)
        e = ctx_wait(c, (ctx_duration_t)check_rng_below(r, 200) * CTX_MICROSECOND);
    else if (how == 2)
        e = ctx_sleep(c, (ctx_duration_t)check_rng_below(r, 100) * CTX_MICROSECOND);
    else
        e = ctx_wait(c, -5); /* a negative timeout polls */
    CHECK(e == 0 || e == CTX_CANCELED || e == CTX_DEADLINE_EXCEEDED);
    if (e != 0)
        CHECK_EQ_INT(ctx_err(c), e);
    if (n != NULL && !n->can_be_done)
        CHECK_EQ_INT(e, 0);
    node_release(n);
}

static void do_fd(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    if (n == NULL)
        return;
    errno = 0;
    int fd = ctx_done_fd(n->c);
    if (!n->can_be_done) {
        CHECK_EQ_INT(fd, -1);
        CHECK_EQ_INT(errno, 0);
        node_release(n);
        return;
    }
    CHECK_MSG(fd >= 0, "ctx_done_fd: %s", strerror(errno));
    /* Readable implies done.  Done implies readable soon: a context that
     * another thread ends is marked done an instant before its fd is
     * written, so a done context gets a poll that may wait. */
    int before = ctx_err(n->c);
    struct pollfd p = { fd, POLLIN, 0 };
    int rc;
    do
        rc = poll(&p, 1, before != 0 ? 10000 : (int)check_rng_below(r, 2));
    while (rc < 0 && errno == EINTR);
    CHECK(rc >= 0);
    bool readable = rc == 1 && (p.revents & POLLIN);
    if (before != 0)
        CHECK_MSG(readable, "done fd not readable for a done context");
    if (readable)
        CHECK_MSG(ctx_err(n->c) != 0, "done fd readable for a context that is not done");
    CHECK_EQ_INT(ctx_done_fd(n->c), fd); /* the same fd while the context lives */
    node_release(n);
}

static void do_after(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    if (n == NULL)
        return;
    int i = atomic_fetch_add(&nregs, 1);
    if (i >= MAX_REGS) {
        node_release(n);
        return;
    }
    struct reg *g = &regs[i];
    g->node = n; /* takes over our reference */
    g->ctx = n->c;
    g->can_be_done = n->can_be_done;
    g->with_stop = w->nstops < MAX_STOPS && check_rng_below(r, 2) == 0;
    /* Fire and forget on a context that can never be done would pin it
     * forever: that is the contract, but it would look like a leak here. */
    if (!g->can_be_done)
        g->with_stop = w->nstops < MAX_STOPS;
    if (!g->can_be_done && !g->with_stop) {
        g->node = NULL;
        node_release(n);
        return;
    }
    ctx_after_t *stop = NULL;
    CHECK_EQ_INT(ctx_after_func(n->c, reg_fn, g, g->with_stop ? &stop : NULL), 0);
    if (g->with_stop) {
        CHECK_NOT_NULL(stop);
        w->stops[w->nstops] = g;
        w->handles[w->nstops] = stop;
        w->nstops++;
    }
}

/* Stops registration k of worker w. */
static void stop_one(struct worker *w, int k)
{
    struct reg *g = w->stops[k];
    ctx_after_t *h = w->handles[k];
    w->stops[k] = w->stops[w->nstops - 1];
    w->handles[k] = w->handles[w->nstops - 1];
    w->nstops--;
    bool stopped = ctx_after_stop(h);
    atomic_store(&g->stopped, stopped ? 1 : 2);
    /* true: fn never runs; false: fn has run and returned. */
    CHECK_EQ_INT(atomic_load(&g->runs), stopped ? 0 : 1);
    if (!g->can_be_done)
        CHECK(stopped);
    struct node *n = g->node;
    g->node = NULL;
    node_release(n);
}

static void do_stop(struct worker *w)
{
    if (w->nstops > 0)
        stop_one(w, (int)check_rng_below(&w->rng, (unsigned)w->nstops));
}

static void do_value(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    if (n == NULL)
        return;
    const ctx_key_t *key = &keys[check_rng_below(r, 4)];
    struct val *v = ctx_value(n->c, key);
    if (v != NULL) {
        CHECK_EQ_INT(v->magic, VAL_MAGIC);
        CHECK_PTR_EQ(v->key, key);
        CHECK_EQ_INT(atomic_load(&v->destroyed), 0); /* still bound */
    }
    ctx_time_t d;
    if (ctx_deadline(n->c, &d)) {
        ctx_time_t want = chain_deadline(n);
        CHECK(want != 0 && d <= want);
    }
    node_release(n);
}

static void do_cond(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    ctx_t *pc = n != NULL ? n->c : ctx_background();
    ctx_t *c =
        ctx_with_timeout(pc, (ctx_duration_t)check_rng_below(r, 300) * CTX_MICROSECOND, NULL);
    CHECK_NOT_NULL(c);
    /* Only the context ends this wait: its deadline (or an ancestor). */
    pthread_mutex_lock(&w->mu);
    int e;
    while ((e = ctx_cond_wait(c, &w->cv, &w->mu)) == 0)
        ;
    pthread_mutex_unlock(&w->mu);
    CHECK(e == CTX_CANCELED || e == CTX_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(ctx_err(c), e);
    ctx_unref(c);
    node_release(n);
}

static void do_describe(struct worker *w)
{
    check_rng_t *r = &w->rng;
    struct node *n = slot_get(check_rng_below(r, NSLOTS));
    if (n == NULL)
        return;
    char buf[64];
    size_t len = ctx_describe(n->c, buf, sizeof buf);
    CHECK(len > 0);
    CHECK(strncmp(buf, "context.Background", strlen(buf) < 18 ? strlen(buf) : 18) == 0);
    node_release(n);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    check_rng_t *r = &w->rng;
    for (long i = 0; i < w->max_ops && !atomic_load(&stop_all); i++) {
        if ((i & 255) == 0 && ctx_now() >= w->until)
            break;
        unsigned x = check_rng_below(r, 100);
        int op = x < 22   ? OP_CREATE
                 : x < 30 ? OP_CANCEL
                 : x < 38 ? OP_WAIT
                 : x < 44 ? OP_FD
                 : x < 52 ? OP_AFTER
                 : x < 58 ? OP_STOP
                 : x < 70 ? OP_VALUE
                 : x < 84 ? OP_UNREF
                 : x < 92 ? OP_REF
                 : x < 94 ? OP_COND
                          : OP_DESCRIBE;
        switch (op) {
        case OP_CREATE:
            do_create(w);
            break;
        case OP_CANCEL:
            do_cancel(w);
            break;
        case OP_WAIT:
            do_wait(w);
            break;
        case OP_FD:
            do_fd(w);
            break;
        case OP_AFTER:
            do_after(w);
            break;
        case OP_STOP:
            do_stop(w);
            break;
        case OP_VALUE:
            do_value(w);
            break;
        case OP_UNREF:
            slot_put(check_rng_below(r, NSLOTS), NULL);
            break;
        case OP_REF: {
            struct node *n = slot_get(check_rng_below(r, NSLOTS));
            if (n != NULL)
                slot_put(check_rng_below(r, NSLOTS), n);
            break;
        }
        case OP_COND:
            do_cond(w);
            break;
        default:
            do_describe(w);
            break;
        }
        w->ops[op]++;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * The run
 */

struct done_latch {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left;
};
static struct done_latch finished;

struct runner {
    pthread_t t;
    struct worker *w;
};

static void *runner_main(void *arg)
{
    struct worker *w = arg;
    worker_main(w);
    pthread_mutex_lock(&finished.mu);
    finished.left--;
    pthread_cond_broadcast(&finished.cv);
    pthread_mutex_unlock(&finished.mu);
    return NULL;
}

/* Waits up to `seconds` for every worker, else fails: a deadlock. */
static void watchdog(int seconds)
{
    struct timespec end;
    clock_gettime(CLOCK_MONOTONIC, &end);
    end.tv_sec += seconds;
    pthread_mutex_lock(&finished.mu);
    while (finished.left > 0) {
        int e = pthread_cond_timedwait(&finished.cv, &finished.mu, &end);
        if (e == ETIMEDOUT && finished.left > 0) {
            fprintf(stderr, "%d worker(s) still running after %d s: deadlock?\n", finished.left,
                    seconds);
            abort();
        }
    }
    pthread_mutex_unlock(&finished.mu);
}

/* Waits (up to 10 s) until cond() holds: for work the library finishes on
 * its own threads after the last call returned (deadline callbacks). */
static bool eventually(bool (*cond)(void))
{
    for (int i = 0; i < 10000; i++) {
        if (cond())
            return true;
        struct timespec ts = { 0, 1000000 };
        nanosleep(&ts, NULL);
    }
    return cond();
}

static long baseline;

static bool allocator_at_baseline(void)
{
    return check_alloc_live() == baseline;
}

static bool all_regs_settled(void)
{
    int n = atomic_load(&nregs);
    if (n > MAX_REGS)
        n = MAX_REGS;
    for (int i = 0; i < n; i++) {
        struct reg *g = &regs[i];
        if (g->can_be_done && !g->with_stop && atomic_load(&g->runs) != 1)
            return false;
    }
    return true;
}

/* Cancels x and every ancestor of x that has a handle. */
static void cancel_chain(struct node *x)
{
    for (struct node *p = x; p != NULL && p != &root_node; p = p->parent)
        if (p->h != NULL) {
            ctx_cancel(p->h);
            atomic_store(&p->cancelled, 1);
        }
}

/* A deadline made on a new thread: the library may keep per-thread state
 * for deadlines (a timer heap shard per thread, made once and kept). */
static void *warm_thread(void *arg)
{
    (void)arg;
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(c);
    ctx_unref(c);
    return NULL;
}

int main(int argc, char **argv)
{
    /* --default-allocator: the library's own allocation path (with its
     * per-thread node caches), at the price of the allocation count. */
    bool counting = !(argc > 1 && strcmp(argv[1], "--default-allocator") == 0);
    if (counting)
        check_alloc_install();
    uint64_t seed = check_seed();
    /* What the library keeps once made: the timer heap(s) and thread, the
     * text of an unknown cause code. */
    ctx_unref(ctx_with_timeout(ctx_background(), CTX_HOUR, NULL));
    CHECK_NOT_NULL(ctx_strerror(4242));
    for (int i = 0; i < 64; i++) {
        pthread_t t;
        check_thread_start(&t, warm_thread, NULL);
        check_thread_join(t);
    }
    baseline = check_alloc_live();

    for (int i = 0; i < NSLOTS; i++)
        pthread_mutex_init(&slots[i].mu, NULL);
    pthread_mutex_init(&finished.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* the watchdog's clock */
    pthread_cond_init(&finished.cv, &ca);
    pthread_condattr_destroy(&ca);

    double secs = CHECK_TSAN ? 3.0 : 2.5;
    const char *env = getenv("CTX_STRESS_SECONDS");
    if (env != NULL && *env != '\0')
        secs = strtod(env, NULL);
    long max_ops = check_scale(2000000);
    static struct worker ws[NTHREADS];
    struct runner rs[NTHREADS];
    ctx_time_t until = ctx_now() + (ctx_duration_t)(secs * (double)CTX_SECOND);
    finished.left = NTHREADS;
    for (int i = 0; i < NTHREADS; i++) {
        ws[i].id = i;
        ws[i].rng = check_rng_make(seed + (uint64_t)i * 7919u);
        ws[i].max_ops = max_ops;
        ws[i].until = until;
        pthread_mutex_init(&ws[i].mu, NULL);
        pthread_cond_init(&ws[i].cv, NULL);
        rs[i].w = &ws[i];
        check_thread_start(&rs[i].t, runner_main, &ws[i]);
    }
    watchdog((int)secs + 60);
    for (int i = 0; i < NTHREADS; i++)
        check_thread_join(rs[i].t);

    long total = 0;
    for (int op = 0; op < OP_N; op++) {
        long n = 0;
        for (int i = 0; i < NTHREADS; i++)
            n += ws[i].ops[op];
        total += n;
        fprintf(stderr, "  %-9s %9ld\n", op_names[op], n);
    }
    fprintf(stderr, "stress: %ld operations by %d threads in %.1f s (limit %ld per thread)\n",
            total, NTHREADS, secs, max_ops);
    CHECK(total > 0);

    /* Every context under a cancelled ancestor is done; every deadline,
     * long expired, has fired (allowing the timer thread a moment). */
    int checked = 0;
    for (int i = 0; i < NSLOTS; i++) {
        struct node *x = slots[i].n;
        if (x == NULL)
            continue;
        checked++;
        if (under_cancelled(x))
            CHECK_MSG(ctx_err(x->c) != 0, "slot %d: not done below a cancelled context", i);
        if (chain_deadline(x) != 0)
            CHECK_MSG(ctx_wait(x->c, 5 * CTX_SECOND) != 0, "slot %d: deadline never fired", i);
        if (!x->can_be_done)
            CHECK_EQ_INT(ctx_err(x->c), 0);
    }
    fprintf(stderr, "stress: end state of %d slots checked\n", checked);

    /* Stop what is still registered with a handle. */
    for (int i = 0; i < NTHREADS; i++)
        while (ws[i].nstops > 0)
            stop_one(&ws[i], 0);
    /* Cancel everything still alive, so that every fire-and-forget
     * registration runs, exactly once. */
    for (int i = 0; i < NSLOTS; i++)
        if (slots[i].n != NULL)
            cancel_chain(slots[i].n);
    int nr = atomic_load(&nregs) < MAX_REGS ? atomic_load(&nregs) : MAX_REGS;
    for (int i = 0; i < nr; i++) {
        struct reg *g = &regs[i];
        if (g->with_stop)
            continue;
        pthread_mutex_lock(&regs_mu);
        struct node *n = node_ref(g->node); /* its callback may be running */
        pthread_mutex_unlock(&regs_mu);
        cancel_chain(n);
        node_release(n);
    }
    CHECK_MSG(eventually(all_regs_settled), "a fire-and-forget AfterFunc never ran");
    long ran = 0, stopped = 0;
    for (int i = 0; i < nr; i++) {
        struct reg *g = &regs[i];
        int runs = atomic_load(&g->runs);
        CHECK(runs <= 1);
        if (g->with_stop)
            CHECK_EQ_INT(runs, atomic_load(&g->stopped) == 1 ? 0 : 1);
        ran += runs;
        stopped += atomic_load(&g->stopped) == 1;
    }
    fprintf(stderr, "stress: %d AfterFuncs: %ld ran once, %ld stopped before running\n", nr, ran,
            stopped);

    /* Release everything: the allocator returns to its baseline (deadline
     * callbacks release their registrations on library threads) and every
     * destructor has run once. */
    for (int i = 0; i < NSLOTS; i++)
        slot_put((unsigned)i, NULL);
    if (counting)
        CHECK_MSG(eventually(allocator_at_baseline), "%ld blocks still allocated",
                  check_alloc_live() - baseline);
    int nv = atomic_load(&nvals) < MAX_VALS ? atomic_load(&nvals) : MAX_VALS;
    if (!counting) {
        /* Without the count, wait for the last destructors directly. */
        for (int i = 0; i < nv; i++)
            for (int k = 0; k < 10000 && atomic_load(&vals[i].destroyed) == 0; k++) {
                struct timespec ts = { 0, 1000000 };
                nanosleep(&ts, NULL);
            }
    }
    for (int i = 0; i < nv; i++)
        CHECK_MSG(atomic_load(&vals[i].destroyed) == 1, "value %d destroyed %d times", i,
                  atomic_load(&vals[i].destroyed));
    fprintf(stderr, "stress: %d values and custom contexts destroyed exactly once\n", nv);
    return 0;
}
