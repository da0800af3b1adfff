package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/rugby110/glimpse/client"
	"github.com/rugby110/glimpse/grpcresolver"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// grpcServer starts a real gRPC server (the health service) on a free
// loopback port and returns its port.
func grpcServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().(*net.TCPAddr).Port
}

// TestGRPCResolver: a real grpc-go client on glimpse:///<address>, round
// robin over two real gRPC servers registered in Consul; a third one
// registered gets RPCs within 1 s of the Consul write; one turned critical
// gets no new RPC once 1 s has passed; after Close nothing of the resolver
// is left running.
func TestGRPCResolver(t *testing.T) {
	c := consul.Client()
	p := newProduct("grpc")
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	ports := []int{grpcServer(t), grpcServer(t), grpcServer(t)}
	reg := func(i int) {
		t.Helper()
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: fmt.Sprintf("%s-%d", p, i), Name: p, Address: "127.0.0.1", Port: ports[i],
			Tags:  []string{"glimpse:env=prod", "glimpse:job=rpc", "glimpse:service=health"},
			Check: &api.AgentServiceCheck{TTL: "10m", Status: api.HealthPassing},
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Agent().ServiceDeregister(fmt.Sprintf("%s-%d", p, i)) })
	}
	reg(0)
	reg(1)
	before := clientGoroutines()

	cl, err := client.New(a.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("glimpse:///health.rpc.prod."+p+".dc1",
		grpc.WithResolvers(grpcresolver.NewBuilder(cl)),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig": [{"round_robin": {}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	hc := healthpb.NewHealthClient(conn)
	// call makes one RPC and returns the port of the server that took it.
	call := func() int {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var pr peer.Peer
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&pr), grpc.WaitForReady(true)); err != nil {
			t.Fatalf("RPC: %v", err)
		}
		_, port, _ := net.SplitHostPort(pr.Addr.String())
		n, _ := strconv.Atoi(port)
		return n
	}
	seen := map[int]int{}
	for range 20 {
		seen[call()]++
	}
	if seen[ports[0]] == 0 || seen[ports[1]] == 0 || len(seen) != 2 {
		t.Fatalf("round robin over two servers: %v (ports %v)", seen, ports[:2])
	}

	// A third server registered: it takes RPCs within 1 s.
	reg(2)
	wrote := time.Now()
	for call() != ports[2] {
		if time.Since(wrote) > 5*time.Second {
			t.Fatal("the third server got no RPC within 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if took := time.Since(wrote); took > time.Second {
		t.Errorf("the third server's first RPC came %v after its registration", took)
	}
	t.Logf("the third server's first RPC %v after its registration", time.Since(wrote).Round(time.Millisecond))

	// The first one turned critical: no RPC reaches it once 1 s passed.
	if err := c.Agent().UpdateTTL("service:"+fmt.Sprintf("%s-%d", p, 0), "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	seen = map[int]int{}
	for range 30 {
		seen[call()]++
	}
	if seen[ports[0]] != 0 || seen[ports[1]] == 0 || seen[ports[2]] == 0 {
		t.Errorf("after the first turned critical: %v (ports %v)", seen, ports)
	}

	conn.Close()
	testconsul.WaitFor(t, 5*time.Second, func() bool { return clientGoroutines() <= before }, "the resolver's goroutines left after Close: %d", clientGoroutines())
}
