package docexamples

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// An example is a ```sh block of the README or docs/, which the line before
// it marks:
//
//	<!-- example: demo -->                run against the demo; must exit 0
//	<!-- example: demo until stopped -->  runs until stopped: must print and
//	                                      still run after untilStopped
//	<!-- example: not run: <why> -->      not run, and why
//
// Every sh block carries one, so none is left out unnoticed. A comment line
// of a block that starts with "{", "[" or a digit ("# {"instances":1}") is
// output the example prints, and the test checks that it does.
type example struct {
	file  string
	line  int
	mode  string // "demo", "until stopped" or "not run"
	why   string
	lines []string
}

const (
	untilStopped = "10" // seconds an until-stopped example runs (timeout(1)): long enough to print on a loaded machine
	runFor       = "60" // seconds an example may take (a long-poll takes 30)
)

// setup fails the test unless every tool is installed (a name in $PATH, or
// an absolute path), and returns the repository's root and the Consul
// binary the tests run.
func setup(t *testing.T, tools ...string) (root, consul string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps): %v", tool, err)
		}
	}
	root, err := testconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if consul, err = testconsul.Bin(); err != nil {
		t.Fatal(err)
	}
	return root, consul
}

// examples reads the marked sh blocks of the README and docs/*.md.
func examples(t *testing.T, root string) []example {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	var out []example
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f)
		sc := bufio.NewScanner(fh)
		var prev string // the last non-blank line before a block
		var cur *example
		n := 0
		for sc.Scan() {
			n++
			line := sc.Text()
			switch {
			case cur != nil && line == "```":
				out = append(out, *cur)
				cur = nil
			case cur != nil:
				cur.lines = append(cur.lines, line)
			case line == "```sh":
				ex := example{file: rel, line: n}
				marker, ok := strings.CutPrefix(prev, "<!-- example: ")
				marker, ok2 := strings.CutSuffix(marker, " -->")
				switch {
				case !ok || !ok2:
					t.Errorf("%s:%d: an sh block without an <!-- example: … --> line before it", rel, n)
				case marker == "demo", marker == "demo until stopped":
					ex.mode = strings.TrimPrefix(marker, "demo ")
				case strings.HasPrefix(marker, "not run"):
					ex.mode, ex.why = "not run", marker
				default:
					t.Errorf("%s:%d: unknown example marker %q", rel, n, marker)
				}
				cur = &ex
			case strings.TrimSpace(line) != "":
				prev = line
			}
		}
		fh.Close()
		if cur != nil {
			t.Errorf("%s: a block is not closed", rel)
		}
	}
	return out
}

// TestExamples runs every example marked for the demo as printed: the demo
// of `make run` (scripts/demo.sh: a Consul dev agent, the demo topology
// and glimpse-agent on 127.0.0.1:5959 and 5960, with the providers socket
// at /run/glimpse/providers.sock) starts in a network and mount namespace
// of its own, where those addresses are free whatever this host runs, and
// each example runs there from a directory holding the freshly built bin/.
func TestExamples(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the demo's namespace needs root")
	}
	root, consul := setup(t, "unshare", "ip", "curl", "dig", "jq", "timeout")
	all := examples(t, root)
	var run []example
	for _, ex := range all {
		if ex.mode != "not run" {
			run = append(run, ex)
		}
	}
	if len(run) < 10 {
		t.Fatalf("only %d examples marked to run", len(run))
	}

	// The directory the examples run in: bin/ freshly built, scripts/ and
	// docs/ from the repository.
	dir := t.TempDir()
	for _, b := range []struct{ name, pkg string }{{"glimpse-agent", "./cmd/glimpse-agent"}, {"glimpse", "./cmd/glimpse"}} {
		build := exec.Command("go", "build", "-o", filepath.Join(dir, "bin", b.name), b.pkg)
		build.Dir = root
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b.name, err, out)
		}
	}
	for _, d := range []string{"scripts", "docs"} {
		if err := os.Symlink(filepath.Join(root, d), filepath.Join(dir, d)); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString(`set -u
ip link set lo up
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mkdir -p /run/glimpse
export GLIMPSE_PROVIDERS_SOCKET=/run/glimpse/providers.sock
scripts/demo.sh >out/demo.log 2>&1 &
demo=$!
for i in $(seq 600); do
	curl -sf 127.0.0.1:5960/readyz >/dev/null 2>&1 && break
	kill -0 $demo 2>/dev/null || { echo "the demo exited" >out/failed; exit 1; }
	sleep 0.1
done
curl -sf 127.0.0.1:5960/readyz >/dev/null || { echo "the demo never became ready" >out/failed; kill $demo; wait; exit 1; }
`)
	for i, ex := range run {
		body := filepath.Join(out, fmt.Sprintf("%d.sh", i))
		if err := os.WriteFile(body, []byte("set -eo pipefail\n"+strings.Join(ex.lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		limit := runFor
		if ex.mode == "until stopped" {
			limit = untilStopped
		}
		fmt.Fprintf(&script, "timeout -k 5 %s bash %s >out/%d.out 2>out/%d.err; echo $? >out/%d.rc\n", limit, body, i, i, i)
	}
	script.WriteString("kill -TERM $demo; wait $demo || true\n")
	cmd := exec.Command("unshare", "--net", "--mount", "--fork", "bash", "-c", script.String())
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CONSUL_BIN="+consul)
	if b, err := cmd.CombinedOutput(); err != nil {
		demo, _ := os.ReadFile(filepath.Join(out, "demo.log"))
		failed, _ := os.ReadFile(filepath.Join(out, "failed"))
		t.Fatalf("the examples' namespace: %v %s %s\ndemo log:\n%s", err, b, failed, demo)
	}
	for i, ex := range run {
		rc, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("%d.rc", i)))
		stdout, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("%d.out", i)))
		stderr, _ := os.ReadFile(filepath.Join(out, fmt.Sprintf("%d.err", i)))
		code := strings.TrimSpace(string(rc))
		where := fmt.Sprintf("%s:%d (%s)", ex.file, ex.line, ex.mode)
		switch {
		case ex.mode == "demo" && code != "0":
			t.Errorf("%s: exit %s\n%s\nstdout:\n%s\nstderr:\n%s", where, code, strings.Join(ex.lines, "\n"), stdout, stderr)
		case ex.mode == "until stopped" && code != "124":
			t.Errorf("%s: exit %s before it was stopped\n%s\nstdout:\n%s\nstderr:\n%s", where, code, strings.Join(ex.lines, "\n"), stdout, stderr)
		case len(strings.TrimSpace(string(stdout))) == 0:
			t.Errorf("%s: printed nothing\n%s\nstderr:\n%s", where, strings.Join(ex.lines, "\n"), stderr)
		case strings.Contains(string(stdout), `"error"`):
			t.Errorf("%s: an error in the output\n%s\nstdout:\n%s", where, strings.Join(ex.lines, "\n"), stdout)
		case missing(ex, string(stdout)) != "":
			t.Errorf("%s: the output lacks the line the docs show, %q\nstdout:\n%s", where, missing(ex, string(stdout)), stdout)
		default:
			t.Logf("%s: ok:\n%s", where, stdout)
		}
	}
	for _, ex := range all {
		if ex.mode == "not run" {
			t.Logf("%s:%d: %s", ex.file, ex.line, ex.why)
		}
	}
}

// missing returns the first output line ex shows in a comment that stdout
// lacks, "" when none.
func missing(ex example, stdout string) string {
	have := map[string]bool{}
	for _, l := range strings.Split(stdout, "\n") {
		have[strings.TrimSpace(l)] = true
	}
	for _, l := range ex.lines {
		want, ok := strings.CutPrefix(strings.TrimSpace(l), "# ")
		if !ok || want == "" || !strings.ContainsAny(want[:1], "{[0123456789") {
			continue
		}
		if !have[want] {
			return want
		}
	}
	return ""
}
