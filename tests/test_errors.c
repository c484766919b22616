/* SPDX-License-Identifier: MIT */

/*
 * Errors and edge cases: EINVAL for every constructor (Go's
 * TestInvalidDerivedFail and TestWithValueChecksKey panic where C returns
 * NULL with errno), NULL-safety, the static roots (Go's TestBackground and
 * TestTODO), and ENOMEM at every allocation of every constructor through a
 * failing allocator, with nothing leaked and the parent unchanged.
 */
#include "check.h"

static const ctx_key_t key = { .name = "key" };

static atomic_int destroyed;

static void count_destroy(void *v)
{
    (void)v;
    atomic_fetch_add(&destroyed, 1);
}

static const ctx_custom_ops_t custom_ops = { .name = "Custom", .destroy = count_destroy };

static void must_not_run(void *arg)
{
    (void)arg;
    CHECK(!"this callback must never run");
}

static void test_replace_allocator_args(void)
{
    CHECK_EQ_INT(ctx_replace_allocator(NULL, free), EINVAL);
    CHECK_EQ_INT(ctx_replace_allocator(malloc, NULL), EINVAL);
    CHECK_EQ_INT(ctx_replace_allocator(NULL, NULL), EINVAL);
}

/* Every constructor refuses a NULL parent with EINVAL, allocates nothing
 * and never calls destroy; so do a NULL key and NULL ops. */
static void test_einval(void)
{
    long base = check_alloc_live();
    atomic_store(&destroyed, 0);
    ctx_cancel_t *c = NULL;
    ctx_time_t later = ctx_now() + CTX_HOUR;

    CHECK_FAILS_WITH(ctx_with_cancel(NULL, &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_cancel(NULL, NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_with_deadline(NULL, later, &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_timeout(NULL, CTX_HOUR, &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_deadline_cause(NULL, later, ETIME, "slow", &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_timeout_cause(NULL, CTX_HOUR, ETIME, "slow", &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_value(NULL, &key, (void *)"v", count_destroy), EINVAL);
    CHECK_FAILS_WITH(ctx_with_value(ctx_background(), NULL, (void *)"v", count_destroy), EINVAL);
    CHECK_FAILS_WITH(ctx_without_cancel(NULL), EINVAL);
    CHECK_FAILS_WITH(ctx_with_custom(NULL, &custom_ops, (void *)"d", &c), EINVAL);
    CHECK_FAILS_WITH(ctx_with_custom(ctx_background(), NULL, (void *)"d", &c), EINVAL);

    /* Also with a real parent, which must come out untouched. */
    ctx_cancel_t *pc;
    ctx_t *p = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(p);
    long with_parent = check_alloc_live();
    CHECK_FAILS_WITH(ctx_with_value(p, NULL, (void *)"v", count_destroy), EINVAL);
    CHECK_FAILS_WITH(ctx_with_custom(p, NULL, (void *)"d", NULL), EINVAL);
    CHECK_EQ_INT(ctx_after_func(NULL, must_not_run, NULL, NULL), EINVAL);
    CHECK_EQ_INT(ctx_after_func(p, NULL, NULL, NULL), EINVAL);
    CHECK_EQ_INT(check_alloc_live(), with_parent);
    CHECK_NOT_DONE(p);
    ctx_cancel(pc);
    CHECK_CANCELED(p);
    ctx_unref(p);

    CHECK_EQ_INT(atomic_load(&destroyed), 0);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* NULL is accepted wherever a release or a handle is, and the observers
 * say what the header says they give for NULL. */
static void test_null_safety(void)
{
    ctx_unref(NULL);
    CHECK_NULL(ctx_ref(NULL));
    ctx_cancel(NULL);
    ctx_cancel_cause(NULL, EPIPE, "x");
    CHECK(!ctx_after_stop(NULL));

    CHECK_EQ_INT(ctx_err(NULL), EINVAL);
    const char *msg = "untouched";
    CHECK_EQ_INT(ctx_cause(NULL, &msg), EINVAL);
    CHECK_EQ_INT(ctx_cause(NULL, NULL), EINVAL);
    ctx_time_t d = 5;
    CHECK(!ctx_deadline(NULL, &d));
    CHECK_NULL(ctx_value(NULL, &key));
    CHECK_EQ_INT(ctx_wait(NULL, 0), EINVAL);
}

/* Go's TestBackground and TestTODO, plus: the roots are static (ref gives
 * the same pointer, unref does nothing however often), never done, without
 * deadline or values, with no done fd. */
static void test_roots(void)
{
    ctx_t *roots[] = { ctx_background(), ctx_todo() };
    CHECK_NOT_NULL(roots[0]);
    CHECK_NOT_NULL(roots[1]);
    CHECK(roots[0] != roots[1]);
    CHECK_PTR_EQ(ctx_background(), roots[0]);
    CHECK_PTR_EQ(ctx_todo(), roots[1]);
    for (int i = 0; i < 2; i++) {
        ctx_t *r = roots[i];
        CHECK_PTR_EQ(ctx_ref(r), r);
        for (int k = 0; k < 1000; k++)
            ctx_unref(r);
        CHECK_NOT_DONE(r);
        const char *msg = "untouched";
        CHECK_EQ_INT(ctx_cause(r, &msg), 0);
        ctx_time_t d = 12345;
        CHECK(!ctx_deadline(r, &d));
        CHECK_NULL(ctx_value(r, &key));
        CHECK_EQ_INT(ctx_wait(r, 0), 0);
        errno = EBADF;
        CHECK_EQ_INT(ctx_done_fd(r), -1);
        CHECK_EQ_INT(errno, 0);
        CHECK_NULL(ctx_custom_data(r));
        /* Still a working parent after all those unrefs. */
        ctx_cancel_t *c;
        ctx_t *child = ctx_with_cancel(r, &c);
        CHECK_NOT_NULL(child);
        ctx_cancel(c);
        CHECK_CANCELED(child);
        CHECK_NOT_DONE(r);
        ctx_unref(child);
    }
    char buf[32];
    ctx_describe(roots[0], buf, sizeof buf);
    CHECK_STR(buf, "context.Background");
    ctx_describe(roots[1], buf, sizeof buf);
    CHECK_STR(buf, "context.TODO");
}

/* ---------------------------------------------------------------------------
 * ENOMEM
 */

enum ctor { C_CANCEL, C_VALUE, C_WITHOUT, C_CUSTOM, C_TIMEOUT, C_TIMEOUT_CAUSE, C_AFTER, C_COUNT };

static const char *const ctor_names[] = { "with_cancel", "with_value",   "without_cancel",
                                          "with_custom", "with_timeout", "with_timeout_cause",
                                          "after_func" };

/* Makes one thing of kind k under parent; returns the new context (or, for
 * after_func, the parent with a fresh reference and *stop set), NULL with
 * errno on failure. */
static ctx_t *make(enum ctor k, ctx_t *parent, ctx_after_t **stop)
{
    switch (k) {
    case C_CANCEL:
        return ctx_with_cancel(parent, NULL);
    case C_VALUE:
        return ctx_with_value(parent, &key, (void *)"v", count_destroy);
    case C_WITHOUT:
        return ctx_without_cancel(parent);
    case C_CUSTOM: {
        ctx_cancel_t *c;
        return ctx_with_custom(parent, &custom_ops, (void *)"d", &c);
    }
    case C_TIMEOUT:
        return ctx_with_timeout(parent, 1000 * CTX_HOUR, NULL);
    case C_TIMEOUT_CAUSE:
        return ctx_with_timeout_cause(parent, 1000 * CTX_HOUR, ETIME,
                                      "a message long enough to need its own copy", NULL);
    case C_AFTER: {
        int rc = ctx_after_func(parent, must_not_run, NULL, stop);
        if (rc != 0) {
            errno = rc;
            return NULL;
        }
        return ctx_ref(parent);
    }
    default:
        CHECK(0);
        return NULL;
    }
}

static void release(enum ctor k, ctx_t *made, ctx_after_t *stop)
{
    if (k == C_AFTER)
        CHECK(ctx_after_stop(stop));
    ctx_unref(made);
}

/* For each constructor, fails its first, second, ... allocation until it
 * needs no more.  Each failure must return NULL/ENOMEM, leave the count of
 * live blocks where it was, never call destroy, and leave the parent able
 * to make children and to cancel them. */
static void enomem_sweep(ctx_t *parent, bool parent_done)
{
    for (int k = 0; k < C_COUNT; k++) {
        int failures = 0;
        for (long n = 0;; n++) {
            CHECK_MSG(n < 100, "%s: still allocating after 100 allocations", ctor_names[k]);
            long base = check_alloc_live();
            atomic_store(&destroyed, 0);
            ctx_after_t *stop = NULL;
            check_alloc_fail_at(n, false);
            errno = 0;
            ctx_t *made = make((enum ctor)k, parent, &stop);
            int err = errno;
            long refused = check_alloc_failed();
            check_alloc_fail_none();
            (void)refused;
            if (made == NULL) {
                CHECK_MSG(err == ENOMEM, "%s, allocation %ld failed: errno %d", ctor_names[k], n,
                          err);
                CHECK_MSG(check_alloc_live() == base,
                          "%s, allocation %ld failed: %ld blocks leaked", ctor_names[k], n,
                          check_alloc_live() - base);
                CHECK_EQ_INT(atomic_load(&destroyed), 0);
                failures++;
                /* The parent is unchanged. */
                CHECK_EQ_INT(ctx_err(parent), parent_done ? CTX_CANCELED : 0);
                continue;
            }
            /* Success: the constructor needed fewer than n+1 allocations.
             * Check the context works, then release it. */
            if (k != C_AFTER && k != C_WITHOUT)
                CHECK_EQ_INT(ctx_err(made), parent_done ? CTX_CANCELED : 0);
            if (k == C_AFTER && parent_done) {
                /* must_not_run would have run already: cannot happen. */
                CHECK(0);
            }
            release((enum ctor)k, made, stop);
            CHECK_MSG(check_alloc_live() == base, "%s: %ld blocks leaked after release",
                      ctor_names[k], check_alloc_live() - base);
            break;
        }
        fprintf(stderr, "   %s%s: %d allocation(s), each failure clean\n", ctor_names[k],
                parent_done ? " (done parent)" : "", failures);
        CHECK_MSG(failures > 0, "%s allocated nothing?", ctor_names[k]);
    }
}

static void test_enomem_constructors(void)
{
    /* Warm-up: whatever the timer machinery sets up once is not a leak. */
    ctx_cancel_t *wc;
    ctx_t *warm = ctx_with_timeout(ctx_background(), 1000 * CTX_HOUR, &wc);
    CHECK_NOT_NULL(warm);
    ctx_cancel(wc);
    ctx_unref(warm);

    long base = check_alloc_live();
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(parent);
    ctx_t *witness = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(witness);

    enomem_sweep(parent, false);

    /* The parent still reaches the child it had before all the failures and
     * one made after them. */
    ctx_t *after = ctx_with_value(parent, &key, NULL, NULL);
    CHECK_NOT_NULL(after);
    ctx_cancel_cause(pc, EPIPE, "still works");
    CHECK_DONE(witness, CTX_CANCELED, EPIPE, "still works");
    CHECK_DONE(after, CTX_CANCELED, EPIPE, "still works");
    ctx_unref(after);
    ctx_unref(witness);
    ctx_unref(parent);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* The same sweep under a parent that is already done (children are born
 * done, sharing the parent's cause). */
static void done_after(void *arg)
{
    *(int *)arg += 1;
}

static void test_enomem_done_parent(void)
{
    long base = check_alloc_live();
    ctx_cancel_t *pc;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
    CHECK_NOT_NULL(parent);
    ctx_cancel_cause(pc, EPIPE, "done before");
    long with_parent = check_alloc_live();
    for (int k = 0; k < C_COUNT; k++) {
        if (k == C_AFTER)
            continue; /* runs at once on a done context; tested below */
        for (long n = 0; n < 100; n++) {
            check_alloc_fail_at(n, false);
            ctx_t *made = make((enum ctor)k, parent, NULL);
            int err = errno;
            check_alloc_fail_none();
            if (made == NULL) {
                CHECK_EQ_INT(err, ENOMEM);
                continue;
            }
            if (k != C_WITHOUT)
                CHECK_DONE(made, CTX_CANCELED, EPIPE, "done before");
            ctx_unref(made);
            break;
        }
        CHECK_EQ_INT(check_alloc_live(), with_parent);
    }
    /* AfterFunc on a done context under failing allocations: either it ran
     * (exactly once) and returned 0, or it returned ENOMEM and did not. */
    for (long n = 0; n < 10; n++) {
        int ran = 0;
        check_alloc_fail_at(n, false);
        int rc = ctx_after_func(parent, done_after, &ran, NULL);
        check_alloc_fail_none();
        CHECK(rc == 0 || rc == ENOMEM);
        CHECK_EQ_INT(ran, rc == 0 ? 1 : 0);
        CHECK_EQ_INT(check_alloc_live(), with_parent);
    }
    ctx_unref(parent);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* A failed ctx_after_func leaves no registration behind: cancelling later
 * runs nothing. */
static void test_enomem_after_func(void)
{
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    check_alloc_fail_at(0, true);
    ctx_after_t *stop = NULL;
    int rc = ctx_after_func(ctx, must_not_run, NULL, &stop);
    check_alloc_fail_none();
    CHECK_EQ_INT(rc, ENOMEM);
    ctx_cancel(c);
    ctx_unref(ctx);
}

/* Cancellation cannot fail: with every allocation refused, a cancel with a
 * cause still reaches the whole tree, runs callbacks, and keeps the cause
 * code; its text is the given message if the library had room for it, else
 * the documented fallback ctx_strerror(cause). */
static void test_cancel_without_memory(void)
{
    long base = check_alloc_live();
    ctx_cancel_t *rc;
    ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
    CHECK_NOT_NULL(root);
    enum { N = 40 };
    ctx_t *n[N];
    int ran[N] = { 0 };
    for (int i = 0; i < N; i++) {
        ctx_t *p = i < 3 ? root : n[(i - 3) / 3];
        n[i] = i % 5 == 4 ? ctx_with_value(p, &key, NULL, NULL) : ctx_with_cancel(p, NULL);
        CHECK_NOT_NULL(n[i]);
        CHECK_EQ_INT(ctx_after_func(n[i], done_after, &ran[i], NULL), 0);
    }
    check_alloc_fail_at(0, true);
    ctx_cancel_cause(rc, EPIPE, "a message that cannot be copied without memory");
    long refused = check_alloc_failed();
    check_alloc_fail_none();
    (void)refused;
    char fallback[128];
    snprintf(fallback, sizeof fallback, "%s", strerror(EPIPE));
    const char *msg = NULL;
    CHECK_EQ_INT(ctx_cause(root, &msg), EPIPE);
    CHECK_NOT_NULL(msg);
    CHECK_MSG(strcmp(msg, "a message that cannot be copied without memory") == 0 ||
                  strcmp(msg, fallback) == 0,
              "msg \"%s\"", msg);
    for (int i = 0; i < N; i++) {
        CHECK_DONE(n[i], CTX_CANCELED, EPIPE, msg);
        CHECK_EQ_INT(ran[i], 1);
    }
    for (int i = N - 1; i >= 0; i--)
        ctx_unref(n[i]);
    ctx_unref(root);
    CHECK_EQ_INT(check_alloc_live(), base);
}

/* ctx_reset_allocator brings back malloc and free: after it, the counting
 * allocator sees nothing of a new context's life. */
static void test_reset_allocator(void)
{
    long total = check_alloc_total();
    long live = check_alloc_live();
    ctx_reset_allocator();
    ctx_cancel_t *c;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &c);
    CHECK_NOT_NULL(ctx);
    ctx_t *v = ctx_with_value(ctx, &key, NULL, NULL);
    CHECK_NOT_NULL(v);
    ctx_cancel_cause(c, EPIPE, "after the reset");
    CHECK_DONE(v, CTX_CANCELED, EPIPE, "after the reset");
    ctx_unref(v);
    ctx_unref(ctx);
    CHECK_EQ_INT(check_alloc_total(), total);
    CHECK_EQ_INT(check_alloc_live(), live);
}

int main(void)
{
    RUN_TEST(test_replace_allocator_args);
    /* Installed before the first context and kept to the end. */
    check_alloc_install();
    RUN_TEST(test_einval);
    RUN_TEST(test_null_safety);
    RUN_TEST(test_roots);
    RUN_TEST(test_enomem_constructors);
    RUN_TEST(test_enomem_done_parent);
    RUN_TEST(test_enomem_after_func);
    RUN_TEST(test_cancel_without_memory);
    /* Last: every context made under the counting allocator is gone. */
    RUN_TEST(test_reset_allocator);
    return 0;
}
