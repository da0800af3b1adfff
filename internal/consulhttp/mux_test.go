package consulhttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// h2server is a countingServer offering HTTP/2.
func h2server(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	return countingServer(t, h, tlsHTTP2)
}

// parked runs n GETs that the handler holds until release is closed, and
// returns once arrived of them reached the handler; wait collects their
// protocols and errors.
type parked struct {
	release chan struct{}
	arrived sync.WaitGroup
	done    sync.WaitGroup
	mu      sync.Mutex
	protos  map[string]int
	errs    []error
}

func newParked() *parked {
	return &parked{release: make(chan struct{}), protos: map[string]int{}}
}

func (p *parked) handler(w http.ResponseWriter, r *http.Request) {
	p.arrived.Done()
	<-p.release
	io.WriteString(w, r.Proto)
}

func (p *parked) run(c *http.Client, url string, n int) {
	for range n {
		p.done.Add(1)
		go func() {
			defer p.done.Done()
			resp, err := c.Get(url)
			var b []byte
			if err == nil {
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if err != nil {
				p.errs = append(p.errs, err)
				return
			}
			p.protos[string(b)]++
		}()
	}
}

func TestHTTP2CarriesManyRequestsPerConnection(t *testing.T) {
	p := newParked()
	s, conns := h2server(t, p.handler)
	c, tr := client(t, s, Options{MaxConns: 4})
	const n = 250 // more than two connections carry
	p.arrived.Add(n)
	p.run(c, s.URL, n)
	p.arrived.Wait() // all 250 at the server at once
	if got := conns.Load(); got != 3 {
		t.Errorf("%d connections for %d requests, want 3", got, n)
	}
	if tr.Open() != 3 || tr.Streams() != maxStreams {
		t.Errorf("open %d, streams %d; want 3 and %d", tr.Open(), tr.Streams(), maxStreams)
	}
	close(p.release)
	p.done.Wait()
	if len(p.errs) > 0 || p.protos["HTTP/2.0"] != n {
		t.Fatalf("protocols %v, errors %v", p.protos, p.errs)
	}
	if tr.Idle() != 3 || tr.Peak() != 3 {
		t.Errorf("idle %d, peak %d; want 3 and 3", tr.Idle(), tr.Peak())
	}
}

func TestHTTP2WaitsForAStreamWithinMaxConns(t *testing.T) {
	p := newParked()
	s, conns := h2server(t, p.handler)
	c, tr := client(t, s, Options{MaxConns: 1})
	p.arrived.Add(maxStreams)
	p.run(c, s.URL, maxStreams+50)
	p.arrived.Wait()
	// 50 requests wait for room; none may open a second connection.
	deadline := time.Now().Add(10 * time.Second)
	for tr.Waits() < 50 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if w := tr.Waits(); w < 50 {
		t.Errorf("%d requests waited, want 50", w)
	}
	p.arrived.Add(50)
	close(p.release)
	p.done.Wait()
	if len(p.errs) > 0 || p.protos["HTTP/2.0"] != maxStreams+50 {
		t.Fatalf("protocols %v, errors %v", p.protos, p.errs)
	}
	if got := conns.Load(); got != 1 || tr.Peak() != 1 {
		t.Errorf("%d connections, peak %d; want 1", got, tr.Peak())
	}
}

func TestHTTP2WaitEndsWithContext(t *testing.T) {
	p := newParked()
	s, _ := h2server(t, p.handler)
	c, tr := client(t, s, Options{MaxConns: 1})
	p.arrived.Add(maxStreams)
	p.run(c, s.URL, maxStreams)
	p.arrived.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL, nil)
	if _, err := c.Do(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err %v, want the context's deadline", err)
	}
	close(p.release)
	p.done.Wait()
	if tr.Open() != 1 {
		t.Errorf("open %d, want 1", tr.Open())
	}
}

// A connection the server drops leaves the pool and the budget; the next
// request dials a new one.
func TestHTTP2DeadConnectionLeavesThePool(t *testing.T) {
	s, conns := h2server(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
	c, tr := client(t, s, Options{MaxConns: 1})
	if got := get(t, c, s.URL); got != "HTTP/2.0" {
		t.Fatalf("got %q", got)
	}
	s.CloseClientConnections()
	deadline := time.Now().Add(10 * time.Second)
	for tr.Open() != 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if tr.Open() != 0 {
		t.Fatalf("open %d after the server closed the connection", tr.Open())
	}
	if got := get(t, c, s.URL); got != "HTTP/2.0" {
		t.Fatalf("got %q", got)
	}
	if conns.Load() != 2 || tr.Open() != 1 {
		t.Errorf("%d connections dialled, %d open; want 2 and 1", conns.Load(), tr.Open())
	}
}

func TestHTTP2TooManyRequestsCoolsDown(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	s, conns := h2server(t, func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	})
	c, tr := client(t, s, Options{MaxConns: 4})
	resp, err := c.Get(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || tr.Throttled() != 1 {
		t.Fatalf("status %d, throttled %d", resp.StatusCode, tr.Throttled())
	}
	// The connection stays usable: only new ones wait for the cool-down.
	refuse.Store(false)
	if got := get(t, c, s.URL); got != "ok" {
		t.Fatalf("got %q", got)
	}
	tr.CloseIdleConnections()
	if got := get(t, c, s.URL); got != "ok" {
		t.Fatalf("got %q", got)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// Without HTTP/2 on offer, an https connection carries one request at a
// time, and MaxConns still holds.
func TestHTTPSFallsBackToHTTP1(t *testing.T) {
	p := newParked()
	s, conns := countingServer(t, p.handler, tlsHTTP1)
	c, tr := client(t, s, Options{MaxConns: 3})
	p.arrived.Add(3)
	p.run(c, s.URL, 5)
	p.arrived.Wait()
	if tr.Streams() != 1 || conns.Load() != 3 {
		t.Errorf("streams %d, connections %d; want 1 and 3", tr.Streams(), conns.Load())
	}
	p.arrived.Add(2)
	close(p.release)
	p.done.Wait()
	if len(p.errs) > 0 || p.protos["HTTP/1.1"] != 5 {
		t.Fatalf("protocols %v, errors %v", p.protos, p.errs)
	}
	if tr.Peak() != 3 {
		t.Errorf("peak %d, want 3", tr.Peak())
	}
}

func TestHTTP2LeavesNoGoroutines(t *testing.T) {
	s, _ := h2server(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	before := runtime.NumGoroutine()
	c, tr := client(t, s, Options{MaxConns: 2})
	for range 10 {
		get(t, c, s.URL)
	}
	tr.CloseIdleConnections()
	s.CloseClientConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after closing, %d before", n, before)
	}
	if tr.Open() != 0 {
		t.Errorf("open %d after closing", tr.Open())
	}
}

// The Consul agent is on the same host: compressing its answers would cost
// it CPU (about 0.2 ms for a product of 20 instances) and glimpse more to
// undo, for no bytes that matter. No request asks for gzip, over HTTPS
// (HTTP/2 or HTTP/1.1) or plain HTTP.
func TestNoCompressionAsked(t *testing.T) {
	for _, tc := range []struct {
		name, proto string
		kind        int
	}{{"https-h2", "HTTP/2", tlsHTTP2}, {"https-h1", "HTTP/1.1", tlsHTTP1}, {"http", "HTTP/1.1", plainHTTP}} {
		t.Run(tc.name, func(t *testing.T) {
			var asked atomic.Value
			h := func(w http.ResponseWriter, r *http.Request) {
				asked.Store(r.Proto + " Accept-Encoding=" + r.Header.Get("Accept-Encoding"))
				io.WriteString(w, "ok")
			}
			s, _ := countingServer(t, h, tc.kind)
			c, _ := client(t, s, Options{MaxConns: 2})
			resp, err := c.Get(s.URL)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if got, _ := asked.Load().(string); !strings.HasPrefix(got, tc.proto) || strings.Contains(got, "gzip") {
				t.Errorf("the server saw %q, want %s without gzip", got, tc.proto)
			}
		})
	}
}
