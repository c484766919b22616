// SPDX-License-Identifier: MIT

// Command httppeer is the HTTP server of libctx-curl's fault tests: HTTP/1.1
// and h2c (HTTP/2 over plain TCP with prior knowledge, through
// golang.org/x/net/http2/h2c) on one ephemeral port of 127.0.0.1.
//
// It prints "port N" first, then one line per event a test may wait for:
//
//	started ID     the handler of request ID runs (/hang, /stream, /upload)
//	streaming ID   /stream sent its first chunk and goes on sending
//	inactive ID    request ID's context ended (the client went away)
//
// It exits when its stdin closes, so it never outlives the test.
//
//	/fast            answers "ok"
//	/hang?id=ID      answers only when its context ends, or after 30 s
//	/stream?id=ID    sends "first", then 1 KiB every 2 ms until its
//	                 context ends or 30 s pass
//	/after?ms=N      answers "ok" after N ms
//	/upload?id=ID    reads the whole request body and answers "ok LENGTH"
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

var outMu sync.Mutex
var out = bufio.NewWriter(os.Stdout)

func say(format string, args ...interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintf(out, format+"\n", args...)
	out.Flush()
}

// watch reports when the request's context ends, whatever the handler is
// doing at the time (a handler blocked in a write does not notice).
func watch(r *http.Request, id string) {
	go func() {
		<-r.Context().Done()
		say("inactive %s", id)
	}()
}

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/fast", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/hang", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		watch(r, id)
		say("started %s", id)
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
		io.WriteString(w, "late")
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		watch(r, id)
		say("started %s", id)
		f := w.(http.Flusher)
		io.WriteString(w, "first")
		f.Flush()
		say("streaming %s", id)
		chunk := make([]byte, 1024)
		for i := range chunk {
			chunk[i] = 'x'
		}
		end := time.After(30 * time.Second)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-end:
				return
			case <-tick.C:
				if _, err := w.Write(chunk); err != nil {
					return
				}
				f.Flush()
			}
		}
	})
	mux.HandleFunc("/after", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-r.Context().Done():
			return
		case <-time.After(time.Duration(ms) * time.Millisecond):
		}
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		watch(r, id)
		say("started %s", id)
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		fmt.Fprintf(w, "ok %d", n)
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	say("port %d", ln.Addr().(*net.TCPAddr).Port)
	srv := &http.Server{Handler: h2c.NewHandler(mux, &http2.Server{})}
	go srv.Serve(ln)
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}
