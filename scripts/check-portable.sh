#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks that a build of the portable backend (-DCTX_PORTABLE=ON) uses none
# of the calls and flags that only some systems have:
#
#   scripts/check-portable.sh build-portable/libctx.a
#
# 1. The static library's undefined symbols (nm -u) name none of the
#    Linux-only functions (epoll, eventfd, preadv2, pwritev2, accept4,
#    pipe2, getrandom, syscall, ...).
# 2. The code (comments stripped) of every source file the portable build
#    compiles, src/ without src/linux/, names none of the Linux-only flags
#    (MSG_NOSIGNAL, SOCK_CLOEXEC, SOCK_NONBLOCK, RWF_NOWAIT, EPOLL*) and
#    never asks whether it runs on Linux: that is CMake's choice of
#    backend, not an #ifdef's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
lib="${1:?usage: scripts/check-portable.sh path/to/libctx.a}"
CC="${CC:-cc}"
status=0

funcs='epoll_[a-z_0-9]*|eventfd[a-z_]*|preadv2|pwritev2|preadv64v2|pwritev64v2|accept4|pipe2'
funcs+='|getrandom|syscall|futex[a-z_]*|membarrier|signalfd|timerfd_[a-z_]*|inotify_[a-z_0-9]*'
funcs+='|pthread_setname_np|dup3|sendmmsg|recvmmsg|splice|tee|vmsplice|memfd_create|prctl'
bad="$(nm -u "$lib" | awk '{ print $NF }' | sed 's/@.*//' | grep -E "^($funcs)\$" | sort -u || true)"
if [ -n "$bad" ]; then
    echo "check-portable: $lib calls functions the portable backend must not use:" >&2
    echo "$bad" | sed 's/^/  /' >&2
    status=1
fi

flags='MSG_NOSIGNAL|SOCK_CLOEXEC|SOCK_NONBLOCK|RWF_NOWAIT|EPOLL[A-Z_]*|EFD_[A-Z_]*|__linux__'
while IFS= read -r f; do
    # -fpreprocessed strips the comments without expanding anything.
    hits="$("$CC" -fpreprocessed -dD -E -P "$f" 2>/dev/null | grep -nwE "$flags" || true)"
    if [ -n "$hits" ]; then
        echo "check-portable: $f uses what the portable backend must not:" >&2
        echo "$hits" | sed 's/^/  /' >&2
        status=1
    fi
done < <(find src -name '*.[ch]' -not -path 'src/linux/*' | sort)

[ "$status" -eq 0 ] && echo "check-portable: $lib and the portable sources use only portable calls"
exit "$status"
