/* SPDX-License-Identifier: MIT */

/*
 * lateness.h: how late a call returned after its context's end, less the
 * time this process spent waiting for a CPU meanwhile.
 *
 * The fault tests hold every call to a bound (100 ms after the context's
 * end).  On a machine whose cores are oversubscribed, a thread that is ready
 * to run can wait on the run queue for longer than that, and no library can
 * return while it is not scheduled.  Linux counts that wait per thread
 * (/proc/<pid>/task/<tid>/schedstat, second field: run_delay in ns).  A
 * round reads the sum over the process's threads before and after the call,
 * and the check subtracts the growth.  On an idle machine the growth is
 * near zero and the check is the plain bound; where the counters are absent
 * it is always the plain bound.
 */
#ifndef CTX_TESTS_LATENESS_H
#define CTX_TESTS_LATENESS_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>

/* The run-queue wait of every thread of this process so far, in ns; 0 when
 * the kernel does not count it. */
static inline int64_t lateness_run_delay(void)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return 0;
    int64_t sum = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[96];
        snprintf(path, sizeof path, "/proc/self/task/%.32s/schedstat", e->d_name);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            continue;
        unsigned long long run = 0, wait = 0;
        if (fscanf(f, "%llu %llu", &run, &wait) == 2)
            sum += (int64_t)wait;
        fclose(f);
    }
    closedir(d);
    return sum;
}

#endif
