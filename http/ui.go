package httpapi

import (
	"embed"
	"io/fs"
	"mime"
	"net/http"
	"path"
)

// uiFiles is the live topology page: static files, embedded in the binary,
// that read the agent's own API from the browser.
//
//go:embed ui
var uiFiles embed.FS

// uiPolicy lets the page load its own script and style and talk to the
// agent that served it (fetch and the websocket), and nothing else: no
// inline script, no other origin, no framing.
const uiPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// registerUI serves the page at /ui/.
func (s *Server) registerUI() {
	files, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	serve := func(w http.ResponseWriter, r *http.Request, name string) {
		body, err := fs.ReadFile(files, name)
		if err != nil {
			writeError(w, http.StatusNotFound, "no such file of the page: "+name)
			return
		}
		h := w.Header()
		h.Set("Content-Type", mime.TypeByExtension(path.Ext(name)))
		h.Set("Content-Security-Policy", uiPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		w.Write(body)
	}
	s.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) { serve(w, r, "index.html") })
	s.mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) { serve(w, r, r.PathValue("file")) })
	s.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
}
