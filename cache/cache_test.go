package cache

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func inst(env, job, service, node, addr string, port uint16, h Health) Instance {
	return Instance{
		Node: node, Address: netip.MustParseAddr(addr), Port: port, Health: h,
		Env: env, Job: job, Service: service,
	}
}

// newZone returns a cache holding one empty local zone "dc1".
func newZone(t *testing.T, b Builder) *Cache {
	t.Helper()
	c := New(b)
	if !c.AddZone("dc1", true) {
		t.Fatal("AddZone(dc1) = false on an empty cache")
	}
	return c
}

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// countingBuilder records what the cache asks it to build.
type countingBuilder struct {
	mu        sync.Mutex
	addresses []string
	nodes     []string
	zones     int
}

func (b *countingBuilder) BuildAddress(a *Address) any {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addresses = append(b.addresses, a.Name())
	return "address " + a.Name()
}

func (b *countingBuilder) BuildNode(zone string, n *Node) any {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nodes = append(b.nodes, zone+"/"+n.Name)
	return "node " + n.Name
}

func (b *countingBuilder) BuildZone(z *Zone) any {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.zones++
	return z.Index
}

func (b *countingBuilder) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.addresses, b.nodes, b.zones = nil, nil, 0
}

func TestAddDropZone(t *testing.T) {
	c := New(nil)
	if c.Zone("dc1") != nil || c.Status("dc1") != nil {
		t.Fatal("empty cache has zone dc1")
	}
	ch := c.Changed()
	if !c.AddZone("dc1", true) {
		t.Fatal("AddZone = false")
	}
	if !closed(ch) {
		t.Error("Changed not closed by AddZone")
	}
	z := c.Zone("dc1")
	if z == nil || !z.Local || z.Synced || z.Index != c.Index() || z.Index == 0 {
		t.Fatalf("new zone: %+v (cache index %d)", z, c.Index())
	}
	idx := c.Index()
	if c.AddZone("dc1", false) {
		t.Error("AddZone of an existing zone = true")
	}
	if c.Index() != idx || !c.Zone("dc1").Local {
		t.Error("AddZone of an existing zone changed it")
	}
	c.AddZone("dc2", false)
	if got := c.Zones(); len(got) != 2 || got[0].Name != "dc1" || got[1].Name != "dc2" {
		t.Errorf("Zones() = %v, want dc1, dc2", got)
	}

	c.SetSynced("dc1", true)
	if !c.Zone("dc1").Synced {
		t.Error("SetSynced did not mark the zone synced")
	}
	idx = c.Index()
	c.SetSynced("dc1", true)
	if c.Index() != idx {
		t.Error("SetSynced twice moved the index")
	}

	ch = c.Changed()
	c.DropZone("dc2")
	if c.Zone("dc2") != nil || c.Status("dc2") != nil {
		t.Error("dc2 still in the cache after DropZone")
	}
	if c.Index() <= idx || !closed(ch) {
		t.Error("DropZone did not move the index and close Changed")
	}
	idx = c.Index()
	c.DropZone("dc2")
	c.SetProduct("dc2", "goku", []Instance{inst("prod", "stream", "http", "n1", "10.0.0.1", 80, Passing)}, 0)
	if c.Index() != idx {
		t.Error("writes to a missing zone moved the index")
	}
}

func TestSetProduct(t *testing.T) {
	b := &countingBuilder{}
	c := newZone(t, b)
	httpA := inst("prod", "stream", "http", "n1", "10.0.0.1", 8080, Passing)
	httpB := inst("prod", "stream", "http", "n2", "10.0.0.2", 8080, Passing)
	grpc := inst("prod", "stream", "grpc", "n1", "10.0.0.1", 9090, Passing)
	batch := inst("staging", "batch", "worker", "n3", "10.0.0.3", 7070, Critical)

	b.reset()
	ch := c.Changed()
	if !c.SetProduct("dc1", "goku", []Instance{httpB, grpc, batch, httpA}, 2) {
		t.Fatal("first SetProduct reported no change")
	}
	if !closed(ch) {
		t.Error("Changed not closed by SetProduct")
	}
	z1 := c.Zone("dc1")
	p1 := z1.Products.Get("goku")
	if p1 == nil {
		t.Fatal("product goku missing")
	}
	idx1 := c.Index()
	if z1.Index != idx1 || p1.Index != idx1 {
		t.Errorf("zone index %d, product index %d, want the cache index %d", z1.Index, p1.Index, idx1)
	}
	if p1.Zone != "dc1" || p1.Name != "goku" || p1.Instances != 4 || p1.Ignored != 2 || len(p1.Addresses) != 3 {
		t.Errorf("product: %+v", p1)
	}
	wantPrefixes := map[string]struct{}{"prod": {}, "stream.prod": {}, "staging": {}, "batch.staging": {}}
	if len(p1.Prefixes) != len(wantPrefixes) {
		t.Errorf("prefixes %v, want %v", p1.Prefixes, wantPrefixes)
	}
	for k := range wantPrefixes {
		if _, ok := p1.Prefixes[k]; !ok {
			t.Errorf("prefix %q missing from %v", k, p1.Prefixes)
		}
	}
	h1 := p1.Addresses[AddrKey("http", "stream", "prod")]
	g1 := p1.Addresses[AddrKey("grpc", "stream", "prod")]
	w1 := p1.Addresses[AddrKey("worker", "batch", "staging")]
	if h1 == nil || g1 == nil || w1 == nil {
		t.Fatalf("addresses: %v", p1.Addresses)
	}
	if h1.Name() != "http.stream.prod.goku.dc1" || h1.Index != idx1 || h1.Zone != "dc1" || h1.Product != "goku" {
		t.Errorf("address: %+v", h1)
	}
	if !slices.Equal(h1.Instances, []Instance{httpA, httpB}) {
		t.Errorf("http instances %v, want them in node order", h1.Instances)
	}
	if h1.Derived != "address http.stream.prod.goku.dc1" {
		t.Errorf("Derived = %v, want the builder's result", h1.Derived)
	}
	if z1.Derived != idx1 {
		t.Errorf("zone Derived = %v, want it built at index %d", z1.Derived, idx1)
	}
	slices.Sort(b.addresses)
	if want := []string{"grpc.stream.prod.goku.dc1", "http.stream.prod.goku.dc1", "worker.batch.staging.goku.dc1"}; !slices.Equal(b.addresses, want) {
		t.Errorf("built addresses %v, want %v", b.addresses, want)
	}

	// The same instances again, in another order and with a duplicate:
	// nothing changes, nothing is built, nobody is woken.
	b.reset()
	ch = c.Changed()
	if c.SetProduct("dc1", "goku", []Instance{httpA, grpc, batch, httpB, httpA}, 2) {
		t.Error("SetProduct with the same instances reported a change")
	}
	if c.Index() != idx1 || c.Zone("dc1") != z1 {
		t.Error("SetProduct with the same instances published a new snapshot")
	}
	if closed(ch) {
		t.Error("SetProduct with the same instances closed Changed")
	}
	if len(b.addresses) != 0 || len(b.nodes) != 0 || b.zones != 0 {
		t.Errorf("SetProduct with the same instances built %v %v %d", b.addresses, b.nodes, b.zones)
	}

	// A health change: a new index on that address only.
	b.reset()
	httpB.Health = Critical
	if !c.SetProduct("dc1", "goku", []Instance{httpA, httpB, grpc, batch}, 2) {
		t.Fatal("health change reported no change")
	}
	idx2 := c.Index()
	if idx2 <= idx1 {
		t.Fatalf("index %d did not move past %d", idx2, idx1)
	}
	z2 := c.Zone("dc1")
	p2 := z2.Products.Get("goku")
	if z2.Index != idx2 || p2.Index != idx2 {
		t.Errorf("zone index %d, product index %d, want %d", z2.Index, p2.Index, idx2)
	}
	h2 := p2.Addresses[AddrKey("http", "stream", "prod")]
	if h2 == h1 || h2.Index != idx2 || h2.Instances[1].Health != Critical {
		t.Errorf("changed address: %+v", h2)
	}
	if g2 := p2.Addresses[AddrKey("grpc", "stream", "prod")]; g2 != g1 || g2.Index != idx1 {
		t.Errorf("unchanged address grpc was replaced (index %d, want %d)", g2.Index, idx1)
	}
	if w2 := p2.Addresses[AddrKey("worker", "batch", "staging")]; w2 != w1 || w2.Index != idx1 {
		t.Errorf("unchanged address worker was replaced (index %d, want %d)", w2.Index, idx1)
	}
	if want := []string{"http.stream.prod.goku.dc1"}; !slices.Equal(b.addresses, want) {
		t.Errorf("built addresses %v, want %v", b.addresses, want)
	}
	// The old snapshot is untouched.
	if z1.Index != idx1 || z1.Products.Get("goku") != p1 || p1.Addresses[AddrKey("http", "stream", "prod")] != h1 || h1.Instances[1].Health != Passing {
		t.Error("the previous snapshot changed")
	}

	// Only the ignored count changes: a new product snapshot, no address
	// rebuilt.
	b.reset()
	if !c.SetProduct("dc1", "goku", []Instance{httpA, httpB, grpc, batch}, 5) {
		t.Fatal("ignored change reported no change")
	}
	p3 := c.Zone("dc1").Products.Get("goku")
	if p3.Ignored != 5 || len(b.addresses) != 0 {
		t.Errorf("ignored %d, built %v", p3.Ignored, b.addresses)
	}
	for k, a := range p2.Addresses {
		if p3.Addresses[k] != a {
			t.Errorf("address %s replaced by an ignored-count change", k)
		}
	}

	// An address disappears.
	if !c.SetProduct("dc1", "goku", []Instance{httpA, httpB, batch}, 5) {
		t.Fatal("removing grpc reported no change")
	}
	p4 := c.Zone("dc1").Products.Get("goku")
	if _, ok := p4.Addresses[AddrKey("grpc", "stream", "prod")]; ok || len(p4.Addresses) != 2 || p4.Instances != 3 {
		t.Errorf("after removing grpc: %v (%d instances)", p4.Addresses, p4.Instances)
	}

	// A product with no instances stays, empty.
	if !c.SetProduct("dc1", "goku", nil, 0) {
		t.Fatal("emptying the product reported no change")
	}
	if p := c.Zone("dc1").Products.Get("goku"); p == nil || len(p.Addresses) != 0 || len(p.Prefixes) != 0 || p.Instances != 0 {
		t.Errorf("empty product: %+v", p)
	}
	if c.SetProduct("dc1", "goku", nil, 0) {
		t.Error("emptying an empty product reported a change")
	}
}

func TestSetProductLabels(t *testing.T) {
	c := newZone(t, nil)
	// Addresses are grouped by service, job and env; sharing any two is not
	// the same address.
	c.SetProduct("dc1", "goku", []Instance{
		inst("prod", "a", "x", "n1", "10.0.0.1", 1, Passing),
		inst("prod", "b", "x", "n1", "10.0.0.1", 2, Passing),
		inst("dev", "a", "x", "n1", "10.0.0.1", 3, Passing),
		inst("prod", "a", "y", "n1", "10.0.0.1", 4, Passing),
	}, 0)
	p := c.Zone("dc1").Products.Get("goku")
	for _, key := range []string{"x.a.prod", "x.b.prod", "x.a.dev", "y.a.prod"} {
		if a := p.Addresses[key]; a == nil || len(a.Instances) != 1 {
			t.Errorf("address %s: %+v", key, a)
		}
	}
	if len(p.Addresses) != 4 {
		t.Errorf("%d addresses, want 4", len(p.Addresses))
	}
}

func TestRemoveProduct(t *testing.T) {
	c := newZone(t, nil)
	c.SetProduct("dc1", "goku", []Instance{inst("prod", "stream", "http", "n1", "10.0.0.1", 80, Passing)}, 0)
	c.SetProduct("dc1", "vegeta", []Instance{inst("prod", "api", "http", "n2", "10.0.0.2", 80, Passing)}, 0)
	vegeta := c.Zone("dc1").Products.Get("vegeta")

	idx := c.Index()
	ch := c.Changed()
	c.RemoveProduct("dc1", "goku")
	z := c.Zone("dc1")
	if z.Products.Get("goku") != nil || z.Products.Len() != 1 {
		t.Error("goku still there")
	}
	if z.Products.Get("vegeta") != vegeta {
		t.Error("vegeta replaced by removing goku")
	}
	if c.Index() <= idx || z.Index != c.Index() || !closed(ch) {
		t.Error("RemoveProduct did not publish a change")
	}
	if _, ok := z.Nodes["n1"]; ok {
		t.Error("goku's node n1 still in the node table")
	}

	idx = c.Index()
	ch = c.Changed()
	c.RemoveProduct("dc1", "goku")
	c.RemoveProduct("dc9", "goku")
	if c.Index() != idx || closed(ch) {
		t.Error("removing a missing product published a change")
	}
}

func nodeNames(z *Zone) []string {
	var out []string
	for name, n := range z.Nodes {
		if n.Name != name {
			panic(fmt.Sprintf("node %q stored as %q", n.Name, name))
		}
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func TestNodes(t *testing.T) {
	b := &countingBuilder{}
	c := newZone(t, b)
	shared := inst("prod", "stream", "http", "Shared-1", "10.0.0.1", 80, Passing)
	own := inst("prod", "stream", "http", "own-1", "10.9.9.9", 80, Passing)
	own.OwnAddress = true // not the node's address: no node record
	bad := inst("prod", "stream", "http", "bad_node", "10.0.0.7", 80, Passing)
	crit := inst("prod", "stream", "http", "sick-1", "10.0.0.8", 80, Critical)

	b.reset()
	c.SetProduct("dc1", "goku", []Instance{shared, own, bad, crit}, 0)
	z := c.Zone("dc1")
	if got, want := nodeNames(z), []string{"shared-1", "sick-1"}; !slices.Equal(got, want) {
		t.Fatalf("nodes %v, want %v", got, want)
	}
	n := z.Nodes["shared-1"]
	if n.Address != netip.MustParseAddr("10.0.0.1") || n.Derived != "node shared-1" {
		t.Errorf("node: %+v", n)
	}
	slices.Sort(b.nodes)
	if want := []string{"dc1/shared-1", "dc1/sick-1"}; !slices.Equal(b.nodes, want) {
		t.Errorf("built nodes %v, want %v", b.nodes, want)
	}

	// A second product on the same node: the node is not rebuilt.
	b.reset()
	other := inst("prod", "api", "http", "shared-1", "10.0.0.1", 81, Passing)
	c.SetProduct("dc1", "vegeta", []Instance{other}, 0)
	z = c.Zone("dc1")
	if z.Nodes["shared-1"] != n {
		t.Error("shared node replaced when a second product referred to it")
	}
	if len(b.nodes) != 0 {
		t.Errorf("built nodes %v, want none", b.nodes)
	}

	// goku drops the shared node: vegeta still refers to it.
	c.SetProduct("dc1", "goku", []Instance{own, crit}, 0)
	if got, want := nodeNames(c.Zone("dc1")), []string{"shared-1", "sick-1"}; !slices.Equal(got, want) {
		t.Fatalf("after goku dropped shared-1: nodes %v, want %v", got, want)
	}
	// goku takes it back, then vegeta goes: goku still refers to it.
	c.SetProduct("dc1", "goku", []Instance{shared, crit}, 0)
	c.RemoveProduct("dc1", "vegeta")
	if got, want := nodeNames(c.Zone("dc1")), []string{"shared-1", "sick-1"}; !slices.Equal(got, want) {
		t.Fatalf("after vegeta went: nodes %v, want %v", got, want)
	}
	// Now nobody refers to shared-1.
	c.SetProduct("dc1", "goku", []Instance{crit}, 0)
	if got, want := nodeNames(c.Zone("dc1")), []string{"sick-1"}; !slices.Equal(got, want) {
		t.Fatalf("after both dropped shared-1: nodes %v, want %v", got, want)
	}
	c.RemoveProduct("dc1", "goku")
	if got := nodeNames(c.Zone("dc1")); len(got) != 0 {
		t.Fatalf("after every product went: nodes %v", got)
	}

	// A node whose address changes is rebuilt.
	c.SetProduct("dc1", "goku", []Instance{shared}, 0)
	b.reset()
	moved := shared
	moved.Address = netip.MustParseAddr("10.0.0.99")
	c.SetProduct("dc1", "goku", []Instance{moved}, 0)
	if n := c.Zone("dc1").Nodes["shared-1"]; n == nil || n.Address != moved.Address {
		t.Errorf("moved node: %+v", n)
	}
	if want := []string{"dc1/shared-1"}; !slices.Equal(b.nodes, want) {
		t.Errorf("built nodes %v, want %v", b.nodes, want)
	}
}

func TestChanged(t *testing.T) {
	c := newZone(t, nil)
	ch := c.Changed()
	if closed(ch) {
		t.Fatal("Changed closed before any change")
	}
	if c.Changed() != ch {
		t.Error("Changed returned a new channel without a change")
	}
	done := make(chan struct{})
	go func() {
		<-ch
		close(done)
	}()
	c.SetProduct("dc1", "goku", []Instance{inst("prod", "stream", "http", "n1", "10.0.0.1", 80, Passing)}, 0)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a waiter on Changed was not woken by SetProduct")
	}
	next := c.Changed()
	if next == ch || closed(next) {
		t.Error("after a change, Changed should return a new, open channel")
	}
}

func TestSetServers(t *testing.T) {
	c := newZone(t, nil)
	s := func(node, addr string) Server { return Server{Node: node, Address: netip.MustParseAddr(addr)} }
	in := []Server{s("c", "10.0.0.3"), s("a", "10.0.0.9"), s("b", "10.0.0.2")}
	c.SetServers("dc1", in)
	want := []Server{s("a", "10.0.0.9"), s("b", "10.0.0.2"), s("c", "10.0.0.3")}
	if got := c.Zone("dc1").Servers; !slices.Equal(got, want) {
		t.Fatalf("servers %v, want %v (by node name)", got, want)
	}
	if in[0].Node != "c" {
		t.Error("SetServers sorted its argument")
	}

	idx := c.Index()
	c.SetServers("dc1", []Server{s("b", "10.0.0.2"), s("c", "10.0.0.3"), s("a", "10.0.0.9")})
	if c.Index() != idx {
		t.Error("the same servers in another order moved the index")
	}

	c.SetServers("dc1", []Server{s("b", "10.0.0.2"), s("a", "10.0.0.1")})
	if c.Index() <= idx {
		t.Error("a server change did not move the index")
	}
	if got, want := c.Zone("dc1").Servers, []Server{s("a", "10.0.0.1"), s("b", "10.0.0.2")}; !slices.Equal(got, want) {
		t.Errorf("servers %v, want %v", got, want)
	}
}

func TestDatacenters(t *testing.T) {
	c := New(nil)
	if exists, known := c.Datacenter("dc1"); exists || known {
		t.Errorf("Datacenter before SetDatacenters = %v, %v; want false, false", exists, known)
	}
	c.SetDatacenters([]string{"DC1", "dc2"})
	for _, tt := range []struct {
		name   string
		exists bool
	}{{"dc1", true}, {"dc2", true}, {"dc3", false}} {
		if exists, known := c.Datacenter(tt.name); exists != tt.exists || !known {
			t.Errorf("Datacenter(%q) = %v, %v; want %v, true", tt.name, exists, known, tt.exists)
		}
	}
}

func TestStatusSecondsStale(t *testing.T) {
	s := newStatus()
	created := s.created
	if s.Stale() || s.SecondsStale(created.Add(time.Hour)) != 0 {
		t.Error("a fresh status is stale")
	}
	if !s.LastContact().IsZero() {
		t.Error("LastContact before any contact is not zero")
	}

	// Failing before any contact: stale since the zone was added.
	s.Failing(1)
	if !s.Stale() {
		t.Fatal("not stale with a failing watcher")
	}
	if got := s.SecondsStale(created.Add(90 * time.Second)); got != 90 {
		t.Errorf("SecondsStale without contact = %v, want 90", got)
	}

	// Contact, then failing: stale since the contact.
	t0 := created.Add(time.Minute)
	s.Contact(t0)
	if !s.LastContact().Equal(t0) {
		t.Errorf("LastContact = %v, want %v", s.LastContact(), t0)
	}
	if got := s.SecondsStale(t0.Add(2500 * time.Millisecond)); got != 2.5 {
		t.Errorf("SecondsStale = %v, want 2.5", got)
	}

	// Two failing watchers; one recovers: still stale.
	s.Failing(1)
	s.Failing(-1)
	if !s.Stale() {
		t.Error("not stale while one watcher still fails")
	}
	s.Failing(-1)
	if s.Stale() || s.SecondsStale(t0.Add(time.Hour)) != 0 {
		t.Error("stale after every watcher recovered")
	}
}

func TestLowerAndValidLabel(t *testing.T) {
	for in, want := range map[string]string{"": "", "abc": "abc", "ABC": "abc", "Web-1": "web-1", "é": "é"} {
		if got := Lower(in); got != want {
			t.Errorf("Lower(%q) = %q, want %q", in, got, want)
		}
	}
	for s, want := range map[string]bool{
		"a": true, "A-1": true, "0": true, "": false,
		"a_b": false, "a.b": false, "a b": false, "é": false,
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":  true,  // 63
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": false, // 64
	} {
		if got := ValidLabel(s); got != want {
			t.Errorf("ValidLabel(%q) = %v, want %v", s, got, want)
		}
	}
}

// TestConcurrentReaders runs readers that walk the current snapshot in a
// loop while a writer replaces a product; run with -race. Readers must only
// ever see consistent snapshots.
func TestConcurrentReaders(t *testing.T) {
	c := newZone(t, &countingBuilder{})
	const rounds = 300
	var stop atomic.Bool
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for !stop.Load() {
				z := c.Zone("dc1")
				if z.Index < last {
					errs <- fmt.Errorf("zone index went back from %d to %d", last, z.Index)
					return
				}
				last = z.Index
				for _, p := range z.Products.All() {
					n := 0
					for key, a := range p.Addresses {
						if key != AddrKey(a.Service, a.Job, a.Env) || a.Index > z.Index || a.Derived == nil {
							errs <- fmt.Errorf("inconsistent address %s at zone index %d: %+v", key, z.Index, a)
							return
						}
						for i := range a.Instances {
							_ = a.Instances[i].Health
						}
						n += len(a.Instances)
					}
					if n != p.Instances {
						errs <- fmt.Errorf("product %s: %d instances in addresses, %d counted", p.Name, n, p.Instances)
						return
					}
				}
				for _, n := range z.Nodes {
					_ = n.Address
				}
				_ = c.Status("dc1").SecondsStale(time.Now())
			}
		}()
	}
	for i := 0; i < rounds; i++ {
		var in []Instance
		for j := 0; j <= i%7; j++ {
			h := Passing
			if (i+j)%3 == 0 {
				h = Critical
			}
			in = append(in, inst("prod", "stream", fmt.Sprintf("s%d", j%3), fmt.Sprintf("n%d", j), fmt.Sprintf("10.0.0.%d", j+1), 80, h))
		}
		c.SetProduct("dc1", fmt.Sprintf("p%d", i%3), in, i%2)
		if i%50 == 0 {
			c.SetServers("dc1", []Server{{Node: "s", Address: netip.MustParseAddr(fmt.Sprintf("10.1.0.%d", i%200+1))}})
		}
		if i%97 == 0 {
			c.RemoveProduct("dc1", "p0")
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// An empty product list is a list: Known is set, and the zone can say a
// product is not listed.
func TestSetKnownEmpty(t *testing.T) {
	c := New(nil)
	c.AddZone("dc1", true)
	if c.Zone("dc1").Known != nil {
		t.Fatal("Known set before any list")
	}
	c.SetKnown("dc1", nil)
	c.SetSynced("dc1", true)
	if z := c.Zone("dc1"); z.Known == nil || z.State("goku") != Unlisted {
		t.Errorf("after an empty list: Known %v, state %d", z.Known, z.State("goku"))
	}
	idx := c.Index()
	c.SetKnown("dc1", []string{})
	if c.Index() != idx {
		t.Error("the same empty list again moved the index")
	}
}
