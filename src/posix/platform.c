/* SPDX-License-Identifier: MIT */

/*
 * The portable platform layer (src/platform.h): POSIX.1-2017 calls plus
 * what macOS and FreeBSD both have.  Used on every system but Linux, and on
 * Linux with -DCTX_PORTABLE=ON, which is how it is tested.
 *
 * What it gives up against the Linux backend (docs/platforms.md has the
 * whole list): flags that pipe2, accept4 and socket set atomically are set
 * with fcntl(2) just after the call, so an exec in another thread in
 * between may inherit the descriptor; there is no read or write that is
 * non-blocking for one call on a blocking pipe, so the I/O calls poll
 * first there; and a send that must not raise SIGPIPE needs SO_NOSIGPIPE
 * or a signal mask.
 */
#include "../platform.h"

#include "ctx/io.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#ifdef CTX_HAVE_SYS_RANDOM_H
#include <sys/random.h>
#endif
#if defined(__FreeBSD__) || defined(__OpenBSD__)
#include <pthread_np.h>
#endif

static int set_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFD);
    return fl < 0 ? -1 : fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

static int set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    int want = on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK;
    return want == fl ? 0 : fcntl(fd, F_SETFL, want);
}

/* Closes fd keeping errno: for the error paths. */
static void close_keep_errno(int fd)
{
    int e = errno;
    close(fd);
    errno = e;
}

int ctx__plat_pipe_cloexec(int fds[2])
{
    if (pipe(fds) != 0)
        return -1;
    if (set_cloexec(fds[0]) != 0 || set_cloexec(fds[1]) != 0) {
        close_keep_errno(fds[0]);
        close_keep_errno(fds[1]);
        return -1;
    }
    return 0;
}

int ctx__plat_socket_nb(int domain, int type, int protocol)
{
    int s = socket(domain, type, protocol);
    if (s < 0)
        return -1;
    if (set_cloexec(s) != 0 || set_nonblock(s, 1) != 0) {
        close_keep_errno(s);
        return -1;
    }
    return s;
}

int ctx__plat_accept(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    if (flags & ~(CTX_SOCK_CLOEXEC | CTX_SOCK_NONBLOCK)) {
        errno = EINVAL;
        return -1;
    }
    int s = accept(fd, addr, len);
    if (s < 0)
        return -1;
    /* O_NONBLOCK is set or cleared either way: BSD's accept gives the new
     * socket the listener's file status flags, Linux's does not, and the
     * flags decide here, as accept4's do. */
    if (((flags & CTX_SOCK_CLOEXEC) && set_cloexec(s) != 0) ||
        set_nonblock(s, (flags & CTX_SOCK_NONBLOCK) != 0) != 0) {
        close_keep_errno(s);
        return -1;
    }
    return s;
}

/* fork's child handler calls this: pipe and fcntl are async-signal-safe. */
int ctx__plat_event_open(int *rfd, int *wfd)
{
    int p[2];
    if (pipe(p) != 0)
        return -1;
    for (int i = 0; i < 2; i++) {
        if (set_cloexec(p[i]) != 0 || set_nonblock(p[i], 1) != 0) {
            close_keep_errno(p[0]);
            close_keep_errno(p[1]);
            return -1;
        }
    }
    *rfd = p[0];
    *wfd = p[1];
    return 0;
}

void ctx__plat_event_signal(int wfd)
{
    char one = 1;
    ssize_t r = write(wfd, &one, 1);
    (void)r; /* a full pipe is readable already */
}

ssize_t ctx__plat_rw_nowait(int fd, const struct iovec *iov, int iovcnt, int write)
{
    /* POSIX has no read or write that is non-blocking for one call. */
    (void)fd;
    (void)iov;
    (void)iovcnt;
    (void)write;
    errno = EOPNOTSUPP;
    return -1;
}

ssize_t ctx__plat_write_nosig(int fd, const struct iovec *iov, int iovcnt)
{
    /* No such call: ctx__plat_nosig_state says so, and io.c never asks. */
    (void)fd;
    (void)iov;
    (void)iovcnt;
    errno = EOPNOTSUPP;
    return -1;
}

int ctx__plat_nosig_state(void)
{
    return -1;
}

int ctx__plat_nosig_probe(void)
{
    return -1;
}

static ssize_t sock_io(int fd, const struct iovec *iov, int iovcnt, int flags, int write)
{
    if (iovcnt == 1) {
        return write ? send(fd, iov[0].iov_base, iov[0].iov_len, flags)
                     : recv(fd, iov[0].iov_base, iov[0].iov_len, flags);
    }
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = (struct iovec *)(uintptr_t)iov;
    m.msg_iovlen = iovcnt;
    return write ? sendmsg(fd, &m, flags) : recvmsg(fd, &m, flags);
}

ssize_t ctx__plat_sock_nowait(int fd, const struct iovec *iov, int iovcnt, int flags, int write)
{
    flags |= MSG_DONTWAIT;
    if (!write)
        return sock_io(fd, iov, iovcnt, flags, 0);
#ifdef SO_NOSIGPIPE
    /* macOS and the BSDs: the socket option, set before every send since
     * an fd number can be reused by another socket between two calls.  It
     * stays set on the caller's socket, which only spares its other
     * writers a signal.  On a non-socket it fails with ENOTSOCK, which is
     * what send would say. */
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one) != 0)
        return -1;
    return sock_io(fd, iov, iovcnt, flags, 1);
#else
    /* No per-call or per-socket way: block SIGPIPE in this thread for the
     * call.  A SIGPIPE the send raises is then directed at this thread and
     * stays pending; when the send fails with EPIPE, and SIGPIPE was not
     * pending for this thread before, sigwait takes it back (it returns at
     * once, the signal being pending).  Then the old mask returns.  A
     * thread that had SIGPIPE unblocked can have none pending before the
     * call: it would have been delivered. */
    sigset_t pipe_set, old, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &pipe_set, &old) != 0)
        return sock_io(fd, iov, iovcnt, flags, 1);
    int was_pending = 0;
    if (sigismember(&old, SIGPIPE) == 1 && sigpending(&pending) == 0)
        was_pending = sigismember(&pending, SIGPIPE) == 1;
    ssize_t r = sock_io(fd, iov, iovcnt, flags, 1);
    int err = errno;
    if (r < 0 && err == EPIPE && !was_pending && sigpending(&pending) == 0 &&
        sigismember(&pending, SIGPIPE) == 1) {
        int sig;
        sigwait(&pipe_set, &sig);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    errno = err;
    return r;
#endif
}

int ctx__plat_random(void *out, size_t n)
{
    uint8_t *buf = out;
#ifdef CTX_HAVE_GETENTROPY
    /* getentropy gives at most 256 bytes a call and never a short count. */
    size_t done = 0;
    while (done < n) {
        size_t k = n - done < 256 ? n - done : 256;
        if (getentropy(buf + done, k) != 0) {
            if (errno == ENOSYS)
                return ctx__plat_urandom(buf + done, n - done);
            return errno;
        }
        done += k;
    }
    return 0;
#else
    return ctx__plat_urandom(buf, n);
#endif
}

void ctx__plat_thread_name(const char *name)
{
    /* Not in POSIX; the systems that have it spell it differently. */
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
#if defined(__APPLE__)
    pthread_setname_np(buf);
#elif defined(__FreeBSD__) || defined(__OpenBSD__)
    pthread_set_name_np(pthread_self(), buf);
#else
    (void)buf;
#endif
}

int ctx__plat_membarrier_init(void)
{
    return 0;
}

void ctx__plat_membarrier(void) {}
