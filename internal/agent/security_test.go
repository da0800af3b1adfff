package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"

	"github.com/rugby110/glimpse/internal/testconsul"
	"github.com/rugby110/glimpse/provider"
)

// socketClientEnv makes the test binary a providers-socket client: see
// asUser.
const socketClientEnv = "GLIMPSE_TEST_SOCKET_CLIENT"

// socketClient sends one request through the providers socket, as told by
// the environment, prints "<status> <body>" (or "error <why>") and exits.
func socketClient() {
	sock, method, path, body := os.Getenv(socketClientEnv), os.Getenv("GLIMPSE_TEST_METHOD"), os.Getenv("GLIMPSE_TEST_PATH"), os.Getenv("GLIMPSE_TEST_BODY")
	code, raw, err := overSocket(sock, method, path, []byte(body))
	if err != nil {
		fmt.Println("error", err)
		os.Exit(0)
	}
	fmt.Println(code, raw)
	os.Exit(0)
}

// overSocket sends a request through a providers socket.
func overSocket(sock, method, path string, body []byte) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 30 * time.Second}
	req, err := http.NewRequest(method, "http://localhost"+path, bytes.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), err
}

// asUser runs one request through the providers socket as uid:gid, from a
// copy of this test binary (so that the other user can run it), and
// returns what it printed.
func asUser(t *testing.T, uid, gid uint32, sock, method, path string, body []byte) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "gu")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "client")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = []string{socketClientEnv + "=" + sock, "GLIMPSE_TEST_METHOD=" + method, "GLIMPSE_TEST_PATH=" + path, "GLIMPSE_TEST_BODY=" + string(body)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as %d:%d: %v\n%s", uid, gid, err, out)
	}
	return strings.TrimSpace(string(out))
}

// recorded returns the instances recorded for provider p, read as anyone
// may.
func recorded(t *testing.T, a *Agent, p string) (int, []provider.Instance) {
	t.Helper()
	code, raw := do(t, "GET", "http://"+a.HTTPAddr()+"/v1/providers/"+p, nil)
	if code != http.StatusOK {
		return code, nil
	}
	var b provider.Body
	if err := json.Unmarshal([]byte(raw), &b); err != nil {
		t.Fatalf("%s: %v", raw, err)
	}
	return code, b.Instances
}

// rawRequest sends a request over TCP with the headers given, and returns
// the status and body.
func rawRequest(t testing.TB, method, url string, body []byte, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return resp.StatusCode, string(raw)
}

// TestProvidersRefuseBrowsers: a web page that got a browser to send to
// the agent, through DNS rebinding (its own name, resolving to 127.0.0.1)
// or a cross-origin request, writes nothing, even with a valid token (a
// page cannot have one, but the refusal must not rest on that alone).
func TestProvidersRefuseBrowsers(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	product := newProduct("rebind")
	victim := "victim"
	good := bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000})
	if code, raw := do(t, "PUT", "http://"+a.HTTPAddr()+"/v1/providers/"+victim, good); code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	_, port, _ := net.SplitHostPort(a.HTTPAddr())
	forged := bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 6666, Address: "6.6.6.6"})
	url := "http://" + a.HTTPAddr() + "/v1/providers/" + victim
	auth := "Bearer " + testToken
	for _, c := range []struct {
		what   string
		header map[string]string
		want   string
	}{
		{"rebinding Host", map[string]string{"Host": "evil.example:" + port, "Authorization": auth}, "Host"},
		{"rebinding Host without port", map[string]string{"Host": "evil.example", "Authorization": auth}, "Host"},
		{"foreign Origin", map[string]string{"Origin": "http://evil.example", "Authorization": auth}, "Origin"},
		{"Origin of the agent itself", map[string]string{"Origin": "http://" + a.HTTPAddr(), "Authorization": auth}, "Origin"},
		{"no token", map[string]string{}, "bearer token"},
		{"a wrong token", map[string]string{"Authorization": "Bearer " + strings.Repeat("x", 40)}, "not in"},
	} {
		for _, method := range []string{"PUT", "DELETE"} {
			code, raw := rawRequest(t, method, url, forged, c.header)
			if code != http.StatusForbidden || !strings.Contains(raw, c.want) {
				t.Errorf("%s %s: %d %s, want 403 naming %q", c.what, method, code, raw, c.want)
			}
		}
	}
	if code, ins := recorded(t, a, victim); code != 200 || len(ins) != 1 || ins[0].Port != 8000 {
		t.Errorf("after the refused writes: %d %v", code, ins)
	}
	// Reads stay open, whatever the Host.
	if code, _ := rawRequest(t, "GET", url, nil, map[string]string{"Host": "evil.example:" + port}); code != 200 {
		t.Errorf("a read with a foreign Host: %d", code)
	}
	// Hosts that may write: an IP literal, localhost.
	for _, host := range []string{"localhost:" + port, "127.0.0.1:" + port, "[::1]:" + port} {
		if code, raw := rawRequest(t, "PUT", url, good, map[string]string{"Host": host, "Authorization": auth}); code != 200 {
			t.Errorf("Host %s: %d %s", host, code, raw)
		}
	}
}

// TestProvidersTokenScope: a token writes only the providers its patterns
// name, and not those another token wrote.
func TestProvidersTokenScope(t *testing.T) {
	cfg := testConfig(t, consul.HTTPAddr())
	const tokA, tokB = "token-a-0123456789abcdef0123456789", "token-b-0123456789abcdef0123456789"
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("a "+tokA+" alpha-*,shared\nb "+tokB+" beta-*,shared\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.ProvidersTokens = file
	a := startAgent(t, cfg)
	body := bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: newProduct("scope"), Port: 8000})
	put := func(tok, name string) (int, string) {
		return rawRequest(t, "PUT", "http://"+a.HTTPAddr()+"/v1/providers/"+name, body, map[string]string{"Authorization": "Bearer " + tok})
	}
	if code, raw := put(tokA, "alpha-1"); code != 200 {
		t.Fatalf("a's own: %d %s", code, raw)
	}
	if code, raw := put(tokB, "alpha-1"); code != 403 || !strings.Contains(raw, "may not write") {
		t.Errorf("b writing a's pattern: %d %s", code, raw)
	}
	if code, raw := put(tokA, "shared"); code != 200 {
		t.Fatalf("a's shared: %d %s", code, raw)
	}
	if code, raw := put(tokB, "shared"); code != 403 || !strings.Contains(raw, "token:a") {
		t.Errorf("b writing the shared provider a wrote: %d %s", code, raw)
	}
	code, raw := rawRequest(t, "DELETE", "http://"+a.HTTPAddr()+"/v1/providers/shared", nil, map[string]string{"Authorization": "Bearer " + tokB})
	if code != 403 {
		t.Errorf("b deleting a's provider: %d %s", code, raw)
	}
}

// TestProvidersConsulCheckCannotWrite: a Consul token that may register a
// service may register an HTTP health check that the Consul agent runs
// over loopback, with the method, headers and body it likes. Aimed at the
// providers API, it changes nothing.
func TestProvidersConsulCheckCannotWrite(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	product := newProduct("checkatk")
	victim := "checkvictim"
	if code, raw := do(t, "PUT", "http://"+a.HTTPAddr()+"/v1/providers/"+victim, bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000})); code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	forged := string(bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 6666, Address: "6.6.6.6"}))
	c := consul.Client()
	svc := newProduct("attacker")
	for i, chk := range []*api.AgentServiceCheck{
		{Name: "put", HTTP: "http://" + a.HTTPAddr() + "/v1/providers/forged", Method: "PUT", Body: forged, Interval: "200ms", Timeout: "1s",
			Header: map[string][]string{"Content-Type": {"application/json"}}},
		{Name: "put-victim", HTTP: "http://" + a.HTTPAddr() + "/v1/providers/" + victim, Method: "PUT", Body: forged, Interval: "200ms", Timeout: "1s"},
		{Name: "delete", HTTP: "http://" + a.HTTPAddr() + "/v1/providers/" + victim, Method: "DELETE", Interval: "200ms", Timeout: "1s"},
	} {
		chk.CheckID = fmt.Sprintf("%s-%d", svc, i)
		if err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: fmt.Sprintf("%s-%d", svc, i), Name: svc, Port: 1, Check: chk}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range 3 {
			c.Agent().ServiceDeregister(fmt.Sprintf("%s-%d", svc, i))
		}
	})
	// Each check has run, and was refused: Consul keeps the answer as the
	// check's output.
	testconsul.WaitFor(t, 15*time.Second, func() bool {
		checks, err := c.Agent().Checks()
		if err != nil {
			return false
		}
		refused := 0
		for i := range 3 {
			if ch := checks[fmt.Sprintf("%s-%d", svc, i)]; ch != nil && strings.Contains(ch.Output, "403") {
				refused++
			}
		}
		return refused == 3
	}, "the checks never ran against the providers API")
	if code, ins := recorded(t, a, victim); code != 200 || len(ins) != 1 || ins[0].Port != 8000 {
		t.Errorf("the victim after the checks ran: %d %v", code, ins)
	}
	if code, _ := recorded(t, a, "forged"); code != http.StatusNotFound {
		t.Errorf("a provider the check PUT exists: %d", code)
	}
}

// TestProvidersSocketIdentity: through the socket a provider writes as its
// local user: root's providers are root's, another user's are that user's,
// a user outside the socket's group cannot connect at all.
func TestProvidersSocketIdentity(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root, to act as other users")
	}
	cfg := testConfig(t, consul.HTTPAddr())
	cfg.ProvidersSocketGroup = "65534" // nogroup: the other user below is in it
	a := startAgent(t, cfg)
	sock := a.http.Socket()
	if err := os.Chmod(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(sock); err != nil || st.Mode().Perm() != 0o660 || st.Sys().(*syscall.Stat_t).Gid != 65534 {
		t.Fatalf("socket %v: %v", st.Mode(), err)
	}
	product := newProduct("sock")
	body := bodyOf(t, provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: 8000})
	if code, raw, err := overSocket(sock, "PUT", "/v1/providers/rootprov", body); err != nil || code != 200 {
		t.Fatalf("root's PUT: %d %s %v", code, raw, err)
	}
	// nobody (65534), in the socket's group.
	if out := asUser(t, 65534, 65534, sock, "PUT", "/v1/providers/rootprov", body); !strings.HasPrefix(out, "403") || !strings.Contains(out, "uid:0") {
		t.Errorf("another user's PUT of root's provider: %s", out)
	}
	if out := asUser(t, 65534, 65534, sock, "DELETE", "/v1/providers/rootprov", nil); !strings.HasPrefix(out, "403") {
		t.Errorf("another user's DELETE of root's provider: %s", out)
	}
	if out := asUser(t, 65534, 65534, sock, "PUT", "/v1/providers/nobodyprov", body); !strings.HasPrefix(out, "200") {
		t.Errorf("another user's own PUT: %s", out)
	}
	if r, err := provider.NewStore(filepath.Join(cfg.DataDir, "providers")); err == nil {
		if rec, err := r.LoadRecord("nobodyprov"); err != nil || rec.Owner != "uid:65534" {
			t.Errorf("owner of nobody's provider %q (%v)", rec.Owner, err)
		}
	}
	// Root may change anyone's.
	if code, raw, err := overSocket(sock, "DELETE", "/v1/providers/nobodyprov", nil); err != nil || code != 200 {
		t.Errorf("root's DELETE of another user's provider: %d %s %v", code, raw, err)
	}
	// A user outside the group is refused by the kernel.
	if out := asUser(t, 65534, 65533, sock, "PUT", "/v1/providers/outsider", body); !strings.Contains(out, "permission denied") {
		t.Errorf("a user outside the socket's group: %s", out)
	}
	if code, ins := recorded(t, a, "rootprov"); code != 200 || len(ins) != 1 {
		t.Errorf("root's provider after the others' writes: %d %v", code, ins)
	}
}

// bigBody is a provider body of n instances of product on ports from base.
func bigBody(t *testing.T, product string, n, base int) []byte {
	t.Helper()
	ins := make([]provider.Instance, n)
	for i := range ins {
		ins[i] = provider.Instance{Service: "http", Job: "stream", Env: "prod", Product: product, Port: base + i}
	}
	return bodyOf(t, ins...)
}

// registeredPorts returns the ports of the Consul agent's registrations of
// provider p.
func registeredPorts(t *testing.T, c *api.Client, p string) map[int]bool {
	t.Helper()
	svcs, err := c.Agent().ServicesWithFilter(fmt.Sprintf("%q in Tags", provider.TagProvider+p))
	if err != nil {
		t.Fatal(err)
	}
	ports := make(map[int]bool, len(svcs))
	for _, s := range svcs {
		ports[s.Port] = true
	}
	return ports
}

// TestProvidersLargeWrite: a provider of 3,000 instances is written, and
// another provider's write meanwhile does not wait for it; the agent
// stopped in the middle of such a write stops within 10 s, and the next
// agent on the same data directory makes Consul hold the recorded state
// exactly. Most of the time of the 3,000 is the Consul agent's: it
// registers services one at a time, each slower the more the node holds
// (its anti-entropy sync walks every local service and check per
// registration); 4.8-5 s here, under -race, with Consul at its default
// log level (at DEBUG, a line per service per sync doubled it).
func TestProvidersLargeWrite(t *testing.T) {
	// A Consul agent of its own: what a registration costs depends on the
	// services its node holds already (the shared one's other tests).
	srv := testconsul.Start(t, testconsul.Options{Dev: true, Datacenter: "dc1"})
	c := srv.Client()
	cfg := testConfig(t, srv.HTTPAddr())
	a, stop := stoppableAgent(t, cfg)
	sock := a.http.Socket()
	product := newProduct("big")
	big, small := "bigprov", "smallprov"

	type result struct {
		code int
		raw  string
		err  error
		took time.Duration
	}
	put := func(sock, name string, body []byte) chan result {
		ch := make(chan result, 1)
		go func() {
			began := time.Now()
			code, raw, err := overSocket(sock, "PUT", "/v1/providers/"+name, body)
			ch <- result{code, raw, err, time.Since(began)}
		}()
		return ch
	}
	bigDone := put(sock, big, bigBody(t, product, 3000, 20000))
	// Once the big write is under way, a small one of another provider.
	testconsul.WaitFor(t, 30*time.Second, func() bool { return len(registeredPorts(t, c, big)) > 0 }, "the big write never started")
	s := <-put(sock, small, bigBody(t, newProduct("small"), 1, 9000))
	if s.err != nil || s.code != 200 {
		t.Fatalf("small PUT: %d %s %v", s.code, s.raw, s.err)
	}
	if n := len(registeredPorts(t, c, big)); n == 3000 {
		t.Log("the big write was over before the small one was answered")
	}
	if s.took > time.Second {
		t.Errorf("a 1-instance PUT during a 3,000-instance one took %v", s.took)
	}
	var b result
	select {
	case b = <-bigDone:
	case <-time.After(2 * time.Minute):
		t.Fatal("a 3,000-instance PUT still runs after 2 minutes")
	}
	if b.err != nil || b.code != 200 {
		t.Fatalf("big PUT: %d %s %v", b.code, b.raw, b.err)
	}
	t.Logf("3,000 instances written in %v; 1 instance of another provider meanwhile in %v", b.took, s.took)
	if b.took > 10*time.Second {
		t.Errorf("a 3,000-instance PUT took %v", b.took)
	}
	if n := len(registeredPorts(t, c, big)); n != 3000 {
		t.Fatalf("%d registrations, want 3,000", n)
	}
	for _, p := range []string{big, small} {
		if code, raw, err := overSocket(sock, "DELETE", "/v1/providers/"+p, nil); err != nil || code != 200 {
			t.Fatalf("DELETE %s: %d %s %v", p, code, raw, err)
		}
	}

	// The agent stopped during another 3,000-instance write.
	big2 := "bigprov2"
	moved := put(sock, big2, bigBody(t, product, 3000, 40000))
	testconsul.WaitFor(t, 30*time.Second, func() bool { return len(registeredPorts(t, c, big2)) > 0 }, "the second big write never started")
	began := time.Now()
	stop()
	took := time.Since(began)
	m := <-moved
	t.Logf("stopped in %v, with %d of 3,000 registered (the write's answer: %d %s)", took, len(registeredPorts(t, c, big2)), m.code, strings.TrimSpace(m.raw))
	if took > 10*time.Second {
		t.Errorf("the agent took %v to stop during a write", took)
	}

	// A new agent on the same data directory applies what was recorded.
	cfg2 := testConfig(t, srv.HTTPAddr())
	cfg2.DataDir = cfg.DataDir
	a2 := startAgent(t, cfg2)
	t.Cleanup(func() { overSocket(a2.http.Socket(), "DELETE", "/v1/providers/"+big2, nil) })
	testconsul.WaitFor(t, 2*time.Minute, func() bool {
		ports := registeredPorts(t, c, big2)
		if len(ports) != 3000 {
			return false
		}
		for p := range ports {
			if p < 40000 || p >= 43000 {
				return false
			}
		}
		return true
	}, "Consul never held the recorded 3,000 instances after the restart")
}

// TestDataDirLocked: a second agent on a data directory in use does not
// start, and says which process holds it.
func TestDataDirLocked(t *testing.T) {
	cfg := testConfig(t, consul.HTTPAddr())
	startAgent(t, cfg)
	cfg2 := testConfig(t, consul.HTTPAddr())
	cfg2.DataDir = cfg.DataDir
	_, err := New(context.Background(), cfg2, nopLogger(t))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("in use by another glimpse-agent (pid %d)", os.Getpid())) {
		t.Fatalf("a second agent on the same data directory: %v", err)
	}
	if st, err := os.Stat(cfg.DataDir); err != nil || st.Mode().Perm()&0o077 != 0 {
		t.Errorf("data directory mode %v (%v)", st.Mode(), err)
	}
}

// rss returns the process's resident set size in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	var size, res int64
	fmt.Sscan(string(data), &size, &res)
	return res * int64(os.Getpagesize())
}

// TestStalledBodies: 150 clients with a valid token each send most of a
// 4 MiB provider body and stall. The agent reads a few bodies at a time and
// leaves the rest in the kernel, so its memory grows by far less than the
// 600 MiB they hold back; it keeps answering, and a local provider's write
// through the socket is not held up by them.
func TestStalledBodies(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	runtime.GC()
	before := rss(t)
	const n = 150
	chunk := bytes.Repeat([]byte(" "), 1<<20)
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	done := make(chan struct{}, n)
	for i := range n {
		c, err := net.Dial("tcp", a.HTTPAddr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		go func() {
			defer func() { done <- struct{}{} }()
			fmt.Fprintf(c, "PUT /v1/providers/stall%d HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n{\"instances\": [", i, testToken, provider.MaxBody)
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			for range 3 { // 3 of the 4 MiB, then nothing more
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	for range n {
		<-done
	}
	grown := rss(t) - before
	t.Logf("RSS grew by %d MiB with %d stalled bodies of 4 MiB", grown>>20, n)
	if grown > 100<<20 {
		t.Errorf("RSS grew by %d MiB", grown>>20)
	}
	began := time.Now()
	if code, _ := do(t, "GET", "http://"+a.HTTPAddr()+"/healthz", nil); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, raw, err := overSocket(a.http.Socket(), "PUT", "/v1/providers/local", bigBody(t, newProduct("local"), 1, 7000)); err != nil || code != 200 {
		t.Errorf("a local write during the stall: %d %s %v", code, raw, err)
	}
	t.Logf("/healthz and a local write answered in %v", time.Since(began))
	overSocket(a.http.Socket(), "DELETE", "/v1/providers/local", nil)
}

var (
	agentBinOnce sync.Once
	agentBin     string
	agentBinErr  error
)

// agentBinary builds glimpse-agent once for the tests that run it as a
// process of its own.
func agentBinary(t *testing.T) string {
	t.Helper()
	agentBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "glimpse-agent-bin")
		if err != nil {
			agentBinErr = err
			return
		}
		agentBin = filepath.Join(dir, "glimpse-agent")
		out, err := exec.Command("go", "build", "-o", agentBin, "github.com/rugby110/glimpse/cmd/glimpse-agent").CombinedOutput()
		if err != nil {
			agentBinErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if agentBinErr != nil {
		t.Fatal(agentBinErr)
	}
	return agentBin
}

// freeUDPTCPAddr returns a 127.0.0.1 address whose port is free for UDP
// and TCP a moment ago.
func freeUDPTCPAddr(t *testing.T) string {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err == nil {
			u.Close()
			return addr
		}
	}
	t.Fatal("no free port")
	return ""
}

// trickleEnv makes the test binary a trickling client: see
// TestTrickledBodies.
const trickleEnv = "GLIMPSE_TEST_TRICKLE"

// trickleClient opens the connections the environment asks for, sends
// each the head of a provider write with a 1,000-byte body, then one byte
// of the body per connection a second for 5 s, and prints how many it
// opened and how many the agent had closed by then.
func trickleClient() {
	var addr string
	var n int
	fmt.Sscanf(os.Getenv(trickleEnv), "%s %d", &addr, &n)
	head := []byte("PUT /v1/providers/trickle HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{")
	var conns []net.Conn
	failed := 0
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			failed++
			continue
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		c.Write(head)
		conns = append(conns, c)
	}
	closed := map[int]bool{}
	for range 5 {
		time.Sleep(time.Second)
		for i, c := range conns {
			c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			if _, err := c.Write([]byte(" ")); err != nil {
				closed[i] = true
			}
		}
	}
	fmt.Println(len(conns), failed, len(closed))
	os.Exit(0)
}

// TestTrickledBodies: 20,000 connections each trickle a provider write's
// body a byte a second into a glimpse-agent process, from two client
// processes; meanwhile /healthz and DNS answer within 1 s. A write without
// an identity is refused before its body is read, and its connection
// closed rather than kept to read the rest, so tricklers cost the agent no
// connection for long.
func TestTrickledBodies(t *testing.T) {
	bin := agentBinary(t)
	dnsAddr, httpAddr := freeUDPTCPAddr(t), freeUDPTCPAddr(t)
	cmd := exec.Command(bin, "-consul.addr", consul.HTTPAddr(), "-dns.addr", dnsAddr, "-http.addr", httpAddr,
		"-data.dir", t.TempDir(), "-providers.socket", "", "-log.level", "warn")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("agent's stderr:\n%s", stderr.String())
		}
	})
	client := &http.Client{Timeout: time.Second}
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		resp, err := client.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}, "the agent never became ready")

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	const perClient = 10000
	type result struct {
		out string
		err error
	}
	results := make(chan result, 2)
	for range 2 {
		c := exec.Command(self)
		c.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", trickleEnv, httpAddr, perClient))
		go func() {
			out, err := c.Output()
			results <- result{strings.TrimSpace(string(out)), err}
		}()
	}
	var worst time.Duration
	probes := 0
	for pending := 2; pending > 0; {
		select {
		case r := <-results:
			pending--
			if r.err != nil {
				t.Fatalf("trickling client: %v", r.err)
			}
			var opened, failed, closed int
			fmt.Sscan(r.out, &opened, &failed, &closed)
			t.Logf("a client opened %d connections (%d failed), the agent closed %d of them", opened, failed, closed)
			if opened+failed != perClient || opened < perClient*9/10 {
				t.Errorf("a client opened %d of %d connections (%q)", opened, perClient, r.out)
			}
			continue
		case <-time.After(200 * time.Millisecond):
		}
		began := time.Now()
		resp, err := client.Get("http://" + httpAddr + "/healthz")
		if err != nil {
			t.Errorf("/healthz: %v", err)
		} else {
			resp.Body.Close()
		}
		m := new(mdns.Msg)
		m.SetQuestion("dc1.srv.glimpse.io.", mdns.TypeSOA)
		r, _, err := (&mdns.Client{Timeout: time.Second}).Exchange(m, dnsAddr)
		if err != nil || r.Rcode != mdns.RcodeSuccess {
			t.Errorf("DNS: %v %v", r, err)
		}
		worst = max(worst, time.Since(began))
		probes++
	}
	t.Logf("%d probes of /healthz and DNS while the connections trickled: the slowest pair took %v", probes, worst)
	if worst > time.Second {
		t.Errorf("/healthz and DNS took up to %v", worst)
	}
}

// TestServerFaultLogged: a write the data directory refuses (here: a
// file where the providers' directory goes) is a 500, with the cause in the
// answer, a log line and the requests metric; the caller's mistakes are
// never 500s.
func TestServerFaultLogged(t *testing.T) {
	cfg := testConfig(t, consul.HTTPAddr())
	a, logs := debugAgent(t, cfg)
	waitSynced(t, a)
	store := filepath.Join(cfg.DataDir, "providers")
	if err := os.RemoveAll(store); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(store, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, raw, err := overSocket(a.http.Socket(), "PUT", "/v1/providers/jammed", bigBody(t, newProduct("jam"), 1, 7000))
	if err != nil || code != http.StatusInternalServerError || !strings.Contains(raw, "jammed") {
		t.Fatalf("PUT into a jammed store: %d %s %v", code, raw, err)
	}
	testconsul.WaitFor(t, 5*time.Second, func() bool {
		return strings.Contains(logs.String(), "the agent's own fault") && strings.Contains(logs.String(), "jammed")
	}, "no log line for the 500")
	if v := metricValue(scrape(t, a.HTTPAddr()), `glimpse_http_requests_total{code="500",endpoint="providers"}`); v != 1 {
		t.Errorf("500s counted: %v", v)
	}
}
