#!/usr/bin/env bash
# SPDX-License-Identifier: MIT

# A budget, a hang-up, request IDs and a shutdown, played against two real reportd processes: `make demo`.
#
#   examples/reportd/demo.sh path/to/reportd
#
# Starts a downstream reportd and a front one whose /report calls the
# downstream's /task (SQLite, loopback ports the kernel picks), then drives
# them with curl and shows, for each scenario, what the client saw and the
# log lines both services wrote.  Every process it starts is stopped on any
# exit, Ctrl-C included.
set -euo pipefail

reportd="${1:?usage: demo.sh path/to/reportd}"
command -v curl >/dev/null || { echo "demo: needs the curl command (Debian: curl)" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/reportd-demo.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

# start NAME ARGS...: starts a reportd, waits for "listening on", sets $port.
start() {
    local name="$1"; shift
    "$reportd" --listen 127.0.0.1:0 "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    pids+=("$!")
    for _ in $(seq 100); do
        if grep -q '^listening on' "$tmp/$name.out"; then
            port="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/$name.out")"
            say "$name: reportd $* (pid $!) listening on 127.0.0.1:$port"
            return
        fi
        kill -0 "$!" 2>/dev/null || { cat "$tmp/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "demo: $name did not start" >&2; exit 1
}

# log NAME ID: waits (up to 5 s) for NAME's log line of request ID and shows it.
log() {
    for _ in $(seq 50); do
        if grep -q "request_id=$2 " "$tmp/$1.log"; then
            grep "request_id=$2 " "$tmp/$1.log" | sed "s/^/   $1 log: /"
            return
        fi
        sleep 0.1
    done
    say "$1 log: (no line for $2)"
}

# get ID URL [curl options]: one request, with its status, time and body.
get() {
    local id="$1" url="$2"; shift 2
    printf '   $ curl -H "X-Request-Id: %s" %s %s\n' "$id" "$*" "'$url'"
    curl -s -o "$tmp/body" -w '%{http_code} %{time_total}\n' -H "X-Request-Id: $id" "$@" "$url" \
        >"$tmp/status" || true
    read -r code secs <"$tmp/status"
    if [ "$code" = 000 ]; then
        say "  -> the client gave up after ${secs}s (no answer)"
    else
        say "  -> HTTP $code after ${secs}s: $(cat "$tmp/body")"
    fi
}

bold "Two services: a downstream one, and a front one that calls it"
start downstream
down="$port"
start front --upstream "http://127.0.0.1:$down" --budget-ms 500
front="$port"
F="http://127.0.0.1:$front"
say "The page: $F/ (open it in a browser to watch the requests below as a context tree)"

bold "1. A request that fits its 500 ms budget"
say "Three parts run at once: 50 ms of computing, a 50 ms query, a 50 ms call downstream."
get demo-ok "$F/report?compute_ms=50&db_ms=50&upstream_ms=50"
log front demo-ok
log downstream demo-ok

bold "2. The downstream hangs: the budget caps the cost at 500 ms"
say "The downstream would take 5 s.  The front answers 504 at its budget, and the"
say "downstream's own request context ends too (the front's call carried"
say "grpc-timeout and closed its connection), so no work is left behind."
get demo-hang "$F/report?compute_ms=10&db_ms=10&upstream_ms=5000"
log front demo-hang
log downstream demo-hang

bold "3. The user closes the page after 200 ms"
say "Every part would take 3 s.  The client gives up after 200 ms; the front sees"
say "the connection close and stops the computation, the query and the call at once."
get demo-gone "$F/report?compute_ms=3000&db_ms=3000&upstream_ms=3000" --max-time 0.2
log front demo-gone
log downstream demo-gone

bold "4. One request ID (and one trace) in both services' logs"
say "The front sends it downstream in X-Request-Id and in baggage; the trace id"
say "travels in traceparent."
grep -h 'request_id=demo-ok ' "$tmp/front.log" "$tmp/downstream.log" | sed 's/^/   /'
t1="$(grep 'request_id=demo-ok ' "$tmp/front.log" | sed 's/.*trace_id=\([^ ]*\).*/\1/')"
t2="$(grep 'request_id=demo-ok ' "$tmp/downstream.log" | sed 's/.*trace_id=\([^ ]*\).*/\1/')"
[ -n "$t1" ] && [ "$t1" = "$t2" ] && say "same trace id in both: $t1"

bold "5. Nothing left running: the gauges are back to zero"
printf "   \$ curl -s '%s/metrics' | grep -E '_in_flight|_cancelled|live_contexts'\n" "$F"
curl -s "$F/metrics" | grep -E '^reportd_.*(_in_flight|_cancelled_total|live_contexts)' | sed 's/^/     /'

bold "6. Graceful shutdown: a request in flight still gets its answer"
say "A 300 ms request is running when the front gets SIGTERM: it stops accepting,"
say "lets the request finish, then exits 0."
printf '   $ curl -H "X-Request-Id: demo-drain" %s &\n' "'$F/report?compute_ms=20&db_ms=20&upstream_ms=300'"
get demo-drain "$F/report?compute_ms=20&db_ms=20&upstream_ms=300" >"$tmp/drain.txt" &
drain_pid=$!
for _ in $(seq 50); do
    curl -s "$F/metrics" | grep -q '^reportd_requests_in_flight 1' && break
    sleep 0.05
done
front_pid="${pids[1]}"
say "\$ kill -TERM $front_pid"
kill -TERM "$front_pid"
wait "$drain_pid" || true
tail -n +2 "$tmp/drain.txt"
status=0
wait "$front_pid" || status=$?
log front demo-drain
grep -E '^reportd: ' "$tmp/front.log" | sed 's/^/   front log: /'
say "front exited with status $status"
[ "$status" = 0 ]

bold "Done.  Both services' full logs:"
sed 's/^/   front: /' "$tmp/front.log"
sed 's/^/   downstream: /' "$tmp/downstream.log"
