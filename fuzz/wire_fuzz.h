/* SPDX-License-Identifier: MIT */

/*
 * wire_fuzz.h: what the header-format harnesses share.  A failed property
 * aborts with a message, so libFuzzer records the input as a crash and the
 * replay test fails, with or without NDEBUG.
 */
#ifndef CTX_FUZZ_WIRE_FUZZ_H
#define CTX_FUZZ_WIRE_FUZZ_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "propagation/wire.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, #cond);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif /* CTX_FUZZ_WIRE_FUZZ_H */
