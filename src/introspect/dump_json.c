/* SPDX-License-Identifier: MIT */

/*
 * ctx_dump_json: the live subtree under a context as JSON, for programs
 * (a service's debug endpoint, a page that draws the tree) rather than for
 * people reading a terminal.
 *
 * It walks the children lists of the cancellable nodes, as ctx_dump does
 * with tracking off, so it needs no registry and costs nothing until it is
 * called: value contexts hang off no list and are seen only as part of the
 * text of the cancellable node below them.  Each node is held by a
 * reference while it is written, so a context that ends and is freed
 * during the walk is either written whole or left out.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* s as a JSON string: quotes, backslashes and control bytes escaped.  Bytes
 * at or above 0x80 pass through: describe texts are UTF-8 or ASCII, and a
 * stray byte is for the reader's decoder to replace. */
static void json_str(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(out, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(out, "\\u%04x", c);
        else
            fputc(c, out);
    }
    fputc('"', out);
}

static const char *kind_name(unsigned kind)
{
    switch (kind) {
    case CTX__ROOT:
        return "root";
    case CTX__VALUE:
        return "value";
    case CTX__WITHOUT:
        return "without_cancel";
    case CTX__CANCEL:
        return "cancel";
    case CTX__TIMER:
        return "deadline";
    case CTX__CUSTOM:
        return "custom";
    default:
        return "other";
    }
}

/* One object for c, without the separator. */
static int json_node(FILE *out, struct ctx *c, struct ctx *parent, int depth, ctx_time_t now)
{
    char text[1024];
    if (depth == 0) {
        ctx_describe(c, text, sizeof text);
    } else {
        /* The value contexts between the listed parent and c belong to no
         * list: their pieces lead c's own, oldest first, so that what they
         * bind (a request ID, say) shows with the node below them. */
        struct ctx *vals[16];
        int nv = 0;
        for (struct ctx *p = ctx__parent(c); p != NULL && p != parent && nv < 16;
             p = ctx__parent(p))
            if (ctx__kind(p) == CTX__VALUE)
                vals[nv++] = p;
        size_t len = 0;
        text[0] = '\0';
        while (nv-- > 0 && len + 1 < sizeof text)
            len += ctx__describe_piece(vals[nv], text + len, sizeof text - len);
        if (len + 1 < sizeof text)
            ctx__describe_piece(c, text + len, sizeof text - len);
    }
    unsigned kind = ctx__kind(c);
    fprintf(out, "{\"id\":\"%p\",\"parent\":", (void *)c);
    if (parent != NULL)
        fprintf(out, "\"%p\"", (void *)parent);
    else
        fputs("null", out);
    fprintf(out, ",\"depth\":%d,\"kind\":\"%s\",\"text\":", depth, kind_name(kind));
    json_str(out, text);
    ctx_time_t deadline;
    if (ctx_deadline(c, &deadline)) {
        /* Milliseconds with microseconds: a page counts down from it. */
        ctx_duration_t left = deadline - now;
        fprintf(out, ",\"deadline_left_ms\":%.3f", (double)left / (double)CTX_MILLISECOND);
        fprintf(out, ",\"own_deadline\":%s", kind == CTX__TIMER ? "true" : "false");
    }
    int err = (ctx_err)(c);
    fprintf(out, ",\"done\":%s", err != 0 ? "true" : "false");
    if (err != 0) {
        const char *msg;
        int cause = ctx_cause(c, &msg);
        fputs(",\"err\":", out);
        json_str(out, ctx_strerror(err));
        fprintf(out, ",\"cause\":%d,\"cause_msg\":", cause);
        json_str(out, msg != NULL ? msg : "");
        const char *file, *func;
        int line;
        if (ctx_cancel_site(c, &file, &line, &func) && (file != NULL || func != NULL)) {
            fputs(",\"cancel_site\":{\"file\":", out);
            if (file != NULL)
                json_str(out, file);
            else
                fputs("null", out);
            fprintf(out, ",\"line\":%d,\"func\":", line);
            if (func != NULL)
                json_str(out, func);
            else
                fputs("null", out);
            fputc('}', out);
        }
    }
    if (ctx__is_cancel_kind(kind)) {
        uint32_t s = atomic_load_explicit(&c->u.c.state, memory_order_relaxed);
        fprintf(out, ",\"waiters\":%s,\"done_fd\":%s", (s & CTX__WAITERS) ? "true" : "false",
                (s & CTX__HAS_FD) ? "true" : "false");
    }
    return fputc('}', out) == EOF ? EIO : 0;
}

/* The walk's stack: contexts still to write, each held by a reference. */
struct jitem {
    struct ctx *c, *parent;
    int depth;
};

struct jstack {
    struct jitem *st;
    size_t cap, sp;
    struct ctx *owner, *top; /* whose children are being pushed, and under what */
    int depth;
    int err;
};

/* Whether cancel node y, found in the children list of top's owner, lies
 * under top: its parent chain meets top before another cancel node. */
static int lies_under(struct ctx *y, struct ctx *top)
{
    for (struct ctx *p = ctx__parent(y); p != NULL; p = ctx__parent(p)) {
        if (p == top)
            return 1;
        if (ctx__kind(p) != CTX__VALUE)
            return 0;
    }
    return 0;
}

static void push(struct jstack *j, struct ctx *y)
{
    if (ctx__kind(y) == CTX__AFTER || (j->owner != j->top && !lies_under(y, j->top)))
        return;
    if (j->sp == j->cap) {
        struct jitem *bigger = ctx__alloc(j->cap * 2 * sizeof *bigger);
        if (bigger == NULL) {
            j->err = ENOMEM;
            return;
        }
        memcpy(bigger, j->st, j->sp * sizeof *bigger);
        ctx__free(j->st);
        j->st = bigger;
        j->cap *= 2;
    }
    /* A node whose count reached zero is being freed by a thread that waits
     * for the lock held here: leave it out. */
    if (ctx__try_ref(y))
        j->st[j->sp++] = (struct jitem){ y, j->top, j->depth };
}

/* Pushes every child of cancel node o (its own list and, when it has a
 * fan-out, each shard's list, each shard's lock taken under o's, the order
 * the cancellation walk uses). */
static void push_children(struct jstack *j, struct ctx *o)
{
    ctx__lock(&o->lock);
    for (struct ctx__link *l = *ctx__kids(o); l != NULL && j->err == 0; l = l->next)
        push(j, ctx__from_link(l));
    if (atomic_load_explicit(&o->u.c.state, memory_order_relaxed) & CTX__FANNED) {
        struct ctx__fan *f = ctx__fan_of(o);
        for (int i = 0; i < CTX__NFAN && j->err == 0; i++) {
            ctx__lock(&f->sh[i].lock);
            for (struct ctx__link *l = f->sh[i].children; l != NULL && j->err == 0; l = l->next)
                push(j, ctx__from_link(l));
            ctx__unlock(&f->sh[i].lock);
        }
    }
    ctx__unlock(&o->lock);
}

int ctx_dump_json(ctx_t *c, FILE *out)
{
    if (c == NULL || out == NULL)
        return EINVAL;
    struct jstack j = { ctx__alloc(64 * sizeof(struct jitem)), 64, 0, NULL, NULL, 0, 0 };
    if (j.st == NULL)
        return ENOMEM;
    ctx_time_t now = ctx_now();
    int e = 0;
    bool first = true;
    j.st[j.sp++] = (struct jitem){ c, NULL, 0 };
    fputc('[', out);
    while (j.sp > 0) {
        struct jitem it = j.st[--j.sp];
        if (e == 0) {
            if (!first)
                fputc(',', out);
            first = false;
            e = json_node(out, it.c, it.parent, it.depth, now);
        }
        struct ctx *o = ctx__owner(it.c);
        if (e == 0 && ctx__is_cancel_kind(ctx__kind(o))) {
            j.owner = o;
            j.top = it.c;
            j.depth = it.depth + 1;
            push_children(&j, o);
            e = j.err;
        }
        if (it.c != c)
            ctx_unref(it.c);
    }
    ctx__free(j.st);
    if (fputs("]\n", out) == EOF || fflush(out) != 0)
        e = e != 0 ? e : EIO;
    return e;
}
