// SPDX-License-Identifier: MIT

// Command wire is the Go peer of bench/wire.c: what a Go service without
// OpenTelemetry or gRPC does by hand to carry a deadline, a trace and three
// baggage entries in HTTP headers.  Inject writes grpc-timeout (as
// grpc-go), traceparent with a fresh random span id, and baggage into an
// http.Header; extract parses them back into context.WithTimeout and
// context.WithValue.  Prints "inject NS ALLOCS" and "extract NS ALLOCS"
// per call, measured over -n calls.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"time"
)

type traceKey struct{}
type baggageKey struct{}

type trace struct {
	id     [16]byte
	parent [8]byte
	flags  byte
}

func encodeTimeout(t time.Duration) string {
	const max = 99999999
	div := func(d, r time.Duration) int64 {
		if d%r > 0 {
			return int64(d/r + 1)
		}
		return int64(d / r)
	}
	if t <= 0 {
		return "0n"
	}
	if v := div(t, time.Nanosecond); v <= max {
		return strconv.FormatInt(v, 10) + "n"
	}
	if v := div(t, time.Microsecond); v <= max {
		return strconv.FormatInt(v, 10) + "u"
	}
	if v := div(t, time.Millisecond); v <= max {
		return strconv.FormatInt(v, 10) + "m"
	}
	if v := div(t, time.Second); v <= max {
		return strconv.FormatInt(v, 10) + "S"
	}
	if v := div(t, time.Minute); v <= max {
		return strconv.FormatInt(v, 10) + "M"
	}
	return strconv.FormatInt(div(t, time.Hour), 10) + "H"
}

func decodeTimeout(s string) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, errors.New("bad length")
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, errors.New("bad unit")
	}
	v, err := strconv.ParseUint(s[:len(s)-1], 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(v) * unit, nil
}

func inject(ctx context.Context, h http.Header) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok {
		h.Set("Grpc-Timeout", encodeTimeout(time.Until(d)))
	}
	if t, ok := ctx.Value(traceKey{}).(*trace); ok {
		var span [8]byte
		if _, err := rand.Read(span[:]); err != nil {
			return err
		}
		h.Set("Traceparent", "00-"+hex.EncodeToString(t.id[:])+"-"+
			hex.EncodeToString(span[:])+"-"+hex.EncodeToString([]byte{t.flags}))
	}
	if b, ok := ctx.Value(baggageKey{}).([][2]string); ok {
		var sb strings.Builder
		for i, kv := range b {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(kv[0])
			sb.WriteByte('=')
			sb.WriteString(url.PathEscape(kv[1]))
		}
		h.Set("Baggage", sb.String())
	}
	return nil
}

func extract(parent context.Context, h http.Header) (context.Context, context.CancelFunc) {
	ctx := parent
	cancel := context.CancelFunc(func() {})
	if d, err := decodeTimeout(h.Get("Grpc-Timeout")); err == nil {
		ctx, cancel = context.WithTimeout(ctx, d)
	}
	t := &trace{}
	if p := h.Get("Traceparent"); len(p) == 55 && p[2] == '-' && p[35] == '-' && p[52] == '-' {
		hex.Decode(t.id[:], []byte(p[3:35]))
		hex.Decode(t.parent[:], []byte(p[36:52]))
		var f [1]byte
		hex.Decode(f[:], []byte(p[53:55]))
		t.flags = f[0]
	}
	ctx = context.WithValue(ctx, traceKey{}, t)
	var bag [][2]string
	for _, m := range strings.Split(h.Get("Baggage"), ",") {
		kv := strings.SplitN(strings.SplitN(m, ";", 2)[0], "=", 2)
		if len(kv) == 2 {
			v, _ := url.PathUnescape(strings.TrimSpace(kv[1]))
			bag = append(bag, [2]string{strings.TrimSpace(kv[0]), v})
		}
	}
	return context.WithValue(ctx, baggageKey{}, bag), cancel
}

func measure(n int, f func()) (float64, float64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	for i := 0; i < n; i++ {
		f()
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	return float64(elapsed.Nanoseconds()) / float64(n), float64(after.Mallocs-before.Mallocs) / float64(n)
}

func main() {
	n := flag.Int("n", 200000, "calls per measurement")
	flag.Parse()

	base, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	t := &trace{flags: 2}
	rand.Read(t.id[:])
	rand.Read(t.parent[:])
	ctx := context.WithValue(base, traceKey{}, t)
	ctx = context.WithValue(ctx, baggageKey{}, [][2]string{
		{"request-id", "req-42"}, {"tenant", "acme"}, {"user", "\u00e9t\u00e9"}})

	h := http.Header{}
	ns, allocs := measure(*n, func() {
		if err := inject(ctx, h); err != nil {
			panic(err)
		}
	})
	fmt.Printf("inject %.1f %.2f\n", ns, allocs)

	in := http.Header{}
	inject(ctx, in)
	ns, allocs = measure(*n, func() {
		c, cancel := extract(context.Background(), in)
		if c.Value(traceKey{}) == nil {
			panic("no trace")
		}
		cancel()
	})
	fmt.Printf("extract %.1f %.2f\n", ns, allocs)
}
