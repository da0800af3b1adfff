package dns

import (
	"encoding/binary"
	"hash/maphash"
	"net"
	"strings"
	"time"
	"unsafe"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// RawHandler is a handler that can answer some UDP queries from the packet
// itself, before miekg/dns unpacks it; the UDP server asks it first.
type RawHandler interface {
	// ServeRaw answers pkt and reports true, or reports false having
	// written nothing, and the query takes the usual way.
	ServeRaw(pkt []byte, w mdns.ResponseWriter) bool
}

var _ RawHandler = (*Handler)(nil)

// ServeRaw answers the common UDP query, an SRV, A, AAAA or ANY query for
// an address or a node of a synced zone that has an answer, straight from
// the packet: it reads the header, the question and an OPT record without
// building a message, and patches the prepared response as serveWire does.
// Unpacking the query was the largest part of the agent's own work per
// answer. Anything else (another shape of packet, a name with other
// characters, a name with no prepared answer, an answer that needs
// trimming) is left to ServeDNS, which answers it in full; the answers the
// two give are the same bytes (FuzzServeRaw compares them).
func (h *Handler) ServeRaw(pkt []byte, w mdns.ResponseWriter) bool {
	start, batch := arrival(w)
	if batch == nil {
		if _, tcp := w.LocalAddr().(*net.TCPAddr); tcp {
			return false // the limits below are UDP's
		}
	}
	// The name is lower-cased in place, in a buffer on the stack: its
	// labels serve the lookups below and nothing keeps them. What is
	// handed to the demand, which may keep it, is the cache's own names
	// or a copy.
	var lower [maxNameLen]byte
	var q rawQuery
	if !parseQuery(pkt, &lower, &q) {
		return false
	}
	name := unsafe.String(&lower[0], q.lowerLen)
	nm, ok := h.fastName(name, &q.starts, q.labels)
	if !ok {
		return false
	}
	z := h.cache.Zone(nm.zone())
	var wa wire
	if nm.kind == kindAddress && z != nil && z.Synced {
		var hot *[2]hotSlot
		if batch != nil && batch.hot != nil {
			batch.hot.sweep(start.UnixNano(), h.cache)
			hot = batch.hot.set(name)
		}
		aa := hotGet(hot, z, name)
		if aa == nil {
			if aa = addressAnswers(z, &nm); aa == nil {
				h.demand.Use(strings.Clone(nm.zone()), strings.Clone(nm.product()))
				return false // the full path answers, and waits if it must
			}
			hotPut(hot, z, aa)
		}
		// An address read thousands of times a second tells the demand
		// once per useEvery, not at every query.
		if now := start.UnixNano(); now-aa.used.Load() >= int64(h.useEvery) {
			aa.used.Store(now)
			h.demand.Use(aa.zone, aa.product)
		}
		if !aa.healthy || aa.qlen != len(q.name) {
			return false
		}
		wa = aa.answer(q.qtype)
	} else {
		h.demand.Use(strings.Clone(nm.zone()), strings.Clone(nm.product()))
		if nm.kind != kindNode || z.State("") != cache.Present {
			return false
		}
		if wa, ok = prepared(z, &nm, q.qtype); !ok || wa == nil || nameLen(wa) != len(q.name) {
			return false
		}
	}
	if wa == nil {
		return false
	}
	size, limit := len(wa), mdns.MinMsgSize
	if q.opt {
		size += optLen
		limit = udpLimit(q.udpSize)
	}
	if size > limit {
		return false
	}
	h.sendPrepared(w, wa, q.patch, q.name)
	if h.metrics != nil {
		h.metrics.observe(false, q.qtype, mdns.RcodeSuccess, time.Since(start))
	}
	return true
}

// fastName classifies the names the fast path answers, an address or a
// node, from a name parseQuery lower-cased with the start of each of its
// labels: it gives what parseName gives for these, without reading the
// name again. Any other name is not ok, and ServeDNS answers it.
func (h *Handler) fastName(lower string, starts *[maxLabels + 1]uint8, labels int) (n name, ok bool) {
	below := labels - h.domainLabels
	if below != 5 && below != 3 {
		return n, false
	}
	if lower[starts[below]:] != h.domainSuffix {
		return n, false
	}
	for i := range below {
		n.labels[i] = lower[starts[below-1-i] : starts[below-i]-1]
	}
	n.n = below
	n.rest = lower[:starts[below-2]-1]
	if below == 3 {
		if n.labels[1] != "node" {
			return n, false
		}
		n.kind = kindNode
		return n, true
	}
	n.kind = kindAddress
	return n, true
}

// arrival is when the query w answers arrived: for a datagram of a batch,
// when its batch, also returned, was read (one clock read per batch, not
// per query); for anything else, now.
func arrival(w mdns.ResponseWriter) (time.Time, *udpBatch) {
	if uw, ok := w.(*udpWriter); ok && uw.batch != nil {
		return uw.batch.at, uw.batch
	}
	return time.Now(), nil
}

// hotAnswers is a UDP reader's own cache of the addresses it answered, so
// that the next query for one finds its answers with one table read: the
// zone's product and address tables are a chain of maps, and under load
// every step of that chain was a cache miss (it was a tenth of the agent's
// CPU per answer in bench/RESULTS.md's profile). An entry is good for the
// zone snapshot it was found in and no other, so a change to the zone
// makes it stale at once; one reader owns the table, so it takes no lock.
//
// The table is a set of two entries per hash of the name, the latest found
// first. It keeps the answers it holds from being freed, so it is emptied
// when the cache has changed, at most once a second, at the first query
// after that second.
type hotAnswers struct {
	// The sets come first: the table is allocated on its own, so each
	// 32-byte set then lies in one cache line.
	sets [hotSets][2]hotSlot
	seed maphash.Seed
	// swept is when the table was last compared with the cache's index
	// (unix nanoseconds); index is the cache's index it was emptied at.
	swept int64
	index uint64
}

// hotSets is the number of sets in a reader's table: 8,192 sets of two
// 16-byte entries (256 KiB), where the bench's 5,000 addresses, all read
// in turn, leave about one set in forty with more names than entries.
const hotSets = 1 << 13

// hotSlot is an address found in the zone snapshot of index index.
type hotSlot struct {
	index uint64
	aa    *addrAnswers
}

func newHotAnswers() *hotAnswers { return &hotAnswers{seed: maphash.MakeSeed()} }

// sweep empties the table if a second has passed since it last looked and
// the cache has changed since it was last emptied.
func (t *hotAnswers) sweep(now int64, c *cache.Cache) {
	if now-t.swept < int64(time.Second) && now >= t.swept {
		return
	}
	t.swept = now
	if idx := c.Index(); idx != t.index {
		t.sets = [hotSets][2]hotSlot{}
		t.index = idx
	}
}

// set returns the set of the address called name (lower case, fully
// qualified).
func (t *hotAnswers) set(name string) *[2]hotSlot {
	return &t.sets[maphash.String(t.seed, name)&(hotSets-1)]
}

// hotGet returns the answers of the address called name in zone snapshot
// z if set holds them, nil otherwise. A nil set holds nothing.
func hotGet(set *[2]hotSlot, z *cache.Zone, name string) *addrAnswers {
	if set == nil {
		return nil
	}
	for i := range set {
		if s := set[i]; s.index == z.Index && s.aa != nil && s.aa.name == name {
			return s.aa
		}
	}
	return nil
}

// hotPut keeps in set the answers aa, found in zone snapshot z, as the
// latest; the older of the two entries goes.
func hotPut(set *[2]hotSlot, z *cache.Zone, aa *addrAnswers) {
	if set != nil {
		set[1] = set[0]
		set[0] = hotSlot{index: z.Index, aa: aa}
	}
}

// defaultUseEvery is how often, at most, the fast path tells the demand
// that an address is read, unless HandlerOptions say otherwise: watch's
// usage records reads to the 100 ms.
const defaultUseEvery = 100 * time.Millisecond

// maxNameLen is the longest name in wire form (RFC 1035 §3.1).
const maxNameLen = 255

// maxLabelLen is the longest label (RFC 1035 §2.3.4).
const maxLabelLen = 63

// labelLower maps each byte cache.ValidLabel allows in a label to its lower
// case, and every other byte to 0: the fast path checks and lower-cases a
// name in one pass.
var labelLower = func() (t [256]byte) {
	for c := range 256 {
		if b := []byte{byte(c)}; cache.ValidLabel(b) {
			t[c] = cache.Lower(string(b))[0]
		}
	}
	return t
}()

// maxLabels is the most labels a name can have: one byte each and a dot.
const maxLabels = (maxNameLen + 1) / 2

// rawQuery is what ServeRaw reads from a packet.
type rawQuery struct {
	patch
	name    []byte // the question name in wire form, as sent
	udpSize uint16
	// The name in presentation form, lower case and fully qualified, is
	// lowerLen bytes of the buffer given to parseQuery; it has labels
	// labels, label i starting at starts[i], and starts[labels] is its
	// length.
	lowerLen int
	labels   int
	starts   [maxLabels + 1]uint8
}

// parseQuery reads a packet that is exactly a standard query with one
// question of class IN and type SRV, A, AAAA or ANY, whose name is made of
// letters, digits and hyphens and uncompressed, and at most an OPT record
// of version 0 with no options; it writes the name into lower (see
// rawQuery). Anything else is not ok.
func parseQuery(pkt []byte, lower *[maxNameLen]byte, q *rawQuery) bool {
	if len(pkt) < 12 {
		return false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	qd, an, ns, ar := binary.BigEndian.Uint16(pkt[4:]), binary.BigEndian.Uint16(pkt[6:]), binary.BigEndian.Uint16(pkt[8:]), binary.BigEndian.Uint16(pkt[10:])
	if flags&qrBit != 0 || (flags>>11)&0xF != mdns.OpcodeQuery || qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return false
	}
	q.labels, q.opt, q.do, q.udpSize = 0, false, false, 0
	q.id = binary.BigEndian.Uint16(pkt)
	q.rd = flags&(1<<8) != 0
	q.cd = flags&(1<<4) != 0
	// A label's length byte in wire form is where the label starts in
	// presentation form, its dot where the next length byte is.
	off := 12
	for {
		if off >= len(pkt) {
			return false
		}
		l := int(pkt[off])
		if l == 0 {
			off++
			break
		}
		pos := off - 12
		if l > maxLabelLen || off+1+l > len(pkt) || pos+l >= maxNameLen {
			return false // a pointer, past the end, or too long
		}
		q.starts[q.labels] = uint8(pos)
		q.labels++
		for i, c := range pkt[off+1 : off+1+l] {
			if lc := labelLower[c]; lc != 0 {
				lower[pos+i] = lc
			} else {
				return false // a byte no label has (cache.ValidLabel)
			}
		}
		lower[pos+l] = '.'
		off += 1 + l
	}
	q.lowerLen = off - 13
	q.starts[q.labels] = uint8(q.lowerLen)
	if off-12 > maxNameLen || off == 13 || off+4 > len(pkt) {
		return false
	}
	q.name = pkt[12:off]
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	switch q.qtype {
	case mdns.TypeSRV, mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY:
	default:
		return false
	}
	if binary.BigEndian.Uint16(pkt[off+2:]) != mdns.ClassINET {
		return false
	}
	off += 4
	if ar == 1 {
		// OPT: the root name, type 41, the UDP size as class, then
		// extended rcode, version and flags as TTL, and no RDATA.
		if off+11 != len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != mdns.TypeOPT ||
			pkt[off+6] != 0 || binary.BigEndian.Uint16(pkt[off+9:]) != 0 {
			return false
		}
		q.opt = true
		q.udpSize = binary.BigEndian.Uint16(pkt[off+3:])
		q.do = pkt[off+7]&0x80 != 0
		off += 11
	}
	return off == len(pkt)
}
