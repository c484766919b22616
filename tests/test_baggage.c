/* SPDX-License-Identifier: MIT */

/*
 * W3C Baggage, one table per rule: member and property grammar, optional
 * white space, percent-encoding (UTF-8, "%" always encoded), escapes of
 * NUL refused, and the limits of 64 members and 8192 bytes with whole
 * members dropped beyond them.
 */
#include "check.h"

#include "propagation/wire.h"

#include <ctx/propagation.h>

struct want {
    const char *key, *value, *props; /* value decoded; props NULL: none */
};

static void check_parse(const char *in, int count, const struct want *w)
{
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    int n = ctx__baggage_parse(in, strlen(in), m);
    CHECK_MSG(n == count, "\"%s\": %d members, want %d", in, n, count);
    for (int i = 0; i < n && w != NULL; i++) {
        char key[256], value[1024], props[256];
        snprintf(key, sizeof key, "%.*s", (int)m[i].key_len, m[i].key);
        CHECK(m[i].value_len_decoded < sizeof value);
        ctx__baggage_decode(m[i].value, m[i].value_len, value);
        CHECK_EQ_INT(strlen(value), m[i].value_len_decoded);
        CHECK_MSG(strcmp(key, w[i].key) == 0 && strcmp(value, w[i].value) == 0,
                  "\"%s\" member %d: %s=%s", in, i, key, value);
        if (w[i].props == NULL) {
            CHECK_MSG(m[i].props == NULL, "\"%s\" member %d has properties", in, i);
        } else {
            CHECK(m[i].props != NULL);
            snprintf(props, sizeof props, "%.*s", (int)m[i].props_len, m[i].props);
            CHECK_STR(props, w[i].props);
        }
    }
}

static void test_grammar(void)
{
    check_parse("", 0, NULL);
    check_parse("   ", 0, NULL);
    check_parse("k=v", 1, (struct want[]){ { "k", "v", NULL } });
    check_parse(" k = v ", 1, (struct want[]){ { "k", "v", NULL } });
    check_parse("k=", 1, (struct want[]){ { "k", "", NULL } });
    check_parse("a=1,b=2", 2, (struct want[]){ { "a", "1", NULL }, { "b", "2", NULL } });
    check_parse("a=1 ,\tb=2", 2, (struct want[]){ { "a", "1", NULL }, { "b", "2", NULL } });
    check_parse("k=v;p", 1, (struct want[]){ { "k", "v", "p" } });
    check_parse("k=v;p=1;q", 1, (struct want[]){ { "k", "v", "p=1;q" } });
    check_parse("k=v ; p = 1", 1, (struct want[]){ { "k", "v", "p = 1" } });
    check_parse("user!#$&'*+-.^_`|~9=x", 1,
                (struct want[]){ { "user!#$&'*+-.^_`|~9", "x", NULL } });
    check_parse("k=!#$&'()*+-./:<=>?@[]^_`{|}~", 1,
                (struct want[]){ { "k", "!#$&'()*+-./:<=>?@[]^_`{|}~", NULL } });
    /* Percent-encoding: UTF-8, either case of hex. */
    check_parse("k=%20%c3%A9%25", 1, (struct want[]){ { "k", " \xc3\xa9%", NULL } });
    /* Malformed: the header is ignored whole.  Escapes in properties
     * follow the rules of values. */
    static const char *const bad[] = {
        "=v",      "k",        "k v=1",         "k=v,",      ",k=v",      "k=v,,j=w", "k=v v",
        "k=\"q\"", "k=a\\b",   "k=%",           "k=%2",      "k=%zz",     "k=%00",    "k=v;",
        "k=v;=1",  "k=v;p=\"", "k=caf\xc3\xa9", "k=\x01",    "k\x80=v",   "k=v;p q",  "(k)=v",
        "k=v,j",   "k=v;p=%",  "k=v;p=%zz",     "k=v;p=%00", "k=v;p=a%2",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        check_parse(bad[i], -1, NULL);
    /* The given length is obeyed. */
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    CHECK_EQ_INT(ctx__baggage_parse("k=v,garbage", 3, m), 1);
    CHECK_EQ_INT(ctx__baggage_parse(NULL, 3, m), 0);
}

static void test_limits(void)
{
    static char s[20000];
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    /* 65 members: the 65th is dropped, whole. */
    size_t n = 0;
    for (int i = 0; i < 65; i++)
        n += (size_t)sprintf(s + n, "%sk%d=%d", i ? "," : "", i, i);
    CHECK_EQ_INT(ctx__baggage_parse(s, n, m), 64);
    CHECK(m[63].key_len == 3 && memcmp(m[63].key, "k63", 3) == 0);

    /* 8192 bytes exactly: kept.  One more byte: the last member is cut by
     * the limit and dropped whole. */
    n = (size_t)sprintf(s, "a=%0*d,b=", 4000, 0);
    memset(s + n, 'x', 8192 - n);
    s[8192] = '\0';
    CHECK_EQ_INT(ctx__baggage_parse(s, 8192, m), 2);
    CHECK_EQ_INT(m[1].value_len, 8192 - n);
    s[8192] = 'x';
    s[8193] = '\0';
    CHECK_EQ_INT(ctx__baggage_parse(s, 8193, m), 1);
    /* Whatever follows the limit is not read, valid or not. */
    s[8192] = ',';
    memcpy(s + 8193, "\x01\x02 garbage", 11);
    CHECK_EQ_INT(ctx__baggage_parse(s, 8193 + 11, m), 2);
}

/* Decodes the value of "k=<value>". */
static void decode_one(const char *value, char *out, size_t size)
{
    char member[256];
    snprintf(member, sizeof member, "k=%s", value);
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    CHECK_MSG(ctx__baggage_parse(member, strlen(member), m) == 1, "\"%s\" refused", value);
    CHECK(m[0].value_len_decoded < size && m[0].value_len_decoded <= m[0].value_len);
    CHECK_EQ_INT(ctx__baggage_decode(m[0].value, m[0].value_len, out), m[0].value_len_decoded);
    CHECK_EQ_INT(strlen(out), m[0].value_len_decoded);
}

#define FFFD "\xef\xbf\xbd"

static void test_decoding(void)
{
    /* Escaped bytes that are not UTF-8 become U+FFFD, one per maximal
     * invalid subpart (the WHATWG decoder's rule); valid UTF-8 passes. */
    static const struct {
        const char *in, *want;
    } rows[] = {
        { "a%41b", "aAb" },
        { "%C3%A9", "\xc3\xa9" },
        { "%E2%82%AC", "\xe2\x82\xac" },
        { "%F0%9F%98%80", "\xf0\x9f\x98\x80" },
        { "%F4%8F%BF%BF", "\xf4\x8f\xbf\xbf" }, /* U+10FFFF */
        { "%80", FFFD },
        { "%BF%80", FFFD FFFD },
        { "%C3", FFFD },
        { "%C3a", FFFD "a" },
        { "%C3%C3%A9", FFFD "\xc3\xa9" },
        { "%E2%82", FFFD },
        { "%E2%82x", FFFD "x" },
        { "%C0%AF", FFFD FFFD },                 /* overlong */
        { "%E0%80%AF", FFFD FFFD FFFD },         /* overlong */
        { "%ED%A0%80", FFFD FFFD FFFD },         /* surrogate */
        { "%F4%90%80%80", FFFD FFFD FFFD FFFD }, /* past U+10FFFF */
        { "%F5%80", FFFD FFFD },
        { "%FF", FFFD },
        { "x%F0%9F%98", "x" FFFD },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        char out[64];
        decode_one(rows[i].in, out, sizeof out);
        CHECK_MSG(strcmp(out, rows[i].want) == 0, "\"%s\" decoded wrong", rows[i].in);
    }
}

static void test_encoding(void)
{
    /* Every ASCII byte and valid UTF-8 round-trips, and the encoded text is
     * baggage octets. */
    char in[256], enc[3 * 256], out[256];
    size_t len = 0;
    for (int i = 1; i < 128; i++)
        in[len++] = (char)i;
    memcpy(in + len, "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9);
    in[len + 9] = '\0';
    size_t n = ctx__baggage_encode(in, enc);
    CHECK_EQ_INT(n, ctx__baggage_encoded_len(in));
    enc[n] = '\0';
    struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS];
    char member[3 * 256 + 3] = "k=";
    strcat(member, enc);
    CHECK_EQ_INT(ctx__baggage_parse(member, strlen(member), m), 1);
    CHECK_EQ_INT(m[0].value_len_decoded, strlen(in));
    ctx__baggage_decode(m[0].value, m[0].value_len, out);
    CHECK_STR(out, in);

    static const struct {
        const char *in, *want;
    } rows[] = {
        { "plain", "plain" },
        { "a b", "a%20b" },
        { "100%", "100%25" },
        { "a,b;c\"d\\e", "a%2Cb%3Bc%22d%5Ce" },
        { "caf\xc3\xa9", "caf%C3%A9" },
        { "=/:?@", "=/:?@" },
        { "", "" },
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        n = ctx__baggage_encode(rows[i].in, enc);
        enc[n] = '\0';
        CHECK_STR(enc, rows[i].want);
    }
}

static void test_token(void)
{
    CHECK(ctx__token_valid("request-id", 10));
    CHECK(ctx__token_valid("A1!#$%&'*+-.^_`|~", 17));
    CHECK(!ctx__token_valid("", 0));
    static const char *const bad[] = { "a b", "a=b", "a,b", "a;b", "a\"",   "a\\",       "a(",
                                       "a)",  "a/",  "a:",  "a<",  "a>",    "a?",        "a@",
                                       "a[",  "a]",  "a{",  "a}",  "a\x7f", "a\xc3\xa9", "a\t" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_MSG(!ctx__token_valid(bad[i], strlen(bad[i])), "\"%s\"", bad[i]);
    CHECK(!ctx__token_valid("a\0b", 3));
}

/* The vectors of the W3C Baggage tests (w3c/baggage, test/test_baggage.py),
 * one row per header that the reference parser reads. */
static void test_w3c_vectors(void)
{
    /* test_parse_simple */
    check_parse("SomeKey=SomeValue", 1, (struct want[]){ { "SomeKey", "SomeValue", NULL } });
    /* test_parse_multiple */
    check_parse("SomeKey=SomeValue;SomeProp,SomeKey2=SomeValue2;ValueProp=PropVal", 2,
                (struct want[]){ { "SomeKey", "SomeValue", "SomeProp" },
                                 { "SomeKey2", "SomeValue2", "ValueProp=PropVal" } });
    /* test_parse_multiple_ows: white space around "=", ";" and ",". */
    check_parse("SomeKey \t = \t SomeValue \t ; \t SomeProp \t , \t SomeKey2 \t = \t SomeValue2 "
                "\t ; \t ValueProp \t = \t PropVal",
                2,
                (struct want[]){ { "SomeKey", "SomeValue", "SomeProp" },
                                 { "SomeKey2", "SomeValue2", "ValueProp \t = \t PropVal" } });
    /* test_parse_multiple_kv_property */
    check_parse("SomeKey=SomeValue;SomePropKey=SomePropValue,SomeKey2=SomeValue2;SomePropKey2="
                "SomePropValue2",
                2,
                (struct want[]){ { "SomeKey", "SomeValue", "SomePropKey=SomePropValue" },
                                 { "SomeKey2", "SomeValue2", "SomePropKey2=SomePropValue2" } });
    /* test_parse_multiple_kv_property_ows */
    check_parse(
        "SomeKey \t = \t SomeValue \t ; \t SomePropKey=SomePropValue \t , \t SomeKey2 \t = "
        "\t SomeValue2 \t ; \t SomePropKey2 \t = \t SomePropValue2",
        2,
        (struct want[]){ { "SomeKey", "SomeValue", "SomePropKey=SomePropValue" },
                         { "SomeKey2", "SomeValue2", "SomePropKey2 \t = \t SomePropValue2" } });
    /* BaggageEntryTest.test_parse_multiple_equals: "=" is a baggage octet. */
    check_parse("SomeKey=SomeValue=equals", 1,
                (struct want[]){ { "SomeKey", "SomeValue=equals", NULL } });
    /* test_parse_percent_encoded: Python's quote() of the value. */
    check_parse("SomeKey=%09%20%22%27%3B%3Dasdf%21%40%23%24%25%5E%26%2A%28%29", 1,
                (struct want[]){ { "SomeKey", "\t \"';=asdf!@#$%^&*()", NULL } });
    /* test_parse_property, test_parse_multi_property,
     * test_parse_multiple_properties_same_name: properties are kept as
     * received, property values included. */
    check_parse("SomeKey=SomeValue;SomeProp", 1,
                (struct want[]){ { "SomeKey", "SomeValue", "SomeProp" } });
    check_parse("SomeKey=SomeValue;SomeProp;SecondProp=PropValue", 1,
                (struct want[]){ { "SomeKey", "SomeValue", "SomeProp;SecondProp=PropValue" } });
    check_parse("SomeKey=SomeValue;SomeProp;SomeProp=PropValue;SomeProp=AnotherPropValue", 1,
                (struct want[]){ { "SomeKey", "SomeValue",
                                   "SomeProp;SomeProp=PropValue;SomeProp=AnotherPropValue" } });
    check_parse("k=v;p=%41%42", 1, (struct want[]){ { "k", "v", "p=%41%42" } });

    /* Sent on: what the reference serialiser expects of the percent-encoded
     * value reads back to the same text, and ours (which leaves the baggage
     * octets other than "%" unescaped) reads back the same. */
    const char *value = "\t \"';=asdf!@#$%^&*()";
    char enc[128];
    CHECK(ctx__baggage_encoded_len(value) < sizeof enc);
    enc[ctx__baggage_encode(value, enc)] = '\0';
    CHECK_STR(enc, "%09%20%22'%3B=asdf!@#$%25^&*()");
    char member[160];
    snprintf(member, sizeof member, "SomeKey=%s", enc);
    check_parse(member, 1, (struct want[]){ { "SomeKey", "\t \"';=asdf!@#$%^&*()", NULL } });
}

/* The end-to-end limits: 64 members of 8192 bytes in all come in through
 * ctx_extract and go out through ctx_inject byte for byte, properties
 * included. */
static const char *one_header(void *h, const char *name)
{
    return strcmp(name, "baggage") == 0 ? h : NULL;
}

static char sent[CTX__BAGGAGE_MAX_BYTES + 64];

static int keep_header(void *h, const char *name, const char *value)
{
    (void)h;
    if (strcmp(name, "baggage") == 0)
        snprintf(sent, sizeof sent, "%s", value);
    return 0;
}

static void test_extract_inject_limits(void)
{
    static char in[CTX__BAGGAGE_MAX_BYTES + 1];
    size_t n = 0;
    for (int i = 0; i < 63; i++)
        n += (size_t)sprintf(in + n, "%sk%02d=v%%20%02d;p=%d", i ? "," : "", i, i, i);
    n += (size_t)sprintf(in + n, ",k63=");
    memset(in + n, 'x', CTX__BAGGAGE_MAX_BYTES - n);
    in[CTX__BAGGAGE_MAX_BYTES] = '\0';
    CHECK_EQ_INT(strlen(in), 8192);
    ctx_carrier_t c = { one_header, keep_header, in };
    ctx_t *x = ctx_extract(ctx_background(), &c, NULL);
    CHECK(x != NULL);
    CHECK_STR(ctx_baggage(x, "k05"), "v 05");
    CHECK(ctx_baggage(x, "k63") != NULL && strlen(ctx_baggage(x, "k63")) == 8192 - n);
    sent[0] = '\0';
    CHECK_EQ_INT(ctx_inject(x, &c), 0);
    CHECK_EQ_INT(strlen(sent), 8192);
    CHECK_STR(sent, in);
    ctx_unref(x);
}

int main(void)
{
    test_grammar();
    test_limits();
    test_decoding();
    test_encoding();
    test_token();
    test_w3c_vectors();
    test_extract_inject_limits();
    printf("test_baggage: ok\n");
    return 0;
}
