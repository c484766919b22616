/* SPDX-License-Identifier: MIT */

/*
 * test_faultproxy.c: the fault proxy the fault tests stand on, driven
 * against an echo server on 127.0.0.1.  Every command is checked for the
 * effect it promises: pass forwards, dark holds everything (open and new
 * connections) and heal delivers what was held, trickle spaces the bytes,
 * halfclose gives the client EOF, reset gives it ECONNRESET, kill gives it
 * EOF, count counts, and stop leaves no proxy listening.
 */
#include "check.h"
#include "faultproxy/faulttest.h"
#include "io_helpers.h"

#include <poll.h>
#include <sys/socket.h>

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = io_addr(port);
    CHECK_EQ_INT(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    return fd;
}

/* Whether fd becomes readable within ms. */
static bool readable_within(int fd, int ms)
{
    struct pollfd p = { .fd = fd, .events = POLLIN };
    return poll(&p, 1, ms) == 1;
}

static void send_all(int fd, const char *s)
{
    CHECK_EQ_INT((int)write(fd, s, strlen(s)), (int)strlen(s));
}

/* Reads exactly strlen(want) bytes within 5 s and compares them. */
static void expect(int fd, const char *want)
{
    char buf[256];
    size_t len = strlen(want), got = 0;
    while (got < len) {
        CHECK_MSG(readable_within(fd, 5000), "no echo of '%s' after %zu bytes", want, got);
        ssize_t n = read(fd, buf + got, len - got);
        CHECK_MSG(n > 0, "read %zd errno %d", n, errno);
        got += (size_t)n;
    }
    buf[got] = 0;
    CHECK_STR(buf, want);
}

/* Writes BULK bytes on the fd given, for the bulk check. */
#define BULK (4 << 20)
static void *bulk_writer(void *arg)
{
    int fd = (int)(intptr_t)arg;
    static char data[65536];
    memset(data, 'b', sizeof data);
    for (size_t sent = 0; sent < BULK; sent += sizeof data)
        CHECK_EQ_INT((int)write(fd, data, sizeof data), (int)sizeof data);
    return NULL;
}

/* The proxy's connection count reaches `want` (it learns of closes by poll). */
static void wait_count(faultproxy_t *fp, int want)
{
    for (int i = 0; i < 500; i++) {
        int n = faultproxy_count(fp);
        CHECK(n >= 0);
        if (n == want)
            return;
        check_sleep_ns(CTX_MILLISECOND * 10);
    }
    CHECK_MSG(0, "count stayed at %d, want %d", faultproxy_count(fp), want);
}

int main(void)
{
    faulttest_echo_t echo;
    faulttest_echo_start(&echo, 16);
    int eport = echo.port;
    char target[64];
    snprintf(target, sizeof target, "127.0.0.1:%d", eport);

    faultproxy_t fp;
    CHECK_EQ_INT(faultproxy_start(&fp, FAULTPROXY_EXE, target), 0);
    CHECK(fp.port > 0 && fp.port != eport);

    /* pass */
    int a = connect_to(fp.port);
    send_all(a, "hello");
    expect(a, "hello");
    CHECK_EQ_INT(faultproxy_count(&fp), 1);

    /* Bulk: many times the proxy's buffer each way, going dark and healing
     * midway; every byte arrives. */
    pthread_t w;
    check_thread_start(&w, bulk_writer, (void *)(intptr_t)a);
    size_t got = 0;
    bool darkened = false;
    static char bulk[65536];
    while (got < BULK) {
        CHECK(readable_within(a, 5000));
        ssize_t n = read(a, bulk, sizeof bulk);
        CHECK(n > 0);
        for (ssize_t k = 0; k < n; k++)
            CHECK(bulk[k] == 'b');
        got += (size_t)n;
        if (!darkened && got > BULK / 4) {
            CHECK_EQ_INT(faultproxy_cmd(&fp, "dark"), 0);
            CHECK_EQ_INT(faultproxy_cmd(&fp, "heal"), 0);
            darkened = true;
        }
    }
    check_thread_join(w);

    /* dark: nothing moves on the open connection, and a new one is accepted
     * by the kernel but gets nothing either. */
    CHECK_EQ_INT(faultproxy_cmd(&fp, "dark"), 0);
    send_all(a, "held");
    int b = connect_to(fp.port);
    send_all(b, "new");
    CHECK(!readable_within(a, 300));
    CHECK(!readable_within(b, 10));
    CHECK_EQ_INT(faultproxy_count(&fp), 1);
    /* heal: what was held is delivered, the waiting connection served. */
    CHECK_EQ_INT(faultproxy_cmd(&fp, "heal"), 0);
    expect(a, "held");
    expect(b, "new");
    wait_count(&fp, 2);
    close(b);
    wait_count(&fp, 1);

    /* trickle: 4 bytes there and back at one byte per 50 ms in each
     * direction take at least 3 periods after the command (each direction
     * sends its first byte one period after it, the two overlap). */
    CHECK_EQ_INT(faultproxy_cmd(&fp, "trickle 50"), 0);
    ctx_time_t t0 = check_mono_now();
    send_all(a, "slow");
    expect(a, "slow");
    ctx_duration_t took = check_mono_now() - t0;
    CHECK_MSG(took >= 3 * 50 * CTX_MILLISECOND, "trickled echo took %lld ms",
              (long long)took / 1000000);
    CHECK_EQ_INT(faultproxy_cmd(&fp, "pass"), 0);
    send_all(a, "fast");
    expect(a, "fast");

    /* halfclose: the client reads EOF but may still write. */
    CHECK_EQ_INT(faultproxy_cmd(&fp, "halfclose"), 0);
    CHECK(readable_within(a, 5000));
    char c;
    CHECK_EQ_INT((int)read(a, &c, 1), 0);
    send_all(a, "after");
    close(a);
    wait_count(&fp, 0);

    /* reset: the client sees ECONNRESET. */
    a = connect_to(fp.port);
    send_all(a, "x");
    expect(a, "x");
    CHECK_EQ_INT(faultproxy_cmd(&fp, "reset"), 0);
    CHECK_EQ_INT(faultproxy_count(&fp), 0);
    CHECK(readable_within(a, 5000));
    errno = 0;
    CHECK_EQ_INT((int)read(a, &c, 1), -1);
    CHECK_EQ_INT(errno, ECONNRESET);
    close(a);

    /* kill: the client sees EOF. */
    a = connect_to(fp.port);
    send_all(a, "y");
    expect(a, "y");
    CHECK_EQ_INT(faultproxy_cmd(&fp, "kill"), 0);
    CHECK_EQ_INT(faultproxy_count(&fp), 0);
    CHECK(readable_within(a, 5000));
    CHECK_EQ_INT((int)read(a, &c, 1), 0);
    close(a);

    /* Bad commands get an error, not silence. */
    CHECK_EQ_INT(faultproxy_cmd(&fp, "bogus"), -1);
    CHECK_EQ_INT(faultproxy_cmd(&fp, "trickle"), -1);
    CHECK_EQ_INT(faultproxy_cmd(&fp, "trickle 0"), -1);
    CHECK_EQ_INT(faultproxy_cmd(&fp, "pass"), 0);

    /* stop: reaped, and nobody listens on its port any more. */
    int port = fp.port;
    faultproxy_stop(&fp);
    faultproxy_stop(&fp);
    int d = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = io_addr(port);
    CHECK_EQ_INT(connect(d, (struct sockaddr *)&sa, sizeof sa), -1);
    CHECK_EQ_INT(errno, ECONNREFUSED);
    close(d);

    /* A proxy that cannot start says so. */
    CHECK_EQ_INT(faultproxy_start(&fp, "/nonexistent/faultproxy", target), -1);

    faulttest_echo_stop(&echo);
    printf("test_faultproxy: ok\n");
    return 0;
}
