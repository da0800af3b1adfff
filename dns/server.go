package dns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Server serves a handler on one address over UDP, with several UDP sockets
// bound with SO_REUSEPORT so the kernel spreads queries over them, and TCP.
type Server struct {
	udp  []*udpServer
	tcp  *tcpServer
	tcpl *tcpLimiter
	addr *net.UDPAddr
	errs chan error
}

// DefaultMaxTCPConns bounds the DNS TCP connections open at once when
// Listen is given no bound.
const DefaultMaxTCPConns = 1000

// Listen binds addr ("host:port"; port 0 picks a free one) for UDP, with
// sockets sockets, and for TCP, with at most maxTCP connections open at once
// (0: DefaultMaxTCPConns): a new connection beyond that closes the one quiet
// longest. Over TCP, pipelined queries are answered concurrently and a
// connection is closed only when idle (see tcp.go for the limits).
//
// The TCP listener is bound first and without SO_REUSEPORT: it makes the
// port ours, so a second agent started on the same port fails to bind
// instead of silently sharing the UDP sockets.
func Listen(addr string, sockets, maxTCP int, h mdns.Handler) (*Server, error) {
	if maxTCP <= 0 {
		maxTCP = DefaultMaxTCPConns
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns: address %q: %w", addr, err)
	}
	tries := 1
	if port == "0" {
		tries = 20 // the UDP port may be taken where TCP's was free
	}
	for {
		s, err := listen(addr, max(sockets, 1), maxTCP, h)
		tries--
		if err == nil || tries == 0 {
			return s, err
		}
	}
}

func listen(addr string, sockets, maxTCP int, h mdns.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dns: listen tcp %s: %w", addr, err)
	}
	s := &Server{errs: make(chan error, sockets+1)}
	pcs, err := ListenUDP(ln.Addr().String(), sockets)
	if err != nil {
		ln.Close()
		return nil, err
	}
	s.addr = pcs[0].LocalAddr().(*net.UDPAddr)
	for _, pc := range pcs {
		s.udp = append(s.udp, newUDPServer(pc, h))
	}
	s.tcpl = newTCPLimiter(ln, maxTCP)
	s.tcp = newTCPServer(s.tcpl, h)
	return s, nil
}

// ListenUDP binds sockets UDP sockets to addr with SO_REUSEPORT, each asking
// for udpReceiveBuffer, as Listen does. It is exported for servers that
// must get the very same sockets (the benchmark's reference servers).
func ListenUDP(addr string, sockets int) ([]*net.UDPConn, error) {
	lc := net.ListenConfig{Control: udpSocketOptions}
	var conns []*net.UDPConn
	for range max(sockets, 1) {
		pc, err := lc.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		conns = append(conns, pc.(*net.UDPConn))
	}
	return conns, nil
}

// Close releases the sockets of a server that was never served.
func (s *Server) Close() {
	_ = s.tcpl.Close()
	for _, u := range s.udp {
		_ = u.conn.Close()
	}
}

// Addr returns the bound address (UDP and TCP share the port).
func (s *Server) Addr() string { return s.addr.String() }

// Serve serves until Shutdown; it returns the first error of any socket.
func (s *Server) Serve() error {
	go func() { s.errs <- s.tcp.serve() }()
	for _, u := range s.udp {
		go func() { s.errs <- u.serve() }()
	}
	return <-s.errs
}

// Shutdown stops accepting queries and waits, until ctx ends, for the
// answers being written.
func (s *Server) Shutdown(ctx context.Context) error {
	errs := make(chan error, len(s.udp)+1)
	go func() { errs <- s.tcp.shutdown(ctx) }()
	for _, u := range s.udp {
		go func() { errs <- u.shutdown(ctx) }()
	}
	var all []error
	for range len(s.udp) + 1 {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	return errors.Join(all...)
}

// udpReceiveBuffer is the receive buffer asked for each UDP socket, so that
// a burst of queries (a resolver's cache expiring at once) waits in the
// kernel rather than being dropped; Linux caps it at net.core.rmem_max.
const udpReceiveBuffer = 4 << 20

// udpSocketOptions sets SO_REUSEPORT and asks for udpReceiveBuffer.
func udpSocketOptions(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		if serr == nil {
			// Best effort: a smaller buffer is not a reason to fail.
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpReceiveBuffer)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
