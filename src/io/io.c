/* SPDX-License-Identifier: MIT */

/*
 * Cancellable I/O: ctx_poll and the read/write family, accept, connect and
 * the whole-buffer loops.  <ctx/io.h> states the contract; this file says
 * how it is met.
 *
 * Every operation is first tried without blocking and without touching the
 * fd's flags, so that an operation whose data is ready costs one system
 * call and nothing else (no done fd, no poll, no allocation).  Only when the
 * kernel says EAGAIN does the call wait, with poll(2) on the fd and on the
 * context's done fd, and then try again, again without blocking.  That
 * retry is what keeps several readers of one blocking fd from blocking
 * after another reader took the data.
 *
 * The non-blocking attempt takes one of five forms (enum mode).  Reads start
 * with preadv2(RWF_NOWAIT), which Linux supports on pipes, FIFOs, sockets
 * and eventfds.  Writes start with pwritev2(RWF_NOWAIT | RWF_NOSIGNAL),
 * which pipes, FIFOs and sockets take and which never raises SIGPIPE on a
 * socket (Linux 6.18).  Nothing is remembered per fd: the number may name
 * another file at the next call.  Where the kernel lacks RWF_NOSIGNAL
 * (found out once per process: a fact about the kernel) writes start with
 * send(MSG_DONTWAIT | MSG_NOSIGNAL), because a write to a socket must not
 * raise SIGPIPE, and on ENOTSOCK go on with pwritev2(RWF_NOWAIT).  A file
 * type that refuses RWF_NOWAIT falls back to poll-then-call, the one
 * documented case that can block.  Regular files and block devices never
 * "would block" in poll's sense, so there the plain call is made at once.
 */
#include "internal.h"
#include "platform.h"

#include "ctx/io.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * Waiting for an fd or the context
 */

/* True when c can never be done: no done fd is needed to wait on it. */
static int never_done(ctx_t *c)
{
    return ctx__kind(ctx__owner(c)) == CTX__ROOT;
}

/* Puts c's done fd in p[*n] and counts it, unless c can never be done.
 * Returns 0, or why no done fd could be made. */
static int add_done_fd(ctx_t *c, struct pollfd *p, nfds_t *n)
{
    if (never_done(c))
        return 0;
    int dfd = ctx_done_fd(c);
    if (dfd < 0)
        return errno != 0 ? errno : ENOMEM;
    p[*n].fd = dfd;
    p[*n].events = POLLIN;
    p[*n].revents = 0;
    (*n)++;
    return 0;
}

/* Polls p (the caller's entries, then c's done fd if add_done_fd put it
 * there) until an entry is ready, c is done, or `end` passes; with a
 * timeout of CTX_FOREVER there is no end.  Returns poll's count, 0 at the
 * timeout, or -1 with errno: ctx_err(c) once c is done, whatever poll
 * said, or why poll failed.  The done fd is readable only once c is done,
 * which this rules out before it returns a count, so every ready entry is
 * the caller's. */
static int poll_until(ctx_t *c, struct pollfd *p, nfds_t n, ctx_duration_t timeout, ctx_time_t end)
{
    for (;;) {
        int ms = -1;
        if (timeout != CTX_FOREVER) {
            ctx_time_t left = end - ctx__real_now();
            if (left < 0)
                left = 0;
            /* Round up, so that poll never returns before the timeout. */
            ctx_time_t m = (left + CTX_MILLISECOND - 1) / CTX_MILLISECOND;
            ms = m > INT_MAX ? INT_MAX : (int)m;
        }
        int r = poll(p, n, ms);
        if (ctx__ended(c))
            return -1;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        if (r == 0 && timeout != CTX_FOREVER && ctx__real_now() < end)
            continue; /* woke early: keep waiting for what is left */
        return r;
    }
}

/* Waits until fd reports one of events (or an error or hang-up, which the
 * next attempt turns into a result) or c is done.  Returns 0 to try again,
 * else -1 with errno: ctx_err(c), or why the wait failed (EBADF for an fd
 * poll calls invalid, EMFILE when no done fd can be made, ...). */
static int wait_fd(ctx_t *c, int fd, short events)
{
    struct pollfd p[2];
    nfds_t n = 1;
    p[0].fd = fd;
    p[0].events = events;
    p[0].revents = 0;
    int e = add_done_fd(c, p, &n);
    if (e != 0) {
        errno = e;
        return -1;
    }
    for (;;) {
        if (poll_until(c, p, n, CTX_FOREVER, 0) < 0)
            return -1;
        if (p[0].revents & POLLNVAL) {
            errno = EBADF;
            return -1;
        }
        if (p[0].revents != 0)
            return 0;
    }
}

/* Whether fd reports one of events (or an error, a hang-up or POLLNVAL,
 * which the call then reports) at once, without waiting. */
static int ready_now(int fd, short events)
{
    struct pollfd p = { fd, events, 0 };
    return poll(&p, 1, 0) > 0 && p.revents != 0;
}

int ctx_poll(ctx_t *c, struct pollfd *fds, nfds_t nfds, ctx_duration_t timeout)
{
    if (c == NULL || (fds == NULL && nfds != 0) || nfds >= (nfds_t)INT_MAX) {
        errno = EINVAL;
        return -1;
    }
    if (ctx__ended(c))
        return -1;
    /* The caller's array plus one slot for the done fd: on the stack when
     * small, which is the common case. */
    struct pollfd small[16];
    struct pollfd *p = small;
    if (nfds + 1 > sizeof small / sizeof small[0]) {
        p = ctx__alloc((nfds + 1) * sizeof *p);
        if (p == NULL) {
            errno = ENOMEM;
            return -1;
        }
    }
    if (nfds != 0)
        memcpy(p, fds, nfds * sizeof *p);
    nfds_t n = nfds;
    int result = -1, err = add_done_fd(c, p, &n);
    if (err != 0)
        goto out;
    if (timeout < 0 && timeout != CTX_FOREVER)
        timeout = 0;
    ctx_time_t end = timeout == CTX_FOREVER ? 0 : ctx__add_sat(ctx__real_now(), timeout);
    result = poll_until(c, p, n, timeout, end);
    if (result < 0) {
        err = errno;
        goto out;
    }
    if (result > 0)
        for (nfds_t i = 0; i < nfds; i++)
            fds[i].revents = p[i].revents;
out:
    if (p != small)
        ctx__free(p);
    if (result < 0) {
        errno = err;
        return ctx__fail(c);
    }
    return result;
}

/* ---------------------------------------------------------------------------
 * The read and write family
 */

enum mode {
    M_NOSIG,  /* writes: pwritev2 with RWF_NOWAIT | RWF_NOSIGNAL */
    M_NOWAIT, /* preadv2/pwritev2 with RWF_NOWAIT */
    M_SOCK,   /* recvmsg/sendmsg with MSG_DONTWAIT */
    M_PLAIN,  /* poll first, then readv/writev (may block: see io.h) */
    M_FILE,   /* readv/writev at once: regular files, block devices */
};

struct op {
    int fd;
    int write;
    const struct iovec *iov;
    int iovcnt;
    int flags; /* the caller's recv/send flags, for M_SOCK */
    int sock_only;
    enum mode mode;
    int checked; /* fstat was done for this call */
};

/* The most a plain write (M_PLAIN) moves per call. */
#define PLAIN_PIECE PIPE_BUF

/* A blocking write(2) does not return after writing what fits: it waits
 * until all of it is written.  So where poll must stand in for a per-call
 * "do not block" (M_PLAIN), the write is cut to PLAIN_PIECE bytes, which
 * a pipe or FIFO that polls writable always has room for, and which makes
 * a terminal's write, whose poll promises less, very likely to fit.  The
 * caller gets the short count, as write(2) may give. */
static ssize_t plain_write(const struct op *o)
{
    struct iovec v[8];
    int n = 0;
    size_t total = 0;
    for (int i = 0; i < o->iovcnt && n < (int)(sizeof v / sizeof v[0]) && total < PLAIN_PIECE;
         i++) {
        if (o->iov[i].iov_len == 0)
            continue;
        v[n] = o->iov[i];
        if (v[n].iov_len > PLAIN_PIECE - total)
            v[n].iov_len = PLAIN_PIECE - total;
        total += v[n].iov_len;
        n++;
    }
    if (n == 0)
        return writev(o->fd, o->iov, o->iovcnt); /* nothing to write: as write(2) says */
    return writev(o->fd, v, n);
}

/* One attempt in the current mode.  Moves to the next mode where the fd
 * refuses this one, and returns -1 with errno EAGAIN for "would block". */
static ssize_t attempt(struct op *o)
{
    for (;;) {
        ssize_t r;
        switch (o->mode) {
        case M_NOSIG:
            r = ctx__plat_write_nosig(o->fd, o->iov, o->iovcnt);
            if (r >= 0)
                return r;
            if (errno == EPIPE) {
                /* Nobody reads any more.  A socket must not raise SIGPIPE
                 * and did not; a pipe or FIFO raises it under write(2).
                 * Only the socket call tells the two apart, and only on
                 * this rare path is it asked: a socket answers EPIPE
                 * again, still without a signal, and anything else goes
                 * on to pwritev2 without RWF_NOSIGNAL, where the kernel
                 * raises the signal as write(2) would. */
                o->mode = M_SOCK;
                continue;
            }
            if (errno != EOPNOTSUPP && errno != ENOSYS)
                return r;
            /* Refused: by a kernel without RWF_NOSIGNAL, which the probe
             * records so that later writes start with the socket call, or
             * by a file type without RWF_NOWAIT (a terminal).  Either way
             * this call goes on as writes did before the flag: the socket
             * call, then pwritev2(RWF_NOWAIT), then poll and the plain
             * call. */
            ctx__plat_nosig_probe();
            o->mode = M_SOCK;
            continue;
        case M_NOWAIT:
            r = ctx__plat_rw_nowait(o->fd, o->iov, o->iovcnt, o->write);
            if (r >= 0 || (errno != EOPNOTSUPP && errno != ENOSYS))
                return r;
            /* This file type (or kernel) has no RWF_NOWAIT.  A socket can
             * still be asked with MSG_DONTWAIT (writes tried that first);
             * anything else must be waited for before the plain call. */
            if (o->write) {
                o->mode = M_PLAIN;
                errno = EAGAIN;
                return -1;
            }
            o->mode = M_SOCK;
            continue;
        case M_SOCK: {
            r = ctx__plat_sock_nowait(o->fd, o->iov, o->iovcnt, o->flags, o->write);
            if (r >= 0 || errno != ENOTSOCK || o->sock_only)
                return r;
            if (o->write) {
                o->mode = M_NOWAIT;
                continue;
            }
            o->mode = M_PLAIN;
            errno = EAGAIN; /* wait before the plain call */
            return -1;
        }
        case M_PLAIN:
            if (o->write)
                return plain_write(o);
            return readv(o->fd, o->iov, o->iovcnt);
        case M_FILE:
            return o->write ? writev(o->fd, o->iov, o->iovcnt) : readv(o->fd, o->iov, o->iovcnt);
        }
    }
}

/* The loop every call of the family shares. */
static ssize_t run(ctx_t *c, struct op *o)
{
    if (ctx__ended(c))
        return -1;
    if (o->iovcnt < 0 || o->iovcnt > IOV_MAX || (o->iov == NULL && o->iovcnt != 0)) {
        errno = EINVAL;
        return -1;
    }
    int waited = 0;
    for (;;) {
        if (o->mode == M_PLAIN && !waited) {
            /* A blocking fd without RWF_NOWAIT: the call itself would
             * block, so wait for readiness first.  A look that does not
             * wait comes first, so that an fd that is ready (the usual
             * case, and every pipe on the portable backend) needs no done
             * fd. */
            if (!ready_now(o->fd, o->write ? POLLOUT : POLLIN) &&
                wait_fd(c, o->fd, o->write ? POLLOUT : POLLIN) != 0)
                return -1;
        }
        waited = 0;
        ssize_t r = attempt(o);
        if (r >= 0)
            return r;
        int err = errno;
        if (err == EINTR) {
            if (ctx__ended(c))
                return -1;
            continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK) {
            errno = err;
            return ctx__fail(c);
        }
        if (o->flags & MSG_DONTWAIT) {
            errno = err; /* the caller asked never to wait */
            return -1;
        }
        if (!o->checked && !o->sock_only) {
            /* RWF_NOWAIT on a regular file says EAGAIN when the data is
             * not cached, and poll would call the file ready at once: a
             * busy loop.  Such files are read with the plain call. */
            o->checked = 1;
            struct stat st;
            if (fstat(o->fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
                o->mode = M_FILE;
                continue;
            }
        }
        /* Just moved to M_PLAIN: as above, a ready fd needs no wait. */
        short ev = o->write ? POLLOUT : POLLIN;
        if (!(o->mode == M_PLAIN && ready_now(o->fd, ev)) && wait_fd(c, o->fd, ev) != 0)
            return -1;
        waited = 1;
    }
}

/* Where a write starts: one call that cannot raise SIGPIPE on a socket
 * where the kernel has one (M_NOSIG), else the socket call, whose ENOTSOCK
 * leads on to pwritev2 (two calls for a pipe). */
static enum mode write_mode(void)
{
    return ctx__plat_nosig_state() < 0 ? M_SOCK : M_NOSIG;
}

static ssize_t run_one(ctx_t *c, int fd, void *buf, size_t n, int write, enum mode mode, int flags,
                       int sock_only)
{
    if (c == NULL || buf == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct iovec v = { buf, n };
    struct op o = { fd, write, &v, 1, flags, sock_only, mode, 0 };
    return run(c, &o);
}

ssize_t ctx_read(ctx_t *c, int fd, void *buf, size_t n)
{
    return run_one(c, fd, buf, n, 0, M_NOWAIT, 0, 0);
}

ssize_t ctx_write(ctx_t *c, int fd, const void *buf, size_t n)
{
    return run_one(c, fd, (void *)(uintptr_t)buf, n, 1, write_mode(), 0, 0);
}

ssize_t ctx_readv(ctx_t *c, int fd, const struct iovec *iov, int iovcnt)
{
    if (c == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct op o = { fd, 0, iov, iovcnt, 0, 0, M_NOWAIT, 0 };
    return run(c, &o);
}

ssize_t ctx_writev(ctx_t *c, int fd, const struct iovec *iov, int iovcnt)
{
    if (c == NULL) {
        errno = EINVAL;
        return -1;
    }
    struct op o = { fd, 1, iov, iovcnt, 0, 0, write_mode(), 0 };
    return run(c, &o);
}

ssize_t ctx_recv(ctx_t *c, int fd, void *buf, size_t n, int flags)
{
    ssize_t r = run_one(c, fd, buf, n, 0, M_SOCK, flags, 1);
    if (r <= 0 || (size_t)r == n ||
        (flags & (MSG_WAITALL | MSG_DONTWAIT | MSG_PEEK)) != MSG_WAITALL)
        return r;
    /* MSG_WAITALL: the non-blocking attempt returned what was there, where
     * recv(2) would have waited for all n bytes.  On a stream socket, go on
     * until they are in, end of file, an error or ctx's end; what arrived
     * is returned in every case.  (On datagram sockets the flag means
     * nothing, and one datagram is one call.) */
    int type;
    socklen_t tl = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM)
        return r;
    size_t got = (size_t)r;
    while (got < n) {
        r = run_one(c, fd, (char *)buf + got, n - got, 0, M_SOCK, flags, 1);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

ssize_t ctx_send(ctx_t *c, int fd, const void *buf, size_t n, int flags)
{
    return run_one(c, fd, (void *)(uintptr_t)buf, n, 1, M_SOCK, flags, 1);
}

/* ---------------------------------------------------------------------------
 * Whole buffers
 */

int ctx_read_full(ctx_t *c, int fd, void *buf, size_t n, size_t *done)
{
    size_t got = 0;
    int rc = 0;
    if (c == NULL || buf == NULL) {
        rc = EINVAL;
        goto out;
    }
    while (got < n) {
        ssize_t r = ctx_read(c, fd, (char *)buf + got, n - got);
        if (r < 0) {
            rc = errno;
            break;
        }
        if (r == 0) {
            rc = ENODATA;
            break;
        }
        got += (size_t)r;
    }
out:
    if (done != NULL)
        *done = got;
    return rc;
}

int ctx_write_all(ctx_t *c, int fd, const void *buf, size_t n, size_t *done)
{
    size_t put = 0;
    int rc = 0;
    if (c == NULL || buf == NULL) {
        rc = EINVAL;
        goto out;
    }
    while (put < n) {
        ssize_t r = ctx_write(c, fd, (const char *)buf + put, n - put);
        if (r < 0) {
            rc = errno;
            break;
        }
        put += (size_t)r;
    }
out:
    if (done != NULL)
        *done = put;
    return rc;
}

/* ---------------------------------------------------------------------------
 * accept and connect
 */

int ctx_accept(ctx_t *c, int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    if (c == NULL) {
        errno = EINVAL;
        return -1;
    }
    if (ctx__ended(c))
        return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    /* accept4 has no per-call "do not block" flag: on a blocking socket it
     * may only be called once poll says a connection waits. */
    int wait_first = !(fl & O_NONBLOCK);
    for (;;) {
        if (wait_first && wait_fd(c, fd, POLLIN) != 0)
            return -1;
        int s = ctx__plat_accept(fd, addr, len, flags);
        if (s >= 0)
            return s;
        if (errno == EINTR) {
            if (ctx__ended(c))
                return -1;
            continue;
        }
        /* ECONNABORTED: a connection died in the queue; accept(2) on a
         * blocking socket would wait for the next one, and so do we. */
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
            return ctx__fail(c);
        if (!wait_first && wait_fd(c, fd, POLLIN) != 0)
            return -1;
    }
}

/* Waits for a connection attempt under way (EINPROGRESS) to finish. */
static int connect_wait(ctx_t *c, int fd)
{
    if (wait_fd(c, fd, POLLOUT) != 0)
        return -1;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        return -1;
    if (soerr != 0) {
        errno = soerr; /* ETIMEDOUT here is TCP's, not the context's */
        return ctx__fail(c);
    }
    return 0;
}

/* connect(2) on a blocking socket, with the socket's send timeout
 * (SO_SNDTIMEO, which Linux's connect honours) lowered to `usec` for the
 * one call and then restored.  A TCP attempt that has not finished by then
 * goes on in the background and the call says EINPROGRESS; an AF_UNIX
 * listener whose backlog stays full gives EAGAIN.  Either way the caller
 * gets its thread back, to wait on the context. */
static int connect_slice(int fd, const struct sockaddr *addr, socklen_t len, long usec)
{
    struct timeval old, slice = { 0, usec };
    socklen_t ol = sizeof old;
    if (getsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &old, &ol) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &slice, sizeof slice) != 0)
        return -1;
    int r = connect(fd, addr, len);
    int err = errno;
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &old, sizeof old);
    errno = err;
    return r;
}

/* How long one AF_UNIX attempt waits for room in a full backlog before the
 * context is looked at again: the latency of a cancel in that case. */
#define UNIX_SLICE_USEC 10000

int ctx_connect(ctx_t *c, int fd, const struct sockaddr *addr, socklen_t len)
{
    if (c == NULL || addr == NULL) {
        errno = EINVAL;
        return -1;
    }
    if (ctx__ended(c))
        return -1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    if ((fl & O_NONBLOCK) || never_done(c)) {
        int r = connect(fd, addr, len);
        if (r == 0)
            return 0;
        if (errno != EINPROGRESS && errno != EINTR)
            return ctx__fail(c);
        /* EINTR: the attempt goes on in the background, as EINPROGRESS. */
        return connect_wait(c, fd);
    }
    /* A blocking socket, whose flags are not ours to change.  Letting
     * connect(2) block and aborting it from an AfterFunc with shutdown(2)
     * cannot work: a cancel that lands before the kernel has sent the SYN
     * finds the socket not yet connecting (ENOTCONN, no effect), and the
     * connect then blocks for the whole SYN timeout.  Instead the connect
     * itself is made short (connect_slice) and the rest of the handshake
     * is waited for with poll, like a non-blocking connect. */
    long usec = 1; /* one clock tick, the shortest the kernel keeps */
    int again = 0; /* a connect of ours went before this one */
    for (;;) {
        int r = connect_slice(fd, addr, len, usec);
        if (r == 0)
            return 0;
        int err = errno;
        if (err == EINPROGRESS || (again && err == EALREADY))
            return connect_wait(c, fd);
        if (again && err == EISCONN)
            return 0; /* finished between our two calls */
        /* EAGAIN from AF_UNIX: a full backlog, where connect(2) would wait
         * for room; wait in slices and look at the context between them.
         * (Elsewhere, such as TCP out of local ports, connect(2) fails at
         * once with it, and so do we.)  EINTR: a signal; the next call
         * says how far the attempt got. */
        if (err != EINTR && !(err == EAGAIN && addr->sa_family == AF_UNIX))
            return ctx__fail(c);
        if (ctx__ended(c))
            return -1;
        again = 1;
        usec = err == EAGAIN ? UNIX_SLICE_USEC : 1;
    }
}
