package httpapi

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"time"
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

// uiFile is one file of the page, as it is served.
type uiFile struct {
	body        []byte
	contentType string
	etag        string
}

// registerUI serves the page at /ui/. The files are read, typed and
// hashed once; a browser that has a file already gets a 304.
func (s *Server) registerUI() {
	entries, err := fs.ReadDir(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := map[string]uiFile{}
	for _, e := range entries {
		body, err := fs.ReadFile(uiFiles, "ui/"+e.Name())
		if err != nil {
			panic(err)
		}
		sum := sha256.Sum256(body)
		files[e.Name()] = uiFile{body: body, contentType: mime.TypeByExtension(path.Ext(e.Name())),
			etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
	}
	serve := func(w http.ResponseWriter, r *http.Request, name string) {
		h := w.Header()
		h.Set("Content-Security-Policy", uiPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		f, ok := files[name]
		if !ok {
			writeError(w, http.StatusNotFound, "no such file of the page: "+name)
			return
		}
		h.Set("Content-Type", f.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", f.etag)
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(f.body))
	}
	s.mux.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) { serve(w, r, "index.html") })
	s.mux.HandleFunc("GET /ui/{file}", func(w http.ResponseWriter, r *http.Request) { serve(w, r, r.PathValue("file")) })
	s.mux.HandleFunc("GET /ui", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ui/", http.StatusMovedPermanently)
	})
}
