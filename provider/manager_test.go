package provider

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"glimpse/internal/testconsul"
)

func TestProviderManagerRetriesUntilItHolds(t *testing.T) {
	ctx := context.Background()
	c := consul.Client()
	proxy := testconsul.NewCountingProxy(t, consul.HTTPAddr())
	store, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewManager(store, NewSyncer(consul.ClientAt(proxy.Addr())), ManagerOptions{ReconcileEvery: time.Hour, Registerer: reg})
	t.Cleanup(m.Close)
	prov, product := newName("mgr"), newName("goku")
	ins := []Instance{
		{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000},
		{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8001},
	}

	if _, err := m.Get(prov); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
	proxy.SetFault(testconsul.Fault{Status: 500})
	if err := m.Put(ctx, prov, &Body{Instances: ins}); !errors.Is(err, ErrConsul) {
		t.Fatalf("Put with Consul failing: %v, want ErrConsul", err)
	}
	if b, err := m.Get(prov); err != nil || len(b.Instances) != 2 {
		t.Fatalf("recorded state after a failed apply: %v %v", b, err)
	}
	proxy.SetFault(testconsul.Fault{})
	testconsul.WaitFor(t, 10*time.Second, func() bool {
		return slices.Equal(ids(servicesOf(t, c, prov)), wantIDs(prov, ins...))
	}, "background retry never applied the recorded state")
	if v := gauge(t, reg, "glimpse_provider_syncs_total", "error"); v < 1 {
		t.Errorf("error syncs %v", v)
	}
	if v := gauge(t, reg, "glimpse_provider_desired_instances", prov); v != 2 {
		t.Errorf("desired instances %v, want 2", v)
	}

	// The retry that made the state hold had to register: drift repaired.
	before := gauge(t, reg, "glimpse_provider_drift_repaired_total", "")
	if before != 1 {
		t.Errorf("drift repaired by the retry %v, want 1", before)
	}
	// Drift: one deregistered behind the manager's back comes back.
	if err := c.Agent().ServiceDeregister(ServiceID(prov, ins[0])); err != nil {
		t.Fatal(err)
	}
	m.Reconcile(ctx)
	if g, w := ids(servicesOf(t, c, prov)), wantIDs(prov, ins...); !slices.Equal(g, w) {
		t.Errorf("after reconcile %v, want %v", g, w)
	}
	if v := gauge(t, reg, "glimpse_provider_drift_repaired_total", ""); v != before+1 {
		t.Errorf("drift repaired %v, want %v", v, before+1)
	}
	m.Reconcile(ctx) // nothing to repair
	if v := gauge(t, reg, "glimpse_provider_drift_repaired_total", ""); v != before+1 {
		t.Errorf("drift repaired after a clean reconcile %v, want %v", v, before+1)
	}

	if err := m.Delete(ctx, prov); err != nil {
		t.Fatal(err)
	}
	if got := servicesOf(t, c, prov); len(got) != 0 {
		t.Errorf("after Delete: %v", ids(got))
	}
	if err := m.Delete(ctx, prov); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v", err)
	}
	if err := m.Put(ctx, "bad_name", &Body{}); err == nil {
		t.Error("Put with a bad name succeeded")
	}
}

// gauge returns the value of the metric name whose one label (if any) is label.
func gauge(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if l := m.GetLabel(); label != "" && (len(l) != 1 || l[0].GetValue() != label) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}
