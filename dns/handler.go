// Package dns answers glimpse's DNS queries from the cache, as a miekg/dns
// handler. Positive answers for addresses and nodes are prepared when the
// cache changes (see Builder); a query for them costs a map lookup and a
// copy. Nothing here calls Consul.
package dns

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

const (
	// maxUDPSize is the largest UDP response the agent sends, whatever a
	// client advertises; it is also what the agent advertises.
	maxUDPSize = 4096
	// optLen is the length of the OPT record the agent adds to answers of
	// EDNS queries: root name, type, class, TTL and an empty RDATA.
	optLen = 11
)

// Handler answers DNS queries from a cache.
type Handler struct {
	cache   *cache.Cache
	cfg     Config
	local   string
	metrics *Metrics
	// demand records what is read and watches it on demand.
	demand cache.Demand
	// firstWait is how long a query for a zone or product that has no
	// state yet waits for its first result before the answer is SERVFAIL.
	firstWait time.Duration
	useEvery  time.Duration // HandlerOptions.UseEvery
	bufs      sync.Pool
	// The domain as the fast path compares it: its number of labels, and
	// its name as it ends a query name in presentation form.
	domainLabels int
	domainSuffix string
}

// HandlerOptions are the Handler's collaborators.
type HandlerOptions struct {
	Config Config
	// LocalZone answers for the domain's apex and for unknown zones.
	LocalZone string
	Metrics   *Metrics // may be nil
	// Demand is told what every query reads, so that it is watched (nil:
	// nothing is watched on demand; the cache is answered from as it is).
	Demand cache.Demand
	// FirstWait bounds how long a query waits for the first result of a
	// zone or product it is the first to read.
	FirstWait time.Duration
	// UseEvery is how often, at most, the common UDP answer tells Demand
	// that an address is read (0: every 100 ms). A read is news to the
	// demand only as far as it keeps what is read watched, so a tenth of
	// its idle time is fine enough.
	UseEvery time.Duration
}

// NewHandler returns a handler answering from c. The cache must have been
// built with NewBuilder(opts.Config).
func NewHandler(c *cache.Cache, opts HandlerOptions) *Handler {
	h := &Handler{cache: c, cfg: opts.Config, local: opts.LocalZone, metrics: opts.Metrics, demand: opts.Demand, firstWait: opts.FirstWait}
	if h.demand == nil {
		h.demand = cache.Static{Cache: c}
	}
	h.useEvery = opts.UseEvery
	if h.useEvery <= 0 {
		h.useEvery = defaultUseEvery
	}
	h.bufs.New = func() any { b := make([]byte, 0, 1024); return &b }
	// Under the root, nothing matches: parseName finds no address there.
	h.domainSuffix = opts.Config.Domain
	h.domainLabels = strings.Count(h.domainSuffix, ".")
	return h
}

// request is one query being answered.
type request struct {
	w     mdns.ResponseWriter
	r     *mdns.Msg
	q     mdns.Question
	opt   *mdns.OPT
	tcp   bool
	limit int // the largest response the client can take
}

// ServeDNS implements mdns.Handler.
func (h *Handler) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	start, _ := arrival(w)
	req := request{w: w, r: r, limit: mdns.MinMsgSize}
	_, req.tcp = w.LocalAddr().(*net.TCPAddr) // LocalAddr does not allocate; RemoteAddr may
	rcode := h.serve(&req)
	if h.metrics != nil {
		qtype := uint16(0)
		if len(r.Question) > 0 {
			qtype = r.Question[0].Qtype
		}
		h.metrics.observe(req.tcp, qtype, rcode, time.Since(start))
	}
}

// serve answers the request and returns the rcode it answered with.
func (h *Handler) serve(req *request) int {
	r := req.r
	req.opt = r.IsEdns0() // error answers echo OPT too
	if r.Opcode != mdns.OpcodeQuery {
		return h.fail(req, mdns.RcodeNotImplemented)
	}
	if len(r.Question) != 1 || optCount(r.Extra) > 1 {
		// More than one OPT record: FORMERR (RFC 6891 §6.1.1).
		return h.fail(req, mdns.RcodeFormatError)
	}
	req.q = r.Question[0]
	switch {
	case req.tcp:
		req.limit = mdns.MaxMsgSize
	case req.opt != nil:
		req.limit = udpLimit(req.opt.UDPSize())
	}
	if req.opt != nil && req.opt.Version() != 0 {
		return h.fail(req, mdns.RcodeBadVers)
	}
	if req.q.Qtype == mdns.TypeAXFR || req.q.Qtype == mdns.TypeIXFR {
		return h.fail(req, mdns.RcodeNotImplemented)
	}
	if req.q.Qclass != mdns.ClassINET {
		return h.fail(req, mdns.RcodeRefused)
	}

	n := parseName(req.q.Name, h.cfg.Domain)
	switch n.kind {
	case kindOutside:
		return h.fail(req, mdns.RcodeRefused)
	case kindInvalid:
		if soa := h.delegatedSOA(&n); soa != nil {
			return h.nxdomain(req, soa) // under a delegated zone: its SOA
		}
		return h.serveApex(req, &n)
	case kindApex:
		return h.serveApex(req, &n)
	case kindOne:
		// A zone, or ns<i> of the local zone unless a zone has that name.
		if exists, _ := h.cache.Datacenter(n.zone()); !exists && h.cache.Zone(n.zone()) == nil {
			if _, ok := nsIndex(n.zone()); ok {
				return h.serveApex(req, &n)
			}
		}
	}

	product := n.product()
	z, state, rcode := h.zone(req, n.zone(), product)
	if z == nil {
		if rcode == mdns.RcodeNameError {
			return h.serveApex(req, &n) // unknown zone: NXDOMAIN with the apex SOA
		}
		return h.fail(req, rcode)
	}
	if state == cache.Pending || state == cache.Failing {
		// A product Consul lists whose state could not be read: never an
		// NXDOMAIN for it.
		return h.fail(req, mdns.RcodeServerFailure)
	}
	za := z.Derived.(*zoneAnswers)
	soa := h.soaOf(za)
	switch n.kind {
	case kindOne:
		switch {
		case req.q.Qtype == mdns.TypeDS:
			// Answered by the parent side of a cut, the apex (RFC 4035
			// §3.1.4.1), and there is no DS to give.
			return h.nodata(req, h.apexSOA(za))
		case !h.cfg.DelegateZones:
			// Not a zone cut: a name with names below it, and no records.
			return h.nodata(req, soa)
		case req.q.Qtype == mdns.TypeSOA || req.q.Qtype == mdns.TypeANY:
			// ANY: one RRset of those the name has (RFC 8482 §4.2).
			return h.reply(req, mdns.RcodeSuccess, []mdns.RR{za.soa}, nil, nil)
		case req.q.Qtype == mdns.TypeNS && len(za.ns) > 0:
			return h.reply(req, mdns.RcodeSuccess, za.ns, nil, za.glue)
		}
		return h.nodata(req, soa)
	case kindZoneNS:
		i, _ := nsIndex(n.labels[1])
		if i >= len(za.glue) && h.prefixExists(z, &n) {
			return h.nodata(req, soa) // a product named ns<i>
		}
		return h.serveServer(req, za.glue, i, soa)
	case kindNode:
		wa, ok := prepared(z, &n, req.q.Qtype)
		if !ok {
			return h.missing(req, z, &n, soa)
		}
		return h.serveWire(req, wa, soa)
	case kindAddr:
		ip, ok := parseHexAddr(n.labels[2])
		if !ok {
			return h.missing(req, z, &n, soa)
		}
		return h.serveIP(req, ip, soa)
	case kindPrefix:
		return h.missing(req, z, &n, soa)
	case kindAddress:
		wa, ok := prepared(z, &n, req.q.Qtype)
		if !ok {
			return h.nxdomain(req, soa)
		}
		return h.serveWire(req, wa, soa)
	}
	return h.nxdomain(req, soa)
}

// optCount counts the OPT records of a message's additional section.
func optCount(extra []mdns.RR) int {
	n := 0
	for _, rr := range extra {
		if rr.Header().Rrtype == mdns.TypeOPT {
			n++
		}
	}
	return n
}

// soaOf returns the SOA that negative answers for names of a zone carry:
// the zone's own when zones are delegations, else the apex's, the SOA of
// the one zone they are in (RFC 2308 §3).
func (h *Handler) soaOf(za *zoneAnswers) *mdns.SOA {
	if h.cfg.DelegateZones {
		return za.soa
	}
	return h.apexSOA(za)
}

// apexSOA returns the domain's SOA, which the local zone's snapshot holds;
// until that is synced, a remote zone's own.
func (h *Handler) apexSOA(za *zoneAnswers) *mdns.SOA {
	if za.apexSOA != nil {
		return za.apexSOA
	}
	if l := h.localZone(); l != nil {
		return l.Derived.(*zoneAnswers).apexSOA
	}
	return za.soa
}

// delegatedSOA returns the SOA of the delegated zone a malformed name is
// under (its last label below the domain names a synced zone), nil when
// zones are not delegations or there is none. It starts no watch.
func (h *Handler) delegatedSOA(n *name) *mdns.SOA {
	if !h.cfg.DelegateZones || n.n < 1 {
		return nil
	}
	z := h.cache.Zone(n.zone())
	if z == nil || !z.Synced {
		return nil
	}
	return z.Derived.(*zoneAnswers).soa
}

// prepared returns the prepared answer of qtype for an address or a node
// of z: ok is false when the name has none (no such node, no such address
// or none of its instances healthy), and the answer is nil for a type it
// has no records of (NODATA).
func prepared(z *cache.Zone, n *name, qtype uint16) (wa wire, ok bool) {
	if n.kind == kindNode {
		node := z.Nodes[n.labels[2]]
		if node == nil {
			return nil, false
		}
		na := node.Derived.(*nodeAnswers)
		if qtype == mdns.TypeANY { // ANY on a node: its address record
			if na.a != nil {
				return na.a, true
			}
			return na.aaaa, true
		}
		return pick(qtype, nil, na.a, na.aaaa), true
	}
	aa := addressAnswers(z, n)
	if aa == nil || !aa.healthy {
		return nil, false
	}
	return aa.answer(qtype), true
}

// addressAnswers returns the prepared answers of address n, nil when the
// zone has no such address.
func addressAnswers(z *cache.Zone, n *name) *addrAnswers {
	p := z.Products.Get(n.labels[1])
	if p == nil {
		return nil
	}
	a := p.Addresses[n.rest]
	if a == nil {
		return nil
	}
	return a.Derived.(*addrAnswers)
}

// udpLimit is the largest UDP response to a client advertising size
// bytes with EDNS.
func udpLimit(size uint16) int {
	return max(mdns.MinMsgSize, min(int(size), maxUDPSize))
}

// pick returns the prepared answer for qtype: srv for SRV and ANY (RFC 8482
// allows answering ANY with one set), A or AAAA; nil for any other type.
func pick(qtype uint16, srv, a, aaaa wire) wire {
	switch qtype {
	case mdns.TypeSRV, mdns.TypeANY:
		return srv
	case mdns.TypeA:
		return a
	case mdns.TypeAAAA:
		return aaaa
	}
	return nil
}

// zone returns the synced snapshot of a zone and the state of product in
// it (cache.Read), or nil and the rcode to answer with: NXDOMAIN for a zone
// Consul does not know, SERVFAIL for one not synced in time. While it waits
// for a first result the UDP socket's reading is handed on (Detacher).
func (h *Handler) zone(req *request, name, product string) (*cache.Zone, cache.ProductState, int) {
	var detach func()
	if d, ok := req.w.(Detacher); ok {
		detach = d.Detach
	}
	z, state := h.cache.Read(context.Background(), h.demand, name, product, h.firstWait, detach)
	if z == nil || !z.Synced {
		if exists, known := h.cache.Datacenter(name); known && !exists {
			return nil, state, mdns.RcodeNameError
		}
		return nil, state, mdns.RcodeServerFailure
	}
	return z, state, mdns.RcodeSuccess
}

// serveApex answers names directly under the domain that are not zones,
// names that cannot exist and unknown zones, from the local zone.
func (h *Handler) serveApex(req *request, n *name) int {
	local := h.localZone()
	if local == nil {
		return h.fail(req, mdns.RcodeServerFailure)
	}
	za := local.Derived.(*zoneAnswers)
	switch n.kind {
	case kindApex:
		switch req.q.Qtype {
		case mdns.TypeSOA, mdns.TypeANY: // ANY: one of its RRsets (RFC 8482 §4.2)
			return h.reply(req, mdns.RcodeSuccess, []mdns.RR{za.apexSOA}, nil, nil)
		case mdns.TypeNS:
			if len(za.apexNS) > 0 {
				return h.reply(req, mdns.RcodeSuccess, za.apexNS, nil, za.apexGlue)
			}
		}
		return h.nodata(req, za.apexSOA)
	case kindOne:
		if i, ok := nsIndex(n.zone()); ok {
			return h.serveServer(req, za.apexGlue, i, za.apexSOA)
		}
	}
	return h.nxdomain(req, za.apexSOA)
}

// localZone returns the local zone's snapshot once it is synced.
func (h *Handler) localZone() *cache.Zone {
	if z := h.cache.Zone(h.local); z != nil && z.Synced {
		return z
	}
	return nil
}

// serveServer answers for ns<i>: the address record glue[i].
func (h *Handler) serveServer(req *request, glue []mdns.RR, i int, soa *mdns.SOA) int {
	if i >= len(glue) {
		return h.nxdomain(req, soa)
	}
	if t := glue[i].Header().Rrtype; t != req.q.Qtype && req.q.Qtype != mdns.TypeANY {
		return h.nodata(req, soa)
	}
	return h.reply(req, mdns.RcodeSuccess, []mdns.RR{glue[i]}, nil, nil)
}

// serveIP answers a <hex-ip>.addr name.
func (h *Handler) serveIP(req *request, ip netip.Addr, soa *mdns.SOA) int {
	var rr mdns.RR
	hdr := mdns.RR_Header{Name: req.q.Name, Class: mdns.ClassINET, Ttl: h.cfg.TTL}
	qtype := req.q.Qtype
	if qtype == mdns.TypeANY { // the one record the name has
		qtype = mdns.TypeAAAA
		if ip.Is4() {
			qtype = mdns.TypeA
		}
	}
	switch {
	case qtype == mdns.TypeA && ip.Is4():
		hdr.Rrtype = mdns.TypeA
		rr = &mdns.A{Hdr: hdr, A: ip.AsSlice()}
	case qtype == mdns.TypeAAAA && ip.Is6():
		hdr.Rrtype = mdns.TypeAAAA
		rr = &mdns.AAAA{Hdr: hdr, AAAA: ip.AsSlice()}
	default:
		return h.nodata(req, soa)
	}
	return h.reply(req, mdns.RcodeSuccess, []mdns.RR{rr}, nil, nil)
}

// prefixExists reports whether a name with fewer labels than an address is
// an empty non-terminal: a product, <env>.<product>, <job>.<env>.<product>,
// or the node and addr names of a zone. Such names answer NODATA, not
// NXDOMAIN (RFC 8020), so resolvers keep resolving the names below them.
func (h *Handler) prefixExists(z *cache.Zone, n *name) bool {
	if n.n == 2 {
		switch {
		case z.Products.Get(n.labels[1]) != nil:
			return true
		case n.labels[1] == "node":
			return len(z.Nodes) > 0
		case n.labels[1] == "addr":
			return true
		}
		return false
	}
	if n.n == 3 || n.n == 4 {
		p := z.Products.Get(n.labels[1])
		if p == nil {
			return false
		}
		_, ok := p.Prefixes[n.rest]
		return ok
	}
	return false
}

// missing answers a name that is no node, address or server: NODATA when
// it is an empty non-terminal above an address (a product may be named
// "node", "addr" or "ns1"), else NXDOMAIN.
func (h *Handler) missing(req *request, z *cache.Zone, n *name, soa *mdns.SOA) int {
	if h.prefixExists(z, n) {
		return h.nodata(req, soa)
	}
	return h.nxdomain(req, soa)
}

func (h *Handler) nxdomain(req *request, soa *mdns.SOA) int {
	return h.reply(req, mdns.RcodeNameError, nil, []mdns.RR{soa}, nil)
}

func (h *Handler) nodata(req *request, soa *mdns.SOA) int {
	return h.reply(req, mdns.RcodeSuccess, nil, []mdns.RR{soa}, nil)
}

// fail answers with an error rcode and no records.
func (h *Handler) fail(req *request, rcode int) int {
	m := new(mdns.Msg)
	m.SetRcode(req.r, rcode)
	m.Authoritative = false
	if len(req.r.Question) != 1 {
		m.Question = nil
	}
	h.write(req, m)
	return rcode
}

// reply answers with the given sections, authoritatively.
func (h *Handler) reply(req *request, rcode int, answer, ns, extra []mdns.RR) int {
	m := new(mdns.Msg)
	m.SetRcode(req.r, rcode)
	m.Authoritative = true
	m.Answer, m.Ns, m.Extra = answer, ns, extra
	h.write(req, m)
	return rcode
}

// write sends m, with an OPT record when the query had one, trimmed to what
// the client can take. TC is set only when answer or authority records were
// left out: additional records (an SRV answer's addresses) are trimmed
// silently (RFC 2181 §9), since the answer is whole without them and a
// resolver would otherwise retry every such query over TCP.
func (h *Handler) write(req *request, m *mdns.Msg) {
	m.Extra = append([]mdns.RR(nil), m.Extra...)
	if req.opt != nil {
		m.SetEdns0(maxUDPSize, req.opt.Do())
	}
	answers, authority := len(m.Answer), len(m.Ns)
	m.Truncate(req.limit)
	m.Truncated = len(m.Answer) < answers || len(m.Ns) < authority
	_ = req.w.WriteMsg(m)
}

// serveWire answers with a prepared response, or NODATA when there is none.
// The common case copies the bytes and patches ID, RD, the question's case
// and type, and the OPT record; an answer larger than the client can take is
// unpacked and trimmed the slow way.
func (h *Handler) serveWire(req *request, wa wire, soa *mdns.SOA) int {
	if wa == nil {
		return h.nodata(req, soa)
	}
	size := len(wa)
	if req.opt != nil {
		size += optLen
	}
	if size > req.limit || nameLen(wa) != len(req.q.Name)+1 {
		// The second never holds for a name that parsed (the prepared
		// name is the query's in lower case); it guards the patching.
		return h.serveTrimmed(req, wa)
	}
	p := patch{id: req.r.Id, rd: req.r.RecursionDesired, cd: req.r.CheckingDisabled, qtype: req.q.Qtype, opt: req.opt != nil}
	if p.opt {
		p.do = req.opt.Do()
	}
	var qname [maxNameLen]byte
	h.sendPrepared(req.w, wa, p, qname[:putName(qname[:], req.q.Name)])
	return mdns.RcodeSuccess
}

// patch is what a prepared response takes from the query it answers.
type patch struct {
	id     uint16
	rd, cd bool
	qtype  uint16
	opt    bool // the query had an OPT record: the answer gets one
	do     bool
}

// sendPrepared writes the prepared response wa patched for a query: its
// ID, RD and CD (RFC 4035 §3.1.6: CD is copied), the question name as the
// client spelled it (qname, in wire form), its type, and an OPT record.
// The caller has checked that it fits and that the names have the same
// length.
func (h *Handler) sendPrepared(w mdns.ResponseWriter, wa wire, p patch, qname []byte) {
	// A batched UDP writer lends the buffer its answer is sent from: the
	// answer is patched there, not in a buffer of ours and copied again.
	if uw, ok := w.(*udpWriter); ok {
		if dst := uw.answerBuf(); dst != nil {
			*dst = patched((*dst)[:0], wa, p, qname)
			return
		}
	}
	bp := h.bufs.Get().(*[]byte)
	buf := patched((*bp)[:0], wa, p, qname)
	_, _ = w.Write(buf)
	*bp = buf
	h.bufs.Put(bp)
}

// patched appends to buf the prepared answer wa patched for the query: its
// ID, RD and CD bits, question name as sent and type, and an OPT record
// when the query had one.
func patched(buf []byte, wa wire, p patch, qname []byte) []byte {
	buf = append(buf, wa...)
	binary.BigEndian.PutUint16(buf[0:], p.id)
	if p.rd {
		buf[2] |= 0x01
	}
	if p.cd {
		buf[3] |= 0x10
	}
	end := copy(buf[12:], qname) + 12
	binary.BigEndian.PutUint16(buf[end:], p.qtype)
	if p.opt {
		var do byte
		if p.do {
			do = 0x80
		}
		buf = append(buf, 0, 0, 41, maxUDPSize>>8, maxUDPSize&0xff, 0, 0, do, 0, 0, 0)
		binary.BigEndian.PutUint16(buf[10:], binary.BigEndian.Uint16(buf[10:])+1)
	}
	return buf
}

// serveTrimmed answers with a prepared response too large for the client.
func (h *Handler) serveTrimmed(req *request, wa wire) int {
	m := new(mdns.Msg)
	if err := m.Unpack(wa); err != nil {
		return h.fail(req, mdns.RcodeServerFailure)
	}
	m.Id = req.r.Id
	m.RecursionDesired = req.r.RecursionDesired
	m.Question[0] = req.q
	for _, rr := range m.Answer {
		rr.Header().Name = req.q.Name
	}
	h.write(req, m)
	return mdns.RcodeSuccess
}

// nameLen returns the length of the uncompressed question name of a
// prepared message.
func nameLen(wa wire) int {
	off := 12
	for off < len(wa) && wa[off] != 0 {
		off += int(wa[off]) + 1
	}
	return off - 12 + 1
}

// putName writes a name in presentation form (plain labels, no escapes) in
// wire form and returns the number of bytes written.
func putName(buf []byte, s string) int {
	off := 0
	for len(s) > 0 && s != "." {
		dot := 0
		for dot < len(s) && s[dot] != '.' {
			dot++
		}
		buf[off] = byte(dot)
		copy(buf[off+1:], s[:dot])
		off += dot + 1
		if dot == len(s) {
			break
		}
		s = s[dot+1:]
	}
	buf[off] = 0
	return off + 1
}
