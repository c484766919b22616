/* SPDX-License-Identifier: MIT */

/*
 * faulttest.c: the helpers of faulttest.h.  Only libc, pthreads and the
 * header-only parts of check.h and io_helpers.h: no libctx symbol, so the
 * library links beside any build of the core.
 */
#include "faultproxy/faulttest.h"

#include "io_helpers.h"

#include <sys/socket.h>

void faulttest_proxy(faultproxy_t *fp, const char *cmd)
{
    CHECK_MSG(faultproxy_cmd(fp, "%s", cmd) == 0, "proxy command %s", cmd);
}

static void *echo_conn(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    close(fd);
    return NULL;
}

/* Accepts until faulttest_echo_stop shuts the listener down. */
static void *echo_accept(void *arg)
{
    faulttest_echo_t *e = arg;
    for (;;) {
        int fd = accept4(e->listener, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return NULL;
        pthread_t t;
        CHECK_EQ_INT(pthread_create(&t, NULL, echo_conn, (void *)(intptr_t)fd), 0);
        pthread_detach(t);
    }
}

void faulttest_echo_start(faulttest_echo_t *e, int backlog)
{
    e->listener = io_listen(backlog, &e->port);
    check_thread_start(&e->thread, echo_accept, e);
}

void faulttest_echo_stop(faulttest_echo_t *e)
{
    shutdown(e->listener, SHUT_RDWR);
    check_thread_join(e->thread);
    close(e->listener);
    e->listener = -1;
}

void faulttest_check_late(faulttest_late_t *l, const char *what, ctx_time_t end,
                          ctx_time_t returned, int64_t rd0)
{
    ctx_duration_t late = returned - end;
    int64_t starved = lateness_run_delay() - rd0;
    if (starved < 0)
        starved = 0;
    if (late - starved > l->worst)
        l->worst = late - starved;
    CHECK_MSG(late - starved <= l->bound,
              "%s: returned %lld ms after the context's end, %lld ms of it waiting for a CPU", what,
              (long long)(late / CTX_MILLISECOND), (long long)(starved / CTX_MILLISECOND));
}
