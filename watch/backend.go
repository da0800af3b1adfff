package watch

import (
	"context"
	"time"

	"github.com/rugby110/glimpse/cache"
)

// Backend is the source of the topology: Consul in glimpse-agent (see
// Consul), an in-memory one in the unit tests of the on-demand and failure
// logic. Its rules:
//
//   - Every read is one request. With Query.Index 0 it answers at once;
//     otherwise it may block until the result's index moves past Index or
//     Query.Wait ends (a blocking query), and may return with nothing
//     changed.
//   - It returns the result's index in Meta; an index lower than the one
//     asked with means the backend's history was reset.
//   - ctx bounds the request; when it ends the read returns its error.
//   - Errors are returned as they are; the Manager retries with back-off.
//     ErrHidden, a 403 (Denied) and a 429 (Throttled) are told apart in
//     logs and /v1/zones.
type Backend interface {
	// Datacenters lists the zones the backend knows. It does not block.
	Datacenters(ctx context.Context) ([]string, error)
	// Products lists the names of the zone's glimpse products, in lower
	// case.
	Products(ctx context.Context, zone string, q Query) ([]string, Meta, error)
	// Product reads every instance of one product of the zone; ignored
	// counts those without the glimpse tags or an IP address.
	Product(ctx context.Context, zone, product string, q Query) (in []cache.Instance, ignored int, _ Meta, _ error)
	// Servers reads the zone's Consul servers.
	Servers(ctx context.Context, zone string, q Query) ([]cache.Server, Meta, error)
	// Checks reads, in one read, a version of the checks in state health
	// (cache.Warning or cache.Critical) of each of products: it changes
	// whenever such a check of the product is added, changed or removed,
	// or turns to or from that state. A product without such checks is
	// left out. A nil products means all of them.
	Checks(ctx context.Context, zone string, health cache.Health, products []string, q Query) (map[string]CheckVersion, Meta, error)
}

// CheckVersion is the version of a product's checks in one state: the
// highest index at which one of them changed, and how many there are.
type CheckVersion struct {
	Index uint64
	Count int
}

// Query is what a read asks for: the index already seen (0: answer at once)
// and how long to wait for a newer one.
type Query struct {
	Index uint64
	Wait  time.Duration
}

// Meta is what a read says about its result.
type Meta struct {
	// Index is the result's index.
	Index uint64
	// Fresh is false for a result a server without a leader gave: it may
	// be stale.
	Fresh bool
	// Filtered is true when the backend left out results the agent's
	// credentials may not see.
	Filtered bool
}
