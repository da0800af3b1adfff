package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Markers around the generated part of RESULTS.md: what lies outside them
// (history, profiles, notes written by hand) is kept when the file is
// written again.
const (
	beginMarker = "<!-- bench:generated:begin -->"
	endMarker   = "<!-- bench:generated:end -->"
)

// target is one of the targets, met or missed.
type target struct {
	what, goal, got string
	met             bool
}

// report collects the sections of RESULTS.md.
type report struct {
	cfg        *config
	profileTop string // glimpse-agent's CPU profile during its first max-rate DNS run
	sections   []string
	targets    []target
	charts     map[string][]byte
}

func newReport(cfg *config) *report { return &report{cfg: cfg, charts: map[string][]byte{}} }

func (r *report) add(format string, args ...any) {
	r.sections = append(r.sections, fmt.Sprintf(format, args...))
}

func (r *report) check(what, goal, got string, met bool) {
	r.targets = append(r.targets, target{what, goal, got, met})
	state := "MET   "
	if !met {
		state = "MISSED"
	}
	fmt.Printf("target %s  %s: %s (goal %s)\n", state, what, got, goal)
}

func ms(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.3f ms", v)
}

// us formats µs, "n/a" for a negative value.
func us(v float64) string {
	if v < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f µs", v)
}

// cpuPerAnswer is the runs' server CPU per answer, in µs, leaving out the
// runs where it was not read.
func cpuPerAnswer(rs []perfResult) []float64 {
	return perAnswer(rs, func(r perfResult) float64 { return r.cpuUs })
}

// sysPerAnswer is the kernel's part of cpuPerAnswer.
func sysPerAnswer(rs []perfResult) []float64 {
	return perAnswer(rs, func(r perfResult) float64 { return r.sysUs })
}

// perAnswer is the runs' figure of, leaving out the runs where it was not
// read (negative).
func perAnswer(rs []perfResult, of func(perfResult) float64) []float64 {
	var out []float64
	for _, r := range rs {
		if v := of(r); v >= 0 {
			out = append(out, v)
		}
	}
	return out
}

// medianCPU is the median server CPU per answer of the runs, -1 when no
// run has it.
func medianCPU(rs []perfResult) float64 {
	vs := cpuPerAnswer(rs)
	if len(vs) == 0 {
		return -1
	}
	return median(vs)
}

// dns reports section 1.
func (r *report) dns(systems []system, sizes map[string][2]int, maxRuns, halfRuns map[string][]perfResult, half int) {
	var b strings.Builder
	fmt.Fprintf(&b, "## 1. DNS throughput and latency\n\n")
	fmt.Fprintf(&b, "dnsperf, %d runs of %v per system and load, alternating between the systems (the order rotates each round), after an unrecorded %v warm-up run of each; medians. "+
		"Query mix: an SRV and an A query for each of the %d job addresses, each answered with %d instances; every answer must be NOERROR. "+
		"At the maximum rate dnsperf reports the average latency only: recording each answer costs it about 15 %% of its rate, so percentiles come from the runs at half load, which record every query. "+
		"Percentiles are of every query sent: a lost one counts as the 2 s timeout.\n\n",
		r.cfg.runs, r.cfg.duration, warmUp, r.cfg.products*r.cfg.jobs, r.cfg.perJob)
	b.WriteString("| system | names queried | response bytes (SRV / A) | max qps | avg latency | server CPU per answer | lost (all runs) | p99 at " + fmt.Sprint(half) + " qps (50 % of glimpse's max) |\n|---|---|---|---|---|---|---|---|\n")
	med := map[string]float64{}
	var bars []Bar
	for _, s := range systems {
		mr, hr := maxRuns[s.name], halfRuns[s.name]
		qps := median(field(mr, func(p perfResult) float64 { return p.qps }))
		med[s.name] = qps
		names := "`http.<job>.prod.<product>.dc1." + domain + "`"
		switch s.name {
		case "consul":
			names = "`<job>.<product>.service.dc1.consul`"
		case "ceiling", "miekg-stock":
			names = "same as glimpse, fixed answer"
		case "nsd", "knot":
			names = "same as glimpse, from a zone file of glimpse's answers"
		}
		lost := 0.0
		for _, p := range mr {
			lost += float64(p.lost)
		}
		fmt.Fprintf(&b, "| %s | %s | %d / %d | %.0f | %s | %s | %.0f | %s |\n", s.name, names, sizes[s.name][0], sizes[s.name][1], qps,
			ms(median(field(mr, func(p perfResult) float64 { return p.avgMs }))), us(medianCPU(mr)), lost,
			ms(median(field(hr, func(p perfResult) float64 { return p.p99Ms }))))
		bars = append(bars, Bar{Label: s.name, Value: qps})
	}
	// Ratios per round (the systems of a round ran back to back), then the
	// median of those.
	ratio := func(a, c string) float64 { return roundRatio(maxRuns, a, c, qpsOf) }
	vsCeil, vsConsul := ratio("glimpse", "ceiling"), ratio("glimpse", "consul")
	echo := median(field(maxRuns["udp-echo"], func(p perfResult) float64 { return p.qps }))
	fmt.Fprintf(&b, "\nglimpse/ceiling = **%.2f**, glimpse/Consul = **%.1f** (medians of the per-round ratios). "+
		"The UDP echo, a server that does no DNS work, reached %.0f qps (%.2f× glimpse). When glimpse, the ceiling and the echo end near the same rate, "+
		"that rate is what the server's CPU passes through this machine's loopback with dnsperf on the other CPU, and the ratio to the ceiling shows "+
		"that glimpse's own work costs little, not that it could go faster.\n\n",
		vsCeil, vsConsul, echo, echo/med["glimpse"])
	// CPU per answer: what each server spends on a query, beside its rate.
	cpuG, cpuC := medianCPU(maxRuns["glimpse"]), medianCPU(maxRuns["ceiling"])
	if cpuG > 0 && cpuC > 0 {
		fmt.Fprintf(&b, "Server CPU per answer at the maximum rate (user and system time of the server process over the run, divided by its answers; most of it is the kernel's UDP path): "+
			"glimpse-agent %s, the ceiling %s (the ceiling's CPU per answer is %.2f× glimpse's), Consul %s. It swings with the machine too. Per run, glimpse %s µs; ceiling %s µs.\n\n",
			us(cpuG), us(cpuC), cpuC/cpuG, us(medianCPU(maxRuns["consul"])),
			joinf(cpuPerAnswer(maxRuns["glimpse"]), "%.2f"), joinf(cpuPerAnswer(maxRuns["ceiling"]), "%.2f"))
	}
	fmt.Fprintf(&b, "Every run, max qps per system: ")
	for _, s := range append(systems[:len(systems):len(systems)], system{name: "udp-echo"}) {
		fmt.Fprintf(&b, "%s %s; ", s.name, joinf(field(maxRuns[s.name], func(p perfResult) float64 { return p.qps }), "%.0f"))
	}
	b.WriteString("\n\n![DNS queries per second](dns.svg)\n")
	if r.profileTop != "" {
		b.WriteString("\n<details><summary>glimpse-agent's CPU profile at its maximum rate, from a run of its own (dns-glimpse.pprof)</summary>\n\n```\n" + r.profileTop + "```\n</details>\n")
	}
	bars[0].Note = fmt.Sprintf("%.2f× ceiling", vsCeil)
	bars[1].Note = fmt.Sprintf("glimpse is %.1f×", vsConsul)
	b.WriteString("\n`ceiling` is a handler that copies a fixed answer of glimpse's size (SRV or A) and patches the ID, served by glimpse's own DNS server code " +
		"(dns.Listen: the same TCP listener and UDP sockets and the same UDP reading loop), and like glimpse it answers from the raw packet without unpacking it. `miekg-stock` is the same handler on miekg/dns's stock `Server` " +
		"(a goroutine per query), which glimpse used before this benchmark showed its cost (see the history below).\n")
	r.charts["dns.svg"] = barChartSVG("DNS queries per second (median of "+fmt.Sprint(r.cfg.runs)+" runs)", "queries/s", bars)
	r.add("%s", b.String())
	halfP99 := median(field(halfRuns["glimpse"], func(p perfResult) float64 { return p.p99Ms }))
	// NSD and Knot DNS: glimpse's rate and CPU per answer against theirs,
	// per round, then the median.
	cpuRatio := func(a, c string) float64 { return roundRatio(maxRuns, a, c, cpuOf) }
	for _, other := range []string{"nsd", "knot"} {
		if len(maxRuns[other]) == 0 {
			continue
		}
		label := authoritativeName[other]
		q, c := ratio("glimpse", other), cpuRatio("glimpse", other)
		r.add("glimpse/%s: **%.3f×** the queries per second and **%.3f×** the server CPU per answer (medians of the per-round ratios; CPU per answer, per run: glimpse %s µs, %s %s µs; of which in the kernel: glimpse %s µs, %s %s µs).\n",
			label, q, c, joinf(cpuPerAnswer(maxRuns["glimpse"]), "%.2f"), label, joinf(cpuPerAnswer(maxRuns[other]), "%.2f"),
			joinf(sysPerAnswer(maxRuns["glimpse"]), "%.2f"), label, joinf(sysPerAnswer(maxRuns[other]), "%.2f"))
		// Three decimals: a median this close to 1 must not print as
		// 1.00× beside "missed".
		r.check("DNS qps vs "+label, "≥ 1.0×", fmt.Sprintf("%.3f×", q), q >= 1)
		r.check("DNS server CPU per answer vs "+label, "≤ 1.0×", fmt.Sprintf("%.3f×", c), c > 0 && c <= 1)
	}
	r.check("DNS qps vs ceiling", "≥ 0.9×", fmt.Sprintf("%.2f×", vsCeil), vsCeil >= 0.9)
	r.check("DNS qps vs Consul DNS", "≥ 15×", fmt.Sprintf("%.1f×", vsConsul), vsConsul >= 15)
	r.check("DNS p99 at 50 % load", "≤ 1 ms", ms(halfP99), halfP99 >= 0 && halfP99 <= 1)
}

// authoritativeName is how the report names NSD and Knot DNS.
var authoritativeName = map[string]string{"nsd": "NSD", "knot": "Knot DNS"}

func qpsOf(p perfResult) float64 { return p.qps }
func cpuOf(p perfResult) float64 { return p.cpuUs }

// roundRatio is the median over the rounds of a's figure over c's (the
// systems of a round ran back to back), leaving out the rounds where either
// was not read; -1 when none is left.
func roundRatio(runs map[string][]perfResult, a, c string, of func(perfResult) float64) float64 {
	var rs []float64
	for i := range min(len(runs[a]), len(runs[c])) {
		if x, y := of(runs[a][i]), of(runs[c][i]); x > 0 && y > 0 {
			rs = append(rs, x/y)
		}
	}
	if len(rs) == 0 {
		return -1
	}
	return median(rs)
}

// saturated reports the DNS loads again from blast, the harness's own
// batched load generator: each server's maximum rate when the server, not
// the load generator, is what stops it, and the latency at the half-load
// rate from a client that adds little of its own.
func (r *report) saturated(systems []system, perfMax, maxRuns, halfRuns map[string][]perfResult, half int) {
	var b strings.Builder
	b.WriteString("### 1a. The same loads from a load generator that outruns the servers\n\n")
	b.WriteString("At dnsperf's maximum rate (above) the servers were busy, median of the runs: ")
	for _, s := range systems {
		fmt.Fprintf(&b, "%s %.0f %%, ", s.name, 100*median(field(perfMax[s.name], func(p perfResult) float64 { return p.busy })))
	}
	fmt.Fprintf(&b, "and the echo, which does no DNS work, ended at %.2f× glimpse's rate. "+
		"Where the echo is about as fast as the servers and none of them is near 100 %%, the maximum is dnsperf's own: it sends and receives one datagram per system call on its one CPU. ",
		roundRatio(perfMax, "udp-echo", "glimpse", qpsOf))
	fmt.Fprintf(&b, "`blast` (`bench blast`, bench/blast.go) sends and receives in batches (`sendmmsg`/`recvmmsg`) over %d connected sockets, with %d queries outstanding on each "+
		"(dnsperf's %d in all), the same query file and EDNS, on the same CPU as dnsperf. Every answer must be a NOERROR answer with records to a query outstanding. "+
		"Server busy is the server's CPU time over the run's length, as a share of its CPUs: near 100 %%, the server was the bottleneck. "+
		"At half load blast sends at %d qps, the half-load rate above, each socket at its own phase of the interval, and records each answer's latency; a lost query counts as the 2 s timeout. "+
		"%d runs of %v per system and load, the order rotating each round, after a warm-up run of each; medians.\n\n",
		r.cfg.clients, r.cfg.blastWindow(), r.cfg.outstanding, half, r.cfg.runs, r.cfg.duration)
	fmt.Fprintf(&b, "| system | max qps | server busy at max | server CPU per answer | avg latency at max | p50 / p99 at %d qps | lost / late (all runs) |\n|---|---|---|---|---|---|---|\n", half)
	busy := map[string]float64{}
	for _, s := range systems {
		mr, hr := maxRuns[s.name], halfRuns[s.name]
		var lost, late int64
		for _, p := range append(mr[:len(mr):len(mr)], hr...) {
			lost += p.lost
			late += p.late
		}
		busy[s.name] = median(field(mr, func(p perfResult) float64 { return p.busy }))
		fmt.Fprintf(&b, "| %s | %.0f | %.0f %% | %s | %s | %s / %s | %d / %d |\n", s.name, median(field(mr, qpsOf)), 100*busy[s.name], us(medianCPU(mr)),
			ms(median(field(mr, func(p perfResult) float64 { return p.avgMs }))),
			ms(median(field(hr, func(p perfResult) float64 { return p.p50Ms }))), ms(median(field(hr, func(p perfResult) float64 { return p.p99Ms }))), lost, late)
	}
	b.WriteString("\nEvery run, max qps per system: ")
	for _, s := range systems {
		fmt.Fprintf(&b, "%s %s (busy %s %%); ", s.name, joinf(field(maxRuns[s.name], qpsOf), "%.0f"), joinf(field(maxRuns[s.name], func(p perfResult) float64 { return 100 * p.busy }), "%.0f"))
	}
	b.WriteString("p99 at half load per run: ")
	for _, s := range systems {
		fmt.Fprintf(&b, "%s %s; ", s.name, joinf(field(halfRuns[s.name], func(p perfResult) float64 { return p.p99Ms }), "%.3f"))
	}
	b.WriteString("\n\n")
	for _, other := range []string{"nsd", "knot"} {
		if len(maxRuns[other]) == 0 {
			continue
		}
		label := authoritativeName[other]
		q, c := roundRatio(maxRuns, "glimpse", other, qpsOf), roundRatio(maxRuns, "glimpse", other, cpuOf)
		fmt.Fprintf(&b, "glimpse/%s under blast: **%.3f×** the queries per second and **%.3f×** the server CPU per answer (medians of the per-round ratios).\n", label, q, c)
		r.check("DNS qps vs "+label+", servers saturated (blast)", "≥ 1.0×", fmt.Sprintf("%.3f×", q), q >= 1)
	}
	r.add("%s", b.String())
	p99 := median(field(halfRuns["glimpse"], func(p perfResult) float64 { return p.p99Ms }))
	r.check("DNS p99 at 50 % load (blast)", "≤ 1 ms", ms(p99), p99 >= 0 && p99 <= 1)
}

// floor reports the p99 of the UDP echo at the half-load rate, next to
// glimpse's and the ceiling's.
func (r *report) floor(halfRuns map[string][]perfResult, half int) {
	p99 := func(name string) float64 {
		return median(field(halfRuns[name], func(p perfResult) float64 { return p.p99Ms }))
	}
	r.add("At %d qps, the p99 latency of a UDP echo that does no DNS work at all (it only sets the response bit; same sockets, same CPU) is **%s**: "+
		"the floor of this machine, its loopback and dnsperf. glimpse: %s; ceiling: %s; miekg-stock: %s. "+
		"Runs, p99 each: glimpse %s; ceiling %s; udp-echo %s.\n",
		half, ms(p99("udp-echo")), ms(p99("glimpse")), ms(p99("ceiling")), ms(p99("miekg-stock")),
		joinf(field(halfRuns["glimpse"], func(p perfResult) float64 { return p.p99Ms }), "%.3f"),
		joinf(field(halfRuns["ceiling"], func(p perfResult) float64 { return p.p99Ms }), "%.3f"),
		joinf(field(halfRuns["udp-echo"], func(p perfResult) float64 { return p.p99Ms }), "%.3f"))
}

func joinf(vs []float64, f string) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = fmt.Sprintf(f, v)
	}
	return strings.Join(s, ", ")
}

// consulRequests reports section 2.
//
// glimpse's own requests are bounded whatever the DNS load: with nothing
// changing, each product's blocking-query loop returns at most once per
// productWait, the services and servers loops once per consulWait, the datacenters
// are listed every 30 s and the providers' probe lists the local agent's
// services every 2 s. A request caused by DNS would come per query.
func (r *report) consulRequests(byPath map[string]int64, during, queries int64, window, dnsTime time.Duration, products int) {
	// A loop's blocking read returns at most once per wait (its first one
	// after a read from index 0 sooner, which the one at each end covers),
	// plus the one in flight at each end.
	cycles := int64(window/productWait) + 2
	zoneCycles := int64(window/consulWait) + 2
	allowed := int64(products)*cycles + 2*zoneCycles + int64(window/(2*time.Second)) + 1 + int64(window/(30*time.Second)) + 1
	kinds := map[string]int64{}
	maxPerProduct := int64(0)
	for path, n := range byPath {
		kind := path
		if strings.HasPrefix(path, "/v1/health/service/") {
			kind = "/v1/health/service/<product>"
			maxPerProduct = max(maxPerProduct, n)
		}
		kinds[kind] += n
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## 2. Consul requests during the DNS runs\n\n")
	fmt.Fprintf(&b, "glimpse-agent reaches Consul through a counting proxy. Over the %v of the DNS runs of all systems, glimpse answered %d queries in its own runs (%v of load); "+
		"its watchers and the providers' probe made **%d** requests to Consul. With nothing changing in Consul, they make at most %d in that time whatever the DNS load: "+
		"each of the %d product loops returns at most once per %v blocking wait (%d cycles counting both ends), the services and servers loops once per %v (%d), the datacenters are listed every 30 s, "+
		"the local agent's services every 2 s. No product had more than %d requests; a request caused by DNS would come once per query.\n\n",
		window.Round(time.Second), queries, dnsTime.Round(time.Second), during, allowed, products, productWait, cycles, consulWait, zoneCycles, maxPerProduct)
	b.WriteString("| Consul endpoint | requests during the DNS runs |\n|---|---|\n")
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		fmt.Fprintf(&b, "| `%s` | %d |\n", k, kinds[k])
	}
	b.WriteString("\n")
	r.add("%s", b.String())
	r.check("Consul requests caused by DNS", "0",
		fmt.Sprintf("%d requests during %d queries, within the watchers' own bound of %d; at most %d per product", during, queries, allowed, maxPerProduct),
		during <= allowed && maxPerProduct <= cycles)
}

// write writes RESULTS.md and the charts.
func (r *report) write(b *bench) error {
	for name, data := range r.charts {
		if err := os.WriteFile(filepath.Join(r.cfg.chartDir, name), data, 0o644); err != nil {
			return err
		}
	}
	var g strings.Builder
	g.WriteString(beginMarker + "\n")
	fmt.Fprintf(&g, "## Latest run: %s\n\n", b.began.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&g, "- Command: `make bench`, which ran `%s`\n", commandLine())
	fmt.Fprintf(&g, "- Machine: %d CPUs (%s), %s RAM, Linux %s; %s\n", runtime.NumCPU(), cpuModel(), memTotal(), kernel(), runtime.Version())
	idle := ""
	if r.cfg.consulIdle {
		idle = "; in the half-load runs Consul runs as SCHED_IDLE while another server is measured"
	}
	fmt.Fprintf(&g, "- CPUs: servers (Consul, glimpse-agent, ceiling) on %q, load generators (dnsperf, the harness's clients) on %q%s\n", orAll(r.cfg.serverCPUs), orAll(r.cfg.clientCPUs), idle)
	t := topology{products: r.cfg.products, jobs: r.cfg.jobs, perJob: r.cfg.perJob}
	fmt.Fprintf(&g, "- Topology: %d products × %d jobs × %d instances = %d instances on %d nodes (sections 1–4; section 5 adds products; section 6 has a Consul of its own); Consul dev agent (tools/consul)\n",
		t.products, t.jobs, t.perJob, t.size(), t.nodes())
	fmt.Fprintf(&g, "- Took %v\n\n", time.Since(b.began).Round(time.Second))
	g.WriteString("### Targets\n\n| target | goal | measured | |\n|---|---|---|---|\n")
	for _, t := range r.targets {
		state := "met"
		if !t.met {
			state = "**missed**"
		}
		fmt.Fprintf(&g, "| %s | %s | %s | %s |\n", t.what, t.goal, t.got, state)
	}
	g.WriteString("\n")
	for _, s := range r.sections {
		g.WriteString(strings.Replace(s, "## ", "### ", 1))
		g.WriteString("\n")
	}
	g.WriteString(endMarker + "\n")

	if err := replaceBlock(r.cfg.out, beginMarker, endMarker, g.String()); err != nil {
		return err
	}
	logf("wrote %s", r.cfg.out)
	return nil
}

// replaceBlock puts block (which starts with begin and ends with end and a
// newline) in place of the one between those markers in the file at path,
// or appends it; the rest of the file is kept.
func replaceBlock(path, begin, end, block string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	s := string(old)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	switch {
	case i >= 0 && j > i:
		s = s[:i] + block + s[j+len(end)+1:]
	case s == "":
		s = "# Benchmark results\n\n`make bench` and `make soak` write the parts between the markers below; the rest is kept.\n\n" + block
	default:
		s += "\n" + block
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// commandLine is this program's command line with paths under the working
// directory made relative, so the results do not name the machine's paths.
func commandLine() string {
	wd, _ := os.Getwd()
	args := []string{"bin/glimpse-bench"}
	for _, a := range os.Args[1:] {
		if filepath.IsAbs(a) && wd != "" {
			if rel, err := filepath.Rel(wd, a); err == nil && !strings.HasPrefix(rel, "..") {
				a = rel
			}
		}
		if strings.ContainsAny(a, " \t") {
			a = strconv.Quote(a)
		}
		args = append(args, a)
	}
	return strings.Join(args, " ")
}

func orAll(s string) string {
	if s == "" {
		return "any"
	}
	return s
}

func procLine(path, prefix string) string {
	f, err := os.Open(path)
	if err != nil {
		return "?"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return strings.TrimSpace(strings.TrimLeft(strings.TrimSpace(v), ":"))
		}
	}
	return "?"
}

func cpuModel() string { return procLine("/proc/cpuinfo", "model name") }

func memTotal() string {
	var kb int64
	fmt.Sscan(strings.TrimSuffix(procLine("/proc/meminfo", "MemTotal:"), " kB"), &kb)
	return fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
}

func kernel() string {
	data, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(data))
}
