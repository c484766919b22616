/*
 * The allocator hook.  Every allocation the library makes goes through
 * ctx__alloc/ctx__free, so a program can route them to its own allocator and
 * the test suite can fail the Nth allocation.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

typedef void *(*malloc_fn_t)(size_t);
typedef void (*free_fn_t)(void *);

/* Relaxed is enough: the contract asks programs to install an allocator
 * before they create contexts, and the thread creation that follows orders
 * it for other threads. */
static _Atomic(malloc_fn_t) malloc_fn = malloc;
static _Atomic(free_fn_t) free_fn = free;

int ctx_replace_allocator(void *(*m)(size_t size), void (*f)(void *ptr))
{
    if (m == NULL || f == NULL)
        return EINVAL;
    atomic_store_explicit(&malloc_fn, m, memory_order_relaxed);
    atomic_store_explicit(&free_fn, f, memory_order_relaxed);
    return 0;
}

void ctx_reset_allocator(void)
{
    atomic_store_explicit(&malloc_fn, malloc, memory_order_relaxed);
    atomic_store_explicit(&free_fn, free, memory_order_relaxed);
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

char *ctx__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = ctx__alloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}
