package agent

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// startRemoteZone starts a dev Consul agent for datacenter dc, bound to
// bindAddr (a 127.x.y.z of its own, so its addresses differ from dc1's), and
// joins it over the WAN to the shared dc1 agent. It returns once dc1 lists
// the datacenter. At the end of the test the agent leaves the WAN, so that
// dc1 forgets the datacenter and a later test can use the name again.
func startRemoteZone(t *testing.T, dc, bindAddr string) *testconsul.Agent {
	t.Helper()
	remote := testconsul.Start(t, testconsul.Options{
		Dev: true, Datacenter: dc, BindAddr: bindAddr,
		RetryJoinWAN: []string{consul.SerfWANAddr()},
	})
	listed := func() bool {
		dcs, err := consul.Client().Catalog().Datacenters()
		return err == nil && slices.Contains(dcs, dc)
	}
	testconsul.WaitFor(t, 15*time.Second, listed, "dc1 never listed datacenter %s", dc)
	t.Cleanup(func() {
		// Runs before testconsul's cleanup. A server's leave takes seconds
		// (LAN leave, raft), while dc1 forgets the datacenter as soon as
		// the WAN leave has gossiped: wait for that, then kill the agent.
		began := time.Now()
		left := make(chan error, 1)
		go func() { left <- remote.Client().Agent().Leave() }()
		testconsul.WaitFor(t, 15*time.Second, func() bool { return !listed() }, "dc1 still lists %s after it left", dc)
		remote.Kill()
		<-left
		t.Logf("%s: forgotten by dc1 %v after its leave", dc, time.Since(began).Round(time.Millisecond))
	})
	return remote
}

// agentWithRemoteZone starts a remote datacenter with one instance of a new
// product (on bindAddr's /24 at .1) and an agent with the given idle period
// that knows the datacenter. It returns the agent and the instance's
// address in the remote zone.
func agentWithRemoteZone(t *testing.T, dc, bindAddr, prefix string, idle time.Duration) (*Agent, string) {
	t.Helper()
	remote := startRemoteZone(t, dc, bindAddr)
	p := newProduct(prefix)
	ip := strings.Replace(bindAddr, "127.0.0.", "127.0.", 1) + ".1"
	register(t, remote.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: ip, port: 9001})
	cfg := remoteConfig(t)
	cfg.Watch.Idle = idle
	a := startAgent(t, cfg)
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		exists, _ := a.Cache.Datacenter(dc)
		return exists
	}, "the agent never learnt of %s", dc)
	return a, "http.stream.prod." + p + "." + dc
}

// remoteConfig is testConfig with a datacenter list refreshed often enough
// for a datacenter joined during the test.
func remoteConfig(t testing.TB) Config {
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.Watch.DatacentersEvery = 200 * time.Millisecond
	return cfg
}

// TestRemoteZone: names of another datacenter resolve through the local
// agent, which watches that zone from its first query on; NS of the zone
// lists that zone's servers; an unknown zone is NXDOMAIN with the SOA.
func TestRemoteZone(t *testing.T) {
	dc2 := startRemoteZone(t, "dc2", "127.0.0.2")
	p := newProduct("remote")
	register(t, dc2.Client(), instance{id: p + "-node", product: p, env: "prod", job: "stream", service: "http", port: 9001})
	register(t, dc2.Client(), instance{id: p + "-own", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.22", port: 9002})

	a := startAgent(t, remoteConfig(t))
	dnsAddr := a.DNSAddr()
	if z := a.Cache.Zone("dc2"); z != nil {
		t.Fatalf("dc2 watched before any query for it: %+v", z)
	}
	zoneName := "dc2." + domain
	name := "http.stream.prod." + p + "." + zoneName
	nodeTarget := strings.ToLower(dc2.NodeName()) + ".node." + zoneName
	addrTarget := "7f000016.addr." + zoneName
	want := map[string]uint16{nodeTarget: 9001, addrTarget: 9002}

	// The first query starts the zone's watch and waits up to RemoteWait
	// for its first sync: the answer is the instances, or SERVFAIL if the
	// sync took longer (or the agent's list of datacenters is not loaded
	// yet); never NXDOMAIN.
	began := time.Now()
	first := query(t, dnsAddr, "udp", name, mdns.TypeSRV, 4096)
	t.Logf("first query for a dc2 name: %s in %v", mdns.RcodeToString[first.Rcode], time.Since(began).Round(time.Millisecond))
	switch {
	case first.Rcode == mdns.RcodeServerFailure:
	case first.Rcode == mdns.RcodeSuccess && fmt.Sprint(srvTargets(first)) == fmt.Sprint(want):
	default:
		t.Fatalf("first query for %s: want the instances or SERVFAIL, got\n%v", name, first)
	}
	m := waitDNS(t, dnsAddr, name, mdns.TypeSRV, func(m *mdns.Msg) bool {
		return m.Rcode == mdns.RcodeSuccess && fmt.Sprint(srvTargets(m)) == fmt.Sprint(want)
	}, "dc2's instances")
	checkHeader(t, m, mdns.RcodeSuccess, true)
	glue := map[string]string{}
	for _, rr := range m.Extra {
		if a, ok := rr.(*mdns.A); ok {
			glue[a.Hdr.Name] = a.A.String()
		}
	}
	if glue[nodeTarget] != "127.0.0.2" || glue[addrTarget] != "127.0.0.22" || len(glue) != 2 {
		t.Errorf("SRV glue %v, want %s=127.0.0.2 and %s=127.0.0.22", glue, nodeTarget, addrTarget)
	}
	if z := a.Cache.Zone("dc2"); z == nil || !z.Synced || z.Local {
		t.Errorf("dc2 in the cache: %+v, want a synced remote zone", z)
	}

	m = query(t, dnsAddr, "udp", name, mdns.TypeA, 0)
	checkHeader(t, m, mdns.RcodeSuccess, true)
	if got := ips(m.Answer); got != "127.0.0.2,127.0.0.22" {
		t.Errorf("A %s: %s, want 127.0.0.2,127.0.0.22", name, got)
	}
	m = query(t, dnsAddr, "udp", nodeTarget, mdns.TypeA, 0)
	if got := ips(m.Answer); m.Rcode != mdns.RcodeSuccess || got != "127.0.0.2" {
		t.Errorf("A %s: %s %s, want 127.0.0.2", nodeTarget, mdns.RcodeToString[m.Rcode], got)
	}

	// NS of the zone: no zone cut by default (NODATA, the domain's SOA);
	// its servers still have names.
	checkNodata(t, query(t, dnsAddr, "udp", zoneName, mdns.TypeNS, 0), domain)
	m = query(t, dnsAddr, "udp", "ns1."+zoneName, mdns.TypeA, 0)
	if got := ips(m.Answer); got != "127.0.0.2" {
		t.Errorf("A ns1.%s: %s, want 127.0.0.2", zoneName, got)
	}
	checkNodata(t, query(t, dnsAddr, "udp", zoneName, mdns.TypeSOA, 0), domain)

	// Negative answers in the remote zone carry its SOA.
	checkNxdomain(t, query(t, dnsAddr, "udp", "nope.stream.prod."+p+"."+zoneName, mdns.TypeSRV, 0), domain)
	checkNxdomain(t, query(t, dnsAddr, "udp", "http.stream.prod.no-such-product."+zoneName, mdns.TypeSRV, 0), domain)

	// A zone Consul does not know: NXDOMAIN with the apex SOA, and no
	// watch started for it.
	for _, qt := range []uint16{mdns.TypeSRV, mdns.TypeA} {
		checkNxdomain(t, query(t, dnsAddr, "udp", "http.stream.prod.goku.nosuchzone."+domain, qt, 0), domain)
	}
	checkNxdomain(t, query(t, dnsAddr, "udp", "nosuchzone."+domain, mdns.TypeNS, 0), domain)
	if z := a.Cache.Zone("nosuchzone"); z != nil {
		t.Errorf("unknown zone in the cache: %+v", z)
	}
}

// TestRemoteZoneIdleDrop: a remote zone is watched from its first query on,
// stays watched while it is queried, is dropped (watchers and all) once
// nobody has queried it for the idle period, and a new query brings it back.
func TestRemoteZoneIdleDrop(t *testing.T) {
	const dc = "dc3"
	remote := startRemoteZone(t, dc, "127.0.0.3")
	p := newProduct("idle")
	register(t, remote.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", port: 9100})

	cfg := remoteConfig(t)
	cfg.Watch.Idle = 2 * time.Second
	a := startAgent(t, cfg)
	dnsAddr := a.DNSAddr()
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		exists, _ := a.Cache.Datacenter(dc)
		return exists
	}, "the agent never learnt of datacenter %s", dc)
	if z := a.Cache.Zone(dc); z != nil {
		t.Fatalf("%s watched before any query for it", dc)
	}

	name := "http.stream.prod." + p + "." + dc + "." + domain
	resolves := func(m *mdns.Msg) bool {
		return m.Rcode == mdns.RcodeSuccess && len(srvTargets(m)) == 1 && srvTargets(m)[strings.ToLower(remote.NodeName())+".node."+dc+"."+domain] == 9100
	}
	watchers := func() float64 {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_watch_watchers{zone="`+dc+`"}`)
	}
	for round := 1; round <= 2; round++ {
		waitDNS(t, dnsAddr, name, mdns.TypeSRV, resolves, fmt.Sprintf("round %d: %s resolves", round, dc))
		if z := a.Cache.Zone(dc); z == nil || !z.Synced {
			t.Fatalf("round %d: %s not a synced zone after it answered: %+v", round, dc, z)
		}
		if w := watchers(); w < 3 {
			t.Fatalf("round %d: %v watchers for %s, want services, servers and one product", round, w, dc)
		}

		// Queried all along for twice the idle period, the zone stays.
		start := time.Now()
		testconsul.WaitFor(t, 4*cfg.Watch.Idle, func() bool {
			if m := query(t, dnsAddr, "udp", name, mdns.TypeSRV, 4096); !resolves(m) {
				t.Fatalf("round %d: %s stopped resolving while queried:\n%v", round, name, m)
			}
			if a.Cache.Zone(dc) == nil {
				t.Fatalf("round %d: %s dropped %v after the first query although queried all along", round, dc, time.Since(start))
			}
			return time.Since(start) > 2*cfg.Watch.Idle
		}, "round %d: the queried window did not end", round)

		// Not queried any more: dropped after the idle period, its
		// watchers stopped.
		last := time.Now()
		testconsul.WaitFor(t, cfg.Watch.Idle+5*time.Second, func() bool { return a.Cache.Zone(dc) == nil },
			"round %d: %s never dropped", round, dc)
		idle := time.Since(last)
		t.Logf("round %d: %s dropped %v after its last query (idle period %v)", round, dc, idle.Round(time.Millisecond), cfg.Watch.Idle)
		// The last read is recorded to the second, so a zone may go up to
		// a second early.
		if idle < cfg.Watch.Idle-200*time.Millisecond { // the last read is kept to 100 ms
			t.Errorf("round %d: %s dropped %v after its last query, before the idle period %v", round, dc, idle, cfg.Watch.Idle)
		}
		testconsul.WaitFor(t, 5*time.Second, func() bool { return watchers() <= 0 },
			"round %d: watchers of %s still running after it was dropped: %v", round, dc, lazy(func() any { return watchers() }))
	}
}
