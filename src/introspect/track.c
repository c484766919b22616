/* SPDX-License-Identifier: MIT */

/*
 * Seeing inside: the tracking registry, dumps, the cancel site a context
 * reports (the sites themselves are recorded by core/cancel.c) and the
 * leak report at exit.
 *
 * Tracking keeps a record per context (creation site and time) in a hash
 * table keyed by the node's address.  The creation macros in ctx.h add
 * records; free_chain (tree.c) removes them, before it tears anything of
 * the node down, under the registry lock.  So while a dump holds that lock
 * every registered node is readable, and its parents too (a child holds a
 * reference to its parent).  The registry lock is a leaf for creation and
 * freeing (they take it with no node lock held); a dump takes node locks
 * under it, to count callbacks and list children.
 */
#include "internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ctx_tracking_;

/* ---------------------------------------------------------------------------
 * The live count: every context is counted where it is made (init_cancel,
 * the value and without-cancel constructors) and where free_chain frees it,
 * whether tracking is on or not.
 */
CTX__TLS struct ctx__live_cell *ctx__live_mine;

/* Every cell ever made, newest first; cells are never freed, so a reader
 * may follow the list without a lock. */
static struct ctx__live_cell *_Atomic live_cells;
/* Contexts counted by threads that had no cell: past their exit (a
 * destructor freeing contexts), or when no memory for one was had. */
static _Atomic long live_spill;
/* 0 before this thread took a cell, 1 with one, 2 once it gave it back at
 * its exit. */
static CTX__TLS int live_state;
static pthread_key_t live_key;
static pthread_once_t live_once = PTHREAD_ONCE_INIT;

/* At a thread's exit: its cell, with its count, is free for the next
 * thread.  Release: the count it wrote happens before the next owner's
 * first load of it. */
static void live_gone(void *arg)
{
    struct ctx__live_cell *c = arg;
    ctx__live_mine = NULL;
    live_state = 2;
    atomic_store_explicit(&c->owned, 0, memory_order_release);
}

static void live_make_key(void)
{
    pthread_key_create(&live_key, live_gone);
}

/* The first count of this thread: claims a free cell (a thread that ended
 * left it), or makes one.  No lock, so a child of fork(2) can always get
 * one. */
void ctx__live_slow(long d)
{
    if (live_state == 0) {
        struct ctx__live_cell *c;
        /* Acquire: pairs with the release that publishes a new cell. */
        for (c = atomic_load_explicit(&live_cells, memory_order_acquire); c != NULL;
             c = atomic_load_explicit(&c->next, memory_order_acquire)) {
            int free_cell = 0;
            /* Acquire: pairs with the release in live_gone. */
            if (atomic_compare_exchange_strong_explicit(&c->owned, &free_cell, 1,
                                                        memory_order_acquire, memory_order_relaxed))
                break;
        }
        if (c == NULL && (c = calloc(1, sizeof *c)) != NULL) {
            atomic_init(&c->owned, 1);
            struct ctx__live_cell *head = atomic_load_explicit(&live_cells, memory_order_relaxed);
            do
                atomic_store_explicit(&c->next, head, memory_order_relaxed);
            /* Release: publishes the cell's fields to readers of the list. */
            while (!atomic_compare_exchange_weak_explicit(
                &live_cells, &head, c, memory_order_release, memory_order_relaxed));
        }
        if (c != NULL) {
            pthread_once(&live_once, live_make_key);
            if (pthread_setspecific(live_key, c) == 0) {
                live_state = 1;
                ctx__live_mine = c;
                ctx__live_add(d);
                return;
            }
            /* No exit hook: keep no cell, give this one back, and count
             * in the shared counter from now on. */
            atomic_store_explicit(&c->owned, 0, memory_order_release);
        }
        live_state = 2;
    }
    atomic_fetch_add_explicit(&live_spill, d, memory_order_relaxed);
}

size_t ctx_live_count(void)
{
    long n = atomic_load_explicit(&live_spill, memory_order_relaxed);
    for (struct ctx__live_cell *c = atomic_load_explicit(&live_cells, memory_order_acquire);
         c != NULL; c = atomic_load_explicit(&c->next, memory_order_acquire))
        n += atomic_load_explicit(&c->n, memory_order_relaxed);
    /* Counters are read one after another while others change them: a sum
     * taken mid-change can be off by the contexts made or freed meanwhile,
     * never negative once those settle. */
    return n > 0 ? (size_t)n : 0;
}

/* ---------------------------------------------------------------------------
 * The registry
 */

struct rec {
    struct ctx *node;
    struct rec *next; /* hash chain */
    ctx_time_t born;
    const char *file;
    const char *func;
    int line;
    size_t idx; /* scratch for dumps, under the lock */
};

static struct {
    _Atomic uint32_t lock; /* a node-style lock: fork waits for its holder */
    struct rec **tab;
    size_t mask; /* table size - 1, or 0 with tab == NULL */
    size_t count;
    int atexit_done;
} R;

static size_t slot(const struct ctx *c)
{
    return (size_t)(((uint64_t)(uintptr_t)c * 0x9E3779B97F4A7C15u) >> 20) & R.mask;
}

static struct rec *find_locked(const struct ctx *c)
{
    if (R.tab == NULL)
        return NULL;
    for (struct rec *r = R.tab[slot(c)]; r != NULL; r = r->next)
        if (r->node == c)
            return r;
    return NULL;
}

/* Doubles the table when it is full.  Under the lock; a failure keeps the
 * old table (longer chains, still correct). */
static void grow_locked(void)
{
    if (R.tab != NULL && R.count < R.mask + 1)
        return;
    size_t n = R.tab == NULL ? 256 : (R.mask + 1) * 2;
    struct rec **t = ctx__alloc(n * sizeof *t);
    if (t == NULL)
        return;
    memset(t, 0, n * sizeof *t);
    struct rec **old = R.tab;
    size_t old_n = R.tab == NULL ? 0 : R.mask + 1;
    R.tab = t;
    R.mask = n - 1;
    for (size_t i = 0; i < old_n; i++) {
        struct rec *r = old[i];
        while (r != NULL) {
            struct rec *next = r->next;
            size_t s = slot(r->node);
            r->next = t[s];
            t[s] = r;
            r = next;
        }
    }
    ctx__free(old);
}

ctx_t *ctx_track_new_(ctx_t *c, const char *file, int line, const char *func)
{
    if (c == NULL || ctx__kind(c) == CTX__ROOT)
        return c; /* errno stays as the constructor set it */
    int saved = errno;
    struct rec *r = ctx__alloc(sizeof *r);
    if (r != NULL) {
        r->node = c;
        r->born = ctx_now();
        r->file = file;
        r->func = func;
        r->line = line;
        ctx__lock(&R.lock);
        grow_locked();
        if (ctx__tracking_on() && R.tab != NULL && find_locked(c) == NULL) {
            size_t s = slot(c);
            r->next = R.tab[s];
            R.tab[s] = r;
            R.count++;
            r = NULL;
        }
        ctx__unlock(&R.lock);
        ctx__free(r); /* not kept: tracking went off, or no table */
    }
    errno = saved;
    return c;
}

void ctx__track_forget(struct ctx *c)
{
    struct rec *gone = NULL;
    ctx__lock(&R.lock);
    if (R.tab != NULL) {
        for (struct rec **p = &R.tab[slot(c)]; *p != NULL; p = &(*p)->next) {
            if ((*p)->node == c) {
                gone = *p;
                *p = gone->next;
                R.count--;
                break;
            }
        }
    }
    ctx__unlock(&R.lock);
    ctx__free(gone);
}

static void report_at_exit(void);

void ctx_track(bool on)
{
    ctx__lock(&R.lock);
    __atomic_store_n(&ctx_tracking_, on ? 1 : 0, __ATOMIC_RELAXED);
    if (on && !R.atexit_done) {
        R.atexit_done = 1;
        atexit(report_at_exit);
    }
    if (!on && R.tab != NULL) {
        for (size_t i = 0; i <= R.mask; i++) {
            while (R.tab[i] != NULL) {
                struct rec *r = R.tab[i];
                R.tab[i] = r->next;
                ctx__free(r);
            }
        }
        ctx__free(R.tab);
        R.tab = NULL;
        R.mask = 0;
        R.count = 0;
    }
    ctx__unlock(&R.lock);
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((constructor)) static void track_from_env(void)
{
    const char *v = getenv("CTX_TRACK");
    if (v != NULL && strcmp(v, "1") == 0)
        ctx_track(true);
}
#endif

/* ---------------------------------------------------------------------------
 * Dumps
 */

static void dur_text(ctx_duration_t d, char *buf, size_t size)
{
    const char *sign = d < 0 ? "-" : "";
    uint64_t a = d < 0 ? (uint64_t)0 - (uint64_t)d : (uint64_t)d;
    if (a < (uint64_t)CTX_MILLISECOND)
        snprintf(buf, size, "%s%" PRIu64 "us", sign, a / 1000u);
    else if (a < (uint64_t)CTX_SECOND)
        snprintf(buf, size, "%s%" PRIu64 ".%03" PRIu64 "ms", sign, a / 1000000u,
                 (a / 1000u) % 1000u);
    else
        snprintf(buf, size, "%s%" PRIu64 ".%03" PRIu64 "s", sign, a / 1000000000u,
                 (a / 1000000u) % 1000u);
}

/* Calls visit(y, arg) for every entry y linked under cancel node o: its own
 * list and, when o has a fan-out, every shard's list (see internal.h).  The
 * caller holds o's lock; each shard's lock is taken under it, the order the
 * cancellation walk uses.  Stops early when visit returns nonzero and
 * returns that. */
static int each_kid(struct ctx *o, int (*visit)(struct ctx *y, void *arg), void *arg)
{
    int r = 0;
    for (struct ctx__link *l = *ctx__kids(o); l != NULL && r == 0; l = l->next)
        r = visit(ctx__from_link(l), arg);
    if (!(atomic_load_explicit(&o->u.c.state, memory_order_relaxed) & CTX__FANNED))
        return r;
    struct ctx__fan *f = ctx__fan_of(o);
    for (int i = 0; i < CTX__NFAN && r == 0; i++) {
        ctx__lock(&f->sh[i].lock);
        for (struct ctx__link *l = f->sh[i].children; l != NULL && r == 0; l = l->next)
            r = visit(ctx__from_link(l), arg);
        ctx__unlock(&f->sh[i].lock);
    }
    return r;
}

static int count_one_callback(struct ctx *y, void *arg)
{
    if (ctx__kind(y) == CTX__AFTER)
        ++*(int *)arg;
    return 0;
}

/* The number of AfterFunc records on cancel node c. */
static int count_callbacks(struct ctx *c)
{
    int n = 0;
    ctx__lock(&c->lock);
    each_kid(c, count_one_callback, &n);
    ctx__unlock(&c->lock);
    return n;
}

static void site_text(const char *file, int line, const char *func, char *buf, size_t size)
{
    if (file != NULL)
        snprintf(buf, size, "%s:%d (%s)", file, line, func != NULL ? func : "?");
    else
        snprintf(buf, size, "%s", func != NULL ? func : "?");
}

/* The creation record of the deadline node that ended c, for
 * ctx_cancel_site.  Under the registry lock. */
static const struct rec *deadline_rec_locked(struct ctx *c)
{
    struct ctx__timer *t = ctx__dlsrc(c);
    return t != NULL ? find_locked(&t->base) : NULL;
}

static bool site_of(ctx_t *c, const char **file, int *line, const char **func, int locked)
{
    struct ctx *o = ctx__owner(c);
    /* Acquire: pairs with the release in mark(); the msg was written
     * before it. */
    uint32_t err = atomic_load_explicit(&o->u.c.state, memory_order_acquire) & CTX__ERR_MASK;
    if (err == 0)
        return false;
    const struct ctx__msg *m = o->u.c.msg;
    const char *f = NULL, *fn = NULL;
    int l = 0;
    if (m != NULL && (m->file != NULL || m->func != NULL)) {
        f = m->file;
        l = m->line;
        fn = m->func;
    } else if (err == CTX_DEADLINE_EXCEEDED) {
        fn = "deadline";
        if (ctx__tracking_on()) {
            if (!locked)
                ctx__lock(&R.lock);
            const struct rec *r = deadline_rec_locked(o);
            if (r != NULL) {
                f = r->file;
                l = r->line;
            }
            if (!locked)
                ctx__unlock(&R.lock);
        }
    }
    if (file != NULL)
        *file = f;
    if (line != NULL)
        *line = l;
    if (func != NULL)
        *func = fn;
    return true;
}

bool ctx_cancel_site(ctx_t *c, const char **file, int *line, const char **func)
{
    if (file != NULL)
        *file = NULL;
    if (line != NULL)
        *line = 0;
    if (func != NULL)
        *func = NULL;
    if (c == NULL)
        return false;
    return site_of(c, file, line, func, 0);
}

/* Writes one line for c.  full: the whole ctx_describe text instead of c's
 * own piece.  r: c's record, or NULL.  Returns 0 or EIO. */
static int dump_line(FILE *out, struct ctx *c, int depth, int full, const struct rec *r,
                     ctx_time_t now)
{
    char text[512], tmp[256];
    if (full)
        ctx_describe(c, text, sizeof text);
    else
        ctx__describe_piece(c, text, sizeof text);
    int bad = fprintf(out, "%*s%s", depth * 2, "", text) < 0;
    if (r != NULL) {
        dur_text(now - r->born, tmp, sizeof tmp);
        bad |= fprintf(out, "  age=%s", tmp) < 0;
    }
    unsigned kind = ctx__kind(c);
    if (kind == CTX__TIMER) {
        dur_text(((struct ctx__timer *)c)->deadline - now, tmp, sizeof tmp);
        bad |= fprintf(out, "  left=%s", tmp) < 0;
    }
    const char *msg;
    int cause = ctx_cause(c, &msg);
    int err = (ctx_err)(c);
    if (err != 0) {
        bad |= fprintf(out, "  err=\"%s\"", ctx_strerror(err)) < 0;
        if (cause != err || strcmp(msg, ctx_strerror(err)) != 0)
            bad |= fprintf(out, "  cause=%d \"%s\"", cause, msg) < 0;
    }
    if (r != NULL) {
        site_text(r->file, r->line, r->func, tmp, sizeof tmp);
        bad |= fprintf(out, "  created=%s", tmp) < 0;
    }
    const char *sf, *sfn;
    int sl;
    /* Only the node that owns its state has a site of its own to show. */
    if (ctx__is_cancel_kind(kind) && site_of(c, &sf, &sl, &sfn, 1) && (sf != NULL || sfn != NULL)) {
        site_text(sf, sl, sfn, tmp, sizeof tmp);
        bad |= fprintf(out, "  cancelled=%s", tmp) < 0;
    }
    if (ctx__is_cancel_kind(kind)) {
        uint32_t s = atomic_load_explicit(&c->u.c.state, memory_order_relaxed);
        if (s & CTX__WAITERS)
            bad |= fprintf(out, "  waiters") < 0;
        if (s & CTX__HAS_FD)
            bad |= fprintf(out, "  fd") < 0;
        int cb = count_callbacks(c);
        if (cb > 0)
            bad |= fprintf(out, "  callbacks=%d", cb) < 0;
    }
    bad |= fputc('\n', out) == EOF;
    return bad ? EIO : 0;
}

/* A dump from the registry: every tracked context under top (top == NULL:
 * every tracked context).  Under the registry lock. */
static int dump_tracked_locked(FILE *out, struct ctx *top)
{
    size_t n = R.count;
    ctx_time_t now = ctx_now();
    int e = 0;
    struct rec **recs = ctx__alloc((n + 1) * sizeof *recs);
    long *tp = ctx__alloc((n + 1) * sizeof *tp);         /* tracked parent's index, or -1 */
    size_t *first = ctx__alloc((n + 2) * sizeof *first); /* children, by parent */
    size_t *kids = ctx__alloc((n + 1) * sizeof *kids);
    size_t *stack = ctx__alloc((n + 1) * sizeof *stack);
    int *depth = ctx__alloc((n + 1) * sizeof *depth);
    char *inside = ctx__alloc(n + 1);
    if (!recs || !tp || !first || !kids || !stack || !depth || !inside) {
        e = ENOMEM;
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; R.tab != NULL && i <= R.mask; i++)
        for (struct rec *r = R.tab[i]; r != NULL; r = r->next)
            recs[k++] = r;
    /* In creation order (an insertion sort: dumps are for people, and a
     * registry is mostly in that order already by its chains' LIFO). */
    for (size_t i = 1; i < k; i++) {
        struct rec *x = recs[i];
        size_t j = i;
        while (j > 0 && recs[j - 1]->born > x->born) {
            recs[j] = recs[j - 1];
            j--;
        }
        recs[j] = x;
    }
    for (size_t i = 0; i < k; i++)
        recs[i]->idx = i;
    int top_tracked = 0;
    for (size_t i = 0; i < k; i++) {
        tp[i] = -1;
        inside[i] = top == NULL;
        struct ctx *c = recs[i]->node;
        if (c == top) {
            inside[i] = 1;
            top_tracked = 1;
        }
        /* Up to the root (a root may be top too), or until both the
         * tracked parent and membership are known. */
        for (struct ctx *p = ctx__parent(c); p != NULL; p = ctx__parent(p)) {
            if (p == top)
                inside[i] = 1;
            if (ctx__kind(p) == CTX__ROOT)
                break;
            if (tp[i] < 0) {
                const struct rec *pr = find_locked(p);
                if (pr != NULL)
                    tp[i] = (long)pr->idx;
            }
            if (tp[i] >= 0 && (top == NULL || inside[i]))
                break;
        }
    }
    /* Children lists by counting sort. */
    memset(first, 0, (k + 2) * sizeof *first);
    for (size_t i = 0; i < k; i++)
        if (inside[i] && tp[i] >= 0 && inside[tp[i]] && recs[i]->node != top)
            first[tp[i] + 1]++;
    for (size_t i = 0; i < k; i++)
        first[i + 1] += first[i];
    {
        size_t *fill = stack; /* reuse as fill cursors */
        for (size_t i = 0; i < k; i++)
            fill[i] = first[i];
        for (size_t i = 0; i < k; i++)
            if (inside[i] && tp[i] >= 0 && inside[tp[i]] && recs[i]->node != top)
                kids[fill[tp[i]]++] = i;
    }
    int base = 0;
    if (top != NULL && !top_tracked) {
        e = dump_line(out, top, 0, 1, NULL, now);
        base = 1;
    }
    /* Roots (in reverse, so that the stack pops them in creation order). */
    size_t sp = 0;
    for (size_t i = k; i-- > 0;) {
        if (!inside[i])
            continue;
        if (top_tracked ? recs[i]->node == top : (tp[i] < 0 || !inside[tp[i]])) {
            stack[sp++] = i;
            depth[i] = base;
        }
    }
    while (sp > 0 && e == 0) {
        size_t i = stack[--sp];
        e = dump_line(out, recs[i]->node, depth[i], depth[i] == 0, recs[i], now);
        for (size_t j = first[i + 1]; j-- > first[i];) {
            depth[kids[j]] = depth[i] + 1;
            stack[sp++] = kids[j];
        }
    }
out:
    ctx__free(recs);
    ctx__free(tp);
    ctx__free(first);
    ctx__free(kids);
    ctx__free(stack);
    ctx__free(depth);
    ctx__free(inside);
    return e;
}

/* Whether cancel node y (found in the children list of top's owner) lies
 * under top: its parent chain meets top before another cancel node. */
static int under(struct ctx *y, struct ctx *top)
{
    for (struct ctx *p = ctx__parent(y); p != NULL; p = ctx__parent(p)) {
        if (p == top)
            return 1;
        if (ctx__kind(p) != CTX__VALUE)
            return 0;
    }
    return 0;
}

/* dump_lists' stack of contexts still to write. */
struct item {
    struct ctx *c;
    int depth;
};

/* What push_kid needs: the stack, and the node whose children it pushes. */
struct push {
    struct item **st;
    size_t *cap, *sp;
    struct ctx *owner, *top;
    int depth;
};

/* Pushes child y of p->owner that lies under p->top, holding a reference. */
static int push_kid(struct ctx *y, void *arg)
{
    struct push *p = arg;
    if (ctx__kind(y) == CTX__AFTER || (p->owner != p->top && !under(y, p->top)))
        return 0;
    if (*p->sp == *p->cap) {
        struct item *bigger = ctx__alloc(*p->cap * 2 * sizeof **p->st);
        if (bigger == NULL)
            return ENOMEM;
        memcpy(bigger, *p->st, *p->sp * sizeof **p->st);
        ctx__free(*p->st);
        *p->st = bigger;
        *p->cap *= 2;
    }
    /* A node whose count reached zero is being freed by a thread that
     * waits for this (node or shard) lock: leave it out. */
    if (ctx__try_ref(y))
        (*p->st)[(*p->sp)++] = (struct item){ y, p->depth };
    return 0;
}

/* A dump without tracking: the children lists of the cancel nodes, depth
 * first, each node held by a reference while it is listed. */
static int dump_lists(FILE *out, struct ctx *top)
{
    size_t cap = 64, sp = 0;
    struct item *st = ctx__alloc(cap * sizeof *st);
    if (st == NULL)
        return ENOMEM;
    ctx_time_t now = ctx_now();
    int e = 0;
    st[sp++] = (struct item){ top, 0 };
    while (sp > 0) {
        struct item it = st[--sp];
        if (e == 0)
            e = dump_line(out, it.c, it.depth, it.depth == 0, NULL, now);
        struct ctx *o = ctx__owner(it.c);
        if (e == 0 && ctx__is_cancel_kind(ctx__kind(o))) {
            struct push p = { &st, &cap, &sp, o, it.c, it.depth + 1 };
            ctx__lock(&o->lock);
            e = each_kid(o, push_kid, &p);
            ctx__unlock(&o->lock);
        }
        if (it.c != top)
            ctx_unref(it.c);
    }
    ctx__free(st);
    return e;
}

int ctx_dump(ctx_t *c, FILE *out)
{
    if (c == NULL || out == NULL)
        return EINVAL;
    int e;
    if (ctx__tracking_on()) {
        ctx__lock(&R.lock);
        e = dump_tracked_locked(out, c);
        ctx__unlock(&R.lock);
    } else {
        e = dump_lists(out, c);
    }
    if (e == 0 && fflush(out) != 0)
        e = EIO;
    return e;
}

int ctx_dump_all(FILE *out)
{
    if (out == NULL)
        return EINVAL;
    if (!ctx__tracking_on())
        return ENOTSUP;
    ctx__lock(&R.lock);
    int e = dump_tracked_locked(out, NULL);
    ctx__unlock(&R.lock);
    if (e == 0 && fflush(out) != 0)
        e = EIO;
    return e;
}

static void report_at_exit(void)
{
    if (!ctx__tracking_on())
        return;
    /* exit() flushes stdio after the atexit handlers: flush the program's
     * own output first, so that the report reads after it. */
    fflush(stdout);
    ctx__lock(&R.lock);
    if (R.count > 0) {
        fprintf(stderr, "libctx: %zu context%s still alive at exit:\n", R.count,
                R.count == 1 ? "" : "s");
        dump_tracked_locked(stderr, NULL);
    }
    ctx__unlock(&R.lock);
    fflush(stderr);
}
