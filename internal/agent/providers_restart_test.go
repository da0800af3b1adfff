package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
	"github.com/rugby110/glimpse/provider"
)

// Tests of the providers across restarts of either agent, a Consul agent
// that stops midway, and the providers directory.

// instancesOf returns n instances of product on distinct addresses.
func instancesOf(product string, n int) []provider.Instance {
	ins := make([]provider.Instance, n)
	for i := range ins {
		ins[i] = provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product,
			Port: 8000 + i%1000, Address: fmt.Sprintf("127.0.%d.%d", 10+i/200, 1+i%200)}
	}
	return ins
}

// idsOf returns the sorted service IDs provider p's instances have.
func idsOf(p string, ins []provider.Instance) []string {
	ids := make([]string, len(ins))
	for i, in := range ins {
		ids[i] = provider.ServiceID(p, in)
	}
	sort.Strings(ids)
	return ids
}

// ownedIDs returns the sorted IDs of the Consul agent's registrations that
// carry provider p's tag, or nil when the agent does not answer.
func ownedIDs(c *api.Client, p string) []string {
	svcs, err := servicesTagged(c, p)
	if err != nil {
		return nil
	}
	ids := []string{}
	for id := range svcs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// probingConfig is the config of an agent on consulAddr that notices a
// Consul agent's restart within 200ms, and whose periodic reconcile (an
// hour) cannot be what repairs anything in a test.
func probingConfig(t testing.TB, consulAddr string) Config {
	cfg := testConfig(t, consulAddr)
	cfg.ReconcileEvery = time.Hour
	cfg.ProbeEvery = 200 * time.Millisecond
	return cfg
}

// TestProviderConsulAgentRestartEmpty: the Consul agent restarts with an
// empty state (a dev agent forgets everything). glimpse notices and brings
// the recorded state back, without a new PUT and long before the periodic
// reconcile (set to an hour here).
func TestProviderConsulAgentRestartEmpty(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	c := srv.Client()
	a := startAgent(t, probingConfig(t, srv.HTTPAddr()))
	p := newProduct("provrst")
	ins := instancesOf(p, 3)
	base := "http://" + a.HTTPAddr() + "/v1/providers/"
	if code, raw := do(t, "PUT", base+"keeper", bodyOf(t, ins...)); code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	want := idsOf("keeper", ins)
	if got := ownedIDs(c, "keeper"); !slices.Equal(got, want) {
		t.Fatalf("after PUT the Consul agent has %v, want %v", got, want)
	}
	name := "http.stream.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 3 }, "3 instances")

	srv.Restart(t)
	restarted := time.Now()
	if got := ownedIDs(c, "keeper"); len(got) == 3 {
		t.Logf("registrations already back %v after the restart", time.Since(restarted))
	}
	testconsul.WaitFor(t, 15*time.Second, func() bool { return slices.Equal(ownedIDs(c, "keeper"), want) },
		"the recorded state never came back to the restarted Consul agent")
	t.Logf("registrations back %v after the Consul agent was ready again", time.Since(restarted).Round(time.Millisecond))
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 3 }, "3 instances after the restart")
	if v := metricValue(scrape(t, a.HTTPAddr()), "glimpse_provider_consul_restarts_total"); v < 1 {
		t.Errorf("glimpse_provider_consul_restarts_total %v, want ≥1", v)
	}
}

// TestProviderConsulStopsMidApply: the Consul agent dies while a PUT is
// being applied. The answer is 503; once Consul is back (empty: a dev agent),
// the recorded state holds, exactly.
func TestProviderConsulStopsMidApply(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	proxy := testconsul.NewCountingProxy(t, srv.HTTPAddr())
	cfg := probingConfig(t, proxy.Addr())
	cfg.MaxRecords = 1000 // all 300 in one answer, to compare with the recorded state
	a := startAgent(t, cfg)
	p := newProduct("provmid")
	ins := instancesOf(p, 300)

	// Kill Consul once 20 of the 300 registrations went through.
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if proxy.CountByPath()["/v1/agent/service/register"] >= 20 {
				srv.Kill()
				return
			}
		}
	}()
	code, raw := do(t, "PUT", "http://"+a.HTTPAddr()+"/v1/providers/midway", bodyOf(t, ins...))
	<-killed
	if code != 503 || !strings.Contains(raw, "recorded") {
		t.Fatalf("PUT while the Consul agent died: %d %s, want 503 saying the state is recorded", code, raw)
	}
	registered := proxy.CountByPath()["/v1/agent/service/register"]
	if registered >= int64(len(ins)) {
		t.Fatalf("%d registrations went through; Consul was not killed midway", registered)
	}
	t.Logf("503 after %d of %d registrations: %s", registered, len(ins), raw)
	code, raw = do(t, "GET", "http://"+a.HTTPAddr()+"/v1/providers/midway", nil)
	var got provider.Body
	if code != 200 || json.Unmarshal([]byte(raw), &got) != nil || len(got.Instances) != len(ins) {
		t.Fatalf("GET while Consul is down: %d, %d instances; want the whole recorded state", code, len(got.Instances))
	}

	srv.Restart(t)
	c := srv.Client()
	want := idsOf("midway", ins)
	testconsul.WaitFor(t, 30*time.Second, func() bool { return slices.Equal(ownedIDs(c, "midway"), want) },
		"the recorded state never held once Consul was back")
	name := "http.stream.prod." + p + ".dc1." + domain
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool {
		tcp := query(t, a.DNSAddr(), "tcp", name, mdns.TypeSRV, 0)
		return len(tcp.Answer) == len(ins)
	}, "all 300 instances over DNS")
}

// TestProviderAgentRestart: glimpse-agent stops; meanwhile registrations
// drift (one removed, one orphan added under the provider's tag), a
// deletion that Consul refused is pending, and a provider's file is removed
// from the providers directory. A new glimpse-agent on the same data
// directory brings Consul to the recorded state: no duplicates, no orphans.
func TestProviderAgentRestart(t *testing.T) {
	c := consul.Client()
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	dataDir, provDir := t.TempDir(), t.TempDir()
	cfg := testConfig(t, proxy.Addr())
	cfg.DataDir, cfg.ProvidersDir, cfg.ProvidersDirPoll = dataDir, provDir, 100*time.Millisecond
	cfg.ReconcileEvery = time.Hour
	a, stop := stoppableAgent(t, cfg)
	base := "http://" + a.HTTPAddr() + "/v1/providers/"

	pa, pb, pf := newProduct("arst"), newProduct("brst"), newProduct("frst")
	keep := newProduct("keep")
	gone := newProduct("gone")
	file := newProduct("file")
	insA, insB, insF := instancesOf(pa, 3), instancesOf(pb, 2), instancesOf(pf, 2)
	for _, pr := range []struct {
		name string
		ins  []provider.Instance
	}{{keep, insA}, {gone, insB}} {
		if code, raw := do(t, "PUT", base+pr.name, bodyOf(t, pr.ins...)); code != 200 {
			t.Fatalf("PUT %s: %d %s", pr.name, code, raw)
		}
	}
	t.Cleanup(func() {
		for _, p := range []string{keep, gone, file} {
			for _, id := range ownedIDs(c, p) {
				c.Agent().ServiceDeregister(id)
			}
		}
	})
	writeAtomic(t, provDir, file+".json", bodyOf(t, insF...))
	testconsul.WaitFor(t, 10*time.Second, func() bool { return slices.Equal(ownedIDs(c, file), idsOf(file, insF)) },
		"the provider file was never applied")

	// A deletion the Consul agent refuses: 503, a tombstone recorded.
	proxy.SetFault(testconsul.Fault{Status: 500})
	if code, raw := do(t, "DELETE", base+gone, nil); code != 503 {
		t.Fatalf("DELETE with Consul failing: %d %s, want 503", code, raw)
	}
	stop()
	proxy.SetFault(testconsul.Fault{})
	if got := ownedIDs(c, gone); len(got) != 2 {
		t.Fatalf("the refused deletion removed registrations anyway: %v", got)
	}

	// Drift while glimpse-agent is down.
	removed := provider.ServiceID(keep, insA[1])
	if err := c.Agent().ServiceDeregister(removed); err != nil {
		t.Fatal(err)
	}
	orphan := &api.AgentServiceRegistration{ID: "glimpse-" + keep + "-orphan", Name: pa, Port: 9999, Address: "127.0.9.9",
		Tags: []string{provider.TagProvider + keep, provider.TagEnv + "prod", provider.TagJob + "stream", provider.TagService + "http"}}
	if err := c.Agent().ServiceRegister(orphan); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(provDir, file+".json")); err != nil {
		t.Fatal(err)
	}

	cfg2 := testConfig(t, consul.HTTPAddr())
	cfg2.DataDir, cfg2.ProvidersDir, cfg2.ProvidersDirPoll = dataDir, provDir, 100*time.Millisecond
	cfg2.ReconcileEvery = time.Hour
	a2, _ := stoppableAgent(t, cfg2)
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return slices.Equal(ownedIDs(c, keep), idsOf(keep, insA)) && len(ownedIDs(c, gone)) == 0 && len(ownedIDs(c, file)) == 0
	}, "after the restart: %s has %v (want %v), %s has %v, %s has %v (want none)",
		keep, ownedIDs(c, keep), idsOf(keep, insA), gone, ownedIDs(c, gone), file, ownedIDs(c, file))

	// No duplicates: each address and port is registered once.
	svcs, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, s := range svcs {
		if s.Service == pa {
			seen[fmt.Sprintf("%s:%d", s.Address, s.Port)]++
		}
	}
	if len(seen) != 3 {
		t.Errorf("%s has %d address:port pairs registered, want 3: %v", pa, len(seen), seen)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s registered %d times", k, n)
		}
	}
	var list []provider.Summary
	code, raw := do(t, "GET", "http://"+a2.HTTPAddr()+"/v1/providers", nil)
	if code != 200 || json.Unmarshal([]byte(raw), &list) != nil {
		t.Fatalf("GET /v1/providers: %d %s", code, raw)
	}
	if len(list) != 1 || list[0].Provider != keep || list[0].Instances != 3 || list[0].Source != "http" {
		t.Errorf("GET /v1/providers = %s, want only %s with 3 instances", raw, keep)
	}
}

// writeAtomic writes data to dir/name the way providers are told to: a
// temporary file starting with '.', then a rename.
func writeAtomic(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	if err := provider.WriteFileAtomic(filepath.Join(dir, name), data); err != nil {
		t.Fatal(err)
	}
}

// TestProviderDirectory: a file written into the providers directory is
// applied like a PUT; while it exists the provider cannot be changed over
// HTTP; a malformed file is reported and changes nothing; removing the file
// deletes the provider.
func TestProviderDirectory(t *testing.T) {
	c := consul.Client()
	dir := t.TempDir()
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.ProvidersDir, cfg.ProvidersDirPoll = dir, 50*time.Millisecond
	a := startAgent(t, cfg)
	p := newProduct("provdir")
	prov := newProduct("deploy")
	ins := instancesOf(p, 3)
	t.Cleanup(func() {
		for _, id := range ownedIDs(c, prov) {
			c.Agent().ServiceDeregister(id)
		}
	})
	base := "http://" + a.HTTPAddr() + "/v1/providers/"
	name := "http.stream.prod." + p + ".dc1." + domain

	writeAtomic(t, dir, prov+".json", bodyOf(t, ins...))
	testconsul.WaitFor(t, 10*time.Second, func() bool { return slices.Equal(ownedIDs(c, prov), idsOf(prov, ins)) },
		"the file was never applied")
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return srvPorts(m) == "[8000 8001 8002]" }, "the file's 3 instances")
	code, raw := do(t, "GET", base+prov, nil)
	var got provider.Body
	if code != 200 || json.Unmarshal([]byte(raw), &got) != nil || len(got.Instances) != 3 {
		t.Fatalf("GET: %d %s", code, raw)
	}
	for _, method := range []string{"PUT", "DELETE"} {
		if code, raw := do(t, method, base+prov, bodyOf(t, ins[0])); code != 409 || !strings.Contains(raw, "file") {
			t.Errorf("%s of a file provider: %d %s, want 409", method, code, raw)
		}
	}

	errorsSoFar := func() float64 { return metricValue(scrape(t, a.HTTPAddr()), "glimpse_provider_file_errors_total") }
	bad := [][]byte{
		[]byte(`{"instances": [`), // truncated
		[]byte(`not json`),
		[]byte(`{"instances": [{"service":"http","job":"stream","env":"prod","product":"` + p + `","port":70000}]}`),
		[]byte(`{"instances": [], "extra": 1}`),
		bytes.Repeat([]byte(" "), provider.MaxBody+1),
	}
	for i, data := range bad {
		before := errorsSoFar()
		writeAtomic(t, dir, prov+".json", data)
		testconsul.WaitFor(t, 10*time.Second, func() bool { return errorsSoFar() == before+1 }, "malformed file %d never reported", i)
		var list []provider.Summary
		code, raw := do(t, "GET", base[:len(base)-1], nil)
		if code != 200 || json.Unmarshal([]byte(raw), &list) != nil || len(list) == 0 {
			t.Fatalf("GET /v1/providers: %d %s", code, raw)
		}
		found := false
		for _, s := range list {
			if s.Provider == prov {
				found = true
				if s.FileError == "" || s.Instances != 3 || s.Source != "file" {
					t.Errorf("malformed file %d: listed as %+v, want the error and the previous 3 instances", i, s)
				}
			}
		}
		if !found {
			t.Errorf("malformed file %d: provider not listed: %s", i, raw)
		}
		// A few more polls: nothing changes in Consul, nothing counted twice.
		time.Sleep(200 * time.Millisecond)
		if got := ownedIDs(c, prov); !slices.Equal(got, idsOf(prov, ins)) {
			t.Fatalf("malformed file %d changed Consul: %v", i, got)
		}
		if v := errorsSoFar(); v != before+1 {
			t.Errorf("malformed file %d counted %v times", i, v-before)
		}
	}

	// Fixed, smaller: applied.
	writeAtomic(t, dir, prov+".json", bodyOf(t, ins[:1]...))
	testconsul.WaitFor(t, 10*time.Second, func() bool { return slices.Equal(ownedIDs(c, prov), idsOf(prov, ins[:1])) },
		"the fixed file was never applied")
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return srvPorts(m) == "[8000]" }, "the fixed file's instance")

	// The same content written again is not applied again.
	syncsOK := func() float64 {
		return metricValue(scrape(t, a.HTTPAddr()), `glimpse_provider_syncs_total{result="ok"}`)
	}
	before := syncsOK()
	writeAtomic(t, dir, prov+".json", bodyOf(t, ins[:1]...))
	time.Sleep(300 * time.Millisecond)
	if v := syncsOK(); v != before {
		t.Errorf("an unchanged file was applied again: %v syncs", v-before)
	}

	// The directory vanishes (an unmounted volume): nothing is deleted.
	errs := errorsSoFar()
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return errorsSoFar() == errs+1 }, "the missing directory was never reported")
	time.Sleep(300 * time.Millisecond)
	if got := ownedIDs(c, prov); !slices.Equal(got, idsOf(prov, ins[:1])) {
		t.Fatalf("a missing directory changed Consul: %v", got)
	}
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}

	// A symbolic link to a file elsewhere (a mounted config map): changes
	// to its target are applied.
	real := filepath.Join(t.TempDir(), "real.json")
	if err := os.WriteFile(real, bodyOf(t, ins[:2]...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(dir, ".link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, ".link"), filepath.Join(dir, prov+".json")); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 10*time.Second, func() bool { return slices.Equal(ownedIDs(c, prov), idsOf(prov, ins[:2])) },
		"the linked file was never applied")
	writeAtomic(t, filepath.Dir(real), "real.json", bodyOf(t, ins...))
	testconsul.WaitFor(t, 10*time.Second, func() bool { return slices.Equal(ownedIDs(c, prov), idsOf(prov, ins)) },
		"a change behind the link was never applied")

	// Removed: the provider is deleted, and HTTP may use the name again.
	if err := os.Remove(filepath.Join(dir, prov+".json")); err != nil {
		t.Fatal(err)
	}
	waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return m.Rcode == mdns.RcodeNameError }, "NXDOMAIN once the file is removed")
	if got := ownedIDs(c, prov); len(got) != 0 {
		t.Errorf("registrations left after the file was removed: %v", got)
	}
	if code, raw := do(t, "GET", base+prov, nil); code != 404 {
		t.Errorf("GET after the file was removed: %d %s", code, raw)
	}
	if code, raw := do(t, "PUT", base+prov, bodyOf(t, ins[0])); code != 200 {
		t.Errorf("PUT after the file was removed: %d %s", code, raw)
	}
	if code, raw := do(t, "DELETE", base+prov, nil); code != 200 {
		t.Errorf("DELETE: %d %s", code, raw)
	}
}
