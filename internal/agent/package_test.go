package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestPackage: make package's .deb (scripts/package.sh) installs with dpkg
// into a throwaway root (an overlay of this machine's root in a mount
// namespace of its own, so nothing of the machine changes): the binaries
// run and say their version, the unit and the conffile are in place, the
// resolver snippets are shipped, and the postinst created the glimpse
// user; then it removes cleanly.
func TestPackage(t *testing.T) {
	for _, tool := range []string{"dpkg-deb", "dpkg", "unshare", "chroot"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: %v", tool, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("installing into a throwaway root needs root (mount namespaces)")
	}
	root, err := testconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	for _, b := range []struct{ name, pkg string }{{"glimpse-agent", "./cmd/glimpse-agent"}, {"glimpse", "./cmd/glimpse"}} {
		build := exec.Command("go", "build", "-o", filepath.Join(bin, b.name), b.pkg)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	dist := t.TempDir()
	pack := exec.Command("bash", "scripts/package.sh")
	pack.Dir = root
	pack.Env = append(os.Environ(), "BIN_DIR="+bin, "DIST_DIR="+dist)
	out, err := pack.CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/package.sh: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "glimpse_*_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s, got %v (%s)", dist, debs, out)
	}
	contents, err := exec.Command("dpkg-deb", "--contents", debs[0]).CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"./usr/bin/glimpse-agent", "./usr/bin/glimpse", "./lib/systemd/system/glimpse-agent.service",
		"./etc/default/glimpse-agent", "./usr/share/glimpse/unbound/glimpse.conf", "./usr/share/glimpse/resolvers/bind-glimpse.conf"} {
		if !strings.Contains(string(contents), want+"\n") {
			t.Errorf("the package lacks %s:\n%s", want, contents)
		}
	}

	// The throwaway root: this machine's root as the lower layer of an
	// overlay whose upper layer is a temporary directory.
	ovl := t.TempDir()
	for _, d := range []string{"upper", "work", "merged"} {
		os.Mkdir(filepath.Join(ovl, d), 0o755)
	}
	script := `set -e
mount -t overlay overlay -o lowerdir=/,upperdir=$OVL/upper,workdir=$OVL/work $OVL/merged
mount --bind /proc $OVL/merged/proc
mount --bind /dev $OVL/merged/dev
chroot $OVL/merged sh -ec '
	! getent passwd glimpse
	dpkg -i "$DEB" >/dev/null
	getent passwd glimpse | grep -q ":/var/lib/glimpse:/usr/sbin/nologin$"
	getent group glimpse >/dev/null
	/usr/bin/glimpse-agent -version
	/usr/bin/glimpse -version
	test -f /lib/systemd/system/glimpse-agent.service
	grep -q "^GLIMPSE_PROVIDERS_SOCKET_GROUP=glimpse" /etc/default/glimpse-agent
	dpkg-query -W -f "\${Status} \${Conffiles}\n" glimpse
	dpkg -r glimpse >/dev/null
	test ! -e /usr/bin/glimpse-agent
	echo removed
'`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "OVL="+ovl, "DEB="+debs[0])
	got, err := cmd.CombinedOutput()
	t.Logf("in the throwaway root:\n%s", got)
	if err != nil {
		t.Fatalf("installing into a throwaway root: %v", err)
	}
	for _, want := range []string{"glimpse-agent ", "glimpse ", "install ok installed", "/etc/default/glimpse-agent", "removed"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("the throwaway root's output lacks %q", want)
		}
	}
	if _, err := os.Stat("/usr/bin/glimpse-agent"); err == nil && runtime.GOOS == "linux" {
		if out, _ := exec.Command("dpkg-query", "-W", "glimpse").CombinedOutput(); strings.Contains(string(out), "glimpse\t") {
			t.Error("the package was installed on the machine itself")
		}
	}
}
