package dns

import (
	"encoding/binary"
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
	start := time.Now()
	if _, tcp := w.LocalAddr().(*net.TCPAddr); tcp {
		return false // the limits below are UDP's
	}
	q, ok := parseQuery(pkt)
	if !ok {
		return false
	}
	// The name is read in place, in a buffer on the stack: its labels
	// serve the lookups below and nothing keeps them, but what is handed
	// to the demand, which may keep it, is copied first (use).
	var lower [maxNameLen]byte
	n := presentLower(lower[:], q.name)
	nm := parseName(unsafe.String(&lower[0], n), h.cfg.Domain)
	if nm.kind != kindAddress && nm.kind != kindNode {
		return false
	}
	product := nm.product()
	use := func() { h.demand.Use(strings.Clone(nm.zone()), strings.Clone(product)) }
	z := h.cache.Zone(nm.zone())
	var wa wire
	if nm.kind == kindAddress && z != nil && z.Synced {
		aa := addressAnswers(z, &nm)
		if aa == nil {
			use()
			return false // the full path answers, and waits if it must
		}
		// The demand records reads to the 100 ms (watch's usage): an
		// address read thousands of times a second tells it ten times a
		// second, not at every query.
		if now := start.UnixNano(); now-aa.used.Load() >= int64(useEvery) {
			aa.used.Store(now)
			use()
		}
		if !aa.healthy || aa.qlen != len(q.name) {
			return false
		}
		wa = aa.answer(q.qtype)
	} else {
		use()
		if z.State(product) != cache.Present {
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

// useEvery is how often, at most, the fast path tells the demand that an
// address is read.
const useEvery = 100 * time.Millisecond

// maxNameLen is the longest name in wire form (RFC 1035 §3.1).
const maxNameLen = 255

// rawQuery is what ServeRaw reads from a packet.
type rawQuery struct {
	patch
	name    []byte // the question name in wire form, as sent
	udpSize uint16
}

// parseQuery reads a packet that is exactly a standard query with one
// question of class IN and type SRV, A, AAAA or ANY, whose name is made of
// letters, digits and hyphens and uncompressed, and at most an OPT record
// of version 0 with no options. Anything else is not ok.
func parseQuery(pkt []byte) (q rawQuery, ok bool) {
	if len(pkt) < 12 {
		return q, false
	}
	flags := binary.BigEndian.Uint16(pkt[2:])
	qd, an, ns, ar := binary.BigEndian.Uint16(pkt[4:]), binary.BigEndian.Uint16(pkt[6:]), binary.BigEndian.Uint16(pkt[8:]), binary.BigEndian.Uint16(pkt[10:])
	if flags&qrBit != 0 || (flags>>11)&0xF != mdns.OpcodeQuery || qd != 1 || an != 0 || ns != 0 || ar > 1 {
		return q, false
	}
	q.id = binary.BigEndian.Uint16(pkt)
	q.rd = flags&(1<<8) != 0
	q.cd = flags&(1<<4) != 0
	off := 12
	for {
		if off >= len(pkt) {
			return q, false
		}
		l := int(pkt[off])
		if l == 0 {
			off++
			break
		}
		if off+1+l > len(pkt) || !cache.ValidLabel(pkt[off+1:off+1+l]) {
			return q, false // past the end, a pointer, or a label with other bytes
		}
		off += 1 + l
	}
	if off-12 > maxNameLen || off == 13 || off+4 > len(pkt) {
		return q, false
	}
	q.name = pkt[12:off]
	q.qtype = binary.BigEndian.Uint16(pkt[off:])
	switch q.qtype {
	case mdns.TypeSRV, mdns.TypeA, mdns.TypeAAAA, mdns.TypeANY:
	default:
		return q, false
	}
	if binary.BigEndian.Uint16(pkt[off+2:]) != mdns.ClassINET {
		return q, false
	}
	off += 4
	if ar == 1 {
		// OPT: the root name, type 41, the UDP size as class, then
		// extended rcode, version and flags as TTL, and no RDATA.
		if off+11 != len(pkt) || pkt[off] != 0 || binary.BigEndian.Uint16(pkt[off+1:]) != mdns.TypeOPT ||
			pkt[off+6] != 0 || binary.BigEndian.Uint16(pkt[off+9:]) != 0 {
			return q, false
		}
		q.opt = true
		q.udpSize = binary.BigEndian.Uint16(pkt[off+3:])
		q.do = pkt[off+7]&0x80 != 0
		off += 11
	}
	return q, off == len(pkt)
}

// presentLower writes a wire name checked by parseQuery in presentation
// form, lower case and fully qualified, into buf and returns its length.
func presentLower(buf []byte, name []byte) int {
	n := 0
	for off := 0; name[off] != 0; {
		l := int(name[off])
		for _, c := range name[off+1 : off+1+l] {
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			buf[n] = c
			n++
		}
		buf[n] = '.'
		n++
		off += 1 + l
	}
	return n
}
