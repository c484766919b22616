/* SPDX-License-Identifier: MIT */

/*
 * libFuzzer harness for W3C Baggage.  The input is read as a baggage
 * header: at most 64 members and 8192 bytes are taken, every member's
 * spans lie inside the input, its key is a token, its decoded value has
 * the announced length, no NUL and is valid UTF-8, and encoding the decoded value then
 * reading it back gives the same bytes.
 */
#include "wire_fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    return 0;
}

/* Whether s is UTF-8 (RFC 3629), checked the other way round from the
 * decoder: by the code point each sequence gives. */
static bool utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p != 0) {
        int len = *p < 0x80             ? 1
                  : (*p & 0xe0) == 0xc0 ? 2
                  : (*p & 0xf0) == 0xe0 ? 3
                  : (*p & 0xf8) == 0xf0 ? 4
                                        : 0;
        if (len == 0)
            return false;
        unsigned long cp = len == 1 ? *p : *p & (0x7f >> len);
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        static const unsigned long min[5] = { 0, 0, 0x80, 0x800, 0x10000 };
        if (cp < min[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += len;
    }
    return true;
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
        FUZZ_CHECK(utf8_valid(dec));

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
