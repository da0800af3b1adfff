package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// lpChangesPerSecond and lpWindow shape the changes of the long-poll
// section: check flips on random instances of the fleet, at this rate, for
// this long.
const (
	lpChangesPerSecond = 20
	lpWindow           = 15 * time.Second
)

// longPollSection holds cfg.longPolls long-polls on distinct addresses (the
// fleet's addresses, then services the fleet's jobs do not have, which wait
// just the same) while 20 changes a second land in Consul, and measures
// glimpse-agent's CPU meanwhile, against the same changes with no
// long-poll waiting. Each long-poll that returns is asked again from its
// new index, as a client does.
func (b *bench) longPollSection(ctx context.Context) error {
	n := b.cfg.longPolls
	addrs := make([]string, n)
	for i := range addrs {
		p, j := i%b.topo.products, (i/b.topo.products)%b.topo.jobs
		if round := i / (b.topo.products * b.topo.jobs); round == 0 {
			addrs[i] = glimpseAddress(p, j)
		} else {
			addrs[i] = strings.Replace(glimpseAddress(p, j), "http.", fmt.Sprintf("other%d.", round), 1)
		}
	}
	base := "http://" + b.g.httpAddr + "/v1/lookup/"
	tr := &http.Transport{MaxIdleConnsPerHost: n + 16, MaxIdleConns: n + 16, IdleConnTimeout: time.Minute}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	type lookup struct {
		Index uint64 `json:"index"`
	}
	get := func(ctx context.Context, u string) (uint64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return 0, err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return 0, fmt.Errorf("%s: %s", u, resp.Status)
		}
		var l lookup
		err = json.NewDecoder(resp.Body).Decode(&l)
		return l.Index, err
	}

	// The changes alone, with no long-poll waiting: the baseline.
	idle, _, err := b.lpChanges(ctx)
	if err != nil {
		return err
	}

	pctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var returned atomic.Int64
	var failed atomic.Value
	defer func() { stop(); wg.Wait() }()
	sem := make(chan struct{}, 256) // first lookups in flight
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			index, err := get(pctx, base+a)
			<-sem
			for err == nil {
				var next uint64
				next, err = get(pctx, base+a+"?index="+fmt.Sprint(index)+"&wait=5m")
				if err == nil {
					index = next
					returned.Add(1)
				}
			}
			if pctx.Err() == nil {
				failed.Store(err)
			}
		}()
	}
	// Wait until every long-poll waits in the agent.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		waiting, err := b.longPollsWaiting(ctx)
		if err != nil {
			return err
		}
		if waiting >= n {
			break
		}
		if e, _ := failed.Load().(error); e != nil {
			return fmt.Errorf("a long-poll failed: %w", e)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d long-polls waiting after 2 minutes", waiting, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	returned.Store(0)
	busy, changes, err := b.lpChanges(ctx)
	if err != nil {
		return err
	}
	got := returned.Load()
	if e, _ := failed.Load().(error); e != nil {
		return fmt.Errorf("a long-poll failed: %w", e)
	}
	perSec := func(d time.Duration) float64 { return float64(d) / float64(lpWindow) * 100 }
	logf("long-polls: glimpse-agent's CPU %.1f %% with %d long-polls waiting (%d returned for %d changes), %.1f %% with none",
		perSec(busy), n, got, changes, perSec(idle))
	var s strings.Builder
	fmt.Fprintf(&s, "## 4b. Long-polls\n\n")
	fmt.Fprintf(&s, "%d long-polls (`GET /v1/lookup/<address>?index=N&wait=5m`, one connection each) on distinct addresses: the fleet's %d, then services its jobs do not have, which wait just the same. Meanwhile %d check flips a second on random instances of the fleet for %v; each long-poll that returns is asked again from its new index. glimpse-agent's CPU over those %v, and with the same changes and no long-poll waiting:\n\n",
		n, min(n, b.topo.products*b.topo.jobs), lpChangesPerSecond, lpWindow, lpWindow)
	fmt.Fprintf(&s, "| long-polls waiting | changes | long-polls returned | glimpse-agent's CPU |\n|---|---|---|---|\n")
	fmt.Fprintf(&s, "| 0 | %d | 0 | %.1f %% of a CPU |\n", changes, perSec(idle))
	fmt.Fprintf(&s, "| %d | %d | %d | %.1f %% of a CPU |\n", n, changes, got, perSec(busy))
	b.rep.add("%s", s.String())
	return nil
}

// lpChanges flips checks of random instances, lpChangesPerSecond a second
// for lpWindow, each to critical and later back, and returns glimpse-agent's
// CPU time meanwhile and the changes made. Every check is passing again
// when it returns.
func (b *bench) lpChanges(ctx context.Context) (time.Duration, int, error) {
	type flip struct{ p, j int }
	var down []flip
	tick := time.NewTicker(time.Second / lpChangesPerSecond)
	defer tick.Stop()
	cpu0, err := cpuTime(b.g.pid())
	if err != nil {
		return 0, 0, err
	}
	end := time.Now().Add(lpWindow)
	changes := 0
	for time.Now().Before(end) {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
		var ops api.TxnOps
		if len(down) > 0 && changes%2 == 1 {
			f := down[0]
			down = down[1:]
			ops = b.topo.checkOps(f.p, f.j, 0, api.HealthPassing)
		} else {
			f := flip{rand.IntN(b.topo.products), rand.IntN(b.topo.jobs)}
			down = append(down, f)
			ops = b.topo.checkOps(f.p, f.j, 0, api.HealthCritical)
		}
		if err := txn(ctx, b.capi, ops); err != nil {
			return 0, 0, err
		}
		changes++
	}
	cpu1, err := cpuTime(b.g.pid())
	if err != nil {
		return 0, 0, err
	}
	for _, f := range down {
		if err := txn(ctx, b.capi, b.topo.checkOps(f.p, f.j, 0, api.HealthPassing)); err != nil {
			return 0, 0, err
		}
	}
	return cpu1 - cpu0, changes, nil
}

// longPollsWaiting reads glimpse-agent's gauge of long-polls waiting.
func (b *bench) longPollsWaiting(ctx context.Context) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+b.g.httpAddr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	const series = `glimpse_http_subscribers{kind="longpoll"} `
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no %s in glimpse-agent's metrics", strings.TrimSpace(series))
}
