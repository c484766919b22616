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
 * only a compiler barrier.  Where membarrier is missing, ctx__fence_needed
 * stays set and holders use a real fence.
 *
 * Then prepare takes the library's other locks, in the documented order, so
 * that the child gets consistent heaps, queues and tables.  The timer
 * thread's firing lock comes first of all: the timer thread holds it while
 * it cancels, and would otherwise back off inside it.
 */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#ifdef __linux__
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

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
#ifdef __linux__
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0) {
        have_membarrier = 1;
        atomic_store_explicit(&ctx__fence_needed, 0, memory_order_relaxed);
    }
#endif
    pthread_atfork(prepare, parent, child);
}

void ctx__fork_init(void)
{
    pthread_once(&once, init_once);
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

static void prepare(void)
{
    ctx__time_atfork_prepare_fire();
    atomic_store_explicit(&ctx__forking, 1, memory_order_relaxed);
#ifdef __linux__
    if (have_membarrier)
        syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0);
    else
#endif
        atomic_thread_fence(memory_order_seq_cst);
    pthread_mutex_lock(&reg_mu);
    for (struct ctx__holder *h = reg_head; h != NULL; h = h->next)
        /* Acquire: pairs with the release in ctx__release; the holder's
         * work under its locks is complete in the memory we fork. */
        while (atomic_load_explicit(&h->depth, memory_order_acquire) != 0)
            sched_yield();
    ctx__time_atfork_prepare();
    ctx__wait_atfork_prepare();
    ctx__futex_atfork(0);
}

static void parent(void)
{
    ctx__futex_atfork(1);
    ctx__wait_atfork_parent();
    ctx__time_atfork_parent();
    pthread_mutex_unlock(&reg_mu);
    atomic_store_explicit(&ctx__forking, 0, memory_order_release);
    ctx__time_atfork_parent_fire();
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
    ctx__wait_atfork_child();
    ctx__time_atfork_child();
    pthread_mutex_unlock(&reg_mu);
    atomic_store_explicit(&ctx__forking, 0, memory_order_release);
    ctx__time_atfork_child_fire();
}

/* Starts a detached library thread (the timer thread, callback workers).
 * It inherits the caller's signal mask, so block every signal around the
 * creation: signals belong to the program's own threads.  stack 0 means
 * the default size.  Returns 0 or pthread_create's error. */
int ctx__thread_start(void *(*fn)(void *), size_t stack)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    if (stack != 0)
        pthread_attr_setstacksize(&a, stack);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t tid;
    int e = pthread_create(&tid, &a, fn, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&a);
    return e;
}
