package dns

import (
	"encoding/hex"
	"net/netip"
	"strconv"

	mdns "github.com/miekg/dns"

	"glimpse/cache"
)

// Config is what shapes the DNS answers.
type Config struct {
	// Domain glimpse is authoritative for, e.g. "srv.glimpse.io.".
	Domain string
	// TTL of positive answers, in seconds.
	TTL uint32
	// NegativeTTL is the SOA minimum and TTL, in seconds: how long resolvers
	// cache NXDOMAIN and NODATA.
	NegativeTTL uint32
	// AllowWarning lets instances whose health is warning into answers.
	AllowWarning bool
}

// Builder precomputes DNS answers whenever the cache changes, as a
// cache.Builder: a query for an address or node is then answered by copying
// prepared wire bytes.
type Builder struct {
	cfg Config
}

// NewBuilder returns a Builder for cfg; cfg.Domain must be canonical (lower
// case, fully qualified).
func NewBuilder(cfg Config) *Builder { return &Builder{cfg: cfg} }

// wire is a prepared response: the whole message with ID 0, RD clear and the
// question name in lower case. The answer's owner names point at the
// question, so writing the query's own name over it echoes its case.
type wire []byte

// addrAnswers are an address's prepared answers. nil fields mean NODATA.
type addrAnswers struct {
	healthy bool // at least one instance is healthy; false means NXDOMAIN
	srv     wire
	a       wire
	aaaa    wire
}

// nodeAnswers are a node's prepared answers.
type nodeAnswers struct {
	a, aaaa wire
}

// zoneAnswers hold the records of a zone's SOA and NS answers, for the zone
// (<zone>.<domain>) and, for the local zone, the domain's apex.
type zoneAnswers struct {
	soa      *mdns.SOA
	ns       []mdns.RR
	glue     []mdns.RR // ns<i>.<zone>.<domain> address records, by i
	apexSOA  *mdns.SOA
	apexNS   []mdns.RR
	apexGlue []mdns.RR
}

func (b *Builder) healthy(h cache.Health) bool {
	return h == cache.Passing || h == cache.Warning && b.cfg.AllowWarning
}

// zoneName returns "<zone>.<domain>".
func (b *Builder) zoneName(zone string) string { return zone + "." + b.cfg.Domain }

// target returns an instance's SRV target: its node's name, or its own
// address's when it has one (or its node's name is no DNS label).
func (b *Builder) target(zone string, in *cache.Instance) string {
	if in.OwnAddress || !cache.ValidLabel(in.Node) {
		return hexAddr(in.Address) + ".addr." + b.zoneName(zone)
	}
	return cache.Lower(in.Node) + ".node." + b.zoneName(zone)
}

// srvKey is what makes an SRV record of an address distinct.
type srvKey struct {
	target string
	port   uint16
}

// BuildAddress implements cache.Builder.
func (b *Builder) BuildAddress(a *cache.Address) any {
	out := &addrAnswers{}
	qname := a.Name() + "." + b.cfg.Domain
	var srv, v4, v6, glue []mdns.RR
	seenIP := map[netip.Addr]bool{}
	seenTarget := map[string]bool{}
	seenSRV := map[srvKey]bool{}
	for i := range a.Instances {
		in := &a.Instances[i]
		if !b.healthy(in.Health) {
			continue
		}
		out.healthy = true
		t := b.target(a.Zone, in)
		// Two instances at one address and port (two providers stating
		// the same one) are one SRV record: an RRset holds no duplicates
		// (RFC 2181 §5).
		if k := (srvKey{t, in.Port}); !seenSRV[k] {
			seenSRV[k] = true
			srv = append(srv, &mdns.SRV{
				Hdr:      b.hdr(qname, mdns.TypeSRV, b.cfg.TTL),
				Priority: 1, Weight: 1, Port: in.Port, Target: t,
			})
		}
		if !seenTarget[t] {
			seenTarget[t] = true
			glue = append(glue, b.addrRR(t, in.Address))
		}
		if !seenIP[in.Address] {
			seenIP[in.Address] = true
			if in.Address.Is4() {
				v4 = append(v4, b.addrRR(qname, in.Address))
			} else {
				v6 = append(v6, b.addrRR(qname, in.Address))
			}
		}
	}
	if !out.healthy {
		return out
	}
	out.srv = b.pack(qname, mdns.TypeSRV, srv, glue)
	out.a = b.pack(qname, mdns.TypeA, v4, nil)
	out.aaaa = b.pack(qname, mdns.TypeAAAA, v6, nil)
	return out
}

// BuildNode implements cache.Builder.
func (b *Builder) BuildNode(zone string, n *cache.Node) any {
	qname := n.Name + ".node." + b.zoneName(zone)
	rr := []mdns.RR{b.addrRR(qname, n.Address)}
	if n.Address.Is4() {
		return &nodeAnswers{a: b.pack(qname, mdns.TypeA, rr, nil)}
	}
	return &nodeAnswers{aaaa: b.pack(qname, mdns.TypeAAAA, rr, nil)}
}

// BuildZone implements cache.Builder.
func (b *Builder) BuildZone(z *cache.Zone) any {
	out := &zoneAnswers{}
	zn := b.zoneName(z.Name)
	out.soa = b.soa(zn, z)
	out.ns, out.glue = b.nsSet(zn, z.Servers)
	if z.Local {
		out.apexSOA = b.soa(b.cfg.Domain, z)
		out.apexNS, out.apexGlue = b.nsSet(b.cfg.Domain, z.Servers)
	}
	return out
}

func (b *Builder) soa(owner string, z *cache.Zone) *mdns.SOA {
	mname := owner
	if len(z.Servers) > 0 {
		mname = "ns1." + owner
	}
	return &mdns.SOA{
		Hdr:     b.hdr(owner, mdns.TypeSOA, b.cfg.NegativeTTL),
		Ns:      mname,
		Mbox:    "hostmaster." + b.cfg.Domain,
		Serial:  uint32(z.Index),
		Refresh: 3600, Retry: 600, Expire: 86400,
		Minttl: b.cfg.NegativeTTL,
	}
}

// nsSet returns the NS records of owner, ns<i>.<owner> for each server, and
// their address records.
func (b *Builder) nsSet(owner string, servers []cache.Server) (ns, glue []mdns.RR) {
	for i, s := range servers {
		host := "ns" + strconv.Itoa(i+1) + "." + owner
		ns = append(ns, &mdns.NS{Hdr: b.hdr(owner, mdns.TypeNS, b.cfg.TTL), Ns: host})
		glue = append(glue, b.addrRR(host, s.Address))
	}
	return ns, glue
}

func (b *Builder) hdr(owner string, t uint16, ttl uint32) mdns.RR_Header {
	return mdns.RR_Header{Name: owner, Rrtype: t, Class: mdns.ClassINET, Ttl: ttl}
}

// addrRR returns an A or AAAA record for ip.
func (b *Builder) addrRR(owner string, ip netip.Addr) mdns.RR {
	if ip.Is4() {
		return &mdns.A{Hdr: b.hdr(owner, mdns.TypeA, b.cfg.TTL), A: ip.AsSlice()}
	}
	return &mdns.AAAA{Hdr: b.hdr(owner, mdns.TypeAAAA, b.cfg.TTL), AAAA: ip.AsSlice()}
}

// pack prepares the response to (qname, qtype) with the given records; nil
// when there are no answers (NODATA is built per query).
func (b *Builder) pack(qname string, qtype uint16, answer, extra []mdns.RR) wire {
	if len(answer) == 0 {
		return nil
	}
	m := &mdns.Msg{Answer: answer, Extra: extra, Compress: true}
	m.Response = true
	m.Authoritative = true
	m.Question = []mdns.Question{{Name: qname, Qtype: qtype, Qclass: mdns.ClassINET}}
	buf, err := m.Pack()
	if err != nil {
		// Only names longer than DNS allows fail to pack; such an address
		// cannot be queried either.
		return nil
	}
	return buf
}

// hexAddr returns ip in the hexadecimal form of <hex-ip>.addr names.
func hexAddr(ip netip.Addr) string {
	s := ip.AsSlice()
	return hex.EncodeToString(s)
}

// parseHexAddr is the inverse of hexAddr.
func parseHexAddr(s string) (netip.Addr, bool) {
	if len(s) != 8 && len(s) != 32 {
		return netip.Addr{}, false
	}
	raw, err := hex.DecodeString(s)
	if err != nil {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(raw)
	return ip, ok
}
