package dns

import (
	"time"

	mdns "github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// The label values of glimpse_dns_requests_total; anything else counts as
// "other", so the label sets stay bounded whatever clients send.
var (
	metricQtypes = []uint16{mdns.TypeSRV, mdns.TypeA, mdns.TypeAAAA, mdns.TypeNS, mdns.TypeSOA, mdns.TypeANY}
	metricRcodes = []int{mdns.RcodeSuccess, mdns.RcodeNameError, mdns.RcodeServerFailure, mdns.RcodeRefused,
		mdns.RcodeFormatError, mdns.RcodeNotImplemented, mdns.RcodeBadVers}
)

const (
	otherQtype = 6 // index after metricQtypes
	otherRcode = 7 // index after metricRcodes
)

// Metrics are the DNS server's Prometheus metrics. Every counter a query can
// touch is resolved once, so counting a query is an atomic add.
type Metrics struct {
	requests [2][otherQtype + 1][otherRcode + 1]prometheus.Counter // [tcp][qtype][rcode]
	duration [2]prometheus.Observer
}

// NewMetrics registers the DNS metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "glimpse_dns_requests_total",
		Help: "DNS requests answered, by query type, response code and protocol.",
	}, []string{"qtype", "rcode", "proto"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "glimpse_dns_request_duration_seconds",
		Help:    "Time from a DNS request's arrival (for UDP read in batches, the read of its batch; otherwise the handler's start) to its answer being written.",
		Buckets: []float64{0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1},
	}, []string{"proto"})
	reg.MustRegister(requests, duration)

	m := &Metrics{}
	for tcp, proto := range []string{"udp", "tcp"} {
		m.duration[tcp] = duration.WithLabelValues(proto)
		for qi := 0; qi <= otherQtype; qi++ {
			qtype := "other"
			if qi < otherQtype {
				qtype = mdns.TypeToString[metricQtypes[qi]]
			}
			for ri := 0; ri <= otherRcode; ri++ {
				rcode := "other"
				if ri < otherRcode {
					rcode = rcodeName(metricRcodes[ri])
				}
				m.requests[tcp][qi][ri] = requests.WithLabelValues(qtype, rcode, proto)
			}
		}
	}
	return m
}

func (m *Metrics) observe(tcp bool, qtype uint16, rcode int, d time.Duration) {
	p := 0
	if tcp {
		p = 1
	}
	qi := otherQtype
	for i, t := range metricQtypes {
		if t == qtype {
			qi = i
			break
		}
	}
	ri := otherRcode
	for i, r := range metricRcodes {
		if r == rcode {
			ri = i
			break
		}
	}
	m.requests[p][qi][ri].Inc()
	m.duration[p].Observe(d.Seconds())
}

// rcodeName names an rcode; miekg/dns names 16 BADSIG (its TSIG meaning),
// but in a DNS answer's header with EDNS it is BADVERS.
func rcodeName(rcode int) string {
	if rcode == mdns.RcodeBadVers {
		return "BADVERS"
	}
	return mdns.RcodeToString[rcode]
}

// RegisterServer registers with reg the gauges of s's TCP connections:
// glimpse_dns_tcp_connections and glimpse_dns_tcp_evicted_total.
func RegisterServer(reg prometheus.Registerer, s *Server) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "glimpse_dns_tcp_connections",
		Help: "DNS TCP connections open (at most -dns.tcp-max-conns).",
	}, func() float64 { return float64(s.tcpl.open()) }), prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "glimpse_dns_tcp_evicted_total",
		Help: "DNS TCP connections closed, the longest quiet first, to make room for new ones over -dns.tcp-max-conns.",
	}, func() float64 { return float64(s.tcpl.evicted.Load()) }))
}
