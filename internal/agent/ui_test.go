package agent

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromium returns the path of Debian's chromium, which make deps installs.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed: run make deps (Debian's chromium package)")
	return ""
}

// browser starts a headless Chromium for the test and returns its context,
// and the console errors, warnings and uncaught exceptions (the browser's
// log included: CSP violations, failed loads) the pages have reported so
// far.
func browser(t *testing.T) (context.Context, func() []string) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // root in CI
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	var mu sync.Mutex
	var problems []string
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			switch m.Type {
			case chromedp.ConsoleError, chromedp.ConsoleWarning, chromedp.ConsoleException:
				mu.Lock()
				problems = append(problems, fmt.Sprintf("%s (%s %s:%d)", m, m.Source, m.URL, m.Line))
				mu.Unlock()
			}
		}
	}()
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), problems...)
	}
}

// TestUI opens the live topology page in headless Chromium: the local zone
// synced, the product, its tree with health counts and the instances of an
// address; a change in Consul shows without a reload; no console errors.
func TestUI(t *testing.T) {
	a := startAgent(t, testConfig(t, consul.HTTPAddr()))
	c := consul.Client()
	product := newProduct("ui")
	for i := range 2 {
		register(t, c, instance{id: fmt.Sprintf("%s-%d", product, i), product: product, env: "prod", job: "web", service: "http",
			address: fmt.Sprintf("127.0.3.%d", i+1), port: 8080, ttlCheck: true})
	}
	register(t, c, instance{id: product + "-grpc", product: product, env: "prod", job: "web", service: "grpc", address: "127.0.3.9", port: 9090})
	base := "http://" + a.HTTPAddr()

	// The page's own headers and paths.
	resp, err := http.Get(base + "/ui/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); resp.StatusCode != 200 || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Errorf("/ui/: %d, Content-Type %q, CSP %q", resp.StatusCode, resp.Header.Get("Content-Type"), csp)
	}
	if code := httpStatus(t, base+"/ui/nothing.js"); code != 404 {
		t.Errorf("/ui/nothing.js: %d, want 404", code)
	}

	ctx, problems := browser(t)
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	address := "http.web.prod." + product + ".dc1"
	serviceRow := `#tree li[data-address="` + address + `"]`
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	err = chromedp.Do(ctx,
		chromedp.Navigate(base+"/ui"), // redirected to /ui/
		chromedp.WaitVisible(css(`#zones tr[data-zone="dc1"][data-synced="true"]`)),
		// Choose the product, then the service.
		chromedp.WaitVisible(css(`#products li[data-product="`+product+`"]`)),
		chromedp.Click(css(`#products li[data-product="`+product+`"]`)),
		chromedp.WaitVisible(css(`#live[data-state="live"]`)),
		chromedp.WaitVisible(css(serviceRow+`[data-passing="2"][data-critical="0"]`)),
		chromedp.WaitVisible(css(`#tree li[data-address="grpc.web.prod.`+product+`.dc1"][data-passing="1"]`)),
		chromedp.Click(css(serviceRow+` .row`)),
		chromedp.WaitVisible(css(`#instances tr[data-instance="127.0.3.1:8080"][data-health="passing"]`)),
	)
	if err != nil {
		t.Fatalf("the page: %v; console: %q", err, problems())
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	zoneText, err := chromedp.Run(ctx, chromedp.Text(css(`#zones tr[data-zone="dc1"] td`)))
	if err != nil {
		t.Fatal(err)
	}
	instances, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#instances tbody tr[data-instance]").length`))
	if err != nil {
		t.Fatal(err)
	}
	if title != "glimpse" || zoneText != "dc1 (local)" || instances != 2 {
		t.Errorf("title %q, zone cell %q, %d instances shown, want glimpse, dc1 (local), 2", title, zoneText, instances)
	}
	// A mark that a reload would lose.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.glimpseTestMark = 42`)); err != nil {
		t.Fatal(err)
	}

	// Changes in Consul: one instance fails its check, another is
	// registered. Both show without a reload.
	if err := c.Agent().FailTTL(product+"-0-ttl", "down"); err != nil {
		t.Fatal(err)
	}
	register(t, c, instance{id: product + "-2", product: product, env: "prod", job: "web", service: "http",
		address: "127.0.3.3", port: 8080})
	err = chromedp.Do(ctx,
		chromedp.WaitVisible(css(serviceRow+`[data-passing="2"][data-critical="1"]`)),
		chromedp.WaitVisible(css(`#instances tr[data-instance="127.0.3.1:8080"][data-health="critical"]`)),
		chromedp.WaitVisible(css(`#instances tr[data-instance="127.0.3.3:8080"][data-health="passing"]`)),
	)
	if err != nil {
		t.Fatalf("the change never showed: %v; console: %q", err, problems())
	}
	mark, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.glimpseTestMark || 0`))
	if err != nil {
		t.Fatal(err)
	}
	if mark != 42 {
		t.Error("the page was reloaded")
	}
	location, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil {
		t.Fatal(err)
	}
	if want := "/ui/#/dc1/" + product + "/" + address; !strings.HasSuffix(location, want) {
		t.Errorf("location %q, want it to end in %q (the selection, for a link)", location, want)
	}

	// The selection in the link is restored by a fresh load.
	err = chromedp.Do(ctx,
		chromedp.Reload(),
		chromedp.WaitVisible(css(`#instances tr[data-instance="127.0.3.3:8080"]`)),
		chromedp.WaitVisible(css(`#live[data-state="live"]`)),
	)
	if err != nil {
		t.Fatalf("a link to the selection: %v; console: %q", err, problems())
	}
	if p := problems(); len(p) > 0 {
		t.Errorf("the page reported problems:\n%s", strings.Join(p, "\n"))
	}
}
