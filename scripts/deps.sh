#!/usr/bin/env bash
# SPDX-License-Identifier: MIT

# Installs the Debian packages that `make test`, `make demo` and CI need, and
# nothing when they are all present already.
#
#   scripts/deps.sh [test|demo|ci]      default: test
#
# On Debian or Ubuntu it runs apt-get as root, or through sudo when that
# works without a password prompt; anywhere else (or when neither works) it
# prints the list of what to install and exits 0, so the build goes on and
# the parts whose dependencies are missing are skipped with a message.
# Set CTX_NO_INSTALL=1 to never install anything.
set -euo pipefail

what="${1:-test}"

# The core needs a C compiler, CMake and pkg-config; its manual pages need
# python3 (scripts/man.py writes them) and groff (their test reads them).
# The integrations need
# their libraries; the tests need the real peers: a PostgreSQL server, Go
# (for the interoperability tests), curl, Python's grpcio (a gRPC server
# for the HTTP/2 tests of libctx-curl), and the event loops the examples
# use.
core=(build-essential cmake pkg-config python3 groff-base)
libs=(libsqlite3-dev libpq-dev libcurl4-openssl-dev libmicrohttpd-dev
      libuv1-dev libevent-dev liburing-dev)
peers=(postgresql golang-go golang-golang-x-sync-dev golang-golang-x-net-dev curl
       python3-grpcio)
# The reverse proxies and the browser of the interoperability tests: nginx
# and HAProxy in front of reportd, headless Chromium driven through
# Selenium (Debian's module, for /usr/bin/python3) on reportd's page.
peers+=(nginx haproxy chromium chromium-driver python3-selenium)
case "$what" in
    demo) packages=("${core[@]}" libsqlite3-dev libcurl4-openssl-dev libmicrohttpd-dev curl) ;;
    test) packages=("${core[@]}" "${libs[@]}" "${peers[@]}") ;;
    ci)   packages=("${core[@]}" "${libs[@]}" "${peers[@]}" clang clang-format
                    libclang-rt-14-dev libbenchmark-dev wrk hey man-db
                    golang-github-lib-pq-dev golang-github-mattn-go-sqlite3-dev
                    gcc-multilib musl-tools abigail-tools valgrind) ;;
    *) echo "usage: scripts/deps.sh [test|demo|ci]" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "deps: not a Debian-like system; install the equivalents of:" >&2
    echo "      ${packages[*]}" >&2
    exit 0
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
((${#missing[@]})) || exit 0

if [ "${CTX_NO_INSTALL:-0}" = 1 ]; then
    echo "deps: CTX_NO_INSTALL=1; missing: ${missing[*]}" >&2
    exit 0
fi

if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "deps: not root and no password-less sudo; please install:" >&2
    echo "      apt-get install ${missing[*]}" >&2
    exit 0
fi

echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The tests start their own nginx and HAProxy on ephemeral ports; the
# system services that the packages would start (and keep on port 80) are
# not wanted.  A policy-rc.d that refuses every start keeps them down
# during the install (unless the machine already has one), and systemd's
# units are disabled afterwards.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# deps.sh: no service starts while packages install\nexit 101\n' |
        "${sudo[@]}" tee "$policy" >/dev/null
    "${sudo[@]}" chmod 755 "$policy"
    made_policy=1
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null || rc=$?
if [ "$made_policy" = 1 ]; then
    "${sudo[@]}" rm -f "$policy"
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${sudo[@]}" systemctl disable --now nginx.service haproxy.service >/dev/null 2>&1 || true
fi
exit "${rc:-0}"
