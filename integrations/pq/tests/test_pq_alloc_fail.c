/* SPDX-License-Identifier: MIT */

/*
 * libctx-pq when memory runs out.  The integration's own allocations are
 * the transaction (calloc) and, through the core, the AfterFunc that rolls
 * it back and the done fd a wait polls.  The core's allocator is replaced by
 * one that fails the Nth allocation, for every N until a round meets no
 * failure: each call must succeed or fail cleanly with ENOMEM, leave the
 * connection idle outside any transaction, leak nothing (ASan checks), and
 * a cancel must still work when the done fd could not be made (the wait
 * then polls the context).
 */
#include "check.h"

#include "pq_test.h"

/* The transaction itself comes from calloc.  Outside the sanitizers (whose
 * runtimes own calloc) this program interposes calloc with one that can
 * fail once on request, which reaches libctx-pq's call too: glibc exports
 * the real one as __libc_calloc. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define INTERPOSE_CALLOC 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define INTERPOSE_CALLOC 0
#endif
#endif
#if !defined(INTERPOSE_CALLOC) && defined(__GLIBC__)
#define INTERPOSE_CALLOC 1
#endif

#if INTERPOSE_CALLOC
extern void *__libc_calloc(size_t n, size_t size);
static atomic_int fail_next_calloc;

void *calloc(size_t n, size_t size)
{
    if (atomic_exchange(&fail_next_calloc, 0))
        return NULL;
    return __libc_calloc(n, size);
}

static void test_tx_allocation_fails(PGconn *conn)
{
    ctx_pq_tx_t *tx = (ctx_pq_tx_t *)1;
    atomic_store(&fail_next_calloc, 1);
    CHECK_EQ_INT(ctx_pq_begin(ctx_background(), conn, &tx), ENOMEM);
    CHECK_EQ_INT(atomic_load(&fail_next_calloc), 0);
    CHECK_NULL(tx);
    /* BEGIN was never sent. */
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    CHECK_EQ_INT(ctx_pq_begin(ctx_background(), conn, &tx), 0);
    CHECK_EQ_INT(ctx_pq_rollback(tx), 0);
}
#else
static void test_tx_allocation_fails(PGconn *conn)
{
    (void)conn;
    fprintf(stderr, "   (calloc cannot be interposed under a sanitizer: not run)\n");
}
#endif

static bool round_fails_at(PGconn *conn, long n)
{
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    long before = check_alloc_failed();
    check_alloc_fail_at(n, false);

    PGresult *r = ctx_pq_exec(ctx, conn, "SELECT 1");
    CHECK_NOT_NULL(r);
    CHECK_STR(PQgetvalue(r, 0, 0), "1");
    PQclear(r);

    ctx_pq_tx_t *tx = NULL;
    int rc = ctx_pq_begin(ctx, conn, &tx);
    CHECK_MSG(rc == 0 || rc == ENOMEM, "begin: %d", rc);
    if (rc == 0) {
        PQclear(ctx_pq_exec(ctx, conn, "INSERT INTO ctx_pq_alloc VALUES (1)"));
        CHECK_EQ_INT(ctx_pq_rollback(tx), 0);
    } else {
        CHECK_NULL(tx);
    }
    CHECK_EQ_INT(PQtransactionStatus(conn), PQTRANS_IDLE);
    check_alloc_fail_none();
    bool clean = check_alloc_failed() == before;
    ctx_cancel(cancel);
    ctx_unref(ctx);
    return clean;
}

/* A cancel reaches a statement even when every allocation fails: no done fd,
 * so the wait polls the context. */
static void test_cancel_without_done_fd(PGconn **connp)
{
    PGconn *conn = *connp;
    ctx_cancel_t *cancel;
    ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
    pq_canceller_t c;
    check_alloc_fail_at(0, true);
    pq_cancel_later(&c, cancel, 100 * CTX_MILLISECOND);
    CHECK_FAILS_WITH(ctx_pq_exec(ctx, conn, "SELECT pg_sleep(10)"), CTX_CANCELED);
    pq_canceller_join(&c);
    check_alloc_fail_none();
    CHECK(check_alloc_failed() > 0);
    /* Kept, or given up when the server was slower than the grace. */
    if (pq_kept_or_reopen(connp, pq_conninfo()))
        CHECK_EQ_INT(pq_int(*connp, "SELECT 1"), 1);
    ctx_unref(ctx);
}

int main(void)
{
    check_alloc_install();
    PGconn *conn = pq_open();
    pq_ok(conn, "CREATE TEMP TABLE ctx_pq_alloc(x int)");
    long n = 0;
    while (!round_fails_at(conn, n)) {
        n++;
        CHECK_LE_INT(n, 10000);
    }
    fprintf(stderr, "failed each of the first %ld allocations in turn\n", n);
    CHECK(n > 0);
    CHECK_EQ_INT(pq_int(conn, "SELECT count(*) FROM ctx_pq_alloc"), 0);
    test_cancel_without_done_fd(&conn);
    test_tx_allocation_fails(conn);
    PQfinish(conn);
    return 0;
}
