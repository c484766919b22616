#!/usr/bin/env bash
# SPDX-License-Identifier: MIT

# Checks the ABI of every shared library a build made against the baselines
# committed under abi/, with abigail-tools (Debian: abigail-tools).
#
#   scripts/abi-check.sh [BUILD_DIR]             compare (default: build)
#   scripts/abi-check.sh --update [BUILD_DIR]    rewrite the baselines
#
# A compatible change passes: new functions, variables and types, and
# symbols in a new version node.  An incompatible one fails with abidiff's
# report: a removed or renamed symbol, a changed signature or a changed
# public type, a symbol moved to another version node.  docs/ABI.md says
# when the baselines may be rewritten (a release that adds symbols, or a new
# major version) and what the rules are.
#
# The build must carry debug information (RelWithDebInfo or Debug, as
# `make` and CI build): abidw reads the types from it.  The baselines are
# made with the compiler CI uses (the default cc), since another compiler
# may describe the same types differently.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"

update=0
if [ "${1:-}" = "--update" ]; then
    update=1
    shift
fi
build="${1:-build}"

for tool in abidw abidiff; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "abi-check: $tool is missing (Debian: apt-get install abigail-tools)" >&2
        exit 1
    fi
done

# The libraries: libctx and every companion library, found by their
# development links (libctx.so, libctx-pq.so, ...), which point at the
# current build's files (an older build may have left other versions).
mapfile -t libs < <(find "$build" -maxdepth 3 -name 'libctx*.so' | sort)
if [ "${#libs[@]}" -eq 0 ]; then
    echo "abi-check: no libctx*.so under $build: build the tree first" >&2
    exit 1
fi

# The public headers, so that abidw keeps only the types they declare.
headers=(--headers-dir "$root/include" --headers-dir "$build/include")
for inc in "$root"/integrations/*/include; do
    headers+=(--headers-dir "$inc")
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# abidw's description of one library, without the paths of this checkout.
describe() {
    abidw --no-corpus-path --no-comp-dir-path --no-show-locs --type-id-style hash \
          --drop-private-types "${headers[@]}" "$1" | sed "s|$root/||g"
}

failed=0
checked=0
for lib in "${libs[@]}"; do
    base="$(basename "$lib" .so)" # libctx, libctx-pq, ...
    name="$(basename "$(readlink -f "$lib")")"
    baseline="abi/$base.abi"
    describe "$(readlink -f "$lib")" > "$tmp/$base.abi"
    if [ "$update" = 1 ]; then
        cp "$tmp/$base.abi" "$baseline"
        echo "abi-check: wrote $baseline"
        continue
    fi
    if [ ! -f "$baseline" ]; then
        echo "abi-check: $name has no baseline $baseline (scripts/abi-check.sh --update)" >&2
        failed=1
        continue
    fi
    # Added symbols are compatible: --no-added-syms leaves them out, so any
    # change still reported is a removal or a change of what was there.
    set +e
    abidiff --no-added-syms "$baseline" "$tmp/$base.abi" > "$tmp/$base.diff" 2>&1
    rc=$?
    set -e
    checked=$((checked + 1))
    if [ "$rc" -ne 0 ]; then
        echo "abi-check: $name: incompatible with $baseline (abidiff exit $rc):" >&2
        cat "$tmp/$base.diff" >&2
        failed=1
    else
        echo "abi-check: $name: compatible with $baseline"
    fi
done

if [ "$update" = 0 ]; then
    # A baseline whose library was not built is a library that went away.
    for baseline in abi/*.abi; do
        [ -e "$baseline" ] || continue
        base="$(basename "$baseline" .abi)"
        if [ ! -f "$tmp/$base.abi" ]; then
            echo "abi-check: $baseline: the build made no $base.so" >&2
            failed=1
        fi
    done
    echo "abi-check: $checked libraries checked"
fi
exit "$failed"
