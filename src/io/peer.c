/* SPDX-License-Identifier: MIT */

/*
 * ctx_with_peer_close: a context that ends when the peer of a socket hangs
 * up, Go's net/http background read without the read.
 *
 * One watcher thread per process waits on the platform's watch set
 * (platform.h: epoll on Linux, poll elsewhere) for every watched socket's
 * peer to close or shut down its writing side, or the connection to break.
 * It never reads, so bytes the peer sent (a pipelined request) stay for the
 * program.  A socket whose peer is already gone reports at once, and each
 * socket reports once (one-shot), so that the watcher never has to remove
 * an fd that the program may already have closed.
 *
 * Data.  A table indexed by fd holds, per watched fd, the list of watches
 * (several contexts may watch one fd), the identity of the socket they
 * watch and a generation number, which goes into the watch set's key
 * beside the fd: an event that the watcher collected just before the fd's
 * last watch went away (and perhaps a new one came) is recognised as stale
 * and dropped.  Everything in the table is under `mu`.
 *
 * Identity.  The program may close a watched fd while its context lives,
 * and the kernel may give the number to a new connection that is watched
 * in turn.  A hang-up of the new connection must not end the old request.
 * So each watch records which socket it watches: st_dev and st_ino (a
 * socket's inode is its own while it is open) and, where the kernel has
 * it, the socket cookie (SO_COOKIE, never reused while the system runs).
 * A new watch on an fd whose listed watches name another socket knows that
 * their socket was closed: it takes them off the list (they can no longer
 * fire; they wait for their contexts to end or be freed) and bumps the
 * generation, so that an event of the old socket's registration (still in
 * the watch set when another process or fd holds the socket) is dropped as stale.
 *
 * A watch is the data of a custom context (tree.c's CUSTOM node with the
 * internal `done` hook).  It leaves the table in exactly one of three ways,
 * all under `mu`: the watcher fires it (the peer hung up), the hook sees the
 * context done for another reason (cancel, ancestor, deadline), or the
 * context is freed (its destroy hook).  The watcher cancels only contexts
 * it could take a reference to while holding `mu`, so a context that is
 * being freed is never cancelled, and its memory stays until the watcher
 * drops that reference.
 *
 * Locks.  `mu` nests inside node locks (the hook runs in mark() with the
 * node's lock held), so the watcher never takes a node lock while holding
 * `mu`: it cancels after releasing it.  `mu` is always taken inside a
 * ctx__hold(), so fork's prepare handler (fork.c) waits until nobody holds
 * it; the child handler here only forgets the parent's watcher thread and
 * watch set, and the child's first ctx_with_peer_close makes its own and
 * watches the inherited sockets again.
 */
#include "internal.h"
#include "platform.h"

#include "ctx/io.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { W_NEW, W_LISTED, W_GONE };

/* Which socket an fd is: see "Identity" above. */
struct ident {
    uint64_t dev, ino, cookie; /* cookie 0: the kernel has no SO_COOKIE */
};

struct watch {
    struct watch *next;      /* in its fd's list, under mu */
    struct watch *fire_next; /* the watcher's private list of contexts to cancel */
    struct ctx *ctx;
    int fd;
    int state; /* W_NEW, W_LISTED, W_GONE; under mu */
    struct ident id;
};

struct slot {
    struct watch *head;
    uint32_t gen;
    struct ident id; /* of the socket the listed watches watch */
};

static int same_socket(const struct ident *a, const struct ident *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->cookie == b->cookie;
}

/* The identity of socket fd: 0, or EBADF, ENOTSOCK. */
static int identify(int fd, struct ident *id)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        return errno;
    if (!S_ISSOCK(st.st_mode))
        return ENOTSOCK;
    id->dev = (uint64_t)st.st_dev;
    id->ino = (uint64_t)st.st_ino;
    id->cookie = 0;
#ifdef SO_COOKIE
    uint64_t cookie;
    socklen_t len = sizeof cookie;
    if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len) == 0 && len == sizeof cookie)
        id->cookie = cookie;
#endif
    return 0;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct slot *slots; /* indexed by fd */
static size_t nslots;
static int have_set; /* the watch set exists (in this process) */
static int running;  /* the watcher thread exists (in this process) */
static int quit;     /* ctx_shutdown asked the watcher to end; under mu */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void lock(void)
{
    ctx__hold();
    pthread_mutex_lock(&mu);
}

static void unlock(void)
{
    pthread_mutex_unlock(&mu);
    ctx__release();
}

static uint64_t event_key(int fd)
{
    return (uint64_t)(uint32_t)fd | (uint64_t)slots[fd].gen << 32;
}

/* Removes w from its fd's list; the last watch of an fd leaves the set.
 * Under mu. */
static void unlist(struct watch *w)
{
    struct slot *s = &slots[w->fd];
    struct watch **p = &s->head;
    while (*p != w)
        p = &(*p)->next;
    *p = w->next;
    if (s->head == NULL) {
        if (have_set)
            ctx__plat_watch_del(w->fd);
        s->gen++;
    }
    w->state = W_GONE;
}

/* Whether no fd is watched.  Under mu. */
static int no_watches(void)
{
    for (size_t fd = 0; fd < nslots; fd++)
        if (slots[fd].head != NULL)
            return 0;
    return 1;
}

int ctx__peer_quit(void)
{
    lock();
    int busy = !no_watches();
    if (!busy && running && have_set) {
        quit = 1;
        if (ctx__plat_watch_wake() != 0)
            quit = 0; /* the watcher could not be woken: it stays */
    }
    int e = busy || (running && !quit) ? EBUSY : 0;
    unlock();
    return e;
}

static void *watcher(void *arg)
{
    (void)arg;
    uint64_t ev[64];
    for (;;) {
        /* No key (0) after an interruption or a wake-up of
         * ctx__plat_watch_wake: the quit flag below is then what counts. */
        int n = ctx__plat_watch_wait(ev, 64);
        struct watch *fire = NULL;
        /* One hold from taking watches off the table to having cancelled
         * them: a fork waits for the whole of it, so a child never inherits
         * watches that left the table (and took a reference) but whose
         * contexts nobody will cancel there.  Nothing in it runs user code,
         * which could fork inside the hold. */
        ctx__hold();
        lock();
        for (int i = 0; i < n; i++) {
            int fd = (int)(uint32_t)ev[i];
            uint32_t gen = (uint32_t)(ev[i] >> 32);
            if ((size_t)fd >= nslots || slots[fd].gen != gen || slots[fd].head == NULL)
                continue; /* stale: that fd's watches went away meanwhile */
            struct slot *s = &slots[fd];
            for (struct watch *w = s->head; w != NULL; w = w->next) {
                w->state = W_GONE;
                /* A context whose count reached zero is being freed; its
                 * destroy hook waits for mu and finds the watch gone. */
                if (ctx__try_ref(w->ctx)) {
                    w->fire_next = fire;
                    fire = w;
                }
            }
            /* No ctx__plat_watch_del here: the interest is one-shot, so it is
             * disarmed already, and once these contexts are done their
             * owners may close fd (and the number may be reused) at any
             * moment.  The kernel drops the entry when the socket closes;
             * a new watch on a still-open fd re-arms it (EEXIST, MOD). */
            s->head = NULL;
            s->gen++;
        }
        unlock();
        /* As the timer thread does for deadlines: the contexts' AfterFunc
         * callbacks, and the freeing of a context whose last reference is
         * ours (destroy hooks), run on the callback threads, never here,
         * so that user code that blocks (or waits for another client's
         * disconnect) cannot stop the watching of every socket. */
        while (fire != NULL) {
            struct watch *w = fire;
            fire = w->fire_next; /* before the unref, which may free w */
            struct ctx *c = w->ctx;
            /* Without memory for the text the cause keeps its code only. */
            struct ctx__msg *msg = ctx__msg_new("client disconnected");
            if (msg != NULL) {
                /* The cancel site ctx_cancel_site reports: this watcher. */
                msg->file = __FILE__;
                msg->line = __LINE__;
                msg->func = "peer_close";
            }
            ctx__cancel(c, CTX_CANCELED, ECONNRESET, msg, 1);
            ctx__msg_unref(msg);
            ctx__unref_deferred(c);
        }
        lock();
        int end = quit && no_watches();
        quit = 0;
        if (end)
            running = 0; /* the next watch starts a new watcher */
        unlock();
        ctx__release();
        if (end)
            return NULL;
    }
}

/* fork(2) child: the watcher thread did not come along, and the watch
 * set is shared with the parent, so changing it here would change the
 * parent's.  Forget both; start() makes new ones. */
static void peer_atfork_child(void)
{
    ctx__plat_watch_forget();
    have_set = 0;
    running = 0;
    quit = 0;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, peer_atfork_child);
}

/* Makes the watch set and the watcher thread, once per process.  Under
 * mu.  Returns 0 or an errno-style code. */
static int start(void)
{
    if (running)
        return 0;
    pthread_once(&atfork_once, register_atfork);
    if (!have_set) {
        int e = ctx__plat_watch_open();
        if (e != 0)
            return e;
        have_set = 1;
        /* After a fork: watch the inherited sockets again. */
        for (size_t fd = 0; fd < nslots; fd++) {
            if (slots[fd].head == NULL)
                continue;
            ctx__plat_watch_add((int)fd, event_key((int)fd));
        }
    }
    if (ctx__thread_start(watcher, 64 * 1024) != 0)
        return EAGAIN;
    running = 1;
    return 0;
}

/* Grows the table to hold fd.  Under mu. */
static int grow(int fd)
{
    if ((size_t)fd < nslots)
        return 0;
    size_t n = nslots < 64 ? 64 : nslots;
    while (n <= (size_t)fd)
        n *= 2;
    struct slot *t = ctx__alloc(n * sizeof *t);
    if (t == NULL)
        return ENOMEM;
    if (nslots != 0)
        memcpy(t, slots, nslots * sizeof *t);
    memset(t + nslots, 0, (n - nslots) * sizeof *t);
    ctx__free(slots);
    slots = t;
    nslots = n;
    return 0;
}

/* The context is done (any cause): stop watching.  Runs in mark() with the
 * node's lock held, before the context is seen done (so before its owner
 * may close fd), or at creation when the context is born done. */
static void peer_done(void *data)
{
    struct watch *w = data;
    lock();
    if (w->state == W_LISTED)
        unlist(w);
    w->state = W_GONE;
    unlock();
}

static void peer_destroy(void *data)
{
    struct watch *w = data;
    lock();
    if (w->state == W_LISTED)
        unlist(w);
    unlock();
    ctx__free(w);
}

static size_t peer_describe(void *data, char *buf, size_t size)
{
    struct watch *w = data;
    return (size_t)snprintf(buf, size, "WithPeerClose(fd %d)", w->fd);
}

static const ctx_custom_ops_t peer_ops = {
    .name = "WithPeerClose",
    .describe = peer_describe,
    .destroy = peer_destroy,
};

ctx_t *ctx_with_peer_close(ctx_t *parent, int fd, ctx_cancel_t **cancel)
{
    if (cancel != NULL)
        *cancel = NULL;
    if (parent == NULL || fd < 0) {
        errno = EINVAL;
        return NULL;
    }
    struct ident id;
    int ie = identify(fd, &id);
    if (ie != 0) {
        errno = ie; /* EBADF, ENOTSOCK */
        return NULL;
    }
    struct watch *w;
    if ((cancel != NULL && ctx__handle_reserve() != 0) || (w = ctx__alloc(sizeof *w)) == NULL) {
        errno = ENOMEM;
        return NULL;
    }
    struct ctx__custom *cu = ctx__node_alloc(sizeof *cu);
    if (cu == NULL) {
        ctx__free(w);
        errno = ENOMEM;
        return NULL;
    }
    w->next = w->fire_next = NULL;
    w->ctx = &cu->base;
    w->fd = fd;
    w->state = W_NEW;
    w->id = id;
    cu->ops = &peer_ops;
    cu->data = w;
    cu->done = peer_done;
    ctx__init_cancel(&cu->base, parent, CTX__CUSTOM);

    int e = 0;
    lock();
    if (w->state == W_NEW) { /* else: done at birth, or already cancelled by an ancestor */
        e = start();
        if (e == 0)
            e = grow(fd);
        if (e == 0 && slots[fd].head != NULL && !same_socket(&slots[fd].id, &id)) {
            /* The listed watches' socket was closed and fd is a new one:
             * they can no longer fire (see "Identity" above). */
            for (struct watch *o = slots[fd].head; o != NULL; o = o->next)
                o->state = W_GONE;
            slots[fd].head = NULL;
            slots[fd].gen++;
        }
        if (e == 0) {
            /* Added even when fd has watches already: their socket may be
             * gone, closed by an owner that had not ended its context yet
             * (the set then dropped it), and this fd number a new socket.
             * When the same socket is there, armed or reported already,
             * the add (re-)arms it. */
            e = ctx__plat_watch_add(fd, event_key(fd));
        }
        if (e == 0) {
            w->next = slots[fd].head;
            slots[fd].head = w;
            slots[fd].id = id;
            w->state = W_LISTED;
        }
    }
    unlock();
    if (e != 0) {
        ctx_unref(&cu->base); /* runs peer_destroy */
        errno = e;
        return NULL;
    }
    if (cancel != NULL)
        *cancel = ctx__handle_bind(&cu->base);
    return &cu->base;
}
