// SPDX-License-Identifier: MIT

// The Go peer of bench/sc.c and bench/sc_tree.c: the same measurements
// with golang.org/x/sync/errgroup and the context package, printed as
// "name value" lines for bench/sc.py.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

var counter int64

func groupBatchNs() float64 {
	t0 := time.Now()
	g, _ := errgroup.WithContext(context.Background())
	g.SetLimit(8)
	for i := 0; i < 10000; i++ {
		g.Go(func() error { atomic.AddInt64(&counter, 1); return nil })
	}
	g.Wait()
	return float64(time.Since(t0).Nanoseconds()) / 10000
}

func groupTaskNs() float64 {
	best := 1e30
	for rep := 0; rep < 3; rep++ {
		if t := groupBatchNs(); t < best {
			best = t
		}
	}
	return best
}

const blockers = 1000

func block() {
	var started int32
	returned := make([]time.Time, blockers)
	var failedAt time.Time
	g, ctx := errgroup.WithContext(context.Background())
	for i := 0; i < blockers; i++ {
		i := i
		g.Go(func() error {
			atomic.AddInt32(&started, 1)
			<-ctx.Done()
			returned[i] = time.Now()
			return ctx.Err()
		})
	}
	g.Go(func() error {
		for atomic.LoadInt32(&started) < blockers {
			runtime.Gosched()
		}
		time.Sleep(20 * time.Millisecond)
		failedAt = time.Now()
		return errors.New("io")
	})
	g.Wait()
	lat := make([]float64, blockers)
	for i := range lat {
		lat[i] = float64(returned[i].Sub(failedAt).Nanoseconds()) / 1000
	}
	sort.Float64s(lat)
	fmt.Printf("block_p50_us %.1f\nblock_p99_us %.1f\nblock_max_us %.1f\n",
		lat[blockers/2], lat[blockers*99/100], lat[blockers-1])
}

// Go 1.19 has no AfterFunc: a merged context is a child of a plus a
// goroutine that cancels it when b is done.
func mergeNs() (float64, float64) {
	a, ca := context.WithCancel(context.Background())
	b, cb := context.WithCancel(context.Background())
	defer ca()
	defer cb()
	n := 300000
	bestM, bestC := 1e30, 1e30
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			m, cancel := context.WithCancel(a)
			go func() {
				select {
				case <-b.Done():
					cancel()
				case <-m.Done():
				}
			}()
			cancel()
		}
		t1 := time.Now()
		for i := 0; i < n; i++ {
			_, cancel := context.WithCancel(a)
			cancel()
		}
		t2 := time.Now()
		if m := float64(t1.Sub(t0).Nanoseconds()) / float64(n); m < bestM {
			bestM = m
		}
		if c := float64(t2.Sub(t1).Nanoseconds()) / float64(n); c < bestC {
			bestC = c
		}
	}
	return bestM, bestC
}

type key struct{}

var sink context.Context

func tree() {
	parent, pc := context.WithCancel(context.Background())
	defer pc()
	n := 1000000
	bestC, bestV := 1e30, 1e30
	for rep := 0; rep < 5; rep++ {
		t0 := time.Now()
		for i := 0; i < n; i++ {
			_, cancel := context.WithCancel(parent)
			cancel()
		}
		t1 := time.Now()
		for i := 0; i < n; i++ {
			sink = context.WithValue(parent, key{}, i)
		}
		t2 := time.Now()
		if c := float64(t1.Sub(t0).Nanoseconds()) / float64(n); c < bestC {
			bestC = c
		}
		if v := float64(t2.Sub(t1).Nanoseconds()) / float64(n); v < bestV {
			bestV = v
		}
	}
	fmt.Printf("tree_cancel %.2f\ntree_value %.2f\n", bestC, bestV)
}

func main() {
	// First, as in bench/sc.c: the first batch of the process.
	fmt.Printf("group_cold_task_ns %.1f\n", groupBatchNs())
	if len(os.Args) > 1 && os.Args[1] == "--cold" {
		return
	}
	fmt.Printf("group_task_ns %.1f\n", groupTaskNs())
	block()
	m, c := mergeNs()
	fmt.Printf("merge_ns %.1f\nwith_cancel_ns %.1f\n", m, c)
	tree()
	os.Stdout.Sync()
}
