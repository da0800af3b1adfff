package dns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// udpServer answers queries on one UDP socket with one goroutine that
// reads a query and answers it itself, then reads the next.
//
// miekg/dns's own Server starts a goroutine per query. On a loaded agent
// that costs more than the answer (a prepared answer is a copy), and with
// few CPUs the Go scheduler then runs the newest queries first, so under a
// burst the oldest wait longest: measured with dnsperf on one CPU, its
// p99 latency at half load was several milliseconds and its maximum rate
// about 60 % of this loop's (bench/RESULTS.md). A pool of workers sharing
// the socket did better, but they queued on the socket's lock and the
// scheduler handed the CPU from one to the next; one reader per socket
// (Listen opens one socket per CPU) answers in the kernel's order with no
// hand-off at all.
//
// A handler that waits (the first query of a remote zone waits for its
// sync) calls Detach on its ResponseWriter first: another goroutine takes
// over the reading, and the waiting one ends with its answer. A slow zone
// never stalls the socket.
type udpServer struct {
	conn *net.UDPConn
	h    mdns.Handler
	// wildcard is set when the socket is bound to 0.0.0.0 or ::: each
	// answer then goes out from the address its query came to, which
	// costs a control message per packet; a socket bound to one address
	// (the default, 127.0.0.1) needs none.
	wildcard bool

	inflight sync.WaitGroup // detached handlers still answering
	closing  atomic.Bool
	// stopped receives, once, why the reading ended: nil at shutdown, or
	// the socket's error.
	stopped chan error
	done    chan struct{} // closed when the reading has ended

	mu      sync.Mutex // orders serve's start against shutdown
	started bool
}

// Detacher is implemented by the ResponseWriter of a UDP query. A handler
// given to Listen answers a UDP socket's queries one at a time on the
// goroutine that reads them, so one that is about to wait must call Detach
// first: the socket is then read by another goroutine while this one waits
// and answers. Detach is for the handler's own goroutine, before it
// returns; calling it again does nothing.
type Detacher interface {
	Detach()
}

func newUDPServer(conn *net.UDPConn, h mdns.Handler) *udpServer {
	u := &udpServer{conn: conn, h: h, stopped: make(chan error, 1), done: make(chan struct{})}
	if la, ok := conn.LocalAddr().(*net.UDPAddr); ok && la.IP.IsUnspecified() {
		u.wildcard = true
		// The destination address of each query. Either family may
		// fail; that family then has no such queries.
		_ = ipv4.NewPacketConn(conn).SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true)
		_ = ipv6.NewPacketConn(conn).SetControlMessage(ipv6.FlagDst|ipv6.FlagInterface, true)
	}
	return u
}

// serve reads and answers until shutdown (nil) or a read error (returned).
func (u *udpServer) serve() error {
	u.mu.Lock()
	if u.closing.Load() {
		u.mu.Unlock()
		return nil
	}
	u.started = true
	u.mu.Unlock()
	u.startReader()
	err := <-u.stopped
	close(u.done)
	return err
}

// read is the reader of a wildcard socket (or of any socket where batched
// reading is not available; see startReader): it answers each query it
// reads, until the reading ends or its handler detaches, which starts the
// next reader.
func (u *udpServer) read() {
	buf := make([]byte, maxUDPSize)
	w := &udpWriter{conn: u.conn, u: u} // reused: a handler is done with it when it returns
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
			if u.readFailed(err) {
				return
			}
			continue
		}
		serveRaw(u.h, buf[:n], w)
		if w.detached {
			u.inflight.Done() // another reader has taken over
			return
		}
	}
}

// readFailed handles a reader's failed read: at shutdown, or once the
// socket is closed, it reports the end of the reading and returns true;
// anything else (a timeout, a transient error such as ENOBUFS) must not
// stop the reading, which goes on after a millisecond.
func (u *udpServer) readFailed(err error) (stop bool) {
	if u.closing.Load() {
		u.stopped <- nil
		return true
	}
	if errors.Is(err, net.ErrClosed) {
		u.stopped <- err
		return true
	}
	time.Sleep(time.Millisecond)
	return false
}

// qrBit is the QR (response) bit of a header's flags.
const qrBit = 1 << 15

// ignored reports whether a packet gets no answer at all: one without a
// full header (any reply could serve amplification), or a response.
func ignored(pkt []byte) bool {
	return len(pkt) < 12 || (uint16(pkt[2])<<8)&qrBit != 0
}

// serveRaw handles one query packet as miekg/dns's server would: an ignored
// packet gets nothing, one that does not parse gets FORMERR. A handler
// that can answer from the raw packet (RawHandler) is asked first.
func serveRaw(h mdns.Handler, pkt []byte, w mdns.ResponseWriter) {
	if ignored(pkt) {
		return
	}
	if rh, ok := h.(RawHandler); ok && rh.ServeRaw(pkt, w) {
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
	_ = u.conn.SetReadDeadline(time.Now()) // wakes the reader
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

// udpWriter is the mdns.ResponseWriter of a UDP query, answering sess on a
// wildcard socket, the sender of its datagram in a batch, else to. A writer
// of a batch keeps its answer for the batch's send (see udpBatch) until its
// handler detaches.
type udpWriter struct {
	conn *net.UDPConn
	sess *mdns.SessionUDP
	to   netip.AddrPort
	// u and detached: the server whose reader this writer belongs to,
	// and whether its handler has handed the reading on.
	u        *udpServer
	detached bool
	// batch and slot: the batch and the datagram this writer answers; nil
	// once detached (its answer then goes out on its own).
	batch *udpBatch
	slot  int
}

// Detach implements Detacher: it starts the socket's next reader, which
// carries on with the rest of the batch, if any.
func (w *udpWriter) Detach() {
	if w.u == nil || w.detached {
		return
	}
	w.detached = true
	w.u.inflight.Add(1) // before the next reader can end the reading
	if b := w.batch; b != nil {
		// This writer stays with the handler, which answers alone, to
		// the sender read now: the next reader reuses the batch.
		w.to, w.batch = b.sender(w.slot), nil
		b.handOver(w.slot)
		return
	}
	go w.u.read()
}

func (w *udpWriter) LocalAddr() net.Addr { return w.conn.LocalAddr() }

func (w *udpWriter) RemoteAddr() net.Addr {
	if w.batch != nil {
		return net.UDPAddrFromAddrPort(w.batch.sender(w.slot))
	}
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
	if w.batch != nil {
		w.batch.put(w.slot, b)
		return len(b), nil
	}
	if w.sess != nil {
		return mdns.WriteToSessionUDP(w.conn, b, w.sess)
	}
	return w.conn.WriteToUDPAddrPort(b, w.to)
}
func (w *udpWriter) Close() error        { return nil }
func (w *udpWriter) TsigStatus() error   { return nil }
func (w *udpWriter) TsigTimersOnly(bool) {}
func (w *udpWriter) Hijack()             {}
