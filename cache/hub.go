package cache

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Hub fans the cache's changes out to subscribers. Subscribers are indexed
// by the (zone, product) they watch, so a change touches only the
// subscribers it can match. Publishing never blocks on a subscriber: each
// one holds at most one pending state per address, the latest (an update
// replacing a pending one is counted as merged), so a subscriber that does
// not read costs memory bounded by the addresses it watches.
//
// A bounded history of recent changes lets a reconnecting subscriber resume
// from an index and receive only what changed after it.
type Hub struct {
	cache *Cache

	mu   sync.Mutex
	subs map[string]map[*Subscriber]struct{} // by zone + "/" + product
	// wakers are the long-polls waiting, by zone + "/" + product.
	wakers map[string]map[*waker]struct{}
	// history is a ring of the most recent changes, oldest at head.
	history []*Address
	head    int
	// floor is the index of the newest change dropped from the history:
	// a resume from an index below it cannot be served.
	floor uint64
	count int // subscribers

	merged, misses atomic.Uint64
}

// Update is one state of an address for a subscriber.
type Update struct {
	// Address is the address's new state; a removed address has no
	// instances.
	Address *Address
	// Snapshot is true for the first state the subscriber gets of the
	// address.
	Snapshot bool
}

// Subscriber is one subscription: a set of queries and the states pending
// for it.
type Subscriber struct {
	hub     *Hub
	queries []Query
	notify  chan struct{}

	mu      sync.Mutex
	pending map[string]Update // by address name
	sent    map[string]uint64 // index of the last state taken, by address name
	resumed bool
	closed  bool
	once    sync.Once
}

func newHub(c *Cache, history int) *Hub {
	return &Hub{cache: c, subs: map[string]map[*Subscriber]struct{}{}, wakers: map[string]map[*waker]struct{}{},
		history: make([]*Address, 0, max(history, 1))}
}

func productKey(zone, product string) string { return zone + "/" + product }

// Subscribe registers a subscription to the addresses matching queries.
// With since > 0 and the history still holding every change after since,
// the subscriber first gets those changes (resumed is true); otherwise it
// gets a snapshot of every matching address.
func (h *Hub) Subscribe(queries []Query, since uint64) (s *Subscriber, resumed bool) {
	s = &Subscriber{
		hub: h, queries: queries, notify: make(chan struct{}, 1),
		pending: map[string]Update{}, sent: map[string]uint64{},
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, q := range queries {
		k := productKey(q.Zone, q.Product)
		if h.subs[k] == nil {
			h.subs[k] = map[*Subscriber]struct{}{}
		}
		h.subs[k][s] = struct{}{}
	}
	h.count++
	if since > 0 && since >= h.floor && since <= h.cache.Index() {
		s.resumed = true
		h.each(func(a *Address) {
			if a.Index > since && s.matches(a) {
				s.offer(a, a.Name(), false)
			}
		})
		return s, true
	}
	if since > 0 {
		h.misses.Add(1)
	}
	// Changes published after this snapshot was read come through publish,
	// which waits for h.mu; offer drops the ones the snapshot already has.
	for _, q := range queries {
		for _, a := range h.cache.Lookup(q).Addresses {
			s.offer(a, a.Name(), true)
		}
	}
	return s, false
}

// waker is a long-poll waiting for a change of the addresses matching q.
type waker struct {
	q Query
	c chan struct{}
}

// Wake returns a channel that receives a value once an address matching q
// changes (appears, changes or goes away) after the call, and a func that
// ends the wait. A long-poll registers, then reads the cache, then waits:
// it misses no change, and, unlike a wait on every change of the cache, it
// is woken by the changes it can see only.
func (h *Hub) Wake(q Query) (<-chan struct{}, func()) {
	w := &waker{q: q, c: make(chan struct{}, 1)}
	key := productKey(q.Zone, q.Product)
	h.mu.Lock()
	if h.wakers[key] == nil {
		h.wakers[key] = map[*waker]struct{}{}
	}
	h.wakers[key][w] = struct{}{}
	h.mu.Unlock()
	return w.c, func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if m := h.wakers[key]; m != nil {
			delete(m, w)
			if len(m) == 0 {
				delete(h.wakers, key)
			}
		}
	}
}

// Subscribers returns the number of subscriptions.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// Merged returns how many pending updates were replaced by newer ones.
func (h *Hub) Merged() uint64 { return h.merged.Load() }

// HistoryMisses returns how many resumes found their index gone from the
// history and got snapshots instead.
func (h *Hub) HistoryMisses() uint64 { return h.misses.Load() }

// publish records changes in the history and offers them to the
// subscribers they match. Called by the cache with its write lock held, in
// index order.
func (h *Hub) publish(changes []*Address) {
	if len(changes) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, a := range changes {
		// The history serves resuming subscribers, which need the
		// instances but not what the Builder derived (for DNS, packed
		// answers): a copy without it keeps superseded states small.
		ha := a
		if a.Derived != nil {
			c := *a
			c.Derived = nil
			ha = &c
		}
		if len(h.history) < cap(h.history) {
			h.history = append(h.history, ha)
		} else {
			h.floor = h.history[h.head].Index
			h.history[h.head] = ha
			h.head = (h.head + 1) % len(h.history)
		}
		key := productKey(a.Zone, a.Product)
		for w := range h.wakers[key] {
			if w.q.Matches(a) {
				select {
				case w.c <- struct{}{}:
				default:
				}
			}
		}
		subs := h.subs[key]
		if len(subs) == 0 {
			continue
		}
		name := a.Name()
		for s := range subs {
			if s.matches(a) {
				s.offer(a, name, false)
			}
		}
	}
}

// each calls fn for the history's changes, oldest first. Called with h.mu
// held.
func (h *Hub) each(fn func(*Address)) {
	for i := range h.history {
		fn(h.history[(h.head+i)%len(h.history)])
	}
}

// C returns a channel that receives a value when states are pending.
func (s *Subscriber) C() <-chan struct{} { return s.notify }

// Queries returns the subscription's queries.
func (s *Subscriber) Queries() []Query { return s.queries }

func (s *Subscriber) matches(a *Address) bool {
	for i := range s.queries {
		if s.queries[i].Matches(a) {
			return true
		}
	}
	return false
}

// offer makes a the pending state of its address (named name) unless the
// subscriber already has that state or a newer one.
func (s *Subscriber) offer(a *Address, name string, snapshot bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.sent[name] >= a.Index {
		return
	}
	prev, ok := s.pending[name]
	if ok {
		if prev.Address.Index >= a.Index {
			return
		}
		s.hub.merged.Add(1)
		snapshot = prev.Snapshot // the first state of an address stays a snapshot
	} else if _, seen := s.sent[name]; !seen && !s.resumed {
		snapshot = true // an address that appeared after subscribing
	}
	s.pending[name] = Update{Address: a, Snapshot: snapshot}
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// Take returns the pending states, in index order, and clears them.
func (s *Subscriber) Take() []Update {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Update, 0, len(s.pending))
	for name, u := range s.pending {
		out = append(out, u)
		s.sent[name] = u.Address.Index
		delete(s.pending, name)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address.Index < out[j].Address.Index })
	return out
}

// Pending returns the number of addresses with a pending state.
func (s *Subscriber) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

// Close ends the subscription. It may be called more than once.
func (s *Subscriber) Close() {
	s.once.Do(func() {
		h := s.hub
		h.mu.Lock()
		for _, q := range s.queries {
			k := productKey(q.Zone, q.Product)
			if m := h.subs[k]; m != nil {
				delete(m, s)
				if len(m) == 0 {
					delete(h.subs, k)
				}
			}
		}
		h.count--
		h.mu.Unlock()
		s.mu.Lock()
		s.closed = true
		s.pending = nil
		s.mu.Unlock()
	})
}

// removed returns the state of an address that is gone: no instances.
func removed(a *Address, idx uint64, now time.Time) *Address {
	return &Address{Zone: a.Zone, Product: a.Product, Env: a.Env, Job: a.Job, Service: a.Service, Index: idx, Changed: now}
}
