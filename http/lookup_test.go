package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
)

func TestLookupParseHealth(t *testing.T) {
	in := map[cache.Health]string{cache.Passing: "p", cache.Warning: "w", cache.Critical: "c"}
	for _, tt := range []struct {
		param, lets string
	}{
		{"", "p"}, {"passing", "p"}, {"PASSING", "p"}, {"warning", "pw"}, {"critical", "c"}, {"any", "pwc"},
	} {
		f, err := ParseHealth(tt.param)
		if err != nil {
			t.Fatalf("ParseHealth(%q): %v", tt.param, err)
		}
		lets := ""
		for _, h := range []cache.Health{cache.Passing, cache.Warning, cache.Critical} {
			if f.Match(h) {
				lets += in[h]
			}
		}
		if lets != tt.lets {
			t.Errorf("health=%q lets in %q, want %q", tt.param, lets, tt.lets)
		}
	}
	for _, bad := range []string{"ok", "healthy", "pass", "warn", " passing"} {
		if _, err := ParseHealth(bad); err == nil || !strings.Contains(err.Error(), "not one of") {
			t.Errorf("ParseHealth(%q) = %v, want an error", bad, err)
		}
	}
}

func TestLongPollParseWait(t *testing.T) {
	for _, tt := range []struct {
		in   string
		base time.Duration
	}{
		{"", DefaultWait}, {"0", DefaultWait}, {"0s", DefaultWait},
		{"30s", 30 * time.Second}, {"30", 30 * time.Second}, {"5m", 5 * time.Minute},
		{"1m30s", 90 * time.Second}, {"250ms", 250 * time.Millisecond},
		{"10m", MaxWait}, {"11m", MaxWait}, {"24h", MaxWait}, {"100000", MaxWait},
	} {
		for range 20 {
			d, err := parseWait(tt.in)
			if err != nil {
				t.Fatalf("parseWait(%q): %v", tt.in, err)
			}
			if d < tt.base || d > tt.base+tt.base/16 {
				t.Fatalf("parseWait(%q) = %v, want %v plus at most %v of jitter", tt.in, d, tt.base, tt.base/16)
			}
		}
	}
	for _, bad := range []string{"-1s", "soon", "5 m", "1e3", "-5", "30x"} {
		if _, err := parseWait(bad); err == nil {
			t.Errorf("parseWait(%q) accepted", bad)
		}
	}
}

func TestLookupParams(t *testing.T) {
	p, err := parseLookupParams(url.Values{"index": {"42"}, "wait": {"2s"}, "health": {"any"}})
	if err != nil || p.index != 42 || p.health != HealthAny || p.wait < 2*time.Second {
		t.Fatalf("parseLookupParams: %+v, %v", p, err)
	}
	for _, v := range []url.Values{
		{"index": {"-1"}}, {"index": {"x"}}, {"index": {"18446744073709551616"}},
		{"wait": {"x"}}, {"health": {"bad"}},
	} {
		if _, err := parseLookupParams(v); err == nil {
			t.Errorf("parseLookupParams(%v) accepted", v)
		}
	}
}

// testServer serves c on a free port until the test ends.
type testServer struct {
	s    *Server
	base string
	c    *cache.Cache

	mu     sync.Mutex
	wanted []string
}

func newTestServer(t testing.TB, c *cache.Cache) *testServer {
	t.Helper()
	ts := &testServer{c: c}
	s, err := Listen("127.0.0.1:0", Options{
		Cache: c, LocalZone: "dc1", Gatherer: prometheus.NewRegistry(), Registerer: prometheus.NewRegistry(),
		Demand: cache.Static{Cache: c, Used: func(zone, _ string) {
			if c.Zone(zone) != nil {
				return
			}
			ts.mu.Lock()
			ts.wanted = append(ts.wanted, zone)
			ts.mu.Unlock()
		}},
		FirstWait: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	ts.s, ts.base = s, "http://"+s.Addr()
	return ts
}

// get fetches path and decodes the JSON body into v (when not nil).
func (ts *testServer) get(t *testing.T, method, path string, v any) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, ts.base+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, body %s", method, path, ct, body)
	}
	if v != nil {
		if err := json.Unmarshal(body, v); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, body)
		}
	}
	return resp
}

func inst(env, job, service, node, ip string, port uint16, h cache.Health) cache.Instance {
	return cache.Instance{Node: node, Address: netip.MustParseAddr(ip), Port: port, Health: h, Env: env, Job: job, Service: service}
}

func testCache() *cache.Cache {
	c := cache.New(nil)
	c.AddZone("dc1", true)
	c.SetProduct("dc1", "goku", []cache.Instance{
		inst("prod", "stream", "http", "n1", "10.0.0.1", 80, cache.Passing),
		inst("prod", "stream", "http", "n2", "10.0.0.2", 80, cache.Warning),
		inst("prod", "stream", "http", "n3", "10.0.0.3", 80, cache.Critical),
		inst("prod", "stream", "grpc", "n1", "10.0.0.1", 90, cache.Passing),
		inst("prod", "batch", "http", "n4", "10.0.0.4", 80, cache.Passing),
		inst("dev", "stream", "http", "n5", "10.0.0.5", 80, cache.Passing),
	}, 0)
	c.SetKnown("dc1", []string{"goku"})
	c.SetDatacenters([]string{"dc1"})
	c.SetSynced("dc1", true)
	return c
}

func nodes(r api.Lookup) string {
	var s []string
	for _, in := range r.Instances {
		s = append(s, in.Node+":"+in.Service+"."+in.Job+"."+in.Env)
	}
	return strings.Join(s, ",")
}

func TestLookupHandler(t *testing.T) {
	ts := newTestServer(t, testCache())
	for _, tt := range []struct {
		path, want string
	}{
		{"/v1/lookup/http.stream.prod.goku.dc1", "n1:http.stream.prod"},
		{"/v1/lookup/HTTP.Stream.prod.goku.DC1?health=passing", "n1:http.stream.prod"},
		{"/v1/lookup/http.stream.prod.goku.dc1?health=warning", "n1:http.stream.prod,n2:http.stream.prod"},
		{"/v1/lookup/http.stream.prod.goku.dc1?health=critical", "n3:http.stream.prod"},
		{"/v1/lookup/http.stream.prod.goku.dc1?health=any", "n1:http.stream.prod,n2:http.stream.prod,n3:http.stream.prod"},
		{"/v1/lookup/*.stream.prod.goku.dc1", "n1:grpc.stream.prod,n1:http.stream.prod"},
		{"/v1/lookup/http.*.*.goku.dc1", "n4:http.batch.prod,n5:http.stream.dev,n1:http.stream.prod"},
		{"/v1/lookup/*.*.*.goku.dc1", "n1:grpc.stream.prod,n4:http.batch.prod,n5:http.stream.dev,n1:http.stream.prod"},
		{"/v1/lookup/nope.stream.prod.goku.dc1", ""},
		{"/v1/lookup/http.stream.prod.nope.dc1", ""},
		{"/v1/lookup/http.stream.prod.goku.nope", ""},
	} {
		var r api.Lookup
		resp := ts.get(t, "GET", tt.path, &r)
		if resp.StatusCode != 200 || nodes(r) != tt.want || r.Instances == nil {
			t.Errorf("%s: %d %q (nil: %v), want %q", tt.path, resp.StatusCode, nodes(r), r.Instances == nil, tt.want)
		}
		if got := resp.Header.Get("X-Glimpse-Index"); got == "" || got != jsonIndex(r.Index) {
			t.Errorf("%s: X-Glimpse-Index %q, body index %d", tt.path, got, r.Index)
		}
	}
	var r api.Lookup
	ts.get(t, "GET", "/v1/lookup/HTTP.Stream.prod.goku.DC1", &r)
	if r.Address != "http.stream.prod.goku.dc1" || r.Instances[0] != (api.Instance{
		Node: "n1", Address: "10.0.0.1", Port: 80, Health: "passing",
		Zone: "dc1", Product: "goku", Env: "prod", Job: "stream", Service: "http",
	}) {
		t.Errorf("lookup: %+v", r)
	}

	for _, path := range []string{
		"/v1/lookup/", "/v1/lookup/stream.prod.goku.dc1", "/v1/lookup/a.http.stream.prod.goku.dc1",
		"/v1/lookup/ht_p.stream.prod.goku.dc1", "/v1/lookup/http..prod.goku.dc1", "/v1/lookup/http.stream.prod.*.dc1",
		"/v1/lookup/http.stream.prod.goku.*", "/v1/lookup/http.stream.prod.goku.dc1/x", "/v1/lookup/http.stream%2Fprod.goku.dc1",
		"/v1/lookup/http.stream.prod.goku.dc1?health=bad", "/v1/lookup/http.stream.prod.goku.dc1?index=x",
		"/v1/lookup/http.stream.prod.goku.dc1?index=1&wait=forever",
	} {
		var e map[string]string
		if resp := ts.get(t, "GET", path, &e); resp.StatusCode != 400 || e["error"] == "" {
			t.Errorf("%s: %d %v, want 400 with an error", path, resp.StatusCode, e)
		} else {
			t.Logf("%s: %s", path, e["error"])
		}
	}
}

func jsonIndex(i uint64) string {
	b, _ := json.Marshal(i)
	return string(b)
}

func TestHTTPNotFoundAndMethods(t *testing.T) {
	ts := newTestServer(t, testCache())
	for _, tt := range []struct {
		method, path string
		code         int
	}{
		{"GET", "/nope", 404}, {"GET", "/v1/nope", 404}, {"GET", "/v1/zones/x", 404},
		{"POST", "/v1/zones", 405}, {"DELETE", "/v1/lookup/a.b.c.d.e", 405}, {"PUT", "/v1/topology", 405},
	} {
		var e map[string]string
		resp := ts.get(t, tt.method, tt.path, &e)
		if resp.StatusCode != tt.code || e["error"] == "" {
			t.Errorf("%s %s: %d %v, want %d with an error", tt.method, tt.path, resp.StatusCode, e, tt.code)
		}
		if tt.code == 405 && !strings.Contains(resp.Header.Get("Allow"), "GET") {
			t.Errorf("%s %s: Allow %q", tt.method, tt.path, resp.Header.Get("Allow"))
		}
	}
}

// lookupAsync runs a lookup in the background.
func (ts *testServer) lookupAsync(t *testing.T, path string) <-chan api.Lookup {
	out := make(chan api.Lookup, 1)
	go func() {
		resp, err := http.Get(ts.base + path)
		if err != nil {
			t.Errorf("GET %s: %v", path, err)
			close(out)
			return
		}
		defer resp.Body.Close()
		var r api.Lookup
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		out <- r
	}()
	return out
}

func TestLongPollHandler(t *testing.T) {
	c := testCache()
	ts := newTestServer(t, c)
	var first api.Lookup
	ts.get(t, "GET", "/v1/lookup/http.stream.prod.goku.dc1", &first)
	path := "/v1/lookup/http.stream.prod.goku.dc1?wait=1m&index=" + jsonIndex(first.Index)

	// Wakes on a change of the product.
	ch := ts.lookupAsync(t, path)
	waitLongPolls(t, ts.s, 1)
	c.SetProduct("dc1", "goku", []cache.Instance{inst("prod", "stream", "http", "n9", "10.0.0.9", 80, cache.Passing)}, 0)
	r := <-ch
	if r.Index <= first.Index || nodes(r) != "n9:http.stream.prod" {
		t.Errorf("long-poll woken by a change: %+v, first index %d", r, first.Index)
	}

	// A change of another product does not wake it.
	ch = ts.lookupAsync(t, "/v1/lookup/http.stream.prod.goku.dc1?wait=300ms&index="+jsonIndex(r.Index))
	waitLongPolls(t, ts.s, 1)
	began := time.Now()
	c.SetProduct("dc1", "other", []cache.Instance{inst("prod", "stream", "http", "n9", "10.0.0.9", 80, cache.Passing)}, 0)
	r2 := <-ch
	if r2.Index != r.Index || time.Since(began) < 250*time.Millisecond {
		t.Errorf("long-poll after another product's change: index %d (want %d) after %v", r2.Index, r.Index, time.Since(began))
	}

	// An index beyond the current one (the agent restarted) answers at once.
	r3 := <-ts.lookupAsync(t, "/v1/lookup/http.stream.prod.goku.dc1?wait=1m&index=999999")
	if r3.Index != r.Index {
		t.Errorf("long-poll from a future index: %d, want the current %d", r3.Index, r.Index)
	}

	// Shutdown answers long-polls in flight at once.
	ch = ts.lookupAsync(t, "/v1/lookup/http.stream.prod.goku.dc1?wait=10m&index="+jsonIndex(r.Index))
	waitLongPolls(t, ts.s, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a long-poll in flight: %v", err)
	}
	if r4 := <-ch; r4.Index != r.Index {
		t.Errorf("long-poll answered at shutdown: %+v", r4)
	}
}

// waitLongPolls waits until n long-polls are waiting.
func waitLongPolls(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for gaugeValue(s.metrics.longPolls) != float64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%v long-polls waiting, want %d", gaugeValue(s.metrics.longPolls), n)
		}
		<-tick.C
	}
}

func gaugeValue(g prometheus.Gauge) float64 {
	ch := make(chan prometheus.Metric, 1)
	g.Collect(ch)
	var m dto.Metric
	_ = (<-ch).Write(&m)
	return m.GetGauge().GetValue()
}

func TestLookupRemoteZoneWanted(t *testing.T) {
	c := testCache()
	c.SetDatacenters([]string{"dc1", "DC2"})
	ts := newTestServer(t, c)
	var r api.Lookup
	var e map[string]string
	// A zone that never syncs within the first wait: 503, saying so.
	if resp := ts.get(t, "GET", "/v1/lookup/http.stream.prod.goku.dc2", &e); resp.StatusCode != 503 || !strings.Contains(e["error"], "not synced") {
		t.Errorf("lookup in a zone that does not sync: %d %v", resp.StatusCode, e)
	}
	// A zone Consul does not know: nothing there, at once.
	if resp := ts.get(t, "GET", "/v1/lookup/http.stream.prod.goku.dc3", &r); resp.StatusCode != 200 || len(r.Instances) != 0 {
		t.Errorf("lookup in an unknown zone: %d %+v", resp.StatusCode, r)
	}
	ts.get(t, "GET", "/v1/lookup/http.stream.prod.goku.dc1", &r)
	ts.mu.Lock()
	wanted := strings.Join(ts.wanted, ",")
	ts.mu.Unlock()
	if wanted != "dc2,dc3" {
		t.Errorf("zones read before they were watched: %q, want dc2,dc3 (the watchers ignore dc3, which Consul does not know)", wanted)
	}

	var top api.Topology
	if resp := ts.get(t, "GET", "/v1/topology?zone=dc2", &top); resp.StatusCode != 200 || top.Synced || len(top.Products) != 0 {
		t.Errorf("topology of an unwatched zone: %d %+v", resp.StatusCode, top)
	}
	if resp := ts.get(t, "GET", "/v1/topology?zone=dc3", &e); resp.StatusCode != 404 || !strings.Contains(e["error"], "dc3") {
		t.Errorf("topology of an unknown zone: %d %v", resp.StatusCode, e)
	}
	if resp := ts.get(t, "GET", "/v1/topology?zone=d_c", &e); resp.StatusCode != 400 || e["error"] == "" {
		t.Errorf("topology of a malformed zone: %d %v", resp.StatusCode, e)
	}
}

func TestTopologyAndZonesHandlers(t *testing.T) {
	c := testCache()
	ts := newTestServer(t, c)
	var top api.Topology
	ts.get(t, "GET", "/v1/topology", &top)
	b, _ := json.Marshal(top)
	want := `{"zone":"dc1","index":` + jsonIndex(c.Zone("dc1").Index) + `,"synced":true,"products":{"goku":{"watched":true,"envs":{` +
		`"dev":{"jobs":{"stream":{"services":{"http":{"passing":1,"warning":0,"critical":0}}}}},` +
		`"prod":{"jobs":{"batch":{"services":{"http":{"passing":1,"warning":0,"critical":0}}},` +
		`"stream":{"services":{"grpc":{"passing":1,"warning":0,"critical":0},"http":{"passing":1,"warning":1,"critical":1}}}}}}}}}`
	if string(b) != want {
		t.Errorf("topology:\n%s\nwant\n%s", b, want)
	}

	var zones api.Zones
	ts.get(t, "GET", "/v1/zones", &zones)
	if len(zones.Zones) != 1 {
		t.Fatalf("zones: %+v", zones)
	}
	z := zones.Zones[0]
	if z.Zone != "dc1" || !z.Local || !z.Watched || !z.Synced || z.Products != 1 || z.Instances != 6 || z.LastContact != nil || z.SecondsStale != 0 {
		t.Errorf("zones: %+v", z)
	}
	c.Status("dc1").Contact(time.Now())
	c.Status("dc1").Failing(1)
	ts.get(t, "GET", "/v1/zones", &zones)
	if z := zones.Zones[0]; z.LastContact == nil || z.SecondsStale <= 0 {
		t.Errorf("zones while failing: %+v", z)
	}
}

// TestNonCanonicalPaths: the API answers a path that is not in canonical
// form with a JSON 400 naming the canonical one, never with the mux's
// redirect (which would send a client to another address without a word).
func TestNonCanonicalPaths(t *testing.T) {
	ts := newTestServer(t, testCache())
	for path, canonical := range map[string]string{
		"/v1/lookup":   "/v1/lookup/",
		"/v1/lookup/.": "/v1/lookup/",
		"/v1/lookup/x/../http.stream.prod.goku.dc1": "/v1/lookup/http.stream.prod.goku.dc1",
		"/v1//zones": "/v1/zones",
	} {
		var e struct{ Error string }
		resp := ts.get(t, "GET", path, &e)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(e.Error, canonical) || resp.Header.Get("Location") != "" {
			t.Errorf("%s: %d %q (Location %q), want 400 naming %s", path, resp.StatusCode, e.Error, resp.Header.Get("Location"), canonical)
		}
	}
}

// TestEncodedMessagesShared: the message of one address state is encoded
// once for all its subscribers with the same filter; another filter, kind
// or state gets its own.
func TestEncodedMessagesShared(t *testing.T) {
	c := testCache()
	res := c.Lookup(cache.Query{Zone: "dc1", Product: "goku", Env: "prod", Job: "stream", Service: "http"})
	if len(res.Addresses) != 1 {
		t.Fatalf("%d addresses", len(res.Addresses))
	}
	var e encodedMessages
	u := cache.Update{Address: res.Addresses[0]}
	b1, err1 := e.message(u, HealthPassing)
	b2, err2 := e.message(u, HealthPassing)
	if err1 != nil || err2 != nil || &b1[0] != &b2[0] {
		t.Errorf("the same state and filter were encoded twice (%v, %v)", err1, err2)
	}
	var m api.Message
	if err := json.Unmarshal(b1, &m); err != nil || m.Type != "update" || m.Address != "http.stream.prod.goku.dc1" || len(m.Instances) != 1 {
		t.Errorf("message %s: %v", b1, err)
	}
	for name, other := range map[string]func() ([]byte, error){
		"another filter": func() ([]byte, error) { return e.message(u, HealthAny) },
		"a snapshot": func() ([]byte, error) {
			return e.message(cache.Update{Address: u.Address, Snapshot: true}, HealthPassing)
		},
	} {
		b, err := other()
		if err != nil || string(b) == string(b1) {
			t.Errorf("%s: %s (%v)", name, b, err)
		}
	}
}

// TestDebugRoutesLocalOnly: with -http.pprof, the debug routes answer
// loopback clients only, and the command line they show hides the Consul
// token.
func TestDebugRoutesLocalOnly(t *testing.T) {
	c := cache.New(nil)
	s, err := Listen("127.0.0.1:0", Options{Cache: c, Gatherer: prometheus.NewRegistry(), Pprof: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/symbol"} {
		for _, remote := range []string{"10.1.2.3:4567", "[2001:db8::1]:80"} {
			r := httptest.NewRequest("GET", path, nil)
			r.RemoteAddr = remote
			w := httptest.NewRecorder()
			s.ServeHTTP(w, r)
			if w.Code != http.StatusForbidden {
				t.Errorf("GET %s from %s: %d", path, remote, w.Code)
			}
		}
		r := httptest.NewRequest("GET", path, nil)
		r.RemoteAddr = "127.0.0.1:4567"
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			t.Errorf("GET %s from loopback: %d", path, w.Code)
		}
	}
	r := httptest.NewRequest("POST", "/debug/free-os-memory", nil)
	r.RemoteAddr = "10.1.2.3:4567"
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	if w.Code != http.StatusForbidden {
		t.Errorf("POST /debug/free-os-memory from afar: %d", w.Code)
	}
	for _, c := range []struct{ in, want []string }{
		{[]string{"agent", "-consul.token", "s3cret", "-dns.addr", "x"}, []string{"agent", "-consul.token", "<redacted>", "-dns.addr", "x"}},
		{[]string{"agent", "--consul.token=s3cret"}, []string{"agent", "--consul.token=<redacted>"}},
		{[]string{"agent", "-consul.token-file", "/etc/t"}, []string{"agent", "-consul.token-file", "/etc/t"}},
	} {
		if got := redactArgs(c.in); strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("redactArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
