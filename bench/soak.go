package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Markers around the soak's part of RESULTS.md, written by make soak and
// kept by make bench (and the other way round).
const (
	soakBegin = "<!-- soak:generated:begin -->"
	soakEnd   = "<!-- soak:generated:end -->"
)

// sample is glimpse-agent's own account of itself at one moment.
type sample struct {
	at                     time.Duration
	goroutines, fds        float64
	heapInuse, stacks, rss float64 // bytes
	dnsAnswered            float64
}

// soakSection runs mixed load against glimpse-agent for cfg.soak: DNS at a
// steady rate, websocket subscribers (one reconnecting every second),
// long-poll loops, and a stream of Consul changes. Every 10 s it samples
// goroutines, open fds, heap in use (after a collection) and RSS from the
// agent's /metrics; the figures must stay flat.
func (b *bench) soakSection(ctx context.Context) error {
	d := b.cfg.soak
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var changes, wsMsgs, polls, errs atomic.Int64
	fail := func(what string, err error) {
		if errs.Add(1) <= 5 {
			logf("soak: %s: %v", what, err)
		}
	}
	const rate = 10000
	perf := make(chan error, 1)
	go func() {
		_, err := b.dnsperf(ctx, b.g.dnsAddr, b.glimpseQueries, d, rate, false)
		perf <- err
	}()

	// Websocket subscribers on rotating job addresses; one reconnects each
	// second.
	const subscribers, longPolls = 200, 100
	addr := func(i int) string { return glimpseAddress(i%b.topo.products, (i/b.topo.products)%b.topo.jobs) }
	for i := 0; i < subscribers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := 0; ctx.Err() == nil; k++ {
				u := "ws://" + b.g.httpAddr + "/v1/subscribe?" + url.Values{"address": {addr(i + k)}}.Encode()
				c, _, err := websocket.DefaultDialer.DialContext(ctx, u, nil)
				if err != nil {
					if ctx.Err() == nil {
						fail("subscribe", err)
						time.Sleep(time.Second)
					}
					continue
				}
				life := time.Duration(subscribers) * time.Second
				if k == 0 {
					life = time.Duration(i+1) * time.Second // staggered: one reconnect a second
				}
				stop := time.AfterFunc(life, func() { c.Close() })
				go func() { <-ctx.Done(); c.Close() }()
				for {
					var m wsMsg
					if err := c.ReadJSON(&m); err != nil {
						break
					}
					wsMsgs.Add(1)
				}
				stop.Stop()
			}
		}()
	}
	// Long-poll loops.
	for i := 0; i < longPolls; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var index uint64
			for ctx.Err() == nil {
				var r struct{ Index uint64 }
				u := fmt.Sprintf("http://%s/v1/lookup/%s?index=%d&wait=5s", b.g.httpAddr, addr(i*7), index)
				if err := getJSON(ctx, u, &r); err != nil {
					if ctx.Err() == nil {
						fail("long-poll", err)
						time.Sleep(time.Second)
					}
					continue
				}
				index = r.Index
				polls.Add(1)
			}
		}()
	}
	// Consul churn: 20 changes a second, rotating over the products.
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			p := (k / 4) % b.topo.products
			ops, _, _ := b.change(p, k%4)
			if err := txn(ctx, b.capi, ops); err != nil {
				if ctx.Err() == nil {
					fail("consul change", err)
				}
				continue
			}
			changes.Add(1)
		}
	}()

	var samples []sample
	began := time.Now()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for time.Since(began) < d {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		s, err := b.sampleGlimpse()
		if err != nil {
			return err
		}
		s.at = time.Since(began)
		samples = append(samples, s)
		logf("soak %v: goroutines %.0f, fds %.0f, heap %.1f MiB, RSS %.1f MiB; %d changes, %d ws messages, %d long-polls answered",
			s.at.Round(time.Second), s.goroutines, s.fds, s.heapInuse/(1<<20), s.rss/(1<<20), changes.Load(), wsMsgs.Load(), polls.Load())
	}
	cancel()
	wg.Wait()
	<-perf
	return b.rep.soak(d, rate, samples, changes.Load(), wsMsgs.Load(), polls.Load(), errs.Load(), subscribers, longPolls)
}

// sampleGlimpse reads the agent's process and Go runtime gauges, after a
// garbage collection (through /debug/pprof/heap?gc=1) so that the heap is
// what the agent holds, not the garbage of the moment.
func (b *bench) sampleGlimpse() (sample, error) {
	if resp, err := http.Get("http://" + b.g.httpAddr + "/debug/pprof/heap?gc=1"); err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return readMetrics(b.g)
}

// readMetrics reads g's process and Go runtime gauges from its /metrics.
func readMetrics(g *glimpse) (sample, error) {
	m, err := scrapeMetrics(g)
	if err != nil {
		return sample{}, err
	}
	s := sample{
		goroutines: m["go_goroutines"],
		fds:        m["process_open_fds"],
		heapInuse:  m["go_memstats_heap_inuse_bytes"],
		stacks:     m["go_memstats_stack_inuse_bytes"],
		rss:        m["process_resident_memory_bytes"],
	}
	for name, v := range m {
		if strings.HasPrefix(name, "glimpse_dns_requests_total{") {
			s.dnsAnswered += v
		}
	}
	return s, nil
}

// scrapeMetrics reads g's /metrics: every series, by its name and labels
// as written ("glimpse_cache_instances{zone=\"dc1\"}"), to its value.
func scrapeMetrics(g *glimpse) (map[string]float64, error) {
	resp, err := http.Get("http://" + g.httpAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			out[name] = v
		}
	}
	return out, sc.Err()
}

// soak writes the soak's block of RESULTS.md: a row per minute (the last
// sample of it) and whether each figure stayed flat: the last minute's
// value within 10 % (and a small absolute slack) of the second minute's,
// after the first minute's warm-up.
func (r *report) soak(d time.Duration, rate int, samples []sample, changes, wsMsgs, polls, errs int64, subscribers, longPolls int) error {
	var g strings.Builder
	fmt.Fprintf(&g, "%s\n## Soak: %s\n\n", soakBegin, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&g, "- Command: `make soak`, which ran `%s`\n", commandLine())
	fmt.Fprintf(&g, "- Load for %v: DNS at %d qps (dnsperf), %d websocket subscribers (one reconnecting each second), %d long-poll loops (wait 5 s), "+
		"20 Consul changes a second (check flips, registrations, deregistrations) over %d products.\n", d, rate, subscribers, longPolls, r.cfg.products)
	fmt.Fprintf(&g, "- Done: %d Consul changes, %d websocket messages received, %d long-polls answered; %d client errors.\n\n", changes, wsMsgs, polls, errs)
	g.WriteString("| time | goroutines | open fds | heap in use | RSS | DNS answered (total) |\n|---|---|---|---|---|---|\n")
	for i, s := range samples {
		if (i+1)%6 != 0 && i != len(samples)-1 {
			continue
		}
		fmt.Fprintf(&g, "| %v | %.0f | %.0f | %.1f MiB | %.1f MiB | %.0f |\n", s.at.Round(time.Second), s.goroutines, s.fds, s.heapInuse/(1<<20), s.rss/(1<<20), s.dnsAnswered)
	}
	if len(samples) >= 12 {
		early, late := samples[11], samples[len(samples)-1] // after 2 minutes, the end
		g.WriteString("\n| figure | at 2 min | at the end | |\n|---|---|---|---|\n")
		for _, f := range []struct {
			name        string
			early, late float64
			slack       float64
			unit        string
		}{
			{"goroutines", early.goroutines, late.goroutines, 20, ""},
			{"open fds", early.fds, late.fds, 20, ""},
			{"heap in use", early.heapInuse / (1 << 20), late.heapInuse / (1 << 20), 4, " MiB"},
			{"RSS", early.rss / (1 << 20), late.rss / (1 << 20), 8, " MiB"},
		} {
			flat := f.late <= f.early*1.1+f.slack
			state := "flat"
			if !flat {
				state = "**grew**"
			}
			fmt.Fprintf(&g, "| %s | %.1f%s | %.1f%s | %s |\n", f.name, f.early, f.unit, f.late, f.unit, state)
			r.check("soak: "+f.name, "flat", fmt.Sprintf("%.1f%s → %.1f%s", f.early, f.unit, f.late, f.unit), flat)
		}
	}
	g.WriteString(soakEnd + "\n")
	return replaceBlock(r.cfg.out, soakBegin, soakEnd, g.String())
}
