package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sync/errgroup"
)

// udpServer answers queries on one UDP socket with a fixed set of worker
// goroutines, each reading a query and answering it itself.
//
// miekg/dns's own Server starts a goroutine per query. On a loaded agent
// that costs more than the answer (a prepared answer is a copy), and with
// few CPUs the Go scheduler then runs the newest queries first, so under a
// burst the oldest wait longest: measured with dnsperf on one CPU, its
// p99 latency at half load was several milliseconds and its maximum rate
// about 60 % of this loop's (bench/RESULTS.md). Here the kernel queue is
// read in order by whichever worker is free, and nothing is allocated for
// the dispatch.
//
// A handler that waits (the first query of a remote zone waits for its
// sync) holds its worker; when every worker but the reading one is busy,
// that one hands its query to a new goroutine instead, so the socket is
// always read and a slow zone never stalls the others.
type udpServer struct {
	conn    *net.UDPConn
	h       mdns.Handler
	workers int32
	// wildcard is set when the socket is bound to 0.0.0.0 or ::: each
	// answer then goes out from the address its query came to, which
	// costs a control message per packet; a socket bound to one address
	// (the default, 127.0.0.1) needs none.
	wildcard bool

	busy     atomic.Int32   // workers answering a query
	inflight sync.WaitGroup // answers handed to goroutines of their own
	closing  atomic.Bool
	done     chan struct{} // closed when every worker has returned

	mu      sync.Mutex // orders serve's start against shutdown
	started bool
}

// udpWorkers is the worker count per socket.
func udpWorkers() int32 { return int32(max(16, 4*runtime.GOMAXPROCS(0))) }

func newUDPServer(conn *net.UDPConn, h mdns.Handler) *udpServer {
	u := &udpServer{conn: conn, h: h, workers: udpWorkers(), done: make(chan struct{})}
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && la.IP.IsUnspecified() {
		u.wildcard = true
		// The destination address of each query. Either family may
		// fail; that family then has no such queries.
		_ = ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
		_ = ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
	return u
}

// serve runs the workers until shutdown (nil) or a read error (returned).
func (u *udpServer) serve() error {
	u.mu.Lock()
	if u.closing.Load() {
		u.mu.Unlock()
		return nil
	}
	u.started = true
	u.mu.Unlock()
	var g errgroup.Group
	for range u.workers {
		g.Go(u.work)
	}
	err := g.Wait()
	close(u.done)
	return err
}

func (u *udpServer) work() error {
	buf := make([]byte, maxUDPSize)
	w := &udpWriter{conn: u.conn} // reused: a handler is done with it when it returns
	for {
		var (
			n   int
			err error
		)
		w.sess = nil
		if u.wildcard {
			n, w.sess, err = mdns.ReadFromSessionUDP(u.conn, buf)
		} else {
			n, w.to, err = u.conn.ReadFromUDPAddrPort(buf)
		}
		if err != nil {
			if u.closing.Load() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Anything else (a timeout, a transient error such as
			// ENOBUFS) must not stop this worker: the socket would be
			// served by fewer and fewer of them.
			time.Sleep(time.Millisecond)
			continue
		}
		pkt := buf[:n]
		if u.busy.Add(1) >= u.workers {
			// The last free worker: answer on the side and keep reading.
			u.busy.Add(-1)
			pkt = append([]byte(nil), pkt...)
			side := &udpWriter{conn: u.conn, sess: w.sess, to: w.to}
			u.inflight.Add(1)
			go func() {
				defer u.inflight.Done()
				serveRaw(u.h, pkt, side)
			}()
			continue
		}
		serveRaw(u.h, pkt, w) // shutdown waits for the workers themselves (done)
		u.busy.Add(-1)
	}
}

// qrBit is the QR (response) bit of a header's flags.
const qrBit = 1 << 15

// ignored reports whether a packet gets no answer at all: one without a
// full header (any reply could serve amplification), or a response.
func ignored(pkt []byte) bool {
	return len(pkt) < 12 || (uint16(pkt[2])<<8)&qrBit != 0
}

// serveRaw handles one query packet as miekg/dns's server would: an ignored
// packet gets nothing, one that does not parse gets FORMERR.
func serveRaw(h mdns.Handler, pkt []byte, w mdns.ResponseWriter) {
	if ignored(pkt) {
		return
	}
	req := new(mdns.Msg)
	if err := req.Unpack(pkt); err != nil {
		hdr := new(mdns.Msg)
		hdr.Id = uint16(pkt[0])<<8 | uint16(pkt[1])
		hdr.Opcode = int(pkt[2]>>3) & 0xF
		m := new(mdns.Msg)
		m.SetRcodeFormatError(hdr)
		m.Zero = false
		m.RecursionDesired = pkt[2]&0x01 != 0
		m.CheckingDisabled = pkt[3]&0x10 != 0
		_ = w.WriteMsg(m)
		return
	}
	h.ServeDNS(w, req)
}

// shutdown stops reading and waits, until ctx ends, for the answers in
// flight.
func (u *udpServer) shutdown(ctx context.Context) error {
	u.mu.Lock()
	u.closing.Store(true)
	started := u.started
	u.mu.Unlock()
	if !started {
		return u.conn.Close()
	}
	_ = u.conn.SetReadDeadline(time.Now()) // wakes the readers
	answered := make(chan struct{})
	go func() {
		<-u.done
		u.inflight.Wait()
		close(answered)
	}()
	select {
	case <-answered:
		return u.conn.Close()
	case <-ctx.Done():
		u.conn.Close()
		return ctx.Err()
	}
}

// udpWriter is the mdns.ResponseWriter of a UDP query: sess on a wildcard
// socket, else to.
type udpWriter struct {
	conn *net.UDPConn
	sess *mdns.SessionUDP
	to   netip.AddrPort
}

func (w *udpWriter) LocalAddr() net.Addr { return w.conn.LocalAddr() }

func (w *udpWriter) RemoteAddr() net.Addr {
	if w.sess != nil {
		return w.sess.RemoteAddr()
	}
	return net.UDPAddrFromAddrPort(w.to)
}

func (w *udpWriter) WriteMsg(m *mdns.Msg) error {
	data, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

func (w *udpWriter) Write(b []byte) (int, error) {
	if w.sess != nil {
		return mdns.WriteToSessionUDP(w.conn, b, w.sess)
	}
	return w.conn.WriteToUDPAddrPort(b, w.to)
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}
