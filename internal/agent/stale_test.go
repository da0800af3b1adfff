package agent

import (
	"fmt"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestConsulDownServesLastState: while the Consul agent is down the agent
// keeps answering from its last known state and says how stale it is
// (glimpse_cache_stale_seconds grows); once Consul is back, a change made
// after the return shows in DNS within seconds and the zone is fresh again.
//
// It runs its own Consul server with a data directory (not a dev agent), so
// the registrations survive the restart, as they do in production.
func TestConsulDownServesLastState(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Server: true, Datacenter: "dc1"})
	c := srv.Client()
	p := newProduct("stale")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.11", port: 8001})
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.12", port: 8002})

	cfg := testConfig(t, srv.HTTPAddr())
	// Blocking queries that return every 2s keep the waits below short.
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	a := startAgent(t, cfg)
	dnsAddr := a.DNSAddr()
	name := "http.stream.prod." + p + ".dc1." + domain
	want := map[string]uint16{
		"7f00000b.addr.dc1." + domain: 8001,
		"7f00000c.addr.dc1." + domain: 8002,
	}
	waitDNS(t, dnsAddr, name, mdns.TypeSRV, func(m *mdns.Msg) bool {
		return m.Rcode == mdns.RcodeSuccess && fmt.Sprint(srvTargets(m)) == fmt.Sprint(want)
	}, "both instances")
	// In contact, the zone is not stale: also once the health watcher has
	// had a blocking result (its second), which Consul 1.10+ serves from
	// its streaming backend, whose answers carry X-Consul-KnownLeader: false.
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_watch_consul_requests_total{endpoint="health",result="ok",zone="dc1"}`) >= 2
	}, "the health watcher never had a blocking result")
	if v := metricValue(scrape(t, a.HTTPAddr()), `glimpse_cache_stale_seconds{zone="dc1"}`); v != 0 {
		t.Errorf("stale seconds %v while Consul is up, after a blocking health result", v)
	}

	// Consul crashes.
	srv.Kill()
	down := time.Now()

	// The answers stay the same, over UDP and TCP, for SRV and A, while
	// the zone's staleness grows. Every poll of the wait below queries DNS,
	// so this checks many answers over the outage, none of them SERVFAIL.
	queries := 0
	checkAnswers := func() {
		t.Helper()
		for _, proto := range []string{"udp", "tcp"} {
			m := query(t, dnsAddr, proto, name, mdns.TypeSRV, 4096)
			if m.Rcode != mdns.RcodeSuccess || !m.Authoritative {
				t.Fatalf("%s SRV while Consul is down: rcode %s AA=%v, want an authoritative NOERROR\n%v",
					proto, mdns.RcodeToString[m.Rcode], m.Authoritative, m)
			}
			if got := srvTargets(m); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("%s SRV while Consul is down: %v, want the last known %v", proto, got, want)
			}
			queries++
		}
		m := query(t, dnsAddr, "udp", name, mdns.TypeA, 0)
		if m.Rcode != mdns.RcodeSuccess || ips(m.Answer) != "127.0.0.11,127.0.0.12" {
			t.Fatalf("A while Consul is down: rcode %s, %s\n%v", mdns.RcodeToString[m.Rcode], ips(m.Answer), m)
		}
		queries++
	}

	var first float64
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		checkAnswers()
		first = metricValue(scrape(t, a.HTTPAddr()), `glimpse_cache_stale_seconds{zone="dc1"}`)
		return first > 0
	}, "glimpse_cache_stale_seconds{zone=\"dc1\"} never went above 0 after Consul went down")
	t.Logf("stale after %v: glimpse_cache_stale_seconds = %.3f", time.Since(down).Round(time.Millisecond), first)

	// It grows: wait (answering all along) until it is a good second
	// higher, both in /metrics and in the agent's own registry.
	var second float64
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		checkAnswers()
		second = metricValue(scrape(t, a.HTTPAddr()), `glimpse_cache_stale_seconds{zone="dc1"}`)
		return second >= first+1.5
	}, "stale seconds did not grow from %.3f (last %v)", first, lazy(func() any { return second }))
	if reg := staleSeconds(t, a); reg < second {
		t.Errorf("registry: stale seconds %.3f, less than the %.3f scraped before", reg, second)
	}
	if z := a.Cache.Zone("dc1"); z == nil || !z.Synced {
		t.Errorf("local zone not synced any more while Consul is down: %+v", z)
	}
	outage := time.Since(down)
	t.Logf("Consul down for %v: %d DNS answers, all the last known state; stale seconds %.3f then %.3f",
		outage.Round(time.Millisecond), queries, first, second)

	// Consul comes back with its state.
	srv.Restart(t)
	back := time.Now()

	// A change made after the return shows within a bound.
	register(t, c, instance{id: p + "-c", product: p, env: "prod", job: "stream", service: "http", address: "127.0.0.13", port: 8003})
	registered := time.Now()
	want["7f00000d.addr.dc1."+domain] = 8003
	var last *mdns.Msg
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		last = query(t, dnsAddr, "udp", name, mdns.TypeSRV, 4096)
		return last.Rcode == mdns.RcodeSuccess && fmt.Sprint(srvTargets(last)) == fmt.Sprint(want)
	}, "the instance registered after Consul's return never showed in DNS; last answer:\n%v", lazy(func() any { return last }))
	t.Logf("instance registered %v after Consul was ready again showed in DNS %v after its registration",
		registered.Sub(back).Round(time.Millisecond), time.Since(registered).Round(time.Millisecond))

	// Fresh again: stale seconds back to 0, and still 0 once the health
	// watcher has had two more results (blocking ones, from Consul's
	// streaming backend). A watcher whose first request after the return
	// finds nothing changed hears back only when its wait ends, so the
	// zone may read stale for a wait after Consul's return; the bound is
	// two waits (the two health results) and some.
	healthOK := func(body string) float64 {
		return metricValue(body, `glimpse_watch_consul_requests_total{endpoint="health",result="ok",zone="dc1"}`)
	}
	since := healthOK(scrape(t, a.HTTPAddr()))
	var stale, results float64
	testconsul.WaitFor(t, 2*cfg.Watch.Wait+5*time.Second, func() bool {
		body := scrape(t, a.HTTPAddr())
		stale = metricValue(body, `glimpse_cache_stale_seconds{zone="dc1"}`)
		results = healthOK(body) - since
		return stale == 0 && results >= 2
	}, "stale seconds not back to 0 after Consul's return: %v, with %v health results since",
		lazy(func() any { return stale }), lazy(func() any { return results }))
	if v := staleSeconds(t, a); v != 0 {
		t.Errorf("registry: stale seconds %v after Consul's return", v)
	}
	t.Logf("fresh again %v after Consul was ready", time.Since(back).Round(time.Millisecond))
}

// staleSeconds reads glimpse_cache_stale_seconds{zone=<local>} from the
// agent's registry, without HTTP.
func staleSeconds(t testing.TB, a *Agent) float64 {
	t.Helper()
	families, err := a.Registry.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, f := range families {
		if f.GetName() != "glimpse_cache_stale_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "zone" && l.GetValue() == a.Zone() {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("glimpse_cache_stale_seconds{zone=%q} not in the registry", a.Zone())
	return 0
}

// lazy formats the value f returns when the message is formatted, so a
// WaitFor failure message shows the last value its condition saw rather than
// the one when WaitFor was called.
type lazy func() any

func (l lazy) String() string { return fmt.Sprint(l()) }
