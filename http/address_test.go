package httpapi

import (
	"strings"
	"testing"

	"github.com/rugby110/glimpse/cache"
)

func TestLookupParseAddress(t *testing.T) {
	long := strings.Repeat("a", 63)
	tests := []struct {
		in   string
		want cache.Query
		err  string // a part of the error; "" for none
	}{
		{in: "http.stream.prod.goku.cz", want: cache.Query{Service: "http", Job: "stream", Env: "prod", Product: "goku", Zone: "cz"}},
		{in: "HTTP.Stream.PROD.Goku.CZ", want: cache.Query{Service: "http", Job: "stream", Env: "prod", Product: "goku", Zone: "cz"}},
		{in: "*.stream.prod.goku.cz", want: cache.Query{Service: "*", Job: "stream", Env: "prod", Product: "goku", Zone: "cz"}},
		{in: "*.*.*.goku.cz", want: cache.Query{Service: "*", Job: "*", Env: "*", Product: "goku", Zone: "cz"}},
		{in: "http.*.prod.goku.cz", want: cache.Query{Service: "http", Job: "*", Env: "prod", Product: "goku", Zone: "cz"}},
		{in: "a-1.b.c.d-.0", want: cache.Query{Service: "a-1", Job: "b", Env: "c", Product: "d-", Zone: "0"}},
		{in: long + "." + long + "." + long + "." + long + "." + long, want: cache.Query{Service: long, Job: long, Env: long, Product: long, Zone: long}},

		{in: "", err: "address is empty"},
		{in: "stream.prod.goku.cz", err: "has 4 labels, want 5"},
		{in: "x.http.stream.prod.goku.cz", err: "has 6 labels, want 5"},
		{in: "http.stream.prod.goku.cz.", err: "has 6 labels"},
		{in: "goku", err: "has 1 labels"},
		{in: ".stream.prod.goku.cz", err: "the service label is empty"},
		{in: "http..prod.goku.cz", err: "the job label is empty"},
		{in: "http.stream.prod.goku.", err: "the zone label is empty"},
		{in: "http.stream.prod.*.cz", err: `the product label cannot be "*"`},
		{in: "http.stream.prod.goku.*", err: `the zone label cannot be "*"`},
		{in: "ht_p.stream.prod.goku.cz", err: `the service label "ht_p" has characters other than`},
		{in: "http.stream.pr*d.goku.cz", err: `the env label "pr*d"`},
		{in: "http.stream.prod.go ku.cz", err: `the product label "go ku"`},
		{in: "http.st/ream.prod.goku.cz", err: `the job label "st/ream"`},
		{in: "http.stream.prod.goku.čz", err: `the zone label`},
		{in: "http.stream.prod." + long + "a.cz", err: "the product label is 64 characters long"},
		{in: strings.Repeat("a.", 200) + "a", err: "longer than any valid address"},
	}
	for _, tt := range tests {
		got, err := ParseAddress(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseAddress(%q) = %+v, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseAddress(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
		if name := queryName(got); name != strings.ToLower(tt.in) {
			t.Errorf("queryName(ParseAddress(%q)) = %q", tt.in, name)
		}
	}
}

// FuzzParseAddress checks ParseAddress against a plain restatement of the
// rules, and that what it accepts is what it returns, in lower case.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{
		"http.stream.prod.goku.cz", "*.*.*.goku.cz", "*.stream.prod.P.dc1", "HTTP.Stream.Prod.Goku.CZ",
		"", ".", "....", ".....", "a.b.c.d", "a.b.c.d.e.f", "a.b.c.*.e", "a.b.c.d.*", "**.b.c.d.e",
		"a_b.c.d.e.f", "a.b.c.d.e.", "a/b.c.d.e.f", "a.b.c.d.\xff", "a.b.c.d.é", strings.Repeat("x", 64) + ".b.c.d.e",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		q, err := ParseAddress(s)
		labels := strings.Split(s, ".")
		valid := len(labels) == 5
		for i, l := range labels {
			if !valid {
				break
			}
			valid = cache.ValidLabel(l) || (l == "*" && i < 3)
		}
		if valid != (err == nil) {
			t.Fatalf("ParseAddress(%q) = %+v, %v; the rules say valid=%v", s, q, err, valid)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatalf("ParseAddress(%q): empty error", s)
			}
			return
		}
		if got := queryName(q); got != strings.ToLower(s) {
			t.Fatalf("ParseAddress(%q) = %q, want it in lower case", s, got)
		}
		if q.Product == cache.Wildcard || q.Zone == cache.Wildcard {
			t.Fatalf("ParseAddress(%q) = %+v: wildcard product or zone", s, q)
		}
	})
}
