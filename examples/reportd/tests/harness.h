/* SPDX-License-Identifier: MIT */

/*
 * harness.h: what the reportd scenario tests share.  A test starts real
 * reportd processes (the binary given on its command line), talks to them
 * with libcurl over loopback, and reads their log lines from their stderr.
 */
#ifndef REPORTD_HARNESS_H
#define REPORTD_HARNESS_H

#include "check.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <strings.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

extern char **environ;

/* Timing bounds stretch under the sanitizers, which slow reportd several
 * times over; the targets themselves are checked on the best of a few
 * tries, so that one request delayed by a loaded machine does not fail a
 * property that holds. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define HARNESS_SANITIZED 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define HARNESS_SANITIZED 1
#endif
#ifdef HARNESS_SANITIZED
#define SLACK 5
#else
#define SLACK 1
#endif

/* One running reportd. */
struct svc {
    pid_t pid;
    unsigned port;
    char url[64]; /* http://127.0.0.1:PORT */
    int err_fd;
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *log; /* everything it wrote to stderr */
    size_t len;
    bool eof;
    const char *name; /* prefix of its lines echoed to our stderr */
};

static inline void *svc_reader(void *arg)
{
    struct svc *s = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(s->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        pthread_mutex_lock(&s->mu);
        if (n <= 0) {
            s->eof = true;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            return NULL;
        }
        s->log = realloc(s->log, s->len + (size_t)n + 1);
        CHECK_NOT_NULL(s->log);
        memcpy(s->log + s->len, buf, (size_t)n);
        s->len += (size_t)n;
        s->log[s->len] = '\0';
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        fprintf(stderr, "[%s] %.*s", s->name, (int)n, buf);
    }
}

/* Waits up to timeout_ms for a log line containing every one of the
 * substrings (NULL-terminated) and returns a copy of it (free it), or NULL. */
static inline char *svc_line(struct svc *s, int timeout_ms, const char *const *needles)
{
    ctx_time_t until = ctx_now() + timeout_ms * CTX_MILLISECOND;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        const char *p = s->log;
        while (p != NULL && *p != '\0') {
            const char *end = strchr(p, '\n');
            if (end == NULL)
                break;
            bool all = true;
            for (int i = 0; needles[i] != NULL && all; i++) {
                const char *hit = memmem(p, (size_t)(end - p), needles[i], strlen(needles[i]));
                all = hit != NULL;
            }
            if (all) {
                char *copy = strndup(p, (size_t)(end - p));
                pthread_mutex_unlock(&s->mu);
                return copy;
            }
            p = end + 1;
        }
        if (s->eof || ctx_now() >= until)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

#define SVC_LINE(s, ms, ...) svc_line((s), (ms), (const char *const[]){ __VA_ARGS__, NULL })

/* The services this test started.  A failed check aborts the test, which
 * runs no exit handler: the SIGABRT handler kills them first, so that no
 * reportd outlives a failed test. */
static pid_t svc_pids[16];
static _Atomic int svc_npids;

static void svc_on_abort(int sig)
{
    int n = atomic_load(&svc_npids);
    int st;
    /* Only a child still running (waitpid gives 0): a pid already waited
     * for may belong to another process by now. */
    for (int i = 0; i < n && i < 16; i++)
        if (svc_pids[i] > 0 && waitpid(svc_pids[i], &st, WNOHANG) == 0)
            kill(svc_pids[i], SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static inline void svc_track(pid_t pid)
{
    int i = atomic_fetch_add(&svc_npids, 1);
    if (i == 0)
        signal(SIGABRT, svc_on_abort);
    if (i < 16)
        svc_pids[i] = pid;
}

/* Starts argv (NULL-terminated) with its stdout and stderr both read into
 * the log, and waits for its "listening on 127.0.0.1:PORT" line. */
static inline void svc_spawn(struct svc *s, const char *name, const char *const *argv)
{
    memset(s, 0, sizeof *s);
    s->name = name;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    int err[2];
    CHECK_EQ_INT(pipe2(err, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, err[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    CHECK_EQ_INT(posix_spawn(&s->pid, argv[0], &fa, NULL, (char **)argv, environ), 0);
    svc_track(s->pid);
    posix_spawn_file_actions_destroy(&fa);
    close(err[1]);
    s->err_fd = err[0];
    CHECK_EQ_INT(pthread_create(&s->reader, NULL, svc_reader, s), 0);

    char *line = svc_line(s, 60000, (const char *const[]){ "listening on 127.0.0.1:", NULL });
    CHECK_MSG(line != NULL, "%s did not start", name);
    CHECK_MSG(sscanf(strstr(line, "listening on"), "listening on 127.0.0.1:%u", &s->port) == 1,
              "line: %s", line);
    free(line);
    snprintf(s->url, sizeof s->url, "http://127.0.0.1:%u", s->port);
}

/* Starts `reportd --listen 127.0.0.1:0 args...`; args ends with NULL. */
static inline void svc_start(struct svc *s, const char *name, const char *reportd,
                             const char *const *args)
{
    const char *argv[32] = { reportd, "--listen", "127.0.0.1:0" };
    int argc = 3;
    for (int i = 0; args != NULL && args[i] != NULL && argc < 31; i++)
        argv[argc++] = args[i];
    argv[argc] = NULL;
    svc_spawn(s, name, argv);
}

#define SVC_START(s, name, reportd, ...)                                                           \
    svc_start((s), (name), (reportd), (const char *const[]){ __VA_ARGS__, NULL })

/* The value of key=VALUE in a log line, copied into buf. */
static inline const char *field(const char *line, const char *key, char *buf, size_t size)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", key);
    const char *p = strstr(line, pat);
    if (p == NULL && strncmp(line, pat + 1, strlen(pat + 1)) == 0)
        p = line - 1;
    CHECK_MSG(p != NULL, "no %s in: %s", key, line);
    p += strlen(pat);
    size_t n = strcspn(p, " \n");
    if (n >= size)
        n = size - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

static inline long field_long(const char *line, const char *key)
{
    char buf[64];
    return strtol(field(line, key, buf, sizeof buf), NULL, 10);
}

/* Waits for the process to exit; its exit status (or 128 + signal). */
static inline int svc_wait(struct svc *s)
{
    int st = 0;
    CHECK_EQ_INT(waitpid(s->pid, &st, 0), s->pid);
    CHECK_EQ_INT(pthread_join(s->reader, NULL), 0);
    close(s->err_fd);
    free(s->log);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* SIGTERM, then the exit status. */
static inline int svc_stop(struct svc *s)
{
    kill(s->pid, SIGTERM);
    return svc_wait(s);
}

/* One HTTP GET with libcurl.  timeout_ms bounds it (0: 30 s); the result is
 * curl's code, the status, the body and the time it took. */
struct reply {
    CURLcode rc;
    long status;
    long ms;
    char body[4096];
    size_t len;
    char request_id[160];
    char content_type[64];
};

static inline size_t reply_body(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n, room = sizeof r->body - 1 - r->len;
    memcpy(r->body + r->len, p, len < room ? len : room);
    r->len += len < room ? len : room;
    r->body[r->len] = '\0';
    return len;
}

static inline size_t reply_header(char *p, size_t size, size_t n, void *arg)
{
    struct reply *r = arg;
    size_t len = size * n;
    if (len > 14 && strncasecmp(p, "X-Request-Id: ", 14) == 0) {
        size_t v = strcspn(p + 14, "\r\n");
        if (v >= sizeof r->request_id)
            v = sizeof r->request_id - 1;
        memcpy(r->request_id, p + 14, v);
        r->request_id[v] = '\0';
    }
    return len;
}

static inline struct reply http_get(const char *url, const char *const *headers, long timeout_ms)
{
    struct reply r;
    memset(&r, 0, sizeof r);
    CURL *easy = curl_easy_init();
    CHECK_NOT_NULL(easy);
    struct curl_slist *h = NULL;
    for (int i = 0; headers != NULL && headers[i] != NULL; i++)
        h = curl_slist_append(h, headers[i]);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, reply_body);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, reply_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 30000L);
    ctx_time_t start = ctx_now();
    r.rc = curl_easy_perform(easy);
    r.ms = (long)((ctx_now() - start) / CTX_MILLISECOND);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
    const char *type = NULL;
    if (curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &type) == CURLE_OK && type != NULL)
        snprintf(r.content_type, sizeof r.content_type, "%s", type);
    curl_easy_cleanup(easy);
    curl_slist_free_all(h);
    return r;
}

#define HTTP_GET(url, ms, ...) http_get((url), (const char *const[]){ __VA_ARGS__, NULL }, (ms))

/* A metric's value from /metrics, e.g. metric(s, "reportd_requests_in_flight"). */
static inline long metric(struct svc *s, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", s->url);
    struct reply r = HTTP_GET(url, 10000, NULL);
    CHECK_EQ_INT(r.rc, CURLE_OK);
    CHECK_EQ_INT(r.status, 200);
    const char *p = r.body;
    size_t n = strlen(name);
    while ((p = strstr(p, name)) != NULL) {
        if ((p == r.body || p[-1] == '\n') && p[n] == ' ')
            return strtol(p + n + 1, NULL, 10);
        p += n;
    }
    check_fail_(__FILE__, __LINE__, "no metric %s", name);
}

/* Sum of everything in flight: requests and the three parts. */
static inline long in_flight(struct svc *s)
{
    return metric(s, "reportd_requests_in_flight") +
           metric(s, "reportd_parts_in_flight{part=\"compute\"}") +
           metric(s, "reportd_parts_in_flight{part=\"db\"}") +
           metric(s, "reportd_parts_in_flight{part=\"upstream\"}");
}

/* Waits (up to 5 s) until nothing is in flight; true when so.  A request
 * counts until libmicrohttpd has finished sending its answer, which may be
 * a moment after the client has read it. */
static inline bool settled(struct svc *s)
{
    ctx_time_t until = ctx_now() + 5 * CTX_SECOND;
    while (in_flight(s) != 0 && ctx_now() < until)
        ctx_sleep(ctx_background(), 2 * CTX_MILLISECOND);
    return in_flight(s) == 0;
}

#define RUN_TEST_ARG(fn, arg)                                                                      \
    do {                                                                                           \
        fprintf(stderr, "-- %s\n", #fn);                                                           \
        fn(arg);                                                                                   \
    } while (0)

#endif /* REPORTD_HARNESS_H */
