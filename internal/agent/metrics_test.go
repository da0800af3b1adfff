package agent

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestMetrics: /metrics exports the DNS, cache and watch metrics, counts an
// instance without the glimpse tags as ignored, and /healthz answers.
func TestMetrics(t *testing.T) {
	c := consul.Client()
	p := newProduct("metrics")
	register(t, c, instance{id: p + "-ok", product: p, env: "prod", job: "web", service: "http", port: 80})
	// An instance of the same product without the job tag is ignored.
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: p + "-untagged", Name: p, Port: 81, Tags: []string{"glimpse:env=prod", "glimpse:service=http"},
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(p + "-untagged") })

	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	name := "http.web.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "tagged instance only")
	query(t, a.DNSAddr(), "tcp", name, mdns.TypeA, 0)
	query(t, a.DNSAddr(), "udp", "nope."+domain, mdns.TypeA, 0)

	var body string
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		body = scrape(t, a.HTTPAddr())
		// The health read is counted once its loop has applied it, a
		// moment after the DNS answer it made possible.
		return metricValue(body, `glimpse_cache_ignored_instances{zone="dc1"}`) >= 1 &&
			metricValue(body, `glimpse_watch_consul_requests_total{endpoint="health",result="ok",zone="dc1"}`) >= 1
	}, "ignored instance or the product's health read not counted")
	for _, want := range []string{
		`glimpse_dns_requests_total{proto="udp",qtype="SRV",rcode="NOERROR"}`,
		`glimpse_dns_requests_total{proto="tcp",qtype="A",rcode="NOERROR"}`,
		`glimpse_dns_requests_total{proto="udp",qtype="A",rcode="NXDOMAIN"}`,
		`glimpse_dns_request_duration_seconds_count{proto="udp"}`,
		`glimpse_cache_instances{zone="dc1"}`,
		`glimpse_cache_addresses{zone="dc1"}`,
		`glimpse_cache_index`,
		`glimpse_cache_zone_synced{zone="dc1"}`,
		`glimpse_cache_stale_seconds{zone="dc1"}`,
		`glimpse_watch_watchers{zone="dc1"}`,
		`glimpse_watch_consul_requests_total{endpoint="health",result="ok",zone="dc1"}`,
	} {
		if metricValue(body, want) <= 0 && want != `glimpse_cache_stale_seconds{zone="dc1"}` {
			t.Errorf("metric %s missing or zero", want)
		}
	}
	if v := metricValue(body, `glimpse_cache_stale_seconds{zone="dc1"}`); v != 0 {
		t.Errorf("stale seconds %v while Consul is up", v)
	}
	if code := httpStatus(t, "http://"+a.HTTPAddr()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d", code)
	}
}

func scrape(t testing.TB, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// metricValue returns the value of one series in a Prometheus text
// exposition, or -1 when it is absent.
func metricValue(body, series string) float64 {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// TestBindFailure: an address that cannot be bound fails New with an error
// naming it (the command exits non-zero with that line).
func TestBindFailure(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	for _, field := range []string{"dns", "http"} {
		cfg := testConfig(t, consul.HTTPAddr())
		if field == "dns" {
			cfg.DNSAddr = busy.Addr().String()
		} else {
			cfg.HTTPAddr = busy.Addr().String()
		}
		_, err := New(t.Context(), cfg, nopLogger(t))
		if err == nil || !strings.Contains(err.Error(), busy.Addr().String()) {
			t.Errorf("%s address in use: error %v", field, err)
		}
	}
}

// TestProductWatchersFollowCatalog: a product that appears in Consul is
// listed but not watched until it is read; read, it gets a health watcher,
// and when it vanishes from Consul it loses it (and leaves the cache).
func TestProductWatchersFollowCatalog(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	watchers := func() float64 {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_watch_watchers{zone="dc1"}`)
	}
	before := watchers()
	p := newProduct("appear")
	c := consul.Client()
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: p, Name: p, Port: 80, Tags: []string{"glimpse:env=prod", "glimpse:job=web", "glimpse:service=http"},
	}); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		_, ok := a.Cache.Zone("dc1").Known[p]
		return ok
	}, "the new product never listed")
	if w := watchers(); w != before {
		t.Errorf("watchers %v after the product appeared, want %v: nothing reads it", w, before)
	}
	r := query(t, a.DNSAddr(), "udp", "http.web.prod."+p+".dc1.srv.glimpse.io.", mdns.TypeSRV, 4096)
	if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("first query of the new product: %v", r)
	}
	if w := watchers(); w != before+1 {
		t.Errorf("watchers %v after its first read, want %v", w, before+1)
	}
	if err := c.Agent().ServiceDeregister(p); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return watchers() == before }, "watcher of the vanished product still running")
	if a.Cache.Zone("dc1").Products.Get(p) != nil {
		t.Fatal("vanished product still in the cache")
	}
}
