/* SPDX-License-Identifier: MIT */

/*
 * ctx_shutdown: ends and joins every thread the library started, so that a
 * program can exit valgrind-clean or dlclose the library.  Each subsystem
 * with threads says whether they have work (EBUSY) and otherwise tells them
 * to end once idle; then thread.c joins them all.  Users of a subsystem
 * start its threads again on demand, so the library stays usable.
 *
 * Order: the pool first (a task may make deadlines or callbacks), then the
 * peer-close watcher and the signal thread (they cancel contexts, which may
 * queue callbacks), the timer thread (it feeds the callback workers), and
 * the callback workers last.
 */
#include "internal.h"

int ctx_shutdown(void)
{
    int (*const quit[])(void) = {
        ctx__pool_quit, ctx__peer_quit, ctx__signal_quit, ctx__timer_quit, ctx__after_quit,
    };
    /* First, so that a thread told to end below stays to be joined. */
    ctx__thread_join_begin();
    for (size_t i = 0; i < sizeof quit / sizeof quit[0]; i++) {
        int e = quit[i]();
        if (e != 0) {
            ctx__thread_join_cancel();
            return e;
        }
    }
    ctx__thread_join_all();
    return 0;
}
