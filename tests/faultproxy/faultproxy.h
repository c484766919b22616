/* SPDX-License-Identifier: MIT */

/*
 * faultproxy.h: the test side of tests/faultproxy/faultproxy.c.
 *
 *   faultproxy_t fp;
 *   if (faultproxy_start(&fp, FAULTPROXY_EXE, "127.0.0.1:5432") != 0) ...
 *   connect to 127.0.0.1:fp.port instead of the target
 *   faultproxy_cmd(&fp, "dark");         returns once the proxy forwards nothing
 *   faultproxy_cmd(&fp, "trickle %d", 1000);
 *   faultproxy_count(&fp);               open client connections
 *   faultproxy_stop(&fp);                kills and reaps the child
 *
 * The proxy runs as a child process with its stdin and stdout on pipes.  It
 * exits on EOF on stdin, so a test that aborts takes its proxy with it: the
 * kernel closes the test's end of the pipe.  On Linux the child also asks for
 * SIGKILL when its parent dies.  The pipes are close-on-exec in the test, so
 * other children the test starts (a PostgreSQL cluster) do not hold them.
 *
 * FAULTPROXY_EXE is the path of the built proxy; CMake defines it for the
 * tests that use this header.  Functions return 0 or -1 (and print why on
 * stderr); none aborts, so the header works with any test framework.
 */
#ifndef CTX_TESTS_FAULTPROXY_H
#define CTX_TESTS_FAULTPROXY_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#ifndef FAULTPROXY_EXE
#ifdef CTX_FAULTPROXY_PATH
#define FAULTPROXY_EXE CTX_FAULTPROXY_PATH
#else
#define FAULTPROXY_EXE "faultproxy"
#endif
#endif

typedef struct faultproxy {
    pid_t pid;
    FILE *in;  /* commands to the proxy */
    FILE *out; /* its answers */
    int port;  /* where it listens, on 127.0.0.1 */
} faultproxy_t;

static inline int faultproxy_pipe_(int fds[2])
{
#ifdef __linux__
    return pipe2(fds, O_CLOEXEC);
#else
    if (pipe(fds) != 0)
        return -1;
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);
    fcntl(fds[1], F_SETFD, FD_CLOEXEC);
    return 0;
#endif
}

/* Ends the proxy (every connection through it closes) and reaps it.
 * Safe to call twice and on a proxy that failed to start. */
static inline void faultproxy_stop(faultproxy_t *fp)
{
    if (fp->pid > 0) {
        kill(fp->pid, SIGKILL);
        while (waitpid(fp->pid, NULL, 0) < 0 && errno == EINTR)
            ;
    }
    if (fp->in)
        fclose(fp->in);
    if (fp->out)
        fclose(fp->out);
    memset(fp, 0, sizeof *fp);
    fp->pid = -1;
}

/* Starts `exe` listening on 127.0.0.1 (a port the kernel picks) in front of
 * `target` ("HOST:PORT") and reads the port it got into fp->port. */
static inline int faultproxy_start(faultproxy_t *fp, const char *exe, const char *target)
{
    int to[2], from[2];
    memset(fp, 0, sizeof *fp);
    fp->pid = -1;
    if (faultproxy_pipe_(to) != 0)
        return -1;
    if (faultproxy_pipe_(from) != 0) {
        close(to[0]);
        close(to[1]);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(to[0]);
        close(to[1]);
        close(from[0]);
        close(from[1]);
        return -1;
    }
    if (pid == 0) {
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL);
#endif
        dup2(to[0], 0);
        dup2(from[1], 1);
        execl(exe, exe, "--listen", "127.0.0.1:0", "--target", target, (char *)NULL);
        fprintf(stderr, "faultproxy: cannot run %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    fp->pid = pid;
    fp->in = fdopen(to[1], "w");
    fp->out = fdopen(from[0], "r");
    if (!fp->in)
        close(to[1]);
    if (!fp->out)
        close(from[0]);
    char line[128];
    if (!fp->in || !fp->out || !fgets(line, sizeof line, fp->out) ||
        sscanf(line, "port %d", &fp->port) != 1) {
        fprintf(stderr, "faultproxy: no port from %s\n", exe);
        faultproxy_stop(fp);
        return -1;
    }
    return 0;
}

/* Sends one command and waits for its answer.  With `answer` non-NULL the
 * answer line (without the newline) is copied there.  0 when it says ok. */
static inline int faultproxy_vcmd_(faultproxy_t *fp, char *answer, size_t answerlen,
                                   const char *fmt, va_list ap)
{
    char line[256];
    if (fp->pid <= 0)
        return -1;
    vfprintf(fp->in, fmt, ap);
    fputc('\n', fp->in);
    if (fflush(fp->in) != 0 || !fgets(line, sizeof line, fp->out)) {
        fprintf(stderr, "faultproxy: no answer\n");
        return -1;
    }
    line[strcspn(line, "\r\n")] = 0;
    if (answer && answerlen) {
        size_t n = strlen(line);
        n = n < answerlen - 1 ? n : answerlen - 1;
        memcpy(answer, line, n);
        answer[n] = 0;
    }
    if (strncmp(line, "ok", 2) != 0 || (line[2] != 0 && line[2] != ' ')) {
        fprintf(stderr, "faultproxy: %s\n", line);
        return -1;
    }
    return 0;
}

#if defined(__GNUC__) || defined(__clang__)
__attribute__((format(printf, 2, 3)))
#endif
static inline int
faultproxy_cmd(faultproxy_t *fp, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = faultproxy_vcmd_(fp, NULL, 0, fmt, ap);
    va_end(ap);
    return rc;
}

static inline int faultproxy_cmd_answer_(faultproxy_t *fp, char *answer, size_t len,
                                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = faultproxy_vcmd_(fp, answer, len, fmt, ap);
    va_end(ap);
    return rc;
}

/* The number of open client connections, or -1. */
static inline int faultproxy_count(faultproxy_t *fp)
{
    char ans[64];
    int n = -1;
    if (faultproxy_cmd_answer_(fp, ans, sizeof ans, "count") != 0 || sscanf(ans, "ok %d", &n) != 1)
        return -1;
    return n;
}

#endif
