package provider

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// consul is the dev agent shared by the tests of this package; each test
// uses its own provider and product names.
var consul *testconsul.Agent

func TestMain(m *testing.M) {
	testconsul.Main(m, testconsul.Options{Dev: true}, &consul)
}

var seq atomic.Int64

// newName returns a name unique in the test binary.
func newName(prefix string) string { return fmt.Sprintf("%s%d", prefix, seq.Add(1)) }

// servicesOf returns the local agent's services tagged as provider's, by ID.
func servicesOf(t *testing.T, c *api.Client, provider string) map[string]*api.AgentService {
	t.Helper()
	all, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*api.AgentService{}
	for id, s := range all {
		if slices.Contains(s.Tags, TagProvider+provider) {
			out[id] = s
		}
	}
	return out
}

func ids(m map[string]*api.AgentService) []string {
	var out []string
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func wantIDs(provider string, ins ...Instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, ServiceID(provider, in))
	}
	slices.Sort(out)
	return out
}

// registerForeign registers a service glimpse's provider sync must leave
// alone.
func registerForeign(t *testing.T, c *api.Client, id, name string, tags ...string) {
	t.Helper()
	if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: id, Name: name, Port: 9999, Tags: tags}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(id) })
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	c := consul.Client()
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	s := NewSyncer(consul.ClientAt(proxy.Addr()))
	prov, other, product := newName("bazooka"), newName("other"), newName("goku")

	// Registrations that are not this provider's.
	registerForeign(t, c, "plain-"+product, product)
	registerForeign(t, c, "glimpse-by-hand-"+product, product, "glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http")
	registerForeign(t, c, "prefix-"+product, product, TagProvider+prov+"x", "glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http")
	otherIns := Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 7000}
	if err := s.Apply(ctx, other, &Body{Instances: []Instance{otherIns}}); err != nil {
		t.Fatal(err)
	}

	a := Instance{Service: "HTTP", Job: "stream", Env: "prod", Product: product, Port: 8000, Address: "10.1.2.3",
		Check: &Check{Type: CheckTTL, TTL: "1m"}}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcpLn.Close() })
	go func() {
		for {
			conn, err := tcpLn.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(web.Close)
	b := Instance{Service: "grpc", Job: "stream", Env: "prod", Product: product, Port: tcpLn.Addr().(*net.TCPAddr).Port,
		Check: &Check{Type: CheckTCP, Interval: "1s", Timeout: "1s"}}
	d := Instance{Service: "admin", Job: "api", Env: "dev", Product: product, Port: 8002, Address: "2001:db8::7",
		Check: &Check{Type: CheckHTTP, Target: web.URL + "/health", Interval: "1s"}}
	e := Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000, Address: "10.1.2.4"}
	if err := s.Apply(ctx, prov, &Body{Instances: []Instance{a, b, d, e}}); err != nil {
		t.Fatal(err)
	}

	got := servicesOf(t, c, prov)
	if g, w := ids(got), wantIDs(prov, a, b, d, e); !slices.Equal(g, w) {
		t.Fatalf("registered %v, want %v", g, w)
	}
	sa := got[ServiceID(prov, a)]
	wantTags := []string{"glimpse:env=prod", "glimpse:job=stream", "glimpse:service=http", TagProvider + prov, TagProduct + product}
	if sa.Service != product || sa.Address != "10.1.2.3" || sa.Port != 8000 || !slices.Equal(sortedCopy(sa.Tags), sortedCopy(wantTags)) {
		t.Errorf("instance a registered as %+v", sa)
	}
	if !strings.HasPrefix(sa.ID, "glimpse-"+prov+"-") {
		t.Errorf("service ID %q does not start with glimpse-%s-", sa.ID, prov)
	}
	// Consul 1.14 reports no check definitions, so the checks are shown to
	// target the right place by passing: the tcp check (default target: the
	// node's address and the instance's port) dials tcpLn, the http check
	// gets 200 from web.
	var byService map[string]*api.AgentCheck
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		checks, err := c.Agent().Checks()
		if err != nil {
			return false
		}
		byService = map[string]*api.AgentCheck{}
		for _, ch := range checks {
			byService[ch.ServiceID] = ch
		}
		for _, in := range []Instance{b, d} {
			if ch := byService[ServiceID(prov, in)]; ch == nil || ch.Status != api.HealthPassing {
				return false
			}
		}
		return true
	}, "tcp and http checks passing")
	for in, typ := range map[*Instance]string{&a: "ttl", &b: "tcp", &d: "http"} {
		if ch := byService[ServiceID(prov, *in)]; ch == nil || ch.Type != typ {
			t.Errorf("%s: check %+v, want a %s check", describe(*in), ch, typ)
		}
	}
	if ch := byService[ServiceID(prov, e)]; ch != nil {
		t.Errorf("instance without check has check %+v", ch)
	}

	// Applying the same state again only reads.
	proxy.ResetCounts()
	if err := s.Apply(ctx, prov, &Body{Instances: []Instance{e, d, b, a}}); err != nil {
		t.Fatal(err)
	}
	for path, n := range proxy.CountByPath() {
		if strings.Contains(path, "/register") || strings.Contains(path, "/deregister") {
			t.Errorf("idempotent Apply called %s %d times", path, n)
		}
	}

	// A smaller set, with one check changed: removed ones go, the changed
	// one is registered again, the rest is left alone.
	b.Check = &Check{Type: CheckTTL, TTL: "5m"}
	proxy.ResetCounts()
	if err := s.Apply(ctx, prov, &Body{Instances: []Instance{a, b}}); err != nil {
		t.Fatal(err)
	}
	counts := proxy.CountByPath()
	if n := counts["/v1/agent/service/register"]; n != 1 {
		t.Errorf("%d registrations, want 1 (the changed check): %v", n, counts)
	}
	if g, w := ids(servicesOf(t, c, prov)), wantIDs(prov, a, b); !slices.Equal(g, w) {
		t.Errorf("after shrinking: %v, want %v", g, w)
	}
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatal(err)
	}
	var bChecks []string
	for _, ch := range checks {
		if ch.ServiceID == ServiceID(prov, b) {
			bChecks = append(bChecks, ch.Type)
		}
	}
	if !slices.Equal(bChecks, []string{"ttl"}) {
		t.Errorf("changed instance has checks %q, want one ttl check", bChecks)
	}

	// Empty: all of this provider's go.
	if err := s.Apply(ctx, prov, &Body{}); err != nil {
		t.Fatal(err)
	}
	if got := servicesOf(t, c, prov); len(got) != 0 {
		t.Errorf("after empty Apply: %v", ids(got))
	}

	// The others were never touched.
	all, err := c.Agent().Services()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"plain-" + product, "glimpse-by-hand-" + product, "prefix-" + product, ServiceID(other, otherIns)} {
		if all[id] == nil {
			t.Errorf("foreign service %s is gone", id)
		}
	}
}

func TestApplyConsulFails(t *testing.T) {
	ctx := context.Background()
	c := consul.Client()
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	s := NewSyncer(consul.ClientAt(proxy.Addr()))
	prov, product := newName("bazooka"), newName("goku")
	ins := []Instance{
		{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000},
		{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8001},
	}

	proxy.SetFault(testconsul.Fault{Status: 500})
	if err := s.Apply(ctx, prov, &Body{Instances: ins}); err == nil {
		t.Fatal("Apply with Consul failing succeeded")
	}
	proxy.SetFault(testconsul.Fault{})
	if err := s.Apply(ctx, prov, &Body{Instances: ins}); err != nil {
		t.Fatalf("Apply again: %v", err)
	}
	if g, w := ids(servicesOf(t, c, prov)), wantIDs(prov, ins...); !slices.Equal(g, w) {
		t.Errorf("registered %v, want %v", g, w)
	}

	// A cancelled context fails before anything is done.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Apply(cctx, prov, &Body{}); err == nil {
		t.Error("Apply with a cancelled context succeeded")
	}
	if got := servicesOf(t, c, prov); len(got) != 2 {
		t.Errorf("after a cancelled Apply: %v", ids(got))
	}
	if err := s.Apply(ctx, prov, &Body{}); err != nil {
		t.Fatal(err)
	}
}

func TestApplyRejects(t *testing.T) {
	ctx := context.Background()
	c := consul.Client()
	s := NewSyncer(c)
	prov, product := newName("bazooka"), newName("goku")
	in := Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000}

	var ve *ValidationError
	if err := s.Apply(ctx, "bad/name", &Body{}); !asValidation(err, &ve) {
		t.Errorf("bad name: %v", err)
	}
	bad := in
	bad.Port = 0
	if err := s.Apply(ctx, prov, &Body{Instances: []Instance{bad}}); !asValidation(err, &ve) || ve.Field != "instances[0].port" {
		t.Errorf("bad port: %v", err)
	}

	// A service ID taken by a registration without the provider's tag is
	// not replaced.
	registerForeign(t, c, ServiceID(prov, in), product)
	err := s.Apply(ctx, prov, &Body{Instances: []Instance{in}})
	if err == nil || !strings.Contains(err.Error(), "without the tag") {
		t.Errorf("taken ID: %v", err)
	}
	all, _ := c.Agent().Services()
	if svc := all[ServiceID(prov, in)]; svc == nil || len(svc.Tags) != 0 {
		t.Errorf("foreign service was changed: %+v", svc)
	}
}

func asValidation(err error, ve **ValidationError) bool {
	e, ok := err.(*ValidationError)
	*ve = e
	return ok
}

func TestServiceID(t *testing.T) {
	in := Instance{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8000}
	id := ServiceID("bazooka", in)
	upper := Instance{Service: "HTTP", Job: "Stream", Env: "PROD", Product: "Goku", Port: 8000}
	if ServiceID("Bazooka", upper) != id {
		t.Error("ServiceID depends on case")
	}
	withCheck := in
	withCheck.Check = &Check{Type: CheckTTL, TTL: "1m"}
	if ServiceID("bazooka", withCheck) != id {
		t.Error("ServiceID depends on the check")
	}
	for _, other := range []Instance{
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8001},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8000, Address: "10.0.0.1"},
		{Service: "http", Job: "stream", Env: "dev", Product: "goku", Port: 8000},
	} {
		if ServiceID("bazooka", other) == id {
			t.Errorf("%+v has the same ID as %+v", other, in)
		}
	}
	if ServiceID("other", in) == id {
		t.Error("ServiceID does not depend on the provider")
	}
}
