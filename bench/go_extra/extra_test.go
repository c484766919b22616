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
