package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/rugby110/glimpse/internal/testconsul"
)

// scaleRow is one size of the scale section.
type scaleRow struct {
	instances, products int
	sync                time.Duration
	rssKiB              int64
	perInstance         float64 // KiB above the empty agent's RSS
	qps                 []float64
	consulRead          time.Duration // a plain client reading every product's health
	memStats            string        // the Go runtime's own account of the RSS
	syncProfile         string        // CPU during the first sync (largest size only)
	heapProfile         string        // heap in use after it
}

// scaleSection starts a fresh glimpse-agent at each size and measures the
// time to its first full sync, its memory per cached instance and its DNS
// rate at that size.
func (b *bench) scaleSection(ctx context.Context) error {
	base, err := b.emptyRSS(ctx)
	if err != nil {
		return err
	}
	logf("scale: an agent with no instances holds %d KiB", base)
	var rows []scaleRow
	for _, size := range b.cfg.scale {
		products := size / (b.topo.jobs * b.topo.perJob)
		if products < b.topo.products {
			logf("scale: %d instances is below the registered %d; skipped", size, b.topo.size())
			continue
		}
		if products > b.topo.products {
			from := b.topo.products
			b.topo.products = products
			began := time.Now()
			if err := b.topo.register(ctx, b.capi, from); err != nil {
				return err
			}
			logf("scale: registered up to %d instances in %v", b.topo.size(), time.Since(began).Round(time.Millisecond))
		}
		// Every size with the same placement: nothing pinned.
		if err := b.unpin(b.consul.PID(), os.Getpid()); err != nil {
			return err
		}
		largest := size == b.cfg.scale[len(b.cfg.scale)-1]
		row, err := b.measureSize(ctx, size, products, base, largest)
		if err != nil {
			return err
		}
		if err := b.unpin(b.consul.PID()); err != nil {
			return err
		}
		if largest {
			// The CPU profile of a first sync, from a start of its own:
			// the profiler's cost stays out of the timed one.
			if row.syncProfile, err = b.profileSync(ctx, size); err != nil {
				return err
			}
		}
		logf("scale: %d instances: Consul serves every product's health in %v; first sync %v, RSS %d KiB (%.2f KiB per instance), %.0f qps", size, row.consulRead.Round(time.Millisecond), row.sync.Round(time.Millisecond), row.rssKiB, row.perInstance, median(row.qps))
		rows = append(rows, row)
	}
	var s strings.Builder
	fmt.Fprintf(&s, "## 5. Scale\n\n")
	fmt.Fprintf(&s, "A fresh glimpse-agent per size, against the same Consul dev agent. First sync: from starting the process until `/v1/zones` shows the local zone synced with every instance. "+
		"For reference, the time Consul takes to answer the same reads to a plain client (this harness, 64 requests at a time, "+
		"`/v1/health/service/<product>?stale` for every product), with no glimpse-agent running. "+
		"RSS after that (after the agent collected garbage and returned its free memory to the OS), less the %d KiB of an agent synced on an empty Consul, per instance. DNS: the same query mix as section 1 over every job address of that size, median of %d runs, with glimpse-agent on the server CPUs and Consul paused (SIGSTOP) meanwhile, so that its background work at this size does not share glimpse's CPU.\n\n", base, b.cfg.runs)
	s.WriteString("| instances | products | first sync | Consul's reads alone | RSS | RSS per instance | DNS qps |\n|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&s, "| %d | %d | %.2f s | %.2f s | %.1f MiB | %.2f KiB | %.0f |\n", r.instances, r.products, r.sync.Seconds(), r.consulRead.Seconds(), float64(r.rssKiB)/1024, r.perInstance, median(r.qps))
	}
	for _, r := range rows {
		if r.memStats != "" {
			fmt.Fprintf(&s, "\n%d instances, the Go runtime's account: %s.\n", r.instances, r.memStats)
		}
	}
	for _, r := range rows {
		for _, p := range []struct{ what, top string }{{"CPU profile of a first sync (a start of its own, not the timed one)", r.syncProfile}, {"heap in use after the sync", r.heapProfile}} {
			if p.top != "" {
				fmt.Fprintf(&s, "\n<details><summary>%d instances: %s</summary>\n\n```\n%s```\n</details>\n", r.instances, p.what, p.top)
			}
		}
	}
	b.rep.add("%s", s.String())
	if len(rows) > 0 {
		r := rows[len(rows)-1]
		b.rep.check(fmt.Sprintf("RSS per cached instance at %d", r.instances), "≤ 2 KiB", fmt.Sprintf("%.2f KiB", r.perInstance), r.perInstance <= 2)
		b.rep.check(fmt.Sprintf("first sync of %d instances", r.instances), "≤ 10 s", fmt.Sprintf("%.2f s", r.sync.Seconds()), r.sync <= 10*time.Second)
	}
	return nil
}

// measureSize times a fresh glimpse-agent's first sync of size instances,
// reads its memory and runs DNS against it; with largest, it keeps a heap
// profile too.
func (b *bench) measureSize(ctx context.Context, size, products int, base int64, largest bool) (scaleRow, error) {
	row := scaleRow{instances: size, products: products}
	var err error
	if row.consulRead, err = b.readAll(ctx, products); err != nil {
		return row, err
	}
	began := time.Now()
	g, err := b.startGlimpse(ctx, b.consul.HTTPAddr(), fmt.Sprint("scale-", size), wholeZone(products)...)
	if err != nil {
		return row, err
	}
	defer g.stop()
	synced, err := b.waitSynced(ctx, g, size, 300*time.Second)
	if err != nil {
		return row, err
	}
	row.sync = synced.Sub(began)
	if row.rssKiB, err = settledRSS(g); err != nil {
		return row, err
	}
	if largest {
		row.heapProfile = b.pprof(ctx, g, "heap", fmt.Sprintf("scale-%d-heap.pprof", size), "-sample_index=inuse_space")
	}
	row.memStats = memBreakdown(g)
	row.perInstance = float64(row.rssKiB-base) / float64(size)
	qf := filepath.Join(b.work, fmt.Sprint("scale-", size, ".queries"))
	if err := os.WriteFile(qf, []byte(b.topo.queryLines(glimpseName)), 0o644); err != nil {
		return row, err
	}
	if err := b.placeForDNS(g); err != nil {
		return row, err
	}
	// Consul's own background work grows with the catalog; paused for
	// these runs, it does not share glimpse's CPU. glimpse answers from
	// memory either way.
	syscall.Kill(b.consul.PID(), syscall.SIGSTOP)
	defer syscall.Kill(b.consul.PID(), syscall.SIGCONT)
	for r := 0; r < b.cfg.runs; r++ {
		res, err := b.dnsperf(ctx, g.dnsAddr, qf, b.cfg.duration, 0, false)
		if err != nil {
			return row, err
		}
		row.qps = append(row.qps, res.qps)
	}
	return row, nil
}

// profileSync starts a fresh glimpse-agent and takes a CPU profile of its
// first sync.
func (b *bench) profileSync(ctx context.Context, size int) (string, error) {
	g, err := b.startGlimpse(ctx, b.consul.HTTPAddr(), fmt.Sprint("profile-", size), wholeZone(size/(b.topo.jobs*b.topo.perJob))...)
	if err != nil {
		return "", err
	}
	defer g.stop()
	prof := make(chan string, 1)
	go func() { prof <- b.pprof(ctx, g, "profile?seconds=10", fmt.Sprintf("scale-%d-sync.pprof", size), "") }()
	if _, err := b.waitSynced(ctx, g, size, 300*time.Second); err != nil {
		return "", err
	}
	return <-prof, nil
}

// readAll reads every product's health from Consul as a plain client
// would, 64 requests at a time, and returns how long that took.
func (b *bench) readAll(ctx context.Context, products int) (time.Duration, error) {
	began := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(64)
	for p := 0; p < products; p++ {
		g.Go(func() error {
			_, _, err := b.capi.Health().Service(productName(p), "", false, (&api.QueryOptions{AllowStale: true}).WithContext(gctx))
			return err
		})
	}
	err := g.Wait()
	return time.Since(began), err
}

// memBreakdown returns the heap in use, the goroutine stacks and the
// goroutine count of g, from its /metrics.
func memBreakdown(g *glimpse) string {
	m, err := readMetrics(g)
	if err != nil {
		return "not read: " + err.Error()
	}
	return fmt.Sprintf("heap in use %.1f MiB, goroutine stacks %.1f MiB, %.0f goroutines", m.heapInuse/(1<<20), m.stacks/(1<<20), m.goroutines)
}

// emptyRSS returns the RSS of a glimpse-agent synced on an empty Consul.
func (b *bench) emptyRSS(ctx context.Context) (int64, error) {
	empty, err := testconsul.StartE(ctx, testconsul.Options{Dev: true, Datacenter: "dc1", ExtraArgs: []string{"-log-level", "warn"}}, logf)
	if err != nil {
		return 0, err
	}
	defer empty.Close()
	if err := pin(empty.PID(), b.cfg.serverCPUs); err != nil {
		return 0, err
	}
	g, err := b.startGlimpse(ctx, empty.HTTPAddr(), "empty", wholeZone(0)...)
	if err != nil {
		return 0, err
	}
	defer g.stop()
	if _, err := b.waitSynced(ctx, g, 0, 60*time.Second); err != nil {
		return 0, err
	}
	return settledRSS(g)
}
