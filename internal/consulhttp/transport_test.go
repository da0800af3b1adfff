package consulhttp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Kinds of test server.
const (
	plainHTTP = iota
	tlsHTTP1  // TLS, HTTP/1.1 only
	tlsHTTP2  // TLS offering HTTP/2 (250 concurrent streams per connection, as Consul)
)

// countingServer is an httptest server of a kind counting the connections
// it accepted.
func countingServer(t *testing.T, h http.HandlerFunc, kind int) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	s := httptest.NewUnstartedServer(h)
	s.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			conns.Add(1)
		}
	}
	switch kind {
	case plainHTTP:
		s.Start()
	default:
		s.EnableHTTP2 = kind == tlsHTTP2
		s.Config.ErrorLog = log.New(io.Discard, "", 0)
		s.StartTLS()
	}
	t.Cleanup(s.Close)
	return s, &conns
}

// server is a plain HTTP countingServer.
func server(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	return countingServer(t, h, plainHTTP)
}

// client returns a Transport for s (over TLS if s has it) and a client
// using it.
func client(t *testing.T, s *httptest.Server, o Options) (*http.Client, *Transport) {
	t.Helper()
	o.Network, o.Address = "tcp", s.Listener.Addr().String()
	if s.TLS != nil {
		o.TLS = s.Client().Transport.(*http.Transport).TLSClientConfig
	}
	tr := New(o)
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}, tr
}

func get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestReusesOneConnection(t *testing.T) {
	s, conns := server(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.URL.Query().Get("i"))
	})
	c, tr := client(t, s, Options{})
	for i := 0; i < 50; i++ {
		want := strings.Repeat("x", i)
		if got := get(t, c, s.URL+"/?i="+want); got != want {
			t.Fatalf("request %d: got %q", i, got)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("50 sequential requests opened %d connections, want 1", n)
	}
	if tr.Idle() != 1 {
		t.Errorf("idle connections: %d, want 1", tr.Idle())
	}
}

// A PUT's body arrives whole, and a body the caller closes unread still
// lets a short response's connection be reused.
func TestPutAndUnreadBody(t *testing.T) {
	s, conns := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	c, _ := client(t, s, Options{})
	for i := 0; i < 3; i++ {
		req, _ := http.NewRequest(http.MethodPut, s.URL, strings.NewReader("hello"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			b, _ := io.ReadAll(resp.Body)
			if string(b) != "hello" {
				t.Errorf("echoed %q", b)
			}
		}
		resp.Body.Close()
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("connections: %d, want 1", n)
	}
}

// A long body closed unread is not drained: its connection is closed.
func TestLongUnreadBodyClosesConnection(t *testing.T) {
	s, conns := server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write(make([]byte, 1<<20))
	})
	c, tr := client(t, s, Options{})
	for i := 0; i < 2; i++ {
		resp, err := c.Get(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if n := conns.Load(); n != 2 || tr.Idle() != 0 {
		t.Errorf("connections %d, idle %d; want 2 and 0", n, tr.Idle())
	}
}

// A request waiting on the server (a blocking query) ends with its context,
// its connection is dropped, and the next request works.
func TestContextEndsWaitingRequest(t *testing.T) {
	release := make(chan struct{})
	s, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-r.Context().Done():
			case <-release:
			}
		}
		io.WriteString(w, "ok")
	})
	defer close(release)
	c, tr := client(t, s, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/block", nil)
	start := time.Now()
	_, err := c.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("returned after %v", d)
	}
	if tr.Idle() != 0 {
		t.Errorf("the interrupted connection was pooled")
	}
	if got := get(t, c, s.URL); got != "ok" {
		t.Errorf("next request: %q", got)
	}

	// Cancelled while the body streams.
	ctx, cancel = context.WithCancel(context.Background())
	s2, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("part"))
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	c2, _ := client(t, s2, Options{})
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, s2.URL, nil)
	resp, err := c2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, cancel)
	_, err = io.ReadAll(resp.Body)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("body read: %v, want context.Canceled", err)
	}
	resp.Body.Close()
}

// The server closes idle connections; the next request notices and dials.
func TestServerClosedIdleConnection(t *testing.T) {
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	s.Config.IdleTimeout = 200 * time.Millisecond
	s.Start()
	t.Cleanup(s.Close)
	c, _ := client(t, s, Options{})
	for i := 0; i < 3; i++ {
		if got := get(t, c, s.URL); got != "ok" {
			t.Fatalf("request %d: %q", i, got)
		}
		req, _ := http.NewRequest(http.MethodPut, s.URL, strings.NewReader("body"))
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("PUT %d: %v", i, err)
		}
		resp.Body.Close()
		time.Sleep(500 * time.Millisecond)
	}
}

// rawServer answers the first request of each connection and then reads
// the next one and closes without an answer: the race of a server closing
// a connection as it is reused.
func rawServer(t *testing.T) (net.Listener, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var conns atomic.Int64
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer nc.Close()
				br := bufio.NewReader(nc)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				io.Copy(io.Discard, req.Body)
				io.WriteString(nc, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
				if req, err = http.ReadRequest(br); err == nil {
					io.Copy(io.Discard, req.Body)
				}
			}()
		}
	}()
	return ln, &conns
}

func TestRetriesOnlyWhatIsSafe(t *testing.T) {
	ln, conns := rawServer(t)
	tr := New(Options{Network: "tcp", Address: ln.Addr().String()})
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	url := "http://" + ln.Addr().String() + "/"
	// A GET on a connection lost mid-reuse is sent again.
	for i := 0; i < 3; i++ {
		if got := get(t, c, url); got != "ok" {
			t.Fatalf("GET %d: %q", i, got)
		}
	}
	if n := conns.Load(); n != 3 {
		t.Errorf("connections: %d, want 3", n)
	}
	// A PUT that reached the server is not sent twice.
	tr.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPut, url, strings.NewReader("x"))
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err) // a fresh connection's first request
	}
	resp.Body.Close()
	req, _ = http.NewRequest(http.MethodPut, url, strings.NewReader("x"))
	if _, err := c.Do(req); err == nil {
		t.Error("a PUT that may have been applied was sent again")
	}
}

func TestTLSAndUnixSocket(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.Proto) })
	s := httptest.NewUnstartedServer(h)
	s.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake below
	s.StartTLS()
	defer s.Close()
	tlsc := s.Client().Transport.(*http.Transport).TLSClientConfig
	tr := New(Options{Network: "tcp", Address: s.Listener.Addr().String(), TLS: tlsc})
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	for i := 0; i < 2; i++ {
		if got := get(t, c, s.URL); got != "HTTP/1.1" {
			t.Errorf("TLS: %q", got)
		}
	}
	if tr.Idle() != 1 {
		t.Errorf("TLS idle: %d", tr.Idle())
	}
	bad := New(Options{Network: "tcp", Address: s.Listener.Addr().String(), TLS: &tls.Config{ServerName: "example.com"}})
	if _, err := (&http.Client{Transport: bad}).Get(s.URL); err == nil {
		t.Error("an unverified certificate was accepted")
	}

	sock := filepath.Join(t.TempDir(), "consul.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	us := &http.Server{Handler: h}
	go us.Serve(ln)
	defer us.Close()
	ut := New(Options{Network: "unix", Address: sock})
	defer ut.CloseIdleConnections()
	for i := 0; i < 2; i++ {
		if got := get(t, &http.Client{Transport: ut}, "http://localhost/"); got != "HTTP/1.1" {
			t.Errorf("unix: %q", got)
		}
	}
	if ut.Idle() != 1 {
		t.Errorf("unix idle: %d", ut.Idle())
	}
}

// Waiting requests cost the caller's goroutine only: the transport starts
// none of its own, unlike net/http's read and write loop per connection.
func TestNoGoroutinesPerConnection(t *testing.T) {
	release := make(chan struct{})
	var arrived sync.WaitGroup
	s, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		arrived.Done()
		<-release
	})
	c, _ := client(t, s, Options{})
	const n = 100
	arrived.Add(n)
	var done sync.WaitGroup
	for i := 0; i < n; i++ {
		done.Add(1)
		go func() {
			defer done.Done()
			if resp, err := c.Get(s.URL); err == nil {
				resp.Body.Close()
			}
		}()
	}
	arrived.Wait()
	buf := make([]byte, 8<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	close(release)
	done.Wait()
	for _, bad := range []string{"created by glimpse/internal/consulhttp.(*", "net/http.(*persistConn)"} {
		if k := strings.Count(stacks, bad); k > 0 {
			t.Errorf("%d goroutines with %q while %d requests wait", k, bad, n)
		}
	}
}

func TestBadURL(t *testing.T) {
	tr := New(Options{Network: "tcp", Address: "127.0.0.1:1"})
	if _, err := (&http.Client{Transport: tr}).Get("ftp://x/"); err == nil {
		t.Error("ftp URL accepted")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:1/", nil)
	if _, err := (&http.Client{Transport: tr}).Do(req); err == nil {
		t.Error("a refused connection gave no error")
	}
}

// With MaxConns, requests beyond the cap wait for a connection instead of
// dialling one: 20 concurrent requests on a cap of 3 open at most 3.
func TestMaxConnsCapsConnections(t *testing.T) {
	release := make(chan struct{})
	var inFlight, most atomic.Int64
	s, conns := server(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
		io.WriteString(w, "ok")
	})
	c, tr := client(t, s, Options{MaxConns: 3})
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if got := get(t, c, s.URL+"/"); got != "ok" {
				t.Errorf("got %q", got)
			}
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for inFlight.Load() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if tr.Waits() == 0 {
		// The 17 others queue up; wait until at least one has.
		for tr.Waits() == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	close(release)
	wg.Wait()
	if n := conns.Load(); n > 3 {
		t.Errorf("the server accepted %d connections, cap 3", n)
	}
	if m := most.Load(); m != 3 {
		t.Errorf("at most %d requests were in flight at once, want 3", m)
	}
	if p := tr.Peak(); p != 3 {
		t.Errorf("Peak() = %d, want 3", p)
	}
	if tr.Waits() == 0 {
		t.Error("no request waited for a connection")
	}
	if o := tr.Open(); o > 3 {
		t.Errorf("Open() = %d after the requests, want at most 3", o)
	}
}

// A request waiting for room gives up when its context ends, and says why.
func TestMaxConnsWaitEndsWithContext(t *testing.T) {
	release, entered := make(chan struct{}), make(chan struct{}, 1)
	s, _ := server(t, func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})
	defer close(release)
	c, _ := client(t, s, Options{MaxConns: 1})
	go func() {
		resp, err := c.Get(s.URL + "/")
		if err == nil {
			resp.Body.Close()
		}
	}()
	<-entered // the first request holds the one connection
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/", nil)
	_, err := c.Do(req)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for a connection") {
		t.Fatalf("err = %v, want a deadline while waiting for a connection", err)
	}
}

// Connections closed by errors free their room: a server that drops every
// connection does not leak the count.
func TestMaxConnsCountsClosedConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	tr := New(Options{Network: "tcp", Address: ln.Addr().String(), MaxConns: 2})
	c := &http.Client{Transport: tr}
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
		_, err := c.Do(req)
		cancel()
		if err == nil {
			t.Fatal("a dropped connection answered")
		}
		if strings.Contains(err.Error(), "waiting for a connection") {
			t.Fatalf("request %d waited for room: the count leaked (%v)", i, err)
		}
	}
	if o := tr.Open(); o != 0 {
		t.Errorf("Open() = %d with no connection left, want 0", o)
	}
}

// A 429 is counted, and no new connection is dialled for a moment after it.
func TestTooManyRequestsCoolsDown(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	s, conns := server(t, func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		io.WriteString(w, "ok")
	})
	c, tr := client(t, s, Options{MaxConns: 4})
	resp, err := c.Get(s.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || tr.Throttled() != 1 {
		t.Fatalf("status %d, throttled %d", resp.StatusCode, tr.Throttled())
	}
	refuse.Store(false)
	start := time.Now()
	if got := get(t, c, s.URL+"/"); got != "ok" {
		t.Fatalf("got %q", got)
	}
	if d := time.Since(start); d < coolDown/2 {
		t.Errorf("the next connection was dialled %v after the 429, before the cool-down", d)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}
