// SPDX-License-Identifier: MIT

// Shapes that Go 1.19's own benchmark_test.go does not have, written the
// same way as the libctx and C++ ones in bench/ctx_bench.cc (Extra/...), so
// that the report can give them a Go column too.  Run by bench/report.py:
//
//	GO111MODULE=off go test -run '^$' -bench . -benchmem
package extra

import (
	"context"
	"testing"
	"time"
)

// The busy loop of BenchmarkCommonParentCancel alone (both halves).
func BenchmarkSpin200(b *testing.B) {
	x := 0
	for n := 0; n < b.N; n++ {
		for i := 0; i < 100; i++ {
			x /= x + 1
		}
		for i := 0; i < 100; i++ {
			x /= x + 1
		}
	}
}

// BenchmarkCommonParentCancel without the busy loop: what is left is the
// context work, on GOMAXPROCS goroutines sharing one parent.
func BenchmarkCommonParentCancelNoSpin(b *testing.B) {
	root := context.WithValue(context.Background(), "key", "value")
	shared, sharedcancel := context.WithCancel(root)
	defer sharedcancel()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ctx, cancel := context.WithCancel(shared)
			if ctx.Value("key").(string) != "value" {
				b.Fatal("should not be reached")
			}
			cancel()
		}
	})
}

// A child of a live cancellable parent: create, cancel.
func BenchmarkChildCancel(b *testing.B) {
	parent, pcancel := context.WithCancel(context.Background())
	defer pcancel()
	for i := 0; i < b.N; i++ {
		_, cancel := context.WithCancel(parent)
		cancel()
	}
}

type key struct{}

// A value context on Background, dropped at once.
func BenchmarkWithValue(b *testing.B) {
	for i := 0; i < b.N; i++ {
		_ = context.WithValue(context.Background(), key{}, "value")
	}
}

// One timeout context, alone in the timer heap: create, cancel.
func BenchmarkWithTimeout(b *testing.B) {
	for i := 0; i < b.N; i++ {
		_, cancel := context.WithTimeout(context.Background(), time.Hour)
		cancel()
	}
}

// Lookups in a chain of 100 value contexts (Values), or of 100 value
// contexts each with a cancellable context under it (Interleaved): the key
// bound at the top of the chain, each of the 100 keys in turn, a key bound
// nowhere.
func valueChain(interleaved bool) context.Context {
	ctx := context.Background()
	for i := 0; i < 100; i++ {
		ctx = context.WithValue(ctx, i, i+1)
		if interleaved {
			ctx, _ = context.WithCancel(ctx)
		}
	}
	return ctx
}

func benchValue100(b *testing.B, interleaved bool, which string) {
	ctx := valueChain(interleaved)
	// The keys as interface values made before the loop, so that no op
	// pays for boxing one (-1 is not among the small integers Go keeps
	// boxed already).
	keys := make([]any, 100)
	for i := range keys {
		keys[i] = i
	}
	var absent any = -1
	b.ResetTimer()
	k := 0
	for n := 0; n < b.N; n++ {
		key := keys[k]
		switch which {
		case "Top":
			key = keys[0]
		case "Absent":
			key = absent
		}
		if k++; k == 100 {
			k = 0
		}
		if (ctx.Value(key) == nil) != (which == "Absent") {
			b.Fatal("wrong lookup")
		}
	}
}

func BenchmarkValue100(b *testing.B) {
	for _, shape := range []string{"Values", "Interleaved"} {
		for _, which := range []string{"Top", "EachKey", "Absent"} {
			interleaved := shape == "Interleaved"
			which := which
			b.Run(shape+"/"+which, func(b *testing.B) { benchValue100(b, interleaved, which) })
		}
	}
	// The chain of 100 value contexts itself, made per op.
	b.Run("Values/Build", func(b *testing.B) {
		for n := 0; n < b.N; n++ {
			if valueChain(false) == nil {
				b.Fatal("no chain")
			}
		}
	})
}

// A cancellable root with 1,000 cancellable children; the root cancelled.
func BenchmarkCancelWide1000(b *testing.B) {
	for n := 0; n < b.N; n++ {
		root, cancel := context.WithCancel(context.Background())
		for i := 0; i < 1000; i++ {
			context.WithCancel(root)
		}
		cancel()
	}
}
