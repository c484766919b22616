/* SPDX-License-Identifier: MIT */

/*
 * The cancel entry points: ctx_cancel and ctx_cancel_cause, which record
 * no site, and the ctx_cancel_at forms that ctx.h's macros call with the
 * caller's file, line and function.  Every one checks its handle the same
 * way and hands the walk to ctx__cancel (tree.c).
 *
 * A cancel site rides on the cause block (struct ctx__msg) that a cancel
 * already shares with every node it reaches, so it costs the 64-byte node
 * nothing.  A site-only block is static, one per call site, in a table
 * that is filled once and never freed, so ctx_cancel allocates nothing.
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------
 * Cancel sites
 */

/* The site table: open addressing on (file pointer, line), filled lock-free
 * and never emptied, so a cancel through the macros allocates nothing.  A
 * slot's word goes 0 (empty) -> 1 (being written) -> 2 (ready). */
#define SITES      4096
#define SITE_PROBE 32

static _Atomic uint32_t site_state[SITES];
/* Raw storage: a struct with a flexible array member cannot be an array
 * element.  A site-only block has no text, so the header is all it needs. */
static _Alignas(struct ctx__msg) unsigned char site_mem[SITES][sizeof(struct ctx__msg)];

/* The table's lookup, for ctx__msg_site. */
static struct ctx__msg *site_find(const char *file, int line, const char *func)
{
    uint64_t h =
        ((uint64_t)(uintptr_t)file ^ ((uint64_t)(unsigned)line << 40)) * 0x9E3779B97F4A7C15u;
    for (unsigned i = 0; i < SITE_PROBE; i++) {
        size_t k = (size_t)((h >> 40) + i) & (SITES - 1);
        struct ctx__msg *m = (struct ctx__msg *)(void *)site_mem[k];
        /* Acquire (load and failed CAS): pairs with the release store of 2
         * below; the fields were written before it. */
        uint32_t st = atomic_load_explicit(&site_state[k], memory_order_acquire);
        if (st == 0 && atomic_compare_exchange_strong_explicit(
                           &site_state[k], &st, 1, memory_order_acquire, memory_order_acquire)) {
            atomic_init(&m->refs, 1);
            m->has_text = 0;
            m->size = CTX__MSG_STATIC;
            m->file = file;
            m->func = func;
            m->line = line;
            /* Release: pairs with the acquire loads above. */
            atomic_store_explicit(&site_state[k], 2, memory_order_release);
            return m;
        }
        if (st == 2 && m->file == file && m->line == line)
            return m;
        /* 1: another thread is filling this slot for some site; a
         * collision on the same site gives that site a second slot. */
    }
    return NULL;
}

/* The site this thread found last: a thread that cancels at one site in a
 * loop (a server's request handler) finds its block with two compares.
 * Slots are never emptied, so the block stays valid. */
static CTX__TLS struct {
    const char *file;
    int line;
    struct ctx__msg *m;
} last_site;

struct ctx__msg *ctx__msg_site(const char *file, int line, const char *func)
{
    if (last_site.file == file && last_site.line == line && file != NULL)
        return last_site.m;
    struct ctx__msg *m = site_find(file, line, func);
    if (m != NULL) {
        last_site.file = file;
        last_site.line = line;
        last_site.m = m;
    }
    return m;
}

/* ---------------------------------------------------------------------------
 * Handles
 *
 * A handle is a number, not a pointer, and names a generation word of one
 * of two kinds.
 *
 * A slab handle names a 96-byte block of the node slab (alloc.c) by its
 * number, and carries the generation that the word inside the block had
 * when the handle was made.  The block stays a node block forever, so the
 * word can be read after the node is freed, and even once the block holds
 * a new node: a cancel node's handle needs no memory of its own.
 *
 * A cell handle names a cell of a table that grows in chunks and is never
 * freed, and carries the low bits of the cell's generation: for groups,
 * and for nodes whose block came from ctx__alloc (a program's allocator is
 * installed, or the slab is full), whose memory may go back to the program.
 *
 * On 64-bit systems bit 63 is set in both kinds, so that no pointer a
 * program could pass by mistake (a ctx_t *, freed memory) decodes as a
 * handle, and bit 62 tells a slab handle (block number in bits 29-61, 29
 * generation bits; a block number is the chunk's number times 4096 plus the
 * block's place in the chunk) from a cell handle (cell index + 1 in bits 24-49, 24
 * generation bits).  On 32-bit systems bit 31 tells them apart: block
 * number or cell index + 1 in bits 12-30, 12 generation bits, and a cell
 * index + 1 keeps a cell handle from being NULL.
 *
 * A cell's word is the generation times two, plus PINNED while a caller
 * of ctx_cancel holds the object through it; a block's is the generation
 * times four with CTX__SLAB_BOUND while the node has a handle, and no pin
 * (ctx_cancel holds a slab node by the node's own lock: slab_lock below).
 * Pinning a cell is a compare-and-swap from (generation of the handle, not
 * pinned) to pinned; dropping is a compare-and-swap from (generation, not
 * pinned) to the next generation, retried while the word is pinned.  So a
 * pinned object is never dropped, and a dropped one is never pinned
 * again.  A cell's obj is
 * written by the thread that binds it, before the handle exists, and read
 * only by a holder of a pin, whose handle came from that thread.
 *
 * The cell chunks come from the C library's calloc and are never freed
 * (they are reachable from `chunks` for leak checkers).  Free cells wait in
 * a per-thread list (no lock: cancel nodes are made and freed at rates the
 * tree's own fast path sets) and, beyond CACHE_MAX, in a global one; a
 * thread's list goes back to the global one when it exits.
 */

#if UINTPTR_MAX > 0xffffffffu
#define GEN_BITS  24
#define IDX_BITS  26
#define HTAG      ((uintptr_t)1 << 63)
#define STAG      ((uintptr_t)1 << 62)
#define SGEN_BITS 29
#define KIND_BITS 2
#define KIND_MASK (HTAG | STAG)
#define KIND_CELL HTAG
#define KIND_SLAB (HTAG | STAG)
#else
#define GEN_BITS  12
#define IDX_BITS  19
#define HTAG      0
#define STAG      ((uintptr_t)1 << 31)
#define SGEN_BITS 12
#define KIND_BITS 1
#define KIND_MASK STAG
#define KIND_CELL 0
#define KIND_SLAB STAG
#endif
#define GEN_MASK  (((uintptr_t)1 << GEN_BITS) - 1)
#define SGEN_MASK (((uintptr_t)1 << SGEN_BITS) - 1)
#define IDX_MAX   (((uint32_t)1 << IDX_BITS) - 2)
#define CHUNK     1024
#define NCHUNKS   (((size_t)IDX_MAX + CHUNK) / CHUNK)
#define PINNED    1u
#define CACHE_MAX 256

_Static_assert((uint64_t)CTX__SLAB_MAXCH << CTX__SLAB_SHIFT <=
                   ((uint64_t)1 << (sizeof(uintptr_t) * 8 - KIND_BITS - SGEN_BITS)),
               "every block number fits a handle");

struct cell {
    _Atomic uint32_t word; /* generation << 1 | PINNED */
    uint32_t next;         /* free list: index + 1 of the next free cell */
    void *obj;
};

static struct cell *_Atomic chunks[NCHUNKS];
static _Atomic uint32_t ncells; /* cells in published chunks */
static _Atomic uint32_t glock;  /* a futex lock over gfree and growth */
static uint32_t gfree;          /* global free list: index + 1, or 0 */

struct hcache {
    uint32_t head; /* index + 1, or 0 */
    uint32_t n;
    int state; /* 0 new, 1 registered for thread exit, 2 gone */
};
static CTX__TLS struct hcache hc;
static pthread_key_t hc_key;
static pthread_once_t hc_once = PTHREAD_ONCE_INIT;

static struct cell *cell_at(uint32_t i)
{
    /* Acquire: pairs with the release that published the chunk. */
    return &atomic_load_explicit(&chunks[i / CHUNK], memory_order_acquire)[i % CHUNK];
}

/* Gives this thread's free cells back to the global list. */
static void hc_flush(void)
{
    if (hc.head == 0)
        return;
    uint32_t last = hc.head;
    while (cell_at(last - 1)->next != 0)
        last = cell_at(last - 1)->next;
    ctx__lock(&glock);
    cell_at(last - 1)->next = gfree;
    gfree = hc.head;
    ctx__unlock(&glock);
    hc.head = 0;
    hc.n = 0;
}

static void hc_gone(void *arg)
{
    (void)arg;
    hc_flush();
    hc.state = 2; /* cells this thread drops from now on go to the global list */
}

static void hc_make_key(void)
{
    pthread_key_create(&hc_key, hc_gone);
}

/* Fills this thread's list: half a cache from the global list, or a new
 * chunk.  Returns 0 or ENOMEM. */
static int hc_refill(void)
{
    int e = 0;
    if (hc.state == 0) {
        /* The cells go back when the thread exits, also those it only
         * reserved (a thread whose nodes all have slab handles never drops
         * a cell). */
        pthread_once(&hc_once, hc_make_key);
        pthread_setspecific(hc_key, &hc);
        hc.state = 1;
    }
    ctx__lock(&glock);
    if (gfree != 0) {
        for (unsigned k = 0; k < CACHE_MAX / 2 && gfree != 0; k++) {
            uint32_t i = gfree;
            struct cell *c = cell_at(i - 1);
            gfree = c->next;
            c->next = hc.head;
            hc.head = i;
            hc.n++;
        }
    } else {
        uint32_t base = atomic_load_explicit(&ncells, memory_order_relaxed);
        /* From the C library, not ctx__alloc: like the site table, the
         * cells live as long as the process, whatever allocator a program
         * installs and removes meanwhile. */
        struct cell *ch = base <= IDX_MAX ? calloc(CHUNK, sizeof *ch) : NULL;
        if (ch == NULL) {
            e = ENOMEM;
        } else {
            /* The last chunk may be only partly usable. */
            uint32_t u = IDX_MAX + 1 - base < CHUNK ? IDX_MAX + 1 - base : CHUNK;
            for (uint32_t k = 0; k < CHUNK; k++) {
                /* Generation 1: a handle's low bits are never all zero. */
                atomic_init(&ch[k].word, 2u);
                ch[k].obj = NULL;
                ch[k].next = k + 1 < u ? base + k + 2 : 0;
            }
            ch[u - 1].next = hc.head;
            /* Release: pairs with the acquire in cell_at and decode. */
            atomic_store_explicit(&chunks[base / CHUNK], ch, memory_order_release);
            atomic_store_explicit(&ncells, base + CHUNK, memory_order_release);
            hc.head = base + 1;
            hc.n += u;
        }
    }
    ctx__unlock(&glock);
    return e;
}

size_t ctx__handle_cells(void)
{
    return atomic_load_explicit(&ncells, memory_order_relaxed);
}

int ctx__handle_reserve(void)
{
    return hc.head != 0 ? 0 : hc_refill();
}

/* Takes a cell from this thread's list, which ctx__handle_reserve filled. */
static void *bind_obj(void *obj, uint32_t *idx)
{
    uint32_t i = hc.head;
    struct cell *c = cell_at(i - 1);
    hc.head = c->next;
    hc.n--;
    c->obj = obj;
    *idx = i;
    uintptr_t gen = (atomic_load_explicit(&c->word, memory_order_relaxed) >> 1) & GEN_MASK;
    return (void *)(KIND_CELL | ((uintptr_t)i << GEN_BITS) | gen);
}

ctx_cancel_t *ctx__handle_bind(struct ctx *n)
{
    _Atomic uint32_t *w = ctx__hword(n);
    uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
    if (!(v & CTX__SLAB_WORD)) {
        uint32_t i;
        void *h = bind_obj(n, &i);
        atomic_store_explicit(w, i, memory_order_relaxed);
        return h;
    }
    /* Nobody else writes an unbound block's word: a stale or forged pin
     * gives up on seeing CTX__SLAB_BOUND clear.  Relaxed: the handle
     * reaches other threads through the program's own synchronisation. */
    atomic_store_explicit(w, v | CTX__SLAB_BOUND, memory_order_relaxed);
    uintptr_t base = (uintptr_t)n & ~(CTX__SLAB_CHUNK - 1);
    uintptr_t i = (uintptr_t) * (const uint32_t *)base << CTX__SLAB_SHIFT |
                  ((uintptr_t)n - base - CTX__SLAB_HEAD) / CTX__SLAB_BLOCK;
    return (void *)(KIND_SLAB | (i << SGEN_BITS) | ((v >> 2) & SGEN_MASK));
}

void *ctx__handle_new(void *obj, uint32_t *idx)
{
    if (ctx__handle_reserve() != 0)
        return NULL;
    return bind_obj(obj, idx);
}

void ctx__misuse(const char *msg)
{
    fprintf(stderr, "libctx: misuse: %s\n", msg);
    abort();
}

/* The cell of cell handle h and its generation; aborts for a value that is
 * no handle.  These checks stay in release builds: a compare each. */
static struct cell *decode(const void *h, uint32_t *gen, const char *what)
{
    uintptr_t v = (uintptr_t)h;
    uint32_t i = (uint32_t)((v & ~KIND_MASK) >> GEN_BITS);
    if ((v & KIND_MASK) != KIND_CELL || i == 0 ||
        i > atomic_load_explicit(&ncells, memory_order_acquire) || i > IDX_MAX + 1u)
        ctx__misuse(what);
    *gen = (uint32_t)(v & GEN_MASK);
    return cell_at(i - 1);
}

/* The word of slab handle h; aborts for a block number beyond the slab.
 * Inlined into the pin and the unpin by force: a call here costs as much
 * as the decoding, which is two compares, shifts and masks. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((always_inline))
#endif
static inline _Atomic uint32_t *
slab_word(uintptr_t v, const char *what)
{
    uintptr_t i = (v & ~KIND_MASK) >> SGEN_BITS;
    uintptr_t c = i >> CTX__SLAB_SHIFT, k = i & (((uintptr_t)1 << CTX__SLAB_SHIFT) - 1);
    /* Acquire: pairs with the release that published the chunk's number
     * after its address. */
    if (c >= atomic_load_explicit(&ctx__slab_nchunks, memory_order_acquire) || k >= CTX__SLAB_PER)
        ctx__misuse(what);
    unsigned char *b = atomic_load_explicit(&ctx__slab_chunks[c], memory_order_relaxed) +
                       CTX__SLAB_HEAD + k * CTX__SLAB_BLOCK;
    return ctx__hword(b);
}

/* Whether block word w is the live, bound generation of handle value v. */
static inline int slab_live(uint32_t w, uintptr_t v)
{
    return ((w >> 2) & SGEN_MASK) == (v & SGEN_MASK) && (w & CTX__SLAB_BOUND);
}

/* The node of slab handle v with its lock held, or NULL when the handle is
 * stale.  The node's lock is the pin: the block stays a node block forever,
 * so a stale handle may take the lock of whatever the block holds now, and
 * lets go as soon as it sees the generation moved on.  The free bumps the
 * generation and then waits for the lock (tree.c); the lock is taken
 * before the generation is checked; all four sequentially consistent, so
 * either this sees the new generation or the free sees the lock held. */
static struct ctx *slab_lock(uintptr_t v, const char *what)
{
    _Atomic uint32_t *w = slab_word(v, what);
    /* Acquire: pairs with the release in ctx__slab_retire, so that a
     * cancel that finds the handle retired by an earlier one returns
     * seeing the context and its subtree done. */
    if (!slab_live(atomic_load_explicit(w, memory_order_acquire), v))
        return NULL; /* stale, without touching the block's lock */
    struct ctx *n = &CTX__CONTAINER(w, struct ctx__hnode, handle)->base;
    ctx__lock_sc(&n->lock);
    if (!slab_live(atomic_load_explicit(w, memory_order_seq_cst), v)) {
        ctx__unlock(&n->lock);
        return NULL;
    }
    return n;
}

/* Cell handles only: a slab handle's node is pinned by its lock
 * (slab_lock). */
void *ctx__handle_pin(const void *h, const char *what)
{
    uint32_t gen;
    struct cell *c = decode(h, &gen, what);
    uint32_t w = atomic_load_explicit(&c->word, memory_order_relaxed);
    for (;;) {
        if (((w >> 1) & GEN_MASK) != gen)
            return NULL; /* stale: the object was dropped */
        if (w & PINNED) {
            sched_yield();
            w = atomic_load_explicit(&c->word, memory_order_relaxed);
            continue;
        }
        /* Acquire: pairs with the release in ctx__handle_unpin of an
         * earlier pin (and orders our reads of obj after the check). */
        if (atomic_compare_exchange_weak_explicit(&c->word, &w, w | PINNED, memory_order_acquire,
                                                  memory_order_relaxed))
            break;
    }
    if (c->obj == NULL) {
        /* A free cell: only a forged handle gets here. */
        atomic_fetch_and_explicit(&c->word, ~PINNED, memory_order_release);
        return NULL;
    }
    return c->obj;
}

void ctx__handle_unpin(const void *h)
{
    static const char what[] = "ctx_cancel: not a cancel handle";
    uint32_t gen;
    _Atomic uint32_t *w = &decode(h, &gen, what)->word; /* a cell: ctx__handle_pin */
    /* A plain store, not a read-modify-write: while the word is pinned
     * nobody else changes it (other pinners and the drop wait), so it is
     * ours to put back.  Release: what the canceller did to the object
     * happens before the drop that waited for this. */
    uint32_t x = atomic_load_explicit(w, memory_order_relaxed);
    atomic_store_explicit(w, x & ~PINNED, memory_order_release);
}

void *ctx__handle_peek(const void *h, const char *what)
{
    /* Acquire (both kinds): pairs with the release of the drop, so a stale
     * handle is seen as one by a thread that synchronised with the drop. */
    if (((uintptr_t)h & KIND_MASK) == KIND_SLAB) {
        _Atomic uint32_t *w = slab_word((uintptr_t)h, what);
        uint32_t x = atomic_load_explicit(w, memory_order_acquire);
        return slab_live(x, (uintptr_t)h) ? CTX__CONTAINER(w, struct ctx__hnode, handle) : NULL;
    }
    uint32_t gen;
    struct cell *c = decode(h, &gen, what);
    uint32_t w = atomic_load_explicit(&c->word, memory_order_acquire);
    return ((w >> 1) & GEN_MASK) == gen ? c->obj : NULL;
}

void ctx__handle_drop(uint32_t i)
{
    struct cell *c = cell_at(i - 1);
    uint32_t w = atomic_load_explicit(&c->word, memory_order_relaxed) & ~PINNED;
    /* acq_rel: acquire pairs with the unpin's release; release pairs with
     * peek's acquire. */
    while (!atomic_compare_exchange_weak_explicit(&c->word, &w, w + 2, memory_order_acq_rel,
                                                  memory_order_relaxed)) {
        if (w & PINNED) {
            /* A canceller holds the object through this cell until its
             * walk has left it: no longer than a cancellation. */
            sched_yield();
            w &= ~PINNED;
        }
    }
    c->obj = NULL;
    if (hc.state == 2 || hc.n >= CACHE_MAX) {
        ctx__lock(&glock);
        c->next = gfree;
        gfree = i;
        ctx__unlock(&glock);
        return;
    }
    if (hc.state == 0) {
        pthread_once(&hc_once, hc_make_key);
        pthread_setspecific(hc_key, &hc);
        hc.state = 1;
    }
    c->next = hc.head;
    hc.head = i;
    hc.n++;
}

void ctx__slab_drop(_Atomic uint32_t *w)
{
    uint32_t x = atomic_load_explicit(w, memory_order_relaxed);
    for (;;) {
        /* The next generation, unbound. */
        uint32_t next = CTX__SLAB_WORD | (((x >> 2) + 1) & CTX__SLAB_GEN) << 2;
        /* acq_rel, as for a cell; sequentially consistent besides, for
         * the free's look at the node's lock that follows (slab_lock).
         * Retried after a weak failure, or after a ctx__slab_retire that
         * stored its next word first (this moves on from that one). */
        if (atomic_compare_exchange_weak_explicit(w, &x, next, memory_order_seq_cst,
                                                  memory_order_relaxed))
            return;
    }
}

void ctx__slab_retire(struct ctx *n)
{
    _Atomic uint32_t *w = ctx__hword(n);
    uint32_t x = atomic_load_explicit(w, memory_order_relaxed);
    if ((x & (CTX__SLAB_WORD | CTX__SLAB_BOUND)) != (CTX__SLAB_WORD | CTX__SLAB_BOUND))
        return;
    /* A store: under n's lock, with n's handle live, the only other writer
     * is the free's ctx__slab_drop, which computes the same next word from
     * the same generation (or moves on from ours) and then waits for the
     * lock we hold.  Release: pairs with the acquire loads of slab_lock and
     * ctx__handle_drop_node. */
    atomic_store_explicit(w, CTX__SLAB_WORD | (((x >> 2) + 1) & CTX__SLAB_GEN) << 2,
                          memory_order_release);
}

void ctx__handle_drop_node(struct ctx *n)
{
    _Atomic uint32_t *w = ctx__hword(n);
    /* Acquire: pairs with the release in ctx__slab_retire, after which
     * the canceller that retired the handle may still hold n's lock; the
     * look at the lock below must see that. */
    uint32_t v = atomic_load_explicit(w, memory_order_acquire);
    if (v & CTX__SLAB_WORD) {
        /* A handle that a ctx_cancel retired is stale already: no bump. */
        if (v & CTX__SLAB_BOUND)
            ctx__slab_drop(w);
        /* A ctx_cancel through a slab handle holds n by its lock, taken
         * before it checked the generation that the drop has just bumped
         * (both sequentially consistent, slab_lock): wait until it lets
         * go.  It may also be a stale handle's, which lets go at once, or
         * the one that retired the handle, which is leaving. */
        if (atomic_load_explicit(&n->lock, memory_order_seq_cst) != 0) {
            ctx__lock(&n->lock);
            ctx__unlock(&n->lock);
        }
    } else if (v != 0) {
        ctx__handle_drop(v);
        atomic_store_explicit(w, 0, memory_order_relaxed);
    }
}

/* The one path every entry point takes.  file is NULL for the forms that
 * record no site.  A text gets a fresh block that carries the site too;
 * without a text, or without memory for its copy, the cause keeps its code
 * and the static site-only block (or nothing) stands in for the message.
 * A handle whose context was freed is a no-op, as calling Go's cancel
 * function after the context is gone is. */
static void cancel_handle(ctx_cancel_t *cancel, int cause, const char *text, const char *file,
                          int line, const char *func)
{
    if (cancel == NULL)
        return;
    struct ctx__msg *m = text != NULL ? ctx__msg_new(text) : NULL;
    if (m != NULL) {
        m->file = file; /* a fresh block: nobody else sees it yet */
        m->func = func;
        m->line = line;
    } else if (file != NULL) {
        m = ctx__msg_site(file, line, func);
    }
    /* The message is made before the pin, so that a pin lasts no longer
     * than the cancellation walk. */
    static const char what[] = "ctx_cancel: not a cancel handle";
    if (((uintptr_t)cancel & KIND_MASK) == KIND_SLAB) {
        struct ctx *n = slab_lock((uintptr_t)cancel, what);
        if (n != NULL && !ctx__cancel_leaf_locked(n, cause, m))
            ctx__cancel_locked(n, cause, m);
    } else {
        struct ctx *n = ctx__handle_pin(cancel, what);
        if (n != NULL)
            ctx__cancel_pinned(n, cause, m, cancel);
    }
    ctx__msg_unref(m);
}
/* The parentheses keep ctx.h's call-site macros from expanding here: these
 * are the exported functions that record no site. */
void(ctx_cancel)(ctx_cancel_t *cancel)
{
    cancel_handle(cancel, 0, NULL, NULL, 0, NULL);
}

void(ctx_cancel_cause)(ctx_cancel_t *cancel, int cause, const char *text)
{
    cancel_handle(cancel, cause, text, NULL, 0, NULL);
}

void ctx_cancel_at(ctx_cancel_t *cancel, const char *file, int line, const char *func)
{
    cancel_handle(cancel, 0, NULL, file, line, func);
}

void ctx_cancel_cause_at(ctx_cancel_t *cancel, int cause, const char *text, const char *file,
                         int line, const char *func)
{
    cancel_handle(cancel, cause, text, file, line, func);
}
