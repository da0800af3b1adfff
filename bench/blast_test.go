package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testServer answers each query with its header turned into a response
// with one answer, except as misbehave says: by the query's arrival
// number (from 1), "drop", "late" (answered after lateBy) or "wrong-id".
func testServer(t *testing.T, misbehave map[int]string, lateBy time.Duration) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for n := 1; ; n++ {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			p := append([]byte(nil), buf[:k]...)
			p[2] |= 0x80
			p[6], p[7] = 0, 1
			switch misbehave[n] {
			case "drop":
				continue
			case "late":
				go func() {
					time.Sleep(lateBy)
					pc.WriteTo(p, from)
				}()
				continue
			case "wrong-id":
				p[0] ^= 0x80
			}
			pc.WriteTo(p, from)
		}
	}()
	return pc.LocalAddr().String()
}

func queryFile(t *testing.T, lines string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "queries")
	if err := os.WriteFile(path, []byte(lines), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func runBlast(t *testing.T, args ...string) blastResult {
	t.Helper()
	var out bytes.Buffer
	if err := blast(args, &out); err != nil {
		t.Fatalf("blast %v: %v", args, err)
	}
	var r blastResult
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("blast output %q: %v", out.String(), err)
	}
	return r
}

// Each answer is counted once, for what it is: lost queries at the
// timeout, an answer after that as late, an answer to no query as bad.
func TestBlastCounts(t *testing.T) {
	addr := testServer(t, map[int]string{1: "drop", 2: "drop", 3: "drop", 5: "late", 7: "wrong-id"}, 600*time.Millisecond)
	q := queryFile(t, "a.example SRV\nb.example A\n")
	r := runBlast(t, "-addr", addr, "-queries", q, "-sockets", "1", "-window", "4", "-timeout", "100ms", "-duration", "2s")
	// Lost: the three dropped, the late one (at the timeout) and the
	// one answered with another ID.
	if r.Lost != 5 || r.Late != 1 || r.Bad != 1 || !strings.Contains(r.FirstBad, "no outstanding query") {
		t.Errorf("lost %d, late %d, bad %d (%q); want 5, 1, 1", r.Lost, r.Late, r.Bad, r.FirstBad)
	}
	if r.Completed == 0 || r.Sent < r.Completed+r.Lost {
		t.Errorf("sent %d, completed %d, lost %d", r.Sent, r.Completed, r.Lost)
	}
	// Most queries were answered at once; the lost ones count as the
	// timeout and stay out of the median.
	if r.P50Ms <= 0 || r.P50Ms >= 100 {
		t.Errorf("p50 %v ms", r.P50Ms)
	}
}

// A response that is not a NOERROR answer with records is bad, unless
// -any-answer takes any response (the echo's).
func TestBlastChecksAnswers(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 4096)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			buf[2] |= 0x80 // the query back: a response with no answers
			pc.WriteTo(buf[:k], from)
		}
	}()
	q := queryFile(t, "a.example A\n")
	r := runBlast(t, "-addr", pc.LocalAddr().String(), "-queries", q, "-sockets", "2", "-duration", "300ms")
	if r.Bad == 0 || r.Completed != 0 || !strings.Contains(r.FirstBad, "a.example. A NOERROR: flags") || !strings.Contains(r.FirstBad, "0 answers") {
		t.Errorf("no-answer responses: bad %d, completed %d (%q)", r.Bad, r.Completed, r.FirstBad)
	}
	r = runBlast(t, "-addr", pc.LocalAddr().String(), "-queries", q, "-sockets", "2", "-duration", "300ms", "-any-answer")
	if r.Bad != 0 || r.Completed == 0 {
		t.Errorf("-any-answer: bad %d (%q), completed %d", r.Bad, r.FirstBad, r.Completed)
	}
}

// With a rate, no socket sends ahead of its schedule.
func TestBlastRate(t *testing.T) {
	addr := testServer(t, nil, 0)
	q := queryFile(t, "a.example A\n")
	r := runBlast(t, "-addr", addr, "-queries", q, "-sockets", "4", "-rate", "400", "-duration", "500ms")
	if r.Sent > 200+4 {
		t.Errorf("sent %d in 0.5 s at 400 qps", r.Sent)
	}
	if r.Bad != 0 {
		t.Errorf("bad %d: %s", r.Bad, r.FirstBad)
	}
}

func TestBlastRefuses(t *testing.T) {
	q := queryFile(t, "a.example A\n")
	bad := queryFile(t, "a.example NOTATYPE\n")
	for _, args := range [][]string{
		{"-queries", q},
		{"-addr", "127.0.0.1:53", "-queries", q, "-window", "0"},
		{"-addr", "127.0.0.1:53", "-queries", q, "-window", "65"},
		{"-addr", "127.0.0.1:53", "-queries", q, "-rate", "-1"},
		{"-addr", "127.0.0.1:53", "-queries", bad},
		{"-addr", "127.0.0.1:53", "-queries", queryFile(t, "\n")},
	} {
		if err := blast(args, new(bytes.Buffer)); err == nil {
			t.Errorf("blast %v: no error", args)
		}
	}
}

func TestLatencyQuantiles(t *testing.T) {
	var l latencies
	if l.quantile(0.5) != -1 {
		t.Error("quantile of nothing")
	}
	for i := 0; i < 98; i++ {
		l.add(150 * time.Microsecond)
	}
	l.add(3 * time.Millisecond)
	l.add(2 * time.Second) // a lost query
	if got := l.quantile(0.5); got != 0.151 {
		t.Errorf("p50 %v ms, want 0.151", got)
	}
	if got := l.quantile(0.99); got != 3.001 {
		t.Errorf("p99 %v ms, want 3.001", got)
	}
	if got := l.quantile(1); got < 2000 {
		t.Errorf("p100 %v ms, want the 2 s of the lost query", got)
	}
}
