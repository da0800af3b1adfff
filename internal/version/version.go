// Package version says which glimpse a binary is: its version and commit,
// set at build time (make passes them with -ldflags -X), else read from
// the build information the Go toolchain records.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at build time: -ldflags "-X github.com/rugby110/glimpse/internal/version.Version=v0.3.0 -X ….Commit=abc123".
var (
	Version = ""
	Commit  = ""
)

// Info returns the version, the commit and the Go version the binary was
// built with; "dev" and "unknown" when neither the build nor the toolchain
// recorded them.
func Info() (version, commit, goVersion string) {
	version, commit = Version, Commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && commit == "" {
				commit = s.Value
			}
			if s.Key == "vcs.modified" && s.Value == "true" && commit != "" && Commit == "" {
				commit += "-dirty"
			}
		}
	}
	if version == "" {
		version = "dev"
	}
	if commit == "" {
		commit = "unknown"
	}
	return version, commit, runtime.Version()
}

// String is the line -version prints for program.
func String(program string) string {
	v, c, g := Info()
	return fmt.Sprintf("%s %s (commit %s, %s)", program, v, c, g)
}
