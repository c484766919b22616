/* SPDX-License-Identifier: MIT */

/*
 * A program outside the libctx tree, built against an installed libctx both
 * through pkg-config and through find_package(ctx).  It proves that the
 * installed header, library and package files are enough to build and run a
 * user of the library.
 */
#include <ctx.h>

#include <stdio.h>
#include <string.h>

static const ctx_key_t greeting_key = { .name = "greeting" };

static int check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "consumer: %s\n", what);
    }
    return ok;
}

int main(void)
{
    static char greeting[] = "hello";
    ctx_cancel_t *cancel = NULL;
    int ok = 1;

    ctx_t *parent = ctx_with_cancel(ctx_background(), &cancel);
    if (!parent || !cancel) {
        perror("consumer: ctx_with_cancel");
        return 1;
    }
    ctx_t *child = ctx_with_value(parent, &greeting_key, greeting, NULL);
    if (!child) {
        perror("consumer: ctx_with_value");
        ctx_unref(parent);
        return 1;
    }

    ok &= check(ctx_err(child) == 0, "child is done before cancel");
    ctx_cancel(cancel);
    ok &= check(ctx_err(parent) == CTX_CANCELED, "parent is not CTX_CANCELED after cancel");
    ok &= check(ctx_err(child) == CTX_CANCELED, "child is not CTX_CANCELED after cancel");
    ok &= check(ctx_value(child, &greeting_key) == greeting, "value lost after cancel");
    ok &= check(strcmp(ctx_strerror(CTX_CANCELED), "context canceled") == 0,
                "ctx_strerror(CTX_CANCELED) is not \"context canceled\"");

    ctx_unref(child);
    ctx_unref(parent);

    if (!ok) {
        return 1;
    }
    puts("consumer ok");
    return 0;
}
