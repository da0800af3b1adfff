package agent

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// debugAgent runs an agent with cfg that logs at debug level into the
// returned buffer; it does not wait for a sync.
func debugAgent(t *testing.T, cfg Config) (*Agent, *testconsul.SyncBuffer) {
	t.Helper()
	logs := &testconsul.SyncBuffer{}
	core := zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logs), zap.DebugLevel)
	a, _ := launchAgent(t, cfg, zap.New(core))
	return a, logs
}

// With Consul's ACLs on and a default deny, glimpse works with a read token
// given by flag or by CONSUL_HTTP_TOKEN. Without one it keeps running,
// unready, and says why in /readyz, /v1/zones, its metrics and its log;
// without -zone it cannot even learn its zone and exits saying why. The
// token never shows in the logs or the metrics.
func TestACLDefaultDeny(t *testing.T) {
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1", ACLDefaultPolicy: "deny"})
	mgmt := srv.Client()
	p := newProduct("acl")
	register(t, mgmt, instance{id: p, product: p, env: "prod", job: "stream", service: "http", address: "127.0.7.1", port: 8001})
	policy, _, err := mgmt.ACL().PolicyCreate(&api.ACLPolicy{Name: "glimpse-read", Rules: `
service_prefix "" { policy = "read" }
node_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&api.ACLToken{Policies: []*api.ACLTokenPolicyLink{{ID: policy.ID}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	name := "http.stream.prod." + p + ".dc1." + domain

	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Run("no token, no zone: exits saying why", func(t *testing.T) {
		cfg := testConfig(t, srv.HTTPAddr())
		cfg.ConsulStartTimeout = time.Second
		_, err := New(context.Background(), cfg, zap.NewNop())
		if err == nil || !strings.Contains(err.Error(), "refused glimpse's token") || !strings.Contains(err.Error(), "agent:read") {
			t.Fatalf("New: %v; want a refused-token error", err)
		}
	})

	t.Run("no token: unready and says why", func(t *testing.T) {
		cfg := testConfig(t, srv.HTTPAddr())
		cfg.Zone = "dc1"
		a, _ := debugAgent(t, cfg)
		base := "http://" + a.HTTPAddr()
		var zones zonesBody
		testconsul.WaitFor(t, 10*time.Second, func() bool {
			getJSON(t, nil, base+"/v1/zones", &zones)
			z := zones.zone("dc1")
			return z != nil && !z.Synced && strings.Contains(z.Error, "ACLs hide every result")
		}, "/v1/zones never said the ACLs hide the catalog: %+v", &zones)
		code, body := do(t, "GET", base+"/readyz", nil)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "CONSUL_HTTP_TOKEN") {
			t.Errorf("/readyz: %d %s", code, body)
		}
		_, metrics := do(t, "GET", base+"/metrics", nil)
		if !strings.Contains(metrics, `glimpse_watch_consul_requests_total{endpoint="services",result="denied",zone="dc1"}`) {
			t.Error("no denied requests in the metrics")
		}
		if m := query(t, a.DNSAddr(), "udp", name, mdns.TypeSRV, 0); m.Rcode != mdns.RcodeServerFailure {
			t.Errorf("DNS before any sync: %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
		}
	})

	check := func(t *testing.T, a *Agent, logs *testconsul.SyncBuffer) {
		t.Helper()
		waitSynced(t, a)
		waitDNS(t, a.DNSAddr(), name, mdns.TypeSRV, func(m *mdns.Msg) bool { return len(m.Answer) == 1 }, "the instance behind the ACLs")
		if code, body := do(t, "GET", "http://"+a.HTTPAddr()+"/readyz", nil); code != http.StatusOK {
			t.Errorf("/readyz with a token: %d %s", code, body)
		}
		_, metrics := do(t, "GET", "http://"+a.HTTPAddr()+"/metrics", nil)
		if strings.Contains(metrics, tok.SecretID) {
			t.Error("the token is in the metrics")
		}
		if strings.Contains(logs.String(), tok.SecretID) {
			t.Error("the token is in the logs")
		}
	}
	t.Run("token by flag", func(t *testing.T) {
		cfg := testConfig(t, srv.HTTPAddr())
		cfg.ConsulToken = tok.SecretID
		a, logs := debugAgent(t, cfg)
		check(t, a, logs)
	})
	t.Run("token from -consul.token-file", func(t *testing.T) {
		cfg := testConfig(t, srv.HTTPAddr())
		cfg.ConsulTokenFile = filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(cfg.ConsulTokenFile, []byte(tok.SecretID+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Pprof = true
		a, logs := debugAgent(t, cfg)
		check(t, a, logs)
		if _, cmd := do(t, "GET", "http://"+a.HTTPAddr()+"/debug/pprof/cmdline", nil); strings.Contains(cmd, tok.SecretID) {
			t.Error("the token is in /debug/pprof/cmdline")
		}
	})
	t.Run("token from CONSUL_HTTP_TOKEN", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_TOKEN", tok.SecretID)
		a, logs := debugAgent(t, testConfig(t, srv.HTTPAddr()))
		check(t, a, logs)
	})
	t.Run("unknown token", func(t *testing.T) {
		cfg := testConfig(t, srv.HTTPAddr())
		cfg.Zone = "dc1"
		cfg.ConsulToken = "00000000-1111-2222-3333-444444444444"
		a, logs := debugAgent(t, cfg)
		testconsul.WaitFor(t, 10*time.Second, func() bool {
			code, body := do(t, "GET", "http://"+a.HTTPAddr()+"/readyz", nil)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "refused glimpse's token")
		}, "/readyz never said the token was refused")
		if strings.Contains(logs.String(), cfg.ConsulToken) {
			t.Error("the token is in the logs")
		}
	})
}
