package watch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rugby110/glimpse/cache"
)

// fakeBackend is an in-memory Backend with Consul's blocking semantics: a
// read with an index waits until its result's index moves past it, the
// wait ends or its context does. It counts the blocking reads in flight
// (a read brought forward by a kick, which waits kickWait on a
// first-read slot, is counted apart).
type fakeBackend struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	index   uint64
	// products holds each product's instances and the index it last
	// changed at.
	products  map[string][]cache.Instance
	prodIndex map[string]uint64
	listIndex uint64
	failing   map[string]error
	// frozen makes blocking list reads ignore changes (a list loop that
	// has not caught up yet).
	frozen bool

	// reset makes the next blocking read of a product (or of the list,
	// "") answer nothing at index 1, as a view that went back would;
	// afterReset, if set, is called at the read from index 0 that follows.
	reset      map[string]bool
	afterReset func(product string)

	blocking, maxBlocking int
	short, maxShort       int                        // reads waiting kickWait
	reads                 map[string]int             // by product
	waits                 map[string][]time.Duration // each blocking read's wait, by product ("" for the list)
	checkReads            int
}

func newFake() *fakeBackend {
	return &fakeBackend{changed: make(chan struct{}), products: map[string][]cache.Instance{},
		prodIndex: map[string]uint64{}, failing: map[string]error{}, reads: map[string]int{}, waits: map[string][]time.Duration{}, reset: map[string]bool{}}
}

func instance(product string, port uint16) cache.Instance {
	return cache.Instance{Node: "n1", Address: netip.MustParseAddr("10.0.0.1"), Port: port,
		Env: "prod", Job: "stream", Service: "http"}
}

// set makes product have one instance on port (0: no product).
func (f *fakeBackend) set(product string, port uint16) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	if _, ok := f.products[product]; !ok || port == 0 {
		f.listIndex = f.index
	}
	if port == 0 {
		delete(f.products, product)
	} else {
		f.products[product] = []cache.Instance{instance(product, port)}
	}
	f.prodIndex[product] = f.index
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeBackend) fail(product string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing[product] = err
}

// wait blocks a read until current() moves past q.Index (unless frozen).
func (f *fakeBackend) wait(ctx context.Context, q Query, current func() uint64, frozen func() bool) error {
	if q.Index == 0 {
		return nil
	}
	n, most := &f.blocking, &f.maxBlocking
	if q.Wait == kickWait {
		n, most = &f.short, &f.maxShort
	}
	f.mu.Lock()
	*n++
	*most = max(*most, *n)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		*n--
		f.mu.Unlock()
	}()
	timer := time.NewTimer(q.Wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ch := f.changed
		done := current() > q.Index && !frozen()
		f.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-timer.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (f *fakeBackend) Datacenters(context.Context) ([]string, error) { return []string{"dc1"}, nil }

func (f *fakeBackend) Products(ctx context.Context, zone string, q Query) ([]string, Meta, error) {
	if q.Index > 0 {
		f.mu.Lock()
		f.waits[""] = append(f.waits[""], q.Wait)
		f.mu.Unlock()
	}
	if err := f.wait(ctx, q, func() uint64 { return f.listIndex }, func() bool { return f.frozen }); err != nil {
		return nil, Meta{}, err
	}
	if f.wentBack("", q) {
		return nil, Meta{Index: 1, Fresh: true}, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var names []string
	for name := range f.products {
		names = append(names, name)
	}
	return names, Meta{Index: max(f.listIndex, 1), Fresh: true}, nil
}

func (f *fakeBackend) Product(ctx context.Context, zone, product string, q Query) ([]cache.Instance, int, Meta, error) {
	f.mu.Lock()
	f.reads[product]++
	err := f.failing[product]
	if err == nil && q.Index > 0 {
		f.waits[product] = append(f.waits[product], q.Wait)
	}
	f.mu.Unlock()
	if err != nil {
		return nil, 0, Meta{}, err
	}
	if err := f.wait(ctx, q, func() uint64 { return f.prodIndex[product] }, func() bool { return false }); err != nil {
		return nil, 0, Meta{}, err
	}
	if f.wentBack(product, q) {
		return nil, 0, Meta{Index: 1, Fresh: true}, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.products[product]), 0, Meta{Index: max(f.prodIndex[product], 1), Fresh: true}, nil
}

func (f *fakeBackend) Servers(ctx context.Context, zone string, q Query) ([]cache.Server, Meta, error) {
	if err := f.wait(ctx, q, func() uint64 { return 1 }, func() bool { return false }); err != nil {
		return nil, Meta{}, err
	}
	return []cache.Server{{Node: "s1", Address: netip.MustParseAddr("10.0.0.9")}}, Meta{Index: 1, Fresh: true}, nil
}

func (f *fakeBackend) Checks(ctx context.Context, zone string, health cache.Health, products []string, q Query) (map[string]CheckVersion, Meta, error) {
	if err := f.wait(ctx, q, func() uint64 { return f.index }, func() bool { return false }); err != nil {
		return nil, Meta{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checkReads++
	out := map[string]CheckVersion{}
	for p, in := range f.products {
		if products != nil && !slices.Contains(products, p) {
			continue
		}
		for _, i := range in {
			if i.Health == health {
				v := out[p]
				out[p] = CheckVersion{Index: f.prodIndex[p], Count: v.Count + 1}
			}
		}
	}
	return out, Meta{Index: max(f.index, 1), Fresh: true}, nil
}

// wentBack reports whether the blocking read q of product ("" for the
// list) is to answer as a view that went back; at the read from index 0
// after it, it calls afterReset.
func (f *fakeBackend) wentBack(product string, q Query) bool {
	f.mu.Lock()
	back, after := f.reset[product], f.afterReset
	if back && q.Index > 0 {
		f.reset[product] = false
		f.mu.Unlock()
		return true
	}
	f.mu.Unlock()
	if !back && q.Index == 0 && after != nil {
		after(product)
	}
	return false
}

// setHealth sets the health of product's instance.
func (f *fakeBackend) setHealth(product string, h cache.Health) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index++
	f.products[product][0].Health = h
	f.prodIndex[product] = f.index
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeBackend) readsOf(product string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads[product]
}

// run starts a Manager on f until the test ends.
func run(t *testing.T, f *fakeBackend, cfg Config) (*Manager, *cache.Cache) {
	t.Helper()
	base := DefaultConfig()
	base.Local = "dc1"
	base.Wait, base.ProductWait = 5*time.Second, 5*time.Second
	if cfg.ProductWait > 0 {
		base.ProductWait = cfg.ProductWait
	}
	base.MinBackoff, base.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	base.Rate, base.Burst = 1000, 1000
	if cfg.Idle > 0 {
		base.Idle = cfg.Idle
	}
	if cfg.MaxConns > 0 {
		base.MaxConns = cfg.MaxConns
	}
	if cfg.RotateWait > 0 {
		base.RotateWait = cfg.RotateWait
	}
	base.Pins = cfg.Pins
	c := cache.New(nil)
	m := New(f, c, base, zap.NewNop(), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, func() bool { z := c.Zone("dc1"); return z != nil && z.Ready }, "the local zone never became ready")
	return m, c
}

func waitFor(t *testing.T, cond func() bool, what string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf(what, args...)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// resolve is a reader's first read: it waits for the product's state.
func resolve(m *Manager, c *cache.Cache, product string) cache.ProductState {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m.Resolve(ctx, "dc1", product)
	return c.Zone("dc1").State(product)
}

func port(c *cache.Cache, product string) uint16 {
	p := c.Zone("dc1").Products.Get(product)
	if p == nil {
		return 0
	}
	for _, a := range p.Addresses {
		return a.Instances[0].Port
	}
	return 0
}

// Only what is read is watched; the first read waits for the product's
// first result; a product the list lacks is Unlisted.
func TestWatchesOnDemand(t *testing.T) {
	f := newFake()
	for i := range 50 {
		f.set(fmt.Sprintf("p%d", i), uint16(1000+i))
	}
	m, c := run(t, f, Config{})
	if w := m.watchedProducts("dc1"); len(w) != 0 {
		t.Fatalf("watched before any read: %v", w)
	}
	if n := len(c.Zone("dc1").Known); n != 50 {
		t.Fatalf("known products: %d, want 50", n)
	}
	for _, p := range []string{"p3", "p17"} {
		if st := resolve(m, c, p); st != cache.Present || port(c, p) == 0 {
			t.Fatalf("%s after its first read: state %d", p, st)
		}
	}
	if w := m.watchedProducts("dc1"); !slices.Equal(w, []string{"p17", "p3"}) {
		t.Errorf("watched: %v, want p17 p3", w)
	}
	if st := resolve(m, c, "nope"); st != cache.Unlisted {
		t.Errorf("a product Consul does not list: state %d, want Unlisted", st)
	}
	// A change of a watched product comes through its blocking read.
	f.set("p3", 2003)
	waitFor(t, func() bool { return port(c, "p3") == 2003 }, "p3's change never showed")
}

// A product nobody reads is dropped after the idle period, one that is held
// stays, and a dropped one comes back on its next read.
func TestIdleProductsDropped(t *testing.T) {
	f := newFake()
	f.set("a", 1)
	f.set("b", 2)
	m, c := run(t, f, Config{Idle: 100 * time.Millisecond})
	resolve(m, c, "a")
	release := m.Hold("dc1", "b")
	resolve(m, c, "b")
	waitFor(t, func() bool { return c.Zone("dc1").Products.Get("a") == nil }, "idle product a never dropped")
	if w := m.watchedProducts("dc1"); !slices.Equal(w, []string{"b"}) {
		t.Errorf("watched after a went idle: %v, want b (held)", w)
	}
	release()
	waitFor(t, func() bool { return len(m.watchedProducts("dc1")) == 0 }, "b never dropped after its release")
	if st := resolve(m, c, "a"); st != cache.Present {
		t.Errorf("a read again: state %d", st)
	}
}

// A product whose reads fail fails alone: the zone is ready, the others
// answer, and the product's problem names the cause; it recovers.
func TestProductFailureIsItsOwn(t *testing.T) {
	f := newFake()
	f.set("good", 1)
	f.set("bad", 2)
	f.fail("bad", errors.New("endpoint blocked"))
	m, c := run(t, f, Config{Pins: []string{"*"}})
	z := c.Zone("dc1")
	if !z.Ready || z.State("good") != cache.Present {
		t.Fatalf("ready %v, good %d", z.Ready, z.State("good"))
	}
	if z.State("bad") != cache.Failing || z.Problems["bad"] != "endpoint blocked" {
		t.Fatalf("bad: state %d, problem %q", z.State("bad"), z.Problems["bad"])
	}
	f.fail("bad", nil)
	waitFor(t, func() bool { return c.Zone("dc1").State("bad") == cache.Present }, "bad never recovered")
	if p := c.Zone("dc1").Problems["bad"]; p != "" {
		t.Errorf("problem left after recovery: %q", p)
	}
	_ = m
}

// A product registered after the list was last read is not taken for a
// missing one: its first read reads the list again.
func TestNewProductFirstRead(t *testing.T) {
	f := newFake()
	f.set("old", 1)
	m, c := run(t, f, Config{})
	f.mu.Lock()
	f.frozen = true // the list loop does not see what follows
	f.mu.Unlock()
	f.set("new", 7)
	if st := resolve(m, c, "new"); st != cache.Present || port(c, "new") != 7 {
		t.Fatalf("new product on its first read: state %d, port %d", st, port(c, "new"))
	}
}

// More pinned products than blocking reads: they take turns within the
// budget, every one settles, changes still arrive, and a product in use
// keeps a read of its own.
func TestPinnedBeyondBudget(t *testing.T) {
	f := newFake()
	const n = 30
	for i := range n {
		f.set(fmt.Sprintf("p%02d", i), uint16(1000+i))
	}
	// Budget 8: 6 blocking reads (2 of them the zone's), 1 first read.
	m, c := run(t, f, Config{Pins: []string{"*"}, MaxConns: 8, RotateWait: 50 * time.Millisecond})
	blocking, _ := Budget(8, 1)
	if got := c.Zone("dc1").Products.Len(); got != n {
		t.Fatalf("ready with %d of %d pinned products", got, n)
	}
	for i := range n {
		f.set(fmt.Sprintf("p%02d", i), uint16(2000+i))
	}
	waitFor(t, func() bool {
		for i := range n {
			if port(c, fmt.Sprintf("p%02d", i)) != uint16(2000+i) {
				return false
			}
		}
		return true
	}, "the pinned products' changes never all arrived")
	f.mu.Lock()
	most, short := f.maxBlocking, f.maxShort
	f.mu.Unlock()
	if most > blocking {
		t.Errorf("%d blocking reads at once, budget %d", most, blocking)
	}
	if _, first := Budget(8, 1); short > first {
		t.Errorf("%d reads brought forward at once, first-read budget %d", short, first)
	}
	held, _, preempted := m.slots.stats()
	if held > blocking {
		t.Errorf("%d slots held, budget %d", held, blocking)
	}
	t.Logf("most blocking reads at once %d of %d; preempted %d", most, blocking, preempted)

	// A product in use outranks the idle pinned ones: it gets a slot and
	// keeps it, so its changes do not wait for a turn.
	resolve(m, c, "p07")
	waitFor(t, func() bool { return m.fullReads(prioInUse) == 1 }, "the product in use never got a full blocking read")
	f.set("p07", 3007)
	waitFor(t, func() bool { return port(c, "p07") == 3007 }, "p07's change never showed")
}

// fullReads counts the blocking reads of priority prio that wait the full
// wait: loops that keep their slot.
func (m *Manager) fullReads(prio int) int {
	m.slots.mu.Lock()
	defer m.slots.mu.Unlock()
	n := 0
	for h := range m.slots.held {
		if h.prio == prio && h.long {
			n++
		}
	}
	return n
}

// More products read than blocking reads fit: they take turns, but one a
// subscriber holds keeps a read of its own, so its changes are pushed at
// once.
func TestHeldOutranksRead(t *testing.T) {
	f := newFake()
	const n = 30
	for i := range n {
		f.set(fmt.Sprintf("p%02d", i), uint16(1000+i))
	}
	m, c := run(t, f, Config{MaxConns: 8, RotateWait: 50 * time.Millisecond})
	for i := range n {
		resolve(m, c, fmt.Sprintf("p%02d", i))
	}
	release := m.Hold("dc1", "p11")
	defer release()
	waitFor(t, func() bool { return m.fullReads(prioHeld) == 1 }, "the held product never got a full blocking read")
	if _, waiting, _ := m.slots.stats(); waiting == 0 {
		t.Error("no loop waits for a turn with 30 products read over 4 reads")
	}
	f.set("p11", 4011)
	waitFor(t, func() bool { return port(c, "p11") == 4011 }, "p11's change never showed")
}

// The slot queue: FIFO within a priority, better priorities first, and a
// newcomer preempts a full-wait read of its priority or below.
func TestSlots(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	h, _ := s.acquire(ctx, prioPinned, nil)
	preempted := make(chan struct{}, 1)
	if !s.begin(h, func() { preempted <- struct{}{} }) {
		t.Fatal("an uncontended read does not wait the full wait")
	}
	got := make(chan int, 3)
	for _, p := range []int{prioPinned, prioInUse} {
		go func() {
			h, err := s.acquire(ctx, p, nil)
			if err != nil {
				t.Error(err)
				return
			}
			got <- p
			s.release(h)
		}()
		waitFor(t, func() bool { _, w, _ := s.stats(); return w >= 1 }, "no waiter")
		if p == prioPinned {
			select {
			case <-preempted:
			case <-time.After(5 * time.Second):
				t.Fatal("the full-wait read was not preempted")
			}
		}
	}
	waitFor(t, func() bool { _, w, _ := s.stats(); return w == 2 }, "two waiters")
	if !s.release(h) {
		t.Error("release did not report the preemption")
	}
	var order []int
	for range 2 {
		order = append(order, <-got)
	}
	if !sort.IntsAreSorted(order) || order[0] != prioInUse {
		t.Errorf("grant order %v, want in use before pinned", order)
	}
	// Each goroutine sends its grant before it releases: wait for the
	// last release rather than read the counts the moment the send lands.
	waitFor(t, func() bool { held, waiting, _ := s.stats(); return held == 0 && waiting == 0 }, "a slot still held or waited for after both released")
	// A waiter whose context ends leaves the queue.
	h, _ = s.acquire(ctx, prioZone, nil)
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, err := s.acquire(cctx, prioZone, nil); err == nil {
		t.Error("acquire past its context succeeded")
	}
	s.release(h)
	if held, waiting, _ := s.stats(); held != 0 || waiting != 0 {
		t.Errorf("left after a timed-out waiter: %d held, %d waiting", held, waiting)
	}
}

// Holds of names Consul does not list are tracked up to a bound, so that
// subscriptions to made-up products cannot grow the agent without end; a
// held name is watched once Consul lists it.
func TestUnlistedHoldsBounded(t *testing.T) {
	f := newFake()
	f.set("real", 1)
	m, c := run(t, f, Config{})
	release := m.Hold("dc1", "later")
	defer release()
	for i := range maxUnlisted + 100 {
		m.Hold("dc1", fmt.Sprintf("madeup%d", i))
	}
	z := m.zones.load()["dc1"]
	if n := z.products.len(); n > 1+maxUnlisted {
		t.Errorf("%d products tracked, at most %d", n, 1+maxUnlisted)
	}
	f.set("later", 9)
	waitFor(t, func() bool { return port(c, "later") == 9 }, "a held product never watched once listed")
}

// A loop waiting for its turn whose product a subscriber starts to hold
// moves ahead of the loops that were waiting before it at its old rank.
func TestSlotsRaise(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	h, _ := s.acquire(ctx, prioZone, nil)
	got := make(chan string, 2)
	var first, second ticket
	for _, w := range []struct {
		name string
		t    *ticket
	}{{"first", &first}, {"second", &second}} {
		go func() {
			g, err := s.acquire(ctx, prioInUse, w.t)
			if err != nil {
				t.Error(err)
				return
			}
			got <- w.name
			s.release(g)
		}()
		waitFor(t, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return w.t.w != nil
		}, "%s never queued", w.name)
	}
	s.raise(&second, prioHeld)
	s.raise(&first, prioPinned) // a worse rank: no move
	s.release(h)
	if a, b := <-got, <-got; a != "second" || b != "first" {
		t.Errorf("granted %s then %s, want second (raised) first", a, b)
	}
	if held, waiting, _ := s.stats(); held != 0 || waiting != 0 {
		t.Errorf("left: %d held, %d waiting", held, waiting)
	}
}

// More products read than blocking reads fit, with turns that never come
// (the rotation wait is an hour): a health change of a product waiting for
// its turn still arrives, through the zone's reads of unhealthy checks,
// which bring that product's turn forward; in either direction and for
// both unhealthy states.
func TestKickBringsTurnForward(t *testing.T) {
	f := newFake()
	const n = 30
	for i := range n {
		f.set(fmt.Sprintf("p%02d", i), uint16(1000+i))
	}
	m, c := run(t, f, Config{MaxConns: 8, RotateWait: time.Hour})
	for i := range n {
		resolve(m, c, fmt.Sprintf("p%02d", i))
	}
	isWaiting := func(p *productWatch) bool {
		m.slots.mu.Lock()
		defer m.slots.mu.Unlock()
		return p.ticket.w != nil && p.ticket.w.got == nil
	}
	waiting := func() string {
		for name, p := range m.zones.load()["dc1"].products.all() {
			if isWaiting(p) {
				return name
			}
		}
		return ""
	}
	health := func(product string) cache.Health {
		p := c.Zone("dc1").Products.Get(product)
		for _, a := range p.Addresses {
			return a.Instances[0].Health
		}
		return cache.Passing
	}
	for _, h := range []cache.Health{cache.Critical, cache.Passing, cache.Warning, cache.Critical, cache.Passing} {
		var name string
		waitFor(t, func() bool { name = waiting(); return name != "" }, "no product waits for its turn")
		// Make name's health h, from another state than h.
		if health(name) == h {
			f.setHealth(name, (h+1)%3)
			waitFor(t, func() bool { return health(name) != h }, "%s's change to %v never showed", name, (h+1)%3)
			p := m.zones.load()["dc1"].products.get(name)
			waitFor(t, func() bool { return isWaiting(p) }, "%s never waits for its turn again", name)
		}
		kicks := m.slots.kicks()
		f.setHealth(name, h)
		waitFor(t, func() bool { return health(name) == h }, "%s's change to %v never showed", name, h)
		if m.slots.kicks() <= kicks {
			t.Fatalf("%s's change showed without a kick", name)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.checkReads == 0 {
		t.Fatal("no read of the check versions")
	}
}

// A zone's read cuts short any product read, even one in its turn (not a
// full-wait read), and one that was granted but not begun when the zone's
// read queued: the zone's read never waits for a product's turn to end.
func TestSlotsZoneCutsTurns(t *testing.T) {
	s := newSlots(2)
	ctx := context.Background()
	inTurn, _ := s.acquire(ctx, prioInUse, nil)
	starting, _ := s.acquire(ctx, prioInUse, nil)
	cut := make(chan string, 2)
	next := func() string {
		select {
		case c := <-cut:
			return c
		case <-time.After(5 * time.Second):
			t.Fatal("no read was cut short for the zone's reads")
			return ""
		}
	}
	// A product waits, so the read in its turn does not wait the full
	// wait.
	go func() {
		if h, err := s.acquire(ctx, prioInUse, nil); err == nil {
			s.release(h)
		}
	}()
	waitFor(t, func() bool { _, w, _ := s.stats(); return w == 1 }, "no product waits")
	if s.begin(inTurn, func() { cut <- "in turn" }) {
		t.Fatal("a read with a product waiting waits the full wait")
	}
	zone := make(chan *slot, 2)
	for range 2 {
		go func() {
			h, err := s.acquire(ctx, prioZone, nil)
			if err != nil {
				t.Error(err)
			}
			zone <- h
		}()
	}
	waitFor(t, func() bool { _, w, _ := s.stats(); return w == 3 }, "the zone reads never queued")
	if got := next(); got != "in turn" {
		t.Fatalf("cut %q", got)
	}
	// The second zone read found no read to cut: the one starting now is.
	if s.begin(starting, func() { cut <- "starting" }) {
		t.Error("a read begun for a zone read waits the full wait")
	}
	if got := next(); got != "starting" {
		t.Fatalf("cut %q", got)
	}
	s.release(inTurn)
	s.release(starting)
	for range 2 {
		s.release(<-zone)
	}
	waitFor(t, func() bool { held, w, _ := s.stats(); return held == 0 && w == 0 }, "slots left held or waited for")
}

// A blocking read whose result has a lower index than it waited past is
// not applied: the product keeps its instances and the zone its list until
// the read from index 0 that follows, which sees them again.
func TestIndexBackwardsNotApplied(t *testing.T) {
	f := newFake()
	f.set("p2", 2000)
	f.set("p1", 1000) // at index 2: the reset's 1 is below it
	m, c := run(t, f, Config{})
	if st := resolve(m, c, "p1"); st != cache.Present || port(c, "p1") != 1000 {
		t.Fatalf("p1: %v, port %d", st, port(c, "p1"))
	}
	var mu sync.Mutex
	seen := map[string]string{}
	f.mu.Lock()
	f.afterReset = func(product string) {
		z := c.Zone("dc1")
		mu.Lock()
		defer mu.Unlock()
		if _, done := seen[product]; !done {
			seen[product] = fmt.Sprintf("%v, port %d", z.State("p1"), port(c, "p1"))
		}
	}
	f.reset["p1"] = true
	f.reset[""] = true
	f.mu.Unlock()
	// A change wakes the blocking reads of p1 and of the list.
	waitFor(t, func() bool { f.mu.Lock(); defer f.mu.Unlock(); return f.blocking >= 2 }, "no blocking reads")
	f.set("p1", 1000)
	f.set("p3", 3000)
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return seen["p1"] != "" && seen[""] != "" }, "no read from index 0 after the reset: %v", seen)
	mu.Lock()
	defer mu.Unlock()
	want := fmt.Sprintf("%v, port 1000", cache.Present)
	for _, what := range []string{"p1", ""} {
		if seen[what] != want {
			t.Errorf("at the read from index 0 after %q went back, p1 was %s; want %s", what, seen[what], want)
		}
	}
	waitFor(t, func() bool { return c.Zone("dc1").State("p3") != cache.Unlisted }, "p3 never listed")
}

// waitsOf returns the waits of product's blocking reads so far ("" for
// the list's).
func (f *fakeBackend) waitsOf(product string) []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.waits[product])
}

// Loops that read from index 0 together must not time out together from
// then on: each one's first blocking read waits a random share of the wait,
// the reads after it the whole wait, and a loop that resyncs after a
// failure spreads again. Products wait ProductWait, the zone's own loops
// Wait.
func TestFirstBlockingReadsSpread(t *testing.T) {
	const wait = 300 * time.Millisecond // ProductWait; Wait is run's 5 s
	f := newFake()
	var names []string
	for i := range 40 {
		name := fmt.Sprintf("p%02d", i)
		names = append(names, name)
		f.set(name, 80)
	}
	_, _ = run(t, f, Config{Pins: []string{"*"}, ProductWait: wait})
	for _, name := range names {
		waitFor(t, func() bool { return len(f.waitsOf(name)) >= 3 }, "%s: fewer than 3 blocking reads", name)
	}
	firsts := map[time.Duration]bool{}
	var below, above int
	for _, name := range names {
		w := f.waitsOf(name)
		if w[0] < wait/16 || w[0] >= wait {
			t.Errorf("%s: first blocking read waits %v, want within [%v, %v)", name, w[0], wait/16, wait)
		}
		for _, later := range w[1:3] {
			if later != wait {
				t.Errorf("%s: a later blocking read waits %v, want the whole %v (waits %v)", name, later, wait, w)
			}
		}
		firsts[w[0]] = true
		if w[0] < wait/2 {
			below++
		} else {
			above++
		}
	}
	if len(firsts) < len(names)/2 || below == 0 || above == 0 {
		t.Errorf("first blocking waits not spread: %d distinct, %d below and %d above %v", len(firsts), below, above, wait/2)
	}
	// The list's first blocking read is a share of Wait, at least
	// Wait/16, which is longer than any share of ProductWait.
	if lw := f.waitsOf(""); len(lw) == 0 || lw[0] < 5*time.Second/16 || lw[0] >= 5*time.Second {
		t.Errorf("the list's blocking reads wait %v, want the first within [%v, %v)", lw, 5*time.Second/16, 5*time.Second)
	}

	// A failure sends the loop back to index 0; its next blocking read
	// spreads again.
	name := names[0]
	f.fail(name, errors.New("consul is away"))
	failing := f.readsOf(name) // every read counted after this one fails
	f.set(name, 81)            // wakes the blocking read in flight
	waitFor(t, func() bool { return f.readsOf(name) > failing }, "%s: no read after the failure began", name)
	before := len(f.waitsOf(name))
	f.fail(name, nil)
	waitFor(t, func() bool { return len(f.waitsOf(name)) > before }, "%s: no blocking read after the failure", name)
	if got := f.waitsOf(name)[before]; got < wait/16 || got >= wait {
		t.Errorf("%s: first blocking read after the failure waits %v, want within [%v, %v)", name, got, wait/16, wait)
	}
}
