package agent

import (
	"fmt"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testunbound"
)

// TestThroughUnbound: with the documented Unbound configuration
// (docs/unbound-glimpse.conf), names under the domain resolve through a real
// Unbound to what the agent answers, negative answers pass through with the
// SOA, and an NS query for a zone does not break the names below it.
func TestThroughUnbound(t *testing.T) {
	c := consul.Client()
	p := newProduct("unbound")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", port: 8000})
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.9", port: 8001})
	register(t, c, instance{id: p + "-g", product: p, env: "prod", job: "stream", service: "grpc", address: "127.0.0.10", port: 9000})
	register(t, c, instance{id: p + "-w", product: p, env: "prod", job: "web", service: "http", address: "127.0.0.11", port: 80})

	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	zone := "dc1." + domain
	httpName := "http.stream.prod." + p + "." + zone
	grpcName := "grpc.stream.prod." + p + "." + zone
	webName := "http.web.prod." + p + "." + zone
	waitDNS(t, a.DNSAddr(), httpName, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 2 }, "both instances")

	u := testunbound.Start(t, a.DNSAddr(), domain)
	ask := func(name string, qtype uint16) *mdns.Msg {
		t.Helper()
		m, err := u.Query(name, qtype)
		if err != nil {
			t.Fatalf("%s %s through unbound: %v", mdns.TypeToString[qtype], name, err)
		}
		return m
	}
	// same checks that Unbound's answer to (name, qtype) is the agent's:
	// the same rcode and answer records (TTLs at most the agent's).
	same := func(name string, qtype uint16) *mdns.Msg {
		t.Helper()
		got := ask(name, qtype)
		want := query(t, a.DNSAddr(), "udp", name, qtype, 4096)
		if got.Rcode != want.Rcode || rrSet(got.Answer) != rrSet(want.Answer) {
			t.Fatalf("%s %s: unbound answered %s %s, the agent %s %s\nunbound:\n%v",
				mdns.TypeToString[qtype], name, mdns.RcodeToString[got.Rcode], rrSet(got.Answer),
				mdns.RcodeToString[want.Rcode], rrSet(want.Answer), got)
		}
		for _, rr := range got.Answer {
			if rr.Header().Ttl > 5 {
				t.Errorf("%s %s: TTL %d through unbound, above the agent's 5", mdns.TypeToString[qtype], name, rr.Header().Ttl)
			}
		}
		return got
	}

	m := same(httpName, mdns.TypeSRV)
	if len(m.Answer) != 2 {
		t.Fatalf("SRV %s through unbound: %d answers, want 2\n%v", httpName, len(m.Answer), m)
	}
	m = same(httpName, mdns.TypeA)
	if got := ips(m.Answer); got != "127.0.0.1,127.0.0.9" {
		t.Fatalf("A %s through unbound: %s", httpName, got)
	}
	// An SRV target resolves too.
	for target := range srvTargets(same(httpName, mdns.TypeSRV)) {
		if m := same(target, mdns.TypeA); len(m.Answer) != 1 {
			t.Errorf("A %s through unbound: %v", target, m.Answer)
		}
	}

	// Negative answers pass through, with the zone's SOA for the resolver
	// to cache them by.
	for _, name := range []string{
		"nope.stream.prod." + p + "." + zone,
		"http.stream.prod.no-such-product." + zone,
		"http.stream.prod.goku.nosuchzone." + domain,
	} {
		m := same(name, mdns.TypeSRV)
		if m.Rcode != mdns.RcodeNameError || soaIn(m.Ns) == nil {
			t.Errorf("SRV %s through unbound: want NXDOMAIN with an SOA, got\n%v", name, m)
		}
	}
	if m := same(httpName, mdns.TypeTXT); m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 0 || soaIn(m.Ns) == nil {
		t.Errorf("TXT %s through unbound: want NODATA with an SOA, got\n%v", httpName, m)
	}

	// NS of the zone, below the domain Unbound sends to the agent: no zone
	// cut, so NODATA.
	m = same(zone, mdns.TypeNS)
	if m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 0 {
		t.Fatalf("NS %s through unbound: %v", zone, m)
	}
	// Regression: Unbound must not send the next questions under the zone
	// anywhere but the agent. Names never asked before, so not from the
	// cache:
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{grpcName, mdns.TypeSRV}, {webName, mdns.TypeA}, {"ns1." + zone, mdns.TypeA}} {
		m := same(q.name, q.qtype)
		if m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
			t.Errorf("%s %s through unbound after NS %s: want one answer, got\n%v", mdns.TypeToString[q.qtype], q.name, zone, m)
		}
	}
	if m := same(grpcName, mdns.TypeA); ips(m.Answer) != "127.0.0.10" {
		t.Errorf("A %s through unbound after NS %s: %s", grpcName, zone, ips(m.Answer))
	}
}

// rrSet renders records without their TTLs, sorted, for comparing answers
// from a cache with the origin's.
func rrSet(rrs []mdns.RR) string {
	var out []string
	for _, rr := range rrs {
		rr = mdns.Copy(rr)
		rr.Header().Ttl = 0
		out = append(out, strings.ToLower(rr.String()))
	}
	sortStrings(out)
	return fmt.Sprint(out)
}
