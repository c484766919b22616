/* SPDX-License-Identifier: MIT */

/*
 * Internal declarations shared by the library's source files.  Nothing here
 * is part of the public API.  docs/DESIGN.md explains the layout and the
 * locking protocol in prose; this file is the authority on the details.
 */
#ifndef CTX_INTERNAL_H
#define CTX_INTERNAL_H

/* The library is C11 without extensions; it needs POSIX (clock_gettime,
 * pthreads) and, on Linux, a few GNU declarations (eventfd, syscall).  Every
 * source file includes this header first. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

/* The library calls its own functions, not the call-site macros. */
#define CTX_NO_SITE_MACROS
#include "ctx.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/*
 * Kinds of node.  Stored in the low three bits of ctx->pk, so there can be at
 * most eight.  ROOT, VALUE and WITHOUT share the done state of another node
 * (their owner); CANCEL, TIMER and CUSTOM own a done state ("cancel nodes").
 * AFTER is not a context but an AfterFunc registration laid out like a node
 * so that it can sit in a children list beside real children.
 */
enum ctx__kind {
    CTX__ROOT = 0,
    CTX__VALUE = 1,
    CTX__WITHOUT = 2,
    CTX__CANCEL = 3,
    CTX__TIMER = 4,
    CTX__CUSTOM = 5,
    CTX__AFTER = 6,
};

struct ctx__timer;

/* Thread-local variables of the library.  The initial-exec model makes each
 * access a single %fs-relative load in the shared library too, instead of a
 * call to __tls_get_addr; the variables are a few words, well within the
 * static TLS surplus that glibc's loader keeps for such libraries.  CMake
 * sets CTX_TLS_INITIAL_EXEC only with glibc: musl's loader has no surplus
 * and refuses to dlopen a library that needs one. */
#if defined(CTX_TLS_INITIAL_EXEC) && (defined(__GNUC__) || defined(__clang__))
#define CTX__TLS _Thread_local __attribute__((tls_model("initial-exec")))
#else
#define CTX__TLS _Thread_local
#endif

/* An intrusive doubly linked list entry.  pprev points at whatever points at
 * this entry (the list head or the previous entry's next), so removal is
 * O(1) without knowing the list.  pprev == NULL means "not in a list". */
struct ctx__link {
    struct ctx__link *next;
    struct ctx__link **pprev;
};

/* A cancellation message, shared by every node a cancellation reaches.
 * It also carries the cancel site (file, line, function of the ctx_cancel
 * call: static strings), so that recording the site costs the 64-byte node
 * nothing.  has_text is 0 for a block that carries only a site.  size is 0
 * for a block from ctx__alloc, or CTX__MSG_STATIC for a site-only block of
 * cancel.c's static table, which is never counted nor freed. */
struct ctx__msg {
    _Atomic uint32_t refs;
    uint16_t has_text;
    uint16_t size;
    const char *file;
    const char *func;
    int line;
    char text[];
};

#define CTX__MSG_STATIC 0xffffu

/* The message text of m, or NULL when m is NULL or carries only a site. */
static inline const char *ctx__msg_text(const struct ctx__msg *m)
{
    return m != NULL && m->has_text ? m->text : NULL;
}

/* Bits of the done-state word.  The low byte is the err code (0, ECANCELED
 * or ETIMEDOUT; both fit in a byte on every supported platform), set once.
 * Every change of the word, err or flag, is made under the node's lock;
 * readers load it without the lock. */
#define CTX__ERR_MASK 0xffu
#define CTX__WAITERS  0x100u /* a thread sleeps on this word (futex) */
#define CTX__HAS_FD   0x200u /* a done fd exists in the fd table */
#define CTX__FANNED   0x400u /* children live in a ctx__fan (below) */
/* Done, and possibly still in its parent's children: its canceller, which
 * held it through its lock only, could not take the parent's lock without
 * waiting (tree.c).  The free unlinks it. */
#define CTX__DETACH 0x800u
/* A CANCEL node that has a cancel handle: it is a struct ctx__hnode.  Set
 * before the node is published and never changed.  (TIMER and CUSTOM nodes
 * always have the handle field.) */
#define CTX__HANDLE 0x1000000u
/* Bits 16-23: 1 + the fan shard of the parent that links this node and
 * holds its parent reference, or 0.  Set before the node is published and
 * never changed. */
#define CTX__FAN_SHIFT 16
#define CTX__FAN_BITS  0xff0000u

/*
 * A node.  Every kind begins with the same header (owner, pk, refs, lock:
 * 24 bytes, 16 with 32-bit pointers), then a kind-specific union.  A cancel
 * node is exactly 64 bytes with 64-bit pointers.
 */
struct ctx {
    /* Immutable.  For ROOT, VALUE and WITHOUT nodes: the owner, the node
     * whose done state this context reports (a root is its own owner; a
     * value node's is its nearest cancel ancestor or a root; a without node's
     * is the background root).  Cancel nodes own their state, so for them
     * this slot instead points at the nearest TIMER node at or above them,
     * or is NULL: ctx_deadline in O(1).  For an AFTER record: the node in
     * whose children list the record was put.  Use ctx__owner() and
     * ctx__dlsrc() rather than the raw field. */
    struct ctx *up;
    /* Parent pointer | kind.  Immutable.  The node holds a reference to its
     * parent.  For an AFTER record, the context it was registered on. */
    uintptr_t pk;
    /* Reference count.  Static roots ignore it. */
    _Atomic uint32_t refs;
    /* Protects the children list, the transition of the err bits from 0, the
     * done fd's creation, and (in the PARENT's lock) this node's link.  A
     * futex word: 0 unlocked, 1 locked, 2 locked with waiters. */
    _Atomic uint32_t lock;
    union {
        struct {
            const ctx_key_t *key;
            void *value;
            void (*destroy)(void *value);
            /* A key filter.  Node i of a chain of value nodes (numbered
             * from 1 at the top, value.c) covers the nodes i - span + 1 to
             * i, where span is i's lowest set bit, at most CTX__SEG; bloom
             * holds two bits per key they bind (ctx__key_bits) and skip is
             * the node just above them (NULL when that is a root).  A
             * lookup that finds one of its key's bits clear jumps to skip.
             * The index i is kept in the header's lock word, which value
             * nodes do not use. */
            uint64_t bloom;
            struct ctx *skip;
        } v; /* CTX__VALUE */
        struct {
            /* err | flags.  Changed only under lock, with release;
             * read with acquire by ctx_err and friends, which then read
             * cause and msg. */
            _Atomic uint32_t state;
            int32_t cause;        /* written before err is published */
            struct ctx__msg *msg; /* written before err is published */
            /* Children, newest first: cancel nodes and AFTER records that
             * registered here.  Under lock.  With CTX__FANNED in state: the
             * node's struct ctx__fan, tagged with bit 0, set once. */
            struct ctx__link *children;
            /* Our entry in owner-of-parent's children list, under the
             * parent owner's lock.  Once a canceller has unlinked this node,
             * link.next is that canceller's to use (as a stack link). */
            struct ctx__link link;
        } c; /* CTX__CANCEL, CTX__TIMER, CTX__CUSTOM */
        struct {
            _Atomic uint32_t run; /* enum ctx__run, futex word */
            uint32_t handle;      /* CTX__HANDLE_*: misuse checks */
            void (*fn)(void *arg);
            void *arg;
            struct ctx__link link; /* must sit where c.link sits */
        } a;                       /* CTX__AFTER */
    } u;
};

#define CTX__ALIGN_CHECK(x) _Static_assert(x, #x)
CTX__ALIGN_CHECK(offsetof(struct ctx, u.a.link) == offsetof(struct ctx, u.c.link));
/* The layout per ABI.  With 64-bit pointers a node is one 64-byte cache
 * line and the state word sits at byte 24; with 32-bit pointers the header
 * is 16 bytes, the state word at byte 16, and a node 40 bytes (i386, where
 * uint64_t is 4-aligned in a struct) or 48 (8-aligned: ARM, RISC-V).  The
 * allocator hands out 64- and 96-byte blocks either way. */
#if UINTPTR_MAX == UINT64_MAX
CTX__ALIGN_CHECK(sizeof(struct ctx) == 64);
CTX__ALIGN_CHECK(offsetof(struct ctx, u.c.state) == 24);
#elif UINTPTR_MAX == UINT32_MAX
CTX__ALIGN_CHECK(sizeof(struct ctx) == 40 || sizeof(struct ctx) == 48);
CTX__ALIGN_CHECK(offsetof(struct ctx, u.c.state) == 16);
#else
#error "libctx supports 32-bit and 64-bit pointers only"
#endif
/* The inline ctx_err in ctx.h reads owner, kind and state at the offsets
 * of its struct ctx_abi_node_, which must be ours. */
CTX__ALIGN_CHECK(offsetof(struct ctx, up) == 0);
#if (defined(__GNUC__) || defined(__clang__)) && !defined(CTX_NO_INLINE)
CTX__ALIGN_CHECK(offsetof(struct ctx, pk) == offsetof(struct ctx_abi_node_, kind));
CTX__ALIGN_CHECK(offsetof(struct ctx, u.c.state) == offsetof(struct ctx_abi_node_, state));
#endif

/* The longest range a value node's filter covers (a power of two), and
 * the index at which a chain of value nodes starts anew.  Shorter ranges
 * (8) gave fewer false yeses but twice the jumps over a long chain. */
#define CTX__SEG       16
#define CTX__CHAIN_MAX 0x80000000u
/* How many nodes without values (cancel, timer, without-cancel) a new value
 * node looks through for the chain to continue (value.c). */
#define CTX__SEG_HOPS 8

/* A key's two filter bits: Fibonacci hashing of its address, two 6-bit
 * fields of the product that lie apart.  Keys laid out at a fixed stride
 * (an array of keys) got correlated pairs from two adjacent fields, and
 * their filters answered yes for each other far more often. */
static inline uint64_t ctx__key_bits(const ctx_key_t *key)
{
    uint64_t h = (uint64_t)(uintptr_t)key * 0x9E3779B97F4A7C15u;
    return ((uint64_t)1 << (h >> 58)) | ((uint64_t)1 << ((h >> 46) & 63));
}

/* The stop handle of an AFTER record, for the misuse checks:
 * a handle passed to ctx_after_stop twice, or after its record was freed,
 * reads STOPPED or FREED (as long as the memory was not reused). */
#define CTX__HANDLE_LIVE    0x4c495645u /* "LIVE" */
#define CTX__HANDLE_STOPPED 0x53544f50u /* "STOP" */
#define CTX__HANDLE_FREED   0x46524545u /* "FREE" */

/* Misuse the documentation promises to catch.  In every build: each check
 * is a compare on a word the call reads anyway, predicted not taken.  Keep
 * the call out of inlined hot paths' way (see drop_ref in tree.c): it must
 * not stop the compiler from inlining them. */
#if defined(__GNUC__) || defined(__clang__)
#define CTX__UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define CTX__UNLIKELY(x) (x)
#endif
#define CTX__MISUSE(cond, msg)                                                                     \
    do {                                                                                           \
        if (CTX__UNLIKELY(cond))                                                                   \
            ctx__misuse(msg);                                                                      \
    } while (0)
#if defined(__GNUC__) || defined(__clang__)
__attribute__((noreturn, cold))
#endif
void ctx__misuse(const char *msg);

/* The run state of an AFTER record. */
enum ctx__run {
    CTX__RUN_PENDING = 0,
    CTX__RUN_RUNNING = 1,
    CTX__RUN_DONE = 2,
    CTX__RUN_STOPPED = 3,
    CTX__RUN_WAITER = 4, /* flag: a stopper sleeps until DONE */
};

/* A cancel node with the word its cancel handle names (core/cancel.c).
 * TIMER and CUSTOM nodes begin the same way; a CANCEL node is one only when
 * its state has CTX__HANDLE.  All of them are handle blocks (alloc.c: 96
 * bytes, 64 on i386), and the word
 * belongs to the allocator and the handle code, never to the node's
 * creator: in a block of the slab (alloc.c) it is the block's generation,
 * which outlives the node (CTX__SLAB_WORD set); in a block from
 * ctx__alloc it is the index + 1 of the node's handle cell, or 0. */
struct ctx__hnode {
    struct ctx base;
    _Atomic uint32_t handle;
};

/* A custom node: a cancel node plus the user's hooks. */
struct ctx__custom {
    struct ctx base;
    _Atomic uint32_t handle; /* as in struct ctx__hnode */
    const ctx_custom_ops_t *ops;
    void *data;
    /* Library-internal: called with data when the node becomes done (by
     * any cause), from mark() with the node's lock held just before err is
     * published, or from its creation when it is born done.  Set before
     * the node is linked; NULL for the public ctx_with_custom.  peer.c
     * uses it to stop watching a socket. */
    void (*done)(void *data);
};

/* A timer node: a cancel node with a deadline and its place in the timer
 * structures of its shard (timer.c): a slot of the timing wheel or the due
 * list, through the one link (wheel.pprev == NULL: in neither).  Until the
 * node is done, base.u.c.cause and base.u.c.msg hold the cause and the
 * message (a reference) its deadline reports.  96 bytes, and the timer
 * structures need no memory of their own per timer. */
struct ctx__timer {
    struct ctx base;
    _Atomic uint32_t handle; /* as in struct ctx__hnode */
    uint8_t shard;           /* which shard holds it; immutable */
    uint8_t level;           /* wheel level, or AT_DUE: timer.c */
    uint16_t slot;           /* wheel slot */
    ctx_time_t deadline;
    struct ctx__link wheel; /* under the shard lock */
};
#if UINTPTR_MAX == UINT64_MAX
CTX__ALIGN_CHECK(sizeof(struct ctx__timer) == 96);
#else
CTX__ALIGN_CHECK(sizeof(struct ctx__timer) <= 96);
#endif
CTX__ALIGN_CHECK(sizeof(struct ctx__hnode) <= 96);
CTX__ALIGN_CHECK(offsetof(struct ctx__timer, handle) == offsetof(struct ctx__hnode, handle));
CTX__ALIGN_CHECK(offsetof(struct ctx__custom, handle) == offsetof(struct ctx__hnode, handle));

/*
 * A parent's fan-out: where the children of a cancel node that many threads
 * derive from at once (a server's base context) are linked.  Installed on
 * the first contended creation of a child; then a child made by a thread
 * goes into that thread's shard, under the shard's lock, and its reference
 * to the parent is counted in the shard (the shard holds one real reference
 * while it counts any), so that creating, cancelling and freeing children
 * touch the thread's own cache line instead of the parent's.  Children made
 * before the install, children of value nodes over the parent, and AfterFunc
 * records stay in the legacy list, under the parent's lock.  When the
 * parent is cancelled, the walk closes every shard (a closed shard links
 * nothing more) and moves its children to the legacy list, under both
 * locks, so the rest of the walk is the ordinary one.  Freed with the
 * parent.  tree.c has the protocol.
 */
#define CTX__NFAN 16
struct ctx__fan_shard {
    _Atomic uint32_t lock;      /* a futex lock: ctx__lock/ctx__unlock */
    uint32_t closed;            /* the parent is done: link nothing here */
    uint32_t kids;              /* children whose parent reference is here */
    uint16_t has_ref;           /* the shard holds CTX__FAN_REF in refs */
    uint16_t dying;             /* give has_ref back when kids reaches 0 */
    struct ctx__link *children; /* under lock */
    char pad[64 - 4 * sizeof(uint32_t) - sizeof(struct ctx__link *)];
};
/* A shard's reference to its parent, in the parent's count.  A shard takes
 * it with its first child and keeps it while children come and go, so that
 * a thread creating and freeing one child at a time never writes the
 * parent's line; when only shards hold the parent (the count is a multiple
 * of this), each gives it back as soon as it has no child.  16 shards fit
 * below 2^31; other references must stay below 2^27. */
#define CTX__FAN_REF (1u << 27)
struct ctx__fan {
    void *mem;                /* what ctx__alloc returned (for alignment) */
    struct ctx__link *legacy; /* under the parent's lock */
    char pad[64 - sizeof(void *) - sizeof(struct ctx__link *)];
    struct ctx__fan_shard sh[CTX__NFAN]; /* each on its own cache line */
};

/* clang-format off */
#define CTX__CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr) - offsetof(type, member)))
/* clang-format on */

static inline unsigned ctx__kind(const struct ctx *c)
{
    return (unsigned)(c->pk & 7u);
}

static inline struct ctx *ctx__parent(const struct ctx *c)
{
    return (struct ctx *)(c->pk & ~(uintptr_t)7u);
}

static inline int ctx__is_cancel_kind(unsigned kind)
{
    return kind >= CTX__CANCEL && kind <= CTX__CUSTOM;
}

/* ctx_ref for the library's own use: inline, no call through the shared
 * library's PLT. */
static inline struct ctx *ctx__ref(struct ctx *c)
{
    if (ctx__kind(c) != CTX__ROOT)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

/* t + d, saturating at the ends of int64_t. */
static inline ctx_time_t ctx__add_sat(ctx_time_t t, ctx_duration_t d)
{
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    if (d < 0 && t < INT64_MIN - d)
        return INT64_MIN;
    return t + d;
}

/* An instant on CLOCK_MONOTONIC as the absolute timespec that futexes and
 * condition variables on that clock take. */
static inline struct timespec ctx__timespec(ctx_time_t t)
{
    struct timespec ts = { (time_t)(t / CTX_SECOND), (long)(t % CTX_SECOND) };
    return ts;
}

/* The node holding c's done state: c itself, or a root. */
static inline struct ctx *ctx__owner(struct ctx *c)
{
    return ctx__kind(c) >= CTX__CANCEL ? c : c->up;
}

/* The nearest TIMER node at or above c, or NULL when c has no deadline. */
static inline struct ctx__timer *ctx__dlsrc(struct ctx *c)
{
    struct ctx *o = ctx__owner(c);
    return ctx__kind(o) == CTX__ROOT ? NULL : (struct ctx__timer *)o->up;
}

static inline struct ctx *ctx__from_link(struct ctx__link *l)
{
    return CTX__CONTAINER(l, struct ctx, u.c.link);
}

/* The fan-out of p, whose state (read by the caller: under p's lock, or
 * with acquire) has CTX__FANNED.  The pointer is immutable once set. */
static inline struct ctx__fan *ctx__fan_of(struct ctx *p)
{
    return (struct ctx__fan *)((uintptr_t)p->u.c.children & ~(uintptr_t)1);
}

/* The head of p's locked children list (the legacy list when p is fanned).
 * Under p's lock. */
static inline struct ctx__link **ctx__kids(struct ctx *p)
{
    if (atomic_load_explicit(&p->u.c.state, memory_order_relaxed) & CTX__FANNED)
        return &ctx__fan_of(p)->legacy;
    return &p->u.c.children;
}

/* The roots.  Their owner is themselves and their state is always 0. */
extern struct ctx ctx__background_node;
extern struct ctx ctx__todo_node;

/* ---- allocation (alloc.c) */
void *ctx__alloc(size_t size);
void ctx__free(void *p);
/* Node blocks (at most 96 bytes), from a per-thread cache when possible.
 * ctx__node_free must be given the size passed to ctx__node_alloc.  A
 * block larger than struct ctx is a struct ctx__hnode, ctx__timer or
 * ctx__custom (a "handle block", from the slab below): its handle word is
 * set up by ctx__node_alloc and must not be written by the caller. */
void *ctx__node_alloc_slow(size_t size);
void ctx__node_free_slow(void *p, size_t size);

/* The 64-byte blocks a thread keeps (alloc.c) are compiled out under the
 * sanitizers, so that every such node is an allocation they track. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define CTX__NODE_CACHE 0
#define CTX__SANITIZED  1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define CTX__NODE_CACHE 0
#define CTX__SANITIZED  1
#endif
#endif
#ifndef CTX__NODE_CACHE
#define CTX__NODE_CACHE 1
#define CTX__SANITIZED  0
#endif

/* A thread's free node blocks (alloc.c): [0] 64-byte blocks, at most
 * CTX__CACHE_MAX; [1] slab blocks.  state: 0 new, 1 registered for the
 * flush at the thread's exit, 2 gone.  Caching is on only with the default
 * allocator. */
struct ctx__cache {
    void *head[2];
    unsigned n[2];
    int state;
};
#define CTX__CACHE_MAX 2048u
extern CTX__TLS struct ctx__cache ctx__tc;
extern _Atomic int ctx__caching;

/* A block from this thread's cache is a few loads and stores, inline in
 * the caller: a call would cost as much again.  (The size is a constant at
 * almost every call, so one of the two lists is picked at compile time.)
 * A slab block goes back to the list here only when it has no bound
 * handle, the thread's list has room, and the thread is registered for the
 * flush at its exit; the slow path does the rest. */
#define CTX__SLAB_CACHE 512u
static inline void *ctx__node_alloc(size_t size)
{
#if CTX__NODE_CACHE
    int k = size > sizeof(struct ctx);
    void *p = ctx__tc.head[k];
    if (p != NULL && atomic_load_explicit(&ctx__caching, memory_order_relaxed)) {
        ctx__tc.head[k] = *(void **)p;
        ctx__tc.n[k]--;
        return p;
    }
#endif
    return ctx__node_alloc_slow(size);
}

static inline int ctx__node_keep(void *p, size_t size);

static inline void ctx__node_free(void *p, size_t size)
{
#if CTX__NODE_CACHE
    if (ctx__node_keep(p, size)) {
        int k = size > sizeof(struct ctx);
        *(void **)p = ctx__tc.head[k];
        ctx__tc.head[k] = p;
        ctx__tc.n[k]++;
        return;
    }
#endif
    ctx__node_free_slow(p, size);
}

/* The slab of handle blocks (alloc.c): 96 bytes (64 on i386).  With the
 * default allocator every node with a handle field comes from here: chunks of CTX__SLAB_CHUNK bytes
 * aligned to their size, each a 64-byte header (the chunk's number) and then CTX__SLAB_PER blocks,
 * taken from the system in bulk and never given back.  A block stays a handle block forever
 * (type-stable), so the word at its handle offset stays readable after the node in it is freed:
 * that word is the block's generation, and a cancel handle is the block's number and that
 * generation (core/cancel.c).  Block number i is block i & 4095 of chunk i >> 12; a chunk's number
 * is published (release, in ctx__slab_nchunks) after its address. */
/* 96 bytes; 64 where every node with a handle field fits (i386, whose
 * 8-byte integers are 4-aligned in a struct). */
#define CTX__SLAB_FITS64                                                                           \
    (sizeof(struct ctx__timer) <= 64 && sizeof(struct ctx__custom) <= 64 &&                        \
     sizeof(struct ctx__hnode) <= 64)
#define CTX__SLAB_BLOCK (CTX__SLAB_FITS64 ? 64u : 96u)
#define CTX__SLAB_HEAD  64u
#define CTX__SLAB_CHUNK ((uintptr_t)1 << 18) /* 64 + 2730 * 96 or 4095 * 64 */
#define CTX__SLAB_PER   ((uint32_t)((CTX__SLAB_CHUNK - CTX__SLAB_HEAD) / CTX__SLAB_BLOCK))
#define CTX__SLAB_SHIFT 12 /* a block's number: chunk << 12 | place */
#if UINTPTR_MAX > 0xffffffffu
#define CTX__SLAB_MAXCH (1u << 17) /* 32 GiB of blocks */
#else
#define CTX__SLAB_MAXCH 128u /* 32 MiB: block numbers below 2^19 */
#endif
extern unsigned char *_Atomic ctx__slab_chunks[CTX__SLAB_MAXCH];
extern _Atomic uint32_t ctx__slab_nchunks;
/* The handle word of a slab block: CTX__SLAB_WORD, the generation in bits
 * 2-30, CTX__SLAB_BOUND while the node in the block has a handle (from
 * ctx__handle_bind to its drop, or to the end of the first ctx_cancel
 * through it: ctx__slab_retire); bit 0 is unused (a ctx_cancel holds the
 * node by its lock, not through the word).  A word without CTX__SLAB_WORD
 * belongs to a block from ctx__alloc (a cell index + 1, or 0). */
#define CTX__SLAB_WORD  0x80000000u
#define CTX__SLAB_BOUND 2u
#define CTX__SLAB_GEN   0x1fffffffu /* after >> 2 */
/* The handle word of a handle block. */
static inline _Atomic uint32_t *ctx__hword(void *block)
{
    return &((struct ctx__hnode *)block)->handle;
}
/* Whether ctx__node_free may put block p (of size) in this thread's
 * cache inline. */
static inline int ctx__node_keep(void *p, size_t size)
{
    if (ctx__tc.state != 1)
        return 0;
    if (size <= sizeof(struct ctx))
        return ctx__tc.n[0] < CTX__CACHE_MAX &&
               atomic_load_explicit(&ctx__caching, memory_order_relaxed);
    return ctx__tc.n[1] < CTX__SLAB_CACHE &&
           (atomic_load_explicit(ctx__hword(p), memory_order_relaxed) &
            (CTX__SLAB_WORD | CTX__SLAB_BOUND)) == CTX__SLAB_WORD;
}

/* Makes the handle of a bound slab block stale: bumps the generation and
 * clears CTX__SLAB_BOUND (cancel.c). */
void ctx__slab_drop(_Atomic uint32_t *word);
/* For tests: blocks carved so far, free in the global list, free in this
 * thread's list. */
void ctx__slab_counts(size_t *made, size_t *global_free, size_t *mine);

/* ---- futex (linux/futex.c or posix/futex.c).  wait returns 0 when woken
 * or when *addr != expected, ETIMEDOUT when abs_deadline (CLOCK_MONOTONIC,
 * NULL for none) passed, EINTR when interrupted. */
int ctx__futex_wait(_Atomic uint32_t *addr, uint32_t expected, const struct timespec *abs_deadline);
void ctx__futex_wake(_Atomic uint32_t *addr, int count);
/* fork support for an emulation that uses locks: 0 prepare, 1 parent,
 * 2 child. */
void ctx__futex_atfork(int phase);

/* ---- the node lock: a three-state futex mutex. */
void ctx__lock_slow(_Atomic uint32_t *l);

/* The bare lock, for fork's handlers (fork.c), which must not count
 * themselves as lock holders. */
static inline void ctx__lock_raw(_Atomic uint32_t *l)
{
    uint32_t expected = 0;
    /* Acquire: pairs with the release in ctx__unlock_raw, publishing
     * everything written under the lock by its previous holder. */
    if (atomic_compare_exchange_strong_explicit(l, &expected, 1, memory_order_acquire,
                                                memory_order_relaxed))
        return;
    ctx__lock_slow(l);
}

static inline void ctx__unlock_raw(_Atomic uint32_t *l)
{
    /* Release: pairs with the acquire in ctx__lock_raw. */
    if (atomic_exchange_explicit(l, 0, memory_order_release) == 2)
        ctx__futex_wake(l, 1);
}

/* ---- fork safety (fork.c).  Every library lock is taken inside a "hold":
 * a per-thread depth that fork's prepare handler waits to see at zero in
 * every thread, so that a child process never inherits a lock held by a
 * thread it does not have.  The outermost hold costs two relaxed stores
 * and a relaxed load (fork.c explains the membarrier that makes that
 * enough). */
struct ctx__holder {
    _Atomic uint32_t depth; /* read by the forking thread */
    uint32_t plain;         /* the same, for this thread's own use */
    int state;              /* 0 unregistered, 1 registered, 2 thread gone */
    struct ctx__holder *next, *prev;
};
extern CTX__TLS struct ctx__holder ctx__me;
extern _Atomic int ctx__forking;
extern _Atomic int ctx__fence_needed;
void ctx__hold_slow(void);

static inline void ctx__hold(void)
{
    if (ctx__me.plain++ != 0)
        return; /* already inside: the fork waits for us anyway */
    if (ctx__me.state != 1) {
        ctx__hold_slow();
        return;
    }
    atomic_store_explicit(&ctx__me.depth, 1, memory_order_relaxed);
    if (atomic_load_explicit(&ctx__fence_needed, memory_order_relaxed))
        atomic_thread_fence(memory_order_seq_cst);
    else
        atomic_signal_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&ctx__forking, memory_order_relaxed))
        ctx__hold_slow();
}

static inline void ctx__release(void)
{
    if (--ctx__me.plain == 0)
        /* Release: what we did under the locks happens before the forking
         * thread sees zero. */
        atomic_store_explicit(&ctx__me.depth, 0, memory_order_release);
}

static inline void ctx__lock(_Atomic uint32_t *l)
{
    ctx__hold();
    ctx__lock_raw(l);
}

static inline void ctx__unlock(_Atomic uint32_t *l)
{
    ctx__unlock_raw(l);
    ctx__release();
}

/* ---- lists (under the owning node's lock) */
static inline void ctx__link_insert(struct ctx__link **head, struct ctx__link *l)
{
    l->next = *head;
    if (l->next != NULL)
        l->next->pprev = &l->next;
    l->pprev = head;
    *head = l;
}

static inline void ctx__link_remove(struct ctx__link *l)
{
    *l->pprev = l->next;
    if (l->next != NULL)
        l->next->pprev = l->pprev;
    l->next = NULL;
    l->pprev = NULL;
}

/* ---- tree.c */
/* Cancels n and its subtree with (err, cause, msg); msg may be NULL and is
 * not consumed.  With defer set, AfterFunc callbacks go to the callback
 * threads instead of running on the caller (the timer thread uses this). */
void ctx__cancel(struct ctx *n, uint32_t err, int cause, struct ctx__msg *msg, int defer);
/* A chain of AFTER records and done nodes (linked through link.next) for
 * the callback threads; tail points at the last next field (or at head). */
struct ctx__chain {
    struct ctx__link *head, **tail;
};
/* Cancels t with CTX_DEADLINE_EXCEEDED and the cause its deadline reports,
 * appending the AfterFunc records it finds to *defer (the timer thread), or
 * running them on the caller when defer is NULL. */
void ctx__cancel_deadline(struct ctx__timer *t, struct ctx__chain *defer);
/* kind may carry CTX__WITH_HANDLE (CANCEL only): n is a struct ctx__hnode
 * that ctx__handle_bind will give a handle. */
void ctx__init_cancel(struct ctx *n, ctx_t *parent, unsigned kind);
#define CTX__WITH_HANDLE 0x100u
struct ctx__msg *ctx__msg_new(const char *text);
void ctx__msg_unref(struct ctx__msg *m);
int ctx__try_ref(struct ctx *c);
/* ctx_unref for the library's own use: a direct call, not one through the
 * shared library's PLT. */
void ctx__unref(struct ctx *c);

/* ---- core/cancel.c: generation-checked handles.  A handle names a
 * generation word and carries its value; freeing the object bumps the
 * generation, so a handle that outlived its object is recognised as stale
 * (a no-op for ctx_cancel, EINVAL for a group) instead of touching freed
 * memory, and a value that was never a handle is recognised as foreign.
 * The word is inside the node when the node is a slab block (see above),
 * else in a cell of a table that is never freed (groups, and nodes from a
 * program's allocator); a tag bit in the handle tells the two apart.
 *
 * reserve makes sure this thread holds a free cell (0 or ENOMEM), so that
 * the bind that follows it on the same thread cannot fail; call it before
 * anything that would have to be undone.  bind gives the cancel node n (a
 * handle block) a handle; handle_new gives any object a cell, storing the
 * cell index + 1 in *idx.  pin returns the object of a live cell handle
 * and keeps it from being dropped until unpin, or NULL for a stale one (a
 * slab handle's node is held by its lock instead: cancel.c); it
 * aborts with a message naming `what` for a foreign one.  peek is pin
 * without the pin, for an object whose owner keeps it alive (a stale
 * handle still reads NULL).  drop takes the index + 1 from handle_new and
 * makes every handle to the cell stale, waiting while it is pinned;
 * drop_node does the same for node n's handle, if n has one, and is the
 * first thing the free of a node with a handle field does. */
int ctx__handle_reserve(void);
ctx_cancel_t *ctx__handle_bind(struct ctx *n);
void *ctx__handle_new(void *obj, uint32_t *idx);
void *ctx__handle_pin(const void *h, const char *what);
void ctx__handle_unpin(const void *h);
void *ctx__handle_peek(const void *h, const char *what);
void ctx__handle_drop(uint32_t idx);
void ctx__handle_drop_node(struct ctx *n);
/* Called by a ctx_cancel through n's slab handle, with n's lock held and
 * n's subtree done, just before the lock goes: the handle goes stale at
 * once (any later cancel through it would be a no-op anyway), so that
 * n's free finds no live handle and needs no read-modify-write to bump
 * the generation.  A no-op for a node without a bound slab handle. */
void ctx__slab_retire(struct ctx *n);
/* For tests: the cells made so far. */
size_t ctx__handle_cells(void);
/* Cancels n, pinned through handle h, as ctx__cancel(n, ..., 0) does, and
 * unpins h as soon as n itself is no longer needed: before the AfterFunc
 * callbacks run, since one of them may drop n's last reference. */
void ctx__cancel_pinned(struct ctx *n, int cause, struct ctx__msg *msg, const void *h);
/* The same for a node of the slab that the caller holds through nothing
 * but its lock, taken by ctx__lock_sc and released here. */
void ctx__cancel_locked(struct ctx *n, int cause, struct ctx__msg *msg);
/* ctx__cancel_locked for a live plain cancel node with no child, AfterFunc
 * record, waiter or fd, without the walk: returns 1, or 0 having done
 * nothing (n still locked) for any other node. */
int ctx__cancel_leaf_locked(struct ctx *n, int cause, struct ctx__msg *msg);
/* ctx__lock for a lock that pins a slab node: the acquisition is
 * sequentially consistent, so that a check of the block's generation after
 * it and the free's bump of the generation followed by its look at the
 * lock cannot both miss each other. */
void ctx__lock_sc(_Atomic uint32_t *l);

/* ---- thread.c: the library's threads (the bottom layer: it calls nothing
 * else in the library). */
/* Starts a detached thread running fn(arg) with every signal blocked (the
 * program's signals are for its own threads).  stack 0 means the default
 * size.  Returns 0 or pthread_create's error. */
int ctx__thread_start_arg(void *(*fn)(void *), void *arg, size_t stack);
/* The same with arg NULL. */
int ctx__thread_start(void *(*fn)(void *), size_t stack);
/* For ctx_shutdown.  join_begin: threads that end from now on stay to be
 * joined (they detach themselves otherwise).  join_all: joins every
 * library thread, waiting for each to end, and returns how many; call it
 * once every subsystem has told its threads to end.  join_cancel: the
 * shutdown was refused; joins the threads that ended meanwhile. */
void ctx__thread_join_begin(void);
int ctx__thread_join_all(void);
void ctx__thread_join_cancel(void);
/* ctx_shutdown's steps, one per subsystem with threads: each returns EBUSY
 * while its threads have work (leaving them running), else tells them to
 * end as soon as they are idle and returns 0.  A later use starts them
 * again.  group.c, io/peer.c, signal.c, core/timer.c, after.c. */
int ctx__pool_quit(void);
int ctx__peer_quit(void);
int ctx__signal_quit(void);
int ctx__timer_quit(void);
int ctx__after_quit(void);
/* Names the calling thread (at most 15 bytes are kept), for thread
 * listings and debuggers: "ctx-timer", "ctx-after", ... */
void ctx__thread_name(const char *name);

/* ---- fork.c: fork(2) hooks.  A subsystem with locks or threads registers
 * its hooks once, before its locks are first used (CTX__FORK_HOOKS below
 * does it when the library is loaded).  prepare runs the prepare hooks in
 * increasing rank, after every library lock holder has left (or, with early
 * set, before that wait: for a lock held across a hold, such as the timer
 * thread's firing lock); parent and child run in decreasing rank.  Ranks
 * order the subsystems' locks: a subsystem whose lock may be taken while
 * another's is held ranks after it.  Pick a free rank between the ones
 * below; at most CTX__FORK_MAX hooks. */
struct ctx__fork_hooks {
    int rank;
    int early;
    void (*prepare)(void);
    void (*parent)(void);
    void (*child)(void);
};
#define CTX__FORK_RANK_TIMER_FIRE 10  /* timer.c: T.fire (early) */
#define CTX__FORK_RANK_TIME       100 /* timer.c: T.mu, the shard locks */
#define CTX__FORK_RANK_AFTER      110 /* after.c: the callback queue */
#define CTX__FORK_RANK_WAIT       200 /* wait.c: the done-fd table, describe */
#define CTX__FORK_RANK_THREADS    300 /* thread.c: forgets the parent's threads */
#define CTX__FORK_MAX             32
void ctx__fork_register(const struct ctx__fork_hooks *h);
/* Defines hooks `name` and registers them when the library is loaded. */
#define CTX__FORK_HOOKS(name, ...)                                                                 \
    static const struct ctx__fork_hooks name = { __VA_ARGS__ };                                    \
    __attribute__((constructor)) static void name##_register(void)                                 \
    {                                                                                              \
        ctx__fork_register(&name);                                                                 \
    }
void ctx__fork_init(void);

/* ---- core/timer.c: the timer structures.  remove is called with the
 * node's lock held (lock order: node locks, then the timer lock). */
void ctx__timer_remove(struct ctx__timer *t);
/* Starts the timer thread if deadlines are pending and it is not running
 * (only after fork(2) in the child). */
void ctx__timer_restart(void);
/* For core/deadline.c: makes a deadline node under parent, deadline d, the
 * given cause and message (NULL for none), armed in the timer structures;
 * now is the caller's reading of ctx_now() (not read again), or
 * CTX__NOT_READ.  NULL with errno set on failure. */
#define CTX__NOT_READ INT64_MIN
ctx_t *ctx__timer_new(ctx_t *parent, ctx_time_t d, ctx_time_t now, int cause, const char *text,
                      ctx_cancel_t **cancel);
void ctx__describe_atfork(int release);

/* ---- core/clock.c: the mode and the manual clock's time, which the
 * timers' manual clock sets (relaxed: see clock.c). */
struct ctx__clock {
    _Atomic int manual;   /* the manual clock is in force */
    _Atomic int64_t mnow; /* the manual clock's time */
};
extern struct ctx__clock ctx__clock;
int ctx__clock_is_manual(void);
ctx_time_t ctx__real_now(void); /* CLOCK_MONOTONIC, whatever ctx_now() reads */
/* ctx_now() for the library's own hot paths (a deadline's creation): the
 * same reading, without the call. */
static inline ctx_time_t ctx__now(void)
{
    if (atomic_load_explicit(&ctx__clock.manual, memory_order_relaxed))
        return atomic_load_explicit(&ctx__clock.mnow, memory_order_relaxed);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (ctx_time_t)ts.tv_sec * CTX_SECOND + ts.tv_nsec;
}

/* ---- after.c */
void ctx__run_after(struct ctx *r);
/* Hands a chain of AFTER records and done nodes to the callback threads,
 * in one step: they run the records' callbacks and drop the last reference
 * to the nodes (whose freeing runs destroy hooks).  Leaves *chain empty. */
void ctx__after_defer(struct ctx__chain *chain);
/* Queues the drop of the reference to node (done, in no list) that the
 * caller holds last, so that the free runs on a callback thread. */
void ctx__after_defer_unref(struct ctx *node);
/* Drops a library thread's reference to a done cancel node (one that it
 * cancelled with defer set): at once, unless it is the last one, which goes
 * on chain for the callback threads to drop.  For threads that must run no
 * user code (the timer thread, the peer-close watcher). */
void ctx__unref_chain(struct ctx *node, struct ctx__chain *chain);
/* ctx__unref_chain with a chain of its own, handed off at once. */
void ctx__unref_deferred(struct ctx *node);
/* The timer thread's look at the callback queue (see after.c): starts a
 * worker when the queue has not moved for a millisecond.  Returns nonzero
 * while records are queued, so that the timer thread looks again soon. */
int ctx__after_watch(ctx_time_t now);

/* ---- introspect/track.c: tracking registry and dumps; core/cancel.c:
 * cancel sites */
/* Nonzero while tracking is on (ctx_track).  The flag is the exported int
 * ctx_tracking_, which ctx.h's creation macros test with one load; C++
 * includes ctx.h too, so it cannot be _Atomic there, and the library reads
 * and writes it with the GNU atomic builtins (relaxed: it is a hint whose
 * changes need not order anything else; the registry's lock does that). */
#define ctx__tracking_on() __atomic_load_n(&ctx_tracking_, __ATOMIC_RELAXED)
/* The live-context count behind ctx_live_count: one counter per thread
 * that makes or frees contexts, written by that thread alone with a plain
 * load and store (no read-modify-write on the creation and free paths) and
 * summed by ctx_live_count.  A context created on one thread and freed on
 * another leaves one counter up and another down; only the sum means
 * anything.  A thread's counter outlives it: at its exit the counter is
 * handed, count and all, to the next thread that needs one.  A thread with
 * none yet, or past its exit, goes through ctx__live_slow.  Relaxed: a
 * count read on its own, ordering nothing. */
struct ctx__live_cell {
    _Atomic long n;                      /* written by the owner only */
    _Atomic int owned;                   /* a thread has it */
    struct ctx__live_cell *_Atomic next; /* every cell ever made; set once */
};
extern CTX__TLS struct ctx__live_cell *ctx__live_mine;
void ctx__live_slow(long d);
static inline void ctx__live_add(long d)
{
    struct ctx__live_cell *c = ctx__live_mine;
    if (CTX__UNLIKELY(c == NULL)) {
        ctx__live_slow(d);
        return;
    }
    atomic_store_explicit(&c->n, atomic_load_explicit(&c->n, memory_order_relaxed) + d,
                          memory_order_relaxed);
}
/* Forgets c, which is being freed.  Called by free_chain only while
 * tracking is on, before any part of c is torn down. */
void ctx__track_forget(struct ctx *c);
/* The site-only message block for a cancel at (file, line, func): static,
 * one per call site, never allocated; NULL when the table is full (the
 * cancel then records no site). */
struct ctx__msg *ctx__msg_site(const char *file, int line, const char *func);
/* group.c: how the pool and the signal thread start threads (normally
 * ctx__thread_start).  Tests replace it to make thread creation fail. */
extern int (*ctx__sc_thread_start)(void *(*fn)(void *), size_t stack);
/* after.c: the AfterFunc record, for ctx_after_func and the records
 * embedded in a block (merge.c, signal.c).  init lays out r as a record of
 * fn(arg) on context c (whose owner is o), pending, unlisted, with refs as
 * its count; any reference to c is the caller's to take.  register puts r
 * in its owner's children list under the owner's lock and returns true;
 * false, leaving r untouched, when the owner is already done (then the
 * caller decides: ctx_after_func runs fn, a block marks r unlisted). */
void ctx__after_init(struct ctx *r, struct ctx *o, ctx_t *c, uint32_t refs, void (*fn)(void *),
                     void *arg);
bool ctx__after_register(struct ctx *r);
/* merge.c: AfterFunc records embedded in a block (merge.c, signal.c) start
 * with a count after.c never drops to zero (the block's own).  unlisted
 * marks such a record, never listed, as run with no list reference, so
 * that stopping it returns false at once.  quiesce waits until r, after it
 * was stopped, has been let go by after.c: its count is back to the
 * block's own 1.  Only then may the block be freed. */
void ctx__record_unlisted(struct ctx *r);
void ctx__record_quiesce(struct ctx *r);
/* signal.c: starts the signal thread in a forked child that inherited live
 * signal contexts, if it is not running yet (called by
 * ctx__timer_restart, from the calls that wait). */
void ctx__signal_restart(void);
/* describe.c: one node's own piece of ctx_describe's text. */
size_t ctx__describe_piece(ctx_t *c, char *buf, size_t size);

/* io.c, dial.c: true, with errno set to ctx_err(c), when c is done.  The
 * I/O calls look before each system call and after each interrupted or
 * waited one, and report a context that ended as -1 with that errno. */
static inline bool ctx__ended(ctx_t *c)
{
    int e = ctx_err(c);
    if (e == 0)
        return false;
    errno = e;
    return true;
}

/* io.c, dial.c: the error of a call that failed: ctx_err(c) when c has
 * ended by now (whatever the system call said: the context's end is the
 * reason to report), else the system's errno.  So a kernel or peer
 * ETIMEDOUT reaches the caller only while ctx_err(c) == 0, and a call's
 * CTX_DEADLINE_EXCEEDED always means c's deadline.  Returns -1. */
static inline int ctx__fail(ctx_t *c)
{
    int e = ctx_err(c);
    if (e != 0)
        errno = e;
    return -1;
}

/* ---- wait.c */
void ctx__fd_signal(struct ctx *n);
void ctx__fd_release(struct ctx *n);

#endif /* CTX_INTERNAL_H */
