package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// TestPrometheusAlerts: deploy/prometheus/alerts.yml passes promtool's
// check and its unit tests (alerts_test.yml); then a real Prometheus
// (Debian's package) scrapes a real agent with those rules loaded: every
// rule evaluates without error, and every metric the rules name is one the
// agent exports.
func TestPrometheusAlerts(t *testing.T) {
	root, err := testconsul.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy/prometheus")
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool (Debian package prometheus) is not installed: run make deps")
	}
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}

	// An agent with something in each family the rules read.
	c := consul.Client()
	p := newProduct("prom")
	register(t, c, instance{id: p + "-a", product: p, env: "prod", job: "stream", service: "http", port: 8000})
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	query(t, a.DNSAddr(), "udp", "http.stream.prod."+p+".dc1."+domain, 33, 0)
	if code, raw, err := overSocket(a.http.Socket(), "PUT", "/v1/providers/promprov", bodyOf(t, instancesOf(p, 1)...)); err != nil || code != 200 {
		t.Fatalf("provider PUT: %d %s %v", code, raw, err)
	}

	prom, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatal("prometheus (Debian package prometheus) is not installed: run make deps")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := ln.Addr().String()
	ln.Close()
	work := t.TempDir()
	rules, _ := filepath.Abs(filepath.Join(dir, "alerts.yml"))
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: glimpse
    static_configs:
      - targets: [%q]
`, rules, a.HTTPAddr())
	os.WriteFile(filepath.Join(work, "prometheus.yml"), []byte(cfg), 0o644)
	cmd := exec.Command(prom, "--config.file="+filepath.Join(work, "prometheus.yml"), "--storage.tsdb.path="+filepath.Join(work, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus output:\n%s", out.String())
		}
	})
	api := func(path string, q url.Values, v any) error {
		resp, err := http.Get("http://" + promAddr + path + "?" + q.Encode())
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		return json.NewDecoder(resp.Body).Decode(v)
	}
	// Scraped, and every rule evaluated at least twice.
	type result struct {
		Status string `json:"status"`
		Data   struct {
			Result []json.RawMessage `json:"result"`
			Groups []struct {
				Rules []struct {
					Name      string `json:"name"`
					Query     string `json:"query"`
					Health    string `json:"health"`
					LastError string `json:"lastError"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	testconsul.WaitFor(t, 60*time.Second, func() bool {
		var r result
		return api("/api/v1/query", url.Values{"query": {`up{job="glimpse"} == 1`}}, &r) == nil && len(r.Data.Result) == 1
	}, "Prometheus scraping the agent")
	var rules2 result
	testconsul.WaitFor(t, 30*time.Second, func() bool {
		rules2 = result{}
		if api("/api/v1/rules", nil, &rules2) != nil || len(rules2.Data.Groups) != 1 {
			return false
		}
		for _, r := range rules2.Data.Groups[0].Rules {
			if r.Health != "ok" {
				return false
			}
		}
		return true
	}, "every rule evaluated: %+v", rules2.Data.Groups)
	names := map[string]bool{}
	for _, g := range rules2.Data.Groups {
		if len(g.Rules) != 7 {
			t.Errorf("%d rules loaded, want 7", len(g.Rules))
		}
		for _, r := range g.Rules {
			if r.LastError != "" {
				t.Errorf("rule %s: %s", r.Name, r.LastError)
			}
			for _, m := range regexp.MustCompile(`glimpse_[a-z_]+`).FindAllString(r.Query, -1) {
				names[m] = true
			}
		}
	}
	var missing []string
	for m := range names {
		var r result
		if err := api("/api/v1/query", url.Values{"query": {fmt.Sprintf(`count(%s{job="glimpse"})`, m)}}, &r); err != nil || len(r.Data.Result) == 0 {
			missing = append(missing, m)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the rules read metrics the agent does not export (or has no series of yet): %v", missing)
	}

	// The dashboard: every panel's query runs on that Prometheus, and
	// reads metrics the README documents.
	raw, err := os.ReadFile(filepath.Join(root, "deploy/grafana/glimpse.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil || len(dash.Panels) == 0 {
		t.Fatalf("deploy/grafana/glimpse.json: %v", err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, panel := range dash.Panels {
		for _, target := range panel.Targets {
			expr := strings.NewReplacer("$instance", ".*", "$__rate_interval", "1m").Replace(target.Expr)
			var r result
			if err := api("/api/v1/query", url.Values{"query": {expr}}, &r); err != nil || r.Status != "success" {
				t.Errorf("panel %q: %s: %s %v", panel.Title, expr, r.Status, err)
			}
			for _, m := range regexp.MustCompile(`glimpse_[a-z_]+`).FindAllString(expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				if !strings.Contains(string(readme), "`"+m+"`") {
					t.Errorf("panel %q reads %s, which the README's metrics table does not name", panel.Title, m)
				}
			}
		}
	}
}
