package watch

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the watchers' Prometheus metrics.
type Metrics struct {
	reg      prometheus.Registerer
	watchers *prometheus.GaugeVec
	requests *prometheus.CounterVec
	failing  *prometheus.GaugeVec

	once sync.Once
}

// NewMetrics registers the watch metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		reg: reg,
		watchers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glimpse_watch_watchers",
			Help: "Blocking-query loops running against Consul, by zone.",
		}, []string{"zone"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_watch_consul_requests_total",
			Help: "Requests the watchers made to Consul, by zone, endpoint and result: ok, denied (Consul's ACLs), blocked (the endpoint blocked by the Consul agent's configuration), throttled (429: too many connections from this host) or error.",
		}, []string{"zone", "endpoint", "result"}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glimpse_watch_products_failing",
			Help: "Products whose last read failed, by zone and cause (denied, blocked, throttled, error); /v1/zones names them.",
		}, []string{"zone", "cause"}),
	}
	if reg != nil {
		reg.MustRegister(m.watchers, m.requests, m.failing)
	}
	return m
}

// observe registers the metrics read from the Manager at scrape time.
func (m *Metrics) observe(w *Manager) {
	if m.reg == nil {
		return
	}
	m.once.Do(func() {
		m.reg.MustRegister(
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "glimpse_watch_blocking_reads",
				Help: "Blocking reads open against Consul (each holds a connection over HTTP/1.1, a stream of one over HTTP/2).",
			}, func() float64 { held, _, _ := w.slots.stats(); return float64(held) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "glimpse_watch_blocking_reads_limit",
				Help: "Most blocking reads the connection budget allows at once.",
			}, func() float64 { b, _ := Budget(w.cfg.MaxConns, w.cfg.Streams); return float64(b) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{
				Name: "glimpse_watch_loops_waiting",
				Help: "Loops waiting for a blocking read: more products in use than the budget has room for, so they take turns.",
			}, func() float64 { _, waiting, _ := w.slots.stats(); return float64(waiting) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "glimpse_watch_reads_preempted_total",
				Help: "Blocking reads cut short to give another loop its turn.",
			}, func() float64 { _, _, p := w.slots.stats(); return float64(p) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "glimpse_watch_turns_brought_forward_total",
				Help: "Products waiting for their turn read at once because the zone's read of check versions saw one of their checks change.",
			}, func() float64 { return float64(w.slots.kicks()) }),
		)
	})
}

func (m *Metrics) request(zone, endpoint string, err error) {
	m.requests.WithLabelValues(zone, endpoint, cause(err)).Inc()
}

// setFailing moves product p of zone to the failing count of cause ("":
// not failing). Called with the zone's lock held.
func (m *Metrics) setFailing(zone string, p *productWatch, cause string) {
	if p.cause == cause {
		return
	}
	if p.cause != "" {
		m.failing.WithLabelValues(zone, p.cause).Dec()
	}
	if cause != "" {
		m.failing.WithLabelValues(zone, cause).Inc()
	}
	p.cause = cause
}
