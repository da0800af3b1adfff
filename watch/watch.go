// Package watch feeds the cache from Consul with blocking queries.
//
// Per zone (a Consul datacenter) it runs one loop on the catalog's service
// list, one health loop per glimpse product, and one on the "consul" service
// for the zone's servers. The local zone is watched from the start; a remote
// zone from its first read on, until nobody has read it for an idle period.
//
// The loops are written here rather than with Consul's api/watch package:
// api/watch hides errors behind a fixed 5 s × n² back-off (up to 180 s)
// without jitter and reports nothing about staleness, while glimpse must be
// back in sync within seconds of Consul's return, must say how stale each
// zone is, and must rate-limit every loop. The rules followed are those of
// Consul's blocking-query documentation: stale reads, the index reset when
// it goes backwards, never a loop on index 0, a token bucket per loop, and
// jittered, capped back-off on errors.
package watch

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"glimpse/cache"
)

// Config tunes the watchers.
type Config struct {
	// Local is the local zone, watched from the start and never dropped.
	Local string
	// Wait is the longest a blocking query waits for a change.
	Wait time.Duration
	// Rate and Burst shape each loop's token bucket of Consul requests.
	Rate  rate.Limit
	Burst int
	// MinBackoff and MaxBackoff bound the jittered back-off after errors.
	MinBackoff, MaxBackoff time.Duration
	// Idle is how long a remote zone stays watched after its last read.
	Idle time.Duration
	// DatacentersEvery is how often the list of datacenters is refreshed.
	DatacentersEvery time.Duration
}

// DefaultConfig returns the defaults of glimpse-agent's flags.
func DefaultConfig() Config {
	return Config{
		Wait:             time.Minute,
		Rate:             20,
		Burst:            20,
		MinBackoff:       100 * time.Millisecond,
		MaxBackoff:       3 * time.Second,
		Idle:             10 * time.Minute,
		DatacentersEvery: 30 * time.Second,
	}
}

// Manager runs the watchers of every watched zone.
type Manager struct {
	client  *api.Client
	cache   *cache.Cache
	cfg     Config
	log     *zap.Logger
	metrics *Metrics

	ctx context.Context // set by Run
	wg  sync.WaitGroup
	mu  sync.Mutex
	// zones being watched; guarded by mu.
	zones map[string]*zoneWatch
}

// New returns a Manager; Run starts it.
func New(client *api.Client, c *cache.Cache, cfg Config, log *zap.Logger, m *Metrics) *Manager {
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Manager{client: client, cache: c, cfg: cfg, log: log, metrics: m, zones: map[string]*zoneWatch{}}
}

// Run watches the local zone, the datacenter list and idle remote zones
// until ctx ends, then waits for every loop to stop.
func (m *Manager) Run(ctx context.Context) {
	m.mu.Lock()
	m.ctx = ctx
	m.startZone(m.cfg.Local, true)
	m.mu.Unlock()

	m.wg.Add(2)
	go m.datacenters(ctx)
	go m.reapIdle(ctx)
	<-ctx.Done()
	m.wg.Wait()
}

// Want starts watching a remote zone if it is not watched yet. It does not
// block; the zone's first sync shows in the cache.
func (m *Manager) Want(zone string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.ctx.Err() != nil {
		return
	}
	if _, ok := m.zones[zone]; ok {
		return
	}
	if exists, _ := m.cache.Datacenter(zone); !exists {
		return
	}
	m.startZone(zone, false)
}

// startZone starts the loops of a zone. Called with m.mu held.
func (m *Manager) startZone(name string, local bool) {
	m.cache.AddZone(name, local)
	ctx, cancel := context.WithCancel(m.ctx)
	z := &zoneWatch{
		m: m, name: name, local: local, ctx: ctx, cancel: cancel,
		status:   m.cache.Status(name),
		products: map[string]context.CancelFunc{},
		pending:  map[string]bool{},
		started:  time.Now(),
	}
	m.zones[name] = z
	m.log.Info("zone watch started", zap.String("zone", name), zap.Bool("local", local))
	z.loop("services", z.fetchServices)
	z.loop("servers", z.fetchServers)
}

// stopZone stops a remote zone's loops and drops it from the cache.
// Called with m.mu held.
func (m *Manager) stopZone(z *zoneWatch, why string) {
	delete(m.zones, z.name)
	z.mu.Lock()
	z.cancel() // under z.mu: see fetchProduct
	z.mu.Unlock()
	m.cache.DropZone(z.name)
	m.log.Info("zone watch stopped", zap.String("zone", z.name), zap.String("reason", why))
}

// datacenters keeps the cache's list of Consul datacenters current. The
// list endpoint does not block, so it is polled.
func (m *Manager) datacenters(ctx context.Context) {
	defer m.wg.Done()
	failures := 0
	for {
		var dcs []string
		rctx, cancel := context.WithTimeout(ctx, requestSlack)
		_, err := m.client.Raw().Query("/v1/catalog/datacenters", &dcs, (&api.QueryOptions{}).WithContext(rctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		m.metrics.request(m.cfg.Local, "datacenters", err)
		wait := m.cfg.DatacentersEvery
		if err != nil {
			if failures == 0 {
				m.log.Warn("listing datacenters failed", zap.Error(err))
			}
			failures++
			wait = backoff(m.cfg, failures)
		} else {
			if failures > 0 {
				m.log.Info("listing datacenters recovered", zap.Int("datacenters", len(dcs)))
			}
			failures = 0
			m.cache.SetDatacenters(dcs)
		}
		if !sleep(ctx, wait) {
			return
		}
	}
}

// reapIdle stops remote zones nobody has read for cfg.Idle.
func (m *Manager) reapIdle(ctx context.Context) {
	defer m.wg.Done()
	every := min(max(m.cfg.Idle/4, 10*time.Millisecond), 30*time.Second)
	for sleep(ctx, every) {
		// Checked and stopped under one lock, so a zone is never dropped
		// on a stale verdict.
		m.mu.Lock()
		for _, z := range m.zones {
			if !z.local && time.Since(z.status.LastQuery()) > m.cfg.Idle {
				m.stopZone(z, "idle")
			}
		}
		m.mu.Unlock()
	}
}

// zoneWatch is one watched zone.
type zoneWatch struct {
	m       *Manager
	name    string
	local   bool
	ctx     context.Context
	cancel  context.CancelFunc
	status  *cache.Status
	started time.Time

	mu sync.Mutex
	// products maps each watched product to the cancel of its loop.
	products map[string]context.CancelFunc
	// pending holds products whose first result has not come yet; the zone
	// is synced once it is empty and the services and servers loops have
	// delivered.
	pending                   map[string]bool
	haveServices, haveServers bool
	synced                    bool

	// queued holds product results not yet in the cache. A loop queues its
	// result, then takes z.mu and applies everything queued: while one
	// loop applies, the others' results pile up and go into the cache
	// together, in one snapshot (see cache.SetProducts).
	//
	// A product is in queued at most once: its loop waits until its result
	// is applied before it asks Consul again.
	qmu    sync.Mutex
	queued []cache.ProductUpdate

	filteredOnce sync.Once
}

// tokenAdvice says what a token glimpse-agent can work with needs.
const tokenAdvice = "it needs service:read on the glimpse services and on consul, and node:read (set -consul.token or CONSUL_HTTP_TOKEN)"

// ErrHidden is the error of a read whose every result Consul's ACLs hid
// from glimpse's token: a service list without even Consul's own service,
// or a list Consul says it filtered down to nothing. glimpse cannot tell an
// empty catalog from one it may not see, so it serves neither.
var ErrHidden = errors.New("consul's ACLs hide every result from glimpse's token; " + tokenAdvice)

// Denied reports whether err is Consul refusing glimpse's token: a 403, or
// every result hidden by ACLs.
func Denied(err error) bool {
	var se api.StatusError
	return errors.Is(err, ErrHidden) || errors.As(err, &se) && se.Code == http.StatusForbidden
}

// Explain returns err's message, with what to do about a refused token.
func Explain(err error) string {
	var se api.StatusError
	if errors.As(err, &se) && se.Code == http.StatusForbidden {
		return "consul refused glimpse's token (" + strings.TrimSpace(se.Body) + "); " + tokenAdvice
	}
	return err.Error()
}

// warnFiltered logs, once per zone, that ACLs hide part of a read's results.
func (z *zoneWatch) warnFiltered(what string) {
	z.filteredOnce.Do(func() {
		z.m.log.Warn("consul's ACLs hide some results from glimpse's token; those are not served", zap.String("zone", z.name), zap.String("read", what))
	})
}

// fetch runs one Consul request of a loop with q (which carries the
// request's deadline), applies its result unless ctx (the loop's) has ended,
// and returns Consul's query metadata.
type fetch func(ctx context.Context, q *api.QueryOptions) (*api.QueryMeta, error)

// loop runs fn as a blocking-query loop until the zone's context (or ctx of
// a product loop) ends.
func (z *zoneWatch) loop(what string, fn fetch) {
	z.loopCtx(z.ctx, what, "", fn)
}

func (z *zoneWatch) loopCtx(ctx context.Context, endpoint, product string, fn fetch) {
	m := z.m
	m.wg.Add(1)
	m.metrics.watchers.WithLabelValues(z.name).Inc()
	log := m.log.WithLazy(zap.String("zone", z.name), zap.String("watch", endpoint))
	if product != "" {
		log = log.WithLazy(zap.String("product", product))
	}
	log.Debug("watcher started")
	go func() {
		defer m.wg.Done()
		defer m.metrics.watchers.WithLabelValues(z.name).Dec()
		limiter := rate.NewLimiter(m.cfg.Rate, m.cfg.Burst)
		var index uint64
		failures := 0
		failing := false
		setFailing := func(f bool) {
			if f != failing {
				failing = f
				if f {
					z.status.Failing(1)
				} else {
					z.status.Failing(-1)
				}
			}
		}
		defer setFailing(false)
		for {
			if err := limiter.Wait(ctx); err != nil {
				log.Debug("watcher stopped")
				return
			}
			// A request gets the wait, Consul's jitter of up to wait/16 and
			// some slack; a Consul that hangs longer counts as failing.
			rctx, cancel := context.WithTimeout(ctx, m.cfg.Wait+m.cfg.Wait/16+requestSlack)
			q := (&api.QueryOptions{
				Datacenter: z.name,
				AllowStale: true,
				WaitIndex:  index,
				WaitTime:   m.cfg.Wait,
			}).WithContext(rctx)
			meta, err := fn(ctx, q)
			cancel()
			if ctx.Err() != nil {
				log.Debug("watcher stopped")
				return
			}
			m.metrics.request(z.name, endpoint, err)
			if err != nil {
				msg := Explain(err)
				z.status.SetProblem(msg)
				if failures == 0 {
					log.Warn("consul request failed; serving the last known state", zap.String("error", msg))
				} else {
					log.Debug("consul request failed", zap.Error(err), zap.Int("failures", failures+1))
				}
				failures++
				setFailing(true)
				// The next request does not block: once Consul is back the
				// watcher resyncs (and reports contact) at once, not after a
				// whole wait with nothing changed.
				index = 0
				if !sleep(ctx, backoff(m.cfg, failures)) {
					return
				}
				continue
			}
			if failures > 0 {
				log.Info("consul request recovered", zap.Int("failures", failures))
			}
			failures = 0
			// Consul's streaming backend, which serves blocking health
			// queries, never reports a leader; its results are fresh.
			fresh := meta.KnownLeader || meta.QueryBackend == api.QueryBackendStreaming
			if fresh {
				z.status.Contact(time.Now())
			}
			setFailing(!fresh)
			switch {
			case meta.LastIndex < index:
				// The index went backwards (a restored or rebuilt Consul):
				// start over with a non-blocking read.
				log.Info("consul index went backwards; resyncing", zap.Uint64("was", index), zap.Uint64("now", meta.LastIndex))
				index = 0
			case meta.LastIndex == 0:
				index = 1 // never loop on index 0: it does not block
			default:
				index = meta.LastIndex
			}
		}
	}()
}

// fetchServices reads the catalog's service list and starts and stops
// product loops to match it.
func (z *zoneWatch) fetchServices(ctx context.Context, q *api.QueryOptions) (*api.QueryMeta, error) {
	services, meta, err := z.m.client.Catalog().Services(q)
	if err != nil {
		return nil, err
	}
	// A datacenter's catalog always holds the "consul" service of its
	// servers; Consul 1.14 filters a list by ACLs without saying so, so an
	// empty list means the token may read nothing.
	if len(services) == 0 {
		return nil, ErrHidden
	}
	if meta.ResultsFilteredByACLs {
		z.warnFiltered("catalog services")
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if ctx.Err() != nil { // the zone was stopped meanwhile (see fetchProduct)
		return meta, nil
	}
	want := map[string]bool{}
	for name, tags := range services {
		if IsProduct(name, tags) {
			want[cache.Lower(name)] = true
		}
	}
	for name, cancel := range z.products {
		if !want[name] {
			z.qmu.Lock()
			cancel()
			z.queued = slices.DeleteFunc(z.queued, func(u cache.ProductUpdate) bool { return u.Product == name })
			z.qmu.Unlock()
			delete(z.products, name)
			delete(z.pending, name)
			z.m.cache.RemoveProduct(z.name, name)
			z.m.log.Info("product watch stopped", zap.String("zone", z.name), zap.String("product", name))
		}
	}
	for name := range want {
		if _, ok := z.products[name]; ok {
			continue
		}
		pctx, cancel := context.WithCancel(z.ctx)
		z.products[name] = cancel
		if !z.synced {
			z.pending[name] = true
		}
		product := name
		z.loopCtx(pctx, "health", product, func(ctx context.Context, q *api.QueryOptions) (*api.QueryMeta, error) {
			return z.fetchProduct(ctx, product, q)
		})
		if z.synced {
			z.m.log.Info("product watch started", zap.String("zone", z.name), zap.String("product", name))
		}
	}
	z.haveServices = true
	z.checkSynced()
	return meta, nil
}

// fetchProduct reads the health of every instance of a product.
// A result that arrives after the product's loop was stopped is dropped:
// the product may be gone from the cache already.
func (z *zoneWatch) fetchProduct(ctx context.Context, product string, q *api.QueryOptions) (*api.QueryMeta, error) {
	var entries []*healthEntry
	meta, err := z.m.client.Raw().Query("/v1/health/service/"+url.PathEscape(product), &entries, q)
	if err != nil {
		return nil, err
	}
	if meta.ResultsFilteredByACLs {
		if len(entries) == 0 {
			return nil, ErrHidden
		}
		z.warnFiltered("health of " + product)
	}
	in, ignored := instances(entries)
	z.qmu.Lock()
	if ctx.Err() != nil { // stopped under z.qmu, so this check is exact
		z.qmu.Unlock()
		return meta, nil
	}
	z.queued = append(z.queued, cache.ProductUpdate{Product: product, Instances: in, Ignored: ignored})
	z.qmu.Unlock()

	z.mu.Lock()
	defer z.mu.Unlock()
	z.qmu.Lock()
	batch := z.queued
	z.queued = nil
	z.qmu.Unlock()
	if len(batch) == 0 {
		return meta, nil // applied by another loop's batch
	}
	z.m.cache.SetProducts(z.name, batch)
	for _, u := range batch {
		delete(z.pending, u.Product)
	}
	z.checkSynced()
	return meta, nil
}

// fetchServers reads the zone's Consul servers.
func (z *zoneWatch) fetchServers(ctx context.Context, q *api.QueryOptions) (*api.QueryMeta, error) {
	entries, meta, err := z.m.client.Catalog().Service("consul", "", q)
	if err != nil {
		return nil, err
	}
	z.mu.Lock()
	if ctx.Err() != nil {
		z.mu.Unlock()
		return meta, nil
	}
	z.m.cache.SetServers(z.name, servers(entries))
	z.haveServers = true
	z.checkSynced()
	z.mu.Unlock()
	return meta, nil
}

// checkSynced marks the zone synced once every loop has delivered. Called
// with z.mu held.
func (z *zoneWatch) checkSynced() {
	if z.synced || !z.haveServices || !z.haveServers || len(z.pending) > 0 {
		return
	}
	z.synced = true
	z.m.cache.SetSynced(z.name)
	if z.local {
		// The first sync decoded the whole catalog: hand the garbage of
		// that back to the system now rather than over many minutes, so
		// that the agent's footprint is its steady state from the start.
		go debug.FreeOSMemory()
	}
	zone := z.m.cache.Zone(z.name)
	instances := 0
	if zone != nil {
		for _, p := range zone.Products {
			instances += p.Instances
		}
	}
	z.m.log.Info("zone synced", zap.String("zone", z.name), zap.Int("products", len(z.products)),
		zap.Int("instances", instances), zap.Duration("took", time.Since(z.started)))
}

// requestSlack is how long a Consul request may take beyond its blocking
// wait before it is abandoned as failed.
const requestSlack = 10 * time.Second

// backoff returns the jittered wait after the n-th consecutive failure:
// exponential from MinBackoff, scaled by a random factor in [0.5, 1.5) so
// that watchers do not retry in step, and never above MaxBackoff.
func backoff(cfg Config, n int) time.Duration {
	d := cfg.MinBackoff
	for i := 1; i < n && d < cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, cfg.MaxBackoff)
	return min(time.Duration(float64(d)*(0.5+rand.Float64())), cfg.MaxBackoff)
}

// sleep waits d or until ctx ends; it reports whether the wait completed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
