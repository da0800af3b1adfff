package agent

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	gapi "github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// lookupBody is the body of GET /v1/lookup/<address>.
type lookupBody struct{ gapi.Lookup }

// ports lists the instances as "service.job.env:port/health", in the
// answer's order.
func (b *lookupBody) ports() string {
	var s []string
	for _, in := range b.Instances {
		s = append(s, fmt.Sprintf("%s.%s.%s:%d/%s", in.Service, in.Job, in.Env, in.Port, in.Health))
	}
	return strings.Join(s, ",")
}

// zonesBody is the body of GET /v1/zones.
type zonesBody struct{ gapi.Zones }

// zoneEntry is one zone in GET /v1/zones.
type zoneEntry = gapi.ZoneStatus

// zone returns the entry of one zone, or nil.
func (b *zonesBody) zone(name string) *zoneEntry {
	for i := range b.Zones.Zones {
		if b.Zones.Zones[i].Zone == name {
			return &b.Zones.Zones[i]
		}
	}
	return nil
}

type healthCounts = gapi.HealthCounts

// topologyBody is the body of GET /v1/topology.
type topologyBody = gapi.Topology

// svcCounts returns the health counts of an address in a topology (zero
// when it is not there).
func svcCounts(top *topologyBody, product, env, job, service string) healthCounts {
	if c := top.Products[product].Envs[env].Jobs[job].Services[service]; c != nil {
		return *c
	}
	return healthCounts{}
}

// getJSON sends GET url with client (nil: the default client), checks the
// Content-Type and decodes the body into v. It returns the response (body
// closed) and the raw body.
func getJSON(t testing.TB, client *http.Client, url string, v any) (*http.Response, string) {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("GET %s: Content-Type %q", url, ct)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("GET %s: %d, %v in %s", url, resp.StatusCode, err, body)
	}
	return resp, string(body)
}

// lookup sends GET /v1/lookup/<address>?<params> and expects a 200 whose
// X-Glimpse-Index header matches the body.
func lookup(t testing.TB, a *Agent, address, params string) *lookupBody {
	t.Helper()
	url := "http://" + a.HTTPAddr() + "/v1/lookup/" + address
	if params != "" {
		url += "?" + params
	}
	var b lookupBody
	resp, raw := getJSON(t, nil, url, &b)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, raw)
	}
	if h := resp.Header.Get("X-Glimpse-Index"); h != strconv.FormatUint(b.Index, 10) {
		t.Errorf("GET %s: X-Glimpse-Index %q, body index %d", url, h, b.Index)
	}
	if b.Instances == nil {
		t.Errorf("GET %s: instances null, want a list: %s", url, raw)
	}
	return &b
}

// setTTL sets the status of an instance's TTL check.
func setTTL(t testing.TB, c *api.Client, id, status string) {
	t.Helper()
	if err := c.Agent().UpdateTTL(id+"-ttl", "set by the test", status); err != nil {
		t.Fatalf("TTL of %s to %s: %v", id, status, err)
	}
}

// TestHTTPLookup: lookup by address with every health filter and with
// wildcards, answered from what Consul holds.
func TestHTTPLookup(t *testing.T) {
	c := consul.Client()
	p := newProduct("httplookup")
	for _, in := range []instance{
		{id: p + "-pass", product: p, env: "prod", job: "stream", service: "http", address: "127.0.1.1", port: 8001, ttlCheck: true},
		{id: p + "-warn", product: p, env: "prod", job: "stream", service: "http", address: "127.0.1.2", port: 8002, ttlCheck: true},
		{id: p + "-crit", product: p, env: "prod", job: "stream", service: "http", address: "127.0.1.3", port: 8003, ttlCheck: true},
		{id: p + "-grpc", product: p, env: "prod", job: "stream", service: "grpc", address: "127.0.1.4", port: 8004, extraTags: []string{"glimpse:provider=bazooka"}},
		{id: p + "-batch", product: p, env: "prod", job: "batch", service: "http", address: "127.0.1.5", port: 8005},
		{id: p + "-dev", product: p, env: "dev", job: "stream", service: "http", address: "127.0.1.6", port: 8006},
	} {
		register(t, c, in)
	}
	setTTL(t, c, p+"-warn", api.HealthWarning)
	setTTL(t, c, p+"-crit", api.HealthCritical)

	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	addr := "http.stream.prod." + p + ".dc1"
	want := "http.stream.prod:8001/passing,http.stream.prod:8002/warning,http.stream.prod:8003/critical"
	var b *lookupBody
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		b = lookup(t, a, addr, "health=any")
		return b.ports() == want
	}, "health=any never showed the three instances with their health; last %v", lazy(func() any { return b.ports() }))

	for _, tt := range []struct{ params, want string }{
		{"", "http.stream.prod:8001/passing"},
		{"health=passing", "http.stream.prod:8001/passing"},
		{"health=warning", "http.stream.prod:8001/passing,http.stream.prod:8002/warning"},
		{"health=critical", "http.stream.prod:8003/critical"},
		{"health=any", want},
	} {
		if got := lookup(t, a, addr, tt.params); got.ports() != tt.want {
			t.Errorf("%s?%s: %s, want %s", addr, tt.params, got.ports(), tt.want)
		}
	}

	// One instance in full, and the address echoed in lower case.
	b = lookup(t, a, "HTTP.Stream.Prod."+strings.ToUpper(p)+".DC1", "")
	if b.Address != addr || len(b.Instances) != 1 {
		t.Fatalf("upper-case lookup: %+v", b)
	}
	if in := b.Instances[0]; in.Node != consul.NodeName() || in.Address != "127.0.1.1" || in.Port != 8001 || in.Health != "passing" ||
		in.Provider != "" || in.Zone != "dc1" || in.Product != p || in.Env != "prod" || in.Job != "stream" || in.Service != "http" {
		t.Errorf("instance: %+v", in)
	}

	// Wildcards.
	for _, tt := range []struct{ address, params, want string }{
		{"*.stream.prod." + p + ".dc1", "", "grpc.stream.prod:8004/passing,http.stream.prod:8001/passing"},
		{"*.stream.prod." + p + ".dc1", "health=any", "grpc.stream.prod:8004/passing," + want},
		{"*.*.*." + p + ".dc1", "", "grpc.stream.prod:8004/passing,http.batch.prod:8005/passing,http.stream.dev:8006/passing,http.stream.prod:8001/passing"},
		{"http.*.prod." + p + ".dc1", "health=warning", "http.batch.prod:8005/passing,http.stream.prod:8001/passing,http.stream.prod:8002/warning"},
		{"*.*.dev." + p + ".dc1", "", "http.stream.dev:8006/passing"},
	} {
		b := lookup(t, a, tt.address, tt.params)
		if b.ports() != tt.want || b.Address != tt.address {
			t.Errorf("%s?%s: %s (address %s), want %s", tt.address, tt.params, b.ports(), b.Address, tt.want)
		}
	}
	if b := lookup(t, a, "grpc.stream.prod."+p+".dc1", ""); len(b.Instances) != 1 || b.Instances[0].Provider != "bazooka" {
		t.Errorf("provider tag: %+v", b.Instances)
	}

	// Well-formed but unknown: 200 and an empty list (lookup checks it is
	// not null).
	for _, unknown := range []string{
		"nope.stream.prod." + p + ".dc1", "http.nope.prod." + p + ".dc1", "*.*.nope." + p + ".dc1",
		"http.stream.prod." + p + "nope.dc1", "http.stream.prod." + p + ".nozone",
	} {
		if b := lookup(t, a, unknown, "health=any"); len(b.Instances) != 0 {
			t.Errorf("%s: %+v, want no instances", unknown, b.Instances)
		}
	}
}

// TestHTTPLookupMalformed: malformed addresses and parameters are 400s with
// a message saying what is wrong; wrong methods 405, unknown paths 404, all
// JSON.
func TestHTTPLookupMalformed(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	base := "http://" + a.HTTPAddr()
	for _, tt := range []struct{ path, msg string }{
		{"/v1/lookup/stream.prod.goku.dc1", "has 4 labels, want 5"},
		{"/v1/lookup/x.http.stream.prod.goku.dc1", "has 6 labels, want 5"},
		{"/v1/lookup/ht_p.stream.prod.goku.dc1", `the service label "ht_p" has characters other than letters, digits and '-'`},
		{"/v1/lookup/http.st%20ream.prod.goku.dc1", `the job label "st ream"`},
		{"/v1/lookup/http..prod.goku.dc1", "the job label is empty"},
		{"/v1/lookup/http.stream.prod.goku.", "the zone label is empty"},
		{"/v1/lookup/http.stream.prod.*.dc1", `the product label cannot be "*"`},
		{"/v1/lookup/http.stream.prod.goku.*", `the zone label cannot be "*"`},
		{"/v1/lookup/http.stream.prod." + strings.Repeat("g", 64) + ".dc1", "the product label is 64 characters long"},
		{"/v1/lookup/", "address is empty"},
		{"/v1/lookup/http.stream.prod.goku.dc1?health=healthy", `health "healthy" is not one of passing, warning, critical or any`},
		{"/v1/lookup/http.stream.prod.goku.dc1?index=-3", `index "-3" is not a non-negative integer`},
		{"/v1/lookup/http.stream.prod.goku.dc1?index=1&wait=soon", `wait "soon" is not a duration`},
		{"/v1/lookup/http.stream.prod.goku.dc1?index=1&wait=-1s", `wait "-1s" is negative`},
		{"/v1/topology?zone=d_c1", `zone "d_c1" is not a DNS label`},
	} {
		var e map[string]string
		resp, raw := getJSON(t, nil, base+tt.path, &e)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e["error"], tt.msg) {
			t.Errorf("GET %s: %d %s, want 400 with an error containing %q", tt.path, resp.StatusCode, raw, tt.msg)
		}
	}

	for _, tt := range []struct {
		method, path string
		code         int
	}{
		{"POST", "/v1/lookup/http.stream.prod.goku.dc1", http.StatusMethodNotAllowed},
		{"DELETE", "/v1/zones", http.StatusMethodNotAllowed},
		{"PUT", "/v1/topology", http.StatusMethodNotAllowed},
		{"GET", "/v1/nothing", http.StatusNotFound},
		{"GET", "/v2/lookup/http.stream.prod.goku.dc1", http.StatusNotFound},
		{"GET", "/v1/topology?zone=nosuchzone", http.StatusNotFound},
	} {
		req, _ := http.NewRequest(tt.method, base+tt.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var e map[string]string
		err = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != tt.code || err != nil || e["error"] == "" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s: %d %v %v (%s), want %d with a JSON error", tt.method, tt.path, resp.StatusCode, e, err, resp.Header.Get("Content-Type"), tt.code)
		}
	}
}

// TestHTTPLongPoll: a long-poll returns promptly after a change in Consul,
// with a higher index and the new instance; with nothing changed it returns
// when its wait ends, with the same index.
func TestHTTPLongPoll(t *testing.T) {
	c := consul.Client()
	a, p, b := agentWithOneInstance(t, "httppoll", "127.0.2.1")
	addr := "http.stream.prod." + p + ".dc1"
	first := b.Index

	// Nothing changes: the long-poll returns when its wait ends (plus up to
	// a sixteenth of jitter), with the index it was given.
	began := time.Now()
	b = lookup(t, a, addr, fmt.Sprintf("index=%d&wait=1s", first))
	took := time.Since(began)
	t.Logf("long-poll with nothing changed returned after %v", took.Round(time.Millisecond))
	if b.Index != first || len(b.Instances) != 1 {
		t.Errorf("long-poll with nothing changed: index %d (want %d), %s", b.Index, first, b.ports())
	}
	if took < time.Second || took > 5*time.Second {
		t.Errorf("long-poll with wait=1s returned after %v", took)
	}

	// A change in Consul wakes it.
	done := make(chan *lookupBody, 1)
	go func() {
		url := fmt.Sprintf("http://%s/v1/lookup/%s?index=%d&wait=1m", a.HTTPAddr(), addr, first)
		resp, err := http.Get(url)
		if err != nil {
			t.Errorf("long-poll: %v", err)
			done <- nil
			return
		}
		defer resp.Body.Close()
		var b lookupBody
		if err := json.NewDecoder(resp.Body).Decode(&b); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("long-poll: %d %v", resp.StatusCode, err)
		}
		done <- &b
	}()
	waitLongPolls(t, a, 1)
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.2.2", port: 8002})
	registered := time.Now()
	select {
	case b = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("long-poll not answered 10s after a registration")
	}
	took = time.Since(registered)
	t.Logf("long-poll answered %v after the registration", took.Round(time.Millisecond))
	if b == nil {
		t.FailNow()
	}
	if b.Index <= first || b.ports() != "http.stream.prod:8001/passing,http.stream.prod:8002/passing" {
		t.Errorf("long-poll after a registration: index %d (before %d), %s", b.Index, first, b.ports())
	}

	// An index from before an agent restart (higher than any now) answers
	// at once with the current state.
	began = time.Now()
	b2 := lookup(t, a, addr, fmt.Sprintf("index=%d&wait=1m", b.Index+1000000))
	if b2.Index != b.Index || len(b2.Instances) != 2 || time.Since(began) > 5*time.Second {
		t.Errorf("long-poll from a future index: index %d (want %d) after %v", b2.Index, b.Index, time.Since(began))
	}
}

// waitLongPolls waits until n lookups are waiting in long-polls, as the
// agent's glimpse_http_subscribers{kind="longpoll"} gauge says.
func waitLongPolls(t testing.TB, a *Agent, n int) {
	t.Helper()
	var got float64
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		got = metricValue(scrape(t, a.HTTPAddr()), `glimpse_http_subscribers{kind="longpoll"}`)
		return got == float64(n)
	}, "%v long-polls waiting, want %d", lazy(func() any { return got }), n)
}

// TestHTTPLongPollMany: 500 long-polls on one address all wake on one
// change, each with the new index.
func TestHTTPLongPollMany(t *testing.T) {
	const polls = 500
	c := consul.Client()
	a, p, b := agentWithOneInstance(t, "httpmany", "127.0.3.1")
	addr := "http.stream.prod." + p + ".dc1"
	first := b.Index

	tr := &http.Transport{MaxConnsPerHost: 0, MaxIdleConns: polls, MaxIdleConnsPerHost: polls}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	url := fmt.Sprintf("http://%s/v1/lookup/%s?index=%d&wait=2m", a.HTTPAddr(), addr, first)
	type answer struct {
		index     uint64
		instances int
		at        time.Time
		err       error
	}
	answers := make(chan answer, polls)
	var wg sync.WaitGroup
	for range polls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get(url)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			defer resp.Body.Close()
			var b lookupBody
			if err := json.NewDecoder(resp.Body).Decode(&b); err != nil {
				answers <- answer{err: err}
				return
			}
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
			answers <- answer{index: b.Index, instances: len(b.Instances), at: time.Now(), err: err}
		}()
	}
	waitLongPolls(t, a, polls)
	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.3.2", port: 8002})
	registered := time.Now()
	wg.Wait()
	close(answers)

	var last time.Time
	var indexes []uint64
	n := 0
	for ans := range answers {
		n++
		if ans.err != nil {
			t.Errorf("long-poll: %v", ans.err)
			continue
		}
		if ans.index <= first || ans.instances != 2 {
			t.Errorf("long-poll: index %d (before %d), %d instances, want a higher index and 2", ans.index, first, ans.instances)
		}
		if !slices.Contains(indexes, ans.index) {
			indexes = append(indexes, ans.index)
		}
		if ans.at.After(last) {
			last = ans.at
		}
	}
	if n != polls {
		t.Errorf("%d answers, want %d", n, polls)
	}
	if len(indexes) != 1 {
		t.Errorf("the long-polls saw different indexes: %v", indexes)
	}
	t.Logf("%d long-polls all answered %v after the registration (index %d -> %v)",
		polls, last.Sub(registered).Round(time.Millisecond), first, indexes)
}

// TestHTTPZonesTopology: /v1/zones and /v1/topology reflect Consul, and a
// lookup in a remote zone starts watching it, its long-poll waking when the
// zone syncs.
func TestHTTPZonesTopology(t *testing.T) {
	const dc = "dc7"
	remote := startRemoteZone(t, dc, "127.0.0.7")
	c := consul.Client()
	p := newProduct("httptopo")
	for _, in := range []instance{
		{id: p + "-1", product: p, env: "prod", job: "stream", service: "http", address: "127.0.4.1", port: 8001, ttlCheck: true},
		{id: p + "-2", product: p, env: "prod", job: "stream", service: "http", address: "127.0.4.2", port: 8002, ttlCheck: true},
		{id: p + "-3", product: p, env: "prod", job: "stream", service: "http", address: "127.0.4.3", port: 8003, ttlCheck: true},
		{id: p + "-4", product: p, env: "prod", job: "stream", service: "grpc", address: "127.0.4.4", port: 8004},
		{id: p + "-5", product: p, env: "dev", job: "batch", service: "worker", address: "127.0.4.5", port: 8005, ttlCheck: true},
	} {
		register(t, c, in)
	}
	setTTL(t, c, p+"-2", api.HealthWarning)
	setTTL(t, c, p+"-3", api.HealthCritical)
	setTTL(t, c, p+"-5", api.HealthCritical)
	rp := newProduct("httpremote")
	register(t, remote.Client(), instance{id: rp, product: rp, env: "prod", job: "stream", service: "http", address: "127.0.7.1", port: 9001})

	a := startAgent(t, remoteConfig(t))
	base := "http://" + a.HTTPAddr()

	// Before any read the product is listed, not watched.
	var top topologyBody
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		top = topologyBody{}
		getJSON(t, nil, base+"/v1/topology", &top)
		_, ok := top.Products[p]
		return ok
	}, "topology never listed %s", p)
	if pt := top.Products[p]; pt.Watched || len(pt.Envs) != 0 {
		t.Errorf("topology of %s before any read: %+v, want it listed, not watched", p, pt)
	}
	// A read watches it. Topology of the local zone, by default and by name.
	lookup(t, a, "*.*.*."+p+".dc1", "")
	want := `{"watched":true,"envs":{"dev":{"jobs":{"batch":{"services":{"worker":{"passing":0,"warning":0,"critical":1}}}}},` +
		`"prod":{"jobs":{"stream":{"services":{"grpc":{"passing":1,"warning":0,"critical":0},"http":{"passing":1,"warning":1,"critical":1}}}}}}}`
	var got string
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		top = topologyBody{}
		resp, raw := getJSON(t, nil, base+"/v1/topology", &top)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("topology: %d %s", resp.StatusCode, raw)
		}
		b, _ := json.Marshal(top.Products[p])
		got = string(b)
		return got == want
	}, "topology of %s never matched Consul: last %v", p, lazy(func() any { return got }))
	if top.Zone != "dc1" || !top.Synced || top.Index == 0 {
		t.Errorf("topology: zone %q synced %v index %d", top.Zone, top.Synced, top.Index)
	}
	var named topologyBody
	getJSON(t, nil, base+"/v1/topology?zone=DC1", &named)
	if b, _ := json.Marshal(named.Products[p]); named.Zone != "dc1" || string(b) != want {
		t.Errorf("topology?zone=DC1: %s %s", named.Zone, b)
	}
	// A change in Consul shows.
	setTTL(t, c, p+"-3", api.HealthPassing)
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		top = topologyBody{}
		getJSON(t, nil, base+"/v1/topology", &top)
		return svcCounts(&top, p, "prod", "stream", "http") == healthCounts{Passing: 2, Warning: 1}
	}, "topology never showed the check turned passing")

	// Zones: the local one in contact.
	var zones zonesBody
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		zones = zonesBody{}
		getJSON(t, nil, base+"/v1/zones", &zones)
		z := zones.zone("dc1")
		return z != nil && z.Synced && z.LastContact != nil
	}, "dc1 never listed synced with a last contact")
	z := zones.zone("dc1")
	if !z.Local || !z.Watched || z.SecondsStale != 0 || z.Products < 1 || z.Instances < 5 || z.Index == 0 {
		t.Errorf("/v1/zones dc1: %+v", *z)
	}
	if age := time.Since(*z.LastContact); age < -time.Second || age > time.Minute {
		t.Errorf("/v1/zones dc1: last contact %v ago", age)
	}

	// The remote zone: listed as not watched once the agent knows the
	// datacenter, if the cache can list datacenters.
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		exists, _ := a.Cache.Datacenter(dc)
		return exists
	}, "the agent never learnt of %s", dc)
	zones = zonesBody{}
	getJSON(t, nil, base+"/v1/zones", &zones)
	if _, ok := any(a.Cache).(interface{ Datacenters() []string }); ok {
		if z := zones.zone(dc); z == nil || z.Watched || z.Synced || z.LastContact != nil {
			t.Errorf("/v1/zones before any read of %s: %+v, want it listed as not watched", dc, z)
		}
	} else {
		t.Logf("cache.Cache has no Datacenters() yet: /v1/zones cannot list datacenters that are not watched (%s: %+v)", dc, zones.zone(dc))
	}

	// A lookup there starts watching it; a long-poll wakes when it syncs.
	addr := "http.stream.prod." + rp + "." + dc
	b := lookup(t, a, addr, "")
	t.Logf("first lookup in %s: index %d, %d instances", dc, b.Index, len(b.Instances))
	began := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	polls := 0
	for len(b.Instances) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the instance in %s never showed through long-polls", dc)
		}
		b = lookup(t, a, addr, fmt.Sprintf("index=%d&wait=10s", b.Index))
		polls++
	}
	t.Logf("instance in %s after %v and %d long-polls", dc, time.Since(began).Round(time.Millisecond), polls)
	if in := b.Instances[0]; in.Address != "127.0.7.1" || in.Port != 9001 || in.Zone != dc || in.Node != remote.NodeName() {
		t.Errorf("remote instance: %+v", in)
	}
	// The instance can show before the zone's last watcher (its servers)
	// has delivered: Synced follows within moments.
	testconsul.WaitFor(t, 5*time.Second, func() bool {
		zones = zonesBody{}
		getJSON(t, nil, base+"/v1/zones", &zones)
		z := zones.zone(dc)
		return z != nil && z.Synced
	}, "%s never shown synced in /v1/zones", dc)
	if z := zones.zone(dc); z == nil || z.Local || !z.Watched || !z.Synced || z.Instances != 1 {
		t.Errorf("/v1/zones after a lookup in %s: %+v", dc, z)
	}
	top = topologyBody{}
	if resp, raw := getJSON(t, nil, base+"/v1/topology?zone="+dc, &top); resp.StatusCode != http.StatusOK ||
		svcCounts(&top, rp, "prod", "stream", "http") != (healthCounts{Passing: 1}) {
		t.Errorf("topology of %s: %d %s", dc, resp.StatusCode, raw)
	}
	var e map[string]string
	if resp, _ := getJSON(t, nil, base+"/v1/topology?zone=dc99", &e); resp.StatusCode != http.StatusNotFound || !strings.Contains(e["error"], "dc99") {
		t.Errorf("topology of an unknown zone: %d %v", resp.StatusCode, e)
	}
}

// TestHTTPZonesStale: while Consul is down /v1/zones says how stale the
// local zone is and lookups answer the last known state; once Consul is
// back, seconds_stale is 0 again.
func TestHTTPZonesStale(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Server: true, Datacenter: "dc1"})
	p := newProduct("httpstale")
	register(t, srv.Client(), instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.5.1", port: 8001})
	cfg := testConfig(t, srv.HTTPAddr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 2*time.Second, 2*time.Second
	a := startAgent(t, cfg)
	base := "http://" + a.HTTPAddr()
	addr := "http.stream.prod." + p + ".dc1"
	testconsul.WaitFor(t, 15*time.Second, func() bool { return len(lookup(t, a, addr, "").Instances) == 1 }, "the instance never showed")

	dc1 := func() zoneEntry {
		var zones zonesBody
		getJSON(t, nil, base+"/v1/zones", &zones)
		e := zones.zone("dc1")
		if e == nil || !e.Local || !e.Watched || !e.Synced {
			t.Fatalf("/v1/zones dc1: %+v", e)
		}
		return *e
	}
	// In contact once the health watcher has had a blocking result (see
	// TestConsulDownServesLastState).
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_watch_consul_requests_total{endpoint="health",result="ok",zone="dc1"}`) >= 2
	}, "the health watcher never had a blocking result")
	if z := dc1(); z.SecondsStale != 0 || z.LastContact == nil {
		t.Errorf("in contact: seconds_stale %v, last_contact %v", z.SecondsStale, z.LastContact)
	}

	srv.Kill()
	down := time.Now()
	var z zoneEntry
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		z = dc1()
		return z.SecondsStale > 0
	}, "seconds_stale never went above 0 with Consul down")
	t.Logf("/v1/zones: seconds_stale %.3f %v after Consul went down", z.SecondsStale, time.Since(down).Round(time.Millisecond))
	if z.LastContact == nil || z.LastContact.After(down) {
		t.Errorf("last_contact %v with Consul down since %v", z.LastContact, down)
	}
	first := z.SecondsStale
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		z = dc1()
		return z.SecondsStale >= first+1
	}, "seconds_stale did not grow from %.3f", first)
	if b := lookup(t, a, addr, ""); len(b.Instances) != 1 || b.Instances[0].Address != "127.0.5.1" {
		t.Errorf("lookup with Consul down: %+v, want the last known state", b.Instances)
	}
	var top topologyBody
	if resp, raw := getJSON(t, nil, base+"/v1/topology", &top); resp.StatusCode != http.StatusOK || svcCounts(&top, p, "prod", "stream", "http") != (healthCounts{Passing: 1}) {
		t.Errorf("topology with Consul down: %d %s", resp.StatusCode, raw)
	}

	srv.Restart(t)
	back := time.Now()
	testconsul.WaitFor(t, 2*cfg.Watch.Wait+10*time.Second, func() bool {
		z = dc1()
		return z.SecondsStale == 0
	}, "seconds_stale not back to 0 after Consul's return: %v", lazy(func() any { return z.SecondsStale }))
	t.Logf("/v1/zones: seconds_stale 0 again %v after Consul was back", time.Since(back).Round(time.Millisecond))
	if z.LastContact == nil || !z.LastContact.After(down) {
		t.Errorf("last_contact %v, want after Consul's return (it went down at %v)", z.LastContact, down)
	}
}

// TestHTTPLongPollKeepsRemoteZone: a long-poll waiting on a remote zone
// counts as reading it, so the zone is not dropped as idle under it (which
// would wake the long-poll with no instances).
func TestHTTPLongPollKeepsRemoteZone(t *testing.T) {
	const dc = "dc8"
	a, addr := agentWithRemoteZone(t, dc, "127.0.0.8", "httpkeep", time.Second)
	var b *lookupBody
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		b = lookup(t, a, addr, "")
		return len(b.Instances) == 1
	}, "the instance in %s never showed", dc)

	// Nothing changes for four idle periods: the long-poll ends with its
	// wait, the same index and the instance, and the zone is still there.
	began := time.Now()
	b2 := lookup(t, a, addr, fmt.Sprintf("index=%d&wait=4s", b.Index))
	took := time.Since(began)
	if b2.Index != b.Index || len(b2.Instances) != 1 || took < 4*time.Second {
		t.Errorf("long-poll on %s: index %d (want %d), %d instances, after %v", dc, b2.Index, b.Index, len(b2.Instances), took)
	}
	if z := a.Cache.Zone(dc); z == nil || !z.Synced {
		t.Errorf("%s dropped under a long-poll: %+v", dc, z)
	}
	// Unread, it is dropped.
	testconsul.WaitFor(t, 10*time.Second, func() bool { return a.Cache.Zone(dc) == nil }, "%s never dropped once unread", dc)
}

// agentWithOneInstance registers http.stream.prod.<new product>.dc1 with one
// instance at ip:8001, starts an agent and waits until a lookup shows it. It
// returns the agent, the product and that lookup.
func agentWithOneInstance(t *testing.T, prefix, ip string) (*Agent, string, *lookupBody) {
	t.Helper()
	p := newProduct(prefix)
	register(t, consul.Client(), instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: ip, port: 8001})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	var b *lookupBody
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		b = lookup(t, a, "http.stream.prod."+p+".dc1", "")
		return len(b.Instances) == 1
	}, "the first instance never showed")
	return a, p, b
}
