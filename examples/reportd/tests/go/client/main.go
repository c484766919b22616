// SPDX-License-Identifier: MIT

// A caller nobody here wrote the other side of: Go's net/http client with
// context.WithTimeout, as a Go service would call reportd.
//
//	client -url URL -timeout 200ms -id REQUEST-ID
//
// Prints one line: "status=200 request_id=..." or "err=...", and exits 0
// either way (the test reads the line).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	url := flag.String("url", "", "the URL to GET")
	timeout := flag.Duration("timeout", time.Second, "the caller's budget")
	id := flag.String("id", "", "X-Request-Id to send")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Println("err=" + err.Error())
		os.Exit(1)
	}
	req.Header.Set("X-Request-Id", *id)
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Printf("err=%v ms=%d\n", ctx.Err(), time.Since(start).Milliseconds())
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("status=%d request_id=%s ms=%d body=%s\n", resp.StatusCode,
		resp.Header.Get("X-Request-Id"), time.Since(start).Milliseconds(), body)
}
