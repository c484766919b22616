/*
 * reportd: libctx's budgets, hang-ups and shutdown in a small real HTTP service.
 *
 * Every request gets a context (ctx_mhd_request) that ends when the first of
 * these happens: its time budget runs out, the client goes away, or the
 * server shuts down.  GET /report runs three parts at once under it, in a
 * ctx_group: a computation, a database query and a call to another service;
 * whatever ends the context stops all three.  The request ID and the trace
 * travel to the next service in headers, so one ID ties the logs together.
 *
 * Run it (after `make build`):
 *
 *     build/examples/reportd/reportd --listen 127.0.0.1:8081 &
 *     build/examples/reportd/reportd --listen 127.0.0.1:8080 \
 *         --upstream http://127.0.0.1:8081 &
 *     curl -i 'http://127.0.0.1:8080/report?compute_ms=50&db_ms=50&upstream_ms=50'
 *     curl -i 'http://127.0.0.1:8080/report?upstream_ms=5000'    # 504 at 500 ms
 *
 * docs/http.md ("reportd") describes the command line, endpoints, headers,
 * log line and metrics, and `make demo` plays the scenarios.  Built from
 * libmicrohttpd (server), libcurl (client) and SQLite or PostgreSQL, each
 * through its libctx integration.
 */
#define _GNU_SOURCE

#include <ctx.h>
#include <ctx/curl.h>
#include <ctx/mhd.h>
#include <ctx/propagation.h>
#include <ctx/sqlite.h>
#ifdef REPORTD_WITH_PQ
#include <ctx/pq.h>
#endif

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "page.h"

/* ------------------------------------------------------------------------
 * Configuration and shared state
 */

enum part { COMPUTE, DB, UPSTREAM, NPARTS };
static const char *const part_names[NPARTS] = { "compute", "db", "upstream" };

enum outcome { OK, DEADLINE, CLIENT_GONE, SHUTDOWN, BAD_REQUEST, ERROR, NOUTCOMES };
static const char *const outcome_names[NOUTCOMES] = { "ok",       "deadline",    "client_gone",
                                                      "shutdown", "bad_request", "error" };

static struct {
    struct sockaddr_storage listen;
    char listen_text[128];
    const char *db; /* "sqlite:PATH" or "postgres:CONNINFO" */
    char *upstream; /* base URL without a trailing slash, or NULL */
    long budget_ms;
    long drain_ms;
    bool no_ctx; /* benchmark baseline: parts run without cancellation */
} cfg = { .budget_ms = 500, .drain_ms = 5000 };

/* Cancelled at shutdown, after the drain: every request context is a child. */
static ctx_t *base;
static ctx_cancel_t *base_cancel;

/* Metrics.  Relaxed atomics: each is a counter read on its own, nothing is
 * published through them. */
static atomic_long requests_in_flight;
static atomic_long parts_in_flight[NPARTS];
static atomic_long requests_total[NOUTCOMES];
static atomic_long parts_cancelled_total[NPARTS];

/* The drain at shutdown waits on this for requests_in_flight to reach 0. */
static pthread_mutex_t drain_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t drain_cv = PTHREAD_COND_INITIALIZER;

static char sqlite_path[4096];
static const char *pg_conninfo;

/* ------------------------------------------------------------------------
 * Slots: how many computations and SQLite queries run at once.
 *
 * Both are CPU work.  Started for every request at once, hundreds of them
 * would share two cores, each would crawl, and a request whose budget ended
 * would wait for the scheduler before its parts could even notice.  Like a
 * database pool, a few slots (one per core) keep the work that runs fast and
 * let the rest wait, and that wait is itself cancellable: a request that
 * runs out of budget or whose client leaves stops waiting at once.
 *
 * A freed slot goes to the newest waiter.  Under overload the oldest
 * waiters have the least budget left and would most likely run out before
 * finishing, so serving the newest first finishes the most requests within
 * their budgets, and the old ones end at their deadline without having
 * cost any CPU.  The same order for both kinds of slot keeps the parts of
 * one request together.  Without contexts (--no-ctx) there is no budget to
 * lose, and first come, first served is the fair order.
 */
struct waiter {
    pthread_cond_t cv;
    bool granted; /* slot_give handed this waiter its slot */
    struct waiter *next;
};

struct slots {
    pthread_mutex_t mu;
    int free;
    struct waiter *head; /* waiters, newest first */
};

static struct slots compute_slots = { PTHREAD_MUTEX_INITIALIZER, 0, NULL };
static struct slots db_slots = { PTHREAD_MUTEX_INITIALIZER, 0, NULL };

/* 0 with a slot taken, or ctx_err(ctx) when ctx ended first. */
static int slot_take(ctx_t *ctx, struct slots *s)
{
    pthread_mutex_lock(&s->mu);
    if (s->free > 0) {
        s->free--;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    struct waiter w = { .granted = false, .next = NULL };
    pthread_cond_init(&w.cv, NULL);
    struct waiter **at = &s->head;
    if (cfg.no_ctx) {
        while (*at != NULL)
            at = &(*at)->next;
    }
    w.next = *at;
    *at = &w;
    int err = 0;
    while (!w.granted && err == 0)
        err = cfg.no_ctx ? pthread_cond_wait(&w.cv, &s->mu) : ctx_cond_wait(ctx, &w.cv, &s->mu);
    if (!w.granted) {
        for (at = &s->head; *at != &w; at = &(*at)->next) {
        }
        *at = w.next;
    }
    pthread_mutex_unlock(&s->mu);
    /* ctx_cond_wait has stopped its wake-up callback before returning, so
     * nothing touches w.cv any more. */
    pthread_cond_destroy(&w.cv);
    /* A slot granted as the context ended is kept: the part sees the
     * context's end at its first check and gives the slot back. */
    return w.granted ? 0 : err;
}

static void slot_give(struct slots *s)
{
    pthread_mutex_lock(&s->mu);
    struct waiter *w = s->head;
    if (w != NULL) {
        s->head = w->next;
        w->granted = true;
        pthread_cond_signal(&w->cv);
    } else {
        s->free++;
    }
    pthread_mutex_unlock(&s->mu);
}

/* ------------------------------------------------------------------------
 * The three parts.  Each runs on a thread of the request's ctx_group and
 * returns 0, the context's error when the context ended first, or another
 * errno-style code for a real failure (which cancels its siblings).
 */

/* The longest incoming X-Request-Id kept (see request_id). */
#define ID_MAX 128

struct request {
    long ms[NPARTS];      /* what the request asked for */
    long took[NPARTS];    /* measured, in ms */
    bool stopped[NPARTS]; /* the part was still running when the context ended */
    char request_id[ID_MAX + 1];
};

static void part_begin(enum part p)
{
    atomic_fetch_add_explicit(&parts_in_flight[p], 1, memory_order_relaxed);
}

static int part_end(struct request *r, enum part p, ctx_time_t start, ctx_t *ctx, int rc)
{
    r->took[p] = (long)((ctx_now() - start) / CTX_MILLISECOND);
    if (rc != 0 && (ctx_err(ctx) != 0 || rc == CTX_DEADLINE_EXCEEDED)) {
        r->stopped[p] = true;
        atomic_fetch_add_explicit(&parts_cancelled_total[p], 1, memory_order_relaxed);
    }
    atomic_fetch_sub_explicit(&parts_in_flight[p], 1, memory_order_relaxed);
    return rc;
}

/* One unit of CPU work: a few rounds of a 64-bit mix that the compiler
 * cannot fold away. */
static uint64_t work_unit(uint64_t x)
{
    for (int i = 0; i < 64; i++) {
        x ^= x >> 33;
        x *= UINT64_C(0xff51afd7ed558ccd);
        x ^= x >> 29;
    }
    return x;
}

static volatile uint64_t work_sink;

static int compute_part(ctx_t *ctx, void *arg)
{
    struct request *r = arg;
    part_begin(COMPUTE);
    ctx_time_t start = ctx_now();
    int rc = slot_take(ctx, &compute_slots);
    if (rc == 0) {
        /* Work until the asked time has passed: about that long on an idle
         * machine or a busy one alike.  A check costs a few ns; every 256
         * units (tens of microseconds) keeps a cancelled computation from
         * running on noticeably. */
        ctx_time_t end = ctx_now() + r->ms[COMPUTE] * CTX_MILLISECOND;
        uint64_t x = (uint64_t)start;
        for (uint64_t i = 0;; i++) {
            if ((i & 255) == 0 && (ctx_now() >= end || (!cfg.no_ctx && (rc = ctx_err(ctx)) != 0)))
                break;
            x = work_unit(x + i);
        }
        work_sink = x;
        slot_give(&compute_slots);
    }
    return part_end(r, COMPUTE, start, ctx, rc);
}

/* SQLite: a recursive query that counts until the clock passes ?1, so that
 * it runs about the asked ms however busy the machine is.  reportd_now() is
 * the monotonic clock, in ns.  Each call opens the database file anew, so
 * a file that disappears fails the requests (503) and one that comes back
 * serves them again. */
static const char count_sql[] =
    "WITH RECURSIVE c(x) AS (SELECT min(id) FROM items UNION ALL SELECT x + 1 FROM c "
    "WHERE reportd_now() < ?1) SELECT count(*) FROM c";

static void sql_now(sqlite3_context *c, int argc, sqlite3_value **argv)
{
    (void)argc, (void)argv;
    sqlite3_result_int64(c, ctx_now());
}

static int sqlite_query(ctx_t *ctx, sqlite3 *db, long ms)
{
    sqlite3_stmt *stmt;
    if (sqlite3_create_function(db, "reportd_now", 0, SQLITE_UTF8, NULL, sql_now, NULL, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(db, count_sql, -1, &stmt, NULL) != SQLITE_OK)
        return EIO;
    sqlite3_bind_int64(stmt, 1, ctx_now() + ms * CTX_MILLISECOND);
    int src = cfg.no_ctx ? sqlite3_step(stmt) : ctx_sqlite_step(ctx, stmt);
    sqlite3_finalize(stmt);
    if (src == SQLITE_ROW)
        return 0;
    return src == SQLITE_INTERRUPT && ctx_err(ctx) != 0 ? ctx_err(ctx) : EIO;
}

#ifdef REPORTD_WITH_PQ
/* PostgreSQL: a small pool, so that a connection outlives its request and a
 * cancelled query visibly leaves its backend idle. */
static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static PGconn *pool[64];
static int pool_len;

static int pg_sleep_part(ctx_t *ctx, long ms)
{
    PGconn *conn = NULL;
    pthread_mutex_lock(&pool_mu);
    if (pool_len > 0)
        conn = pool[--pool_len];
    pthread_mutex_unlock(&pool_mu);
    if (conn == NULL) {
        int err = ctx_pq_connect(ctx, pg_conninfo, &conn);
        if (err != 0)
            return ctx_err(ctx) != 0 ? ctx_err(ctx) : EIO;
    }
    char sql[64];
    snprintf(sql, sizeof sql, "SELECT pg_sleep(%ld.%03ld)", ms / 1000, ms % 1000);
    PGresult *res = ctx_pq_exec(ctx, conn, sql);
    int rc = res == NULL                              ? (ctx_err(ctx) != 0 ? ctx_err(ctx) : EIO)
             : PQresultStatus(res) == PGRES_TUPLES_OK ? 0
                                                      : EIO;
    PQclear(res);
    /* ctx_pq_exec leaves the connection idle even after a cancel; a broken
     * one (the server went away) is dropped so the next request reconnects. */
    bool keep = PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE;
    pthread_mutex_lock(&pool_mu);
    if (keep && pool_len < (int)(sizeof pool / sizeof pool[0])) {
        pool[pool_len++] = conn;
        conn = NULL;
    }
    pthread_mutex_unlock(&pool_mu);
    PQfinish(conn);
    return rc;
}

#endif

static int db_part(ctx_t *ctx, void *arg)
{
    struct request *r = arg;
    part_begin(DB);
    ctx_time_t start = ctx_now();
    int rc;
#ifdef REPORTD_WITH_PQ
    if (pg_conninfo != NULL) {
        rc = pg_sleep_part(ctx, r->ms[DB]);
    } else
#endif
        if ((rc = slot_take(ctx, &db_slots)) == 0) {
        sqlite3 *db;
        rc = EIO;
        if (sqlite3_open_v2(sqlite_path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK)
            rc = sqlite_query(ctx, db, r->ms[DB]);
        sqlite3_close(db);
        slot_give(&db_slots);
    }
    return part_end(r, DB, start, ctx, rc);
}

/* The upstream call: GET <upstream>/task?ms=C with the propagation headers
 * and X-Request-Id.  Anything but a 200 with a JSON object is a failure. */
struct body {
    char buf[512];
    size_t len;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    size_t len = size * n, room = sizeof b->buf - 1 - b->len;
    memcpy(b->buf + b->len, p, len < room ? len : room);
    b->len += len < room ? len : room;
    b->buf[b->len] = '\0';
    return len;
}

static int upstream_part(ctx_t *ctx, void *arg)
{
    struct request *r = arg;
    part_begin(UPSTREAM);
    ctx_time_t start = ctx_now();
    int rc = ENOMEM;
    char url[4200], id_header[ID_MAX + 32];
    snprintf(url, sizeof url, "%s/task?ms=%ld", cfg.upstream, r->ms[UPSTREAM]);
    snprintf(id_header, sizeof id_header, "X-Request-Id: %s", r->request_id);
    struct body b = { .len = 0 };
    struct curl_slist *headers = curl_slist_append(NULL, id_header);
    CURL *easy = curl_easy_init();
    if (headers != NULL && easy != NULL) {
        struct curl_slist *all = cfg.no_ctx ? headers : ctx_curl_headers(ctx, headers);
        curl_easy_setopt(easy, CURLOPT_URL, url);
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, all != NULL ? all : headers);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, &b);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        /* The baseline performs under a context that never ends: the same
         * transfer on the same per-thread connection cache, not cancellable. */
        CURLcode cc = ctx_curl_perform(cfg.no_ctx ? ctx_background() : ctx, easy);
        long status = 0;
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        if (cc != CURLE_OK)
            rc = ctx_err(ctx) != 0 ? ctx_err(ctx) : ECONNREFUSED;
        else if (status == 504)
            /* The upstream ran out of the time we gave it (grpc-timeout):
             * our own deadline, seen from the other side a moment early. */
            rc = CTX_DEADLINE_EXCEEDED;
        else if (status != 200 || b.buf[0] != '{' || strstr(b.buf, "\"ms\":") == NULL)
            rc = EPROTO; /* an upstream that answers garbage */
        else
            rc = 0;
    }
    curl_easy_cleanup(easy);
    curl_slist_free_all(headers);
    return part_end(r, UPSTREAM, start, ctx, rc);
}

/* ------------------------------------------------------------------------
 * HTTP: request contexts, responses, the log line
 */

/* A query parameter: missing is 0; digits only, at most 60000. */
static bool param(struct MHD_Connection *conn, const char *name, long *out)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);
    *out = 0;
    if (v == NULL)
        return true;
    if (*v == '\0' || strspn(v, "0123456789") != strlen(v))
        return false;
    v += strspn(v, "0"); /* 007 is 7; past the zeros, 5 digits at most */
    if (strlen(v) > 5)
        return false;
    *out = strtol(v, NULL, 10);
    return *out <= 60000;
}

/* The incoming X-Request-Id, else a new random one.  The ID goes into the
 * log line, a JSON body and headers, so it is never trusted blindly: one
 * longer than ID_MAX or with a byte that could break any of them (a space,
 * a control or non-ASCII byte, '"' or '\\') is replaced by a new one. */
static void request_id(struct MHD_Connection *conn, char id[ID_MAX + 1])
{
    const char *in = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    size_t len = in != NULL ? strlen(in) : 0;
    bool fit = len > 0 && len <= ID_MAX;
    for (size_t i = 0; fit && i < len; i++)
        fit = in[i] > ' ' && in[i] < 0x7f && in[i] != '"' && in[i] != '\\';
    if (fit) {
        memcpy(id, in, len + 1);
        return;
    }
    unsigned char raw[8] = { 0 };
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) {
        uint64_t t = (uint64_t)ctx_now() ^ (uint64_t)(uintptr_t)conn;
        memcpy(raw, &t, sizeof raw);
    }
    for (int i = 0; i < 8; i++)
        sprintf(id + 2 * i, "%02x", raw[i]);
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *type,
                               const char *body, const char *id)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    if (id != NULL)
        MHD_add_response_header(resp, "X-Request-Id", id);
    enum MHD_Result ret = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* Why a request failed with err, in the words of the metrics. */
static enum outcome ended_because(ctx_t *req, ctx_t *budget, int err)
{
    if (ctx_err(base) != 0)
        return SHUTDOWN;
    if (ctx_err(req) != 0 && ctx_cause(req, NULL) == ECONNRESET)
        return CLIENT_GONE;
    if (ctx_err(budget) == CTX_DEADLINE_EXCEEDED || err == CTX_DEADLINE_EXCEEDED)
        return DEADLINE;
    return ERROR;
}

static const unsigned outcome_status[NOUTCOMES] = { 200, 504, 499, 503, 400, 502 };

/* cancelled: the parts the context stopped, comma-separated (may be ""). */
static void log_line(const char *id, ctx_t *ctx, const char *path, unsigned status,
                     ctx_time_t start, enum outcome o, const char *cancelled)
{
    char trace[33] = "-";
    if (ctx == NULL || !ctx_trace_id(ctx, trace))
        strcpy(trace, "-");
    /* One fprintf: stdio locks the stream, so lines never interleave. */
    fprintf(stderr, "request_id=%s trace_id=%s path=%s status=%u ms=%lld outcome=%s cancelled=%s\n",
            id, trace, path, status, (long long)((ctx_now() - start) / CTX_MILLISECOND),
            outcome_names[o], cancelled);
    page_request_ended(id, ctx, path, status, outcome_names[o], cancelled,
                       (long long)((ctx_now() - start) / CTX_MILLISECOND));
    atomic_fetch_add_explicit(&requests_total[o], 1, memory_order_relaxed);
}

/* The context of one request: the request's own (client gone, incoming
 * grpc-timeout, traceparent, baggage), then the budget, then the request ID
 * in baggage for the next service. */
struct request_ctx {
    ctx_t *req; /* ctx_mhd_request: cancelled when the client goes */
    ctx_cancel_t *req_cancel;
    ctx_t *budget; /* + --budget-ms */
    ctx_t *ctx;    /* + baggage request-id: what the work runs under */
};

static bool request_ctx(struct MHD_Connection *conn, const char *id, struct request_ctx *rc)
{
    *rc = (struct request_ctx){ NULL, NULL, NULL, NULL };
    if (cfg.no_ctx) {
        /* The baseline: a context that only carries the request ID. */
        rc->ctx = ctx_with_baggage(ctx_background(), "request-id", id);
        return rc->ctx != NULL;
    }
    rc->req = ctx_mhd_request(base, conn, &rc->req_cancel);
    if (rc->req != NULL)
        rc->budget = ctx_with_timeout(rc->req, cfg.budget_ms * CTX_MILLISECOND, NULL);
    if (rc->budget != NULL)
        rc->ctx = ctx_with_baggage(rc->budget, "request-id", id);
    return rc->ctx != NULL;
}

static void request_ctx_free(struct request_ctx *rc)
{
    /* Go's `defer cancel()`, and more than tidiness here: the context
     * watches the connection's socket until it is done, and a reference
     * that a part's thread still holds could keep it alive past the moment
     * libmicrohttpd closes that socket. */
    if (rc->req_cancel != NULL)
        ctx_cancel(rc->req_cancel);
    ctx_unref(rc->ctx);
    ctx_unref(rc->budget);
    ctx_unref(rc->req);
}

/* A /report or /task request counts as in flight from its first handler
 * call until libmicrohttpd has sent its answer (or given up on the client),
 * so that the drain at shutdown never closes a connection whose answer is
 * still on its way. */
static char counted; /* *state of a request that is counted */

static void completed(void *cls, struct MHD_Connection *conn, void **state,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls, (void)conn, (void)code;
    if (*state != &counted)
        return;
    pthread_mutex_lock(&drain_mu);
    atomic_fetch_sub_explicit(&requests_in_flight, 1, memory_order_relaxed);
    pthread_cond_broadcast(&drain_cv);
    pthread_mutex_unlock(&drain_mu);
}

static enum MHD_Result serve_report(struct MHD_Connection *conn, const char *id, ctx_time_t start)
{
    struct request r = { .ms = { 0 } };
    memcpy(r.request_id, id, strlen(id) + 1);
    struct request_ctx rc;
    if (!request_ctx(conn, id, &rc)) {
        request_ctx_free(&rc);
        log_line(id, NULL, "/report", 503, start, ERROR, "");
        return respond(conn, 503, "text/plain", "out of resources\n", id);
    }
    /* Checked under the request's context, so that even a bad request's
     * log line has the caller's trace id. */
    if (!param(conn, "compute_ms", &r.ms[COMPUTE]) || !param(conn, "db_ms", &r.ms[DB]) ||
        !param(conn, "upstream_ms", &r.ms[UPSTREAM])) {
        log_line(id, rc.ctx, "/report", 400, start, BAD_REQUEST, "");
        request_ctx_free(&rc);
        return respond(conn, 400, "text/plain",
                       "compute_ms, db_ms and upstream_ms must be integers from 0 to 60000\n", id);
    }

    /* The three parts at once; the first failure cancels the others. */
    ctx_t *gctx = NULL;
    ctx_group_t *g = ctx_group_new(rc.ctx, &gctx);
    int err = g == NULL ? errno : 0;
    if (g != NULL) {
        /* A part that cannot start (no thread to run it) fails the request
         * as out of resources, after the parts that did start end. */
        int start_err = ctx_group_go(g, compute_part, &r);
        if (start_err == 0)
            start_err = ctx_group_go(g, db_part, &r);
        if (start_err == 0 && cfg.upstream != NULL)
            start_err = ctx_group_go(g, upstream_part, &r);
        err = ctx_group_wait(g, NULL);
        /* ctx_group_go also refuses once the request's context has ended:
         * that is the context's outcome, not a lack of resources. */
        if (err == 0 && start_err != 0)
            err = ctx_err(rc.ctx) != 0 ? ctx_err(rc.ctx) : EAGAIN;
    }
    ctx_unref(gctx);

    enum outcome o = err == 0 ? OK : ended_because(rc.req != NULL ? rc.req : rc.ctx, rc.ctx, err);
    unsigned status = outcome_status[o];
    enum MHD_Result ret;
    char body[512];
    if (o == OK) {
        char trace[33] = "";
        ctx_trace_id(rc.ctx, trace);
        snprintf(body, sizeof body,
                 "{\"request_id\":\"%s\",\"trace_id\":\"%s\",\"compute_ms\":%ld,\"db_ms\":%ld,"
                 "\"upstream_ms\":%ld}\n",
                 id, trace, r.took[COMPUTE], r.took[DB], r.took[UPSTREAM]);
        ret = respond(conn, status, "application/json", body, id);
    } else if (o == CLIENT_GONE) {
        ret = MHD_NO; /* nobody to answer: close the connection */
    } else {
        /* 503 for the database or no resources, 502 for the upstream. */
        const char *why = outcome_names[o];
        if (o == ERROR) {
            status = err == EIO || err == EAGAIN ? 503 : 502;
            why = err == EIO      ? "database unavailable"
                  : err == EAGAIN ? "out of resources"
                  : err == EPROTO ? "upstream answered garbage"
                                  : "upstream failed";
        }
        snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"error\":\"%s\"}\n", id, why);
        ret = respond(conn, status, "application/json", body, id);
    }
    char cancelled[64] = "";
    for (int p = 0; p < NPARTS; p++) {
        if (r.stopped[p]) {
            if (cancelled[0] != '\0')
                strcat(cancelled, ",");
            strcat(cancelled, part_names[p]);
        }
    }
    log_line(id, rc.ctx, "/report", status, start, o, cancelled);
    request_ctx_free(&rc);
    return ret;
}

/* /task?ms=N: the downstream service's work, a wait under its request
 * context that the caller's cancel (connection closed, grpc-timeout) ends. */
static enum MHD_Result serve_task(struct MHD_Connection *conn, const char *id, ctx_time_t start)
{
    struct request_ctx rc;
    if (!request_ctx(conn, id, &rc)) {
        request_ctx_free(&rc);
        log_line(id, NULL, "/task", 503, start, ERROR, "");
        return respond(conn, 503, "text/plain", "out of resources\n", id);
    }
    long ms;
    if (!param(conn, "ms", &ms)) {
        log_line(id, rc.ctx, "/task", 400, start, BAD_REQUEST, "");
        request_ctx_free(&rc);
        return respond(conn, 400, "text/plain", "ms must be an integer from 0 to 60000\n", id);
    }
    int err =
        cfg.no_ctx ? (usleep((useconds_t)ms * 1000), 0) : ctx_sleep(rc.ctx, ms * CTX_MILLISECOND);
    enum outcome o = err == 0 ? OK : ended_because(rc.req, rc.ctx, err);
    enum MHD_Result ret = MHD_NO;
    char body[256];
    if (o == OK) {
        char trace[33] = "";
        ctx_trace_id(rc.ctx, trace);
        snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"trace_id\":\"%s\",\"ms\":%ld}\n", id,
                 trace, ms);
        ret = respond(conn, 200, "application/json", body, id);
    } else if (o != CLIENT_GONE) {
        snprintf(body, sizeof body, "{\"request_id\":\"%s\",\"error\":\"%s\"}\n", id,
                 outcome_names[o]);
        ret = respond(conn, outcome_status[o], "application/json", body, id);
    }
    log_line(id, rc.ctx, "/task", outcome_status[o], start, o, o == OK ? "" : "task");
    request_ctx_free(&rc);
    return ret;
}

/* The number of live contexts, from the library's own registry. */
static long live_contexts(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return -1;
    ctx_dump_all(f);
    fclose(f);
    long n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == '\n';
    free(text);
    return n;
}

static enum MHD_Result serve_metrics(struct MHD_Connection *conn)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return MHD_NO;
    fprintf(f, "# TYPE reportd_requests_in_flight gauge\nreportd_requests_in_flight %ld\n",
            atomic_load_explicit(&requests_in_flight, memory_order_relaxed));
    fprintf(f, "# TYPE reportd_parts_in_flight gauge\n");
    for (int p = 0; p < NPARTS; p++)
        fprintf(f, "reportd_parts_in_flight{part=\"%s\"} %ld\n", part_names[p],
                atomic_load_explicit(&parts_in_flight[p], memory_order_relaxed));
    fprintf(f, "# TYPE reportd_requests_total counter\n");
    for (int o = 0; o < NOUTCOMES; o++)
        fprintf(f, "reportd_requests_total{outcome=\"%s\"} %ld\n", outcome_names[o],
                atomic_load_explicit(&requests_total[o], memory_order_relaxed));
    fprintf(f, "# TYPE reportd_parts_cancelled_total counter\n");
    for (int p = 0; p < NPARTS; p++)
        fprintf(f, "reportd_parts_cancelled_total{part=\"%s\"} %ld\n", part_names[p],
                atomic_load_explicit(&parts_cancelled_total[p], memory_order_relaxed));
    fprintf(f, "# TYPE reportd_live_contexts gauge\nreportd_live_contexts %ld\n", live_contexts());
    fclose(f);
    enum MHD_Result ret =
        text != NULL ? respond(conn, 200, "text/plain; version=0.0.4", text, NULL) : MHD_NO;
    free(text);
    return ret;
}

static enum MHD_Result serve_debug(struct MHD_Connection *conn)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return MHD_NO;
    ctx_dump_all(f);
    fclose(f);
    enum MHD_Result ret = text != NULL ? respond(conn, 200, "text/plain", text, NULL) : MHD_NO;
    free(text);
    return ret;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload;
    /* libmicrohttpd calls once when the headers are in, then for the body
     * (none for GET), then once more: we answer on that last call. */
    if (*state == NULL) {
        *state = conn;
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0; /* a body is not expected; it is read and ignored */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0)
        return respond(conn, 405, "text/plain", "only GET\n", NULL);
    enum MHD_Result page_ret;
    if (page_route(conn, url, base, &page_ret)) /* GET / and /debug/ctx?format=json */
        return page_ret;
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(conn);
    if (strcmp(url, "/debug/ctx") == 0)
        return serve_debug(conn);
    bool report = strcmp(url, "/report") == 0;
    if (!report && strcmp(url, "/task") != 0)
        return respond(conn, 404, "text/plain", "not found\n", NULL);

    ctx_time_t start = ctx_now();
    char id[ID_MAX + 1];
    request_id(conn, id);
    atomic_fetch_add_explicit(&requests_in_flight, 1, memory_order_relaxed);
    *state = &counted;
    return report ? serve_report(conn, id, start) : serve_task(conn, id, start);
}

/* ------------------------------------------------------------------------
 * Start-up: the command line, the database
 */

static void usage(void)
{
    fprintf(stderr, "usage: reportd [--listen HOST:PORT] [--db sqlite:PATH | --db "
                    "postgres:CONNINFO]\n"
                    "               [--upstream URL] [--budget-ms N] [--drain-ms N] [--no-ctx]\n");
    exit(2);
}

static long number(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < 0 || v > 3600000)
        usage();
    return v;
}

static void parse_listen(const char *hostport)
{
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (colon == NULL || (size_t)(colon - hostport) >= sizeof host)
        usage();
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = '\0';
    /* [::1]:8080 */
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = { .ai_flags = AI_PASSIVE | AI_NUMERICSERV, .ai_socktype = SOCK_STREAM };
    struct addrinfo *ai;
    int rc = getaddrinfo(h, colon + 1, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "reportd: --listen %s: %s\n", hostport, gai_strerror(rc));
        exit(2);
    }
    memcpy(&cfg.listen, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
}

static void parse_args(int argc, char **argv)
{
    parse_listen("127.0.0.1:8080");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--no-ctx") == 0) {
            cfg.no_ctx = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        char *v = argv[++i];
        if (strcmp(a, "--listen") == 0)
            parse_listen(v);
        else if (strcmp(a, "--db") == 0)
            cfg.db = v;
        else if (strcmp(a, "--upstream") == 0)
            cfg.upstream = v;
        else if (strcmp(a, "--budget-ms") == 0)
            cfg.budget_ms = number(v);
        else if (strcmp(a, "--drain-ms") == 0)
            cfg.drain_ms = number(v);
        else
            usage();
    }
    if (cfg.upstream != NULL && strncmp(cfg.upstream, "http://", 7) != 0 &&
        strncmp(cfg.upstream, "https://", 8) != 0) {
        fprintf(stderr, "reportd: --upstream must be an http:// or https:// URL\n");
        exit(2);
    }
    /* http://host:8081/ names the same service as http://host:8081: the
     * call goes to <upstream>/task, never to //task. */
    for (size_t n = cfg.upstream != NULL ? strlen(cfg.upstream) : 0;
         n > 0 && cfg.upstream[n - 1] == '/'; n--)
        cfg.upstream[n - 1] = '\0';
}

static void die(const char *what)
{
    fprintf(stderr, "reportd: %s\n", what);
    exit(1);
}

/* The embedded default database is reportd's own: removed at every exit,
 * an error at start-up included (not when a second signal kills it). */
static void remove_default_db(void)
{
    unlink(sqlite_path);
}

/* Opens (creating and filling when new) the SQLite file and checks that the
 * report's query runs on it. */
static void open_sqlite(void)
{
    if (cfg.db == NULL) {
        snprintf(sqlite_path, sizeof sqlite_path, "%s/reportd-%d.db",
                 getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp", (int)getpid());
        atexit(remove_default_db);
    } else {
        snprintf(sqlite_path, sizeof sqlite_path, "%s", cfg.db + strlen("sqlite:"));
    }
    sqlite3 *db;
    if (sqlite3_open(sqlite_path, &db) != SQLITE_OK)
        die("cannot open the SQLite database");
    char *msg = NULL;
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT);"
                     "INSERT INTO items(v) SELECT 'item' WHERE NOT EXISTS (SELECT 1 FROM items);",
                     NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "reportd: %s: %s\n", sqlite_path, msg);
        exit(1);
    }
    if (sqlite_query(ctx_background(), db, 0) != 0)
        die("the report query fails on this database");
    sqlite3_close(db);
}

/* libmicrohttpd's error messages, marked as such in the log.  It reports a
 * handler returning MHD_NO as an "internal error", but reportd does that on
 * purpose for a client that has gone, so that message is left out. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (strstr(msg, "Application reported internal error") != NULL)
        return;
    fprintf(stderr, "reportd: libmicrohttpd: %s%s", msg,
            msg[0] != '\0' && msg[strlen(msg) - 1] == '\n' ? "" : "\n");
}

/* Waits, up to limit, until no request is in flight; true if none is. */
static bool drain(ctx_duration_t limit)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += limit / CTX_SECOND;
    until.tv_nsec += limit % CTX_SECOND;
    if (until.tv_nsec >= CTX_SECOND) {
        until.tv_sec++;
        until.tv_nsec -= CTX_SECOND;
    }
    pthread_mutex_lock(&drain_mu);
    int rc = 0;
    while (atomic_load_explicit(&requests_in_flight, memory_order_relaxed) > 0 && rc == 0)
        rc = pthread_cond_timedwait(&drain_cv, &drain_mu, &until);
    bool drained = atomic_load_explicit(&requests_in_flight, memory_order_relaxed) == 0;
    pthread_mutex_unlock(&drain_mu);
    return drained;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    /* Track every context, for /debug/ctx and reportd_live_contexts. */
    ctx_track(true);
    /* SIGINT and SIGTERM end this context; a second one kills at once. */
    static const int sigs[] = { SIGINT, SIGTERM };
    ctx_t *stop = ctx_with_signals(ctx_background(), sigs, 2, NULL);
    base = ctx_with_cancel(ctx_background(), &base_cancel);
    if (stop == NULL || base == NULL)
        die("cannot make the server's contexts");
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die("curl_global_init failed");

    if (cfg.db != NULL && strncmp(cfg.db, "postgres:", 9) == 0) {
#ifndef REPORTD_WITH_PQ
        die("this reportd was built without libctx-pq (libpq-dev)");
#endif
        pg_conninfo = cfg.db + strlen("postgres:");
    } else if (cfg.db == NULL || strncmp(cfg.db, "sqlite:", 7) == 0) {
        open_sqlite();
    } else {
        usage();
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    compute_slots.free = db_slots.free = cores > 0 ? (int)cores : 1;

    /* One thread per connection: a handler blocks while its parts run (see
     * <ctx/mhd.h>).  poll() instead of select() has no FD_SETSIZE limit.
     * The connection timeout bounds slow clients (slow-loris); the memory
     * limit bounds headers (larger ones get 431). */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ITC |
            MHD_USE_ERROR_LOG | (cfg.listen.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, handler, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&cfg.listen, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)15,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)4000, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)32768, MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)1024, MHD_OPTION_THREAD_STACK_SIZE,
        (size_t)(256 * 1024), MHD_OPTION_END);
    if (d == NULL)
        die("cannot listen (address in use?)");
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char host[INET6_ADDRSTRLEN] = "?";
    if (cfg.listen.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&cfg.listen)->sin6_addr, host, sizeof host);
    else
        inet_ntop(AF_INET, &((struct sockaddr_in *)&cfg.listen)->sin_addr, host, sizeof host);
    printf(cfg.listen.ss_family == AF_INET6 ? "listening on [%s]:%u\n" : "listening on %s:%u\n",
           host, info != NULL ? (unsigned)info->port : 0u);
    fflush(stdout);

    /* Wait for the signal in poll(2) on the context's done fd.  ctx_wait
     * would do as well, except under ThreadSanitizer, which holds a signal
     * back from a thread blocked outside the calls it intercepts (ctx_wait
     * sleeps on a futex), so the signal context would never end. */
    struct pollfd done = { .fd = ctx_done_fd(stop), .events = POLLIN, .revents = 0 };
    if (done.fd < 0)
        ctx_wait(stop, CTX_FOREVER);
    while (ctx_err(stop) == 0)
        poll(&done, 1, -1);
    /* Stop accepting: the listening socket is now ours to close. */
    MHD_socket lfd = MHD_quiesce_daemon(d);
    if (lfd != MHD_INVALID_SOCKET)
        close(lfd);
    const char *why = NULL;
    ctx_cause(stop, &why);
    fprintf(stderr, "reportd: %s: draining for up to %ld ms\n", why, cfg.drain_ms);
    if (!drain(cfg.drain_ms * CTX_MILLISECOND))
        fprintf(stderr, "reportd: drain time over: cancelling the requests left\n");
    /* Whatever still runs ends now with outcome "shutdown"; cancelled work
     * stops within milliseconds, the bound is only a safety net. */
    ctx_cancel_cause(base_cancel, ESHUTDOWN, "server shutting down");
    drain(5 * CTX_SECOND);
    MHD_stop_daemon(d);

#ifdef REPORTD_WITH_PQ
    pthread_mutex_lock(&pool_mu);
    while (pool_len > 0)
        PQfinish(pool[--pool_len]);
    pthread_mutex_unlock(&pool_mu);
#endif
    curl_global_cleanup();
    ctx_unref(base);
    ctx_unref(stop);
    fprintf(stderr, "reportd: stopped\n");
    return 0;
}
