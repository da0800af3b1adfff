package dns

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// writeQueries sends queries on c, pipelined in one write, with IDs from
// first; the name of the query with ID blockID is "block.".
func writeQueries(t *testing.T, c net.Conn, first, n int, blockID int) {
	t.Helper()
	var buf []byte
	for id := first; id < first+n; id++ {
		m := new(mdns.Msg)
		m.SetQuestion("x.", mdns.TypeA)
		if id == blockID {
			m.SetQuestion("block.", mdns.TypeA)
		}
		m.Id = uint16(id)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
		buf = append(buf, b...)
	}
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
}

// readAnswer reads one length-prefixed answer and returns its ID.
func readAnswer(c net.Conn) (uint16, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return 0, err
	}
	b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(c, b); err != nil {
		return 0, err
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		return 0, err
	}
	return m.Id, nil
}

// TestTCPPipelined: queries pipelined on one connection are answered
// concurrently and in any order (RFC 7766 §6.2.1.1): 200 queries whose
// first waits get the 199 others answered while it waits; a connection
// carries any number of queries; and a client that sends 300 and closes
// its side gets all 300 answers before the server closes, never a reset.
func TestTCPPipelined(t *testing.T) {
	release := make(chan struct{})
	s := startUDP(t, blockingHandler{release})
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))

	writeQueries(t, c, 0, 200, 0)
	for i := 1; i < 200; i++ {
		id, err := readAnswer(c)
		if err != nil {
			t.Fatalf("answer %d of the 199 not waiting: %v", i, err)
		}
		if id == 0 {
			t.Fatal("the waiting query was answered before it was released")
		}
	}
	close(release)
	if id, err := readAnswer(c); err != nil || id != 0 {
		t.Fatalf("the waiting query's answer: id %d, %v", id, err)
	}

	// The same connection, past 128 queries and on: then the client's
	// side closes with 300 queries outstanding.
	writeQueries(t, c, 1000, 300, -1)
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got := map[uint16]bool{}
	for {
		id, err := readAnswer(c)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("after %d of 300 answers: %v", len(got), err)
		}
		got[id] = true
	}
	if len(got) != 300 {
		t.Errorf("%d of 300 answers before the server closed", len(got))
	}
}

// TestTCPIdleWithQueryOutstanding: a connection whose only query waits
// longer than the idle timeout is not closed, and its answer comes; once
// answered and idle, it is closed.
func TestTCPIdleWithQueryOutstanding(t *testing.T) {
	release := make(chan struct{})
	s, err := Listen("127.0.0.1:0", 1, 0, blockingHandler{release})
	if err != nil {
		t.Fatal(err)
	}
	s.tcp.first, s.tcp.idle = 200*time.Millisecond, 200*time.Millisecond
	go s.Serve()
	defer s.Shutdown(context.Background())
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeQueries(t, c, 7, 1, 7)
	time.AfterFunc(time.Second, func() { close(release) }) // 5 idle timeouts
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if id, err := readAnswer(c); err != nil || id != 7 {
		t.Fatalf("answer after waiting past the idle timeout: id %d, %v", id, err)
	}
	if _, err := readAnswer(c); !errors.Is(err, io.EOF) {
		t.Fatalf("an idle connection after its answer: %v, want it closed", err)
	}
}
