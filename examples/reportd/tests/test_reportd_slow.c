/* SPDX-License-Identifier: MIT */

/*
 * Slow clients: connections that send their request a byte at a time,
 * headers or body, are closed by the read deadline (--read-ms), hold no
 * thread meanwhile, and do not stop normal clients being served.  A
 * bounded version of the benchmark's 10,000 (bench/service_twin.py).
 */
#include "harness.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#define SLOW    400
#define READ_MS 1000

static const char *const starts[2] = {
    /* Headers that never end. */
    "GET /report HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    /* Headers in full, then a body that never ends. */
    "POST /report HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nbbbbbbbbbbbbbbbbbbbbbbbbbbb",
};

static int threads_of(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    CHECK_NOT_NULL(f);
    int n = -1;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    fclose(f);
    return n;
}

int main(int argc, char **argv)
{
    CHECK(argc == 2);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    struct rlimit nofile;
    CHECK_EQ_INT(getrlimit(RLIMIT_NOFILE, &nofile), 0);
    if (nofile.rlim_max < SLOW + 64) {
        fprintf(stderr, "SKIP: needs %d file descriptors\n", SLOW + 64);
        return CHECK_SKIP_CODE;
    }
    nofile.rlim_cur = nofile.rlim_max;
    CHECK_EQ_INT(setrlimit(RLIMIT_NOFILE, &nofile), 0);

    char read_ms[16];
    snprintf(read_ms, sizeof read_ms, "%d", READ_MS);
    struct svc s;
    SVC_START(&s, "slow", argv[1], "--read-ms", read_ms);
    int idle_threads = threads_of(s.pid);

    /* Open the slow connections and send each the start of a request. */
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s.port) };
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    static struct pollfd fds[SLOW];
    ctx_time_t opened = ctx_now();
    for (int i = 0; i < SLOW; i++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(fd >= 0);
        CHECK_EQ_INT(connect(fd, (struct sockaddr *)&addr, sizeof addr), 0);
        const char *start = starts[i % 2];
        CHECK_EQ_INT(send(fd, start, strlen(start), MSG_NOSIGNAL), (long)strlen(start));
        fcntl(fd, F_SETFL, O_NONBLOCK);
        fds[i] = (struct pollfd){ .fd = fd, .events = POLLIN };
    }

    /* While they trickle (a byte each per 100 ms, faster than the 1 byte/s
     * of the benchmark, so that an idle timeout could never end them),
     * normal requests are answered in time and no thread is added per
     * slow connection. */
    int closed = 0;
    ctx_time_t next_normal = ctx_now();
    int normal = 0;
    ctx_time_t until = opened + (READ_MS + 4000) * CTX_MILLISECOND;
    while ((closed < SLOW || normal < 10) && ctx_now() < until) {
        for (int i = 0; i < SLOW; i++) {
            if (fds[i].fd < 0)
                continue;
            char c = 'a';
            if (send(fds[i].fd, &c, 1, MSG_NOSIGNAL) < 0 && errno != EAGAIN) {
                close(fds[i].fd);
                fds[i].fd = -1;
                closed++;
            }
        }
        /* A closed connection shows as readable (EOF or an error). */
        if (poll(fds, SLOW, 100) > 0) {
            for (int i = 0; i < SLOW; i++) {
                char buf[512];
                if (fds[i].fd >= 0 && (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) &&
                    recv(fds[i].fd, buf, sizeof buf, 0) <= 0) {
                    close(fds[i].fd);
                    fds[i].fd = -1;
                    closed++;
                }
            }
        }
        if (ctx_now() >= next_normal && normal < 10) {
            char url[128];
            snprintf(url, sizeof url, "%s/report?compute_ms=1&db_ms=1", s.url);
            struct reply r = HTTP_GET(url, 0, NULL);
            CHECK_EQ_INT(r.status, 200);
            CHECK_LE_INT(r.ms, 500);
            if (normal++ == 0)
                CHECK_LE_INT(threads_of(s.pid), idle_threads + 16);
            next_normal = ctx_now() + 100 * CTX_MILLISECOND;
        }
    }
    long took = (long)((ctx_now() - opened) / CTX_MILLISECOND);
    fprintf(stderr, "   %d of %d slow connections closed by the server after %ld ms\n", closed,
            SLOW, took);
    CHECK_EQ_INT(closed, SLOW);
    CHECK(took >= READ_MS - 100);
    CHECK_EQ_INT(normal, 10);
    CHECK(metric(&s, "reportd_connections_read_timeout_total") >= SLOW);
    CHECK(settled(&s));
    CHECK_EQ_INT(svc_stop(&s), 0);
    curl_global_cleanup();
    return 0;
}
