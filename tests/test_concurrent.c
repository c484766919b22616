/* SPDX-License-Identifier: MIT */

/*
 * Cancellation under concurrency.  Ports Go's TestSimultaneousCancels,
 * TestInterlockedCancels and TestWithCancelSimultaneouslyCanceledParent,
 * and holds the library to its strong guarantee: when ctx_cancel(x) returns,
 * every descendant of x is done, even while another thread is cancelling
 * part of the same subtree.  Also: dropping children while the parent is
 * being cancelled, and readers (value, err, cause, describe) during cancel.
 */
#include "check.h"

static const ctx_key_t key = { .name = "k" };
static const ctx_custom_ops_t other_ops = { .name = "Other" };

/* ---------------------------------------------------------------------------
 * Go's TestWithCancelSimultaneouslyCanceledParent: children made while
 * another thread cancels the parent all end done, with the parent's cause.
 */
struct canceller {
    pthread_barrier_t *start;
    ctx_cancel_t *cancel;
    int cause;
    const char *msg;
};

static void *cancel_after_barrier(void *arg)
{
    struct canceller *c = arg;
    pthread_barrier_wait(c->start);
    ctx_cancel_cause(c->cancel, c->cause, c->msg);
    return NULL;
}

static void test_create_while_cancelling(void)
{
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    long rounds = check_scale(500);
    enum { KIDS = 40 };
    for (long round = 0; round < rounds; round++) {
        struct canceller c = { &start, NULL, EPIPE, "Because!" };
        ctx_t *parent = ctx_with_cancel(ctx_background(), &c.cancel);
        CHECK_NOT_NULL(parent);
        pthread_t t;
        check_thread_start(&t, cancel_after_barrier, &c);
        pthread_barrier_wait(&start);
        ctx_t *kids[KIDS];
        for (int i = 0; i < KIDS; i++) {
            ctx_t *p = i < 4 ? parent : kids[i / 4 - 1];
            switch (i % 4) {
            case 0:
                kids[i] = ctx_with_cancel(p, NULL);
                break;
            case 1:
                kids[i] = ctx_with_value(p, &key, NULL, NULL);
                break;
            case 2:
                kids[i] = ctx_with_custom(p, &other_ops, NULL, NULL);
                break;
            default:
                kids[i] = ctx_with_timeout(p, 1000 * CTX_HOUR, NULL);
                break;
            }
            CHECK_NOT_NULL(kids[i]);
        }
        check_thread_join(t);
        for (int i = 0; i < KIDS; i++)
            CHECK_DONE(kids[i], CTX_CANCELED, EPIPE, "Because!");
        for (int i = KIDS - 1; i >= 0; i--)
            ctx_unref(kids[i]);
        ctx_unref(parent);
    }
    pthread_barrier_destroy(&start);
}

/* ---------------------------------------------------------------------------
 * Go's TestSimultaneousCancels, checked harder: a random tree of a few
 * hundred nodes, every cancellable node cancelled by one of several threads
 * (each with its own random order and a distinct cause per node).  After
 * the threads finish: every node that some cancellation can reach is done;
 * a cancel or custom node's cause is its own or its parent's; a value
 * layer's cause is its parent's; a child of a without layer or of the root
 * is done only by its own cancel.  So every cause came down from a
 * cancellation of an ancestor-or-self, unbroken.
 */
enum kind { K_CANCEL, K_VALUE, K_WITHOUT, K_CUSTOM };

struct tnode {
    ctx_t *ctx;
    ctx_cancel_t *cancel;
    int parent;
    enum kind kind;
};

struct tworker {
    pthread_barrier_t *start;
    struct tnode *n;
    int *mine;
    int count;
};

static int cause_of(int node)
{
    return 10000 + node;
}

static void *cancel_list(void *arg)
{
    struct tworker *w = arg;
    pthread_barrier_wait(w->start);
    for (int i = 0; i < w->count; i++) {
        int node = w->mine[i];
        char msg[32];
        snprintf(msg, sizeof msg, "node %d", node);
        ctx_cancel_cause(w->n[node].cancel, cause_of(node), msg);
        /* The strong guarantee, checked from the cancelling thread. */
        CHECK_EQ_INT(ctx_err(w->n[node].ctx), CTX_CANCELED);
    }
    return NULL;
}

static void test_simultaneous_cancels(void)
{
    enum { THREADS = 4 };
    check_rng_t r = check_rng_make(check_seed() ^ 0x51);
    long rounds = check_scale(60);
    for (long round = 0; round < rounds; round++) {
        int count = 100 + (int)check_rng_below(&r, 300);
        struct tnode *n = calloc((size_t)count, sizeof *n);
        CHECK(n != NULL);
        for (int i = 0; i < count; i++) {
            unsigned pick = check_rng_below(&r, 20);
            n[i].kind = pick < 13   ? K_CANCEL
                        : pick < 17 ? K_VALUE
                        : pick < 19 ? K_CUSTOM
                                    : K_WITHOUT;
            n[i].parent = i == 0 ? -1 : (int)check_rng_below(&r, (unsigned)i);
            if (i == 0)
                n[i].kind = K_CANCEL;
            ctx_t *p = n[i].parent < 0 ? ctx_background() : n[n[i].parent].ctx;
            switch (n[i].kind) {
            case K_CANCEL:
                n[i].ctx = ctx_with_cancel(p, &n[i].cancel);
                break;
            case K_VALUE:
                n[i].ctx = ctx_with_value(p, &key, NULL, NULL);
                break;
            case K_CUSTOM:
                n[i].ctx = ctx_with_custom(p, &other_ops, NULL, &n[i].cancel);
                break;
            case K_WITHOUT:
                n[i].ctx = ctx_without_cancel(p);
                break;
            }
            CHECK_NOT_NULL(n[i].ctx);
        }
        /* Deal the cancellable nodes to the threads in random order. */
        int *all = malloc((size_t)count * sizeof *all);
        CHECK(all != NULL);
        int m = 0;
        for (int i = 0; i < count; i++)
            if (n[i].cancel != NULL)
                all[m++] = i;
        check_shuffle(&r, all, m);
        pthread_barrier_t start;
        pthread_barrier_init(&start, NULL, THREADS);
        struct tworker w[THREADS];
        pthread_t t[THREADS];
        for (int k = 0; k < THREADS; k++) {
            int from = m * k / THREADS, to = m * (k + 1) / THREADS;
            w[k] = (struct tworker){ &start, n, all + from, to - from };
            check_thread_start(&t[k], cancel_list, &w[k]);
        }
        for (int k = 0; k < THREADS; k++)
            check_thread_join(t[k]);
        pthread_barrier_destroy(&start);

        for (int i = 0; i < count; i++) {
            const char *msg = NULL;
            int err = ctx_err(n[i].ctx);
            int cause = ctx_cause(n[i].ctx, &msg);
            int p = n[i].parent;
            bool parent_can_reach = p >= 0 && n[p].kind != K_WITHOUT && ctx_err(n[p].ctx) != 0;
            if (n[i].kind == K_WITHOUT) {
                CHECK_EQ_INT(err, 0);
                CHECK_EQ_INT(cause, 0);
                continue;
            }
            if (n[i].cancel == NULL && !parent_can_reach) {
                /* A value layer under a without layer (or the root). */
                CHECK_EQ_INT(err, 0);
                continue;
            }
            CHECK_MSG(err == CTX_CANCELED, "node %d (kind %d) not done", i, n[i].kind);
            int parent_cause = parent_can_reach ? ctx_cause(n[p].ctx, NULL) : -1;
            bool own = n[i].cancel != NULL && cause == cause_of(i);
            CHECK_MSG(own || cause == parent_cause,
                      "node %d (kind %d, parent %d): cause %d, own %d, parent's %d", i, n[i].kind,
                      p, cause, cause_of(i), parent_cause);
            char want[32];
            snprintf(want, sizeof want, "node %d", cause - 10000);
            CHECK_STR(msg, want);
        }
        for (int i = count - 1; i >= 0; i--)
            ctx_unref(n[i].ctx);
        free(all);
        free(n);
    }
}

/* ---------------------------------------------------------------------------
 * Go's TestInterlockedCancels: a thread waits for the parent to be done,
 * then cancels the child; meanwhile the parent is cancelled.  No deadlock,
 * and the child is done.
 */
struct interlock {
    ctx_t *parent;
    ctx_cancel_t *child_cancel;
};

static void *cancel_child_when_parent_done(void *arg)
{
    struct interlock *il = arg;
    while (ctx_wait(il->parent, 0) == 0)
        sched_yield();
    ctx_cancel(il->child_cancel);
    return NULL;
}

static void test_interlocked_cancels(void)
{
    long rounds = check_scale(500);
    for (long i = 0; i < rounds; i++) {
        ctx_cancel_t *pc;
        struct interlock il;
        il.parent = ctx_with_cancel(ctx_background(), &pc);
        CHECK_NOT_NULL(il.parent);
        ctx_t *child = ctx_with_cancel(il.parent, &il.child_cancel);
        CHECK_NOT_NULL(child);
        pthread_t t;
        check_thread_start(&t, cancel_child_when_parent_done, &il);
        ctx_cancel(pc);
        CHECK_CANCELED(child);
        check_thread_join(t);
        CHECK_CANCELED(child);
        ctx_unref(child);
        ctx_unref(il.parent);
    }
}

/* ---------------------------------------------------------------------------
 * The strong guarantee: thread B cancels a node in the middle of a long
 * chain while thread A cancels the root.  When A's ctx_cancel returns,
 * every node of the chain is done, the leaf included, even if B got to the
 * middle first and is still walking below it.  Likewise for B below the
 * middle.  The chain mixes cancel, value and custom layers.
 */
struct chain_side {
    pthread_barrier_t *start;
    ctx_cancel_t *cancel;
    ctx_t **nodes;
    int from, len;
    int cause;
};

static void *cancel_and_verify(void *arg)
{
    struct chain_side *s = arg;
    pthread_barrier_wait(s->start);
    ctx_cancel_cause(s->cancel, s->cause, NULL);
    for (int i = s->from; i < s->len; i++)
        CHECK_MSG(ctx_err(s->nodes[i]) == CTX_CANCELED,
                  "node %d of %d not done when the cancel of node %d returned", i, s->len, s->from);
    return NULL;
}

static void test_strong_guarantee(void)
{
    enum { LEN = 64 };
    check_rng_t r = check_rng_make(check_seed() ^ 0x5a);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 2);
    long rounds = check_scale(3000);
    for (long round = 0; round < rounds; round++) {
        ctx_t *nodes[LEN];
        ctx_cancel_t *cancels[LEN];
        for (int i = 0; i < LEN; i++) {
            ctx_t *p = i == 0 ? ctx_background() : nodes[i - 1];
            cancels[i] = NULL;
            unsigned pick = i == 0 ? 0 : check_rng_below(&r, 4);
            if (pick == 0 || pick == 1)
                nodes[i] = ctx_with_cancel(p, &cancels[i]);
            else if (pick == 2)
                nodes[i] = ctx_with_value(p, &key, NULL, NULL);
            else
                nodes[i] = ctx_with_custom(p, &other_ops, NULL, &cancels[i]);
            CHECK_NOT_NULL(nodes[i]);
        }
        int mid;
        do
            mid = 1 + (int)check_rng_below(&r, LEN - 1);
        while (cancels[mid] == NULL);

        struct chain_side a = { &start, cancels[0], nodes, 0, LEN, EPIPE };
        struct chain_side b = { &start, cancels[mid], nodes, mid, LEN, ECONNRESET };
        pthread_t ta, tb;
        check_thread_start(&ta, cancel_and_verify, &a);
        check_thread_start(&tb, cancel_and_verify, &b);
        check_thread_join(ta);
        check_thread_join(tb);
        for (int i = 0; i < LEN; i++) {
            int cause = ctx_cause(nodes[i], NULL);
            if (i < mid)
                CHECK_EQ_INT(cause, EPIPE);
            else
                CHECK(cause == EPIPE || cause == ECONNRESET);
            /* Below mid every node shares one cause: the first to reach mid. */
            if (i > mid)
                CHECK_EQ_INT(cause, ctx_cause(nodes[mid], NULL));
        }
        for (int i = LEN - 1; i >= 0; i--)
            ctx_unref(nodes[i]);
    }
    pthread_barrier_destroy(&start);
}

/* A wide version: A cancels the root of a tree whose second level B and C
 * cancel at the same moment; A then checks every leaf. */
struct wide_side {
    pthread_barrier_t *start;
    ctx_cancel_t *cancel;
    ctx_t **leaves;
    int nleaves;
};

static void *cancel_wide(void *arg)
{
    struct wide_side *s = arg;
    pthread_barrier_wait(s->start);
    ctx_cancel(s->cancel);
    for (int i = 0; i < s->nleaves; i++)
        CHECK_EQ_INT(ctx_err(s->leaves[i]), CTX_CANCELED);
    return NULL;
}

static void test_strong_guarantee_wide(void)
{
    enum { MID = 4, PER = 50 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, 1 + MID);
    long rounds = check_scale(500);
    for (long round = 0; round < rounds; round++) {
        ctx_cancel_t *rc;
        ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
        CHECK_NOT_NULL(root);
        ctx_t *mids[MID];
        ctx_cancel_t *mc[MID];
        ctx_t *leaves[MID * PER];
        for (int m = 0; m < MID; m++) {
            mids[m] = ctx_with_cancel(root, &mc[m]);
            CHECK_NOT_NULL(mids[m]);
            ctx_t *p = mids[m];
            for (int i = 0; i < PER; i++) {
                /* Half in a chain, half fanned out. */
                leaves[m * PER + i] = ctx_with_cancel(i % 2 ? p : mids[m], NULL);
                CHECK_NOT_NULL(leaves[m * PER + i]);
                p = leaves[m * PER + i];
            }
        }
        struct wide_side sides[1 + MID];
        pthread_t t[1 + MID];
        sides[0] = (struct wide_side){ &start, rc, leaves, MID * PER };
        for (int m = 0; m < MID; m++)
            sides[1 + m] = (struct wide_side){ &start, mc[m], leaves + m * PER, PER };
        for (int k = 0; k < 1 + MID; k++)
            check_thread_start(&t[k], cancel_wide, &sides[k]);
        for (int k = 0; k < 1 + MID; k++)
            check_thread_join(t[k]);
        for (int i = MID * PER - 1; i >= 0; i--)
            ctx_unref(leaves[i]);
        for (int m = 0; m < MID; m++)
            ctx_unref(mids[m]);
        ctx_unref(root);
    }
    pthread_barrier_destroy(&start);
}

/* ---------------------------------------------------------------------------
 * Children dropped (and some cancelled first) by worker threads while the
 * main thread cancels their parent.  Nothing may touch freed memory
 * (sanitizers watch); every child still held after the cancel is done.
 */
struct churn {
    pthread_barrier_t *start;
    ctx_t *parent;
    ctx_t *keep[64];
    int kept;
    unsigned seed;
};

static void *churn_children(void *arg)
{
    struct churn *c = arg;
    check_rng_t r = check_rng_make(c->seed);
    pthread_barrier_wait(c->start);
    for (int i = 0; i < 100; i++) {
        /* A short chain: cancel or custom, value, cancel, custom. */
        ctx_t *chain[4];
        ctx_cancel_t *k[4] = { NULL, NULL, NULL, NULL };
        chain[0] = i % 3 == 2 ? ctx_with_custom(c->parent, &other_ops, NULL, &k[0])
                              : ctx_with_cancel(c->parent, &k[0]);
        CHECK_NOT_NULL(chain[0]);
        chain[1] = ctx_with_value(chain[0], &key, NULL, NULL);
        CHECK_NOT_NULL(chain[1]);
        chain[2] = ctx_with_cancel(chain[1], &k[2]);
        CHECK_NOT_NULL(chain[2]);
        chain[3] = ctx_with_custom(chain[2], &other_ops, NULL, &k[3]);
        CHECK_NOT_NULL(chain[3]);
        /* Maybe cancel a link ourselves, racing the parent's cancel. */
        unsigned which = check_rng_below(&r, 6);
        if (which < 4 && k[which] != NULL)
            ctx_cancel(k[which]);
        /* Keep the bottom now and then; drop the rest in a random order. */
        int order[4] = { 0, 1, 2, 3 };
        check_shuffle(&r, order, 4);
        for (int j = 0; j < 4; j++) {
            if (order[j] == 3 && c->kept < 64 && check_rng_below(&r, 4) == 0)
                c->keep[c->kept++] = chain[3];
            else
                ctx_unref(chain[order[j]]);
        }
    }
    return NULL;
}

static void test_unref_while_cancelling(void)
{
    enum { T = 3 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, T + 1);
    long rounds = check_scale(200);
    for (long round = 0; round < rounds; round++) {
        ctx_cancel_t *pc;
        ctx_t *parent = ctx_with_cancel(ctx_background(), &pc);
        CHECK_NOT_NULL(parent);
        struct churn c[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            memset(&c[k], 0, sizeof c[k]);
            c[k].start = &start;
            c[k].parent = parent;
            c[k].seed = (unsigned)(check_seed() + (uint64_t)round * T + (uint64_t)k);
            check_thread_start(&t[k], churn_children, &c[k]);
        }
        pthread_barrier_wait(&start);
        /* Let the workers get going for a moment, then cancel under them. */
        for (int spin = 0; spin < 50; spin++)
            sched_yield();
        ctx_cancel(pc);
        for (int k = 0; k < T; k++)
            check_thread_join(t[k]);
        for (int k = 0; k < T; k++)
            for (int i = 0; i < c[k].kept; i++) {
                CHECK_EQ_INT(ctx_err(c[k].keep[i]), CTX_CANCELED);
                ctx_unref(c[k].keep[i]);
            }
        ctx_unref(parent);
    }
    pthread_barrier_destroy(&start);
}

/* ---------------------------------------------------------------------------
 * Readers during cancel: ctx_value, ctx_err, ctx_cause and ctx_describe on
 * the leaf of a chain, from several threads, while the root is cancelled.
 * Values and the description never change; err and cause are either "not
 * done" or the final answer.
 */
enum { CHAIN = 24, READERS = 3 };
static ctx_key_t chain_keys[CHAIN];

struct reader {
    pthread_barrier_t *start;
    ctx_t *leaf;
    const char *want_desc;
    int values[CHAIN];
};

static void *read_during_cancel(void *arg)
{
    struct reader *rd = arg;
    char buf[1024];
    pthread_barrier_wait(rd->start);
    int after_done = 0;
    while (after_done < 50) {
        for (int i = 0; i < CHAIN; i++)
            if (i % 3 == 1)
                CHECK_PTR_EQ(ctx_value(rd->leaf, &chain_keys[i]), &rd->values[i]);
        ctx_describe(rd->leaf, buf, sizeof buf);
        CHECK_STR(buf, rd->want_desc);
        const char *msg = NULL;
        int err = ctx_err(rd->leaf);
        int cause = ctx_cause(rd->leaf, &msg);
        if (err != 0) {
            CHECK_EQ_INT(err, CTX_CANCELED);
            CHECK_EQ_INT(cause, EPIPE);
            CHECK_STR(msg, "readers watching");
            after_done++;
        } else if (cause != 0) {
            CHECK_EQ_INT(cause, EPIPE);
            CHECK_STR(msg, "readers watching");
        }
    }
    return NULL;
}

static void test_readers_during_cancel(void)
{
    static struct reader rd;
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, READERS + 1);
    long rounds = check_scale(200);
    for (long round = 0; round < rounds; round++) {
        ctx_t *nodes[CHAIN];
        ctx_cancel_t *rc = NULL;
        char want[1024] = "context.Background";
        for (int i = 0; i < CHAIN; i++) {
            ctx_t *p = i == 0 ? ctx_background() : nodes[i - 1];
            chain_keys[i].name = "k";
            if (i % 3 == 1) {
                nodes[i] = ctx_with_value(p, &chain_keys[i], &rd.values[i], NULL);
                strcat(want, ".WithValue(k, ...)");
            } else if (i % 3 == 2 && i != 2) {
                nodes[i] = ctx_with_custom(p, &other_ops, NULL, NULL);
                strcat(want, ".Other");
            } else {
                nodes[i] = ctx_with_cancel(p, i == 0 ? &rc : NULL);
                strcat(want, ".WithCancel");
            }
            CHECK_NOT_NULL(nodes[i]);
        }
        rd.start = &start;
        rd.leaf = nodes[CHAIN - 1];
        rd.want_desc = want;
        pthread_t t[READERS];
        for (int k = 0; k < READERS; k++)
            check_thread_start(&t[k], read_during_cancel, &rd);
        pthread_barrier_wait(&start);
        ctx_cancel_cause(rc, EPIPE, "readers watching");
        for (int k = 0; k < READERS; k++)
            check_thread_join(t[k]);
        for (int i = CHAIN - 1; i >= 0; i--)
            ctx_unref(nodes[i]);
    }
    pthread_barrier_destroy(&start);
}

/* Many threads cancel the same context at once, each with its own cause:
 * exactly one cause wins, and every descendant carries that one. */
struct same_target {
    pthread_barrier_t *start;
    ctx_cancel_t *cancel;
    int cause;
    char msg[16];
};

static void *cancel_same(void *arg)
{
    struct same_target *s = arg;
    pthread_barrier_wait(s->start);
    ctx_cancel_cause(s->cancel, s->cause, s->msg);
    return NULL;
}

static void test_same_target(void)
{
    enum { T = 4, KIDS = 30 };
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, T);
    long rounds = check_scale(500);
    for (long round = 0; round < rounds; round++) {
        ctx_cancel_t *rc;
        ctx_t *root = ctx_with_cancel(ctx_background(), &rc);
        CHECK_NOT_NULL(root);
        ctx_t *kids[KIDS];
        for (int i = 0; i < KIDS; i++) {
            ctx_t *p = i == 0 ? root : kids[(i - 1) / 2];
            kids[i] = i % 3 ? ctx_with_cancel(p, NULL) : ctx_with_value(p, &key, NULL, NULL);
            CHECK_NOT_NULL(kids[i]);
        }
        struct same_target s[T];
        pthread_t t[T];
        for (int k = 0; k < T; k++) {
            s[k].start = &start;
            s[k].cancel = rc;
            s[k].cause = 7000 + k;
            snprintf(s[k].msg, sizeof s[k].msg, "thread %d", k);
            check_thread_start(&t[k], cancel_same, &s[k]);
        }
        for (int k = 0; k < T; k++)
            check_thread_join(t[k]);
        const char *msg = NULL;
        int cause = ctx_cause(root, &msg);
        CHECK(cause >= 7000 && cause < 7000 + T);
        CHECK_STR(msg, s[cause - 7000].msg);
        for (int i = 0; i < KIDS; i++)
            CHECK_DONE(kids[i], CTX_CANCELED, cause, s[cause - 7000].msg);
        for (int i = KIDS - 1; i >= 0; i--)
            ctx_unref(kids[i]);
        ctx_unref(root);
    }
    pthread_barrier_destroy(&start);
}

int main(void)
{
    RUN_TEST(test_create_while_cancelling);
    RUN_TEST(test_simultaneous_cancels);
    RUN_TEST(test_interlocked_cancels);
    RUN_TEST(test_strong_guarantee);
    RUN_TEST(test_strong_guarantee_wide);
    RUN_TEST(test_same_target);
    RUN_TEST(test_unref_while_cancelling);
    RUN_TEST(test_readers_during_cancel);
    return 0;
}
