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
 * The non-blocking attempt takes one of four forms (enum mode).  Reads start
 * with preadv2(RWF_NOWAIT), which Linux supports on pipes, FIFOs, sockets
 * and eventfds.  Writes start with send(MSG_DONTWAIT | MSG_NOSIGNAL),
 * because a write to a socket must not raise SIGPIPE and pwritev2 cannot
 * ask for that; on ENOTSOCK they go on with pwritev2(RWF_NOWAIT).  A file
 * type that refuses RWF_NOWAIT falls back to poll-then-call, the one
 * documented case that can block.  Regular files and block devices never
 * "would block" in poll's sense, so there the plain call is made at once.
 */
#include "internal.h"

#include "ctx/io.h"

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Older C libraries lack the flag; the value is the kernel's ABI. */
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

/* ---------------------------------------------------------------------------
 * Waiting for an fd or the context
 */

/* True when c can never be done: no done fd is needed to wait on it. */
static int never_done(ctx_t *c)
{
    return ctx__kind(ctx__owner(c)) == CTX__ROOT;
}

/* Waits until fd reports one of events (or an error or hang-up, which the
 * next attempt turns into a result) or c is done.  Returns 0 to try again,
 * else an errno-style code: ctx_err(c), or why the wait failed (EBADF for
 * an fd poll calls invalid, EMFILE when no done fd can be made, ...). */
static int wait_fd(ctx_t *c, int fd, short events)
{
    struct pollfd p[2];
    nfds_t n = 1;
    p[0].fd = fd;
    p[0].events = events;
    if (!never_done(c)) {
        int dfd = ctx_done_fd(c);
        if (dfd < 0)
            return errno != 0 ? errno : ENOMEM;
        p[1].fd = dfd;
        p[1].events = POLLIN;
        n = 2;
    }
    for (;;) {
        p[0].revents = 0;
        if (n == 2)
            p[1].revents = 0;
        int r = poll(p, n, -1);
        int e = ctx_err(c);
        if (e != 0)
            return e;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return errno;
        }
        if (p[0].revents & POLLNVAL)
            return EBADF;
        if (p[0].revents != 0)
            return 0;
    }
}

int ctx_poll(ctx_t *c, struct pollfd *fds, nfds_t nfds, ctx_duration_t timeout)
{
    if (c == NULL || (fds == NULL && nfds != 0) || nfds >= (nfds_t)INT_MAX) {
        errno = EINVAL;
        return -1;
    }
    int e = ctx_err(c);
    if (e != 0) {
        errno = e;
        return -1;
    }
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
    int result = -1, err = 0;
    if (!never_done(c)) {
        int dfd = ctx_done_fd(c);
        if (dfd < 0) {
            err = errno != 0 ? errno : ENOMEM;
            goto out;
        }
        p[n].fd = dfd;
        p[n].events = POLLIN;
        p[n].revents = 0;
        n++;
    }
    if (timeout < 0 && timeout != CTX_FOREVER)
        timeout = 0;
    ctx_time_t end = timeout == CTX_FOREVER ? 0 : ctx__add_sat(ctx__real_now(), timeout);
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
        e = ctx_err(c);
        if (e != 0) {
            err = e;
            break;
        }
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            err = errno;
            break;
        }
        if (r == 0) {
            if (timeout != CTX_FOREVER && ctx__real_now() < end)
                continue; /* woke early: keep waiting for what is left */
            result = 0;
            break;
        }
        /* The done fd is readable only once c is done, which ctx_err
         * above has ruled out, so every ready entry is the caller's. */
        for (nfds_t i = 0; i < nfds; i++)
            fds[i].revents = p[i].revents;
        result = r;
        break;
    }
out:
    if (p != small)
        ctx__free(p);
    if (result < 0)
        errno = err;
    return result;
}

/* ---------------------------------------------------------------------------
 * The read and write family
 */

enum mode {
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

/* One attempt in the current mode.  Moves to the next mode where the fd
 * refuses this one, and returns -1 with errno EAGAIN for "would block". */
static ssize_t attempt(struct op *o)
{
    for (;;) {
        ssize_t r;
        switch (o->mode) {
        case M_NOWAIT:
            r = o->write ? pwritev2(o->fd, o->iov, o->iovcnt, -1, RWF_NOWAIT)
                         : preadv2(o->fd, o->iov, o->iovcnt, -1, RWF_NOWAIT);
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
            struct msghdr m;
            memset(&m, 0, sizeof m);
            m.msg_iov = (struct iovec *)(uintptr_t)o->iov;
            m.msg_iovlen = (size_t)o->iovcnt;
            int fl = o->flags | MSG_DONTWAIT;
            if (o->write) {
                r = sendmsg(o->fd, &m, fl | MSG_NOSIGNAL);
            } else {
                r = recvmsg(o->fd, &m, fl);
            }
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
        case M_FILE:
            return o->write ? writev(o->fd, o->iov, o->iovcnt) : readv(o->fd, o->iov, o->iovcnt);
        }
    }
}

/* The loop every call of the family shares. */
static ssize_t run(ctx_t *c, struct op *o)
{
    int e = ctx_err(c);
    if (e != 0) {
        errno = e;
        return -1;
    }
    if (o->iovcnt < 0 || o->iovcnt > IOV_MAX || (o->iov == NULL && o->iovcnt != 0)) {
        errno = EINVAL;
        return -1;
    }
    int waited = 0;
    for (;;) {
        if (o->mode == M_PLAIN && !waited) {
            /* A blocking fd without RWF_NOWAIT: the call itself would
             * block, so wait for readiness first. */
            e = wait_fd(c, o->fd, o->write ? POLLOUT : POLLIN);
            if (e != 0) {
                errno = e;
                return -1;
            }
        }
        waited = 0;
        ssize_t r = attempt(o);
        if (r >= 0)
            return r;
        int err = errno;
        if (err == EINTR) {
            e = ctx_err(c);
            if (e != 0) {
                errno = e;
                return -1;
            }
            continue;
        }
        if (err != EAGAIN && err != EWOULDBLOCK) {
            errno = err;
            return -1;
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
        e = wait_fd(c, o->fd, o->write ? POLLOUT : POLLIN);
        if (e != 0) {
            errno = e;
            return -1;
        }
        waited = 1;
    }
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
    return run_one(c, fd, (void *)(uintptr_t)buf, n, 1, M_SOCK, 0, 0);
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
    struct op o = { fd, 1, iov, iovcnt, 0, 0, M_SOCK, 0 };
    return run(c, &o);
}

ssize_t ctx_recv(ctx_t *c, int fd, void *buf, size_t n, int flags)
{
    return run_one(c, fd, buf, n, 0, M_SOCK, flags, 1);
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
    int e = ctx_err(c);
    if (e != 0) {
        errno = e;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    /* accept4 has no per-call "do not block" flag: on a blocking socket it
     * may only be called once poll says a connection waits. */
    int wait_first = !(fl & O_NONBLOCK);
    for (;;) {
        if (wait_first) {
            e = wait_fd(c, fd, POLLIN);
            if (e != 0) {
                errno = e;
                return -1;
            }
        }
        int s = accept4(fd, addr, len, flags);
        if (s >= 0)
            return s;
        if (errno == EINTR) {
            e = ctx_err(c);
            if (e != 0) {
                errno = e;
                return -1;
            }
            continue;
        }
        /* ECONNABORTED: a connection died in the queue; accept(2) on a
         * blocking socket would wait for the next one, and so do we. */
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED)
            return -1;
        if (!wait_first) {
            e = wait_fd(c, fd, POLLIN);
            if (e != 0) {
                errno = e;
                return -1;
            }
        }
    }
}

/* Waits for a connection attempt under way (EINPROGRESS) to finish. */
static int connect_wait(ctx_t *c, int fd)
{
    int e = wait_fd(c, fd, POLLOUT);
    if (e != 0) {
        errno = e;
        return -1;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        return -1;
    if (soerr != 0) {
        errno = soerr;
        return -1;
    }
    return 0;
}

/* The AfterFunc that cuts a blocking connect short: shutdown(2) of a socket
 * whose SYN is unanswered aborts the attempt and wakes the connecting
 * thread. */
static void abort_connect(void *arg)
{
    shutdown(*(int *)arg, SHUT_RDWR);
}

int ctx_connect(ctx_t *c, int fd, const struct sockaddr *addr, socklen_t len)
{
    if (c == NULL || addr == NULL) {
        errno = EINVAL;
        return -1;
    }
    int e = ctx_err(c);
    if (e != 0) {
        errno = e;
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    if ((fl & O_NONBLOCK) || never_done(c)) {
        int r = connect(fd, addr, len);
        if (r == 0)
            return 0;
        if (errno != EINPROGRESS && errno != EINTR)
            return -1;
        /* EINTR: the attempt goes on in the background, as EINPROGRESS. */
        return connect_wait(c, fd);
    }
    /* A blocking socket: let connect(2) block and have ctx's end abort it.
     * If the AfterFunc ran at all, the attempt counts as abandoned, even
     * when connect won the race: the socket may have been shut down. */
    int fdcopy = fd;
    ctx_after_t *stop;
    e = ctx_after_func(c, abort_connect, &fdcopy, &stop);
    if (e != 0) {
        errno = e;
        return -1;
    }
    int r = connect(fd, addr, len);
    int err = errno;
    if (r != 0 && err == EINTR && ctx_err(c) == 0) {
        r = connect_wait(c, fd);
        err = errno;
    }
    if (!ctx_after_stop(stop)) {
        errno = ctx_err(c);
        return -1;
    }
    if (r != 0)
        errno = err;
    return r;
}
