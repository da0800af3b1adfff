package dns

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// countingHandler counts the queries in progress and answers "block." once
// release is closed.
type countingHandler struct {
	in      atomic.Int32
	release chan struct{}
}

func (h *countingHandler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	h.in.Add(1)
	blockingHandler{h.release}.ServeDNS(w, r)
}

// TestShutdownAnswersInFlight: queries being handled when Shutdown starts,
// over TCP and UDP, all get their answers; then the server stops.
func TestShutdownAnswersInFlight(t *testing.T) {
	h := &countingHandler{release: make(chan struct{})}
	s, err := Listen("127.0.0.1:0", 2, 0, h)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	const n = 20
	var answered atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		for _, proto := range []string{"tcp", "udp"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := new(mdns.Msg)
				m.SetQuestion("block.", mdns.TypeA)
				c := &mdns.Client{Net: proto, Timeout: 10 * time.Second}
				if r, _, err := c.Exchange(m, s.Addr()); err == nil && r.Id == m.Id {
					answered.Add(1)
				} else {
					t.Errorf("%s query in flight at shutdown: %v", proto, err)
				}
			}()
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.in.Load() < 2*n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d queries reached the handler", h.in.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	time.Sleep(200 * time.Millisecond) // Shutdown is under way, waiting
	close(h.release)
	wg.Wait()
	if err := <-shut; err != nil {
		t.Errorf("shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("serve: %v", err)
	}
	if got := answered.Load(); got != 2*n {
		t.Errorf("%d of %d queries in flight answered", got, 2*n)
	}
}

// TestTCPFloodEvictsIdle: with room for 20 connections, 300 that never send
// anything cost at most 20 server goroutines, and a client that sends its
// query gets its answer at once: the quietest connection makes room.
// Malformed streams (a length the data never fills, a runt, a response)
// get no answer (or FORMERR) and are closed within the idle timeout.
func TestTCPFloodEvictsIdle(t *testing.T) {
	s, err := Listen("127.0.0.1:0", 1, 20, blockingHandler{})
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	}()
	query := func() error {
		m := new(mdns.Msg)
		m.SetQuestion("x.", mdns.TypeA)
		c := &mdns.Client{Net: "tcp", Timeout: 2 * time.Second}
		_, _, err := c.Exchange(m, s.Addr())
		return err
	}
	if err := query(); err != nil {
		t.Fatal(err)
	}
	g0 := runtime.NumGoroutine()
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < 300; i++ {
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// Each connection beyond the first 20 evicts one: 280 evictions, and
	// the evicted connections' server goroutines end.
	deadline := time.Now().Add(5 * time.Second)
	for (s.tcpl.evicted.Load() < 280 || runtime.NumGoroutine() > g0+20+5) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s.tcpl.evicted.Load() != 280 {
		t.Errorf("300 idle connections with room for 20: %d evicted, want 280", s.tcpl.evicted.Load())
	}
	if g := runtime.NumGoroutine(); g > g0+20+5 {
		t.Errorf("300 idle connections: %d goroutines (from %d), want at most 20 more", g, g0)
	}
	for i := 0; i < 5; i++ {
		start := time.Now()
		if err := query(); err != nil {
			t.Fatalf("a query during the flood: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a query during the flood took %v", d)
		}
	}
	t.Logf("evicted %d, held %d", s.tcpl.evicted.Load(), s.tcpl.open())

	var streams sync.WaitGroup
	for _, tc := range []struct {
		raw      []byte
		answered bool // may be answered (FORMERR)
	}{
		{[]byte{0xff, 0xff, 1, 2, 3}, false},                                                   // claims 65535 bytes, sends 3
		{[]byte{0, 5, 1, 2, 3, 4, 5}, true},                                                    // a runt message
		{[]byte{0, 12, 0, 1, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0}, false},                          // a response
		{append([]byte{0, 40, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, make([]byte, 26)...), true}, // a question that runs off
	} {
		// At once: each may take up to the idle timeout to be closed.
		c, err := net.Dial("tcp", s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		streams.Add(1)
		go func() {
			defer streams.Done()
			defer c.Close()
			c.Write(tc.raw)
			c.SetReadDeadline(time.Now().Add(10 * time.Second)) // the idle timeout is 8 s
			var hdr [2]byte
			_, err := io.ReadFull(c, hdr[:])
			if err == nil && !tc.answered {
				t.Errorf("% x: an answer of %d bytes", tc.raw, binary.BigEndian.Uint16(hdr[:]))
			}
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("% x: the connection was still open after 10 s", tc.raw)
			}
		}()
	}
	streams.Wait()
	if err := query(); err != nil {
		t.Fatalf("a query after the malformed streams: %v", err)
	}
}
