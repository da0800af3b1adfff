package httpapi

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Limits of the HTTP listener under abuse.
const (
	// BodyDeadline bounds how long a request's body may take to arrive,
	// from the end of its head: a body trickled byte by byte holds its
	// connection no longer.
	BodyDeadline = 30 * time.Second
	// ProviderBodies is how many provider bodies are read at once on each
	// listener (TCP, socket); ProviderBodyWait how long a write waits for
	// its turn before a 503. Bodies that wait are not read: their bytes
	// stay in the kernel, which stops their senders. So stalled bodies
	// cost at most ProviderBodies × the body limit of memory.
	ProviderBodies   = 4
	ProviderBodyWait = 5 * time.Second
	// fdReserve is kept out of the HTTP connection cap for everything
	// else the agent opens besides Consul's and DNS's connections.
	fdReserve = 256
)

// RaiseFileLimit raises the soft limit of open files to the hard limit and
// returns the new soft limit.
func RaiseFileLimit() (uint64, error) {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 0, err
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
			return 0, err
		}
	}
	return l.Cur, nil
}

// ConnCap is how many HTTP connections may be open at once so that the
// agent never runs out of file descriptors: the soft limit less what
// Consul's connections (consulConns), DNS over TCP (dnsConns) and the rest
// need. At least 64.
func ConnCap(consulConns, dnsConns int) int {
	var l unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &l); err != nil {
		return 1024
	}
	n := int(min(l.Cur, 1<<30)) - consulConns - dnsConns - fdReserve
	return max(n, 64)
}

// limitListener accepts at most n connections open at once; beyond that
// Accept waits for one to close, and new connections wait in the kernel's
// backlog. Reaching the cap is logged, at most once a minute: clients
// then wait, and the operator should know why.
type limitListener struct {
	net.Listener
	sem    chan struct{}
	what   string
	log    *zap.Logger
	logged atomic.Int64 // unix nanoseconds of the last warning
}

func limitListen(l net.Listener, n int, what string, log *zap.Logger) net.Listener {
	if n <= 0 {
		return l
	}
	if log == nil {
		log = zap.NewNop()
	}
	return &limitListener{Listener: l, sem: make(chan struct{}, n), what: what, log: log}
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	default:
		if now, last := time.Now().UnixNano(), l.logged.Load(); now-last > int64(time.Minute) && l.logged.CompareAndSwap(last, now) {
			l.log.Warn("connection cap reached: new connections wait in the kernel's backlog until one closes",
				zap.String("listener", l.what), zap.Int("cap", cap(l.sem)),
				zap.String("why", "the cap keeps the agent within its open files limit (raise LimitNOFILE, or lower -consul.max-conns and -dns.tcp-max-conns, to allow more)"))
		}
		l.sem <- struct{}{}
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitedConn{Conn: c, release: func() { <-l.sem }}, nil
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// watchBody gives a request with a body BodyDeadline to send it, and
// notes whether its handler read it to the end (see drop).
func watchBody(w http.ResponseWriter, r *http.Request) *watchedBody {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return nil
	}
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(BodyDeadline))
	b := &watchedBody{ReadCloser: r.Body}
	r.Body = b
	return b
}

// watchedBody is a request body that knows whether it was read to its end.
type watchedBody struct {
	io.ReadCloser
	eof bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// drop ends the connection of a request whose handler left its body
// unread (a refused write, a body sent where none is wanted) instead of
// letting the server read the rest to reuse the connection: a body
// trickled a byte a second would hold it for the whole BodyDeadline.
func (b *watchedBody) drop(w http.ResponseWriter) {
	if b == nil || b.eof {
		return
	}
	http.NewResponseController(w).SetReadDeadline(time.Now())
}
