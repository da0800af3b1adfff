package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// consul is the dev agent shared by the tests of this package; tests that
// need faults start their own.
var consul *testconsul.Agent

func TestMain(m *testing.M) {
	if os.Getenv(socketClientEnv) != "" {
		socketClient() // a child run as another user; see asUser
		return
	}
	if os.Getenv(trickleEnv) != "" {
		trickleClient() // a child of TestTrickledBodies
		return
	}
	testconsul.Main(m, testconsul.Options{Dev: true, Datacenter: "dc1"}, &consul)
}

// productSeq makes product names unique per test, so tests sharing the
// Consul agent do not see each other's instances.
var productSeq atomic.Int64

func newProduct(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, productSeq.Add(1))
}

// testConfig is the agent's config for tests: free ports, short waits.
func testConfig(t testing.TB, consulAddr string) Config {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.ConsulAddr = consulAddr
	cfg.DNSAddr = "127.0.0.1:0"
	cfg.HTTPAddr = "127.0.0.1:0"
	cfg.UDPSockets = 2
	cfg.ConsulStartTimeout = 10 * time.Second
	cfg.Watch.Wait, cfg.Watch.ProductWait = 5*time.Second, 5*time.Second
	cfg.Watch.MaxBackoff = 500 * time.Millisecond
	cfg.ProvidersSocket = socketPath(t)
	cfg.ProvidersTokens = tokensFile(t)
	return cfg
}

// testToken may write any provider over TCP in tests (see tokensFile).
const testToken = "test-token-0123456789abcdef0123456789"

// tokensFile writes a -providers.tokens file granting testToken every
// provider, as identity "test".
func tokensFile(t testing.TB) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("test "+testToken+" *\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// socketPath returns a path for a providers socket in a directory of its
// own, short enough for a Unix socket (108 bytes), removed at the end.
func socketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "p.sock")
}

// startAgent runs an agent until the test ends and waits for its local
// zone's first sync.
func startAgent(t testing.TB, cfg Config) *Agent {
	t.Helper()
	a, _ := stoppableAgent(t, cfg)
	return a
}

// stoppableAgent is startAgent that also returns a function stopping the
// agent before the test ends (and waiting until it has).
func stoppableAgent(t testing.TB, cfg Config) (*Agent, func()) {
	t.Helper()
	a, stop := launchAgent(t, cfg, nopLogger(t))
	waitSynced(t, a)
	return a, stop
}

// launchAgent starts an agent with cfg logging to log and returns it with
// the function that stops it (also called when the test ends); it does not
// wait for a sync.
func launchAgent(t testing.TB, cfg Config, log *zap.Logger) (*Agent, func()) {
	t.Helper()
	a, err := New(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("agent: %v", err)
	}
	return a, runAgent(t, a)
}

// waitSynced waits for a's local zone's first sync.
func waitSynced(t testing.TB, a *Agent) {
	t.Helper()
	testconsul.WaitFor(t, 20*time.Second, func() bool {
		z := a.Cache.Zone(a.Zone())
		return z != nil && z.Synced
	}, "local zone %s never synced", a.Zone())
}

// instance is one service instance to register with Consul.
type instance struct {
	id, product, env, job, service string
	address                        string // "" for the node's
	port                           int
	ttlCheck                       bool // a TTL check, critical until passed
	extraTags                      []string
}

func register(t testing.TB, c *api.Client, in instance) {
	t.Helper()
	reg := &api.AgentServiceRegistration{
		ID: in.id, Name: in.product, Address: in.address, Port: in.port,
		Tags: append([]string{"glimpse:env=" + in.env, "glimpse:job=" + in.job, "glimpse:service=" + in.service}, in.extraTags...),
	}
	if in.ttlCheck {
		reg.Check = &api.AgentServiceCheck{CheckID: in.id + "-ttl", TTL: "10m", Status: api.HealthPassing}
	}
	if err := c.Agent().ServiceRegister(reg); err != nil {
		t.Fatalf("register %s: %v", in.id, err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(in.id) })
}

// query sends one question over net ("udp" or "tcp") and returns the answer.
func query(t testing.TB, addr, net_ string, name string, qtype uint16, edns uint16) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	return exchange(t, addr, net_, m)
}

func exchange(t testing.TB, addr, net_ string, m *mdns.Msg) *mdns.Msg {
	t.Helper()
	c := &mdns.Client{Net: net_, Timeout: 3 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %v %s: %v", net_, m.Question, addr, err)
	}
	return r
}

// rawExchange sends a raw UDP packet and returns the raw response.
func rawExchange(t testing.TB, addr string, pkt []byte) []byte {
	t.Helper()
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Write(pkt); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("raw exchange: %v", err)
	}
	return buf[:n]
}

// waitDNS waits until cond holds for the answer to (name, qtype).
func waitDNS(t testing.TB, addr, name string, qtype uint16, cond func(*mdns.Msg) bool, what string) *mdns.Msg {
	t.Helper()
	var last *mdns.Msg
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		last = query(t, addr, "udp", name, qtype, 4096)
		return cond(last)
	}, "%s: %s %s never held; last answer:\n%v", what, mdns.TypeToString[qtype], name, lazy(func() any { return last }))
	return last
}

func srvTargets(m *mdns.Msg) map[string]uint16 {
	out := map[string]uint16{}
	for _, rr := range m.Answer {
		if s, ok := rr.(*mdns.SRV); ok {
			out[s.Target] = s.Port
		}
	}
	return out
}

func countType(rrs []mdns.RR, t uint16) int {
	n := 0
	for _, rr := range rrs {
		if rr.Header().Rrtype == t {
			n++
		}
	}
	return n
}

func soaIn(rrs []mdns.RR) *mdns.SOA {
	for _, rr := range rrs {
		if s, ok := rr.(*mdns.SOA); ok {
			return s
		}
	}
	return nil
}

func sortStrings(s []string) { sort.Strings(s) }

func nopLogger(t testing.TB) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
}

// runAgent runs a until the test ends.
// It returns a function that stops a earlier and waits until it has.
func runAgent(t testing.TB, a *Agent) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func httpStatus(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
