/* SPDX-License-Identifier: MIT */

/*
 * Interoperability with a real Go peer (tests/interop/peer.go, standard
 * library only), over loopback TCP.
 *
 *   C -> Go: ctx_inject writes the headers of a plain HTTP/1.1 request sent
 *   on a socket to the Go program's net/http server, which turns
 *   grpc-timeout into context.WithTimeout and reads traceparent and baggage
 *   by hand.  Its remaining budget must lie between the C side's budget
 *   after the answer and before the request, with 5 ms of slack either
 *   way; the trace id, the span id sent and every baggage value must come
 *   back unchanged.
 *
 *   Go -> C: the Go program's net/http client sends its headers to a socket
 *   here; ctx_extract reads them and the answer tells the Go side what C
 *   saw; the Go side checks it the same way and exits 0.
 *
 * The test builds the Go program itself (CMake passes the go binary, the
 * source and a scratch directory in the build tree).  Without Go it is skipped with a message; CI
 * installs golang-go, so it runs there.
 */
#include "check.h"

#include "carrier.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

static const char *scratch;
static char peer[4096];

/* Runs argv with stdout into *out_fd (when not NULL); returns the pid. */
static pid_t spawn(char *const argv[], int *out_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    int p[2] = { -1, -1 };
    if (out_fd != NULL) {
        CHECK(pipe(p) == 0);
        posix_spawn_file_actions_adddup2(&fa, p[1], 1);
        posix_spawn_file_actions_addclose(&fa, p[0]);
        posix_spawn_file_actions_addclose(&fa, p[1]);
    }
    pid_t pid;
    int rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    CHECK_MSG(rc == 0, "spawn %s: %s", argv[0], strerror(rc));
    posix_spawn_file_actions_destroy(&fa);
    if (out_fd != NULL) {
        close(p[1]);
        *out_fd = p[0];
    }
    return pid;
}

static int wait_exit(pid_t pid)
{
    int st;
    CHECK(waitpid(pid, &st, 0) == pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Reads fd to its end (at most size - 1 bytes, then a NUL); bounded by
 * a generous time limit so that a stuck peer fails instead of hanging. */
static size_t read_all(int fd, char *buf, size_t size)
{
    size_t n = 0;
    ctx_t *c = ctx_with_timeout(ctx_background(), 60 * CTX_SECOND, NULL);
    while (n + 1 < size) {
        ssize_t r = read(fd, buf + n, size - 1 - n);
        if (r == 0)
            break;
        if (r < 0 && errno == EINTR)
            continue;
        CHECK_MSG(r > 0, "read: %s", strerror(errno));
        n += (size_t)r;
        CHECK_MSG(ctx_err(c) == 0, "peer did not finish within 60 s");
    }
    buf[n] = '\0';
    ctx_unref(c);
    return n;
}

static void build_peer(const char *go, const char *src)
{
    snprintf(peer, sizeof peer, "%s/interop_peer", scratch);
    static char cache[4096], gopath[4096]; /* putenv keeps the pointers */
    snprintf(cache, sizeof cache, "GOCACHE=%s/go-cache", scratch);
    snprintf(gopath, sizeof gopath, "GOPATH=%s/gopath", scratch);
    /* No modules, no network: the standard library is all it uses. */
    char *env[] = {
        "GO111MODULE=off", "GOPROXY=off", "GOFLAGS=", "CGO_ENABLED=0", cache, gopath, NULL
    };
    for (char **e = env; *e != NULL; e++)
        putenv(*e);
    char *argv[] = { (char *)go, "build", "-o", peer, (char *)src, NULL };
    pid_t pid = spawn(argv, NULL);
    CHECK_MSG(wait_exit(pid) == 0, "go build %s failed", src);
}

static int connect_to(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(fd >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_MSG(connect(fd, (struct sockaddr *)&a, sizeof a) == 0, "connect: %s", strerror(errno));
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        CHECK_MSG(w > 0, "write: %s", strerror(errno));
        s += w;
        n -= (size_t)w;
    }
}

/* The value of "name value" in a body of such lines, or NULL. */
static const char *field(const char *body, const char *name, char *out, size_t size)
{
    size_t nl = strlen(name);
    for (const char *l = body; l != NULL && *l != '\0';) {
        const char *end = strchr(l, '\n');
        size_t len = end != NULL ? (size_t)(end - l) : strlen(l);
        if (len > nl && strncmp(l, name, nl) == 0 && l[nl] == ' ') {
            snprintf(out, size, "%.*s", (int)(len - nl - 1), l + nl + 1);
            return out;
        }
        l = end != NULL ? end + 1 : NULL;
    }
    return NULL;
}

static void hex_of(const char *s, char *out)
{
    for (; *s != '\0'; s++, out += 2)
        sprintf(out, "%02x", (unsigned char)*s);
    *out = '\0';
}

/* One request from C to the Go server; the Go side's answer in body. */
static void call_go(int port, ctx_t *ctx, const headers_t *sent, char *resp, size_t size)
{
    char req[16384];
    int n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (int i = 0; i < sent->n; i++)
        n += snprintf(req + n, sizeof req - (size_t)n, "%s: %s\r\n", sent->name[i], sent->value[i]);
    n += snprintf(req + n, sizeof req - (size_t)n, "\r\n");
    CHECK(n < (int)sizeof req);
    (void)ctx;
    int fd = connect_to(port);
    send_all(fd, req, (size_t)n);
    read_all(fd, resp, size);
    close(fd);
    CHECK_MSG(strncmp(resp, "HTTP/1.1 200", 12) == 0, "Go answered: %s", resp);
}

static void c_to_go(int port, ctx_duration_t timeout, bool with_baggage)
{
    headers_t empty = { 0 }, sent = { 0 };
    ctx_carrier_t in = headers_carrier(&empty), out = headers_carrier(&sent);
    ctx_t *root = ctx_extract(ctx_background(), &in, NULL); /* starts a trace */
    ctx_t *c = timeout > 0 ? ctx_with_timeout(root, timeout, NULL) : ctx_ref(root);
    ctx_t *b1 = ctx_with_baggage(c, "request-id", "c-42");
    const char *odd = "\xc3\xa9t\xc3\xa9 x,;%\"\\=";
    ctx_t *top = with_baggage ? ctx_with_baggage(b1, "user", odd) : ctx_ref(c);
    CHECK(top != NULL);

    ctx_time_t dl = 0;
    bool has_dl = ctx_deadline(top, &dl);
    ctx_duration_t before = has_dl ? dl - ctx_now() : 0;
    int rc = ctx_inject(top, &out);
    if (rc == CTX_DEADLINE_EXCEEDED && timeout < CTX_SECOND) {
        /* A loaded machine kept this thread off the CPU for the whole short
         * budget: refusing to send is then the right answer. */
        CHECK(ctx_now() >= dl && sent.n == 0);
        printf("C->Go %lld ms: the budget ran out before the call; nothing was sent\n",
               (long long)(timeout / CTX_MILLISECOND));
        goto done;
    }
    CHECK_EQ_INT(rc, 0);
    char resp[65536];
    call_go(port, top, &sent, resp, sizeof resp);
    ctx_duration_t after = has_dl ? dl - ctx_now() : 0;
    const char *body = strstr(resp, "\r\n\r\n");
    CHECK(body != NULL);
    body += 4;

    char v[1024], want[1024];
    CHECK(field(body, "budget_ns", v, sizeof v) != NULL);
    if (has_dl) {
        long long go_ns = atoll(v);
        const ctx_duration_t slack = 5 * CTX_MILLISECOND;
        CHECK_MSG(go_ns <= before + slack && go_ns >= after - slack,
                  "Go's budget %lld ns is not within 5 ms of C's [%lld, %lld] ns (sent %s)", go_ns,
                  (long long)after, (long long)before, headers_find(&sent, "grpc-timeout"));
        printf("C->Go %lld ms: grpc-timeout %s, C budget %.3f..%.3f ms, Go budget %.3f ms\n",
               (long long)(timeout / CTX_MILLISECOND), headers_find(&sent, "grpc-timeout"),
               after / 1e6, before / 1e6, go_ns / 1e6);
    } else {
        CHECK_STR(v, "none");
    }
    char id[33];
    CHECK(ctx_trace_id(top, id));
    CHECK(field(body, "trace_id", v, sizeof v) != NULL);
    CHECK_STR(v, id);
    CHECK(field(body, "parent_id", v, sizeof v) != NULL);
    CHECK(strncmp(headers_find(&sent, "traceparent") + 36, v, 16) == 0);
    hex_of("c-42", want);
    if (with_baggage) {
        CHECK(field(body, "baggage request-id", v, sizeof v) != NULL);
        CHECK_STR(v, want);
        hex_of(odd, want);
        CHECK(field(body, "baggage user", v, sizeof v) != NULL);
        CHECK_STR(v, want);
    }
done:
    ctx_unref(top);
    ctx_unref(b1);
    ctx_unref(c);
    ctx_unref(root);
    headers_clear(&sent);
}

/* The Go client's request: read up to the blank line, headers into h. */
static void read_request(int fd, headers_t *h)
{
    static char buf[65536];
    size_t n = 0;
    char *end = NULL;
    while (end == NULL) {
        CHECK_MSG(n + 1 < sizeof buf, "request headers too long");
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        CHECK_MSG(r > 0, "read request: %s", r == 0 ? "end of file" : strerror(errno));
        n += (size_t)r;
        buf[n] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    *end = '\0';
    /* Raw header lines, "Name: value", after the request line. */
    char *save = NULL;
    char *line = strtok_r(buf, "\r\n", &save);
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        if (colon == NULL)
            continue;
        *colon = '\0';
        char *value = colon + 1;
        while (*value == ' ')
            value++;
        const char *prev = headers_find(h, line);
        if (prev != NULL) { /* a repeated header: join with "," as HTTP allows */
            char joined[8192];
            snprintf(joined, sizeof joined, "%s,%s", prev, value);
            headers_put(h, line, joined);
        } else {
            headers_put(h, line, value);
        }
    }
}

static void go_to_c(void)
{
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(ls >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    CHECK(bind(ls, (struct sockaddr *)&a, sizeof a) == 0 && listen(ls, 4) == 0);
    CHECK(getsockname(ls, (struct sockaddr *)&a, &alen) == 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(a.sin_port));
    char *argv[] = { peer, "client", addr, NULL };
    int out;
    pid_t pid = spawn(argv, &out);

    struct pollfd p = { ls, POLLIN, 0 };
    CHECK_MSG(poll(&p, 1, 60000) == 1, "the Go client did not connect within 60 s");
    int fd = accept(ls, NULL, NULL);
    CHECK(fd >= 0);
    headers_t h = { 0 };
    read_request(fd, &h);
    ctx_carrier_t in = headers_carrier(&h);
    ctx_t *c = ctx_extract(ctx_background(), &in, NULL);
    CHECK(c != NULL);
    ctx_time_t dl;
    CHECK_MSG(ctx_deadline(c, &dl), "no deadline from grpc-timeout \"%s\"",
              headers_find(&h, "grpc-timeout") ? headers_find(&h, "grpc-timeout") : "(absent)");
    ctx_duration_t budget = dl - ctx_now();

    char body[4096], id[33], span[17], hex1[256], hex2[256];
    CHECK(ctx_trace_id(c, id) && ctx_span_id(c, span));
    const char *rid = ctx_baggage(c, "request-id"), *user = ctx_baggage(c, "user");
    hex_of(rid != NULL ? rid : "", hex1);
    hex_of(user != NULL ? user : "", hex2);
    int bl = snprintf(body, sizeof body,
                      "budget_ns %lld\ntrace_id %s\nparent_id %s\nbaggage request-id %s\n"
                      "baggage user %s\n",
                      (long long)budget, id, span, hex1, hex2);
    char resp[8192];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      "Connection: close\r\n\r\n%s",
                      bl, body);
    send_all(fd, resp, (size_t)rl);
    close(fd);
    close(ls);

    char said[4096];
    read_all(out, said, sizeof said);
    close(out);
    int code = wait_exit(pid);
    printf("Go->C: %s", said);
    CHECK_MSG(code == 0 && strncmp(said, "ok ", 3) == 0, "the Go client said: %s (exit %d)", said,
              code);
    /* And what C read matches what Go sent, seen from here too. */
    CHECK_STR(headers_find(&h, "tracestate"), "congo=t61rcWkgMzE");
    CHECK_STR(rid, "go-7");
    CHECK_STR(user, "\xc3\xa9t\xc3\xa9 x,;%");
    ctx_unref(c);
    headers_clear(&h);
}

int main(void)
{
    /* tests/CMakeLists.txt passes where go is (empty when CMake found
     * none), the program's source and a scratch directory. */
    const char *go = CTX_GO_EXECUTABLE;
    if (go[0] == '\0')
        SKIP("Go is not installed (apt-get install golang-go): the Go interop test cannot run");
    struct stat st;
    if (stat(go, &st) != 0)
        SKIP("Go is not installed at %s (apt-get install golang-go)", go);
    scratch = CTX_INTEROP_DIR;
    mkdir(scratch, 0777);
    signal(SIGPIPE, SIG_IGN);
    build_peer(go, CTX_INTEROP_SOURCE);

    char *sargv[] = { peer, "server", NULL };
    int out;
    pid_t server = spawn(sargv, &out);
    char line[128];
    size_t n = 0;
    while (n + 1 < sizeof line) { /* "listening PORT\n" */
        ssize_t r = read(out, line + n, 1);
        CHECK_MSG(r == 1, "the Go server did not start");
        if (line[n++] == '\n')
            break;
    }
    line[n] = '\0';
    int port = 0;
    CHECK_MSG(sscanf(line, "listening %d", &port) == 1, "Go server said: %s", line);

    c_to_go(port, 10 * CTX_SECOND, true);
    c_to_go(port, 50 * CTX_MILLISECOND + 1234, true);
    c_to_go(port, 3 * CTX_HOUR, false);
    c_to_go(port, 0, true); /* no deadline: no grpc-timeout */

    int q = connect_to(port);
    const char *quit = "GET /quit HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    send_all(q, quit, strlen(quit));
    char resp[4096];
    read_all(q, resp, sizeof resp);
    close(q);
    read_all(out, resp, sizeof resp);
    close(out);
    CHECK_EQ_INT(wait_exit(server), 0);

    go_to_c();
    printf("test_interop_go: ok\n");
    return 0;
}
