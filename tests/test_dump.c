/* SPDX-License-Identifier: MIT */

/*
 * ctx_dump, ctx_track, ctx_dump_all and the leak report at exit: what each
 * line says, with tracking off (cancel nodes only) and on (every context,
 * with ages and creation sites).
 */
#include "check.h"

#include <sys/wait.h>

static size_t fmt_int(const void *v, char *buf, size_t size)
{
    return (size_t)snprintf(buf, size, "%d", *(const int *)v);
}

static const ctx_key_t user = { .name = "user", .format = fmt_int };

/* The dump of c as a string (free it). */
static char *dump(ctx_t *c)
{
    char *s = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&s, &n);
    CHECK_NOT_NULL(f);
    CHECK_EQ_INT(c != NULL ? ctx_dump(c, f) : ctx_dump_all(f), 0);
    fclose(f);
    return s;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

static void nop(void *arg)
{
    (void)arg;
}

static void test_untracked(void)
{
    static int id = 42;
    ctx_cancel_t *h;
    ctx_t *root = ctx_with_cancel(ctx_background(), &h);
    ctx_t *v = ctx_with_value(root, &user, &id, NULL);
    ctx_t *a = ctx_with_timeout(v, CTX_HOUR, NULL);
    ctx_t *b = ctx_with_cancel(root, NULL);
    ctx_t *b1 = ctx_with_cancel(b, NULL);
    ctx_after_t *stop;
    CHECK_EQ_INT(ctx_after_func(b, nop, NULL, &stop), 0);
    CHECK(ctx_done_fd(b1) >= 0);

    char *s = dump(root);
    fprintf(stderr, "%s", s);
    CHECK_EQ_INT(count_lines(s), 4); /* root, a, b, b1: the value node hangs off no list */
    CHECK(strncmp(s, "context.Background.WithCancel", 29) == 0);
    CHECK(strstr(s, "\n  .WithDeadline(") != NULL);
    CHECK(strstr(s, "left=59") != NULL || strstr(s, "left=3599") != NULL);
    CHECK(strstr(s, "\n  .WithCancel  callbacks=1\n") != NULL);
    CHECK(strstr(s, "\n    .WithCancel  fd\n") != NULL);
    free(s);

    /* The dump of a value node lists only what lies under it. */
    s = dump(v);
    CHECK_EQ_INT(count_lines(s), 2);
    CHECK(strstr(s, "WithValue(user, 42)\n") != NULL);
    free(s);

    int line = __LINE__ + 1;
    ctx_cancel(h);
    s = dump(root);
    CHECK_EQ_INT(count_lines(s), 1); /* cancelled children left their parent */
    char want[256];
    snprintf(want, sizeof want, "err=\"context canceled\"  cancelled=%s:%d (test_untracked)",
             __FILE__, line);
    CHECK_MSG(strstr(s, want) != NULL, "%s", s);
    free(s);

    ctx_after_stop(stop);
    ctx_unref(b1);
    ctx_unref(b);
    ctx_unref(a);
    ctx_unref(v);
    ctx_unref(root);
    CHECK_EQ_INT(ctx_dump(NULL, stderr), EINVAL);
    CHECK_EQ_INT(ctx_dump(ctx_background(), NULL), EINVAL);
    CHECK_EQ_INT(ctx_dump_all(stderr), ENOTSUP);
}

static void test_tracked(void)
{
    static int id = 7;
    ctx_track(true);
    int line = __LINE__ + 1;
    ctx_t *root = ctx_with_cancel(ctx_background(), NULL);
    ctx_t *v = ctx_with_value(root, &user, &id, NULL);
    ctx_t *w = ctx_without_cancel(v);
    ctx_t *k = ctx_with_cancel(w, NULL);

    char *s = dump(NULL);
    fprintf(stderr, "%s", s);
    CHECK_EQ_INT(count_lines(s), 4);
    char want[256];
    snprintf(want, sizeof want, "context.Background.WithCancel  age=");
    CHECK(strncmp(s, want, strlen(want)) == 0);
    snprintf(want, sizeof want, "created=%s:%d (test_tracked)", __FILE__, line);
    CHECK(strstr(s, want) != NULL);
    CHECK(strstr(s, "\n  .WithValue(user, 7)  age=") != NULL);
    CHECK(strstr(s, "\n    .WithoutCancel  age=") != NULL);
    CHECK(strstr(s, "\n      .WithCancel  age=") != NULL);
    free(s);

    /* The subtree under v only; then under the background root: all. */
    s = dump(v);
    CHECK_EQ_INT(count_lines(s), 3);
    CHECK(strncmp(s, "context.Background.WithCancel.WithValue(user, 7)  age=", 54) == 0);
    free(s);
    s = dump(ctx_background());
    CHECK_EQ_INT(count_lines(s), 5);
    free(s);

    ctx_unref(k);
    s = dump(NULL);
    CHECK_EQ_INT(count_lines(s), 3); /* a freed context leaves the registry */
    free(s);
    ctx_unref(w);
    ctx_unref(v);
    ctx_unref(root);
    s = dump(NULL);
    CHECK_EQ_INT(count_lines(s), 0);
    free(s);

    /* Many threads creating and freeing while another dumps. */
    ctx_track(false);
}

static atomic_int stop_flag;

static void *churn(void *arg)
{
    ctx_t *parent = arg;
    while (!atomic_load(&stop_flag)) {
        ctx_t *c = ctx_with_cancel(parent, NULL);
        static int id = 1;
        ctx_t *v = ctx_with_value(c, &user, &id, NULL);
        ctx_unref(v);
        ctx_unref(c);
    }
    return NULL;
}

static void test_dump_while_churning(void)
{
    ctx_track(true);
    ctx_cancel_t *h;
    ctx_t *root = ctx_with_cancel(ctx_background(), &h);
    pthread_t t[2];
    atomic_store(&stop_flag, 0);
    for (int i = 0; i < 2; i++)
        check_thread_start(&t[i], churn, root);
    for (int i = 0; i < 50; i++) {
        FILE *f = fopen("/dev/null", "w");
        CHECK_EQ_INT(ctx_dump_all(f), 0);
        CHECK_EQ_INT(ctx_dump(root, f), 0);
        fclose(f);
    }
    /* Tracking off and on again while contexts come and go. */
    ctx_track(false);
    ctx_track(true);
    atomic_store(&stop_flag, 1);
    for (int i = 0; i < 2; i++)
        check_thread_join(t[i]);
    ctx_cancel(h);
    ctx_unref(root);
    ctx_track(false);
}

/* The leak report: a child process with CTX_TRACK=1 that leaks. */
static void test_leak_report(const char *self)
{
    int fds[2];
    CHECK_EQ_INT(pipe(fds), 0);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        setenv("CTX_TRACK", "1", 1);
        execl(self, self, "--leak", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[4096];
    size_t n = 0;
    ssize_t r;
    while ((r = read(fds[0], buf + n, sizeof buf - 1 - n)) > 0)
        n += (size_t)r;
    buf[n] = '\0';
    close(fds[0]);
    int st;
    CHECK_EQ_INT(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st));
    CHECK_EQ_INT(WEXITSTATUS(st), 3); /* the exit status is unchanged */
    fprintf(stderr, "%s", buf);
    CHECK_MSG(strstr(buf, "libctx: 2 contexts still alive at exit:\n") != NULL, "%s", buf);
    CHECK(strstr(buf, "test_dump.c:") != NULL);
    CHECK(strstr(buf, "(leak)") != NULL);
}

static int leak(void)
{
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    static int id = 9;
    ctx_t *v = ctx_with_value(c, &user, &id, NULL);
    (void)v;
    ctx_t *freed = ctx_with_cancel(c, NULL);
    ctx_unref(freed);
    return 3;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--leak") == 0)
        return leak();
    RUN_TEST(test_untracked);
    RUN_TEST(test_tracked);
    RUN_TEST(test_dump_while_churning);
    test_leak_report(argv[0]);
    return 0;
}
