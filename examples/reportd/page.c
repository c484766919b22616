/* SPDX-License-Identifier: MIT */

/*
 * reportd's page and the JSON it reads; page.h says what each call does.
 * The HTML is page.html, embedded at build time (CMake writes its bytes
 * into page_html.h), so the binary serves it with no file at run time and
 * the page needs nothing from the network.
 */
#define _GNU_SOURCE

#include "page.h"

#include "page_html.h" /* page_html[], page_html_len */

#include <ctx/propagation.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RING 32

struct ended {
    char id[80];
    char trace[33];
    char path[16];
    char outcome[16];
    char cancelled[48];
    char cause_msg[128];
    char site_file[128];
    char site_func[48];
    unsigned status;
    int cause;
    int site_line;
    bool has_site;
    long long ms;
    long long at_ms; /* ctx_now() in ms when it ended */
};

static pthread_mutex_t ring_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ended ring[RING];
static unsigned ring_next; /* total recorded; the newest is ring[(ring_next - 1) % RING] */

/* s into dst (size bytes), cut to fit: snprintf's "%s" without parsing a
 * format, on a path every request takes. */
static void put(char *dst, size_t size, const char *s)
{
    size_t n = strnlen(s, size - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
}

void page_request_ended(const char *id, ctx_t *ctx, const char *path, unsigned status,
                        const char *outcome, const char *cancelled, long long ms)
{
    struct ended e = { .status = status, .ms = ms, .at_ms = ctx_now() / CTX_MILLISECOND };
    put(e.id, sizeof e.id, id);
    put(e.path, sizeof e.path, path);
    put(e.outcome, sizeof e.outcome, outcome);
    put(e.cancelled, sizeof e.cancelled, cancelled);
    if (ctx == NULL || !ctx_trace_id(ctx, e.trace))
        e.trace[0] = '\0';
    if (ctx != NULL && ctx_err(ctx) != 0) {
        const char *msg, *file, *func;
        e.cause = ctx_cause(ctx, &msg);
        put(e.cause_msg, sizeof e.cause_msg, msg != NULL ? msg : "");
        if (ctx_cancel_site(ctx, &file, &e.site_line, &func) && (file != NULL || func != NULL)) {
            e.has_site = true;
            put(e.site_file, sizeof e.site_file, file != NULL ? file : "");
            put(e.site_func, sizeof e.site_func, func != NULL ? func : "");
        }
    }
    pthread_mutex_lock(&ring_mu);
    ring[ring_next++ % RING] = e;
    pthread_mutex_unlock(&ring_mu);
}

/* s as a JSON string.  Everything recorded is checked or library text
 * (request IDs are printable ASCII without '"' or '\\'), but a file name
 * or message could hold anything, so every string is escaped. */
static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void ended_json(FILE *f)
{
    pthread_mutex_lock(&ring_mu);
    unsigned n = ring_next < RING ? ring_next : RING;
    fputc('[', f);
    for (unsigned i = 0; i < n; i++) {
        const struct ended *e = &ring[(ring_next - n + i) % RING];
        fputs(i > 0 ? ",{\"request_id\":" : "{\"request_id\":", f);
        json_str(f, e->id);
        fputs(",\"trace_id\":", f);
        json_str(f, e->trace);
        fputs(",\"path\":", f);
        json_str(f, e->path);
        fprintf(f, ",\"status\":%u,\"outcome\":", e->status);
        json_str(f, e->outcome);
        fprintf(f, ",\"ms\":%lld,\"ended_ms\":%lld,\"cancelled\":", e->ms, e->at_ms);
        json_str(f, e->cancelled);
        fprintf(f, ",\"cause\":%d,\"cause_msg\":", e->cause);
        json_str(f, e->cause_msg);
        if (e->has_site) {
            fputs(",\"cancel_site\":{\"file\":", f);
            json_str(f, e->site_file);
            fprintf(f, ",\"line\":%d,\"func\":", e->site_line);
            json_str(f, e->site_func);
            fputc('}', f);
        }
        fputc('}', f);
    }
    fputc(']', f);
    pthread_mutex_unlock(&ring_mu);
}

static enum MHD_Result reply(struct MHD_Connection *conn, const char *type, const void *body,
                             size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    /* The tree changes every moment: never from a cache. */
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* {"now_ms": ..., "tree": [ctx_dump_json of server], "ended": [...]} */
static enum MHD_Result serve_json(struct MHD_Connection *conn, ctx_t *server)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return MHD_NO;
    fprintf(f, "{\"now_ms\":%lld,\"tree\":", (long long)(ctx_now() / CTX_MILLISECOND));
    long before = ftell(f);
    /* Out of memory, the dump still closes what it began; if it could not
     * begin, an empty tree keeps the reply valid JSON. */
    if (ctx_dump_json(server, f) != 0 && ftell(f) == before)
        fputs("[]", f);
    fputs(",\"ended\":", f);
    ended_json(f);
    fputs("}\n", f);
    if (fclose(f) != 0 || text == NULL) {
        free(text);
        return MHD_NO;
    }
    enum MHD_Result ret = reply(conn, "application/json", text, len, MHD_RESPMEM_MUST_COPY);
    free(text);
    return ret;
}

bool page_route(struct MHD_Connection *conn, const char *url, ctx_t *server, enum MHD_Result *ret)
{
    if (strcmp(url, "/") == 0) {
        *ret = reply(conn, "text/html; charset=utf-8", page_html, page_html_len,
                     MHD_RESPMEM_PERSISTENT);
        return true;
    }
    if (strcmp(url, "/debug/ctx") == 0) {
        const char *format = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
        if (format == NULL || strcmp(format, "json") != 0)
            return false; /* the text dump stays the server's */
        *ret = serve_json(conn, server);
        return true;
    }
    return false;
}
