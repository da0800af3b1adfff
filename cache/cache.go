package cache

import (
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Cache is the topology of every watched zone. Writers (the watchers) are
// serialised by a mutex; readers load immutable snapshots through atomic
// pointers and never block.
type Cache struct {
	builder Builder

	mu    sync.Mutex                            // serialises writers
	zones atomic.Pointer[map[string]*zoneEntry] // copy on write
	index atomic.Uint64
	// changed is closed and replaced on every change.
	changed atomic.Pointer[chan struct{}]
	dcs     atomic.Pointer[map[string]struct{}]
	hub     *Hub
}

// HistorySize is how many recent address changes the cache keeps for
// subscribers that resume from an index.
const HistorySize = 16384

// zoneEntry holds one zone's current snapshot, its live status and the
// writer-side bookkeeping needed to update the snapshot incrementally.
type zoneEntry struct {
	snap   atomic.Pointer[Zone]
	status *Status

	// Writer side, guarded by Cache.mu: which nodes each product refers
	// to, and how many products refer to each node.
	productNodes map[string]map[string]Node // product → node name → node
	nodeRefs     map[string]int
}

// Option configures a Cache.
type Option func(*options)

type options struct{ history int }

// WithHistory sets how many recent address changes the hub keeps for
// resuming subscribers (default HistorySize).
func WithHistory(n int) Option { return func(o *options) { o.history = n } }

// New returns an empty cache. b may be nil.
func New(b Builder, opts ...Option) *Cache {
	o := options{history: HistorySize}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Cache{builder: b}
	c.hub = newHub(c, o.history)
	zones := map[string]*zoneEntry{}
	c.zones.Store(&zones)
	ch := make(chan struct{})
	c.changed.Store(&ch)
	return c
}

// Hub returns the cache's subscription hub.
func (c *Cache) Hub() *Hub { return c.hub }

// Index returns the cache index: it moves on every change of any zone.
func (c *Cache) Index() uint64 { return c.index.Load() }

// Changed returns a channel that is closed at the next change.
func (c *Cache) Changed() <-chan struct{} { return *c.changed.Load() }

// Barrier returns once every change whose snapshot a reader has already
// seen has also been published to the hub: a snapshot is stored, then its
// changes published, both under the cache's write lock.
func (c *Cache) Barrier() {
	c.mu.Lock()
	c.mu.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// Zone returns the current snapshot of a zone, or nil when the zone is not
// in the cache.
func (c *Cache) Zone(name string) *Zone {
	e := (*c.zones.Load())[name]
	if e == nil {
		return nil
	}
	return e.snap.Load()
}

// Status returns the live status of a zone, or nil when the zone is not in
// the cache.
func (c *Cache) Status(name string) *Status {
	e := (*c.zones.Load())[name]
	if e == nil {
		return nil
	}
	return e.status
}

// Zones returns the snapshots of every zone in the cache, by name.
func (c *Cache) Zones() []*Zone {
	zones := *c.zones.Load()
	out := make([]*Zone, 0, len(zones))
	for _, e := range zones {
		out = append(out, e.snap.Load())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetDatacenters records the datacenters Consul knows, so readers can tell an
// unknown zone from one that is not watched yet.
func (c *Cache) SetDatacenters(names []string) {
	m := make(map[string]struct{}, len(names))
	for _, n := range names {
		m[Lower(n)] = struct{}{}
	}
	c.dcs.Store(&m)
}

// Datacenters returns the datacenters Consul knows, sorted; nil while the
// list is not known yet.
func (c *Cache) Datacenters() []string {
	m := c.dcs.Load()
	if m == nil {
		return nil
	}
	out := make([]string, 0, len(*m))
	for n := range *m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Datacenter reports whether Consul knows the datacenter, and whether the
// list of datacenters is known at all.
func (c *Cache) Datacenter(name string) (exists, known bool) {
	m := c.dcs.Load()
	if m == nil {
		return false, false
	}
	_, exists = (*m)[name]
	return exists, true
}

// AddZone adds an empty, unsynced zone unless it is already there. It
// reports whether it added one.
func (c *Cache) AddZone(name string, local bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.zones.Load()
	if _, ok := old[name]; ok {
		return false
	}
	e := &zoneEntry{
		status:       newStatus(),
		productNodes: map[string]map[string]Node{},
		nodeRefs:     map[string]int{},
	}
	z := &Zone{Name: name, Local: local, Nodes: map[string]*Node{}}
	z.Index = c.index.Add(1)
	c.derive(z)
	e.snap.Store(z)
	zones := make(map[string]*zoneEntry, len(old)+1)
	for k, v := range old {
		zones[k] = v
	}
	zones[name] = e
	c.zones.Store(&zones)
	c.notify()
	return true
}

// DropZone removes a zone and everything in it.
func (c *Cache) DropZone(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.zones.Load()
	if _, ok := old[name]; !ok {
		return
	}
	zones := make(map[string]*zoneEntry, len(old))
	for k, v := range old {
		if k != name {
			zones[k] = v
		}
	}
	idx := c.index.Add(1)
	c.zones.Store(&zones)
	var gone []*Address
	now := time.Now()
	for _, p := range old[name].snap.Load().Products.All() {
		for _, a := range p.Addresses {
			gone = append(gone, removed(a, idx, now))
		}
	}
	c.hub.publish(gone)
	c.notify()
}

// SetSynced marks a zone as synced (its product list and servers read) and,
// with ready, as ready (its pinned products settled too).
func (c *Cache) SetSynced(zone string, ready bool) {
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		if z.Synced && z.Ready == ready {
			return nil
		}
		z.Synced, z.Ready = true, ready
		return []*Address{}
	})
}

// SetKnown replaces the names of the zone's glimpse products, as Consul
// lists them. Once set, Known is never nil: an empty list is a list.
func (c *Cache) SetKnown(zone string, names []string) {
	known := make(map[string]struct{}, len(names))
	for _, n := range names {
		known[n] = struct{}{}
	}
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		if z.Known != nil && len(known) == len(z.Known) {
			same := true
			for n := range known {
				if _, ok := z.Known[n]; !ok {
					same = false
					break
				}
			}
			if same {
				return nil
			}
		}
		z.Known = known
		return []*Address{}
	})
}

// SetProblem records why a product's last read failed; msg "" clears it.
func (c *Cache) SetProblem(zone, product, msg string) {
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		if old, ok := z.Problems[product]; ok == (msg != "") && old == msg {
			return nil
		}
		z.Problems = copyMap(z.Problems)
		if msg == "" {
			delete(z.Problems, product)
		} else {
			z.Problems[product] = msg
		}
		return []*Address{}
	})
}

// SetServers replaces the Consul servers of a zone.
func (c *Cache) SetServers(zone string, servers []Server) {
	servers = slices.Clone(servers)
	sort.Slice(servers, func(i, j int) bool {
		if servers[i].Node != servers[j].Node {
			return servers[i].Node < servers[j].Node
		}
		return servers[i].Address.Less(servers[j].Address)
	})
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		if slices.Equal(z.Servers, servers) {
			return nil
		}
		z.Servers = servers
		return []*Address{}
	})
}

// SetProduct replaces every instance of a product in a zone with the given
// ones (labels in lower case, as produced by the watchers); ignored counts
// the instances Consul returned without the glimpse tags. It reports whether
// anything a reader can see changed.
func (c *Cache) SetProduct(zone, product string, instances []Instance, ignored int) bool {
	return c.SetProducts(zone, []ProductUpdate{{Product: product, Instances: instances, Ignored: ignored}}) > 0
}

// ProductUpdate is the new state of one product, for SetProducts.
type ProductUpdate struct {
	Product   string
	Instances []Instance
	Ignored   int
}

// SetProducts is SetProduct for several products at once, in one new
// snapshot of the zone (one copy of its product and node tables, however
// many products): a zone's first sync, where thousands of products arrive
// together, costs time linear in its size. It returns how many products
// changed.
func (c *Cache) SetProducts(zone string, ups []ProductUpdate) int {
	changed := 0
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		var all []*Address
		var products *productsBuilder
		nodesCopied, cleared := false, false
		now := time.Now()
		for _, u := range ups {
			if _, ok := z.Problems[u.Product]; ok {
				// A result is the end of the product's problem.
				if !cleared {
					z.Problems = copyMap(z.Problems)
					cleared = true
				}
				delete(z.Problems, u.Product)
			}
			old := z.Products.Get(u.Product)
			p, addrs := c.buildProduct(zone, u.Product, u.Instances, u.Ignored, old)
			if p == nil {
				continue
			}
			p.Index = idx
			for _, a := range addrs {
				a.Index, a.Changed = idx, now
				if c.builder != nil {
					a.Derived = c.builder.BuildAddress(a)
				}
			}
			if old != nil {
				for key, a := range old.Addresses {
					if p.Addresses[key] == nil {
						addrs = append(addrs, removed(a, idx, now))
					}
				}
			}
			if products == nil {
				products = newProductsBuilder(z.Products)
			}
			products.set(u.Product, p)
			z.Products = products.done()
			c.updateNodes(e, z, u.Product, u.Instances, &nodesCopied)
			changed++
			all = append(all, addrs...)
		}
		if changed == 0 && !cleared {
			return nil
		}
		if all == nil {
			return []*Address{} // only ignored counts or problems changed
		}
		return all
	})
	return changed
}

// RemoveProduct removes a product from a zone.
func (c *Cache) RemoveProduct(zone, product string) {
	c.update(zone, func(e *zoneEntry, z *Zone, idx uint64) []*Address {
		_, failing := z.Problems[product]
		if failing {
			z.Problems = copyMap(z.Problems)
			delete(z.Problems, product)
		}
		p := z.Products.Get(product)
		if p == nil {
			if failing {
				return []*Address{}
			}
			return nil
		}
		b := newProductsBuilder(z.Products)
		b.remove(product)
		z.Products = b.done()
		c.updateNodes(e, z, product, nil, new(bool))
		gone := []*Address{}
		now := time.Now()
		for _, a := range p.Addresses {
			gone = append(gone, removed(a, idx, now))
		}
		return gone
	})
}

// update applies fn to a copy of a zone's snapshot and publishes it when fn
// reports a change (a non-nil slice: the addresses that changed, for the
// hub), with idx, the index fn is given, as the new cache index.
func (c *Cache) update(zone string, fn func(e *zoneEntry, z *Zone, idx uint64) []*Address) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := (*c.zones.Load())[zone]
	if e == nil {
		return
	}
	z := *e.snap.Load()
	idx := c.index.Load() + 1
	changes := fn(e, &z, idx)
	if changes == nil {
		return
	}
	c.index.Store(idx)
	z.Index = idx
	c.derive(&z)
	e.snap.Store(&z)
	c.hub.publish(changes)
	c.notify()
}

func (c *Cache) derive(z *Zone) {
	if c.builder != nil {
		z.Derived = c.builder.BuildZone(z)
	}
}

// notify wakes everyone waiting on Changed. Called with c.mu held.
func (c *Cache) notify() {
	ch := make(chan struct{})
	old := c.changed.Swap(&ch)
	close(*old)
}

// buildProduct makes the new snapshot of a product, reusing the addresses
// of old that did not change. It returns nil when nothing changed, and the
// addresses that are new or changed.
func (c *Cache) buildProduct(zone, name string, in []Instance, ignored int, old *Product) (*Product, []*Address) {
	sorted := slices.Clone(in)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].less(&sorted[j]) })
	sorted = slices.Compact(sorted)

	p := &Product{
		Zone: zone, Name: name,
		Addresses: map[string]*Address{},
		Prefixes:  map[string]struct{}{},
		Ignored:   ignored,
		Instances: len(sorted),
	}
	var fresh []*Address
	for i := 0; i < len(sorted); {
		j := i + 1
		for j < len(sorted) && sorted[j].Env == sorted[i].Env && sorted[j].Job == sorted[i].Job && sorted[j].Service == sorted[i].Service {
			j++
		}
		first := &sorted[i]
		key := AddrKey(first.Service, first.Job, first.Env)
		group := sorted[i:j:j]
		if prev := lookup(old, key); prev != nil && slices.Equal(prev.Instances, group) {
			p.Addresses[key] = prev
		} else {
			// The address gets its own copy: an unchanged address outlives
			// later snapshots of its product, and must not pin their arrays.
			a := &Address{Zone: zone, Product: name, Env: first.Env, Job: first.Job, Service: first.Service, Instances: slices.Clone(group)}
			p.Addresses[key] = a
			fresh = append(fresh, a)
		}
		p.Prefixes[first.Env] = struct{}{}
		p.Prefixes[first.Job+"."+first.Env] = struct{}{}
		i = j
	}
	if old != nil && len(fresh) == 0 && len(old.Addresses) == len(p.Addresses) && old.Ignored == ignored {
		return nil, nil
	}
	return p, fresh
}

func lookup(p *Product, key string) *Address {
	if p == nil {
		return nil
	}
	return p.Addresses[key]
}

// updateNodes keeps a zone's node table in step with the instances of one
// product: nodes are counted by the products that refer to them, so a node
// leaves the table only when no product has an instance on it. *copied
// tells whether z.Nodes is already this update's own copy.
func (c *Cache) updateNodes(e *zoneEntry, z *Zone, product string, instances []Instance, copied *bool) {
	next := map[string]Node{}
	for i := range instances {
		in := &instances[i]
		if in.OwnAddress || !ValidLabel(in.Node) {
			continue
		}
		name := Lower(in.Node)
		next[name] = Node{Name: name, Address: in.Address}
	}
	prev := e.productNodes[product]
	if mapsEqual(prev, next) {
		return
	}
	if len(next) == 0 {
		delete(e.productNodes, product)
	} else {
		e.productNodes[product] = next
	}
	nodes := z.Nodes
	if !*copied {
		nodes = copyMap(z.Nodes)
		*copied = true
	}
	for name := range prev {
		if _, ok := next[name]; !ok {
			if e.nodeRefs[name]--; e.nodeRefs[name] == 0 {
				delete(e.nodeRefs, name)
				delete(nodes, name)
			}
		}
	}
	for name, n := range next {
		if _, ok := prev[name]; !ok {
			e.nodeRefs[name]++
		}
		if cur := nodes[name]; cur == nil || cur.Address != n.Address {
			n := n
			if c.builder != nil {
				n.Derived = c.builder.BuildNode(z.Name, &n)
			}
			nodes[name] = &n
		}
	}
	z.Nodes = nodes
}

func mapsEqual(a, b map[string]Node) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w.Address != v.Address {
			return false
		}
	}
	return true
}

func copyMap[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Status is the live sync state of a zone, updated by its watchers on every
// Consul response without replacing the zone's snapshot.
type Status struct {
	created     time.Time
	lastContact atomic.Int64 // unix nanoseconds of the last fresh result
	failing     atomic.Int32 // watchers whose last result was an error or leaderless
	problem     atomic.Pointer[string]
}

func newStatus() *Status {
	return &Status{created: time.Now()}
}

// Contact records a fresh result from Consul (a known leader) at t.
func (s *Status) Contact(t time.Time) { s.lastContact.Store(t.UnixNano()) }

// Failing adds delta (+1 or -1) to the number of the zone's watchers whose
// last request failed or came from a server without a leader.
func (s *Status) Failing(delta int32) { s.failing.Add(delta) }

// LastContact returns the time of the last fresh result, zero if none.
func (s *Status) LastContact() time.Time {
	n := s.lastContact.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// SetProblem records why a watcher's last request failed.
func (s *Status) SetProblem(msg string) { s.problem.Store(&msg) }

// Problem returns why the zone is stale (the last failure a watcher
// recorded), or "" while it is not.
func (s *Status) Problem() string {
	if !s.Stale() {
		return ""
	}
	if p := s.problem.Load(); p != nil {
		return *p
	}
	return ""
}

// Stale reports whether some watcher of the zone is out of contact.
func (s *Status) Stale() bool { return s.failing.Load() > 0 }

// SecondsStale is 0 while every watcher of the zone is in contact with
// Consul, and otherwise the seconds since the last fresh result.
func (s *Status) SecondsStale(now time.Time) float64 {
	if !s.Stale() {
		return 0
	}
	last := s.LastContact()
	if last.IsZero() {
		last = s.created
	}
	return now.Sub(last).Seconds()
}
