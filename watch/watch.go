// Package watch feeds the cache from Consul with blocking queries, for what
// this host reads.
//
// Per watched zone (a Consul datacenter) it runs one loop on the zone's
// product list and one on its Consul servers, and one health loop per
// product in use: a product is watched from its first read on this host (a
// DNS query, an HTTP lookup, a long-poll or a websocket subscription), kept
// while it is read or held, and dropped after Config.Idle without reads.
// Pinned products (Config.Pins) are watched from the start and never
// dropped. The local zone is watched from the start; a remote zone from its
// first read, until it has no product in use and has not been read for the
// idle period. Manager's Use, Hold and Resolve are the one way readers mark
// what they use (cache.Demand).
//
// Every loop's reads go through a connection budget (Config.MaxConns): a
// share of it for blocking reads (see slots), a share for first reads, which
// do not block, and the rest for everything else (the datacenter list, the
// providers' registrations). When more products are in use than blocking
// reads fit, they take turns, and per zone two reads of the unhealthy
// checks bring forward the turn of a product whose health changed (see
// detect). The local Consul agent's other clients share
// its per-client connection limit; glimpse never takes more than its
// budget. Over HTTP/2 (an https Consul agent) a connection carries
// Config.Streams requests at once, and the shares grow with it.
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
	"fmt"
	"iter"
	"math/rand/v2"
	"path"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/rugby110/glimpse/cache"
)

// Config tunes the watchers.
type Config struct {
	// Local is the local zone, watched from the start and never dropped.
	Local string
	// Wait is the longest a blocking query of a zone's own loops (its
	// product list, its servers, its checks) waits for a change. A Consul
	// agent that stops answering shows within it: those loops fail and the
	// zone turns stale.
	Wait time.Duration
	// ProductWait is the longest a product's blocking query waits for a
	// change. A read that waits it out returns the product's whole
	// unchanged result, which the Consul agent encodes again and glimpse
	// decodes: per product the one cost that grows with the time nothing
	// changes, so it is longer than Wait. 0 means Wait.
	ProductWait time.Duration
	// RotateWait is how long a blocking query waits while other loops wait
	// for its slot (more products in use than the budget has room for).
	RotateWait time.Duration
	// Rate and Burst shape each loop's token bucket of Consul requests.
	Rate  rate.Limit
	Burst int
	// MinBackoff and MaxBackoff bound the jittered back-off after errors.
	MinBackoff, MaxBackoff time.Duration
	// Idle is how long a product, or a remote zone, stays watched after its
	// last read.
	Idle time.Duration
	// DatacentersEvery is how often the list of datacenters is refreshed.
	DatacentersEvery time.Duration
	// MaxConns is the connection budget towards the Consul agent, which
	// the transport enforces; the watchers plan their reads within it.
	MaxConns int
	// Streams is how many requests one connection carries at once: 1 over
	// HTTP/1.1 (0 means 1), more over HTTP/2.
	Streams int
	// Pins are patterns (path.Match syntax; "*" for all) of local products
	// watched from the start and never dropped.
	Pins []string
	// ListRefreshRate bounds how often per zone a read of a product the
	// list lacks reads the list again, in case the product is new.
	ListRefreshRate rate.Limit
}

// DefaultMaxConns is the default connection budget: half of the Consul
// agent's default limits.http_max_conns_per_client (200), which the host's
// other Consul clients share.
const DefaultMaxConns = 100

// MinMaxConns is the smallest budget the watchers can work with: a
// blocking read each for the local zone's product list and servers, one for
// products, one for first reads and one for everything else.
const MinMaxConns = 5

// DefaultConfig returns the defaults of glimpse-agent's flags.
func DefaultConfig() Config {
	return Config{
		Wait:             time.Minute,
		ProductWait:      5 * time.Minute,
		RotateWait:       time.Second,
		Rate:             20,
		Burst:            20,
		MinBackoff:       100 * time.Millisecond,
		MaxBackoff:       3 * time.Second,
		Idle:             10 * time.Minute,
		DatacentersEvery: 30 * time.Second,
		MaxConns:         DefaultMaxConns,
		ListRefreshRate:  5,
	}
}

// Budget splits a connection budget, of connections carrying streams
// requests each, into the blocking reads and the concurrent first reads
// it holds; the rest (at least one connection) is for the datacenter list
// and provider writes.
func Budget(maxConns, streams int) (blocking, first int) {
	maxConns = max(maxConns, MinMaxConns)
	streams = max(streams, 1)
	first = max(1, maxConns/10)
	rest := max(1, maxConns/20)
	return (maxConns - first - rest) * streams, first * streams
}

// ValidPin checks a -watch.pin pattern.
func ValidPin(p string) error {
	if _, err := path.Match(p, ""); err != nil || p == "" {
		return fmt.Errorf("pattern %q is not a valid product pattern (* ? [a-z] as in shell globs)", p)
	}
	return nil
}

// Manager runs the watchers of every watched zone. It implements
// cache.Demand.
type Manager struct {
	backend Backend
	cache   *cache.Cache
	cfg     Config
	log     *zap.Logger
	metrics *Metrics
	slots   *slots
	// first bounds the non-blocking reads in flight.
	first chan struct{}

	ctx context.Context // set by Run
	wg  sync.WaitGroup
	// mu serialises the starting and stopping of zones; it is taken before
	// a zoneWatch's mu.
	mu sync.Mutex
	// zones are the watched zones, written with mu held and read by Use
	// without it.
	zones cowMap[*zoneWatch]
}

// cowMap is a map that readers load without a lock; writers, serialised by
// its owner's lock, replace it with an updated copy.
type cowMap[V any] struct{ p atomic.Pointer[map[string]V] }

// load returns the current map; it must not be modified.
func (c *cowMap[V]) load() map[string]V {
	if m := c.p.Load(); m != nil {
		return *m
	}
	return nil
}

// update replaces the map with a copy that fn has changed.
func (c *cowMap[V]) update(fn func(map[string]V)) {
	old := c.load()
	m := make(map[string]V, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	fn(m)
	c.p.Store(&m)
}

// liveMap is a map that readers use without a lock and writers, serialised
// by its owner's lock, change in place: a product's first read must not
// copy the thousands of others (a copy-on-write map made the first reads
// of 5,000 products cost 12.5 million copied entries).
type liveMap[V any] struct {
	m sync.Map
	n atomic.Int64
}

// get returns the value of k, or the zero value.
func (l *liveMap[V]) get(k string) V {
	v, _ := l.m.Load(k)
	r, _ := v.(V)
	return r
}

// put sets k; called with the owner's lock held.
func (l *liveMap[V]) put(k string, v V) {
	if _, loaded := l.m.Swap(k, v); !loaded {
		l.n.Add(1)
	}
}

// del removes k; called with the owner's lock held.
func (l *liveMap[V]) del(k string) {
	if _, loaded := l.m.LoadAndDelete(k); loaded {
		l.n.Add(-1)
	}
}

// len returns the number of entries.
func (l *liveMap[V]) len() int { return int(l.n.Load()) }

// all yields every entry; with the owner's lock held, none changes
// meanwhile.
func (l *liveMap[V]) all() iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		l.m.Range(func(k, v any) bool { return yield(k.(string), v.(V)) })
	}
}

var _ cache.Demand = (*Manager)(nil)

// New returns a Manager reading from backend; Run starts it.
func New(backend Backend, c *cache.Cache, cfg Config, log *zap.Logger, m *Metrics) *Manager {
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.RotateWait <= 0 {
		cfg.RotateWait = time.Second
	}
	if cfg.ProductWait <= 0 {
		cfg.ProductWait = cfg.Wait
	}
	if cfg.ListRefreshRate <= 0 {
		cfg.ListRefreshRate = 5
	}
	blocking, first := Budget(cfg.MaxConns, cfg.Streams)
	w := &Manager{backend: backend, cache: c, cfg: cfg, log: log, metrics: m,
		slots: newSlots(blocking), first: make(chan struct{}, first)}
	m.observe(w)
	return w
}

// Run watches the local zone, the datacenter list and idle products and
// zones until ctx ends, then waits for every loop to stop.
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

// usage records the reads of a zone or product: the last one, to 100 ms,
// and the holders (long-polls, subscriptions) that keep it in use.
type usage struct {
	last atomic.Int64 // unix nanoseconds
	refs atomic.Int32
}

func (u *usage) touch(now int64) {
	if d := now - u.last.Load(); d >= int64(100*time.Millisecond) || d < 0 {
		u.last.Store(now)
	}
}

// idle reports whether nothing holds u and its last read is older than ttl.
func (u *usage) idle(now int64, ttl time.Duration) bool {
	return u.refs.Load() <= 0 && now-u.last.Load() > int64(ttl)
}

// Use implements cache.Demand. For what is watched already, and for names
// the zone's list lacks, it takes no lock and allocates nothing: it is on
// every DNS answer's path.
func (m *Manager) Use(zone, product string) {
	now := time.Now().UnixNano()
	if u := m.lookup(zone, product); u != nil {
		u.touch(now)
		return
	}
	if product != "" && m.cache.Zone(zone).State(product) == cache.Unlisted {
		return // nothing to watch, and no lock taken for made-up names
	}
	if u, _ := m.want(zone, product, false); u != nil {
		u.touch(now)
	}
}

// Hold implements cache.Demand. A product held before Consul lists it is
// watched as soon as it is listed.
func (m *Manager) Hold(zone, product string) (release func()) {
	u, p := m.want(zone, product, true)
	if u == nil {
		return func() {}
	}
	if u.refs.Add(1) == 1 && p != nil {
		// Held from now on: it outranks what is only read, also while it
		// waits for its turn.
		m.slots.raise(&p.ticket, prioHeld)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			u.touch(time.Now().UnixNano())
			u.refs.Add(-1)
		})
	}
}

// lookup returns the usage of a watched zone or product, nil if it is not
// watched.
func (m *Manager) lookup(zone, product string) *usage {
	z := m.zones.load()[zone]
	if z == nil {
		return nil
	}
	if product == "" {
		return &z.use
	}
	if p := z.products.get(product); p != nil {
		return &p.use
	}
	return nil
}

// maxUnlisted bounds the products a zone tracks that its list lacks: held
// by subscriptions and long-polls waiting for them to be registered, or read
// before the list is known. Past it such names are not tracked (a hostile
// client naming made-up products costs nothing more); a subscription to
// one still gets it once something else watches it.
const maxUnlisted = 1024

// want starts watching a zone and a product of it, and returns its usage
// and, for a product, its entry; nil when there is nothing to watch: a zone
// Consul does not know, a product its list lacks (unless hold), or the
// Manager not running.
func (m *Manager) want(zone, product string, hold bool) (*usage, *productWatch) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx == nil || m.ctx.Err() != nil {
		return nil, nil
	}
	z := m.zones.load()[zone]
	if z == nil {
		if exists, _ := m.cache.Datacenter(zone); !exists && zone != m.cfg.Local {
			return nil, nil
		}
		z = m.startZone(zone, false)
	}
	if product == "" {
		return &z.use, nil
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	p := z.products.get(product)
	if p == nil {
		listed, haveList := z.listed()
		_, isListed := listed[product]
		switch {
		case !isListed && z.products.len() >= len(listed)+maxUnlisted:
			return nil, nil // made-up names, most likely: not tracked
		case haveList && !isListed && !hold:
			return nil, nil
		}
		p = &productWatch{name: product, pinned: z.m.pinned(z.name, product)}
		p.use.last.Store(time.Now().UnixNano())
		z.products.put(product, p)
		if isListed {
			z.startProduct(p)
		}
	}
	return &p.use, p
}

// Resolve implements cache.Demand.
func (m *Manager) Resolve(ctx context.Context, zone, product string) {
	refreshed := false
	for {
		// Each turn, in case the zone was not watched yet at the last one
		// (the agent just started) or the product was dropped meanwhile.
		m.Use(zone, product)
		changed := m.cache.Changed()
		z := m.cache.Zone(zone)
		switch z.State(product) {
		case cache.Present, cache.Failing:
			return
		case cache.Unlisted:
			if refreshed {
				return
			}
			// Not a product the list has: read the list again, once, in
			// case the product was registered since.
			refreshed = true
			if !m.refreshList(ctx, zone) {
				return
			}
			continue
		}
		if z == nil {
			if exists, known := m.cache.Datacenter(zone); known && !exists && zone != m.cfg.Local {
				return
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// startZone starts the loops of a zone. Called with m.mu held.
func (m *Manager) startZone(name string, local bool) *zoneWatch {
	m.cache.AddZone(name, local)
	ctx, cancel := context.WithCancel(m.ctx)
	z := &zoneWatch{
		m: m, name: name, local: local, ctx: ctx, cancel: cancel,
		status:  m.cache.Status(name),
		started: time.Now(),
		refresh: rate.NewLimiter(m.cfg.ListRefreshRate, int(max(1, m.cfg.ListRefreshRate))),
	}
	z.use.last.Store(time.Now().UnixNano())
	m.zones.update(func(zs map[string]*zoneWatch) { zs[name] = z })
	m.log.Info("zone watch started", zap.String("zone", name), zap.Bool("local", local))
	z.loop("services", z.fetchList)
	z.loop("servers", z.fetchServers)
	m.wg.Add(2)
	go z.detect(cache.Critical)
	go z.detect(cache.Warning)
	return z
}

// stopZone stops a remote zone's loops and drops it from the cache.
// Called with m.mu held.
func (m *Manager) stopZone(z *zoneWatch, why string) {
	m.zones.update(func(zs map[string]*zoneWatch) { delete(zs, z.name) })
	z.mu.Lock()
	z.qmu.Lock()
	z.cancel() // under both: see fetchProduct and productFailed
	z.qmu.Unlock()
	for _, p := range z.products.all() {
		m.metrics.setFailing(z.name, p, "")
	}
	z.mu.Unlock()
	m.cache.DropZone(z.name)
	m.log.Info("zone watch stopped", zap.String("zone", z.name), zap.String("reason", why))
}

// pinned reports whether a product of the local zone is pinned.
func (m *Manager) pinned(zone, product string) bool {
	if zone != m.cfg.Local {
		return false
	}
	for _, p := range m.cfg.Pins {
		if ok, _ := path.Match(p, product); ok {
			return true
		}
	}
	return false
}

// datacenters keeps the cache's list of Consul datacenters current. The
// list endpoint does not block, so it is polled.
func (m *Manager) datacenters(ctx context.Context) {
	defer m.wg.Done()
	failures := 0
	for {
		rctx, cancel := context.WithTimeout(ctx, requestSlack)
		dcs, err := m.backend.Datacenters(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		m.metrics.request(m.cfg.Local, "datacenters", err)
		wait := m.cfg.DatacentersEvery
		if err != nil {
			if failures == 0 {
				m.log.Warn("listing datacenters failed", zap.String("error", Explain(err)))
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

// reapIdle stops the products and remote zones nobody has read for
// cfg.Idle.
func (m *Manager) reapIdle(ctx context.Context) {
	defer m.wg.Done()
	every := min(max(m.cfg.Idle/4, 10*time.Millisecond), 30*time.Second)
	for sleep(ctx, every) {
		now := time.Now().UnixNano()
		// Checked and stopped under the locks, so nothing is dropped on a
		// stale verdict; a reader that took the old index in that moment
		// only marks a dropped entry, and its next read watches it anew.
		m.mu.Lock()
		for _, z := range m.zones.load() {
			z.mu.Lock()
			var idle []string
			for name, p := range z.products.all() {
				if !p.pinned && p.use.idle(now, m.cfg.Idle) {
					z.stopProduct(p, "idle")
					idle = append(idle, name)
				}
			}
			if len(idle) > 0 {
				for _, name := range idle {
					z.products.del(name)
				}
			}
			empty := z.products.len() == 0
			z.mu.Unlock()
			if !z.local && empty && z.use.idle(now, m.cfg.Idle) {
				m.stopZone(z, "idle")
			}
		}
		m.mu.Unlock()
	}
}

// refreshList reads a zone's product list once more, at once, and applies
// it; it reports whether it did. Concurrent calls share one read, and reads
// are rate-limited per zone (cfg.ListRefreshRate): a flood of made-up names
// costs Consul little.
func (m *Manager) refreshList(ctx context.Context, zone string) bool {
	z := m.zones.load()[zone]
	if z == nil {
		return false
	}
	z.mu.Lock()
	call := z.refreshing
	if call == nil {
		if !z.refresh.Allow() {
			z.mu.Unlock()
			return false
		}
		call = &refreshCall{done: make(chan struct{})}
		z.refreshing = call
		go z.refreshOnce(call)
	}
	z.mu.Unlock()
	select {
	case <-call.done:
		return call.ok
	case <-ctx.Done():
		return false
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
	// use records the zone's own reads (names that are no product's).
	use usage
	// refresh limits refreshList's reads.
	refresh *rate.Limiter
	// products holds the products in use, pinned or held; written with mu
	// held, read by Use without it.
	products liveMap[*productWatch]
	// loops counts the starts and stops of product loops, so that detect
	// lists the products with a loop only when that set changed;
	// loopsCh, under loopsMu, is closed at the next change (loopsChanged).
	loops   atomic.Uint64
	loopsMu sync.Mutex
	loopsCh chan struct{}

	mu sync.Mutex
	// listIndex is the index of the product list last applied (the list
	// itself is the cache's Zone.Known).
	listIndex uint64
	// refreshing is the refreshList read in flight.
	refreshing  *refreshCall
	haveServers bool
	// synced: the list and servers were read; ready: and every pinned
	// product settled too. unsettledPins counts the pinned products whose
	// running loop has not settled.
	synced, ready bool
	unsettledPins int

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

// productWatch is one product in use, pinned or held.
type productWatch struct {
	name   string
	use    usage
	pinned bool
	// ticket is its loop's place in the queue for a blocking read.
	ticket ticket
	// cancel stops the product's loop; nil while it has none (the list
	// does not have the product, or was not read yet).
	cancel context.CancelFunc
	// settled is true once the product delivered a result or failed.
	settled bool
	// cause is the kind of its last failure ("" while it has none), for
	// the metrics; written with z.mu held.
	cause string
	// running mirrors cancel != nil, for readers without z.mu.
	running atomic.Bool
	// index is the index of its last result.
	index atomic.Uint64
}

type refreshCall struct {
	done chan struct{}
	ok   bool
}

// settle records that p's running loop delivered a result or failed.
// Called with z.mu held.
func (z *zoneWatch) settle(p *productWatch) {
	if !p.settled {
		p.settled = true
		if p.pinned {
			z.unsettledPins--
		}
	}
}

// listed returns the zone's product list as last read, and whether it was
// read at all. Called with z.mu held, under which the list is applied.
func (z *zoneWatch) listed() (map[string]struct{}, bool) {
	if zone := z.m.cache.Zone(z.name); zone != nil && zone.Known != nil {
		return zone.Known, true
	}
	return nil, false
}

// loopStartedOrStopped counts a product loop's start or stop and wakes
// who waits for one (loopsChanged).
func (z *zoneWatch) loopStartedOrStopped() {
	z.loops.Add(1)
	z.loopsMu.Lock()
	if z.loopsCh != nil {
		close(z.loopsCh)
		z.loopsCh = nil
	}
	z.loopsMu.Unlock()
}

// loopsChanged returns a channel closed at the next start or stop of a
// product loop.
func (z *zoneWatch) loopsChanged() <-chan struct{} {
	z.loopsMu.Lock()
	defer z.loopsMu.Unlock()
	if z.loopsCh == nil {
		z.loopsCh = make(chan struct{})
	}
	return z.loopsCh
}

// startProduct starts a product's loop. Called with z.mu held.
func (z *zoneWatch) startProduct(p *productWatch) {
	pctx, cancel := context.WithCancel(z.ctx)
	p.cancel = cancel
	p.running.Store(true)
	z.loopStartedOrStopped()
	p.index.Store(0)
	if p.pinned {
		z.unsettledPins++ // until its first result or failure
	}
	prio := func() int {
		switch {
		case p.use.refs.Load() > 0:
			return prioHeld
		case p.pinned && p.use.idle(time.Now().UnixNano(), z.m.cfg.Idle):
			return prioPinned
		}
		return prioInUse
	}
	z.loopPrio(pctx, "health", p.name, prio, &p.ticket, func(ctx context.Context, q Query) (Meta, error) {
		return z.fetchProduct(ctx, pctx, p, q)
	}, func(err error) { z.productFailed(pctx, p, err) })
	if z.synced {
		z.m.log.Debug("product watch started", zap.String("zone", z.name), zap.String("product", p.name))
	}
}

// stopProduct stops a product's loop and drops its state from the cache.
// Called with z.mu held.
func (z *zoneWatch) stopProduct(p *productWatch, why string) {
	if p.cancel == nil {
		return
	}
	z.qmu.Lock()
	p.cancel()
	z.queued = slices.DeleteFunc(z.queued, func(u cache.ProductUpdate) bool { return u.Product == p.name })
	z.qmu.Unlock()
	p.cancel = nil
	p.running.Store(false)
	z.loopStartedOrStopped()
	if p.pinned && !p.settled {
		z.unsettledPins--
	}
	p.settled = false
	z.m.metrics.setFailing(z.name, p, "")
	z.m.cache.RemoveProduct(z.name, p.name)
	z.m.log.Debug("product watch stopped", zap.String("zone", z.name), zap.String("product", p.name), zap.String("reason", why))
}

// warnFiltered logs, once per zone, that ACLs hide part of a read's results.
func (z *zoneWatch) warnFiltered(what string) {
	z.filteredOnce.Do(func() {
		z.m.log.Warn("consul's ACLs hide some results from glimpse's token; those are not served", zap.String("zone", z.name), zap.String("read", what))
	})
}

// fetch runs one read of a loop with q, within ctx (which carries the
// request's deadline), applies its result unless the loop has ended, and
// returns the read's metadata.
type fetch func(ctx context.Context, q Query) (Meta, error)

// loop runs fn as one of the zone's own blocking-query loops until the
// zone stops.
func (z *zoneWatch) loop(endpoint string, fn fetch) {
	z.loopPrio(z.ctx, endpoint, "", func() int { return prioZone }, nil, fn, nil)
}

// errPreempted ends a read cut short to give its slot to another loop.
var errPreempted = errors.New("read cut short for another loop's turn")

// loopPrio is loop with a priority that may change from read to read, t
// (if not nil) its place in the queue for a blocking read, and fail, if not
// nil, called with each failed read's error.
func (z *zoneWatch) loopPrio(ctx context.Context, endpoint, product string, prio func() int, t *ticket, fn fetch, fail func(error)) {
	m := z.m
	m.wg.Add(1)
	m.metrics.watchers.WithLabelValues(z.name).Inc()
	log := m.log.WithLazy(zap.String("zone", z.name), zap.String("watch", endpoint))
	if product != "" {
		log = log.WithLazy(zap.String("product", product))
	}
	zoneLoop := product == ""
	wait := m.cfg.Wait
	if !zoneLoop {
		wait = m.cfg.ProductWait
	}
	go func() {
		defer m.wg.Done()
		defer m.metrics.watchers.WithLabelValues(z.name).Dec()
		limiter := rate.NewLimiter(m.cfg.Rate, m.cfg.Burst)
		var index uint64
		// spread is set after a read from index 0: the blocking read
		// that follows waits a random share of the wait (spreadWait).
		spread := false
		failures := 0
		failing := false
		setFailing := func(f bool) {
			if zoneLoop && f != failing {
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
				return
			}
			readWait := wait
			if spread {
				readWait = spreadWait(wait)
			}
			meta, err := z.read(ctx, index, readWait, prio(), t, fn)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errPreempted) {
				continue // the same read again, at its next turn
			}
			spread = err == nil && index == 0
			m.metrics.request(z.name, endpoint, err)
			if err != nil {
				if fail != nil {
					fail(err)
				}
				msg := Explain(err)
				if zoneLoop {
					z.status.SetProblem(msg)
				}
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
				if !sleep(ctx, retryWait(m.cfg, failures, err)) {
					return
				}
				continue
			}
			if failures > 0 {
				log.Info("consul request recovered", zap.Int("failures", failures))
			}
			failures = 0
			if meta.Fresh {
				z.status.Contact(time.Now())
			}
			setFailing(!meta.Fresh)
			next, back := nextIndex(index, meta.Index)
			if back {
				log.Info("consul index went backwards; resyncing", zap.Uint64("was", index), zap.Uint64("now", meta.Index))
			}
			index = next
		}
	}()
}

// read runs one read of a loop within the budget. A first read (index 0)
// does not block and takes a first-read slot; a blocking read takes a
// blocking slot, and waits wait unless other loops wait for a slot.
func (z *zoneWatch) read(ctx context.Context, index uint64, wait time.Duration, prio int, t *ticket, fn fetch) (Meta, error) {
	m := z.m
	if index == 0 {
		select {
		case m.first <- struct{}{}:
		case <-ctx.Done():
			return Meta{}, ctx.Err()
		}
		defer func() { <-m.first }()
		rctx, cancel := context.WithTimeout(ctx, requestSlack)
		defer cancel()
		return fn(rctx, Query{Index: 0, Wait: wait})
	}
	h, err := m.slots.acquire(ctx, prio, t)
	if errors.Is(err, errKicked) {
		return z.kickedRead(ctx, index, fn)
	}
	if err != nil {
		return Meta{}, err
	}
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if !m.slots.begin(h, func() { cancel(errPreempted) }) {
		wait = m.cfg.RotateWait
	}
	// A request gets the wait, Consul's jitter of up to wait/16 and some
	// slack; a Consul that hangs longer counts as failing.
	tctx, tcancel := context.WithTimeout(rctx, wait+wait/16+requestSlack)
	defer tcancel()
	meta, err := fn(tctx, Query{Index: index, Wait: wait})
	if m.slots.release(h) && err != nil && ctx.Err() == nil {
		return Meta{}, errPreempted
	}
	return meta, err
}

// spreadWait is the wait of a loop's first blocking read after a read from
// index 0: a random share of wait, from wait/16 up. Loops that read from 0
// together (every pinned product's at start-up, every loop of a zone when
// Consul comes back) would otherwise all time out together at every wait
// from then on, Consul's own jitter (up to wait/16) parting them only
// slowly: a burst, once a wait, of re-reads of results that did not change,
// for which the Consul agent and glimpse take the host's CPUs for seconds
// at once (bench/RESULTS.md). Started at random phases, the re-reads come
// spread evenly over the wait. A loop's rate of requests is unchanged: one
// read in each run from index 0 is shortened.
func spreadWait(wait time.Duration) time.Duration {
	return wait/16 + rand.N(wait-wait/16)
}

// kickWait is how long a read brought forward by a kick waits for its
// product's index to move past the one it has: the server that answers may
// not have applied the change the kick came from yet.
const kickWait = 30 * time.Millisecond

// kickedRead is the read of a loop whose turn was brought forward: a short
// blocking read on a first-read slot, which returns as soon as the server
// has the change.
func (z *zoneWatch) kickedRead(ctx context.Context, index uint64, fn fetch) (Meta, error) {
	m := z.m
	select {
	case m.first <- struct{}{}:
	case <-ctx.Done():
		return Meta{}, ctx.Err()
	}
	defer func() { <-m.first }()
	rctx, cancel := context.WithTimeout(ctx, kickWait+kickWait/16+requestSlack)
	defer cancel()
	return fn(rctx, Query{Index: index, Wait: kickWait})
}

// detect runs while loops take turns for blocking reads (see slots): it
// keeps one blocking read of the versions of the zone's checks in state
// health (Warning or Critical; startZone runs one detect for each), and
// brings forward the turn of each product in use whose checks entered,
// left or changed in that state. So a health change reaches a product read
// beyond the budget within a read's round trip rather than at its turn.
// What changes no check state (an instance's port, tags or meta, a passing
// instance deregistered, a node's own checks) still waits for the
// product's turn. Consul reads a state's checks through an index and wakes
// the read only when a check enters, leaves or changes in that state, so
// the read costs it little; it runs only while loops take turns all the
// same.
func (z *zoneWatch) detect(health cache.Health) {
	m := z.m
	defer m.wg.Done()
	// One token bucket for every stretch of turns: queues that come and go
	// do not make it read more often. It is detectRate times a loop's: this
	// read stands in for the reads of the many products waiting, and a
	// loop's bucket alone (20 a second by default) would hold a change for
	// up to 50 ms once a busy zone has drained it. A read costs Consul its
	// unhealthy checks, and changes that come faster than the bucket are
	// read together.
	limiter := rate.NewLimiter(m.cfg.Rate*detectRate, m.cfg.Burst*detectRate)
	for {
		select {
		case <-m.slots.rotating():
		case <-z.ctx.Done():
			return
		}
		// Loops of other zones may take turns while this one has none:
		// it then waits for a loop of its own, not for the next turn.
		started := z.loopsChanged()
		if !z.detectWhileRotating(health, limiter) {
			select {
			case <-started:
			case <-z.ctx.Done():
				return
			}
		}
	}
}

// detectRate is how many times a product loop's rate detect may read.
const detectRate = 5

// maxFilterNames is the most products a read of check versions names in
// its filter; past that it reads every product's, and the ones not in use
// are ignored.
const maxFilterNames = 1000

// detectWhileRotating is detect's loop while loops wait for a slot. It
// reports false when the zone has no product loop to bring forward.
func (z *zoneWatch) detectWhileRotating(health cache.Health, limiter *rate.Limiter) bool {
	m := z.m
	endpoint := "state/" + health.String()
	log := m.log.WithLazy(zap.String("zone", z.name), zap.String("watch", endpoint))
	loops := z.loops.Load()
	names := z.watchedNames()
	if len(names) == 0 {
		return false // before taking a slot, which may cut a read short
	}
	// The read keeps its slot while loops take turns: between two reads
	// the slot would go to a waiting product, and the next read wait for
	// that product's turn to end.
	h, err := m.slots.acquire(z.ctx, prioZone, nil)
	if err != nil {
		return true
	}
	defer m.slots.release(h)
	m.slots.begin(h, nil)
	var (
		index uint64
		// base is the last read's versions: the products with checks in
		// that state (nil: compare with the products' own indexes only).
		base     map[string]CheckVersion
		failures int
	)
	// names are the products with a loop, as of version loops.
	for {
		if _, waiting, _ := m.slots.stats(); waiting == 0 {
			return true
		}
		if v := z.loops.Load(); v != loops {
			// A product that started since the last read may have
			// changed since its own read, unseen by a filter without it:
			// this read does not block, and compares with the products'
			// own indexes.
			names, loops = z.watchedNames(), v
			index, base = 0, nil
		}
		if len(names) == 0 {
			return false
		}
		filter := names
		if len(filter) > maxFilterNames {
			filter = nil
		}
		if err := limiter.Wait(z.ctx); err != nil {
			return true
		}
		meta, got, err := z.readChecks(health, filter, index)
		if z.ctx.Err() != nil {
			return true
		}
		m.metrics.request(z.name, endpoint, err)
		if err != nil {
			if failures == 0 {
				log.Warn("consul request failed; products read beyond the budget see changes at their turn", zap.String("error", Explain(err)))
			}
			failures++
			index, base = 0, nil
			if !sleep(z.ctx, retryWait(m.cfg, failures, err)) {
				return true
			}
			continue
		}
		failures = 0
		// Only what the read returns, or the last one did, can have
		// changed: the cost follows the unhealthy checks, not the
		// products in use.
		for name, v := range got {
			old, known := base[name]
			if !known || v != old {
				z.kickIfChanged(name, v, old.Count, base != nil)
			}
		}
		for name, old := range base {
			if _, still := got[name]; !still {
				z.kickIfChanged(name, CheckVersion{}, old.Count, true) // its last such check left the state
			}
		}
		base = got
		var back bool
		if index, back = nextIndex(index, meta.Index); back {
			base = nil
		}
	}
}

// kickIfChanged brings forward the read of product name, if it has a
// loop, when its checks in a state (now at v) changed after the product's
// last result, or their number changed (from count, when compared is
// true; a product first seen by a read has no count to compare, and a
// removal there waits for its turn).
func (z *zoneWatch) kickIfChanged(name string, v CheckVersion, count int, compared bool) {
	p := z.products.get(name)
	if p == nil || !p.running.Load() {
		return
	}
	if seen := p.index.Load(); seen != 0 && (v.Index > seen || compared && v.Count != count) {
		z.m.slots.kick(&p.ticket)
	}
}

// readChecks is detect's read.
func (z *zoneWatch) readChecks(health cache.Health, names []string, index uint64) (Meta, map[string]CheckVersion, error) {
	wait := z.m.cfg.Wait
	ctx, cancel := context.WithTimeout(z.ctx, wait+wait/16+requestSlack)
	defer cancel()
	got, meta, err := z.m.backend.Checks(ctx, z.name, health, names, Query{Index: index, Wait: wait})
	return meta, got, err
}

// watchedNames returns the names of the zone's products with a loop,
// sorted.
func (z *zoneWatch) watchedNames() []string {
	var names []string
	for name, p := range z.products.all() {
		if p.running.Load() {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// fetchList reads the zone's product list and applies it.
func (z *zoneWatch) fetchList(ctx context.Context, q Query) (Meta, error) {
	names, meta, err := z.m.backend.Products(ctx, z.name, q)
	if err != nil || backwards(q, meta) {
		return meta, err
	}
	z.applyList(names, meta, false)
	return meta, nil
}

// refreshOnce is refreshList's read.
func (z *zoneWatch) refreshOnce(call *refreshCall) {
	defer close(call.done)
	m := z.m
	select {
	case m.first <- struct{}{}:
	case <-z.ctx.Done():
		return
	}
	defer func() { <-m.first }()
	ctx, cancel := context.WithTimeout(z.ctx, requestSlack)
	defer cancel()
	names, meta, err := m.backend.Products(ctx, z.name, Query{})
	m.metrics.request(z.name, "services", err)
	z.mu.Lock()
	z.refreshing = nil
	z.mu.Unlock()
	if err != nil {
		return
	}
	call.ok = z.applyList(names, meta, true)
}

// applyList makes the watched products follow the zone's product list:
// products gone from it stop, pinned and wanted ones it has start. A list
// read by refresh older than the one applied last is ignored (the loop's
// newer read crossed it). It reports whether the list was applied.
func (z *zoneWatch) applyList(names []string, meta Meta, refresh bool) bool {
	if meta.Filtered {
		z.warnFiltered("catalog services")
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.ctx.Err() != nil { // the zone was stopped meanwhile
		return false
	}
	if _, have := z.listed(); refresh && have && meta.Index < z.listIndex {
		return false
	}
	z.listIndex = meta.Index
	z.m.cache.SetKnown(z.name, names)
	listed, _ := z.listed()
	var gone, pinned []string
	for name, p := range z.products.all() {
		if _, ok := listed[name]; ok {
			continue
		}
		z.stopProduct(p, "gone from consul")
		if p.use.refs.Load() <= 0 {
			gone = append(gone, name)
		}
	}
	for _, name := range names {
		if z.products.get(name) == nil && z.m.pinned(z.name, name) {
			pinned = append(pinned, name)
		}
	}
	if len(gone) > 0 || len(pinned) > 0 {
		for _, name := range gone {
			z.products.del(name)
		}
		for _, name := range pinned {
			// Never read yet: it ranks below the products in use.
			z.products.put(name, &productWatch{name: name, pinned: true})
		}
	}
	for name, p := range z.products.all() {
		if _, ok := listed[name]; ok && p.cancel == nil {
			z.startProduct(p)
		}
	}
	z.checkSynced()
	return true
}

// fetchProduct reads the health of every instance of a product. A result
// that arrives after the product's loop (loop, its context) was stopped is
// dropped: the product may be gone from the cache already.
func (z *zoneWatch) fetchProduct(ctx, loop context.Context, p *productWatch, q Query) (Meta, error) {
	in, ignored, meta, err := z.m.backend.Product(ctx, z.name, p.name, q)
	if err != nil || backwards(q, meta) {
		return meta, err
	}
	if meta.Filtered {
		z.warnFiltered("health of " + p.name)
	}
	p.index.Store(meta.Index)
	z.qmu.Lock()
	if loop.Err() != nil { // stopped under z.qmu, so this check is exact
		z.qmu.Unlock()
		return meta, nil
	}
	z.queued = append(z.queued, cache.ProductUpdate{Product: p.name, Instances: in, Ignored: ignored})
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
		if w := z.products.get(u.Product); w != nil {
			z.settle(w)
			z.m.metrics.setFailing(z.name, w, "")
		}
	}
	z.checkSynced()
	return meta, nil
}

// productFailed records why a product's read failed: its own names answer
// SERVFAIL until it has a state, and /v1/zones and the metrics say why. It
// never touches the rest of the zone.
func (z *zoneWatch) productFailed(loop context.Context, p *productWatch, err error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if loop.Err() != nil { // stopped under z.mu, so this check is exact
		return
	}
	z.m.cache.SetProblem(z.name, p.name, Explain(err))
	z.m.metrics.setFailing(z.name, p, cause(err))
	z.settle(p)
	z.checkSynced()
}

// fetchServers reads the zone's Consul servers.
func (z *zoneWatch) fetchServers(ctx context.Context, q Query) (Meta, error) {
	servers, meta, err := z.m.backend.Servers(ctx, z.name, q)
	if err != nil || backwards(q, meta) {
		return meta, err
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	if z.ctx.Err() != nil { // the zone was stopped meanwhile
		return meta, nil
	}
	z.m.cache.SetServers(z.name, servers)
	z.haveServers = true
	z.checkSynced()
	return meta, nil
}

// checkSynced marks the zone synced once its list and servers were read,
// and ready once its pinned products settled too. Called with z.mu held.
func (z *zoneWatch) checkSynced() {
	listed, haveList := z.listed()
	if z.ready || !haveList || !z.haveServers {
		return
	}
	pending := z.unsettledPins
	ready := pending == 0
	if z.synced && !ready {
		return
	}
	first := !z.synced
	z.synced, z.ready = true, ready
	z.m.cache.SetSynced(z.name, ready)
	if first {
		z.m.log.Info("zone synced", zap.String("zone", z.name), zap.Int("products", len(listed)),
			zap.Int("pinned_pending", pending), zap.Duration("took", time.Since(z.started)))
	}
	if ready {
		pinned, instances := 0, 0
		if zone := z.m.cache.Zone(z.name); zone != nil {
			for _, p := range zone.Products.All() {
				instances += p.Instances
			}
		}
		for _, p := range z.products.all() {
			if p.pinned {
				pinned++
			}
		}
		if pinned > 0 || z.local {
			z.m.log.Info("zone ready", zap.String("zone", z.name), zap.Int("pinned", pinned),
				zap.Int("instances", instances), zap.Duration("took", time.Since(z.started)))
		}
		if z.local && pinned > 0 {
			// The pinned products' first reads decoded much of the
			// catalog: hand the garbage of that back to the system now
			// rather than over many minutes, so that the agent's footprint
			// is its steady state from the start.
			go debug.FreeOSMemory()
		}
	}
}

// watchedProducts returns the products of a zone being watched, sorted.
func (m *Manager) watchedProducts(zone string) []string {
	z := m.zones.load()[zone]
	if z == nil {
		return nil
	}
	z.mu.Lock()
	defer z.mu.Unlock()
	var out []string
	for name, p := range z.products.all() {
		if p.cancel != nil {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
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

// retryWait is how long a loop waits after its failures-th failure in a
// row, err.
func retryWait(cfg Config, failures int, err error) time.Duration {
	if Throttled(err) {
		failures += 4 // Consul is out of connections for this host: no hurry
	}
	return backoff(cfg, failures)
}

// backwards reports whether a blocking read's result has an index below
// the one it waited past. Such a result is not applied: it does not follow
// from the state read before. In the bench, a Consul agent starved of CPU
// answered 40 products' blocking health reads at index 1 once it came
// back, and until their next reads names of those products that had
// instances were answered NXDOMAIN. The loop reads again at once from
// index 0 (nextIndex), and the last known state stands until then.
func backwards(q Query, meta Meta) bool { return q.Index > 0 && meta.Index < q.Index }

// nextIndex is the index of a loop's next blocking read after a read at
// index returned got, and whether got went backwards (a restored or
// rebuilt Consul), which starts over with a non-blocking read.
func nextIndex(index, got uint64) (next uint64, back bool) {
	switch {
	case got < index:
		return 0, true
	case got == 0:
		return 1, false // never loop on index 0: it does not block
	}
	return got, false
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
