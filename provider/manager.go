package provider

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/rugby110/glimpse/api"
)

// ErrConsul wraps the errors of a Put or Delete whose desired state was
// recorded but that the Consul agent did not (fully) accept; the manager
// keeps applying the recorded state in the background until it holds.
var ErrConsul = errors.New("consul agent did not accept the registrations")

// ErrNotFound is returned for a provider with no recorded state.
var ErrNotFound = errors.New("no such provider")

// ErrNotOwner is returned by Put and Delete for a provider another
// identity wrote: only that identity, or root, may change it.
var ErrNotOwner = errors.New("provider belongs to another writer")

// ErrFileManaged is returned by Put and Delete for a provider whose state
// comes from a file in the providers directory: that file is the one place
// to change it.
var ErrFileManaged = errors.New("provider is managed by a file in the providers directory")

// DefaultReconcileEvery is how often Run re-applies every recorded provider
// when ManagerOptions.ReconcileEvery is zero.
const DefaultReconcileEvery = 30 * time.Second

// DefaultProbeEvery is how often Run checks the Consul agent for a restart
// when ManagerOptions.ProbeEvery is zero.
const DefaultProbeEvery = 2 * time.Second

// maxRetryBackoff caps the back-off between background retries.
const maxRetryBackoff = 3 * time.Second

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// ReconcileEvery is how often Run re-applies every recorded provider.
	ReconcileEvery time.Duration
	// ProbeEvery is how often Run lists the Consul agent's registrations to
	// notice a restart of the agent (it was unreachable, or registrations
	// of a recorded provider vanished or appeared) and reconcile at once.
	ProbeEvery time.Duration
	// Registerer, if not nil, receives the manager's metrics.
	Registerer prometheus.Registerer
	Log        *zap.Logger
}

// Manager records providers' desired state durably (Store) and keeps the
// local Consul agent's registrations equal to it (Syncer). Operations on one
// provider are serialised: the recorded state and the registrations always
// follow the last accepted request, never a mix.
type Manager struct {
	store  *Store
	syncer *Syncer
	every  time.Duration
	probe  time.Duration
	log    *zap.Logger

	syncs    *prometheus.CounterVec
	repaired prometheus.Counter
	desired  *prometheus.GaugeVec
	restarts prometheus.Counter

	mu        sync.Mutex
	providers map[string]*providerState

	// ctx bounds background retries; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type providerState struct {
	mu sync.Mutex // serialises Put, Delete, retries and reconciles

	// Guarded by Manager.mu:
	retrying bool
	again    bool   // a failure while retrying: go on even if the loop's last attempt held
	gen      uint64 // applications that held; the probe ignores a provider whose gen moved
	applying int    // applications under way: the probe ignores the provider meanwhile
	// applied holds the service IDs of the last state that held in the
	// Consul agent; nil until one did.
	applied map[string]bool
	// fileManaged is set while <name>.json exists in the providers
	// directory; fileErr is what is wrong with it, if anything.
	fileManaged bool
	fileErr     string
}

// NewManager returns a manager over store and syncer.
func NewManager(store *Store, syncer *Syncer, opts ManagerOptions) *Manager {
	if opts.ReconcileEvery <= 0 {
		opts.ReconcileEvery = DefaultReconcileEvery
	}
	if opts.ProbeEvery <= 0 {
		opts.ProbeEvery = DefaultProbeEvery
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		store: store, syncer: syncer, every: opts.ReconcileEvery, probe: opts.ProbeEvery, log: opts.Log,
		syncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "glimpse_provider_syncs_total",
			Help: "Applications of a provider's recorded state to the Consul agent, by result (ok or error).",
		}, []string{"result"}),
		repaired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_provider_drift_repaired_total",
			Help: "Periodic or retried applications that had to register or deregister something in the Consul agent.",
		}),
		desired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "glimpse_provider_desired_instances",
			Help: "Instances in a provider's recorded state.",
		}, []string{"provider"}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "glimpse_provider_consul_restarts_total",
			Help: "Times the Consul agent was seen back after being unreachable, or with a recorded provider's registrations changed behind glimpse's back; each triggers a reconcile.",
		}),
		providers: map[string]*providerState{},
		ctx:       ctx,
		cancel:    cancel,
	}
	m.syncs.WithLabelValues("ok")
	m.syncs.WithLabelValues("error")
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(m.syncs, m.repaired, m.desired, m.restarts)
	}
	return m
}

func (m *Manager) state(name string) *providerState {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.providers[name]
	if p == nil {
		p = &providerState{}
		m.providers[name] = p
	}
	return p
}

// Put validates b, records it as name's desired state, then applies it. An
// error wrapping ErrConsul means the state is recorded but the Consul agent
// failed; it is retried in the background until it holds. A provider whose
// state comes from the providers directory is ErrFileManaged.
// Only who wrote the provider's recorded state, or root, may replace it
// (ErrNotOwner).
func (m *Manager) Put(ctx context.Context, name string, b *Body, who Identity) error {
	return m.put(ctx, name, b, SourceHTTP, who)
}

func (m *Manager) put(ctx context.Context, name string, b *Body, source string, who Identity) error {
	name, err := CheckName(name)
	if err != nil {
		return err
	}
	nb := &Body{Instances: slices.Clone(b.Instances)}
	if nb.Instances == nil {
		nb.Instances = []Instance{}
	}
	Normalize(nb)
	if err := Validate(nb); err != nil {
		return err
	}
	p := m.state(name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := m.own(p, name, source, true, who); err != nil {
		return err
	}
	if _, err := m.store.LoadRecord(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		aside, serr := m.store.SetAside(name)
		if serr != nil {
			return serr
		}
		m.log.Warn("provider: replacing a record that cannot be read; it is kept aside",
			zap.String("provider", name), zap.String("kept_as", aside), zap.Error(err))
	}
	if err := m.store.SaveRecord(name, Record{Body: nb, Source: source, Owner: who.Owner}); err != nil {
		return err
	}
	m.desired.WithLabelValues(name).Set(float64(len(nb.Instances)))
	_, err = m.applyOrRetry(ctx, name, p, Record{Body: nb}, "state")
	return err
}

// own checks, with p.mu held, that source may change the provider: HTTP may
// not while its file exists, and only the identity that wrote its recorded
// state (or root) may. A change from the file (exists: it is there or
// gone) makes the provider file-managed or not, in the same critical
// section as the change itself, so that no HTTP request slips in between.
func (m *Manager) own(p *providerState, name, source string, exists bool, who Identity) error {
	if source != SourceHTTP {
		m.markFile(p, exists, "")
		return nil
	}
	m.mu.Lock()
	managed := p.fileManaged
	m.mu.Unlock()
	if managed {
		return fmt.Errorf("%w: %s", ErrFileManaged, name)
	}
	if who.Root {
		return nil
	}
	r, err := m.store.LoadRecord(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("%w: %s: its record cannot be read, so whose it is is unknown; only root may change or delete it (%v)", ErrNotOwner, name, err)
	case r.Deleted || r.Source != SourceHTTP:
		return nil // a tombstone, or a file's leftover: anyone may take the name
	case r.Owner == "":
		return fmt.Errorf("%w: %s was recorded before owners were kept; only root may change it", ErrNotOwner, name)
	case r.Owner != who.Owner:
		return fmt.Errorf("%w: %s belongs to %s", ErrNotOwner, name, r.Owner)
	}
	return nil
}

// applyOrRetry is applyRecord; when the Consul agent fails, it schedules a
// retry and returns an error wrapping ErrConsul that says what (the state or
// the deletion) is recorded and will be applied again.
func (m *Manager) applyOrRetry(ctx context.Context, name string, p *providerState, r Record, what string) (int, error) {
	changed, err := m.applyRecord(ctx, name, p, r)
	if err != nil {
		m.retry(name)
		return changed, fmt.Errorf("%w: %v (the %s is recorded and will be applied again)", ErrConsul, err, what)
	}
	return changed, nil
}

// applyRecord makes the Consul agent match r, with p.mu held, counting the
// sync; it returns how many registrations it changed. Once a tombstone
// holds, it is removed.
func (m *Manager) applyRecord(ctx context.Context, name string, p *providerState, r Record) (int, error) {
	gone := r.Deleted || r.Body == nil
	b := r.Body
	if gone {
		b = &Body{Instances: []Instance{}}
	}
	// Registrations change one by one while this runs: what the probe
	// lists meanwhile is no drift.
	m.mu.Lock()
	p.applying++
	m.mu.Unlock()
	// The manager's end (the agent's shutdown) stops an application under
	// way: the state is recorded, and the next start applies it.
	actx, stop := context.WithCancel(ctx)
	defer stop()
	unhook := context.AfterFunc(m.ctx, stop)
	defer unhook()
	changed, ids, err := m.syncer.reconcile(actx, name, b)
	m.mu.Lock()
	p.applying--
	m.mu.Unlock()
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
		return changed, err
	}
	m.syncs.WithLabelValues("ok").Inc()
	if r.Deleted {
		if err := m.store.Delete(name); err != nil {
			return changed, err
		}
	}
	// What the probe expects to find; nothing once the provider is gone.
	applied := ids
	if gone {
		applied = nil
	}
	m.mu.Lock()
	p.applied = applied
	p.gen++
	m.mu.Unlock()
	return changed, nil
}

// Get returns name's recorded state, or ErrNotFound.
func (m *Manager) Get(name string) (*Body, error) {
	name, err := CheckName(name)
	if err != nil {
		return nil, err
	}
	b, err := m.store.Load(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return b, err
}

// Delete forgets name's recorded state and deregisters its instances. It
// returns ErrNotFound if nothing was recorded and nothing was registered,
// and an error wrapping ErrConsul if the deregistration failed: a tombstone
// stays recorded and the deregistration is retried, in the background and
// after a restart, until it holds. A provider whose state comes from the
// providers directory is ErrFileManaged.
// Only who wrote the provider's recorded state, or root, may delete it
// (ErrNotOwner).
func (m *Manager) Delete(ctx context.Context, name string, who Identity) error {
	return m.delete(ctx, name, SourceHTTP, who)
}

func (m *Manager) delete(ctx context.Context, name, source string, who Identity) error {
	name, err := CheckName(name)
	if err != nil {
		return err
	}
	p := m.state(name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := m.own(p, name, source, false, who); err != nil {
		return err
	}
	r, err := m.store.LoadRecord(name)
	recorded := err == nil && !r.Deleted
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if source != SourceHTTP {
			return err
		}
		// Only root gets here (see own): the record is set aside for
		// inspection, and the provider's registrations are removed as for
		// any other.
		aside, serr := m.store.SetAside(name)
		if serr != nil {
			return serr
		}
		m.log.Warn("provider: deleting a provider whose record cannot be read; the record is kept aside",
			zap.String("provider", name), zap.String("kept_as", aside), zap.Error(err))
		recorded = true
	}
	if source == SourceFile {
		if !recorded {
			return fmt.Errorf("%w: %s", ErrNotFound, name)
		}
		if r.Source != SourceFile {
			return nil // the provider moved to HTTP since its file went
		}
	}
	// A tombstone even without a record: registrations carrying the tag
	// (from a lost data directory) are removed too, and retried.
	if err := m.store.SaveRecord(name, Record{Source: source, Deleted: true, Owner: who.Owner}); err != nil {
		return err
	}
	m.desired.DeleteLabelValues(name)
	changed, err := m.applyOrRetry(ctx, name, p, Record{Deleted: true}, "deletion")
	if err != nil {
		return err
	}
	if !recorded && changed == 0 {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return nil
}

// retry applies name's recorded state in the background, with jittered
// back-off, until it holds or the manager is closed. One retry loop runs per
// provider at a time.
func (m *Manager) retry(name string) {
	m.mu.Lock()
	p := m.providers[name]
	if p == nil || m.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	if p.retrying {
		p.again = true
		m.mu.Unlock()
		return
	}
	p.retrying = true
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer func() { m.mu.Lock(); p.retrying, p.again = false, false; m.mu.Unlock() }()
		backoff := 100 * time.Millisecond
		failures, lastErr := 0, ""
		for {
			d := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(d):
			}
			backoff = min(2*backoff, maxRetryBackoff)
			m.mu.Lock()
			p.again = false
			m.mu.Unlock()
			ok, err := m.reconcileOne(m.ctx, name, p)
			if ok {
				m.mu.Lock()
				again := p.again
				if !again {
					p.retrying = false
				}
				m.mu.Unlock()
				if !again {
					if failures > 0 {
						m.log.Info("provider: the recorded state holds again", zap.String("provider", name), zap.Int("failed_attempts", failures))
					}
					return
				}
				continue
			}
			// Log the first failure and each new kind of failure, not
			// every attempt: a Consul agent that stays down would
			// otherwise log every few seconds on every host.
			failures++
			if msg := err.Error(); msg != lastErr {
				lastErr = msg
				m.log.Warn("provider: applying the recorded state failed; retrying until it holds", zap.String("provider", name), zap.Int("attempt", failures), zap.Error(err))
			}
		}
	}()
}

// reconcileOne applies name's record, counting drift repaired. It does not
// schedule retries. With no record at all there is nothing to do.
func (m *Manager) reconcileOne(ctx context.Context, name string, p *providerState) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, err := m.store.LoadRecord(name)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
		return false, err
	}
	if !r.Deleted {
		m.desired.WithLabelValues(name).Set(float64(len(r.Body.Instances)))
	}
	changed, err := m.applyRecord(ctx, name, p, r)
	if err != nil {
		return false, err
	}
	if changed > 0 {
		m.repaired.Inc()
	}
	return true, nil
}

// Reconcile applies every recorded provider's state once.
func (m *Manager) Reconcile(ctx context.Context) {
	names, err := m.store.List()
	if err != nil {
		m.log.Error("provider: list recorded providers", zap.Error(err))
		return
	}
	for _, name := range names {
		if ctx.Err() != nil {
			return
		}
		m.reconcileOrRetry(ctx, name)
	}
}

// reconcileOrRetry applies name's recorded state; when that fails, it logs
// why and leaves the provider to the background retries.
func (m *Manager) reconcileOrRetry(ctx context.Context, name string) {
	if ok, err := m.reconcileOne(ctx, name, m.state(name)); !ok {
		m.log.Warn("provider: applying the recorded state failed", zap.String("provider", name), zap.Error(err))
		m.retry(name)
	}
}

// Run reconciles at start and every ReconcileEvery until ctx ends, then
// stops the background retries. Every ProbeEvery it lists the Consul agent's
// registrations: when the agent answers again after failing, or a recorded
// provider's registrations are not the ones last applied (an agent restarted
// with an empty state, a registration removed or added by hand), it
// reconciles at once rather than at the next period.
func (m *Manager) Run(ctx context.Context) {
	defer m.Close()
	full := time.NewTicker(m.every)
	defer full.Stop()
	probe := time.NewTicker(m.probe)
	defer probe.Stop()
	m.Reconcile(ctx)
	reachable := true
	for {
		select {
		case <-ctx.Done():
			return
		case <-full.C:
			m.Reconcile(ctx)
		case <-probe.C:
			gens := m.generations()
			owned, err := m.syncer.Owned(ctx)
			if err != nil {
				if reachable && ctx.Err() == nil {
					m.log.Warn("provider: the Consul agent does not answer; its registrations will be checked when it does", zap.Error(err))
				}
				reachable = false
				continue
			}
			if !reachable {
				reachable = true
				m.restarts.Inc()
				m.log.Info("provider: the Consul agent answers again; reconciling every provider")
				m.Reconcile(ctx)
				continue
			}
			for _, name := range m.drifted(owned, gens) {
				m.restarts.Inc()
				m.log.Info("provider: registrations changed in the Consul agent; reconciling", zap.String("provider", name))
				m.reconcileOrRetry(ctx, name)
			}
		}
	}
}

// generations returns each provider's count of applications that held.
func (m *Manager) generations() map[string]uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	gens := make(map[string]uint64, len(m.providers))
	for name, p := range m.providers {
		gens[name] = p.gen
	}
	return gens
}

// drifted returns the providers whose registrations in owned (service IDs
// by provider, from Syncer.Owned) differ from those last applied. Providers
// applied since gens was taken (before owned was listed) are skipped: owned
// may show them midway.
func (m *Manager) drifted(owned map[string][]string, gens map[string]uint64) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for name, p := range m.providers {
		if g, ok := gens[name]; p.applied == nil || p.retrying || p.applying > 0 || !ok || g != p.gen {
			continue
		}
		ids := owned[name]
		same := len(ids) == len(p.applied)
		for _, id := range ids {
			same = same && p.applied[id]
		}
		if !same {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// setFile records whether name's file exists in the providers directory and
// what is wrong with it ("" if nothing).
func (m *Manager) setFile(name string, exists bool, problem string) {
	m.markFile(m.state(name), exists, problem)
}

// markFile records on p whether its file exists and what is wrong with it.
func (m *Manager) markFile(p *providerState, exists bool, problem string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p.fileManaged, p.fileErr = exists, problem
}

// Summary describes one provider for GET /v1/providers
// (api.ProviderSummary).
type Summary = api.ProviderSummary

// List describes every recorded provider, and every provider whose file in
// the providers directory is malformed, sorted by name.
func (m *Manager) List() ([]Summary, error) {
	names, err := m.store.List()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	fileErrs := map[string]string{}
	for name, p := range m.providers {
		if p.fileManaged && p.fileErr != "" {
			fileErrs[name] = p.fileErr
		}
	}
	m.mu.Unlock()
	out := make([]Summary, 0, len(names))
	for _, name := range names {
		s := Summary{Provider: name, FileError: fileErrs[name]}
		delete(fileErrs, name)
		r, err := m.store.LoadRecord(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // deleted since the listing
		case err != nil:
			s.Error = err.Error()
		default:
			s.Source, s.Deleting = r.Source, r.Deleted
			if !r.Deleted {
				s.Instances = len(r.Body.Instances)
			}
		}
		out = append(out, s)
	}
	for name, problem := range fileErrs {
		out = append(out, Summary{Provider: name, Source: SourceFile, FileError: problem})
	}
	slices.SortFunc(out, func(a, b Summary) int { return strings.Compare(a.Provider, b.Provider) })
	return out, nil
}

// Stop ends the applications under way and the background retries without
// waiting: a write in progress returns, its state recorded for the next
// start. Close waits.
func (m *Manager) Stop() {
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
}

// Close stops background retries and applications under way, and waits
// for the retries.
func (m *Manager) Close() {
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
}
