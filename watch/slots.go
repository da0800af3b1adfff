package watch

import (
	"context"
	"errors"
	"sync"
)

// Priorities of blocking reads, most important first.
const (
	// prioZone: a zone's product list and servers, which every answer of
	// the zone rests on.
	prioZone = iota
	// prioHeld: a product a long-poll or websocket subscription waits on:
	// its changes are pushed, so they must not wait for a turn.
	prioHeld
	// prioInUse: a product read on this host within the idle period.
	prioInUse
	// prioPinned: a pinned product nobody reads.
	prioPinned
	numPrio
)

// slots shares out the blocking reads the connection budget allows.
//
// A blocking read holds its connection for up to the whole wait (a minute),
// so the budget bounds how many can be open at once. While every loop that
// wants one has a slot, each keeps it and waits the full wait: a change
// reaches glimpse as soon as Consul has it. When more loops want one than
// there are slots, they take turns: a loop whose priority is matched or
// beaten by one waiting reads with the short rotation wait and then queues
// again behind it, and a newcomer cuts short the longest read of a loop of
// its priority or below (preempt), so its turn comes within a read's round
// trip. Loops wait first in, first out within a priority.
type slots struct {
	mu    sync.Mutex
	free  int
	queue [numPrio][]*slotWaiter
	held  map[*slot]struct{}

	preempted int64 // reads cut short, for the metrics
	kicked    int64 // turns brought forward by kick, for the metrics

	// busy, when not nil, is closed once a loop waits (see rotating).
	busy chan struct{}
	// zoneOwed counts the zone reads queued that found no product read to
	// cut short (every one was starting): the next product read to begin
	// is cut short for them.
	zoneOwed int
}

// slot is a granted blocking read.
type slot struct {
	prio int
	// long is true while its read waits the full wait: a newcomer may
	// preempt it.
	long bool
	// preempt ends its read early; set by begin.
	preempt func()
	// preempted is set when preempt was called.
	preempted bool
}

type slotWaiter struct {
	prio  int
	ready chan struct{}
	got   *slot // set, under slots.mu, when the waiter is granted a slot
	// kick, closed by slots.kick, ends the wait with errKicked.
	kick chan struct{}
}

// ticket is a loop's place in the queue while it waits, through which its
// rank can be raised meanwhile (a product that a subscriber starts to hold
// must not wait behind the products merely read) and its turn brought
// forward (kick). Guarded by slots.mu.
type ticket struct {
	w *slotWaiter
	// kicked is a kick that came while the loop was not waiting: its next
	// acquire returns errKicked at once.
	kicked bool
}

// errKicked ends a wait for a slot whose product is known to have changed:
// the loop reads it at once, without blocking, and queues again.
var errKicked = errors.New("the product changed while waiting for its turn")

func newSlots(n int) *slots {
	return &slots{free: n, held: map[*slot]struct{}{}}
}

// acquire waits for a slot for a read of priority prio, until ctx ends;
// t, if not nil, holds its place in the queue meanwhile (see raise), and a
// kick on it ends the wait with errKicked.
func (s *slots) acquire(ctx context.Context, prio int, t *ticket) (*slot, error) {
	s.mu.Lock()
	if t != nil && t.kicked {
		t.kicked = false
		s.mu.Unlock()
		return nil, errKicked
	}
	if s.free > 0 && !s.waitingAtOrAbove(prio) {
		s.free--
		h := &slot{prio: prio}
		s.held[h] = struct{}{}
		s.mu.Unlock()
		return h, nil
	}
	w := &slotWaiter{prio: prio, ready: make(chan struct{}), kick: make(chan struct{})}
	s.queue[prio] = append(s.queue[prio], w)
	if s.busy != nil {
		close(s.busy)
		s.busy = nil
	}
	s.preemptFor(prio)
	if t != nil {
		t.w = w
	}
	s.mu.Unlock()
	var err error
	select {
	case <-w.ready:
	case <-w.kick:
		err = errKicked
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if t != nil {
		t.w = nil
	}
	if w.got != nil { // granted, perhaps while kicked: use it
		if ctx.Err() == nil {
			return w.got, nil
		}
		s.releaseLocked(w.got) // hand it on
		return nil, ctx.Err()
	}
	s.unqueue(w)
	if err == nil {
		err = ctx.Err()
	}
	return nil, err
}

// kick brings forward the turn of the loop with ticket t: its product
// changed. A loop waiting for a slot stops waiting (errKicked); one that is
// not waiting gets errKicked from its next acquire.
func (s *slots) kick(t *ticket) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kicked++
	if w := t.w; w != nil {
		if w.got == nil {
			select {
			case <-w.kick:
			default:
				close(w.kick)
			}
		}
		return
	}
	t.kicked = true
}

// rotating returns a channel that is closed once some loop waits for a
// slot: loops take turns.
func (s *slots) rotating() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waitingAtOrAbove(numPrio - 1) {
		c := make(chan struct{})
		close(c)
		return c
	}
	if s.busy == nil {
		s.busy = make(chan struct{})
	}
	return s.busy
}

// unqueue takes a waiter out of its queue. Called with s.mu held.
func (s *slots) unqueue(w *slotWaiter) {
	q := s.queue[w.prio]
	for i, x := range q {
		if x == w {
			s.queue[w.prio] = append(q[:i:i], q[i+1:]...)
			return
		}
	}
}

// raise moves the loop waiting with t, if any, to priority prio when that
// ranks better, at the end of that queue, and preempts for it.
func (s *slots) raise(t *ticket, prio int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := t.w
	if w == nil || w.got != nil || w.prio <= prio {
		return
	}
	s.unqueue(w)
	w.prio = prio
	s.queue[prio] = append(s.queue[prio], w)
	s.preemptFor(prio)
}

// begin starts the read of slot h: it returns whether the read may wait
// the full wait (nobody of its priority or above is waiting) and records
// how to cut it short.
func (s *slots) begin(h *slot, preempt func()) (long bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h.preempt = preempt
	s.zoneOwed = min(s.zoneOwed, len(s.queue[prioZone]))
	if s.zoneOwed > 0 && h.prio > prioZone && preempt != nil {
		s.zoneOwed--
		h.preempted = true
		preempt()
		s.preempted++
		return false
	}
	h.long = !s.waitingAtOrAbove(h.prio)
	return h.long
}

// release gives slot h back; the first of the best waiters gets it.
func (s *slots) release(h *slot) (preempted bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	preempted = h.preempted
	s.releaseLocked(h)
	return preempted
}

func (s *slots) releaseLocked(h *slot) {
	delete(s.held, h)
	for p := range s.queue {
		if q := s.queue[p]; len(q) > 0 {
			w := q[0]
			q[0] = nil
			s.queue[p] = q[1:]
			w.got = &slot{prio: w.prio}
			s.held[w.got] = struct{}{}
			close(w.ready)
			return
		}
	}
	s.free++
}

// waitingAtOrAbove reports whether a loop of priority prio or better is
// waiting. Called with s.mu held.
func (s *slots) waitingAtOrAbove(prio int) bool {
	for p := 0; p <= prio; p++ {
		if len(s.queue[p]) > 0 {
			return true
		}
	}
	return false
}

// preemptFor cuts short one full-wait read of priority prio or below, the
// least important, so that a waiter of priority prio gets its turn soon. A
// zone's own read, which every answer of the zone rests on, cuts short any
// product's read, even one in its turn. Called with s.mu held.
func (s *slots) preemptFor(prio int) {
	var victim *slot
	for h := range s.held {
		cuttable := h.long && h.prio >= prio || prio == prioZone && h.prio > prioZone
		if cuttable && !h.preempted && h.preempt != nil && (victim == nil || h.prio > victim.prio) {
			victim = h
		}
	}
	if victim != nil {
		victim.preempted, victim.long = true, false
		victim.preempt()
		s.preempted++
	} else if prio == prioZone {
		s.zoneOwed++
	}
}

// kicks returns how many turns kick brought forward so far.
func (s *slots) kicks() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.kicked
}

// stats returns the slots held, the loops waiting and the reads preempted
// so far.
func (s *slots) stats() (held, waiting int, preempted int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, q := range s.queue {
		waiting += len(q)
	}
	return len(s.held), waiting, s.preempted
}
