/* SPDX-License-Identifier: MIT */

/*
 * The library's version at run time, from the same generated header the
 * macros come from, so the two can never disagree within one build.
 */
#include "internal.h"

const char *ctx_version(void)
{
    return CTX_VERSION_STRING;
}

int ctx_version_number(void)
{
    return CTX_VERSION_NUMBER;
}
