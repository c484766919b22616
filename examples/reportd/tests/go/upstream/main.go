// SPDX-License-Identifier: MIT

// An upstream written in Go: net/http's r.Context() must see the cancel of
// the reportd that calls it (its connection closing, or the grpc-timeout it
// sends, which this server turns into a deadline as grpc-go would).
//
// Prints "listening on 127.0.0.1:PORT", then one line per request:
// "task request_id=ID ms=N err=context canceled after_ms=T" (or err=none).
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// grpc-timeout: 1 to 8 digits and a unit.
func grpcTimeout(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	u, ok := units[v[len(v)-1]]
	return time.Duration(n) * u, ok
}

func task(w http.ResponseWriter, r *http.Request) {
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	id := r.Header.Get("X-Request-Id")
	ctx := r.Context()
	if d, ok := grpcTimeout(r.Header.Get("grpc-timeout")); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	start := time.Now()
	select {
	case <-time.After(time.Duration(ms) * time.Millisecond):
		fmt.Printf("task request_id=%s ms=%d err=none after_ms=%d traceparent=%s\n", id, ms,
			time.Since(start).Milliseconds(), r.Header.Get("traceparent"))
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"request_id\":%q,\"ms\":%d}\n", id, ms)
	case <-ctx.Done():
		fmt.Printf("task request_id=%s ms=%d err=%v after_ms=%d\n", id, ms, ctx.Err(),
			time.Since(start).Milliseconds())
		// As grpc-go would: the caller's deadline passed (if the caller
		// is still there to read it).
		http.Error(w, ctx.Err().Error(), http.StatusGatewayTimeout)
	}
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	http.HandleFunc("/task", task)
	_ = http.Serve(ln, nil)
}
