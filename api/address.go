package api

import (
	"fmt"
	"strings"
)

// Wildcard stands for any service, job or env in an address.
const Wildcard = "*"

// addressForm is the shape of an address, for error messages.
const addressForm = "<service>.<job>.<env>.<product>.<zone>"

// maxAddressLen is the length of the longest valid address: five labels of
// 63 characters and four dots.
const maxAddressLen = 5*63 + 4

// labelNames names the labels of an address, in order.
var labelNames = [5]string{"service", "job", "env", "product", "zone"}

// Address is a glimpse address, <service>.<job>.<env>.<product>.<zone>:
// the fleet ordered from the zone (a Consul datacenter) down. Service, Job
// and Env may be Wildcard.
type Address struct {
	Service, Job, Env, Product, Zone string
}

// ParseAddress parses an address as the agent takes it: exactly five
// labels, each a DNS label (letters, digits and '-', 1 to 63 characters)
// compared case-insensitively; service, job and env may be Wildcard,
// product and zone may not. The labels are returned in lower case. The
// error says what is wrong.
func ParseAddress(s string) (Address, error) {
	if s == "" {
		return Address{}, fmt.Errorf("address is empty, want %s", addressForm)
	}
	if len(s) > maxAddressLen {
		return Address{}, fmt.Errorf("address is %d characters long, longer than any valid address (%d)", len(s), maxAddressLen)
	}
	var labels [5]string
	n := strings.Count(s, ".") + 1
	if n != len(labels) {
		return Address{}, fmt.Errorf("address %q has %d labels, want 5: %s", s, n, addressForm)
	}
	rest := s
	for i := range labels {
		var label string
		label, rest, _ = strings.Cut(rest, ".")
		switch {
		case label == "":
			return Address{}, fmt.Errorf("address %q: the %s label is empty", s, labelNames[i])
		case label == Wildcard:
			if i >= 3 {
				return Address{}, fmt.Errorf("address %q: the %s label cannot be %q; only service, job and env can", s, labelNames[i], Wildcard)
			}
		case len(label) > 63:
			return Address{}, fmt.Errorf("address %q: the %s label is %d characters long, at most 63 are allowed", s, labelNames[i], len(label))
		case !ValidLabel(label):
			return Address{}, fmt.Errorf("address %q: the %s label %q has characters other than letters, digits and '-'", s, labelNames[i], label)
		}
		labels[i] = strings.ToLower(label)
	}
	return Address{Service: labels[0], Job: labels[1], Env: labels[2], Product: labels[3], Zone: labels[4]}, nil
}

// String returns the address in its dotted form.
func (a Address) String() string {
	return a.Service + "." + a.Job + "." + a.Env + "." + a.Product + "." + a.Zone
}

// Wild reports whether the address has a wildcard, and so may match
// several addresses.
func (a Address) Wild() bool {
	return a.Service == Wildcard || a.Job == Wildcard || a.Env == Wildcard
}

// Matches reports whether a concrete address b (as a Message or an
// Instance names it) is one a names.
func (a Address) Matches(b Address) bool {
	eq := func(p, v string) bool { return p == Wildcard || strings.EqualFold(p, v) }
	return eq(a.Service, b.Service) && eq(a.Job, b.Job) && eq(a.Env, b.Env) &&
		strings.EqualFold(a.Product, b.Product) && strings.EqualFold(a.Zone, b.Zone)
}

// ValidLabel reports whether s is a label of a glimpse address: 1 to 63
// letters, digits and '-'. It takes bytes too, as the agent reads labels
// from DNS packets.
func ValidLabel[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
