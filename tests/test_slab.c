/* SPDX-License-Identifier: MIT */

/*
 * The node slab and the handles that live in its blocks, on the library's
 * default allocation path (the other lifetime tests install a counting
 * allocator, which routes nodes around the slab and gives their handles
 * cells):
 *
 *   - a cancel through a handle whose context was freed is a no-op, also
 *     when a new context of another kind took the same block, over many
 *     generations of one block;
 *   - a value that is no handle, or names a block beyond the slab, aborts
 *     with the message (in a child process);
 *   - a cancel racing the free of its context, from another thread, never
 *     touches the new context of the block (the pin blocks the drop);
 *   - forgotten cancels and threads that come and go leave the slab (and
 *     the handle cells) the size they were: freed blocks are reused, a
 *     thread's lists go back to the global ones when the thread exits;
 *   - under AddressSanitizer, reading a freed node is reported although its
 *     block stays in the slab;
 *   - on Linux, once the slab has outgrown its first 16 chunks, the pages of
 *     the chunk being carved are made resident at most 64 KiB ahead of the
 *     blocks carved, and no further.
 */
#include "check.h"

#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

/* alloc.c, for tests: blocks carved, free in the global list, free in this
 * thread's list. */
void ctx__slab_counts(size_t *made, size_t *global_free, size_t *mine);
/* alloc.c: the slab's chunks (their addresses, then their count). */
extern unsigned char *_Atomic ctx__slab_chunks[];
extern _Atomic uint32_t ctx__slab_nchunks;
/* cancel.c, for tests: the handle cells made so far. */
size_t ctx__handle_cells(void);

/* Blocks of the slab that hold a node, counted from this thread: every
 * other thread that freed blocks must have exited. */
static long slab_in_use(void)
{
    size_t made, global_free, mine;
    ctx__slab_counts(&made, &global_free, &mine);
    return (long)made - (long)global_free - (long)mine;
}

static ctx_t *make(int kind, ctx_cancel_t **h)
{
    static const ctx_custom_ops_t ops = { .name = "custom" };
    switch (kind % 3) {
    case 0:
        return ctx_with_cancel(ctx_background(), h);
    case 1:
        return ctx_with_timeout(ctx_background(), CTX_HOUR, h);
    default:
        return ctx_with_custom(ctx_background(), &ops, NULL, h);
    }
}

/* One block, many generations: every old handle stays a no-op for every
 * later context in the block, whatever its kind. */
static void test_reuse_many_generations(void)
{
    enum { KEEP = 64, ROUNDS = 20000 };
    ctx_cancel_t *old[KEEP];
    ctx_cancel_t *h;
    ctx_t *first = make(0, &h);
    CHECK_NOT_NULL(first);
    ctx_unref(first);
    old[0] = h;
    int reused = 0;
    for (int i = 1; i < ROUNDS; i++) {
        ctx_t *c = make(i, &h);
        CHECK_NOT_NULL(c);
        CHECK_NOT_NULL(h);
        if (c == first)
            reused++;
        /* Every kept handle is stale: c stays live. */
        for (int k = 0; k < (i < KEEP ? i : KEEP); k++)
            ctx_cancel(old[k]);
        CHECK_NOT_DONE(c);
        CHECK_MSG(h != old[(i - 1) % KEEP], "a handle repeated at round %d", i);
        if (i % 2 == 0) {
            ctx_cancel(h);
            CHECK_CANCELED(c);
        }
        ctx_unref(c);
        ctx_cancel(h); /* after the free: a no-op */
        old[i % KEEP] = h;
    }
    /* The point of the test: the freed block was taken again each time. */
    CHECK_MSG(reused == ROUNDS - 1, "the block was reused %d times of %d", reused, ROUNDS - 1);
}

static void cancel_beyond_slab(void *arg)
{
    (void)arg;
    /* A slab handle (both tag bits on 64-bit systems, the top bit on
     * 32-bit ones) naming the last block number there is. */
    uintptr_t v = UINTPTR_MAX > 0xffffffffu ? UINTPTR_MAX >> 2 : 0x7fffffffu;
    v = ~v | (v & ~(uintptr_t)0xfff);
    ctx_cancel((ctx_cancel_t *)v);
}

static void cancel_a_context(void *arg)
{
    (void)arg;
    /* Not a timer: a forked child of a threaded process starts no thread
     * (ThreadSanitizer refuses to). */
    ctx_cancel_t *h;
    ctx_t *c = ctx_with_cancel(ctx_background(), &h);
    ctx_cancel((ctx_cancel_t *)(void *)c);
}

static void test_foreign_aborts(void)
{
    check_child_aborts(cancel_beyond_slab, NULL, "ctx_cancel: not a cancel handle");
#if UINTPTR_MAX > 0xffffffffu
    /* On 32-bit systems a pointer can decode as a live handle; there the
     * check is only that nothing is touched beyond the table. */
    check_child_aborts(cancel_a_context, NULL, "ctx_cancel: not a cancel handle");
#else
    (void)cancel_a_context;
#endif
}

/* Go's pattern on another thread: the drop of the last reference races
 * the cancel through the handle, and a new context takes the block at
 * once on the dropping thread.  The cancel either reaches the old context
 * or does nothing; the new one is never touched. */
struct race {
    ctx_t *c;
    ctx_t *next;
    ctx_cancel_t *next_h;
    check_latch_t go;
};

static void *drop_and_reuse(void *arg)
{
    struct race *r = arg;
    check_latch_wait(&r->go);
    ctx_unref(r->c);
    r->next = ctx_with_timeout(ctx_background(), CTX_HOUR, &r->next_h);
    return NULL;
}

static void test_cancel_races_reuse(void)
{
    size_t cells0 = ctx__handle_cells();
    long rounds = check_scale(3000);
    for (long i = 0; i < rounds; i++) {
        struct race r;
        ctx_cancel_t *h;
        r.c = ctx_with_cancel(ctx_background(), &h);
        CHECK_NOT_NULL(r.c);
        check_latch_init(&r.go);
        pthread_t t;
        check_thread_start(&t, drop_and_reuse, &r);
        check_latch_open(&r.go);
        ctx_cancel(h);
        check_thread_join(t);
        CHECK_NOT_NULL(r.next);
        ctx_cancel(h);
        CHECK_NOT_DONE(r.next);
        ctx_cancel(r.next_h);
        ctx_unref(r.next);
        check_latch_destroy(&r.go);
    }
    /* A thread per round, each reserving cells: they came back. */
    CHECK_MSG(ctx__handle_cells() <= cells0 + 1024, "cells grew from %zu to %zu", cells0,
              ctx__handle_cells());
}

/* Forgotten cancels: the blocks come back, so a second burst of the same
 * size carves nothing new. */
static void forget_10000(ctx_t *parent, long in_use0)
{
    for (int i = 0; i < 10000; i++) {
        ctx_cancel_t *h;
        ctx_t *c = (i & 1) ? ctx_with_cancel(parent, &h) : ctx_with_timeout(parent, CTX_HOUR, &h);
        CHECK_NOT_NULL(c);
        ctx_unref(c);
    }
    CHECK_EQ_INT(slab_in_use(), in_use0);
}

static void test_forgotten_cancel(void)
{
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(parent);
    long in_use0 = slab_in_use();
    size_t made0, made1, g, m;
    forget_10000(parent, in_use0);
    ctx__slab_counts(&made0, &g, &m);
    forget_10000(parent, in_use0);
    ctx__slab_counts(&made1, &g, &m);
    CHECK_EQ_INT((long)made1, (long)made0);
    ctx_cancel(pc);
    ctx_unref(parent);
}

/* Threads that make and free nodes, then exit: their free blocks go back
 * to the global list, so round after round the slab does not grow. */
static void *burst(void *arg)
{
    (void)arg;
    enum { N = 3000 };
    ctx_t **c = malloc(N * sizeof *c);
    CHECK_NOT_NULL(c);
    ctx_cancel_t *h;
    for (int i = 0; i < N; i++) {
        c[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, &h);
        CHECK_NOT_NULL(c[i]);
    }
    for (int i = 0; i < N; i++)
        ctx_unref(c[i]);
    free(c);
    return NULL;
}

static void test_thread_exit_returns(void)
{
    size_t made[6], cells[6], g, m;
    for (int round = 0; round < 6; round++) {
        /* One at a time, so that no thread holds free blocks while another
         * needs them: then the slab's size is exact. */
        for (int k = 0; k < 3; k++) {
            pthread_t t;
            check_thread_start(&t, burst, NULL);
            check_thread_join(t);
        }
        ctx__slab_counts(&made[round], &g, &m);
        cells[round] = ctx__handle_cells();
    }
    /* A thread's list goes back when its exit handler runs, which
     * pthread_join waits for.  So do the handle cells a thread reserved
     * and never used (its handles were all slab handles). */
    CHECK_MSG(made[5] == made[0], "the slab grew from %zu to %zu blocks", made[0], made[5]);
    CHECK_MSG(cells[5] == cells[0], "the cells grew from %zu to %zu", cells[0], cells[5]);
}

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif

#ifdef SLAB_ASAN
static void read_after_free(void *arg)
{
    (void)arg;
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    ctx_unref(c);
    fprintf(stderr, "err %d\n", ctx_err(c)); /* reads the freed node */
}

static void test_asan_sees_use_after_free(void)
{
    static char out[65536];
    int st = check_child(read_after_free, NULL, out, sizeof out);
    CHECK_MSG(!(WIFEXITED(st) && WEXITSTATUS(st) == 0), "the read went unreported: %s", out);
    CHECK_MSG(strstr(out, "use-after-poison") != NULL, "stderr: %s", out);
}
#endif

#if defined(__SANITIZE_THREAD__)
#define SLAB_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLAB_TSAN 1
#endif
#endif

#if defined(__linux__) && defined(MADV_POPULATE_WRITE) && UINTPTR_MAX == UINT64_MAX &&             \
    !defined(SLAB_ASAN) && !defined(SLAB_TSAN)
#define SLAB_PREFAULT 1
enum { CHUNK = 1 << 18, HEAD = 64, BLOCK = 96, PER = (CHUNK - HEAD) / BLOCK, STEP = 64 << 10 };

/* The first page at or after offset `from` of chunk c whose residency is
 * not `want`, or `to` when every page up to `to` is as wanted. */
static size_t first_unlike(unsigned char *c, size_t from, size_t to, int want)
{
    static unsigned char vec[CHUNK / 4096];
    CHECK(mincore(c, CHUNK, vec) == 0);
    for (size_t off = from; off < to; off += 4096)
        if ((vec[off / 4096] & 1) != want)
            return off;
    return to;
}

/* The slab fills the chunk it carves ahead of the blocks, a step at a
 * time, from its 17th chunk on: resident just beyond the blocks carved,
 * and not beyond the step that holds them. */
static void test_prefault_ahead(void)
{
    /* Whether this kernel has the advice at all (5.14 and later). */
    void *probe = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(probe != MAP_FAILED);
    int has = madvise(probe, 4096, MADV_POPULATE_WRITE) == 0;
    munmap(probe, 4096);
    if (!has)
        return;
    enum { N = 18 * PER };
    ctx_t **c = malloc(N * sizeof *c);
    CHECK(c != NULL);
    int checked = 0;
    for (int i = 0; i < N; i++) {
        c[i] = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
        CHECK(c[i] != NULL);
        uint32_t n = atomic_load(&ctx__slab_nchunks);
        if (n <= 16 || i % 97 != 0)
            continue;
        /* Blocks carved from the newest chunk, from the slab's count. */
        size_t made, global_free, mine;
        ctx__slab_counts(&made, &global_free, &mine);
        size_t carved = made - (size_t)(n - 1) * PER;
        unsigned char *chunk = atomic_load(&ctx__slab_chunks[n - 1]);
        size_t end = HEAD + carved * BLOCK;
        size_t ahead = (end + STEP - 1) / STEP * STEP;
        size_t off = first_unlike(chunk, 0, ahead, 1);
        CHECK_MSG(off == ahead,
                  "chunk %u, %zu blocks carved: page at %zu not resident (filled up to %zu)",
                  (unsigned)n - 1, carved, off, ahead);
        off = first_unlike(chunk, ahead, CHUNK, 0);
        CHECK_MSG(off == CHUNK, "chunk %u, %zu blocks carved: page at %zu resident beyond %zu",
                  (unsigned)n - 1, carved, off, ahead);
        checked++;
    }
    CHECK(checked > 0);
    for (int i = 0; i < N; i++)
        ctx_unref(c[i]);
    free(c);
}
#endif

int main(void)
{
    check_seed();
    /* What the library keeps once made: the timer thread and structures. */
    ctx_unref(ctx_with_timeout(ctx_background(), CTX_HOUR, NULL));
    RUN_TEST(test_reuse_many_generations);
    RUN_TEST(test_foreign_aborts);
    RUN_TEST(test_cancel_races_reuse);
    RUN_TEST(test_forgotten_cancel);
    RUN_TEST(test_thread_exit_returns);
#ifdef SLAB_ASAN
    RUN_TEST(test_asan_sees_use_after_free);
#endif
#ifdef SLAB_PREFAULT
    RUN_TEST(test_prefault_ahead);
#endif
    return 0;
}
