/* SPDX-License-Identifier: MIT */

/*
 * faulttest.h: what the fault tests share besides the proxy itself
 * (faultproxy.h) and the run-queue counter (lateness.h).
 *
 *   faulttest_proxy(&fp, "dark");          a proxy command that must succeed
 *   faulttest_echo_start(&echo, 16);       a TCP echo server on 127.0.0.1
 *   faulttest_late_t late = FAULTTEST_LATE_INIT(100 * CTX_MILLISECOND);
 *   faulttest_check_late(&late, "read", end, check_mono_now(), rd0);
 *
 * The functions are in faulttest.c, a static library (ctx_faulttest in
 * tests/CMakeLists.txt) that calls nothing in libctx, so a test links it
 * beside whichever libctx it already links (the static core, or a companion
 * library that brings the shared one).  A failed check aborts, as in
 * check.h.
 */
#ifndef CTX_TESTS_FAULTTEST_H
#define CTX_TESTS_FAULTTEST_H

#include "check.h"
#include "faultproxy/faultproxy.h"
#include "faultproxy/lateness.h"

/* Sends cmd to the proxy; a failed check unless it answers ok. */
void faulttest_proxy(faultproxy_t *fp, const char *cmd);

/* A TCP echo server on 127.0.0.1 (a port the kernel picks): a thread
 * accepts, and a detached thread per connection writes back what it reads
 * until EOF. */
typedef struct faulttest_echo {
    int listener;
    int port;
    pthread_t thread;
} faulttest_echo_t;

void faulttest_echo_start(faulttest_echo_t *e, int backlog);
/* Shuts the listener down and joins the accepting thread; connections
 * still open end when their client closes. */
void faulttest_echo_stop(faulttest_echo_t *e);

/* How late calls returned after their context's end, against a bound. */
typedef struct faulttest_late {
    ctx_duration_t bound;
    ctx_duration_t worst; /* the latest return so far, net of CPU waits */
} faulttest_late_t;

#define FAULTTEST_LATE_INIT(bound_)                                                                \
    {                                                                                              \
        .bound = (bound_), .worst = INT64_MIN                                                      \
    }

/* The call `what` returned at `returned` for a context that ended at `end`;
 * rd0 is lateness_run_delay() from before the call.  The time the process
 * waited for a CPU meanwhile is not the library's and is subtracted
 * (lateness.h); what remains must be within l->bound, and l->worst keeps
 * the largest. */
void faulttest_check_late(faulttest_late_t *l, const char *what, ctx_time_t end,
                          ctx_time_t returned, int64_t rd0);

#endif
