package testconsul

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

func TestCountingProxyCountsAndBlockingQuery(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true})
	p := NewCountingProxy(t, a.HTTPAddr())
	c := a.ClientAt(p.Addr())

	if _, err := c.Agent().Self(); err != nil {
		t.Fatal(err)
	}
	_, meta, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Count(); got != 2 {
		t.Fatalf("Count() = %d after 2 requests", got)
	}

	// A blocking query through the proxy returns when the catalog changes.
	type result struct {
		services map[string][]string
		err      error
		took     time.Duration
	}
	results := make(chan result, 1)
	go func() {
		began := time.Now()
		s, _, err := c.Catalog().Services(&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute})
		results <- result{s, err, time.Since(began)}
	}()
	WaitFor(t, waitTimeout, func() bool { return p.CountByPath()["/v1/catalog/services"] == 2 },
		"the blocking query to reach the proxy")
	register(t, a.Client(), "web", 80) // directly, not through the proxy

	select {
	case r := <-results:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if _, ok := r.services["web"]; !ok {
			t.Fatalf("blocking query returned %v, want service web", r.services)
		}
		t.Logf("blocking query returned after %v", r.took)
	case <-time.After(30 * time.Second):
		t.Fatal("blocking query did not return after the catalog changed")
	}

	want := map[string]int64{"/v1/agent/self": 1, "/v1/catalog/services": 2}
	got := p.CountByPath()
	if len(got) != len(want) || got["/v1/agent/self"] != 1 || got["/v1/catalog/services"] != 2 {
		t.Fatalf("CountByPath() = %v, want %v", got, want)
	}
	if p.Count() != 3 {
		t.Fatalf("Count() = %d, want 3", p.Count())
	}

	p.ResetCounts()
	if p.Count() != 0 || len(p.CountByPath()) != 0 {
		t.Fatalf("counts after ResetCounts: %d %v", p.Count(), p.CountByPath())
	}
}

func TestCountingProxyFaults(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true})
	p := NewCountingProxy(t, a.HTTPAddr())

	// A new client per case, so no case reuses a connection of the one
	// before (Go retries a GET once when a reused connection is closed).
	leader := func() (string, error) { return a.ClientAt(p.Addr()).Status().Leader() }

	p.SetFault(Fault{Status: 500})
	if _, err := leader(); err == nil || !strings.Contains(err.Error(), "500") {
		t.Fatalf("with Status 500: err = %v", err)
	}

	p.SetFault(Fault{CloseConn: true})
	if _, err := leader(); err == nil {
		t.Fatal("with CloseConn: no error")
	}

	const delay = 300 * time.Millisecond
	p.SetFault(Fault{Delay: delay})
	began := time.Now()
	if _, err := leader(); err != nil {
		t.Fatalf("with Delay: %v", err)
	}
	if took := time.Since(began); took < delay {
		t.Fatalf("with Delay %v the request took %v", delay, took)
	}

	p.SetFault(Fault{})
	if l, err := leader(); err != nil || l == "" {
		t.Fatalf("without fault: leader %q, err %v", l, err)
	}
	if got := p.CountByPath()["/v1/status/leader"]; got != 4 || p.Count() != 4 {
		t.Fatalf("counts: %d for /v1/status/leader, %d in all; want 4 and 4", got, p.Count())
	}
}

func TestCountingProxyCloseEndsBlockingQuery(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{Dev: true})
	p := NewCountingProxy(t, a.HTTPAddr())
	c := a.ClientAt(p.Addr())
	_, meta, err := c.Catalog().Services(nil)
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 1)
	go func() {
		_, _, err := c.Catalog().Services(&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: time.Minute})
		errs <- err
	}()
	WaitFor(t, waitTimeout, func() bool { return p.Count() == 2 }, "the blocking query to reach the proxy")
	p.Close()
	select {
	case err := <-errs:
		if err == nil {
			t.Fatal("blocking query through a closed proxy succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the blocking query")
	}
	p.Close() // a second Close is harmless
}

// The proxy forwards a request's Accept-Encoding as it came: it must not ask
// the target for gzip on behalf of a client that did not.
func TestCountingProxyForwardsAcceptEncodingAsIs(t *testing.T) {
	t.Parallel()
	seen := make(chan string, 2)
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Accept-Encoding")
	}))
	defer target.Close()
	p := NewCountingProxy(t, strings.TrimPrefix(target.URL, "http://"))

	for _, asked := range []string{"", "gzip"} {
		req, err := http.NewRequest("GET", "http://"+p.Addr()+"/v1/catalog/services", nil)
		if err != nil {
			t.Fatal(err)
		}
		if asked != "" {
			req.Header.Set("Accept-Encoding", asked)
		}
		// DisableCompression: the client itself asks for nothing it was not told to.
		resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := <-seen; got != asked {
			t.Errorf("client asked Accept-Encoding %q, target got %q", asked, got)
		}
	}
}
