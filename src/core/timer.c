/* SPDX-License-Identifier: MIT */

/*
 * Timers: the structures that hold every live deadline, the timer thread
 * that fires them, and the manual clock that tests use to drive them.
 * The clock itself is in clock.c, deadline contexts in deadline.c.
 *
 * Live deadlines are kept in NSHARDS shards, each with its own lock; a
 * thread always inserts into the same one, so threads creating and
 * cancelling timeouts do not contend.  A shard holds its deadlines in two
 * intrusive structures, so that a timer needs no memory beyond its node:
 *
 * - A hierarchical timing wheel for deadlines that are not near: NLEVELS
 *   levels of 64 slots, a slot of level L spanning 32^L granules of 2^20 ns
 *   (about a millisecond).  A deadline goes into the lowest level whose
 *   window reaches it, as a list entry: insert and cancel are O(1), and a
 *   bitmap per level finds the next non-empty slot in a few instructions.
 *   A slot of level L > 0 moves its entries down ("cascade") one slot's
 *   span before time reaches it; each entry moves at most NLEVELS times,
 *   and only when it lives that long.
 * - The due list: the deadlines of the next few milliseconds, sorted.  A
 *   level-0 slot is sorted (merge sort on the list) and appended when time
 *   reaches it, LEAD early, so that the timer thread fires each deadline at
 *   its exact time, not at a slot's.
 *
 * "Time reaches" is the timer thread's drain: it walks base, the first
 * granule not yet moved to the due list, up to now + LEAD, slot event by
 * slot event, moving at most DRAIN_BUDGET entries per look under the lock so
 * that a large cascade (tens of thousands of entries in a deadline storm)
 * is spread between firings instead of making them late.
 *
 * Each shard publishes in an atomic the earliest time it needs the timer
 * thread (its first due deadline or its next wheel event, LEAD early), so
 * finding the earliest takes NSHARDS loads and no lock.
 *
 * One library thread, started on first need, sleeps until that time, then
 * takes every due timer of a shard in one visit under its lock, cancels
 * them, and hands all the AfterFunc callbacks of the batch to the callback
 * threads (after.c) in one step, so a slow callback never makes another
 * deadline late, and a storm costs one hand-off per batch, not per timer.
 * An insert wakes the timer thread only when it makes a shard's time
 * earlier than the one the thread sleeps until.
 *
 * Under the manual clock the timer thread stands aside and
 * ctx_clock_advance() fires what is due, in order, on the caller.
 *
 * Locks, in order: T.fire (held by whoever cancels expired timers: the
 * timer thread or an advancing test; and by fork's prepare handler), node
 * locks, then either a shard's lock or T.mu (the timer thread's sleep and
 * the clock mode).  A shard lock and T.mu are never held together except by
 * fork's prepare handler, which takes T.mu first.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define NSHARDS      8
#define GRAN_SHIFT   20 /* a granule: 2^20 ns */
#define NEAR_BITS    12 /* level 0: 4096 slots of a granule, about 4.3 s */
#define NEAR         (1u << NEAR_BITS)
#define LVL_SHIFT    5 /* above level 1, a slot spans 32 of the level below */
#define NSLOTS       64
#define NLEVELS      8 /* shift 41 at level 7: every granule has a slot */
#define LEAD_NS      ((ctx_time_t)1 << (GRAN_SHIFT - 1)) /* due-list horizon */
#define DRAIN_BUDGET 256                                 /* entries moved per look */
#define FIRE_BATCH   64                                  /* timers taken per look */
#define AT_DUE       0xffu                               /* t->level: in the due list */
#define REANCHOR     64 /* granules: an empty shard's base is moved to now beyond it */

struct shard {
    _Atomic uint32_t mu; /* a futex lock: ctx__lock/ctx__unlock */
    /* The earliest time this shard needs the timer thread, or INT64_MAX.
     * Written under mu; read without it to pick the earliest shard (a
     * stale value only costs a look under the lock). */
    _Atomic int64_t min;
    uint64_t base;               /* granules below it are in the due list */
    struct ctx__link *due;       /* sorted by deadline */
    struct ctx__timer *due_last; /* its last entry, or NULL */
    uint64_t near_sum;           /* bit w: near_bits[w] != 0 */
    uint64_t near_bits[NEAR / 64];
    uint64_t bits[NLEVELS];                 /* non-empty slots, levels >= 1 */
    struct ctx__link *far[NLEVELS][NSLOTS]; /* levels >= 1 ([0] unused) */
    struct ctx__link *near[NEAR];           /* level 0 */
} __attribute__((aligned(64)));

static struct {
    _Atomic int ready; /* init() has run */
    pthread_once_t once;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC: the timer thread sleeps here */
    pthread_mutex_t fire;
    int64_t wake;          /* under mu: when the timer thread will wake */
    _Atomic int started;   /* the timer thread runs; set under mu */
    int quit;              /* under mu: ctx_shutdown asks an idle thread to end */
    _Atomic unsigned next; /* round robin for assigning shards to threads */
    struct shard shard[NSHARDS];
} T = {
    .once = PTHREAD_ONCE_INIT,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .fire = PTHREAD_MUTEX_INITIALIZER, /* made recursive by init_once */
    .wake = INT64_MAX,
};

/* ---------------------------------------------------------------------------
 * The wheel and the due list (each under its shard's lock)
 */

/* Instants as unsigned granules, order kept: the bias maps INT64_MIN to 0. */
static uint64_t gran(ctx_time_t t)
{
    return ((uint64_t)t + ((uint64_t)1 << 63)) >> GRAN_SHIFT;
}

/* The first instant of granule g. */
static ctx_time_t gran_start(uint64_t g)
{
    uint64_t u = g << GRAN_SHIFT;
    if (u >= (uint64_t)1 << 63)
        return (ctx_time_t)(u - ((uint64_t)1 << 63));
    return (ctx_time_t)u - INT64_MAX - 1;
}

static unsigned ctz64(uint64_t x)
{
#if defined(__GNUC__) || defined(__clang__)
    return (unsigned)__builtin_ctzll(x);
#else
    unsigned n = 0;
    while (!(x & 1)) {
        x >>= 1;
        n++;
    }
    return n;
#endif
}

static struct ctx__timer *wheel_timer(struct ctx__link *l)
{
    return CTX__CONTAINER(l, struct ctx__timer, wheel);
}

/* The shift of a slot of level L >= 1 (in granules).  A level-1 slot spans
 * half of level 0's window, and a slot above spans 32 of the level below,
 * while each level holds 64: so a slot can be cascaded a whole slot early,
 * when base enters the slot before it, and its entries still fit below. */
static unsigned lvl_shift(unsigned L)
{
    return NEAR_BITS - 1 + LVL_SHIFT * (L - 1);
}

/* The distance from slot index p to the first non-empty level-0 slot at or
 * after it (circularly), or NEAR when level 0 is empty. */
static uint64_t near_next(const struct shard *S, unsigned p)
{
    unsigned w = p / 64;
    uint64_t b = S->near_bits[w] & (~(uint64_t)0 << (p % 64));
    if (b != 0)
        return w * 64 + ctz64(b) - p;
    /* Later words, then from the start, then the first bits of word w. */
    uint64_t later = w < 63 ? S->near_sum & (~(uint64_t)0 << (w + 1)) : 0;
    if (later != 0) {
        unsigned v = ctz64(later);
        return v * 64 + ctz64(S->near_bits[v]) - p;
    }
    if (S->near_sum != 0) {
        unsigned v = ctz64(S->near_sum); /* v <= w */
        return NEAR + v * 64 + ctz64(S->near_bits[v]) - p;
    }
    return NEAR;
}

/* The granule at which the timer thread must handle slot v (in level L's
 * units, absolute) of level L >= 1: it cascades from the slot before, so
 * from when base enters that one, and never before base. */
static uint64_t cascade_event(const struct shard *S, unsigned L, uint64_t v)
{
    unsigned sh = lvl_shift(L);
    if (v > S->base >> sh)
        v--;
    uint64_t ev = v << sh;
    return ev < S->base ? S->base : ev;
}

/*
 * The next granule, at or after base, at which the wheel has work: a
 * level-0 slot to move to the due list, or a slot of a higher level to
 * cascade (from when base enters the slot before it).  A level-L slot holds
 * the entries whose granule, shifted, is 0 to 63 above base's (0 to 4095 at
 * level 0), so rotating the level's bitmap by base's index puts the nearest
 * first.  UINT64_MAX when the wheel is empty.
 */
static uint64_t next_event(const struct shard *S)
{
    uint64_t best = UINT64_MAX;
    uint64_t d0 = near_next(S, (unsigned)(S->base & (NEAR - 1)));
    if (d0 < NEAR)
        best = S->base + d0;
    for (unsigned L = 1; L < NLEVELS; L++) {
        uint64_t b = S->bits[L];
        if (b == 0)
            continue;
        unsigned sh = lvl_shift(L);
        uint64_t cur = S->base >> sh;
        unsigned r = (unsigned)(cur & (NSLOTS - 1));
        uint64_t rot = r != 0 ? (b >> r) | (b << (64 - r)) : b;
        uint64_t ev = cascade_event(S, L, cur + ctz64(rot));
        if (ev < best)
            best = ev;
    }
    return best;
}

static ctx_time_t sub_sat(ctx_time_t t, ctx_duration_t d)
{
    return t < INT64_MIN + d ? INT64_MIN : t - d;
}

static struct ctx__timer *due_first(const struct shard *S)
{
    return S->due != NULL ? wheel_timer(S->due) : NULL;
}

static ctx_time_t shard_min(const struct shard *S)
{
    struct ctx__timer *f = due_first(S);
    ctx_time_t m = f != NULL ? f->deadline : INT64_MAX;
    uint64_t e = next_event(S);
    if (e != UINT64_MAX) {
        ctx_time_t w = sub_sat(gran_start(e), LEAD_NS);
        if (w < m)
            m = w;
    }
    return m;
}

static void publish_min(struct shard *S, ctx_time_t m)
{
    atomic_store_explicit(&S->min, m, memory_order_relaxed);
}

/* The entry before t in the due list, or NULL when t is the first. */
static struct ctx__timer *due_prev(struct shard *S, struct ctx__timer *t)
{
    if (t->wheel.pprev == &S->due)
        return NULL;
    return CTX__CONTAINER(t->wheel.pprev, struct ctx__timer, wheel.next);
}

/* Puts t into the due list in deadline order.  The list holds a few
 * milliseconds of deadlines and new ones are usually late among them, so
 * the search runs from the end. */
static void due_insert(struct shard *S, struct ctx__timer *t)
{
    struct ctx__timer *p = S->due_last;
    while (p != NULL && p->deadline > t->deadline)
        p = due_prev(S, p);
    ctx__link_insert(p != NULL ? &p->wheel.next : &S->due, &t->wheel);
    if (p == S->due_last)
        S->due_last = t;
    t->level = AT_DUE;
}

/* Puts t, whose granule g is at or after base, into the wheel: the lowest
 * level whose slots reach g from base.  Above level 0 that leaves a
 * distance of at least 2 (at 1 the level below reaches it). */
static void wheel_place(struct shard *S, struct ctx__timer *t, uint64_t g)
{
    if (g - S->base < NEAR) {
        unsigned i = (unsigned)(g & (NEAR - 1));
        t->level = 0;
        t->slot = (uint16_t)i;
        ctx__link_insert(&S->near[i], &t->wheel);
        S->near_bits[i / 64] |= (uint64_t)1 << (i % 64);
        S->near_sum |= (uint64_t)1 << (i / 64);
        return;
    }
    unsigned L = 1;
    while (L < NLEVELS - 1 && (g >> lvl_shift(L)) - (S->base >> lvl_shift(L)) >= NSLOTS)
        L++;
    unsigned i = (unsigned)(g >> lvl_shift(L)) & (NSLOTS - 1);
    t->level = (uint8_t)L;
    t->slot = (uint16_t)i;
    ctx__link_insert(&S->far[L][i], &t->wheel);
    S->bits[L] |= (uint64_t)1 << i;
}

static void near_clear(struct shard *S, unsigned i)
{
    S->near_bits[i / 64] &= ~((uint64_t)1 << (i % 64));
    if (S->near_bits[i / 64] == 0)
        S->near_sum &= ~((uint64_t)1 << (i / 64));
}

static void place(struct shard *S, struct ctx__timer *t)
{
    uint64_t g = gran(t->deadline);
    if (g < S->base)
        due_insert(S, t);
    else
        wheel_place(S, t, g);
}

/* Takes t out of whichever structure holds it.  O(1). */
static void unplace(struct shard *S, struct ctx__timer *t)
{
    if (t->wheel.pprev == NULL)
        return;
    if (t->level == AT_DUE) {
        if (S->due_last == t)
            S->due_last = due_prev(S, t);
        ctx__link_remove(&t->wheel);
        return;
    }
    ctx__link_remove(&t->wheel);
    if (t->level == 0) {
        if (S->near[t->slot] == NULL)
            near_clear(S, t->slot);
    } else if (S->far[t->level][t->slot] == NULL) {
        S->bits[t->level] &= ~((uint64_t)1 << t->slot);
    }
}

static ctx_time_t deadline_of(struct ctx__link *l)
{
    return wheel_timer(l)->deadline;
}

static struct ctx__link *merge(struct ctx__link *a, struct ctx__link *b)
{
    struct ctx__link *head = NULL, **tp = &head;
    while (a != NULL && b != NULL) {
        if (deadline_of(a) <= deadline_of(b)) {
            *tp = a;
            a = a->next;
        } else {
            *tp = b;
            b = b->next;
        }
        tp = &(*tp)->next;
    }
    *tp = a != NULL ? a : b;
    return head;
}

/* Sorts a list linked through next only: bottom-up merge sort, part[i]
 * holding a sorted run of 2^i entries, so no recursion and no memory. */
static struct ctx__link *sort_list(struct ctx__link *l)
{
    struct ctx__link *part[48] = { NULL };
    while (l != NULL) {
        struct ctx__link *x = l;
        l = l->next;
        x->next = NULL;
        unsigned i = 0;
        for (; i < 47 && part[i] != NULL; i++) {
            x = merge(part[i], x);
            part[i] = NULL;
        }
        part[i] = part[i] != NULL ? merge(part[i], x) : x;
    }
    struct ctx__link *r = NULL;
    for (unsigned i = 0; i < 48; i++)
        if (part[i] != NULL)
            r = merge(part[i], r);
    return r;
}

/* Scratch for sorting a slot: (deadline, node) pairs, so that the sort
 * compares in one cache-friendly array instead of chasing nodes.  Used
 * only by drain(), whose callers hold T.fire. */
#define SCRATCH 4096
struct pair {
    ctx_time_t deadline;
    struct ctx__link *l;
};
static struct pair scratch[SCRATCH];

static int cmp_pair(const void *a, const void *b)
{
    ctx_time_t x = ((const struct pair *)a)->deadline, y = ((const struct pair *)b)->deadline;
    return x < y ? -1 : x > y;
}

/* Sorts slot list l by deadline: through the scratch array when it fits,
 * else by merge sort on the list itself. */
static struct ctx__link *sort_slot(struct ctx__link *l)
{
    size_t n = 0;
    for (struct ctx__link *x = l; x != NULL && n < SCRATCH; x = x->next)
        scratch[n++] = (struct pair){ deadline_of(x), x };
    if (n == SCRATCH)
        return sort_list(l);
    qsort(scratch, n, sizeof scratch[0], cmp_pair);
    for (size_t i = 0; i + 1 < n; i++)
        scratch[i].l->next = scratch[i + 1].l;
    if (n > 0)
        scratch[n - 1].l->next = NULL;
    return n > 0 ? scratch[0].l : NULL;
}

/* Moves level-0 slot i to the end of the due list, sorted.  Every entry
 * already there is of an earlier granule, so appending keeps the order. */
static void slot_to_due(struct shard *S, unsigned i)
{
    struct ctx__link *l = sort_slot(S->near[i]);
    S->near[i] = NULL;
    near_clear(S, i);
    struct ctx__link **at = S->due_last != NULL ? &S->due_last->wheel.next : &S->due;
    while (l != NULL) {
        struct ctx__link *next = l->next;
        l->next = NULL;
        l->pprev = at;
        *at = l;
        at = &l->next;
        struct ctx__timer *t = wheel_timer(l);
        t->level = AT_DUE;
        S->due_last = t;
        l = next;
    }
}

/*
 * Moves to the due list everything the wheel holds for granules up to upto,
 * cascading higher slots on the way, but at most DRAIN_BUDGET entries of
 * cascade.  Returns nonzero when it stopped early (call again).
 */
static int drain(struct shard *S, uint64_t upto, unsigned budget)
{
    while (S->base <= upto) {
        uint64_t e = next_event(S);
        if (e > upto) {
            S->base = upto + 1;
            return 0;
        }
        S->base = e;
        /* Highest level first: what a cascade moves down may land in a
         * lower slot that is due at e too.  A cascaded entry lands below:
         * at distance 1 or less from base at level L, it is at most 63
         * from base at level L - 1. */
        for (unsigned L = NLEVELS - 1; L >= 1; L--) {
            /* The slots at distance 1 (cascaded early) and 0.  The whole
             * list is taken off its slot first, so that moving an entry
             * does not write to the next one; what the budget leaves goes
             * back. */
            for (unsigned d = 2; d-- > 0;) {
                unsigned i = (unsigned)((e >> lvl_shift(L)) + d) & (NSLOTS - 1);
                struct ctx__link *l = S->far[L][i];
                if (l == NULL)
                    continue;
                S->far[L][i] = NULL;
                S->bits[L] &= ~((uint64_t)1 << i);
                while (l != NULL) {
                    if (budget-- == 0) {
                        S->far[L][i] = l;
                        l->pprev = &S->far[L][i];
                        S->bits[L] |= (uint64_t)1 << i;
                        return 1;
                    }
                    struct ctx__link *next = l->next;
#if defined(__GNUC__) || defined(__clang__)
                    if (next != NULL)
                        __builtin_prefetch(next, 1);
#endif
                    place(S, wheel_timer(l));
                    l = next;
                }
            }
        }
        unsigned i0 = (unsigned)(e & (NEAR - 1));
        if (S->near[i0] != NULL)
            slot_to_due(S, i0);
        S->base = e + 1;
    }
    return 0;
}

/* T.fire is recursive: a callback run by ctx_clock_advance may advance the
 * clock again, or fork, on the same thread. */
static void init_fire(void)
{
    pthread_mutexattr_t ma;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&T.fire, &ma);
    pthread_mutexattr_destroy(&ma);
}

static void init_once(void)
{
    init_fire();
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&T.cv, &a);
    pthread_condattr_destroy(&a);
    uint64_t g = gran(ctx__real_now());
    for (int i = 0; i < NSHARDS; i++) {
        T.shard[i].base = g;
        atomic_store_explicit(&T.shard[i].min, INT64_MAX, memory_order_relaxed);
    }
    ctx__fork_init();
    /* Release: pairs with the acquire in init(). */
    atomic_store_explicit(&T.ready, 1, memory_order_release);
}

static void init(void)
{
    if (!atomic_load_explicit(&T.ready, memory_order_acquire))
        pthread_once(&T.once, init_once);
}

/* This thread's shard. */
static unsigned my_shard(void)
{
    static CTX__TLS unsigned mine;
    if (mine == 0)
        mine = 1 + atomic_fetch_add_explicit(&T.next, 1, memory_order_relaxed) % NSHARDS;
    return mine - 1;
}

static void *timer_main(void *arg);

/* Starts the timer thread if the real clock is in force and it is not
 * running.  Under T.mu. */
static int start_thread_locked(void)
{
    if (atomic_load_explicit(&T.started, memory_order_relaxed) ||
        atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed))
        return 0;
    int e = ctx__thread_start(timer_main, 64 * 1024);
    if (e == 0)
        atomic_store_explicit(&T.started, 1, memory_order_relaxed);
    return e;
}

static int ensure_thread(void)
{
    if (atomic_load_explicit(&T.started, memory_order_relaxed))
        return 0;
    pthread_mutex_lock(&T.mu);
    int e = start_thread_locked();
    pthread_mutex_unlock(&T.mu);
    return e;
}

static int shard_wheel_empty(const struct shard *S)
{
    for (unsigned L = 1; L < NLEVELS; L++)
        if (S->bits[L] != 0)
            return 0;
    return 1;
}

/* The time the timer thread must look at S for t, just placed: its own
 * deadline in the due list, or LEAD before its wheel event (when its
 * level-0 slot moves to the due list, or its slot of a higher level
 * cascades, from when base enters the slot before it; see next_event).
 * Under S's lock. */
static ctx_time_t entry_min(const struct shard *S, const struct ctx__timer *t)
{
    if (t->level == AT_DUE)
        return t->deadline;
    uint64_t g = gran(t->deadline);
    uint64_t ev = t->level == 0 ? g : cascade_event(S, t->level, g >> lvl_shift(t->level));
    return sub_sat(gran_start(ev), LEAD_NS);
}

/* Inserts t, unless t is already done (a parent's cancel may have reached
 * it since it was linked).  now is a reading of ctx_now() taken by the
 * caller before the call (the one its deadline came from), so that a
 * timeout costs one clock read.  Needs no memory, so cannot fail. */
static void timer_insert(struct ctx__timer *t, ctx_time_t now)
{
    struct shard *S = &T.shard[t->shard];
    ctx_time_t m = INT64_MAX;
    ctx__lock(&S->mu);
    /* Acquire: pairs with mark()'s release.  mark() sets err before it
     * takes the shard lock to remove the timer, so either it sees our entry
     * or we see its err. */
    if (!(atomic_load_explicit(&t->base.u.c.state, memory_order_acquire) & CTX__ERR_MASK)) {
        /* An empty shard's wheel may start anywhere: start it now, so that
         * deadlines made after a quiet spell need no cascades.  A reading
         * a little older than another thread's is harmless here: with
         * nothing placed, any base is consistent.  Only a base REANCHOR
         * granules or more from now is worth the look at every level: the
         * timer thread keeps a busy shard's base near now, and one a few
         * granules off places a deadline as well.  The test is about |g - base|
         * >= REANCHOR in unsigned arithmetic: a base ahead of this
         * thread's reading wraps the difference around. */
        uint64_t g = gran(now);
        if (CTX__UNLIKELY(g - S->base + REANCHOR >= 2 * REANCHOR) && S->due == NULL &&
            S->near_sum == 0 && shard_wheel_empty(S))
            S->base = g;
        place(S, t);
        /* Only a new first due entry or a newly used slot can make the
         * shard's time earlier, and then to this entry's own time: the
         * published time stays a lower bound of the shard's (what a
         * removal leaves early is corrected at the timer thread's next
         * look), so the whole shard need not be scanned. */
        if (t->level == AT_DUE ? S->due == &t->wheel : t->wheel.next == NULL) {
            m = entry_min(S, t);
            if (m < atomic_load_explicit(&S->min, memory_order_relaxed))
                publish_min(S, m);
            else
                m = INT64_MAX;
        }
    }
    ctx__unlock(&S->mu);
    if (m != INT64_MAX) {
        /* The timer thread computes its wake-up time and goes to sleep
         * under T.mu, after reading every shard's min: either it read ours,
         * or we see the time it chose here. */
        pthread_mutex_lock(&T.mu);
        if (m < T.wake)
            pthread_cond_signal(&T.cv);
        pthread_mutex_unlock(&T.mu);
    }
}

void ctx__timer_remove(struct ctx__timer *t)
{
    struct shard *S = &T.shard[t->shard];
    ctx__lock(&S->mu);
    int first = S->due == &t->wheel;
    unplace(S, t);
    /* A later first entry makes the shard's time later; an emptied wheel
     * slot leaves it early at worst, which costs one needless look. */
    if (first)
        publish_min(S, shard_min(S));
    ctx__unlock(&S->mu);
}

/* The shard needing the timer thread first, from the published times. */
static struct shard *earliest_shard(int64_t *min)
{
    struct shard *best = &T.shard[0];
    int64_t m = atomic_load_explicit(&best->min, memory_order_relaxed);
    for (int i = 1; i < NSHARDS; i++) {
        int64_t v = atomic_load_explicit(&T.shard[i].min, memory_order_relaxed);
        if (v < m) {
            m = v;
            best = &T.shard[i];
        }
    }
    *min = m;
    return best;
}

/* Takes S's first due entry if its deadline is at or before now, and a
 * reference to its node.  Under S's lock.  Returns 1 with *out set (NULL
 * when the node is skipped), or 0 when nothing is due. */
static int pop_locked(struct shard *S, ctx_time_t now, struct ctx__timer **out)
{
    struct ctx__timer *t = due_first(S);
    if (t == NULL || t->deadline > now)
        return 0;
    unplace(S, t);
    /* Skip a node that is already done (its canceller is about to remove
     * this entry: never touch its locks) or whose count reached zero (a
     * thread freeing it waits for this lock to remove the entry).  Either
     * way the node is still allocated while we hold the shard lock. */
    if (atomic_load_explicit(&t->base.u.c.state, memory_order_acquire) & CTX__ERR_MASK)
        *out = NULL;
    else
        *out = ctx__try_ref(&t->base) ? t : NULL;
    return 1;
}

/* Brings S's due list up to now (the wheel's entries come LEAD early) and
 * takes up to room due timers into out[].  Under S's lock.  *more is set
 * when S has work left at now: a drain cut short, or more due timers. */
static size_t take_due(struct shard *S, ctx_time_t now, struct ctx__timer **out, size_t room,
                       unsigned budget, int *more)
{
    size_t k = 0;
    *more = drain(S, gran(ctx__add_sat(now, LEAD_NS)), budget);
    struct ctx__timer *t;
    while (k < room) {
#if defined(__GNUC__) || defined(__clang__)
        /* The due list is a chain of nodes: ask for the one after next
         * while this one is handled (its link, and the line with its lock
         * and state, which the firing touches). */
        if (S->due != NULL && S->due->next != NULL) {
            __builtin_prefetch(S->due->next, 1);
            __builtin_prefetch(&wheel_timer(S->due->next)->base, 1);
        }
#endif
        if (!pop_locked(S, now, &t))
            break;
        if (t != NULL)
            out[k++] = t;
    }
    ctx_time_t m = shard_min(S);
    if (m <= now)
        *more = 1;
    publish_min(S, m);
    return k;
}

/* Takes the earliest due timer of all shards (for the manual clock, which
 * fires strictly in order), after bringing every shard's due list up to
 * now.  Returns 1 with *out set (NULL when the node is skipped), or 0 when
 * nothing is due. */
static int pop_due(ctx_time_t now, struct ctx__timer **out)
{
    for (;;) {
        for (int i = 0; i < NSHARDS; i++) {
            struct shard *S = &T.shard[i];
            if (atomic_load_explicit(&S->min, memory_order_relaxed) > now)
                continue;
            ctx__lock(&S->mu);
            drain(S, gran(ctx__add_sat(now, LEAD_NS)), UINT32_MAX);
            publish_min(S, shard_min(S));
            ctx__unlock(&S->mu);
        }
        /* Now every wheel event is later than now: a shard's time at or
         * before now is its first due deadline. */
        int64_t m;
        struct shard *S = earliest_shard(&m);
        if (m > now)
            return 0;
        if (m == INT64_MAX) {
            /* Only deadlines at the end of time are left, due now that now
             * is the end of time too (or the shards are empty). */
            for (int i = 0; i < NSHARDS; i++) {
                ctx__lock(&T.shard[i].mu);
                int popped = pop_locked(&T.shard[i], now, out);
                publish_min(&T.shard[i], shard_min(&T.shard[i]));
                ctx__unlock(&T.shard[i].mu);
                if (popped)
                    return 1;
            }
            return 0;
        }
        ctx__lock(&S->mu);
        int popped = pop_locked(S, now, out);
        publish_min(S, shard_min(S));
        ctx__unlock(&S->mu);
        if (popped)
            return 1;
        /* The shard's first entry went meanwhile (a cancel): look again. */
    }
}

/* Fires t, holding the reference pop_locked took.  With chain set (the
 * timer thread), callbacks go on the chain, and so does our reference when
 * it is the last one: freeing runs user code (value and custom destroy
 * hooks, up the chain), which must never run on the timer thread. */
static void fire(struct ctx__timer *t, struct ctx__chain *chain)
{
    ctx__cancel_deadline(t, chain);
    if (chain == NULL) {
        ctx_unref(&t->base);
        return;
    }
    ctx__unref_chain(&t->base, chain);
}

/* One round of the timer thread: every shard whose time has come gives up
 * to FIRE_BATCH due timers in one visit; they are fired with the lock
 * released, and their callbacks handed off together.  Returns nonzero while
 * some shard has work left at `now`. */
static int fire_round(ctx_time_t now)
{
    struct ctx__timer *batch[FIRE_BATCH];
    struct ctx__chain chain = { NULL, &chain.head };
    int busy = 0;
    for (int i = 0; i < NSHARDS; i++) {
        struct shard *S = &T.shard[i];
        if (atomic_load_explicit(&S->min, memory_order_relaxed) > now)
            continue;
        int more;
        ctx__lock(&S->mu);
        size_t k = take_due(S, now, batch, FIRE_BATCH, DRAIN_BUDGET, &more);
        ctx__unlock(&S->mu);
        busy |= more;
        for (size_t j = 0; j < k; j++)
            fire(batch[j], &chain);
        ctx__after_defer(&chain);
    }
    return busy;
}

static void *timer_main(void *arg)
{
    (void)arg;
    ctx__thread_name("ctx-timer");
    for (;;) {
        pthread_mutex_lock(&T.mu);
        for (;;) {
            if (T.quit) {
                /* ctx_shutdown: end unless a deadline came meanwhile.  The
                 * next deadline starts a new thread (started is 0). */
                int64_t q;
                earliest_shard(&q);
                T.quit = 0;
                if (q == INT64_MAX ||
                    atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed)) {
                    atomic_store_explicit(&T.started, 0, memory_order_relaxed);
                    T.wake = INT64_MAX;
                    pthread_mutex_unlock(&T.mu);
                    return NULL;
                }
            }
            if (atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed)) {
                T.wake = INT64_MAX;
                pthread_cond_wait(&T.cv, &T.mu);
                continue;
            }
            int64_t m;
            earliest_shard(&m);
            ctx_time_t now = ctx__real_now();
            if (m <= now)
                break;
            T.wake = m;
            /* While deadline callbacks wait for a worker, look at them
             * every millisecond (after.c explains why). */
            if (ctx__after_watch(now) && m > now + CTX_MILLISECOND)
                m = now + CTX_MILLISECOND;
            if (m == INT64_MAX) {
                pthread_cond_wait(&T.cv, &T.mu);
            } else {
                struct timespec ts = ctx__timespec(m);
                pthread_cond_timedwait(&T.cv, &T.mu, &ts);
            }
        }
        T.wake = INT64_MIN; /* awake: inserts need not signal */
        pthread_mutex_unlock(&T.mu);

        pthread_mutex_lock(&T.fire);
        while (!atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed) &&
               fire_round(ctx__real_now()))
            ;
        pthread_mutex_unlock(&T.fire);
    }
    return NULL;
}

int ctx__timer_quit(void)
{
    if (!atomic_load_explicit(&T.ready, memory_order_acquire))
        return 0; /* no deadline was ever made: no thread */
    /* A shard's published time is a lower bound (a removal leaves it
     * early): make it exact, so that shards without entries say so. */
    for (int k = 0; k < NSHARDS; k++) {
        struct shard *S = &T.shard[k];
        ctx__lock(&S->mu);
        publish_min(S, shard_min(S));
        ctx__unlock(&S->mu);
    }
    pthread_mutex_lock(&T.mu);
    int64_t m;
    earliest_shard(&m);
    int busy = m != INT64_MAX && !atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed);
    if (!busy && atomic_load_explicit(&T.started, memory_order_relaxed)) {
        T.quit = 1;
        pthread_cond_signal(&T.cv);
    }
    pthread_mutex_unlock(&T.mu);
    return busy ? EBUSY : 0;
}

/* ---------------------------------------------------------------------------
 * The manual clock
 */

/* Re-anchors every shard's wheel at instant `at`: the wheel's window
 * starts at base, and a clock that jumps (the manual clock set to an
 * instant of the test's choosing, or the real clock back in force) would
 * otherwise put every new deadline before base, into the sorted due list.
 * Takes every entry out and places it again: O(entries), on a clock switch
 * only.  Under T.fire, so no drain runs meanwhile. */
static void rebase(ctx_time_t at)
{
    for (int k = 0; k < NSHARDS; k++) {
        struct shard *S = &T.shard[k];
        ctx__lock(&S->mu);
        struct ctx__link *all = NULL;
        struct ctx__timer *t;
        while ((t = due_first(S)) != NULL) {
            unplace(S, t);
            t->wheel.next = all;
            all = &t->wheel;
        }
        for (unsigned i = 0; i < NEAR; i++)
            while (S->near[i] != NULL) {
                t = wheel_timer(S->near[i]);
                unplace(S, t);
                t->wheel.next = all;
                all = &t->wheel;
            }
        for (unsigned L = 1; L < NLEVELS; L++)
            for (unsigned i = 0; i < NSLOTS; i++)
                while (S->far[L][i] != NULL) {
                    t = wheel_timer(S->far[L][i]);
                    unplace(S, t);
                    t->wheel.next = all;
                    all = &t->wheel;
                }
        S->base = gran(at);
        while (all != NULL) {
            t = wheel_timer(all);
            all = all->next;
            place(S, t);
        }
        publish_min(S, shard_min(S));
        ctx__unlock(&S->mu);
    }
}

int ctx_clock_manual(ctx_time_t start)
{
    init();
    pthread_mutex_lock(&T.fire);
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&ctx__clock.mnow, start, memory_order_relaxed);
    atomic_store_explicit(&ctx__clock.manual, 1, memory_order_relaxed);
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
    rebase(start);
    pthread_mutex_unlock(&T.fire);
    return 0;
}

void ctx_clock_real(void)
{
    init();
    pthread_mutex_lock(&T.fire);
    rebase(ctx__real_now());
    pthread_mutex_unlock(&T.fire);
    pthread_mutex_lock(&T.mu);
    atomic_store_explicit(&ctx__clock.manual, 0, memory_order_relaxed);
    int64_t m;
    earliest_shard(&m);
    if (m != INT64_MAX)
        start_thread_locked();
    pthread_cond_broadcast(&T.cv);
    pthread_mutex_unlock(&T.mu);
}

int ctx_clock_advance(ctx_duration_t d)
{
    if (d < 0)
        return EINVAL;
    if (!ctx__clock_is_manual())
        return EPERM;
    pthread_mutex_lock(&T.fire);
    ctx_time_t target = ctx__add_sat(ctx_now(), d);
    struct ctx__timer *t;
    while (pop_due(target, &t)) {
        if (t == NULL)
            continue;
        if (t->deadline > atomic_load_explicit(&ctx__clock.mnow, memory_order_relaxed))
            atomic_store_explicit(&ctx__clock.mnow, t->deadline, memory_order_relaxed);
        fire(t, NULL); /* in order, callbacks included, before we return */
    }
    atomic_store_explicit(&ctx__clock.mnow, target, memory_order_relaxed);
    pthread_mutex_unlock(&T.fire);
    return 0;
}

/* ---------------------------------------------------------------------------
 * fork(2), registered with fork.c: prepare_fire (early), (all lock holders
 * drain), prepare; then parent or child, then *_fire.  The
 * child gets a copy of the shards but not the timer thread; it restarts the
 * thread if it has deadlines.
 */

static void atfork_prepare_fire(void)
{
    pthread_mutex_lock(&T.fire); /* the timer thread finishes what it fires */
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&T.mu);
    for (int i = 0; i < NSHARDS; i++)
        ctx__lock_raw(&T.shard[i].mu);
}

static void atfork_parent(void)
{
    for (int i = NSHARDS - 1; i >= 0; i--)
        ctx__unlock_raw(&T.shard[i].mu);
    pthread_mutex_unlock(&T.mu);
}

static void atfork_parent_fire(void)
{
    pthread_mutex_unlock(&T.fire);
}

static void atfork_child(void)
{
    for (int i = NSHARDS - 1; i >= 0; i--)
        ctx__unlock_raw(&T.shard[i].mu);
    if (atomic_load_explicit(&T.ready, memory_order_acquire)) {
        pthread_condattr_t a;
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_cond_init(&T.cv, &a);
        pthread_condattr_destroy(&a);
    }
    atomic_store_explicit(&T.started, 0, memory_order_relaxed);
    T.wake = INT64_MAX;
    pthread_mutex_unlock(&T.mu);
}

static void atfork_child_fire(void)
{
    /* Not an unlock: a recursive mutex belongs to the thread that locked
     * it, and in the child that thread has another id (the unlock would
     * fail with EPERM and leave it held). */
    init_fire();
}

CTX__FORK_HOOKS(fire_hooks, .rank = CTX__FORK_RANK_TIMER_FIRE, .early = 1,
                .prepare = atfork_prepare_fire, .parent = atfork_parent_fire,
                .child = atfork_child_fire)
CTX__FORK_HOOKS(time_hooks, .rank = CTX__FORK_RANK_TIME, .prepare = atfork_prepare,
                .parent = atfork_parent, .child = atfork_child)

/* A forked child has no timer thread, and may not start one in its fork
 * handler: POSIX allows only async-signal-safe calls there, and sanitizer
 * runtimes do strand a thread made at that point.  So the child starts it
 * here, from the first call that waits or makes a deadline (T.started is 0
 * in the child while deadlines are pending).  The signal thread (signal.c)
 * is restarted from here too, for the same reasons. */
void ctx__timer_restart(void)
{
    ctx__signal_restart();
    if (atomic_load_explicit(&T.started, memory_order_relaxed) ||
        !atomic_load_explicit(&T.ready, memory_order_acquire))
        return;
    int64_t m;
    earliest_shard(&m);
    if (m != INT64_MAX)
        ensure_thread();
    else
        ctx__after_watch(ctx__real_now()); /* queued callbacks get a worker */
}

/* ---------------------------------------------------------------------------
 * For deadline.c
 */

/* Makes a deadline node (deadline.c has the contract); now is a reading of
 * ctx_now() when the caller has one, else CTX__NOT_READ.  The whole of a
 * creation is here, the set-up and the insert inline, so that a timeout
 * costs one call into this file where it cost three. */
ctx_t *ctx__timer_new(ctx_t *parent, ctx_time_t d, ctx_time_t now, int cause, const char *text,
                      ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL) {
        errno = EINVAL;
        return NULL;
    }
    /* The parent's deadline, as ctx_deadline() finds it. */
    struct ctx__timer *src = ctx__dlsrc(parent);
    if (src != NULL && src->deadline <= d)
        return ctx_with_cancel(parent, cancel); /* the parent's comes first */

    if (now == CTX__NOT_READ)
        now = ctx__now();
    int past = d <= now;
    init();
    /* The thread is started before the node is allocated, so that a failed
     * start frees nothing. */
    if (!past) {
        int e = ensure_thread();
        if (CTX__UNLIKELY(e != 0)) {
            errno = e;
            return NULL;
        }
    }
    struct ctx__timer *t;
    if ((cancel != NULL && ctx__handle_reserve() != 0) ||
        (t = ctx__node_alloc(sizeof *t)) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    t->deadline = d;
    t->wheel.next = NULL;
    t->wheel.pprev = NULL;
    t->level = 0;
    t->slot = 0;
    /* The deadline's cause waits in the node's own cause fields until the
     * node is done (see mark() in tree.c). */
    t->base.u.c.cause = cause;
    t->base.u.c.msg = NULL;
    if (text != NULL && (t->base.u.c.msg = ctx__msg_new(text)) == NULL) {
        ctx__node_free(t, sizeof *t);
        errno = ENOMEM;
        return NULL;
    }
    t->shard = (uint8_t)my_shard();
    ctx__init_cancel(&t->base, parent, CTX__TIMER);
    if (past)
        ctx__cancel_deadline(t, NULL);
    else
        timer_insert(t, now);
    if (cancel != NULL)
        *cancel = ctx__handle_bind(&t->base);
    return &t->base;
}
