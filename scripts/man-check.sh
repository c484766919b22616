#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks the manual that scripts/man.py writes against the libraries.
#
#   scripts/man-check.sh --man DIR [--cc CC] [--cflags FLAGS] --lib LIB.so...
#       DIR/man3 has a page for every symbol that each LIB exports (nm -D),
#       every page's SYNOPSIS compiles, and groff reads every page without a
#       warning.  CTest runs this as the test man_check.
#
#   scripts/man-check.sh --installed PREFIX
#       after `make install PREFIX=...`: `man NAME` finds a page, through
#       PREFIX/share/man, for every symbol of every libctx*.so installed
#       under PREFIX.  CI runs this after its install step.
#
# How a SYNOPSIS is compiled: its #include and #define lines go at file
# scope, every other declaration inside a function body, where a
# redeclaration must agree with the header's (a different parameter type is
# an error) and a typedef of a struct may repeat the header's body.  The
# call-site and inline macros are turned off (CTX_NO_SITE_MACROS,
# CTX_NO_INLINE) so that the functions are declared by their own names.
set -euo pipefail

man_dir=""
prefix=""
cc="${CC:-cc}"
cflags=""
libs=()
while [ $# -gt 0 ]; do
    case "$1" in
    --man) man_dir="$2"; shift 2 ;;
    --installed) prefix="$2"; shift 2 ;;
    --cc) cc="$2"; shift 2 ;;
    --cflags) cflags="$2"; shift 2 ;;
    --lib) libs+=("$2"); shift 2 ;;
    *)
        echo "usage: scripts/man-check.sh --man DIR [--cc CC] [--cflags FLAGS] --lib LIB.so..." >&2
        echo "       scripts/man-check.sh --installed PREFIX" >&2
        exit 2
        ;;
    esac
done

errors=0
fail() {
    echo "man-check: $*" >&2
    errors=$((errors + 1))
}

# The functions and variables a shared library exports, without symbol
# versions and without the version nodes themselves (type A).
exported() {
    nm -D --defined-only "$1" | awk '$2 != "A" { sub(/@.*/, "", $3); print $3 }' | sort -u
}

if [ -n "$prefix" ]; then
    command -v man >/dev/null || { echo "man-check: man(1) is not installed (Debian: man-db)" >&2; exit 1; }
    mapfile -t sos < <(find "$prefix" -name 'libctx*.so.*' -type f | sort)
    [ "${#sos[@]}" -gt 0 ] || { echo "man-check: no libctx*.so under $prefix" >&2; exit 1; }
    n=0
    for so in "${sos[@]}"; do
        while IFS= read -r sym; do
            n=$((n + 1))
            MANPATH="$prefix/share/man" man -w "$sym" >/dev/null 2>&1 ||
                fail "$so: \`man $sym\` finds no page under $prefix/share/man"
        done < <(exported "$so")
    done
    MANPATH="$prefix/share/man" man -w 3 libctx >/dev/null 2>&1 || fail "\`man libctx\` finds no page"
    [ "$errors" = 0 ] || exit 1
    echo "man-check: \`man NAME\` works under $prefix/share/man for all $n exported symbols of ${#sos[@]} libraries."
    exit 0
fi

[ -n "$man_dir" ] && [ -d "$man_dir/man3" ] || { echo "man-check: no pages in '$man_dir/man3'" >&2; exit 2; }
[ "${#libs[@]}" -gt 0 ] || { echo "man-check: give at least one --lib" >&2; exit 2; }

# 1. Every exported symbol has a page.
nsym=0
for so in "${libs[@]}"; do
    while IFS= read -r sym; do
        nsym=$((nsym + 1))
        [ -f "$man_dir/man3/$sym.3" ] || fail "$(basename "$so") exports $sym, which has no page (document it in its header)"
    done < <(exported "$so")
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 2. Every page (but the .so redirections) reads without a warning, and its
# SYNOPSIS compiles.
npages=0
for page in "$man_dir"/man3/*.3; do
    name="$(basename "$page" .3)"
    if head -n1 "$page" | grep -q '^\.so '; then
        target="$man_dir/$(head -n1 "$page" | cut -d' ' -f2)"
        [ -f "$target" ] || fail "$name.3 redirects to a missing page ($target)"
        continue
    fi
    npages=$((npages + 1))
    warnings="$(cd "$man_dir" && groff -t -man -ww -z "man3/$name.3" 2>&1 || true)"
    [ -z "$warnings" ] || fail "$name.3: groff says: $warnings"

    # The SYNOPSIS as a program would write it: roff requests dropped (the
    # #include is written as .B #include), roff escapes undone.
    awk '/^\.SH SYNOPSIS/ { on = 1; next } /^\.SH/ { on = 0 } on' "$page" |
        sed -e 's/^\.B #include/#include/' -e '/^\./d' \
            -e 's/\\-/-/g' -e 's/\\&//g' -e 's/\\f[BIRP]//g' -e 's/\\e/\\/g' >"$tmp/synopsis"
    {
        echo "/* The SYNOPSIS of $name(3). */"
        grep '^#' "$tmp/synopsis" || true
        echo "void man_check_synopsis_(void);"
        echo "void man_check_synopsis_(void)"
        echo "{"
        grep -v '^#' "$tmp/synopsis" || true
        echo "}"
    } >"$tmp/$name.c"
    # shellcheck disable=SC2086  # cflags is a list of flags.
    if ! "$cc" -std=c11 -fsyntax-only -Wall -Wno-unused-local-typedefs -Wno-unused-variable -Werror \
        -DCTX_NO_SITE_MACROS -DCTX_NO_INLINE $cflags "$tmp/$name.c" 2>"$tmp/err"; then
        fail "the SYNOPSIS of $name(3) does not compile:"
        cat "$tmp/$name.c" "$tmp/err" >&2
    fi
done

[ "$errors" = 0 ] || { echo "man-check: $errors problem(s)" >&2; exit 1; }
echo "man-check: $nsym exported symbols of ${#libs[@]} libraries have pages; $npages pages read cleanly and their SYNOPSIS compiles."
