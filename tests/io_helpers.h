/* SPDX-License-Identifier: MIT */

/*
 * io_helpers.h: sockets and descriptor counts shared by the I/O tests
 * (test_io.c, test_dial.c, test_peer_close.c, test_io_alloc_fail.c).
 * Everything is real: pipes, socketpairs and TCP over 127.0.0.1.
 */
#ifndef CTX_TESTS_IO_HELPERS_H
#define CTX_TESTS_IO_HELPERS_H

#include "check.h"

#include <ctx/io.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>

/* A TCP listener on 127.0.0.1 with a port the kernel chose. */
static inline int io_listen(int backlog, int *port)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(l >= 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    CHECK_EQ_INT(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    CHECK_EQ_INT(listen(l, backlog), 0);
    socklen_t al = sizeof a;
    CHECK_EQ_INT(getsockname(l, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return l;
}

static inline struct sockaddr_in io_addr(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    a.sin_port = htons((uint16_t)port);
    return a;
}

/* A connected TCP pair over loopback: *client and *server. */
static inline void io_tcp_pair(int *client, int *server)
{
    int port;
    int l = io_listen(4, &port);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(c >= 0);
    struct sockaddr_in a = io_addr(port);
    CHECK_EQ_INT(connect(c, (struct sockaddr *)&a, sizeof a), 0);
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    CHECK(s >= 0);
    close(l);
    *client = c;
    *server = s;
}

/* The number of open descriptors of this process. */
static inline int io_fd_count(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    CHECK(d != NULL);
    while (readdir(d) != NULL)
        n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own fd */
}

#endif /* CTX_TESTS_IO_HELPERS_H */
