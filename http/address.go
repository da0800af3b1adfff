package httpapi

import (
	"fmt"
	"strings"

	"glimpse/cache"
)

// addressForm is the shape of an address, for error messages.
const addressForm = "<service>.<job>.<env>.<product>.<zone>"

// maxAddressLen is the length of the longest valid address: five labels of
// 63 characters and four dots.
const maxAddressLen = 5*63 + 4

// labelNames names the labels of an address, in order.
var labelNames = [5]string{"service", "job", "env", "product", "zone"}

// ParseAddress parses an address <service>.<job>.<env>.<product>.<zone> as
// the HTTP API takes it: exactly five labels, each a DNS label (letters,
// digits and '-', 1 to 63 characters) compared case-insensitively; service,
// job and env may be cache.Wildcard ("*"), product and zone may not. The
// query's fields are in lower case. The error says what is wrong, in words
// fit for an API client.
func ParseAddress(s string) (cache.Query, error) {
	if s == "" {
		return cache.Query{}, fmt.Errorf("address is empty, want %s", addressForm)
	}
	if len(s) > maxAddressLen {
		return cache.Query{}, fmt.Errorf("address is %d characters long, longer than any valid address (%d)", len(s), maxAddressLen)
	}
	var labels [5]string
	n := strings.Count(s, ".") + 1
	if n != len(labels) {
		return cache.Query{}, fmt.Errorf("address %q has %d labels, want 5: %s", s, n, addressForm)
	}
	rest := s
	for i := range labels {
		var label string
		label, rest, _ = strings.Cut(rest, ".")
		switch {
		case label == "":
			return cache.Query{}, fmt.Errorf("address %q: the %s label is empty", s, labelNames[i])
		case label == cache.Wildcard:
			if i >= 3 {
				return cache.Query{}, fmt.Errorf("address %q: the %s label cannot be %q; only service, job and env can", s, labelNames[i], cache.Wildcard)
			}
		case len(label) > 63:
			return cache.Query{}, fmt.Errorf("address %q: the %s label is %d characters long, at most 63 are allowed", s, labelNames[i], len(label))
		case !cache.ValidLabel(label):
			return cache.Query{}, fmt.Errorf("address %q: the %s label %q has characters other than letters, digits and '-'", s, labelNames[i], label)
		}
		labels[i] = cache.Lower(label)
	}
	return cache.Query{Service: labels[0], Job: labels[1], Env: labels[2], Product: labels[3], Zone: labels[4]}, nil
}

// queryName returns the address a query names, in its dotted form.
func queryName(q cache.Query) string {
	return q.Service + "." + q.Job + "." + q.Env + "." + q.Product + "." + q.Zone
}
