/*
 * The cancel entry points: ctx_cancel and ctx_cancel_cause, which record
 * no site, and the ctx_cancel_at forms that ctx.h's macros call with the
 * caller's file, line and function.  Every one checks its handle the same
 * way and hands the walk to ctx__cancel (tree.c).
 *
 * A cancel site rides on the cause block (struct ctx__msg) that a cancel
 * already shares with every node it reaches, so it costs the 64-byte node
 * nothing.  A site-only block is static, one per call site, in a table
 * that is filled once and never freed, so ctx_cancel allocates nothing.
 */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

/* ---------------------------------------------------------------------------
 * Cancel sites
 */

/* The site table: open addressing on (file pointer, line), filled lock-free
 * and never emptied, so a cancel through the macros allocates nothing.  A
 * slot's word goes 0 (empty) -> 1 (being written) -> 2 (ready). */
#define SITES      4096
#define SITE_PROBE 32

static _Atomic uint32_t site_state[SITES];
/* Raw storage: a struct with a flexible array member cannot be an array
 * element.  A site-only block has no text, so the header is all it needs. */
static _Alignas(struct ctx__msg) unsigned char site_mem[SITES][sizeof(struct ctx__msg)];

struct ctx__msg *ctx__msg_site(const char *file, int line, const char *func)
{
    uint64_t h =
        ((uint64_t)(uintptr_t)file ^ ((uint64_t)(unsigned)line << 40)) * 0x9E3779B97F4A7C15u;
    for (unsigned i = 0; i < SITE_PROBE; i++) {
        size_t k = (size_t)((h >> 40) + i) & (SITES - 1);
        struct ctx__msg *m = (struct ctx__msg *)(void *)site_mem[k];
        /* Acquire (load and failed CAS): pairs with the release store of 2
         * below; the fields were written before it. */
        uint32_t st = atomic_load_explicit(&site_state[k], memory_order_acquire);
        if (st == 0 && atomic_compare_exchange_strong_explicit(
                           &site_state[k], &st, 1, memory_order_acquire, memory_order_acquire)) {
            atomic_init(&m->refs, 1);
            m->has_text = 0;
            m->size = CTX__MSG_STATIC;
            m->file = file;
            m->func = func;
            m->line = line;
            /* Release: pairs with the acquire loads above. */
            atomic_store_explicit(&site_state[k], 2, memory_order_release);
            return m;
        }
        if (st == 2 && m->file == file && m->line == line)
            return m;
        /* 1: another thread is filling this slot for some site; a
         * collision on the same site gives that site a second slot. */
    }
    return NULL;
}

/* ---------------------------------------------------------------------------
 * Handles
 */

void ctx__misuse(const char *msg)
{
    fprintf(stderr, "libctx: misuse: %s\n", msg);
    abort();
}

/* The handle of a freed context: its memory says so in debug builds. */
static void check_handle(const struct ctx *n)
{
    CTX__MISUSE(!ctx__is_cancel_kind(ctx__kind(n)),
                "ctx_cancel: the handle's context was freed (or this is not a cancel handle)");
    (void)n;
}

/* The one path every entry point takes.  file is NULL for the forms that
 * record no site.  A text gets a fresh block that carries the site too;
 * without a text, or without memory for its copy, the cause keeps its code
 * and the static site-only block (or nothing) stands in for the message. */
static void cancel_handle(ctx_cancel_t *cancel, int cause, const char *text, const char *file,
                          int line, const char *func)
{
    struct ctx *n = (struct ctx *)cancel;
    if (n == NULL)
        return;
    check_handle(n);
    struct ctx__msg *m = text != NULL ? ctx__msg_new(text) : NULL;
    if (m != NULL) {
        m->file = file; /* a fresh block: nobody else sees it yet */
        m->func = func;
        m->line = line;
    } else if (file != NULL) {
        m = ctx__msg_site(file, line, func);
    }
    ctx__cancel(n, CTX_CANCELED, cause, m, 0);
    ctx__msg_unref(m);
}

/* The parentheses keep ctx.h's call-site macros from expanding here: these
 * are the exported functions that record no site. */
void(ctx_cancel)(ctx_cancel_t *cancel)
{
    cancel_handle(cancel, 0, NULL, NULL, 0, NULL);
}

void(ctx_cancel_cause)(ctx_cancel_t *cancel, int cause, const char *text)
{
    cancel_handle(cancel, cause, text, NULL, 0, NULL);
}

void ctx_cancel_at(ctx_cancel_t *cancel, const char *file, int line, const char *func)
{
    cancel_handle(cancel, 0, NULL, file, line, func);
}

void ctx_cancel_cause_at(ctx_cancel_t *cancel, int cause, const char *text, const char *file,
                         int line, const char *func)
{
    cancel_handle(cancel, cause, text, file, line, func);
}
