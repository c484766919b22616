/* SPDX-License-Identifier: MIT */

/*
 * A deadline and a request ID crossing two hops: client -> gateway ->
 * backend, three processes talking over sockets.
 *
 * The client gives the request one second and a request-id.  ctx_inject writes
 * them (grpc-timeout, traceparent, baggage) as header lines; each service
 * rebuilds the context with ctx_extract, so the gateway sees what is left
 * of the second, spends 100 ms, and passes on the rest; the backend, whose
 * work would take three seconds, stops when the client's budget is spent
 * instead of working for nobody.  Every hop logs the same request-id and
 * trace id.  The wire format here is "name: value" lines ended by an empty
 * line: any HTTP or RPC library's header map works the same way through a
 * carrier.
 *
 * Build and run:  make demo   (or: cc -std=c11 propagation.c -lctx -pthread)
 * Go: ctx, cancel := context.WithTimeout(ctx, time.Second) in the
 * client, and a gRPC server reading grpc-timeout in each service.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctx.h>
#include <ctx/propagation.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* A header store: a few "name: value" pairs. */
struct headers {
    int n;
    char name[8][32];
    char value[8][8200];
};

static const char *get(void *h, const char *name)
{
    struct headers *hs = h;
    for (int i = 0; i < hs->n; i++)
        if (strcmp(hs->name[i], name) == 0)
            return hs->value[i];
    return NULL;
}

static int set(void *h, const char *name, const char *value)
{
    struct headers *hs = h;
    if (hs->n == 8 || strlen(name) >= 32 || strlen(value) >= 8200)
        return EMSGSIZE;
    strcpy(hs->name[hs->n], name);
    strcpy(hs->value[hs->n], value);
    hs->n++;
    return 0;
}

static void send_headers(FILE *f, const struct headers *h)
{
    for (int i = 0; i < h->n; i++)
        fprintf(f, "%s: %s\n", h->name[i], h->value[i]);
    fprintf(f, "\n");
    fflush(f);
}

static int read_headers(FILE *f, struct headers *h)
{
    static char line[8300];
    h->n = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (line[0] == '\0')
            return 0;
        char *colon = strstr(line, ": ");
        if (colon != NULL) {
            *colon = '\0';
            set(h, line, colon + 2);
        }
    }
    return -1;
}

/* The request-id of ctx; a request may arrive without one. */
static const char *request_id(ctx_t *ctx)
{
    const char *id = ctx_baggage(ctx, "request-id");
    return id != NULL ? id : "-";
}

/* What a hop knows about its request, as one log line. */
static void log_hop(const char *who, ctx_t *ctx)
{
    char trace[33] = "none";
    ctx_time_t deadline;
    ctx_trace_id(ctx, trace);
    long ms = ctx_deadline(ctx, &deadline) ? (long)((deadline - ctx_now()) / CTX_MILLISECOND) : -1;
    printf("%-8s request-id=%s trace=%s budget=%ld ms\n", who, request_id(ctx), trace, ms);
    fflush(stdout);
}

static void backend(FILE *in, FILE *out)
{
    static struct headers h;
    if (read_headers(in, &h) != 0)
        exit(1);
    ctx_carrier_t carrier = { get, set, &h };
    ctx_t *ctx = ctx_extract(ctx_background(), &carrier, NULL);
    if (ctx == NULL)
        exit(1);
    log_hop("backend", ctx);
    /* Three seconds of work, cut short by the caller's deadline. */
    int err = ctx_sleep(ctx, 3 * CTX_SECOND);
    printf("backend  stopped: %s\n", err ? ctx_strerror(err) : "finished");
    fflush(stdout);
    char trace[33];
    ctx_trace_id(ctx, trace);
    fprintf(out, "%s %s %s\n", err ? "gave-up" : "done", request_id(ctx), trace);
    fflush(out);
    ctx_unref(ctx);
}

static void gateway(FILE *in, FILE *out, FILE *next_in, FILE *next_out)
{
    static struct headers h, down;
    if (read_headers(in, &h) != 0)
        exit(1);
    ctx_carrier_t carrier = { get, set, &h }, next = { get, set, &down };
    ctx_t *ctx = ctx_extract(ctx_background(), &carrier, NULL);
    if (ctx == NULL)
        exit(1);
    log_hop("gateway", ctx);
    ctx_sleep(ctx, 100 * CTX_MILLISECOND); /* its own part of the work */
    int err = ctx_inject(ctx, &next);      /* what is left goes on */
    if (err != 0) {
        fprintf(out, "gateway-failed %s\n", ctx_strerror(err));
        fflush(out);
        ctx_unref(ctx);
        return;
    }
    send_headers(next_out, &down);
    char reply[256];
    if (fgets(reply, sizeof reply, next_in) == NULL)
        strcpy(reply, "no-reply\n");
    fputs(reply, out);
    fflush(out);
    ctx_unref(ctx);
}

/* A connected pair of sockets as two FILE streams per end. */
static void pair(FILE *a[2], FILE *b[2])
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        exit(1);
    }
    a[0] = fdopen(sv[0], "r");
    a[1] = fdopen(dup(sv[0]), "w");
    b[0] = fdopen(sv[1], "r");
    b[1] = fdopen(dup(sv[1]), "w");
}

int main(void)
{
    FILE *client[2], *gw_up[2], *gw_down[2], *be[2];
    pair(client, gw_up);
    pair(gw_down, be);
    fflush(stdout);
    if (fork() == 0) {
        backend(be[0], be[1]);
        return 0;
    }
    if (fork() == 0) {
        gateway(gw_up[0], gw_up[1], gw_down[0], gw_down[1]);
        return 0;
    }

    /* The client: the first service of the chain starts the trace. */
    static struct headers none, out;
    ctx_carrier_t empty = { get, set, &none }, carrier = { get, set, &out };
    ctx_t *root = ctx_extract(ctx_background(), &empty, NULL);
    ctx_t *timed = ctx_with_timeout(root, CTX_SECOND, NULL);
    ctx_t *ctx = ctx_with_baggage(timed, "request-id", "req-42");
    if (ctx == NULL) /* out of memory or no random source: any step fails */
        return 1;
    log_hop("client", ctx);
    if (ctx_inject(ctx, &carrier) != 0)
        return 1;
    send_headers(client[1], &out);

    char status[32], rid[64], trace[64], mine[33];
    if (fscanf(client[0], "%31s %63s %63s", status, rid, trace) != 3)
        return 1;
    ctx_trace_id(ctx, mine);
    printf("client   answer: %s (request-id %s, %s trace)\n", status, rid,
           strcmp(trace, mine) == 0 ? "same" : "FAIL: another");
    while (wait(NULL) > 0) {
    }
    ctx_unref(ctx);
    ctx_unref(timed);
    ctx_unref(root);
    return strcmp(status, "gave-up") == 0 && strcmp(rid, "req-42") == 0 ? 0 : 1;
}
