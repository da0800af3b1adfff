package agent

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestSystemdNotify: under a Type=notify unit ($NOTIFY_SOCKET), the agent
// says STATUS while it starts, READY=1 once it serves and its local zone is
// synced, and STOPPING=1 when it stops.
func TestSystemdNotify(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	a, stop := stoppableAgent(t, testConfig(t, consul.HTTPAddr()))

	read := func(want string) string {
		t.Helper()
		buf := make([]byte, 4096)
		var got []string
		for {
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			n, err := conn.Read(buf)
			if err != nil {
				t.Fatalf("no %q from the agent (got %q): %v", want, got, err)
			}
			msg := string(buf[:n])
			got = append(got, msg)
			if strings.Contains(msg, want) {
				return msg
			}
		}
	}
	ready := read("READY=1")
	if !strings.Contains(ready, "STATUS=serving zone dc1") || !strings.Contains(ready, a.DNSAddr()) {
		t.Errorf("the READY message: %q", ready)
	}
	stop()
	read("STOPPING=1")
}

// TestSystemdUnit: deploy/systemd/glimpse-agent.service passes
// systemd-analyze verify (with ExecStart pointed at a built agent), and has
// what the issue asks of it.
func TestSystemdUnit(t *testing.T) {
	root, err := testconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := os.ReadFile(filepath.Join(root, "deploy/systemd/glimpse-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Type=notify", "User=glimpse", "StateDirectory=glimpse", "RuntimeDirectory=glimpse",
		"ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "EnvironmentFile=-/etc/default/glimpse-agent",
		"Restart=on-failure", "LimitNOFILE=", "NoNewPrivileges=yes",
	} {
		if !strings.Contains(string(unit), "\n"+want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze (Debian package systemd) is not installed: %v", err)
	}
	bin := agentBinary(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "glimpse-agent.service")
	os.WriteFile(path, []byte(strings.Replace(string(unit), "ExecStart=/usr/bin/glimpse-agent", "ExecStart="+bin, 1)), 0o644)
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 && !onlyBenign(string(out)) {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// onlyBenign reports whether systemd-analyze's output only complains about
// the machine it runs on (no systemd as PID 1 in a container), not the unit.
func onlyBenign(out string) bool {
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(l, "glimpse-agent.service") {
			continue
		}
		return false
	}
	return true
}
