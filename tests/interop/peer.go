// SPDX-License-Identifier: MIT

// Command peer is the Go side of libctx's interoperability test
// (tests/test_interop_go.c).  It uses the standard library only and reads
// and writes the propagation headers by hand, the way a Go service without
// OpenTelemetry or gRPC would:
//
//	peer server          serves HTTP on 127.0.0.1 (the port is printed as
//	                     "listening PORT"); for each request it turns
//	                     grpc-timeout into context.WithTimeout, reads
//	                     traceparent and baggage, and answers what it saw;
//	                     GET /quit ends it.
//	peer client ADDR     sends one request to ADDR under a 10 s
//	                     context.WithTimeout, with grpc-timeout, traceparent,
//	                     tracestate and baggage, then checks what the C side
//	                     answers; exits 0 and prints "ok ..." when it matches.
//
// Answers are lines "name value"; baggage values are sent as hex so that
// any byte survives.
package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// decodeTimeout reads grpc-timeout as grpc-go's transport does: 1 to 8
// digits and a unit.
func decodeTimeout(s string) (time.Duration, error) {
	if len(s) < 2 || len(s) > 9 {
		return 0, errors.New("bad length")
	}
	units := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}
	unit, ok := units[s[len(s)-1]]
	if !ok {
		return 0, errors.New("bad unit")
	}
	for _, c := range s[:len(s)-1] {
		if c < '0' || c > '9' {
			return 0, errors.New("bad digit")
		}
	}
	v, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(v) * unit, nil
}

// encodeTimeout writes grpc-timeout as grpc-go does.
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
	for _, u := range []struct {
		d time.Duration
		s string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"},
		{time.Second, "S"}, {time.Minute, "M"}} {
		if v := div(t, u.d); v <= max {
			return strconv.FormatInt(v, 10) + u.s
		}
	}
	return strconv.FormatInt(div(t, time.Hour), 10) + "H"
}

// baggage splits a W3C baggage header into decoded key/value pairs.
func baggage(h string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(h) == "" {
		return out, nil
	}
	for _, member := range strings.Split(h, ",") {
		kv := strings.SplitN(strings.SplitN(member, ";", 2)[0], "=", 2)
		if len(kv) != 2 {
			return nil, fmt.Errorf("bad member %q", member)
		}
		v, err := unescape(strings.TrimSpace(kv[1]))
		if err != nil {
			return nil, err
		}
		out[strings.TrimSpace(kv[0])] = v
	}
	return out, nil
}

func unescape(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '%' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errors.New("short escape")
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil {
			return "", err
		}
		b.WriteByte(byte(v))
		i += 2
	}
	return b.String(), nil
}

func escape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c > 0x20 && c < 0x7f && c != '"' && c != ',' && c != ';' && c != '\\' && c != '%' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// traceparent returns the trace id, parent id and flags of a version 00
// header, or an error.
func traceparent(h string) (string, string, string, error) {
	p := strings.Split(h, "-")
	if len(p) != 4 || p[0] != "00" || len(p[1]) != 32 || len(p[2]) != 16 || len(p[3]) != 2 {
		return "", "", "", fmt.Errorf("bad traceparent %q", h)
	}
	for _, f := range p[1:] {
		if _, err := hex.DecodeString(f); err != nil || strings.ToLower(f) != f {
			return "", "", "", fmt.Errorf("bad traceparent %q", h)
		}
	}
	return p[1], p[2], p[3], nil
}

func serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/quit" {
		fmt.Fprintln(w, "bye")
		go func() { time.Sleep(100 * time.Millisecond); os.Exit(0) }()
		return
	}
	ctx := r.Context()
	budget := "none"
	if h := r.Header.Get("Grpc-Timeout"); h != "" {
		d, err := decodeTimeout(h)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
		deadline, _ := ctx.Deadline()
		budget = strconv.FormatInt(int64(time.Until(deadline)), 10)
	}
	fmt.Fprintf(w, "budget_ns %s\n", budget)
	fmt.Fprintf(w, "grpc_timeout %s\n", r.Header.Get("Grpc-Timeout"))
	if h := r.Header.Get("Traceparent"); h != "" {
		id, parent, flags, err := traceparent(h)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "trace_id %s\nparent_id %s\nflags %s\n", id, parent, flags)
	}
	if h := r.Header.Get("Tracestate"); h != "" {
		fmt.Fprintf(w, "tracestate %s\n", h)
	}
	bag, err := baggage(strings.Join(r.Header.Values("Baggage"), ","))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	for k, v := range bag {
		fmt.Fprintf(w, "baggage %s %s\n", k, hex.EncodeToString([]byte(v)))
	}
}

func server() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	return http.Serve(ln, http.HandlerFunc(serve))
}

func client(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ids [24]byte
	if _, err := rand.Read(ids[:]); err != nil {
		return err
	}
	ids[0] |= 1 // never all zero
	ids[16] |= 1
	traceID, spanID := hex.EncodeToString(ids[:16]), hex.EncodeToString(ids[16:])
	bag := map[string]string{"request-id": "go-7", "user": "\u00e9t\u00e9 x,;%"}

	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	if err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	sendLeft := time.Until(deadline)
	req.Header.Set("Grpc-Timeout", encodeTimeout(sendLeft))
	req.Header.Set("Traceparent", "00-"+traceID+"-"+spanID+"-01")
	req.Header.Set("Tracestate", "congo=t61rcWkgMzE")
	req.Header.Add("Baggage", "request-id="+escape(bag["request-id"]))
	req.Header.Add("Baggage", "user="+escape(bag["user"])+";ttl=3")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	recvLeft := time.Until(deadline)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d: %s", resp.StatusCode, body)
	}
	seen := map[string]string{}
	gotBag := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "baggage" {
			v, err := hex.DecodeString(f[2])
			if err != nil {
				return err
			}
			gotBag[f[1]] = string(v)
		} else if len(f) == 2 {
			seen[f[0]] = f[1]
		}
	}
	if seen["trace_id"] != traceID {
		return fmt.Errorf("trace id %q, sent %q", seen["trace_id"], traceID)
	}
	if seen["parent_id"] != spanID {
		return fmt.Errorf("parent id %q, sent %q", seen["parent_id"], spanID)
	}
	for k, v := range bag {
		if gotBag[k] != v {
			return fmt.Errorf("baggage %s = %q, sent %q", k, gotBag[k], v)
		}
	}
	budget, err := strconv.ParseInt(seen["budget_ns"], 10, 64)
	if err != nil {
		return fmt.Errorf("budget %q: %v", seen["budget_ns"], err)
	}
	// The C side measured its budget between our send and our receipt.
	const slack = 5 * time.Millisecond
	b := time.Duration(budget)
	if b > sendLeft+slack || b < recvLeft-slack {
		return fmt.Errorf("C budget %v outside [%v, %v] +- %v", b, recvLeft, sendLeft, slack)
	}
	fmt.Printf("ok trace_id=%s budget_c=%v go_at_send=%v go_at_receipt=%v\n",
		traceID, b, sendLeft, recvLeft)
	return nil
}

func main() {
	var err error
	switch {
	case len(os.Args) == 2 && os.Args[1] == "server":
		err = server()
	case len(os.Args) == 3 && os.Args[1] == "client":
		err = client(os.Args[2])
	default:
		err = errors.New("usage: peer server | peer client ADDR")
	}
	if err != nil {
		fmt.Println("FAIL", err)
		os.Exit(1)
	}
}
