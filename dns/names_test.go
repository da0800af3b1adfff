package dns

import (
	"slices"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/cache"
)

const testDomain = "srv.glimpse.io."

func TestParseName(t *testing.T) {
	label63 := strings.Repeat("a", 63)
	label64 := strings.Repeat("a", 64)
	tests := []struct {
		qname  string
		kind   kind
		labels []string // right to left, as parseName stores them
		rest   string
	}{
		// The apex, in any case.
		{qname: "srv.glimpse.io.", kind: kindApex},
		{qname: "SRV.Glimpse.IO.", kind: kindApex},

		// Outside the domain, including suffix tricks.
		{qname: ".", kind: kindOutside},
		{qname: "io.", kind: kindOutside},
		{qname: "glimpse.io.", kind: kindOutside},
		{qname: "xsrv.glimpse.io.", kind: kindOutside},
		{qname: "a.xsrv.glimpse.io.", kind: kindOutside},
		{qname: "http.stream.prod.goku.dc1.xsrv.glimpse.io.", kind: kindOutside},
		{qname: "srv.glimpse.io.example.com.", kind: kindOutside},
		{qname: "srv.glimpse.io", kind: kindOutside}, // not fully qualified
		{qname: "example.com.", kind: kindOutside},
		{qname: "", kind: kindOutside},

		// One label: a zone, or ns<i> of the local zone (the handler decides).
		{qname: "dc1.srv.glimpse.io.", kind: kindOne, labels: []string{"dc1"}},
		{qname: "DC1.SRV.GLIMPSE.IO.", kind: kindOne, labels: []string{"dc1"}},
		{qname: "ns1.srv.glimpse.io.", kind: kindOne, labels: []string{"ns1"}},

		// Two labels: ns<i> of a zone, else a product (a prefix).
		{qname: "ns1.dc1.srv.glimpse.io.", kind: kindZoneNS, labels: []string{"dc1", "ns1"}},
		{qname: "NS12.dc1.srv.glimpse.io.", kind: kindZoneNS, labels: []string{"dc1", "ns12"}},
		{qname: "ns0.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "ns0"}},
		{qname: "ns01.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "ns01"}},
		{qname: "nsx.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "nsx"}},
		{qname: "ns.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "ns"}},
		{qname: "goku.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "goku"}},
		{qname: "node.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "node"}},
		{qname: "addr.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "addr"}},

		// Three labels: a node, an address by IP, or <env>.<product>.
		{qname: "web-1.node.dc1.srv.glimpse.io.", kind: kindNode, labels: []string{"dc1", "node", "web-1"}, rest: "web-1"},
		{qname: "Web-1.NODE.dc1.srv.glimpse.io.", kind: kindNode, labels: []string{"dc1", "node", "web-1"}, rest: "web-1"},
		{qname: "0a000001.addr.dc1.srv.glimpse.io.", kind: kindAddr, labels: []string{"dc1", "addr", "0a000001"}, rest: "0a000001"},
		{qname: "0A000001.Addr.dc1.srv.glimpse.io.", kind: kindAddr, labels: []string{"dc1", "addr", "0a000001"}, rest: "0a000001"},
		{qname: "ns1.node.dc1.srv.glimpse.io.", kind: kindNode, labels: []string{"dc1", "node", "ns1"}, rest: "ns1"},
		{qname: "prod.goku.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "goku", "prod"}, rest: "prod"},

		// Four labels: <job>.<env>.<product>.
		{qname: "stream.prod.goku.dc1.srv.glimpse.io.", kind: kindPrefix, labels: []string{"dc1", "goku", "prod", "stream"}, rest: "stream.prod"},

		// Five labels: an address.
		{qname: "http.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindAddress,
			labels: []string{"dc1", "goku", "prod", "stream", "http"}, rest: "http.stream.prod"},
		{qname: "HTTP.Stream.PROD.goku.Dc1.SRV.glimpse.IO.", kind: kindAddress,
			labels: []string{"dc1", "goku", "prod", "stream", "http"}, rest: "http.stream.prod"},
		{qname: "a-1.b-2.c-3.d-4.e-5.srv.glimpse.io.", kind: kindAddress,
			labels: []string{"e-5", "d-4", "c-3", "b-2", "a-1"}, rest: "a-1.b-2.c-3"},
		{qname: label63 + ".stream.prod.goku.dc1.srv.glimpse.io.", kind: kindAddress,
			labels: []string{"dc1", "goku", "prod", "stream", label63}, rest: label63 + ".stream.prod"},

		// Names that cannot exist.
		{qname: "x.http.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid},     // too many labels
		{qname: "a.b.c.d.e.f.g.srv.glimpse.io.", kind: kindInvalid},                   // far too many
		{qname: "bad_label.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid},  // underscore
		{qname: "_srv._tcp.goku.dc1.srv.glimpse.io.", kind: kindInvalid},              // underscores
		{qname: "http.stream.prod.go_ku.dc1.srv.glimpse.io.", kind: kindInvalid},      // underscore, inner label
		{qname: "dc_1.srv.glimpse.io.", kind: kindInvalid},                            // underscore, zone
		{qname: "http..prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid},             // empty label
		{qname: "goku..srv.glimpse.io.", kind: kindInvalid},                           // empty zone label
		{qname: "..srv.glimpse.io.", kind: kindInvalid},                               // empty label
		{qname: ".srv.glimpse.io.", kind: kindInvalid},                                // empty label
		{qname: ".dc1.srv.glimpse.io.", kind: kindInvalid},                            // leading empty label
		{qname: label64 + ".stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid}, // 64 characters
		{qname: label64 + ".srv.glimpse.io.", kind: kindInvalid},                      // 64 characters, zone
		{qname: `a\.b.prod.goku.dc1.srv.glimpse.io.`, kind: kindInvalid},              // escaped dot
		{qname: `h\065.stream.prod.goku.dc1.srv.glimpse.io.`, kind: kindInvalid},      // escaped byte
		{qname: "ht*p.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid},       // wildcard char
		{qname: "*.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid},          // wildcard label
		{qname: "h\u00e9llo.stream.prod.goku.dc1.srv.glimpse.io.", kind: kindInvalid}, // non-ASCII
	}
	for _, tt := range tests {
		t.Run(tt.qname, func(t *testing.T) {
			n := parseName(tt.qname, testDomain)
			if n.kind != tt.kind {
				t.Fatalf("parseName(%q).kind = %d, want %d", tt.qname, n.kind, tt.kind)
			}
			switch tt.kind {
			case kindOutside, kindInvalid, kindApex:
				return // labels carry no meaning
			}
			if got := n.labels[:n.n]; !slices.Equal(got, tt.labels) {
				t.Errorf("labels = %q, want %q", got, tt.labels)
			}
			if n.rest != tt.rest {
				t.Errorf("rest = %q, want %q", n.rest, tt.rest)
			}
			if n.zone() != tt.labels[0] {
				t.Errorf("zone() = %q, want %q", n.zone(), tt.labels[0])
			}
		})
	}
}

// TestParseNameNoAllocLowerCase checks the documented property that a
// lower-case query name is parsed without allocating.
func TestParseNameNoAllocLowerCase(t *testing.T) {
	q := "http.stream.prod.goku.dc1.srv.glimpse.io."
	allocs := testing.AllocsPerRun(100, func() {
		if n := parseName(q, testDomain); n.kind != kindAddress {
			t.Fatalf("kind = %d", n.kind)
		}
	})
	if allocs != 0 {
		t.Errorf("parseName of a lower-case name allocates %v times, want 0", allocs)
	}
}

func TestNSIndex(t *testing.T) {
	tests := []struct {
		label string
		i     int
		ok    bool
	}{
		{"ns1", 0, true},
		{"ns2", 1, true},
		{"ns9", 8, true},
		{"ns10", 9, true},
		{"ns123", 122, true},
		{"ns0", 0, false},
		{"ns00", 0, false},
		{"ns01", 0, false},
		{"ns010", 0, false},
		{"nsx", 0, false},
		{"ns1x", 0, false},
		{"ns-1", 0, false},
		{"ns", 0, false},
		{"n", 0, false},
		{"", 0, false},
		{"xns1", 0, false},
		{"ns99999999999999999999999", 0, false}, // overflows int
	}
	for _, tt := range tests {
		i, ok := nsIndex(tt.label)
		if ok != tt.ok || ok && i != tt.i {
			t.Errorf("nsIndex(%q) = %d, %v; want %d, %v", tt.label, i, ok, tt.i, tt.ok)
		}
	}
}

// wireUnder reports whether name, in presentation format, is domain or
// below it, label by label as packed on the wire (escapes resolved); ok is
// false for a name that does not pack.
func wireUnder(name, domain string) (under, ok bool) {
	labels := func(s string) []string {
		buf := make([]byte, 512)
		off, err := mdns.PackDomainName(s, buf, 0, nil, false)
		if err != nil {
			return nil
		}
		var out []string
		for i := 0; i < off && buf[i] != 0; i += 1 + int(buf[i]) {
			out = append(out, strings.ToLower(string(buf[i+1:i+1+int(buf[i])])))
		}
		return out
	}
	n, d := labels(name), labels(domain)
	if n == nil {
		return false, false
	}
	return len(n) >= len(d) && slices.Equal(n[len(n)-len(d):], d), true
}

// FuzzParseName checks that parseName never panics and that whatever it
// classifies as a name under the domain is made of valid, lower-case labels
// that spell the query name.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{
		"srv.glimpse.io.",
		"SRV.GLIMPSE.IO.",
		"glimpse.io.",
		"xsrv.glimpse.io.",
		".",
		"",
		"dc1.srv.glimpse.io.",
		"ns1.srv.glimpse.io.",
		"ns1.dc1.srv.glimpse.io.",
		"ns01.dc1.srv.glimpse.io.",
		"goku.dc1.srv.glimpse.io.",
		"web-1.node.dc1.srv.glimpse.io.",
		"0a000001.addr.dc1.srv.glimpse.io.",
		"prod.goku.dc1.srv.glimpse.io.",
		"stream.prod.goku.dc1.srv.glimpse.io.",
		"http.stream.prod.goku.dc1.srv.glimpse.io.",
		"HTTP.Stream.Prod.Goku.DC1.srv.glimpse.io.",
		"x.http.stream.prod.goku.dc1.srv.glimpse.io.",
		"bad_label.stream.prod.goku.dc1.srv.glimpse.io.",
		"http..prod.goku.dc1.srv.glimpse.io.",
		"..srv.glimpse.io.",
		".srv.glimpse.io.",
		`a\.b.prod.goku.dc1.srv.glimpse.io.`,
		strings.Repeat("a", 64) + ".srv.glimpse.io.",
		"\xff.srv.glimpse.io.",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, qname string) {
		if strings.IndexByte(qname, '\\') >= 0 {
			// A query's name comes off the wire, where miekg/dns writes it
			// with escapes for special characters only ("\\s" never, "\\."
			// and "\\000" do): parse the name in that form.
			buf := make([]byte, 512)
			off, err := mdns.PackDomainName(qname, buf, 0, nil, false)
			if err != nil {
				parseName(qname, testDomain) // must not panic either
				return
			}
			if qname, _, err = mdns.UnpackDomainName(buf[:off], 0); err != nil {
				t.Fatalf("%q packs but does not unpack: %v", qname, err)
			}
		}
		n := parseName(qname, testDomain)
		lower := cache.Lower(qname)
		under := lower == testDomain || strings.HasSuffix(lower, "."+testDomain)
		if strings.IndexByte(qname, '\\') >= 0 {
			// With escapes the text misleads ("\\.srv.glimpse.io." is the
			// label ".srv" under glimpse.io.): compare the labels on the wire.
			under, _ = wireUnder(qname, testDomain) // it packs: see above
		}
		switch n.kind {
		case kindOutside:
			if under {
				t.Fatalf("%q: outside, but it is under the domain", qname)
			}
			return
		case kindApex:
			if lower != testDomain {
				t.Fatalf("%q: apex, but it is not the domain", qname)
			}
			return
		case kindInvalid:
			if !under || lower == testDomain {
				t.Fatalf("%q: invalid, but it is not under the domain", qname)
			}
			return
		}
		if n.n < 1 || n.n > len(n.labels) {
			t.Fatalf("%q: kind %d with %d labels", qname, n.kind, n.n)
		}
		for i, l := range n.labels[:n.n] {
			if !cache.ValidLabel(l) || l != cache.Lower(l) {
				t.Fatalf("%q: label %d %q is not a valid lower-case label", qname, i, l)
			}
		}
		// The labels spell the query name.
		parts := make([]string, 0, n.n+1)
		for i := n.n - 1; i >= 0; i-- {
			parts = append(parts, n.labels[i])
		}
		parts = append(parts, testDomain)
		if got := strings.Join(parts, "."); got != lower {
			t.Fatalf("%q: labels spell %q", qname, got)
		}
		want := map[kind]int{kindOne: 1, kindZoneNS: 2, kindNode: 3, kindAddr: 3, kindAddress: 5}
		if w, ok := want[n.kind]; ok && n.n != w {
			t.Fatalf("%q: kind %d with %d labels, want %d", qname, n.kind, n.n, w)
		}
		switch n.kind {
		case kindAddress:
			if want := n.labels[4] + "." + n.labels[3] + "." + n.labels[2]; n.rest != want {
				t.Fatalf("%q: rest = %q, want %q", qname, n.rest, want)
			}
		case kindPrefix:
			if n.n < 2 || n.n > 4 {
				t.Fatalf("%q: prefix with %d labels", qname, n.n)
			}
		case kindZoneNS:
			if _, ok := nsIndex(n.labels[1]); !ok {
				t.Fatalf("%q: zone NS without an ns<i> label", qname)
			}
		}
	})
}
