/* SPDX-License-Identifier: MIT */

/*
 * libFuzzer harness for the whole path: the input, split at its first
 * three newlines, gives the grpc-timeout, traceparent, tracestate and
 * baggage headers of an incoming request.  ctx_extract must succeed, never
 * extend the parent's deadline, hold the trace id of a traceparent that
 * the format accepts and every baggage member it accepts, and ctx_inject
 * of the result must write headers that ctx_extract reads back to the
 * same trace id and baggage (up to the limits), with a budget no longer
 * than the first.
 */
#include "wire_fuzz.h"

#include <ctx/propagation.h>

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static const char *const names[4] = { "grpc-timeout", "traceparent", "tracestate", "baggage" };

struct store {
    char *value[4];
};

static const char *get(void *h, const char *name)
{
    struct store *s = h;
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return s->value[i];
    return NULL;
}

static int set(void *h, const char *name, const char *value)
{
    struct store *s = h;
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            free(s->value[i]);
            s->value[i] = strdup(value);
            return s->value[i] != NULL ? 0 : ENOMEM;
        }
    }
    abort(); /* a header nobody asked for */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct store in = { { NULL } }, out = { { NULL } };
    size_t pos = 0;
    for (int i = 0; i < 4 && pos <= size; i++) {
        const uint8_t *nl = i < 3 ? memchr(data + pos, '\n', size - pos) : NULL;
        size_t end = nl != NULL ? (size_t)(nl - data) : size;
        in.value[i] = malloc(end - pos + 1);
        FUZZ_CHECK(in.value[i] != NULL);
        memcpy(in.value[i], data + pos, end - pos);
        in.value[i][end - pos] = '\0';
        pos = end + 1;
    }
    ctx_carrier_t cin = { get, set, &in }, cout = { get, set, &out };

    ctx_t *parent = ctx_with_timeout(ctx_background(), CTX_HOUR, NULL);
    ctx_time_t pd, d;
    FUZZ_CHECK(ctx_deadline(parent, &pd));
    ctx_t *x = ctx_extract(parent, &cin, NULL);
    FUZZ_CHECK(x != NULL);
    FUZZ_CHECK(ctx_deadline(x, &d) && d <= pd);
    char id[33], id2[33];
    FUZZ_CHECK(ctx_trace_id(x, id));

    /* What the formats accept is what the context holds: an incoming valid
     * traceparent's trace id, and each incoming baggage key's last value. */
    struct ctx__traceparent tp;
    const char *h = in.value[1];
    if (h != NULL && ctx__traceparent_parse(h, strnlen(h, CTX__TRACEPARENT_READ_MAX), &tp) == 0) {
        char want[33];
        ctx__hex(tp.trace_id, 16, want);
        FUZZ_CHECK(strcmp(id, want) == 0);
    }
    struct ctx__bag_member in_m[CTX__BAGGAGE_MAX_MEMBERS];
    h = in.value[3];
    int in_n = h != NULL ? ctx__baggage_parse(h, strnlen(h, CTX__BAGGAGE_MAX_BYTES + 1), in_m) : 0;
    for (int i = 0; i < in_n; i++) {
        char key[CTX__BAGGAGE_MAX_BYTES + 1], *value = malloc(in_m[i].value_len_decoded + 1);
        FUZZ_CHECK(value != NULL);
        memcpy(key, in_m[i].key, in_m[i].key_len);
        key[in_m[i].key_len] = '\0';
        ctx__baggage_decode(in_m[i].value, in_m[i].value_len, value);
        bool last = true;
        for (int j = i + 1; j < in_n; j++)
            last = last && !(in_m[j].key_len == in_m[i].key_len &&
                             memcmp(in_m[j].key, in_m[i].key, in_m[i].key_len) == 0);
        const char *got = ctx_baggage(x, key);
        FUZZ_CHECK(got != NULL && (!last || strcmp(got, value) == 0));
        free(value);
    }

    int rc = ctx_inject(x, &cout);
    FUZZ_CHECK(rc == 0 || rc == CTX_DEADLINE_EXCEEDED);
    if (rc == 0) {
        FUZZ_CHECK(out.value[1] != NULL && strlen(out.value[1]) == CTX__TRACEPARENT_LEN);
        ctx_t *y = ctx_extract(ctx_background(), &cout, NULL);
        FUZZ_CHECK(y != NULL);
        FUZZ_CHECK(ctx_trace_id(y, id2) && strcmp(id, id2) == 0);
        /* Every member that went out comes back with the same value. */
        struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
        int n =
            out.value[3] != NULL ? ctx__baggage_parse(out.value[3], strlen(out.value[3]), m) : 0;
        FUZZ_CHECK(n >= 0);
        for (int i = 0; i < n; i++) {
            char key[CTX__BAGGAGE_MAX_BYTES + 1];
            memcpy(key, m[i].key, m[i].key_len);
            key[m[i].key_len] = '\0';
            const char *a = ctx_baggage(x, key), *b = ctx_baggage(y, key);
            FUZZ_CHECK(a != NULL && b != NULL && strcmp(a, b) == 0);
        }
        ctx_unref(y);
    }
    ctx_unref(x);
    ctx_unref(parent);
    for (int i = 0; i < 4; i++) {
        free(in.value[i]);
        free(out.value[i]);
    }
    return 0;
}
