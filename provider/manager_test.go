package provider

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rugby110/glimpse/internal/testconsul"
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
	if err := m.Put(ctx, prov, &Body{Instances: ins}, root); !errors.Is(err, ErrConsul) {
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

	if err := m.Delete(ctx, prov, root); err != nil {
		t.Fatal(err)
	}
	if got := servicesOf(t, c, prov); len(got) != 0 {
		t.Errorf("after Delete: %v", ids(got))
	}
	if err := m.Delete(ctx, prov, root); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v", err)
	}
	if err := m.Put(ctx, "bad_name", &Body{}, root); err == nil {
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

// root is the identity tests write as unless they test ownership.
var root = UID(0)

// TestOwnership: a provider's state can be changed or deleted only by the
// identity that wrote it, or root; a record from before owners were kept
// only by root.
func TestOwnership(t *testing.T) {
	ctx := context.Background()
	store, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(store, NewSyncer(consul.Client()), ManagerOptions{ReconcileEvery: time.Hour})
	t.Cleanup(m.Close)
	prov, product := newName("own"), newName("goku")
	one := &Body{Instances: []Instance{{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000}}}
	alice, bob, tok := UID(1000), UID(1001), Identity{Owner: "token:ci"}

	if err := m.Put(ctx, prov, one, alice); err != nil {
		t.Fatal(err)
	}
	if r, err := store.LoadRecord(prov); err != nil || r.Owner != "uid:1000" {
		t.Fatalf("record owner %q (%v), want uid:1000", r.Owner, err)
	}
	for _, who := range []Identity{bob, tok} {
		if err := m.Put(ctx, prov, &Body{Instances: []Instance{}}, who); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Put by %s: %v, want ErrNotOwner", who.Owner, err)
		}
		if err := m.Delete(ctx, prov, who); !errors.Is(err, ErrNotOwner) {
			t.Errorf("Delete by %s: %v, want ErrNotOwner", who.Owner, err)
		}
	}
	if b, err := m.Get(prov); err != nil || len(b.Instances) != 1 {
		t.Fatalf("state after refused writes: %v %v", b, err)
	}
	if err := m.Put(ctx, prov, one, alice); err != nil {
		t.Errorf("Put by the owner: %v", err)
	}
	if err := m.Delete(ctx, prov, root); err != nil {
		t.Errorf("Delete by root: %v", err)
	}
	// Gone: the name is anyone's again.
	if err := m.Put(ctx, prov, one, bob); err != nil {
		t.Errorf("Put by another after the delete: %v", err)
	}
	if err := m.Delete(ctx, prov, bob); err != nil {
		t.Errorf("Delete by its new owner: %v", err)
	}

	// A record kept before owners were: root's alone.
	legacy := newName("legacy")
	if err := store.SaveRecord(legacy, Record{Body: one, Source: SourceHTTP}); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, legacy, one, alice); !errors.Is(err, ErrNotOwner) {
		t.Errorf("Put of a record without owner by a user: %v, want ErrNotOwner", err)
	}
	if err := m.Delete(ctx, legacy, root); err != nil {
		t.Errorf("Delete of a record without owner by root: %v", err)
	}
}

// TestUnreadableRecord: a record that cannot be read blocks nobody for
// good: root deletes it (the file kept aside, the registrations removed)
// or replaces it; others are told only root may.
func TestUnreadableRecord(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := NewManager(store, NewSyncer(consul.Client()), ManagerOptions{ReconcileEvery: time.Hour})
	t.Cleanup(m.Close)
	prov, product := newName("broken"), newName("goku")
	one := &Body{Instances: []Instance{{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000}}}
	if err := m.Put(ctx, prov, one, UID(1000)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, prov+".json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, prov, UID(1000)); !errors.Is(err, ErrNotOwner) || !strings.Contains(err.Error(), "only root") {
		t.Errorf("a user's Delete of an unreadable record: %v", err)
	}
	if err := m.Delete(ctx, prov, root); err != nil {
		t.Fatalf("root's Delete of an unreadable record: %v", err)
	}
	if got := servicesOf(t, consul.Client(), prov); len(got) != 0 {
		t.Errorf("registrations left: %v", ids(got))
	}
	aside, _ := filepath.Glob(filepath.Join(dir, prov+".json.unreadable-*"))
	if len(aside) != 1 {
		t.Errorf("the unreadable record was not kept aside: %v", aside)
	}
	// Replaced by root.
	if err := os.WriteFile(filepath.Join(dir, prov+".json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := m.Put(ctx, prov, one, root); err != nil {
		t.Fatalf("root's Put over an unreadable record: %v", err)
	}
	if b, err := m.Get(prov); err != nil || len(b.Instances) != 1 {
		t.Errorf("after root's Put: %v %v", b, err)
	}
	m.Delete(ctx, prov, root)
}

// TestStoreModesAndLeftovers: records are the agent's alone, and the
// temporary files of writes a crash cut short are gone at the next start.
func TestStoreModesAndLeftovers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "providers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(dir, ".bazooka.json.tmp-12345")
	if err := os.WriteFile(left, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := NewStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a crashed write's temporary file is still there: %v", err)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("store directory mode %v, want 0700", st.Mode().Perm())
	}
	if err := s.SaveRecord("bazooka", Record{Body: &Body{Instances: []Instance{}}, Source: SourceHTTP, Owner: "uid:0"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "bazooka.json")); st.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", st.Mode().Perm())
	}
}
