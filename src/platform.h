/* SPDX-License-Identifier: MIT */

/*
 * The platform layer: every system call the library makes that POSIX does
 * not give everywhere goes through one of these functions.  There are two
 * implementations, and CMake compiles exactly one of them:
 *
 *   src/linux/   Linux (glibc or musl): eventfd, epoll, futex, preadv2 and
 *                pwritev2 with RWF_NOWAIT, accept4, pipe2, getrandom,
 *                MSG_NOSIGNAL, membarrier.
 *   src/posix/   everything else, and Linux with -DCTX_PORTABLE=ON: only
 *                POSIX.1-2017 calls plus what macOS and FreeBSD both have
 *                (poll, pipes, condition variables, fcntl, getentropy or
 *                /dev/urandom, MSG_DONTWAIT, SO_NOSIGPIPE where present).
 *
 * docs/platforms.md says what each backend costs and where they differ.
 * Shared files call these functions and never test for an operating
 * system themselves.
 */
#ifndef CTX_PLATFORM_H
#define CTX_PLATFORM_H

#include "internal.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

/* ---- a static mutex initializer for short, hot critical sections:
 * glibc's adaptive mutex (it spins a little before it sleeps) where the C
 * library has one, the default mutex elsewhere (musl, macOS, FreeBSD). */
#include <pthread.h>
#ifdef PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
#define CTX__PLAT_SPIN_MUTEX_INITIALIZER PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP
#else
#define CTX__PLAT_SPIN_MUTEX_INITIALIZER PTHREAD_MUTEX_INITIALIZER
#endif

/* ---- descriptors.  Each returns 0 (or the new fd) or -1 with errno. */

/* pipe(2) with close-on-exec set on both ends. */
int ctx__plat_pipe_cloexec(int fds[2]);

/* socket(2) of a new close-on-exec, non-blocking socket. */
int ctx__plat_socket_nb(int domain, int type, int protocol);

/* accept(2) with accept4's flags, spelled CTX_SOCK_CLOEXEC and
 * CTX_SOCK_NONBLOCK (<ctx/io.h>); any other bit is EINVAL.  Like Linux's
 * accept4, the new socket is blocking unless CTX_SOCK_NONBLOCK is given,
 * whatever the listening socket's flags (BSD's accept copies them). */
int ctx__plat_accept(int fd, struct sockaddr *addr, socklen_t *len, int flags);

/* ---- done fds (core/wait.c).  open makes a readable end (rfd) that turns
 * readable (POLLIN) once signal has been called on the writing end (wfd),
 * and stays so; both close-on-exec and non-blocking; rfd == wfd where one
 * object does both (an eventfd).  open is async-signal-safe: fork's child
 * handler calls it. */
int ctx__plat_event_open(int *rfd, int *wfd);
void ctx__plat_event_signal(int wfd);

/* ---- one non-blocking attempt of the I/O calls (io/io.c).  Neither call
 * changes the fd's flags.
 *
 * rw_nowait: readv or writev at the file position that never blocks (Linux:
 * preadv2/pwritev2 with RWF_NOWAIT).  -1 with EOPNOTSUPP or ENOSYS where
 * the platform or this file type has no such call; the caller then tries
 * the socket call or waits with poll first.
 *
 * sock_nowait: recv/send (recvmsg/sendmsg for several buffers) with flags |
 * MSG_DONTWAIT.  A send never raises SIGPIPE: Linux passes MSG_NOSIGNAL;
 * the portable backend sets SO_NOSIGPIPE where the system has it, and
 * elsewhere blocks SIGPIPE in the calling thread for the call and takes
 * back the one the call raised (posix/platform.c explains).  ENOTSOCK for
 * an fd that is not a socket, as the call says. */
ssize_t ctx__plat_rw_nowait(int fd, const struct iovec *iov, int iovcnt, int write);
ssize_t ctx__plat_sock_nowait(int fd, const struct iovec *iov, int iovcnt, int flags, int write);

/* ---- one non-blocking write that never raises SIGPIPE, whatever the file
 * type (Linux 6.18 and later: pwritev2 with RWF_NOWAIT | RWF_NOSIGNAL, which
 * pipes, FIFOs and sockets take).  On a broken pipe or socket it fails
 * with EPIPE and no signal.  -1 with EOPNOTSUPP or ENOSYS where the kernel
 * lacks the flag or the file type refuses RWF_NOWAIT.
 *
 * nosig_state says what is known of the kernel: 1 it takes RWF_NOSIGNAL, -1
 * it does not (always -1 on the portable backend), 0 not known yet.
 * nosig_probe finds out when it is not known yet, once per process, with a
 * pipe of its own, and returns the state; 0 when that pipe cannot be made
 * now (no fd), and then it tries again at the next call.  What is kept is a
 * fact about the kernel, never about an fd. */
ssize_t ctx__plat_write_nosig(int fd, const struct iovec *iov, int iovcnt);
int ctx__plat_nosig_state(void);
int ctx__plat_nosig_probe(void);

/* ---- n bytes from the system's random source (getrandom, getentropy or
 * /dev/urandom).  0 or an errno. */
int ctx__plat_random(void *buf, size_t n);

/* n bytes from /dev/urandom: ctx__plat_random's fallback where the system
 * call it prefers is missing.  In src/posix/urandom.c, which both backends
 * compile, as it needs nothing beyond POSIX.  0 or an errno. */
int ctx__plat_urandom(void *buf, size_t n);

/* ---- names the calling thread where the system can (at most 15 bytes
 * kept); elsewhere nothing. */
void ctx__plat_thread_name(const char *name);

/* ---- a process-wide memory barrier for fork.c's handshake.  init returns
 * nonzero when membarrier works here (Linux), after which
 * ctx__plat_membarrier runs a full barrier on every thread of the process;
 * 0 means holders must use real fences. */
int ctx__plat_membarrier_init(void);
void ctx__plat_membarrier(void);

/* ---- the peer-close watch set (io/peer.c), used by one watcher thread.
 * A socket is watched for its peer closing or shutting down its writing
 * side, for a hang-up and for an error, never for data, and reported once
 * (one-shot) with the key it was added with.
 *
 * open: makes the set (0 or an errno); nothing when it exists.
 * add: watches fd with key, or re-arms it with a new key when fd is
 *   watched already or reported already.  0 or an errno.  Called from any
 *   thread.
 * del: stops watching fd.
 * wait: blocks until at least one socket is reported (or the wait is
 *   interrupted), puts up to max keys in keys and returns their count,
 *   which may be 0.  A key may be stale (its fd dropped or re-added
 *   meanwhile): the caller checks.
 * forget: fork(2) child: drops the set without touching the parent's
 *   (the caller adds the inherited sockets again after open).
 * has: whether fd is in the set: added and not deleted since, reported
 *   or not (for the tests).
 * wake: makes the wait under way, or the next one, return (with no key
 *   when nothing else is reported); for ctx_shutdown.  0 or an errno.
 * The calls are made under peer.c's lock, except wait. */
int ctx__plat_watch_open(void);
int ctx__plat_watch_add(int fd, uint64_t key);
void ctx__plat_watch_del(int fd);
int ctx__plat_watch_wait(uint64_t *keys, int max);
void ctx__plat_watch_forget(void);
int ctx__plat_watch_has(int fd);
int ctx__plat_watch_wake(void);

#endif /* CTX_PLATFORM_H */
