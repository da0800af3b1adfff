package cache

import (
	"context"
	"sort"
	"time"
)

// Wildcard stands for any env, job or service in a Query.
const Wildcard = "*"

// Query names the addresses of one product in one zone; Env, Job and
// Service may each be Wildcard. All fields are lower case.
type Query struct {
	Zone, Product, Env, Job, Service string
}

// Matches reports whether an address matches the query.
func (q *Query) Matches(a *Address) bool {
	return a.Zone == q.Zone && a.Product == q.Product &&
		(q.Env == Wildcard || q.Env == a.Env) &&
		(q.Job == Wildcard || q.Job == a.Job) &&
		(q.Service == Wildcard || q.Service == a.Service)
}

// Result is what a Query matched, read from one snapshot.
type Result struct {
	// Index moves whenever the result may have changed: the index of the
	// product, else of the zone, else of the cache (for a zone not in it).
	Index uint64
	// Addresses matched, by name.
	Addresses []*Address
	// Zone is the snapshot read, nil when the zone is not in the cache.
	Zone *Zone
}

// Lookup returns the addresses matching q, without locks.
func (c *Cache) Lookup(q Query) Result {
	z := c.Zone(q.Zone)
	if z == nil {
		return Result{Index: c.Index()}
	}
	p := z.Products.Get(q.Product)
	if p == nil {
		return Result{Index: z.Index, Zone: z}
	}
	r := Result{Index: p.Index, Zone: z}
	if q.Env != Wildcard && q.Job != Wildcard && q.Service != Wildcard {
		if a := p.Addresses[AddrKey(q.Service, q.Job, q.Env)]; a != nil {
			r.Addresses = []*Address{a}
		}
		return r
	}
	for _, a := range p.Addresses {
		if q.Matches(a) {
			r.Addresses = append(r.Addresses, a)
		}
	}
	sort.Slice(r.Addresses, func(i, j int) bool { return r.Addresses[i].Name() < r.Addresses[j].Name() })
	return r
}

// Read is how a reader gets a zone's snapshot to answer for product
// (product "" for the zone itself): it records the read with d and, when
// the snapshot cannot answer yet (the zone or the product has no state, or
// the list lacks the product), calls before, if not nil, and lets d
// resolve it for up to wait or until ctx ends. It returns the snapshot read
// last, nil when the cache has no such zone, and what it says of product.
// A zone Consul does not list is not waited for.
func (c *Cache) Read(ctx context.Context, d Demand, zone, product string, wait time.Duration, before func()) (*Zone, ProductState) {
	d.Use(zone, product)
	z := c.Zone(zone)
	state := z.State(product)
	if state == Present || state == Failing {
		return z, state
	}
	if z == nil {
		if exists, known := c.Datacenter(zone); known && !exists {
			return nil, state
		}
	}
	if before != nil {
		before()
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	d.Resolve(ctx, zone, product)
	z = c.Zone(zone)
	return z, z.State(product)
}

// Static is the Demand of a cache fed by other means than watchers (tests,
// a server given no Demand): it watches nothing, and Resolve waits until the
// snapshot says something other than Pending of the product. Use records
// the reads when Used is set.
type Static struct {
	Cache *Cache
	// Used, if set, is called with every Use and Hold.
	Used func(zone, product string)
}

var _ Demand = Static{}

// Use implements Demand.
func (s Static) Use(zone, product string) {
	if s.Used != nil {
		s.Used(zone, product)
	}
}

// Hold implements Demand.
func (s Static) Hold(zone, product string) func() {
	s.Use(zone, product)
	return func() {}
}

// Resolve implements Demand.
func (s Static) Resolve(ctx context.Context, zone, product string) {
	for {
		changed := s.Cache.Changed()
		if s.Cache.Zone(zone).State(product) != Pending {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}
