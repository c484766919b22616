/* SPDX-License-Identifier: MIT */

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
 * How it is built.  libmicrohttpd's event loop (epoll, one thread per core)
 * reads requests and writes answers for any number of connections, with no
 * thread held by an idle or slow client.  A /report is suspended there and
 * run by a worker thread as plain blocking code under its context
 * (serve_report: the request path on one screen); the answer goes back to
 * the event loop.  A /task, a mere wait, holds no thread: an AfterFunc on
 * its context answers it.  Computations and SQLite queries wait for a slot,
 * in an order chosen so that below saturation no request waits out its
 * budget (see "Slots").  SQLite connections and their prepared statement are
 * kept per slot, PostgreSQL connections in a pool: nothing is opened or
 * prepared per request.
 *
 * The command line, endpoints, headers, log line and metrics are described
 * in docs/http.md ("reportd"); `make demo` plays the scenarios.  Built from
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
#include <semaphore.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
    const char *db; /* "sqlite:PATH" or "postgres:CONNINFO" */
    char *upstream; /* base URL without a trailing slash, or NULL */
    long budget_ms;
    long drain_ms;
    long read_ms;                 /* a request's headers and body must be in within this */
    bool track;                   /* ctx_track: every context with its creation site */
    bool no_ctx;                  /* benchmark baseline: parts run without cancellation */
    long compute_slots, db_slots; /* 0: one and two per core */
} cfg = { .budget_ms = 500, .drain_ms = 5000, .read_ms = 10000 };

/* Cancelled at shutdown, after the drain: every request context is a child. */
static ctx_t *base;
static ctx_cancel_t *base_cancel;

/* Metrics.  Relaxed atomics: each is a counter read on its own, nothing is
 * published through them. */
static atomic_long requests_in_flight;
static atomic_long parts_in_flight[NPARTS];
static atomic_long requests_total[NOUTCOMES];
static atomic_long parts_cancelled_total[NPARTS];
static atomic_long connections_open, connections_read_timeout_total;
/* Of the deadline outcomes, those turned away at the door. */
static atomic_long requests_shed_total;

/* The drain at shutdown waits on this for requests_in_flight to reach 0. */
static pthread_mutex_t drain_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t drain_cv = PTHREAD_COND_INITIALIZER;

static char sqlite_path[4096];
static const char *pg_conninfo;

/* The longest incoming X-Request-Id kept (see request_id). */
#define ID_MAX 128

/* One /report or /task request, from its headers to its answer. */
struct request_ctx {
    ctx_t *req; /* ctx_mhd_request: cancelled when the client goes */
    ctx_cancel_t *req_cancel;
    ctx_t *budget; /* + --budget-ms */
    ctx_t *ctx;    /* + baggage request-id: what the work runs under */
};

struct request {
    struct MHD_Connection *conn;
    struct request *next; /* in the run queue */
    bool counted;         /* counted in requests_in_flight */
    bool report;          /* /report, else /task */
    bool ran;             /* a worker ran it: send its answer, or close */
    unsigned status;      /* the answer; 0 when the client has gone */
    const char *type;
    char body[512];
    char id[ID_MAX + 1];
    ctx_time_t start;
    struct request_ctx rc;
    ctx_t *wait;          /* /task: the wait of ms[UPSTREAM]; a shed /report: its hold */
    long ms[NPARTS];      /* what /report asked for (/task: ms[UPSTREAM]) */
    long took[NPARTS];    /* measured, in ms */
    bool stopped[NPARTS]; /* the part was still running when the context ended */
    bool wants[NPARTS];   /* admitted and counted in its slots' wanted */
};

/* ------------------------------------------------------------------------
 * Slots: how many computations and SQLite queries run at once, in which
 * order the others wait, and which requests are turned away.
 *
 * Both are CPU work.  Started for every request at once, hundreds of them
 * would share two cores, each would crawl, and a request whose budget ended
 * would wait for the scheduler before its parts could even notice.  Like a
 * database pool, a few slots per core keep the work that runs fast and let
 * the rest wait, and that wait is itself cancellable: a request that runs
 * out of budget or whose client leaves stops waiting at once.
 *
 * The order decides who makes its budget (docs/PERFORMANCE.md, "reportd's
 * queue", has the measurements):
 *   - First come, first served while the queue is young.  Below saturation
 *     every waiter then gets its slot within a few service times.  Serving
 *     the newest first instead (LIFO) lets a waiter that a burst pushed
 *     down wait out its whole budget while the machine still has room.
 *   - A slot never goes to a waiter that cannot finish in time, one whose
 *     deadline is nearer than the work it asked for.  It stays in line
 *     until its context ends (504 at its budget) without costing any CPU,
 *     and the slot goes to the next waiter that can still make it.
 *   - Once every waiter granted a slot for 100 ms has waited more than a
 *     fortieth of the budget (12.5 ms of the default 500), the queue is
 *     standing, not a burst draining (CoDel's test: the least wait over an
 *     interval, not the last one), which happens only at saturation and
 *     past it.  Then the newest waiter goes first: the newest have the most
 *     budget left, so more requests finish in time and with less wait, and
 *     the old ones end at their deadline.  A burst below saturation drains
 *     in a few service times (ms); a tenth of the budget let the queue at
 *     the saturating load grow to hundreds of ms first, in FIFO order.
 *
 * Shedding.  Past saturation the order alone does not help: every request
 * let in holds a worker thread, and each of its parts a pool thread, while
 * it waits.  At twice the saturating load thousands of threads waited out
 * their budgets, the wake-ups and context switches of their ends took most
 * of the CPU, goodput fell to half the saturated throughput, and the last
 * 504s came 60 ms after the budget.  So a request is let in only if the
 * slots can serve it in time.  Each kind of slot keeps the number of
 * requests let in that have not got their slot yet (wanted) and a moving
 * mean of how long a slot is held (hold); a request whose deadline is
 * nearer than wanted * hold / slots, plus its own work, would not get its
 * slot in time first come, first served, and is turned away before any
 * thread or part is started: its connection is suspended and answered
 * 504 once half of what is left of its budget has passed, by a function
 * that runs when a context of that timeout under the request's ends (a
 * client that leaves first is let go then).  Answering it at once instead
 * would be cheaper for it but not for the others: a client that sends its
 * next request as soon as it has an answer (a closed loop, like a pool of
 * busy callers) sends it again at once, and under 500 such connections the
 * rejections became a flood of 15,000 requests/s that took the CPU from
 * the work let in, which then served almost nothing.  Held for half its
 * budget, a request turned away costs a timer and no thread, and its
 * client comes back at most twice a budget.  Holding it to the end of its
 * budget did as well in the closed loop, but at twice the saturating load
 * the answers of hundreds of requests held at once came up to 150 ms after
 * the budget (the event loop sends them, and it was busy); half the budget
 * leaves that much room.  Counting from the door rather than the queue
 * counts the requests on their way to a worker too.  The hold time is
 * measured rather than the rate of grants, which below saturation is the
 * load, not what the slots can do, and its mean moves slowly (1/32 per
 * grant) so that one holder preempted by another process does not shed a
 * burst.  For the same reason a hold counts at most eight times the
 * larger of the mean and the work its holder asked for: with hundreds of
 * threads on two cores, a holder of a query of 0 ms (some 30 us of work)
 * that is preempted holds its slot for a time slice or more, and one such
 * hold of 100 ms moves an unclipped mean by 3 ms.  Under 500 connections on
 * the two-service load, where up to 500 requests want a database slot at
 * once, a mean of 4 ms predicts a wait of a whole budget: up to one
 * request in a thousand was turned away (504 after 250 ms) while the p99
 * of the others was under 200 ms.  Clipped, such a hold moves the mean by
 * a few microseconds, while a real change still shows within tens of
 * grants (a larger work asked counts in full).  A clip at twice was too
 * tight: past saturation, where preempted holds are the real cost of a
 * slot, the door then let in more than the slots could serve, and at twice
 * the saturating load answers came 30 to 58 ms past their budget where
 * they come 15 to 28 ms past it now.  Below saturation the queue is a few
 * ms of wait against a budget of hundreds, so nothing is turned away.
 *
 * The door alone, with the order above, keeps every answer near its
 * budget: the requests let in either get their slots in time or, at the
 * bottom of a standing queue, end at their budget (504) on one of the few
 * hundred threads the door allows.  Letting the oldest waiter of a
 * standing queue go early as well, once the waiters ahead of it would
 * outlast its budget, was tried and taken back: in alternating runs at
 * twice the saturating load it kept every 504 by the budget but served
 * 511-668 requests/s against 758-945 with the door alone (whose latest
 * 504s came 11-21 ms after the budget): a request let go from one queue
 * may already have spent its work in the other.  Under 50 closed-loop
 * connections it also turned away requests that would have been served.
 * Both kinds of slot turn to newest first together when either queue
 * stands: a request needs both, and one served first in one queue and
 * last in the other would spend its work in the one and then miss its
 * budget in the other (a reason, not a measurement of its own).
 * Without contexts (--no-ctx) there is no budget: first come, first served,
 * and no one is turned away.
 */
#define MAX_SLOTS 64

struct waiter {
    pthread_cond_t cv;
    int slot;                   /* the slot granted, or -1 */
    ctx_time_t since;           /* when it began to wait */
    ctx_time_t latest;          /* the latest start that still finishes in time */
    struct waiter *prev, *next; /* toward the older, toward the newer */
};

/* Everything but the atomics is under mu.  The atomics are written under
 * mu too (wanted excepted: the door and the parts count it) and read
 * without it, relaxed: the door and the other kind of slot take them as
 * estimates, and no other data is published through them. */
struct slots {
    pthread_mutex_t mu;
    _Atomic ctx_time_t short_wait; /* when a waiter last got its slot quickly */
    int n;                         /* slots in all */
    int nfree;
    int free[MAX_SLOTS];            /* the numbers of the free slots */
    ctx_time_t taken[MAX_SLOTS];    /* when each slot was taken */
    ctx_duration_t work[MAX_SLOTS]; /* the work its holder asked for */
    struct waiter *oldest, *newest;
    atomic_int nwait;            /* waiters in the list (changed under mu) */
    _Atomic ctx_duration_t hold; /* how long a slot is held: a moving mean */
    atomic_long wanted;          /* requests let in that have not got a slot yet */
};

static struct slots compute_slots = { .mu = PTHREAD_MUTEX_INITIALIZER };
static struct slots db_slots = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void slots_init(struct slots *s, int n)
{
    atomic_init(&s->short_wait, ctx_now());
    for (s->nfree = 0; s->nfree < n && s->nfree < MAX_SLOTS; s->nfree++)
        s->free[s->nfree] = s->nfree;
    s->n = s->nfree;
}

/* Whether work asked of s at now can start in time for deadline when the
 * requests let in before it are served first (see "Shedding"). */
static bool slots_in_time(struct slots *s, ctx_duration_t work, ctx_time_t now, ctx_time_t deadline)
{
    long wanted = atomic_load_explicit(&s->wanted, memory_order_relaxed);
    ctx_duration_t hold = atomic_load_explicit(&s->hold, memory_order_relaxed);
    return wanted == 0 || now + wanted * hold / s->n + work <= deadline;
}

static void waiter_unlink(struct slots *s, struct waiter *w)
{
    *(w->prev != NULL ? &w->prev->next : &s->oldest) = w->next;
    *(w->next != NULL ? &w->next->prev : &s->newest) = w->prev;
    atomic_fetch_sub_explicit(&s->nwait, 1, memory_order_relaxed);
}

/* Whether s's queue stands: waiters, none of which got its slot quickly
 * for 100 ms.  Read without s's lock, for the other kind of slot too. */
static bool stands(struct slots *s, ctx_time_t now)
{
    return atomic_load_explicit(&s->nwait, memory_order_relaxed) > 0 &&
           now - atomic_load_explicit(&s->short_wait, memory_order_relaxed) > 100 * CTX_MILLISECOND;
}

/* 0 with *slot taken, or ctx_err(ctx) when ctx ended first.  work is how long the caller will
 * hold the slot. */
static int slot_take(ctx_t *ctx, struct slots *s, ctx_duration_t work, int *slot)
{
    ctx_time_t now = ctx_now(); /* read before the lock, not inside it */
    pthread_mutex_lock(&s->mu);
    if (s->nfree > 0) {
        *slot = s->free[--s->nfree];
        s->taken[*slot] = now;
        s->work[*slot] = work;
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    ctx_time_t deadline;
    struct waiter w = { .slot = -1, .since = now, .prev = s->newest, .next = NULL };
    w.latest = !cfg.no_ctx && ctx_deadline(ctx, &deadline) ? deadline - work : INT64_MAX;
    pthread_cond_init(&w.cv, NULL);
    *(s->newest != NULL ? &s->newest->next : &s->oldest) = &w;
    s->newest = &w;
    atomic_fetch_add_explicit(&s->nwait, 1, memory_order_relaxed);
    int err = 0;
    while (w.slot < 0 && err == 0)
        err = cfg.no_ctx ? pthread_cond_wait(&w.cv, &s->mu) : ctx_cond_wait(ctx, &w.cv, &s->mu);
    if (w.slot < 0)
        waiter_unlink(s, &w);
    else
        s->work[w.slot] = work;
    pthread_mutex_unlock(&s->mu);
    /* ctx_cond_wait has stopped its wake-up callback before returning, so
     * nothing touches w.cv any more.  A slot granted as the context ended
     * is kept: the part sees the end at its first check and gives it back. */
    pthread_cond_destroy(&w.cv);
    *slot = w.slot;
    return w.slot >= 0 ? 0 : err;
}

static void slot_give(struct slots *s, int slot)
{
    pthread_mutex_lock(&s->mu);
    ctx_time_t now = ctx_now();
    ctx_duration_t hold = atomic_load_explicit(&s->hold, memory_order_relaxed);
    ctx_duration_t took = now - s->taken[slot];
    ctx_duration_t usual = hold > s->work[slot] ? hold : s->work[slot];
    if (hold != 0 && took > 8 * usual)
        took = 8 * usual; /* a preempted holder (see "Shedding") */
    hold = hold == 0 ? took : hold + (took - hold) / 32;
    atomic_store_explicit(&s->hold, hold, memory_order_relaxed);
    bool standing = !cfg.no_ctx && (stands(&compute_slots, now) || stands(&db_slots, now));
    struct waiter *w = standing ? s->newest : s->oldest;
    while (w != NULL && w->latest < now)
        w = standing ? w->prev : w->next;
    if (w != NULL) {
        waiter_unlink(s, w);
        w->slot = slot;
        s->taken[slot] = now;
        pthread_cond_signal(&w->cv);
        if (now - w->since <= cfg.budget_ms * CTX_MILLISECOND / 40)
            atomic_store_explicit(&s->short_wait, now, memory_order_relaxed);
    } else {
        s->free[s->nfree++] = slot;
        atomic_store_explicit(&s->short_wait, now, memory_order_relaxed); /* no one waits */
    }
    pthread_mutex_unlock(&s->mu);
}

/* The slots each part of r needs, NULL for none. */
static struct slots *part_slots(const struct request *r, enum part p)
{
    if (p == COMPUTE)
        return r->ms[COMPUTE] > 0 ? &compute_slots : NULL;
    return p == DB && pg_conninfo == NULL ? &db_slots : NULL;
}

/* Whether r may start: false when one of its parts could not get its slot
 * in time (see "Shedding"); else r counts as wanted by those slots. */
static bool admit(struct request *r)
{
    ctx_time_t deadline, now = ctx_now();
    if (!cfg.no_ctx && ctx_deadline(r->rc.ctx, &deadline))
        for (int p = 0; p < NPARTS; p++)
            if (part_slots(r, p) != NULL &&
                !slots_in_time(part_slots(r, p), r->ms[p] * CTX_MILLISECOND, now, deadline))
                return false;
    for (int p = 0; p < NPARTS; p++)
        if ((r->wants[p] = part_slots(r, p) != NULL))
            atomic_fetch_add_explicit(&part_slots(r, p)->wanted, 1, memory_order_relaxed);
    return true;
}

/* Part p of r no longer waits for its slot: it has it, or never will. */
static void unwant(struct request *r, enum part p)
{
    if (r->wants[p]) {
        r->wants[p] = false;
        atomic_fetch_sub_explicit(&part_slots(r, p)->wanted, 1, memory_order_relaxed);
    }
}

/* Takes the slot that part p of r needs. */
static int part_slot(ctx_t *ctx, struct request *r, enum part p, int *slot)
{
    int rc = slot_take(ctx, part_slots(r, p), r->ms[p] * CTX_MILLISECOND, slot);
    unwant(r, p);
    return rc;
}

/* ------------------------------------------------------------------------
 * The three parts.  Each runs on a thread of the request's ctx_group and
 * returns 0, the context's error when the context ended first, or another
 * errno-style code for a real failure (which cancels its siblings).
 */

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

/* Where the computation's result goes, so that it is not optimised away;
 * atomic, as parts on several threads store to it. */
static _Atomic uint64_t work_sink;

static int compute_part(ctx_t *ctx, void *arg)
{
    struct request *r = arg;
    part_begin(COMPUTE);
    ctx_time_t start = ctx_now();
    /* No work asked, no slot needed: nothing would run on it. */
    int slot, rc = 0;
    if (r->ms[COMPUTE] > 0 && (rc = part_slot(ctx, r, COMPUTE, &slot)) == 0) {
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
        atomic_store_explicit(&work_sink, x, memory_order_relaxed);
        slot_give(&compute_slots, slot);
    }
    return part_end(r, COMPUTE, start, ctx, rc);
}

/* SQLite: a recursive query that counts until the clock passes ?1, so that
 * it runs about the asked ms however busy the machine is.  reportd_now() is
 * the monotonic clock, in ns. */
static const char count_sql[] =
    "WITH RECURSIVE c(x) AS (SELECT min(id) FROM items UNION ALL SELECT x + 1 FROM c "
    "WHERE reportd_now() < ?1) SELECT count(*) FROM c";

static void sql_now(sqlite3_context *c, int argc, sqlite3_value **argv)
{
    (void)argc, (void)argv;
    sqlite3_result_int64(c, ctx_now());
}

/* One SQLite connection per database slot, kept open with its function
 * registered and its statement prepared: taking the slot takes the
 * connection, and only the thread holding the slot uses it.  Before each
 * use the file is looked up again, so a database file that disappears fails
 * the requests (503) and one that comes back, or is replaced, is opened
 * anew and serves them again. */
struct sqlite_conn {
    sqlite3 *db;
    sqlite3_stmt *stmt;
    dev_t dev; /* the file it has open */
    ino_t ino;
};

static struct sqlite_conn sqlite_conns[MAX_SLOTS];

static void sqlite_conn_close(struct sqlite_conn *c)
{
    sqlite3_finalize(c->stmt);
    sqlite3_close(c->db);
    c->stmt = NULL;
    c->db = NULL;
}

static int sqlite_conn_ready(struct sqlite_conn *c)
{
    struct stat st;
    bool there = stat(sqlite_path, &st) == 0;
    if (c->db != NULL && (!there || st.st_dev != c->dev || st.st_ino != c->ino))
        sqlite_conn_close(c);
    if (!there)
        return EIO;
    if (c->db == NULL) {
        /* NOMUTEX: the slot already keeps the connection to one thread. */
        if (sqlite3_open_v2(sqlite_path, &c->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                            NULL) != SQLITE_OK ||
            sqlite3_create_function(c->db, "reportd_now", 0, SQLITE_UTF8, NULL, sql_now, NULL,
                                    NULL) != SQLITE_OK ||
            sqlite3_prepare_v3(c->db, count_sql, -1, SQLITE_PREPARE_PERSISTENT, &c->stmt, NULL) !=
                SQLITE_OK) {
            sqlite_conn_close(c);
            return EIO;
        }
        c->dev = st.st_dev;
        c->ino = st.st_ino;
    }
    return 0;
}

static int sqlite_query(ctx_t *ctx, struct sqlite_conn *c, long ms)
{
    int rc = sqlite_conn_ready(c);
    if (rc != 0)
        return rc;
    sqlite3_bind_int64(c->stmt, 1, ctx_now() + ms * CTX_MILLISECOND);
    int src = cfg.no_ctx ? sqlite3_step(c->stmt) : ctx_sqlite_step(ctx, c->stmt);
    sqlite3_reset(c->stmt);
    if (src == SQLITE_ROW)
        return 0;
    return src == SQLITE_INTERRUPT && ctx_err(ctx) != 0 ? ctx_err(ctx) : EIO;
}

#ifdef REPORTD_WITH_PQ
/* PostgreSQL: a pool of idle connections.  A request takes one or connects;
 * a connection that ctx_pq_exec left usable goes back, a broken one (the
 * server or the network went away, or a cancel that could not be
 * delivered) is dropped, so the pool heals by itself once the database
 * answers again. */
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
    int slot, rc;
#ifdef REPORTD_WITH_PQ
    if (pg_conninfo != NULL) {
        rc = pg_sleep_part(ctx, r->ms[DB]);
    } else
#endif
        if ((rc = part_slot(ctx, r, DB, &slot)) == 0) {
        rc = sqlite_query(ctx, &sqlite_conns[slot], r->ms[DB]);
        slot_give(&db_slots, slot);
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

/* Each thread keeps one easy handle between calls, as it keeps its
 * connections (ctx_curl_perform): curl_easy_init would allocate and clear
 * tens of kilobytes for every call.  Options stay set on a handle, and
 * only upstream_part uses these, so the ones that never change are set
 * once here and the rest (the URL, the headers and the body's buffer,
 * which each call replaces) on each call. */
static pthread_key_t easy_key;

static void easy_free(void *easy)
{
    curl_easy_cleanup(easy);
}

static CURL *thread_easy(void)
{
    CURL *easy = pthread_getspecific(easy_key);
    if (easy != NULL)
        return easy;
    if ((easy = curl_easy_init()) == NULL)
        return NULL;
    if (pthread_setspecific(easy_key, easy) != 0) {
        curl_easy_cleanup(easy);
        return NULL;
    }
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    return easy;
}

static int upstream_part(ctx_t *ctx, void *arg)
{
    struct request *r = arg;
    part_begin(UPSTREAM);
    ctx_time_t start = ctx_now();
    int rc = ENOMEM;
    char url[4200], id_header[ID_MAX + 32];
    snprintf(url, sizeof url, "%s/task?ms=%ld", cfg.upstream, r->ms[UPSTREAM]);
    snprintf(id_header, sizeof id_header, "X-Request-Id: %s", r->id);
    struct body b = { .len = 0 };
    struct curl_slist *headers = curl_slist_append(NULL, id_header);
    CURL *easy = thread_easy();
    if (headers != NULL && easy != NULL) {
        struct curl_slist *all = cfg.no_ctx ? headers : ctx_curl_headers(ctx, headers);
        curl_easy_setopt(easy, CURLOPT_URL, url);
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, all != NULL ? all : headers);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, &b);
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

/* The incoming X-Request-Id, else a new one.  The ID goes into the log
 * line, a JSON body and headers, so it is never trusted blindly: one
 * longer than ID_MAX or with a byte that could break any of them (a space,
 * a control or non-ASCII byte, '"' or '\\') is replaced by a new one.
 * A new ID is a random 64-bit start, drawn once (main), plus a count: 16
 * hex digits, unique within the process and unlikely to meet another
 * process's, for an add rather than a system call per request.  The count
 * is relaxed: each add returns a number of its own, and nothing else is
 * published through it; id_base is written before any thread starts. */
static uint64_t id_base;
static atomic_uint_fast64_t id_count;

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
    uint64_t v = id_base + atomic_fetch_add_explicit(&id_count, 1, memory_order_relaxed);
    for (int i = 15; i >= 0; i--, v >>= 4)
        id[i] = "0123456789abcdef"[v & 15];
    id[16] = '\0';
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
    *rc = (struct request_ctx){ NULL, NULL, NULL, NULL };
}

/* The answer a worker leaves for the event loop to send. */
static void answer(struct request *r, unsigned status, const char *type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->body, sizeof r->body, fmt, ap);
    va_end(ap);
    r->status = status;
    r->type = type;
}

/* A request that did not end well: the status and error of its outcome
 * (nothing for a client that has gone). */
static void answer_failure(struct request *r, enum outcome o, int err)
{
    unsigned status = outcome_status[o];
    const char *why = outcome_names[o];
    if (o == CLIENT_GONE)
        return; /* nobody to answer: the connection is closed */
    if (o == ERROR) {
        /* 503 for the database or no resources, 502 for the upstream. */
        status = err == EIO || err == EAGAIN ? 503 : 502;
        why = err == EIO      ? "database unavailable"
              : err == EAGAIN ? "out of resources"
              : err == EPROTO ? "upstream answered garbage"
                              : "upstream failed";
    }
    answer(r, status, "application/json", "{\"request_id\":\"%s\",\"error\":\"%s\"}\n", r->id, why);
}

/* The parts run at once in a group under ctx: the first failure cancels
 * the others, and so does the end of ctx. */
static int run_parts(ctx_t *ctx, ctx_task_fn *parts, int n, struct request *r)
{
    ctx_t *gctx = NULL;
    ctx_group_t *g = ctx_group_new(ctx, &gctx);
    if (g == NULL)
        return EAGAIN;
    int go = 0;
    for (int i = 0; i < n && go == 0; i++)
        go = ctx_group_go(g, parts[i], r);
    int err = ctx_group_wait(g, NULL);
    ctx_unref(gctx);
    /* A part that could not start: the context's end, or no thread. */
    if (err == 0 && go != 0)
        err = ctx_err(ctx) != 0 ? ctx_err(ctx) : EAGAIN;
    return err;
}

/* GET /report: the request path.  The parts run at once in a group under
 * the request's context, which the budget, the client leaving or the
 * shutdown ends, and that ends them all.  A computation of 0 ms has nothing
 * to run. */
static void serve_report(struct request *r)
{
    ctx_t *ctx = r->rc.ctx;
    ctx_task_fn parts[NPARTS];
    int n = 0;
    if (r->ms[COMPUTE] > 0)
        parts[n++] = compute_part;
    parts[n++] = db_part;
    if (cfg.upstream != NULL)
        parts[n++] = upstream_part;
    int err = run_parts(ctx, parts, n, r);
    unwant(r, COMPUTE); /* a part that never started */
    unwant(r, DB);

    enum outcome o = err == 0 ? OK : ended_because(r->rc.req != NULL ? r->rc.req : ctx, ctx, err);
    char trace[33] = "";
    ctx_trace_id(ctx, trace);
    if (o == OK)
        answer(r, 200, "application/json",
               "{\"request_id\":\"%s\",\"trace_id\":\"%s\",\"compute_ms\":%ld,\"db_ms\":%ld,"
               "\"upstream_ms\":%ld}\n",
               r->id, trace, r->took[COMPUTE], r->took[DB], r->took[UPSTREAM]);
    else
        answer_failure(r, o, err);
    char cancelled[64] = "";
    for (int p = 0; p < NPARTS; p++)
        if (r->stopped[p])
            strcat(strcat(cancelled, cancelled[0] != '\0' ? "," : ""), part_names[p]);
    log_line(r->id, ctx, "/report", r->status != 0 ? r->status : 499, r->start, o, cancelled);
}

/* Ends the request's context before the event loop may close the socket
 * it watches, then hands the connection back with its answer. */
static void finish(struct request *r)
{
    request_ctx_free(&r->rc);
    r->ran = true;
    MHD_resume_connection(r->conn);
}

/* GET /task?ms=N: the downstream service's work, a wait of N ms under the
 * request's context, which the caller's cancel (its connection closing, or
 * grpc-timeout) ends early.  Nothing blocks on it: a context of N ms under
 * the request's, and a function that runs when that one ends (AfterFunc,
 * on the thread that ended it), answer whichever comes first. */
static void task_done(void *arg)
{
    struct request *r = arg;
    long ms = r->ms[UPSTREAM];
    int err = ctx_err(r->rc.ctx); /* 0: the N ms passed */
    enum outcome o = err == 0 ? OK : ended_because(r->rc.req, r->rc.ctx, err);
    char trace[33] = "";
    ctx_trace_id(r->rc.ctx, trace);
    if (o == OK)
        answer(r, 200, "application/json",
               "{\"request_id\":\"%s\",\"trace_id\":\"%s\",\"ms\":%ld}\n", r->id, trace, ms);
    else
        answer_failure(r, o, err);
    log_line(r->id, r->rc.ctx, "/task", outcome_status[o], r->start, o, o == OK ? "" : "task");
    ctx_unref(r->wait);
    r->wait = NULL;
    finish(r);
}

/* Holds r's suspended connection for d, with no thread: fn(r) runs when a
 * timeout context of d under the request's ends (sooner when the request's
 * own context does).  False when that cannot be set up. */
static bool hold(struct request *r, ctx_duration_t d, void (*fn)(void *))
{
    r->wait = ctx_with_timeout(r->rc.ctx, d, NULL);
    if (r->wait != NULL && ctx_after_func(r->wait, fn, r, NULL) == 0)
        return true;
    ctx_unref(r->wait);
    r->wait = NULL;
    return false;
}

static bool start_task(struct request *r)
{
    return hold(r, r->ms[UPSTREAM] * CTX_MILLISECOND, task_done);
}

/* A /report turned away at the door (see "Shedding") ends here when its
 * hold does: 504, or nothing when its client left first.  Until then it
 * holds no thread, only its suspended connection. */
static void shed_done(void *arg)
{
    struct request *r = arg;
    int err = ctx_err(r->rc.ctx); /* 0: held as long as it was to be */
    enum outcome o = err == 0 ? DEADLINE : ended_because(r->rc.req, r->rc.ctx, err);
    ctx_unref(r->wait);
    r->wait = NULL;
    if (o == DEADLINE)
        answer(r, 504, "application/json",
               "{\"request_id\":\"%s\",\"error\":\"deadline: shed, the queue would outlast "
               "its budget\"}\n",
               r->id);
    else
        answer_failure(r, o, err);
    log_line(r->id, r->rc.ctx, "/report", o == CLIENT_GONE ? 499 : r->status, r->start, o, "");
    finish(r);
}

/* Turns r away at the door: held for half of what is left of its budget
 * (admit() turns away only under a deadline), then shed_done. */
static bool shed(struct request *r)
{
    ctx_time_t deadline;
    ctx_deadline(r->rc.ctx, &deadline);
    if (!hold(r, (deadline - ctx_now()) / 2, shed_done))
        return false;
    atomic_fetch_add_explicit(&requests_shed_total, 1, memory_order_relaxed);
    return true;
}

/* ------------------------------------------------------------------------
 * Workers.  The event loop suspends a /report and hands it here; a worker
 * runs it as blocking code under its context, leaves the answer in the
 * request and resumes the connection, and the event loop sends the answer.
 * A worker serves one request at a time, so there are about as many as
 * requests in flight; idle ones stay a while for the next request, then
 * leave, so that a burst leaves no crowd behind.
 *
 * The hand-off is direct: the event loop gives the request to the worker
 * that went idle last (its stack and its kept connections are the warmest)
 * and wakes that one alone, on a semaphore of its own, so the worker wakes
 * up holding its request without taking the shared lock again.  The order
 * that matters under load is that of the slots above, where the work waits.
 */
struct worker {
    sem_t wake;          /* posted when a request is handed over */
    struct request *r;   /* the request handed over */
    struct worker *next; /* in the idle stack */
};

static struct {
    pthread_mutex_t mu;
    struct worker *idle;         /* idle workers, the last one to go idle first */
    struct request *head, *tail; /* requests that no worker could take yet */
    int threads;                 /* workers alive */
} run = { PTHREAD_MUTEX_INITIALIZER, NULL, NULL, NULL, 0 };

static pthread_attr_t worker_attr; /* detached, small stacks (main) */

/* The most workers at once; further requests queue for the next free one.
 * Shedding keeps the requests waiting for slots to what the slots can
 * serve within the budget, so this bounds only requests that wait on
 * something else, such as a hung upstream with thousands of clients. */
#define MAX_WORKERS 1024

static void serve(struct request *r)
{
    serve_report(r);
    finish(r);
}

/* Waits up to 2 s for a request; false when none came and w has left the
 * idle stack (the worker then ends).  Under run.mu, which it releases. */
static bool worker_idle(struct worker *w)
{
    w->r = NULL;
    w->next = run.idle;
    run.idle = w;
    pthread_mutex_unlock(&run.mu);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 2;
    int rc;
    while ((rc = sem_timedwait(&w->wake, &until)) != 0 && errno == EINTR)
        ;
    if (rc == 0)
        return true;
    pthread_mutex_lock(&run.mu);
    bool handed = w->r != NULL; /* handed over as the wait ended: its post follows */
    if (!handed) {
        struct worker **pp = &run.idle;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
        run.threads--;
    }
    pthread_mutex_unlock(&run.mu);
    if (handed)
        sem_wait(&w->wake);
    return handed;
}

static void *worker(void *arg)
{
    struct worker w = { .r = arg };
    sem_init(&w.wake, 0, 0);
    for (;;) {
        serve(w.r);
        pthread_mutex_lock(&run.mu);
        if ((w.r = run.head) != NULL) {
            run.head = w.r->next; /* queued when no thread could start */
            pthread_mutex_unlock(&run.mu);
        } else if (!worker_idle(&w)) {
            break;
        }
    }
    sem_destroy(&w.wake);
    return NULL;
}

/* Gives r to an idle worker, else to a new one, else queues it for the next
 * worker that finishes.  Under run.mu, which it releases.  False when there
 * is no worker at all. */
static bool hand_over(struct request *r)
{
    struct worker *w = run.idle;
    if (w != NULL) {
        run.idle = w->next;
        w->r = r;
        pthread_mutex_unlock(&run.mu);
        sem_post(&w->wake);
        return true;
    }
    bool ok = run.threads > 0;
    if (ok) {
        r->next = NULL;
        *(run.head != NULL ? &run.tail->next : &run.head) = r;
        run.tail = r;
    }
    pthread_mutex_unlock(&run.mu);
    return ok;
}

static bool dispatch(struct request *r)
{
    pthread_mutex_lock(&run.mu);
    if (run.idle == NULL && run.threads < MAX_WORKERS) {
        /* Started outside the lock: a clone takes tens of microseconds. */
        run.threads++;
        pthread_mutex_unlock(&run.mu);
        pthread_t t;
        if (pthread_create(&t, &worker_attr, worker, r) == 0)
            return true;
        pthread_mutex_lock(&run.mu);
        run.threads--;
    }
    return hand_over(r);
}

/* ------------------------------------------------------------------------
 * Slow clients.  libmicrohttpd's connection timeout counts idle time, so a
 * client that sends a byte a second never trips it.  Every connection gets
 * a read deadline instead: its request, headers and body, must be in within
 * --read-ms of the connection's start or of the previous answer on it.  A
 * sweep four times a second shuts down the connections past it; the event
 * loop sees the socket end and closes the connection.  The record of a
 * connection is removed (under the lock the sweep holds) when
 * libmicrohttpd reports it closed, before it closes the socket, so the
 * sweep never touches a socket number that has been reused.
 */
struct conn {
    int fd;
    _Atomic ctx_time_t deadline; /* 0 while a request is being served */
    struct conn *prev, *next;
};

static struct {
    pthread_mutex_t mu;
    struct conn *head;
} conns = { PTHREAD_MUTEX_INITIALIZER, NULL };

static void read_deadline(struct MHD_Connection *conn, bool on)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn *c = ci != NULL ? ci->socket_context : NULL;
    if (c != NULL)
        atomic_store_explicit(&c->deadline, on ? ctx_now() + cfg.read_ms * CTX_MILLISECOND : 0,
                              memory_order_relaxed);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    struct conn *c = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci == NULL || (c = calloc(1, sizeof *c)) == NULL)
            return; /* no deadline for this one: only the idle timeout */
        c->fd = ci->connect_fd;
        atomic_init(&c->deadline, ctx_now() + cfg.read_ms * CTX_MILLISECOND);
        pthread_mutex_lock(&conns.mu);
        if ((c->next = conns.head) != NULL)
            c->next->prev = c;
        conns.head = c;
        pthread_mutex_unlock(&conns.mu);
        *socket_context = c;
        atomic_fetch_add_explicit(&connections_open, 1, memory_order_relaxed);
    } else if (c != NULL) {
        pthread_mutex_lock(&conns.mu);
        *(c->prev != NULL ? &c->prev->next : &conns.head) = c->next;
        if (c->next != NULL)
            c->next->prev = c->prev;
        pthread_mutex_unlock(&conns.mu);
        free(c);
        *socket_context = NULL;
        atomic_fetch_sub_explicit(&connections_open, 1, memory_order_relaxed);
    }
}

static void *sweeper(void *arg)
{
    ctx_t *until = arg;
    while (ctx_sleep(until, 250 * CTX_MILLISECOND) == 0) {
        ctx_time_t now = ctx_now();
        pthread_mutex_lock(&conns.mu);
        for (struct conn *c = conns.head; c != NULL; c = c->next) {
            ctx_time_t d = atomic_load_explicit(&c->deadline, memory_order_relaxed);
            if (d != 0 && d < now) {
                shutdown(c->fd, SHUT_RDWR);
                atomic_store_explicit(&c->deadline, 0, memory_order_relaxed);
                atomic_fetch_add_explicit(&connections_read_timeout_total, 1, memory_order_relaxed);
            }
        }
        pthread_mutex_unlock(&conns.mu);
    }
    return NULL;
}

/* ------------------------------------------------------------------------
 * The event loop's side: routes, quick answers, and the hand-off of a
 * request to a worker.
 */

/* A request counts as in flight from its route until libmicrohttpd has
 * sent its answer (or given up on the client) and its contexts are freed,
 * so that the drain at shutdown never closes a connection whose answer is
 * still on its way, and a gauge at 0 means none of its contexts is left
 * (but for a moment after a held request's answer: the registration of
 * task_done or shed_done keeps its timeout context, and the request's
 * contexts above it, until that function has returned). */
static void completed(void *cls, struct MHD_Connection *conn, void **state,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls, (void)code;
    struct request *r = *state;
    if (r == NULL)
        return;
    *state = NULL;
    request_ctx_free(&r->rc);
    if (r->counted) {
        pthread_mutex_lock(&drain_mu);
        atomic_fetch_sub_explicit(&requests_in_flight, 1, memory_order_relaxed);
        pthread_cond_broadcast(&drain_cv);
        pthread_mutex_unlock(&drain_mu);
    }
    free(r);
    read_deadline(conn, true); /* the next request on it must come in time too */
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
    fprintf(f,
            "# TYPE reportd_requests_shed_total counter\n"
            "reportd_requests_shed_total %ld\n",
            atomic_load_explicit(&requests_shed_total, memory_order_relaxed));
    fprintf(f, "# TYPE reportd_live_contexts gauge\nreportd_live_contexts %zu\n", ctx_live_count());
    fprintf(f, "# TYPE reportd_connections gauge\nreportd_connections %ld\n",
            atomic_load_explicit(&connections_open, memory_order_relaxed));
    fprintf(f,
            "# TYPE reportd_connections_read_timeout_total counter\n"
            "reportd_connections_read_timeout_total %ld\n",
            atomic_load_explicit(&connections_read_timeout_total, memory_order_relaxed));
    pthread_mutex_lock(&run.mu);
    int workers = run.threads;
    pthread_mutex_unlock(&run.mu);
    fprintf(f, "# TYPE reportd_workers gauge\nreportd_workers %d\n", workers);
    fclose(f);
    enum MHD_Result ret =
        text != NULL ? respond(conn, 200, "text/plain; version=0.0.4", text, NULL) : MHD_NO;
    free(text);
    return ret;
}

/* The live contexts: every one with its creation site when tracking is on
 * (--track or CTX_TRACK=1), else the cancellable ones under the server's
 * base context. */
static enum MHD_Result serve_debug(struct MHD_Connection *conn)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return MHD_NO;
    if (ctx_dump_all(f) == ENOTSUP) {
        fprintf(f, "# tracking is off (reportd --track): the cancellable contexts only\n");
        ctx_dump(base, f);
    }
    fclose(f);
    enum MHD_Result ret = text != NULL ? respond(conn, 200, "text/plain", text, NULL) : MHD_NO;
    free(text);
    return ret;
}

/* /report and /task: the request's context and parameters are read here,
 * then the connection is suspended while a worker runs the report, or
 * while the task's wait runs with no thread at all. */
static enum MHD_Result start(struct request *r)
{
    struct MHD_Connection *conn = r->conn;
    const char *path = r->report ? "/report" : "/task";
    r->start = ctx_now();
    request_id(conn, r->id);
    atomic_fetch_add_explicit(&requests_in_flight, 1, memory_order_relaxed);
    r->counted = true;
    if (!request_ctx(conn, r->id, &r->rc)) {
        log_line(r->id, NULL, path, 503, r->start, ERROR, "");
        return respond(conn, 503, "text/plain", "out of resources\n", r->id);
    }
    /* Checked under the request's context, so that even a bad request's
     * log line has the caller's trace id. */
    bool ok = r->report ? param(conn, "compute_ms", &r->ms[COMPUTE]) &&
                              param(conn, "db_ms", &r->ms[DB]) &&
                              param(conn, "upstream_ms", &r->ms[UPSTREAM])
                        : param(conn, "ms", &r->ms[UPSTREAM]);
    if (!ok) {
        log_line(r->id, r->rc.ctx, path, 400, r->start, BAD_REQUEST, "");
        request_ctx_free(&r->rc);
        return respond(conn, 400, "text/plain",
                       r->report ? "compute_ms, db_ms and upstream_ms must be integers from 0 to "
                                   "60000\n"
                                 : "ms must be an integer from 0 to 60000\n",
                       r->id);
    }
    bool away = r->report && !admit(r); /* 504 later, with no thread: see "Shedding" */
    MHD_suspend_connection(conn);
    if (!(away ? shed(r) : r->report ? dispatch(r) : start_task(r))) {
        MHD_resume_connection(conn);
        unwant(r, COMPUTE);
        unwant(r, DB);
        log_line(r->id, r->rc.ctx, path, 503, r->start, ERROR, "");
        request_ctx_free(&r->rc);
        return respond(conn, 503, "text/plain", "out of resources\n", r->id);
    }
    return MHD_YES;
}

/* Where a request goes.  Quick answers are made here on the event loop's
 * thread; more routes attach here the same way. */
static enum MHD_Result route(struct request *r, const char *url, const char *method)
{
    if (strcmp(method, "GET") != 0)
        return respond(r->conn, 405, "text/plain", "only GET\n", NULL);
    enum MHD_Result page_ret;
    if (page_route(r->conn, url, base, &page_ret)) /* GET / and /debug/ctx?format=json */
        return page_ret;
    if (strcmp(url, "/metrics") == 0)
        return serve_metrics(r->conn);
    if (strcmp(url, "/debug/ctx") == 0)
        return serve_debug(r->conn);
    r->report = strcmp(url, "/report") == 0;
    if (r->report || strcmp(url, "/task") == 0)
        return start(r);
    return respond(r->conn, 404, "text/plain", "not found\n", NULL);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **state)
{
    (void)cls, (void)version, (void)upload;
    /* libmicrohttpd calls once when the headers are in, then for the body
     * (none for GET), then once more: we answer on that last call, and
     * after a worker resumes the connection, once again. */
    struct request *r = *state;
    if (r == NULL) {
        if ((r = calloc(1, sizeof *r)) == NULL)
            return MHD_NO;
        r->conn = conn;
        *state = r;
        return MHD_YES;
    }
    if (*upload_size != 0) {
        *upload_size = 0; /* a body is not expected; it is read and ignored */
        return MHD_YES;
    }
    if (r->ran) /* back from a worker: its answer, or none when the client has gone */
        return r->status != 0 ? respond(conn, r->status, r->type, r->body, r->id) : MHD_NO;
    read_deadline(conn, false); /* the whole request is in */
    return route(r, url, method);
}

/* ------------------------------------------------------------------------
 * Start-up: the command line, the database
 */

static void usage(void)
{
    fprintf(stderr, "usage: reportd [--listen HOST:PORT] [--db sqlite:PATH | --db "
                    "postgres:CONNINFO]\n"
                    "               [--upstream URL] [--budget-ms N] [--drain-ms N] [--read-ms N]\n"
                    "               [--compute-slots N] [--db-slots N] [--track] [--no-ctx]\n");
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

/* A number of slots: 1 to MAX_SLOTS. */
static long slot_count(const char *s)
{
    long v = number(s);
    if (v < 1 || v > MAX_SLOTS)
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
        if (strcmp(a, "--no-ctx") == 0 || strcmp(a, "--track") == 0) {
            *(a[2] == 'n' ? &cfg.no_ctx : &cfg.track) = true;
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
        else if (strcmp(a, "--read-ms") == 0)
            cfg.read_ms = number(v);
        else if (strcmp(a, "--compute-slots") == 0 || strcmp(a, "--db-slots") == 0)
            *(a[2] == 'c' ? &cfg.compute_slots : &cfg.db_slots) = slot_count(v);
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
    sqlite3_close(db);
    if (sqlite_query(ctx_background(), &sqlite_conns[0], 0) != 0)
        die("the report query fails on this database");
}

/* libmicrohttpd's error messages, marked as such in the log.  It reports a
 * handler returning MHD_NO as an "internal error", but reportd does that on
 * purpose for a client that has gone, so that message is left out, and so
 * is the one for a connection closed while its request was coming in: the
 * read deadline does that on purpose too (the metrics count them). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (strstr(msg, "Application reported internal error") != NULL ||
        strstr(msg, "disconnected when reading request") != NULL)
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
    /* Tracking keeps every context's creation site for /debug/ctx, at a
     * cost on every creation: on request only. */
    if (cfg.track)
        ctx_track(true);
    /* SIGINT and SIGTERM end this context; a second one kills at once. */
    static const int sigs[] = { SIGINT, SIGTERM };
    ctx_t *stop = ctx_with_signals(ctx_background(), sigs, 2, NULL);
    base = ctx_with_cancel(ctx_background(), &base_cancel);
    if (stop == NULL || base == NULL)
        die("cannot make the server's contexts");
    signal(SIGPIPE, SIG_IGN);
    if (getrandom(&id_base, sizeof id_base, 0) != (ssize_t)sizeof id_base)
        id_base = (uint64_t)ctx_now() ^ (uint64_t)getpid() << 40;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
        pthread_key_create(&easy_key, easy_free) != 0)
        die("cannot start libcurl");

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
    int n = cores > 0 ? (int)cores : 1;
    /* A query holds its slot through more than its CPU work (the look-up of
     * the file, SQLite's file lock): two per core served 5-39% more
     * requests/s with a lower p99 than one per core in alternating runs,
     * where two per core for the computation gave nothing. */
    slots_init(&compute_slots, cfg.compute_slots > 0 ? (int)cfg.compute_slots : n);
    slots_init(&db_slots, cfg.db_slots > 0 ? (int)cfg.db_slots : 2 * n);
    pthread_attr_init(&worker_attr);
    pthread_attr_setdetachstate(&worker_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&worker_attr, 256 * 1024);

    /* A connection costs a socket and no thread: allow as many as the fd
     * limit, raised to its hard maximum. */
    struct rlimit nofile;
    unsigned max_conns = 1000;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
        getrlimit(RLIMIT_NOFILE, &nofile);
        if (nofile.rlim_cur > 2048)
            max_conns = nofile.rlim_cur > 1000000 ? 1000000 : (unsigned)nofile.rlim_cur - 1024;
    }

    /* The event loop: epoll, a thread per core, suspend and resume for the
     * requests that go to a worker.  The idle timeout ends quiet keep-alive
     * connections, the read deadline (on_connection) slow ones; the memory
     * limit bounds headers (larger ones get 431) and what an idle
     * connection can hold. */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC |
            MHD_USE_ERROR_LOG | (cfg.listen.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, handler, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&cfg.listen, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)n, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)15, MHD_OPTION_CONNECTION_LIMIT,
        max_conns, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16384,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096, MHD_OPTION_END);
    if (d == NULL)
        die("cannot listen (address in use?)");
    pthread_t sweep;
    if (pthread_create(&sweep, NULL, sweeper, base) != 0)
        die("cannot start a thread");
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
    pthread_join(sweep, NULL);
    MHD_stop_daemon(d);

    for (int i = 0; i < MAX_SLOTS; i++)
        sqlite_conn_close(&sqlite_conns[i]);
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
