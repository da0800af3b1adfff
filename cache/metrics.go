package cache

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports the cache's state to Prometheus, computed from the
// current snapshots at scrape time.
type Collector struct {
	c *Cache

	index, instances, addresses, ignored, synced, stale, lastContact *prometheus.Desc
}

// NewCollector returns a Prometheus collector for c.
func NewCollector(c *Cache) *Collector {
	zone := []string{"zone"}
	return &Collector{
		c:           c,
		index:       prometheus.NewDesc("glimpse_cache_index", "The cache index: it moves on every change of the topology.", nil, nil),
		instances:   prometheus.NewDesc("glimpse_cache_instances", "Instances in the cache, by zone.", zone, nil),
		addresses:   prometheus.NewDesc("glimpse_cache_addresses", "Addresses in the cache, by zone.", zone, nil),
		ignored:     prometheus.NewDesc("glimpse_cache_ignored_instances", "Instances of glimpse products that lack the env, job or service tag or an IP address, by zone.", zone, nil),
		synced:      prometheus.NewDesc("glimpse_cache_zone_synced", "1 once every watcher of the zone has delivered its first result.", zone, nil),
		stale:       prometheus.NewDesc("glimpse_cache_stale_seconds", "Seconds since the last successful Consul contact while some watcher of the zone is out of contact; 0 while all are in contact.", zone, nil),
		lastContact: prometheus.NewDesc("glimpse_cache_last_contact_timestamp_seconds", "Unix time of the last successful Consul result for the zone.", zone, nil),
	}
}

// Describe implements prometheus.Collector.
func (k *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{k.index, k.instances, k.addresses, k.ignored, k.synced, k.stale, k.lastContact} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (k *Collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	ch <- prometheus.MustNewConstMetric(k.index, prometheus.GaugeValue, float64(k.c.Index()))
	for _, z := range k.c.Zones() {
		var instances, addresses, ignored int
		for _, p := range z.Products.All() {
			instances += p.Instances
			addresses += len(p.Addresses)
			ignored += p.Ignored
		}
		synced := 0.0
		if z.Synced {
			synced = 1
		}
		g := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, z.Name)
		}
		g(k.instances, float64(instances))
		g(k.addresses, float64(addresses))
		g(k.ignored, float64(ignored))
		g(k.synced, synced)
		if st := k.c.Status(z.Name); st != nil {
			g(k.stale, st.SecondsStale(now))
			if t := st.LastContact(); !t.IsZero() {
				g(k.lastContact, float64(t.UnixNano())/1e9)
			}
		}
	}
}
