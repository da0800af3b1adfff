package dns

import (
	"net/netip"
	"slices"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

func TestHexAddr(t *testing.T) {
	tests := []struct {
		ip  string
		hex string
	}{
		{"10.0.0.1", "0a000001"},
		{"127.0.1.2", "7f000102"},
		{"0.0.0.0", "00000000"},
		{"255.255.255.255", "ffffffff"},
		{"2001:db8::1", "20010db8000000000000000000000001"},
		{"::1", "00000000000000000000000000000001"},
		{"fe80::abcd:ef01", "fe8000000000000000000000abcdef01"},
		// An IPv4-mapped IPv6 address stays IPv6 (the watchers unmap them
		// before they reach the cache).
		{"::ffff:10.0.0.1", "00000000000000000000ffff0a000001"},
	}
	for _, tt := range tests {
		ip := netip.MustParseAddr(tt.ip)
		h := hexAddr(ip)
		if h != tt.hex {
			t.Errorf("hexAddr(%s) = %q, want %q", ip, h, tt.hex)
		}
		if !cache.ValidLabel(h) {
			t.Errorf("hexAddr(%s) = %q is not a DNS label", ip, h)
		}
		back, ok := parseHexAddr(h)
		if !ok || back != ip {
			t.Errorf("parseHexAddr(%q) = %s, %v; want %s", h, back, ok, ip)
		}
		if back.Is4() != ip.Is4() {
			t.Errorf("parseHexAddr(%q) changed the family of %s", h, ip)
		}
	}
}

func TestParseHexAddrInvalid(t *testing.T) {
	for _, s := range []string{
		"",
		"0a00001",   // 7 digits
		"0a0000011", // 9 digits
		"0a00000g",  // not hex
		"0a-00001",
		"20010db800000000000000000000001",   // 31 digits
		"20010db80000000000000000000000011", // 33 digits
		"20010db8000000000000000000000x01",
		"0a0000010a000001", // 16 digits: neither family
	} {
		if ip, ok := parseHexAddr(s); ok {
			t.Errorf("parseHexAddr(%q) = %s, true; want false", s, ip)
		}
	}
}

const (
	testZone  = "dc1"
	testQName = "http.stream.prod.goku.dc1.srv.glimpse.io."
)

func newTestBuilder(allowWarning bool) *Builder {
	return NewBuilder(Config{Domain: testDomain, TTL: 5, NegativeTTL: 7, AllowWarning: allowWarning})
}

func inst(node, addr string, own bool, port uint16, h cache.Health) cache.Instance {
	return cache.Instance{
		Node: node, Address: netip.MustParseAddr(addr), OwnAddress: own, Port: port, Health: h,
		Env: "prod", Job: "stream", Service: "http",
	}
}

func testAddress(in ...cache.Instance) *cache.Address {
	return &cache.Address{Zone: testZone, Product: "goku", Env: "prod", Job: "stream", Service: "http", Index: 3, Instances: in}
}

// unpackWire unpacks a prepared answer and checks what every prepared
// answer has in common: a response with ID 0, authoritative, the question in
// lower case, and every answer owned by the question name.
func unpackWire(t *testing.T, w wire, qname string, qtype uint16) *mdns.Msg {
	t.Helper()
	if w == nil {
		t.Fatalf("no prepared %s answer", mdns.TypeToString[qtype])
	}
	m := new(mdns.Msg)
	if err := m.Unpack(w); err != nil {
		t.Fatalf("unpack %s answer: %v", mdns.TypeToString[qtype], err)
	}
	if m.Id != 0 || !m.Response || !m.Authoritative || m.RecursionDesired || m.Rcode != mdns.RcodeSuccess {
		t.Errorf("header: id %d response %v aa %v rd %v rcode %d", m.Id, m.Response, m.Authoritative, m.RecursionDesired, m.Rcode)
	}
	if len(m.Question) != 1 || m.Question[0].Name != qname || m.Question[0].Qtype != qtype || m.Question[0].Qclass != mdns.ClassINET {
		t.Fatalf("question = %v, want %s %s IN", m.Question, qname, mdns.TypeToString[qtype])
	}
	if len(m.Answer) == 0 {
		t.Fatalf("%s answer is empty", mdns.TypeToString[qtype])
	}
	for _, rr := range m.Answer {
		h := rr.Header()
		if h.Name != qname {
			t.Errorf("answer owner %q, want the question name %q", h.Name, qname)
		}
		if h.Rrtype != qtype || h.Class != mdns.ClassINET || h.Ttl != 5 {
			t.Errorf("answer %v: want type %s, class IN, TTL 5", rr, mdns.TypeToString[qtype])
		}
	}
	if len(m.Ns) != 0 {
		t.Errorf("authority section not empty: %v", m.Ns)
	}
	return m
}

type srvWant struct {
	target string
	port   uint16
}

func srvRecords(t *testing.T, m *mdns.Msg) []srvWant {
	t.Helper()
	var out []srvWant
	for _, rr := range m.Answer {
		srv, ok := rr.(*mdns.SRV)
		if !ok {
			t.Fatalf("not an SRV record: %v", rr)
		}
		if srv.Priority != 1 || srv.Weight != 1 {
			t.Errorf("SRV %v: priority and weight should be 1", srv)
		}
		out = append(out, srvWant{srv.Target, srv.Port})
	}
	return out
}

// addrRecords returns the owner and address of each A/AAAA record.
func addrRecords(t *testing.T, rrs []mdns.RR) [][2]string {
	t.Helper()
	var out [][2]string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *mdns.A:
			out = append(out, [2]string{rr.Hdr.Name, rr.A.String()})
		case *mdns.AAAA:
			out = append(out, [2]string{rr.Hdr.Name, rr.AAAA.String()})
		default:
			t.Fatalf("not an address record: %v", rr)
		}
	}
	return out
}

func mixedInstances() []cache.Instance {
	return []cache.Instance{
		inst("web-1", "10.0.0.1", false, 8080, cache.Passing),
		inst("web-1", "10.0.0.1", false, 8081, cache.Passing),   // same node: one glue record, one A
		inst("web-2", "10.0.0.2", false, 8080, cache.Warning),   // only with AllowWarning
		inst("web-3", "10.0.0.3", false, 8080, cache.Critical),  // never
		inst("Web-4", "10.0.0.4", false, 8080, cache.Passing),   // node name in lower case
		inst("web-5", "10.0.1.5", true, 9000, cache.Passing),    // own address: addr target
		inst("web-6", "10.0.0.1", true, 9001, cache.Passing),    // own address, IP shared with web-1
		inst("web_7", "10.0.0.7", false, 9002, cache.Passing),   // node name no DNS label: addr target
		inst("web-8", "2001:db8::8", true, 9003, cache.Passing), // IPv6
		inst("web-8", "2001:db8::8", true, 9004, cache.Critical),
	}
}

func TestBuildAddress(t *testing.T) {
	const (
		n1   = "web-1.node.dc1.srv.glimpse.io."
		n2   = "web-2.node.dc1.srv.glimpse.io."
		n4   = "web-4.node.dc1.srv.glimpse.io."
		a5   = "0a000105.addr.dc1.srv.glimpse.io."
		a6   = "0a000001.addr.dc1.srv.glimpse.io."
		a7   = "0a000007.addr.dc1.srv.glimpse.io."
		a8v6 = "20010db8000000000000000000000008.addr.dc1.srv.glimpse.io."
	)
	tests := []struct {
		name         string
		allowWarning bool
		srv          []srvWant
		glue         [][2]string
		a, aaaa      []string
	}{
		{
			name: "passing only",
			srv: []srvWant{
				{n1, 8080}, {n1, 8081}, {n4, 8080}, {a5, 9000}, {a6, 9001}, {a7, 9002}, {a8v6, 9003},
			},
			glue: [][2]string{
				{n1, "10.0.0.1"}, {n4, "10.0.0.4"}, {a5, "10.0.1.5"}, {a6, "10.0.0.1"}, {a7, "10.0.0.7"}, {a8v6, "2001:db8::8"},
			},
			a:    []string{"10.0.0.1", "10.0.0.4", "10.0.1.5", "10.0.0.7"},
			aaaa: []string{"2001:db8::8"},
		},
		{
			name:         "warning allowed",
			allowWarning: true,
			srv: []srvWant{
				{n1, 8080}, {n1, 8081}, {n2, 8080}, {n4, 8080}, {a5, 9000}, {a6, 9001}, {a7, 9002}, {a8v6, 9003},
			},
			glue: [][2]string{
				{n1, "10.0.0.1"}, {n2, "10.0.0.2"}, {n4, "10.0.0.4"}, {a5, "10.0.1.5"}, {a6, "10.0.0.1"}, {a7, "10.0.0.7"}, {a8v6, "2001:db8::8"},
			},
			a:    []string{"10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.1.5", "10.0.0.7"},
			aaaa: []string{"2001:db8::8"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBuilder(tt.allowWarning)
			addr := testAddress(mixedInstances()...)
			before := slices.Clone(addr.Instances)
			aa, ok := b.BuildAddress(addr).(*addrAnswers)
			if !ok {
				t.Fatalf("BuildAddress returned %T", b.BuildAddress(addr))
			}
			if !slices.Equal(addr.Instances, before) {
				t.Errorf("BuildAddress modified its argument")
			}
			if !aa.healthy {
				t.Fatal("healthy = false, want true")
			}

			m := unpackWire(t, aa.srv, testQName, mdns.TypeSRV)
			if got := srvRecords(t, m); !slices.Equal(got, tt.srv) {
				t.Errorf("SRV records\n got %v\nwant %v", got, tt.srv)
			}
			if got := addrRecords(t, m.Extra); !slices.Equal(got, tt.glue) {
				t.Errorf("glue\n got %v\nwant %v", got, tt.glue)
			}

			var want [][2]string
			for _, ip := range tt.a {
				want = append(want, [2]string{testQName, ip})
			}
			m = unpackWire(t, aa.a, testQName, mdns.TypeA)
			if got := addrRecords(t, m.Answer); !slices.Equal(got, want) {
				t.Errorf("A records\n got %v\nwant %v", got, want)
			}
			if len(m.Extra) != 0 {
				t.Errorf("A answer has additional records: %v", m.Extra)
			}

			want = nil
			for _, ip := range tt.aaaa {
				want = append(want, [2]string{testQName, ip})
			}
			m = unpackWire(t, aa.aaaa, testQName, mdns.TypeAAAA)
			if got := addrRecords(t, m.Answer); !slices.Equal(got, want) {
				t.Errorf("AAAA records\n got %v\nwant %v", got, want)
			}
		})
	}
}

// TestBuildAddressOwnerPointsAtQuestion checks what the handler relies on
// to echo the query's case: the answers' owner names are compressed to the
// question name, so overwriting the question's bytes renames them too.
func TestBuildAddressOwnerPointsAtQuestion(t *testing.T) {
	aa := newTestBuilder(false).BuildAddress(testAddress(mixedInstances()...)).(*addrAnswers)
	const mixed = "HTTP.Stream.PROD.goku.DC1.Srv.Glimpse.IO."
	for qtype, w := range map[uint16]wire{mdns.TypeSRV: aa.srv, mdns.TypeA: aa.a, mdns.TypeAAAA: aa.aaaa} {
		buf := slices.Clone(w)
		if n := putName(buf[12:], mixed); n != len(testQName)+1 {
			t.Fatalf("putName wrote %d bytes, want %d", n, len(testQName)+1)
		}
		m := new(mdns.Msg)
		if err := m.Unpack(buf); err != nil {
			t.Fatalf("%s: unpack: %v", mdns.TypeToString[qtype], err)
		}
		if m.Question[0].Name != mixed {
			t.Errorf("%s: question %q, want %q", mdns.TypeToString[qtype], m.Question[0].Name, mixed)
		}
		for _, rr := range m.Answer {
			if rr.Header().Name != mixed {
				t.Errorf("%s: answer owner %q does not follow the question (%q)", mdns.TypeToString[qtype], rr.Header().Name, mixed)
			}
		}
	}
}

func TestBuildAddressUnhealthy(t *testing.T) {
	tests := []struct {
		name         string
		allowWarning bool
		in           []cache.Instance
	}{
		{"no instances", false, nil},
		{"all critical", false, []cache.Instance{
			inst("web-1", "10.0.0.1", false, 8080, cache.Critical),
			inst("web-2", "2001:db8::2", true, 8080, cache.Critical),
		}},
		{"critical and warning", false, []cache.Instance{
			inst("web-1", "10.0.0.1", false, 8080, cache.Critical),
			inst("web-2", "10.0.0.2", false, 8080, cache.Warning),
		}},
		{"critical with warning allowed", true, []cache.Instance{
			inst("web-1", "10.0.0.1", false, 8080, cache.Critical),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			aa := newTestBuilder(tt.allowWarning).BuildAddress(testAddress(tt.in...)).(*addrAnswers)
			if aa.healthy || aa.srv != nil || aa.a != nil || aa.aaaa != nil {
				t.Errorf("got healthy %v, srv %v, a %v, aaaa %v; want nothing", aa.healthy, aa.srv != nil, aa.a != nil, aa.aaaa != nil)
			}
		})
	}
}

// TestBuildAddressOneFamily checks that a family without addresses has no
// prepared answer (the handler answers NODATA), while SRV still answers.
func TestBuildAddressOneFamily(t *testing.T) {
	b := newTestBuilder(false)
	v4 := b.BuildAddress(testAddress(inst("web-1", "10.0.0.1", false, 80, cache.Passing))).(*addrAnswers)
	if !v4.healthy || v4.srv == nil || v4.a == nil || v4.aaaa != nil {
		t.Errorf("IPv4 only: healthy %v srv %v a %v aaaa %v; want true true true false", v4.healthy, v4.srv != nil, v4.a != nil, v4.aaaa != nil)
	}
	v6 := b.BuildAddress(testAddress(inst("web-1", "2001:db8::1", false, 80, cache.Passing))).(*addrAnswers)
	if !v6.healthy || v6.srv == nil || v6.a != nil || v6.aaaa == nil {
		t.Errorf("IPv6 only: healthy %v srv %v a %v aaaa %v; want true true false true", v6.healthy, v6.srv != nil, v6.a != nil, v6.aaaa != nil)
	}
	m := unpackWire(t, v6.srv, testQName, mdns.TypeSRV)
	want := [][2]string{{"web-1.node.dc1.srv.glimpse.io.", "2001:db8::1"}}
	if got := addrRecords(t, m.Extra); !slices.Equal(got, want) {
		t.Errorf("glue %v, want %v", got, want)
	}
}

func TestBuildNode(t *testing.T) {
	b := newTestBuilder(false)
	const qname = "web-1.node.dc1.srv.glimpse.io."
	na := b.BuildNode(testZone, &cache.Node{Name: "web-1", Address: netip.MustParseAddr("10.0.0.1")}).(*nodeAnswers)
	if na.aaaa != nil {
		t.Error("IPv4 node has an AAAA answer")
	}
	m := unpackWire(t, na.a, qname, mdns.TypeA)
	if got, want := addrRecords(t, m.Answer), [][2]string{{qname, "10.0.0.1"}}; !slices.Equal(got, want) {
		t.Errorf("A records %v, want %v", got, want)
	}

	na = b.BuildNode(testZone, &cache.Node{Name: "web-1", Address: netip.MustParseAddr("2001:db8::1")}).(*nodeAnswers)
	if na.a != nil {
		t.Error("IPv6 node has an A answer")
	}
	m = unpackWire(t, na.aaaa, qname, mdns.TypeAAAA)
	if got, want := addrRecords(t, m.Answer), [][2]string{{qname, "2001:db8::1"}}; !slices.Equal(got, want) {
		t.Errorf("AAAA records %v, want %v", got, want)
	}
}

func TestBuildZone(t *testing.T) {
	b := newTestBuilder(false)
	z := &cache.Zone{
		Name: "dc1", Local: true, Index: 42,
		Servers: []cache.Server{
			{Node: "a", Address: netip.MustParseAddr("10.1.0.1")},
			{Node: "b", Address: netip.MustParseAddr("2001:db8::2")},
		},
	}
	za := b.BuildZone(z).(*zoneAnswers)
	check := func(owner string, soa *mdns.SOA, ns, glue []mdns.RR) {
		t.Helper()
		if soa == nil || soa.Hdr.Name != owner || soa.Serial != 42 || soa.Minttl != 7 || soa.Hdr.Ttl != 7 ||
			soa.Ns != "ns1."+owner || soa.Mbox != "hostmaster."+testDomain {
			t.Errorf("SOA of %s: %v", owner, soa)
		}
		var gotNS []string
		for _, rr := range ns {
			if rr.Header().Name != owner {
				t.Errorf("NS owner %q, want %q", rr.Header().Name, owner)
			}
			gotNS = append(gotNS, rr.(*mdns.NS).Ns)
		}
		if want := []string{"ns1." + owner, "ns2." + owner}; !slices.Equal(gotNS, want) {
			t.Errorf("NS of %s: %v, want %v", owner, gotNS, want)
		}
		want := [][2]string{{"ns1." + owner, "10.1.0.1"}, {"ns2." + owner, "2001:db8::2"}}
		if got := addrRecords(t, glue); !slices.Equal(got, want) {
			t.Errorf("glue of %s: %v, want %v", owner, got, want)
		}
	}
	check("dc1.srv.glimpse.io.", za.soa, za.ns, za.glue)
	check(testDomain, za.apexSOA, za.apexNS, za.apexGlue)

	// A remote zone has no apex records; a zone without servers names
	// itself as the SOA's primary.
	za = b.BuildZone(&cache.Zone{Name: "dc2", Index: 7}).(*zoneAnswers)
	if za.apexSOA != nil || za.apexNS != nil || za.apexGlue != nil {
		t.Error("remote zone has apex records")
	}
	if za.soa.Ns != "dc2.srv.glimpse.io." || za.soa.Serial != 7 || len(za.ns) != 0 || len(za.glue) != 0 {
		t.Errorf("zone without servers: SOA %v, NS %v, glue %v", za.soa, za.ns, za.glue)
	}
}

// TestBuildAddressSameAddressTwice: two instances at one address and port
// (two providers stating the same one) give one SRV record, not a
// duplicate in the RRset; another port stays its own record.
func TestBuildAddressSameAddressTwice(t *testing.T) {
	b := newTestBuilder(false)
	aa := b.BuildAddress(testAddress(
		inst("web-1", "10.0.0.1", false, 80, cache.Passing),
		inst("web-1", "10.0.0.1", false, 80, cache.Passing),
		inst("web-1", "10.0.0.1", false, 81, cache.Passing),
	)).(*addrAnswers)
	m := unpackWire(t, aa.srv, testQName, mdns.TypeSRV)
	want := []srvWant{{"web-1.node.dc1.srv.glimpse.io.", 80}, {"web-1.node.dc1.srv.glimpse.io.", 81}}
	if got := srvRecords(t, m); !slices.Equal(got, want) {
		t.Errorf("SRV records %v, want %v", got, want)
	}
}
