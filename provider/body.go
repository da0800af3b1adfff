package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"glimpse/cache"
)

// MaxBody is the largest body a provider may send or write to its file.
const MaxBody = 4 << 20

// MaxInstances is the most instances one provider may state.
const MaxInstances = 10000

// Check types.
const (
	CheckTCP  = "tcp"
	CheckHTTP = "http"
	CheckTTL  = "ttl"
)

// DefaultInterval is the interval of a tcp or http check that states none.
const DefaultInterval = "10s"

// Body is the whole desired state of one provider on this host, as sent in
// PUT /v1/providers/<name> or written to <name>.json.
type Body struct {
	Instances []Instance `json:"instances"`
}

// Instance is one service instance a provider runs. Service, Job, Env and
// Product are glimpse labels; Address is an IP, or empty for the Consul
// node's address.
type Instance struct {
	Service string `json:"service"`
	Job     string `json:"job"`
	Env     string `json:"env"`
	Product string `json:"product"`
	Port    int    `json:"port"`
	Address string `json:"address,omitempty"`
	Check   *Check `json:"check,omitempty"`
}

// Check is the optional health check of an instance, run by the Consul
// agent.
type Check struct {
	// Type is "tcp", "http" or "ttl".
	Type string `json:"type"`
	// Target is the URL of an http check or the host:port of a tcp check.
	// Empty means the instance itself: http://address:port/ or
	// address:port. A ttl check has none.
	Target string `json:"target,omitempty"`
	// Interval and Timeout are Go durations ("10s") of tcp and http checks.
	// Interval defaults to DefaultInterval, Timeout to Consul's default.
	Interval string `json:"interval,omitempty"`
	Timeout  string `json:"timeout,omitempty"`
	// TTL is the Go duration of a ttl check; required for that type only.
	TTL string `json:"ttl,omitempty"`
}

// ErrTooLarge is wrapped by the ValidationError of a body over the size
// limit, for callers that answer it differently (413).
var ErrTooLarge = errors.New("body too large")

// ValidationError is what is wrong with a provider's body or name. Field is
// the path of the bad field, e.g. "instances[3].port", or empty when the
// body as a whole is bad (not JSON, too large).
type ValidationError struct {
	Field string
	Msg   string
	Err   error // wrapped cause, may be nil
}

func (e *ValidationError) Error() string {
	if e.Field == "" {
		return e.Msg
	}
	return e.Field + ": " + e.Msg
}

func (e *ValidationError) Unwrap() error { return e.Err }

func invalid(field, format string, args ...any) *ValidationError {
	return &ValidationError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// ValidName reports whether name is a valid provider name: a glimpse label
// (letters, digits and '-', 1 to 63 characters), compared case-insensitively.
// Provider names become file names and Consul tags, so nothing else is
// allowed.
func ValidName(name string) bool {
	return cache.ValidLabel(name)
}

// CheckName returns the lower-cased provider name, or a ValidationError if
// it is not valid.
func CheckName(name string) (string, error) {
	if !ValidName(name) {
		return "", invalid("provider", "%q is not a valid name (letters, digits and '-', 1 to 63 characters)", name)
	}
	return cache.Lower(name), nil
}

// Parse reads a provider's body of at most limit bytes from r, decodes it
// strictly (no unknown fields, no trailing data, "instances" required),
// normalizes it (labels in lower case, addresses in canonical form) and
// validates it. Every error about the body's content is a *ValidationError
// naming the field; an error reading r is returned as it is, wrapped.
func Parse(r io.Reader, limit int64) (*Body, error) {
	data, err := readCapped(r, limit+1)
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, &ValidationError{Msg: fmt.Sprintf("body larger than %d bytes", limit), Err: ErrTooLarge}
	}
	return parseBytes(data)
}

// readCapped reads r to its end or to n bytes, whichever comes first, in a
// buffer that grows as the data comes and never beyond n: a body cut off
// before its end holds what arrived, not a doubling of it.
func readCapped(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, 64<<10))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(n, int64(2*cap(buf))))
			copy(grown, buf)
			buf = grown
		}
		m, err := r.Read(buf[len(buf):min(int64(cap(buf)), n)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// parseBytes is Parse of a body already read (and within its limit).
func parseBytes(data []byte) (*Body, error) {
	var top struct {
		Instances *[]json.RawMessage `json:"instances"`
	}
	if err := decodeStrict(data, &top, ""); err != nil {
		return nil, err
	}
	return parseInstances(top.Instances)
}

// parseInstances decodes, normalizes and validates the "instances" of a
// body or of a recorded state (nil: the field was missing). It decodes in
// stages, so that errors can name the instance and field they are about.
func parseInstances(raws *[]json.RawMessage) (*Body, error) {
	if raws == nil {
		return nil, invalid("instances", "missing (send [] to remove all instances)")
	}
	if n := len(*raws); n > MaxInstances {
		return nil, invalid("instances", "%d instances, at most %d allowed", n, MaxInstances)
	}
	b := &Body{Instances: make([]Instance, len(*raws))}
	for i, raw := range *raws {
		field := fmt.Sprintf("instances[%d]", i)
		// Instance's fields, with the check left raw to decode on its own.
		var in struct {
			Service string          `json:"service"`
			Job     string          `json:"job"`
			Env     string          `json:"env"`
			Product string          `json:"product"`
			Port    int             `json:"port"`
			Address string          `json:"address"`
			Check   json.RawMessage `json:"check"`
		}
		if err := decodeStrict(raw, &in, field); err != nil {
			return nil, err
		}
		inst := Instance{Service: in.Service, Job: in.Job, Env: in.Env, Product: in.Product, Port: in.Port, Address: in.Address}
		if len(in.Check) > 0 && !bytes.Equal(in.Check, []byte("null")) {
			inst.Check = new(Check)
			if err := decodeStrict(in.Check, inst.Check, field+".check"); err != nil {
				return nil, err
			}
		}
		b.Instances[i] = inst
	}
	b.Normalize()
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return b, nil
}

// decodeStrict decodes one JSON value from data into v, rejecting unknown
// fields and trailing data; errors are ValidationErrors under field.
func decodeStrict(data []byte, v any, field string) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err, field)
	}
	if _, err := dec.Token(); err != io.EOF {
		return invalid(field, "trailing data after the JSON value")
	}
	return nil
}

// jsonError turns a decoding error into a ValidationError naming the field.
func jsonError(err error, field string) error {
	join := func(sub string) string {
		switch {
		case sub == "":
			return field
		case field == "":
			return sub
		}
		return field + "." + sub
	}
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr):
		return &ValidationError{Field: join(typeErr.Field), Msg: fmt.Sprintf("cannot be a JSON %s (want %s)", typeErr.Value, typeErr.Type), Err: err}
	case errors.As(err, &syntaxErr):
		return &ValidationError{Field: field, Msg: fmt.Sprintf("not valid JSON at byte %d: %v", syntaxErr.Offset, err), Err: err}
	case errors.Is(err, io.EOF):
		return &ValidationError{Field: field, Msg: "empty, want a JSON object", Err: err}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return &ValidationError{Field: field, Msg: "truncated JSON", Err: err}
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if name, ok := strings.CutPrefix(msg, "unknown field "); ok {
		if n, uerr := strconv.Unquote(name); uerr == nil {
			return &ValidationError{Field: join(n), Msg: "unknown field", Err: err}
		}
	}
	return &ValidationError{Field: field, Msg: msg, Err: err}
}

// Normalize puts b in canonical form in place: labels in lower case,
// addresses as netip prints them (IPv4-mapped IPv6 unmapped), check type
// in lower case. Invalid values are left for Validate to report.
func (b *Body) Normalize() {
	for i := range b.Instances {
		in := &b.Instances[i]
		in.Service = cache.Lower(in.Service)
		in.Job = cache.Lower(in.Job)
		in.Env = cache.Lower(in.Env)
		in.Product = cache.Lower(in.Product)
		if ip, err := netip.ParseAddr(in.Address); err == nil && ip.Zone() == "" {
			in.Address = ip.Unmap().String()
		}
		if in.Check != nil {
			in.Check.Type = strings.ToLower(in.Check.Type)
		}
	}
}

// key identifies an instance within a provider; equal keys are duplicates
// and map to the same Consul service ID.
type key struct {
	product, env, job, service, address string
	port                                int
}

func (in *Instance) key() key {
	return key{
		product: cache.Lower(in.Product), env: cache.Lower(in.Env), job: cache.Lower(in.Job),
		service: cache.Lower(in.Service), address: in.Address, port: in.Port,
	}
}

// Validate reports the first thing wrong with b as a *ValidationError, or
// nil. It does not change b; call Normalize first for case-insensitive
// duplicate detection of addresses written differently.
func (b *Body) Validate() error {
	if len(b.Instances) > MaxInstances {
		return invalid("instances", "%d instances, at most %d allowed", len(b.Instances), MaxInstances)
	}
	seen := make(map[key]int, len(b.Instances))
	for i := range b.Instances {
		in := &b.Instances[i]
		field := fmt.Sprintf("instances[%d]", i)
		if err := in.validate(field); err != nil {
			return err
		}
		k := in.key()
		if j, dup := seen[k]; dup {
			return invalid(field, "duplicate of instances[%d] (same product, env, job, service, address and port)", j)
		}
		seen[k] = i
	}
	return nil
}

func (in *Instance) validate(field string) error {
	for _, l := range []struct{ name, v string }{
		{"service", in.Service}, {"job", in.Job}, {"env", in.Env}, {"product", in.Product},
	} {
		if l.v == "" {
			return invalid(field+"."+l.name, "missing")
		}
		if !cache.ValidLabel(l.v) {
			return invalid(field+"."+l.name, "%q is not a valid label (letters, digits and '-', 1 to 63 characters)", l.v)
		}
	}
	if cache.Lower(in.Product) == "consul" {
		return invalid(field+".product", "%q is reserved for Consul itself", in.Product)
	}
	if in.Port < 1 || in.Port > 65535 {
		return invalid(field+".port", "%d is not in 1–65535", in.Port)
	}
	if in.Address != "" {
		ip, err := netip.ParseAddr(in.Address)
		if err != nil || ip.Zone() != "" {
			return invalid(field+".address", "%q is not an IP address", in.Address)
		}
		if ip.IsUnspecified() {
			return invalid(field+".address", "%q is unspecified; leave the address out for the node's", in.Address)
		}
	}
	if in.Check != nil {
		return in.Check.validate(field + ".check")
	}
	return nil
}

func (c *Check) validate(field string) error {
	switch strings.ToLower(c.Type) {
	case CheckTCP:
		if c.Target != "" {
			host, port, err := net.SplitHostPort(c.Target)
			if err != nil || host == "" {
				return invalid(field+".target", "%q is not host:port", c.Target)
			}
			if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
				return invalid(field+".target", "port %q is not in 1–65535", port)
			}
		}
	case CheckHTTP:
		if c.Target != "" {
			u, err := url.Parse(c.Target)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return invalid(field+".target", "%q is not an http or https URL", c.Target)
			}
		}
	case CheckTTL:
		if c.Target != "" {
			return invalid(field+".target", "not allowed for a ttl check")
		}
		if c.Interval != "" {
			return invalid(field+".interval", "not allowed for a ttl check")
		}
		if c.Timeout != "" {
			return invalid(field+".timeout", "not allowed for a ttl check")
		}
		if c.TTL == "" {
			return invalid(field+".ttl", "missing (required for a ttl check)")
		}
		return validDuration(field+".ttl", c.TTL)
	case "":
		return invalid(field+".type", "missing (tcp, http or ttl)")
	default:
		return invalid(field+".type", "%q is not tcp, http or ttl", c.Type)
	}
	if c.TTL != "" {
		return invalid(field+".ttl", "only allowed for a ttl check")
	}
	if c.Interval != "" {
		if err := validDuration(field+".interval", c.Interval); err != nil {
			return err
		}
	}
	if c.Timeout != "" {
		if err := validDuration(field+".timeout", c.Timeout); err != nil {
			return err
		}
	}
	return nil
}

func validDuration(field, s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return invalid(field, "%q is not a duration like \"10s\"", s)
	}
	if d <= 0 {
		return invalid(field, "%q is not positive", s)
	}
	return nil
}
