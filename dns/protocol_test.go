package dns

import (
	"fmt"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// protoCache is a synced local zone dc1 with two Consul servers, product
// "goku" with 4 instances and product "big" with n instances of their own
// addresses (each its own SRV target).
func protoCache(t *testing.T, cfg Config, n int) *Handler {
	t.Helper()
	cfg.Domain, cfg.TTL, cfg.NegativeTTL = testDomain, 5, 5
	c := cache.New(NewBuilder(cfg))
	c.AddZone("dc1", true)
	c.SetDatacenters([]string{"dc1"})
	c.SetServers("dc1", []cache.Server{{Node: "s1", Address: netip.MustParseAddr("10.9.0.1")}, {Node: "s2", Address: netip.MustParseAddr("10.9.0.2")}})
	var small []cache.Instance
	for i := range 4 {
		small = append(small, cache.Instance{Node: fmt.Sprintf("node%d", i), Address: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}),
			Port: 8000, Env: "prod", Job: "stream", Service: "http"})
	}
	c.SetProduct("dc1", "goku", small, 0)
	var big []cache.Instance
	for i := range n {
		big = append(big, cache.Instance{Node: "host", Address: netip.AddrFrom4([4]byte{10, 1, byte(i / 250), byte(i%250 + 1)}), OwnAddress: true,
			Port: 9000, Env: "prod", Job: "fleet", Service: "http"})
	}
	if n > 0 {
		c.SetProduct("dc1", "big", big, 0)
	}
	c.SetSynced("dc1", true)
	return NewHandler(c, HandlerOptions{Config: cfg, LocalZone: "dc1"})
}

// ask sends m to h as a client over UDP (or TCP) would and returns the
// answer.
func ask(t *testing.T, h *Handler, m *mdns.Msg, tcp bool) *mdns.Msg {
	t.Helper()
	r, _ := askSize(t, h, m, tcp)
	return r
}

// askSize is ask that also returns the answer's size on the wire.
func askSize(t *testing.T, h *Handler, m *mdns.Msg, tcp bool) (*mdns.Msg, int) {
	t.Helper()
	w := &recorder{tcp: tcp}
	h.ServeDNS(w, m)
	if len(w.out) != 1 {
		t.Fatalf("%v: %d answers, want 1", m.Question, len(w.out))
	}
	r := new(mdns.Msg)
	if err := r.Unpack(w.out[0]); err != nil {
		t.Fatalf("%v: unpack: %v", m.Question, err)
	}
	return r, len(w.out[0])
}

func question(name string, qtype uint16) *mdns.Msg {
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	return m
}

// soaOwner returns the owner of the SOA in an answer's authority section.
func soaOwner(t *testing.T, r *mdns.Msg) string {
	t.Helper()
	for _, rr := range r.Ns {
		if soa, ok := rr.(*mdns.SOA); ok {
			return soa.Hdr.Name
		}
	}
	t.Fatalf("%v: no SOA in the authority section:\n%v", r.Question, r)
	return ""
}

// TestTwoOPT: a query with two OPT records is FORMERR (RFC 6891 §6.1.1).
func TestTwoOPT(t *testing.T) {
	h := protoCache(t, Config{}, 0)
	m := question("http.stream.prod.goku.dc1."+testDomain, mdns.TypeSRV)
	m.SetEdns0(1232, false)
	m.Extra = append(m.Extra, &mdns.OPT{Hdr: mdns.RR_Header{Name: ".", Rrtype: mdns.TypeOPT, Class: 1232}})
	if r := ask(t, h, m, false); r.Rcode != mdns.RcodeFormatError {
		t.Errorf("two OPT records: %s, want FORMERR", mdns.RcodeToString[r.Rcode])
	}
	m.Extra = m.Extra[:1]
	if r := ask(t, h, m, false); r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 4 {
		t.Errorf("one OPT record: %s with %d answers", mdns.RcodeToString[r.Rcode], len(r.Answer))
	}
}

// TestOneZoneByDefault: without -dns.delegate-zones the domain is one zone.
// A zone name has no SOA or NS of its own (a resolver asking NS on its way
// down, as QNAME minimisation does, is never sent to the Consul servers),
// and every negative answer carries the apex SOA; the apex has SOA and NS.
func TestOneZoneByDefault(t *testing.T) {
	h := protoCache(t, Config{}, 0)
	zone := "dc1." + testDomain
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{zone, mdns.TypeNS, mdns.RcodeSuccess},
		{zone, mdns.TypeSOA, mdns.RcodeSuccess},
		{zone, mdns.TypeDS, mdns.RcodeSuccess},
		{zone, mdns.TypeANY, mdns.RcodeSuccess},
		{"goku." + zone, mdns.TypeNS, mdns.RcodeSuccess},
		{"nope.stream.prod.goku." + zone, mdns.TypeSRV, mdns.RcodeNameError},
		{"http.stream.prod.goku." + zone, mdns.TypeTXT, mdns.RcodeSuccess},
		{"x_y.goku." + zone, mdns.TypeA, mdns.RcodeNameError},
		{"nope." + testDomain, mdns.TypeA, mdns.RcodeNameError},
	} {
		r := ask(t, h, question(q.name, q.qtype), false)
		if r.Rcode != q.rcode || len(r.Answer) != 0 || !r.Authoritative {
			t.Errorf("%s %s: %s AA=%v with %d answers, want %s and none", q.name, mdns.TypeToString[q.qtype], mdns.RcodeToString[r.Rcode], r.Authoritative, len(r.Answer), mdns.RcodeToString[q.rcode])
			continue
		}
		if owner := soaOwner(t, r); owner != testDomain {
			t.Errorf("%s %s: SOA of %s, want the apex's", q.name, mdns.TypeToString[q.qtype], owner)
		}
	}
	r := ask(t, h, question(testDomain, mdns.TypeNS), false)
	if len(r.Answer) != 2 {
		t.Errorf("NS at the apex: %v", r.Answer)
	}
	r = ask(t, h, question("ns1."+zone, mdns.TypeA), false)
	if len(r.Answer) != 1 || r.Answer[0].(*mdns.A).A.String() != "10.9.0.1" {
		t.Errorf("ns1 of the zone: %v", r.Answer)
	}
}

// TestDelegatedZones: with -dns.delegate-zones each zone is a delegation,
// as before: NS and SOA at the zone name, the zone's SOA in its negative
// answers, malformed names under it included (RFC 2308 §3), and DS at the
// cut answered by the parent side, the apex (RFC 4035 §3.1.4.1).
func TestDelegatedZones(t *testing.T) {
	h := protoCache(t, Config{DelegateZones: true}, 0)
	zone := "dc1." + testDomain
	r := ask(t, h, question(zone, mdns.TypeNS), false)
	if len(r.Answer) != 2 || len(r.Extra) != 2 {
		t.Errorf("NS at the zone: %v, glue %v", r.Answer, r.Extra)
	}
	for _, qtype := range []uint16{mdns.TypeSOA, mdns.TypeANY} {
		r = ask(t, h, question(zone, qtype), false)
		if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != mdns.TypeSOA || r.Answer[0].Header().Name != zone {
			t.Errorf("%s at the zone: %v", mdns.TypeToString[qtype], r.Answer)
		}
	}
	for _, q := range []struct {
		name  string
		qtype uint16
		rcode int
		soa   string
	}{
		{"nope.stream.prod.goku." + zone, mdns.TypeSRV, mdns.RcodeNameError, zone},
		{"x_y.goku." + zone, mdns.TypeA, mdns.RcodeNameError, zone},
		{"a.b.c.d.e.f.goku." + zone, mdns.TypeA, mdns.RcodeNameError, zone},
		{zone, mdns.TypeTXT, mdns.RcodeSuccess, zone},
		{zone, mdns.TypeDS, mdns.RcodeSuccess, testDomain},
		{"nope." + testDomain, mdns.TypeA, mdns.RcodeNameError, testDomain},
	} {
		r := ask(t, h, question(q.name, q.qtype), false)
		if r.Rcode != q.rcode || len(r.Answer) != 0 {
			t.Errorf("%s %s: %s with %d answers, want %s", q.name, mdns.TypeToString[q.qtype], mdns.RcodeToString[r.Rcode], len(r.Answer), mdns.RcodeToString[q.rcode])
			continue
		}
		if owner := soaOwner(t, r); owner != q.soa {
			t.Errorf("%s %s: SOA of %s, want %s's", q.name, mdns.TypeToString[q.qtype], owner, q.soa)
		}
	}
}

// TestANY: ANY at a name that has records answers with one of its RRsets
// (RFC 8482 §4.2), never NODATA.
func TestANY(t *testing.T) {
	h := protoCache(t, Config{}, 0)
	for _, q := range []struct {
		name string
		want uint16
	}{
		{testDomain, mdns.TypeSOA},
		{"0a000001.addr.dc1." + testDomain, mdns.TypeA},
		{"fd000000000000000000000000000001.addr.dc1." + testDomain, mdns.TypeAAAA},
		{"ns2.dc1." + testDomain, mdns.TypeA},
		{"ns1." + testDomain, mdns.TypeA},
		{"node1.node.dc1." + testDomain, mdns.TypeA},
		{"http.stream.prod.goku.dc1." + testDomain, mdns.TypeSRV},
	} {
		r := ask(t, h, question(q.name, mdns.TypeANY), false)
		if r.Rcode != mdns.RcodeSuccess || len(r.Answer) == 0 || r.Answer[0].Header().Rrtype != q.want {
			t.Errorf("ANY %s: %s %v, want %s", q.name, mdns.RcodeToString[r.Rcode], r.Answer, mdns.TypeToString[q.want])
		}
	}
}

// TestTCOnlyForAnswers: an answer whose records all fit comes without TC,
// its targets' addresses trimmed silently (RFC 2181 §9); TC is set only
// when answer records are left out.
func TestTCOnlyForAnswers(t *testing.T) {
	for _, n := range []int{17, 20, 40} {
		h := protoCache(t, Config{}, n)
		name := "http.fleet.prod.big.dc1." + testDomain
		m := question(name, mdns.TypeSRV)
		m.SetEdns0(1232, false)
		r, size := askSize(t, h, m, false)
		full := ask(t, h, question(name, mdns.TypeSRV), true)
		if len(full.Answer) != n || len(full.Extra) != n {
			t.Fatalf("%d instances over TCP: %d answers, %d addresses", n, len(full.Answer), len(full.Extra))
		}
		if size > 1232 {
			t.Errorf("%d instances: %d bytes at EDNS 1232", n, size)
		}
		switch {
		case len(r.Answer) == n && r.Truncated:
			t.Errorf("%d instances: every answer fits in 1232 bytes, yet TC", n)
		case len(r.Answer) < n && !r.Truncated:
			t.Errorf("%d instances: %d answers at 1232 bytes without TC", n, len(r.Answer))
		}
		if n <= 20 && len(r.Answer) != n {
			t.Errorf("%d instances: only %d SRV records at 1232 bytes", n, len(r.Answer))
		}
		if n == 40 && (len(r.Answer) == n || !r.Truncated) {
			t.Errorf("40 SRV records cannot fit 1232 bytes: %d answers, TC=%v", len(r.Answer), r.Truncated)
		}
	}
}

// TestRRsetCap: an address of 150 instances, with the default cap of 100
// records, is answered 100 at a time in rotating subsets; over 3 answers
// (one rotation) every instance comes exactly twice, and each answer's
// additional section holds the addresses of its own targets.
func TestRRsetCap(t *testing.T) {
	const n = 150
	h := protoCache(t, Config{}, n)
	name := "http.fleet.prod.big.dc1." + testDomain
	for _, qtype := range []uint16{mdns.TypeSRV, mdns.TypeA} {
		seen := map[string]int{}
		for range 3 {
			r := ask(t, h, question(name, qtype), true)
			if len(r.Answer) != DefaultMaxRecords || r.Truncated {
				t.Fatalf("%s: %d records (TC=%v), want %d", mdns.TypeToString[qtype], len(r.Answer), r.Truncated, DefaultMaxRecords)
			}
			targets := map[string]bool{}
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *mdns.SRV:
					seen[rr.Target]++
					targets[rr.Target] = true
				case *mdns.A:
					seen[rr.A.String()]++
				}
			}
			if qtype == mdns.TypeSRV {
				if len(r.Extra) != len(targets) {
					t.Errorf("%d addresses for %d targets", len(r.Extra), len(targets))
				}
				for _, rr := range r.Extra {
					if !targets[rr.Header().Name] {
						t.Errorf("address of %s, not a target of this answer", rr.Header().Name)
					}
				}
			}
		}
		if len(seen) != n {
			t.Errorf("%s: %d of %d instances answered over a rotation", mdns.TypeToString[qtype], len(seen), n)
		}
		for k, c := range seen {
			if c != 2 {
				t.Errorf("%s: %s answered %d times in 3, want 2", mdns.TypeToString[qtype], k, c)
				break
			}
		}
	}
}

// TestRotate: the subsets' shares differ by at most one answer per
// rotation, and every record is in one.
func TestRotate(t *testing.T) {
	for _, tc := range []struct{ n, limit int }{{101, 100}, {150, 100}, {250, 100}, {1000, 100}, {10001, 100}, {7, 3}} {
		rrs := make([]mdns.RR, tc.n)
		for i := range rrs {
			rrs[i] = &mdns.A{Hdr: mdns.RR_Header{Name: fmt.Sprint(i)}}
		}
		subs := rotate(rrs, tc.limit)
		count := map[mdns.RR]int{}
		for _, s := range subs {
			if len(s) != tc.limit {
				t.Fatalf("n %d: a subset of %d", tc.n, len(s))
			}
			for _, rr := range s {
				count[rr]++
			}
		}
		lo, hi := len(subs), 0
		for _, rr := range rrs {
			lo, hi = min(lo, count[rr]), max(hi, count[rr])
		}
		if lo < 1 || hi-lo > 1 {
			t.Errorf("n %d, limit %d: %d subsets, shares from %d to %d", tc.n, tc.limit, len(subs), lo, hi)
		}
		if len(subs) > max(maxRotations, (tc.n+tc.limit-1)/tc.limit) {
			t.Errorf("n %d: %d subsets", tc.n, len(subs))
		}
	}
}
