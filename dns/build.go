package dns

import (
	"encoding/hex"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
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
	// MaxRecords caps the records of an address's SRV, A and AAAA answers
	// (0: DefaultMaxRecords). A larger set is served as rotating subsets
	// of MaxRecords records, so that every instance is answered in turn
	// (see rotate).
	MaxRecords int
	// DelegateZones makes each zone a delegation: NS <zone> names the
	// zone's Consul servers and names under a zone carry the zone's SOA.
	// Off, the domain is one zone: only its apex has SOA and NS.
	DelegateZones bool
}

// DefaultMaxRecords is the default cap on an answer's records: BIND
// (max-records-per-type since 9.18.28) refuses RRsets of more than 100
// records, with SERVFAIL for the name.
const DefaultMaxRecords = 100

// maxRotations bounds the prepared subsets of one RRset; see rotate.
const maxRotations = 16

func (c Config) maxRecords() int {
	if c.MaxRecords <= 0 {
		return DefaultMaxRecords
	}
	return c.MaxRecords
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
	// used is when the fast path last told the demand of a read of the
	// address (unix nanoseconds); see Handler.ServeRaw.
	used    atomic.Int64
	healthy bool // at least one instance is healthy; false means NXDOMAIN
	// name is the address's name, lower case and fully qualified; zone
	// and product are the cache's names of its zone and product.
	name, zone, product string
	// qlen is the length of the question name in every answer, in wire
	// form: the fast path compares it with the query's.
	qlen int
	srv  wire
	a    wire
	aaaa wire
	// rot holds the subsets of the RRsets when one is over the cap (srv,
	// a and aaaa are then unused); nil when every RRset is whole.
	rot *rotations
}

// rotations are the subsets of an address's large RRsets, served in turn.
// Each is packed at its first query, not when the address changes: a large
// address changes often while it is being registered, and nobody may ask
// for it meanwhile.
type rotations struct {
	next         atomic.Uint32
	srv, a, aaaa []*lazyWire
}

// lazyWire is a prepared response packed on first use.
type lazyWire struct {
	once sync.Once
	pack func() wire
	w    wire
}

func (l *lazyWire) get() wire {
	l.once.Do(func() { l.w, l.pack = l.pack(), nil })
	return l.w
}

// answer returns the prepared answer for qtype, the next subset in turn
// for an RRset over the cap.
func (aa *addrAnswers) answer(qtype uint16) wire {
	if aa.rot == nil {
		return pick(qtype, aa.srv, aa.a, aa.aaaa)
	}
	set := aa.rot.srv
	switch qtype {
	case mdns.TypeA:
		set = aa.rot.a
	case mdns.TypeAAAA:
		set = aa.rot.aaaa
	case mdns.TypeSRV, mdns.TypeANY:
	default:
		return nil
	}
	switch len(set) {
	case 0:
		return nil
	case 1:
		return set[0].get()
	}
	return set[int(aa.rot.next.Add(1))%len(set)].get()
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
	qname := a.Name() + "." + b.cfg.Domain
	// Labels of letters, digits and '-' and a final dot: in wire form,
	// each dot is a length byte, plus the first one.
	out := &addrAnswers{name: qname, zone: a.Zone, product: a.Product, qlen: len(qname) + 1}
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
	limit := b.cfg.maxRecords()
	if len(srv) <= limit && len(v4) <= limit && len(v6) <= limit {
		out.srv = b.pack(qname, mdns.TypeSRV, srv, glue)
		out.a = b.pack(qname, mdns.TypeA, v4, nil)
		out.aaaa = b.pack(qname, mdns.TypeAAAA, v6, nil)
		return out
	}
	// The glue of an SRV subset is the addresses of its own targets.
	glueOf := make(map[string]mdns.RR, len(glue))
	for _, g := range glue {
		glueOf[g.Header().Name] = g
	}
	out.rot = &rotations{}
	for _, sub := range rotate(srv, limit) {
		out.rot.srv = append(out.rot.srv, &lazyWire{pack: func() wire {
			var extra []mdns.RR
			seen := make(map[string]bool, len(sub))
			for _, rr := range sub {
				if t := rr.(*mdns.SRV).Target; !seen[t] {
					seen[t] = true
					extra = append(extra, glueOf[t])
				}
			}
			return b.pack(qname, mdns.TypeSRV, sub, extra)
		}})
	}
	for _, sub := range rotate(v4, limit) {
		out.rot.a = append(out.rot.a, &lazyWire{pack: func() wire { return b.pack(qname, mdns.TypeA, sub, nil) }})
	}
	for _, sub := range rotate(v6, limit) {
		out.rot.aaaa = append(out.rot.aaaa, &lazyWire{pack: func() wire { return b.pack(qname, mdns.TypeAAAA, sub, nil) }})
	}
	return out
}

// rotate splits an RRset of more than limit records into subsets of limit
// records that are served in turn. The subsets are consecutive windows of
// the records taken as a ring, so each record is in at least one, and k
// windows cover the ring k×limit/n times: each record is in the same
// number of subsets, or one fewer, and so gets the same share of the
// answers. k is the smallest count that makes that share exact
// (n/gcd(n, limit)), at most maxRotations unless more are needed to cover
// every record. A set within the limit is its own only subset.
func rotate(rrs []mdns.RR, limit int) [][]mdns.RR {
	n := len(rrs)
	if n <= limit {
		if n == 0 {
			return nil
		}
		return [][]mdns.RR{rrs}
	}
	k := min(n/gcd(n, limit), maxRotations)
	k = max(k, (n+limit-1)/limit)
	subs := make([][]mdns.RR, k)
	for i := range subs {
		sub := make([]mdns.RR, limit)
		for j := range sub {
			sub[j] = rrs[(i*limit+j)%n]
		}
		subs[i] = sub
	}
	return subs
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
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
