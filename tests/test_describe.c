/* SPDX-License-Identifier: MIT */

/*
 * ctx_describe: Go's String() texts (TestBackground, TestTODO,
 * TestWithCancel, TestValues' strings, TestDeadline's prefix) and
 * snprintf-style buffer handling.
 */
#include "check.h"

/* Formats an int value; a NULL value prints as Go prints nil. */
static size_t format_int(const void *value, char *buf, size_t size)
{
    int n = value == NULL ? snprintf(buf, size, "<nil>")
                          : snprintf(buf, size, "%d", *(const int *)value);
    return n < 0 ? 0 : (size_t)n;
}

static size_t format_str(const void *value, char *buf, size_t size)
{
    int n = snprintf(buf, size, "%s", value == NULL ? "<nil>" : (const char *)value);
    return n < 0 ? 0 : (size_t)n;
}

static const ctx_key_t request_id = { .name = "request-id" };
static const ctx_key_t user = { .name = "user", .format = format_int };
static const ctx_key_t text = { .name = "text", .format = format_str };

/* ctx_describe into a fresh buffer, checking the returned length matches
 * what was written. */
static void check_describe(ctx_t *c, const char *want)
{
    char buf[512];
    memset(buf, '#', sizeof buf);
    size_t n = ctx_describe(c, buf, sizeof buf);
    CHECK_STR(buf, want);
    CHECK_EQ_INT(n, strlen(want));
    CHECK_EQ_INT(ctx_describe(c, NULL, 0), strlen(want));
}

static void test_roots(void)
{
    check_describe(ctx_background(), "context.Background");
    check_describe(ctx_todo(), "context.TODO");
}

static void test_chains(void)
{
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(c);
    check_describe(c, "context.Background.WithCancel");

    ctx_t *v = ctx_with_value(c, &request_id, (void *)"abc", NULL);
    CHECK_NOT_NULL(v);
    check_describe(v, "context.Background.WithCancel.WithValue(request-id, ...)");

    int uid = 42;
    ctx_t *u = ctx_with_value(v, &user, &uid, NULL);
    CHECK_NOT_NULL(u);
    check_describe(u, "context.Background.WithCancel.WithValue(request-id, ...)"
                      ".WithValue(user, 42)");

    ctx_t *w = ctx_without_cancel(u);
    CHECK_NOT_NULL(w);
    check_describe(w, "context.Background.WithCancel.WithValue(request-id, ...)"
                      ".WithValue(user, 42).WithoutCancel");

    ctx_t *t = ctx_with_cancel(ctx_todo(), NULL);
    CHECK_NOT_NULL(t);
    check_describe(t, "context.TODO.WithCancel");

    /* Go's TestValues strings, with formatted keys; a NULL value. */
    ctx_t *c1 = ctx_with_value(ctx_background(), &text, (void *)"c1k1", NULL);
    CHECK_NOT_NULL(c1);
    check_describe(c1, "context.Background.WithValue(text, c1k1)");
    ctx_t *c4 = ctx_with_value(c1, &text, NULL, NULL);
    CHECK_NOT_NULL(c4);
    check_describe(c4, "context.Background.WithValue(text, c1k1).WithValue(text, <nil>)");

    /* Description does not change with cancellation. */
    ctx_cancel_t *cancel;
    ctx_t *cc = ctx_with_cancel(u, &cancel);
    CHECK_NOT_NULL(cc);
    ctx_cancel(cancel);
    check_describe(cc, "context.Background.WithCancel.WithValue(request-id, ...)"
                       ".WithValue(user, 42).WithCancel");

    ctx_t *all[] = { cc, c4, c1, t, w, u, v, c };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ctx_unref(all[i]);
}

static const ctx_custom_ops_t named_ops = { .name = "Session" };
static const ctx_custom_ops_t unnamed_ops = { .name = NULL };

static size_t describe_conn(void *data, char *buf, size_t size)
{
    int n = snprintf(buf, size, "Conn(fd=%d)", *(int *)data);
    return n < 0 ? 0 : (size_t)n;
}

static const ctx_custom_ops_t described_ops = { .name = "NotThis", .describe = describe_conn };

static void test_custom_names(void)
{
    ctx_t *s = ctx_with_custom(ctx_background(), &named_ops, NULL, NULL);
    CHECK_NOT_NULL(s);
    check_describe(s, "context.Background.Session");
    ctx_t *u = ctx_with_custom(s, &unnamed_ops, NULL, NULL);
    CHECK_NOT_NULL(u);
    check_describe(u, "context.Background.Session.Custom");
    int fd = 7;
    ctx_t *d = ctx_with_custom(u, &described_ops, &fd, NULL);
    CHECK_NOT_NULL(d);
    check_describe(d, "context.Background.Session.Custom.Conn(fd=7)");
    ctx_t *k = ctx_with_cancel(d, NULL);
    CHECK_NOT_NULL(k);
    check_describe(k, "context.Background.Session.Custom.Conn(fd=7).WithCancel");
    ctx_unref(k);
    ctx_unref(d);
    ctx_unref(u);
    ctx_unref(s);
}

/* Go's TestDeadline and TestTimeout check only the prefix. */
static void test_deadline_prefix(void)
{
    ctx_t *d = ctx_with_timeout(ctx_background(), 1000 * CTX_HOUR, NULL);
    CHECK_NOT_NULL(d);
    char buf[256];
    size_t n = ctx_describe(d, buf, sizeof buf);
    CHECK(n < sizeof buf);
    const char *prefix = "context.Background.WithDeadline(";
    CHECK_MSG(strncmp(buf, prefix, strlen(prefix)) == 0, "got \"%s\"", buf);
    CHECK_EQ_INT(buf[n - 1], ')');
    ctx_unref(d);
}

/* snprintf semantics: the full length is always returned; at most size
 * bytes are written, the last a NUL; size 0 writes nothing; NULL with size
 * 0 is fine.  Truncation inside a formatted value and inside a custom
 * description too. */
static void test_snprintf_semantics(void)
{
    int uid = 123456;
    ctx_t *c = ctx_with_value(ctx_background(), &user, &uid, NULL);
    CHECK_NOT_NULL(c);
    int fd = 99;
    ctx_t *d = ctx_with_custom(c, &described_ops, &fd, NULL);
    CHECK_NOT_NULL(d);
    ctx_t *k = ctx_with_cancel(d, NULL);
    CHECK_NOT_NULL(k);
    const char *full = "context.Background.WithValue(user, 123456).Conn(fd=99).WithCancel";
    size_t len = strlen(full);
    CHECK_EQ_INT(ctx_describe(k, NULL, 0), len);

    char buf[128];
    for (size_t size = 0; size <= len + 2; size++) {
        memset(buf, '#', sizeof buf);
        size_t n = ctx_describe(k, buf, size);
        CHECK_EQ_INT(n, len);
        if (size == 0) {
            CHECK_EQ_INT(buf[0], '#');
            continue;
        }
        size_t written = size - 1 < len ? size - 1 : len;
        CHECK_MSG(strncmp(buf, full, written) == 0, "size %zu: \"%.*s\"", size, (int)written, buf);
        CHECK_MSG(buf[written] == '\0', "size %zu: no NUL at %zu", size, written);
        /* Nothing past the buffer's size is touched. */
        for (size_t i = size; i < sizeof buf; i++)
            CHECK_MSG(buf[i] == '#', "size %zu: byte %zu written", size, i);
    }
    ctx_unref(k);
    ctx_unref(d);
    ctx_unref(c);
}

/* A long chain: the length is exact and agrees with a computed text. */
static void test_long_chain(void)
{
    ctx_t *c = ctx_ref(ctx_background());
    const int layers = 1000;
    for (int i = 0; i < layers; i++) {
        ctx_t *next = i % 2 ? ctx_with_cancel(c, NULL) : ctx_with_value(c, &request_id, NULL, NULL);
        CHECK_NOT_NULL(next);
        ctx_unref(c);
        c = next;
    }
    size_t want_len =
        strlen("context.Background") +
        (size_t)(layers / 2) * (strlen(".WithCancel") + strlen(".WithValue(request-id, ...)"));
    size_t n = ctx_describe(c, NULL, 0);
    CHECK_EQ_INT(n, want_len);
    char *buf = malloc(n + 1);
    CHECK(buf != NULL);
    CHECK_EQ_INT(ctx_describe(c, buf, n + 1), n);
    CHECK_EQ_INT(strlen(buf), n);
    const char *head = "context.Background.WithValue(request-id, ...).WithCancel.";
    CHECK(strncmp(buf, head, strlen(head)) == 0);
    CHECK(strcmp(buf + n - strlen(".WithCancel"), ".WithCancel") == 0);
    free(buf);
    ctx_unref(c);
}

int main(void)
{
    RUN_TEST(test_roots);
    RUN_TEST(test_chains);
    RUN_TEST(test_custom_names);
    RUN_TEST(test_deadline_prefix);
    RUN_TEST(test_snprintf_semantics);
    RUN_TEST(test_long_chain);
    return 0;
}
