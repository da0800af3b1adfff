package dns

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// tcpLimiter is a listener that keeps at most max connections open: a new
// connection beyond that closes one already open, chosen in this order: the
// oldest of those that never sent a byte, else the one quiet longest that is
// not between a query and its answer, else the one quiet longest. A flood of
// idle connections thus costs at most max goroutines and sockets, and a
// client that sends its query at once is still served: it is the idle ones
// that go, not the newcomer (which, waiting in the accept queue, would wait
// for every idle connection ahead of it to time out) nor a query in hand.
type tcpLimiter struct {
	net.Listener
	max int

	mu    sync.Mutex
	conns map[*trackedConn]struct{}

	evicted atomic.Int64
}

func newTCPLimiter(ln net.Listener, max int) *tcpLimiter {
	return &tcpLimiter{Listener: ln, max: max, conns: make(map[*trackedConn]struct{}, min(max, 1024))}
}

func (l *tcpLimiter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, l: l}
	now := time.Now().UnixNano()
	tc.last.Store(now)
	var victim *trackedConn
	l.mu.Lock()
	if len(l.conns) >= l.max {
		victim = l.victim()
		delete(l.conns, victim)
	}
	l.conns[tc] = struct{}{}
	l.mu.Unlock()
	if victim != nil {
		l.evicted.Add(1)
		victim.Conn.Close() // its server goroutine sees the error and ends
	}
	return tc, nil
}

// victim picks the connection to close for a new one; l.mu is held.
func (l *tcpLimiter) victim() *trackedConn {
	const silent, quiet, anyConn = 0, 1, 2
	var best [3]*trackedConn
	for c := range l.conns {
		rank := anyConn
		switch {
		case !c.spoke.Load():
			rank = silent
		case !c.busy.Load():
			rank = quiet
		}
		for r := rank; r <= anyConn; r++ {
			if best[r] == nil || c.last.Load() < best[r].last.Load() {
				best[r] = c
			}
		}
	}
	for _, c := range best {
		if c != nil {
			return c
		}
	}
	return nil
}

// open returns the number of connections held.
func (l *tcpLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// trackedConn records when it was last active and whether a query is in
// hand: busy from bytes read until the next write (the server reads a
// whole query, answers, then reads again).
type trackedConn struct {
	net.Conn
	l      *tcpLimiter
	last   atomic.Int64 // unix nanoseconds of the last read or write
	spoke  atomic.Bool  // it has sent a byte
	busy   atomic.Bool
	closed sync.Once
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
		c.spoke.Store(true)
		c.busy.Store(true)
	}
	return n, err
}

func (c *trackedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.last.Store(time.Now().UnixNano())
	c.busy.Store(false)
	return n, err
}

func (c *trackedConn) Close() error {
	c.closed.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}
