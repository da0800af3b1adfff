// Package consulhttp is the HTTP transport between glimpse-agent and its
// Consul agent.
//
// glimpse holds one blocking query per product open at all times, so a
// fleet of 5,000 products keeps 5,000 requests waiting in Consul. Go's
// http.Transport runs two goroutines per connection (a read loop and a write
// loop) besides the caller's, with their buffers and channels; across
// thousands of idle blocking queries that is most of the agent's memory.
// Transport does each exchange on the caller's goroutine instead: it writes
// the request and reads the response on a pooled connection, and nothing
// runs while a query waits but the caller, parked in its read.
//
// It speaks HTTP/1.1 over TCP or a Unix socket, reuses connections and
// honours the request's context. Over TLS (an https Consul address) it
// negotiates HTTP/2 and carries many requests on each connection (see
// mux.go). It does not follow proxies, which the Consul agent's HTTP API
// does not need.
//
// The Consul agent limits the connections of each client address
// (limits.http_max_conns_per_client, 200 by default), and every Consul client
// on a host shares that budget. Options.MaxConns caps what this transport
// holds: a request finding no idle connection and no room waits for one. A
// 429 from Consul (its answer to a connection over the limit) stops new
// connections for a second, so that a host over its budget is not hammered
// with refused connections.
package consulhttp

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Options configure a Transport.
type Options struct {
	// Network and Address to dial: "tcp" and host:port, or "unix" and a
	// socket path.
	Network, Address string
	// TLS, when set, wraps each connection (for an https Consul address).
	// Without a ServerName, the host of Address is verified.
	TLS *tls.Config
	// MaxConns caps the connections open (or being dialled) at once; 0
	// means no cap.
	MaxConns int
}

// Limits of the transport.
const (
	// maxIdle bounds the idle connections kept for reuse: a watcher's
	// connection must not be closed for lack of room.
	maxIdle = 1 << 16
	// idleTimeout closes a connection idle for longer.
	idleTimeout = 90 * time.Second
	// dialTimeout bounds connecting (and the TLS handshake).
	dialTimeout = 10 * time.Second
	// readBufferSize is each connection's read buffer. Responses are
	// decoded as they stream, so it need only hold a header line.
	readBufferSize = 2048
	// coolDown is how long no new connection is dialled after Consul
	// answered 429 Too Many Requests.
	coolDown = time.Second
)

// Transport is an http.RoundTripper that runs each exchange on the calling
// goroutine. A response's body must be read to its end or closed; then its
// connection goes back to the pool. Read and Close of one body must not run
// concurrently.
type Transport struct {
	o Options

	mu   sync.Mutex
	idle []*conn // a stack: the most recently used on top, the oldest at the bottom
	// open counts the connections open or being dialled, against
	// o.MaxConns; peak is its highest value.
	open, peak int
	// freed is closed and replaced when a connection goes idle or closes:
	// requests waiting for room wake up.
	freed chan struct{}
	// coolUntil is when new connections may be dialled again after a 429.
	coolUntil time.Time

	waits, throttled atomic.Uint64

	// h dials the multiplexed connections of an https address, nil
	// otherwise; conns are those connections (copied on write, guarded by
	// mu), and dialing is set while one is being dialled.
	h       *http.Transport
	conns   []*muxConn
	dialing bool
}

// New returns a Transport for o.
func New(o Options) *Transport {
	o.TLS = tlsFor(o)
	t := &Transport{o: o, freed: make(chan struct{})}
	if o.TLS != nil && o.Network == "tcp" {
		t.h = newMux(o)
	}
	return t
}

// conn is one connection to Consul.
type conn struct {
	net.Conn
	t         *Transport
	closed    bool         // counted out of t.open; guarded by t.mu
	raw       syscall.Conn // the socket under TLS, for the liveness check
	br        *bufio.Reader
	read      int64 // bytes read, to tell a dead idle connection from a failed answer
	idleSince time.Time
}

// Close closes the connection and makes room for another.
func (c *conn) Close() error {
	t := c.t
	t.mu.Lock()
	if !c.closed {
		c.closed = true
		t.open--
		t.signal()
	}
	t.mu.Unlock()
	return c.Conn.Close()
}

// signal wakes the requests waiting for a connection. Called with t.mu held.
func (t *Transport) signal() {
	close(t.freed)
	t.freed = make(chan struct{})
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	return n, err
}

// alive reports whether an idle connection can carry another request: the
// peer has not closed it and sent nothing unasked. One non-blocking peek at
// the socket.
func (c *conn) alive() bool {
	if c.br.Buffered() > 0 {
		return false
	}
	if c.raw == nil {
		return true
	}
	rc, err := c.raw.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr := unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		ok = rerr == unix.EAGAIN || rerr == unix.EWOULDBLOCK
		return true // never wait for readiness
	})
	return err == nil && ok
}

// writers are shared by all connections: a request is written at once.
var writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1024) }}

// RoundTrip implements http.RoundTripper.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil || (req.URL.Scheme != "http" && req.URL.Scheme != "https") {
		closeBody(req)
		return nil, fmt.Errorf("consulhttp: unsupported URL %v", req.URL)
	}
	ctx := req.Context()
	if err := ctx.Err(); err != nil {
		closeBody(req)
		return nil, err
	}
	if t.h != nil {
		return t.roundTripMux(req)
	}
	for retried := false; ; retried = true {
		c, reused, err := t.get(ctx)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		before := c.read
		resp, wrote, err := t.exchange(req, c)
		if err == nil {
			return resp, nil
		}
		c.Close()
		if ctx.Err() != nil {
			closeBody(req)
			return nil, ctxErr(ctx, err)
		}
		// A reused connection the server closed in the meantime fails
		// before anything comes back: send the request again, on a new
		// connection, if that cannot do it twice (as net/http does).
		nothingBack := c.read == before
		if retried || !reused || !nothingBack || !(wrote == 0 || idempotent(req)) {
			closeBody(req)
			return nil, err
		}
		if req, err = rewind(req); err != nil {
			return nil, err
		}
	}
}

// exchange writes req on c and reads the response's head. wrote is the
// number of bytes the request put on the wire (0: the server saw nothing).
func (t *Transport) exchange(req *http.Request, c *conn) (_ *http.Response, wrote int, _ error) {
	ctx := req.Context()
	// A context that ends unblocks whatever read or write is under way.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	cw := &countingWriter{w: c.Conn}
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(cw)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	if err != nil {
		stop()
		return nil, cw.n, err
	}
	resp, err := http.ReadResponse(c.br, req)
	if err != nil {
		stop()
		return nil, cw.n, err
	}
	if resp.StatusCode == http.StatusTooManyRequests {
		t.cool()
	}
	resp.Body = &body{rc: resp.Body, c: c, t: t, ctx: ctx, stop: stop, close: resp.Close || req.Close}
	return resp, cw.n, nil
}

// get returns an idle connection that is still alive, or a new one when
// there is room for it; otherwise it waits for one until ctx ends.
func (t *Transport) get(ctx context.Context) (*conn, bool, error) {
	waited := false
	for {
		now := time.Now()
		t.mu.Lock()
		if n := len(t.idle); n > 0 {
			c := t.idle[n-1]
			t.idle[n-1] = nil
			t.idle = t.idle[:n-1]
			t.mu.Unlock()
			if now.Sub(c.idleSince) < idleTimeout && c.alive() {
				return c, true, nil
			}
			c.Close() // makes room for the next turn
			continue
		}
		claimed, cooling := t.claimLocked(now)
		if claimed {
			t.mu.Unlock()
			c, err := t.dial(ctx)
			if err != nil {
				t.mu.Lock()
				t.open--
				t.signal()
				t.mu.Unlock()
			}
			return c, false, err
		}
		if err := t.waitLocked(ctx, now, cooling, &waited); err != nil {
			return nil, false, err
		}
	}
}

// claimLocked counts one more connection in t.open if the budget has room
// and no cool-down after a 429 runs; it reports whether it did, and
// whether the cool-down runs. Called with t.mu held.
func (t *Transport) claimLocked(now time.Time) (claimed, cooling bool) {
	if now.Before(t.coolUntil) {
		return false, true
	}
	if t.o.MaxConns > 0 && t.open >= t.o.MaxConns {
		return false, false
	}
	t.open++
	t.peak = max(t.peak, t.open)
	return true, false
}

// waitLocked releases t.mu and waits for room: a connection freed, the
// cool-down's end, or ctx's end (an error). The first wait of a request
// is counted in Waits. Called with t.mu held.
func (t *Transport) waitLocked(ctx context.Context, now time.Time, cooling bool, waited *bool) error {
	freed, until := t.freed, t.coolUntil
	t.mu.Unlock()
	if !*waited {
		*waited = true
		t.waits.Add(1)
	}
	if err := waitFor(ctx, freed, cooling, until.Sub(now)); err != nil {
		return fmt.Errorf("consulhttp: waiting for a connection (at most %d): %w", t.o.MaxConns, err)
	}
	return nil
}

// waitFor waits for freed to close, for d to pass if cooling, or for ctx
// to end (its error).
func waitFor(ctx context.Context, freed <-chan struct{}, cooling bool, d time.Duration) error {
	var wake <-chan time.Time
	if cooling {
		timer := time.NewTimer(d)
		defer timer.Stop()
		wake = timer.C
	}
	select {
	case <-freed:
	case <-wake:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (t *Transport) dial(ctx context.Context) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, t.o.Network, t.o.Address)
	if err != nil {
		return nil, err
	}
	c := &conn{Conn: nc, t: t}
	c.raw, _ = nc.(syscall.Conn)
	if t.o.TLS != nil {
		tc := tls.Client(nc, t.o.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		c.Conn = tc
	}
	c.br = bufio.NewReaderSize(c, readBufferSize)
	return c, nil
}

// put returns c to the pool, dropping connections idle for too long from
// the bottom of the stack and c itself when the pool is full.
func (t *Transport) put(c *conn) {
	now := time.Now()
	c.idleSince = now
	var drop []*conn
	t.mu.Lock()
	stale := 0
	for stale < len(t.idle) && now.Sub(t.idle[stale].idleSince) >= idleTimeout {
		stale++
	}
	if stale > 0 {
		drop = append(drop, t.idle[:stale]...)
		n := copy(t.idle, t.idle[stale:])
		clear(t.idle[n:])
		t.idle = t.idle[:n]
	}
	if len(t.idle) < maxIdle {
		t.idle = append(t.idle, c)
		t.signal()
	} else {
		drop = append(drop, c)
	}
	t.mu.Unlock()
	for _, c := range drop {
		c.Close()
	}
}

// CloseIdleConnections closes the connections not carrying a request.
func (t *Transport) CloseIdleConnections() {
	if t.h != nil {
		t.closeIdleMux()
		return
	}
	t.mu.Lock()
	idle := t.idle
	t.idle = nil
	t.mu.Unlock()
	for _, c := range idle {
		c.Close()
	}
}

// Open reports the connections open or being dialled.
func (t *Transport) Open() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}

// Peak reports the most connections that were open at once.
func (t *Transport) Peak() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.peak
}

// Waits counts the requests that found no idle connection and no room for
// a new one, and waited.
func (t *Transport) Waits() uint64 { return t.waits.Load() }

// Throttled counts the responses that were 429 Too Many Requests.
func (t *Transport) Throttled() uint64 { return t.throttled.Load() }

// MaxConns returns the cap on open connections, 0 for none.
func (t *Transport) MaxConns() int { return t.o.MaxConns }

// Idle reports the number of pooled connections carrying no request.
func (t *Transport) Idle() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.h != nil {
		n := 0
		for _, c := range t.conns {
			if c.inFlight == 0 {
				n++
			}
		}
		return n
	}
	return len(t.idle)
}

// body is a response body; at its end its connection goes back to the pool.
type body struct {
	rc    io.ReadCloser
	c     *conn
	t     *Transport
	ctx   context.Context
	stop  func() bool
	close bool // the connection is not to be reused
	done  bool
	eof   bool // read to its end
}

var errBodyClosed = errors.New("consulhttp: read on closed response body")

func (b *body) Read(p []byte) (int, error) {
	if b.done {
		if b.eof {
			return 0, io.EOF
		}
		return 0, errBodyClosed
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.eof = true
		b.finish(true)
	case err != nil:
		b.finish(false)
		err = ctxErr(b.ctx, err)
	}
	return n, err
}

// Close drains what is left of a short body, if it comes at once, so that
// its connection can be reused; a long or slow rest is not worth waiting
// for, and the connection is closed.
func (b *body) Close() error {
	if b.done {
		return nil
	}
	b.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := io.CopyN(io.Discard, b.rc, 4096)
	ok := err == io.EOF && b.c.SetReadDeadline(time.Time{}) == nil
	b.finish(ok)
	return nil
}

func (b *body) finish(ok bool) {
	b.done = true
	// stop fails when the context has ended and its deadline may be set on
	// the connection already.
	if !b.stop() || b.close || b.c.br.Buffered() > 0 {
		ok = false
	}
	if ok {
		b.t.put(b.c)
	} else {
		b.c.Close()
	}
}

type countingWriter struct {
	w io.Writer
	n int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += n
	return n, err
}

// ctxErr returns the context's error for an I/O error caused by its end
// (the deadline set to unblock the exchange), err otherwise.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

func idempotent(req *http.Request) bool {
	switch req.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// rewind returns req with a fresh body for a second attempt.
func rewind(req *http.Request) (*http.Request, error) {
	if req.Body == nil || req.Body == http.NoBody {
		return req, nil
	}
	if req.GetBody == nil {
		req.Body.Close()
		return nil, errors.New("consulhttp: connection lost and the request body cannot be sent again")
	}
	b, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Body = b
	return r, nil
}
