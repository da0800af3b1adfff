package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rugby110/glimpse/cache"
)

// TestUIFiles: /ui/ serves the page's files, and only them, with their
// type and the page's security headers; GET and HEAD only; a browser
// that has a file gets a 304.
func TestUIFiles(t *testing.T) {
	s, err := Listen("127.0.0.1:0", Options{Cache: cache.New(nil), Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	do := func(method, path string, header ...string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			r.Header.Set(header[i], header[i+1])
		}
		w := httptest.NewRecorder()
		s.ServeHTTP(w, r)
		return w
	}
	for path, typ := range map[string]string{"/ui/": "text/html", "/ui/app.js": "javascript", "/ui/style.css": "text/css", "/ui/favicon.svg": "image/svg+xml"} {
		w := do("GET", path)
		if w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), typ) || w.Body.Len() == 0 {
			t.Fatalf("GET %s: %d %q, %d bytes", path, w.Code, w.Header().Get("Content-Type"), w.Body.Len())
		}
		if w.Header().Get("Content-Security-Policy") != uiPolicy || w.Header().Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: headers %v", path, w.Header())
		}
		etag := w.Header().Get("ETag")
		if again := do("GET", path, "If-None-Match", etag); etag == "" || again.Code != http.StatusNotModified || again.Body.Len() != 0 {
			t.Errorf("GET %s again with its ETag %q: %d, %d bytes", path, etag, again.Code, again.Body.Len())
		}
		if head := do("HEAD", path); head.Code != http.StatusOK || head.Body.Len() != 0 {
			t.Errorf("HEAD %s: %d, %d bytes", path, head.Code, head.Body.Len())
		}
		if post := do("POST", path); post.Code != http.StatusMethodNotAllowed {
			t.Errorf("POST %s: %d", path, post.Code)
		}
	}
	for _, path := range []string{"/ui/nope.js", "/ui/..%2fui.go", "/ui/ui.go", "/ui/index.html/x"} {
		if w := do("GET", path); w.Code != http.StatusNotFound {
			t.Errorf("GET %s: %d", path, w.Code)
		} else if w.Header().Get("Content-Security-Policy") == "" && strings.Count(path, "/") == 2 {
			t.Errorf("GET %s: a 404 without the page's headers", path)
		}
	}
}
