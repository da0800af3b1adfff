package watch

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the watchers' Prometheus metrics.
type Metrics struct {
	watchers *prometheus.GaugeVec
	requests *prometheus.CounterVec
}

// NewMetrics registers the watch metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		watchers: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glimpse_watch_watchers",
			Help: "Blocking-query loops running against Consul, by zone.",
		}, []string{"zone"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_watch_consul_requests_total",
			Help: "Requests the watchers made to Consul, by zone, endpoint and result (ok, denied by Consul's ACLs, or error).",
		}, []string{"zone", "endpoint", "result"}),
	}
	if reg != nil {
		reg.MustRegister(m.watchers, m.requests)
	}
	return m
}

func (m *Metrics) request(zone, endpoint string, err error) {
	result := "ok"
	switch {
	case Denied(err):
		result = "denied"
	case err != nil:
		result = "error"
	}
	m.requests.WithLabelValues(zone, endpoint, result).Inc()
}
