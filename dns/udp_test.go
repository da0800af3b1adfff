package dns

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// blockingHandler answers "block." only once release is closed, everything
// else at once.
type blockingHandler struct{ release chan struct{} }

func (h blockingHandler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	if len(r.Question) == 1 && r.Question[0].Name == "block." {
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

// TestUDPWaitingHandlers: queries whose handler waits, more than there are
// workers, do not stop the socket from answering the others.
func TestUDPWaitingHandlers(t *testing.T) {
	h := blockingHandler{release: make(chan struct{})}
	s := startUDP(t, h)
	n := int(udpWorkers()) + 10
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := new(mdns.Msg)
			m.SetQuestion("block.", mdns.TypeA)
			(&mdns.Client{Timeout: 10 * time.Second}).Exchange(m, s.Addr())
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
