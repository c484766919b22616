/* SPDX-License-Identifier: MIT */

/*
 * peer_proc.h: a peer server run as a child process (the gRPC server in
 * Python, the Go HTTP server), talked to over two pipes.
 *
 * The child's stdout is read by a thread of ours that keeps every line, so a
 * test can wait for a line with a given prefix (an event the server reports,
 * with a timeout) without racing the reader.  The child's stdin is a pipe
 * too: servers written for these tests exit when it closes, so a test that
 * dies takes its servers with it.  Include check.h first.
 */
#ifndef CTX_CURL_TESTS_PEER_PROC_H
#define CTX_CURL_TESTS_PEER_PROC_H

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>

#define PEER_PROC_MAX_LINES 1024

struct peer_proc {
    pid_t pid;
    int in;  /* the child's stdin */
    int out; /* the child's stdout */
    pthread_t reader;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *lines[PEER_PROC_MAX_LINES];
    int nlines;
    bool eof;
};

static void *peer_proc_read_(void *arg)
{
    struct peer_proc *p = arg;
    char buf[4096];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(p->out, buf + len, sizeof buf - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        char *nl;
        while ((nl = memchr(buf, '\n', len)) != NULL) {
            *nl = '\0';
            if (getenv("CTX_TEST_VERBOSE") != NULL)
                fprintf(stderr, "   [peer %d] %s\n", (int)p->pid, buf);
            char *line = strdup(buf);
            CHECK_NOT_NULL(line);
            pthread_mutex_lock(&p->mu);
            if (p->nlines == PEER_PROC_MAX_LINES) {
                /* Full: drop the slots of lines already taken. */
                int kept = 0;
                for (int i = 0; i < p->nlines; i++)
                    if (p->lines[i] != NULL)
                        p->lines[kept++] = p->lines[i];
                p->nlines = kept;
            }
            CHECK(p->nlines < PEER_PROC_MAX_LINES);
            p->lines[p->nlines++] = line;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
            len -= (size_t)(nl + 1 - buf);
            memmove(buf, nl + 1, len);
        }
        CHECK(len < sizeof buf - 1); /* no line is that long */
    }
    pthread_mutex_lock(&p->mu);
    p->eof = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Starts argv[0] (a path) with argv; false when it cannot be executed. */
static inline bool peer_proc_start(struct peer_proc *p, char *const argv[])
{
    memset(p, 0, sizeof *p);
    if (access(argv[0], X_OK) != 0)
        return false;
    int in[2], out[2];
    CHECK_EQ_INT(pipe2(in, O_CLOEXEC), 0);
    CHECK_EQ_INT(pipe2(out, O_CLOEXEC), 0);
    p->pid = fork();
    CHECK(p->pid >= 0);
    if (p->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    p->in = in[1];
    p->out = out[0];
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    CHECK_EQ_INT(pthread_create(&p->reader, NULL, peer_proc_read_, p), 0);
    return true;
}

/* Waits up to timeout for a line that starts with prefix and that no earlier
 * call took; returns a copy (free it) or NULL on timeout or the child's end. */
static inline char *peer_proc_wait_line(struct peer_proc *p, const char *prefix,
                                        ctx_duration_t timeout)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(timeout / CTX_SECOND);
    until.tv_nsec += (long)(timeout % CTX_SECOND);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    size_t plen = strlen(prefix);
    char *found = NULL;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        for (int i = 0; i < p->nlines && found == NULL; i++) {
            if (p->lines[i] != NULL && strncmp(p->lines[i], prefix, plen) == 0) {
                found = p->lines[i];
                p->lines[i] = NULL;
            }
        }
        if (found != NULL || p->eof)
            break;
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&p->mu);
    return found;
}

/* Sends one command line to the child. */
static inline void peer_proc_send(struct peer_proc *p, const char *line)
{
    size_t len = strlen(line);
    CHECK_EQ_INT(write(p->in, line, len), (long long)len);
    CHECK_EQ_INT(write(p->in, "\n", 1), 1);
}

/* SIGKILLs the child at once (a server killed mid-call). */
static inline void peer_proc_kill(struct peer_proc *p)
{
    kill(p->pid, SIGKILL);
}

/* Closes the child's stdin, which asks it to exit, and reaps it (killing it
 * after 5 s if it does not go). */
static inline void peer_proc_stop(struct peer_proc *p)
{
    close(p->in);
    int status;
    for (int i = 0; i < 500; i++) {
        if (waitpid(p->pid, &status, WNOHANG) == p->pid)
            goto reaped;
        ctx_sleep(ctx_background(), 10 * CTX_MILLISECOND);
    }
    kill(p->pid, SIGKILL);
    waitpid(p->pid, &status, 0);
reaped:
    CHECK_EQ_INT(pthread_join(p->reader, NULL), 0);
    close(p->out);
    for (int i = 0; i < p->nlines; i++)
        free(p->lines[i]);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
}

#endif /* CTX_CURL_TESTS_PEER_PROC_H */
