/* SPDX-License-Identifier: MIT */

/*
 * fork(2) safety.
 *
 * A child process has only the thread that called fork.  Any library lock
 * another thread held at that moment stays held in the child for ever, and
 * the first cancel, free or deadline that needs it hangs there.  So the
 * prepare handler waits until no thread holds any library lock:
 *
 * - Every lock is taken inside a "hold" (internal.h): a thread-local depth,
 *   published in an atomic that the forking thread can read.  Threads
 *   register their depth in a list the first time they hold.
 * - prepare raises ctx__forking, makes sure every thread sees it, then waits
 *   for every registered depth to be zero.  A thread that starts an
 *   outermost hold while ctx__forking is up backs off and waits for the
 *   fork to finish.
 *
 * The handshake is Dekker's: the holder stores its depth then loads the
 * flag; the forker stores the flag then loads the depths.  Both sides need
 * a full barrier between store and load.  The holder's side is the hot
 * path, so on Linux the forker issues membarrier(PRIVATE_EXPEDITED), which
 * runs a full barrier on every thread of the process, and the holder needs
 * only a compiler barrier.  Where membarrier is missing (older kernels, the
 * portable backend: platform.h), ctx__fence_needed stays set and holders
 * use a real fence.
 *
 * Then prepare runs the hooks the subsystems registered (timer.c, after.c,
 * wait.c, ...; see ctx__fork_register in internal.h), which take their
 * locks in rank order, so that the child gets consistent wheels, queues and
 * tables.  This file calls no subsystem by name: they call it.  Early hooks
 * run before the wait for lock holders: the timer thread's firing lock is
 * held across holds while it cancels, and must be taken first of all.
 */
#include "internal.h"
#include "platform.h"

#include <pthread.h>
#include <sched.h>

CTX__TLS struct ctx__holder ctx__me;
_Atomic int ctx__forking;
_Atomic int ctx__fence_needed = 1;

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct ctx__holder *reg_head;
static pthread_key_t reg_key;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int have_membarrier;

static void prepare(void);
static void parent(void);
static void child(void);

/* Thread exit: forget the thread.  What it does after this (other TLS
 * destructors calling into the library) is not waited for by a fork. */
static void thread_gone(void *arg)
{
    struct ctx__holder *h = arg;
    pthread_mutex_lock(&reg_mu);
    if (h->prev != NULL)
        h->prev->next = h->next;
    else
        reg_head = h->next;
    if (h->next != NULL)
        h->next->prev = h->prev;
    h->state = 2;
    pthread_mutex_unlock(&reg_mu);
}

static void init_once(void)
{
    pthread_key_create(&reg_key, thread_gone);
    pthread_atfork(prepare, parent, child);
}

void ctx__fork_init(void)
{
    pthread_once(&once, init_once);
}

/* Registering for membarrier is cheap while the process has one thread,
 * but once it has more the kernel waits for an RCU grace period (several
 * milliseconds on a busy machine).  Done lazily, at the first lock, that
 * wait fell on whatever call came first after a group had started its pool
 * threads: it cost a program's first batch of group tasks more than the
 * batch itself.  So register when the library is loaded, which for a
 * program linked with it is before main starts any thread.  The fork
 * handlers themselves are still installed at the first lock (init_once):
 * installed from a constructor they would come before those of a
 * sanitizer's runtime, whose child handler must run before ours (under
 * ThreadSanitizer the child's re-initialized mutexes were otherwise
 * still seen as held). */
__attribute__((constructor)) static void fork_init_at_load(void)
{
    if (ctx__plat_membarrier_init()) {
        have_membarrier = 1;
        atomic_store_explicit(&ctx__fence_needed, 0, memory_order_relaxed);
    }
}

/* The outermost hold when the thread is not registered yet, or when a fork
 * is under way.  ctx__me.plain is already 1. */
void ctx__hold_slow(void)
{
    if (ctx__me.state == 0) {
        ctx__fork_init();
        pthread_mutex_lock(&reg_mu);
        ctx__me.prev = NULL;
        ctx__me.next = reg_head;
        if (reg_head != NULL)
            reg_head->prev = &ctx__me;
        reg_head = &ctx__me;
        ctx__me.state = 1;
        pthread_mutex_unlock(&reg_mu);
        pthread_setspecific(reg_key, &ctx__me);
    }
    for (;;) {
        atomic_store_explicit(&ctx__me.depth, 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_seq_cst); /* the slow path can afford it */
        if (!atomic_load_explicit(&ctx__forking, memory_order_relaxed))
            return;
        atomic_store_explicit(&ctx__me.depth, 0, memory_order_release);
        while (atomic_load_explicit(&ctx__forking, memory_order_acquire))
            sched_yield();
    }
}

/* ---------------------------------------------------------------------------
 * Hooks.  Registered in a fixed table with a CAS per slot, so registering
 * takes no lock (a constructor, or a subsystem's init, may do it at any
 * time), and prepare reads the table with no lock either.
 */

static _Atomic(const struct ctx__fork_hooks *) hooks[CTX__FORK_MAX];

void ctx__fork_register(const struct ctx__fork_hooks *h)
{
    for (int i = 0; i < CTX__FORK_MAX; i++) {
        const struct ctx__fork_hooks *cur = NULL;
        /* Release: pairs with the acquire in sorted_hooks(); the hooks'
         * fields are complete when prepare sees the pointer. */
        if (atomic_compare_exchange_strong_explicit(&hooks[i], &cur, h, memory_order_release,
                                                    memory_order_acquire) ||
            cur == h)
            return;
    }
    ctx__misuse("too many fork hook registrations (raise CTX__FORK_MAX)");
}

/* The registered hooks by increasing rank.  prepare() fills the list and
 * parent() and child() use that same list, so a registration during the
 * fork cannot unbalance them.  Only the forking thread touches it (fork
 * handlers of concurrent forks are serialized by T.fire, the first early
 * hook, and by reg_mu). */
static const struct ctx__fork_hooks *run[CTX__FORK_MAX];
static int nrun;

static void sorted_hooks(void)
{
    nrun = 0;
    for (int i = 0; i < CTX__FORK_MAX; i++) {
        /* Acquire: pairs with the release in ctx__fork_register. */
        const struct ctx__fork_hooks *h = atomic_load_explicit(&hooks[i], memory_order_acquire);
        if (h == NULL)
            continue;
        int j = nrun++;
        while (j > 0 && run[j - 1]->rank > h->rank) {
            run[j] = run[j - 1];
            j--;
        }
        run[j] = h;
    }
}

static void run_prepare(int early)
{
    for (int i = 0; i < nrun; i++)
        if (run[i]->early == early && run[i]->prepare != NULL)
            run[i]->prepare();
}

static void run_after(int early, int in_child)
{
    for (int i = nrun - 1; i >= 0; i--) {
        void (*f)(void) = in_child ? run[i]->child : run[i]->parent;
        if (run[i]->early == early && f != NULL)
            f();
    }
}

static void prepare(void)
{
    sorted_hooks();
    run_prepare(1);
    atomic_store_explicit(&ctx__forking, 1, memory_order_relaxed);
    if (have_membarrier)
        ctx__plat_membarrier();
    else
        atomic_thread_fence(memory_order_seq_cst);
    pthread_mutex_lock(&reg_mu);
    for (struct ctx__holder *h = reg_head; h != NULL; h = h->next)
        /* Acquire: pairs with the release in ctx__release; the holder's
         * work under its locks is complete in the memory we fork. */
        while (atomic_load_explicit(&h->depth, memory_order_acquire) != 0)
            sched_yield();
    run_prepare(0);
    ctx__futex_atfork(0);
}

static void parent(void)
{
    ctx__futex_atfork(1);
    run_after(0, 0);
    pthread_mutex_unlock(&reg_mu);
    atomic_store_explicit(&ctx__forking, 0, memory_order_release);
    run_after(1, 0);
}

static void child(void)
{
    /* Only this thread came along. */
    reg_head = NULL;
    if (ctx__me.state == 1) {
        ctx__me.prev = ctx__me.next = NULL;
        reg_head = &ctx__me;
    }
    ctx__futex_atfork(2);
    run_after(0, 1);
    pthread_mutex_unlock(&reg_mu);
    atomic_store_explicit(&ctx__forking, 0, memory_order_release);
    run_after(1, 1);
}
