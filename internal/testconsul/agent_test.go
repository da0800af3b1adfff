package testconsul

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// waitTimeout bounds every WaitFor in these tests.
const waitTimeout = 10 * time.Second

// serfStatusLeft is api.AgentMember.Status for a member that left (Serf's
// StatusLeft).
const serfStatusLeft = 3

// register registers a service on the agent behind c, failing the test on
// error.
func register(t *testing.T, c *api.Client, name string, port int) {
	t.Helper()
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: name, Port: port})
	if err != nil {
		t.Fatalf("register %s: %v", name, err)
	}
}

// catalogHasService reports whether the catalog behind c lists service name.
func catalogHasService(t *testing.T, c *api.Client, name string, q *api.QueryOptions) bool {
	entries, _, err := c.Catalog().Service(name, "", q)
	if err != nil {
		t.Logf("catalog service %s: %v", name, err)
		return false
	}
	return len(entries) > 0
}

func TestBinMissing(t *testing.T) {
	t.Setenv("CONSUL_BIN", "/nonexistent/consul")
	if _, err := Bin(); err == nil || !strings.Contains(err.Error(), "/nonexistent/consul") {
		t.Fatalf("Bin() with a missing CONSUL_BIN: err = %v, want one naming the path", err)
	}

	t.Setenv("CONSUL_BIN", "")
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	want := root + "/bin/consul"
	p, err := Bin()
	switch {
	case err != nil && !strings.Contains(err.Error(), "consul binary not found at "+want+": run `make consul` or set CONSUL_BIN"):
		t.Fatalf("Bin() error = %v", err)
	case err == nil && p != want:
		t.Fatalf("Bin() = %s, want %s", p, want)
	}
}

func TestDevAgentRegisterService(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true})
	if a.Datacenter() != "dc1" {
		t.Errorf("Datacenter() = %q, want dc1", a.Datacenter())
	}
	if !strings.HasPrefix(a.HTTPAddr(), "127.0.0.1:") || a.DNSAddr() != "" || a.GRPCAddr() != "" {
		t.Errorf("addresses: http %q dns %q grpc %q", a.HTTPAddr(), a.DNSAddr(), a.GRPCAddr())
	}
	c := a.Client()

	node, _, err := c.Catalog().Node(a.NodeName(), nil)
	if err != nil || node == nil || node.Node == nil {
		t.Fatalf("own node %s not in the catalog after Start: %v %v", a.NodeName(), node, err)
	}

	register(t, c, "web", 8080)
	WaitFor(t, waitTimeout, func() bool { return catalogHasService(t, c, "web", nil) },
		"service web in the catalog of %s", a.NodeName())
	entries, _, err := c.Catalog().Service("web", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].ServicePort != 8080 || entries[0].Node != a.NodeName() {
		t.Fatalf("catalog entries for web: %+v", entries)
	}
}

func TestDevAgentRestartHasFreshState(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true})
	c := a.Client()
	register(t, c, "web", 8080)
	WaitFor(t, waitTimeout, func() bool { return catalogHasService(t, c, "web", nil) }, "service web in the catalog")

	httpAddr, node := a.HTTPAddr(), a.NodeName()
	a.Restart(t)
	if a.HTTPAddr() != httpAddr || a.NodeName() != node {
		t.Fatalf("after Restart: %s %s, want %s %s", a.HTTPAddr(), a.NodeName(), httpAddr, node)
	}
	services, _, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(services) != 1 || services["consul"] == nil {
		t.Fatalf("services after restarting a dev agent: %v, want only consul", services)
	}
}

func TestServerRestartKeepsState(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Server: true})
	if a.DataDir() == "" {
		t.Fatal("non-dev agent without a data directory")
	}
	c := a.Client()
	register(t, c, "db", 5432)
	WaitFor(t, waitTimeout, func() bool { return catalogHasService(t, c, "db", nil) }, "service db in the catalog")

	a.Restart(t)
	if !catalogHasService(t, c, "db", nil) {
		t.Fatal("service db lost by restarting a server with a data directory")
	}
}

func TestClientAgentJoinsServer(t *testing.T) {
	t.Parallel()
	server := Start(t, Options{Dev: true})
	client := Start(t, Options{BindAddr: "127.0.0.2", RetryJoin: []string{server.SerfLANAddr()}})
	if !strings.HasPrefix(client.SerfLANAddr(), "127.0.0.2:") {
		t.Fatalf("client SerfLANAddr() = %s", client.SerfLANAddr())
	}

	register(t, client.Client(), "cache", 6379)
	WaitFor(t, waitTimeout, func() bool {
		entries, _, err := server.Client().Catalog().Service("cache", "", nil)
		return err == nil && len(entries) == 1 && entries[0].Node == client.NodeName() &&
			entries[0].Address == "127.0.0.2"
	}, "service cache of client %s in the server's catalog", client.NodeName())

	// A client leaves the cluster when stopped gracefully.
	client.Stop()
	WaitFor(t, waitTimeout, func() bool {
		members, err := server.Client().Agent().Members(false)
		if err != nil {
			return false
		}
		for _, m := range members {
			if m.Name == client.NodeName() {
				return m.Status == serfStatusLeft
			}
		}
		return true
	}, "client %s to leave", client.NodeName())
}

func TestWANJoinedDatacenters(t *testing.T) {
	t.Parallel()
	dc1 := Start(t, Options{Dev: true, Datacenter: "dc1"})
	dc2 := Start(t, Options{Dev: true, Datacenter: "dc2", RetryJoinWAN: []string{dc1.SerfWANAddr()}})
	c1 := dc1.Client()

	WaitFor(t, waitTimeout, func() bool {
		dcs, err := c1.Catalog().Datacenters()
		return err == nil && slices.Equal(dcs, []string{"dc1", "dc2"})
	}, "dc1 to list datacenters dc1 and dc2")

	register(t, dc2.Client(), "api", 9000)
	WaitFor(t, waitTimeout, func() bool {
		entries, _, err := c1.Health().Service("api", "", false, &api.QueryOptions{Datacenter: "dc2"})
		if err != nil {
			t.Logf("health query for dc2 through dc1: %v", err)
			return false
		}
		return len(entries) == 1 && entries[0].Node.Datacenter == "dc2" && entries[0].Service.Port == 9000
	}, "service api of dc2 through dc1's agent")
}

func TestACLDefaultDeny(t *testing.T) {
	t.Parallel()
	const token = "2b778dd9-f5f1-6f29-b4b4-9a5fa948757a"
	a := Start(t, Options{Dev: true, ACLDefaultPolicy: "deny", ACLInitialManagementToken: token})
	if a.Token() != token {
		t.Fatalf("Token() = %q", a.Token())
	}
	register(t, a.Client(), "web", 80)

	anonymous, err := api.NewClient(&api.Config{Address: a.HTTPAddr(), Token: "anonymous"})
	if err != nil {
		t.Fatal(err)
	}
	err = anonymous.Agent().ServiceRegister(&api.AgentServiceRegistration{Name: "intruder"})
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("register without a token: err = %v, want 403", err)
	}
	WaitFor(t, waitTimeout, func() bool { return catalogHasService(t, a.Client(), "web", nil) }, "service web in the catalog")
	if catalogHasService(t, anonymous, "web", nil) {
		t.Fatal("the anonymous token can read service web under default deny")
	}
}

func TestStartEAndClose(t *testing.T) {
	t.Parallel()
	var out SyncBuffer
	a, err := StartE(context.Background(), Options{Dev: true, DNS: true, LogOutput: &out}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !strings.HasPrefix(a.DNSAddr(), "127.0.0.1:") {
		t.Errorf("DNSAddr() = %q with DNS enabled", a.DNSAddr())
	}
	if !strings.Contains(out.String(), "Consul agent running!") {
		t.Errorf("LogOutput did not get the agent's output:\n%s", out.String())
	}
	logData, err := os.ReadFile(a.LogPath())
	if err != nil || !bytes.Contains(logData, []byte("Consul agent running!")) {
		t.Errorf("log file %s: %v", a.LogPath(), err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.LogPath()); !os.IsNotExist(err) {
		t.Fatalf("working directory not removed by Close: %v", err)
	}
	if err := a.WaitReady(context.Background()); err == nil {
		t.Fatal("WaitReady succeeded on a closed agent")
	}
}

func TestStartRetriesOnPortConflict(t *testing.T) {
	// Not parallel: it replaces pickAgentPorts.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	calls := 0
	pickAgentPorts = func(bindAddr string, dns, grpc, https bool) (agentPorts, error) {
		calls++
		p, err := pickPorts(bindAddr, dns, grpc, https)
		if calls == 1 {
			p.HTTP = busy.Addr().(*net.TCPAddr).Port
		}
		return p, err
	}
	defer func() { pickAgentPorts = pickPorts }()

	a := Start(t, Options{Dev: true})
	if calls != 2 || a.HTTPAddr() == busy.Addr().String() {
		t.Fatalf("after a port conflict: %d port picks, HTTP address %s (busy: %s)", calls, a.HTTPAddr(), busy.Addr())
	}
}

// An agent with Options.HTTPS serves its API over TLS with the CA it
// made, and speaks HTTP/2 there, as Consul does.
func TestHTTPS(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true, HTTPS: true})
	pemCA, err := os.ReadFile(a.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatal("no certificate in the CA file")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + a.HTTPSAddr() + "/v1/status/leader")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
		t.Errorf("status %d over %s, want 200 over HTTP/2", resp.StatusCode, resp.Proto)
	}
	if n, err := a.HTTPSConnections(); err != nil || n != 1 {
		t.Errorf("HTTPS connections %d (%v), want 1", n, err)
	}
}
