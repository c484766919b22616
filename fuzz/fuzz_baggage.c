/*
 * libFuzzer harness for W3C Baggage.  The input is read as a baggage
 * header: at most 64 members and 8192 bytes are taken, every member's
 * spans lie inside the input, its key is a token, its decoded value has
 * the announced length and no NUL, and encoding the decoded value then
 * reading it back gives the same bytes.
 */
#include "wire_fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

static bool inside(const char *p, size_t n, const char *s, size_t size)
{
    return p >= s && p + n <= s + size;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    int n = ctx__baggage_parse(s, size, m);
    FUZZ_CHECK(n >= -1 && n <= CTX__BAGGAGE_MAX_MEMBERS);
    for (int i = 0; i < n; i++) {
        FUZZ_CHECK(inside(m[i].key, m[i].key_len, s, size));
        FUZZ_CHECK(m[i].key + m[i].key_len <= s + CTX__BAGGAGE_MAX_BYTES);
        FUZZ_CHECK(ctx__token_valid(m[i].key, m[i].key_len));
        FUZZ_CHECK(inside(m[i].value, m[i].value_len, s, size));
        FUZZ_CHECK(m[i].value_len_decoded <= m[i].value_len);
        if (m[i].props != NULL)
            FUZZ_CHECK(inside(m[i].props, m[i].props_len, s, size) && m[i].props_len > 0);

        char *dec = malloc(m[i].value_len_decoded + 1);
        FUZZ_CHECK(dec != NULL);
        ctx__baggage_decode(m[i].value, m[i].value_len, dec);
        FUZZ_CHECK(strlen(dec) == m[i].value_len_decoded);

        size_t el = ctx__baggage_encoded_len(dec);
        char *member = malloc(el + 3);
        FUZZ_CHECK(member != NULL);
        memcpy(member, "k=", 2);
        FUZZ_CHECK(ctx__baggage_encode(dec, member + 2) == el);
        member[el + 2] = '\0';
        if (el + 2 <= CTX__BAGGAGE_MAX_BYTES) {
            struct ctx__bag_member again[CTX__BAGGAGE_MAX_MEMBERS];
            FUZZ_CHECK(ctx__baggage_parse(member, el + 2, again) == 1);
            FUZZ_CHECK(again[0].value_len_decoded == m[i].value_len_decoded);
            char *dec2 = malloc(again[0].value_len_decoded + 1);
            FUZZ_CHECK(dec2 != NULL);
            ctx__baggage_decode(again[0].value, again[0].value_len, dec2);
            FUZZ_CHECK(strcmp(dec, dec2) == 0);
            free(dec2);
        }
        free(member);
        free(dec);
    }
    return 0;
}
