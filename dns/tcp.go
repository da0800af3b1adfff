package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
)

// DNS over TCP, as RFC 7766 asks of a server (§6.2.1):
//
//   - queries pipelined on one connection are read as they come and
//     answered concurrently, each as soon as it is ready, in any order (a
//     local answer never waits behind a remote zone's first query);
//   - a connection is never closed with queries outstanding: the server
//     closes only an idle one (no query for tcpIdle, or none begun within
//     tcpFirst of the connection's start), one whose client stops midway
//     through a message (tcpMessage), one past the connection limit (see
//     tcpLimiter), and, at shutdown, each once its answers are written.
//
// Limits per connection: tcpInFlight queries answered at once (reading
// waits beyond that, which holds the client back through TCP's own flow
// control), and tcpWrite for an answer to be written. There is no limit on
// the number of queries a connection may carry.
const (
	tcpFirst    = 2 * time.Second
	tcpIdle     = 8 * time.Second
	tcpMessage  = 2 * time.Second
	tcpWrite    = 5 * time.Second
	tcpInFlight = 64
)

// tcpServer serves a handler on a listener, one goroutine per connection
// reading and one per query in flight.
type tcpServer struct {
	ln *tcpLimiter
	h  mdns.Handler
	// first and idle are tcpFirst and tcpIdle (shorter in tests).
	first, idle time.Duration

	mu      sync.Mutex
	conns   map[*tcpConn]struct{}
	closing bool
	wg      sync.WaitGroup
}

func newTCPServer(ln *tcpLimiter, h mdns.Handler) *tcpServer {
	return &tcpServer{ln: ln, h: h, first: tcpFirst, idle: tcpIdle, conns: map[*tcpConn]struct{}{}}
}

// serve accepts connections until shutdown (nil) or a listener error.
func (s *tcpServer) serve() error {
	for {
		nc, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(10 * time.Millisecond) // out of descriptors for now: try again
				continue
			}
			return err
		}
		c := &tcpConn{conn: nc, s: s}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// shutdown stops accepting, stops every connection's reading, and waits,
// until ctx ends, for the answers in flight to be written.
func (s *tcpServer) shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()
	err := s.ln.Close()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		return err
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.conn.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// tcpConn is one connection: its reader, and the queries it has in flight.
type tcpConn struct {
	conn net.Conn
	s    *tcpServer

	stopping atomic.Bool
	inflight sync.WaitGroup
	slots    chan struct{}

	wmu sync.Mutex // one answer written at a time
}

// stopReading ends the connection's reading; its reader then waits for
// the answers in flight and closes it.
func (c *tcpConn) stopReading() {
	c.stopping.Store(true)
	_ = c.conn.SetReadDeadline(time.Unix(1, 0))
}

func (c *tcpConn) serve() {
	defer c.s.wg.Done()
	defer func() {
		c.inflight.Wait() // never close with answers to write
		c.conn.Close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	}()
	c.slots = make(chan struct{}, tcpInFlight)
	wait := c.s.first
	var hdr [2]byte
	for !c.stopping.Load() {
		// A message's first byte may take as long as the connection may
		// idle; the rest of it must follow promptly.
		if err := c.conn.SetReadDeadline(time.Now().Add(wait)); err != nil || c.stopping.Load() {
			return
		}
		n, err := io.ReadFull(c.conn, hdr[:1])
		if err != nil {
			if n == 0 && timeout(err) && len(c.slots) > 0 && !c.stopping.Load() {
				continue // answers outstanding: the connection is not idle
			}
			return
		}
		_ = c.conn.SetReadDeadline(time.Now().Add(tcpMessage))
		if _, err := io.ReadFull(c.conn, hdr[1:]); err != nil {
			return
		}
		size := int(binary.BigEndian.Uint16(hdr[:]))
		if size == 0 {
			return // no message is empty: the stream is out of step
		}
		msg := make([]byte, size)
		if _, err := io.ReadFull(c.conn, msg); err != nil {
			return
		}
		wait = c.s.idle
		c.slots <- struct{}{} // waits while tcpInFlight are in flight
		c.inflight.Add(1)
		go func() {
			defer func() { <-c.slots; c.inflight.Done() }()
			serveRaw(c.s.h, msg, &tcpWriter{c: c})
		}()
	}
}

func timeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// tcpWriter is the ResponseWriter of one query of a connection.
type tcpWriter struct {
	c *tcpConn
}

func (w *tcpWriter) LocalAddr() net.Addr  { return w.c.conn.LocalAddr() }
func (w *tcpWriter) RemoteAddr() net.Addr { return w.c.conn.RemoteAddr() }

func (w *tcpWriter) WriteMsg(m *mdns.Msg) error {
	data, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// Write sends one message with its length prefix, in one write, after any
// other answer of the connection being written.
func (w *tcpWriter) Write(b []byte) (int, error) {
	if len(b) > mdns.MaxMsgSize {
		return 0, errors.New("dns: message too large for TCP")
	}
	buf := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(buf, uint16(len(b)))
	copy(buf[2:], b)
	w.c.wmu.Lock()
	defer w.c.wmu.Unlock()
	_ = w.c.conn.SetWriteDeadline(time.Now().Add(tcpWrite))
	if _, err := w.c.conn.Write(buf); err != nil {
		w.c.conn.Close() // a client that does not read its answers
		return 0, err
	}
	return len(b), nil
}

func (w *tcpWriter) Close() error        { return w.c.conn.Close() }
func (w *tcpWriter) TsigStatus() error   { return nil }
func (w *tcpWriter) TsigTimersOnly(bool) {}
func (w *tcpWriter) Hijack()             {}
