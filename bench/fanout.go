package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"
)

// fanoutSection opens cfg.subscribers websocket subscriptions on one
// address, measures glimpse-agent's memory per idle subscriber, then makes
// one change and times until the last subscriber has it.
func (b *bench) fanoutSection(ctx context.Context) error {
	n := b.cfg.subscribers
	p, j := b.topo.products-1, min(1, b.topo.jobs-1)
	addr := glimpseAddress(p, j)
	u := "ws://" + b.g.httpAddr + "/v1/subscribe?" + url.Values{"address": {addr}}.Encode()

	before, err := settledRSS(b.g)
	if err != nil {
		return err
	}
	conns := make([]*websocket.Conn, n)
	got := make([]atomic.Int64, n) // unix nanoseconds of the update, 0 until then
	var arrived atomic.Int64
	allArrived := make(chan struct{})
	var snapshots sync.WaitGroup
	snapshots.Add(n)
	dialer := &websocket.Dialer{HandshakeTimeout: 30 * time.Second, ReadBufferSize: 1024, WriteBufferSize: 1024}
	began := time.Now()
	// The first failure stops the other dials (each may take the whole
	// handshake timeout when the agent accepts no more).
	dials, dctx := errgroup.WithContext(ctx)
	dials.SetLimit(64)
	for i := range conns {
		dials.Go(func() error {
			c, _, err := dialer.DialContext(dctx, u, nil)
			if err != nil {
				snapshots.Done()
				return fmt.Errorf("subscriber %d: %w", i, err)
			}
			conns[i] = c
			go func() {
				snap := false
				for {
					var m wsMsg
					if err := c.ReadJSON(&m); err != nil {
						if !snap {
							snapshots.Done()
						}
						return
					}
					if m.Type == "snapshot" && !snap {
						snap = true
						snapshots.Done()
					}
					if m.Type == "update" && len(m.Instances) == b.topo.perJob-1 &&
						got[i].CompareAndSwap(0, time.Now().UnixNano()) && // the first one
						arrived.Add(1) == int64(n) {
						close(allArrived)
					}
				}
			}()
			return nil
		})
	}
	dialErr := dials.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	snapDone := make(chan struct{})
	go func() { snapshots.Wait(); close(snapDone) }()
	select {
	case <-snapDone:
	case <-time.After(60 * time.Second):
		return fmt.Errorf("fan-out: not every subscriber had its snapshot after 60 s")
	}
	if dialErr != nil {
		return dialErr
	}
	logf("fan-out: %d subscribers connected with their snapshots in %v", n, time.Since(began).Round(time.Millisecond))
	after, err := settledRSS(b.g)
	if err != nil {
		return err
	}
	perSub := float64(after-before) / float64(n)

	ops := b.topo.checkOps(p, j, 0, api.HealthCritical)
	t0 := time.Now()
	if err := txn(ctx, b.capi, ops); err != nil {
		return err
	}
	select {
	case <-allArrived:
	case <-time.After(10 * time.Second):
	}
	var last time.Duration
	received := 0
	var lats []float64
	for i := range got {
		if t := got[i].Load(); t != 0 {
			received++
			d := time.Duration(t - t0.UnixNano())
			last = max(last, d)
			lats = append(lats, float64(d.Microseconds())/1000)
		}
	}
	// Back to passing, for the sections after this one.
	if err := txn(ctx, b.capi, b.topo.checkOps(p, j, 0, api.HealthPassing)); err != nil {
		return err
	}
	logf("fan-out: %d of %d notified, last after %v; RSS %d → %d KiB: %.1f KiB per idle subscriber", received, n, last.Round(time.Millisecond), before, after, perSub)
	var s strings.Builder
	fmt.Fprintf(&s, "## 4. Fan-out\n\n")
	fmt.Fprintf(&s, "%d websocket subscribers (gorilla/websocket clients in the harness) on `%s`. glimpse-agent's RSS went from %d KiB before they connected to %d KiB with all of them connected and idle (each figure after the agent collected garbage and returned its free memory to the OS): "+
		"**%.1f KiB per idle subscriber**. Then one check went critical in Consul: %d of %d subscribers had the update; the first after %.1f ms, half after %.1f ms, **the last after %.1f ms** (from the start of the Consul write).\n",
		n, addr, before, after, perSub, received, n, pct(lats, 0), pct(lats, 50), float64(last.Microseconds())/1000)
	b.rep.add("%s", s.String())
	b.rep.check(fmt.Sprintf("%d subscribers notified", n), "all within 1 s", fmt.Sprintf("%d in %.0f ms", received, float64(last.Microseconds())/1000), received == n && last <= time.Second)
	b.rep.check("RSS per idle subscriber", "≤ 16 KiB", fmt.Sprintf("%.1f KiB", perSub), perSub <= 16)
	return nil
}
