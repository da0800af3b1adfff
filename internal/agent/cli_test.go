package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gapi "github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/internal/cli"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// glimpseCLI runs the glimpse command in process and returns its exit
// status, stdout and stderr.
func glimpseCLI(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code := cli.Run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestCLI: every verb of the glimpse command against a real agent, and its
// errors (one line, a non-zero exit).
func TestCLI(t *testing.T) {
	c := consul.Client()
	p := newProduct("cli")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: "127.0.9.1", port: 8001})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	addr := "http.stream.prod." + p + ".dc1"
	at := []string{"-http-addr", a.HTTPAddr()}

	code, out, errOut := glimpseCLI(t, "", append(at, "lookup", addr)...)
	var l gapi.Lookup
	if code != 0 || json.Unmarshal([]byte(out), &l) != nil || len(l.Instances) != 1 || l.Instances[0].Port != 8001 {
		t.Fatalf("lookup: %d %q %q", code, out, errOut)
	}
	if code, out, errOut = glimpseCLI(t, "", append(at, "lookup", "-health", "any", addr)...); code != 0 {
		t.Errorf("lookup -health any: %d %q %q", code, out, errOut)
	}
	var z gapi.Zones
	if code, out, _ = glimpseCLI(t, "", append(at, "zones")...); code != 0 || json.Unmarshal([]byte(out), &z) != nil || len(z.Zones) == 0 {
		t.Errorf("zones: %d %q", code, out)
	}
	if code, out, _ = glimpseCLI(t, "", append(at, "topology")...); code != 0 || !strings.Contains(out, "└─ "+p) || !strings.Contains(out, "└─ http  passing 1, warning 0, critical 0") {
		t.Errorf("topology: %d\n%s", code, out)
	}

	// Providers, through the socket.
	sock := append(at, "-socket", a.http.Socket())
	body := `{"instances": [{"service": "http", "job": "j", "env": "prod", "product": "` + p + `", "port": 9200}]}`
	if code, out, errOut = glimpseCLI(t, body, append(sock, "providers", "put", "cliprov")...); code != 0 || !strings.Contains(out, `"instances": 1`) {
		t.Fatalf("providers put: %d %q %q", code, out, errOut)
	}
	file := filepath.Join(t.TempDir(), "body.json")
	os.WriteFile(file, []byte(body), 0o600)
	if code, out, errOut = glimpseCLI(t, "", append(sock, "providers", "put", "cliprov", file)...); code != 0 {
		t.Errorf("providers put FILE: %d %q %q", code, out, errOut)
	}
	if code, out, _ = glimpseCLI(t, "", append(sock, "providers", "get", "cliprov")...); code != 0 || !strings.Contains(out, `"port": 9200`) {
		t.Errorf("providers get: %d %q", code, out)
	}
	if code, out, _ = glimpseCLI(t, "", append(sock, "providers", "list")...); code != 0 || !strings.Contains(out, `"provider": "cliprov"`) {
		t.Errorf("providers list: %d %q", code, out)
	}
	if code, out, _ = glimpseCLI(t, "", append(sock, "providers", "delete", "cliprov")...); code != 0 || !strings.Contains(out, `"deleted": true`) {
		t.Errorf("providers delete: %d %q", code, out)
	}

	// Errors: one line on stderr, a non-zero exit.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"lookup", "a.b"}, 1, "2 labels"},
		{[]string{"lookup"}, 2, "want one address"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"providers", "get", "nope"}, 1, "404"},
		{[]string{"providers", "put", "x"}, 1, "403"}, // over TCP without a token
	} {
		code, _, errOut := glimpseCLI(t, body, append(at, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.msg) || strings.Count(strings.TrimSpace(errOut), "\n") > 0 && tc.code == 1 {
			t.Errorf("glimpse %v: exit %d, stderr %q; want %d and one line with %q", tc.args, code, errOut, tc.code, tc.msg)
		}
	}
	if code, _, errOut := glimpseCLI(t, "", "-http-addr", "127.0.0.1:1", "zones"); code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("no agent: exit %d, %q", code, errOut)
	}
}

// lineReader collects a running command's stdout by lines.
type lineReader struct {
	lines chan string
}

func newLineReader(r io.Reader) *lineReader {
	lr := &lineReader{lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			lr.lines <- sc.Text()
		}
		close(lr.lines)
	}()
	return lr
}

// waitLine reads lines until one contains all of want.
func (lr *lineReader) waitLine(t *testing.T, what string, want ...string) string {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lr.lines:
			if !ok {
				t.Fatalf("output ended before %s", what)
			}
			all := true
			for _, w := range want {
				all = all && strings.Contains(l, w)
			}
			if all {
				return l
			}
		case <-deadline:
			t.Fatalf("no line with %s within 30 s", what)
		}
	}
}

// TestCLIWatch: glimpse watch prints the change after a Consul write, and
// again after an agent restart; glimpse watch -exec runs its command with
// the current set once synced and at each change.
func TestCLIWatch(t *testing.T) {
	c := consul.Client()
	p := newProduct("cliw")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", address: "127.0.9.11", port: 8001})
	cfg := testConfig(t, consul.HTTPAddr())
	a, stop := stoppableAgent(t, cfg)
	addr := "http.stream.prod." + p + ".dc1"

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, []string{"-http-addr", a.HTTPAddr(), "watch", addr}, strings.NewReader(""), pw, &errOut)
		pw.Close()
	}()
	lines := newLineReader(pr)
	lines.waitLine(t, "the snapshot", `"type":"snapshot"`, `"port":8001`)

	register(t, c, instance{id: p + "-b", product: p, env: "prod", job: "stream", service: "http", address: "127.0.9.12", port: 8002})
	lines.waitLine(t, "the update", `"type":"update"`, `"port":8001`, `"port":8002`)

	// The agent restarts on the same address; a change after it shows.
	stop()
	cfg2 := testConfig(t, consul.HTTPAddr())
	cfg2.HTTPAddr = a.HTTPAddr()
	startAgent(t, cfg2)
	register(t, c, instance{id: p + "-c", product: p, env: "prod", job: "stream", service: "http", address: "127.0.9.13", port: 8003})
	lines.waitLine(t, "the change after the restart", `"port":8001`, `"port":8002`, `"port":8003`)

	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("watch ended with %d: %s", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not end after cancel")
	}

	// -exec: the command gets the current set on stdin.
	out := filepath.Join(t.TempDir(), "sets")
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	done2 := make(chan int, 1)
	go func() {
		done2 <- cli.Run(ctx2, []string{"-http-addr", cfg2.HTTPAddr, "watch", "-exec", "cat >> " + out, addr}, strings.NewReader(""), io.Discard, io.Discard)
	}()
	readSets := func() []map[string][]gapi.Instance {
		data, _ := os.ReadFile(out)
		var sets []map[string][]gapi.Instance
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			var m map[string][]gapi.Instance
			if json.Unmarshal([]byte(l), &m) == nil {
				sets = append(sets, m)
			}
		}
		return sets
	}
	testconsul.WaitFor(t, 30*time.Second, func() bool { s := readSets(); return len(s) == 1 && len(s[0][addr]) == 3 }, "the first run of -exec")
	if err := c.Agent().ServiceDeregister(p + "-a"); err != nil {
		t.Fatal(err)
	}
	testconsul.WaitFor(t, 30*time.Second, func() bool { s := readSets(); return len(s) >= 2 && len(s[len(s)-1][addr]) == 2 }, "the run of -exec after the change")
	cancel2()
	<-done2
}
