package dns

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// TestServeRaw: the raw path answers the common queries, with the same bytes
// as the full path, and leaves every other query to it.
func TestServeRaw(t *testing.T) {
	c, cfg := benchCache(t)
	c.SetDatacenters([]string{"dc1", "dc9"})
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
	const d = "srv.glimpse.io."
	addr := "http.stream.prod.goku.dc1." + d
	for _, tc := range []struct {
		name   string
		qtype  uint16
		edns   uint16
		mutate func(*mdns.Msg)
		raw    bool // answered by the raw path
	}{
		{addr, mdns.TypeSRV, 0, nil, true},
		{addr, mdns.TypeSRV, 1232, nil, true},
		{addr, mdns.TypeA, 4096, func(m *mdns.Msg) { m.IsEdns0().SetDo() }, true},
		{"HTTP.Stream.PROD.goku.dc1.SRV.glimpse.io.", mdns.TypeSRV, 4096, nil, true},
		{addr, mdns.TypeANY, 0, nil, true},
		{addr, mdns.TypeSRV, 4096, func(m *mdns.Msg) { m.CheckingDisabled, m.RecursionDesired = true, false }, true},
		{"nodeb.node.dc1." + d, mdns.TypeA, 0, nil, true},
		{"nodeb.node.dc1." + d, mdns.TypeANY, 0, nil, true},
		// Left to the full path.
		{addr, mdns.TypeAAAA, 0, nil, false},                 // no AAAA: NODATA
		{"nodeb.node.dc1." + d, mdns.TypeSRV, 0, nil, false}, // NODATA
		{"nope.stream.prod.goku.dc1." + d, mdns.TypeSRV, 0, nil, false},
		{"http.stream.prod.nope.dc1." + d, mdns.TypeSRV, 0, nil, false},
		{"http.stream.prod.goku.dc9." + d, mdns.TypeSRV, 0, nil, false}, // not synced
		{"stream.prod.goku.dc1." + d, mdns.TypeSRV, 0, nil, false},
		{"dc1." + d, mdns.TypeSOA, 0, nil, false},
		{"example.com.", mdns.TypeA, 0, nil, false},
		{"http_x.stream.prod.goku.dc1." + d, mdns.TypeSRV, 0, nil, false},
		{addr, mdns.TypeTXT, 0, nil, false},
		{addr, mdns.TypeSRV, 4096, func(m *mdns.Msg) { m.IsEdns0().SetVersion(1) }, false},
		{addr, mdns.TypeSRV, 4096, func(m *mdns.Msg) {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &mdns.EDNS0_COOKIE{Code: mdns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}, false},
		{addr, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Question[0].Qclass = mdns.ClassCHAOS }, false},
		{addr, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Opcode = mdns.OpcodeNotify }, false},
		{addr, mdns.TypeSRV, 0, func(m *mdns.Msg) { m.Question = append(m.Question, m.Question[0]) }, false},
	} {
		m := new(mdns.Msg)
		m.SetQuestion(tc.name, tc.qtype)
		m.Id = 0xabcd
		if tc.edns > 0 {
			m.SetEdns0(tc.edns, false)
		}
		if tc.mutate != nil {
			tc.mutate(m)
		}
		pkt, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		fast := &recorder{}
		if got := h.ServeRaw(pkt, fast); got != tc.raw {
			t.Errorf("%s %s (%v): raw path answered %v, want %v", tc.name, mdns.TypeToString[tc.qtype], m.IsEdns0(), got, tc.raw)
			continue
		}
		if !tc.raw {
			if len(fast.out) != 0 {
				t.Errorf("%s %s: the raw path declined but wrote % x", tc.name, mdns.TypeToString[tc.qtype], fast.out)
			}
			continue
		}
		slow := &recorder{}
		h.ServeDNS(slow, m)
		if len(fast.out) != 1 || len(slow.out) != 1 || !bytes.Equal(fast.out[0], slow.out[0]) {
			t.Errorf("%s %s: raw path % x\nfull path % x", tc.name, mdns.TypeToString[tc.qtype], fast.out, slow.out)
		}
	}
	// Over TCP the limits differ: always the full path.
	m := new(mdns.Msg)
	m.SetQuestion(addr, mdns.TypeSRV)
	pkt, _ := m.Pack()
	if h.ServeRaw(pkt, &recorder{tcp: true}) {
		t.Error("the raw path answered over TCP")
	}
}

// TestServeRawTellsDemand: the raw path tells the demand of the reads of an
// address, but not at every query: an address read in a burst is told once
// per HandlerOptions.UseEvery, and a new state of the address is told at its first read.
// A name without an address is told at once (its first read starts its
// watch).
func TestServeRawTellsDemand(t *testing.T) {
	c, cfg := benchCache(t)
	used := map[string]int{}
	h := NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1",
		Demand: cache.Static{Cache: c, Used: func(zone, product string) { used[zone+"/"+product]++ }}})
	m := new(mdns.Msg)
	m.SetQuestion("http.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV)
	pkt, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	const n = 1000
	began := time.Now()
	for range n {
		if !h.ServeRaw(pkt, &discardWriter{}) {
			t.Fatal("the raw path did not answer")
		}
	}
	most := 1 + int(time.Since(began)/defaultUseEvery)
	if got := used["dc1/goku"]; got < 1 || got > most {
		t.Errorf("%d reads told the demand %d times, want 1 to %d", n, got, most)
	}
	// A new state of the address: told at its first read.
	before := used["dc1/goku"]
	c.SetProduct("dc1", "goku", []cache.Instance{{Node: "nodea", Address: netip.MustParseAddr("10.0.0.9"), Port: 8000, Env: "prod", Job: "stream", Service: "http"}}, 0)
	h.ServeRaw(pkt, &discardWriter{})
	if used["dc1/goku"] != before+1 {
		t.Error("the first read of a new state was not told")
	}
	// No such address: told at every query, and left to the full path.
	m.SetQuestion("nope.stream.prod.goku.dc1.srv.glimpse.io.", mdns.TypeSRV)
	pkt, _ = m.Pack()
	before = used["dc1/goku"]
	for range 3 {
		if h.ServeRaw(pkt, &discardWriter{}) {
			t.Fatal("the raw path answered a name without an address")
		}
	}
	if used["dc1/goku"] != before+3 {
		t.Errorf("a name without an address told the demand %d times in 3 queries", used["dc1/goku"]-before)
	}
}

// TestAddressQnameLen: the question name length the fast path compares is
// that of every prepared answer, rotated subsets included.
func TestAddressQnameLen(t *testing.T) {
	cfg := Config{Domain: "srv.glimpse.io.", TTL: 5, NegativeTTL: 5, MaxRecords: 100}
	b := NewBuilder(cfg)
	for _, n := range []int{1, 4, 150} {
		a := &cache.Address{Zone: "dc1", Product: "goku-x", Env: "prod", Job: "stream9", Service: "h"}
		for i := range n {
			a.Instances = append(a.Instances, cache.Instance{Node: "n", Address: netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), Port: 80,
				Env: a.Env, Job: a.Job, Service: a.Service})
		}
		aa := b.BuildAddress(a).(*addrAnswers)
		for _, qt := range []uint16{mdns.TypeSRV, mdns.TypeA, mdns.TypeANY} {
			if w := aa.answer(qt); w != nil && nameLen(w) != aa.qlen {
				t.Errorf("%d instances, %s: qlen %d, the answer's name %d bytes", n, mdns.TypeToString[qt], aa.qlen, nameLen(w))
			}
		}
	}
}

// TestFastName: the fast path's reading of a name gives what parseName
// gives for every address and node name, under any domain, and takes no
// other name.
func TestFastName(t *testing.T) {
	for _, domain := range []string{"srv.glimpse.io.", "glimpse.", "a.b.c.d.e.", "."} {
		h := NewHandler(cache.New(NewBuilder(Config{Domain: domain})), HandlerOptions{Config: Config{Domain: domain}})
		under := func(prefix string) string {
			if domain == "." {
				return prefix + "."
			}
			return prefix + "." + domain
		}
		for _, qname := range []string{
			under("http.stream.prod.goku.dc1"),
			under("HTTP.Stream.PROD.goku.DC1"),
			strings.ToUpper(under("http.stream.prod.goku.dc1")),
			under("a.b.c.d.e"),
			under("x-1.y-2.z-3.p-4.z-5"),
			under("web01.node.dc1"),
			under("WEB01.NODE.dc1"),
			under("web01.nodes.dc1"),
			under("0a000001.addr.dc1"),
			under("stream.prod.goku.dc1"),
			under("prod.goku.dc1"),
			under("goku.dc1"),
			under("dc1"),
			domain,
			under("a.b.c.d.e.f"),
			under("http.stream.prod.goku.dc1.x"),
			"http.stream.prod.goku.dc1.example.com.",
			"http.stream.prod.goku.dc1.srv.glimpse.org.",
			"web01.node.dc1.other.",
			strings.Repeat("a.", 120),
		} {
			if qname == "." {
				continue // the root: parseQuery takes no such question
			}
			r := new(mdns.Msg)
			r.SetQuestion(qname, mdns.TypeSRV)
			pkt, err := r.Pack()
			if err != nil {
				t.Fatal(err)
			}
			var lower [maxNameLen]byte
			var q rawQuery
			if !parseQuery(pkt, &lower, &q) {
				t.Fatalf("%s: parseQuery refused it", qname)
			}
			if got := string(lower[:q.lowerLen]); got != strings.ToLower(qname) {
				t.Fatalf("%s: lower-cased as %q", qname, got)
			}
			want := parseName(qname, domain)
			got, ok := h.fastName(string(lower[:q.lowerLen]), &q.starts, q.labels)
			fast := want.kind == kindAddress || want.kind == kindNode
			if ok != fast {
				t.Errorf("%s under %s: fast %v, parseName's kind %d", qname, domain, ok, want.kind)
			} else if ok && got != want {
				t.Errorf("%s under %s: fastName %+v, parseName %+v", qname, domain, got, want)
			}
		}
	}
}

// TestParseQueryRefuses: parseQuery takes no name the full path would read
// differently: bytes outside a label's alphabet, compression, labels over
// 63 bytes.
func TestParseQueryRefuses(t *testing.T) {
	base := func(name []byte) []byte {
		pkt := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
		pkt = append(pkt, name...)
		return append(pkt, 0, 33, 0, 1)
	}
	var lower [maxNameLen]byte
	var q rawQuery
	if !parseQuery(base([]byte("\x03abc\x00")), &lower, &q) {
		t.Fatal("a plain name was refused")
	}
	for _, name := range [][]byte{
		[]byte("\x03a.c\x00"),
		[]byte("\x03a_c\x00"),
		[]byte("\x03a\xc3c\x00"),
		[]byte("\x03abc\xc0\x0c"),
		append(append([]byte{64}, bytes.Repeat([]byte("a"), 64)...), 0),
		[]byte("\x00"),
	} {
		if parseQuery(base(name), &lower, &q) {
			t.Errorf("%q was taken", name)
		}
	}
}
