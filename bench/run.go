package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	gapi "github.com/rugby110/glimpse/api"
	"github.com/rugby110/glimpse/internal/testconsul"
)

// bench is one run of the benchmark.
type bench struct {
	cfg    *config
	work   string
	consul *testconsul.Agent
	capi   *api.Client
	proxy  *testconsul.CountingProxy
	topo   topology
	g      *glimpse // the agent of the dns, propagation and fanout sections
	// glimpseQueries is the dnsperf file of every job address's SRV and A
	// query, for the topology registered at the start.
	glimpseQueries string
	rep            *report
	began          time.Time
}

func run(ctx context.Context, cfg *config) error {
	resolveCPUs(cfg)
	if _, err := exec.LookPath("dnsperf"); err != nil {
		return fmt.Errorf("dnsperf not found (make bench installs it): %w", err)
	}
	if cfg.serverCPUs != "" || cfg.clientCPUs != "" {
		if _, err := exec.LookPath("taskset"); err != nil {
			return fmt.Errorf("taskset not found; run with -server-cpus= -client-cpus= to not pin: %w", err)
		}
	}
	raiseFDLimit()
	work, err := os.MkdirTemp("", "glimpse-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	b := &bench{cfg: cfg, work: work, rep: newReport(cfg), began: time.Now(),
		topo: topology{products: cfg.products, jobs: cfg.jobs, perJob: cfg.perJob}}
	os.Setenv("CONSUL_BIN", cfg.consulBin)

	logf("starting a Consul dev agent (servers on CPUs %q, load generators on %q)", cfg.serverCPUs, cfg.clientCPUs)
	b.consul, err = testconsul.StartE(ctx, testconsul.Options{
		Dev: true, Datacenter: "dc1", DNS: true,
		// glimpse-agent holds one blocking request per product; Consul's
		// default of 200 connections per client is for the open internet.
		ExtraArgs: []string{"-hcl", "limits { http_max_conns_per_client = 16384 }", "-log-level", "warn"},
	}, logf)
	if err != nil {
		return err
	}
	defer b.consul.Close()
	b.capi = b.consul.Client()
	if cfg.consulIdle && cfg.sections["dns"] {
		// Moving Consul aside is allowed to anyone; moving it back takes
		// CAP_SYS_NICE. Find out now, not after the section's first half.
		if err := schedPolicy(b.consul.PID(), unix.SCHED_IDLE); err != nil {
			return fmt.Errorf("-half-load.consul-idle: %w", err)
		}
		if err := schedPolicy(b.consul.PID(), unix.SCHED_NORMAL); err != nil {
			return fmt.Errorf("-half-load.consul-idle: Consul cannot be put back to SCHED_NORMAL (%w): run as root or with -half-load.consul-idle=false", err)
		}
	}
	began := time.Now()
	if err := b.topo.register(ctx, b.capi, 0); err != nil {
		return err
	}
	logf("registered %d instances (%d products × %d jobs × %d) on %d nodes in %v",
		b.topo.size(), b.topo.products, b.topo.jobs, b.topo.perJob, b.topo.nodes(), time.Since(began).Round(time.Millisecond))
	b.glimpseQueries = filepath.Join(work, "glimpse.queries")
	if err := os.WriteFile(b.glimpseQueries, []byte(b.topo.queryLines(glimpseName)), 0o644); err != nil {
		return err
	}
	if b.proxy, err = testconsul.NewCountingProxyE(b.consul.HTTPAddr()); err != nil {
		return err
	}
	defer b.proxy.Close()

	if cfg.sections["dns"] || cfg.sections["propagation"] || cfg.sections["fanout"] || cfg.sections["longpoll"] || cfg.sections["soak"] {
		b.g, err = b.startGlimpse(ctx, b.proxy.Addr(), "main", wholeZone(b.topo.products)...)
		if err != nil {
			return err
		}
		if _, err := b.waitSynced(ctx, b.g, b.topo.size(), 120*time.Second); err != nil {
			b.g.stop()
			return err
		}
		for _, s := range []struct {
			name string
			run  func(context.Context) error
		}{{"dns", b.dnsSection}, {"propagation", b.propagationSection}, {"fanout", b.fanoutSection}, {"longpoll", b.longPollSection}, {"soak", b.soakSection}} {
			if !cfg.sections[s.name] {
				continue
			}
			logf("--- %s", s.name)
			place := b.placeFree
			if s.name == "dns" {
				place = b.placeForDNS
			}
			if err := place(b.g); err != nil {
				b.g.stop()
				return err
			}
			if err := s.run(ctx); err != nil {
				b.g.stop()
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
		b.g.stop()
	}
	if cfg.sections["scale"] {
		logf("--- scale")
		if err := b.scaleSection(ctx); err != nil {
			return fmt.Errorf("scale: %w", err)
		}
	}
	if cfg.sections["ondemand"] {
		logf("--- ondemand")
		if err := b.onDemandSection(ctx); err != nil {
			return fmt.Errorf("ondemand: %w", err)
		}
	}
	if cfg.sections["dns"] || cfg.sections["propagation"] || cfg.sections["fanout"] || cfg.sections["longpoll"] || cfg.sections["scale"] || cfg.sections["ondemand"] {
		return b.rep.write(b)
	}
	return nil
}

func logf(format string, args ...any) {
	fmt.Printf("%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// raiseFDLimit raises the soft open-files limit to the hard one: the
// fan-out test holds a connection per subscriber, on both sides.
func raiseFDLimit() {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil && l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			logf("could not raise the open-files limit: %v", err)
		}
	}
}

// waitSynced waits until g's local zone is synced with n instances, and
// returns when that was first seen.
func (b *bench) waitSynced(ctx context.Context, g *glimpse, n int, timeout time.Duration) (time.Time, error) {
	var last gapi.ZoneStatus
	var at time.Time
	err := g.poll(ctx, timeout, 5*time.Millisecond, func() bool {
		var zones struct {
			Zones []gapi.ZoneStatus `json:"zones"`
		}
		if getJSON(ctx, "http://"+g.httpAddr+"/v1/zones", &zones) != nil {
			return false
		}
		for _, z := range zones.Zones {
			if z.Zone == "dc1" {
				last, at = z, time.Now()
				return z.Synced && z.Instances == n
			}
		}
		return false
	}, fmt.Sprintf("not synced with %d instances", n))
	if err != nil {
		return at, fmt.Errorf("%w (last seen: %+v)", err, last)
	}
	return at, nil
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// exchange sends one query over UDP with EDNS (4096 bytes), like dnsperf -e
// and like Unbound.
func exchange(addr, name string, qtype uint16) (*mdns.Msg, error) {
	m := new(mdns.Msg)
	m.SetQuestion(mdns.Fqdn(name), qtype)
	m.SetEdns0(4096, false)
	c := &mdns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	return r, err
}

// system is one DNS server of the comparison.
type system struct {
	name, addr, queries string
	pid                 int // the server process, whose CPU time each run reads; 0: none
}

// dnsSection compares glimpse-agent, Consul's DNS and the ceiling.
// warmUp is the length of the unrecorded run each DNS system gets first.
const warmUp = 3 * time.Second

func (b *bench) dnsSection(ctx context.Context) error {
	gq := b.glimpseQueries
	cq := filepath.Join(b.work, "consul.queries")
	if err := os.WriteFile(cq, []byte(b.topo.queryLines(consulName)), 0o644); err != nil {
		return err
	}
	// Each system answers the same 4 instances for the same job.
	sizes := map[string][2]int{}
	var answers strings.Builder
	for _, s := range []system{{"glimpse", b.g.dnsAddr, "", 0}, {"consul", b.consul.DNSAddr(), "", 0}} {
		name := glimpseName(0, 0)
		if s.name == "consul" {
			name = consulName(0, 0)
		}
		var sz [2]int
		for i, qt := range []uint16{mdns.TypeSRV, mdns.TypeA} {
			r, err := exchange(s.addr, name, qt)
			if err != nil {
				return fmt.Errorf("%s %s: %w", s.name, name, err)
			}
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != b.topo.perJob {
				return fmt.Errorf("%s %s %s: %s with %d answers, want %d", s.name, mdns.TypeToString[qt], name, mdns.RcodeToString[r.Rcode], len(r.Answer), b.topo.perJob)
			}
			wire, err := r.Pack()
			if err != nil {
				return err
			}
			sz[i] = len(wire)
			if s.name == "glimpse" {
				fmt.Fprintf(&answers, "%s %s\n", mdns.TypeToString[qt], hex.EncodeToString(wire))
			}
		}
		sizes[s.name] = sz
	}
	sizes["ceiling"] = sizes["glimpse"]
	af := filepath.Join(b.work, "ceiling.answers")
	if err := os.WriteFile(af, []byte(answers.String()), 0o644); err != nil {
		return err
	}
	// The ceiling on glimpse's own DNS server code, and the same handler on
	// miekg/dns's stock Server for reference.
	var ceilAddrs [2]string
	var ceilPIDs [2]int
	var err error
	for i, name := range []string{"ceiling", "miekg-stock"} {
		if ceilAddrs[i], err = freeAddr(); err != nil {
			return err
		}
		args := []string{"ceiling", "-addr", ceilAddrs[i], "-sockets", fmt.Sprint(b.udpSockets()), "-answers", af}
		if name == "miekg-stock" {
			args = append(args, "-stock")
		}
		p, err := startProc(name, b.cfg.serverCPUs, filepath.Join(b.work, name+".log"), b.cfg.selfBin, args...)
		if err != nil {
			return err
		}
		defer p.stop()
		if err := waitDNS(ctx, p, ceilAddrs[i]); err != nil {
			return err
		}
		ceilPIDs[i] = p.pid()
	}
	sizes["miekg-stock"] = sizes["glimpse"]
	echoAddr, err := freeAddr()
	if err != nil {
		return err
	}
	echo, err := startProc("udp-echo", b.cfg.serverCPUs, filepath.Join(b.work, "echo.log"), b.cfg.selfBin,
		"echo", "-addr", echoAddr, "-sockets", fmt.Sprint(b.udpSockets()))
	if err != nil {
		return err
	}
	defer echo.stop()
	if err := waitDNS(ctx, echo, echoAddr); err != nil {
		return err
	}
	systems := []system{{"glimpse", b.g.dnsAddr, gq, b.g.pid()}, {"consul", b.consul.DNSAddr(), cq, b.consul.PID()},
		{"ceiling", ceilAddrs[0], gq, ceilPIDs[0]}, {"miekg-stock", ceilAddrs[1], gq, ceilPIDs[1]}}
	// NSD and Knot DNS, answering glimpse's names with glimpse's records.
	zone := filepath.Join(b.work, "srv.glimpse.io.zone")
	if err := b.zoneFile(zone); err != nil {
		return fmt.Errorf("zone file: %w", err)
	}
	for _, name := range []string{"nsd", "knot"} {
		p, addr, err := b.startAuthoritative(ctx, name, zone)
		if err != nil {
			return err
		}
		defer p.stop()
		var sz [2]int
		for i, qt := range []uint16{mdns.TypeSRV, mdns.TypeA} {
			r, err := exchange(addr, glimpseName(0, 0), qt)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if r.Rcode != mdns.RcodeSuccess || len(r.Answer) != b.topo.perJob {
				return fmt.Errorf("%s %s: %s with %d answers, want %d", name, mdns.TypeToString[qt], mdns.RcodeToString[r.Rcode], len(r.Answer), b.topo.perJob)
			}
			wire, err := r.Pack()
			if err != nil {
				return err
			}
			sz[i] = len(wire)
		}
		sizes[name] = sz
		systems = append(systems, system{name, addr, gq, p.pid()})
	}

	// Maximum rate: runs alternate between the systems, the order
	// rotating each round.
	b.proxy.ResetCounts()
	var glimpseCompleted int64
	dnsBegan := time.Now()
	var glimpseDNS time.Duration
	// The echo runs at both loads too: at the maximum rate, what dnsperf
	// can drive against a server that does nothing (the headroom of the load
	// generator); at half load, the floor of the machine and dnsperf.
	measured := append(systems[:len(systems):len(systems)], system{"udp-echo", echoAddr, gq, echo.pid()})
	// A warm-up run of each, not recorded: glimpse-agent's first run after
	// its sync was its slowest in every full run before this warm-up.
	for _, s := range measured {
		if _, err := b.dnsperf(ctx, s.addr, s.queries, warmUp, 0, false); err != nil {
			return fmt.Errorf("%s warm-up: %w", s.name, err)
		}
	}
	// At the maximum rate dnsperf does not record each query: writing a
	// line per answer cost the load generator about 15 % of its rate (the
	// echo's median was 81,495 qps with the lines and 96,187 without, in
	// two runs of this harness), so it capped the fastest servers at its own
	// pace.
	maxRuns, err := b.rounds(ctx, b.dnsperfGen(), measured, 0, false, func(s system, res perfResult, took time.Duration) {
		if s.name == "glimpse" {
			glimpseCompleted += res.completed
			glimpseDNS += took
		}
	})
	if err != nil {
		return err
	}
	dnsWindow := time.Since(dnsBegan)
	duringDNS := b.proxy.CountByPath()
	totalDuring := b.proxy.Count()

	// A CPU profile of glimpse-agent at its maximum rate, in a run of its
	// own (the profiler's cost would bias a measured run).
	prof := make(chan string, 1)
	go func() {
		prof <- b.pprof(ctx, b.g, fmt.Sprintf("profile?seconds=%d", max(1, int((b.cfg.duration-2*time.Second).Seconds()))), "dns-glimpse.pprof", "")
	}()
	if _, err := b.dnsperf(ctx, b.g.dnsAddr, gq, b.cfg.duration, 0, false); err != nil {
		return err
	}
	b.rep.profileTop = <-prof

	// p99 at half of glimpse's maximum rate, every system at that rate.
	half := int(median(field(maxRuns["glimpse"], func(r perfResult) float64 { return r.qps })) / 2)
	halfRuns, err := b.rounds(ctx, b.dnsperfGen(), measured, half, b.cfg.perQuery, nil)
	if err != nil {
		return err
	}
	b.rep.dns(systems, sizes, maxRuns, halfRuns, half)
	b.rep.floor(halfRuns, half)

	// The same loads from blast, a load generator that outruns the server:
	// against dnsperf the echo, which does no DNS work, is about as fast
	// as NSD, Knot DNS and glimpse, so dnsperf's maximum is its own.
	var blasted []system
	for _, s := range measured {
		switch s.name {
		case "glimpse", "nsd", "knot", "udp-echo":
			blasted = append(blasted, s)
		}
	}
	for _, s := range blasted {
		if _, err := b.blastGen().run(ctx, s, warmUp, 0, false); err != nil {
			return fmt.Errorf("%s warm-up: %w", s.name, err)
		}
	}
	satRuns, err := b.rounds(ctx, b.blastGen(), blasted, 0, false, nil)
	if err != nil {
		return err
	}
	satHalfRuns, err := b.rounds(ctx, b.blastGen(), blasted, half, true, nil)
	if err != nil {
		return err
	}
	b.rep.saturated(blasted, maxRuns, satRuns, satHalfRuns, half)
	b.rep.consulRequests(duringDNS, totalDuring, glimpseCompleted, dnsWindow, glimpseDNS, b.topo.products)
	return nil
}

// rounds runs dnsperf cfg.runs times against each system at rate (0: as
// fast as it answers), alternating between the systems with the order
// rotating each round, and returns each system's results; perQuery records
// each query's latency. each, when set, is told of every run and how long
// it took.
func (b *bench) rounds(ctx context.Context, gen loadGen, systems []system, rate int, perQuery bool, each func(system, perfResult, time.Duration)) (map[string][]perfResult, error) {
	runs := map[string][]perfResult{}
	load := "max rate"
	if rate > 0 {
		load = fmt.Sprintf("%d qps", rate)
	}
	for r := 0; r < b.cfg.runs; r++ {
		for i := range systems {
			s := systems[(i+r)%len(systems)]
			// At half load Consul gives way to the server measured, unless
			// it is that server (-half-load.consul-idle, "Consul at half
			// load" in RESULTS.md).
			idle := rate > 0 && b.cfg.consulIdle && s.pid != b.consul.PID()
			if idle {
				if err := schedPolicy(b.consul.PID(), unix.SCHED_IDLE); err != nil {
					return nil, fmt.Errorf("Consul to SCHED_IDLE: %w", err)
				}
			}
			t0 := time.Now()
			cpu0, cpuErr := cpuTree(s.pid)
			res, err := gen.run(ctx, s, b.cfg.duration, rate, perQuery)
			if idle {
				if err := schedPolicy(b.consul.PID(), unix.SCHED_NORMAL); err != nil {
					return nil, fmt.Errorf("Consul back to SCHED_NORMAL: %w", err)
				}
			}
			if err != nil {
				return nil, fmt.Errorf("%s at %s: %w", s.name, load, err)
			}
			took := time.Since(t0)
			res.cpuUs, res.sysUs, res.busy = -1, -1, -1
			if cpu1, err := cpuTree(s.pid); err == nil && cpuErr == nil && res.completed > 0 {
				d := cpu1.sub(cpu0)
				res.cpuUs = float64(d.total().Microseconds()) / float64(res.completed)
				res.sysUs = float64(d.sys.Microseconds()) / float64(res.completed)
				res.busy = d.total().Seconds() / b.cfg.duration.Seconds() / float64(b.udpSockets())
			}
			if each != nil {
				each(s, res, took)
			}
			logf("%s %s %-8s run %d: %8.0f qps  avg %s  p99 %s  CPU %s per answer (system %s)  busy %.0f %%  lost %d  %s", gen.name, load, s.name, r+1, res.qps, ms(res.avgMs), ms(res.p99Ms), us(res.cpuUs), us(res.sysUs), 100*res.busy, res.lost, res.rcodes)
			runs[s.name] = append(runs[s.name], res)
		}
	}
	return runs, nil
}

// pprof fetches /debug/pprof/<what> from g, saves it under name next to
// the charts and returns `go tool pprof -top` of it (with extra flags).
func (b *bench) pprof(ctx context.Context, g *glimpse, what, name, extra string) string {
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+g.httpAddr+"/debug/pprof/"+what, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "profile: " + err.Error()
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("profile: %s %v", resp.Status, err)
	}
	path := filepath.Join(b.cfg.chartDir, name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "profile: " + err.Error()
	}
	args := []string{"tool", "pprof", "-top", "-nodecount=25"}
	if extra != "" {
		args = append(args, extra)
	}
	out, err := exec.Command("go", append(args, b.cfg.agentBin, path)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("go tool pprof: %v: %s", err, out)
	}
	return string(out)
}

func field(rs []perfResult, f func(perfResult) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

// waitDNS waits until a DNS server answers on addr.
func waitDNS(ctx context.Context, p *proc, addr string) error {
	return p.poll(ctx, 30*time.Second, 20*time.Millisecond, func() bool {
		_, err := exchange(addr, glimpseName(0, 0), mdns.TypeSRV)
		return err == nil
	}, "no DNS answer on "+addr)
}
