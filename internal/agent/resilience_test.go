package agent

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// fastRaft makes elections and failure detection take about a second (the
// default raft_multiplier of 5 makes them five), and promotes a joining
// server to voter after 1 s of health instead of 10.
var fastRaft = []string{"-hcl", `performance { raft_multiplier = 1 }
autopilot { server_stabilization_time = "1s" }`}

// startServers starts a datacenter of n Consul servers on 127.0.<net>.1…n:
// the first bootstraps alone, the others join it; it returns once all n are
// raft voters.
func startServers(t *testing.T, dc string, net, n int) []*testconsul.Agent {
	t.Helper()
	opts := func(i int) testconsul.Options {
		return testconsul.Options{Server: true, Datacenter: dc, BindAddr: fmt.Sprintf("127.0.%d.%d", net, i+1),
			ReconnectTimeout: time.Hour, ExtraArgs: fastRaft}
	}
	servers := []*testconsul.Agent{testconsul.Start(t, opts(0))}
	for i := 1; i < n; i++ {
		o := opts(i)
		o.RetryJoin = []string{servers[0].SerfLANAddr()}
		servers = append(servers, testconsul.Start(t, o))
	}
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		cfg, err := servers[0].Client().Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false
		}
		voters := 0
		for _, s := range cfg.Servers {
			if s.Voter {
				voters++
			}
		}
		return voters == n
	}, "%d servers never became voters", n)
	return servers
}

// leaderOf returns the server among servers that leads, or nil.
func leaderOf(servers []*testconsul.Agent) *testconsul.Agent {
	for _, s := range servers {
		leader, err := s.Client().Status().Leader()
		if err != nil || leader == "" {
			continue
		}
		for _, l := range servers {
			if l.ServerAddr() == leader {
				return l
			}
		}
	}
	return nil
}

// prober queries DNS for a known name over and over and records every
// answer that is not the expected one, and the latencies.
type prober struct {
	addr, name string
	want       func(*mdns.Msg) bool
	stop       chan struct{}
	stopOnce   sync.Once
	done       sync.WaitGroup

	mu        sync.Mutex
	answers   int
	bad       []string
	latencies []time.Duration
}

func startProber(addr, name string, want func(*mdns.Msg) bool) *prober {
	p := &prober{addr: addr, name: name, want: want, stop: make(chan struct{})}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		c := &mdns.Client{Net: "udp", Timeout: 2 * time.Second}
		for {
			select {
			case <-p.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			m := new(mdns.Msg)
			m.SetQuestion(name, mdns.TypeSRV)
			r, rtt, err := c.Exchange(m, addr)
			p.mu.Lock()
			p.answers++
			switch {
			case err != nil:
				p.bad = append(p.bad, err.Error())
			case !want(r):
				p.bad = append(p.bad, fmt.Sprintf("rcode %s, %d answers", mdns.RcodeToString[r.Rcode], len(r.Answer)))
			default:
				p.latencies = append(p.latencies, rtt)
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// take returns the counts and latencies so far and starts afresh.
func (p *prober) take() (answers int, bad []string, lat []time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	answers, bad, lat = p.answers, p.bad, p.latencies
	p.answers, p.bad, p.latencies = 0, nil, nil
	return
}

func (p *prober) close() {
	p.stopOnce.Do(func() { close(p.stop) })
	p.done.Wait()
}

func pct(lat []time.Duration, q float64) time.Duration {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*q))]
}

// TestQuorumLoss: a ring of 3 Consul servers and a client agent, with
// glimpse-agent on the client. The leader is killed, then a second server:
// DNS keeps answering the known names throughout, never SERVFAIL, from the
// last state (stale once there is no quorum). When the two servers return,
// a change made after that shows within seconds.
func TestQuorumLoss(t *testing.T) {
	servers := startServers(t, "dc1", 20, 3)
	client := testconsul.Start(t, testconsul.Options{Datacenter: "dc1", BindAddr: "127.0.20.10",
		RetryJoin: []string{servers[0].SerfLANAddr()}, ReconnectTimeout: time.Hour})
	p := newProduct("quorum")
	for i := 1; i <= 3; i++ {
		register(t, client.Client(), instance{id: fmt.Sprintf("%s-%d", p, i), product: p, env: "prod", job: "stream", service: "http",
			address: fmt.Sprintf("127.0.21.%d", i), port: 8000 + i})
	}
	cfg := testConfig(t, client.HTTPAddr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	a := startAgent(t, cfg)
	name := "http.stream.prod." + p + ".dc1." + domain
	three := func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 3 }
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, three, "the three instances")

	pr := startProber(a.DNSAddr(), name, three)
	defer pr.close()
	check := func(phase string) {
		t.Helper()
		n, bad, lat := pr.take()
		t.Logf("%s: %d answers, %d wrong, p50 %v, p99 %v", phase, n, len(bad), pct(lat, 0.5), pct(lat, 0.99))
		if len(bad) > 0 || n < 10 {
			t.Fatalf("%s: %d of %d answers wrong, first: %v", phase, len(bad), n, bad[:min(len(bad), 3)])
		}
	}
	time.Sleep(time.Second)
	check("all servers up")

	leader := leaderOf(servers)
	if leader == nil {
		t.Fatal("no leader")
	}
	leader.Kill()
	rest := slices.DeleteFunc(slices.Clone(servers), func(s *testconsul.Agent) bool { return s == leader })
	testconsul.WaitFor(t, 20*time.Second, func() bool { l := leaderOf(rest); return l != nil }, "no new leader after the leader was killed")
	time.Sleep(2 * time.Second)
	check("leader killed, a new one elected")

	second := leaderOf(rest)
	second.Kill()
	killed := []*testconsul.Agent{leader, second}
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		return staleSeconds(t, a) > 0
	}, "the zone never showed stale without quorum")
	time.Sleep(3 * time.Second)
	check("no quorum")

	for _, s := range killed {
		s.Restart(t)
	}
	back := time.Now()
	register(t, client.Client(), instance{id: p + "-4", product: p, env: "prod", job: "stream", service: "http", address: "127.0.21.4", port: 8004})
	pr.close()
	pr.take()
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 4 }, "the instance added after quorum returned")
	took := time.Since(back)
	t.Logf("quorum back: a new instance resolved %v after the servers were ready", took.Round(time.Millisecond))
	if took > 15*time.Second {
		t.Errorf("the change took %v after quorum returned", took)
	}
}

// TestZoneIsolation: two datacenters joined over the WAN. With every
// server of the remote one killed, answers for the local zone stay correct
// and as fast; the remote zone's answers are served from its last state and
// show as stale in /v1/zones and the metrics. When the remote servers
// return, a change made there shows and the zone is fresh again.
func TestZoneIsolation(t *testing.T) {
	local := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1", BindAddr: "127.0.30.1", ReconnectTimeout: time.Hour})
	remote := testconsul.Start(t, testconsul.Options{Server: true, Datacenter: "dc5", BindAddr: "127.0.30.2", ReconnectTimeout: time.Hour,
		RetryJoinWAN: []string{local.SerfWANAddr()}})
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		dcs, err := local.Client().Catalog().Datacenters()
		return err == nil && slices.Contains(dcs, "dc5")
	}, "dc1 never listed dc5")
	p := newProduct("isol")
	register(t, local.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.31.1", port: 8001})
	register(t, remote.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.32.1", port: 9001})

	cfg := testConfig(t, local.HTTPAddr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	cfg.Watch.DatacentersEvery = 200 * time.Millisecond
	a := startAgent(t, cfg)
	localName := "http.stream.prod." + p + ".dc1." + domain
	remoteName := "http.stream.prod." + p + ".dc5." + domain
	one := func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeSuccess && len(m.Answer) == 1 }
	waitDNS(t, a.DNSAddr(), remoteName, mdns.TypeSRV, one, "the remote instance")

	lp := startProber(a.DNSAddr(), localName, one)
	defer lp.close()
	rp := startProber(a.DNSAddr(), remoteName, one)
	defer rp.close()
	time.Sleep(3 * time.Second)
	n0, bad0, lat0 := lp.take()
	rp.take()
	if len(bad0) > 0 {
		t.Fatalf("local answers before the outage: %d of %d wrong: %v", len(bad0), n0, bad0[:1])
	}

	remote.Kill()
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_cache_stale_seconds{zone="dc5"}`) > 0
	}, "dc5 never showed stale in the metrics")
	lp.take()
	rp.take()
	time.Sleep(4 * time.Second)
	n1, bad1, lat1 := lp.take()
	rn, rbad, _ := rp.take()
	t.Logf("local answers: before %d, p50 %v p99 %v; remote servers dead %d, p50 %v p99 %v; remote answers meanwhile %d, %d wrong",
		n0, pct(lat0, .5), pct(lat0, .99), n1, pct(lat1, .5), pct(lat1, .99), rn, len(rbad))
	if len(bad1) > 0 {
		t.Errorf("local answers while dc5 is down: %d of %d wrong: %v", len(bad1), n1, bad1[:1])
	}
	if len(rbad) > 0 || rn < 10 {
		t.Errorf("remote answers while dc5 is down: %d of %d not the last state: %v", len(rbad), rn, rbad[:min(len(rbad), 1)])
	}
	// The same order of speed: a remote outage must not slow local answers
	// (a generous bound, for a loaded machine running -race).
	if p50 := pct(lat1, .5); p50 > 3*pct(lat0, .5)+2*time.Millisecond {
		t.Errorf("local p50 %v while dc5 is down, %v before", p50, pct(lat0, .5))
	}
	var zones zonesBody
	getJSON(t, nil, "http://"+a.HTTPAddr()+"/v1/zones", &zones)
	if z := zones.zone("dc1"); z == nil || z.SecondsStale != 0 || z.Error != "" {
		t.Errorf("dc1 in /v1/zones while dc5 is down: %+v", z)
	}
	if z := zones.zone("dc5"); z == nil || z.SecondsStale <= 0 || z.Error == "" {
		t.Errorf("dc5 in /v1/zones while it is down: %+v", z)
	}

	remote.Restart(t)
	register(t, remote.Client(), instance{id: p + "-2", product: p, env: "prod", job: "stream", service: "http", address: "127.0.32.2", port: 9002})
	lp.close()
	rp.close()
	back := time.Now()
	waitDNS(t, a.DNSAddr(), remoteName, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 2 }, "the instance added in dc5 after its return")
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_cache_stale_seconds{zone="dc5"}`) == 0
	}, "dc5 still stale after its return")
	t.Logf("dc5 back: resynced %v after its server was ready", time.Since(back).Round(time.Millisecond))
}

// TestIndexReset: the Consul agent restarts with an empty state, so its
// indexes start low again. The watchers notice, start over and converge on
// the new state within seconds, and then idle: the requests they make are
// counted at a proxy and stay few (no loop on a stale index).
func TestIndexReset(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	proxy := testconsul.NewCountingProxy(t, srv.HTTPAddr())
	p := newProduct("reset")
	in := instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.40.1", port: 8001}
	register(t, srv.Client(), in)
	// Push Consul's index well above what a fresh agent will have.
	for i := 0; i < 30; i++ {
		register(t, srv.Client(), instance{id: fmt.Sprintf("%s-x%d", p, i), product: p + "x", env: "prod", job: "j", service: "s", port: 1000 + i})
	}
	cfg := testConfig(t, proxy.Addr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	a := startAgent(t, cfg)
	name := "http.stream.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "the instance")
	srv.Restart(t) // a dev agent: an empty state, indexes from the start
	in.port = 8002
	register(t, srv.Client(), in)
	restarted := time.Now()
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool {
		return len(m.Answer) == 1 && m.Answer[0].(*mdns.SRV).Port == 8002
	}, "the instance registered after the reset")
	t.Logf("converged %v after the restart", time.Since(restarted).Round(time.Millisecond))
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return a.Cache.Zone("dc1").Products.Get(p+"x") == nil
	}, "the product gone with the reset is still served")

	// Idle now: count the watchers' requests over 6 s (3 waits).
	time.Sleep(2 * time.Second)
	proxy.ResetCounts()
	time.Sleep(6 * time.Second)
	watchReqs := int64(0)
	for path, n := range proxy.CountByPath() {
		if strings.HasPrefix(path, "/v1/catalog/") || strings.HasPrefix(path, "/v1/health/") {
			watchReqs += n
		}
	}
	t.Logf("watchers' requests in 6 s after convergence: %d (%v)", watchReqs, proxy.CountByPath())
	// 3 watchers (services, servers, the product), a 2 s wait: about 9;
	// a loop on a stale index would be bounded only by the rate limit
	// (20/s each, 360 in 6 s).
	if watchReqs > 20 {
		t.Errorf("%d watcher requests in 6 s of quiet", watchReqs)
	}
}

// TestSickConsul: a proxy in front of Consul answers slowly, fails with
// 500s and drops connections. The watchers retry with capped, jittered
// back-off (the request rate stays under its bound), and after 1,000 failed
// requests the agent has no more goroutines and no more heap than before;
// once Consul is healthy again it resyncs.
func TestSickConsul(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	proxy := testconsul.NewCountingProxy(t, srv.HTTPAddr())
	const products = 10
	base := newProduct("sick")
	for i := 0; i < products; i++ {
		p := fmt.Sprintf("%sp%d", base, i)
		register(t, srv.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.50.1", port: 8000 + i})
	}
	cfg := testConfig(t, proxy.Addr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	cfg.Watch.MinBackoff = 5 * time.Millisecond
	cfg.Watch.MaxBackoff = 40 * time.Millisecond
	cfg.ProbeEvery = time.Hour // count the watchers' requests only
	a := startAgent(t, cfg)
	name := fmt.Sprintf("http.stream.prod.%sp0.dc1.%s", base, domain)
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "the instance")

	settle := func() (int, uint64) {
		time.Sleep(500 * time.Millisecond)
		return runtime.NumGoroutine(), heapInUse()
	}
	// One round of failures first, so that pools and buffers that any
	// failure allocates once are in the baseline.
	proxy.SetFault(testconsul.Fault{Status: 500})
	time.Sleep(300 * time.Millisecond)
	proxy.SetFault(testconsul.Fault{})
	waitFresh(t, a)
	g0, h0 := settle()

	watchers := products + 2
	faults := []testconsul.Fault{
		{Status: 500},
		{CloseConn: true},
		{Delay: 100 * time.Millisecond, Status: 503},
		{Delay: 50 * time.Millisecond, CloseConn: true},
	}
	proxy.ResetCounts()
	start := time.Now()
	for i := 0; proxy.Count() < 1000; i++ {
		if time.Since(start) > 60*time.Second {
			t.Fatalf("only %d failed requests in 60 s", proxy.Count())
		}
		proxy.SetFault(faults[i%len(faults)])
		time.Sleep(500 * time.Millisecond)
	}
	failed := proxy.Count()
	elapsed := time.Since(start)
	// Every watcher waits at least half the cap between failures, so the
	// rate is at most watchers / (MaxBackoff/2), plus the faults' delays
	// only lowering it.
	bound := float64(watchers) / (cfg.Watch.MaxBackoff.Seconds() / 2)
	rate := float64(failed) / elapsed.Seconds()
	t.Logf("%d failed requests in %v: %.0f/s (bound %.0f/s for %d watchers)", failed, elapsed.Round(time.Millisecond), rate, bound, watchers)
	if rate > bound*1.1 {
		t.Errorf("%.0f failed requests/s, over the back-off's bound of %.0f/s", rate, bound)
	}
	// DNS answered from the last state all along.
	if m := query(t, a.DNSAddr(), "udp", name, mdns.TypeSRV, 0); m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
		t.Errorf("DNS while Consul is sick: %v", m)
	}

	proxy.SetFault(testconsul.Fault{})
	waitFresh(t, a)
	g1, h1 := settle()
	t.Logf("goroutines %d → %d, heap in use %d → %d KiB", g0, g1, h0>>10, h1>>10)
	if g1 > g0+5 {
		t.Errorf("goroutines grew from %d to %d over %d failures", g0, g1, failed)
	}
	if h1 > h0+4<<20 {
		t.Errorf("heap in use grew from %d to %d KiB over %d failures", h0>>10, h1>>10, failed)
	}
	p := fmt.Sprintf("%sp%d", base, products)
	register(t, srv.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.50.2", port: 9000})
	waitDNS(t, a.DNSAddr(), fmt.Sprintf("http.stream.prod.%s.dc1.%s", p, domain), mdns.TypeSRV,
		func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "a product added after Consul recovered")
}

// waitFresh waits until no watcher of the local zone is failing.
func waitFresh(t *testing.T, a *Agent) {
	t.Helper()
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		return !a.Cache.Status(a.Zone()).Stale()
	}, "the zone never became fresh again")
}
