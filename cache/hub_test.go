package cache

import (
	"fmt"
	"net/netip"
	"testing"
)

// hubInst is one instance of service.job.prod.
func hubInst(job, service, addr string, port uint16) Instance {
	return Instance{
		Node: "n-" + addr, Address: netip.MustParseAddr(addr), Port: port, Health: Passing,
		Env: "prod", Job: job, Service: service,
	}
}

// hubCache returns a cache with the local zone dc1 keeping history changes.
func hubCache(t *testing.T, history int) *Cache {
	t.Helper()
	c := New(nil, WithHistory(history))
	if !c.AddZone("dc1", true) {
		t.Fatal("AddZone(dc1) = false")
	}
	return c
}

// set replaces product p's instances and returns the cache index after.
func hubSet(t *testing.T, c *Cache, p string, in ...Instance) uint64 {
	t.Helper()
	before := c.Index()
	if !c.SetProduct("dc1", p, in, 0) {
		t.Fatalf("SetProduct(%s) changed nothing", p)
	}
	if c.Index() <= before {
		t.Fatalf("SetProduct(%s): index %d did not move from %d", p, c.Index(), before)
	}
	return c.Index()
}

func hubExact(p, job, service string) Query {
	return Query{Zone: "dc1", Product: p, Env: "prod", Job: job, Service: service}
}

func hubNotified(s *Subscriber) bool {
	select {
	case <-s.C():
		return true
	default:
		return false
	}
}

// hubFmt describes updates for failure messages.
func hubFmt(us []Update) string {
	out := "["
	for i, u := range us {
		if i > 0 {
			out += " "
		}
		kind := "update"
		if u.Snapshot {
			kind = "snapshot"
		}
		out += fmt.Sprintf("%s %s@%d %v", kind, u.Address.Name(), u.Address.Index, hubPorts(u.Address))
	}
	return out + "]"
}

func hubPorts(a *Address) []uint16 {
	out := []uint16{}
	for _, in := range a.Instances {
		out = append(out, in.Port)
	}
	return out
}

// TestHubMerge: two states offered before a Take merge into the newest one,
// counted once as merged; the pending states never exceed the addresses.
func TestHubMerge(t *testing.T) {
	c := hubCache(t, 16)
	h := c.Hub()
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	s, resumed := h.Subscribe([]Query{hubExact("p", "web", "http")}, 0)
	defer s.Close()
	if resumed {
		t.Fatal("a subscription from index 0 resumed")
	}
	if !hubNotified(s) {
		t.Fatal("no notification for the snapshot")
	}
	first := s.Take()
	if len(first) != 1 || !first[0].Snapshot || first[0].Address.Name() != "http.web.prod.p.dc1" {
		t.Fatalf("first Take: %s, want one snapshot of http.web.prod.p.dc1", hubFmt(first))
	}
	if got := s.Take(); len(got) != 0 {
		t.Fatalf("second Take with nothing new: %d updates", len(got))
	}

	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81))
	last := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 82))
	if n := s.Pending(); n != 1 {
		t.Fatalf("pending %d after two changes of one address, want 1", n)
	}
	if m := h.Merged(); m != 1 {
		t.Fatalf("merged %d, want 1", m)
	}
	got := s.Take()
	if len(got) != 1 || got[0].Snapshot || got[0].Address.Index != last || hubPorts(got[0].Address)[0] != 82 {
		t.Fatalf("Take after two changes: %s, want one update at %d with port 82", hubFmt(got), last)
	}
	if s.Pending() != 0 {
		t.Fatalf("pending %d after Take", s.Pending())
	}

	// Many changes: still one pending state, all but one merged.
	for i := range 100 {
		hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", uint16(1000+i)))
		if n := s.Pending(); n != 1 {
			t.Fatalf("change %d: pending %d, want 1", i, n)
		}
	}
	if m := h.Merged(); m != 1+99 {
		t.Fatalf("merged %d after 100 more changes, want 100", m)
	}
	got = s.Take()
	if len(got) != 1 || hubPorts(got[0].Address)[0] != 1099 {
		t.Fatalf("Take after 100 changes: %s, want port 1099", hubFmt(got))
	}
}

// TestHubMergeKeepsSnapshot: an update merged into a pending snapshot is
// still delivered as a snapshot (the first state of the address), with the
// newest state.
func TestHubMergeKeepsSnapshot(t *testing.T) {
	c := hubCache(t, 16)
	h := c.Hub()
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	s, _ := h.Subscribe([]Query{hubExact("p", "web", "http")}, 0)
	defer s.Close()
	last := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81))
	got := s.Take()
	if len(got) != 1 || !got[0].Snapshot || got[0].Address.Index != last || hubPorts(got[0].Address)[0] != 81 {
		t.Fatalf("Take: %s, want one snapshot at %d with port 81", hubFmt(got), last)
	}
	if h.Merged() != 1 {
		t.Fatalf("merged %d, want 1", h.Merged())
	}
}

// TestHubSnapshotAndUpdate: a new address matching a wildcard comes as a
// snapshot, its changes as updates, its removal as an update without
// instances; an address of another product is not delivered.
func TestHubSnapshotAndUpdate(t *testing.T) {
	c := hubCache(t, 16)
	h := c.Hub()
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	hubSet(t, c, "other", hubInst("web", "http", "10.0.0.9", 80))
	s, _ := h.Subscribe([]Query{{Zone: "dc1", Product: "p", Env: "prod", Job: Wildcard, Service: Wildcard}}, 0)
	defer s.Close()
	if got := s.Take(); len(got) != 1 || !got[0].Snapshot {
		t.Fatalf("first Take: %s, want one snapshot", hubFmt(got))
	}

	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80), hubInst("web", "grpc", "10.0.0.2", 90))
	got := s.Take()
	if len(got) != 1 || !got[0].Snapshot || got[0].Address.Name() != "grpc.web.prod.p.dc1" {
		t.Fatalf("new address: %s, want a snapshot of grpc.web.prod.p.dc1", hubFmt(got))
	}
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80), hubInst("web", "grpc", "10.0.0.2", 91))
	got = s.Take()
	if len(got) != 1 || got[0].Snapshot || hubPorts(got[0].Address)[0] != 91 {
		t.Fatalf("changed address: %s, want an update with port 91", hubFmt(got))
	}
	idx := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	got = s.Take()
	if len(got) != 1 || got[0].Snapshot || got[0].Address.Name() != "grpc.web.prod.p.dc1" ||
		len(got[0].Address.Instances) != 0 || got[0].Address.Index != idx {
		t.Fatalf("removed address: %s, want an update without instances at %d", hubFmt(got), idx)
	}
	hubSet(t, c, "other", hubInst("web", "http", "10.0.0.9", 81))
	if got := s.Take(); len(got) != 0 {
		t.Fatalf("another product's change delivered: %s", hubFmt(got))
	}
	// Removing the product: an empty update for its address.
	c.RemoveProduct("dc1", "p")
	got = s.Take()
	if len(got) != 1 || got[0].Snapshot || got[0].Address.Name() != "http.web.prod.p.dc1" || len(got[0].Address.Instances) != 0 {
		t.Fatalf("removed product: %s, want an empty update of http.web.prod.p.dc1", hubFmt(got))
	}
}

// TestHubTakeInIndexOrder: Take returns the pending states in index order,
// not in name order or map order.
func TestHubTakeInIndexOrder(t *testing.T) {
	c := hubCache(t, 64)
	h := c.Hub()
	services := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	state := map[string]uint16{}
	all := func() []Instance {
		var in []Instance
		for i, sv := range services {
			in = append(in, hubInst("web", sv, "10.0.1."+string(rune('1'+i)), state[sv]))
		}
		return in
	}
	for _, sv := range services {
		state[sv] = 1
	}
	hubSet(t, c, "p", all()...)
	s, _ := h.Subscribe([]Query{{Zone: "dc1", Product: "p", Env: "prod", Job: "web", Service: Wildcard}}, 0)
	defer s.Close()
	s.Take()
	for round := range 20 {
		// Change the services one at a time in an order that is neither
		// sorted nor reverse sorted.
		base := []string{"e", "b", "h", "a", "g", "c", "f", "d"}
		order := make([]string, len(base))
		for i := range order {
			order[i] = base[(i+round)%len(base)]
		}
		want := map[string]uint64{}
		for _, sv := range order {
			state[sv]++
			want[sv] = hubSet(t, c, "p", all()...)
		}
		got := s.Take()
		if len(got) != len(services) {
			t.Fatalf("round %d: %d updates, want %d", round, len(got), len(services))
		}
		for i, u := range got {
			if u.Snapshot {
				t.Fatalf("round %d: %s came as a snapshot", round, u.Address.Name())
			}
			if i > 0 && got[i-1].Address.Index >= u.Address.Index {
				t.Fatalf("round %d: Take out of index order: %d then %d", round, got[i-1].Address.Index, u.Address.Index)
			}
			if u.Address.Index != want[u.Address.Service] {
				t.Fatalf("round %d: %s at %d, want %d", round, u.Address.Name(), u.Address.Index, want[u.Address.Service])
			}
		}
	}
}

// TestHubClose: Close stops delivery, drops what was pending, decrements
// the subscriber count once however often it is called, and leaves other
// subscribers untouched.
func TestHubClose(t *testing.T) {
	c := hubCache(t, 16)
	h := c.Hub()
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	q := []Query{hubExact("p", "web", "http")}
	s, _ := h.Subscribe(q, 0)
	other, _ := h.Subscribe(q, 0)
	defer other.Close()
	if n := h.Subscribers(); n != 2 {
		t.Fatalf("subscribers %d, want 2", n)
	}
	s.Take()
	other.Take()
	for hubNotified(s) || hubNotified(other) {
	}
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81)) // pending, then dropped by Close
	s.Close()
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("subscribers %d after Close, want 1", n)
	}
	s.Close()
	if n := h.Subscribers(); n != 1 {
		t.Fatalf("subscribers %d after a second Close, want 1", n)
	}
	for hubNotified(s) {
	}
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 82))
	if hubNotified(s) {
		t.Fatal("closed subscriber notified")
	}
	if n := s.Pending(); n != 0 {
		t.Fatalf("closed subscriber has %d pending", n)
	}
	if got := s.Take(); len(got) != 0 {
		t.Fatalf("closed subscriber took %s", hubFmt(got))
	}
	if got := other.Take(); len(got) != 1 || hubPorts(got[0].Address)[0] != 82 {
		t.Fatalf("other subscriber: %s, want port 82", hubFmt(got))
	}
	// The (zone, product) index no longer holds the closed subscriber.
	h.mu.Lock()
	_, still := h.subs[productKey("dc1", "p")][s]
	h.mu.Unlock()
	if still {
		t.Fatal("closed subscriber still indexed")
	}
	other.Close()
	h.mu.Lock()
	n := len(h.subs)
	h.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d (zone, product) entries left with no subscriber", n)
	}
}

// TestHubHistoryFloor: with a history of 4 changes, a resume from an index
// at or above the newest dropped change gets only what changed after it;
// one below gets a snapshot and counts a miss, as does one ahead of the
// cache. Index 0 is no resume and no miss.
func TestHubHistoryFloor(t *testing.T) {
	c := hubCache(t, 4)
	h := c.Hub()
	q := []Query{hubExact("p", "web", "http")}
	var idx []uint64 // idx[i]: the index of change i (port 80+i)
	for i := range 6 {
		idx = append(idx, hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", uint16(80+i))))
	}
	// The history holds changes 2..5; change 1 is the newest dropped.
	h.mu.Lock()
	floor, held := h.floor, len(h.history)
	h.mu.Unlock()
	if floor != idx[1] || held != 4 {
		t.Fatalf("floor %d with %d changes held, want %d with 4", floor, held, idx[1])
	}

	resume := func(since uint64) (*Subscriber, bool, []Update) {
		t.Helper()
		s, resumed := h.Subscribe(q, since)
		t.Cleanup(s.Close)
		return s, resumed, s.Take()
	}
	for _, tc := range []struct {
		name    string
		since   uint64
		resumed bool
		miss    bool
		updates int
	}{
		{"index 0", 0, false, false, 1},
		{"below the floor", idx[0], false, true, 1},
		{"at the floor", idx[1], true, false, 1},
		{"inside the history", idx[3], true, false, 1},
		{"the newest", idx[5], true, false, 0},
		{"ahead of the cache", idx[5] + 1000, false, true, 1},
	} {
		misses := h.HistoryMisses()
		_, resumed, got := resume(tc.since)
		if resumed != tc.resumed {
			t.Errorf("%s (%d): resumed %v, want %v", tc.name, tc.since, resumed, tc.resumed)
		}
		if d := h.HistoryMisses() - misses; (d == 1) != tc.miss || d > 1 {
			t.Errorf("%s: misses moved by %d, want miss %v", tc.name, d, tc.miss)
		}
		if len(got) != tc.updates {
			t.Fatalf("%s: %d updates, want %d: %s", tc.name, len(got), tc.updates, hubFmt(got))
		}
		if len(got) == 1 {
			u := got[0]
			if u.Snapshot == tc.resumed {
				t.Errorf("%s: snapshot %v, want %v", tc.name, u.Snapshot, !tc.resumed)
			}
			if u.Address.Index != idx[5] || hubPorts(u.Address)[0] != 85 {
				t.Errorf("%s: got index %d port %v, want the newest state (%d, 85)", tc.name, u.Address.Index, hubPorts(u.Address), idx[5])
			}
		}
	}

	// A resumed subscriber gets later changes as updates, and an address
	// that appears later as an update too (the client had the snapshots).
	s, resumed := h.Subscribe([]Query{{Zone: "dc1", Product: "p", Env: "prod", Job: "web", Service: Wildcard}}, idx[5])
	defer s.Close()
	if !resumed {
		t.Fatal("resume at the newest index not served")
	}
	next := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 86), hubInst("web", "grpc", "10.0.0.2", 90))
	got := s.Take()
	if len(got) != 2 {
		t.Fatalf("after resume: %s, want 2 updates", hubFmt(got))
	}
	for _, u := range got {
		if u.Address.Index != next {
			t.Errorf("%s at %d, want %d", u.Address.Name(), u.Address.Index, next)
		}
		if u.Snapshot {
			t.Errorf("%s came as a snapshot to a resumed subscriber", u.Address.Name())
		}
	}
}

// TestHubHistoryNotFull: before the history wraps, any index up to the
// cache's resumes.
func TestHubHistoryNotFull(t *testing.T) {
	c := hubCache(t, 100)
	h := c.Hub()
	first := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	last := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81))
	for _, since := range []uint64{1, first, last} {
		s, resumed := h.Subscribe([]Query{hubExact("p", "web", "http")}, since)
		got := s.Take()
		s.Close()
		if !resumed {
			t.Errorf("since %d: not resumed", since)
		}
		want := 1
		if since == last {
			want = 0
		}
		if len(got) != want || (want == 1 && (got[0].Snapshot || got[0].Address.Index != last)) {
			t.Errorf("since %d: %s, want %d update(s) at %d", since, hubFmt(got), want, last)
		}
	}
	if h.HistoryMisses() != 0 {
		t.Errorf("misses %d", h.HistoryMisses())
	}
}

// TestHubMultiAddressChangeAtFloor: one change of the cache touching two
// addresses puts two entries with the same index in the history; dropping
// one of them makes that index the floor, and a resume from it still gets
// everything after it.
func TestHubMultiAddressChangeAtFloor(t *testing.T) {
	c := hubCache(t, 3)
	h := c.Hub()
	both := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80), hubInst("web", "grpc", "10.0.0.2", 90))
	after := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81), hubInst("web", "grpc", "10.0.0.2", 90))
	latest := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81), hubInst("web", "grpc", "10.0.0.2", 91))
	// history: [grpc@both, http@after, grpc@latest]; http@both dropped.
	s, resumed := h.Subscribe([]Query{{Zone: "dc1", Product: "p", Env: "prod", Job: "web", Service: Wildcard}}, both)
	defer s.Close()
	if !resumed {
		t.Fatalf("resume from %d (the floor) not served", both)
	}
	got := s.Take()
	if len(got) != 2 || got[0].Address.Index != after || got[1].Address.Index != latest {
		t.Fatalf("resume from %d: %s, want http at %d then grpc at %d", both, hubFmt(got), after, latest)
	}
}

// TestHubConcurrent: subscribers that join, take and leave while a writer
// changes an address never see its states out of index order, and every
// subscriber still open at the end ends with the final state.
func TestHubConcurrent(t *testing.T) {
	c := hubCache(t, 32)
	h := c.Hub()
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 1))
	const changes = 2000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 2; i <= changes; i++ {
			c.SetProduct("dc1", "p", []Instance{hubInst("web", "http", "10.0.0.1", uint16(i))}, 0)
		}
	}()
	type result struct {
		last uint16
		err  string
	}
	results := make(chan result, 8)
	for g := range 8 {
		go func() {
			var since uint64
			var last uint16
			for round := 0; ; round++ {
				s, _ := h.Subscribe([]Query{hubExact("p", "web", "http")}, since)
				var lastIdx uint64
				for range 50 + g*10 {
					for _, u := range s.Take() {
						if u.Address.Index <= lastIdx {
							s.Close()
							results <- result{err: "index order"}
							return
						}
						lastIdx = u.Address.Index
						p := hubPorts(u.Address)[0]
						if p < last {
							s.Close()
							results <- result{err: "older state after a newer one"}
							return
						}
						last = p
						since = u.Address.Index
					}
				}
				select {
				case <-done:
					// The writer is done: whatever is pending now is final.
					for _, u := range s.Take() {
						last = hubPorts(u.Address)[0]
					}
					s.Close()
					results <- result{last: last}
					return
				default:
				}
				s.Close()
			}
		}()
	}
	for range 8 {
		r := <-results
		if r.err != "" {
			t.Fatal(r.err)
		}
		if r.last != changes {
			t.Fatalf("subscriber ended with port %d, want the final %d", r.last, changes)
		}
	}
	if n := h.Subscribers(); n != 0 {
		t.Fatalf("%d subscribers left", n)
	}
}

// wireBuilder derives a stand-in for DNS's packed answers.
type wireBuilder struct{}

func (wireBuilder) BuildAddress(a *Address) any { return make([]byte, 1024) }
func (wireBuilder) BuildNode(string, *Node) any { return nil }
func (wireBuilder) BuildZone(*Zone) any         { return nil }

// TestHubHistoryKeepsNoDerived: the history keeps the instances of past
// states, which resuming subscribers need, but not what the Builder derived
// from them (DNS answers), which would only hold memory; live updates and
// the cache keep it.
func TestHubHistoryKeepsNoDerived(t *testing.T) {
	c := New(wireBuilder{}, WithHistory(10))
	c.AddZone("dc1", true)
	h := c.Hub()
	live, _ := h.Subscribe([]Query{hubExact("p", "web", "http")}, 0)
	defer live.Close()
	first := hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 80))
	hubSet(t, c, "p", hubInst("web", "http", "10.0.0.1", 81))
	for _, u := range live.Take() {
		if u.Address.Derived == nil {
			t.Errorf("a live update lost its derived form: %+v", u.Address)
		}
	}
	s, resumed := h.Subscribe([]Query{hubExact("p", "web", "http")}, first-1)
	defer s.Close()
	got := s.Take()
	if !resumed || len(got) != 1 || got[0].Address.Instances[0].Port != 81 {
		t.Fatalf("resume: %v %s", resumed, hubFmt(got))
	}
	h.mu.Lock()
	h.each(func(a *Address) {
		if a.Derived != nil {
			t.Errorf("history entry at %d holds its derived form", a.Index)
		}
	})
	h.mu.Unlock()
	if res := c.Lookup(hubExact("p", "web", "http")); len(res.Addresses) != 1 || res.Addresses[0].Derived == nil {
		t.Errorf("the cache's address lost its derived form")
	}
}

// Wake: a long-poll's channel gets a value for a change of an address its
// query matches (a change, an appearance, a removal), never for another
// address of the same product, another product or one before the call;
// after stop, nothing.
func TestHubWake(t *testing.T) {
	c := hubCache(t, 16)
	a := hubInst("stream", "http", "10.0.0.1", 80)
	b := hubInst("batch", "worker", "10.0.0.2", 81)
	hubSet(t, c, "goku", a, b)
	woken := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	exact, stopExact := c.Hub().Wake(hubExact("goku", "stream", "http"))
	wild, stopWild := c.Hub().Wake(Query{Zone: "dc1", Product: "goku", Env: "prod", Job: Wildcard, Service: "http"})
	defer stopWild()
	if woken(exact) || woken(wild) {
		t.Fatal("woken by a change made before Wake")
	}
	b.Port = 82
	hubSet(t, c, "goku", a, b)
	hubSet(t, c, "vegeta", hubInst("stream", "http", "10.0.1.1", 80))
	if woken(exact) || woken(wild) {
		t.Error("woken by another address of the product, or another product")
	}
	a.Port = 90
	hubSet(t, c, "goku", a, b)
	if !woken(exact) || !woken(wild) {
		t.Error("not woken by a change of the address")
	}
	hubSet(t, c, "goku", b) // http.stream goes away
	if !woken(exact) || !woken(wild) {
		t.Error("not woken when the address went away")
	}
	stopExact()
	hubSet(t, c, "goku", a, b) // and comes back
	if woken(exact) {
		t.Error("woken after stop")
	}
	if !woken(wild) {
		t.Error("not woken when the address came back")
	}
	if n := len(c.Hub().wakers); n != 1 {
		t.Errorf("%d products with wakers left, want 1 (the wildcard's)", n)
	}
}
