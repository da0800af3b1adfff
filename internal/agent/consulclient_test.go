package agent

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// The agent reaches Consul over a Unix socket (CONSUL_HTTP_ADDR=unix://…)
// through its own transport: a blocking query waits, then wakes on a change.
func TestConsulClientUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "consul.sock")
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1",
		ExtraArgs: []string{"-hcl", `addresses { http = "127.0.0.1 unix://` + sock + `" }`}})
	c, tr, err := ConsulClient(ConsulOptions{Addr: "unix://" + sock})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.CloseIdleConnections()
	if _, err := c.Agent().Self(); err != nil {
		t.Fatalf("over the socket: %v", err)
	}
	p := newProduct("unixsock")
	_, meta, err := c.Health().Service(p, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	registered := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		registered <- srv.Client().Agent().ServiceRegister(&api.AgentServiceRegistration{ID: p, Name: p, Port: 80, Address: "127.0.9.1",
			Tags: []string{"glimpse:env=prod", "glimpse:job=j", "glimpse:service=s"}})
	}()
	defer func() {
		if err := <-registered; err != nil {
			t.Errorf("register: %v", err)
		}
	}()
	start := time.Now()
	// Consul may answer a blocking query before the result changed (a new
	// agent's index moves as it syncs its node); a client asks again from
	// the index it got. A query that does not block would take many.
	var entries []*api.ServiceEntry
	index, requests := meta.LastIndex, 0
	for len(entries) == 0 && time.Since(start) < 5*time.Second {
		var m *api.QueryMeta
		entries, m, err = c.Health().Service(p, "", false, &api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		index, requests = m.LastIndex, requests+1
	}
	if len(entries) != 1 || time.Since(start) < 200*time.Millisecond || time.Since(start) > 5*time.Second || requests > 3 {
		t.Fatalf("blocking query over the socket: %d entries after %v and %d requests", len(entries), time.Since(start), requests)
	}
	if tr.Idle() != 1 {
		t.Errorf("idle connections: %d, want the one reused", tr.Idle())
	}
}

func TestConsulClientBadScheme(t *testing.T) {
	if _, _, err := ConsulClient(ConsulOptions{Addr: "ftp://127.0.0.1:8500"}); err == nil {
		t.Error("ftp:// accepted")
	}
}

// TestBlockingWaits: against a real Consul, a product's blocking reads ask
// for the product wait, and the zone's own reads for the zone's wait; the
// first blocking read after a read from index 0 asks for a random share of
// it (from a sixteenth), so loops read together do not time out together.
func TestBlockingWaits(t *testing.T) {
	c := consul.Client()
	p := newProduct("waits")
	register(t, c, instance{id: p + "-1", product: p, env: "prod", job: "web", service: "http", port: 80})
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	cfg := testConfig(t, proxy.Addr())
	cfg.Watch.Wait, cfg.Watch.ProductWait = 400*time.Millisecond, 1200*time.Millisecond
	cfg.Watch.Pins = []string{p}
	startAgent(t, cfg)

	for _, tc := range []struct {
		path string
		wait time.Duration
	}{{"/v1/health/service/" + p, cfg.Watch.ProductWait}, {"/v1/catalog/service/consul", cfg.Watch.Wait}} {
		var waits []string
		testconsul.WaitFor(t, 20*time.Second, func() bool { waits = proxy.Waits(tc.path); return len(waits) >= 3 },
			"fewer than 3 blocking reads of %s", tc.path)
		var got []time.Duration
		for _, w := range waits[:3] {
			d, err := time.ParseDuration(w)
			if err != nil {
				t.Fatalf("%s: wait %q: %v", tc.path, w, err)
			}
			got = append(got, d)
		}
		if got[0] < tc.wait/16 || got[0] >= tc.wait || got[1] != tc.wait || got[2] != tc.wait {
			t.Errorf("%s: blocking reads waited %v, want the first within [%v, %v) and then %v", tc.path, got, tc.wait/16, tc.wait, tc.wait)
		}
	}
}
