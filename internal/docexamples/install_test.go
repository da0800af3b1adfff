package docexamples

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// container is a throwaway Debian machine: an overlay whose lower layer is
// this machine's root, in mount, PID, network, UTS and IPC namespaces of its
// own, with systemd booted as its PID 1. Nothing it does reaches this
// machine; killing its PID 1 ends it.
type container struct {
	t    *testing.T
	pid  int // systemd's PID, as this machine sees it
	boot *exec.Cmd
}

// bootContainer boots systemd in a fresh container and waits until it runs
// (its jobs done, the boot to basic.target over).
func bootContainer(t *testing.T) *container {
	t.Helper()
	ovl := t.TempDir()
	for _, d := range []string{"upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(ovl, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := `set -e
mount -t overlay overlay -o lowerdir=/,upperdir=$OVL/upper,workdir=$OVL/work $OVL/merged
mount -t proc proc $OVL/merged/proc
mount --rbind /sys $OVL/merged/sys
mount --rbind /dev $OVL/merged/dev
mount -t tmpfs tmpfs $OVL/merged/run
# Booting empties /tmp (tmpfiles.d's tmp.conf): in the overlay that would
# hide what the test keeps there, the repository of a CI clone included.
ln -sf /dev/null $OVL/merged/etc/tmpfiles.d/tmp.conf
ip link set lo up
exec chroot $OVL/merged /usr/bin/env container=glimpse-test /lib/systemd/systemd --system --unit=basic.target
`
	boot := exec.Command("unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net", "--propagation", "private", "bash", "-c", script)
	boot.Env = append(os.Environ(), "OVL="+ovl)
	log, err := os.Create(filepath.Join(ovl, "boot.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	boot.Stdout, boot.Stderr = log, log
	if err := boot.Start(); err != nil {
		t.Fatal(err)
	}
	c := &container{t: t, boot: boot}
	t.Cleanup(func() {
		if c.pid > 0 {
			_ = exec.Command("kill", "-KILL", strconv.Itoa(c.pid)).Run() // ends the PID namespace
		}
		_ = boot.Process.Kill()
		_ = boot.Wait()
	})
	deadline := time.Now().Add(60 * time.Second)
	for c.pid == 0 {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(ovl, "boot.log"))
			t.Fatalf("no systemd in the container:\n%s", b)
		}
		// unshare's child (the PID namespace's 1) execs into systemd.
		children, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", boot.Process.Pid, boot.Process.Pid))
		if pid, err := strconv.Atoi(strings.TrimSpace(string(children))); err == nil {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasSuffix(exe, "/systemd") {
				c.pid = pid
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	for {
		out, _ := c.run("systemctl is-system-running --wait")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd in the container: %q", state)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c
}

// run runs a shell command line in the container, as root, and returns its
// output.
func (c *container) run(line string) (string, error) {
	cmd := exec.Command("nsenter", "-t", strconv.Itoa(c.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "bash", "-c", line)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs line in the container and fails the test if it fails.
func (c *container) must(line string) string {
	c.t.Helper()
	out, err := c.run(line)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s", line, err, out)
	}
	return out
}

// installSteps returns the commands of the README's Install block, without
// their comments.
func installSteps(t *testing.T, root string) []string {
	t.Helper()
	for _, ex := range examples(t, root) {
		if ex.file != "README.md" || !strings.Contains(ex.why, "TestInstall") {
			continue
		}
		var steps []string
		for _, l := range ex.lines {
			if cmd, _, _ := strings.Cut(l, "#"); strings.TrimSpace(cmd) != "" {
				steps = append(steps, strings.TrimSpace(cmd))
			}
		}
		return steps
	}
	t.Fatal("the README has no Install block marked for TestInstall")
	return nil
}

// TestInstall follows the README's Install section, command by command, on
// a throwaway Debian machine booted with systemd: a host that runs a
// Consul agent and Unbound, and on which glimpse was never installed. It
// builds the package with make package, installs it, points it at the
// Consul agent (the editor step), enables and starts the unit, which is
// active once the local zone is synced, and links the Unbound snippet.
// Then a name of the fleet resolves through Unbound, the CLI answers, and
// the agent runs as the glimpse user in the unit's sandbox.
func TestInstall(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("booting a throwaway machine needs root")
	}
	root, consul := setup(t, "unshare", "nsenter", "chroot", "dpkg-deb", "make", "dig", "curl", "/lib/systemd/systemd", "/usr/sbin/unbound")
	steps := installSteps(t, root)
	c := bootContainer(t)
	if out, _ := c.run("getent passwd glimpse; test -e /usr/bin/glimpse-agent && echo installed"); strings.TrimSpace(out) != "" {
		t.Fatalf("the container is not clean: %s", out)
	}

	// The host the README speaks of: a Consul agent (port 8500, as its
	// default) with a service of the fleet, and Unbound as the resolver.
	c.must("systemd-run --unit=consul --quiet " + consul + " agent -dev -client 127.0.0.1 -bind 127.0.0.1 -node install-host -datacenter dc1 -dns-port -1")
	c.must(`for i in $(seq 100); do curl -sf 127.0.0.1:8500/v1/status/leader | grep -q : && exit 0; sleep 0.1; done; exit 1`)
	c.must(`curl -sf -X PUT 127.0.0.1:8500/v1/agent/service/register -d '{"ID":"install-1","Name":"install","Address":"127.0.5.1","Port":8080,"Tags":["glimpse:env=prod","glimpse:job=web","glimpse:service=http"]}'`)
	c.must("systemctl start unbound")

	// The editor step: the settings an operator writes. The Consul agent
	// here is at the default address; the log goes to the journal as text.
	editor := filepath.Join(t.TempDir(), "editor")
	if err := os.WriteFile(editor, []byte("#!/bin/sh\nset -e\nsed -i 's/^GLIMPSE_AGENT_ARGS=.*/GLIMPSE_AGENT_ARGS=-log.format console/' \"$1\"\necho GLIMPSE_CONSUL_ADDR=127.0.0.1:8500 >>\"$1\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, step := range steps {
		began := time.Now()
		out, err := c.run(fmt.Sprintf("cd %q && export EDITOR=%q && %s", root, editor, step))
		t.Logf("$ %s (%v)\n%s", step, time.Since(began).Round(time.Millisecond), out)
		if err != nil {
			journal, _ := c.run("journalctl -u glimpse-agent --no-pager | tail -n 30")
			t.Fatalf("the README's step %q failed: %v\n%s", step, err, journal)
		}
		if strings.HasPrefix(step, "systemctl status") && (!strings.Contains(out, "active (running)") || !strings.Contains(out, "Status:")) {
			t.Errorf("systemctl status does not show the agent running with a status line:\n%s", out)
		}
	}

	// What the README promises once those steps are done.
	if out := c.must("systemctl is-active glimpse-agent; systemctl is-enabled glimpse-agent"); out != "active\nenabled\n" {
		t.Errorf("the unit: %q, want active and enabled", out)
	}
	if out := c.must("ps -o user=,args= -C glimpse-agent"); strings.Join(strings.Fields(out), " ") != "glimpse /usr/bin/glimpse-agent -log.format console" {
		t.Errorf("the agent runs as %q, want the glimpse user with the settings of the editor step", out)
	}
	if out := c.must("dig @127.0.0.1 +short SRV http.web.prod.install.dc1.srv.glimpse.io"); !strings.Contains(out, " 8080 ") {
		t.Errorf("through Unbound: %q, want the instance's SRV record", out)
	}
	if out := c.must("glimpse lookup http.web.prod.install.dc1"); !strings.Contains(out, `"127.0.5.1"`) {
		t.Errorf("glimpse lookup: %q", out)
	}
	if out := c.must("stat -c '%U %a' /var/lib/glimpse /run/glimpse/providers.sock"); out != "glimpse 700\nglimpse 660\n" {
		t.Errorf("the state directory and the providers socket: %q", out)
	}
}
