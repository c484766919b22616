/* SPDX-License-Identifier: MIT */

/*
 * Futex wait/wake on Linux, and the slow path of the node lock.
 */
#include "../internal.h"

#include <sys/syscall.h>
#include <unistd.h>

/* The futex operations, from the kernel's ABI: musl's compiler wrapper
 * sees no kernel headers, so <linux/futex.h> is not used. */
#define CTX_FUTEX_WAIT_BITSET      9
#define CTX_FUTEX_WAKE             1
#define CTX_FUTEX_PRIVATE_FLAG     128
#define CTX_FUTEX_BITSET_MATCH_ANY 0xffffffffu

int ctx__futex_wait(_Atomic uint32_t *addr, uint32_t expected, const struct timespec *abs_deadline)
{
    /* FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so a
     * wait interrupted and restarted never stretches the total. */
    long r = syscall(SYS_futex, (uint32_t *)addr, CTX_FUTEX_WAIT_BITSET | CTX_FUTEX_PRIVATE_FLAG,
                     expected, abs_deadline, NULL, CTX_FUTEX_BITSET_MATCH_ANY);
    if (r == 0)
        return 0;
    if (errno == ETIMEDOUT)
        return ETIMEDOUT;
    if (errno == EINTR)
        return EINTR;
    return 0; /* EAGAIN: the word had already changed */
}

void ctx__futex_wake(_Atomic uint32_t *addr, int count)
{
    syscall(SYS_futex, (uint32_t *)addr, CTX_FUTEX_WAKE | CTX_FUTEX_PRIVATE_FLAG, count, NULL, NULL,
            0);
}

void ctx__lock_slow(_Atomic uint32_t *l)
{
    /* Spin briefly: critical sections are a few dozen instructions. */
    for (int i = 0; i < 100; i++) {
        uint32_t expected = 0;
        if (atomic_load_explicit(l, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(l, &expected, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    /* Mark contended (2) and sleep until the holder hands over.  Acquire:
     * pairs with the release in ctx__unlock. */
    while (atomic_exchange_explicit(l, 2, memory_order_acquire) != 0)
        ctx__futex_wait(l, 2, NULL);
}

/* The kernel's futexes hold no lock a fork could capture. */
void ctx__futex_atfork(int phase)
{
    (void)phase;
}
