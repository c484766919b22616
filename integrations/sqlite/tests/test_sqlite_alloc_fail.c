/* SPDX-License-Identifier: MIT */

/*
 * libctx-sqlite when memory runs out.  The integration allocates through
 * SQLite (sqlite3_malloc, sqlite3_mprintf, sqlite3_create_function_v2), so
 * SQLite's allocator is replaced by one that fails the Nth allocation, for
 * every N until a call completes without meeting a failure.  Each call must
 * give SQLITE_NOMEM or succeed; never crash, leak (ASan checks) or leave the
 * connection unusable.
 */
#include "check.h"

#include <ctx/sqlite.h>

static sqlite3_mem_methods real;
static atomic_long countdown = -1; /* the allocation that fails; -1: none */
static atomic_long failures;

static bool fail_now(void)
{
    long n = atomic_load(&countdown);
    if (n < 0)
        return false;
    if (atomic_fetch_sub(&countdown, 1) == 0) {
        atomic_fetch_add(&failures, 1);
        return true;
    }
    return false;
}

static void *failing_malloc(int n)
{
    return fail_now() ? NULL : real.xMalloc(n);
}

static void *failing_realloc(void *p, int n)
{
    return fail_now() ? NULL : real.xRealloc(p, n);
}

/* One round: a fresh connection with a busy timeout, then the calls of the
 * integration on it under a cancellable context, the Nth allocation failing.
 * Returns true when no allocation failed. */
static bool round_fails_at(long n)
{
    sqlite3 *db = NULL;
    CHECK_EQ_INT(sqlite3_open(":memory:", &db), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_busy_timeout(db, 1234), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_exec(db, "CREATE TABLE t(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_stmt *stmt = NULL;
    CHECK_EQ_INT(sqlite3_prepare_v2(db, "INSERT INTO t VALUES (1)", -1, &stmt, NULL), SQLITE_OK);
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    ctx_t *done = ctx_with_cancel(ctx_background(), &cancel);
    ctx_cancel(cancel);

    long before = atomic_load(&failures);
    atomic_store(&countdown, n);
    int rc = ctx_sqlite_step(ctx, stmt);
    CHECK_MSG(rc == SQLITE_DONE || rc == SQLITE_NOMEM, "step: %d", rc);
    char *msg = NULL;
    rc = ctx_sqlite_exec(ctx, db, "INSERT INTO t VALUES (2); SELECT * FROM t", NULL, NULL, &msg);
    CHECK_MSG(rc == SQLITE_OK || rc == SQLITE_NOMEM, "exec: %d", rc);
    sqlite3_free(msg);
    msg = NULL;
    CHECK_EQ_INT(ctx_sqlite_exec(done, db, "SELECT 1", NULL, NULL, &msg), SQLITE_INTERRUPT);
    /* The message may be missing when its allocation failed. */
    if (msg != NULL)
        CHECK_STR(msg, "interrupted: context canceled");
    sqlite3_free(msg);
    CHECK_MSG(ctx_sqlite_busy_timeout(db, 1234) != SQLITE_MISUSE, "busy timeout");
    atomic_store(&countdown, -1);
    bool clean = atomic_load(&failures) == before;

    /* The connection still works. */
    sqlite3_reset(stmt);
    CHECK_EQ_INT(ctx_sqlite_step(ctx, stmt), SQLITE_DONE);
    CHECK_EQ_INT(ctx_sqlite_exec(ctx, db, "SELECT count(*) FROM t", NULL, NULL, NULL), SQLITE_OK);

    sqlite3_finalize(stmt);
    ctx_unref(ctx);
    ctx_unref(done);
    CHECK_EQ_INT(sqlite3_close(db), SQLITE_OK);
    return clean;
}

int main(void)
{
    CHECK_EQ_INT(sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real), SQLITE_OK);
    sqlite3_mem_methods failing = real;
    failing.xMalloc = failing_malloc;
    failing.xRealloc = failing_realloc;
    CHECK_EQ_INT(sqlite3_config(SQLITE_CONFIG_MALLOC, &failing), SQLITE_OK);
    CHECK_EQ_INT(sqlite3_initialize(), SQLITE_OK);

    long n = 0;
    while (!round_fails_at(n)) {
        n++;
        CHECK_LE_INT(n, 100000);
    }
    fprintf(stderr, "   failed each of the first %ld allocations in turn\n", n);
    CHECK(n > 0);
    return 0;
}
