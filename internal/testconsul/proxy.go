package testconsul

import (
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"
)

// Fault makes a CountingProxy misbehave. The zero Fault forwards requests
// normally. Delay combines with the others: a request is held for Delay,
// then failed (CloseConn or Status) or forwarded.
type Fault struct {
	// Delay holds each request this long before handling it further. A
	// request whose client gives up meanwhile is dropped.
	Delay time.Duration

	// Status, when not zero, answers each request with this HTTP status
	// code (500, say) and a short text body instead of forwarding it.
	Status int

	// CloseConn closes the client's connection without a response instead
	// of forwarding the request. It takes precedence over Status. Note that
	// Go's HTTP client retries a GET once by itself when a connection it
	// reused from its pool is closed that way, so one call of the client may
	// count as two requests.
	CloseConn bool
}

// CountingProxy is an HTTP reverse proxy on 127.0.0.1 in front of a Consul
// HTTP address. It counts the requests it receives, including those a Fault
// fails. It streams responses as they come (blocking queries work) and is
// safe for concurrent use.
type CountingProxy struct {
	srv    *http.Server
	ln     net.Listener
	rp     *httputil.ReverseProxy
	tr     *http.Transport
	closed chan struct{}

	mu       sync.Mutex
	isClosed bool
	inflight sync.WaitGroup // handlers running; Add only under mu
	total    int64
	byPath   map[string]int64
	waits    map[string][]string // the wait of each blocking request, by path
	fault    Fault
}

// NewCountingProxy starts a CountingProxy in front of target (a "host:port"
// such as Agent.HTTPAddr) and closes it at the end of the test. It fails the
// test on error.
func NewCountingProxy(tb testing.TB, target string) *CountingProxy {
	tb.Helper()
	p, err := NewCountingProxyE(target)
	if err != nil {
		tb.Fatalf("testconsul: %v", err)
	}
	tb.Cleanup(p.Close)
	return p
}

// NewCountingProxyE starts a CountingProxy in front of target (a "host:port"
// such as Agent.HTTPAddr). The caller must Close it.
func NewCountingProxyE(target string) (*CountingProxy, error) {
	u, err := url.Parse("http://" + target)
	if err != nil || u.Host != target {
		return nil, fmt.Errorf("counting proxy: bad target %q: want host:port", target)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(clientAddr, "0"))
	if err != nil {
		return nil, fmt.Errorf("counting proxy: %w", err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	// An agent holds one blocking request per product: keep them all pooled.
	tr.MaxIdleConnsPerHost = 4096
	// Forward what the client asked for, no more: net/http would otherwise
	// ask Consul for gzip on the client's behalf and unpack it here, so
	// Consul would compress every answer for a client that never asked.
	tr.DisableCompression = true
	p := &CountingProxy{
		ln:     ln,
		tr:     tr,
		closed: make(chan struct{}),
		byPath: map[string]int64{},
		waits:  map[string][]string{},
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(u) },
		Transport:     tr,
		FlushInterval: -1, // write each chunk as soon as it arrives
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client went away: nobody to answer
			}
			http.Error(w, "counting proxy: "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serveHTTP)}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

// serveHTTP counts the request, applies the fault, then forwards.
func (p *CountingProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		http.Error(w, "counting proxy closed", http.StatusServiceUnavailable)
		return
	}
	p.inflight.Add(1)
	defer p.inflight.Done()
	p.total++
	p.byPath[r.URL.Path]++
	if q := r.URL.Query(); q.Has("index") && q.Has("wait") {
		p.waits[r.URL.Path] = append(p.waits[r.URL.Path], q.Get("wait"))
	}
	f := p.fault
	p.mu.Unlock()

	if f.Delay > 0 {
		timer := time.NewTimer(f.Delay)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		case <-p.closed:
			timer.Stop()
			return
		}
	}
	switch {
	case f.CloseConn:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(http.ErrAbortHandler) // closes the connection too
		}
		conn.Close()
	case f.Status != 0:
		http.Error(w, fmt.Sprintf("counting proxy: injected fault %d", f.Status), f.Status)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

// Addr returns the proxy's address, "127.0.0.1:port", to use as a Consul
// HTTP address (for example with Agent.ClientAt).
func (p *CountingProxy) Addr() string { return p.ln.Addr().String() }

// Count returns how many requests the proxy has received.
func (p *CountingProxy) Count() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.total
}

// CountByPath returns how many requests the proxy has received per URL path
// (without the query string), such as "/v1/health/service/web".
func (p *CountingProxy) CountByPath() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.byPath)
}

// Waits returns the wait asked for by each blocking request (one with an
// index) to path so far, in the order they came, as Consul's api sends
// them ("60000ms").
func (p *CountingProxy) Waits(path string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.waits[path])
}

// ResetCounts sets all the counts, and the waits, back to zero.
func (p *CountingProxy) ResetCounts() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.total = 0
	clear(p.byPath)
	clear(p.waits)
}

// SetFault makes the proxy apply f to the requests it receives from now on.
// Requests already received keep the fault they arrived under. SetFault(Fault{})
// returns to normal forwarding.
func (p *CountingProxy) SetFault(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
}

// Close stops the proxy: it closes the listener and every connection
// (blocking queries in flight end with an error) and waits for the request
// handlers to return. Close may be called more than once.
func (p *CountingProxy) Close() {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return
	}
	p.isClosed = true
	close(p.closed)
	p.mu.Unlock()

	_ = p.srv.Close()
	_ = p.ln.Close() // in case Serve has not started yet
	p.inflight.Wait()
	p.tr.CloseIdleConnections()
}
