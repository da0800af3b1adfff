package agent

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
	"github.com/rugby110/glimpse/internal/testconsul"
	"github.com/rugby110/glimpse/watch"
)

// scaleProducts is how many products the scale test registers: ten times
// what an agent watching every product could hold within Consul's default
// per-client limit of 200 connections.
const scaleProducts = 2000

// scaleConsul starts a dev Consul agent with its default limits, whose
// http_config blocks the health endpoint of one product, and registers
// scaleProducts products of one instance each (plus the blocked one)
// straight into its catalog.
func scaleConsul(t *testing.T, https bool) (*testconsul.Agent, []string) {
	t.Helper()
	ca := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1", HTTPS: https, ExtraArgs: []string{
		"-hcl", `http_config { block_endpoints = ["/v1/health/service/scaleblocked"] }`,
	}})
	// A client of its own, whose connections are closed once done, so that
	// the connections counted later are glimpse's and the neighbour's.
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	defer tr.CloseIdleConnections()
	c, err := api.NewClient(&api.Config{Address: ca.HTTPAddr(), Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, scaleProducts)
	for i := range names {
		names[i] = fmt.Sprintf("scale%04d", i)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := registerCatalog(c, i, names[i], 10000+i); err != nil {
					failed.Store(err)
				}
			}
		}()
	}
	for i := range names {
		work <- i
	}
	close(work)
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("registering %d products: %v", scaleProducts, err)
	}
	if err := registerCatalog(c, scaleProducts, "scaleblocked", 9999); err != nil {
		t.Fatal(err)
	}
	return ca, names
}

// registerCatalog registers one instance of product on one of 20 nodes,
// straight into the catalog (no agent sync to wait for).
func registerCatalog(c *api.Client, i int, product string, port int) error {
	node := fmt.Sprintf("scale-node-%d", i%20)
	_, err := c.Catalog().Register(&api.CatalogRegistration{
		Node: node, Address: fmt.Sprintf("127.1.0.%d", 1+i%20), SkipNodeUpdate: true,
		Service: &api.AgentService{ID: product, Service: product, Port: port,
			Tags: []string{"glimpse:env=prod", "glimpse:job=web", "glimpse:service=http"}},
	}, nil)
	return err
}

// neighbour is another client of the same Consul agent on this host, as
// the Consul CLI is: a new connection per request, every 20 ms, until stop.
// It counts the requests Consul refused or failed, and samples the
// connections open to Consul meanwhile.
type neighbour struct {
	served, refused atomic.Int64
	mostConns       atomic.Int64
	lastErr         atomic.Value
	stop            chan struct{}
	done            chan struct{}
}

func startNeighbour(t *testing.T, ca *testconsul.Agent) *neighbour {
	n := &neighbour{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	go func() {
		defer close(n.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-n.stop:
				return
			case <-tick.C:
			}
			if c, err := ca.HTTPConnections(); err == nil && int64(c) > n.mostConns.Load() {
				n.mostConns.Store(int64(c))
			}
			resp, err := client.Get("http://" + ca.HTTPAddr() + "/v1/status/leader")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				n.refused.Add(1)
				n.lastErr.Store(err.Error())
			} else {
				n.served.Add(1)
			}
		}
	}()
	t.Cleanup(n.halt)
	return n
}

func (n *neighbour) halt() {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	<-n.done
}

// launchReady starts an agent and returns it once its local zone is ready,
// with how long that took.
func launchReady(t *testing.T, cfg Config) (*Agent, time.Duration) {
	t.Helper()
	start := time.Now()
	a, _ := launchAgent(t, cfg, nopLogger(t))
	testconsul.WaitFor(t, 60*time.Second, func() bool {
		z := a.Cache.Zone(a.Zone())
		return z != nil && z.Ready
	}, "never ready")
	return a, time.Since(start)
}

func srvPort(t testing.TB, a *Agent, product string) (int, *mdns.Msg) {
	t.Helper()
	r := query(t, a.DNSAddr(), "udp", "http.web.prod."+product+".dc1.srv.glimpse.io.", mdns.TypeSRV, 4096)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		return 0, r
	}
	return int(r.Answer[0].(*mdns.SRV).Port), r
}

// TestScaleOnDemand: 2,000 products against a Consul agent with its default
// limits. The agent is ready at once, stays within its connection budget
// while another client of the same Consul agent is served throughout,
// answers any product right on its first query (one registered after start
// too), follows changes of what it reads, drops what it stops reading, and
// a product whose reads Consul blocks fails alone.
func TestScaleOnDemand(t *testing.T) {
	ca, names := scaleConsul(t, false)
	nb := startNeighbour(t, ca)

	cfg := testConfig(t, ca.HTTPAddr())
	cfg.Watch.Idle = 2 * time.Second
	a, ready := launchReady(t, cfg)
	t.Logf("ready %v after start with %d products", ready, scaleProducts)
	if ready > 10*time.Second {
		t.Errorf("ready after %v, want within 10 s", ready)
	}
	if s := httpStatus(t, "http://"+a.HTTPAddr()+"/readyz"); s != http.StatusOK {
		t.Errorf("/readyz %d", s)
	}

	// 30 random products, each right on its first query.
	picked := map[int]bool{}
	for len(picked) < 30 {
		picked[rand.N(scaleProducts)] = true
	}
	for i := range picked {
		if port, r := srvPort(t, a, names[i]); port != 10000+i {
			t.Errorf("first query of %s: port %d, want %d; answer %v", names[i], port, 10000+i, r)
		}
	}

	// The blocked product fails alone, and says why.
	r := query(t, a.DNSAddr(), "udp", "http.web.prod.scaleblocked.dc1.srv.glimpse.io.", mdns.TypeSRV, 4096)
	if r.Rcode != mdns.RcodeServerFailure {
		t.Errorf("the blocked product: rcode %s, want SERVFAIL", mdns.RcodeToString[r.Rcode])
	}
	var zones zonesBody
	getJSON(t, nil, "http://"+a.HTTPAddr()+"/v1/zones", &zones)
	z := zones.zone("dc1")
	if z == nil || len(z.Failing) != 1 || z.Failing[0].Product != "scaleblocked" || !strings.Contains(z.Failing[0].Error, "block_endpoints") || z.Products != scaleProducts+1 {
		t.Errorf("/v1/zones: %+v, want %d products and scaleblocked failing with its cause", z, scaleProducts+1)
	} else {
		t.Logf("/v1/zones names the blocked product: %q", z.Failing[0].Error)
	}
	if port, r := srvPort(t, a, names[0]); port != 10000 {
		t.Errorf("another product after the blocked one: %v", r)
	}

	// A product registered after start answers right on its first query,
	// as soon as Consul's catalog has it.
	if err := registerCatalog(ca.Client(), 0, "scalenew", 7777); err != nil {
		t.Fatal(err)
	}
	if port, r := srvPort(t, a, "scalenew"); port != 7777 {
		t.Errorf("first query of a product registered after start: %v", r)
	}

	// A change to a product in use shows (not names[0], which is left
	// idle below and must keep its port).
	changed := -1
	for i := range picked {
		if i != 0 {
			changed = i
			break
		}
	}
	if err := registerCatalog(ca.Client(), changed, names[changed], 20000+changed); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, a.DNSAddr(), "http.web.prod."+names[changed]+".dc1.srv.glimpse.io.", mdns.TypeSRV, func(m *mdns.Msg) bool {
		return len(m.Answer) == 1 && int(m.Answer[0].(*mdns.SRV).Port) == 20000+changed
	}, "the change of a product in use")

	// What nobody reads is dropped after -watch.idle, and comes back on
	// its next read.
	idle := names[0]
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		return a.Cache.Zone("dc1").Products.Get(idle) == nil
	}, "%s never dropped after %v without reads", idle, cfg.Watch.Idle)
	if port, r := srvPort(t, a, idle); port != 10000 {
		t.Errorf("%s read again after it was dropped: %v", idle, r)
	}

	nb.halt()
	m := scrape(t, a.HTTPAddr())
	peak := metricValue(m, "glimpse_consul_connections_peak")
	t.Logf("connections: glimpse's peak %v (budget %d); most open to Consul from this host %d; neighbour served %d, refused %d",
		peak, cfg.Watch.MaxConns, nb.mostConns.Load(), nb.served.Load(), nb.refused.Load())
	if peak > float64(cfg.Watch.MaxConns) || peak == 0 {
		t.Errorf("glimpse's connections peaked at %v, budget %d", peak, cfg.Watch.MaxConns)
	}
	// Besides glimpse's: the neighbour's one, the test's own client's and
	// one the neighbour may be closing.
	if most := nb.mostConns.Load(); most > int64(cfg.Watch.MaxConns)+3 {
		t.Errorf("%d connections open to Consul at once, over glimpse's budget of %d and the test's own", most, cfg.Watch.MaxConns)
	}
	if nb.refused.Load() > 0 || nb.served.Load() == 0 {
		t.Errorf("the neighbour: %d served, %d refused (last: %v)", nb.served.Load(), nb.refused.Load(), nb.lastErr.Load())
	}
	if v := metricValue(m, "glimpse_consul_throttled_total"); v != 0 {
		t.Errorf("glimpse saw %v 429s", v)
	}
}

// TestScalePinAll: -watch.pin '*' with ten times more products than
// blocking reads fit in the budget. As documented, the pinned products
// take turns: every one is read before the agent is ready, the budget
// holds, changes of products nobody reads arrive within a rotation, and a
// product in use gets a read of its own.
func TestScalePinAll(t *testing.T) {
	ca, names := scaleConsul(t, false)
	nb := startNeighbour(t, ca)
	cfg := testConfig(t, ca.HTTPAddr())
	cfg.Watch.Pins = []string{"*"}
	cfg.Watch.RotateWait = 200 * time.Millisecond
	a, ready := launchReady(t, cfg)
	t.Logf("ready %v after start with %d pinned products", ready, scaleProducts)
	if n := a.Cache.Zone("dc1").Products.Len(); n != scaleProducts+1-1 {
		// every product but the blocked one has a state
		t.Errorf("%d products with a state when ready, want %d", n, scaleProducts)
	}
	blocking, _ := watch.Budget(cfg.Watch.MaxConns, 1)

	// A product nobody reads: its change arrives with its turn.
	quiet := names[1234]
	if err := registerCatalog(ca.Client(), 1234, quiet, 31234); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	testconsul.WaitFor(t, 60*time.Second, func() bool {
		p := a.Cache.Zone("dc1").Products.Get(quiet)
		for _, ad := range p.Addresses {
			return ad.Instances[0].Port == 31234
		}
		return false
	}, "the change of a pinned product nobody reads never arrived")
	t.Logf("a change of a pinned product nobody reads arrived after %v (rotation of %d products over %d blocking reads)", time.Since(began), scaleProducts, blocking)

	// A product in use: read, then changed.
	hot := names[42]
	if port, r := srvPort(t, a, hot); port != 10042 {
		t.Fatalf("%s: %v", hot, r)
	}
	if err := registerCatalog(ca.Client(), 42, hot, 30042); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, a.DNSAddr(), "http.web.prod."+hot+".dc1.srv.glimpse.io.", mdns.TypeSRV, func(m *mdns.Msg) bool {
		return len(m.Answer) == 1 && int(m.Answer[0].(*mdns.SRV).Port) == 30042
	}, "the change of a pinned product in use")

	nb.halt()
	m := scrape(t, a.HTTPAddr())
	peak := metricValue(m, "glimpse_consul_connections_peak")
	t.Logf("connections: glimpse's peak %v (budget %d), blocking reads limit %v, preempted %v; neighbour served %d, refused %d",
		peak, cfg.Watch.MaxConns, metricValue(m, "glimpse_watch_blocking_reads_limit"), metricValue(m, "glimpse_watch_reads_preempted_total"), nb.served.Load(), nb.refused.Load())
	if peak > float64(cfg.Watch.MaxConns) {
		t.Errorf("glimpse's connections peaked at %v, budget %d", peak, cfg.Watch.MaxConns)
	}
	if most := nb.mostConns.Load(); most > int64(cfg.Watch.MaxConns)+3 {
		t.Errorf("%d connections open to Consul at once", most)
	}
	if nb.refused.Load() > 0 {
		t.Errorf("the neighbour was refused %d times (last: %v)", nb.refused.Load(), nb.lastErr.Load())
	}
}

// TestScalePinAllHTTP2: every one of 2,000 products pinned, against an
// https Consul agent with its default limits. Over HTTP/2 the default
// budget of 100 connections holds a blocking read for every product at
// once, on about 2,000/100 connections: no product waits for a turn, and a
// change of any of them arrives as Consul has it, not at the product's
// next turn.
func TestScalePinAllHTTP2(t *testing.T) {
	ca, names := scaleConsul(t, true)
	nb := startNeighbour(t, ca)
	cfg := testConfig(t, "https://"+ca.HTTPSAddr())
	cfg.ConsulCAFile = ca.CAFile()
	cfg.Watch.Pins = []string{"*"}
	a, ready := launchReady(t, cfg)
	t.Logf("ready %v after start with %d pinned products over HTTP/2", ready, scaleProducts)

	m := scrape(t, a.HTTPAddr())
	limit := metricValue(m, "glimpse_watch_blocking_reads_limit")
	if blocking, _ := watch.Budget(cfg.Watch.MaxConns, 100); limit != float64(blocking) || limit < scaleProducts {
		t.Fatalf("blocking reads limit %v, want %d (100 per connection), at least the %d products", limit, blocking, scaleProducts)
	}
	// Every product's loop holds a read once it has its first result; the
	// zone's two loops besides.
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		m = scrape(t, a.HTTPAddr())
		return metricValue(m, "glimpse_watch_blocking_reads") >= scaleProducts+2
	}, "not every pinned product holds a blocking read")
	if w := metricValue(m, "glimpse_watch_loops_waiting"); w != 0 {
		t.Errorf("%v loops wait for a turn", w)
	}
	// The kernel's count and glimpse's agree once no connection is being
	// dialled or closed.
	var conns int
	var open float64
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		var err error
		if conns, err = ca.HTTPSConnections(); err != nil {
			t.Fatal(err)
		}
		open = metricValue(scrape(t, a.HTTPAddr()), "glimpse_consul_connections")
		return float64(conns) == open
	}, "the kernel's count of HTTPS connections to Consul never matched glimpse's")
	t.Logf("%v blocking reads on %d HTTPS connections (peak %v)",
		metricValue(m, "glimpse_watch_blocking_reads"), conns, metricValue(m, "glimpse_consul_connections_peak"))
	// 2,002 reads at 100 a connection, a few more for first reads.
	if conns > 30 {
		t.Errorf("%d HTTPS connections to Consul; want at most 30", conns)
	}

	// A pinned product nobody reads: its change arrives without waiting
	// for a turn, as no read is ever cut short.
	quiet := names[1234]
	if err := registerCatalog(ca.Client(), 1234, quiet, 31234); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, a.DNSAddr(), "http.web.prod."+quiet+".dc1.srv.glimpse.io.", mdns.TypeSRV, func(m *mdns.Msg) bool {
		return len(m.Answer) == 1 && int(m.Answer[0].(*mdns.SRV).Port) == 31234
	}, "the change of a pinned product")

	nb.halt()
	m = scrape(t, a.HTTPAddr())
	if p := metricValue(m, "glimpse_watch_reads_preempted_total"); p != 0 {
		t.Errorf("%v reads were cut short for another's turn", p)
	}
	if peak := metricValue(m, "glimpse_consul_connections_peak"); peak > float64(cfg.Watch.MaxConns) {
		t.Errorf("glimpse's connections peaked at %v, budget %d", peak, cfg.Watch.MaxConns)
	}
	if nb.refused.Load() > 0 || nb.served.Load() == 0 {
		t.Errorf("the neighbour was served %d times and refused %d (last: %v)", nb.served.Load(), nb.refused.Load(), nb.lastErr.Load())
	}
}

// TestThrottledByConsul: when the host's other clients hold all the
// connections the Consul agent allows this host, glimpse is refused with
// 429. /readyz says so and what to do, glimpse backs off instead of
// retrying at once, and it becomes ready when room is made.
func TestThrottledByConsul(t *testing.T) {
	const limit = 6
	ca := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1", ExtraArgs: []string{
		"-hcl", fmt.Sprintf("limits { http_max_conns_per_client = %d }", limit),
	}})
	// Other clients of the host take every connection allowed.
	var hogs []net.Conn
	for range limit {
		c, err := net.Dial("tcp", ca.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		hogs = append(hogs, c)
	}
	closeHogs := func() {
		for _, c := range hogs {
			c.Close()
		}
		hogs = nil
	}
	defer closeHogs()

	cfg := testConfig(t, ca.HTTPAddr())
	cfg.Zone = "dc1" // with it, the agent starts although Consul refuses it
	a, _ := launchAgent(t, cfg, nopLogger(t))
	var e map[string]string
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		e = nil
		resp, _ := getJSON(t, nil, "http://"+a.HTTPAddr()+"/readyz", &e)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(e["error"], "429")
	}, "/readyz never named the 429: %v", lazy(func() any { return e }))
	t.Logf("/readyz: %s", e["error"])
	if !strings.Contains(e["error"], "http_max_conns_per_client") || !strings.Contains(e["error"], "-consul.max-conns") {
		t.Errorf("/readyz does not say what to do: %s", e["error"])
	}
	m := scrape(t, a.HTTPAddr())
	first := metricValue(m, "glimpse_consul_throttled_total")
	time.Sleep(3 * time.Second) // a window to count retries in
	m = scrape(t, a.HTTPAddr())
	again := metricValue(m, "glimpse_consul_throttled_total") - first
	t.Logf("429s: %v before, %v more in 3 s", first, again)
	// Backed off: a loop spinning on 429 would see hundreds a second.
	if again > 30 {
		t.Errorf("%v refused requests in 3 s: glimpse does not back off", again)
	}

	closeHogs()
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		return httpStatus(t, "http://"+a.HTTPAddr()+"/readyz") == http.StatusOK
	}, "never ready after the other clients let go")
}

// TestScaleChecksBeyondBudget: more products read than blocking reads fit,
// and turns that never come (the rotation wait is an hour). A check that
// changes on a product waiting for its turn still shows at once: the
// zone's read of check versions sees it and brings that product's read
// forward.
func TestScaleChecksBeyondBudget(t *testing.T) {
	ca := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	const n = 120
	names := make([]string, n)
	register := func(i int, status string) {
		t.Helper()
		node := fmt.Sprintf("beyond-node-%d", i%10)
		_, err := ca.Client().Catalog().Register(&api.CatalogRegistration{
			Node: node, Address: fmt.Sprintf("127.1.1.%d", 1+i%10), SkipNodeUpdate: true,
			Service: &api.AgentService{ID: names[i], Service: names[i], Port: 10000 + i,
				Tags: []string{"glimpse:env=prod", "glimpse:job=web", "glimpse:service=http"}},
			Check: &api.AgentCheck{Node: node, CheckID: "alive-" + names[i], Name: "alive", Status: status,
				ServiceID: names[i], ServiceName: names[i]},
		}, nil)
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range names {
		names[i] = fmt.Sprintf("beyond%03d", i)
		register(i, api.HealthPassing)
	}
	cfg := testConfig(t, ca.HTTPAddr())
	cfg.Watch.MaxConns = 12 // 10 blocking reads, 2 of them the zone's
	cfg.Watch.RotateWait = time.Hour
	a, _ := launchReady(t, cfg)
	for _, name := range names {
		if port, r := srvPort(t, a, name); port == 0 {
			t.Fatalf("%s: %v", name, r)
		}
	}
	health := func(name string) cache.Health {
		p := a.Cache.Zone("dc1").Products.Get(name)
		for _, ad := range p.Addresses {
			return ad.Instances[0].Health
		}
		return cache.Passing
	}
	// Products 0-9 may hold the reads; most of the rest wait.
	flipped := []int{17, 44, 71, 98, 119}
	for _, i := range flipped {
		register(i, api.HealthCritical)
	}
	for _, i := range flipped {
		testconsul.WaitFor(t, 30*time.Second, func() bool { return health(names[i]) == cache.Critical },
			"%s's critical check never showed", names[i])
	}
	m := scrape(t, a.HTTPAddr())
	kicks := metricValue(m, "glimpse_watch_turns_brought_forward_total")
	t.Logf("turns brought forward %v; loops waiting %v; reads of critical checks %v", kicks,
		metricValue(m, "glimpse_watch_loops_waiting"), metricValue(m, `glimpse_watch_consul_requests_total{endpoint="state/critical",result="ok",zone="dc1"}`))
	if kicks == 0 {
		t.Error("no turn was brought forward")
	}
	if peak := metricValue(m, "glimpse_consul_connections_peak"); peak > float64(cfg.Watch.MaxConns) {
		t.Errorf("glimpse's connections peaked at %v, budget %d", peak, cfg.Watch.MaxConns)
	}
}
