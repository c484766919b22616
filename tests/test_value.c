/* SPDX-License-Identifier: MIT */

/*
 * Values: keys compare by address, the nearest binding wins (a binding to
 * NULL too), values pass through every kind of layer and outlive
 * cancellation, and destroy runs exactly once when the holding context is
 * freed.  Ports Go's TestValues and TestWithoutCancel's value half, and the
 * Go tutorial programs ContextValue and ContextValueDeep.
 */
#include "check.h"

static const ctx_custom_ops_t other_ops = { .name = "Other" };

/* Go's k1, k2, k3: k2 and k3 share a name (Go: the same type) and are still
 * different keys; so is a second key with k1's name. */
static const ctx_key_t k1 = { .name = "key1" };
static const ctx_key_t k2 = { .name = "key2" };
static const ctx_key_t k3 = { .name = "key2" };
static const ctx_key_t k1_twin = { .name = "key1" };

/* c binds k1, k2, k3 to the strings v1, v2, v3 (NULL: unbound or bound to
 * NULL, which look the same from outside). */
static void check_values(ctx_t *c, const char *nm, const char *v1, const char *v2, const char *v3)
{
    const char *g1 = ctx_value(c, &k1);
    const char *g2 = ctx_value(c, &k2);
    const char *g3 = ctx_value(c, &k3);
    CHECK_MSG(g1 == v1, "%s: k1 = %s want %s", nm, g1 ? g1 : "NULL", v1 ? v1 : "NULL");
    CHECK_MSG(g2 == v2, "%s: k2 = %s want %s", nm, g2 ? g2 : "NULL", v2 ? v2 : "NULL");
    CHECK_MSG(g3 == v3, "%s: k3 = %s want %s", nm, g3 ? g3 : "NULL", v3 ? v3 : "NULL");
    CHECK_NULL(ctx_value(c, &k1_twin));
}

/* Go's TestValues: c1..c4 are value chains (c4 shadows k1 with NULL); the
 * o* contexts put a custom context (Go's otherContext) in the chain. */
static void test_values(void)
{
    static const char c1k1[] = "c1k1", c2k2[] = "c2k2", c3k3[] = "c3k3", o2k2[] = "o2k2";

    check_values(ctx_background(), "c0", NULL, NULL, NULL);
    check_values(ctx_todo(), "todo", NULL, NULL, NULL);

    ctx_t *c1 = ctx_with_value(ctx_background(), &k1, (void *)c1k1, NULL);
    CHECK_NOT_NULL(c1);
    check_values(c1, "c1", c1k1, NULL, NULL);

    ctx_t *c2 = ctx_with_value(c1, &k2, (void *)c2k2, NULL);
    CHECK_NOT_NULL(c2);
    check_values(c2, "c2", c1k1, c2k2, NULL);

    ctx_t *c3 = ctx_with_value(c2, &k3, (void *)c3k3, NULL);
    CHECK_NOT_NULL(c3);
    check_values(c3, "c3", c1k1, c2k2, c3k3);

    ctx_t *c4 = ctx_with_value(c3, &k1, NULL, NULL);
    CHECK_NOT_NULL(c4);
    check_values(c4, "c4", NULL, c2k2, c3k3);

    ctx_t *o0 = ctx_with_custom(ctx_background(), &other_ops, NULL, NULL);
    CHECK_NOT_NULL(o0);
    check_values(o0, "o0", NULL, NULL, NULL);

    ctx_t *v1 = ctx_with_value(ctx_background(), &k1, (void *)c1k1, NULL);
    CHECK_NOT_NULL(v1);
    ctx_t *o1 = ctx_with_custom(v1, &other_ops, NULL, NULL);
    CHECK_NOT_NULL(o1);
    check_values(o1, "o1", c1k1, NULL, NULL);

    ctx_t *o2 = ctx_with_value(o1, &k2, (void *)o2k2, NULL);
    CHECK_NOT_NULL(o2);
    check_values(o2, "o2", c1k1, o2k2, NULL);

    ctx_t *o3 = ctx_with_custom(c4, &other_ops, NULL, NULL);
    CHECK_NOT_NULL(o3);
    check_values(o3, "o3", NULL, c2k2, c3k3);

    ctx_t *o4 = ctx_with_value(o3, &k3, NULL, NULL);
    CHECK_NOT_NULL(o4);
    check_values(o4, "o4", NULL, c2k2, NULL);

    /* The upper layers are unchanged by what was built below them. */
    check_values(c1, "c1 again", c1k1, NULL, NULL);
    check_values(c3, "c3 again", c1k1, c2k2, c3k3);

    ctx_t *all[] = { o4, o3, o2, o1, v1, o0, c4, c3, c2, c1 };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ctx_unref(all[i]);
}

/* Keys are addresses: same name, different key; a key found by its own
 * address only; absent keys give NULL. */
static void test_address_keys(void)
{
    ctx_key_t a = { .name = "same", .format = NULL };
    ctx_key_t b = { .name = "same", .format = NULL };
    int va = 1, vb = 2;
    ctx_t *ca = ctx_with_value(ctx_background(), &a, &va, NULL);
    CHECK_NOT_NULL(ca);
    ctx_t *cb = ctx_with_value(ca, &b, &vb, NULL);
    CHECK_NOT_NULL(cb);
    CHECK_PTR_EQ(ctx_value(cb, &a), &va);
    CHECK_PTR_EQ(ctx_value(cb, &b), &vb);
    CHECK_PTR_EQ(ctx_value(ca, &a), &va);
    CHECK_NULL(ctx_value(ca, &b));
    CHECK_NULL(ctx_value(cb, &k1));
    ctx_unref(cb);
    ctx_unref(ca);
}

/* Values pass through cancel, deadline, without, custom and value layers;
 * the nearest binding wins at every depth; values stay readable after the
 * chain is cancelled. */
static void test_through_layers(void)
{
    static const ctx_key_t key = { .name = "key" };
    static const ctx_key_t other = { .name = "other" };
    int outer = 1, inner = 2, o = 3;
    ctx_cancel_t *cancel;
    ctx_t *v_outer = ctx_with_value(ctx_background(), &key, &outer, NULL);
    CHECK_NOT_NULL(v_outer);
    ctx_t *c = ctx_with_cancel(v_outer, &cancel);
    CHECK_NOT_NULL(c);
    ctx_t *t = ctx_with_timeout(c, 1000 * CTX_HOUR, NULL);
    CHECK_NOT_NULL(t);
    ctx_t *w = ctx_without_cancel(t);
    CHECK_NOT_NULL(w);
    ctx_t *cu = ctx_with_custom(w, &other_ops, NULL, NULL);
    CHECK_NOT_NULL(cu);
    ctx_t *v_other = ctx_with_value(cu, &other, &o, NULL);
    CHECK_NOT_NULL(v_other);
    ctx_t *v_inner = ctx_with_value(v_other, &key, &inner, NULL);
    CHECK_NOT_NULL(v_inner);
    ctx_t *bottom = ctx_with_cancel(v_inner, NULL);
    CHECK_NOT_NULL(bottom);

    ctx_t *upper[] = { v_outer, c, t, w, cu, v_other };
    for (size_t i = 0; i < sizeof upper / sizeof upper[0]; i++)
        CHECK_PTR_EQ(ctx_value(upper[i], &key), &outer);
    CHECK_PTR_EQ(ctx_value(v_inner, &key), &inner);
    CHECK_PTR_EQ(ctx_value(bottom, &key), &inner);
    CHECK_PTR_EQ(ctx_value(bottom, &other), &o);
    CHECK_NULL(ctx_value(c, &other));

    ctx_cancel(cancel);
    CHECK_CANCELED(t);
    CHECK_NOT_DONE(bottom); /* below the without layer */
    CHECK_PTR_EQ(ctx_value(t, &key), &outer);
    CHECK_PTR_EQ(ctx_value(c, &key), &outer);
    CHECK_PTR_EQ(ctx_value(bottom, &key), &inner);
    CHECK_PTR_EQ(ctx_value(bottom, &other), &o);

    ctx_t *all[] = { bottom, v_inner, v_other, cu, w, t, c, v_outer };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ctx_unref(all[i]);
}

/* destroy bookkeeping: one counter per value. */
static atomic_int destroyed[8];
static _Thread_local int destroy_on_this_thread;

static void destroy_slot(void *value)
{
    int slot = (int)(intptr_t)value;
    CHECK(slot >= 0 && slot < 8);
    atomic_fetch_add(&destroyed[slot], 1);
    destroy_on_this_thread++;
}

static void reset_destroyed(void)
{
    for (int i = 0; i < 8; i++)
        atomic_store(&destroyed[i], 0);
}

/* destroy runs exactly once, when the holding context is freed: not at
 * cancel, not while a child holds the context, not for a NULL destroy. */
static void test_destroy_once(void)
{
    static const ctx_key_t key = { .name = "key" };
    reset_destroyed();

    /* Freed at the last unref, not at cancel. */
    ctx_cancel_t *cancel;
    ctx_t *p = ctx_with_cancel(ctx_background(), &cancel);
    CHECK_NOT_NULL(p);
    ctx_t *v = ctx_with_value(p, &key, (void *)(intptr_t)1, destroy_slot);
    CHECK_NOT_NULL(v);
    ctx_cancel(cancel);
    CHECK_EQ_INT(atomic_load(&destroyed[1]), 0);
    CHECK_PTR_EQ(ctx_value(v, &key), (void *)(intptr_t)1);
    ctx_ref(v);
    ctx_unref(v);
    CHECK_EQ_INT(atomic_load(&destroyed[1]), 0);
    ctx_unref(v);
    CHECK_EQ_INT(atomic_load(&destroyed[1]), 1);
    ctx_unref(p);
    CHECK_EQ_INT(atomic_load(&destroyed[1]), 1);

    /* A child keeps the value context (and so the value) alive. */
    v = ctx_with_value(ctx_background(), &key, (void *)(intptr_t)2, destroy_slot);
    CHECK_NOT_NULL(v);
    ctx_t *child = ctx_with_cancel(v, NULL);
    CHECK_NOT_NULL(child);
    ctx_t *grand = ctx_with_value(child, &k1, (void *)(intptr_t)3, destroy_slot);
    CHECK_NOT_NULL(grand);
    ctx_unref(v);
    ctx_unref(child);
    CHECK_EQ_INT(atomic_load(&destroyed[2]), 0);
    CHECK_EQ_INT(atomic_load(&destroyed[3]), 0);
    CHECK_PTR_EQ(ctx_value(grand, &key), (void *)(intptr_t)2);
    ctx_unref(grand);
    CHECK_EQ_INT(atomic_load(&destroyed[2]), 1);
    CHECK_EQ_INT(atomic_load(&destroyed[3]), 1);

    /* Shadowed values are destroyed too, each once. */
    v = ctx_with_value(ctx_background(), &key, (void *)(intptr_t)4, destroy_slot);
    CHECK_NOT_NULL(v);
    ctx_t *v2 = ctx_with_value(v, &key, (void *)(intptr_t)5, destroy_slot);
    CHECK_NOT_NULL(v2);
    CHECK_PTR_EQ(ctx_value(v2, &key), (void *)(intptr_t)5);
    ctx_unref(v);
    ctx_unref(v2);
    CHECK_EQ_INT(atomic_load(&destroyed[4]), 1);
    CHECK_EQ_INT(atomic_load(&destroyed[5]), 1);

    /* A NULL value is still passed to destroy. */
    int null_calls_before = destroy_on_this_thread;
    v = ctx_with_value(ctx_background(), &key, NULL, destroy_slot);
    CHECK_NOT_NULL(v);
    ctx_unref(v);
    CHECK_EQ_INT(destroy_on_this_thread, null_calls_before + 1);
    CHECK_EQ_INT(atomic_load(&destroyed[0]), 1);

    /* No destroy at all when construction fails. */
    CHECK_FAILS_WITH(ctx_with_value(NULL, &key, (void *)(intptr_t)6, destroy_slot), EINVAL);
    CHECK_FAILS_WITH(ctx_with_value(ctx_background(), NULL, (void *)(intptr_t)6, destroy_slot),
                     EINVAL);
    CHECK_EQ_INT(atomic_load(&destroyed[6]), 0);
}

/* destroy runs on the thread that drops the last reference. */
struct unref_job {
    ctx_t *ctx;
    int calls_here;
};

static void *unref_on_thread(void *arg)
{
    struct unref_job *j = arg;
    ctx_unref(j->ctx);
    j->calls_here = destroy_on_this_thread;
    return NULL;
}

static void test_destroy_thread(void)
{
    static const ctx_key_t key = { .name = "key" };
    reset_destroyed();
    ctx_t *v = ctx_with_value(ctx_background(), &key, (void *)(intptr_t)7, destroy_slot);
    CHECK_NOT_NULL(v);
    int before = destroy_on_this_thread;
    struct unref_job j = { v, 0 };
    pthread_t t;
    check_thread_start(&t, unref_on_thread, &j);
    check_thread_join(t);
    CHECK_EQ_INT(j.calls_here, 1);
    CHECK_EQ_INT(destroy_on_this_thread, before);
    CHECK_EQ_INT(atomic_load(&destroyed[7]), 1);
}

/* The Go tutorial programs ContextValue and ContextValueDeep: a value bound at the
 * bottom of a chain whose other layers bind another key (twice, the same
 * key) is found from another thread through every layer; a key nobody bound
 * is not. */
static const ctx_key_t title = { .name = "title" };
static const ctx_key_t other_key = { .name = "key" };

struct lookup {
    ctx_t *ctx;
    const ctx_key_t *key;
    void *got;
};

static void *lookup_on_thread(void *arg)
{
    struct lookup *l = arg;
    l->got = ctx_value(l->ctx, l->key);
    return NULL;
}

static void *lookup_elsewhere(ctx_t *c, const ctx_key_t *key)
{
    struct lookup l = { c, key, (void *)&l };
    pthread_t t;
    check_thread_start(&t, lookup_on_thread, &l);
    check_thread_join(t);
    return l.got;
}

static void test_seed_programs(void)
{
    static const char go[] = "Go", one[] = "Go One", two[] = "Go Two", three[] = "Go Three";
    ctx_t *c = ctx_with_value(ctx_background(), &title, (void *)go, NULL);
    CHECK_NOT_NULL(c);
    CHECK_PTR_EQ(lookup_elsewhere(c, &title), go);
    ctx_unref(c);

    ctx_t *c1 = ctx_with_value(ctx_background(), &title, (void *)one, NULL);
    CHECK_NOT_NULL(c1);
    ctx_t *c2 = ctx_with_value(c1, &other_key, (void *)two, NULL);
    CHECK_NOT_NULL(c2);
    ctx_t *c3 = ctx_with_value(c2, &other_key, (void *)three, NULL);
    CHECK_NOT_NULL(c3);
    CHECK_PTR_EQ(lookup_elsewhere(c3, &title), one);
    CHECK_PTR_EQ(lookup_elsewhere(c3, &other_key), three);
    CHECK_PTR_EQ(lookup_elsewhere(c2, &other_key), two);
    CHECK_NULL(lookup_elsewhere(c3, &k1));
    ctx_unref(c3);
    ctx_unref(c2);
    ctx_unref(c1);

    /* Go's DeepValue benchmarks' depths: the bottom binding is found from
     * the top through 10..100 layers of another key. */
    const int depths[] = { 10, 20, 30, 50, 100 };
    for (size_t d = 0; d < sizeof depths / sizeof depths[0]; d++) {
        ctx_t *top = ctx_with_value(ctx_background(), &title, (void *)one, NULL);
        CHECK_NOT_NULL(top);
        for (int i = 1; i < depths[d]; i++) {
            ctx_t *next = ctx_with_value(top, &other_key, (void *)two, NULL);
            CHECK_NOT_NULL(next);
            ctx_unref(top);
            top = next;
        }
        CHECK_PTR_EQ(ctx_value(top, &title), one);
        CHECK_PTR_EQ(lookup_elsewhere(top, &title), one);
        CHECK_NULL(ctx_value(top, &k3));
        ctx_unref(top);
    }
}

/* Go's TestWithoutCancel, value half: values of the parent show through. */
static void test_without_cancel_values(void)
{
    static const char value[] = "value";
    ctx_t *v = ctx_with_value(ctx_background(), &k1, (void *)value, NULL);
    CHECK_NOT_NULL(v);
    ctx_t *w = ctx_without_cancel(v);
    CHECK_NOT_NULL(w);
    CHECK_PTR_EQ(ctx_value(w, &k1), value);
    CHECK_NULL(ctx_value(w, &k2));
    ctx_unref(v);
    CHECK_PTR_EQ(ctx_value(w, &k1), value);
    ctx_unref(w);
}

/* Model check of lookups: random trees of value, cancel, without and custom
 * layers (custom ones bind one key through their hook or decline every key)
 * over a pool of more keys than a 64-bit word has bits, so that any
 * shortcut the library takes (filters, skip pointers) meets collisions.
 * For every node and every key ctx_value must agree with a walk of the
 * test's own copy of the tree; again after random cancellations. */
enum { POOL = 100 };
static ctx_key_t pool[POOL];

struct binding {
    const ctx_key_t *key; /* NULL: declines everything */
    void *value;
};

static bool binding_hook(void *data, const ctx_key_t *key, void **value)
{
    const struct binding *b = data;
    if (b->key == NULL || b->key != key)
        return false;
    *value = b->value;
    return true;
}

static const ctx_custom_ops_t binding_ops = { .name = "Binding", .value = binding_hook };

enum vkind { V_VALUE, V_CANCEL, V_WITHOUT, V_CUSTOM, V_TIMER };

struct vnode {
    ctx_t *ctx;
    ctx_cancel_t *cancel;
    int parent;
    enum vkind kind;
    struct binding b; /* the value node's or custom node's binding */
};

static void *model_lookup(const struct vnode *n, int i, const ctx_key_t *key)
{
    for (; i >= 0; i = n[i].parent)
        if ((n[i].kind == V_VALUE || n[i].kind == V_CUSTOM) && n[i].b.key == key)
            return n[i].b.value;
    return NULL;
}

static void check_all_lookups(const struct vnode *n, int count)
{
    for (int i = 0; i < count; i++)
        for (int k = 0; k < POOL; k++) {
            void *want = model_lookup(n, i, &pool[k]);
            void *got = ctx_value(n[i].ctx, &pool[k]);
            CHECK_MSG(got == want, "node %d (kind %d) key %d: got %p want %p", i, n[i].kind, k, got,
                      want);
        }
}

static void test_value_model(void)
{
    for (int k = 0; k < POOL; k++)
        pool[k].name = "pooled";
    check_rng_t r = check_rng_make(check_seed() ^ 0x7a1);
    long rounds = check_scale(30);
    static int payload[4096];
    for (long round = 0; round < rounds; round++) {
        /* Rounds of three shapes: mixed layers; nearly all value layers in
         * long runs, longer than any run a filter may cover; and long runs
         * where value layers alternate with runs of 1 to 12 layers that
         * bind nothing (cancel, timer, without-cancel), which a filter may
         * span, now and then a custom layer, which it must not. */
        bool runs = round % 3 == 1;
        bool alternate = round % 3 == 2;
        int gap = 0; /* layers without values still to make (alternate) */
        int count = 100 + (int)check_rng_below(&r, 400);
        struct vnode *n = calloc((size_t)count, sizeof *n);
        CHECK(n != NULL);
        for (int i = 0; i < count; i++) {
            int parent;
            if (i == 0)
                parent = -1;
            else if (check_rng_below(&r, runs || alternate ? 40 : 3) != 0)
                parent = i - 1; /* long runs make long segments */
            else
                parent = (int)check_rng_below(&r, (unsigned)i) - (check_rng_below(&r, 8) == 0);
            n[i].parent = parent;
            ctx_t *p = parent < 0 ? ctx_background() : n[parent].ctx;
            unsigned pick = runs ? (check_rng_below(&r, 30) == 0 ? 6 + check_rng_below(&r, 4) : 0)
                                 : check_rng_below(&r, 10);
            if (alternate) {
                if (gap > 0) {
                    gap--;
                    pick = 10 + check_rng_below(&r, 3); /* cancel, without or timer */
                } else {
                    pick = check_rng_below(&r, 40) == 0 ? 9 : 0;
                    gap = check_rng_below(&r, 4) == 0 ? 1 + (int)check_rng_below(&r, 12) : 1;
                }
            }
            /* Some keys are popular (so they shadow), most are rare. */
            const ctx_key_t *key = check_rng_below(&r, 2) ? &pool[check_rng_below(&r, 8)]
                                                          : &pool[check_rng_below(&r, POOL)];
            void *value = check_rng_below(&r, 10) == 0 ? NULL : &payload[i % 4096];
            if (pick < 6) {
                n[i].kind = V_VALUE;
                n[i].b = (struct binding){ key, value };
                n[i].ctx = ctx_with_value(p, key, value, NULL);
            } else if (pick == 12) {
                n[i].kind = V_TIMER;
                n[i].ctx = ctx_with_timeout(p, CTX_HOUR, &n[i].cancel);
            } else if (pick < 8 || pick == 10) {
                n[i].kind = V_CANCEL;
                n[i].ctx = ctx_with_cancel(p, &n[i].cancel);
            } else if (pick < 9 || pick == 11) {
                n[i].kind = V_WITHOUT;
                n[i].ctx = ctx_without_cancel(p);
            } else {
                n[i].kind = V_CUSTOM;
                n[i].b = (struct binding){ check_rng_below(&r, 2) ? key : NULL, value };
                n[i].ctx = ctx_with_custom(p, &binding_ops, &n[i].b, &n[i].cancel);
            }
            CHECK_NOT_NULL(n[i].ctx);
        }
        check_all_lookups(n, count);
        for (int i = 0; i < count; i++)
            if (n[i].cancel != NULL && check_rng_below(&r, 4) == 0)
                ctx_cancel(n[i].cancel);
        check_all_lookups(n, count);
        for (int i = count - 1; i >= 0; i--)
            ctx_unref(n[i].ctx);
        free(n);
    }
}

int main(void)
{
    RUN_TEST(test_values);
    RUN_TEST(test_address_keys);
    RUN_TEST(test_through_layers);
    RUN_TEST(test_destroy_once);
    RUN_TEST(test_destroy_thread);
    RUN_TEST(test_seed_programs);
    RUN_TEST(test_without_cancel_values);
    RUN_TEST(test_value_model);
    return 0;
}
