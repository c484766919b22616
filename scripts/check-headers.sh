#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Compiles every public header of libctx and of its companion libraries on
# its own, and all of them together, as C11 and as C++17, with -Wall
# -Wextra -Wpedantic -Werror, so that a project in either language can
# include them with strict warnings.  ctx.h is compiled with and without
# CTX_NO_INLINE, since it has an inline fast path.
#
#   scripts/check-headers.sh            (make headers)
#
# CC and CXX choose the compilers (default cc and c++).  A companion
# library's header is skipped, with a message, when its dependency's header
# is not installed, unless CTX_REQUIRE_INTEGRATIONS=ON, as in CI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
CC="${CC:-cc}"
CXX="${CXX:-c++}"
require="${CTX_REQUIRE_INTEGRATIONS:-OFF}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

incs=(-Iinclude)
for dir in integrations/*/include; do
    incs+=("-I$dir")
done
# The dependencies' own include directories (libpq's is not on the default
# path on Debian).
for pc in libpq libcurl libmicrohttpd sqlite3; do
    # shellcheck disable=SC2207  # pkg-config's output is meant to be split.
    incs+=($(pkg-config --cflags "$pc" 2>/dev/null || true))
done
flags=(-Wall -Wextra -Wpedantic -Werror -fsyntax-only "${incs[@]}")

# The header each companion library's header needs from its dependency.
declare -A dep=([curl]=curl/curl.h [mhd]=microhttpd.h [pq]=libpq-fe.h [sqlite]=sqlite3.h)

headers=(ctx.h)
for h in include/ctx/*.h; do
    headers+=("ctx/${h##*/}")
done
for h in integrations/*/include/ctx/*.h; do
    name="${h#integrations/}"
    name="${name%%/*}"
    need="${dep[$name]:-}"
    if [ -n "$need" ] &&
        ! printf '#include <%s>\n' "$need" | "$CC" -E "${incs[@]}" -x c - >/dev/null 2>&1; then
        if [ "$require" = ON ]; then
            echo "check-headers: <$need> is missing, needed by $h" >&2
            exit 1
        fi
        echo "check-headers: skipping $h (no <$need>)"
        continue
    fi
    headers+=("ctx/${h##*/}")
done

fails=0
# $1: a label; the rest: the source's lines.
check() {
    local label="$1"
    shift
    printf '%s\n' "$@" 'int main(void) { return 0; }' >"$tmp/t.c"
    cp "$tmp/t.c" "$tmp/t.cpp"
    if ! "$CC" -std=c11 "${flags[@]}" "$tmp/t.c"; then
        echo "check-headers: FAILED as C11: $label" >&2
        fails=$((fails + 1))
    fi
    if ! "$CXX" -std=c++17 "${flags[@]}" "$tmp/t.cpp"; then
        echo "check-headers: FAILED as C++17: $label" >&2
        fails=$((fails + 1))
    fi
}

all=()
for h in "${headers[@]}"; do
    check "<$h>" "#include <$h>"
    all+=("#include <$h>")
done
check "every header" "${all[@]}"
check "<ctx.h> with CTX_NO_INLINE" "#define CTX_NO_INLINE" "#include <ctx.h>"
# The headers again after a C library header that defines the POSIX level,
# as a program that asks for strict POSIX would.
check "every header under _POSIX_C_SOURCE=200809L" "#define _POSIX_C_SOURCE 200809L" "${all[@]}"

if [ "$fails" -ne 0 ]; then
    echo "check-headers: $fails failure(s)" >&2
    exit 1
fi
echo "check-headers: ${#headers[@]} headers compile as C11 and C++17 with $CC and $CXX"
