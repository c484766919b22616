/* SPDX-License-Identifier: MIT */

/*
 * value: carry a request-scoped value to another thread.
 *
 * This is the Go tutorial program ContextValue.  main binds the key "title" to
 * "Go" and hands the context to a worker thread, which looks the key up and
 * prints
 *
 *     found value: Go
 *
 * Go keys are any comparable value; the tutorial uses a private string type,
 * MyContextKey("title"), so that no other package can collide with it.  In
 * C a key is a ctx_key_t object and is compared by its ADDRESS: two keys
 * with the same name are still different keys, so collisions cannot happen
 * at all.  The name is only used when printing a context (ctx_describe).
 */
#define _POSIX_C_SOURCE 200809L

#include <ctx.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Go: type MyContextKey string ... MyContextKey("title") */
static const ctx_key_t title = { .name = "title" };

static void fail(const char *what, int err)
{
    fprintf(stderr, "value: FAIL: %s: %s\n", what, strerror(err));
    exit(EXIT_FAILURE);
}

/* Go:
 *
 *     go func(c context.Context) {
 *         defer wg.Done()
 *         if v := c.Value(MyContextKey("title")); v != nil {
 *             fmt.Println("found value:", v)
 *             return
 *         }
 *         fmt.Println("key not found:", MyContextKey("title"))
 *     }(ctx)
 *
 * The thread owns the reference main took for it, and drops it when done. */
static void *worker(void *arg)
{
    ctx_t *c = arg;

    /* c.Value(key): the nearest binding of &title, or NULL. */
    const char *v = ctx_value(c, &title);
    if (v != NULL)
        printf("found value: %s\n", v);
    else
        printf("key not found: %s\n", title.name);

    ctx_unref(c);
    return NULL;
}

int main(void)
{
    /* ctx := context.WithValue(context.Background(), MyContextKey("title"), "Go")
     *
     * The value is a string literal that lives forever, so there is nothing
     * to destroy: pass NULL as the destroy function.  A heap value would pass
     * free (or its own destructor), and the library would call it once, when
     * the context is freed. */
    ctx_t *ctx = ctx_with_value(ctx_background(), &title, "Go", NULL);
    if (ctx == NULL)
        fail("ctx_with_value", errno);

    /* go func(c context.Context) { ... }(ctx)
     *
     * The thread gets its own reference (ctx_ref), so it does not matter
     * whether main or the worker finishes with the context first. */
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, worker, ctx_ref(ctx));
    if (rc != 0)
        ctx_unref(ctx); /* no thread took the reference meant for it */

    /* main is done with ctx: drop its own reference now.  The worker's
     * reference keeps the context alive until the worker drops it. */
    ctx_unref(ctx);
    if (rc != 0)
        fail("pthread_create", rc);

    /* wg.Wait() */
    rc = pthread_join(thread, NULL);
    if (rc != 0)
        fail("pthread_join", rc);
    return 0;
}
