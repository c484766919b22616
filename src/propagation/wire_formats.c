/* SPDX-License-Identifier: MIT */

/*
 * The wire formats of propagation: grpc-timeout, traceparent, tracestate
 * and baggage.  Every function is pure and bounded, reads only the bytes it
 * is given and allocates nothing, so the fuzzers can attack each one alone.
 * The grammars are those of gRPC's PROTOCOL-HTTP2 document and the W3C
 * Trace Context and Baggage recommendations; wire.h states what each
 * function accepts.
 */
#include "internal.h"
#include "wire.h"

#include <string.h>

/* ---------------------------------------------------------------------------
 * grpc-timeout
 */

/* The largest value that 8 digits hold. */
#define GRPC_MAX_VALUE 99999999

static const struct {
    char unit;
    ctx_duration_t scale;
} grpc_units[] = {
    { 'n', CTX_NANOSECOND }, { 'u', CTX_MICROSECOND }, { 'm', CTX_MILLISECOND },
    { 'S', CTX_SECOND },     { 'M', CTX_MINUTE },      { 'H', CTX_HOUR },
};
#define GRPC_NUNITS (sizeof grpc_units / sizeof grpc_units[0])

/* Any duration, rounded up to hours, fits in the 8 digits of the format. */
_Static_assert(INT64_MAX / CTX_HOUR + 1 <= GRPC_MAX_VALUE, "hours always fit in 8 digits");

size_t ctx__grpc_timeout_format(ctx_duration_t d, char buf[CTX__GRPC_TIMEOUT_SIZE])
{
    if (d <= 0) {
        memcpy(buf, "0n", 3);
        return 2;
    }
    /* grpc-go's encodeTimeout: round up in each unit, finest first, and take
     * the first that fits, else hours without a check: INT64_MAX ns is
     * 2562048 hours, which fits.  The index thus never leaves the table. */
    size_t u = 0;
    int64_t v = 0;
    for (;; u++) {
        ctx_duration_t s = grpc_units[u].scale;
        v = d / s + (d % s != 0);
        if (v <= GRPC_MAX_VALUE || u == GRPC_NUNITS - 1)
            break;
    }
    char digits[8];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (size_t i = 0; i < n; i++)
        buf[i] = digits[n - 1 - i];
    buf[n] = grpc_units[u].unit;
    buf[n + 1] = '\0';
    return n + 1;
}

int ctx__grpc_timeout_parse(const char *s, size_t n, ctx_duration_t *out)
{
    if (s == NULL || n < 2 || n > 9)
        return EINVAL;
    ctx_duration_t scale = 0;
    for (size_t u = 0; u < GRPC_NUNITS; u++)
        if (s[n - 1] == grpc_units[u].unit)
            scale = grpc_units[u].scale;
    if (scale == 0)
        return EINVAL;
    int64_t v = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return EINVAL;
        v = v * 10 + (s[i] - '0'); /* at most 8 digits: no overflow */
    }
    /* An hour count of 8 digits exceeds int64_t nanoseconds: saturate. */
    *out = v > INT64_MAX / scale ? INT64_MAX : v * scale;
    return 0;
}

/* ---------------------------------------------------------------------------
 * traceparent
 */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* uppercase is invalid in traceparent */
}

/* Reads 2n lowercase hex digits into n bytes.  Returns -1 on a bad digit,
 * else 1 when some byte is non-zero and 0 when all are zero. */
static int read_hex(const char *s, size_t n, uint8_t *out)
{
    int nonzero = 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hex_digit(s[2 * i]), lo = hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
        nonzero |= out[i] != 0;
    }
    return nonzero;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

int ctx__traceparent_parse(const char *s, size_t n, struct ctx__traceparent *out)
{
    if (s == NULL)
        return EINVAL;
    /* HTTP hands a field value over with its optional white space; a
     * traceparent between spaces or tabs is still the same traceparent. */
    while (n > 0 && is_ows(s[0])) {
        s++;
        n--;
    }
    while (n > 0 && is_ows(s[n - 1]))
        n--;
    if (n < CTX__TRACEPARENT_LEN)
        return EINVAL;
    uint8_t version, flags;
    if (read_hex(s, 1, &version) < 0 || version == 0xff)
        return EINVAL;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return EINVAL;
    /* Version 00 is exactly 55 bytes; a later version may append fields,
     * each after a dash, which this version does not understand. */
    if (version == 0 && n != CTX__TRACEPARENT_LEN)
        return EINVAL;
    if (n > CTX__TRACEPARENT_LEN && s[CTX__TRACEPARENT_LEN] != '-')
        return EINVAL;
    struct ctx__traceparent tp;
    if (read_hex(s + 3, 16, tp.trace_id) <= 0 || read_hex(s + 36, 8, tp.span_id) <= 0 ||
        read_hex(s + 53, 1, &flags) < 0)
        return EINVAL;
    tp.flags = flags & (CTX__TRACE_SAMPLED | CTX__TRACE_RANDOM);
    *out = tp;
    return 0;
}

void ctx__hex(const uint8_t *bytes, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * n] = '\0';
}

void ctx__traceparent_format(const struct ctx__traceparent *tp, char buf[CTX__TRACEPARENT_LEN + 1])
{
    memcpy(buf, "00-", 3);
    ctx__hex(tp->trace_id, 16, buf + 3);
    buf[35] = '-';
    ctx__hex(tp->span_id, 8, buf + 36);
    buf[52] = '-';
    ctx__hex(&tp->flags, 1, buf + 53);
}

/* ---------------------------------------------------------------------------
 * tracestate
 */

static bool is_lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@". */
static bool is_keychr(char c)
{
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/' || c == '@';
}

/* key = (lcalpha / DIGIT) 0*255(keychar): the grammar of Trace Context
 * Level 2, which replaced the tenant@system split of Level 1 by one run of
 * characters in which "@" may appear anywhere but first.  Every key Level 1
 * allowed is still allowed. */
static bool tracestate_key_valid(const char *k, size_t n)
{
    if (n < 1 || n > 256 || !(is_lcalpha(k[0]) || is_digit(k[0])))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!is_keychr(k[i]))
            return false;
    return true;
}

/* value = 0*255(chr) nblk-chr, chr = %x20 / nblk-chr, nblk-chr = printable
 * ASCII except "," and "=". */
static bool tracestate_value_valid(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return false;
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e || v[i] == ',' || v[i] == '=')
            return false;
    return true;
}

struct span {
    const char *p;
    size_t n;
    size_t key_len;
};

size_t ctx__tracestate_filter(const char *s, size_t n, char out[CTX__TRACESTATE_MAX + 1])
{
    out[0] = '\0';
    if (s == NULL || n > CTX__TRACESTATE_READ_MAX)
        return 0;
    struct span m[CTX__TRACESTATE_MEMBERS];
    size_t count = 0, seen = 0; /* members kept; members read, repeats included */
    for (size_t pos = 0; pos <= n;) {
        const char *comma = memchr(s + pos, ',', n - pos);
        size_t end = comma != NULL ? (size_t)(comma - s) : n;
        size_t b = pos, e = end;
        while (b < e && is_ows(s[b]))
            b++;
        while (e > b && is_ows(s[e - 1]))
            e--;
        pos = end + 1;
        if (b == e)
            continue; /* empty members are allowed and skipped */
        const char *eq = memchr(s + b, '=', e - b);
        if (eq == NULL)
            return 0;
        size_t kl = (size_t)(eq - (s + b));
        if (!tracestate_key_valid(s + b, kl) || !tracestate_value_valid(eq + 1, e - b - kl - 1))
            return 0;
        /* A key may appear once; a sender that repeats one has broken that
         * rule, but W3C lets the receiver keep the header, with the first
         * member of the key (the leftmost, most recently updated) or both.
         * The later ones go, so that what is passed on is valid. */
        bool dup = false;
        for (size_t i = 0; i < count && !dup; i++)
            dup = m[i].key_len == kl && memcmp(m[i].p, s + b, kl) == 0;
        if (++seen > CTX__TRACESTATE_MEMBERS)
            return 0;
        if (!dup)
            m[count++] = (struct span){ s + b, e - b, kl };
    }

    /* Keep what fits in CTX__TRACESTATE_MAX: first drop the long members,
     * then any member, both from the end (the W3C's order of truncation;
     * the leftmost member is the most recently updated).  need counts each
     * kept member with the comma before it, so the joined length is need - 1
     * while a member is kept, and dropping the last one cannot wrap. */
    bool keep[CTX__TRACESTATE_MEMBERS];
    size_t need = 0;
    for (size_t i = 0; i < count; i++) {
        keep[i] = true;
        need += m[i].n + 1;
    }
    for (size_t i = count; i-- > 0 && need > CTX__TRACESTATE_MAX + 1;) {
        if (m[i].n > CTX__TRACESTATE_LONG_MEMBER) {
            keep[i] = false;
            need -= m[i].n + 1;
        }
    }
    for (size_t i = count; i-- > 0 && need > CTX__TRACESTATE_MAX + 1;) {
        if (keep[i]) {
            keep[i] = false;
            need -= m[i].n + 1;
        }
    }
    size_t len = 0;
    for (size_t i = 0; i < count; i++) {
        if (!keep[i])
            continue;
        if (len > 0)
            out[len++] = ',';
        memcpy(out + len, m[i].p, m[i].n);
        len += m[i].n;
    }
    out[len] = '\0';
    return len;
}

/* ---------------------------------------------------------------------------
 * baggage
 */

bool ctx__token_valid(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL)))
            return false;
    }
    return true;
}

/* baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E: printable
 * ASCII except DQUOTE, ",", ";" and backslash. */
static bool is_baggage_octet(unsigned char c)
{
    return c >= 0x21 && c <= 0x7e && c != '"' && c != ',' && c != ';' && c != '\\';
}

static int any_hex(char c)
{
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return hex_digit(c);
}

/* Checks a value of baggage octets with valid escapes.  An escape of NUL
 * is refused: C strings cannot hold it. */
static bool baggage_value_valid(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!is_baggage_octet((unsigned char)v[i]))
            return false;
        if (v[i] == '%') {
            if (i + 2 >= n)
                return false;
            int hi = any_hex(v[i + 1]), lo = any_hex(v[i + 2]);
            if (hi < 0 || lo < 0 || (hi | lo) == 0)
                return false;
            i += 2;
        }
    }
    return true;
}

/* The length of the run of token characters at the start of s[0..n). */
static size_t token_run(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && ctx__token_valid(s + i, 1))
        i++;
    return i;
}

/* The length of the run of baggage octets at the start of s[0..n): a value
 * ends at the first byte that is not one. */
static size_t octet_run(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && is_baggage_octet((unsigned char)s[i]))
        i++;
    return i;
}

static size_t skip_ows(const char *s, size_t i, size_t n)
{
    while (i < n && is_ows(s[i]))
        i++;
    return i;
}

/* property = key OWS "=" OWS value / key, for each ";"-separated part. */
static bool baggage_props_valid(const char *p, size_t n)
{
    size_t i = 0;
    for (;;) {
        i = skip_ows(p, i, n);
        size_t kl = token_run(p + i, n - i);
        if (kl == 0)
            return false;
        i = skip_ows(p, i + kl, n);
        if (i < n && p[i] == '=') {
            i = skip_ows(p, i + 1, n);
            size_t vl = octet_run(p + i, n - i);
            if (!baggage_value_valid(p + i, vl))
                return false;
            i = skip_ows(p, i + vl, n);
        }
        if (i == n)
            return true;
        if (p[i] != ';')
            return false;
        i++;
    }
}

/* One member, s[0..n) with no surrounding white space. */
static bool baggage_member(const char *s, size_t n, struct ctx__bag_member *m)
{
    size_t kl = token_run(s, n);
    if (kl == 0)
        return false;
    size_t i = skip_ows(s, kl, n);
    if (i == n || s[i] != '=')
        return false;
    size_t vb = skip_ows(s, i + 1, n);
    size_t vl = octet_run(s + vb, n - vb);
    if (!baggage_value_valid(s + vb, vl))
        return false;
    size_t decoded = ctx__baggage_decode(s + vb, vl, NULL);
    *m = (struct ctx__bag_member){ s, kl, s + vb, vl, decoded, NULL, 0 };
    i = skip_ows(s, vb + vl, n);
    if (i == n)
        return true;
    if (s[i] != ';' || !baggage_props_valid(s + i + 1, n - i - 1))
        return false;
    size_t pb = skip_ows(s, i + 1, n);
    m->props = s + pb;
    m->props_len = n - pb;
    return true;
}

int ctx__baggage_parse(const char *s, size_t n, struct ctx__bag_member m[CTX__BAGGAGE_MAX_MEMBERS])
{
    if (s == NULL)
        return 0;
    /* Only the first CTX__BAGGAGE_MAX_BYTES bytes are read; a member cut by
     * that limit is incomplete and dropped. */
    bool cut = n > CTX__BAGGAGE_MAX_BYTES;
    size_t lim = cut ? CTX__BAGGAGE_MAX_BYTES : n;
    if (skip_ows(s, 0, lim) == lim && !cut)
        return 0; /* an empty header */
    int count = 0;
    for (size_t pos = 0; pos <= lim;) {
        /* A comma right at the limit still ends the member before it, and
         * the input has that byte when it was cut. */
        const char *comma = memchr(s + pos, ',', lim - pos + cut);
        size_t end = comma != NULL ? (size_t)(comma - s) : lim;
        if (comma == NULL && cut)
            break;
        if (count == CTX__BAGGAGE_MAX_MEMBERS)
            break;
        size_t b = skip_ows(s, pos, end), e = end;
        while (e > b && is_ows(s[e - 1]))
            e--;
        if (!baggage_member(s + b, e - b, &m[count]))
            return -1;
        count++;
        if (comma == NULL)
            break;
        pos = end + 1;
    }
    return count;
}

/* The byte at v[*i], an escape decoded, and *i moved past it.  v was
 * checked by baggage_value_valid. */
static unsigned char next_byte(const char *v, size_t *i)
{
    if (v[*i] == '%') {
        unsigned char c = (unsigned char)(any_hex(v[*i + 1]) << 4 | any_hex(v[*i + 2]));
        *i += 3;
        return c;
    }
    return (unsigned char)v[(*i)++];
}

/* W3C Baggage: "percent-encoded octet sequences that do not match the UTF-8
 * encoding scheme MUST be replaced with the replacement code point".  Each
 * maximal invalid subpart becomes one U+FFFD, as the WHATWG Encoding
 * standard's decoder does: a lead byte with the continuation bytes read so
 * far, the byte that breaks the sequence being read again as a lead.  The
 * ranges of the second byte after E0, ED, F0 and F4 exclude overlong forms,
 * surrogates and code points past U+10FFFF.
 *
 * Every byte at or above 0x80 comes from an escape (raw baggage octets are
 * ASCII), and a replacement consumes at least one of them, so the three
 * bytes of U+FFFD never outgrow the three of "%XX": the output is never
 * longer than the input. */
size_t ctx__baggage_decode(const char *v, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        unsigned char seq[4];
        seq[0] = next_byte(v, &i);
        size_t need = 0, got = 1;
        unsigned char lo = 0x80, hi = 0xbf;
        bool ok = true;
        if (seq[0] < 0x80) {
            need = 0;
        } else if (seq[0] >= 0xc2 && seq[0] <= 0xdf) {
            need = 1;
        } else if (seq[0] >= 0xe0 && seq[0] <= 0xef) {
            need = 2;
            lo = seq[0] == 0xe0 ? 0xa0 : 0x80;
            hi = seq[0] == 0xed ? 0x9f : 0xbf;
        } else if (seq[0] >= 0xf0 && seq[0] <= 0xf4) {
            need = 3;
            lo = seq[0] == 0xf0 ? 0x90 : 0x80;
            hi = seq[0] == 0xf4 ? 0x8f : 0xbf;
        } else {
            ok = false; /* a continuation byte, C0, C1 or F5..FF as a lead */
        }
        while (ok && got <= need) {
            size_t at = i;
            unsigned char c = i < n ? next_byte(v, &i) : 0;
            if (c < lo || c > hi) {
                i = at; /* read again, as a lead */
                ok = false;
                break;
            }
            seq[got++] = c;
            lo = 0x80;
            hi = 0xbf;
        }
        const char *bytes = ok ? (const char *)seq : "\xef\xbf\xbd"; /* U+FFFD */
        size_t len = ok ? got : 3;
        if (out != NULL)
            memcpy(out + o, bytes, len);
        o += len;
    }
    if (out != NULL)
        out[o] = '\0';
    return o;
}

size_t ctx__baggage_encoded_len(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        n += is_baggage_octet((unsigned char)*s) && *s != '%' ? 1 : 3;
    return n;
}

size_t ctx__baggage_encode(const char *s, char *out)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (is_baggage_octet(c) && c != '%') {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = digits[c >> 4];
            out[n++] = digits[c & 15];
        }
    }
    return n;
}
