// SPDX-License-Identifier: MIT

// faults_go: the Go side of the fault benchmark (bench/faults.c).  Go's
// database/sql with the lib/pq driver (Debian: golang-github-lib-pq-dev),
// talking to PostgreSQL through the same fault proxy as libctx-pq, one
// round at a time as bench/faults.c directs on stdin:
//
//	round SQL    opens a connection (pinned with db.Conn), prints "pid N"
//	go MS        runs ExecContext(SQL) under a deadline MS ms from now and,
//	             when it returns, prints "done LATE_NS ERR", LATE_NS being
//	             the time from the deadline to the return
//	check        runs SELECT 42 on the same connection (5 s deadline) and
//	             prints "kept" or "lost ERR", then closes the connection
//
//	faults_go -conninfo '<libpq conninfo>'
package main

import (
	"bufio"
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	_ "github.com/lib/pq"
)

func main() {
	conninfo := flag.String("conninfo", "", "libpq-style conninfo")
	flag.Parse()
	// lib/pq asks for TLS unless told otherwise; the cluster has none.
	db, err := sql.Open("postgres", *conninfo+" sslmode=disable")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := bufio.NewWriter(os.Stdout)
	say := func(format string, args ...interface{}) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	in := bufio.NewScanner(os.Stdin)
	var conn *sql.Conn
	var query string
	for in.Scan() {
		line := in.Text()
		switch {
		case strings.HasPrefix(line, "round "):
			query = strings.TrimPrefix(line, "round ")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, err = db.Conn(ctx)
			var pid int
			if err == nil {
				err = conn.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid)
			}
			cancel()
			if err != nil {
				say("error %v", err)
				continue
			}
			say("pid %d", pid)
		case strings.HasPrefix(line, "go "):
			ms, _ := strconv.Atoi(strings.TrimPrefix(line, "go "))
			deadline := time.Now().Add(time.Duration(ms) * time.Millisecond)
			ctx, cancel := context.WithDeadline(context.Background(), deadline)
			_, err := conn.ExecContext(ctx, query)
			late := time.Since(deadline)
			cancel()
			msg := "ok"
			if err != nil {
				msg = strings.ReplaceAll(err.Error(), "\n", " ")
			}
			say("done %d %s", late.Nanoseconds(), msg)
		case line == "check":
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var v int
			err := conn.QueryRowContext(ctx, "SELECT 42").Scan(&v)
			cancel()
			if err == nil && v == 42 {
				say("kept")
			} else {
				say("lost %v", err)
			}
			conn.Close()
		}
	}
	db.Close()
}
