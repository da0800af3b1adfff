package provider

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// ErrConsul wraps the errors of a Put or Delete whose desired state was
// recorded but that the Consul agent did not (fully) accept; the manager
// keeps applying the recorded state in the background until it holds.
var ErrConsul = errors.New("consul agent did not accept the registrations")

// ErrNotFound is returned for a provider with no recorded state.
var ErrNotFound = errors.New("no such provider")

// DefaultReconcileEvery is how often Run re-applies every recorded provider
// when ManagerOptions.ReconcileEvery is zero.
const DefaultReconcileEvery = 30 * time.Second

// maxRetryBackoff caps the back-off between background retries.
const maxRetryBackoff = 3 * time.Second

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// ReconcileEvery is how often Run re-applies every recorded provider.
	ReconcileEvery time.Duration
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
	log    *zap.Logger

	syncs    *prometheus.CounterVec
	repaired prometheus.Counter
	desired  *prometheus.GaugeVec

	mu        sync.Mutex
	providers map[string]*providerState

	// ctx bounds background retries; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type providerState struct {
	mu       sync.Mutex // serialises Put, Delete, retries and reconciles
	retrying bool       // guarded by Manager.mu
}

// NewManager returns a manager over store and syncer.
func NewManager(store *Store, syncer *Syncer, opts ManagerOptions) *Manager {
	if opts.ReconcileEvery <= 0 {
		opts.ReconcileEvery = DefaultReconcileEvery
	}
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		store: store, syncer: syncer, every: opts.ReconcileEvery, log: opts.Log,
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
		providers: map[string]*providerState{},
		ctx:       ctx,
		cancel:    cancel,
	}
	m.syncs.WithLabelValues("ok")
	m.syncs.WithLabelValues("error")
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(m.syncs, m.repaired, m.desired)
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
// failed; it is retried in the background until it holds.
func (m *Manager) Put(ctx context.Context, name string, b *Body) error {
	name, err := CheckName(name)
	if err != nil {
		return err
	}
	nb := &Body{Instances: slices.Clone(b.Instances)}
	if nb.Instances == nil {
		nb.Instances = []Instance{}
	}
	nb.Normalize()
	if err := nb.Validate(); err != nil {
		return err
	}
	p := m.state(name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := m.store.Save(name, nb); err != nil {
		return err
	}
	m.desired.WithLabelValues(name).Set(float64(len(nb.Instances)))
	return m.apply(ctx, name, nb)
}

// apply applies b with p.mu held; on failure it schedules a retry.
func (m *Manager) apply(ctx context.Context, name string, b *Body) error {
	if err := m.syncer.Apply(ctx, name, b); err != nil {
		m.syncs.WithLabelValues("error").Inc()
		m.retry(name)
		return fmt.Errorf("%w: %v (the state is recorded and will be applied again)", ErrConsul, err)
	}
	m.syncs.WithLabelValues("ok").Inc()
	return nil
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
// returns ErrNotFound if nothing was recorded, an error wrapping ErrConsul
// if the deregistration failed (it is retried in the background).
func (m *Manager) Delete(ctx context.Context, name string) error {
	name, err := CheckName(name)
	if err != nil {
		return err
	}
	p := m.state(name)
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := m.store.Load(name); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err := m.store.Delete(name); err != nil {
		return err
	}
	m.desired.DeleteLabelValues(name)
	return m.apply(ctx, name, &Body{Instances: []Instance{}})
}

// recorded returns name's recorded state; no record is the empty state.
func (m *Manager) recorded(name string) (*Body, error) {
	b, err := m.store.Load(name)
	if errors.Is(err, fs.ErrNotExist) {
		return &Body{Instances: []Instance{}}, nil
	}
	return b, err
}

// retry applies name's recorded state in the background, with jittered
// back-off, until it holds or the manager is closed. One retry loop runs per
// provider at a time.
func (m *Manager) retry(name string) {
	m.mu.Lock()
	p := m.providers[name]
	if p == nil || p.retrying || m.ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	p.retrying = true
	m.wg.Add(1)
	m.mu.Unlock()
	go func() {
		defer m.wg.Done()
		defer func() { m.mu.Lock(); p.retrying = false; m.mu.Unlock() }()
		backoff := 100 * time.Millisecond
		for {
			d := backoff/2 + rand.N(backoff/2+1)
			select {
			case <-m.ctx.Done():
				return
			case <-time.After(d):
			}
			backoff = min(2*backoff, maxRetryBackoff)
			ok, err := m.reconcileOne(m.ctx, name, p)
			if ok {
				return
			}
			m.log.Warn("provider: applying the recorded state failed; retrying", zap.String("provider", name), zap.Error(err))
		}
	}()
}

// reconcileOne applies name's recorded state, counting drift repaired.
// It does not schedule retries.
func (m *Manager) reconcileOne(ctx context.Context, name string, p *providerState) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := m.recorded(name)
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
		return false, err
	}
	changed, err := m.syncer.Reconcile(ctx, name, b)
	if err != nil {
		m.syncs.WithLabelValues("error").Inc()
		return false, err
	}
	m.syncs.WithLabelValues("ok").Inc()
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
		if b, err := m.store.Load(name); err == nil {
			m.desired.WithLabelValues(name).Set(float64(len(b.Instances)))
		}
		p := m.state(name)
		if ok, err := m.reconcileOne(ctx, name, p); !ok {
			m.log.Warn("provider: applying the recorded state failed", zap.String("provider", name), zap.Error(err))
			m.retry(name)
		}
	}
}

// Run reconciles at start and every ReconcileEvery until ctx ends, then
// stops the background retries.
func (m *Manager) Run(ctx context.Context) {
	defer m.Close()
	t := time.NewTicker(m.every)
	defer t.Stop()
	for {
		m.Reconcile(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close stops background retries and waits for them.
func (m *Manager) Close() {
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
}
