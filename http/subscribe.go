package httpapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/cache"
)

// SubscribeLimits bound what websocket subscriptions may cost.
type SubscribeLimits struct {
	// MaxSubscribers is the most subscriptions open at once.
	MaxSubscribers int
	// MaxLongPolls is the most long-polls (lookups waiting on an index)
	// at once; more get 503 with Retry-After.
	MaxLongPolls int
	// MaxAddresses is the most addresses one subscription may name.
	MaxAddresses int
	// PingEvery is how often the server pings a subscriber.
	PingEvery time.Duration
	// WriteTimeout bounds one message's write; a subscriber that does not
	// take it in time is disconnected (its state is kept by the hub only
	// while it is connected).
	WriteTimeout time.Duration
	// AllowedOrigins are the browser origins allowed besides the server's
	// own ("*" allows any). Requests without an Origin header (non-browser
	// clients) are always allowed.
	AllowedOrigins []string
}

// DefaultSubscribeLimits are glimpse-agent's defaults.
func DefaultSubscribeLimits() SubscribeLimits {
	return SubscribeLimits{MaxSubscribers: 20000, MaxLongPolls: 20000, MaxAddresses: 64, PingEvery: 10 * time.Second, WriteTimeout: 10 * time.Second}
}

// withDefaults returns l with every unset field at its default.
func (l SubscribeLimits) withDefaults() SubscribeLimits {
	d := DefaultSubscribeLimits()
	if l.MaxSubscribers <= 0 {
		l.MaxSubscribers = d.MaxSubscribers
	}
	if l.MaxLongPolls <= 0 {
		l.MaxLongPolls = d.MaxLongPolls
	}
	if l.MaxAddresses <= 0 {
		l.MaxAddresses = d.MaxAddresses
	}
	if l.PingEvery <= 0 {
		l.PingEvery = d.PingEvery
	}
	if l.WriteTimeout <= 0 {
		l.WriteTimeout = d.WriteTimeout
	}
	return l
}

// subscribeMetrics are the websocket subscription metrics.
type subscribeMetrics struct {
	sent    prometheus.Counter
	latency prometheus.Histogram
}

func newSubscribeMetrics(reg prometheus.Registerer, hub *cache.Hub) *subscribeMetrics {
	m := &subscribeMetrics{
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_http_subscription_messages_sent_total",
			Help: "Snapshot and update messages written to websocket subscribers.",
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "glimpse_http_subscription_delivery_seconds",
			Help:    "Time from the cache taking a watcher's result to a subscriber's write of it (updates only, not snapshots).",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5},
		}),
	}
	merged := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "glimpse_http_subscription_updates_merged_total",
		Help: "Pending updates replaced by a newer state of the same address before a slow subscriber took them.",
	}, func() float64 { return float64(hub.Merged()) })
	misses := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "glimpse_http_subscription_history_misses_total",
		Help: "Resumes whose index was no longer in the change history, answered with snapshots.",
	}, func() float64 { return float64(hub.HistoryMisses()) })
	if reg != nil {
		reg.MustRegister(m.sent, m.latency, merged, misses)
	}
	return m
}

// encodedMessages keeps the recent messages of address states, as sent: a
// change fans out to every subscriber of its address, and each would
// otherwise encode the same message again. A slot, chosen by the state's
// index, holds one state: its address's pointer (an Address is immutable: a
// change makes a new one), the kind and the health filter; a colliding state
// simply replaces it.
type encodedMessages struct {
	mu    sync.Mutex
	slots [256]encodedMessage
}

type encodedMessage struct {
	a        *cache.Address
	snapshot bool
	keep     HealthFilter
	b        []byte
}

// message returns the encoded message of u for a subscriber with keep. The
// bytes are shared: callers only write them out.
func (e *encodedMessages) message(u cache.Update, keep HealthFilter) ([]byte, error) {
	slot := &e.slots[u.Address.Index%uint64(len(e.slots))]
	e.mu.Lock()
	if slot.a == u.Address && slot.snapshot == u.Snapshot && slot.keep == keep {
		b := slot.b
		e.mu.Unlock()
		return b, nil
	}
	e.mu.Unlock()
	m := api.Message{Type: api.MessageUpdate, Index: u.Address.Index, Address: u.Address.Name(), Instances: Instances([]*cache.Address{u.Address}, keep)}
	if u.Snapshot {
		m.Type = api.MessageSnapshot
	}
	b, err := json.Marshal(&m)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	*slot = encodedMessage{a: u.Address, snapshot: u.Snapshot, keep: keep, b: b}
	e.mu.Unlock()
	return b, nil
}

// subscribe serves GET /v1/subscribe?address=A[&address=B…][&index=N][&health=H].
func (s *Server) subscribe(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	addrs := q["address"]
	if len(addrs) == 0 {
		writeError(w, http.StatusBadRequest, "at least one address parameter is required")
		return
	}
	if len(addrs) > s.limits.MaxAddresses {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("%d addresses in one subscription; at most %d", len(addrs), s.limits.MaxAddresses))
		return
	}
	queries := make([]cache.Query, 0, len(addrs))
	for _, a := range addrs {
		cq, err := ParseAddress(a)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		queries = append(queries, cq)
	}
	keep, err := ParseHealth(q.Get("health"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	wantSynced := false
	switch v := q.Get("synced"); v {
	case "", "false", "0":
	case "true", "1":
		wantSynced = true
	default:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("synced %q is not true or false", v))
		return
	}
	var since uint64
	if v := q.Get("index"); v != "" {
		if since, err = strconv.ParseUint(v, 10, 64); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("index %q is not a non-negative integer", v))
			return
		}
	}
	// Reserve the slot before the handshake, so concurrent handshakes
	// cannot overshoot the limit.
	if !s.websockets.acquire() {
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("subscriber limit (%d) reached", s.limits.MaxSubscribers))
		return
	}
	handedOff := false
	defer func() {
		if !handedOff {
			s.websockets.release()
		}
	}()
	up := websocket.Upgrader{
		// An idle subscriber holds no write buffer (one is taken from
		// the pool for each write) and a small read buffer (clients send
		// only control frames): thousands of subscribers stay cheap.
		ReadBufferSize:  512,
		WriteBufferPool: &wsWriteBuffers,
		CheckOrigin:     s.checkOrigin,
		Error: func(w http.ResponseWriter, r *http.Request, status int, reason error) {
			writeError(w, status, "websocket handshake: "+reason.Error())
		},
	}
	conn, err := up.Upgrade(w, r, nil) // on failure it has answered with an HTTP error
	if err != nil {
		return
	}
	// The subscription lives on in goroutines of its own: returning frees
	// the HTTP server's connection state (its goroutine's stack, its
	// buffers, the request), which would otherwise be held as long as the
	// subscriber stays, doubling what an idle subscriber costs.
	handedOff = true
	go func() {
		defer s.websockets.release()
		defer conn.Close()
		s.serveSubscriber(conn, queries, since, keep, wantSynced)
	}()
}

// serveSubscriber sends a subscriber its snapshots and updates until it goes
// away, a write fails or the server shuts down; with wantSynced, a synced
// message once the products it names have a state (api.MessageSynced).
func (s *Server) serveSubscriber(conn *websocket.Conn, queries []cache.Query, since uint64, keep HealthFilter, wantSynced bool) {
	hub := s.cache.Hub()
	// The subscription holds what it names: watched while it is open.
	for _, cq := range queries {
		defer s.demand.Hold(cq.Zone, cq.Product)()
	}
	sub, resumed := hub.Subscribe(queries, since)
	defer sub.Close()
	stop := make(chan struct{})
	defer close(stop)
	var settled <-chan struct{} // nil: never
	if wantSynced {
		settled = s.settled(queries, stop)
	}
	s.metrics.websockets.Inc()
	defer s.metrics.websockets.Dec()

	// The reader only answers pings and notices the client going away;
	// subscribers send nothing, so anything large closes the connection.
	conn.SetReadLimit(4096)
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		for {
			if _, _, err := conn.NextReader(); err != nil {
				return
			}
		}
	}()

	ping := time.NewTicker(s.limits.PingEvery)
	defer ping.Stop()
	send := func() bool {
		for _, u := range sub.Take() {
			b, err := s.encoded.message(u, keep)
			if err != nil {
				return false
			}
			_ = conn.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
			if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
				return false
			}
			s.subMetrics.sent.Inc()
			if !u.Snapshot && !u.Address.Changed.IsZero() {
				s.subMetrics.latency.Observe(time.Since(u.Address.Changed).Seconds())
			}
		}
		return true
	}
	for {
		select {
		case <-sub.C():
			if !send() {
				return
			}
		case <-settled:
			// Every product named has a state: the messages of that state
			// (published by now, see Barrier) go first, then synced.
			settled = nil
			s.cache.Barrier()
			if !send() {
				return
			}
			b, _ := json.Marshal(struct {
				Type    string `json:"type"`
				Index   uint64 `json:"index"`
				Resumed bool   `json:"resumed"`
			}{api.MessageSynced, s.cache.Index(), resumed})
			_ = conn.SetWriteDeadline(time.Now().Add(s.limits.WriteTimeout))
			if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
				return
			}
		case <-ping.C:
			if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(s.limits.WriteTimeout)); err != nil {
				return
			}
		case <-gone:
			return
		case <-s.closing:
			_ = conn.WriteControl(websocket.CloseMessage,
				websocket.FormatCloseMessage(websocket.CloseGoingAway, "glimpse-agent shutting down"),
				time.Now().Add(time.Second))
			return
		}
	}
}

// settled returns a channel closed once every product the queries name has
// a state in the cache (or is known not to exist, or its zone is), until
// stop is closed.
func (s *Server) settled(queries []cache.Query, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		for {
			changed := s.cache.Changed()
			all := true
			for _, q := range queries {
				if exists, known := s.cache.Datacenter(q.Zone); known && !exists {
					continue
				}
				if st := s.cache.Zone(q.Zone).State(q.Product); st != cache.Present && st != cache.Unlisted {
					all = false
					break
				}
			}
			if all {
				close(done)
				return
			}
			select {
			case <-changed:
			case <-stop:
				return
			}
		}
	}()
	return done
}

// wsWriteBuffers lends websocket connections their write buffers for the
// time of a write.
var wsWriteBuffers sync.Pool

// checkOrigin allows clients that send no Origin (not browsers), the
// server's own origin, and the configured ones.
func (s *Server) checkOrigin(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, o := range s.limits.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}
