/* SPDX-License-Identifier: MIT */

/*
 * Allocation-failure sweep, SQLite style.  Every scenario below is run again
 * and again with allocation number N failing, for N = 0, 1, 2, ... until a
 * run completes without the allocator refusing anything.  Each run must:
 *
 *   - see every refused allocation surface as the documented error (NULL
 *     with errno ENOMEM from a constructor, ENOMEM from ctx_after_func and
 *     ctx_cond_wait, -1/ENOMEM from ctx_done_fd) and everything else
 *     succeed; ctx_cancel_cause() must still cancel, keeping the cause code
 *     with ctx_strerror(cause) as its text;
 *   - leave the tree consistent: values still readable, deadlines still
 *     fire, a later cancel of an ancestor still reaches every descendant
 *     that exists, AfterFuncs run exactly once (or never, when stopped or
 *     registered on a context that can never be done), done fds signal;
 *   - leak nothing: after cleanup the counting allocator holds exactly what
 *     it held before the run, and value/custom destructors ran exactly for
 *     the contexts that were made.
 *
 * Each run is also repeated in "sticky" mode, where every allocation after
 * the N-th fails too.  A small model of the tree (owners, born-done
 * children, clamped deadlines, causes) predicts every observable.  The
 * manual clock makes deadlines deterministic.  At the end the number of
 * injected failures and of distinct allocation sites (call stacks) that
 * failed is printed.
 */
#include "check.h"

#include <poll.h>
/* glibc's backtrace, for the count of distinct sites that is printed at
 * the end; musl has none, and the count then stays 0. */
#if defined(__has_include)
#if __has_include(<execinfo.h>)
#include <execinfo.h>
#define HAVE_BACKTRACE 1
#endif
#endif
#ifndef HAVE_BACKTRACE
static int backtrace(void **buf, int n)
{
    (void)buf;
    (void)n;
    return 0;
}
#endif

/* ---------------------------------------------------------------------------
 * Allocator: check.h's counting allocator, plus a record of the call sites
 * whose allocation was refused.
 */

#define MAX_SITES  128
#define SITE_DEPTH 4
static pthread_mutex_t sites_mu = PTHREAD_MUTEX_INITIALIZER;
static void *sites[MAX_SITES][SITE_DEPTH];
static int nsites;

/* Records the call stack (the innermost SITE_DEPTH frames above us) of a
 * refused allocation. */
static void note_site(void)
{
    void *bt[SITE_DEPTH + 1] = { 0 };
    if (backtrace(bt, SITE_DEPTH + 1) <= 0)
        return;
    pthread_mutex_lock(&sites_mu);
    int i;
    for (i = 0; i < nsites; i++)
        if (memcmp(sites[i], bt + 1, sizeof sites[i]) == 0)
            break;
    if (i == nsites && nsites < MAX_SITES)
        memcpy(sites[nsites++], bt + 1, sizeof sites[i]);
    pthread_mutex_unlock(&sites_mu);
}

static void *sweep_malloc(size_t size)
{
    long before = check_alloc_failed();
    void *p = check_alloc_malloc_(size);
    if (p == NULL && check_alloc_failed() != before)
        note_site();
    return p;
}

/* ---------------------------------------------------------------------------
 * The model of one run's contexts.
 */

enum kind { K_CANCEL, K_TIMER, K_VALUE, K_WITHOUT, K_CUSTOM };

struct tok {
    atomic_int destroyed;
};

static void tok_destroy(void *v)
{
    atomic_fetch_add(&((struct tok *)v)->destroyed, 1);
}

/* A custom context's data: one binding. */
struct cdata {
    const ctx_key_t *key;
    void *value;
    atomic_int destroyed;
};

static bool cdata_value(void *data, const ctx_key_t *key, void **value)
{
    struct cdata *d = data;
    if (key != d->key)
        return false;
    *value = d->value;
    return true;
}

static void cdata_destroy(void *data)
{
    atomic_fetch_add(&((struct cdata *)data)->destroyed, 1);
}

static const ctx_custom_ops_t cops = {
    .name = "Fx", .value = cdata_value, .describe = NULL, .destroy = cdata_destroy
};

static const ctx_key_t kA = { .name = "a" };
static const ctx_key_t kB = { .name = "b" };
static const ctx_key_t kC = { .name = "c" };
static const ctx_key_t *const keys[] = { &kA, &kB, &kC };

#define MAX_RECS 256

struct rec {
    ctx_t *c; /* NULL: creation failed (or was skipped) */
    ctx_cancel_t *h;
    struct rec *parent; /* NULL: the background root */
    enum kind kind;
    struct rec *owner; /* whose done state this reports; NULL: never done */
    bool has_dl;
    ctx_time_t dl;
    int dl_cause;
    const char *dl_msg;
    /* the done state, for owners */
    int err, cause;
    const char *msg;
    bool marked; /* scratch, for one cancellation */
    /* the binding, for values and customs */
    const ctx_key_t *key;
    void *value;
    struct tok tok;
    bool has_destroy;
    struct cdata cd;
    int fd;
};

/* An AfterFunc registration. */
struct reg {
    struct rec *on;
    ctx_after_t *stop;
    bool with_stop;
    bool registered;
    int want_runs; /* by the model */
    atomic_int runs;
};

#define MAX_REGS 32

struct run {
    struct rec recs[MAX_RECS];
    int n;
    struct reg regs[MAX_REGS];
    int nregs;
    ctx_time_t now; /* the model's clock */
    int injected;   /* failures injected in this run */
};

static void reg_fn(void *arg)
{
    struct reg *g = arg;
    /* Runs after its context is done (the whole subtree is marked first). */
    CHECK_NE_INT(ctx_err(g->on->c), 0);
    atomic_fetch_add(&g->runs, 1);
}

static const char *strerror_ctx(int code)
{
    if (code == CTX_CANCELED)
        return "context canceled";
    if (code == CTX_DEADLINE_EXCEEDED)
        return "context deadline exceeded";
    return strerror(code);
}

static bool is_cancel_kind(enum kind k)
{
    return k == K_CANCEL || k == K_TIMER || k == K_CUSTOM;
}

static struct rec *owner_of(struct rec *r)
{
    return r == NULL ? NULL : r->owner;
}

static void model_mark(struct rec *o, int err, int cause, const char *msg)
{
    o->err = err;
    o->cause = cause;
    o->msg = msg;
    o->marked = true;
}

/* Cancels owner o and every cancel node below it that is not done yet. */
static void model_cancel(struct run *run, struct rec *o, int err, int cause, const char *msg)
{
    if (o == NULL || o->err != 0)
        return;
    for (int i = 0; i < run->n; i++)
        run->recs[i].marked = false;
    model_mark(o, err, cause, msg);
    for (int i = 0; i < run->n; i++) {
        struct rec *r = &run->recs[i];
        if (r->c == NULL || !is_cancel_kind(r->kind) || r->err != 0)
            continue;
        struct rec *po = owner_of(r->parent);
        if (po != NULL && po->marked)
            model_mark(r, err, cause, msg);
    }
    /* AfterFuncs of contexts that just became done run now. */
    for (int i = 0; i < run->nregs; i++) {
        struct reg *g = &run->regs[i];
        struct rec *go = owner_of(g->on);
        if (g->registered && g->want_runs == 0 && go != NULL && go->marked)
            g->want_runs = 1;
    }
}

/* A new cancel node r (kind set, parent set): owner itself, done at birth
 * when its parent's owner is. */
static void model_birth(struct rec *r)
{
    r->owner = r;
    struct rec *po = owner_of(r->parent);
    if (po != NULL && po->err != 0) {
        r->err = po->err;
        r->cause = po->cause;
        r->msg = po->msg;
    }
}

static bool model_deadline(struct rec *r, ctx_time_t *dl)
{
    for (; r != NULL; r = r->parent) {
        if (r->kind == K_WITHOUT)
            return false;
        if (r->has_dl) {
            *dl = r->dl;
            return true;
        }
    }
    return false;
}

static void *model_value(struct rec *r, const ctx_key_t *key)
{
    for (; r != NULL; r = r->parent)
        if ((r->kind == K_VALUE || r->kind == K_CUSTOM) && r->key == key)
            return r->value;
    return NULL;
}

/* Fires every due timer in deadline order. */
static void model_advance(struct run *run, ctx_duration_t d)
{
    ctx_time_t target = run->now + d;
    for (;;) {
        struct rec *best = NULL;
        for (int i = 0; i < run->n; i++) {
            struct rec *r = &run->recs[i];
            if (r->c != NULL && r->kind == K_TIMER && r->err == 0 && r->dl <= target &&
                (best == NULL || r->dl < best->dl))
                best = r;
        }
        if (best == NULL)
            break;
        model_cancel(run, best, CTX_DEADLINE_EXCEEDED, best->dl_cause, best->dl_msg);
    }
    run->now = target;
}

/* Every observable of every context of the run against the model. */
static void check_all(struct run *run)
{
    CHECK_EQ_INT(ctx_now(), run->now);
    for (int i = 0; i < run->n; i++) {
        struct rec *r = &run->recs[i];
        if (r->c == NULL)
            continue;
        struct rec *o = r->owner;
        int err = o != NULL ? o->err : 0;
        const char *msg = NULL;
        CHECK_MSG(ctx_err(r->c) == err, "rec %d: err %d, model %d", i, ctx_err(r->c), err);
        int code = ctx_cause(r->c, &msg);
        if (err == 0) {
            CHECK_EQ_INT(code, 0);
            CHECK_NULL(msg);
        } else {
            int want = o->cause != 0 ? o->cause : o->err;
            CHECK_MSG(code == want, "rec %d: cause %d, model %d", i, code, want);
            CHECK_STR(msg, o->msg != NULL ? o->msg : strerror_ctx(want));
        }
        ctx_time_t dl = 0, mdl = 0;
        bool has = ctx_deadline(r->c, &dl);
        bool mhas = model_deadline(r, &mdl);
        CHECK_EQ_INT(has, mhas);
        if (has)
            CHECK_EQ_INT(dl, mdl);
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            CHECK_PTR_EQ(ctx_value(r->c, keys[k]), model_value(r, keys[k]));
        if (r->fd >= 0) {
            struct pollfd p = { r->fd, POLLIN, 0 };
            CHECK_EQ_INT(poll(&p, 1, 0), err != 0 ? 1 : 0);
        }
        CHECK_EQ_INT(ctx_wait(r->c, 0), err);
    }
    for (int i = 0; i < run->nregs; i++)
        CHECK_MSG(atomic_load(&run->regs[i].runs) == run->regs[i].want_runs,
                  "registration %d: ran %d times, model %d", i, atomic_load(&run->regs[i].runs),
                  run->regs[i].want_runs);
}

/* ---------------------------------------------------------------------------
 * Steps: the operations a scenario performs.  Parents and targets are
 * indices into the run's records (-1: the background root).
 */

enum op {
    OP_CANCEL,         /* child = ctx_with_cancel(a, &h) */
    OP_CANCEL_NOH,     /* child = ctx_with_cancel(a, NULL) */
    OP_VALUE,          /* child = ctx_with_value(a, keys[x], tok, destroy or not (y)) */
    OP_WITHOUT,        /* child = ctx_without_cancel(a) */
    OP_DEADLINE,       /* child = ctx_with_deadline(a, now + t) */
    OP_TIMEOUT,        /* child = ctx_with_timeout(a, t) */
    OP_DEADLINE_CAUSE, /* child = ctx_with_deadline_cause(a, now + t, x, msg) */
    OP_TIMEOUT_CAUSE,  /* child = ctx_with_timeout_cause(a, t, x, msg) */
    OP_CUSTOM,         /* child = ctx_with_custom(a, &cops, {keys[x]}) */
    OP_AFTER,          /* ctx_after_func(a, ..., y ? &stop : NULL) */
    OP_FD,             /* ctx_done_fd(a) */
    OP_CANCEL_CAUSE,   /* ctx_cancel_cause(h of a, x, msg) */
};

struct step {
    enum op op;
    int a;
    int x, y;
    ctx_duration_t t;
    const char *msg;
};

#define S_END                                                                                      \
    {                                                                                              \
        .op = -1                                                                                   \
    }

struct scenario {
    const char *name;
    const struct step *fixture; /* built with no failure */
    const struct step *steps;   /* run with failure N */
};

static struct rec *rec_at(struct run *run, int i)
{
    return i < 0 ? NULL : &run->recs[i];
}

static ctx_t *ctx_at(struct run *run, int i)
{
    return i < 0 ? ctx_background() : run->recs[i].c;
}

/* Performs one step and updates the model.  injected tells whether an
 * allocation was refused during the call. */
static void do_step(struct run *run, const struct step *s)
{
    bool creates = s->op <= OP_CUSTOM;
    if (creates) {
        CHECK(run->n < MAX_RECS);
    }
    if (s->a >= 0 && run->recs[s->a].c == NULL) {
        /* Its parent or target failed earlier in this run: skip, but keep
         * the record numbering. */
        if (creates) {
            struct rec *r = &run->recs[run->n++];
            memset(r, 0, sizeof *r);
            r->fd = -1;
        }
        return;
    }
    ctx_t *pc = ctx_at(run, s->a);
    struct rec *pr = rec_at(run, s->a);
    long before = check_alloc_failed();
    struct rec *r = NULL;
    if (creates) {
        r = &run->recs[run->n];
        memset(r, 0, sizeof *r);
        r->fd = -1;
        r->parent = pr;
    }
    ctx_cancel_t *h = (ctx_cancel_t *)(uintptr_t)1; /* must be overwritten */
    ctx_t *c = NULL;
    ctx_time_t now = ctx_now();
    errno = 0;
    switch (s->op) {
    case OP_CANCEL:
        c = ctx_with_cancel(pc, &h);
        break;
    case OP_CANCEL_NOH:
        c = ctx_with_cancel(pc, NULL);
        h = NULL;
        break;
    case OP_VALUE:
        atomic_init(&r->tok.destroyed, 0);
        r->has_destroy = s->y != 0;
        c = ctx_with_value(pc, keys[s->x], &r->tok, s->y ? tok_destroy : NULL);
        h = NULL;
        break;
    case OP_WITHOUT:
        c = ctx_without_cancel(pc);
        h = NULL;
        break;
    case OP_DEADLINE:
        c = ctx_with_deadline(pc, now + s->t, &h);
        break;
    case OP_TIMEOUT:
        c = ctx_with_timeout(pc, s->t, &h);
        break;
    case OP_DEADLINE_CAUSE:
        c = ctx_with_deadline_cause(pc, now + s->t, s->x, s->msg, &h);
        break;
    case OP_TIMEOUT_CAUSE:
        c = ctx_with_timeout_cause(pc, s->t, s->x, s->msg, &h);
        break;
    case OP_CUSTOM:
        r->cd.key = keys[s->x];
        r->cd.value = &r->tok;
        atomic_init(&r->cd.destroyed, 0);
        c = ctx_with_custom(pc, &cops, &r->cd, &h);
        break;
    case OP_AFTER: {
        CHECK(run->nregs < MAX_REGS);
        struct reg *g = &run->regs[run->nregs++];
        memset(g, 0, sizeof *g);
        g->on = pr;
        g->with_stop = s->y != 0;
        if (g->with_stop)
            g->stop = (ctx_after_t *)(uintptr_t)1;
        /* A context that is done already runs fn right here. */
        struct rec *o = owner_of(pr);
        int e = ctx_after_func(pc, reg_fn, g, g->with_stop ? &g->stop : NULL);
        bool inj = check_alloc_failed() != before;
        if (inj) {
            run->injected++;
            CHECK_EQ_INT(e, ENOMEM);
            if (g->with_stop)
                CHECK_NULL(g->stop);
            CHECK_EQ_INT(atomic_load(&g->runs), 0);
        } else {
            CHECK_EQ_INT(e, 0);
            g->registered = true;
            if (o != NULL && o->err != 0)
                g->want_runs = 1;
            if (g->with_stop)
                CHECK_NOT_NULL(g->stop);
        }
        return;
    }
    case OP_FD: {
        int fd = ctx_done_fd(pc);
        int e = errno;
        bool inj = check_alloc_failed() != before;
        if (owner_of(pr) == NULL) {
            CHECK(!inj);
            CHECK_EQ_INT(fd, -1);
            CHECK_EQ_INT(e, 0);
        } else if (inj) {
            run->injected++;
            CHECK_EQ_INT(fd, -1);
            CHECK_EQ_INT(e, ENOMEM);
        } else {
            CHECK_MSG(fd >= 0, "errno %d", e);
            if (pr->fd >= 0)
                CHECK_EQ_INT(fd, pr->fd);
            pr->fd = fd;
        }
        return;
    }
    case OP_CANCEL_CAUSE: {
        struct rec *o = owner_of(pr);
        CHECK(pr->h != NULL && o == pr);
        ctx_cancel_cause(pr->h, s->x, s->msg);
        bool inj = check_alloc_failed() != before;
        if (inj)
            run->injected++;
        /* Without memory for the copy the cause keeps its code only. */
        model_cancel(run, pr, CTX_CANCELED, s->x, inj ? NULL : s->msg);
        return;
    }
    }

    /* A constructor. */
    int e = errno;
    bool inj = check_alloc_failed() != before;
    run->n++;
    if (inj) {
        run->injected++;
        CHECK_MSG(c == NULL && e == ENOMEM, "op %d: %p errno %d after a refused allocation",
                  (int)s->op, (void *)c, e);
        CHECK_MSG(h == NULL, "op %d: *cancel not cleared on failure", (int)s->op);
        r->c = NULL;
        return;
    }
    CHECK_MSG(c != NULL, "op %d failed with errno %d and no refused allocation", (int)s->op, e);
    r->c = c;
    r->h = h;
    switch (s->op) {
    case OP_CANCEL:
    case OP_CANCEL_NOH:
        r->kind = K_CANCEL;
        model_birth(r);
        break;
    case OP_VALUE:
        r->kind = K_VALUE;
        r->owner = owner_of(pr);
        r->key = keys[s->x];
        r->value = &r->tok;
        break;
    case OP_WITHOUT:
        r->kind = K_WITHOUT;
        r->owner = NULL;
        break;
    case OP_CUSTOM:
        r->kind = K_CUSTOM;
        r->key = keys[s->x];
        r->value = &r->tok;
        model_birth(r);
        break;
    default: { /* the deadline family */
        ctx_time_t d = now + s->t, pd;
        bool with_cause = s->op == OP_DEADLINE_CAUSE || s->op == OP_TIMEOUT_CAUSE;
        if (model_deadline(pr, &pd) && pd <= d) {
            r->kind = K_CANCEL; /* the parent's deadline comes first */
            model_birth(r);
            break;
        }
        r->kind = K_TIMER;
        r->has_dl = true;
        r->dl = d;
        r->dl_cause = with_cause ? s->x : 0;
        r->dl_msg = with_cause ? s->msg : NULL;
        model_birth(r);
        if (r->err == 0 && d <= now)
            model_mark(r, CTX_DEADLINE_EXCEEDED, r->dl_cause, r->dl_msg);
        break;
    }
    }
    CHECK_MSG(r->h != NULL || s->op == OP_CANCEL_NOH || !is_cancel_kind(r->kind),
              "op %d: no cancel handle", (int)s->op);
}

/* ---------------------------------------------------------------------------
 * The sweep.
 */

/* failures injected; runs made; runs that had at least one failure (the
 * failure points: a scenario, an N and a mode) */
static long total_injected, total_runs, total_points;

/* One run of scenario sc with allocation n failing (every one from n on
 * when sticky); n < 0: no failure.  Returns the failures injected. */
static int run_once(const struct scenario *sc, long n, bool sticky)
{
    static struct run run; /* large; one run at a time */
    memset(&run, 0, sizeof run);
    run.now = ctx_now();
    long live0 = check_alloc_live();

    check_alloc_fail_none();
    for (const struct step *s = sc->fixture; s != NULL && (int)s->op >= 0; s++)
        do_step(&run, s);
    CHECK_EQ_INT(run.injected, 0);
    int nfix = run.n;

    if (n >= 0)
        check_alloc_fail_at(n, sticky);
    for (const struct step *s = sc->steps; (int)s->op >= 0; s++)
        do_step(&run, s);
    check_alloc_fail_none();
    int injected = run.injected;

    /* The tree is consistent: every observable as modelled. */
    check_all(&run);
    /* A new child of every surviving context can still be made. */
    for (int i = 0; i < run.n; i++) {
        if (run.recs[i].c == NULL)
            continue;
        ctx_t *k = ctx_with_cancel(run.recs[i].c, NULL);
        CHECK_NOT_NULL(k);
        ctx_unref(k);
    }
    /* Deadlines fire, in order, with their causes. */
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    model_advance(&run, CTX_SECOND);
    check_all(&run);
    CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
    model_advance(&run, CTX_SECOND);
    check_all(&run);
    /* Cancelling the fixture's roots reaches everything that exists. */
    for (int i = 0; i < nfix; i++) {
        struct rec *r = &run.recs[i];
        if (r->c != NULL && r->h != NULL && r->parent == NULL) {
            ctx_cancel_cause(r->h, EPIPE, "shutdown");
            model_cancel(&run, r, CTX_CANCELED, EPIPE, "shutdown");
        }
    }
    check_all(&run);

    /* Stop handles: true while fn has not run (it never will then), false
     * once it has. */
    for (int i = 0; i < run.nregs; i++) {
        struct reg *g = &run.regs[i];
        if (g->registered && g->with_stop) {
            CHECK_EQ_INT(ctx_after_stop(g->stop), g->want_runs == 0);
            g->registered = false;
        }
    }
    /* Cancel what no ancestor's cancel reaches (below without-cancel
     * layers), so that fire-and-forget registrations run and free. */
    for (int i = 0; i < run.n; i++) {
        struct rec *r = &run.recs[i];
        if (r->c != NULL && r->h != NULL && r->err == 0) {
            ctx_cancel(r->h);
            model_cancel(&run, r, CTX_CANCELED, 0, NULL);
        }
    }
    check_all(&run);

    /* Cleanup: destructors ran exactly for what was made; nothing leaks. */
    for (int i = run.n - 1; i >= 0; i--)
        ctx_unref(run.recs[i].c);
    for (int i = 0; i < run.n; i++) {
        struct rec *r = &run.recs[i];
        bool made = r->c != NULL;
        if (r->kind == K_VALUE)
            CHECK_EQ_INT(atomic_load(&r->tok.destroyed), made && r->has_destroy ? 1 : 0);
        if (r->kind == K_CUSTOM)
            CHECK_EQ_INT(atomic_load(&r->cd.destroyed), made ? 1 : 0);
    }
    for (int i = 0; i < run.nregs; i++)
        CHECK_EQ_INT(atomic_load(&run.regs[i].runs), run.regs[i].want_runs);
    CHECK_MSG(check_alloc_live() == live0, "%s, N=%ld%s: %ld blocks leaked", sc->name, n,
              sticky ? " (sticky)" : "", check_alloc_live() - live0);
    total_runs++;
    return injected;
}

static void sweep(const struct scenario *sc)
{
    long points = 0, failures = 0;
    for (int sticky = 0; sticky < 2; sticky++) {
        for (long n = 0;; n++) {
            CHECK_MSG(n < 100000, "%s: the sweep does not end", sc->name);
            int injected = run_once(sc, n, sticky);
            if (injected == 0)
                break; /* the whole scenario ran without a refusal */
            points++;
            failures += injected;
        }
    }
    total_injected += failures;
    total_points += points;
    fprintf(stderr, "   %-18s %4ld failure points, %5ld failures injected\n", sc->name, points,
            failures);
}

/* ---------------------------------------------------------------------------
 * Scenarios
 */

#define NOW_PLUS(s) ((ctx_duration_t)(s)*CTX_SECOND / 2)

/* R(cancel) <- V(value a) <- C1(cancel) <- T1(deadline+cause, 1 s)
 *             V <- W(without);  R <- K(custom b)
 * with an fd on C1 and AfterFuncs on C1 (stop) and T1 (fire and forget). */
static const struct step fixture[] = {
    { OP_CANCEL, -1, 0, 0, 0, NULL },                           /* 0 R */
    { OP_VALUE, 0, 0, 1, 0, NULL },                             /* 1 V */
    { OP_CANCEL, 1, 0, 0, 0, NULL },                            /* 2 C1 */
    { OP_DEADLINE_CAUSE, 2, EIO, 0, CTX_SECOND, "t1 expired" }, /* 3 T1 */
    { OP_WITHOUT, 1, 0, 0, 0, NULL },                           /* 4 W */
    { OP_CUSTOM, 0, 1, 0, 0, NULL },                            /* 5 K */
    { OP_FD, 2, 0, 0, 0, NULL },
    { OP_AFTER, 2, 0, 1, 0, NULL },
    { OP_AFTER, 3, 0, 0, 0, NULL },
    S_END,
};
#define F_R  0
#define F_V  1
#define F_C1 2
#define F_T1 3
#define F_W  4
#define F_K  5
#define F_N  6 /* the first record a scenario's steps make */

static const struct step st_cancel[] = {
    { OP_CANCEL, F_C1, 0, 0, 0, NULL },
    { OP_CANCEL_NOH, F_N, 0, 0, 0, NULL },
    { OP_CANCEL, F_W, 0, 0, 0, NULL },
    S_END,
};
static const struct step st_value[] = {
    { OP_VALUE, F_C1, 1, 1, 0, NULL },
    { OP_VALUE, F_N, 0, 0, 0, NULL }, /* shadows the fixture's a */
    { OP_VALUE, F_K, 2, 1, 0, NULL },
    S_END,
};
static const struct step st_without[] = {
    { OP_WITHOUT, F_T1, 0, 0, 0, NULL },
    { OP_WITHOUT, F_N, 0, 0, 0, NULL },
    { OP_CANCEL, F_N + 1, 0, 0, 0, NULL },
    S_END,
};
static const struct step st_deadline[] = {
    { OP_DEADLINE, F_V, 0, 0, 2 * CTX_SECOND, NULL },  /* a timer */
    { OP_DEADLINE, F_T1, 0, 0, 2 * CTX_SECOND, NULL }, /* clamped: T1's comes first */
    { OP_DEADLINE, F_K, 0, 0, -CTX_SECOND, NULL },     /* born done */
    { OP_DEADLINE, F_W, 0, 0, CTX_SECOND / 2, NULL },  /* under without-cancel */
    { OP_DEADLINE, F_N, 0, 0, CTX_SECOND / 4, NULL },  /* a nearer one below a timer */
    S_END,
};
static const struct step st_timeout[] = {
    { OP_TIMEOUT, F_C1, 0, 0, CTX_SECOND / 2, NULL },
    { OP_TIMEOUT, F_N, 0, 0, 5 * CTX_SECOND, NULL },
    { OP_TIMEOUT, F_K, 0, 0, 0, NULL },
    S_END,
};
static const struct step st_deadline_cause[] = {
    { OP_DEADLINE_CAUSE, F_V, ENOLINK, 0, CTX_SECOND / 2, "link lost" },
    { OP_DEADLINE_CAUSE, F_N, EPROTO, 0, CTX_SECOND / 4, NULL },
    { OP_DEADLINE_CAUSE, F_K, EXDEV, 0, -1, "already past" },
    { OP_DEADLINE_CAUSE, F_T1, EXDEV, 0, 3 * CTX_SECOND, "clamped" },
    S_END,
};
static const struct step st_timeout_cause[] = {
    { OP_TIMEOUT_CAUSE, F_W, ENOLINK, 0, CTX_SECOND / 2, "slow" },
    { OP_TIMEOUT_CAUSE, F_C1, 4321, 0, 3 * CTX_SECOND / 2, NULL },
    { OP_TIMEOUT_CAUSE, F_N + 1, 0, 0, CTX_SECOND / 4, "no code" },
    S_END,
};
static const struct step st_custom[] = {
    { OP_CUSTOM, F_C1, 2, 0, 0, NULL },
    { OP_CUSTOM, F_W, 0, 0, 0, NULL },
    { OP_CANCEL, F_N, 0, 0, 0, NULL },
    S_END,
};
static const struct step st_after[] = {
    { OP_AFTER, F_C1, 0, 1, 0, NULL }, /* with a stop handle */
    { OP_AFTER, F_V, 0, 0, 0, NULL },  /* fire and forget, on a value layer */
    { OP_AFTER, F_W, 0, 1, 0, NULL },  /* never done: nothing to allocate */
    { OP_AFTER, F_K, 0, 0, 0, NULL },  { OP_CANCEL_CAUSE, F_K, ENOENT, 0, 0, "k gone" },
    { OP_AFTER, F_K, 0, 1, 0, NULL }, /* already done: runs at once */
    { OP_AFTER, F_K, 0, 0, 0, NULL },  S_END,
};
static const struct step st_cancel_cause[] = {
    { OP_CANCEL_CAUSE, F_C1, ENOSPC, 0, 0, "disk full" },
    { OP_CANCEL_CAUSE, F_K, 0, 0, 0, "no code, a text" },
    { OP_CANCEL_CAUSE, F_R, 9999, 0, 0, "unknown code" },
    S_END,
};
static const struct step st_fd[] = {
    { OP_FD, F_T1, 0, 0, 0, NULL },
    { OP_FD, F_V, 0, 0, 0, NULL },
    { OP_FD, F_W, 0, 0, 0, NULL }, /* never done: -1, errno 0 */
    { OP_FD, F_K, 0, 0, 0, NULL },
    { OP_FD, F_C1, 0, 0, 0, NULL }, /* exists already */
    S_END,
};
/* A bit of everything, with children of children. */
static const struct step st_mixed[] = {
    { OP_CANCEL, F_T1, 0, 0, 0, NULL },                          /* 6 */
    { OP_VALUE, F_N, 1, 1, 0, NULL },                            /* 7 */
    { OP_TIMEOUT, F_N + 1, 0, 0, 2 * CTX_SECOND, NULL },         /* 8 clamped */
    { OP_DEADLINE, F_V, 0, 0, 2 * CTX_SECOND, NULL },            /* 9 */
    { OP_DEADLINE_CAUSE, F_K, EPROTO, 0, 2 * CTX_SECOND, "e" },  /* 10 */
    { OP_TIMEOUT_CAUSE, F_W, ENOLINK, 0, 2 * CTX_SECOND, NULL }, /* 11 */
    { OP_TIMEOUT_CAUSE, F_R, EXDEV, 0, -1, "past" },             /* 12 */
    { OP_WITHOUT, F_N + 4, 0, 0, 0, NULL },                      /* 13 */
    { OP_CUSTOM, F_N + 7, 2, 0, 0, NULL },                       /* 14 */
    { OP_VALUE, F_N + 8, 0, 0, 0, NULL },                        /* 15 */
    { OP_AFTER, F_N + 1, 0, 1, 0, NULL },
    { OP_AFTER, F_N + 3, 0, 0, 0, NULL },
    { OP_AFTER, F_N + 9, 0, 1, 0, NULL },
    { OP_AFTER, F_N + 6, 0, 0, 0, NULL },
    { OP_FD, F_N + 2, 0, 0, 0, NULL },
    { OP_FD, F_N + 5, 0, 0, 0, NULL },
    { OP_CANCEL_CAUSE, F_K, 1234, 0, 0, "k gone" },
    { OP_CANCEL_CAUSE, F_N, 0, 0, 0, "plain" },
    { OP_CANCEL, F_N + 8, 0, 0, 0, NULL }, /* 16 born done */
    S_END,
};

/* Enough timers to make the deadline heap grow (twice) during the sweep. */
#define HEAP_STEPS 200
static struct step st_heap[HEAP_STEPS + 1];

static const struct scenario scenarios[] = {
    { "with_cancel", fixture, st_cancel },
    { "with_value", fixture, st_value },
    { "without_cancel", fixture, st_without },
    { "with_deadline", fixture, st_deadline },
    { "with_timeout", fixture, st_timeout },
    { "deadline_cause", fixture, st_deadline_cause },
    { "timeout_cause", fixture, st_timeout_cause },
    { "with_custom", fixture, st_custom },
    { "after_func", fixture, st_after },
    { "cancel_cause", fixture, st_cancel_cause },
    { "done_fd", fixture, st_fd },
    { "mixed", fixture, st_mixed },
    { "heap growth", NULL, st_heap },
};

/* The very first deadline: a failure of any allocation it makes must leave
 * nothing, and its success nothing once the context is freed (the timer
 * structures are intrusive and static). */
static void test_first_deadline(void)
{
    long points = 0;
    for (long n = 0;; n++) {
        long live0 = check_alloc_live();
        check_alloc_fail_at(n, false);
        long before = check_alloc_failed();
        ctx_cancel_t *h = (ctx_cancel_t *)(uintptr_t)1;
        errno = 0;
        ctx_t *c = ctx_with_timeout_cause(ctx_background(), CTX_SECOND, EIO, "first", &h);
        int e = errno;
        check_alloc_fail_none();
        if (check_alloc_failed() != before) {
            points++;
            CHECK_NULL(c);
            CHECK_EQ_INT(e, ENOMEM);
            CHECK_NULL(h);
            CHECK_EQ_INT(check_alloc_live(), live0);
            continue;
        }
        CHECK_NOT_NULL(c);
        CHECK_NOT_DONE(c);
        CHECK_EQ_INT(ctx_clock_advance(CTX_SECOND), 0);
        CHECK_DONE(c, CTX_DEADLINE_EXCEEDED, EIO, "first");
        ctx_unref(c);
        /* The timer structures are intrusive: nothing stays allocated. */
        CHECK_EQ_INT(check_alloc_live(), live0);
        break;
    }
    CHECK_LE_INT(2, points); /* the node, the message */
    total_injected += points;
    total_points += points;
    fprintf(stderr, "   %-18s %4ld failure points, %5ld failures injected\n", "first deadline",
            points, points);
}

/* ---------------------------------------------------------------------------
 * Waits that allocate: ctx_cond_wait (an AfterFunc) and, under the manual
 * clock, ctx_wait/ctx_sleep with a timeout (a helper deadline child).
 */

struct cw {
    pthread_mutex_t mu;
    pthread_cond_t cv, ready_cv;
    ctx_t *c;
    int ready, pred, mode;
    int result;
    long tid;
    ctx_duration_t timeout;
    atomic_int done;
};

static void *cond_waiter(void *arg)
{
    struct cw *w = arg;
    pthread_mutex_lock(&w->mu);
    w->ready = 1;
    pthread_cond_broadcast(&w->ready_cv);
    /* The mutex is held from here until pthread_cond_wait inside
     * ctx_cond_wait releases it, after the AfterFunc is registered. */
    int r = 0;
    while (!w->pred) {
        r = ctx_cond_wait(w->c, &w->cv, &w->mu);
        if (r != 0)
            break;
    }
    w->result = r;
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void test_cond_wait(void)
{
    long points = 0;
    for (int mode = 0; mode < 2; mode++) {
        for (long n = 0;; n++) {
            long live0 = check_alloc_live();
            ctx_cancel_t *h;
            ctx_t *c = ctx_with_cancel(ctx_background(), &h);
            CHECK_NOT_NULL(c);
            struct cw w;
            memset(&w, 0, sizeof w);
            pthread_mutex_init(&w.mu, NULL);
            pthread_cond_init(&w.cv, NULL);
            pthread_cond_init(&w.ready_cv, NULL);
            w.c = c;
            long before = check_alloc_failed();
            check_alloc_fail_at(n, false);
            pthread_t t;
            check_thread_start(&t, cond_waiter, &w);
            pthread_mutex_lock(&w.mu);
            while (!w.ready)
                pthread_cond_wait(&w.ready_cv, &w.mu);
            /* Holding the mutex now means the waiter is inside
             * pthread_cond_wait (registered) or finished. */
            if (mode == 0) {
                w.pred = 1; /* an ordinary wake-up */
                pthread_cond_broadcast(&w.cv);
                pthread_mutex_unlock(&w.mu);
            } else {
                pthread_mutex_unlock(&w.mu);
                ctx_cancel(h); /* the context ends the wait */
            }
            check_thread_join(t);
            check_alloc_fail_none();
            bool inj = check_alloc_failed() != before;
            if (inj) {
                points++;
                CHECK_EQ_INT(w.result, ENOMEM);
            } else {
                CHECK_EQ_INT(w.result, mode == 0 ? 0 : CTX_CANCELED);
            }
            ctx_cancel(h);
            ctx_unref(c);
            pthread_mutex_destroy(&w.mu);
            pthread_cond_destroy(&w.cv);
            pthread_cond_destroy(&w.ready_cv);
            CHECK_EQ_INT(check_alloc_live(), live0);
            if (!inj)
                break;
        }
    }
    CHECK_LE_INT(2, points);
    total_injected += points;
    total_points += points;
    fprintf(stderr, "   %-18s %4ld failure points, %5ld failures injected\n", "cond_wait", points,
            points);
}

static void *timed_waiter(void *arg)
{
    struct cw *w = arg;
    w->result = w->mode == 0 ? ctx_wait(w->c, w->timeout) : ctx_sleep(w->c, w->timeout);
    atomic_store(&w->done, 1);
    return NULL;
}

/* A timed wait under the manual clock ends when the clock has advanced by
 * its timeout: not earlier, and not never, even when its helper cannot be
 * allocated. */
static void test_manual_wait(void)
{
    long points = 0;
    for (int mode = 0; mode < 2; mode++) {
        for (long n = 0;; n++) {
            long live0 = check_alloc_live();
            ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
            CHECK_NOT_NULL(c);
            struct cw w;
            memset(&w, 0, sizeof w);
            w.c = c;
            w.mode = mode;
            w.timeout = 10 * CTX_MILLISECOND;
            ctx_time_t t0 = ctx_now();
            long before = check_alloc_failed();
            check_alloc_fail_at(n, false);
            pthread_t t;
            check_thread_start(&t, timed_waiter, &w);
            /* Drive the clock until the waiter returns; the pause only
             * spares the CPU, nothing depends on it. */
            struct timespec start;
            clock_gettime(CLOCK_MONOTONIC, &start);
            while (!atomic_load(&w.done)) {
                CHECK_EQ_INT(ctx_clock_advance(CTX_MILLISECOND), 0);
                struct timespec ts = { 0, 200000 }, cur;
                nanosleep(&ts, NULL);
                clock_gettime(CLOCK_MONOTONIC, &cur);
                CHECK_MSG(cur.tv_sec - start.tv_sec < 10,
                          "%s(c, 10 ms) under the manual clock still blocked after 10 s "
                          "(N=%ld)",
                          mode == 0 ? "ctx_wait" : "ctx_sleep", n);
            }
            check_thread_join(t);
            check_alloc_fail_none();
            bool inj = check_alloc_failed() != before;
            CHECK_EQ_INT(w.result, 0);
            CHECK_MSG(ctx_now() - t0 >= w.timeout,
                      "%s(c, 10 ms) returned after %lld ns of manual time (allocation %s)",
                      mode == 0 ? "ctx_wait" : "ctx_sleep", (long long)(ctx_now() - t0),
                      inj ? "refused" : "granted");
            CHECK_NOT_DONE(c);
            ctx_unref(c);
            CHECK_EQ_INT(check_alloc_live(), live0);
            if (!inj)
                break;
            points++;
        }
    }
    CHECK_LE_INT(2, points);
    total_injected += points;
    total_points += points;
    fprintf(stderr, "   %-18s %4ld failure points, %5ld failures injected\n", "manual wait/sleep",
            points, points);
}

static void *warm_thread(void *arg)
{
    (void)arg;
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    CHECK_NOT_NULL(c);
    ctx_unref(c);
    return NULL;
}

int main(void)
{
    void *warm[1];
    (void)backtrace(warm, 1); /* loads the unwinder before any count is taken */
    CHECK_EQ_INT(ctx_replace_allocator(sweep_malloc, check_alloc_free_), 0);
    CHECK_EQ_INT(ctx_clock_manual(0), 0);
    CHECK_EQ_INT(check_alloc_live(), 0);
    /* The text of a code the C library does not know may be made once and
     * kept for the life of the process: make them before any count. */
    static const int unknown_codes[] = { 1234, 4321, 9999 };
    for (size_t i = 0; i < sizeof unknown_codes / sizeof unknown_codes[0]; i++)
        CHECK_NOT_NULL(ctx_strerror(unknown_codes[i]));
    long live_texts = check_alloc_live();

    for (int i = 0; i < HEAP_STEPS; i++)
        st_heap[i] = (struct step){ OP_TIMEOUT_CAUSE, -1, EIO, 0, CTX_SECOND / 2 + i, NULL };
    st_heap[HEAP_STEPS].op = -1;

    (void)live_texts;
    RUN_TEST(test_first_deadline);
    /* The library may keep timer state per thread (made once): let the
     * threads of the wait tests below find theirs made. */
    for (int i = 0; i < 64; i++) {
        pthread_t t;
        check_thread_start(&t, warm_thread, NULL);
        check_thread_join(t);
    }
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++) {
        fprintf(stderr, "-- sweep %s\n", scenarios[i].name);
        sweep(&scenarios[i]);
    }
    RUN_TEST(test_cond_wait);
    RUN_TEST(test_manual_wait);

    fprintf(stderr,
            "alloc-fail sweep: %ld failure points (scenario, N, mode), %ld failures injected, "
            "%ld scenario runs, %d distinct allocation sites (call stacks) refused\n",
            total_points, total_injected, total_runs, nsites);
    return 0;
}
