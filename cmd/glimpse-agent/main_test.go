package main

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
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
		{[]string{"extra"}, "unexpected argument"},
		{[]string{"-consul.max-conns", "2"}, "-consul.max-conns must be at least 5"},
		{[]string{"-watch.pin", "goku,[a"}, "-watch.pin: pattern \"[a\""},
		{[]string{"-consul.addr", dead, "-consul.start-timeout", "500ms"}, "consul agent not reachable"},
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
