/*
 * libctx: Go's context package for C.
 *
 * A context carries three things down a tree of work: a cancellation signal,
 * a deadline, and request-scoped values.  Contexts form a tree.  Cancelling a
 * context cancels every context derived from it (its descendants), and never
 * its parent or siblings.  A derived context whose parent is already done is
 * done at birth.
 *
 * Ownership.  Every function that returns a ctx_t * returns a new reference
 * that the caller drops with ctx_unref() exactly once; ctx_ref() takes one
 * more.  A child holds a reference to its parent, so a parent may be unref'd
 * while its children live.  The roots (ctx_background(), ctx_todo()) are
 * static: ref and unref do nothing to them.  Dropping the last reference to a
 * context detaches it from its parent and frees it, so forgetting to cancel
 * never leaks (unlike Go, where an uncancelled child stays in its parent's
 * children map until the parent is cancelled).
 *
 * Threading.  Every function may be called from any thread on the same
 * context at the same time.  Cancellation is synchronous: when ctx_cancel()
 * returns, the context and all of its descendants are done, even when other
 * threads cancel parts of the same tree at the same moment.
 *
 * Callbacks.  An AfterFunc callback runs exactly once or never.  It runs on
 * the thread that cancels the context (the caller of ctx_cancel() on it or on
 * an ancestor), after the whole subtree is marked done and with no library
 * lock held; when the context ends by its deadline it runs on a thread owned
 * by the library.  Never cancel a context while holding a lock that one of
 * its callbacks takes.
 *
 * fork(2).  The library's fork handlers wait until no thread holds a library
 * lock, so the child inherits a consistent tree: contexts, deadlines and
 * done fds keep working in both processes.  The child's timer thread starts
 * on its first call that waits (ctx_wait, ctx_sleep, ctx_cond_wait,
 * ctx_done_fd) or makes a deadline; a child that only polls ctx_err on an
 * inherited deadline must make one such call first.  Likewise the child's
 * signal thread (ctx_with_signals) starts on its first call that waits or
 * makes a signal context; signals that arrive before then wait for it.
 *
 * Errors.  Constructors return NULL and set errno.  Other calls return 0 or
 * a positive errno-style code.  There is no hidden global error state.
 */
#ifndef CTX_H
#define CTX_H

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#if defined(CTX_STATIC_DEFINE)
#define CTX_EXPORT
#elif defined(_WIN32)
#if defined(CTX_BUILDING)
#define CTX_EXPORT __declspec(dllexport)
#else
#define CTX_EXPORT __declspec(dllimport)
#endif
#elif defined(__GNUC__)
#define CTX_EXPORT __attribute__((visibility("default")))
#else
#define CTX_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
/* In C++ the function ctx_cancel and the type struct ctx_cancel share a
 * name, which g++'s -Wshadow reports; the names are the contract's. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#endif

/* ---------------------------------------------------------------------------
 * Types and constants
 */

/* A context.  Opaque, reference counted, and immutable to its users. */
typedef struct ctx ctx_t;

/* The capability to cancel one context (Go's CancelFunc).  Valid for as long
 * as its context is alive.  Debug builds (without NDEBUG) abort with a
 * message when a handle is used after its context was freed, as long as the
 * memory has not been reused. */
typedef struct ctx_cancel ctx_cancel_t;

/* One AfterFunc registration (Go's stop function). */
typedef struct ctx_after ctx_after_t;

/*
 * A value key.  A key is identified by its ADDRESS, never by its name, so two
 * libraries can never collide by choosing the same name.  Declare keys as
 * static objects:
 *
 *     static const ctx_key_t request_id = { .name = "request-id" };
 *
 * name is used by ctx_describe() only.  format, when set, writes the text of
 * a value bound to this key into buf (snprintf-style: returns the full
 * length) for ctx_describe(); without it the value shows as "...".
 */
typedef struct ctx_key {
    const char *name;
    size_t (*format)(const void *value, char *buf, size_t size);
} ctx_key_t;

/* An instant: nanoseconds on CLOCK_MONOTONIC (or on the test clock). */
typedef int64_t ctx_time_t;
/* A span of time in nanoseconds. */
typedef int64_t ctx_duration_t;

/* Units of ctx_duration_t, as Go's time.Nanosecond ... time.Hour, and
 * CTX_FOREVER: no time limit, for ctx_wait and ctx_poll. */
#define CTX_NANOSECOND  ((ctx_duration_t)1)
#define CTX_MICROSECOND (1000 * CTX_NANOSECOND)
#define CTX_MILLISECOND (1000 * CTX_MICROSECOND)
#define CTX_SECOND      (1000 * CTX_MILLISECOND)
#define CTX_MINUTE      (60 * CTX_SECOND)
#define CTX_HOUR        (60 * CTX_MINUTE)
#define CTX_FOREVER     ((ctx_duration_t)-1)

#define CTX_CANCELED          ECANCELED /* Go's context.Canceled */
#define CTX_DEADLINE_EXCEEDED ETIMEDOUT /* Go's context.DeadlineExceeded */

/* ---------------------------------------------------------------------------
 * Roots (Go: Background, TODO)
 *
 * Never done, no deadline, no values.  Static: ctx_ref() and ctx_unref() on
 * them do nothing, so they need not be unref'd (doing so is harmless).
 */
CTX_EXPORT ctx_t *ctx_background(void);
CTX_EXPORT ctx_t *ctx_todo(void);

/* ---------------------------------------------------------------------------
 * References
 */

/* Takes one more reference to ctx and returns ctx.  ctx_ref(NULL) is NULL. */
CTX_EXPORT ctx_t *ctx_ref(ctx_t *ctx);

/* Drops one reference.  Dropping the last one detaches ctx from its parent
 * (so its parent's cancel no longer visits it), closes its done fd, destroys
 * its value and drops its own reference to its parent.  Freeing a chain of
 * any length is iterative.  ctx_unref(NULL) does nothing.  Dropping more
 * references than were taken is undefined behaviour; debug builds abort with
 * a message. */
CTX_EXPORT void ctx_unref(ctx_t *ctx);

/* ---------------------------------------------------------------------------
 * Derivation
 *
 * Each returns a new reference, or NULL with errno set: EINVAL for a NULL
 * parent (Go panics there) or NULL key; ENOMEM when memory runs out.  On
 * failure nothing is allocated and the parent is unchanged.  `cancel` may be
 * NULL when the caller never cancels by hand; otherwise *cancel receives the
 * cancel capability, valid while the returned context is alive.
 */

/* A child that is done when ctx_cancel(*cancel) is called or when its parent
 * is done, whichever happens first.  O(1): one allocation and, when the
 * parent can ever be done, one short critical section on the parent. */
CTX_EXPORT ctx_t *ctx_with_cancel(ctx_t *parent, ctx_cancel_t **cancel);

/* A child that is also done at `deadline` (on ctx_now()'s clock), with
 * CTX_DEADLINE_EXCEEDED.  A deadline not earlier than the parent's gives a
 * plain cancel context that reports the parent's deadline.  A deadline at or
 * before now gives a context that is done at birth with
 * CTX_DEADLINE_EXCEEDED. */
CTX_EXPORT ctx_t *ctx_with_deadline(ctx_t *parent, ctx_time_t deadline, ctx_cancel_t **cancel);

/* ctx_with_deadline(parent, ctx_now() + timeout, cancel), saturating on
 * overflow.  A negative timeout is a deadline in the past. */
CTX_EXPORT ctx_t *ctx_with_timeout(ctx_t *parent, ctx_duration_t timeout, ctx_cancel_t **cancel);

/* As above; when the deadline passes, err is CTX_DEADLINE_EXCEEDED and the
 * cause is (cause, msg).  When cancelled by hand first, err and cause are
 * CTX_CANCELED.  msg may be NULL; it is copied.  When the parent's deadline
 * is not later, the result is a plain cancel context, as in Go: it ends with
 * the parent, and with the parent's cause, so (cause, msg) is never used. */
CTX_EXPORT ctx_t *ctx_with_deadline_cause(ctx_t *parent, ctx_time_t deadline, int cause,
                                          const char *msg, ctx_cancel_t **cancel);
CTX_EXPORT ctx_t *ctx_with_timeout_cause(ctx_t *parent, ctx_duration_t timeout, int cause,
                                         const char *msg, ctx_cancel_t **cancel);

/* A child carrying (key, value).  Done exactly when the parent is.  value
 * belongs to the new context: destroy(value), if destroy is not NULL, runs
 * exactly once, on the thread that drops the last reference, when the
 * context is freed.  On failure destroy is not called: the caller keeps the
 * value. */
CTX_EXPORT ctx_t *ctx_with_value(ctx_t *parent, const ctx_key_t *key, void *value,
                                 void (*destroy)(void *value));

/* A child that sees its parent's values but is never done, has no deadline
 * and no cause, whatever happens to the parent (Go's WithoutCancel). */
CTX_EXPORT ctx_t *ctx_without_cancel(ctx_t *parent);

/* ---------------------------------------------------------------------------
 * Cancellation (Go: CancelFunc, CancelCauseFunc)
 *
 * Idempotent; only the first cancellation of a context sets its err and
 * cause.  cause 0 means "no cause" (ctx_cause() then reports CTX_CANCELED).
 * msg may be NULL; it is copied (if the copy cannot be allocated the cause
 * code is kept and its text falls back to ctx_strerror(cause)).
 *
 * Synchronous: when the call returns, the context and all its descendants
 * are done (through value and deadline layers alike), even if other threads
 * cancel parts of the same tree at the same moment, and the context has
 * left its parent.  The AfterFunc callbacks this call found have run on this
 * thread; those of a part of the tree that another thread's cancel reached
 * first run on that thread (or, for a deadline, on a callback thread) and
 * may still be running.  Cancelling a context never affects its
 * parent or siblings.  Safe from any thread; a NULL handle is ignored.
 *
 * Both names are also macros (see "Cancel sites" below) that record the
 * file, line and function of the call for ctx_cancel_site().
 */
CTX_EXPORT void ctx_cancel(ctx_cancel_t *cancel);
CTX_EXPORT void ctx_cancel_cause(ctx_cancel_t *cancel, int cause, const char *msg);

/* ---------------------------------------------------------------------------
 * Observation
 */

/* 0 while ctx is not done, else CTX_CANCELED or CTX_DEADLINE_EXCEEDED;
 * EINVAL for a NULL ctx.  Lock-free: one atomic load (acquire, pairing with
 * the release that marks a context done, so a caller that sees done also
 * sees the cause).  Inlined with GCC and Clang (see "Fast path" below). */
CTX_EXPORT int ctx_err(ctx_t *ctx);

/* 0 while ctx is not done; else the cause code (ctx_err's code when no cause
 * was given).  If msg is not NULL, *msg receives the cause text: the message
 * given with the cause (also when the cause code was 0), else
 * ctx_strerror(code); it stays valid while ctx is alive.  *msg is NULL while
 * ctx is not done.  EINVAL for a NULL ctx.  Lock-free. */
CTX_EXPORT int ctx_cause(ctx_t *ctx, const char **msg);

/* true and *deadline set when ctx or an ancestor has a deadline (the
 * nearest, which is also the earliest); false when there is none or ctx is
 * NULL.  O(1). */
CTX_EXPORT bool ctx_deadline(ctx_t *ctx, ctx_time_t *deadline);

/* The value bound to key by the nearest ancestor-or-self that binds it
 * (including a binding to NULL), or NULL (also for a NULL ctx).  Lock-free;
 * values stay readable after cancellation.  A walk toward the root, but a
 * small filter in each value context skips runs of up to 16 value contexts
 * that cannot bind the key, so absent keys are cheap in deep chains. */
CTX_EXPORT void *ctx_value(ctx_t *ctx, const ctx_key_t *key);

/* "context canceled" for CTX_CANCELED, "context deadline exceeded" for
 * CTX_DEADLINE_EXCEEDED, else the C library's strerror() text. */
CTX_EXPORT const char *ctx_strerror(int err);

/* Go's String(), snprintf-style: writes at most size bytes including the
 * terminating NUL and returns the full length.  "context.Background",
 * "context.TODO", "<parent>.WithCancel", "<parent>.WithValue(<key name>,
 * <value>)", "<parent>.WithoutCancel", "<parent>.<custom name>", and
 * "<parent>.WithDeadline(<UTC wall time> [<time left>])" as Go writes it,
 * e.g. "...WithDeadline(2026-11-22 20:30:00 +0000 UTC [18h12m0s])". */
CTX_EXPORT size_t ctx_describe(ctx_t *ctx, char *buf, size_t size);

/* ---------------------------------------------------------------------------
 * Waiting.  C has no channels, so Go's Done() becomes three ways to wait.
 * Each wakes when the context is done, whether by its own cancel, an
 * ancestor's, or a deadline.  Waiting costs nothing for contexts nobody waits
 * on: cancelling a context that has no waiter and no fd makes no system call.
 */

/* Blocks until ctx is done (returns ctx_err(ctx)) or timeout passes (returns
 * 0).  CTX_FOREVER waits without limit; 0 only polls.  A negative timeout
 * other than CTX_FOREVER is treated as 0.  EINVAL for a NULL ctx. */
CTX_EXPORT int ctx_wait(ctx_t *ctx, ctx_duration_t timeout);

/* 0 after sleeping d; ctx_err(ctx) as soon as ctx is done, if that is first. */
CTX_EXPORT int ctx_sleep(ctx_t *ctx, ctx_duration_t d);

/* An fd that turns readable (POLLIN) once ctx is done, for poll, epoll,
 * io_uring or libuv.  Created on first call (an eventfd on Linux, a pipe
 * elsewhere), owned by ctx: never close or read it.  Valid while ctx is
 * alive.  -1 with errno 0 for a context that can never be done (poll(2)
 * ignores negative fds); -1 with errno set (EMFILE, ENFILE, ENOMEM) when no
 * fd can be made. */
CTX_EXPORT int ctx_done_fd(ctx_t *ctx);

/* pthread_cond_wait(cond, mutex) that also returns when ctx is done: Go's
 * AfterFunc condition-variable example, without lost wake-ups.  Call with
 * mutex held, like pthread_cond_wait; returns with it held.  Returns
 * ctx_err(ctx) (0 after an ordinary or spurious wake-up: re-check your
 * predicate), or EINVAL / ENOMEM.  While waiting it has an AfterFunc on
 * ctx that takes mutex and broadcasts cond: never cancel ctx while holding
 * mutex.  The mutex may be released and retaken once more after the wait
 * (a spurious wake-up, as far as the caller can tell). */
CTX_EXPORT int ctx_cond_wait(ctx_t *ctx, pthread_cond_t *cond, pthread_mutex_t *mutex);

/* ---------------------------------------------------------------------------
 * AfterFunc (Go 1.21)
 *
 * fn(arg) runs exactly once after ctx is done, unless stopped first.
 * Returns 0, or EINVAL (NULL ctx or fn) or ENOMEM.  If ctx can never be
 * done, fn never runs.  If ctx is already done, fn runs on the calling thread
 * before ctx_after_func returns.  Otherwise fn runs on the cancelling thread
 * (or, for a deadline, on a library thread), with no library lock held.
 *
 * The registration holds a reference to ctx, so it still runs when an
 * ancestor is cancelled even if nobody else holds ctx.  If stop is not NULL,
 * *stop receives a handle that must be passed to ctx_after_stop() exactly
 * once; if stop is NULL the registration is fire-and-forget and frees itself
 * after fn runs.
 */
CTX_EXPORT int ctx_after_func(ctx_t *ctx, void (*fn)(void *arg), void *arg, ctx_after_t **stop);

/* true: fn will never run (it was stopped here).  false: fn has started or
 * has run; then waits until fn has returned, unless called from inside fn
 * itself (directly or through a cancel that fn made).  Always releases the
 * handle.  ctx_after_stop(NULL) returns false.  Stopping a handle twice is
 * misuse: debug builds abort with a message (as long as the memory has not
 * been reused). */
CTX_EXPORT bool ctx_after_stop(ctx_after_t *stop);

/* ---------------------------------------------------------------------------
 * Time
 */

/* The clock deadlines are measured on: CLOCK_MONOTONIC in nanoseconds, or
 * the manual clock while it is in force. */
CTX_EXPORT ctx_time_t ctx_now(void);

/* The ctx_time_t of a wall-clock instant (CLOCK_REALTIME), for deadlines
 * such as "today at 20:30".  The conversion is made now: a later step of
 * the wall clock (NTP, the administrator) does not move the deadline.
 * Saturates far from now.  NULL gives ctx_now(). */
CTX_EXPORT ctx_time_t ctx_time_from_wall(const struct timespec *wall);

/*
 * The manual clock, for tests (what Go's testing/synctest and Trio's
 * MockClock give).  ctx_clock_manual(start) makes ctx_now() return start
 * and stop moving; deadlines then fire only when a test advances the clock.
 * ctx_clock_advance(d) moves it forward by d and, before it returns, fires
 * every deadline that became due, in deadline order, on the calling thread
 * (AfterFunc callbacks included; while each fires, ctx_now() reads its
 * deadline).  Timed waits (ctx_wait, ctx_sleep) measure their timeouts on
 * the manual clock too.  ctx_clock_real() goes back to CLOCK_MONOTONIC;
 * deadlines already due then fire at once.  These switch the whole process:
 * use them in test programs only, before other threads use deadlines.
 * ctx_clock_advance returns 0, EINVAL for d < 0, or EPERM when the manual
 * clock is not in force.
 */
CTX_EXPORT int ctx_clock_manual(ctx_time_t start);
CTX_EXPORT int ctx_clock_advance(ctx_duration_t d);
CTX_EXPORT void ctx_clock_real(void);

/* ---------------------------------------------------------------------------
 * Custom contexts
 *
 * Go lets any type implementing Context be a parent; its propagateCancel then
 * falls back to a goroutine per child (or to the parent's AfterFunc).  In C a
 * custom context is a cancellable node of the library's own tree with user
 * hooks attached, so children of a custom context register with it directly:
 * no thread per child, and cancellation of a custom parent reaches its
 * children synchronously.
 *
 * The ops table must outlive every context made with it (normally it is a
 * static const object).  Every hook is optional (NULL):
 *
 *   name      shown by ctx_describe() as "<parent>.<name>" (default "Custom");
 *   value     looks key up in the custom context's own store; returns true
 *             and sets *value when the context binds key (the lookup then
 *             stops there), false to continue with the parent.  Called
 *             without any library lock held, possibly from many threads at
 *             once;
 *   describe  writes the part after "<parent>." instead of name;
 *   destroy   called once with data when the context is freed.
 *
 * To cancel a custom context from an outside event (a signal watcher, a
 * connection closing, a message from another process), call
 * ctx_cancel_cause() on the handle from any thread.
 */
typedef struct ctx_custom_ops {
    const char *name;
    bool (*value)(void *data, const ctx_key_t *key, void **value);
    size_t (*describe)(void *data, char *buf, size_t size);
    void (*destroy)(void *data);
} ctx_custom_ops_t;

/* A custom child of parent.  Done when cancelled through *cancel or when
 * parent is done.  On failure (NULL with errno EINVAL for a NULL parent or
 * ops, ENOMEM) destroy is not called. */
CTX_EXPORT ctx_t *ctx_with_custom(ctx_t *parent, const ctx_custom_ops_t *ops, void *data,
                                  ctx_cancel_t **cancel);

/* The data pointer of a custom context, or NULL for any other context. */
CTX_EXPORT void *ctx_custom_data(ctx_t *ctx);

/* ---------------------------------------------------------------------------
 * Allocator
 *
 * Routes every allocation the library makes through malloc_fn and free_fn
 * (libuv's uv_replace_allocator).  Call it before any context other than the
 * roots exists: memory is released with the allocator that was current when
 * it was allocated only if that allocator is still installed.  Returns 0, or
 * EINVAL if either function is NULL.  ctx_reset_allocator() restores
 * malloc/free.
 */
CTX_EXPORT int ctx_replace_allocator(void *(*malloc_fn)(size_t size), void (*free_fn)(void *ptr));
CTX_EXPORT void ctx_reset_allocator(void);

/* ---------------------------------------------------------------------------
 * Fast path
 *
 * ctx_err is the check a worker makes in every iteration of its loop, and a
 * call through a shared library's PLT costs more than the check itself.
 * With GCC or Clang it is therefore inlined.  A context whose kind (the low
 * three bits of the word at byte offset 8) is 3 or more holds its own done
 * state; any other points, with the word at offset 0, at the context that
 * does.  The 32-bit state word at byte offset 24 carries err in its low
 * byte.  That much of the layout is part of the ABI of this major version.
 * ctx_wait is wrapped the same way for a done context and a poll.  Define
 * CTX_NO_INLINE before including this header to call the exported
 * functions instead.
 */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(CTX_NO_INLINE)
struct ctx_abi_node_ {
    const struct ctx_abi_node_ *owner;
    uintptr_t kind;
    uint32_t refs;
    uint32_t lock;
    uint32_t state;
};

static inline int ctx_err_inline_(ctx_t *ctx)
{
    const struct ctx_abi_node_ *n = (const struct ctx_abi_node_ *)(const void *)ctx;
    if (n == NULL)
        return EINVAL;
    if ((n->kind & 7u) < 3u)
        n = n->owner;
    /* Acquire: pairs with the release that marks a context done. */
    return (int)(__atomic_load_n(&n->state, __ATOMIC_ACQUIRE) & 0xffu);
}
#define ctx_err(ctx) ctx_err_inline_(ctx)

/* ctx_wait answers a done context and a poll (timeout 0) without a call:
 * Go's `select { case <-ctx.Done(): default: }` costs one load. */
static inline int ctx_wait_inline_(ctx_t *ctx, ctx_duration_t timeout)
{
    int e = ctx_err_inline_(ctx);
    if (e != 0 || timeout == 0)
        return e;
    return (ctx_wait)(ctx, timeout);
}
#define ctx_wait(ctx, timeout) ctx_wait_inline_((ctx), (timeout))
#endif

/* ===========================================================================
 * Structured concurrency
 */

/* ---------------------------------------------------------------------------
 * Groups (Go's golang.org/x/sync/errgroup)
 *
 * A group runs tasks on threads the library manages and remembers the first
 * failure.  The threads come from one pool shared by every group: it starts
 * a thread only when no idle one is free, so it grows to what the load
 * needs (and never beyond a group's limit for that group's tasks), and a
 * thread that stays idle for two seconds exits.  A task that blocks, even one
 * that ignores its context, holds one pool thread: it delays its own
 * group's ctx_group_wait and nothing else.
 *
 * A caller that has to wait (ctx_group_go at the limit, ctx_group_wait)
 * runs queued tasks of its own group itself meanwhile, as TBB and Java's
 * ForkJoinPool do: those tasks already hold slots, so the limit holds, and
 * a burst of short tasks needs no hand-over between threads.  So a task
 * may run on the thread that called ctx_group_go or ctx_group_wait on its
 * group; it never runs on a thread of another group's caller.  Go's
 * errgroup never does this, so one rule is new: do not hold a lock that a
 * task of the group takes while calling ctx_group_go or ctx_group_wait, as
 * the task may run inside that call and deadlock on it.
 *
 * Thread safety: ctx_group_go and ctx_group_try_go may be called from any
 * thread, including from a task of the same group; ctx_group_set_limit and
 * ctx_group_wait belong to the group's owner.  A task runs with no library
 * lock held.  After fork(2), a group of the parent is not usable in the
 * child (its tasks run in the parent); the child makes its own.
 */
typedef struct ctx_group ctx_group_t;

/* A task: returns 0 for success, else an errno-style code. */
typedef int (*ctx_task_fn)(ctx_t *ctx, void *arg);

/* errgroup.WithContext.  The group's context is a child of parent: it is
 * cancelled with the first task failure as its cause (the task's code, and
 * ctx_strerror of it as the message), or with CTX_CANCELED once
 * ctx_group_wait returns.  If ctx is not NULL, *ctx receives a new
 * reference to it (drop it with ctx_unref).  NULL with errno EINVAL (NULL
 * parent) or ENOMEM on failure. */
CTX_EXPORT ctx_group_t *ctx_group_new(ctx_t *parent, ctx_t **ctx);

/* At most n tasks of this group run at once; n < 0 means no limit (the
 * default).  0, or EINVAL for a NULL group or n == 0, or EBUSY while tasks
 * of the group are active (Go panics there). */
CTX_EXPORT int ctx_group_set_limit(ctx_group_t *g, int n);

/* Starts fn(ctx, arg) on a pool thread, ctx being the group's context
 * (borrowed: valid while the task runs).  Blocks while the group's limit is
 * reached.  Returns 0 once the task is handed to a thread, or, and then fn
 * never runs and the group records no failure: EINVAL for a NULL g or fn;
 * ctx_err(group context) when the group's context is already done (Go would
 * start the task anyway and leave the check to it); ENOMEM or EAGAIN when
 * no memory or no thread could be had. */
CTX_EXPORT int ctx_group_go(ctx_group_t *g, ctx_task_fn fn, void *arg);

/* As ctx_group_go, but returns EBUSY instead of blocking when the limit is
 * reached (errgroup.TryGo). */
CTX_EXPORT int ctx_group_try_go(ctx_group_t *g, ctx_task_fn fn, void *arg);

/* Waits for every task, cancels the group's context, frees g and returns
 * the first task failure (0 if none).  If msg is not NULL, *msg receives
 * its text, ctx_strerror(code) (static), or NULL when there was none.
 * Blocks; while it waits, tasks may still start tasks of the group.  Call
 * exactly once per group and not from one of its tasks: a second call is
 * misuse (debug builds abort with a message as long as the group's memory
 * was not reused; release builds return EINVAL when they can tell).
 * EINVAL for a NULL group.  A task that calls ctx_group_go on its own
 * group at the limit waits for a slot like any caller (with a limit of 1
 * that is a deadlock, as in Go). */
CTX_EXPORT int ctx_group_wait(ctx_group_t *g, const char **msg);

/* ---------------------------------------------------------------------------
 * Merged parents (.NET CreateLinkedTokenSource, folly's merge)
 *
 * A context with n parents: done as soon as any parent is done, with that
 * parent's err and cause (and cancel site); its deadline is the earliest of
 * theirs; ctx_value looks in parents[0]'s chain first, then parents[1]'s,
 * and so on.  It holds a reference to every parent.  It is a child of
 * parents[0] like any other and is linked to each other parent by a
 * record; the context and its records are one allocation.  The records
 * leave the parents' lists as
 * soon as the merged context is done or freed, so a long-lived parent's
 * child set never grows with merges that ended.  The same parent may be
 * given twice; parents already done make a context done at birth.  NULL
 * with errno EINVAL (n == 0, NULL parents or a NULL parent) or ENOMEM.
 */
CTX_EXPORT ctx_t *ctx_merge(ctx_t *const *parents, size_t n, ctx_cancel_t **cancel);

/* ---------------------------------------------------------------------------
 * Signals (Go's signal.NotifyContext)
 *
 * A child of parent that is done, with err CTX_CANCELED, cause EINTR and a
 * message naming the signal ("interrupt signal received" for SIGINT,
 * "terminated signal received" for SIGTERM, ...), when the process receives
 * one of the n signals.  While it lives and is not done, those signals no
 * longer terminate the process.  Once it is done (by a signal, its cancel or
 * its parent) or freed, their previous handling is restored, so a second
 * Ctrl-C kills as usual; a signal that arrives in the short moment between
 * a cancel and the restoration is handed to the previous handling too.
 * Several may be live at once, for the same signals or others.
 *
 * How: a handler (sigaction) writes the signal number to a pipe, whatever
 * thread the kernel picks and whatever the other threads' masks are (a
 * signal blocked in every thread stays pending, as always); one library
 * thread reads the pipe and cancels.  The library thread blocks every
 * signal.  fork(2): the child gets its own pipe and thread (the thread on
 * its first call that waits or makes a signal context, see fork(2) above),
 * so a signal sent to the child cancels the child's contexts only.  Returns NULL with
 * errno EINVAL (NULL parent or signals, n == 0, a signal that cannot be
 * caught such as SIGKILL), ENOMEM, EMFILE or EAGAIN.
 */
CTX_EXPORT ctx_t *ctx_with_signals(ctx_t *parent, const int *signals, size_t n,
                                   ctx_cancel_t **cancel);

/* ===========================================================================
 * Seeing inside
 */

/* ---------------------------------------------------------------------------
 * Cancel sites
 *
 * ctx_cancel and ctx_cancel_cause are macros that call these with the call
 * site (file, line, function), so plain calls record where a context was
 * cancelled.  The functions ctx_cancel and ctx_cancel_cause stay exported
 * under their names: (ctx_cancel)(c) and function pointers work, and record
 * no site.  The site is kept with the cause, which every node the cancel
 * reaches shares; recording it costs one small allocation per cancel
 * (none when the context is already done), and if that allocation fails
 * the cancel still happens without a site.
 */
CTX_EXPORT void ctx_cancel_at(ctx_cancel_t *cancel, const char *file, int line, const char *func);
CTX_EXPORT void ctx_cancel_cause_at(ctx_cancel_t *cancel, int cause, const char *msg,
                                    const char *file, int line, const char *func);

/* Where ctx was cancelled: file, line and function of the ctx_cancel or
 * ctx_cancel_cause call that reached it (its own or an ancestor's).  For a
 * context ended by a deadline, func is "deadline" and file/line are where
 * the deadline's context was created when tracking is on, else NULL/0.
 * The library's own cancels name themselves: func is "ctx_group" (a task
 * failed), "ctx_group_wait", "signal" or "peer_close" (the peer of a
 * ctx_with_peer_close socket went away).  A merged context reports the
 * site of the parent that ended it (none when that parent has none).  A site that was not recorded
 * (a call through the plain functions, or no memory) gives NULL/0/NULL.  Returns false while ctx is
 * not done, and for NULL.  Any out pointer may be NULL; strings are
 * static.  Lock-free. */
CTX_EXPORT bool ctx_cancel_site(ctx_t *ctx, const char **file, int *line, const char **func);

/* ---------------------------------------------------------------------------
 * Dumps and tracking
 *
 * ctx_dump writes the live subtree under ctx to out, one context a line,
 * indented by depth: its own part of ctx_describe's text (values through
 * their key's format), its age, the time left to its deadline, err and
 * cause, where it was created and cancelled, and whether it has waiters, a
 * done fd and AfterFunc callbacks.  Without tracking only the cancellable
 * contexts can be found (value contexts hang off no list) and ages and
 * creation sites are unknown; with tracking on every context under ctx is
 * listed.  Returns 0, EINVAL (NULL), ENOMEM or EIO (a write failed).
 * Custom describe hooks and key formatters run with the tracking lock held:
 * they must not create or free contexts.
 *
 * Tracking: with CTX_TRACK=1 in the environment when the library loads, or
 * after ctx_track(true), every context created through this header's
 * macros is kept in a registry with its creation site and time.
 * ctx_dump_all writes every live tree; at exit, the contexts still alive
 * are reported on stderr with their creation sites (the exit status is
 * unchanged).  ctx_track(false) empties the registry.  With tracking off it
 * costs one predictable branch where a context is created (the macros
 * below) and one where it is freed, and nothing else.  ctx_dump_all
 * returns 0, ENOTSUP when tracking is off, ENOMEM or EIO.
 */
CTX_EXPORT int ctx_dump(ctx_t *ctx, FILE *out);

/*
 * ctx_dump_json writes the live subtree under ctx to out as one JSON array
 * and a newline, for programs such as a service's debug endpoint or a page
 * that draws the tree.  It needs no tracking: like ctx_dump with tracking
 * off it finds the cancellable contexts under ctx (a value context shows
 * only in the text of the context below it).  The array lists ctx first,
 * then depth first, each node as an object with
 *
 *   "id", "parent"        the node's address and its parent's in this
 *                         dump, as strings ("parent" is null for ctx);
 *                         stable while the node lives, so a reader can
 *                         follow a node from one dump to the next;
 *   "depth"               0 for ctx;
 *   "kind"                "cancel", "deadline", "custom", "value", "root" or
 *                         "without_cancel";
 *   "text"                ctx_describe's text for ctx; for the others, the
 *                         node's own part of it, led by the parts of the
 *                         value contexts between it and its listed parent;
 *   "deadline_left_ms"    when the node has a deadline: the time left, in
 *                         ms (negative once passed), and "own_deadline",
 *                         whether the deadline is the node's own;
 *   "done"                whether the node has ended, and then "err" (its
 *                         text), "cause" and "cause_msg" (ctx_cause) and,
 *                         when one was recorded, "cancel_site" with "file",
 *                         "line" and "func" (ctx_cancel_site);
 *   "waiters", "done_fd"  for cancellable nodes, as ctx_dump shows them.
 *
 * Strings are escaped as JSON requires.  Returns 0, EINVAL (NULL ctx or
 * out), ENOMEM (the array, still closed, then lists only part of the tree)
 * or EIO (a write failed).  Thread-safe; takes node locks one at a
 * time while it lists children.  Custom describe hooks and key formatters
 * run during the call: they must not create or free contexts.
 */
CTX_EXPORT int ctx_dump_json(ctx_t *ctx, FILE *out);
CTX_EXPORT void ctx_track(bool on);
CTX_EXPORT int ctx_dump_all(FILE *out);

/* The tracking flag and the registration call behind the creation macros.
 * Not for direct use. */
CTX_EXPORT extern int ctx_tracking_;
CTX_EXPORT ctx_t *ctx_track_new_(ctx_t *ctx, const char *file, int line, const char *func);

/* ---------------------------------------------------------------------------
 * Call-site macros.  Define CTX_NO_SITE_MACROS before including this header
 * to call the plain functions (the library's own sources do).
 */
#ifndef CTX_NO_SITE_MACROS
#if defined(__GNUC__) || defined(__clang__)
#define CTX_TRACKING_() __builtin_expect(__atomic_load_n(&ctx_tracking_, __ATOMIC_RELAXED), 0)
#else
#define CTX_TRACKING_() (ctx_tracking_ != 0)
#endif
#define CTX_TRACK_(call)                                                                           \
    (CTX_TRACKING_() ? ctx_track_new_((call), __FILE__, __LINE__, __func__) : (call))

/* Variadic, so that an argument with commas of its own, such as
 * (int[]){ SIGINT, SIGTERM } or (ctx_t *[]){ a, b }, passes through. */
#define ctx_cancel(...)       ctx_cancel_at(__VA_ARGS__, __FILE__, __LINE__, __func__)
#define ctx_cancel_cause(...) ctx_cancel_cause_at(__VA_ARGS__, __FILE__, __LINE__, __func__)

#define ctx_with_cancel(...)         CTX_TRACK_((ctx_with_cancel)(__VA_ARGS__))
#define ctx_with_deadline(...)       CTX_TRACK_((ctx_with_deadline)(__VA_ARGS__))
#define ctx_with_timeout(...)        CTX_TRACK_((ctx_with_timeout)(__VA_ARGS__))
#define ctx_with_deadline_cause(...) CTX_TRACK_((ctx_with_deadline_cause)(__VA_ARGS__))
#define ctx_with_timeout_cause(...)  CTX_TRACK_((ctx_with_timeout_cause)(__VA_ARGS__))
#define ctx_with_value(...)          CTX_TRACK_((ctx_with_value)(__VA_ARGS__))
#define ctx_without_cancel(...)      CTX_TRACK_((ctx_without_cancel)(__VA_ARGS__))
#define ctx_with_custom(...)         CTX_TRACK_((ctx_with_custom)(__VA_ARGS__))
#define ctx_merge(...)               CTX_TRACK_((ctx_merge)(__VA_ARGS__))
#define ctx_with_signals(...)        CTX_TRACK_((ctx_with_signals)(__VA_ARGS__))
#endif

#ifdef __cplusplus
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
}
#endif

#endif /* CTX_H */
