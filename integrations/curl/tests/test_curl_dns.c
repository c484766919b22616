/* SPDX-License-Identifier: MIT */

/*
 * A cancel while libcurl resolves a name returns at once, even though the
 * name server never answers.
 *
 * The test makes that name server itself: it enters new user, mount and
 * network namespaces (unprivileged, so nothing outside the test is touched),
 * brings up the namespace's own loopback, binds a UDP socket on 127.0.0.1:53
 * that reads nothing, and bind-mounts a resolv.conf naming it over
 * /etc/resolv.conf.  getaddrinfo() in libcurl's resolver thread then waits
 * for the full resolver timeout (30 s here); the transfer must not.
 * Cancels and deadlines, over HTTP/1.1 and with HTTP/2 prior knowledge, end
 * the call within 100 ms; the handle then fetches from an address (a server
 * inside the namespace) on the same thread.  Skipped (exit 77) where
 * unprivileged namespaces are not allowed.
 */
#include "check.h"

#include <ctx/curl.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>

static bool write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text);
}

/* Enters the namespaces and returns the silent name server's socket. */
static int enter_private_network(char *resolv_path)
{
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET) != 0)
        SKIP("unprivileged user namespaces are not available here (unshare: %s)", strerror(errno));
    char map[64];
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
    if (!write_file("/proc/self/uid_map", map))
        SKIP("cannot write uid_map: %s", strerror(errno));
    write_file("/proc/self/setgroups", "deny\n");
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
    if (!write_file("/proc/self/gid_map", map))
        SKIP("cannot write gid_map: %s", strerror(errno));
    /* Our bind mount must not reach the rest of the system. */
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        SKIP("cannot make the mount namespace private: %s", strerror(errno));

    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    CHECK(s >= 0);
    struct ifreq ifr = { 0 };
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    CHECK_EQ_INT(ioctl(s, SIOCGIFFLAGS, &ifr), 0);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0)
        SKIP("cannot bring up the namespace's loopback: %s", strerror(errno));
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_port = htons(53),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0)
        SKIP("cannot bind 127.0.0.1:53 in the namespace: %s", strerror(errno));

    snprintf(resolv_path, 64, "/tmp/ctx-curl-dns-XXXXXX");
    int fd = mkstemp(resolv_path);
    CHECK(fd >= 0);
    const char *conf = "nameserver 127.0.0.1\noptions timeout:30 attempts:1\n";
    CHECK_EQ_INT(write(fd, conf, strlen(conf)), (long long)strlen(conf));
    close(fd);
    if (mount(resolv_path, "/etc/resolv.conf", NULL, MS_BIND, NULL) != 0)
        SKIP("cannot bind-mount over /etc/resolv.conf: %s", strerror(errno));
    return s;
}

struct canceller {
    int dns;
    ctx_cancel_t *cancel;
    ctx_time_t at;
};

/* Cancels once the name server has been asked, i.e. during resolution. */
static void *cancel_main(void *arg)
{
    struct canceller *c = arg;
    struct pollfd p = { .fd = c->dns, .events = POLLIN };
    CHECK_EQ_INT(poll(&p, 1, 20000), 1);
    ctx_sleep(ctx_background(), 20 * CTX_MILLISECOND);
    c->at = ctx_now();
    ctx_cancel(c->cancel);
    return NULL;
}

/* A server inside the namespace, to show that the handle works once a name
 * is not needed. */
static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version, (void)upload, (void)upload_size;
    if (*state == NULL) {
        *state = conn;
        return MHD_YES;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(2, (void *)"ok", MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p, (void)arg;
    return size * n;
}

int main(void)
{
    char resolv_path[64];
    int dns = enter_private_network(resolv_path);
    CHECK_EQ_INT(curl_global_init(CURL_GLOBAL_DEFAULT), CURLE_OK);

    CURL *easy = curl_easy_init();
    CHECK_NOT_NULL(easy);
    curl_easy_setopt(easy, CURLOPT_URL, "http://never-answers.example/");
    /* A previous cached answer or a proxy would skip the resolver. */
    curl_easy_setopt(easy, CURLOPT_PROXY, "");
    curl_easy_setopt(easy, CURLOPT_DNS_CACHE_TIMEOUT, 0L);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard);

    /* Cancels, over HTTP/1.1 and with HTTP/2 prior knowledge (resolution
     * comes first either way, but the handle's path through libcurl
     * differs). */
    for (int round = 0; round < 4; round++) {
        curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                         round % 2 == 0 ? (long)CURL_HTTP_VERSION_1_1
                                        : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        ctx_cancel_t *cancel;
        ctx_t *ctx = ctx_with_cancel(ctx_background(), &cancel);
        CHECK_NOT_NULL(ctx);
        struct canceller c = { .dns = dns, .cancel = cancel };
        pthread_t t;
        CHECK_EQ_INT(pthread_create(&t, NULL, cancel_main, &c), 0);
        ctx_time_t start = ctx_now();
        CURLcode rc = ctx_curl_perform(ctx, easy);
        ctx_time_t end = ctx_now();
        CHECK_EQ_INT(pthread_join(t, NULL), 0);
        CHECK_EQ_INT(rc, CURLE_ABORTED_BY_CALLBACK);
        CHECK_CANCELED(ctx);
        long us = (long)((end - c.at) / CTX_MICROSECOND);
        fprintf(stderr, "round %d: resolving for %lld ms, returned %ld us after the cancel\n",
                round, (long long)((c.at - start) / CTX_MILLISECOND), us);
        /* The resolver would wait 30 s. */
        CHECK_LE_INT(us, 100000);
        ctx_unref(ctx);
        /* Drain the queries so the next round sees its own. */
        char buf[512];
        while (recv(dns, buf, sizeof buf, MSG_DONTWAIT) > 0) {
        }
    }

    /* The deadline bounds resolution too. */
    for (int round = 0; round < 2; round++) {
        curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                         round == 0 ? (long)CURL_HTTP_VERSION_1_1
                                    : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
        ctx_t *ctx = ctx_with_timeout(ctx_background(), 300 * CTX_MILLISECOND, NULL);
        ctx_time_t deadline;
        CHECK(ctx_deadline(ctx, &deadline));
        CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OPERATION_TIMEDOUT);
        long us = (long)((ctx_now() - deadline) / CTX_MICROSECOND);
        fprintf(stderr, "300 ms deadline while resolving: returned %ld us after it\n", us);
        CHECK_LE_INT(us, 100000);
        ctx_unref(ctx);
    }

    /* The same handle, on the same thread, works for an address. */
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
                                            NULL, NULL, answer, NULL, MHD_OPTION_END);
    CHECK_NOT_NULL(d);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%u/", (unsigned)info->port);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    ctx_t *ctx = ctx_with_timeout(ctx_background(), 5 * CTX_SECOND, NULL);
    CHECK_EQ_INT(ctx_curl_perform(ctx, easy), CURLE_OK);
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    CHECK_EQ_INT(code, 200);
    ctx_unref(ctx);
    MHD_stop_daemon(d);

    curl_easy_cleanup(easy);
    curl_global_cleanup();
    umount("/etc/resolv.conf");
    unlink(resolv_path);
    close(dns);
    return 0;
}
