#!/bin/sh
# SPDX-License-Identifier: MIT

# Runs the db benchmark (bench/db.c) with its Go peer (bench/db_go), for
# `make bench` (target bench-db).  The Go peer is built offline against
# Debian's Go packages; when it does not build (it needs golang-github-lib-pq-dev
# and golang-github-mattn-go-sqlite3-dev),
# the benchmark runs without it and its table says so.
#
#   db_run.sh DB_BENCH PGCLUSTER_SH OUT_MD GO_MAIN
set -u
db_bench="$1" pgcluster="$2" out="$3" go_main="$4"
here="$(pwd)"
if ! env GOFLAGS=-mod=mod GO111MODULE=off GOPROXY=off \
    GOPATH="/usr/share/gocode:$here/gopath" GOCACHE="$here/gocache" \
    go build -o db_go "$go_main"; then
    rm -f db_go
    echo "bench db: the Go peer did not build; running without it" >&2
fi
exec "$db_bench" --pgcluster "$pgcluster" --go ./db_go --out "$out"
