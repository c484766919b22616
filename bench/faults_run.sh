#!/bin/sh
# SPDX-License-Identifier: MIT

# Runs the fault benchmark (bench/faults.c) with its Go peer
# (bench/faults_go), for `make bench` (target bench-faults).  The Go peer is
# built offline against Debian's Go packages (golang-github-lib-pq-dev);
# when it does not build, the benchmark runs without it and its table says
# so.
#
#   faults_run.sh FAULTS_BENCH PGCLUSTER_SH FAULTPROXY OUT_MD GO_MAIN
set -u
bench="$1" pgcluster="$2" proxy="$3" out="$4" go_main="$5"
here="$(pwd)"
if ! env GOFLAGS=-mod=mod GO111MODULE=off GOPROXY=off \
    GOPATH="/usr/share/gocode:$here/gopath" GOCACHE="$here/gocache" \
    go build -o faults_go "$go_main"; then
    rm -f faults_go
    echo "bench faults: the Go peer did not build; running without it" >&2
fi
exec "$bench" --pgcluster "$pgcluster" --proxy "$proxy" --go ./faults_go --out "$out"
