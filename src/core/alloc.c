/* SPDX-License-Identifier: MIT */

/*
 * The allocator hook.  Every allocation the library makes goes through
 * ctx__alloc/ctx__free, so a program can route them to its own allocator and
 * the test suite can fail the Nth allocation.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

typedef void *(*malloc_fn_t)(size_t);
typedef void (*free_fn_t)(void *);

/* Relaxed is enough: the contract asks programs to install an allocator
 * before they create contexts, and the thread creation that follows orders
 * it for other threads. */
static _Atomic(malloc_fn_t) malloc_fn = malloc;
static _Atomic(free_fn_t) free_fn = free;

/* Whether freed nodes may be kept in per-thread caches: only with the
 * default allocator, so that a program's own allocator sees every node
 * allocation and free (and tests can fail any of them). */
_Atomic int ctx__caching = 1;

int ctx_replace_allocator(void *(*m)(size_t size), void (*f)(void *ptr))
{
    if (m == NULL || f == NULL)
        return EINVAL;
    atomic_store_explicit(&ctx__caching, 0, memory_order_relaxed);
    atomic_store_explicit(&malloc_fn, m, memory_order_relaxed);
    atomic_store_explicit(&free_fn, f, memory_order_relaxed);
    return 0;
}

void ctx_reset_allocator(void)
{
    atomic_store_explicit(&malloc_fn, malloc, memory_order_relaxed);
    atomic_store_explicit(&free_fn, free, memory_order_relaxed);
    atomic_store_explicit(&ctx__caching, 1, memory_order_relaxed);
}

void *ctx__alloc(size_t size)
{
    return atomic_load_explicit(&malloc_fn, memory_order_relaxed)(size);
}

void ctx__free(void *p)
{
    if (p != NULL)
        atomic_load_explicit(&free_fn, memory_order_relaxed)(p);
}

/* ---------------------------------------------------------------------------
 * Node blocks.
 *
 * Every node is a 64-byte block or a handle block (96 bytes; 64 on i386,
 * where every node fits in 64), by its size: up to sizeof(struct ctx), or
 * more.
 *
 * A 64-byte block comes from ctx__alloc.  A thread keeps some freed blocks
 * and hands them out again, which turns a malloc/free pair into a few loads
 * and stores: building and freeing a tree allocates and frees little else.
 * The cache is emptied when its thread exits and, for the thread that calls
 * exit(), by a destructor.  Under AddressSanitizer and ThreadSanitizer it is
 * compiled out, so every such node is a fresh allocation they can track.
 *
 * A handle block (a node with a cancel handle's word: timers, cancel nodes
 * made with a handle, custom nodes) comes from the slab, with the default
 * allocator: chunks of 256 KiB, aligned to their size, taken from the
 * system in bulk (mmap; the C library's aligned_alloc under sanitizers, so
 * that leak checkers scan them) and never given back, each a 64-byte
 * header and 2730 blocks of 96 bytes (4095 of 64) with no per-block
 * header.  A block stays a handle block for the life of the process, which is what lets a cancel
 * handle name it by number and check the generation word inside it after
 * the node is freed (core/cancel.c).  Free blocks wait in a per-thread list
 * (at most CTX__SLAB_CACHE) and beyond that in a global one under a lock; a
 * thread's list goes back to the global one when the thread exits.  So the
 * slab keeps its peak: after a burst of N live handle blocks it holds about
 * N blocks (rounded up to the chunk being carved) for later nodes,
 * whichever thread makes them.  A chunk's blocks are carved a batch at a
 * time, so pages that never held a node are never touched, except that
 * past the first 16 chunks the chunk being carved is filled 64 KiB at a
 * time ahead of its blocks (prefault).  Under
 * AddressSanitizer a free block is poisoned except for its list link and its
 * generation word, so a use after free is still reported.
 *
 * With a program's allocator installed (ctx_replace_allocator), handle
 * blocks come from it like everything else and their handles use cells; a
 * block's handle word tells the free which way it came.
 */

#if defined(__SANITIZE_ADDRESS__)
#define CTX__ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CTX__ASAN 1
#endif
#endif
#ifdef CTX__ASAN
#include <sanitizer/asan_interface.h>
/* A free slab block: all but the list link (the first pointer), the lock
 * word that a stale ctx_cancel may take (with the rest of its 8-byte
 * granule, the count) and the handle word (with the rest of its granule). */
static void poison_free(void *p)
{
    size_t h = offsetof(struct ctx__hnode, handle);
    size_t l = offsetof(struct ctx, lock) & ~(size_t)7;
    ASAN_POISON_MEMORY_REGION((char *)p + 8, l - 8);
    ASAN_POISON_MEMORY_REGION((char *)p + l + 8, h - l - 8);
    ASAN_POISON_MEMORY_REGION((char *)p + h + 8, CTX__SLAB_BLOCK - h - 8);
}
#define poison_used(p) ASAN_UNPOISON_MEMORY_REGION((p), CTX__SLAB_BLOCK)
#else
#define poison_free(p) ((void)(p))
#define poison_used(p) ((void)(p))
#endif

#if !CTX__SANITIZED
#include <sys/mman.h>
#ifndef MAP_ANONYMOUS
#define MAP_ANONYMOUS MAP_ANON
#endif
#endif

CTX__ALIGN_CHECK(sizeof(struct ctx__timer) <= CTX__SLAB_BLOCK);
CTX__ALIGN_CHECK(sizeof(struct ctx__custom) <= CTX__SLAB_BLOCK);
CTX__ALIGN_CHECK(CTX__SLAB_HEAD + CTX__SLAB_PER * CTX__SLAB_BLOCK == CTX__SLAB_CHUNK);
CTX__ALIGN_CHECK(offsetof(struct ctx__hnode, handle) >= 8);
CTX__ALIGN_CHECK((offsetof(struct ctx, lock) & ~(size_t)7) >= 8);
CTX__ALIGN_CHECK((offsetof(struct ctx, lock) & ~(size_t)7) + 8 <=
                 offsetof(struct ctx__hnode, handle));

/* This thread's free blocks (struct ctx__cache in internal.h): at most
 * CTX__CACHE_MAX (2048) blocks of 64 bytes (128 KiB), enough to absorb
 * building and freeing a tree of a few thousand contexts, which otherwise
 * pays glibc's free-list consolidation for every node; and CTX__SLAB_CACHE
 * (512) free slab blocks (48 KiB), half of which go back to the global
 * list when it is full.  The fast paths of ctx__node_alloc and
 * ctx__node_free are inline in their callers (internal.h); the rest is
 * here. */
CTX__TLS struct ctx__cache ctx__tc;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

/* The slab (internal.h).  Under slab_lock: the global free list, the chunk
 * being carved and how many of its blocks are handed out, the region that
 * chunks are cut from. */
unsigned char *_Atomic ctx__slab_chunks[CTX__SLAB_MAXCH];
_Atomic uint32_t ctx__slab_nchunks;
static _Atomic uint32_t slab_lock;
static void *slab_free;
static size_t slab_nfree;
static unsigned char *carve;
static uint32_t carved = CTX__SLAB_PER;
static size_t populated; /* bytes of the chunk being carved made resident (prefault) */
#if !CTX__SANITIZED
static unsigned char *region, *region_end;
#define REGION (16 * CTX__SLAB_CHUNK)
#ifdef MADV_POPULATE_WRITE
/* The kernel has no MADV_POPULATE_WRITE.  Relaxed loads and stores: a
 * hint, and a thread that reads it late makes one more madvise, which
 * fails as the first did. */
static atomic_int populate_off;
#define POPULATE_STEP ((size_t)64 << 10)
#endif
#endif

/* A new chunk, aligned to its size, or NULL.  Under slab_lock. */
static unsigned char *chunk_new(void)
{
#if CTX__SANITIZED
    return aligned_alloc(CTX__SLAB_CHUNK, CTX__SLAB_CHUNK);
#else
    if (region == region_end) {
        /* 16 chunks at a time, aligned by trimming the mapping.  Only the
         * pages that blocks are carved from become resident (and, past
         * the first region, up to 64 KiB ahead of them: prefault()). */
        size_t len = REGION + CTX__SLAB_CHUNK;
        void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            return NULL;
        uintptr_t a = ((uintptr_t)m + CTX__SLAB_CHUNK - 1) & ~(CTX__SLAB_CHUNK - 1);
        uintptr_t end = (uintptr_t)m + len;
        if (a > (uintptr_t)m)
            munmap(m, a - (uintptr_t)m);
        if (end > a + REGION)
            munmap((void *)(a + REGION), end - (a + REGION));
        region = (unsigned char *)a;
        region_end = region + REGION;
    }
    unsigned char *c = region;
    region += CTX__SLAB_CHUNK;
    return c;
#endif
}

/* The pages of the chunk being carved to make resident ahead of the blocks
 * about to be carved (up to byte end of the chunk), POPULATE_STEP (16
 * pages) at a time, once the slab has outgrown its first region: a
 * process that keeps tens of thousands of such nodes is about to touch
 * every page, and one madvise that fills 16 pages costs less than 16 page
 * faults (on the 2-CPU virtual machine this was measured on, a first
 * touch costs 1.4-2 us a page, and a million timeouts fault in 23,000).
 * At most POPULATE_STEP is resident ahead of the blocks carved, and the
 * first region keeps to the pages its blocks touch.  Under slab_lock:
 * sets *len to the bytes from the returned address to fill (0: none),
 * which the caller fills with populate() once it has let the lock go, so
 * that other threads' refills do not wait for the kernel. */
static unsigned char *prefault(size_t end, size_t *len)
{
    *len = 0;
#if !CTX__SANITIZED && defined(MADV_POPULATE_WRITE)
    if (atomic_load_explicit(&populate_off, memory_order_relaxed) || end <= populated ||
        atomic_load_explicit(&ctx__slab_nchunks, memory_order_relaxed) <= 16)
        return NULL;
    size_t to = (end + POPULATE_STEP - 1) & ~(POPULATE_STEP - 1);
    if (to > CTX__SLAB_CHUNK)
        to = CTX__SLAB_CHUNK;
    unsigned char *from = carve + populated;
    *len = to - populated;
    populated = to;
    return from;
#else
    (void)end;
    return NULL;
#endif
}

/* Fills what prefault() chose; no lock held.  A chunk is never unmapped,
 * so the range stays valid whatever the slab does meanwhile. */
static void populate(unsigned char *from, size_t len)
{
#if !CTX__SANITIZED && defined(MADV_POPULATE_WRITE)
    if (len == 0)
        return;
    /* Advice: where it fails, the blocks' first touch faults as before.
     * EINVAL: a kernel older than 5.14, which has no such advice.  The
     * caller's errno is kept: the call that got here is succeeding. */
    int saved = errno;
    if (madvise(from, len, MADV_POPULATE_WRITE) != 0 && errno == EINVAL)
        atomic_store_explicit(&populate_off, 1, memory_order_relaxed);
    errno = saved;
#else
    (void)from;
    (void)len;
#endif
}

static void register_thread(void);

/* Moves k blocks of this thread's slab list to the global list. */
static void slab_give(unsigned k)
{
    if (k == 0 || ctx__tc.head[1] == NULL)
        return;
    void *first = ctx__tc.head[1], *last = first;
    unsigned m = 1;
    while (m < k && *(void **)last != NULL) {
        last = *(void **)last;
        m++;
    }
    ctx__tc.head[1] = *(void **)last;
    ctx__tc.n[1] -= m;
    ctx__lock(&slab_lock);
    *(void **)last = slab_free;
    slab_free = first;
    slab_nfree += m;
    ctx__unlock(&slab_lock);
}

/* Fills this thread's empty slab list: half a cache from the global list,
 * or blocks carved from the newest chunk (a new one when it is used up).
 * False when the slab can grow no more. */
static bool slab_refill(void)
{
    unsigned k = 0;
    unsigned char *base = NULL; /* the chunk of the blocks carved here */
    uint32_t first = 0;         /* the first of them */
    unsigned char *fill = NULL;
    size_t fill_len = 0;
    ctx__lock(&slab_lock);
    while (k < CTX__SLAB_CACHE / 2 && slab_free != NULL) {
        void *b = slab_free;
        slab_free = *(void **)b;
        *(void **)b = ctx__tc.head[1];
        ctx__tc.head[1] = b;
        k++;
    }
    slab_nfree -= k;
    if (k == 0) {
        if (carved == CTX__SLAB_PER) {
            uint32_t n = atomic_load_explicit(&ctx__slab_nchunks, memory_order_relaxed);
            unsigned char *c = n < CTX__SLAB_MAXCH ? chunk_new() : NULL;
            if (c != NULL) {
                *(uint32_t *)(void *)c = n; /* for ctx__handle_bind */
                atomic_store_explicit(&ctx__slab_chunks[n], c, memory_order_relaxed);
                /* Release: pairs with the acquire in cancel.c's decoding,
                 * which reads the address after the count. */
                atomic_store_explicit(&ctx__slab_nchunks, n + 1, memory_order_release);
                carve = c;
                carved = 0;
                populated = 0;
            }
        }
        if (carved < CTX__SLAB_PER) {
            /* The next batch is this thread's from here on; it is made
             * into free blocks below, once the lock is let go. */
            uint32_t e = carved + CTX__SLAB_CACHE / 2;
            if (e > CTX__SLAB_PER)
                e = CTX__SLAB_PER;
            fill = prefault(CTX__SLAB_HEAD + (size_t)e * CTX__SLAB_BLOCK, &fill_len);
            base = carve;
            first = carved;
            k = e - carved;
            carved = e;
        }
    }
    ctx__unlock(&slab_lock);
    populate(fill, fill_len);
    for (uint32_t i = first; base != NULL && i < first + k; i++) {
        void *b = base + CTX__SLAB_HEAD + (size_t)i * CTX__SLAB_BLOCK;
        /* Generation 1, unbound.  A store, not an initialisation: a forged
         * handle may read the word already. */
        atomic_store_explicit(ctx__hword(b), CTX__SLAB_WORD | 4u, memory_order_relaxed);
        /* The lock word is the block's for good too (cancel.c's
         * slab_lock): 0 while free.  (Chunks from aligned_alloc under the
         * sanitizers are not zeroed.) */
        atomic_store_explicit(&((struct ctx *)b)->lock, 0, memory_order_relaxed);
        *(void **)b = ctx__tc.head[1];
        ctx__tc.head[1] = b;
        poison_free(b);
    }
    ctx__tc.n[1] += k;
    return k != 0;
}

static void flush(struct ctx__cache *c)
{
    while (c->head[0] != NULL) {
        void *p = c->head[0];
        c->head[0] = *(void **)p;
        ctx__free(p);
    }
    c->n[0] = 0;
}

static void thread_gone(void *arg)
{
    struct ctx__cache *c = arg;
    flush(c);
    slab_give(c->n[1]);
    c->state = 2; /* whatever this thread frees from now on is freed */
}

static void make_key(void)
{
    pthread_key_create(&cache_key, thread_gone);
}

static void register_thread(void)
{
    pthread_once(&cache_once, make_key);
    pthread_setspecific(cache_key, &ctx__tc);
    ctx__tc.state = 1;
}

#if CTX__NODE_CACHE
__attribute__((destructor)) static void process_gone(void)
{
    flush(&ctx__tc);
    ctx__tc.state = 2;
}
#endif

/* The handle-block halves of ctx__node_alloc and ctx__node_free, out of
 * line so that the 64-byte paths stay a few instructions with no frame. */
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void *
slab_alloc(void)
{
    if (atomic_load_explicit(&ctx__caching, memory_order_relaxed) &&
        (ctx__tc.head[1] != NULL || slab_refill())) {
        void *p = ctx__tc.head[1];
        ctx__tc.head[1] = *(void **)p;
        ctx__tc.n[1]--;
        poison_used(p);
        return p;
    }
    /* A program's allocator, or a slab that cannot grow: a block whose
     * handle, if it gets one, is a cell. */
    void *p = ctx__alloc(CTX__SLAB_BLOCK);
    if (p != NULL)
        atomic_init(ctx__hword(p), 0);
    return p;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((noinline))
#endif
static void
slab_put(void *p)
{
    _Atomic uint32_t *w = ctx__hword(p);
    uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
    if (!(v & CTX__SLAB_WORD)) {
        if (v != 0)
            ctx__handle_drop(v); /* the tree drops it first; this is a backstop */
        ctx__free(p);
        return;
    }
    /* The tree drops a node's handle first of all; a block freed on a path
     * that did not (a creation that failed after its bind) still must not
     * keep a live generation. */
    if (v & CTX__SLAB_BOUND)
        ctx__slab_drop(w);
    if (ctx__tc.state == 0)
        register_thread();
    *(void **)p = ctx__tc.head[1];
    ctx__tc.head[1] = p;
    ctx__tc.n[1]++;
    poison_free(p);
    if (ctx__tc.state == 2)
        slab_give(ctx__tc.n[1]);
    else if (ctx__tc.n[1] > CTX__SLAB_CACHE)
        slab_give(CTX__SLAB_CACHE / 2);
}

/* The rest of ctx__node_alloc (internal.h): a handle block, or a 64-byte
 * block when this thread's cache is empty or off. */
void *ctx__node_alloc_slow(size_t size)
{
    if (size > sizeof(struct ctx))
        return slab_alloc();
    return ctx__alloc(64);
}

/* The rest of ctx__node_free (internal.h): a handle block, or a 64-byte
 * block that this thread's cache does not take as it is (the thread's
 * first, one past its exit, a full cache, a program's allocator). */
void ctx__node_free_slow(void *p, size_t size)
{
    if (size > sizeof(struct ctx)) {
        slab_put(p);
        return;
    }
#if CTX__NODE_CACHE
    if (ctx__tc.n[0] < CTX__CACHE_MAX && ctx__tc.state != 2 &&
        atomic_load_explicit(&ctx__caching, memory_order_relaxed)) {
        if (ctx__tc.state == 0)
            register_thread();
        *(void **)p = ctx__tc.head[0];
        ctx__tc.head[0] = p;
        ctx__tc.n[0]++;
        return;
    }
#endif
    ctx__free(p);
}

void ctx__slab_counts(size_t *made, size_t *global_free, size_t *mine)
{
    ctx__lock(&slab_lock);
    uint32_t n = atomic_load_explicit(&ctx__slab_nchunks, memory_order_relaxed);
    *made = n == 0 ? 0 : (size_t)(n - 1) * CTX__SLAB_PER + carved;
    *global_free = slab_nfree;
    ctx__unlock(&slab_lock);
    *mine = ctx__tc.n[1];
}
