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
	entries, _, err := c.Health().Service(p, "", false, &api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || time.Since(start) < 200*time.Millisecond || time.Since(start) > 5*time.Second {
		t.Fatalf("blocking query over the socket: %d entries after %v", len(entries), time.Since(start))
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
