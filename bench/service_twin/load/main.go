// SPDX-License-Identifier: MIT

// Load for bench/service_twin.py that wrk cannot make.  Go standard library
// only.
//
// Open loop (-mode open): GET -url at -rate requests/s for -d, each request
// sent on schedule whether or not earlier ones have answered (the way users
// arrive), over at most -conns connections.  Prints key=value pairs: sent,
// ok (200s) per second, the 504 share, other failures, p50/p99 of the
// successful requests, and the latest answer past -budget.
//
// Slow clients (-mode trickle): opens -n connections that each send a
// request's headers one byte a second, and meanwhile sends GET -url at
// -rate requests/s on fresh connections; prints the latency of those (p50,
// p99, max) and how many trickling connections the server closed.  With
// -rate 0 it only trickles; the benchmark measures the normal clients from
// another process, so that 10,000 goroutines do not slow their own clock.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	return v[int(p*float64(len(v)-1))]
}

type tally struct {
	mu                          sync.Mutex
	okLat                       []float64
	ok, deadline, other, failed int64
	late                        float64 // the longest time past the budget, ms
}

func (t *tally) add(status int, ms float64, budget float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch status {
	case 200:
		t.ok++
		t.okLat = append(t.okLat, ms)
	case 504:
		t.deadline++
	case 0:
		t.failed++
	default:
		t.other++
	}
	if status != 0 && ms-budget > t.late {
		t.late = ms - budget
	}
}

// paced calls f at rate per second for d, each call in its own goroutine.
func paced(rate float64, d time.Duration, f func()) {
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= d {
			break
		}
		time.Sleep(time.Until(at))
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
}

func get(c *http.Client, url string) (int, float64) {
	t := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, float64(time.Since(t).Microseconds()) / 1000
}

func main() {
	mode := flag.String("mode", "open", "open or trickle")
	url := flag.String("url", "", "URL to GET")
	rate := flag.Float64("rate", 100, "requests per second")
	dur := flag.Duration("d", 10*time.Second, "duration")
	conns := flag.Int("conns", 2000, "open loop: at most this many connections")
	budget := flag.Float64("budget", 500, "the server's budget, ms")
	n := flag.Int("n", 1000, "trickle: slow connections")
	flag.Parse()

	switch *mode {
	case "open":
		tr := &http.Transport{MaxConnsPerHost: *conns, MaxIdleConnsPerHost: *conns}
		c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		var t tally
		var sent int64
		paced(*rate, *dur, func() {
			atomic.AddInt64(&sent, 1)
			s, ms := get(c, *url)
			t.add(s, ms, *budget)
		})
		secs := dur.Seconds()
		fmt.Printf("offered=%.0f sent=%d goodput=%.0f ok=%d deadline_share=%.4f other=%d failed=%d p50_ok_ms=%.1f p99_ok_ms=%.1f late_ms=%.1f\n",
			*rate, sent, float64(t.ok)/secs, t.ok, float64(t.deadline)/float64(sent), t.other, t.failed,
			pct(t.okLat, 0.5), pct(t.okLat, 0.99), t.late)
	case "trickle":
		host := strings.TrimPrefix(*url, "http://")
		host = host[:strings.Index(host, "/")]
		var closed, opened, refused int64
		var wg sync.WaitGroup
		stop := time.Now().Add(*dur)
		req := "GET /report HTTP/1.1\r\nHost: x\r\nX-Padding: " + strings.Repeat("a", 200) + "\r\n\r\n"
		for i := 0; i < *n; i++ {
			conn, err := net.Dial("tcp", host)
			if err != nil {
				refused++
				continue
			}
			opened++
			wg.Add(1)
			go func(conn net.Conn) {
				defer wg.Done()
				defer conn.Close()
				for j := 0; time.Now().Before(stop); j++ {
					if _, err := conn.Write([]byte{req[j%len(req)]}); err != nil {
						atomic.AddInt64(&closed, 1)
						return
					}
					time.Sleep(time.Second)
				}
			}(conn)
		}
		// Normal clients: a fresh connection per request, as a browser
		// arriving would.
		c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
		var t tally
		left := time.Until(stop)
		if left > 0 && *rate > 0 {
			paced(*rate, left, func() {
				s, ms := get(c, *url)
				t.add(s, ms, *budget)
			})
		}
		wg.Wait()
		fmt.Printf("slow=%d opened=%d refused=%d closed_by_server=%d normal_ok=%d normal_other=%d normal_failed=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
			*n, opened, refused, closed, t.ok, t.other+t.deadline, t.failed,
			pct(t.okLat, 0.5), pct(t.okLat, 0.99), pct(t.okLat, 1))
	default:
		fmt.Fprintln(os.Stderr, "load: -mode open or trickle")
		os.Exit(2)
	}
}
