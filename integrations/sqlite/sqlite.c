/* SPDX-License-Identifier: MIT */

/*
 * libctx-sqlite: sqlite3_step and sqlite3_exec under a context.
 *
 * The first call on a cancellable context that uses a connection installs
 * the library's progress handler and busy handler on it, for as long as the
 * connection lives.  A call publishes its context in a thread-local "current
 * call" for the duration of the SQLite call and nothing else.  SQLite runs
 * both handlers on the thread that executes the statement, which is the
 * thread that made the call, so a handler always finds the context of the
 * call that runs it: a cancel hits the statement run under that context and
 * never a neighbour on the same connection, whatever the threads do, and no
 * shared state is written per call.  (Installing handlers per call instead
 * costs several mutex round trips per step: 1.5x to 3x on a scan.)
 *
 * SQLite cannot report a connection's busy timeout, and installing a busy
 * handler erases it, so the library reads it once (PRAGMA busy_timeout) when
 * it installs its handlers and keeps it in a small registry entry per
 * connection; its busy handler then waits the way SQLite's own would, up to
 * that timeout, and ends the wait at once when the call's context ends.  The
 * entry is the user data of a tiny SQL function whose destructor SQLite runs
 * when the connection closes, so an entry never outlives its connection.
 */
#include <ctx/sqlite.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>
#include <time.h>

/* The thread-local words below are read on every step.  The initial-exec
 * model makes each access one instruction instead of a call to
 * __tls_get_addr; glibc keeps spare static TLS for libraries like this one
 * that are loaded with dlopen. */
#if defined(__GNUC__) || defined(__clang__)
#define CTX_SQLITE_TLS __attribute__((tls_model("initial-exec")))
#else
#define CTX_SQLITE_TLS
#endif

/* ---------------------------------------------------------------------------
 * One call under a context, as the handlers see it.
 */

struct call {
    ctx_t *ctx;
    sqlite3 *db;
    bool interrupted;  /* the progress handler stopped the statement */
    bool busy_gave_up; /* the busy handler stopped waiting because ctx ended */
    struct call *outer;
};

/* The calls running on this thread, innermost first.  A row callback of
 * ctx_sqlite_exec may itself call ctx_sqlite_step, on the same connection or
 * another; a handler takes the innermost call on its own connection. */
static _Thread_local struct call *current_call CTX_SQLITE_TLS;

static struct call *call_on(sqlite3 *db)
{
    struct call *c = current_call;
    while (c != NULL && c->db != db)
        c = c->outer;
    return c;
}

/* ---------------------------------------------------------------------------
 * The per-connection registry: one entry per connection that has the
 * library's handlers, with the connection's busy timeout.
 */

#define REGISTRY_BUCKETS 64

struct conn_state {
    sqlite3 *db;
    atomic_int busy_ms; /* written by ctx_sqlite_busy_timeout, read by waits */
    struct conn_state *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn_state *registry[REGISTRY_BUCKETS];

/* Bumped on every change of the registry, so that a thread's cached answer
 * (below) is used only while nothing has changed since it was taken. */
static atomic_uint_fast64_t registry_gen = 1;

/* The last connection this thread found registered: a hit costs one atomic
 * load and two comparisons instead of a global lock. */
static _Thread_local struct {
    sqlite3 *db;
    uint_fast64_t gen;
} registry_cache CTX_SQLITE_TLS;

static size_t bucket_of(const sqlite3 *db)
{
    uintptr_t p = (uintptr_t)db;
    return (size_t)((p >> 4) ^ (p >> 12)) % REGISTRY_BUCKETS;
}

/* Called with registry_lock held. */
static void registry_changed(void)
{
    /* Release: pairs with the acquire load in ensure_installed, so that a
     * thread that sees the new generation also sees the changed entries. */
    atomic_fetch_add_explicit(&registry_gen, 1, memory_order_release);
}

/* Looks db up in the registry; with registry_lock held. */
static struct conn_state *registry_find(sqlite3 *db)
{
    struct conn_state *s = registry[bucket_of(db)];
    while (s != NULL && s->db != db)
        s = s->next;
    return s;
}

static void state_destroy(void *p)
{
    struct conn_state *s = p;
    pthread_mutex_lock(&registry_lock);
    struct conn_state **link = &registry[bucket_of(s->db)];
    while (*link != NULL && *link != s)
        link = &(*link)->next;
    if (*link == s)
        *link = s->next;
    registry_changed();
    pthread_mutex_unlock(&registry_lock);
    sqlite3_free(s);
}

/* The SQL function exists only for its destructor; calling it gives NULL. */
static void state_function(sqlite3_context *fctx, int argc, sqlite3_value **argv)
{
    (void)argc;
    (void)argv;
    sqlite3_result_null(fctx);
}

/* ---------------------------------------------------------------------------
 * The handlers
 */

static int progress_handler(void *arg)
{
    struct conn_state *s = arg;
    struct call *c = call_on(s->db);
    if (c == NULL || ctx_err(c->ctx) == 0)
        return 0;
    c->interrupted = true;
    return 1;
}

/* SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between attempts; the
 * same schedule keeps the first retries quick and later ones cheap.  Waits
 * are measured on the clock, so the total is the busy timeout. */
static const unsigned char busy_delays_ms[] = { 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 };

static _Thread_local ctx_time_t busy_start CTX_SQLITE_TLS;

static int busy_handler(void *arg, int count)
{
    struct conn_state *s = arg;
    int busy_ms = atomic_load_explicit(&s->busy_ms, memory_order_relaxed);
    if (busy_ms <= 0)
        return 0;
    ctx_time_t now = ctx_now();
    if (count == 0)
        busy_start = now;
    ctx_duration_t left = (ctx_duration_t)busy_ms * CTX_MILLISECOND - (now - busy_start);
    if (left <= 0)
        return 0;
    size_t n = sizeof busy_delays_ms / sizeof busy_delays_ms[0];
    ctx_duration_t delay =
        (ctx_duration_t)busy_delays_ms[(size_t)count < n ? (size_t)count : n - 1] * CTX_MILLISECOND;
    if (delay > left)
        delay = left;
    /* A plain sqlite3_step on this connection has no context: it waits as
     * SQLite's own busy timeout would. */
    struct call *c = call_on(s->db);
    if (c == NULL) {
        ctx_sleep(ctx_background(), delay);
        return 1;
    }
    if (ctx_wait(c->ctx, delay) != 0) {
        c->busy_gave_up = true;
        return 0;
    }
    return 1;
}

static int read_busy_timeout(sqlite3 *db, int *ms)
{
    sqlite3_stmt *stmt;
    int rc = sqlite3_prepare_v2(db, "PRAGMA busy_timeout", -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        *ms = sqlite3_column_int(stmt, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(stmt);
    return rc;
}

/* Registers db and installs the handlers, with the connection's mutex held
 * so that no other thread does the same at the same time. */
static int install(sqlite3 *db)
{
    pthread_mutex_lock(&registry_lock);
    struct conn_state *s = registry_find(db);
    pthread_mutex_unlock(&registry_lock);
    if (s != NULL)
        return SQLITE_OK;

    int busy_ms = 0;
    int rc = read_busy_timeout(db, &busy_ms);
    if (rc != SQLITE_OK)
        return rc;
    s = sqlite3_malloc(sizeof *s);
    if (s == NULL)
        return SQLITE_NOMEM;
    s->db = db;
    atomic_init(&s->busy_ms, busy_ms);
    pthread_mutex_lock(&registry_lock);
    size_t b = bucket_of(db);
    s->next = registry[b];
    registry[b] = s;
    registry_changed();
    pthread_mutex_unlock(&registry_lock);

    /* From here on SQLite owns s: it calls state_destroy when the connection
     * closes, and at once if the function cannot be created. */
    rc = sqlite3_create_function_v2(db, "ctx_sqlite_state_", 0, SQLITE_UTF8, s, state_function,
                                    NULL, NULL, state_destroy);
    if (rc != SQLITE_OK)
        return rc;
    sqlite3_progress_handler(db, CTX_SQLITE_PROGRESS_OPS, progress_handler, s);
    sqlite3_busy_handler(db, busy_handler, s);
    return SQLITE_OK;
}

/* Makes sure db has the library's handlers: usually a hit in this thread's
 * cache. */
static int ensure_installed(sqlite3 *db)
{
    /* Acquire: pairs with the release in registry_changed. */
    uint_fast64_t gen = atomic_load_explicit(&registry_gen, memory_order_acquire);
    if (registry_cache.db == db && registry_cache.gen == gen)
        return SQLITE_OK;
    sqlite3_mutex *m = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(m);
    int rc = install(db);
    sqlite3_mutex_leave(m);
    if (rc == SQLITE_OK) {
        registry_cache.db = db;
        registry_cache.gen = gen;
    }
    return rc;
}

int ctx_sqlite_busy_timeout(sqlite3 *db, int ms)
{
    if (db == NULL) {
        errno = EINVAL;
        return SQLITE_MISUSE;
    }
    int rc = ensure_installed(db);
    if (rc != SQLITE_OK)
        return rc;
    pthread_mutex_lock(&registry_lock);
    struct conn_state *s = registry_find(db);
    if (s != NULL)
        atomic_store_explicit(&s->busy_ms, ms < 0 ? 0 : ms, memory_order_relaxed);
    pthread_mutex_unlock(&registry_lock);
    return SQLITE_OK;
}

/* ---------------------------------------------------------------------------
 * The calls
 */

static void call_begin(struct call *c)
{
    c->outer = current_call;
    current_call = c;
}

static void call_end(struct call *c)
{
    current_call = c->outer;
}

static bool ended_by_ctx(const struct call *c, int rc)
{
    return ((rc & 0xff) == SQLITE_INTERRUPT && c->interrupted) ||
           ((rc & 0xff) == SQLITE_BUSY && c->busy_gave_up);
}

/* The roots can never be done: a call under them needs no handler at all.
 * Their addresses never change, so they are asked for once. */
static ctx_t *root_background, *root_todo;
static pthread_once_t roots_once = PTHREAD_ONCE_INIT;

static void roots_init(void)
{
    root_background = ctx_background();
    root_todo = ctx_todo();
}

static bool never_done(ctx_t *ctx)
{
    pthread_once(&roots_once, roots_init);
    return ctx == root_background || ctx == root_todo;
}

int ctx_sqlite_step(ctx_t *ctx, sqlite3_stmt *stmt)
{
    if (ctx == NULL || stmt == NULL) {
        errno = EINVAL;
        return SQLITE_MISUSE;
    }
    if (ctx_err(ctx) != 0) {
        /* As after an interrupt: a statement left in the middle of a scan
         * would keep its read transaction (and its lock) open. */
        sqlite3_reset(stmt);
        return SQLITE_INTERRUPT;
    }
    if (never_done(ctx))
        return sqlite3_step(stmt);

    struct call c = { .ctx = ctx, .db = sqlite3_db_handle(stmt) };
    int rc = ensure_installed(c.db);
    if (rc != SQLITE_OK)
        return rc;
    call_begin(&c);
    rc = sqlite3_step(stmt);
    call_end(&c);
    if (ended_by_ctx(&c, rc)) {
        sqlite3_reset(stmt);
        return SQLITE_INTERRUPT;
    }
    return rc;
}

static void set_ctx_errmsg(char **errmsg, int err)
{
    if (errmsg == NULL)
        return;
    sqlite3_free(*errmsg);
    *errmsg = sqlite3_mprintf("interrupted: %s", ctx_strerror(err));
}

int ctx_sqlite_exec(ctx_t *ctx, sqlite3 *db, const char *sql,
                    int (*row)(void *arg, int ncols, char **values, char **names), void *arg,
                    char **errmsg)
{
    if (errmsg != NULL)
        *errmsg = NULL;
    if (ctx == NULL || db == NULL || sql == NULL) {
        errno = EINVAL;
        return SQLITE_MISUSE;
    }
    int err = ctx_err(ctx);
    if (err != 0) {
        set_ctx_errmsg(errmsg, err);
        return SQLITE_INTERRUPT;
    }
    if (never_done(ctx))
        return sqlite3_exec(db, sql, row, arg, errmsg);

    struct call c = { .ctx = ctx, .db = db };
    int rc = ensure_installed(db);
    if (rc != SQLITE_OK)
        return rc;
    call_begin(&c);
    rc = sqlite3_exec(db, sql, row, arg, errmsg);
    call_end(&c);
    if (ended_by_ctx(&c, rc)) {
        set_ctx_errmsg(errmsg, ctx_err(ctx));
        return SQLITE_INTERRUPT;
    }
    return rc;
}
