package provider

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const tokA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1"

func TestTokens(t *testing.T) {
	toks, err := ParseTokens(strings.NewReader(`
# name token patterns
nomad ` + tokA + ` nomad-*,batch
ci    bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb *
`))
	if err != nil {
		t.Fatal(err)
	}
	if toks.Len() != 2 {
		t.Fatalf("%d tokens", toks.Len())
	}
	for _, c := range []struct {
		token, name, owner string
		allowed, ok        bool
	}{
		{tokA, "nomad-web", "token:nomad", true, true},
		{tokA, "batch", "token:nomad", true, true},
		{tokA, "deploy", "token:nomad", false, true},
		{"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "deploy", "token:ci", true, true},
		{tokA + "x", "nomad-web", "", false, false},
		{"", "nomad-web", "", false, false},
	} {
		who, allowed, ok := toks.Lookup(c.token, c.name)
		if who.Owner != c.owner || allowed != c.allowed || ok != c.ok || who.Root {
			t.Errorf("Lookup(%q, %q) = %v %v %v", c.token, c.name, who, allowed, ok)
		}
	}
	var none *Tokens
	if _, _, ok := none.Lookup(tokA, "x"); ok {
		t.Error("a nil Tokens knows a token")
	}
	for _, bad := range []string{
		"nomad " + tokA,                       // no patterns
		"nomad short *",                       // too short
		"bad_name " + tokA + " *",             // bad name
		"a " + tokA + " *\na " + tokA + "2 *", // name twice
		"a " + tokA + " [x",                   // bad pattern
	} {
		if _, err := ParseTokens(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("ci "+tokA+" *\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadTokens(file); err == nil || !strings.Contains(err.Error(), "chmod") {
		t.Errorf("a world-readable tokens file: %v", err)
	}
	os.Chmod(file, 0o640)
	if toks, err := LoadTokens(file); err != nil || toks.Len() != 1 {
		t.Errorf("LoadTokens: %v", err)
	}
}
