// SPDX-License-Identifier: MIT

// The Go side of bench/round2.c: the same figures, measured the same way,
// on Go's context package.  bench/round2.py runs both in rounds.
//
//	fanout THREADS   THREADS goroutines (GOMAXPROCS is the machine's) each
//	                 create and cancel children of one shared parent, 10M in
//	                 all: wall and CPU time per operation
//	storm MODE       1,000,000 deadlines over 2 s, due 3 s after they are
//	                 made (10 s for the goroutines: starting a million takes
//	                 Go seconds).  Go 1.19 has no context.AfterFunc, so two shapes:
//	                 "goroutine": a goroutine per context waiting on Done();
//	                 "afterfunc": time.AfterFunc per deadline (the timer
//	                 alone, no context)
//	timeouts         1,000,000 live WithTimeout(parent, 1 h): create ns/op,
//	                 and the heap it added per timeout
//	lone             500 lone 1 ms timeouts, one at a time, each waited on
//	                 through Done(): lateness p50/p99/max
//
// Output: "key<TAB>value<TAB>unit" lines, as round2.c prints them.
package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var quick bool

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

// cpuNs is the CPU time of the whole process, in ns.
func cpuNs() float64 {
	var r syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r)
	return float64(r.Utime.Nano() + r.Stime.Nano())
}

func fanout(threads int) {
	ops := 10000000 / threads
	if quick {
		ops = 20000
	}
	parent, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	var start, wg sync.WaitGroup
	start.Add(1)
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			for i := 0; i < ops; i++ {
				_, cancel := context.WithCancel(parent)
				cancel()
			}
		}()
	}
	runtime.GC()
	t0 := time.Now()
	c0 := cpuNs()
	start.Done()
	wg.Wait()
	put("fanout.ns_per_op", float64(time.Since(t0).Nanoseconds())/float64(ops*threads), "ns/op")
	put("fanout.cpu_ns_per_op", (cpuNs()-c0)/float64(ops*threads), "ns/op")
}

func storm(mode string) {
	n := 1000000
	spread := 2 * time.Second
	lead := 3 * time.Second
	if mode == "goroutine" {
		// Starting a million goroutines takes Go seconds on a loaded
		// machine: give it the time, so that every one waits before its
		// deadline (the lead does not enter the lateness).
		lead = 10 * time.Second
	}
	if quick {
		n, spread, lead = 10000, 200*time.Millisecond, 300*time.Millisecond
	}
	deadlines := make([]time.Time, n)
	late := make([]int64, n)
	base := time.Now().Add(lead)
	rng := uint64(0x9E3779B97F4A7C15)
	for i := range deadlines {
		rng = rng*6364136223846793005 + 1442695040888963407
		deadlines[i] = base.Add(time.Duration((rng >> 11) % uint64(spread)))
	}
	var wg sync.WaitGroup
	wg.Add(n)
	var cancels []context.CancelFunc
	switch mode {
	case "goroutine":
		cancels = make([]context.CancelFunc, n)
		for i := range deadlines {
			var ctx context.Context
			ctx, cancels[i] = context.WithDeadline(context.Background(), deadlines[i])
			go func(i int, ctx context.Context) {
				<-ctx.Done()
				late[i] = time.Since(deadlines[i]).Nanoseconds()
				wg.Done()
			}(i, ctx)
		}
	case "afterfunc":
		for i := range deadlines {
			i := i
			time.AfterFunc(time.Until(deadlines[i]), func() {
				late[i] = time.Since(deadlines[i]).Nanoseconds()
				wg.Done()
			})
		}
	default:
		fmt.Fprintln(os.Stderr, "storm: mode is goroutine or afterfunc")
		os.Exit(2)
	}
	if time.Now().After(base) {
		fmt.Fprintln(os.Stderr, "storm: making the deadlines took longer than the lead")
		os.Exit(1)
	}
	wg.Wait()
	for _, c := range cancels {
		c()
	}
	sort.Slice(late, func(a, b int) bool { return late[a] < late[b] })
	put("storm.p50", float64(pct(late, 0.50))/1e3, "us")
	put("storm.p99", float64(pct(late, 0.99))/1e3, "us")
	put("storm.max", float64(late[n-1])/1e3, "us")
}

// timeoutSlots: room for the million timeouts and their CancelFuncs (ten
// thousand with -quick), made before anything is measured.
func timeoutSlots() ([]context.Context, []context.CancelFunc) {
	n := 1000000
	if quick {
		n = 10000
	}
	return make([]context.Context, n), make([]context.CancelFunc, n)
}

// makeTimeouts fills ctxs and cancels with timeouts an hour away under
// parent.
func makeTimeouts(parent context.Context, ctxs []context.Context, cancels []context.CancelFunc) {
	for i := range ctxs {
		ctxs[i], cancels[i] = context.WithTimeout(parent, time.Hour)
	}
}

func timeouts() {
	ctxs, cancels := timeoutSlots()
	n := len(ctxs)
	parent, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	t0 := time.Now()
	makeTimeouts(parent, ctxs, cancels)
	d := time.Since(t0)
	runtime.ReadMemStats(&m1)
	put("timeouts.create", float64(d.Nanoseconds())/float64(n), "ns/op")
	put("timeouts.heap_per_timer", float64(m1.HeapAlloc-m0.HeapAlloc)/float64(n), "B")
	t1 := time.Now()
	for i := 0; i < n; i++ {
		cancels[i]()
	}
	put("timeouts.cancel_each", float64(time.Since(t1).Nanoseconds())/float64(n), "ns/op")
	runtime.KeepAlive(ctxs)
}

// timeoutsRandom: round2.c's timeouts_random, the million cancelled in the
// same fixed shuffle (Fisher-Yates on xorshift).
func timeoutsRandom() {
	ctxs, cancels := timeoutSlots()
	n := len(ctxs)
	parent, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	makeTimeouts(parent, ctxs, cancels)
	r := uint64(0x9E3779B97F4A7C15)
	for i := n - 1; i > 0; i-- {
		r ^= r << 13
		r ^= r >> 7
		r ^= r << 17
		j := int(r % uint64(i+1))
		cancels[i], cancels[j] = cancels[j], cancels[i]
	}
	t0 := time.Now()
	for _, c := range cancels {
		c()
	}
	put("timeouts.cancel_random", float64(time.Since(t0).Nanoseconds())/float64(n), "ns/op")
	runtime.KeepAlive(ctxs)
}

// lone: one 1 ms WithTimeout at a time, waited on through Done(), as
// round2.c's lone: lateness of the wait's return after the deadline.
func lone() {
	n := 500
	if quick {
		n = 50
	}
	late := make([]int64, n)
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		d, _ := ctx.Deadline()
		<-ctx.Done()
		late[i] = time.Since(d).Nanoseconds()
		cancel()
	}
	sort.Slice(late, func(a, b int) bool { return late[a] < late[b] })
	put("lone.p50", float64(pct(late, 0.50))/1e3, "us")
	put("lone.p99", float64(pct(late, 0.99))/1e3, "us")
	put("lone.max", float64(late[n-1])/1e3, "us")
}

func main() {
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "-quick" {
		quick = true
		args = args[1:]
	}
	switch {
	case len(args) == 2 && args[0] == "fanout":
		t, err := strconv.Atoi(args[1])
		if err != nil || t < 1 {
			fmt.Fprintln(os.Stderr, "fanout: THREADS is a positive number")
			os.Exit(2)
		}
		fanout(t)
	case len(args) == 2 && args[0] == "storm":
		storm(args[1])
	case len(args) == 1 && args[0] == "timeouts":
		timeouts()
	case len(args) == 1 && args[0] == "timeouts_random":
		timeoutsRandom()
	case len(args) == 1 && args[0] == "lone":
		lone()
	default:
		fmt.Fprintln(os.Stderr, "usage: round2 [-quick] fanout THREADS | storm goroutine|afterfunc | timeouts | timeouts_random | lone")
		os.Exit(2)
	}
}
