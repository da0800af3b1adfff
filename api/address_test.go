package api

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseAddress(t *testing.T) {
	a, err := ParseAddress("HTTP.Stream.prod.goku.DC1")
	if err != nil || a != (Address{"http", "stream", "prod", "goku", "dc1"}) || a.String() != "http.stream.prod.goku.dc1" || a.Wild() {
		t.Fatalf("%+v, %v", a, err)
	}
	for _, bad := range []struct{ s, msg string }{
		{"", "empty"},
		{"a.b.c.d", "4 labels"},
		{"a.b.c.d.e.f", "6 labels"},
		{"a..c.d.e", "job label is empty"},
		{"a.b.c.*.e", "product label cannot be"},
		{"a.b.c.d.*", "zone label cannot be"},
		{"a_x.b.c.d.e", "characters other than"},
		{strings.Repeat("a", 64) + ".b.c.d.e", "64 characters long"},
		{strings.Repeat("a.", 200) + "a", "longer than any valid address"},
	} {
		if _, err := ParseAddress(bad.s); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("ParseAddress(%.40q) = %v, want an error about %q", bad.s, err, bad.msg)
		}
	}
}

func TestAddressMatches(t *testing.T) {
	w, err := ParseAddress("*.api.*.vegeta.dc1")
	if err != nil || !w.Wild() {
		t.Fatal(w, err)
	}
	for s, want := range map[string]bool{
		"http.api.prod.vegeta.dc1": true,
		"grpc.API.dev.vegeta.dc1":  true,
		"http.web.prod.vegeta.dc1": false,
		"http.api.prod.vegeta.dc2": false,
		"http.api.prod.goku.dc1":   false,
	} {
		b, err := ParseAddress(s)
		if err != nil {
			t.Fatal(err)
		}
		if w.Matches(b) != want {
			t.Errorf("%s matches %s: %v, want %v", w, s, !want, want)
		}
	}
}

// TestMessageJSON: the field names are the wire's.
func TestMessageJSON(t *testing.T) {
	var m Message
	raw := `{"type":"update","index":7,"address":"http.stream.prod.goku.dc1","instances":[{"node":"n1","address":"10.0.0.1","port":80,"health":"passing","provider":"p","zone":"dc1","product":"goku","env":"prod","job":"stream","service":"http"}]}`
	if err := json.Unmarshal([]byte(raw), &m); err != nil {
		t.Fatal(err)
	}
	back, _ := json.Marshal(m)
	if string(back) != raw {
		t.Errorf("round trip:\n%s\n%s", back, raw)
	}
}
