#!/usr/bin/env bash
# SPDX-License-Identifier: MIT

# A throw-away PostgreSQL cluster for tests and benchmarks.
#
#   pgcluster.sh start DIR   initdb into a fresh temporary directory, start a
#                            server on a free loopback port with a Unix socket
#                            directory of its own, and write into DIR:
#                              DIR/conninfo      over the Unix socket
#                              DIR/conninfo_tcp  over TCP on 127.0.0.1
#                              DIR/cluster       where the cluster lives
#   pgcluster.sh stop DIR    stop that server (immediate shutdown) and delete
#                            the cluster and DIR's files; succeeds when there
#                            is nothing to stop
#
# It never touches a cluster it did not create (Debian's default one on 5432
# included).  PostgreSQL refuses to run as root, so when run as root it runs
# initdb and the server as the `postgres` system user (runuser) and gives that
# user the temporary directory.  Without PostgreSQL's server binaries
# (/usr/lib/postgresql/*/bin/initdb, or PG_BINDIR) `start` exits 77 with a
# message, which CTest reports as skipped; with CTX_REQUIRE_INTEGRATIONS=ON in
# the environment (CI) it exits 1 instead, so CI cannot skip the tests.
set -euo pipefail

usage() {
    echo "usage: $0 start|stop DIR" >&2
    exit 2
}
[ $# -eq 2 ] || usage
cmd="$1"
state="$2"

find_bindir() {
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ]; then
        echo "$PG_BINDIR"
        return
    fi
    local d
    # The newest installed major version wins.
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
        if [ -x "$d/initdb" ]; then
            echo "$d"
            return
        fi
    done
}

# Runs a command as the user that owns the cluster.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A loopback TCP port nobody listens on now.  The server's own bind decides;
# start retries with another port if it loses a race.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    echo "pgcluster: no free port found" >&2
    exit 1
}

stop() {
    [ -f "$state/cluster" ] || return 0
    local dir bindir
    dir="$(cat "$state/cluster")"
    bindir="$(cat "$state/bindir" 2>/dev/null || true)"
    if [ -n "$bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    fi
    # Should pg_ctl have failed, the postmaster's pid file still names it.
    if [ -f "$dir/data/postmaster.pid" ]; then
        local pid
        pid="$(head -n1 "$dir/data/postmaster.pid")"
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -QUIT "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    case "$dir" in
    */ctx-pg.*) rm -rf "$dir" ;;
    esac
    rm -f "$state/cluster" "$state/bindir" "$state/conninfo" "$state/conninfo_tcp"
}

start() {
    local bindir
    bindir="$(find_bindir)"
    if [ -z "$bindir" ]; then
        echo "pgcluster: PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb);" \
            "install Debian's postgresql package (scripts/deps.sh) to run the PostgreSQL tests" >&2
        # CI (CTX_REQUIRE_INTEGRATIONS=ON) must run them: a failure, not a skip.
        [ "${CTX_REQUIRE_INTEGRATIONS:-OFF}" = ON ] && exit 1
        exit 77
    fi
    mkdir -p "$state"
    stop
    # A short path: the Unix socket's path must fit in 107 bytes.
    local dir
    dir="$(mktemp -d /tmp/ctx-pg.XXXXXX)"
    echo "$dir" >"$state/cluster"
    echo "$bindir" >"$state/bindir"
    mkdir -p "$dir/sock"
    if [ "$(id -u)" = 0 ]; then
        chown -R postgres: "$dir"
    fi
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C \
        --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        stop
        exit 1
    }
    local port
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/sock -c fsync=off \
                -c synchronous_commit=off -c full_page_writes=off -c max_connections=60 \
                -c shared_buffers=16MB" start >/dev/null; then
            echo "host=$dir/sock port=$port user=postgres dbname=postgres" >"$state/conninfo"
            echo "host=127.0.0.1 port=$port user=postgres dbname=postgres" >"$state/conninfo_tcp"
            echo "pgcluster: PostgreSQL $("$bindir/postgres" -V | awk '{print $3}')" \
                "on 127.0.0.1:$port and $dir/sock (attempt $attempt)"
            return 0
        fi
        tail -n 5 "$dir/server.log" >&2 || true
    done
    echo "pgcluster: the server did not start" >&2
    stop
    exit 1
}

case "$cmd" in
start) start ;;
stop) stop ;;
*) usage ;;
esac
