/* SPDX-License-Identifier: MIT */

/*
 * /dev/urandom, the random source of last resort, read with POSIX calls
 * only.  Both backends compile this file: the Linux one falls back to it on
 * kernels older than getrandom(2) (3.17), the portable one where there is
 * no getentropy or it says ENOSYS.
 */
#include "../platform.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

int ctx__plat_urandom(void *out, size_t n)
{
    uint8_t *buf = out;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    size_t done = 0;
    while (done < n) {
        ssize_t r = read(fd, buf + done, n - done);
        if (r > 0) {
            done += (size_t)r;
        } else if (r == 0 || errno != EINTR) {
            int e = r == 0 ? EIO : errno;
            close(fd);
            return e;
        }
    }
    close(fd);
    return 0;
}
