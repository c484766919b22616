/* SPDX-License-Identifier: MIT */

/*
 * The platform layer on Linux (src/platform.h): the calls Linux has that
 * POSIX lacks, each of which saves a system call or closes a race on a hot
 * or a fork-sensitive path.  Built with glibc or musl; where the C library
 * does not declare a call (musl before 1.2.5 has no preadv2), the system
 * call is made directly.
 */
#include "../platform.h"

#include "ctx/io.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef CTX_HAVE_GETRANDOM
#include <sys/random.h>
#endif

/* Older C libraries lack the flags; the values are the kernel's ABI.
 * RWF_NOSIGNAL came with Linux 6.18. */
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
#ifndef RWF_NOSIGNAL
#define RWF_NOSIGNAL 0x00000100
#endif

/* The same for membarrier(2), whose header musl's compiler wrapper does
 * not see (it has no kernel headers). */
#define CTX_MEMBARRIER_CMD_PRIVATE_EXPEDITED          (1 << 3)
#define CTX_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED (1 << 4)

int ctx__plat_pipe_cloexec(int fds[2])
{
    return pipe2(fds, O_CLOEXEC);
}

int ctx__plat_socket_nb(int domain, int type, int protocol)
{
    return socket(domain, type | SOCK_CLOEXEC | SOCK_NONBLOCK, protocol);
}

int ctx__plat_accept(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    /* CTX_SOCK_CLOEXEC and CTX_SOCK_NONBLOCK are accept4's own flags
     * here.  Other bits are refused before the call: musl's accept4, when
     * the kernel says EINVAL, falls back to a plain accept, which would
     * take (or wait for) a connection. */
    if (flags & ~(SOCK_CLOEXEC | SOCK_NONBLOCK)) {
        errno = EINVAL;
        return -1;
    }
    return accept4(fd, addr, len, flags);
}

int ctx__plat_event_open(int *rfd, int *wfd)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -1;
    *rfd = *wfd = fd;
    return 0;
}

void ctx__plat_event_signal(int wfd)
{
    uint64_t one = 1;
    ssize_t r = write(wfd, &one, sizeof one);
    (void)r; /* a saturated eventfd is readable already */
}

/* pwritev2 at the file position (offset -1) with flags. */
static ssize_t pwritev2_at_pos(int fd, const struct iovec *iov, int iovcnt, int flags)
{
#ifdef CTX_HAVE_PREADV2
    return pwritev2(fd, iov, iovcnt, -1, flags);
#else
    /* The offset -1 (the file position) goes to the kernel as two halves,
     * both all ones, whatever the word size. */
    return syscall(SYS_pwritev2, fd, iov, iovcnt, -1L, -1L, flags);
#endif
}

ssize_t ctx__plat_rw_nowait(int fd, const struct iovec *iov, int iovcnt, int write)
{
    if (write)
        return pwritev2_at_pos(fd, iov, iovcnt, RWF_NOWAIT);
#ifdef CTX_HAVE_PREADV2
    return preadv2(fd, iov, iovcnt, -1, RWF_NOWAIT);
#else
    return syscall(SYS_preadv2, fd, iov, iovcnt, -1L, -1L, RWF_NOWAIT);
#endif
}

ssize_t ctx__plat_write_nosig(int fd, const struct iovec *iov, int iovcnt)
{
    return pwritev2_at_pos(fd, iov, iovcnt, RWF_NOWAIT | RWF_NOSIGNAL);
}

/* What the kernel says of RWF_NOSIGNAL (platform.h): 0 not known yet. */
static _Atomic int nosig_state;

int ctx__plat_nosig_state(void)
{
    return atomic_load_explicit(&nosig_state, memory_order_relaxed);
}

int ctx__plat_nosig_probe(void)
{
    int s = atomic_load_explicit(&nosig_state, memory_order_relaxed);
    if (s != 0)
        return s;
    /* One byte into an empty non-blocking pipe of our own, with the flag
     * alone: the kernel checks the flags before anything else, so only a
     * kernel that lacks RWF_NOSIGNAL refuses this (EOPNOTSUPP; ENOSYS, or
     * the C library's EOPNOTSUPP, without pwritev2 at all).  Threads that
     * probe at once agree. */
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) != 0)
        return 0;
    char byte = 0;
    struct iovec v = { &byte, 1 };
    ssize_t r = pwritev2_at_pos(p[1], &v, 1, RWF_NOSIGNAL);
    int err = errno;
    close(p[0]);
    close(p[1]);
    if (r == 1)
        s = 1;
    else if (err == EOPNOTSUPP || err == ENOSYS || err == EINVAL)
        s = -1;
    else
        return 0; /* something else went wrong: not known yet */
    atomic_store_explicit(&nosig_state, s, memory_order_relaxed);
    return s;
}

ssize_t ctx__plat_sock_nowait(int fd, const struct iovec *iov, int iovcnt, int flags, int write)
{
    int fl = flags | MSG_DONTWAIT | (write ? MSG_NOSIGNAL : 0);
    if (iovcnt == 1) {
        /* send/recv: cheaper in the kernel than the msghdr forms. */
        return write ? send(fd, iov[0].iov_base, iov[0].iov_len, fl)
                     : recv(fd, iov[0].iov_base, iov[0].iov_len, fl);
    }
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = (struct iovec *)(uintptr_t)iov;
    m.msg_iovlen = (size_t)iovcnt;
    return write ? sendmsg(fd, &m, fl) : recvmsg(fd, &m, fl);
}

int ctx__plat_random(void *out, size_t n)
{
    uint8_t *buf = out;
    size_t done = 0;
    while (done < n) {
#ifdef CTX_HAVE_GETRANDOM
        ssize_t r = getrandom(buf + done, n - done, 0);
#else
        ssize_t r = syscall(SYS_getrandom, buf + done, n - done, 0);
#endif
        if (r > 0)
            done += (size_t)r;
        else if (r < 0 && errno == ENOSYS)
            return ctx__plat_urandom(buf + done, n - done);
        else if (r < 0 && errno != EINTR)
            return errno;
    }
    return 0;
}

void ctx__plat_thread_name(const char *name)
{
    /* The kernel keeps 15 bytes of a name; a failure only loses the name.
     * The thread names itself: naming a detached thread from outside could
     * race with its exit.  glibc and musl both have the call. */
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    pthread_setname_np(pthread_self(), buf);
}

int ctx__plat_membarrier_init(void)
{
#ifdef SYS_membarrier
    return syscall(SYS_membarrier, CTX_MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
    return 0;
#endif
}

void ctx__plat_membarrier(void)
{
#ifdef SYS_membarrier
    syscall(SYS_membarrier, CTX_MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
#endif
}
