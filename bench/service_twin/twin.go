// SPDX-License-Identifier: MIT

// The Go twin of reportd for the benchmark (bench/service_twin.py): the
// same endpoints and the same work written with Go's own idioms, so that
// the two are compared on equal terms.
//
// GET /report?compute_ms=A&db_ms=B&upstream_ms=C runs three goroutines in
// an errgroup under the request's context with the budget as its deadline:
// a computation that spins for A ms checking ctx.Err() as it goes; the same
// recursive SQLite query as reportd's, sized to B ms by a registered clock
// function, through database/sql and mattn/go-sqlite3 on one pooled
// *sql.DB; and GET <upstream>/task?ms=C through one shared http.Client.
// 200 with the measured ms, 504 when the budget ends first, nothing for a
// client that has gone.  GET /task?ms=N waits N ms under its context.  One
// log line per request on stderr, as reportd writes.
//
//	twin -listen 127.0.0.1:0 [-upstream URL] [-budget-ms 500] [-db PATH]
//
// It prints "listening on HOST:PORT" once ready.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mattn/go-sqlite3"
	"golang.org/x/sync/errgroup"
)

var (
	upstream string
	budget   time.Duration
	db       *sql.DB
	client   = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	epoch    = time.Now()
)

const countSQL = `WITH RECURSIVE c(x) AS (SELECT min(id) FROM items UNION ALL SELECT x + 1 FROM c
WHERE reportd_now() < ?) SELECT count(*) FROM c`

// now is the monotonic clock in ns, for the query's reportd_now().
func now() int64 { return int64(time.Since(epoch)) }

var sink uint64

func compute(ctx context.Context, ms int64) error {
	end := time.Now().Add(time.Duration(ms) * time.Millisecond)
	x := uint64(now())
	for i := uint64(0); ; i++ {
		if i&255 == 0 {
			if !time.Now().Before(end) {
				break
			}
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		x += i
		for j := 0; j < 64; j++ {
			x ^= x >> 33
			x *= 0xff51afd7ed558ccd
			x ^= x >> 29
		}
	}
	sink = x
	return nil
}

func query(ctx context.Context, ms int64) error {
	var n int64
	return db.QueryRowContext(ctx, countSQL, now()+ms*int64(time.Millisecond)).Scan(&n)
}

func call(ctx context.Context, id string, ms int64) error {
	req, err := http.NewRequestWithContext(ctx, "GET", upstream+"/task?ms="+strconv.FormatInt(ms, 10), nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Request-Id", id)
	if d, ok := ctx.Deadline(); ok {
		req.Header.Set("grpc-timeout", strconv.FormatInt(time.Until(d).Milliseconds(), 10)+"m")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode == http.StatusGatewayTimeout {
		return context.DeadlineExceeded
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("upstream: %s", resp.Status)
	}
	return nil
}

func param(r *http.Request, name string) (int64, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil && n >= 0 && n <= 60000
}

func requestID(r *http.Request) string {
	if id := r.Header.Get("X-Request-Id"); id != "" && len(id) <= 128 {
		return id
	}
	return strconv.FormatInt(time.Now().UnixNano(), 16)
}

func logLine(id, path string, status int, start time.Time, outcome string) {
	fmt.Fprintf(os.Stderr, "request_id=%s path=%s status=%d ms=%d outcome=%s\n",
		id, path, status, time.Since(start).Milliseconds(), outcome)
}

// fail answers a request whose context or a part ended it.
func fail(w http.ResponseWriter, r *http.Request, ctx context.Context, id, path string, start time.Time, err error) {
	switch {
	case r.Context().Err() != nil:
		logLine(id, path, 499, start, "client_gone")
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
		w.WriteHeader(http.StatusGatewayTimeout)
		fmt.Fprintf(w, "{\"request_id\":%q,\"error\":\"deadline\"}\n", id)
		logLine(id, path, 504, start, "deadline")
	default:
		w.WriteHeader(http.StatusBadGateway)
		fmt.Fprintf(w, "{\"request_id\":%q,\"error\":%q}\n", id, err.Error())
		logLine(id, path, 502, start, "error")
	}
}

func report(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	w.Header().Set("X-Request-Id", id)
	a, ok1 := param(r, "compute_ms")
	b, ok2 := param(r, "db_ms")
	c, ok3 := param(r, "upstream_ms")
	if !ok1 || !ok2 || !ok3 {
		http.Error(w, "bad parameter", http.StatusBadRequest)
		logLine(id, "/report", 400, start, "bad_request")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), budget)
	defer cancel()
	var took [3]int64
	timed := func(i int, f func() error) func() error {
		return func() error {
			t := time.Now()
			err := f()
			took[i] = time.Since(t).Milliseconds()
			return err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(timed(0, func() error { return compute(gctx, a) }))
	g.Go(timed(1, func() error { return query(gctx, b) }))
	if upstream != "" {
		g.Go(timed(2, func() error { return call(gctx, id, c) }))
	}
	if err := g.Wait(); err != nil {
		fail(w, r, ctx, id, "/report", start, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"request_id\":%q,\"compute_ms\":%d,\"db_ms\":%d,\"upstream_ms\":%d}\n",
		id, took[0], took[1], took[2])
	logLine(id, "/report", 200, start, "ok")
}

func task(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := requestID(r)
	w.Header().Set("X-Request-Id", id)
	ms, ok := param(r, "ms")
	if !ok {
		http.Error(w, "bad parameter", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), budget)
	defer cancel()
	if t := r.Header.Get("grpc-timeout"); strings.HasSuffix(t, "m") {
		if n, err := strconv.ParseInt(strings.TrimSuffix(t, "m"), 10, 64); err == nil {
			var c2 context.CancelFunc
			ctx, c2 = context.WithTimeout(ctx, time.Duration(n)*time.Millisecond)
			defer c2()
		}
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		fail(w, r, ctx, id, "/task", start, ctx.Err())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, "{\"request_id\":%q,\"ms\":%d}\n", id, ms)
	logLine(id, "/task", 200, start, "ok")
}

func openDB(path string) {
	sql.Register("sqlite3_twin", &sqlite3.SQLiteDriver{
		ConnectHook: func(c *sqlite3.SQLiteConn) error {
			return c.RegisterFunc("reportd_now", now, false)
		},
	})
	var err error
	if db, err = sql.Open("sqlite3_twin", "file:"+path); err == nil {
		_, err = db.Exec(`CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, v TEXT);
INSERT INTO items(v) SELECT 'item' WHERE NOT EXISTS (SELECT 1 FROM items)`)
	}
	if err == nil {
		err = query(context.Background(), 0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "twin:", err)
		os.Exit(1)
	}
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "HOST:PORT")
	flag.StringVar(&upstream, "upstream", "", "base URL of the /task service")
	budgetMS := flag.Int("budget-ms", 500, "each request's budget")
	dbPath := flag.String("db", "", "SQLite file (default: a new one in TMPDIR)")
	flag.Parse()
	budget = time.Duration(*budgetMS) * time.Millisecond
	upstream = strings.TrimRight(upstream, "/")
	path := *dbPath
	if path == "" {
		path = fmt.Sprintf("%s/twin-%d.db", os.TempDir(), os.Getpid())
		defer os.Remove(path)
	}
	openDB(path)

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "twin:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/report", report)
	mux.HandleFunc("/task", task)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 15 * time.Second}
	fmt.Printf("listening on %s\n", ln.Addr())
	os.Stdout.Sync()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go srv.Serve(ln)
	<-stop
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
	db.Close()
}
