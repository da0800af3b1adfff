// Package cache holds glimpse's in-memory, zone-scoped topology.
//
// The watchers (package watch) write whole per-product results into the
// cache; readers (DNS, HTTP) read immutable snapshots without taking locks.
// Every write that changes what a reader could see moves the cache index,
// a monotonic counter shared by all zones, and records it on the zone, the
// product and each address that changed.
package cache

import (
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
	// Synced is true once every watcher of the zone delivered its first
	// result.
	Synced bool
	// Index is the cache index at which this zone last changed; DNS uses it
	// as the SOA serial.
	Index    uint64
	Products map[string]*Product
	// Nodes by lower-case node name.
	Nodes map[string]*Node
	// Servers in the order of their node names.
	Servers []Server
	// Derived is what the cache's Builder made of this zone (SOA, NS).
	Derived any
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
