/* SPDX-License-Identifier: MIT */

/*
 * faultproxy: a TCP proxy on loopback that the fault tests steer.
 *
 *   faultproxy --listen 127.0.0.1:0 --target HOST:PORT
 *
 * prints "port N" (the port it listens on) as its first line on stdout, then
 * reads one command a line from stdin and answers each with "ok" (or
 * "error ...") once the command has taken effect:
 *
 *   pass       forward both ways (the initial mode).
 *   dark       forward nothing either way, on open and new connections, and
 *              keep every socket open: a partition or a hung host.  New
 *              connections complete in the kernel's backlog and get nothing.
 *   heal       the same as pass.  Nothing held while dark is dropped: bytes
 *              the proxy had read are delivered, bytes still in the kernel
 *              buffers are read and delivered, connections waiting in the
 *              backlog are accepted and connected to the target.
 *   reset      RST both sides of every open connection (SO_LINGER 0).
 *   halfclose  shut down the write side towards the client on every open
 *              connection; the client's bytes are still read and forwarded,
 *              the target's answers are read and dropped.
 *   trickle MS forward at most one byte every MS ms in each direction of
 *              every connection; the proxy then reads one byte at a time, so
 *              that the senders feel the back-pressure.
 *   kill       close every open connection (FIN both sides).
 *   count      answers "ok N", the number of open client connections.
 *
 * EOF on stdin ends the proxy, which is how it dies with a test that
 * aborts: the test's end of the pipe closes with it.
 *
 * One thread, one poll loop, libc only.  The target connection is made with a
 * blocking connect(), which is immediate on loopback (or refused at once).
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FP_BUF      65536
#define FP_MAX_CONN 256

enum fp_mode { FP_PASS, FP_DARK, FP_TRICKLE };

/* One direction of a connection: bytes read from `from`, not yet written to `to`. */
struct fp_dir {
    char buf[FP_BUF];
    size_t off, len;
    bool eof;       /* `from` said EOF; shut down `to` once buf is flushed */
    bool shut;      /* `to` was shut down for writing */
    bool discard;   /* `to` may not be written (halfclose): read and drop */
    int64_t due_ms; /* trickle: when the next byte may go */
};

struct fp_conn {
    int cfd, sfd;
    struct fp_dir up;   /* client -> target */
    struct fp_dir down; /* target -> client */
};

static struct fp_conn *conns[FP_MAX_CONN];
static int nconns;
static enum fp_mode mode = FP_PASS;
static int trickle_ms;
static struct addrinfo *target;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int split_hostport(const char *s, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || !colon[1])
        return -1;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hostlen || strlen(colon + 1) >= portlen)
        return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    strcpy(port, colon + 1);
    return 0;
}

static struct addrinfo *resolve(const char *hostport, bool passive)
{
    char host[256], port[32];
    if (split_hostport(hostport, host, sizeof host, port, sizeof port) != 0) {
        fprintf(stderr, "faultproxy: bad address '%s' (want HOST:PORT)\n", hostport);
        return NULL;
    }
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = passive ? AI_PASSIVE : 0 };
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "faultproxy: %s: %s\n", hostport, gai_strerror(rc));
        return NULL;
    }
    return ai;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Closes both sides; with `rst` the kernel sends RST instead of FIN. */
static void conn_close(int i, bool rst)
{
    struct fp_conn *c = conns[i];
    if (rst) {
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(c->cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        setsockopt(c->sfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    close(c->cfd);
    close(c->sfd);
    free(c);
    conns[i] = conns[--nconns];
}

static void accept_one(int lfd)
{
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    if (nconns == FP_MAX_CONN) {
        close(cfd);
        return;
    }
    int sfd = socket(target->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sfd < 0 || connect(sfd, target->ai_addr, target->ai_addrlen) != 0) {
        /* The target is down: the client sees its connection reset, as it
         * would talking to the target itself. */
        struct linger lg = { .l_onoff = 1, .l_linger = 0 };
        setsockopt(cfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        close(cfd);
        if (sfd >= 0)
            close(sfd);
        return;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_nonblock(cfd);
    set_nonblock(sfd);
    struct fp_conn *c = calloc(1, sizeof *c);
    if (!c) {
        close(cfd);
        close(sfd);
        return;
    }
    c->cfd = cfd;
    c->sfd = sfd;
    conns[nconns++] = c;
}

/* How many bytes a read may take now, given the mode. */
static size_t read_room(const struct fp_dir *d)
{
    if (d->eof)
        return 0;
    /* An empty buffer starts again at its beginning (pump resets off). */
    if (d->len == 0)
        return mode == FP_TRICKLE ? 1 : FP_BUF;
    if (mode == FP_TRICKLE)
        return 0;
    return FP_BUF - (d->off + d->len);
}

static bool want_write(const struct fp_dir *d, int64_t now)
{
    if (d->len == 0 || d->discard || d->shut)
        return false;
    return mode != FP_TRICKLE || now >= d->due_ms;
}

/* Whether the poll should wait for d's receiver to take bytes; when a
 * trickle holds d's bytes back, *timeout (ms, -1 for none) is lowered to
 * when the next one is due. */
static bool write_due(const struct fp_dir *d, int64_t now, int *timeout)
{
    if (d->len == 0 || d->shut)
        return false;
    if (want_write(d, now))
        return true;
    if (mode == FP_TRICKLE) {
        int64_t w = d->due_ms - now;
        *timeout = *timeout < 0 || w < *timeout ? (int)w : *timeout;
    }
    return false;
}

/* Moves bytes of one direction.  Returns -1 when the connection must go. */
static int pump(struct fp_dir *d, int from, int to, short rev_from, short rev_to, int64_t now)
{
    if ((rev_from & (POLLIN | POLLHUP | POLLERR)) && read_room(d) > 0) {
        if (d->len == 0)
            d->off = 0;
        ssize_t n = read(from, d->buf + d->off + d->len, read_room(d));
        if (n > 0) {
            if (d->discard)
                d->len = 0;
            else
                d->len += (size_t)n;
        } else if (n == 0) {
            d->eof = true;
        } else if (errno != EAGAIN && errno != EINTR) {
            return -1;
        }
    }
    if ((rev_to & (POLLOUT | POLLERR)) && want_write(d, now)) {
        size_t len = mode == FP_TRICKLE ? 1 : d->len;
        ssize_t n = write(to, d->buf + d->off, len);
        if (n > 0) {
            d->off += (size_t)n;
            d->len -= (size_t)n;
            if (d->len == 0)
                d->off = 0;
            if (mode == FP_TRICKLE)
                d->due_ms = now + trickle_ms;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            return -1;
        }
    }
    if (d->eof && d->len == 0 && !d->shut) {
        shutdown(to, SHUT_WR);
        d->shut = true;
    }
    return 0;
}

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void command(char *line)
{
    char *nl = strpbrk(line, "\r\n");
    if (nl)
        *nl = 0;
    char *arg = strchr(line, ' ');
    if (arg)
        *arg++ = 0;
    if (!strcmp(line, "pass") || !strcmp(line, "heal")) {
        mode = FP_PASS;
    } else if (!strcmp(line, "dark")) {
        mode = FP_DARK;
    } else if (!strcmp(line, "trickle")) {
        char *end = NULL;
        long ms = arg ? strtol(arg, &end, 10) : -1;
        if (!arg || end == arg || *end || ms < 1 || ms > 3600000) {
            reply("error trickle wants a period in ms (1..3600000)");
            return;
        }
        trickle_ms = (int)ms;
        int64_t due = now_ms() + ms;
        for (int i = 0; i < nconns; i++)
            conns[i]->up.due_ms = conns[i]->down.due_ms = due;
        mode = FP_TRICKLE;
    } else if (!strcmp(line, "reset") || !strcmp(line, "kill")) {
        bool rst = line[0] == 'r';
        while (nconns > 0)
            conn_close(nconns - 1, rst);
    } else if (!strcmp(line, "halfclose")) {
        for (int i = 0; i < nconns; i++) {
            shutdown(conns[i]->cfd, SHUT_WR);
            conns[i]->down.shut = conns[i]->down.discard = true;
            conns[i]->down.len = 0;
        }
    } else if (!strcmp(line, "count")) {
        reply("ok %d", nconns);
        return;
    } else {
        reply("error unknown command '%s'", line);
        return;
    }
    reply("ok");
}

static void usage(void)
{
    fprintf(stderr, "usage: faultproxy --listen HOST:PORT --target HOST:PORT\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *listen_at = NULL, *target_at = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_at = argv[++i];
        else if (!strcmp(argv[i], "--target") && i + 1 < argc)
            target_at = argv[++i];
        else
            usage();
    }
    if (!listen_at || !target_at)
        usage();
    signal(SIGPIPE, SIG_IGN);

    struct addrinfo *la = resolve(listen_at, true);
    target = resolve(target_at, false);
    if (!la || !target)
        return 2;
    int lfd = socket(la->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, la->ai_addr, la->ai_addrlen) != 0 || listen(lfd, 128) != 0) {
        perror("faultproxy: listen");
        return 2;
    }
    set_nonblock(lfd);
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    int port = sa.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&sa)->sin6_port)
                                        : ntohs(((struct sockaddr_in *)&sa)->sin_port);
    freeaddrinfo(la);
    reply("port %d", port);

    static char line[4096];
    size_t linelen = 0;
    static struct pollfd pfd[2 + 2 * FP_MAX_CONN];
    for (;;) {
        int64_t now = now_ms();
        int timeout = -1;
        int n = 0;
        pfd[n++] = (struct pollfd){ .fd = 0, .events = POLLIN };
        /* While dark the listener and the connections are left out of the
         * poll set altogether: even POLLHUP must not make the proxy act. */
        pfd[n++] = (struct pollfd){ .fd = mode == FP_DARK ? -1 : lfd, .events = POLLIN };
        for (int i = 0; i < nconns; i++) {
            struct fp_conn *c = conns[i];
            short ce = 0, se = 0;
            if (mode != FP_DARK) {
                if (read_room(&c->up))
                    ce |= POLLIN;
                if (read_room(&c->down))
                    se |= POLLIN;
                if (write_due(&c->up, now, &timeout))
                    se |= POLLOUT;
                if (write_due(&c->down, now, &timeout))
                    ce |= POLLOUT;
            }
            pfd[n++] = (struct pollfd){ .fd = mode == FP_DARK ? -1 : c->cfd, .events = ce };
            pfd[n++] = (struct pollfd){ .fd = mode == FP_DARK ? -1 : c->sfd, .events = se };
        }
        if (poll(pfd, (nfds_t)n, timeout) < 0) {
            if (errno == EINTR)
                continue;
            perror("faultproxy: poll");
            return 1;
        }
        now = now_ms();
        /* Connections first, with the poll set's indices, then the listener
         * and the commands, which may reshape the table. */
        if (mode != FP_DARK) {
            for (int i = nconns - 1; i >= 0; i--) {
                struct fp_conn *c = conns[i];
                short cr = pfd[2 + 2 * i].revents, sr = pfd[3 + 2 * i].revents;
                if (pump(&c->up, c->cfd, c->sfd, cr, sr, now) != 0 ||
                    pump(&c->down, c->sfd, c->cfd, sr, cr, now) != 0) {
                    /* One side failed (reset): the other side sees a reset too. */
                    conn_close(i, true);
                    continue;
                }
                /* Both directions ended; or, after halfclose, the client
                 * ended its side and nothing it sent is left to forward. */
                if ((c->up.shut && c->down.shut && c->down.eof) || (c->up.shut && c->down.discard))
                    conn_close(i, false);
            }
            if (pfd[1].revents & POLLIN)
                for (int k = 0; k < 16; k++)
                    accept_one(lfd);
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(0, line + linelen, sizeof line - 1 - linelen);
            if (r <= 0 && !(r < 0 && errno == EINTR))
                break;
            if (r > 0)
                linelen += (size_t)r;
            char *nl;
            while ((nl = memchr(line, '\n', linelen)) != NULL) {
                *nl = 0;
                command(line);
                size_t used = (size_t)(nl + 1 - line);
                memmove(line, nl + 1, linelen - used);
                linelen -= used;
            }
            if (linelen == sizeof line - 1)
                linelen = 0; /* an overlong line: dropped */
        }
    }
    while (nconns > 0)
        conn_close(nconns - 1, false);
    close(lfd);
    freeaddrinfo(target);
    return 0;
}
