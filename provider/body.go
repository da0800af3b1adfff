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

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
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
// PUT /v1/providers/<name> or written to <name>.json (api.ProviderBody).
type Body = api.ProviderBody

// Instance is one service instance a provider runs (api.ProviderInstance).
type Instance = api.ProviderInstance

// Check is the optional health check of an instance, run by the Consul
// agent (api.ProviderCheck).
type Check = api.ProviderCheck

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
//
// The body is parsed as it arrives, one instance at a time: what a
// connection holds is the instances decoded so far, never a copy of the
// body's bytes, and a body that goes wrong is refused at its first error
// without waiting for the rest.
func Parse(r io.Reader, limit int64) (*Body, error) {
	cr := &cappedReader{r: r, left: limit}
	b, err := parseStream(json.NewDecoder(cr))
	switch {
	case cr.over:
		return nil, &ValidationError{Msg: fmt.Sprintf("body larger than %d bytes", limit), Err: ErrTooLarge}
	case cr.err != nil:
		return nil, fmt.Errorf("read body: %w", cr.err)
	}
	return b, err
}

// errOverCap ends a cappedReader's data; Parse reports it as ErrTooLarge.
var errOverCap = errors.New("over the size limit")

// cappedReader passes at most left bytes of r through, and notes whether r
// had more (over) or failed (err, other than io.EOF).
type cappedReader struct {
	r    io.Reader
	left int64
	over bool
	err  error
}

func (c *cappedReader) Read(p []byte) (int, error) {
	if c.over {
		return 0, errOverCap
	}
	if c.left <= 0 {
		// At the cap: one more byte means the body is over it.
		var one [1]byte
		n, err := io.ReadFull(c.r, one[:])
		if n > 0 {
			c.over = true
			return 0, errOverCap
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		return 0, c.note(err)
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, c.note(err)
}

func (c *cappedReader) note(err error) error {
	if err != nil && err != io.EOF {
		c.err = err
	}
	return err
}

// parseBytes is Parse of a body already read (and within its limit).
func parseBytes(data []byte) (*Body, error) {
	return parseStream(json.NewDecoder(bytes.NewReader(data)))
}

// parseStream decodes a body's top-level object token by token and its
// instances one at a time, then normalizes and validates it.
func parseStream(dec *json.Decoder) (*Body, error) {
	if err := expectDelim(dec, '{', ""); err != nil {
		return nil, err
	}
	var b *Body
	for dec.More() {
		tok, err := dec.Token()
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return nil, jsonError(err, "")
		}
		key, _ := tok.(string)
		switch {
		case key != "instances":
			return nil, &ValidationError{Field: key, Msg: "unknown field"}
		case b != nil:
			return nil, invalid("instances", "given twice")
		}
		if b, err = decodeInstances(dec); err != nil {
			return nil, err
		}
	}
	if err := expectDelim(dec, '}', ""); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err != nil && !isSyntax(err) {
			return nil, err // the reader's, which Parse reports
		}
		return nil, invalid("", "trailing data after the JSON value")
	}
	if b == nil || b.Instances == nil {
		return nil, invalid("instances", "missing (send [] to remove all instances)")
	}
	Normalize(b)
	if err := Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}

// decodeInstances decodes the value of "instances": an array of at most
// MaxInstances instances, or null (returned as a Body without instances).
func decodeInstances(dec *json.Decoder) (*Body, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, jsonError(err, "instances")
	}
	switch tok {
	case nil:
		return &Body{}, nil
	case json.Delim('['):
	default:
		return nil, invalid("instances", "cannot be a JSON %s (want an array)", tokenKind(tok))
	}
	b := &Body{Instances: []Instance{}}
	for dec.More() {
		field := fmt.Sprintf("instances[%d]", len(b.Instances))
		if len(b.Instances) == MaxInstances {
			return nil, invalid("instances", "more than %d instances, at most %d allowed", MaxInstances, MaxInstances)
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, jsonError(err, field)
		}
		in, err := decodeInstance(raw, field)
		if err != nil {
			return nil, err
		}
		b.Instances = append(b.Instances, in)
	}
	return b, expectDelim(dec, ']', "instances")
}

// expectDelim reads the next token, which must be d. Only the body's
// first token may meet the end of the data: later, that is a truncation.
func expectDelim(dec *json.Decoder, d json.Delim, field string) error {
	tok, err := dec.Token()
	if err == io.EOF && dec.InputOffset() > 0 {
		err = io.ErrUnexpectedEOF
	}
	switch {
	case err != nil:
		return jsonError(err, field)
	case tok != d:
		want := map[json.Delim]string{'{': "an object", '[': "an array"}[d]
		return invalid(field, "cannot be a JSON %s (want %s)", tokenKind(tok), want)
	}
	return nil
}

// tokenKind names the JSON type of a token as encoding/json's errors do.
func tokenKind(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		if tok == json.Delim('[') {
			return "array"
		}
		return "object"
	case string:
		return "string"
	case float64, json.Number:
		return "number"
	case bool:
		return "bool"
	}
	return "null"
}

func isSyntax(err error) bool {
	var syntaxErr *json.SyntaxError
	return errors.As(err, &syntaxErr)
}

// parseInstances decodes, normalizes and validates the "instances" of a
// recorded state (nil: the field was missing).
func parseInstances(raws *[]json.RawMessage) (*Body, error) {
	if raws == nil {
		return nil, invalid("instances", "missing (send [] to remove all instances)")
	}
	if n := len(*raws); n > MaxInstances {
		return nil, invalid("instances", "%d instances, at most %d allowed", n, MaxInstances)
	}
	b := &Body{Instances: make([]Instance, len(*raws))}
	for i, raw := range *raws {
		in, err := decodeInstance(raw, fmt.Sprintf("instances[%d]", i))
		if err != nil {
			return nil, err
		}
		b.Instances[i] = in
	}
	Normalize(b)
	if err := Validate(b); err != nil {
		return nil, err
	}
	return b, nil
}

// decodeInstance decodes one instance strictly, in stages, so that errors
// can name the field they are about.
func decodeInstance(raw json.RawMessage, field string) (Instance, error) {
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
		return Instance{}, err
	}
	inst := Instance{Service: in.Service, Job: in.Job, Env: in.Env, Product: in.Product, Port: in.Port, Address: in.Address}
	if len(in.Check) > 0 && !bytes.Equal(in.Check, []byte("null")) {
		inst.Check = new(Check)
		if err := decodeStrict(in.Check, inst.Check, field+".check"); err != nil {
			return Instance{}, err
		}
	}
	return inst, nil
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
func Normalize(b *Body) {
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

func keyOf(in *Instance) key {
	return key{
		product: cache.Lower(in.Product), env: cache.Lower(in.Env), job: cache.Lower(in.Job),
		service: cache.Lower(in.Service), address: in.Address, port: in.Port,
	}
}

// Validate reports the first thing wrong with b as a *ValidationError, or
// nil. It does not change b; call Normalize first for case-insensitive
// duplicate detection of addresses written differently.
func Validate(b *Body) error {
	if len(b.Instances) > MaxInstances {
		return invalid("instances", "%d instances, at most %d allowed", len(b.Instances), MaxInstances)
	}
	seen := make(map[key]int, len(b.Instances))
	for i := range b.Instances {
		in := &b.Instances[i]
		field := fmt.Sprintf("instances[%d]", i)
		if err := validateInstance(in, field); err != nil {
			return err
		}
		k := keyOf(in)
		if j, dup := seen[k]; dup {
			return invalid(field, "duplicate of instances[%d] (same product, env, job, service, address and port)", j)
		}
		seen[k] = i
	}
	return nil
}

func validateInstance(in *Instance, field string) error {
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
		return validateCheck(in.Check, field+".check")
	}
	return nil
}

func validateCheck(c *Check, field string) error {
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
