package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestExitsWithOneLine: bad flags and a Consul agent that cannot be reached
// each end the process with a non-zero
// status and a single line saying why.
func TestExitsWithOneLine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "glimpse-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	// A secret file others may read, and one they may not.
	open, secret := filepath.Join(t.TempDir(), "open"), filepath.Join(t.TempDir(), "secret")
	os.WriteFile(open, []byte("x\n"), 0o644)
	os.WriteFile(secret, []byte("x\n"), 0o600)
	// A data directory another process holds.
	locked := t.TempDir()
	lf, err := os.OpenFile(filepath.Join(locked, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	// A port nothing listens on, for an unreachable Consul.
	free, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := free.Addr().String()
	free.Close()

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-no-such-flag"}, "flag provided but not defined"},
		{[]string{"-dns.ttl", "soon"}, "invalid value"},
		{[]string{"-log.format", "xml"}, "-log.format"},
		{[]string{"-dns.udp-sockets", "0"}, "-dns.udp-sockets"},
		{[]string{"-consul.product-wait", "0s"}, "-consul.product-wait"},
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"-consul.max-conns", "2"}, "-consul.max-conns must be at least 5"},
		{[]string{"-watch.pin", "goku,[a"}, "-watch.pin: pattern \"[a\""},
		{[]string{"-consul.addr", dead, "-consul.start-timeout", "500ms"}, "consul agent not reachable"},
		{[]string{"-consul.addr", "https://" + dead, "-consul.ca-file", filepath.Join(t.TempDir(), "none.pem")}, "consul TLS"},
		{[]string{"-consul.token-file", open}, "chmod o-rwx"},
		{[]string{"-consul.token-file", secret, "-consul.token", "x"}, "both set"},
		{[]string{"-consul.token-file", filepath.Join(t.TempDir(), "none")}, "-consul.token-file"},
		{[]string{"-providers.tokens", open}, "chmod o-rwx"},
		{[]string{"-data.dir", locked}, "in use by another glimpse-agent"},
	} {
		cmd := exec.Command(bin, tc.args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		if _, ok := err.(*exec.ExitError); !ok {
			t.Errorf("%v: want a non-zero exit, got %v", tc.args, err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		last := lines[len(lines)-1]
		if !strings.Contains(last, tc.want) || !strings.HasPrefix(last, "glimpse-agent: ") {
			t.Errorf("%v: last line %q, want one mentioning %q", tc.args, last, tc.want)
		}
		// Only the failure line; the JSON logs before it (reaching Consul)
		// are log lines, not the reason.
		if len(lines) > 1 && !strings.HasPrefix(lines[0], "{") {
			t.Errorf("%v: %d lines on stderr:\n%s", tc.args, len(lines), stderr.String())
		}
	}
}

// TestEveryFlagDocumented: each flag -help lists is in the README's flag
// table, in a row of its own or, for an older name, in its new name's.
func TestEveryFlagDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var help bytes.Buffer
	if err := run([]string{"-help"}, &help); err == nil {
		t.Fatal("-help did not stop")
	}
	n := 0
	for _, line := range strings.Split(help.String(), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(line, "  -") {
			continue
		}
		n++
		if !bytes.Contains(readme, []byte("| `"+f[0]+"` |")) && !bytes.Contains(readme, []byte("(`"+f[0]+"` is the older name)")) {
			t.Errorf("flag %s has no row in the README's flag table", f[0])
		}
	}
	if n < 30 {
		t.Fatalf("only %d flags found in -help:\n%s", n, help.String())
	}
}
