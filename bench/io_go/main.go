// SPDX-License-Identifier: MIT

// The Go peer of bench/io.c: 64-byte reads and writes on an os.Pipe with a
// read deadline set (Go's way of making a read cancellable), measured the
// same way as the C side.  It runs one round per line read from stdin and
// answers with "<read ns/op> <write ns/op>", so that the C program can
// interleave its rounds with Go's in one invocation.
package main

import (
	"bufio"
	"fmt"
	"os"
	"syscall"
	"time"
)

const msg = 64

func setPipeSize(f *os.File, size int) {
	rc, err := f.SyscallConn()
	if err != nil {
		panic(err)
	}
	rc.Control(func(fd uintptr) {
		syscall.Syscall(syscall.SYS_FCNTL, fd, 1031 /* F_SETPIPE_SZ */, uintptr(size))
	})
}

func main() {
	ops := 200000
	if len(os.Args) > 1 {
		fmt.Sscan(os.Args[1], &ops)
	}
	r, w, err := os.Pipe()
	if err != nil {
		panic(err)
	}
	setPipeSize(w, 1<<20)
	batch := (1 << 20) / msg
	if len(os.Args) > 2 {
		fmt.Sscan(os.Args[2], &batch)
	}
	buf := make([]byte, msg)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		// A deadline far away: the read is cancellable, as with a context.
		r.SetReadDeadline(time.Now().Add(time.Hour))
		w.SetWriteDeadline(time.Now().Add(time.Hour))
		var readNs, writeNs time.Duration
		for done := 0; done < ops; done += batch {
			t0 := time.Now()
			for i := 0; i < batch; i++ {
				if _, err := w.Write(buf); err != nil {
					panic(err)
				}
			}
			t1 := time.Now()
			for i := 0; i < batch; i++ {
				if _, err := r.Read(buf); err != nil {
					panic(err)
				}
			}
			t2 := time.Now()
			writeNs += t1.Sub(t0)
			readNs += t2.Sub(t1)
		}
		n := float64((ops + batch - 1) / batch * batch)
		fmt.Printf("%.1f %.1f\n", float64(readNs.Nanoseconds())/n, float64(writeNs.Nanoseconds())/n)
	}
}
