package agent

import (
	"fmt"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
	"github.com/rugby110/glimpse/internal/testresolver"
)

// TestResolvers: behind each resolver of docs/resolvers.md (Unbound as a
// forward and as a stub zone, BIND 9, Knot Resolver, PowerDNS Recursor,
// dnsmasq), started from Debian's package with the documented
// configuration and QNAME minimisation strict where the resolver has it,
// names under the domain resolve to what the agent answers: SRV, A and
// AAAA of addresses and of SRV targets, NXDOMAIN, NODATA, empty
// non-terminals, an address of 150 instances, names asked after an NS
// query of the zone, and names after the agent restarted.
func TestResolvers(t *testing.T) {
	c := consul.Client()
	p := newProduct("res")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", port: 8000})
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.9", port: 8001})
	register(t, c, instance{id: p + "-g", product: p, env: "prod", job: "stream", service: "grpc", address: "::1", port: 9000})
	for _, job := range []string{"web", "api", "cron", "batch", "edge", "ops", "late"} {
		register(t, c, instance{id: p + "-" + job, product: p, env: "prod", job: job, service: "http", address: "127.0.0.11", port: 80})
	}
	const big = 150
	for i := range big {
		register(t, c, instance{id: fmt.Sprintf("%s-f%d", p, i), product: p, env: "prod", job: "fleet", service: "http",
			address: fmt.Sprintf("127.3.%d.%d", i/250, i%250+1), port: 10000 + i})
	}
	zone := "dc1." + domain
	name := func(service, job string) string { return service + "." + job + ".prod." + p + "." + zone }

	for _, k := range testresolver.Kinds {
		t.Run(k.Name, func(t *testing.T) {
			cfg := testConfig(t, consul.HTTPAddr())
			a, stop := stoppableAgent(t, cfg)
			waitDNS(t, a.DNSAddr(), name("http", "fleet"), mdns.TypeA, func(m *mdns.Msg) bool { return len(m.Answer) == 100 }, "the fleet")
			r := k.Start(t, a.DNSAddr())
			ask := func(qname string, qtype uint16) *mdns.Msg {
				t.Helper()
				m, err := r.Query(qname, qtype)
				if err != nil {
					t.Fatalf("%s %s through %s: %v", mdns.TypeToString[qtype], qname, k.Name, err)
				}
				return m
			}
			want := func(qname string, qtype uint16, rcode, answers int) *mdns.Msg {
				t.Helper()
				m := ask(qname, qtype)
				if m.Rcode != rcode || countType(m.Answer, qtype) != answers {
					t.Errorf("%s %s through %s: %s with %d %s records, want %s with %d\n%v", mdns.TypeToString[qtype], qname, k.Name,
						mdns.RcodeToString[m.Rcode], countType(m.Answer, qtype), mdns.TypeToString[qtype], mdns.RcodeToString[rcode], answers, m)
				}
				return m
			}

			m := want(name("http", "stream"), mdns.TypeSRV, mdns.RcodeSuccess, 2)
			if got := ips(want(name("http", "stream"), mdns.TypeA, mdns.RcodeSuccess, 2).Answer); got != "127.0.0.1,127.0.0.9" {
				t.Errorf("A through %s: %s", k.Name, got)
			}
			for target := range srvTargets(m) {
				want(target, mdns.TypeA, mdns.RcodeSuccess, 1)
			}
			for target := range srvTargets(want(name("grpc", "stream"), mdns.TypeSRV, mdns.RcodeSuccess, 1)) {
				want(target, mdns.TypeAAAA, mdns.RcodeSuccess, 1)
			}
			if got := ips(want(name("grpc", "stream"), mdns.TypeAAAA, mdns.RcodeSuccess, 1).Answer); got != "::1" {
				t.Errorf("AAAA through %s: %s", k.Name, got)
			}
			want(name("nope", "stream"), mdns.TypeSRV, mdns.RcodeNameError, 0)
			want("http.stream.prod.no-such-product."+zone, mdns.TypeA, mdns.RcodeNameError, 0)
			want(name("http", "stream"), mdns.TypeTXT, mdns.RcodeSuccess, 0)
			// Empty non-terminals, then a name below one never asked.
			want("api.prod."+p+"."+zone, mdns.TypeA, mdns.RcodeSuccess, 0)
			want("prod."+p+"."+zone, mdns.TypeA, mdns.RcodeSuccess, 0)
			want(name("http", "api"), mdns.TypeSRV, mdns.RcodeSuccess, 1)
			// 150 instances: 100 records, never SERVFAIL.
			want(name("http", "fleet"), mdns.TypeSRV, mdns.RcodeSuccess, 100)
			want(name("http", "fleet"), mdns.TypeA, mdns.RcodeSuccess, 100)

			// NS of the zone and of the domain, then names never asked.
			want(zone, mdns.TypeNS, mdns.RcodeSuccess, 0)
			ask(domain, mdns.TypeNS)
			want(name("http", "web"), mdns.TypeSRV, mdns.RcodeSuccess, 1)
			want(name("http", "cron"), mdns.TypeA, mdns.RcodeSuccess, 1)

			// The agent restarts on the same address; names never asked
			// resolve once it is back.
			stop()
			cfg2 := testConfig(t, consul.HTTPAddr())
			cfg2.DNSAddr = a.DNSAddr()
			a2 := startAgent(t, cfg2)
			waitDNS(t, a2.DNSAddr(), name("http", "batch"), mdns.TypeA, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "the restarted agent")
			testconsul.WaitFor(t, 10*time.Second, func() bool {
				m, err := r.Query(name("http", "edge"), mdns.TypeA)
				return err == nil && m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 1
			}, "%s after the agent restarted", k.Name)
			want(name("http", "ops"), mdns.TypeSRV, mdns.RcodeSuccess, 1)
			if t.Failed() {
				t.Logf("%s: %s", k.Name, strings.Join([]string{k.Doc, k.Package}, ", "))
			}
		})
	}
}
