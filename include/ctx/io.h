/* SPDX-License-Identifier: MIT */

/*
 * <ctx/io.h>: blocking I/O that a context cuts short.
 *
 * Go gives every network call a context: net.Dialer.DialContext, deadlines
 * on a conn, and an HTTP request whose context ends when the client hangs
 * up.  These calls give C the same.  They are part of libctx itself (no
 * library beyond libc and pthreads) and need POSIX.  What follows describes
 * the Linux backend; the portable one (other systems, or -DCTX_PORTABLE=ON)
 * keeps every contract but waits with poll first on more file types and
 * avoids SIGPIPE differently: docs/platforms.md.
 *
 * Conventions shared by every call below.
 *
 *   Results.  Each call keeps the result convention of its POSIX namesake: a
 *   short count is a success, as in read(2).  When the context ends before
 *   any byte moved, the call returns -1 with errno = ctx_err(ctx)
 *   (CTX_CANCELED or CTX_DEADLINE_EXCEEDED; ctx_cause() says why).  Bytes
 *   already moved are never lost: the count is returned instead.  A context
 *   that is already done fails at once, without touching the fd.  NULL ctx
 *   or buffer gives EINVAL; a closed or invalid fd gives EBADF, as the
 *   system call says.  EINTR is retried inside.
 *
 *   Flags.  The calls never change an fd's flags (O_NONBLOCK stays as it
 *   was).  They wait, as long as ctx allows, where the POSIX call would
 *   block, on blocking and non-blocking fds alike; only an explicit
 *   MSG_DONTWAIT passed to ctx_recv/ctx_send keeps its "never wait" meaning,
 *   and MSG_WAITALL passed to ctx_recv on a stream socket waits for all n
 *   bytes as recv(2) does (fewer only at end of file, an error or ctx's
 *   end, and then the count of what arrived).
 *
 *   How they wait.  The operation is first tried without blocking and
 *   without changing the fd: reads with preadv2(RWF_NOWAIT), which works on
 *   pipes, FIFOs and sockets alike; writes with pwritev2(RWF_NOWAIT |
 *   RWF_NOSIGNAL), which does the same and never raises SIGPIPE on a socket
 *   (Linux 6.18 and later; on older kernels writes try send(MSG_DONTWAIT |
 *   MSG_NOSIGNAL) first and, when that says ENOTSOCK, pwritev2(RWF_NOWAIT):
 *   two system calls for a pipe).  When data (or room) is ready that is the
 *   whole call: one system call, no fd made, no poll, no allocation, and
 *   nothing remembered about the fd, whose number may be reused for another
 *   file by the next call.  recv/send go to the socket call at once, which
 *   on a socket is a little cheaper than the vectored preadv2/pwritev2.
 *   Only when the operation would block does the call poll(2) on the fd
 *   and on ctx_done_fd(ctx), then try again.  A context that can never be
 *   done (ctx_background(), ctx_without_cancel()) is waited for
 *   with no done fd at all.  The first wait on a cancellable context creates
 *   its done fd (an eventfd, kept until the context is freed); when no fd
 *   can be made the call fails with that errno (EMFILE, ENFILE, ENOMEM) and
 *   nothing moved.
 *
 *   The one case that can still block.  Because the retry after a wait is
 *   again non-blocking, several threads reading one fd never get stuck when
 *   another thread took the data first.  That holds wherever the kernel
 *   supports RWF_NOWAIT for the file type (pipes, FIFOs and sockets on
 *   current Linux; checked on 6.18) and for all socket calls.  Regular
 *   files and block devices, which poll(2) always calls ready, get the
 *   plain system call, as read(2) would.  It does not hold for (a)
 *   ctx_accept on a BLOCKING listening socket, since accept4 has no
 *   per-call non-blocking flag, and (b) the read and write calls on a
 *   blocking fd whose file type refuses RWF_NOWAIT (terminals, some
 *   character devices; pipes and FIFOs on kernels without RWF_NOWAIT for
 *   them).  There the call waits with poll and then makes the plain system
 *   call.  A read can block, past the context's end, when another thread
 *   consumed the data in between.  A write is cut to PIPE_BUF bytes per
 *   call (a short count, as write(2) may give; ctx_write_all goes on), which
 *   a pipe or FIFO that polls writable always takes at once; a terminal
 *   promises less, and a write to one whose reader has fallen behind can
 *   block until the reader makes room.  Give such fds O_NONBLOCK (the
 *   calls still wait for you) or keep one reader and one writer per fd.
 *
 *   SIGPIPE.  On sockets every write-side call (ctx_write, ctx_writev,
 *   ctx_send, ctx_write_all) writes with MSG_NOSIGNAL or RWF_NOSIGNAL: a
 *   peer that reset the connection gives EPIPE or ECONNRESET, never a
 *   SIGPIPE that kills the process.  On pipes and FIFOs the calls behave as
 *   write(2): a write to a pipe with no reader raises SIGPIPE (the kernel
 *   raises it, in the calling thread, on a second attempt that the first
 *   one's EPIPE leads to) unless the program ignores it, and fails with
 *   EPIPE.
 *
 * Errors.  A call that fails once ctx has ended fails with ctx_err(ctx)
 * (CTX_CANCELED or CTX_DEADLINE_EXCEEDED), whatever the system call said;
 * any other errno, ETIMEDOUT from TCP included, is reported only while
 * ctx_err(ctx) == 0.  So `err == ctx_err(ctx)` tells a context's end from
 * a kernel or peer timeout, and ctx_strerror_of(ctx, err) words it
 * accordingly (ctx.h, "A context's end and other timeouts").
 *
 * Threading.  Every call is safe from any thread; several threads may wait
 * on the same context at once (they share its one done fd).
 */
#ifndef CTX_IO_H
#define CTX_IO_H

#include <ctx.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* poll(2) that also returns when ctx is done.  Returns the number of ready
 * entries of fds (as poll does), 0 when timeout passed first, or -1 with
 * errno = ctx_err(ctx) when ctx ended first (also when it ended at the same
 * moment as an fd turned ready), or poll's errno.  timeout is a duration;
 * CTX_FOREVER waits with no limit besides ctx's deadline, which bounds the
 * wait like a timeout but reports CTX_DEADLINE_EXCEEDED, not 0.  A negative
 * timeout other than CTX_FOREVER is treated as 0.  nfds may be 0 (fds may
 * then be NULL): a sleep that ctx cuts short.  Retries EINTR.  With more
 * than 15 fds it allocates a copy of the array (ENOMEM when it cannot). */
CTX_EXPORT int ctx_poll(ctx_t *ctx, struct pollfd *fds, nfds_t nfds, ctx_duration_t timeout);

/* read(2), write(2), readv(2), writev(2), recv(2) and send(2) that wait as
 * long as ctx allows.  See the conventions above. */
CTX_EXPORT ssize_t ctx_read(ctx_t *ctx, int fd, void *buf, size_t n);
CTX_EXPORT ssize_t ctx_write(ctx_t *ctx, int fd, const void *buf, size_t n);
CTX_EXPORT ssize_t ctx_readv(ctx_t *ctx, int fd, const struct iovec *iov, int iovcnt);
CTX_EXPORT ssize_t ctx_writev(ctx_t *ctx, int fd, const struct iovec *iov, int iovcnt);
CTX_EXPORT ssize_t ctx_recv(ctx_t *ctx, int fd, void *buf, size_t n, int flags);
CTX_EXPORT ssize_t ctx_send(ctx_t *ctx, int fd, const void *buf, size_t n, int flags);

/* ctx_accept's flags: SOCK_CLOEXEC and SOCK_NONBLOCK where the system
 * has them, values of the library's own elsewhere (macOS).  The portable
 * backend sets them with fcntl(2) right after accept(2). */
#if defined(SOCK_CLOEXEC) && defined(SOCK_NONBLOCK)
#define CTX_SOCK_CLOEXEC  SOCK_CLOEXEC
#define CTX_SOCK_NONBLOCK SOCK_NONBLOCK
#else
#define CTX_SOCK_CLOEXEC  0x10000000
#define CTX_SOCK_NONBLOCK 0x20000000
#endif

/* accept4(2) that waits as long as ctx allows.  flags are accept4's
 * (CTX_SOCK_CLOEXEC, CTX_SOCK_NONBLOCK; any other bit is EINVAL); the new
 * socket is blocking without CTX_SOCK_NONBLOCK, whatever the listening
 * socket's flags.  Returns the new fd or -1 with errno.  A
 * connection is never lost: when ctx ends after accept4 succeeded, the
 * descriptor is still returned.  See "The one case that can still block"
 * above for blocking listening sockets shared by several threads. */
CTX_EXPORT int ctx_accept(ctx_t *ctx, int fd, struct sockaddr *addr, socklen_t *len, int flags);

/* connect(2) that waits as long as ctx allows.  0 once connected.  On a ctx
 * end (-1, errno = ctx_err(ctx)) the connection attempt is abandoned and fd
 * must be closed, as after a failed connect(2).  A non-blocking socket is
 * waited for with poll.  On a blocking socket the call lowers the socket's
 * SO_SNDTIMEO (which Linux's connect(2) honours) to one clock tick for the
 * connect(2) itself and restores it before returning; the rest of a TCP
 * handshake is then waited for with poll, and an AF_UNIX listener whose
 * backlog is full is retried every 10 ms until it has room or ctx ends.  A
 * thread reading SO_SNDTIMEO of that socket meanwhile sees the short value.
 * The call makes no allocation and leaves nothing behind on the context. */
CTX_EXPORT int ctx_connect(ctx_t *ctx, int fd, const struct sockaddr *addr, socklen_t len);

/* Whole buffers (Go's io.ReadFull and net.Conn.Write).  Return 0 when all n
 * bytes moved; else an errno-style code: ctx_err(ctx) when ctx ended first,
 * ENODATA when ctx_read_full met end of file first (Go's
 * io.ErrUnexpectedEOF), or the system call's error (EPIPE, ECONNRESET, ...;
 * EINVAL for a NULL ctx or buffer).  *done, if not NULL, always receives the
 * number of bytes moved, so nothing is lost on any path.  errno is left
 * unspecified. */
CTX_EXPORT int ctx_read_full(ctx_t *ctx, int fd, void *buf, size_t n, size_t *done);
CTX_EXPORT int ctx_write_all(ctx_t *ctx, int fd, const void *buf, size_t n, size_t *done);

/* Go's net.Dialer.DialContext for TCP.  Resolves host (a name or a numeric
 * address; NULL means the loopback address) and port (a number or a
 * service name), then connects to each address in turn until one answers.
 * Numeric addresses are parsed on the calling thread.  A name is looked up
 * on a resolver thread that the call waits for as long as ctx allows: the
 * call returns as soon as ctx ends, even while a name server has not
 * answered; the abandoned lookup finishes on its own and frees its result
 * itself.  When ctx has a deadline and several addresses are left, each
 * attempt gets its share of the time left, but at least 2 s (Go's partial
 * deadline), so an address that never answers cannot use up the whole
 * deadline.  Returns a connected, blocking, close-on-exec socket, or -1 with
 * errno: ctx_err(ctx); the last attempt's error (ECONNREFUSED, ...); ENOENT
 * when the name does not resolve; EAGAIN for a temporary resolver failure;
 * EINVAL for a NULL ctx or port; ENOMEM. */
CTX_EXPORT int ctx_dial(ctx_t *ctx, const char *host, const char *port);

/* Go's net/http "background read": a child of parent that is cancelled,
 * with cause ECONNRESET and the message "client disconnected", once the
 * peer of the connected socket fd closes its end (or shuts down its
 * writing side) or the connection breaks.  It watches without reading, so
 * a pipelined request is never consumed: one library thread waits in epoll
 * (EPOLLRDHUP, EPOLLHUP, EPOLLERR; never EPOLLIN) for every watched socket
 * of the process, so a watch costs no thread and no fd of its own (the
 * portable backend polls them with poll(2): docs/platforms.md).  The
 * watch ends when the context is done (for any reason) or freed.  The
 * watch knows which socket it watches (its inode and, where the kernel
 * has it, its SO_COOKIE), not just the number: the program may close fd
 * before the context ends, and when the number goes to a new connection
 * that is watched in turn, the new connection's hang-up ends only the new
 * contexts, never the old one (which then simply waits for its own end).
 * Several contexts may watch one fd.  On a hang-up, AfterFunc callbacks of the context and its
 * descendants run on the library's callback threads, as for a deadline,
 * never on the watcher thread.  Returns a new reference, or NULL with
 * errno: EINVAL (NULL parent, negative fd), EBADF, ENOTSOCK or EPERM
 * (epoll refuses the fd), ENOMEM, EMFILE (no fd for the watcher's epoll
 * instance), EAGAIN (its thread cannot start).  On a parent that is
 * already done the child is done at birth and nothing is watched.
 *
 * fork(2): the child process gets its own watcher on its first call of
 * ctx_with_peer_close; the watches it inherited resume then. */
CTX_EXPORT ctx_t *ctx_with_peer_close(ctx_t *parent, int fd, ctx_cancel_t **cancel);

#ifdef __cplusplus
}
#endif

#endif /* CTX_IO_H */
