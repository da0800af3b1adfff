package provider

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

// inst is a valid instance as JSON, with fields replaced or added by kv
// pairs ("port", 70000); a value of nil removes the field.
func inst(kv ...any) map[string]any {
	m := map[string]any{"service": "http", "job": "stream", "env": "prod", "product": "goku", "port": 8000}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(m, kv[i].(string))
			continue
		}
		m[kv[i].(string)] = kv[i+1]
	}
	return m
}

func body(instances ...map[string]any) string {
	if instances == nil {
		instances = []map[string]any{}
	}
	data, err := json.Marshal(map[string]any{"instances": instances})
	if err != nil {
		panic(err)
	}
	return string(data)
}

func TestParseValid(t *testing.T) {
	b, err := Parse(strings.NewReader(body(
		inst("service", "HTTP", "env", "Prod", "address", "::ffff:10.0.0.1"),
		inst("port", 8001, "address", "2001:db8::1", "check", map[string]any{"type": "TCP", "interval": "5s", "timeout": "1s"}),
		inst("port", 8002, "check", map[string]any{"type": "http", "target": "http://127.0.0.1:9000/health"}),
		inst("port", 8003, "check", map[string]any{"type": "ttl", "ttl": "30s"}),
		inst("port", 8004, "check", nil),
		inst("port", 8005, "address", ""),
	)), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []Instance{
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8000, Address: "10.0.0.1"},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8001, Address: "2001:db8::1",
			Check: &Check{Type: "tcp", Interval: "5s", Timeout: "1s"}},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8002,
			Check: &Check{Type: "http", Target: "http://127.0.0.1:9000/health"}},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8003, Check: &Check{Type: "ttl", TTL: "30s"}},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8004},
		{Service: "http", Job: "stream", Env: "prod", Product: "goku", Port: 8005},
	}
	if !reflect.DeepEqual(b.Instances, want) {
		t.Errorf("got\n%+v\nwant\n%+v", b.Instances, want)
	}

	b, err = Parse(strings.NewReader(`{"instances": []}`), 100)
	if err != nil || b.Instances == nil || len(b.Instances) != 0 {
		t.Errorf("empty body: %+v, %v", b, err)
	}
	// Whitespace after the value is not trailing data.
	if _, err := Parse(strings.NewReader("{\"instances\": []}\n\t "), 100); err != nil {
		t.Errorf("trailing whitespace: %v", err)
	}
}

func TestParseInvalid(t *testing.T) {
	long := strings.Repeat("a", 64)
	many := make([]map[string]any, MaxInstances+1)
	for i := range many {
		many[i] = inst("port", i+1)
	}
	tests := []struct {
		name  string
		body  string
		field string // the error's Field
		msg   string // part of the error's text
	}{
		{"not JSON", `hello`, "", "not valid JSON"},
		{"empty", ``, "", "empty"},
		{"truncated", `{"instances": [{"service": "http"`, "instances[0]", "truncated"},
		{"truncated after an instance", `{"instances": [{"service": "http"}`, "instances", "truncated"},
		{"array", `[]`, "", "cannot be a JSON array"},
		{"trailing data", `{"instances": []} {}`, "", "trailing data"},
		{"trailing garbage", `{"instances": []}x`, "", "trailing data"},
		{"missing instances", `{}`, "instances", "missing"},
		{"null instances", `{"instances": null}`, "instances", "missing"},
		{"unknown top field", `{"instances": [], "extra": 1}`, "extra", "unknown field"},
		{"unknown instance field", body(inst(), inst("port", 1, "weight", 3)), "instances[1].weight", "unknown field"},
		{"unknown check field", body(inst("check", map[string]any{"type": "tcp", "retries": 3})), "instances[0].check.retries", "unknown field"},
		{"instances not array", `{"instances": {}}`, "instances", "cannot be a JSON object"},
		{"instance not object", `{"instances": [1]}`, "instances[0]", "cannot be a JSON number"},
		{"port string", body(inst("port", "80")), "instances[0].port", "cannot be a JSON string"},
		{"port fraction", body(inst("port", 80.5)), "instances[0].port", "cannot be a JSON number"},
		{"port 0", body(inst("port", 0)), "instances[0].port", "0 is not in 1–65535"},
		{"port missing", body(inst("port", nil)), "instances[0].port", "0 is not in 1–65535"},
		{"port 70000", body(inst("port", 1), inst("port", 2), inst("port", 3), inst("port", 70000)), "instances[3].port", "70000 is not in 1–65535"},
		{"port negative", body(inst("port", -1)), "instances[0].port", "-1 is not in 1–65535"},
		{"service missing", body(inst("service", nil)), "instances[0].service", "missing"},
		{"job empty", body(inst("job", "")), "instances[0].job", "missing"},
		{"env bad char", body(inst("env", "pro_d")), "instances[0].env", "not a valid label"},
		{"product dot", body(inst("product", "go.ku")), "instances[0].product", "not a valid label"},
		{"product too long", body(inst("product", long)), "instances[0].product", "not a valid label"},
		{"product consul", body(inst("product", "Consul")), "instances[0].product", "reserved"},
		{"service unicode", body(inst("service", "héllo")), "instances[0].service", "not a valid label"},
		{"label not string", body(inst("job", 5)), "instances[0].job", "cannot be a JSON number"},
		{"address host name", body(inst("address", "example.com")), "instances[0].address", "not an IP address"},
		{"address bad v4", body(inst("address", "10.0.0.256")), "instances[0].address", "not an IP address"},
		{"address with port", body(inst("address", "10.0.0.1:80")), "instances[0].address", "not an IP address"},
		{"address zone", body(inst("address", "fe80::1%eth0")), "instances[0].address", "not an IP address"},
		{"address unspecified", body(inst("address", "0.0.0.0")), "instances[0].address", "unspecified"},
		{"duplicate", body(inst(), inst("port", 1), inst()), "instances[2]", "duplicate of instances[0]"},
		{"duplicate by case", body(inst(), inst("product", "GOKU")), "instances[1]", "duplicate of instances[0]"},
		{"duplicate by address form", body(inst("address", "10.0.0.1"), inst("address", "::ffff:10.0.0.1")), "instances[1]", "duplicate of instances[0]"},
		{"check type missing", body(inst("check", map[string]any{})), "instances[0].check.type", "missing"},
		{"check type bad", body(inst("check", map[string]any{"type": "grpc"})), "instances[0].check.type", `"grpc" is not tcp, http or ttl`},
		{"check not object", body(inst("check", "tcp")), "instances[0].check", "cannot be a JSON string"},
		{"check interval bad", body(inst("check", map[string]any{"type": "tcp", "interval": "often"})), "instances[0].check.interval", "not a duration"},
		{"check interval no unit", body(inst("check", map[string]any{"type": "tcp", "interval": "10"})), "instances[0].check.interval", "not a duration"},
		{"check interval zero", body(inst("check", map[string]any{"type": "http", "interval": "0s"})), "instances[0].check.interval", "not positive"},
		{"check timeout negative", body(inst("check", map[string]any{"type": "tcp", "timeout": "-1s"})), "instances[0].check.timeout", "not positive"},
		{"check ttl missing", body(inst("check", map[string]any{"type": "ttl"})), "instances[0].check.ttl", "missing"},
		{"check ttl bad", body(inst("check", map[string]any{"type": "ttl", "ttl": "1 minute"})), "instances[0].check.ttl", "not a duration"},
		{"check ttl with interval", body(inst("check", map[string]any{"type": "ttl", "ttl": "1m", "interval": "5s"})), "instances[0].check.interval", "not allowed"},
		{"check ttl on tcp", body(inst("check", map[string]any{"type": "tcp", "ttl": "1m"})), "instances[0].check.ttl", "only allowed for a ttl check"},
		{"check ttl with target", body(inst("check", map[string]any{"type": "ttl", "ttl": "1m", "target": "x:1"})), "instances[0].check.target", "not allowed"},
		{"check tcp target no port", body(inst("check", map[string]any{"type": "tcp", "target": "10.0.0.1"})), "instances[0].check.target", "not host:port"},
		{"check tcp target bad port", body(inst("check", map[string]any{"type": "tcp", "target": "10.0.0.1:99999"})), "instances[0].check.target", "not in 1–65535"},
		{"check http target not URL", body(inst("check", map[string]any{"type": "http", "target": "10.0.0.1:80"})), "instances[0].check.target", "not an http or https URL"},
		{"check http target ftp", body(inst("check", map[string]any{"type": "http", "target": "ftp://x/"})), "instances[0].check.target", "not an http or https URL"},
		{"too many instances", body(many...), "instances", "at most 10000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Parse(strings.NewReader(tt.body), 4<<20)
			if err == nil {
				t.Fatalf("Parse(%.200s) = %+v, want an error", tt.body, b)
			}
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("error %v (%T) is not a *ValidationError", err, err)
			}
			if ve.Field != tt.field {
				t.Errorf("error %q: field %q, want %q", err, ve.Field, tt.field)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("error %q does not contain %q", err, tt.msg)
			}
			if tt.field != "" && !strings.HasPrefix(err.Error(), tt.field+": ") {
				t.Errorf("error %q does not start with the field %q", err, tt.field)
			}
		})
	}
}

func TestParseLimit(t *testing.T) {
	b := body(inst())
	if _, err := Parse(strings.NewReader(b), int64(len(b))); err != nil {
		t.Errorf("body of exactly the limit: %v", err)
	}
	_, err := Parse(strings.NewReader(b), int64(len(b)-1))
	want := fmt.Sprintf("body larger than %d bytes", len(b)-1)
	if err == nil || err.Error() != want || !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the limit: %v, want %q wrapping ErrTooLarge", err, want)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestParseReadError(t *testing.T) {
	_, err := Parse(errReader{}, 100)
	var ve *ValidationError
	if err == nil || errors.As(err, &ve) || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("read error: %v, want the reader's error, not a ValidationError", err)
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"bazooka": true, "Bazooka-2": true, "a": true, strings.Repeat("a", 63): true,
		"": false, strings.Repeat("a", 64): false, "../etc": false, "a.b": false, "a/b": false,
		".bazooka": false, "a b": false, "bazooka.json": false,
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
	if n, err := CheckName("BaZooka"); err != nil || n != "bazooka" {
		t.Errorf("CheckName(BaZooka) = %q, %v", n, err)
	}
	var ve *ValidationError
	if _, err := CheckName("a/b"); !errors.As(err, &ve) || ve.Field != "provider" {
		t.Errorf("CheckName(a/b) = %v, want a ValidationError on provider", err)
	}
}

// FuzzParse checks that Parse never panics and that what it accepts
// survives a round trip through JSON unchanged.
func FuzzParse(f *testing.F) {
	f.Add([]byte(body(inst())))
	f.Add([]byte(body(inst("address", "::ffff:1.2.3.4", "check", map[string]any{"type": "ttl", "ttl": "1m"}))))
	f.Add([]byte(`{"instances": [{"port": 1e9}]}`))
	f.Add([]byte(`{"instances": [], "instances": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := Parse(bytes.NewReader(data), 1<<16)
		if err != nil {
			return
		}
		again, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := Parse(bytes.NewReader(again), 1<<20)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", again, err)
		}
		if !reflect.DeepEqual(b, b2) {
			t.Fatalf("round trip changed %+v to %+v", b, b2)
		}
	})
}

// TestParseStreams: a body is parsed as it arrives, so one that goes wrong
// is refused at its first error without the rest being read (here, a rest
// that never ends), and a reader's failure midway is the reader's error.
func TestParseStreams(t *testing.T) {
	bad := strings.NewReader(`{"instances": [{"service": "http", "job": "j", "env": "e", "product": "p", "port": 1, "weight": 3},`)
	_, err := Parse(io.MultiReader(bad, endless{}), 4<<20)
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Field != "instances[0].weight" {
		t.Fatalf("a bad first instance followed by endless data: %v", err)
	}

	// The cap is found as the bytes come, whatever their content.
	_, err = Parse(io.MultiReader(strings.NewReader(`{"instances": [`), endless{}), 1<<20)
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("an endless body: %v, want ErrTooLarge", err)
	}

	half := body(inst(), inst("port", 2))
	_, err = Parse(io.MultiReader(strings.NewReader(half[:len(half)/2]), errReader{}), 4<<20)
	if err == nil || errors.As(err, &ve) || !strings.Contains(err.Error(), "connection reset") {
		t.Fatalf("a read error midway: %v, want the reader's error", err)
	}

	// However the bytes are split, the result is the same.
	b, err := Parse(iotest.OneByteReader(strings.NewReader(half)), int64(len(half)))
	if err != nil || len(b.Instances) != 2 {
		t.Fatalf("one byte at a time: %+v, %v", b, err)
	}
}

// endless is a body that never ends: spaces, valid JSON whitespace.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}
