/* SPDX-License-Identifier: MIT */

/*
 * Cancellation of a context tree, single-threaded: what ctx_cancel() does to
 * the context, its descendants, its parent and siblings, and what it leaves
 * behind.  Ports Go's TestWithCancel, TestParentFinishesChild,
 * TestChildFinishesFirst, TestCancelRemoves, TestLayersCancel,
 * TestWithCancelCanceledParent and TestAllocs, plus a model-checked random
 * tree.
 */
#include "check.h"

#include <poll.h>

/* A custom context with no hooks stands in for Go's otherContext: a parent
 * that is not one of the library's plain kinds. */
static const ctx_custom_ops_t other_ops = { .name = "Other" };
static const ctx_key_t k_absent = { .name = "absent" };

/* true when the done fd of c is readable right now. */
static bool fd_readable(ctx_t *c)
{
    int fd = ctx_done_fd(c);
    CHECK_MSG(fd >= 0, "ctx_done_fd: errno %d", errno);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int n = poll(&p, 1, 0);
    CHECK(n >= 0);
    return n == 1 && (p.revents & POLLIN) != 0;
}

/* Go's TestWithCancel: a cancel context, a custom wrapper of it and a cancel
 * child of the wrapper all turn done, synchronously, when the first is
 * cancelled. */
static void test_with_cancel(void)
{
    ctx_cancel_t *cancel = NULL;
    ctx_t *c1 = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c1);
    CHECK_NOT_NULL(cancel);
    ctx_t *o = ctx_with_custom(c1, &other_ops, NULL, NULL);
    CHECK_NOT_NULL(o);
    ctx_t *c2 = ctx_with_cancel(o, NULL);
    CHECK_NOT_NULL(c2);
    ctx_t *all[] = { c1, o, c2 };

    for (int i = 0; i < 3; i++) {
        CHECK_NOT_DONE(all[i]);
        CHECK_EQ_INT(ctx_wait(all[i], 0), 0);
        CHECK(!fd_readable(all[i]));
    }
    ctx_cancel(cancel);
    for (int i = 0; i < 3; i++) {
        CHECK_CANCELED(all[i]);
        CHECK_EQ_INT(ctx_wait(all[i], 0), CTX_CANCELED);
        CHECK(fd_readable(all[i]));
    }
    ctx_unref(c2);
    ctx_unref(o);
    ctx_unref(c1);
}

/* Go's TestParentFinishesChild.  Tree:
 *   parent -> cancel_child
 *   parent -> value_child -> timer_child (far deadline)
 * Cancelling parent finishes all of them; a value child made afterwards is
 * done at birth. */
static void test_parent_finishes_child(void)
{
    static const ctx_key_t key = { .name = "key" };
    ctx_cancel_t *cancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(parent);
    ctx_t *cancel_child = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(cancel_child);
    ctx_t *value_child = ctx_with_value(parent, &key, (void *)"value", NULL);
    CHECK_NOT_NULL(value_child);
    ctx_t *timer_child = ctx_with_timeout(value_child, 1000 * CTX_HOUR, NULL);
    CHECK_NOT_NULL(timer_child);

    CHECK_NOT_DONE(parent);
    CHECK_NOT_DONE(cancel_child);
    CHECK_NOT_DONE(value_child);
    CHECK_NOT_DONE(timer_child);

    ctx_cancel(cancel);

    CHECK_CANCELED(parent);
    CHECK_CANCELED(cancel_child);
    CHECK_CANCELED(value_child);
    CHECK_CANCELED(timer_child);

    ctx_t *precanceled = ctx_with_value(parent, &key, (void *)"value", NULL);
    CHECK_NOT_NULL(precanceled);
    CHECK_CANCELED(precanceled);

    ctx_unref(precanceled);
    ctx_unref(timer_child);
    ctx_unref(value_child);
    ctx_unref(cancel_child);
    ctx_unref(parent);
}

/* Go's TestChildFinishesFirst: for a background parent and a cancellable
 * one, cancelling the child finishes the child and not the parent. */
static void test_child_finishes_first(void)
{
    ctx_t *cancelable = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(cancelable);
    ctx_t *parents[] = { ctx_background(), cancelable };
    for (int i = 0; i < 2; i++) {
        ctx_cancel_t *cancel;
        ctx_t *child = ctx_with_cancel(parents[i], &cancel);
        CHECK_NOT_NULL(child);
        CHECK_NOT_DONE(parents[i]);
        CHECK_NOT_DONE(child);
        ctx_cancel(cancel);
        CHECK_CANCELED(child);
        CHECK_NOT_DONE(parents[i]);
        ctx_unref(child);
    }
    ctx_unref(cancelable);
}

/* Cancelling one child touches neither its parent nor its siblings (nor
 * their subtrees); its own subtree is done. */
static void test_siblings_untouched(void)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_t *parent = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(parent);
    ctx_t *child[3], *grand[3];
    ctx_cancel_t *cancel[3];
    for (int i = 0; i < 3; i++) {
        child[i] = ctx_with_cancel(parent, &cancel[i]);
        CHECK_NOT_NULL(child[i]);
        grand[i] = ctx_with_value(child[i], &key, NULL, NULL);
        CHECK_NOT_NULL(grand[i]);
    }
    ctx_cancel_cause(cancel[1], EPIPE, "middle only");
    CHECK_NOT_DONE(parent);
    for (int i = 0; i < 3; i++) {
        if (i == 1) {
            CHECK_DONE(child[i], CTX_CANCELED, EPIPE, "middle only");
            CHECK_DONE(grand[i], CTX_CANCELED, EPIPE, "middle only");
        } else {
            CHECK_NOT_DONE(child[i]);
            CHECK_NOT_DONE(grand[i]);
        }
    }
    for (int i = 0; i < 3; i++) {
        ctx_unref(grand[i]);
        ctx_unref(child[i]);
    }
    ctx_unref(parent);
}

/* The Go tutorial program ContextCancelDeep's tree: one -> two, three; two -> four.
 * Cancelling two finishes two and four only. */
static void test_cancel_deep_tree(void)
{
    ctx_t *one = ctx_with_cancel(ctx_background(), NULL);
    CHECK_NOT_NULL(one);
    ctx_cancel_t *cancel_two;
    ctx_t *two = ctx_with_cancel(one, &cancel_two);
    CHECK_NOT_NULL(two);
    ctx_t *three = ctx_with_cancel(one, NULL);
    CHECK_NOT_NULL(three);
    ctx_t *four = ctx_with_cancel(two, NULL);
    CHECK_NOT_NULL(four);

    ctx_cancel(cancel_two);
    CHECK_CANCELED(two);
    CHECK_CANCELED(four);
    CHECK_NOT_DONE(one);
    CHECK_NOT_DONE(three);

    ctx_unref(four);
    ctx_unref(three);
    ctx_unref(two);
    ctx_unref(one);
}

/* Cancel is idempotent, only the first cancellation sets err and cause, the
 * cause text is a copy, and the text handed out earlier stays valid. */
static void test_first_cancel_wins(void)
{
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_t *child = ctx_with_cancel(c, NULL);
    CHECK_NOT_NULL(child);

    char buf[32];
    snprintf(buf, sizeof buf, "%s", "first reason");
    ctx_cancel_cause(cancel, ECONNRESET, buf);
    memset(buf, 'x', sizeof buf - 1); /* the library must have copied it */
    const char *msg1 = NULL;
    CHECK_EQ_INT(ctx_cause(c, &msg1), ECONNRESET);
    CHECK_STR(msg1, "first reason");

    ctx_cancel(cancel);
    ctx_cancel_cause(cancel, EPIPE, "second reason");
    ctx_cancel(cancel);
    CHECK_DONE(c, CTX_CANCELED, ECONNRESET, "first reason");
    CHECK_DONE(child, CTX_CANCELED, ECONNRESET, "first reason");
    CHECK_STR(msg1, "first reason");

    /* Cancelling the already-done child by hand changes nothing either. */
    ctx_unref(child);
    ctx_unref(c);

    /* A plain cancel first: later causes are ignored. */
    c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    ctx_cancel(cancel);
    ctx_cancel_cause(cancel, EPIPE, "too late");
    CHECK_CANCELED(c);
    ctx_unref(c);
}

/* ctx_cancel(NULL) and ctx_cancel_cause(NULL, ...) do nothing. */
static void test_cancel_null(void)
{
    ctx_cancel(NULL);
    ctx_cancel_cause(NULL, EPIPE, "nobody");
    ctx_cancel_cause(NULL, 0, NULL);
}

/* Go's TestWithCancelCanceledParent, for every kind of child: under a parent
 * cancelled with a cause and message, a new child is done at birth with the
 * same err, cause and message; so are its own children.  WithoutCancel is
 * the exception: it is never done. */
static void test_born_done(void)
{
    static const ctx_key_t key = { .name = "k" };
    ctx_cancel_t *pcancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(parent);
    ctx_cancel_cause(pcancel, EPIPE, "Because!");

    ctx_cancel_t *ccancel;
    ctx_t *kids[6];
    kids[0] = ctx_with_cancel(parent, &ccancel);
    kids[1] = ctx_with_value(parent, &key, (void *)"v", NULL);
    kids[2] = ctx_with_custom(parent, &other_ops, NULL, NULL);
    kids[3] = ctx_with_timeout(parent, 1000 * CTX_HOUR, NULL);
    kids[4] = ctx_with_timeout_cause(parent, 1000 * CTX_HOUR, ETIME, "slow", NULL);
    kids[5] = ctx_with_cancel(kids[1], NULL);
    for (int i = 0; i < 6; i++) {
        CHECK_NOT_NULL(kids[i]);
        CHECK_DONE(kids[i], CTX_CANCELED, EPIPE, "Because!");
        CHECK_EQ_INT(ctx_wait(kids[i], 0), CTX_CANCELED);
    }
    ctx_t *grand = ctx_with_cancel(kids[0], NULL);
    CHECK_NOT_NULL(grand);
    CHECK_DONE(grand, CTX_CANCELED, EPIPE, "Because!");

    /* The born-done child's own cancel is a no-op. */
    ctx_cancel_cause(ccancel, EIO, "ignored");
    CHECK_DONE(kids[0], CTX_CANCELED, EPIPE, "Because!");

    ctx_t *w = ctx_without_cancel(parent);
    CHECK_NOT_NULL(w);
    CHECK_NOT_DONE(w);
    CHECK_PTR_EQ(ctx_value(kids[5], &key), "v");

    ctx_unref(w);
    ctx_unref(grand);
    for (int i = 5; i >= 0; i--)
        ctx_unref(kids[i]);
    ctx_unref(parent);

    /* The same with a plain cancel: the copied cause is CTX_CANCELED. */
    parent = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(parent);
    ctx_cancel(pcancel);
    ctx_t *k = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(k);
    CHECK_CANCELED(k);
    ctx_unref(k);
    ctx_unref(parent);
}

static void must_not_run(void *arg)
{
    (void)arg;
    CHECK(!"this AfterFunc was stopped and must never run");
}

/* Go's TestCancelRemoves, observed from outside: cancelling and dropping a
 * child (cancel, deadline or AfterFunc registration) leaves nothing behind
 * in a live parent, so memory stays flat however many come and go, and the
 * parent still cancels what it has. */
static void test_cancel_removes(void)
{
    ctx_cancel_t *pcancel;
    ctx_t *parent = ctx_with_cancel(ctx_background(), &pcancel);
    CHECK_NOT_NULL(parent);

    /* One warm-up round, so that anything the library sets up once (the
     * timer machinery) is counted in the baseline. */
    ctx_cancel_t *c;
    ctx_t *t = ctx_with_timeout(parent, 1000 * CTX_HOUR, &c);
    CHECK_NOT_NULL(t);
    ctx_cancel(c);
    ctx_unref(t);

    long base = check_alloc_live();
    long rounds = check_scale(20000);
    for (long i = 0; i < rounds; i++) {
        ctx_t *child = ctx_with_cancel(parent, &c);
        CHECK_NOT_NULL(child);
        ctx_cancel(c);
        CHECK_CANCELED(child);
        ctx_unref(child);

        child = ctx_with_timeout(parent, 1000 * CTX_HOUR, &c);
        CHECK_NOT_NULL(child);
        ctx_cancel(c);
        ctx_unref(child);

        ctx_after_t *stop;
        CHECK_EQ_INT(ctx_after_func(parent, must_not_run, NULL, &stop), 0);
        CHECK(ctx_after_stop(stop));

        if (i % 1024 == 0)
            CHECK_LE_INT(check_alloc_live(), base);
    }
    CHECK_EQ_INT(check_alloc_live(), base);

    /* A child cancelled first and dropped only after its parent's cancel
     * keeps its own cause. */
    ctx_t *child = ctx_with_cancel(parent, &c);
    CHECK_NOT_NULL(child);
    ctx_t *live = ctx_with_cancel(parent, NULL);
    CHECK_NOT_NULL(live);
    ctx_cancel_cause(c, EIO, "child first");
    ctx_cancel_cause(pcancel, EPIPE, "parent later");
    CHECK_DONE(child, CTX_CANCELED, EIO, "child first");
    CHECK_DONE(live, CTX_CANCELED, EPIPE, "parent later");
    CHECK_DONE(parent, CTX_CANCELED, EPIPE, "parent later");
    ctx_unref(live);
    ctx_unref(child);
    ctx_unref(parent);
}

/* ---------------------------------------------------------------------------
 * Layers and model-checked trees
 */

enum kind { K_CANCEL, K_VALUE, K_WITHOUT, K_TIMER, K_CUSTOM, K_COUNT };

struct node {
    ctx_t *ctx;
    ctx_cancel_t *cancel; /* NULL for kinds that cannot be cancelled by hand */
    int parent;           /* index, -1 for a child of background */
    enum kind kind;
    int own; /* event that cancelled it by hand, or NO_EVENT */
    int eff; /* event that made it done, or NO_EVENT */
};

#define NO_EVENT 0x7fffffff

struct event {
    int code;        /* 0: plain ctx_cancel */
    const char *msg; /* NULL: no message given */
    char text[32];
    char expect[64]; /* the cause text the test expects */
};

/* Recomputes which event made each node done.  Parents precede children,
 * so one forward pass suffices: a WITHOUT node is never done; any other
 * node is done by the earlier of its own cancellation and its parent's. */
static void model_update(struct node *n, int count)
{
    for (int i = 0; i < count; i++) {
        if (n[i].kind == K_WITHOUT) {
            n[i].eff = NO_EVENT;
            continue;
        }
        int from_parent = n[i].parent < 0 ? NO_EVENT : n[n[i].parent].eff;
        n[i].eff = n[i].own < from_parent ? n[i].own : from_parent;
    }
}

static void model_check(struct node *n, int count, struct event *ev)
{
    for (int i = 0; i < count; i++) {
        int err = ctx_err(n[i].ctx);
        const char *msg = NULL;
        int cause = ctx_cause(n[i].ctx, &msg);
        if (n[i].eff == NO_EVENT) {
            CHECK_MSG(err == 0 && cause == 0,
                      "node %d (kind %d) should not be done: err %d cause %d", i, n[i].kind, err,
                      cause);
            continue;
        }
        struct event *e = &ev[n[i].eff];
        int want = e->code == 0 ? CTX_CANCELED : e->code;
        CHECK_MSG(err == CTX_CANCELED && cause == want,
                  "node %d (kind %d): err %d cause %d, want %d %d (event %d)", i, n[i].kind, err,
                  cause, CTX_CANCELED, want, n[i].eff);
        CHECK_MSG(msg != NULL && strcmp(msg, e->expect) == 0, "node %d: msg \"%s\" want \"%s\"", i,
                  msg ? msg : "(null)", e->expect);
    }
}

static void make_node(struct node *n, int i, int parent, enum kind kind, const ctx_key_t *key)
{
    ctx_t *p = parent < 0 ? ctx_background() : n[parent].ctx;
    n[i].parent = parent;
    n[i].kind = kind;
    n[i].cancel = NULL;
    n[i].own = NO_EVENT;
    n[i].eff = NO_EVENT;
    switch (kind) {
    case K_CANCEL:
        n[i].ctx = ctx_with_cancel(p, &n[i].cancel);
        break;
    case K_VALUE:
        n[i].ctx = ctx_with_value(p, key, (void *)key, NULL);
        break;
    case K_WITHOUT:
        n[i].ctx = ctx_without_cancel(p);
        break;
    case K_TIMER:
        n[i].ctx = ctx_with_timeout(p, 1000 * CTX_HOUR, &n[i].cancel);
        break;
    case K_CUSTOM:
        n[i].ctx = ctx_with_custom(p, &other_ops, NULL, &n[i].cancel);
        break;
    default:
        CHECK(0);
    }
    CHECK_NOT_NULL(n[i].ctx);
}

/* Fills ev[t] with a cause of one of three shapes: none, a code with a
 * message, a code without one (its text is then the C library's). */
static void make_event(struct event *ev, int t, check_rng_t *r)
{
    static const int codes[] = { EPIPE, ECONNRESET, EIO, ENOENT, EACCES, ENOSPC, EHOSTDOWN };
    struct event *e = &ev[t];
    switch (check_rng_below(r, 3)) {
    case 0:
        e->code = 0;
        e->msg = NULL;
        snprintf(e->expect, sizeof e->expect, "%s", "context canceled");
        break;
    case 1:
        e->code = 1000 + t;
        snprintf(e->text, sizeof e->text, "event %d", t);
        e->msg = e->text;
        snprintf(e->expect, sizeof e->expect, "%s", e->text);
        break;
    default:
        e->code = codes[check_rng_below(r, sizeof codes / sizeof codes[0])];
        e->msg = NULL;
        snprintf(e->expect, sizeof e->expect, "%s", strerror(e->code));
        break;
    }
}

static void fire(struct node *n, int i, struct event *ev, int t)
{
    CHECK(n[i].cancel != NULL);
    /* "No cause" is said both ways: ctx_cancel and cause 0. */
    if (ev[t].code == 0 && t % 2 == 0)
        ctx_cancel(n[i].cancel);
    else
        ctx_cancel_cause(n[i].cancel, ev[t].code, ev[t].msg);
    if (n[i].eff == NO_EVENT && n[i].own == NO_EVENT)
        n[i].own = t;
}

/* Go's TestLayersCancel, extended: random chains of at least 30 layers of
 * value, cancel, without, far-deadline and custom contexts.  Before any
 * cancel no layer is done and every value is visible from the bottom; then
 * cancel layers are cancelled one at a time in random order, and after each
 * call every layer is checked against a model (done exactly when a
 * cancelled ancestor-or-self is not cut off by a without layer, with that
 * cancellation's cause), and the values are still visible. */
static void test_layers_cancel(void)
{
    check_rng_t r = check_rng_make(check_seed() ^ 0x1a7e);
    long rounds = check_scale(300);
    for (long round = 0; round < rounds; round++) {
        enum { MAXL = 64 };
        struct node n[MAXL];
        ctx_key_t keys[MAXL];
        struct event ev[MAXL + 1];
        int count = 0, ncancel = 0, nvalue = 0;
        while ((count < 30 || ncancel == 0 || nvalue == 0) && count < MAXL) {
            enum kind k = (enum kind)check_rng_below(&r, K_COUNT);
            keys[count].name = "layer";
            keys[count].format = NULL;
            make_node(n, count, count - 1, k, &keys[count]);
            if (n[count].cancel != NULL)
                ncancel++;
            if (k == K_VALUE)
                nvalue++;
            count++;
        }
        ctx_t *bottom = n[count - 1].ctx;
        char desc[16];
        ctx_describe(bottom, desc, sizeof desc);
        CHECK(strncmp(desc, "context.Backgro", 15) == 0);

        model_update(n, count);
        model_check(n, count, ev);
        for (int i = 0; i < count; i++)
            if (n[i].kind == K_VALUE)
                CHECK_PTR_EQ(ctx_value(bottom, &keys[i]), &keys[i]);

        int order[MAXL], m = 0;
        for (int i = 0; i < count; i++)
            if (n[i].cancel != NULL)
                order[m++] = i;
        check_shuffle(&r, order, m);
        int fires = 1 + (int)check_rng_below(&r, (unsigned)m);
        for (int t = 1; t <= fires; t++) {
            make_event(ev, t, &r);
            fire(n, order[t - 1], ev, t);
            model_update(n, count);
            model_check(n, count, ev);
        }
        for (int i = 0; i < count; i++)
            if (n[i].kind == K_VALUE)
                CHECK_PTR_EQ(ctx_value(bottom, &keys[i]), &keys[i]);
        for (int i = count - 1; i >= 0; i--)
            ctx_unref(n[i].ctx);
    }
}

/* Cancellation is synchronous down a whole tree: in a random tree of a few
 * thousand nodes of every kind, random nodes are cancelled one after
 * another, and right after each ctx_cancel returns every node is exactly as
 * done as the model says, with the cause of the cancellation that reached
 * it first. */
static void test_random_tree(void)
{
    check_rng_t r = check_rng_make(check_seed() ^ 0x7ee);
    long rounds = check_scale(20);
    for (long round = 0; round < rounds; round++) {
        int count = 500 + (int)check_rng_below(&r, 2500);
        struct node *n = calloc((size_t)count, sizeof *n);
        ctx_key_t *keys = calloc((size_t)count, sizeof *keys);
        CHECK(n != NULL && keys != NULL);
        for (int i = 0; i < count; i++) {
            /* Mostly cancel nodes; prefer recent parents for some depth. */
            unsigned pick = check_rng_below(&r, 10);
            enum kind k = pick < 5   ? K_CANCEL
                          : pick < 7 ? K_VALUE
                          : pick < 8 ? K_CUSTOM
                          : pick < 9 ? K_TIMER
                                     : K_WITHOUT;
            int parent;
            if (i == 0)
                parent = -1;
            else if (check_rng_below(&r, 2))
                parent = i - 1 - (int)check_rng_below(&r, (unsigned)(i < 8 ? i : 8));
            else
                parent = (int)check_rng_below(&r, (unsigned)i);
            keys[i].name = "n";
            make_node(n, i, parent, k, &keys[i]);
        }
        int *order = malloc((size_t)count * sizeof *order);
        CHECK(order != NULL);
        int m = 0;
        for (int i = 0; i < count; i++)
            if (n[i].cancel != NULL)
                order[m++] = i;
        check_shuffle(&r, order, m);
        int fires = m < 40 ? m : 40;
        struct event *ev = calloc((size_t)fires + 1, sizeof *ev);
        CHECK(ev != NULL);
        model_update(n, count);
        model_check(n, count, ev);
        /* Always include the first node (the root of most of the tree). */
        for (int t = 1; t <= fires; t++) {
            make_event(ev, t, &r);
            int who = (t == fires && n[0].cancel != NULL) ? 0 : order[t - 1];
            fire(n, who, ev, t);
            model_update(n, count);
            model_check(n, count, ev);
        }
        /* Values stay readable after cancellation. */
        for (int i = 0; i < count; i++)
            if (n[i].kind == K_VALUE)
                CHECK_PTR_EQ(ctx_value(n[i].ctx, &keys[i]), &keys[i]);
        /* Drop in random order: parents before children, too. */
        int *drop = malloc((size_t)count * sizeof *drop);
        CHECK(drop != NULL);
        for (int i = 0; i < count; i++)
            drop[i] = i;
        check_shuffle(&r, drop, count);
        for (int i = 0; i < count; i++)
            ctx_unref(n[drop[i]].ctx);
        free(drop);
        free(ev);
        free(order);
        free(keys);
        free(n);
    }
}

/* A cancel handle made with cancel == NULL still is reached by the parent,
 * and a deep descendant's AfterFunc has run when the root's cancel returns. */
static void after_mark(void *arg)
{
    *(int *)arg += 1;
}

static void test_cancel_reaches_deep_callbacks(void)
{
    ctx_cancel_t *root_cancel;
    ctx_t *root = ctx_with_cancel(ctx_background(), &root_cancel);
    CHECK_NOT_NULL(root);
    ctx_t *c = ctx_ref(root);
    for (int i = 0; i < 100; i++) {
        ctx_t *next = ctx_with_cancel(c, NULL);
        CHECK_NOT_NULL(next);
        ctx_unref(c);
        c = next;
    }
    int ran = 0;
    CHECK_EQ_INT(ctx_after_func(c, after_mark, &ran, NULL), 0);
    CHECK_EQ_INT(ran, 0);
    ctx_cancel(root_cancel);
    CHECK_EQ_INT(ran, 1);
    CHECK_CANCELED(c);
    ctx_unref(c);
    ctx_unref(root);
}

/* Go's TestAllocs, in C terms: ctx_with_cancel makes exactly one
 * allocation (the header's promise); cancelling without a message, and
 * every observation, allocate nothing; a cancellation message is copied
 * once however many contexts it reaches; the roots cost nothing. */
static void test_allocs(void)
{
    static const ctx_key_t key = { .name = "k" };
    long before = check_alloc_total();
    ctx_t *bg = ctx_background();
    ctx_ref(bg);
    ctx_unref(bg);
    CHECK_EQ_INT(check_alloc_total() - before, 0);

    ctx_cancel_t *cancel;
    before = check_alloc_total();
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    CHECK_EQ_INT(check_alloc_total() - before, 1);

    ctx_t *kids[100];
    for (int i = 0; i < 100; i++) {
        kids[i] = i % 2 ? ctx_with_cancel(c, NULL) : ctx_with_value(c, &key, NULL, NULL);
        CHECK_NOT_NULL(kids[i]);
    }
    before = check_alloc_total();
    for (int i = 0; i < 100; i++) {
        CHECK_EQ_INT(ctx_err(kids[i]), 0);
        CHECK_EQ_INT(ctx_cause(kids[i], NULL), 0);
        CHECK_NULL(ctx_value(kids[i], &k_absent));
        CHECK_EQ_INT(ctx_wait(kids[i], 0), 0);
    }
    CHECK_EQ_INT(check_alloc_total() - before, 0);

    before = check_alloc_total();
    ctx_cancel_cause(cancel, EPIPE, "one copy for everyone");
    CHECK_LE_INT(check_alloc_total() - before, 1);
    before = check_alloc_total();
    for (int i = 0; i < 100; i++)
        CHECK_DONE(kids[i], CTX_CANCELED, EPIPE, "one copy for everyone");
    CHECK_EQ_INT(check_alloc_total() - before, 0);
    for (int i = 0; i < 100; i++)
        ctx_unref(kids[i]);
    ctx_unref(c);

    c = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(c);
    before = check_alloc_total();
    ctx_cancel(cancel);
    CHECK_CANCELED(c);
    CHECK_EQ_INT(check_alloc_total() - before, 0);
    ctx_unref(c);
}

int main(void)
{
    /* Installed first: test_cancel_removes counts the library's blocks. */
    check_alloc_install();
    RUN_TEST(test_with_cancel);
    RUN_TEST(test_parent_finishes_child);
    RUN_TEST(test_child_finishes_first);
    RUN_TEST(test_siblings_untouched);
    RUN_TEST(test_cancel_deep_tree);
    RUN_TEST(test_first_cancel_wins);
    RUN_TEST(test_cancel_null);
    RUN_TEST(test_born_done);
    RUN_TEST(test_cancel_removes);
    RUN_TEST(test_layers_cancel);
    RUN_TEST(test_random_tree);
    RUN_TEST(test_cancel_reaches_deep_callbacks);
    RUN_TEST(test_allocs);
    return 0;
}
