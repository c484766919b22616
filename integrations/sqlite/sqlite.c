/*
 * libctx-sqlite: sqlite3_step and sqlite3_exec under a context.
 *
 * Each call on a cancellable context installs a progress handler and a busy
 * handler that look at that call's own context, runs the SQLite call, and then
 * puts back what the connection had before.  The connection's mutex is held
 * from installing to restoring.  SQLite takes the same recursive mutex for
 * every call on the connection, so no other thread can step a statement of
 * this connection while our handlers are installed: a handler only ever sees
 * the statement of the call that installed it.  That is what makes a cancel
 * hit one statement and never its neighbours on the same connection.
 *
 * SQLite cannot report the busy timeout a connection has, and installing a
 * busy handler erases it.  The library therefore reads it once per connection
 * with PRAGMA busy_timeout and keeps it in a small registry, keyed by the
 * connection and emptied by SQLite itself when the connection closes (the
 * entry is the user data of a tiny SQL function whose destructor removes it).
 */
#include <ctx/sqlite.h>

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

/* ---------------------------------------------------------------------------
 * The per-connection registry of busy timeouts.
 */

#define REGISTRY_BUCKETS 64

struct conn_state {
    sqlite3 *db;
    int busy_ms;
    struct conn_state *next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn_state *registry[REGISTRY_BUCKETS];

/* Bumped on every change of the registry, so that a thread's cached answer
 * (below) is used only while nothing has changed since it was taken. */
static atomic_uint_fast64_t registry_gen = 1;

/* The last answer this thread got: a hit costs one atomic load and two
 * comparisons instead of a global lock. */
static _Thread_local struct {
    sqlite3 *db;
    int busy_ms;
    uint_fast64_t gen;
} registry_cache;

static size_t bucket_of(const sqlite3 *db)
{
    uintptr_t p = (uintptr_t)db;
    return (size_t)((p >> 4) ^ (p >> 12)) % REGISTRY_BUCKETS;
}

/* Called with registry_lock held. */
static void registry_changed(void)
{
    /* Release: pairs with the acquire load in busy_timeout_of, so that a
     * thread that sees the new generation also sees the changed entries. */
    atomic_fetch_add_explicit(&registry_gen, 1, memory_order_release);
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

/* Looks db up in the registry; with registry_lock held. */
static struct conn_state *registry_find(sqlite3 *db)
{
    struct conn_state *s = registry[bucket_of(db)];
    while (s != NULL && s->db != db)
        s = s->next;
    return s;
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

/* The busy timeout of db in milliseconds, from this thread's cache, the
 * registry, or (the first time) the connection itself.  The caller holds the
 * connection's mutex, so no other thread registers db at the same time. */
static int busy_timeout_of(sqlite3 *db, int *ms)
{
    /* Acquire: pairs with the release in registry_changed. */
    uint_fast64_t gen = atomic_load_explicit(&registry_gen, memory_order_acquire);
    if (registry_cache.db == db && registry_cache.gen == gen) {
        *ms = registry_cache.busy_ms;
        return SQLITE_OK;
    }

    pthread_mutex_lock(&registry_lock);
    struct conn_state *s = registry_find(db);
    if (s != NULL) {
        *ms = s->busy_ms;
        registry_cache.db = db;
        registry_cache.busy_ms = s->busy_ms;
        registry_cache.gen = atomic_load_explicit(&registry_gen, memory_order_relaxed);
    }
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
    s->busy_ms = busy_ms;
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
    *ms = busy_ms;
    return SQLITE_OK;
}

int ctx_sqlite_busy_timeout(sqlite3 *db, int ms)
{
    if (db == NULL) {
        errno = EINVAL;
        return SQLITE_MISUSE;
    }
    sqlite3_mutex *m = sqlite3_db_mutex(db);
    sqlite3_mutex_enter(m);
    int rc = sqlite3_busy_timeout(db, ms);
    int old;
    if (rc == SQLITE_OK)
        rc = busy_timeout_of(db, &old);
    if (rc == SQLITE_OK) {
        pthread_mutex_lock(&registry_lock);
        struct conn_state *s = registry_find(db);
        if (s != NULL)
            s->busy_ms = ms < 0 ? 0 : ms;
        registry_changed();
        pthread_mutex_unlock(&registry_lock);
    }
    sqlite3_mutex_leave(m);
    return rc;
}

/* ---------------------------------------------------------------------------
 * One call under a context.
 */

struct call {
    ctx_t *ctx;
    sqlite3 *db;
    sqlite3_mutex *mutex;
    int busy_ms;
    ctx_time_t busy_start;
    bool interrupted;  /* the progress handler stopped the statement */
    bool busy_gave_up; /* the busy handler stopped waiting because ctx ended */
    struct call *outer;
};

/* The calls running on this thread, innermost first: a row callback of
 * ctx_sqlite_exec may itself call ctx_sqlite_step on the same connection, and
 * the outer call's handlers must come back when the inner one returns. */
static _Thread_local struct call *current_call;

static int progress_handler(void *arg)
{
    struct call *c = arg;
    if (ctx_err(c->ctx) == 0)
        return 0;
    c->interrupted = true;
    return 1;
}

/* SQLite's own busy handler sleeps 1, 2, 5, 10, ... ms between attempts; the
 * same schedule keeps the first retries quick and later ones cheap. */
static const unsigned char busy_delays_ms[] = { 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 };

static int busy_handler(void *arg, int count)
{
    struct call *c = arg;
    if (c->busy_ms <= 0)
        return 0;
    ctx_time_t now = ctx_now();
    if (count == 0)
        c->busy_start = now;
    ctx_duration_t left = (ctx_duration_t)c->busy_ms * CTX_MILLISECOND - (now - c->busy_start);
    if (left <= 0)
        return 0;
    size_t n = sizeof busy_delays_ms / sizeof busy_delays_ms[0];
    ctx_duration_t delay =
        (ctx_duration_t)busy_delays_ms[(size_t)count < n ? (size_t)count : n - 1] * CTX_MILLISECOND;
    if (delay > left)
        delay = left;
    if (ctx_wait(c->ctx, delay) != 0) {
        c->busy_gave_up = true;
        return 0;
    }
    return 1;
}

static void install(struct call *c)
{
    sqlite3_progress_handler(c->db, CTX_SQLITE_PROGRESS_OPS, progress_handler, c);
    sqlite3_busy_handler(c->db, busy_handler, c);
}

static int call_begin(struct call *c)
{
    c->mutex = sqlite3_db_mutex(c->db);
    sqlite3_mutex_enter(c->mutex);
    int rc = busy_timeout_of(c->db, &c->busy_ms);
    if (rc != SQLITE_OK) {
        sqlite3_mutex_leave(c->mutex);
        return rc;
    }
    install(c);
    c->outer = current_call;
    current_call = c;
    return SQLITE_OK;
}

static void call_end(struct call *c)
{
    struct call *outer = c->outer;
    while (outer != NULL && outer->db != c->db)
        outer = outer->outer;
    if (outer != NULL) {
        install(outer);
    } else {
        sqlite3_progress_handler(c->db, 0, NULL, NULL);
        if (c->busy_ms > 0)
            sqlite3_busy_timeout(c->db, c->busy_ms);
        else
            sqlite3_busy_handler(c->db, NULL, NULL);
    }
    current_call = c->outer;
    sqlite3_mutex_leave(c->mutex);
}

static bool ended_by_ctx(const struct call *c, int rc)
{
    return ((rc & 0xff) == SQLITE_INTERRUPT && c->interrupted) ||
           ((rc & 0xff) == SQLITE_BUSY && c->busy_gave_up);
}

/* The roots can never be done: a call under them needs no handler at all. */
static bool never_done(ctx_t *ctx)
{
    return ctx == ctx_background() || ctx == ctx_todo();
}

int ctx_sqlite_step(ctx_t *ctx, sqlite3_stmt *stmt)
{
    if (ctx == NULL || stmt == NULL) {
        errno = EINVAL;
        return SQLITE_MISUSE;
    }
    if (ctx_err(ctx) != 0)
        return SQLITE_INTERRUPT;
    if (never_done(ctx))
        return sqlite3_step(stmt);

    struct call c = { .ctx = ctx, .db = sqlite3_db_handle(stmt) };
    int rc = call_begin(&c);
    if (rc != SQLITE_OK)
        return rc;
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
    int rc = call_begin(&c);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_exec(db, sql, row, arg, errmsg);
    call_end(&c);
    if (ended_by_ctx(&c, rc)) {
        set_ctx_errmsg(errmsg, ctx_err(ctx));
        return SQLITE_INTERRUPT;
    }
    return rc;
}
