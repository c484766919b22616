// SPDX-License-Identifier: MIT

// Scale figures for Go's context package, measured the way bench/scale.c
// measures libctx, so that bench/report.py can print them side by side.
// Go 1.19 has no AfterFunc, so the firing-lateness figure has no Go
// counterpart here (a goroutine per context would measure the scheduler).
//
// Output: one "key<TAB>value<TAB>unit" line per figure.  Run with
// `go run scale.go [-quick]`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

var quick = flag.Bool("quick", false, "small counts")
var only = flag.String("only", "", "timeout_shapes: only the timeout shapes (not in the default run)")

func put(key string, v float64, unit string) {
	fmt.Printf("%s\t%.6g\t%s\n", key, v, unit)
}

func pct(sorted []int64, p float64) int64 {
	i := int(p*float64(len(sorted)-1) + 0.5)
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

type key struct{}

func memFigures() {
	n := 10000
	if *quick {
		n = 1000
	}
	parent, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	kinds := []struct {
		name string
		make func() (context.Context, context.CancelFunc)
	}{
		{"cancel", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }},
		{"cancel_linked", func() (context.Context, context.CancelFunc) { return context.WithCancel(parent) }},
		{"timer", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), time.Hour)
		}},
		{"value", func() (context.Context, context.CancelFunc) {
			return context.WithValue(context.Background(), key{}, nil), nil
		}},
	}
	ctxs := make([]context.Context, n)
	cancels := make([]context.CancelFunc, n)
	for _, k := range kinds {
		runtime.GC()
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for i := 0; i < n; i++ {
			ctxs[i], cancels[i] = k.make()
		}
		runtime.ReadMemStats(&m1)
		put("mem."+k.name+".avg_bytes", float64(m1.TotalAlloc-m0.TotalAlloc)/float64(n), "B")
		put("mem."+k.name+".avg_allocs", float64(m1.Mallocs-m0.Mallocs)/float64(n), "allocs")
		for i := 0; i < n; i++ {
			if cancels[i] != nil {
				cancels[i]()
			}
			ctxs[i], cancels[i] = nil, nil
		}
	}
}

func timeoutFigures() {
	n := 1000000
	if *quick {
		n = 10000
	}
	cancels := make([]context.CancelFunc, n)
	for round := 0; round < 2; round++ {
		runtime.GC()
		parent, pcancel := context.WithCancel(context.Background())
		t0 := time.Now()
		for i := 0; i < n; i++ {
			_, cancels[i] = context.WithTimeout(parent, time.Hour)
		}
		d := time.Since(t0)
		if round == 0 {
			put("timeouts.create", float64(d.Nanoseconds())/float64(n), "ns/op")
			t1 := time.Now()
			for i := 0; i < n; i++ {
				cancels[i]()
			}
			put("timeouts.cancel_each", float64(time.Since(t1).Nanoseconds())/float64(n), "ns/op")
		} else {
			t1 := time.Now()
			pcancel()
			put("timeouts.cancel_parent", float64(time.Since(t1).Nanoseconds())/float64(n), "ns/op")
		}
		pcancel()
		for i := range cancels {
			cancels[i] = nil
		}
	}
}

// shuffle is the permutation scale.c uses: Fisher-Yates driven by
// xorshift64 from a fixed seed, so that both visit the contexts in the
// same order.
func shuffle(n int) []int {
	ix := make([]int, n)
	x := uint64(0x9E3779B97F4A7C15)
	for i := range ix {
		ix[i] = i
	}
	for i := n; i > 1; i-- {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		j := int(x % uint64(i))
		ix[i-1], ix[j] = ix[j], ix[i-1]
	}
	return ix
}

// timeoutShapeFigures: the shapes of scale.c's timeout_shape_figures.  Go
// frees nothing itself, so its "free_each" shapes are its cancel shapes.
func timeoutShapeFigures() {
	n := 1000000
	if *quick {
		n = 10000
	}
	ix := shuffle(n)
	cancels := make([]context.CancelFunc, n)
	shapes := []struct {
		name    string
		order   int
		threads int
	}{
		{"threads2", 0, 2}, {"free_each", 0, 1}, {"reverse", 1, 1}, {"random", 2, 1},
		{"random_free", 2, 1},
	}
	for _, sh := range shapes {
		runtime.GC()
		parent, pcancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		t0 := time.Now()
		for k := 0; k < sh.threads; k++ {
			from, to := n*k/sh.threads, n*(k+1)/sh.threads
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := from; i < to; i++ {
					_, cancels[i] = context.WithTimeout(parent, time.Hour)
				}
			}()
		}
		wg.Wait()
		put("timeouts.create."+sh.name, float64(time.Since(t0).Nanoseconds())/float64(n), "ns/op")
		t1 := time.Now()
		for k := 0; k < n; k++ {
			i := k
			if sh.order == 1 {
				i = n - 1 - k
			} else if sh.order == 2 {
				i = ix[k]
			}
			cancels[i]()
		}
		put("timeouts.cancel_each."+sh.name, float64(time.Since(t1).Nanoseconds())/float64(n), "ns/op")
		pcancel()
		for i := range cancels {
			cancels[i] = nil
		}
	}
}

func treeFigures() {
	n := 1000000
	if *quick {
		n = 10000
	}
	runtime.GC()
	root, cancel := context.WithCancel(context.Background())
	kids := make([]context.Context, n)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		kids[i], _ = context.WithCancel(root)
	}
	t1 := time.Now()
	cancel()
	t2 := time.Now()
	put("tree.wide.build", float64(t1.Sub(t0).Nanoseconds())/float64(n), "ns/op")
	put("tree.wide.cancel", float64(t2.Sub(t1).Nanoseconds())/float64(n), "ns/op")
	put("tree.wide.cancel_total", float64(t2.Sub(t1).Nanoseconds())/1e6, "ms")
	kids = nil

	runtime.GC()
	root, cancel = context.WithCancel(context.Background())
	leaf := root
	t0 = time.Now()
	for i := 0; i < n; i++ {
		leaf, _ = context.WithCancel(leaf)
	}
	t1 = time.Now()
	cancel()
	t2 = time.Now()
	put("tree.deep.build", float64(t1.Sub(t0).Nanoseconds())/float64(n), "ns/op")
	put("tree.deep.cancel", float64(t2.Sub(t1).Nanoseconds())/float64(n), "ns/op")
	put("tree.deep.cancel_total", float64(t2.Sub(t1).Nanoseconds())/1e6, "ms")
	_ = leaf
}

func waiterFigures(ownChild bool) {
	n := 1000
	if *quick {
		n = 50
	}
	runtime.GC()
	root, cancel := context.WithCancel(context.Background())
	release, releaseAll := context.WithCancel(context.Background())
	woke := make([]time.Time, n)
	var ready int32
	var wg, done sync.WaitGroup
	done.Add(n)
	for i := 0; i < n; i++ {
		c := root
		if ownChild {
			c, _ = context.WithCancel(root)
		}
		wg.Add(1)
		go func(i int, c context.Context) {
			defer wg.Done()
			atomic.AddInt32(&ready, 1)
			<-c.Done()
			woke[i] = time.Now()
			done.Done()
			<-release.Done() // park, as the C waiters do
		}(i, c)
	}
	for atomic.LoadInt32(&ready) < int32(n) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	t0 := time.Now()
	cancel()
	t1 := time.Now()
	done.Wait()
	releaseAll()
	wg.Wait()
	lat := make([]int64, n)
	for i := range woke {
		lat[i] = woke[i].Sub(t0).Nanoseconds()
	}
	sort.Slice(lat, func(a, b int) bool { return lat[a] < lat[b] })
	pre := "waiters.one"
	if ownChild {
		pre = "waiters.children"
	}
	put(pre+".cancel_call", float64(t1.Sub(t0).Nanoseconds())/1e3, "us")
	put(pre+".p50", float64(pct(lat, 0.50))/1e3, "us")
	put(pre+".p99", float64(pct(lat, 0.99))/1e3, "us")
	put(pre+".max", float64(lat[n-1])/1e3, "us")
}

func main() {
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: scale [-quick] [-only timeout_shapes]")
		os.Exit(2)
	}
	if *only == "timeout_shapes" {
		timeoutShapeFigures()
		return
	}
	memFigures()
	timeoutFigures()
	treeFigures()
	waiterFigures(false)
	waiterFigures(true)
}
