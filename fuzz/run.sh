#!/usr/bin/env bash
# SPDX-License-Identifier: MIT

# Builds the libFuzzer target with clang (ASan + UBSan + libFuzzer) and runs
# it for a bounded time on a scratch copy of fuzz/corpus.
#
#   fuzz/run.sh [SECONDS]            default 60
#
# Then each header-format harness of propagation (fuzz_grpc_timeout,
# fuzz_traceparent, fuzz_baggage, fuzz_extract) runs for WIRE_SECONDS
# (default 20) on a scratch copy of its fuzz/corpus_<name>; to grow that
# corpus, merge into an empty NEW directory and copy NEW's files over:
#   $BUILD_DIR/fuzz/fuzz_<name> -set_cover_merge=1 -use_counters=0 NEW \
#       fuzz/corpus_<name> $BUILD_DIR/fuzz-corpus-<name>
#
# Environment: BUILD_DIR (default build-fuzz), JOBS, FUZZ_ARGS (extra
# libFuzzer flags, e.g. "-jobs=4 -workers=4" or "-seed=1").
# Exits non-zero when the fuzzer finds a crash, a leak, a sanitizer report,
# a failed model check or a hang (> 10 s on one input); the input is then in
# $BUILD_DIR/artifacts/.  Replay it with:
#   $BUILD_DIR/fuzz/fuzz_ops $BUILD_DIR/artifacts/crash-...
#   CTX_FUZZ_TRACE=1 $BUILD_DIR/fuzz/fuzz_replay $BUILD_DIR/artifacts/crash-...
# To grow the checked-in corpus after a long run (keep it under 200 files):
#   $BUILD_DIR/fuzz/fuzz_ops -set_cover_merge=1 -use_counters=0 NEW fuzz/corpus $BUILD_DIR/fuzz-corpus
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_TO_RUN="${1:-60}"
BUILD_DIR="${BUILD_DIR:-build-fuzz}"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
CC_FUZZ="${CC_FUZZ:-$(command -v clang || true)}"

if [ -z "$CC_FUZZ" ]; then
    echo "fuzz/run.sh: clang is needed for libFuzzer" >&2
    exit 1
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_C_COMPILER="$CC_FUZZ" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCTX_FUZZ=ON -DCTX_BUILD_EXAMPLES=OFF -DCTX_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target fuzz_ops fuzz_replay \
    fuzz_grpc_timeout fuzz_traceparent fuzz_baggage fuzz_extract

# The fuzzer adds what it finds to its first corpus directory: use a scratch
# copy so that the checked-in corpus changes only on purpose.
work="$BUILD_DIR/fuzz-corpus"
mkdir -p "$work" "$BUILD_DIR/artifacts"
cp -n fuzz/corpus/* "$work/" 2>/dev/null || true

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# shellcheck disable=SC2086  # FUZZ_ARGS is meant to be split.
# -max_len=1024 (a few hundred operations per input) keeps the fuzzer near a
# thousand executions per second; FUZZ_ARGS can raise it (the last flag wins).
"$BUILD_DIR/fuzz/fuzz_ops" -max_total_time="$SECONDS_TO_RUN" -timeout=10 -rss_limit_mb=4096 \
    -max_len=1024 -print_final_stats=1 -artifact_prefix="$BUILD_DIR/artifacts/" ${FUZZ_ARGS:-} \
    "$work" fuzz/corpus
echo "fuzz/run.sh: no failure in ${SECONDS_TO_RUN} s; corpus $(find "$work" -type f | wc -l) inputs in $work"

# The header formats of propagation, each on its own corpus.
WIRE_SECONDS="${WIRE_SECONDS:-20}"
for name in grpc_timeout traceparent baggage extract; do
    wwork="$BUILD_DIR/fuzz-corpus-$name"
    mkdir -p "$wwork"
    cp -n "fuzz/corpus_$name"/* "$wwork/" 2>/dev/null || true
    # shellcheck disable=SC2086
    "$BUILD_DIR/fuzz/fuzz_$name" -max_total_time="$WIRE_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -max_len=9000 -print_final_stats=1 -artifact_prefix="$BUILD_DIR/artifacts/$name-" \
        ${FUZZ_ARGS:-} "$wwork" "fuzz/corpus_$name"
    echo "fuzz/run.sh: fuzz_$name: no failure in ${WIRE_SECONDS} s"
done
