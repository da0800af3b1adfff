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
	"net/http/pprof"
	"os"
	"reflect"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"go.uber.org/zap"

	"github.com/rugby110/glimpse/cache"
	"github.com/rugby110/glimpse/provider"
)

// Server is the agent's HTTP server.
type Server struct {
	cache *cache.Cache
	local string
	// demand records what requests read and watches it on demand.
	demand cache.Demand
	// firstWait bounds how long a lookup waits for the first result of a
	// zone or product it is the first to read.
	firstWait time.Duration
	metrics   *metrics
	mux       *http.ServeMux
	srv       *http.Server
	ln        net.Listener
	// sock and sockSrv serve Options.ProvidersSocket; nil without one.
	sock    net.Listener
	sockSrv *http.Server
	// closing is closed by Shutdown: long-polls answer at once and
	// websockets are closed with a close frame.
	closing    chan struct{}
	limits     SubscribeLimits
	subMetrics *subscribeMetrics
	// websockets are the open and opening websockets, against
	// MaxSubscribers; longPolls the long-polls waiting, against MaxLongPolls.
	websockets, longPolls slots
	// encoded shares the encoding of a change among its subscribers.
	encoded   encodedMessages
	closeOnce sync.Once
}

// Options configure a Server.
type Options struct {
	Cache *cache.Cache
	// LocalZone is the zone whose first sync makes the agent ready.
	LocalZone string
	// Pprof serves Go's profiles under /debug/pprof/.
	Pprof bool
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Registerer, if not nil, receives the HTTP API's metrics.
	Registerer prometheus.Registerer
	// Demand is told what requests read, and holds what long-polls and
	// subscriptions wait on (watch.Manager). Nil: nothing is watched on
	// demand.
	Demand cache.Demand
	// FirstWait bounds how long a lookup waits for the first result of a
	// zone or product it is the first to read. Zero: 2 s.
	FirstWait time.Duration
	// Subscribe limits websocket subscriptions; zero: the defaults.
	Subscribe SubscribeLimits
	// Providers serves /v1/providers/{provider}; nil: 404.
	Providers *provider.Manager
	// ProviderAllowRemote lets non-loopback clients use the providers API.
	ProviderAllowRemote bool
	// ProviderTokens may write providers over TCP (nil: none may).
	ProviderTokens *provider.Tokens
	// MaxConns caps the TCP connections open at once (0: no cap); see
	// ConnCap.
	MaxConns int
	// Log receives the server's own faults (the 500s); nil: none.
	Log *zap.Logger
	// ProvidersSocket is the path of the Unix socket serving the API too,
	// where providers write as their local user (empty: none), mode 0660
	// in group ProvidersSocketGroup (empty: the agent's).
	ProvidersSocket, ProvidersSocketGroup string
}

// Listen binds addr and returns a server ready to Serve.
func Listen(addr string, opts Options) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: listen %s: %w", addr, err)
	}
	ln = limitListen(ln, opts.MaxConns, "http", opts.Log)
	s := &Server{
		cache:     opts.Cache,
		local:     opts.LocalZone,
		demand:    opts.Demand,
		firstWait: opts.FirstWait,
		metrics:   newMetrics(opts.Registerer),
		mux:       http.NewServeMux(),
		ln:        ln,
		closing:   make(chan struct{}),
	}
	if s.demand == nil {
		s.demand = cache.Static{Cache: opts.Cache}
	}
	if s.firstWait <= 0 {
		s.firstWait = 2 * time.Second
	}
	s.limits = opts.Subscribe.withDefaults()
	s.websockets.max, s.longPolls.max = int64(s.limits.MaxSubscribers), int64(s.limits.MaxLongPolls)
	if opts.Registerer != nil {
		limit := prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glimpse_http_subscribers_limit",
			Help: "The most clients of each kind that may wait for changes at once (-http.max-long-polls, -http.max-subscribers).",
		}, []string{"kind"})
		limit.WithLabelValues("longpoll").Set(float64(s.limits.MaxLongPolls))
		limit.WithLabelValues("websocket").Set(float64(s.limits.MaxSubscribers))
		opts.Registerer.MustRegister(limit)
	}
	s.subMetrics = newSubscribeMetrics(opts.Registerer, opts.Cache.Hub())
	mux := s.mux
	mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{}))
	if opts.Pprof {
		// Profiles show the agent's internals and cost CPU: loopback
		// clients (and the providers socket) only, whatever -http.addr is.
		mux.Handle("/debug/pprof/", localOnly(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/cmdline", localOnly(http.HandlerFunc(cmdline)))
		mux.Handle("/debug/pprof/profile", localOnly(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", localOnly(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", localOnly(http.HandlerFunc(pprof.Trace)))
		// Collects garbage and returns every free page to the OS, so that
		// RSS shows what the agent holds (the benchmark's memory figures).
		mux.Handle("POST /debug/free-os-memory", localOnly(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			debug.FreeOSMemory()
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		})))
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	// {address...} also matches an empty or slashed address, so that those
	// get a 400 naming the problem rather than a 404.
	mux.Handle("GET /v1/lookup/{address...}", s.instrument("lookup", s.lookup))
	mux.Handle("GET /v1/zones", s.instrument("zones", s.zones))
	mux.Handle("GET /v1/topology", s.instrument("topology", s.topology))
	// Not instrumented: the websocket handshake hijacks the connection.
	mux.HandleFunc("GET /v1/subscribe", s.subscribe)
	s.registerUI()
	s.registerProviders(opts)
	// A client has 10 s to send a request's head and may keep a connection
	// idle between requests for 2 minutes: idle connections cannot pile up.
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	if opts.ProvidersSocket != "" {
		if s.sock, err = listenSocket(opts.ProvidersSocket, opts.ProvidersSocketGroup); err != nil {
			ln.Close()
			return nil, err
		}
		s.sock = limitListen(s.sock, 1024, "providers socket", opts.Log)
		s.sockSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ConnContext: withPeer}
	}
	return s, nil
}

// Socket returns the providers socket's path, "" without one.
func (s *Server) Socket() string {
	if s.sock == nil {
		return ""
	}
	return s.sock.Addr().String()
}

// ServeHTTP routes a request. Requests no pattern matches get the mux's 404
// or 405 (with its Allow header) as a JSON error; a path not in canonical
// form gets a 400 naming the canonical one instead of the mux's redirect.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body := watchBody(w, r)
	defer body.drop(w)
	if h, pattern := s.mux.Handler(r); pattern == "" || reflect.TypeOf(h) == redirectType {
		w = &jsonErrorWriter{ResponseWriter: w, method: r.Method, path: r.URL.Path}
	}
	s.mux.ServeHTTP(w, r)
}

// localOnly answers 403 to clients other than loopback ones and the
// providers socket's.
func localOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, sock := peerOf(r.Context()); !sock && !loopback(r.RemoteAddr) {
			writeError(w, http.StatusForbidden, "debug routes only answer loopback clients")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// secretFlags are the flags whose values /debug/pprof/cmdline hides.
var secretFlags = map[string]bool{"consul.token": true}

// cmdline serves the command line as pprof's Cmdline does, with the values
// of secret flags replaced.
func cmdline(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(redactArgs(os.Args), "\x00"))
}

// redactArgs returns args with the values of secretFlags replaced, in
// both the "-flag value" and "-flag=value" forms.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	hide := false
	for i, a := range args {
		switch {
		case hide:
			out[i], hide = "<redacted>", false
			continue
		case strings.HasPrefix(a, "-"):
			name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
			if secretFlags[name] {
				if hasValue {
					out[i] = a[:strings.Index(a, "=")+1] + "<redacted>"
				} else {
					out[i], hide = a, true
				}
				continue
			}
		}
		out[i] = a
	}
	return out
}

// Addr returns the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves the TCP listener and the providers socket until Shutdown.
func (s *Server) Serve() error {
	errc := make(chan error, 1)
	if s.sockSrv != nil {
		go func() { errc <- s.sockSrv.Serve(s.sock) }()
	}
	err := s.srv.Serve(s.ln)
	if s.sockSrv != nil {
		if !errors.Is(err, http.ErrServerClosed) {
			s.sockSrv.Close()
		}
		if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && errors.Is(err, http.ErrServerClosed) {
			err = serr
		}
	}
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the server, waiting until ctx ends for requests in flight.
// Long-polls in flight answer at once with the current state.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() { close(s.closing) })
	if s.sockSrv != nil {
		if err := s.sockSrv.Shutdown(ctx); err != nil {
			s.srv.Shutdown(ctx)
			return err
		}
	}
	return s.srv.Shutdown(ctx)
}

// readyz is ready once the local zone's product list, servers and pinned
// products are read.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	z := s.cache.Zone(s.local)
	if z == nil || !z.Ready {
		msg := fmt.Sprintf("local zone %q is not synced with Consul yet", s.local)
		if z != nil && z.Synced {
			msg = fmt.Sprintf("local zone %q: the pinned products have not all been read yet", s.local)
		}
		if st := s.cache.Status(s.local); st != nil {
			if p := st.Problem(); p != "" {
				msg += ": " + p
			}
		}
		writeError(w, http.StatusServiceUnavailable, msg)
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

// redirectType is the type of the handler the mux picks to redirect a
// request to a path's canonical form.
var redirectType = reflect.TypeOf(http.RedirectHandler("/", http.StatusTemporaryRedirect))

// jsonErrorWriter turns the plain-text error the mux writes for a request
// no pattern matches (404, 405) into a JSON one, and the mux's redirect of
// a path that is not canonical ("/v1/lookup/a/../b", "//v1/zones") into a
// 400: an API client is told, not silently sent elsewhere.
type jsonErrorWriter struct {
	http.ResponseWriter
	method, path string
	swallow      bool // the mux's text body is dropped
}

func (j *jsonErrorWriter) WriteHeader(code int) {
	if code < 300 {
		j.ResponseWriter.WriteHeader(code)
		return
	}
	msg := fmt.Sprintf("no such endpoint: %s %s", j.method, j.path)
	switch {
	case code == http.StatusMethodNotAllowed:
		msg = fmt.Sprintf("method %s not allowed on %s; allowed: %s", j.method, j.path, j.Header().Get("Allow"))
	case code < 400:
		msg = fmt.Sprintf("path %q is not in canonical form (%q)", j.path, j.Header().Get("Location"))
		j.Header().Del("Location")
		code = http.StatusBadRequest
	}
	j.Header().Del("Content-Length")
	writeError(j.ResponseWriter, code, msg)
	j.swallow = true
}

func (j *jsonErrorWriter) Write(b []byte) (int, error) {
	if j.swallow {
		return len(b), nil
	}
	return j.ResponseWriter.Write(b)
}

// slots counts holders of at most max places.
type slots struct {
	n   atomic.Int64
	max int64
}

// acquire takes a place, unless all are taken.
func (s *slots) acquire() bool {
	if s.n.Add(1) > s.max {
		s.n.Add(-1)
		return false
	}
	return true
}

func (s *slots) release() { s.n.Add(-1) }

// metrics are the HTTP API's Prometheus metrics.
type metrics struct {
	requests *prometheus.CounterVec
	// longPolls and websockets are glimpse_http_subscribers by kind.
	longPolls, websockets prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	subscribers := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "glimpse_http_subscribers",
		Help: "Clients waiting for changes, by kind: longpoll (lookups waiting on an index) or websocket.",
	}, []string{"kind"})
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_http_requests_total",
			Help: "HTTP API requests answered, by endpoint and status code.",
		}, []string{"endpoint", "code"}),
		longPolls:  subscribers.WithLabelValues("longpoll"),
		websockets: subscribers.WithLabelValues("websocket"),
	}
	if reg != nil {
		reg.MustRegister(m.requests, subscribers)
	}
	return m
}

// instrument counts the answers of an endpoint by status code.
func (s *Server) instrument(endpoint string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h(sw, r)
		s.metrics.requests.WithLabelValues(endpoint, strconv.Itoa(sw.code)).Inc()
	})
}

// statusWriter records the status code a handler writes.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}
