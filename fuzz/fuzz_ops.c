/* SPDX-License-Identifier: MIT */

/*
 * libFuzzer harness: decodes bytes into a sequence of operations on a forest
 * of up to 32 live contexts (plus whatever their children, AfterFunc
 * registrations and the library keep alive) and checks every observable
 * against a small single-threaded reference model of the semantics of the
 * contract in include/ctx.h.
 *
 * Operations: create a child of any kind (cancel with or without a handle,
 * value, without-cancel, deadline and timeout with and without a cause and
 * message, custom with each hook combination) under any live context;
 * cancel any live cancellable context with or without a cause and message;
 * look values up; register AfterFuncs (fire-and-forget or with a stop
 * handle; a callback may stop itself or cancel an ancestor of its context)
 * and stop them; ref and unref; ctx_wait(c, 0); ctx_done_fd + poll(0);
 * advance the manual clock; describe with any buffer size; make one of the
 * next allocations fail; call everything with NULL arguments; the
 * cancellable I/O calls of <ctx/io.h> on a pipe (read, readv, write,
 * writev, read_full, write_all, poll), made only where they cannot block.
 *
 * Checked against the model: err, cause code and text, deadline, values,
 * ctx_now, done fds (readable exactly when done, stable, closed once freed),
 * AfterFunc callbacks (exactly once, only after their context is done, with
 * ctx_now() at the firing deadline, never after a successful stop),
 * ctx_after_stop's result, the describe text (every piece except the
 * numbers inside WithDeadline(...)) and its truncation, destructors (run
 * exactly when the model's reference count of the context drops to zero),
 * ENOMEM handling, and that nothing leaks once everything is released.
 *
 * Build: fuzz/run.sh (clang, -fsanitize=fuzzer,address,undefined), or
 * fuzz/replay.c with any compiler to replay a corpus as a plain test.
 */
#include "check.h"

#include <ctx/io.h>

#include <fcntl.h>
#include <limits.h>
#include <poll.h>

/* ---------------------------------------------------------------------------
 * Input
 */

struct input {
    const uint8_t *p;
    size_t n;
};

static unsigned get8(struct input *in)
{
    if (in->n == 0)
        return 0;
    in->n--;
    return *in->p++;
}

/* ---------------------------------------------------------------------------
 * Fixed material: keys, values, messages, causes, custom ops.
 */

static size_t fmt_value(const void *value, char *buf, size_t size);

static const ctx_key_t key0 = { .name = "k0" };
static const ctx_key_t key1 = { .name = "k1", .format = fmt_value };
static const ctx_key_t key2 = { .name = NULL };
static const ctx_key_t key3 = { .name = "k3" };
static const ctx_key_t *const keys[4] = { &key0, &key1, &key2, &key3 };

static char long_msg[300];
static const char *msgs[6] = { NULL,    "", "m", "a longer message, with spaces", "\xc3\xbc-utf8",
                               long_msg };
static const int causes[8] = {
    0, CTX_CANCELED, CTX_DEADLINE_EXCEEDED, EIO, EPIPE, 1000, -1, INT_MAX
};

#define MAX_SLOTS 32
#define MAX_NODES 512
#define MAX_REGS  512
#define MAX_OPS   3000

/* Per node: the token bound as its value, and a custom context's data. */
struct token {
    int node;
    int destroyed;
};
struct cdata {
    int node;
    int key; /* the key its value hook binds, -1: none */
    void *value;
    int destroyed;
};

static struct token tokens[MAX_NODES];
static struct cdata cdatas[MAX_NODES];

static size_t fmt_value(const void *value, char *buf, size_t size)
{
    int n = value == NULL ? snprintf(buf, size, "nil")
                          : snprintf(buf, size, "v%d", ((const struct token *)value)->node);
    return n < 0 ? 0 : (size_t)n;
}

static void token_destroy(void *v)
{
    ((struct token *)v)->destroyed++;
}

static bool cd_value(void *data, const ctx_key_t *key, void **value)
{
    struct cdata *d = data;
    if (d->key < 0 || keys[d->key] != key)
        return false;
    *value = d->value;
    return true;
}

static size_t cd_describe(void *data, char *buf, size_t size)
{
    int n = snprintf(buf, size, "D%d", ((struct cdata *)data)->node);
    return n < 0 ? 0 : (size_t)n;
}

static void cd_destroy(void *data)
{
    ((struct cdata *)data)->destroyed++;
}

static const ctx_custom_ops_t custom_ops[4] = {
    { .name = "C0" },
    { .name = "C1", .value = cd_value, .destroy = cd_destroy },
    { .name = NULL, .value = cd_value, .describe = cd_describe, .destroy = cd_destroy },
    { .name = NULL },
};

/* CTX_FUZZ_TRACE=1 prints every operation (to replay a failing input). */
static int trace;
#define TRACE(...)                                                                                 \
    do {                                                                                           \
        if (trace)                                                                                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
    } while (0)

/* Whether the next allocation will be refused, and whether a refusal is
 * pending at all (check.h's failing allocator). */
static bool next_alloc_fails(void)
{
    check_alloc_state_t *s = check_alloc_state_();
    long f = atomic_load(&s->fail_at);
    return f >= 0 && atomic_load(&s->seq) == f;
}

static bool failure_pending(void)
{
    check_alloc_state_t *s = check_alloc_state_();
    long f = atomic_load(&s->fail_at);
    return f >= 0 && atomic_load(&s->seq) <= f;
}

/* ---------------------------------------------------------------------------
 * The model
 */

enum mkind { M_ROOT, M_CANCEL, M_TIMER, M_VALUE, M_WITHOUT, M_CUSTOM };

struct mnode {
    enum mkind kind;
    int parent; /* -1 for the roots */
    int owner;  /* whose done state this reports; a root when never done */
    ctx_t *c;
    ctx_cancel_t *h;
    int refs; /* slots + children + registrations holding it */
    bool freed;
    /* done state (owners) */
    int err, cause;
    const char *msg;
    bool marked;
    /* deadline: own for timers */
    ctx_time_t dl;
    int dl_cause;
    const char *dl_msg;
    /* value binding (values) */
    int key;
    void *value;
    bool has_destroy; /* a destructor counts in tokens[] or cdatas[] */
    int ops;          /* custom ops variant */
    int fd;           /* -1: none obtained yet */
};

enum rstate { R_PENDING, R_RAN, R_STOPPED, R_NEVER };

struct mreg {
    int node;
    bool has_handle, handle_released;
    ctx_after_t *handle;
    enum rstate state;
    bool holds_ref;
    bool dead;
    int mode;   /* 0 plain, 1 stops itself, 2 cancels target */
    int target; /* a cancellable ancestor of node, for mode 2 */
    ctx_cancel_t *target_h;
    bool self_stop_ok;
    ctx_time_t expect_now;
    int runs; /* real */
};

static struct {
    struct mnode nodes[MAX_NODES];
    int nn;
    struct mreg regs[MAX_REGS];
    int nr;
    int slots[MAX_SLOTS];
    ctx_time_t now;
    bool in_advance; /* the real clock is firing deadlines */
    bool fds_dirty;  /* a context became done: poll the done fds again */
    long alloc_base;
    /* cancellations queued by the model's callbacks */
    int queue[MAX_REGS + 1];
} M;

static const char *code_text(int code)
{
    if (code == CTX_CANCELED)
        return "context canceled";
    if (code == CTX_DEADLINE_EXCEEDED)
        return "context deadline exceeded";
    return strerror(code); /* compared at once, before any other call */
}

static bool is_cancel_kind(enum mkind k)
{
    return k == M_CANCEL || k == M_TIMER || k == M_CUSTOM;
}

static struct mnode *N(int i)
{
    return &M.nodes[i];
}

static bool never_done(int i)
{
    return N(N(i)->owner)->kind == M_ROOT;
}

static void release(int i);

static void node_freed(int i)
{
    struct mnode *n = N(i);
    n->freed = true;
    n->c = NULL;
    n->h = NULL;
    if (n->parent >= 0)
        release(n->parent);
}

static void release(int i)
{
    struct mnode *n = N(i);
    if (n->kind == M_ROOT)
        return;
    CHECK(n->refs > 0);
    if (--n->refs == 0)
        node_freed(i);
}

static void reg_maybe_die(struct mreg *g)
{
    if (g->dead)
        return;
    bool listed = g->state == R_PENDING;
    bool handle = g->has_handle && !g->handle_released;
    if (listed || handle)
        return;
    g->dead = true;
    if (g->holds_ref)
        release(g->node);
}

/* Cancels owner o with (err, cause, msg), then runs the model's callbacks,
 * which may queue more (plain) cancellations. */
static void model_cancel(int o, int err, int cause, const char *msg)
{
    int qh = 0, qt = 0;
    struct {
        int node, err, cause;
        const char *msg;
    } q[MAX_REGS + 1];
    q[qt].node = o;
    q[qt].err = err;
    q[qt].cause = cause;
    q[qt].msg = msg;
    qt++;
    while (qh < qt) {
        int x = q[qh].node;
        int e = q[qh].err, c = q[qh].cause;
        const char *m = q[qh].msg;
        qh++;
        if (N(x)->err != 0)
            continue;
        for (int i = 0; i < M.nn; i++)
            N(i)->marked = false;
        N(x)->err = e;
        N(x)->cause = c;
        N(x)->msg = m;
        N(x)->marked = true;
        M.fds_dirty = true;
        for (int i = x + 1; i < M.nn; i++) {
            struct mnode *n = N(i);
            if (!is_cancel_kind(n->kind) || n->err != 0 || n->freed)
                continue;
            if (N(N(n->parent)->owner)->marked) {
                n->err = e;
                n->cause = c;
                n->msg = m;
                n->marked = true;
            }
        }
        for (int r = 0; r < M.nr; r++) {
            struct mreg *g = &M.regs[r];
            if (g->state != R_PENDING || !N(N(g->node)->owner)->marked)
                continue;
            g->state = R_RAN;
            g->expect_now = M.now;
            if (g->mode == 1 && g->self_stop_ok)
                g->handle_released = true;
            if (g->mode == 2 && !M.in_advance) {
                CHECK(qt < MAX_REGS + 1);
                q[qt].node = g->target;
                q[qt].err = CTX_CANCELED;
                q[qt].cause = 0;
                q[qt].msg = NULL;
                qt++;
            }
        }
    }
    for (int r = 0; r < M.nr; r++)
        reg_maybe_die(&M.regs[r]);
}

static bool model_deadline(int i, ctx_time_t *dl)
{
    for (; i >= 0; i = N(i)->parent) {
        switch (N(i)->kind) {
        case M_TIMER:
            *dl = N(i)->dl;
            return true;
        case M_ROOT:
        case M_WITHOUT:
            return false;
        default:
            break;
        }
    }
    return false;
}

static void *model_value(int i, int k)
{
    for (; i >= 0; i = N(i)->parent) {
        struct mnode *n = N(i);
        if (n->kind == M_VALUE && n->key == k)
            return n->value;
        if (n->kind == M_CUSTOM && custom_ops[n->ops].value != NULL && cdatas[i].key == k)
            return cdatas[i].value;
    }
    return NULL;
}

static ctx_time_t add_sat(ctx_time_t t, ctx_duration_t d)
{
    if (d > 0 && t > INT64_MAX - d)
        return INT64_MAX;
    if (d < 0 && t < INT64_MIN - d)
        return INT64_MIN;
    return t + d;
}

/* ---------------------------------------------------------------------------
 * Checks
 */

static void check_done_state(int i, ctx_t *c)
{
    struct mnode *o = N(N(i)->owner);
    int err = o->kind == M_ROOT ? 0 : o->err;
    CHECK_MSG(ctx_err(c) == err, "node %d: err %d, model %d", i, ctx_err(c), err);
    const char *msg = (const char *)1;
    int code = ctx_cause(c, &msg);
    if (err == 0) {
        CHECK_EQ_INT(code, 0);
        CHECK_NULL(msg);
        return;
    }
    int want = o->cause != 0 ? o->cause : o->err;
    CHECK_MSG(code == want, "node %d: cause %d, model %d", i, code, want);
    CHECK_STR(msg, o->msg != NULL ? o->msg : code_text(want));
    CHECK_EQ_INT(ctx_cause(c, NULL), want);
}

/* Matches text against a pattern in which \x01 stands for any run of
 * characters other than ')' (the numbers of a deadline). */
static bool match(const char *pat, const char *s)
{
    while (*pat != '\0') {
        if (*pat == '\x01') {
            for (const char *t = s;; t++) {
                if (match(pat + 1, t))
                    return true;
                if (*t == '\0' || *t == ')')
                    return false;
            }
        }
        if (*pat != *s)
            return false;
        pat++;
        s++;
    }
    return *s == '\0';
}

/* Whether s can be continued into a text that matches pat. */
static bool match_prefix(const char *pat, const char *s)
{
    while (*s != '\0') {
        if (*pat == '\0')
            return false;
        if (*pat == '\x01') {
            for (const char *t = s;; t++) {
                if (*t == '\0')
                    return true; /* s ends inside the wildcard */
                if (match_prefix(pat + 1, t))
                    return true;
                if (*t == ')')
                    return false;
            }
        }
        if (*pat != *s)
            return false;
        pat++;
        s++;
    }
    return true;
}

static char pat_buf[65536], out_buf[65536], piece_buf[128];

static void expected_describe(int i, char *pat, size_t size)
{
    /* Pieces from the leaf up, then written root first. */
    int chain[MAX_NODES + 2], n = 0;
    for (int j = i; j >= 0; j = N(j)->parent)
        chain[n++] = j;
    size_t pos = 0;
    pat[0] = '\0';
    for (int k = n - 1; k >= 0; k--) {
        struct mnode *x = N(chain[k]);
        const char *p1 = "", *p2 = "", *p3 = "";
        switch (x->kind) {
        case M_ROOT:
            p1 = chain[k] == 0 ? "context.Background" : "context.TODO";
            break;
        case M_CANCEL:
            p1 = ".WithCancel";
            break;
        case M_TIMER:
            p1 = ".WithDeadline(\x01)";
            break;
        case M_WITHOUT:
            p1 = ".WithoutCancel";
            break;
        case M_VALUE:
            p1 = ".WithValue(";
            p2 = keys[x->key]->name != NULL ? keys[x->key]->name : "<unnamed key>";
            if (keys[x->key]->format != NULL) {
                char v[32];
                fmt_value(x->value, v, sizeof v);
                snprintf(piece_buf, sizeof piece_buf, ", %s)", v);
                p3 = piece_buf;
            } else {
                p3 = ", ...)";
            }
            break;
        case M_CUSTOM: {
            const ctx_custom_ops_t *ops = &custom_ops[x->ops];
            if (ops->describe != NULL)
                snprintf(piece_buf, sizeof piece_buf, ".D%d", chain[k]);
            else
                snprintf(piece_buf, sizeof piece_buf, ".%s", ops->name ? ops->name : "Custom");
            p1 = piece_buf;
            break;
        }
        }
        int w = snprintf(pat + pos, size - pos, "%s%s%s", p1, p2, p3);
        CHECK(w >= 0 && (size_t)w < size - pos);
        pos += (size_t)w;
    }
}

static void check_node_full(int i, unsigned size_byte)
{
    struct mnode *n = N(i);
    ctx_t *c = n->c;
    check_done_state(i, c);
    ctx_time_t dl = 0, mdl = 0;
    bool has = ctx_deadline(c, &dl), mhas = model_deadline(i, &mdl);
    CHECK_MSG(has == mhas, "node %d: has deadline %d, model %d", i, has, mhas);
    if (has)
        CHECK_MSG(dl == mdl, "node %d: deadline %lld, model %lld", i, (long long)dl,
                  (long long)mdl);
    CHECK(ctx_deadline(c, NULL) == has);
    for (int k = 0; k < 4; k++)
        CHECK_MSG(ctx_value(c, keys[k]) == model_value(i, k), "node %d key %d", i, k);
    CHECK_PTR_EQ(ctx_custom_data(c), n->kind == M_CUSTOM ? (void *)&cdatas[i] : NULL);
    /* describe: the whole text, then a truncated copy of it; a deep chain
     * (slow to describe) only through a small buffer */
    int depth = 0;
    for (int j = i; j >= 0; j = N(j)->parent)
        depth++;
    if (depth > 200) {
        CHECK_EQ_INT(ctx_wait(c, 0), ctx_err(c));
        return; /* the harness's fuzzing time is better spent elsewhere */
    }
    if (depth > 64) {
        char head[48];
        size_t len = ctx_describe(c, head, sizeof head);
        CHECK(len >= sizeof head - 1 && strlen(head) == sizeof head - 1);
        expected_describe(i, pat_buf, sizeof pat_buf);
        CHECK_MSG(match_prefix(pat_buf, head), "node %d: describe \"%s...\"", i, head);
        CHECK_EQ_INT(ctx_wait(c, 0), ctx_err(c));
        return;
    }
    size_t full = ctx_describe(c, out_buf, sizeof out_buf);
    CHECK(full < sizeof out_buf);
    CHECK_EQ_INT(strlen(out_buf), full);
    expected_describe(i, pat_buf, sizeof pat_buf);
    CHECK_MSG(match(pat_buf, out_buf), "node %d: describe \"%s\"", i, out_buf);
    /* A deadline is shown with the wall-clock time it corresponds to now,
     * so its text can change between two calls: compare a truncated copy
     * with the full text only when there is none, else with the pattern. */
    bool stable = strchr(pat_buf, '\x01') == NULL;
    static char small[300];
    size_t sz = size_byte % (full + 2 < sizeof small ? full + 2 : sizeof small);
    memset(small, 'Z', sizeof small);
    size_t full2 = ctx_describe(c, sz == 0 ? NULL : small, sz);
    if (stable)
        CHECK_EQ_INT(full2, full);
    if (sz > 0) {
        size_t want = full2 < sz - 1 ? full2 : sz - 1;
        CHECK_EQ_INT(small[want], '\0');
        CHECK_EQ_INT(strlen(small), want);
        if (stable)
            CHECK(memcmp(small, out_buf, want) == 0);
        else
            CHECK_MSG(match_prefix(pat_buf, small), "node %d: truncated describe \"%s\"", i, small);
    }
    if (sz < sizeof small)
        CHECK_EQ_INT(small[sz], 'Z'); /* nothing written past size */
    CHECK_EQ_INT(ctx_wait(c, 0), ctx_err(c));
}

static bool fd_readable(int fd)
{
    struct pollfd p = { fd, POLLIN, 0 };
    int r;
    do
        r = poll(&p, 1, 0); /* EINTR: libFuzzer's -timeout alarm */
    while (r < 0 && errno == EINTR);
    CHECK_MSG(r >= 0, "poll: %s", strerror(errno));
    CHECK_MSG(!(p.revents & POLLNVAL), "fd %d is not open", fd);
    return r == 1 && (p.revents & POLLIN);
}

/* What every operation must leave true. */
static void check_after_op(void)
{
    CHECK_EQ_INT(ctx_now(), M.now);
    for (int s = 0; s < MAX_SLOTS; s++)
        if (M.slots[s] >= 0)
            check_done_state(M.slots[s], N(M.slots[s])->c);
    for (int r = 0; r < M.nr; r++) {
        struct mreg *g = &M.regs[r];
        CHECK_MSG(g->runs == (g->state == R_RAN ? 1 : 0), "registration %d ran %d times, model %d",
                  r, g->runs, g->state);
    }
    for (int i = 2; i < M.nn; i++) {
        struct mnode *n = N(i);
        int d = n->kind == M_VALUE ? tokens[i].destroyed : cdatas[i].destroyed;
        if (n->has_destroy)
            CHECK_MSG(d == (n->freed ? 1 : 0), "node %d: destroyed %d times, model freed %d", i, d,
                      n->freed);
        if (M.fds_dirty && !n->freed && n->fd >= 0 && !never_done(i))
            CHECK_EQ_INT(fd_readable(n->fd), N(n->owner)->err != 0);
    }
    M.fds_dirty = false;
}

/* ---------------------------------------------------------------------------
 * Callbacks
 */

static void reg_fn(void *arg)
{
    struct mreg *g = arg;
    int r = (int)(g - M.regs);
    TRACE("  callback of registration %d\n", r);
    CHECK_MSG(g->runs == 0, "registration %d runs twice", r);
    CHECK_MSG(g->state == R_RAN, "registration %d runs, the model says %d", r, g->state);
    g->runs++;
    /* While a deadline fires, ctx_now() reads that deadline. */
    CHECK_EQ_INT(ctx_now(), g->expect_now);
    if (g->mode == 1 && g->self_stop_ok) {
        CHECK_NOT_NULL(g->handle);
        CHECK(!ctx_after_stop(g->handle)); /* fn has started: false, no wait */
    }
    if (g->mode == 2 && !M.in_advance)
        ctx_cancel(g->target_h); /* alive: an ancestor of g->node */
}

/* The context a callback is registered on, checked from inside the
 * callback: it is done (its whole subtree is marked before any callback
 * runs) with the model's err and cause.  The registration keeps it alive. */
static ctx_t *reg_ctx[MAX_REGS];

static void reg_fn_checked(void *arg)
{
    struct mreg *g = arg;
    int r = (int)(g - M.regs);
    ctx_t *c = reg_ctx[r];
    CHECK_NE_INT(ctx_err(c), 0);
    check_done_state(g->node, c);
    reg_fn(arg);
}

/* ---------------------------------------------------------------------------
 * Operations
 */

enum {
    OP_CANCEL_CHILD,
    OP_VALUE_CHILD,
    OP_WITHOUT_CHILD,
    OP_DEADLINE_CHILD,
    OP_TIMEOUT_CHILD,
    OP_DEADLINE_CAUSE_CHILD,
    OP_TIMEOUT_CAUSE_CHILD,
    OP_CUSTOM_CHILD,
    OP_CANCEL,
    OP_CANCEL_CAUSE,
    OP_VALUE,
    OP_AFTER,
    OP_STOP,
    OP_UNREF,
    OP_REF,
    OP_WAIT,
    OP_FD,
    OP_ADVANCE,
    OP_CHECK,
    OP_FAIL_ALLOC,
    OP_MISUSE,
    OP_IO,
    OP_COUNT
};

static int slot_node(unsigned b)
{
    int n = M.slots[b % MAX_SLOTS];
    return n >= 0 ? n : 0; /* an empty slot means the background */
}

/* Puts node i into slot s, dropping what was there. */
static void slot_put(unsigned s, int i)
{
    s %= MAX_SLOTS;
    int old = M.slots[s];
    M.slots[s] = i;
    if (old >= 0) {
        ctx_unref(N(old)->c);
        release(old);
    }
}

/* A time, relative to now or absolute. */
static ctx_duration_t get_duration(struct input *in)
{
    unsigned mode = get8(in), v = get8(in);
    switch (mode % 8) {
    case 0:
        return (ctx_duration_t)v * CTX_MILLISECOND;
    case 1:
        return (ctx_duration_t)v;
    case 2:
        return -(ctx_duration_t)v * CTX_MILLISECOND;
    case 3:
        return 0;
    case 4:
        return INT64_MAX;
    case 5:
        return INT64_MIN;
    case 6:
        return (ctx_duration_t)v * CTX_HOUR;
    default:
        return (ctx_duration_t)(v + 1) * CTX_SECOND;
    }
}

static void op_create(int op, struct input *in)
{
    unsigned pb = get8(in), sb = get8(in), arg = get8(in);
    if (M.nn >= MAX_NODES) {
        return;
    }
    int p = slot_node(pb);
    ctx_t *pc = N(p)->c;
    int i = M.nn;
    struct mnode *n = N(i);
    memset(n, 0, sizeof *n);
    n->parent = p;
    n->fd = -1;
    n->key = -1;
    ctx_cancel_t *h = (ctx_cancel_t *)(uintptr_t)1;
    bool want_h = !(op == OP_CANCEL_CHILD && (arg & 0x80));
    ctx_time_t d = 0;
    int cause = causes[arg % 8];
    const char *msg = msgs[(arg >> 3) % 6];
    long failed0 = check_alloc_failed();
    ctx_t *c = NULL;
    errno = 0;
    switch (op) {
    case OP_CANCEL_CHILD:
        c = ctx_with_cancel(pc, want_h ? &h : NULL);
        n->kind = M_CANCEL;
        break;
    case OP_VALUE_CHILD: {
        int k = arg % 4;
        bool null_value = (arg >> 2) & 1, destroy = (arg >> 3) & 1;
        tokens[i].node = i;
        tokens[i].destroyed = 0;
        void *v = null_value ? NULL : &tokens[i];
        n->kind = M_VALUE;
        n->key = k;
        n->value = v;
        n->has_destroy = destroy && v != NULL;
        c = ctx_with_value(pc, keys[k], v, n->has_destroy ? token_destroy : NULL);
        want_h = false;
        break;
    }
    case OP_WITHOUT_CHILD:
        c = ctx_without_cancel(pc);
        n->kind = M_WITHOUT;
        want_h = false;
        break;
    case OP_DEADLINE_CHILD:
    case OP_DEADLINE_CAUSE_CHILD: {
        ctx_duration_t rel = get_duration(in);
        d = (get8(in) & 1) ? add_sat(M.now, rel) : rel; /* relative or absolute */
        if (op == OP_DEADLINE_CHILD) {
            cause = 0;
            msg = NULL;
            c = ctx_with_deadline(pc, d, &h);
        } else {
            c = ctx_with_deadline_cause(pc, d, cause, msg, &h);
        }
        n->kind = M_TIMER;
        break;
    }
    case OP_TIMEOUT_CHILD:
    case OP_TIMEOUT_CAUSE_CHILD: {
        ctx_duration_t t = get_duration(in);
        d = add_sat(M.now, t);
        if (op == OP_TIMEOUT_CHILD) {
            cause = 0;
            msg = NULL;
            c = ctx_with_timeout(pc, t, &h);
        } else {
            c = ctx_with_timeout_cause(pc, t, cause, msg, &h);
        }
        n->kind = M_TIMER;
        break;
    }
    case OP_CUSTOM_CHILD: {
        int ops = arg % 4;
        cdatas[i].node = i;
        cdatas[i].key = (arg >> 2) % 5 == 4 ? -1 : (int)((arg >> 2) % 5);
        cdatas[i].value = (arg & 0x40) ? NULL : &tokens[i];
        cdatas[i].destroyed = 0;
        n->kind = M_CUSTOM;
        n->ops = ops;
        n->has_destroy = custom_ops[ops].destroy != NULL;
        c = ctx_with_custom(pc, &custom_ops[ops], &cdatas[i], &h);
        break;
    }
    }
    int e = errno;
    if (check_alloc_failed() != failed0) {
        TRACE("create op %d under %d: ENOMEM\n", op, p);
        CHECK_MSG(c == NULL && e == ENOMEM, "op %d: %p errno %d after a refused allocation", op,
                  (void *)c, e);
        if (want_h)
            CHECK_NULL(h);
        if (n->kind == M_VALUE)
            CHECK_EQ_INT(tokens[i].destroyed, 0);
        if (n->kind == M_CUSTOM)
            CHECK_EQ_INT(cdatas[i].destroyed, 0);
        return;
    }
    CHECK_MSG(c != NULL, "op %d failed: errno %d", op, e);
    TRACE("create op %d: node %d under %d (d %lld cause %d msg %.8s) -> slot %u\n", op, i, p,
          (long long)d, cause, msg ? msg : "(null)", sb % MAX_SLOTS);
    M.nn++;
    n->c = c;
    n->refs = 1;
    if (N(p)->kind != M_ROOT)
        N(p)->refs++;
    if (want_h) {
        CHECK_NOT_NULL(h);
        n->h = h;
    }
    /* The done state and the deadline, as the model has them. */
    int po = N(p)->owner;
    if (n->kind == M_VALUE) {
        n->owner = po;
    } else if (n->kind == M_WITHOUT) {
        n->owner = 0;
    } else {
        ctx_time_t pd;
        if (n->kind == M_TIMER && model_deadline(p, &pd) && pd <= d) {
            n->kind = M_CANCEL; /* the parent's deadline comes first */
        } else if (n->kind == M_TIMER) {
            n->dl = d;
            n->dl_cause = cause;
            n->dl_msg = msg;
        }
        n->owner = i;
        if (N(po)->kind != M_ROOT && N(po)->err != 0) {
            n->err = N(po)->err;
            n->cause = N(po)->cause;
            n->msg = N(po)->msg;
        } else if (n->kind == M_TIMER && d <= M.now) {
            n->err = CTX_DEADLINE_EXCEEDED;
            n->cause = n->dl_cause;
            n->msg = n->dl_msg;
        }
    }
    slot_put(sb, i);
}

/* The i-th (mod count) live node that can be cancelled by hand; -1 if none. */
static int pick_cancellable(unsigned b)
{
    int count = 0;
    for (int i = 2; i < M.nn; i++)
        if (!N(i)->freed && N(i)->h != NULL)
            count++;
    if (count == 0)
        return -1;
    int k = (int)(b % (unsigned)count);
    for (int i = 2; i < M.nn; i++)
        if (!N(i)->freed && N(i)->h != NULL && k-- == 0)
            return i;
    return -1;
}

static void op_cancel(int op, struct input *in)
{
    unsigned tb = get8(in), arg = get8(in);
    int t = pick_cancellable(tb);
    if (t < 0)
        return;
    int cause = causes[arg % 8];
    const char *msg = msgs[(arg >> 3) % 6];
    long failed0 = check_alloc_failed();
    TRACE("cancel node %d (op %d cause %d msg %.8s)\n", t, op, cause, msg ? msg : "(null)");
    ctx_cancel_t *h = N(t)->h; /* the model may free node t */
    if (op == OP_CANCEL) {
        model_cancel(t, CTX_CANCELED, 0, NULL);
        ctx_cancel(h);
        CHECK_EQ_INT(check_alloc_failed(), failed0);
        return;
    }
    /* The model goes first, so that callbacks can check against it.  The
     * only allocation ctx_cancel_cause makes is the copy of msg; when it is
     * refused the cause keeps its code, with ctx_strerror's text. */
    bool refused = msg != NULL && next_alloc_fails();
    model_cancel(t, CTX_CANCELED, cause, refused ? NULL : msg);
    ctx_cancel_cause(h, cause, msg);
    CHECK_EQ_INT(check_alloc_failed() - failed0, refused ? 1 : 0);
}

static void op_after(struct input *in)
{
    unsigned sb = get8(in), arg = get8(in), tb = get8(in);
    if (M.nr >= MAX_REGS)
        return;
    int x = slot_node(sb);
    struct mreg *g = &M.regs[M.nr];
    memset(g, 0, sizeof *g);
    g->node = x;
    g->has_handle = arg & 1;
    g->mode = (arg >> 1) % 3;
    g->target = -1;
    if (g->mode == 2) {
        /* a cancellable ancestor (or x itself) */
        int cands[MAX_NODES], nc = 0;
        for (int j = x; j >= 0; j = N(j)->parent)
            if (N(j)->h != NULL)
                cands[nc++] = j;
        if (nc == 0)
            g->mode = 0;
        else
            g->target = cands[tb % (unsigned)nc];
        if (g->mode == 2)
            g->target_h = N(g->target)->h;
    }
    if (!g->has_handle && !never_done(x)) {
        /* A fire-and-forget registration keeps its context alive until it
         * runs: make sure the cleanup can cancel it (some cancellable
         * ancestor in the chain of owners). */
        bool ok = false;
        for (int o = N(x)->owner; N(o)->kind != M_ROOT; o = N(N(o)->parent)->owner)
            if (N(o)->h != NULL)
                ok = true;
        if (!ok)
            g->has_handle = true;
    }
    TRACE("after_func %d on node %d: handle %d mode %d target %d\n", M.nr, x, g->has_handle,
          g->mode, g->target);
    reg_ctx[M.nr] = N(x)->c;
    bool done = !never_done(x) && N(N(x)->owner)->err != 0;
    g->self_stop_ok = g->has_handle && !done;
    if (done && g->mode == 2 && failure_pending())
        g->mode = 0; /* the model could not undo the cancel of a refused one */
    /* Model first, so that callbacks (an immediate run, and those its
     * cancel triggers) can check against it. */
    int r = M.nr++;
    if (never_done(x)) {
        g->state = R_NEVER;
    } else {
        g->state = done ? R_RAN : R_PENDING;
        g->expect_now = M.now;
        g->holds_ref = true;
        N(x)->refs++;
        if (done && g->mode == 2)
            model_cancel(g->target, CTX_CANCELED, 0, NULL);
    }
    long failed0 = check_alloc_failed();
    if (g->has_handle)
        g->handle = (ctx_after_t *)(uintptr_t)1;
    int e = ctx_after_func(N(x)->c, reg_fn_checked, g, g->has_handle ? &g->handle : NULL);
    if (check_alloc_failed() != failed0) {
        CHECK_EQ_INT(e, ENOMEM);
        if (g->has_handle)
            CHECK_NULL(g->handle);
        CHECK_EQ_INT(g->runs, 0);
        if (g->holds_ref)
            N(x)->refs--;
        CHECK_EQ_INT(r, M.nr - 1);
        M.nr--;
        return;
    }
    CHECK_EQ_INT(e, 0);
    if (g->has_handle)
        CHECK_NOT_NULL(g->handle);
    reg_maybe_die(g);
}

static void op_stop(struct input *in)
{
    unsigned b = get8(in);
    int count = 0;
    for (int r = 0; r < M.nr; r++)
        if (M.regs[r].has_handle && !M.regs[r].handle_released)
            count++;
    if (count == 0)
        return;
    int k = (int)(b % (unsigned)count), r;
    for (r = 0; r < M.nr; r++)
        if (M.regs[r].has_handle && !M.regs[r].handle_released && k-- == 0)
            break;
    struct mreg *g = &M.regs[r];
    bool want = g->state != R_RAN;
    TRACE("stop registration %d (state %d)\n", r, g->state);
    if (g->state == R_PENDING)
        g->state = R_STOPPED;
    g->handle_released = true;
    bool got = ctx_after_stop(g->handle);
    CHECK_MSG(got == want, "registration %d: stop returned %d, model %d", r, got, want);
    reg_maybe_die(g);
}

static void op_advance(struct input *in)
{
    unsigned mode = get8(in);
    ctx_duration_t d;
    if (mode % 4 == 0) {
        /* exactly to (or just before) the next pending deadline */
        ctx_time_t next = INT64_MAX;
        for (int i = 2; i < M.nn; i++)
            if (N(i)->kind == M_TIMER && !N(i)->freed && N(i)->err == 0 && N(i)->dl < next)
                next = N(i)->dl;
        d = next - M.now - (ctx_duration_t)(get8(in) & 1);
        if (d < 0)
            d = 0;
    } else if (mode % 4 == 1) {
        d = -(ctx_duration_t)get8(in) - 1;
        CHECK_EQ_INT(ctx_clock_advance(d), EINVAL);
        return;
    } else {
        d = get_duration(in);
        if (d < 0)
            d = d == INT64_MIN ? INT64_MAX : -d;
    }
    ctx_time_t target = add_sat(M.now, d);
    TRACE("advance %lld from %lld\n", (long long)d, (long long)M.now);
    /* The model fires due deadlines in order first. */
    M.in_advance = true;
    for (;;) {
        int best = -1;
        for (int i = 2; i < M.nn; i++) {
            struct mnode *n = N(i);
            if (n->kind == M_TIMER && !n->freed && n->err == 0 && n->dl <= target &&
                (best < 0 || n->dl < N(best)->dl))
                best = i;
        }
        if (best < 0)
            break;
        if (N(best)->dl > M.now)
            M.now = N(best)->dl;
        model_cancel(best, CTX_DEADLINE_EXCEEDED, N(best)->dl_cause, N(best)->dl_msg);
    }
    ctx_time_t final_now = target;
    /* Replay the real advance against a model whose clock already shows
     * each deadline: the callbacks check ctx_now() against expect_now. */
    CHECK_EQ_INT(ctx_clock_advance(d), 0);
    M.in_advance = false;
    M.now = final_now;
}

static void op_fd(struct input *in)
{
    int i = slot_node(get8(in));
    long failed0 = check_alloc_failed();
    errno = 12345;
    int fd = ctx_done_fd(N(i)->c);
    int e = errno;
    if (never_done(i)) {
        CHECK_EQ_INT(fd, -1);
        CHECK_EQ_INT(e, 0);
        return;
    }
    if (check_alloc_failed() != failed0) {
        CHECK_EQ_INT(fd, -1);
        CHECK_EQ_INT(e, ENOMEM);
        return;
    }
    CHECK_MSG(fd >= 0, "ctx_done_fd: errno %d", e);
    if (N(i)->fd >= 0)
        CHECK_EQ_INT(fd, N(i)->fd);
    N(i)->fd = fd;
    CHECK_EQ_INT(fd_readable(fd), N(N(i)->owner)->err != 0);
    M.fds_dirty = true;
}

static void dummy_fn(void *arg)
{
    (void)arg;
    CHECK(!"a callback that must never run");
}

static void op_misuse(struct input *in)
{
    unsigned what = get8(in);
    ctx_t *c = N(slot_node(get8(in)))->c;
    ctx_cancel_t *h = (ctx_cancel_t *)(uintptr_t)1;
    ctx_after_t *stop = (ctx_after_t *)(uintptr_t)1;
    switch (what % 16) {
    case 0:
        CHECK_FAILS_WITH(ctx_with_cancel(NULL, &h), EINVAL);
        CHECK_NULL(h);
        break;
    case 1:
        CHECK_FAILS_WITH(ctx_with_value(NULL, &key0, NULL, NULL), EINVAL);
        CHECK_FAILS_WITH(ctx_with_value(c, NULL, &tokens[0], token_destroy), EINVAL);
        CHECK_EQ_INT(tokens[0].destroyed, 0);
        break;
    case 2:
        CHECK_FAILS_WITH(ctx_without_cancel(NULL), EINVAL);
        break;
    case 3:
        CHECK_FAILS_WITH(ctx_with_deadline(NULL, 0, &h), EINVAL);
        CHECK_FAILS_WITH(ctx_with_timeout(NULL, 1, NULL), EINVAL);
        CHECK_FAILS_WITH(ctx_with_deadline_cause(NULL, 0, EIO, "x", NULL), EINVAL);
        CHECK_FAILS_WITH(ctx_with_timeout_cause(NULL, 1, EIO, "x", &h), EINVAL);
        CHECK_NULL(h);
        break;
    case 4:
        CHECK_FAILS_WITH(ctx_with_custom(NULL, &custom_ops[1], &cdatas[0], &h), EINVAL);
        CHECK_FAILS_WITH(ctx_with_custom(c, NULL, &cdatas[0], NULL), EINVAL);
        CHECK_EQ_INT(cdatas[0].destroyed, 0);
        break;
    case 5:
        CHECK_EQ_INT(ctx_after_func(NULL, dummy_fn, NULL, &stop), EINVAL);
        CHECK_NULL(stop);
        CHECK_EQ_INT(ctx_after_func(c, NULL, NULL, NULL), EINVAL);
        CHECK(!ctx_after_stop(NULL));
        break;
    case 6:
        CHECK_NULL(ctx_ref(NULL));
        ctx_unref(NULL);
        ctx_cancel(NULL);
        ctx_cancel_cause(NULL, EIO, "x");
        break;
    case 7: {
        /* Not specified beyond "no crash". */
        const char *m;
        (void)ctx_err(NULL);
        (void)ctx_cause(NULL, &m);
        (void)ctx_deadline(NULL, NULL);
        (void)ctx_value(NULL, &key0);
        (void)ctx_value(c, NULL);
        (void)ctx_custom_data(NULL);
        (void)ctx_describe(NULL, out_buf, sizeof out_buf);
        (void)ctx_describe(c, NULL, 0);
        (void)ctx_wait(NULL, 0);
        (void)ctx_done_fd(NULL);
        break;
    }
    case 8:
        CHECK_PTR_EQ(ctx_ref(ctx_background()), ctx_background());
        ctx_unref(ctx_background());
        ctx_unref(ctx_todo());
        CHECK_NOT_DONE(ctx_background());
        CHECK_NOT_DONE(ctx_todo());
        break;
    case 9:
        CHECK_STR(ctx_strerror(CTX_CANCELED), "context canceled");
        CHECK_STR(ctx_strerror(CTX_DEADLINE_EXCEEDED), "context deadline exceeded");
        break;
    default:
        /* ctx_cond_wait with missing arguments */
        CHECK_EQ_INT(ctx_cond_wait(NULL, NULL, NULL), EINVAL);
        break;
    }
}

/* ---------------------------------------------------------------------------
 * Cancellable I/O on a pipe.  Only calls that cannot block are made: data
 * is written (with a bare write) before a read, a write has room, polls
 * use timeout 0, and a context that is done must fail at once without
 * touching the pipe.  The pipe is drained after each operation.
 */

static int io_pipe[2] = { -1, -1 };

static void io_drain(void)
{
    char buf[256];
    while (read(io_pipe[0], buf, sizeof buf) > 0)
        ;
}

static void op_io(struct input *in)
{
    if (io_pipe[0] < 0)
        CHECK_EQ_INT(pipe2(io_pipe, O_CLOEXEC | O_NONBLOCK), 0);
    int i = slot_node(get8(in));
    unsigned what = get8(in) % 8;
    size_t k = 1 + get8(in) % 64; /* bytes in the pipe */
    size_t n = 1 + get8(in) % 64; /* bytes asked for */
    ctx_t *c = N(i)->c;
    int err = never_done(i) ? 0 : N(N(i)->owner)->err;
    char data[64], buf[64];
    memset(data, 'a' + (int)what, sizeof data);
    TRACE("io node %d what %u k %zu n %zu err %d\n", i, what, k, n, err);
    if (what != 2 && what != 3 && what != 5 && what != 7)
        CHECK_EQ_INT(write(io_pipe[1], data, k), (ssize_t)k);
    size_t want = k < n ? k : n;
    ssize_t r = 0;
    errno = 0;
    switch (what) {
    case 0:
        r = ctx_read(c, io_pipe[0], buf, n);
        break;
    case 1: {
        struct iovec v[2] = { { buf, n / 2 }, { buf + n / 2, n - n / 2 } };
        r = ctx_readv(c, io_pipe[0], v, 2);
        break;
    }
    case 2:
        want = n;
        r = ctx_write(c, io_pipe[1], data, n);
        break;
    case 3: {
        want = n;
        struct iovec v[2] = { { data, n / 2 }, { data + n / 2, n - n / 2 } };
        r = ctx_writev(c, io_pipe[1], v, 2);
        break;
    }
    case 4: {
        size_t done = 99;
        want = k; /* read_full of exactly what is there */
        int rc = ctx_read_full(c, io_pipe[0], buf, k, &done);
        CHECK_EQ_INT(rc, err);
        CHECK_EQ_INT(done, err ? 0 : k);
        r = err ? -1 : (ssize_t)k;
        errno = rc;
        break;
    }
    case 5: {
        size_t done = 99;
        want = n;
        int rc = ctx_write_all(c, io_pipe[1], data, n, &done);
        CHECK_EQ_INT(rc, err);
        CHECK_EQ_INT(done, err ? 0 : n);
        r = err ? -1 : (ssize_t)n;
        errno = rc;
        break;
    }
    case 6: {
        /* Ready at once: the pipe has data. */
        struct pollfd pf = { io_pipe[0], POLLIN, 0 };
        long failed0 = check_alloc_failed();
        r = ctx_poll(c, &pf, 1, 0);
        if (r < 0 && err == 0) {
            CHECK_EQ_INT(errno, ENOMEM); /* the done fd's table entry */
            CHECK(check_alloc_failed() != failed0);
            r = 1;
        }
        want = 1;
        break;
    }
    default: {
        /* Nothing ready: timeout 0 gives 0, or the context's err. */
        struct pollfd pf = { io_pipe[0], POLLIN, 0 };
        long failed0 = check_alloc_failed();
        r = ctx_poll(c, &pf, 1, 0);
        if (r < 0 && err == 0) {
            CHECK_EQ_INT(errno, ENOMEM);
            CHECK(check_alloc_failed() != failed0);
            r = 0;
        }
        want = 0;
        break;
    }
    }
    if (err != 0) {
        CHECK_EQ_INT(r, -1);
        CHECK_EQ_INT(errno, err);
        /* Nothing was consumed: the bytes written before are all there. */
        if (what != 2 && what != 3 && what != 5 && what != 7)
            CHECK_EQ_INT(read(io_pipe[0], buf, sizeof buf), (ssize_t)k);
    } else {
        CHECK_EQ_INT(r, (ssize_t)want);
        if (what <= 1 || what == 4)
            CHECK(memcmp(buf, data, want) == 0);
    }
    io_drain();
    /* Bad input is refused whatever the context. */
    errno = 0;
    CHECK_EQ_INT(ctx_read(c, io_pipe[0], NULL, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    errno = 0;
    CHECK_EQ_INT(ctx_read(NULL, io_pipe[0], buf, 1), -1);
    CHECK_EQ_INT(errno, EINVAL);
    M.fds_dirty = true;
}

static void run_op(struct input *in)
{
    int op = (int)(get8(in) % OP_COUNT);
    TRACE("op %d\n", op);
    switch (op) {
    case OP_CANCEL_CHILD:
    case OP_VALUE_CHILD:
    case OP_WITHOUT_CHILD:
    case OP_DEADLINE_CHILD:
    case OP_TIMEOUT_CHILD:
    case OP_DEADLINE_CAUSE_CHILD:
    case OP_TIMEOUT_CAUSE_CHILD:
    case OP_CUSTOM_CHILD:
        op_create(op, in);
        break;
    case OP_CANCEL:
    case OP_CANCEL_CAUSE:
        op_cancel(op, in);
        break;
    case OP_VALUE: {
        int i = slot_node(get8(in));
        int k = (int)(get8(in) % 4);
        CHECK_PTR_EQ(ctx_value(N(i)->c, keys[k]), model_value(i, k));
        break;
    }
    case OP_AFTER:
        op_after(in);
        break;
    case OP_STOP:
        op_stop(in);
        break;
    case OP_UNREF: {
        unsigned s = get8(in) % MAX_SLOTS;
        if (M.slots[s] >= 0) {
            TRACE("unref slot %u (node %d)\n", s, M.slots[s]);
            slot_put(s, -1);
        }
        break;
    }
    case OP_REF: {
        unsigned from = get8(in), to = get8(in);
        int i = slot_node(from);
        TRACE("ref node %d -> slot %u\n", i, to % MAX_SLOTS);
        CHECK_PTR_EQ(ctx_ref(N(i)->c), N(i)->c);
        if (N(i)->kind != M_ROOT)
            N(i)->refs++;
        slot_put(to, i);
        break;
    }
    case OP_WAIT: {
        int i = slot_node(get8(in));
        int err = never_done(i) ? 0 : N(N(i)->owner)->err;
        CHECK_EQ_INT(ctx_wait(N(i)->c, 0), err);
        if (err != 0) {
            /* a done context returns at once, whatever the timeout */
            CHECK_EQ_INT(ctx_wait(N(i)->c, CTX_FOREVER), err);
            CHECK_EQ_INT(ctx_sleep(N(i)->c, CTX_HOUR), err);
        }
        break;
    }
    case OP_FD:
        op_fd(in);
        break;
    case OP_ADVANCE:
        op_advance(in);
        break;
    case OP_CHECK: {
        int i = slot_node(get8(in));
        check_node_full(i, get8(in));
        break;
    }
    case OP_FAIL_ALLOC: {
        long k = (long)(get8(in) % 4);
        TRACE("fail allocation +%ld\n", k);
        check_alloc_fail_at(k, false);
        break;
    }
    case OP_MISUSE:
        op_misuse(in);
        break;
    case OP_IO:
        op_io(in);
        break;
    }
    check_after_op();
}

/* ---------------------------------------------------------------------------
 * Entry points
 */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static int initialized;
    if (initialized)
        return 0;
    initialized = 1;
    memset(long_msg, 'x', sizeof long_msg - 1);
    const char *t = getenv("CTX_FUZZ_TRACE");
    trace = t != NULL && *t != '\0' && *t != '0';
    check_alloc_install();
    CHECK_EQ_INT(ctx_clock_manual(0), 0);
    /* What the library may allocate once and keep: the deadline heap, the
     * texts of unknown codes. */
    ctx_t *c = ctx_with_timeout(ctx_background(), CTX_SECOND, NULL);
    CHECK_NOT_NULL(c);
    ctx_unref(c);
    for (int i = 0; i < 8; i++)
        CHECK_NOT_NULL(ctx_strerror(causes[i]));
    M.alloc_base = check_alloc_live();
    return 0;
}

static void cleanup(void)
{
    TRACE("cleanup\n");
    check_alloc_fail_none();
    M.fds_dirty = true;
    /* Stop every handle still held. */
    for (int r = 0; r < M.nr; r++) {
        struct mreg *g = &M.regs[r];
        if (!g->has_handle || g->handle_released)
            continue;
        bool want = g->state != R_RAN;
        if (g->state == R_PENDING)
            g->state = R_STOPPED;
        g->handle_released = true;
        CHECK_EQ_INT(ctx_after_stop(g->handle), want);
        reg_maybe_die(g);
    }
    check_after_op();
    /* Cancel what is left, so that fire-and-forget registrations run. */
    for (int i = 2; i < M.nn; i++) {
        if (N(i)->freed || N(i)->h == NULL || N(i)->err != 0)
            continue;
        TRACE("cleanup: cancel node %d\n", i);
        ctx_cancel_t *h = N(i)->h; /* the model may free node i */
        model_cancel(i, CTX_CANCELED, 0, NULL);
        ctx_cancel(h);
        check_after_op();
    }
    for (int r = 0; r < M.nr; r++)
        CHECK_MSG(M.regs[r].state != R_PENDING, "registration %d still pending", r);
    /* Drop every slot: everything must be freed. */
    for (unsigned s = 0; s < MAX_SLOTS; s++)
        if (M.slots[s] >= 0)
            slot_put(s, -1);
    check_after_op();
    for (int i = 2; i < M.nn; i++) {
        CHECK_MSG(N(i)->freed, "node %d (refs %d) not freed", i, N(i)->refs);
        if (N(i)->fd >= 0) {
            errno = 0;
            CHECK_MSG(fcntl(N(i)->fd, F_GETFD) == -1 && errno == EBADF,
                      "node %d: done fd %d still open", i, N(i)->fd);
        }
    }
    CHECK_MSG(check_alloc_live() == M.alloc_base, "%ld blocks leaked",
              check_alloc_live() - M.alloc_base);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    LLVMFuzzerInitialize(NULL, NULL); /* once; libFuzzer may have called it */
    memset(&M.nodes[0], 0, 2 * sizeof M.nodes[0]);
    M.nn = 2;
    M.nr = 0;
    M.now = 0;
    M.in_advance = false;
    CHECK_EQ_INT(ctx_clock_manual(0), 0);
    for (int r = 0; r < 2; r++) {
        struct mnode *n = N(r);
        n->kind = M_ROOT;
        n->parent = -1;
        n->owner = r;
        n->c = r == 0 ? ctx_background() : ctx_todo();
        n->fd = -1;
        n->key = -1;
    }
    for (int s = 0; s < MAX_SLOTS; s++)
        M.slots[s] = s < 2 ? s : -1;

    struct input in = { data, size };
    for (int ops = 0; in.n > 0 && ops < MAX_OPS; ops++)
        run_op(&in);
    cleanup();
    return 0;
}
