// SPDX-License-Identifier: MIT

// The fault-injecting load generator of bench/service.py (wrk cannot hang
// up at a random moment).  Go 1.19 standard library only.
//
//	load -url BASE -c 200 -d 10s -hangup 0.33 -hang 0.10 -budget 500ms
//	     [-probe BASE/metrics]
//
// Runs -c workers for -d, each sending GET BASE/report?compute_ms=5&db_ms=5&
// upstream_ms=U in a loop, U being 5, or 60000 (an upstream that hangs) with
// probability -hang; with probability -hangup the request's context is
// cancelled at a random moment within the budget, which closes its
// connection (a client hanging up).  With -probe, one more goroutine GETs
// that URL every 100 ms and records how long it takes.  Prints one line of
// key=value pairs.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	i := int(p * float64(len(v)-1))
	return v[i]
}

func main() {
	base := flag.String("url", "", "front reportd base URL")
	conc := flag.Int("c", 200, "concurrent clients")
	dur := flag.Duration("d", 10*time.Second, "duration")
	hangup := flag.Float64("hangup", 0.33, "share of clients that hang up at a random moment")
	hang := flag.Float64("hang", 0.10, "share of requests whose upstream hangs")
	budget := flag.Duration("budget", 500*time.Millisecond, "the front's budget")
	probe := flag.String("probe", "", "URL to probe every 100 ms")
	flag.Parse()

	tr := &http.Transport{MaxIdleConnsPerHost: *conc, MaxConnsPerHost: 0}
	client := &http.Client{Transport: tr}
	var ok, deadline, gone, other, errs int64
	var mu sync.Mutex
	var lat []float64
	stop := time.Now().Add(*dur)
	var wg sync.WaitGroup
	for w := 0; w < *conc; w++ {
		wg.Add(1)
		go func(seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for time.Now().Before(stop) {
				up := 5
				if rng.Float64() < *hang {
					up = 60000
				}
				url := fmt.Sprintf("%s/report?compute_ms=5&db_ms=5&upstream_ms=%d", *base, up)
				ctx, cancel := context.WithCancel(context.Background())
				hangsUp := rng.Float64() < *hangup
				if hangsUp {
					at := time.Duration(rng.Int63n(int64(*budget)))
					ctx, cancel = context.WithTimeout(context.Background(), at)
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				t := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				el := time.Since(t)
				cancel()
				switch {
				case err != nil && hangsUp:
					atomic.AddInt64(&gone, 1)
					continue
				case err != nil:
					atomic.AddInt64(&errs, 1)
					continue
				case resp.StatusCode == 200:
					atomic.AddInt64(&ok, 1)
				case resp.StatusCode == 504:
					atomic.AddInt64(&deadline, 1)
				default:
					atomic.AddInt64(&other, 1)
				}
				mu.Lock()
				lat = append(lat, float64(el.Microseconds())/1000)
				mu.Unlock()
			}
		}(int64(w) + 1)
	}
	var probes []float64
	done := make(chan struct{})
	probed := make(chan struct{})
	if *probe == "" {
		close(probed)
	} else {
		go func() {
			defer close(probed)
			pc := &http.Client{Transport: &http.Transport{}}
			for {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				t := time.Now()
				resp, err := pc.Get(*probe)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					probes = append(probes, float64(time.Since(t).Microseconds())/1000)
				} else {
					probes = append(probes, 1e9)
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	<-probed
	answered := ok + deadline + other
	fmt.Printf("ok=%d deadline=%d client_gone=%d other=%d errors=%d answered_per_s=%.1f "+
		"p50_ms=%.1f p99_ms=%.1f max_ms=%.1f probes=%d probe_p50_ms=%.1f probe_max_ms=%.1f\n",
		ok, deadline, gone, other, errs, float64(answered)/dur.Seconds(),
		pct(lat, 0.5), pct(lat, 0.99), pct(lat, 1), len(probes), pct(probes, 0.5),
		pct(probes, 1))
}
