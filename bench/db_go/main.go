// db_go: the Go side of the db benchmark.  Go's database/sql with the
// lib/pq driver (Debian: golang-github-lib-pq-dev), measured the way
// bench/db.c measures libctx-pq, against the same throw-away cluster.
//
//	db_go -conninfo '<libpq conninfo>' -mode select1 -n 5000
//	    prints the ns per db.QueryRowContext(ctx, "SELECT 1").Scan
//	db_go -conninfo '<libpq conninfo>' -mode cancel -n 200
//	    prints p50, p99 and max in ns from cancel() to ExecContext's return
//	    during SELECT pg_sleep(10), and how many rounds reported no error
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	_ "github.com/lib/pq"
)

func main() {
	conninfo := flag.String("conninfo", "", "libpq-style conninfo")
	mode := flag.String("mode", "select1", "select1 or cancel")
	n := flag.Int("n", 1000, "operations or rounds")
	flag.Parse()

	// lib/pq asks for TLS unless told otherwise; the cluster has none.
	db, err := sql.Open("postgres", *conninfo+" sslmode=disable")
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
	default:
		fmt.Fprintln(os.Stderr, "unknown mode", *mode)
		os.Exit(2)
	}
}
