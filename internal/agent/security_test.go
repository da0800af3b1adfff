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
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"glimpse/internal/testconsul"
	"glimpse/provider"
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
func rawRequest(t *testing.T, method, url string, body []byte, header map[string]string) (int, string) {
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
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
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
func registeredPorts(t *testing.T, p string) map[int]bool {
	t.Helper()
	svcs, err := consul.Client().Agent().ServicesWithFilter(fmt.Sprintf("%q in Tags", provider.TagProvider+p))
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
// exactly. How long the 3,000 take is the Consul agent's: it registers
// services one at a time, each slower the more it holds (27.7 s for 3,000
// in a row on the machine these were written on, before glimpse).
func TestProvidersLargeWrite(t *testing.T) {
	cfg := testConfig(t, consul.HTTPAddr())
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
	testconsul.WaitFor(t, 30*time.Second, func() bool { return len(registeredPorts(t, big)) > 0 }, "the big write never started")
	s := <-put(sock, small, bigBody(t, newProduct("small"), 1, 9000))
	if s.err != nil || s.code != 200 {
		t.Fatalf("small PUT: %d %s %v", s.code, s.raw, s.err)
	}
	if n := len(registeredPorts(t, big)); n == 3000 {
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
	if n := len(registeredPorts(t, big)); n != 3000 {
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
	testconsul.WaitFor(t, 30*time.Second, func() bool { return len(registeredPorts(t, big2)) > 0 }, "the second big write never started")
	began := time.Now()
	stop()
	took := time.Since(began)
	m := <-moved
	t.Logf("stopped in %v, with %d of 3,000 registered (the write's answer: %d %s)", took, len(registeredPorts(t, big2)), m.code, strings.TrimSpace(m.raw))
	if took > 10*time.Second {
		t.Errorf("the agent took %v to stop during a write", took)
	}

	// A new agent on the same data directory applies what was recorded.
	cfg2 := testConfig(t, consul.HTTPAddr())
	cfg2.DataDir = cfg.DataDir
	a2 := startAgent(t, cfg2)
	t.Cleanup(func() { overSocket(a2.http.Socket(), "DELETE", "/v1/providers/"+big2, nil) })
	testconsul.WaitFor(t, 2*time.Minute, func() bool {
		ports := registeredPorts(t, big2)
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
