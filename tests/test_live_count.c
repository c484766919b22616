/* SPDX-License-Identifier: MIT */

/*
 * ctx_live_count: every kind of context is counted from its creation to
 * its free, tracking on or off, and contexts made on one thread and freed
 * on another leave the sum right.
 */
#include "check.h"

#include <pthread.h>

static const ctx_key_t key = { .name = "k" };

static void test_each_kind(void)
{
    size_t before = ctx_live_count();
    ctx_cancel_t *cancel;
    ctx_t *c = ctx_with_cancel(ctx_background(), &cancel);
    ctx_t *t = ctx_with_timeout(c, CTX_SECOND, NULL);
    ctx_t *v = ctx_with_value(t, &key, NULL, NULL);
    ctx_t *w = ctx_without_cancel(v);
    ctx_t *m = ctx_merge((ctx_t *[]){ c, t }, 2, NULL);
    CHECK(c && t && v && w && m);
    CHECK_EQ_INT((long)(ctx_live_count() - before), 5);
    /* A cancelled context is alive until its last reference goes. */
    ctx_cancel(cancel);
    CHECK_EQ_INT((long)(ctx_live_count() - before), 5);
    ctx_unref(m);
    ctx_unref(w);
    ctx_unref(v);
    CHECK_EQ_INT((long)(ctx_live_count() - before), 2);
    ctx_unref(t);
    ctx_unref(c);
    CHECK_EQ_INT((long)ctx_live_count(), (long)before);
}

static void test_tracking_on(void)
{
    size_t before = ctx_live_count();
    ctx_track(true);
    ctx_t *c = ctx_with_cancel(ctx_background(), NULL);
    CHECK_EQ_INT((long)(ctx_live_count() - before), 1);
    ctx_track(false);
    ctx_unref(c);
    CHECK_EQ_INT((long)ctx_live_count(), (long)before);
}

#define N 20000
static ctx_t *made[N];

static void *make(void *arg)
{
    ctx_t *parent = arg;
    for (int i = 0; i < N; i++)
        made[i] = ctx_with_cancel(parent, NULL);
    return NULL;
}

static void *unmake(void *arg)
{
    (void)arg;
    for (int i = 0; i < N; i++)
        ctx_unref(made[i]);
    return NULL;
}

/* Made on one thread, freed on another, while a third makes and frees its
 * own: the sum is exact once all are joined. */
static void *churn(void *arg)
{
    for (int i = 0; i < N; i++)
        ctx_unref(ctx_with_timeout(arg, CTX_SECOND, NULL));
    return NULL;
}

static void test_across_threads(void)
{
    size_t before = ctx_live_count();
    ctx_t *parent = ctx_with_cancel(ctx_background(), NULL);
    pthread_t a, b, c;
    CHECK_EQ_INT(pthread_create(&a, NULL, make, parent), 0);
    CHECK_EQ_INT(pthread_create(&c, NULL, churn, parent), 0);
    CHECK_EQ_INT(pthread_join(a, NULL), 0);
    CHECK_EQ_INT((long)ctx_live_count() >= (long)before + 1 + N, 1);
    CHECK_EQ_INT(pthread_create(&b, NULL, unmake, NULL), 0);
    CHECK_EQ_INT(pthread_join(b, NULL), 0);
    CHECK_EQ_INT(pthread_join(c, NULL), 0);
    CHECK_EQ_INT((long)ctx_live_count(), (long)before + 1);
    ctx_unref(parent);
    CHECK_EQ_INT((long)ctx_live_count(), (long)before);
}

int main(void)
{
    RUN_TEST(test_each_kind);
    RUN_TEST(test_tracking_on);
    RUN_TEST(test_across_threads);
    return 0;
}
