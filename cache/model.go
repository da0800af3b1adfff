// Package cache holds glimpse's in-memory, zone-scoped topology.
//
// The watchers (package watch) write whole per-product results into the
// cache; readers (DNS, HTTP) read immutable snapshots without taking locks.
// Every write that changes what a reader could see moves the cache index,
// a monotonic counter shared by all zones, and records it on the zone, the
// product and each address that changed.
package cache

import (
	"context"
	"net/netip"
	"strings"
	"time"
)

// Health is the aggregated Consul health of an instance: the worst of its
// node and service checks.
type Health uint8

// Health values, from best to worst.
const (
	Passing Health = iota
	Warning
	Critical
)

// String returns Consul's name for the health value.
func (h Health) String() string {
	switch h {
	case Passing:
		return "passing"
	case Warning:
		return "warning"
	default:
		return "critical"
	}
}

// Instance is one Consul service instance that carries the glimpse tags.
type Instance struct {
	Node string // Consul node name, as registered
	// Address is the service's own address when it has one, else the node's.
	Address netip.Addr
	// OwnAddress is true when the service registered an address of its own.
	OwnAddress bool
	Port       uint16
	Health     Health
	Provider   string // the glimpse:provider tag, if any
	Env        string
	Job        string
	Service    string
}

// less orders instances by env, job, service, node, address and port, the
// order in which snapshots keep them.
func (a *Instance) less(b *Instance) bool {
	if a.Env != b.Env {
		return a.Env < b.Env
	}
	if a.Job != b.Job {
		return a.Job < b.Job
	}
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	if a.Node != b.Node {
		return a.Node < b.Node
	}
	if c := a.Address.Compare(b.Address); c != 0 {
		return c < 0
	}
	if a.Port != b.Port {
		return a.Port < b.Port
	}
	// The rest only breaks ties, so the order is total and a snapshot does
	// not depend on the order Consul returned the instances in.
	if a.Health != b.Health {
		return a.Health < b.Health
	}
	if a.OwnAddress != b.OwnAddress {
		return !a.OwnAddress
	}
	return a.Provider < b.Provider
}

// AddrKey is the key of an address inside its product: "service.job.env".
func AddrKey(service, job, env string) string {
	return service + "." + job + "." + env
}

// Address is the immutable state of one address,
// <service>.<job>.<env>.<product>.<zone>.
type Address struct {
	Zone, Product, Env, Job, Service string
	// Index is the cache index at which this address last changed.
	Index uint64
	// Changed is when the cache took that change from a watcher.
	Changed time.Time
	// Instances are all instances of the address, whatever their health,
	// in snapshot order.
	Instances []Instance
	// Derived is what the cache's Builder made of this address (for DNS,
	// its packed answers); nil without a Builder.
	Derived any
}

// Name returns the address in its dotted form.
func (a *Address) Name() string {
	return a.Service + "." + a.Job + "." + a.Env + "." + a.Product + "." + a.Zone
}

// Product is the immutable state of one product (a Consul service name) in
// one zone.
type Product struct {
	Zone, Name string
	// Index is the cache index at which this product last changed.
	Index uint64
	// Addresses by AddrKey.
	Addresses map[string]*Address
	// Prefixes holds "env" and "job.env" for every address of the product:
	// names that exist in DNS as empty non-terminals.
	Prefixes map[string]struct{}
	// Ignored counts the instances Consul returned without all three of the
	// env, job and service tags.
	Ignored int
	// Instances is the number of instances in Addresses.
	Instances int
}

// Server is one Consul server of a zone.
type Server struct {
	Node    string
	Address netip.Addr
}

// Node is one Consul node known from the instances of a zone.
type Node struct {
	Name    string // lower case
	Address netip.Addr
	// Derived is what the cache's Builder made of this node.
	Derived any
}

// Zone is the immutable state of one zone (a Consul datacenter).
type Zone struct {
	Name string
	// Local is true for the agent's own zone, which is never dropped.
	Local bool
	// Synced is true once the zone's product list and its Consul servers
	// have been read: from then on a product the list lacks does not exist
	// (NXDOMAIN), and any other is watched on its first read.
	Synced bool
	// Ready is true once the zone is synced and every product pinned to be
	// watched from the start has delivered its first result or failed.
	Ready bool
	// Index is the cache index at which this zone last changed; DNS uses it
	// as the SOA serial.
	Index uint64
	// Products holds the products watched on this host that have delivered
	// a result; Known the names of every glimpse product of the zone, as
	// Consul lists them, watched or not. Known is shared by snapshots
	// until the list changes.
	Products Products
	Known    map[string]struct{}
	// Problems holds, by product, why the product's last read failed. A
	// product with a problem that has no state in Products cannot be
	// answered for (SERVFAIL); one with a state serves it, stale.
	Problems map[string]string
	// Nodes by lower-case node name.
	Nodes map[string]*Node
	// Servers in the order of their node names.
	Servers []Server
	// Derived is what the cache's Builder made of this zone (SOA, NS).
	Derived any
}

// Demand is how readers tell the watchers what they read (implemented by
// watch.Manager). Each zone and product is watched from its first read on,
// while it is held, and until it has not been read for an idle period.
type Demand interface {
	// Use records a read of product in zone (product "" for the zone
	// itself) and starts watching it if it is not. It does not block.
	Use(zone, product string)
	// Hold keeps product in zone watched until release is called.
	Hold(zone, product string) (release func())
	// Resolve waits, until ctx ends, for the cache to be able to answer
	// for product in zone: the zone synced and the product Present,
	// Failing, or Unlisted after a fresh read of the product list (a
	// product registered a moment ago is not taken for a missing one).
	// Product "" waits for the zone only.
	Resolve(ctx context.Context, zone, product string)
}

// ProductState is what a zone's snapshot can say of a product.
type ProductState uint8

const (
	// Pending: the zone is not synced, or the product is listed but has
	// neither a state nor a problem yet: wait for its first result.
	Pending ProductState = iota
	// Present: the product has a state in Products (maybe stale).
	Present
	// Failing: the product is listed, has no state and its reads fail.
	Failing
	// Unlisted: the synced zone's product list lacks it: no such product,
	// unless it was registered since the list was read.
	Unlisted
)

// State returns what z says of product; product "" asks for the zone
// itself (Present once it is synced). A nil zone is Pending.
func (z *Zone) State(product string) ProductState {
	if z == nil || !z.Synced {
		return Pending
	}
	if product == "" || z.Products.Get(product) != nil {
		return Present
	}
	if _, failing := z.Problems[product]; failing {
		return Failing
	}
	if _, known := z.Known[product]; !known {
		return Unlisted
	}
	return Pending
}

// Builder derives read-optimised forms (for DNS, packed answers) from the
// cache's snapshots. The cache calls it under its write lock whenever a
// snapshot changes, so readers pay nothing per query. Builders must not keep
// or modify their arguments.
type Builder interface {
	BuildAddress(a *Address) any
	BuildNode(zone string, n *Node) any
	BuildZone(z *Zone) any
}

// Lower returns s in lower case, without allocating when it already is.
func Lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'A' <= c && c <= 'Z' {
			return strings.ToLower(s)
		}
	}
	return s
}
