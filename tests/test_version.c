/* SPDX-License-Identifier: MIT */

/*
 * The version macros and ctx_version(): they come from the one version in
 * CMakeLists.txt, so the header's and the library's must agree, and the
 * number and the string must say the same thing.
 */
#include "ctx.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* The macros must be usable in #if. */
#if !defined(CTX_VERSION_MAJOR) || CTX_VERSION_MAJOR < 1
#error "CTX_VERSION_MAJOR is missing or below 1"
#endif
#if CTX_VERSION_NUMBER != CTX_VERSION_MAJOR * 10000 + CTX_VERSION_MINOR * 100 + CTX_VERSION_PATCH
#error "CTX_VERSION_NUMBER does not match its parts"
#endif

int main(void)
{
    char want[64];
    snprintf(want, sizeof want, "%d.%d.%d", CTX_VERSION_MAJOR, CTX_VERSION_MINOR,
             CTX_VERSION_PATCH);
    CHECK(strcmp(CTX_VERSION_STRING, want) == 0);
    CHECK(ctx_version() != NULL);
    CHECK(strcmp(ctx_version(), CTX_VERSION_STRING) == 0);
    CHECK(ctx_version_number() == CTX_VERSION_NUMBER);
    printf("libctx %s (%d)\n", ctx_version(), ctx_version_number());
    return 0;
}
