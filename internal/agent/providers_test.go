package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
	"github.com/rugby110/glimpse/provider"
)

// providerConfig is testConfig with a data directory of the test's own.
func providerConfig(t testing.TB) Config {
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.ReconcileEvery = time.Second
	return cfg
}

func do(t testing.TB, method, url string, body []byte) (int, string) {
	t.Helper()
	var header map[string]string
	if method == http.MethodPut || method == http.MethodDelete {
		header = map[string]string{"Authorization": "Bearer " + testToken}
	}
	return rawRequest(t, method, url, body, header)
}

func bodyOf(t testing.TB, ins ...provider.Instance) []byte {
	t.Helper()
	data, err := json.Marshal(provider.Body{Instances: ins})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// owned returns the Consul agent's services carrying provider p's tag, by ID.
func owned(t testing.TB, c *api.Client, p string) map[string]*api.AgentService {
	t.Helper()
	out, err := servicesTagged(c, p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// servicesTagged is owned for callers that expect the Consul agent to fail.
func servicesTagged(c *api.Client, p string) (map[string]*api.AgentService, error) {
	svcs, err := c.Agent().Services()
	if err != nil {
		return nil, err
	}
	out := map[string]*api.AgentService{}
	for id, s := range svcs {
		if slices.Contains(s.Tags, provider.TagProvider+p) {
			out[id] = s
		}
	}
	return out, nil
}

func serviceIDs(t testing.TB, c *api.Client) []string {
	t.Helper()
	svcs, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for id, s := range svcs {
		ids = append(ids, fmt.Sprintf("%s/%s/%d/%v", id, s.Service, s.Port, s.Tags))
	}
	sort.Strings(ids)
	return ids
}

func srvPorts(m *mdns.Msg) string {
	var ports []int
	for _, rr := range m.Answer {
		if s, ok := rr.(*mdns.SRV); ok {
			ports = append(ports, int(s.Port))
		}
	}
	sort.Ints(ports)
	return fmt.Sprint(ports)
}

func TestProviderPutDelete(t *testing.T) {
	c := consul.Client()
	p := newProduct("prov")
	// Someone else's registrations, which the provider must leave alone.
	register(t, c, instance{id: p + "-plain", product: p, env: "prod", job: "stream", service: "other", port: 7000})
	a := startAgent(t, providerConfig(t))
	base := "http://" + a.HTTPAddr() + "/v1/providers/"
	other := []provider.Instance{{Service: "http", Job: "stream", Env: "prod", Product: p, Port: 9100, Address: "127.0.0.5"}}
	if code, raw := do(t, "PUT", base+"other", bodyOf(t, other...)); code != 200 {
		t.Fatalf("PUT other: %d %s", code, raw)
	}
	t.Cleanup(func() { do(t, "DELETE", base+"other", nil) })

	two := []provider.Instance{
		{Service: "http", Job: "stream", Env: "prod", Product: p, Port: 8001, Address: "127.0.0.2"},
		{Service: "http", Job: "stream", Env: "prod", Product: p, Port: 8002, Address: "127.0.0.3"},
	}
	code, raw := do(t, "PUT", base+"bazooka", bodyOf(t, two...))
	if code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	var put struct {
		Provider  string `json:"provider"`
		Instances int    `json:"instances"`
	}
	if err := json.Unmarshal([]byte(raw), &put); err != nil || put.Provider != "bazooka" || put.Instances != 2 {
		t.Fatalf("PUT answer %s (%v)", raw, err)
	}
	t.Cleanup(func() { do(t, "DELETE", base+"bazooka", nil) })

	name := "http.stream.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return srvPorts(m) == "[8001 8002 9100]" }, "both instances and the other provider's")
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		b := lookup(t, a, "http.stream.prod."+p+".dc1", "")
		n := 0
		for _, in := range b.Instances {
			if in.Provider == "bazooka" {
				n++
			}
		}
		return n == 2
	}, "HTTP lookup never showed bazooka's 2 instances")

	code, raw = do(t, "GET", base+"bazooka", nil)
	var got provider.Body
	if code != 200 || json.Unmarshal([]byte(raw), &got) != nil || len(got.Instances) != 2 {
		t.Fatalf("GET: %d %s", code, raw)
	}

	// A smaller set: 8002 goes.
	if code, raw := do(t, "PUT", base+"bazooka", bodyOf(t, two[0])); code != 200 {
		t.Fatalf("PUT smaller: %d %s", code, raw)
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return srvPorts(m) == "[8001 9100]" }, "removed instance gone")
	if n := len(owned(t, c, "bazooka")); n != 1 {
		t.Errorf("bazooka owns %d registrations, want 1", n)
	}
	if n := len(owned(t, c, "other")); n != 1 {
		t.Errorf("other owns %d registrations, want 1", n)
	}
	if _, _, err := c.Agent().Service(p+"-plain", nil); err != nil {
		t.Errorf("plain service: %v", err)
	}

	if code, raw := do(t, "DELETE", base+"bazooka", nil); code != 200 {
		t.Fatalf("DELETE: %d %s", code, raw)
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return srvPorts(m) == "[9100]" }, "bazooka's instances gone")
	if code, raw := do(t, "GET", base+"bazooka", nil); code != 404 || !strings.Contains(raw, "error") {
		t.Errorf("GET after DELETE: %d %s", code, raw)
	}
	if code, _ := do(t, "DELETE", base+"bazooka", nil); code != 404 {
		t.Errorf("second DELETE: %d, want 404", code)
	}
	if code, raw := do(t, "DELETE", base+"other", nil); code != 200 {
		t.Fatalf("DELETE other: %d %s", code, raw)
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeNameError }, "all providers' instances gone: NXDOMAIN")
	if _, _, err := c.Agent().Service(p+"-plain", nil); err != nil {
		t.Errorf("plain service after DELETE: %v", err)
	}
}

// TestProviderReconcile: registrations removed behind the agent's back come
// back at the next reconcile, and the repair is counted.
func TestProviderReconcile(t *testing.T) {
	c := consul.Client()
	p := newProduct("provrec")
	a := startAgent(t, providerConfig(t))
	base := "http://" + a.HTTPAddr() + "/v1/providers/"
	ins := provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: p, Port: 8001, Address: "127.0.0.2"}
	if code, raw := do(t, "PUT", base+"recon", bodyOf(t, ins)); code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	t.Cleanup(func() { do(t, "DELETE", base+"recon", nil) })
	id := provider.ServiceID("recon", ins)
	if err := c.Agent().ServiceDeregister(id); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return len(owned(t, c, "recon")) == 1 }, "registration never restored")
	testconsul.WaitFor(t, 5*time.Second, func() bool {
		mfs, err := a.Registry.Gather()
		if err != nil {
			return false
		}
		for _, mf := range mfs {
			if mf.GetName() == "glimpse_provider_drift_repaired_total" && mf.GetMetric()[0].GetCounter().GetValue() >= 1 {
				return true
			}
		}
		return false
	}, "drift repair not counted")
}

func invalidBodies() [][]byte {
	good := `{"service":"http","job":"stream","env":"prod","product":"p","port":8000}`
	inst := func(s string) []byte { return []byte(`{"instances":[` + s + `]}`) }
	var out [][]byte
	for _, field := range []string{"service", "job", "env", "product"} {
		for _, bad := range []string{"", "a/b", "a:b", "a.b", "a_b", "é", strings.Repeat("a", 64), "a b", "*"} {
			out = append(out, inst(strings.Replace(good, `"`+field+`":"`+map[string]string{"service": "http", "job": "stream", "env": "prod", "product": "p"}[field]+`"`, `"`+field+`":"`+bad+`"`, 1)))
		}
	}
	out = append(out, inst(strings.Replace(good, `"product":"p"`, `"product":"consul"`, 1)))
	for _, port := range []string{"0", "70000", "-1", "65536", `"80"`, "80.5", "null"} {
		if port == "null" {
			continue // null is the zero port: still invalid
		}
		out = append(out, inst(strings.Replace(good, "8000", port, 1)))
	}
	out = append(out, inst(strings.Replace(good, `"port":8000`, `"port":0`, 1)))
	for _, ip := range []string{"1.2.3", "256.1.1.1", "host.example", "0.0.0.0", "::", "fe80::1%eth0", "1.2.3.4:80", "x"} {
		out = append(out, inst(strings.Replace(good, `}`, `,"address":"`+ip+`"}`, 1)))
	}
	out = append(out, inst(good+","+good))
	out = append(out, inst(good+","+strings.Replace(good, "HTTP", "http", 1)))
	out = append(out, inst(good+","+strings.Replace(good, `"service":"http"`, `"service":"HTTP"`, 1)))
	for _, unk := range []string{`,"weight":1`, `,"tags":[]`, `,"Port2":1`} {
		out = append(out, inst(strings.Replace(good, `}`, unk+`}`, 1)))
	}
	out = append(out, []byte(`{"instances":[],"extra":1}`), []byte(`{}`), []byte(`{"instances":null}`), []byte(`{"instances":{}}`))
	for _, chk := range []string{`{"type":"icmp"}`, `{}`, `{"type":"ttl"}`, `{"type":"ttl","ttl":"x"}`, `{"type":"ttl","ttl":"-1s"}`, `{"type":"tcp","target":"nohost"}`, `{"type":"http","target":"ftp://x/"}`, `{"type":"tcp","interval":"soon"}`, `{"type":"tcp","ttl":"10s"}`, `{"type":"ttl","ttl":"10s","interval":"1s"}`, `{"type":"tcp","foo":1}`, `"tcp"`} {
		out = append(out, inst(strings.Replace(good, `}`, `,"check":`+chk+`}`, 1)))
	}
	for _, raw := range []string{"", "not json", "[]", `"x"`, "null", "{", `{"instances":[`, `{"instances":[{"service":"http"`, good, `{"instances":[]} {}`, `{"instances":[1]}`, `{"instances":"x"}`} {
		out = append(out, []byte(raw))
	}
	full := string(inst(good))
	for i := 1; len(out) < 99; i += 3 {
		out = append(out, []byte(full[:len(full)-i])) // truncated
	}
	big := bytes.Repeat([]byte(" "), 4<<20+10)
	copy(big, `{"instances":[]}`)
	out = append(out, big)
	return out
}

func TestProviderInvalidBodies(t *testing.T) {
	c := consul.Client()
	a := startAgent(t, providerConfig(t))
	url := "http://" + a.HTTPAddr() + "/v1/providers/invalid"
	bodies := invalidBodies()
	if len(bodies) < 100 {
		t.Fatalf("only %d invalid bodies", len(bodies))
	}
	before := serviceIDs(t, c)
	for i, b := range bodies {
		code, raw := do(t, "PUT", url, b)
		want := http.StatusBadRequest
		if len(b) > 4<<20 {
			want = http.StatusRequestEntityTooLarge
		}
		var e struct {
			Error string `json:"error"`
		}
		if code != want || json.Unmarshal([]byte(raw), &e) != nil || e.Error == "" {
			short := string(b)
			if len(short) > 200 {
				short = short[:200] + "…"
			}
			t.Errorf("body %d %q: %d %s, want %d with an error message", i, short, code, raw, want)
		}
	}
	if after := serviceIDs(t, c); !slices.Equal(before, after) {
		t.Errorf("Consul agent's services changed:\nbefore %v\nafter  %v", before, after)
	}
	if code, _ := do(t, "GET", url, nil); code != 404 {
		t.Errorf("GET after invalid PUTs: %d, want 404 (nothing recorded)", code)
	}
	if code, raw := do(t, "PUT", "http://"+a.HTTPAddr()+"/v1/providers/bad_name", []byte(`{"instances":[]}`)); code != 400 {
		t.Errorf("bad provider name: %d %s", code, raw)
	}
}

func TestProviderConcurrentPuts(t *testing.T) {
	c := consul.Client()
	p := newProduct("provconc")
	a := startAgent(t, providerConfig(t))
	url := "http://" + a.HTTPAddr() + "/v1/providers/conc"
	t.Cleanup(func() { do(t, "DELETE", url, nil) })
	const n = 20
	var wg sync.WaitGroup
	codes := make([]int, n)
	for g := 0; g < n; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ins []provider.Instance
			for k := 0; k <= g%5; k++ {
				ins = append(ins, provider.Instance{Service: "http", Job: fmt.Sprintf("j%d", g), Env: "prod", Product: p, Port: 8000 + k})
			}
			codes[g], _ = do(t, "PUT", url, bodyOf(t, ins...))
		}()
	}
	wg.Wait()
	for g, code := range codes {
		if code != 200 {
			t.Errorf("PUT %d: %d", g, code)
		}
	}
	code, raw := do(t, "GET", url, nil)
	var stored provider.Body
	if code != 200 || json.Unmarshal([]byte(raw), &stored) != nil {
		t.Fatalf("GET: %d %s", code, raw)
	}
	// The stored body is one goroutine's whole set, and the registrations
	// equal it exactly: never a mix.
	jobs := map[string]bool{}
	want := map[string]int{}
	for _, in := range stored.Instances {
		jobs[in.Job] = true
		want[provider.ServiceID("conc", in)] = in.Port
	}
	if len(jobs) != 1 {
		t.Fatalf("stored body mixes sets: %s", raw)
	}
	got := owned(t, c, "conc")
	if len(got) != len(want) {
		t.Fatalf("registered %d, stored %d: %s", len(got), len(want), raw)
	}
	for id, s := range got {
		if port, ok := want[id]; !ok || port != s.Port {
			t.Errorf("registration %s (port %d, tags %v) not in the stored body %s", id, s.Port, s.Tags, raw)
		}
	}
}

func TestProviderRemoteForbidden(t *testing.T) {
	cfg := providerConfig(t)
	cfg.HTTPAddr = "0.0.0.0:0"
	a := startAgent(t, cfg)
	_, port, _ := strings.Cut(a.HTTPAddr(), "]:")
	if port == "" {
		_, port, _ = strings.Cut(a.HTTPAddr(), ":")
	}
	ip := nonLoopbackIP()
	if ip == "" {
		t.Skip("no non-loopback address")
	}
	code, raw := do(t, "GET", "http://"+ip+":"+port+"/v1/providers/x", nil)
	if code != 403 || !strings.Contains(raw, "loopback") {
		t.Errorf("remote GET: %d %s, want 403", code, raw)
	}
	if code, _ := do(t, "GET", "http://127.0.0.1:"+port+"/v1/providers/x", nil); code != 404 {
		t.Errorf("loopback GET of an unknown provider: %d, want 404", code)
	}
}

func nonLoopbackIP() string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return ""
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP.String()
		}
	}
	return ""
}
