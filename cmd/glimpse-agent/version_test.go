package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: the version and commit set at build time, as make sets
// them, and the Go version are what -version prints, for both binaries.
func TestVersion(t *testing.T) {
	dir := t.TempDir()
	const pkg = "github.com/rugby110/glimpse/internal/version"
	for _, b := range []struct{ name, path string }{{"glimpse-agent", "."}, {"glimpse", "../glimpse"}} {
		bin := filepath.Join(dir, b.name)
		build := exec.Command("go", "build", "-ldflags", "-X "+pkg+".Version=v9.8.7 -X "+pkg+".Commit=0123abcd", "-o", bin, b.path)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
		out, err := exec.Command(bin, "-version").Output()
		want := b.name + " v9.8.7 (commit 0123abcd, " + runtime.Version() + ")"
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("%s -version: %q, %v; want %q", b.name, out, err, want)
		}
	}
}
