package watch

import (
	"net/netip"
	"strings"

	"github.com/hashicorp/consul/api"

	"github.com/rugby110/glimpse/cache"
)

// Tag prefixes of the glimpse topology on Consul service instances.
const (
	TagPrefix   = "glimpse:"
	TagEnv      = "glimpse:env="
	TagJob      = "glimpse:job="
	TagService  = "glimpse:service="
	TagProvider = "glimpse:provider="
)

// IsProduct reports whether a Consul service, by the union of its instances'
// tags, takes part in the glimpse topology.
func IsProduct(name string, tags []string) bool {
	if !cache.ValidLabel(name) {
		return false
	}
	for _, t := range tags {
		if strings.HasPrefix(t, TagPrefix) {
			return true
		}
	}
	return false
}

// healthEntry is what glimpse reads of an entry of Consul's
// /v1/health/service/<product>. Decoding into these few fields instead of
// api.ServiceEntry, with its dozens of fields and their maps, takes a third
// of the decoding work out of a first sync (figures in bench/RESULTS.md).
type healthEntry struct {
	Node    *healthNode
	Service *healthService
	Checks  []healthCheck
}

type healthNode struct{ Node, Address string }

type healthService struct {
	Tags    []string
	Address string
	Port    int
}

type healthCheck struct{ CheckID, Status string }

// instances converts Consul's health entries of one product into cache
// instances. Entries without valid env, job and service tags, or without an
// IP address, are counted in ignored. Label strings are interned per call,
// so a product's thousands of instances share a few strings.
func instances(entries []*healthEntry) (out []cache.Instance, ignored int) {
	intern := map[string]string{}
	in := func(s string) string {
		s = cache.Lower(s)
		if v, ok := intern[s]; ok {
			return v
		}
		s = strings.Clone(s)
		intern[s] = s
		return s
	}
	out = make([]cache.Instance, 0, len(entries))
	for _, e := range entries {
		if e.Service == nil || e.Node == nil {
			ignored++
			continue
		}
		var inst cache.Instance
		for _, t := range e.Service.Tags {
			switch {
			case strings.HasPrefix(t, TagEnv):
				inst.Env = t[len(TagEnv):]
			case strings.HasPrefix(t, TagJob):
				inst.Job = t[len(TagJob):]
			case strings.HasPrefix(t, TagService):
				inst.Service = t[len(TagService):]
			case strings.HasPrefix(t, TagProvider):
				inst.Provider = t[len(TagProvider):]
			}
		}
		if !cache.ValidLabel(inst.Env) || !cache.ValidLabel(inst.Job) || !cache.ValidLabel(inst.Service) {
			ignored++
			continue
		}
		ip, own, ok := address(e)
		if !ok || e.Service.Port <= 0 || e.Service.Port > 65535 {
			ignored++
			continue
		}
		inst.Env, inst.Job, inst.Service = in(inst.Env), in(inst.Job), in(inst.Service)
		if inst.Provider != "" {
			inst.Provider = in(inst.Provider)
		}
		inst.Node = strings.Clone(e.Node.Node)
		inst.Address, inst.OwnAddress = ip, own
		inst.Port = uint16(e.Service.Port)
		inst.Health = health(e.Checks)
		out = append(out, inst)
	}
	return out, ignored
}

// address returns the service's own address when it has one, else the
// node's; not ok when that address is no IP (a host name).
func address(e *healthEntry) (ip netip.Addr, own, ok bool) {
	if e.Service.Address != "" {
		ip, err := netip.ParseAddr(e.Service.Address)
		if err != nil {
			return netip.Addr{}, false, false // a host name: no address DNS can give
		}
		return ip.Unmap(), ip.Unmap() != nodeIP(e), true
	}
	ip = nodeIP(e)
	return ip, false, ip.IsValid()
}

func nodeIP(e *healthEntry) netip.Addr {
	ip, err := netip.ParseAddr(e.Node.Address)
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

// health aggregates an instance's node and service checks as Consul's
// api.HealthChecks.AggregatedStatus does: maintenance counts as critical, and
// so does a status Consul does not define.
func health(checks []healthCheck) cache.Health {
	h := cache.Passing
	for _, c := range checks {
		if c.CheckID == api.NodeMaint || strings.HasPrefix(c.CheckID, api.ServiceMaintPrefix) {
			return cache.Critical
		}
		switch c.Status {
		case api.HealthPassing:
		case api.HealthWarning:
			if h == cache.Passing {
				h = cache.Warning
			}
		default: // critical, or unknown
			return cache.Critical
		}
	}
	return h
}

// servers converts the catalog entries of the "consul" service, one per
// server, into cache servers.
func servers(entries []*api.CatalogService) []cache.Server {
	out := make([]cache.Server, 0, len(entries))
	for _, e := range entries {
		addr := e.ServiceAddress
		if addr == "" {
			addr = e.Address
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil {
			continue
		}
		out = append(out, cache.Server{Node: e.Node, Address: ip.Unmap()})
	}
	return out
}
