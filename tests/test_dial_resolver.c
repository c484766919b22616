/* SPDX-License-Identifier: MIT */

/*
 * ctx_dial with names, in a private mount and network namespace so that
 * nothing here can reach a real name server: /etc/resolv.conf, /etc/hosts
 * and /etc/nsswitch.conf are bind-mounted (in this process's namespace
 * only) over files that point the resolver at a UDP socket this test owns
 * on 127.0.0.1:53, inside a network namespace with only the loopback
 * interface.  The socket answers "no such name" for names whose first label
 * starts with "nx" and never answers anything else, which is exactly a
 * name server that hangs.
 *
 * Checks: a name from the hosts file dials; a name the server denies gives
 * ENOENT; a lookup that never gets an answer is cut short by the context's
 * deadline and by a cancel, promptly, while the server saw the query; the
 * abandoned lookups clean up after themselves (ASan's leak check at exit).
 *
 * Skipped (exit 77) when the namespaces cannot be made (no privilege, no
 * user namespaces).
 */
#include "io_helpers.h"

#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(text, f);
    return fclose(f);
}

static void enter_namespaces(void)
{
    if (unshare(CLONE_NEWNS | CLONE_NEWNET) != 0) {
        uid_t uid = getuid();
        gid_t gid = getgid();
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0)
            SKIP("cannot make a private mount and network namespace: %s", strerror(errno));
        char m[64];
        write_file("/proc/self/setgroups", "deny");
        snprintf(m, sizeof m, "0 %d 1", (int)uid);
        if (write_file("/proc/self/uid_map", m) != 0)
            SKIP("cannot map the user id in a user namespace");
        snprintf(m, sizeof m, "0 %d 1", (int)gid);
        if (write_file("/proc/self/gid_map", m) != 0)
            SKIP("cannot map the group id in a user namespace");
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        SKIP("cannot make the mounts private: %s", strerror(errno));
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    CHECK_EQ_INT(ioctl(s, SIOCGIFFLAGS, &ifr), 0);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
        SKIP("cannot bring up lo in the new network namespace: %s", strerror(errno));
    close(s);

    static char dir[] = "/tmp/ctx-resolver-XXXXXX";
    CHECK_NOT_NULL(mkdtemp(dir));
    const char *files[3][2] = {
        { "resolv.conf", "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n" },
        { "hosts", "127.0.0.1 localhost\n127.0.0.1 dialtest.example\n"
                   "127.0.0.2 two.example\n127.0.0.3 two.example\n" },
        { "nsswitch.conf", "hosts: files dns\n" },
    };
    for (int i = 0; i < 3; i++) {
        char src[128], dst[64];
        snprintf(src, sizeof src, "%s/%s", dir, files[i][0]);
        snprintf(dst, sizeof dst, "/etc/%s", files[i][0]);
        CHECK_EQ_INT(write_file(src, files[i][1]), 0);
        if (mount(src, dst, NULL, MS_BIND, NULL) != 0)
            SKIP("cannot bind-mount %s: %s", dst, strerror(errno));
        /* The mount holds the file; the directory entry is not needed. */
        unlink(src);
    }
    rmdir(dir);
}

/* The name server: denies "nx*" names, ignores everything else. */
static int dns_fd;
static atomic_int queries_hang;

static void *dns_main(void *arg)
{
    (void)arg;
    unsigned char q[512];
    for (;;) {
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(dns_fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return NULL;
        }
        if (n < 13)
            continue;
        /* The question's name starts at byte 12 as length-prefixed labels. */
        size_t end = 12;
        while (end < (size_t)n && q[end] != 0)
            end += 1 + q[end];
        end += 1 + 4; /* the root label, then type and class */
        if (end > (size_t)n)
            continue;
        if (q[12] >= 2 && q[13] == 'n' && q[14] == 'x') {
            q[2] = (unsigned char)(0x80 | (q[2] & 0x79)); /* QR, opcode and RD kept */
            q[3] = 0x83;                                  /* RA, rcode 3: no such name */
            memset(q + 6, 0, 6);                          /* no answer, authority, additional */
            sendto(dns_fd, q, end, 0, (struct sockaddr *)&from, fl);
        } else {
            atomic_fetch_add(&queries_hang, 1);
        }
    }
}

/* Cancels once the name server has seen one more query: the lookup is
 * then certainly in flight. */
struct canceller {
    ctx_cancel_t *cancel;
    int seen;
};

static void *canceller_main(void *arg)
{
    struct canceller *k = arg;
    CHECK(check_wait_flag(&queries_hang, k->seen + 1, 10 * CTX_SECOND));
    ctx_cancel(k->cancel);
    return NULL;
}

/* A parent that says when it is freed. */
static atomic_int parent_freed;

static void note_freed(void *data)
{
    (void)data;
    atomic_store(&parent_freed, 1);
}

static const ctx_custom_ops_t note_ops = { .name = "Note", .destroy = note_freed };

/* Allocation failure at every site of a dial by name: success or ENOMEM,
 * and nothing leaks (the lookup thread frees its record after it wakes the
 * caller, so the count is awaited). */
static void sweep_dial(const char *port)
{
    long live = check_alloc_live();
    int runs = 0;
    for (int sticky = 0; sticky < 2; sticky++) {
        for (long n = 0;; n++) {
            long failed = check_alloc_failed();
            check_alloc_fail_at(n, sticky);
            errno = 0;
            int fd = ctx_dial(ctx_background(), "dialtest.example", port);
            int e = errno;
            check_alloc_fail_none();
            long refused = check_alloc_failed() - failed;
            if (fd >= 0)
                close(fd);
            else
                CHECK_EQ_INT(e, ENOMEM);
            for (int i = 0; i < 10000 && check_alloc_live() != live; i++)
                check_sleep_ns(CTX_MILLISECOND);
            CHECK_EQ_INT(check_alloc_live(), live);
            if (refused == 0)
                break;
            runs++;
        }
    }
    CHECK(runs > 0);
    fprintf(stderr, "%d dials with a refused allocation\n", runs);
}

int main(void)
{
    enter_namespaces();
    check_alloc_install();
    dns_fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(dns_fd >= 0);
    struct sockaddr_in a = io_addr(53);
    if (bind(dns_fd, (struct sockaddr *)&a, sizeof a) != 0)
        SKIP("cannot bind 127.0.0.1:53 in the namespace: %s", strerror(errno));
    pthread_t t;
    check_thread_start(&t, dns_main, NULL);

    int port;
    int l = io_listen(64, &port);
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);

    fprintf(stderr, "-- a name from the hosts file\n");
    ctx_t *c = ctx_with_timeout(ctx_background(), 20 * CTX_SECOND, NULL);
    int fd = ctx_dial(c, "dialtest.example", ps);
    CHECK_MSG(fd >= 0, "errno %d", errno);
    CHECK_EQ_INT(fcntl(fd, F_GETFD), FD_CLOEXEC);
    close(fd);
    ctx_unref(c);

    fprintf(stderr, "-- two addresses, one a black hole\n");
    {
        /* 127.0.0.2 on the same port: a listener whose backlog is full, so
         * a connect there hangs; 127.0.0.3 answers.  The resolver keeps the
         * hosts file's order for these two (RFC 6724 ranks them equal), so
         * the black hole is tried first, and the dial must still reach
         * 127.0.0.3 before the 3 s deadline: an attempt gets its share of
         * the time left (at least 2 s), not all of it. */
        int hole = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in h = io_addr(port);
        h.sin_addr.s_addr = htonl(0x7f000002);
        CHECK_EQ_INT(bind(hole, (struct sockaddr *)&h, sizeof h), 0);
        CHECK_EQ_INT(listen(hole, 0), 0);
        int fill[8];
        for (int i = 0; i < 8; i++) {
            fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
            int r = connect(fill[i], (struct sockaddr *)&h, sizeof h);
            CHECK(r == 0 || errno == EINPROGRESS);
        }
        int good = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in g = io_addr(port);
        g.sin_addr.s_addr = htonl(0x7f000003);
        CHECK_EQ_INT(bind(good, (struct sockaddr *)&g, sizeof g), 0);
        CHECK_EQ_INT(listen(good, 8), 0);
        ctx_time_t t0 = check_mono_now();
        c = ctx_with_timeout(ctx_background(), 3 * CTX_SECOND, NULL);
        fd = ctx_dial(c, "two.example", ps);
        CHECK_MSG(fd >= 0, "errno %d", errno);
        struct sockaddr_in peer;
        socklen_t pl = sizeof peer;
        CHECK_EQ_INT(getpeername(fd, (struct sockaddr *)&peer, &pl), 0);
        CHECK_EQ_INT(ntohl(peer.sin_addr.s_addr), 0x7f000003);
        fprintf(stderr, "   connected after %lld ms\n",
                (long long)((check_mono_now() - t0) / CTX_MILLISECOND));
        close(fd);
        close(good);
        ctx_unref(c);
        for (int i = 0; i < 8; i++)
            close(fill[i]);
        close(hole);
    }

    fprintf(stderr, "-- a name the server denies\n");
    c = ctx_with_timeout(ctx_background(), 20 * CTX_SECOND, NULL);
    errno = 0;
    CHECK_EQ_INT(ctx_dial(c, "nxdomain.example", ps), -1);
    CHECK_EQ_INT(errno, ENOENT);
    ctx_unref(c);

    fprintf(stderr, "-- a server that never answers: the deadline\n");
    ctx_time_t t0 = check_mono_now();
    c = ctx_with_timeout(ctx_background(), 200 * CTX_MILLISECOND, NULL);
    errno = 0;
    CHECK_EQ_INT(ctx_dial(c, "hang.example", ps), -1);
    CHECK_EQ_INT(errno, CTX_DEADLINE_EXCEEDED);
    ctx_duration_t took = check_mono_now() - t0;
    /* The resolver would wait 30 s; the call returns within 100 ms of the
     * deadline (200 ms after t0). */
    CHECK_MSG(took < 300 * CTX_MILLISECOND, "took %lld ms", (long long)(took / CTX_MILLISECOND));
    CHECK(check_wait_flag(&queries_hang, 1, 10 * CTX_SECOND));
    ctx_unref(c);

    fprintf(stderr, "-- a server that never answers: cancel while the query is out\n");
    for (int i = 0; i < 10; i++) {
        struct canceller k;
        c = ctx_with_cancel(ctx_background(), &k.cancel);
        k.seen = atomic_load(&queries_hang);
        pthread_t kt;
        check_thread_start(&kt, canceller_main, &k);
        errno = 0;
        CHECK_EQ_INT(ctx_dial(c, "hang.example", ps), -1);
        CHECK_EQ_INT(errno, CTX_CANCELED);
        check_thread_join(kt);
        ctx_unref(c);
    }

    fprintf(stderr, "-- an abandoned lookup does not keep the caller's context alive\n");
    {
        /* The query still hangs (for 30 s) after the dial returns; the
         * dial's context and its parent must be freed when the caller
         * drops them, not when getaddrinfo gives up. */
        struct canceller k;
        atomic_store(&parent_freed, 0);
        ctx_t *parent = ctx_with_custom(ctx_background(), &note_ops, NULL, NULL);
        CHECK_NOT_NULL(parent);
        c = ctx_with_cancel(parent, &k.cancel);
        ctx_unref(parent);
        k.seen = atomic_load(&queries_hang);
        pthread_t kt;
        check_thread_start(&kt, canceller_main, &k);
        errno = 0;
        CHECK_EQ_INT(ctx_dial(c, "hang.example", ps), -1);
        CHECK_EQ_INT(errno, CTX_CANCELED);
        check_thread_join(kt);
        CHECK_EQ_INT(atomic_load(&parent_freed), 0);
        ctx_unref(c);
        CHECK_EQ_INT(atomic_load(&parent_freed), 1);
    }
    fprintf(stderr, "-- allocation failures\n");
    sweep_dial(ps);
    close(l);
    return 0;
}
