package dns

import (
	"context"
	"fmt"
	"github.com/rugby110/glimpse/cache"
	"net"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// blockingHandler answers "block." only once release is closed, handing
// the socket's reading on first as a waiting handler must, and everything
// else at once.
type blockingHandler struct{ release chan struct{} }

func (h blockingHandler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	if len(r.Question) == 1 && r.Question[0].Name == "block." {
		if d, ok := w.(Detacher); ok {
			d.Detach()
		}
		<-h.release
	}
	m := new(mdns.Msg)
	m.SetReply(r)
	w.WriteMsg(m)
}

func startUDP(t *testing.T, h mdns.Handler) *Server {
	t.Helper()
	s, err := Listen("127.0.0.1:0", 1, 0, h)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return s
}

// TestUDPBadPackets: a packet shorter than a header gets no answer, nor does
// a response; one that does not parse gets FORMERR with its ID.
func TestUDPBadPackets(t *testing.T) {
	s := startUDP(t, blockingHandler{})
	conn, err := net.Dial("udp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	read := func() []byte {
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	for _, pkt := range [][]byte{
		{1, 2, 3}, // short
		{0x12, 0x34, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0}, // a response
	} {
		conn.Write(pkt)
		if got := read(); got != nil {
			t.Errorf("answer to %x: %x", pkt, got)
		}
	}
	// A header announcing a question that is not there.
	conn.Write([]byte{0xbe, 0xef, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, 'a'})
	got := read()
	m := new(mdns.Msg)
	if got == nil || m.Unpack(got) != nil || m.Id != 0xbeef || m.Rcode != mdns.RcodeFormatError || !m.Response {
		t.Fatalf("answer to a truncated question: %x (%v)", got, m)
	}
}

// TestUDPWaitingHandlers: queries whose handler waits, many at once, do not
// stop the socket from answering the others, and each gets its answer.
func TestUDPWaitingHandlers(t *testing.T) {
	h := blockingHandler{release: make(chan struct{})}
	s := startUDP(t, h)
	const n = 50
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(mdns.Msg)
			m.SetQuestion("block.", mdns.TypeA)
			if r, _, err := (&mdns.Client{Timeout: 10 * time.Second}).Exchange(m, s.Addr()); err != nil || r.Id != m.Id {
				t.Errorf("waiting query: %v %v", r, err)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // every blocking query is in
	m := new(mdns.Msg)
	m.SetQuestion("free.", mdns.TypeA)
	began := time.Now()
	r, _, err := (&mdns.Client{Timeout: 2 * time.Second}).Exchange(m, s.Addr())
	if err != nil || r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("query while %d handlers wait: %v %v", n, r, err)
	}
	t.Logf("answered in %v while %d handlers waited", time.Since(began), n)
	close(h.release)
	wg.Wait()
}

// TestRemoteWaitKeepsAnswering: glimpse's handler, waiting for the first
// sync of a remote zone, hands the socket on: with one UDP socket, queries
// of the local zone are answered meanwhile, and the waiting ones get
// SERVFAIL once the wait is over.
func TestRemoteWaitKeepsAnswering(t *testing.T) {
	c, cfg := benchCache(t)
	c.SetDatacenters([]string{"dc1", "dc9"})
	wanted := make(chan string, 10)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1", FirstWait: 2 * time.Second,
		Demand: cache.Static{Cache: c, Used: func(zone, _ string) {
			if zone == "dc1" {
				return
			}
			select {
			case wanted <- zone:
			default:
			}
		}}})
	s := startUDP(t, h)
	ask := func(name string, timeout time.Duration) (*mdns.Msg, error) {
		m := new(mdns.Msg)
		m.SetQuestion(name, mdns.TypeSRV)
		r, _, err := (&mdns.Client{Timeout: timeout}).Exchange(m, s.Addr())
		return r, err
	}
	const waiting = 5
	remote := make(chan error, waiting)
	for range waiting {
		go func() {
			r, err := ask("http.stream.prod.goku.dc9.srv.glimpse.io.", 5*time.Second)
			if err == nil && r.Rcode != mdns.RcodeServerFailure {
				err = fmt.Errorf("rcode %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
			}
			remote <- err
		}()
	}
	select {
	case z := <-wanted:
		if z != "dc9" {
			t.Fatalf("asked for zone %q", z)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the remote zone was never asked for")
	}
	time.Sleep(100 * time.Millisecond) // the others are waiting too
	for i := range 20 {
		began := time.Now()
		r, err := ask("http.stream.prod.goku.dc1.srv.glimpse.io.", time.Second)
		if err != nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 4 {
			t.Fatalf("local query %d while remote ones wait: %v %v", i, r, err)
		}
		if d := time.Since(began); d > 500*time.Millisecond {
			t.Fatalf("local query %d took %v while remote ones waited", i, d)
		}
	}
	for range waiting {
		if err := <-remote; err != nil {
			t.Errorf("remote query: %v", err)
		}
	}
}
