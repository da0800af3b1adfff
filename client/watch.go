package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/rugby110/glimpse/api"
)

// EventType says what an Event is.
type EventType int

const (
	// Snapshot is an address's whole state, as the agent sent it when the
	// watch (re)connected.
	Snapshot EventType = iota
	// Update is an address's whole new state after a change; no
	// instances means the address is gone.
	Update
	// Synced says that State holds the agent's state of every address
	// watched: sent after each (re)connection once the agent has a state
	// for every product the addresses name.
	Synced
	// Disconnected says the connection to the agent was lost (Err says
	// why); State keeps the last known state, and the watch reconnects.
	Disconnected
)

func (t EventType) String() string {
	switch t {
	case Snapshot:
		return "snapshot"
	case Update:
		return "update"
	case Synced:
		return "synced"
	case Disconnected:
		return "disconnected"
	}
	return "EventType(" + strconv.Itoa(int(t)) + ")"
}

// Event is one thing a Watch saw.
type Event struct {
	Type EventType
	// Address, Index and Instances are those of a Snapshot or an Update
	// (Index alone for Synced).
	Address   string
	Index     uint64
	Instances []api.Instance
	// Resynced marks what the agent sent after a reconnect it could not
	// resume from the watch's index (its history no longer held it, or
	// it restarted): the address's state is current, but changes between
	// may have been skipped. An Update with Resynced and no instances is
	// an address that went away meanwhile.
	Resynced bool
	// Err is why the connection was lost (Disconnected).
	Err error
}

// WatchOptions tune a Watch; the zero value is the defaults.
type WatchOptions struct {
	// Health is the health filter, as Lookup's ("": passing).
	Health string
	// DeadAfter is how long a connection may stay silent (no message and
	// no ping) before it is taken for dead and replaced; 0: 20 s, two of
	// the agent's ping intervals.
	DeadAfter time.Duration
	// MinBackoff and MaxBackoff bound the jittered, doubling wait between
	// reconnection attempts; 0: 100 ms and 10 s.
	MinBackoff, MaxBackoff time.Duration
}

// Watch follows addresses over the agent's websocket push API. Its events
// come on Events, in order, until the context given to Client.Watch ends;
// then Events is closed and every goroutine of the watch has returned.
type Watch struct {
	c       *Client
	addrs   []string
	opts    WatchOptions
	events  chan Event
	done    chan struct{}
	mu      sync.Mutex
	state   map[string][]api.Instance
	index   uint64
	resumed bool
}

// Watch starts following addresses (api.ParseAddress; wildcards allowed).
// The addresses are checked at once; the connection is made in the
// background, and failures to connect are Disconnected events, retried
// with backoff.
//
// The watch resumes from the last index it saw after a reconnect, so it
// misses no final state of an address: while the agent's history holds the
// index it gets only the changes since; otherwise (or when the agent
// restarted, its index lower) fresh snapshots, Resynced, and updates
// without instances for the addresses that went away.
func (c *Client) Watch(ctx context.Context, addresses []string, opts WatchOptions) (*Watch, error) {
	if len(addresses) == 0 {
		return nil, errors.New("watch: no address")
	}
	for _, a := range addresses {
		if _, err := api.ParseAddress(a); err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
	}
	if opts.DeadAfter <= 0 {
		opts.DeadAfter = 20 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 10 * time.Second
	}
	opts.MaxBackoff = max(opts.MaxBackoff, opts.MinBackoff)
	w := &Watch{c: c, addrs: slices.Clone(addresses), opts: opts, events: make(chan Event, 64),
		done: make(chan struct{}), state: map[string][]api.Instance{}}
	go w.run(ctx)
	return w, nil
}

// Events delivers the watch's events; it is closed when the watch ends.
func (w *Watch) Events() <-chan Event { return w.events }

// Done is closed when the watch has ended.
func (w *Watch) Done() <-chan struct{} { return w.done }

// State returns the last known instances of every address the watch has
// seen with instances, as of the last event delivered.
func (w *Watch) State() map[string][]api.Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string][]api.Instance, len(w.state))
	for a, in := range w.state {
		out[a] = slices.Clone(in)
	}
	return out
}

func (w *Watch) run(ctx context.Context) {
	defer close(w.done)
	defer close(w.events)
	failures := 0
	for ctx.Err() == nil {
		err := w.connection(ctx, &failures)
		if ctx.Err() != nil {
			return
		}
		if !w.emit(ctx, Event{Type: Disconnected, Err: err}) {
			return
		}
		// Jittered doubling backoff: the first retry after a working
		// connection is quick.
		d := min(w.opts.MaxBackoff, w.opts.MinBackoff<<min(failures, 20))
		d = d/2 + rand.N(d/2+1)
		failures++
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// emit delivers e, unless ctx ends first.
func (w *Watch) emit(ctx context.Context, e Event) bool {
	select {
	case w.events <- e:
		return true
	case <-ctx.Done():
		return false
	}
}

// connection runs one websocket connection until it fails; failures is
// reset once the connection delivers a message.
func (w *Watch) connection(ctx context.Context, failures *int) error {
	q := url.Values{"address": w.addrs, "synced": {"true"}}
	if w.opts.Health != "" {
		q.Set("health", w.opts.Health)
	}
	w.mu.Lock()
	from := w.index
	w.mu.Unlock()
	if from > 0 {
		q.Set("index", strconv.FormatUint(from, 10))
	}
	u := "ws" + w.c.base[len("http"):] + "/v1/subscribe?" + q.Encode()
	conn, resp, err := w.c.dialer.DialContext(ctx, u, nil)
	if err != nil {
		if resp != nil {
			var e api.Error
			if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
				err = &Error{StatusCode: resp.StatusCode, Message: e.Error}
			}
			resp.Body.Close()
		}
		return err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()

	alive := func() { _ = conn.SetReadDeadline(time.Now().Add(w.opts.DeadAfter)) }
	alive()
	conn.SetPingHandler(func(data string) error {
		alive()
		return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
	})
	conn.SetReadLimit(64 << 20)

	seen := map[string]bool{} // addresses the agent named on this connection
	var index uint64          // the highest index of this connection
	for {
		_, raw, err := conn.ReadMessage()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		alive()
		var m api.Message
		if err := json.Unmarshal(raw, &m); err != nil {
			return fmt.Errorf("watch: a message from the agent: %w", err)
		}
		*failures = 0
		if m.Type == api.MessageSnapshot || m.Type == api.MessageUpdate {
			// Messages come in index order. A synced message's index is
			// the agent's at that moment, not what was sent: never resume
			// from it.
			index = max(index, m.Index)
		}
		e := Event{Address: m.Address, Index: m.Index, Instances: m.Instances}
		var gone []Event
		switch m.Type {
		case api.MessageSnapshot:
			e.Type = Snapshot
			e.Resynced = from > 0 // a resume answered with snapshots
			seen[m.Address] = true
		case api.MessageUpdate:
			e.Type = Update
			seen[m.Address] = true
		case api.MessageSynced:
			e = Event{Type: Synced, Index: m.Index}
			if !m.Resumed {
				// Snapshots of everything there is came: what the watch
				// held and the agent did not name is gone.
				w.mu.Lock()
				for a := range w.state {
					if !seen[a] {
						gone = append(gone, Event{Type: Update, Address: a, Index: m.Index, Resynced: true})
					}
				}
				w.mu.Unlock()
				slices.SortFunc(gone, func(a, b Event) int { return strings.Compare(a.Address, b.Address) })
			}
		default:
			continue // a message type this client does not know
		}
		for _, g := range append(gone, e) {
			w.mu.Lock()
			if g.Type == Snapshot || g.Type == Update {
				if len(g.Instances) == 0 {
					delete(w.state, g.Address)
				} else {
					w.state[g.Address] = g.Instances
				}
			}
			// The index to resume from: this connection's, which is below
			// the last one's when the agent restarted.
			if index > 0 {
				w.index = index
			}
			w.mu.Unlock()
			if !w.emit(ctx, g) {
				return ctx.Err()
			}
		}
	}
}
