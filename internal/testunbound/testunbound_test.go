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

	"github.com/rugby110/glimpse/internal/testconsul"
)

// authServer is a tiny authoritative server for one zone, on 127.0.0.1:0
// (UDP and TCP on the same port). It records the questions it was asked.
type authServer struct {
	zone    string
	records map[string][]dns.RR // by lower-case owner name

	mu   sync.Mutex
	seen []dns.Question
	noRD int // queries that arrived without RD
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

	// UDP and TCP on one port: the UDP port the kernel picks may be taken
	// for TCP, so try a few.
	var (
		pc   net.PacketConn
		ln   net.Listener
		addr string
	)
	for try := 0; ; try++ {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		addr = pc.LocalAddr().String()
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		pc.Close()
		if try == 20 {
			t.Fatal(err)
		}
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
	if !req.RecursionDesired {
		s.noRD++
	}
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
			// Glue for NS answers, as glimpse-agent gives it.
			if ns, ok := rr.(*dns.NS); ok {
				for _, g := range s.records[strings.ToLower(ns.Ns)] {
					if g.Header().Rrtype == dns.TypeA || g.Header().Rrtype == dns.TypeAAAA {
						m.Extra = append(m.Extra, g)
					}
				}
			}
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

func TestForwardZoneThroughUnbound(t *testing.T) {
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

	// A deep name: a forward zone sends the full name at once (no QNAME
	// minimisation walking the names above it).
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

	// The server saw exactly the three questions, full names, each with RD
	// set (forwarded, not iterated), and nothing outside the zone.
	want := []string{"x.srv.glimpse.io. A", "http.stream.prod.goku.dc1.srv.glimpse.io. SRV", "nope.srv.glimpse.io. A"}
	var got []string
	for _, q := range auth.questions() {
		got = append(got, strings.ToLower(q.Name)+" "+dns.TypeToString[q.Qtype])
	}
	if strings.Join(got, ", ") != strings.Join(want, ", ") {
		t.Errorf("the server was asked %v, want %v", got, want)
	}
	auth.mu.Lock()
	if auth.noRD > 0 {
		t.Errorf("%d of the forwarded queries had no RD bit", auth.noRD)
	}
	auth.mu.Unlock()
}

// TestNSBelowDomainIsNotADelegation: the agent answers NS for the zones below
// its domain with Consul's servers (here ns1.dc1 at 127.0.0.1, where nothing
// listens on port 53). Unbound must keep sending the names below that zone to
// the configured address after it has seen that NS set, not to ns1. A stub
// zone fails this: it takes the NS set for a delegation.
func TestNSBelowDomainIsNotADelegation(t *testing.T) {
	auth, addr := startAuthServer(t, DefaultDomain,
		"dc1.srv.glimpse.io. 5 IN NS ns1.dc1.srv.glimpse.io.",
		"ns1.dc1.srv.glimpse.io. 5 IN A 127.0.0.1",
		"a.dc1.srv.glimpse.io. 5 IN A 192.0.2.3",
		"b.dc1.srv.glimpse.io. 5 IN A 192.0.2.4",
	)
	u := Start(t, addr, "")
	for _, q := range []struct {
		name  string
		qtype uint16
		want  string
	}{
		{"a.dc1.srv.glimpse.io.", dns.TypeA, "192.0.2.3"},
		{"dc1.srv.glimpse.io.", dns.TypeNS, "ns1.dc1.srv.glimpse.io."},
		{"b.dc1.srv.glimpse.io.", dns.TypeA, "192.0.2.4"}, // not asked before
	} {
		r, err := u.Query(q.name, q.qtype)
		if err != nil {
			t.Fatalf("%s %s: %v", dns.TypeToString[q.qtype], q.name, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s %s: want one answer, got\n%v", dns.TypeToString[q.qtype], q.name, r)
		}
		var got string
		switch rr := r.Answer[0].(type) {
		case *dns.A:
			got = rr.A.String()
		case *dns.NS:
			got = rr.Ns
		}
		if got != q.want {
			t.Fatalf("%s %s: %s, want %s", dns.TypeToString[q.qtype], q.name, got, q.want)
		}
	}
	if n := len(auth.questions()); n != 3 {
		t.Errorf("the configured server was asked %d questions, want 3: %v", n, auth.questions())
	}
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
	root, err := testconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(root, ConfFile))
	if err != nil {
		t.Fatal(err)
	}
	// The documented file is a forward zone (not a stub zone: see
	// TestNSBelowDomainIsNotADelegation) pointing at the agent's default
	// DNS address.
	if !strings.Contains(string(doc), "forward-addr: 127.0.0.1@5959\n") {
		t.Errorf("%s: no `forward-addr: 127.0.0.1@5959` line", ConfFile)
	}
	for _, want := range []string{
		"\nforward-zone:\n",
		`name: "srv.glimpse.io."`,
		"forward-first: no\n",
		"forward-no-cache: no\n",
		"do-not-query-localhost: no",
		`domain-insecure: "srv.glimpse.io."`,
	} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("%s: missing %q", ConfFile, want)
		}
	}
	for _, line := range strings.Split(string(doc), "\n") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "stub-") {
			t.Errorf("%s: stub-zone setting %q", ConfFile, l)
		}
	}

	got, err := rewriteConf(string(doc), "127.0.0.1@40000", DefaultDomain)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "    forward-addr: 127.0.0.1@40000\n") || strings.Contains(got, "@5959") {
		t.Errorf("forward-addr not replaced:\n%s", got)
	}

	got, err = rewriteConf("forward-zone:\n  forward-addr: 127.0.0.1@5959 # agent\n", "::1@40000", DefaultDomain)
	if err != nil || got != "forward-zone:\n  forward-addr: ::1@40000\n" {
		t.Errorf("forward-addr not replaced: %q, %v", got, err)
	}
	// A stub-zone's address line is rewritten too.
	got, err = rewriteConf("stub-zone:\n  stub-addr: 127.0.0.1@5959\n", "127.0.0.1@40000", DefaultDomain)
	if err != nil || got != "stub-zone:\n  stub-addr: 127.0.0.1@40000\n" {
		t.Errorf("stub-addr not replaced: %q, %v", got, err)
	}

	if _, err := rewriteConf("server:\n", "127.0.0.1@1", DefaultDomain); err == nil {
		t.Error("want an error for a config without forward-addr")
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
	root, err := testconsul.RepoRoot()
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
