package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"
	"golang.org/x/sync/errgroup"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// The fleet of the on-demand section: a datacenter of thousands of
// products, as real ones have, with few instances each.
const (
	odProducts  = 5000
	odInstances = 3
	// odChanges is how many check flips the propagation measurement
	// makes, over up to odWatched addresses in use; it stops early after
	// odMaxTimeouts flips that did not show within 10 s.
	odChanges     = 100
	odWatched     = 64
	odMaxTimeouts = 10
)

// odRow is one host of the on-demand section: one count of products read.
type odRow struct {
	products                  int
	https                     bool // glimpse reads Consul over HTTPS, so HTTP/2
	ready                     time.Duration
	first                     []float64 // ms, one per product read
	wrong                     int       // first answers without every instance
	conns, peak, budget       float64   // glimpse's connections to Consul: at the end, at most, allowed
	hostConns                 int       // connections to Consul from this host, at most (sampled)
	neighbourOK, neighbourBad int64
	rssKiB                    int64
	// held, read: propagation (ms) to a websocket subscriber of products
	// it holds, and to DNS for products only read; and the changes that
	// did not show within 10 s.
	held, read                 []float64
	heldTimeouts, readTimeouts int
	waiting                    float64 // loops waiting for a blocking read at the end
}

// onDemandSection measures the design of on-demand watching at the scale
// it is for: a Consul dev agent with its default limits (200 connections
// per client address) holding odProducts products of odInstances
// instances, and for each of 20, 200 and every product read, a fresh
// glimpse-agent with its defaults (a budget of 100 connections). For each:
// the time to ready; the first query of each product read (DNS SRV, 16 at a
// time); glimpse's connections to Consul and every connection to Consul
// from this host while another client opens one every 50 ms, as the Consul
// CLI would; the RSS with those products in use; and the propagation of
// check flips on products in use to a websocket subscriber.
func (b *bench) onDemandSection(ctx context.Context) error {
	// The other sections' Consul, with up to 100,000 instances by now, is
	// paused meanwhile: its background work is no part of this host.
	if err := syscall.Kill(b.consul.PID(), syscall.SIGSTOP); err != nil {
		return err
	}
	defer syscall.Kill(b.consul.PID(), syscall.SIGCONT)
	// Nothing is pinned here, as on a host. The sections before may have
	// left this program on the client CPUs, and the Consul and agents
	// started below would inherit that: all of them on one CPU, which
	// made every first query and Consul's registrations twice as slow as
	// in a run of this section alone.
	if err := b.unpin(os.Getpid()); err != nil {
		return err
	}
	// Nor is the garbage of the sections before: collected now, it does
	// not take CPU from the measurements below.
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	logf("ondemand: the bench itself holds %d MiB of heap, %d goroutines", ms.HeapAlloc>>20, runtime.NumGoroutine())
	ca, err := testconsul.StartE(ctx, testconsul.Options{Dev: true, Datacenter: "dc1", HTTPS: true, ExtraArgs: []string{"-log-level", "warn"}}, logf)
	if err != nil {
		return err
	}
	defer ca.Close()
	topo := topology{products: odProducts, jobs: 1, perJob: odInstances}
	began := time.Now()
	c := ca.Client()
	if err := topo.register(ctx, c, 0); err != nil {
		return err
	}
	logf("ondemand: registered %d products × %d instances with a Consul of default limits in %v", odProducts, odInstances, time.Since(began).Round(time.Millisecond))
	var rows []odRow
	for _, host := range []struct {
		k     int
		https bool
	}{{20, false}, {200, false}, {odProducts, false}, {200, true}, {odProducts, true}} {
		k := host.k
		row, err := b.onDemandHost(ctx, ca, topo, k, host.https)
		if err != nil {
			return fmt.Errorf("%d products read (https %v): %w", k, host.https, err)
		}
		logf("ondemand: %d read over %s: ready %v, first query p50 %.2f ms p99 %.2f ms (%d wrong), connections %v (peak %v of %v; host %d), RSS %d KiB, "+
			"propagation held p50 %.1f ms p99 %s, read p50 %.1f ms p99 %s",
			k, row.proto(), row.ready.Round(time.Millisecond), pct(row.first, 50), pct(row.first, 99), row.wrong, row.conns, row.peak, row.budget, row.hostConns,
			row.rssKiB, pct(row.held, 50), p99(row.held, row.heldTimeouts), pct(row.read, 50), p99(row.read, row.readTimeouts))
		rows = append(rows, row)
	}
	b.rep.onDemand(rows)
	return nil
}

// proto names how the row's agent reads Consul.
func (r odRow) proto() string {
	if r.https {
		return "HTTPS (HTTP/2)"
	}
	return "HTTP/1.1"
}

// onDemandHost is one row: a fresh agent reading k products, from Consul's
// HTTP or (https) HTTPS listener.
func (b *bench) onDemandHost(ctx context.Context, ca *testconsul.Agent, topo topology, k int, https bool) (odRow, error) {
	row := odRow{products: k, https: https}
	nb := startNeighbour(ca)
	defer nb.halt()

	start := time.Now()
	addr, tag := ca.HTTPAddr(), fmt.Sprint("ondemand-", k)
	var flags []string
	if https {
		addr, tag = "https://"+ca.HTTPSAddr(), tag+"-https"
		flags = []string{"-consul.ca-file", ca.CAFile()}
	}
	g, err := b.startGlimpse(ctx, addr, tag, flags...)
	if err != nil {
		return row, err
	}
	defer g.stop()
	if err := g.poll(ctx, 60*time.Second, 2*time.Millisecond, func() bool {
		resp, err := http.Get("http://" + g.httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "not ready"); err != nil {
		return row, err
	}
	row.ready = time.Since(start)

	// The products read, spread over the fleet.
	products := make([]int, k)
	for i := range products {
		products[i] = i * (topo.products / k)
	}
	var mu sync.Mutex
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(16)
	for _, p := range products {
		eg.Go(func() error {
			m := new(mdns.Msg)
			m.SetQuestion(glimpseName(p, 0)+".", mdns.TypeSRV)
			t0 := time.Now()
			r, _, err := (&mdns.Client{Timeout: 10 * time.Second}).ExchangeContext(ectx, m, g.dnsAddr)
			d := time.Since(t0)
			if err != nil {
				return fmt.Errorf("first query of %s: %w", productName(p), err)
			}
			mu.Lock()
			defer mu.Unlock()
			row.first = append(row.first, float64(d)/float64(time.Millisecond))
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != topo.perJob {
				row.wrong++
			}
			return nil
		})
	}
	if err := eg.Wait(); err != nil {
		return row, err
	}

	// Propagation: to a subscriber of up to odWatched of the products read,
	// and to DNS for as many others that are only read.
	n := min(k/2, odWatched)
	if row.held, row.heldTimeouts, err = odSubscribed(ctx, g, ca.Client(), topo, products[:n]); err != nil {
		return row, err
	}
	if row.read, row.readTimeouts, err = odRead(ctx, g, ca.Client(), topo, products[n:2*n]); err != nil {
		return row, err
	}

	m, err := scrapeMetrics(g)
	if err != nil {
		return row, err
	}
	row.conns, row.peak, row.budget = m["glimpse_consul_connections"], m["glimpse_consul_connections_peak"], m["glimpse_consul_connections_limit"]
	row.waiting = m["glimpse_watch_loops_waiting"]
	if row.rssKiB, err = settledRSS(g); err != nil {
		return row, err
	}
	nb.halt()
	row.hostConns = int(nb.mostConns.Load())
	row.neighbourOK, row.neighbourBad = nb.served.Load(), nb.refused.Load()
	return row, nil
}

// odFlips flips the check of instance 0 of each product in turn,
// odChanges times (fewer after odMaxTimeouts timeouts): down, then back up.
// For each it waits until shown(p, want) reports the product with want
// healthy instances (at most 10 s), and returns the times (ms) from the
// start of each Consul write to then, and how many timed out. Every check
// it flipped is passing again when it returns.
func odFlips(ctx context.Context, c *api.Client, topo topology, products []int, shown func(p, want int, deadline time.Time) (time.Time, error)) ([]float64, int, error) {
	defer func() {
		var ops api.TxnOps
		for _, p := range products {
			ops = append(ops, topo.checkOps(p, 0, 0, api.HealthPassing)...)
		}
		for len(ops) > 0 {
			batch := ops[:min(txnOps, len(ops))]
			ops = ops[len(batch):]
			if err := txn(context.Background(), c, batch); err != nil {
				logf("ondemand: resetting the checks: %v", err)
			}
		}
	}()
	var lat []float64
	timeouts := 0
	for i := 0; i < odChanges && timeouts < odMaxTimeouts; i++ {
		p := products[i%len(products)]
		status, want := api.HealthCritical, topo.perJob-1
		if (i/len(products))%2 == 1 {
			status, want = api.HealthPassing, topo.perJob
		}
		t0 := time.Now()
		if err := txn(ctx, c, topo.checkOps(p, 0, 0, status)); err != nil {
			return nil, 0, err
		}
		at, err := shown(p, want, t0.Add(10*time.Second))
		switch {
		case err != nil:
			return nil, 0, err
		case at.IsZero():
			timeouts++
		default:
			lat = append(lat, float64(at.Sub(t0))/float64(time.Millisecond))
		}
	}
	return lat, timeouts, nil
}

// odSubscribed measures propagation to a websocket subscriber of products:
// products held, whose changes are pushed.
func odSubscribed(ctx context.Context, g *glimpse, c *api.Client, topo topology, products []int) ([]float64, int, error) {
	q := url.Values{}
	for _, p := range products {
		q.Add("address", glimpseAddress(p, 0))
	}
	ws, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+g.httpAddr+"/v1/subscribe?"+q.Encode(), nil)
	if err != nil {
		return nil, 0, fmt.Errorf("subscribe: %w", err)
	}
	defer ws.Close()
	type event struct {
		msg wsMsg
		at  time.Time
	}
	events := make(chan event, 1024)
	go func() {
		defer close(events)
		for {
			var m wsMsg
			if err := ws.ReadJSON(&m); err != nil {
				return
			}
			events <- event{m, time.Now()}
		}
	}()
	for seen := 0; seen < len(products); {
		select {
		case e, ok := <-events:
			if !ok {
				return nil, 0, fmt.Errorf("websocket closed before the snapshots")
			}
			if e.msg.Type == "snapshot" {
				seen++
			}
		case <-time.After(10 * time.Second):
			return nil, 0, fmt.Errorf("websocket: %d of %d snapshots", seen, len(products))
		}
	}
	return odFlips(ctx, c, topo, products, func(p, want int, deadline time.Time) (time.Time, error) {
		timeout := time.After(time.Until(deadline))
		for {
			select {
			case e, ok := <-events:
				if !ok {
					return time.Time{}, fmt.Errorf("websocket closed")
				}
				if e.msg.Address == glimpseAddress(p, 0) && len(e.msg.Instances) == want {
					return e.at, nil
				}
			case <-timeout:
				return time.Time{}, nil
			}
		}
	})
}

// odRead measures propagation to DNS for products only read, not held: an
// SRV query every millisecond until the answer shows the change.
func odRead(ctx context.Context, g *glimpse, c *api.Client, topo topology, products []int) ([]float64, int, error) {
	cl := &mdns.Client{Timeout: time.Second}
	return odFlips(ctx, c, topo, products, func(p, want int, deadline time.Time) (time.Time, error) {
		m := new(mdns.Msg)
		m.SetQuestion(glimpseName(p, 0)+".", mdns.TypeSRV)
		for time.Now().Before(deadline) {
			r, _, err := cl.ExchangeContext(ctx, m, g.dnsAddr)
			if err == nil && r.Rcode == mdns.RcodeSuccess && len(r.Answer) == want {
				return time.Now(), nil
			}
			if ctx.Err() != nil {
				return time.Time{}, ctx.Err()
			}
			time.Sleep(time.Millisecond)
		}
		return time.Time{}, nil
	})
}

// neighbour is another client of the same Consul agent on this host, as
// the Consul CLI is: a new connection per request, every 50 ms, until
// halt. It counts what Consul served and refused, and samples the
// connections open to Consul from this host meanwhile.
type neighbour struct {
	served, refused, mostConns atomic.Int64
	stop, done                 chan struct{}
	once                       sync.Once
}

func startNeighbour(ca *testconsul.Agent) *neighbour {
	n := &neighbour{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	go func() {
		defer close(n.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-n.stop:
				return
			case <-tick.C:
			}
			c, err := ca.HTTPConnections()
			cs, errs := ca.HTTPSConnections()
			if err == nil && errs == nil && int64(c+cs) > n.mostConns.Load() {
				n.mostConns.Store(int64(c + cs))
			}
			resp, err := client.Get("http://" + ca.HTTPAddr() + "/v1/status/leader")
			if err == nil {
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != http.StatusOK {
				n.refused.Add(1)
			} else {
				n.served.Add(1)
			}
		}
	}()
	return n
}

func (n *neighbour) halt() {
	n.once.Do(func() { close(n.stop) })
	<-n.done
}

// p99 is the 99th percentile of a propagation measurement, or how many of
// its changes did not show within 10 s.
func p99(lat []float64, timeouts int) string {
	if timeouts > 0 {
		return fmt.Sprintf("over 10 s (%d of %d changes timed out)", timeouts, timeouts+len(lat))
	}
	return fmt.Sprintf("%.1f ms", pct(lat, 99))
}

// onDemand writes the on-demand section and checks its targets.
func (r *report) onDemand(rows []odRow) {
	var s strings.Builder
	fmt.Fprintf(&s, "## 6. On demand: %d products, Consul's default limits\n\n", odProducts)
	fmt.Fprintf(&s, "A Consul dev agent with its default limits (200 HTTP connections per client address, its HTTP and HTTPS listeners together) holds %d products × %d instances. "+
		"For each row a fresh glimpse-agent with its defaults (`-consul.max-conns 100`, nothing pinned) reads that many products, spread over the fleet, from Consul's HTTP listener (HTTP/1.1: a connection per blocking read) "+
		"or its HTTPS listener (HTTP/2: up to 100 blocking reads per connection): "+
		"one DNS SRV query each, 16 at a time (first query: from sending it to the answer, which waits for the product's first result from Consul). "+
		"Meanwhile another client opens a new connection to the same Consul agent every 50 ms, as the Consul CLI does, and the connections to Consul from this host are sampled then. "+
		"RSS after the agent returned its free memory to the OS, with those products in use. The other sections' Consul is paused (SIGSTOP) meanwhile. "+
		"Propagation: %d check flips, each timed from the start of its Consul write, (a) on up to %d of the products read, held by a websocket subscriber, to its update; "+
		"(b) on as many others, only read, to a DNS answer polled every millisecond (at most 10 s; a measurement stops after %d flips that did not show by then).\n\n",
		odProducts, odInstances, odChanges, odWatched, odMaxTimeouts)
	s.WriteString("| products read | Consul over | ready | first query p50 / p99 | wrong first answers | glimpse's connections (end / peak / budget) | most connections to Consul from the host | other client served / refused | RSS | propagation, held: p50 / p99 | propagation, read: p50 / p99 | loops waiting for a turn |\n")
	s.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range rows {
		fmt.Fprintf(&s, "| %d | %s | %v | %.2f / %.2f ms | %d | %.0f / %.0f / %.0f | %d | %d / %d | %.1f MiB | %.1f ms / %s | %.1f ms / %s | %.0f |\n",
			row.products, row.proto(), row.ready.Round(time.Millisecond), pct(row.first, 50), pct(row.first, 99), row.wrong,
			row.conns, row.peak, row.budget, row.hostConns, row.neighbourOK, row.neighbourBad,
			float64(row.rssKiB)/1024, pct(row.held, 50), p99(row.held, row.heldTimeouts), pct(row.read, 50), p99(row.read, row.readTimeouts), row.waiting)
	}
	s.WriteString("\n")
	r.add("%s", s.String())
	for _, row := range rows {
		what := fmt.Sprintf("on demand, %d read over %s: ", row.products, row.proto())
		r.check(what+"ready", "≤ 10 s", row.ready.Round(time.Millisecond).String(), row.ready <= 10*time.Second)
		r.check(what+"first query p99, every answer right", "≤ 50 ms", fmt.Sprintf("%.2f ms, %d wrong", pct(row.first, 99), row.wrong), pct(row.first, 99) <= 50 && row.wrong == 0)
		r.check(what+"propagation p99, subscriber", "≤ 50 ms", p99(row.held, row.heldTimeouts), pct(row.held, 99) <= 50 && row.heldTimeouts == 0)
		r.check(what+"propagation p99, DNS of products only read", "≤ 50 ms", p99(row.read, row.readTimeouts), pct(row.read, 99) <= 50 && row.readTimeouts == 0)
		r.check(what+"connections within the budget, other client never refused", fmt.Sprintf("≤ %.0f, 0 refused", row.budget),
			fmt.Sprintf("peak %.0f, %d refused", row.peak, row.neighbourBad), row.peak <= row.budget && row.neighbourBad == 0)
		if row.products == 20 {
			r.check(what+"RSS", "≤ 40 MiB", fmt.Sprintf("%.1f MiB", float64(row.rssKiB)/1024), row.rssKiB <= 40*1024)
		}
	}
}
