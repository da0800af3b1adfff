// Package httpapi serves glimpse's HTTP interface: the API, /metrics and the
// health endpoints. It reads the cache only; it holds no topology of its own.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"glimpse/cache"
)

// Server is the agent's HTTP server.
type Server struct {
	cache *cache.Cache
	local string
	srv   *http.Server
	ln    net.Listener
}

// Options configure a Server.
type Options struct {
	Cache *cache.Cache
	// LocalZone is the zone whose first sync makes the agent ready.
	LocalZone string
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
}

// Listen binds addr and returns a server ready to Serve.
func Listen(addr string, opts Options) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: listen %s: %w", addr, err)
	}
	s := &Server{cache: opts.Cache, local: opts.LocalZone, ln: ln}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Addr returns the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting until ctx ends for requests in flight.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	z := s.cache.Zone(s.local)
	if z == nil || !z.Synced {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("local zone %q is not synced with Consul yet", s.local))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
