package testunbound

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// authServer is a tiny authoritative server for one zone, on 127.0.0.1:0
// (UDP and TCP on the same port). It records the questions it was asked.
type authServer struct {
	zone    string
	records map[string][]dns.RR // by lower-case owner name

	mu   sync.Mutex
	seen []dns.Question
	rd   bool // some query arrived with RD set
}

func startAuthServer(t *testing.T, zone string, rrs ...string) (*authServer, string) {
	t.Helper()
	s := &authServer{zone: dns.Fqdn(zone), records: map[string][]dns.RR{}}
	for _, text := range rrs {
		rr, err := dns.NewRR(text)
		if err != nil {
			t.Fatalf("NewRR(%q): %v", text, err)
		}
		name := strings.ToLower(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
	}

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", s.serve)
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: mux},
		{Listener: ln, Handler: mux},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("test DNS server did not start")
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return s, addr
}

func (s *authServer) soa() dns.RR {
	rr, _ := dns.NewRR(s.zone + " 5 IN SOA ns." + s.zone + " hostmaster." + s.zone + " 1 3600 600 86400 5")
	return rr
}

func (s *authServer) serve(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	s.mu.Lock()
	s.seen = append(s.seen, q)
	s.rd = s.rd || req.RecursionDesired
	s.mu.Unlock()

	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(s.zone, name) {
		m.Rcode = dns.RcodeRefused
		m.Authoritative = false
		_ = w.WriteMsg(m)
		return
	}
	rrs, exists := s.records[name]
	if !exists {
		// An empty non-terminal exists too (NODATA, not NXDOMAIN).
		for owner := range s.records {
			if dns.IsSubDomain(name, owner) {
				exists = true
				break
			}
		}
	}
	for _, rr := range rrs {
		if rr.Header().Rrtype == q.Qtype {
			m.Answer = append(m.Answer, rr)
		}
	}
	if len(m.Answer) == 0 {
		if !exists && name != s.zone {
			m.Rcode = dns.RcodeNameError
		}
		m.Ns = []dns.RR{s.soa()}
	}
	_ = w.WriteMsg(m)
}

func (s *authServer) questions() []dns.Question {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]dns.Question(nil), s.seen...)
}

func TestStubZoneThroughUnbound(t *testing.T) {
	auth, addr := startAuthServer(t, DefaultDomain,
		"x.srv.glimpse.io. 5 IN A 192.0.2.1",
		"http.stream.prod.goku.dc1.srv.glimpse.io. 5 IN SRV 0 0 8080 node1.node.dc1.srv.glimpse.io.",
		"node1.node.dc1.srv.glimpse.io. 5 IN A 192.0.2.7",
	)
	u := Start(t, addr, "")

	host, _, err := net.SplitHostPort(u.Addr())
	if err != nil || host != "127.0.0.1" {
		t.Fatalf("Addr() = %q, want 127.0.0.1:port", u.Addr())
	}

	r, err := u.Query("x.srv.glimpse.io.", dns.TypeA)
	if err != nil {
		t.Fatalf("query through unbound: %v", err)
	}
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("rcode %s, want NOERROR\n%v", dns.RcodeToString[r.Rcode], r)
	}
	if len(r.Answer) != 1 {
		t.Fatalf("want one answer, got\n%v", r)
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok || !a.A.Equal(net.ParseIP("192.0.2.1")) {
		t.Fatalf("want A 192.0.2.1, got %v", r.Answer[0])
	}
	if a.Hdr.Ttl > 5 {
		t.Errorf("TTL %d exceeds the server's 5", a.Hdr.Ttl)
	}

	// A deep name: Unbound minimises the query name, walking the empty
	// non-terminals below the stub zone first.
	r, err = u.Query("http.stream.prod.goku.dc1.srv.glimpse.io.", dns.TypeSRV)
	if err != nil {
		t.Fatalf("SRV query through unbound: %v", err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("SRV: want one answer, got\n%v", r)
	}
	if srv, ok := r.Answer[0].(*dns.SRV); !ok || srv.Port != 8080 || srv.Target != "node1.node.dc1.srv.glimpse.io." {
		t.Fatalf("SRV: got %v", r.Answer[0])
	}

	// Negative answer: NXDOMAIN passes through with the zone's SOA.
	r, err = u.Query("nope.srv.glimpse.io.", dns.TypeA)
	if err != nil {
		t.Fatalf("negative query through unbound: %v", err)
	}
	if r.Rcode != dns.RcodeNameError {
		t.Fatalf("rcode %s, want NXDOMAIN\n%v", dns.RcodeToString[r.Rcode], r)
	}

	// Names outside the stub zone never reach the stub.
	for _, q := range auth.questions() {
		if !dns.IsSubDomain(DefaultDomain, strings.ToLower(q.Name)) {
			t.Errorf("stub was asked about %s, outside %s", q.Name, DefaultDomain)
		}
	}
	if len(auth.questions()) == 0 {
		t.Error("the stub server was never asked")
	}
	auth.mu.Lock()
	t.Logf("questions the stub saw (RD set on any: %v): %v", auth.rd, auth.seen)
	auth.mu.Unlock()
}

func TestCustomDomain(t *testing.T) {
	_, addr := startAuthServer(t, "glimpse.example.", "x.glimpse.example. 5 IN A 192.0.2.2")
	u := Start(t, addr, "glimpse.example")
	r, err := u.Query("x.glimpse.example.", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.ParseIP("192.0.2.2")) {
		t.Fatalf("want A 192.0.2.2, got\n%v", r)
	}
	conf, err := os.ReadFile(filepath.Join(u.Dir(), "unbound.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), `name: "glimpse.example."`) || strings.Contains(string(conf), `name: "srv.glimpse.io."`) {
		t.Errorf("zone not renamed in generated config:\n%s", conf)
	}
}

func TestRewriteConf(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, ConfFile))
	if err != nil {
		t.Fatal(err)
	}
	// The documented file must point at the agent's default DNS address.
	if !strings.Contains(string(doc), "stub-addr: 127.0.0.1@5959\n") {
		t.Errorf("%s: no `stub-addr: 127.0.0.1@5959` line", ConfFile)
	}
	for _, want := range []string{
		`name: "srv.glimpse.io."`,
		"do-not-query-localhost: no",
		`domain-insecure: "srv.glimpse.io."`,
	} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("%s: missing %q", ConfFile, want)
		}
	}

	got, err := rewriteConf(string(doc), "127.0.0.1@40000", DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "    stub-addr: 127.0.0.1@40000\n") || strings.Contains(got, "@5959") {
		t.Errorf("stub-addr not replaced:\n%s", got)
	}

	got, err = rewriteConf("forward-zone:\n  forward-addr: 127.0.0.1@5959 # agent\n", "::1@40000", DefaultDomain)
	if err != nil || got != "forward-zone:\n  forward-addr: ::1@40000\n" {
		t.Errorf("forward-addr not replaced: %q, %v", got, err)
	}

	if _, err := rewriteConf("server:\n", "127.0.0.1@1", DefaultDomain); err == nil {
		t.Error("want an error for a config without stub-addr")
	}

	for in, want := range map[string]string{
		"127.0.0.1:5959": "127.0.0.1@5959",
		"[::1]:53":       "::1@53",
	} {
		if got, err := unboundAddr(in); err != nil || got != want {
			t.Errorf("unboundAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"localhost:53", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:x"} {
		if _, err := unboundAddr(bad); err == nil {
			t.Errorf("unboundAddr(%q): want an error", bad)
		}
	}
}

// TestDocMatchesConf keeps docs/unbound.md's configuration block in step with
// docs/unbound-glimpse.conf, which the tests use.
func TestDocMatchesConf(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(filepath.Join(root, ConfFile))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, "docs", "unbound.md"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, line := range strings.Split(string(conf), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			want = append(want, strings.TrimRight(line, " \t"))
		}
	}
	block := strings.Join(want, "\n")
	// The documented block, with blank lines between clauses, minus blanks.
	var got []string
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.TrimSpace(line) != "" {
			got = append(got, strings.TrimRight(line, " \t"))
		}
	}
	if !strings.Contains(strings.Join(got, "\n"), block) {
		t.Errorf("docs/unbound.md does not contain the configuration lines of %s, in order:\n%s", ConfFile, block)
	}
}
