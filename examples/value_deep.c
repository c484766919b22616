/* SPDX-License-Identifier: MIT */

/*
 * value_deep: a value lookup walks up the tree to the nearest binding.
 *
 * This is the Go tutorial program ContextValueDeep.  It builds a chain of
 * three value contexts,
 *
 *     context.Background()
 *       ctxOne    title = "One"
 *         ctxTwo    key = "Value"
 *           ctxThree  key = "Value"
 *
 * and a worker thread looks "title" up from the bottom, ctxThree.  Neither
 * ctxThree nor ctxTwo binds title, so the lookup continues to ctxOne and the
 * worker prints
 *
 *     found value: One
 *
 * Binding "key" twice is harmless: the nearest binding wins, so a lookup of
 * key from ctxThree would stop at ctxThree.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Go: MyContextKey("title") and MyContextKey("key").  C keys compare by
 * address, so these are two distinct keys whatever their names. */
static const ctx_key_t title = { .name = "title" };
static const ctx_key_t key = { .name = "key" };

static void fail(const char *what, int err)
{
    fprintf(stderr, "value_deep: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* A ctx_with_value that treats NULL as fatal.  The values below are string
 * literals, which need no destroy function. */
static ctx_t *with_value(ctx_t *parent, const ctx_key_t *k, void *value)
{
    ctx_t *ctx = ctx_with_value(parent, k, value, NULL);
    if (ctx == NULL)
        fail("ctx_with_value", errno);
    return ctx;
}

/* Go:
 *
 *     go func(c context.Context) {
 *         defer wgOne.Done()
 *         if v := c.Value(MyContextKey("title")); v != nil {
 *             fmt.Println("found value:", v)
 *             return
 *         }
 *         fmt.Println("key not found:", MyContextKey("title"))
 *     }(ctxThree)
 *
 * c is borrowed: main keeps its reference until after pthread_join. */
static void *worker(void *arg)
{
    ctx_t *c = arg;

    const char *v = ctx_value(c, &title);
    if (v != NULL)
        printf("found value: %s\n", v);
    else
        printf("key not found: %s\n", title.name);
    return NULL;
}

int main(void)
{
    /* ctxOne := context.WithValue(context.Background(), MyContextKey("title"), "One")
     * ctxTwo := context.WithValue(ctxOne, MyContextKey("key"), "Value")
     * ctxThree := context.WithValue(ctxTwo, MyContextKey("key"), "Value") */
    ctx_t *one = with_value(ctx_background(), &title, "One");
    ctx_t *two = with_value(one, &key, "Value");
    ctx_t *three = with_value(two, &key, "Value");

    /* Each child holds a reference to its parent, so main only needs
     * ctxThree from here on: drop ctxOne and ctxTwo now.  They stay alive,
     * and their values readable, for as long as ctxThree is. */
    ctx_unref(one);
    ctx_unref(two);

    /* wgOne.Add(1); go func(c context.Context) { ... }(ctxThree) */
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, worker, three);
    if (rc != 0)
        fail("pthread_create", rc);

    /* wgOne.Wait() */
    rc = pthread_join(thread, NULL);
    if (rc != 0)
        fail("pthread_join", rc);

    /* The last reference: this frees ctxThree, then ctxTwo, then ctxOne. */
    ctx_unref(three);
    return 0;
}
