package dns

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// tcpLimiter is a listener that keeps at most max connections open: a new
// connection beyond that closes the one that has been quiet longest. A
// flood of idle connections thus costs at most max goroutines and sockets,
// and a client that sends its query at once is still served: it is the
// idle ones that go, not the newcomer (which, waiting in the accept queue,
// would wait for every idle connection ahead of it to time out).
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
		oldest := now + 1
		for o := range l.conns {
			if t := o.last.Load(); t < oldest {
				victim, oldest = o, t
			}
		}
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

// open returns the number of connections held.
func (l *tcpLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// trackedConn records when it last received bytes.
type trackedConn struct {
	net.Conn
	l      *tcpLimiter
	last   atomic.Int64 // unix nanoseconds
	closed sync.Once
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
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
