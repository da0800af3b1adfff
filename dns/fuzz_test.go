package dns

import (
	"bytes"
	"net"
	"testing"

	mdns "github.com/miekg/dns"
)

// recorder is a ResponseWriter that keeps what the handler writes, over UDP
// or TCP as the fuzzer chooses.
type recorder struct {
	tcp bool
	out [][]byte
}

func (w *recorder) LocalAddr() net.Addr {
	if w.tcp {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}
func (w *recorder) RemoteAddr() net.Addr { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 5353} }
func (w *recorder) WriteMsg(m *mdns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *recorder) Write(b []byte) (int, error) {
	w.out = append(w.out, append([]byte(nil), b...))
	return len(b), nil
}
func (w *recorder) Close() error        { return nil }
func (w *recorder) TsigStatus() error   { return nil }
func (w *recorder) TsigTimersOnly(bool) {}
func (w *recorder) Hijack()             {}

func fuzzSeed(f *testing.F, name string, qtype uint16, edns uint16, mutate func(*mdns.Msg)) {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, true)
	}
	if mutate != nil {
		mutate(m)
	}
	b, err := m.Pack()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b, false)
	f.Add(b, true)
}

// FuzzServeRaw feeds raw packets to the handler the way the UDP server
// does. Every packet with a full query header gets exactly one answer, which
// parses, carries the query's ID, is a response, fits the client's UDP size
// and has an rcode the handler may give; runts and responses get none.
func FuzzServeRaw(f *testing.F) {
	const d = "srv.glimpse.io."
	for _, n := range []string{"http.stream.prod.goku.dc1." + d, "HTTP.Stream.prod.goku.dc1." + d, "stream.prod.goku.dc1." + d,
		"prod.goku.dc1." + d, "goku.dc1." + d, "dc1." + d, d, "nope.stream.prod.goku.dc1." + d, "a.b.c.d.e.f.dc1." + d,
		"0a000001.addr.dc1." + d, "example.com.", "http.stream.prod.goku.dc9." + d} {
		for _, qt := range []uint16{mdns.TypeSRV, mdns.TypeA, mdns.TypeAAAA, mdns.TypeNS, mdns.TypeSOA, mdns.TypeANY, mdns.TypeTXT} {
			fuzzSeed(f, n, qt, 0, nil)
		}
		fuzzSeed(f, n, mdns.TypeSRV, 1232, nil)
	}
	fuzzSeed(f, "goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS })
	fuzzSeed(f, "goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeUpdate })
	fuzzSeed(f, "goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) })
	fuzzSeed(f, "goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Question = nil })
	fuzzSeed(f, "goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Response = true })
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 33, 0, 1}, false) // a name pointing at itself
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, false)                        // a question missing
	f.Add([]byte{0, 1, 1}, false)

	fuzzSeed(f, "nodea.node.dc1."+d, mdns.TypeA, 0, nil)
	fuzzSeed(f, "NODEA.node.dc1."+d, mdns.TypeANY, 4096, nil)
	fuzzSeed(f, "http.stream.prod.goku.dc1."+d, mdns.TypeSRV, 4096, func(m *mdns.Msg) { m.CheckingDisabled = true })
	fuzzSeed(f, "http.stream.prod.goku.dc1."+d, mdns.TypeSRV, 4096, func(m *mdns.Msg) { m.IsEdns0().SetVersion(1) })
	fuzzSeed(f, "http.stream.prod.goku.dc1."+d, mdns.TypeSRV, 4096, func(m *mdns.Msg) {
		m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
	})
	fuzzSeed(f, "http.stream.prod.goku.dc1."+d, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Truncated, m.RecursionDesired = true, false })

	c, cfg := benchCache(f)
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	// A batched reader's batch, whose table of addresses lives on from
	// one input to the next.
	batch := &udpBatch{hot: newHotAnswers()}
	f.Fuzz(func(t *testing.T, pkt []byte, tcp bool) {
		fast := &recorder{tcp: tcp}
		fastOK := h.ServeRaw(pkt, fast)
		// A batched reader answers the same, from its table or not.
		if !tcp && batchedVisible {
			if ans, ok := batchedServeRaw(h, batch, pkt); ok != fastOK || ok && !bytes.Equal(ans, fast.out[0]) {
				t.Fatalf("to % x\nthe batched reader answered (%v) % x\nthe raw path          (%v) % x", pkt, ok, ans, fastOK, fast.out)
			}
		}
		// Where the raw path answers, the full one gives the same bytes.
		if fastOK {
			slow := &recorder{tcp: tcp}
			req := new(mdns.Msg)
			if err := req.Unpack(pkt); err != nil {
				t.Fatalf("the raw path answered a packet that does not unpack (%v): % x", err, pkt)
			}
			h.ServeDNS(slow, req)
			if len(fast.out) != 1 || len(slow.out) != 1 || !bytes.Equal(fast.out[0], slow.out[0]) {
				t.Fatalf("to % x\nthe raw path answered % x\nthe full one      % x", pkt, fast.out, slow.out)
			}
		}
		w := &recorder{tcp: tcp}
		serveRaw(h, pkt, w)
		if len(pkt) < 12 || pkt[2]&0x80 != 0 {
			if len(w.out) != 0 {
				t.Fatalf("answered a runt or a response: % x", pkt)
			}
			return
		}
		if len(w.out) != 1 {
			t.Fatalf("%d answers to % x", len(w.out), pkt)
		}
		out := w.out[0]
		m := new(mdns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("the answer does not parse (%v): % x", err, out)
		}
		if m.Id != uint16(pkt[0])<<8|uint16(pkt[1]) || !m.Response {
			t.Fatalf("answer id %d response %v to % x", m.Id, m.Response, pkt)
		}
		switch m.Rcode {
		case mdns.RcodeSuccess, mdns.RcodeNameError, mdns.RcodeServerFailure, mdns.RcodeFormatError,
			mdns.RcodeNotImplemented, mdns.RcodeRefused, mdns.RcodeBadVers:
		default:
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
		limit := 65535
		if !tcp {
			limit = mdns.MinMsgSize
			req := new(mdns.Msg)
			if req.Unpack(pkt) == nil {
				if opt := req.IsEdns0(); opt != nil {
					limit = max(limit, min(int(opt.UDPSize()), maxUDPSize))
				}
			}
		}
		if len(out) > limit {
			t.Fatalf("a %d-byte answer over a limit of %d", len(out), limit)
		}
	})
}
