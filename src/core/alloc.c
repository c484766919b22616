/* SPDX-License-Identifier: MIT */

/*
 * The allocator hook.  Every allocation the library makes goes through
 * ctx__alloc/ctx__free, so a program can route them to its own allocator and
 * the test suite can fail the Nth allocation.
 */
#include "internal.h"

#include <pthread.h>
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
static _Atomic int caching = 1;

int ctx_replace_allocator(void *(*m)(size_t size), void (*f)(void *ptr))
{
    if (m == NULL || f == NULL)
        return EINVAL;
    atomic_store_explicit(&caching, 0, memory_order_relaxed);
    atomic_store_explicit(&malloc_fn, m, memory_order_relaxed);
    atomic_store_explicit(&free_fn, f, memory_order_relaxed);
    return 0;
}

void ctx_reset_allocator(void)
{
    atomic_store_explicit(&malloc_fn, malloc, memory_order_relaxed);
    atomic_store_explicit(&free_fn, free, memory_order_relaxed);
    atomic_store_explicit(&caching, 1, memory_order_relaxed);
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
 * Every node is a 64-byte or a 96-byte block.  A thread keeps some freed
 * blocks of each size and hands them out again, which turns
 * a malloc/free pair into a few loads and stores: building and freeing a
 * tree allocates and frees little else.  The cache is
 * emptied when its thread exits and, for the thread that calls exit(), by a
 * destructor.  Under AddressSanitizer and ThreadSanitizer it is compiled
 * out, so every node is a fresh allocation they can track.
 */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CTX__NODE_CACHE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define CTX__NODE_CACHE 0
#endif
#endif
#ifndef CTX__NODE_CACHE
#define CTX__NODE_CACHE 1
#endif

static size_t class_size(int k)
{
    return k == 0 ? 64 : 96;
}

static int class_of(size_t size)
{
    return size <= 64 ? 0 : 1;
}

#if CTX__NODE_CACHE

/* Per thread at most 2048 blocks of 64 bytes and 512 of 96 (176 KiB): enough
 * to absorb building and freeing a tree of a few thousand contexts, which
 * otherwise pays glibc's free-list consolidation for every node. */
static const unsigned cache_max[2] = { 2048, 512 };

struct cache {
    void *head[2];
    unsigned n[2];
    int state; /* 0 new, 1 registered for flushing at thread exit, 2 gone */
};
static CTX__TLS struct cache tc;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;

static void flush(struct cache *c)
{
    for (int k = 0; k < 2; k++) {
        while (c->head[k] != NULL) {
            void *p = c->head[k];
            c->head[k] = *(void **)p;
            ctx__free(p);
        }
        c->n[k] = 0;
    }
}

static void thread_gone(void *arg)
{
    struct cache *c = arg;
    flush(c);
    c->state = 2; /* whatever this thread frees from now on is freed */
}

static void make_key(void)
{
    pthread_key_create(&cache_key, thread_gone);
}

__attribute__((destructor)) static void process_gone(void)
{
    flush(&tc);
    tc.state = 2;
}

void *ctx__node_alloc(size_t size)
{
    int k = class_of(size);
    void *p = tc.head[k];
    if (p != NULL && atomic_load_explicit(&caching, memory_order_relaxed)) {
        tc.head[k] = *(void **)p;
        tc.n[k]--;
        return p;
    }
    return ctx__alloc(class_size(k));
}

void ctx__node_free(void *p, size_t size)
{
    int k = class_of(size);
    if (tc.n[k] < cache_max[k] && tc.state != 2 &&
        atomic_load_explicit(&caching, memory_order_relaxed)) {
        if (tc.state == 0) {
            pthread_once(&cache_once, make_key);
            pthread_setspecific(cache_key, &tc);
            tc.state = 1;
        }
        *(void **)p = tc.head[k];
        tc.head[k] = p;
        tc.n[k]++;
        return;
    }
    ctx__free(p);
}

#else

void *ctx__node_alloc(size_t size)
{
    return ctx__alloc(class_size(class_of(size)));
}

void ctx__node_free(void *p, size_t size)
{
    (void)size;
    ctx__free(p);
}

#endif
