package agent

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

const domain = "srv.glimpse.io."

// TestDNSRows checks every row and every negative and error rule of the DNS
// contract against a topology registered in Consul.
func TestDNSRows(t *testing.T) {
	c := consul.Client()
	p := newProduct("rows")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", port: 8000})
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.9", port: 8001})
	register(t, c, instance{id: p + "-v6", product: p, env: "prod", job: "stream", service: "grpc", address: "::1", port: 9000})
	register(t, c, instance{id: p + "-dead", product: p, env: "prod", job: "stream", service: "dead", port: 7000, ttlCheck: true})
	if err := c.Agent().UpdateTTL(p+"-dead-ttl", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}

	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	dnsAddr := a.DNSAddr()
	addr := "http.stream.prod." + p + ".dc1." + domain
	waitDNS(t, dnsAddr, addr, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 2 }, "both instances")
	waitDNS(t, dnsAddr, "dead.stream.prod."+p+".dc1."+domain, mdns.TypeSRV, func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeNameError }, "critical instance excluded")

	node := strings.ToLower(consul.NodeName())
	nodeTarget := node + ".node.dc1." + domain
	addrTarget := "7f000009.addr.dc1." + domain

	t.Run("SRV with in-zone targets and glue", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", addr, mdns.TypeSRV, 0)
		checkHeader(t, m, mdns.RcodeSuccess, true)
		want := map[string]uint16{nodeTarget: 8000, addrTarget: 8001}
		if got := srvTargets(m); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("SRV targets %v, want %v", got, want)
		}
		glue := map[string]string{}
		for _, rr := range m.Extra {
			if a, ok := rr.(*mdns.A); ok {
				glue[a.Hdr.Name] = a.A.String()
			}
		}
		if glue[nodeTarget] != "127.0.0.1" || glue[addrTarget] != "127.0.0.9" || len(glue) != 2 {
			t.Fatalf("glue %v", glue)
		}
		for _, rr := range m.Answer {
			if rr.Header().Ttl != 5 {
				t.Errorf("TTL %d, want the default 5", rr.Header().Ttl)
			}
		}
	})
	t.Run("A and AAAA of an address", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", addr, mdns.TypeA, 0)
		checkHeader(t, m, mdns.RcodeSuccess, true)
		if got := ips(m.Answer); got != "127.0.0.1,127.0.0.9" {
			t.Fatalf("A %s", got)
		}
		v6 := "grpc.stream.prod." + p + ".dc1." + domain
		m = query(t, dnsAddr, "udp", v6, mdns.TypeAAAA, 0)
		if got := ips(m.Answer); got != "::1" {
			t.Fatalf("AAAA %s", got)
		}
		// AAAA where only IPv4 exists, and A where only IPv6: NODATA.
		checkNodata(t, query(t, dnsAddr, "udp", addr, mdns.TypeAAAA, 0), domain)
		checkNodata(t, query(t, dnsAddr, "udp", v6, mdns.TypeA, 0), domain)
	})
	t.Run("node and addr names", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", nodeTarget, mdns.TypeA, 0)
		checkHeader(t, m, mdns.RcodeSuccess, true)
		if got := ips(m.Answer); got != "127.0.0.1" {
			t.Fatalf("node A %s", got)
		}
		m = query(t, dnsAddr, "udp", addrTarget, mdns.TypeA, 0)
		if got := ips(m.Answer); got != "127.0.0.9" {
			t.Fatalf("addr A %s", got)
		}
		m = query(t, dnsAddr, "udp", "00000000000000000000000000000001.addr.dc1."+domain, mdns.TypeAAAA, 0)
		if got := ips(m.Answer); got != "::1" {
			t.Fatalf("addr AAAA %s", got)
		}
		// ANY on a node answers its address record (RFC 8482); SRV: NODATA.
		if m := query(t, dnsAddr, "udp", nodeTarget, mdns.TypeANY, 0); ips(m.Answer) != "127.0.0.1" || m.Question[0].Qtype != mdns.TypeANY {
			t.Fatalf("ANY on the node: %v", m)
		}
		checkNodata(t, query(t, dnsAddr, "udp", nodeTarget, mdns.TypeSRV, 0), domain)
		checkNxdomain(t, query(t, dnsAddr, "udp", "no-such-node.node.dc1."+domain, mdns.TypeA, 0), domain)
		checkNxdomain(t, query(t, dnsAddr, "udp", "7f00.addr.dc1."+domain, mdns.TypeA, 0), domain)
	})
	t.Run("NS with glue and server names", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", domain, mdns.TypeNS, 0)
		checkHeader(t, m, mdns.RcodeSuccess, true)
		if len(m.Answer) != 1 || m.Answer[0].(*mdns.NS).Ns != "ns1."+domain {
			t.Fatalf("NS %s: %v", domain, m.Answer)
		}
		if got := ips(m.Extra); got != "127.0.0.1" {
			t.Fatalf("NS %s glue %s", domain, got)
		}
		// A zone is no zone cut: NS there is NODATA, so a resolver asking
		// it on its way down stays on the agent.
		checkNodata(t, query(t, dnsAddr, "udp", "dc1."+domain, mdns.TypeNS, 0), domain)
		for _, owner := range []string{"dc1." + domain, domain} {
			m = query(t, dnsAddr, "udp", "ns1."+owner, mdns.TypeA, 0)
			if got := ips(m.Answer); got != "127.0.0.1" {
				t.Fatalf("A ns1.%s: %s", owner, got)
			}
			checkNxdomain(t, query(t, dnsAddr, "udp", "ns2."+owner, mdns.TypeA, 0), domain)
		}
	})
	t.Run("SOA and its serial", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", domain, mdns.TypeSOA, 0)
		checkHeader(t, m, mdns.RcodeSuccess, true)
		if len(m.Answer) != 1 || m.Answer[0].Header().Name != domain {
			t.Fatalf("SOA %s: %v", domain, m.Answer)
		}
		checkNodata(t, query(t, dnsAddr, "udp", "dc1."+domain, mdns.TypeSOA, 0), domain)
		before := m.Answer[0].(*mdns.SOA).Serial
		register(t, c, instance{id: p + "-c", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.10", port: 8002})
		waitDNS(t, dnsAddr, domain, mdns.TypeSOA, func(m *mdns.Msg) bool {
			return len(m.Answer) == 1 && m.Answer[0].(*mdns.SOA).Serial != before
		}, "SOA serial moves with the topology")
	})
	t.Run("zones delegated", func(t *testing.T) {
		cfg := testConfig(t, consul.HTTPAddr())
		cfg.DelegateZones = true
		d := startAgent(t, cfg).DNSAddr()
		zone := "dc1." + domain
		waitDNS(t, d, addr, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) > 0 }, "answers")
		m := query(t, d, "udp", zone, mdns.TypeNS, 0)
		if len(m.Answer) != 1 || m.Answer[0].(*mdns.NS).Ns != "ns1."+zone || ips(m.Extra) != "127.0.0.1" {
			t.Fatalf("NS %s: %v, glue %v", zone, m.Answer, m.Extra)
		}
		m = query(t, d, "udp", zone, mdns.TypeSOA, 0)
		if len(m.Answer) != 1 || m.Answer[0].Header().Name != zone {
			t.Fatalf("SOA %s: %v", zone, m.Answer)
		}
		checkNxdomain(t, query(t, d, "udp", "nope.stream.prod."+p+"."+zone, mdns.TypeSRV, 0), zone)
		checkNxdomain(t, query(t, d, "udp", "ht_tp.stream.prod."+p+"."+zone, mdns.TypeSRV, 0), zone)
		checkNodata(t, query(t, d, "udp", addr, mdns.TypeTXT, 0), zone)
		checkNodata(t, query(t, d, "udp", zone, mdns.TypeDS, 0), domain) // the parent side
	})
	t.Run("NXDOMAIN with SOA", func(t *testing.T) {
		for _, name := range []string{
			"nope.stream.prod." + p + ".dc1." + domain,          // unknown address
			"http.stream.prod.no-such-product.dc1." + domain,    // unknown product
			"x.http.stream.prod." + p + ".dc1." + domain,        // six labels
			"ht_tp.stream.prod." + p + ".dc1." + domain,         // bad character
			"dead.stream.prod." + p + ".dc1." + domain,          // all instances critical
			"http.stream.prod." + p + ".no-such-zone." + domain, // unknown zone
			"nope.prod." + p + ".dc1." + domain,                 // no such job.env prefix
		} {
			m := query(t, dnsAddr, "udp", name, mdns.TypeSRV, 0)
			if m.Rcode != mdns.RcodeNameError || soaIn(m.Ns) == nil || !m.Authoritative {
				t.Errorf("%s: want NXDOMAIN with SOA, got %s\n%v", name, mdns.RcodeToString[m.Rcode], m)
			}
		}
	})
	t.Run("NODATA with SOA", func(t *testing.T) {
		checkNodata(t, query(t, dnsAddr, "udp", addr, mdns.TypeTXT, 0), domain)
		checkNodata(t, query(t, dnsAddr, "udp", "dc1."+domain, mdns.TypeA, 0), domain)
		// Names above an address exist (RFC 8020): NODATA, not NXDOMAIN.
		checkNodata(t, query(t, dnsAddr, "udp", p+".dc1."+domain, mdns.TypeA, 0), domain)
		checkNodata(t, query(t, dnsAddr, "udp", "stream.prod."+p+".dc1."+domain, mdns.TypeA, 0), domain)
	})
	t.Run("REFUSED FORMERR NOTIMP", func(t *testing.T) {
		m := query(t, dnsAddr, "udp", "www.example.com.", mdns.TypeA, 0)
		checkHeader(t, m, mdns.RcodeRefused, false)
		// An escaped dot: labels "x.srv", "glimpse", "io", outside the domain.
		checkHeader(t, query(t, dnsAddr, "udp", `x\.srv.glimpse.io.`, mdns.TypeA, 0), mdns.RcodeRefused, false)

		two := new(mdns.Msg)
		two.SetQuestion(addr, mdns.TypeA)
		two.Question = append(two.Question, mdns.Question{Name: addr, Qtype: mdns.TypeSRV, Qclass: mdns.ClassINET})
		checkHeader(t, exchange(t, dnsAddr, "udp", two), mdns.RcodeFormatError, false)

		none := new(mdns.Msg)
		none.Id = mdns.Id()
		checkHeader(t, exchange(t, dnsAddr, "udp", none), mdns.RcodeFormatError, false)

		notify := new(mdns.Msg)
		notify.SetNotify("dc1." + domain)
		checkHeader(t, exchange(t, dnsAddr, "udp", notify), mdns.RcodeNotImplemented, false)

		update := new(mdns.Msg)
		update.SetUpdate("dc1." + domain)
		update.SetEdns0(1232, false)
		m = exchange(t, dnsAddr, "udp", update)
		checkHeader(t, m, mdns.RcodeNotImplemented, false)
		if m.IsEdns0() == nil {
			t.Error("NOTIMP answer to an EDNS query without OPT")
		}

		for _, qt := range []uint16{mdns.TypeAXFR, mdns.TypeIXFR} {
			checkHeader(t, query(t, dnsAddr, "tcp", "dc1."+domain, qt, 0), mdns.RcodeNotImplemented, false)
		}
	})
	t.Run("case echoed, EDNS echoed, TCP", func(t *testing.T) {
		mixed := "HTTP.Stream.PROD." + strings.ToUpper(p) + ".Dc1.SRV.Glimpse.IO."
		for _, proto := range []string{"udp", "tcp"} {
			m := query(t, dnsAddr, proto, mixed, mdns.TypeSRV, 1232)
			checkHeader(t, m, mdns.RcodeSuccess, true)
			if m.Question[0].Name != mixed {
				t.Fatalf("%s: question %q, want the query's case %q", proto, m.Question[0].Name, mixed)
			}
			if len(m.Answer) < 2 {
				t.Fatalf("%s: %d answers", proto, len(m.Answer))
			}
			for _, rr := range m.Answer {
				if rr.Header().Name != mixed {
					t.Fatalf("%s: answer owner names do not echo the query: %v", proto, m.Answer)
				}
			}
			opt := m.IsEdns0()
			if opt == nil || opt.Version() != 0 {
				t.Fatalf("%s: no OPT record in the answer to an EDNS query", proto)
			}
		}
		// RD and CD are copied from the query (RFC 1035, RFC 4035 §3.1.6).
		cd := new(mdns.Msg)
		cd.SetQuestion(addr, mdns.TypeSRV)
		cd.CheckingDisabled, cd.RecursionDesired = true, true
		if m := exchange(t, dnsAddr, "udp", cd); !m.CheckingDisabled || !m.RecursionDesired || len(m.Answer) == 0 {
			t.Fatalf("CD/RD not copied: %v", m)
		}
		// Without EDNS, no OPT comes back.
		if m := query(t, dnsAddr, "udp", addr, mdns.TypeSRV, 0); m.IsEdns0() != nil {
			t.Fatal("OPT record in the answer to a query without EDNS")
		}
		// An EDNS version the agent does not speak: BADVERS.
		q := new(mdns.Msg)
		q.SetQuestion(addr, mdns.TypeA)
		q.SetEdns0(1232, false)
		q.IsEdns0().SetVersion(1)
		if m := exchange(t, dnsAddr, "udp", q); m.Rcode != mdns.RcodeBadVers {
			t.Fatalf("EDNS version 1: rcode %s, want BADVERS", mdns.RcodeToString[m.Rcode])
		}
	})
}

// TestDNSServfailBeforeFirstSync: until the local zone's first sync the
// agent answers SERVFAIL, never a wrong NXDOMAIN, and is not ready.
func TestDNSServfailBeforeFirstSync(t *testing.T) {
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	cfg := testConfig(t, proxy.Addr())
	a, err := New(t.Context(), cfg, nopLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// Consul fails from now on: the watchers cannot sync.
	proxy.SetFault(testconsul.Fault{Status: http.StatusInternalServerError})
	runAgent(t, a)

	for _, name := range []string{"http.stream.prod.goku.dc1." + domain, "dc1." + domain, domain, "x.y.z." + domain} {
		m := query(t, a.DNSAddr(), "udp", name, mdns.TypeSRV, 0)
		if m.Rcode != mdns.RcodeServerFailure {
			t.Fatalf("%s before the first sync: %s, want SERVFAIL", name, mdns.RcodeToString[m.Rcode])
		}
	}
	if code := httpStatus(t, "http://"+a.HTTPAddr()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before the first sync: %d", code)
	}
	proxy.SetFault(testconsul.Fault{})
	waitDNS(t, a.DNSAddr(), "dc1."+domain, mdns.TypeSOA, func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeSuccess }, "answers once synced")
	if code := httpStatus(t, "http://"+a.HTTPAddr()+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after the first sync: %d", code)
	}
}

// TestDNSFollowsConsul: registrations, deregistrations and checks going
// critical and back show in DNS without restarting the agent.
func TestDNSFollowsConsul(t *testing.T) {
	c := consul.Client()
	p := newProduct("follow")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", address: "127.0.1.1", port: 80, ttlCheck: true})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	name := "http.web.prod." + p + ".dc1." + domain
	count := func(n int) func(*mdns.Msg) bool {
		return func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeSuccess && len(m.Answer) == n }
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeA, count(1), "first instance")

	register(t, c, instance{id: p + "-2", product: p, env: "prod", job: "web", service: "http", address: "127.0.1.2", port: 80})
	waitDNS(t, a.DNSAddr(), name, mdns.TypeA, count(2), "registered instance appears")

	if err := c.Agent().UpdateTTL(p+"-1-ttl", "failing", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	m := waitDNS(t, a.DNSAddr(), name, mdns.TypeA, count(1), "critical instance leaves")
	if ips(m.Answer) != "127.0.1.2" {
		t.Fatalf("after the check went critical: %s", ips(m.Answer))
	}
	if err := c.Agent().UpdateTTL(p+"-1-ttl", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeA, count(2), "instance back once passing")

	for _, id := range []string{p + "-1", p + "-2"} {
		if err := c.Agent().ServiceDeregister(id); err != nil {
			t.Fatal(err)
		}
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeA, func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeNameError }, "deregistered address is NXDOMAIN")
}

// TestDNSNeverCallsConsul: 10,000 queries of every kind cause no Consul
// request; the agent's requests through a counting proxy stay at the
// watchers' own.
func TestDNSNeverCallsConsul(t *testing.T) {
	c := consul.Client()
	p := newProduct("calls")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", port: 80})
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	cfg := testConfig(t, proxy.Addr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 10*time.Minute, 10*time.Minute // no blocking query returns unless Consul changes
	cfg.Watch.DatacentersEvery = 10 * time.Minute
	a := startAgent(t, cfg)
	name := "http.web.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "instance")
	// The product is watched from that first read on: its first result,
	// then the blocking query its watcher keeps open.
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return proxy.CountByPath()["/v1/health/service/"+p] >= 2
	}, "the product's watcher never settled into its blocking query")

	names := []struct {
		name  string
		qtype uint16
	}{
		{name, mdns.TypeSRV}, {name, mdns.TypeA}, {name, mdns.TypeAAAA}, {name, mdns.TypeTXT},
		{"nope.web.prod." + p + ".dc1." + domain, mdns.TypeSRV},
		{"http.web.prod." + p + ".no-such-zone." + domain, mdns.TypeA},
		{"dc1." + domain, mdns.TypeNS}, {domain, mdns.TypeSOA},
		{strings.ToLower(consul.NodeName()) + ".node.dc1." + domain, mdns.TypeA},
		{"www.example.com.", mdns.TypeA},
	}
	before := proxy.CountByPath()
	const total, workers = 10000, 8
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &mdns.Client{Net: "udp", Timeout: 3 * time.Second}
			for i := w; i < total; i += workers {
				q := names[i%len(names)]
				m := new(mdns.Msg)
				m.SetQuestion(q.name, q.qtype)
				if _, _, err := cl.Exchange(m, a.DNSAddr()); err != nil {
					t.Errorf("query %d: %v", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	after := proxy.CountByPath()
	calls := 0
	for path, n := range after {
		if d := n - before[path]; d != 0 {
			t.Errorf("%d requests to %s during the queries", d, path)
			calls += int(d)
		}
	}
	t.Logf("%d DNS queries; Consul requests during them: %d; the watchers' total: %d", total, calls, proxy.Count())
}

// TestDNSTruncation: UDP answers never exceed 512 bytes without EDNS or the
// advertised size with it, TC is set when answer records are left out, and
// TCP returns all 200 instances of an address (with a cap above 200).
func TestDNSTruncation(t *testing.T) {
	c := consul.Client()
	p := newProduct("big")
	const n = 200
	for i := 0; i < n; i++ {
		register(t, c, instance{
			id: fmt.Sprintf("%s-%d", p, i), product: p, env: "prod", job: "fleet", service: "http",
			address: fmt.Sprintf("127.2.%d.%d", i/250, i%250+1), port: 10000 + i,
		})
	}
	// Above the default cap of 100 records, so that all 200 are one set.
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.MaxRecords = 1000
	a := startAgent(t, cfg)
	name := "http.fleet.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool {
		if !m.Truncated {
			return len(m.Answer) == n
		}
		return len(query(t, a.DNSAddr(), "tcp", name, mdns.TypeSRV, 0).Answer) == n
	}, "all instances")

	for _, qtype := range []uint16{mdns.TypeSRV, mdns.TypeA} {
		for _, size := range []uint16{0, 512, 1232, 1400, 4096, 65000} {
			q := new(mdns.Msg)
			q.SetQuestion(name, qtype)
			limit := 512
			if size > 0 {
				q.SetEdns0(size, false)
				limit = min(max(int(size), 512), 4096)
			}
			pkt, err := q.Pack()
			if err != nil {
				t.Fatal(err)
			}
			raw := rawExchange(t, a.DNSAddr(), pkt)
			if len(raw) > limit {
				t.Errorf("%s EDNS %d: %d bytes, more than %d", mdns.TypeToString[qtype], size, len(raw), limit)
			}
			m := new(mdns.Msg)
			if err := m.Unpack(raw); err != nil {
				t.Fatalf("%s EDNS %d: unpack: %v", mdns.TypeToString[qtype], size, err)
			}
			if !m.Truncated {
				// Only an answer that fits may come whole: 200 A records do
				// in 4096 bytes, 200 SRV records with glue do not.
				if len(m.Answer) != n || limit < 4096 || qtype == mdns.TypeSRV {
					t.Errorf("%s EDNS %d: %d answers in %d bytes without TC", mdns.TypeToString[qtype], size, len(m.Answer), len(raw))
				}
				continue
			}
			if len(m.Answer) >= n {
				t.Errorf("%s EDNS %d: TC with all %d answers", mdns.TypeToString[qtype], size, n)
			}
			if size > 0 && m.IsEdns0() == nil {
				t.Errorf("%s EDNS %d: OPT record dropped", mdns.TypeToString[qtype], size)
			}
			// Trimming fills the space: one more record would not fit.
			if len(m.Answer) == 0 || limit-len(raw) > 100 {
				t.Errorf("%s EDNS %d: %d answers in %d of %d bytes", mdns.TypeToString[qtype], size, len(m.Answer), len(raw), limit)
			}
		}
		m := query(t, a.DNSAddr(), "tcp", name, qtype, 0)
		if m.Truncated || len(m.Answer) != n {
			t.Errorf("TCP %s: TC=%v, %d answers, want %d", mdns.TypeToString[qtype], m.Truncated, len(m.Answer), n)
		}
		if qtype == mdns.TypeSRV && countType(m.Extra, mdns.TypeA) != n {
			t.Errorf("TCP SRV: %d glue records, want %d", countType(m.Extra, mdns.TypeA), n)
		}
	}
	// A small answer is not truncated.
	m := query(t, a.DNSAddr(), "udp", "dc1."+domain, mdns.TypeSOA, 0)
	if m.Truncated {
		t.Error("small answer truncated")
	}
}

func checkHeader(t testing.TB, m *mdns.Msg, rcode int, aa bool) {
	t.Helper()
	if m.Rcode != rcode {
		t.Fatalf("%v: rcode %s, want %s\n%v", m.Question, mdns.RcodeToString[m.Rcode], mdns.RcodeToString[rcode], m)
	}
	if !m.Response || m.Authoritative != aa {
		t.Fatalf("%v: QR=%v AA=%v, want AA=%v", m.Question, m.Response, m.Authoritative, aa)
	}
}

func checkNodata(t testing.TB, m *mdns.Msg, soaOwner string) {
	t.Helper()
	checkHeader(t, m, mdns.RcodeSuccess, true)
	soa := soaIn(m.Ns)
	if len(m.Answer) != 0 || soa == nil || soa.Hdr.Name != soaOwner {
		t.Fatalf("%v: want NODATA with the SOA of %s, got\n%v", m.Question, soaOwner, m)
	}
}

func checkNxdomain(t testing.TB, m *mdns.Msg, soaOwner string) {
	t.Helper()
	checkHeader(t, m, mdns.RcodeNameError, true)
	soa := soaIn(m.Ns)
	if soa == nil || soa.Hdr.Name != soaOwner {
		t.Fatalf("%v: want NXDOMAIN with the SOA of %s, got\n%v", m.Question, soaOwner, m)
	}
}

// ips lists the addresses of the A and AAAA records, sorted.
func ips(rrs []mdns.RR) string {
	var out []string
	for _, rr := range rrs {
		switch r := rr.(type) {
		case *mdns.A:
			out = append(out, r.A.String())
		case *mdns.AAAA:
			out = append(out, r.AAAA.String())
		}
	}
	sortStrings(out)
	return strings.Join(out, ",")
}

// TestDNSProductsNamedLikeKeywords: products named "node", "addr" or "ns7"
// resolve, and the names above their addresses are NODATA, not NXDOMAIN,
// so a resolver that asks for them first (as Unbound does) keeps going.
func TestDNSProductsNamedLikeKeywords(t *testing.T) {
	c := consul.Client()
	for i, p := range []string{"node", "addr", "ns7"} {
		register(t, c, instance{id: "kw-" + p, product: p, env: "prod", job: "stream", service: "http", address: fmt.Sprintf("127.0.5.%d", i+1), port: 80})
	}
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	for _, p := range []string{"node", "addr", "ns7"} {
		waitDNS(t, a.DNSAddr(), "http.stream.prod."+p+".dc1."+domain, mdns.TypeA, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, p)
		for _, above := range []string{"prod." + p, "stream.prod." + p, p} {
			checkNodata(t, query(t, a.DNSAddr(), "udp", above+".dc1."+domain, mdns.TypeA, 0), domain)
		}
	}
}
