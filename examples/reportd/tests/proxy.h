/* SPDX-License-Identifier: MIT */

/*
 * proxy.h: a real reverse proxy (Debian's nginx or HAProxy) in front of a
 * reportd, for the hang-up tests through a proxy.  Each test starts its own
 * proxy in the foreground on an ephemeral loopback port, with its
 * configuration, pid file, logs and temporary files in a directory of its
 * own, and removes all of it at the end, as the PostgreSQL tests do with
 * their clusters.
 */
#ifndef REPORTD_PROXY_H
#define REPORTD_PROXY_H

#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <limits.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

struct proxy {
    struct svc proc; /* the proxy process (its output echoed, no port line) */
    char dir[64];    /* its directory */
    unsigned port;
    char url[64];
};

/* A port that was free a moment ago: bind port 0, read it, close.  The
 * proxy binds it next; proxy_start tries again with another port if some
 * other process took it meanwhile. */
static inline unsigned free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = 0 };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_EQ_INT(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    CHECK_EQ_INT(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Whether something accepts connections on 127.0.0.1:port. */
static inline bool accepting(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* The proxy's output so far (its stderr and stdout), for messages. */
static inline void proxy_show_log(struct proxy *p, const char *file)
{
    char path[128], buf[2048];
    snprintf(path, sizeof path, "%s/%s", p->dir, file);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fprintf(stderr, "%.*s", (int)n, buf);
    fclose(f);
}

/* Writes the configuration (config_fn(p, backend_port, file) writes it for
 * p->port), starts argv (the proxy in the foreground, NULL-terminated, "%s"
 * in an argument standing for the directory) and waits until the proxy
 * accepts connections.  Tries three ports before failing. */
typedef void (*proxy_config_fn)(struct proxy *p, unsigned backend_port, FILE *f);

static inline void proxy_start(struct proxy *p, const char *name, proxy_config_fn config,
                               const char *config_name, unsigned backend_port,
                               const char *const *argv_template)
{
    memset(p, 0, sizeof *p);
    snprintf(p->dir, sizeof p->dir, "%s/reportd-%s.XXXXXX", "/tmp", name);
    CHECK_NOT_NULL(mkdtemp(p->dir));
    /* nginx's workers drop to an unprivileged user when started as root:
     * they must be able to enter the directory. */
    CHECK_EQ_INT(chmod(p->dir, 0755), 0);
    for (int attempt = 0; attempt < 3; attempt++) {
        p->port = free_port();
        snprintf(p->url, sizeof p->url, "http://127.0.0.1:%u", p->port);
        char path[160];
        snprintf(path, sizeof path, "%s/%s", p->dir, config_name);
        FILE *f = fopen(path, "w");
        CHECK_NOT_NULL(f);
        config(p, backend_port, f);
        CHECK_EQ_INT(fclose(f), 0);

        char args[16][192];
        const char *argv[17];
        int i = 0;
        for (; argv_template[i] != NULL && i < 16; i++) {
            snprintf(args[i], sizeof args[i], argv_template[i], p->dir);
            argv[i] = args[i];
        }
        argv[i] = NULL;
        memset(&p->proc, 0, sizeof p->proc);
        p->proc.name = name;
        pthread_mutex_init(&p->proc.mu, NULL);
        pthread_cond_init(&p->proc.cv, NULL);
        int out[2];
        CHECK_EQ_INT(pipe2(out, O_CLOEXEC), 0);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        posix_spawn_file_actions_adddup2(&fa, out[1], 2);
        CHECK_EQ_INT(posix_spawn(&p->proc.pid, argv[0], &fa, NULL, (char **)argv, environ), 0);
        posix_spawn_file_actions_destroy(&fa);
        close(out[1]);
        p->proc.err_fd = out[0];
        CHECK_EQ_INT(pthread_create(&p->proc.reader, NULL, svc_reader, &p->proc), 0);

        /* Ready when it accepts, or failed when it exits (port taken). */
        ctx_time_t until = ctx_now() + 20 * CTX_SECOND;
        bool up = false, exited = false;
        while (!up && !exited && ctx_now() < until) {
            up = accepting(p->port);
            int st;
            exited = !up && waitpid(p->proc.pid, &st, WNOHANG) == p->proc.pid;
            if (!up && !exited)
                ctx_sleep(ctx_background(), 10 * CTX_MILLISECOND);
        }
        if (up) {
            fprintf(stderr, "   %s listening on 127.0.0.1:%u, in front of 127.0.0.1:%u\n", name,
                    p->port, backend_port);
            return;
        }
        if (!exited) {
            kill(p->proc.pid, SIGKILL);
            waitpid(p->proc.pid, NULL, 0);
        }
        pthread_join(p->proc.reader, NULL);
        close(p->proc.err_fd);
        free(p->proc.log);
        fprintf(stderr, "   %s did not start on port %u; trying another\n", name, p->port);
    }
    check_fail_(__FILE__, __LINE__, "%s did not start", name);
}

/* Removes the directory and everything in it (one level: the proxies'
 * temporary folders are empty or hold files only). */
static inline void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char path[1024];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path)
            continue;
        if (rmdir(path) != 0 && unlink(path) != 0)
            remove_tree(path), rmdir(path);
    }
    closedir(d);
    rmdir(dir);
}

/* Stops the proxy (sig: the signal that makes it exit now) and removes its
 * directory. */
static inline void proxy_stop(struct proxy *p, int sig)
{
    kill(p->proc.pid, sig);
    int st = 0;
    CHECK_EQ_INT(waitpid(p->proc.pid, &st, 0), p->proc.pid);
    CHECK_EQ_INT(pthread_join(p->proc.reader, NULL), 0);
    close(p->proc.err_fd);
    free(p->proc.log);
    remove_tree(p->dir);
}

/* The directory is removed, and the processes the test started are
 * stopped, even when a check fails: check.h's failure path ends in
 * abort(), so the tests install this as their SIGABRT handler. */
static struct proxy *proxy_cleanup_target;
static pid_t proxy_also_kill[4]; /* the reportd processes */

static inline void proxy_on_abort(int sig)
{
    (void)sig;
    for (int i = 0; i < 4; i++)
        if (proxy_also_kill[i] > 0)
            kill(proxy_also_kill[i], SIGKILL);
    if (proxy_cleanup_target != NULL && proxy_cleanup_target->proc.pid > 0) {
        kill(proxy_cleanup_target->proc.pid, SIGKILL);
        remove_tree(proxy_cleanup_target->dir);
    }
    signal(SIGABRT, SIG_DFL);
    raise(SIGABRT);
}

/* ---------------------------------------------------------------------------
 * The scenario: a client through the proxy leaves at 200 ms.
 */

struct hangup {
    long log_ms;     /* how long reportd logged the request as lasting */
    long gauges_ms;  /* from the client leaving to reportd's gauges at 0 */
    char line[1024]; /* reportd's log line */
};

/* reportd_requests_in_flight and the three reportd_parts_in_flight, summed,
 * from one read of /metrics. */
static inline long gauges_sum(struct svc *s)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", s->url);
    struct reply r = HTTP_GET(url, 10000, NULL);
    CHECK_EQ_INT(r.rc, CURLE_OK);
    long sum = 0;
    int found = 0;
    for (const char *p = r.body; (p = strstr(p, "reportd_")) != NULL; p++) {
        if ((p != r.body && p[-1] != '\n') || (strncmp(p, "reportd_requests_in_flight ", 27) != 0 &&
                                               strncmp(p, "reportd_parts_in_flight{", 24) != 0))
            continue;
        sum += strtol(strchr(p, ' ') + 1, NULL, 10);
        found++;
    }
    CHECK_EQ_INT(found, 4);
    return sum;
}

/* A client that gives up after 200 ms on /report through url, with
 * compute, db and upstream of ms each. */
static inline struct hangup hang_up_through(const char *url, struct svc *front, const char *id,
                                            int ms)
{
    struct hangup h;
    memset(&h, 0, sizeof h);
    char u[256], hdr[80];
    snprintf(u, sizeof u, "%s/report?compute_ms=%d&db_ms=%d&upstream_ms=%d", url, ms, ms, ms);
    snprintf(hdr, sizeof hdr, "X-Request-Id: %s", id);
    struct reply r = HTTP_GET(u, 200, hdr);
    ctx_time_t gone = ctx_now();
    CHECK_EQ_INT(r.rc, CURLE_OPERATION_TIMEDOUT);
    /* The gauges, polled as fast as reportd answers, one /metrics a time
     * so that the polling adds as little as it can to what it measures. */
    ctx_time_t until = gone + (ms + 5000) * CTX_MILLISECOND;
    while (gauges_sum(front) != 0 && ctx_now() < until) {
    }
    CHECK_EQ_INT(in_flight(front), 0);
    h.gauges_ms = (long)((ctx_now() - gone) / CTX_MILLISECOND);
    char needle[80];
    snprintf(needle, sizeof needle, "request_id=%s ", id);
    char *line = SVC_LINE(front, 5000, needle);
    CHECK_NOT_NULL(line);
    snprintf(h.line, sizeof h.line, "%s", line);
    h.log_ms = field_long(line, "ms");
    free(line);
    return h;
}

/* ---------------------------------------------------------------------------
 * What the nginx and HAProxy tests share.
 */

/* The start of a test run as `TEST REPORTD PROXY`: exits 77 (skipped)
 * when the proxy named `name` is not installed at PROXY, else starts two
 * reportd to stand behind it, front calling down as its upstream; should
 * a check fail, both go with the proxy (proxy_on_abort). */
static inline void proxy_test_begin(int argc, char **argv, const char *name, struct svc *down,
                                    struct svc *front)
{
    CHECK(argc == 3);
    if (access(argv[2], X_OK) != 0) {
        fprintf(stderr, "SKIP: no %s at %s (Debian: %s)\n", name, argv[2], name);
        exit(77);
    }
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);
    SVC_START(down, "down", argv[1], "--budget-ms", "10000");
    char up[80];
    snprintf(up, sizeof up, "http://127.0.0.1:%u", down->port);
    SVC_START(front, "front", argv[1], "--upstream", up, "--budget-ms", "10000");
    proxy_also_kill[0] = down->pid;
    proxy_also_kill[1] = front->pid;
    signal(SIGABRT, proxy_on_abort);
}

/* The end: both reportd exit cleanly on SIGTERM. */
static inline void proxy_test_end(struct svc *down, struct svc *front)
{
    CHECK_EQ_INT(svc_stop(front), 0);
    CHECK_EQ_INT(svc_stop(down), 0);
    curl_global_cleanup();
}

/* Five clients in turn leave a report of 3 s a part through url after
 * 200 ms (request ids prefix-0 to prefix-4).  Each must reach reportd as a
 * client gone with all three parts stopped; the best try must be logged
 * within 25 ms of the client's leaving and the gauges read 0 within 25 ms
 * (times SLACK).  The best of five, so that one try slowed by a loaded
 * machine does not fail a property that holds. */
static inline void proxy_check_hang_ups(const char *url, struct svc *front, const char *prefix)
{
    long best_log = LONG_MAX, best_gauges = LONG_MAX;
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        struct hangup h = hang_up_through(url, front, id, 3000);
        CHECK_MSG(strstr(h.line, " status=499 ") != NULL &&
                      strstr(h.line, " outcome=client_gone ") &&
                      strstr(h.line, " cancelled=compute,db,upstream"),
                  "line: %s", h.line);
        fprintf(
            stderr,
            "   try %d: reportd logged %ld ms; its gauges read 0 %ld ms after the client left\n", i,
            h.log_ms, h.gauges_ms);
        best_log = h.log_ms < best_log ? h.log_ms : best_log;
        best_gauges = h.gauges_ms < best_gauges ? h.gauges_ms : best_gauges;
    }
    CHECK_LE_INT(best_log, 200 + 25 * SLACK);
    CHECK_LE_INT(best_gauges, 25 * SLACK);
}

#endif /* REPORTD_PROXY_H */
