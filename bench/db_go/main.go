// SPDX-License-Identifier: MIT

// db_go: the Go side of the db benchmark.  Go's database/sql with the
// lib/pq driver (Debian: golang-github-lib-pq-dev) and the cgo SQLite driver
// mattn/go-sqlite3 (golang-github-mattn-go-sqlite3-dev, built on the system's
// libsqlite3), measured the way bench/db.c measures libctx, PostgreSQL
// against the same throw-away cluster.
//
//	db_go -conninfo '<libpq conninfo>' -mode select1 -n 5000
//	    prints the ns per db.QueryRowContext(ctx, "SELECT 1").Scan
//	db_go -conninfo '<libpq conninfo>' -mode cancel -n 200
//	    prints p50, p99 and max in ns from cancel() to ExecContext's return
//	    during SELECT pg_sleep(10), and how many rounds reported no error
//	db_go -mode sqlite-lookup -n 200000
//	    prints the ns per 1-row lookup through a prepared *sql.Stmt
//	db_go -mode sqlite-cancel -n 200
//	    as cancel, for an endless recursive query cancelled after 2 ms
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"

	_ "github.com/lib/pq"
	_ "github.com/mattn/go-sqlite3"
)

func main() {
	conninfo := flag.String("conninfo", "", "libpq-style conninfo")
	mode := flag.String("mode", "select1", "select1 or cancel")
	n := flag.Int("n", 1000, "operations or rounds")
	flag.Parse()

	var db *sql.DB
	var err error
	if strings.HasPrefix(*mode, "sqlite-") {
		// One in-memory database: every connection of the pool would
		// otherwise get its own.
		db, err = sql.Open("sqlite3", "file::memory:?cache=shared")
	} else {
		// lib/pq asks for TLS unless told otherwise; the cluster has none.
		db, err = sql.Open("postgres", *conninfo+" sslmode=disable")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer db.Close()
	// One connection, as the C side uses one.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	if err := db.Ping(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}

	switch *mode {
	case "select1":
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		var v int
		start := time.Now()
		for i := 0; i < *n; i++ {
			if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&v); err != nil || v != 1 {
				fmt.Fprintln(os.Stderr, "SELECT 1:", err)
				os.Exit(1)
			}
		}
		fmt.Println(float64(time.Since(start).Nanoseconds()) / float64(*n))
	case "cancel":
		lat := make([]float64, 0, *n)
		uncancelled := 0
		for i := 0; i < *n; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			at := make(chan time.Time, 1)
			go func() {
				time.Sleep(5 * time.Millisecond)
				at <- time.Now()
				cancel()
			}()
			_, err := db.ExecContext(ctx, "SELECT pg_sleep(10)")
			back := time.Now()
			if err == nil {
				// Seen now and then: lib/pq reports success for a
				// statement it cancelled.  Counted, not timed.
				uncancelled++
				<-at
				continue
			}
			lat = append(lat, float64(back.Sub(<-at).Nanoseconds()))
		}
		sort.Float64s(lat)
		p := func(q float64) float64 { return lat[int(q*float64(len(lat)-1)+0.5)] }
		fmt.Println(p(0.5), p(0.99), p(1), uncancelled)
	case "sqlite-lookup":
		// The same table and lookups as bench/db.c's 1-row lookup.
		mustExec(db, `CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER);
			INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n
			WHERE i < 1000) SELECT i, i * 7 FROM n`)
		stmt, err := db.Prepare("SELECT v FROM t WHERE id = ?")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		var v int
		start := time.Now()
		for i := 0; i < *n; i++ {
			if err := stmt.QueryRowContext(ctx, 1+(i*7919)%1000).Scan(&v); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		fmt.Println(float64(time.Since(start).Nanoseconds()) / float64(*n))
	case "sqlite-cancel":
		lat := make([]float64, 0, *n)
		uncancelled := 0
		for i := 0; i < *n; i++ {
			ctx, cancel := context.WithCancel(context.Background())
			at := make(chan time.Time, 1)
			go func() {
				time.Sleep(2 * time.Millisecond)
				at <- time.Now()
				cancel()
			}()
			var count int64
			err := db.QueryRowContext(ctx, `WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL
				SELECT i + 1 FROM n WHERE i < 1000000000000) SELECT count(*) FROM n`).Scan(&count)
			back := time.Now()
			if err == nil {
				uncancelled++
				<-at
				continue
			}
			lat = append(lat, float64(back.Sub(<-at).Nanoseconds()))
		}
		sort.Float64s(lat)
		p := func(q float64) float64 { return lat[int(q*float64(len(lat)-1)+0.5)] }
		fmt.Println(p(0.5), p(0.99), p(1), uncancelled)
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
}

func mustExec(db *sql.DB, query string) {
	if _, err := db.Exec(query); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
