#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Gives every tracked source file, header and script the line
#
#     SPDX-License-Identifier: MIT
#
# in the file's own comment syntax, so that a tool (or a person holding one
# file out of context) can tell the licence without the LICENSE file.
#
#   scripts/spdx.sh           add the line to every file that lacks it
#   scripts/spdx.sh --check   list the files that lack it; exit 1 if any do
#
# The files: what git tracks among *.c *.h *.cc *.go *.py *.sh *.cmake,
# CMakeLists.txt, Makefile, and any other tracked file that starts with a
# shebang (.ci/run).  The line goes first, or right after the shebang (and
# after a Python coding line, which must stay on line 1 or 2).  A blank line
# follows it, so that it never joins a comment that documents what comes
# next (a Go package comment, say).  A file counts as having the line when
# one of its first five lines carries the identifier.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

check=0
case "${1:-}" in
"") ;;
--check) check=1 ;;
*)
    echo "usage: scripts/spdx.sh [--check]" >&2
    exit 2
    ;;
esac

ID='SPDX-License-Identifier: MIT'

# The comment that carries the line in a file of this name.
comment_for() {
    case "$1" in
    *.c | *.h) printf '/* %s */' "$ID" ;;
    *.cc | *.go) printf '// %s' "$ID" ;;
    *) printf '# %s' "$ID" ;;
    esac
}

# Prints the tracked files the rule covers, one a line.
list_files() {
    git ls-files -z | while IFS= read -r -d '' f; do
        [ -f "$f" ] || continue
        case "$f" in
        *.c | *.h | *.cc | *.go | *.py | *.sh | *.cmake | CMakeLists.txt | */CMakeLists.txt | \
            Makefile | */Makefile)
            printf '%s\n' "$f"
            ;;
        *)
            # Other scripts are known by their shebang.
            if [ "$(head -c 2 "$f" | tr -d '\0')" = '#!' ]; then
                printf '%s\n' "$f"
            fi
            ;;
        esac
    done
}

has_id() {
    head -n 5 "$1" | grep -q 'SPDX-License-Identifier:'
}

# Inserts the comment after the lines that must stay first.
add_id() {
    local f="$1" line skip=0 tmp
    line="$(comment_for "$f")"
    if [ "$(head -c 2 "$f" | tr -d '\0')" = '#!' ]; then
        skip=1
        case "$f" in
        *.py) if sed -n 2p "$f" | grep -Eq '^#.*coding[:=]'; then skip=2; fi ;;
        esac
    fi
    tmp="$(mktemp "$f.spdx.XXXXXX")"
    {
        head -n "$skip" "$f"
        printf '%s\n' "$line"
        # A blank line after the identifier, unless the file already has one
        # there (or ends there).
        if [ -n "$(sed -n "$((skip + 1))p" "$f")" ]; then
            printf '\n'
        fi
        tail -n "+$((skip + 1))" "$f"
    } >"$tmp"
    # Keep the file's mode (scripts stay executable).
    chmod --reference="$f" "$tmp"
    mv "$tmp" "$f"
}

missing=0
while IFS= read -r f; do
    has_id "$f" && continue
    if [ "$check" = 1 ]; then
        echo "$f: no SPDX-License-Identifier line (scripts/spdx.sh adds it)"
        missing=$((missing + 1))
    else
        add_id "$f"
        echo "added: $f"
    fi
done < <(list_files)

if [ "$check" = 1 ] && [ "$missing" -gt 0 ]; then
    echo "spdx: $missing file(s) lack the licence line" >&2
    exit 1
fi
[ "$check" = 1 ] && echo 'spdx: every source file, header and script names its licence.'
exit 0
