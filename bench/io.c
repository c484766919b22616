/* SPDX-License-Identifier: MIT */

/*
 * bench/io.c: the cost of cancellable I/O, side by side with its peers in
 * one invocation, in rounds (min / median / max of the rounds):
 *
 *   fast path   ctx_read / ctx_write of 64 bytes on a pipe that has data
 *               (room) under a context with a deadline, against the bare
 *               read(2) / write(2), against the bare system call that
 *               ctx_read / ctx_write make (preadv2 with RWF_NOWAIT, pwritev2
 *               with RWF_NOWAIT | RWF_NOSIGNAL: the floor of a call that
 *               never blocks and never changes the fd), against readv(2) /
 *               writev(2) of one iovec (the vectored entry that the floor's
 *               calls go through, without their flags), and against Go's
 *               os.Pipe with a read deadline (bench/io_go, run with `go
 *               run` as a coprocess, one round of Go after each round of C);
 *   cancel      1,000 threads blocked in ctx_read on 1,000 idle pipes under
 *               one context: from ctx_cancel to each thread's return, p50,
 *               p99 and max; beside it the floor, 1,000 threads in a bare
 *               futex wait woken by one FUTEX_WAKE;
 *   peer close  10,000 connections watched by ctx_with_peer_close: from the
 *               close() of a client end (in a child process, which holds
 *               the client ends) to the context being done, p50/p99/max;
 *               plus fds and bytes per watched connection.
 *
 * Usage: io [--quick] [--fast-only] [--rounds N] [--batch N] [--go DIR] [--out FILE.md]
 * (--fast-only: the fast path alone, for comparing builds of the library;
 * --batch: messages per turn on the pipe, 1 to 16384, for C and Go alike.)
 * The Markdown table goes to stdout and to FILE.md.
 */
#define _GNU_SOURCE
#include <ctx.h>
#include <ctx/io.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static int quick, fast_only;
/* 64-byte messages per turn of each kind on the pipe: all of the 1 MiB
 * pipe by default, so that a turn writes it full and reads it empty. */
static long pipe_batch = (1 << 20) / MSG;
static int rounds = 5;
#define MAX_ROUNDS 8

static void die(const char *what)
{
    fprintf(stderr, "bench io: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* min / median / max of n values (sorted in place). */
struct spread {
    double min, med, max;
};

static struct spread spread_of(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    struct spread s = { v[0], v[n / 2], v[n - 1] };
    return s;
}

/* ---------------------------------------------------------------------------
 * Fast path
 */

enum { BARE, CTX, FLOOR, VEC, KINDS };

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif
#ifndef RWF_NOSIGNAL
#define RWF_NOSIGNAL 0x00000100
#endif

/* The floor's write flags: RWF_NOSIGNAL only where the kernel has it
 * (6.18 and later), as ctx_write does. */
static int floor_wflags = RWF_NOWAIT | RWF_NOSIGNAL;

static ssize_t floor_read(int fd, void *buf, size_t n)
{
    struct iovec v = { buf, n };
    return syscall(SYS_preadv2, fd, &v, 1, -1L, -1L, RWF_NOWAIT);
}

static ssize_t floor_write(int fd, const void *buf, size_t n)
{
    struct iovec v = { (void *)(uintptr_t)buf, n };
    return syscall(SYS_pwritev2, fd, &v, 1, -1L, -1L, floor_wflags);
}

/* The vectored entry alone: readv/writev of one iovec, no flags.  It is
 * the way into the kernel that preadv2/pwritev2 share, so the floor's
 * distance from read/write splits into the entry's part and the flags'. */
static ssize_t vec_write(int fd, const void *buf, size_t n)
{
    struct iovec v = { (void *)(uintptr_t)buf, n };
    return writev(fd, &v, 1);
}

static ssize_t vec_read(int fd, void *buf, size_t n)
{
    struct iovec v = { buf, n };
    return readv(fd, &v, 1);
}

static ssize_t do_write(int kind, ctx_t *c, int fd, const void *buf, size_t n)
{
    return kind == BARE    ? write(fd, buf, n)
           : kind == CTX   ? ctx_write(c, fd, buf, n)
           : kind == FLOOR ? floor_write(fd, buf, n)
                           : vec_write(fd, buf, n);
}

static ssize_t do_read(int kind, ctx_t *c, int fd, void *buf, size_t n)
{
    return kind == BARE    ? read(fd, buf, n)
           : kind == CTX   ? ctx_read(c, fd, buf, n)
           : kind == FLOOR ? floor_read(fd, buf, n)
                           : vec_read(fd, buf, n);
}

/* ns per 64-byte read and write of each kind (BARE, CTX, FLOOR, VEC), one
 * round.  The kinds take turns batch by batch, so that a change in the
 * machine's load falls on all of them alike and the ratios stay fair. */
static void fast_round(int rfd, int wfd, ctx_t *c, long ops, long batch, double rd[KINDS],
                       double wr[KINDS])
{
    static char buf[MSG];
    int64_t tr[KINDS] = { 0 }, tw[KINDS] = { 0 };
    long done = 0;
    for (; done < ops; done += batch) {
        for (int kind = BARE; kind < KINDS; kind++) {
            int64_t t0 = now_ns();
            for (long i = 0; i < batch; i++)
                if (do_write(kind, c, wfd, buf, MSG) != MSG)
                    die("write");
            int64_t t1 = now_ns();
            for (long i = 0; i < batch; i++)
                if (do_read(kind, c, rfd, buf, MSG) != MSG)
                    die("read");
            int64_t t2 = now_ns();
            tw[kind] += t1 - t0;
            tr[kind] += t2 - t1;
        }
    }
    for (int kind = BARE; kind < KINDS; kind++) {
        rd[kind] = (double)tr[kind] / (double)done;
        wr[kind] = (double)tw[kind] / (double)done;
    }
}

/* ---------------------------------------------------------------------------
 * Cancel latency
 */

#define NTHREADS 1000

struct blocked {
    int fd;
    ctx_t *ctx;
    _Atomic int64_t woke;
};

static _Atomic int ready;
static _Atomic uint32_t futex_word;

static void *read_main(void *arg)
{
    struct blocked *b = arg;
    char x;
    atomic_fetch_add(&ready, 1);
    if (ctx_read(b->ctx, b->fd, &x, 1) != -1 || errno != CTX_CANCELED)
        die("ctx_read did not end with the context");
    atomic_store_explicit(&b->woke, now_ns(), memory_order_release);
    return NULL;
}

static void *futex_main(void *arg)
{
    struct blocked *b = arg;
    atomic_fetch_add(&ready, 1);
    while (atomic_load(&futex_word) == 0)
        syscall(SYS_futex, &futex_word, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
    atomic_store_explicit(&b->woke, now_ns(), memory_order_release);
    return NULL;
}

/* A benchmark's pause, not a test's synchronisation: once every thread has
 * said it is about to block, give them time to get there. */
static void await_ready(int n)
{
    while (atomic_load(&ready) < n) {
        struct timespec ts = { 0, 1000 * 1000 };
        nanosleep(&ts, NULL);
    }
    struct timespec settle = { 0, 300 * 1000 * 1000 };
    nanosleep(&settle, NULL);
}

/* One round: p50, p99, max in microseconds. */
static void cancel_round(int futex, double out[3])
{
    int n = quick ? 100 : NTHREADS;
    struct blocked *b = calloc((size_t)n, sizeof *b);
    int(*p)[2] = calloc((size_t)n, sizeof *p);
    pthread_t *t = calloc((size_t)n, sizeof *t);
    int64_t *lat = calloc((size_t)n, sizeof *lat);
    if (b == NULL || p == NULL || t == NULL || lat == NULL)
        die("calloc");
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    atomic_store(&ready, 0);
    atomic_store(&futex_word, 0);
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    for (int i = 0; i < n; i++) {
        if (!futex && pipe2(p[i], O_CLOEXEC) != 0)
            die("pipe2");
        b[i].fd = futex ? -1 : p[i][0];
        b[i].ctx = c;
        if (pthread_create(&t[i], &a, futex ? futex_main : read_main, &b[i]) != 0)
            die("pthread_create");
    }
    pthread_attr_destroy(&a);
    await_ready(n);
    int64_t t0 = now_ns();
    if (futex) {
        atomic_store(&futex_word, 1);
        syscall(SYS_futex, &futex_word, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
    } else {
        ctx_cancel(cancel);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        lat[i] = atomic_load(&b[i].woke) - t0;
        if (!futex) {
            close(p[i][0]);
            close(p[i][1]);
        }
    }
    qsort(lat, (size_t)n, sizeof *lat, cmp_i64);
    out[0] = (double)lat[n / 2] / 1e3;
    out[1] = (double)lat[(n * 99) / 100] / 1e3;
    out[2] = (double)lat[n - 1] / 1e3;
    ctx_unref(c);
    free(b);
    free(p);
    free(t);
    free(lat);
}

/* ---------------------------------------------------------------------------
 * Peer close
 */

static _Atomic size_t heap_bytes;

static void *count_malloc(size_t size)
{
    size_t *p = malloc(size + 16);
    if (p == NULL)
        return NULL;
    p[0] = size;
    atomic_fetch_add(&heap_bytes, size);
    return (char *)p + 16;
}

static void count_free(void *ptr)
{
    if (ptr == NULL)
        return;
    size_t *p = (size_t *)(void *)((char *)ptr - 16);
    atomic_fetch_sub(&heap_bytes, p[0]);
    free(p);
}

static int fd_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 3;
}

static _Atomic int64_t *done_at;

static void record_done(void *arg)
{
    atomic_store_explicit(&done_at[(intptr_t)arg], now_ns(), memory_order_release);
}

/* The child: connects n times, then closes the connection the parent names
 * and answers with the time just before close(). */
static void client_process(int port, int n, int cmd, int reply)
{
    int *fds = malloc((size_t)n * sizeof *fds);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    a.sin_port = htons((uint16_t)port);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&a, sizeof a) != 0)
            _exit(3);
    }
    int k;
    while (read(cmd, &k, sizeof k) == sizeof k) {
        int64_t t = now_ns();
        close(fds[k]);
        if (write(reply, &t, sizeof t) != sizeof t)
            _exit(4);
    }
    _exit(0);
}

struct peer_result {
    int watched;
    double p50[MAX_ROUNDS], p99[MAX_ROUNDS], max[MAX_ROUNDS];
    double fds_per_watch, bytes_per_watch;
    int ok;
};

static void peer_bench(struct peer_result *r)
{
    int n = quick ? 500 : 10000;
    int samples = quick ? 50 : 300;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)n + 200;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = rl.rlim_max < want ? rl.rlim_max : want;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur < want) {
        fprintf(stderr, "bench io: peer close skipped: RLIMIT_NOFILE %lu < %lu\n",
                (unsigned long)rl.rlim_cur, (unsigned long)want);
        return;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4096) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) != 0)
        die("listen");
    int cmd[2], reply[2];
    if (pipe2(cmd, O_CLOEXEC) != 0 || pipe2(reply, O_CLOEXEC) != 0)
        die("pipe2");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        close(l);
        close(cmd[1]); /* else the child never sees the end of its commands */
        close(reply[0]);
        client_process(ntohs(a.sin_port), n, cmd[0], reply[1]);
    }
    close(cmd[0]);
    close(reply[1]);
    int *sv = malloc((size_t)n * sizeof *sv);
    ctx_t **c = malloc((size_t)n * sizeof *c);
    done_at = calloc((size_t)n, sizeof *done_at);
    for (int i = 0; i < n; i++) {
        sv[i] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (sv[i] < 0)
            die("accept");
    }
    /* Accepted in the child's connect order, so sv[i] pairs with its fds[i]. */
    ctx_t *warm = ctx_with_peer_close(ctx_background(), sv[0], NULL); /* starts the watcher */
    ctx_unref(warm);
    int fds0 = fd_count();
    size_t bytes0 = atomic_load(&heap_bytes);
    for (int i = 0; i < n; i++) {
        c[i] = ctx_with_peer_close(ctx_background(), sv[i], NULL);
        if (c[i] == NULL)
            die("ctx_with_peer_close");
    }
    r->fds_per_watch = (double)(fd_count() - fds0) / n;
    r->bytes_per_watch = (double)(atomic_load(&heap_bytes) - bytes0) / n;
    for (int i = 0; i < n; i++)
        if (ctx_after_func(c[i], record_done, (void *)(intptr_t)i, NULL) != 0)
            die("ctx_after_func");
    r->watched = n;
    int next = 0;
    int64_t *lat = malloc((size_t)samples * sizeof *lat);
    for (int round = 0; round < rounds; round++) {
        for (int s = 0; s < samples; s++, next++) {
            int k = next * 7 % n; /* spread over the table */
            int64_t t0;
            if (write(cmd[1], &k, sizeof k) != sizeof k ||
                read(reply[0], &t0, sizeof t0) != sizeof t0)
                die("child");
            ctx_wait(c[k], CTX_FOREVER);
            int64_t t1;
            while ((t1 = atomic_load_explicit(&done_at[k], memory_order_acquire)) == 0)
                sched_yield(); /* the AfterFunc runs right after the cancel */
            lat[s] = t1 - t0;
        }
        qsort(lat, (size_t)samples, sizeof *lat, cmp_i64);
        r->p50[round] = (double)lat[samples / 2] / 1e3;
        r->p99[round] = (double)lat[(samples * 99) / 100] / 1e3;
        r->max[round] = (double)lat[samples - 1] / 1e3;
    }
    close(cmd[1]);
    waitpid(pid, NULL, 0);
    close(reply[0]);
    for (int i = 0; i < n; i++) {
        ctx_unref(c[i]);
        close(sv[i]);
    }
    close(l);
    free(lat);
    free(sv);
    free(c);
    r->ok = 1;
}

/* ---------------------------------------------------------------------------
 * The report
 */

static FILE *out_md;

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (out_md != NULL) {
        va_start(ap, fmt);
        vfprintf(out_md, fmt, ap);
        va_end(ap);
    }
}

static void row(const char *name, const char *unit, double *v, int n)
{
    struct spread s = spread_of(v, n);
    /* Ratios to two places: their goals are such as 1.25x. */
    if (strcmp(unit, "x") == 0)
        emit("| %s | %.2f | %.2f | %.2f | %s |\n", name, s.min, s.med, s.max, unit);
    else
        emit("| %s | %.1f | %.1f | %.1f | %s |\n", name, s.min, s.med, s.max, unit);
}

int main(int argc, char **argv)
{
    const char *go_dir = NULL, *out = NULL;
    int rounds_given = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--fast-only") == 0)
            fast_only = 1;
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            pipe_batch = atol(argv[++i]);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = atoi(argv[++i]), rounds_given = 1;
        else if (strcmp(argv[i], "--go") == 0 && i + 1 < argc)
            go_dir = argv[++i];
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
    }
    if (quick && !rounds_given)
        rounds = 3;
    if (pipe_batch < 1 || pipe_batch > (1 << 20) / MSG) {
        fprintf(stderr, "bench io: --batch takes 1 to %d\n", (1 << 20) / MSG);
        return 2;
    }
    if (rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench io: --rounds takes 1 to %d\n", MAX_ROUNDS);
        return 2;
    }
    if (out != NULL && (out_md = fopen(out, "w")) == NULL)
        die(out);
    /* Count the library's heap bytes (for bytes per watched connection). */
    ctx_replace_allocator(count_malloc, count_free);
    signal(SIGPIPE, SIG_IGN);
    long ops = quick ? 20000 : 200000;

    /* The Go peer, one round per line we send it. */
    FILE *go_in = NULL, *go_out = NULL;
    pid_t go_pid = -1;
    if (go_dir != NULL) {
        int to[2], from[2];
        if (pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0)
            die("pipe2");
        go_pid = fork();
        if (go_pid == 0) {
            dup2(to[0], 0);
            dup2(from[1], 1);
            if (chdir(go_dir) != 0)
                _exit(127);
            char opsarg[32], batcharg[32];
            snprintf(opsarg, sizeof opsarg, "%ld", ops);
            snprintf(batcharg, sizeof batcharg, "%ld", pipe_batch);
            execlp("go", "go", "run", "main.go", opsarg, batcharg, (char *)NULL);
            _exit(127);
        }
        close(to[0]);
        close(from[1]);
        go_in = fdopen(to[1], "w");
        go_out = fdopen(from[0], "r");
    }

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        die("pipe2");
    if (fcntl(p[1], F_SETPIPE_SZ, 1 << 20) < 0)
        die("F_SETPIPE_SZ (1 MiB)");
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    /* The same on a Unix socketpair, whose buffer holds far fewer 64-byte
     * messages than the 1 MiB pipe. */
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
        die("socketpair");
    long sock_batch = 128;
    double br[MAX_ROUNDS], bw[MAX_ROUNDS], cr[MAX_ROUNDS], cw[MAX_ROUNDS], gr[MAX_ROUNDS],
        gw[MAX_ROUNDS], rr[MAX_ROUNDS], rw[MAX_ROUNDS], grr[MAX_ROUNDS], grw[MAX_ROUNDS];
    double sbr[MAX_ROUNDS], sbw[MAX_ROUNDS], scr[MAX_ROUNDS], scw[MAX_ROUNDS], srr[MAX_ROUNDS],
        srw[MAX_ROUNDS];
    double fr[MAX_ROUNDS], fw[MAX_ROUNDS], frr[MAX_ROUNDS], frw[MAX_ROUNDS], cfr[MAX_ROUNDS],
        cfw[MAX_ROUNDS];
    double vr[MAX_ROUNDS], vw[MAX_ROUNDS], vrr[MAX_ROUNDS], vrw[MAX_ROUNDS], fvr[MAX_ROUNDS],
        fvw[MAX_ROUNDS];
    int have_go = go_in != NULL;
    static char probe[1];
    if (floor_write(p[1], probe, 1) != 1) {
        if (errno != EOPNOTSUPP)
            die("pwritev2");
        floor_wflags = RWF_NOWAIT; /* a kernel before RWF_NOSIGNAL */
        if (floor_write(p[1], probe, 1) != 1)
            die("pwritev2");
    }
    if (read(p[0], probe, 1) != 1)
        die("read");
    double rd[KINDS], wr[KINDS];
    fast_round(p[0], p[1], c, ops / 4, pipe_batch, rd, wr); /* warm up */
    for (int r = 0; r < rounds; r++) {
        fast_round(p[0], p[1], c, ops, pipe_batch, rd, wr);
        br[r] = rd[BARE], cr[r] = rd[CTX], fr[r] = rd[FLOOR];
        bw[r] = wr[BARE], cw[r] = wr[CTX], fw[r] = wr[FLOOR];
        rr[r] = cr[r] / br[r];
        rw[r] = cw[r] / bw[r];
        frr[r] = fr[r] / br[r];
        frw[r] = fw[r] / bw[r];
        cfr[r] = cr[r] / fr[r];
        cfw[r] = cw[r] / fw[r];
        vr[r] = rd[VEC], vw[r] = wr[VEC];
        vrr[r] = vr[r] / br[r];
        vrw[r] = vw[r] / bw[r];
        fvr[r] = fr[r] / vr[r];
        fvw[r] = fw[r] / vw[r];
        fast_round(sp[0], sp[1], c, ops, sock_batch, rd, wr);
        sbr[r] = rd[BARE], scr[r] = rd[CTX];
        sbw[r] = wr[BARE], scw[r] = wr[CTX];
        srr[r] = scr[r] / sbr[r];
        srw[r] = scw[r] / sbw[r];
        if (have_go) {
            fprintf(go_in, "round\n");
            fflush(go_in);
            if (fscanf(go_out, "%lf %lf", &gr[r], &gw[r]) != 2) {
                fprintf(stderr, "bench io: the Go peer did not answer; Go figures left out\n");
                have_go = 0;
            } else {
                grr[r] = gr[r] / br[r];
                grw[r] = gw[r] / bw[r];
            }
        }
    }
    ctx_unref(c);
    close(p[0]);
    close(p[1]);
    close(sp[0]);
    close(sp[1]);
    if (go_in != NULL) {
        fclose(go_in);
        fclose(go_out);
        waitpid(go_pid, NULL, 0);
    }

    double lat[3][MAX_ROUNDS], flat[3][MAX_ROUNDS];
    for (int r = 0; r < rounds && !fast_only; r++) {
        double v[3], f[3];
        cancel_round(0, v);
        cancel_round(1, f);
        for (int k = 0; k < 3; k++) {
            lat[k][r] = v[k];
            flat[k][r] = f[k];
        }
    }

    struct peer_result pr;
    memset(&pr, 0, sizeof pr);
    if (!fast_only)
        peer_bench(&pr);

    emit("## I/O (bench/io.c, %d rounds%s)\n\n", rounds, quick ? ", --quick" : "");
    emit("| measure | min | median | max | unit |\n|---|---|---|---|---|\n");
    row("bare read(2), 64 B from a pipe with data", "ns/op", br, rounds);
    row("ctx_read, 64 B, context with a deadline", "ns/op", cr, rounds);
    row("ratio ctx_read / read", "x", rr, rounds);
    row("bare write(2), 64 B to a pipe with room", "ns/op", bw, rounds);
    row("ctx_write, 64 B, context with a deadline", "ns/op", cw, rounds);
    row("ratio ctx_write / write", "x", rw, rounds);
    row("floor: bare preadv2(RWF_NOWAIT), 64 B, pipe", "ns/op", fr, rounds);
    row("ratio preadv2 / read (the floor)", "x", frr, rounds);
    row("ratio ctx_read / preadv2", "x", cfr, rounds);
    row(floor_wflags & RWF_NOSIGNAL ? "floor: bare pwritev2(RWF_NOWAIT\\|RWF_NOSIGNAL), 64 B, pipe"
                                    : "floor: bare pwritev2(RWF_NOWAIT), 64 B, pipe",
        "ns/op", fw, rounds);
    row("ratio pwritev2 / write (the floor)", "x", frw, rounds);
    row("ratio ctx_write / pwritev2", "x", cfw, rounds);
    row("the vectored entry alone: bare readv(2), 1 iovec, 64 B, pipe", "ns/op", vr, rounds);
    row("ratio readv / read (the entry's part of the floor)", "x", vrr, rounds);
    row("ratio preadv2 / readv (RWF_NOWAIT's part)", "x", fvr, rounds);
    row("the vectored entry alone: bare writev(2), 1 iovec, 64 B, pipe", "ns/op", vw, rounds);
    row("ratio writev / write (the entry's part of the floor)", "x", vrw, rounds);
    row("ratio pwritev2 / writev (the flags' part)", "x", fvw, rounds);
    row("bare read(2), 64 B, Unix socket", "ns/op", sbr, rounds);
    row("ctx_read, 64 B, Unix socket", "ns/op", scr, rounds);
    row("ratio ctx_read / read, socket", "x", srr, rounds);
    row("bare write(2), 64 B, Unix socket", "ns/op", sbw, rounds);
    row("ctx_write, 64 B, Unix socket", "ns/op", scw, rounds);
    row("ratio ctx_write / write, socket", "x", srw, rounds);
    if (have_go) {
        row("Go os.Pipe Read, 64 B, read deadline set", "ns/op", gr, rounds);
        row("ratio Go Read / bare read", "x", grr, rounds);
        row("Go os.Pipe Write, 64 B", "ns/op", gw, rounds);
        row("ratio Go Write / bare write", "x", grw, rounds);
    }
    int nt = quick ? 100 : NTHREADS;
    char name[128];
    const char *pct[3] = { "p50", "p99", "max" };
    for (int k = 0; k < 3 && !fast_only; k++) {
        snprintf(name, sizeof name, "cancel -> return, %d threads in ctx_read, %s", nt, pct[k]);
        row(name, "us", lat[k], rounds);
    }
    for (int k = 0; k < 3 && !fast_only; k++) {
        snprintf(name, sizeof name, "floor: FUTEX_WAKE -> return, %d threads, %s", nt, pct[k]);
        row(name, "us", flat[k], rounds);
    }
    if (pr.ok) {
        snprintf(name, sizeof name, "peer close() -> ctx done, %d watched, p50", pr.watched);
        row(name, "us", pr.p50, rounds);
        snprintf(name, sizeof name, "peer close() -> ctx done, %d watched, p99", pr.watched);
        row(name, "us", pr.p99, rounds);
        snprintf(name, sizeof name, "peer close() -> ctx done, %d watched, max", pr.watched);
        row(name, "us", pr.max, rounds);
        emit("| fds per watched connection | %.3f | | | fd |\n", pr.fds_per_watch);
        emit("| library heap bytes per watched connection | %.1f | | | B |\n", pr.bytes_per_watch);
    }
    emit("\nRatios are per round (each C round against the bare call of the same round).\n");
    if (out_md != NULL)
        fclose(out_md);
    return 0;
}
