package dns

import (
	"strconv"
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

// kind is what a query name denotes, from its labels alone.
type kind uint8

const (
	kindOutside kind = iota // not under the domain: REFUSED
	kindInvalid             // cannot exist: NXDOMAIN
	kindApex                // <domain>
	kindOne                 // <x>.<domain>: a zone, or ns<i> of the local zone
	kindZoneNS              // ns<i>.<zone>.<domain>
	kindNode                // <node>.node.<zone>.<domain>
	kindAddr                // <hex-ip>.addr.<zone>.<domain>
	kindPrefix              // a proper prefix of an address: empty non-terminal or nothing
	kindAddress             // <service>.<job>.<env>.<product>.<zone>.<domain>
)

// name is a parsed query name. All strings are lower case and, but for
// rest, substrings of the lower-cased query name, so parsing allocates only
// when the query has upper-case letters.
type name struct {
	kind kind
	// labels below the domain, right to left: zone, product, env, job,
	// service (for a node: zone, "node", node).
	labels [5]string
	n      int
	// rest is the part below <product>.<zone>: "service.job.env" for an
	// address, "env" or "job.env" for a prefix.
	rest string
}

func (n *name) zone() string { return n.labels[0] }

// product returns the product a name reads, "" for names of the zone
// itself (ns<i>, nodes, addresses, the zone's own name).
func (n *name) product() string {
	switch n.kind {
	case kindAddress:
		return n.labels[1]
	case kindPrefix:
		if n.n > 2 || n.labels[1] != "node" && n.labels[1] != "addr" {
			return n.labels[1]
		}
	}
	return ""
}

// parseName classifies a query name (presentation form, fully qualified)
// against domain (lower case, fully qualified).
func parseName(qname, domain string) name {
	lower := cache.Lower(qname)
	var n name
	if strings.IndexByte(lower, '\\') >= 0 {
		// Escapes: no glimpse name has them, but an escaped dot can make a
		// name that looks under the domain lie outside it.
		if mdns.IsSubDomain(domain, lower) {
			n.kind = kindInvalid
		} else {
			n.kind = kindOutside
		}
		return n
	}
	if lower == domain {
		n.kind = kindApex
		return n
	}
	if len(lower) <= len(domain) || !strings.HasSuffix(lower, domain) || lower[len(lower)-len(domain)-1] != '.' {
		n.kind = kindOutside
		return n
	}
	below := lower[:len(lower)-len(domain)-1]
	end := len(below)
	for end > 0 {
		dot := strings.LastIndexByte(below[:end], '.')
		label := below[dot+1 : end]
		if n.n == len(n.labels) || !cache.ValidLabel(label) {
			n.kind = kindInvalid
			return n
		}
		n.labels[n.n] = label
		n.n++
		if dot < 0 {
			break
		}
		end = dot
		if n.n == 2 {
			n.rest = below[:end]
		}
	}
	if end == 0 && len(below) > 0 && below[0] == '.' || len(below) == 0 {
		n.kind = kindInvalid // an empty label
		return n
	}
	switch n.n {
	case 1:
		n.kind = kindOne
	case 2:
		if _, ok := nsIndex(n.labels[1]); ok {
			n.kind = kindZoneNS
		} else {
			n.kind = kindPrefix
		}
	case 3:
		switch n.labels[1] {
		case "node":
			n.kind = kindNode
		case "addr":
			n.kind = kindAddr
		default:
			n.kind = kindPrefix
		}
	case 4:
		n.kind = kindPrefix
	case 5:
		n.kind = kindAddress
	}
	return n
}

// nsIndex parses "ns<i>" (i ≥ 1) and returns i-1.
func nsIndex(label string) (int, bool) {
	if len(label) < 3 || label[:2] != "ns" || label[2] == '0' {
		return 0, false
	}
	i, err := strconv.Atoi(label[2:])
	if err != nil || i < 1 {
		return 0, false
	}
	return i - 1, true
}
