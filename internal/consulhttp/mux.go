package consulhttp

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Multiplexing over HTTP/2.
//
// Consul serves HTTP/2 on its HTTPS listener (negotiated in the TLS
// handshake), where one connection carries many requests at once: up to the
// server's SETTINGS_MAX_CONCURRENT_STREAMS, 250 for Consul. Its per-client
// limit counts connections, not requests, so over HTTPS the same connection
// budget holds a hundred times the blocking reads it holds over HTTP/1.1.
//
// A Transport for an https address therefore keeps a pool of client
// connections (net/http's ClientConn), each negotiated by ALPN: HTTP/2 when
// the server offers it, HTTP/1.1 (one request at a time) when not. A
// request takes a slot on the first connection that has one, so requests
// pack onto as few connections as they need; when none has, one new
// connection is dialled at a time, within MaxConns; when there is no room
// either, the request waits for a slot to free up. A connection that dies
// (closed by Consul, a lost ping, idle for too long) leaves the pool by
// itself.

// pingEvery is how long a multiplexed connection may stay silent before a
// ping checks it; pingTimeout how long the answer may take before the
// connection is closed as dead. Blocking reads keep a connection silent for
// their whole wait, so a dead one is only found this way.
const (
	pingEvery   = 30 * time.Second
	pingTimeout = 15 * time.Second
)

// maxStreams is the most requests put on one HTTP/2 connection at once:
// the least that HTTP/2 asks every server to allow (RFC 9113 §6.5.2).
// Consul allows 250; keeping to 100 needs no reading of the server's
// settings, which arrive after the connection is in use, and leaves
// headroom. A connection counts its own requests against it, from the
// choice of connection to the end of the response body.
const maxStreams = 100

// newMux returns the net/http transport that dials and negotiates the
// multiplexed connections; its own pool is never used. It asks for no
// compression: the Consul agent is on the same host, and gzip cost it about
// 0.2 ms of CPU per read of a product of 20 instances, and glimpse more to
// undo (the HTTP/1.1 transport never asked for it).
func newMux(o Options) *http.Transport {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	d := net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, o.Network, o.Address)
		},
		TLSClientConfig:     o.TLS.Clone(),
		TLSHandshakeTimeout: dialTimeout,
		IdleConnTimeout:     idleTimeout,
		Protocols:           &p,
		HTTP2:               &http.HTTP2Config{SendPingTimeout: pingEvery, PingTimeout: pingTimeout},
		DisableCompression:  true,
	}
}

// muxConn is a pooled connection and the requests this transport has on
// it. The count is kept here rather than read from the connection, so that
// a request and the response body that ends it are matched exactly.
type muxConn struct {
	cc *http.ClientConn
	// inFlight counts the requests sent (or about to be) whose response
	// body has not ended; guarded by Transport.mu.
	inFlight int
	dead     bool // left the pool; guarded by Transport.mu
	// limit is how many requests it carries at once: maxStreams over
	// HTTP/2, 1 over HTTP/1.1.
	limit int
}

// roundTripMux sends req on a pooled connection.
func (t *Transport) roundTripMux(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for retried := false; ; retried = true {
		c, err := t.take(ctx)
		if err != nil {
			closeBody(req)
			return nil, err
		}
		resp, err := c.cc.RoundTrip(req)
		if err == nil {
			if resp.StatusCode == http.StatusTooManyRequests {
				t.cool()
			}
			resp.Body = &muxBody{ReadCloser: resp.Body, t: t, c: c}
			return resp, nil
		}
		t.release(c)
		if ctx.Err() != nil {
			return nil, ctxErr(ctx, err)
		}
		// A connection that died between the choice and the request
		// (Consul closed it, a GOAWAY): send the request again once, on
		// another connection, if that cannot do it twice.
		if retried || c.cc.Err() == nil || !idempotent(req) {
			return nil, err
		}
		if req, err = rewind(req); err != nil {
			return nil, err
		}
	}
}

// cool stops new connections for coolDown after a 429.
func (t *Transport) cool() {
	t.throttled.Add(1)
	t.mu.Lock()
	t.coolUntil = time.Now().Add(coolDown)
	t.mu.Unlock()
}

// take returns a pooled connection with room for one more request, counted
// in its inFlight, or a new one when every pooled one is full and there is
// room for another; otherwise it waits until ctx ends.
func (t *Transport) take(ctx context.Context) (*muxConn, error) {
	waited := false
	for {
		now := time.Now()
		t.mu.Lock()
		for _, c := range t.conns {
			if c.inFlight < c.limit {
				c.inFlight++
				t.mu.Unlock()
				return c, nil
			}
		}
		// One dial at a time: the requests waiting meanwhile may all fit
		// on the connection it brings.
		claimed, cooling := false, now.Before(t.coolUntil)
		if !t.dialing {
			claimed, cooling = t.claimLocked(now)
		}
		if claimed {
			t.dialing = true
			t.mu.Unlock()
			err := t.dialMux(ctx)
			t.mu.Lock()
			t.dialing = false
			if err != nil {
				t.open--
			}
			t.signal()
			t.mu.Unlock()
			if err != nil {
				return nil, err
			}
			continue // the new connection is in the pool: take room in turn
		}
		if err := t.waitLocked(ctx, now, cooling, &waited); err != nil {
			return nil, err
		}
	}
}

// release ends a request on c: its room goes to a waiting request, and a
// connection found dead leaves the pool.
func (t *Transport) release(c *muxConn) {
	dead := c.cc.Err() != nil
	t.mu.Lock()
	c.inFlight--
	if dead {
		t.dropLocked(c)
	}
	t.signal()
	t.mu.Unlock()
}

// dialMux dials a connection and adds it to the pool. The connection
// counts in t.open from the caller's reservation until it leaves the pool.
func (t *Transport) dialMux(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	cc, err := t.h.NewClientConn(ctx, "https", t.o.Address)
	if err != nil {
		return err
	}
	// Fresh and not yet shared, the connection tells its protocol by how
	// many requests it takes: one for HTTP/1.1, 100 for HTTP/2 until the
	// server's settings say otherwise.
	c := &muxConn{cc: cc, limit: min(maxStreams, max(1, cc.Available()))}
	t.mu.Lock()
	t.conns = append(slices.Clip(t.conns), c)
	t.mu.Unlock()
	// The hook tells of a connection that dies while no request of ours
	// runs on it (closed by Consul, idle for too long, a lost ping), and
	// of a raised stream limit (the server's settings).
	cc.SetStateHook(func(cc *http.ClientConn) {
		dead := cc.Err() != nil
		t.mu.Lock()
		if dead {
			t.dropLocked(c)
		}
		t.signal()
		t.mu.Unlock()
	})
	return nil
}

// dropLocked takes c out of the pool, and out of the count of open
// connections, once. Called with t.mu held.
func (t *Transport) dropLocked(c *muxConn) {
	if c.dead {
		return
	}
	c.dead = true
	if i := slices.Index(t.conns, c); i >= 0 {
		t.conns = slices.Delete(slices.Clone(t.conns), i, i+1)
	}
	t.open--
}

// muxBody is a response body; its end makes room for another request.
type muxBody struct {
	io.ReadCloser
	t    *Transport
	c    *muxConn
	once sync.Once
}

func (b *muxBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.once.Do(func() { b.t.release(b.c) })
	}
	return n, err
}

func (b *muxBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(func() { b.t.release(b.c) })
	return err
}

// Streams reports how many requests one connection carries at once: the
// most any pooled connection allows (the server's HTTP/2 stream limit), 1
// for HTTP/1.1, 0 while no connection is open.
func (t *Transport) Streams() int {
	if t.h == nil {
		return 1
	}
	t.mu.Lock()
	conns := t.conns
	t.mu.Unlock()
	n := 0
	for _, c := range conns {
		n = max(n, c.limit)
	}
	return n
}

// closeIdleMux closes the pooled connections carrying no request.
func (t *Transport) closeIdleMux() {
	t.mu.Lock()
	var idle []*http.ClientConn
	for _, c := range t.conns {
		if c.inFlight == 0 {
			idle = append(idle, c.cc)
		}
	}
	t.mu.Unlock()
	for _, cc := range idle {
		cc.Close()
	}
}

// tlsFor returns o.TLS with the server name to verify set.
func tlsFor(o Options) *tls.Config {
	if o.TLS == nil || o.TLS.ServerName != "" || o.Network != "tcp" {
		return o.TLS
	}
	c := o.TLS.Clone()
	c.ServerName, _, _ = net.SplitHostPort(o.Address)
	return c
}
