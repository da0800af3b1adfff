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
